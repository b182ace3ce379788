//! The bench's reference point: what any XDP forwarder must at least do. Parses
//! Ethernet/IPv4/TCP, looks the destination up in one hash map, rewrites the MACs and
//! transmits. `cargo xtask bench` reports the load balancer's figures as ratios to this.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::{HashMap, PerCpuArray},
    programs::XdpContext,
};
use failover_common::PROTO_TCP;
use failover_ebpf::parse::{ETH_P_IP, EthHdr, Ipv4Hdr, TcpHdr, copy_mac, ptr_at};

/// IPv4 destination -> next-hop MAC (padded to 8 bytes).
#[map]
static BASELINE_TARGETS: HashMap<u32, [u8; 8]> = HashMap::with_max_entries(1024, 0);

/// Packets transmitted (per CPU), so a live-traffic bench can count what it forwarded,
/// as it counts the load balancer's.
#[map]
static BASELINE_SENT: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[xdp]
pub fn failover_baseline(ctx: XdpContext) -> u32 {
    forward(&ctx).unwrap_or(xdp_action::XDP_PASS)
}

#[inline(always)]
fn forward(ctx: &XdpContext) -> Option<u32> {
    let eth: *mut EthHdr = ptr_at(ctx, 0)?;
    if unsafe { (*eth).proto_be } != ETH_P_IP.to_be() {
        return None;
    }
    let ip: *const Ipv4Hdr = ptr_at(ctx, 14)?;
    let (vihl, proto, dst) = unsafe { ((*ip).version_ihl, (*ip).proto, (*ip).dst_be) };
    if proto != PROTO_TCP {
        return None;
    }
    let _tcp: *const TcpHdr = ptr_at(ctx, 14 + ((vihl & 0x0f) as usize) * 4)?;
    let mac = unsafe { BASELINE_TARGETS.get(dst) }?;
    // The same MAC copy as the load balancer's, so the ratio compares like with like.
    unsafe {
        copy_mac(&raw mut (*eth).src, &raw const (*eth).dst);
        copy_mac(&raw mut (*eth).dst, mac.as_ptr().cast());
    }
    if let Some(n) = BASELINE_SENT.get_ptr_mut(0) {
        unsafe { *n += 1 };
    }
    Some(xdp_action::XDP_TX)
}

failover_ebpf::program_boilerplate!();
