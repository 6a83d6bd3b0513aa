//! A pod's owner, the one place that works it out, two ways: *named* from the pod alone (the detector,
//! on every watch event, without an API read) and *resolved* through the API (the diagnoser's evidence and
//! revision history, the remediator's target). The remediator checks that the two agree before it acts.

use k8s_openapi::{
    api::apps::v1::{Deployment, ReplicaSet, StatefulSet},
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference},
};
use kube::Api;
use kubesent_proto::{WorkloadKind, WorkloadRef};

/// Label Deployments put on their ReplicaSets' pods.
pub const POD_TEMPLATE_HASH: &str = "pod-template-hash";

/// The managing controller named in `meta`'s owner references.
pub fn controller(meta: &ObjectMeta) -> Option<&OwnerReference> {
    meta.owner_references.iter().flatten().find(|o| o.controller == Some(true))
}

/// The workload a pod belongs to, named from the pod alone: a ReplicaSet's pods belong to its Deployment
/// (by the `<deployment>-<pod-template-hash>` naming the Deployment controller uses), a Job a CronJob
/// created to the CronJob (`<cronjob>-<scheduled minute>`), so each run of a failing CronJob is not a new
/// incident; a pod without a controller is its own workload.
pub fn named_workload(meta: &ObjectMeta) -> WorkloadRef {
    let name = meta.name.clone().unwrap_or_default();
    let Some(owner) = controller(meta) else { return WorkloadRef { kind: WorkloadKind::Pod, name } };
    let hash = meta.labels.as_ref().and_then(|l| l.get(POD_TEMPLATE_HASH));
    if owner.kind == "ReplicaSet"
        && let Some(hash) = hash
        && let Some(deployment) = owner.name.strip_suffix(&format!("-{hash}")).filter(|d| !d.is_empty())
    {
        return WorkloadRef { kind: WorkloadKind::Deployment, name: deployment.to_owned() };
    }
    if owner.kind == "Job"
        && let Some(cron_job) = cron_job_of(&owner.name)
    {
        return WorkloadRef { kind: WorkloadKind::CronJob, name: cron_job.to_owned() };
    }
    match WorkloadKind::parse(&owner.kind) {
        Some(kind) => WorkloadRef { kind, name: owner.name.clone() },
        // A controller KubeSent does not know (a custom resource's): the pod is its own workload, so
        // its failures are still reported and diagnosed; the remediator finds the controller and leaves
        // it alone.
        None => WorkloadRef { kind: WorkloadKind::Pod, name },
    }
}

/// The CronJob that named a Job `<cronjob>-<scheduled time in minutes since the epoch>` (8 digits or more).
fn cron_job_of(job: &str) -> Option<&str> {
    let (cron_job, minute) = job.rsplit_once('-')?;
    (!cron_job.is_empty() && minute.len() >= 8 && minute.bytes().all(|b| b.is_ascii_digit()))
        .then_some(cron_job)
}

/// A pod's owner as the API holds it now.
#[derive(Debug, Clone)]
pub enum Resolved {
    /// No controller: a bare pod.
    Bare,
    /// A Deployment, through the ReplicaSet that controls the pod.
    Deployment {
        /// The pod's ReplicaSet.
        replica_set: Box<ReplicaSet>,
        /// Its Deployment.
        deployment: Box<Deployment>,
    },
    /// A StatefulSet.
    StatefulSet(Box<StatefulSet>),
    /// Another controller (a DaemonSet, a Job, a ReplicaSet without a Deployment, a custom controller).
    Other {
        /// Its kind.
        kind: String,
        /// Its name.
        name: String,
    },
    /// The controller the pod (or its ReplicaSet) names does not exist: being deleted, or orphaned.
    Missing {
        /// Its kind.
        kind: String,
        /// Its name.
        name: String,
    },
}

/// Resolves the owner of the pod whose metadata is `meta`, in `namespace`, through the API.
pub async fn resolve(
    kube: &kube::Client,
    namespace: &str,
    meta: &ObjectMeta,
) -> Result<Resolved, kube::Error> {
    let Some(owner) = controller(meta) else { return Ok(Resolved::Bare) };
    let missing = |kind: &str, name: &str| Resolved::Missing { kind: kind.to_owned(), name: name.to_owned() };
    match owner.kind.as_str() {
        "ReplicaSet" => {
            let Some(replica_set) =
                Api::<ReplicaSet>::namespaced(kube.clone(), namespace).get_opt(&owner.name).await?
            else {
                return Ok(missing("ReplicaSet", &owner.name));
            };
            let Some(deployment_name) =
                controller(&replica_set.metadata).filter(|o| o.kind == "Deployment").map(|o| o.name.clone())
            else {
                return Ok(Resolved::Other { kind: "ReplicaSet".into(), name: owner.name.clone() });
            };
            match Api::<Deployment>::namespaced(kube.clone(), namespace).get_opt(&deployment_name).await? {
                Some(deployment) => Ok(Resolved::Deployment {
                    replica_set: Box::new(replica_set),
                    deployment: Box::new(deployment),
                }),
                None => Ok(missing("Deployment", &deployment_name)),
            }
        }
        "StatefulSet" => {
            match Api::<StatefulSet>::namespaced(kube.clone(), namespace).get_opt(&owner.name).await? {
                Some(set) => Ok(Resolved::StatefulSet(Box::new(set))),
                None => Ok(missing("StatefulSet", &owner.name)),
            }
        }
        other => Ok(Resolved::Other { kind: other.to_owned(), name: owner.name.clone() }),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn meta(name: &str, owner: Option<(&str, &str)>, hash: Option<&str>) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.into()),
            owner_references: owner.map(|(kind, name)| {
                vec![OwnerReference {
                    kind: kind.into(),
                    name: name.into(),
                    controller: Some(true),
                    ..OwnerReference::default()
                }]
            }),
            labels: hash.map(|h| BTreeMap::from([(POD_TEMPLATE_HASH.to_owned(), h.to_owned())])),
            ..ObjectMeta::default()
        }
    }

    #[test]
    fn a_pod_is_named_after_the_workload_its_controller_belongs_to_or_after_itself_for_an_unknown_controller()
    {
        let cases = [
            (meta("web-7d9-x", Some(("ReplicaSet", "web-7d9")), Some("7d9")), ("Deployment", "web")),
            (meta("rs-x", Some(("ReplicaSet", "rs")), Some("7d9")), ("ReplicaSet", "rs")),
            (meta("db-0", Some(("StatefulSet", "db")), None), ("StatefulSet", "db")),
            (meta("nightly-29000000-x", Some(("Job", "nightly-29000000")), None), ("CronJob", "nightly")),
            (meta("once-x", Some(("Job", "once")), None), ("Job", "once")),
            (meta("solo", None, None), ("Pod", "solo")),
            (meta("canary-x", Some(("Rollout", "canary")), None), ("Pod", "canary-x")),
        ];
        for (meta, (kind, name)) in cases {
            assert_eq!(
                named_workload(&meta),
                WorkloadRef { kind: WorkloadKind::parse(kind).expect("a workload kind"), name: name.into() },
                "{meta:?}"
            );
        }
    }
}
