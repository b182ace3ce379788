//! Restarts without loss: the program's link and maps are pinned under one bpffs directory
//! (`pin_dir`, default `/sys/fs/bpf/failover`). When the daemon stops or crashes,
//! forwarding goes on with the last tables; a new daemon adopts the pinned maps and swaps
//! its program into the pinned link atomically (`bpf_link_update`).
//!
//! Layout of `pin_dir`: one file per map, named as the map (`FLOWS4`, `RINGS`, ...), and
//! `link-IFNAME` per interface (its XDP link). Maps are adopted when they are big enough for the config (see
//! [`Pins::adoption`]); otherwise the daemon starts from fresh maps (and says so).

use std::{
    ffi::CString,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf,
    maps::MapData,
    programs::{
        links::{FdLink, PinnedLink},
        xdp::XdpLink,
    },
};
use failover_common::maps::{
    BACKEND_TRAFFIC, BACKENDS, COUNTERS, FLOWS4, FLOWS6, GLOBALS, NAT_REPLIES, PROG_BALANCER,
    RINGS, SERVICE_TRAFFIC, SERVICES4, SERVICES6,
};

use crate::loader::{self, AttachMode, LoadError, MapSizes};

/// The maps that survive a restart (not the log ring or the reset reports).
pub const PINNED_MAPS: [&str; 11] = [
    SERVICES4,
    SERVICES6,
    RINGS,
    BACKENDS,
    FLOWS4,
    FLOWS6,
    NAT_REPLIES,
    COUNTERS,
    SERVICE_TRAFFIC,
    BACKEND_TRAFFIC,
    GLOBALS,
];

/// Why the pin directory could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    /// bpffs is not mounted and mounting it failed.
    #[error(
        "mounting bpffs at {path} failed (run as root, or mount it: `mount -t bpf bpf {path}`)"
    )]
    Mount {
        /// The mount point.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The directory is not on a bpffs, so nothing can be pinned there.
    #[error(
        "pin_dir {path} is not on a bpffs: use a directory under /sys/fs/bpf, or mount one (`mount -t bpf bpf DIR`)"
    )]
    NotBpffs {
        /// The directory.
        path: PathBuf,
    },
    /// A file operation in the pin directory failed.
    #[error("{what} {path} failed")]
    Io {
        /// "creating", "removing", ...
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The pinned link could not be opened, pinned or updated.
    #[error("the pinned XDP link at {path}: {what}")]
    Link {
        /// The path.
        path: PathBuf,
        /// What failed.
        what: String,
    },
}

/// What [`Pins::adoption`] decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Adoption {
    /// The sizes to load with (pinned maps keep theirs).
    pub sizes: MapSizes,
    /// Whether the service tables are adopted (else every map is fresh).
    pub tables: bool,
}

/// The pinned state's directory.
pub struct Pins {
    dir: PathBuf,
}

fn is_bpffs(path: &Path) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid C string and a zeroed statfs for the kernel to fill.
    unsafe { libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type == libc::BPF_FS_MAGIC }
}

/// Removes a pin; one that is not there is fine.
fn unpin(path: PathBuf) -> Result<(), PinError> {
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(PinError::Io {
            what: "removing",
            path,
            source: e,
        }),
        _ => Ok(()),
    }
}

impl Pins {
    /// Makes `dir` usable: mounts bpffs on its bpffs parent (`/sys/fs/bpf`) if needed and
    /// creates the directory.
    pub fn prepare(dir: &Path) -> Result<Self, PinError> {
        let root = Path::new("/sys/fs/bpf");
        if dir.starts_with(root) && !is_bpffs(root) {
            let c = |s: &str| CString::new(s).expect("no NUL");
            // SAFETY: valid C strings; mounting a new bpffs instance.
            let rc = unsafe {
                libc::mount(
                    c("bpf").as_ptr(),
                    c("/sys/fs/bpf").as_ptr(),
                    c("bpf").as_ptr(),
                    0,
                    std::ptr::null(),
                )
            };
            if rc != 0 {
                return Err(PinError::Mount {
                    path: root.into(),
                    source: std::io::Error::last_os_error(),
                });
            }
        }
        std::fs::create_dir_all(dir).map_err(|source| PinError::Io {
            what: "creating",
            path: dir.into(),
            source,
        })?;
        if !is_bpffs(dir) {
            return Err(PinError::NotBpffs { path: dir.into() });
        }
        Ok(Self { dir: dir.into() })
    }

    /// Where a map is pinned.
    pub fn map_path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Where the XDP link of `interface` is pinned.
    fn link_path(&self, interface: &str) -> PathBuf {
        self.dir.join(format!("link-{interface}"))
    }

    /// The pinned links' files.
    fn links(&self) -> Vec<PathBuf> {
        std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with("link-"))
            .map(|e| e.path())
            .collect()
    }

    /// Unpins the links of interfaces no longer in `interfaces` (the program leaves them).
    pub fn drop_other_links(&self, interfaces: &[String]) -> Result<(), PinError> {
        let keep: Vec<PathBuf> = interfaces.iter().map(|i| self.link_path(i)).collect();
        for path in self.links() {
            if !keep.contains(&path) {
                tracing::info!(link = %path.display(), "detaching from an interface the config no longer has");
                unpin(path)?;
            }
        }
        Ok(())
    }

    /// Entries of the map pinned as `name`, if one is.
    fn pinned_entries(&self, name: &str) -> Option<u32> {
        let path = self.map_path(name);
        if !path.exists() {
            return None;
        }
        MapData::from_pin(&path)
            .and_then(|m| m.info())
            .ok()
            .map(|i| i.max_entries())
    }

    /// Decides what to adopt for a config that needs `needs` (fresh maps get `fresh`):
    /// the service tables (services, rings, backends, counters) together when every one
    /// is pinned and big enough, keeping their pinned sizes; then each connection table
    /// that is pinned and big enough. A pinned map that does not fit is removed, so the
    /// loader creates it afresh (with the service tables go the connection tables: their
    /// backend ids would mean nothing in fresh tables).
    pub fn adoption(&self, needs: &MapSizes, fresh: &MapSizes) -> Result<Adoption, PinError> {
        let get = |name| self.pinned_entries(name);
        let keys = get(SERVICES4).filter(|&n| Some(n) == get(SERVICES6));
        let backends = get(BACKENDS).filter(|&n| Some(n) == get(BACKEND_TRAFFIC));
        let tables = match (keys, get(RINGS), backends, get(SERVICE_TRAFFIC)) {
            (Some(k), Some(r), Some(b), Some(s))
                if k >= needs.service_keys
                    && r >= needs.ring_slots
                    && b >= needs.backends
                    && s >= needs.services
                    && get(COUNTERS) == Some(failover_common::Counter::COUNT)
                    && get(GLOBALS) == Some(1) =>
            {
                Some(MapSizes {
                    service_keys: k,
                    ring_slots: r,
                    backends: b,
                    services: s,
                    ..*fresh
                })
            }
            _ => None,
        };
        let Some(mut sizes) = tables else {
            if PINNED_MAPS.iter().any(|m| self.map_path(m).exists()) {
                tracing::warn!(pin_dir = %self.dir.display(), "the pinned maps do not fit this config (or another version made them): starting with fresh tables; established flows will be re-picked");
                self.clear_maps()?;
            }
            return Ok(Adoption {
                sizes: *fresh,
                tables: false,
            });
        };
        for (name, need, size) in [
            (FLOWS4, needs.flows4, &mut sizes.flows4),
            (FLOWS6, needs.flows6, &mut sizes.flows6),
            (NAT_REPLIES, needs.nat_flows, &mut sizes.nat_flows),
        ] {
            match get(name) {
                Some(n) if n >= need => *size = n,
                Some(n) => {
                    tracing::warn!(
                        map = name,
                        pinned = n,
                        need,
                        "the pinned connection table is too small for this config: it starts afresh (its flows are re-picked)"
                    );
                    unpin(self.map_path(name))?;
                }
                None => {}
            }
        }
        Ok(Adoption {
            sizes,
            tables: true,
        })
    }

    /// Removes every pinned map (not the link).
    pub fn clear_maps(&self) -> Result<(), PinError> {
        PINNED_MAPS
            .iter()
            .try_for_each(|name| unpin(self.map_path(name)))
    }

    /// Attaches the balancer: into the pinned link if there is one (an atomic program swap:
    /// no packet goes unprocessed), else freshly, pinning the new link. Returns whether a
    /// pinned link was adopted.
    pub fn attach(
        &self,
        ebpf: &mut Ebpf,
        interface: &str,
        mode: AttachMode,
    ) -> Result<bool, LoadError> {
        let path = self.link_path(interface);
        let prog = loader::xdp_mut(ebpf, PROG_BALANCER)?;
        if path.exists() {
            let adopted = PinnedLink::from_pin(&path)
                .map_err(|e| e.to_string())
                .map(FdLink::from)
                .and_then(|fd| XdpLink::try_from(fd).map_err(|e| e.to_string()))
                .and_then(|link| prog.attach_to_link(link).map_err(|e| e.to_string()));
            match adopted {
                Ok(_) => return Ok(true),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot adopt the pinned XDP link; attaching afresh");
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        let id = loader::attach(ebpf, PROG_BALANCER, interface, mode)?;
        let prog = loader::xdp_mut(ebpf, PROG_BALANCER)?;
        let pinned = prog
            .take_link(id)
            .map_err(|e| e.to_string())
            .and_then(|l| FdLink::try_from(l).map_err(|e| e.to_string()))
            .and_then(|fd| fd.pin(&path).map_err(|e| e.to_string()));
        match pinned {
            // Pinned, the link outlives this process; the handle itself can go.
            Ok(link) => drop(link),
            Err(e) => tracing::warn!(
                error = %e,
                "could not pin the XDP link (a kernel without bpf_link XDP?): forwarding stops when the daemon exits"
            ),
        }
        Ok(false)
    }

    /// Detaches: unpins the link (the program detaches when the last reference goes) and
    /// the maps. For `detach_on_exit`.
    pub fn detach(&self) -> Result<(), PinError> {
        self.links().into_iter().try_for_each(unpin)?;
        self.clear_maps()?;
        let _ = std::fs::remove_dir(&self.dir);
        Ok(())
    }
}
