//! End-to-end failover: the real daemon, real servers and clients in network namespaces,
//! backends killed, blackholed and revived under a steady stream of new connections and
//! long-lived ones. What must hold: a dead backend stops getting new flows within one check
//! interval (+100 ms), flows on healthy backends are never disturbed, failback follows
//! the configured policy.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use failover_tests::{
    daemon::Daemon,
    lab::{
        Lab, Listen, Server,
        traffic::{Attempt, Held, Persistent, Stream},
    },
    xdp,
};

const VIP: &str = "198.18.0.10:80";

/// A lab with `n` backends serving TCP 80, each named `be-N` (its replies say so).
struct Rig {
    servers: Vec<Server>,
    _pass: aya::Ebpf,
    lab: Lab,
    mode: String,
}

impl Rig {
    fn new(n: usize) -> Self {
        Self::with_mode(n, "dsr")
    }

    /// `nat` backends listen on 8080 and route replies to the client through the lb.
    fn with_mode(n: usize, mode: &str) -> Self {
        let lab = Lab::new(n).expect("build the lab");
        let pass = xdp::pass_on_lb_peer(&lab).expect("attach the pass program");
        let port = if mode == "nat" { 8080 } else { 80 };
        if mode == "nat" {
            for b in lab.backends() {
                b.ns()
                    .ip(["route", "add", "198.18.0.2/32", "via", "198.18.0.1"])
                    .expect("route via the lb");
            }
        }
        let servers = lab
            .backends()
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let listen = [Listen::Tcp(std::net::SocketAddr::from((
                    [0, 0, 0, 0],
                    port,
                )))];
                Server::start(b.ns(), &format!("be-{}", i + 1), &listen).expect("server")
            })
            .collect();
        Self {
            servers,
            _pass: pass,
            lab,
            mode: mode.to_owned(),
        }
    }

    /// A `web` service over the lab's backends; `backend_extra(i)` adds keys per backend.
    fn config(
        &self,
        service_extra: &str,
        check: &str,
        backend_extra: &dyn Fn(usize) -> String,
    ) -> String {
        let mut s = format!(
            "interface = \"{}\"\ncontrol_socket = \"/run/failover/{}sock\"\nflow_capacity = 65536\n[[service]]\nname = \"web\"\nvip = \"198.18.0.10\"\nport = 80\nprotocol = \"tcp\"\nmode = \"{}\"\n{service_extra}\n  [service.check]\n{check}\n",
            self.lab.lb_if(),
            self.lab.prefix(),
            self.mode
        );
        let port = if self.mode == "nat" {
            "  port = 8080\n"
        } else {
            ""
        };
        for (i, b) in self.lab.backends().iter().enumerate() {
            s += &format!(
                "  [[service.backend]]\n  name = \"be-{}\"\n  address = \"{}\"\n{port}{}",
                i + 1,
                b.ipv4(),
                backend_extra(i)
            );
        }
        s
    }
}

fn vip() -> SocketAddr {
    VIP.parse().unwrap()
}

fn failures(attempts: &[Attempt]) -> Vec<&Attempt> {
    attempts.iter().filter(|a| a.reply.is_err()).collect()
}

/// No long-lived connection on a backend other than `dead` saw an error.
fn assert_healthy_undisturbed(held: &[Held], dead: &str) {
    for h in held {
        if h.backend.as_deref() != Some(dead) {
            assert!(
                h.error.is_none(),
                "an established connection on a healthy backend was disturbed: {h:?}"
            );
        }
    }
}

/// `n` new connections from `client` to `target`: every one is answered, none by `avoid`.
fn assert_served_without(
    client: &failover_tests::lab::Netns,
    target: SocketAddr,
    n: usize,
    avoid: &str,
    why: &str,
) {
    let replies =
        failover_tests::lab::client::tcp_requests(client, target, n, Duration::from_secs(2), 8);
    let prefix = format!("{avoid} ");
    assert!(
        replies
            .iter()
            .all(|r| r.as_ref().is_ok_and(|s| !s.starts_with(&prefix))),
        "{why}: {replies:?}"
    );
}

/// The tests' health check: every 50 ms, down after 2 failures, up after 2 successes.
const FAST_CHECK: &str =
    "  type = \"tcp\"\n  interval = \"50ms\"\n  timeout = \"40ms\"\n  rise = 2\n  fall = 2\n";

/// `n` long-lived connections from `client` to the VIP, each exchanging a message every
/// 100 ms for `lasting`.
fn hold(client: &failover_tests::lab::Netns, n: usize, lasting: Duration) -> Persistent {
    Persistent::start(client, vip(), n, Duration::from_millis(100), lasting)
}

/// `n` new connections from `client` to the VIP.
fn requests(client: &failover_tests::lab::Netns, n: usize) -> Vec<failover_tests::lab::Reply> {
    failover_tests::lab::client::tcp_requests(client, vip(), n, Duration::from_secs(2), 8)
}

/// Whether `who` answered every one of `replies`.
fn only(replies: &[failover_tests::lab::Reply], who: &str) -> bool {
    let prefix = format!("{who} ");
    replies
        .iter()
        .all(|r| r.as_ref().is_ok_and(|s| s.starts_with(&prefix)))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// kill -9 under 100 new connections per second: out within one interval + 100 ms, at most
/// 6 new connections fail, none to a healthy backend, established ones untouched.
#[test]
fn killed_backend_is_out_within_one_interval() {
    killed_backend_is_out(FAST_CHECK, "kill -9");
}

/// The same with half-open checks (a SYN from a raw socket; the kill makes the backend's
/// kernel answer it with a reset).
#[test]
fn killed_backend_is_out_within_one_interval_with_half_open_checks() {
    killed_backend_is_out(
        &format!("{FAST_CHECK}  half_open = true\n"),
        "half-open, kill -9",
    );
}

fn killed_backend_is_out(check: &str, label: &str) {
    let mut rig = Rig::new(3);
    let interval = Duration::from_millis(50);
    let mut daemon = Daemon::start(
        rig.lab.lb().ns(),
        &rig.config("", check, &|_| String::new()),
    )
    .expect("daemon");

    let client = rig.lab.client().ns();
    let held = hold(client, 30, Duration::from_secs(4));
    let stream = Stream::start(client, vip(), 100, 400, Duration::from_secs(3));
    std::thread::sleep(Duration::from_millis(1500));
    let killed = Instant::now();
    rig.servers[1].kill9();
    daemon
        .wait_for_all(&["backend=be-2", "to=down"], Duration::from_secs(3))
        .expect("the daemon notices");
    let noticed = killed.elapsed();
    let attempts = stream.join();
    let held = held.join();

    let failed = failures(&attempts);
    let last_failure = failed
        .iter()
        .map(|a| a.started.saturating_duration_since(killed))
        .max();
    eprintln!(
        "{label}: detected after {:.1} ms (log), {} of {} new connections failed, last failure started {:.1} ms after the kill",
        ms(noticed),
        failed.len(),
        attempts.len(),
        last_failure.map_or(0.0, ms)
    );
    assert_eq!(attempts.len(), 400, "every connection of the stream ran");
    assert!(
        noticed <= interval + Duration::from_millis(100),
        "detection took {:.1} ms",
        ms(noticed)
    );
    assert!(
        failed.len() <= 6,
        "{} new connections failed (at most 6 allowed): {:?}",
        failed.len(),
        failed
    );
    if let Some(last) = last_failure {
        assert!(
            last <= interval + Duration::from_millis(100),
            "a new connection still failed {:.1} ms after the kill",
            ms(last)
        );
    }
    for a in &failed {
        assert!(
            a.started >= killed,
            "a connection failed before the kill: {a:?}"
        );
    }
    let after: Vec<&Attempt> = attempts
        .iter()
        .filter(|a| a.started > killed + interval + Duration::from_millis(100))
        .collect();
    assert!(
        after.iter().all(|a| a.backend() != Some("be-2")),
        "be-2 still got new connections after detection"
    );
    assert_healthy_undisturbed(&held, "be-2");
    assert!(
        held.iter()
            .filter(|h| h.backend.as_deref() != Some("be-2"))
            .count()
            >= 10,
        "enough long-lived connections on healthy backends"
    );
}

/// In `nat` mode the packet path sees the dead backend reset new connections: it reports
/// it at once (the daemon checks that backend immediately) and hides the reset, so the
/// client's SYN retransmission is re-picked: no new connection fails.
#[test]
fn nat_killed_backend_fails_no_connection() {
    let mut rig = Rig::with_mode(3, "nat");
    let check = FAST_CHECK;
    let mut daemon = Daemon::start(
        rig.lab.lb().ns(),
        &rig.config("", check, &|_| String::new()),
    )
    .expect("daemon");
    let client = rig.lab.client().ns();
    let held = hold(client, 30, Duration::from_secs(5));
    let stream = Stream::start(client, vip(), 100, 300, Duration::from_secs(4));
    std::thread::sleep(Duration::from_millis(1000));
    let killed = Instant::now();
    rig.servers[1].kill9();
    daemon
        .wait_for_all(&["backend=be-2", "to=down"], Duration::from_secs(3))
        .expect("the daemon notices");
    let noticed = killed.elapsed();
    let attempts = stream.join();
    let held = held.join();
    let failed = failures(&attempts);
    eprintln!(
        "nat kill -9: detected after {:.1} ms; {} of {} new connections failed",
        ms(noticed),
        failed.len(),
        attempts.len()
    );
    assert!(
        noticed <= Duration::from_millis(150),
        "detection took {:.1} ms",
        ms(noticed)
    );
    assert!(
        failed.is_empty(),
        "{} new connections failed in nat mode: {:?}",
        failed.len(),
        failed
    );
    assert_healthy_undisturbed(&held, "be-2");
}

/// A blackholed backend (its link down: no answer, no reset) is detected by timeout within
/// interval x fall + timeout + 100 ms, and no new connection fails: the clients' SYN
/// retransmissions are re-picked onto healthy backends.
#[test]
fn blackholed_backend_is_out_by_timeout_and_no_connection_fails() {
    blackholed_backend_is_out(BLACKHOLE_CHECK, "blackhole");
}

/// The same with half-open checks: an unanswered SYN times out.
#[test]
fn blackholed_backend_is_out_by_timeout_with_half_open_checks() {
    blackholed_backend_is_out(
        &format!("{BLACKHOLE_CHECK}  half_open = true\n"),
        "half-open, blackhole",
    );
}

const BLACKHOLE_CHECK: &str =
    "  type = \"tcp\"\n  interval = \"100ms\"\n  timeout = \"50ms\"\n  rise = 2\n  fall = 2\n";

fn blackholed_backend_is_out(check: &str, label: &str) {
    let rig = Rig::new(3);
    let mut daemon = Daemon::start(
        rig.lab.lb().ns(),
        &rig.config("", check, &|_| String::new()),
    )
    .expect("daemon");
    let client = rig.lab.client().ns();
    let held = hold(client, 30, Duration::from_secs(5));
    let stream = Stream::start(client, vip(), 100, 300, Duration::from_secs(4));
    std::thread::sleep(Duration::from_millis(1000));
    let b2 = rig.lab.backend(2);
    let cut = Instant::now();
    b2.ns()
        .ip(["link", "set", "dev", b2.ifname(), "down"])
        .expect("link down");
    daemon
        .wait_for_all(&["backend=be-2", "to=down"], Duration::from_secs(3))
        .expect("the daemon notices");
    let noticed = cut.elapsed();
    let attempts = stream.join();
    let held = held.join();
    let slowest = attempts.iter().filter(|a| a.started >= cut).count();
    eprintln!(
        "{label}: detected after {:.1} ms; {} connections started after the cut",
        ms(noticed),
        slowest
    );
    // interval x fall + timeout + 100 ms
    let bound = Duration::from_millis(100 * 2 + 50 + 100);
    assert!(
        noticed <= bound,
        "detection took {:.1} ms, bound {:.0} ms",
        ms(noticed),
        ms(bound)
    );
    let failed = failures(&attempts);
    assert!(
        failed.is_empty(),
        "{} new connections failed; they must only be delayed: {:?}",
        failed.len(),
        failed
    );
    assert_healthy_undisturbed(&held, "be-2");
}

/// Active-passive with automatic failback: the backup takes over when the primary dies;
/// when the primary returns, new connections go back to it only after the hold, and
/// connections established on the backup stay there.
#[test]
fn backup_takes_over_and_auto_failback_waits_for_the_hold() {
    let mut rig = Rig::new(2);
    let check = FAST_CHECK;
    let tiers = |i: usize| format!("  tier = {i}\n");
    let cfg = rig.config(
        "failback = \"auto\"\nfailback_hold = \"1s\"\n",
        check,
        &tiers,
    );
    let mut daemon = Daemon::start(rig.lab.lb().ns(), &cfg).expect("daemon");
    let client = rig.lab.client().ns();
    let probe = |n: usize| requests(client, n);
    let first = probe(20);
    assert!(
        only(&first, "be-1"),
        "the primary takes every connection at first: {first:?}"
    );

    rig.servers[0].kill9();
    daemon
        .wait_for_all(&["backend=be-1", "to=down"], Duration::from_secs(3))
        .expect("primary down");
    daemon
        .wait_for_all(
            &["selection published", "members=be-2:100"],
            Duration::from_secs(3),
        )
        .expect("backup active");
    let on_backup = hold(client, 10, Duration::from_secs(4));
    std::thread::sleep(Duration::from_millis(200));
    assert!(only(&probe(20), "be-2"), "the backup takes over");

    rig.servers[0].restart().expect("restart the primary");
    let back = Instant::now();
    daemon
        .wait_for_all(&["backend=be-1", "to=up"], Duration::from_secs(3))
        .expect("primary up again");
    std::thread::sleep(Duration::from_millis(300));
    assert!(back.elapsed() < Duration::from_millis(900));
    assert!(only(&probe(10), "be-2"), "no failback before the 1 s hold");
    daemon
        .wait_for_all(
            &["selection published", "members=be-1:100"],
            Duration::from_secs(3),
        )
        .expect("failback");
    let waited = back.elapsed();
    assert!(
        waited >= Duration::from_millis(1000),
        "failback after {:.0} ms, before the hold",
        ms(waited)
    );
    assert!(
        only(&probe(20), "be-1"),
        "after the hold, new connections go to the primary"
    );
    for h in on_backup.join() {
        assert_eq!(h.backend.as_deref(), Some("be-2"), "{h:?}");
        assert!(
            h.error.is_none(),
            "a connection established on the backup was disturbed by failback: {h:?}"
        );
    }
}

/// Manual failback (the safe choice for a database primary): the service stays on the
/// backup after the primary recovers.
#[test]
fn manual_failback_stays_on_the_backup() {
    let mut rig = Rig::new(2);
    let check = FAST_CHECK;
    let tiers = |i: usize| format!("  tier = {i}\n");
    let cfg = rig.config("failback = \"manual\"\nexactly_one = true\n", check, &tiers);
    let mut daemon = Daemon::start(rig.lab.lb().ns(), &cfg).expect("daemon");
    let client = rig.lab.client().ns();
    let probe = |n: usize| requests(client, n);
    let first = probe(20);
    assert!(
        only(&first, "be-1"),
        "exactly one: the primary takes every connection: {first:?}"
    );
    rig.servers[0].kill9();
    daemon
        .wait_for_all(&["backend=be-1", "to=down"], Duration::from_secs(3))
        .expect("primary down");
    std::thread::sleep(Duration::from_millis(100));
    assert!(only(&probe(20), "be-2"), "the standby takes over");
    rig.servers[0].restart().expect("restart the primary");
    daemon
        .wait_for_all(&["backend=be-1", "to=up"], Duration::from_secs(3))
        .expect("primary up again");
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        only(&probe(20), "be-2"),
        "manual failback: the service stays on the standby"
    );
}

/// Runs the `failover` CLI against the lab's daemon; returns (exit ok, stdout, stderr).
fn cli(rig: &Rig, args: &[&str]) -> (bool, String, String) {
    let socket = format!("/run/failover/{}sock", rig.lab.prefix());
    let out = std::process::Command::new(failover_tests::daemon::failover_binary().unwrap())
        .args(args)
        .args(["--socket", &socket])
        .output()
        .expect("run the failover CLI");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// Manual failover from the CLI: drain keeps established flows and takes no new ones,
/// disable cuts them, enable brings the backend back; status shows it all.
#[test]
fn operator_drains_disables_and_enables_from_the_cli() {
    let rig = Rig::new(3);
    let check = "  type = \"tcp\"\n  interval = \"100ms\"\n  timeout = \"50ms\"\n";
    let config = format!(
        "metrics_listen = \"127.0.0.1:9464\"\n{}",
        rig.config("drain_timeout = \"30s\"\n", check, &|_| String::new())
    );
    let daemon = Daemon::start(rig.lab.lb().ns(), &config).expect("daemon");
    let client = rig.lab.client().ns();
    let held = hold(client, 30, Duration::from_secs(3));
    std::thread::sleep(Duration::from_millis(300));

    let (ok, out, err) = cli(&rig, &["drain", "web", "be-2"]);
    assert!(ok, "drain failed: {out}{err}");
    assert!(out.contains("draining"), "{out}");
    let probe = |n| requests(client, n);
    assert_served_without(
        client,
        vip(),
        60,
        "be-2",
        "a draining backend takes no new flows",
    );
    let held = held.join();
    for h in &held {
        assert!(
            h.error.is_none(),
            "draining must not disturb established flows: {h:?}"
        );
    }
    assert!(
        held.iter().any(|h| h.backend.as_deref() == Some("be-2")),
        "some long-lived connections were on be-2"
    );

    let (ok, out, _) = cli(&rig, &["status", "--json"]);
    assert!(ok);
    let status: serde_json::Value = serde_json::from_str(&out).expect("status --json is JSON");
    let be2 = &status["services"][0]["backends"][1];
    assert_eq!(be2["name"], "be-2");
    assert_eq!(be2["state"], "draining", "{be2}");
    assert_eq!(be2["new_flows"], false);

    let (ok, out, err) = cli(&rig, &["disable", "web", "be-2"]);
    assert!(ok && out.contains("disabled"), "{out}{err}");
    let (ok, out, err) = cli(&rig, &["enable", "web", "be-2"]);
    assert!(ok, "{out}{err}");
    std::thread::sleep(Duration::from_millis(500));
    let replies = probe(90);
    assert!(
        replies
            .iter()
            .any(|r| r.as_ref().is_ok_and(|s| s.starts_with("be-2 "))),
        "enabled again, be-2 takes new flows: {replies:?}"
    );

    // Prometheus, scraped inside the load balancer's namespace.
    let metrics = failover_tests::lab::run_in(rig.lab.lb().ns(), || {
        use std::io::{Read as _, Write as _};
        let Ok(mut s) = std::net::TcpStream::connect("127.0.0.1:9464") else {
            return String::from("connection refused");
        };
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut body = String::new();
        let _ = s.read_to_string(&mut body);
        body
    });
    assert!(
        metrics.starts_with("HTTP/1.1 200"),
        "{metrics}\n{}",
        daemon.log.join("\n")
    );
    assert!(
        metrics.contains("failover_backend_up{service=\"web\",backend=\"be-1\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("failover_backend_packets_total{service=\"web\",backend=\"be-2\"}"),
        "{metrics}"
    );

    let (ok, out, _) = cli(&rig, &["events"]);
    assert!(
        ok && out.contains("be-2") && out.contains("draining"),
        "events list the operator's actions: {out}"
    );
    let (ok, _, err) = cli(&rig, &["drain", "web", "nope"]);
    assert!(
        !ok && err.contains("no backend \"nope\""),
        "a precise error: {err}"
    );
    let (ok, out, err) = cli(&rig, &["explain", "web", "198.18.0.2:40000"]);
    assert!(
        ok && out.contains("be-"),
        "explain names a backend: {out}{err}"
    );
}

/// Restarts without loss: the daemon stops (SIGTERM) or crashes (SIGKILL) while clients
/// keep connecting; forwarding goes on with the pinned tables, the next daemon adopts them
/// and swaps its program in. No connection, new or established, is lost.
#[test]
fn daemon_stop_crash_and_restart_lose_no_connection() {
    let rig = Rig::new(3);
    let check = "  type = \"tcp\"\n  interval = \"100ms\"\n  timeout = \"50ms\"\n";
    let cfg = rig.config("", check, &|_| String::new());
    let ns = rig.lab.lb().ns();
    let mut first = Daemon::start(ns, &cfg).expect("first daemon");
    let client = rig.lab.client().ns();
    let held = hold(client, 30, Duration::from_secs(6));
    let stream = Stream::start(client, vip(), 50, 250, Duration::from_secs(3));
    std::thread::sleep(Duration::from_millis(1000));

    first.keep_pins();
    let status = first.stop().expect("SIGTERM");
    assert!(status.success(), "clean exit: {}", first.log.join("\n"));
    assert!(
        first.log.iter().any(|l| l.contains("forwarding continues")),
        "{}",
        first.log.join("\n")
    );
    std::thread::sleep(Duration::from_millis(700)); // no daemon at all

    let mut second = Daemon::start(ns, &cfg).expect("second daemon");
    assert!(
        second
            .log
            .iter()
            .any(|l| l.contains("adopted the pinned tables")),
        "{}",
        second.log.join("\n")
    );
    assert!(
        second.log.iter().any(|l| l.contains("adopted_link=true")),
        "first:\n{}\nsecond:\n{}",
        first.log.join("\n"),
        second.log.join("\n")
    );
    std::thread::sleep(Duration::from_millis(700));
    second.keep_pins();
    second.kill9(); // a crash
    std::thread::sleep(Duration::from_millis(700));
    let third = Daemon::start(ns, &cfg).expect("third daemon");
    assert!(
        third.log.iter().any(|l| l.contains("adopted_link=true")),
        "{}",
        third.log.join("\n")
    );

    let attempts = stream.join();
    let failed = failures(&attempts);
    assert_eq!(attempts.len(), 250);
    assert!(
        failed.is_empty(),
        "{} new connections failed across restarts: {:?}",
        failed.len(),
        failed
    );
    for h in held.join() {
        assert!(
            h.error.is_none(),
            "an established connection was disturbed by a restart: {h:?}"
        );
        assert!(h.exchanges >= 40, "it kept exchanging: {h:?}");
    }
    drop(third);
}

/// Live reload: a weight change applies to that service only, keeps every established
/// connection; a config that fails validation is rejected with its file, line and key,
/// and the running config stays; a change the loaded maps cannot hold is refused with
/// what to do.
#[test]
fn reload_applies_the_difference_and_rejects_bad_configs() {
    let rig = Rig::new(3);
    let check = "  type = \"tcp\"\n  interval = \"100ms\"\n  timeout = \"50ms\"\n";
    let weights = |w2: u32| {
        move |i: usize| {
            if i == 1 {
                format!("  weight = {w2}\n")
            } else {
                String::new()
            }
        }
    };
    let daemon =
        Daemon::start(rig.lab.lb().ns(), &rig.config("", check, &weights(100))).expect("daemon");
    let path = daemon.config_path().to_owned();
    let client = rig.lab.client().ns();
    let held = hold(client, 30, Duration::from_secs(3));
    std::thread::sleep(Duration::from_millis(300));

    // be-2 to weight 0: it takes no new flows, keeps its established ones.
    daemon
        .rewrite_config(&rig.config("", check, &weights(0)))
        .unwrap();
    let (ok, out, err) = cli(&rig, &["reload"]);
    assert!(ok && out.contains("changed: web"), "{out}{err}");
    assert_served_without(client, vip(), 60, "be-2", "weight 0: no new flows");

    // A bad value: rejected, with the file, the line and the key.
    let bad = rig
        .config("", check, &weights(0))
        .replace("interval", "intervall");
    daemon.rewrite_config(&bad).unwrap();
    let (ok, _, err) = cli(&rig, &["reload"]);
    assert!(
        !ok && err.contains("intervall") && err.contains(&path.display().to_string()),
        "{err}"
    );
    // A change the loaded maps cannot hold (a bigger connection table): refused, saying
    // what to do.
    let bigger = rig
        .config("", check, &weights(0))
        .replace("flow_capacity = 65536", "flow_capacity = 1000000");
    daemon.rewrite_config(&bigger).unwrap();
    let (ok, _, err) = cli(&rig, &["reload"]);
    assert!(
        !ok && err.contains("IPv4 connection-table entries") && err.contains("Restart the daemon"),
        "{err}"
    );
    // Still serving with the last good config.
    assert_served_without(
        client,
        vip(),
        30,
        "be-2",
        "still serving with the last good config",
    );
    for h in held.join() {
        assert!(
            h.error.is_none(),
            "a reload disturbed an established connection: {h:?}"
        );
    }
}

/// A reload that adds a service and removes a backend, under long-lived connections: no
/// connection on the other backends is lost, the new service serves once its backends
/// are checked, the removed backend takes no new flow; then a daemon crash and restart
/// adopts the reloaded tables (ids read back from the pinned maps) and still loses nothing.
#[test]
fn reload_adds_a_service_and_removes_a_backend_losing_no_connection() {
    let rig = Rig::new(3);
    let check = "  type = \"tcp\"\n  interval = \"100ms\"\n  timeout = \"50ms\"\n";
    let ns = rig.lab.lb().ns();
    let mut first = Daemon::start(ns, &rig.config("", check, &|_| String::new())).expect("daemon");
    let client = rig.lab.client().ns();
    let held = hold(client, 45, Duration::from_secs(7));
    std::thread::sleep(Duration::from_millis(500));

    // web loses be-2; a new service `api` on another VIP uses all three.
    let web = rig.config("", check, &|_| String::new());
    let without_be2: String = {
        let at = web
            .find("  [[service.backend]]\n  name = \"be-2\"")
            .unwrap();
        let end = web[at + 1..].find("  [[service.backend]]").unwrap() + at + 1;
        format!("{}{}", &web[..at], &web[end..])
    };
    let api: String = web[web.find("[[service]]").unwrap()..]
        .replace("name = \"web\"", "name = \"api\"")
        .replace("vip = \"198.18.0.10\"", "vip = \"198.18.0.11\"");
    let new = format!("{without_be2}{api}");
    first.rewrite_config(&new).unwrap();
    let (ok, out, err) = cli(&rig, &["reload"]);
    assert!(
        ok && out.contains("added: api") && out.contains("changed: web"),
        "{out}{err}"
    );
    let api_vip: SocketAddr = "198.18.0.11:80".parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut served = Vec::new();
    while Instant::now() < deadline {
        served = failover_tests::lab::client::tcp_requests(
            client,
            api_vip,
            5,
            Duration::from_millis(500),
            5,
        );
        if served.iter().all(Result::is_ok) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        served.iter().all(Result::is_ok),
        "the added service serves: {served:?}"
    );
    assert_served_without(
        client,
        vip(),
        60,
        "be-2",
        "no new flow to the removed backend",
    );

    // Crash and restart with the reloaded config: the ids are read back from the maps.
    first.keep_pins();
    first.kill9();
    std::thread::sleep(Duration::from_millis(300));
    let second = Daemon::start(ns, &new).expect("restart");
    assert!(
        second
            .log
            .iter()
            .any(|l| l.contains("adopted the pinned tables")),
        "{}",
        second.log.join("\n")
    );
    let after =
        failover_tests::lab::client::tcp_requests(client, api_vip, 30, Duration::from_secs(2), 8);
    assert!(after.iter().all(Result::is_ok), "{after:?}");
    let held = held.join();
    assert_healthy_undisturbed(&held, "be-2");
    let survivors = held
        .iter()
        .filter(|h| h.backend.as_deref() != Some("be-2"))
        .count();
    assert!(
        survivors >= 20,
        "connections on be-1 and be-3 ran: {held:?}"
    );
    assert!(
        held.iter()
            .filter(|h| h.backend.as_deref() != Some("be-2"))
            .all(|h| h.exchanges >= 50),
        "every surviving connection kept exchanging through the reload and restart: {held:?}"
    );
}

/// Exactly-one (a database primary): while the primary is killed and revived under a
/// steady stream of new connections, no 50 ms window ever sees two backends take new
/// connections.
#[test]
fn exactly_one_never_serves_two_at_once() {
    let mut rig = Rig::new(3);
    let check = FAST_CHECK;
    let cfg = rig.config(
        "exactly_one = true\nfailback = \"auto\"\nfailback_hold = \"500ms\"\n",
        check,
        &|_| String::new(),
    );
    let mut daemon = Daemon::start(rig.lab.lb().ns(), &cfg).expect("daemon");
    let stream = Stream::start(
        rig.lab.client().ns(),
        vip(),
        200,
        800,
        Duration::from_secs(3),
    );
    std::thread::sleep(Duration::from_millis(800));
    let active = "be-1"; // best by tier, then weight, then name
    let index = active.trim_start_matches("be-").parse::<usize>().unwrap() - 1;
    rig.servers[index].kill9();
    daemon
        .wait_for_all(&["backend=be-1", "to=down"], Duration::from_secs(3))
        .expect("down");
    std::thread::sleep(Duration::from_millis(700));
    rig.servers[index].restart().expect("restart");
    let attempts = stream.join();
    let start = attempts.iter().map(|a| a.started).min().unwrap();
    let mut windows: std::collections::BTreeMap<u128, std::collections::BTreeSet<String>> =
        Default::default();
    for a in &attempts {
        if let Some(b) = a.backend() {
            windows
                .entry(a.started.duration_since(start).as_millis() / 50)
                .or_default()
                .insert(b.to_owned());
        }
    }
    let used: std::collections::BTreeSet<&String> = windows.values().flatten().collect();
    assert!(
        used.len() >= 2,
        "the standby took over at some point: {used:?}"
    );
    for (w, backends) in &windows {
        assert!(
            backends.len() <= 1,
            "window {}-{} ms: new connections went to {backends:?}",
            w * 50,
            w * 50 + 50
        );
    }
}

/// A backend that accepts TCP but whose health endpoint answers HTTP 503 is marked down by
/// the HTTP check (with the reason), and takes no new connections.
#[test]
fn http_503_backend_is_marked_down() {
    let lab = Lab::new(3).expect("lab");
    let pass = xdp::pass_on_lb_peer(&lab).expect("pass program");
    let _servers: Vec<Server> = lab
        .backends()
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let status = if i == 1 { 503 } else { 200 };
            let listen = [
                Listen::Tcp("0.0.0.0:80".parse().unwrap()),
                Listen::Http("0.0.0.0:8008".parse().unwrap(), status),
            ];
            Server::start(b.ns(), &format!("be-{}", i + 1), &listen).expect("server")
        })
        .collect();
    let rig_cfg = Rig {
        servers: Vec::new(),
        _pass: pass,
        lab,
        mode: "dsr".into(),
    };
    let check = "  type = \"http\"\n  port = 8008\n  path = \"/healthz\"\n  status = \"200\"\n  interval = \"100ms\"\n  timeout = \"50ms\"\n";
    let cfg = rig_cfg.config("", check, &|_| String::new());
    let mut daemon = Daemon::start(rig_cfg.lab.lb().ns(), &cfg).expect("daemon");
    let _ = daemon.wait_for_all(&["selection published"], Duration::from_secs(2));
    let status = daemon.log.join("\n");
    assert!(
        status.contains("backend=be-2 from=unknown to=down reason=HTTP 503"),
        "{status}"
    );
    assert_served_without(
        rig_cfg.lab.client().ns(),
        vip(),
        60,
        "be-2",
        "a backend answering 503 takes no new flows",
    );
}
