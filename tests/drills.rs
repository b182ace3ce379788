//! The failover drills as tests: every scenario of [`failover_tests::drill`] runs against
//! the real daemon in a namespace lab and must meet its expectations (detection within
//! interval x fall + timeout + 100 ms, no failure and no new connection to a dead backend
//! after detection, no established connection lost on a healthy backend, and the
//! scenario's own). Each drill takes about 5 s; the file well under a minute.
//!
//! And `fo-drill` interrupted midway (SIGINT, right after it injected its fault) must exit
//! promptly leaving no namespace, process, pinned object, socket or config file behind.
//!
//! Needs root; run with `--test-threads=1` like every lab test.

use std::{
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use failover_tests::{
    drill::{
        self, Scenario,
        report::{self, Outcome},
    },
    lab::{Netns, list_namespaces},
};

/// Runs `scenario` and fails with the report if any expectation did not hold.
fn drill(scenario: Scenario) {
    let run =
        drill::run(scenario).unwrap_or_else(|e| panic!("drill {scenario} did not complete: {e:#}"));
    let outcome = [Outcome::Ran(Box::new(run.clone()))];
    let report = format!("{}{}", report::table(&outcome), report::details(&outcome));
    eprintln!("{report}");
    assert!(run.passed(), "drill {scenario} failed:\n{report}");
}

#[test]
fn crash() {
    drill(Scenario::Crash);
}

#[test]
fn blackhole() {
    drill(Scenario::Blackhole);
}

#[test]
fn hang() {
    drill(Scenario::Hang);
}

#[test]
fn http_fail() {
    drill(Scenario::HttpFail);
}

#[test]
fn flap() {
    drill(Scenario::Flap);
}

#[test]
fn tier_failover() {
    drill(Scenario::TierFailover);
}

#[test]
fn lb_restart() {
    drill(Scenario::LbRestart);
}

#[test]
fn reload() {
    drill(Scenario::Reload);
}

/// How long `fo-drill` may take to get to its fault.
const TO_FAULT: Duration = Duration::from_secs(30);
/// How long it may take to clean up and exit after SIGINT.
const PROMPT: Duration = Duration::from_secs(8);

/// Whether process `pid` is gone (or a zombie nobody reaped yet: it holds nothing).
fn gone(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status")).map_or(true, |s| s.contains("State:\tZ"))
}

/// The processes whose parent is `parent`.
fn children(parent: u32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                // pid (comm) state ppid ...: comm may hold spaces, so read after the ')'.
                stat.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok())
                    == Some(parent)
            })
        })
        .collect()
}

/// Interrupts `fo-drill SCENARIO` with SIGINT right after it injected its fault: the
/// hardest moments to clean up are a SIGSTOPped server (`hang`) and no daemon running
/// with its pins kept for the next one (`lb-restart`).
#[test]
fn interrupted_drill_leaves_nothing_behind() {
    for scenario in ["hang", "lb-restart"] {
        let out = std::env::temp_dir().join(format!("fo-drill-interrupted-{}", std::process::id()));
        let mut child = Command::new(env!("CARGO_BIN_EXE_fo-drill"))
            .arg("--out")
            .arg(&out)
            .arg(scenario)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start fo-drill");
        let stderr = child.stderr.take().expect("piped");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut seen = Vec::new();
        let mut prefix = None;
        let deadline = Instant::now() + TO_FAULT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = lines.recv_timeout(left) else {
                let _ = child.kill();
                panic!(
                    "fo-drill {scenario} never injected its fault:\n{}",
                    seen.join("\n")
                );
            };
            if let Some(rest) = line.split("] lab ").nth(1) {
                prefix = rest
                    .split_whitespace()
                    .next()
                    .map(|p| p.trim_end_matches(':').to_owned());
            }
            let faulted = line.contains("fault injected");
            seen.push(line);
            if faulted {
                break;
            }
        }
        let prefix = prefix.unwrap_or_else(|| panic!("no lab prefix in:\n{}", seen.join("\n")));
        assert!(
            prefix.starts_with("fo-") && prefix.ends_with('-'),
            "{prefix}"
        );

        // What it made, seen while it runs.
        let namespaces: Vec<String> = list_namespaces()
            .expect("list namespaces")
            .into_iter()
            .filter(|n| n.starts_with(&prefix))
            .collect();
        let mut pids: Vec<i32> = namespaces
            .iter()
            .flat_map(|n| Netns::existing(n).pids().unwrap_or_default())
            .collect();
        pids.extend(children(child.id()));
        let pin_dir = Path::new("/run/failover-test-bpf").join(format!("{prefix}lb"));
        let socket = format!("/run/failover/{prefix}sock");
        let config = std::env::temp_dir().join(format!("{prefix}lb-failover.toml"));
        assert!(namespaces.len() >= 5, "the lab is up: {namespaces:?}");
        assert!(pids.len() >= 3, "its servers and daemon run: {pids:?}");
        assert!(
            pin_dir.is_dir(),
            "the daemon's pins are there: {}",
            pin_dir.display()
        );

        let interrupted = Instant::now();
        // SAFETY: kill(2) takes plain integers; the child is not reaped yet.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait") {
                break status;
            }
            if interrupted.elapsed() > PROMPT {
                let _ = child.kill();
                panic!("fo-drill {scenario} did not exit within {PROMPT:?} of SIGINT");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let took = interrupted.elapsed();
        seen.extend(lines.try_iter());
        eprintln!(
            "fo-drill {scenario}: exited {status} {:.0} ms after SIGINT",
            took.as_secs_f64() * 1000.0
        );
        assert_eq!(status.code(), Some(130), "{}", seen.join("\n"));
        assert!(
            seen.iter().any(|l| l.contains("interrupted")),
            "{}",
            seen.join("\n")
        );

        let left: Vec<String> = list_namespaces()
            .expect("list namespaces")
            .into_iter()
            .filter(|n| n.starts_with(&prefix))
            .collect();
        assert!(left.is_empty(), "namespaces left behind: {left:?}");
        let alive: Vec<&i32> = pids.iter().filter(|&&p| !gone(p)).collect();
        assert!(
            alive.is_empty(),
            "processes left behind: {alive:?} of {pids:?}"
        );
        assert!(!pin_dir.exists(), "pins left behind: {}", pin_dir.display());
        let pinned: Vec<String> = std::fs::read_dir("/run/failover-test-bpf")
            .map(|d| {
                d.filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with(&prefix))
                    .collect()
            })
            .unwrap_or_default();
        assert!(pinned.is_empty(), "pinned objects left behind: {pinned:?}");
        assert!(
            !Path::new(&socket).exists(),
            "control socket left: {socket}"
        );
        assert!(!config.exists(), "config file left: {}", config.display());
        let _ = std::fs::remove_dir_all(&out);
    }
}
