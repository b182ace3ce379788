//! Resolves the MAC address to send a backend's frames to: the backend's own when it is on
//! a connected network, else its gateway's. Reads the kernel's routing and neighbour tables
//! through iproute2's JSON output, and prompts resolution when an entry is missing.

use std::{net::IpAddr, process::Command, time::Duration};

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
    /// The index of the interface frames leave by, when that is not `attached` (the one
    /// the XDP program sits on): the packet path then redirects them there instead of
    /// sending them back out with XDP_TX. `None` for the attached interface, or when the
    /// interface has vanished since the route was read.
    pub fn egress(&self, attached: &str) -> Option<u32> {
        if self.dev == attached {
            return None;
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

/// The route to `addr`: (device, next hop).
pub fn route(addr: IpAddr) -> Result<(String, IpAddr), NeighborError> {
    let v = ip_json(&["route", "get", &addr.to_string()])?;
    let r = v.get(0).ok_or_else(|| NeighborError::NoRoute {
        addr,
        detail: v.as_str().unwrap_or("no answer").to_string(),
    })?;
    let dev = r["dev"].as_str().unwrap_or_default().to_string();
    let via = r["gateway"]
        .as_str()
        .and_then(|g| g.parse().ok())
        .unwrap_or(addr);
    Ok((dev, via))
}

fn lookup(via: IpAddr, dev: &str) -> Result<Option<[u8; 6]>, NeighborError> {
    let v = ip_json(&["neigh", "show", &via.to_string(), "dev", dev])?;
    Ok(v.as_array().into_iter().flatten().find_map(|n| {
        let state = n["state"]
            .as_array()
            .map(|s| s.iter().filter_map(|x| x.as_str()).collect::<Vec<_>>());
        let bad = state.is_some_and(|s| s.iter().any(|x| *x == "FAILED" || *x == "INCOMPLETE"));
        if bad {
            None
        } else {
            n["lladdr"].as_str().and_then(parse_mac)
        }
    }))
}

/// Resolves the next hop of `addr`, prompting ARP/ND (one empty UDP datagram to the
/// discard port) and waiting up to `wait` if the kernel has no entry yet.
pub fn resolve(addr: IpAddr, wait: Duration) -> Result<NextHop, NeighborError> {
    let (dev, via) = route(addr)?;
    let deadline = std::time::Instant::now() + wait;
    let mut prompted = false;
    loop {
        if let Some(mac) = lookup(via, &dev)? {
            return Ok(NextHop { dev, via, mac });
        }
        if std::time::Instant::now() >= deadline {
            return Err(NeighborError::Unresolved {
                addr,
                next_hop: via,
                dev,
            });
        }
        if !prompted {
            prompt(via);
            prompted = true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
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
        assert_eq!(hop("lo").egress("lo"), None);
        assert_eq!(hop("lo").egress("eth9"), Some(1), "lo is interface 1");
        assert_eq!(hop("fo-no-such-if").egress("lo"), None);
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
