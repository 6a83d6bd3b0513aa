//! Reads the evidence of a job from the Kubernetes API. Only the pod itself is required; logs, events
//! and owners that cannot be read (gone, forbidden, not served) leave their part of the evidence empty.

use std::collections::BTreeMap;

use k8s_openapi::api::{
    apps::v1::{ControllerRevision, Deployment, ReplicaSet, StatefulSet},
    core::v1::{Event, Pod},
};
use kube::{
    Api,
    api::{ListParams, LogParams},
};
use kubesent_proto::{FailureJob, FailureKind};
use tracing::debug;

use crate::{
    evidence::{self, Evidence, LOG_MAX_BYTES, LOG_TAIL_LINES, Logs, PreviousRevision},
    redact::Redactor,
};

/// Annotation carrying a Deployment's or ReplicaSet's revision.
const REVISION: &str = "deployment.kubernetes.io/revision";

/// The live pod and its evidence, or `None` when the pod is gone or was replaced (a stale job).
pub async fn gather(
    kube: &kube::Client,
    job: &FailureJob,
    redactor: &Redactor,
) -> Result<Option<(Pod, Evidence)>, kube::Error> {
    let namespace = job.pod.namespace.as_str();
    let pods: Api<Pod> = Api::namespaced(kube.clone(), namespace);
    let Some(pod) = pods
        .get_opt(&job.pod.name)
        .await?
        .filter(|p| p.metadata.uid.as_deref() == Some(job.pod.uid.as_str()))
    else {
        return Ok(None);
    };
    let logs = logs(&pods, job, redactor).await;
    let events = events(kube, namespace, &job.pod.name).await;
    let (owners, revision, previous) = owners(kube, namespace, &pod).await;
    let evidence = evidence::build(&pod, logs, &events, owners, revision, previous, redactor);
    Ok(Some((pod, evidence)))
}

async fn logs(pods: &Api<Pod>, job: &FailureJob, redactor: &Redactor) -> Option<Logs> {
    let crashed =
        matches!(job.failure.kind, FailureKind::OomKilled | FailureKind::Killed | FailureKind::CrashLoop);
    let params = |previous| LogParams {
        container: Some(job.failure.container.clone()),
        previous,
        tail_lines: Some(LOG_TAIL_LINES as i64),
        limit_bytes: Some(LOG_MAX_BYTES as i64 * 4),
        ..LogParams::default()
    };
    // A crashed container's own output is in the previous instance; fall back to the current one.
    for previous in if crashed { vec![true, false] } else { vec![false] } {
        match pods.logs(&job.pod.name, &params(previous)).await {
            Ok(text) => return Some(evidence::log_tail(&job.failure.container, previous, &text, redactor)),
            Err(error) => debug!(%error, previous, "logs not available"),
        }
    }
    None
}

async fn events(kube: &kube::Client, namespace: &str, pod: &str) -> Vec<Event> {
    let api: Api<Event> = Api::namespaced(kube.clone(), namespace);
    let selector = format!("involvedObject.name={pod},involvedObject.kind=Pod");
    match api.list(&ListParams::default().fields(&selector)).await {
        Ok(list) => list.items,
        Err(error) => {
            debug!(%error, "events not available");
            Vec::new()
        }
    }
}

fn controller(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Option<(String, String)> {
    meta.owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
        .map(|o| (o.kind.clone(), o.name.clone()))
}

/// Image per container of a pod template given as JSON.
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
async fn stateful_set_revisions(
    kube: &kube::Client,
    namespace: &str,
    pod: &Pod,
    name: &str,
) -> (Option<String>, Option<PreviousRevision>) {
    let Ok(set) = Api::<StatefulSet>::namespaced(kube.clone(), namespace).get(name).await else {
        return (None, None);
    };
    let Some(pod_revision) =
        pod.metadata.labels.as_ref().and_then(|l| l.get("controller-revision-hash")).cloned()
    else {
        return (None, None);
    };
    let selector = set
        .spec
        .as_ref()
        .and_then(|s| s.selector.match_labels.clone())
        .unwrap_or_default()
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let revisions: Api<ControllerRevision> = Api::namespaced(kube.clone(), namespace);
    let Ok(list) = revisions.list(&ListParams::default().labels(&selector)).await else {
        return (None, None);
    };
    let owned: Vec<ControllerRevision> = list
        .items
        .into_iter()
        .filter(|r| {
            r.metadata.owner_references.iter().flatten().any(|o| Some(&o.uid) == set.metadata.uid.as_ref())
        })
        .collect();
    let Some(current) = owned.iter().find(|r| r.metadata.name.as_deref() == Some(pod_revision.as_str()))
    else {
        return (None, None);
    };
    let status = set.status.clone().unwrap_or_default();
    let previous =
        owned.iter().filter(|r| r.revision < current.revision).max_by_key(|r| r.revision).map(|r| {
            let serving = status.current_revision.as_deref() == r.metadata.name.as_deref();
            PreviousRevision {
                revision: r.revision.to_string(),
                images: template_images(r.data.as_ref().and_then(|d| d.0.pointer("/spec/template"))),
                ready_replicas: if serving {
                    status.ready_replicas.unwrap_or(0).min(status.current_replicas.unwrap_or(0))
                } else {
                    0
                },
            }
        });
    (Some(current.revision.to_string()), previous)
}

/// The owner chain and, for a Deployment or a StatefulSet, its current and previous revision.
async fn owners(
    kube: &kube::Client,
    namespace: &str,
    pod: &Pod,
) -> (Vec<String>, Option<String>, Option<PreviousRevision>) {
    let mut chain = Vec::new();
    let Some((kind, name)) = controller(&pod.metadata) else { return (chain, None, None) };
    chain.push(format!("{kind}/{name}"));
    if kind == "StatefulSet" {
        let (current, previous) = stateful_set_revisions(kube, namespace, pod, &name).await;
        return (chain, current, previous);
    }
    if kind != "ReplicaSet" {
        return (chain, None, None);
    }
    let sets: Api<ReplicaSet> = Api::namespaced(kube.clone(), namespace);
    let Ok(rs) = sets.get(&name).await else { return (chain, None, None) };
    let Some((owner_kind, deployment_name)) = controller(&rs.metadata).filter(|(k, _)| k == "Deployment")
    else {
        return (chain, None, None);
    };
    chain.push(format!("{owner_kind}/{deployment_name}"));
    let deployments: Api<Deployment> = Api::namespaced(kube.clone(), namespace);
    let Ok(deployment) = deployments.get(&deployment_name).await else { return (chain, None, None) };
    let revision_of = |meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
        meta.annotations.as_ref().and_then(|a| a.get(REVISION)).and_then(|r| r.parse::<u64>().ok())
    };
    let current = revision_of(&rs.metadata);
    let selector = deployment
        .spec
        .as_ref()
        .and_then(|s| s.selector.match_labels.clone())
        .unwrap_or_default()
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let owned_by_deployment = |r: &ReplicaSet| {
        r.metadata.owner_references.iter().flatten().any(|o| Some(&o.uid) == deployment.metadata.uid.as_ref())
    };
    let previous = match (current, sets.list(&ListParams::default().labels(&selector)).await) {
        (Some(current), Ok(list)) => list
            .items
            .into_iter()
            .filter(owned_by_deployment)
            .filter_map(|r| revision_of(&r.metadata).filter(|rev| *rev < current).map(|rev| (rev, r)))
            .max_by_key(|(rev, _)| *rev)
            .map(|(rev, r)| PreviousRevision {
                revision: rev.to_string(),
                images: r
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
                    .unwrap_or_else(BTreeMap::new),
                ready_replicas: r.status.as_ref().and_then(|s| s.ready_replicas).unwrap_or(0),
            }),
        _ => None,
    };
    (chain, current.map(|c| c.to_string()), previous)
}
