//! Reads the evidence of a job from the Kubernetes API. Only the pod itself is required; logs, events
//! and owners that cannot be read (gone, forbidden, not served) leave their part of the evidence empty.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        batch::v1::Job,
        core::v1::{Event, Node, Pod},
    },
    apimachinery::pkg::apis::meta::v1::{ManagedFieldsEntry, ObjectMeta},
};
use kube::{
    Api,
    api::{ListParams, LogParams},
};
use kubesent_common::revisions;
use kubesent_proto::{FailureJob, FailureKind};
use tracing::{debug, warn};

use crate::{
    evidence::{self, CurrentRevision, Evidence, LOG_MAX_BYTES, LOG_READ_LINES, Logs, PreviousRevision},
    redact::Redactor,
};

/// Where the record of revisions that served healthy is read, and how long makes one known-good.
pub struct KnownGood<'a> {
    /// The `kubesent-revisions` bucket.
    pub store: &'a kubesent_common::served::ServedStore,
    /// The settling time.
    pub after: std::time::Duration,
}

/// The live pod and its evidence, or `None` when the pod is gone or was replaced (a stale job).
pub async fn gather(
    kube: &kube::Client,
    job: &FailureJob,
    redactor: &Redactor,
    last_delivery: bool,
    known: Option<&KnownGood<'_>>,
) -> Result<Option<(Pod, Evidence)>, kube::Error> {
    let namespace = job.pod.namespace.as_str();
    let pods: Api<Pod> = Api::namespaced(kube.clone(), namespace);
    let Some(pod) = pods
        .get_opt(&job.pod.name)
        .await?
        .filter(|p| p.metadata.uid.as_deref() == Some(job.pod.uid.as_str()))
    else {
        if job.failure.kind == FailureKind::JobFailed {
            return failed_job_without_pods(kube, job, redactor).await;
        }
        return Ok(None);
    };
    let logs = logs(&pods, job, redactor).await;
    let events = events(kube, namespace, &job.pod.name).await;
    let (owners, revision, previous, marks) = owners(kube, namespace, &pod, last_delivery, known).await?;
    let mut evidence = evidence::build(&pod, logs, &events, owners, revision, previous, redactor);
    evidence.node = node(kube, &pod).await;
    evidence.own_change = own_change(&pod, marks.as_ref(), &job.failure);
    Ok(Some((pod, evidence)))
}

/// KubeSent's own change behind `failure` of `pod`, from its owner's marks (see
/// [`kubesent_common::marks::own_change`]).
pub fn own_change(
    pod: &Pod,
    marks: Option<&OwnerMarks>,
    failure: &kubesent_proto::Failure,
) -> Option<kubesent_common::marks::OwnChange> {
    let (annotations, fields) = marks?;
    let container = pod.spec.as_ref()?.containers.iter().find(|c| c.name == failure.container)?;
    kubesent_common::marks::own_change(annotations, fields, container, failure.kind)
}

/// The health of the pod's node, when it has one and it can be read.
pub async fn node(kube: &kube::Client, pod: &Pod) -> Option<evidence::NodeHealth> {
    let name = pod.spec.as_ref()?.node_name.as_deref()?;
    match Api::<Node>::all(kube.clone()).get_opt(name).await {
        Ok(node) => node.as_ref().map(evidence::node_health),
        Err(error) => {
            debug!(%error, "node not available");
            None
        }
    }
}

async fn logs(pods: &Api<Pod>, job: &FailureJob, redactor: &Redactor) -> Option<Logs> {
    let crashed = matches!(
        job.failure.kind,
        FailureKind::OomKilled | FailureKind::Killed | FailureKind::CrashLoop | FailureKind::JobFailed
    );
    let params = |previous| LogParams {
        container: Some(job.failure.container.clone()),
        previous,
        // More than the evidence keeps: the decisive line may sit above a long stack or dump.
        tail_lines: Some(LOG_READ_LINES),
        limit_bytes: Some(LOG_MAX_BYTES as i64 * 8),
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

/// The evidence of a failed Job whose pods are gone (deleted at its deadline): its pod template as
/// the pod, its own events; `None` when the Job is gone too.
async fn failed_job_without_pods(
    kube: &kube::Client,
    job: &FailureJob,
    redactor: &Redactor,
) -> Result<Option<(Pod, Evidence)>, kube::Error> {
    let namespace = job.pod.namespace.as_str();
    let jobs: Api<Job> = Api::namespaced(kube.clone(), namespace);
    let Some(failed) = jobs.get_opt(&job.key.workload.name).await? else { return Ok(None) };
    let template = failed.spec.map(|s| s.template).unwrap_or_default();
    let pod = Pod {
        metadata: ObjectMeta {
            name: Some(job.pod.name.clone()),
            namespace: Some(namespace.to_owned()),
            ..ObjectMeta::default()
        },
        spec: template.spec,
        status: None,
    };
    let events = object_events(kube, namespace, "Job", &job.key.workload.name).await;
    let owners = vec![format!("Job/{}", job.key.workload.name)];
    let evidence = evidence::build(&pod, None, &events, owners, None, None, redactor);
    Ok(Some((pod, evidence)))
}

async fn events(kube: &kube::Client, namespace: &str, pod: &str) -> Vec<Event> {
    object_events(kube, namespace, "Pod", pod).await
}

async fn object_events(kube: &kube::Client, namespace: &str, kind: &str, name: &str) -> Vec<Event> {
    let api: Api<Event> = Api::namespaced(kube.clone(), namespace);
    let selector = format!("involvedObject.name={name},involvedObject.kind={kind}");
    match api.list(&ListParams::default().fields(&selector)).await {
        Ok(list) => list.items,
        Err(error) => {
            debug!(%error, "events not available");
            Vec::new()
        }
    }
}

/// How a revision with no ready pods now served before, when the detector's record shows it known-good
/// (`None`: no record, too young, another hash or workload, or the bucket cannot be read — each proves
/// nothing, so no rollback to it is proposed).
async fn served_before(
    known: &KnownGood<'_>,
    namespace: &str,
    owner: &kubesent_proto::WorkloadRef,
    owner_uid: &str,
    previous: &revisions::Revision,
) -> Option<String> {
    let record = match known.store.read(namespace, owner).await {
        Ok(record) => record?,
        Err(error) => {
            warn!(%error, "the record of served revisions cannot be read; no rollback to a scaled-down revision");
            return None;
        }
    };
    served_sentence(&record, owner_uid, &previous.name, &previous.hash, known.after, jiff::Timestamp::now())
}

/// How revision `name` (hash `hash`) of the workload with `owner_uid` served, when `record` shows it
/// known-good after `after` at `now`; `None` when it does not (missing, too young, another hash or
/// workload, inconsistent).
pub fn served_sentence(
    record: &kubesent_proto::served::ServedRevisions,
    owner_uid: &str,
    name: &str,
    hash: &str,
    after: std::time::Duration,
    now: jiff::Timestamp,
) -> Option<String> {
    match record.known_good(owner_uid, name, hash, after, now) {
        Ok(served) => Some(served.describe()),
        Err(why) => {
            debug!(%why, "previous revision not known-good");
            None
        }
    }
}

/// The owner's annotations and `managedFields`: where KubeSent's marks are.
pub type OwnerMarks = (BTreeMap<String, String>, Vec<ManagedFieldsEntry>);

/// The owner chain and, for a Deployment or a StatefulSet, the pod's revision, the one before it and
/// the owner's marks.
///
/// The previous revision decides whether a rollback is possible, so a history the API would not give
/// (an error burst, throttling) is an error and the job comes back later, rather than a verdict saying
/// there is no healthy revision to roll back to. On the job's last delivery the verdict is made
/// without it (a diagnosis, never a rollback) so the job is not lost.
pub async fn owners(
    kube: &kube::Client,
    namespace: &str,
    pod: &Pod,
    last_delivery: bool,
    known: Option<&KnownGood<'_>>,
) -> Result<(Vec<String>, Option<CurrentRevision>, Option<PreviousRevision>, Option<OwnerMarks>), kube::Error>
{
    let Some((kind, name)) = revisions::controller_of(&pod.metadata) else {
        return Ok((Vec::new(), None, None, None));
    };
    let mut chain = vec![format!("{kind}/{name}")];
    let history = match revisions::history(kube, namespace, pod).await {
        Ok(history) => history,
        Err(error) if last_delivery => {
            warn!(%error, "revision history not available on the last delivery; diagnosing without it");
            return Ok((chain, None, None, None));
        }
        Err(error) => return Err(error),
    };
    if let Some(owner) = &history.owner
        && owner.kind.as_str() != kind
    {
        chain.push(format!("{}/{}", owner.kind, owner.name));
    }
    let served = match (known, &history.owner, &history.previous) {
        (Some(known), Some(owner), Some(previous)) if previous.ready_replicas <= 0 => {
            served_before(known, namespace, owner, &history.owner_uid, previous).await
        }
        _ => None,
    };
    let previous = history.previous.map(|p| PreviousRevision {
        revision: p.number.to_string(),
        name: p.name,
        images: p.images,
        ready_replicas: p.ready_replicas,
        replicas: p.replicas,
        served,
    });
    let current = history.current.map(|c| CurrentRevision {
        revision: c.number.to_string(),
        newest: history.newest == Some(c.number),
        name: c.name,
    });
    let marks = history.owner.is_some().then_some((history.owner_annotations, history.owner_managed_fields));
    Ok((chain, current, previous, marks))
}
