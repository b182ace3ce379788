//! Counters: one per reason a packet is not forwarded, and traffic per service and backend.

/// Program-wide counters (`COUNTERS[counter as u32]`, per CPU; userspace sums them).
///
/// Every packet that is not forwarded is counted under exactly one of these reasons.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Not IPv4/IPv6 (ARP, LLDP, ...): passed.
    PassNotIp = 0,
    /// IP traffic to no configured service: passed untouched.
    PassNotService,
    /// Ethernet or VLAN header cut short: passed (the kernel drops it).
    PassTruncatedL2,
    /// IP header cut short or invalid (version, header length, total length): passed.
    PassMalformedL3,
    /// IPv6 with an extension header the packet path does not walk: passed.
    PassIpv6ExtHeader,
    /// ICMP error whose quoted packet belongs to no service: passed.
    PassIcmpNotService,
    /// ICMP error about a `nat` service whose flow is not in the connection table (or whose
    /// backend is no longer usable): there is no backend to translate it for, so passed.
    PassIcmpNat,
    /// Service has no usable backend and its policy is "pass".
    PassNoBackend,
    /// Service has no usable backend and its policy is "drop".
    DropNoBackend,
    /// TCP/UDP header cut short: passed (the kernel drops it), never forwarded.
    PassTruncatedL4,
    /// The picked backend has no resolved MAC yet: dropped.
    DropBackendUnresolved,
    /// Encapsulation would exceed the MTU: dropped.
    DropTooBig,
    /// `bpf_xdp_adjust_head` or a bounds re-check failed: dropped.
    DropAdjustFailed,
    /// Corrupt map state (ring slot out of range, unknown mode): dropped.
    DropInternal,
    /// ICMP error about a service's flow, sent on to that flow's backend.
    IcmpToBackend,
    /// IP fragment (no ports) forwarded by addresses and protocol.
    Fragment,
    /// NAT reply translated back to the VIP.
    NatReply,
    /// A `nat` backend reset a new flow's SYN: reported; with `passive_reset`, dropped and
    /// the flow forgotten so the client's retransmission is re-picked.
    BackendReset,
    /// An existing flow whose backend became unusable, moved to a new one.
    FlowRepicked,
    /// ICMP too-big error about a `nat` flow: its quote translated back to what the backend
    /// sent, and sent on to that backend.
    IcmpNatToBackend,
    /// The backend's egress interface (XDP_REDIRECT) is missing from `EGRESS`: dropped.
    DropNoEgress,
}

impl Counter {
    /// Number of counters (size of the `COUNTERS` map).
    pub const COUNT: u32 = Self::DropNoEgress as u32 + 1;

    /// Every counter, in index order.
    pub const ALL: [Self; Self::COUNT as usize] = [
        Self::PassNotIp,
        Self::PassNotService,
        Self::PassTruncatedL2,
        Self::PassMalformedL3,
        Self::PassIpv6ExtHeader,
        Self::PassIcmpNotService,
        Self::PassIcmpNat,
        Self::PassNoBackend,
        Self::DropNoBackend,
        Self::PassTruncatedL4,
        Self::DropBackendUnresolved,
        Self::DropTooBig,
        Self::DropAdjustFailed,
        Self::DropInternal,
        Self::IcmpToBackend,
        Self::Fragment,
        Self::NatReply,
        Self::BackendReset,
        Self::FlowRepicked,
        Self::IcmpNatToBackend,
        Self::DropNoEgress,
    ];

    /// Whether a packet counted under this reason is passed to the kernel (else dropped).
    pub const fn passes(self) -> bool {
        matches!(
            self,
            Self::PassNotIp
                | Self::PassNotService
                | Self::PassTruncatedL2
                | Self::PassMalformedL3
                | Self::PassIpv6ExtHeader
                | Self::PassIcmpNotService
                | Self::PassIcmpNat
                | Self::PassNoBackend
                | Self::PassTruncatedL4
        )
    }

    /// The counter's name in status output and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            Self::PassNotIp => "pass_not_ip",
            Self::PassNotService => "pass_not_service",
            Self::PassTruncatedL2 => "pass_truncated_l2",
            Self::PassMalformedL3 => "pass_malformed_l3",
            Self::PassIpv6ExtHeader => "pass_ipv6_ext_header",
            Self::PassIcmpNotService => "pass_icmp_not_service",
            Self::PassIcmpNat => "pass_icmp_nat",
            Self::PassNoBackend => "pass_no_backend",
            Self::DropNoBackend => "drop_no_backend",
            Self::PassTruncatedL4 => "pass_truncated_l4",
            Self::DropBackendUnresolved => "drop_backend_unresolved",
            Self::DropTooBig => "drop_too_big",
            Self::DropAdjustFailed => "drop_adjust_failed",
            Self::DropInternal => "drop_internal",
            Self::IcmpToBackend => "icmp_to_backend",
            Self::Fragment => "fragment",
            Self::NatReply => "nat_reply",
            Self::BackendReset => "backend_reset",
            Self::FlowRepicked => "flow_repicked",
            Self::IcmpNatToBackend => "icmp_nat_to_backend",
            Self::DropNoEgress => "drop_no_egress",
        }
    }
}

/// Traffic of one service or backend (per CPU; userspace sums them).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Packets forwarded.
    pub packets: u64,
    /// Bytes forwarded (as received, before encapsulation).
    pub bytes: u64,
    /// Flows that were not in the connection table (or were re-picked).
    pub new_flows: u64,
}
const _: () = assert!(core::mem::size_of::<Traffic>() == 24);

/// Counters of the backends' decapsulation program (`DECAP_COUNTERS`, per CPU).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecapCounter {
    /// IP-in-IP packets whose outer header was removed.
    Decapsulated = 0,
    /// Anything else: passed untouched.
    NotTunnel,
    /// Tunnel packets cut short or malformed: passed untouched.
    Malformed,
}

impl DecapCounter {
    /// Number of counters.
    pub const COUNT: u32 = Self::Malformed as u32 + 1;
}
