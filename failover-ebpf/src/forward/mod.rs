//! Sending a packet to its backend, one module per forwarding mode.

mod dsr;
mod nat;
mod tunnel;

use aya_ebpf::{bindings::xdp_action, helpers::bpf_redirect, programs::XdpContext};
use failover_common::{Backend, Counter, FlowKey, ForwardMode, ServiceValue};
use failover_ebpf::parse::{EthHdr, L2, L3, ptr_at};

use crate::select::Pick;

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
    Ok(transmit(backend))
}

/// XDP_TX back out of the interface, or a redirect when the backend sits behind another.
#[inline(always)]
fn transmit(backend: &Backend) -> u32 {
    if backend.ifindex == 0 {
        xdp_action::XDP_TX
    } else {
        unsafe { bpf_redirect(backend.ifindex, 0) as u32 }
    }
}

/// The frame's Ethernet header, bounds-checked.
#[inline(always)]
fn eth(ctx: &XdpContext) -> Result<*mut EthHdr, Counter> {
    ptr_at(ctx, 0).ok_or(Counter::DropAdjustFailed)
}
