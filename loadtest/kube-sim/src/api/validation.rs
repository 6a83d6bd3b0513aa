//! Validation of the non-pod kinds the services write or read: events.k8s.io Events (what kube-runtime's
//! `Recorder` sends) and the selectors of workload objects.

use serde_json::Value;

use crate::{
    api_error::{ApiError, FieldError},
    resources::{
        DEPLOYMENTS, EVENTS_V1, JOBS, MUTATINGWEBHOOKCONFIGURATIONS, REPLICASETS, ResourceDef, STATEFULSETS,
        VALIDATINGWEBHOOKCONFIGURATIONS,
    },
};

fn text<'a>(value: &'a Value, pointer: &str) -> Option<&'a str> {
    value.pointer(pointer).and_then(Value::as_str).filter(|s| !s.is_empty())
}

fn qualified_name(name: &str) -> bool {
    let (prefix, rest) = match name.rsplit_once('/') {
        Some((p, r)) => (Some(p), r),
        None => (None, name),
    };
    let rest_ok = !rest.is_empty()
        && rest.len() <= 63
        && rest.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && rest.starts_with(|c: char| c.is_ascii_alphanumeric())
        && rest.ends_with(|c: char| c.is_ascii_alphanumeric());
    rest_ok && prefix.is_none_or(|p| !p.is_empty() && p.split('.').all(kubesent_proto::is_dns_label))
}

/// `ValidateEventCreate` for events.k8s.io/v1.
fn event_errors(value: &Value) -> Vec<FieldError> {
    let mut errors = Vec::new();
    if text(value, "/eventTime").is_none() {
        errors.push(FieldError::required("eventTime", ""));
    }
    match text(value, "/type") {
        Some("Normal" | "Warning") => {}
        Some(other) => errors.push(FieldError {
            cause_type: "FieldValueNotSupported",
            field: "type".into(),
            detail: "supported values: \"Normal\", \"Warning\"".into(),
            value: Some(format!("{other:?}")),
        }),
        None => errors.push(FieldError::required("type", "")),
    }
    match text(value, "/reportingController") {
        Some(controller) if qualified_name(controller) => {}
        Some(controller) => errors.push(FieldError::invalid(
            "reportingController",
            controller,
            "name part must consist of alphanumeric characters, '-', '_' or '.'",
        )),
        None => errors.push(FieldError::required("reportingController", "")),
    }
    for field in ["reportingInstance", "action", "reason"] {
        match text(value, &format!("/{field}")) {
            None => errors.push(FieldError::required(field, "")),
            Some(v) if v.len() > 128 => {
                errors.push(FieldError::invalid(field, "", "can have at most 128 characters"))
            }
            Some(_) => {}
        }
    }
    if text(value, "/note").is_some_and(|n| n.len() > 1024) {
        errors.push(FieldError::invalid("note", "", "can have at most 1024 characters"));
    }
    if let Some(series) = value.get("series").filter(|s| !s.is_null()) {
        if series.get("count").and_then(Value::as_i64).is_none_or(|c| c < 2) {
            errors.push(FieldError::invalid_raw(
                "series.count",
                series.get("count").map(ToString::to_string).unwrap_or_default(),
                "should be at least 2",
            ));
        }
        if text(series, "/lastObservedTime").is_none() {
            errors.push(FieldError::required("series.lastObservedTime", ""));
        }
    }
    for deprecated in
        ["deprecatedSource", "deprecatedFirstTimestamp", "deprecatedLastTimestamp", "deprecatedCount"]
    {
        if value.get(deprecated).is_some_and(|v| !v.is_null() && v != &Value::Object(Default::default())) {
            errors.push(FieldError::forbidden(deprecated, "deprecated field must not be set"));
        }
    }
    errors
}

fn selector_errors(value: &Value) -> Vec<FieldError> {
    let Some(selector) = value.pointer("/spec/selector").filter(|s| !s.is_null()) else {
        return vec![FieldError::required("spec.selector", "")];
    };
    let labels = value.pointer("/spec/template/metadata/labels").and_then(Value::as_object);
    let match_labels = selector.get("matchLabels").and_then(Value::as_object);
    let matches = match (match_labels, labels) {
        (Some(wanted), Some(have)) => wanted.iter().all(|(k, v)| have.get(k) == Some(v)),
        (None, _) => true,
        (Some(_), None) => false,
    };
    if matches {
        Vec::new()
    } else {
        vec![FieldError::invalid_raw(
            "spec.template.metadata.labels",
            labels.map(|l| Value::Object(l.clone()).to_string()).unwrap_or_else(|| "null".into()),
            "`selector` does not match template `labels`",
        )]
    }
}

/// Validation on create, for the kinds that have rules here.
pub fn validate_create(def: &ResourceDef, name: &str, value: &Value) -> Result<(), ApiError> {
    let errors = if def == &EVENTS_V1 {
        event_errors(value)
    } else if def == &DEPLOYMENTS || def == &REPLICASETS || def == &STATEFULSETS {
        selector_errors(value)
    } else if def == &JOBS {
        job_errors(value)
    } else if def == &MUTATINGWEBHOOKCONFIGURATIONS || def == &VALIDATINGWEBHOOKCONFIGURATIONS {
        webhook_errors(value)
    } else {
        Vec::new()
    };
    if errors.is_empty() { Ok(()) } else { Err(ApiError::invalid(def, name, &errors)) }
}

/// The admissionregistration/v1 checks of a webhook configuration (`ValidateMutatingWebhookConfiguration`):
/// unique names of at least three dot-separated segments, exactly one of `url` and `service`, and
/// `sideEffects` and `admissionReviewVersions` that v1 requires.
fn webhook_errors(value: &Value) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let mut seen = Vec::new();
    for (i, webhook) in value.get("webhooks").and_then(Value::as_array).into_iter().flatten().enumerate() {
        let at = |field: &str| format!("webhooks[{i}].{field}");
        match text(webhook, "/name") {
            None => errors.push(FieldError::required(at("name"), "")),
            Some(name) if seen.contains(&name) => errors.push(FieldError::duplicate(at("name"), name)),
            Some(name)
                if name.split('.').count() < 3 || !name.split('.').all(kubesent_proto::is_dns_label) =>
            {
                errors.push(FieldError::invalid(
                    at("name"),
                    name,
                    "should be a domain with at least three segments separated by dots",
                ));
            }
            Some(name) => seen.push(name),
        }
        let url = text(webhook, "/clientConfig/url");
        let service = webhook.pointer("/clientConfig/service").filter(|s| s.is_object());
        match (url, service) {
            (Some(_), Some(_)) | (None, None) => {
                errors.push(FieldError::required(
                    at("clientConfig"),
                    "exactly one of url or service is required",
                ));
            }
            (Some(url), None) if !(url.starts_with("https://") || url.starts_with("http://")) => {
                errors.push(FieldError::invalid(
                    at("clientConfig.url"),
                    url,
                    "'https' is the only allowed URL scheme",
                ));
            }
            _ => {}
        }
        match text(webhook, "/sideEffects") {
            Some("None" | "NoneOnDryRun") => {}
            Some(other) => {
                errors.push(FieldError::not_supported(at("sideEffects"), other, &["None", "NoneOnDryRun"]))
            }
            None => {
                errors.push(FieldError::required(at("sideEffects"), "must specify one of None, NoneOnDryRun"))
            }
        }
        let versions = webhook.get("admissionReviewVersions").and_then(Value::as_array);
        if !versions.is_some_and(|v| v.iter().any(|v| v == "v1" || v == "v1beta1")) {
            errors
                .push(FieldError::required(at("admissionReviewVersions"), "must specify one of v1, v1beta1"));
        }
        if let Some(policy) = text(webhook, "/failurePolicy")
            && !matches!(policy, "Fail" | "Ignore")
        {
            errors.push(FieldError::not_supported(at("failurePolicy"), policy, &["Fail", "Ignore"]));
        }
        if let Some(seconds) = webhook.get("timeoutSeconds").and_then(Value::as_i64)
            && !(1..=30).contains(&seconds)
        {
            errors.push(FieldError::invalid_raw(
                at("timeoutSeconds"),
                seconds.to_string(),
                "the timeout value must be between 1 and 30 seconds",
            ));
        }
    }
    errors
}

/// A Job's pods may not restart forever: `restartPolicy` is `OnFailure` or `Never`.
fn job_errors(value: &Value) -> Vec<FieldError> {
    let policy = text(value, "/spec/template/spec/restartPolicy").unwrap_or("Always");
    if matches!(policy, "OnFailure" | "Never") {
        Vec::new()
    } else {
        vec![FieldError::not_supported("spec.template.spec.restartPolicy", policy, &["OnFailure", "Never"])]
    }
}

/// Validation on update: create rules plus immutable fields.
pub fn validate_update(def: &ResourceDef, name: &str, old: &Value, new: &Value) -> Result<(), ApiError> {
    let mut errors = if def == &EVENTS_V1 {
        let mut errors = event_errors(new);
        for field in [
            "reason",
            "action",
            "type",
            "eventTime",
            "regarding",
            "related",
            "reportingController",
            "reportingInstance",
        ] {
            if old.get(field) != new.get(field) {
                errors.push(FieldError::invalid_raw(
                    field,
                    new.get(field).map(ToString::to_string).unwrap_or_default(),
                    "field is immutable",
                ));
            }
        }
        errors
    } else if def == &DEPLOYMENTS || def == &REPLICASETS || def == &STATEFULSETS {
        let mut errors = selector_errors(new);
        if old.pointer("/spec/selector") != new.pointer("/spec/selector") {
            errors.push(FieldError::invalid_raw(
                "spec.selector",
                new.pointer("/spec/selector").map(ToString::to_string).unwrap_or_default(),
                "field is immutable",
            ));
        }
        errors
    } else if def == &MUTATINGWEBHOOKCONFIGURATIONS || def == &VALIDATINGWEBHOOKCONFIGURATIONS {
        webhook_errors(new)
    } else {
        Vec::new()
    };
    errors.dedup();
    if errors.is_empty() { Ok(()) } else { Err(ApiError::invalid(def, name, &errors)) }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_webhook_configuration_needs_a_dotted_name_one_client_and_what_v1_requires() {
        let config = json!({"webhooks": [
            {"name": "clamp", "clientConfig": {}, "rules": []},
            {"name": "ok.policy.example.com", "clientConfig": {"url": "http://127.0.0.1:1/"},
                "sideEffects": "None", "admissionReviewVersions": ["v1"], "timeoutSeconds": 31},
        ]});
        let error = validate_create(&MUTATINGWEBHOOKCONFIGURATIONS, "clamp", &config).expect_err("invalid");
        assert_eq!(error.code, 422);
        for expected in [
            "webhooks[0].name: Invalid value: \"clamp\": should be a domain with at least three segments separated by dots",
            "webhooks[0].clientConfig: Required value: exactly one of url or service is required",
            "webhooks[0].sideEffects: Required value: must specify one of None, NoneOnDryRun",
            "webhooks[0].admissionReviewVersions: Required value: must specify one of v1, v1beta1",
            "webhooks[1].timeoutSeconds: Invalid value: 31: the timeout value must be between 1 and 30 seconds",
        ] {
            assert!(error.message.contains(expected), "{expected:?} in {}", error.message);
        }
        let valid = json!({"webhooks": [config["webhooks"][1].clone()]});
        let mut valid = valid;
        valid["webhooks"][0]["timeoutSeconds"] = json!(5);
        assert!(validate_create(&VALIDATINGWEBHOOKCONFIGURATIONS, "ok", &valid).is_ok());
    }
}
