//! Revision health, observed: which revision of each Deployment and StatefulSet served healthy — every
//! pod it wants ready, none restarting — and since when. A revision that serves so for the settling time
//! (`--known-good-after`) is known-good, and stays on record in the `kubesent-revisions` bucket after a
//! finished rollout scaled it to zero, which the cluster itself forgets.
//!
//! Pure tracking, no I/O: the watch loop feeds pods, ReplicaSets and StatefulSets in and a clock tick,
//! and gets the [`ServedChange`]s to record out. Memory is one small slot per pod and per revision.
//!
//! A Deployment's revision is a ReplicaSet: it wants the ReplicaSet's `spec.replicas` pods. A
//! StatefulSet's revision is a ControllerRevision its pods name in `controller-revision-hash`: it wants
//! all the set's `spec.replicas` pods on it (a set half-way through a rolling update serves no single
//! revision whole).

use std::{collections::HashMap, time::Duration};

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kubesent_proto::{WorkloadKind, WorkloadRef, served::ServedRevision};
use serde::Deserialize;

use crate::lean::LeanPod;

/// Default settling time before a healthy revision is known-good.
pub const DEFAULT_KNOWN_GOOD_AFTER: Duration = Duration::from_secs(10 * 60);

/// A ReplicaSet or a StatefulSet, reduced to its name, owner and wanted replicas.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct LeanScaled {
    /// Name, namespace, uid, owner references and the revision hash label.
    #[serde(default, deserialize_with = "crate::lean::lean_metadata")]
    pub metadata: ObjectMeta,
    /// `spec.replicas`.
    #[serde(default)]
    pub spec: Option<LeanReplicas>,
}

/// The `replicas` of a spec (1 when absent, as the API defaults it).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct LeanReplicas {
    /// Pods wanted.
    #[serde(default)]
    pub replicas: Option<i32>,
}

impl LeanScaled {
    fn replicas(&self) -> i32 {
        self.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
    }
}

/// A ReplicaSet as the detector watches it.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct LeanReplicaSet(pub LeanScaled);

/// A StatefulSet as the detector watches it.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct LeanStatefulSet(pub LeanScaled);

kubesent_common::lean_resource!(LeanReplicaSet, "ReplicaSet", "apps", "v1", "replicasets", 0.metadata);
kubesent_common::lean_resource!(LeanStatefulSet, "StatefulSet", "apps", "v1", "statefulsets", 0.metadata);

/// What to record about a workload's revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServedChange {
    /// The revision has served healthy for the settling time.
    KnownGood {
        /// The workload's namespace.
        namespace: String,
        /// The workload.
        workload: WorkloadRef,
        /// The workload's uid.
        uid: String,
        /// The revision and how it served.
        served: ServedRevision,
    },
    /// A known-good revision stopped serving healthy.
    Ended {
        /// The workload's namespace.
        namespace: String,
        /// The workload.
        workload: WorkloadRef,
        /// The workload's uid.
        uid: String,
        /// The revision (ReplicaSet or ControllerRevision name).
        revision: String,
        /// When.
        at: Timestamp,
    },
}

impl ServedChange {
    /// The workload's namespace and reference.
    pub fn workload(&self) -> (&str, &WorkloadRef) {
        match self {
            Self::KnownGood { namespace, workload, .. } | Self::Ended { namespace, workload, .. } => {
                (namespace, workload)
            }
        }
    }
}

/// A revision, shared by its pods' slots (one allocation per revision, not per pod).
type RevisionKey = std::sync::Arc<RevisionId>;

/// A revision: its namespace, whose it is and its name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct RevisionId {
    namespace: Box<str>,
    kind: WorkloadKind,
    /// The ReplicaSet (Deployment) or the StatefulSet.
    scaled: Box<str>,
    /// The ReplicaSet or ControllerRevision name.
    name: Box<str>,
}

#[derive(Debug, Default)]
struct RevisionState {
    hash: Box<str>,
    pods: u32,
    ready: u32,
    healthy_since: Option<Timestamp>,
    /// Known-good since this healthy stretch began (recorded).
    known_good: bool,
}

#[derive(Debug)]
struct PodSlot {
    revision: RevisionKey,
    ready: bool,
    restarts: i32,
}

/// A ReplicaSet's owning Deployment and wanted replicas, or a StatefulSet's uid and wanted replicas.
#[derive(Debug, Clone, PartialEq)]
struct Scaled {
    /// The workload (a ReplicaSet's Deployment, or the StatefulSet itself) and its uid.
    workload: Option<(Box<str>, Box<str>)>,
    replicas: i32,
}

/// The health of every revision seen.
#[derive(Debug)]
pub struct RevisionHealth {
    settle: SignedDuration,
    pods: HashMap<Box<str>, PodSlot>,
    revisions: HashMap<RevisionKey, RevisionState>,
    /// ReplicaSets and StatefulSets by (kind, namespace, name).
    scaled: HashMap<(WorkloadKind, Box<str>, Box<str>), Scaled>,
}

impl Default for RevisionHealth {
    fn default() -> Self {
        Self::new(DEFAULT_KNOWN_GOOD_AFTER)
    }
}

/// Whether a pod is ready: its `Ready` condition, or every container ready when it has none.
fn pod_ready(pod: &LeanPod) -> bool {
    let Some(status) = pod.status.as_ref() else { return false };
    if let Some(ready) = status.conditions.iter().flatten().find(|c| c.type_ == "Ready") {
        return ready.status == "True";
    }
    status.container_statuses.as_ref().is_some_and(|cs| !cs.is_empty() && cs.iter().all(|c| c.ready))
}

fn restarts(pod: &LeanPod) -> i32 {
    let Some(status) = pod.status.as_ref() else { return 0 };
    status
        .container_statuses
        .iter()
        .chain(status.init_container_statuses.iter())
        .flatten()
        .map(|c| c.restart_count.max(0))
        .fold(0i32, i32::saturating_add)
}

/// The revision a pod runs: its ReplicaSet (with `pod-template-hash`) or its StatefulSet's
/// ControllerRevision (`controller-revision-hash`).
fn revision_of(pod: &LeanPod) -> Option<RevisionKey> {
    let owner = kubesent_common::owner::controller(&pod.metadata)?;
    let namespace: Box<str> = pod.metadata.namespace.as_deref()?.into();
    let label = |key: &str| pod.metadata.labels.as_ref().and_then(|l| l.get(key)).map(String::as_str);
    match owner.kind.as_str() {
        "ReplicaSet" => {
            label("pod-template-hash")?;
            Some(RevisionKey::new(RevisionId {
                namespace,
                kind: WorkloadKind::ReplicaSet,
                scaled: owner.name.as_str().into(),
                name: owner.name.as_str().into(),
            }))
        }
        "StatefulSet" => Some(RevisionKey::new(RevisionId {
            namespace,
            kind: WorkloadKind::StatefulSet,
            scaled: owner.name.as_str().into(),
            name: label("controller-revision-hash")?.into(),
        })),
        _ => None,
    }
}

fn pod_hash(pod: &LeanPod, kind: WorkloadKind) -> Box<str> {
    let key = if kind == WorkloadKind::ReplicaSet { "pod-template-hash" } else { "controller-revision-hash" };
    pod.metadata.labels.as_ref().and_then(|l| l.get(key)).map(String::as_str).unwrap_or_default().into()
}

impl RevisionHealth {
    /// A fresh memory; a revision is known-good after serving healthy for `settle`.
    pub fn new(settle: Duration) -> Self {
        Self {
            settle: SignedDuration::try_from(settle).unwrap_or(SignedDuration::MAX),
            pods: HashMap::new(),
            revisions: HashMap::new(),
            scaled: HashMap::new(),
        }
    }

    /// Revisions remembered (for the memory figure).
    pub fn revisions(&self) -> usize {
        self.revisions.len()
    }

    /// Records a pod seen at `now`.
    pub fn observe_pod(&mut self, pod: &LeanPod, now: Timestamp) -> Vec<ServedChange> {
        let Some(uid) = pod.metadata.uid.as_deref() else { return Vec::new() };
        if pod.metadata.deletion_timestamp.is_some() {
            return self.forget_pod(uid, now);
        }
        let Some(key) = revision_of(pod) else { return self.forget_pod(uid, now) };
        let ready = pod_ready(pod);
        let restarts = restarts(pod);
        let mut changes = Vec::new();
        let restarted = match self.pods.get(uid) {
            Some(slot) if slot.revision == key => {
                let restarted = restarts > slot.restarts;
                if slot.ready != ready {
                    let state = self.revisions.entry(key.clone()).or_default();
                    if ready {
                        state.ready += 1;
                    } else {
                        state.ready = state.ready.saturating_sub(1);
                    }
                }
                restarted
            }
            Some(_) => {
                changes.extend(self.forget_pod(uid, now));
                self.add_pod(uid, &key, ready, pod, restarts);
                false
            }
            None => {
                self.add_pod(uid, &key, ready, pod, restarts);
                false
            }
        };
        if let Some(slot) = self.pods.get_mut(uid) {
            slot.ready = ready;
            slot.restarts = restarts;
        }
        if restarted {
            // A restart ends a healthy stretch, even if the pod is ready again by now.
            changes.extend(self.interrupt(&key, now));
        }
        changes.extend(self.evaluate(&key, now));
        changes
    }

    fn add_pod(&mut self, uid: &str, key: &RevisionKey, ready: bool, pod: &LeanPod, restarts: i32) {
        // The revision's own key, so every pod of it shares one allocation.
        let key = self.revisions.get_key_value(key).map_or_else(|| key.clone(), |(known, _)| known.clone());
        let state = self.revisions.entry(key.clone()).or_default();
        state.pods += 1;
        if ready {
            state.ready += 1;
        }
        if state.hash.is_empty() {
            state.hash = pod_hash(pod, key.kind);
        }
        self.pods.insert(uid.into(), PodSlot { revision: key, ready, restarts });
    }

    /// Forgets a deleted (or terminating) pod.
    pub fn forget_pod(&mut self, uid: &str, now: Timestamp) -> Vec<ServedChange> {
        let Some(slot) = self.pods.remove(uid) else { return Vec::new() };
        if let Some(state) = self.revisions.get_mut(&slot.revision) {
            state.pods = state.pods.saturating_sub(1);
            if slot.ready {
                state.ready = state.ready.saturating_sub(1);
            }
        }
        let changes = self.evaluate(&slot.revision, now).into_iter().collect();
        self.drop_if_idle(&slot.revision);
        changes
    }

    /// Forgets every pod `keep` does not hold (after a relist).
    pub fn retain_pods(&mut self, keep: impl Fn(&str) -> bool, now: Timestamp) -> Vec<ServedChange> {
        let gone: Vec<Box<str>> = self.pods.keys().filter(|uid| !keep(uid)).cloned().collect();
        gone.iter().flat_map(|uid| self.forget_pod(uid, now)).collect()
    }

    /// Records a ReplicaSet (`kind` ReplicaSet) or a StatefulSet (`kind` StatefulSet).
    pub fn observe_scaled(
        &mut self,
        kind: WorkloadKind,
        set: &LeanScaled,
        now: Timestamp,
    ) -> Vec<ServedChange> {
        let (Some(namespace), Some(name)) = (set.metadata.namespace.as_deref(), set.metadata.name.as_deref())
        else {
            return Vec::new();
        };
        let workload = match kind {
            WorkloadKind::ReplicaSet => kubesent_common::owner::controller(&set.metadata)
                .filter(|o| o.kind == "Deployment")
                .map(|o| (o.name.as_str().into(), o.uid.as_str().into())),
            _ => set.metadata.uid.as_deref().map(|uid| (name.into(), uid.into())),
        };
        if set.metadata.deletion_timestamp.is_some() {
            return self.forget_scaled(kind, namespace, name, now);
        }
        let scaled = Scaled { workload, replicas: set.replicas() };
        let key = (kind, Box::<str>::from(namespace), Box::<str>::from(name));
        if self.scaled.get(&key) == Some(&scaled) {
            // A status update (every pod turning ready writes one): nothing the revisions read changed,
            // so none is looked at.
            return Vec::new();
        }
        self.scaled.insert(key, scaled);
        self.evaluate_scaled(kind, namespace, name, now)
    }

    /// Forgets a deleted ReplicaSet or StatefulSet.
    pub fn forget_scaled(
        &mut self,
        kind: WorkloadKind,
        namespace: &str,
        name: &str,
        now: Timestamp,
    ) -> Vec<ServedChange> {
        let changes = self.evaluate_scaled(kind, namespace, name, now);
        // Evaluated with the set still known (an end needs the workload's name), then without it.
        self.scaled.remove(&(kind, namespace.into(), name.into()));
        let keys: Vec<RevisionKey> = self.revisions_of(kind, namespace, name).cloned().collect();
        let mut changes = changes;
        for key in keys {
            changes.extend(self.interrupt(&key, now));
            self.drop_if_idle(&key);
        }
        changes
    }

    /// Forgets every ReplicaSet (`kind` ReplicaSet) or StatefulSet that `keep` does not hold (after a
    /// relist).
    pub fn retain_scaled(
        &mut self,
        kind: WorkloadKind,
        keep: impl Fn(&str, &str) -> bool,
        now: Timestamp,
    ) -> Vec<ServedChange> {
        let gone: Vec<(Box<str>, Box<str>)> = self
            .scaled
            .keys()
            .filter(|(k, ns, name)| *k == kind && !keep(ns, name))
            .map(|(_, ns, name)| (ns.clone(), name.clone()))
            .collect();
        gone.iter().flat_map(|(ns, name)| self.forget_scaled(kind, ns, name, now)).collect()
    }

    fn revisions_of<'a>(
        &'a self,
        kind: WorkloadKind,
        namespace: &'a str,
        name: &'a str,
    ) -> impl Iterator<Item = &'a RevisionKey> {
        self.revisions
            .keys()
            .filter(move |k| k.kind == kind && &*k.namespace == namespace && &*k.scaled == name)
    }

    fn evaluate_scaled(
        &mut self,
        kind: WorkloadKind,
        namespace: &str,
        name: &str,
        now: Timestamp,
    ) -> Vec<ServedChange> {
        let keys: Vec<RevisionKey> = self.revisions_of(kind, namespace, name).cloned().collect();
        keys.iter().filter_map(|key| self.evaluate(key, now)).collect()
    }

    fn drop_if_idle(&mut self, key: &RevisionKey) {
        if self.revisions.get(key).is_some_and(|s| s.pods == 0 && s.healthy_since.is_none()) {
            self.revisions.remove(key);
        }
    }

    /// The workload and the pods a revision wants, when its ReplicaSet or StatefulSet is known.
    fn wanted(&self, key: &RevisionKey) -> Option<(WorkloadRef, &str, i32)> {
        let scaled = self.scaled.get(&(key.kind, key.namespace.clone(), key.scaled.clone()))?;
        let (name, uid) = scaled.workload.as_ref()?;
        let kind = match key.kind {
            WorkloadKind::ReplicaSet => WorkloadKind::Deployment,
            other => other,
        };
        Some((WorkloadRef { kind, name: name.to_string() }, uid, scaled.replicas))
    }

    /// Ends a revision's healthy stretch (a restart, its set gone); the end when it was known-good.
    fn interrupt(&mut self, key: &RevisionKey, now: Timestamp) -> Option<ServedChange> {
        let ended = self.ended(key, now);
        if let Some(state) = self.revisions.get_mut(key) {
            state.healthy_since = None;
            state.known_good = false;
        }
        ended
    }

    fn ended(&self, key: &RevisionKey, now: Timestamp) -> Option<ServedChange> {
        let state = self.revisions.get(key)?;
        if !state.known_good {
            return None;
        }
        let (workload, uid, _) = self.wanted(key)?;
        Some(ServedChange::Ended {
            namespace: key.namespace.to_string(),
            workload,
            uid: uid.to_owned(),
            revision: key.name.to_string(),
            at: now,
        })
    }

    /// Starts or ends the revision's healthy stretch as its pods and wanted replicas say.
    fn evaluate(&mut self, key: &RevisionKey, now: Timestamp) -> Option<ServedChange> {
        let healthy = {
            let state = self.revisions.get(key)?;
            let wanted = self.wanted(key).map(|(_, _, replicas)| replicas).unwrap_or(0);
            wanted > 0 && i64::from(state.pods) == i64::from(wanted) && state.ready == state.pods
        };
        let state = self.revisions.get(key)?;
        match (healthy, state.healthy_since) {
            (true, None) => {
                if let Some(state) = self.revisions.get_mut(key) {
                    state.healthy_since = Some(now);
                }
                None
            }
            (false, Some(_)) => self.interrupt(key, now),
            _ => None,
        }
    }

    /// The revisions that have now served healthy for the settling time.
    pub fn tick(&mut self, now: Timestamp) -> Vec<ServedChange> {
        let due: Vec<RevisionKey> = self
            .revisions
            .iter()
            .filter(|(_, s)| {
                !s.known_good && s.healthy_since.is_some_and(|since| now.duration_since(since) >= self.settle)
            })
            .map(|(k, _)| k.clone())
            .collect();
        let mut changes = Vec::new();
        for key in due {
            let Some(change) = self.known_good_change(&key, now) else { continue };
            if let Some(state) = self.revisions.get_mut(&key) {
                state.known_good = true;
            }
            changes.push(change);
        }
        changes
    }

    fn known_good_change(&self, key: &RevisionKey, known_good_at: Timestamp) -> Option<ServedChange> {
        let state = self.revisions.get(key)?;
        let (workload, uid, replicas) = self.wanted(key)?;
        Some(ServedChange::KnownGood {
            namespace: key.namespace.to_string(),
            workload,
            uid: uid.to_owned(),
            served: ServedRevision {
                name: key.name.to_string(),
                hash: state.hash.to_string(),
                replicas,
                healthy_since: state.healthy_since?,
                known_good_at,
                until: None,
            },
        })
    }

    /// Every revision known-good now (what a new leader records again: its predecessor may not have).
    pub fn known_good_now(&self) -> Vec<ServedChange> {
        self.revisions
            .iter()
            .filter(|(_, s)| s.known_good)
            .filter_map(|(key, s)| {
                let since = s.healthy_since?;
                self.known_good_change(key, since.checked_add(self.settle).ok()?)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).expect("time")
    }

    fn pod(uid: &str, rs: &str, hash: &str, ready: bool, restarts: i32) -> LeanPod {
        serde_json::from_value(json!({
            "metadata": {"name": uid, "namespace": "shop", "uid": uid,
                "labels": {"pod-template-hash": hash, "app": "web"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": rs, "uid": format!("uid-{rs}"), "controller": true}]},
            "status": {"phase": "Running",
                "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}],
                "containerStatuses": [{"name": "app", "ready": ready, "restartCount": restarts}]}
        }))
        .expect("pod")
    }

    fn set_pod(uid: &str, revision: &str, ready: bool) -> LeanPod {
        serde_json::from_value(json!({
            "metadata": {"name": uid, "namespace": "shop", "uid": uid,
                "labels": {"controller-revision-hash": revision},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "db", "uid": "uid-db", "controller": true}]},
            "status": {"phase": "Running", "containerStatuses": [{"name": "db", "ready": ready, "restartCount": 0}]}
        }))
        .expect("pod")
    }

    fn replica_set(name: &str, replicas: i32) -> LeanScaled {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "shop", "uid": format!("uid-{name}"),
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "uid": "uid-web", "controller": true}]},
            "spec": {"replicas": replicas, "template": {"spec": {"containers": [{"name": "app", "image": "web:1"}]}}}
        }))
        .expect("rs")
    }

    fn stateful_set(replicas: i32) -> LeanScaled {
        serde_json::from_value(json!({
            "metadata": {"name": "db", "namespace": "shop", "uid": "uid-db"},
            "spec": {"replicas": replicas}
        }))
        .expect("sts")
    }

    const SETTLE: Duration = Duration::from_secs(600);

    fn known_good(changes: &[ServedChange]) -> Vec<(String, i32, i64)> {
        changes
            .iter()
            .filter_map(|c| match c {
                ServedChange::KnownGood { served, .. } => Some((
                    served.name.clone(),
                    served.replicas,
                    served.known_good_at.duration_since(served.healthy_since).as_secs(),
                )),
                ServedChange::Ended { .. } => None,
            })
            .collect()
    }

    fn ends(changes: &[ServedChange]) -> Vec<(String, Timestamp)> {
        changes
            .iter()
            .filter_map(|c| match c {
                ServedChange::Ended { revision, at, .. } => Some((revision.clone(), *at)),
                ServedChange::KnownGood { .. } => None,
            })
            .collect()
    }

    /// Revision 1 (web-111) serving 3/3, its record, then a finished rollout to web-222 scaling it down.
    fn serving(health: &mut RevisionHealth) {
        assert!(
            health.observe_scaled(WorkloadKind::ReplicaSet, &replica_set("web-111", 3), at(0)).is_empty()
        );
        for i in 0..3 {
            assert!(health.observe_pod(&pod(&format!("p{i}"), "web-111", "111", true, 0), at(1)).is_empty());
        }
    }

    #[test]
    fn a_revision_whose_wanted_pods_all_serve_ready_is_known_good_after_the_settling_time() {
        let mut health = RevisionHealth::new(SETTLE);
        serving(&mut health);
        assert!(health.tick(at(600)).is_empty(), "healthy since 1 s: 599 s are not enough");
        let changes = health.tick(at(601));
        assert_eq!(known_good(&changes), vec![("web-111".to_owned(), 3, 600)]);
        let ServedChange::KnownGood { workload, uid, served, .. } = &changes[0] else { unreachable!() };
        assert_eq!(
            (workload.kind, workload.name.as_str(), uid.as_str(), served.hash.as_str()),
            (WorkloadKind::Deployment, "web", "uid-web", "111")
        );
        assert!(health.tick(at(1200)).is_empty(), "recorded once");
        assert_eq!(known_good(&health.known_good_now()), vec![("web-111".to_owned(), 3, 600)]);
    }

    #[test]
    fn a_finished_rollout_ends_the_old_revisions_stretch_and_the_record_says_when() {
        let mut health = RevisionHealth::new(SETTLE);
        serving(&mut health);
        health.tick(at(601));
        // The rollout: the old ReplicaSet scaled to 2 first (one pod terminating).
        let changes = health.observe_scaled(WorkloadKind::ReplicaSet, &replica_set("web-111", 2), at(7000));
        assert_eq!(ends(&changes), vec![("web-111".to_owned(), at(7000))]);
        assert!(health.forget_pod("p0", at(7001)).is_empty(), "no second end");
        health.observe_scaled(WorkloadKind::ReplicaSet, &replica_set("web-111", 0), at(7010));
        health.forget_pod("p1", at(7011));
        health.forget_pod("p2", at(7012));
        assert!(health.tick(at(9000)).is_empty(), "a revision scaled to zero serves nothing");
        assert!(health.known_good_now().is_empty());
        assert_eq!(health.revisions(), 0, "nothing left of it in memory");
    }

    #[test]
    fn too_few_pods_an_unready_pod_or_a_restart_is_not_healthy() {
        let mut health = RevisionHealth::new(SETTLE);
        health.observe_scaled(WorkloadKind::ReplicaSet, &replica_set("web-111", 3), at(0));
        health.observe_pod(&pod("p0", "web-111", "111", true, 0), at(0));
        health.observe_pod(&pod("p1", "web-111", "111", true, 0), at(0));
        assert!(health.tick(at(700)).is_empty(), "2 of 3 wanted pods");
        health.observe_pod(&pod("p2", "web-111", "111", false, 0), at(700));
        assert!(health.tick(at(1400)).is_empty(), "one pod not ready");
        health.observe_pod(&pod("p2", "web-111", "111", true, 0), at(1400));
        health.observe_pod(&pod("p1", "web-111", "111", true, 1), at(1900));
        assert!(health.tick(at(2001)).is_empty(), "a restart at 1900 s started the stretch again");
        assert_eq!(known_good(&health.tick(at(2500))), vec![("web-111".to_owned(), 3, 600)]);
        // A restart of a known-good revision ends its stretch and says so.
        assert_eq!(
            ends(&health.observe_pod(&pod("p1", "web-111", "111", true, 2), at(3000))),
            vec![("web-111".to_owned(), at(3000))]
        );
    }

    #[test]
    fn pods_of_a_replica_set_without_a_deployment_or_of_an_unknown_set_are_never_recorded() {
        let mut health = RevisionHealth::new(SETTLE);
        let mut bare = replica_set("web-111", 1);
        bare.metadata.owner_references = None;
        health.observe_scaled(WorkloadKind::ReplicaSet, &bare, at(0));
        health.observe_pod(&pod("p0", "web-111", "111", true, 0), at(0));
        health.observe_pod(&pod("q0", "web-999", "999", true, 0), at(0));
        assert!(health.tick(at(5000)).is_empty());
    }

    #[test]
    fn a_stateful_set_revision_is_known_good_only_with_every_pod_of_the_set_on_it() {
        let mut health = RevisionHealth::new(SETTLE);
        health.observe_scaled(WorkloadKind::StatefulSet, &stateful_set(2), at(0));
        health.observe_pod(&set_pod("d0", "db-aaa", true), at(0));
        health.observe_pod(&set_pod("d1", "db-bbb", true), at(0));
        assert!(health.tick(at(5000)).is_empty(), "half-way through a rolling update");
        health.observe_pod(&set_pod("d1", "db-aaa", true), at(5000));
        let changes = health.tick(at(5600));
        assert_eq!(known_good(&changes), vec![("db-aaa".to_owned(), 2, 600)]);
        let ServedChange::KnownGood { workload, served, .. } = &changes[0] else { unreachable!() };
        assert_eq!((workload.kind, served.hash.as_str()), (WorkloadKind::StatefulSet, "db-aaa"));
    }

    #[test]
    fn a_relist_forgets_pods_that_went_away_while_the_watch_was_down() {
        let mut health = RevisionHealth::new(SETTLE);
        serving(&mut health);
        health.tick(at(601));
        let changes = health.retain_pods(|uid| uid != "p2", at(700));
        assert_eq!(ends(&changes), vec![("web-111".to_owned(), at(700))]);
    }
}
