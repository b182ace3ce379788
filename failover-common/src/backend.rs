//! Backends as the packet path sees them: where to send, and whether it may.

/// `Backend::flags`: the backend may receive packets (new flows and existing ones).
pub const BACKEND_F_USABLE: u32 = 1 << 0;
/// `Backend::flags`: the backend is an IPv6 address.
pub const BACKEND_F_IPV6: u32 = 1 << 1;

/// One backend of one service (`BACKENDS[id]`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backend {
    /// Backend address (tunnel destination, NAT destination); IPv4 uses the first word.
    pub addr_be: [u32; 4],
    /// Service this id currently belongs to: a flow whose service differs is re-picked.
    pub service_id: u32,
    /// `BACKEND_F_*` bits.
    pub flags: u32,
    /// Destination MAC: the backend's own (dsr) or the next hop's towards it.
    pub mac: [u8; 6],
    /// Backend port for `nat` mode (0 keeps the client's destination port).
    pub port_be: u16,
    /// Egress interface when it differs from the ingress one: the packet is redirected
    /// through the `EGRESS` devmap under this key (its ifindex); 0 = XDP_TX.
    pub ifindex: u32,
    /// Its service's [`crate::ForwardMode`]: an established flow is forwarded from the
    /// connection table and this entry alone, without looking the service up.
    pub mode: u32,
}
const _: () = assert!(core::mem::size_of::<Backend>() == 40);

impl Backend {
    /// Whether the packet path may send to this backend on behalf of `service_id`.
    #[inline(always)]
    pub const fn usable_for(&self, service_id: u32) -> bool {
        self.flags & BACKEND_F_USABLE != 0 && self.service_id == service_id
    }
}
