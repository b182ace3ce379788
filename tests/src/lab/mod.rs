//! The network-namespace lab: a client, a load balancer and backends in their own
//! namespaces on one bridge, test servers inside them, and client traffic.
//!
//! Everything a lab creates is named with its own `fo-…` prefix and is removed by guards,
//! also when a test panics. Needs root, `ip` (iproute2) and the `fo-echo` binary of this
//! crate (see [`server::echo_binary`]).
//!
//! ```text
//! let lab = Lab::new(2)?;
//! let _web1 = Server::start(lab.backend(1).ns(), "web-1", &Listen::all(80))?;
//! let replies = client::tcp_requests(lab.client().ns(), "198.18.0.101:80".parse()?,
//!     10, Duration::from_secs(2), 4);
//! assert_eq!(Tally::of(&replies).count("web-1"), 10);
//! ```

pub mod branch;
pub mod client;
pub mod netns;
pub mod server;
pub mod sys;
pub mod topology;
pub mod traffic;

pub use client::{Reply, Tally};
pub use netns::{Netns, NsGuard, list_namespaces, run_in};
pub use server::{Listen, Server};
pub use topology::{CLIENT_V4, CLIENT_V6, LB_V4, LB_V6, Lab, MAX_BACKENDS, Node, VIPS_V4, VIPS_V6};

#[cfg(test)]
mod tests {
    //! Self-tests of the lab, without any load balancer: the client talks to the backends'
    //! own addresses. Need root; run with `--test-threads=1` next to other labs' tests.

    use std::{net::SocketAddr, time::Duration};

    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(2);

    fn backend_addr(lab: &Lab, i: usize, v6: bool, port: u16) -> SocketAddr {
        let node = lab.backend(i);
        if v6 {
            (node.ipv6(), port).into()
        } else {
            (node.ipv4(), port).into()
        }
    }

    #[test]
    fn client_reaches_backends_directly_and_lab_cleans_up() {
        let lab = Lab::new(2).expect("lab");
        let prefix = lab.prefix().to_owned();
        let servers: Vec<Server> = (1..=2)
            .map(|i| {
                Server::start(lab.backend(i).ns(), &format!("web-{i}"), &Listen::all(80))
                    .expect("fo-echo")
            })
            .collect();

        for v6 in [false, true] {
            for i in 1..=2 {
                let name = format!("web-{i}");
                let target = backend_addr(&lab, i, v6, 80);
                let tcp = client::tcp_requests(lab.client().ns(), target, 20, TIMEOUT, 5);
                let tally = Tally::of(&tcp);
                assert_eq!(tally.count(&name), 20, "TCP to {target}: {tally}");
                assert_eq!(tcp[7].as_deref(), Ok(format!("{name} req-7").as_str()));
                let udp = client::udp_requests(lab.client().ns(), target, 20, TIMEOUT, 5);
                let tally = Tally::of(&udp);
                assert_eq!(tally.count(&name), 20, "UDP to {target}: {tally}");
            }
        }

        drop(servers);
        drop(lab);
        let left: Vec<String> = list_namespaces()
            .expect("list namespaces")
            .into_iter()
            .filter(|name| name.starts_with(&prefix))
            .collect();
        assert!(left.is_empty(), "namespaces left behind: {left:?}");
    }

    /// The backends' VIP setup, checked with plain kernel routing in the lb namespace standing
    /// in for the load balancer: the backend accepts the VIP on `lo`, answers the client
    /// directly, and UDP answers come from the VIP.
    #[test]
    fn backend_answers_a_vip_routed_to_it_directly_from_the_vip() {
        let lab = Lab::new(2).expect("lab");
        let _web2 = Server::start(lab.backend(2).ns(), "web-2", &Listen::all(80)).expect("echo");
        let b2 = lab.backend(2);
        for (vip, via) in [
            (VIPS_V4[0].to_string(), b2.ipv4().to_string()),
            (VIPS_V6[0].to_string(), b2.ipv6().to_string()),
        ] {
            lab.lb()
                .ns()
                .ip(["route", "add", &vip, "via", &via])
                .expect("route");
        }
        for target in [
            SocketAddr::from((VIPS_V4[0], 80)),
            SocketAddr::from((VIPS_V6[0], 80)),
        ] {
            let tcp = client::tcp_requests(lab.client().ns(), target, 10, TIMEOUT, 5);
            assert_eq!(Tally::of(&tcp).count("web-2"), 10, "{}", Tally::of(&tcp));
            let udp = client::udp_requests(lab.client().ns(), target, 10, TIMEOUT, 5);
            assert_eq!(Tally::of(&udp).count("web-2"), 10, "{}", Tally::of(&udp));
        }
    }

    #[test]
    fn a_panicking_test_leaves_no_namespace() {
        let mut prefix = String::new();
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let lab = Lab::new(1).expect("lab");
            prefix = lab.prefix().to_owned();
            panic!("test failure inside a lab");
        }));
        assert!(outcome.is_err());
        let left: Vec<String> = list_namespaces()
            .expect("list namespaces")
            .into_iter()
            .filter(|name| name.starts_with(&prefix))
            .collect();
        assert!(!prefix.is_empty() && left.is_empty(), "left: {left:?}");
    }

    #[test]
    fn lab_turns_tx_checksum_offload_off_on_both_veth_ends() {
        let lab = Lab::new(1).expect("lab");
        for node in [lab.client(), lab.lb(), lab.backend(1)] {
            let inside = sys::tx_checksum_enabled(node.ns(), node.ifname()).expect("ethtool");
            let bridged =
                sys::tx_checksum_enabled(lab.switch(), node.peer_in_switch()).expect("ethtool");
            assert!(!inside && !bridged, "{} still offloads", node.ifname());
        }
    }

    #[test]
    fn server_restarts_after_kill9_and_namespace_drop_kills_leftovers() {
        let lab = Lab::new(1).expect("lab");
        let target = backend_addr(&lab, 1, false, 8080);
        let mut server = Server::start(
            lab.backend(1).ns(),
            "web-1",
            &[Listen::Tcp(([0, 0, 0, 0], 8080).into())],
        )
        .expect("fo-echo");
        server.kill9();
        let down = client::tcp_requests(lab.client().ns(), target, 1, TIMEOUT, 1);
        assert!(down[0].is_err(), "a killed server answered: {down:?}");
        server.restart().expect("restart");
        let up = client::tcp_requests(lab.client().ns(), target, 3, TIMEOUT, 3);
        assert_eq!(Tally::of(&up).count("web-1"), 3, "{}", Tally::of(&up));

        // A process the test forgot: the namespace guard must kill it.
        let pid = server.pid().expect("running");
        std::mem::forget(server);
        drop(lab);
        let gone = (0..100).any(|_| {
            std::thread::sleep(Duration::from_millis(20));
            !std::path::Path::new(&format!("/proc/{pid}/status")).exists()
                || std::fs::read_to_string(format!("/proc/{pid}/status"))
                    .is_ok_and(|s| s.contains("State:\tZ"))
        });
        assert!(gone, "fo-echo {pid} survived its namespace");
    }

    #[test]
    fn entering_a_namespace_is_per_thread_and_restored() {
        let ns =
            Netns::new(&format!("fo-{:03}selftest", std::process::id() % 1000)).expect("netns");
        let here = std::fs::read_link("/proc/thread-self/ns/net").expect("ns");
        let inside = run_in(&ns, || {
            std::fs::read_link("/proc/thread-self/ns/net").expect("ns")
        });
        assert_ne!(here, inside);
        {
            let _guard = ns.enter().expect("enter");
            assert_eq!(
                std::fs::read_link("/proc/thread-self/ns/net").expect("ns"),
                inside
            );
        }
        assert_eq!(
            std::fs::read_link("/proc/thread-self/ns/net").expect("ns"),
            here
        );
    }
}
