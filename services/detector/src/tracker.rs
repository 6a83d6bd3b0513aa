//! Transition tracking: a compact memory of each container (restart count, current failure kind) so a
//! job is raised when a container *enters* a failure or an OOM repeats, never for every MODIFIED event
//! and never for the stale `lastState` of a healthy pod.

use std::collections::HashMap;

use kubesent_proto::FailureKind;

use crate::{
    classify::{ContainerObservation, FailureSignal, classify},
    lean::LeanPod,
};

#[derive(Debug, Clone)]
struct ContainerMemo {
    name: Box<str>,
    restart_count: i32,
    failing: Option<FailureKind>,
}

/// A failure that just started (or an OOM that repeated).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// The container and what it is doing now.
    pub container: ContainerObservation,
    /// The failure.
    pub signal: FailureSignal,
}

/// Failures that are states a pod can leave by itself (a pod placed, a container turning ready), so an
/// incident about them is held for a threshold and dropped when the pod leaves them.
pub fn is_waiting_kind(kind: FailureKind) -> bool {
    matches!(kind, FailureKind::Unschedulable | FailureKind::NotReady | FailureKind::NeverStarted)
}

/// Per-pod container memos, keyed by pod uid.
#[derive(Debug, Default)]
pub struct PodTracker {
    pods: HashMap<Box<str>, Vec<ContainerMemo>>,
}

impl PodTracker {
    /// Number of tracked pods.
    pub fn len(&self) -> usize {
        self.pods.len()
    }

    /// Whether nothing is tracked.
    pub fn is_empty(&self) -> bool {
        self.pods.is_empty()
    }

    /// Records the pod's current state and returns the failures that are new since the last observation.
    pub fn observe(&mut self, pod: &LeanPod) -> Vec<Transition> {
        self.observe_all(pod).0
    }

    /// Like [`PodTracker::observe`], also returning the waiting failures that ended (a pod that was
    /// unschedulable and is now placed, a container that turned ready: container and kind), so an incident not yet reported can be
    /// dropped. Failures that come and go by themselves (a crash loop runs between its kills) are not
    /// returned.
    pub fn observe_all(&mut self, pod: &LeanPod) -> (Vec<Transition>, Vec<(String, FailureKind)>) {
        let Some(uid) = pod.metadata.uid.as_deref() else { return (Vec::new(), Vec::new()) };
        let observations = classify(pod);
        let previous = self.pods.get(uid);
        let mut transitions = Vec::new();
        for observation in &observations {
            let memo = previous.and_then(|memos| memos.iter().find(|m| *m.name == *observation.name));
            match (&observation.failure, memo) {
                (Some(signal), None) => {
                    transitions.push(Transition { container: observation.clone(), signal: signal.clone() })
                }
                (Some(signal), Some(memo)) => {
                    let entered = memo.failing != Some(signal.kind);
                    let oom_repeated = signal.kind == FailureKind::OomKilled
                        && memo.failing.is_none()
                        && observation.restart_count > memo.restart_count;
                    if entered || oom_repeated {
                        transitions
                            .push(Transition { container: observation.clone(), signal: signal.clone() });
                    }
                }
                (None, Some(memo)) => {
                    // Running → Running with one more restart after an OOM: the restart was faster than
                    // any status update showed the kill. Waiting → Running after CrashLoopBackOff is the
                    // same OOM already reported, so it needs `failing` to have been None.
                    if observation.running_after_oom
                        && memo.failing.is_none()
                        && observation.restart_count > memo.restart_count
                    {
                        transitions.push(Transition {
                            container: observation.clone(),
                            signal: FailureSignal {
                                kind: FailureKind::OomKilled,
                                reason: "OOMKilled".into(),
                                message: None,
                                exit_code: Some(137),
                                // The kill happened between two status reads; its time was not seen.
                                failed_at: None,
                            },
                        });
                    }
                }
                (None, None) => {}
            }
        }
        let cleared = previous
            .into_iter()
            .flatten()
            .filter_map(|memo| memo.failing.filter(|kind| is_waiting_kind(*kind)).map(|kind| (memo, kind)))
            .filter(|(memo, kind)| {
                !observations
                    .iter()
                    .any(|o| *o.name == *memo.name && o.failure.as_ref().is_some_and(|f| f.kind == *kind))
            })
            .map(|(memo, kind)| (memo.name.to_string(), kind))
            .collect();
        let memos = observations
            .iter()
            .map(|o| ContainerMemo {
                name: o.name.as_str().into(),
                restart_count: o.restart_count,
                failing: o.failure.as_ref().map(|f| f.kind),
            })
            .collect();
        self.pods.insert(uid.into(), memos);
        (transitions, cleared)
    }

    /// Forgets a deleted pod.
    pub fn forget(&mut self, uid: &str) {
        self.pods.remove(uid);
    }

    /// Keeps only the pods in `uids` (after a relist).
    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        self.pods.retain(|uid, _| keep(uid));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(restarts: i32, state: serde_json::Value, last: serde_json::Value) -> LeanPod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "shop", "uid": "u1"},
            "status": {"containerStatuses": [{"name": "app", "image": "i", "imageID": "", "ready": false,
                "restartCount": restarts, "state": state, "lastState": last}]}
        }))
        .expect("pod")
    }

    fn running() -> serde_json::Value {
        json!({"running": {"startedAt": "2026-11-01T09:00:00Z"}})
    }

    fn oom() -> serde_json::Value {
        json!({"terminated": {"exitCode": 137, "reason": "OOMKilled"}})
    }

    fn backoff() -> serde_json::Value {
        json!({"waiting": {"reason": "CrashLoopBackOff"}})
    }

    #[test]
    fn one_oom_cycle_raises_exactly_one_transition() {
        let mut tracker = PodTracker::default();
        let steps = [
            pod(2, running(), json!({})),
            pod(2, oom(), json!({})),
            pod(2, backoff(), oom()),
            pod(3, running(), oom()),
        ];
        let raised: usize = steps.iter().map(|p| tracker.observe(p).len()).sum();
        assert_eq!(raised, 1);
    }

    #[test]
    fn a_healthy_pod_with_a_stale_oom_raises_nothing_on_any_number_of_updates() {
        let mut tracker = PodTracker::default();
        for _ in 0..5 {
            assert!(tracker.observe(&pod(4, running(), oom())).is_empty());
        }
    }

    #[test]
    fn a_fast_restart_after_an_oom_is_still_seen_through_the_restart_count() {
        let mut tracker = PodTracker::default();
        assert!(tracker.observe(&pod(1, running(), oom())).is_empty());
        let raised = tracker.observe(&pod(2, running(), oom()));
        assert_eq!(raised.len(), 1);
        assert_eq!(raised[0].signal.kind, FailureKind::OomKilled);
    }

    #[test]
    fn a_pod_already_failing_when_first_seen_is_reported_once() {
        let mut tracker = PodTracker::default();
        assert_eq!(tracker.observe(&pod(6, backoff(), oom())).len(), 1);
        assert!(tracker.observe(&pod(6, backoff(), oom())).is_empty());
    }
}
