//! A backend off the bridge: its own namespace on a second veth pair straight from the
//! load balancer, so the load balancer reaches it through another interface than the one
//! its XDP program sits on (the packet path then redirects through its devmap).
//!
//! ```text
//! client --- bridge --- lb ==(lb_if: XDP)
//!                        \== branch_if --- veth --- branch backend (198.18.2.2)
//! ```

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    time::{Duration, Instant},
};

use anyhow::bail;

use super::{
    netns::Netns,
    sys,
    topology::{Lab, VIPS_V4, VIPS_V6},
};

/// The load balancer's address on a branch's link.
pub const BRANCH_LB_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 1);
/// The load balancer's IPv6 address on a branch's link.
pub const BRANCH_LB_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 2, 0, 0, 0, 1);
/// The branch backend's address.
pub const BRANCH_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 2);
/// The branch backend's IPv6 address.
pub const BRANCH_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 2, 0, 0, 0, 2);

/// A backend namespace joined to the load balancer's namespace by a veth pair of its own.
/// Dropping it deletes its namespace, and with it both ends of the pair.
#[derive(Debug)]
pub struct Branch {
    ns: Netns,
    ifname: String,
    lb_ifname: String,
}

impl Branch {
    /// Adds the branch backend to `lab`: 198.18.2.2/24 and 2001:db8:0:2::2/64 on its veth,
    /// the VIPs on its `lo` (like every lab backend), routes back through the load balancer
    /// (198.18.2.1, 2001:db8:0:2::1 on [`Branch::lb_ifname`]). Returns once both ends are up.
    pub fn new(lab: &Lab) -> anyhow::Result<Self> {
        let ns = Netns::new(&format!("{}x1", lab.prefix()))?;
        let ifname = format!("{}x1", lab.prefix());
        let lb_ifname = format!("{}x1l", lab.prefix());
        let lb = lab.lb().ns();
        sys::set_sysctls(
            &ns,
            &[
                ("net/ipv4/conf/all/rp_filter".into(), "0"),
                ("net/ipv4/conf/default/rp_filter".into(), "0"),
                ("net/ipv6/conf/all/accept_dad".into(), "0"),
                ("net/ipv6/conf/default/accept_dad".into(), "0"),
                // The VIPs sit on lo: answer ARP only for the link's own address.
                ("net/ipv4/conf/all/arp_ignore".into(), "1"),
                ("net/ipv4/conf/all/arp_announce".into(), "2"),
            ],
        )?;
        // Made from inside the load balancer's namespace: the host never sees the names.
        lb.ip([
            "link",
            "add",
            "name",
            &lb_ifname,
            "type",
            "veth",
            "peer",
            "name",
            &ifname,
            "netns",
            ns.name(),
        ])?;
        sys::set_sysctls(lb, &[(format!("net/ipv4/conf/{lb_ifname}/rp_filter"), "0")])?;
        // Both directions cross XDP or kernel forwarding: no partial checksums (see sys).
        sys::disable_tx_checksum(lb, &[&lb_ifname])?;
        sys::disable_tx_checksum(&ns, &[&ifname])?;
        for (node, dev, v4, v6) in [
            (lb, &lb_ifname, BRANCH_LB_V4, BRANCH_LB_V6),
            (&ns, &ifname, BRANCH_V4, BRANCH_V6),
        ] {
            node.ip(["addr", "add", &format!("{v4}/24"), "dev", dev])?;
            node.ip(["addr", "add", &format!("{v6}/64"), "dev", dev, "nodad"])?;
            node.ip(["link", "set", dev, "up"])?;
        }
        for vip in VIPS_V4 {
            ns.ip(["addr", "add", &format!("{vip}/32"), "dev", "lo"])?;
        }
        for vip in VIPS_V6 {
            ns.ip(["addr", "add", &format!("{vip}/128"), "dev", "lo", "nodad"])?;
        }
        ns.ip(["route", "add", "default", "via", &BRANCH_LB_V4.to_string()])?;
        ns.ip(["route", "add", "default", "via", &BRANCH_LB_V6.to_string()])?;
        let branch = Self {
            ns,
            ifname,
            lb_ifname,
        };
        branch.wait_ready(lb, Duration::from_secs(5))?;
        Ok(branch)
    }

    /// The branch backend's namespace.
    pub fn ns(&self) -> &Netns {
        &self.ns
    }

    /// The branch backend's veth (frames redirected into the pair arrive here only if it
    /// has an XDP program: attach the pass program).
    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    /// The load balancer's end of the pair, inside the load balancer's namespace.
    pub fn lb_ifname(&self) -> &str {
        &self.lb_ifname
    }

    fn wait_ready(&self, lb: &Netns, limit: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            let a = lb.ip(["-o", "link", "show", "dev", &self.lb_ifname])?;
            let b = self.ns.ip(["-o", "link", "show", "dev", &self.ifname])?;
            if a.contains("LOWER_UP") && b.contains("LOWER_UP") {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("branch link not up after {limit:?}: {a}{b}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
