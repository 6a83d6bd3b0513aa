//! `pods/resize` (KEP-1287): only container cpu and memory may change, with the validation rules of
//! `ValidatePodResize`; everything else in the patch is dropped, as the resize strategy does.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::core::v1::{Container, Pod, ResourceRequirements},
    apimachinery::pkg::api::resource::Quantity,
};
use kubesent_proto::MemoryQuantity;
use serde_json::{Value, json};

use crate::{
    api_error::{ApiError, FieldError},
    pods,
    resources::PODS,
    store::Mutation,
};

/// First Kubernetes minor version that serves `pods/resize` by default.
pub const FIRST_MINOR_WITH_RESIZE: u32 = 33;
/// First minor version that allows memory limit decreases with `resizePolicy: NotRequired`.
const FIRST_MINOR_WITH_MEMORY_DECREASE: u32 = 35;

fn quantities(resources: &Option<ResourceRequirements>, section: &str) -> BTreeMap<String, Quantity> {
    let Some(r) = resources else { return BTreeMap::new() };
    let values = if section == "limits" { &r.limits } else { &r.requests };
    values.clone().unwrap_or_default()
}

fn memory(values: &BTreeMap<String, Quantity>) -> Option<MemoryQuantity> {
    values.get("memory").and_then(|q| MemoryQuantity::parse(&q.0).ok())
}

fn memory_policy_restarts(container: &Container) -> bool {
    container
        .resize_policy
        .iter()
        .flatten()
        .any(|p| p.resource_name == "memory" && p.restart_policy == "RestartContainer")
}

/// The pod after a resize patch, or the 422 the apiserver answers.
pub fn resized(old: &Value, patched: Value, minor: u32) -> Result<Mutation, ApiError> {
    let old_pod: Pod = serde_json::from_value(old.clone()).map_err(ApiError::internal)?;
    let new_pod: Pod = serde_json::from_value(patched).map_err(|e| {
        ApiError::bad_request(format!("Pod in version \"v1\" cannot be handled as a Pod: {e}"))
    })?;
    let name = old_pod.metadata.name.clone().unwrap_or_default();
    let invalid = |errors: Vec<FieldError>| ApiError::invalid(&PODS, &name, &errors);
    let (Some(old_spec), Some(new_spec)) = (&old_pod.spec, &new_pod.spec) else {
        return Err(invalid(vec![FieldError::required("spec", "")]));
    };
    let old_names: Vec<&str> = old_spec.containers.iter().map(|c| c.name.as_str()).collect();
    let new_names: Vec<&str> = new_spec.containers.iter().map(|c| c.name.as_str()).collect();
    if old_names != new_names {
        return Err(invalid(vec![FieldError::forbidden(
            "spec.containers",
            "containers may not be added, removed or renamed",
        )]));
    }
    let mut errors = Vec::new();
    let mut result = old_pod.clone();
    let result_spec = result.spec.as_mut().ok_or_else(|| ApiError::internal("pod without spec"))?;
    for (i, (before, after)) in old_spec.containers.iter().zip(&new_spec.containers).enumerate() {
        let path = format!("spec.containers[{i}].resources");
        for section in ["requests", "limits"] {
            let b = quantities(&before.resources, section);
            let a = quantities(&after.resources, section);
            let changed_other =
                b.keys().chain(a.keys()).any(|k| k != "cpu" && k != "memory" && b.get(k) != a.get(k));
            if changed_other {
                errors.push(FieldError::forbidden("spec", "only cpu and memory resources are mutable"));
            }
            if b.keys().any(|k| !a.contains_key(k)) {
                let what = if section == "requests" { "resource requests" } else { "resource limits" };
                errors.push(FieldError::forbidden(
                    format!("{path}.{section}"),
                    format!("{what} cannot be removed"),
                ));
            }
        }
        let (old_limit, new_limit) = (
            memory(&quantities(&before.resources, "limits")),
            memory(&quantities(&after.resources, "limits")),
        );
        if let (Some(o), Some(n)) = (old_limit, new_limit)
            && n < o
            && minor < FIRST_MINOR_WITH_MEMORY_DECREASE
            && !memory_policy_restarts(before)
        {
            errors.push(FieldError::forbidden(
                format!("{path}.limits[memory]"),
                "memory limits cannot be decreased unless resizePolicy is RestartContainer",
            ));
        }
        if let (Some(request), Some(limit)) = (memory(&quantities(&after.resources, "requests")), new_limit)
            && request > limit
        {
            errors.push(FieldError::invalid(
                format!("{path}.requests"),
                &request.to_string(),
                format!("must be less than or equal to memory limit of {limit}"),
            ));
        }
        result_spec.containers[i].resources = after.resources.clone();
    }
    let old_qos = pods::qos_class(old_spec);
    let new_qos = pods::qos_class(result_spec);
    if old_qos != new_qos {
        errors.push(FieldError::invalid(
            "spec",
            old_qos,
            "Pod QOS Class may not change as a result of resizing",
        ));
    }
    errors.dedup();
    if !errors.is_empty() {
        return Err(invalid(errors));
    }
    if result.spec == old_pod.spec {
        return Ok(Mutation::Unchanged);
    }
    let generation = result.metadata.generation.unwrap_or(1);
    result.metadata.generation = Some(generation + 1);
    let mut value = serde_json::to_value(&result).map_err(ApiError::internal)?;
    value["metadata"]["resourceVersion"] = json!(old_pod.metadata.resource_version);
    Ok(Mutation::Put(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(limit: &str, request: &str) -> Value {
        json!({"metadata": {"name": "web-1", "namespace": "shop", "generation": 1, "resourceVersion": "5"},
            "spec": {"containers": [{"name": "app", "image": "a:1",
                "resources": {"limits": {"memory": limit}, "requests": {"memory": request}},
                "resizePolicy": [{"resourceName": "memory", "restartPolicy": "NotRequired"}]}]}})
    }

    fn patched(old: &Value, limit: &str, request: &str) -> Value {
        let mut new = old.clone();
        new["spec"]["containers"][0]["resources"] =
            json!({"limits": {"memory": limit}, "requests": {"memory": request}});
        new
    }

    #[test]
    fn raising_memory_bumps_the_generation_and_keeps_everything_else() {
        let old = pod("256Mi", "128Mi");
        let mut new = patched(&old, "512Mi", "128Mi");
        new["spec"]["containers"][0]["image"] = json!("sneaky:2");
        let Ok(Mutation::Put(result)) = resized(&old, new, 36) else { panic!("resize accepted") };
        assert_eq!(result["spec"]["containers"][0]["resources"]["limits"]["memory"], "512Mi");
        assert_eq!(result["spec"]["containers"][0]["image"], "a:1", "non-resize changes are dropped");
        assert_eq!(result["metadata"]["generation"], 2);
    }

    #[test]
    fn a_qos_change_is_invalid() {
        let mut old = pod("256Mi", "256Mi");
        old["spec"]["containers"][0]["resources"] =
            json!({"limits": {"memory": "256Mi", "cpu": "1"}, "requests": {"memory": "256Mi", "cpu": "1"}});
        let mut new = old.clone();
        new["spec"]["containers"][0]["resources"]["limits"]["memory"] = json!("512Mi");
        let err = resized(&old, new, 36).expect_err("Guaranteed -> Burstable");
        assert_eq!(err.code, 422);
        assert!(
            err.message.contains("Pod QOS Class may not change as a result of resizing"),
            "{}",
            err.message
        );
    }

    #[test]
    fn memory_limit_decreases_need_restart_container_before_1_35() {
        let old = pod("512Mi", "128Mi");
        let err = resized(&old, patched(&old, "256Mi", "128Mi"), 34).expect_err("decrease refused");
        assert!(
            err.message.contains("memory limits cannot be decreased unless resizePolicy is RestartContainer")
        );
        assert!(resized(&old, patched(&old, "256Mi", "128Mi"), 35).is_ok());
    }

    #[test]
    fn requests_above_limits_and_removed_requests_are_invalid() {
        let old = pod("256Mi", "128Mi");
        let err = resized(&old, patched(&old, "256Mi", "300Mi"), 36).expect_err("request > limit");
        assert!(
            err.message.contains("must be less than or equal to memory limit of 256Mi"),
            "{}",
            err.message
        );
        let mut removed = old.clone();
        removed["spec"]["containers"][0]["resources"] = json!({"limits": {"memory": "256Mi"}});
        let err = resized(&old, removed, 36).expect_err("requests removed");
        assert!(err.message.contains("resource requests cannot be removed"), "{}", err.message);
    }
}
