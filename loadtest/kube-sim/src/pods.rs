//! Pod registry strategy: defaulting and validation on create, the update restrictions of
//! `ValidatePodUpdate`, graceful deletion (`CheckGracefulDelete`), and the `pods/log` rules.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::core::v1::{Container, Pod, PodSpec, PodStatus},
    apimachinery::pkg::api::resource::Quantity,
};
use kubesent_proto::MemoryQuantity;

use crate::{
    api_error::{ApiError, FieldError},
    resources::PODS,
};

/// The fields of a pod spec that an update may change (`updatablePodSpecFields`), in the order the
/// apiserver lists them in its error message.
const UPDATABLE_FIELDS_MESSAGE: &str = "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)";

/// Default `terminationGracePeriodSeconds`.
pub const DEFAULT_GRACE_SECONDS: i64 = 30;

fn is_dns_label(s: &str) -> bool {
    kubesent_proto::is_dns_label(s)
}

fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// Validates a pod for create and returns the field errors, empty when valid.
pub fn validate_create(pod: &Pod) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    if !is_dns_subdomain(name) {
        errors.push(FieldError::invalid(
            "metadata.name",
            name,
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character",
        ));
    }
    let Some(spec) = &pod.spec else {
        errors.push(FieldError::required("spec", ""));
        return errors;
    };
    if spec.containers.is_empty() {
        errors.push(FieldError::required("spec.containers", ""));
    }
    let mut seen = Vec::new();
    let all = spec
        .init_containers
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, c)| (format!("spec.initContainers[{i}]"), c))
        .chain(spec.containers.iter().enumerate().map(|(i, c)| (format!("spec.containers[{i}]"), c)));
    for (path, container) in all {
        if !is_dns_label(&container.name) {
            errors.push(FieldError::invalid(
                format!("{path}.name"),
                &container.name,
                "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character",
            ));
        } else if seen.contains(&container.name.as_str()) {
            errors.push(FieldError::duplicate(format!("{path}.name"), &container.name));
        }
        seen.push(container.name.as_str());
        if container.image.as_deref().is_none_or(|i| i.trim().is_empty()) {
            errors.push(FieldError::required(format!("{path}.image"), ""));
        }
        errors.extend(validate_resources(&path, container));
    }
    if let Some(policy) = &spec.restart_policy
        && !matches!(policy.as_str(), "Always" | "OnFailure" | "Never")
    {
        errors.push(FieldError {
            cause_type: "FieldValueNotSupported",
            field: "spec.restartPolicy".into(),
            detail: "supported values: \"Always\", \"OnFailure\", \"Never\"".into(),
            value: Some(format!("{policy:?}")),
        });
    }
    errors
}

fn validate_resources(path: &str, container: &Container) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let Some(resources) = &container.resources else { return errors };
    let mut parsed: BTreeMap<(&str, String), MemoryQuantity> = BTreeMap::new();
    for (section, values) in [("limits", &resources.limits), ("requests", &resources.requests)] {
        for (name, quantity) in values.iter().flatten() {
            let field = format!("{path}.resources.{section}[{name}]");
            if name == "cpu" {
                if parse_cpu_millis(&quantity.0).is_none() {
                    errors.push(FieldError::invalid(field, &quantity.0, "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"));
                }
                continue;
            }
            match MemoryQuantity::parse(&quantity.0) {
                Ok(q) => {
                    parsed.insert((section, name.clone()), q);
                }
                Err(_) => errors.push(FieldError::invalid(
                    field,
                    &quantity.0,
                    "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'",
                )),
            }
        }
    }
    if let (Some(request), Some(limit)) =
        (parsed.get(&("requests", "memory".into())), parsed.get(&("limits", "memory".into())))
        && request > limit
    {
        errors.push(FieldError::invalid(
            format!("{path}.resources.requests"),
            &request.to_string(),
            format!("must be less than or equal to memory limit of {limit}"),
        ));
    }
    errors
}

/// Milli-CPU of a CPU quantity, if it parses.
pub fn parse_cpu_millis(text: &str) -> Option<u64> {
    if let Some(m) = text.strip_suffix('m') {
        return m.parse::<u64>().ok();
    }
    text.parse::<f64>().ok().filter(|v| v.is_finite() && *v >= 0.0).map(|v| (v * 1000.0).ceil() as u64)
}

/// Sets a pod object's `DisruptionTarget=True` condition (`reason`, `message`), as the control plane does
/// before it deletes a pod it evicts (the taint eviction controller, the Eviction API).
pub fn mark_disruption_target(pod: &mut serde_json::Value, reason: &str, message: &str) {
    use serde_json::{Value, json};
    let condition = json!({"type": "DisruptionTarget", "status": "True", "reason": reason, "message": message,
        "lastTransitionTime": crate::api::now_time()});
    match pod.pointer_mut("/status/conditions").and_then(Value::as_array_mut) {
        Some(conditions) => {
            conditions.retain(|c| c.get("type") != Some(&json!("DisruptionTarget")));
            conditions.push(condition);
        }
        None => pod["status"]["conditions"] = json!([condition]),
    }
}

/// The `DefaultTolerationSeconds` admission plugin: a pod that does not already tolerate them tolerates
/// the `not-ready` and `unreachable` NoExecute taints for 300 s, after which the taint eviction
/// controller deletes it from a node that stays down.
fn default_toleration_seconds(spec: &mut PodSpec) {
    const DEFAULT_TOLERATION_SECONDS: i64 = 300;
    let tolerations = spec.tolerations.get_or_insert_with(Vec::new);
    for key in ["node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable"] {
        let covered = tolerations.iter().any(|t| {
            let effect_covers = t.effect.as_deref().is_none_or(|e| e.is_empty() || e == "NoExecute");
            let key_covers = t.key.as_deref() == Some(key)
                || (t.key.as_deref().is_none_or(str::is_empty) && t.operator.as_deref() == Some("Exists"));
            effect_covers && key_covers
        });
        if !covered {
            tolerations.push(k8s_openapi::api::core::v1::Toleration {
                key: Some(key.to_owned()),
                operator: Some("Exists".into()),
                effect: Some("NoExecute".into()),
                toleration_seconds: Some(DEFAULT_TOLERATION_SECONDS),
                ..Default::default()
            });
        }
    }
}

/// Applies the apiserver's defaults to a new pod and resets its status (`PrepareForCreate`).
pub fn default_for_create(pod: &mut Pod, namespace: &str, uid: String, now: jiff::Timestamp) {
    let meta = &mut pod.metadata;
    meta.namespace = Some(namespace.to_owned());
    meta.uid = Some(uid);
    meta.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now));
    meta.generation = Some(1);
    meta.deletion_timestamp = None;
    meta.deletion_grace_period_seconds = None;
    meta.resource_version = None;
    let spec = pod.spec.get_or_insert_with(PodSpec::default);
    spec.restart_policy.get_or_insert_with(|| "Always".into());
    spec.termination_grace_period_seconds.get_or_insert(DEFAULT_GRACE_SECONDS);
    spec.dns_policy.get_or_insert_with(|| "ClusterFirst".into());
    spec.scheduler_name.get_or_insert_with(|| "default-scheduler".into());
    spec.service_account_name.get_or_insert_with(|| "default".into());
    spec.enable_service_links.get_or_insert(true);
    spec.priority.get_or_insert(0);
    default_toleration_seconds(spec);
    for container in spec.init_containers.iter_mut().flatten().chain(spec.containers.iter_mut()) {
        container.termination_message_path.get_or_insert_with(|| "/dev/termination-log".into());
        container.termination_message_policy.get_or_insert_with(|| "File".into());
        let latest = container
            .image
            .as_deref()
            .is_some_and(|i| i.ends_with(":latest") || !i.rsplit('/').next().unwrap_or(i).contains(':'));
        container
            .image_pull_policy
            .get_or_insert_with(|| if latest { "Always".into() } else { "IfNotPresent".into() });
        // Requests default to limits where only limits are given.
        if let Some(resources) = container.resources.as_mut()
            && let Some(limits) = resources.limits.clone()
        {
            let requests = resources.requests.get_or_insert_with(BTreeMap::new);
            for (name, value) in limits {
                requests.entry(name).or_insert(value);
            }
        }
    }
    pod.status = Some(PodStatus {
        phase: Some("Pending".into()),
        qos_class: Some(qos_class(spec).into()),
        ..Default::default()
    });
}

/// The pod's QoS class (`Guaranteed`, `Burstable` or `BestEffort`).
pub fn qos_class(spec: &PodSpec) -> &'static str {
    let mut any = false;
    let mut guaranteed = true;
    for container in &spec.containers {
        let limits = container.resources.as_ref().and_then(|r| r.limits.clone()).unwrap_or_default();
        let requests = container.resources.as_ref().and_then(|r| r.requests.clone()).unwrap_or_default();
        any |= !limits.is_empty() || !requests.is_empty();
        for resource in ["cpu", "memory"] {
            match (limits.get(resource), requests.get(resource)) {
                (Some(l), Some(r)) if l == r => {}
                (Some(_), None) => {}
                _ => guaranteed = false,
            }
        }
    }
    if !any {
        "BestEffort"
    } else if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

/// Checks a pod update against `ValidatePodUpdate`: only images, `activeDeadlineSeconds`, added
/// tolerations and `terminationGracePeriodSeconds` may change in the spec.
pub fn validate_update(old: &Pod, new: &Pod) -> Result<(), ApiError> {
    let name = old.metadata.name.clone().unwrap_or_default();
    let (Some(old_spec), Some(new_spec)) = (&old.spec, &new.spec) else {
        return Err(ApiError::invalid(&PODS, &name, &[FieldError::required("spec", "")]));
    };
    let mut masked_old = old_spec.clone();
    let mut masked_new = new_spec.clone();
    for spec in [&mut masked_old, &mut masked_new] {
        for c in spec.containers.iter_mut().chain(spec.init_containers.iter_mut().flatten()) {
            c.image = None;
        }
        spec.active_deadline_seconds = None;
        spec.termination_grace_period_seconds = None;
    }
    // Tolerations may only be added.
    let old_tolerations = masked_old.tolerations.take().unwrap_or_default();
    let new_tolerations = masked_new.tolerations.take().unwrap_or_default();
    let tolerations_ok = old_tolerations.iter().all(|t| new_tolerations.contains(t));
    if masked_old != masked_new || !tolerations_ok {
        let detail = format!(
            "{UPDATABLE_FIELDS_MESSAGE}\n  core.PodSpec{{\n  \t... // spec differs in a field that may not change\n  }}\n"
        );
        return Err(ApiError::invalid(&PODS, &name, &[FieldError::forbidden("spec", detail)]));
    }
    let images_valid = new_spec.containers.iter().all(|c| c.image.as_deref().is_some_and(|i| !i.is_empty()));
    if !images_valid {
        return Err(ApiError::invalid(&PODS, &name, &[FieldError::required("spec.containers[0].image", "")]));
    }
    Ok(())
}

/// What a DELETE does to a pod (`CheckGracefulDelete`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodDeletion {
    /// Remove the object now.
    Immediate,
    /// Set `deletionTimestamp` this many seconds ahead; the kubelet finishes the delete.
    Graceful(i64),
    /// Already terminating with a grace at most as long: nothing changes.
    AlreadyTerminating,
}

/// Decides how a pod is deleted given the requested grace period.
pub fn deletion(pod: &Pod, requested_grace: Option<i64>) -> PodDeletion {
    let spec_grace =
        pod.spec.as_ref().and_then(|s| s.termination_grace_period_seconds).unwrap_or(DEFAULT_GRACE_SECONDS);
    let mut grace = requested_grace.unwrap_or(spec_grace);
    if grace < 0 {
        grace = 1;
    }
    let unscheduled = pod.spec.as_ref().and_then(|s| s.node_name.as_deref()).is_none_or(str::is_empty);
    let finished =
        matches!(pod.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"));
    if unscheduled || finished {
        grace = 0;
    }
    if let Some(current) = pod.metadata.deletion_grace_period_seconds
        && pod.metadata.deletion_timestamp.is_some()
        && grace >= current
    {
        return PodDeletion::AlreadyTerminating;
    }
    if grace == 0 { PodDeletion::Immediate } else { PodDeletion::Graceful(grace) }
}

/// Parsed `pods/log` query parameters.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LogOptions {
    /// `container`
    pub container: Option<String>,
    /// `previous`
    pub previous: bool,
    /// `tailLines`
    pub tail_lines: Option<usize>,
    /// `limitBytes`
    pub limit_bytes: Option<usize>,
    /// `timestamps`
    pub timestamps: bool,
    /// `sinceSeconds`
    pub since_seconds: Option<i64>,
    /// `sinceTime`
    pub since_time: Option<jiff::Timestamp>,
    /// `follow`
    pub follow: bool,
}

impl LogOptions {
    /// Parses and validates the query parameters like `ValidatePodLogOptions`.
    pub fn parse(query: &BTreeMap<String, String>, pod_name: &str) -> Result<Self, ApiError> {
        let boolean = |key: &str| query.get(key).is_some_and(|v| v == "true" || v == "1");
        let number = |key: &str| -> Result<Option<i64>, ApiError> {
            query
                .get(key)
                .map(|v| {
                    v.parse::<i64>()
                        .map_err(|_| ApiError::bad_request(format!("invalid value for {key}: {v:?}")))
                })
                .transpose()
        };
        let mut errors = Vec::new();
        let tail = number("tailLines")?;
        if let Some(t) = tail.filter(|t| *t < 0) {
            errors.push(FieldError::invalid_raw(
                "tailLines",
                t.to_string(),
                "must be greater than or equal to 0",
            ));
        }
        let limit = number("limitBytes")?;
        if let Some(l) = limit.filter(|l| *l < 1) {
            errors.push(FieldError::invalid_raw("limitBytes", l.to_string(), "must be greater than 0"));
        }
        let since_seconds = number("sinceSeconds")?;
        if let Some(s) = since_seconds.filter(|s| *s < 1) {
            errors.push(FieldError::invalid_raw("sinceSeconds", s.to_string(), "must be greater than 0"));
        }
        let since_time = query
            .get("sinceTime")
            .map(|t| {
                t.parse::<jiff::Timestamp>()
                    .map_err(|_| ApiError::bad_request(format!("invalid sinceTime {t:?}")))
            })
            .transpose()?;
        if since_seconds.is_some() && since_time.is_some() {
            errors.push(FieldError::forbidden(
                "",
                "at most one of `sinceTime` or `sinceSeconds` may be specified",
            ));
        }
        if !errors.is_empty() {
            let mut err = ApiError::invalid(&PODS, pod_name, &errors);
            err.message = format!(
                "PodLogOptions \"{pod_name}\" is invalid: {}",
                errors.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
            );
            return Err(err);
        }
        Ok(Self {
            container: query.get("container").filter(|c| !c.is_empty()).cloned(),
            previous: boolean("previous"),
            tail_lines: tail.map(|t| t as usize),
            limit_bytes: limit.map(|l| l as usize),
            timestamps: boolean("timestamps"),
            since_seconds,
            since_time,
            follow: boolean("follow"),
        })
    }
}

/// The container a log request is for, or the apiserver's 400 when it is ambiguous or unknown.
pub fn log_container<'a>(pod: &'a Pod, requested: Option<&str>) -> Result<&'a Container, ApiError> {
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    let spec = pod.spec.as_ref().ok_or_else(|| ApiError::bad_request(format!("pod {name} has no spec")))?;
    let all: Vec<&Container> = spec.init_containers.iter().flatten().chain(spec.containers.iter()).collect();
    match requested {
        Some(c) => all
            .into_iter()
            .find(|x| x.name == c)
            .ok_or_else(|| ApiError::bad_request(format!("container {c} is not valid for pod {name}"))),
        None if spec.containers.len() == 1 && spec.init_containers.as_ref().is_none_or(Vec::is_empty) => {
            Ok(&spec.containers[0])
        }
        None => {
            let names: Vec<&str> = spec.containers.iter().map(|c| c.name.as_str()).collect();
            let mut message = format!(
                "a container name must be specified for pod {name}, choose one of: [{}]",
                names.join(" ")
            );
            if let Some(init) = spec.init_containers.as_ref().filter(|i| !i.is_empty()) {
                let init_names: Vec<&str> = init.iter().map(|c| c.name.as_str()).collect();
                message.push_str(&format!(" or one of the init containers: [{}]", init_names.join(" ")));
            }
            Err(ApiError::bad_request(message))
        }
    }
}

/// The container (regular or init) named `name`.
pub fn container<'a>(pod: &'a Pod, name: &str) -> Option<&'a Container> {
    let spec = pod.spec.as_ref()?;
    spec.containers.iter().chain(spec.init_containers.iter().flatten()).find(|c| c.name == name)
}

/// The memory limit of a container, if it has one that parses.
pub fn memory_limit(container: &Container) -> Option<MemoryQuantity> {
    let limits = container.resources.as_ref()?.limits.as_ref()?;
    let Quantity(text) = limits.get("memory")?;
    MemoryQuantity::parse(text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(value: serde_json::Value) -> Pod {
        serde_json::from_value(value).expect("valid pod json")
    }

    #[test]
    fn a_pod_without_containers_or_images_is_invalid() {
        let errors =
            validate_create(&pod(json!({"metadata": {"name": "web-1"}, "spec": {"containers": []}})));
        assert_eq!(errors[0].to_string(), "spec.containers: Required value");
        let errors = validate_create(&pod(
            json!({"metadata": {"name": "web-1"}, "spec": {"containers": [{"name": "app"}]}}),
        ));
        assert_eq!(errors[0].to_string(), "spec.containers[0].image: Required value");
    }

    #[test]
    fn changing_resources_through_a_pod_update_is_forbidden_with_the_real_message() {
        let old = pod(
            json!({"metadata": {"name": "web-1"}, "spec": {"containers": [{"name": "app", "image": "a:1",
            "resources": {"limits": {"memory": "128Mi"}}}]}}),
        );
        let mut new = old.clone();
        new.spec.as_mut().expect("spec").containers[0].resources.as_mut().expect("res").limits =
            Some([("memory".to_owned(), Quantity("256Mi".into()))].into());
        let err = validate_update(&old, &new).expect_err("forbidden");
        assert_eq!(err.code, 422);
        assert!(err.message.starts_with("Pod \"web-1\" is invalid: spec: Forbidden: pod updates may not change fields other than `spec.containers[*].image`"), "{}", err.message);
        let mut image_only = old.clone();
        image_only.spec.as_mut().expect("spec").containers[0].image = Some("a:2".into());
        assert!(validate_update(&old, &image_only).is_ok());
    }

    #[test]
    fn unscheduled_pods_are_deleted_at_once_and_scheduled_ones_gracefully() {
        let unscheduled = pod(json!({"metadata": {"name": "p"}, "spec": {"containers": []}}));
        assert_eq!(deletion(&unscheduled, None), PodDeletion::Immediate);
        let scheduled = pod(json!({"metadata": {"name": "p"}, "spec": {"nodeName": "n", "containers": []}}));
        assert_eq!(deletion(&scheduled, None), PodDeletion::Graceful(30));
        assert_eq!(deletion(&scheduled, Some(0)), PodDeletion::Immediate);
        assert_eq!(deletion(&scheduled, Some(-5)), PodDeletion::Graceful(1));
    }

    #[test]
    fn log_requests_on_multi_container_pods_must_name_a_container() {
        let p = pod(
            json!({"metadata": {"name": "web-1"}, "spec": {"containers": [{"name": "app"}, {"name": "sidecar"}]}}),
        );
        let err = log_container(&p, None).expect_err("ambiguous");
        assert_eq!(
            err.message,
            "a container name must be specified for pod web-1, choose one of: [app sidecar]"
        );
        let err = log_container(&p, Some("app2")).expect_err("unknown");
        assert_eq!(err.message, "container app2 is not valid for pod web-1");
    }
}
