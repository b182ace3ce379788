//! The failover load balancer, as a straight pipeline: parse, find the service, find or
//! pick the flow's backend, forward it by the service's mode, count.
#![no_std]
#![no_main]

mod forward;
mod icmp;
mod maps;
mod select;
mod stats;

use aya_ebpf::{macros::xdp, programs::XdpContext};
use aya_log_ebpf::debug;
use failover_common::{Counter, FlowKey, PROTO_TCP, PROTO_UDP, service::GLOBAL_F_NAT};
use failover_ebpf::parse::{self, L3, L4, TCP_ACK, TCP_SYN};

#[xdp]
pub fn failover_xdp(ctx: XdpContext) -> u32 {
    match balance(&ctx) {
        Ok(action) => action,
        Err(reason) => {
            stats::count(reason);
            stats::verdict(reason)
        }
    }
}

/// One packet through the pipeline; `Err` names why it is not forwarded.
#[inline(always)]
fn balance(ctx: &XdpContext) -> Result<u32, Counter> {
    let l2 = parse::parse_l2(ctx)?;
    let l3 = parse::parse_l3(ctx, l2)?;
    if parse::is_icmp(l3.family, l3.proto) {
        return icmp::handle(ctx, l2, &l3);
    }
    if l3.proto != PROTO_TCP && l3.proto != PROTO_UDP {
        return Err(Counter::PassNotService);
    }
    let l4 = if l3.fragment {
        L4 {
            sport_be: 0,
            dport_be: 0,
            tcp_flags: 0,
        }
    } else {
        parse::parse_l4(ctx, &l3).ok_or(Counter::PassTruncatedL4)?
    };
    let key = FlowKey {
        src_be: l3.src_be,
        dst_be: l3.dst_be,
        sport_be: l4.sport_be,
        dport_be: l4.dport_be,
        proto: l3.proto,
        family: l3.family,
        _pad: [0; 2],
    };
    let syn = l4.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
    let stateful = !l3.fragment;
    // Established TCP, the bulk of VIP traffic: the connection table alone decides, and
    // the service lookup is skipped. Other packets look the service up first, so traffic
    // to no service pays no connection-table lookup.
    let early = stateful && l3.proto == PROTO_TCP && !syn;
    let known = if early { select::known(&key) } else { None };
    if let Some((svc, pick)) = select::established(known) {
        let bytes = (ctx.data_end() - ctx.data()) as u64;
        let action = forward::forward(ctx, l2, &l3, &svc, &pick, &key, false)?;
        stats::forwarded(svc.id, pick.id, bytes, false);
        return Ok(action);
    }
    let Some(svc) = select::service(l3.family, l3.proto, l3.dst_be, l4.dport_be, l3.fragment)
    else {
        return not_a_service(ctx, &l3, &key);
    };
    let known = if stateful && !early {
        select::known(&key)
    } else {
        known
    };
    let pick = select::backend(&svc, &key, stateful, syn, known)?;
    if l3.fragment {
        stats::count(Counter::Fragment);
    }
    if pick.new_flow {
        debug!(ctx, "service {} new flow -> backend {}", svc.id, pick.id);
    }
    let bytes = (ctx.data_end() - ctx.data()) as u64;
    let action = forward::forward(ctx, l2, &l3, &svc, &pick, &key, syn)?;
    stats::forwarded(svc.id, pick.id, bytes, pick.new_flow);
    Ok(action)
}

/// Traffic to no service: a `nat` backend's reply to translate back, or none of ours.
#[inline(always)]
fn not_a_service(ctx: &XdpContext, l3: &L3, key: &FlowKey) -> Result<u32, Counter> {
    let nat = maps::GLOBALS
        .get(0)
        .is_some_and(|g| g.flags & GLOBAL_F_NAT != 0);
    if nat && !l3.fragment {
        return forward::nat_reply(ctx, l3, key);
    }
    Err(Counter::PassNotService)
}

failover_ebpf::program_boilerplate!();
