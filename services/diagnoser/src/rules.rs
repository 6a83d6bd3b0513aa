//! The deterministic rule engine: no network, calibrated confidence. Rules decide what they are sure
//! of; anything else is left to a model (or stays a diagnosis without an action).

use k8s_openapi::api::core::v1::Pod;
use kubesent_proto::{Action, FailureJob, FailureKind, MemoryQuantity};

/// Bounds of the OOM memory formula.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MemoryPolicy {
    /// The new limit is the old one times this factor (rounded up to a whole MiB).
    pub factor: f64,
    /// The new limit never exceeds this.
    pub max: MemoryQuantity,
}

impl Default for MemoryPolicy {
    fn default() -> Self {
        Self { factor: 2.0, max: MemoryQuantity::from_mib(8 * 1024) }
    }
}

/// What a rule concluded.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleVerdict {
    /// The rule's name.
    pub rule: &'static str,
    /// A sentence a human can act on.
    pub root_cause: String,
    /// The typed fix, or [`Action::None`].
    pub action: Action,
    /// Confidence 0–100.
    pub confidence: u8,
}

/// Confidence of the OOM rule when the container has a limit and was killed by the OOM killer: the
/// kernel's verdict is unambiguous, the fix is bounded.
const OOM_CONFIDENCE: u8 = 95;

/// The OOM formula: `min(ceil_mib(limit × factor), max)`. `None` when the limit is already at the cap.
pub fn increased_limit(limit: MemoryQuantity, policy: &MemoryPolicy) -> Option<MemoryQuantity> {
    let to = limit.scaled_to_mib(policy.factor).min(policy.max);
    (to > limit).then_some(to)
}

/// Applies the rules to a job and the live pod.
pub fn diagnose(job: &FailureJob, pod: &Pod, policy: &MemoryPolicy) -> RuleVerdict {
    let container = job.failure.container.clone();
    match job.failure.kind {
        FailureKind::OomKilled => match kubesent_common::pod::memory_limit(pod, &container) {
            Some(limit) => match increased_limit(limit, policy) {
                Some(to) => RuleVerdict {
                    rule: "oom-increase-memory",
                    root_cause: format!(
                        "container {container} was OOM-killed (exit 137) at its memory limit of {limit}; its working set needs more memory"
                    ),
                    action: Action::IncreaseMemory { container, from: limit, to },
                    confidence: OOM_CONFIDENCE,
                },
                None => RuleVerdict {
                    rule: "oom-at-cap",
                    root_cause: format!(
                        "container {container} was OOM-killed at {limit}, already at the memory cap of {}; look for a leak",
                        policy.max
                    ),
                    action: Action::None,
                    confidence: 80,
                },
            },
            None => RuleVerdict {
                rule: "oom-without-limit",
                root_cause: format!(
                    "container {container} was OOM-killed without a memory limit: the node ran out of memory; set requests and limits"
                ),
                action: Action::None,
                confidence: 70,
            },
        },
        FailureKind::Killed => RuleVerdict {
            rule: "sigkill",
            root_cause: format!(
                "container {container} was killed with SIGKILL (exit 137) without an OOM kill: a failing liveness probe, a preStop timeout or a child process OOM"
            ),
            action: Action::None,
            confidence: 50,
        },
        kind => RuleVerdict {
            rule: "unclassified",
            root_cause: format!(
                "container {container} is failing with {} ({})",
                job.failure.reason,
                kind.as_str()
            ),
            action: Action::None,
            confidence: 0,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oom_formula_doubles_and_stops_at_the_cap() {
        let policy = MemoryPolicy::default();
        assert_eq!(
            increased_limit(MemoryQuantity::from_mib(128), &policy),
            Some(MemoryQuantity::from_mib(256))
        );
        assert_eq!(
            increased_limit(MemoryQuantity::from_mib(6 * 1024), &policy),
            Some(MemoryQuantity::from_mib(8 * 1024))
        );
        assert_eq!(increased_limit(MemoryQuantity::from_mib(8 * 1024), &policy), None);
    }
}
