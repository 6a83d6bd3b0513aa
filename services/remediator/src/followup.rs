//! What happened next: every decision KubeSent did not carry out itself (shadow, or only suggested) is
//! followed for a window. The leader looks at the target's field the fix would have changed, tells from
//! its field manager (`managedFields`) whether a human or a controller changed it, compares the change
//! with KubeSent's proposal, and waits for the failure to stop; then it records a `followed` outcome and
//! counts it in the class's record. The follow-ups are kept in the intents bucket (`followup.<incident>`),
//! so a remediator that takes over goes on with them.

use std::{sync::Arc, time::Duration};

use async_nats::jetstream::kv;
use futures::StreamExt as _;
use jiff::Timestamp;
use k8s_openapi::{
    api::core::v1::{Container, Pod},
    apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry,
};
use kube::{Api, api::ListParams};
use kubesent_proto::{
    self as proto, Action, MemoryQuantity, OutcomeResult, WorkloadKind,
    autonomy::{FollowUp, Following, HumanResponse, SeenChange},
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, info, info_span, warn};

use crate::{Remediator, StepError, intent::IntentError, workload::WorkloadApi};

/// The field managers taken for people by default (prefixes): kubectl in all its commands
/// (`kubectl-edit`, `kubectl-patch`, `kubectl-rollout`, `kubectl-client-side-apply`, …), k9s, Lens and
/// Headlamp, and web consoles that send a browser's user agent.
pub const HUMAN_FIELD_MANAGERS: &str = "kubectl,k9s,lens,openlens,headlamp,Mozilla";

/// Which field managers are people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HumanManagers(Vec<String>);

impl HumanManagers {
    /// Managers whose name starts with one of `prefixes` (case-insensitive).
    pub fn new(prefixes: &[String]) -> Self {
        Self(prefixes.iter().map(|p| p.trim().to_ascii_lowercase()).filter(|p| !p.is_empty()).collect())
    }

    /// Whether `manager` is a person's tool.
    pub fn is_human(&self, manager: &str) -> bool {
        let manager = manager.to_ascii_lowercase();
        self.0.iter().any(|prefix| manager.starts_with(prefix.as_str()))
    }
}

impl Default for HumanManagers {
    fn default() -> Self {
        Self::new(&HUMAN_FIELD_MANAGERS.split(',').map(str::to_owned).collect::<Vec<_>>())
    }
}

/// Who last wrote a field, from `managedFields`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Writer {
    /// The field manager.
    pub manager: String,
    /// When its entry was last written.
    pub at: Option<Timestamp>,
}

/// What the cluster runs now in the field a fix would change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Current {
    /// A container's memory limit (none set: `None`).
    Memory(Option<MemoryQuantity>),
    /// A container's image.
    Image(Option<String>),
    /// The name of the workload's newest revision (ReplicaSet or ControllerRevision).
    Revision(Option<String>),
    /// Whether the Deployment's rollout is paused.
    Paused(bool),
}

/// The followed field as read now, and its writer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Its value.
    pub current: Current,
    /// Who last wrote it.
    pub writer: Option<Writer>,
}

/// The managers of entries that hold `path` (`["f:spec", "f:paused"]`), newest first.
pub fn writers_of(managed_fields: &[ManagedFieldsEntry], path: &[String]) -> Vec<Writer> {
    let mut writers: Vec<Writer> = managed_fields
        .iter()
        .filter(|entry| {
            let Some(fields) = entry.fields_v1.as_ref() else { return false };
            let mut node = &fields.0;
            path.iter().all(|element| match node.get(element.as_str()) {
                Some(next) => {
                    node = next;
                    true
                }
                None => false,
            })
        })
        .filter_map(|entry| {
            Some(Writer { manager: entry.manager.clone()?, at: entry.time.as_ref().map(|t| t.0) })
        })
        .collect();
    writers.sort_by_key(|w| std::cmp::Reverse(w.at));
    writers
}

/// The `managedFields` path of a container's field (`leaf`) in a pod template (`template`) or a pod.
pub fn container_path(template: bool, container: &str, leaf: &[&str]) -> Vec<String> {
    let key = format!("k:{}", serde_json::json!({"name": container}));
    let prefix: &[&str] = if template { &["f:spec", "f:template", "f:spec"] } else { &["f:spec"] };
    prefix
        .iter()
        .copied()
        .chain(["f:containers", key.as_str()])
        .chain(leaf.iter().copied())
        .map(str::to_owned)
        .collect()
}

fn memory_limit(container: Option<&Container>) -> Option<MemoryQuantity> {
    let limits = container?.resources.as_ref()?.limits.as_ref()?;
    MemoryQuantity::parse(&limits.get("memory")?.0).ok()
}

/// How the field now compares with KubeSent's proposal; `None` while nobody changed it.
pub fn response(action: &Action, snapshot: &Snapshot, humans: &HumanManagers) -> Option<SeenChange> {
    let same = match (action, &snapshot.current) {
        (Action::IncreaseMemory { from, to, .. }, Current::Memory(now)) => match now {
            Some(now) if now == from => return None,
            Some(now) => now >= to,
            None => false,
        },
        (Action::RollbackImage { from, to, .. }, Current::Image(now)) => match now.as_deref() {
            Some(now) if now == from => return None,
            now => now == Some(to.as_str()),
        },
        (Action::RollbackRevision { from, to, .. }, Current::Revision(now)) => match now.as_deref() {
            Some(now) if now == from.name => return None,
            now => now == Some(to.name.as_str()),
        },
        (Action::PauseRollout { .. }, Current::Paused(paused)) => {
            if !paused {
                return None;
            }
            true
        }
        (Action::PauseRollout { revision, .. }, Current::Revision(now)) => match now.as_deref() {
            Some(now) if now == revision.name => return None,
            _ => false,
        },
        _ => return None,
    };
    let by = snapshot.writer.as_ref().map(|w| w.manager.clone());
    let at = snapshot.writer.as_ref().and_then(|w| w.at);
    let human = by.as_deref().is_some_and(|m| humans.is_human(m));
    let response = match (human, same) {
        (false, _) => HumanResponse::Controller,
        (true, true) => HumanResponse::Same,
        (true, false) => HumanResponse::Different,
    };
    Some(SeenChange { response, by, at })
}

/// Whether `container` runs ready in every pod of `pods` that is not going away (and there is one).
pub fn failure_stopped(pods: &[Pod], container: &str) -> bool {
    let live: Vec<&Pod> = pods.iter().filter(|p| p.metadata.deletion_timestamp.is_none()).collect();
    !live.is_empty()
        && live.iter().all(|pod| {
            pod.status
                .as_ref()
                .and_then(|s| s.container_statuses.as_ref())
                .and_then(|statuses| statuses.iter().find(|cs| cs.name == container))
                .is_some_and(|cs| cs.ready && cs.state.as_ref().is_some_and(|s| s.running.is_some()))
        })
}

/// The follow-up's finding in a sentence.
pub fn describe(following: &Following, followup: &FollowUp) -> String {
    let who = followup.by.as_deref().map(|m| format!(" ({m})")).unwrap_or_default();
    let what = match followup.response {
        HumanResponse::Same => format!("a human made the change KubeSent proposed{who}"),
        HumanResponse::Different => format!("a human changed it differently{who}"),
        HumanResponse::Controller => format!("a controller changed it{who}, not a human"),
        HumanResponse::Nothing => "nobody changed it".to_owned(),
    };
    let failure = if followup.failure_stopped { "the failure stopped" } else { "the failure went on" };
    format!(
        "after KubeSent's {} decision to {} {}: {what}; {failure}",
        following.autonomy.mode,
        following.action.kind_str(),
        following.workload
    )
}

/// The follow-ups in the intents bucket.
#[derive(Clone)]
pub struct Followups {
    kv: kv::Store,
}

impl Followups {
    /// Wraps the bucket.
    pub fn new(kv: kv::Store) -> Self {
        Self { kv }
    }

    /// Begins following (once: a follow-up already there stays as it is).
    pub async fn start(&self, following: &Following) -> Result<(), IntentError> {
        let payload = serde_json::to_vec(following).map_err(|e| IntentError::Store(e.to_string()))?;
        match self.kv.create(proto::autonomy::followup_key(&following.incident), payload.into()).await {
            Ok(_) => Ok(()),
            Err(error) if kubesent_common::nats::is_cas_conflict(&error) => Ok(()),
            Err(error) => Err(IntentError::Store(error.to_string())),
        }
    }

    /// Every follow-up under way, with its revision (an unreadable one is removed).
    pub async fn open(&self) -> Result<Vec<(Following, u64)>, IntentError> {
        let prefix = format!("{}.", proto::autonomy::FOLLOWUP_PREFIX);
        let store = |e: &dyn std::fmt::Display| IntentError::Store(e.to_string());
        let mut keys = self.kv.keys().await.map_err(|e| store(&e))?;
        let mut open = Vec::new();
        while let Some(key) = keys.next().await {
            let key = key.map_err(|e| store(&e))?;
            if !key.starts_with(&prefix) {
                continue;
            }
            let Some(entry) = self.kv.entry(&key).await.map_err(|e| store(&e))? else { continue };
            if entry.operation != kv::Operation::Put {
                continue;
            }
            match serde_json::from_slice::<Following>(&entry.value) {
                Ok(following) if following.schema == proto::SCHEMA_VERSION => {
                    open.push((following, entry.revision));
                }
                _ => {
                    warn!(key, "removing an unreadable follow-up");
                    self.kv.purge(&key).await.map_err(|e| store(&e))?;
                }
            }
        }
        Ok(open)
    }

    /// Stores what was seen, only if nobody changed the follow-up since `revision`.
    pub async fn update(&self, following: &Following, revision: u64) -> Result<u64, IntentError> {
        let payload = serde_json::to_vec(following).map_err(|e| IntentError::Store(e.to_string()))?;
        self.kv
            .update(proto::autonomy::followup_key(&following.incident), payload.into(), revision)
            .await
            .map_err(|e| IntentError::Store(e.to_string()))
    }

    /// Ends a follow-up.
    pub async fn end(&self, incident: &proto::IncidentId) -> Result<(), IntentError> {
        self.kv
            .purge(proto::autonomy::followup_key(incident))
            .await
            .map_err(|e| IntentError::Store(e.to_string()))
    }
}

impl Remediator {
    /// While leading, looks at every follow-up each `--followup-every`.
    pub(crate) async fn follow_up(
        self: Arc<Self>,
        mut leading: watch::Receiver<bool>,
        shutdown: CancellationToken,
    ) {
        let every = self.config.earned.followup_every.max(Duration::from_millis(50));
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                led = leading.wait_for(|leads| *leads) => if led.is_err() { return },
            }
            match self.followups.open().await {
                Ok(open) => {
                    self.deps.metrics.followups_open.set(i64::try_from(open.len()).unwrap_or(i64::MAX));
                    for (following, revision) in open {
                        if !*leading.borrow() {
                            break;
                        }
                        let span = info_span!(parent: None, "follow-up", incident = %following.incident);
                        if let Err(error) = self.look(following, revision).instrument(span).await {
                            warn!(%error, "a follow-up step failed; trying again next time");
                        }
                    }
                }
                Err(error) => warn!(%error, "listing follow-ups failed; trying again"),
            }
            self.publish_class_modes().await;
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
        }
    }

    /// One look at a follow-up: records a change when one is seen, and ends it when the failure stopped
    /// after a change, or when its window is over (or the target is gone).
    async fn look(&self, mut following: Following, revision: u64) -> Result<(), StepError> {
        let now = Timestamp::now();
        let snapshot = match self.snapshot(&following).await {
            Ok(snapshot) => Some(snapshot),
            Err(StepError::Kube(kube::Error::Api(status))) if status.code == 404 => None,
            Err(error) => return Err(error),
        };
        let Some(snapshot) = snapshot else {
            return self.end_follow_up(&following, false, "the target is gone").await;
        };
        let mut changed = false;
        if following.seen.is_none()
            && let Some(seen) = response(&following.action, &snapshot, &self.human_managers)
        {
            info!(response = seen.response.as_str(), by = ?seen.by, "a change to the followed field");
            following.seen = Some(seen);
            changed = true;
        }
        // Stopped only once it held: a pod runs ready for a while before its next OOM kill.
        let healthy_since = match self.failure_stopped(&following).await? {
            true => Some(following.healthy_since.unwrap_or(now)),
            false => None,
        };
        if healthy_since != following.healthy_since {
            following.healthy_since = healthy_since;
            changed = true;
        }
        let held =
            jiff::SignedDuration::try_from(self.config.verify_window).unwrap_or(jiff::SignedDuration::ZERO);
        let stopped =
            healthy_since.and_then(|since| since.checked_add(held).ok()).is_some_and(|at| now >= at);
        if (following.seen.is_some() && stopped) || now >= following.until {
            return self.end_follow_up(&following, stopped, "").await;
        }
        if changed {
            self.followups.update(&following, revision).await?;
        }
        Ok(())
    }

    /// Reads the followed field.
    async fn snapshot(&self, following: &Following) -> Result<Snapshot, StepError> {
        let namespace = &following.pod.namespace;
        let container = following.action.container().unwrap_or_default().to_owned();
        if following.workload.kind == WorkloadKind::Pod {
            let pod =
                Api::<Pod>::namespaced(self.deps.kube.clone(), namespace).get(&following.pod.name).await?;
            let spec = pod.spec.as_ref().map(|s| s.containers.as_slice()).unwrap_or_default();
            let found = spec.iter().find(|c| c.name == container);
            let managed = pod.metadata.managed_fields.as_deref().unwrap_or_default();
            let (current, leaf): (Current, &[&str]) = match &following.action {
                Action::RollbackImage { .. } => {
                    (Current::Image(found.and_then(|c| c.image.clone())), &["f:image"])
                }
                _ => (Current::Memory(memory_limit(found)), &["f:resources", "f:limits", "f:memory"]),
            };
            let writer = writers_of(managed, &container_path(false, &container, leaf)).into_iter().next();
            return Ok(Snapshot { current, writer });
        }
        let api = WorkloadApi::new(self.deps.kube.clone(), namespace);
        let workload = api.get(&following.workload).await?;
        let managed = workload.managed_fields();
        let path = |leaf: &[&str]| container_path(true, &container, leaf);
        let (current, path) = match &following.action {
            Action::IncreaseMemory { .. } => (
                Current::Memory(memory_limit(workload.template_container(&container))),
                path(&["f:resources", "f:limits", "f:memory"]),
            ),
            Action::RollbackImage { .. } => (
                Current::Image(workload.template_container(&container).and_then(|c| c.image.clone())),
                path(&["f:image"]),
            ),
            Action::PauseRollout { .. } if workload.paused() => {
                (Current::Paused(true), vec!["f:spec".to_owned(), "f:paused".to_owned()])
            }
            Action::RollbackRevision { .. } | Action::PauseRollout { .. } => {
                let revisions = api.revisions(&workload).await?;
                let newest = revisions.iter().max_by_key(|r| r.number).map(|r| r.name.clone());
                (Current::Revision(newest), vec!["f:spec".to_owned(), "f:template".to_owned()])
            }
            Action::None => (Current::Paused(false), Vec::new()),
        };
        Ok(Snapshot { current, writer: writers_of(managed, &path).into_iter().next() })
    }

    /// Whether the failing container now runs ready in every pod of the target.
    async fn failure_stopped(&self, following: &Following) -> Result<bool, StepError> {
        let namespace = &following.pod.namespace;
        let pods: Api<Pod> = Api::namespaced(self.deps.kube.clone(), namespace);
        let container = following.action.container().unwrap_or_default();
        let listed = if following.workload.kind == WorkloadKind::Pod {
            pods.get_opt(&following.pod.name).await?.into_iter().collect::<Vec<_>>()
        } else {
            let workload =
                WorkloadApi::new(self.deps.kube.clone(), namespace).get(&following.workload).await?;
            pods.list(&ListParams::default().labels(&workload.selector())).await?.items
        };
        Ok(failure_stopped(&listed, container))
    }

    /// Records the follow-up's finding, counts it, and ends it.
    async fn end_follow_up(&self, following: &Following, stopped: bool, note: &str) -> Result<(), StepError> {
        let seen = following.seen.clone();
        let followup = FollowUp {
            response: seen.as_ref().map_or(HumanResponse::Nothing, |s| s.response),
            by: seen.as_ref().and_then(|s| s.by.clone()),
            changed_at: seen.as_ref().and_then(|s| s.at),
            failure_stopped: stopped,
        };
        let mut detail = describe(following, &followup);
        if !note.is_empty() {
            detail = format!("{detail} ({note})");
        }
        let outcome = proto::Outcome {
            schema: proto::SCHEMA_VERSION,
            incident: following.incident.clone(),
            pod: following.pod.clone(),
            action: following.action.clone(),
            result: OutcomeResult::Followed,
            strategy: None,
            detail,
            replacement_uid: None,
            actor: self.config.identity.clone(),
            decided_by: None,
            trace_id: None,
            diagnosis: following.diagnosis.clone(),
            autonomy: Some(following.autonomy),
            followup: Some(followup.clone()),
            at: Timestamp::now(),
        };
        let message_id = format!("followup-{}", following.incident);
        self.publish_outcome(&outcome, &message_id).await?;
        self.deps
            .metrics
            .followups
            .get_or_create(&crate::FollowUpLabel {
                class: following.autonomy.class.as_str(),
                response: followup.response.as_str(),
            })
            .inc();
        self.followups.end(&following.incident).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, Time};
    use kubesent_proto::RevisionRef;
    use serde_json::json;

    use super::*;

    fn entry(manager: &str, at: i64, fields: serde_json::Value) -> ManagedFieldsEntry {
        ManagedFieldsEntry {
            manager: Some(manager.into()),
            operation: Some("Update".into()),
            time: Some(Time(Timestamp::from_second(at).expect("time"))),
            fields_v1: Some(FieldsV1(fields)),
            ..ManagedFieldsEntry::default()
        }
    }

    fn raise() -> Action {
        Action::IncreaseMemory {
            container: "app".into(),
            from: MemoryQuantity::from_mib(128),
            to: MemoryQuantity::from_mib(256),
        }
    }

    fn seen(current: Current, manager: &str) -> Snapshot {
        Snapshot { current, writer: Some(Writer { manager: manager.into(), at: None }) }
    }

    #[test]
    fn a_change_is_the_same_different_or_a_controllers_by_its_value_and_its_field_manager() {
        let humans = HumanManagers::default();
        let mib = |n| Some(MemoryQuantity::from_mib(n));
        let image =
            Action::RollbackImage { container: "app".into(), from: "web:2".into(), to: "web:1".into() };
        let revision = |n: i64, name: &str| RevisionRef { number: n, name: name.into() };
        let undo = Action::RollbackRevision {
            container: "app".into(),
            from: revision(3, "web-3"),
            to: revision(2, "web-2"),
        };
        let pause = Action::PauseRollout { container: "app".into(), revision: revision(3, "web-3") };
        use HumanResponse::*;
        let cases = [
            (raise(), seen(Current::Memory(mib(128)), "kubectl-edit"), None, "unchanged"),
            (raise(), seen(Current::Memory(mib(256)), "kubectl-edit"), Some(Same), "raised as proposed"),
            (raise(), seen(Current::Memory(mib(512)), "kubectl-patch"), Some(Same), "raised further"),
            (raise(), seen(Current::Memory(mib(192)), "kubectl-edit"), Some(Different), "raised less"),
            (raise(), seen(Current::Memory(None), "kubectl-edit"), Some(Different), "limit removed"),
            (raise(), seen(Current::Memory(mib(256)), "argocd-controller"), Some(Controller), "GitOps"),
            (raise(), seen(Current::Memory(mib(256)), "vpa-updater"), Some(Controller), "autoscaler"),
            (raise(), seen(Current::Memory(mib(256)), "Mozilla/5.0"), Some(Same), "a web console"),
            (image.clone(), seen(Current::Image(Some("web:1".into())), "kubectl-set"), Some(Same), "image"),
            (
                image.clone(),
                seen(Current::Image(Some("web:3".into())), "kubectl-set"),
                Some(Different),
                "fixed",
            ),
            (image, seen(Current::Image(Some("web:2".into())), "kubectl-set"), None, "image unchanged"),
            (
                undo.clone(),
                seen(Current::Revision(Some("web-2".into())), "kubectl-rollout"),
                Some(Same),
                "undo",
            ),
            (
                undo.clone(),
                seen(Current::Revision(Some("web-4".into())), "kubectl-rollout"),
                Some(Different),
                "new",
            ),
            (undo, seen(Current::Revision(Some("web-3".into())), "kubectl-rollout"), None, "still 3"),
            (pause.clone(), seen(Current::Paused(true), "kubectl-rollout"), Some(Same), "paused"),
            (
                pause.clone(),
                seen(Current::Revision(Some("web-4".into())), "kubectl-edit"),
                Some(Different),
                "fixed",
            ),
            (pause, seen(Current::Revision(Some("web-3".into())), "kubectl-edit"), None, "still failing"),
        ];
        for (action, snapshot, expected, case) in cases {
            assert_eq!(response(&action, &snapshot, &humans).map(|s| s.response), expected, "{case}");
        }
        let nobody = Snapshot { current: Current::Memory(mib(256)), writer: None };
        assert_eq!(response(&raise(), &nobody, &humans).map(|s| s.response), Some(Controller), "no manager");
    }

    #[test]
    fn the_newest_entry_holding_a_field_names_its_writer() {
        let limit = |v| {
            json!({"f:spec": {"f:template": {"f:spec": {"f:containers": {"k:{\"name\":\"app\"}": {
                "f:resources": {"f:limits": {"f:memory": v}}}}}}}})
        };
        let managed = vec![
            entry("kubectl-client-side-apply", 10, limit(json!({}))),
            entry("kubectl-edit", 20, limit(json!({}))),
            entry("kube-controller-manager", 30, json!({"f:status": {}})),
        ];
        let path = container_path(true, "app", &["f:resources", "f:limits", "f:memory"]);
        let writers = writers_of(&managed, &path);
        assert_eq!(
            writers.iter().map(|w| w.manager.as_str()).collect::<Vec<_>>(),
            ["kubectl-edit", "kubectl-client-side-apply"]
        );
        assert!(writers_of(&managed, &container_path(true, "sidecar", &["f:image"])).is_empty());
    }

    #[test]
    fn the_failure_stopped_when_every_live_pod_runs_the_container_ready() {
        let pod = |ready: bool, running: bool, deleting: bool| -> Pod {
            serde_json::from_value(json!({
                "metadata": {"name": "p", "deletionTimestamp": if deleting { json!("2026-01-01T00:00:00Z") } else { json!(null) }},
                "status": {"containerStatuses": [{"name": "app", "ready": ready, "restartCount": 0, "image": "i", "imageID": "",
                    "state": if running { json!({"running": {}}) } else { json!({"waiting": {"reason": "CrashLoopBackOff"}}) }}]}
            }))
            .expect("pod")
        };
        assert!(failure_stopped(&[pod(true, true, false), pod(true, true, false)], "app"));
        assert!(!failure_stopped(&[pod(true, true, false), pod(false, false, false)], "app"));
        assert!(failure_stopped(&[pod(true, true, false), pod(false, false, true)], "app"), "one going away");
        assert!(!failure_stopped(&[], "app"), "no pod runs it");
        assert!(!failure_stopped(&[pod(true, true, false)], "sidecar"), "another container");
    }

    #[test]
    fn people_are_told_from_controllers_by_prefix_and_the_list_is_a_setting() {
        let humans = HumanManagers::default();
        for human in
            ["kubectl", "kubectl-edit", "kubectl-client-side-apply", "k9s", "Lens", "Mozilla/5.0 (X11)"]
        {
            assert!(humans.is_human(human), "{human}");
        }
        for controller in [
            "argocd-controller",
            "kustomize-controller",
            "helm-controller",
            "kubesent-remediator",
            "vpa-updater",
        ] {
            assert!(!humans.is_human(controller), "{controller}");
        }
        let custom = HumanManagers::new(&["rancher".into(), " ".into()]);
        assert!(custom.is_human("rancher-ui") && !custom.is_human("kubectl-edit"));
    }
}
