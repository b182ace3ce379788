//! Attaching the project's auxiliary XDP programs inside lab namespaces.

use aya::Ebpf;
use failover::loader::{self, AttachMode, DECAP_OBJECT};
use failover_common::maps::{PROG_DECAP, PROG_PASS};

use crate::lab::{Lab, Netns, run_in};

/// Loads the decap object and attaches `program` to `ifname` inside `ns` (native mode).
/// Keep the returned object alive: dropping it detaches the program.
pub fn attach_in(ns: &Netns, ifname: &str, program: &'static str) -> anyhow::Result<Ebpf> {
    run_in(ns, || {
        let mut ebpf = loader::load_aux(DECAP_OBJECT, "failover-decap", program)?;
        loader::attach(&mut ebpf, program, ifname, AttachMode::Native)?;
        Ok(ebpf)
    })
}

/// Attaches the pass program to the load balancer's switch-side peer, so frames the load
/// balancer sends with XDP_TX reach the bridge.
pub fn pass_on_lb_peer(lab: &Lab) -> anyhow::Result<Ebpf> {
    attach_in(lab.switch(), lab.lb_peer_in_switch(), PROG_PASS)
}

/// Attaches the decapsulation program to every backend's interface.
pub fn decap_on_backends(lab: &Lab) -> anyhow::Result<Vec<Ebpf>> {
    lab.backends()
        .iter()
        .map(|b| attach_in(b.ns(), b.ifname(), PROG_DECAP))
        .collect()
}
