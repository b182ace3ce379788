//! From what a drill observed (connection attempts, long-lived connections, the daemon's
//! timed log events) to figures and expectations judged pass or fail with a reason.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use super::{Scenario, rig::Check};
use crate::lab::traffic::{Attempt, Held};

/// Width of a timeline bucket.
pub const BUCKET: Duration = Duration::from_millis(50);
/// A connection started this long after the daemon logged the new selection can only
/// have seen the new table: the line is written after the table flip, so this only
/// covers reading the two clocks (microseconds) with room to spare.
pub(crate) const GRACE: Duration = Duration::from_millis(5);
/// Connections started this long before a fault were in flight when it struck: their
/// failure is the fault's, not a routing error.
pub(crate) const IN_FLIGHT: Duration = Duration::from_millis(100);

/// One backend made unusable by a fault, and what the daemon did about it.
#[derive(Debug, Clone)]
pub(crate) struct Outage {
    /// The backend's name.
    pub backend: String,
    /// When the fault was injected.
    pub fault: Instant,
    /// When the daemon logged the backend down.
    pub detected: Instant,
    /// When the daemon logged the selection without it (after the table flip).
    pub switched: Instant,
    /// When the daemon published it again; `None`: not within the drill.
    pub back: Option<Instant>,
}

/// Everything a scenario saw, before judging.
pub(crate) struct Observed {
    pub scenario: Scenario,
    pub check: Check,
    pub backends: Vec<String>,
    /// The (first) fault: time zero of the figures.
    pub fault: Instant,
    /// Whether the detection bound applies (a backend fault a health check can see).
    pub detection_applies: bool,
    pub outages: Vec<Outage>,
    /// When the service was steady again: backend back, backup or failback done, daemon
    /// back, reload applied, flapper held.
    pub settled: Option<Instant>,
    /// Vertical lines of the picture.
    pub markers: Vec<(Instant, String)>,
    pub attempts: Vec<Attempt>,
    pub expected_attempts: usize,
    pub held: Vec<Held>,
    /// Scenario-specific expectations, already judged.
    pub extra: Vec<Expectation>,
    /// What the daemon logged, with when.
    pub daemon_log: Vec<(Option<Instant>, String)>,
}

/// One thing that must hold, judged.
#[derive(Debug, Clone, PartialEq)]
pub struct Expectation {
    /// What must hold.
    pub what: String,
    /// Whether it held.
    pub passed: bool,
    /// The figures behind the verdict (the reason, when it failed).
    pub detail: String,
}

impl Expectation {
    /// An expectation judged `passed`, with its reason.
    pub fn new(what: impl Into<String>, passed: bool, detail: impl Into<String>) -> Self {
        Self {
            what: what.into(),
            passed,
            detail: detail.into(),
        }
    }
}

/// Who answered the new connections of one stretch of time, in percent per backend.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Share {
    /// Successful new connections in the stretch.
    pub replies: usize,
    /// Percent of them per backend, in the run's backend order (empty without replies).
    pub percent: Vec<f64>,
}

impl Share {
    /// Shares of the connections started in `[from, to)`.
    pub(crate) fn of(
        attempts: &[Attempt],
        backends: &[String],
        from: Instant,
        to: Instant,
    ) -> Self {
        let counts = replies_by_backend(attempts, from, to);
        let replies: usize = counts.values().sum();
        let percent = if replies == 0 {
            Vec::new()
        } else {
            backends
                .iter()
                .map(|b| 100.0 * counts.get(b).copied().unwrap_or(0) as f64 / replies as f64)
                .collect()
        };
        Self { replies, percent }
    }

    /// `33/33/34`, or `-` with fewer than 10 replies (too few for a share to mean much:
    /// e.g. the few milliseconds a reload takes to apply).
    pub fn compact(&self) -> String {
        if self.replies < 10 {
            return "-".into();
        }
        self.percent
            .iter()
            .map(|p| format!("{p:.0}"))
            .collect::<Vec<_>>()
            .join("/")
    }
}

/// A vertical line of the timeline.
#[derive(Debug, Clone, PartialEq)]
pub struct Marker {
    /// Milliseconds from the fault.
    pub at_ms: f64,
    /// What happened.
    pub label: String,
}

/// New connections per backend per [`BUCKET`], aligned on the fault.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Timeline {
    /// Index of the first bucket: bucket `k` covers `[50k, 50(k+1))` ms from the fault.
    pub first: i64,
    /// Per backend (run order), connections answered by it, per bucket.
    pub answered: Vec<Vec<u32>>,
    /// Failed connections per bucket.
    pub failed: Vec<u32>,
}

/// One outage's figures, in milliseconds from its fault.
#[derive(Debug, Clone, PartialEq)]
pub struct OutageFigures {
    /// The backend.
    pub backend: String,
    /// Fault, from the run's first fault.
    pub fault_ms: f64,
    /// Detection (the state-change log line), from this outage's fault.
    pub detection_ms: f64,
    /// Selection without the backend published, from this outage's fault.
    pub switch_ms: f64,
    /// Back in the selection, from this outage's fault.
    pub back_ms: Option<f64>,
}

/// A drill's result: figures, timeline and judged expectations.
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    /// Which drill.
    pub scenario: Scenario,
    /// The health check it configured.
    pub check: String,
    /// The backends, in order.
    pub backends: Vec<String>,
    /// The slowest detection over the outages, from each outage's fault.
    pub detection_ms: Option<f64>,
    /// From the fault until the service was steady again.
    pub settled_ms: Option<f64>,
    /// From a fault until the start of the last new connection that failed (the latest
    /// fault before it).
    pub last_failure_ms: Option<f64>,
    /// New connections opened.
    pub new_connections: usize,
    /// Of which failed.
    pub failed_new: usize,
    /// Long-lived connections on backends no fault touched.
    pub established_healthy: usize,
    /// Of which lost (must be 0).
    pub lost_established: usize,
    /// Before the fault, from the fault until settled, after settled.
    pub shares: [Share; 3],
    /// Per outage.
    pub outages: Vec<OutageFigures>,
    /// Fault, detection, recovery...
    pub markers: Vec<Marker>,
    /// New connections per backend per 50 ms.
    pub timeline: Timeline,
    /// What must hold, judged.
    pub expectations: Vec<Expectation>,
    /// What the daemon(s) logged, each line prefixed with its time in ms from the fault.
    pub daemon_log: Vec<String>,
}

impl Run {
    /// Whether every expectation held.
    pub fn passed(&self) -> bool {
        self.expectations.iter().all(|e| e.passed)
    }

    /// The expectations that did not hold.
    pub fn failures(&self) -> impl Iterator<Item = &Expectation> {
        self.expectations.iter().filter(|e| !e.passed)
    }
}

/// Signed milliseconds from `zero` to `t`.
pub(crate) fn ms_from(zero: Instant, t: Instant) -> f64 {
    if t >= zero {
        (t - zero).as_secs_f64() * 1000.0
    } else {
        -((zero - t).as_secs_f64() * 1000.0)
    }
}

/// Successful new connections started in `[from, to)`, per answering backend.
pub(crate) fn replies_by_backend(
    attempts: &[Attempt],
    from: Instant,
    to: Instant,
) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for a in attempts
        .iter()
        .filter(|a| a.started >= from && a.started < to)
    {
        if let Some(b) = a.backend() {
            *counts.entry(b.to_owned()).or_default() += 1;
        }
    }
    counts
}

/// Whether a `selection published` line gives `backend` new flows (`members=be-1:100,...`).
pub(crate) fn takes_new_flows(line: &str, backend: &str) -> bool {
    let Some(members) = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("members="))
    else {
        return false;
    };
    members.split(',').any(|m| {
        m.split_once(':')
            .is_some_and(|(name, weight)| name == backend && weight.parse::<u32>().is_ok())
    })
}

/// Judges what a drill observed.
pub(crate) fn evaluate(o: Observed) -> Run {
    let zero = o.fault;
    let end = o.attempts.iter().map(|a| a.started).max().unwrap_or(zero) + Duration::from_millis(1);
    let start = o.attempts.iter().map(|a| a.started).min().unwrap_or(zero);
    let mut expectations = Vec::new();

    expectations.push(Expectation::new(
        "every new connection of the stream ran",
        o.attempts.len() == o.expected_attempts,
        format!("{} of {}", o.attempts.len(), o.expected_attempts),
    ));

    if o.detection_applies {
        let bound = o.check.detection_bound();
        let slow: Vec<String> = o
            .outages
            .iter()
            .filter(|x| x.detected.saturating_duration_since(x.fault) > bound)
            .map(|x| format!("{} after {:.0} ms", x.backend, ms_from(x.fault, x.detected)))
            .collect();
        let all: Vec<String> = o
            .outages
            .iter()
            .map(|x| format!("{} {:.0} ms", x.backend, ms_from(x.fault, x.detected)))
            .collect();
        expectations.push(Expectation::new(
            format!(
                "detected within interval x fall + timeout + 100 ms = {} ms",
                bound.as_millis()
            ),
            slow.is_empty() && !o.outages.is_empty(),
            if slow.is_empty() {
                all.join(", ")
            } else {
                format!("too slow: {}", slow.join(", "))
            },
        ));
    }

    // Failures only while a fault is not yet handled.
    let failed: Vec<&Attempt> = o.attempts.iter().filter(|a| a.reply.is_err()).collect();
    let exposed = |a: &Attempt| {
        o.outages
            .iter()
            .any(|x| a.started + IN_FLIGHT >= x.fault && a.started <= x.switched + GRACE)
    };
    let stray: Vec<&&Attempt> = failed.iter().filter(|a| !exposed(a)).collect();
    let (what, detail) = if o.outages.is_empty() {
        (
            "no new connection fails".to_owned(),
            format!("{} of {} failed", failed.len(), o.attempts.len()),
        )
    } else {
        (
            "new connections fail only between a fault and its detection".to_owned(),
            format!(
                "{} of {} failed, {} of them outside",
                failed.len(),
                o.attempts.len(),
                stray.len()
            ),
        )
    };
    let detail = match stray.first() {
        Some(a) => format!(
            "{detail}; first at {:.0} ms: {}",
            ms_from(zero, a.started),
            a.reply.as_ref().err().map_or("", String::as_str)
        ),
        None => detail,
    };
    expectations.push(Expectation::new(what, stray.is_empty(), detail));

    if !o.outages.is_empty() {
        let mut wrong = Vec::new();
        for x in &o.outages {
            let until = x.back.unwrap_or(end);
            let n = replies_by_backend(&o.attempts, x.switched + GRACE, until)
                .get(&x.backend)
                .copied()
                .unwrap_or(0);
            if n > 0 {
                wrong.push(format!("{n} to {}", x.backend));
            }
        }
        expectations.push(Expectation::new(
            "no new connection goes to a dead backend after detection",
            wrong.is_empty(),
            if wrong.is_empty() {
                "none".to_owned()
            } else {
                wrong.join(", ")
            },
        ));
    }

    let faulty: BTreeSet<&str> = o.outages.iter().map(|x| x.backend.as_str()).collect();
    let healthy: Vec<&Held> = o
        .held
        .iter()
        .filter(|h| h.backend.as_deref().is_some_and(|b| !faulty.contains(b)))
        .collect();
    let lost: Vec<&&Held> = healthy.iter().filter(|h| h.error.is_some()).collect();
    let never = o.held.iter().filter(|h| h.backend.is_none()).count();
    let mut detail = format!("{} of {} lost", lost.len(), healthy.len());
    if let Some(h) = lost.first() {
        let (at, e) = h.error.as_ref().expect("lost");
        detail += &format!(
            "; first on {} at {:.0} ms: {e}",
            h.backend.as_deref().unwrap_or("?"),
            ms_from(zero, *at)
        );
    }
    if never > 0 {
        detail += &format!("; {never} never established");
    }
    expectations.push(Expectation::new(
        "no established connection on a healthy backend is lost",
        lost.is_empty() && never == 0 && !healthy.is_empty(),
        detail,
    ));
    // A healthy backend marked down (a check timing out on a loaded machine, say) cuts
    // its established flows: name it, so such a failure explains itself.
    let false_downs: Vec<String> = o
        .daemon_log
        .iter()
        .filter(|(_, line)| line.contains("backend state changed") && line.contains(" to=down"))
        .filter_map(|(at, line)| {
            let name = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("backend="))?;
            let at = (*at)?;
            let faulted = o.outages.iter().any(|x| x.backend == name && x.fault <= at);
            (!faulted).then(|| {
                let why = line.find("reason=").map_or("", |i| &line[i..]);
                format!("{name} at {:.0} ms ({why})", ms_from(zero, at))
            })
        })
        .collect();
    expectations.push(Expectation::new(
        "no backend is marked down without a fault",
        false_downs.is_empty(),
        if false_downs.is_empty() {
            "none".to_owned()
        } else {
            false_downs.join(", ")
        },
    ));
    expectations.extend(o.extra);

    let last_failure_ms = failed
        .iter()
        .map(|a| {
            let fault = o
                .outages
                .iter()
                .map(|x| x.fault)
                .filter(|&f| f <= a.started + IN_FLIGHT)
                .max()
                .unwrap_or(zero);
            ms_from(fault, a.started)
        })
        .max_by(f64::total_cmp);
    let settled = o.settled.unwrap_or(end);
    let shares = [
        Share::of(&o.attempts, &o.backends, start, zero),
        Share::of(&o.attempts, &o.backends, zero, settled),
        Share::of(&o.attempts, &o.backends, settled, end),
    ];
    let mut markers: Vec<Marker> = o
        .markers
        .iter()
        .map(|(t, label)| Marker {
            at_ms: ms_from(zero, *t),
            label: label.clone(),
        })
        .collect();
    markers.sort_by(|a, b| a.at_ms.total_cmp(&b.at_ms));

    Run {
        scenario: o.scenario,
        check: o.check.to_string(),
        detection_ms: o
            .outages
            .iter()
            .map(|x| ms_from(x.fault, x.detected))
            .max_by(f64::total_cmp),
        settled_ms: o.settled.map(|t| ms_from(zero, t)),
        last_failure_ms,
        new_connections: o.attempts.len(),
        failed_new: failed.len(),
        established_healthy: healthy.len(),
        lost_established: lost.len(),
        shares,
        outages: o
            .outages
            .iter()
            .map(|x| OutageFigures {
                backend: x.backend.clone(),
                fault_ms: ms_from(zero, x.fault),
                detection_ms: ms_from(x.fault, x.detected),
                switch_ms: ms_from(x.fault, x.switched),
                back_ms: x.back.map(|t| ms_from(x.fault, t)),
            })
            .collect(),
        markers,
        timeline: timeline(&o.attempts, &o.backends, zero),
        expectations,
        backends: o.backends,
        daemon_log: o
            .daemon_log
            .iter()
            .map(|(at, line)| match at {
                Some(at) => format!("{:+7.0} ms  {line}", ms_from(zero, *at)),
                None => format!("{:>10}  {line}", ""),
            })
            .collect(),
    }
}

/// Bucket index of `t`: bucket `k` covers `[50k, 50(k+1))` ms from `zero`.
fn bucket(zero: Instant, t: Instant) -> i64 {
    (ms_from(zero, t) / BUCKET.as_secs_f64() / 1000.0).floor() as i64
}

fn timeline(attempts: &[Attempt], backends: &[String], zero: Instant) -> Timeline {
    let (Some(first), Some(last)) = (
        attempts.iter().map(|a| bucket(zero, a.started)).min(),
        attempts.iter().map(|a| bucket(zero, a.started)).max(),
    ) else {
        return Timeline::default();
    };
    let len = usize::try_from(last - first + 1).unwrap_or(0);
    let mut answered = vec![vec![0u32; len]; backends.len()];
    let mut failed = vec![0u32; len];
    for a in attempts {
        let k = usize::try_from(bucket(zero, a.started) - first).unwrap_or(0);
        match a.backend() {
            Some(b) => {
                if let Some(i) = backends.iter().position(|x| x == b) {
                    answered[i][k] += 1;
                }
            }
            None => failed[k] += 1,
        }
    }
    Timeline {
        first,
        answered,
        failed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(zero: Instant, ms: u64, reply: Result<&str, &str>) -> Attempt {
        Attempt {
            started: zero + Duration::from_millis(ms),
            reply: reply.map(str::to_owned).map_err(str::to_owned),
        }
    }

    #[test]
    fn selection_lines_are_read_for_new_flow_members() {
        let line = "selection published service=web tier=Some(0) panic=false \
                    members=be-1:100,be-2:existing,be-3:300 reason=tier 0";
        assert!(takes_new_flows(line, "be-1"));
        assert!(!takes_new_flows(line, "be-2"));
        assert!(takes_new_flows(line, "be-3"));
        assert!(!takes_new_flows(line, "be-30"));
        assert!(!takes_new_flows("backend state changed", "be-1"));
    }

    #[test]
    fn a_failure_after_detection_and_a_lost_healthy_connection_fail_the_drill() {
        let zero = Instant::now();
        let backends: Vec<String> = ["be-1", "be-2"].map(String::from).to_vec();
        let attempts = vec![
            attempt(zero, 0, Ok("be-1 req-0")),
            attempt(zero, 100, Ok("be-2 req-1")),
            attempt(zero, 200, Ok("be-1 req-1")),
            attempt(zero, 300, Ok("be-2 req-1")),
            attempt(zero, 400, Ok("be-1 req-1")),
            attempt(zero, 500, Ok("be-2 req-1")),
            attempt(zero, 600, Ok("be-1 req-1")),
            attempt(zero, 700, Ok("be-2 req-1")),
            attempt(zero, 800, Ok("be-1 req-1")),
            attempt(zero, 900, Ok("be-2 req-1")),
            attempt(zero, 1000, Err("refused")), // before detection: the fault's
            attempt(zero, 1200, Ok("be-2 req-3")), // after the switch: routed to the dead one
            attempt(zero, 1300, Err("refused")), // after the switch: a stray failure
        ];
        let held = vec![
            Held {
                backend: Some("be-1".into()),
                exchanges: 3,
                error: Some((zero + Duration::from_millis(1100), "reset".into())),
            },
            Held {
                backend: Some("be-2".into()),
                exchanges: 3,
                error: Some((zero + Duration::from_millis(1100), "reset".into())),
            },
        ];
        let fault = zero + Duration::from_millis(990);
        let run = evaluate(Observed {
            scenario: Scenario::Crash,
            check: Check::tcp(),
            backends,
            fault,
            detection_applies: true,
            outages: vec![Outage {
                backend: "be-2".into(),
                fault,
                detected: fault + Duration::from_millis(60),
                switched: fault + Duration::from_millis(61),
                back: None,
            }],
            settled: None,
            markers: Vec::new(),
            attempts,
            expected_attempts: 13,
            held,
            extra: Vec::new(),
            daemon_log: vec![
                (
                    Some(fault - Duration::from_millis(300)),
                    "INFO failover::brain: backend state changed service=web backend=be-1 \
                     from=up to=down reason=timeout after 40ms"
                        .into(),
                ),
                (
                    Some(fault + Duration::from_millis(60)),
                    "INFO failover::brain: backend state changed service=web backend=be-2 \
                     from=up to=down reason=connection refused"
                        .into(),
                ),
            ],
        });
        let verdict: Vec<(&str, bool)> = run
            .expectations
            .iter()
            .map(|e| (e.what.as_str(), e.passed))
            .collect();
        assert_eq!(
            verdict,
            [
                ("every new connection of the stream ran", true),
                (
                    "detected within interval x fall + timeout + 100 ms = 240 ms",
                    true
                ),
                (
                    "new connections fail only between a fault and its detection",
                    false
                ),
                (
                    "no new connection goes to a dead backend after detection",
                    false
                ),
                (
                    "no established connection on a healthy backend is lost",
                    false
                ),
                ("no backend is marked down without a fault", false),
            ]
        );
        assert_eq!(
            run.expectations[5].detail,
            "be-1 at -300 ms (reason=timeout after 40ms)"
        );
        assert_eq!(run.daemon_log.len(), 2);
        assert!(
            run.daemon_log[0].starts_with("   -300 ms  INFO"),
            "{:?}",
            run.daemon_log
        );
        assert_eq!(run.failed_new, 2);
        assert_eq!((run.established_healthy, run.lost_established), (1, 1));
        assert_eq!(run.shares[0].compact(), "50/50");
        assert_eq!(run.timeline.first, -20);
        assert_eq!(run.timeline.failed.iter().sum::<u32>(), 2);
        assert!(!run.passed());
    }
}
