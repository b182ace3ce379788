//! Writes a desired state into the dataplane: globals, every backend, and every service's
//! Maglev table over the backends that take new flows. The brain calls this; so do the
//! packet tests, so they exercise the same path.

use std::net::IpAddr;

use failover_common::{
    Backend, Globals,
    backend::{BACKEND_F_IPV6, BACKEND_F_USABLE},
    service::GLOBAL_F_NAT,
};

use crate::{
    config::{Config, Mode, ServiceConfig},
    dataplane::{Dataplane, DataplaneError, addr_words},
    layout::{Layout, ServiceLayout, is_v6},
    selection::maglev::{self, MaglevBackend, MaglevError},
};

/// Why the dataplane could not be brought to the desired state.
#[derive(Debug, thiserror::Error)]
pub enum ProgramError {
    /// A map operation failed.
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    /// A Maglev table could not be built.
    #[error("service {service}: building its Maglev table failed")]
    Maglev {
        /// Service name.
        service: String,
        /// Why.
        #[source]
        source: MaglevError,
    },
}

/// What one service may use: backends taking new flows (with their table weight), and
/// whether a backend keeps its established flows.
pub struct Membership<'a> {
    /// (backend name, weight) of the backends taking new flows.
    pub new_flows: Vec<(&'a str, u32)>,
    /// Whether the named backend's established flows keep going.
    pub existing: &'a dyn Fn(&str) -> bool,
}

/// The program-wide settings a config implies.
pub fn globals(cfg: &Config) -> Globals {
    let mut g = Globals {
        mtu: cfg.mtu,
        ..Globals::default()
    };
    if let Some((net, len)) = cfg.tunnel.source_v4 {
        let host = if len >= 32 { 0 } else { u32::MAX >> len };
        g.tunnel_src4_be = u32::from(net).to_be();
        g.tunnel_src4_mask_be = host.to_be();
    }
    if let Some((net, len)) = cfg.tunnel.source_v6 {
        let (words, _) = addr_words(IpAddr::V6(net));
        let host_bits = 128u32.saturating_sub(u32::from(len)).min(32);
        let host = if host_bits == 0 {
            0
        } else {
            u32::MAX >> (32 - host_bits)
        };
        g.tunnel_src6_be = words;
        g.tunnel_src6_mask_be = host.to_be();
    }
    if cfg.services.iter().any(|s| s.mode == Mode::Nat) {
        g.flags |= GLOBAL_F_NAT;
    }
    g
}

/// Writes one service: each backend (usable bit = keeps established flows), then its
/// Maglev table over `members.new_flows`, flipped in with one update. `mac` gives each
/// backend's next-hop MAC (zero when unresolved: the packet path then drops with
/// `drop_backend_unresolved`); its egress interface comes from [`Dataplane::egress`].
pub fn apply_service(
    dp: &mut Dataplane,
    svc: &ServiceConfig,
    sl: &ServiceLayout,
    mac: &dyn Fn(IpAddr) -> [u8; 6],
    members: &Membership<'_>,
) -> Result<(), ProgramError> {
    for (b, slot) in svc.backends.iter().zip(&sl.backends) {
        let (addr_be, _) = addr_words(b.address);
        let mut flags = if (members.existing)(&b.name) {
            BACKEND_F_USABLE
        } else {
            0
        };
        if is_v6(b.address) {
            flags |= BACKEND_F_IPV6;
        }
        let value = Backend {
            addr_be,
            service_id: sl.entry.id,
            flags,
            mac: mac(b.address),
            port_be: b.port.unwrap_or(0).to_be(),
            ifindex: dp.egress(b.address),
            mode: sl.entry.mode as u32,
        };
        dp.set_backend(slot.id, &value)?;
    }
    let table: Vec<MaglevBackend<'_>> = members
        .new_flows
        .iter()
        .filter_map(|&(name, weight)| {
            let slot = sl.backends.iter().find(|s| s.name == name)?;
            Some(MaglevBackend {
                key: name,
                id: slot.id,
                weight,
            })
        })
        .collect();
    dp.publish(&sl.entry, |slots| maglev::fill_table(&table, slots))?
        .map_err(|source| ProgramError::Maglev {
            service: svc.name.clone(),
            source,
        })
}

/// Writes everything with a fixed usable set (`usable(service, backend)`): every usable
/// backend takes new flows at its configured weight. For tests and tools; the daemon
/// writes what the brain selects.
pub fn apply(
    dp: &mut Dataplane,
    cfg: &Config,
    layout: &Layout,
    mac: &dyn Fn(IpAddr) -> [u8; 6],
    usable: &dyn Fn(&str, &str) -> bool,
) -> Result<(), ProgramError> {
    dp.set_globals(&globals(cfg))?;
    for (svc, sl) in cfg.services.iter().zip(&layout.services) {
        let new_flows = svc
            .backends
            .iter()
            .filter(|b| usable(&svc.name, &b.name))
            .map(|b| (b.name.as_str(), b.weight))
            .collect();
        let existing = |b: &str| usable(&svc.name, b);
        apply_service(
            dp,
            svc,
            sl,
            mac,
            &Membership {
                new_flows,
                existing: &existing,
            },
        )?;
    }
    Ok(())
}
