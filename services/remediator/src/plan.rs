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
    gate::{self, Policy},
    intent,
    ladder::{self, Owner, Rung},
    preflight,
    refusal::Refusal,
    replace, undo,
};
use kubesent_proto::intent::{Intent, Phase};

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
    /// What bounds a memory raise: the namespace's LimitRanges and quotas, the nodes' room (read for a
    /// raise only; see [`needs_room`]). `None`: not read, not checked.
    pub room: Option<&'a preflight::Room>,
    /// KubeSent's record of the revisions the owner served (read for a revision rollback to a revision
    /// with no ready pods only; see [`needs_served`]).
    pub served: Option<&'a kubesent_proto::served::ServedRevisions>,
}

/// A fix KubeSent made before, as its intent records it.
#[derive(Debug, Clone, PartialEq)]
pub struct PreviousFix {
    /// Its incident.
    pub incident: IncidentId,
    /// How it ended (`None`: still under way).
    pub result: Option<OutcomeResult>,
    /// What it changed.
    pub action: Action,
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
    /// How long a revision must have served healthy, by KubeSent's record, to be rolled back to after a
    /// finished rollout scaled it down.
    pub known_good_after: std::time::Duration,
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

/// Whether [`decide`] needs the owner's revision history for this action and owner.
pub fn needs_history(action: &Action, owner: &Owner) -> bool {
    matches!(
        (action, owner),
        (
            Action::RollbackImage { .. } | Action::RollbackRevision { .. } | Action::PauseRollout { .. },
            Owner::Workload(_)
        )
    )
}

/// Whether [`decide`] needs KubeSent's record of served revisions: a revision rollback whose target, by
/// the history read, has no ready pods.
pub fn needs_served(action: &Action, history: Option<&History>) -> bool {
    matches!(action, Action::RollbackRevision { .. })
        && history.and_then(|h| h.previous.as_ref()).is_some_and(|p| p.ready_replicas <= 0)
}

/// Whether [`decide`] needs the admission and node room for this action (a memory raise).
pub fn needs_room(action: &Action) -> bool {
    matches!(action, Action::IncreaseMemory { .. })
}

/// The incident of the fix KubeSent last made to the target (the owner for a workload, else the pod),
/// from the marker annotation it leaves.
pub fn fix_marker(pod: &Pod, owner: &Owner) -> Option<IncidentId> {
    annotations_of_target(pod, owner).get(replace::INCIDENT_ANNOTATION).cloned().map(IncidentId)
}

fn annotations_of_target<'a>(pod: &'a Pod, owner: &'a Owner) -> &'a BTreeMap<String, String> {
    static NONE: BTreeMap<String, String> = BTreeMap::new();
    match owner {
        Owner::Workload(w) => w.annotations(),
        _ => pod.metadata.annotations.as_ref().unwrap_or(&NONE),
    }
}

/// Decides what to do with `verdict` given what the cluster holds: the intent to carry out, or why not.
pub fn decide(
    verdict: &Verdict,
    seen: Observed<'_>,
    settings: Settings<'_>,
    now: jiff::Timestamp,
) -> Result<Planned, Refusal> {
    gate::check(verdict, seen.live, settings.policy, now)?;
    let Some(pod) = seen.live else {
        // The gate applies nothing to a pod that is gone; kept total for a caller that skips it.
        return Err(gate::Stale::PodGone {
            namespace: verdict.pod.namespace.clone(),
            name: verdict.pod.name.clone(),
            uid: verdict.pod.uid.clone(),
        }
        .into());
    };
    let owner = seen.owner;
    if let Owner::Missing(kind, name) = owner {
        return Err(Refusal::OwnerGone { kind: kind.clone(), name: name.clone() });
    }
    // The bounds come from the cluster, never from the message: a rollback's target from the owner's
    // own revision history.
    let served = bounds::Served { record: seen.served, after: settings.known_good_after, now };
    bounds::check(verdict, bounds::Observed { pod, owner, history: seen.history, served: Some(served) })?;
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
    if let Some(previous) = seen.previous_fix
        && previous.result == Some(OutcomeResult::Overridden)
    {
        return Err(Refusal::OverriddenBefore(previous.incident.clone()));
    }
    // A change that healed and is no longer in the template was put back by someone else since: KubeSent
    // does not write it again (that would be fighting), it only suggests.
    if let (Some(previous), Owner::Workload(workload)) = (seen.previous_fix, owner)
        && previous.result == Some(OutcomeResult::Healed)
        && previous.action.container().is_some()
        && previous.action.container() == verdict.action.container()
        && ladder::overridden(workload, &previous.action).is_some()
    {
        return Err(Refusal::OverriddenBefore(previous.incident.clone()));
    }
    let rung = ladder::rung(&verdict.action, owner)?;
    let (labels, annotations, what) = match owner {
        Owner::Workload(w) => (w.labels().clone(), w.annotations().clone(), w.to_string()),
        _ => (
            pod.metadata.labels.clone().unwrap_or_default(),
            pod.metadata.annotations.clone().unwrap_or_default(),
            format!("pod {}", verdict.pod.name),
        ),
    };
    if let Some(tool) = ladder::gitops_manager(&labels, &annotations) {
        return Err(Refusal::GitOps {
            what,
            tool,
            action: serde_json::to_string(&verdict.action).unwrap_or_default(),
        });
    }
    if let Owner::Workload(w) = owner {
        ladder::template_matches(w, &verdict.action)?;
    }
    let target = proto::PodRef {
        resource_version: pod.metadata.resource_version.clone().unwrap_or_default(),
        ..verdict.pod.clone()
    };
    let (strategy, workload, lock) = match (rung, owner) {
        (Rung::PatchOwner, Owner::Workload(w)) => (
            Strategy::OwnerPatch,
            Some(w.reference()),
            intent::workload_lock_key(&verdict.pod.namespace, w.kind().as_str(), w.name()),
        ),
        (Rung::ResizeInPlace, _) => (Strategy::InPlaceResize, None, intent::lock_key(&target)),
        _ => (Strategy::PodPatch, None, intent::lock_key(&target)),
    };
    // A VPA that acts on the container owns its resources; then admission and the scheduler must be able
    // to take a raise before it is made.
    if let (Action::IncreaseMemory { container, .. }, Some(room), Owner::Workload(w)) =
        (&verdict.action, seen.room, owner)
    {
        preflight::autoscaler_of(room, w.kind().as_str(), w.name(), container)?;
    }
    if let (Action::IncreaseMemory { container, to, .. }, Some(room)) = (&verdict.action, seen.room) {
        let (spec, landing) = match owner {
            Owner::Workload(w) if strategy == Strategy::OwnerPatch => (
                w.template().and_then(|t| t.spec.as_ref()),
                preflight::Landing::NewPods { frees_first: w.removes_a_pod_first(), old_node: None },
            ),
            _ => (
                pod.spec.as_ref(),
                preflight::Landing::InPlace {
                    node: pod.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_default(),
                },
            ),
        };
        if let Some(spec) = spec {
            preflight::check(preflight::Raise { spec, container, to: *to }, &landing, room)?;
        }
    }
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
        Owner::Workload(w) => format!("{}/{}/{}", verdict.pod.namespace, w.kind(), w.name()),
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
    use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
    use kubesent_common::revisions::Revision;
    use kubesent_proto::{
        FailureKind, WorkloadKind, WorkloadRef,
        served::{NotKnownGood, ServedRevision, ServedRevisions},
    };
    use kubesent_testkit::fixtures::{
        self, increase, naming, oom_killed_pod, owned_by, pause, rollback_image, rollback_revision, waiting,
    };
    use serde_json::{Value, json};

    use super::*;
    use crate::{
        bounds::OutOfBounds,
        gate::{Denial, Disagreement, Stale},
        ladder::{Mismatch, NoRung},
        workload::Workload,
    };

    const GOOD: &str = "registry.local/shop/web:1.4.1";
    const BAD: &str = "registry.local/shop/web:1.4.2";

    fn now() -> jiff::Timestamp {
        jiff::Timestamp::now()
    }

    /// The Deployment `web` with `metadata` merged into its metadata and container `app` at
    /// `template_memory`.
    fn deployment_json(template_memory: &str, metadata: Value) -> Value {
        let mut object = json!({"metadata": {"name": "web", "namespace": "shop", "resourceVersion": "7"},
            "spec": {"selector": {"matchLabels": {"app": "web"}}, "template": {"metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "app", "image": BAD,
                    "resources": {"limits": {"memory": template_memory}}}]}}}});
        if let (Some(meta), Some(extra)) = (object["metadata"].as_object_mut(), metadata.as_object()) {
            meta.extend(extra.clone());
        }
        object
    }

    fn deployment(template_memory: &str, metadata: Value) -> Owner {
        typed(deployment_json(template_memory, metadata))
    }

    fn typed(object: Value) -> Owner {
        Owner::Workload(Workload::Deployment(Box::new(
            serde_json::from_value::<Deployment>(object).expect("deployment"),
        )))
    }

    /// Revision 4 (`web-7d9`, the failing pod's, running [`BAD`]) and revision 3 (`web-5c6`, [`GOOD`],
    /// with `ready` ready pods of 2) of Deployment `web`.
    fn history(ready: i32) -> History {
        let revision = |number: i64, name: &str, image: &str, ready_replicas: i32| Revision {
            number,
            name: name.into(),
            hash: name.trim_start_matches("web-").into(),
            images: [("app".to_owned(), image.to_owned())].into(),
            ready_replicas,
            replicas: 2,
            template: Some(
                serde_json::from_value(json!({"metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "app", "image": image,
                        "resources": {"limits": {"memory": "256Mi"}}}]}}))
                .expect("template"),
            ),
            only_template: true,
        };
        History {
            owner: Some(WorkloadRef { kind: WorkloadKind::Deployment, name: "web".into() }),
            current: Some(revision(4, "web-7d9", BAD, 0)),
            previous: Some(revision(3, "web-5c6", GOOD, ready)),
            newest: Some(4),
            ..History::default()
        }
    }

    fn of_deployment(pod: Pod) -> Pod {
        owned_by(pod, "ReplicaSet", "web-7d9")
    }

    /// The pod of Deployment `web` crash-looping on revision 4.
    fn crashing() -> Pod {
        of_deployment(waiting(oom_killed_pod("web-7d9-x", "256Mi"), "CrashLoopBackOff", BAD))
    }

    /// How a row must end.
    enum Expect {
        /// The intent: its strategy, phase and guardrails key.
        Planned(Strategy, Phase, &'static str),
        /// This refusal, recorded with this result.
        Refused(OutcomeResult, fn(&Refusal) -> bool),
    }

    /// One row: the verdict, what the shell read, the settings, and how the plan must end.
    struct Row {
        case: &'static str,
        verdict: Verdict,
        live: Option<Pod>,
        owner: Owner,
        history: Option<History>,
        previous_fix: Option<PreviousFix>,
        room: Option<preflight::Room>,
        served: Option<ServedRevisions>,
        policy: Policy,
        approval_required: bool,
        expect: Expect,
    }

    impl Row {
        /// The row with the verdict's action replaced by `action`.
        fn with_verdict(mut self, action: Action) -> Self {
            self.verdict.action = action;
            self
        }
    }

    fn bare_row(case: &'static str) -> Row {
        let pod = oom_killed_pod("web-1", "256Mi");
        Row {
            case,
            verdict: fixtures::verdict(&pod, increase(256, 512)),
            live: Some(pod),
            owner: Owner::Bare,
            history: None,
            previous_fix: None,
            room: None,
            served: None,
            policy: Policy::default(),
            approval_required: false,
            expect: Expect::Planned(Strategy::InPlaceResize, Phase::Pending, "shop/Pod/web-1"),
        }
    }

    fn deployment_row(case: &'static str, owner: Owner) -> Row {
        let pod = of_deployment(oom_killed_pod("web-7d9-x", "256Mi"));
        Row {
            verdict: fixtures::verdict(&pod, increase(256, 512)),
            live: Some(pod),
            owner,
            expect: Expect::Planned(Strategy::OwnerPatch, Phase::Pending, "shop/Deployment/web"),
            ..bare_row(case)
        }
    }

    /// A row for a revision-level action on the crash-looping pod of Deployment `web`.
    fn rollout_row(case: &'static str, action: Action, ready_before: i32) -> Row {
        let pod = crashing();
        Row {
            verdict: fixtures::verdict(&pod, action),
            live: Some(pod),
            history: Some(history(ready_before)),
            ..deployment_row(case, deployment("256Mi", json!({})))
        }
    }

    /// A revision rollback of the crash-looping pod of Deployment `web` (uid `uid-web`) after its rollout
    /// finished: revision 3 (`web-5c6`) scaled to zero, KubeSent's record of it as given.
    fn finished_rollout_row(case: &'static str, served: Option<ServedRevisions>) -> Row {
        let mut finished = history(0);
        finished.owner_uid = "uid-web".into();
        if let Some(previous) = finished.previous.as_mut() {
            previous.replicas = 0;
        }
        Row {
            history: Some(finished),
            served,
            ..rollout_row(case, rollback_revision((4, "web-7d9"), (3, "web-5c6")), 0)
        }
    }

    /// KubeSent's record that revision 3 (`web-5c6`, hash `hash`) of Deployment `uid` served 2/2 healthy
    /// from `hours_ago` hours ago for `minutes` minutes.
    fn served(uid: &str, hash: &str, hours_ago: i64, minutes: i64) -> ServedRevisions {
        let since = now() - jiff::SignedDuration::from_hours(hours_ago);
        let until = since + jiff::SignedDuration::from_mins(minutes);
        let mut record = ServedRevisions::new(
            "shop",
            WorkloadRef { kind: WorkloadKind::Deployment, name: "web".into() },
            uid,
        );
        record.record(
            uid,
            ServedRevision {
                name: "web-5c6".into(),
                hash: hash.into(),
                replicas: 2,
                healthy_since: since,
                known_good_at: since.min(until),
                until: Some(until),
            },
        );
        record
    }

    /// A row for an image rollback of the pod of Deployment `web` that cannot pull [`BAD`].
    fn pull_row(case: &'static str, to: &str) -> Row {
        let pod = of_deployment(waiting(oom_killed_pod("web-7d9-x", "256Mi"), "ErrImagePull", BAD));
        Row {
            verdict: fixtures::verdict(&pod, rollback_image(BAD, to)),
            live: Some(pod),
            history: Some(history(2)),
            ..deployment_row(case, deployment("256Mi", json!({})))
        }
    }

    fn refused(result: OutcomeResult, variant: fn(&Refusal) -> bool) -> Expect {
        Expect::Refused(result, variant)
    }

    fn rows() -> Vec<Row> {
        let before = |result| PreviousFix {
            incident: IncidentId("inc-before".into()),
            result: Some(result),
            action: increase(128, 256),
        };
        let on_delete = {
            let mut object = deployment_json("256Mi", json!({}));
            object["spec"]["serviceName"] = json!("web");
            object["spec"]["updateStrategy"] = json!({"type": "OnDelete"});
            Owner::Workload(Workload::StatefulSet(Box::new(
                serde_json::from_value::<StatefulSet>(object).expect("statefulset"),
            )))
        };
        let mut paused = deployment_json("256Mi", json!({}));
        paused["spec"]["paused"] = json!(true);
        let full_quota: k8s_openapi::api::core::v1::ResourceQuota = serde_json::from_value(json!({
            "metadata": {"name": "shop-quota"}, "spec": {"hard": {"limits.memory": "1Gi"}},
            "status": {"used": {"limits.memory": "768Mi"}}}))
        .expect("quota");
        let small_nodes = preflight::Room {
            nodes: vec![preflight::NodeRoom {
                name: "sim-node-1".into(),
                allocatable: 1 << 30,
                requested: 900 << 20,
            }],
            ..preflight::Room::default()
        };
        vec![
            Row {
                room: Some(preflight::Room { quotas: vec![full_quota], ..preflight::Room::default() }),
                expect: refused(OutcomeResult::Denied, |r| {
                    matches!(r, Refusal::WouldNotLand(preflight::Blocked::Quota { .. }))
                }),
                ..deployment_row(
                    "a raise the namespace's quota has no room for is denied before it is made",
                    deployment("256Mi", json!({})),
                )
            },
            Row {
                room: Some(small_nodes),
                expect: refused(OutcomeResult::Denied, |r| {
                    matches!(r, Refusal::WouldNotLand(preflight::Blocked::NoNode(_)))
                }),
                ..deployment_row(
                    "a raise no node has room for is denied before it is made",
                    deployment("256Mi", json!({})),
                )
            },
            Row {
                room: Some(preflight::Room::default()),
                ..deployment_row("a raise with nothing in its way is planned", deployment("256Mi", json!({})))
            },
            Row {
                room: Some(preflight::Room {
                    autoscalers: vec![preflight::VerticalAutoscaler {
                        name: "web".into(),
                        target: ("Deployment".into(), "web".into()),
                        update_mode: "Auto".into(),
                        containers: Vec::new(),
                    }],
                    ..preflight::Room::default()
                }),
                expect: refused(OutcomeResult::Suggested, |r| matches!(r, Refusal::ManagedByAutoscaler(_))),
                ..deployment_row(
                    "a container a VPA acts on gets a suggestion naming it",
                    deployment("256Mi", json!({})),
                )
            },
            bare_row("a bare pod's OOM is resized in place"),
            deployment_row("a Deployment's OOM patches its template", deployment("256Mi", json!({}))),
            Row {
                approval_required: true,
                expect: Expect::Planned(Strategy::InPlaceResize, Phase::AwaitingApproval, "shop/Pod/web-1"),
                ..bare_row("with approvals on, the intent waits for a human")
            },
            Row {
                live: None,
                expect: refused(OutcomeResult::Stale, |r| matches!(r, Refusal::Stale(Stale::PodGone { .. }))),
                ..bare_row("a pod that is gone is stale")
            },
            Row {
                verdict: Verdict { action: Action::None, ..bare_row("").verdict },
                expect: refused(OutcomeResult::DiagnosisOnly, |r| matches!(r, Refusal::DiagnosisOnly(_))),
                ..bare_row("a verdict without an action is a diagnosis")
            },
            Row {
                verdict: Verdict { confidence: 40, ..bare_row("").verdict },
                expect: refused(OutcomeResult::Denied, |r| {
                    matches!(r, Refusal::Denied(Denial::LowConfidence { confidence: 40, .. }))
                }),
                ..bare_row("low confidence is denied")
            },
            Row {
                verdict: Verdict { action: increase(128, 512), ..bare_row("").verdict },
                expect: refused(OutcomeResult::Denied, |r| {
                    matches!(r, Refusal::Denied(Denial::Disagrees(Disagreement::LiveLimit { .. })))
                }),
                ..bare_row("a memory increase from another limit than the live one is denied")
            },
            Row {
                policy: Policy { dry_run: true, ..Policy::default() },
                expect: refused(OutcomeResult::Suggested, |r| matches!(r, Refusal::DryRun)),
                ..bare_row("a dry run only suggests")
            },
            Row {
                owner: Owner::Missing("ReplicaSet".into(), "web-7d9".into()),
                expect: refused(OutcomeResult::Stale, |r| matches!(r, Refusal::OwnerGone { .. })),
                ..deployment_row("an owner that is gone is stale", deployment("256Mi", json!({})))
            },
            Row {
                verdict: naming(deployment_row("", Owner::Bare).verdict, WorkloadKind::Deployment, "api"),
                expect: refused(OutcomeResult::Denied, |r| {
                    matches!(r, Refusal::OutOfBounds(OutOfBounds::NotThePodsWorkload { .. }))
                }),
                ..deployment_row(
                    "a verdict naming another workload is out of bounds",
                    deployment("256Mi", json!({})),
                )
            },
            Row {
                expect: refused(OutcomeResult::Denied, |r| {
                    matches!(r, Refusal::OutOfBounds(OutOfBounds::OptedOut(_)))
                }),
                ..deployment_row(
                    "an owner that opted out is out of bounds",
                    deployment("256Mi", json!({"annotations": {"kubesent.io/remediate": "false"}})),
                )
            },
            Row {
                owner: Owner::Unsupported("DaemonSet".into(), "agent".into()),
                expect: refused(OutcomeResult::Denied, |r| {
                    matches!(r, Refusal::NoRung(NoRung::Unsupported { .. }))
                }),
                ..deployment_row("a DaemonSet is not changed", deployment("256Mi", json!({})))
            },
            Row {
                expect: refused(OutcomeResult::Suggested, |r| matches!(r, Refusal::RevertedByHuman { .. })),
                ..deployment_row(
                    "a human's revert of this container stops further changes",
                    deployment("256Mi", json!({"annotations": {"kubesent.io/reverted.app": "inc-before"}})),
                )
            },
            Row {
                previous_fix: Some(before(OutcomeResult::Ineffective)),
                expect: refused(OutcomeResult::Denied, |r| matches!(r, Refusal::PreviousFixIneffective(_))),
                ..bare_row("a fix that did not heal before escalates to a human")
            },
            Row {
                previous_fix: Some(before(OutcomeResult::Applied)),
                ..bare_row("a fix that healed before does not stop a new one")
            },
            Row {
                previous_fix: Some(before(OutcomeResult::Healed)),
                ..deployment_row(
                    "a fix that healed and still holds does not stop a new one",
                    deployment("256Mi", json!({})),
                )
            },
            Row {
                previous_fix: Some(PreviousFix {
                    action: increase(256, 512),
                    ..before(OutcomeResult::Healed)
                }),
                expect: refused(OutcomeResult::Suggested, |r| matches!(r, Refusal::OverriddenBefore(_))),
                ..deployment_row(
                    "a fix that healed and that someone has put back since is not made again",
                    deployment("256Mi", json!({})),
                )
            },
            Row {
                previous_fix: Some(before(OutcomeResult::Overridden)),
                expect: refused(OutcomeResult::Suggested, |r| matches!(r, Refusal::OverriddenBefore(_))),
                ..deployment_row(
                    "after another manager overrode a fix, KubeSent only suggests",
                    deployment("256Mi", json!({})),
                )
            },
            Row {
                expect: refused(OutcomeResult::Suggested, |r| {
                    matches!(r, Refusal::GitOps { tool: "Argo CD", .. })
                }),
                ..deployment_row(
                    "an Argo CD application only gets a suggestion",
                    deployment("256Mi", json!({"labels": {"argocd.argoproj.io/instance": "shop"}})),
                )
            },
            Row {
                expect: refused(OutcomeResult::Stale, |r| {
                    matches!(r, Refusal::TemplateMoved(Mismatch::MemoryMoved { .. }))
                }),
                ..deployment_row(
                    "a template changed since the failure is stale",
                    deployment("1Gi", json!({})),
                )
            },
            Row {
                expect: refused(OutcomeResult::Denied, |r| matches!(r, Refusal::NoRung(NoRung::Paused(_)))),
                ..deployment_row("a paused Deployment is not patched", typed(paused))
            },
            Row {
                verdict: naming(deployment_row("", Owner::Bare).verdict, WorkloadKind::StatefulSet, "web"),
                expect: refused(OutcomeResult::Denied, |r| matches!(r, Refusal::NoRung(NoRung::OnDelete(_)))),
                ..deployment_row("an OnDelete StatefulSet is left to its owner", on_delete)
            },
            pull_row("an image rollback to the serving previous revision patches the template", GOOD),
            Row {
                expect: refused(OutcomeResult::Denied, |r| {
                    matches!(r, Refusal::OutOfBounds(OutOfBounds::NotThePreviousImage { .. }))
                }),
                ..pull_row("an image rollback to any other image is out of bounds", "evil.example/miner:1")
            },
            Row {
                history: None,
                expect: refused(OutcomeResult::Denied, |r| {
                    matches!(r, Refusal::OutOfBounds(OutOfBounds::HistoryNotRead(_)))
                }),
                ..pull_row("an image rollback without the history read is out of bounds", GOOD)
            },
            {
                let pod = waiting(oom_killed_pod("web-1", "256Mi"), "ErrImagePull", BAD);
                Row {
                    verdict: fixtures::verdict(&pod, rollback_image(BAD, GOOD)),
                    live: Some(pod),
                    expect: refused(OutcomeResult::Denied, |r| {
                        matches!(r, Refusal::OutOfBounds(OutOfBounds::NotRecordedOnThePod { .. }))
                    }),
                    ..bare_row(
                        "a bare pod's image rollback to an image KubeSent did not record is out of bounds",
                    )
                }
            },
            Row {
                verdict: fixtures::failing_with(
                    fixtures::verdict(&crashing(), rollback_image(BAD, GOOD)),
                    FailureKind::CrashLoop,
                ),
                expect: refused(OutcomeResult::Denied, |r| {
                    matches!(r, Refusal::Denied(Denial::Disagrees(Disagreement::WrongFailure { .. })))
                }),
                ..rollout_row("an image rollback does not answer a crash loop", Action::None, 2)
            },
            rollout_row(
                "a revision rollback to the serving revision before patches the template",
                rollback_revision((4, "web-7d9"), (3, "web-5c6")),
                2,
            ),
            Row {
                expect: refused(OutcomeResult::Denied, |r| {
                    matches!(r, Refusal::OutOfBounds(OutOfBounds::NotKnownToWork { revision: 3, .. }))
                }),
                ..rollout_row(
                    "a revision rollback to a revision with nothing ready is out of bounds",
                    rollback_revision((4, "web-7d9"), (3, "web-5c6")),
                    0,
                )
            },
            Row {
                expect: refused(OutcomeResult::Denied, |r| {
                    matches!(r, Refusal::OutOfBounds(OutOfBounds::NotTheRevisionBefore { .. }))
                }),
                ..rollout_row(
                    "a revision rollback to an older revision is out of bounds",
                    rollback_revision((4, "web-7d9"), (2, "web-111")),
                    2,
                )
            },
            finished_rollout_row(
                "a revision rollback to a scaled-down revision KubeSent saw serve healthy for hours patches the template",
                Some(served("uid-web", "5c6", 8, 360)),
            ),
            Row {
                expect: refused(
                    OutcomeResult::Suggested,
                    |r| matches!(r, Refusal::OutOfBounds(OutOfBounds::NotProvenGood { why, .. }) if matches!(**why, NotKnownGood::NeverSeen(_))),
                ),
                ..finished_rollout_row(
                    "a revision rollback to a scaled-down revision with no record is only suggested",
                    None,
                )
            },
            Row {
                expect: refused(
                    OutcomeResult::Suggested,
                    |r| matches!(r, Refusal::OutOfBounds(OutOfBounds::NotProvenGood { why, .. }) if matches!(**why, NotKnownGood::TooYoung { .. })),
                ),
                ..finished_rollout_row(
                    "a revision rollback to a revision that served healthy for minutes only is only suggested",
                    Some(served("uid-web", "5c6", 1, 4)),
                )
            },
            Row {
                expect: refused(
                    OutcomeResult::Suggested,
                    |r| matches!(r, Refusal::OutOfBounds(OutOfBounds::NotProvenGood { why, .. }) if matches!(**why, NotKnownGood::OtherHash { .. })),
                ),
                ..finished_rollout_row(
                    "a record naming another hash for the revision proves nothing",
                    Some(served("uid-web", "999", 8, 360)),
                )
            },
            Row {
                expect: refused(
                    OutcomeResult::Suggested,
                    |r| matches!(r, Refusal::OutOfBounds(OutOfBounds::NotProvenGood { why, .. }) if matches!(**why, NotKnownGood::OtherWorkload { .. })),
                ),
                ..finished_rollout_row(
                    "a record of a deleted Deployment of the same name proves nothing",
                    Some(served("uid-old-web", "5c6", 8, 360)),
                )
            },
            Row {
                expect: refused(OutcomeResult::Denied, |r| {
                    matches!(r, Refusal::OutOfBounds(OutOfBounds::NotTheRevisionBefore { .. }))
                }),
                ..finished_rollout_row(
                    "a forged record cannot select any revision but the one just before the failing one",
                    Some(served("uid-web", "5c6", 8, 360)),
                )
            }
            .with_verdict(rollback_revision((4, "web-7d9"), (2, "web-111"))),
            rollout_row("a failing rollout with nothing ready before it is paused", pause((4, "web-7d9")), 0),
            Row {
                expect: refused(OutcomeResult::Denied, |r| {
                    matches!(r, Refusal::OutOfBounds(OutOfBounds::RollBackInstead { .. }))
                }),
                ..rollout_row(
                    "a rollout is not paused while the revision before it serves",
                    pause((4, "web-7d9")),
                    2,
                )
            },
            Row {
                live: Some(waiting(crashing(), "ErrImagePull", BAD)),
                expect: refused(OutcomeResult::Stale, |r| {
                    matches!(r, Refusal::Stale(Stale::Recovered { .. }))
                }),
                ..rollout_row(
                    "a pause for a crash loop the pod no longer shows is stale",
                    pause((4, "web-7d9")),
                    0,
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
                history: row.history.as_ref(),
                previous_fix: row.previous_fix.as_ref(),
                room: row.room.as_ref(),
                served: row.served.as_ref(),
            };
            let settings = Settings {
                policy: &row.policy,
                approval_required: row.approval_required,
                identity: "remediator-0",
                known_good_after: std::time::Duration::from_secs(600),
            };
            let planned = decide(&row.verdict, seen, settings, now());
            match (&planned, row.expect) {
                (Ok(planned), Expect::Planned(strategy, phase, workload_key)) => {
                    assert_eq!(planned.intent.strategy, strategy, "{}", row.case);
                    assert_eq!(planned.intent.phase, phase, "{}", row.case);
                    assert_eq!(planned.workload_key, workload_key, "{}", row.case);
                    assert_eq!(planned.intent.actor, "remediator-0", "{}", row.case);
                    assert_eq!(planned.intent.action, row.verdict.action, "{}", row.case);
                    assert_eq!(
                        planned.intent.target.resource_version, "42",
                        "the live pod's, not the message's: {}",
                        row.case
                    );
                }
                (Err(refusal), Expect::Refused(result, variant)) => {
                    assert!(variant(refusal), "{}: refused for another reason: {refusal:?}", row.case);
                    assert_eq!(refusal.result(), result, "{}: {refusal}", row.case);
                }
                (got, _) => panic!("{}: planned {got:?}", row.case),
            }
        }
    }

    #[test]
    fn the_fix_marker_is_read_from_the_owner_for_a_workload_and_from_the_pod_otherwise() {
        let owner = deployment("256Mi", json!({"annotations": {"kubesent.io/incident": "inc-owner"}}));
        let mut pod = of_deployment(oom_killed_pod("web-7d9-x", "256Mi"));
        pod.metadata.annotations = Some(BTreeMap::from([("kubesent.io/incident".into(), "inc-pod".into())]));
        assert_eq!(fix_marker(&pod, &owner), Some(IncidentId("inc-owner".into())));
        assert_eq!(fix_marker(&pod, &Owner::Bare), Some(IncidentId("inc-pod".into())));
    }

    #[test]
    fn only_rollbacks_and_pauses_of_a_workload_read_its_history() {
        let owner = deployment("256Mi", json!({}));
        assert!(needs_history(&rollback_image(BAD, GOOD), &owner));
        assert!(needs_history(&rollback_revision((4, "a"), (3, "b")), &owner));
        assert!(needs_history(&pause((4, "a")), &owner));
        assert!(!needs_history(&increase(128, 256), &owner));
        assert!(!needs_history(&rollback_image(BAD, GOOD), &Owner::Bare));
    }
}
