//! The API: the HTTP front ([`http`]: routing, verbs, watch streaming, tables), and the apiserver's write
//! paths (create, update, patch, delete, resize) below, shared by the HTTP front and the in-process
//! controllers, so a ReplicaSet's pods go through the same defaulting and validation as a client's.

mod admit;
pub(crate) mod http;
mod managed_fields;
pub(crate) mod openapi;
mod patch;
pub(crate) mod protobuf;
mod scale;
mod table;
mod validation;

use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};

pub(crate) use self::managed_fields::record as record_managed_fields;
use self::{admit::Write, managed_fields::Operation, patch::PatchType};
use crate::{
    actor::Actor,
    admission,
    api_error::{ApiError, FieldError},
    pods::{self, PodDeletion},
    resources::{
        JOBS, LIMITRANGES, NAMESPACES, PODDISRUPTIONBUDGETS, PODS, RESOURCEQUOTAS, ResourceDef, SECRETS,
    },
    state::SimState,
    store::{Mutation, StoredObject},
    webhooks,
};

/// What a DELETE asked for.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeleteOptions {
    /// `gracePeriodSeconds`
    pub grace_period_seconds: Option<i64>,
    /// `preconditions.uid`
    pub uid: Option<String>,
    /// `preconditions.resourceVersion`
    pub resource_version: Option<String>,
    /// `propagationPolicy: Orphan` (or `orphanDependents: true`): the dependents lose their owner
    /// reference and stay.
    pub orphan: bool,
}

impl DeleteOptions {
    /// Parses a `DeleteOptions` body (an empty body means defaults).
    pub fn parse(body: &[u8]) -> Result<Self, ApiError> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self::default());
        }
        let options: Value = serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("error decoding DeleteOptions: {e}")))?;
        Self::from_value(&options)
    }

    /// DeleteOptions given as a JSON value (an Eviction's `deleteOptions`).
    pub fn from_value(options: &Value) -> Result<Self, ApiError> {
        let grace = match options.get("gracePeriodSeconds") {
            Some(v) if !v.is_null() => Some(
                v.as_i64().ok_or_else(|| ApiError::bad_request("gracePeriodSeconds must be an integer"))?,
            ),
            _ => None,
        };
        Ok(Self {
            grace_period_seconds: grace,
            uid: options.pointer("/preconditions/uid").and_then(Value::as_str).map(str::to_owned),
            resource_version: options
                .pointer("/preconditions/resourceVersion")
                .and_then(Value::as_str)
                .map(str::to_owned),
            orphan: options.get("propagationPolicy").and_then(Value::as_str) == Some("Orphan")
                || options.get("orphanDependents").and_then(Value::as_bool) == Some(true),
        })
    }
}

/// `Time` as the apiserver writes it (second precision).
pub fn now_time() -> Value {
    json!(now_string())
}

fn resource_version_of(value: &Value) -> Option<&str> {
    value.pointer("/metadata/resourceVersion").and_then(Value::as_str).filter(|s| !s.is_empty())
}

/// Carries the server-owned metadata over from the stored object and bumps `generation` on spec changes.
fn carry_metadata(old: &Value, new: &mut Value) {
    for key in
        ["uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "namespace", "name"]
    {
        match old.pointer(&format!("/metadata/{key}")) {
            Some(v) => new["metadata"][key] = v.clone(),
            None => {
                if let Some(meta) = new.get_mut("metadata").and_then(Value::as_object_mut) {
                    meta.remove(key);
                }
            }
        }
    }
    if let Some(generation) = old.pointer("/metadata/generation").and_then(Value::as_i64) {
        let bumped = if old.get("spec") != new.get("spec") { generation + 1 } else { generation };
        new["metadata"]["generation"] = json!(bumped);
    }
}

/// Now, as `managedFields` times are written.
fn now_string() -> String {
    jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// An apply configuration names its object's kind and name, as the apiserver requires.
fn check_applied(def: &ResourceDef, name: &str, config: &Value) -> Result<(), ApiError> {
    let api_version = def.api_version();
    let given_version = config.get("apiVersion").and_then(Value::as_str).unwrap_or_default();
    let given_kind = config.get("kind").and_then(Value::as_str).unwrap_or_default();
    if given_version != api_version || given_kind != def.kind {
        return Err(ApiError::bad_request(format!(
            "the API version in the data ({given_version}) does not match the expected API version ({api_version})"
        )));
    }
    if config.pointer("/metadata/name").and_then(Value::as_str) != Some(name) {
        return Err(ApiError::bad_request("the name of the object does not match the name on the URL"));
    }
    if config.pointer("/metadata/managedFields").is_some_and(|m| !m.is_null()) {
        return Err(ApiError::bad_request("metadata.managedFields must be nil"));
    }
    Ok(())
}

/// A random 5-character suffix from the apiserver's `generateName` alphabet.
pub fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let raw = uuid::Uuid::new_v4();
    raw.as_bytes().iter().take(5).map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char).collect()
}

/// Rejects bodies the real apiserver could not decode into the kind's Go type.
pub fn typed_check(def: &ResourceDef, value: &Value) -> Result<(), ApiError> {
    // Every write comes here: decoding is the check, encoding again is left to field validation.
    typed_decode(def, value, false).map(|_| ())
}

/// The body decoded into the kind's type and encoded again (what the apiserver keeps of it), or why it
/// does not decode; `None` for a kind without a typed check.
pub fn typed_round_trip(def: &ResourceDef, value: &Value) -> Result<Option<Value>, ApiError> {
    typed_decode(def, value, true)
}

/// Decodes `value` as the kind's type; encodes it again when `encode`.
fn typed_decode(def: &ResourceDef, value: &Value, encode: bool) -> Result<Option<Value>, ApiError> {
    use k8s_openapi::api::{
        admissionregistration::v1 as admissionregistration, apps::v1 as apps, batch::v1 as batch,
        coordination::v1 as coordination, core::v1 as core, events::v1 as events, rbac::v1 as rbac,
    };
    fn check_as<T: serde::de::DeserializeOwned + serde::Serialize>(
        def: &ResourceDef,
        value: &Value,
        encode: bool,
    ) -> Result<Option<Value>, ApiError> {
        let typed = T::deserialize(value).map_err(|e| {
            ApiError::bad_request(format!(
                "{} in version \"{}\" cannot be handled as a {}: {e}",
                def.kind, def.version, def.kind
            ))
        })?;
        Ok(if encode { serde_json::to_value(typed).ok() } else { None })
    }
    match (def.group, def.plural) {
        ("", "pods") => check_as::<core::Pod>(def, value, encode),
        ("", "events") => check_as::<core::Event>(def, value, encode),
        ("", "namespaces") => check_as::<core::Namespace>(def, value, encode),
        ("", "nodes") => check_as::<core::Node>(def, value, encode),
        ("", "configmaps") => check_as::<core::ConfigMap>(def, value, encode),
        ("", "secrets") => check_as::<core::Secret>(def, value, encode),
        ("coordination.k8s.io", _) => check_as::<coordination::Lease>(def, value, encode),
        ("events.k8s.io", _) => check_as::<events::Event>(def, value, encode),
        ("apps", "deployments") => check_as::<apps::Deployment>(def, value, encode),
        ("apps", "replicasets") => check_as::<apps::ReplicaSet>(def, value, encode),
        ("apps", "statefulsets") => check_as::<apps::StatefulSet>(def, value, encode),
        ("apps", "daemonsets") => check_as::<apps::DaemonSet>(def, value, encode),
        ("apps", "controllerrevisions") => check_as::<apps::ControllerRevision>(def, value, encode),
        ("batch", "jobs") => check_as::<batch::Job>(def, value, encode),
        ("batch", "cronjobs") => check_as::<batch::CronJob>(def, value, encode),
        ("", "serviceaccounts") => check_as::<core::ServiceAccount>(def, value, encode),
        ("", "limitranges") => check_as::<core::LimitRange>(def, value, encode),
        ("", "resourcequotas") => check_as::<core::ResourceQuota>(def, value, encode),
        ("policy", "poddisruptionbudgets") => {
            check_as::<k8s_openapi::api::policy::v1::PodDisruptionBudget>(def, value, encode)
        }
        ("admissionregistration.k8s.io", "mutatingwebhookconfigurations") => {
            check_as::<admissionregistration::MutatingWebhookConfiguration>(def, value, encode)
        }
        ("admissionregistration.k8s.io", "validatingwebhookconfigurations") => {
            check_as::<admissionregistration::ValidatingWebhookConfiguration>(def, value, encode)
        }
        ("rbac.authorization.k8s.io", "roles") => check_as::<rbac::Role>(def, value, encode),
        ("rbac.authorization.k8s.io", "rolebindings") => check_as::<rbac::RoleBinding>(def, value, encode),
        ("rbac.authorization.k8s.io", "clusterroles") => check_as::<rbac::ClusterRole>(def, value, encode),
        ("rbac.authorization.k8s.io", "clusterrolebindings") => {
            check_as::<rbac::ClusterRoleBinding>(def, value, encode)
        }
        _ => Ok(None),
    }
}

/// How a write treats fields the kind does not have (`fieldValidation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldValidation {
    /// Drop them silently.
    Ignore,
    /// Drop them and say so in a `Warning` header.
    Warn,
    /// Refuse the write.
    Strict,
}

impl FieldValidation {
    /// From the query parameter (`Ignore` when absent, as for clients that do not ask).
    pub fn parse(value: Option<&str>) -> Result<Self, ApiError> {
        match value {
            None | Some("" | "Ignore") => Ok(Self::Ignore),
            Some("Warn") => Ok(Self::Warn),
            Some("Strict") => Ok(Self::Strict),
            Some(other) => Err(ApiError::bad_request(format!(
                "fieldValidation parameter unsupported: {other}. Valid values are Ignore, Warn and Strict"
            ))),
        }
    }
}

/// The warnings (`unknown field "spec.foo"`) a write of `value` gets under `mode`, or the refusal the
/// apiserver's strict decoding gives.
pub fn field_validation(
    def: &ResourceDef,
    value: &Value,
    mode: FieldValidation,
) -> Result<Vec<String>, ApiError> {
    if mode == FieldValidation::Ignore {
        return Ok(Vec::new());
    }
    let Some(kept) = typed_round_trip(def, value)? else { return Ok(Vec::new()) };
    let unknown: Vec<String> =
        openapi::unknown_fields(value, &kept).into_iter().map(|f| format!("unknown field \"{f}\"")).collect();
    if mode == FieldValidation::Strict && !unknown.is_empty() {
        return Err(ApiError::bad_request(format!(
            "{} in version \"{}\" cannot be handled as a {}: strict decoding error: {}",
            def.kind,
            def.version,
            def.kind,
            unknown.join(", ")
        )));
    }
    Ok(unknown)
}

/// Checks a body's `kind` and `apiVersion` (when given) and its shape.
pub fn check_body(def: &ResourceDef, value: &Value) -> Result<(), ApiError> {
    if !value.is_object() {
        return Err(ApiError::bad_request(format!(
            "the object provided is unrecognized (must be of type {})",
            def.kind
        )));
    }
    if let Some(kind) = value.get("kind").and_then(Value::as_str)
        && kind != def.kind
    {
        return Err(ApiError::bad_request(format!(
            "the object provided is unrecognized (must be of type {}): {kind}",
            def.kind
        )));
    }
    if let Some(api_version) = value.get("apiVersion").and_then(Value::as_str)
        && api_version != def.api_version()
    {
        return Err(ApiError::bad_request(format!(
            "the API version in the data ({api_version}) does not match the expected API version ({})",
            def.api_version()
        )));
    }
    typed_check(def, value)
}

/// How a delete ended.
#[derive(Debug)]
pub enum Deleted {
    /// A pod: the object as returned (terminating, or gone).
    Pod(Arc<StoredObject>),
    /// Any other kind: removed (or marked for deletion when it has finalizers).
    Other(Arc<StoredObject>),
}

/// The phase of namespace `ns` (`Active`, `Terminating`), `None` when it does not exist.
pub(crate) fn namespace_phase(store: &crate::store::Store, ns: &str) -> Option<String> {
    store.get(&NAMESPACES, "", ns).ok().and_then(|namespace| namespace.field("status.phase"))
}

/// What the apiserver sets on a new namespace: the `kubernetes` finalizer, phase Active and the
/// `kubernetes.io/metadata.name` label.
fn namespace_defaults(value: &mut Value, name: &str) {
    value["metadata"]["labels"]["kubernetes.io/metadata.name"] = json!(name);
    value["spec"]["finalizers"] = json!(["kubernetes"]);
    value["status"] = json!({"phase": "Active"});
}

impl SimState {
    /// Refuses new content in a namespace that does not exist (404 `namespaces "x" not found`) or is
    /// being deleted (403), as the NamespaceLifecycle admission plugin does.
    pub fn admit_namespace(&self, def: &ResourceDef, name: &str, ns: &str) -> Result<(), ApiError> {
        if !def.namespaced {
            return Ok(());
        }
        match namespace_phase(&self.store, ns).as_deref() {
            Some("Terminating") => Err(ApiError::namespace_terminating(def, name, ns)),
            Some(_) => Ok(()),
            None => Err(ApiError::not_found(&NAMESPACES, ns)),
        }
    }

    /// The namespace's objects of `def`, typed (those that do not decode are left out).
    fn typed_in<T: serde::de::DeserializeOwned>(&self, def: &ResourceDef, ns: &str) -> Vec<T> {
        self.store.in_namespace(def, ns).iter().filter_map(|o| o.typed().ok()).collect()
    }

    /// The mutating half of the `LimitRanger` plugin on a new pod: the namespace's defaults set.
    fn default_pod_resources(&self, ns: &str, pod: &mut Pod) {
        let ranges: Vec<k8s_openapi::api::core::v1::LimitRange> = self.typed_in(&LIMITRANGES, ns);
        if !ranges.is_empty() {
            admission::apply_limit_range_defaults(pod, &ranges);
        }
    }

    /// The validating half of the `LimitRanger` plugin on a new pod: a 403 with the plugin's message
    /// for what a LimitRange refuses.
    fn check_pod_limit_ranges(&self, ns: &str, name: &str, pod: &Pod) -> Result<(), ApiError> {
        let ranges: Vec<k8s_openapi::api::core::v1::LimitRange> = self.typed_in(&LIMITRANGES, ns);
        let violations = admission::limit_range_violations(pod, &ranges);
        if violations.is_empty() {
            Ok(())
        } else {
            Err(ApiError::admission_forbidden(&PODS, name, &admission::aggregate(&violations)))
        }
    }

    /// The `ResourceQuota` plugin on a new pod (see [`crate::admission`]), the last of admission: a
    /// 403 with the plugin's message for what a quota refuses. As the apiserver's plugin, it charges the
    /// pod to each quota's recorded use (`status.used`), checked and written back in one step, so
    /// admission costs the same however many pods the namespace holds; the quota controller counts the
    /// pods again when one ends or goes. A quota whose use is not recorded yet (just created) is counted
    /// from the pods here. Nothing is written for a dry run.
    fn charge_pod_to_quotas(&self, ns: &str, name: &str, pod: &Pod, dry_run: bool) -> Result<(), ApiError> {
        let quotas = self.store.in_namespace(&RESOURCEQUOTAS, ns);
        let mut counted: Option<std::collections::BTreeMap<String, i128>> = None;
        for stored in quotas {
            let quota: k8s_openapi::api::core::v1::ResourceQuota = stored.typed()?;
            if admission::recorded_use(&quota).is_none() && counted.is_none() {
                counted = Some(self.namespace_quota_usage(ns));
            }
            self.store.mutate(&RESOURCEQUOTAS, ns, &stored.name, |current| {
                let Some(current) = current.filter(|c| c.uid == stored.uid) else {
                    return Ok(Mutation::Unchanged);
                };
                let quota: k8s_openapi::api::core::v1::ResourceQuota = current.typed()?;
                let used = admission::recorded_use(&quota).or_else(|| counted.clone()).unwrap_or_default();
                let charges = admission::charge_quotas(pod, std::slice::from_ref(&quota), &used)
                    .map_err(|why| ApiError::admission_forbidden(&PODS, name, &why))?;
                let Some(charge) = charges.into_iter().next().filter(|_| !dry_run) else {
                    return Ok(Mutation::Unchanged);
                };
                let mut value = current.value();
                let hard = value.pointer("/spec/hard").cloned().unwrap_or_else(|| json!({}));
                value["status"] = json!({"hard": hard, "used": charge.used});
                Ok(Mutation::Put(value))
            })?;
        }
        Ok(())
    }

    /// Writes each quota's use as the namespace's pods count it.
    fn recount_quotas(&self, ns: &str) {
        let quotas = self.store.in_namespace(&RESOURCEQUOTAS, ns);
        if quotas.is_empty() {
            return;
        }
        let used = self.namespace_quota_usage(ns);
        for quota in quotas {
            let _ = self.store.mutate(&RESOURCEQUOTAS, ns, &quota.name, |current| {
                let Some(current) = current.filter(|c| c.uid == quota.uid) else {
                    return Ok(Mutation::Unchanged);
                };
                let mut value = current.value();
                let hard = value.pointer("/spec/hard").cloned().unwrap_or_else(|| json!({}));
                value["status"] = json!({"hard": hard, "used": admission::format_use(&hard, &used)});
                Ok(Mutation::Put(value))
            });
        }
    }

    /// What the namespace's pods count against a quota (the sum of [`admission::pod_usage`]).
    pub(crate) fn namespace_quota_usage(&self, ns: &str) -> std::collections::BTreeMap<String, i128> {
        let mut used = std::collections::BTreeMap::<String, i128>::new();
        for existing in self.typed_in::<Pod>(&PODS, ns) {
            for (resource, value) in admission::pod_usage(&existing) {
                *used.entry(resource).or_default() += value;
            }
        }
        used
    }

    /// Creates an object (`POST`) as `actor`, through admission (LimitRanger, the webhooks,
    /// ResourceQuota). With `dry_run` nothing is stored and the would-be object is returned.
    pub fn create(
        &self,
        def: &'static ResourceDef,
        ns: &str,
        value: Value,
        dry_run: bool,
        actor: &Actor,
    ) -> Result<Value, ApiError> {
        self.create_as(def, ns, value, dry_run, actor, Operation::Update)
    }

    /// [`SimState::create`], recorded in `managedFields` as an update by `actor`, or (for an apply that
    /// creates the object) as given.
    fn create_as(
        &self,
        def: &'static ResourceDef,
        ns: &str,
        mut value: Value,
        dry_run: bool,
        actor: &Actor,
        operation: Operation,
    ) -> Result<Value, ApiError> {
        check_body(def, &value)?;
        if let Some(body_ns) =
            value.pointer("/metadata/namespace").and_then(Value::as_str).filter(|s| !s.is_empty())
            && def.namespaced
            && body_ns != ns
        {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        // What admission calls the object: its name, or for a generated one the prefix it is made from.
        let admission_name = value
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .or_else(|| value.pointer("/metadata/generateName").and_then(Value::as_str))
            .unwrap_or_default()
            .to_owned();
        let name = match value.pointer("/metadata/name").and_then(Value::as_str).filter(|s| !s.is_empty()) {
            Some(name) => name.to_owned(),
            None => match value
                .pointer("/metadata/generateName")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
            {
                Some(prefix) => format!("{prefix}{}", random_suffix()),
                None => {
                    return Err(ApiError::invalid(
                        def,
                        "",
                        &[FieldError::required("metadata.name", "name or generateName is required")],
                    ));
                }
            },
        };
        self.admit_namespace(def, &name, ns)?;
        if value.get("metadata").is_none_or(|m| !m.is_object()) {
            value["metadata"] = json!({});
        }
        value["metadata"]["name"] = json!(name);
        let uid = uuid::Uuid::new_v4().to_string();
        let webhooks = self.has_webhooks();
        // A generated name is not known to admission yet: the review names none.
        let given_name = if admission_name == name { name.as_str() } else { "" };
        let write = Write {
            def,
            subresource: None,
            operation: webhooks::Operation::Create,
            namespace: ns,
            name: given_name,
            actor,
            dry_run,
        };
        if def == &PODS {
            let mut pod: Pod = serde_json::from_value(value).map_err(ApiError::internal)?;
            let errors = pods::validate_create(&pod);
            if !errors.is_empty() {
                return Err(ApiError::invalid(&PODS, &name, &errors));
            }
            pods::default_for_create(&mut pod, ns, uid.clone(), jiff::Timestamp::now());
            self.default_pod_resources(ns, &mut pod);
            if webhooks {
                let given = serde_json::to_value(&pod).map_err(ApiError::internal)?;
                let mutated = self.mutate_by_webhooks(&write, given.clone(), None)?;
                if mutated != given {
                    pod = serde_json::from_value(mutated).map_err(|e| {
                        ApiError::bad_request(format!(
                            "Pod in version \"v1\" cannot be handled as a Pod: {e}"
                        ))
                    })?;
                    let errors = pods::validate_create(&pod);
                    if !errors.is_empty() {
                        return Err(ApiError::invalid(&PODS, &name, &errors));
                    }
                }
            }
            self.check_pod_limit_ranges(ns, &admission_name, &pod)?;
            value = serde_json::to_value(&pod).map_err(ApiError::internal)?;
            if webhooks {
                self.validate_by_webhooks(&write, Some(&value), None)?;
            }
            self.charge_pod_to_quotas(ns, &admission_name, &pod, dry_run)?;
        } else {
            let meta = value["metadata"]
                .as_object_mut()
                .ok_or_else(|| ApiError::bad_request("metadata must be an object"))?;
            meta.insert("uid".into(), json!(uid));
            meta.insert("creationTimestamp".into(), now_time());
            meta.remove("resourceVersion");
            meta.remove("deletionTimestamp");
            if def.namespaced {
                meta.insert("namespace".into(), json!(ns));
            }
            if value.get("spec").is_some() {
                value["metadata"]["generation"] = json!(1);
            }
            if def == &NAMESPACES {
                namespace_defaults(&mut value, &name);
            }
            if def == &JOBS {
                crate::controllers::job_defaults(&mut value, &name, &uid);
            }
            if def == &SECRETS {
                secret_defaults(&mut value);
            }
            workload_defaults(def, &mut value);
            webhook_defaults(def, &mut value);
            if webhooks {
                value = self.mutate_by_webhooks(&write, value, None)?;
                typed_check(def, &value)?;
            }
            validation::validate_create(def, &name, &value)?;
            if webhooks {
                self.validate_by_webhooks(&write, Some(&value), None)?;
            }
        }
        if operation == Operation::Update {
            managed_fields::record(def, None, &mut value, &actor.manager, None);
        }
        if dry_run {
            return Ok(value);
        }
        let stored = self
            .store
            .mutate(def, ns, &name, |current| match current {
                // NB: a pod that is still terminating holds its name: AlreadyExists until it is gone.
                Some(_) => Err(ApiError::already_exists(def, &name)),
                None => Ok(Mutation::Put(value)),
            })
            .inspect_err(|_| {
                if def == &PODS {
                    // Charged to the quotas but not stored: count the namespace's pods again.
                    self.recount_quotas(ns);
                }
            })?
            .ok_or_else(|| ApiError::internal("object vanished after create"))?;
        if def == &PODS {
            self.kubelet.admit(ns, &name, &uid);
        }
        Ok(stored.value())
    }

    /// Replaces an object or its status (`PUT`) as `actor`. Returns the stored object and whether it
    /// was created.
    pub fn replace(
        &self,
        def: &'static ResourceDef,
        ns: &str,
        name: &str,
        subresource: Option<&str>,
        new: Value,
        actor: &Actor,
    ) -> Result<(Arc<StoredObject>, bool), ApiError> {
        check_body(def, &new)?;
        if let Some(body_name) = new.pointer("/metadata/name").and_then(Value::as_str)
            && body_name != name
        {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
        let body_rv = resource_version_of(&new).map(str::to_owned);
        if body_rv.is_none() && !def.unconditional_update {
            return Err(ApiError::invalid(
                def,
                name,
                &[FieldError::invalid_raw(
                    "metadata.resourceVersion",
                    "0x0",
                    "must be specified for an update",
                )],
            ));
        }
        let proposed = |current: &Arc<StoredObject>| -> Result<Value, ApiError> {
            if let Some(rv) = &body_rv
                && *rv != current.resource_version.to_string()
            {
                return Err(ApiError::conflict(def, name));
            }
            Ok(new.clone())
        };
        if self.has_webhooks() && self.store.get(def, ns, name).is_ok() {
            return self
                .update_through_webhooks(
                    &Write::update(def, ns, name, subresource, actor),
                    &actor.manager,
                    &proposed,
                )
                .map(|s| (s, false));
        }
        let mut created = false;
        let mut spec_changed = false;
        let admission = if def.create_on_update { self.admit_namespace(def, name, ns) } else { Ok(()) };
        let stored = self.store.mutate(def, ns, name, |current| {
            let Some(current) = current else {
                if def.create_on_update && subresource.is_none() {
                    admission.clone()?;
                    created = true;
                    let mut fresh = new.clone();
                    fresh["metadata"]["uid"] = json!(uuid::Uuid::new_v4().to_string());
                    fresh["metadata"]["creationTimestamp"] = now_time();
                    fresh["metadata"]["namespace"] = json!(ns);
                    managed_fields::record(def, None, &mut fresh, &actor.manager, None);
                    return Ok(Mutation::Put(fresh));
                }
                return Err(ApiError::not_found(def, name));
            };
            let (mutation, changed) =
                self.next_state(def, current, proposed(current)?, subresource, &actor.manager)?;
            spec_changed = changed;
            Ok(mutation)
        })?;
        let stored = stored.ok_or_else(|| ApiError::not_found(def, name))?;
        if spec_changed && def == &PODS {
            self.kubelet.spec_changed(&stored.uid);
        }
        Ok((stored, created))
    }

    /// Patches an object, its status, or (for pods) its resources through `resize`, as `actor`. A
    /// server-side apply (`force` only there) creates a missing object and records field ownership as
    /// [`managed_fields::apply`] does.
    #[allow(clippy::too_many_arguments)]
    pub fn patch(
        &self,
        def: &'static ResourceDef,
        ns: &str,
        name: &str,
        subresource: Option<&str>,
        kind: PatchType,
        patch_body: &Value,
        force: bool,
        actor: &Actor,
    ) -> Result<Arc<StoredObject>, ApiError> {
        let api_version = def.api_version();
        let applier = managed_fields::Writer {
            manager: &actor.manager,
            operation: Operation::Apply,
            subresource,
            api_version: &api_version,
        };
        if kind == PatchType::Apply {
            check_applied(def, name, patch_body)?;
            if subresource.is_none() && self.store.get(def, ns, name).is_err_and(|e| e.code == 404) {
                let object = managed_fields::apply(None, patch_body, &applier, force, &now_string())?;
                self.create_as(def, ns, object, false, actor, Operation::Apply)?;
                return self.store.get(def, ns, name);
            }
        }
        let proposed = |current: &Arc<StoredObject>| -> Result<Value, ApiError> {
            let new = match kind {
                PatchType::Apply => {
                    managed_fields::apply(Some(&current.value()), patch_body, &applier, force, &now_string())?
                }
                _ => patch::apply(kind, &current.value(), patch_body)?,
            };
            // A patch that names a resourceVersion is an optimistic-lock precondition.
            if let Some(rv) = resource_version_of(&new)
                && rv != current.resource_version.to_string()
            {
                return Err(ApiError::conflict(def, name));
            }
            typed_check(def, &new)?;
            Ok(new)
        };
        // An apply has recorded its fields already.
        let manager = if kind == PatchType::Apply { "" } else { actor.manager.as_str() };
        if self.has_webhooks() {
            let write = Write::update(def, ns, name, subresource, actor);
            return self.update_through_webhooks(&write, manager, &proposed);
        }
        let mut spec_changed = false;
        let stored = self.store.mutate(def, ns, name, |current| {
            let Some(current) = current else { return Err(ApiError::not_found(def, name)) };
            let (mutation, changed) =
                self.next_state(def, current, proposed(current)?, subresource, manager)?;
            spec_changed = changed;
            Ok(mutation)
        })?;
        let stored = stored.ok_or_else(|| ApiError::not_found(def, name))?;
        if spec_changed && def == &PODS {
            self.kubelet.spec_changed(&stored.uid);
        }
        Ok(stored)
    }

    /// The stored object after `new` is written over `current` (through `resize` for that
    /// subresource), and whether the spec changed.
    /// `manager` names the writer `managedFields` records (none for a server-side apply, whose
    /// [`managed_fields::apply`] has recorded it).
    fn next_state(
        &self,
        def: &ResourceDef,
        current: &Arc<StoredObject>,
        new: Value,
        subresource: Option<&str>,
        manager: &str,
    ) -> Result<(Mutation, bool), ApiError> {
        if subresource == Some("resize") {
            let old = current.value();
            let mutation = match crate::resize::resized(&old, new, self.config.kubernetes_minor)? {
                Mutation::Put(mut value) => {
                    managed_fields::record(def, Some(&old), &mut value, manager, subresource);
                    Mutation::Put(value)
                }
                other => other,
            };
            return Ok((mutation, true));
        }
        self.updated(def, current, new, subresource, manager)
    }

    /// An update with webhooks configured: the change is worked out on the current object, admitted by
    /// the webhooks outside the store's lock (a webhook may read the cluster), then written if the
    /// object has not changed meanwhile; otherwise all again, as the apiserver's `GuaranteedUpdate`
    /// retries with admission.
    fn update_through_webhooks(
        &self,
        write: &Write<'_>,
        manager: &str,
        proposed: &dyn Fn(&Arc<StoredObject>) -> Result<Value, ApiError>,
    ) -> Result<Arc<StoredObject>, ApiError> {
        const ATTEMPTS: usize = 5;
        let (def, ns, name, subresource) = (write.def, write.namespace, write.name, write.subresource);
        for _ in 0..ATTEMPTS {
            let current = self.store.get(def, ns, name)?;
            let old = current.value();
            let candidate = match self.next_state(def, &current, proposed(&current)?, subresource, manager)? {
                (Mutation::Put(value), _) => value,
                _ => return Ok(current),
            };
            let admitted = self.mutate_by_webhooks(write, candidate, Some(&old))?;
            typed_check(def, &admitted)?;
            self.validate_by_webhooks(write, Some(&admitted), Some(&old))?;
            let mut raced = false;
            let mut spec_changed = false;
            let stored = self.store.mutate(def, ns, name, |now| {
                let Some(now) = now else { return Err(ApiError::not_found(def, name)) };
                if now.resource_version != current.resource_version {
                    raced = true;
                    return Ok(Mutation::Unchanged);
                }
                let (mutation, changed) = self.next_state(def, now, admitted, subresource, manager)?;
                spec_changed = changed;
                Ok(mutation)
            })?;
            if raced {
                continue;
            }
            let stored = stored.ok_or_else(|| ApiError::not_found(def, name))?;
            if spec_changed && def == &PODS {
                self.kubelet.spec_changed(&stored.uid);
            }
            return Ok(stored);
        }
        Err(ApiError::conflict(def, name))
    }

    /// The stored object after an update of the main resource or its status, and whether the spec changed.
    fn updated(
        &self,
        def: &ResourceDef,
        current: &Arc<StoredObject>,
        mut new: Value,
        subresource: Option<&str>,
        manager: &str,
    ) -> Result<(Mutation, bool), ApiError> {
        let old = current.value();
        if !new.is_object() {
            return Err(ApiError::bad_request("object must be a JSON object"));
        }
        if def == &SECRETS {
            secret_defaults(&mut new);
        }
        if subresource == Some("status") {
            // Status updates change only the status.
            let mut merged = old.clone();
            merged["status"] = new.get("status").cloned().unwrap_or(Value::Null);
            new = merged;
        } else {
            if def.subresources.contains(&"status") {
                match old.get("status") {
                    Some(status) => new["status"] = status.clone(),
                    None => {
                        if let Some(map) = new.as_object_mut() {
                            map.remove("status");
                        }
                    }
                }
            }
            carry_metadata(&old, &mut new);
        }
        if def == &PODS && subresource.is_none() {
            let old_pod: Pod = serde_json::from_value(old.clone()).map_err(ApiError::internal)?;
            let new_pod: Pod = serde_json::from_value(new.clone()).map_err(|e| {
                ApiError::bad_request(format!("Pod in version \"v1\" cannot be handled as a Pod: {e}"))
            })?;
            pods::validate_update(&old_pod, &new_pod)?;
        }
        validation::validate_update(def, &current.name, &old, &new)?;
        let mut unchanged_check = new.clone();
        unchanged_check["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"].clone();
        if unchanged_check == old {
            return Ok((Mutation::Unchanged, false));
        }
        let spec_changed = old.get("spec") != new.get("spec");
        managed_fields::record(def, Some(&old), &mut new, manager, subresource);
        Ok((Mutation::Put(new), spec_changed))
    }

    /// Evicts a pod through the Eviction API (`POST pods/<name>/eviction`, what `kubectl drain` sends):
    /// refused (429) when the PodDisruptionBudget that selects it does not allow a disruption now;
    /// otherwise the pod is marked `DisruptionTarget` (`EvictionByEvictionAPI`) and deleted gracefully
    /// with the eviction's options.
    pub fn evict(
        &self,
        ns: &str,
        name: &str,
        options: &DeleteOptions,
        actor: &Actor,
    ) -> Result<(), ApiError> {
        let budgets: Vec<k8s_openapi::api::policy::v1::PodDisruptionBudget> =
            self.typed_in(&PODDISRUPTIONBUDGETS, ns);
        if !budgets.is_empty() {
            let pods: Vec<Pod> = self.typed_in(&PODS, ns);
            let pod = pods
                .iter()
                .find(|p| p.metadata.name.as_deref() == Some(name))
                .ok_or_else(|| ApiError::not_found(&PODS, name))?;
            if let Some((code, message, cause)) = crate::disruption::eviction_refusal(&budgets, pod, &pods) {
                return Err(ApiError::eviction_refused(code, message, cause));
            }
        }
        let marked = self.store.mutate(&PODS, ns, name, |current| {
            let Some(current) = current else { return Err(ApiError::not_found(&PODS, name)) };
            if let Some(uid) = &options.uid
                && *uid != current.uid
            {
                return Err(ApiError::conflict(&PODS, name));
            }
            let mut value = current.value();
            if value.pointer("/metadata/deletionTimestamp").is_some_and(|t| !t.is_null()) {
                return Ok(Mutation::Unchanged);
            }
            pods::mark_disruption_target(&mut value, "EvictionByEvictionAPI", "Eviction API: evicting");
            Ok(Mutation::Put(value))
        })?;
        if marked.is_none() {
            return Err(ApiError::not_found(&PODS, name));
        }
        self.delete(&PODS, ns, name, options, actor).map(drop)
    }

    /// Deletes an object (`DELETE`) as `actor`, with pods' graceful deletion and preconditions.
    pub fn delete(
        &self,
        def: &'static ResourceDef,
        ns: &str,
        name: &str,
        options: &DeleteOptions,
        actor: &Actor,
    ) -> Result<Deleted, ApiError> {
        if self.has_webhooks() {
            let old = self.store.get(def, ns, name)?.value();
            let write = Write {
                def,
                subresource: None,
                operation: webhooks::Operation::Delete,
                namespace: ns,
                name,
                actor,
                dry_run: false,
            };
            self.validate_by_webhooks(&write, None, Some(&old))?;
        }
        if options.orphan {
            self.orphan_dependents(def, ns, name)?;
        }
        let mut outcome = None;
        let stored = self.store.mutate(def, ns, name, |current| {
            let Some(current) = current else { return Err(ApiError::not_found(def, name)) };
            if let Some(uid) = &options.uid
                && *uid != current.uid
            {
                return Err(ApiError::precondition_failed(
                    def,
                    ns,
                    name,
                    format!("UID in precondition: {uid}, UID in object meta: {}", current.uid),
                ));
            }
            if let Some(rv) = &options.resource_version
                && *rv != current.resource_version.to_string()
            {
                return Err(ApiError::precondition_failed(
                    def,
                    ns,
                    name,
                    format!(
                        "ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                        current.resource_version
                    ),
                ));
            }
            let mut value = current.value();
            let has_finalizers = value
                .pointer("/metadata/finalizers")
                .and_then(Value::as_array)
                .is_some_and(|f| !f.is_empty());
            if def == &PODS {
                let pod: Pod = current.typed()?;
                let decision = pods::deletion(&pod, options.grace_period_seconds);
                outcome = Some((decision, current.uid.clone()));
                return Ok(match decision {
                    PodDeletion::Immediate if !has_finalizers => Mutation::Delete,
                    PodDeletion::AlreadyTerminating => Mutation::Unchanged,
                    PodDeletion::Immediate | PodDeletion::Graceful(_) => {
                        let seconds = match decision {
                            PodDeletion::Graceful(g) => g,
                            _ => 0,
                        };
                        let at = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(seconds);
                        value["metadata"]["deletionTimestamp"] =
                            json!(at.strftime("%Y-%m-%dT%H:%M:%SZ").to_string());
                        value["metadata"]["deletionGracePeriodSeconds"] = json!(seconds);
                        Mutation::Put(value)
                    }
                });
            }
            if def == &NAMESPACES {
                // The namespace controller deletes its content, then the namespace.
                if value.pointer("/metadata/deletionTimestamp").is_some() {
                    return Ok(Mutation::Unchanged);
                }
                value["metadata"]["deletionTimestamp"] = now_time();
                value["metadata"]["deletionGracePeriodSeconds"] = json!(0);
                value["status"]["phase"] = json!("Terminating");
                return Ok(Mutation::Put(value));
            }
            if has_finalizers {
                if value.pointer("/metadata/deletionTimestamp").is_none() {
                    value["metadata"]["deletionTimestamp"] = now_time();
                    value["metadata"]["deletionGracePeriodSeconds"] = json!(0);
                    return Ok(Mutation::Put(value));
                }
                return Ok(Mutation::Unchanged);
            }
            Ok(Mutation::Delete)
        })?;
        let stored = stored.ok_or_else(|| ApiError::not_found(def, name))?;
        match outcome {
            Some((decision, uid)) => {
                match decision {
                    PodDeletion::Immediate => self.kubelet.forget(&uid),
                    PodDeletion::Graceful(grace) => self.kubelet.terminate(ns, name, &uid, grace),
                    PodDeletion::AlreadyTerminating => {}
                }
                Ok(Deleted::Pod(stored))
            }
            None => Ok(Deleted::Other(stored)),
        }
    }
}
impl SimState {
    /// What the garbage collector's orphan finalizer does: removes the owner reference to `name` from
    /// every object it owns, so none is collected with it.
    fn orphan_dependents(&self, def: &'static ResourceDef, ns: &str, name: &str) -> Result<(), ApiError> {
        let owner_uid = self.store.get(def, ns, name)?.uid.clone();
        for dependents in crate::resources::ALL {
            if !dependents.namespaced {
                continue;
            }
            let filter = crate::store::Filter { namespace: Some(ns.to_owned()), ..Default::default() };
            let owned: Vec<String> = self
                .store
                .list(dependents, &filter, None, None)?
                .items
                .iter()
                .filter(|o| o.is_owned_by(&owner_uid))
                .map(|o| o.name.clone())
                .collect();
            for dependent in owned {
                let _ = self.store.mutate(dependents, ns, &dependent, |current| {
                    let Some(current) = current else {
                        return Err(ApiError::not_found(dependents, &dependent));
                    };
                    let mut value = current.value();
                    if let Some(refs) =
                        value.pointer_mut("/metadata/ownerReferences").and_then(Value::as_array_mut)
                    {
                        refs.retain(|r| r.get("uid").and_then(Value::as_str) != Some(owner_uid.as_str()));
                    }
                    Ok(Mutation::Put(value))
                });
            }
        }
        Ok(())
    }
}

/// The defaults the apiserver gives a workload's spec when a field is absent: a Deployment's rolling
/// update (25 % unavailable, 25 % surge), history of 10 and progress deadline of 600 s; a StatefulSet's
/// rolling update, OrderedReady pod management and history; a DaemonSet's one-at-a-time rolling update;
/// a CronJob's `Allow` concurrency, not suspended, history limits 3 and 1.
/// A Secret as stored: `type` defaults to `Opaque`, and the write-only `stringData` is merged into
/// `data` (base64), its keys winning, as the apiserver converts it.
fn secret_defaults(value: &mut Value) {
    use base64::Engine as _;
    if value.get("type").and_then(Value::as_str).is_none_or(str::is_empty) {
        value["type"] = json!("Opaque");
    }
    let Some(Value::Object(strings)) = value.as_object_mut().and_then(|v| v.remove("stringData")) else {
        return;
    };
    if !value.get("data").is_some_and(Value::is_object) {
        value["data"] = json!({});
    }
    for (key, text) in strings {
        let encoded = base64::engine::general_purpose::STANDARD.encode(text.as_str().unwrap_or_default());
        value["data"][key] = json!(encoded);
    }
}

/// The admissionregistration/v1 defaults of each webhook of a configuration.
fn webhook_defaults(def: &ResourceDef, value: &mut Value) {
    let mutating = def == &crate::resources::MUTATINGWEBHOOKCONFIGURATIONS;
    if !mutating && def != &crate::resources::VALIDATINGWEBHOOKCONFIGURATIONS {
        return;
    }
    let mut defaults = json!({"failurePolicy": "Fail", "matchPolicy": "Equivalent", "namespaceSelector": {},
        "objectSelector": {}, "timeoutSeconds": 10});
    if mutating {
        defaults["reinvocationPolicy"] = json!("Never");
    }
    for webhook in value.get_mut("webhooks").and_then(Value::as_array_mut).into_iter().flatten() {
        fill_defaults(webhook, &defaults);
        for rule in webhook.get_mut("rules").and_then(Value::as_array_mut).into_iter().flatten() {
            fill_defaults(rule, &json!({"scope": "*"}));
        }
    }
}

fn workload_defaults(def: &ResourceDef, value: &mut Value) {
    let defaults = if def == &crate::resources::DEPLOYMENTS {
        json!({"strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}},
            "revisionHistoryLimit": 10, "progressDeadlineSeconds": 600})
    } else if def == &crate::resources::STATEFULSETS {
        json!({"updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": 0}},
            "podManagementPolicy": "OrderedReady", "revisionHistoryLimit": 10})
    } else if def == &crate::resources::CRONJOBS {
        json!({"concurrencyPolicy": "Allow", "suspend": false, "successfulJobsHistoryLimit": 3,
            "failedJobsHistoryLimit": 1})
    } else if def == &crate::resources::DAEMONSETS {
        json!({"updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}},
            "revisionHistoryLimit": 10})
    } else {
        return;
    };
    if let Some(spec) = value.get_mut("spec") {
        fill_defaults(spec, &defaults);
    }
}

/// Fills what `target` leaves unset (absent, or an empty object as a protobuf body gives for a struct
/// never set) from `defaults`, as the apiserver's defaulting functions do field by field: a strategy's
/// `rollingUpdate` parameters only for the `RollingUpdate` type.
fn fill_defaults(target: &mut Value, defaults: &Value) {
    let (Some(target), Some(defaults)) = (target.as_object_mut(), defaults.as_object()) else { return };
    // The type first: whether `rollingUpdate` applies depends on it.
    let (parameters, rest): (Vec<_>, Vec<_>) = defaults.iter().partition(|(key, _)| *key == "rollingUpdate");
    for (key, default) in rest.into_iter().chain(parameters) {
        if key == "rollingUpdate" && target.get("type").and_then(Value::as_str) != Some("RollingUpdate") {
            continue;
        }
        match target.get_mut(key) {
            Some(present) => fill_defaults(present, default),
            None => {
                target.insert(key.clone(), default.clone());
            }
        }
    }
}
