//! Building the pod that replaces a bare pod: the original, sanitized of everything the server owns,
//! with the fix applied and the original value recorded in an annotation (so it can be reversed).

use std::collections::BTreeMap;

use k8s_openapi::{api::core::v1::Pod, apimachinery::pkg::api::resource::Quantity};
use kubesent_proto::{IncidentId, MemoryQuantity};

pub use kubesent_common::marks::{INCIDENT_ANNOTATION, ORIGINAL_MEMORY_ANNOTATION};

/// The pod without server-owned fields (uid, resourceVersion, timestamps, status, node binding), ready
/// to be created again.
pub fn sanitized(pod: &Pod) -> Pod {
    let mut clean = pod.clone();
    let meta = &mut clean.metadata;
    meta.uid = None;
    meta.resource_version = None;
    meta.creation_timestamp = None;
    meta.deletion_timestamp = None;
    meta.deletion_grace_period_seconds = None;
    meta.generation = None;
    meta.managed_fields = None;
    meta.self_link = None;
    meta.generate_name = None;
    if let Some(spec) = clean.spec.as_mut() {
        // The scheduler places the replacement again.
        spec.node_name = None;
    }
    clean.status = None;
    clean
}

/// `original` (sanitized) with `container`'s memory limit set to `to`. A memory request equal to the
/// old limit moves with it, so a Guaranteed pod stays Guaranteed.
pub fn with_memory_limit(
    original: &Pod,
    container: &str,
    from: MemoryQuantity,
    to: MemoryQuantity,
    incident: &IncidentId,
) -> Pod {
    let mut pod = sanitized(original);
    if let Some(spec) = pod.spec.as_mut()
        && let Some(c) = spec
            .containers
            .iter_mut()
            .chain(spec.init_containers.iter_mut().flatten())
            .find(|c| c.name == container)
    {
        let resources = c.resources.get_or_insert_with(Default::default);
        let limits = resources.limits.get_or_insert_with(BTreeMap::new);
        limits.insert("memory".into(), Quantity(to.to_string()));
        if let Some(requests) = resources.requests.as_mut()
            && let Some(request) = requests.get_mut("memory")
            && MemoryQuantity::parse(&request.0).is_ok_and(|r| r == from)
        {
            *request = Quantity(to.to_string());
        }
    }
    let annotations = pod.metadata.annotations.get_or_insert_with(BTreeMap::new);
    annotations
        .entry(format!("{ORIGINAL_MEMORY_ANNOTATION}.{container}"))
        .or_insert_with(|| from.to_string());
    annotations.insert(INCIDENT_ANNOTATION.into(), incident.to_string());
    pod
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_replacement_keeps_the_spec_raises_the_limit_and_records_the_original() {
        let original: Pod = serde_json::from_value(json!({
            "metadata": {"name": "web-1", "namespace": "shop", "uid": "u1", "resourceVersion": "9",
                "creationTimestamp": "2026-11-01T09:00:00Z", "labels": {"app": "web"}},
            "spec": {"nodeName": "node-a", "containers": [{"name": "app", "image": "web:1",
                "resources": {"limits": {"memory": "128Mi"}, "requests": {"memory": "128Mi", "cpu": "100m"}}}]},
            "status": {"phase": "Running"}
        }))
        .expect("pod");
        let id = IncidentId("inc-1".into());
        let pod = with_memory_limit(
            &original,
            "app",
            MemoryQuantity::from_mib(128),
            MemoryQuantity::from_mib(256),
            &id,
        );
        let value = serde_json::to_value(&pod).expect("json");
        assert_eq!(value["spec"]["containers"][0]["resources"]["limits"]["memory"], "256Mi");
        assert_eq!(value["spec"]["containers"][0]["resources"]["requests"]["memory"], "256Mi");
        assert_eq!(value["spec"]["containers"][0]["resources"]["requests"]["cpu"], "100m");
        assert_eq!(value["metadata"]["annotations"]["kubesent.io/original-memory-limit.app"], "128Mi");
        assert_eq!(value["metadata"]["labels"]["app"], "web");
        for gone in ["uid", "resourceVersion", "creationTimestamp"] {
            assert!(value["metadata"].get(gone).is_none(), "{gone}");
        }
        assert!(value.get("status").is_none());
        assert!(value["spec"].get("nodeName").is_none());
    }
}
