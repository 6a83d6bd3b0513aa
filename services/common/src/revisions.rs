//! A workload's revision history as the API holds it: for a Deployment its ReplicaSets (numbered by
//! `deployment.kubernetes.io/revision`), for a StatefulSet its ControllerRevisions. The diagnoser reads
//! it as evidence; the remediator reads it again itself, because a rollback's target must come from the
//! cluster, never from a message.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        apps::v1::{ControllerRevision, Deployment, ReplicaSet, StatefulSet},
        core::v1::{Pod, PodTemplateSpec},
    },
    apimachinery::pkg::apis::meta::v1::{LabelSelector, ManagedFieldsEntry, ObjectMeta},
};
use kube::{Api, api::ListParams};
use kubesent_proto::{WorkloadKind, WorkloadRef};

use crate::owner::Resolved;

/// Annotation carrying a Deployment's or ReplicaSet's revision number.
pub const DEPLOYMENT_REVISION: &str = "deployment.kubernetes.io/revision";

/// One revision of a workload's pod template.
#[derive(Debug, Clone, PartialEq)]
pub struct Revision {
    /// Its number (increasing with every template change).
    pub number: i64,
    /// The ReplicaSet or ControllerRevision that holds it.
    pub name: String,
    /// The hash its pods carry: a ReplicaSet's `pod-template-hash`, a ControllerRevision's name (its
    /// pods' `controller-revision-hash`).
    pub hash: String,
    /// Image per container of its template.
    pub images: BTreeMap<String, String>,
    /// How many of its pods are ready now: a revision still serving is known to work.
    pub ready_replicas: i32,
    /// How many pods of it the controller wants now (0: scaled down, e.g. by a finished rollout).
    pub replicas: i32,
    /// Its pod template as `kubectl rollout undo` would restore it (without the controller's hash label;
    /// read through the typed template, so a ControllerRevision's `$patch` directive and Go's
    /// `creationTimestamp: null` are gone as they are from a workload read through the API).
    pub template: Option<PodTemplateSpec>,
    /// Whether the revision holds nothing but the pod template (a StatefulSet's ControllerRevision could
    /// hold more; rolling the template back would not restore the rest).
    pub only_template: bool,
}

/// The revision a pod runs and the one before it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct History {
    /// The workload, when the pod has one with a revision history (a Deployment or a StatefulSet).
    pub owner: Option<WorkloadRef>,
    /// The pod's own revision.
    pub current: Option<Revision>,
    /// The newest revision older than the pod's.
    pub previous: Option<Revision>,
    /// The workload's newest revision number (the one its template holds now).
    pub newest: Option<i64>,
    /// The workload's annotations (KubeSent's marks among them, see [`crate::marks`]).
    pub owner_annotations: BTreeMap<String, String>,
    /// The workload's `managedFields` (who wrote which field of its template).
    pub owner_managed_fields: Vec<ManagedFieldsEntry>,
    /// The workload's uid.
    pub owner_uid: String,
}

impl History {
    fn with_owner_meta(mut self, meta: &ObjectMeta) -> Self {
        self.owner_uid = meta.uid.clone().unwrap_or_default();
        self.owner_annotations = meta.annotations.clone().unwrap_or_default();
        self.owner_managed_fields = meta.managed_fields.clone().unwrap_or_default();
        self
    }
}

/// The controller named in `meta`'s owner references (kind, name).
pub fn controller_of(meta: &ObjectMeta) -> Option<(String, String)> {
    crate::owner::controller(meta).map(|o| (o.kind.clone(), o.name.clone()))
}

/// The revision history of the workload that controls `pod` (a Deployment through its ReplicaSet, or a
/// StatefulSet); empty for any other pod, or when an object of the chain is gone.
pub async fn history(kube: &kube::Client, namespace: &str, pod: &Pod) -> Result<History, kube::Error> {
    match crate::owner::resolve(kube, namespace, &pod.metadata).await? {
        Resolved::Deployment { replica_set, deployment } => {
            let history = deployment_history(kube, namespace, &replica_set, &deployment).await?;
            Ok(history.with_owner_meta(&deployment.metadata))
        }
        Resolved::StatefulSet(set) => {
            Ok(stateful_set_history(kube, namespace, pod, &set).await?.with_owner_meta(&set.metadata))
        }
        Resolved::Bare | Resolved::Other { .. } | Resolved::Missing { .. } => Ok(History::default()),
    }
}

fn selector_text(selector: Option<&LabelSelector>) -> String {
    selector
        .and_then(|s| s.match_labels.as_ref())
        .map(|labels| labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(","))
        .unwrap_or_default()
}

fn owned_by(meta: &ObjectMeta, uid: Option<&String>) -> bool {
    uid.is_some_and(|uid| meta.owner_references.iter().flatten().any(|o| &o.uid == uid))
}

async fn deployment_history(
    kube: &kube::Client,
    namespace: &str,
    rs: &ReplicaSet,
    deployment: &Deployment,
) -> Result<History, kube::Error> {
    let deployment_name = deployment.metadata.name.clone().unwrap_or_default();
    let current = replica_set_revision(rs);
    let owned = deployment_revisions(kube, namespace, deployment).await?;
    let owner = WorkloadRef { kind: WorkloadKind::Deployment, name: deployment_name };
    Ok(history_of(owner, current, &owned))
}

/// The pod's revision, the newest older one and the newest of all.
fn history_of(owner: WorkloadRef, current: Option<Revision>, owned: &[Revision]) -> History {
    let previous = current.as_ref().and_then(|current| {
        owned.iter().filter(|r| r.number < current.number).max_by_key(|r| r.number).cloned()
    });
    let newest = owned.iter().map(|r| r.number).chain(current.as_ref().map(|c| c.number)).max();
    History { owner: Some(owner), current, previous, newest, ..History::default() }
}

/// A pod template as a rollback restores it: without the label a controller adds to tell its revisions
/// apart.
fn restorable(mut template: PodTemplateSpec, hash_label: &str) -> PodTemplateSpec {
    if let Some(labels) = template.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
        labels.remove(hash_label);
    }
    template
}

/// One ReplicaSet as a revision of its Deployment (`None` without a revision number).
fn replica_set_revision(set: &ReplicaSet) -> Option<Revision> {
    let number = set
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(DEPLOYMENT_REVISION))
        .and_then(|r| r.parse::<i64>().ok())?;
    let template =
        set.spec.as_ref().and_then(|s| s.template.clone()).map(|t| restorable(t, "pod-template-hash"));
    let hash =
        set.metadata.labels.as_ref().and_then(|l| l.get("pod-template-hash")).cloned().unwrap_or_default();
    Some(Revision {
        number,
        name: set.metadata.name.clone().unwrap_or_default(),
        hash,
        images: template_images(template.as_ref()),
        ready_replicas: set.status.as_ref().and_then(|s| s.ready_replicas).unwrap_or(0),
        replicas: set.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0),
        template,
        only_template: true,
    })
}

/// Every revision of a Deployment: the ReplicaSets it owns that carry a revision number.
pub async fn deployment_revisions(
    kube: &kube::Client,
    namespace: &str,
    deployment: &Deployment,
) -> Result<Vec<Revision>, kube::Error> {
    let sets: Api<ReplicaSet> = Api::namespaced(kube.clone(), namespace);
    let selector = selector_text(deployment.spec.as_ref().map(|s| &s.selector));
    let list = sets.list(&ListParams::default().labels(&selector)).await?;
    let mut owned: Vec<Revision> = list
        .items
        .iter()
        .filter(|r| owned_by(&r.metadata, deployment.metadata.uid.as_ref()))
        .filter_map(replica_set_revision)
        .collect();
    owned.sort_by_key(|r| r.number);
    Ok(owned)
}

/// Every revision of a StatefulSet: the ControllerRevisions it owns. Only the revision the StatefulSet
/// reports as current counts its ready pods (during a rolling update it is the one being replaced).
pub async fn stateful_set_revisions(
    kube: &kube::Client,
    namespace: &str,
    set: &StatefulSet,
) -> Result<Vec<Revision>, kube::Error> {
    let selector = selector_text(set.spec.as_ref().map(|s| &s.selector));
    let revisions: Api<ControllerRevision> = Api::namespaced(kube.clone(), namespace);
    let list = revisions.list(&ListParams::default().labels(&selector)).await?;
    let status = set.status.clone().unwrap_or_default();
    let revision = |r: &ControllerRevision| {
        let serving = status.current_revision.as_deref() == r.metadata.name.as_deref();
        let data = r.data.as_ref().map(|d| &d.0);
        // A template that does not decode is no template: nothing is rolled back to it.
        let template = data
            .and_then(|d| d.pointer("/spec/template"))
            .and_then(|t| serde_json::from_value::<PodTemplateSpec>(t.clone()).ok());
        let only_template = data.is_some_and(|d| {
            d.as_object().is_some_and(|o| o.keys().all(|k| k == "spec"))
                && d.get("spec")
                    .and_then(|s| s.as_object())
                    .is_some_and(|o| o.keys().all(|k| k == "template"))
        });
        Revision {
            number: r.revision,
            name: r.metadata.name.clone().unwrap_or_default(),
            hash: r.metadata.name.clone().unwrap_or_default(),
            images: template_images(template.as_ref()),
            ready_replicas: if serving {
                status.ready_replicas.unwrap_or(0).min(status.current_replicas.unwrap_or(0))
            } else {
                0
            },
            replicas: if serving { status.current_replicas.unwrap_or(0) } else { 0 },
            template: template.map(|t| restorable(t, "controller-revision-hash")),
            only_template,
        }
    };
    let mut owned: Vec<Revision> = list
        .items
        .iter()
        .filter(|r| owned_by(&r.metadata, set.metadata.uid.as_ref()))
        .map(revision)
        .collect();
    owned.sort_by_key(|r| r.number);
    Ok(owned)
}

/// Whether two pod templates are the same revision: equal once the controllers' hash labels are
/// ignored (as the Deployment controller compares them). An empty label map is no label map.
pub fn same_template(a: &PodTemplateSpec, b: &PodTemplateSpec) -> bool {
    let strip = |t: &PodTemplateSpec| {
        let mut t = restorable(restorable(t.clone(), "pod-template-hash"), "controller-revision-hash");
        if let Some(meta) = t.metadata.as_mut()
            && meta.labels.as_ref().is_some_and(BTreeMap::is_empty)
        {
            meta.labels = None;
        }
        if t.metadata.as_ref().is_some_and(|m| *m == ObjectMeta::default()) {
            t.metadata = None;
        }
        t
    };
    strip(a) == strip(b)
}

/// Image per container of a pod template.
fn template_images(template: Option<&PodTemplateSpec>) -> BTreeMap<String, String> {
    template
        .and_then(|t| t.spec.as_ref())
        .map(|spec| spec.containers.iter().filter_map(|c| Some((c.name.clone(), c.image.clone()?))).collect())
        .unwrap_or_default()
}

/// A StatefulSet's revision of `pod`, the revision before it and its newest, from its
/// ControllerRevisions.
async fn stateful_set_history(
    kube: &kube::Client,
    namespace: &str,
    pod: &Pod,
    set: &StatefulSet,
) -> Result<History, kube::Error> {
    let owner =
        WorkloadRef { kind: WorkloadKind::StatefulSet, name: set.metadata.name.clone().unwrap_or_default() };
    let Some(pod_revision) = pod.metadata.labels.as_ref().and_then(|l| l.get("controller-revision-hash"))
    else {
        return Ok(History { owner: Some(owner), ..History::default() });
    };
    let owned = stateful_set_revisions(kube, namespace, set).await?;
    let current = owned.iter().find(|r| r.name == *pod_revision).cloned();
    Ok(history_of(owner, current, &owned))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(value: serde_json::Value) -> PodTemplateSpec {
        serde_json::from_value(value).expect("a pod template")
    }

    #[test]
    fn a_controller_revisions_template_is_the_same_revision_as_the_workloads_it_was_made_from() {
        // As the StatefulSet controller stores it: Go's zero creationTimestamp as null, `$patch: replace`,
        // the revision's hash label.
        let stored = serde_json::json!({"$patch": "replace",
            "metadata": {"creationTimestamp": null, "labels": {"app": "db", "controller-revision-hash": "db-7c5"}},
            "spec": {"containers": [{"name": "db", "image": "postgres:16"}]}});
        let from_revision = template(stored);
        let workload = template(serde_json::json!({"metadata": {"labels": {"app": "db"}},
            "spec": {"containers": [{"name": "db", "image": "postgres:16"}]}}));
        assert!(same_template(&from_revision, &workload));
        let changed = template(serde_json::json!({"metadata": {"labels": {"app": "db"}},
            "spec": {"containers": [{"name": "db", "image": "postgres:17"}]}}));
        assert!(!same_template(&from_revision, &changed));
        assert_eq!(
            template_images(Some(&from_revision)),
            BTreeMap::from([("db".to_owned(), "postgres:16".to_owned())])
        );
    }
}
