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
}

/// Default [`DetectorConfig::incident_ttl`]: the default dedup window of the jobs stream.
pub const DEFAULT_INCIDENT_TTL: Duration = Duration::from_secs(15 * 60);

/// Default [`DetectorConfig::group_wait`]: long enough for replicas that crash together to be seen.
pub const DEFAULT_GROUP_WAIT: Duration = Duration::from_secs(2);

/// Default hold of an unschedulable pod: about what a cluster autoscaler needs to add a node.
pub const DEFAULT_PENDING_THRESHOLD: Duration = Duration::from_secs(120);

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
        // Every series exists from the start, at zero, so rates and alerts see it before the first event.
        for result in PublishResult::ALL {
            let _ = metrics.published.get_or_create(&ResultLabel { result: *result });
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
    // No span for these loops: they live as long as the process, and a span is exported when it ends.
    watch_pods(&config, &deps, updates_tx, shutdown.clone()).await;
    publishing.join().await;
    let _ = deps.js.client().flush().await;
    leadership.release().await;
    Ok(())
}

fn pod_events(
    config: &DetectorConfig,
    client: &kube::Client,
) -> BoxStream<'static, Result<watcher::Event<LeanPod>, watcher::Error>> {
    let watcher_config = watcher::Config::default();
    if config.namespaces.is_empty() {
        return watcher(Api::<LeanPod>::all(client.clone()), watcher_config).default_backoff().boxed();
    }
    let streams = config.namespaces.iter().map(|ns| {
        watcher(Api::<LeanPod>::namespaced(client.clone(), ns), watcher_config.clone())
            .default_backoff()
            .boxed()
    });
    futures::stream::select_all(streams).boxed()
}

fn job_events(
    config: &DetectorConfig,
    client: &kube::Client,
) -> BoxStream<'static, Result<watcher::Event<LeanJob>, watcher::Error>> {
    let watcher_config = watcher::Config::default();
    if config.namespaces.is_empty() {
        return watcher(Api::<LeanJob>::all(client.clone()), watcher_config).default_backoff().boxed();
    }
    let streams = config.namespaces.iter().map(|ns| {
        watcher(Api::<LeanJob>::namespaced(client.clone(), ns), watcher_config.clone())
            .default_backoff()
            .boxed()
    });
    futures::stream::select_all(streams).boxed()
}

/// What the watch side reads: a pod's or a Job's change.
#[derive(Debug)]
pub enum Watched {
    /// A pod watch event.
    Pod(watcher::Event<LeanPod>),
    /// A Job watch event.
    Job(watcher::Event<LeanJob>),
}

/// The watch side's memory: what each pod's and Job's containers showed last, and which pods the relist
/// under way has seen. Turns each watch event into the updates the incident book needs, without I/O.
#[derive(Debug, Default)]
pub struct WatchState {
    tracker: PodTracker,
    jobs: JobTracker,
    relisted: BTreeSet<String>,
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
}

impl WatchState {
    /// A fresh memory that ignores `excluded_namespaces` and Job failures older than `incident_ttl`.
    pub fn new(excluded_namespaces: Vec<String>, incident_ttl: Duration) -> Self {
        Self { excluded_namespaces, incident_ttl, ..Self::default() }
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
                self.jobs.observe_pod(&pod);
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
                observed.updates.push(Update::Resync(self.relisted.clone()));
            }
            Watched::Pod(watcher::Event::Delete(pod)) => {
                if let Some(uid) = &pod.metadata.uid {
                    self.tracker.forget(uid);
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
        }
        observed
    }
}

/// The watch side: reads pod and Job watch events, turns each into updates ([`WatchState::observe`]) and
/// hands them to the publisher; never blocks on NATS.
async fn watch_pods(
    config: &DetectorConfig,
    deps: &DetectorDeps,
    jobs: mpsc::Sender<Update>,
    shutdown: CancellationToken,
) {
    let mut events = pod_events(config, &deps.kube);
    let mut job_events = job_events(config, &deps.kube);
    let mut state = WatchState::new(config.excluded_namespaces.clone(), config.incident_ttl);
    loop {
        let event = tokio::select! {
            event = events.next() => match event {
                Some(Ok(event)) => Watched::Pod(event),
                Some(Err(error)) => {
                    deps.metrics.watch_errors.inc();
                    warn!(%error, "pod watch failed; retrying");
                    continue;
                }
                None => return,
            },
            event = job_events.next() => match event {
                Some(Ok(event)) => Watched::Job(event),
                Some(Err(error)) => {
                    deps.metrics.watch_errors.inc();
                    warn!(%error, "job watch failed; retrying");
                    continue;
                }
                None => return,
            },
            () = shutdown.cancelled() => return,
        };
        deps.metrics.watch_events.inc();
        let observed = state.observe(event, jiff::Timestamp::now());
        deps.metrics.transitions.inc_by(observed.transitions);
        deps.metrics.tracked_pods.set(state.tracked_pods() as i64);
        for update in observed.updates {
            if jobs.send(update).await.is_err() {
                return;
            }
        }
    }
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
        let mut state = WatchState::new(vec!["kube-system".into()], Duration::from_secs(900));
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
