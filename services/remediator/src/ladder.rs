//! The action ladder, as pure functions: which way a typed action is applied to a target, the patches
//! it sends, and how the target's progress reads during verification.
//!
//! - A pod controlled by a Deployment (through its ReplicaSet) or a StatefulSet: patch the owner's pod
//!   template, guarded by its resourceVersion; the rollout replaces the pods.
//! - A bare pod and a memory increase: resize it in place through `pods/resize`; where the server does not
//!   serve it or the node cannot fit it, force-replace it.
//! - A bare pod and an image rollback: patch the pod's image (an update the apiserver allows).
//! - Anything else (a bare ReplicaSet, a DaemonSet, a Job) is refused: its template change would not
//!   replace the failing pods, or it is not KubeSent's to change.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, ContainerStatus, Pod, PodTemplateSpec};
use kubesent_common::revisions::{Revision, same_template};
use kubesent_proto::{Action, FailureKind, IncidentId, MemoryQuantity, RevisionRef, WorkloadRef};
use serde_json::{Value, json};

use crate::{
    replace::INCIDENT_ANNOTATION,
    workload::{Workload, WorkloadPatch},
};

pub use kubesent_common::marks::ORIGINAL_IMAGE_ANNOTATION;

/// What owns a failing pod.
#[derive(Debug, Clone, PartialEq)]
pub enum Owner {
    /// Nothing: a bare pod.
    Bare,
    /// A workload changed through its template.
    Workload(Workload),
    /// A controller KubeSent does not change (kind, name).
    Unsupported(String, String),
    /// The controller named by the pod (or its ReplicaSet) no longer exists (kind, name).
    Missing(String, String),
}

/// The rung of the ladder an action is applied by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rung {
    /// Patch the owner's pod template.
    PatchOwner,
    /// Resize the bare pod in place (force replace when the server or node cannot).
    ResizeInPlace,
    /// Patch the bare pod's image.
    PatchPodImage,
}

/// Why no rung of the ladder applies an action to a target.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoRung {
    /// The verdict carries no action.
    #[error("the verdict has no action")]
    NoAction,
    /// The pod's controller is gone.
    #[error("the pod's controller {kind} {name} no longer exists")]
    OwnerGone {
        /// Its kind.
        kind: String,
        /// Its name.
        name: String,
    },
    /// A controller KubeSent does not change.
    #[error(
        "the pod is controlled by {kind} {name}; KubeSent changes Deployments, StatefulSets and bare pods only"
    )]
    Unsupported {
        /// Its kind.
        kind: String,
        /// Its name.
        name: String,
    },
    /// The workload is paused: a template change would not roll out.
    #[error("{0} is paused: a template change would not roll out until someone resumes it")]
    Paused(WorkloadRef),
    /// A bare pod has no revisions to roll back.
    #[error("a bare pod has no owner with revisions: only a Deployment or a StatefulSet is rolled back")]
    NoRevisions,
    /// The workload replaces its pods only when someone deletes them.
    #[error(
        "{0} updates its pods only when someone deletes them (OnDelete); KubeSent leaves that to its owner"
    )]
    OnDelete(WorkloadRef),
}

/// Why a template or a pod does not hold what an action changes from, or cannot take the change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Mismatch {
    /// The action names a container the template does not have.
    #[error("{workload} has no container {container}")]
    NoTemplateContainer {
        /// The workload.
        workload: WorkloadRef,
        /// The container.
        container: String,
    },
    /// The pod has no such container.
    #[error("no container {0}")]
    NoPodContainer(String),
    /// Someone changed the memory limit since the failure.
    #[error("the template's memory limit is now {current}, not {from}")]
    MemoryMoved {
        /// What it is now.
        current: MemoryQuantity,
        /// What the action changes from.
        from: MemoryQuantity,
    },
    /// The template has no memory limit to raise.
    #[error("the template has no memory limit")]
    NoMemoryLimit,
    /// Someone changed the image since the failure.
    #[error("the template's image is now {current}, not {from}")]
    ImageMoved {
        /// What it is now.
        current: String,
        /// What the action changes from.
        from: String,
    },
    /// The workload's template is no longer the revision the rollback goes from.
    #[error("{workload} no longer runs {from}: its template changed since the failure")]
    RevisionMoved {
        /// The workload.
        workload: WorkloadRef,
        /// The revision the rollback goes from.
        from: RevisionRef,
    },
    /// A revision the rollback needs is not in the workload's history.
    #[error("{workload} has no {revision} in its history")]
    RevisionGone {
        /// The workload.
        workload: WorkloadRef,
        /// The missing revision.
        revision: RevisionRef,
    },
    /// The action changes nothing.
    #[error("nothing to apply")]
    NothingToApply,
}

/// Chooses the rung of the ladder, or says why the action cannot be applied.
pub fn rung(action: &Action, owner: &Owner) -> Result<Rung, NoRung> {
    match (action, owner) {
        (Action::None, _) => Err(NoRung::NoAction),
        (_, Owner::Missing(kind, name)) => Err(NoRung::OwnerGone { kind: kind.clone(), name: name.clone() }),
        (_, Owner::Unsupported(kind, name)) => {
            Err(NoRung::Unsupported { kind: kind.clone(), name: name.clone() })
        }
        (_, Owner::Workload(w)) if w.paused() => Err(NoRung::Paused(w.reference())),
        (_, Owner::Workload(w)) if w.updates_on_delete() => Err(NoRung::OnDelete(w.reference())),
        (_, Owner::Workload(_)) => Ok(Rung::PatchOwner),
        (Action::IncreaseMemory { .. }, Owner::Bare) => Ok(Rung::ResizeInPlace),
        (Action::RollbackImage { .. }, Owner::Bare) => Ok(Rung::PatchPodImage),
        (Action::RollbackRevision { .. } | Action::PauseRollout { .. }, Owner::Bare) => {
            Err(NoRung::NoRevisions)
        }
    }
}

/// The tool that manages an object declaratively, if any: its changes would be reverted, so KubeSent only
/// suggests them.
pub fn gitops_manager(
    labels: &BTreeMap<String, String>,
    annotations: &BTreeMap<String, String>,
) -> Option<&'static str> {
    if labels.contains_key("argocd.argoproj.io/instance")
        || annotations.contains_key("argocd.argoproj.io/tracking-id")
    {
        return Some("Argo CD");
    }
    if labels
        .keys()
        .any(|k| k.starts_with("kustomize.toolkit.fluxcd.io/") || k.starts_with("helm.toolkit.fluxcd.io/"))
    {
        return Some("Flux");
    }
    None
}

fn memory_of(
    values: Option<&BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>>,
) -> Option<MemoryQuantity> {
    values?.get("memory").and_then(|q| MemoryQuantity::parse(&q.0).ok())
}

/// A container's memory limit.
pub fn memory_limit_of(container: &Container) -> Option<MemoryQuantity> {
    memory_of(container.resources.as_ref().and_then(|r| r.limits.as_ref()))
}

/// The resources of `container` after raising its memory limit to `to` (a request equal to the old
/// limit moves with it, so a Guaranteed pod stays Guaranteed).
fn raised_resources(container: &Container, from: MemoryQuantity, to: MemoryQuantity) -> Value {
    let request_moves =
        memory_of(container.resources.as_ref().and_then(|r| r.requests.as_ref())) == Some(from);
    let mut resources = json!({"limits": {"memory": to.to_string()}});
    if request_moves {
        resources["requests"] = json!({"memory": to.to_string()});
    }
    resources
}

/// Checks that the owner's template still has the value the action changes from.
pub fn template_matches(workload: &Workload, action: &Action) -> Result<(), Mismatch> {
    let container = template_container_for(workload, action)?;
    match action {
        Action::IncreaseMemory { from, to, .. } => match memory_limit_of(container) {
            Some(current) if current == *from || current == *to => Ok(()),
            Some(current) => Err(Mismatch::MemoryMoved { current, from: *from }),
            None => Err(Mismatch::NoMemoryLimit),
        },
        Action::RollbackImage { from, to, .. } => match container.image.as_deref() {
            Some(image) if image == from || image == to => Ok(()),
            other => Err(Mismatch::ImageMoved {
                current: other.unwrap_or_default().to_owned(),
                from: from.clone(),
            }),
        },
        // Its template is held to the revision it goes from by [`revision_patch`] and [`pause_patch`],
        // which the executor computes from the revisions it reads.
        Action::RollbackRevision { .. } | Action::PauseRollout { .. } => Ok(()),
        Action::None => Err(Mismatch::NothingToApply),
    }
}

fn template_container_for<'a>(workload: &'a Workload, action: &Action) -> Result<&'a Container, Mismatch> {
    let name = action.container().unwrap_or_default();
    workload.template_container(name).ok_or_else(|| Mismatch::NoTemplateContainer {
        workload: workload.reference(),
        container: name.to_owned(),
    })
}

/// Whether the owner's template already holds `action`'s new value, written for `incident` (a takeover
/// that re-runs the step after a crash between the patch and its record then writes nothing again).
pub fn already_applied(workload: &Workload, action: &Action, incident: &IncidentId) -> bool {
    let ours = workload.annotation(INCIDENT_ANNOTATION) == Some(incident.as_str());
    let name = action.container().unwrap_or_default();
    let holds = workload.template_container(name).is_some_and(|container| match action {
        Action::IncreaseMemory { to, .. } => memory_limit_of(container) == Some(*to),
        Action::RollbackImage { to, .. } => container.image.as_deref() == Some(to.as_str()),
        // Its template is compared with the revision by [`revision_patch`].
        Action::RollbackRevision { .. } => true,
        Action::PauseRollout { .. } => workload.paused(),
        Action::None => false,
    });
    ours && holds
}

/// What another writer changed of KubeSent's change to `workload` (a memory limit or an image in the
/// template), in words, if the template no longer holds it; `None` while it does, and for actions whose
/// change is not one field (a revision rollback, a pause).
pub fn overridden(workload: &Workload, action: &Action) -> Option<String> {
    let name = action.container()?;
    let Some(container) = workload.template_container(name) else {
        return Some(format!("container {name} is no longer in the template"));
    };
    match action {
        Action::IncreaseMemory { to, .. } => {
            let now = memory_limit_of(container);
            (now != Some(*to)).then(|| match now {
                Some(now) => format!("the memory limit of {name} is {now} again, not {to}"),
                None => format!("the memory limit of {name} was removed"),
            })
        }
        Action::RollbackImage { to, .. } => {
            let now = container.image.clone().unwrap_or_default();
            (now != *to).then(|| format!("the image of {name} is {now}, not {to}"))
        }
        _ => None,
    }
}

/// The field manager that last set the field of `action` (a container's memory limit or image) in
/// `workload`'s template, other than `ours`, from its `managedFields`.
pub fn field_manager(workload: &Workload, action: &Action, ours: &str) -> Option<String> {
    let container = action.container()?;
    let leaf: &[&str] = match action {
        Action::IncreaseMemory { .. } => &kubesent_common::marks::MEMORY_LIMIT_FIELD,
        Action::RollbackImage { .. } => &["f:image"],
        _ => return None,
    };
    kubesent_common::marks::template_field_managers(workload.managed_fields(), container, leaf)
        .find(|manager| *manager != ours)
        .map(str::to_owned)
}

/// Annotation recording the revision KubeSent rolled a workload back from (its ReplicaSet or
/// ControllerRevision name), so `kubesent undo` can go forward again.
pub const ORIGINAL_REVISION_ANNOTATION: &str = "kubesent.io/original-revision";

/// Annotation carrying why KubeSent paused a rollout.
pub const PAUSED_REASON_ANNOTATION: &str = "kubesent.io/paused-reason";

/// The revision `revision` names in `history`, and its template.
fn template_in<'a>(
    workload: &Workload,
    history: &'a [Revision],
    revision: &RevisionRef,
) -> Result<&'a PodTemplateSpec, Mismatch> {
    history
        .iter()
        .find(|r| r.name == revision.name)
        .and_then(|r| r.template.as_ref())
        .ok_or_else(|| Mismatch::RevisionGone { workload: workload.reference(), revision: revision.clone() })
}

/// Holds `workload`'s template to revision `from`'s: someone who changed it since wins.
fn still_runs(workload: &Workload, failing: &PodTemplateSpec, from: &RevisionRef) -> Result<(), Mismatch> {
    match workload.template() {
        Some(current) if same_template(current, failing) => Ok(()),
        _ => Err(Mismatch::RevisionMoved { workload: workload.reference(), from: from.clone() }),
    }
}

/// The merge patch that pauses `workload`'s rollout at `revision`, recording the incident and why.
/// `Ok(None)`: this incident's pause is in place. Refused when the template is no longer the failing
/// revision's (someone changed it since).
pub fn pause_patch(
    workload: &Workload,
    history: &[Revision],
    action: &Action,
    incident: &IncidentId,
    reason: &str,
) -> Result<Option<WorkloadPatch>, Mismatch> {
    let Action::PauseRollout { revision, .. } = action else { return Err(Mismatch::NothingToApply) };
    if already_applied(workload, action, incident) {
        return Ok(None);
    }
    still_runs(workload, template_in(workload, history, revision)?, revision)?;
    let reason = kubesent_proto::validate::clip_text_to(reason, 1024);
    Ok(Some(WorkloadPatch::Merge(json!({
        "metadata": {"annotations": {INCIDENT_ANNOTATION: incident.to_string(), PAUSED_REASON_ANNOTATION: reason}},
        "spec": {"paused": true}
    }))))
}

/// The JSON merge patch (RFC 7386) that turns `from` into `to`: changed members set, removed members
/// nulled, lists replaced whole.
pub fn merge_diff(from: &Value, to: &Value) -> Value {
    match (from, to) {
        (Value::Object(old), Value::Object(new)) => {
            let mut patch = serde_json::Map::new();
            for (key, value) in new {
                match old.get(key) {
                    Some(before) if before == value => {}
                    Some(before @ Value::Object(_)) if value.is_object() => {
                        patch.insert(key.clone(), merge_diff(before, value));
                    }
                    _ => {
                        patch.insert(key.clone(), value.clone());
                    }
                }
            }
            for key in old.keys().filter(|k| !new.contains_key(*k)) {
                patch.insert(key.clone(), Value::Null);
            }
            Value::Object(patch)
        }
        _ => to.clone(),
    }
}

/// The merge patch of a workload's template that turns `current` into `target`.
pub fn template_diff(current: &PodTemplateSpec, target: &PodTemplateSpec) -> Value {
    // Both serialise (they were read as JSON); an empty object changes nothing if one ever did not.
    let json = |t: &PodTemplateSpec| serde_json::to_value(t).unwrap_or_else(|_| json!({}));
    merge_diff(&json(current), &json(target))
}

/// The merge patch that rolls `workload` back from revision `from` to revision `to` of its own
/// `history` (as `kubectl rollout undo --to-revision` does: the template becomes the revision's),
/// recording the incident and the revision rolled back from. `Ok(None)`: this incident's rollback is
/// already in place. Refused when the template no longer is revision `from`'s or revision `to` is gone.
pub fn revision_patch(
    workload: &Workload,
    history: &[Revision],
    action: &Action,
    incident: &IncidentId,
) -> Result<Option<WorkloadPatch>, Mismatch> {
    let Action::RollbackRevision { from, to, .. } = action else { return Err(Mismatch::NothingToApply) };
    let target = template_in(workload, history, to)?;
    let current = workload.template();
    if current.is_some_and(|c| same_template(c, target)) && already_applied(workload, action, incident) {
        return Ok(None);
    }
    still_runs(workload, template_in(workload, history, from)?, from)?;
    let current = current.cloned().unwrap_or_default();
    Ok(Some(WorkloadPatch::Merge(json!({
        "metadata": {"annotations": {ORIGINAL_REVISION_ANNOTATION: from.name, INCIDENT_ANNOTATION: incident.to_string(),
            kubesent_common::marks::CHANGE_CAUSE_ANNOTATION: format!("KubeSent, incident {incident}: rolled back {} -> {}", from.name, to.name)}},
        "spec": {"template": template_diff(&current, target)}
    }))))
}

/// Whether `pod` already carries KubeSent's record for `incident`: the incident and the original value
/// of `container` under `annotation`.
pub fn pod_has_record(
    pod: &Pod,
    annotation: &str,
    container: &str,
    original: &str,
    incident: &IncidentId,
) -> bool {
    pod.metadata.annotations.as_ref().is_some_and(|a| {
        a.get(INCIDENT_ANNOTATION).map(String::as_str) == Some(incident.as_str())
            && a.get(&format!("{annotation}.{container}")).map(String::as_str) == Some(original)
    })
}

/// The strategic merge patch of the owner: the template change, and the original value and the incident
/// as annotations (so the change can be reversed).
pub fn owner_patch(
    workload: &Workload,
    action: &Action,
    incident: &IncidentId,
) -> Result<WorkloadPatch, Mismatch> {
    let name = action.container().unwrap_or_default();
    let container = template_container_for(workload, action)?;
    let (change, annotation, original) = match action {
        Action::IncreaseMemory { from, to, .. } => (
            json!({"name": name, "resources": raised_resources(container, *from, *to)}),
            format!("{}.{name}", crate::replace::ORIGINAL_MEMORY_ANNOTATION),
            from.to_string(),
        ),
        Action::RollbackImage { from, to, .. } => {
            (json!({"name": name, "image": to}), format!("{ORIGINAL_IMAGE_ANNOTATION}.{name}"), from.clone())
        }
        Action::RollbackRevision { .. } | Action::PauseRollout { .. } | Action::None => {
            return Err(Mismatch::NothingToApply);
        }
    };
    let mut annotations = serde_json::Map::new();
    // The first original is kept if KubeSent already changed this container.
    if workload.annotation(&annotation).is_none() {
        annotations.insert(annotation, json!(original));
    }
    annotations.insert(INCIDENT_ANNOTATION.into(), json!(incident.to_string()));
    annotations.insert(
        kubesent_common::marks::CHANGE_CAUSE_ANNOTATION.into(),
        json!(format!("KubeSent, incident {incident}: {}", crate::undo::describe(action))),
    );
    Ok(WorkloadPatch::Strategic(json!({
        "metadata": {"annotations": annotations},
        "spec": {"template": {"spec": {"containers": [change]}}}
    })))
}

/// The `pods/resize` patch raising `container`'s memory limit.
pub fn resize_patch(
    pod: &Pod,
    container: &str,
    from: MemoryQuantity,
    to: MemoryQuantity,
) -> Result<Value, Mismatch> {
    let spec = kubesent_common::pod::container(pod, container)
        .ok_or_else(|| Mismatch::NoPodContainer(container.to_owned()))?;
    Ok(json!({"spec": {"containers": [{"name": container, "resources": raised_resources(spec, from, to)}]}}))
}

/// How a target looks while it is verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// Every pod runs and is ready.
    Healthy,
    /// Not there yet.
    Waiting,
    /// It failed again (why).
    Failing(String),
    /// What the cluster runs is not what was written: admission changed or refused it (why).
    NotLanded(String),
    /// The change made the target worse than before: its new pods cannot be scheduled, or fail in
    /// another way than the failure the change answered (why).
    Worse(String),
}

/// The failure a container status shows now, by the detector's kinds (`None`: no failure).
pub fn failure_kind(cs: &ContainerStatus) -> Option<FailureKind> {
    let state = cs.state.as_ref()?;
    if let Some(reason) = state.waiting.as_ref().and_then(|w| w.reason.as_deref()) {
        let kind = match reason {
            "ErrImagePull" => FailureKind::ErrImagePull,
            "ImagePullBackOff" => FailureKind::ImagePullBackOff,
            "InvalidImageName" => FailureKind::InvalidImageName,
            "CreateContainerConfigError" => FailureKind::CreateContainerConfigError,
            "CreateContainerError" | "RunContainerError" => FailureKind::StartError,
            // Backing off: the termination before says why.
            "CrashLoopBackOff" => {
                return cs.last_state.as_ref()?.terminated.as_ref().map(termination_kind);
            }
            _ => return None,
        };
        return Some(kind);
    }
    state.terminated.as_ref().filter(|t| t.exit_code != 0).map(termination_kind)
}

fn termination_kind(t: &k8s_openapi::api::core::v1::ContainerStateTerminated) -> FailureKind {
    match (t.reason.as_deref(), t.exit_code) {
        (Some("OOMKilled"), _) => FailureKind::OomKilled,
        (Some("StartError" | "ContainerCannotRun"), _) | (_, 128) => FailureKind::StartError,
        (_, 137) => FailureKind::Killed,
        _ => FailureKind::CrashLoop,
    }
}

/// The scheduler's message when `pod` fits no node (`PodScheduled=False`, reason `Unschedulable`).
pub fn unschedulable(pod: &Pod) -> Option<String> {
    pod.status.as_ref()?.conditions.as_ref()?.iter().find_map(|c| {
        (c.type_ == "PodScheduled" && c.status == "False" && c.reason.as_deref() == Some("Unschedulable"))
            .then(|| c.message.clone().unwrap_or_else(|| "Unschedulable".to_owned()))
    })
}

fn status_of<'a>(pod: &'a Pod, container: &str) -> Option<&'a ContainerStatus> {
    pod.status.as_ref()?.container_statuses.as_ref()?.iter().find(|c| c.name == container)
}

/// One container's progress. `baseline_restarts` is the restart count a pod changed in place had when
/// the fix took effect: the failure it answers (a terminated or backing-off container at that count) is
/// not held against it, and one more restart (leaving the back-off) is expected. A pod created with the
/// fix (`None`) must run without any failure or restart.
pub fn container_progress(pod: &Pod, container: &str, baseline_restarts: Option<i32>) -> Progress {
    let Some(cs) = status_of(pod, container) else { return Progress::Waiting };
    let state = cs.state.clone().unwrap_or_default();
    let before_the_fix = baseline_restarts.is_some_and(|b| cs.restart_count <= b);
    if let Some(t) = state.terminated.as_ref().filter(|t| t.exit_code != 0) {
        if before_the_fix {
            return Progress::Waiting;
        }
        return Progress::Failing(t.reason.clone().unwrap_or_else(|| format!("exit code {}", t.exit_code)));
    }
    if let Some(reason) = state.waiting.as_ref().and_then(|w| w.reason.clone())
        && matches!(
            reason.as_str(),
            "ErrImagePull" | "ImagePullBackOff" | "InvalidImageName" | "CreateContainerConfigError"
        )
    {
        return Progress::Failing(reason);
    }
    let allowed = baseline_restarts.map_or(0, |b| b.saturating_add(1));
    if cs.restart_count > allowed {
        let last = cs
            .last_state
            .as_ref()
            .and_then(|s| s.terminated.as_ref())
            .and_then(|t| t.reason.clone())
            .unwrap_or_default();
        return Progress::Failing(format!("restarted again ({last})"));
    }
    if state.running.is_some() && cs.ready { Progress::Healthy } else { Progress::Waiting }
}

/// The progress of a rollout: the pods not created from the failing template (`old`) must all be
/// healthy, and there must be `desired` of them. A new pod the scheduler cannot place, or one that fails
/// otherwise than `answered` (the failure the change was made for), means the change made things worse.
pub fn rollout_progress(
    pods: &[Pod],
    container: &str,
    is_old: impl Fn(&Pod) -> bool,
    desired: i32,
    answered: Option<FailureKind>,
) -> Progress {
    let new: Vec<&Pod> =
        pods.iter().filter(|p| !is_old(p) && p.metadata.deletion_timestamp.is_none()).collect();
    for pod in &new {
        let name = pod.metadata.name.clone().unwrap_or_default();
        if let Some(message) = unschedulable(pod) {
            return Progress::Worse(format!("its new pod {name} cannot be scheduled: {message}"));
        }
        if let Progress::Failing(why) = container_progress(pod, container, None) {
            let now = status_of(pod, container).and_then(failure_kind);
            if let (Some(answered), Some(now)) = (answered, now)
                && answered.family() != now.family()
            {
                return Progress::Worse(format!(
                    "its new pod {name} fails in a new way: {} ({why}), where the incident was {}",
                    now.as_str(),
                    answered.as_str()
                ));
            }
            return Progress::Failing(format!("pod {name}: {why}"));
        }
    }
    let healthy = new.iter().filter(|p| container_progress(p, container, None) == Progress::Healthy).count();
    let old_left = pods.iter().filter(|p| is_old(p) && p.metadata.deletion_timestamp.is_none()).count();
    if i32::try_from(healthy).unwrap_or(i32::MAX) >= desired.max(1) && old_left == 0 {
        Progress::Healthy
    } else {
        Progress::Waiting
    }
}

/// Whether the new pods run what KubeSent wrote into the template: a new pod (not of the failing
/// revision, not terminating) whose container has another memory limit or image than `action` set was
/// changed by admission (a mutating webhook, a LimitRange) on its way in. `Err` says which and how.
pub fn landed(pods: &[Pod], action: &Action, is_old: impl Fn(&Pod) -> bool) -> Result<(), String> {
    let Some(name) = action.container() else { return Ok(()) };
    for pod in pods.iter().filter(|p| !is_old(p) && p.metadata.deletion_timestamp.is_none()) {
        let Some(container) = pod.spec.as_ref().and_then(|s| s.containers.iter().find(|c| c.name == name))
        else {
            continue;
        };
        let pod_name = pod.metadata.name.clone().unwrap_or_default();
        match action {
            Action::IncreaseMemory { to, .. } if memory_limit_of(container) != Some(*to) => {
                let runs = memory_limit_of(container)
                    .map_or_else(|| "no memory limit".to_owned(), |m| format!("memory limit {m}"));
                return Err(format!(
                    "pod {pod_name} was admitted with {runs} for {name}, not the {to} KubeSent wrote into the template: a mutating admission webhook or a LimitRange changed it"
                ));
            }
            Action::RollbackImage { to, .. } if container.image.as_deref() != Some(to.as_str()) => {
                return Err(format!(
                    "pod {pod_name} was admitted with image {} for {name}, not {to}: a mutating admission webhook changed it",
                    container.image.clone().unwrap_or_default()
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

/// Who may have changed `pod` on its way in, in words: the LimitRanger, when its annotation on the pod
/// says what it set, and every mutating webhook whose rules take pod creations and whose object selector
/// matches the pod (a namespace selector is not read: such a webhook is named with that caveat). The pod
/// itself keeps no record of which webhook changed it.
pub fn who_admitted(
    pod: &Pod,
    webhooks: &[k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration],
) -> Vec<String> {
    let mut found = Vec::new();
    if let Some(set) = pod.metadata.annotations.as_ref().and_then(|a| a.get("kubernetes.io/limit-ranger")) {
        found.push(format!("a LimitRange ({set})"));
    }
    let labels = pod.metadata.labels.clone().unwrap_or_default();
    let listed = |list: &Option<Vec<String>>, wanted: &[&str]| {
        list.iter().flatten().any(|v| v == "*" || wanted.contains(&v.as_str()))
    };
    for configuration in webhooks {
        for webhook in configuration.webhooks.iter().flatten() {
            let takes_pods = webhook.rules.iter().flatten().any(|rule| {
                listed(&rule.operations, &["CREATE"])
                    && listed(&rule.api_groups, &[""])
                    && listed(&rule.resources, &["pods", "*/*"])
            });
            let selected = webhook
                .object_selector
                .as_ref()
                .is_none_or(|s| kubesent_common::selector::matches(s, &labels));
            if takes_pods && selected {
                let caveat = webhook
                    .namespace_selector
                    .as_ref()
                    .filter(|s| s.match_labels.is_some() || s.match_expressions.is_some())
                    .map_or("", |_| " if its namespace selector takes this namespace");
                found.push(format!(
                    "mutating webhook {} (MutatingWebhookConfiguration {}){caveat}",
                    webhook.name,
                    configuration.metadata.name.clone().unwrap_or_default()
                ));
            }
        }
    }
    found
}

/// Why the workload's controller cannot roll the change out, as its status says: a `ReplicaFailure`
/// (pods refused by admission or quota: `FailedCreate`) or a rollout past its progress deadline, reported
/// at or after `since` (the change; a condition older than it is about something else).
pub fn rollout_blocked(workload: &Workload, since: Option<jiff::Timestamp>) -> Option<String> {
    let conditions = match workload {
        Workload::Deployment(d) => d.status.as_ref().and_then(|s| s.conditions.clone()).unwrap_or_default(),
        Workload::StatefulSet(_) => return None,
    };
    let recent = |c: &k8s_openapi::api::apps::v1::DeploymentCondition| {
        let at = c.last_update_time.as_ref().or(c.last_transition_time.as_ref()).map(|t| t.0);
        match (since, at) {
            // Condition times are whole seconds.
            (Some(since), Some(at)) => at.as_second() >= since.as_second(),
            _ => true,
        }
    };
    conditions.iter().filter(|c| recent(c)).find_map(|c| {
        match (c.type_.as_str(), c.status.as_str(), c.reason.as_deref()) {
            ("ReplicaFailure", "True", _) => {
                Some(format!("its new pods are refused: {}", c.message.clone().unwrap_or_default()))
            }
            ("Progressing", "False", Some("ProgressDeadlineExceeded")) => {
                Some(format!("its rollout stopped: {}", c.message.clone().unwrap_or_default()))
            }
            _ => None,
        }
    })
}

/// The pods a StatefulSet rollout cannot get past: of the failing revision, not terminating, not ready.
/// With `OrderedReady` the controller waits for every pod to be ready before it replaces any, so pods broken
/// by the old template must be deleted after the template is fixed (the documented forced rollback); the
/// controller creates them again from the fixed template.
pub fn stuck_pods(pods: &[Pod], is_old: impl Fn(&Pod) -> bool) -> Vec<&Pod> {
    pods.iter()
        .filter(|p| is_old(p) && p.metadata.deletion_timestamp.is_none())
        .filter(|p| {
            !p.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .collect()
}

/// Why a PodDisruptionBudget of `budgets` that selects `pod` (by `matchLabels`) refuses its eviction now,
/// as the Eviction API would: a ready pod needs `disruptionsAllowed` above zero; an unready one may go
/// while the budget is met (`currentHealthy ≥ desiredHealthy`, the default `IfHealthyBudget`), or always
/// under `AlwaysAllow`.
pub fn budget_refuses(
    pod: &Pod,
    budgets: &[k8s_openapi::api::policy::v1::PodDisruptionBudget],
) -> Option<String> {
    let labels = pod.metadata.labels.clone().unwrap_or_default();
    let ready = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    budgets.iter().find_map(|budget| {
        let spec = budget.spec.as_ref()?;
        // (An empty selector of policy/v1 selects every pod of the namespace.)
        if !kubesent_common::selector::matches(spec.selector.as_ref()?, &labels) {
            return None;
        }
        let status = budget.status.as_ref()?;
        let always = spec.unhealthy_pod_eviction_policy.as_deref() == Some("AlwaysAllow");
        let (allowed_now, healthy, desired) = (
            status.disruptions_allowed.unwrap_or(0),
            status.current_healthy.unwrap_or(0),
            status.desired_healthy.unwrap_or(0),
        );
        let allowed = if ready { allowed_now > 0 } else { always || healthy >= desired };
        (!allowed).then(|| {
            format!(
                "PodDisruptionBudget {} needs {} healthy pods and has {} ({} disruptions allowed)",
                budget.metadata.name.clone().unwrap_or_default(),
                desired,
                healthy,
                allowed_now
            )
        })
    })
}

/// Whether an in-place resize has been actuated, or the node cannot fit it.
pub fn resize_state(pod: &Pod, container: &str, to: MemoryQuantity) -> Result<bool, String> {
    let conditions = pod.status.as_ref().and_then(|s| s.conditions.clone()).unwrap_or_default();
    if let Some(pending) = conditions.iter().find(|c| c.type_ == "PodResizePending" && c.status == "True") {
        if pending.reason.as_deref() == Some("Infeasible") {
            return Err(pending.message.clone().unwrap_or_else(|| "the node cannot fit the new size".into()));
        }
        return Ok(false);
    }
    let in_progress = conditions.iter().any(|c| c.type_ == "PodResizeInProgress" && c.status == "True");
    let actual = status_of(pod, container)
        .and_then(|cs| memory_of(cs.resources.as_ref().and_then(|r| r.limits.as_ref())));
    Ok(!in_progress && actual == Some(to))
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};

    use super::*;

    fn deployment_json(limit: &str, request: &str) -> Value {
        json!({"metadata": {"name": "web", "resourceVersion": "42", "uid": "d1", "annotations": {}},
            "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}},
                "template": {"spec": {"containers": [{"name": "app", "image": "web:2",
                    "resources": {"limits": {"memory": limit}, "requests": {"memory": request, "cpu": "100m"}}}]}}}})
    }

    fn typed(object: Value) -> Workload {
        Workload::Deployment(Box::new(serde_json::from_value::<Deployment>(object).expect("deployment")))
    }

    fn deployment(limit: &str, request: &str) -> Workload {
        typed(deployment_json(limit, request))
    }

    fn increase(from: u64, to: u64) -> Action {
        Action::IncreaseMemory {
            container: "app".into(),
            from: MemoryQuantity::from_mib(from),
            to: MemoryQuantity::from_mib(to),
        }
    }

    #[test]
    fn the_ladder_patches_owners_resizes_bare_pods_and_refuses_other_controllers() {
        let rollback =
            Action::RollbackImage { container: "app".into(), from: "web:2".into(), to: "web:1".into() };
        assert_eq!(
            rung(&increase(128, 256), &Owner::Workload(deployment("128Mi", "64Mi"))),
            Ok(Rung::PatchOwner)
        );
        assert_eq!(rung(&rollback, &Owner::Workload(deployment("128Mi", "64Mi"))), Ok(Rung::PatchOwner));
        assert_eq!(rung(&increase(128, 256), &Owner::Bare), Ok(Rung::ResizeInPlace));
        assert_eq!(rung(&rollback, &Owner::Bare), Ok(Rung::PatchPodImage));
        assert!(matches!(
            rung(&increase(128, 256), &Owner::Unsupported("DaemonSet".into(), "agent".into())),
            Err(NoRung::Unsupported { .. })
        ));
        assert_eq!(rung(&Action::None, &Owner::Bare), Err(NoRung::NoAction));
        let mut paused = deployment_json("128Mi", "64Mi");
        paused["spec"]["paused"] = json!(true);
        assert!(matches!(rung(&increase(128, 256), &Owner::Workload(typed(paused))), Err(NoRung::Paused(_))));
        let mut on_delete = deployment_json("128Mi", "64Mi");
        on_delete["spec"]["serviceName"] = json!("web");
        on_delete["spec"]["updateStrategy"] = json!({"type": "OnDelete"});
        let on_delete = Workload::StatefulSet(Box::new(
            serde_json::from_value::<StatefulSet>(on_delete).expect("statefulset"),
        ));
        assert!(matches!(rung(&increase(128, 256), &Owner::Workload(on_delete)), Err(NoRung::OnDelete(_))));
    }

    #[test]
    fn a_merge_diff_turns_one_template_into_the_other() {
        let from = json!({"metadata": {"labels": {"app": "web"}, "annotations": {"crash": "1"}},
            "spec": {"containers": [{"name": "app", "image": "web:2", "env": [{"name": "MODE"}]}]}});
        let to = json!({"metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "app", "image": "web:1"}]}});
        let patch = merge_diff(&from, &to);
        assert_eq!(
            patch,
            json!({"metadata": {"annotations": null}, "spec": {"containers": [{"name": "app", "image": "web:1"}]}})
        );
        // Applied as RFC 7386 says: members nulled are removed, others set.
        let mut applied = from.clone();
        fn apply(target: &mut Value, patch: &Value) {
            let Some(members) = patch.as_object() else {
                *target = patch.clone();
                return;
            };
            if !target.is_object() {
                *target = json!({});
            }
            for (key, value) in members {
                let object = target.as_object_mut().expect("object");
                if value.is_null() {
                    object.remove(key);
                } else {
                    apply(object.entry(key.clone()).or_insert(Value::Null), value);
                }
            }
        }
        apply(&mut applied, &patch);
        assert_eq!(applied, to);
    }

    fn revision(number: i64, name: &str, template: &Value) -> Revision {
        Revision {
            number,
            name: name.into(),
            hash: name.trim_start_matches("web-").into(),
            images: BTreeMap::new(),
            ready_replicas: 0,
            replicas: 0,
            template: Some(serde_json::from_value(template.clone()).expect("template")),
            only_template: true,
        }
    }

    #[test]
    fn a_revision_rollback_patches_the_template_from_the_history_and_only_from_the_failing_revision() {
        let mut object = deployment_json("128Mi", "64Mi");
        let failing = object["spec"]["template"].clone();
        let mut good = failing.clone();
        good["spec"]["containers"][0]["image"] = json!("web:1");
        let history = vec![revision(1, "web-aaa", &good), revision(2, "web-bbb", &failing)];
        let action = Action::RollbackRevision {
            container: "app".into(),
            from: kubesent_proto::RevisionRef { number: 2, name: "web-bbb".into() },
            to: kubesent_proto::RevisionRef { number: 1, name: "web-aaa".into() },
        };
        let incident = IncidentId("i-1".into());
        let patch = revision_patch(&typed(object.clone()), &history, &action, &incident)
            .expect("patch")
            .expect("some");
        assert!(matches!(patch, WorkloadPatch::Merge(_)));
        let patch = patch.body();
        assert_eq!(patch["metadata"]["annotations"][ORIGINAL_REVISION_ANNOTATION], json!("web-bbb"));
        assert_eq!(
            patch["spec"]["template"],
            json!({"spec": {"containers": [{"image": "web:1", "name": "app",
            "resources": {"limits": {"memory": "128Mi"}, "requests": {"cpu": "100m", "memory": "64Mi"}}}]}})
        );

        // Once applied by this incident, nothing is written again.
        object["spec"]["template"] = good.clone();
        object["metadata"]["annotations"][INCIDENT_ANNOTATION] = json!("i-1");
        assert_eq!(revision_patch(&typed(object.clone()), &history, &action, &incident), Ok(None));
        // Someone moved the template on to something else: refused.
        object["spec"]["template"]["spec"]["containers"][0]["image"] = json!("web:3");
        let workload = typed(object);
        assert!(matches!(
            revision_patch(&workload, &history, &action, &incident),
            Err(Mismatch::RevisionMoved { .. })
        ));
        // The revision to go back to is gone from the history: refused.
        assert!(matches!(
            revision_patch(&workload, &history[1..], &action, &incident),
            Err(Mismatch::RevisionGone { .. })
        ));
    }

    #[test]
    fn only_unready_pods_of_the_failing_revision_are_stuck() {
        let pod = |name: &str, revision: &str, ready: &str, terminating: bool| -> Pod {
            let mut value = json!({"metadata": {"name": name, "labels": {"controller-revision-hash": revision}},
                "status": {"conditions": [{"type": "Ready", "status": ready}]}});
            if terminating {
                value["metadata"]["deletionTimestamp"] = json!("2026-11-25T10:00:00Z");
            }
            serde_json::from_value(value).expect("pod")
        };
        let pods = [
            pod("db-0", "db-old", "False", false),
            pod("db-1", "db-old", "True", false),
            pod("db-2", "db-old", "False", true),
            pod("db-3", "db-new", "False", false),
        ];
        let is_old = |p: &Pod| {
            p.metadata.labels.as_ref().and_then(|l| l.get("controller-revision-hash")).map(String::as_str)
                == Some("db-old")
        };
        let stuck: Vec<_> =
            stuck_pods(&pods, is_old).iter().filter_map(|p| p.metadata.name.clone()).collect();
        assert_eq!(stuck, ["db-0"]);
    }

    #[test]
    fn the_owner_patch_records_the_original_and_moves_an_equal_request() {
        let workload = deployment("128Mi", "128Mi");
        let patch = owner_patch(&workload, &increase(128, 256), &IncidentId("inc-1".into())).expect("patch");
        assert!(matches!(patch, WorkloadPatch::Strategic(_)));
        let patch = patch.body();
        assert_eq!(patch["metadata"]["annotations"]["kubesent.io/original-memory-limit.app"], "128Mi");
        assert_eq!(patch["metadata"]["annotations"]["kubesent.io/incident"], "inc-1");
        let container = &patch["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(
            container["resources"],
            json!({"limits": {"memory": "256Mi"}, "requests": {"memory": "256Mi"}})
        );
        let burstable =
            owner_patch(&deployment("128Mi", "64Mi"), &increase(128, 256), &IncidentId("inc-1".into()))
                .expect("patch");
        assert_eq!(
            burstable.body()["spec"]["template"]["spec"]["containers"][0]["resources"],
            json!({"limits": {"memory": "256Mi"}})
        );
    }

    #[test]
    fn a_template_that_changed_since_the_verdict_is_refused() {
        assert!(template_matches(&deployment("128Mi", "64Mi"), &increase(128, 256)).is_ok());
        assert!(template_matches(&deployment("512Mi", "64Mi"), &increase(128, 256)).is_err());
        assert!(
            template_matches(&deployment("256Mi", "64Mi"), &increase(128, 256)).is_ok(),
            "already applied: resuming is fine"
        );
    }

    #[test]
    fn a_step_a_crashed_leader_completed_is_recognised_and_not_written_again() {
        let incident = IncidentId("inc-1".into());
        let mut object = deployment_json("256Mi", "64Mi");
        assert!(!already_applied(&typed(object.clone()), &increase(128, 256), &incident), "not ours");
        object["metadata"]["annotations"]["kubesent.io/incident"] = json!("inc-1");
        let workload = typed(object);
        assert!(already_applied(&workload, &increase(128, 256), &incident));
        assert!(!already_applied(&workload, &increase(128, 256), &IncidentId("inc-2".into())));
        assert!(!already_applied(&deployment("128Mi", "64Mi"), &increase(128, 256), &incident), "not yet");
        let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "p", "annotations": {
            "kubesent.io/incident": "inc-1", "kubesent.io/original-memory-limit.app": "128Mi"}}}))
        .expect("pod");
        assert!(pod_has_record(&pod, "kubesent.io/original-memory-limit", "app", "128Mi", &incident));
        assert!(!pod_has_record(&pod, "kubesent.io/original-memory-limit", "app", "64Mi", &incident));
        assert!(!pod_has_record(
            &pod,
            "kubesent.io/original-memory-limit",
            "app",
            "128Mi",
            &IncidentId("inc-2".into())
        ));
    }

    #[test]
    fn gitops_managed_objects_are_recognised() {
        let labels = BTreeMap::from([("argocd.argoproj.io/instance".to_owned(), "shop".to_owned())]);
        assert_eq!(gitops_manager(&labels, &BTreeMap::new()), Some("Argo CD"));
        let flux = BTreeMap::from([("kustomize.toolkit.fluxcd.io/name".to_owned(), "apps".to_owned())]);
        assert_eq!(gitops_manager(&flux, &BTreeMap::new()), Some("Flux"));
        assert_eq!(gitops_manager(&BTreeMap::new(), &BTreeMap::new()), None);
    }

    #[test]
    fn a_container_that_restarts_again_after_the_fix_is_failing() {
        let pod = |restarts: i32, state: Value| -> Pod {
            serde_json::from_value(json!({"metadata": {"name": "p"}, "status": {"containerStatuses": [{"name": "app", "image": "i", "imageID": "",
                "ready": state.get("running").is_some(), "restartCount": restarts, "state": state,
                "lastState": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}]}}))
            .expect("pod")
        };
        let running = json!({"running": {"startedAt": "2026-11-01T10:00:00Z"}});
        assert_eq!(
            container_progress(&pod(5, running.clone()), "app", Some(4)),
            Progress::Healthy,
            "the stale OOM is not a failure"
        );
        assert_eq!(
            container_progress(&pod(5, json!({"waiting": {"reason": "CrashLoopBackOff"}})), "app", Some(5)),
            Progress::Waiting
        );
        let oom = json!({"terminated": {"exitCode": 137, "reason": "OOMKilled"}});
        assert_eq!(
            container_progress(&pod(5, oom.clone()), "app", Some(5)),
            Progress::Waiting,
            "the kill the fix answers is not held against it"
        );
        assert!(matches!(container_progress(&pod(6, oom.clone()), "app", Some(5)), Progress::Failing(_)));
        assert!(matches!(container_progress(&pod(7, running.clone()), "app", Some(4)), Progress::Failing(_)));
        assert!(
            matches!(container_progress(&pod(0, oom), "app", None), Progress::Failing(_)),
            "a pod created with the fix must not fail at all"
        );
        assert!(matches!(container_progress(&pod(1, running), "app", None), Progress::Failing(_)));
    }
    #[test]
    fn a_change_another_manager_put_back_is_seen_with_that_managers_name() {
        let with = |memory: &str, managed: serde_json::Value| -> Workload {
            Workload::Deployment(Box::new(
                serde_json::from_value(serde_json::json!({"metadata": {"name": "web", "managedFields": managed},
                    "spec": {"selector": {}, "template": {"spec": {"containers": [{"name": "app", "image": "web:1",
                        "resources": {"limits": {"memory": memory}}}]}}}}))
                .expect("deployment"),
            ))
        };
        let memory_owner = |manager: &str| {
            serde_json::json!({"manager": manager, "operation": "Apply", "apiVersion": "apps/v1", "fieldsType": "FieldsV1",
                "fieldsV1": {"f:spec": {"f:template": {"f:spec": {"f:containers": {"k:{\"name\":\"app\"}": {
                    ".": {}, "f:resources": {"f:limits": {"f:memory": {}}}}}}}}}})
        };
        let raise = Action::IncreaseMemory {
            container: "app".into(),
            from: MemoryQuantity::from_mib(128),
            to: MemoryQuantity::from_mib(256),
        };
        let ours = with("256Mi", serde_json::json!([memory_owner("kubesent-remediator")]));
        assert_eq!(overridden(&ours, &raise), None, "still holds");
        let back = with("128Mi", serde_json::json!([memory_owner("gitops-reconciler")]));
        assert_eq!(
            overridden(&back, &raise).as_deref(),
            Some("the memory limit of app is 128Mi again, not 256Mi")
        );
        assert_eq!(field_manager(&back, &raise, "kubesent-remediator").as_deref(), Some("gitops-reconciler"));
        assert_eq!(
            field_manager(&ours, &raise, "kubesent-remediator"),
            None,
            "KubeSent's own write names nobody"
        );
    }
    #[test]
    fn new_pods_admitted_with_another_limit_did_not_land_and_a_refused_rollout_is_blocked() {
        let pod = |name: &str, hash: &str, memory: &str| -> Pod {
            serde_json::from_value(serde_json::json!({"metadata": {"name": name, "labels": {"pod-template-hash": hash}},
                "spec": {"containers": [{"name": "app", "image": "web:1", "resources": {"limits": {"memory": memory}}}]}}))
            .expect("pod")
        };
        let raise = Action::IncreaseMemory {
            container: "app".into(),
            from: MemoryQuantity::from_mib(128),
            to: MemoryQuantity::from_mib(256),
        };
        let is_old = |p: &Pod| {
            p.metadata.labels.as_ref().and_then(|l| l.get("pod-template-hash")).map(String::as_str)
                == Some("old")
        };
        let landed_ok = [pod("a", "old", "128Mi"), pod("b", "new", "256Mi")];
        assert_eq!(landed(&landed_ok, &raise, is_old), Ok(()), "old pods keep their limit");
        let clamped = [pod("a", "old", "128Mi"), pod("b", "new", "16Mi")];
        let why = landed(&clamped, &raise, is_old).expect_err("clamped");
        assert!(why.starts_with("pod b was admitted with memory limit 16Mi for app, not the 256Mi"), "{why}");

        let deployment = |conditions: serde_json::Value| {
            Workload::Deployment(Box::new(
                serde_json::from_value(
                    serde_json::json!({"metadata": {"name": "web"}, "spec": {"selector": {}, "template": {}},
                    "status": {"conditions": conditions}}),
                )
                .expect("deployment"),
            ))
        };
        let refused = deployment(
            serde_json::json!([{"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate",
            "message": "pods \"web-1\" is forbidden: exceeded quota: team", "lastUpdateTime": "2026-12-05T10:00:05Z"}]),
        );
        let at = |t: &str| t.parse::<jiff::Timestamp>().expect("time");
        assert_eq!(
            rollout_blocked(&refused, Some(at("2026-12-05T10:00:00Z"))).as_deref(),
            Some("its new pods are refused: pods \"web-1\" is forbidden: exceeded quota: team")
        );
        assert_eq!(
            rollout_blocked(&refused, Some(at("2026-12-05T10:01:00Z"))),
            None,
            "from before the change"
        );
        assert_eq!(rollout_blocked(&deployment(serde_json::json!([])), None), None);
    }
    #[test]
    fn a_new_pod_that_cannot_be_scheduled_or_fails_in_a_new_way_is_worse_and_the_same_failure_is_not() {
        let pod = |name: &str, hash: &str, status: serde_json::Value| -> Pod {
            serde_json::from_value(
                serde_json::json!({"metadata": {"name": name, "labels": {"pod-template-hash": hash}},
                "spec": {"containers": [{"name": "app", "image": "web:1"}]}, "status": status}),
            )
            .expect("pod")
        };
        let is_old = |p: &Pod| {
            p.metadata.labels.as_ref().and_then(|l| l.get("pod-template-hash")).map(String::as_str)
                == Some("old")
        };
        let terminated = |reason: &str, code: i32| {
            serde_json::json!({"containerStatuses": [{"name": "app", "image": "web:1", "imageID": "", "ready": false,
                "restartCount": 1, "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                "lastState": {"terminated": {"exitCode": code, "reason": reason}}}]})
        };
        let old = pod("a", "old", terminated("OOMKilled", 137));
        let pending = pod(
            "b",
            "new",
            serde_json::json!({"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False",
                "reason": "Unschedulable", "message": "0/2 nodes are available: 2 Insufficient memory."}]}),
        );
        let oom = Some(FailureKind::OomKilled);
        assert_eq!(
            rollout_progress(&[old.clone(), pending], "app", is_old, 1, oom),
            Progress::Worse(
                "its new pod b cannot be scheduled: 0/2 nodes are available: 2 Insufficient memory.".into()
            )
        );
        let crashing = pod("b", "new", terminated("Error", 1));
        assert_eq!(
            rollout_progress(&[old.clone(), crashing.clone()], "app", is_old, 1, oom),
            Progress::Worse(
                "its new pod b fails in a new way: crash-loop (restarted again (Error)), where the incident was oom-killed"
                    .into()
            )
        );
        assert!(
            matches!(
                rollout_progress(&[old.clone(), crashing], "app", is_old, 1, Some(FailureKind::CrashLoop)),
                Progress::Failing(_)
            ),
            "the same failure again: the fix did not help, but did not hurt"
        );
        let still_oom = pod("b", "new", terminated("OOMKilled", 137));
        assert!(matches!(
            rollout_progress(&[old.clone(), still_oom], "app", is_old, 1, oom),
            Progress::Failing(_)
        ));
        let pulling = pod(
            "b",
            "new",
            serde_json::json!({"containerStatuses": [{"name": "app", "image": "web:1", "imageID": "", "ready": false,
                "restartCount": 0, "state": {"waiting": {"reason": "ImagePullBackOff"}}}]}),
        );
        assert!(
            matches!(
                rollout_progress(&[old, pulling], "app", is_old, 1, Some(FailureKind::ErrImagePull)),
                Progress::Failing(_)
            ),
            "ErrImagePull and ImagePullBackOff are one failure"
        );
    }
    #[test]
    fn the_limit_ranger_and_the_mutating_webhooks_that_take_the_pod_are_named() {
        let pod: Pod = serde_json::from_value(serde_json::json!({"metadata": {"name": "web-1",
            "labels": {"app": "web", "team": "shop"},
            "annotations": {"kubernetes.io/limit-ranger": "LimitRanger plugin set: memory limit for container app"}}}))
        .expect("pod");
        let configuration = |name: &str, resources: serde_json::Value, extra: serde_json::Value| {
            let mut webhook = serde_json::json!({"name": format!("{name}.example.com"), "clientConfig": {"url": "https://x"},
                "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": resources}],
                "sideEffects": "None", "admissionReviewVersions": ["v1"]});
            if let (Some(w), Some(e)) = (webhook.as_object_mut(), extra.as_object()) {
                w.extend(e.clone());
            }
            serde_json::from_value(serde_json::json!({"metadata": {"name": name}, "webhooks": [webhook]}))
                .expect("configuration")
        };
        let webhooks = vec![
            configuration("clamp", serde_json::json!(["pods"]), serde_json::json!({})),
            configuration("services", serde_json::json!(["services"]), serde_json::json!({})),
            configuration(
                "other-team",
                serde_json::json!(["pods"]),
                serde_json::json!({"objectSelector": {"matchLabels": {"team": "payments"}}}),
            ),
            configuration(
                "scoped",
                serde_json::json!(["*"]),
                serde_json::json!({"namespaceSelector": {"matchLabels": {"env": "prod"}}}),
            ),
        ];
        assert_eq!(
            who_admitted(&pod, &webhooks),
            vec![
                "a LimitRange (LimitRanger plugin set: memory limit for container app)".to_owned(),
                "mutating webhook clamp.example.com (MutatingWebhookConfiguration clamp)".to_owned(),
                "mutating webhook scoped.example.com (MutatingWebhookConfiguration scoped) if its namespace selector takes this namespace".to_owned(),
            ]
        );
    }
    #[test]
    fn a_budget_refuses_a_ready_pod_without_allowed_disruptions_and_an_unready_one_while_it_is_short() {
        let pod = |ready: &str| -> Pod {
            serde_json::from_value(serde_json::json!({"metadata": {"name": "db-2", "labels": {"app": "db"}},
                "status": {"conditions": [{"type": "Ready", "status": ready}]}}))
            .expect("pod")
        };
        let budget = |healthy: i32, desired: i32, allowed: i32, policy: Option<&str>| {
            serde_json::from_value::<k8s_openapi::api::policy::v1::PodDisruptionBudget>(serde_json::json!({
                "metadata": {"name": "db"},
                "spec": {"selector": {"matchLabels": {"app": "db"}}, "unhealthyPodEvictionPolicy": policy},
                "status": {"currentHealthy": healthy, "desiredHealthy": desired, "disruptionsAllowed": allowed, "expectedPods": 3}}))
            .expect("budget")
        };
        let short = [budget(2, 3, 0, None)];
        assert_eq!(
            budget_refuses(&pod("False"), &short).as_deref(),
            Some("PodDisruptionBudget db needs 3 healthy pods and has 2 (0 disruptions allowed)")
        );
        assert_eq!(budget_refuses(&pod("False"), &[budget(2, 3, 0, Some("AlwaysAllow"))]), None);
        assert_eq!(
            budget_refuses(&pod("False"), &[budget(2, 2, 0, None)]),
            None,
            "met: an unready pod may go"
        );
        assert!(
            budget_refuses(&pod("True"), &[budget(2, 2, 0, None)]).is_some(),
            "a ready pod needs an allowed disruption"
        );
        assert_eq!(budget_refuses(&pod("True"), &[budget(3, 2, 1, None)]), None);
    }
}
