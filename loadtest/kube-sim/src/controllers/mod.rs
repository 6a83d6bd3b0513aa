//! Workload controllers: Deployment → ReplicaSet → Pod (pod-template-hash, revision annotations,
//! rolling updates, revision history), StatefulSet → ordinal pods (OrderedReady, controller revisions,
//! rolling updates from the highest ordinal) and background garbage collection of dependents.
//!
//! They run in-process on the store's change feed and create and delete pods through the same write
//! paths as clients, so pods they create are defaulted, validated and run by the kubelet.

use std::{
    collections::{BTreeMap, HashSet},
    sync::{Arc, Mutex, PoisonError},
};

use k8s_openapi::{
    api::{
        apps::v1::{Deployment, ReplicaSet, StatefulSet},
        core::v1::{Pod, PodTemplateSpec},
    },
    apimachinery::pkg::apis::meta::v1::OwnerReference,
};
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use crate::{
    actor::Actor,
    api::DeleteOptions,
    api_error::ApiError,
    resources::{
        ALL, CONTROLLERREVISIONS, CRONJOBS, DAEMONSETS, DEPLOYMENTS, JOBS, NAMESPACES, NODES,
        PODDISRUPTIONBUDGETS, PODS, REPLICASETS, RESOURCEQUOTAS, ResourceDef, STATEFULSETS,
    },
    state::SimState,
    store::{EventType, Filter, Mutation, StoredObject, WatchRecord},
};

pub(crate) use job::job_defaults;

mod cron_job;
mod daemon_set;
mod deployment;
mod job;
mod replica_set;
mod stateful_set;
mod taint_eviction;

/// Label carrying the template hash on ReplicaSets and their pods.
pub const POD_TEMPLATE_HASH: &str = "pod-template-hash";
/// Label carrying the StatefulSet revision on its pods.
pub const CONTROLLER_REVISION_HASH: &str = "controller-revision-hash";
/// Revision annotation on Deployments and ReplicaSets.
pub const REVISION: &str = "deployment.kubernetes.io/revision";

/// The field manager the controllers of kube-controller-manager write under.
const MANAGER: &str = "kube-controller-manager";
const SAFE_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// The hash the Deployment controller puts in `pod-template-hash`: FNV-32a of the template, printed in
/// decimal and mapped onto the apiserver's safe alphabet (`rand.SafeEncodeString`).
pub fn template_hash(template: &Value) -> String {
    // Hashed as the controllers compare templates: a null is the field's absence (a template read back
    // from a ReplicaSet by `kubectl rollout undo` carries `creationTimestamp: null`), and the
    // controllers' own hash labels are not part of it.
    let mut semantic = without_nulls(template);
    if let Some(labels) = semantic.pointer_mut("/metadata/labels").and_then(Value::as_object_mut) {
        labels.remove(POD_TEMPLATE_HASH);
        labels.remove(CONTROLLER_REVISION_HASH);
    }
    let canonical = serde_json::to_vec(&semantic).unwrap_or_default();
    let hash = canonical.iter().fold(0x811c_9dc5u32, |h, b| (h ^ u32::from(*b)).wrapping_mul(0x0100_0193));
    hash.to_string().bytes().map(|b| SAFE_ALPHABET[b as usize % SAFE_ALPHABET.len()] as char).collect()
}

/// `value` without its null members, at any depth.
fn without_nulls(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter().filter(|(_, v)| !v.is_null()).map(|(k, v)| (k.clone(), without_nulls(v))).collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(without_nulls).collect()),
        other => other.clone(),
    }
}

/// What needs reconciling.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Deployment(String, String),
    ReplicaSet(String, String),
    StatefulSet(String, String),
    /// Delete the dependents of a removed owner (namespace, owner uid).
    Collect(String, String),
    /// Empty a namespace being deleted, then remove it.
    Namespace(String),
    Job(String, String),
    DaemonSet(String, String),
    /// Every DaemonSet (a node changed).
    AllDaemonSets,
    /// A CronJob: schedule its Jobs.
    CronJob(String, String),
    /// A node's `NoExecute` taints: evict the pods that do not tolerate them (any longer).
    TaintEviction(String),
    /// A namespace's ResourceQuotas: their `status.hard` and `status.used`.
    Quotas(String),
    /// A namespace's PodDisruptionBudgets: their status.
    Disruption(String),
}

struct Queue {
    pending: Mutex<HashSet<Key>>,
    tx: mpsc::UnboundedSender<Key>,
    /// Per key, how many reconciles in a row admission refused: the next waits longer.
    refusals: Mutex<std::collections::HashMap<Key, u32>>,
}

impl Queue {
    fn push(&self, key: Key) {
        if self.pending.lock().unwrap_or_else(PoisonError::into_inner).insert(key.clone()) {
            let _ = self.tx.send(key);
        }
    }

    fn take(&self, key: &Key) {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner).remove(key);
    }

    /// How long to wait before reconciling `key` again after admission refused what it created: half a
    /// second, doubling to half a minute, as the controllers' rate-limited queues back off.
    fn refused(&self, key: &Key) -> std::time::Duration {
        let mut refusals = self.refusals.lock().unwrap_or_else(PoisonError::into_inner);
        let count = refusals.entry(key.clone()).or_default();
        *count = count.saturating_add(1);
        std::time::Duration::from_millis(500u64.saturating_mul(1 << (*count - 1).min(6)))
            .min(std::time::Duration::from_secs(30))
    }

    /// `key` reconciled: its back-off starts over.
    fn succeeded(&self, key: &Key) {
        let mut refusals = self.refusals.lock().unwrap_or_else(PoisonError::into_inner);
        if !refusals.is_empty() {
            refusals.remove(key);
        }
    }
}

fn owner_ref(kind: &str, name: &str, uid: &str) -> OwnerReference {
    OwnerReference {
        api_version: "apps/v1".into(),
        kind: kind.into(),
        name: name.into(),
        uid: uid.into(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// An owner reference to a batch/v1 controller.
fn batch_owner_ref(kind: &str, name: &str, uid: &str) -> OwnerReference {
    OwnerReference { api_version: "batch/v1".into(), ..owner_ref(kind, name, uid) }
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// When the pod last became ready (its `Ready` condition's transition).
fn ready_since(pod: &Pod) -> Option<jiff::Timestamp> {
    let status = pod.status.as_ref()?;
    let ready = status.conditions.as_ref()?.iter().find(|c| c.type_ == "Ready" && c.status == "True")?;
    ready.last_transition_time.as_ref().map(|t| t.0)
}

fn is_active(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && !matches!(pod.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"))
}

/// `intstr` percentages and integers of rolling-update parameters, resolved against `total`.
fn resolve(value: Option<&Value>, total: i32, round_up: bool, default_percent: i32) -> i32 {
    let percent_of = |p: i32| {
        let exact = f64::from(total) * f64::from(p) / 100.0;
        (if round_up { exact.ceil() } else { exact.floor() }) as i32
    };
    match value {
        Some(Value::Number(n)) => n.as_i64().and_then(|n| i32::try_from(n).ok()).unwrap_or(0),
        Some(Value::String(s)) => s.trim_end_matches('%').parse::<i32>().map(percent_of).unwrap_or(0),
        _ => percent_of(default_percent),
    }
}

/// Starts the controllers; they stop with `shutdown`.
pub fn spawn(state: Arc<SimState>, shutdown: CancellationToken) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let queue = Arc::new(Queue {
        pending: Mutex::new(HashSet::new()),
        tx,
        refusals: Mutex::new(std::collections::HashMap::new()),
    });
    for def in [
        &DEPLOYMENTS,
        &REPLICASETS,
        &STATEFULSETS,
        &JOBS,
        &CRONJOBS,
        &DAEMONSETS,
        &PODS,
        &NAMESPACES,
        &NODES,
        &RESOURCEQUOTAS,
        &PODDISRUPTIONBUDGETS,
    ] {
        let feed = state.store.subscribe(def);
        tokio::spawn(route_changes(def, feed, state.clone(), queue.clone(), shutdown.clone()));
    }
    tokio::spawn(async move {
        loop {
            let key = tokio::select! {
                key = rx.recv() => match key { Some(key) => key, None => return },
                () = shutdown.cancelled() => return,
            };
            queue.take(&key);
            let controllers = Controllers { state: &state, queue: &queue };
            match controllers.reconcile(&key) {
                Ok(()) => queue.succeeded(&key),
                Err(error) => {
                    tracing::debug!(?key, %error.message, "reconcile failed; retrying");
                    let delay = if error.refuses_creation() {
                        queue.refused(&key)
                    } else {
                        std::time::Duration::from_millis(50)
                    };
                    let queue = queue.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(delay).await;
                        queue.push(key);
                    });
                }
            }
        }
    });
}

/// Turns store changes into reconcile keys.
async fn route_changes(
    def: &'static ResourceDef,
    mut feed: broadcast::Receiver<Arc<WatchRecord>>,
    state: Arc<SimState>,
    queue: Arc<Queue>,
    shutdown: CancellationToken,
) {
    loop {
        let record = tokio::select! {
            record = feed.recv() => record,
            () = shutdown.cancelled() => return,
        };
        match record {
            Ok(record) => {
                route(def, &record, &queue);
                // Admission charges a new pod to the quotas; a pod that goes or finishes frees its share,
                // and the controller counts the namespace's pods again (as its replenishment does).
                if def == &PODS
                    && releases_quota(&record)
                    && !state.store.in_namespace(&RESOURCEQUOTAS, &record.object.namespace).is_empty()
                {
                    queue.push(Key::Quotas(record.object.namespace.clone()));
                }
                // A pod's change (readiness, labels, its end) moves the budgets that may select it.
                if def == &PODS
                    && !state.store.in_namespace(&PODDISRUPTIONBUDGETS, &record.object.namespace).is_empty()
                {
                    queue.push(Key::Disruption(record.object.namespace.clone()));
                }
            }
            Err(broadcast::error::RecvError::Lagged(_)) => {
                // Missed changes: reconcile everything of this kind.
                for object in state.store.all(def) {
                    let record = WatchRecord { event: EventType::Modified, object, previous: None };
                    route(def, &record, &queue);
                }
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// Whether a pod's change frees quota: it was deleted, or it has just finished (`Succeeded`/`Failed`
/// count only as `count/pods`).
fn releases_quota(record: &WatchRecord) -> bool {
    let finished = |object: &StoredObject| {
        matches!(object.field("status.phase").as_deref(), Some("Succeeded" | "Failed"))
    };
    record.event == EventType::Deleted
        || (finished(&record.object) && !record.previous.as_deref().is_some_and(finished))
}

fn route(def: &ResourceDef, record: &WatchRecord, queue: &Queue) {
    let object = &record.object;
    let (ns, name) = (object.namespace.clone(), object.name.clone());
    if def == &NAMESPACES {
        queue.push(Key::Namespace(name));
        return;
    }
    if def == &NODES {
        queue.push(Key::AllDaemonSets);
        queue.push(Key::TaintEviction(name));
        return;
    }
    if def == &RESOURCEQUOTAS {
        // Its use written by admission or the controller itself is no reason to count again.
        let spec_changed =
            record.previous.as_ref().is_none_or(|p| p.value().get("spec") != object.value().get("spec"));
        if spec_changed && record.event != EventType::Deleted {
            queue.push(Key::Quotas(ns));
        }
        return;
    }
    if def == &PODDISRUPTIONBUDGETS {
        queue.push(Key::Disruption(ns));
        return;
    }
    if record.event == EventType::Deleted && def != &PODS {
        queue.push(Key::Collect(ns.clone(), object.uid.clone()));
    }
    if record.event == EventType::Deleted && def == &PODS {
        // The last pod of a namespace being deleted lets the namespace go.
        queue.push(Key::Namespace(ns.clone()));
    }
    if def == &DEPLOYMENTS {
        queue.push(Key::Deployment(ns, name));
    } else if def == &REPLICASETS {
        queue.push(Key::ReplicaSet(ns.clone(), name));
        if let Some(("Deployment", owner)) = object.controller() {
            queue.push(Key::Deployment(ns, owner.to_owned()));
        }
    } else if def == &STATEFULSETS {
        queue.push(Key::StatefulSet(ns, name));
    } else if def == &JOBS {
        if let Some(("CronJob", owner)) = object.controller() {
            queue.push(Key::CronJob(ns.clone(), owner.to_owned()));
        }
        queue.push(Key::Job(ns, name));
    } else if def == &CRONJOBS {
        queue.push(Key::CronJob(ns, name));
    } else if def == &DAEMONSETS {
        queue.push(Key::DaemonSet(ns, name));
    } else if let Some((kind, owner)) = object.controller() {
        match kind {
            "ReplicaSet" => queue.push(Key::ReplicaSet(ns, owner.to_owned())),
            "StatefulSet" => queue.push(Key::StatefulSet(ns, owner.to_owned())),
            "Job" => queue.push(Key::Job(ns, owner.to_owned())),
            "DaemonSet" => queue.push(Key::DaemonSet(ns, owner.to_owned())),
            _ => {}
        }
    }
}

struct Controllers<'a> {
    state: &'a Arc<SimState>,
    queue: &'a Arc<Queue>,
}

impl Controllers<'_> {
    fn reconcile(&self, key: &Key) -> Result<(), ApiError> {
        match key {
            Key::Deployment(ns, name) => self.deployment(ns, name),
            Key::ReplicaSet(ns, name) => self.replica_set(ns, name),
            Key::StatefulSet(ns, name) => self.stateful_set(ns, name),
            Key::Collect(ns, uid) => self.collect(ns, uid),
            Key::Namespace(name) => self.namespace(name),
            Key::Job(ns, name) => self.job(ns, name),
            Key::CronJob(ns, name) => self.cron_job(ns, name),
            Key::DaemonSet(ns, name) => self.daemon_set(ns, name),
            Key::AllDaemonSets => self.all_daemon_sets(),
            Key::TaintEviction(node) => self.taint_eviction(node),
            Key::Quotas(ns) => self.quotas(ns),
            Key::Disruption(ns) => self.disruption(ns),
        }
    }

    /// The disruption controller: each PodDisruptionBudget's status from the pods it selects.
    fn disruption(&self, ns: &str) -> Result<(), ApiError> {
        let budgets = self.state.store.in_namespace(&PODDISRUPTIONBUDGETS, ns);
        if budgets.is_empty() {
            return Ok(());
        }
        let pods: Vec<Pod> =
            self.state.store.in_namespace(&PODS, ns).iter().filter_map(|p| p.typed().ok()).collect();
        let now = crate::api::now_time();
        for stored in budgets {
            let Ok(budget) = stored.typed::<k8s_openapi::api::policy::v1::PodDisruptionBudget>() else {
                continue;
            };
            let state = crate::disruption::budget_state(&budget, &pods);
            let status = crate::disruption::status(&budget, state, &now);
            self.write_status(&PODDISRUPTIONBUDGETS, ns, &stored.name, &stored.uid, status)?;
        }
        Ok(())
    }

    /// The quota controller: each ResourceQuota's `status.hard` (its spec's) and `status.used` (what the
    /// namespace's pods count against it), written when they change.
    fn quotas(&self, ns: &str) -> Result<(), ApiError> {
        let quotas = self.state.store.in_namespace(&RESOURCEQUOTAS, ns);
        if quotas.is_empty() {
            return Ok(());
        }
        let used = self.state.namespace_quota_usage(ns);
        for quota in quotas {
            let value = quota.value();
            let hard = value.pointer("/spec/hard").cloned().unwrap_or_else(|| json!({}));
            let status = json!({"hard": hard, "used": crate::admission::format_use(&hard, &used)});
            self.write_status(&RESOURCEQUOTAS, ns, &quota.name, &quota.uid, status)?;
        }
        Ok(())
    }

    /// Reconciles `key` again after `delay` (a Job's deadline).
    fn requeue_after(&self, key: Key, delay: std::time::Duration) {
        let queue = self.queue.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            queue.push(key);
        });
    }

    /// A namespace being deleted: deletes everything in it (pods gracefully), and once nothing is left,
    /// the namespace itself, as the namespace controller does before it removes the `kubernetes`
    /// finalizer.
    fn namespace(&self, name: &str) -> Result<(), ApiError> {
        let Ok(namespace) = self.state.store.get(&NAMESPACES, "", name) else { return Ok(()) };
        if namespace.field("status.phase").as_deref() != Some("Terminating") {
            return Ok(());
        }
        let mut left = 0;
        for def in ALL.iter().copied().filter(|d| d.namespaced) {
            for object in self.objects(def, name)? {
                let options = DeleteOptions { uid: Some(object.uid.clone()), ..DeleteOptions::default() };
                match self.state.delete(
                    def,
                    name,
                    &object.name,
                    &options,
                    &Actor::controller("namespace-controller"),
                ) {
                    Ok(crate::api::Deleted::Pod(_)) => left += 1,
                    Ok(crate::api::Deleted::Other(_)) => {}
                    Err(e) if e.code == 404 || e.code == 409 => {}
                    Err(e) => return Err(e),
                }
            }
        }
        // Pods end after their grace period; each one's removal brings the namespace back here.
        let mut remaining = 0;
        for def in ALL.iter().copied().filter(|d| d.namespaced) {
            remaining += self.objects(def, name)?.len();
        }
        if left == 0 && remaining == 0 {
            let uid = namespace.uid.clone();
            self.state.store.mutate(&NAMESPACES, "", name, |current| {
                Ok(if current.is_some_and(|c| c.uid == uid) { Mutation::Delete } else { Mutation::Unchanged })
            })?;
        }
        Ok(())
    }

    fn objects(&self, def: &ResourceDef, ns: &str) -> Result<Vec<Arc<StoredObject>>, ApiError> {
        let filter = Filter { namespace: Some(ns.to_owned()), ..Filter::default() };
        Ok(self.state.store.list(def, &filter, None, None)?.items)
    }

    fn owned_pods(&self, ns: &str, owner_uid: &str) -> Result<Vec<Pod>, ApiError> {
        self.state.store.owned_by(&PODS, ns, owner_uid).iter().map(|o| o.typed()).collect()
    }

    /// Writes `status` on the object if it changed (and only the status), as kube-controller-manager.
    fn write_status(
        &self,
        def: &ResourceDef,
        ns: &str,
        name: &str,
        uid: &str,
        status: Value,
    ) -> Result<(), ApiError> {
        self.state.store.mutate(def, ns, name, |current| {
            let Some(current) = current.filter(|c| c.uid == uid) else { return Ok(Mutation::Unchanged) };
            let old = current.value();
            if old.get("status") == Some(&status) {
                return Ok(Mutation::Unchanged);
            }
            let mut value = old.clone();
            value["status"] = status;
            crate::api::record_managed_fields(def, Some(&old), &mut value, MANAGER, Some("status"));
            Ok(Mutation::Put(value))
        })?;
        Ok(())
    }

    /// Updates the object's spec and metadata through `change` (not the status), if it changed.
    fn update(
        &self,
        def: &ResourceDef,
        ns: &str,
        name: &str,
        uid: &str,
        change: impl FnOnce(&mut Value),
    ) -> Result<(), ApiError> {
        self.state.store.mutate(def, ns, name, |current| {
            let Some(current) = current.filter(|c| c.uid == uid) else { return Ok(Mutation::Unchanged) };
            let before = current.value();
            let mut after = before.clone();
            change(&mut after);
            if after == before {
                return Ok(Mutation::Unchanged);
            }
            if before.get("spec") != after.get("spec") {
                let generation = before.pointer("/metadata/generation").and_then(Value::as_i64).unwrap_or(1);
                after["metadata"]["generation"] = json!(generation + 1);
            }
            crate::api::record_managed_fields(def, Some(&before), &mut after, MANAGER, None);
            Ok(Mutation::Put(after))
        })?;
        Ok(())
    }

    fn delete_pod(&self, ns: &str, pod: &Pod) -> Result<(), ApiError> {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let options = DeleteOptions { uid: pod.metadata.uid.clone(), ..DeleteOptions::default() };
        match self.state.delete(&PODS, ns, &name, &options, &Actor::controller("replicaset-controller")) {
            Ok(_) => Ok(()),
            Err(e) if e.code == 404 || e.code == 409 => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn create_pod(
        &self,
        ns: &str,
        template: &PodTemplateSpec,
        name: Option<String>,
        generate: &str,
        extra_labels: &BTreeMap<String, String>,
        owner: OwnerReference,
    ) -> Result<(), ApiError> {
        let mut metadata = template.metadata.clone().unwrap_or_default();
        let labels = metadata.labels.get_or_insert_with(BTreeMap::new);
        labels.extend(extra_labels.clone());
        metadata.name = name;
        metadata.generate_name = Some(generate.to_owned());
        metadata.namespace = Some(ns.to_owned());
        metadata.owner_references = Some(vec![owner.clone()]);
        let pod_name = metadata.name.clone().unwrap_or_else(|| generate.to_owned());
        let pod = Pod { metadata, spec: template.spec.clone(), status: None };
        let value = serde_json::to_value(&pod).map_err(ApiError::internal)?;
        let actor = Actor::controller(&format!("{}-controller", owner.kind.to_ascii_lowercase()));
        let created = self.state.create(&PODS, ns, value, false, &actor).map(|_| ());
        if let Err(error) = &created
            && error.refuses_creation()
        {
            // Admission refused it: the controller says so on its object, as the real ones do.
            let message = if owner.kind == "StatefulSet" {
                format!("create Pod {pod_name} in StatefulSet {} failed error: {}", owner.name, error.message)
            } else {
                format!("Error creating: {}", error.message)
            };
            let component = actor.user.name.rsplit(':').next().unwrap_or_default();
            self.state.record_event(ns, &owner, "Warning", "FailedCreate", &message, component);
        }
        created
    }

    /// The ControllerRevision `<name>-<hash of template>` of a StatefulSet or DaemonSet (`kind`, uid
    /// `uid`), created with the next revision number if it does not exist yet. Returns the hash.
    fn ensure_revision(
        &self,
        kind: &str,
        ns: &str,
        name: &str,
        uid: &str,
        labels: BTreeMap<String, String>,
        template: &Value,
    ) -> Result<String, ApiError> {
        let hash = template_hash(template);
        let revision = format!("{name}-{hash}");
        if self.state.store.get(&CONTROLLERREVISIONS, ns, &revision).is_err() {
            let number = self.state.store.owned_by(&CONTROLLERREVISIONS, ns, uid).len() + 1;
            let cr = json!({"metadata": {"name": revision, "namespace": ns, "labels": labels,
                "ownerReferences": [owner_ref(kind, name, uid)]},
                "data": {"spec": {"template": template}}, "revision": number});
            let actor = Actor::controller(&format!("{}-controller", kind.to_ascii_lowercase()));
            self.state.create(&CONTROLLERREVISIONS, ns, cr, false, &actor)?;
        }
        Ok(hash)
    }

    /// Background garbage collection: deletes whatever a removed owner controlled.
    fn collect(&self, ns: &str, owner_uid: &str) -> Result<(), ApiError> {
        for def in [&REPLICASETS, &PODS, &CONTROLLERREVISIONS] {
            for object in self.state.store.owned_by(def, ns, owner_uid) {
                let options = DeleteOptions { uid: Some(object.uid.clone()), ..DeleteOptions::default() };
                match self.state.delete(
                    def,
                    ns,
                    &object.name,
                    &options,
                    &Actor::controller("generic-garbage-collector"),
                ) {
                    Ok(_) => {}
                    Err(e) if e.code == 404 || e.code == 409 => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_template_read_back_with_null_fields_and_its_hash_label_hashes_as_the_original() {
        let original = json!({"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "app", "image": "web:1"}]}});
        let read_back = json!({"metadata": {"creationTimestamp": null, "labels": {"app": "web", "pod-template-hash": "x"}},
            "spec": {"containers": [{"name": "app", "image": "web:1"}]}});
        assert_eq!(template_hash(&original), template_hash(&read_back));
    }

    #[test]
    fn template_hashes_are_stable_and_use_the_safe_alphabet() {
        let a = template_hash(
            &json!({"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "app", "image": "web:1"}]}}),
        );
        let b = template_hash(
            &json!({"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "app", "image": "web:1"}]}}),
        );
        let c = template_hash(
            &json!({"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "app", "image": "web:2"}]}}),
        );
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert!(a.bytes().all(|ch| SAFE_ALPHABET.contains(&ch)), "{a}");
    }

    #[test]
    fn rolling_update_parameters_resolve_percentages_like_the_controller() {
        assert_eq!(resolve(None, 4, true, 25), 1);
        assert_eq!(resolve(None, 4, false, 25), 1);
        assert_eq!(resolve(None, 3, false, 25), 0);
        assert_eq!(resolve(None, 3, true, 25), 1);
        assert_eq!(resolve(Some(&json!("50%")), 10, true, 25), 5);
        assert_eq!(resolve(Some(&json!(2)), 10, true, 25), 2);
    }
}
