//! End-to-end XDP_REDIRECT: the real daemon serves a `dsr` VIP with one backend on the
//! bridge (XDP_TX back out of the attached interface) and one behind a second interface of
//! the load balancer (a [`Branch`]). The daemon learns from the routing table that the
//! second backend leaves by another interface, puts that interface in the `EGRESS` devmap,
//! and the packet path redirects the branch backend's frames there. Every TCP connection
//! must complete with the right bytes, and both backends must take flows.

use std::{net::SocketAddr, time::Duration};

use failover_common::maps::PROG_PASS;
use failover_tests::{
    daemon::Daemon,
    lab::{
        Lab, Listen, Server, Tally,
        branch::{BRANCH_V4, BRANCH_V6, Branch},
        client,
    },
    xdp,
};

const CONNECTIONS: usize = 600;
const TIMEOUT: Duration = Duration::from_secs(3);

/// One `dsr` TCP service per family, each with a bridge backend and the branch backend.
fn config(lab: &Lab) -> String {
    let near = lab.backend(1);
    let mut s = format!(
        "interface = \"{}\"\ncontrol_socket = \"/run/failover/{}sock\"\nflow_capacity = 65536\n",
        lab.lb_if(),
        lab.prefix()
    );
    for (name, vip, near_addr, far_addr) in [
        (
            "web",
            "198.18.0.10",
            near.ipv4().to_string(),
            BRANCH_V4.to_string(),
        ),
        (
            "web6",
            "2001:db8:0:1::10",
            near.ipv6().to_string(),
            BRANCH_V6.to_string(),
        ),
    ] {
        s += &format!(
            "[[service]]\nname = \"{name}\"\nvip = \"{vip}\"\nport = 80\nprotocol = \"tcp\"\nmode = \"dsr\"\n"
        );
        for (backend, addr) in [("near", near_addr), ("far", far_addr)] {
            s +=
                &format!("  [[service.backend]]\n  name = \"{backend}\"\n  address = \"{addr}\"\n");
        }
    }
    s
}

fn check(what: &str, replies: &[client::Reply], total: usize) {
    for (i, r) in replies.iter().enumerate() {
        if let Ok(line) = r {
            assert!(
                line.ends_with(&format!(" req-{i}")),
                "{what}: connection {i} got the wrong bytes: {line:?}"
            );
        }
    }
    let tally = Tally::of(replies);
    assert!(
        tally.errors.is_empty(),
        "{what}: {} of {total} connections failed: {tally:?}",
        tally.errors.len()
    );
    for backend in ["near", "far"] {
        let share = tally.count(backend) as f64 / total as f64;
        assert!(
            (0.25..=0.75).contains(&share),
            "{what}: backend {backend} got {:.1}% of flows, expected about half: {tally:?}",
            share * 100.0
        );
    }
}

/// A lab with backend `near` on the bridge and `far` behind the branch, both serving TCP 80.
struct Rig {
    _servers: [Server; 2],
    _pass: [aya::Ebpf; 2],
    branch: Branch,
    lab: Lab,
}

impl Rig {
    fn new() -> Self {
        let lab = Lab::new(1).expect("build the lab");
        let branch = Branch::new(&lab).expect("add the branch backend");
        // XDP_TX towards the bridge, and the redirect into the branch's pair, are delivered
        // by veth only to a peer that runs an XDP program.
        let pass = [
            xdp::pass_on_lb_peer(&lab).expect("attach the pass program (bridge)"),
            xdp::attach_in(branch.ns(), branch.ifname(), PROG_PASS)
                .expect("attach the pass program (branch)"),
        ];
        let servers = [
            Server::start(lab.backend(1).ns(), "near", &Listen::all(80)).expect("near server"),
            Server::start(branch.ns(), "far", &Listen::all(80)).expect("far server"),
        ];
        Self {
            _servers: servers,
            _pass: pass,
            branch,
            lab,
        }
    }
}

#[test]
fn dsr_reaches_a_backend_behind_another_interface_through_the_devmap() {
    let rig = Rig::new();
    let lab = &rig.lab;
    let mut daemon = Daemon::start(lab.lb().ns(), &config(lab)).expect("start the daemon");

    let vip4: SocketAddr = "198.18.0.10:80".parse().unwrap();
    let replies = client::tcp_requests(lab.client().ns(), vip4, CONNECTIONS, TIMEOUT, 32);
    check("dsr tcp ipv4", &replies, CONNECTIONS);
    let vip6: SocketAddr = "[2001:db8:0:1::10]:80".parse().unwrap();
    let replies = client::tcp_requests(lab.client().ns(), vip6, CONNECTIONS / 2, TIMEOUT, 16);
    check("dsr tcp ipv6", &replies, CONNECTIONS / 2);

    let status = daemon.stop().expect("stop the daemon");
    assert!(
        status.success(),
        "the daemon exited with {status}; log:\n{}",
        daemon.log.join("\n")
    );
}

/// Whether the XDP program of `ns` is attached to `ifname` (`ip link` shows it).
fn has_xdp(ns: &failover_tests::lab::Netns, ifname: &str) -> bool {
    let out = ns
        .ip(["-j", "link", "show", "dev", ifname])
        .expect("ip link");
    let v: serde_json::Value = serde_json::from_str(&out).expect("ip -j output");
    v[0].get("xdp").is_some()
}

/// `interface = [A, B]`: the program is attached to both (each link pinned), every frame
/// to a backend is redirected to the interface its route names, a restart adopts both
/// links, and a restart with one of them dropped from the config detaches the program
/// from it.
#[test]
fn the_program_attaches_to_every_listed_interface() {
    let rig = Rig::new();
    let (lab, branch) = (&rig.lab, &rig.branch);
    let one = config(lab);
    let both = one.replacen(
        &format!("interface = \"{}\"", lab.lb_if()),
        &format!(
            "interface = [\"{}\", \"{}\"]",
            lab.lb_if(),
            branch.lb_ifname()
        ),
        1,
    );
    let ns = lab.lb().ns();
    let mut first = Daemon::start(ns, &both).expect("start the daemon");
    for ifname in [lab.lb_if(), branch.lb_ifname()] {
        assert!(has_xdp(ns, ifname), "no XDP program on {ifname}");
        let pin = first.pin_dir.join(format!("link-{ifname}"));
        assert!(pin.exists(), "{} is not pinned", pin.display());
    }
    let vip4: SocketAddr = "198.18.0.10:80".parse().unwrap();
    let replies = client::tcp_requests(lab.client().ns(), vip4, CONNECTIONS / 2, TIMEOUT, 16);
    check("two interfaces", &replies, CONNECTIONS / 2);

    first.keep_pins();
    first.kill9();
    let second = Daemon::start(ns, &one).expect("restart with one interface");
    assert!(
        second.log.iter().any(|l| l.contains("adopted_link=true")),
        "{}",
        second.log.join("\n")
    );
    assert!(
        has_xdp(ns, lab.lb_if()),
        "still attached to {}",
        lab.lb_if()
    );
    assert!(
        !has_xdp(ns, branch.lb_ifname()),
        "detached from {}, which the config no longer lists",
        branch.lb_ifname()
    );
    let replies = client::tcp_requests(lab.client().ns(), vip4, CONNECTIONS / 2, TIMEOUT, 16);
    check("back to one interface", &replies, CONNECTIONS / 2);
}
