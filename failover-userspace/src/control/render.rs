//! Text output of the control commands: pure functions from responses (and rates) to text.

use std::{collections::HashMap, fmt::Write as _};

use super::protocol::{CounterView, EventView, Explanation, ServiceStatus, Status, TrafficView};

/// Per-second rates of one [`TrafficView`] between two samples.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrafficRate {
    /// Packets per second.
    pub packets: f64,
    /// Bytes per second.
    pub bytes: f64,
    /// New flows per second.
    pub new_flows: f64,
}

impl TrafficRate {
    /// The rates from `prev` to `cur`, `secs` apart; `None` if `secs` is not positive or a
    /// counter went backwards (the daemon restarted or the counters were reset).
    pub fn between(prev: &TrafficView, cur: &TrafficView, secs: f64) -> Option<Self> {
        Some(Self {
            packets: per_second(prev.packets, cur.packets, secs)?,
            bytes: per_second(prev.bytes, cur.bytes, secs)?,
            new_flows: per_second(prev.new_flows, cur.new_flows, secs)?,
        })
    }
}

fn per_second(prev: u64, cur: u64, secs: f64) -> Option<f64> {
    let delta = cur.checked_sub(prev)?;
    // A rate for display: f64's 53 bits of mantissa are plenty.
    (secs > 0.0).then(|| delta as f64 / secs)
}

/// Rates of every service, backend and counter between two [`Status`] samples, matched by
/// name (a service or backend missing from either sample has none).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Rates {
    services: HashMap<String, TrafficRate>,
    backends: HashMap<(String, String), TrafficRate>,
    counters: HashMap<String, f64>,
}

impl Rates {
    /// The rates from `prev` to `cur`, over the daemon's uptime between them; `None` if
    /// the uptime did not advance (the same sample twice, or the daemon restarted).
    pub fn between(prev: &Status, cur: &Status) -> Option<Self> {
        let secs = cur.uptime_secs - prev.uptime_secs;
        if !secs.is_finite() || secs <= 0.0 {
            return None;
        }
        let mut rates = Self::default();
        for service in &cur.services {
            let Some(old) = prev.services.iter().find(|s| s.name == service.name) else {
                continue;
            };
            if let Some(r) = TrafficRate::between(&old.traffic, &service.traffic, secs) {
                rates.services.insert(service.name.clone(), r);
            }
            for backend in &service.backends {
                let Some(old) = old.backends.iter().find(|b| b.name == backend.name) else {
                    continue;
                };
                if let Some(r) = TrafficRate::between(&old.traffic, &backend.traffic, secs) {
                    let key = (service.name.clone(), backend.name.clone());
                    rates.backends.insert(key, r);
                }
            }
        }
        for counter in &cur.counters {
            let Some(old) = prev.counters.iter().find(|c| c.name == counter.name) else {
                continue;
            };
            if let Some(r) = per_second(old.value, counter.value, secs) {
                rates.counters.insert(counter.name.clone(), r);
            }
        }
        Some(rates)
    }

    /// The rates of service `service`.
    pub fn service(&self, service: &str) -> Option<TrafficRate> {
        self.services.get(service).copied()
    }

    /// The rates of backend `backend` of service `service`.
    pub fn backend(&self, service: &str, backend: &str) -> Option<TrafficRate> {
        self.backends
            .get(&(service.to_owned(), backend.to_owned()))
            .copied()
    }

    /// The per-second rate of counter `name`.
    pub fn counter(&self, name: &str) -> Option<f64> {
        self.counters.get(name).copied()
    }
}

/// A duration in seconds the way an operator reads it: `0s`, `3s`, `2m5s`, `1h2m`, `3d4h`.
/// Whole seconds, rounded down; negative or non-finite values read `0s`.
pub fn human_duration(secs: f64) -> String {
    // Float-to-int `as` saturates, and the value is clamped to be positive first.
    let s = if secs.is_finite() && secs > 0.0 {
        secs.floor() as u64
    } else {
        0
    };
    let (d, h, m, s) = (s / 86_400, s / 3_600 % 24, s / 60 % 60, s % 60);
    let pair = |big: u64, bu: &str, small: u64, su: &str| {
        if small == 0 {
            format!("{big}{bu}")
        } else {
            format!("{big}{bu}{small}{su}")
        }
    };
    if d > 0 {
        pair(d, "d", h, "h")
    } else if h > 0 {
        pair(h, "h", m, "m")
    } else if m > 0 {
        pair(m, "m", s, "s")
    } else {
        format!("{s}s")
    }
}

/// A per-second rate, short: `0`, `0.5`, `42`, `1.2k`, `12.3M`, `4.0G`.
pub fn human_rate(per_sec: f64) -> String {
    if !per_sec.is_finite() || per_sec <= 0.0 {
        return "0".to_owned();
    }
    if per_sec < 10.0 {
        return format!("{per_sec:.1}");
    }
    if per_sec < 1_000.0 {
        return format!("{per_sec:.0}");
    }
    let mut value = per_sec;
    for unit in ["k", "M", "G", "T"] {
        value /= 1_000.0;
        if value < 999.95 {
            return format!("{value:.1}{unit}");
        }
    }
    format!("{value:.1}P")
}

/// `failover status` as text: a header, one table per service, then the non-zero drop and
/// pass counters. Without `rates` the rate columns show `-`.
///
/// ```text
/// failover 0.1.0 on eth0, up 2h3m
/// switch time: last 120us, median 100us, max 300us (12 switches)
///
/// web  198.18.0.10:80/tcp  dsr  tier 0  (tier 0 healthy)
///   NAME   ADDRESS   STATE  SINCE  WHY              CHECK(ms)  TIER  WEIGHT  PKT/s  BYTES/s  FLOWS/s
///   web-1  10.0.0.1  up     3s     3 checks passed        0.4     0     100   1.2k   120.0k      3.5
/// ```
///
/// WEIGHT is the configured weight, followed by the weight in the Maglev table in
/// parentheses when that differs: `(-)` when the backend is not in the table.
pub fn status(status: &Status, rates: Option<&Rates>) -> String {
    let mut out = format!(
        "failover {} on {}, up {}\n",
        status.version,
        status.interface,
        human_duration(status.uptime_secs)
    );
    match &status.switch_time_us {
        Some(t) => {
            let _ = writeln!(
                out,
                "switch time: last {}us, median {}us, max {}us ({} switches)",
                t.last, t.median, t.max, t.samples
            );
        }
        None => out.push_str("switch time: no switch yet\n"),
    }
    for service in &status.services {
        out.push('\n');
        out.push_str(&service_table(service, rates));
    }
    out.push('\n');
    out.push_str(&counters(&status.counters, rates));
    out
}

/// The header line and backend table of one service.
fn service_table(service: &ServiceStatus, rates: Option<&Rates>) -> String {
    let host = if service.vip.contains(':') {
        format!("[{}]", service.vip)
    } else {
        service.vip.clone()
    };
    let port = if service.port == "all" {
        "*"
    } else {
        &service.port
    };
    let selection = match (service.active_tier, service.panic) {
        (Some(t), false) => format!("tier {t}"),
        (Some(t), true) => format!("tier {t}  PANIC"),
        (None, true) => "PANIC".to_owned(),
        (None, false) => "no active tier".to_owned(),
    };
    let mut out = format!(
        "{}  {host}:{port}/{}  {}  {selection}  ({})\n",
        service.name, service.protocol, service.mode, service.reason
    );
    let header = [
        "NAME",
        "ADDRESS",
        "STATE",
        "SINCE",
        "WHY",
        "CHECK(ms)",
        "TIER",
        "WEIGHT",
        "PKT/s",
        "BYTES/s",
        "FLOWS/s",
    ];
    let right = [
        false, false, false, false, false, true, true, true, true, true, true,
    ];
    let rows: Vec<Vec<String>> = service
        .backends
        .iter()
        .map(|b| {
            let rate = rates.and_then(|r| r.backend(&service.name, &b.name));
            let shown = |f: fn(&TrafficRate) -> f64| {
                rate.as_ref()
                    .map_or_else(|| "-".to_owned(), |r| human_rate(f(r)))
            };
            let weight = match b.table_weight {
                Some(w) if w == b.weight => b.weight.to_string(),
                Some(w) => format!("{} ({w})", b.weight),
                None => format!("{} (-)", b.weight),
            };
            vec![
                b.name.clone(),
                b.address.clone(),
                b.state.clone(),
                human_duration(b.since_secs),
                if b.reason.is_empty() {
                    "-".to_owned()
                } else {
                    b.reason.clone()
                },
                b.last_check_latency_ms
                    .map_or_else(|| "-".to_owned(), |ms| format!("{ms:.1}")),
                b.tier.to_string(),
                weight,
                shown(|r| r.packets),
                shown(|r| r.bytes),
                shown(|r| r.new_flows),
            ]
        })
        .collect();
    if !rows.is_empty() {
        out.push_str(&table(Some(&header), &rows, &right, "  "));
    }
    out
}

/// The non-zero drop and pass counters, with their rates when known; one line saying so
/// when there are none.
pub fn counters(counters: &[CounterView], rates: Option<&Rates>) -> String {
    let rows: Vec<Vec<String>> = counters
        .iter()
        .filter(|c| c.value != 0 && (c.name.starts_with("drop_") || c.name.starts_with("pass_")))
        .map(|c| {
            let mut row = vec![c.name.clone(), c.value.to_string()];
            if let Some(r) = rates.and_then(|r| r.counter(&c.name)) {
                row.push(format!("{}/s", human_rate(r)));
            }
            row
        })
        .collect();
    if rows.is_empty() {
        return "drop/pass counters: all zero\n".to_owned();
    }
    let mut out = "drop/pass counters:\n".to_owned();
    out.push_str(&table(None, &rows, &[false, true, true], "  "));
    out
}

/// `failover events`: one line per event, oldest first:
/// `-12.3s  web/web-2  up -> down: connect refused`.
pub fn events(events: &[EventView]) -> String {
    if events.is_empty() {
        return "no events\n".to_owned();
    }
    let rows: Vec<Vec<String>> = events
        .iter()
        .map(|e| {
            let age = if e.age_secs < 60.0 {
                format!("-{:.1}s", e.age_secs.max(0.0))
            } else {
                format!("-{}", human_duration(e.age_secs))
            };
            let subject = match &e.backend {
                Some(b) => format!("{}/{b}", e.service),
                None => e.service.clone(),
            };
            vec![age, subject, e.what.clone()]
        })
        .collect();
    table(None, &rows, &[true, false, false], "")
}

/// `failover explain`: where the client's packets go, then how that was decided.
pub fn explanation(e: &Explanation) -> String {
    let target = match (&e.backend, e.tier) {
        (Some(b), Some(t)) => format!("{b} (tier {t})"),
        (Some(b), None) => b.clone(),
        (None, _) => "no backend".to_owned(),
    };
    format!(
        "{}: client {} -> {target}\n  {}\n",
        e.service, e.client, e.how
    )
}

/// Lays out `rows` in columns two spaces apart, each line starting with `indent`;
/// `right[i]` right-aligns column `i`. Trailing spaces are trimmed.
fn table(header: Option<&[&str]>, rows: &[Vec<String>], right: &[bool], indent: &str) -> String {
    let header: Option<Vec<String>> = header.map(|h| h.iter().map(|s| (*s).to_owned()).collect());
    let lines: Vec<&Vec<String>> = header.iter().chain(rows).collect();
    let columns = lines.iter().map(|l| l.len()).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|i| {
            lines
                .iter()
                .filter_map(|l| l.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for line in lines {
        let mut text = indent.to_owned();
        for (i, cell) in line.iter().enumerate() {
            if i > 0 {
                text.push_str("  ");
            }
            let w = widths[i];
            if right.get(i).copied().unwrap_or(false) {
                let _ = write!(text, "{cell:>w$}");
            } else {
                let _ = write!(text, "{cell:<w$}");
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::protocol::{BackendStatusView, SwitchTimes, tests::sample_status};

    fn traffic(packets: u64, bytes: u64, new_flows: u64) -> TrafficView {
        TrafficView {
            packets,
            bytes,
            new_flows,
        }
    }

    fn backend(name: &str, state: &str, tier: u32, table_weight: Option<u32>) -> BackendStatusView {
        BackendStatusView {
            name: name.into(),
            address: format!("10.0.0.{}", name.len()),
            state: state.into(),
            since_secs: 125.7,
            reason: String::new(),
            last_check_latency_ms: None,
            tier,
            weight: 100,
            table_weight,
            new_flows: table_weight.is_some(),
            traffic: traffic(0, 0, 0),
        }
    }

    #[test]
    fn human_durations() {
        for (secs, text) in [
            (-1.0, "0s"),
            (f64::NAN, "0s"),
            (0.4, "0s"),
            (3.9, "3s"),
            (59.0, "59s"),
            (60.0, "1m"),
            (125.0, "2m5s"),
            (3_600.0, "1h"),
            (3_725.0, "1h2m"),
            (86_400.0 * 3.0 + 3_600.0 * 4.0 + 59.0, "3d4h"),
        ] {
            assert_eq!(human_duration(secs), text, "{secs}");
        }
    }

    #[test]
    fn human_rates() {
        for (rate, text) in [
            (0.0, "0"),
            (-3.0, "0"),
            (0.5, "0.5"),
            (42.4, "42"),
            (999.4, "999"),
            (1_234.0, "1.2k"),
            (999_960.0, "1.0M"),
            (12_300_000.0, "12.3M"),
            (4e9, "4.0G"),
        ] {
            assert_eq!(human_rate(rate), text, "{rate}");
        }
    }

    #[test]
    fn rates_from_two_samples() {
        let prev = sample_status();
        let mut cur = sample_status();
        cur.uptime_secs = prev.uptime_secs + 2.0;
        cur.services[0].traffic = traffic(300, 50_000, 14);
        cur.services[0].backends[0].traffic = traffic(300, 50_000, 14);
        cur.counters[0].value = 13;

        let rates = Rates::between(&prev, &cur).unwrap();
        let expected = TrafficRate {
            packets: 100.0,
            bytes: 20_000.0,
            new_flows: 2.0,
        };
        assert_eq!(rates.service("web"), Some(expected));
        assert_eq!(rates.backend("web", "web-1"), Some(expected));
        assert_eq!(rates.counter("drop_no_backend"), Some(5.0));
        assert_eq!(rates.backend("web", "nope"), None);
        assert_eq!(rates.service("api"), None);
    }

    #[test]
    fn no_rates_across_a_restart_or_reset() {
        let prev = sample_status();
        // Same sample twice, and a daemon that restarted (uptime went back).
        assert_eq!(Rates::between(&prev, &prev), None);
        let mut restarted = sample_status();
        restarted.uptime_secs = 1.0;
        assert_eq!(Rates::between(&prev, &restarted), None);
        // A counter that went backwards (program reloaded) has no rate; others still do.
        let mut cur = sample_status();
        cur.uptime_secs += 1.0;
        cur.services[0].backends[0].traffic.packets = 0;
        cur.counters[0].value = 4;
        let rates = Rates::between(&prev, &cur).unwrap();
        assert_eq!(rates.backend("web", "web-1"), None);
        assert_eq!(rates.counter("drop_no_backend"), Some(1.0));
    }

    #[test]
    fn status_table_layout() {
        let mut prev = sample_status();
        let svc = &mut prev.services[0];
        svc.backends[0].traffic = traffic(1_000, 1_000_000, 10);
        svc.backends
            .push(backend("web-2", "down (held 20s)", 0, None));
        svc.backends.push(backend("web-backup", "up", 1, Some(50)));
        let mut cur = prev.clone();
        cur.uptime_secs += 0.5;
        cur.services[0].backends[0].traffic = traffic(1_600, 1_600_000, 13);
        cur.services[0].backends[0].last_check_latency_ms = Some(1.25);
        cur.services[0].backends[1].reason = "connect refused".into();
        cur.counters.push(CounterView {
            name: "fragment".into(),
            value: 9,
        });
        let rates = Rates::between(&prev, &cur).unwrap();

        let text = status(&cur, Some(&rates));
        let expected = "\
failover 0.1.0 on eth0, up 13s
switch time: last 120us, median 100us, max 300us (12 switches)

web  198.18.0.10:80/tcp  dsr  tier 0  (tier 0 healthy)
  NAME        ADDRESS    STATE            SINCE  WHY              CHECK(ms)  TIER    WEIGHT  PKT/s  BYTES/s  FLOWS/s
  web-1       10.0.0.1   up               3s     3 checks passed        1.2     0       100   1.2k     1.2M      6.0
  web-2       10.0.0.5   down (held 20s)  2m5s   connect refused          -     0   100 (-)      0        0        0
  web-backup  10.0.0.10  up               2m5s   -                        -     1  100 (50)      0        0        0

drop/pass counters:
  drop_no_backend  3  0/s
";
        assert_eq!(text, expected, "\n{text}");
    }

    #[test]
    fn status_without_rates_shows_dashes() {
        let mut s = sample_status();
        s.switch_time_us = None;
        s.services[0].vip = "2001:db8::10".into();
        s.services[0].port = "all".into();
        s.services[0].active_tier = None;
        s.services[0].panic = true;
        s.services[0].reason = "no usable backend".into();
        let text = status(&s, None);
        assert!(text.contains("switch time: no switch yet\n"), "{text}");
        assert!(
            text.contains("web  [2001:db8::10]:*/tcp  dsr  PANIC  (no usable backend)\n"),
            "{text}"
        );
        let row = text.lines().find(|l| l.contains("web-1")).unwrap();
        assert!(row.ends_with("100      -        -        -"), "{row:?}");
    }

    #[test]
    fn counter_list_keeps_nonzero_drops_and_passes() {
        let counters = [
            ("pass_not_service", 120_345),
            ("drop_no_backend", 0),
            ("drop_too_big", 7),
            ("fragment", 3),
        ]
        .map(|(name, value)| CounterView {
            name: name.into(),
            value,
        });
        assert_eq!(
            super::counters(&counters, None),
            "drop/pass counters:\n  pass_not_service  120345\n  drop_too_big           7\n"
        );
        assert_eq!(
            super::counters(&counters[1..2], None),
            "drop/pass counters: all zero\n"
        );
    }

    #[test]
    fn event_lines() {
        let events = [
            EventView {
                age_secs: 125.0,
                service: "web".into(),
                backend: None,
                what: "selection: web-1,web-2 (tier 0 healthy)".into(),
            },
            EventView {
                age_secs: 12.34,
                service: "web".into(),
                backend: Some("web-2".into()),
                what: "up -> down: connect refused".into(),
            },
        ];
        assert_eq!(
            super::events(&events),
            concat!(
                " -2m5s  web        selection: web-1,web-2 (tier 0 healthy)\n",
                "-12.3s  web/web-2  up -> down: connect refused\n",
            )
        );
        assert_eq!(super::events(&[]), "no events\n");
    }

    #[test]
    fn explanation_text() {
        let e = Explanation {
            service: "web".into(),
            client: "203.0.113.5:4321".into(),
            backend: Some("web-1".into()),
            how: "Maglev slot 1234 of 65537 (hash 0x1f2e3d4c)".into(),
            tier: Some(0),
        };
        assert_eq!(
            explanation(&e),
            "web: client 203.0.113.5:4321 -> web-1 (tier 0)\n  Maglev slot 1234 of 65537 (hash 0x1f2e3d4c)\n"
        );
        let dropped = Explanation {
            backend: None,
            tier: None,
            how: "panic: no usable backend, policy drop".into(),
            ..e
        };
        assert!(explanation(&dropped).starts_with("web: client 203.0.113.5:4321 -> no backend\n"));
    }

    #[test]
    fn switch_times_line() {
        let mut s = sample_status();
        s.switch_time_us = Some(SwitchTimes {
            last: 1,
            median: 2,
            max: 3,
            samples: 4,
            bounds_us: Vec::new(),
            buckets: Vec::new(),
            sum_us: 0,
        });
        assert!(
            status(&s, None).contains("switch time: last 1us, median 2us, max 3us (4 switches)\n")
        );
    }
}
