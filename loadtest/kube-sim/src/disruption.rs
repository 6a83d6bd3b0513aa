//! PodDisruptionBudgets (policy/v1), as pure functions: the status the disruption controller gives a
//! budget from the pods it selects, and the Eviction API's check of a pod against the budgets of its
//! namespace (`429 Cannot evict pod as it would violate the pod's disruption budget.`).
//!
//! The pods a budget expects are the pods it selects that are not being deleted (the real controller
//! reads the replicas of their controllers; for pods of a controller at its scale that is the same).

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{core::v1::Pod, policy::v1::PodDisruptionBudget},
    apimachinery::pkg::{apis::meta::v1::LabelSelector, util::intstr::IntOrString},
};
use serde_json::{Value, json};

/// Whether `selector` selects `labels` (`matchLabels` and `matchExpressions`; an empty selector selects
/// every pod, a missing one none).
pub fn selects(selector: Option<&LabelSelector>, labels: &BTreeMap<String, String>) -> bool {
    let Some(selector) = selector else { return false };
    let labelled = selector.match_labels.iter().flatten().all(|(k, v)| labels.get(k) == Some(v));
    labelled
        && selector.match_expressions.iter().flatten().all(|e| {
            let value = labels.get(&e.key);
            let values = e.values.clone().unwrap_or_default();
            match e.operator.as_str() {
                "In" => value.is_some_and(|v| values.contains(v)),
                "NotIn" => value.is_none_or(|v| !values.contains(v)),
                "Exists" => value.is_some(),
                "DoesNotExist" => value.is_none(),
                _ => false,
            }
        })
}

fn terminating(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
}

/// Ready and not being deleted: what a budget counts as healthy.
pub fn healthy(pod: &Pod) -> bool {
    !terminating(pod)
        && pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// A budget's numbers now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetState {
    /// Pods it selects (not being deleted).
    pub expected: i32,
    /// Of those, ready.
    pub current_healthy: i32,
    /// How many must stay healthy.
    pub desired_healthy: i32,
    /// How many may be disrupted now.
    pub disruptions_allowed: i32,
}

/// `value` of `total`, rounded up for a percentage (`GetScaledValueFromIntOrPercent(…, true)`).
fn scaled(value: &IntOrString, total: i32) -> i32 {
    match value {
        IntOrString::Int(n) => *n,
        IntOrString::String(text) => {
            let percent: i32 = text.trim_end_matches('%').parse().unwrap_or(0);
            i32::try_from((i64::from(total) * i64::from(percent.max(0)) + 99) / 100).unwrap_or(i32::MAX)
        }
    }
}

/// What `budget` allows given the pods of its namespace.
pub fn budget_state(budget: &PodDisruptionBudget, pods: &[Pod]) -> BudgetState {
    let spec = budget.spec.clone().unwrap_or_default();
    let selected: Vec<&Pod> = pods
        .iter()
        .filter(|p| !terminating(p))
        .filter(|p| selects(spec.selector.as_ref(), p.metadata.labels.as_ref().unwrap_or(&BTreeMap::new())))
        .collect();
    let expected = i32::try_from(selected.len()).unwrap_or(i32::MAX);
    let current_healthy = i32::try_from(selected.iter().filter(|p| healthy(p)).count()).unwrap_or(i32::MAX);
    let desired_healthy = match (&spec.min_available, &spec.max_unavailable) {
        (Some(min), _) => scaled(min, expected),
        (None, Some(max)) => (expected - scaled(max, expected)).max(0),
        (None, None) => 0,
    };
    BudgetState {
        expected,
        current_healthy,
        desired_healthy,
        disruptions_allowed: (current_healthy - desired_healthy).max(0),
    }
}

/// The budget's `status` as the disruption controller writes it (`since`: the condition's transition time
/// to keep when its status did not change).
pub fn status(budget: &PodDisruptionBudget, state: BudgetState, now: &Value) -> Value {
    let allowed = state.disruptions_allowed > 0;
    let generation = budget.metadata.generation.unwrap_or(1);
    let previous = budget
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "DisruptionAllowed"));
    let status_text = if allowed { "True" } else { "False" };
    let since = previous
        .filter(|c| c.status == status_text)
        .map_or_else(|| now.clone(), |c| json!(c.last_transition_time));
    json!({
        "observedGeneration": generation,
        "disruptionsAllowed": state.disruptions_allowed,
        "currentHealthy": state.current_healthy,
        "desiredHealthy": state.desired_healthy,
        "expectedPods": state.expected,
        "conditions": [{"type": "DisruptionAllowed", "status": status_text,
            "reason": if allowed { "SufficientPods" } else { "InsufficientPods" }, "message": "",
            "observedGeneration": generation, "lastTransitionTime": since}],
    })
}

/// Why the Eviction API refuses to evict `pod`, if it does: (code, message, cause), as the apiserver
/// answers (429 when a budget does not allow it, 500 when more than one budget selects the pod).
pub fn eviction_refusal(
    budgets: &[PodDisruptionBudget],
    pod: &Pod,
    pods: &[Pod],
) -> Option<(u16, String, Option<String>)> {
    let labels = pod.metadata.labels.clone().unwrap_or_default();
    let selecting: Vec<&PodDisruptionBudget> = budgets
        .iter()
        .filter(|b| selects(b.spec.as_ref().and_then(|s| s.selector.as_ref()), &labels))
        .collect();
    match selecting.as_slice() {
        [] => None,
        [budget] => {
            let state = budget_state(budget, pods);
            // An unhealthy pod may go while the budget is met (`IfHealthyBudget`, the default policy).
            let allowed = if healthy(pod) {
                state.disruptions_allowed > 0
            } else {
                state.current_healthy >= state.desired_healthy
            };
            (!allowed).then(|| {
                let name = budget.metadata.name.clone().unwrap_or_default();
                (
                    429,
                    "Cannot evict pod as it would violate the pod's disruption budget.".to_owned(),
                    Some(format!(
                        "The disruption budget {name} needs {} healthy pods and has {} currently",
                        state.desired_healthy, state.current_healthy
                    )),
                )
            })
        }
        _ => Some((
            500,
            "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support."
                .to_owned(),
            None,
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, ready: bool) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": name, "labels": {"app": "web"}},
            "status": {"conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}}))
        .expect("pod")
    }

    fn budget(spec: Value) -> PodDisruptionBudget {
        serde_json::from_value(json!({"metadata": {"name": "web", "generation": 1}, "spec": spec}))
            .expect("budget")
    }

    #[test]
    fn a_budget_allows_as_many_disruptions_as_it_has_healthy_pods_above_its_minimum() {
        let pods = [pod("a", true), pod("b", true), pod("c", true), pod("d", false)];
        let min = budget(json!({"selector": {"matchLabels": {"app": "web"}}, "minAvailable": 2}));
        assert_eq!(
            budget_state(&min, &pods),
            BudgetState { expected: 4, current_healthy: 3, desired_healthy: 2, disruptions_allowed: 1 }
        );
        let percent = budget(json!({"selector": {"matchLabels": {"app": "web"}}, "maxUnavailable": "50%"}));
        assert_eq!(budget_state(&percent, &pods).desired_healthy, 2, "4 - ceil(50% of 4)");
        let other = budget(json!({"selector": {"matchLabels": {"app": "api"}}, "minAvailable": 1}));
        assert_eq!(budget_state(&other, &pods).expected, 0);
        let everything = budget(json!({"selector": {}, "minAvailable": 1}));
        assert_eq!(budget_state(&everything, &pods).expected, 4, "an empty selector selects every pod");
    }

    #[test]
    fn an_eviction_that_would_break_the_budget_is_refused_with_the_apiservers_answer() {
        let pods = [pod("a", true), pod("b", true)];
        let strict = [budget(json!({"selector": {"matchLabels": {"app": "web"}}, "minAvailable": 2}))];
        let (code, message, cause) = eviction_refusal(&strict, &pods[0], &pods).expect("refused");
        assert_eq!(code, 429);
        assert_eq!(message, "Cannot evict pod as it would violate the pod's disruption budget.");
        assert_eq!(
            cause.as_deref(),
            Some("The disruption budget web needs 2 healthy pods and has 2 currently")
        );
        let loose = [budget(json!({"selector": {"matchLabels": {"app": "web"}}, "minAvailable": 1}))];
        assert_eq!(eviction_refusal(&loose, &pods[0], &pods), None);
        assert_eq!(eviction_refusal(&[], &pods[0], &pods), None);
        let two = [loose[0].clone(), strict[0].clone()];
        assert_eq!(eviction_refusal(&two, &pods[0], &pods).map(|r| r.0), Some(500));
        let unready = [pod("a", true), pod("b", true), pod("c", false)];
        assert_eq!(
            eviction_refusal(&strict, &unready[2], &unready),
            None,
            "an unready pod may go while the budget is met"
        );
    }
}
