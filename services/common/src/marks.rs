//! The marks KubeSent leaves on what it changes (annotations on the workload or the pod), and what they
//! tell a reader: which incident changed it, what it was before, whether it was taken back. The
//! remediator writes them; the diagnoser reads them to tell a failure KubeSent's own change caused from
//! the owner's.

use std::collections::BTreeMap;

use k8s_openapi::{api::core::v1::Container, apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry};
use kubesent_proto::{FailureKind, IncidentId, MemoryQuantity};

/// The field manager KubeSent's remediator writes with (named in every object's `managedFields`).
pub const FIELD_MANAGER: &str = "kubesent-remediator";
/// Why a workload's newest revision exists, as `kubectl rollout history` shows it (the Deployment
/// controller copies it to the ReplicaSet).
pub const CHANGE_CAUSE_ANNOTATION: &str = "kubernetes.io/change-cause";
/// The incident of KubeSent's last change to the object.
pub const INCIDENT_ANNOTATION: &str = "kubesent.io/incident";
/// Prefix of a container's memory limit before KubeSent changed it (`….<container>`).
pub const ORIGINAL_MEMORY_ANNOTATION: &str = "kubesent.io/original-memory-limit";
/// Prefix of a container's image before KubeSent rolled it back (`….<container>`).
pub const ORIGINAL_IMAGE_ANNOTATION: &str = "kubesent.io/original-image";
/// Prefix marking a container whose KubeSent change was taken back (`….<container>`, valued with the
/// incident): by a human with `kubesent undo`, or by KubeSent when it did not land or made things worse.
pub const REVERTED_ANNOTATION: &str = "kubesent.io/reverted";
/// On a workload's pod template, the incident whose change `kubesent undo` took back: the template is then
/// a revision of its own (a new `pod-template-hash`), so the next failure of the workload is a new
/// incident, not a duplicate of the one undone that JetStream's dedup window would drop.
pub const UNDONE_ANNOTATION: &str = "kubesent.io/undone";

/// The field managers of a field (`leaf`, e.g. `["f:resources", "f:limits", "f:memory"]`) of `container`
/// in a workload's pod template, from its `managedFields`.
pub fn template_field_managers<'a>(
    managed_fields: &'a [ManagedFieldsEntry],
    container: &str,
    leaf: &[&str],
) -> impl Iterator<Item = &'a str> {
    let key = format!("k:{}", serde_json::json!({"name": container}));
    let path: Vec<String> = ["f:spec", "f:template", "f:spec", "f:containers", key.as_str()]
        .into_iter()
        .chain(leaf.iter().copied())
        .map(str::to_owned)
        .collect();
    managed_fields.iter().filter_map(move |entry| {
        let mut node = &entry.fields_v1.as_ref()?.0;
        for element in &path {
            node = node.get(element.as_str())?;
        }
        entry.manager.as_deref()
    })
}

/// The template field of a container's memory limit.
pub const MEMORY_LIMIT_FIELD: [&str; 3] = ["f:resources", "f:limits", "f:memory"];

/// A failure of a pod that runs what KubeSent wrote for an incident, of a kind that change can cause.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct OwnChange {
    /// The incident whose change it is.
    pub incident: IncidentId,
    /// The change, in words (`the memory limit of app raised from 128Mi to 768Mi`).
    pub what: String,
}

/// Whether the failure (`kind`) of `container`, as the pod runs it, comes from KubeSent's change, as the
/// marks on its owner record it: the pod cannot be scheduled with a memory limit KubeSent raised, and
/// KubeSent is still the template's writer of that limit (`owner_managed_fields`: a human who raised it
/// further since owns it). `None` when KubeSent did not change what the pod runs, or took it back.
pub fn own_change(
    owner_annotations: &BTreeMap<String, String>,
    owner_managed_fields: &[ManagedFieldsEntry],
    container: &Container,
    kind: FailureKind,
) -> Option<OwnChange> {
    let incident = IncidentId(owner_annotations.get(INCIDENT_ANNOTATION)?.clone());
    let name = &container.name;
    if owner_annotations.contains_key(&format!("{REVERTED_ANNOTATION}.{name}")) {
        return None;
    }
    if kind == FailureKind::Unschedulable
        && let Some(original) = owner_annotations.get(&format!("{ORIGINAL_MEMORY_ANNOTATION}.{name}"))
        && let Ok(original) = MemoryQuantity::parse(original)
        && template_field_managers(owner_managed_fields, name, &MEMORY_LIMIT_FIELD)
            .any(|m| m == FIELD_MANAGER)
    {
        let runs = container
            .resources
            .as_ref()
            .and_then(|r| r.limits.as_ref())
            .and_then(|l| l.get("memory"))
            .and_then(|q| MemoryQuantity::parse(&q.0).ok());
        if let Some(runs) = runs.filter(|r| *r > original) {
            return Some(OwnChange {
                incident,
                what: format!("the memory limit of {name} raised from {original} to {runs}"),
            });
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn container(memory: &str, image: &str) -> Container {
        serde_json::from_value(
            json!({"name": "app", "image": image, "resources": {"limits": {"memory": memory}}}),
        )
        .expect("container")
    }

    fn managed(manager: &str) -> Vec<ManagedFieldsEntry> {
        vec![
            serde_json::from_value(
                json!({"manager": manager, "operation": "Update", "fieldsType": "FieldsV1",
                "fieldsV1": {"f:spec": {"f:template": {"f:spec": {"f:containers": {"k:{\"name\":\"app\"}": {
                    "f:resources": {"f:limits": {"f:memory": {}}}}}}}}}}),
            )
            .expect("entry"),
        ]
    }

    fn marks(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn a_pod_that_cannot_be_scheduled_with_the_limit_kubesent_raised_is_kubesents_own() {
        let ours = managed(FIELD_MANAGER);
        let raised =
            marks(&[("kubesent.io/incident", "inc-1"), ("kubesent.io/original-memory-limit.app", "384Mi")]);
        assert_eq!(
            own_change(&raised, &ours, &container("768Mi", "web:1"), FailureKind::Unschedulable),
            Some(OwnChange {
                incident: IncidentId("inc-1".into()),
                what: "the memory limit of app raised from 384Mi to 768Mi".into()
            })
        );
        assert_eq!(
            own_change(&raised, &ours, &container("384Mi", "web:1"), FailureKind::Unschedulable),
            None,
            "a pod of the revision before the raise"
        );
        assert_eq!(
            own_change(&raised, &ours, &container("768Mi", "web:1"), FailureKind::OomKilled),
            None,
            "killed again at the raised limit: the raise did not help, but did not cause it"
        );
        let taken_back = marks(&[
            ("kubesent.io/incident", "inc-1"),
            ("kubesent.io/original-memory-limit.app", "384Mi"),
            ("kubesent.io/reverted.app", "inc-1"),
        ]);
        assert_eq!(
            own_change(&taken_back, &ours, &container("768Mi", "web:1"), FailureKind::Unschedulable),
            None
        );
        assert_eq!(
            own_change(&BTreeMap::new(), &ours, &container("768Mi", "web:1"), FailureKind::Unschedulable),
            None
        );
        assert_eq!(
            own_change(
                &raised,
                &managed("kubectl-edit"),
                &container("1Gi", "web:1"),
                FailureKind::Unschedulable
            ),
            None,
            "a human raised it further since: the limit is theirs"
        );
    }
}
