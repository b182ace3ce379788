//! The eight drills. Each builds its lab, starts the daemon, runs steady traffic, injects
//! its fault at a known instant, repairs it, and hands what it saw to [`evaluate`].
//! Every wait is bounded and polls for interruption; the rig's guards clean up on any exit.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use super::{
    Progress, Scenario, interrupt,
    measure::{
        Expectation, GRACE, Observed, Outage, Run, Share, evaluate, replies_by_backend,
        takes_new_flows,
    },
    rig::{Check, LogEvent, Rig, Traffic, backend},
};

/// Steady traffic before the fault.
const BEFORE: Duration = Duration::from_millis(1000);
/// How long a fault lasts before it is repaired (from its injection).
const OUTAGE: Duration = Duration::from_millis(1200);
/// Bound on one expected log event.
const LOG_LIMIT: Duration = Duration::from_secs(3);
/// Bound on the first selection of a new daemon.
const START_LIMIT: Duration = Duration::from_secs(10);

/// What a one-backend fault does to `be-2`, and how it is undone.
enum Fault {
    /// kill -9 the server; repair: start it again.
    Crash,
    /// Its interface down: no answer, no reset; repair: up again.
    Blackhole,
    /// SIGSTOP: sockets stay, nothing answers; repair: SIGCONT.
    Hang,
    /// Its health endpoint answers 503 (the service itself still answers); repair: 200.
    HttpFail,
}

impl Fault {
    fn inject(&self, rig: &mut Rig) -> anyhow::Result<&'static str> {
        Ok(match self {
            Fault::Crash => {
                rig.servers[1].kill9();
                "kill -9 be-2's server"
            }
            Fault::Blackhole => {
                let b = rig.lab.backend(2);
                b.ns().ip(["link", "set", "dev", b.ifname(), "down"])?;
                "be-2's interface down (no answer, no reset)"
            }
            Fault::Hang => {
                signal(rig, libc::SIGSTOP)?;
                "SIGSTOP be-2's server (sockets stay open)"
            }
            Fault::HttpFail => {
                rig.swap_health(2, 503)?;
                "be-2's health endpoint answers 503"
            }
        })
    }

    fn repair(&self, rig: &mut Rig) -> anyhow::Result<&'static str> {
        Ok(match self {
            Fault::Crash => {
                rig.servers[1].restart()?;
                "be-2's server started again"
            }
            Fault::Blackhole => {
                let b = rig.lab.backend(2);
                b.ns().ip(["link", "set", "dev", b.ifname(), "up"])?;
                // Link down flushed the default route (only replies in nat mode need it).
                let _ = b
                    .ns()
                    .ip(["route", "replace", "default", "via", "198.18.0.1"]);
                "be-2's interface up"
            }
            Fault::Hang => {
                signal(rig, libc::SIGCONT)?;
                "SIGCONT be-2's server"
            }
            Fault::HttpFail => {
                rig.swap_health(2, 200)?;
                "be-2's health endpoint answers 200"
            }
        })
    }
}

fn signal(rig: &Rig, signal: libc::c_int) -> anyhow::Result<()> {
    let pid = rig.servers[1]
        .pid()
        .context("be-2's server is not running")?;
    // SAFETY: kill(2) takes plain integers; the server is our unreaped child, so the pid
    // still names it.
    let rc = unsafe { libc::kill(pid as libc::pid_t, signal) };
    anyhow::ensure!(rc == 0, "kill: {}", std::io::Error::last_os_error());
    Ok(())
}

/// Builds the lab, starts the daemon with `config(rig)` and waits for the selection
/// `ready` accepts.
fn prepare(
    p: &Progress,
    health: bool,
    check: &Check,
    config: impl Fn(&Rig) -> String,
    ready: &dyn Fn(&str) -> bool,
) -> anyhow::Result<(Rig, String)> {
    let mut rig = Rig::new(3, health)?;
    p.say(&format!(
        "lab {} ready: client, load balancer, be-1..be-3",
        rig.lab.prefix()
    ));
    let text = config(&rig);
    let since = Instant::now();
    rig.start_daemon(&text)?;
    wait_selection(&mut rig, since, START_LIMIT, ready)?;
    p.say(&format!("daemon forwarding; check: {check}"));
    Ok((rig, text))
}

/// Waits for the first `selection published` line at or after `since` that `accept`s.
fn wait_selection(
    rig: &mut Rig,
    mut since: Instant,
    limit: Duration,
    accept: &dyn Fn(&str) -> bool,
) -> anyhow::Result<LogEvent> {
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let event = rig.wait_log(&["selection published"], since, left)?;
        if accept(&event.line) {
            return Ok(event);
        }
        since = event.at + Duration::from_micros(1);
        if left.is_zero() {
            bail!(
                "no fitting selection within {limit:?}; last: {}",
                event.line
            );
        }
    }
}

fn all_up(n: usize) -> impl Fn(&str) -> bool {
    move |line: &str| (1..=n).all(|i| takes_new_flows(line, &backend(i)))
}

/// Waits for `name`'s down line after `fault` and the selection without it.
fn detect(rig: &mut Rig, name: &str, fault: Instant) -> anyhow::Result<(LogEvent, LogEvent)> {
    let needle = format!("backend={name} ");
    let down = rig.wait_log(&[needle.as_str(), "to=down"], fault, LOG_LIMIT)?;
    let switched = wait_selection(rig, down.at, LOG_LIMIT, &|l| !takes_new_flows(l, name))?;
    Ok((down, switched))
}

/// Waits for `name`'s up line after `since` and the selection with it again.
fn back(rig: &mut Rig, name: &str, since: Instant) -> anyhow::Result<LogEvent> {
    let needle = format!("backend={name} ");
    let up = rig.wait_log(&[needle.as_str(), "to=up"], since, LOG_LIMIT)?;
    wait_selection(rig, up.at, LOG_LIMIT, &|l| takes_new_flows(l, name))
}

fn ms(from: Instant, to: Instant) -> f64 {
    super::measure::ms_from(from, to)
}

/// `crash`, `blackhole`, `hang`, `http-fail`: one backend (`be-2`) fails under traffic,
/// is detected and taken out, then repaired and taken back.
pub(crate) fn one_backend(scenario: Scenario, p: &Progress) -> anyhow::Result<Run> {
    let fault_kind = match scenario {
        Scenario::Crash => Fault::Crash,
        Scenario::Blackhole => Fault::Blackhole,
        Scenario::Hang => Fault::Hang,
        Scenario::HttpFail => Fault::HttpFail,
        other => bail!("{other} is not a one-backend fault"),
    };
    let health = matches!(fault_kind, Fault::HttpFail);
    let check = if health { Check::http() } else { Check::tcp() };
    let (mut rig, _) = prepare(
        p,
        health,
        &check,
        |rig| rig.config(&check, "", &|_| String::new()),
        &all_up(3),
    )?;
    let duration = Duration::from_millis(3600);
    let traffic = Traffic::start(&rig, duration);
    p.say("traffic: 200 new connections/s and 30 long-lived connections");
    interrupt::sleep(BEFORE)?;

    let fault = Instant::now();
    let what = fault_kind.inject(&mut rig)?;
    p.say(&format!("fault injected: {what}"));
    let (down, switched) = detect(&mut rig, "be-2", fault)?;
    p.say(&format!(
        "detected after {:.0} ms, out of the table after {:.0} ms",
        ms(fault, down.at),
        ms(fault, switched.at)
    ));
    interrupt::sleep_until(fault + OUTAGE)?;
    let repaired = Instant::now();
    let what = fault_kind.repair(&mut rig)?;
    p.say(&format!("repaired: {what}"));
    let back = back(&mut rig, "be-2", repaired)?;
    p.say(&format!(
        "be-2 back in the table {:.0} ms after the repair",
        ms(repaired, back.at)
    ));
    if Instant::now() > traffic.ends() {
        p.say("warning: recovery took longer than the traffic: no 'after' share");
    }
    let (attempts, held) = traffic.finish()?;
    Ok(evaluate(Observed {
        scenario,
        check,
        backends: rig.backends(),
        fault,
        detection_applies: true,
        outages: vec![Outage {
            backend: "be-2".into(),
            fault,
            detected: down.at,
            switched: switched.at,
            back: Some(back.at),
        }],
        settled: Some(back.at),
        markers: vec![
            (fault, "fault".into()),
            (down.at, "detected".into()),
            (repaired, "repaired".into()),
            (back.at, "back".into()),
        ],
        attempts,
        expected_attempts: Traffic::expected(duration),
        held,
        extra: Vec::new(),
        daemon_log: rig.daemon_log(),
    }))
}

/// `flap`: be-2 crashes and comes back three times in a row; the daemon follows the first
/// two and then holds it down for flapping (more than 4 health changes within a minute),
/// even though it is healthy again.
pub(crate) fn flap(p: &Progress) -> anyhow::Result<Run> {
    let check = Check::tcp();
    let (mut rig, _) = prepare(
        p,
        false,
        &check,
        |rig| rig.config(&check, "", &|_| String::new()),
        &all_up(3),
    )?;
    let duration = Duration::from_millis(4500);
    let traffic = Traffic::start(&rig, duration);
    p.say("traffic: 200 new connections/s and 30 long-lived connections");
    interrupt::sleep(BEFORE)?;

    let pause = Duration::from_millis(250);
    let mut outages = Vec::new();
    let mut markers = Vec::new();
    let mut held_line = None;
    for cycle in 1..=3 {
        let fault = Instant::now();
        rig.servers[1].kill9();
        p.say(&format!(
            "fault injected: kill -9 be-2's server (flap {cycle} of 3)"
        ));
        let (down, switched) = detect(&mut rig, "be-2", fault)?;
        p.say(&format!(
            "detected after {:.0} ms: {}",
            ms(fault, down.at),
            after_message(&down.line)
        ));
        markers.push((fault, format!("kill {cycle}")));
        interrupt::sleep(pause)?;
        rig.servers[1].restart()?;
        let restarted = Instant::now();
        let back = if cycle < 3 {
            let back = back(&mut rig, "be-2", restarted)?;
            p.say(&format!(
                "be-2 back {:.0} ms after its restart",
                ms(restarted, back.at)
            ));
            markers.push((back.at, format!("back {cycle}")));
            interrupt::sleep(pause)?;
            Some(back.at)
        } else {
            p.say("be-2 restarted: healthy, and held down for flapping");
            markers.push((down.at, "held".into()));
            held_line = Some(down.clone());
            None
        };
        outages.push(Outage {
            backend: "be-2".into(),
            fault,
            detected: down.at,
            switched: switched.at,
            back,
        });
    }
    let held_event = held_line.context("three flaps")?;
    let (attempts, held) = traffic.finish()?;
    let is_held = held_event.line.contains("held for flapping");
    let extra = vec![Expectation::new(
        "a flapping backend is held down (damping)",
        is_held,
        after_message(&held_event.line),
    )];
    let zero = outages[0].fault;
    Ok(evaluate(Observed {
        scenario: Scenario::Flap,
        check,
        backends: rig.backends(),
        fault: zero,
        detection_applies: true,
        settled: Some(held_event.at),
        outages,
        markers,
        attempts,
        expected_attempts: Traffic::expected(duration),
        held,
        extra,
        daemon_log: rig.daemon_log(),
    }))
}

/// `from=.. to=.. reason=..` of a state-change line.
fn after_message(line: &str) -> String {
    line.find("from=")
        .map_or(line, |i| &line[i..])
        .trim()
        .to_owned()
}

/// `tier-failover`: be-1 and be-2 are the primaries (tier 0), be-3 the backup (tier 1).
/// Both primaries are killed at once: the backup takes over; they come back and, after
/// `failback_hold`, take new connections again while connections established on the
/// backup stay there.
pub(crate) fn tier_failover(p: &Progress) -> anyhow::Result<Run> {
    let check = Check::tcp();
    let hold = Duration::from_millis(500);
    let tiers = |i: usize| format!("  tier = {}\n", u32::from(i == 3));
    let (mut rig, _) = prepare(
        p,
        false,
        &check,
        |rig| {
            rig.config(
                &check,
                &format!(
                    "failback = \"auto\"\nfailback_hold = \"{}ms\"\n",
                    hold.as_millis()
                ),
                &tiers,
            )
        },
        &|l| {
            takes_new_flows(l, "be-1") && takes_new_flows(l, "be-2") && !takes_new_flows(l, "be-3")
        },
    )?;
    p.say("tiers: be-1, be-2 primaries (tier 0), be-3 backup (tier 1), failback auto after 500 ms");
    let duration = Duration::from_millis(4800);
    let mut traffic = Traffic::start(&rig, duration);
    p.say("traffic: 200 new connections/s and 30 long-lived connections");
    interrupt::sleep(BEFORE)?;

    let fault = Instant::now();
    rig.servers[0].kill9();
    rig.servers[1].kill9();
    p.say("fault injected: kill -9 both primaries (be-1, be-2)");
    let (down1, switched1) = detect(&mut rig, "be-1", fault)?;
    let (down2, switched2) = detect(&mut rig, "be-2", fault)?;
    let takeover = wait_selection(&mut rig, fault, LOG_LIMIT, &|l| {
        takes_new_flows(l, "be-3") && !takes_new_flows(l, "be-1") && !takes_new_flows(l, "be-2")
    })?;
    p.say(&format!(
        "primaries detected after {:.0} and {:.0} ms; backup be-3 active after {:.0} ms",
        ms(fault, down1.at),
        ms(fault, down2.at),
        ms(fault, takeover.at)
    ));
    // Connections established on the backup: failback must leave them alone.
    traffic.hold_more(&rig, 20);
    interrupt::sleep_until(fault + OUTAGE)?;
    let repaired = Instant::now();
    rig.servers[0].restart()?;
    rig.servers[1].restart()?;
    p.say("repaired: both primaries started again");
    let needle1 = "backend=be-1 ";
    let needle2 = "backend=be-2 ";
    let up1 = rig.wait_log(&[needle1, "to=up"], repaired, LOG_LIMIT)?;
    let up2 = rig.wait_log(&[needle2, "to=up"], repaired, LOG_LIMIT)?;
    let failback = wait_selection(&mut rig, repaired, LOG_LIMIT, &|l| {
        takes_new_flows(l, "be-1") && takes_new_flows(l, "be-2") && !takes_new_flows(l, "be-3")
    })?;
    let first_up = up1.at.min(up2.at);
    p.say(&format!(
        "failback {:.0} ms after the first primary was up again",
        ms(first_up, failback.at)
    ));
    let (attempts, held) = traffic.finish()?;

    let end = attempts
        .iter()
        .map(|a| a.started)
        .max()
        .unwrap_or(failback.at)
        + Duration::from_millis(1);
    let on_backup = replies_by_backend(&attempts, takeover.at + GRACE, failback.at);
    let after = replies_by_backend(&attempts, failback.at + GRACE, end);
    let count =
        |m: &std::collections::BTreeMap<String, usize>, b: &str| m.get(b).copied().unwrap_or(0);
    let extra = vec![
        Expectation::new(
            "the backup takes every new connection while the primaries are down",
            on_backup.keys().all(|b| b == "be-3") && count(&on_backup, "be-3") > 0,
            format!("{on_backup:?}"),
        ),
        Expectation::new(
            "failback waits for failback_hold (500 ms) of health",
            failback.at.saturating_duration_since(first_up) + Duration::from_millis(5) >= hold,
            format!(
                "failback {:.0} ms after the first primary was up",
                ms(first_up, failback.at)
            ),
        ),
        Expectation::new(
            "after failback, new connections go to the primaries only",
            count(&after, "be-3") == 0 && count(&after, "be-1") + count(&after, "be-2") > 0,
            format!("{after:?}"),
        ),
    ];
    Ok(evaluate(Observed {
        scenario: Scenario::TierFailover,
        check,
        backends: rig.backends(),
        fault,
        detection_applies: true,
        outages: vec![
            Outage {
                backend: "be-1".into(),
                fault,
                detected: down1.at,
                switched: switched1.at,
                back: Some(failback.at),
            },
            Outage {
                backend: "be-2".into(),
                fault,
                detected: down2.at,
                switched: switched2.at,
                back: Some(failback.at),
            },
        ],
        settled: Some(failback.at),
        markers: vec![
            (fault, "fault".into()),
            (down1.at.max(down2.at), "detected".into()),
            (takeover.at, "backup".into()),
            (repaired, "repaired".into()),
            (failback.at, "failback".into()),
        ],
        attempts,
        expected_attempts: Traffic::expected(duration),
        held,
        extra,
        daemon_log: rig.daemon_log(),
    }))
}

/// `lb-restart`: the daemon is killed (kill -9) and started again 600 ms later; the pinned
/// program and tables keep forwarding meanwhile and the new daemon adopts them.
pub(crate) fn lb_restart(p: &Progress) -> anyhow::Result<Run> {
    let check = Check::tcp();
    let (mut rig, config) = prepare(
        p,
        false,
        &check,
        |rig| rig.config(&check, "", &|_| String::new()),
        &all_up(3),
    )?;
    let duration = Duration::from_millis(4000);
    let traffic = Traffic::start(&rig, duration);
    p.say("traffic: 200 new connections/s and 30 long-lived connections");
    interrupt::sleep(BEFORE)?;

    let fault = Instant::now();
    rig.crash_daemon();
    p.say("fault injected: kill -9 the daemon (the pinned tables keep forwarding)");
    interrupt::sleep(Duration::from_millis(600))?;
    let restarted = Instant::now();
    rig.start_daemon(&config)?;
    let forwarding = rig.wait_log(&["forwarding interface="], restarted, LOG_LIMIT)?;
    let adopted = forwarding.line.contains("adopted_link=true");
    p.say(&format!(
        "daemon back, forwarding {:.0} ms after the kill (adopted the pinned link: {adopted})",
        ms(fault, forwarding.at)
    ));
    let (attempts, held) = traffic.finish()?;
    Ok(evaluate(Observed {
        scenario: Scenario::LbRestart,
        check,
        backends: rig.backends(),
        fault,
        detection_applies: false,
        outages: Vec::new(),
        settled: Some(forwarding.at),
        markers: vec![
            (fault, "daemon killed".into()),
            (restarted, "restart".into()),
            (forwarding.at, "forwarding".into()),
        ],
        attempts,
        expected_attempts: Traffic::expected(duration),
        held,
        extra: vec![Expectation::new(
            "the new daemon adopts the pinned program and tables",
            adopted,
            forwarding
                .line
                .find("forwarding")
                .map_or(forwarding.line.as_str(), |i| &forwarding.line[i..])
                .to_owned(),
        )],
        daemon_log: rig.daemon_log(),
    }))
}

/// `reload`: under load, the config changes be-3's weight from 100 to 300 and the daemon
/// reloads it: new connections follow the new weights, nothing fails, nothing is cut.
pub(crate) fn reload(p: &Progress) -> anyhow::Result<Run> {
    let check = Check::tcp();
    let weights =
        |w3: u32| move |i: usize| format!("  weight = {}\n", if i == 3 { w3 } else { 100 });
    let (mut rig, _) = prepare(
        p,
        false,
        &check,
        |rig| rig.config(&check, "", &weights(100)),
        &all_up(3),
    )?;
    let duration = Duration::from_millis(4000);
    let traffic = Traffic::start(&rig, duration);
    p.say("traffic: 200 new connections/s and 30 long-lived connections");
    interrupt::sleep(Duration::from_millis(1500))?;

    let changed = rig.config(&check, "", &weights(300));
    let fault = Instant::now();
    rig.reload(&changed)?;
    p.say("fault injected: reload with be-3's weight 100 -> 300");
    let applied = wait_selection(&mut rig, fault, LOG_LIMIT, &|l| l.contains("be-3:300"))?;
    p.say(&format!(
        "reload applied after {:.0} ms",
        ms(fault, applied.at)
    ));
    let (attempts, held) = traffic.finish()?;

    let end = attempts
        .iter()
        .map(|a| a.started)
        .max()
        .unwrap_or(applied.at);
    let backends = rig.backends();
    let after = Share::of(&attempts, &backends, applied.at + GRACE, end);
    let fits = after.percent.len() == 3
        && (45.0..=75.0).contains(&after.percent[2])
        && after.percent[..2].iter().all(|p| (10.0..=30.0).contains(p));
    Ok(evaluate(Observed {
        scenario: Scenario::Reload,
        check,
        backends,
        fault,
        detection_applies: false,
        outages: Vec::new(),
        settled: Some(applied.at),
        markers: vec![(fault, "reload".into()), (applied.at, "applied".into())],
        attempts,
        expected_attempts: Traffic::expected(duration),
        held,
        extra: vec![Expectation::new(
            "after the reload, new connections follow the weights 1:1:3 (20/20/60 %, +-10/+-15)",
            fits,
            format!("{} % of {} connections", after.compact(), after.replies),
        )],
        daemon_log: rig.daemon_log(),
    }))
}
