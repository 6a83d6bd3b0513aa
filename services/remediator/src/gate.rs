//! The safety gate, a pure function: a verdict is applied only when the target still exists and still
//! fails, the confidence is high enough, the action agrees with the evidence, and policy allows it.

use k8s_openapi::api::core::v1::Pod;
use kubesent_proto::{Action, FailureKind, MemoryQuantity, Verdict, VerdictStatus};

use crate::refusal::Refusal;

/// Per-workload opt-out: `kubesent.io/remediate: "false"` on the pod (or its template).
pub const OPT_OUT_ANNOTATION: &str = "kubesent.io/remediate";

/// What the gate allows.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// Verdicts below this confidence are denied.
    pub confidence_threshold: u8,
    /// Namespaces never touched.
    pub excluded_namespaces: Vec<String>,
    /// Largest memory limit KubeSent may set.
    pub max_memory: MemoryQuantity,
    /// Largest factor by which one action may raise a limit.
    pub max_memory_factor: f64,
    /// Decide and record, but change nothing.
    pub dry_run: bool,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            confidence_threshold: 90,
            excluded_namespaces: ["kube-system", "kube-public", "kube-node-lease", "kubesent"]
                .map(String::from)
                .to_vec(),
            max_memory: MemoryQuantity::from_mib(8 * 1024),
            max_memory_factor: 4.0,
            dry_run: false,
        }
    }
}

/// Why the verdict's target no longer needs it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Stale {
    /// The diagnoser already found the target gone.
    #[error("the diagnoser found the target gone")]
    GoneWhenDiagnosed,
    /// The pod (with that uid) no longer exists.
    #[error("pod {namespace}/{name} with uid {uid} no longer exists")]
    PodGone {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// The uid the verdict names.
        uid: String,
    },
    /// The pod is being deleted.
    #[error("the pod is being deleted")]
    Deleting,
    /// The container no longer shows the failure.
    #[error("container {container} no longer shows {kind}")]
    Recovered {
        /// The container.
        container: String,
        /// The failure it showed.
        kind: &'static str,
    },
}

/// Why policy or the evidence refuses the action.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Denial {
    /// A Job that gave up stays failed; it gets a diagnosis, never a change.
    #[error("a Job that gave up gets a diagnosis, never a change")]
    JobGaveUp,
    /// The confidence is below the threshold.
    #[error("confidence {confidence} is below the threshold {threshold}")]
    LowConfidence {
        /// The verdict's confidence.
        confidence: u8,
        /// The policy's threshold.
        threshold: u8,
    },
    /// The action does not fit the evidence.
    #[error(transparent)]
    Disagrees(#[from] Disagreement),
    /// The namespace is excluded.
    #[error("namespace {0} is excluded from remediation")]
    ExcludedNamespace(String),
    /// The pod opted out.
    #[error("the workload opted out ({OPT_OUT_ANNOTATION}=false)")]
    OptedOut,
    /// The new memory limit is over the cap.
    #[error("{to} exceeds the memory cap of {cap}")]
    OverMemoryCap {
        /// The new limit.
        to: MemoryQuantity,
        /// The cap.
        cap: MemoryQuantity,
    },
    /// The new memory limit raises the old one by more than the maximum factor.
    #[error("{from} -> {to} exceeds the maximum factor of {factor}")]
    OverMemoryFactor {
        /// The old limit.
        from: MemoryQuantity,
        /// The new limit.
        to: MemoryQuantity,
        /// The maximum factor.
        factor: f64,
    },
}

/// Why an action does not fit the evidence of the live pod.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Disagreement {
    /// The action does not answer this kind of failure.
    #[error("{action} does not fit a {failure} failure")]
    WrongFailure {
        /// The action, in words.
        action: &'static str,
        /// The failure kind.
        failure: &'static str,
    },
    /// The action targets another container than the failing one.
    #[error("the action targets container {action} but {failing} is failing")]
    WrongContainer {
        /// The action's container.
        action: String,
        /// The failing container.
        failing: String,
    },
    /// A memory "increase" that is none.
    #[error("{from} -> {to} is not an increase")]
    NotAnIncrease {
        /// The old limit.
        from: MemoryQuantity,
        /// The new limit.
        to: MemoryQuantity,
    },
    /// The live memory limit is not what the action changes from.
    #[error("the live limit is {current}, not {from}")]
    LiveLimit {
        /// What the pod has.
        current: MemoryQuantity,
        /// What the action changes from.
        from: MemoryQuantity,
    },
    /// The container has no memory limit.
    #[error("container {0} has no memory limit to raise")]
    NoMemoryLimit(String),
    /// The live image is not what the action changes from.
    #[error("the live image is {current}, not {from}")]
    LiveImage {
        /// What the pod runs.
        current: String,
        /// What the action changes from.
        from: String,
    },
    /// The pod has no such container.
    #[error("container {0} does not exist")]
    NoContainer(String),
}

/// How long after an OOM kill or a crash a running container still counts as failing.
pub const RECENT_FAILURE: jiff::SignedDuration = jiff::SignedDuration::from_secs(300);

/// Whether the container still shows the verdict's failure at `now`.
pub fn still_failing(pod: &Pod, container: &str, kind: FailureKind, now: jiff::Timestamp) -> bool {
    let status = pod.status.as_ref();
    match kind {
        FailureKind::Evicted => {
            return status.is_some_and(|s| {
                s.phase.as_deref() == Some("Failed")
                    && matches!(
                        s.reason.as_deref(),
                        Some("Evicted" | "Terminated" | "Shutdown" | "NodeShutdown")
                    )
            });
        }
        FailureKind::Unschedulable => {
            return status.and_then(|s| s.conditions.as_ref()).is_some_and(|c| {
                c.iter().any(|c| {
                    c.type_ == "PodScheduled"
                        && c.status == "False"
                        && c.reason.as_deref() == Some("Unschedulable")
                })
            });
        }
        _ => {}
    }
    let Some(cs) = pod
        .status
        .as_ref()
        .into_iter()
        .flat_map(|s| s.container_statuses.iter().flatten().chain(s.init_container_statuses.iter().flatten()))
        .find(|cs| cs.name == container)
    else {
        return false;
    };
    let state = cs.state.clone().unwrap_or_default();
    let last = cs.last_state.as_ref().and_then(|s| s.terminated.as_ref());
    let waiting = state.waiting.as_ref().and_then(|w| w.reason.as_deref());
    match kind {
        FailureKind::OomKilled => {
            let oom_now = state.terminated.as_ref().is_some_and(|t| t.reason.as_deref() == Some("OOMKilled"));
            let last_oom = last.filter(|t| t.reason.as_deref() == Some("OOMKilled"));
            let recent = last_oom
                .and_then(|t| t.finished_at.as_ref())
                .is_some_and(|finished| now.duration_since(finished.0) < RECENT_FAILURE);
            oom_now || (waiting == Some("CrashLoopBackOff") && last_oom.is_some()) || recent
        }
        FailureKind::ImagePullBackOff | FailureKind::ErrImagePull | FailureKind::InvalidImageName => {
            matches!(waiting, Some("ImagePullBackOff" | "ErrImagePull" | "InvalidImageName"))
        }
        FailureKind::CreateContainerConfigError => waiting == Some("CreateContainerConfigError"),
        FailureKind::StartError => {
            matches!(waiting, Some("CrashLoopBackOff" | "CreateContainerError" | "RunContainerError"))
                || state.terminated.as_ref().is_some_and(|t| t.reason.as_deref() == Some("StartError"))
        }
        FailureKind::CrashLoop | FailureKind::Killed => {
            // A process that crashes a while after it starts runs between its crashes: it is still
            // crash-looping while its last exit (non-zero, after a restart) is recent.
            let recent_crash = cs.restart_count >= 1
                && last
                    .filter(|t| t.exit_code != 0)
                    .and_then(|t| t.finished_at.as_ref())
                    .is_some_and(|finished| now.duration_since(finished.0) < RECENT_FAILURE);
            waiting == Some("CrashLoopBackOff") || state.terminated.is_some() || recent_crash
        }
        FailureKind::NotReady => state.running.is_some() && !cs.ready,
        // Still being created, or an init container still running.
        FailureKind::NeverStarted => {
            matches!(waiting, Some("ContainerCreating" | "PodInitializing")) || state.running.is_some()
        }
        FailureKind::JobFailed => false,
        FailureKind::Evicted | FailureKind::Unschedulable => false,
    }
}

/// Checks `verdict` against the live pod (`None` when it no longer exists) and the policy: `Ok` lets the
/// plan go on, a [`Refusal`] ends the verdict.
pub fn check(
    verdict: &Verdict,
    live: Option<&Pod>,
    policy: &Policy,
    now: jiff::Timestamp,
) -> Result<(), Refusal> {
    if verdict.status == VerdictStatus::Stale {
        return Err(Stale::GoneWhenDiagnosed.into());
    }
    if verdict.failure.kind == FailureKind::JobFailed {
        // A Job that gave up stays failed (its pods may be gone); nothing of it is changed.
        return match verdict.action {
            Action::None => Err(Refusal::DiagnosisOnly(verdict.root_cause.clone())),
            _ => Err(Denial::JobGaveUp.into()),
        };
    }
    let Some(pod) = live.filter(|p| p.metadata.uid.as_deref() == Some(verdict.pod.uid.as_str())) else {
        return Err(Stale::PodGone {
            namespace: verdict.pod.namespace.clone(),
            name: verdict.pod.name.clone(),
            uid: verdict.pod.uid.clone(),
        }
        .into());
    };
    if pod.metadata.deletion_timestamp.is_some() {
        return Err(Stale::Deleting.into());
    }
    if !still_failing(pod, &verdict.failure.container, verdict.failure.kind, now) {
        return Err(Stale::Recovered {
            container: verdict.failure.container.clone(),
            kind: verdict.failure.kind.as_str(),
        }
        .into());
    }
    if verdict.action == Action::None {
        return Err(Refusal::DiagnosisOnly(verdict.root_cause.clone()));
    }
    if verdict.confidence < policy.confidence_threshold {
        return Err(Denial::LowConfidence {
            confidence: verdict.confidence,
            threshold: policy.confidence_threshold,
        }
        .into());
    }
    disagreement(verdict, pod).map_or(Ok(()), |d| Err(Denial::Disagrees(d)))?;
    let namespace = &verdict.pod.namespace;
    if policy.excluded_namespaces.iter().any(|ns| ns == namespace) {
        return Err(Denial::ExcludedNamespace(namespace.clone()).into());
    }
    if pod.metadata.annotations.as_ref().and_then(|a| a.get(OPT_OUT_ANNOTATION)).is_some_and(|v| v == "false")
    {
        return Err(Denial::OptedOut.into());
    }
    if let Action::IncreaseMemory { from, to, .. } = &verdict.action {
        if *to > policy.max_memory {
            return Err(Denial::OverMemoryCap { to: *to, cap: policy.max_memory }.into());
        }
        if to.bytes() as f64 > from.bytes() as f64 * policy.max_memory_factor {
            return Err(
                Denial::OverMemoryFactor { from: *from, to: *to, factor: policy.max_memory_factor }.into()
            );
        }
    }
    if policy.dry_run {
        return Err(Refusal::DryRun);
    }
    Ok(())
}

/// Why the action does not fit the evidence, if it does not.
fn disagreement(verdict: &Verdict, pod: &Pod) -> Option<Disagreement> {
    let failing = &verdict.failure.container;
    let wrong_failure =
        |action| Some(Disagreement::WrongFailure { action, failure: verdict.failure.kind.as_str() });
    let wrong_container = |container: &String| {
        (container != failing)
            .then(|| Disagreement::WrongContainer { action: container.clone(), failing: failing.clone() })
    };
    match &verdict.action {
        Action::IncreaseMemory { container, from, to } => {
            if verdict.failure.kind != FailureKind::OomKilled {
                return wrong_failure("a memory increase");
            }
            if let Some(wrong) = wrong_container(container) {
                return Some(wrong);
            }
            if to <= from {
                return Some(Disagreement::NotAnIncrease { from: *from, to: *to });
            }
            match kubesent_common::pod::memory_limit(pod, container) {
                Some(current) if current == *from => None,
                Some(current) => Some(Disagreement::LiveLimit { current, from: *from }),
                None => Some(Disagreement::NoMemoryLimit(container.clone())),
            }
        }
        Action::RollbackImage { container, from, .. } => {
            let pull_failure = matches!(
                verdict.failure.kind,
                FailureKind::ImagePullBackOff | FailureKind::ErrImagePull | FailureKind::InvalidImageName
            );
            if !pull_failure {
                return wrong_failure("an image rollback");
            }
            if let Some(wrong) = wrong_container(container) {
                return Some(wrong);
            }
            match kubesent_common::pod::container(pod, container).and_then(|c| c.image.clone()) {
                Some(current) if current == *from => None,
                Some(current) => Some(Disagreement::LiveImage { current, from: from.clone() }),
                None => Some(Disagreement::NoContainer(container.clone())),
            }
        }
        Action::RollbackRevision { container, .. } | Action::PauseRollout { container, .. } => {
            let revision_failure = matches!(
                verdict.failure.kind,
                FailureKind::CrashLoop
                    | FailureKind::Killed
                    | FailureKind::StartError
                    | FailureKind::CreateContainerConfigError
                    | FailureKind::NotReady
            );
            if !revision_failure {
                return wrong_failure("a revision rollback");
            }
            wrong_container(container)
        }
        Action::None => None,
    }
}

#[cfg(test)]
mod tests {
    use kubesent_testkit::fixtures;
    use serde_json::json;

    use super::*;

    fn now() -> jiff::Timestamp {
        "2026-11-01T10:00:00Z".parse().expect("time")
    }

    fn live_pod(limit: &str) -> Pod {
        fixtures::oom_killed_pod("web-1", limit)
    }

    fn verdict(from: u64, to: u64, confidence: u8) -> Verdict {
        let pod = live_pod(&format!("{from}Mi"));
        Verdict { confidence, ..fixtures::verdict(&pod, fixtures::increase(from, to)) }
    }

    #[test]
    fn a_confident_bounded_memory_increase_for_a_failing_pod_is_applied() {
        assert_eq!(
            check(&verdict(128, 256, 95), Some(&live_pod("128Mi")), &Policy::default(), now()),
            Ok(())
        );
    }

    #[test]
    fn a_missing_or_replaced_pod_makes_the_verdict_stale() {
        assert!(matches!(
            check(&verdict(128, 256, 95), None, &Policy::default(), now()),
            Err(Refusal::Stale(Stale::PodGone { .. }))
        ));
        let mut replaced = live_pod("128Mi");
        replaced.metadata.uid = Some("u2".into());
        assert!(matches!(
            check(&verdict(128, 256, 95), Some(&replaced), &Policy::default(), now()),
            Err(Refusal::Stale(Stale::PodGone { .. }))
        ));
    }

    #[test]
    fn low_confidence_caps_and_mismatched_evidence_are_denied() {
        let policy = Policy::default();
        let pod = live_pod("128Mi");
        let denied = |verdict: Verdict, pod: &Pod| match check(&verdict, Some(pod), &policy, now()) {
            Err(Refusal::Denied(denial)) => denial,
            other => panic!("expected a denial, got {other:?}"),
        };
        assert!(matches!(
            denied(verdict(128, 256, 89), &pod),
            Denial::LowConfidence { confidence: 89, threshold: 90 }
        ));
        assert!(matches!(denied(verdict(128, 16 * 1024, 95), &pod), Denial::OverMemoryCap { .. }));
        assert!(
            matches!(denied(verdict(128, 1024, 95), &pod), Denial::OverMemoryFactor { .. }),
            "factor 8 > 4"
        );
        assert!(matches!(
            denied(verdict(64, 128, 95), &pod),
            Denial::Disagrees(Disagreement::LiveLimit { .. })
        ));
        assert!(matches!(
            denied(verdict(256, 128, 95), &live_pod("256Mi")),
            Denial::Disagrees(Disagreement::NotAnIncrease { .. })
        ));
        let mut other_container = verdict(128, 256, 95);
        other_container.action = Action::IncreaseMemory {
            container: "sidecar".into(),
            from: MemoryQuantity::from_mib(128),
            to: MemoryQuantity::from_mib(256),
        };
        assert!(matches!(
            denied(other_container, &pod),
            Denial::Disagrees(Disagreement::WrongContainer { .. })
        ));
        let mut wrong_kind = verdict(128, 256, 95);
        wrong_kind.failure.kind = FailureKind::CrashLoop;
        assert!(matches!(
            denied(wrong_kind, &pod),
            Denial::Disagrees(Disagreement::WrongFailure { action: "a memory increase", .. })
        ));
    }

    #[test]
    fn excluded_namespaces_opt_outs_and_dry_run_are_honoured() {
        let excluded = Policy { excluded_namespaces: vec!["shop".into()], ..Policy::default() };
        assert!(matches!(
            check(&verdict(128, 256, 95), Some(&live_pod("128Mi")), &excluded, now()),
            Err(Refusal::Denied(Denial::ExcludedNamespace(_)))
        ));
        let mut opted_out = live_pod("128Mi");
        opted_out.metadata.annotations = Some([(OPT_OUT_ANNOTATION.to_owned(), "false".to_owned())].into());
        assert!(matches!(
            check(&verdict(128, 256, 95), Some(&opted_out), &Policy::default(), now()),
            Err(Refusal::Denied(Denial::OptedOut))
        ));
        let dry = Policy { dry_run: true, ..Policy::default() };
        assert_eq!(
            check(&verdict(128, 256, 95), Some(&live_pod("128Mi")), &dry, now()),
            Err(Refusal::DryRun)
        );
    }

    #[test]
    fn a_job_that_gave_up_gets_a_diagnosis_and_never_a_change() {
        let mut job = verdict(128, 256, 95);
        job.failure.kind = FailureKind::JobFailed;
        assert_eq!(check(&job, None, &Policy::default(), now()), Err(Refusal::Denied(Denial::JobGaveUp)));
        job.action = Action::None;
        assert!(matches!(check(&job, None, &Policy::default(), now()), Err(Refusal::DiagnosisOnly(_))));
    }

    #[test]
    fn a_pod_that_recovered_long_ago_is_no_longer_failing() {
        let mut pod = live_pod("128Mi");
        let status = pod.status.as_mut().and_then(|s| s.container_statuses.as_mut()).expect("statuses");
        status[0].state = Some(
            serde_json::from_value(json!({"running": {"startedAt": "2026-11-01T09:00:00Z"}})).expect("state"),
        );
        status[0].last_state = Some(serde_json::from_value(json!({"terminated": {"exitCode": 137, "reason": "OOMKilled", "finishedAt": "2026-11-01T09:00:00Z"}})).expect("state"));
        assert!(!still_failing(&pod, "app", FailureKind::OomKilled, now()));
        assert!(!still_failing(&pod, "app", FailureKind::CrashLoop, now()));
    }

    #[test]
    fn a_container_running_between_recent_crashes_is_still_crash_looping() {
        let mut pod = live_pod("128Mi");
        let crashed_at = now() - jiff::SignedDuration::from_secs(30);
        let status = pod.status.as_mut().and_then(|s| s.container_statuses.as_mut()).expect("statuses");
        status[0].restart_count = 3;
        status[0].state =
            Some(serde_json::from_value(json!({"running": {"startedAt": crashed_at}})).expect("state"));
        status[0].last_state = Some(
            serde_json::from_value(
                json!({"terminated": {"exitCode": 2, "reason": "Error", "finishedAt": crashed_at}}),
            )
            .expect("state"),
        );
        assert!(still_failing(&pod, "app", FailureKind::CrashLoop, now()));
        // A clean exit is no crash.
        let status = pod.status.as_mut().and_then(|s| s.container_statuses.as_mut()).expect("statuses");
        status[0].last_state = Some(
            serde_json::from_value(
                json!({"terminated": {"exitCode": 0, "reason": "Completed", "finishedAt": crashed_at}}),
            )
            .expect("state"),
        );
        assert!(!still_failing(&pod, "app", FailureKind::CrashLoop, now()));
    }
}
