//! The shipped systemd unit (`examples/failover.service`) passes `systemd-analyze verify`,
//! with its binary path pointed at the freshly built `failover`.

use std::process::Command;

#[test]
fn unit_file_passes_systemd_analyze_verify() {
    let unit = include_str!("../examples/failover.service");
    let binary = failover_tests::daemon::failover_binary().expect("the failover binary");
    let dir = std::env::temp_dir().join(format!("fo-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("failover.service");
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/failover", binary.to_str().unwrap()),
    )
    .unwrap();
    let out = Command::new("systemd-analyze").arg("verify").arg(&path).output().unwrap_or_else(|e| {
        panic!("systemd-analyze is needed to check the unit file: {e} (install it: apt-get install systemd)")
    });
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "systemd-analyze verify failed: {stderr}"
    );
    let ours: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("failover.service"))
        .collect();
    assert!(
        ours.is_empty(),
        "systemd-analyze warns about the unit: {ours:?}"
    );
}

/// What `Type=notify` and `WatchdogSec=` rely on, checked without systemd as init: the
/// daemon sends `READY=1` once it forwards, `WATCHDOG=1` at half the watchdog interval
/// systemd passes in `WATCHDOG_USEC`, and `STOPPING=1` on SIGTERM, all to `NOTIFY_SOCKET`.
#[test]
fn daemon_notifies_ready_watchdog_and_stopping() {
    use failover_tests::{
        daemon::Daemon,
        lab::{Lab, Listen, Server},
        xdp,
    };
    use std::{os::unix::net::UnixDatagram, time::Duration};

    let lab = Lab::new(1).expect("lab");
    let _pass = xdp::pass_on_lb_peer(&lab).expect("pass program");
    let _server = Server::start(
        lab.backend(1).ns(),
        "be-1",
        &[Listen::Tcp(([0, 0, 0, 0], 80).into())],
    )
    .expect("server");
    let dir = std::env::temp_dir().join(format!("fo-notify-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("notify.sock");
    let socket = UnixDatagram::bind(&path).expect("bind NOTIFY_SOCKET");
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let config = format!(
        "interface = \"{}\"\ncontrol_socket = \"/run/failover/{}sock\"\n[[service]]\nname = \"web\"\nvip = \"198.18.0.10\"\nport = 80\nprotocol = \"tcp\"\nmode = \"dsr\"\n  [service.check]\n  type = \"tcp\"\n  interval = \"100ms\"\n  timeout = \"50ms\"\n  [[service.backend]]\n  name = \"be-1\"\n  address = \"{}\"\n",
        lab.lb_if(),
        lab.prefix(),
        lab.backend(1).ipv4()
    );
    let mut daemon = Daemon::start_with_env(
        lab.lb().ns(),
        &config,
        &[
            ("NOTIFY_SOCKET", path.to_str().unwrap()),
            ("WATCHDOG_USEC", "400000"),
        ],
    )
    .expect("daemon");
    let read = |limit: Duration| {
        let end = std::time::Instant::now() + limit;
        let mut got = Vec::new();
        let mut buf = [0u8; 512];
        while std::time::Instant::now() < end {
            if let Ok(n) = socket.recv(&mut buf) {
                got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
        got
    };
    let running = read(Duration::from_millis(1200));
    let status = daemon.stop().expect("SIGTERM");
    let stopping = read(Duration::from_millis(300));
    let _ = std::fs::remove_dir_all(&dir);
    assert!(status.success(), "{}", daemon.log.join("\n"));
    assert!(
        running
            .first()
            .is_some_and(|m| m.lines().any(|l| l == "READY=1")),
        "READY=1 first, once forwarding: {running:?}"
    );
    let pings = running
        .iter()
        .filter(|m| m.lines().any(|l| l == "WATCHDOG=1"))
        .count();
    assert!(
        (4..=8).contains(&pings),
        "WATCHDOG=1 every 200 ms (half of WATCHDOG_USEC) for 1.2 s: {pings} in {running:?}"
    );
    assert!(
        stopping
            .iter()
            .any(|m| m.lines().any(|l| l == "STOPPING=1")),
        "STOPPING=1 on SIGTERM: {stopping:?}"
    );
}
