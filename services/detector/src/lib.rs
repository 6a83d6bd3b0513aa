//! The detector: watches pods, classifies container failures, groups them into incidents and publishes
//! one `FailureJob` per incident to `KUBESENT_JOBS`.
//!
//! Every replica keeps its watch warm; only the leader publishes. A replica that takes over publishes
//! every open incident again, and JetStream's deduplication (the `Nats-Msg-Id` is the incident
//! fingerprint) drops the ones already published. Publishing failures (NATS down, stream full) are
//! retried with back-off; nothing already seen is lost while they last.

pub mod args;
pub mod classify;
pub mod incident;
pub mod incidents;
pub mod jobs;
pub mod lean;
pub mod oom;
mod recorder;
pub mod served;
pub mod tracker;

use std::{collections::BTreeSet, sync::Arc, time::Duration};

use async_nats::jetstream;
use futures::{
    StreamExt,
    stream::{BoxStream, FuturesUnordered},
};
use kube::Api;
use kube_runtime::{WatchStreamExt as _, watcher};
use kubesent_common::{
    Backoff,
    admin::Health,
    leader::{LeaderConfig, Leadership},
    nats::{self, Role, Topology},
};
use kubesent_proto::{self as proto, Failure, FailureJob, PodRef};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use tokio::{
    sync::{mpsc, watch},
    time::Instant,
};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, debug, info, warn};

use crate::{
    incidents::{Holds, IncidentBook, Update},
    jobs::{JobTracker, LeanJob},
    lean::LeanPod,
    served::{LeanReplicaSet, LeanScaled, LeanStatefulSet, RevisionHealth, ServedChange},
    tracker::{PodTracker, Transition},
};

/// Jobs buffered between the watch and the publisher; a full buffer slows the watch down.
const JOB_BUFFER: usize = 10_000;
/// First retry delay after a failed publish.
const PUBLISH_RETRY_MIN: Duration = Duration::from_millis(200);
/// Longest retry delay after repeated failed publishes.
const PUBLISH_RETRY_MAX: Duration = Duration::from_secs(30);

/// What the detector watches and how it competes for leadership.
#[derive(Debug, Clone)]
pub struct DetectorConfig {
    /// Namespaces to watch; empty means all.
    pub namespaces: Vec<String>,
    /// Namespaces never reported (system namespaces).
    pub excluded_namespaces: Vec<String>,
    /// Leader election; `None` makes this replica always lead (single-replica and test set-ups).
    pub leader: Option<LeaderConfig>,
    /// How long a controller-owned workload's incident waits after its first failure so the replicas
    /// failing with it are counted in the same job (bare pods are published at once).
    pub group_wait: Duration,
    /// How long a pod may stay unschedulable, or a running container not ready, before its incident is
    /// published (one that leaves the state meanwhile is never reported).
    pub holds: Holds,
    /// How long an incident stays open (at most the jobs stream's dedup window).
    pub incident_ttl: Duration,
    /// How the jobs stream is sized (the detector creates it).
    pub topology: Topology,
    /// How long a revision must serve healthy (every wanted pod ready, no restart) to be recorded
    /// known-good.
    pub known_good_after: Duration,
}

/// Default [`DetectorConfig::incident_ttl`]: the default dedup window of the jobs stream.
pub const DEFAULT_INCIDENT_TTL: Duration = Duration::from_secs(15 * 60);

/// Default [`DetectorConfig::group_wait`]: long enough for replicas that crash together to be seen.
pub const DEFAULT_GROUP_WAIT: Duration = Duration::from_secs(2);

/// Default hold of an unschedulable pod: about what a cluster autoscaler needs to add a node.
pub const DEFAULT_PENDING_THRESHOLD: Duration = Duration::from_secs(120);

/// Default hold of a scheduled pod whose containers have not started: long enough for a large image to
/// pull and an init container to do its ordinary work.
pub const DEFAULT_START_THRESHOLD: Duration = Duration::from_secs(300);

/// Default hold of a container that is not ready: half a Deployment's default progress deadline.
pub const DEFAULT_UNREADY_THRESHOLD: Duration = Duration::from_secs(300);

/// The detector's clients and metrics.
pub struct DetectorDeps {
    /// Kubernetes client.
    pub kube: kube::Client,
    /// JetStream context.
    pub js: jetstream::Context,
    /// Metrics.
    pub metrics: Arc<DetectorMetrics>,
    /// Readiness, set once the jobs stream is set up.
    pub health: Arc<Health>,
}

/// Errors that stop the detector.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Shared runtime failure.
    #[error(transparent)]
    Common(#[from] kubesent_common::Error),
}

kubesent_common::label_values! {
    /// How JetStream acknowledged a job.
    pub enum PublishResult {
        /// Stored as new.
        Published => "published",
        /// Dropped as a duplicate of a job already stored (same incident).
        Duplicate => "duplicate",
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ResultLabel {
    result: PublishResult,
}

kubesent_common::label_values! {
    /// A change to the record of revisions that served healthy.
    pub enum RecordChange {
        /// A revision became known-good.
        KnownGood => "known_good",
        /// A known-good revision stopped serving healthy.
        Ended => "ended",
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RecordLabel {
    change: RecordChange,
}

/// Detector metrics.
#[derive(Debug)]
pub struct DetectorMetrics {
    watch_events: Counter,
    watch_errors: Counter,
    transitions: Counter,
    published: Family<ResultLabel, Counter>,
    publish_failures: Counter,
    tracked_pods: Gauge,
    open_incidents: Gauge,
    pending_jobs: Gauge,
    leader: Gauge,
    publishes_in_flight: Gauge,
    revisions_recorded: Family<RecordLabel, Counter>,
    revision_record_failures: Counter,
    tracked_revisions: Gauge,
    detection: kubesent_common::metrics::SliHistograms,
    /// Woken whenever the publisher changes a figure, so tests can await a state instead of polling.
    changed: tokio::sync::Notify,
}

impl Default for DetectorMetrics {
    fn default() -> Self {
        Self {
            watch_events: Counter::default(),
            watch_errors: Counter::default(),
            transitions: Counter::default(),
            published: Family::default(),
            publish_failures: Counter::default(),
            tracked_pods: Gauge::default(),
            open_incidents: Gauge::default(),
            pending_jobs: Gauge::default(),
            leader: Gauge::default(),
            publishes_in_flight: Gauge::default(),
            revisions_recorded: Family::default(),
            revision_record_failures: Counter::default(),
            tracked_revisions: Gauge::default(),
            detection: kubesent_common::metrics::sli_histograms(),
            changed: tokio::sync::Notify::default(),
        }
    }
}

impl DetectorMetrics {
    /// Creates the metrics and registers them under `kubesent_detector_`.
    pub fn register(registry: &mut Registry) -> Arc<Self> {
        let metrics = Self::default();
        let r = registry.sub_registry_with_prefix("kubesent_detector");
        r.register("watch_events", "Pod watch events processed", metrics.watch_events.clone());
        r.register("watch_errors", "Pod watch errors (the watcher retries)", metrics.watch_errors.clone());
        r.register("transitions", "Container failure transitions seen", metrics.transitions.clone());
        r.register("jobs_published", "Jobs acknowledged by JetStream, by result", metrics.published.clone());
        r.register(
            "detection_seconds",
            "From the failure (the container's termination or the condition's change, as the status records it) to its job stored in JetStream, by failure kind",
            metrics.detection.clone(),
        );
        r.register(
            "publish_failures",
            "Publish attempts that failed and will be retried",
            metrics.publish_failures.clone(),
        );
        r.register("tracked_pods", "Pods whose container state is tracked", metrics.tracked_pods.clone());
        r.register(
            "open_incidents",
            "Incidents with at least one failing pod",
            metrics.open_incidents.clone(),
        );
        r.register("pending_jobs", "Jobs waiting to be published", metrics.pending_jobs.clone());
        r.register("leader", "1 when this replica leads", metrics.leader.clone());
        r.register(
            "publishes_in_flight",
            "Jobs sent to JetStream whose acknowledgement is awaited (the publish window)",
            metrics.publishes_in_flight.clone(),
        );
        r.register(
            "revisions_recorded",
            "Changes written to the record of revisions that served healthy, by change",
            metrics.revisions_recorded.clone(),
        );
        r.register(
            "revision_record_failures",
            "Writes of the revisions record that failed and will be retried",
            metrics.revision_record_failures.clone(),
        );
        r.register(
            "tracked_revisions",
            "Workload revisions whose health is tracked",
            metrics.tracked_revisions.clone(),
        );
        // Every series exists from the start, at zero, so rates and alerts see it before the first event.
        for result in PublishResult::ALL {
            let _ = metrics.published.get_or_create(&ResultLabel { result: *result });
        }
        for change in RecordChange::ALL {
            let _ = metrics.revisions_recorded.get_or_create(&RecordLabel { change: *change });
        }
        Arc::new(metrics)
    }

    /// Jobs acknowledged as new by JetStream.
    pub fn jobs_published(&self) -> u64 {
        self.published.get_or_create(&ResultLabel { result: PublishResult::Published }).get()
    }

    /// Jobs JetStream dropped as duplicates.
    pub fn jobs_deduplicated(&self) -> u64 {
        self.published.get_or_create(&ResultLabel { result: PublishResult::Duplicate }).get()
    }

    /// Publish attempts that failed (and were retried).
    pub fn publish_failures(&self) -> u64 {
        self.publish_failures.get()
    }

    /// Incidents waiting to be published.
    pub fn pending_jobs(&self) -> i64 {
        self.pending_jobs.get()
    }

    /// Whether this replica leads.
    pub fn is_leader(&self) -> bool {
        self.leader.get() == 1
    }

    /// Pods whose container state is tracked.
    pub fn tracked_pods(&self) -> i64 {
        self.tracked_pods.get()
    }

    /// Jobs whose acknowledgement is awaited.
    pub fn publishes_in_flight(&self) -> i64 {
        self.publishes_in_flight.get()
    }

    /// Changes written to the revisions record.
    pub fn revisions_recorded(&self, change: RecordChange) -> u64 {
        self.revisions_recorded.get_or_create(&RecordLabel { change }).get()
    }

    /// Waits until `done` holds for the metrics (checked after every change by the publisher).
    pub async fn wait_until(&self, done: impl Fn(&Self) -> bool) {
        loop {
            let changed = self.changed.notified();
            if done(self) {
                return;
            }
            changed.await;
        }
    }

    fn notify(&self) {
        self.changed.notify_waiters();
    }
}

/// Runs the detector until `shutdown`. Dropping the future (a crash) stops leader election without
/// releasing the lease; a shutdown releases it.
pub async fn run(
    config: DetectorConfig,
    deps: DetectorDeps,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    // Waits for JetStream (a fresh cluster, a restart) instead of exiting; ready only once set up.
    match nats::prepare(&deps.js, &config.topology, Role::Detector, &shutdown).await {
        Err(_) if shutdown.is_cancelled() => return Ok(()),
        result => result?,
    }
    deps.health.set_ready(true);
    let leadership = Leadership::new(deps.kube.clone(), config.leader.clone());
    let leading = leadership.watch();
    let (updates_tx, updates_rx) = mpsc::channel(JOB_BUFFER);
    let publisher = Publisher {
        js: deps.js.clone(),
        metrics: deps.metrics.clone(),
        leading,
        updates: updates_rx,
        group_wait: config.group_wait,
        holds: config.holds,
        incident_ttl: config.incident_ttl,
    };
    let publishing = kubesent_common::AbortOnDrop::new(tokio::spawn(publisher.run(shutdown.clone())));
    let (served_tx, served_rx) = mpsc::channel(JOB_BUFFER);
    let recorder = recorder::Recorder {
        store: kubesent_common::served::ServedStore::new(deps.js.clone()),
        leading: leadership.watch(),
        changes: served_rx,
        metrics: deps.metrics.clone(),
    };
    let recording = kubesent_common::AbortOnDrop::new(tokio::spawn(recorder.run(shutdown.clone())));
    // No span for these loops: they live as long as the process, and a span is exported when it ends.
    let outputs = WatchOutputs { jobs: updates_tx, served: served_tx, leading: leadership.watch() };
    watch_pods(&config, &deps, outputs, shutdown.clone()).await;
    publishing.join().await;
    recording.join().await;
    let _ = deps.js.client().flush().await;
    leadership.release().await;
    Ok(())
}

/// Watch events of `K` in the namespaces watched (all when none is named).
fn events<K>(
    config: &DetectorConfig,
    client: &kube::Client,
) -> BoxStream<'static, Result<watcher::Event<K>, watcher::Error>>
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + 'static,
{
    let watcher_config = watcher::Config::default();
    if config.namespaces.is_empty() {
        return watcher(Api::<K>::all(client.clone()), watcher_config).default_backoff().boxed();
    }
    let streams = config.namespaces.iter().map(|ns| {
        watcher(Api::<K>::namespaced(client.clone(), ns), watcher_config.clone()).default_backoff().boxed()
    });
    futures::stream::select_all(streams).boxed()
}

/// What the watch side reads: a pod's, a Job's, a ReplicaSet's or a StatefulSet's change, or the clock.
#[derive(Debug)]
pub enum Watched {
    /// A pod watch event.
    Pod(watcher::Event<LeanPod>),
    /// A Job watch event.
    Job(watcher::Event<LeanJob>),
    /// A ReplicaSet watch event.
    ReplicaSet(watcher::Event<LeanReplicaSet>),
    /// A StatefulSet watch event.
    StatefulSet(watcher::Event<LeanStatefulSet>),
    /// Time passed: revisions healthy for long enough become known-good.
    Tick,
}

/// The watch side's memory: what each pod's and Job's containers showed last, and which pods the relist
/// under way has seen. Turns each watch event into the updates the incident book needs, without I/O.
#[derive(Debug, Default)]
pub struct WatchState {
    tracker: PodTracker,
    jobs: JobTracker,
    served: RevisionHealth,
    relisted: BTreeSet<String>,
    relisted_scaled: BTreeSet<(proto::WorkloadKind, String, String)>,
    excluded_namespaces: Vec<String>,
    incident_ttl: Duration,
}

/// What one watch event changed.
#[derive(Debug, Default, PartialEq)]
pub struct Observed {
    /// For the incident book, in order.
    pub updates: Vec<Update>,
    /// Transitions into a failure seen.
    pub transitions: u64,
    /// Changes to the record of revisions that served healthy.
    pub served: Vec<ServedChange>,
}

impl WatchState {
    /// A fresh memory that ignores `excluded_namespaces` and Job failures older than `incident_ttl`, and
    /// records a revision known-good after `known_good_after` of healthy service.
    pub fn new(excluded_namespaces: Vec<String>, incident_ttl: Duration, known_good_after: Duration) -> Self {
        Self {
            excluded_namespaces,
            incident_ttl,
            served: RevisionHealth::new(known_good_after),
            ..Self::default()
        }
    }

    /// Workload revisions tracked now.
    pub fn tracked_revisions(&self) -> usize {
        self.served.revisions()
    }

    /// Every revision known-good now (recorded again by a replica that starts leading).
    pub fn known_good_now(&self) -> Vec<ServedChange> {
        self.served.known_good_now()
    }

    fn observe_scaled(
        &mut self,
        kind: proto::WorkloadKind,
        event: watcher::Event<LeanScaled>,
        now: jiff::Timestamp,
    ) -> Vec<ServedChange> {
        match event {
            watcher::Event::Init => {
                self.relisted_scaled.retain(|(k, _, _)| *k != kind);
                Vec::new()
            }
            watcher::Event::InitApply(set) | watcher::Event::Apply(set) => {
                if self.excluded(set.metadata.namespace.as_ref()) {
                    return Vec::new();
                }
                if let (Some(ns), Some(name)) = (&set.metadata.namespace, &set.metadata.name) {
                    self.relisted_scaled.insert((kind, ns.clone(), name.clone()));
                }
                self.served.observe_scaled(kind, &set, now)
            }
            watcher::Event::InitDone => self.served.retain_scaled(
                kind,
                |ns, name| self.relisted_scaled.contains(&(kind, ns.to_owned(), name.to_owned())),
                now,
            ),
            watcher::Event::Delete(set) => match (&set.metadata.namespace, &set.metadata.name) {
                (Some(ns), Some(name)) => {
                    self.relisted_scaled.remove(&(kind, ns.clone(), name.clone()));
                    self.served.forget_scaled(kind, ns, name, now)
                }
                _ => Vec::new(),
            },
        }
    }

    fn excluded(&self, namespace: Option<&String>) -> bool {
        self.excluded_namespaces.iter().any(|ns| Some(ns) == namespace)
    }

    /// Pods tracked now.
    pub fn tracked_pods(&self) -> usize {
        self.tracker.len()
    }

    /// What `event`, seen at `now`, changes.
    pub fn observe(&mut self, event: Watched, now: jiff::Timestamp) -> Observed {
        let mut observed = Observed::default();
        match event {
            Watched::Pod(watcher::Event::Init) => self.relisted.clear(),
            Watched::Pod(watcher::Event::InitApply(pod) | watcher::Event::Apply(pod)) => {
                if let Some(uid) = &pod.metadata.uid {
                    self.relisted.insert(uid.clone());
                }
                if self.excluded(pod.metadata.namespace.as_ref()) {
                    return observed;
                }
                if let Some(failure) = self.jobs.observe_pod(&pod) {
                    observed.updates.push(Update::Open(Box::new(failure)));
                }
                observed.served = self.served.observe_pod(&pod, now);
                let (transitions, cleared) = self.tracker.observe_all(&pod);
                observed.transitions = transitions.len() as u64;
                for transition in transitions {
                    observed.updates.push(Update::Open(Box::new(build_job(&pod, &transition))));
                }
                for (container, kind) in cleared {
                    let incident = incident::incident_key(&pod, &container, kind).fingerprint();
                    let pod_uid = pod.metadata.uid.clone().unwrap_or_default();
                    observed.updates.push(Update::Cleared { pod_uid, incident });
                }
            }
            Watched::Pod(watcher::Event::InitDone) => {
                // Pods that vanished while the watch was down are forgotten.
                let relisted = &self.relisted;
                self.tracker.retain(|uid| relisted.contains(uid));
                observed.served = self.served.retain_pods(|uid| relisted.contains(uid), now);
                observed.updates.push(Update::Resync(self.relisted.clone()));
            }
            Watched::Pod(watcher::Event::Delete(pod)) => {
                if let Some(uid) = &pod.metadata.uid {
                    self.tracker.forget(uid);
                    observed.served = self.served.forget_pod(uid, now);
                    observed.updates.push(Update::Gone { pod_uid: uid.clone() });
                }
            }
            Watched::Job(watcher::Event::InitApply(job) | watcher::Event::Apply(job)) => {
                if self.excluded(job.metadata.namespace.as_ref()) {
                    return observed;
                }
                if let Some(failure) = self.jobs.observe_job(&job, now, self.incident_ttl) {
                    observed.transitions = 1;
                    observed.updates.push(Update::Open(Box::new(failure)));
                }
            }
            Watched::Job(watcher::Event::Delete(job)) => {
                if let Some(uid) = &job.metadata.uid {
                    self.jobs.forget_job(uid);
                    observed.updates.push(Update::Gone { pod_uid: jobs::holder(uid) });
                }
            }
            Watched::Job(watcher::Event::Init | watcher::Event::InitDone) => {}
            Watched::ReplicaSet(event) => {
                observed.served =
                    self.observe_scaled(proto::WorkloadKind::ReplicaSet, scaled_event(event, |s| s.0), now);
            }
            Watched::StatefulSet(event) => {
                observed.served =
                    self.observe_scaled(proto::WorkloadKind::StatefulSet, scaled_event(event, |s| s.0), now);
            }
            Watched::Tick => observed.served = self.served.tick(now),
        }
        observed
    }
}

/// A ReplicaSet's or StatefulSet's watch event as the [`LeanScaled`] both are.
fn scaled_event<T>(event: watcher::Event<T>, inner: impl Fn(T) -> LeanScaled) -> watcher::Event<LeanScaled> {
    match event {
        watcher::Event::Apply(t) => watcher::Event::Apply(inner(t)),
        watcher::Event::Delete(t) => watcher::Event::Delete(inner(t)),
        watcher::Event::Init => watcher::Event::Init,
        watcher::Event::InitApply(t) => watcher::Event::InitApply(inner(t)),
        watcher::Event::InitDone => watcher::Event::InitDone,
    }
}

/// Where the watch side hands what it saw: incident updates to the publisher, revision records to the
/// recorder (and, on taking the lead, every revision known-good now).
struct WatchOutputs {
    jobs: mpsc::Sender<Update>,
    served: mpsc::Sender<ServedChange>,
    leading: watch::Receiver<bool>,
}

/// How often revisions are checked for having served long enough: a tenth of the settling time, within
/// 100 ms and 10 s.
fn tick_period(known_good_after: Duration) -> Duration {
    (known_good_after / 10).clamp(Duration::from_millis(100), Duration::from_secs(10))
}

/// The watch side: reads pod, Job, ReplicaSet and StatefulSet watch events, turns each into updates
/// ([`WatchState::observe`]) and hands them on; never blocks on NATS.
async fn watch_pods(
    config: &DetectorConfig,
    deps: &DetectorDeps,
    mut out: WatchOutputs,
    shutdown: CancellationToken,
) {
    let mut pod_events = events::<LeanPod>(config, &deps.kube);
    let mut job_events = events::<LeanJob>(config, &deps.kube);
    let mut replica_sets = events::<LeanReplicaSet>(config, &deps.kube);
    let mut stateful_sets = events::<LeanStatefulSet>(config, &deps.kube);
    // Process OOM kills the node's kernel log shows (node-problem-detector's Node events): only when
    // watching the whole cluster, since Node events live outside the workloads' namespaces.
    let mut node_ooms = if config.namespaces.is_empty() {
        let fields = format!("involvedObject.kind=Node,reason={}", oom::OOM_EVENT_REASON);
        watcher(
            Api::<k8s_openapi::api::core::v1::Event>::all(deps.kube.clone()),
            watcher::Config::default().fields(&fields),
        )
        .default_backoff()
        .boxed()
    } else {
        futures::stream::pending().boxed()
    };
    let mut ticks = tokio::time::interval(tick_period(config.known_good_after));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut state =
        WatchState::new(config.excluded_namespaces.clone(), config.incident_ttl, config.known_good_after);
    let failed = |what: &str, error: &watcher::Error| {
        deps.metrics.watch_errors.inc();
        warn!(%error, "{what} watch failed; retrying");
    };
    loop {
        let event = tokio::select! {
            event = pod_events.next() => match event {
                Some(Ok(event)) => Watched::Pod(event),
                Some(Err(error)) => { failed("pod", &error); continue; }
                None => return,
            },
            event = job_events.next() => match event {
                Some(Ok(event)) => Watched::Job(event),
                Some(Err(error)) => { failed("job", &error); continue; }
                None => return,
            },
            event = replica_sets.next() => match event {
                Some(Ok(event)) => Watched::ReplicaSet(event),
                Some(Err(error)) => { failed("replicaset", &error); continue; }
                None => return,
            },
            event = stateful_sets.next() => match event {
                Some(Ok(event)) => Watched::StatefulSet(event),
                Some(Err(error)) => { failed("statefulset", &error); continue; }
                None => return,
            },
            event = node_ooms.next() => match event {
                Some(Ok(watcher::Event::Apply(event) | watcher::Event::InitApply(event))) => {
                    attribute_node_oom(&deps.kube, &state, event, config.incident_ttl, out.jobs.clone());
                    continue;
                }
                Some(Ok(_)) => continue,
                Some(Err(error)) => { failed("node event", &error); continue; }
                None => return,
            },
            _ = ticks.tick() => Watched::Tick,
            changed = out.leading.changed() => {
                if changed.is_err() {
                    return;
                }
                if *out.leading.borrow_and_update() {
                    for change in state.known_good_now() {
                        if out.served.send(change).await.is_err() {
                            return;
                        }
                    }
                }
                continue;
            }
            () = shutdown.cancelled() => return,
        };
        let tick = matches!(event, Watched::Tick);
        if !tick {
            deps.metrics.watch_events.inc();
        }
        let observed = state.observe(event, jiff::Timestamp::now());
        deps.metrics.transitions.inc_by(observed.transitions);
        deps.metrics.tracked_pods.set(state.tracked_pods() as i64);
        deps.metrics.tracked_revisions.set(state.tracked_revisions() as i64);
        for update in observed.updates {
            if out.jobs.send(update).await.is_err() {
                return;
            }
        }
        for change in observed.served {
            if out.served.send(change).await.is_err() {
                return;
            }
        }
    }
}

/// Attributes a node's kernel OOM kill to the container it happened in (reading the node's pods) and
/// opens an OOM incident for it, in the background: a process killed inside a container that kept
/// running shows nowhere in the pod. Kills older than the incident window, or that name no container,
/// are ignored.
fn attribute_node_oom(
    kube: &kube::Client,
    state: &WatchState,
    event: k8s_openapi::api::core::v1::Event,
    window: Duration,
    jobs: mpsc::Sender<Update>,
) {
    let at = event
        .last_timestamp
        .clone()
        .or_else(|| {
            event.event_time.as_ref().map(|t| k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(t.0))
        })
        .or_else(|| event.first_timestamp.clone());
    let recent = at.as_ref().is_some_and(|t| {
        jiff::Timestamp::now().duration_since(t.0)
            < jiff::SignedDuration::try_from(window).unwrap_or_default()
    });
    let Some(found) = event.message.as_deref().and_then(oom::process_oom).filter(|_| recent) else { return };
    let Some(node) = event.involved_object.name.clone() else { return };
    let excluded = state.excluded_namespaces.clone();
    let pods = Api::<LeanPod>::all(kube.clone());
    tokio::spawn(async move {
        let listed =
            pods.list(&kube::api::ListParams::default().fields(&format!("spec.nodeName={node}"))).await;
        let pods = match listed {
            Ok(list) => list.items,
            Err(error) => {
                warn!(%error, node, "listing the node's pods for an OOM kill failed");
                return;
            }
        };
        let hit = pods.iter().find_map(|pod| oom::transition(pod, &found, at.clone()).map(|t| (pod, t)));
        if let Some((pod, transition)) = hit {
            if pod.metadata.namespace.as_ref().is_some_and(|ns| excluded.contains(ns)) {
                return;
            }
            info!(
                node,
                pod = pod.metadata.name.as_deref().unwrap_or_default(),
                process = found.task,
                "a process was OOM-killed inside a running container"
            );
            let _ = jobs.send(Update::Open(Box::new(build_job(pod, &transition)))).await;
        }
    });
}

/// Builds the job for a transition.
pub fn build_job(pod: &LeanPod, transition: &Transition) -> FailureJob {
    let key = incident::incident_key(pod, &transition.container.name, transition.signal.kind);
    FailureJob {
        schema: proto::SCHEMA_VERSION,
        incident: key.fingerprint(),
        key,
        pod: PodRef {
            namespace: pod.metadata.namespace.clone().unwrap_or_default(),
            name: pod.metadata.name.clone().unwrap_or_default(),
            uid: pod.metadata.uid.clone().unwrap_or_default(),
            resource_version: pod.metadata.resource_version.clone().unwrap_or_default(),
        },
        failure: Failure {
            kind: transition.signal.kind,
            container: transition.container.name.clone(),
            init_container: transition.container.init,
            reason: proto::validate::clip_text_to(&transition.signal.reason, 256),
            message: transition.signal.message.as_deref().map(proto::validate::clip_text),
            exit_code: transition.signal.exit_code,
            restart_count: transition.container.restart_count,
            image: transition.container.image.clone(),
            failed_at: transition.signal.failed_at.as_ref().map(|t| t.0),
        },
        affected_pods: 1,
        detected_at: jiff::Timestamp::now(),
    }
}

struct Publisher {
    js: jetstream::Context,
    metrics: Arc<DetectorMetrics>,
    leading: watch::Receiver<bool>,
    updates: mpsc::Receiver<Update>,
    group_wait: Duration,
    holds: Holds,
    incident_ttl: Duration,
}

/// Publishes in flight at once: acknowledgements are awaited concurrently, not one by one.
const MAX_IN_FLIGHT: usize = 256;

type Publishing = std::pin::Pin<
    Box<
        dyn std::future::Future<Output = (FailureJob, Result<nats::Published, kubesent_common::Error>)>
            + Send,
    >,
>;

impl Publisher {
    async fn run(mut self, shutdown: CancellationToken) {
        let mut book = IncidentBook::with_holds(self.holds);
        let mut backoff = Backoff::new(PUBLISH_RETRY_MIN, PUBLISH_RETRY_MAX);
        let mut retry_at: Option<Instant> = None;
        let mut in_flight: FuturesUnordered<Publishing> = FuturesUnordered::new();
        loop {
            let leading = *self.leading.borrow();
            self.metrics.leader.set(i64::from(leading));
            self.metrics.pending_jobs.set((book.pending() + in_flight.len()) as i64);
            self.metrics.publishes_in_flight.set(in_flight.len() as i64);
            self.metrics.notify();
            let now = Instant::now();
            book.expire(now, self.incident_ttl);
            while leading && retry_at.is_none_or(|at| at <= now) && in_flight.len() < MAX_IN_FLIGHT {
                let Some(job) = book.take_due(now) else { break };
                in_flight.push(Box::pin(publish_job(self.js.clone(), job)));
            }
            let wake_at =
                if leading && in_flight.len() < MAX_IN_FLIGHT { retry_at.max(book.next_due()) } else { None };
            tokio::select! {
                Some((job, result)) = in_flight.next(), if !in_flight.is_empty() => match result {
                    Ok(published) => {
                        let outcome = if published.duplicate { PublishResult::Duplicate } else { PublishResult::Published };
                        self.metrics.published.get_or_create(&ResultLabel { result: outcome }).inc();
                        if let (false, Some(failed_at)) = (published.duplicate, job.failure.failed_at) {
                            kubesent_common::metrics::observe_since(&self.metrics.detection, job.failure.kind, failed_at, jiff::Timestamp::now());
                        }
                        backoff.reset();
                        retry_at = None;
                    }
                    Err(error) => {
                        self.metrics.publish_failures.inc();
                        let delay = backoff.next_delay();
                        warn!(incident = %job.incident, %error, retry_in = ?delay, pending = book.pending(), "publishing a job failed; will retry");
                        let at = Instant::now() + delay;
                        book.retry(&job.incident, at);
                        retry_at = Some(at);
                    }
                },
                update = self.updates.recv() => {
                    let Some(update) = update else { return };
                    book.apply(update, Instant::now(), self.group_wait);
                    self.metrics.open_incidents.set(book.open() as i64);
                }
                changed = self.leading.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    if *self.leading.borrow() {
                        // Taking over: publish every open incident again; dedup drops what the old
                        // leader already published.
                        info!(open = book.open(), "leading: republishing open incidents");
                        book.republish_all(Instant::now());
                        retry_at = None;
                    }
                }
                () = async { match wake_at { Some(at) => tokio::time::sleep_until(at).await, None => std::future::pending().await } } => {}
                () = shutdown.cancelled() => return,
            }
        }
    }
}

/// Publishes one job and waits for its acknowledgement.
async fn publish_job(
    js: jetstream::Context,
    job: FailureJob,
) -> (FailureJob, Result<nats::Published, kubesent_common::Error>) {
    let subject = match proto::job_subject(&job.pod.namespace, job.failure.kind) {
        Ok(subject) => subject,
        Err(error) => return (job, Err(error.into())),
    };
    // The incident's trace starts here: a root span, not a child of the publisher's loop.
    let span = kubesent_common::trace::producer_span(
        true,
        &subject,
        job.incident.as_str(),
        job.incident.as_str(),
        &job.pod.namespace,
        &job.pod.name,
    );
    let result = async {
        let published = nats::publish(&js, subject, job.incident.as_str(), proto::encode(&job), &[(proto::headers::INCIDENT, job.incident.as_str())]).await?;
        if published.duplicate {
            debug!(sequence = published.sequence, "job already published (deduplicated)");
        } else {
            info!(sequence = published.sequence, kind = job.failure.kind.as_str(), container = %job.failure.container, affected = job.affected_pods, "failure job published");
        }
        Ok(published)
    }
    .instrument(span)
    .await;
    (job, result)
}

#[cfg(test)]
mod watch_tests {
    use serde_json::{Value, json};

    use super::*;

    fn pod(uid: &str, namespace: &str, restarts: i32, state: Value, last: Value) -> LeanPod {
        serde_json::from_value(json!({
            "metadata": {"name": format!("web-{uid}"), "namespace": namespace, "uid": uid},
            "spec": {"containers": [{"name": "app", "image": "web:1"}]},
            "status": {"containerStatuses": [{"name": "app", "image": "web:1", "imageID": "", "ready": false,
                "restartCount": restarts, "state": state, "lastState": last}]}
        }))
        .expect("pod")
    }

    fn oom_killed(uid: &str, namespace: &str) -> LeanPod {
        pod(
            uid,
            namespace,
            1,
            json!({"waiting": {"reason": "CrashLoopBackOff"}}),
            json!({"terminated": {"exitCode": 137, "reason": "OOMKilled"}}),
        )
    }

    fn running(uid: &str) -> LeanPod {
        pod(uid, "shop", 0, json!({"running": {"startedAt": "2026-11-01T09:00:00Z"}}), json!({}))
    }

    fn job(uid: &str) -> LeanJob {
        serde_json::from_value(json!({"metadata": {"name": "report", "namespace": "shop", "uid": uid},
            "spec": {"template": {"spec": {"containers": [{"name": "main", "image": "report:1"}]}}},
            "status": {"failed": 1}}))
        .expect("job")
    }

    /// What an event turned into, in words, for the table.
    fn shape(observed: &Observed) -> Vec<String> {
        observed
            .updates
            .iter()
            .map(|u| match u {
                Update::Open(job) => format!("open {} {}", job.pod.name, job.failure.kind.as_str()),
                Update::Gone { pod_uid } => format!("gone {pod_uid}"),
                Update::Resync(uids) => format!("resync {uids:?}"),
                Update::Cleared { pod_uid, .. } => format!("cleared {pod_uid}"),
            })
            .collect()
    }

    #[test]
    fn each_watch_event_becomes_the_updates_the_incident_book_needs() {
        let now: jiff::Timestamp = "2026-11-01T10:00:00Z".parse().expect("time");
        let mut state =
            WatchState::new(vec!["kube-system".into()], Duration::from_secs(900), Duration::from_secs(600));
        let steps: Vec<(&str, Watched, Vec<&str>, u64)> = vec![
            ("a relist starts", Watched::Pod(watcher::Event::Init), vec![], 0),
            ("a healthy pod listed", Watched::Pod(watcher::Event::InitApply(running("a"))), vec![], 0),
            (
                "a pod listed already failing",
                Watched::Pod(watcher::Event::InitApply(oom_killed("b", "shop"))),
                vec!["open web-b oom-killed"],
                1,
            ),
            ("the relist ends", Watched::Pod(watcher::Event::InitDone), vec![r#"resync {"a", "b"}"#], 0),
            (
                "the same failure again is no transition",
                Watched::Pod(watcher::Event::Apply(oom_killed("b", "shop"))),
                vec![],
                0,
            ),
            (
                "a pod that starts failing",
                Watched::Pod(watcher::Event::Apply(oom_killed("a", "shop"))),
                vec!["open web-a oom-killed"],
                1,
            ),
            (
                "a failing pod in an excluded namespace",
                Watched::Pod(watcher::Event::Apply(oom_killed("c", "kube-system"))),
                vec![],
                0,
            ),
            ("a deleted pod", Watched::Pod(watcher::Event::Delete(running("a"))), vec!["gone a"], 0),
            ("a running Job", Watched::Job(watcher::Event::Apply(job("j1"))), vec![], 0),
            ("a deleted Job", Watched::Job(watcher::Event::Delete(job("j1"))), vec!["gone job/j1"], 0),
            ("a second relist forgets a vanished pod", Watched::Pod(watcher::Event::Init), vec![], 0),
            ("only b is listed", Watched::Pod(watcher::Event::InitApply(oom_killed("b", "shop"))), vec![], 0),
            ("the second relist ends", Watched::Pod(watcher::Event::InitDone), vec![r#"resync {"b"}"#], 0),
        ];
        for (case, event, updates, transitions) in steps {
            let observed = state.observe(event, now);
            assert_eq!(shape(&observed), updates, "{case}");
            assert_eq!(observed.transitions, transitions, "{case}");
        }
        assert_eq!(state.tracked_pods(), 1, "only b is tracked after the relist");
    }
}
