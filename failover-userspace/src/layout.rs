//! Turns a config into the dataplane's layout: service and backend ids, each service's
//! slots in `RINGS`, its keys, and every map's size. Pure: no kernel involved.

use std::net::IpAddr;

use failover_common::{
    ForwardMode, PROTO_TCP, PROTO_UDP,
    service::{SVC_F_HIDE_RESET, SVC_F_NO_BACKEND_PASS},
};

use crate::{
    config::{Config, Mode, NoBackendPolicy, PortMatch, Protocol, ServiceConfig},
    dataplane::{ServiceEntry, fragments_key, service_key},
    loader::MapSizes,
};

/// Every service's place in the dataplane.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Services, in config order.
    pub services: Vec<ServiceLayout>,
    /// Map sizes this layout needs.
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

/// Lays out `cfg`.
pub fn plan(cfg: &Config) -> Layout {
    let mut services = Vec::with_capacity(cfg.services.len());
    let mut next_backend = 0u32;
    let mut ring_base = 0u32;
    let mut keys = 0u32;
    for (id, svc) in cfg.services.iter().enumerate() {
        let proto = proto_number(svc.protocol);
        let mut svc_keys = vec![service_key(svc.vip, svc.port.port().unwrap_or(0), proto)];
        if takes_fragments(cfg, svc) {
            svc_keys.push(fragments_key(svc.vip, proto));
        }
        keys += svc_keys.len() as u32;
        let mut flags = match svc.no_backend {
            NoBackendPolicy::Pass => SVC_F_NO_BACKEND_PASS,
            _ => 0,
        };
        if svc.passive_reset {
            flags |= SVC_F_HIDE_RESET;
        }
        let backends = svc
            .backends
            .iter()
            .map(|b| {
                let slot = BackendSlot {
                    name: b.name.clone(),
                    id: next_backend,
                };
                next_backend += 1;
                slot
            })
            .collect();
        services.push(ServiceLayout {
            name: svc.name.clone(),
            entry: ServiceEntry {
                id: id as u32,
                keys: svc_keys,
                mode: forward_mode(svc.mode),
                flags,
                ring_base,
                ring_size: svc.table_size,
            },
            backends,
        });
        ring_base += 2 * svc.table_size;
    }
    let sizes = MapSizes {
        service_keys: keys,
        services: cfg.services.len() as u32,
        backends: next_backend,
        ring_slots: ring_base,
        flows4: if cfg.services.iter().any(|s| s.vip.is_ipv4()) {
            cfg.flow_capacity
        } else {
            1
        },
        flows6: if cfg.services.iter().any(|s| s.vip.is_ipv6()) {
            cfg.flow_capacity
        } else {
            1
        },
        nat_flows: if cfg.services.iter().any(|s| s.mode == Mode::Nat) {
            cfg.flow_capacity
        } else {
            1
        },
    };
    Layout { services, sizes }
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
