//! Writes a desired state into the dataplane: globals, every backend, and every service's
//! Maglev table over its usable backends. The daemon's writer calls this; so do the packet
//! tests, so they exercise the same path.

use std::net::IpAddr;

use failover_common::{
    Backend, Globals,
    backend::{BACKEND_F_IPV6, BACKEND_F_USABLE},
    service::GLOBAL_F_NAT,
};

use crate::{
    config::{Config, Mode},
    dataplane::{Dataplane, DataplaneError, addr_words},
    layout::{Layout, is_v6},
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
        let host_bits = 128u32.saturating_sub(len as u32).min(32);
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

/// Writes everything: `mac` gives each backend's next-hop MAC (zero when unresolved: the
/// packet path then drops with `drop_backend_unresolved`), `usable` says which backends
/// may take traffic.
pub fn apply(
    dp: &mut Dataplane,
    cfg: &Config,
    layout: &Layout,
    mac: &dyn Fn(IpAddr) -> [u8; 6],
    usable: &dyn Fn(&str, &str) -> bool,
) -> Result<(), ProgramError> {
    dp.set_globals(&globals(cfg))?;
    for (svc, sl) in cfg.services.iter().zip(&layout.services) {
        let mut members = Vec::new();
        for (b, slot) in svc.backends.iter().zip(&sl.backends) {
            let ok = usable(&svc.name, &b.name);
            let (addr_be, _) = addr_words(b.address);
            let mut flags = if ok { BACKEND_F_USABLE } else { 0 };
            if is_v6(b.address) {
                flags |= BACKEND_F_IPV6;
            }
            let value = Backend {
                addr_be,
                service_id: sl.entry.id,
                flags,
                mac: mac(b.address),
                port_be: b.port.unwrap_or(0).to_be(),
                ifindex: 0,
            };
            dp.set_backend(slot.id, &value)?;
            if ok {
                members.push(MaglevBackend {
                    key: &b.name,
                    id: slot.id,
                    weight: b.weight,
                });
            }
        }
        dp.publish(&sl.entry, |slots| maglev::fill_table(&members, slots))?
            .map_err(|source| ProgramError::Maglev {
                service: svc.name.clone(),
                source,
            })?;
    }
    Ok(())
}
