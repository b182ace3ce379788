//! Turns a config into the dataplane's layout: service and backend ids, each service's
//! two table halves in `RINGS`, its keys, and every map's size. Pure: no kernel involved.
//!
//! The maps are sized with headroom ([`capacity`]), so a live reload can add services and
//! backends into the loaded maps. Ids and table halves are *allocated*, not derived from
//! config order: a reload ([`replan`]) keeps every surviving service's and backend's id
//! and halves (matched by name), and a restart that adopts pinned maps ([`recover`]) reads
//! them back from the maps (matched by VIP/port/protocol and backend address), so the
//! connection tables' backend ids keep meaning the same backends.

use std::{collections::BTreeSet, net::IpAddr};

use failover_common::{
    Backend, ForwardMode, PROTO_TCP, PROTO_UDP, ServiceKey, ServiceValue,
    service::{SVC_F_HIDE_RESET, SVC_F_NO_BACKEND_PASS},
};

use crate::{
    config::{Config, Mode, NoBackendPolicy, PortMatch, Protocol, ServiceConfig},
    dataplane::{ServiceEntry, addr_words, fragments_key, service_key},
    loader::MapSizes,
};

/// Every service's place in the dataplane.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Services, in config order.
    pub services: Vec<ServiceLayout>,
    /// The sizes of the maps this layout lives in (what is loaded: room for reloads).
    pub sizes: MapSizes,
}

/// One service's place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceLayout {
    /// Service name.
    pub name: String,
    /// What the dataplane stores.
    pub entry: ServiceEntry,
    /// Its backends' ids, in config order.
    pub backends: Vec<BackendSlot>,
}

/// One backend's id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendSlot {
    /// Backend name (unique within its service).
    pub name: String,
    /// Backend id (`BACKENDS` index).
    pub id: u32,
}

/// A config does not fit the loaded maps.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    /// A map has too few entries.
    #[error("the config needs {need} {what}, the loaded maps hold {have}")]
    Capacity {
        /// What ran out, e.g. "backend ids".
        what: &'static str,
        /// How many the config needs.
        need: u32,
        /// How many the maps hold.
        have: u32,
    },
    /// No free run of table slots is long enough.
    #[error(
        "no room for a {size}-slot Maglev table in RINGS ({have} slots, fragmented by live tables)"
    )]
    Rings {
        /// The table size.
        size: u32,
        /// The map's slots.
        have: u32,
    },
}

/// What the maps hold but the config no longer has (found when adopting pinned maps):
/// removed once the new tables are published.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stale {
    /// Service keys to delete.
    pub keys: Vec<ServiceKey>,
    /// Backend ids to clear.
    pub backends: Vec<u32>,
    /// Service ids the config's services took afresh (their counters are zeroed).
    pub new_services: Vec<u32>,
    /// Backend ids taken afresh.
    pub new_backends: Vec<u32>,
}

/// What the maps hold now: every service key with its value, every backend in use.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// `SERVICES4` and `SERVICES6` entries.
    pub services: Vec<(ServiceKey, ServiceValue)>,
    /// Non-empty `BACKENDS` entries.
    pub backends: Vec<(u32, Backend)>,
}

/// The IP protocol number of a config protocol.
pub const fn proto_number(p: Protocol) -> u8 {
    match p {
        Protocol::Tcp => PROTO_TCP,
        Protocol::Udp => PROTO_UDP,
    }
}

/// The packet path's mode of a config mode.
pub const fn forward_mode(m: Mode) -> ForwardMode {
    match m {
        Mode::Dsr => ForwardMode::Dsr,
        Mode::Tunnel => ForwardMode::Tunnel,
        Mode::Nat => ForwardMode::Nat,
    }
}

/// Whether `svc` receives the IP fragments sent to its VIP: fragments carry no port, so
/// they go to the VIP's all-ports service for the protocol, else to its only service.
fn takes_fragments(cfg: &Config, svc: &ServiceConfig) -> bool {
    let same = |o: &&ServiceConfig| o.vip == svc.vip && o.protocol == svc.protocol;
    let siblings: Vec<&ServiceConfig> = cfg.services.iter().filter(same).collect();
    match siblings.iter().find(|o| o.port == PortMatch::All) {
        Some(all) => all.name == svc.name,
        None => siblings.len() == 1,
    }
}

/// A service's keys: (VIP, port, protocol), and its fragments key when it takes them.
fn keys(cfg: &Config, svc: &ServiceConfig) -> Vec<ServiceKey> {
    let proto = proto_number(svc.protocol);
    let mut keys = vec![service_key(svc.vip, svc.port.port().unwrap_or(0), proto)];
    if takes_fragments(cfg, svc) {
        keys.push(fragments_key(svc.vip, proto));
    }
    keys
}

/// What `cfg` needs exactly, without headroom.
pub fn needs(cfg: &Config) -> MapSizes {
    let table = |f: &dyn Fn(&ServiceConfig) -> bool| {
        if cfg.services.iter().any(f) {
            cfg.flow_capacity
        } else {
            1
        }
    };
    MapSizes {
        service_keys: cfg.services.iter().map(|s| keys(cfg, s).len() as u32).sum(),
        services: cfg.services.len() as u32,
        backends: cfg.services.iter().map(|s| s.backends.len() as u32).sum(),
        ring_slots: cfg.services.iter().map(|s| 2 * s.table_size).sum(),
        flows4: table(&|s| s.vip.is_ipv4()),
        flows6: table(&|s| s.vip.is_ipv6()),
        nat_flows: table(&|s| s.mode == Mode::Nat),
    }
}

/// The default Maglev table size: the ring headroom leaves room for tables this big.
const DEFAULT_TABLE: u32 = 65537;

/// The sizes to load for `cfg`: room for live reloads to add services and backends
/// (twice what the config has, at least 16 services and 256 backends more) and tables
/// (four more of the largest or the default size: two new double-buffered services, or
/// resizes). The connection tables are not grown: `flow_capacity` sizes them.
pub fn capacity(cfg: &Config) -> MapSizes {
    let needs = needs(cfg);
    let largest = cfg.services.iter().map(|s| s.table_size).max().unwrap_or(0);
    let services = needs.services + needs.services.max(16);
    MapSizes {
        services,
        service_keys: 2 * services,
        backends: needs.backends + needs.backends.max(256),
        ring_slots: needs.ring_slots + 4 * DEFAULT_TABLE.max(largest),
        ..needs
    }
}

/// What a service had before: kept by [`assign`].
#[derive(Clone, Debug)]
struct PriorService {
    id: u32,
    /// Its table halves of `ring_size` slots; `None` when unknown (allocated afresh).
    halves: [Option<u32>; 2],
    ring_size: u32,
    /// Per backend of the new config, the id it had.
    backends: Vec<Option<u32>>,
}

/// What is in use before a (re)layout: per service of the new config what it keeps, and
/// what no new service or backend may take during the change (the old layout's ids and
/// table halves stay live until the new tables are published).
#[derive(Debug, Default)]
struct Prior {
    services: Vec<Option<PriorService>>,
    busy_services: BTreeSet<u32>,
    busy_backends: BTreeSet<u32>,
    /// (first slot, slots).
    busy_slots: Vec<(u32, u32)>,
}

/// Lowest id below `limit` not in `busy`; marks it busy.
fn take_id(
    busy: &mut BTreeSet<u32>,
    limit: u32,
    what: &'static str,
    need: u32,
) -> Result<u32, LayoutError> {
    let id = (0..limit)
        .find(|i| !busy.contains(i))
        .ok_or(LayoutError::Capacity {
            what,
            need,
            have: limit,
        })?;
    busy.insert(id);
    Ok(id)
}

/// Occupied runs of `RINGS` slots, sorted; first-fit allocation.
struct Slots {
    len: u32,
    used: Vec<(u32, u32)>,
}

impl Slots {
    fn mark(&mut self, start: u32, size: u32) {
        let at = self.used.partition_point(|&(s, _)| s < start);
        self.used.insert(at, (start, start + size));
    }

    fn take(&mut self, size: u32) -> Result<u32, LayoutError> {
        let mut cursor = 0u32;
        let mut found = None;
        for &(start, end) in &self.used {
            if start >= cursor && start - cursor >= size {
                found = Some(cursor);
                break;
            }
            cursor = cursor.max(end);
        }
        let start = match found {
            Some(s) => s,
            None if self.len.saturating_sub(cursor) >= size => cursor,
            None => {
                return Err(LayoutError::Rings {
                    size,
                    have: self.len,
                });
            }
        };
        self.mark(start, size);
        Ok(start)
    }
}

/// Lays `cfg` out in maps of `sizes`, keeping what `prior` says each service and backend
/// had, and allocating the rest where nothing busy is.
fn assign(cfg: &Config, sizes: MapSizes, mut prior: Prior) -> Result<Layout, LayoutError> {
    let needs = needs(cfg);
    let checks = [
        ("services", needs.services, sizes.services),
        ("service keys", needs.service_keys, sizes.service_keys),
        ("backend ids", needs.backends, sizes.backends),
        ("IPv4 connection-table entries", needs.flows4, sizes.flows4),
        ("IPv6 connection-table entries", needs.flows6, sizes.flows6),
        ("NAT reply-table entries", needs.nat_flows, sizes.nat_flows),
    ];
    for (what, need, have) in checks {
        if need > have {
            return Err(LayoutError::Capacity { what, need, have });
        }
    }
    prior.services.resize(cfg.services.len(), None);
    let mut slots = Slots {
        len: sizes.ring_slots,
        used: Vec::new(),
    };
    for &(start, size) in &prior.busy_slots {
        slots.mark(start, size);
    }
    // Kept ids and halves first, so nothing new lands on them.
    for p in prior.services.iter().flatten() {
        prior.busy_services.insert(p.id);
        prior.busy_backends.extend(p.backends.iter().flatten());
    }
    let mut services = Vec::with_capacity(cfg.services.len());
    for (svc, p) in cfg.services.iter().zip(&prior.services) {
        let id = match p {
            Some(p) => p.id,
            None => take_id(
                &mut prior.busy_services,
                sizes.services,
                "services",
                needs.services,
            )?,
        };
        let kept = p.as_ref().filter(|p| p.ring_size == svc.table_size);
        let mut halves = [0u32; 2];
        for (h, half) in halves.iter_mut().enumerate() {
            *half = match kept.and_then(|p| p.halves[h]) {
                Some(start) => start,
                None => slots.take(svc.table_size)?,
            };
        }
        let backends = svc
            .backends
            .iter()
            .enumerate()
            .map(|(b, backend)| {
                let id = match p
                    .as_ref()
                    .and_then(|p| p.backends.get(b).copied().flatten())
                {
                    Some(id) => id,
                    None => take_id(
                        &mut prior.busy_backends,
                        sizes.backends,
                        "backend ids",
                        needs.backends,
                    )?,
                };
                Ok(BackendSlot {
                    name: backend.name.clone(),
                    id,
                })
            })
            .collect::<Result<_, LayoutError>>()?;
        let mut flags = match svc.no_backend {
            NoBackendPolicy::Pass => SVC_F_NO_BACKEND_PASS,
            _ => 0,
        };
        if svc.passive_reset {
            flags |= SVC_F_HIDE_RESET;
        }
        services.push(ServiceLayout {
            name: svc.name.clone(),
            entry: ServiceEntry {
                id,
                keys: keys(cfg, svc),
                mode: forward_mode(svc.mode),
                flags,
                halves,
                ring_size: svc.table_size,
            },
            backends,
        });
    }
    Ok(Layout { services, sizes })
}

/// Lays out `cfg` afresh in maps with room for reloads ([`capacity`]): ids in config
/// order, tables one after the other.
pub fn plan(cfg: &Config) -> Layout {
    plan_in(cfg, capacity(cfg)).expect("capacity() leaves room for the config it was computed for")
}

/// Lays out `cfg` afresh in maps of `sizes`.
pub fn plan_in(cfg: &Config, sizes: MapSizes) -> Result<Layout, LayoutError> {
    assign(cfg, sizes, Prior::default())
}

/// Lays out a reloaded `cfg` in the maps `old` lives in: services and backends that keep
/// their names keep their ids and table halves (a resized table gets new halves); the
/// rest get ids and halves the old layout does not use, so nothing live is overwritten
/// before the new tables are published.
pub fn replan(cfg: &Config, old: &Layout) -> Result<Layout, LayoutError> {
    let services = cfg
        .services
        .iter()
        .map(|svc| {
            let o = old.service(&svc.name)?;
            Some(PriorService {
                id: o.entry.id,
                halves: o.entry.halves.map(Some),
                ring_size: o.entry.ring_size,
                backends: svc
                    .backends
                    .iter()
                    .map(|b| o.backends.iter().find(|x| x.name == b.name).map(|x| x.id))
                    .collect(),
            })
        })
        .collect();
    let prior = Prior {
        services,
        busy_services: old.services.iter().map(|s| s.entry.id).collect(),
        busy_backends: old
            .services
            .iter()
            .flat_map(|s| s.backends.iter().map(|b| b.id))
            .collect(),
        busy_slots: old
            .services
            .iter()
            .flat_map(|s| s.entry.halves.map(|h| (h, s.entry.ring_size)))
            .collect(),
    };
    assign(cfg, old.sizes, prior)
}

/// Lays out `cfg` in adopted (pinned) maps of `sizes` holding `snap`: a service found
/// under its key keeps its id and live table half, a backend found under its service id,
/// address and port keeps its id. Returns what the maps hold that the config no longer has.
pub fn recover(
    cfg: &Config,
    sizes: MapSizes,
    snap: &Snapshot,
) -> Result<(Layout, Stale), LayoutError> {
    let mut claimed = BTreeSet::new();
    let services = cfg
        .services
        .iter()
        .map(|svc| {
            let key = service_key(
                svc.vip,
                svc.port.port().unwrap_or(0),
                proto_number(svc.protocol),
            );
            let (_, v) = snap.services.iter().find(|(k, _)| *k == key)?;
            let backends = svc
                .backends
                .iter()
                .map(|b| {
                    let (addr_be, _) = addr_words(b.address);
                    let port_be = b.port.unwrap_or(0).to_be();
                    let (id, _) = snap.backends.iter().find(|(id, x)| {
                        x.service_id == v.id
                            && x.addr_be == addr_be
                            && x.port_be == port_be
                            && !claimed.contains(id)
                    })?;
                    claimed.insert(*id);
                    Some(*id)
                })
                .collect();
            // An empty table (`ring_size` 0) is read by nothing: both halves are allocated.
            let live = (v.ring_size == svc.table_size).then_some(v.ring_offset);
            Some(PriorService {
                id: v.id,
                halves: [live, None],
                ring_size: svc.table_size,
                backends,
            })
        })
        .collect();
    let prior = Prior {
        services,
        busy_services: snap.services.iter().map(|(_, v)| v.id).collect(),
        busy_backends: snap.backends.iter().map(|(id, _)| *id).collect(),
        busy_slots: snap
            .services
            .iter()
            .filter(|(_, v)| v.ring_size > 0)
            .map(|(_, v)| (v.ring_offset, v.ring_size))
            .collect(),
    };
    let layout = assign(cfg, sizes, prior)?;
    let keys: Vec<&ServiceKey> = layout.services.iter().flat_map(|s| &s.entry.keys).collect();
    let ids: BTreeSet<u32> = layout
        .services
        .iter()
        .flat_map(|s| s.backends.iter().map(|b| b.id))
        .collect();
    let mut stale_keys: Vec<ServiceKey> = snap
        .services
        .iter()
        .map(|(k, _)| *k)
        .filter(|k| !keys.contains(&k))
        .collect();
    stale_keys.dedup();
    let old_services: BTreeSet<u32> = snap.services.iter().map(|(_, v)| v.id).collect();
    let old_backends: BTreeSet<u32> = snap.backends.iter().map(|(id, _)| *id).collect();
    let stale = Stale {
        new_services: layout
            .services
            .iter()
            .map(|s| s.entry.id)
            .filter(|id| !old_services.contains(id))
            .collect(),
        new_backends: ids.difference(&old_backends).copied().collect(),
        keys: stale_keys,
        backends: snap
            .backends
            .iter()
            .map(|(id, _)| *id)
            .filter(|id| !ids.contains(id))
            .collect(),
    };
    Ok((layout, stale))
}

impl Layout {
    /// The layout of the service called `name`.
    pub fn service(&self, name: &str) -> Option<&ServiceLayout> {
        self.services.iter().find(|s| s.name == name)
    }
}

/// Whether an address is IPv6 (for backend flags).
pub const fn is_v6(a: IpAddr) -> bool {
    matches!(a, IpAddr::V6(_))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A config of `services`: (name, VIP, table size, backend names).
    fn config(services: &[(&str, &str, u32, &[&str])]) -> Config {
        let mut text = String::from("interface = \"eth0\"\n");
        for (name, vip, table, backends) in services {
            text += &format!(
                "[[service]]\nname = \"{name}\"\nvip = \"{vip}\"\nport = 80\nprotocol = \"tcp\"\nmode = \"dsr\"\ntable_size = {table}\n"
            );
            for (i, b) in backends.iter().enumerate() {
                text += &format!(
                    "  [[service.backend]]\n  name = \"{b}\"\n  address = \"198.18.1.{}\"\n",
                    i + 1
                );
            }
        }
        Config::parse(&text, "test.toml").unwrap_or_else(|e| panic!("{e}"))
    }

    fn ids(l: &Layout, service: &str) -> Vec<(String, u32)> {
        l.service(service)
            .unwrap()
            .backends
            .iter()
            .map(|b| (b.name.clone(), b.id))
            .collect()
    }

    /// Every table half of every service lies inside `RINGS` and overlaps no other.
    fn assert_disjoint(l: &Layout, also_live: &[(u32, u32)]) {
        let mut runs: Vec<(u32, u32)> = l
            .services
            .iter()
            .flat_map(|s| s.entry.halves.map(|h| (h, h + s.entry.ring_size)))
            .collect();
        runs.extend(also_live.iter().map(|&(s, n)| (s, s + n)));
        runs.sort_unstable();
        for w in runs.windows(2) {
            assert!(w[0].1 <= w[1].0, "overlapping table halves: {runs:?}");
        }
        assert!(runs.iter().all(|r| r.1 <= l.sizes.ring_slots), "{runs:?}");
    }

    #[test]
    fn a_fresh_plan_numbers_in_config_order_with_room_to_grow() {
        let cfg = config(&[
            ("a", "198.18.0.10", 257, &["a1", "a2"]),
            ("b", "198.18.0.11", 263, &["b1"]),
        ]);
        let l = plan(&cfg);
        assert_eq!(l.services[0].entry.id, 0);
        assert_eq!(l.services[1].entry.id, 1);
        assert_eq!(l.services[0].entry.halves, [0, 257]);
        assert_eq!(l.services[1].entry.halves, [514, 777]);
        assert_eq!(ids(&l, "b"), vec![("b1".into(), 2)]);
        let n = needs(&cfg);
        assert_eq!((n.services, n.backends, n.ring_slots), (2, 3, 1040));
        assert_eq!(l.sizes.services, 2 + 16);
        assert_eq!(l.sizes.backends, 3 + 256);
        assert_eq!(l.sizes.ring_slots, 1040 + 4 * 65537);
        assert_disjoint(&l, &[]);
    }

    #[test]
    fn replan_keeps_survivors_and_gives_newcomers_unused_ids_and_slots() {
        let old = plan(&config(&[
            ("a", "198.18.0.10", 257, &["a1", "a2", "a3"]),
            ("b", "198.18.0.11", 263, &["b1"]),
        ]));
        // a2 removed, a4 added; b removed; c added; a listed second now.
        let cfg = config(&[
            ("c", "198.18.0.12", 269, &["c1"]),
            ("a", "198.18.0.10", 257, &["a1", "a4", "a3"]),
        ]);
        let new = replan(&cfg, &old).unwrap();
        let a_old = old.service("a").unwrap();
        let a_new = new.service("a").unwrap();
        assert_eq!(a_new.entry.id, a_old.entry.id);
        assert_eq!(a_new.entry.halves, a_old.entry.halves);
        let old_ids: Vec<u32> = old
            .services
            .iter()
            .flat_map(|s| s.backends.iter().map(|b| b.id))
            .collect();
        let a = ids(&new, "a");
        assert_eq!(a[0], ("a1".into(), ids(&old, "a")[0].1));
        assert_eq!(a[2], ("a3".into(), ids(&old, "a")[2].1));
        assert!(
            !old_ids.contains(&a[1].1),
            "a4 took an id in use before the change: {a:?}"
        );
        let c = new.service("c").unwrap();
        assert_ne!(
            c.entry.id,
            old.service("b").unwrap().entry.id,
            "a removed service's id is not reused at once"
        );
        assert!(!old_ids.contains(&c.backends[0].id));
        // The new service's halves avoid every half live before the change.
        let live: Vec<(u32, u32)> = old
            .services
            .iter()
            .flat_map(|s| s.entry.halves.map(|h| (h, s.entry.ring_size)))
            .filter(|&(h, _)| !a_new.entry.halves.contains(&h))
            .collect();
        assert_disjoint(&new, &live);
        assert_eq!(new.sizes, old.sizes, "a reload never resizes maps");
    }

    #[test]
    fn replan_gives_a_resized_table_new_halves_away_from_the_live_ones() {
        let old = plan(&config(&[
            ("a", "198.18.0.10", 257, &["a1"]),
            ("b", "198.18.0.11", 257, &["b1"]),
        ]));
        let new = replan(
            &config(&[
                ("a", "198.18.0.10", 269, &["a1"]),
                ("b", "198.18.0.11", 257, &["b1"]),
            ]),
            &old,
        )
        .unwrap();
        let a = &new.service("a").unwrap().entry;
        assert_eq!(a.ring_size, 269);
        let old_a = old.service("a").unwrap().entry.halves.map(|h| (h, 257));
        assert_disjoint(&new, &old_a);
    }

    #[test]
    fn replan_refuses_what_the_loaded_maps_cannot_hold() {
        let old = plan(&config(&[("a", "198.18.0.10", 257, &["a1"])]));
        let many: Vec<String> = (0..300).map(|i| format!("n{i}")).collect();
        let names: Vec<&str> = many.iter().map(String::as_str).collect();
        let mut text = String::from(
            "interface = \"eth0\"\n[[service]]\nname = \"a\"\nvip = \"198.18.0.10\"\nport = 80\nprotocol = \"tcp\"\nmode = \"dsr\"\ntable_size = 65537\n",
        );
        for (i, n) in names.iter().enumerate() {
            text += &format!(
                "  [[service.backend]]\n  name = \"{n}\"\n  address = \"198.18.{}.{}\"\n",
                2 + i / 200,
                1 + i % 200
            );
        }
        let cfg = Config::parse(&text, "test.toml").unwrap();
        let err = replan(&cfg, &old).unwrap_err();
        assert_eq!(
            err,
            LayoutError::Capacity {
                what: "backend ids",
                need: 300,
                have: 257
            }
        );
        assert!(err.to_string().contains("needs 300 backend ids"), "{err}");
        // A table bigger than the free slots.
        let huge = config(&[
            ("a", "198.18.0.10", 257, &["a1"]),
            ("z", "198.18.0.11", 1_000_003, &["z1"]),
        ]);
        assert!(matches!(
            replan(&huge, &old),
            Err(LayoutError::Rings {
                size: 1_000_003,
                ..
            })
        ));
    }

    /// What the maps of `l` hold once every service published its first half.
    fn snapshot_of(l: &Layout, cfg: &Config) -> Snapshot {
        let services = l
            .services
            .iter()
            .flat_map(|s| {
                let v = ServiceValue {
                    id: s.entry.id,
                    mode: s.entry.mode as u32,
                    flags: s.entry.flags,
                    ring_offset: s.entry.halves[1],
                    ring_size: s.entry.ring_size,
                };
                s.entry.keys.iter().map(move |k| (*k, v))
            })
            .collect();
        let backends = l
            .services
            .iter()
            .zip(&cfg.services)
            .flat_map(|(s, c)| {
                s.backends.iter().zip(&c.backends).map(|(slot, b)| {
                    let (addr_be, _) = addr_words(b.address);
                    (
                        slot.id,
                        Backend {
                            addr_be,
                            service_id: s.entry.id,
                            flags: 1,
                            port_be: b.port.unwrap_or(0).to_be(),
                            ..Backend::default()
                        },
                    )
                })
            })
            .collect();
        Snapshot { services, backends }
    }

    #[test]
    fn recover_reads_ids_and_live_halves_back_from_adopted_maps() {
        let first = config(&[
            ("a", "198.18.0.10", 257, &["a1", "a2"]),
            ("b", "198.18.0.11", 263, &["b1"]),
        ]);
        let old = plan(&first);
        // Reloaded since the maps were written: that layout is what the maps hold.
        let live_cfg = config(&[
            ("b", "198.18.0.11", 263, &["b1"]),
            ("a", "198.18.0.10", 257, &["a2", "a1"]),
        ]);
        let live = replan(&live_cfg, &old).unwrap();
        let snap = snapshot_of(&live, &live_cfg);
        // A restart with another config: b gone, c new, a as before.
        let cfg = config(&[
            ("a", "198.18.0.10", 257, &["a1", "a2"]),
            ("c", "198.18.0.12", 271, &["c1"]),
        ]);
        let (l, stale) = recover(&cfg, live.sizes, &snap).unwrap();
        let a = l.service("a").unwrap();
        let live_a = live.service("a").unwrap();
        assert_eq!(a.entry.id, live_a.entry.id);
        assert_eq!(
            a.entry.halves[0], live_a.entry.halves[1],
            "the live half is kept"
        );
        // Backends are matched by address: a1 is 198.18.1.1 in `cfg` but was listed
        // second (198.18.1.2) in the live config, so ids follow addresses.
        let by_addr = |l: &Layout, c: &Config, svc: &str, addr: &str| {
            let s = c.services.iter().position(|x| x.name == svc).unwrap();
            let b = c.services[s]
                .backends
                .iter()
                .position(|x| x.address.to_string() == addr)
                .unwrap();
            l.services[s].backends[b].id
        };
        for addr in ["198.18.1.1", "198.18.1.2"] {
            assert_eq!(
                by_addr(&l, &cfg, "a", addr),
                by_addr(&live, &live_cfg, "a", addr)
            );
        }
        let b = live.service("b").unwrap();
        assert_eq!(stale.keys, b.entry.keys);
        assert_eq!(stale.backends, vec![b.backends[0].id]);
        let c = l.service("c").unwrap();
        assert_ne!(c.entry.id, b.entry.id);
        assert_eq!(
            stale.new_services,
            vec![c.entry.id],
            "a fresh id starts from zero counters"
        );
        assert_eq!(stale.new_backends, vec![c.backends[0].id]);
        let busy: Vec<(u32, u32)> = snap
            .services
            .iter()
            .map(|(_, v)| (v.ring_offset, v.ring_size))
            .collect();
        let mut busy_other = busy.clone();
        busy_other.retain(|&(o, _)| o != a.entry.halves[0]);
        busy_other.dedup();
        assert_disjoint(&l, &busy_other);
    }
}
