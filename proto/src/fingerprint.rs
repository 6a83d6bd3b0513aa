//! Incident keys and their fingerprints.
//!
//! Fifty crashing replicas of one Deployment are one incident: the key is the controlling workload,
//! the container, the failure (its kind's family: `ErrImagePull` and `ImagePullBackOff` are one) and the
//! pod-template hash. Its fingerprint is the `Nats-Msg-Id` of
//! the job, so a second detector leader publishing the same incident during a failover is dropped by
//! JetStream's deduplication.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{FailureKind, WorkloadRef};

/// What makes two container failures the same incident.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IncidentKey {
    /// Namespace of the workload.
    pub namespace: String,
    /// The controlling workload (the pod itself when bare).
    pub workload: WorkloadRef,
    /// The failing container.
    pub container: String,
    /// The kind of failure.
    pub kind: FailureKind,
    /// `pod-template-hash` (or controller revision) of the pods; for a bare pod, a hash of the
    /// container's image and resources, so a changed pod is a new incident.
    pub template_hash: String,
}

/// The fingerprint of an [`IncidentKey`]: `inc-` and 24 hex digits of its SHA-256.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct IncidentId(pub String);

impl IncidentId {
    /// `text` as an incident id, when it has the shape of one (`inc-` and 24 hex digits): what an id from
    /// outside (a CLI argument, a button, a model's tool call) must be before it names a key.
    pub fn parse(text: &str) -> Option<Self> {
        let hex = text.strip_prefix("inc-")?;
        (hex.len() == 24 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then(|| Self(text.to_owned()))
    }

    /// The id as text; it is a valid NATS KV key and message id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for IncidentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl IncidentKey {
    /// The deterministic fingerprint of this key.
    pub fn fingerprint(&self) -> IncidentId {
        let mut hasher = Sha256::new();
        // Length-prefixed fields: no choice of names can make two different keys hash the same input.
        for field in [
            self.namespace.as_str(),
            self.workload.kind.as_str(),
            self.workload.name.as_str(),
            self.container.as_str(),
            self.kind.family(),
            self.template_hash.as_str(),
        ] {
            hasher.update((field.len() as u64).to_be_bytes());
            hasher.update(field.as_bytes());
        }
        let digest = hasher.finalize();
        let hex: String = digest.iter().take(12).map(|b| format!("{b:02x}")).collect();
        IncidentId(format!("inc-{hex}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str, hash: &str) -> IncidentKey {
        IncidentKey {
            namespace: "shop".into(),
            workload: WorkloadRef { kind: crate::WorkloadKind::Deployment, name: name.into() },
            container: "app".into(),
            kind: FailureKind::OomKilled,
            template_hash: hash.into(),
        }
    }

    #[test]
    fn the_same_key_always_has_the_same_fingerprint() {
        assert_eq!(key("web", "7d9c5b7f6").fingerprint(), key("web", "7d9c5b7f6").fingerprint());
        assert!(key("web", "7d9c5b7f6").fingerprint().as_str().starts_with("inc-"));
        assert_eq!(key("web", "7d9c5b7f6").fingerprint().as_str().len(), 4 + 24);
    }

    #[test]
    fn err_image_pull_and_image_pull_back_off_of_one_rollout_are_one_incident() {
        let pull = |kind| IncidentKey { kind, ..key("web", "7d9c5b7f6") };
        assert_eq!(
            pull(FailureKind::ErrImagePull).fingerprint(),
            pull(FailureKind::ImagePullBackOff).fingerprint()
        );
        assert_ne!(pull(FailureKind::ErrImagePull).fingerprint(), pull(FailureKind::CrashLoop).fingerprint());
    }

    #[test]
    fn a_new_rollout_or_another_workload_is_another_incident() {
        assert_ne!(key("web", "7d9c5b7f6").fingerprint(), key("web", "5c4b3a291").fingerprint());
        assert_ne!(key("web", "a").fingerprint(), key("web-a", "").fingerprint());
    }
}
