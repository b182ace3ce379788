//! Decapsulation for backends of `tunnel` services: strips the outer IPv4/IPv6 header of
//! IP-in-IP packets (all four family combinations) and passes the inner packet to the
//! kernel. For hosts without tunnel devices (this project's test kernel has no `ipip`).
//! Every other packet passes untouched. The object also holds `failover_pass`, which
//! passes everything: the program a veth needs for its peer's XDP_TX frames to arrive.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    helpers::bpf_xdp_adjust_head,
    macros::{map, xdp},
    maps::PerCpuArray,
    programs::XdpContext,
};
use failover_common::{FAMILY_IPV4, PROTO_IPIP, PROTO_IPV6, stats::DecapCounter};
use failover_ebpf::parse::{
    self, ETH_P_IP, ETH_P_IPV6, EthHdr, Ipv4Hdr, Ipv6Hdr, L2, VlanHdr, copy_mac, ptr_at,
};

/// What happened to each packet.
#[map]
static DECAP_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(DecapCounter::COUNT, 0);

#[xdp]
pub fn failover_decap(ctx: XdpContext) -> u32 {
    let outcome = decap(&ctx);
    if let Some(v) = DECAP_COUNTERS.get_ptr_mut(outcome as u32) {
        unsafe { *v += 1 };
    }
    xdp_action::XDP_PASS
}

/// Passes every packet. A frame sent with XDP_TX into a veth is only received if the
/// peer veth runs an XDP program: this is that program, for test labs.
#[xdp]
pub fn failover_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[inline(always)]
fn decap(ctx: &XdpContext) -> DecapCounter {
    let Ok(l2) = parse::parse_l2(ctx) else {
        return DecapCounter::NotTunnel;
    };
    let Some((outer_len, inner_proto)) = outer(ctx, l2) else {
        return DecapCounter::NotTunnel;
    };
    let inner_ethertype = match inner_proto {
        PROTO_IPIP => ETH_P_IP,
        PROTO_IPV6 => ETH_P_IPV6,
        _ => return DecapCounter::NotTunnel,
    };
    if strip(ctx, l2, outer_len, inner_ethertype).is_none() {
        return DecapCounter::Malformed;
    }
    DecapCounter::Decapsulated
}

/// The outer header's length and protocol, if it is an unfragmented IP-in-IP header.
#[inline(always)]
fn outer(ctx: &XdpContext, l2: L2) -> Option<(usize, u8)> {
    if l2.family == FAMILY_IPV4 {
        let ip: *const Ipv4Hdr = ptr_at(ctx, l2.l3_off)?;
        let (vihl, frag, proto) = unsafe { ((*ip).version_ihl, (*ip).frag_off_be, (*ip).proto) };
        let len = ((vihl & 0x0f) as usize) * 4;
        if len < 20 || u16::from_be(frag) & 0x3fff != 0 {
            return None;
        }
        Some((len, proto))
    } else {
        let ip: *const Ipv6Hdr = ptr_at(ctx, l2.l3_off)?;
        Some((core::mem::size_of::<Ipv6Hdr>(), unsafe { (*ip).next_hdr }))
    }
}

/// Drops the outer IP header: the L2 header is saved on the stack, the frame start moves
/// past the outer header, and the L2 header is written back at constant offsets (the
/// verifier tracks those; a copy to a variable offset it could not bound).
#[inline(always)]
fn strip(ctx: &XdpContext, l2: L2, outer_len: usize, ethertype: u16) -> Option<()> {
    // The inner header must be there, or we would hand the kernel a stub.
    ptr_at::<Ipv4Hdr>(ctx, l2.l3_off + outer_len)?;
    let eth: *const EthHdr = ptr_at(ctx, 0)?;
    // u16 words: copy_mac needs 2-byte alignment, which a [u8; 6] on the stack lacks.
    let (mut dst, mut src) = ([0u16; 3], [0u16; 3]);
    let tpid = unsafe {
        copy_mac(dst.as_mut_ptr().cast(), &raw const (*eth).dst);
        copy_mac(src.as_mut_ptr().cast(), &raw const (*eth).src);
        (*eth).proto_be
    };
    let tagged = l2.l3_off > core::mem::size_of::<EthHdr>();
    // Always initialised: the verifier must not see a path that reads it unset.
    let mut tci_be = 0u16;
    if tagged {
        let v: *const VlanHdr = ptr_at(ctx, 14)?;
        tci_be = unsafe { (*v).tci_be };
    }
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, outer_len as i32) } != 0 {
        return None;
    }
    let eth: *mut EthHdr = ptr_at(ctx, 0)?;
    unsafe {
        copy_mac(&raw mut (*eth).dst, dst.as_ptr().cast());
        copy_mac(&raw mut (*eth).src, src.as_ptr().cast());
    }
    if tagged {
        let v: *mut VlanHdr = ptr_at(ctx, 14)?;
        unsafe {
            (*eth).proto_be = tpid;
            *v = VlanHdr {
                tci_be,
                proto_be: ethertype.to_be(),
            };
        }
    } else {
        unsafe { (*eth).proto_be = ethertype.to_be() };
    }
    Some(())
}

failover_ebpf::program_boilerplate!();
