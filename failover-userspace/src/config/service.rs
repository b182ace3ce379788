//! Service and backend rules: per-key checks, then the rules that span keys, backends and
//! services (uniqueness, address families, tiers, tunnel sources).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::ops::RangeInclusive;
use std::time::Duration;

use failover_common::maps::DEFAULT_RING_SIZE;
use toml::Spanned;

use super::check::{MergedCheck, needs_port};
use super::raw::{Key, RawBackend, RawPort, RawService, RawTunnel};
use super::types::{
    BackendConfig, CheckConfig, ExistingFlowsPolicy, FailbackPolicy, Mode, NoBackendPolicy,
    PortMatch, Protocol, ServiceConfig,
};
use super::validate::{Validator, key};

const TABLE_SIZES: RangeInclusive<u32> = 257..=16_777_213;
const DEFAULT_WEIGHT: u32 = 100;
const MAX_WEIGHT: i64 = 65_535;
const DEFAULT_FAILBACK_HOLD: Duration = Duration::from_secs(5);
const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

const fn family(address: IpAddr) -> &'static str {
    match address {
        IpAddr::V4(_) => "IPv4",
        IpAddr::V6(_) => "IPv6",
    }
}

/// Trial division: table sizes are at most 2^24, so at most 2^12 divisions.
fn is_prime(n: u32) -> bool {
    n >= 2
        && (2..)
            .take_while(|d: &u32| d * d <= n)
            .all(|d| !n.is_multiple_of(d))
}

/// The primes just below and just above `n` (either may be absent at the ends of u32).
fn nearest_primes(n: u32) -> (Option<u32>, Option<u32>) {
    let below = (2..n).rev().find(|&p| is_prime(p));
    let above = (n.saturating_add(1)..=u32::MAX).find(|&p| is_prime(p));
    (below, above)
}

impl Validator<'_> {
    /// A service `port`: a number or `"all"`.
    fn port_match(&mut self, set: &Spanned<RawPort>, key: &str) -> Option<PortMatch> {
        match set.get_ref() {
            RawPort::Word(word) if word == "all" => Some(PortMatch::All),
            RawPort::Number(n) => self
                .port(&Spanned::new(set.span(), *n), key)
                .map(PortMatch::Port),
            RawPort::Word(word) => {
                self.error(
                    &set.span(),
                    key,
                    format!("expected a port in 1..=65535 or \"all\", found {word:?}"),
                );
                None
            }
        }
    }

    /// A Maglev table size: a prime in range, with the nearest primes suggested otherwise.
    fn table_size(&mut self, value: &Key<i64>, key: &str) -> Option<u32> {
        let Some(set) = value else {
            return Some(DEFAULT_RING_SIZE);
        };
        let n = *set.get_ref();
        let in_range = u32::try_from(n).ok().filter(|n| TABLE_SIZES.contains(n));
        let Some(size) = in_range else {
            self.error(
                &set.span(),
                key,
                format!(
                    "expected a prime in {}..={} (the default {DEFAULT_RING_SIZE} suits up to about 650 backends), found {n}",
                    TABLE_SIZES.start(),
                    TABLE_SIZES.end()
                ),
            );
            return None;
        };
        if !is_prime(size) {
            let (below, above) = nearest_primes(size);
            let nearest: Vec<String> = [below, above]
                .into_iter()
                .flatten()
                .filter(|p| TABLE_SIZES.contains(p))
                .map(|p| p.to_string())
                .collect();
            self.error(
                &set.span(),
                key,
                format!(
                    "{size} is not prime (Maglev needs a prime table size); nearest primes are {}",
                    nearest.join(" and ")
                ),
            );
            return None;
        }
        Some(size)
    }

    /// One `[[service]]` with its check and backends; `None` if anything in it is wrong.
    pub(crate) fn service(
        &mut self,
        index: usize,
        raw: &Spanned<RawService>,
        defaults: &MergedCheck<'_>,
        tunnel: &RawTunnel,
    ) -> Option<ServiceConfig> {
        let p = format!("service[{index}]");
        let span = raw.span();
        let s = raw.get_ref();
        let before = self.error_count();

        let name = self
            .required(
                &s.name,
                &span,
                key(&p, "name"),
                "the service name, e.g. name = \"web\"",
            )
            .and_then(|set| self.name(set, &key(&p, "name")));
        let vip = self
            .required(
                &s.vip,
                &span,
                key(&p, "vip"),
                "the virtual IP clients connect to, e.g. vip = \"198.18.0.10\"",
            )
            .and_then(|set| self.unicast(set, &key(&p, "vip")));
        let port = self
            .required(
                &s.port,
                &span,
                key(&p, "port"),
                "a port in 1..=65535 or \"all\"",
            )
            .and_then(|set| self.port_match(set, &key(&p, "port")));
        let protocol = self.choice(&s.protocol, key(&p, "protocol"), Protocol::Tcp);
        let mode = self
            .required(
                &s.mode,
                &span,
                key(&p, "mode"),
                "the forwarding mode: \"dsr\", \"tunnel\" or \"nat\"",
            )
            .and_then(|set| self.parse_choice::<Mode>(set, key(&p, "mode")));
        let table_size = self.table_size(&s.table_size, &key(&p, "table_size"));
        let no_backend = self.choice(&s.no_backend, key(&p, "no_backend"), NoBackendPolicy::Drop);
        let failback = self.choice(&s.failback, key(&p, "failback"), FailbackPolicy::Auto);
        let failback_hold = self.optional_duration(
            &s.failback_hold,
            &key(&p, "failback_hold"),
            DEFAULT_FAILBACK_HOLD,
        );
        let exactly_one = s.exactly_one.as_ref().is_some_and(|b| *b.get_ref());
        let min_up: Option<u32> = self.integer(
            &s.min_up,
            &key(&p, "min_up"),
            1..=i64::from(u32::MAX),
            1,
            "at least 1 (backends up for a tier to be used)",
        );
        let spill = s.spill.as_ref().is_some_and(|b| *b.get_ref());
        let existing_flows_on_failback = self.choice(
            &s.existing_flows_on_failback,
            key(&p, "existing_flows_on_failback"),
            ExistingFlowsPolicy::Stay,
        );
        let drain_timeout = self.optional_duration(
            &s.drain_timeout,
            &key(&p, "drain_timeout"),
            DEFAULT_DRAIN_TIMEOUT,
        );
        let slow_start =
            self.optional_duration(&s.slow_start, &key(&p, "slow_start"), Duration::ZERO);

        if let (true, Some(set)) = (exactly_one, s.spill.as_ref().filter(|b| *b.get_ref())) {
            self.error(
                &set.span(),
                key(&p, "spill"),
                "cannot be combined with exactly_one = true: exactly_one uses the single best backend, spill adds lower tiers",
            );
        }

        let passive_reset = self.passive_reset(s, &p, mode, protocol);

        let check_layer = key(&p, "check");
        let merged = match &s.check {
            Some(check) => defaults.over(&check_layer, check),
            None => *defaults,
        };
        let check = merged.build(self);

        if s.backend.is_empty() {
            self.error(
                &(span.start..span.start),
                p.clone(),
                match &s.name {
                    Some(name) => format!(
                        "service {:?} has no backend: add at least one [[service.backend]] table",
                        name.get_ref()
                    ),
                    None => {
                        "this service has no backend: add at least one [[service.backend]] table"
                            .to_owned()
                    }
                },
            );
        }
        let context = ServiceContext {
            path: &p,
            vip,
            port,
            mode,
            merged: &merged,
            check: check.as_ref(),
        };
        let backends: Vec<Option<BackendConfig>> = s
            .backend
            .iter()
            .enumerate()
            .map(|(j, b)| self.backend(j, b, &context))
            .collect();

        self.backend_conflicts(&p, &s.backend);
        self.check_ports(s, &p, port, &backends);
        self.tiers(s, &p, min_up, &backends);
        self.tunnel_sources(s, &p, mode, tunnel);

        if self.error_count() > before {
            return None;
        }
        Some(ServiceConfig {
            name: name?,
            vip: vip?,
            port: port?,
            protocol: protocol?,
            mode: mode?,
            table_size: table_size?,
            no_backend: no_backend?,
            failback: failback?,
            failback_hold: failback_hold?,
            exactly_one,
            min_up: min_up?,
            spill,
            existing_flows_on_failback: existing_flows_on_failback?,
            drain_timeout: drain_timeout?,
            slow_start: slow_start?,
            passive_reset,
            check: check?,
            backends: backends.into_iter().collect::<Option<_>>()?,
        })
    }

    /// Defaults to on for tcp in nat mode, the only case where the load balancer sees the
    /// backend's RST.
    fn passive_reset(
        &mut self,
        s: &RawService,
        p: &str,
        mode: Option<Mode>,
        protocol: Option<Protocol>,
    ) -> bool {
        let sees_replies = mode == Some(Mode::Nat) && protocol == Some(Protocol::Tcp);
        match &s.passive_reset {
            None => sees_replies,
            Some(set) => {
                let wanted = *set.get_ref();
                if let (true, Some(mode), Some(protocol)) = (wanted, mode, protocol) {
                    if !sees_replies {
                        self.error(
                            &set.span(),
                            key(p, "passive_reset"),
                            format!(
                                "needs mode = \"nat\" and protocol = \"tcp\" (replies must pass through the load balancer), but this service is {protocol} in {mode} mode"
                            ),
                        );
                    }
                }
                wanted
            }
        }
    }

    /// One `[[service.backend]]`; `None` if anything in it is wrong.
    fn backend(
        &mut self,
        index: usize,
        raw: &Spanned<RawBackend>,
        service: &ServiceContext<'_, '_>,
    ) -> Option<BackendConfig> {
        let p = format!("{}.backend[{index}]", service.path);
        let span = raw.span();
        let b = raw.get_ref();
        let before = self.error_count();

        let name = self
            .required(
                &b.name,
                &span,
                key(&p, "name"),
                "the backend name, e.g. name = \"web-1\"",
            )
            .and_then(|set| self.name(set, &key(&p, "name")));
        let address = self
            .required(
                &b.address,
                &span,
                key(&p, "address"),
                "the backend address, e.g. address = \"198.18.1.2\"",
            )
            .and_then(|set| self.unicast(set, &key(&p, "address")));
        if let (Some(address), Some(vip), Some(mode), Some(set)) =
            (address, service.vip, service.mode, b.address.as_ref())
        {
            if mode != Mode::Tunnel && address.is_ipv4() != vip.is_ipv4() {
                self.error(
                    &set.span(),
                    key(&p, "address"),
                    format!(
                        "{address} is {} but the VIP {vip} is {}: {mode} mode cannot change the address family (only tunnel mode can)",
                        family(address),
                        family(vip)
                    ),
                );
            }
        }

        let port = match &b.port {
            None => Some(None),
            Some(set) => {
                let port = self.port(set, &key(&p, "port"));
                if service.mode.is_some_and(|m| m != Mode::Nat) {
                    self.error(
                        &set.span(),
                        key(&p, "port"),
                        "only allowed in nat mode: dsr and tunnel modes deliver packets to the service port unchanged",
                    );
                } else if service.port == Some(PortMatch::All) {
                    self.error(
                        &set.span(),
                        key(&p, "port"),
                        "not allowed when the service port is \"all\": each flow keeps its own destination port",
                    );
                }
                port.map(Some)
            }
        };
        let weight: Option<u32> = self.integer(
            &b.weight,
            &key(&p, "weight"),
            0..=MAX_WEIGHT,
            DEFAULT_WEIGHT,
            "a weight in 0..=65535 (0 takes no new flows)",
        );
        let tier: Option<u32> = self.integer(
            &b.tier,
            &key(&p, "tier"),
            0..=i64::from(u32::MAX),
            0,
            "a tier of 0 (primary) or more (backups)",
        );
        let check = match &b.check {
            None => service.check.cloned(),
            Some(check) => {
                let layer = key(&p, "check");
                service.merged.over(&layer, check).build(self)
            }
        };

        if self.error_count() > before {
            return None;
        }
        Some(BackendConfig {
            name: name?,
            address: address?,
            port: port?,
            weight: weight?,
            tier: tier?,
            check: check?,
        })
    }

    /// Backend names and destinations must be unique within a service.
    fn backend_conflicts(&mut self, p: &str, backends: &[Spanned<RawBackend>]) {
        let mut names: BTreeMap<&str, &Spanned<String>> = BTreeMap::new();
        let mut destinations: BTreeMap<(IpAddr, Option<i64>), (&str, usize)> = BTreeMap::new();
        for (j, raw) in backends.iter().enumerate() {
            let b = raw.get_ref();
            let name = b.name.as_ref().map_or("", |n| n.get_ref().as_str());
            if let Some(set) = &b.name {
                if let Some(first) = names.get(name) {
                    let line = self.line(&first.span());
                    self.error(
                        &set.span(),
                        format!("{p}.backend[{j}].name"),
                        format!("duplicate backend name {name:?} (first defined at line {line})"),
                    );
                } else {
                    names.insert(name, set);
                }
            }
            let Some(set) = &b.address else { continue };
            let Ok(address) = set.get_ref().parse::<IpAddr>() else {
                continue;
            };
            let port = b.port.as_ref().map(|p| *p.get_ref());
            let line = self.line(&set.span());
            if let Some((first, first_line)) = destinations.get(&(address, port)).copied() {
                self.error(
                    &set.span(),
                    format!("{p}.backend[{j}].address"),
                    format!(
                        "{address} is already used by backend {first:?} (line {first_line}): one backend per destination"
                    ),
                );
            } else {
                destinations.insert((address, port), (name, line));
            }
        }
    }

    /// With `port = "all"`, a health check that connects needs its own port.
    fn check_ports(
        &mut self,
        s: &RawService,
        p: &str,
        port: Option<PortMatch>,
        backends: &[Option<BackendConfig>],
    ) {
        let (Some(PortMatch::All), Some(set)) = (port, &s.port) else {
            return;
        };
        let portless = backends.iter().flatten().find(|b| {
            b.port.is_none() && b.check.port.is_none() && needs_port(b.check.kind.check_type())
        });
        if let Some(b) = portless {
            self.error(
                &set.span(),
                key(p, "port"),
                format!(
                    "port = \"all\" leaves the {} check of backend {:?} without a port to probe: set `port` in the check",
                    b.check.kind.check_type(),
                    b.name
                ),
            );
        }
    }

    /// `min_up` must be reachable by at least one tier.
    fn tiers(
        &mut self,
        s: &RawService,
        p: &str,
        min_up: Option<u32>,
        backends: &[Option<BackendConfig>],
    ) {
        let (Some(min_up), Some(set)) = (min_up, &s.min_up) else {
            return;
        };
        if backends.iter().any(Option::is_none) || backends.is_empty() {
            return;
        }
        let mut per_tier: BTreeMap<u32, u32> = BTreeMap::new();
        for b in backends.iter().flatten() {
            *per_tier.entry(b.tier).or_default() += 1;
        }
        let largest = per_tier.values().copied().max().unwrap_or(0);
        if largest < min_up {
            self.error(
                &set.span(),
                key(p, "min_up"),
                format!(
                    "min_up = {min_up} but the largest tier has {largest} backend(s): no tier could ever be used"
                ),
            );
        }
    }

    /// Tunnel mode encapsulates in the backend's family, which needs a source range.
    fn tunnel_sources(&mut self, s: &RawService, p: &str, mode: Option<Mode>, tunnel: &RawTunnel) {
        let (Some(Mode::Tunnel), Some(mode_set)) = (mode, &s.mode) else {
            return;
        };
        let needs = [
            ("IPv4", "source_v4", tunnel.source_v4.is_some(), true),
            ("IPv6", "source_v6", tunnel.source_v6.is_some(), false),
        ];
        for (family, field, configured, v4) in needs {
            if configured {
                continue;
            }
            // From the raw backends, so a backend with another problem still counts.
            let backend = s.backend.iter().map(Spanned::get_ref).find(|b| {
                b.address
                    .as_ref()
                    .and_then(|a| a.get_ref().parse::<IpAddr>().ok())
                    .is_some_and(|a| a.is_ipv4() == v4)
            });
            if let Some(b) = backend {
                let name = b.name.as_ref().map_or("", |n| n.get_ref().as_str());
                self.error(
                    &mode_set.span(),
                    key(p, "mode"),
                    format!(
                        "tunnel mode to {family} backend {name:?} needs an {family} outer source: add {field} to [tunnel]"
                    ),
                );
            }
        }
    }

    /// Names are unique, and no two services match the same VIP, port and protocol.
    pub(crate) fn service_conflicts(&mut self, services: &[Spanned<RawService>]) {
        struct Seen<'r> {
            name: &'r str,
            line: usize,
            vip: IpAddr,
            port: PortMatch,
            protocol: Protocol,
        }
        let mut names: BTreeMap<&str, usize> = BTreeMap::new();
        let mut seen: Vec<Seen<'_>> = Vec::new();
        for (i, raw) in services.iter().enumerate() {
            let s = raw.get_ref();
            let name = s.name.as_ref().map_or("", |n| n.get_ref().as_str());
            if let Some(set) = &s.name {
                let line = self.line(&set.span());
                if let Some(&first) = names.get(name) {
                    self.error(
                        &set.span(),
                        format!("service[{i}].name"),
                        format!("duplicate service name {name:?} (first defined at line {first})"),
                    );
                } else {
                    names.insert(name, line);
                }
            }
            let vip = s
                .vip
                .as_ref()
                .and_then(|v| v.get_ref().parse::<IpAddr>().ok());
            let port = s.port.as_ref().and_then(|p| match p.get_ref() {
                RawPort::Number(n) => u16::try_from(*n)
                    .ok()
                    .filter(|&n| n != 0)
                    .map(PortMatch::Port),
                RawPort::Word(w) => (w == "all").then_some(PortMatch::All),
            });
            let protocol = s
                .protocol
                .as_ref()
                .map_or(Ok(Protocol::Tcp), |p| p.get_ref().parse());
            let (Some(vip), Some(port), Ok(protocol), Some(port_set)) =
                (vip, port, protocol, &s.port)
            else {
                continue;
            };
            let clash = seen.iter().find(|o| {
                o.vip == vip
                    && o.protocol == protocol
                    && (o.port == port || o.port == PortMatch::All || port == PortMatch::All)
            });
            if let Some(other) = clash {
                self.error(
                    &port_set.span(),
                    format!("service[{i}].port"),
                    format!(
                        "{vip} port {port}/{protocol} overlaps service {:?} (line {}, port {}/{protocol}): each VIP, port and protocol belongs to one service",
                        other.name, other.line, other.port
                    ),
                );
            }
            seen.push(Seen {
                name,
                line: self.line(&raw.span()),
                vip,
                port,
                protocol,
            });
        }
    }
}

/// What a backend needs to know about its service.
struct ServiceContext<'a, 'r> {
    path: &'a str,
    vip: Option<IpAddr>,
    port: Option<PortMatch>,
    mode: Option<Mode>,
    merged: &'a MergedCheck<'r>,
    check: Option<&'a CheckConfig>,
}
