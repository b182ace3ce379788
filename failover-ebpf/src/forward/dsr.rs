//! L2 direct server return: the frame goes to the backend's MAC unchanged above L2; the
//! backend holds the VIP on loopback and answers the client itself.

use aya_ebpf::programs::XdpContext;
use failover_common::Counter;
use failover_ebpf::parse::copy_mac;

/// Addresses the frame to `mac`, from us: the frame reached us, so its destination MAC is
/// ours and becomes the source.
#[inline(always)]
pub fn set_macs(ctx: &XdpContext, mac: &[u8; 6]) -> Result<(), Counter> {
    let eth = super::eth(ctx)?;
    unsafe {
        copy_mac(&raw mut (*eth).src, &raw const (*eth).dst);
        copy_mac(&raw mut (*eth).dst, mac);
    }
    Ok(())
}
