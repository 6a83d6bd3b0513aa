//! Dynamic admission: `MutatingWebhookConfiguration` and `ValidatingWebhookConfiguration`
//! (admissionregistration.k8s.io/v1), called over HTTP with an `AdmissionReview` v1 as the apiserver's
//! `MutatingAdmissionWebhook` and `ValidatingAdmissionWebhook` plugins call them.
//!
//! The decisions are pure functions here: which webhooks a request reaches ([`matches`]: rules by
//! operation, group, version, resource/subresource and scope, then `namespaceSelector` and
//! `objectSelector`), the review sent ([`review`]), and what an answer means ([`read_answer`]: allowed,
//! a JSONPatch to apply, or a refusal worded as the apiserver words it). [`call`] is the transport.
//!
//! As the apiserver does: mutating webhooks run one after another in the order of their configurations'
//! names, each seeing the object the previous one patched; validating webhooks see the final object and
//! the first refusal wins; a webhook that cannot be reached, times out or answers nonsense is skipped
//! under `failurePolicy: Ignore` and refuses the request (500) under `Fail`, the default. A webhook whose
//! `sideEffects` are not `None`/`NoneOnDryRun` refuses a dry run.
//!
//! Not modelled: `matchConditions` (CEL), `matchPolicy: Equivalent` (requests match by their own
//! group/version only), `reinvocationPolicy: IfNeeded`, and `service` client configs (kube-sim has no
//! Services: such a webhook is unreachable, `no endpoints available for service`, as when its pods are
//! down). Unlike the apiserver, kube-sim accepts `http://` URLs, so tests need no certificates;
//! `https://` URLs are verified against the `caBundle`.

use std::{collections::BTreeMap, time::Duration};

use base64::Engine as _;
use k8s_openapi::{
    api::admissionregistration::v1::{
        MutatingWebhookConfiguration, RuleWithOperations, ValidatingWebhookConfiguration, WebhookClientConfig,
    },
    apimachinery::pkg::apis::meta::v1::LabelSelector,
};
use serde_json::{Value, json};

use crate::{api_error::ApiError, rbac::UserInfo, resources::ResourceDef};

/// The operation a write is, in admission's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// A new object.
    Create,
    /// A change to an object or a subresource.
    Update,
    /// A deletion.
    Delete,
}

impl Operation {
    /// `CREATE`, `UPDATE` or `DELETE`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Create => "CREATE",
            Self::Update => "UPDATE",
            Self::Delete => "DELETE",
        }
    }

    fn options_kind(self) -> &'static str {
        match self {
            Self::Create => "CreateOptions",
            Self::Update => "UpdateOptions",
            Self::Delete => "DeleteOptions",
        }
    }
}

/// What admission knows of one write.
#[derive(Debug, Clone)]
pub struct Attributes<'a> {
    /// The resource written.
    pub def: &'a ResourceDef,
    /// The subresource (`status`, `resize`, …), if any.
    pub subresource: Option<&'a str>,
    /// The operation.
    pub operation: Operation,
    /// The object's namespace (`""` for a cluster-scoped one).
    pub namespace: &'a str,
    /// The object's name (for a generated name, empty).
    pub name: &'a str,
    /// The labels of the object's namespace (for a Namespace, its own).
    pub namespace_labels: BTreeMap<String, String>,
    /// The user who writes.
    pub user: &'a UserInfo,
    /// The writer's field manager, as the request's options name it.
    pub field_manager: &'a str,
    /// `dryRun=All`.
    pub dry_run: bool,
}

/// One configured webhook, as admission uses it.
#[derive(Debug, Clone)]
pub struct Webhook {
    /// The webhook's name (`memory-clamp.policy.example.com`).
    pub name: String,
    /// Whether it may patch (a mutating webhook).
    pub mutating: bool,
    /// Where it is served.
    pub client: WebhookClientConfig,
    /// What it is called for.
    pub rules: Vec<RuleWithOperations>,
    /// `failurePolicy: Fail` (the default) rather than `Ignore`.
    pub fail_closed: bool,
    /// `timeoutSeconds` (default 10).
    pub timeout: Duration,
    /// `namespaceSelector` (default: everything).
    pub namespace_selector: Option<LabelSelector>,
    /// `objectSelector` (default: everything).
    pub object_selector: Option<LabelSelector>,
    /// Whether `sideEffects` allow calling it on a dry run (`None` or `NoneOnDryRun`).
    pub dry_run_safe: bool,
}

/// The webhooks of mutating configurations, configurations in name order.
pub fn mutating_webhooks(mut configs: Vec<MutatingWebhookConfiguration>) -> Vec<Webhook> {
    configs.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    configs
        .into_iter()
        .flat_map(|c| c.webhooks.unwrap_or_default())
        .map(|w| Webhook {
            name: w.name,
            mutating: true,
            client: w.client_config,
            rules: w.rules.unwrap_or_default(),
            fail_closed: w.failure_policy.as_deref() != Some("Ignore"),
            timeout: timeout(w.timeout_seconds),
            namespace_selector: w.namespace_selector,
            object_selector: w.object_selector,
            dry_run_safe: dry_run_safe(&w.side_effects),
        })
        .collect()
}

/// The webhooks of validating configurations, configurations in name order.
pub fn validating_webhooks(mut configs: Vec<ValidatingWebhookConfiguration>) -> Vec<Webhook> {
    configs.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    configs
        .into_iter()
        .flat_map(|c| c.webhooks.unwrap_or_default())
        .map(|w| Webhook {
            name: w.name,
            mutating: false,
            client: w.client_config,
            rules: w.rules.unwrap_or_default(),
            fail_closed: w.failure_policy.as_deref() != Some("Ignore"),
            timeout: timeout(w.timeout_seconds),
            namespace_selector: w.namespace_selector,
            object_selector: w.object_selector,
            dry_run_safe: dry_run_safe(&w.side_effects),
        })
        .collect()
}

fn timeout(seconds: Option<i32>) -> Duration {
    Duration::from_secs(u64::try_from(seconds.unwrap_or(10).clamp(1, 30)).unwrap_or(10))
}

fn dry_run_safe(side_effects: &str) -> bool {
    matches!(side_effects, "None" | "NoneOnDryRun")
}

fn listed(list: Option<&Vec<String>>, wanted: &str) -> bool {
    list.is_some_and(|l| l.iter().any(|v| v == "*" || v == wanted))
}

/// Whether `rule` covers the request (`resources` as `pods`, `pods/status`, `pods/*`, `*/*`; `scope`).
pub fn rule_matches(rule: &RuleWithOperations, attrs: &Attributes<'_>) -> bool {
    let resource = rule.resources.iter().flatten().any(|r| {
        let (res, sub) = r.split_once('/').unwrap_or((r.as_str(), ""));
        (res == "*" || res == attrs.def.plural)
            && (sub == "*" || sub == attrs.subresource.unwrap_or_default())
    });
    let scope = match rule.scope.as_deref() {
        Some("Cluster") => !attrs.def.namespaced,
        Some("Namespaced") => attrs.def.namespaced,
        _ => true,
    };
    listed(rule.operations.as_ref(), attrs.operation.as_str())
        && listed(rule.api_groups.as_ref(), attrs.def.group)
        && listed(rule.api_versions.as_ref(), attrs.def.version)
        && resource
        && scope
}

/// Whether a selector selects `labels` (a missing selector selects everything).
fn selected(selector: Option<&LabelSelector>, labels: &BTreeMap<String, String>) -> bool {
    selector.is_none_or(|s| crate::disruption::selects(Some(s), labels))
}

fn labels_of(object: Option<&Value>) -> BTreeMap<String, String> {
    object
        .and_then(|o| o.pointer("/metadata/labels"))
        .and_then(|l| serde_json::from_value(l.clone()).ok())
        .unwrap_or_default()
}

/// Whether `hook` is called for this request: a rule covers it, the namespace selector selects its
/// namespace (cluster-scoped objects other than Namespaces are never excluded by it) and the object
/// selector selects the new or the old object. Writes of webhook configurations never match.
pub fn matches(hook: &Webhook, attrs: &Attributes<'_>, object: Option<&Value>, old: Option<&Value>) -> bool {
    // The apiserver never sends webhook configurations to webhooks: a broken webhook could not be removed.
    if attrs.def.group == "admissionregistration.k8s.io" {
        return false;
    }
    let namespace_ok = if attrs.def.namespaced || attrs.def.plural == "namespaces" {
        selected(hook.namespace_selector.as_ref(), &attrs.namespace_labels)
    } else {
        true
    };
    let object_ok = hook.object_selector.as_ref().is_none_or(|selector| {
        [object, old].into_iter().flatten().any(|o| selected(Some(selector), &labels_of(Some(o))))
    });
    hook.rules.iter().any(|r| rule_matches(r, attrs)) && namespace_ok && object_ok
}

/// The `AdmissionReview` sent for this request.
pub fn review(uid: &str, attrs: &Attributes<'_>, object: Option<&Value>, old: Option<&Value>) -> Value {
    let kind = json!({"group": attrs.def.group, "version": attrs.def.version, "kind": attrs.def.kind});
    let resource =
        json!({"group": attrs.def.group, "version": attrs.def.version, "resource": attrs.def.plural});
    let mut request = json!({
        "uid": uid,
        "kind": kind, "resource": resource, "requestKind": kind, "requestResource": resource,
        "name": attrs.name,
        "operation": attrs.operation.as_str(),
        "userInfo": {"username": attrs.user.name, "groups": attrs.user.groups},
        "object": object.cloned().unwrap_or(Value::Null),
        "oldObject": old.cloned().unwrap_or(Value::Null),
        "dryRun": attrs.dry_run,
        "options": {"kind": attrs.operation.options_kind(), "apiVersion": "meta.k8s.io/v1"},
    });
    if !attrs.namespace.is_empty() {
        request["namespace"] = json!(attrs.namespace);
    }
    if let Some(sub) = attrs.subresource {
        request["subResource"] = json!(sub);
        request["requestSubResource"] = json!(sub);
    }
    if !attrs.field_manager.is_empty() && attrs.operation != Operation::Delete {
        request["options"]["fieldManager"] = json!(attrs.field_manager);
    }
    json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request})
}

/// What a webhook's answer means.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// Allowed, with the JSONPatch to apply (mutating webhooks only) and the warnings to pass on.
    Allowed {
        /// The decoded JSONPatch document.
        patch: Option<Value>,
        /// `response.warnings`.
        warnings: Vec<String>,
    },
    /// Refused: the error the apiserver answers with.
    Denied(ApiError),
}

/// Why a webhook could not be used (subject to `failurePolicy`).
#[derive(Debug, Clone, PartialEq)]
pub struct CallError(pub String);

/// The reasons a webhook's refusal may carry through; others are dropped (kube-sim's errors carry
/// only the apiserver's own reasons).
const PASSED_REASONS: &[&str] =
    &["Forbidden", "Invalid", "BadRequest", "Unauthorized", "NotFound", "Conflict", "TooManyRequests"];

/// The apiserver's error for a refusal (`ToStatusErr`): a code under 400 becomes 400, the message is
/// `admission webhook "<name>" denied the request: <message or reason>` (or `without explanation`).
pub fn denial(hook_name: &str, status: Option<&Value>) -> ApiError {
    let text = |key: &str| status.and_then(|s| s.get(key)).and_then(Value::as_str).filter(|s| !s.is_empty());
    let denied_by = format!("admission webhook \"{hook_name}\" denied the request");
    let message = match (text("message"), text("reason")) {
        (Some(message), _) => format!("{denied_by}: {message}"),
        (None, Some(reason)) => format!("{denied_by}: {reason}"),
        (None, None) => format!("{denied_by} without explanation"),
    };
    let code = status
        .and_then(|s| s.get("code"))
        .and_then(Value::as_u64)
        .and_then(|c| u16::try_from(c).ok())
        .filter(|c| (400..600).contains(c))
        .unwrap_or(400);
    let reason = text("reason").and_then(|r| PASSED_REASONS.iter().find(|p| **p == r)).copied().unwrap_or("");
    ApiError::webhook_denied(code, reason, message)
}

/// Reads a webhook's answer to the review with `uid`, checking it as the apiserver does
/// (`VerifyAdmissionResponse`): an `AdmissionReview` v1 with a `response` for this `uid`, a patch only
/// from a mutating webhook and only as a base64 `JSONPatch`.
pub fn read_answer(hook: &Webhook, uid: &str, answer: &Value) -> Result<Answer, CallError> {
    let invalid = |why: String| CallError(format!("received invalid webhook response: {why}"));
    let api_version = answer.get("apiVersion").and_then(Value::as_str).unwrap_or_default();
    let kind = answer.get("kind").and_then(Value::as_str).unwrap_or_default();
    if api_version != "admission.k8s.io/v1" || kind != "AdmissionReview" {
        return Err(invalid(format!(
            "expected webhook response of admission.k8s.io/v1, Kind=AdmissionReview, got {api_version}, Kind={kind}"
        )));
    }
    let Some(response) = answer.get("response").filter(|r| r.is_object()) else {
        return Err(invalid("webhook response was absent".into()));
    };
    let answered_uid = response.get("uid").and_then(Value::as_str).unwrap_or_default();
    if answered_uid != uid {
        return Err(invalid(format!("expected response.uid={uid:?}, got {answered_uid:?}")));
    }
    let allowed = response.get("allowed").and_then(Value::as_bool).unwrap_or(false);
    let patch_text = response.get("patch").and_then(Value::as_str).filter(|p| !p.is_empty());
    let patch = match patch_text {
        None => None,
        Some(_) if !hook.mutating => {
            return Err(invalid("validating webhooks may not return patches".into()));
        }
        Some(encoded) => {
            match response.get("patchType").and_then(Value::as_str) {
                None => {
                    return Err(invalid("webhook returned response.patch but not response.patchType".into()));
                }
                Some("JSONPatch") => {}
                Some(other) => {
                    return Err(invalid(format!("webhook returned invalid response.patchType of {other:?}")));
                }
            }
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .map_err(|e| invalid(format!("illegal base64 data in response.patch: {e}")))?;
            Some(
                serde_json::from_slice(&bytes)
                    .map_err(|e| invalid(format!("decoding response.patch: {e}")))?,
            )
        }
    };
    if !allowed {
        return Ok(Answer::Denied(denial(&hook.name, response.get("status"))));
    }
    let warnings = response
        .get("warnings")
        .and_then(Value::as_array)
        .map(|w| w.iter().filter_map(Value::as_str).map(str::to_owned).collect())
        .unwrap_or_default();
    Ok(Answer::Allowed { patch, warnings })
}

/// The apiserver's 500 for a webhook it could not use under `failurePolicy: Fail`.
pub fn call_failed(hook_name: &str, error: &CallError) -> ApiError {
    ApiError::internal(format!("failed calling webhook \"{hook_name}\": {}", error.0))
}

/// The URL the review is posted to: the configured one with `?timeout=<n>s`, as the apiserver sends it.
fn url_of(hook: &Webhook) -> Result<String, CallError> {
    let seconds = hook.timeout.as_secs();
    if let Some(url) = &hook.client.url {
        let sep = if url.contains('?') { '&' } else { '?' };
        return Ok(format!("{url}{sep}timeout={seconds}s"));
    }
    match &hook.client.service {
        Some(service) => {
            let path = service.path.as_deref().unwrap_or("");
            let port = service.port.unwrap_or(443);
            Err(CallError(format!(
                "failed to call webhook: Post \"https://{}.{}.svc:{port}{path}?timeout={seconds}s\": no endpoints available for service \"{}\"",
                service.name, service.namespace, service.name
            )))
        }
        None => Err(CallError("failed to call webhook: no url or service in clientConfig".into())),
    }
}

/// Posts `review` to the webhook and returns its JSON answer. Runs on a thread of its own with its own
/// small runtime, so it may be called from the synchronous write path whatever runtime that is on (on
/// a multi-threaded runtime the worker is handed back to it while the call lasts).
pub fn call(hook: &Webhook, review: &Value) -> Result<Value, CallError> {
    let url = url_of(hook)?;
    let blocking = || {
        std::thread::scope(|scope| {
            scope.spawn(|| post(hook, &url, review)).join().unwrap_or_else(|_| {
                Err(CallError(format!("failed to call webhook: Post {url:?}: the call panicked")))
            })
        })
    };
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(blocking),
        _ => blocking(),
    }
}

fn post(hook: &Webhook, url: &str, review: &Value) -> Result<Value, CallError> {
    let failed = |why: String| CallError(format!("failed to call webhook: Post {url:?}: {why}"));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| failed(format!("no runtime: {e}")))?;
    runtime.block_on(async {
        let mut builder = reqwest::Client::builder().timeout(hook.timeout).no_proxy();
        if let Some(bundle) = hook.client.ca_bundle.as_ref().filter(|b| !b.0.is_empty()) {
            let certs = reqwest::Certificate::from_pem_bundle(&bundle.0)
                .map_err(|e| failed(format!("invalid caBundle: {e}")))?;
            builder = builder.tls_certs_merge(certs);
        }
        let client = builder.build().map_err(|e| failed(e.to_string()))?;
        let response = client.post(url).json(review).send().await.map_err(|e| {
            if e.is_timeout() {
                failed("context deadline exceeded".into())
            } else if e.is_connect() {
                failed(format!("dial tcp: connect: connection refused ({e})"))
            } else {
                failed(e.to_string())
            }
        })?;
        let status = response.status();
        let body = response.bytes().await.map_err(|e| failed(e.to_string()))?;
        if !status.is_success() {
            return Err(CallError(format!(
                "failed to call webhook: the server responded with the status code {} but did not return more information",
                status.as_u16()
            )));
        }
        serde_json::from_slice(&body)
            .map_err(|e| CallError(format!("received invalid webhook response: decoding the answer: {e}")))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::{DEPLOYMENTS, NAMESPACES, PODS};

    fn hook(rules: Value) -> Webhook {
        Webhook {
            name: "clamp.policy.example.com".into(),
            mutating: true,
            client: WebhookClientConfig { url: Some("http://127.0.0.1:1/".into()), ..Default::default() },
            rules: serde_json::from_value(rules).expect("rules"),
            fail_closed: true,
            timeout: Duration::from_secs(10),
            namespace_selector: None,
            object_selector: None,
            dry_run_safe: true,
        }
    }

    fn attrs<'a>(
        def: &'a ResourceDef,
        sub: Option<&'a str>,
        op: Operation,
        user: &'a UserInfo,
    ) -> Attributes<'a> {
        Attributes {
            def,
            subresource: sub,
            operation: op,
            namespace: "shop",
            name: "web",
            namespace_labels: BTreeMap::from([("team".into(), "shop".into())]),
            user,
            field_manager: "kubectl-client-side-apply",
            dry_run: false,
        }
    }

    #[test]
    fn rules_match_by_operation_group_version_resource_subresource_and_scope() {
        let admin = UserInfo::admin();
        let pods_create = hook(json!([{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"],
            "resources": ["pods"]}]));
        assert!(matches(&pods_create, &attrs(&PODS, None, Operation::Create, &admin), None, None));
        assert!(!matches(&pods_create, &attrs(&PODS, None, Operation::Update, &admin), None, None));
        assert!(!matches(&pods_create, &attrs(&PODS, Some("status"), Operation::Create, &admin), None, None));
        assert!(!matches(&pods_create, &attrs(&DEPLOYMENTS, None, Operation::Create, &admin), None, None));

        let everything = hook(json!([{"operations": ["*"], "apiGroups": ["*"], "apiVersions": ["*"],
            "resources": ["*/*"]}]));
        assert!(matches(&everything, &attrs(&PODS, Some("resize"), Operation::Update, &admin), None, None));
        assert!(matches(&everything, &attrs(&DEPLOYMENTS, None, Operation::Delete, &admin), None, None));

        let subresources = hook(json!([{"operations": ["UPDATE"], "apiGroups": [""], "apiVersions": ["v1"],
            "resources": ["pods/resize"]}]));
        assert!(matches(&subresources, &attrs(&PODS, Some("resize"), Operation::Update, &admin), None, None));
        assert!(!matches(&subresources, &attrs(&PODS, None, Operation::Update, &admin), None, None));

        let cluster_only = hook(json!([{"operations": ["*"], "apiGroups": ["*"], "apiVersions": ["*"],
            "resources": ["*"], "scope": "Cluster"}]));
        assert!(!matches(&cluster_only, &attrs(&PODS, None, Operation::Create, &admin), None, None));
        assert!(matches(&cluster_only, &attrs(&NAMESPACES, None, Operation::Create, &admin), None, None));
    }

    #[test]
    fn selectors_pick_the_namespace_by_its_labels_and_the_object_by_its_new_or_old_labels() {
        let admin = UserInfo::admin();
        let mut selective = hook(json!([{"operations": ["*"], "apiGroups": ["*"], "apiVersions": ["*"],
            "resources": ["*"]}]));
        selective.namespace_selector =
            Some(serde_json::from_value(json!({"matchLabels": {"team": "shop"}})).expect("selector"));
        selective.object_selector = Some(
            serde_json::from_value(json!({"matchExpressions": [{"key": "tier", "operator": "In",
                "values": ["web"]}]}))
            .expect("selector"),
        );
        let web = json!({"metadata": {"labels": {"tier": "web"}}});
        let db = json!({"metadata": {"labels": {"tier": "db"}}});
        let request = attrs(&PODS, None, Operation::Update, &admin);
        assert!(matches(&selective, &request, Some(&web), Some(&db)));
        assert!(matches(&selective, &request, Some(&db), Some(&web)), "the old object's labels count too");
        assert!(!matches(&selective, &request, Some(&db), Some(&db)));
        let mut elsewhere = request.clone();
        elsewhere.namespace_labels = BTreeMap::new();
        assert!(!matches(&selective, &elsewhere, Some(&web), None));
    }

    #[test]
    fn the_review_carries_the_request_as_the_apiserver_sends_it() {
        let admin = UserInfo::admin();
        let pod = json!({"metadata": {"name": "web"}});
        let sent =
            review("u-1", &attrs(&PODS, Some("resize"), Operation::Update, &admin), Some(&pod), Some(&pod));
        assert_eq!(sent["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(sent["request"]["uid"], "u-1");
        assert_eq!(sent["request"]["kind"], json!({"group": "", "version": "v1", "kind": "Pod"}));
        assert_eq!(sent["request"]["resource"]["resource"], "pods");
        assert_eq!(sent["request"]["subResource"], "resize");
        assert_eq!(sent["request"]["operation"], "UPDATE");
        assert_eq!(sent["request"]["namespace"], "shop");
        assert_eq!(sent["request"]["userInfo"]["username"], "kubernetes-admin");
        assert_eq!(sent["request"]["options"]["kind"], "UpdateOptions");
        assert_eq!(sent["request"]["options"]["fieldManager"], "kubectl-client-side-apply");
    }

    fn answer(response: Value) -> Value {
        json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response})
    }

    #[test]
    fn an_allowed_answer_carries_its_decoded_json_patch_and_warnings() {
        let patch =
            json!([{"op": "replace", "path": "/spec/containers/0/resources/limits/memory", "value": "16Mi"}]);
        let encoded = base64::engine::general_purpose::STANDARD.encode(patch.to_string());
        let read = read_answer(
            &hook(json!([])),
            "u-1",
            &answer(json!({"uid": "u-1", "allowed": true, "patchType": "JSONPatch", "patch": encoded,
                "warnings": ["memory clamped"]})),
        );
        assert_eq!(read, Ok(Answer::Allowed { patch: Some(patch), warnings: vec!["memory clamped".into()] }));
    }

    #[test]
    fn a_refusal_is_worded_as_the_apiserver_words_it_with_at_least_a_400() {
        let read = read_answer(
            &hook(json!([])),
            "u-1",
            &answer(json!({"uid": "u-1", "allowed": false,
                "status": {"code": 200, "message": "image registry.evil/x is not allowed"}})),
        );
        let Ok(Answer::Denied(error)) = read else { panic!("a denial: {read:?}") };
        assert_eq!(error.code, 400);
        assert_eq!(
            error.message,
            "admission webhook \"clamp.policy.example.com\" denied the request: image registry.evil/x is not allowed"
        );
        let forbidden = denial("x.example.com", Some(&json!({"code": 403, "reason": "Forbidden"})));
        assert_eq!((forbidden.code, forbidden.reason), (403, "Forbidden"));
        assert_eq!(forbidden.message, "admission webhook \"x.example.com\" denied the request: Forbidden");
        let silent = denial("x.example.com", None);
        assert_eq!(
            silent.message,
            "admission webhook \"x.example.com\" denied the request without explanation"
        );
    }

    #[test]
    fn answers_the_apiserver_would_not_accept_are_call_errors() {
        let mutating = hook(json!([]));
        let mut validating = hook(json!([]));
        validating.mutating = false;
        let cases = [
            (
                &mutating,
                json!({"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview",
                "response": {"uid": "u-1", "allowed": true}}),
                "expected webhook response of admission.k8s.io/v1",
            ),
            (
                &mutating,
                json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}),
                "webhook response was absent",
            ),
            (
                &mutating,
                answer(json!({"uid": "u-2", "allowed": true})),
                "expected response.uid=\"u-1\", got \"u-2\"",
            ),
            (
                &mutating,
                answer(json!({"uid": "u-1", "allowed": true, "patch": "W10="})),
                "response.patch but not response.patchType",
            ),
            (
                &mutating,
                answer(json!({"uid": "u-1", "allowed": true, "patch": "W10=", "patchType": "Merge"})),
                "invalid response.patchType of \"Merge\"",
            ),
            (
                &mutating,
                answer(json!({"uid": "u-1", "allowed": true, "patch": "!!", "patchType": "JSONPatch"})),
                "illegal base64",
            ),
            (
                &validating,
                answer(json!({"uid": "u-1", "allowed": true, "patch": "W10=", "patchType": "JSONPatch"})),
                "validating webhooks may not return patches",
            ),
        ];
        for (hook, body, expected) in cases {
            let read = read_answer(hook, "u-1", &body);
            assert!(
                matches!(&read, Err(CallError(why)) if why.contains(expected)),
                "{body}: expected {expected:?}, got {read:?}"
            );
        }
    }

    #[test]
    fn a_webhook_behind_a_service_is_unreachable_and_says_which_service() {
        let mut behind_service = hook(json!([]));
        behind_service.client = serde_json::from_value(
            json!({"service": {"namespace": "policy", "name": "clamp", "path": "/mutate"}}),
        )
        .expect("client config");
        let Err(error) = call(&behind_service, &json!({})) else { panic!("unreachable") };
        assert!(error.0.contains("https://clamp.policy.svc:443/mutate?timeout=10s"), "{}", error.0);
        assert!(error.0.ends_with("no endpoints available for service \"clamp\""), "{}", error.0);
    }
}
