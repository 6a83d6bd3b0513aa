//! apiserver `Status` errors with the exact reasons, codes and messages kube-rs and kubectl match on.

use axum::{
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde_json::{Value, json};

use crate::resources::ResourceDef;

/// An error answered as a `Status` object.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// HTTP status code, repeated in the body's `code`.
    pub code: u16,
    /// The `reason` (`NotFound`, `Conflict`, …).
    pub reason: &'static str,
    /// Human-readable message, as the real apiserver words it.
    pub message: String,
    /// The `details` object, if any.
    pub details: Option<Value>,
    /// `Retry-After` seconds, for 429s.
    pub retry_after: Option<u32>,
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self { code, reason, message: message.into(), details: None, retry_after: None }
    }

    fn with_details(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }

    /// 404 `pods "web-1" not found`.
    pub fn not_found(def: &ResourceDef, name: &str) -> Self {
        Self::new(404, "NotFound", format!("{} \"{name}\" not found", def.qualified_plural()))
            .with_details(def.error_details(name))
    }

    /// 403 from an admission plugin: `pods "web-1" is forbidden: <why>` (for an object named by
    /// `generateName`, the prefix: admission sees it before the name is made).
    pub fn admission_forbidden(def: &ResourceDef, name: &str, why: &str) -> Self {
        Self::new(403, "Forbidden", format!("{} \"{name}\" is forbidden: {why}", def.qualified_plural()))
            .with_details(def.error_details(name))
    }

    /// The Eviction API's refusal: 429 when a PodDisruptionBudget does not allow it (`cause`: why, as a
    /// `DisruptionBudget` cause), 500 when several budgets select the pod.
    pub fn eviction_refused(code: u16, message: String, cause: Option<String>) -> Self {
        let reason = if code == 429 { "TooManyRequests" } else { "InternalError" };
        let error = Self::new(code, reason, message);
        match cause {
            Some(cause) => {
                error.with_details(json!({"causes": [{"reason": "DisruptionBudget", "message": cause}]}))
            }
            None => error,
        }
    }

    /// 403 for new content in a namespace being deleted, as the NamespaceLifecycle admission plugin
    /// refuses it.
    pub fn namespace_terminating(def: &ResourceDef, name: &str, namespace: &str) -> Self {
        let mut details = def.error_details(name);
        details["causes"] = json!([{"reason": "NamespaceTerminating",
            "message": format!("namespace {namespace} is being terminated"), "field": "metadata.namespace"}]);
        Self::new(
            403,
            "Forbidden",
            format!(
                "{} \"{name}\" is forbidden: unable to create new content in namespace {namespace} because it is being terminated",
                def.qualified_plural()
            ),
        )
        .with_details(details)
    }

    /// 404 for a path the server does not serve.
    pub fn no_route() -> Self {
        Self::new(404, "NotFound", "the server could not find the requested resource").with_details(json!({}))
    }

    /// 409 `pods "web-1" already exists`.
    pub fn already_exists(def: &ResourceDef, name: &str) -> Self {
        Self::new(409, "AlreadyExists", format!("{} \"{name}\" already exists", def.qualified_plural()))
            .with_details(def.error_details(name))
    }

    /// 409 optimistic-lock conflict on update.
    pub fn conflict(def: &ResourceDef, name: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                def.qualified_plural()
            ),
        )
        .with_details(def.error_details(name))
    }

    /// 409 of a server-side apply that would change fields other managers set, with a
    /// `FieldManagerConflict` cause per field.
    pub fn apply_conflict(message: String, causes: Vec<Value>) -> Self {
        Self::new(409, "Conflict", message).with_details(json!({"causes": causes}))
    }

    /// 409 failed delete precondition, worded as the storage layer words it.
    pub fn precondition_failed(def: &ResourceDef, namespace: &str, name: &str, detail: String) -> Self {
        let key = if namespace.is_empty() {
            format!("/registry/{}/{name}", def.plural)
        } else {
            format!("/registry/{}/{namespace}/{name}", def.plural)
        };
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": StorageError: invalid object, Code: 4, Key: {key}, ResourceVersion: 0, AdditionalErrorMsg: Precondition failed: {detail}",
                def.qualified_plural()
            ),
        )
        .with_details(def.error_details(name))
    }

    /// 422 `Pod "web-1" is invalid: field: detail` with one cause per field error.
    pub fn invalid(def: &ResourceDef, name: &str, causes: &[FieldError]) -> Self {
        let joined = match causes {
            [one] => one.to_string(),
            many => format!("[{}]", many.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")),
        };
        let kind =
            if def.group.is_empty() { def.kind.to_owned() } else { format!("{}.{}", def.kind, def.group) };
        let causes: Vec<Value> = causes
            .iter()
            .map(|c| json!({"reason": c.cause_type, "message": c.detail_message(), "field": c.field}))
            .collect();
        let mut details = json!({"name": name, "kind": def.kind, "causes": causes});
        if !def.group.is_empty() {
            details["group"] = json!(def.group);
        }
        Self::new(422, "Invalid", format!("{kind} \"{name}\" is invalid: {joined}")).with_details(details)
    }

    /// 400 BadRequest with a free-text message.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    /// 405 for a verb the resource does not support.
    pub fn method_not_supported(def: &ResourceDef, verb: &str) -> Self {
        Self::new(
            405,
            "MethodNotAllowed",
            format!("{verb} is not supported on resources of kind \"{}\"", def.plural),
        )
    }

    /// 406 for a request that accepts no encoding the server writes (kube-sim writes JSON only).
    pub fn not_acceptable() -> Self {
        Self::new(
            406,
            "NotAcceptable",
            "only the following media types are accepted: application/json, application/json;stream=watch",
        )
    }

    /// 415 for a request body in a format the server does not decode for this type.
    pub fn undecodable_body(content_type: &str) -> Self {
        Self::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, application/vnd.kubernetes.protobuf; got {content_type:?}"
            ),
        )
    }

    /// 415 for an unsupported patch content type.
    pub fn unsupported_media_type(content_type: &str) -> Self {
        Self::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json; got {content_type:?}"
            ),
        )
    }

    /// 410 Expired for a `continue` token older than the retained history.
    pub fn expired_continue() -> Self {
        Self::new(
            410,
            "Expired",
            "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.",
        )
    }

    /// 410 Expired for a watch resourceVersion older than the retained history.
    pub fn expired_watch(requested: u64, oldest: u64) -> Self {
        Self::new(410, "Expired", format!("too old resource version: {requested} ({oldest})"))
    }

    /// An admission webhook's refusal: its code (at least 400), the reason it gave if it is one the
    /// apiserver uses, and the `admission webhook "x" denied the request: …` message.
    pub fn webhook_denied(code: u16, reason: &'static str, message: String) -> Self {
        Self::new(code, reason, message)
    }

    /// 500 InternalError.
    pub fn internal(message: impl std::fmt::Display) -> Self {
        Self::new(500, "InternalError", format!("Internal error occurred: {message}"))
    }

    /// 429 TooManyRequests with `Retry-After`.
    pub fn too_many_requests(retry_after: u32) -> Self {
        let mut e = Self::new(429, "TooManyRequests", "Too many requests, please try again later.")
            .with_details(json!({"retryAfterSeconds": retry_after}));
        e.retry_after = Some(retry_after);
        e
    }

    /// Whether a controller's create failed for a reason it reports (`FailedCreate`) and backs off from:
    /// admission refused it (a LimitRange, a quota, a webhook's refusal or failure) or the write was
    /// invalid. Races (404, 409) and a namespace being deleted are not reported, as the real
    /// controllers do not.
    pub fn refuses_creation(&self) -> bool {
        let terminating = self
            .details
            .as_ref()
            .and_then(|d| d.pointer("/causes/0/reason"))
            .is_some_and(|r| r == "NamespaceTerminating");
        !matches!(self.code, 404 | 409) && !terminating
    }

    /// The `Status` body.
    pub fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": self.message, "reason": self.reason, "code": self.code,
        });
        if let Some(details) = &self.details {
            status["details"] = details.clone();
        }
        status
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&self.to_status()).unwrap_or_default();
        let mut response = (code, [(header::CONTENT_TYPE, "application/json")], body).into_response();
        if let Some(secs) = self.retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

/// One field error of a 422, like apimachinery's `field.Error`.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldError {
    /// `FieldValueRequired`, `FieldValueInvalid`, `FieldValueForbidden`, …
    pub cause_type: &'static str,
    /// The field path, e.g. `spec.containers[0].name`.
    pub field: String,
    /// The detail after the type prefix.
    pub detail: String,
    /// The offending value, for `Invalid value:` messages.
    pub value: Option<String>,
}

impl FieldError {
    /// `Required value: …`
    pub fn required(field: impl Into<String>, detail: impl Into<String>) -> Self {
        Self { cause_type: "FieldValueRequired", field: field.into(), detail: detail.into(), value: None }
    }

    /// `Invalid value: "x": …` (the value quoted, as Go's `%q` prints a string).
    pub fn invalid(field: impl Into<String>, value: &str, detail: impl Into<String>) -> Self {
        Self::invalid_raw(field, format!("{value:?}"), detail)
    }

    /// `Invalid value: 0x0: …` (the value printed as given).
    pub fn invalid_raw(
        field: impl Into<String>,
        value: impl Into<String>,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            cause_type: "FieldValueInvalid",
            field: field.into(),
            detail: detail.into(),
            value: Some(value.into()),
        }
    }

    /// `Forbidden: …`
    pub fn forbidden(field: impl Into<String>, detail: impl Into<String>) -> Self {
        Self { cause_type: "FieldValueForbidden", field: field.into(), detail: detail.into(), value: None }
    }

    /// `Unsupported value: "x": supported values: "a", "b"`
    pub fn not_supported(field: impl Into<String>, value: &str, supported: &[&str]) -> Self {
        let listed: Vec<String> = supported.iter().map(|s| format!("{s:?}")).collect();
        Self {
            cause_type: "FieldValueNotSupported",
            field: field.into(),
            detail: format!("supported values: {}", listed.join(", ")),
            value: Some(format!("{value:?}")),
        }
    }

    /// `Duplicate value: "x"`
    pub fn duplicate(field: impl Into<String>, value: &str) -> Self {
        Self {
            cause_type: "FieldValueDuplicate",
            field: field.into(),
            detail: String::new(),
            value: Some(format!("{value:?}")),
        }
    }

    fn detail_message(&self) -> String {
        let prefix = match self.cause_type {
            "FieldValueRequired" => "Required value",
            "FieldValueForbidden" => "Forbidden",
            "FieldValueDuplicate" => "Duplicate value",
            "FieldValueNotSupported" => "Unsupported value",
            _ => "Invalid value",
        };
        match (&self.value, self.detail.is_empty()) {
            (Some(v), true) => format!("{prefix}: {v}"),
            (Some(v), false) => format!("{prefix}: {v}: {}", self.detail),
            (None, true) => prefix.to_owned(),
            (None, false) => format!("{prefix}: {}", self.detail),
        }
    }
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.detail_message())
    }
}
