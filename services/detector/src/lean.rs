//! The pod as the detector reads it: only what classification, tracking and grouping look at.
//!
//! A pod on a real cluster is 5–20 KB of JSON (managedFields, sidecars, env lists, probes, volumes,
//! conditions); the detector reads a few hundred bytes of it. [`LeanPod`] is decoded straight from the
//! watch stream by kube-runtime's watcher (it implements [`kube::Resource`] for `v1/pods`, so bookmarks,
//! relists and 410 handling are the watcher's as before) and every field it does not name is skipped by
//! the decoder without being built: no maps, strings or vectors for the parts nobody reads. Labels are
//! filtered while they are decoded: only the controllers' hash labels that tell revisions apart are kept.
//!
//! `LeanPod::from(&Pod)` gives the same value from a fully decoded pod (for `kubesent diagnose`, which
//! has the whole object anyway); the property test in `tests/lean.rs` holds the two decodes equal.

use std::{collections::BTreeMap, fmt};

use k8s_openapi::{
    api::core::v1::{Container, ContainerState, ContainerStatus, Pod, ResourceRequirements},
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time},
};
use serde::{
    Deserialize, Deserializer,
    de::{IgnoredAny, MapAccess, Visitor},
};

/// The labels the detector reads: the revision hashes its controllers put on their pods.
pub const GROUPING_LABELS: [&str; 3] =
    ["pod-template-hash", "controller-revision-hash", "batch.kubernetes.io/controller-uid"];

/// A pod, reduced to what the detector reads.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct LeanPod {
    /// Name, namespace, uid, resourceVersion, owner references, creation and deletion timestamps and the
    /// [`GROUPING_LABELS`]; every other metadata field (managedFields, annotations, …) is left empty.
    #[serde(default, deserialize_with = "lean_metadata")]
    pub metadata: ObjectMeta,
    /// Containers (name, image, resources) and the restart policy.
    #[serde(default)]
    pub spec: Option<LeanPodSpec>,
    /// Phase, reason and container statuses.
    #[serde(default)]
    pub status: Option<LeanPodStatus>,
}

/// The parts of a pod's spec the detector reads.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LeanPodSpec {
    /// The app containers.
    #[serde(default)]
    pub containers: Vec<LeanContainer>,
    /// The init containers (sidecars included).
    #[serde(default)]
    pub init_containers: Option<Vec<LeanContainer>>,
    /// `Always`, `OnFailure` or `Never`.
    #[serde(default)]
    pub restart_policy: Option<String>,
}

/// A container of the spec: what a bare pod's revision hash is made of.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct LeanContainer {
    /// Container name.
    pub name: String,
    /// Image reference.
    #[serde(default)]
    pub image: Option<String>,
    /// Requests and limits.
    #[serde(default)]
    pub resources: Option<ResourceRequirements>,
}

/// The parts of a pod's status the detector reads.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LeanPodStatus {
    /// `Pending`, `Running`, `Succeeded`, `Failed` or `Unknown`.
    #[serde(default)]
    pub phase: Option<String>,
    /// Why the pod is in this phase (`Evicted`, …).
    #[serde(default)]
    pub reason: Option<String>,
    /// The message that goes with the reason (the kubelet's eviction message).
    #[serde(default)]
    pub message: Option<String>,
    /// The pod's conditions (`PodScheduled=False` with `Unschedulable` and the scheduler's message).
    #[serde(default)]
    pub conditions: Option<Vec<LeanPodCondition>>,
    /// The app containers' statuses.
    #[serde(default)]
    pub container_statuses: Option<Vec<LeanContainerStatus>>,
    /// The init containers' statuses.
    #[serde(default)]
    pub init_container_statuses: Option<Vec<LeanContainerStatus>>,
}

/// One pod condition and when it last changed.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LeanPodCondition {
    /// `PodScheduled`, `Ready`, …
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// Machine-readable reason (`Unschedulable`).
    #[serde(default)]
    pub reason: Option<String>,
    /// Human-readable message.
    #[serde(default)]
    pub message: Option<String>,
    /// When its status last changed.
    #[serde(default)]
    pub last_transition_time: Option<Time>,
}

/// One container's status: its state now, its last termination and its restarts.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LeanContainerStatus {
    /// Container name.
    pub name: String,
    /// The image the kubelet runs.
    #[serde(default)]
    pub image: String,
    /// The kubelet's restart count.
    #[serde(default)]
    pub restart_count: i32,
    /// Whether its readiness probe passes (always, without one, once it runs).
    #[serde(default)]
    pub ready: bool,
    /// The runtime's id of the container instance (`containerd://<id>`), once it ran.
    #[serde(default, rename = "containerID")]
    pub container_id: Option<String>,
    /// The state now.
    #[serde(default)]
    pub state: Option<LeanContainerState>,
    /// The last termination, if any.
    #[serde(default)]
    pub last_state: Option<LeanContainerState>,
    /// The resources the container runs with (Kubernetes 1.33+ reports them; an in-place resize shows
    /// here once the kubelet has actuated it).
    #[serde(default)]
    pub resources: Option<ResourceRequirements>,
}

/// A container state: waiting, running (whose details nobody reads) or terminated.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct LeanContainerState {
    /// Waiting, with the kubelet's reason.
    #[serde(default)]
    pub waiting: Option<LeanWaiting>,
    /// Present when running.
    #[serde(default)]
    pub running: Option<IgnoredAny>,
    /// Terminated, with its exit code and reason.
    #[serde(default)]
    pub terminated: Option<LeanTerminated>,
}

/// A waiting container's reason and message.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct LeanWaiting {
    /// `CrashLoopBackOff`, `ImagePullBackOff`, …
    #[serde(default)]
    pub reason: Option<String>,
    /// The kubelet's message.
    #[serde(default)]
    pub message: Option<String>,
}

/// A termination's exit code, reason and message.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LeanTerminated {
    /// Exit code of the container's process.
    #[serde(default)]
    pub exit_code: i32,
    /// `OOMKilled`, `Error`, `Completed`, …
    #[serde(default)]
    pub reason: Option<String>,
    /// The termination message.
    #[serde(default)]
    pub message: Option<String>,
    /// When it ended.
    #[serde(default)]
    pub finished_at: Option<Time>,
}

kubesent_common::lean_pod_resource!(LeanPod);

/// The metadata fields the detector reads; the rest is skipped by the decoder.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LeanMetadata {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    uid: Option<String>,
    #[serde(default)]
    resource_version: Option<String>,
    #[serde(default, deserialize_with = "grouping_labels")]
    labels: Option<BTreeMap<String, String>>,
    #[serde(default, deserialize_with = "kept_annotations")]
    annotations: Option<BTreeMap<String, String>>,
    #[serde(default)]
    owner_references: Option<Vec<OwnerReference>>,
    #[serde(default)]
    deletion_timestamp: Option<Time>,
    #[serde(default)]
    creation_timestamp: Option<Time>,
}

pub(crate) fn lean_metadata<'de, D: Deserializer<'de>>(deserializer: D) -> Result<ObjectMeta, D::Error> {
    let lean = Option::<LeanMetadata>::deserialize(deserializer)?;
    Ok(lean.map_or_else(ObjectMeta::default, |m| ObjectMeta {
        name: m.name,
        namespace: m.namespace,
        uid: m.uid,
        resource_version: m.resource_version,
        labels: m.labels,
        annotations: m.annotations.filter(|a| !a.is_empty()),
        owner_references: m.owner_references,
        deletion_timestamp: m.deletion_timestamp,
        creation_timestamp: m.creation_timestamp,
        ..ObjectMeta::default()
    }))
}

/// Decodes a label map keeping only the [`GROUPING_LABELS`]; other keys are compared where they lie
/// in the input and their values skipped, so a pod's many labels cost no allocation.
fn grouping_labels<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<BTreeMap<String, String>>, D::Error> {
    deserializer.deserialize_option(KeptKeys(&GROUPING_LABELS))
}

/// The annotations the detector reads: KubeSent's mark of an undone incident (a pod KubeSent's change
/// was taken back from fails as a new incident).
pub const KEPT_ANNOTATIONS: [&str; 1] = [kubesent_common::marks::UNDONE_ANNOTATION];

/// Decodes an annotation map keeping only the [`KEPT_ANNOTATIONS`] (a pod's annotations can be large:
/// last-applied configurations, sidecar injections).
fn kept_annotations<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<BTreeMap<String, String>>, D::Error> {
    deserializer.deserialize_option(KeptKeys(&KEPT_ANNOTATIONS))
}

/// A string map decoder that keeps only these keys.
struct KeptKeys(&'static [&'static str]);

impl<'de> Visitor<'de> for KeptKeys {
    type Value = Option<BTreeMap<String, String>>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a map of strings")
    }

    fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(self)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut kept = BTreeMap::new();
        while let Some(key) = map.next_key_seed(KeyOf(self.0))? {
            match key {
                Some(key) => {
                    kept.insert(key.to_owned(), map.next_value::<String>()?);
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Some(kept))
    }
}

/// A map key: one of the kept keys, or `None` for any other, read without allocating.
struct KeyOf(&'static [&'static str]);

impl<'de> serde::de::DeserializeSeed<'de> for KeyOf {
    type Value = Option<&'static str>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl Visitor<'_> for KeyOf {
    type Value = Option<&'static str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a key")
    }

    fn visit_str<E: serde::de::Error>(self, key: &str) -> Result<Self::Value, E> {
        Ok(self.0.iter().find(|known| **known == key).copied())
    }
}

impl From<&Pod> for LeanPod {
    fn from(pod: &Pod) -> Self {
        let meta = &pod.metadata;
        let labels = meta.labels.as_ref().map(|labels| {
            labels
                .iter()
                .filter(|(key, _)| GROUPING_LABELS.contains(&key.as_str()))
                .map(|(key, value)| (key.clone(), value.clone()))
                .collect()
        });
        LeanPod {
            metadata: ObjectMeta {
                name: meta.name.clone(),
                namespace: meta.namespace.clone(),
                uid: meta.uid.clone(),
                resource_version: meta.resource_version.clone(),
                labels,
                annotations: meta
                    .annotations
                    .as_ref()
                    .map(|annotations| {
                        annotations
                            .iter()
                            .filter(|(key, _)| KEPT_ANNOTATIONS.contains(&key.as_str()))
                            .map(|(key, value)| (key.clone(), value.clone()))
                            .collect::<BTreeMap<_, _>>()
                    })
                    .filter(|a| !a.is_empty()),
                owner_references: meta.owner_references.clone(),
                deletion_timestamp: meta.deletion_timestamp.clone(),
                creation_timestamp: meta.creation_timestamp.clone(),
                ..ObjectMeta::default()
            },
            spec: pod.spec.as_ref().map(|spec| LeanPodSpec {
                containers: spec.containers.iter().map(LeanContainer::from).collect(),
                init_containers: spec
                    .init_containers
                    .as_ref()
                    .map(|init| init.iter().map(LeanContainer::from).collect()),
                restart_policy: spec.restart_policy.clone(),
            }),
            status: pod.status.as_ref().map(|status| LeanPodStatus {
                phase: status.phase.clone(),
                reason: status.reason.clone(),
                message: status.message.clone(),
                conditions: status.conditions.as_ref().map(|conditions| {
                    conditions
                        .iter()
                        .map(|c| LeanPodCondition {
                            type_: c.type_.clone(),
                            status: c.status.clone(),
                            reason: c.reason.clone(),
                            message: c.message.clone(),
                            last_transition_time: c.last_transition_time.clone(),
                        })
                        .collect()
                }),
                container_statuses: status
                    .container_statuses
                    .as_ref()
                    .map(|all| all.iter().map(LeanContainerStatus::from).collect()),
                init_container_statuses: status
                    .init_container_statuses
                    .as_ref()
                    .map(|all| all.iter().map(LeanContainerStatus::from).collect()),
            }),
        }
    }
}

impl From<&Container> for LeanContainer {
    fn from(container: &Container) -> Self {
        LeanContainer {
            name: container.name.clone(),
            image: container.image.clone(),
            resources: container.resources.clone(),
        }
    }
}

impl From<&ContainerStatus> for LeanContainerStatus {
    fn from(status: &ContainerStatus) -> Self {
        LeanContainerStatus {
            name: status.name.clone(),
            image: status.image.clone(),
            restart_count: status.restart_count,
            ready: status.ready,
            container_id: status.container_id.clone(),
            state: status.state.as_ref().map(LeanContainerState::from),
            last_state: status.last_state.as_ref().map(LeanContainerState::from),
            resources: status.resources.clone(),
        }
    }
}

impl From<&ContainerState> for LeanContainerState {
    fn from(state: &ContainerState) -> Self {
        LeanContainerState {
            waiting: state
                .waiting
                .as_ref()
                .map(|w| LeanWaiting { reason: w.reason.clone(), message: w.message.clone() }),
            running: state.running.as_ref().map(|_| IgnoredAny),
            terminated: state.terminated.as_ref().map(|t| LeanTerminated {
                exit_code: t.exit_code,
                reason: t.reason.clone(),
                message: t.message.clone(),
                finished_at: t.finished_at.clone(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_the_revision_hash_labels_are_kept() {
        let pod: LeanPod = serde_json::from_value(json!({"metadata": {"name": "web-1", "labels": {
            "app": "web", "pod-template-hash": "7d9c5b7f6", "team": "shop"}}}))
        .expect("pod");
        let labels = pod.metadata.labels.expect("labels");
        assert_eq!(
            labels.into_iter().collect::<Vec<_>>(),
            [("pod-template-hash".into(), "7d9c5b7f6".into())]
        );
    }

    #[test]
    fn managed_fields_and_annotations_are_not_kept() {
        let pod: LeanPod = serde_json::from_str(
            r#"{"metadata": {"name": "p", "annotations": {"a": "b"}, "managedFields": [{"manager": "kubelet",
                "fieldsV1": {"f:status": {"f:conditions": {}}}}]}, "spec": {"containers": [{"name": "app",
                "env": [{"name": "X", "value": "1"}]}]}}"#,
        )
        .expect("pod");
        assert_eq!(pod.metadata.annotations, None);
        assert_eq!(pod.metadata.managed_fields, None);
        assert_eq!(pod.metadata.name.as_deref(), Some("p"));
        assert_eq!(pod.spec.expect("spec").containers[0].name, "app");
    }

    #[test]
    fn null_parts_decode_as_absent() {
        let pod: LeanPod = serde_json::from_str(
            r#"{"metadata": {"name": "p", "labels": null}, "spec": null, "status": null}"#,
        )
        .expect("pod");
        assert_eq!(pod.metadata.labels, None);
        assert_eq!((pod.spec, pod.status), (None, None));
    }

    #[test]
    fn a_malformed_pod_is_an_error_not_a_panic() {
        for bad in [
            r#"{"metadata": {"labels": {"pod-template-hash": 3}}}"#,
            r#"{"status": {"containerStatuses": [{}]}}"#,
            r#""a pod""#,
        ] {
            assert!(serde_json::from_str::<LeanPod>(bad).is_err(), "{bad}");
        }
    }
}
