//! Wire types of the KubeSent pipeline: what the detector, diagnoser and remediator say to each other
//! over NATS JetStream, and the names of the streams and subjects they say it on. No I/O lives here.
//!
//! Every payload is JSON with a `schema` field; [`decode`] refuses a schema version it does not know
//! instead of guessing. The JSON Schemas of these types are checked in under `proto/schema/`.

pub mod approval;
pub mod autonomy;
mod fingerprint;
pub mod intent;
mod names;
mod quantity;
pub mod served;
pub mod validate;

use jiff::Timestamp;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize, de::DeserializeOwned};

pub use fingerprint::{IncidentId, IncidentKey};
pub use names::*;
pub use quantity::{MemoryQuantity, QuantityError};
pub use validate::{Invalid, Validate};

/// The payload schema version this build writes and accepts.
pub const SCHEMA_VERSION: u32 = 1;

/// What went wrong with a container, as the detector classified it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum FailureKind {
    /// Killed by the kernel OOM killer (`OOMKilled`, exit 137).
    OomKilled,
    /// Exit 137 (SIGKILL) without `OOMKilled`: a liveness-probe kill, preStop timeout or child OOM.
    Killed,
    /// A non-zero exit: crash-looping when the container restarts, or a failed run when it does not.
    CrashLoop,
    /// `ImagePullBackOff`: the kubelet keeps failing to pull the image.
    ImagePullBackOff,
    /// `ErrImagePull`: the latest pull failed.
    ErrImagePull,
    /// `InvalidImageName`: the image reference cannot be parsed.
    InvalidImageName,
    /// `CreateContainerConfigError`: e.g. a missing ConfigMap or Secret key.
    CreateContainerConfigError,
    /// The container runtime cannot create or start the container: `CreateContainerError`,
    /// `RunContainerError`, or `StartError` (exit 128) with the runtime's message.
    StartError,
    /// The pod fits no node: `PodScheduled=False`, reason `Unschedulable`, the scheduler's message.
    Unschedulable,
    /// The kubelet evicted the pod (`Failed`, reason `Evicted`): node pressure or its own ephemeral-storage
    /// limits.
    Evicted,
    /// A running container whose readiness probe has not succeeded for longer than the detector's
    /// threshold.
    NotReady,
    /// A Job gave up: its `Failed` condition (`BackoffLimitExceeded`, `DeadlineExceeded`, …).
    JobFailed,
    /// A scheduled pod whose containers never started within the detector's threshold: stuck creating
    /// (its sandbox or network, volumes that do not attach or mount, a pull that does not finish), or an
    /// init container that runs on without finishing. Reported with its cause, never changed.
    NeverStarted,
}

impl FailureKind {
    /// Every kind, for metrics that start at zero.
    pub const ALL: [Self; 13] = [
        Self::OomKilled,
        Self::Killed,
        Self::CrashLoop,
        Self::ImagePullBackOff,
        Self::ErrImagePull,
        Self::InvalidImageName,
        Self::CreateContainerConfigError,
        Self::StartError,
        Self::Unschedulable,
        Self::Evicted,
        Self::NotReady,
        Self::JobFailed,
        Self::NeverStarted,
    ];

    /// The kebab-case name, also used as a subject token.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::OomKilled => "oom-killed",
            Self::Killed => "killed",
            Self::CrashLoop => "crash-loop",
            Self::ImagePullBackOff => "image-pull-back-off",
            Self::ErrImagePull => "err-image-pull",
            Self::InvalidImageName => "invalid-image-name",
            Self::CreateContainerConfigError => "create-container-config-error",
            Self::StartError => "start-error",
            Self::Unschedulable => "unschedulable",
            Self::Evicted => "evicted",
            Self::NotReady => "not-ready",
            Self::JobFailed => "job-failed",
            Self::NeverStarted => "never-started",
        }
    }

    /// The failure this kind is a face of: `ErrImagePull` and `ImagePullBackOff` alternate on one pod
    /// whose image cannot be pulled, and are one failure (`image-pull`); every other kind is itself.
    pub const fn family(self) -> &'static str {
        match self {
            Self::ImagePullBackOff | Self::ErrImagePull => "image-pull",
            other => other.as_str(),
        }
    }
}

/// A specific pod instance (the uid tells a replacement with the same name apart).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PodRef {
    /// Namespace of the pod.
    pub namespace: String,
    /// Name of the pod.
    pub name: String,
    /// The pod's `metadata.uid`.
    pub uid: String,
    /// The pod's `metadata.resourceVersion` when the failure was seen.
    pub resource_version: String,
}

/// The kind of the workload an incident belongs to. A message naming any other kind does not decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
pub enum WorkloadKind {
    /// A bare pod (no controller KubeSent knows).
    Pod,
    /// apps/v1 Deployment (its ReplicaSets' pods).
    Deployment,
    /// apps/v1 ReplicaSet without a Deployment.
    ReplicaSet,
    /// apps/v1 StatefulSet.
    StatefulSet,
    /// apps/v1 DaemonSet.
    DaemonSet,
    /// batch/v1 Job.
    Job,
    /// batch/v1 CronJob (its Jobs' pods).
    CronJob,
}

impl WorkloadKind {
    /// The Kubernetes kind name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pod => "Pod",
            Self::Deployment => "Deployment",
            Self::ReplicaSet => "ReplicaSet",
            Self::StatefulSet => "StatefulSet",
            Self::DaemonSet => "DaemonSet",
            Self::Job => "Job",
            Self::CronJob => "CronJob",
        }
    }

    /// The kind named `kind`, if it is one of these.
    pub fn parse(kind: &str) -> Option<Self> {
        [
            Self::Pod,
            Self::Deployment,
            Self::ReplicaSet,
            Self::StatefulSet,
            Self::DaemonSet,
            Self::Job,
            Self::CronJob,
        ]
        .into_iter()
        .find(|k| k.as_str() == kind)
    }
}

impl std::fmt::Display for WorkloadKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The object that owns the failing pods: its controlling owner, resolved to the Deployment for
/// ReplicaSet pods, or the pod itself when it is bare.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkloadRef {
    /// Its kind.
    pub kind: WorkloadKind,
    /// Name of the workload object.
    pub name: String,
}

impl std::fmt::Display for WorkloadRef {
    /// `Deployment web`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.kind, self.name)
    }
}

/// The observed failure of one container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Failure {
    /// The classified kind.
    pub kind: FailureKind,
    /// The container's name.
    pub container: String,
    /// True for an init container.
    #[serde(default)]
    pub init_container: bool,
    /// The kubelet's reason (`CrashLoopBackOff`, `OOMKilled`, `ErrImagePull`, …).
    pub reason: String,
    /// The kubelet's message, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Exit code of the last termination, if it terminated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// The container's restart count.
    pub restart_count: i32,
    /// The image the container runs.
    pub image: String,
    /// When the failure began, as the cluster recorded it: the container's termination, the pod
    /// condition's transition, the Job's `Failed` condition (absent when the status holds no time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_at: Option<Timestamp>,
}

/// A failure the detector wants diagnosed. One job per incident, however many pods share it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FailureJob {
    /// Payload schema version ([`SCHEMA_VERSION`]).
    pub schema: u32,
    /// Fingerprint of [`FailureJob::key`]; also the `Nats-Msg-Id`.
    pub incident: IncidentId,
    /// What makes two failures the same incident.
    pub key: IncidentKey,
    /// The pod the failure was seen on (the first one, for a group).
    pub pod: PodRef,
    /// The failure itself.
    pub failure: Failure,
    /// How many pods of the workload showed this failure when the job was published.
    pub affected_pods: u32,
    /// When the detector saw the transition into failure.
    pub detected_at: Timestamp,
}

/// A typed remediation. Anything that does not map onto one of these is diagnosis only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
#[serde(deny_unknown_fields)]
pub enum Action {
    /// Raise a container's memory limit (and request, if it was equal to the old limit).
    IncreaseMemory {
        /// The container to change.
        container: String,
        /// Its current memory limit.
        from: MemoryQuantity,
        /// The new memory limit.
        to: MemoryQuantity,
    },
    /// Put a container back on the image its owner ran before.
    RollbackImage {
        /// The container to change.
        container: String,
        /// The failing image.
        from: String,
        /// The last image known to run.
        to: String,
    },
    /// Put a Deployment's or StatefulSet's pod template back to its previous revision's, as
    /// `kubectl rollout undo` does: the newest revision fails while the previous one ran ready.
    RollbackRevision {
        /// The failing container (the one verified afterwards).
        container: String,
        /// The failing revision (the owner's newest).
        from: RevisionRef,
        /// The revision to go back to.
        to: RevisionRef,
    },
    /// Pause a Deployment's rollout whose newest revision fails while the revision before it never ran
    /// ready (nothing to go back to), so it replaces no more pods until a human fixes the template.
    PauseRollout {
        /// The failing container.
        container: String,
        /// The failing revision (the owner's newest).
        revision: RevisionRef,
    },
    /// Nothing to apply: the verdict is a diagnosis only.
    None,
}

/// One revision of a workload: its number (`kubectl rollout history`) and the ReplicaSet or
/// ControllerRevision holding it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RevisionRef {
    /// The revision number.
    pub number: i64,
    /// Name of the ReplicaSet (Deployment) or ControllerRevision (StatefulSet).
    pub name: String,
}

impl std::fmt::Display for RevisionRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "revision {} ({})", self.number, self.name)
    }
}

impl Action {
    /// The snake_case type tag, also used as a subject token (`increase-memory`, …).
    pub const fn kind_str(&self) -> &'static str {
        match self {
            Self::IncreaseMemory { .. } => "increase-memory",
            Self::RollbackImage { .. } => "rollback-image",
            Self::RollbackRevision { .. } => "rollback-revision",
            Self::PauseRollout { .. } => "pause-rollout",
            Self::None => "none",
        }
    }

    /// The container the action changes, if any.
    pub fn container(&self) -> Option<&str> {
        match self {
            Self::IncreaseMemory { container, .. }
            | Self::RollbackImage { container, .. }
            | Self::RollbackRevision { container, .. }
            | Self::PauseRollout { container, .. } => Some(container),
            Self::None => None,
        }
    }
}

/// Who decided a verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[serde(deny_unknown_fields)]
pub enum VerdictSource {
    /// A deterministic rule of the rule engine.
    Rules {
        /// The rule's name.
        rule: String,
    },
    /// A language model.
    Model {
        /// The model that answered.
        model: String,
    },
    /// No diagnosis was made (the target was gone, or nothing was failing).
    None,
}

/// Whether the diagnosis applies to a live target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum VerdictStatus {
    /// The target was examined and diagnosed.
    Diagnosed,
    /// The target was gone or replaced before it could be examined.
    Stale,
}

/// The diagnoser's conclusion about one incident.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Verdict {
    /// Payload schema version ([`SCHEMA_VERSION`]).
    pub schema: u32,
    /// The incident this verdict is about.
    pub incident: IncidentId,
    /// The incident's key, carried so the remediator can check the target without the job.
    pub key: IncidentKey,
    /// The pod the failure was seen on.
    pub pod: PodRef,
    /// The failure as detected.
    pub failure: Failure,
    /// Whether the target was diagnosed or had gone stale.
    pub status: VerdictStatus,
    /// A sentence a human can act on.
    pub root_cause: String,
    /// The typed fix, or [`Action::None`].
    pub action: Action,
    /// Calibrated confidence that the action is right, 0–100.
    pub confidence: u8,
    /// Who decided.
    pub source: VerdictSource,
    /// When the verdict was made.
    pub diagnosed_at: Timestamp,
    /// When the detector saw the failure (the job's `detected_at`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detected_at: Option<Timestamp>,
    /// What the diagnosis was made from, in a line (logs, events, revisions, node), for humans.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence: Option<String>,
    /// The incident whose change of KubeSent's caused this failure (the pod runs what KubeSent wrote
    /// for it): the failure is KubeSent's, not the owner's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caused_by: Option<IncidentId>,
}

/// How the remediator carried out an action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Patched the controlling owner's pod template; its rollout replaces the pods.
    OwnerPatch,
    /// Resized a bare pod in place through `pods/resize`.
    InPlaceResize,
    /// Deleted a bare pod with preconditions and created it again with the fix.
    ForceReplace,
    /// Patched a bare pod's container image (an update the apiserver allows on a live pod).
    PodPatch,
}

/// What happened to a verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OutcomeResult {
    /// The action was applied.
    Applied,
    /// Applied, and the target was verified healthy afterwards.
    Healed,
    /// Applied, but the target did not heal within the verification window.
    Ineffective,
    /// The gate refused the action (policy, confidence, evidence mismatch, …).
    Denied,
    /// The target no longer exists or no longer fails.
    Stale,
    /// Only a diagnosis: nothing to apply.
    DiagnosisOnly,
    /// Allowed, but only suggested: dry-run, suggest-only (GitOps) or manual-approval mode.
    Suggested,
    /// Applying the action failed.
    Failed,
    /// A human reversed KubeSent's change (`kubesent undo`).
    Reverted,
    /// Manual-approval mode: the fix waits for `kubesent approve` (or `reject`). Not final: the incident's
    /// final outcome follows.
    AwaitingApproval,
    /// Another manager (a GitOps tool, `kubectl edit`, an autoscaler) changed what KubeSent changed while
    /// it verified: KubeSent stopped, wrote nothing more, and only suggests for that container after.
    Overridden,
    /// The change was written but the cluster does not run it (admission altered or refused the new pods):
    /// KubeSent takes it back.
    NotLanded,
    /// Not an outcome of KubeSent's own: what humans did after a decision KubeSent did not carry out
    /// (shadow, suggested), followed for a window (see [`autonomy::FollowUp`]). Not final.
    Followed,
}

impl OutcomeResult {
    /// Every result, for metrics that start at zero.
    pub const ALL: [Self; 13] = [
        Self::Applied,
        Self::Healed,
        Self::Ineffective,
        Self::Denied,
        Self::Stale,
        Self::DiagnosisOnly,
        Self::Suggested,
        Self::Failed,
        Self::Reverted,
        Self::AwaitingApproval,
        Self::Overridden,
        Self::NotLanded,
        Self::Followed,
    ];

    /// The snake_case name, also used as a subject token.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::Healed => "healed",
            Self::Ineffective => "ineffective",
            Self::Denied => "denied",
            Self::Stale => "stale",
            Self::DiagnosisOnly => "diagnosis_only",
            Self::Suggested => "suggested",
            Self::Failed => "failed",
            Self::Reverted => "reverted",
            Self::AwaitingApproval => "awaiting_approval",
            Self::Overridden => "overridden",
            Self::NotLanded => "not_landed",
            Self::Followed => "followed",
        }
    }
}

/// An entry of the audit log: what was decided and done about an incident, by whom and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Outcome {
    /// Payload schema version ([`SCHEMA_VERSION`]).
    pub schema: u32,
    /// The incident.
    pub incident: IncidentId,
    /// The pod the failure was seen on.
    pub pod: PodRef,
    /// The action of the verdict.
    pub action: Action,
    /// What happened.
    pub result: OutcomeResult,
    /// How the action was applied, if it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<Strategy>,
    /// Why, in a sentence.
    pub detail: String,
    /// The pod that replaced the failing one, when the strategy created one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replacement_uid: Option<String>,
    /// Identity of the remediator replica that acted.
    pub actor: String,
    /// The human who approved, rejected or reverted it: the name given and the NATS user that wrote the
    /// decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_by: Option<String>,
    /// W3C trace id of the incident's trace, when tracing is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// What the incident is about and what was concluded, as the verdict said (absent in records of
    /// reversals and in records written before this field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diagnosis: Option<Diagnosis>,
    /// The class of the fix and the mode it was decided in (absent for no action and in records written
    /// before earned autonomy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autonomy: Option<autonomy::Autonomy>,
    /// What humans did next, for a [`OutcomeResult::Followed`] record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub followup: Option<autonomy::FollowUp>,
    /// When this was recorded.
    pub at: Timestamp,
}

/// The verdict an outcome answers, kept in the audit log so an incident reads whole from it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Diagnosis {
    /// The incident's workload.
    pub workload: WorkloadRef,
    /// The failure as detected.
    pub failure: Failure,
    /// The root cause.
    pub root_cause: String,
    /// Its confidence, 0–100.
    pub confidence: u8,
    /// Who decided.
    pub source: VerdictSource,
    /// When the detector saw the failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detected_at: Option<Timestamp>,
    /// When the verdict was made.
    pub diagnosed_at: Timestamp,
    /// What the diagnosis was made from, in a line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence: Option<String>,
    /// The incident whose change of KubeSent's caused this failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caused_by: Option<IncidentId>,
}

impl Diagnosis {
    /// The diagnosis `verdict` carries.
    pub fn of(verdict: &Verdict) -> Self {
        Self {
            workload: verdict.key.workload.clone(),
            failure: verdict.failure.clone(),
            root_cause: verdict.root_cause.clone(),
            confidence: verdict.confidence,
            source: verdict.source.clone(),
            detected_at: verdict.detected_at,
            diagnosed_at: verdict.diagnosed_at,
            evidence: verdict.evidence.clone(),
            caused_by: verdict.caused_by.clone(),
        }
    }
}

/// Why a payload could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Not JSON, or not the expected shape.
    #[error("malformed payload: {0}")]
    Malformed(#[from] serde_json::Error),
    /// A schema version this build does not understand.
    #[error("unsupported schema version {found} (this build understands {SCHEMA_VERSION})")]
    UnsupportedSchema {
        /// The version found in the payload.
        found: u64,
    },
}

#[derive(Deserialize)]
struct SchemaProbe {
    schema: u64,
}

/// Decodes a payload after checking its `schema` version.
pub fn decode<T: DeserializeOwned>(payload: &[u8]) -> Result<T, DecodeError> {
    let probe: SchemaProbe = serde_json::from_slice(payload)?;
    if probe.schema != u64::from(SCHEMA_VERSION) {
        return Err(DecodeError::UnsupportedSchema { found: probe.schema });
    }
    Ok(serde_json::from_slice(payload)?)
}

/// Encodes a payload as compact JSON.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // NB: serializing these plain data types cannot fail (no maps with non-string keys, no custom
    // serializers that error), so an empty payload here would be a programming error; decode catches it.
    serde_json::to_vec(value).unwrap_or_default()
}

/// The JSON Schemas of every wire type, by file name, as checked in under `proto/schema/`.
pub fn json_schemas() -> Vec<(&'static str, serde_json::Value)> {
    fn schema<T: JsonSchema>() -> serde_json::Value {
        serde_json::to_value(schemars::schema_for!(T)).unwrap_or_default()
    }
    vec![
        ("failure_job.json", schema::<FailureJob>()),
        ("verdict.json", schema::<Verdict>()),
        ("action.json", schema::<Action>()),
        ("outcome.json", schema::<Outcome>()),
        ("intent.json", schema::<intent::Intent>()),
        ("decision.json", schema::<approval::Decision>()),
        ("served_revisions.json", schema::<served::ServedRevisions>()),
        ("policy_change.json", schema::<autonomy::PolicyChange>()),
        ("policy_request.json", schema::<autonomy::PolicyRequest>()),
        ("autonomy_override.json", schema::<autonomy::Override>()),
        ("following.json", schema::<autonomy::Following>()),
        ("class_record.json", schema::<autonomy::ClassRecord>()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_job() -> FailureJob {
        let key = IncidentKey {
            namespace: "shop".into(),
            workload: WorkloadRef { kind: WorkloadKind::Pod, name: "web-1".into() },
            container: "app".into(),
            kind: FailureKind::OomKilled,
            template_hash: "abc".into(),
        };
        FailureJob {
            schema: SCHEMA_VERSION,
            incident: key.fingerprint(),
            key,
            pod: PodRef {
                namespace: "shop".into(),
                name: "web-1".into(),
                uid: "u1".into(),
                resource_version: "7".into(),
            },
            failure: Failure {
                kind: FailureKind::OomKilled,
                container: "app".into(),
                init_container: false,
                reason: "OOMKilled".into(),
                message: None,
                exit_code: Some(137),
                restart_count: 1,
                image: "registry.local/web:1".into(),
                failed_at: None,
            },
            affected_pods: 1,
            detected_at: Timestamp::UNIX_EPOCH,
        }
    }

    #[test]
    fn a_job_round_trips_through_json() {
        let job = sample_job();
        let decoded: FailureJob = decode(&encode(&job)).expect("decodes");
        assert_eq!(decoded, job);
    }

    #[test]
    fn actions_are_tagged_with_a_snake_case_type() {
        let action = Action::IncreaseMemory {
            container: "app".into(),
            from: MemoryQuantity::from_mib(128),
            to: MemoryQuantity::from_mib(256),
        };
        let json = serde_json::to_value(&action).expect("serializes");
        assert_eq!(
            json,
            serde_json::json!({"type":"increase_memory","container":"app","from":"128Mi","to":"256Mi"})
        );
        assert_eq!(
            serde_json::to_value(Action::None).expect("serializes"),
            serde_json::json!({"type":"none"})
        );
    }

    #[test]
    fn an_unknown_schema_version_is_refused_before_the_body_is_trusted() {
        let err = decode::<FailureJob>(br#"{"schema":99,"whatever":true}"#).expect_err("refused");
        assert!(matches!(err, DecodeError::UnsupportedSchema { found: 99 }));
        let err = decode::<FailureJob>(b"not json").expect_err("refused");
        assert!(matches!(err, DecodeError::Malformed(_)));
    }

    #[test]
    fn unknown_fields_anywhere_in_a_job_or_an_action_are_refused() {
        let mut job = serde_json::to_value(sample_job()).expect("json");
        job["pod"]["privileged"] = serde_json::json!(true);
        assert!(decode::<FailureJob>(&serde_json::to_vec(&job).expect("bytes")).is_err());
        let mut job = serde_json::to_value(sample_job()).expect("json");
        job["extra"] = serde_json::json!("x");
        assert!(decode::<FailureJob>(&serde_json::to_vec(&job).expect("bytes")).is_err());
        let action =
            r#"{"type":"rollback_image","container":"app","from":"a:1","to":"b:2","registry":"evil"}"#;
        assert!(serde_json::from_str::<Action>(action).is_err());
        let action = r#"{"type":"rollback_image","container":"app","from":"a:1","to":"b:2"}"#;
        assert!(serde_json::from_str::<Action>(action).is_ok());
    }

    #[test]
    fn an_out_of_schema_action_type_does_not_decode() {
        let err = serde_json::from_str::<Action>(r#"{"type":"delete_namespace","container":"app"}"#);
        assert!(err.is_err());
    }
}
