//! Virtual services: the key the packet path matches and what it learns from the match.

/// Identifies a virtual service: (VIP, port, protocol). `port_be == 0` matches every port.
///
/// IP fragments carry no port, so they are matched by a key of their own (`fragments = 1`,
/// `port_be = 0`): userspace points it at the VIP's all-ports service, or at its only
/// service for that protocol, so every fragment of a datagram reaches one backend.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ServiceKey {
    /// The VIP, as it sits in the packet; IPv4 uses the first word only, the rest are zero.
    pub addr_be: [u32; 4],
    /// Destination port, or 0 for "every port".
    pub port_be: u16,
    /// `PROTO_TCP` or `PROTO_UDP`.
    pub proto: u8,
    /// `FAMILY_IPV4` or `FAMILY_IPV6`.
    pub family: u8,
    /// 1 for the key that IP fragments of this (VIP, protocol) use, else 0.
    pub fragments: u32,
}
const _: () = assert!(core::mem::size_of::<ServiceKey>() == 24);

/// The IPv4 form of [`ServiceKey`]: an 8-byte key hashes in a fraction of the time of the
/// 24-byte one, and IPv4 is most traffic.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ServiceKey4 {
    /// The VIP, as it sits in the packet.
    pub addr_be: u32,
    /// Destination port, or 0 for "every port".
    pub port_be: u16,
    /// `PROTO_TCP` or `PROTO_UDP`.
    pub proto: u8,
    /// 1 for the fragments key, else 0.
    pub fragments: u8,
}
const _: () = assert!(core::mem::size_of::<ServiceKey4>() == 8);

impl ServiceKey {
    /// The IPv4 form of an IPv4 key.
    #[inline(always)]
    pub const fn v4(&self) -> ServiceKey4 {
        ServiceKey4 {
            addr_be: self.addr_be[0],
            port_be: self.port_be,
            proto: self.proto,
            fragments: self.fragments as u8,
        }
    }
}

/// How a service's packets reach its backends.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ForwardMode {
    /// L2 direct server return: rewrite MACs, transmit.
    Dsr = 0,
    /// IP-in-IP encapsulation towards the backend's address.
    Tunnel = 1,
    /// Destination NAT to the backend's address and port; replies translated back.
    Nat = 2,
}

impl ForwardMode {
    /// Decodes the `mode` field of a [`ServiceValue`].
    pub const fn from_u32(v: u32) -> Option<Self> {
        match v {
            0 => Some(Self::Dsr),
            1 => Some(Self::Tunnel),
            2 => Some(Self::Nat),
            _ => None,
        }
    }
}

/// `ServiceValue::flags`: with no usable backend, pass to the local stack instead of dropping.
pub const SVC_F_NO_BACKEND_PASS: u32 = 1 << 0;
/// `ServiceValue::flags` (`nat`, TCP): a reset answering a new flow's SYN is not passed to
/// the client; the flow is forgotten so the SYN retransmission is re-picked.
pub const SVC_F_HIDE_RESET: u32 = 1 << 1;

/// What the packet path knows about a service.
///
/// Userspace writes a new Maglev table into the inactive half of the service's slice of
/// `RINGS`, then replaces this value (one map update) to switch `ring_offset` to it, so the
/// packet path never sees a half-written table.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceValue {
    /// Index into `SERVICE_TRAFFIC`; also the owner id stored in each of its backends.
    pub id: u32,
    /// A [`ForwardMode`] as u32.
    pub mode: u32,
    /// `SVC_F_*` bits.
    pub flags: u32,
    /// First slot of the active table in `RINGS`.
    pub ring_offset: u32,
    /// Slots in the active table; 0 when no backend is usable.
    pub ring_size: u32,
}
const _: () = assert!(core::mem::size_of::<ServiceValue>() == 20);

/// Program-wide settings (`GLOBALS[0]`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Globals {
    /// Outer IPv4 source for `tunnel` mode: base address; the bits in `tunnel_src4_mask_be`
    /// are taken from the flow hash so the backend's NIC can spread flows over queues.
    pub tunnel_src4_be: u32,
    /// Host bits of the IPv4 tunnel source range (network byte order).
    pub tunnel_src4_mask_be: u32,
    /// Outer IPv6 source for `tunnel` mode; the last word's `tunnel_src6_mask_be` bits vary.
    pub tunnel_src6_be: [u32; 4],
    /// Host bits of the last word of the IPv6 tunnel source range.
    pub tunnel_src6_mask_be: u32,
    /// Largest IP packet (L3 bytes) the egress link carries; 0 means "do not check".
    pub mtu: u32,
    /// `GLOBAL_F_*` bits.
    pub flags: u32,
}
const _: () = assert!(core::mem::size_of::<Globals>() == 36);

/// `Globals::flags`: some service uses `nat`, so packets to no service are checked against
/// `NAT_REPLIES` (a cost only NAT users pay).
pub const GLOBAL_F_NAT: u32 = 1 << 0;
