//! Loads the XDP objects built by `build.rs`, sizes their maps, and attaches them.

use std::path::PathBuf;

use crate::config::XdpLogLevel;

use aya::{
    Ebpf, EbpfLoader,
    programs::{ProgramError, Xdp, XdpMode, xdp::XdpLinkId},
};
use failover_common::{
    Counter,
    maps::{
        BACKEND_TRAFFIC, BACKENDS, COUNTERS, FLOWS4, FLOWS6, NAT_REPLIES, PROG_BALANCER, RINGS,
        SERVICE_TRAFFIC, SERVICES4, SERVICES6,
    },
};

/// The load balancer's object.
pub static BALANCER_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/failover-xdp"));
/// The backends' decapsulation object.
pub static DECAP_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/failover-decap"));
/// The bench baseline object.
pub static BASELINE_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/failover-baseline"));

/// Why loading or attaching failed.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The object is empty: the crate was built with `AYA_BUILD_SKIP`.
    #[error(
        "the XDP object {name} is empty: it was built with AYA_BUILD_SKIP=1; rebuild without it (after `cargo xtask setup`)"
    )]
    NotBuilt {
        /// Object name.
        name: &'static str,
    },
    /// The kernel refused the object or a map.
    #[error("loading {name} failed (are you root, with BPF and XDP support?)")]
    Load {
        /// Object name.
        name: &'static str,
        /// What aya said.
        #[source]
        source: aya::EbpfError,
    },
    /// The verifier refused a program, or it could not be attached.
    #[error("program {program}: {action} failed")]
    Program {
        /// Program name.
        program: &'static str,
        /// "verifying", "attaching to fo-lb0", ...
        action: String,
        /// What aya said.
        #[source]
        source: ProgramError,
    },
    /// An expected program or map is missing from the object.
    #[error("{what} {name} is missing from the XDP object (stale build?)")]
    Missing {
        /// "program" or "map".
        what: &'static str,
        /// Its name.
        name: &'static str,
    },
}

/// Map sizes, computed from the config (never from constants): see README for the formula.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapSizes {
    /// Service keys (a service has one key, plus one for its fragments).
    pub service_keys: u32,
    /// Services (ids).
    pub services: u32,
    /// Backends over all services (ids).
    pub backends: u32,
    /// Maglev slots: twice each service's table size (double-buffered), summed.
    pub ring_slots: u32,
    /// IPv4 connection-table capacity: the flow capacity if an IPv4 service exists, else 1.
    pub flows4: u32,
    /// IPv6 connection-table capacity: the flow capacity if an IPv6 service exists, else 1.
    pub flows6: u32,
    /// NAT reply-table capacity: the flow capacity when a service uses `nat`, else 1.
    pub nat_flows: u32,
}

/// The value of aya-log's `AYA_LOG_LEVEL` for a configured level: 0 turns every log
/// statement in the XDP program into one load and a branch.
pub const fn log_level_value(l: XdpLogLevel) -> u8 {
    match l {
        XdpLogLevel::Off => 0,
        XdpLogLevel::Error => 1,
        XdpLogLevel::Warn => 2,
        XdpLogLevel::Info => 3,
        XdpLogLevel::Debug => 4,
        XdpLogLevel::Trace => 5,
    }
}

/// Every sized map and its entries for `sizes`.
pub fn map_entries(sizes: &MapSizes) -> [(&'static str, u32); 12] {
    [
        (SERVICES4, sizes.service_keys.max(1)),
        (SERVICES6, sizes.service_keys.max(1)),
        (RINGS, sizes.ring_slots.max(1)),
        (BACKENDS, sizes.backends.max(1)),
        (BACKEND_TRAFFIC, sizes.backends.max(1)),
        (SERVICE_TRAFFIC, sizes.services.max(1)),
        (FLOWS4, sizes.flows4.max(1)),
        (FLOWS6, sizes.flows6.max(1)),
        (NAT_REPLIES, sizes.nat_flows.max(1)),
        (COUNTERS, Counter::COUNT),
        (failover_common::maps::GLOBALS, 1),
        // Interfaces, not config items: a fixed bound (an entry is 8 bytes).
        (
            failover_common::maps::EGRESS,
            failover_common::maps::EGRESS_INTERFACES,
        ),
    ]
}

/// Loads the load balancer with maps sized by `sizes` and verifies its program (not yet
/// attached). With `pins`, the maps are pinned there, or adopted if already pinned.
pub fn load_balancer(sizes: &MapSizes, log: XdpLogLevel) -> Result<Ebpf, LoadError> {
    load_balancer_pinned(sizes, log, None)
}

/// [`load_balancer`], with the maps pinned under (or adopted from) `pins`.
pub fn load_balancer_pinned(
    sizes: &MapSizes,
    log: XdpLogLevel,
    pins: Option<&crate::pins::Pins>,
) -> Result<Ebpf, LoadError> {
    let name = "failover-xdp";
    if BALANCER_OBJECT.is_empty() {
        return Err(LoadError::NotBuilt { name });
    }
    let level = log_level_value(log);
    let mut loader = EbpfLoader::new();
    for (map, entries) in map_entries(sizes) {
        loader.map_max_entries(map, entries);
    }
    if let Some(pins) = pins {
        for map in crate::pins::PINNED_MAPS {
            loader.map_pin_path(map, pins.map_path(map));
        }
    }
    let mut ebpf = loader
        .override_global("AYA_LOG_LEVEL", &level, false)
        .load(BALANCER_OBJECT)
        .map_err(|source| LoadError::Load { name, source })?;
    verify(&mut ebpf, PROG_BALANCER)?;
    Ok(ebpf)
}

/// Loads an auxiliary object (decap, baseline) and verifies its program.
pub fn load_aux(
    object: &'static [u8],
    name: &'static str,
    program: &'static str,
) -> Result<Ebpf, LoadError> {
    if object.is_empty() {
        return Err(LoadError::NotBuilt { name });
    }
    let mut ebpf = EbpfLoader::new()
        .load(object)
        .map_err(|source| LoadError::Load { name, source })?;
    verify(&mut ebpf, program)?;
    Ok(ebpf)
}

/// Runs the verifier on `program` (loads it into the kernel).
fn verify(ebpf: &mut Ebpf, program: &'static str) -> Result<(), LoadError> {
    xdp_mut(ebpf, program)?
        .load()
        .map_err(|source| LoadError::Program {
            program,
            action: "verifying".into(),
            source,
        })
}

/// The named XDP program of a loaded object.
pub fn xdp_mut<'a>(ebpf: &'a mut Ebpf, program: &'static str) -> Result<&'a mut Xdp, LoadError> {
    ebpf.program_mut(program)
        .and_then(|p| <&mut Xdp>::try_from(p).ok())
        .ok_or(LoadError::Missing {
            what: "program",
            name: program,
        })
}

/// Attaches `program` to `interface`; in `Auto` mode tries native (driver) XDP first, then
/// generic (skb) XDP.
pub fn attach(
    ebpf: &mut Ebpf,
    program: &'static str,
    interface: &str,
    mode: AttachMode,
) -> Result<XdpLinkId, LoadError> {
    let prog = xdp_mut(ebpf, program)?;
    let attempt = |prog: &mut Xdp, m: XdpMode| {
        prog.attach(interface, m)
            .map_err(|source| LoadError::Program {
                program,
                action: format!(
                    "attaching to interface {interface} (check `ip link show {interface}`)"
                ),
                source,
            })
    };
    match mode {
        AttachMode::Native => attempt(prog, XdpMode::Driver),
        AttachMode::Generic => attempt(prog, XdpMode::Skb),
        AttachMode::Auto => match attempt(prog, XdpMode::Driver) {
            Ok(id) => Ok(id),
            Err(native) => {
                tracing::warn!(interface, error = %native, "native XDP failed; falling back to generic XDP");
                attempt(prog, XdpMode::Skb)
            }
        },
    }
}

/// How to attach XDP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMode {
    /// Driver mode (fast); fails where the driver lacks XDP.
    Native,
    /// Generic (skb) mode: works everywhere, slower.
    Generic,
    /// Native, else generic.
    Auto,
}

/// Where the objects' pinned state lives by default.
pub fn default_pin_dir() -> PathBuf {
    PathBuf::from("/sys/fs/bpf/failover")
}
