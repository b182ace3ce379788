//! The connection table's key and value.

/// A flow as seen from the client: (source, destination, ports, protocol).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// Client address; IPv4 uses the first word.
    pub src_be: [u32; 4],
    /// VIP.
    pub dst_be: [u32; 4],
    /// Client port (0 for fragments).
    pub sport_be: u16,
    /// VIP port (0 for fragments).
    pub dport_be: u16,
    /// IP protocol.
    pub proto: u8,
    /// `FAMILY_IPV4` or `FAMILY_IPV6`.
    pub family: u8,
    /// Explicit padding: always zero, so equal flows hash equally.
    pub _pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<FlowKey>() == 40);

/// The IPv4 form of [`FlowKey`] (16 bytes instead of 40: the connection table's hash is
/// the largest cost of the hit path).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey4 {
    /// Client address.
    pub src_be: u32,
    /// VIP.
    pub dst_be: u32,
    /// Client port (0 for fragments).
    pub sport_be: u16,
    /// VIP port (0 for fragments).
    pub dport_be: u16,
    /// IP protocol, widened to a word so the key has no padding to zero (a 3-byte pad
    /// costs the packet path a memset call on every packet).
    pub proto: u32,
}
const _: () = assert!(core::mem::size_of::<FlowKey4>() == 16);

impl FlowKey {
    /// The IPv4 form of an IPv4 flow.
    #[inline(always)]
    pub const fn v4(&self) -> FlowKey4 {
        FlowKey4 {
            src_be: self.src_be[0],
            dst_be: self.dst_be[0],
            sport_be: self.sport_be,
            dport_be: self.dport_be,
            proto: self.proto as u32,
        }
    }
}

/// Where a known flow goes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowValue {
    /// Backend id (`BACKENDS` index).
    pub backend: u32,
    /// Service id the flow was picked for.
    pub service: u32,
}
const _: () = assert!(core::mem::size_of::<FlowValue>() == 8);

impl FlowKey {
    /// The hash that picks a Maglev slot. Shared so userspace can explain a flow.
    #[inline(always)]
    pub fn hash(&self) -> u32 {
        let ports = ((self.sport_be as u32) << 16) | self.dport_be as u32;
        crate::hash::flow_hash(&self.src_be, &self.dst_be, ports, self.proto as u32)
    }
}

/// `NatOrigin::state`: the flow began with a SYN and the backend has not answered yet.
pub const NAT_SYN_SENT: u8 = 1;
/// `NatOrigin::state`: the backend answered with something other than a reset.
pub const NAT_ANSWERED: u8 = 2;
/// `NatOrigin::flags`: a reset answering the flow's SYN is dropped and the flow forgotten,
/// so the client's SYN retransmission is re-picked (`passive_reset` policy).
pub const NAT_F_HIDE_RESET: u8 = 1 << 0;

/// For `nat` services: what a backend's reply must be translated back to. Keyed by the
/// reply's own flow (backend address and port to client address and port).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatOrigin {
    /// The VIP the client addressed.
    pub vip_be: [u32; 4],
    /// The service port the client addressed.
    pub vport_be: u16,
    /// `NAT_SYN_SENT`, `NAT_ANSWERED`, or 0 (not begun by a SYN: UDP, mid-stream).
    pub state: u8,
    /// `NAT_F_*` bits.
    pub flags: u8,
    /// Service id (for counters and reset reports).
    pub service: u32,
    /// Backend id.
    pub backend: u32,
}
const _: () = assert!(core::mem::size_of::<NatOrigin>() == 28);

/// A backend answered a new flow's SYN with a reset: sent to the daemon at once through
/// the `RESETS` ring buffer, so it checks that backend immediately.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ResetReport {
    /// Service id.
    pub service: u32,
    /// Backend id.
    pub backend: u32,
}
const _: () = assert!(core::mem::size_of::<ResetReport>() == 8);
