//! Which service a packet belongs to, and which backend its flow goes to.

use failover_common::{
    Backend, Counter, FAMILY_IPV4, FlowKey, FlowValue, ServiceKey, ServiceValue,
    service::SVC_F_NO_BACKEND_PASS,
};

use crate::maps::{BACKENDS, FLOWS4, FLOWS6, RINGS, SERVICES4, SERVICES6};

/// Finds the service for (VIP, port, protocol): the exact port first, then "every port".
/// Fragments use their own key (`fragments = 1`): they carry no port to match.
#[inline(always)]
pub fn service(
    family: u8,
    proto: u8,
    dst_be: [u32; 4],
    port_be: u16,
    fragment: bool,
) -> Option<ServiceValue> {
    let mut key = ServiceKey {
        addr_be: dst_be,
        port_be,
        proto,
        family,
        fragments: fragment as u32,
    };
    if let Some(v) = lookup_service(&key) {
        return Some(v);
    }
    if fragment {
        return None;
    }
    key.port_be = 0;
    lookup_service(&key)
}

#[inline(always)]
fn lookup_service(key: &ServiceKey) -> Option<ServiceValue> {
    if key.family == FAMILY_IPV4 {
        unsafe { SERVICES4.get(key.v4()) }.copied()
    } else {
        unsafe { SERVICES6.get(key) }.copied()
    }
}

/// A backend picked for a packet.
pub struct Pick {
    /// Backend id.
    pub id: u32,
    /// The backend's forwarding data.
    pub backend: Backend,
    /// Not found in the connection table (or re-picked).
    pub new_flow: bool,
}

/// The Maglev pick: one table lookup by the flow's hash.
#[inline(always)]
fn from_ring(svc: &ServiceValue, hash: u32) -> Result<(u32, Backend), Counter> {
    if svc.ring_size == 0 {
        return Err(if svc.flags & SVC_F_NO_BACKEND_PASS != 0 {
            Counter::PassNoBackend
        } else {
            Counter::DropNoBackend
        });
    }
    let slot = svc.ring_offset + hash % svc.ring_size;
    let id = *RINGS.get(slot).ok_or(Counter::DropInternal)?;
    let backend = *BACKENDS.get(id).ok_or(Counter::DropInternal)?;
    Ok((id, backend))
}

/// Picks the backend for a flow: the connection table first (if its backend is still
/// usable and this is not a new TCP connection), otherwise the Maglev table, remembering
/// the choice. Stateless flows (fragments) only use the table.
#[inline(always)]
pub fn backend(
    svc: &ServiceValue,
    key: &FlowKey,
    stateful: bool,
    syn: bool,
    known: Option<FlowValue>,
) -> Result<Pick, Counter> {
    if !stateful {
        let (id, backend) = from_ring(svc, key.hash())?;
        return Ok(Pick {
            id,
            backend,
            new_flow: false,
        });
    }
    if let Some(v) = known {
        let id = v.backend;
        if !syn {
            if let Some(b) = BACKENDS.get(id) {
                if b.usable_for(svc.id) {
                    return Ok(Pick {
                        id,
                        backend: *b,
                        new_flow: false,
                    });
                }
            }
            crate::stats::count(Counter::FlowRepicked);
        }
    }
    let (id, backend) = from_ring(svc, key.hash())?;
    let value = FlowValue {
        backend: id,
        service: svc.id,
    };
    // A full table evicts the least recently used flow; failure here only loses stickiness.
    let _ = if key.family == FAMILY_IPV4 {
        FLOWS4.insert(key.v4(), value, 0)
    } else {
        FLOWS6.insert(key, value, 0)
    };
    Ok(Pick {
        id,
        backend,
        new_flow: true,
    })
}

/// The connection table's entry for a flow.
#[inline(always)]
pub fn known(key: &FlowKey) -> Option<FlowValue> {
    if key.family == FAMILY_IPV4 {
        unsafe { FLOWS4.get(key.v4()) }.copied()
    } else {
        unsafe { FLOWS6.get(key) }.copied()
    }
}

/// An established flow whose backend is still usable: everything needed to forward it,
/// from the connection table and the backend entry alone.
#[inline(always)]
pub fn established(known: Option<FlowValue>) -> Option<(ServiceValue, Pick)> {
    let v = known?;
    let b = BACKENDS.get(v.backend)?;
    if !b.usable_for(v.service) {
        return None;
    }
    // Only `id` and `mode` matter for a known flow (the rest is for picking new ones).
    let svc = ServiceValue {
        id: v.service,
        mode: b.mode,
        ..ServiceValue::default()
    };
    Some((
        svc,
        Pick {
            id: v.backend,
            backend: *b,
            new_flow: false,
        },
    ))
}

/// Forgets a flow (its next packet is picked afresh).
#[inline(always)]
pub fn forget(key: &FlowKey) {
    let _ = if key.family == FAMILY_IPV4 {
        FLOWS4.remove(key.v4())
    } else {
        FLOWS6.remove(key)
    };
}
