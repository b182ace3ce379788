//! Sending a packet to its backend, one module per forwarding mode.

mod dsr;
mod nat;
mod tunnel;

use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use failover_common::{Backend, Counter, FlowKey, ForwardMode, ServiceValue};
use failover_ebpf::parse::{EthHdr, L2, L3, ptr_at};

use crate::{maps::EGRESS, select::Pick};

pub use nat::reply as nat_reply;

/// Forwards the packet by the service's mode; returns the XDP action.
#[inline(always)]
pub fn forward(
    ctx: &XdpContext,
    l2: L2,
    l3: &L3,
    svc: &ServiceValue,
    pick: &Pick,
    key: &FlowKey,
    syn: bool,
) -> Result<u32, Counter> {
    let backend = &pick.backend;
    if backend.mac == [0; 6] {
        return Err(Counter::DropBackendUnresolved);
    }
    match ForwardMode::from_u32(svc.mode) {
        Some(ForwardMode::Dsr) => {}
        Some(ForwardMode::Tunnel) => tunnel::encapsulate(ctx, l2, l3, backend, key)?,
        Some(ForwardMode::Nat) => nat::translate(ctx, l3, svc, pick, key, syn)?,
        None => return Err(Counter::DropInternal),
    }
    dsr::set_macs(ctx, &backend.mac)?;
    transmit(backend)
}

/// Sends an ICMP too-big error about a `nat` flow to the flow's backend, its quote
/// translated back to the packet the backend sent (`vport_be`: the service port the client
/// addressed, which the backend port replaces when it is 0).
#[inline(always)]
pub fn nat_icmp(
    ctx: &XdpContext,
    l3: &L3,
    quote: &L3,
    backend: &Backend,
    vport_be: u16,
) -> Result<u32, Counter> {
    if backend.mac == [0; 6] {
        return Err(Counter::DropBackendUnresolved);
    }
    nat::icmp_to_backend(ctx, l3, quote, backend, vport_be)?;
    dsr::set_macs(ctx, &backend.mac)?;
    transmit(backend)
}

/// XDP_TX back out of the interface, or XDP_REDIRECT through `EGRESS` when the backend
/// sits behind another interface.
#[inline(always)]
fn transmit(backend: &Backend) -> Result<u32, Counter> {
    if backend.ifindex == 0 {
        return Ok(xdp_action::XDP_TX);
    }
    // A missing entry yields the flags' action (0): counted and dropped instead.
    EGRESS
        .redirect(backend.ifindex, 0)
        .map_err(|_| Counter::DropNoEgress)
}

/// The frame's Ethernet header, bounds-checked.
#[inline(always)]
fn eth(ctx: &XdpContext) -> Result<*mut EthHdr, Counter> {
    ptr_at(ctx, 0).ok_or(Counter::DropAdjustFailed)
}
