//! The remediation write-ahead log's entries, as the `kubesent-intents` bucket holds them under each
//! incident: written by the leading remediator before anything changes and after each step, read by the
//! remediator that takes over, by `kubesent incidents` and `kubesent undo`, and by the campaigns' checker.
//!
//! Unlike the messages, an intent may carry fields this version does not know (a newer remediator wrote
//! it): it is read, not refused, so an older `kubesent` command still shows an incident. What it carries is
//! still validated before a remediator acts on it.

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{
    Action, IncidentId, OutcomeResult, PodRef, Strategy, Verdict, WorkloadRef,
    validate::{self, Invalid, Validate},
};

/// A Kubernetes Pod (core/v1), as the API serves it.
#[derive(JsonSchema)]
#[schemars(transparent)]
#[allow(dead_code)]
struct PodSchema(serde_json::Map<String, serde_json::Value>);

/// Largest intent read (it carries up to two whole pods and the verdict).
pub const MAX_INTENT_BYTES: usize = 1024 * 1024;

/// How far a remediation got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Manual-approval mode: decided and locked, waiting for `kubesent approve` or `reject`.
    AwaitingApproval,
    /// Approved by a human; the leader carries it out.
    Approved,
    /// Written; nothing has changed yet (a force replace: the old pod may still exist).
    Pending,
    /// The change was made (template patched, pod resized or patched); it is being verified.
    Applied,
    /// The old pod was deleted (or is terminating); the replacement must be created.
    Deleted,
    /// The replacement exists; it is being verified.
    Created,
    /// Finished; `result` says how.
    Done,
}

/// One remediation, as stored in the bucket under its incident id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Intent {
    /// Payload schema version.
    pub schema: u32,
    /// The incident.
    pub incident: IncidentId,
    /// Where it is.
    pub phase: Phase,
    /// The rung of the action ladder being carried out.
    #[serde(default = "force_replace")]
    pub strategy: Strategy,
    /// The failing pod (uid and resourceVersion as the gate saw them).
    pub target: PodRef,
    /// The workload whose template is patched, for [`Strategy::OwnerPatch`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<WorkloadRef>,
    /// The lock key this intent holds (per pod, or per workload).
    #[serde(default)]
    pub lock: String,
    /// The action.
    pub action: Action,
    /// The original pod, sanitized: enough to create it again if anything goes wrong.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<PodSchema>")]
    pub original: Option<Pod>,
    /// The pod to create, for a force replace (also kept for a resize, which may fall back to one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<PodSchema>")]
    pub replacement: Option<Pod>,
    /// The failing pods' `pod-template-hash` or `controller-revision-hash`: a rollout is done when no
    /// pod of this revision is left.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old_revision: Option<String>,
    /// Who approved it, in manual-approval mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved_by: Option<String>,
    /// The container's restart count once a change made in place took effect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline_restarts: Option<i32>,
    /// The remediator replica that wrote the last step.
    pub actor: String,
    /// The replacement's uid once created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replacement_uid: Option<String>,
    /// How it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<OutcomeResult>,
    /// Why it ended so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The verdict it carries out: an approved remediation is checked against the cluster again with it
    /// before anything changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<Box<Verdict>>,
    /// Last change.
    pub updated_at: Timestamp,
    /// When the fix was applied (the intent reached `Applied`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_at: Option<Timestamp>,
}

fn force_replace() -> Strategy {
    // Intents written before the ladder existed were all force replaces.
    Strategy::ForceReplace
}

impl Validate for Intent {
    /// Bounds only: what the remediator decides from an intent (which workload kinds an owner patch may
    /// change, whether an approved intent still agrees with its verdict) it checks where it acts, and
    /// ends the intent with the reason.
    fn validate(&self) -> Result<(), Invalid> {
        if self.schema != crate::SCHEMA_VERSION {
            return Err(validate::bad(
                "schema",
                format!("{} is not schema {}", self.schema, crate::SCHEMA_VERSION),
            ));
        }
        validate::incident("incident", &self.incident)?;
        self.target.validate()?;
        self.action.validate()?;
        if let Some(workload) = &self.workload {
            workload.validate()?;
        }
        validate::token("lock", &self.lock, 256, true)?;
        validate::text("actor", &self.actor, 512)?;
        if let Some(detail) = &self.detail {
            validate::text("detail", detail, validate::MAX_TEXT_BYTES)?;
        }
        if let Some(by) = &self.approved_by {
            validate::text("approved_by", by, 512)?;
        }
        if let Some(verdict) = &self.verdict {
            verdict.validate()?;
        }
        Ok(())
    }
}

/// Decodes a stored intent: its size, then its shape, then its bounds.
pub fn decode(value: &[u8]) -> Result<Intent, Invalid> {
    if value.len() > MAX_INTENT_BYTES {
        return Err(Invalid::Oversized(value.len()));
    }
    let intent: Intent = crate::decode(value)?;
    intent.validate()?;
    Ok(intent)
}
