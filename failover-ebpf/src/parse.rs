//! Header layouts and the parser: Ethernet (+ one 802.1Q tag), IPv4 (with options), IPv6
//! (with a fragment header), TCP, UDP, ICMP. Every read is bounds-checked against
//! `data_end`, which is also what the verifier demands.

use aya_ebpf::programs::XdpContext;
use failover_common::{
    Counter, FAMILY_IPV4, FAMILY_IPV6, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP,
};

/// EtherType of IPv4.
pub const ETH_P_IP: u16 = 0x0800;
/// EtherType of IPv6.
pub const ETH_P_IPV6: u16 = 0x86dd;
/// EtherType of an 802.1Q tag.
pub const ETH_P_8021Q: u16 = 0x8100;
/// IPv6 next-header value of the fragment header.
pub const IPV6_FRAGMENT: u8 = 44;

/// Ethernet header.
#[repr(C)]
pub struct EthHdr {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    pub proto_be: u16,
}

/// 802.1Q tag: what follows the tag protocol id (0x8100, in `EthHdr::proto_be`).
#[repr(C)]
pub struct VlanHdr {
    pub tci_be: u16,
    pub proto_be: u16,
}

/// IPv4 header without options.
#[repr(C)]
pub struct Ipv4Hdr {
    pub version_ihl: u8,
    pub tos: u8,
    pub tot_len_be: u16,
    pub id_be: u16,
    pub frag_off_be: u16,
    pub ttl: u8,
    pub proto: u8,
    pub check: u16,
    pub src_be: u32,
    pub dst_be: u32,
}

/// IPv6 header.
#[repr(C)]
pub struct Ipv6Hdr {
    pub vtc_flow_be: u32,
    pub payload_len_be: u16,
    pub next_hdr: u8,
    pub hop_limit: u8,
    pub src_be: [u32; 4],
    pub dst_be: [u32; 4],
}

/// IPv6 fragment extension header.
#[repr(C)]
pub struct Ipv6FragHdr {
    pub next_hdr: u8,
    pub reserved: u8,
    pub frag_off_be: u16,
    pub id_be: u32,
}

/// TCP header without options.
#[repr(C)]
pub struct TcpHdr {
    pub sport_be: u16,
    pub dport_be: u16,
    pub seq_be: u32,
    pub ack_be: u32,
    pub off_res: u8,
    pub flags: u8,
    pub window_be: u16,
    pub check: u16,
    pub urg_be: u16,
}

/// UDP header.
#[repr(C)]
pub struct UdpHdr {
    pub sport_be: u16,
    pub dport_be: u16,
    pub len_be: u16,
    pub check: u16,
}

/// ICMP / ICMPv6 header (the first 8 bytes).
#[repr(C)]
pub struct IcmpHdr {
    pub kind: u8,
    pub code: u8,
    pub check: u16,
    pub rest_be: u32,
}

/// TCP flag bits.
pub const TCP_SYN: u8 = 0x02;
/// TCP ACK.
pub const TCP_ACK: u8 = 0x10;
/// TCP RST.
pub const TCP_RST: u8 = 0x04;

/// Copies a MAC address as three 16-bit words. A `[u8; 6]` assignment becomes a call to a
/// byte-by-byte `memmove` subprogram in BPF; this is three loads and three stores.
///
/// # Safety
/// `dst` and `src` must be valid for 6 bytes and 2-byte aligned (Ethernet header fields
/// and map values are).
#[inline(always)]
pub unsafe fn copy_mac(dst: *mut [u8; 6], src: *const [u8; 6]) {
    let (d, s) = (dst.cast::<u16>(), src.cast::<u16>());
    unsafe {
        let (a, b, c) = (*s, *s.add(1), *s.add(2));
        *d = a;
        *d.add(1) = b;
        *d.add(2) = c;
    }
}

/// A bounds-checked pointer to a `T` at `off` bytes into the packet.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, off: usize) -> Option<*mut T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + off + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((start + off) as *mut T)
}

/// Where the IP header starts and which family it is.
#[derive(Clone, Copy)]
pub struct L2 {
    /// Offset of the IP header.
    pub l3_off: usize,
    /// `FAMILY_IPV4` or `FAMILY_IPV6`.
    pub family: u8,
}

/// Parses Ethernet and at most one VLAN tag.
#[inline(always)]
pub fn parse_l2(ctx: &XdpContext) -> Result<L2, Counter> {
    let eth: *const EthHdr = ptr_at(ctx, 0).ok_or(Counter::PassTruncatedL2)?;
    let mut proto = u16::from_be(unsafe { (*eth).proto_be });
    let mut l3_off = core::mem::size_of::<EthHdr>();
    if proto == ETH_P_8021Q {
        let vlan: *const VlanHdr = ptr_at(ctx, l3_off).ok_or(Counter::PassTruncatedL2)?;
        proto = u16::from_be(unsafe { (*vlan).proto_be });
        l3_off += core::mem::size_of::<VlanHdr>();
    }
    match proto {
        ETH_P_IP => Ok(L2 {
            l3_off,
            family: FAMILY_IPV4,
        }),
        ETH_P_IPV6 => Ok(L2 {
            l3_off,
            family: FAMILY_IPV6,
        }),
        _ => Err(Counter::PassNotIp),
    }
}

/// The IP layer of a packet: addresses, protocol, where L4 starts, fragment state.
#[derive(Clone, Copy)]
pub struct L3 {
    /// Offset of the IP header.
    pub l3_off: usize,
    pub family: u8,
    pub proto: u8,
    pub src_be: [u32; 4],
    pub dst_be: [u32; 4],
    /// Offset of the L4 header (past IPv4 options or the IPv6 fragment header).
    pub l4_off: usize,
    /// Bytes of the IP packet (header + payload) as the header says.
    pub ip_len: usize,
    /// Part of a fragmented datagram (first or later fragment).
    pub fragment: bool,
    /// A later fragment: carries no L4 header.
    pub later_fragment: bool,
}

/// Whether an IP packet of `len` bytes at `off` lies within the frame (a cut-short packet
/// must never be forwarded, let alone encapsulated with a length it does not have).
#[inline(always)]
fn fits(ctx: &XdpContext, off: usize, len: usize) -> bool {
    ctx.data() + off + len <= ctx.data_end()
}

/// Parses the IP header at `l2.l3_off`; the packet must be whole.
#[inline(always)]
pub fn parse_l3(ctx: &XdpContext, l2: L2) -> Result<L3, Counter> {
    if l2.family == FAMILY_IPV4 {
        parse_ipv4(ctx, l2.l3_off, true)
    } else {
        parse_ipv6(ctx, l2.l3_off, true)
    }
}

/// Parses the IP header quoted in an ICMP error (the rest of that packet is cut off).
#[inline(always)]
pub fn parse_quoted_l3(ctx: &XdpContext, l2: L2) -> Result<L3, Counter> {
    if l2.family == FAMILY_IPV4 {
        parse_ipv4(ctx, l2.l3_off, false)
    } else {
        parse_ipv6(ctx, l2.l3_off, false)
    }
}

#[inline(always)]
fn parse_ipv4(ctx: &XdpContext, off: usize, whole: bool) -> Result<L3, Counter> {
    let ip: *const Ipv4Hdr = ptr_at(ctx, off).ok_or(Counter::PassMalformedL3)?;
    let (vihl, tot_len, frag, proto, src, dst) = unsafe {
        (
            (*ip).version_ihl,
            u16::from_be((*ip).tot_len_be) as usize,
            u16::from_be((*ip).frag_off_be),
            (*ip).proto,
            (*ip).src_be,
            (*ip).dst_be,
        )
    };
    let hdr_len = ((vihl & 0x0f) as usize) * 4;
    if vihl >> 4 != 4 || hdr_len < 20 || tot_len < hdr_len || (whole && !fits(ctx, off, tot_len)) {
        return Err(Counter::PassMalformedL3);
    }
    // The options must be present too (the L4 offset is only trusted when they are).
    ptr_at::<u8>(ctx, off + hdr_len - 1).ok_or(Counter::PassMalformedL3)?;
    let more = frag & 0x2000 != 0;
    let offset = frag & 0x1fff;
    Ok(L3 {
        l3_off: off,
        family: FAMILY_IPV4,
        proto,
        src_be: [src, 0, 0, 0],
        dst_be: [dst, 0, 0, 0],
        l4_off: off + hdr_len,
        ip_len: tot_len,
        fragment: more || offset != 0,
        later_fragment: offset != 0,
    })
}

#[inline(always)]
fn parse_ipv6(ctx: &XdpContext, off: usize, whole: bool) -> Result<L3, Counter> {
    let ip: *const Ipv6Hdr = ptr_at(ctx, off).ok_or(Counter::PassMalformedL3)?;
    let (vtc, payload, mut next, src, dst) = unsafe {
        (
            u32::from_be((*ip).vtc_flow_be),
            u16::from_be((*ip).payload_len_be) as usize,
            (*ip).next_hdr,
            (*ip).src_be,
            (*ip).dst_be,
        )
    };
    if vtc >> 28 != 6 || (whole && !fits(ctx, off, payload + core::mem::size_of::<Ipv6Hdr>())) {
        return Err(Counter::PassMalformedL3);
    }
    let mut l4_off = off + core::mem::size_of::<Ipv6Hdr>();
    let mut fragment = false;
    let mut later_fragment = false;
    if next == IPV6_FRAGMENT {
        let fh: *const Ipv6FragHdr = ptr_at(ctx, l4_off).ok_or(Counter::PassMalformedL3)?;
        let fo = u16::from_be(unsafe { (*fh).frag_off_be });
        next = unsafe { (*fh).next_hdr };
        fragment = true;
        later_fragment = fo & 0xfff8 != 0;
        l4_off += core::mem::size_of::<Ipv6FragHdr>();
    }
    match next {
        PROTO_TCP | PROTO_UDP | PROTO_ICMPV6 => {}
        _ if fragment => {}
        _ => return Err(Counter::PassIpv6ExtHeader),
    }
    Ok(L3 {
        l3_off: off,
        family: FAMILY_IPV6,
        proto: next,
        src_be: src,
        dst_be: dst,
        l4_off,
        ip_len: payload + core::mem::size_of::<Ipv6Hdr>(),
        fragment,
        later_fragment,
    })
}

/// Ports (and TCP flags) of a TCP or UDP packet.
#[derive(Clone, Copy)]
pub struct L4 {
    pub sport_be: u16,
    pub dport_be: u16,
    /// TCP flags, 0 for UDP.
    pub tcp_flags: u8,
}

/// Reads the ports of the TCP/UDP header at `l3.l4_off`; `None` if cut short.
#[inline(always)]
pub fn parse_l4(ctx: &XdpContext, l3: &L3) -> Option<L4> {
    if l3.proto == PROTO_TCP {
        let tcp: *const TcpHdr = ptr_at(ctx, l3.l4_off)?;
        unsafe {
            Some(L4 {
                sport_be: (*tcp).sport_be,
                dport_be: (*tcp).dport_be,
                tcp_flags: (*tcp).flags,
            })
        }
    } else {
        let udp: *const UdpHdr = ptr_at(ctx, l3.l4_off)?;
        unsafe {
            Some(L4 {
                sport_be: (*udp).sport_be,
                dport_be: (*udp).dport_be,
                tcp_flags: 0,
            })
        }
    }
}

/// Whether `proto` is an ICMP of the family.
#[inline(always)]
pub const fn is_icmp(family: u8, proto: u8) -> bool {
    (family == FAMILY_IPV4 && proto == PROTO_ICMP)
        || (family == FAMILY_IPV6 && proto == PROTO_ICMPV6)
}
