//! Runs every distinct probe target on its own schedule: one task per target (a backend
//! shared by several services with the same check is probed once), the interval set by the
//! brain (fast while a state change is pending), with jitter so checks spread out.
//! A slow or hung backend only delays its own task.

use std::time::Duration;

use tokio::sync::{mpsc, watch};

use super::syn::{self, Command, SynTarget};
use super::{Checker, ProbeKind, ProbeResult, Target};

/// One probe result, for the target with this index.
#[derive(Debug)]
pub struct Report {
    /// Which [`spawn`] call's targets this is about (targets are renumbered on reload).
    pub generation: u64,
    /// Index of the target (as given to [`spawn`]).
    pub target: usize,
    /// What the probe found.
    pub result: ProbeResult,
}

/// The schedule of one target: its interval now, and the jitter to spread it by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Schedule {
    /// Time between the end of one probe and the start of the next.
    pub interval: Duration,
    /// Up to this share (percent) of the interval is added or removed at random.
    pub jitter_percent: u8,
}

/// Where a target is probed: by its own task, or by the half-open engine.
#[derive(Debug, Clone, Copy)]
enum Route {
    /// Index into [`Probes::schedules`] and [`Probes::now`].
    Task(usize),
    /// The engine's index, with the schedule it was last given.
    Syn(usize, Schedule),
}

/// Handles to the running probe tasks; dropping it stops them.
pub struct Probes {
    routes: Vec<Route>,
    schedules: Vec<watch::Sender<Schedule>>,
    now: Vec<std::sync::Arc<tokio::sync::Notify>>,
    syn: Option<mpsc::UnboundedSender<Command>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Probes {
    /// Probes a target at once (cutting its wait short), e.g. after a passive signal.
    pub fn probe_now(&self, target: usize) {
        match self.routes.get(target) {
            Some(&Route::Task(t)) => self.now[t].notify_one(),
            Some(&Route::Syn(i, _)) => {
                if let Some(syn) = &self.syn {
                    let _ = syn.send(Command::Now(i));
                }
            }
            None => {}
        }
    }

    /// Changes a target's schedule (takes effect after its current wait, unless the new
    /// interval is shorter than what is left of it).
    pub fn set_schedule(&mut self, target: usize, schedule: Schedule) {
        match self.routes.get_mut(target) {
            Some(&mut Route::Task(t)) => {
                self.schedules[t].send_if_modified(|s| {
                    let changed = *s != schedule;
                    *s = schedule;
                    changed
                });
            }
            Some(Route::Syn(i, current)) if *current != schedule => {
                *current = schedule;
                if let Some(syn) = &self.syn {
                    let _ = syn.send(Command::Schedule(*i, schedule));
                }
            }
            Some(Route::Syn(..)) => {}
            None => {}
        }
    }
}

impl Drop for Probes {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// A cheap, seedable jitter source (no need for cryptographic randomness here).
pub(super) fn jittered(interval: Duration, percent: u8, seed: &mut u64) -> Duration {
    if percent == 0 {
        return interval;
    }
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    let span = interval.as_nanos() as u64 * u64::from(percent) / 100;
    if span == 0 {
        return interval;
    }
    let offset = *seed % (2 * span + 1);
    Duration::from_nanos((interval.as_nanos() as u64 + offset).saturating_sub(span))
}

/// Sleeps until `at`, or forever when there is nothing to wait for.
pub(crate) async fn sleep_until(at: Option<std::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Starts one task per target: each probes at once, then waits its (jittered) interval
/// after every result; half-open TCP targets share one task instead (see [`syn`]).
/// Results go to `reports`.
///
/// Fails only when half-open targets need a raw socket that cannot be opened.
pub fn spawn(
    targets: Vec<(Target, Schedule)>,
    checker: Checker,
    reports: mpsc::Sender<Report>,
    generation: u64,
) -> std::io::Result<Probes> {
    let mut routes = Vec::with_capacity(targets.len());
    let mut schedules = Vec::with_capacity(targets.len());
    let mut nows = Vec::with_capacity(targets.len());
    let mut tasks = Vec::with_capacity(targets.len());
    let mut half_open = Vec::new();
    for (index, (target, schedule)) in targets.into_iter().enumerate() {
        if let (
            ProbeKind::Tcp {
                half_open: true, ..
            },
            Ok(addr),
        ) = (&target.kind, target.socket_addr())
        {
            routes.push(Route::Syn(half_open.len(), schedule));
            half_open.push(SynTarget {
                index,
                addr,
                timeout: target.timeout,
                schedule,
            });
            continue;
        }
        routes.push(Route::Task(schedules.len()));
        let (tx, mut rx) = watch::channel(schedule);
        schedules.push(tx);
        let now = std::sync::Arc::new(tokio::sync::Notify::new());
        nows.push(now.clone());
        let checker = checker.clone();
        let reports = reports.clone();
        tasks.push(tokio::spawn(async move {
            let mut seed = 0x9e37_79b9_7f4a_7c15u64 ^ (index as u64 + 1).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            loop {
                let result = checker.run(target.clone()).await;
                if reports.send(Report { generation, target: index, result }).await.is_err() {
                    return;
                }
                let s = *rx.borrow_and_update();
                let wait = jittered(s.interval, s.jitter_percent, &mut seed);
                // A schedule change (e.g. to the fast interval) cuts the wait short.
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = now.notified() => {}
                    changed = rx.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        let s = *rx.borrow_and_update();
                        if s.interval < wait {
                            tokio::time::sleep(jittered(s.interval, s.jitter_percent, &mut seed)).await;
                        } else {
                            tokio::time::sleep(wait).await;
                        }
                    }
                }
            }
        }));
    }
    let syn = if half_open.is_empty() {
        None
    } else {
        let engine = syn::Engine::new(half_open, checker.raw_sockets(), generation)?;
        let (tx, rx) = mpsc::unbounded_channel();
        tasks.push(tokio::spawn(engine.run(rx, reports)));
        Some(tx)
    };
    Ok(Probes {
        routes,
        schedules,
        now: nows,
        syn,
        tasks,
    })
}

#[cfg(test)]
mod tests {
    use super::jittered;
    use std::time::Duration;

    #[test]
    fn jitter_stays_within_its_share() {
        let mut seed = 42;
        let base = Duration::from_millis(1000);
        let mut lo = base;
        let mut hi = base;
        for _ in 0..10_000 {
            let d = jittered(base, 10, &mut seed);
            assert!(
                d >= Duration::from_millis(900) && d <= Duration::from_millis(1100),
                "{d:?}"
            );
            lo = lo.min(d);
            hi = hi.max(d);
        }
        assert!(
            lo < Duration::from_millis(920) && hi > Duration::from_millis(1080),
            "jitter must spread: {lo:?}..{hi:?}"
        );
        assert_eq!(jittered(base, 0, &mut seed), base);
    }
}
