//! The lab's topology: a client, a load balancer and N backends, each in its own namespace,
//! joined by veth pairs to a Linux bridge in a "switch" namespace.

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{bail, ensure};

use super::{
    netns::{Netns, list_namespaces, run_in},
    sys,
};

/// The client's addresses.
pub const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
/// The client's IPv6 address.
pub const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);
/// The load balancer's address on the shared segment (the VIPs' next hop).
pub const LB_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// The load balancer's IPv6 address.
pub const LB_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
/// The IPv4 VIPs: on every backend's `lo`, routed by the client through the load balancer.
pub const VIPS_V4: [Ipv4Addr; 5] = [
    Ipv4Addr::new(198, 18, 0, 10),
    Ipv4Addr::new(198, 18, 0, 11),
    Ipv4Addr::new(198, 18, 0, 12),
    Ipv4Addr::new(198, 18, 0, 13),
    Ipv4Addr::new(198, 18, 0, 14),
];
/// The IPv6 VIPs.
pub const VIPS_V6: [Ipv6Addr; 5] = [
    Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0, 0, 0, 0x10),
    Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0, 0, 0, 0x11),
    Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0, 0, 0, 0x12),
    Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0, 0, 0, 0x13),
    Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0, 0, 0, 0x14),
];
/// The most backends a lab holds: keeps `backend i` at 198.18.0.(100+i) and interface
/// names within 15 characters.
pub const MAX_BACKENDS: usize = 99;

/// Labs made by this process so far: part of every lab's name.
static LABS: AtomicU32 = AtomicU32::new(0);

/// One namespace attached to the switch: its veth, the veth's peer on the bridge, and the
/// addresses on it.
#[derive(Debug)]
pub struct Node {
    ns: Netns,
    ifname: String,
    peer: String,
    ipv4: Ipv4Addr,
    ipv6: Ipv6Addr,
    mac: [u8; 6],
}

impl Node {
    /// The node's namespace.
    pub fn ns(&self) -> &Netns {
        &self.ns
    }

    /// The node's veth, inside [`Node::ns`] (attach an XDP program here with [`run_in`]).
    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    /// The other end of the node's veth: a bridge port inside [`Lab::switch`].
    pub fn peer_in_switch(&self) -> &str {
        &self.peer
    }

    /// The node's IPv4 address on its veth.
    pub fn ipv4(&self) -> Ipv4Addr {
        self.ipv4
    }

    /// The node's IPv6 address on its veth.
    pub fn ipv6(&self) -> Ipv6Addr {
        self.ipv6
    }

    /// The MAC address of [`Node::ifname`]: `02:00:00:00:00:HH`, with HH the last byte of
    /// the node's IPv4 address.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }
}

/// The whole lab. Every name starts with [`Lab::prefix`]; dropping the lab (also while a
/// test panics) deletes every namespace, which removes every interface with it.
///
/// To attach XDP programs, run aya inside the right namespace with [`run_in`]:
///
/// ```text
/// let (ebpf, link) = run_in(lab.lb().ns(), || {
///     let mut ebpf = aya::Ebpf::load(OBJECT)?;
///     let prog: &mut Xdp = ebpf.program_mut("balancer").unwrap().try_into()?;
///     prog.load()?;
///     let link = prog.attach(lab.lb_if(), XdpMode::default())?;
///     anyhow::Ok((ebpf, link))
/// })?;
/// ```
///
/// The same for a backend's decapsulation program: `run_in(b.ns(), ..)` with `b.ifname()`
/// for each `b` in [`Lab::backends`]; and for the XDP_PASS program that the switch-side
/// peer of the load balancer's veth needs, see [`Lab::attach_pass_program`].
/// Declare such objects and [`super::Server`]s after the lab, so they drop before it.
#[derive(Debug)]
pub struct Lab {
    prefix: String,
    bridge: String,
    // Fields drop in this order: nodes first, the switch last.
    backends: Vec<Node>,
    lb: Node,
    client: Node,
    switch: Netns,
}

impl Lab {
    /// Builds a lab with `n_backends` backends (at most [`MAX_BACKENDS`]); returns once every
    /// link is up and every address usable.
    pub fn new(n_backends: usize) -> anyhow::Result<Self> {
        ensure!(
            n_backends <= MAX_BACKENDS,
            "a lab holds at most {MAX_BACKENDS} backends, not {n_backends}"
        );
        let prefix = fresh_prefix()?;
        let switch = Netns::new(&format!("{prefix}sw"))?;
        let bridge = format!("{prefix}br");
        sys::set_sysctls(
            &switch,
            &[
                // The switch forwards frames only: no addresses, no neighbour discovery noise.
                ("net/ipv6/conf/all/disable_ipv6".into(), "1"),
                ("net/ipv6/conf/default/disable_ipv6".into(), "1"),
            ],
        )?;
        // Snooping without a querier can stop neighbour-discovery multicast: flood instead.
        switch.ip([
            "link",
            "add",
            "name",
            &bridge,
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ])?;
        switch.ip(["link", "set", &bridge, "up"])?;

        let client = add_node(&switch, &bridge, &prefix, "cl", 2, Role::Client)?;
        let lb = add_node(&switch, &bridge, &prefix, "lb", 1, Role::Balancer)?;
        let mut backends = Vec::with_capacity(n_backends);
        for i in 1..=n_backends {
            let role = format!("b{i}");
            backends.push(add_node(
                &switch,
                &bridge,
                &prefix,
                &role,
                100 + i as u8,
                Role::Backend,
            )?);
        }
        let lab = Lab {
            prefix,
            bridge,
            backends,
            lb,
            client,
            switch,
        };
        lab.wait_ready(Duration::from_secs(5))?;
        Ok(lab)
    }

    /// The prefix of every namespace and interface name of this lab, e.g. `fo-1234-`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The namespace holding the bridge and the switch-side end of every veth.
    pub fn switch(&self) -> &Netns {
        &self.switch
    }

    /// The bridge's name inside [`Lab::switch`].
    pub fn bridge(&self) -> &str {
        &self.bridge
    }

    /// The client: 198.18.0.2 and 2001:db8::2, routes to the VIPs via the load balancer.
    pub fn client(&self) -> &Node {
        &self.client
    }

    /// The load balancer: 198.18.0.1 and 2001:db8::1, forwarding on.
    pub fn lb(&self) -> &Node {
        &self.lb
    }

    /// The load balancer's veth, where its XDP program goes (inside `lab.lb().ns()`).
    pub fn lb_if(&self) -> &str {
        self.lb.ifname()
    }

    /// The switch-side peer of [`Lab::lb_if`]: frames the load balancer sends with XDP_TX
    /// arrive here, and veth delivers them only if this end has an XDP program too.
    pub fn lb_peer_in_switch(&self) -> &str {
        self.lb.peer_in_switch()
    }

    /// The backends, in order: `backends()[0]` is backend 1.
    pub fn backends(&self) -> &[Node] {
        &self.backends
    }

    /// Backend `i`, counted from 1 like its address 198.18.0.(100+i).
    pub fn backend(&self, i: usize) -> &Node {
        &self.backends[i - 1]
    }

    /// Runs `attach` inside [`Lab::switch`] with [`Lab::lb_peer_in_switch`]: the caller, who
    /// has the loader, attaches an XDP_PASS program there so that frames the load balancer
    /// transmits with XDP_TX reach the bridge. Return whatever must stay alive (the loaded
    /// object, the link) from `attach` and keep it for the test's duration.
    pub fn attach_pass_program<T: Send>(&self, attach: impl FnOnce(&str) -> T + Send) -> T {
        run_in(&self.switch, || attach(self.lb_peer_in_switch()))
    }

    fn nodes(&self) -> impl Iterator<Item = &Node> {
        [&self.client, &self.lb].into_iter().chain(&self.backends)
    }

    /// Waits until every link reports carrier and no address is still tentative.
    fn wait_ready(&self, limit: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            let mut waiting = None;
            for node in self.nodes() {
                let link = node.ns.ip(["-o", "link", "show", "dev", &node.ifname])?;
                let tentative = node.ns.ip(["-o", "addr", "show", "tentative"])?;
                if !link.contains("LOWER_UP") || !tentative.trim().is_empty() {
                    waiting = Some(format!("{link}{tentative}"));
                    break;
                }
            }
            let Some(state) = waiting else {
                return Ok(());
            };
            if Instant::now() >= deadline {
                bail!("lab links not ready after {limit:?}: {}", state.trim());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// What a node is for: decides its routes and sysctls.
#[derive(Clone, Copy, PartialEq)]
enum Role {
    Client,
    Balancer,
    Backend,
}

/// Creates a node's namespace, its veth pair to the bridge, addresses, routes and sysctls.
/// `host` is the last byte of its IPv4 address and of its IPv6 address and MAC.
fn add_node(
    switch: &Netns,
    bridge: &str,
    prefix: &str,
    name: &str,
    host: u8,
    role: Role,
) -> anyhow::Result<Node> {
    let ns = Netns::new(&format!("{prefix}{name}"))?;
    let ipv4 = Ipv4Addr::new(198, 18, 0, host);
    let ipv6 = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, host.into());
    let mac = [0x02, 0, 0, 0, 0, host];
    let ifname = format!("{prefix}{name}");
    let peer = format!("{prefix}{name}p");

    // Defaults first: the veth arrives later and takes them.
    let mut sysctls = vec![
        ("net/ipv4/conf/all/rp_filter".to_owned(), "0"),
        ("net/ipv4/conf/default/rp_filter".to_owned(), "0"),
        // Link-local addresses skip DAD too, so nothing waits a second after link-up.
        ("net/ipv6/conf/all/accept_dad".to_owned(), "0"),
        ("net/ipv6/conf/default/accept_dad".to_owned(), "0"),
    ];
    match role {
        Role::Client => {}
        Role::Balancer => {
            sysctls.push(("net/ipv4/ip_forward".into(), "1"));
            sysctls.push(("net/ipv6/conf/all/forwarding".into(), "1"));
        }
        Role::Backend => {
            // The VIPs sit on lo: answer ARP only for addresses on the asking interface,
            // and never announce a VIP as the source of an ARP request.
            sysctls.push(("net/ipv4/conf/all/arp_ignore".into(), "1"));
            sysctls.push(("net/ipv4/conf/all/arp_announce".into(), "2"));
        }
    }
    sys::set_sysctls(&ns, &sysctls)?;

    let mac_text = mac.map(|b| format!("{b:02x}")).join(":");
    // Made from inside the switch namespace, so the host's namespace never sees the names.
    switch.ip([
        "link",
        "add",
        "name",
        &ifname,
        "address",
        &mac_text,
        "netns",
        ns.name(),
        "type",
        "veth",
        "peer",
        "name",
        &peer,
    ])?;
    switch.ip(["link", "set", &peer, "master", bridge, "up"])?;
    sys::set_sysctls(switch, &[(format!("net/ipv4/conf/{peer}/rp_filter"), "0")])?;
    sys::disable_tx_checksum(switch, &[&peer])?;

    sys::set_sysctls(&ns, &[(format!("net/ipv4/conf/{ifname}/rp_filter"), "0")])?;
    sys::disable_tx_checksum(&ns, &[&ifname])?;
    ns.ip(["addr", "add", &format!("{ipv4}/24"), "dev", &ifname])?;
    ns.ip([
        "addr",
        "add",
        &format!("{ipv6}/64"),
        "dev",
        &ifname,
        "nodad",
    ])?;
    ns.ip(["link", "set", &ifname, "up"])?;
    match role {
        Role::Client => {
            ns.ip(["route", "add", "198.18.0.8/29", "via", &LB_V4.to_string()])?;
            ns.ip([
                "route",
                "add",
                "2001:db8:0:1::/64",
                "via",
                &LB_V6.to_string(),
            ])?;
        }
        Role::Balancer => {}
        Role::Backend => {
            for vip in VIPS_V4 {
                ns.ip(["addr", "add", &format!("{vip}/32"), "dev", "lo"])?;
            }
            for vip in VIPS_V6 {
                ns.ip(["addr", "add", &format!("{vip}/128"), "dev", "lo", "nodad"])?;
            }
            // NAT-mode replies must go back through the load balancer.
            ns.ip(["route", "add", "default", "via", &LB_V4.to_string()])?;
            ns.ip(["route", "add", "default", "via", &LB_V6.to_string()])?;
        }
    }
    Ok(Node {
        ns,
        ifname,
        peer,
        ipv4,
        ipv6,
        mac,
    })
}

/// A prefix `fo-PPPC-` (PPP: this process's pid modulo 1000, C: a per-process counter) that
/// no existing namespace uses, so parallel labs and leftovers of killed runs never collide.
/// The longest name, `fo-PPPCCCC-b99p`, fits the 15 characters of an interface name.
fn fresh_prefix() -> anyhow::Result<String> {
    let existing = list_namespaces()?;
    for _ in 0..10_000 {
        let n = LABS.fetch_add(1, Ordering::Relaxed) % 10_000;
        let prefix = format!("fo-{:03}{n}-", std::process::id() % 1000);
        if !existing.iter().any(|name| name.starts_with(&prefix)) {
            return Ok(prefix);
        }
    }
    bail!("no free lab name: remove leftover namespaces (`ip netns list | grep ^fo-`)")
}
