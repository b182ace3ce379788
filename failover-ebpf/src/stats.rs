//! Counting: reasons, and traffic per service and backend.

use aya_ebpf::bindings::xdp_action;
use failover_common::{Counter, Traffic};

use crate::maps::{BACKEND_TRAFFIC, COUNTERS, SERVICE_TRAFFIC};

/// Adds one to a reason counter.
#[inline(always)]
pub fn count(c: Counter) {
    if let Some(v) = COUNTERS.get_ptr_mut(c as u32) {
        unsafe { *v += 1 };
    }
}

/// The verdict that goes with a reason a packet was not forwarded.
#[inline(always)]
pub const fn verdict(c: Counter) -> u32 {
    if c.passes() {
        xdp_action::XDP_PASS
    } else {
        xdp_action::XDP_DROP
    }
}

#[inline(always)]
fn add(t: Option<*mut Traffic>, bytes: u64, new_flow: bool) {
    if let Some(t) = t {
        unsafe {
            (*t).packets += 1;
            (*t).bytes += bytes;
            if new_flow {
                (*t).new_flows += 1;
            }
        }
    }
}

/// Counts a forwarded packet for its service and backend.
#[inline(always)]
pub fn forwarded(service: u32, backend: u32, bytes: u64, new_flow: bool) {
    add(SERVICE_TRAFFIC.get_ptr_mut(service), bytes, new_flow);
    add(BACKEND_TRAFFIC.get_ptr_mut(backend), bytes, new_flow);
}
