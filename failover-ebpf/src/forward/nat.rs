//! Destination NAT (IPVS-style): requests are rewritten to the backend's address and port;
//! the backend routes its replies through us and they are rewritten back to the VIP.
//! Checksums are updated incrementally (RFC 1624), never recomputed.

use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use failover_common::{
    Backend, Counter, FAMILY_IPV4, FlowKey, NatOrigin, PROTO_TCP, PROTO_UDP, ResetReport,
    ServiceValue,
    flow::{NAT_ANSWERED, NAT_F_HIDE_RESET, NAT_SYN_SENT},
    service::SVC_F_HIDE_RESET,
};
use failover_ebpf::{
    csum,
    parse::{Ipv4Hdr, Ipv6Hdr, L3, TCP_RST, TcpHdr, ptr_at},
};

use crate::{
    maps::{NAT_REPLIES, RESETS},
    select::Pick,
};

/// Rewrites a request towards `backend`; on a new flow, remembers how to translate the
/// replies back.
#[inline(always)]
pub fn translate(
    ctx: &XdpContext,
    l3: &L3,
    svc: &ServiceValue,
    pick: &Pick,
    key: &FlowKey,
    syn: bool,
) -> Result<(), Counter> {
    let backend = &pick.backend;
    let port_be = if backend.port_be != 0 {
        backend.port_be
    } else {
        key.dport_be
    };
    if pick.new_flow {
        let reply = FlowKey {
            src_be: backend.addr_be,
            dst_be: key.src_be,
            sport_be: port_be,
            dport_be: key.sport_be,
            proto: key.proto,
            family: key.family,
            _pad: [0; 2],
        };
        let origin = NatOrigin {
            vip_be: key.dst_be,
            vport_be: key.dport_be,
            state: if syn { NAT_SYN_SENT } else { 0 },
            flags: if svc.flags & SVC_F_HIDE_RESET != 0 {
                NAT_F_HIDE_RESET
            } else {
                0
            },
            service: svc.id,
            backend: pick.id,
        };
        // A full table evicts the oldest entry; a failed insert only costs that reply.
        let _ = NAT_REPLIES.insert(reply, origin, 0);
    }
    rewrite(ctx, l3, Side::Destination, backend.addr_be, port_be)
}

/// Translates a backend's reply back to the VIP, if it is one; the kernel then routes it to
/// the client (the load balancer is the backends' gateway in this mode).
#[inline(always)]
pub fn reply(ctx: &XdpContext, l3: &L3, key: &FlowKey) -> Result<u32, Counter> {
    let entry = NAT_REPLIES
        .get_ptr_mut(key)
        .ok_or(Counter::PassNotService)?;
    let origin = unsafe { *entry };
    if key.proto == PROTO_TCP && origin.state == NAT_SYN_SENT {
        let tcp: *const TcpHdr = ptr_at(ctx, l3.l4_off).ok_or(Counter::PassTruncatedL4)?;
        if unsafe { (*tcp).flags } & TCP_RST == 0 {
            unsafe { (*entry).state = NAT_ANSWERED };
        } else if backend_reset(key, &origin) {
            return Ok(xdp_action::XDP_DROP);
        }
    }
    let (vip, vport) = (origin.vip_be, origin.vport_be);
    rewrite(ctx, l3, Side::Source, vip, vport)?;
    crate::stats::count(Counter::NatReply);
    Ok(xdp_action::XDP_PASS)
}

/// The backend reset a new flow's SYN: a dead or refusing server. Reported to the daemon
/// at once; with `passive_reset`, the reset is dropped and the flow forgotten, so the
/// client's SYN retransmission is re-picked (by then, onto a usable backend). Returns
/// whether the reset is hidden from the client.
#[inline(always)]
fn backend_reset(reply: &FlowKey, origin: &NatOrigin) -> bool {
    let report = ResetReport {
        service: origin.service,
        backend: origin.backend,
    };
    let _ = RESETS.output(report, 0);
    crate::stats::count(Counter::BackendReset);
    if origin.flags & NAT_F_HIDE_RESET == 0 {
        return false;
    }
    let client = FlowKey {
        src_be: reply.dst_be,
        dst_be: origin.vip_be,
        sport_be: reply.dport_be,
        dport_be: origin.vport_be,
        proto: reply.proto,
        family: reply.family,
        _pad: [0; 2],
    };
    crate::select::forget(&client);
    let _ = NAT_REPLIES.remove(reply);
    true
}

/// Rewrites an ICMP too-big error about a `nat` flow (addressed to the VIP, quoting the
/// reply as the client saw it: VIP:vport -> client) into the error the backend would have
/// had without us: the outer destination and the quoted source address and port become the
/// backend's. Patched: the outer IPv4 header checksum, the quoted IPv4 header checksum, the
/// quoted TCP/UDP checksum when the quote reaches it, and the ICMP checksum (which, for
/// ICMPv6, covers the outer addresses too).
#[inline(always)]
pub fn icmp_to_backend(
    ctx: &XdpContext,
    l3: &L3,
    quote: &L3,
    backend: &Backend,
    vport_be: u16,
) -> Result<(), Counter> {
    let addr = backend.addr_be;
    let port_be = if backend.port_be != 0 {
        backend.port_be
    } else {
        vport_be
    };
    let icmp_check: *mut u16 = ptr_at(ctx, l3.l4_off + 2).ok_or(Counter::DropAdjustFailed)?;
    let mut ic = unsafe { *icmp_check };
    // The quoted source address before the rewrite (the VIP).
    let mut old: [u32; 4] = [0; 4];
    if l3.family == FAMILY_IPV4 {
        let ip: *mut Ipv4Hdr = ptr_at(ctx, l3.l3_off).ok_or(Counter::DropAdjustFailed)?;
        let inner: *mut Ipv4Hdr = ptr_at(ctx, quote.l3_off).ok_or(Counter::DropAdjustFailed)?;
        unsafe {
            let dst = (*ip).dst_be;
            (*ip).dst_be = addr[0];
            (*ip).check = csum::replace32((*ip).check, dst, addr[0]);
            old[0] = (*inner).src_be;
            (*inner).src_be = addr[0];
            let check = (*inner).check;
            let fixed = csum::replace32(check, old[0], addr[0]);
            (*inner).check = fixed;
            // ICMPv4 sums its own bytes only: the quoted address and header checksum moved.
            ic = csum::replace32(ic, old[0], addr[0]);
            ic = csum::replace16(ic, check, fixed);
        }
    } else {
        let ip: *mut Ipv6Hdr = ptr_at(ctx, l3.l3_off).ok_or(Counter::DropAdjustFailed)?;
        let inner: *mut Ipv6Hdr = ptr_at(ctx, quote.l3_off).ok_or(Counter::DropAdjustFailed)?;
        unsafe {
            let dst = (*ip).dst_be;
            (*ip).dst_be = addr;
            old = (*inner).src_be;
            (*inner).src_be = addr;
            // ICMPv6 sums the pseudo-header (outer destination) and the quoted address.
            for i in 0..4 {
                ic = csum::replace32(ic, dst[i], addr[i]);
                ic = csum::replace32(ic, old[i], addr[i]);
            }
        }
    }
    let port: *mut u16 = ptr_at(ctx, quote.l4_off).ok_or(Counter::DropAdjustFailed)?;
    let old_port = unsafe { *port };
    unsafe { *port = port_be };
    ic = csum::replace16(ic, old_port, port_be);
    let check_off = if quote.proto == PROTO_TCP { 16 } else { 6 };
    // Only 8 bytes of the quoted L4 header are certain: a TCP checksum may be cut off.
    if let Some(check) = ptr_at::<u16>(ctx, quote.l4_off + check_off) {
        let c = unsafe { *check };
        let none = quote.proto == PROTO_UDP && quote.family == FAMILY_IPV4 && c == 0;
        if !none {
            let mut n = if quote.family == FAMILY_IPV4 {
                csum::replace32(c, old[0], addr[0])
            } else {
                let mut n = c;
                for i in 0..4 {
                    n = csum::replace32(n, old[i], addr[i]);
                }
                n
            };
            n = csum::replace16(n, old_port, port_be);
            if quote.proto == PROTO_UDP && n == 0 {
                n = 0xffff;
            }
            unsafe { *check = n };
            ic = csum::replace16(ic, c, n);
        }
    }
    unsafe { *icmp_check = ic };
    Ok(())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Source,
    Destination,
}

/// Replaces one side's address (and port, unless the packet is a later fragment) and
/// patches the IPv4 header and TCP/UDP checksums.
#[inline(always)]
fn rewrite(
    ctx: &XdpContext,
    l3: &L3,
    side: Side,
    addr: [u32; 4],
    port_be: u16,
) -> Result<(), Counter> {
    // The L4 checksum covers the addresses (pseudo-header): collect the change as a sum.
    let mut l4_delta: [u32; 4] = [0; 4];
    let mut old_addr: [u32; 4] = [0; 4];
    if l3.family == FAMILY_IPV4 {
        let ip: *mut Ipv4Hdr = ptr_at(ctx, l3.l3_off).ok_or(Counter::DropAdjustFailed)?;
        unsafe {
            let field = if side == Side::Source {
                &mut (*ip).src_be
            } else {
                &mut (*ip).dst_be
            };
            old_addr[0] = *field;
            *field = addr[0];
            (*ip).check = csum::replace32((*ip).check, old_addr[0], addr[0]);
        }
        l4_delta[0] = 1;
    } else {
        let ip: *mut Ipv6Hdr = ptr_at(ctx, l3.l3_off).ok_or(Counter::DropAdjustFailed)?;
        unsafe {
            let field = if side == Side::Source {
                &mut (*ip).src_be
            } else {
                &mut (*ip).dst_be
            };
            old_addr = *field;
            *field = addr;
        }
        l4_delta = [1; 4];
    }
    if l3.later_fragment {
        return Ok(());
    }
    let (check_off, zero_means_none) = match l3.proto {
        PROTO_TCP => (16, false),
        PROTO_UDP => (6, l3.family == FAMILY_IPV4),
        _ => return Ok(()),
    };
    let port_off = if side == Side::Source { 0 } else { 2 };
    let port: *mut u16 = ptr_at(ctx, l3.l4_off + port_off).ok_or(Counter::DropAdjustFailed)?;
    let check: *mut u16 = ptr_at(ctx, l3.l4_off + check_off).ok_or(Counter::DropAdjustFailed)?;
    unsafe {
        let old_port = *port;
        *port = port_be;
        let mut c = *check;
        if zero_means_none && c == 0 {
            return Ok(());
        }
        for i in 0..4 {
            if l4_delta[i] != 0 {
                c = csum::replace32(c, old_addr[i], addr[i]);
            }
        }
        c = csum::replace16(c, old_port, port_be);
        if l3.proto == PROTO_UDP && c == 0 {
            c = 0xffff;
        }
        *check = c;
    }
    Ok(())
}
