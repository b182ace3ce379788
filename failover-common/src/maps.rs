//! Names of the maps and programs in the XDP object, and default sizes.
//!
//! Userspace sizes every map from the config at load time (`EbpfLoader::set_max_entries`);
//! the numbers in the object itself are only placeholders.

/// The XDP load-balancing program.
pub const PROG_BALANCER: &str = "failover_xdp";
/// The decapsulation program for backends of `tunnel` services.
pub const PROG_DECAP: &str = "failover_decap";

/// The pass-everything program (in the decap object).
pub const PROG_PASS: &str = "failover_pass";

/// `HashMap<ServiceKey4, ServiceValue>`: the IPv4 virtual services.
pub const SERVICES4: &str = "SERVICES4";
/// `HashMap<ServiceKey, ServiceValue>`: the IPv6 virtual services.
pub const SERVICES6: &str = "SERVICES6";
/// `Array<u32>`: concatenated Maglev lookup tables (two halves per service) of backend ids.
pub const RINGS: &str = "RINGS";
/// `Array<Backend>`: every backend of every service, indexed by backend id.
pub const BACKENDS: &str = "BACKENDS";
/// `LruHashMap<FlowKey4, FlowValue>`: the IPv4 connection table.
pub const FLOWS4: &str = "FLOWS4";
/// `LruHashMap<FlowKey, FlowValue>`: the IPv6 connection table.
pub const FLOWS6: &str = "FLOWS6";
/// `LruHashMap<FlowKey, NatOrigin>`: `nat` replies, keyed by the reply's flow.
pub const NAT_REPLIES: &str = "NAT_REPLIES";
/// `RingBuf` of [`crate::ResetReport`]: backends that reset a new flow's SYN (`nat`).
pub const RESETS: &str = "RESETS";
/// `PerCpuArray<u64>` indexed by [`crate::Counter`].
pub const COUNTERS: &str = "COUNTERS";
/// `PerCpuArray<Traffic>` indexed by service id.
pub const SERVICE_TRAFFIC: &str = "SERVICE_TRAFFIC";
/// `PerCpuArray<Traffic>` indexed by backend id.
pub const BACKEND_TRAFFIC: &str = "BACKEND_TRAFFIC";
/// `DevMapHash` keyed by ifindex: the interfaces backends are reached through when that is
/// not the one the program is attached to (XDP_REDIRECT; `Backend::ifindex` is the key).
pub const EGRESS: &str = "EGRESS";
/// `Array<Globals>` with one element: settings that apply to the whole program.
pub const GLOBALS: &str = "GLOBALS";

/// Default connection-table size (flows).
pub const DEFAULT_FLOW_CAPACITY: u32 = 1 << 20;
/// Default Maglev table size (a prime).
pub const DEFAULT_RING_SIZE: u32 = 65_537;
/// Most egress interfaces `EGRESS` holds (a fixed size: 64 entries cost under 4 KiB).
pub const EGRESS_INTERFACES: u32 = 64;
/// Placeholder sizes compiled into the object; the loader overrides them.
pub const PLACEHOLDER_ENTRIES: u32 = 1024;
/// `PerCpuArray<u64>` indexed by [`crate::stats::DecapCounter`] (decapsulation program).
pub const DECAP_COUNTERS: &str = "DECAP_COUNTERS";
/// `HashMap<u32, [u8; 8]>` of the bench baseline program: IPv4 destination to next-hop MAC.
pub const BASELINE_TARGETS: &str = "BASELINE_TARGETS";
/// `PerCpuArray<u64>` (one slot) of the bench baseline program: packets it transmitted.
pub const BASELINE_SENT: &str = "BASELINE_SENT";
/// The bench baseline program.
pub const PROG_BASELINE: &str = "failover_baseline";
