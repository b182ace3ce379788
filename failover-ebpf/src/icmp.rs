//! ICMP errors about a service's flows: "fragmentation needed" (IPv4) and "packet too big"
//! (IPv6) quote the packet the backend sent (VIP -> client); the flow is that quote
//! reversed, and the error goes to that flow's backend so path MTU discovery works. For
//! `nat` flows the quote shows the VIP, so it is translated back to what the backend sent.

use aya_ebpf::programs::XdpContext;
use failover_common::{Counter, FAMILY_IPV4, FlowKey, ForwardMode, PROTO_TCP, PROTO_UDP};
use failover_ebpf::parse::{self, IcmpHdr, L2, L3, ptr_at};

use crate::{forward, select, stats};

/// ICMPv4 destination unreachable / fragmentation needed.
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_FRAG_NEEDED: u8 = 4;
/// ICMPv6 packet too big.
const ICMPV6_PACKET_TOO_BIG: u8 = 2;

/// Sends a too-big error about a service's flow to the flow's backend; passes any other.
#[inline(always)]
pub fn handle(ctx: &XdpContext, l2: L2, l3: &L3) -> Result<u32, Counter> {
    if l3.fragment {
        return Err(Counter::PassNotService);
    }
    let icmp: *const IcmpHdr = ptr_at(ctx, l3.l4_off).ok_or(Counter::PassTruncatedL4)?;
    let (kind, code) = unsafe { ((*icmp).kind, (*icmp).code) };
    let too_big = if l3.family == FAMILY_IPV4 {
        kind == ICMP_DEST_UNREACH && code == ICMP_FRAG_NEEDED
    } else {
        kind == ICMPV6_PACKET_TOO_BIG
    };
    if !too_big {
        return Err(Counter::PassNotService);
    }
    let inner_l2 = L2 {
        l3_off: l3.l4_off + core::mem::size_of::<IcmpHdr>(),
        family: l3.family,
    };
    let inner = parse::parse_quoted_l3(ctx, inner_l2).map_err(|_| Counter::PassIcmpNotService)?;
    if (inner.proto != PROTO_TCP && inner.proto != PROTO_UDP) || inner.fragment {
        return Err(Counter::PassIcmpNotService);
    }
    // Only the ports are guaranteed to be quoted (RFC 792: 8 bytes of the payload).
    let ports: *const [u16; 2] = ptr_at(ctx, inner.l4_off).ok_or(Counter::PassIcmpNotService)?;
    let [sport_be, dport_be] = unsafe { *ports };
    let svc = select::service(inner.family, inner.proto, inner.src_be, sport_be, false)
        .ok_or(Counter::PassIcmpNotService)?;
    let key = FlowKey {
        src_be: inner.dst_be,
        dst_be: inner.src_be,
        sport_be: dport_be,
        dport_be: sport_be,
        proto: inner.proto,
        family: inner.family,
        _pad: [0; 2],
    };
    if ForwardMode::from_u32(svc.mode) == Some(ForwardMode::Nat) {
        // The quote carries the VIP, which the backend would not recognise: only a known
        // flow says which backend it was and what to translate the quote back to.
        let (flow_svc, pick) =
            select::established(select::known(&key)).ok_or(Counter::PassIcmpNat)?;
        if flow_svc.id != svc.id {
            return Err(Counter::PassIcmpNat);
        }
        let action = forward::nat_icmp(ctx, l3, &inner, &pick.backend, sport_be)?;
        stats::count(Counter::IcmpNatToBackend);
        return Ok(action);
    }
    let pick = select::backend(&svc, &key, true, false, select::known(&key))?;
    let action = forward::forward(ctx, l2, l3, &svc, &pick, &key, false)?;
    stats::count(Counter::IcmpToBackend);
    Ok(action)
}
