//! The pods, actions, jobs and verdicts KubeSent's tests build, in one place: every crate's tests describe
//! a failure the same way, and a change to a wire type is made here once.
//!
//! Pods live in namespace `shop` with one container, `app`, running `registry.local/shop/web:1.4.2`
//! unless a test says otherwise. Jobs and verdicts are built from a pod as the detector and the diagnoser
//! would build them: the workload named from the pod's owner references, the failure kind from the
//! action, the incident from the key.

use k8s_openapi::api::core::v1::Pod;
use kubesent_proto::{
    self as proto, Action, Failure, FailureJob, FailureKind, IncidentKey, MemoryQuantity, PodRef,
    RevisionRef, Verdict, VerdictSource, VerdictStatus, WorkloadKind, WorkloadRef,
};
use serde_json::json;

/// The namespace every fixture lives in.
pub const NAMESPACE: &str = "shop";
/// The image every fixture runs.
pub const IMAGE: &str = "registry.local/shop/web:1.4.2";

fn pod_from(value: serde_json::Value) -> Pod {
    serde_json::from_value(value).unwrap_or_else(|error| panic!("a fixture pod does not decode: {error}"))
}

/// A pod to create in kube-sim: container `app` with `limit` as its memory limit and request, needing
/// `need` (kube-sim's kubelet OOM-kills it when `need` is over `limit`). No labels: no workload's selector
/// takes it for one of its pods.
pub fn sim_pod(name: &str, limit: &str, need: &str) -> Pod {
    pod_from(json!({
        "metadata": {"name": name, "namespace": NAMESPACE,
            "annotations": {"sim.kubesent.io/memory-need": need}},
        "spec": {"containers": [{"name": "app", "image": IMAGE,
            "resources": {"limits": {"memory": limit}, "requests": {"memory": limit}}}]}
    }))
}

/// A bare pod labelled `app: web` that kube-sim OOM-kills: 200Mi needed under a 128Mi limit.
pub fn oom_pod(name: &str) -> Pod {
    let mut pod = sim_pod(name, "128Mi", "200Mi");
    pod.metadata.labels = Some([("app".to_owned(), "web".to_owned())].into());
    pod
}

/// A pod as the API shows it once its container `app` (memory limit `limit`) was OOM-killed three times
/// and is backing off, with a uid and a resourceVersion: the live pod the pure decisions read.
pub fn oom_killed_pod(name: &str, limit: &str) -> Pod {
    pod_from(json!({
        "metadata": {"name": name, "namespace": NAMESPACE, "uid": format!("uid-{name}"), "resourceVersion": "42",
            "labels": {"app": "web"}},
        "spec": {"containers": [{"name": "app", "image": IMAGE, "resources": {"limits": {"memory": limit}}}]},
        "status": {"phase": "Running", "containerStatuses": [{"name": "app", "image": IMAGE, "imageID": "",
            "ready": false, "restartCount": 3, "state": {"waiting": {"reason": "CrashLoopBackOff"}},
            "lastState": {"terminated": {"reason": "OOMKilled", "exitCode": 137,
                "finishedAt": jiff::Timestamp::now().to_string()}}}]}
    }))
}

/// `pod`, its container `app` now waiting with `reason` (`ErrImagePull`, `CrashLoopBackOff` after exit 1,
/// `CreateContainerConfigError`), running `image`.
pub fn waiting(mut pod: Pod, reason: &str, image: &str) -> Pod {
    let last = (reason == "CrashLoopBackOff")
        .then(|| json!({"terminated": {"reason": "Error", "exitCode": 1}}))
        .unwrap_or(json!({}));
    if let Some(container) = pod.spec.as_mut().and_then(|s| s.containers.first_mut()) {
        container.image = Some(image.to_owned());
    }
    let status = json!({"phase": if reason == "ErrImagePull" { "Pending" } else { "Running" },
        "containerStatuses": [{"name": "app", "image": image, "imageID": "", "ready": false, "restartCount": 3,
            "state": {"waiting": {"reason": reason}}, "lastState": last}]});
    pod.status = Some(serde_json::from_value(status).unwrap_or_else(|e| panic!("a fixture status: {e}")));
    pod
}

/// `pod` controlled by the `kind` named `name` (a `ReplicaSet` `web-7d9` is a Deployment `web`'s, by the
/// `pod-template-hash` label the Deployment controller sets), with the revision label its controller sets.
pub fn owned_by(mut pod: Pod, kind: &str, name: &str) -> Pod {
    let reference = serde_json::from_value(json!({"apiVersion": "apps/v1", "kind": kind, "name": name,
        "uid": format!("uid-{name}"), "controller": true}))
    .unwrap_or_else(|e| panic!("a fixture owner reference: {e}"));
    pod.metadata.owner_references = Some(vec![reference]);
    let labels = pod.metadata.labels.get_or_insert_default();
    match kind {
        "ReplicaSet" => {
            let hash = name.rsplit_once('-').map_or(name, |(_, hash)| hash);
            labels.insert("pod-template-hash".into(), hash.into());
        }
        "StatefulSet" => {
            labels.insert("controller-revision-hash".into(), format!("{name}-7d9"));
        }
        _ => {}
    }
    pod
}

/// Raise `app`'s memory limit from `from` to `to` MiB.
pub fn increase(from: u64, to: u64) -> Action {
    Action::IncreaseMemory {
        container: "app".into(),
        from: MemoryQuantity::from_mib(from),
        to: MemoryQuantity::from_mib(to),
    }
}

/// Roll `app` back from image `from` to image `to`.
pub fn rollback_image(from: &str, to: &str) -> Action {
    Action::RollbackImage { container: "app".into(), from: from.into(), to: to.into() }
}

/// Roll `app`'s owner back from revision `from` to revision `to` (number, ReplicaSet or
/// ControllerRevision name).
pub fn rollback_revision(from: (i64, &str), to: (i64, &str)) -> Action {
    Action::RollbackRevision {
        container: "app".into(),
        from: RevisionRef { number: from.0, name: from.1.into() },
        to: RevisionRef { number: to.0, name: to.1.into() },
    }
}

/// Pause `app`'s owner's rollout at `revision`.
pub fn pause(revision: (i64, &str)) -> Action {
    Action::PauseRollout {
        container: "app".into(),
        revision: RevisionRef { number: revision.0, name: revision.1.into() },
    }
}

/// The failure an action answers, as the rules pair them.
fn failure_for(action: &Action) -> FailureKind {
    match action {
        Action::IncreaseMemory { .. } => FailureKind::OomKilled,
        Action::RollbackImage { .. } => FailureKind::ErrImagePull,
        Action::RollbackRevision { .. } | Action::PauseRollout { .. } | Action::None => {
            FailureKind::CrashLoop
        }
    }
}

/// The kubelet's reason and the exit code the detector reports for a `kind` failure.
fn reason_of(kind: FailureKind) -> (&'static str, Option<i32>) {
    match kind {
        FailureKind::OomKilled => ("OOMKilled", Some(137)),
        FailureKind::ErrImagePull => ("ErrImagePull", None),
        FailureKind::CrashLoop => ("CrashLoopBackOff", Some(1)),
        other => (other.as_str(), None),
    }
}

/// The failure of `pod`'s container `container` as the detector reports it.
fn failure(pod: &Pod, container: &str, kind: FailureKind) -> Failure {
    let status = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.iter().find(|c| c.name == container));
    let image = pod
        .spec
        .as_ref()
        .and_then(|s| s.containers.iter().find(|c| c.name == container))
        .and_then(|c| c.image.clone())
        .unwrap_or_else(|| IMAGE.to_owned());
    let (reason, exit_code) = reason_of(kind);
    Failure {
        kind,
        container: container.to_owned(),
        init_container: false,
        reason: reason.into(),
        message: None,
        exit_code,
        restart_count: status.map_or(0, |s| s.restart_count),
        image,
        failed_at: None,
    }
}

/// The pod as a wire reference (its live uid and resourceVersion).
pub fn pod_ref(pod: &Pod) -> PodRef {
    PodRef {
        namespace: pod.metadata.namespace.clone().unwrap_or_else(|| NAMESPACE.to_owned()),
        name: pod.metadata.name.clone().unwrap_or_default(),
        uid: pod.metadata.uid.clone().unwrap_or_default(),
        resource_version: pod.metadata.resource_version.clone().unwrap_or_default(),
    }
}

/// The incident key of `pod`'s `kind` failure of `container`, as the detector derives it.
pub fn key(pod: &Pod, container: &str, kind: FailureKind) -> IncidentKey {
    let template_hash = pod
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get("pod-template-hash").or_else(|| l.get("controller-revision-hash")))
        .cloned()
        .unwrap_or_else(|| "none".into());
    IncidentKey {
        namespace: pod_ref(pod).namespace,
        workload: kubesent_common::owner::named_workload(&pod.metadata),
        container: container.to_owned(),
        kind,
        template_hash,
    }
}

/// The job the detector publishes for `pod`'s `kind` failure of `app`.
pub fn job(pod: &Pod, kind: FailureKind) -> FailureJob {
    let key = key(pod, "app", kind);
    FailureJob {
        schema: proto::SCHEMA_VERSION,
        incident: key.fingerprint(),
        key,
        pod: pod_ref(pod),
        failure: failure(pod, "app", kind),
        affected_pods: 1,
        detected_at: jiff::Timestamp::now(),
    }
}

/// The verdict the rules publish for `pod` proposing `action` (confidence 95): the failure the action
/// answers, the workload named by the pod's owner references.
pub fn verdict(pod: &Pod, action: Action) -> Verdict {
    let container = action.container().unwrap_or("app").to_owned();
    let kind = failure_for(&action);
    let key = key(pod, &container, kind);
    Verdict {
        schema: proto::SCHEMA_VERSION,
        incident: key.fingerprint(),
        key,
        pod: pod_ref(pod),
        failure: failure(pod, &container, kind),
        status: VerdictStatus::Diagnosed,
        root_cause: format!("container {container} fails ({})", kind.as_str()),
        action,
        confidence: 95,
        source: VerdictSource::Rules { rule: "fixture".into() },
        diagnosed_at: jiff::Timestamp::now(),
        detected_at: None,
        evidence: None,
        caused_by: None,
    }
}

/// `verdict` with its key changed by `change`, and its incident following the key (as a forger's would).
pub fn rekeyed(mut verdict: Verdict, change: impl FnOnce(&mut IncidentKey)) -> Verdict {
    change(&mut verdict.key);
    verdict.incident = verdict.key.fingerprint();
    verdict
}

/// `verdict` naming the workload `kind` `name` instead.
pub fn naming(verdict: Verdict, kind: WorkloadKind, name: &str) -> Verdict {
    rekeyed(verdict, |key| key.workload = WorkloadRef { kind, name: name.into() })
}

/// `verdict` reporting a `kind` failure instead.
pub fn failing_with(mut verdict: Verdict, kind: FailureKind) -> Verdict {
    let (reason, exit_code) = reason_of(kind);
    verdict.failure.kind = kind;
    verdict.failure.reason = reason.into();
    verdict.failure.exit_code = exit_code;
    rekeyed(verdict, |key| key.kind = kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_verdict_names_the_workload_the_pods_owner_references_name() {
        let pod = owned_by(oom_killed_pod("web-7d9-x", "256Mi"), "ReplicaSet", "web-7d9");
        let verdict = verdict(&pod, increase(256, 512));
        assert_eq!(verdict.key.workload, WorkloadRef { kind: WorkloadKind::Deployment, name: "web".into() });
        assert_eq!(verdict.key.template_hash, "7d9");
        assert_eq!(verdict.failure.kind, FailureKind::OomKilled);
        assert_eq!(verdict.failure.restart_count, 3);
        assert_eq!(verdict.incident, verdict.key.fingerprint());
        assert!(kubesent_proto::validate::Validate::validate(&verdict).is_ok());
        let bare = verdict_for_bare();
        assert_eq!(bare.key.workload.kind, WorkloadKind::Pod);
    }

    fn verdict_for_bare() -> Verdict {
        verdict(&waiting(oom_pod("web-1"), "ErrImagePull", "web:2"), rollback_image("web:2", "web:1"))
    }
}
