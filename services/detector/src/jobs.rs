//! Jobs that gave up: a batch/v1 Job whose `Failed` condition turned true (`BackoffLimitExceeded`,
//! `DeadlineExceeded`, a pod failure policy, …). Its pods' own failures are reported as they happen; this
//! is the Job's verdict on them, and for a Job past its deadline the only signal there is (the Job
//! controller deletes its running pods).
//!
//! Pure tracking, no I/O: the watch loop feeds Jobs and the pods of Jobs in, and gets the failure to
//! publish out. A Job's failure names the newest pod of the Job the detector saw, deleted or not, so the
//! diagnoser can read its logs while they exist.

use std::collections::HashMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kubesent_proto::{
    self as proto, Failure, FailureJob, FailureKind, IncidentKey, PodRef, WorkloadKind, WorkloadRef,
};
use serde::Deserialize;

use crate::lean::LeanPod;

/// A Job, reduced to what the detector reads.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct LeanJob {
    /// Name, namespace, uid.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// Limits and the pod template's containers.
    #[serde(default)]
    pub spec: Option<LeanJobSpec>,
    /// Conditions and counts.
    #[serde(default)]
    pub status: Option<LeanJobStatus>,
}

/// The parts of a Job's spec the detector reads.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LeanJobSpec {
    /// Retries before the Job fails.
    #[serde(default)]
    pub backoff_limit: Option<i32>,
    /// Seconds the Job may be active.
    #[serde(default)]
    pub active_deadline_seconds: Option<i64>,
    /// The pod template.
    #[serde(default)]
    pub template: LeanJobTemplate,
}

/// A Job's pod template.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct LeanJobTemplate {
    /// Its spec.
    #[serde(default)]
    pub spec: Option<crate::lean::LeanPodSpec>,
}

/// The parts of a Job's status the detector reads.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct LeanJobStatus {
    /// Conditions (`Failed`, `Complete`, `FailureTarget`, …).
    #[serde(default)]
    pub conditions: Option<Vec<LeanJobCondition>>,
    /// Pods that failed.
    #[serde(default)]
    pub failed: Option<i32>,
}

/// One Job condition.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LeanJobCondition {
    /// `Failed`, `Complete`, …
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// Machine-readable reason.
    #[serde(default)]
    pub reason: Option<String>,
    /// Human-readable message.
    #[serde(default)]
    pub message: Option<String>,
    /// When it last changed.
    #[serde(default)]
    pub last_transition_time: Option<Time>,
}

kubesent_common::lean_resource!(LeanJob, "Job", "batch", "v1", "jobs");

/// The `Failed=True` condition of a Job, if it has one.
pub fn job_failure(job: &LeanJob) -> Option<&LeanJobCondition> {
    let conditions = job.status.as_ref()?.conditions.as_ref()?;
    conditions.iter().find(|c| c.type_ == "Failed" && c.status == "True")
}

/// The newest pod seen of each Job, the Jobs whose failure was reported, and the failed Jobs waiting for
/// their first pod to be seen (the pod and Job watches are separate streams: a Job's `Failed` can arrive
/// before its pods, as after a restart whose Job relist finishes first).
#[derive(Debug, Default)]
pub struct JobTracker {
    newest_pod: HashMap<String, (Option<Time>, PodRef)>,
    failed: HashMap<String, String>,
    waiting: HashMap<String, Box<LeanJob>>,
}

impl JobTracker {
    /// Records a pod; remembered for its Job when it is the Job's newest. The failure of its Job, when
    /// that Job failed before any of its pods was seen.
    pub fn observe_pod(&mut self, pod: &LeanPod) -> Option<FailureJob> {
        let owner = kubesent_common::owner::controller(&pod.metadata).filter(|o| o.kind == "Job")?;
        let created = pod.metadata.creation_timestamp.clone();
        let reference = PodRef {
            namespace: pod.metadata.namespace.clone().unwrap_or_default(),
            name: pod.metadata.name.clone().unwrap_or_default(),
            uid: pod.metadata.uid.clone().unwrap_or_default(),
            resource_version: pod.metadata.resource_version.clone().unwrap_or_default(),
        };
        match self.newest_pod.get_mut(&owner.uid) {
            Some((newest, known)) if known.uid == reference.uid || *newest <= created => {
                *newest = created;
                *known = reference;
            }
            Some(_) => {}
            None => {
                self.newest_pod.insert(owner.uid.clone(), (created, reference));
            }
        }
        let job = self.waiting.remove(&owner.uid)?;
        let failed = job_failure(&job)?;
        let reason = failed.reason.clone().unwrap_or_default();
        self.failed.insert(owner.uid.clone(), reason.clone());
        let (_, pod) = self.newest_pod.get(&owner.uid)?;
        Some(failure_job(&job, pod.clone(), &reason, failed.message.as_deref().unwrap_or_default()))
    }

    /// Records a Job; the job to publish when it has failed, no longer than `max_age` before `now` (a
    /// detector that starts does not report Jobs that failed long ago), and a pod of it is known.
    pub fn observe_job(
        &mut self,
        job: &LeanJob,
        now: jiff::Timestamp,
        max_age: std::time::Duration,
    ) -> Option<FailureJob> {
        let uid = job.metadata.uid.clone()?;
        let Some(failed) = job_failure(job) else {
            self.failed.remove(&uid);
            self.waiting.remove(&uid);
            return None;
        };
        let reason = failed.reason.clone().unwrap_or_default();
        if self.failed.get(&uid) == Some(&reason) {
            return None;
        }
        let recent = failed.last_transition_time.as_ref().is_none_or(|at| {
            now.duration_since(at.0)
                <= jiff::SignedDuration::try_from(max_age).unwrap_or(jiff::SignedDuration::MAX)
        });
        if !recent {
            self.failed.insert(uid, reason);
            return None;
        }
        let Some((_, pod)) = self.newest_pod.get(&uid) else {
            // Reported once a pod of it is seen.
            self.waiting.insert(uid, Box::new(job.clone()));
            return None;
        };
        let reported = failure_job(job, pod.clone(), &reason, failed.message.as_deref().unwrap_or_default());
        self.failed.insert(uid, reason);
        Some(reported)
    }

    /// Forgets a deleted Job.
    pub fn forget_job(&mut self, uid: &str) {
        self.newest_pod.remove(uid);
        self.failed.remove(uid);
        self.waiting.remove(uid);
    }

    /// Jobs remembered.
    pub fn len(&self) -> usize {
        self.newest_pod.len().max(self.failed.len()).max(self.waiting.len())
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The holder of a Job failure's incident in the incident book: the Job, not a pod (its pods are
/// deleted when it passes its deadline).
pub fn holder(job_uid: &str) -> String {
    format!("{HOLDER_PREFIX}{job_uid}")
}

/// What [`holder`] starts with (a pod uid never does).
pub const HOLDER_PREFIX: &str = "job/";

/// The job that reports `job`'s failure, naming `pod`, its newest pod.
pub fn failure_job(job: &LeanJob, pod: PodRef, reason: &str, message: &str) -> FailureJob {
    let spec = job.spec.clone().unwrap_or_default();
    let first = spec.template.spec.as_ref().and_then(|s| s.containers.first());
    let container = first.map(|c| c.name.clone()).unwrap_or_default();
    let limits = match reason {
        "DeadlineExceeded" => {
            spec.active_deadline_seconds.map(|s| format!(" (activeDeadlineSeconds: {s})")).unwrap_or_default()
        }
        _ => {
            let failed = job.status.as_ref().and_then(|s| s.failed).unwrap_or(0);
            format!(" (backoffLimit: {}, failed pods: {failed})", spec.backoff_limit.unwrap_or(6))
        }
    };
    let key = IncidentKey {
        namespace: pod.namespace.clone(),
        workload: WorkloadRef {
            kind: WorkloadKind::Job,
            name: job.metadata.name.clone().unwrap_or_default(),
        },
        container: container.clone(),
        kind: FailureKind::JobFailed,
        template_hash: job.metadata.uid.clone().unwrap_or_default(),
    };
    FailureJob {
        schema: proto::SCHEMA_VERSION,
        incident: key.fingerprint(),
        key,
        pod,
        failure: Failure {
            kind: FailureKind::JobFailed,
            container,
            init_container: false,
            reason: proto::validate::clip_text_to(reason, 256),
            message: Some(proto::validate::clip_text(&format!("{message}{limits}"))),
            exit_code: None,
            restart_count: job.status.as_ref().and_then(|s| s.failed).unwrap_or(0),
            image: first.and_then(|c| c.image.clone()).unwrap_or_default(),
            failed_at: job_failure(job).and_then(|c| c.last_transition_time.as_ref()).map(|t| t.0),
        },
        affected_pods: 1,
        detected_at: jiff::Timestamp::now(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn job(conditions: serde_json::Value) -> LeanJob {
        serde_json::from_value(json!({
            "metadata": {"name": "report", "namespace": "shop", "uid": "job-1"},
            "spec": {"backoffLimit": 2, "template": {"spec": {"containers": [{"name": "main", "image": "report:1"}]}}},
            "status": {"failed": 3, "conditions": conditions}
        }))
        .expect("job")
    }

    fn pod(name: &str, created: &str) -> LeanPod {
        serde_json::from_value(json!({"metadata": {"name": name, "namespace": "shop", "uid": name,
            "creationTimestamp": created,
            "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": "report", "uid": "job-1", "controller": true}]}}))
        .expect("pod")
    }

    #[test]
    fn a_job_that_gives_up_is_reported_once_naming_its_newest_pod() {
        let now: jiff::Timestamp = "2026-11-01T10:05:00Z".parse().expect("time");
        let max_age = std::time::Duration::from_secs(900);
        let mut tracker = JobTracker::default();
        tracker.observe_pod(&pod("report-b", "2026-11-01T10:01:00Z"));
        tracker.observe_pod(&pod("report-a", "2026-11-01T10:00:00Z"));
        assert!(tracker.observe_job(&job(json!([])), now, max_age).is_none(), "running");
        let failed = job(json!([{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
            "message": "Job has reached the specified backoff limit", "lastTransitionTime": "2026-11-01T10:04:00Z"}]));
        let reported = tracker.observe_job(&failed, now, max_age).expect("reported");
        assert_eq!(reported.pod.name, "report-b", "the newest pod");
        assert_eq!(reported.key.workload, WorkloadRef { kind: WorkloadKind::Job, name: "report".into() });
        assert_eq!(reported.failure.kind, FailureKind::JobFailed);
        assert_eq!(reported.failure.reason, "BackoffLimitExceeded");
        assert_eq!(
            reported.failure.message.as_deref(),
            Some("Job has reached the specified backoff limit (backoffLimit: 2, failed pods: 3)")
        );
        assert!(proto::Validate::validate(&reported).is_ok());
        assert!(tracker.observe_job(&failed, now, max_age).is_none(), "once");
        tracker.forget_job("job-1");
        assert!(tracker.is_empty());
    }

    #[test]
    fn a_job_whose_failure_arrives_before_any_of_its_pods_is_reported_when_the_first_pod_does() {
        let now: jiff::Timestamp = "2026-11-01T10:05:00Z".parse().expect("time");
        let max_age = std::time::Duration::from_secs(900);
        let mut tracker = JobTracker::default();
        let failed = job(json!([{"type": "Failed", "status": "True", "reason": "DeadlineExceeded",
            "message": "Job was active longer than specified deadline", "lastTransitionTime": "2026-11-01T10:04:00Z"}]));
        assert!(tracker.observe_job(&failed, now, max_age).is_none(), "no pod of it seen yet");
        assert!(tracker.observe_job(&failed, now, max_age).is_none(), "still none");
        let reported = tracker.observe_pod(&pod("report-a", "2026-11-01T10:00:00Z")).expect("reported now");
        assert_eq!(
            (reported.pod.name.as_str(), reported.failure.reason.as_str()),
            ("report-a", "DeadlineExceeded")
        );
        assert!(tracker.observe_pod(&pod("report-b", "2026-11-01T10:01:00Z")).is_none(), "once");
        assert!(tracker.observe_job(&failed, now, max_age).is_none(), "once");
    }

    #[test]
    fn a_job_that_failed_long_before_the_detector_started_is_not_reported() {
        let mut tracker = JobTracker::default();
        tracker.observe_pod(&pod("report-a", "2026-11-01T10:00:00Z"));
        let failed = job(json!([{"type": "Failed", "status": "True", "reason": "DeadlineExceeded",
            "message": "Job was active longer than specified deadline", "lastTransitionTime": "2026-11-01T10:04:00Z"}]));
        let next_day: jiff::Timestamp = "2026-11-02T10:00:00Z".parse().expect("time");
        assert!(tracker.observe_job(&failed, next_day, std::time::Duration::from_secs(900)).is_none());
    }
}
