//! One backend's health state machine: probe observations and operator commands in, state
//! transitions out.
//!
//! A backend has two independent kinds of state:
//!
//! - **health** ([`Health`]), what the checks think: `Unknown` until the first verdict, then
//!   `Up` or `Down`. It only flips after several results in a row, as in pingora: `rise`
//!   successes bring it up, `fall` failures (failed or timed out checks) bring it down, and
//!   `fall_refused` refused connections bring it down faster, because a refusal is
//!   definitive evidence that nothing listens (the default of 1 takes a backend out after a
//!   single refused check). A refused check is also a failure, so it counts towards `fall`
//!   as well: `fall_refused` can only make the verdict come sooner, never later.
//! - **admin** state ([`AdminState`]), what the operator asked for: `Enabled`, `Draining`
//!   (no new flows, established flows keep going until a deadline, then `Disabled`), or
//!   `Disabled` (no traffic at all).
//!
//! On top of health sits **flap damping** ([`FlapPolicy`]): a backend whose health changes
//! too often within a window is held down for a while, and the hold doubles on each
//! repeated episode, so a backend that crashes every few seconds does not keep dragging
//! flows back and forth. Checks keep running during the hold; the hold ends by time only.
//!
//! The three combine into one effective [`State`]; every change of it is returned as a
//! [`Transition`] for the daemon to log and publish. Nothing here reads a clock or sleeps:
//! every method takes `now`, and time-based changes (a hold or a drain running out) happen
//! in [`BackendState::tick`], which the daemon calls at [`BackendState::next_deadline`].
//!
//! A new backend starts with `Unknown` health and is not usable for any flow until its
//! first verdict: sending traffic to a backend nobody has checked would make a typo in the
//! config look healthy. The daemon's startup rule (keep the running tables until every
//! backend has a fresh verdict) is built on top of this by looking at [`Health::Unknown`].

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

use crate::config::{CheckConfig, format_duration};
use crate::selection::tiers::BackendStatus;

/// One probe result: the probe layer's [`crate::health::Outcome`], used as it is (one
/// definition of what a check can find).
pub use crate::health::Outcome as Observation;

/// What the health checks think of a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Health {
    /// No verdict yet: fewer than `rise` successes and fewer than `fall` failures since the
    /// backend was added. Not usable for any flow.
    Unknown,
    /// `rise` checks in a row passed.
    Up,
    /// `fall` checks in a row failed, or `fall_refused` in a row were refused.
    Down,
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Unknown => "unknown",
            Self::Up => "up",
            Self::Down => "down",
        })
    }
}

/// What the operator asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AdminState {
    /// Normal operation: health decides.
    Enabled,
    /// No new flows; established flows keep going until `until`, then the backend becomes
    /// [`AdminState::Disabled`].
    Draining {
        /// When the drain was requested.
        since: Instant,
        /// When established flows are cut.
        until: Instant,
    },
    /// No traffic at all until the operator enables the backend again.
    Disabled,
}

impl fmt::Display for AdminState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Enabled => "enabled",
            Self::Draining { .. } => "draining",
            Self::Disabled => "disabled",
        })
    }
}

/// The effective state of a backend: admin state first, then health and flap hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// Enabled, but no health verdict yet.
    Unknown,
    /// Enabled, healthy and not held: takes new and existing flows.
    Up,
    /// Enabled and unhealthy, or healthy but held down for flapping: no traffic.
    Down {
        /// End of the flap hold, if one is running.
        held_until: Option<Instant>,
    },
    /// Draining on the operator's request: existing flows only, until `until`.
    Draining {
        /// When the drain was requested.
        since: Instant,
        /// When established flows are cut.
        until: Instant,
    },
    /// Disabled by the operator (or a drain that ran out): no traffic.
    Disabled,
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Unknown => "unknown",
            Self::Up => "up",
            Self::Down { held_until: None } => "down",
            Self::Down {
                held_until: Some(_),
            } => "down (held for flapping)",
            Self::Draining { .. } => "draining",
            Self::Disabled => "disabled",
        })
    }
}

/// A change of a backend's effective [`State`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// The state before.
    pub from: State,
    /// The state after.
    pub to: State,
    /// Why, for example `"connect refused"`, `"2 checks passed"` or `"disabled by operator"`.
    pub reason: String,
    /// When the change happened.
    pub at: Instant,
}

impl fmt::Display for Transition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} -> {}: {}", self.from, self.to, self.reason)
    }
}

/// How many results in a row flip health, from a [`CheckConfig`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    /// Consecutive successes that bring a backend up.
    pub rise: u32,
    /// Consecutive failures (failed, timed out or refused) that bring a backend down.
    pub fall: u32,
    /// Consecutive refused connections that bring a backend down.
    pub fall_refused: u32,
}

impl Default for Thresholds {
    /// The config defaults: rise 2, fall 3, fall_refused 1.
    fn default() -> Self {
        Self {
            rise: 2,
            fall: 3,
            fall_refused: 1,
        }
    }
}

impl From<&CheckConfig> for Thresholds {
    fn from(check: &CheckConfig) -> Self {
        Self {
            rise: check.rise,
            fall: check.fall,
            fall_refused: check.fall_refused,
        }
    }
}

/// When a flapping backend is held down, and for how long.
///
/// A flap episode starts when health changes between up and down more than
/// `max_changes` times within `window` (the first verdict out of `Unknown` does not count).
/// The backend is then held down for `initial_hold`, doubled on each further episode and
/// capped at `max_hold`. Each full `quiet_period` without a health change and outside a
/// hold steps the doubling back by one, so a backend that behaves returns to
/// `initial_hold`. Health changes seen during a hold still count: if the backend is still
/// flapping when the hold ends, the next, longer, episode starts at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlapPolicy {
    /// Health changes allowed within `window`; one more starts a hold.
    pub max_changes: u32,
    /// The sliding window the changes are counted in.
    pub window: Duration,
    /// Length of the first hold.
    pub initial_hold: Duration,
    /// Longest hold.
    pub max_hold: Duration,
    /// Quiet time that halves the next hold (back towards `initial_hold`).
    pub quiet_period: Duration,
}

impl Default for FlapPolicy {
    /// More than 4 changes in 60 s: held 10 s, 20 s, 40 s … up to 5 min; 5 quiet minutes
    /// halve the next hold.
    fn default() -> Self {
        Self {
            max_changes: 4,
            window: Duration::from_secs(60),
            initial_hold: Duration::from_secs(10),
            max_hold: Duration::from_secs(300),
            quiet_period: Duration::from_secs(300),
        }
    }
}

impl FlapPolicy {
    /// The hold of an episode after `level` earlier ones (not decayed).
    pub fn hold_for(&self, level: u32) -> Duration {
        1u32.checked_shl(level)
            .and_then(|factor| self.initial_hold.checked_mul(factor))
            .map_or(self.max_hold, |hold| hold.min(self.max_hold))
    }
}

/// One backend's health and admin state for one service.
#[derive(Debug, Clone)]
pub struct BackendState {
    thresholds: Thresholds,
    flap: FlapPolicy,
    health: Health,
    admin: AdminState,
    /// The effective state last reported, so transitions are computed by comparison.
    state: State,
    successes: u32,
    failures: u32,
    refused: u32,
    /// When the effective state last changed, and why.
    last_change: Instant,
    reason: String,
    /// When health last changed, and why (it can change without the effective state, for
    /// example while disabled).
    health_since: Instant,
    health_reason: String,
    last_latency: Option<Duration>,
    last_observed: Option<Instant>,
    up_since: Option<Instant>,
    /// Up/down changes within the flap window, oldest first.
    changes: VecDeque<Instant>,
    held_until: Option<Instant>,
    /// How many doublings the next hold gets.
    flap_level: u32,
    /// Start of the current quiet stretch (last health change or end of a hold).
    quiet_since: Instant,
}

impl BackendState {
    /// A new backend, enabled, with unknown health.
    pub fn new(now: Instant, thresholds: Thresholds, flap: FlapPolicy) -> Self {
        let reason = "added, not checked yet".to_owned();
        Self {
            thresholds,
            flap,
            health: Health::Unknown,
            admin: AdminState::Enabled,
            state: State::Unknown,
            successes: 0,
            failures: 0,
            refused: 0,
            last_change: now,
            reason: reason.clone(),
            health_since: now,
            health_reason: reason,
            last_latency: None,
            last_observed: None,
            up_since: None,
            changes: VecDeque::new(),
            held_until: None,
            flap_level: 0,
            quiet_since: now,
        }
    }

    /// Replaces the thresholds (on config reload); the counters are kept.
    pub fn set_thresholds(&mut self, thresholds: Thresholds) {
        self.thresholds = thresholds;
    }

    /// The thresholds in use.
    pub fn thresholds(&self) -> Thresholds {
        self.thresholds
    }

    /// The effective state.
    pub fn state(&self) -> State {
        self.state
    }

    /// What the checks think, regardless of admin state and flap hold.
    pub fn health(&self) -> Health {
        self.health
    }

    /// What the operator asked for.
    pub fn admin(&self) -> AdminState {
        self.admin
    }

    /// When the effective state last changed (or the backend was added).
    pub fn last_change(&self) -> Instant {
        self.last_change
    }

    /// Why the effective state last changed.
    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// When health last changed (or the backend was added).
    pub fn health_since(&self) -> Instant {
        self.health_since
    }

    /// Why health last changed.
    pub fn health_reason(&self) -> &str {
        &self.health_reason
    }

    /// Latency of the last probe.
    pub fn last_latency(&self) -> Option<Duration> {
        self.last_latency
    }

    /// When the last probe result arrived.
    pub fn last_observed(&self) -> Option<Instant> {
        self.last_observed
    }

    /// Since when the backend has been [`State::Up`], if it is (slow start ramps from here).
    pub fn up_since(&self) -> Option<Instant> {
        self.up_since
    }

    /// End of the running flap hold.
    pub fn held_until(&self) -> Option<Instant> {
        self.held_until
    }

    /// How many doublings the next flap hold gets (0 after a quiet spell).
    pub fn flap_level(&self) -> u32 {
        self.flap_level
    }

    /// Consecutive `(successes, failures, refused)` counters.
    pub fn counters(&self) -> (u32, u32, u32) {
        (self.successes, self.failures, self.refused)
    }

    /// Whether a health change is under way: the first verdict is still missing, or some
    /// results in a row point the other way but have not reached the threshold yet. The
    /// scheduler checks at `fast_interval` meanwhile, so the verdict comes sooner.
    pub fn pending(&self) -> bool {
        match self.health {
            Health::Unknown => true,
            Health::Up => self.failures > 0 || self.refused > 0,
            Health::Down => self.successes > 0,
        }
    }

    /// Time until the next check: `fast_interval` while [`pending`](Self::pending),
    /// `interval` otherwise (jitter is the scheduler's business).
    pub fn next_interval(&self, check: &CheckConfig) -> Duration {
        if self.pending() {
            check.fast_interval
        } else {
            check.interval
        }
    }

    /// Whether new flows may be sent here: enabled, healthy and not held.
    pub fn usable_for_new_flows(&self) -> bool {
        self.state == State::Up
    }

    /// Whether established flows may keep going here: whenever
    /// [`usable_for_new_flows`](Self::usable_for_new_flows), and while draining unless the
    /// checks say the backend is down (its flows are dead then, so they may as well be
    /// re-picked).
    pub fn usable_for_existing_flows(&self) -> bool {
        match self.state {
            State::Up => true,
            State::Draining { .. } => self.health != Health::Down,
            State::Unknown | State::Down { .. } | State::Disabled => false,
        }
    }

    /// What tier selection needs to know about this backend.
    pub fn status(&self) -> BackendStatus {
        BackendStatus {
            new_flows: self.usable_for_new_flows(),
            existing_flows: self.usable_for_existing_flows(),
            enabled: self.admin == AdminState::Enabled,
            up_since: self.up_since,
        }
    }

    /// The next time [`tick`](Self::tick) has something to do: a flap hold or a drain
    /// running out.
    pub fn next_deadline(&self) -> Option<Instant> {
        let drain = match self.admin {
            AdminState::Draining { until, .. } => Some(until),
            AdminState::Enabled | AdminState::Disabled => None,
        };
        [self.held_until, drain].into_iter().flatten().min()
    }

    /// Applies what time alone changes (a flap hold or a drain running out).
    pub fn tick(&mut self, now: Instant) -> Option<Transition> {
        let mut reasons = Vec::new();
        self.expire(now, &mut reasons);
        self.settle(now, reasons)
    }

    /// Records one probe result `latency` after the check started.
    pub fn observe(
        &mut self,
        now: Instant,
        observation: &Observation,
        latency: Duration,
    ) -> Option<Transition> {
        let mut reasons = Vec::new();
        self.expire(now, &mut reasons);
        self.last_latency = Some(latency);
        self.last_observed = Some(now);

        match observation {
            Observation::Up => {
                self.successes = self.successes.saturating_add(1);
                self.failures = 0;
                self.refused = 0;
            }
            Observation::Refused { .. } => {
                self.refused = self.refused.saturating_add(1);
                self.failures = self.failures.saturating_add(1);
                self.successes = 0;
            }
            Observation::Failed { .. } | Observation::Timeout { .. } => {
                self.failures = self.failures.saturating_add(1);
                self.refused = 0;
                self.successes = 0;
            }
        }

        let t = self.thresholds;
        let rises = self.successes >= t.rise.max(1);
        let refused_out = self.refused >= t.fall_refused.max(1);
        let falls = refused_out || self.failures >= t.fall.max(1);
        let verdict = match self.health {
            Health::Unknown | Health::Down if rises => Some(Health::Up),
            Health::Unknown | Health::Up if falls => Some(Health::Down),
            _ => None,
        };
        if let Some(health) = verdict {
            let reason = match health {
                Health::Up => plural(self.successes, "check passed", "checks passed"),
                _ => {
                    let (n, what) = if refused_out {
                        (self.refused, "refused")
                    } else {
                        (self.failures, "failed")
                    };
                    if n > 1 {
                        format!("{} ({n} checks {what} in a row)", observation.reason())
                    } else {
                        observation.reason()
                    }
                }
            };
            self.set_health(now, health, reason, &mut reasons);
        }
        self.settle(now, reasons)
    }

    /// Stops new flows now and established ones `timeout` from now. A backend that is
    /// already draining keeps its deadline, and a disabled one stays disabled (draining
    /// would loosen it); both return `None`.
    pub fn drain(&mut self, now: Instant, timeout: Duration) -> Option<Transition> {
        if self.admin != AdminState::Enabled {
            return None;
        }
        self.admin = AdminState::Draining {
            since: now,
            until: now + timeout,
        };
        self.settle(
            now,
            vec![format!(
                "drained by operator (existing flows kept for {})",
                format_duration(timeout)
            )],
        )
    }

    /// Stops all traffic to the backend until [`enable`](Self::enable).
    pub fn disable(&mut self, now: Instant) -> Option<Transition> {
        if self.admin == AdminState::Disabled {
            return None;
        }
        self.admin = AdminState::Disabled;
        self.settle(now, vec!["disabled by operator".to_owned()])
    }

    /// Gives the backend back to its health checks (ends a drain or a disable). A flap hold
    /// is health, not admin state, so it stays.
    pub fn enable(&mut self, now: Instant) -> Option<Transition> {
        if self.admin == AdminState::Enabled {
            return None;
        }
        self.admin = AdminState::Enabled;
        self.settle(now, vec!["enabled by operator".to_owned()])
    }

    /// The effective state the current health, admin state and hold add up to.
    fn effective(&self) -> State {
        match self.admin {
            AdminState::Disabled => State::Disabled,
            AdminState::Draining { since, until } => State::Draining { since, until },
            AdminState::Enabled => match (self.health, self.held_until) {
                (Health::Unknown, _) => State::Unknown,
                (Health::Up, None) => State::Up,
                (Health::Up | Health::Down, held_until) => State::Down { held_until },
            },
        }
    }

    /// Ends a hold or a drain whose time has come.
    fn expire(&mut self, now: Instant, reasons: &mut Vec<String>) {
        // (No let-chains: the workspace's rust-version is 1.87.)
        if let AdminState::Draining { since, until } = self.admin {
            if now >= until {
                self.admin = AdminState::Disabled;
                reasons.push(format!(
                    "drain finished after {}",
                    format_duration(until - since)
                ));
            }
        }
        if let Some(until) = self.held_until.filter(|&until| now >= until) {
            self.held_until = None;
            self.quiet_since = self.quiet_since.max(until);
            self.prune(now);
            if self.changes.len() > self.flap.max_changes as usize {
                self.start_hold(now, reasons);
            } else {
                reasons.push("flap hold ended".to_owned());
            }
        }
    }

    fn set_health(
        &mut self,
        now: Instant,
        health: Health,
        reason: String,
        reasons: &mut Vec<String>,
    ) {
        let counts_as_flap = self.health != Health::Unknown;
        self.health = health;
        self.health_since = now;
        self.health_reason.clone_from(&reason);
        reasons.push(reason);
        if !counts_as_flap {
            return;
        }
        if self.held_until.is_none() && !self.flap.quiet_period.is_zero() {
            let quiet = now.saturating_duration_since(self.quiet_since);
            let steps = quiet.as_nanos() / self.flap.quiet_period.as_nanos();
            self.flap_level = self
                .flap_level
                .saturating_sub(u32::try_from(steps).unwrap_or(u32::MAX));
        }
        self.quiet_since = now;
        self.changes.push_back(now);
        self.prune(now);
        if self.held_until.is_none() && self.changes.len() > self.flap.max_changes as usize {
            self.start_hold(now, reasons);
        }
    }

    fn start_hold(&mut self, now: Instant, reasons: &mut Vec<String>) {
        let hold = self.flap.hold_for(self.flap_level);
        reasons.push(format!(
            "flapping: {} health changes within {}, held down for {}",
            self.changes.len(),
            format_duration(self.flap.window),
            format_duration(hold)
        ));
        self.held_until = Some(now + hold);
        self.changes.clear();
        if hold < self.flap.max_hold {
            self.flap_level += 1;
        }
    }

    /// Forgets changes that left the flap window.
    fn prune(&mut self, now: Instant) {
        while let Some(&oldest) = self.changes.front() {
            if now.saturating_duration_since(oldest) < self.flap.window {
                break;
            }
            self.changes.pop_front();
        }
    }

    /// Reports the effective state if it changed.
    fn settle(&mut self, now: Instant, reasons: Vec<String>) -> Option<Transition> {
        let to = self.effective();
        if to == self.state {
            return None;
        }
        let from = std::mem::replace(&mut self.state, to);
        let reason = if reasons.is_empty() {
            "state changed".to_owned()
        } else {
            reasons.join("; ")
        };
        self.last_change = now;
        self.reason.clone_from(&reason);
        self.up_since = (to == State::Up).then_some(now);
        Some(Transition {
            from,
            to,
            reason,
            at: now,
        })
    }
}

fn plural(n: u32, one: &str, many: &str) -> String {
    if n == 1 {
        format!("1 {one}")
    } else {
        format!("{n} {many}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CheckKind;
    use crate::selection::clock::{Clock, FakeClock};

    const MS: Duration = Duration::from_millis(1);
    const SEC: Duration = Duration::from_secs(1);

    fn thresholds(rise: u32, fall: u32, fall_refused: u32) -> Thresholds {
        Thresholds {
            rise,
            fall,
            fall_refused,
        }
    }

    fn failed(reason: &str) -> Observation {
        Observation::Failed {
            reason: reason.to_owned(),
        }
    }

    fn refused() -> Observation {
        Observation::Refused {
            reason: "connect refused".to_owned(),
        }
    }

    fn timeout() -> Observation {
        Observation::Timeout { after: 100 * MS }
    }

    /// A backend and the fake clock driving it.
    struct Rig {
        clock: FakeClock,
        backend: BackendState,
    }

    impl Rig {
        fn new(t: Thresholds) -> Self {
            Self::with_flap(t, FlapPolicy::default())
        }

        fn with_flap(t: Thresholds, flap: FlapPolicy) -> Self {
            let clock = FakeClock::new();
            let backend = BackendState::new(clock.now(), t, flap);
            Self { clock, backend }
        }

        /// Advances one second, then observes.
        fn see(&mut self, o: &Observation) -> Option<Transition> {
            let now = self.clock.advance(SEC);
            self.backend.observe(now, o, 5 * MS)
        }

        fn see_n(&mut self, o: &Observation, n: u32) -> Vec<Transition> {
            (0..n).filter_map(|_| self.see(o)).collect()
        }

        fn now(&self) -> Instant {
            self.clock.now()
        }
    }

    fn check_config() -> CheckConfig {
        CheckConfig {
            kind: CheckKind::None,
            interval: SEC,
            fast_interval: 250 * MS,
            timeout: 500 * MS,
            rise: 2,
            fall: 3,
            fall_refused: 1,
            jitter_percent: 0,
            port: None,
            address: None,
        }
    }

    #[test]
    fn new_backend_is_unknown_and_unusable() {
        let rig = Rig::new(Thresholds::default());
        let b = &rig.backend;
        assert_eq!(b.health(), Health::Unknown);
        assert_eq!(b.admin(), AdminState::Enabled);
        assert_eq!(b.state(), State::Unknown);
        assert!(!b.usable_for_new_flows());
        assert!(!b.usable_for_existing_flows());
        assert!(b.pending(), "the first verdict is pending");
        assert_eq!(b.last_change(), rig.clock.start());
        assert_eq!(b.next_deadline(), None);
    }

    #[test]
    fn unknown_rises_after_rise_successes() {
        let mut rig = Rig::new(thresholds(3, 3, 1));
        assert!(rig.see_n(&Observation::Up, 2).is_empty());
        assert_eq!(rig.backend.health(), Health::Unknown);
        let t = rig
            .see(&Observation::Up)
            .expect("third success is the verdict");
        assert_eq!((t.from, t.to), (State::Unknown, State::Up));
        assert_eq!(t.reason, "3 checks passed");
        assert_eq!(t.at, rig.now());
        assert_eq!(rig.backend.up_since(), Some(rig.now()));
        assert!(rig.backend.usable_for_new_flows());
        assert!(rig.backend.usable_for_existing_flows());
        assert_eq!(rig.backend.last_latency(), Some(5 * MS));
        assert_eq!(rig.backend.last_observed(), Some(rig.now()));
    }

    #[test]
    fn unknown_falls_after_fall_failures() {
        let mut rig = Rig::new(thresholds(2, 3, 1));
        assert_eq!(rig.see(&failed("HTTP 503")), None);
        assert_eq!(rig.see(&timeout()), None);
        let t = rig.see(&failed("HTTP 503")).expect("third failure");
        assert_eq!(
            (t.from, t.to),
            (State::Unknown, State::Down { held_until: None })
        );
        assert_eq!(t.reason, "HTTP 503 (3 checks failed in a row)");
        assert_eq!(rig.backend.health(), Health::Down);
    }

    #[test]
    fn up_falls_after_fall_consecutive_failures_only() {
        let mut rig = Rig::new(thresholds(1, 3, 1));
        rig.see(&Observation::Up).expect("up");
        // Two failures, a success, two failures: never three in a row.
        rig.see_n(&failed("HTTP 500"), 2);
        rig.see(&Observation::Up);
        assert!(rig.see_n(&timeout(), 2).is_empty());
        assert_eq!(rig.backend.state(), State::Up);
        assert_eq!(rig.backend.counters(), (0, 2, 0));
        let t = rig.see(&timeout()).expect("third timeout in a row");
        assert_eq!(t.to, State::Down { held_until: None });
        assert_eq!(t.reason, "timeout after 100ms (3 checks failed in a row)");
        assert_eq!(rig.backend.up_since(), None);
    }

    #[test]
    fn down_rises_after_rise_consecutive_successes_only() {
        let mut rig = Rig::new(thresholds(2, 1, 1));
        rig.see(&failed("HTTP 503")).expect("down");
        rig.see(&Observation::Up);
        rig.see(&failed("HTTP 503"));
        assert_eq!(rig.backend.counters(), (0, 1, 0));
        assert_eq!(rig.see(&Observation::Up), None);
        let t = rig.see(&Observation::Up).expect("two in a row");
        assert_eq!(t.from, State::Down { held_until: None });
        assert_eq!(t.to, State::Up);
        assert_eq!(t.reason, "2 checks passed");
        assert_eq!(rig.backend.reason(), "2 checks passed");
        assert_eq!(rig.backend.health_reason(), "2 checks passed");
    }

    #[test]
    fn single_check_reasons_are_the_observation() {
        let mut rig = Rig::new(thresholds(1, 1, 1));
        assert_eq!(rig.see(&Observation::Up).unwrap().reason, "1 check passed");
        assert_eq!(rig.see(&timeout()).unwrap().reason, "timeout after 100ms");
    }

    #[test]
    fn refused_takes_the_fast_path() {
        let mut rig = Rig::new(thresholds(1, 3, 1));
        rig.see(&Observation::Up).expect("up");
        let t = rig.see(&refused()).expect("one refusal is enough");
        assert_eq!(t.to, State::Down { held_until: None });
        assert_eq!(t.reason, "connect refused");
    }

    #[test]
    fn refused_from_unknown_is_a_verdict() {
        let mut rig = Rig::new(thresholds(2, 3, 1));
        let t = rig.see(&refused()).expect("definitive evidence");
        assert_eq!(t.from, State::Unknown);
        assert_eq!(rig.backend.health(), Health::Down);
    }

    #[test]
    fn refused_threshold_above_one_counts_refusals_in_a_row() {
        let mut rig = Rig::new(thresholds(1, 5, 2));
        rig.see(&Observation::Up).expect("up");
        rig.see(&refused());
        // A failure breaks the run of refusals but keeps counting towards fall.
        rig.see(&failed("reset"));
        assert_eq!(rig.backend.counters(), (0, 2, 0));
        assert_eq!(rig.see(&refused()), None);
        let t = rig.see(&refused()).expect("two refusals in a row");
        assert_eq!(t.reason, "connect refused (2 checks refused in a row)");
    }

    #[test]
    fn refusals_count_towards_fall_too() {
        let mut rig = Rig::new(thresholds(1, 3, 10));
        rig.see(&Observation::Up).expect("up");
        rig.see(&failed("HTTP 500"));
        rig.see(&refused());
        let t = rig.see(&timeout()).expect("three failures of any kind");
        assert_eq!(t.to, State::Down { held_until: None });
    }

    #[test]
    fn success_resets_failure_counters_and_vice_versa() {
        let mut rig = Rig::new(thresholds(3, 3, 3));
        rig.see_n(&Observation::Up, 3);
        rig.see(&refused());
        rig.see(&failed("x"));
        assert_eq!(rig.backend.counters(), (0, 2, 0));
        rig.see(&Observation::Up);
        assert_eq!(rig.backend.counters(), (1, 0, 0));
        rig.see(&refused());
        assert_eq!(rig.backend.counters(), (0, 1, 1));
    }

    #[test]
    fn pending_selects_the_fast_interval() {
        let check = check_config();
        let mut rig = Rig::new(thresholds(2, 3, 1));
        assert!(rig.backend.pending());
        assert_eq!(rig.backend.next_interval(&check), 250 * MS);
        rig.see_n(&Observation::Up, 2);
        assert!(!rig.backend.pending());
        assert_eq!(rig.backend.next_interval(&check), SEC);
        rig.see(&timeout());
        assert!(rig.backend.pending(), "one failure of three");
        assert_eq!(rig.backend.next_interval(&check), 250 * MS);
        rig.see(&Observation::Up);
        assert!(!rig.backend.pending(), "the success cancels it");
        rig.see_n(&timeout(), 3);
        assert_eq!(rig.backend.health(), Health::Down);
        assert!(!rig.backend.pending(), "down and still failing is stable");
        rig.see(&Observation::Up);
        assert!(rig.backend.pending(), "one success of two");
        rig.see(&Observation::Up);
        assert!(!rig.backend.pending());
    }

    #[test]
    fn flapping_is_held_down_and_visible() {
        let mut rig = Rig::new(thresholds(1, 1, 1));
        rig.see(&Observation::Up)
            .expect("first verdict, not a flap");
        // Four changes within the window are tolerated.
        for _ in 0..2 {
            rig.see(&timeout()).expect("down");
            rig.see(&Observation::Up).expect("up");
        }
        assert_eq!(rig.backend.held_until(), None);
        let t = rig.see(&timeout()).expect("fifth change");
        let held_until = rig.now() + 10 * SEC;
        assert_eq!(
            t.to,
            State::Down {
                held_until: Some(held_until)
            }
        );
        assert_eq!(
            t.reason,
            "timeout after 100ms; flapping: 5 health changes within 1m, held down for 10s"
        );
        assert_eq!(rig.backend.held_until(), Some(held_until));
        assert_eq!(rig.backend.next_deadline(), Some(held_until));
        assert_eq!(t.to.to_string(), "down (held for flapping)");

        // Healthy again, but held: health says up, the state says down.
        assert_eq!(rig.see(&Observation::Up), None);
        assert_eq!(rig.backend.health(), Health::Up);
        assert!(!rig.backend.usable_for_new_flows());
        assert!(!rig.backend.usable_for_existing_flows());

        // Not before the hold ends.
        assert_eq!(rig.backend.tick(held_until - MS), None);
        let t = rig.backend.tick(held_until).expect("hold over");
        assert_eq!(t.to, State::Up);
        assert_eq!(t.reason, "flap hold ended");
        assert_eq!(rig.backend.up_since(), Some(held_until));
    }

    #[test]
    fn hold_ending_while_down_is_reported() {
        let mut rig = Rig::new(thresholds(1, 1, 1));
        rig.see(&Observation::Up);
        rig.see(&timeout());
        rig.see(&Observation::Up);
        rig.see(&timeout());
        rig.see(&Observation::Up);
        let t = rig.see(&timeout()).expect("held");
        let State::Down {
            held_until: Some(until),
        } = t.to
        else {
            panic!("expected a hold, got {}", t.to);
        };
        let t = rig.backend.tick(until).expect("hold visible change");
        assert_eq!(t.to, State::Down { held_until: None });
        assert_eq!(rig.backend.next_deadline(), None);
    }

    #[test]
    fn changes_spread_over_more_than_the_window_are_not_flapping() {
        let mut rig = Rig::new(thresholds(1, 1, 1));
        rig.see(&Observation::Up);
        for _ in 0..10 {
            rig.clock.advance(20 * SEC);
            rig.see(&timeout()).expect("down");
            rig.clock.advance(20 * SEC);
            rig.see(&Observation::Up).expect("up");
        }
        assert_eq!(rig.backend.held_until(), None);
        assert_eq!(rig.backend.state(), State::Up);
    }

    /// Flaps once per second until a hold starts; returns its length.
    fn flap_until_held(rig: &mut Rig) -> Duration {
        for _ in 0..100 {
            let o = if rig.backend.health() == Health::Up {
                timeout()
            } else {
                Observation::Up
            };
            rig.see(&o);
            if let Some(until) = rig.backend.held_until() {
                return until - rig.now();
            }
        }
        panic!("never held");
    }

    #[test]
    fn hold_doubles_per_episode_and_is_capped() {
        let mut rig = Rig::new(thresholds(1, 1, 1));
        rig.see(&Observation::Up);
        let mut holds = Vec::new();
        for _ in 0..7 {
            holds.push(flap_until_held(&mut rig));
            // Sit the hold out quietly, so the next episode needs fresh flaps.
            let until = rig.backend.held_until().unwrap();
            rig.clock.advance(until - rig.now());
            rig.backend.tick(rig.now());
        }
        let secs: Vec<u64> = holds.iter().map(Duration::as_secs).collect();
        assert_eq!(secs, [10, 20, 40, 80, 160, 300, 300]);
    }

    #[test]
    fn flapping_through_a_hold_starts_a_longer_one_at_once() {
        let mut rig = Rig::new(thresholds(1, 1, 1));
        rig.see(&Observation::Up);
        assert_eq!(flap_until_held(&mut rig), 10 * SEC);
        let first = rig.backend.held_until().unwrap();
        // Keep flapping through the hold: every check changes health.
        let mut transitions = Vec::new();
        while rig.now() < first {
            let o = if rig.backend.health() == Health::Up {
                timeout()
            } else {
                Observation::Up
            };
            transitions.extend(rig.see(&o));
        }
        let second = rig.backend.held_until().expect("a new hold");
        assert_eq!(second, first + 20 * SEC);
        // One transition: the hold deadline moved (visible in the state).
        assert_eq!(transitions.len(), 1);
        assert_eq!(
            transitions[0].to,
            State::Down {
                held_until: Some(second)
            }
        );
    }

    #[test]
    fn hold_decays_after_quiet_periods() {
        let flap = FlapPolicy {
            quiet_period: 60 * SEC,
            ..FlapPolicy::default()
        };
        let mut rig = Rig::with_flap(thresholds(1, 1, 1), flap);
        rig.see(&Observation::Up);
        for expected in [10, 20, 40] {
            assert_eq!(flap_until_held(&mut rig), expected * SEC);
            let until = rig.backend.held_until().unwrap();
            rig.clock.advance(until - rig.now());
            rig.backend.tick(rig.now());
        }
        assert_eq!(rig.backend.flap_level(), 3);
        // Two quiet minutes step the doubling back twice: 80 s becomes 20 s.
        rig.clock.advance(120 * SEC);
        assert_eq!(flap_until_held(&mut rig), 20 * SEC);
        // A long quiet spell brings it back to the start.
        let until = rig.backend.held_until().unwrap();
        rig.clock.advance(until - rig.now());
        rig.backend.tick(rig.now());
        rig.clock.advance(3600 * SEC);
        assert_eq!(flap_until_held(&mut rig), 10 * SEC);
    }

    #[test]
    fn hold_for_is_capped_and_never_overflows() {
        let flap = FlapPolicy::default();
        assert_eq!(flap.hold_for(0), 10 * SEC);
        assert_eq!(flap.hold_for(3), 80 * SEC);
        assert_eq!(flap.hold_for(5), 300 * SEC);
        assert_eq!(flap.hold_for(40), 300 * SEC);
        assert_eq!(flap.hold_for(u32::MAX), 300 * SEC);
    }

    #[test]
    fn drain_keeps_existing_flows_until_the_deadline() {
        let mut rig = Rig::new(thresholds(1, 1, 1));
        rig.see(&Observation::Up);
        let now = rig.clock.advance(SEC);
        let t = rig.backend.drain(now, 30 * SEC).expect("draining");
        let until = now + 30 * SEC;
        assert_eq!(t.from, State::Up);
        assert_eq!(t.to, State::Draining { since: now, until });
        assert_eq!(
            t.reason,
            "drained by operator (existing flows kept for 30s)"
        );
        assert!(!rig.backend.usable_for_new_flows());
        assert!(rig.backend.usable_for_existing_flows());
        assert_eq!(rig.backend.next_deadline(), Some(until));
        assert_eq!(rig.backend.up_since(), None);

        // A second drain does not move the deadline.
        assert_eq!(rig.backend.drain(now + SEC, 5 * SEC), None);
        // Checks keep running while draining without changing the state.
        assert_eq!(rig.see(&Observation::Up), None);

        assert_eq!(rig.backend.tick(until - MS), None);
        let t = rig.backend.tick(until).expect("drain over");
        assert_eq!(t.to, State::Disabled);
        assert_eq!(t.reason, "drain finished after 30s");
        assert!(!rig.backend.usable_for_existing_flows());
        assert_eq!(rig.backend.admin(), AdminState::Disabled);
    }

    #[test]
    fn draining_backend_that_goes_down_loses_existing_flows() {
        let mut rig = Rig::new(thresholds(1, 1, 1));
        rig.see(&Observation::Up);
        rig.backend.drain(rig.now(), 30 * SEC).expect("draining");
        assert_eq!(rig.see(&refused()), None, "still draining");
        assert_eq!(rig.backend.health(), Health::Down);
        assert_eq!(rig.backend.health_reason(), "connect refused");
        assert!(!rig.backend.usable_for_existing_flows());
    }

    #[test]
    fn disable_and_enable() {
        let mut rig = Rig::new(thresholds(1, 1, 1));
        rig.see(&Observation::Up);
        let now = rig.clock.advance(SEC);
        let t = rig.backend.disable(now).expect("disabled");
        assert_eq!((t.from, t.to), (State::Up, State::Disabled));
        assert_eq!(t.reason, "disabled by operator");
        assert!(!rig.backend.usable_for_new_flows());
        assert!(!rig.backend.usable_for_existing_flows());
        assert_eq!(rig.backend.disable(now), None);
        assert_eq!(rig.backend.drain(now, SEC), None, "drain never loosens");

        // Health keeps being tracked while disabled.
        assert_eq!(rig.see(&timeout()), None);
        assert_eq!(rig.backend.health(), Health::Down);
        rig.see(&Observation::Up);

        let now = rig.clock.advance(SEC);
        let t = rig.backend.enable(now).expect("enabled");
        assert_eq!((t.from, t.to), (State::Disabled, State::Up));
        assert_eq!(t.reason, "enabled by operator");
        assert_eq!(rig.backend.up_since(), Some(now));
        assert_eq!(rig.backend.enable(now), None);
    }

    #[test]
    fn enable_ends_a_drain_and_follows_health() {
        let mut rig = Rig::new(thresholds(1, 1, 1));
        rig.see(&timeout());
        let now = rig.clock.advance(SEC);
        rig.backend.drain(now, 10 * SEC).expect("draining");
        let t = rig.backend.enable(now).expect("enabled");
        assert_eq!(t.to, State::Down { held_until: None });
        assert_eq!(rig.backend.next_deadline(), None);
    }

    #[test]
    fn enable_of_an_unchecked_backend_is_unknown() {
        let mut rig = Rig::new(Thresholds::default());
        let now = rig.now();
        rig.backend.disable(now).expect("disabled");
        let t = rig.backend.enable(now).expect("enabled");
        assert_eq!(t.to, State::Unknown);
    }

    #[test]
    fn status_summarises_usability() {
        let mut rig = Rig::new(thresholds(1, 1, 1));
        assert_eq!(
            rig.backend.status(),
            BackendStatus {
                new_flows: false,
                existing_flows: false,
                enabled: true,
                up_since: None
            }
        );
        rig.see(&Observation::Up);
        let up = rig.now();
        assert_eq!(
            rig.backend.status(),
            BackendStatus {
                new_flows: true,
                existing_flows: true,
                enabled: true,
                up_since: Some(up)
            }
        );
        rig.backend.drain(rig.now(), SEC);
        assert_eq!(
            rig.backend.status(),
            BackendStatus {
                new_flows: false,
                existing_flows: true,
                enabled: false,
                up_since: None
            }
        );
    }

    #[test]
    fn transition_display_is_readable() {
        let mut rig = Rig::new(thresholds(1, 1, 1));
        let t = rig.see(&failed("HTTP 503")).unwrap();
        assert_eq!(t.to_string(), "unknown -> down: HTTP 503");
    }
}
