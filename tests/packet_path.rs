//! Packet tests: the real compiled XDP object, run through BPF_PROG_TEST_RUN on a table of
//! named packets. Each case checks the verdict, the exact output bytes (computed
//! independently with etherparse, checksums included) and the counter that must move.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use etherparse::{
    EtherType, Ethernet2Header, Icmpv4Type, Icmpv6Type, IpFragOffset, IpHeaders, IpNumber,
    Ipv4Header, Ipv4HeaderSlice, Ipv6FragmentHeader, Ipv6Header, Ipv6HeaderSlice, PacketBuilder,
    UdpHeader, VlanId, icmpv4::DestUnreachableHeader,
};
use failover_common::Counter;
use failover_tests::rig::{
    Rig, XDP_DROP, XDP_PASS, XDP_REDIRECT, XDP_TX, backend_mac, verdict_name,
};

const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
const LB_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const CLIENT4: [u8; 4] = [198, 18, 0, 2];
const CLIENT6: [u8; 16] = v6(0x2);
const ROUTER4: [u8; 4] = [198, 18, 0, 254];
const PAYLOAD: &[u8] = b"hello, backend";

const fn v6(last: u16) -> [u8; 16] {
    let mut a = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    a[14] = (last >> 8) as u8;
    a[15] = last as u8;
    a
}
const fn v6net(net: u8, last: u16) -> [u8; 16] {
    let mut a = v6(last);
    a[7] = net;
    a
}

/// Every service the cases use: each mode, both families, both protocols.
const CONFIG: &str = r#"
interface = "lo"
flow_capacity = 4096
mtu = 1500
[tunnel]
source_v4 = "198.18.250.0/24"
source_v6 = "2001:db8:ffff::/112"

[[service]]
name = "web4"
vip = "198.18.0.10"
port = 80
protocol = "tcp"
mode = "dsr"
table_size = 257
  [[service.backend]]
  name = "a"
  address = "198.18.1.1"
[[service]]
name = "alt4"
vip = "198.18.0.10"
port = 8080
protocol = "tcp"
mode = "dsr"
table_size = 257
  [[service.backend]]
  name = "a"
  address = "198.18.1.1"
[[service]]
name = "dns4"
vip = "198.18.0.10"
port = 53
protocol = "udp"
mode = "dsr"
table_size = 257
  [[service.backend]]
  name = "b"
  address = "198.18.1.2"
[[service]]
name = "web6"
vip = "2001:db8:0:1::10"
port = 80
protocol = "tcp"
mode = "dsr"
table_size = 257
  [[service.backend]]
  name = "a"
  address = "2001:db8:0:2::1"
[[service]]
name = "dns6"
vip = "2001:db8:0:1::10"
port = 53
protocol = "udp"
mode = "dsr"
table_size = 257
  [[service.backend]]
  name = "b"
  address = "2001:db8:0:2::2"
[[service]]
name = "tun4"
vip = "198.18.0.11"
port = 80
protocol = "tcp"
mode = "tunnel"
table_size = 257
  [[service.backend]]
  name = "c"
  address = "198.18.1.3"
[[service]]
name = "tun4u"
vip = "198.18.0.11"
port = 53
protocol = "udp"
mode = "tunnel"
table_size = 257
  [[service.backend]]
  name = "c"
  address = "198.18.1.3"
[[service]]
name = "tun6"
vip = "2001:db8:0:1::11"
port = 80
protocol = "tcp"
mode = "tunnel"
table_size = 257
  [[service.backend]]
  name = "c"
  address = "2001:db8:0:2::3"
[[service]]
name = "tun6u"
vip = "2001:db8:0:1::11"
port = 53
protocol = "udp"
mode = "tunnel"
table_size = 257
  [[service.backend]]
  name = "c"
  address = "2001:db8:0:2::3"
[[service]]
name = "tun46"
vip = "198.18.0.12"
port = 80
protocol = "tcp"
mode = "tunnel"
table_size = 257
  [[service.backend]]
  name = "d"
  address = "2001:db8:0:2::4"
[[service]]
name = "tun64"
vip = "2001:db8:0:1::12"
port = 80
protocol = "tcp"
mode = "tunnel"
table_size = 257
  [[service.backend]]
  name = "d"
  address = "198.18.1.4"
[[service]]
name = "nat4"
vip = "198.18.0.13"
port = 80
protocol = "tcp"
mode = "nat"
table_size = 257
  [[service.backend]]
  name = "e"
  address = "198.18.1.5"
  port = 8080
[[service]]
name = "nat4u"
vip = "198.18.0.13"
port = 53
protocol = "udp"
mode = "nat"
table_size = 257
  [[service.backend]]
  name = "e"
  address = "198.18.1.5"
  port = 5353
[[service]]
name = "nat6"
vip = "2001:db8:0:1::13"
port = 80
protocol = "tcp"
mode = "nat"
table_size = 257
  [[service.backend]]
  name = "e"
  address = "2001:db8:0:2::5"
  port = 8080
[[service]]
name = "nat6u"
vip = "2001:db8:0:1::13"
port = 53
protocol = "udp"
mode = "nat"
table_size = 257
  [[service.backend]]
  name = "e"
  address = "2001:db8:0:2::5"
  port = 5353
[[service]]
name = "allports"
vip = "198.18.0.14"
port = "all"
protocol = "udp"
mode = "dsr"
table_size = 257
  [service.check]
  type = "none"
  [[service.backend]]
  name = "f"
  address = "198.18.1.6"
[[service]]
name = "empty"
vip = "198.18.0.15"
port = 80
protocol = "tcp"
mode = "dsr"
table_size = 257
no_backend = "drop"
  [[service.backend]]
  name = "g"
  address = "198.18.1.7"
  weight = 0
[[service]]
name = "emptypass"
vip = "198.18.0.15"
port = 81
protocol = "tcp"
mode = "dsr"
table_size = 257
no_backend = "pass"
  [[service.backend]]
  name = "g"
  address = "198.18.1.7"
  weight = 0
"#;

fn ip4(a: [u8; 4]) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(a))
}
fn ip6(a: [u8; 16]) -> IpAddr {
    IpAddr::V6(Ipv6Addr::from(a))
}

fn build(b: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut v = Vec::new();
    b(&mut v);
    v
}

fn tcp4_from(
    macs: ([u8; 6], [u8; 6]),
    src: [u8; 4],
    dst: [u8; 4],
    sport: u16,
    dport: u16,
    syn: bool,
) -> Vec<u8> {
    build(|v| {
        let b = PacketBuilder::ethernet2(macs.0, macs.1)
            .ipv4(src, dst, 64)
            .tcp(sport, dport, 1000, 65535);
        let b = if syn { b.syn() } else { b.ack(77) };
        b.write(v, PAYLOAD).unwrap();
    })
}
fn tcp4(dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
    tcp4_from((CLIENT_MAC, LB_MAC), CLIENT4, dst, sport, dport, true)
}
fn udp4_from(
    macs: ([u8; 6], [u8; 6]),
    src: [u8; 4],
    dst: [u8; 4],
    sport: u16,
    dport: u16,
) -> Vec<u8> {
    build(|v| {
        PacketBuilder::ethernet2(macs.0, macs.1)
            .ipv4(src, dst, 64)
            .udp(sport, dport)
            .write(v, PAYLOAD)
            .unwrap()
    })
}
fn udp4(dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
    udp4_from((CLIENT_MAC, LB_MAC), CLIENT4, dst, sport, dport)
}
fn tcp6_from(
    macs: ([u8; 6], [u8; 6]),
    src: [u8; 16],
    dst: [u8; 16],
    sport: u16,
    dport: u16,
) -> Vec<u8> {
    build(|v| {
        PacketBuilder::ethernet2(macs.0, macs.1)
            .ipv6(src, dst, 64)
            .tcp(sport, dport, 1000, 65535)
            .syn()
            .write(v, PAYLOAD)
            .unwrap()
    })
}
fn tcp6(dst: [u8; 16], sport: u16, dport: u16) -> Vec<u8> {
    tcp6_from((CLIENT_MAC, LB_MAC), CLIENT6, dst, sport, dport)
}
fn udp6_from(
    macs: ([u8; 6], [u8; 6]),
    src: [u8; 16],
    dst: [u8; 16],
    sport: u16,
    dport: u16,
) -> Vec<u8> {
    build(|v| {
        PacketBuilder::ethernet2(macs.0, macs.1)
            .ipv6(src, dst, 64)
            .udp(sport, dport)
            .write(v, PAYLOAD)
            .unwrap()
    })
}
fn udp6(dst: [u8; 16], sport: u16, dport: u16) -> Vec<u8> {
    udp6_from((CLIENT_MAC, LB_MAC), CLIENT6, dst, sport, dport)
}
fn vlan_tcp4(dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
    build(|v| {
        PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC)
            .single_vlan(VlanId::try_new(42).unwrap())
            .ipv4(CLIENT4, dst, 64)
            .tcp(sport, dport, 1000, 65535)
            .syn()
            .write(v, PAYLOAD)
            .unwrap()
    })
}
fn options_tcp4(dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
    build(|v| {
        let mut h = Ipv4Header::new(0, 64, IpNumber::TCP, CLIENT4, dst).unwrap();
        // Four NOPs then end-of-options: an IHL of 6.
        h.options = [1u8, 1, 1, 0].into();
        PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC)
            .ip(IpHeaders::Ipv4(h, Default::default()))
            .tcp(sport, dport, 1000, 65535)
            .syn()
            .write(v, PAYLOAD)
            .unwrap()
    })
}

/// An IPv4 UDP fragment: the first (with the UDP header) or a later one (payload only).
fn frag4(dst: [u8; 4], first: bool) -> Vec<u8> {
    build(|v| {
        let body: Vec<u8> = if first {
            let mut u = UdpHeader {
                source_port: 4000,
                destination_port: 53,
                length: 8 + 64,
                checksum: 0,
            }
            .to_bytes()
            .to_vec();
            u.extend_from_slice(&[0xab; 24]);
            u
        } else {
            vec![0xcd; 24]
        };
        let mut h = Ipv4Header::new(body.len() as u16, 64, IpNumber::UDP, CLIENT4, dst).unwrap();
        h.identification = 0x4242;
        h.more_fragments = first;
        h.fragment_offset = IpFragOffset::try_new(if first { 0 } else { 4 }).unwrap();
        h.header_checksum = h.calc_header_checksum();
        Ethernet2Header {
            source: CLIENT_MAC,
            destination: LB_MAC,
            ether_type: EtherType::IPV4,
        }
        .write(v)
        .unwrap();
        h.write(v).unwrap();
        v.extend_from_slice(&body);
    })
}

/// An IPv6 UDP fragment (fragment extension header).
fn frag6(dst: [u8; 16], first: bool) -> Vec<u8> {
    build(|v| {
        let body: Vec<u8> = if first {
            let mut u = UdpHeader {
                source_port: 4000,
                destination_port: 53,
                length: 8 + 64,
                checksum: 0,
            }
            .to_bytes()
            .to_vec();
            u.extend_from_slice(&[0xab; 24]);
            u
        } else {
            vec![0xcd; 24]
        };
        let fh = Ipv6FragmentHeader::new(
            IpNumber::UDP,
            IpFragOffset::try_new(if first { 0 } else { 4 }).unwrap(),
            first,
            7,
        );
        let h = Ipv6Header {
            payload_length: (8 + body.len()) as u16,
            next_header: IpNumber::IPV6_FRAGMENTATION_HEADER,
            hop_limit: 64,
            source: CLIENT6,
            destination: dst,
            ..Default::default()
        };
        Ethernet2Header {
            source: CLIENT_MAC,
            destination: LB_MAC,
            ether_type: EtherType::IPV6,
        }
        .write(v)
        .unwrap();
        h.write(v).unwrap();
        fh.write(v).unwrap();
        v.extend_from_slice(&body);
    })
}

/// IPv6 with a hop-by-hop options header before TCP.
fn hop_by_hop6(dst: [u8; 16]) -> Vec<u8> {
    build(|v| {
        let tcp = tcp6(dst, 4000, 80);
        let l4 = &tcp[14 + 40..];
        let h = Ipv6Header {
            payload_length: (8 + l4.len()) as u16,
            next_header: IpNumber::IPV6_HEADER_HOP_BY_HOP,
            hop_limit: 64,
            source: CLIENT6,
            destination: dst,
            ..Default::default()
        };
        Ethernet2Header {
            source: CLIENT_MAC,
            destination: LB_MAC,
            ether_type: EtherType::IPV6,
        }
        .write(v)
        .unwrap();
        h.write(v).unwrap();
        v.extend_from_slice(&[6, 0, 1, 4, 0, 0, 0, 0]); // next = TCP, PadN
        v.extend_from_slice(l4);
    })
}

/// ICMP "fragmentation needed" from a router to `dst`, quoting `quote` (an IP packet's
/// first bytes), in a frame with `macs`.
fn icmp4_frag_needed_quoting(macs: ([u8; 6], [u8; 6]), dst: [u8; 4], quote: &[u8]) -> Vec<u8> {
    build(|v| {
        PacketBuilder::ethernet2(macs.0, macs.1)
            .ipv4(ROUTER4, dst, 64)
            .icmpv4(Icmpv4Type::DestinationUnreachable(
                DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 1400 },
            ))
            .write(v, quote)
            .unwrap()
    })
}

/// ICMP "fragmentation needed" from a router, quoting a reply the backend sent (VIP:80 ->
/// client:4000).
fn icmp4_frag_needed(vip: [u8; 4]) -> Vec<u8> {
    let quoted = tcp4_from((LB_MAC, CLIENT_MAC), vip, CLIENT4, 80, 4000, false);
    icmp4_frag_needed_quoting((CLIENT_MAC, LB_MAC), vip, &quoted[14..14 + 20 + 8])
}

/// ICMPv6 "packet too big" from a router to `dst`, quoting `quote`, in a frame with `macs`.
fn icmp6_too_big_quoting(macs: ([u8; 6], [u8; 6]), dst: [u8; 16], quote: &[u8]) -> Vec<u8> {
    build(|v| {
        PacketBuilder::ethernet2(macs.0, macs.1)
            .ipv6(v6(0xfe), dst, 64)
            .icmpv6(Icmpv6Type::PacketTooBig { mtu: 1280 })
            .write(v, quote)
            .unwrap()
    })
}

/// ICMPv6 "packet too big" quoting (VIP:80 -> client:4000).
fn icmp6_too_big(vip: [u8; 16]) -> Vec<u8> {
    let quoted = tcp6_from((LB_MAC, CLIENT_MAC), vip, CLIENT6, 80, 4000);
    icmp6_too_big_quoting((CLIENT_MAC, LB_MAC), vip, &quoted[14..14 + 40 + 8])
}

/// A too-big error about a `nat` flow, and what the backend must receive. The router
/// quotes the reply as the client would have seen it (`vip:vport` -> client:`cport`, its
/// first `quoted` bytes past Ethernet); the backend must get the error it would have had
/// without the load balancer: to its own address, quoting what it sent
/// (`backend:bport` -> client:`cport`), every checksum valid, from us to its MAC.
/// `reply(src, dst, sport, dport)` builds the reply's frame.
fn nat_too_big(
    vip: IpAddr,
    vport: u16,
    backend: IpAddr,
    bport: u16,
    cport: u16,
    quoted: usize,
    reply: impl Fn(IpAddr, IpAddr, u16, u16) -> Vec<u8>,
) -> (Vec<u8>, Vec<u8>) {
    let client = match vip {
        IpAddr::V4(_) => ip4(CLIENT4),
        IpAddr::V6(_) => ip6(CLIENT6),
    };
    let seen = reply(vip, client, vport, cport);
    let sent = reply(backend, client, bport, cport);
    let (seen, sent) = (&seen[14..14 + quoted], &sent[14..14 + quoted]);
    let to_backend = (LB_MAC, backend_mac(backend));
    match (vip, backend) {
        (IpAddr::V4(v), IpAddr::V4(b)) => (
            icmp4_frag_needed_quoting((CLIENT_MAC, LB_MAC), v.octets(), seen),
            icmp4_frag_needed_quoting(to_backend, b.octets(), sent),
        ),
        (IpAddr::V6(v), IpAddr::V6(b)) => (
            icmp6_too_big_quoting((CLIENT_MAC, LB_MAC), v.octets(), seen),
            icmp6_too_big_quoting(to_backend, b.octets(), sent),
        ),
        _ => unreachable!("nat keeps the family"),
    }
}

/// [`nat_too_big`] about a TCP flow (the reply an ACK with data).
fn nat_too_big_tcp(
    vip: IpAddr,
    vport: u16,
    backend: IpAddr,
    bport: u16,
    cport: u16,
    quoted: usize,
) -> (Vec<u8>, Vec<u8>) {
    nat_too_big(vip, vport, backend, bport, cport, quoted, |s, d, sp, dp| {
        let macs = (LB_MAC, CLIENT_MAC);
        match (s, d) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                tcp4_from(macs, s.octets(), d.octets(), sp, dp, false)
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => tcp6_from(macs, s.octets(), d.octets(), sp, dp),
            _ => unreachable!(),
        }
    })
}

/// [`nat_too_big`] about a UDP flow.
fn nat_too_big_udp(
    vip: IpAddr,
    vport: u16,
    backend: IpAddr,
    bport: u16,
    cport: u16,
    quoted: usize,
) -> (Vec<u8>, Vec<u8>) {
    nat_too_big(vip, vport, backend, bport, cport, quoted, |s, d, sp, dp| {
        let macs = (LB_MAC, CLIENT_MAC);
        match (s, d) {
            (IpAddr::V4(s), IpAddr::V4(d)) => udp4_from(macs, s.octets(), d.octets(), sp, dp),
            (IpAddr::V6(s), IpAddr::V6(d)) => udp6_from(macs, s.octets(), d.octets(), sp, dp),
            _ => unreachable!(),
        }
    })
}

fn icmp4_echo(dst: [u8; 4]) -> Vec<u8> {
    build(|v| {
        PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC)
            .ipv4(CLIENT4, dst, 64)
            .icmpv4_echo_request(1, 1)
            .write(v, PAYLOAD)
            .unwrap()
    })
}

fn arp() -> Vec<u8> {
    let mut v = vec![0xff; 6];
    v.extend_from_slice(&CLIENT_MAC);
    v.extend_from_slice(&[0x08, 0x06]);
    v.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    v.extend_from_slice(&CLIENT_MAC);
    v.extend_from_slice(&CLIENT4);
    v.extend_from_slice(&[0; 6]);
    v.extend_from_slice(&[198, 18, 0, 10]);
    v
}

/// The input with its MACs rewritten towards `backend`: what `dsr` must produce.
fn to_backend(input: &[u8], backend: IpAddr) -> Vec<u8> {
    let mut out = input.to_vec();
    out[..6].copy_from_slice(&backend_mac(backend));
    out[6..12].copy_from_slice(&LB_MAC);
    out
}

/// What the output must be.
enum Expect {
    /// Byte for byte the input (passed or dropped untouched).
    Unchanged,
    /// Exactly these bytes.
    Bytes(Vec<u8>),
    /// The input's IP packet inside an outer header to `backend`, sent to its MAC.
    Tunnel { backend: IpAddr },
}

struct Case {
    name: &'static str,
    packet: Vec<u8>,
    verdict: u32,
    expect: Expect,
    /// A reason counter that must go up by exactly one.
    counter: Option<Counter>,
}

fn case(
    name: &'static str,
    packet: Vec<u8>,
    verdict: u32,
    expect: Expect,
    counter: Option<Counter>,
) -> Case {
    Case {
        name,
        packet,
        verdict,
        expect,
        counter,
    }
}

fn dsr(name: &'static str, packet: Vec<u8>, backend: IpAddr) -> Case {
    let out = to_backend(&packet, backend);
    case(name, packet, XDP_TX, Expect::Bytes(out), None)
}

fn tunnel(name: &'static str, packet: Vec<u8>, backend: IpAddr) -> Case {
    case(name, packet, XDP_TX, Expect::Tunnel { backend }, None)
}

/// A too-big error about a `nat` flow, translated for its backend (see [`nat_too_big`]).
fn nat_icmp(name: &'static str, (packet, out): (Vec<u8>, Vec<u8>)) -> Case {
    case(
        name,
        packet,
        XDP_TX,
        Expect::Bytes(out),
        Some(Counter::IcmpNatToBackend),
    )
}

fn passed(name: &'static str, packet: Vec<u8>, counter: Counter) -> Case {
    case(name, packet, XDP_PASS, Expect::Unchanged, Some(counter))
}

/// Checks an encapsulated packet: MACs, EtherType, a valid outer header from the tunnel
/// source range to the backend, and the original IP packet inside, untouched.
fn check_tunnel(name: &str, input: &[u8], out: &[u8], backend: IpAddr) {
    let l3_off = if input[12..14] == [0x81, 0x00] {
        18
    } else {
        14
    };
    let inner = &input[l3_off..];
    assert_eq!(out[..6], backend_mac(backend), "{name}: destination MAC");
    assert_eq!(out[6..12], LB_MAC, "{name}: source MAC");
    if l3_off == 18 {
        assert_eq!(out[12..16], input[12..16], "{name}: VLAN tag kept");
    }
    let inner_proto = if input[l3_off] >> 4 == 4 { 4 } else { 41 };
    match backend {
        IpAddr::V4(b) => {
            assert_eq!(
                out[l3_off - 2..l3_off],
                [0x08, 0x00],
                "{name}: EtherType IPv4"
            );
            let h = Ipv4HeaderSlice::from_slice(&out[l3_off..])
                .expect("outer IPv4 header")
                .to_header();
            assert_eq!(h.destination, b.octets(), "{name}: outer destination");
            assert_eq!(
                h.source[..3],
                [198, 18, 250],
                "{name}: outer source in 198.18.250.0/24"
            );
            assert_eq!(h.protocol.0, inner_proto, "{name}: outer protocol");
            assert_eq!(
                h.total_len as usize,
                20 + inner.len(),
                "{name}: outer length"
            );
            assert_eq!(
                h.header_checksum,
                h.calc_header_checksum(),
                "{name}: outer checksum"
            );
            assert_eq!(&out[l3_off + 20..], inner, "{name}: inner packet untouched");
        }
        IpAddr::V6(b) => {
            assert_eq!(
                out[l3_off - 2..l3_off],
                [0x86, 0xdd],
                "{name}: EtherType IPv6"
            );
            let h = Ipv6HeaderSlice::from_slice(&out[l3_off..])
                .expect("outer IPv6 header")
                .to_header();
            assert_eq!(h.destination, b.octets(), "{name}: outer destination");
            let range = [0x20, 0x01, 0x0d, 0xb8, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0];
            assert_eq!(
                h.source[..14],
                range,
                "{name}: outer source in 2001:db8:ffff::/112"
            );
            assert_eq!(h.next_header.0, inner_proto, "{name}: next header");
            assert_eq!(
                h.payload_length as usize,
                inner.len(),
                "{name}: payload length"
            );
            assert_eq!(&out[l3_off + 40..], inner, "{name}: inner packet untouched");
        }
    }
}

fn run_case(rig: &mut Rig, c: &Case) {
    let before = c.counter.map(|k| rig.counter(k).unwrap());
    let out = rig
        .run(&c.packet)
        .unwrap_or_else(|e| panic!("{}: {e:#}", c.name));
    assert_eq!(
        verdict_name(out.verdict),
        verdict_name(c.verdict),
        "{}: verdict",
        c.name
    );
    match &c.expect {
        Expect::Unchanged => assert_eq!(out.bytes, c.packet, "{}: bytes must be unchanged", c.name),
        Expect::Bytes(b) => assert_eq!(&out.bytes, b, "{}: output bytes", c.name),
        Expect::Tunnel { backend } => check_tunnel(c.name, &c.packet, &out.bytes, *backend),
    }
    if let (Some(k), Some(b)) = (c.counter, before) {
        assert_eq!(
            rig.counter(k).unwrap(),
            b + 1,
            "{}: counter {} must count it",
            c.name,
            k.name()
        );
    }
}

#[test]
fn forwarding_table() {
    let mut rig = Rig::new(CONFIG).expect("load the balancer");
    let vip4 = [198, 18, 0, 10];
    let vip6 = v6net(1, 0x10);
    let (nat4, nat4_backend) = ([198, 18, 0, 13], [198, 18, 1, 5]);
    let (nat6, nat6_backend) = (v6net(1, 0x13), v6net(2, 5));
    let cases = vec![
        dsr("dsr ipv4 tcp", tcp4(vip4, 4000, 80), ip4([198, 18, 1, 1])),
        dsr("dsr ipv4 udp", udp4(vip4, 4000, 53), ip4([198, 18, 1, 2])),
        dsr("dsr ipv6 tcp", tcp6(vip6, 4000, 80), ip6(v6net(2, 1))),
        dsr("dsr ipv6 udp", udp6(vip6, 4000, 53), ip6(v6net(2, 2))),
        dsr(
            "dsr vlan ipv4 tcp",
            vlan_tcp4(vip4, 4001, 80),
            ip4([198, 18, 1, 1]),
        ),
        dsr(
            "dsr ipv4 options tcp",
            options_tcp4(vip4, 4002, 80),
            ip4([198, 18, 1, 1]),
        ),
        dsr(
            "dsr all-ports udp",
            udp4([198, 18, 0, 14], 4000, 9999),
            ip4([198, 18, 1, 6]),
        ),
        tunnel(
            "tunnel ipv4 tcp",
            tcp4([198, 18, 0, 11], 4000, 80),
            ip4([198, 18, 1, 3]),
        ),
        tunnel(
            "tunnel ipv4 udp",
            udp4([198, 18, 0, 11], 4000, 53),
            ip4([198, 18, 1, 3]),
        ),
        tunnel(
            "tunnel ipv6 tcp",
            tcp6(v6net(1, 0x11), 4000, 80),
            ip6(v6net(2, 3)),
        ),
        tunnel(
            "tunnel ipv6 udp",
            udp6(v6net(1, 0x11), 4000, 53),
            ip6(v6net(2, 3)),
        ),
        tunnel(
            "tunnel ipv4 in ipv6",
            tcp4([198, 18, 0, 12], 4000, 80),
            ip6(v6net(2, 4)),
        ),
        tunnel(
            "tunnel ipv6 in ipv4",
            tcp6(v6net(1, 0x12), 4000, 80),
            ip4([198, 18, 1, 4]),
        ),
        tunnel(
            "tunnel vlan ipv4 tcp",
            vlan_tcp4([198, 18, 0, 11], 4003, 80),
            ip4([198, 18, 1, 3]),
        ),
        case(
            "nat ipv4 tcp",
            tcp4([198, 18, 0, 13], 4000, 80),
            XDP_TX,
            Expect::Bytes(tcp4_from(
                (LB_MAC, backend_mac(ip4([198, 18, 1, 5]))),
                CLIENT4,
                [198, 18, 1, 5],
                4000,
                8080,
                true,
            )),
            None,
        ),
        case(
            "nat ipv4 udp",
            udp4([198, 18, 0, 13], 4000, 53),
            XDP_TX,
            Expect::Bytes(udp4_from(
                (LB_MAC, backend_mac(ip4([198, 18, 1, 5]))),
                CLIENT4,
                [198, 18, 1, 5],
                4000,
                5353,
            )),
            None,
        ),
        case(
            "nat ipv6 tcp",
            tcp6(v6net(1, 0x13), 4000, 80),
            XDP_TX,
            Expect::Bytes(tcp6_from(
                (LB_MAC, backend_mac(ip6(v6net(2, 5)))),
                CLIENT6,
                v6net(2, 5),
                4000,
                8080,
            )),
            None,
        ),
        case(
            "nat ipv6 udp",
            udp6(v6net(1, 0x13), 4000, 53),
            XDP_TX,
            Expect::Bytes(udp6_from(
                (LB_MAC, backend_mac(ip6(v6net(2, 5)))),
                CLIENT6,
                v6net(2, 5),
                4000,
                5353,
            )),
            None,
        ),
        case(
            "nat ipv4 tcp reply translated back to the VIP",
            tcp4_from(
                (CLIENT_MAC, LB_MAC),
                [198, 18, 1, 5],
                CLIENT4,
                8080,
                4000,
                false,
            ),
            XDP_PASS,
            Expect::Bytes(tcp4_from(
                (CLIENT_MAC, LB_MAC),
                [198, 18, 0, 13],
                CLIENT4,
                80,
                4000,
                false,
            )),
            Some(Counter::NatReply),
        ),
        case(
            "nat ipv4 udp reply translated back to the VIP",
            udp4_from((CLIENT_MAC, LB_MAC), [198, 18, 1, 5], CLIENT4, 5353, 4000),
            XDP_PASS,
            Expect::Bytes(udp4_from(
                (CLIENT_MAC, LB_MAC),
                [198, 18, 0, 13],
                CLIENT4,
                53,
                4000,
            )),
            Some(Counter::NatReply),
        ),
        case(
            "nat ipv6 udp reply translated back to the VIP",
            udp6_from((CLIENT_MAC, LB_MAC), v6net(2, 5), CLIENT6, 5353, 4000),
            XDP_PASS,
            Expect::Bytes(udp6_from(
                (CLIENT_MAC, LB_MAC),
                v6net(1, 0x13),
                CLIENT6,
                53,
                4000,
            )),
            Some(Counter::NatReply),
        ),
        // The nat cases above made these flows (client port 4000).
        nat_icmp(
            "icmp fragmentation needed about a nat tcp flow, whole tcp header quoted",
            nat_too_big_tcp(ip4(nat4), 80, ip4(nat4_backend), 8080, 4000, 20 + 20),
        ),
        nat_icmp(
            "icmp fragmentation needed about a nat tcp flow, 8 bytes of tcp quoted",
            nat_too_big_tcp(ip4(nat4), 80, ip4(nat4_backend), 8080, 4000, 20 + 8),
        ),
        nat_icmp(
            "icmp fragmentation needed about a nat udp flow",
            nat_too_big_udp(ip4(nat4), 53, ip4(nat4_backend), 5353, 4000, 20 + 8),
        ),
        nat_icmp(
            "icmpv6 packet too big about a nat tcp flow",
            nat_too_big_tcp(ip6(nat6), 80, ip6(nat6_backend), 8080, 4000, 40 + 20),
        ),
        nat_icmp(
            "icmpv6 packet too big about a nat udp flow",
            nat_too_big_udp(ip6(nat6), 53, ip6(nat6_backend), 5353, 4000, 40 + 8),
        ),
        passed(
            "icmp too big about an unknown nat flow passes",
            nat_too_big_tcp(ip4(nat4), 80, ip4(nat4_backend), 8080, 4999, 20 + 8).0,
            Counter::PassIcmpNat,
        ),
        case(
            "ipv4 first fragment",
            frag4([198, 18, 0, 14], true),
            XDP_TX,
            Expect::Bytes(to_backend(
                &frag4([198, 18, 0, 14], true),
                ip4([198, 18, 1, 6]),
            )),
            Some(Counter::Fragment),
        ),
        case(
            "ipv4 later fragment goes to the same backend",
            frag4([198, 18, 0, 14], false),
            XDP_TX,
            Expect::Bytes(to_backend(
                &frag4([198, 18, 0, 14], false),
                ip4([198, 18, 1, 6]),
            )),
            Some(Counter::Fragment),
        ),
        case(
            "ipv6 later fragment",
            frag6(vip6, false),
            XDP_TX,
            Expect::Bytes(to_backend(&frag6(vip6, false), ip6(v6net(2, 2)))),
            Some(Counter::Fragment),
        ),
        case(
            "ipv4 fragment to the VIP's only service of its protocol",
            frag4(vip4, false),
            XDP_TX,
            Expect::Bytes(to_backend(&frag4(vip4, false), ip4([198, 18, 1, 2]))),
            Some(Counter::Fragment),
        ),
        passed(
            "tcp fragment to a VIP with two tcp services and no all-ports one",
            {
                let mut p = frag4(vip4, false);
                p[14 + 9] = 6; // protocol TCP (the header checksum is not checked)
                p
            },
            Counter::PassNotService,
        ),
        case(
            "icmp fragmentation needed reaches the flow's backend",
            icmp4_frag_needed(vip4),
            XDP_TX,
            Expect::Bytes(to_backend(&icmp4_frag_needed(vip4), ip4([198, 18, 1, 1]))),
            Some(Counter::IcmpToBackend),
        ),
        case(
            "icmpv6 packet too big reaches the flow's backend",
            icmp6_too_big(vip6),
            XDP_TX,
            Expect::Bytes(to_backend(&icmp6_too_big(vip6), ip6(v6net(2, 1)))),
            Some(Counter::IcmpToBackend),
        ),
        passed(
            "icmp echo to a VIP passes",
            icmp4_echo(vip4),
            Counter::PassNotService,
        ),
        passed(
            "icmp error about no service passes",
            icmp4_frag_needed([198, 18, 0, 99]),
            Counter::PassIcmpNotService,
        ),
        passed(
            "tcp to a non-VIP passes",
            tcp4([198, 18, 0, 99], 4000, 80),
            Counter::PassNotService,
        ),
        passed(
            "tcp to a VIP on another port passes",
            tcp4(vip4, 4000, 443),
            Counter::PassNotService,
        ),
        passed("arp passes", arp(), Counter::PassNotIp),
        passed(
            "ipv6 hop-by-hop header passes",
            hop_by_hop6(vip6),
            Counter::PassIpv6ExtHeader,
        ),
        case(
            "no usable backend: drop",
            tcp4([198, 18, 0, 15], 4000, 80),
            XDP_DROP,
            Expect::Unchanged,
            Some(Counter::DropNoBackend),
        ),
        passed(
            "no usable backend: pass",
            tcp4([198, 18, 0, 15], 4000, 81),
            Counter::PassNoBackend,
        ),
        case(
            "tunnel packet over the MTU is dropped",
            build(|v| {
                PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC)
                    .ipv4(CLIENT4, [198, 18, 0, 11], 64)
                    .udp(4000, 53)
                    .write(v, &[0u8; 1490 - 28])
                    .unwrap()
            }),
            XDP_DROP,
            Expect::Unchanged,
            Some(Counter::DropTooBig),
        ),
        passed(
            "ipv4 version 5 is malformed",
            {
                let mut p = tcp4(vip4, 4000, 80);
                p[14] = 0x55;
                p
            },
            Counter::PassMalformedL3,
        ),
        passed(
            "ipv4 header length 4 is malformed",
            {
                let mut p = tcp4(vip4, 4000, 80);
                p[14] = 0x44;
                p
            },
            Counter::PassMalformedL3,
        ),
        passed(
            "ipv4 total length beyond the frame is malformed",
            {
                let mut p = tcp4(vip4, 4000, 80);
                p[16] = 0x05;
                p
            },
            Counter::PassMalformedL3,
        ),
    ];
    for c in &cases {
        run_case(&mut rig, c);
    }
}

/// Every truncation of valid packets is passed untouched, and counted.
#[test]
fn every_truncation_is_passed_untouched() {
    let mut rig = Rig::new(CONFIG).expect("load the balancer");
    let packets = [
        ("dsr ipv4 tcp", tcp4([198, 18, 0, 10], 4000, 80)),
        ("dsr ipv6 udp", udp6(v6net(1, 0x10), 4000, 53)),
        ("vlan ipv4 tcp", vlan_tcp4([198, 18, 0, 10], 4000, 80)),
        ("ipv4 options tcp", options_tcp4([198, 18, 0, 10], 4000, 80)),
        ("tunnel ipv4 tcp", tcp4([198, 18, 0, 11], 4000, 80)),
        ("nat ipv6 tcp", tcp6(v6net(1, 0x13), 4000, 80)),
        ("icmp too big", icmp4_frag_needed([198, 18, 0, 10])),
        (
            "icmp too big about a nat flow",
            nat_too_big_tcp(
                ip4([198, 18, 0, 13]),
                80,
                ip4([198, 18, 1, 5]),
                8080,
                4000,
                40,
            )
            .0,
        ),
    ];
    let reasons = [
        Counter::PassTruncatedL2,
        Counter::PassMalformedL3,
        Counter::PassTruncatedL4,
        Counter::PassNotIp,
        Counter::PassIcmpNotService,
    ];
    for (name, full) in packets {
        // The kernel hands XDP no frame shorter than an Ethernet header.
        for len in 14..full.len() {
            let cut = &full[..len];
            let before: u64 = reasons.iter().map(|&r| rig.counter(r).unwrap()).sum();
            let out = rig.run(cut).unwrap();
            assert_eq!(
                verdict_name(out.verdict),
                "XDP_PASS",
                "{name} cut to {len} bytes: verdict"
            );
            assert_eq!(
                out.bytes, cut,
                "{name} cut to {len} bytes: bytes must be unchanged"
            );
            let after: u64 = reasons.iter().map(|&r| rig.counter(r).unwrap()).sum();
            assert_eq!(
                after,
                before + 1,
                "{name} cut to {len} bytes: one malformed/truncated counter must count it"
            );
        }
    }
}

/// Flows spread by the Maglev table, the kernel and userspace agree on the slot, and the
/// connection table keeps flows on their backend when the backend set changes.
#[test]
fn flows_stick_and_only_the_dead_backends_flows_move() {
    let config = r#"
interface = "lo"
flow_capacity = 65536
[[service]]
name = "web"
vip = "198.18.0.10"
port = 80
protocol = "tcp"
mode = "dsr"
table_size = 1021
  [[service.backend]]
  name = "w1"
  address = "198.18.1.1"
  [[service.backend]]
  name = "w2"
  address = "198.18.1.2"
  [[service.backend]]
  name = "w3"
  address = "198.18.1.3"
"#;
    let mut rig = Rig::new(config).expect("load the balancer");
    let macs: Vec<[u8; 6]> = (1..=3).map(|i| backend_mac(ip4([198, 18, 1, i]))).collect();
    let flows = 3000u16;
    let mut first = Vec::new();
    let mut per_backend = [0usize; 3];
    for p in 0..flows {
        let out = rig.run(&tcp4([198, 18, 0, 10], 10_000 + p, 80)).unwrap();
        assert_eq!(out.verdict, XDP_TX);
        let idx = macs
            .iter()
            .position(|m| out.bytes[..6] == *m)
            .expect("a backend's MAC");
        per_backend[idx] += 1;
        first.push(idx);
    }
    for (i, n) in per_backend.iter().enumerate() {
        let share = *n as f64 / flows as f64;
        assert!(
            (share - 1.0 / 3.0).abs() < 0.05,
            "backend w{} got {:.1}% of flows, expected about 33%",
            i + 1,
            share * 100.0
        );
    }
    // w2 becomes unusable: its flows move, every other flow stays (ACKs, not SYNs).
    rig.set_usable(&|_, b| b != "w2").unwrap();
    let repicked_before = rig.counter(Counter::FlowRepicked).unwrap();
    for p in 0..flows {
        let pkt = tcp4_from(
            (CLIENT_MAC, LB_MAC),
            CLIENT4,
            [198, 18, 0, 10],
            10_000 + p,
            80,
            false,
        );
        let out = rig.run(&pkt).unwrap();
        let idx = macs
            .iter()
            .position(|m| out.bytes[..6] == *m)
            .expect("a backend's MAC");
        if first[p as usize] == 1 {
            assert_ne!(idx, 1, "flow {p} still goes to the unusable backend");
        } else {
            assert_eq!(
                idx, first[p as usize],
                "flow {p} on a healthy backend moved"
            );
        }
    }
    let repicked = rig.counter(Counter::FlowRepicked).unwrap() - repicked_before;
    assert_eq!(
        repicked as usize, per_backend[1],
        "every flow of w2, and only those, is re-picked"
    );
}

/// The backends' decapsulator undoes exactly what `tunnel` mode does, for all four family
/// combinations and with a VLAN tag; anything else passes untouched.
#[test]
fn decapsulation_restores_the_original_packet() {
    use aya::programs::{TestRun as _, TestRunOptions};
    use failover::loader::{self, DECAP_OBJECT};
    use failover_common::maps::PROG_DECAP;

    let mut rig = Rig::new(CONFIG).expect("load the balancer");
    let mut decap =
        loader::load_aux(DECAP_OBJECT, "failover-decap", PROG_DECAP).expect("load decap");
    let prog = loader::xdp_mut(&mut decap, PROG_DECAP).unwrap();
    let run = |packet: &[u8]| {
        let mut out = vec![0u8; packet.len() + 64];
        let r = prog
            .test_run(TestRunOptions {
                data_in: Some(packet),
                data_out: Some(&mut out),
                repeat: 1,
                ..Default::default()
            })
            .expect("BPF_PROG_TEST_RUN");
        out.truncate(r.data_size_out as usize);
        (r.return_value, out)
    };
    for (name, original, backend) in [
        (
            "ipv4 in ipv4",
            tcp4([198, 18, 0, 11], 4100, 80),
            ip4([198, 18, 1, 3]),
        ),
        (
            "ipv6 in ipv6",
            tcp6(v6net(1, 0x11), 4100, 80),
            ip6(v6net(2, 3)),
        ),
        (
            "ipv4 in ipv6",
            tcp4([198, 18, 0, 12], 4100, 80),
            ip6(v6net(2, 4)),
        ),
        (
            "ipv6 in ipv4",
            tcp6(v6net(1, 0x12), 4100, 80),
            ip4([198, 18, 1, 4]),
        ),
        (
            "vlan ipv4 in ipv4",
            vlan_tcp4([198, 18, 0, 11], 4101, 80),
            ip4([198, 18, 1, 3]),
        ),
    ] {
        let tunnelled = rig.run(&original).unwrap();
        assert_eq!(
            tunnelled.verdict, XDP_TX,
            "{name}: the balancer must encapsulate"
        );
        let (verdict, out) = run(&tunnelled.bytes);
        assert_eq!(verdict_name(verdict), "XDP_PASS", "{name}: decap verdict");
        assert_eq!(
            out,
            to_backend(&original, backend),
            "{name}: decapsulated bytes"
        );
    }
    for (name, packet) in [
        ("plain tcp", tcp4([198, 18, 0, 10], 4000, 80)),
        ("arp", arp()),
    ] {
        let (verdict, out) = run(&packet);
        assert_eq!(verdict_name(verdict), "XDP_PASS", "{name}: verdict");
        assert_eq!(out, packet, "{name}: untouched");
    }
}

/// A `nat` backend that resets a new flow's SYN: the reset is counted, reported, dropped
/// (not passed to the client), and the flow forgotten so the next SYN is picked afresh.
/// A reset on an answered flow is an ordinary reply.
#[test]
fn nat_backend_reset_of_a_new_flow_is_hidden_and_forgotten() {
    let mut rig = Rig::new(CONFIG).expect("load the balancer");
    let nat_id = rig.layout.service("nat4").unwrap().entry.id;
    let syn = tcp4([198, 18, 0, 13], 4200, 80);
    assert_eq!(rig.run(&syn).unwrap().verdict, XDP_TX);
    let new_before = rig.dp.service_traffic(nat_id).unwrap().new_flows;
    let rst = build(|v| {
        PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC)
            .ipv4([198, 18, 1, 5], CLIENT4, 64)
            .tcp(8080, 4200, 0, 0)
            .rst()
            .write(v, &[])
            .unwrap()
    });
    let resets = rig.counter(Counter::BackendReset).unwrap();
    let out = rig.run(&rst).unwrap();
    assert_eq!(
        verdict_name(out.verdict),
        "XDP_DROP",
        "the reset is not passed to the client"
    );
    assert_eq!(
        rig.counter(Counter::BackendReset).unwrap(),
        resets + 1,
        "counted"
    );
    // The flow is forgotten: an ACK of the same tuple is a new flow now.
    let ack = tcp4_from(
        (CLIENT_MAC, LB_MAC),
        CLIENT4,
        [198, 18, 0, 13],
        4200,
        80,
        false,
    );
    assert_eq!(rig.run(&ack).unwrap().verdict, XDP_TX);
    assert_eq!(
        rig.dp.service_traffic(nat_id).unwrap().new_flows,
        new_before + 1,
        "re-picked as a new flow"
    );

    // Answered flows: a later reset is translated and passed like any reply.
    let syn = tcp4([198, 18, 0, 13], 4201, 80);
    rig.run(&syn).unwrap();
    let synack = tcp4_from(
        (CLIENT_MAC, LB_MAC),
        [198, 18, 1, 5],
        CLIENT4,
        8080,
        4201,
        false,
    );
    assert_eq!(verdict_name(rig.run(&synack).unwrap().verdict), "XDP_PASS");
    let rst2 = build(|v| {
        PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC)
            .ipv4([198, 18, 1, 5], CLIENT4, 64)
            .tcp(8080, 4201, 0, 0)
            .rst()
            .write(v, &[])
            .unwrap()
    });
    assert_eq!(
        verdict_name(rig.run(&rst2).unwrap().verdict),
        "XDP_PASS",
        "a reset of an answered flow reaches the client"
    );
}

/// Backends reached through another interface than the attached one: the frame, rewritten
/// exactly as for XDP_TX, is redirected through the `EGRESS` devmap. A backend whose
/// interface is missing from the devmap is dropped and counted, never sent out of the
/// wrong interface.
#[test]
fn backends_behind_another_interface_are_redirected_through_the_devmap() {
    let mut rig = Rig::new(CONFIG).expect("load the balancer");
    // BPF_PROG_TEST_RUN decides the redirect without performing it: any interface will do.
    let lo = failover::neighbor::ifindex("lo").expect("lo");
    let egress = std::collections::HashMap::from([
        (ip4([198, 18, 1, 1]), lo),
        (ip4([198, 18, 1, 5]), lo),
        (ip6(v6net(2, 3)), lo),
    ]);
    assert!(rig.dp.set_egress(&egress).expect("fill EGRESS"), "changed");
    assert!(!rig.dp.set_egress(&egress).expect("again"), "unchanged");
    rig.set_usable(&|_, _| true).expect("rewrite the backends");
    let vip4 = [198, 18, 0, 10];
    let cases = vec![
        case(
            "dsr ipv4 tcp redirected",
            tcp4(vip4, 4100, 80),
            XDP_REDIRECT,
            Expect::Bytes(to_backend(&tcp4(vip4, 4100, 80), ip4([198, 18, 1, 1]))),
            None,
        ),
        case(
            "nat ipv4 tcp redirected",
            tcp4([198, 18, 0, 13], 4100, 80),
            XDP_REDIRECT,
            Expect::Bytes(tcp4_from(
                (LB_MAC, backend_mac(ip4([198, 18, 1, 5]))),
                CLIENT4,
                [198, 18, 1, 5],
                4100,
                8080,
                true,
            )),
            None,
        ),
        case(
            "tunnel ipv6 tcp redirected",
            tcp6(v6net(1, 0x11), 4100, 80),
            XDP_REDIRECT,
            Expect::Tunnel {
                backend: ip6(v6net(2, 3)),
            },
            None,
        ),
        dsr(
            "dsr ipv4 udp to a backend on the attached interface",
            udp4(vip4, 4100, 53),
            ip4([198, 18, 1, 2]),
        ),
    ];
    for c in &cases {
        run_case(&mut rig, c);
    }
    // The nat case above made the flow this error is about.
    let (icmp, out) = nat_too_big_tcp(
        ip4([198, 18, 0, 13]),
        80,
        ip4([198, 18, 1, 5]),
        8080,
        4100,
        40,
    );
    run_case(
        &mut rig,
        &case(
            "icmp fragmentation needed about a nat flow redirected",
            icmp,
            XDP_REDIRECT,
            Expect::Bytes(out),
            Some(Counter::IcmpNatToBackend),
        ),
    );

    // An ifindex the devmap does not hold (the userspace never writes one: forced here).
    let id = rig.backend_id("web4", "a");
    let mut b = rig.dp.backend(id).expect("backend");
    b.ifindex = lo + 1000;
    rig.dp.set_backend(id, &b).expect("write the backend");
    let before = rig.counter(Counter::DropNoEgress).unwrap();
    let out = rig.run(&tcp4(vip4, 4101, 80)).unwrap();
    assert_eq!(verdict_name(out.verdict), "XDP_DROP", "missing egress");
    assert_eq!(
        rig.counter(Counter::DropNoEgress).unwrap(),
        before + 1,
        "drop_no_egress counts it"
    );
}
