//! The failover brain: turns probe results into backend states, backend states into each
//! service's selection (tiers, failback, exactly-one, panic), and selections into the
//! dataplane. It is the one owner of the map handles; everything reaches it as a message.

use std::{
    collections::{HashMap, VecDeque},
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use failover_common::FlowKey;

use crate::{
    config::{CheckConfig, Config},
    control::protocol::{
        BackendStatusView, CounterView, EventView, Explanation, Request, Response, ServiceStatus,
        Status, SwitchTimes, TrafficView,
    },
    dataplane::{Dataplane, addr_words},
    health::{
        Target,
        scheduler::{Report, Schedule},
    },
    layout::Layout,
    program::{self, Membership, ProgramError},
    selection::{
        state::{BackendState, FlapPolicy, Observation, Thresholds, Transition},
        tiers::{BackendInput, Selection, TierPolicy, TierSelector},
    },
};

/// An operator's action on one backend.
#[derive(Clone, Copy)]
enum Manual {
    Drain,
    Disable,
    Enable,
}

/// Upper bounds (microseconds) of the verdict-to-map histogram's buckets.
const SWITCH_BOUNDS_US: [u64; 10] = [
    50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 50_000, 250_000,
];

/// How many state changes `events` keeps.
const EVENT_HISTORY: usize = 1024;

/// A backend's state change, or a service's new selection, for the event log.
#[derive(Clone, Debug)]
pub struct Event {
    /// When it happened.
    pub at: Instant,
    /// Service name.
    pub service: String,
    /// Backend name, for backend events.
    pub backend: Option<String>,
    /// What changed, e.g. "up -> down: connect refused".
    pub what: String,
}

/// One distinct probe target and the (service, backend) pairs it decides for.
struct TargetInfo {
    target: Target,
    users: Vec<(usize, usize)>,
    check: CheckConfig,
}

/// Health, selection and dataplane state of the whole config.
pub struct Brain {
    cfg: Config,
    layout: Layout,
    dp: Dataplane,
    macs: HashMap<IpAddr, [u8; 6]>,
    /// `[service][backend]`.
    states: Vec<Vec<BackendState>>,
    selectors: Vec<TierSelector>,
    /// What each service last published (`None` before its first).
    published: Vec<Option<Selection>>,
    targets: Vec<TargetInfo>,
    events: VecDeque<Event>,
    /// Time from a probe result to the map switch it caused, most recent first.
    switch_times: VecDeque<Duration>,
    /// Every switch time since the start, counted per bucket of [`SWITCH_BOUNDS_US`]
    /// (one more bucket for the slower ones), and their sum in microseconds.
    switch_histogram: ([u64; SWITCH_BOUNDS_US.len() + 1], u64),
    /// Set by the first [`Brain::publish_all`]: before it, results only build up states,
    /// so the first selection sees every first verdict at once (a backup that answered
    /// first must not become the active tier and then wait out a failback hold).
    publishing: bool,
    /// Numbering of `targets`: bumped when a reload renumbers them.
    generation: u64,
    /// Per service: until when it waits for first verdicts before its first publish
    /// (services added by a reload).
    hold: Vec<Option<Instant>>,
    /// What adopted maps hold that the config no longer has: removed at the first publish.
    stale: crate::layout::Stale,
    /// [`Brain::next_deadline`], cached: `None` when it must be computed over every state
    /// again. A probe result only lowers it (its users' deadlines), so the loop does not
    /// scan 10,000 backends per result; a stale, early value only wakes [`Brain::tick`]
    /// once for nothing.
    deadline: Option<Option<Instant>>,
}

/// Groups backends by distinct probe target (a backend shared by services with the same
/// check is probed once); `none` checks have no target.
fn group_targets(cfg: &Config) -> Vec<TargetInfo> {
    let mut targets: Vec<TargetInfo> = Vec::new();
    let mut index: HashMap<Target, usize> = HashMap::new();
    for (s, svc) in cfg.services.iter().enumerate() {
        for (b, backend) in svc.backends.iter().enumerate() {
            let Some(t) = Target::new(
                backend.address,
                svc.port.port(),
                backend.port,
                &backend.check,
            ) else {
                continue;
            };
            let i = *index.entry(t.clone()).or_insert_with(|| {
                targets.push(TargetInfo {
                    target: t,
                    users: Vec::new(),
                    check: backend.check.clone(),
                });
                targets.len() - 1
            });
            let info = &mut targets[i];
            info.users.push((s, b));
            // Shared targets probe at the pace of their most demanding user.
            info.check.interval = info.check.interval.min(backend.check.interval);
            info.check.fast_interval = info.check.fast_interval.min(backend.check.fast_interval);
        }
    }
    targets
}

/// A fresh state for a backend: unknown until checked, up at once for `none` checks.
fn new_state(
    backend: &crate::config::BackendConfig,
    service_port: Option<u16>,
    now: Instant,
) -> BackendState {
    let mut state = BackendState::new(now, Thresholds::from(&backend.check), FlapPolicy::default());
    if Target::new(backend.address, service_port, backend.port, &backend.check).is_none() {
        // `none`: always usable, for manual control.
        state.set_thresholds(Thresholds {
            rise: 1,
            ..state.thresholds()
        });
        state.observe(now, &Observation::Up, Duration::ZERO);
    }
    state
}

/// What a reload changed.
#[derive(Debug, Default)]
pub struct Reloaded {
    /// Services added.
    pub added: Vec<String>,
    /// Services removed.
    pub removed: Vec<String>,
    /// Services whose settings or backends changed (and were republished).
    pub services: Vec<String>,
    /// Whether the probe targets changed (the caller restarts the probes).
    pub targets_changed: bool,
}

impl std::fmt::Display for Reloaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list = |v: &[String]| {
            if v.is_empty() {
                "none".to_string()
            } else {
                v.join(", ")
            }
        };
        write!(
            f,
            "added: {}; removed: {}; changed: {}",
            list(&self.added),
            list(&self.removed),
            list(&self.services)
        )
    }
}

/// How long a service added by a reload waits for first verdicts before it is published
/// anyway: its slowest check's `rise` (or `fall`) results at the fast interval, plus a
/// timeout.
fn first_verdicts_wait(svc: &crate::config::ServiceConfig) -> Duration {
    svc.backends
        .iter()
        .map(|b| b.check.fast_interval * b.check.rise.max(b.check.fall) + b.check.timeout)
        .max()
        .unwrap_or(Duration::ZERO)
        + Duration::from_millis(100)
}

/// What the tier selector needs of a service's backends.
fn inputs<'a>(
    svc: &'a crate::config::ServiceConfig,
    states: &[BackendState],
) -> Vec<BackendInput<'a>> {
    svc.backends
        .iter()
        .zip(states)
        .map(|(b, st)| BackendInput::new(b, st.status()))
        .collect()
}

impl Brain {
    /// Sets up states for every backend (unknown until checked; `none` checks are up at
    /// once) and groups backends by distinct probe target.
    pub fn new(
        cfg: Config,
        layout: Layout,
        dp: Dataplane,
        macs: HashMap<IpAddr, [u8; 6]>,
        now: Instant,
    ) -> Self {
        let targets = group_targets(&cfg);
        let states = cfg
            .services
            .iter()
            .map(|svc| {
                svc.backends
                    .iter()
                    .map(|b| new_state(b, svc.port.port(), now))
                    .collect()
            })
            .collect();
        let selectors = cfg
            .services
            .iter()
            .map(|s| TierSelector::new(TierPolicy::from(s)))
            .collect();
        let published = vec![None; cfg.services.len()];
        let hold = vec![None; cfg.services.len()];
        Self {
            cfg,
            layout,
            dp,
            macs,
            states,
            selectors,
            published,
            targets,
            events: VecDeque::new(),
            switch_times: VecDeque::new(),
            switch_histogram: ([0; SWITCH_BOUNDS_US.len() + 1], 0),
            publishing: false,
            generation: 0,
            hold,
            stale: crate::layout::Stale::default(),
            deadline: None,
        }
    }

    /// Service keys and backends the adopted maps hold that the config no longer has:
    /// removed at the first publish (until then the adopted tables stay as they are).
    pub fn remove_at_publish(&mut self, stale: crate::layout::Stale) {
        self.stale = stale;
    }

    /// Every probe target with its starting schedule (fast: nothing is known yet).
    pub fn targets(&self) -> Vec<(Target, Schedule)> {
        self.targets
            .iter()
            .map(|t| {
                let s = Schedule {
                    interval: t.check.fast_interval,
                    jitter_percent: t.check.jitter_percent,
                };
                (t.target.clone(), s)
            })
            .collect()
    }

    /// The numbering of [`Brain::targets`], for [`crate::health::scheduler::spawn`].
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// How long a fresh start may wait for first verdicts: the slowest check's `rise`
    /// results at its fast interval, plus a timeout.
    /// With more targets than `concurrency` probes in flight, each further batch may take
    /// one more timeout per result needed.
    pub fn startup_wait(&self, concurrency: usize) -> Duration {
        let slowest = |f: &dyn Fn(&CheckConfig) -> Duration| {
            self.targets
                .iter()
                .map(|t| f(&t.check))
                .max()
                .unwrap_or(Duration::ZERO)
        };
        let batches = self.targets.len().div_ceil(concurrency.max(1)).max(1) as u32;
        slowest(&|c| c.fast_interval * c.rise.max(c.fall) + c.timeout)
            + slowest(&|c| c.timeout * c.rise.max(c.fall)) * (batches - 1)
            + Duration::from_millis(100)
    }

    /// Whether every checked backend has a verdict.
    pub fn converged(&self) -> bool {
        self.states
            .iter()
            .flatten()
            .all(|s| s.health() != crate::selection::state::Health::Unknown)
    }

    /// Takes a probe result: updates its users' states, re-selects the services whose
    /// states changed (publishing only real changes), and returns the target's new
    /// schedule.
    pub fn on_probe(
        &mut self,
        report: &Report,
        now: Instant,
    ) -> Result<Option<Schedule>, ProgramError> {
        if report.target >= self.targets.len() {
            return Ok(None);
        }
        let obs = &report.result.outcome;
        // Taken for the call and put back below (no copy per probe result).
        let users = std::mem::take(&mut self.targets[report.target].users);
        let mut dirty = Vec::new();
        for &(s, b) in &users {
            if let Some(t) = self.states[s][b].observe(now, obs, report.result.latency) {
                self.record(s, Some(b), &t);
                dirty.push(s);
            }
        }
        dirty.dedup();
        if let Some(cached) = self.deadline {
            let users_next = users
                .iter()
                .filter_map(|&(s, b)| self.states[s][b].next_deadline())
                .min();
            self.deadline = Some(cached.into_iter().chain(users_next).min());
        }
        let pending = users.iter().any(|&(s, b)| self.states[s][b].pending());
        self.targets[report.target].users = users;
        if !self.publishing {
            dirty.clear();
        }
        for s in dirty {
            self.recompute(s, now, Some(report.result.at))?;
        }
        let info = &self.targets[report.target];
        let interval = if pending {
            info.check.fast_interval
        } else {
            info.check.interval
        };
        Ok(Some(Schedule {
            interval,
            jitter_percent: info.check.jitter_percent,
        }))
    }

    /// A backend reset a new flow's SYN (reported by the packet path): returns the probe
    /// target to check at once.
    pub fn on_reset(&mut self, service: u32, backend: u32, now: Instant) -> Option<usize> {
        let s = self
            .layout
            .services
            .iter()
            .position(|l| l.entry.id == service)?;
        let b = self.layout.services[s]
            .backends
            .iter()
            .position(|l| l.id == backend)?;
        let svc = &self.cfg.services[s];
        let (service, backend) = (svc.name.clone(), svc.backends[b].name.clone());
        tracing::info!(service = %service, backend = %backend, "backend reset a new connection; checking it now");
        self.push_event(Event {
            at: now,
            service,
            backend: Some(backend),
            what: "reset a new connection's SYN: checking now".into(),
        });
        self.targets.iter().position(|t| t.users.contains(&(s, b)))
    }

    /// Applies time-driven changes (flap holds and drains ending, slow-start ramps,
    /// automatic failback).
    pub fn tick(&mut self, now: Instant) -> Result<(), ProgramError> {
        if !self.publishing {
            return Ok(());
        }
        for s in 0..self.states.len() {
            let mut changed = false;
            for b in 0..self.states[s].len() {
                if let Some(t) = self.states[s][b].tick(now) {
                    self.record(s, Some(b), &t);
                    changed = true;
                }
            }
            let due = self.published[s]
                .as_ref()
                .and_then(Selection::next_recompute)
                .or(self.hold[s])
                .is_some_and(|d| d <= now);
            if changed || due {
                self.recompute(s, now, None)?;
            }
        }
        self.deadline = None;
        Ok(())
    }

    /// The next time [`Brain::tick`] has work.
    pub fn next_deadline(&mut self) -> Option<Instant> {
        if let Some(cached) = self.deadline {
            return cached;
        }
        let states = self
            .states
            .iter()
            .flatten()
            .filter_map(BackendState::next_deadline);
        let selections = self
            .published
            .iter()
            .flatten()
            .filter_map(Selection::next_recompute);
        let holds = self.hold.iter().flatten().copied();
        let next = states.chain(selections).chain(holds).min();
        self.deadline = Some(next);
        next
    }

    /// Publishes every service (at start, and after MACs change).
    pub fn publish_all(&mut self, now: Instant) -> Result<(), ProgramError> {
        self.publish(now, false)
    }

    /// After adopting pinned tables: publishes the services whose backends all have
    /// fresh verdicts; the others keep forwarding with the adopted tables until theirs
    /// arrive (each verdict then publishes its service as usual).
    pub fn publish_converged(&mut self, now: Instant) -> Result<(), ProgramError> {
        self.publish(now, true)
    }

    fn publish(&mut self, now: Instant, only_converged: bool) -> Result<(), ProgramError> {
        self.publishing = true;
        self.dp.set_globals(&program::globals(&self.cfg))?;
        for s in 0..self.cfg.services.len() {
            let unknown = self.states[s]
                .iter()
                .any(|st| st.health() == crate::selection::state::Health::Unknown);
            if only_converged && unknown {
                tracing::warn!(service = %self.cfg.services[s].name, "no fresh verdict for every backend yet: keeping the adopted table");
                continue;
            }
            self.published[s] = None;
            self.recompute(s, now, None)?;
        }
        let stale = std::mem::take(&mut self.stale);
        if stale != crate::layout::Stale::default() {
            tracing::info!(
                keys = stale.keys.len(),
                backends = stale.backends.len(),
                "removing what the adopted maps hold and the config no longer has"
            );
        }
        self.dp
            .clear_traffic(&stale.new_services, &stale.new_backends)?;
        self.dp.remove_keys(&stale.keys)?;
        for id in stale.backends {
            self.dp.clear_backend(id)?;
        }
        Ok(())
    }

    /// Replaces the backends' MACs; republishes if any changed.
    pub fn set_macs(
        &mut self,
        macs: HashMap<IpAddr, [u8; 6]>,
        now: Instant,
    ) -> Result<(), ProgramError> {
        if macs != self.macs {
            self.macs = macs;
            tracing::info!("backend MACs changed; rewriting backends");
            self.publish_all(now)?;
        }
        Ok(())
    }

    /// Applies a new config without touching what did not change. Services and backends
    /// are matched by name: those that stay keep their ids, table halves, states (and so
    /// their connection-table entries); changed services are re-selected and republished;
    /// added ones get free ids and are published once their backends have first verdicts;
    /// removed ones lose their keys, and removed backends are cleared (their flows are
    /// re-picked). Unaffected services see no map write at all. A config that does not fit
    /// the loaded maps is refused and nothing changes.
    pub fn reload(&mut self, cfg: Config, now: Instant) -> Result<Reloaded, String> {
        let layout = crate::layout::replan(&cfg, &self.layout).map_err(|e| {
            format!(
                "reload rejected, the running config stays: {e}. Restart the daemon to size the maps for it \
                 (`systemctl restart failover`: forwarding goes on from the pinned tables, and the \
                 connection tables are kept where their size does not change)"
            )
        })?;
        let mut out = Reloaded::default();
        let n = cfg.services.len();
        let mut states = Vec::with_capacity(n);
        let mut selectors = Vec::with_capacity(n);
        let mut published = Vec::with_capacity(n);
        let mut hold = Vec::with_capacity(n);
        let mut fresh_services = Vec::new();
        let mut fresh_backends = Vec::new();
        let mut republish = Vec::new();
        for (s, svc) in cfg.services.iter().enumerate() {
            let sl = &layout.services[s];
            let Some(o) = self.cfg.services.iter().position(|x| x.name == svc.name) else {
                out.added.push(svc.name.clone());
                states.push(
                    svc.backends
                        .iter()
                        .map(|b| new_state(b, svc.port.port(), now))
                        .collect::<Vec<_>>(),
                );
                selectors.push(TierSelector::new(TierPolicy::from(svc)));
                published.push(None);
                hold.push(Some(now + first_verdicts_wait(svc)));
                fresh_services.push(sl.entry.id);
                fresh_backends.extend(sl.backends.iter().map(|b| b.id));
                continue;
            };
            let old = &self.cfg.services[o];
            let changed = svc != old || *sl != self.layout.services[o];
            let mut svc_states = Vec::with_capacity(svc.backends.len());
            for (b, backend) in svc.backends.iter().enumerate() {
                let kept = old.backends.iter().position(|x| x.name == backend.name);
                let state = match kept {
                    Some(ob)
                        if old.backends[ob].check == backend.check
                            && old.backends[ob].address == backend.address
                            && old.backends[ob].port == backend.port =>
                    {
                        let mut st = self.states[o][ob].clone();
                        st.set_thresholds(Thresholds::from(&backend.check));
                        st
                    }
                    // New, or another thing to check: start from "unknown" again.
                    _ => {
                        if kept.is_none() {
                            fresh_backends.push(sl.backends[b].id);
                        }
                        new_state(backend, svc.port.port(), now)
                    }
                };
                svc_states.push(state);
            }
            states.push(svc_states);
            let mut selector = self.selectors[o].clone();
            if changed {
                selector.set_policy(TierPolicy::from(svc));
                out.services.push(svc.name.clone());
                republish.push(s);
            }
            selectors.push(selector);
            published.push(if changed {
                None
            } else {
                self.published[o].clone()
            });
            hold.push(self.hold[o]);
        }
        let removed: Vec<usize> = (0..self.cfg.services.len())
            .filter(|&o| {
                cfg.services
                    .iter()
                    .all(|x| x.name != self.cfg.services[o].name)
            })
            .collect();
        out.removed = removed
            .iter()
            .map(|&o| self.cfg.services[o].name.clone())
            .collect();
        let globals_changed = program::globals(&cfg) != program::globals(&self.cfg);
        let old_layout = std::mem::replace(&mut self.layout, layout);
        let old_targets: Vec<Target> = self.targets.iter().map(|t| t.target.clone()).collect();
        self.cfg = cfg;
        self.states = states;
        self.selectors = selectors;
        self.published = published;
        self.hold = hold;
        self.deadline = None;
        self.targets = group_targets(&self.cfg);
        out.targets_changed = self
            .targets
            .iter()
            .map(|t| &t.target)
            .ne(old_targets.iter());
        if out.targets_changed {
            self.generation += 1;
        }

        // Write: new ids start from zeroed counters; changed services get their new
        // tables; then whatever the old layout had and the new one does not goes.
        let map_err = |what: &str, e: &dyn std::fmt::Display| {
            format!(
                "reload: {what}: {e} (the new config is in effect for the services written so far; fix the cause and reload again)"
            )
        };
        self.dp
            .clear_traffic(&fresh_services, &fresh_backends)
            .map_err(|e| map_err("clearing counters", &e))?;
        if globals_changed {
            self.dp
                .set_globals(&program::globals(&self.cfg))
                .map_err(|e| map_err("globals", &e))?;
        }
        for s in republish {
            self.recompute(s, now, None)
                .map_err(|e| map_err(&self.cfg.services[s].name.clone(), &e))?;
        }
        let live_keys: Vec<failover_common::ServiceKey> = self
            .layout
            .services
            .iter()
            .flat_map(|s| s.entry.keys.iter().copied())
            .collect();
        let live_backends: Vec<u32> = self
            .layout
            .services
            .iter()
            .flat_map(|s| s.backends.iter().map(|b| b.id))
            .collect();
        // Keys a live service still has (a renamed service keeps its VIP) stay.
        for &o in &removed {
            self.dp.forget_table(old_layout.services[o].entry.id);
        }
        let gone_keys: Vec<failover_common::ServiceKey> = old_layout
            .services
            .iter()
            .flat_map(|s| s.entry.keys.iter().copied())
            .filter(|k| !live_keys.contains(k))
            .collect();
        self.dp
            .remove_keys(&gone_keys)
            .map_err(|e| map_err("removing service keys", &e))?;
        for id in old_layout
            .services
            .iter()
            .flat_map(|s| s.backends.iter().map(|b| b.id))
            .filter(|id| !live_backends.contains(id))
        {
            self.dp
                .clear_backend(id)
                .map_err(|e| map_err("clearing a removed backend", &e))?;
        }
        self.push_event(Event {
            at: now,
            service: "-".into(),
            backend: None,
            what: format!("reloaded: {out}"),
        });
        tracing::info!(added = ?out.added, removed = ?out.removed, changed = ?out.services, "config reloaded");
        Ok(out)
    }

    /// Answers a control request (the control socket's handler).
    pub fn handle(&mut self, req: Request, started: Instant, now: Instant) -> Response {
        let result = match req {
            Request::Status => return Response::Status(self.status(started, now)),
            Request::Events { limit } => {
                let limit = limit.unwrap_or(50);
                let skip = self.events.len().saturating_sub(limit);
                let events = self
                    .events
                    .iter()
                    .skip(skip)
                    .map(|e| EventView {
                        age_secs: now.saturating_duration_since(e.at).as_secs_f64(),
                        service: e.service.clone(),
                        backend: e.backend.clone(),
                        what: e.what.clone(),
                    })
                    .collect();
                return Response::Events { events };
            }
            Request::Drain { service, backend } => {
                self.manual(&service, &backend, now, Manual::Drain)
            }
            Request::Disable { service, backend } => {
                self.manual(&service, &backend, now, Manual::Disable)
            }
            Request::Enable { service, backend } => {
                self.manual(&service, &backend, now, Manual::Enable)
            }
            Request::Failback { service } => self.failback(&service, now),
            // The daemon handles reloads (it re-reads the file and restarts probes).
            Request::Reload => Err("reload is handled by the daemon".to_string()),
            Request::Explain { service, client } => return self.explain(&service, client),
        };
        match result {
            Ok(message) => Response::Done { message },
            Err(message) => Response::Error { message },
        }
    }

    fn find(&self, service: &str, backend: Option<&str>) -> Result<(usize, Option<usize>), String> {
        let s = self
            .cfg
            .services
            .iter()
            .position(|x| x.name == service)
            .ok_or_else(|| {
                let names: Vec<&str> = self.cfg.services.iter().map(|x| x.name.as_str()).collect();
                format!("no service {service:?} (services: {})", names.join(", "))
            })?;
        let Some(backend) = backend else {
            return Ok((s, None));
        };
        let svc = &self.cfg.services[s];
        let b = svc
            .backends
            .iter()
            .position(|x| x.name == backend)
            .ok_or_else(|| {
                let names: Vec<&str> = svc.backends.iter().map(|x| x.name.as_str()).collect();
                format!(
                    "service {service} has no backend {backend:?} (backends: {})",
                    names.join(", ")
                )
            })?;
        Ok((s, Some(b)))
    }

    fn manual(
        &mut self,
        service: &str,
        backend: &str,
        now: Instant,
        op: Manual,
    ) -> Result<String, String> {
        let (s, b) = self.find(service, Some(backend))?;
        let b = b.unwrap_or_default();
        let drain_timeout = self.cfg.services[s].drain_timeout;
        let st = &mut self.states[s][b];
        let t = match op {
            Manual::Drain => st.drain(now, drain_timeout),
            Manual::Disable => st.disable(now),
            Manual::Enable => st.enable(now),
        };
        let state = st.state();
        if let Some(t) = t {
            self.record(s, Some(b), &t);
            self.recompute(s, now, None)
                .map_err(|e| format!("{service}/{backend}: writing the tables failed: {e}"))?;
        }
        Ok(format!("{service}/{backend}: {state}"))
    }

    fn failback(&mut self, service: &str, now: Instant) -> Result<String, String> {
        let (s, _) = self.find(service, None)?;
        let svc = &self.cfg.services[s];
        let inputs = inputs(svc, &self.states[s]);
        let sel = self.selectors[s]
            .failback(now, &inputs)
            .map_err(|e| format!("{service}: {e}"))?;
        let tier = sel.active_tier;
        self.push_event(Event {
            at: now,
            service: service.to_string(),
            backend: None,
            what: format!("failback by operator to tier {tier:?}"),
        });
        self.published[s] = None;
        self.recompute(s, now, None)
            .map_err(|e| format!("{service}: writing the tables failed: {e}"))?;
        Ok(format!(
            "{service}: failed back to tier {}",
            tier.map_or("-".into(), |t| t.to_string())
        ))
    }

    fn traffic(
        &self,
        t: Result<failover_common::Traffic, crate::dataplane::DataplaneError>,
    ) -> TrafficView {
        let t = t.unwrap_or_default();
        TrafficView {
            packets: t.packets,
            bytes: t.bytes,
            new_flows: t.new_flows,
        }
    }

    /// Everything `failover status` shows.
    pub fn status(&self, started: Instant, now: Instant) -> Status {
        let services = self
            .cfg
            .services
            .iter()
            .enumerate()
            .map(|(s, svc)| {
                let sl = &self.layout.services[s];
                let sel = self.published[s].as_ref();
                let backends = svc
                    .backends
                    .iter()
                    .enumerate()
                    .map(|(b, bc)| {
                        let st = &self.states[s][b];
                        let member =
                            sel.and_then(|sel| sel.members.iter().find(|m| m.name == bc.name));
                        let mut state = st.state().to_string();
                        if let Some(until) = st.held_until() {
                            state = format!(
                                "down (held {}s)",
                                until.saturating_duration_since(now).as_secs()
                            );
                        }
                        BackendStatusView {
                            name: bc.name.clone(),
                            address: bc.address.to_string(),
                            state,
                            since_secs: now
                                .saturating_duration_since(st.last_change())
                                .as_secs_f64(),
                            reason: st.reason().to_string(),
                            last_check_latency_ms: st
                                .last_latency()
                                .map(|d| d.as_secs_f64() * 1000.0),
                            tier: bc.tier,
                            weight: bc.weight,
                            table_weight: member
                                .filter(|m| m.new_flows)
                                .map(|m| m.weight_for_table),
                            new_flows: member.is_some_and(|m| m.new_flows),
                            traffic: self.traffic(self.dp.backend_traffic(sl.backends[b].id)),
                        }
                    })
                    .collect();
                ServiceStatus {
                    name: svc.name.clone(),
                    vip: svc.vip.to_string(),
                    port: svc.port.to_string(),
                    protocol: svc.protocol.to_string(),
                    mode: svc.mode.to_string(),
                    active_tier: sel.and_then(|s| s.active_tier),
                    panic: sel.is_some_and(|s| s.panic),
                    reason: sel.map_or_else(|| "not published yet".into(), |s| s.reason.clone()),
                    traffic: self.traffic(self.dp.service_traffic(sl.entry.id)),
                    backends,
                }
            })
            .collect();
        let counters = self
            .dp
            .counters()
            .unwrap_or_default()
            .into_iter()
            .map(|(c, v)| CounterView {
                name: c.name().to_string(),
                value: v,
            })
            .collect();
        let mut times: Vec<u64> = self
            .switch_times
            .iter()
            .map(|d| d.as_micros() as u64)
            .collect();
        let last = times.first().copied();
        times.sort_unstable();
        let switch_time_us = last.map(|last| SwitchTimes {
            last,
            median: times[times.len() / 2],
            max: times[times.len() - 1],
            samples: times.len(),
            bounds_us: SWITCH_BOUNDS_US.to_vec(),
            buckets: self.switch_histogram.0.to_vec(),
            sum_us: self.switch_histogram.1,
        });
        Status {
            version: env!("CARGO_PKG_VERSION").to_string(),
            interface: self.cfg.interfaces.join(","),
            uptime_secs: now.saturating_duration_since(started).as_secs_f64(),
            services,
            counters,
            switch_time_us,
        }
    }

    /// Which backend a client's flow goes to, and why.
    fn explain(&mut self, service: &str, client: SocketAddr) -> Response {
        let (s, _) = match self.find(service, None) {
            Ok(x) => x,
            Err(message) => return Response::Error { message },
        };
        let svc = &self.cfg.services[s];
        if client.is_ipv4() != svc.vip.is_ipv4() {
            return Response::Error {
                message: format!(
                    "{service} has an {} VIP; the client must be of the same family",
                    if svc.vip.is_ipv4() { "IPv4" } else { "IPv6" }
                ),
            };
        }
        let sl = &self.layout.services[s];
        let (src_be, family) = addr_words(client.ip());
        let (dst_be, _) = addr_words(svc.vip);
        let port = svc.port.port().unwrap_or(0);
        let key = FlowKey {
            src_be,
            dst_be,
            sport_be: client.port().to_be(),
            dport_be: port.to_be(),
            proto: crate::layout::proto_number(svc.protocol),
            family,
            _pad: [0; 2],
        };
        let name_of = |id: u32| {
            sl.backends
                .iter()
                .find(|b| b.id == id)
                .map(|b| b.name.clone())
        };
        let sel = self.published[s].as_ref();
        let tier = sel.and_then(|x| x.active_tier);
        if let Some(flow) = self.dp.flow(&key) {
            let usable = self
                .dp
                .backend(flow.backend)
                .is_ok_and(|b| b.usable_for(sl.entry.id));
            if flow.service == sl.entry.id && usable {
                return Response::Explain(Explanation {
                    service: service.into(),
                    client: client.to_string(),
                    backend: name_of(flow.backend),
                    how: "connection-table hit: an established flow stays on its backend".into(),
                    tier,
                });
            }
        }
        if sel.is_some_and(|x| x.panic)
            && sel.is_some_and(|x| x.new_flow_members().next().is_none())
        {
            return Response::Explain(Explanation {
                service: service.into(),
                client: client.to_string(),
                backend: None,
                how: format!("panic: no usable backend; policy {}", svc.no_backend),
                tier,
            });
        }
        let hash = key.hash();
        let table = self.dp.active_table(&sl.entry);
        let (backend, how) = match table {
            Some(t) if !t.is_empty() => {
                let slot = hash % sl.entry.ring_size;
                (
                    name_of(t[slot as usize]),
                    format!(
                        "new flow: Maglev slot {slot} of {} (flow hash {hash:#010x})",
                        sl.entry.ring_size
                    ),
                )
            }
            _ => (None, "no table published yet".into()),
        };
        Response::Explain(Explanation {
            service: service.into(),
            client: client.to_string(),
            backend,
            how,
            tier,
        })
    }

    /// The dataplane (for attaching, counters).
    pub fn dataplane_mut(&mut self) -> &mut Dataplane {
        &mut self.dp
    }

    /// The most recent events, oldest first.
    pub fn events(&self) -> impl Iterator<Item = &Event> {
        self.events.iter()
    }

    /// Recent probe-result-to-map-switch times, most recent first.
    pub fn switch_times(&self) -> impl Iterator<Item = &Duration> {
        self.switch_times.iter()
    }

    fn record(&mut self, s: usize, b: Option<usize>, t: &Transition) {
        let service = self.cfg.services[s].name.clone();
        let backend = b.map(|b| self.cfg.services[s].backends[b].name.clone());
        tracing::info!(
            service = %service,
            backend = %backend.as_deref().unwrap_or("-"),
            from = %t.from,
            to = %t.to,
            reason = %t.reason,
            "backend state changed"
        );
        self.push_event(Event {
            at: t.at,
            service,
            backend,
            what: format!("{} -> {}: {}", t.from, t.to, t.reason),
        });
    }

    fn push_event(&mut self, e: Event) {
        if self.events.len() == EVENT_HISTORY {
            self.events.pop_front();
        }
        self.events.push_back(e);
    }

    /// Re-selects service `s` and writes it if the selection changed. `cause` is when the
    /// probe result that led here arrived (for the switch-time figure).
    fn recompute(
        &mut self,
        s: usize,
        now: Instant,
        cause: Option<Instant>,
    ) -> Result<(), ProgramError> {
        // A new selection or state may bring new deadlines.
        self.deadline = None;
        if let Some(until) = self.hold[s] {
            let unknown = self.states[s]
                .iter()
                .any(|st| st.health() == crate::selection::state::Health::Unknown);
            if unknown && now < until {
                return Ok(());
            }
            self.hold[s] = None;
        }
        let svc = &self.cfg.services[s];
        let inputs = inputs(svc, &self.states[s]);
        let sel = self.selectors[s].select(now, &inputs);
        if self.published[s].as_ref() == Some(&sel) {
            return Ok(());
        }
        let new_flows: Vec<(&str, u32)> = sel
            .new_flow_members()
            .map(|m| (m.name.as_str(), m.weight_for_table))
            .collect();
        let existing = |name: &str| sel.existing_flows().any(|n| n == name);
        let macs = &self.macs;
        program::apply_service(
            &mut self.dp,
            svc,
            &self.layout.services[s],
            &|a| macs.get(&a).copied().unwrap_or([0; 6]),
            &Membership {
                new_flows,
                existing: &existing,
            },
        )?;
        let switch = cause.map(|c| c.elapsed());
        let members: Vec<String> = sel
            .members
            .iter()
            .map(|m| {
                if m.new_flows {
                    format!("{}:{}", m.name, m.weight_for_table)
                } else {
                    format!("{}:existing", m.name)
                }
            })
            .collect();
        tracing::info!(
            service = %svc.name,
            tier = ?sel.active_tier,
            panic = sel.panic,
            members = %members.join(","),
            reason = %sel.reason,
            switch_us = switch.map(|d| d.as_micros() as u64),
            "selection published"
        );
        if let Some(d) = switch {
            if self.switch_times.len() == EVENT_HISTORY {
                self.switch_times.pop_back();
            }
            self.switch_times.push_front(d);
            let us = d.as_micros() as u64;
            let bucket = SWITCH_BOUNDS_US.partition_point(|&b| b < us);
            self.switch_histogram.0[bucket] += 1;
            self.switch_histogram.1 += us;
        }
        let what = format!("selection: {} ({})", members.join(","), sel.reason);
        self.push_event(Event {
            at: now,
            service: svc.name.clone(),
            backend: None,
            what,
        });
        self.published[s] = Some(sel);
        Ok(())
    }
}
