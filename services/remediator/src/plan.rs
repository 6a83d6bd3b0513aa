//! The plan: everything decided about a verdict before anything changes, in one pure function.
//!
//! The remediator's shell reads the cluster (the live pod, its owner, the owner's revision history, the
//! intent of a fix KubeSent made to the same target before) and hands what it read to [`plan`], which
//! applies the gate, the bounds, the human-revert and escalation markers, the action ladder, GitOps and the
//! template check, in that order, and returns either the intent to carry out or a typed [`Refusal`]. The
//! message is a request: every bound comes from what was read. The guardrails (budget, cooldown, breaker,
//! kill switch) and the lock are shared state in KV; the shell takes them after the plan.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use kubesent_common::revisions::History;
use kubesent_proto::{self as proto, Action, IncidentId, OutcomeResult, Strategy, Verdict};

use crate::{
    bounds,
    gate::{self, Decision, Policy},
    intent::{self, Intent, Phase},
    ladder::{self, Owner, Plan},
    replace, undo,
};

/// What the shell read from the cluster and from KubeSent's own records for one verdict.
#[derive(Debug, Clone, Copy)]
pub struct Observed<'a> {
    /// The live pod the verdict names (`None`: it is gone).
    pub live: Option<&'a Pod>,
    /// Its controller, resolved from the pod's owner references.
    pub owner: &'a Owner,
    /// The owner's revision history (read for rollbacks of a workload only; see [`needs_history`]).
    pub history: Option<&'a History>,
    /// A fix KubeSent made to the same target before (named by the target's [`fix_marker`]).
    pub previous_fix: Option<&'a PreviousFix>,
}

/// A fix KubeSent made before, as its intent records it.
#[derive(Debug, Clone, PartialEq)]
pub struct PreviousFix {
    /// Its incident.
    pub incident: IncidentId,
    /// How it ended (`None`: still under way).
    pub result: Option<OutcomeResult>,
}

/// The remediator's own settings the plan depends on.
#[derive(Debug, Clone, Copy)]
pub struct Settings<'a> {
    /// The safety gate's policy.
    pub policy: &'a Policy,
    /// Whether every action waits for a human's approval.
    pub approval_required: bool,
    /// This replica's identity (the intent's actor).
    pub identity: &'a str,
}

/// An action within bounds, ready for the guardrails, the lock and the executor.
#[derive(Debug, Clone)]
pub struct Planned {
    /// The intent to write before anything changes.
    pub intent: Intent,
    /// The target in words (`Deployment web`, `pod web-1`).
    pub what: String,
    /// The guardrails' key of the workload (`shop/Deployment/web`, `shop/Pod/web-1`).
    pub workload_key: String,
}

/// Why a verdict ends without a change, and with which result.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Refusal {
    /// The gate only suggests (dry run, confidence, policy).
    #[error("{0}")]
    Suggested(String),
    /// The gate found the target gone, replaced or healthy.
    #[error("{0}")]
    Stale(String),
    /// The verdict carries no action; the detail is its root cause.
    #[error("{0}")]
    DiagnosisOnly(String),
    /// The gate refused.
    #[error("{0}")]
    Denied(String),
    /// The pod's controller no longer exists (it is being deleted, or orphaned).
    #[error("the pod's controller {kind} {name} no longer exists")]
    OwnerGone {
        /// Controller kind.
        kind: String,
        /// Controller name.
        name: String,
    },
    /// The action is outside what the cluster vouches for.
    #[error("{0}")]
    OutOfBounds(String),
    /// A human reverted an earlier change of KubeSent's to this container.
    #[error(
        "a human reverted KubeSent's change to container {container} (incident {incident}); further changes are only suggested"
    )]
    RevertedByHuman {
        /// The container.
        container: String,
        /// The incident whose change was reverted.
        incident: String,
    },
    /// KubeSent changed this target before and it did not heal.
    #[error(
        "KubeSent already changed this for incident {0} and it did not heal; escalated to a human instead of trying again"
    )]
    PreviousFixIneffective(IncidentId),
    /// No rung of the ladder applies the action to this target.
    #[error(transparent)]
    NoRung(#[from] ladder::NoRung),
    /// The target is managed by a GitOps tool: the change belongs in Git.
    #[error("{what} is managed by {tool}: change it in Git ({action}); KubeSent only suggests")]
    GitOps {
        /// The target in words.
        what: String,
        /// The tool.
        tool: String,
        /// The action, as JSON.
        action: String,
    },
    /// The owner's template no longer holds what the verdict was made from.
    #[error(transparent)]
    TemplateMoved(ladder::Mismatch),
}

impl Refusal {
    /// The outcome this refusal is recorded as.
    pub fn result(&self) -> OutcomeResult {
        match self {
            Self::Suggested(_) | Self::RevertedByHuman { .. } | Self::GitOps { .. } => {
                OutcomeResult::Suggested
            }
            Self::Stale(_) | Self::OwnerGone { .. } | Self::TemplateMoved(_) => OutcomeResult::Stale,
            Self::DiagnosisOnly(_) => OutcomeResult::DiagnosisOnly,
            Self::Denied(_) | Self::OutOfBounds(_) | Self::PreviousFixIneffective(_) | Self::NoRung(_) => {
                OutcomeResult::Denied
            }
        }
    }
}

/// The gate alone: the shell asks it first, so a verdict it ends costs no further reads.
pub fn gate(
    verdict: &Verdict,
    live: Option<&Pod>,
    policy: &Policy,
    now: jiff::Timestamp,
) -> Result<(), Refusal> {
    match gate::decide(verdict, live, policy, now) {
        Decision::Apply => Ok(()),
        Decision::Suggest(detail) => Err(Refusal::Suggested(detail)),
        Decision::Stale(detail) => Err(Refusal::Stale(detail)),
        Decision::DiagnosisOnly => Err(Refusal::DiagnosisOnly(verdict.root_cause.clone())),
        Decision::Deny(detail) => Err(Refusal::Denied(detail)),
    }
}

/// Whether [`plan`] needs the owner's revision history for this action and owner.
pub fn needs_history(action: &Action, owner: &Owner) -> bool {
    matches!(
        (action, owner),
        (
            Action::RollbackImage { .. } | Action::RollbackRevision { .. } | Action::PauseRollout { .. },
            Owner::Workload(_)
        )
    )
}

/// The incident of the fix KubeSent last made to the target (the owner for a workload, else the pod),
/// from the marker annotation it leaves.
pub fn fix_marker(pod: &Pod, owner: &Owner) -> Option<IncidentId> {
    annotations_of_target(pod, owner).get(replace::INCIDENT_ANNOTATION).cloned().map(IncidentId)
}

fn annotations_of_target(pod: &Pod, owner: &Owner) -> BTreeMap<String, String> {
    match owner {
        Owner::Workload(w) => w.metadata_maps().1,
        _ => pod.metadata.annotations.clone().unwrap_or_default(),
    }
}

/// Decides what to do with `verdict` given what the cluster holds: the intent to carry out, or why not.
pub fn plan(
    verdict: &Verdict,
    seen: Observed<'_>,
    settings: Settings<'_>,
    now: jiff::Timestamp,
) -> Result<Planned, Refusal> {
    gate(verdict, seen.live, settings.policy, now)?;
    let Some(pod) = seen.live else {
        // The gate applies nothing to a pod that is gone; kept total for a caller that skips it.
        return Err(Refusal::Stale("the pod is gone".into()));
    };
    let owner = seen.owner;
    if let Owner::Missing(kind, name) = owner {
        return Err(Refusal::OwnerGone { kind: kind.clone(), name: name.clone() });
    }
    // The bounds come from the cluster, never from the message: a rollback's target from the owner's
    // own revision history.
    bounds::check(verdict, bounds::Observed { pod, owner, history: seen.history })
        .map_err(Refusal::OutOfBounds)?;
    if let Some(container) = verdict.action.container()
        && let Some(reverted) =
            annotations_of_target(pod, owner).get(&format!("{}.{container}", undo::REVERTED_ANNOTATION))
    {
        return Err(Refusal::RevertedByHuman { container: container.to_owned(), incident: reverted.clone() });
    }
    if let Some(previous) = seen.previous_fix
        && previous.result == Some(OutcomeResult::Ineffective)
    {
        return Err(Refusal::PreviousFixIneffective(previous.incident.clone()));
    }
    let rung = ladder::plan(&verdict.action, owner).map_err(Refusal::NoRung)?;
    let (labels, annotations, what) = match owner {
        Owner::Workload(w) => {
            let (l, a) = w.metadata_maps();
            (l, a, format!("{} {}", w.kind.as_str(), w.name))
        }
        _ => (
            pod.metadata.labels.clone().unwrap_or_default(),
            pod.metadata.annotations.clone().unwrap_or_default(),
            format!("pod {}", verdict.pod.name),
        ),
    };
    if let Some(tool) = ladder::gitops_manager(&labels, &annotations) {
        return Err(Refusal::GitOps {
            what,
            tool: tool.to_string(),
            action: serde_json::to_string(&verdict.action).unwrap_or_default(),
        });
    }
    if let Owner::Workload(w) = owner {
        ladder::template_matches(w, &verdict.action).map_err(Refusal::TemplateMoved)?;
    }
    let target = proto::PodRef {
        resource_version: pod.metadata.resource_version.clone().unwrap_or_default(),
        ..verdict.pod.clone()
    };
    let (strategy, workload, lock) = match (&rung, owner) {
        (Plan::PatchOwner, Owner::Workload(w)) => (
            Strategy::OwnerPatch,
            Some(proto::WorkloadRef { kind: w.kind.into(), name: w.name.clone() }),
            intent::workload_lock_key(&verdict.pod.namespace, w.kind.as_str(), &w.name),
        ),
        (Plan::ResizeInPlace, _) => (Strategy::InPlaceResize, None, intent::lock_key(&target)),
        _ => (Strategy::PodPatch, None, intent::lock_key(&target)),
    };
    let replacement = match &verdict.action {
        Action::IncreaseMemory { container, from, to } if strategy == Strategy::InPlaceResize => {
            Some(replace::with_memory_limit(pod, container, *from, *to, &verdict.incident))
        }
        _ => None,
    };
    let old_revision = pod
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get("pod-template-hash").or_else(|| l.get("controller-revision-hash")))
        .cloned();
    let workload_key = match owner {
        Owner::Workload(w) => format!("{}/{}/{}", verdict.pod.namespace, w.kind.as_str(), w.name),
        _ => format!("{}/Pod/{}", verdict.pod.namespace, verdict.pod.name),
    };
    let intent = Intent {
        schema: proto::SCHEMA_VERSION,
        incident: verdict.incident.clone(),
        phase: if settings.approval_required { Phase::AwaitingApproval } else { Phase::Pending },
        strategy,
        target,
        workload,
        lock,
        action: verdict.action.clone(),
        original: Some(replace::sanitized(pod)),
        replacement,
        old_revision,
        approved_by: None,
        baseline_restarts: None,
        actor: settings.identity.to_owned(),
        replacement_uid: None,
        result: None,
        detail: None,
        verdict: Some(Box::new(verdict.clone())),
        updated_at: now,
        applied_at: None,
    };
    Ok(Planned { intent, what, workload_key })
}

#[cfg(test)]
mod tests {
    use kubesent_proto::{
        Failure, FailureKind, IncidentKey, MemoryQuantity, PodRef, VerdictSource, VerdictStatus, WorkloadRef,
    };
    use serde_json::{Value, json};

    use super::*;
    use crate::ladder::{Workload, WorkloadKind};

    fn now() -> jiff::Timestamp {
        "2026-11-30T10:05:00Z".parse().expect("time")
    }

    /// A pod of `owner` whose container `app` (limit 256Mi) was OOM-killed a minute ago.
    fn oom_pod(owner: Option<(&str, &str)>) -> Pod {
        let mut pod = json!({
            "metadata": {"name": "web-7d9-x", "namespace": "shop", "uid": "u1", "resourceVersion": "42",
                "labels": {"pod-template-hash": "7d9"}},
            "spec": {"containers": [{"name": "app", "image": "registry.local/shop/web:2.0.0",
                "resources": {"limits": {"memory": "256Mi"}}}]},
            "status": {"phase": "Running", "containerStatuses": [{"name": "app", "image": "registry.local/shop/web:2.0.0",
                "imageID": "", "ready": false, "restartCount": 3,
                "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                "lastState": {"terminated": {"reason": "OOMKilled", "exitCode": 137,
                    "finishedAt": "2026-11-30T10:04:00Z"}}}]}
        });
        if let Some((kind, name)) = owner {
            pod["metadata"]["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": kind, "name": name, "uid": "o1", "controller": true}]);
        }
        serde_json::from_value(pod).expect("pod")
    }

    fn deployment(template_memory: &str, metadata: Value) -> Owner {
        let mut object = json!({"metadata": {"name": "web", "resourceVersion": "7"},
            "spec": {"template": {"metadata": {}, "spec": {"containers": [{"name": "app",
                "resources": {"limits": {"memory": template_memory}}}]}}}});
        if let (Some(meta), Some(extra)) = (object["metadata"].as_object_mut(), metadata.as_object()) {
            meta.extend(extra.clone());
        }
        Owner::Workload(Workload { kind: WorkloadKind::Deployment, name: "web".into(), object })
    }

    fn raise_memory(workload: (&str, &str), confidence: u8) -> Verdict {
        let key = IncidentKey {
            namespace: "shop".into(),
            workload: WorkloadRef {
                kind: kubesent_proto::WorkloadKind::parse(workload.0).expect("a workload kind"),
                name: workload.1.into(),
            },
            container: "app".into(),
            kind: FailureKind::OomKilled,
            template_hash: "7d9".into(),
        };
        let memory = |q: &str| MemoryQuantity::parse(q).expect("quantity");
        Verdict {
            schema: proto::SCHEMA_VERSION,
            incident: key.fingerprint(),
            key,
            pod: PodRef {
                namespace: "shop".into(),
                name: "web-7d9-x".into(),
                uid: "u1".into(),
                resource_version: "40".into(),
            },
            failure: Failure {
                kind: FailureKind::OomKilled,
                container: "app".into(),
                init_container: false,
                reason: "OOMKilled".into(),
                message: None,
                exit_code: Some(137),
                restart_count: 3,
                image: "registry.local/shop/web:2.0.0".into(),
                failed_at: None,
            },
            status: VerdictStatus::Diagnosed,
            root_cause: "the container needs more than 256Mi".into(),
            action: Action::IncreaseMemory {
                container: "app".into(),
                from: memory("256Mi"),
                to: memory("512Mi"),
            },
            confidence,
            source: VerdictSource::Rules { rule: "oom".into() },
            diagnosed_at: "2026-11-30T10:04:30Z".parse().expect("time"),
            detected_at: None,
            evidence: None,
        }
    }

    /// One row: the verdict, what the shell read, the settings, and how the plan must end.
    struct Row {
        case: &'static str,
        verdict: Verdict,
        live: Option<Pod>,
        owner: Owner,
        previous_fix: Option<PreviousFix>,
        policy: Policy,
        approval_required: bool,
        expect: Result<(Strategy, Phase, &'static str), OutcomeResult>,
    }

    fn bare_row(case: &'static str) -> Row {
        Row {
            case,
            verdict: raise_memory(("Pod", "web-7d9-x"), 95),
            live: Some(oom_pod(None)),
            owner: Owner::Bare,
            previous_fix: None,
            policy: Policy::default(),
            approval_required: false,
            expect: Ok((Strategy::InPlaceResize, Phase::Pending, "shop/Pod/web-7d9-x")),
        }
    }

    fn deployment_row(case: &'static str, owner: Owner) -> Row {
        Row {
            verdict: raise_memory(("Deployment", "web"), 95),
            live: Some(oom_pod(Some(("ReplicaSet", "web-7d9")))),
            owner,
            expect: Ok((Strategy::OwnerPatch, Phase::Pending, "shop/Deployment/web")),
            ..bare_row(case)
        }
    }

    fn rows() -> Vec<Row> {
        let ineffective =
            |result| PreviousFix { incident: IncidentId("inc-before".into()), result: Some(result) };
        vec![
            bare_row("a bare pod's OOM is resized in place"),
            deployment_row("a Deployment's OOM patches its template", deployment("256Mi", json!({}))),
            Row {
                approval_required: true,
                expect: Ok((Strategy::InPlaceResize, Phase::AwaitingApproval, "shop/Pod/web-7d9-x")),
                ..bare_row("with approvals on, the intent waits for a human")
            },
            Row { live: None, expect: Err(OutcomeResult::Stale), ..bare_row("a pod that is gone is stale") },
            Row {
                verdict: Verdict { action: Action::None, ..raise_memory(("Pod", "web-7d9-x"), 95) },
                expect: Err(OutcomeResult::DiagnosisOnly),
                ..bare_row("a verdict without an action is a diagnosis")
            },
            Row {
                verdict: raise_memory(("Pod", "web-7d9-x"), 40),
                expect: Err(OutcomeResult::Denied),
                ..bare_row("low confidence is denied")
            },
            Row {
                policy: Policy { dry_run: true, ..Policy::default() },
                expect: Err(OutcomeResult::Suggested),
                ..bare_row("a dry run only suggests")
            },
            Row {
                owner: Owner::Missing("ReplicaSet".into(), "web-7d9".into()),
                expect: Err(OutcomeResult::Stale),
                ..deployment_row("an owner that is gone is stale", deployment("256Mi", json!({})))
            },
            Row {
                verdict: raise_memory(("Deployment", "api"), 95),
                expect: Err(OutcomeResult::Denied),
                ..deployment_row(
                    "a verdict naming another workload is out of bounds",
                    deployment("256Mi", json!({})),
                )
            },
            Row {
                owner: Owner::Unsupported("DaemonSet".into(), "agent".into()),
                expect: Err(OutcomeResult::Denied),
                ..deployment_row("a DaemonSet is not changed", deployment("256Mi", json!({})))
            },
            Row {
                expect: Err(OutcomeResult::Suggested),
                ..deployment_row(
                    "a human's revert of this container stops further changes",
                    deployment("256Mi", json!({"annotations": {"kubesent.io/reverted.app": "inc-before"}})),
                )
            },
            Row {
                previous_fix: Some(ineffective(OutcomeResult::Ineffective)),
                expect: Err(OutcomeResult::Denied),
                ..bare_row("a fix that did not heal before escalates to a human")
            },
            Row {
                previous_fix: Some(ineffective(OutcomeResult::Applied)),
                ..bare_row("a fix that healed before does not stop a new one")
            },
            Row {
                expect: Err(OutcomeResult::Suggested),
                ..deployment_row(
                    "an Argo CD application only gets a suggestion",
                    deployment("256Mi", json!({"labels": {"argocd.argoproj.io/instance": "shop"}})),
                )
            },
            Row {
                expect: Err(OutcomeResult::Stale),
                ..deployment_row(
                    "a template changed since the failure is stale",
                    deployment("1Gi", json!({})),
                )
            },
            Row {
                expect: Err(OutcomeResult::Denied),
                ..deployment_row(
                    "a paused Deployment is not patched",
                    Owner::Workload(Workload {
                        kind: WorkloadKind::Deployment,
                        name: "web".into(),
                        object: json!({"metadata": {"name": "web"}, "spec": {"paused": true, "template": {"spec": {
                            "containers": [{"name": "app", "resources": {"limits": {"memory": "256Mi"}}}]}}}}),
                    }),
                )
            },
        ]
    }

    #[test]
    fn every_decision_before_a_change_is_made_by_the_plan_from_what_the_cluster_holds() {
        for row in rows() {
            let seen = Observed {
                live: row.live.as_ref(),
                owner: &row.owner,
                history: None,
                previous_fix: row.previous_fix.as_ref(),
            };
            let settings = Settings {
                policy: &row.policy,
                approval_required: row.approval_required,
                identity: "remediator-0",
            };
            let planned = plan(&row.verdict, seen, settings, now());
            match (&planned, row.expect) {
                (Ok(planned), Ok((strategy, phase, workload_key))) => {
                    assert_eq!(planned.intent.strategy, strategy, "{}", row.case);
                    assert_eq!(planned.intent.phase, phase, "{}", row.case);
                    assert_eq!(planned.workload_key, workload_key, "{}", row.case);
                    assert_eq!(planned.intent.actor, "remediator-0", "{}", row.case);
                    assert_eq!(
                        planned.intent.target.resource_version, "42",
                        "the live pod's, not the message's: {}",
                        row.case
                    );
                }
                (Err(refusal), Err(result)) => {
                    assert_eq!(refusal.result(), result, "{}: {refusal}", row.case)
                }
                (got, want) => panic!("{}: planned {got:?}, expected {want:?}", row.case),
            }
        }
    }

    #[test]
    fn the_fix_marker_is_read_from_the_owner_for_a_workload_and_from_the_pod_otherwise() {
        let owner = deployment("256Mi", json!({"annotations": {"kubesent.io/incident": "inc-owner"}}));
        let mut pod = oom_pod(Some(("ReplicaSet", "web-7d9")));
        pod.metadata.annotations = Some(BTreeMap::from([("kubesent.io/incident".into(), "inc-pod".into())]));
        assert_eq!(fix_marker(&pod, &owner), Some(IncidentId("inc-owner".into())));
        assert_eq!(fix_marker(&pod, &Owner::Bare), Some(IncidentId("inc-pod".into())));
    }
}
