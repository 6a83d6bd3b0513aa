//! The safety gate, a pure function: a verdict is applied only when the target still exists and still
//! fails, the confidence is high enough, the action agrees with the evidence, and policy allows it.

use k8s_openapi::api::core::v1::Pod;
use kubesent_proto::{Action, FailureKind, MemoryQuantity, Verdict, VerdictStatus};

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

/// The gate's decision.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Apply the action.
    Apply,
    /// Apply nothing, only record the suggestion (dry-run).
    Suggest(String),
    /// The target is gone, replaced or healthy.
    Stale(String),
    /// The verdict carries no action.
    DiagnosisOnly,
    /// Refused.
    Deny(String),
}

/// How long after an OOM kill a running container still counts as failing.
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
            waiting == Some("CrashLoopBackOff") || state.terminated.is_some()
        }
        FailureKind::NotReady => state.running.is_some() && !cs.ready,
        FailureKind::JobFailed => false,
        FailureKind::Evicted | FailureKind::Unschedulable => false,
    }
}

/// Decides what to do with `verdict` given the live pod (`None` when it no longer exists).
pub fn decide(verdict: &Verdict, live: Option<&Pod>, policy: &Policy, now: jiff::Timestamp) -> Decision {
    if verdict.status == VerdictStatus::Stale {
        return Decision::Stale("the diagnoser found the target gone".into());
    }
    if verdict.failure.kind == FailureKind::JobFailed {
        // A Job that gave up stays failed (its pods may be gone); nothing of it is changed.
        return match verdict.action {
            Action::None => Decision::DiagnosisOnly,
            _ => Decision::Deny("a Job that gave up gets a diagnosis, never a change".into()),
        };
    }
    let Some(pod) = live.filter(|p| p.metadata.uid.as_deref() == Some(verdict.pod.uid.as_str())) else {
        return Decision::Stale(format!(
            "pod {}/{} with uid {} no longer exists",
            verdict.pod.namespace, verdict.pod.name, verdict.pod.uid
        ));
    };
    if pod.metadata.deletion_timestamp.is_some() {
        return Decision::Stale("the pod is being deleted".into());
    }
    if !still_failing(pod, &verdict.failure.container, verdict.failure.kind, now) {
        return Decision::Stale(format!(
            "container {} no longer shows {}",
            verdict.failure.container,
            verdict.failure.kind.as_str()
        ));
    }
    if verdict.action == Action::None {
        return Decision::DiagnosisOnly;
    }
    if verdict.confidence < policy.confidence_threshold {
        return Decision::Deny(format!(
            "confidence {} is below the threshold {}",
            verdict.confidence, policy.confidence_threshold
        ));
    }
    if let Some(reason) = disagreement(verdict, pod) {
        return Decision::Deny(reason);
    }
    let namespace = &verdict.pod.namespace;
    if policy.excluded_namespaces.iter().any(|ns| ns == namespace) {
        return Decision::Deny(format!("namespace {namespace} is excluded from remediation"));
    }
    if pod.metadata.annotations.as_ref().and_then(|a| a.get(OPT_OUT_ANNOTATION)).is_some_and(|v| v == "false")
    {
        return Decision::Deny(format!("the workload opted out ({OPT_OUT_ANNOTATION}=false)"));
    }
    if let Action::IncreaseMemory { from, to, .. } = &verdict.action {
        if *to > policy.max_memory {
            return Decision::Deny(format!("{to} exceeds the memory cap of {}", policy.max_memory));
        }
        if to.bytes() as f64 > from.bytes() as f64 * policy.max_memory_factor {
            return Decision::Deny(format!(
                "{from} -> {to} exceeds the maximum factor of {}",
                policy.max_memory_factor
            ));
        }
    }
    if policy.dry_run {
        return Decision::Suggest("dry-run: nothing was changed".into());
    }
    Decision::Apply
}

/// Why the action does not fit the evidence, if it does not.
fn disagreement(verdict: &Verdict, pod: &Pod) -> Option<String> {
    let failing = &verdict.failure.container;
    match &verdict.action {
        Action::IncreaseMemory { container, from, to } => {
            if verdict.failure.kind != FailureKind::OomKilled {
                return Some(format!(
                    "a memory increase does not fit a {} failure",
                    verdict.failure.kind.as_str()
                ));
            }
            if container != failing {
                return Some(format!("the action targets container {container} but {failing} is failing"));
            }
            if to <= from {
                return Some(format!("{from} -> {to} is not an increase"));
            }
            match kubesent_common::pod::memory_limit(pod, container) {
                Some(current) if current == *from => None,
                Some(current) => Some(format!("the live limit is {current}, not {from}")),
                None => Some(format!("container {container} has no memory limit to raise")),
            }
        }
        Action::RollbackImage { container, from, .. } => {
            let pull_failure = matches!(
                verdict.failure.kind,
                FailureKind::ImagePullBackOff | FailureKind::ErrImagePull | FailureKind::InvalidImageName
            );
            if !pull_failure {
                return Some(format!(
                    "an image rollback does not fit a {} failure",
                    verdict.failure.kind.as_str()
                ));
            }
            if container != failing {
                return Some(format!("the action targets container {container} but {failing} is failing"));
            }
            match kubesent_common::pod::container(pod, container).and_then(|c| c.image.clone()) {
                Some(current) if current == *from => None,
                Some(current) => Some(format!("the live image is {current}, not {from}")),
                None => Some(format!("container {container} does not exist")),
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
                return Some(format!(
                    "a revision rollback does not fit a {} failure",
                    verdict.failure.kind.as_str()
                ));
            }
            if container != failing {
                return Some(format!("the action targets container {container} but {failing} is failing"));
            }
            None
        }
        Action::None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kubesent_proto::{Failure, IncidentKey, PodRef, VerdictSource, WorkloadRef};
    use serde_json::json;

    fn now() -> jiff::Timestamp {
        "2026-11-01T10:00:00Z".parse().expect("time")
    }

    fn live_pod(limit: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "web-1", "namespace": "shop", "uid": "u1"},
            "spec": {"containers": [{"name": "app", "image": "web:1", "resources": {"limits": {"memory": limit}}}]},
            "status": {"containerStatuses": [{"name": "app", "image": "web:1", "imageID": "", "ready": false, "restartCount": 2,
                "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                "lastState": {"terminated": {"exitCode": 137, "reason": "OOMKilled", "finishedAt": "2026-11-01T09:59:50Z"}}}]}
        }))
        .expect("pod")
    }

    fn verdict(from: u64, to: u64, confidence: u8) -> Verdict {
        let key = IncidentKey {
            namespace: "shop".into(),
            workload: WorkloadRef { kind: kubesent_proto::WorkloadKind::Pod, name: "web-1".into() },
            container: "app".into(),
            kind: FailureKind::OomKilled,
            template_hash: "h".into(),
        };
        Verdict {
            schema: 1,
            incident: key.fingerprint(),
            key,
            pod: PodRef {
                namespace: "shop".into(),
                name: "web-1".into(),
                uid: "u1".into(),
                resource_version: "1".into(),
            },
            failure: Failure {
                kind: FailureKind::OomKilled,
                container: "app".into(),
                init_container: false,
                reason: "OOMKilled".into(),
                message: None,
                exit_code: Some(137),
                restart_count: 2,
                image: "web:1".into(),
                failed_at: None,
            },
            status: VerdictStatus::Diagnosed,
            root_cause: "oom".into(),
            action: Action::IncreaseMemory {
                container: "app".into(),
                from: MemoryQuantity::from_mib(from),
                to: MemoryQuantity::from_mib(to),
            },
            confidence,
            source: VerdictSource::Rules { rule: "oom".into() },
            diagnosed_at: now(),
            detected_at: None,
            evidence: None,
        }
    }

    #[test]
    fn a_confident_bounded_memory_increase_for_a_failing_pod_is_applied() {
        assert_eq!(
            decide(&verdict(128, 256, 95), Some(&live_pod("128Mi")), &Policy::default(), now()),
            Decision::Apply
        );
    }

    #[test]
    fn a_missing_or_replaced_pod_makes_the_verdict_stale() {
        assert!(matches!(
            decide(&verdict(128, 256, 95), None, &Policy::default(), now()),
            Decision::Stale(_)
        ));
        let mut replaced = live_pod("128Mi");
        replaced.metadata.uid = Some("u2".into());
        assert!(matches!(
            decide(&verdict(128, 256, 95), Some(&replaced), &Policy::default(), now()),
            Decision::Stale(_)
        ));
    }

    #[test]
    fn low_confidence_caps_and_mismatched_evidence_are_denied() {
        let policy = Policy::default();
        let pod = live_pod("128Mi");
        assert!(matches!(decide(&verdict(128, 256, 89), Some(&pod), &policy, now()), Decision::Deny(_)));
        assert!(matches!(
            decide(&verdict(128, 16 * 1024, 95), Some(&pod), &policy, now()),
            Decision::Deny(_)
        ));
        assert!(
            matches!(decide(&verdict(128, 1024, 95), Some(&pod), &policy, now()), Decision::Deny(_)),
            "factor 8 > 4"
        );
        assert!(
            matches!(decide(&verdict(64, 128, 95), Some(&pod), &policy, now()), Decision::Deny(_)),
            "live limit differs"
        );
        assert!(
            matches!(
                decide(&verdict(256, 128, 95), Some(&live_pod("256Mi")), &policy, now()),
                Decision::Deny(_)
            ),
            "a decrease"
        );
    }

    #[test]
    fn excluded_namespaces_opt_outs_and_dry_run_are_honoured() {
        let excluded = Policy { excluded_namespaces: vec!["shop".into()], ..Policy::default() };
        assert!(matches!(
            decide(&verdict(128, 256, 95), Some(&live_pod("128Mi")), &excluded, now()),
            Decision::Deny(_)
        ));
        let mut opted_out = live_pod("128Mi");
        opted_out.metadata.annotations = Some([(OPT_OUT_ANNOTATION.to_owned(), "false".to_owned())].into());
        assert!(matches!(
            decide(&verdict(128, 256, 95), Some(&opted_out), &Policy::default(), now()),
            Decision::Deny(_)
        ));
        let dry = Policy { dry_run: true, ..Policy::default() };
        assert!(matches!(
            decide(&verdict(128, 256, 95), Some(&live_pod("128Mi")), &dry, now()),
            Decision::Suggest(_)
        ));
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
    }
}
