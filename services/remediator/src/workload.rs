//! The workloads KubeSent changes through their pod template, typed as the API serves them, and
//! [`WorkloadApi`], the one place that reads and writes them.
//!
//! A workload is read whole and typed: a field that does not decode is a read error, never a silent
//! default. Every write is a patch guarded by the resourceVersion the decision was made from, so a
//! workload that changed since is refused by the API (409) instead of being overwritten.

use std::{collections::BTreeMap, fmt};

use k8s_openapi::{
    api::{
        apps::v1::{Deployment, StatefulSet},
        core::v1::{Container, ObjectReference, PodTemplateSpec},
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{Api, api::Patch};
use kubesent_common::revisions::{self, Revision};
use kubesent_proto::{WorkloadKind, WorkloadRef};
use serde_json::{Value, json};

/// A workload KubeSent changes through its pod template, as read from the API.
#[derive(Debug, Clone, PartialEq)]
pub enum Workload {
    /// apps/v1 Deployment.
    Deployment(Box<Deployment>),
    /// apps/v1 StatefulSet.
    StatefulSet(Box<StatefulSet>),
}

static NO_LABELS: BTreeMap<String, String> = BTreeMap::new();

impl Workload {
    /// Its kind.
    pub fn kind(&self) -> WorkloadKind {
        match self {
            Self::Deployment(_) => WorkloadKind::Deployment,
            Self::StatefulSet(_) => WorkloadKind::StatefulSet,
        }
    }

    fn metadata(&self) -> &ObjectMeta {
        match self {
            Self::Deployment(d) => &d.metadata,
            Self::StatefulSet(s) => &s.metadata,
        }
    }

    /// Its name.
    pub fn name(&self) -> &str {
        self.metadata().name.as_deref().unwrap_or_default()
    }

    /// Its kind and name.
    pub fn reference(&self) -> WorkloadRef {
        WorkloadRef { kind: self.kind(), name: self.name().to_owned() }
    }

    /// `metadata.resourceVersion`.
    pub fn resource_version(&self) -> Option<&str> {
        self.metadata().resource_version.as_deref()
    }

    /// `metadata.uid`.
    pub fn uid(&self) -> Option<&str> {
        self.metadata().uid.as_deref()
    }

    /// Its labels.
    pub fn labels(&self) -> &BTreeMap<String, String> {
        self.metadata().labels.as_ref().unwrap_or(&NO_LABELS)
    }

    /// Its annotations.
    pub fn annotations(&self) -> &BTreeMap<String, String> {
        self.metadata().annotations.as_ref().unwrap_or(&NO_LABELS)
    }

    /// Its `metadata.managedFields`: who wrote which field.
    pub fn managed_fields(&self) -> &[k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry] {
        self.metadata().managed_fields.as_deref().unwrap_or_default()
    }

    /// Its annotation `key`.
    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations().get(key).map(String::as_str)
    }

    /// Desired replicas (the API's default, 1, when unset).
    pub fn replicas(&self) -> i32 {
        match self {
            Self::Deployment(d) => d.spec.as_ref().and_then(|s| s.replicas),
            Self::StatefulSet(s) => s.spec.as_ref().and_then(|s| s.replicas),
        }
        .unwrap_or(1)
    }

    /// The label selector's `matchLabels` as `k=v,k=v`.
    pub fn selector(&self) -> String {
        let selector = match self {
            Self::Deployment(d) => d.spec.as_ref().map(|s| &s.selector),
            Self::StatefulSet(s) => s.spec.as_ref().map(|s| &s.selector),
        };
        selector
            .and_then(|s| s.match_labels.as_ref())
            .map(|labels| labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(","))
            .unwrap_or_default()
    }

    /// Its pod template.
    pub fn template(&self) -> Option<&PodTemplateSpec> {
        match self {
            Self::Deployment(d) => d.spec.as_ref().map(|s| &s.template),
            Self::StatefulSet(s) => s.spec.as_ref().map(|s| &s.template),
        }
    }

    /// The template's annotation `key`.
    pub fn template_annotation(&self, key: &str) -> Option<&str> {
        self.template()?.metadata.as_ref()?.annotations.as_ref()?.get(key).map(String::as_str)
    }

    /// The template's container `name`.
    pub fn template_container(&self, name: &str) -> Option<&Container> {
        self.template()?.spec.as_ref()?.containers.iter().find(|c| c.name == name)
    }

    /// Whether its rollout is paused (a Deployment's `spec.paused`): a template change would not roll out.
    pub fn paused(&self) -> bool {
        match self {
            Self::Deployment(d) => d.spec.as_ref().and_then(|s| s.paused).unwrap_or(false),
            Self::StatefulSet(_) => false,
        }
    }

    /// Whether it replaces its pods only when someone deletes them (a StatefulSet's `OnDelete`).
    pub fn updates_on_delete(&self) -> bool {
        match self {
            Self::Deployment(_) => false,
            Self::StatefulSet(s) => {
                s.spec.as_ref().and_then(|s| s.update_strategy.as_ref()).and_then(|u| u.type_.as_deref())
                    == Some("OnDelete")
            }
        }
    }

    /// Whether its controller can take an old pod down before it creates a new one during a rollout: a
    /// StatefulSet always (it replaces pods one by one), a Deployment under `Recreate` or with a
    /// `maxUnavailable` of at least one pod (rounded down against its replicas, as the controller
    /// does). Otherwise a whole new pod must fit beside the old ones.
    pub fn removes_a_pod_first(&self) -> bool {
        let Self::Deployment(d) = self else { return true };
        let Some(strategy) = d.spec.as_ref().and_then(|s| s.strategy.as_ref()) else {
            // The API's default: RollingUpdate with 25 % unavailable.
            return self.replicas() / 4 >= 1;
        };
        if strategy.type_.as_deref() == Some("Recreate") {
            return true;
        }
        use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
        let unavailable = strategy.rolling_update.as_ref().and_then(|r| r.max_unavailable.clone());
        match unavailable {
            Some(IntOrString::Int(n)) => n >= 1,
            Some(IntOrString::String(percent)) => percent
                .trim_end_matches('%')
                .parse::<i64>()
                .is_ok_and(|p| i64::from(self.replicas()) * p / 100 >= 1),
            None => self.replicas() / 4 >= 1,
        }
    }

    /// The label its controller puts on each pod to name the revision the pod runs.
    pub fn revision_label(&self) -> &'static str {
        match self {
            Self::Deployment(_) => "pod-template-hash",
            Self::StatefulSet(_) => "controller-revision-hash",
        }
    }

    /// A reference to it, for events.
    pub fn object_ref(&self) -> ObjectReference {
        ObjectReference {
            api_version: Some("apps/v1".into()),
            kind: Some(self.kind().as_str().into()),
            name: Some(self.name().to_owned()),
            namespace: self.metadata().namespace.clone(),
            uid: self.uid().map(str::to_owned),
            ..ObjectReference::default()
        }
    }
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind(), self.name())
    }
}

/// A change to a workload, as the API takes it.
#[derive(Debug, Clone, PartialEq)]
pub enum WorkloadPatch {
    /// A strategic merge patch (containers matched by name).
    Strategic(Value),
    /// A JSON merge patch (RFC 7386).
    Merge(Value),
}

impl WorkloadPatch {
    /// The patch document.
    pub fn body(&self) -> &Value {
        match self {
            Self::Strategic(body) | Self::Merge(body) => body,
        }
    }

    /// The patch document, to add to it.
    pub fn body_mut(&mut self) -> &mut Value {
        match self {
            Self::Strategic(body) | Self::Merge(body) => body,
        }
    }
}

/// Why a workload could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    /// KubeSent reads and changes only Deployments and StatefulSets; anything else named is refused
    /// before any request (a forged or corrupted record, not a Deployment of the same name).
    #[error("KubeSent changes Deployments and StatefulSets, not {0}")]
    Unsupported(WorkloadKind),
    /// The workload as read carries no resourceVersion to guard a write with.
    #[error("{0} was read without a resourceVersion; nothing is written unguarded")]
    Unguarded(String),
    /// The API refused or failed.
    #[error("kubernetes: {0}")]
    Kube(#[from] kube::Error),
}

/// `patch` guarded by `resource_version`: the API applies it only to that version of the object.
pub fn guarded(patch: Value, resource_version: &str) -> Value {
    let mut patch = if patch.is_object() { patch } else { json!({}) };
    patch["metadata"]["resourceVersion"] = json!(resource_version);
    patch
}

/// Reads and writes the workloads of one namespace.
#[derive(Clone)]
pub struct WorkloadApi {
    kube: kube::Client,
    namespace: String,
}

impl WorkloadApi {
    /// The workloads of `namespace`.
    pub fn new(kube: kube::Client, namespace: &str) -> Self {
        Self { kube, namespace: namespace.to_owned() }
    }

    /// Reads the workload `reference` names.
    pub async fn get(&self, reference: &WorkloadRef) -> Result<Workload, WorkloadError> {
        let kube = self.kube.clone();
        Ok(match reference.kind {
            WorkloadKind::Deployment => Workload::Deployment(Box::new(
                Api::<Deployment>::namespaced(kube, &self.namespace).get(&reference.name).await?,
            )),
            WorkloadKind::StatefulSet => Workload::StatefulSet(Box::new(
                Api::<StatefulSet>::namespaced(kube, &self.namespace).get(&reference.name).await?,
            )),
            other => return Err(WorkloadError::Unsupported(other)),
        })
    }

    /// Applies `patch` to the workload as `read`, guarded by the resourceVersion it was read at (a 409
    /// Conflict says it changed since).
    pub async fn patch(&self, read: &Workload, patch: WorkloadPatch) -> Result<(), WorkloadError> {
        let version = read.resource_version().ok_or_else(|| WorkloadError::Unguarded(read.to_string()))?;
        let patch = match patch {
            WorkloadPatch::Strategic(body) => Patch::Strategic(guarded(body, version)),
            WorkloadPatch::Merge(body) => Patch::Merge(guarded(body, version)),
        };
        let params = crate::patch_params();
        let kube = self.kube.clone();
        match read {
            Workload::Deployment(_) => {
                Api::<Deployment>::namespaced(kube, &self.namespace)
                    .patch(read.name(), &params, &patch)
                    .await?;
            }
            Workload::StatefulSet(_) => {
                Api::<StatefulSet>::namespaced(kube, &self.namespace)
                    .patch(read.name(), &params, &patch)
                    .await?;
            }
        }
        Ok(())
    }

    /// The workload's revisions, oldest first, read from the cluster now.
    pub async fn revisions(&self, workload: &Workload) -> Result<Vec<Revision>, WorkloadError> {
        Ok(match workload {
            Workload::Deployment(d) => {
                revisions::deployment_revisions(&self.kube, &self.namespace, d).await?
            }
            Workload::StatefulSet(s) => {
                revisions::stateful_set_revisions(&self.kube, &self.namespace, s).await?
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_write_carries_the_resource_version_it_was_decided_on() {
        let patch = guarded(json!({"spec": {"paused": true}, "metadata": {"annotations": {"a": "b"}}}), "42");
        assert_eq!(
            patch,
            json!({"spec": {"paused": true}, "metadata": {"annotations": {"a": "b"}, "resourceVersion": "42"}})
        );
        assert_eq!(guarded(Value::Null, "7"), json!({"metadata": {"resourceVersion": "7"}}));
    }

    #[tokio::test]
    async fn a_kind_kubesent_does_not_change_is_refused_before_any_request() {
        // Nothing listens on port 9: a request would fail as a connection error, not as Unsupported.
        let config = kube::Config::new("http://127.0.0.1:9".parse().expect("url"));
        let api = WorkloadApi::new(kube::Client::try_from(config).expect("client"), "shop");
        for kind in [WorkloadKind::DaemonSet, WorkloadKind::Pod, WorkloadKind::Job, WorkloadKind::ReplicaSet]
        {
            let reference = WorkloadRef { kind, name: "web".into() };
            assert!(
                matches!(api.get(&reference).await, Err(WorkloadError::Unsupported(k)) if k == kind),
                "{kind}"
            );
        }
    }

    #[test]
    fn a_typed_workload_answers_what_the_ladder_asks() {
        let deployment: Deployment = serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "shop", "resourceVersion": "42", "uid": "d1",
                "annotations": {"kubesent.io/incident": "inc-1"}},
            "spec": {"replicas": 3, "paused": true, "selector": {"matchLabels": {"app": "web", "tier": "fe"}},
                "template": {"metadata": {"annotations": {"kubesent.io/remediate": "false"}},
                    "spec": {"containers": [{"name": "app", "image": "web:2"}]}}}}))
        .expect("deployment");
        let workload = Workload::Deployment(Box::new(deployment));
        assert_eq!(workload.to_string(), "Deployment web");
        assert_eq!(workload.replicas(), 3);
        assert_eq!(workload.selector(), "app=web,tier=fe");
        assert!(workload.paused());
        assert!(!workload.updates_on_delete());
        assert_eq!(workload.annotation("kubesent.io/incident"), Some("inc-1"));
        assert_eq!(workload.template_annotation("kubesent.io/remediate"), Some("false"));
        assert_eq!(workload.template_container("app").and_then(|c| c.image.as_deref()), Some("web:2"));
        assert_eq!(workload.object_ref().namespace.as_deref(), Some("shop"));
        let set: StatefulSet = serde_json::from_value(json!({"metadata": {"name": "db"},
            "spec": {"selector": {}, "serviceName": "db", "updateStrategy": {"type": "OnDelete"},
                "template": {"spec": {"containers": []}}}}))
        .expect("statefulset");
        let set = Workload::StatefulSet(Box::new(set));
        assert!(set.updates_on_delete());
        assert_eq!(set.replicas(), 1, "the API's default");
        assert_eq!(set.revision_label(), "controller-revision-hash");
    }
}
