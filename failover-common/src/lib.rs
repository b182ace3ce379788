//! Types and constants shared by the failover XDP program and its userspace.
//!
//! Every map's name, key and value lives here once; both sides import them, so the kernel
//! and userspace can never disagree on a layout (sizes are asserted at compile time).
//! Fields in network byte order end in `_be` and are converted at the edges only.
#![no_std]

pub mod backend;
pub mod flow;
pub mod hash;
pub mod maps;
pub mod service;
pub mod stats;

pub use backend::Backend;
pub use flow::{FlowKey, FlowKey4, FlowValue, NatOrigin, ResetReport};
pub use service::{ForwardMode, Globals, ServiceKey, ServiceKey4, ServiceValue};
pub use stats::{Counter, Traffic};

/// Address family tags used in keys (values of `family` fields).
pub const FAMILY_IPV4: u8 = 4;
/// IPv6 family tag.
pub const FAMILY_IPV6: u8 = 6;

/// IP protocol numbers the packet path understands.
pub const PROTO_TCP: u8 = 6;
/// UDP.
pub const PROTO_UDP: u8 = 17;
/// ICMP (IPv4).
pub const PROTO_ICMP: u8 = 1;
/// ICMPv6.
pub const PROTO_ICMPV6: u8 = 58;
/// IPv4 carried in IP (IP-in-IP).
pub const PROTO_IPIP: u8 = 4;
/// IPv6 carried in IP.
pub const PROTO_IPV6: u8 = 41;

/// Implements `aya::Pod` for map types when built for userspace.
macro_rules! pod {
    ($($t:ty),* $(,)?) => {
        $(
            #[cfg(feature = "user")]
            // SAFETY: the type is `#[repr(C)]`, `Copy`, has no padding bytes left implicit
            // (padding is spelled out as `_pad` fields) and every bit pattern is valid.
            unsafe impl aya::Pod for $t {}
        )*
    };
}
pod!(
    ServiceKey,
    ServiceKey4,
    ServiceValue,
    Globals,
    Backend,
    FlowKey,
    FlowKey4,
    FlowValue,
    NatOrigin,
    ResetReport,
    Traffic
);
