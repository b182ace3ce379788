//! The only writer of the load balancer's maps, and the reader of its counters.
//!
//! Maglev tables are double-buffered: each service owns two halves of `ring_size` slots in
//! `RINGS`. A new table is written into the inactive half (through a memory mapping, so a
//! 65537-slot table costs no syscalls), then one update of the service's `SERVICES` value
//! flips `ring_offset` to it. The packet path never sees a half-written table.

use std::{
    collections::HashMap as StdHashMap,
    net::IpAddr,
    os::fd::{AsFd as _, AsRawFd as _},
    ptr::NonNull,
    sync::atomic::{Ordering, fence},
};

use aya::{
    Ebpf,
    maps::{Array, HashMap, MapData, MapError, PerCpuArray, PerCpuValues},
};
use failover_common::{
    Backend, Counter, FAMILY_IPV4, FAMILY_IPV6, FlowKey, FlowKey4, FlowValue, ForwardMode, Globals,
    ServiceKey, ServiceKey4, ServiceValue, Traffic, maps,
};

/// Why a map operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    /// A map is missing from the object or has another type.
    #[error("map {name} is missing from the XDP object or has the wrong type (stale build?)")]
    Map {
        /// Map name.
        name: &'static str,
        /// What aya said.
        #[source]
        source: Option<MapError>,
    },
    /// The kernel refused a map operation.
    #[error("{op} on map {name} failed")]
    Op {
        /// "update", "lookup", ...
        op: &'static str,
        /// Map name.
        name: &'static str,
        /// What aya said.
        #[source]
        source: MapError,
    },
    /// Mapping `RINGS` into memory failed.
    #[error("mmap of the RINGS map failed (kernel without BPF_F_MMAPABLE arrays?)")]
    Mmap(#[source] std::io::Error),
    /// A service's slots lie outside `RINGS`.
    #[error("service {id}: slots {base}..{end} exceed the RINGS map ({len} slots)")]
    RingRange {
        /// Service id.
        id: u32,
        /// First slot.
        base: u32,
        /// One past the last slot.
        end: u64,
        /// Map size.
        len: u32,
    },
    /// An egress interface could not be added to `EGRESS`.
    #[error(
        "adding interface {ifindex} to the EGRESS devmap failed (more than {max} egress interfaces? check `ip route get BACKEND` for each backend)",
        max = maps::EGRESS_INTERFACES
    )]
    Egress {
        /// The interface index.
        ifindex: u32,
        /// What aya said.
        #[source]
        source: aya::maps::xdp::XdpMapError,
    },
}

/// A service as the dataplane stores it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceEntry {
    /// Service id (index into `SERVICE_TRAFFIC`, owner id of its backends).
    pub id: u32,
    /// Its keys: (VIP, port, protocol), and the fragments key when it takes fragments.
    pub keys: Vec<ServiceKey>,
    /// Forwarding mode.
    pub mode: ForwardMode,
    /// `SVC_F_*` bits.
    pub flags: u32,
    /// First slots of its two tables of `ring_size` slots in `RINGS`: one is live, the
    /// next table is written into the other.
    pub halves: [u32; 2],
    /// Maglev table size (prime).
    pub ring_size: u32,
}

/// The shared memory of the `RINGS` array. The kernel stores array elements 8 bytes
/// apart (`elem_size` is the value size rounded up to 8), so slot `i` is the low half of
/// the `u64` at index `i` (little-endian hosts; BPF on big-endian hosts is not supported).
struct RingMemory {
    ptr: NonNull<u64>,
    len: usize,
    bytes: usize,
}

// SAFETY: the mapping is owned by this value; access goes through `&mut self`.
unsafe impl Send for RingMemory {}

impl RingMemory {
    fn map(data: &MapData, len: u32) -> Result<Self, DataplaneError> {
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        let bytes = (len as usize * 8).div_ceil(page) * page;
        // SAFETY: mapping a BPF array fd created with BPF_F_MMAPABLE; size rounded to pages.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                data.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(DataplaneError::Mmap(std::io::Error::last_os_error()));
        }
        let ptr = NonNull::new(ptr.cast::<u64>())
            .ok_or_else(|| DataplaneError::Mmap(std::io::Error::other("mmap returned NULL")))?;
        Ok(Self {
            ptr,
            len: len as usize,
            bytes,
        })
    }

    fn slots(&mut self) -> &mut [u64] {
        // SAFETY: `len` elements are mapped, and `&mut self` makes this the only view.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for RingMemory {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `map` mapped.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.bytes) };
    }
}

/// Owns the load balancer's loaded object and typed handles to all of its maps.
pub struct Dataplane {
    ebpf: Ebpf,
    services4: HashMap<MapData, ServiceKey4, ServiceValue>,
    services6: HashMap<MapData, ServiceKey, ServiceValue>,
    backends: Array<MapData, Backend>,
    flows4: HashMap<MapData, FlowKey4, FlowValue>,
    flows6: HashMap<MapData, FlowKey, FlowValue>,
    globals: Array<MapData, Globals>,
    counters: PerCpuArray<MapData, u64>,
    service_traffic: PerCpuArray<MapData, Traffic>,
    backend_traffic: PerCpuArray<MapData, Traffic>,
    rings: RingMemory,
    /// `RINGS` itself: the mapping above stays valid while it is open.
    _rings_map: aya::maps::Map,
    /// Active half's first slot, per service id.
    active: StdHashMap<u32, u32>,
    /// Where a table is built before it is copied into `RINGS` (kept to avoid allocating).
    scratch: Vec<u32>,
    /// What each backend id last had written.
    written: StdHashMap<u32, Backend>,
    /// Egress ifindex of each backend address reached through another interface.
    egress: StdHashMap<IpAddr, u32>,
}

fn take<T: TryFrom<aya::maps::Map, Error = MapError>>(
    ebpf: &mut Ebpf,
    name: &'static str,
) -> Result<T, DataplaneError> {
    let map = ebpf
        .take_map(name)
        .ok_or(DataplaneError::Map { name, source: None })?;
    T::try_from(map).map_err(|e| DataplaneError::Map {
        name,
        source: Some(e),
    })
}

impl Dataplane {
    /// Takes the maps out of a loaded balancer object (see [`crate::loader::load_balancer`]).
    pub fn new(mut ebpf: Ebpf) -> Result<Self, DataplaneError> {
        let rings_map = ebpf.take_map(maps::RINGS).ok_or(DataplaneError::Map {
            name: maps::RINGS,
            source: None,
        })?;
        let aya::maps::Map::Array(rings_data) = &rings_map else {
            return Err(DataplaneError::Map {
                name: maps::RINGS,
                source: None,
            });
        };
        let len = rings_data
            .info()
            .map_err(|e| DataplaneError::Map {
                name: maps::RINGS,
                source: Some(e),
            })?
            .max_entries();
        let rings = RingMemory::map(rings_data, len)?;
        Ok(Self {
            _rings_map: rings_map,
            services4: take(&mut ebpf, maps::SERVICES4)?,
            services6: take(&mut ebpf, maps::SERVICES6)?,
            backends: take(&mut ebpf, maps::BACKENDS)?,
            flows4: take(&mut ebpf, maps::FLOWS4)?,
            flows6: take(&mut ebpf, maps::FLOWS6)?,
            globals: take(&mut ebpf, maps::GLOBALS)?,
            counters: take(&mut ebpf, maps::COUNTERS)?,
            service_traffic: take(&mut ebpf, maps::SERVICE_TRAFFIC)?,
            backend_traffic: take(&mut ebpf, maps::BACKEND_TRAFFIC)?,
            rings,
            active: StdHashMap::new(),
            scratch: Vec::new(),
            written: StdHashMap::new(),
            egress: StdHashMap::new(),
            ebpf,
        })
    }

    /// Learns which half of each service's table is live from adopted (pinned) maps, so
    /// the next table goes to the other half and never overwrites the one in use.
    pub fn adopt(&mut self, services: &[ServiceEntry]) {
        for svc in services {
            let Some(key) = svc.keys.first() else {
                continue;
            };
            let value = if key.family == FAMILY_IPV4 {
                self.services4.get(&key.v4(), 0)
            } else {
                self.services6.get(key, 0)
            };
            if let Ok(v) = value {
                if svc.halves.contains(&v.ring_offset) {
                    self.active.insert(svc.id, v.ring_offset);
                }
            }
        }
    }

    /// Takes the `RESETS` ring buffer (backends resetting new flows), for one reader.
    pub fn take_resets(&mut self) -> Result<aya::maps::RingBuf<MapData>, DataplaneError> {
        take(&mut self.ebpf, maps::RESETS)
    }

    /// The loaded object (its programs: attach, test runs).
    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    /// Sets the program-wide settings.
    pub fn set_globals(&mut self, g: &Globals) -> Result<(), DataplaneError> {
        self.globals
            .set(0, g, 0)
            .map_err(|source| DataplaneError::Op {
                op: "update",
                name: maps::GLOBALS,
                source,
            })
    }

    /// Writes backend `id`, unless it already holds exactly `b` (a failover then costs one
    /// map update for the backend that changed, not one per backend of the service).
    pub fn set_backend(&mut self, id: u32, b: &Backend) -> Result<(), DataplaneError> {
        if self.written.get(&id) == Some(b) {
            return Ok(());
        }
        self.backends
            .set(id, b, 0)
            .map_err(|source| DataplaneError::Op {
                op: "update",
                name: maps::BACKENDS,
                source,
            })?;
        self.written.insert(id, *b);
        Ok(())
    }

    /// Reads backend `id`.
    pub fn backend(&self, id: u32) -> Result<Backend, DataplaneError> {
        self.backends
            .get(&id, 0)
            .map_err(|source| DataplaneError::Op {
                op: "lookup",
                name: maps::BACKENDS,
                source,
            })
    }

    /// Writes a new table for `svc` into its inactive half with `fill` (which returns
    /// whether any backend is in it), then flips the service to it in one update per key.
    pub fn publish<E>(
        &mut self,
        svc: &ServiceEntry,
        fill: impl FnOnce(&mut [u32]) -> Result<bool, E>,
    ) -> Result<Result<(), E>, DataplaneError> {
        let size = svc.ring_size as usize;
        let inactive = match self.active.get(&svc.id) {
            Some(&a) if a == svc.halves[0] => svc.halves[1],
            _ => svc.halves[0],
        };
        let end = u64::from(inactive) + u64::from(svc.ring_size);
        if end > self.rings.len as u64 {
            return Err(DataplaneError::RingRange {
                id: svc.id,
                base: inactive,
                end,
                len: self.rings.len as u32,
            });
        }
        let start = inactive as usize;
        self.scratch.clear();
        self.scratch.resize(size, 0);
        let used = match fill(&mut self.scratch) {
            Ok(used) => used,
            Err(e) => return Ok(Err(e)),
        };
        for (slot, &id) in self.rings.slots()[start..start + size]
            .iter_mut()
            .zip(&self.scratch)
        {
            *slot = u64::from(id);
        }
        // The table's stores must be visible before the flip that publishes it.
        fence(Ordering::SeqCst);
        let value = ServiceValue {
            id: svc.id,
            mode: svc.mode as u32,
            flags: svc.flags,
            ring_offset: inactive,
            ring_size: if used { svc.ring_size } else { 0 },
        };
        for key in &svc.keys {
            let (name, done) = if key.family == FAMILY_IPV4 {
                (maps::SERVICES4, self.services4.insert(key.v4(), value, 0))
            } else {
                (maps::SERVICES6, self.services6.insert(key, value, 0))
            };
            done.map_err(|source| DataplaneError::Op {
                op: "update",
                name,
                source,
            })?;
        }
        self.active.insert(svc.id, inactive);
        Ok(Ok(()))
    }

    /// The active table of a service (a copy), for `explain` and tests.
    pub fn active_table(&mut self, svc: &ServiceEntry) -> Option<Vec<u32>> {
        let start = *self.active.get(&svc.id)? as usize;
        let slots = self
            .rings
            .slots()
            .get(start..start + svc.ring_size as usize)?;
        Some(slots.iter().map(|&s| s as u32).collect())
    }

    /// What the service and backend maps hold (to recover a layout from adopted maps).
    pub fn snapshot(&self) -> Result<crate::layout::Snapshot, DataplaneError> {
        let op = |name| {
            move |source| DataplaneError::Op {
                op: "lookup",
                name,
                source,
            }
        };
        let mut services = Vec::new();
        for entry in self.services4.iter() {
            let (k, v) = entry.map_err(op(maps::SERVICES4))?;
            let key = ServiceKey {
                addr_be: [k.addr_be, 0, 0, 0],
                port_be: k.port_be,
                proto: k.proto,
                family: FAMILY_IPV4,
                fragments: u32::from(k.fragments),
            };
            services.push((key, v));
        }
        for entry in self.services6.iter() {
            services.push(entry.map_err(op(maps::SERVICES6))?);
        }
        let mut backends = Vec::new();
        for id in 0..self.backends.len() {
            let b = self.backends.get(&id, 0).map_err(op(maps::BACKENDS))?;
            if b != Backend::default() {
                backends.push((id, b));
            }
        }
        Ok(crate::layout::Snapshot { services, backends })
    }

    /// Clears backend `id`: flows still pointing at it are re-picked (or, for a removed
    /// service, no longer forwarded).
    pub fn clear_backend(&mut self, id: u32) -> Result<(), DataplaneError> {
        self.set_backend(id, &Backend::default())
    }

    /// Zeroes the traffic counters of service and backend ids taken by new services and
    /// backends (an id may have been used before).
    pub fn clear_traffic(
        &mut self,
        services: &[u32],
        backends: &[u32],
    ) -> Result<(), DataplaneError> {
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| DataplaneError::Op {
            op: "count CPUs for",
            name: maps::SERVICE_TRAFFIC,
            source: MapError::SyscallError(aya::sys::SyscallError {
                call: "nr_cpus",
                io_error: e,
            }),
        })?;
        let zero = || PerCpuValues::try_from(vec![Traffic::default(); cpus]);
        for (map, ids, name) in [
            (&mut self.service_traffic, services, maps::SERVICE_TRAFFIC),
            (&mut self.backend_traffic, backends, maps::BACKEND_TRAFFIC),
        ] {
            for &id in ids {
                let values = zero().map_err(|e| DataplaneError::Op {
                    op: "update",
                    name,
                    source: MapError::IoError(e),
                })?;
                map.set(id, values, 0)
                    .map_err(|source| DataplaneError::Op {
                        op: "update",
                        name,
                        source,
                    })?;
            }
        }
        Ok(())
    }

    /// Removes a service's keys (its flows age out of the LRU table).
    pub fn remove_service(&mut self, svc: &ServiceEntry) -> Result<(), DataplaneError> {
        self.remove_keys(&svc.keys)?;
        self.active.remove(&svc.id);
        Ok(())
    }

    /// Forgets which half of service `id`'s table is live (the id is no longer in use).
    pub fn forget_table(&mut self, id: u32) {
        self.active.remove(&id);
    }

    /// Deletes service keys (absent ones are fine).
    pub fn remove_keys(&mut self, keys: &[ServiceKey]) -> Result<(), DataplaneError> {
        for key in keys {
            let (name, done) = if key.family == FAMILY_IPV4 {
                (maps::SERVICES4, self.services4.remove(&key.v4()))
            } else {
                (maps::SERVICES6, self.services6.remove(key))
            };
            match done {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(source) => {
                    return Err(DataplaneError::Op {
                        op: "delete",
                        name,
                        source,
                    });
                }
            }
        }
        Ok(())
    }

    /// A flow's connection-table entry.
    pub fn flow(&self, key: &FlowKey) -> Option<FlowValue> {
        if key.family == FAMILY_IPV4 {
            self.flows4.get(&key.v4(), 0).ok()
        } else {
            self.flows6.get(key, 0).ok()
        }
    }

    /// Every reason counter, summed over CPUs.
    pub fn counters(&self) -> Result<Vec<(Counter, u64)>, DataplaneError> {
        Counter::ALL
            .iter()
            .map(|&c| {
                let v = self
                    .counters
                    .get(&(c as u32), 0)
                    .map_err(|source| DataplaneError::Op {
                        op: "lookup",
                        name: maps::COUNTERS,
                        source,
                    })?;
                Ok((c, v.iter().sum()))
            })
            .collect()
    }

    /// One counter, summed over CPUs.
    pub fn counter(&self, c: Counter) -> Result<u64, DataplaneError> {
        Ok(self
            .counters()?
            .into_iter()
            .find(|(k, _)| *k == c)
            .map_or(0, |(_, v)| v))
    }

    /// A service's traffic, summed over CPUs.
    pub fn service_traffic(&self, id: u32) -> Result<Traffic, DataplaneError> {
        sum_traffic(&self.service_traffic, id, maps::SERVICE_TRAFFIC)
    }

    /// A backend's traffic, summed over CPUs.
    pub fn backend_traffic(&self, id: u32) -> Result<Traffic, DataplaneError> {
        sum_traffic(&self.backend_traffic, id, maps::BACKEND_TRAFFIC)
    }
}

/// Backends reached through another interface than the attached one: XDP_REDIRECT through
/// the `EGRESS` devmap, keyed by the ifindex stored in `Backend::ifindex`.
impl Dataplane {
    /// Sets the egress interface (ifindex) of every backend address that is not reached
    /// through the attached interface, adding those interfaces to `EGRESS` first. Returns
    /// whether anything changed: the backends must then be rewritten, since
    /// [`Dataplane::egress`] gives their `ifindex`.
    pub fn set_egress(&mut self, egress: &StdHashMap<IpAddr, u32>) -> Result<bool, DataplaneError> {
        if *egress == self.egress {
            return Ok(false);
        }
        let map = self.ebpf.map_mut(maps::EGRESS).ok_or(DataplaneError::Map {
            name: maps::EGRESS,
            source: None,
        })?;
        let mut devmap = aya::maps::DevMapHash::try_from(map).map_err(|e| DataplaneError::Map {
            name: maps::EGRESS,
            source: Some(e),
        })?;
        let mut interfaces: Vec<u32> = egress.values().copied().collect();
        interfaces.sort_unstable();
        interfaces.dedup();
        // Entries are never removed: one still in use must not vanish before the backends
        // are rewritten, and the kernel drops an interface's entry when it goes away.
        for ifindex in interfaces {
            devmap
                .insert(ifindex, ifindex, None, 0)
                .map_err(|source| DataplaneError::Egress { ifindex, source })?;
        }
        self.egress.clone_from(egress);
        Ok(true)
    }

    /// The `Backend::ifindex` of backend address `addr`: its egress interface, or 0 when it
    /// is reached through the attached interface (XDP_TX).
    pub fn egress(&self, addr: IpAddr) -> u32 {
        self.egress.get(&addr).copied().unwrap_or(0)
    }
}

fn sum_traffic(
    map: &PerCpuArray<MapData, Traffic>,
    id: u32,
    name: &'static str,
) -> Result<Traffic, DataplaneError> {
    let per_cpu = map.get(&id, 0).map_err(|source| DataplaneError::Op {
        op: "lookup",
        name,
        source,
    })?;
    Ok(per_cpu.iter().fold(Traffic::default(), |a, t| Traffic {
        packets: a.packets + t.packets,
        bytes: a.bytes + t.bytes,
        new_flows: a.new_flows + t.new_flows,
    }))
}

/// An address as the packet path stores it: network-order words, IPv4 in the first.
pub fn addr_words(addr: IpAddr) -> ([u32; 4], u8) {
    match addr {
        IpAddr::V4(a) => ([u32::from_ne_bytes(a.octets()), 0, 0, 0], FAMILY_IPV4),
        IpAddr::V6(a) => {
            let o = a.octets();
            let w = |i: usize| u32::from_ne_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
            ([w(0), w(4), w(8), w(12)], FAMILY_IPV6)
        }
    }
}

/// The key of a service: `port` 0 means every port.
pub fn service_key(vip: IpAddr, port: u16, proto: u8) -> ServiceKey {
    let (addr_be, family) = addr_words(vip);
    ServiceKey {
        addr_be,
        port_be: port.to_be(),
        proto,
        family,
        fragments: 0,
    }
}

/// The key IP fragments to `vip` with protocol `proto` are matched by.
pub fn fragments_key(vip: IpAddr, proto: u8) -> ServiceKey {
    ServiceKey {
        fragments: 1,
        ..service_key(vip, 0, proto)
    }
}
