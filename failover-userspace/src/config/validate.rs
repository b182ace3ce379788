//! Validation: the raw file into a typed [`Config`], collecting every problem on the way.
//!
//! Each key is checked on its own first (type of value, range, syntax); rules spanning
//! several keys (uniqueness, address families, tiers) only look at keys that passed, so
//! one mistake yields one error.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::{Range, RangeInclusive};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use failover_common::maps::DEFAULT_FLOW_CAPACITY;
use toml::Spanned;

use super::check::MergedCheck;
use super::duration::parse_duration;
use super::error::{ConfigError, LocatedError, Source};
use super::raw::{DurationText, FileConfig, Key, RawTunnel};
use super::types::{
    Config, LogLevel, ParseChoiceError, ServiceConfig, TunnelConfig, XdpLogLevel, XdpMode,
};

const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/failover";
const DEFAULT_CONTROL_SOCKET: &str = "/run/failover/control.sock";
/// Smallest connection table worth having; below it the LRU evicts live flows.
const MIN_FLOW_CAPACITY: i64 = 1024;
const DEFAULT_MTU: u32 = 1500;
/// The smallest datagram every IPv4 host must accept (RFC 791).
const MIN_MTU: i64 = 576;
/// `IFNAMSIZ` minus the terminating NUL.
const MAX_INTERFACE_LEN: usize = 15;
/// `sun_path` of `sockaddr_un` minus the terminating NUL.
const MAX_SOCKET_PATH_LEN: usize = 107;
const MAX_NAME_LEN: usize = 32;
const TUNNEL_V4_PREFIXES: RangeInclusive<u8> = 16..=32;
const TUNNEL_V6_PREFIXES: RangeInclusive<u8> = 96..=128;

/// Validates a parsed file. Every problem found is reported, not just the first.
pub(crate) fn validate(
    raw: &FileConfig,
    src: &Source<'_>,
    file: PathBuf,
) -> Result<Config, ConfigError> {
    let mut v = Validator {
        src,
        errors: Vec::new(),
    };
    let config = v.config(raw, file);
    match config {
        Some(config) if v.errors.is_empty() => Ok(config),
        _ => {
            debug_assert!(!v.errors.is_empty(), "validation failed without an error");
            Err(src.invalid(v.errors))
        }
    }
}

/// `prefix.field`, or `field` at the top level.
pub(crate) fn key(prefix: &str, field: &str) -> String {
    if prefix.is_empty() {
        field.to_owned()
    } else {
        format!("{prefix}.{field}")
    }
}

/// Collects errors while turning raw values into typed ones.
pub(crate) struct Validator<'s> {
    src: &'s Source<'s>,
    errors: Vec<LocatedError>,
}

impl Validator<'_> {
    /// Records a problem at `span`.
    pub(crate) fn error(
        &mut self,
        span: &Range<usize>,
        key: impl Into<String>,
        message: impl Into<String>,
    ) {
        let error = self.src.error(span, key, message);
        self.errors.push(error);
    }

    /// How many problems were recorded so far.
    pub(crate) fn error_count(&self) -> usize {
        self.errors.len()
    }

    /// The line a span starts on, for messages that point at another key.
    pub(crate) fn line(&self, span: &Range<usize>) -> usize {
        self.src.position(span.start).0
    }

    /// The value of a required key, or an error at the table that lacks it.
    pub(crate) fn required<'r, T>(
        &mut self,
        value: &'r Key<T>,
        table: &Range<usize>,
        key: String,
        expected: &str,
    ) -> Option<&'r Spanned<T>> {
        if value.is_none() {
            // Point at the table header: the key has no line of its own.
            let table = table.start..table.start;
            self.error(&table, key, format!("missing key: expected {expected}"));
        }
        value.as_ref()
    }

    pub(crate) fn parse_choice<T: FromStr<Err = ParseChoiceError>>(
        &mut self,
        set: &Spanned<String>,
        key: String,
    ) -> Option<T> {
        set.get_ref()
            .parse()
            .map_err(|e: ParseChoiceError| self.error(&set.span(), key, e.to_string()))
            .ok()
    }

    pub(crate) fn choice<T: FromStr<Err = ParseChoiceError>>(
        &mut self,
        value: &Key<String>,
        key: String,
        default: T,
    ) -> Option<T> {
        match value {
            None => Some(default),
            Some(set) => self.parse_choice(set, key),
        }
    }

    /// Parses a duration string.
    pub(crate) fn duration(&mut self, set: &Spanned<DurationText>, key: &str) -> Option<Duration> {
        parse_duration(&set.get_ref().0)
            .map_err(|e| self.error(&set.span(), key, e.to_string()))
            .ok()
    }

    pub(crate) fn optional_duration(
        &mut self,
        value: &Key<DurationText>,
        key: &str,
        default: Duration,
    ) -> Option<Duration> {
        match value {
            None => Some(default),
            Some(set) => self.duration(set, key),
        }
    }

    /// An integer in `range`; `expected` describes it for the message.
    pub(crate) fn integer<T: TryFrom<i64>>(
        &mut self,
        value: &Key<i64>,
        key: &str,
        range: RangeInclusive<i64>,
        default: T,
        expected: &str,
    ) -> Option<T> {
        let Some(set) = value else {
            return Some(default);
        };
        let n = *set.get_ref();
        if range.contains(&n) {
            T::try_from(n).ok()
        } else {
            self.error(&set.span(), key, format!("expected {expected}, found {n}"));
            None
        }
    }

    /// A port number, 1..=65535.
    pub(crate) fn port(&mut self, set: &Spanned<i64>, key: &str) -> Option<u16> {
        let n = *set.get_ref();
        match u16::try_from(n) {
            Ok(port) if port != 0 => Some(port),
            _ => {
                self.error(
                    &set.span(),
                    key,
                    format!("expected a port in 1..=65535, found {n}"),
                );
                None
            }
        }
    }

    /// An IPv4 or IPv6 address.
    pub(crate) fn address(&mut self, set: &Spanned<String>, key: &str) -> Option<IpAddr> {
        let text = set.get_ref();
        text.parse()
            .map_err(|_| {
                self.error(
                    &set.span(),
                    key,
                    format!(
                        "expected an IPv4 or IPv6 address such as \"198.18.0.10\" or \"2001:db8::10\", found {text:?}"
                    ),
                );
            })
            .ok()
    }

    /// An address packets can be sent to: not unspecified, multicast or broadcast.
    pub(crate) fn unicast(&mut self, set: &Spanned<String>, key: &str) -> Option<IpAddr> {
        let address = self.address(set, key)?;
        let unusable = address.is_unspecified()
            || address.is_multicast()
            || address == IpAddr::V4(Ipv4Addr::BROADCAST);
        if unusable {
            self.error(
                &set.span(),
                key,
                format!("expected a unicast address, found {address}"),
            );
            return None;
        }
        Some(address)
    }

    /// A service or backend name.
    pub(crate) fn name(&mut self, set: &Spanned<String>, key: &str) -> Option<String> {
        let name = set.get_ref();
        let valid = !name.is_empty()
            && name.len() <= MAX_NAME_LEN
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if !valid {
            self.error(
                &set.span(),
                key,
                format!(
                    "expected 1 to {MAX_NAME_LEN} characters from a-z, 0-9, '_' and '-', found {name:?}"
                ),
            );
            return None;
        }
        Some(name.clone())
    }

    fn absolute_path(&mut self, value: &Key<String>, key: &str, default: &str) -> Option<PathBuf> {
        let Some(set) = value else {
            return Some(PathBuf::from(default));
        };
        let path = set.get_ref();
        if !path.starts_with('/') {
            self.error(
                &set.span(),
                key,
                format!("expected an absolute path such as {default:?}, found {path:?}"),
            );
            return None;
        }
        Some(PathBuf::from(path))
    }

    fn config(&mut self, raw: &FileConfig, file: PathBuf) -> Option<Config> {
        let interface = self.interface(raw);
        let xdp_mode = self.choice(&raw.xdp_mode, "xdp_mode".into(), XdpMode::Auto);
        let flow_capacity = self.integer(
            &raw.flow_capacity,
            "flow_capacity",
            MIN_FLOW_CAPACITY..=i64::from(u32::MAX),
            DEFAULT_FLOW_CAPACITY,
            "a number of flows of at least 1024",
        );
        let pin_dir = self.absolute_path(&raw.pin_dir, "pin_dir", DEFAULT_PIN_DIR);
        let control_socket = self.control_socket(raw);
        let metrics_listen = self.metrics_listen(raw);
        let log_level = self.choice(&raw.log_level, "log_level".into(), LogLevel::Info);
        let xdp_log_level =
            self.choice(&raw.xdp_log_level, "xdp_log_level".into(), XdpLogLevel::Off);
        let detach_on_exit = raw.detach_on_exit.as_ref().is_some_and(|b| *b.get_ref());
        let mtu = self.mtu(raw);
        let default_tunnel = RawTunnel::default();
        let raw_tunnel = raw.tunnel.as_ref().unwrap_or(&default_tunnel);
        let tunnel = self.tunnel(raw_tunnel);

        let empty = MergedCheck::default();
        let defaults = match raw.defaults.as_ref().and_then(|d| d.check.as_ref()) {
            Some(check) => empty.over("defaults.check", check),
            None => empty,
        };
        // On its own, so its problems show even when no service uses it.
        defaults.build(self);

        let services: Vec<Option<ServiceConfig>> = raw
            .service
            .iter()
            .enumerate()
            .map(|(i, s)| self.service(i, s, &defaults, raw_tunnel))
            .collect();
        self.service_conflicts(&raw.service);

        Some(Config {
            file,
            interfaces: interface?,
            xdp_mode: xdp_mode?,
            flow_capacity: flow_capacity?,
            pin_dir: pin_dir?,
            control_socket: control_socket?,
            metrics_listen: metrics_listen?,
            log_level: log_level?,
            xdp_log_level: xdp_log_level?,
            detach_on_exit,
            mtu: mtu?,
            tunnel: tunnel?,
            services: services.into_iter().collect::<Option<_>>()?,
        })
    }

    fn interface(&mut self, raw: &FileConfig) -> Option<Vec<String>> {
        let set = self.required(
            &raw.interface,
            &(0..0),
            "interface".into(),
            "the interface to attach the XDP program to, e.g. interface = \"eth0\" (or a list: [\"eth0\", \"eth1\"])",
        )?;
        let names = &set.get_ref().0;
        if names.is_empty() {
            self.error(
                &set.span(),
                "interface",
                "expected at least one interface name, e.g. interface = \"eth0\"".to_string(),
            );
            return None;
        }
        let mut ok = true;
        for (i, name) in names.iter().enumerate() {
            // The kernel's dev_valid_name().
            let valid = !name.is_empty()
                && name.len() <= MAX_INTERFACE_LEN
                && name != "."
                && name != ".."
                && !name.contains(|c: char| c == '/' || c == ':' || c.is_whitespace());
            if !valid {
                self.error(
                    &set.span(),
                    "interface",
                    format!(
                        "expected an interface name of 1 to {MAX_INTERFACE_LEN} bytes without '/', ':' or spaces (see `ip link`), found {name:?}"
                    ),
                );
                ok = false;
            } else if names[..i].contains(name) {
                self.error(
                    &set.span(),
                    "interface",
                    format!("interface {name:?} is listed twice"),
                );
                ok = false;
            }
        }
        ok.then(|| names.clone())
    }

    fn control_socket(&mut self, raw: &FileConfig) -> Option<PathBuf> {
        let path = self.absolute_path(
            &raw.control_socket,
            "control_socket",
            DEFAULT_CONTROL_SOCKET,
        )?;
        let len = path.as_os_str().len();
        if let Some(set) = raw
            .control_socket
            .as_ref()
            .filter(|_| len > MAX_SOCKET_PATH_LEN)
        {
            self.error(
                &set.span(),
                "control_socket",
                format!(
                    "expected a path of at most {MAX_SOCKET_PATH_LEN} bytes (the limit of a Unix socket address), found {len} bytes"
                ),
            );
            return None;
        }
        Some(path)
    }

    fn metrics_listen(&mut self, raw: &FileConfig) -> Option<Option<SocketAddr>> {
        let Some(set) = &raw.metrics_listen else {
            return Some(None);
        };
        let text = set.get_ref();
        match text.parse() {
            Ok(address) => Some(Some(address)),
            Err(_) => {
                self.error(
                    &set.span(),
                    "metrics_listen",
                    format!(
                        "expected an address and port such as \"127.0.0.1:9100\" or \"[::1]:9100\", found {text:?}"
                    ),
                );
                None
            }
        }
    }

    fn mtu(&mut self, raw: &FileConfig) -> Option<u32> {
        let Some(set) = &raw.mtu else {
            return Some(DEFAULT_MTU);
        };
        let n = *set.get_ref();
        if n == 0 || (MIN_MTU..=65_535).contains(&n) {
            return u32::try_from(n).ok();
        }
        self.error(
            &set.span(),
            "mtu",
            format!("expected 0 (no check) or an MTU in {MIN_MTU}..=65535, found {n}"),
        );
        None
    }

    fn tunnel(&mut self, raw: &RawTunnel) -> Option<TunnelConfig> {
        let source_v4 = match &raw.source_v4 {
            None => Some(None),
            Some(set) => self
                .network(
                    set,
                    "tunnel.source_v4",
                    TUNNEL_V4_PREFIXES,
                    "198.18.250.0/24",
                )
                .map(|(address, prefix)| match address {
                    IpAddr::V4(a) => Some((a, prefix)),
                    IpAddr::V6(_) => None,
                }),
        };
        let source_v6 = match &raw.source_v6 {
            None => Some(None),
            Some(set) => self
                .network(
                    set,
                    "tunnel.source_v6",
                    TUNNEL_V6_PREFIXES,
                    "2001:db8:ffff::/112",
                )
                .map(|(address, prefix)| match address {
                    IpAddr::V6(a) => Some((a, prefix)),
                    IpAddr::V4(_) => None,
                }),
        };
        Some(TunnelConfig {
            source_v4: source_v4?,
            source_v6: source_v6?,
        })
    }

    /// A network `address/prefix` of the family of `example`, with no host bits set.
    fn network(
        &mut self,
        set: &Spanned<String>,
        key: &str,
        prefixes: RangeInclusive<u8>,
        example: &str,
    ) -> Option<(IpAddr, u8)> {
        let text = set.get_ref();
        let want_v4 = example.contains('.');
        let expected = format!(
            "expected an {} network with a prefix length in {}..={}, such as {example:?}, found {text:?}",
            if want_v4 { "IPv4" } else { "IPv6" },
            prefixes.start(),
            prefixes.end()
        );
        let parsed = text.split_once('/').and_then(|(address, prefix)| {
            let address: IpAddr = address.parse().ok()?;
            let prefix: u8 = prefix.parse().ok()?;
            (address.is_ipv4() == want_v4 && prefixes.contains(&prefix))
                .then_some((address, prefix))
        });
        let Some((address, prefix)) = parsed else {
            self.error(&set.span(), key, expected);
            return None;
        };
        let network = match address {
            IpAddr::V4(a) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
                IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask))
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask))
            }
        };
        if network != address {
            self.error(
                &set.span(),
                key,
                format!("{text} has host bits set: write {network}/{prefix}"),
            );
            return None;
        }
        Some((address, prefix))
    }
}
