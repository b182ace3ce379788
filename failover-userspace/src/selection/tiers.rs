//! Which backends a service may use, given each backend's state: tiers, failback, exactly-one,
//! panic policy, drain and slow start.
//!
//! One [`TierSelector`] per service turns the backends' states into a [`Selection`]: the
//! backends that take new flows (with the weight to give them in the Maglev table), the
//! ones whose established flows keep going, and whether the service is in panic. The rules:
//!
//! - **Up** means usable for new flows ([`BackendStatus::new_flows`]: healthy, enabled,
//!   not held down) *and* weight above 0. Only up backends count anywhere below.
//! - **Tiers**: 0 is best. A tier is *eligible* when at least `min_up` of its backends are
//!   up. The active tier is the best eligible one; lower tiers (backups) take over only when
//!   it is not eligible. When no tier is eligible the best tier with any backend up is used
//!   anyway (degraded): serving from fewer backends than wanted beats serving from none.
//! - **Spill** (`spill = true`, not with exactly-one): a tier is eligible as soon as one of
//!   its backends is up. When the active tier has fewer than `min_up` up, the up backends of
//!   the following tiers are added, one whole tier at a time in tier order, until at least
//!   `min_up` backends are up in total or the tiers run out. `active_tier` stays the best
//!   tier that contributes. Failover to a lower tier thus happens only when the best tier
//!   has no backend up at all.
//! - **Failback**: the selector remembers the active tier and since when each tier has been
//!   continuously eligible (as seen by the calls to [`TierSelector::select`]). A better tier
//!   than the active one takes over with `Failback::Auto { hold }` once it has been eligible
//!   for `hold`, with `Failback::Manual` only on [`TierSelector::failback`]. If the active
//!   tier itself stops being eligible, the selector moves at once to the best eligible
//!   tier, whatever the policy: it never stays on a dead tier.
//! - **Exactly one**: the tier is chosen as above, then a single backend of it: the one
//!   already active if it is still up there (a database primary must not flip because an
//!   equally good one exists), else the highest weight, then the first name. Never two.
//!   `spill` is ignored (the config rejects the combination) and slow start does not apply
//!   (one backend owns the whole table whatever its weight).
//! - **Panic** (no backend up anywhere): with `Drop` and `Pass` no backend takes new flows
//!   and the packet path applies the policy; with `FailOpen` every enabled backend with
//!   weight above 0 takes new flows regardless of health (under exactly-one, only one of
//!   them: the last active one if possible). Backends the operator drained or disabled stay
//!   out even then: fail-open overrides the checks, not the operator.
//! - **Existing flows**: a draining backend keeps its established flows until its deadline
//!   (its state says so through [`BackendStatus::existing_flows`]); a disabled one has none.
//!   Other backends usable for existing flows keep theirs with
//!   `existing_flows_on_failback = stay`; with `move` only the ones in the active tiers
//!   keep them, so flows on a backup tier are re-picked after failback. Under exactly-one
//!   only the active backend (and draining ones) keep flows, whatever the policy: two
//!   primaries must never take traffic at once.
//! - **Slow start**: a backend up for less than `slow_start` gets a table weight ramped
//!   linearly from 10 % to 100 % of its weight (at least 1), in ten steps so that the
//!   table is rebuilt ten times per ramp rather than continuously;
//!   [`Selection::next_ramp_deadline`] says when the next step is due.
//!
//! The output depends only on the inputs and the selector's memory, never on the order
//! of the backends: members are sorted by name.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::config::{
    BackendConfig, ExistingFlowsPolicy, FailbackPolicy, NoBackendPolicy, ServiceConfig,
    format_duration,
};

/// Steps of the slow-start ramp (10 %, 19 %, … 91 %, then 100 %).
const RAMP_STEPS: u128 = 10;

/// When traffic returns to a better tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failback {
    /// Once the better tier has been eligible for `hold` without interruption.
    Auto {
        /// How long the better tier must stay eligible.
        hold: Duration,
    },
    /// Only when an operator asks ([`TierSelector::failback`]).
    Manual,
}

/// A service's selection policy (the relevant part of [`ServiceConfig`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TierPolicy {
    /// When traffic returns to a better tier.
    pub failback: Failback,
    /// Backends up for a tier to be eligible (values below 1 count as 1).
    pub min_up: u32,
    /// Add lower tiers to a partially failed best tier.
    pub spill: bool,
    /// Use a single backend.
    pub exactly_one: bool,
    /// What happens when no backend is up.
    pub no_backend: NoBackendPolicy,
    /// Whether established flows stay on backends outside the active tiers.
    pub existing_flows_on_failback: ExistingFlowsPolicy,
    /// Weight ramp-up time of a backend that just came up; zero means off.
    pub slow_start: Duration,
}

impl From<&ServiceConfig> for TierPolicy {
    fn from(service: &ServiceConfig) -> Self {
        Self {
            failback: match service.failback {
                FailbackPolicy::Auto => Failback::Auto {
                    hold: service.failback_hold,
                },
                FailbackPolicy::Manual => Failback::Manual,
            },
            min_up: service.min_up,
            spill: service.spill,
            exactly_one: service.exactly_one,
            no_backend: service.no_backend,
            existing_flows_on_failback: service.existing_flows_on_failback,
            slow_start: service.slow_start,
        }
    }
}

/// What selection needs to know about one backend's state (see
/// [`BackendState::status`](crate::selection::state::BackendState::status)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendStatus {
    /// Healthy, enabled and not held down.
    pub new_flows: bool,
    /// Its established flows may keep going (up, or draining before the deadline).
    pub existing_flows: bool,
    /// The operator has neither drained nor disabled it.
    pub enabled: bool,
    /// Since when it has been usable for new flows (slow start ramps from here).
    pub up_since: Option<Instant>,
}

/// One backend as selection sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendInput<'a> {
    /// Name, unique within the service.
    pub name: &'a str,
    /// Configured weight; 0 takes no new flows.
    pub weight: u32,
    /// 0 is the best tier.
    pub tier: u32,
    /// Current state.
    pub status: BackendStatus,
}

impl<'a> BackendInput<'a> {
    /// A configured backend in the given state.
    pub fn new(config: &'a BackendConfig, status: BackendStatus) -> Self {
        Self {
            name: &config.name,
            weight: config.weight,
            tier: config.tier,
            status,
        }
    }

    /// Takes new flows: usable for them, and weight above 0.
    fn is_up(&self) -> bool {
        self.status.new_flows && self.weight > 0
    }

    /// Drained by the operator but its flows are still allowed.
    fn is_draining(&self) -> bool {
        self.status.existing_flows && !self.status.enabled
    }
}

/// One backend with a role in a [`Selection`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Member {
    /// Backend name.
    pub name: String,
    /// Weight to build the Maglev table with (after the slow-start ramp); 0 when the
    /// backend takes no new flows.
    pub weight_for_table: u32,
    /// Whether it takes new flows; if not, it only keeps its established ones.
    pub new_flows: bool,
}

/// Which backends a service uses right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    /// The best tier taking new flows; `None` in panic.
    pub active_tier: Option<u32>,
    /// Every backend with a role, sorted by name: the ones taking new flows, and the ones
    /// only keeping established flows. A backend not listed gets no traffic.
    pub members: Vec<Member>,
    /// No backend is up: the `no_backend` policy applies.
    pub panic: bool,
    /// Why, for logs and status output.
    pub reason: String,
    /// When the slow-start ramp of a member next changes its table weight.
    pub next_ramp_deadline: Option<Instant>,
    /// When a better tier will have been eligible long enough for automatic failback.
    pub next_failback_deadline: Option<Instant>,
}

impl Selection {
    /// The members taking new flows (what the Maglev table is built from).
    pub fn new_flow_members(&self) -> impl Iterator<Item = &Member> {
        self.members.iter().filter(|m| m.new_flows)
    }

    /// Names of the backends whose established flows keep going: every member.
    pub fn existing_flows(&self) -> impl Iterator<Item = &str> {
        self.members.iter().map(|m| m.name.as_str())
    }

    /// When the selection should be recomputed even if no backend changes state.
    pub fn next_recompute(&self) -> Option<Instant> {
        [self.next_ramp_deadline, self.next_failback_deadline]
            .into_iter()
            .flatten()
            .min()
    }
}

/// Why an operator's failback was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FailbackError {
    /// The service is in panic, or no selection was made yet.
    #[error("no tier is in use (no backend is up): there is nothing to fail back from")]
    NoActiveTier,
    /// The active tier is already the best one.
    #[error("tier {tier} is in use and there is no better tier: nothing to fail back to")]
    AlreadyBest {
        /// The active tier.
        tier: u32,
    },
    /// Better tiers exist but none is eligible.
    #[error(
        "no tier better than tier {current} is eligible: tier {best} has {up} of {total} \
         backends up and needs {needed}; bring its backends up first"
    )]
    NotEligible {
        /// The active tier.
        current: u32,
        /// The best tier.
        best: u32,
        /// Its backends that are up.
        up: u32,
        /// Its backends.
        total: u32,
        /// Backends up it needs to be eligible.
        needed: u32,
    },
}

/// Backends of one tier.
#[derive(Debug, Clone, Copy, Default)]
struct TierCount {
    up: u32,
    total: u32,
}

/// The part of the policy that decides whether a tier is eligible.
#[derive(Debug, Clone, Copy)]
struct Eligibility {
    needed: u32,
}

impl Eligibility {
    fn of(policy: &TierPolicy) -> Self {
        let spill = policy.spill && !policy.exactly_one;
        Self {
            needed: if spill { 1 } else { policy.min_up.max(1) },
        }
    }

    fn eligible(self, count: &TierCount) -> bool {
        count.up >= self.needed
    }
}

/// Tier selection for one service, with the memory failback and stickiness need.
#[derive(Debug, Clone)]
pub struct TierSelector {
    policy: TierPolicy,
    current_tier: Option<u32>,
    current_one: Option<String>,
    /// Since when each currently eligible tier has been eligible without interruption.
    eligible_since: BTreeMap<u32, Instant>,
}

impl TierSelector {
    /// A selector with no memory yet: its first selection takes the best tier at once.
    pub fn new(policy: TierPolicy) -> Self {
        Self {
            policy,
            current_tier: None,
            current_one: None,
            eligible_since: BTreeMap::new(),
        }
    }

    /// The policy in use.
    pub fn policy(&self) -> &TierPolicy {
        &self.policy
    }

    /// Replaces the policy (on config reload), keeping the active tier and backend.
    pub fn set_policy(&mut self, policy: TierPolicy) {
        self.policy = policy;
    }

    /// The tier chosen by the last selection; `None` before the first one and in panic.
    pub fn current_tier(&self) -> Option<u32> {
        self.current_tier
    }

    /// Under exactly-one, the backend chosen last (kept through panic, so the same one is
    /// preferred when it comes back).
    pub fn current_backend(&self) -> Option<&str> {
        self.current_one.as_deref()
    }

    /// Chooses the backends for `backends` in their current states.
    pub fn select(&mut self, now: Instant, backends: &[BackendInput<'_>]) -> Selection {
        self.run(now, backends, false)
    }

    /// An operator's failback: moves to the best eligible tier better than the active one
    /// now, without waiting for an automatic hold. Refused, with nothing changed, when
    /// there is no better eligible tier.
    pub fn failback(
        &mut self,
        now: Instant,
        backends: &[BackendInput<'_>],
    ) -> Result<Selection, FailbackError> {
        let counts = tier_counts(backends);
        let rule = Eligibility::of(&self.policy);
        let current = self.current_tier.ok_or(FailbackError::NoActiveTier)?;
        let current_ok = counts.get(&current).is_some_and(|c| rule.eligible(c));
        let better_ok = counts.range(..current).any(|(_, c)| rule.eligible(c));
        if !current_ok || better_ok {
            // A failed active tier is left at once anyway; say yes and do it.
            return Ok(self.run(now, backends, true));
        }
        match counts.range(..current).next() {
            None => Err(FailbackError::AlreadyBest { tier: current }),
            Some((&best, count)) => Err(FailbackError::NotEligible {
                current,
                best,
                up: count.up,
                total: count.total,
                needed: rule.needed,
            }),
        }
    }

    fn run(
        &mut self,
        now: Instant,
        backends: &[BackendInput<'_>],
        operator_failback: bool,
    ) -> Selection {
        let counts = tier_counts(backends);
        let rule = Eligibility::of(&self.policy);
        self.eligible_since
            .retain(|tier, _| counts.get(tier).is_some_and(|c| rule.eligible(c)));
        for (&tier, count) in &counts {
            if rule.eligible(count) {
                self.eligible_since.entry(tier).or_insert(now);
            }
        }

        let (chosen, event) = self.choose_tier(now, &counts, rule, operator_failback);
        self.current_tier = chosen;
        let Some(tier) = chosen else {
            return self.panic(backends, event);
        };

        let active = self.active_tiers(tier, &counts);
        let mut notes: Vec<String> = event.into_iter().collect();
        notes.push(describe(&active, &counts, self.policy.min_up, rule));
        let mut members = Vec::new();
        let mut next_ramp_deadline = None;
        if self.policy.exactly_one {
            if let Some(one) = self.pick_one(tier, backends) {
                notes.push(format!("exactly one: {}", one.name));
                members.push(Member {
                    name: one.name.to_owned(),
                    weight_for_table: one.weight,
                    new_flows: true,
                });
            }
        } else {
            for b in backends
                .iter()
                .filter(|b| b.is_up() && active.contains(&b.tier))
            {
                let (weight, next) = ramp(b.weight, b.status.up_since, self.policy.slow_start, now);
                next_ramp_deadline = earliest(next_ramp_deadline, next);
                members.push(Member {
                    name: b.name.to_owned(),
                    weight_for_table: weight,
                    new_flows: true,
                });
            }
        }
        self.add_existing_only(backends, &active, &mut members);
        members.sort();
        Selection {
            active_tier: Some(tier),
            members,
            panic: false,
            reason: notes.join("; "),
            next_ramp_deadline,
            next_failback_deadline: self.failback_deadline(),
        }
    }

    /// The tier to use and, when something happened, what.
    fn choose_tier(
        &self,
        now: Instant,
        counts: &BTreeMap<u32, TierCount>,
        rule: Eligibility,
        operator_failback: bool,
    ) -> (Option<u32>, Option<String>) {
        let best = counts
            .iter()
            .find(|(_, c)| rule.eligible(c))
            .map(|(&t, _)| t);
        let current_ok = |c: &u32| counts.get(c).is_some_and(|count| rule.eligible(count));
        let Some(current) = self.current_tier.filter(current_ok) else {
            // First selection, or the active tier failed: the best tier at once, whatever
            // the failback policy.
            let target = best.or_else(|| counts.iter().find(|(_, c)| c.up > 0).map(|(&t, _)| t));
            let mut notes = Vec::new();
            if let Some(old) = self.current_tier.filter(|&old| Some(old) != target) {
                let count = counts.get(&old).copied().unwrap_or_default();
                notes.push(format!(
                    "tier {old} failed ({} of {} up)",
                    count.up, count.total
                ));
            }
            if best.is_none() && target.is_some() {
                notes.push(format!(
                    "no tier has the {} backend(s) up min_up asks for",
                    rule.needed
                ));
            }
            return (target, (!notes.is_empty()).then(|| notes.join("; ")));
        };
        let Some(better) = best.filter(|&b| b < current) else {
            return (Some(current), None);
        };
        if operator_failback {
            return (
                Some(better),
                Some(format!(
                    "failed back from tier {current} to tier {better} by operator"
                )),
            );
        }
        match self.policy.failback {
            Failback::Auto { hold } => {
                let ready = self
                    .eligible_since
                    .range(..current)
                    .find(|(_, since)| now.saturating_duration_since(**since) >= hold)
                    .map(|(&t, _)| t);
                match ready {
                    Some(t) => (
                        Some(t),
                        Some(format!(
                            "failed back from tier {current} to tier {t} after {} eligible",
                            format_duration(hold)
                        )),
                    ),
                    None => {
                        let since = self.eligible_since.get(&better).copied().unwrap_or(now);
                        let left = hold.saturating_sub(now.saturating_duration_since(since));
                        (
                            Some(current),
                            Some(format!(
                                "tier {better} is eligible again: automatic failback in {}",
                                format_duration(left)
                            )),
                        )
                    }
                }
            }
            Failback::Manual => (
                Some(current),
                Some(format!(
                    "tier {better} is eligible again: staying on tier {current} until an \
                     operator fails back (failback = manual)"
                )),
            ),
        }
    }

    /// The active tier plus, with spill, the lower tiers that make up for its missing
    /// backends.
    fn active_tiers(&self, tier: u32, counts: &BTreeMap<u32, TierCount>) -> Vec<u32> {
        let mut active = vec![tier];
        if !self.policy.spill || self.policy.exactly_one {
            return active;
        }
        let want = self.policy.min_up.max(1);
        let mut up = counts.get(&tier).map_or(0, |c| c.up);
        for (&t, count) in counts.range(tier + 1..) {
            if up >= want {
                break;
            }
            if count.up > 0 {
                active.push(t);
                up += count.up;
            }
        }
        active
    }

    /// Exactly-one: the active backend if still up in `tier`, else the best there.
    fn pick_one<'b>(
        &mut self,
        tier: u32,
        backends: &'b [BackendInput<'b>],
    ) -> Option<&'b BackendInput<'b>> {
        let candidates = backends.iter().filter(|b| b.is_up() && b.tier == tier);
        let sticky = self
            .current_one
            .as_deref()
            .and_then(|name| candidates.clone().find(|b| b.name == name));
        let chosen = sticky.or_else(|| {
            candidates.min_by(|a, b| b.weight.cmp(&a.weight).then(a.name.cmp(b.name)))
        })?;
        self.current_one = Some(chosen.name.to_owned());
        Some(chosen)
    }

    /// Adds the backends that keep established flows without taking new ones.
    fn add_existing_only(
        &self,
        backends: &[BackendInput<'_>],
        active: &[u32],
        members: &mut Vec<Member>,
    ) {
        for b in backends {
            if !b.status.existing_flows || members.iter().any(|m| m.name == b.name) {
                continue;
            }
            let keep = b.is_draining()
                || (!self.policy.exactly_one
                    && match self.policy.existing_flows_on_failback {
                        ExistingFlowsPolicy::Stay => true,
                        ExistingFlowsPolicy::Move => active.contains(&b.tier),
                    });
            if keep {
                members.push(Member {
                    name: b.name.to_owned(),
                    weight_for_table: 0,
                    new_flows: false,
                });
            }
        }
    }

    /// No backend is up: apply the `no_backend` policy.
    fn panic(&self, backends: &[BackendInput<'_>], event: Option<String>) -> Selection {
        let mut members = Vec::new();
        let what = match self.policy.no_backend {
            NoBackendPolicy::Drop => "new flows are dropped (no_backend = drop)".to_owned(),
            NoBackendPolicy::Pass => {
                "new flows are handed to the kernel (no_backend = pass)".to_owned()
            }
            NoBackendPolicy::FailOpen => {
                let mut open: Vec<&BackendInput<'_>> = backends
                    .iter()
                    .filter(|b| b.weight > 0 && b.status.enabled)
                    .collect();
                if self.policy.exactly_one {
                    let sticky = self
                        .current_one
                        .as_deref()
                        .and_then(|name| open.iter().copied().find(|b| b.name == name));
                    let best = || {
                        open.iter().copied().min_by(|a, b| {
                            (a.tier, b.weight, a.name).cmp(&(b.tier, a.weight, b.name))
                        })
                    };
                    open = sticky.or_else(best).into_iter().collect();
                }
                members.extend(open.iter().map(|b| Member {
                    name: b.name.to_owned(),
                    weight_for_table: b.weight,
                    new_flows: true,
                }));
                format!(
                    "failing open to {} configured backend(s) regardless of health \
                     (no_backend = fail_open)",
                    members.len()
                )
            }
        };
        self.add_existing_only(backends, &[], &mut members);
        members.sort();
        let reason = [event, Some(format!("no backend is up: {what}"))]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join("; ");
        Selection {
            active_tier: None,
            members,
            panic: true,
            reason,
            next_ramp_deadline: None,
            next_failback_deadline: None,
        }
    }

    /// When a better tier than the active one has been eligible for the auto hold.
    fn failback_deadline(&self) -> Option<Instant> {
        match (self.policy.failback, self.current_tier) {
            (Failback::Auto { hold }, Some(current)) => self
                .eligible_since
                .range(..current)
                .filter_map(|(_, since)| since.checked_add(hold))
                .min(),
            _ => None,
        }
    }
}

fn tier_counts(backends: &[BackendInput<'_>]) -> BTreeMap<u32, TierCount> {
    let mut counts: BTreeMap<u32, TierCount> = BTreeMap::new();
    for b in backends {
        let count = counts.entry(b.tier).or_default();
        count.total += 1;
        if b.is_up() {
            count.up += 1;
        }
    }
    counts
}

/// `"tier 0: 2 of 3 up"`, plus the spill tiers.
fn describe(
    active: &[u32],
    counts: &BTreeMap<u32, TierCount>,
    min_up: u32,
    rule: Eligibility,
) -> String {
    let part = |t: &u32| {
        let c = counts.get(t).copied().unwrap_or_default();
        format!("tier {t}: {} of {} up", c.up, c.total)
    };
    match active {
        [] => String::new(),
        [one] => part(one),
        [first, rest @ ..] => format!(
            "{} (min_up {}), spilling into {}",
            part(first),
            min_up.max(rule.needed),
            rest.iter().map(part).collect::<Vec<_>>().join(", ")
        ),
    }
}

/// The table weight of a backend up since `up_since`, and when it next changes.
fn ramp(
    weight: u32,
    up_since: Option<Instant>,
    slow_start: Duration,
    now: Instant,
) -> (u32, Option<Instant>) {
    let Some(up_since) = up_since else {
        return (weight, None);
    };
    let elapsed = now.saturating_duration_since(up_since);
    if slow_start.is_zero() || elapsed >= slow_start {
        return (weight, None);
    }
    let total = slow_start.as_nanos();
    let step = elapsed.as_nanos() * RAMP_STEPS / total;
    let percent = 10 + 90 * step / RAMP_STEPS;
    let ramped = (u128::from(weight) * percent / 100).max(1);
    // Rounded up, so that at the deadline the step has really changed.
    let next = (total * (step + 1)).div_ceil(RAMP_STEPS);
    let next = u64::try_from(next)
        .ok()
        .and_then(|n| up_since.checked_add(Duration::from_nanos(n)));
    (u32::try_from(ramped).unwrap_or(weight), next)
}

fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::selection::clock::{Clock, FakeClock};
    use crate::selection::state::{BackendState, FlapPolicy, Observation, Thresholds};

    const SEC: Duration = Duration::from_secs(1);

    fn policy() -> TierPolicy {
        TierPolicy {
            failback: Failback::Auto { hold: 30 * SEC },
            min_up: 1,
            spill: false,
            exactly_one: false,
            no_backend: NoBackendPolicy::Drop,
            existing_flows_on_failback: ExistingFlowsPolicy::Stay,
            slow_start: Duration::ZERO,
        }
    }

    const UP: BackendStatus = BackendStatus {
        new_flows: true,
        existing_flows: true,
        enabled: true,
        up_since: None,
    };
    const DOWN: BackendStatus = BackendStatus {
        new_flows: false,
        existing_flows: false,
        enabled: true,
        up_since: None,
    };
    const DRAINING: BackendStatus = BackendStatus {
        new_flows: false,
        existing_flows: true,
        enabled: false,
        up_since: None,
    };
    const DISABLED: BackendStatus = BackendStatus {
        new_flows: false,
        existing_flows: false,
        enabled: false,
        up_since: None,
    };

    /// A service's backends, all up at first.
    struct Fleet(Vec<BackendInput<'static>>);

    impl Fleet {
        /// `(name, tier, weight)` triples.
        fn new(spec: &[(&'static str, u32, u32)]) -> Self {
            Self(
                spec.iter()
                    .map(|&(name, tier, weight)| BackendInput {
                        name,
                        weight,
                        tier,
                        status: UP,
                    })
                    .collect(),
            )
        }

        fn set(&mut self, names: &[&str], status: BackendStatus) -> &mut Self {
            for name in names {
                let b = self.0.iter_mut().find(|b| b.name == *name).expect(name);
                b.status = status;
            }
            self
        }

        fn up(&mut self, names: &[&str]) -> &mut Self {
            self.set(names, UP)
        }

        fn down(&mut self, names: &[&str]) -> &mut Self {
            self.set(names, DOWN)
        }
    }

    /// Two tiers of three, equal weights.
    fn two_tiers() -> Fleet {
        Fleet::new(&[
            ("a1", 0, 100),
            ("a2", 0, 100),
            ("a3", 0, 100),
            ("b1", 1, 100),
            ("b2", 1, 100),
            ("b3", 1, 100),
        ])
    }

    fn new_flows(s: &Selection) -> Vec<&str> {
        s.new_flow_members().map(|m| m.name.as_str()).collect()
    }

    fn existing(s: &Selection) -> Vec<&str> {
        s.existing_flows().collect()
    }

    #[test]
    fn policy_comes_from_the_service_config() {
        let text = r#"
            interface = "lo"
            [[service]]
            name = "db"
            vip = "10.0.0.1"
            port = 5432
            mode = "dsr"
            failback = "manual"
            exactly_one = true
            min_up = 1
            no_backend = "fail_open"
            existing_flows_on_failback = "move"
            slow_start = "20s"
            [[service.backend]]
            name = "db-1"
            address = "10.0.1.1"
        "#;
        let config = match crate::config::Config::parse(text, "failover.toml") {
            Ok(config) => config,
            Err(e) => panic!("{e}"),
        };
        let p = TierPolicy::from(&config.services[0]);
        assert_eq!(p.failback, Failback::Manual);
        assert!(p.exactly_one);
        assert!(!p.spill);
        assert_eq!(p.no_backend, NoBackendPolicy::FailOpen);
        assert_eq!(p.existing_flows_on_failback, ExistingFlowsPolicy::Move);
        assert_eq!(p.slow_start, 20 * SEC);
        let b = BackendInput::new(&config.services[0].backends[0], UP);
        assert_eq!((b.name, b.tier), ("db-1", 0));
    }

    #[test]
    fn best_tier_is_used_while_it_has_min_up() {
        let clock = FakeClock::new();
        let mut sel = TierSelector::new(TierPolicy {
            min_up: 2,
            ..policy()
        });
        let mut fleet = two_tiers();
        let s = sel.select(clock.now(), &fleet.0);
        assert_eq!(s.active_tier, Some(0));
        assert!(!s.panic);
        assert_eq!(new_flows(&s), ["a1", "a2", "a3"]);
        assert_eq!(s.reason, "tier 0: 3 of 3 up");
        assert!(s.new_flow_members().all(|m| m.weight_for_table == 100));

        fleet.down(&["a1"]);
        let s = sel.select(clock.advance(SEC), &fleet.0);
        assert_eq!(s.active_tier, Some(0), "2 of 3 is still min_up");
        assert_eq!(new_flows(&s), ["a2", "a3"]);
    }

    #[test]
    fn backup_tier_takes_over_below_min_up() {
        let clock = FakeClock::new();
        let mut sel = TierSelector::new(TierPolicy {
            min_up: 2,
            ..policy()
        });
        let mut fleet = two_tiers();
        sel.select(clock.now(), &fleet.0);
        fleet.down(&["a1", "a2"]);
        let s = sel.select(clock.advance(SEC), &fleet.0);
        assert_eq!(s.active_tier, Some(1));
        assert_eq!(new_flows(&s), ["b1", "b2", "b3"]);
        assert_eq!(s.reason, "tier 0 failed (1 of 3 up); tier 1: 3 of 3 up");
        assert_eq!(sel.current_tier(), Some(1));
    }

    #[test]
    fn no_tier_with_min_up_uses_the_best_tier_with_any_up() {
        let clock = FakeClock::new();
        let mut sel = TierSelector::new(TierPolicy {
            min_up: 3,
            ..policy()
        });
        let mut fleet = two_tiers();
        fleet.down(&["a1", "b1", "b2"]);
        let s = sel.select(clock.now(), &fleet.0);
        assert_eq!(s.active_tier, Some(0));
        assert!(!s.panic);
        assert_eq!(new_flows(&s), ["a2", "a3"]);
        assert!(
            s.reason.starts_with("no tier has the 3 backend(s) up"),
            "{}",
            s.reason
        );
    }

    #[test]
    fn weight_zero_backends_are_not_up() {
        let clock = FakeClock::new();
        let mut sel = TierSelector::new(TierPolicy {
            min_up: 2,
            ..policy()
        });
        let fleet = Fleet::new(&[("a1", 0, 100), ("a2", 0, 0), ("b1", 1, 100), ("b2", 1, 100)]);
        let s = sel.select(clock.now(), &fleet.0);
        assert_eq!(
            s.active_tier,
            Some(1),
            "a2 takes no new flows, so tier 0 has 1"
        );
        assert_eq!(new_flows(&s), ["b1", "b2"]);
        // Its established flows still go on (stay policy).
        assert!(existing(&s).contains(&"a2"));
    }

    #[test]
    fn spill_adds_the_next_tier_to_a_partially_failed_best_tier() {
        let clock = FakeClock::new();
        let mut sel = TierSelector::new(TierPolicy {
            min_up: 2,
            spill: true,
            ..policy()
        });
        let mut fleet = two_tiers();
        fleet.down(&["a1", "a2"]);
        let s = sel.select(clock.now(), &fleet.0);
        assert_eq!(s.active_tier, Some(0));
        assert_eq!(new_flows(&s), ["a3", "b1", "b2", "b3"]);
        assert_eq!(
            s.reason,
            "tier 0: 1 of 3 up (min_up 2), spilling into tier 1: 3 of 3 up"
        );

        // Healthy again: spill stops at once (same active tier, nothing to hold).
        fleet.up(&["a2"]);
        let s = sel.select(clock.advance(SEC), &fleet.0);
        assert_eq!(new_flows(&s), ["a2", "a3"]);

        // Best tier fully down: a plain failover.
        fleet.down(&["a2", "a3"]);
        let s = sel.select(clock.advance(SEC), &fleet.0);
        assert_eq!(s.active_tier, Some(1));
        assert_eq!(new_flows(&s), ["b1", "b2", "b3"]);
    }

    #[test]
    fn spill_takes_whole_tiers_until_min_up_is_reached() {
        let clock = FakeClock::new();
        let mut sel = TierSelector::new(TierPolicy {
            min_up: 3,
            spill: true,
            ..policy()
        });
        let mut fleet = Fleet::new(&[
            ("a1", 0, 10),
            ("a2", 0, 10),
            ("b1", 1, 10),
            ("b2", 1, 10),
            ("c1", 2, 10),
            ("c2", 2, 10),
            ("d1", 3, 10),
        ]);
        fleet.down(&["a2", "b2", "c2"]);
        let s = sel.select(clock.now(), &fleet.0);
        // 1 (tier 0) + 1 (tier 1) + 1 (tier 2) = 3; tier 3 is not needed.
        assert_eq!(new_flows(&s), ["a1", "b1", "c1"]);
        assert_eq!(s.active_tier, Some(0));
    }

    #[test]
    fn auto_failback_waits_for_the_hold() {
        let clock = FakeClock::new();
        let mut sel = TierSelector::new(policy());
        let mut fleet = two_tiers();
        sel.select(clock.now(), &fleet.0);
        fleet.down(&["a1", "a2", "a3"]);
        assert_eq!(
            sel.select(clock.advance(SEC), &fleet.0).active_tier,
            Some(1)
        );

        fleet.up(&["a1"]);
        let back = clock.advance(SEC);
        let s = sel.select(back, &fleet.0);
        assert_eq!(s.active_tier, Some(1), "not before the hold");
        assert_eq!(s.next_failback_deadline, Some(back + 30 * SEC));
        assert_eq!(s.next_recompute(), Some(back + 30 * SEC));
        assert!(
            s.reason.contains("automatic failback in 30s"),
            "{}",
            s.reason
        );

        let s = sel.select(back + 29 * SEC, &fleet.0);
        assert_eq!(s.active_tier, Some(1));
        assert!(
            s.reason.contains("automatic failback in 1s"),
            "{}",
            s.reason
        );

        let s = sel.select(back + 30 * SEC, &fleet.0);
        assert_eq!(s.active_tier, Some(0));
        assert_eq!(new_flows(&s), ["a1"]);
        assert!(
            s.reason
                .starts_with("failed back from tier 1 to tier 0 after 30s")
        );
        assert_eq!(s.next_failback_deadline, None);
        // Stay policy: flows on the backup tier keep going.
        assert_eq!(existing(&s), ["a1", "b1", "b2", "b3"]);
    }

    #[test]
    fn auto_failback_hold_restarts_when_the_better_tier_blips() {
        let clock = FakeClock::new();
        let mut sel = TierSelector::new(policy());
        let mut fleet = two_tiers();
        fleet.down(&["a1", "a2", "a3"]);
        sel.select(clock.now(), &fleet.0);
        fleet.up(&["a1"]);
        sel.select(clock.advance(SEC), &fleet.0);
        clock.advance(20 * SEC);
        fleet.down(&["a1"]);
        assert_eq!(sel.select(clock.now(), &fleet.0).active_tier, Some(1));
        fleet.up(&["a1"]);
        let again = clock.advance(SEC);
        assert_eq!(sel.select(again, &fleet.0).active_tier, Some(1));
        assert_eq!(
            sel.select(again + 29 * SEC, &fleet.0).active_tier,
            Some(1),
            "the 20 s before the blip do not count"
        );
        assert_eq!(sel.select(again + 30 * SEC, &fleet.0).active_tier, Some(0));
    }

    #[test]
    fn manual_failback_stays_until_the_operator_asks() {
        let clock = FakeClock::new();
        let mut sel = TierSelector::new(TierPolicy {
            failback: Failback::Manual,
            ..policy()
        });
        let mut fleet = two_tiers();
        sel.select(clock.now(), &fleet.0);
        fleet.down(&["a1", "a2", "a3"]);
        assert_eq!(
            sel.select(clock.advance(SEC), &fleet.0).active_tier,
            Some(1)
        );
        fleet.up(&["a1", "a2", "a3"]);
        let s = sel.select(clock.advance(SEC), &fleet.0);
        assert_eq!(s.active_tier, Some(1));
        assert_eq!(s.next_failback_deadline, None);
        assert!(
            s.reason.contains("until an operator fails back"),
            "{}",
            s.reason
        );
        let s = sel.select(clock.advance(3600 * SEC), &fleet.0);
        assert_eq!(s.active_tier, Some(1), "an hour later, still on the backup");

        let s = sel
            .failback(clock.advance(SEC), &fleet.0)
            .expect("failback");
        assert_eq!(s.active_tier, Some(0));
        assert_eq!(new_flows(&s), ["a1", "a2", "a3"]);
        assert!(
            s.reason
                .starts_with("failed back from tier 1 to tier 0 by operator")
        );
        assert_eq!(
            sel.select(clock.advance(SEC), &fleet.0).active_tier,
            Some(0)
        );
    }

    #[test]
    fn operator_failback_skips_the_auto_hold() {
        let clock = FakeClock::new();
        let mut sel = TierSelector::new(policy());
        let mut fleet = two_tiers();
        fleet.down(&["a1", "a2", "a3"]);
        sel.select(clock.now(), &fleet.0);
        fleet.up(&["a1"]);
        let s = sel
            .failback(clock.advance(SEC), &fleet.0)
            .expect("failback");
        assert_eq!(s.active_tier, Some(0));
    }

    #[test]
    fn failback_is_refused_when_there_is_nothing_better() {
        let clock = FakeClock::new();
        let mut sel = TierSelector::new(TierPolicy {
            min_up: 2,
            failback: Failback::Manual,
            ..policy()
        });
        let mut fleet = two_tiers();
        assert_eq!(
            sel.failback(clock.now(), &fleet.0),
            Err(FailbackError::NoActiveTier)
        );
        sel.select(clock.now(), &fleet.0);
        assert_eq!(
            sel.failback(clock.now(), &fleet.0),
            Err(FailbackError::AlreadyBest { tier: 0 })
        );
        fleet.down(&["a1", "a2"]);
        sel.select(clock.advance(SEC), &fleet.0);
        let err = sel.failback(clock.advance(SEC), &fleet.0).unwrap_err();
        assert_eq!(
            err,
            FailbackError::NotEligible {
                current: 1,
                best: 0,
                up: 1,
                total: 3,
                needed: 2
            }
        );
        assert!(
            err.to_string()
                .contains("tier 0 has 1 of 3 backends up and needs 2")
        );
        assert_eq!(
            sel.current_tier(),
            Some(1),
            "a refused failback changes nothing"
        );
    }

    #[test]
    fn a_dying_active_tier_is_left_at_once_even_with_manual_failback() {
        let clock = FakeClock::new();
        let mut sel = TierSelector::new(TierPolicy {
            failback: Failback::Manual,
            ..policy()
        });
        let mut fleet = Fleet::new(&[("a1", 0, 1), ("b1", 1, 1), ("c1", 2, 1)]);
        fleet.down(&["a1", "b1"]);
        assert_eq!(sel.select(clock.now(), &fleet.0).active_tier, Some(2));
        // Tier 1 recovers: manual policy keeps tier 2.
        fleet.up(&["b1"]);
        assert_eq!(
            sel.select(clock.advance(SEC), &fleet.0).active_tier,
            Some(2)
        );
        // Tier 2 dies: the best eligible tier (1) takes over without an operator.
        fleet.down(&["c1"]);
        let s = sel.select(clock.advance(SEC), &fleet.0);
        assert_eq!(s.active_tier, Some(1));
        assert_eq!(s.reason, "tier 2 failed (0 of 1 up); tier 1: 1 of 1 up");
    }

    #[test]
    fn a_dying_active_tier_goes_to_the_best_tier_even_during_an_auto_hold() {
        let clock = FakeClock::new();
        let mut sel = TierSelector::new(policy());
        let mut fleet = Fleet::new(&[("a1", 0, 1), ("b1", 1, 1), ("c1", 2, 1)]);
        fleet.down(&["a1"]);
        assert_eq!(sel.select(clock.now(), &fleet.0).active_tier, Some(1));
        fleet.up(&["a1"]);
        assert_eq!(
            sel.select(clock.advance(SEC), &fleet.0).active_tier,
            Some(1)
        );
        fleet.down(&["b1"]);
        let s = sel.select(clock.advance(SEC), &fleet.0);
        assert_eq!(s.active_tier, Some(0), "tier 0 is eligible, hold or not");
    }

    #[test]
    fn exactly_one_picks_lowest_tier_then_highest_weight_then_name() {
        let clock = FakeClock::new();
        let exactly_one = TierPolicy {
            exactly_one: true,
            ..policy()
        };
        let fleet = Fleet::new(&[("b", 0, 50), ("c", 0, 100), ("a", 0, 50), ("z", 1, 1000)]);
        let s = TierSelector::new(exactly_one).select(clock.now(), &fleet.0);
        assert_eq!(new_flows(&s), ["c"]);
        let fleet = Fleet::new(&[("b", 0, 50), ("a", 0, 50), ("z", 1, 1000)]);
        let s = TierSelector::new(exactly_one).select(clock.now(), &fleet.0);
        assert_eq!(new_flows(&s), ["a"]);
        assert!(s.reason.ends_with("exactly one: a"), "{}", s.reason);
    }

    #[test]
    fn exactly_one_is_sticky_while_healthy() {
        let clock = FakeClock::new();
        let mut sel = TierSelector::new(TierPolicy {
            exactly_one: true,
            ..policy()
        });
        let mut fleet = Fleet::new(&[("db-1", 0, 100), ("db-2", 0, 100), ("db-3", 1, 100)]);
        fleet.down(&["db-1"]);
        let s = sel.select(clock.now(), &fleet.0);
        assert_eq!(new_flows(&s), ["db-2"]);
        // db-1 comes back and would win on name: db-2 stays.
        fleet.up(&["db-1"]);
        for _ in 0..5 {
            let s = sel.select(clock.advance(60 * SEC), &fleet.0);
            assert_eq!(new_flows(&s), ["db-2"]);
            // The other healthy one keeps no flows: never two.
            assert_eq!(existing(&s), ["db-2"]);
        }
        // db-2 fails: the best remaining takes over at once.
        fleet.down(&["db-2"]);
        let s = sel.select(clock.advance(SEC), &fleet.0);
        assert_eq!(new_flows(&s), ["db-1"]);
        assert_eq!(sel.current_backend(), Some("db-1"));
    }

    #[test]
    fn exactly_one_fails_over_and_back_by_policy() {
        let clock = FakeClock::new();
        for failback in [Failback::Auto { hold: 30 * SEC }, Failback::Manual] {
            let mut sel = TierSelector::new(TierPolicy {
                exactly_one: true,
                failback,
                ..policy()
            });
            let mut fleet = Fleet::new(&[("primary", 0, 1), ("replica", 1, 1)]);
            assert_eq!(new_flows(&sel.select(clock.now(), &fleet.0)), ["primary"]);
            fleet.down(&["primary"]);
            let s = sel.select(clock.advance(SEC), &fleet.0);
            assert_eq!(new_flows(&s), ["replica"]);
            assert_eq!(s.active_tier, Some(1));
            fleet.up(&["primary"]);
            let back = clock.advance(SEC);
            assert_eq!(new_flows(&sel.select(back, &fleet.0)), ["replica"]);
            let later = sel.select(back + 30 * SEC, &fleet.0);
            match failback {
                Failback::Auto { .. } => {
                    assert_eq!(new_flows(&later), ["primary"]);
                    assert_eq!(existing(&later), ["primary"], "never two, even with stay");
                }
                Failback::Manual => {
                    assert_eq!(new_flows(&later), ["replica"]);
                    let s = sel.failback(back + 31 * SEC, &fleet.0).unwrap();
                    assert_eq!(new_flows(&s), ["primary"]);
                }
            }
        }
    }

    /// A small deterministic generator (xorshift64*), so the test needs no dependency.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
    }

    #[test]
    fn exactly_one_never_selects_two() {
        let clock = FakeClock::new();
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for no_backend in [
            NoBackendPolicy::Drop,
            NoBackendPolicy::Pass,
            NoBackendPolicy::FailOpen,
        ] {
            for failback in [Failback::Auto { hold: 5 * SEC }, Failback::Manual] {
                let mut sel = TierSelector::new(TierPolicy {
                    exactly_one: true,
                    failback,
                    no_backend,
                    ..policy()
                });
                let mut fleet = Fleet::new(&[
                    ("a", 0, 10),
                    ("b", 0, 10),
                    ("c", 1, 10),
                    ("d", 1, 0),
                    ("e", 2, 10),
                ]);
                let mut previous: Option<String> = None;
                for _ in 0..2_000 {
                    let i = (rng.next() % 5) as usize;
                    let status = [UP, UP, DOWN, DRAINING, DISABLED][(rng.next() % 5) as usize];
                    fleet.0[i].status = status;
                    let now = clock.advance(SEC);
                    let s = if rng.next().is_multiple_of(50) {
                        sel.failback(now, &fleet.0)
                            .unwrap_or_else(|_| sel.select(now, &fleet.0))
                    } else {
                        sel.select(now, &fleet.0)
                    };
                    let chosen = new_flows(&s);
                    assert!(chosen.len() <= 1, "two backends: {s:?}");
                    let healthy_other: Vec<&str> = fleet
                        .0
                        .iter()
                        .filter(|b| b.status == UP && chosen.first() != Some(&b.name))
                        .map(|b| b.name)
                        .collect();
                    for name in healthy_other {
                        assert!(!existing(&s).contains(&name), "{name} keeps flows: {s:?}");
                    }
                    // Stickiness: the previous pick, still up in the active tier, stays.
                    if let Some(prev) = &previous {
                        let b = fleet.0.iter().find(|b| b.name == prev).unwrap();
                        if b.is_up() && s.active_tier == Some(b.tier) {
                            assert_eq!(chosen, [prev.as_str()], "flipped: {s:?}");
                        }
                    }
                    previous = chosen.first().map(|n| (*n).to_owned()).or(previous);
                }
            }
        }
    }

    #[test]
    fn panic_drop_and_pass_have_no_new_flow_members() {
        let clock = FakeClock::new();
        for no_backend in [NoBackendPolicy::Drop, NoBackendPolicy::Pass] {
            let mut sel = TierSelector::new(TierPolicy {
                no_backend,
                ..policy()
            });
            let mut fleet = two_tiers();
            sel.select(clock.now(), &fleet.0);
            fleet.down(&["a1", "a2", "a3", "b1", "b2", "b3"]);
            let s = sel.select(clock.advance(SEC), &fleet.0);
            assert!(s.panic);
            assert_eq!(s.active_tier, None);
            assert!(s.members.is_empty());
            assert!(
                s.reason.ends_with(&format!("(no_backend = {no_backend})")),
                "{}",
                s.reason
            );
            assert_eq!(sel.current_tier(), None);
            // Recovery picks the best tier at once: nothing to fail back from.
            fleet.up(&["b1"]);
            assert_eq!(
                sel.select(clock.advance(SEC), &fleet.0).active_tier,
                Some(1)
            );
        }
    }

    #[test]
    fn panic_fail_open_uses_every_enabled_backend_with_weight() {
        let clock = FakeClock::new();
        let mut sel = TierSelector::new(TierPolicy {
            no_backend: NoBackendPolicy::FailOpen,
            slow_start: 60 * SEC,
            ..policy()
        });
        let mut fleet = Fleet::new(&[
            ("a1", 0, 100),
            ("a2", 0, 0),
            ("b1", 1, 50),
            ("b2", 1, 50),
            ("b3", 1, 50),
        ]);
        fleet.down(&["a1", "a2", "b1"]);
        fleet.set(&["b2"], DISABLED);
        fleet.set(&["b3"], DRAINING);
        let s = sel.select(clock.now(), &fleet.0);
        assert!(s.panic);
        assert_eq!(s.active_tier, None);
        assert_eq!(
            s.members,
            [
                Member {
                    name: "a1".into(),
                    weight_for_table: 100,
                    new_flows: true
                },
                Member {
                    name: "b1".into(),
                    weight_for_table: 50,
                    new_flows: true
                },
                Member {
                    name: "b3".into(),
                    weight_for_table: 0,
                    new_flows: false
                },
            ]
        );
        assert!(s.reason.contains("failing open to 2"), "{}", s.reason);
    }

    #[test]
    fn panic_fail_open_under_exactly_one_is_still_one() {
        let clock = FakeClock::new();
        let mut sel = TierSelector::new(TierPolicy {
            exactly_one: true,
            no_backend: NoBackendPolicy::FailOpen,
            ..policy()
        });
        let mut fleet = Fleet::new(&[("db-1", 0, 1), ("db-2", 0, 1), ("db-3", 1, 1)]);
        fleet.down(&["db-1"]);
        assert_eq!(new_flows(&sel.select(clock.now(), &fleet.0)), ["db-2"]);
        fleet.down(&["db-2", "db-3"]);
        let s = sel.select(clock.advance(SEC), &fleet.0);
        assert!(s.panic);
        assert_eq!(new_flows(&s), ["db-2"], "the last active one");
        let s = TierSelector::new(*sel.policy()).select(clock.now(), &fleet.0);
        assert_eq!(
            new_flows(&s),
            ["db-1"],
            "no memory: the best configured one"
        );
    }

    #[test]
    fn draining_keeps_existing_flows_only_and_disabled_gets_nothing() {
        let clock = FakeClock::new();
        let mut sel = TierSelector::new(policy());
        let mut fleet = two_tiers();
        fleet.set(&["a1"], DRAINING).set(&["a2"], DISABLED);
        let s = sel.select(clock.now(), &fleet.0);
        assert_eq!(new_flows(&s), ["a3"]);
        let a1 = s.members.iter().find(|m| m.name == "a1").unwrap();
        assert_eq!((a1.new_flows, a1.weight_for_table), (false, 0));
        assert!(existing(&s).contains(&"a1"));
        assert!(!existing(&s).contains(&"a2"));
        // Past its deadline the state says so, and the flows go too.
        fleet.set(&["a1"], DISABLED);
        let s = sel.select(clock.advance(30 * SEC), &fleet.0);
        assert!(!existing(&s).contains(&"a1"));
    }

    #[test]
    fn existing_flows_follow_the_failback_policy() {
        let clock = FakeClock::new();
        for (policy_, want) in [
            (
                ExistingFlowsPolicy::Stay,
                vec!["a1", "a2", "a3", "b1", "b2", "b3"],
            ),
            (ExistingFlowsPolicy::Move, vec!["a1", "a2", "a3", "b3"]),
        ] {
            let mut sel = TierSelector::new(TierPolicy {
                existing_flows_on_failback: policy_,
                ..policy()
            });
            let mut fleet = two_tiers();
            fleet.set(&["b3"], DRAINING);
            let s = sel.select(clock.now(), &fleet.0);
            assert_eq!(existing(&s), want, "{policy_}");
        }
    }

    #[test]
    fn slow_start_ramps_from_ten_percent_in_ten_steps() {
        let clock = FakeClock::new();
        let t0 = clock.now();
        let mut sel = TierSelector::new(TierPolicy {
            slow_start: 100 * SEC,
            ..policy()
        });
        let mut fleet = Fleet::new(&[("old", 0, 1000), ("new", 0, 1000)]);
        fleet.0[0].status.up_since = Some(t0);
        let weight_at = |sel: &mut TierSelector, fleet: &Fleet, at: Duration| {
            let s = sel.select(t0 + 200 * SEC + at, &fleet.0);
            let w = s
                .members
                .iter()
                .find(|m| m.name == "new")
                .unwrap()
                .weight_for_table;
            (w, s.next_ramp_deadline.map(|d| d - (t0 + 200 * SEC)))
        };
        fleet.0[1].status.up_since = Some(t0 + 200 * SEC);
        let expected = [
            (0, 100, 10),
            (5, 100, 10),
            (10, 190, 20),
            (15, 190, 20),
            (50, 550, 60),
            (95, 910, 100),
        ];
        for (at, weight, next) in expected {
            assert_eq!(
                weight_at(&mut sel, &fleet, at * SEC),
                (weight, Some(next * SEC)),
                "at {at}s"
            );
        }
        assert_eq!(weight_at(&mut sel, &fleet, 100 * SEC), (1000, None));
        // The backend up for long is never ramped.
        let s = sel.select(t0 + 200 * SEC, &fleet.0);
        let old = s.members.iter().find(|m| m.name == "old").unwrap();
        assert_eq!(old.weight_for_table, 1000);
    }

    #[test]
    fn slow_start_weight_is_at_least_one() {
        let clock = FakeClock::new();
        let mut sel = TierSelector::new(TierPolicy {
            slow_start: 10 * SEC,
            ..policy()
        });
        let mut fleet = Fleet::new(&[("a", 0, 3)]);
        fleet.0[0].status.up_since = Some(clock.now());
        let s = sel.select(clock.now(), &fleet.0);
        assert_eq!(s.members[0].weight_for_table, 1);
        assert_eq!(s.next_ramp_deadline, Some(clock.now() + SEC));
    }

    #[test]
    fn ramp_deadline_always_moves_the_step_forward() {
        // Slow starts that do not divide into ten exact steps: at each deadline the
        // weight must have changed, or the daemon would spin on the same instant.
        let t0 = FakeClock::new().now();
        for nanos in [7u64, 1_000_000_003, 999_999_999_999] {
            let slow = Duration::from_nanos(nanos);
            let mut now = t0;
            let mut last = 0;
            let mut steps = 0;
            while let (w, Some(next)) = ramp(1_000_000, Some(t0), slow, now) {
                assert!(next > now && w > last, "stuck at {now:?} for {slow:?}");
                (last, now, steps) = (w, next, steps + 1);
            }
            // Ten steps, fewer only when they would be shorter than a nanosecond.
            let expected = if nanos < 10 { nanos } else { 10 };
            assert_eq!(steps, expected, "{slow:?}");
            assert_eq!(ramp(1_000_000, Some(t0), slow, now), (1_000_000, None));
        }
    }

    #[test]
    fn selection_does_not_depend_on_input_order() {
        let clock = FakeClock::new();
        let base = Fleet::new(&[
            ("e", 0, 10),
            ("c", 0, 30),
            ("a", 1, 20),
            ("d", 0, 0),
            ("b", 1, 10),
        ]);
        let mut rng = Rng(42);
        let mut results = Vec::new();
        for _ in 0..20 {
            let mut shuffled = base.0.clone();
            for i in (1..shuffled.len()).rev() {
                shuffled.swap(i, (rng.next() % (i as u64 + 1)) as usize);
            }
            for exactly_one in [false, true] {
                let mut sel = TierSelector::new(TierPolicy {
                    exactly_one,
                    min_up: 2,
                    ..policy()
                });
                results.push((exactly_one, sel.select(clock.now(), &shuffled)));
            }
        }
        for (exactly_one, s) in &results {
            let first = &results.iter().find(|(e, _)| e == exactly_one).unwrap().1;
            assert_eq!(s, first);
        }
        let names: Vec<&str> = results[0]
            .1
            .members
            .iter()
            .map(|m| m.name.as_str())
            .collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        assert_eq!(names, sorted);
    }

    #[test]
    fn backend_states_drive_the_selection() {
        // The two modules together, as the daemon wires them.
        let clock = FakeClock::new();
        let t = Thresholds {
            rise: 2,
            fall: 3,
            fall_refused: 1,
        };
        let names = ["a1", "b1"];
        let tiers = [0, 1];
        let mut states: Vec<BackendState> = names
            .iter()
            .map(|_| BackendState::new(clock.now(), t, FlapPolicy::default()))
            .collect();
        let mut sel = TierSelector::new(TierPolicy {
            slow_start: 10 * SEC,
            ..policy()
        });
        let inputs = |states: &[BackendState]| -> Vec<BackendInput<'static>> {
            states
                .iter()
                .zip(names.iter().zip(tiers))
                .map(|(s, (name, tier))| BackendInput {
                    name,
                    weight: 100,
                    tier,
                    status: s.status(),
                })
                .collect()
        };
        let s = sel.select(clock.now(), &inputs(&states));
        assert!(s.panic, "unknown health is not usable");

        for _ in 0..2 {
            let now = clock.advance(SEC);
            for state in &mut states {
                state.observe(now, &Observation::Up, Duration::from_millis(1));
            }
        }
        let s = sel.select(clock.now(), &inputs(&states));
        assert_eq!(s.active_tier, Some(0));
        assert_eq!(s.members[0].weight_for_table, 10, "slow start");

        let now = clock.advance(SEC);
        let refused = Observation::Refused {
            reason: "connect refused".into(),
        };
        let tr = states[0].observe(now, &refused, Duration::from_millis(1));
        assert_eq!(tr.unwrap().reason, "connect refused");
        let s = sel.select(now, &inputs(&states));
        assert_eq!(s.active_tier, Some(1));
        assert_eq!(new_flows(&s), ["b1"]);
        assert_eq!(
            s.members[0].weight_for_table, 19,
            "up for 1 s of 10: second step"
        );
    }
}
