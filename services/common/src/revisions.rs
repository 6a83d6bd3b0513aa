//! A workload's revision history as the API holds it: for a Deployment its ReplicaSets (numbered by
//! `deployment.kubernetes.io/revision`), for a StatefulSet its ControllerRevisions. The diagnoser reads
//! it as evidence; the remediator reads it again itself, because a rollback's target must come from the
//! cluster, never from a message.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        apps::v1::{ControllerRevision, Deployment, ReplicaSet, StatefulSet},
        core::v1::Pod,
    },
    apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta},
};
use kube::{Api, api::ListParams};

use crate::owner::Resolved;

/// Annotation carrying a Deployment's or ReplicaSet's revision number.
pub const DEPLOYMENT_REVISION: &str = "deployment.kubernetes.io/revision";

/// One revision of a workload's pod template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revision {
    /// Its number (increasing with every template change).
    pub number: i64,
    /// The ReplicaSet or ControllerRevision that holds it.
    pub name: String,
    /// Image per container of its template.
    pub images: BTreeMap<String, String>,
    /// How many of its pods are ready now: a revision still serving is known to work.
    pub ready_replicas: i32,
}

/// The revision a pod runs and the one before it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct History {
    /// The workload (`Deployment/web`), when the pod has one with a revision history.
    pub owner: Option<(String, String)>,
    /// The pod's own revision.
    pub current: Option<Revision>,
    /// The newest revision older than the pod's.
    pub previous: Option<Revision>,
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
            deployment_history(kube, namespace, &replica_set, &deployment).await
        }
        Resolved::StatefulSet(set) => stateful_set_history(kube, namespace, pod, &set).await,
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
    let sets: Api<ReplicaSet> = Api::namespaced(kube.clone(), namespace);
    let deployment_name = deployment.metadata.name.clone().unwrap_or_default();
    let number = |meta: &ObjectMeta| {
        meta.annotations.as_ref().and_then(|a| a.get(DEPLOYMENT_REVISION)).and_then(|r| r.parse::<i64>().ok())
    };
    let revision = |set: &ReplicaSet| -> Option<Revision> {
        Some(Revision {
            number: number(&set.metadata)?,
            name: set.metadata.name.clone().unwrap_or_default(),
            images: set
                .spec
                .as_ref()
                .and_then(|s| s.template.as_ref())
                .and_then(|t| t.spec.as_ref())
                .map(|s| {
                    s.containers
                        .iter()
                        .map(|c| (c.name.clone(), c.image.clone().unwrap_or_default()))
                        .collect()
                })
                .unwrap_or_default(),
            ready_replicas: set.status.as_ref().and_then(|s| s.ready_replicas).unwrap_or(0),
        })
    };
    let current = revision(rs);
    let selector = selector_text(deployment.spec.as_ref().map(|s| &s.selector));
    let list = sets.list(&ListParams::default().labels(&selector)).await?;
    let previous = current.as_ref().and_then(|current| {
        list.items
            .iter()
            .filter(|r| owned_by(&r.metadata, deployment.metadata.uid.as_ref()))
            .filter_map(revision)
            .filter(|r| r.number < current.number)
            .max_by_key(|r| r.number)
    });
    Ok(History { owner: Some(("Deployment".into(), deployment_name)), current, previous })
}

/// Image per container of a pod template given as JSON (a ControllerRevision's data).
fn template_images(template: Option<&serde_json::Value>) -> BTreeMap<String, String> {
    template
        .and_then(|t| t.pointer("/spec/containers"))
        .and_then(serde_json::Value::as_array)
        .map(|containers| {
            containers
                .iter()
                .filter_map(|c| {
                    Some((c.get("name")?.as_str()?.to_owned(), c.get("image")?.as_str()?.to_owned()))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A StatefulSet's revision of `pod` and the revision before it, from its ControllerRevisions. The
/// previous revision's ready pods are the StatefulSet's ready pods still at its current revision (during
/// a rolling update `status.currentRevision` is the revision being replaced).
async fn stateful_set_history(
    kube: &kube::Client,
    namespace: &str,
    pod: &Pod,
    set: &StatefulSet,
) -> Result<History, kube::Error> {
    let owner = Some(("StatefulSet".to_owned(), set.metadata.name.clone().unwrap_or_default()));
    let Some(pod_revision) = pod.metadata.labels.as_ref().and_then(|l| l.get("controller-revision-hash"))
    else {
        return Ok(History { owner, ..History::default() });
    };
    let selector = selector_text(set.spec.as_ref().map(|s| &s.selector));
    let revisions: Api<ControllerRevision> = Api::namespaced(kube.clone(), namespace);
    let list = revisions.list(&ListParams::default().labels(&selector)).await?;
    let status = set.status.clone().unwrap_or_default();
    let revision = |r: &ControllerRevision| {
        let serving = status.current_revision.as_deref() == r.metadata.name.as_deref();
        Revision {
            number: r.revision,
            name: r.metadata.name.clone().unwrap_or_default(),
            images: template_images(r.data.as_ref().and_then(|d| d.0.pointer("/spec/template"))),
            ready_replicas: if serving {
                status.ready_replicas.unwrap_or(0).min(status.current_replicas.unwrap_or(0))
            } else {
                0
            },
        }
    };
    let owned: Vec<Revision> = list
        .items
        .iter()
        .filter(|r| owned_by(&r.metadata, set.metadata.uid.as_ref()))
        .map(revision)
        .collect();
    let current = owned.iter().find(|r| r.name == *pod_revision).cloned();
    let previous = current.as_ref().and_then(|current| {
        owned.iter().filter(|r| r.number < current.number).max_by_key(|r| r.number).cloned()
    });
    Ok(History { owner, current, previous })
}
