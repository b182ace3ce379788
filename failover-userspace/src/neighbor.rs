//! Resolves the MAC address to send a backend's frames to: the backend's own when it is on
//! a connected network, else its gateway's. Reads the kernel's routing and neighbour tables
//! through iproute2's JSON output, and prompts resolution when an entry is missing.

use std::{
    collections::HashMap,
    io::{Read as _, Seek as _, SeekFrom, Write as _},
    net::IpAddr,
    process::{Command, Stdio},
    time::Duration,
};

/// Why a MAC could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum NeighborError {
    /// `ip` could not be run.
    #[error("running `ip {args}` failed (is iproute2 installed?)")]
    Ip {
        /// The arguments.
        args: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// No route to the address.
    #[error("no route to {addr}: {detail} (check `ip route get {addr}`)")]
    NoRoute {
        /// The address.
        addr: IpAddr,
        /// What `ip` said.
        detail: String,
    },
    /// The neighbour did not answer.
    #[error(
        "{addr} (next hop {next_hop} on {dev}) did not answer ARP/ND (is it up? check `ip neigh show {next_hop}`)"
    )]
    Unresolved {
        /// The backend.
        addr: IpAddr,
        /// The next hop.
        next_hop: IpAddr,
        /// The interface.
        dev: String,
    },
}

/// Where frames for an address go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NextHop {
    /// The interface they leave by.
    pub dev: String,
    /// The next hop's address (the address itself when directly connected).
    pub via: IpAddr,
    /// The next hop's MAC.
    pub mac: [u8; 6],
}

impl NextHop {
    /// The index of the interface frames leave by, when the packet path must redirect
    /// there rather than send them back out with XDP_TX: always with several `attached`
    /// interfaces (the program on one of them cannot know it is the right one), else when
    /// it is not the attached one. `None` when the interface has vanished since the route
    /// was read.
    pub fn egress(&self, attached: &[String]) -> Option<u32> {
        if let [only] = attached {
            if self.dev == *only {
                return None;
            }
        }
        ifindex(&self.dev)
    }
}

/// The index of interface `dev`, if it exists.
pub fn ifindex(dev: &str) -> Option<u32> {
    let name = std::ffi::CString::new(dev).ok()?;
    // SAFETY: a valid NUL-terminated string; the call only reads it.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    (index != 0).then_some(index)
}

fn ip_json(args: &[&str]) -> Result<serde_json::Value, NeighborError> {
    let out = Command::new("ip")
        .arg("-j")
        .args(args)
        .output()
        .map_err(|source| NeighborError::Ip {
            args: args.join(" "),
            source,
        })?;
    if !out.status.success() {
        return Ok(serde_json::Value::String(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    Ok(serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null))
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// The routes to `addrs`, from one `ip -batch` run: address -> (device, next hop).
/// Addresses without a route are missing from the map.
fn routes(addrs: &[IpAddr]) -> Result<HashMap<IpAddr, (String, IpAddr)>, NeighborError> {
    let args = "-j -force -batch - (route get ...)";
    let failed = |source| NeighborError::Ip {
        args: args.into(),
        source,
    };
    // Commands and answers go through in-memory files, not pipes: `ip` writes an answer
    // per lookup, and reading a pipe would wake this thread for each (thousands a second
    // with 10,000 backends); a file is read once, after `ip` exits.
    let mut commands = memfd(c"failover-ip-commands").map_err(failed)?;
    let text: String = addrs.iter().map(|a| format!("route get {a}\n")).collect();
    commands.write_all(text.as_bytes()).map_err(failed)?;
    commands.seek(SeekFrom::Start(0)).map_err(failed)?;
    let mut answers = memfd(c"failover-ip-answers").map_err(failed)?;
    let status = Command::new("ip")
        .args(["-j", "-force", "-batch", "-"])
        .stdin(Stdio::from(commands))
        .stdout(Stdio::from(answers.try_clone().map_err(failed)?))
        .stderr(Stdio::null())
        .status()
        .map_err(failed)?;
    let mut stdout = Vec::new();
    answers.seek(SeekFrom::Start(0)).map_err(failed)?;
    answers.read_to_end(&mut stdout).map_err(failed)?;
    // With -force, `ip` goes on past failed lookups and may exit non-zero: what it found
    // is still in its answers.
    let _ = status;
    let mut found = HashMap::new();
    for answer in serde_json::Deserializer::from_slice(&stdout).into_iter::<serde_json::Value>() {
        let Ok(answer) = answer else { break };
        for r in answer.as_array().into_iter().flatten() {
            let Some(dst) = r["dst"].as_str().and_then(|d| d.parse::<IpAddr>().ok()) else {
                continue;
            };
            let dev = r["dev"].as_str().unwrap_or_default().to_string();
            let via = r["gateway"]
                .as_str()
                .and_then(|g| g.parse().ok())
                .unwrap_or(dst);
            found.insert(dst, (dev, via));
        }
    }
    Ok(found)
}

/// The kernel's neighbour table: (address, device) -> MAC, for usable entries.
fn neighbours() -> Result<HashMap<(IpAddr, String), [u8; 6]>, NeighborError> {
    let v = ip_json(&["neigh", "show"])?;
    Ok(v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| {
            let state: Vec<&str> = n["state"]
                .as_array()
                .map(|s| s.iter().filter_map(|x| x.as_str()).collect())
                .unwrap_or_default();
            if state.iter().any(|x| *x == "FAILED" || *x == "INCOMPLETE") {
                return None;
            }
            let dst = n["dst"].as_str()?.parse().ok()?;
            let dev = n["dev"].as_str()?.to_string();
            Some(((dst, dev), n["lladdr"].as_str().and_then(parse_mac)?))
        })
        .collect())
}

/// An anonymous in-memory file (closed on exec; a child gets it through a dup).
fn memfd(name: &std::ffi::CStr) -> std::io::Result<std::fs::File> {
    // SAFETY: the name is a valid C string; the returned descriptor is new and owned here.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor nothing else owns.
    Ok(unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}

/// How long looked-up routes are reused. Neighbours (MACs) are looked up in every round;
/// routes change far less often, and looking up 10,000 of them costs `ip` about a tenth
/// of a second of CPU.
const ROUTE_TTL: Duration = Duration::from_secs(30);

/// Address -> (device, next hop).
type Routes = HashMap<IpAddr, (String, IpAddr)>;

/// The last route lookups, kept by the caller between rounds of [`resolve_all`].
#[derive(Debug, Default)]
pub struct RouteCache(Option<(std::time::Instant, Routes)>);

impl RouteCache {
    /// The routes to `addrs`: the last lookups' if they are younger than [`ROUTE_TTL`]
    /// and found a route to every address, else looked up again.
    fn routes(&mut self, addrs: &[IpAddr]) -> Result<Routes, NeighborError> {
        if let Some((at, routes)) = &self.0 {
            if at.elapsed() < ROUTE_TTL && addrs.iter().all(|a| routes.contains_key(a)) {
                return Ok(addrs.iter().map(|a| (*a, routes[a].clone())).collect());
            }
        }
        let routes = routes(addrs)?;
        self.0 = Some((std::time::Instant::now(), routes.clone()));
        Ok(routes)
    }
}

/// Resolves the next hops of `addrs` with a few `ip` runs whatever their number (one
/// batch of route lookups, one neighbour-table dump per round): the next hops the kernel
/// does not know yet are prompted (ARP/ND: one empty UDP datagram to the discard port)
/// and looked up again until `wait` has passed. Routes come from `cache` while it is fresh.
pub fn resolve_all(
    addrs: &[IpAddr],
    wait: Duration,
    cache: &mut RouteCache,
) -> HashMap<IpAddr, Result<NextHop, NeighborError>> {
    let mut out = HashMap::new();
    let routes = match cache.routes(addrs) {
        Ok(r) => r,
        Err(e) => {
            let detail = e.to_string();
            for &addr in addrs {
                out.insert(
                    addr,
                    Err(NeighborError::NoRoute {
                        addr,
                        detail: detail.clone(),
                    }),
                );
            }
            return out;
        }
    };
    let deadline = std::time::Instant::now() + wait;
    let mut prompted = false;
    let mut pending: Vec<IpAddr> = Vec::new();
    for &addr in addrs {
        if routes.contains_key(&addr) {
            pending.push(addr);
        } else {
            let detail = "no route (or `ip route get` failed)".to_string();
            out.insert(addr, Err(NeighborError::NoRoute { addr, detail }));
        }
    }
    loop {
        let table = neighbours();
        pending.retain(|addr| {
            let (dev, via) = &routes[addr];
            let known = match &table {
                Ok(t) => t.get(&(*via, dev.clone())).copied(),
                Err(_) => None,
            };
            match known {
                Some(mac) => {
                    out.insert(
                        *addr,
                        Ok(NextHop {
                            dev: dev.clone(),
                            via: *via,
                            mac,
                        }),
                    );
                    false
                }
                None => true,
            }
        });
        if let Err(e) = table {
            for addr in pending.drain(..) {
                let detail = e.to_string();
                out.insert(addr, Err(NeighborError::NoRoute { addr, detail }));
            }
        }
        if pending.is_empty() || std::time::Instant::now() >= deadline {
            break;
        }
        if !prompted {
            let hops: std::collections::BTreeSet<IpAddr> =
                pending.iter().map(|a| routes[a].1).collect();
            hops.into_iter().for_each(prompt);
            prompted = true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for addr in pending {
        let (dev, next_hop) = routes[&addr].clone();
        out.insert(
            addr,
            Err(NeighborError::Unresolved {
                addr,
                next_hop,
                dev,
            }),
        );
    }
    out
}

/// Resolves the next hop of one address (see [`resolve_all`]).
pub fn resolve(addr: IpAddr, wait: Duration) -> Result<NextHop, NeighborError> {
    resolve_all(&[addr], wait, &mut RouteCache::default())
        .remove(&addr)
        .expect("resolve_all answers for every address")
}

/// Makes the kernel resolve `addr`: sending a datagram needs its MAC.
fn prompt(addr: IpAddr) {
    let bind = if addr.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    };
    if let Ok(s) = std::net::UdpSocket::bind(bind) {
        let _ = s.send_to(&[], (addr, 9));
    }
}

#[cfg(test)]
mod tests {
    use super::{NextHop, parse_mac};

    #[test]
    fn the_attached_interface_is_no_egress() {
        let hop = |dev: &str| NextHop {
            dev: dev.into(),
            via: "198.18.0.101".parse().unwrap(),
            mac: [2, 0, 0, 0, 0, 1],
        };
        let attached = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        assert_eq!(hop("lo").egress(&attached(&["lo"])), None);
        assert_eq!(
            hop("lo").egress(&attached(&["eth9"])),
            Some(1),
            "lo is interface 1"
        );
        assert_eq!(
            hop("lo").egress(&attached(&["lo", "eth9"])),
            Some(1),
            "with two interfaces attached, always redirect"
        );
        assert_eq!(hop("fo-no-such-if").egress(&attached(&["lo"])), None);
    }

    #[test]
    fn macs_parse_strictly() {
        assert_eq!(
            parse_mac("02:00:c6:12:01:0a"),
            Some([2, 0, 0xc6, 0x12, 1, 0x0a])
        );
        assert_eq!(parse_mac("02:00:c6:12:01"), None);
        assert_eq!(parse_mac("02:00:c6:12:01:0a:00"), None);
        assert_eq!(parse_mac("zz:00:c6:12:01:0a"), None);
    }
}
