//! Failover drills: a chaos harness that injects one kind of fault into a lab under load
//! and measures what the load balancer did about it.
//!
//! Every drill builds its own lab (client, load balancer, backends `be-1..be-3` running
//! `fo-echo`), starts the real daemon with a fast health check ([`Check::tcp`]: every
//! 50 ms, 40 ms timeout, rise 2, fall 2), runs 200 new connections per second plus 30
//! long-lived ones, injects its fault at a known instant, repairs it, and judges:
//!
//! - detection within interval x fall + timeout + 100 ms (faults a check can see),
//! - new connections fail only between a fault and its detection, never after,
//! - no new connection reaches a dead backend after detection,
//! - no established connection on a healthy backend is lost,
//!
//! plus what the scenario itself is about (backup takes over, damping holds a flapper...).
//! A [`Run`] carries the figures, the timeline (new connections per backend per 50 ms) and
//! the judged expectations; [`report`] prints them and [`chart`] draws the timeline.
//!
//! Drills clean up through guards, on success, failure, panic, or interruption
//! ([`interrupt`]: SIGINT/SIGTERM make the running drill return at its next poll).
//! Needs root, and the `failover` and `fo-echo` binaries (see [`crate::daemon`]).

pub mod chart;
pub mod interrupt;
pub mod measure;
pub mod report;
mod rig;
mod scenarios;

use std::{fmt, str::FromStr, time::Instant};

pub use interrupt::Interrupted;
pub use measure::{Expectation, Marker, OutageFigures, Run, Share, Timeline};
pub use rig::Check;

/// One kind of fault a drill injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scenario {
    /// kill -9 a backend's server.
    Crash,
    /// A backend stops answering (its interface goes down).
    Blackhole,
    /// A backend's server stops responding but keeps its sockets (SIGSTOP).
    Hang,
    /// A backend's health endpoint answers 503.
    HttpFail,
    /// A backend goes down and up repeatedly.
    Flap,
    /// Every primary fails, the backup tier takes over, then failback.
    TierFailover,
    /// The daemon is killed (kill -9) and restarted.
    LbRestart,
    /// A config change (a weight) is reloaded under load.
    Reload,
}

impl Scenario {
    /// Every drill, in the order `fo-drill` runs them.
    pub const ALL: [Scenario; 8] = [
        Scenario::Crash,
        Scenario::Blackhole,
        Scenario::Hang,
        Scenario::HttpFail,
        Scenario::Flap,
        Scenario::TierFailover,
        Scenario::LbRestart,
        Scenario::Reload,
    ];

    /// The name on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Crash => "crash",
            Scenario::Blackhole => "blackhole",
            Scenario::Hang => "hang",
            Scenario::HttpFail => "http-fail",
            Scenario::Flap => "flap",
            Scenario::TierFailover => "tier-failover",
            Scenario::LbRestart => "lb-restart",
            Scenario::Reload => "reload",
        }
    }

    /// What the drill does, in one line.
    pub fn describe(self) -> &'static str {
        match self {
            Scenario::Crash => "kill -9 be-2's server, then start it again",
            Scenario::Blackhole => "be-2's interface down (no answer, no reset), then up",
            Scenario::Hang => "SIGSTOP be-2's server (sockets stay), then SIGCONT",
            Scenario::HttpFail => "be-2's health endpoint answers 503, then 200 (HTTP check)",
            Scenario::Flap => "be-2 crashes and restarts 3 times: damping holds it down",
            Scenario::TierFailover => {
                "kill both primaries: backup be-3 takes over; restart them: failback"
            }
            Scenario::LbRestart => "kill -9 the daemon, restart it 600 ms later",
            Scenario::Reload => "reload be-3's weight 100 -> 300 under load",
        }
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Scenario {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Scenario::ALL
            .into_iter()
            .find(|x| x.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Scenario::ALL.iter().map(|x| x.name()).collect();
                format!("no drill {s:?}: choose from {}", names.join(", "))
            })
    }
}

/// One progress line per phase, on stderr: `drill crash [ 2.3s] fault injected: ...`.
pub struct Progress {
    scenario: Scenario,
    started: Instant,
}

impl Progress {
    fn new(scenario: Scenario) -> Self {
        Self {
            scenario,
            started: Instant::now(),
        }
    }

    fn say(&self, what: &str) {
        eprintln!(
            "drill {} [{:4.1}s] {what}",
            self.scenario,
            self.started.elapsed().as_secs_f64()
        );
    }
}

/// Runs one drill; every namespace, process and pin it made is gone when this returns.
/// Fails with [`Interrupted`] (see [`anyhow::Error::is`]) after SIGINT/SIGTERM, and with
/// the reason when the drill could not run to its end (a log line that never came).
pub fn run(scenario: Scenario) -> anyhow::Result<Run> {
    let p = Progress::new(scenario);
    p.say(scenario.describe());
    let run = match scenario {
        Scenario::Crash | Scenario::Blackhole | Scenario::Hang | Scenario::HttpFail => {
            scenarios::one_backend(scenario, &p)
        }
        Scenario::Flap => scenarios::flap(&p),
        Scenario::TierFailover => scenarios::tier_failover(&p),
        Scenario::LbRestart => scenarios::lb_restart(&p),
        Scenario::Reload => scenarios::reload(&p),
    };
    match &run {
        Ok(r) if r.passed() => p.say("PASS"),
        Ok(r) => p.say(&format!(
            "FAIL: {}",
            r.failures()
                .map(|e| format!("{} ({})", e.what, e.detail))
                .collect::<Vec<_>>()
                .join("; ")
        )),
        Err(e) if e.is::<Interrupted>() => p.say("interrupted: lab torn down"),
        Err(e) => p.say(&format!("could not complete: {e:#}")),
    }
    run
}
