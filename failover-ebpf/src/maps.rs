//! The load balancer's maps. Names, keys and values come from `failover_common`; the sizes
//! here are placeholders that the loader replaces from the config.

use aya_ebpf::{
    macros::map,
    maps::{Array, DevMapHash, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use failover_common::{
    Backend, Counter, FlowKey, FlowKey4, FlowValue, Globals, NatOrigin, ServiceKey, ServiceKey4,
    ServiceValue, Traffic,
    maps::{EGRESS_INTERFACES, PLACEHOLDER_ENTRIES},
};

/// `BPF_F_MMAPABLE`: userspace writes Maglev tables through a memory mapping.
const BPF_F_MMAPABLE: u32 = 1 << 10;

/// IPv4 virtual services by (VIP, port, protocol).
#[map]
pub static SERVICES4: HashMap<ServiceKey4, ServiceValue> =
    HashMap::with_max_entries(PLACEHOLDER_ENTRIES, 0);

/// IPv6 virtual services by (VIP, port, protocol).
#[map]
pub static SERVICES6: HashMap<ServiceKey, ServiceValue> =
    HashMap::with_max_entries(PLACEHOLDER_ENTRIES, 0);

/// Maglev tables of backend ids, two halves per service (double-buffered).
#[map]
pub static RINGS: Array<u32> = Array::with_max_entries(PLACEHOLDER_ENTRIES, BPF_F_MMAPABLE);

/// Backends by id.
#[map]
pub static BACKENDS: Array<Backend> = Array::with_max_entries(PLACEHOLDER_ENTRIES, 0);

/// Egress interfaces by ifindex, for backends reached through another interface.
#[map]
pub static EGRESS: DevMapHash = DevMapHash::with_max_entries(EGRESS_INTERFACES, 0);

/// IPv4 connection table: which backend each known flow goes to.
#[map]
pub static FLOWS4: LruHashMap<FlowKey4, FlowValue> =
    LruHashMap::with_max_entries(PLACEHOLDER_ENTRIES, 0);

/// IPv6 connection table.
#[map]
pub static FLOWS6: LruHashMap<FlowKey, FlowValue> =
    LruHashMap::with_max_entries(PLACEHOLDER_ENTRIES, 0);

/// One counter per reason a packet was not forwarded (and a few notable events).
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::COUNT, 0);

/// Traffic per service id.
#[map]
pub static SERVICE_TRAFFIC: PerCpuArray<Traffic> =
    PerCpuArray::with_max_entries(PLACEHOLDER_ENTRIES, 0);

/// Traffic per backend id.
#[map]
pub static BACKEND_TRAFFIC: PerCpuArray<Traffic> =
    PerCpuArray::with_max_entries(PLACEHOLDER_ENTRIES, 0);

/// Program-wide settings (one element).
#[map]
pub static GLOBALS: Array<Globals> = Array::with_max_entries(1, 0);

/// `nat` services: how to translate a backend's reply back to the VIP.
#[map]
pub static NAT_REPLIES: LruHashMap<FlowKey, NatOrigin> =
    LruHashMap::with_max_entries(PLACEHOLDER_ENTRIES, 0);

/// Backends that reset a new flow's SYN (`nat`), for the daemon to check at once.
#[map]
pub static RESETS: RingBuf = RingBuf::with_byte_size(64 * 1024, 0);
