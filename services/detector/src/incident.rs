//! Incident grouping: which workload a pod belongs to, and the template hash that tells rollouts apart.

use kubesent_common::owner::POD_TEMPLATE_HASH;
use kubesent_proto::{FailureKind, IncidentKey, WorkloadKind, WorkloadRef};

use crate::lean::LeanPod;

/// Label StatefulSets and DaemonSets put on their pods.
const CONTROLLER_REVISION_HASH: &str = "controller-revision-hash";
/// Label Jobs put on their pods.
const JOB_CONTROLLER_UID: &str = "batch.kubernetes.io/controller-uid";

/// The controlling workload of a pod, named from the pod alone ([`kubesent_common::owner::named_workload`]).
pub fn workload_of(pod: &LeanPod) -> WorkloadRef {
    kubesent_common::owner::named_workload(&pod.metadata)
}

fn label<'a>(pod: &'a LeanPod, key: &str) -> Option<&'a str> {
    pod.metadata.labels.as_ref()?.get(key).map(String::as_str)
}

/// The pod template revision: the controller's hash label, or for a bare pod a hash of the
/// container's image and resources, so a pod changed by a fix is a new incident. The resources are those
/// the container runs with where the kubelet reports them: after an in-place resize the spec changes at
/// once, but a kill that comes before the kubelet actuates it is still the old incident's.
pub fn template_hash(pod: &LeanPod, container: &str) -> String {
    // Every run of a CronJob is a new Job with a new uid; its template is what tells runs apart.
    let cron_job_run = workload_of(pod).kind == WorkloadKind::CronJob;
    for key in [POD_TEMPLATE_HASH, CONTROLLER_REVISION_HASH, JOB_CONTROLLER_UID] {
        if key == JOB_CONTROLLER_UID && cron_job_run {
            continue;
        }
        if let Some(value) = label(pod, key) {
            return value.to_owned();
        }
    }
    let spec = pod.spec.as_ref().and_then(|s| {
        s.containers.iter().chain(s.init_containers.iter().flatten()).find(|c| c.name == container)
    });
    let running = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.iter().flatten().find(|c| c.name == container))
        .and_then(|c| c.resources.as_ref());
    // A pod KubeSent's change was taken back from (`kubesent undo`) carries the incident undone: its
    // next failure is a new incident, not a duplicate the jobs stream would drop.
    let undone =
        pod.metadata.annotations.as_ref().and_then(|a| a.get(kubesent_common::marks::UNDONE_ANNOTATION));
    let fingerprint = spec
        .map(|c| {
            let resources = running.or(c.resources.as_ref());
            match undone {
                Some(undone) => serde_json::to_string(&(&c.image, resources, undone)),
                None => serde_json::to_string(&(&c.image, resources)),
            }
            .unwrap_or_default()
        })
        .unwrap_or_default();
    format!("{:016x}", fnv1a(fingerprint.as_bytes()))
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3))
}

/// The incident key of a container failure.
pub fn incident_key(pod: &LeanPod, container: &str, kind: FailureKind) -> IncidentKey {
    IncidentKey {
        namespace: pod.metadata.namespace.clone().unwrap_or_default(),
        workload: workload_of(pod),
        container: container.to_owned(),
        kind,
        template_hash: template_hash(pod, container),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn replica(name: &str) -> LeanPod {
        serde_json::from_value(json!({"metadata": {"name": name, "namespace": "shop", "uid": name,
            "labels": {"app": "web", "pod-template-hash": "7d9c5b7f6"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7d9c5b7f6", "uid": "rs", "controller": true}]},
            "spec": {"containers": [{"name": "app", "image": "web:1"}]}}))
        .expect("pod")
    }

    #[test]
    fn replicas_of_one_deployment_share_an_incident() {
        let a = incident_key(&replica("web-7d9c5b7f6-aaaaa"), "app", FailureKind::OomKilled);
        let b = incident_key(&replica("web-7d9c5b7f6-bbbbb"), "app", FailureKind::OomKilled);
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert_eq!(
            a.workload,
            WorkloadRef { kind: kubesent_proto::WorkloadKind::Deployment, name: "web".into() }
        );
    }

    #[test]
    fn runs_of_a_cron_job_share_an_incident_but_a_plain_job_is_its_own() {
        let run = |job: &str, uid: &str| -> LeanPod {
            serde_json::from_value(json!({"metadata": {"name": format!("{job}-x7k2p"), "namespace": "ops", "uid": uid,
                "labels": {"batch.kubernetes.io/controller-uid": uid},
                "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": job, "uid": uid, "controller": true}]},
                "spec": {"containers": [{"name": "backup", "image": "backup:3"}]}}))
            .expect("pod")
        };
        let first = incident_key(&run("nightly-backup-29400120", "j1"), "backup", FailureKind::CrashLoop);
        let second = incident_key(&run("nightly-backup-29401560", "j2"), "backup", FailureKind::CrashLoop);
        assert_eq!(
            first.workload,
            WorkloadRef { kind: kubesent_proto::WorkloadKind::CronJob, name: "nightly-backup".into() }
        );
        assert_eq!(first.fingerprint(), second.fingerprint(), "one incident for every failing run");
        let plain = incident_key(&run("migrate-v2", "j3"), "backup", FailureKind::CrashLoop);
        assert_eq!(
            plain.workload,
            WorkloadRef { kind: kubesent_proto::WorkloadKind::Job, name: "migrate-v2".into() }
        );
        assert_eq!(plain.template_hash, "j3");
    }

    #[test]
    fn a_bare_pod_kubesent_s_change_was_undone_on_fails_as_a_new_incident() {
        let bare = |annotations: serde_json::Value| -> LeanPod {
            serde_json::from_value(json!({"metadata": {"name": "solo", "namespace": "shop", "uid": "u",
                "annotations": annotations},
                "spec": {"containers": [{"name": "app", "image": "web:1", "resources": {"limits": {"memory": "128Mi"}}}]}}))
            .expect("pod")
        };
        let before = incident_key(
            &bare(json!({"kubectl.kubernetes.io/last-applied-configuration": "{}"})),
            "app",
            FailureKind::OomKilled,
        );
        let undone = bare(json!({"kubesent.io/undone": "inc-0123456789abcdef01234567", "other": "x"}));
        assert_eq!(
            undone.metadata.annotations.as_ref().map(|a| a.len()),
            Some(1),
            "only KubeSent's mark is kept of a pod's annotations"
        );
        let after = incident_key(&undone, "app", FailureKind::OomKilled);
        assert_ne!(before.fingerprint(), after.fingerprint(), "a new incident after the undo");
        assert_eq!(
            before.fingerprint(),
            incident_key(&bare(json!({})), "app", FailureKind::OomKilled).fingerprint()
        );
    }

    #[test]
    fn a_bare_pod_is_its_own_workload_and_a_changed_spec_is_a_new_incident() {
        let bare = |memory: &str| -> LeanPod {
            serde_json::from_value(json!({"metadata": {"name": "solo", "namespace": "shop", "uid": "u"},
                "spec": {"containers": [{"name": "app", "image": "web:1", "resources": {"limits": {"memory": memory}}}]}}))
            .expect("pod")
        };
        let before = incident_key(&bare("128Mi"), "app", FailureKind::OomKilled);
        let after = incident_key(&bare("256Mi"), "app", FailureKind::OomKilled);
        assert_eq!(
            before.workload,
            WorkloadRef { kind: kubesent_proto::WorkloadKind::Pod, name: "solo".into() }
        );
        assert_ne!(before.fingerprint(), after.fingerprint());
    }

    #[test]
    fn a_kill_before_the_kubelet_actuates_a_resize_is_still_the_old_incident() {
        let resized = |running: &str| -> LeanPod {
            serde_json::from_value(json!({"metadata": {"name": "solo", "namespace": "shop", "uid": "u"},
                "spec": {"containers": [{"name": "app", "image": "web:1", "resources": {"limits": {"memory": "256Mi"}}}]},
                "status": {"containerStatuses": [{"name": "app", "image": "web:1",
                    "resources": {"limits": {"memory": running}}}]}}))
            .expect("pod")
        };
        let before: LeanPod = serde_json::from_value(json!({"metadata": {"name": "solo", "namespace": "shop", "uid": "u"},
            "spec": {"containers": [{"name": "app", "image": "web:1", "resources": {"limits": {"memory": "128Mi"}}}]}}))
        .expect("pod");
        let old = incident_key(&before, "app", FailureKind::OomKilled);
        let not_yet = incident_key(&resized("128Mi"), "app", FailureKind::OomKilled);
        let actuated = incident_key(&resized("256Mi"), "app", FailureKind::OomKilled);
        assert_eq!(old.fingerprint(), not_yet.fingerprint(), "the spec changed, the container did not yet");
        assert_ne!(old.fingerprint(), actuated.fingerprint(), "killed at the new size: a new incident");
    }
}
