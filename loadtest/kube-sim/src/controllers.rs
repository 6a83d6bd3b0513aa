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
    api::DeleteOptions,
    api_error::ApiError,
    resources::{CONTROLLERREVISIONS, DEPLOYMENTS, PODS, REPLICASETS, ResourceDef, STATEFULSETS},
    state::SimState,
    store::{EventType, Filter, Mutation, StoredObject, WatchRecord},
};

/// Label carrying the template hash on ReplicaSets and their pods.
pub const POD_TEMPLATE_HASH: &str = "pod-template-hash";
/// Label carrying the StatefulSet revision on its pods.
pub const CONTROLLER_REVISION_HASH: &str = "controller-revision-hash";
/// Revision annotation on Deployments and ReplicaSets.
pub const REVISION: &str = "deployment.kubernetes.io/revision";

const SAFE_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// The hash the Deployment controller puts in `pod-template-hash`: FNV-32a of the template, printed in
/// decimal and mapped onto the apiserver's safe alphabet (`rand.SafeEncodeString`).
pub fn template_hash(template: &Value) -> String {
    let canonical = serde_json::to_vec(template).unwrap_or_default();
    let hash = canonical.iter().fold(0x811c_9dc5u32, |h, b| (h ^ u32::from(*b)).wrapping_mul(0x0100_0193));
    hash.to_string().bytes().map(|b| SAFE_ALPHABET[b as usize % SAFE_ALPHABET.len()] as char).collect()
}

/// What needs reconciling.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Deployment(String, String),
    ReplicaSet(String, String),
    StatefulSet(String, String),
    /// Delete the dependents of a removed owner (namespace, owner uid).
    Collect(String, String),
}

struct Queue {
    pending: Mutex<HashSet<Key>>,
    tx: mpsc::UnboundedSender<Key>,
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
}

fn owned_by(object: &StoredObject, owner_uid: &str) -> bool {
    object.is_owned_by(owner_uid)
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

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
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
    let queue = Arc::new(Queue { pending: Mutex::new(HashSet::new()), tx });
    for def in [&DEPLOYMENTS, &REPLICASETS, &STATEFULSETS, &PODS] {
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
            let controllers = Controllers { state: &state };
            if let Err(error) = controllers.reconcile(&key) {
                tracing::debug!(?key, %error.message, "reconcile failed; retrying");
                let queue = queue.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    queue.push(key);
                });
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
            Ok(record) => route(def, &record, &queue),
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

fn route(def: &ResourceDef, record: &WatchRecord, queue: &Queue) {
    let object = &record.object;
    let (ns, name) = (object.namespace.clone(), object.name.clone());
    if record.event == EventType::Deleted && def != &PODS {
        queue.push(Key::Collect(ns.clone(), object.uid.clone()));
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
    } else if let Some((kind, owner)) = object.controller() {
        match kind {
            "ReplicaSet" => queue.push(Key::ReplicaSet(ns, owner.to_owned())),
            "StatefulSet" => queue.push(Key::StatefulSet(ns, owner.to_owned())),
            _ => {}
        }
    }
}

struct Controllers<'a> {
    state: &'a Arc<SimState>,
}

impl Controllers<'_> {
    fn reconcile(&self, key: &Key) -> Result<(), ApiError> {
        match key {
            Key::Deployment(ns, name) => self.deployment(ns, name),
            Key::ReplicaSet(ns, name) => self.replica_set(ns, name),
            Key::StatefulSet(ns, name) => self.stateful_set(ns, name),
            Key::Collect(ns, uid) => self.collect(ns, uid),
        }
    }

    fn objects(&self, def: &ResourceDef, ns: &str) -> Result<Vec<Arc<StoredObject>>, ApiError> {
        let filter = Filter { namespace: Some(ns.to_owned()), ..Filter::default() };
        Ok(self.state.store.list(def, &filter, None, None)?.items)
    }

    fn owned_pods(&self, ns: &str, owner_uid: &str) -> Result<Vec<Pod>, ApiError> {
        self.objects(&PODS, ns)?.iter().filter(|o| owned_by(o, owner_uid)).map(|o| o.typed()).collect()
    }

    /// Writes `status` on the object if it changed (and only the status).
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
            let mut value = current.value();
            if value.get("status") == Some(&status) {
                return Ok(Mutation::Unchanged);
            }
            value["status"] = status;
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
            Ok(Mutation::Put(after))
        })?;
        Ok(())
    }

    fn delete_pod(&self, ns: &str, pod: &Pod) -> Result<(), ApiError> {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let options = DeleteOptions { uid: pod.metadata.uid.clone(), ..DeleteOptions::default() };
        match self.state.delete(&PODS, ns, &name, &options) {
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
        metadata.owner_references = Some(vec![owner]);
        let pod = Pod { metadata, spec: template.spec.clone(), status: None };
        let value = serde_json::to_value(&pod).map_err(ApiError::internal)?;
        self.state.create(&PODS, ns, value, false).map(|_| ())
    }

    fn replica_set(&self, ns: &str, name: &str) -> Result<(), ApiError> {
        let Ok(object) = self.state.store.get(&REPLICASETS, ns, name) else { return Ok(()) };
        let rs: ReplicaSet = object.typed()?;
        if rs.metadata.deletion_timestamp.is_some() {
            return Ok(());
        }
        let spec = rs.spec.clone().unwrap_or_default();
        let desired = spec.replicas.unwrap_or(1).max(0) as usize;
        let pods = self.owned_pods(ns, &object.uid)?;
        let mut active: Vec<&Pod> = pods.iter().filter(|p| is_active(p)).collect();
        if active.len() < desired {
            let template = spec.template.clone().unwrap_or_default();
            for _ in active.len()..desired {
                self.create_pod(
                    ns,
                    &template,
                    None,
                    &format!("{name}-"),
                    &BTreeMap::new(),
                    owner_ref("ReplicaSet", name, &object.uid),
                )?;
            }
        } else if active.len() > desired {
            // Delete the least valuable first: not ready, then the newest.
            active.sort_by_key(|p| {
                (is_ready(p), std::cmp::Reverse(p.metadata.creation_timestamp.as_ref().map(|t| t.0)))
            });
            for pod in &active[..active.len() - desired] {
                self.delete_pod(ns, pod)?;
            }
        }
        let pods = self.owned_pods(ns, &object.uid)?;
        let counted: Vec<&Pod> = pods.iter().filter(|p| is_active(p)).collect();
        let ready = counted.iter().filter(|p| is_ready(p)).count();
        let status = json!({
            "replicas": counted.len(), "fullyLabeledReplicas": counted.len(), "readyReplicas": ready,
            "availableReplicas": ready, "observedGeneration": rs.metadata.generation.unwrap_or(1),
        });
        self.write_status(&REPLICASETS, ns, name, &object.uid, status)
    }

    fn deployment(&self, ns: &str, name: &str) -> Result<(), ApiError> {
        let Ok(object) = self.state.store.get(&DEPLOYMENTS, ns, name) else { return Ok(()) };
        let deployment: Deployment = object.typed()?;
        if deployment.metadata.deletion_timestamp.is_some() {
            return Ok(());
        }
        let value = object.value();
        let spec = deployment.spec.clone().unwrap_or_default();
        let desired = spec.replicas.unwrap_or(1).max(0);
        let template_value = value.pointer("/spec/template").cloned().unwrap_or(Value::Null);
        let hash = template_hash(&template_value);
        let mut owned: Vec<ReplicaSet> = self
            .objects(&REPLICASETS, ns)?
            .iter()
            .filter(|o| owned_by(o, &object.uid))
            .map(|o| o.typed())
            .collect::<Result<_, _>>()?;
        let revision_of = |rs: &ReplicaSet| -> i64 {
            rs.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(REVISION))
                .and_then(|r| r.parse().ok())
                .unwrap_or(0)
        };
        owned.sort_by_key(revision_of);
        let max_revision = owned.iter().map(revision_of).max().unwrap_or(0);
        let rs_name = format!("{name}-{hash}");
        let labels_of = |rs: &ReplicaSet| rs.metadata.labels.clone().unwrap_or_default();
        let new_rs = owned.iter().find(|rs| labels_of(rs).get(POD_TEMPLATE_HASH) == Some(&hash)).cloned();
        let old: Vec<ReplicaSet> =
            owned.iter().filter(|rs| labels_of(rs).get(POD_TEMPLATE_HASH) != Some(&hash)).cloned().collect();
        let old_total: i32 =
            old.iter().map(|rs| rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0)).sum();
        let recreate = spec.strategy.as_ref().and_then(|s| s.type_.as_deref()) == Some("Recreate");
        let rolling = value.pointer("/spec/strategy/rollingUpdate");
        let mut max_surge = resolve(rolling.and_then(|r| r.get("maxSurge")), desired, true, 25);
        let max_unavailable = resolve(rolling.and_then(|r| r.get("maxUnavailable")), desired, false, 25);
        if max_surge == 0 && max_unavailable == 0 {
            max_surge = 1;
        }
        let new_revision = match &new_rs {
            Some(rs) if revision_of(rs) == max_revision => max_revision,
            _ => max_revision + 1,
        };
        let new_rs = match new_rs {
            Some(rs) => rs,
            None => {
                let mut template: PodTemplateSpec =
                    serde_json::from_value(template_value.clone()).map_err(ApiError::internal)?;
                template
                    .metadata
                    .get_or_insert_with(Default::default)
                    .labels
                    .get_or_insert_with(BTreeMap::new)
                    .insert(POD_TEMPLATE_HASH.into(), hash.clone());
                let mut selector = spec.selector.clone();
                selector
                    .match_labels
                    .get_or_insert_with(BTreeMap::new)
                    .insert(POD_TEMPLATE_HASH.into(), hash.clone());
                let initial = if old.is_empty() || recreate && old_total == 0 { desired } else { 0 };
                let mut labels =
                    template.metadata.as_ref().and_then(|m| m.labels.clone()).unwrap_or_default();
                labels.insert(POD_TEMPLATE_HASH.into(), hash.clone());
                let rs = json!({
                    "metadata": {"name": rs_name, "namespace": ns, "labels": labels,
                        "annotations": {REVISION: new_revision.to_string(),
                            "deployment.kubernetes.io/desired-replicas": desired.to_string(),
                            "deployment.kubernetes.io/max-replicas": (desired + max_surge).to_string()},
                        "ownerReferences": [owner_ref("Deployment", name, &object.uid)]},
                    "spec": {"replicas": initial, "selector": selector, "template": template,
                        "minReadySeconds": spec.min_ready_seconds.unwrap_or(0)},
                });
                let created = self.state.create(&REPLICASETS, ns, rs, false)?;
                serde_json::from_value(created).map_err(ApiError::internal)?
            }
        };
        let new_uid = new_rs.metadata.uid.clone().unwrap_or_default();
        let new_name = new_rs.metadata.name.clone().unwrap_or_default();
        if revision_of(&new_rs) != new_revision {
            self.update(&REPLICASETS, ns, &new_name, &new_uid, |v| {
                v["metadata"]["annotations"][REVISION] = json!(new_revision.to_string())
            })?;
        }
        let new_replicas = new_rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
        let ready_of = |rs: &ReplicaSet| rs.status.as_ref().and_then(|s| s.available_replicas).unwrap_or(0);
        let old_pods_left: i32 = old.iter().map(|rs| rs.status.as_ref().map_or(0, |s| s.replicas)).sum();
        let target_new = if recreate {
            if old_pods_left == 0 { desired } else { 0 }
        } else {
            let total = new_replicas + old_total;
            let room = (desired + max_surge - total).max(0);
            (new_replicas + room).min(desired).max(new_replicas.min(desired))
        };
        if target_new != new_replicas {
            self.update(&REPLICASETS, ns, &new_name, &new_uid, |v| {
                v["spec"]["replicas"] = json!(target_new)
            })?;
        }
        // Scale old ReplicaSets down as far as availability allows.
        let available: i32 = ready_of(&new_rs) + old.iter().map(ready_of).sum::<i32>();
        let mut can_remove =
            if recreate { i32::MAX } else { (available - (desired - max_unavailable)).max(0) };
        let unavailable_old: i32 =
            old.iter().map(|rs| rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0) - ready_of(rs)).sum();
        can_remove = can_remove.saturating_add(unavailable_old.max(0));
        for rs in &old {
            if can_remove <= 0 {
                break;
            }
            let replicas = rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
            if replicas == 0 {
                continue;
            }
            let scale_to = (replicas - can_remove).max(0);
            can_remove -= replicas - scale_to;
            let (rs_name, rs_uid) =
                (rs.metadata.name.clone().unwrap_or_default(), rs.metadata.uid.clone().unwrap_or_default());
            self.update(&REPLICASETS, ns, &rs_name, &rs_uid, |v| v["spec"]["replicas"] = json!(scale_to))?;
        }
        // Revision history: keep at most revisionHistoryLimit old ReplicaSets that are scaled to zero.
        let limit = spec.revision_history_limit.unwrap_or(10).max(0) as usize;
        let idle: Vec<&ReplicaSet> = old
            .iter()
            .filter(|rs| {
                rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0) == 0
                    && rs.status.as_ref().is_none_or(|s| s.replicas == 0)
            })
            .collect();
        if idle.len() > limit {
            for rs in &idle[..idle.len() - limit] {
                let options = DeleteOptions { uid: rs.metadata.uid.clone(), ..DeleteOptions::default() };
                let _ = self.state.delete(
                    &REPLICASETS,
                    ns,
                    rs.metadata.name.as_deref().unwrap_or_default(),
                    &options,
                );
            }
        }
        if deployment.metadata.annotations.as_ref().and_then(|a| a.get(REVISION))
            != Some(&new_revision.to_string())
        {
            self.update(&DEPLOYMENTS, ns, name, &object.uid, |v| {
                v["metadata"]["annotations"][REVISION] = json!(new_revision.to_string())
            })?;
        }
        // Status, from the ReplicaSets' statuses.
        let all: Vec<ReplicaSet> = self
            .objects(&REPLICASETS, ns)?
            .iter()
            .filter(|o| owned_by(o, &object.uid))
            .map(|o| o.typed())
            .collect::<Result<_, _>>()?;
        let sum = |f: &dyn Fn(&ReplicaSet) -> i32| all.iter().map(f).sum::<i32>();
        let replicas = sum(&|rs| rs.status.as_ref().map_or(0, |s| s.replicas));
        let ready = sum(&|rs| rs.status.as_ref().and_then(|s| s.ready_replicas).unwrap_or(0));
        let available = sum(&|rs| rs.status.as_ref().and_then(|s| s.available_replicas).unwrap_or(0));
        let updated = all
            .iter()
            .find(|rs| labels_of(rs).get(POD_TEMPLATE_HASH) == Some(&hash))
            .and_then(|rs| rs.status.as_ref())
            .map_or(0, |s| s.replicas);
        let complete = updated == desired && replicas == desired && available == desired;
        let is_available = available >= desired - max_unavailable;
        let now = crate::api::now_time();
        let keep_time = |type_: &str, status: &str| {
            value.pointer("/status/conditions").and_then(Value::as_array).and_then(|c| {
                c.iter()
                    .find(|c| c["type"] == type_ && c["status"] == status)
                    .and_then(|c| c.get("lastTransitionTime").cloned())
            })
        };
        let available_status = if is_available { "True" } else { "False" };
        let conditions = json!([
            {"type": "Available", "status": available_status,
             "reason": if is_available { "MinimumReplicasAvailable" } else { "MinimumReplicasUnavailable" },
             "message": if is_available { "Deployment has minimum availability." } else { "Deployment does not have minimum availability." },
             "lastTransitionTime": keep_time("Available", available_status).unwrap_or(now.clone()),
             "lastUpdateTime": keep_time("Available", available_status).unwrap_or(now.clone())},
            {"type": "Progressing", "status": "True",
             "reason": if complete { "NewReplicaSetAvailable" } else { "ReplicaSetUpdated" },
             "message": if complete { format!("ReplicaSet \"{rs_name}\" has successfully progressed.") } else { format!("ReplicaSet \"{rs_name}\" is progressing.") },
             "lastTransitionTime": keep_time("Progressing", "True").unwrap_or(now.clone()),
             "lastUpdateTime": keep_time("Progressing", "True").unwrap_or(now)},
        ]);
        let status = json!({
            "observedGeneration": deployment.metadata.generation.unwrap_or(1), "replicas": replicas,
            "updatedReplicas": updated, "readyReplicas": ready, "availableReplicas": available,
            "unavailableReplicas": (replicas - available).max(0), "conditions": conditions,
        });
        self.write_status(&DEPLOYMENTS, ns, name, &object.uid, status)
    }

    fn stateful_set(&self, ns: &str, name: &str) -> Result<(), ApiError> {
        let Ok(object) = self.state.store.get(&STATEFULSETS, ns, name) else { return Ok(()) };
        let sts: StatefulSet = object.typed()?;
        if sts.metadata.deletion_timestamp.is_some() {
            return Ok(());
        }
        let value = object.value();
        let spec = sts.spec.clone().unwrap_or_default();
        let desired = spec.replicas.unwrap_or(1).max(0) as usize;
        let template_value = value.pointer("/spec/template").cloned().unwrap_or(Value::Null);
        let revision = format!("{name}-{}", template_hash(&template_value));
        if self.state.store.get(&CONTROLLERREVISIONS, ns, &revision).is_err() {
            let number =
                self.objects(&CONTROLLERREVISIONS, ns)?.iter().filter(|o| owned_by(o, &object.uid)).count()
                    + 1;
            let cr = json!({"metadata": {"name": revision, "namespace": ns,
                "labels": spec.selector.match_labels.clone().unwrap_or_default(),
                "ownerReferences": [owner_ref("StatefulSet", name, &object.uid)]},
                "data": {"spec": {"template": template_value}}, "revision": number});
            self.state.create(&CONTROLLERREVISIONS, ns, cr, false)?;
        }
        let pods = self.owned_pods(ns, &object.uid)?;
        let by_name: BTreeMap<String, &Pod> =
            pods.iter().map(|p| (p.metadata.name.clone().unwrap_or_default(), p)).collect();
        let revision_of =
            |p: &Pod| p.metadata.labels.as_ref().and_then(|l| l.get(CONTROLLER_REVISION_HASH)).cloned();
        // OrderedReady: create the lowest missing ordinal once every lower one is running and ready.
        for ordinal in 0..desired {
            let pod_name = format!("{name}-{ordinal}");
            match by_name.get(&pod_name) {
                None => {
                    let template: PodTemplateSpec =
                        serde_json::from_value(template_value.clone()).map_err(ApiError::internal)?;
                    let labels = BTreeMap::from([
                        (CONTROLLER_REVISION_HASH.to_owned(), revision.clone()),
                        ("statefulset.kubernetes.io/pod-name".to_owned(), pod_name.clone()),
                        ("apps.kubernetes.io/pod-index".to_owned(), ordinal.to_string()),
                    ]);
                    let mut template = template;
                    if let Some(pod_spec) = template.spec.as_mut() {
                        pod_spec.hostname = Some(pod_name.clone());
                        pod_spec.subdomain = spec.service_name.clone().filter(|s| !s.is_empty());
                    }
                    self.create_pod(
                        ns,
                        &template,
                        Some(pod_name),
                        "",
                        &labels,
                        owner_ref("StatefulSet", name, &object.uid),
                    )?;
                    break;
                }
                Some(pod) if pod.metadata.deletion_timestamp.is_some() => break,
                Some(pod)
                    if matches!(
                        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
                        Some("Failed" | "Succeeded")
                    ) =>
                {
                    self.delete_pod(ns, pod)?;
                    break;
                }
                Some(pod) if !is_ready(pod) => break,
                Some(_) => {}
            }
        }
        // Scale down from the highest ordinal, one at a time.
        let ordinal_of = |n: &str| n.rsplit_once('-').and_then(|(_, o)| o.parse::<usize>().ok());
        if let Some(extra) = by_name
            .iter()
            .filter(|(n, p)| {
                ordinal_of(n).is_some_and(|o| o >= desired) && p.metadata.deletion_timestamp.is_none()
            })
            .max_by_key(|(n, _)| ordinal_of(n))
        {
            self.delete_pod(ns, extra.1)?;
        }
        // Rolling update: once all pods exist and are ready, replace the highest ordinal on an old revision.
        let all_ready = (0..desired).all(|o| {
            by_name
                .get(&format!("{name}-{o}"))
                .is_some_and(|p| is_ready(p) && p.metadata.deletion_timestamp.is_none())
        });
        if all_ready
            && spec.update_strategy.as_ref().and_then(|s| s.type_.as_deref()) != Some("OnDelete")
            && let Some(outdated) = (0..desired).rev().map(|o| format!("{name}-{o}")).find(|n| {
                by_name.get(n).is_some_and(|p| revision_of(p).as_deref() != Some(revision.as_str()))
            })
            && let Some(pod) = by_name.get(&outdated)
        {
            self.delete_pod(ns, pod)?;
        }
        let pods = self.owned_pods(ns, &object.uid)?;
        let active: Vec<&Pod> = pods.iter().filter(|p| p.metadata.deletion_timestamp.is_none()).collect();
        let ready = active.iter().filter(|p| is_ready(p)).count();
        let updated = active.iter().filter(|p| revision_of(p).as_deref() == Some(revision.as_str())).count();
        let current_revision = if updated == active.len() {
            revision.clone()
        } else {
            value
                .pointer("/status/currentRevision")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .unwrap_or_else(|| revision.clone())
        };
        let status = json!({
            "observedGeneration": sts.metadata.generation.unwrap_or(1), "replicas": active.len(), "readyReplicas": ready,
            "availableReplicas": ready, "currentReplicas": if current_revision == revision { updated } else { active.len() - updated },
            "updatedReplicas": updated, "currentRevision": current_revision, "updateRevision": revision,
            "collisionCount": 0,
        });
        self.write_status(&STATEFULSETS, ns, name, &object.uid, status)
    }

    /// Background garbage collection: deletes whatever a removed owner controlled.
    fn collect(&self, ns: &str, owner_uid: &str) -> Result<(), ApiError> {
        for def in [&REPLICASETS, &PODS, &CONTROLLERREVISIONS] {
            for object in self.objects(def, ns)?.iter().filter(|o| owned_by(o, owner_uid)) {
                let options = DeleteOptions { uid: Some(object.uid.clone()), ..DeleteOptions::default() };
                match self.state.delete(def, ns, &object.name, &options) {
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
