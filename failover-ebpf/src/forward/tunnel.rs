//! IP-in-IP: the packet, unchanged, inside a new IPv4 or IPv6 header addressed to the
//! backend. The outer source varies with the flow so the backend's NIC spreads flows over
//! its queues. Backends strip the outer header with `failover-decap` (or a tunnel device).

use aya_ebpf::{helpers::bpf_xdp_adjust_head, programs::XdpContext};
use failover_common::{
    Backend, Counter, FAMILY_IPV4, FlowKey, PROTO_IPIP, PROTO_IPV6, backend::BACKEND_F_IPV6,
};
use failover_ebpf::{
    csum,
    parse::{ETH_P_IP, ETH_P_IPV6, EthHdr, Ipv4Hdr, Ipv6Hdr, L2, L3, VlanHdr, copy_mac, ptr_at},
};

use crate::maps::GLOBALS;

const IPV4_HDR: usize = core::mem::size_of::<Ipv4Hdr>();
const IPV6_HDR: usize = core::mem::size_of::<Ipv6Hdr>();

/// Wraps the IP packet at `l2.l3_off` in an outer header towards `backend`.
#[inline(always)]
pub fn encapsulate(
    ctx: &XdpContext,
    l2: L2,
    l3: &L3,
    backend: &Backend,
    key: &FlowKey,
) -> Result<(), Counter> {
    let globals = GLOBALS.get(0).ok_or(Counter::DropInternal)?;
    let outer_v6 = backend.flags & BACKEND_F_IPV6 != 0;
    let overhead = if outer_v6 { IPV6_HDR } else { IPV4_HDR };
    if globals.mtu != 0 && l3.ip_len + overhead > globals.mtu as usize {
        return Err(Counter::DropTooBig);
    }
    // Varies with the flow, cheap to compute on every packet of it.
    let spread =
        key.src_be[0] ^ key.src_be[3] ^ ((key.sport_be as u32) << 16 | key.sport_be as u32);
    let inner_proto = if l3.family == FAMILY_IPV4 {
        PROTO_IPIP
    } else {
        PROTO_IPV6
    };

    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(overhead as i32)) } != 0 {
        return Err(Counter::DropAdjustFailed);
    }
    move_l2(ctx, l2, overhead)?;
    let l3_off = l2.l3_off;
    // The outer family decides the frame's EtherType.
    let ethertype = if outer_v6 { ETH_P_IPV6 } else { ETH_P_IP };
    let proto_at: *mut u16 = ptr_at(ctx, l3_off - 2).ok_or(Counter::DropAdjustFailed)?;
    unsafe { *proto_at = ethertype.to_be() };

    if outer_v6 {
        let ip: *mut Ipv6Hdr = ptr_at(ctx, l3_off).ok_or(Counter::DropAdjustFailed)?;
        let mut src = globals.tunnel_src6_be;
        src[3] = (src[3] & !globals.tunnel_src6_mask_be) | (spread & globals.tunnel_src6_mask_be);
        unsafe {
            *ip = Ipv6Hdr {
                vtc_flow_be: (6u32 << 28).to_be(),
                payload_len_be: (l3.ip_len as u16).to_be(),
                next_hdr: inner_proto,
                hop_limit: 64,
                src_be: src,
                dst_be: backend.addr_be,
            };
        }
    } else {
        let ip: *mut Ipv4Hdr = ptr_at(ctx, l3_off).ok_or(Counter::DropAdjustFailed)?;
        let src = (globals.tunnel_src4_be & !globals.tunnel_src4_mask_be)
            | (spread & globals.tunnel_src4_mask_be);
        let mut hdr = Ipv4Hdr {
            version_ihl: 0x45,
            tos: 0,
            tot_len_be: ((l3.ip_len + IPV4_HDR) as u16).to_be(),
            id_be: 0,
            frag_off_be: 0x4000u16.to_be(), // don't fragment
            ttl: 64,
            proto: inner_proto,
            check: 0,
            src_be: src,
            dst_be: backend.addr_be[0],
        };
        let words: [u16; 10] = unsafe { core::mem::transmute_copy(&hdr) };
        hdr.check = csum::ipv4_header(&words);
        unsafe { *ip = hdr };
    }
    Ok(())
}

/// After `adjust_head` made room at the front, moves the Ethernet header (and VLAN tag)
/// from `overhead` bytes in back to the start of the frame.
#[inline(always)]
fn move_l2(ctx: &XdpContext, l2: L2, overhead: usize) -> Result<(), Counter> {
    let old: *const EthHdr = ptr_at(ctx, overhead).ok_or(Counter::DropAdjustFailed)?;
    let new: *mut EthHdr = ptr_at(ctx, 0).ok_or(Counter::DropAdjustFailed)?;
    unsafe {
        copy_mac(&raw mut (*new).dst, &raw const (*old).dst);
        copy_mac(&raw mut (*new).src, &raw const (*old).src);
        (*new).proto_be = (*old).proto_be;
    }
    if l2.l3_off > core::mem::size_of::<EthHdr>() {
        let old: *const VlanHdr = ptr_at(ctx, overhead + 14).ok_or(Counter::DropAdjustFailed)?;
        let new: *mut VlanHdr = ptr_at(ctx, 14).ok_or(Counter::DropAdjustFailed)?;
        unsafe {
            (*new).tci_be = (*old).tci_be;
            (*new).proto_be = (*old).proto_be;
        }
    }
    Ok(())
}
