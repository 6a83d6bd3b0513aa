//! Cluster-wide guardrails on top of the per-verdict gate: a kill switch, a cooldown per workload, a budget
//! of actions per hour, and a circuit breaker that stops acting when many workloads fail at once (a
//! cluster-wide cause — a registry outage, a node pool running out of memory — is not fixed one pod at a
//! time).
//!
//! The decisions are pure functions of a [`Ledger`]; the ledger lives in the intents bucket and is updated
//! with compare-and-set, so a remediator that takes over continues with the same counts.

use std::{collections::BTreeMap, time::Duration};

use async_nats::jetstream::kv;
use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};

/// KV key of the ledger.
pub const LEDGER_KEY: &str = "guardrails";
/// KV key of the kill switch; its value is the reason. Present means no action is taken.
pub const PAUSE_KEY: &str = "paused";

/// The guardrails' limits.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// No second action on the same workload within this time.
    pub cooldown: Duration,
    /// At most this many actions per rolling hour, cluster-wide.
    pub actions_per_hour: u32,
    /// The breaker opens when this many fixable failures arrive within `breaker_window`.
    pub breaker_failures: u32,
    /// The breaker's counting window.
    pub breaker_window: Duration,
    /// How long an open breaker holds every action.
    pub breaker_hold: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            cooldown: Duration::from_secs(10 * 60),
            actions_per_hour: 30,
            breaker_failures: 20,
            breaker_window: Duration::from_secs(5 * 60),
            breaker_hold: Duration::from_secs(15 * 60),
        }
    }
}

/// What the guardrails remember, cluster-wide.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Ledger {
    /// When each action of the last hour was taken.
    #[serde(default)]
    pub actions: Vec<Timestamp>,
    /// When each fixable failure of the breaker window arrived.
    #[serde(default)]
    pub failures: Vec<Timestamp>,
    /// The breaker holds every action until then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub breaker_open_until: Option<Timestamp>,
    /// The last action per workload (`namespace/Kind/name`), within the cooldown.
    #[serde(default)]
    pub last_action: BTreeMap<String, LastAction>,
}

/// An action that started a workload's cooldown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastAction {
    /// When.
    pub at: Timestamp,
    /// For which incident (a retry of the same incident is not held by its own cooldown).
    pub incident: String,
}

/// The guardrails' decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Guard {
    /// Go ahead (the action has been counted).
    Allow,
    /// Hold the action; only suggest it (why).
    Hold(String),
}

fn signed(duration: Duration) -> SignedDuration {
    SignedDuration::try_from(duration).unwrap_or(SignedDuration::MAX)
}

/// `now` minus `duration`, saturating at the earliest time (absurd limits must not panic).
fn before(now: Timestamp, duration: Duration) -> Timestamp {
    now.checked_sub(signed(duration)).unwrap_or(Timestamp::MIN)
}

/// `now` plus `duration`, saturating at the latest time.
fn after(now: Timestamp, duration: Duration) -> Timestamp {
    now.checked_add(signed(duration)).unwrap_or(Timestamp::MAX)
}

fn minutes(duration: Duration) -> u64 {
    duration.as_secs().div_ceil(60)
}

impl Ledger {
    /// Forgets what no limit looks at any more.
    pub fn prune(&mut self, now: Timestamp, limits: &Limits) {
        let hour_ago = before(now, Duration::from_secs(3600));
        self.actions.retain(|t| *t > hour_ago);
        let window_start = before(now, limits.breaker_window);
        self.failures.retain(|t| *t > window_start);
        if self.breaker_open_until.is_some_and(|until| until <= now) {
            self.breaker_open_until = None;
        }
        let cooled = before(now, limits.cooldown);
        self.last_action.retain(|_, last| last.at > cooled);
    }

    /// Counts a fixable failure for `workload` and decides whether `incident`'s action may be taken now; an
    /// allowed action is counted against the budget and starts the workload's cooldown. An incident already
    /// admitted (a retry) is admitted again without being counted twice.
    pub fn admit(&mut self, workload: &str, incident: &str, now: Timestamp, limits: &Limits) -> Guard {
        self.prune(now, limits);
        if self.last_action.get(workload).is_some_and(|last| last.incident == incident) {
            return Guard::Allow;
        }
        self.failures.push(now);
        let recent = u32::try_from(self.failures.len()).unwrap_or(u32::MAX);
        if self.breaker_open_until.is_none() && recent >= limits.breaker_failures {
            self.breaker_open_until = Some(after(now, limits.breaker_hold));
        }
        if let Some(until) = self.breaker_open_until {
            return Guard::Hold(format!(
                "circuit breaker open until {until}: {recent} failures within {} min point at a cluster-wide cause; fixing them one by one could make it worse",
                minutes(limits.breaker_window)
            ));
        }
        if let Some(last) = self.last_action.get(workload) {
            return Guard::Hold(format!(
                "{workload} was changed at {} for incident {}; the {} min cooldown holds further changes",
                last.at,
                last.incident,
                minutes(limits.cooldown)
            ));
        }
        if u32::try_from(self.actions.len()).unwrap_or(u32::MAX) >= limits.actions_per_hour {
            return Guard::Hold(format!(
                "the budget of {} actions per hour is used up",
                limits.actions_per_hour
            ));
        }
        self.actions.push(now);
        self.last_action.insert(workload.to_owned(), LastAction { at: now, incident: incident.to_owned() });
        Guard::Allow
    }
}

/// Errors of the guardrails store.
#[derive(Debug, thiserror::Error)]
pub enum GuardrailsError {
    /// The bucket could not be read or written.
    #[error("guardrails store: {0}")]
    Store(String),
    /// Other remediators kept changing the ledger.
    #[error("the guardrails ledger kept changing")]
    Contended,
}

/// The guardrails, stored in the intents bucket.
#[derive(Clone)]
pub struct Guardrails {
    kv: kv::Store,
    limits: Limits,
}

impl Guardrails {
    /// Guardrails with `limits` over the bucket.
    pub fn new(kv: kv::Store, limits: Limits) -> Self {
        Self { kv, limits }
    }

    /// The kill switch's reason, when it is on.
    pub async fn paused(&self) -> Result<Option<String>, GuardrailsError> {
        let value = self.kv.get(PAUSE_KEY).await.map_err(|e| GuardrailsError::Store(e.to_string()))?;
        Ok(value.map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// Turns the kill switch on with `reason`.
    pub async fn pause(&self, reason: &str) -> Result<(), GuardrailsError> {
        self.kv
            .put(PAUSE_KEY, reason.to_owned().into_bytes().into())
            .await
            .map(|_| ())
            .map_err(|e| GuardrailsError::Store(e.to_string()))
    }

    /// Turns the kill switch off.
    pub async fn resume(&self) -> Result<(), GuardrailsError> {
        self.kv.delete(PAUSE_KEY).await.map_err(|e| GuardrailsError::Store(e.to_string()))
    }

    /// The kill switch, then [`Ledger::admit`] under compare-and-set.
    pub async fn admit(&self, workload: &str, incident: &str) -> Result<Guard, GuardrailsError> {
        if let Some(reason) = self.paused().await? {
            return Ok(Guard::Hold(format!("KubeSent is paused ({reason}); actions are only suggested")));
        }
        const ATTEMPTS: usize = 10;
        for _ in 0..ATTEMPTS {
            let entry = self.kv.entry(LEDGER_KEY).await.map_err(|e| GuardrailsError::Store(e.to_string()))?;
            let (mut ledger, revision) = match entry {
                Some(entry) if entry.operation == kv::Operation::Put => {
                    // An unreadable ledger starts over rather than stopping every remediation.
                    (serde_json::from_slice(&entry.value).unwrap_or_default(), Some(entry.revision))
                }
                _ => (Ledger::default(), None),
            };
            let guard = ledger.admit(workload, incident, Timestamp::now(), &self.limits);
            let payload = serde_json::to_vec(&ledger).map_err(|e| GuardrailsError::Store(e.to_string()))?;
            let written = match revision {
                Some(revision) => self
                    .kv
                    .update(LEDGER_KEY, payload.into(), revision)
                    .await
                    .map(|_| ())
                    .map_err(|e| (kubesent_common::nats::is_cas_conflict(&e), e.to_string())),
                None => self
                    .kv
                    .create(LEDGER_KEY, payload.into())
                    .await
                    .map(|_| ())
                    .map_err(|e| (kubesent_common::nats::is_cas_conflict(&e), e.to_string())),
            };
            match written {
                Ok(()) => return Ok(guard),
                Err((true, _)) => continue,
                Err((false, error)) => return Err(GuardrailsError::Store(error)),
            }
        }
        Err(GuardrailsError::Contended)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(minute: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000).expect("time") + SignedDuration::from_mins(minute)
    }

    fn limits() -> Limits {
        Limits {
            cooldown: Duration::from_secs(600),
            actions_per_hour: 3,
            breaker_failures: 5,
            breaker_window: Duration::from_secs(300),
            breaker_hold: Duration::from_secs(900),
        }
    }

    #[test]
    fn a_workload_changed_within_the_cooldown_is_held_and_free_again_after_it() {
        let mut ledger = Ledger::default();
        assert_eq!(ledger.admit("shop/Deployment/web", "inc-1", at(0), &limits()), Guard::Allow);
        assert_eq!(
            ledger.admit("shop/Deployment/web", "inc-1", at(1), &limits()),
            Guard::Allow,
            "a retry of the same incident is not held by its own cooldown"
        );
        assert_eq!(ledger.actions.len(), 1, "nor counted twice");
        assert!(
            matches!(ledger.admit("shop/Deployment/web", "inc-2", at(9), &limits()), Guard::Hold(why) if why.contains("cooldown"))
        );
        assert_eq!(
            ledger.admit("shop/Deployment/api", "inc-3", at(9), &limits()),
            Guard::Allow,
            "another workload"
        );
        assert_eq!(ledger.admit("shop/Deployment/web", "inc-2", at(11), &limits()), Guard::Allow);
    }

    #[test]
    fn the_hourly_budget_holds_actions_until_the_oldest_leaves_the_hour() {
        let mut ledger = Ledger::default();
        for (minute, name) in [(0, "a"), (20, "b"), (40, "c")] {
            assert_eq!(ledger.admit(name, name, at(minute), &limits()), Guard::Allow);
        }
        assert!(
            matches!(ledger.admit("d", "d", at(50), &limits()), Guard::Hold(why) if why.contains("budget"))
        );
        assert_eq!(
            ledger.admit("d", "d", at(61), &limits()),
            Guard::Allow,
            "the action at minute 0 left the hour"
        );
    }

    #[test]
    fn many_failures_at_once_open_the_breaker_which_closes_after_its_hold() {
        let mut ledger = Ledger { actions: Vec::new(), ..Ledger::default() };
        let generous = Limits { actions_per_hour: 100, ..limits() };
        for i in 0..4 {
            assert_eq!(ledger.admit(&format!("w{i}"), "i", at(0), &generous), Guard::Allow);
        }
        let fifth = ledger.admit("w4", "i", at(1), &generous);
        assert!(matches!(&fifth, Guard::Hold(why) if why.contains("circuit breaker")), "{fifth:?}");
        assert!(
            matches!(ledger.admit("w5", "i", at(10), &generous), Guard::Hold(_)),
            "still open within the hold"
        );
        assert_eq!(
            ledger.admit("w6", "i", at(17), &generous),
            Guard::Allow,
            "closed after 15 min, window drained"
        );
    }

    #[test]
    fn failures_spread_out_over_time_do_not_open_the_breaker() {
        let mut ledger = Ledger::default();
        let generous = Limits { actions_per_hour: 100, ..limits() };
        for i in 0..20 {
            assert_eq!(
                ledger.admit(&format!("w{i}"), "i", at(i * 2), &generous),
                Guard::Allow,
                "failure {i}"
            );
        }
    }

    #[test]
    fn absurd_limits_hold_or_allow_without_panicking() {
        let forever = Limits {
            cooldown: Duration::MAX,
            actions_per_hour: u32::MAX,
            breaker_failures: 1,
            breaker_window: Duration::MAX,
            breaker_hold: Duration::MAX,
        };
        let mut ledger = Ledger::default();
        assert!(
            matches!(ledger.admit("w", "i", at(0), &forever), Guard::Hold(_)),
            "a breaker at one failure"
        );
        let nothing = Limits { actions_per_hour: 0, breaker_failures: u32::MAX, ..forever };
        assert!(
            matches!(Ledger::default().admit("w", "i", at(0), &nothing), Guard::Hold(why) if why.contains("budget"))
        );
    }

    #[test]
    fn the_ledger_only_keeps_what_a_limit_still_looks_at() {
        let mut ledger = Ledger::default();
        for i in 0..3 {
            let _ = ledger.admit(&format!("w{i}"), "i", at(i), &limits());
        }
        ledger.prune(at(120), &limits());
        assert_eq!(ledger, Ledger::default());
    }
}
