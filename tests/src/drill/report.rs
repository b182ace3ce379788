//! The drills' report: a table with one row per drill, the judged expectations behind
//! each verdict, and the same as JSON.

use std::fmt::Write as _;

use serde_json::{Value, json};

use super::{Run, Scenario};

/// What became of one drill.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// It ran to its end and was judged.
    Ran(Box<Run>),
    /// It could not run to its end (an expected event never came, a setup step failed).
    Broken {
        /// Which drill.
        scenario: Scenario,
        /// Why.
        error: String,
    },
}

impl Outcome {
    /// The drill.
    pub fn scenario(&self) -> Scenario {
        match self {
            Outcome::Ran(run) => run.scenario,
            Outcome::Broken { scenario, .. } => *scenario,
        }
    }

    /// Whether it ran and every expectation held.
    pub fn passed(&self) -> bool {
        matches!(self, Outcome::Ran(run) if run.passed())
    }
}

const HEADERS: [&str; 10] = [
    "scenario",
    "detect ms",
    "last fail ms",
    "failed new",
    "lost est.",
    "settled ms",
    "before %",
    "during %",
    "after %",
    "result",
];

/// What the columns mean, printed under the table.
pub const LEGEND: &str = "\
detect: fault to the daemon's down verdict (slowest backend); last fail: fault to the start of
the last new connection that failed; failed new: failed / all new connections (200/s); lost est.:
established connections lost on healthy backends / held there; settled: fault until steady
again (backend back, failback done, daemon back, reload applied, flapper held);
before/during/after %: share of new connections answered by be-1/be-2/be-3 before the fault,
from the fault until settled, and after.";

fn ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.0}"))
}

fn row(outcome: &Outcome) -> Vec<String> {
    match outcome {
        Outcome::Ran(r) => vec![
            r.scenario.name().into(),
            ms(r.detection_ms),
            ms(r.last_failure_ms),
            format!("{}/{}", r.failed_new, r.new_connections),
            format!("{}/{}", r.lost_established, r.established_healthy),
            ms(r.settled_ms),
            r.shares[0].compact(),
            r.shares[1].compact(),
            r.shares[2].compact(),
            if r.passed() { "PASS" } else { "FAIL" }.into(),
        ],
        Outcome::Broken { scenario, .. } => {
            let mut cells = vec![scenario.name().to_owned()];
            cells.extend(std::iter::repeat_n("-".to_owned(), HEADERS.len() - 2));
            cells.push("FAIL (did not complete)".into());
            cells
        }
    }
}

/// The table: one row per drill, then the legend.
pub fn table(outcomes: &[Outcome]) -> String {
    let rows: Vec<Vec<String>> = outcomes.iter().map(row).collect();
    let widths: Vec<usize> = (0..HEADERS.len())
        .map(|c| {
            rows.iter()
                .map(|r| r[c].len())
                .chain([HEADERS[c].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: &[String]| {
        let mut out = String::new();
        for (c, cell) in cells.iter().enumerate() {
            // Text left, figures right.
            if c == 0 || c >= 6 {
                let _ = write!(out, "{cell:<w$}  ", w = widths[c]);
            } else {
                let _ = write!(out, "{cell:>w$}  ", w = widths[c]);
            }
        }
        out.trim_end().to_owned() + "\n"
    };
    let mut out = line(&HEADERS.map(String::from));
    out += &line(&widths.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>());
    for r in &rows {
        out += &line(r);
    }
    out += "\n";
    out += LEGEND;
    out += "\n";
    out
}

/// Every drill's expectations with their figures, and what broke the drills that did not
/// complete.
pub fn details(outcomes: &[Outcome]) -> String {
    let mut out = String::new();
    for o in outcomes {
        let s = o.scenario();
        let _ = writeln!(out, "\n{s}: {}", s.describe());
        match o {
            Outcome::Ran(r) => {
                let _ = writeln!(out, "  check: {}", r.check);
                for x in &r.outages {
                    let _ = writeln!(
                        out,
                        "  {}: fault at {:.0} ms, down after {:.0} ms, out of the table after {:.0} ms, back after {}",
                        x.backend,
                        x.fault_ms,
                        x.detection_ms,
                        x.switch_ms,
                        x.back_ms.map_or_else(
                            || "- (not within the drill)".into(),
                            |v| format!("{v:.0} ms")
                        )
                    );
                }
                for e in &r.expectations {
                    let verdict = if e.passed { "pass" } else { "FAIL" };
                    let _ = writeln!(out, "  {verdict}  {}: {}", e.what, e.detail);
                }
                if !r.passed() {
                    let _ = writeln!(out, "  the daemon's log:");
                    for line in &r.daemon_log {
                        let _ = writeln!(out, "    {line}");
                    }
                }
            }
            Outcome::Broken { error, .. } => {
                let _ = writeln!(out, "  FAIL  did not complete: {error}");
            }
        }
    }
    out
}

/// The outcomes as JSON: figures, timelines and expectations.
pub fn json(outcomes: &[Outcome]) -> Value {
    Value::Array(outcomes.iter().map(outcome_json).collect())
}

fn outcome_json(o: &Outcome) -> Value {
    match o {
        Outcome::Broken { scenario, error } => json!({
            "scenario": scenario.name(),
            "passed": false,
            "error": error,
        }),
        Outcome::Ran(r) => json!({
            "scenario": r.scenario.name(),
            "description": r.scenario.describe(),
            "passed": r.passed(),
            "check": r.check,
            "backends": r.backends,
            "detection_ms": r.detection_ms,
            "last_failure_ms": r.last_failure_ms,
            "settled_ms": r.settled_ms,
            "new_connections": r.new_connections,
            "failed_new": r.failed_new,
            "established_healthy": r.established_healthy,
            "lost_established": r.lost_established,
            "shares_percent": {
                "before": r.shares[0].percent,
                "during": r.shares[1].percent,
                "after": r.shares[2].percent,
            },
            "outages": r.outages.iter().map(|x| json!({
                "backend": x.backend,
                "fault_ms": x.fault_ms,
                "detection_ms": x.detection_ms,
                "switch_ms": x.switch_ms,
                "back_ms": x.back_ms,
            })).collect::<Vec<_>>(),
            "markers": r.markers.iter().map(|m| json!({"at_ms": m.at_ms, "label": m.label}))
                .collect::<Vec<_>>(),
            "timeline": {
                "bucket_ms": super::measure::BUCKET.as_millis() as u64,
                "first_bucket_ms": r.timeline.first * super::measure::BUCKET.as_millis() as i64,
                "answered": r.backends.iter().zip(&r.timeline.answered)
                    .map(|(b, counts)| (b.clone(), json!(counts)))
                    .collect::<serde_json::Map<_, _>>(),
                "failed": r.timeline.failed,
            },
            "daemon_log": r.daemon_log,
            "expectations": r.expectations.iter().map(|e| json!({
                "what": e.what,
                "passed": e.passed,
                "detail": e.detail,
            })).collect::<Vec<_>>(),
        }),
    }
}
