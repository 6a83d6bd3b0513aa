//! Reversing a change KubeSent made (`kubesent undo <incident>`).
//!
//! The intent of the incident says what was changed and how; the value from before is its action's `from`
//! (also recorded on the object). A change is reversed only while the object still holds KubeSent's value:
//! if someone changed it since, that change wins and nothing is done. A reversed change leaves the
//! annotation `kubesent.io/reverted.<container>` behind, and KubeSent only suggests further changes to that
//! container, so it never fights the human who reverted it.

use k8s_openapi::api::core::v1::Pod;
use kube::{Api, api::Patch};
use kubesent_common::revisions::{Revision, same_template};
use kubesent_proto::{Action, IncidentId, Strategy, WorkloadKind, WorkloadRef};
use serde_json::{Value, json};

use crate::{
    intent::{IntentError, Intents},
    ladder::{self, ORIGINAL_IMAGE_ANNOTATION, ORIGINAL_REVISION_ANNOTATION},
    replace::{INCIDENT_ANNOTATION, ORIGINAL_MEMORY_ANNOTATION},
    workload::{Workload, WorkloadApi, WorkloadError, WorkloadPatch},
};
use kubesent_proto::intent::{Intent, Phase};

pub use kubesent_common::marks::REVERTED_ANNOTATION;

/// Why a change was not reversed.
#[derive(Debug, thiserror::Error)]
pub enum UndoError {
    /// No intent exists for the incident.
    #[error("no remediation is recorded for incident {0}")]
    Unknown(IncidentId),
    /// The remediation cannot be reversed this way.
    #[error("{0}")]
    NotReversible(String),
    /// The object no longer holds KubeSent's value.
    #[error("{0}")]
    Changed(String),
    /// The API refused or failed.
    #[error("kubernetes: {0}")]
    Kube(#[from] kube::Error),
    /// The workload could not be read or written.
    #[error(transparent)]
    Workload(#[from] WorkloadError),
    /// The intents bucket failed.
    #[error(transparent)]
    Intent(#[from] IntentError),
}

/// A reversed change.
#[derive(Debug, Clone, PartialEq)]
pub struct Undone {
    /// What was changed back (`Deployment web`, `pod web-1`).
    pub target: String,
    /// The change, in words.
    pub detail: String,
    /// The action that reversed it.
    pub reverse: Action,
}

/// The action that puts back what `action` changed.
pub fn reverse(action: &Action) -> Option<Action> {
    match action {
        Action::IncreaseMemory { container, from, to } => {
            Some(Action::IncreaseMemory { container: container.clone(), from: *to, to: *from })
        }
        Action::RollbackImage { container, from, to } => {
            Some(Action::RollbackImage { container: container.clone(), from: to.clone(), to: from.clone() })
        }
        Action::RollbackRevision { container, from, to } => Some(Action::RollbackRevision {
            container: container.clone(),
            from: to.clone(),
            to: from.clone(),
        }),
        // Lifted, not reversed into another action: the outcome names the pause.
        Action::PauseRollout { .. } => Some(action.clone()),
        Action::None => None,
    }
}

/// The value `action` sets, as the template or pod shows it, and the annotation that recorded the original.
fn value_and_annotation(action: &Action) -> Option<(String, String, String)> {
    match action {
        Action::IncreaseMemory { container, to, .. } => {
            Some((container.clone(), to.to_string(), format!("{ORIGINAL_MEMORY_ANNOTATION}.{container}")))
        }
        Action::RollbackImage { container, to, .. } => {
            Some((container.clone(), to.clone(), format!("{ORIGINAL_IMAGE_ANNOTATION}.{container}")))
        }
        Action::RollbackRevision { container, to, .. } => {
            Some((container.clone(), to.to_string(), ORIGINAL_REVISION_ANNOTATION.to_owned()))
        }
        Action::PauseRollout { container, .. } => {
            Some((container.clone(), "paused".to_owned(), ladder::PAUSED_REASON_ANNOTATION.to_owned()))
        }
        Action::None => None,
    }
}

/// The annotations that drop KubeSent's records of a change and mark `container` as reverted by a human.
fn reverted_annotations(records: &[&str], container: &str, incident: &IncidentId) -> Value {
    let mut annotations: serde_json::Map<String, Value> =
        records.iter().map(|r| ((*r).to_owned(), Value::Null)).collect();
    annotations.insert(INCIDENT_ANNOTATION.into(), Value::Null);
    annotations.insert(format!("{REVERTED_ANNOTATION}.{container}"), json!(incident.to_string()));
    annotations.insert(
        kubesent_common::marks::CHANGE_CAUSE_ANNOTATION.into(),
        json!(format!("KubeSent's change for incident {incident} taken back")),
    );
    Value::Object(annotations)
}

/// The strategic merge patch that reverses `action` on a workload's template, dropping the
/// original-value and incident annotations and marking the container as reverted. Refused when the
/// template no longer holds KubeSent's value.
pub fn undo_owner_patch(
    workload: &Workload,
    action: &Action,
    incident: &IncidentId,
) -> Result<WorkloadPatch, UndoError> {
    let back =
        reverse(action).ok_or_else(|| UndoError::NotReversible("the remediation had no action".into()))?;
    let (container, kubesent_value, original_annotation) =
        value_and_annotation(action).ok_or_else(|| UndoError::NotReversible("nothing to reverse".into()))?;
    let current = workload
        .template_container(&container)
        .ok_or_else(|| UndoError::Changed(format!("the template has no container {container} any more")))?;
    let holds = match action {
        Action::IncreaseMemory { to, .. } => {
            ladder::memory_limit_of(current).is_some_and(|limit| limit == *to)
        }
        Action::RollbackImage { to, .. } => current.image.as_deref() == Some(to.as_str()),
        Action::RollbackRevision { .. } | Action::PauseRollout { .. } | Action::None => false,
    };
    if !holds {
        return Err(UndoError::Changed(format!(
            "{workload} no longer holds KubeSent's value {kubesent_value} for {container}: it was changed since, and that change is kept"
        )));
    }
    let mut patch = ladder::owner_patch(workload, &back, incident)
        .map_err(|e| UndoError::NotReversible(e.to_string()))?;
    patch.body_mut()["metadata"]["annotations"] =
        reverted_annotations(&[&original_annotation], &container, incident);
    mark_undone(patch.body_mut(), incident);
    Ok(patch)
}

/// Marks the template with the incident undone ([`kubesent_common::marks::UNDONE_ANNOTATION`]), so the
/// workload's next failure is a new incident.
fn mark_undone(patch: &mut Value, incident: &IncidentId) {
    patch["spec"]["template"]["metadata"]["annotations"][kubesent_common::marks::UNDONE_ANNOTATION] =
        json!(incident.to_string());
}

/// The merge patch that reverses a revision rollback: the template goes forward again to the revision it
/// was rolled back from, while the workload still holds the revision KubeSent rolled it back to (else a
/// later change is kept); the records are dropped and the container marked as reverted.
pub fn undo_revision_patch(
    workload: &Workload,
    history: &[Revision],
    action: &Action,
    incident: &IncidentId,
) -> Result<WorkloadPatch, UndoError> {
    let Action::RollbackRevision { container, from, to } = action else {
        return Err(UndoError::NotReversible("not a revision rollback".into()));
    };
    let template_of = |name: &str| history.iter().find(|r| r.name == name).and_then(|r| r.template.as_ref());
    let restored = template_of(&to.name).ok_or_else(|| {
        UndoError::Changed(format!(
            "{workload} no longer has {to} in its history: it was changed since, and that change is kept"
        ))
    })?;
    let current = workload.template().filter(|current| same_template(current, restored)).ok_or_else(|| {
        UndoError::Changed(format!(
            "{workload} no longer runs the template of {to} KubeSent restored: it was changed since, and that change is kept"
        ))
    })?;
    let forward = template_of(&from.name).ok_or_else(|| {
        UndoError::NotReversible(format!("{workload} no longer has {from} in its history to go forward to"))
    })?;
    let mut patch = json!({
        "metadata": {"annotations": reverted_annotations(&[ORIGINAL_REVISION_ANNOTATION], container, incident)},
        "spec": {"template": ladder::template_diff(current, forward)}
    });
    mark_undone(&mut patch, incident);
    Ok(WorkloadPatch::Merge(patch))
}

/// The merge patch that lifts a pause KubeSent put on a rollout, while the Deployment is still paused by
/// this incident (a human who resumed it already wins); the records are dropped and the container
/// marked as reverted.
pub fn undo_pause_patch(
    workload: &Workload,
    action: &Action,
    incident: &IncidentId,
) -> Result<WorkloadPatch, UndoError> {
    let Action::PauseRollout { container, .. } = action else {
        return Err(UndoError::NotReversible("not a paused rollout".into()));
    };
    if !ladder::already_applied(workload, action, incident) {
        return Err(UndoError::Changed(format!(
            "{workload} is no longer paused by KubeSent for {incident}: it was changed since, and that change is kept"
        )));
    }
    Ok(WorkloadPatch::Merge(json!({
        "metadata": {"annotations": reverted_annotations(&[ladder::PAUSED_REASON_ANNOTATION], container, incident)},
        "spec": {"paused": false}
    })))
}

/// What a finished remediation's undo changes: the workload whose template KubeSent patched, or the
/// pod it changed in place.
#[derive(Debug, Clone, PartialEq)]
pub enum UndoTarget {
    /// A Deployment's or StatefulSet's template (or pause).
    Workload(WorkloadRef),
    /// A pod patched or resized in place.
    Pod,
}

/// Decides from the intent alone whether its remediation can be reversed, and what that changes: it
/// must be finished, have an action, and have changed a Deployment, a StatefulSet or a pod in place. A
/// workload of any other kind is refused (the intent was forged or corrupted; nothing is read).
pub fn undo_target(intent: &Intent) -> Result<UndoTarget, UndoError> {
    let incident = &intent.incident;
    if intent.phase != Phase::Done {
        return Err(UndoError::NotReversible(format!(
            "the remediation of {incident} is still in progress ({:?}); wait for its outcome",
            intent.phase
        )));
    }
    if reverse(&intent.action).is_none() {
        return Err(UndoError::NotReversible(format!("incident {incident} had no action to reverse")));
    }
    match intent.strategy {
        Strategy::OwnerPatch => match &intent.workload {
            None => Err(UndoError::NotReversible("the intent names no workload".into())),
            Some(workload)
                if matches!(workload.kind, WorkloadKind::Deployment | WorkloadKind::StatefulSet) =>
            {
                Ok(UndoTarget::Workload(workload.clone()))
            }
            Some(workload) => Err(UndoError::NotReversible(format!(
                "the intent of {incident} names {workload}: KubeSent changes only Deployments and StatefulSets, so it has nothing of that to reverse"
            ))),
        },
        Strategy::PodPatch | Strategy::InPlaceResize => Ok(UndoTarget::Pod),
        Strategy::ForceReplace => Err(UndoError::NotReversible(format!(
            "pod {} was replaced; KubeSent does not replace it again on its own. The original pod is in the intent (nats kv get {} {incident})",
            intent.target.name,
            kubesent_proto::INTENTS_BUCKET
        ))),
    }
}

/// Reverses the remediation of `incident`: the owner's template for an owner patch, the pod's image for a
/// pod patch, the pod's memory (in place) for a resize. A force replace is not reversed automatically: the
/// original pod is in the intent, and replacing a running pod again is a human's call.
pub async fn undo(
    kube: &kube::Client,
    intents: &Intents,
    incident: &IncidentId,
) -> Result<Undone, UndoError> {
    let (intent, _) = intents.get(incident).await?.ok_or_else(|| UndoError::Unknown(incident.clone()))?;
    let target = undo_target(&intent)?;
    let back = reverse(&intent.action)
        .ok_or_else(|| UndoError::NotReversible(format!("incident {incident} had no action to reverse")))?;
    let namespace = intent.target.namespace.clone();
    match target {
        UndoTarget::Workload(reference) => {
            let api = WorkloadApi::new(kube.clone(), &namespace);
            let workload = api.get(&reference).await?;
            let patch = match &intent.action {
                Action::PauseRollout { .. } => undo_pause_patch(&workload, &intent.action, incident)?,
                Action::RollbackRevision { .. } => {
                    let history = api.revisions(&workload).await?;
                    undo_revision_patch(&workload, &history, &intent.action, incident)?
                }
                _ => undo_owner_patch(&workload, &intent.action, incident)?,
            };
            api.patch(&workload, patch).await?;
            Ok(Undone {
                target: workload.to_string(),
                detail: format!("template restored: {}", describe(&back)),
                reverse: back,
            })
        }
        UndoTarget::Pod => {
            let params = crate::patch_params();
            let pods: Api<Pod> = Api::namespaced(kube.clone(), &namespace);
            let pod = pods
                .get_opt(&intent.target.name)
                .await?
                .filter(|p| p.metadata.uid.as_deref() == Some(intent.target.uid.as_str()))
                .ok_or_else(|| {
                    UndoError::Changed(format!("pod {} is gone or was replaced", intent.target.name))
                })?;
            let (container, kubesent_value, original_annotation) = value_and_annotation(&intent.action)
                .ok_or_else(|| UndoError::NotReversible("nothing to reverse".into()))?;
            let current = kubesent_common::pod::container(&pod, &container)
                .ok_or_else(|| UndoError::Changed(format!("pod has no container {container}")))?;
            let holds = match &intent.action {
                Action::IncreaseMemory { to, .. } => {
                    ladder::memory_limit_of(current).is_some_and(|l| l == *to)
                }
                Action::RollbackImage { to, .. } => current.image.as_deref() == Some(to.as_str()),
                Action::RollbackRevision { .. } | Action::PauseRollout { .. } | Action::None => false,
            };
            if !holds {
                return Err(UndoError::Changed(format!(
                    "pod {} no longer holds KubeSent's value {kubesent_value} for {container}; it is kept",
                    intent.target.name
                )));
            }
            let mut annotations = reverted_annotations(&[&original_annotation], &container, incident);
            // The pod's next failure is a new incident (its template hash reads this mark).
            annotations[kubesent_common::marks::UNDONE_ANNOTATION] = json!(incident.to_string());
            match &back {
                Action::RollbackImage { to, .. } => {
                    let patch = json!({"metadata": {"annotations": annotations},
                        "spec": {"containers": [{"name": container, "image": to}]}});
                    pods.patch(&intent.target.name, &params, &Patch::Strategic(&patch)).await?;
                }
                Action::IncreaseMemory { from, to, .. } => {
                    // A memory decrease in place needs Kubernetes 1.35 (or restartPolicy RestartContainer);
                    // the API's refusal is reported as it is.
                    let patch = ladder::resize_patch(&pod, &container, *from, *to)
                        .map_err(|e| UndoError::NotReversible(e.to_string()))?;
                    pods.patch_resize(&intent.target.name, &params, &Patch::Strategic(&patch)).await?;
                    let record = json!({"metadata": {"annotations": annotations}});
                    pods.patch(&intent.target.name, &params, &Patch::Merge(&record)).await?;
                }
                Action::RollbackRevision { .. } | Action::PauseRollout { .. } | Action::None => {}
            }
            Ok(Undone {
                target: format!("pod {}", intent.target.name),
                detail: format!("pod restored: {}", describe(&back)),
                reverse: back,
            })
        }
    }
}

/// An action in words (`memory limit of app 256Mi -> 128Mi`).
pub fn describe(action: &Action) -> String {
    match action {
        Action::IncreaseMemory { container, from, to } => {
            format!("memory limit of {container} {from} -> {to}")
        }
        Action::RollbackImage { container, from, to } => format!("image of {container} {from} -> {to}"),
        Action::RollbackRevision { from, to, .. } => format!("{from} -> {to}"),
        Action::PauseRollout { revision, .. } => format!("rollout paused at {revision}"),
        Action::None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::apps::v1::Deployment;
    use kubesent_proto::MemoryQuantity;

    use super::*;

    fn deployment(limit: &str, image: &str) -> Workload {
        let object = json!({"metadata": {"name": "web", "resourceVersion": "77", "annotations": {
                "kubesent.io/original-memory-limit.app": "128Mi", "kubesent.io/incident": "inc-1"}},
            "spec": {"selector": {}, "template": {"spec": {"containers": [{"name": "app", "image": image,
                "resources": {"limits": {"memory": limit}, "requests": {"memory": limit}}}]}}}});
        Workload::Deployment(Box::new(serde_json::from_value::<Deployment>(object).expect("deployment")))
    }

    fn raised() -> Action {
        Action::IncreaseMemory {
            container: "app".into(),
            from: MemoryQuantity::from_mib(128),
            to: MemoryQuantity::from_mib(256),
        }
    }

    #[test]
    fn reversing_swaps_what_was_changed() {
        assert_eq!(
            reverse(&raised()),
            Some(Action::IncreaseMemory {
                container: "app".into(),
                from: MemoryQuantity::from_mib(256),
                to: MemoryQuantity::from_mib(128)
            })
        );
        assert_eq!(reverse(&Action::None), None);
    }

    #[test]
    fn the_undo_patch_restores_the_template_clears_the_record_and_marks_the_container() {
        let patch = undo_owner_patch(&deployment("256Mi", "web:2"), &raised(), &IncidentId("inc-1".into()))
            .expect("reversible");
        assert!(matches!(patch, WorkloadPatch::Strategic(_)));
        let patch = patch.body();
        let container = &patch["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(container["resources"]["limits"]["memory"], "128Mi");
        assert_eq!(container["resources"]["requests"]["memory"], "128Mi", "an equal request moves back too");
        let annotations = &patch["metadata"]["annotations"];
        assert_eq!(annotations["kubesent.io/original-memory-limit.app"], Value::Null);
        assert_eq!(annotations["kubesent.io/incident"], Value::Null);
        assert_eq!(annotations["kubesent.io/reverted.app"], "inc-1");
    }

    #[test]
    fn a_template_changed_since_is_not_reverted() {
        let error = undo_owner_patch(&deployment("512Mi", "web:2"), &raised(), &IncidentId("inc-1".into()))
            .expect_err("someone changed it");
        assert!(matches!(error, UndoError::Changed(ref why) if why.contains("changed since")), "{error}");
    }

    fn finished_intent(strategy: Strategy, workload: Option<WorkloadRef>) -> Intent {
        let pod = kubesent_proto::PodRef {
            namespace: "shop".into(),
            name: "web-7d9-x".into(),
            uid: "u1".into(),
            resource_version: "1".into(),
        };
        Intent {
            schema: kubesent_proto::SCHEMA_VERSION,
            incident: IncidentId("inc-1".into()),
            phase: Phase::Done,
            strategy,
            target: pod.clone(),
            workload,
            lock: crate::intent::lock_key(&pod),
            action: raised(),
            original: None,
            replacement: None,
            old_revision: None,
            approved_by: None,
            baseline_restarts: None,
            actor: "remediator-0".into(),
            replacement_uid: None,
            result: Some(kubesent_proto::OutcomeResult::Healed),
            detail: None,
            verdict: None,
            updated_at: jiff::Timestamp::now(),
            applied_at: None,
        }
    }

    #[test]
    fn an_undo_of_a_workload_kind_kubesent_never_changes_is_refused_without_reading_it() {
        let deployment = WorkloadRef { kind: WorkloadKind::Deployment, name: "web".into() };
        assert_eq!(
            undo_target(&finished_intent(Strategy::OwnerPatch, Some(deployment.clone())))
                .expect("reversible"),
            UndoTarget::Workload(deployment)
        );
        // Before the typed workload, an unknown kind fell through to "Deployment of the same name".
        for kind in [WorkloadKind::DaemonSet, WorkloadKind::Job, WorkloadKind::ReplicaSet, WorkloadKind::Pod]
        {
            let forged =
                finished_intent(Strategy::OwnerPatch, Some(WorkloadRef { kind, name: "web".into() }));
            assert!(
                matches!(undo_target(&forged), Err(UndoError::NotReversible(ref why)) if why.contains("only Deployments and StatefulSets")),
                "{kind}"
            );
        }
        assert!(matches!(
            undo_target(&finished_intent(Strategy::OwnerPatch, None)),
            Err(UndoError::NotReversible(_))
        ));
        assert_eq!(
            undo_target(&finished_intent(Strategy::InPlaceResize, None)).expect("in place"),
            UndoTarget::Pod
        );
        assert!(matches!(
            undo_target(&finished_intent(Strategy::ForceReplace, None)),
            Err(UndoError::NotReversible(_))
        ));
        let mut running = finished_intent(Strategy::InPlaceResize, None);
        running.phase = Phase::Applied;
        assert!(
            matches!(undo_target(&running), Err(UndoError::NotReversible(ref why)) if why.contains("in progress"))
        );
    }
}
