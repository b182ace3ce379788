//! End-to-end forwarding: the real daemon in a load-balancer namespace, three backend
//! namespaces running real servers, and a client opening 1,000 TCP connections (and
//! sending UDP datagrams) to the VIP, once per forwarding mode. Every connection must
//! complete with the right bytes, and flows must spread over the three backends.

use std::{net::SocketAddr, time::Duration};

use failover_tests::{
    daemon::Daemon,
    lab::{Lab, Listen, Server, Tally, client},
    xdp,
};

const CONNECTIONS: usize = 1000;
const DATAGRAMS: usize = 300;
const TIMEOUT: Duration = Duration::from_secs(3);

/// A daemon config for the lab: TCP 80 and UDP 53 on an IPv4 VIP, TCP 80 on an IPv6 VIP.
fn config(lab: &Lab, mode: &str) -> String {
    let port = |p: u16| {
        if mode == "nat" {
            format!("  port = {}\n", p + 8000)
        } else {
            String::new()
        }
    };
    let mut s = format!(
        "interface = \"{}\"\ncontrol_socket = \"/run/failover/{}sock\"\nflow_capacity = 65536\n[tunnel]\nsource_v4 = \"198.18.250.0/24\"\nsource_v6 = \"2001:db8:ffff::/112\"\n",
        lab.lb_if(),
        lab.prefix()
    );
    for (name, vip, port_no, proto, check) in [
        ("web", "198.18.0.10", 80, "tcp", String::new()),
        (
            "dns",
            "198.18.0.10",
            53,
            "udp",
            "  [service.check]\n  type = \"udp\"\n  send = \"health\"\n".into(),
        ),
        ("web6", "2001:db8:0:1::10", 80, "tcp", String::new()),
    ] {
        s += &format!(
            "[[service]]\nname = \"{name}\"\nvip = \"{vip}\"\nport = {port_no}\nprotocol = \"{proto}\"\nmode = \"{mode}\"\n{check}"
        );
        for b in lab.backends() {
            let addr = if vip.contains(':') {
                b.ipv6().to_string()
            } else {
                b.ipv4().to_string()
            };
            let idx = b.ipv4().octets()[3] - 100;
            s += &format!(
                "  [[service.backend]]\n  name = \"{name}-{idx}\"\n  address = \"{addr}\"\n{}",
                port(port_no)
            );
        }
    }
    s
}

/// The backend a reply names: "web-2 req-7" -> "2" (the index shared by all services).
fn backend_index(backend: &str) -> &str {
    backend.rsplit('-').next().unwrap_or(backend)
}

fn assert_spread(what: &str, tally: &Tally, total: usize) {
    assert!(
        tally.errors.is_empty(),
        "{what}: {} of {total} requests failed: {tally:?}",
        tally.errors.len()
    );
    assert_eq!(
        tally.by_backend.len(),
        3,
        "{what}: every backend must get flows: {tally:?}"
    );
    for (backend, n) in &tally.by_backend {
        let share = *n as f64 / total as f64;
        assert!(
            (0.20..=0.47).contains(&share),
            "{what}: backend {backend} got {:.1}% of flows, expected about a third: {tally:?}",
            share * 100.0
        );
    }
}

fn forwarding(mode: &str) {
    let lab = Lab::new(3).expect("build the lab");
    // Frames the load balancer transmits with XDP_TX reach the bridge only through an XDP
    // program on the peer; tunnel backends strip the outer header with our decapsulator.
    let _pass = xdp::pass_on_lb_peer(&lab).expect("attach the pass program");
    let _decap = if mode == "tunnel" {
        xdp::decap_on_backends(&lab).expect("attach decap")
    } else {
        Vec::new()
    };
    if mode == "nat" {
        // NAT backends route replies to the client through the load balancer.
        for b in lab.backends() {
            b.ns()
                .ip(["route", "add", "198.18.0.2/32", "via", "198.18.0.1"])
                .unwrap();
            b.ns()
                .ip([
                    "-6",
                    "route",
                    "add",
                    "2001:db8::2/128",
                    "via",
                    "2001:db8::1",
                ])
                .unwrap();
        }
    }
    let offset = if mode == "nat" { 8000 } else { 0 };
    let _servers: Vec<Server> = lab
        .backends()
        .iter()
        .map(|b| {
            let idx = b.ipv4().octets()[3] - 100;
            let mut listen = Listen::all(80 + offset);
            listen.extend(Listen::all(53 + offset));
            Server::start(b.ns(), &format!("be-{idx}"), &listen).expect("start a backend server")
        })
        .collect();
    let mut daemon = Daemon::start(lab.lb().ns(), &config(&lab, mode)).expect("start the daemon");

    let vip4: SocketAddr = "198.18.0.10:80".parse().unwrap();
    let replies = client::tcp_requests(lab.client().ns(), vip4, CONNECTIONS, TIMEOUT, 32);
    for (i, r) in replies.iter().enumerate() {
        if let Ok(line) = r {
            assert!(
                line.ends_with(&format!(" req-{i}")),
                "{mode}: connection {i} got the wrong bytes: {line:?}"
            );
        }
    }
    assert_spread(
        &format!("{mode} tcp ipv4"),
        &tally_by_index(&replies),
        CONNECTIONS,
    );

    let dns: SocketAddr = "198.18.0.10:53".parse().unwrap();
    let replies = client::udp_requests(
        lab.client().ns(),
        dns,
        DATAGRAMS,
        Duration::from_secs(1),
        16,
    );
    assert_spread(
        &format!("{mode} udp ipv4"),
        &tally_by_index(&replies),
        DATAGRAMS,
    );

    let vip6: SocketAddr = "[2001:db8:0:1::10]:80".parse().unwrap();
    let replies = client::tcp_requests(lab.client().ns(), vip6, DATAGRAMS, TIMEOUT, 16);
    assert_spread(
        &format!("{mode} tcp ipv6"),
        &tally_by_index(&replies),
        DATAGRAMS,
    );

    let status = daemon.stop().expect("stop the daemon");
    assert!(
        status.success(),
        "{mode}: the daemon exited with {status}; log:\n{}",
        daemon.log.join("\n")
    );
}

/// Counts replies by backend index, whatever the service prefix.
fn tally_by_index(replies: &[client::Reply]) -> Tally {
    let mut t = Tally::of(replies);
    t.by_backend = t
        .by_backend
        .into_iter()
        .map(|(k, v)| (backend_index(&k).to_string(), v))
        .collect();
    t
}

#[test]
fn dsr_forwards_tcp_and_udp_to_three_backends() {
    forwarding("dsr");
}

#[test]
fn tunnel_forwards_tcp_and_udp_to_three_backends() {
    forwarding("tunnel");
}

#[test]
fn nat_forwards_tcp_and_udp_to_three_backends() {
    forwarding("nat");
}
