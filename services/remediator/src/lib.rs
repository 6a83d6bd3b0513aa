//! The remediator: the leader pulls verdicts, passes each through the safety gate, applies the typed
//! action, verifies that the target heals, and records an `Outcome` in `KUBESENT_OUTCOMES`.
//!
//! For a bare pod the memory fix is a force replace: the intent (with the full sanitized pod) is written
//! to the KV bucket first, the pod is deleted with uid and resourceVersion preconditions, the DELETED
//! watch event is awaited, and the pod is created again with the new limit. A remediator that takes over
//! finishes any intent left half-done, so nothing deleted stays deleted.

pub mod gate;
pub mod intent;
pub mod replace;

use std::{sync::Arc, time::Duration};

use async_nats::jetstream;
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use kube::{
    Api, Resource as _,
    api::{DeleteParams, PostParams, Preconditions},
};
use kube_runtime::{
    WatchStreamExt as _,
    events::{Event as KubeEvent, EventType, Recorder, Reporter},
    wait::{await_condition, conditions},
    watcher,
};
use kubesent_common::{
    leader::LeaderConfig,
    nats::{self, PullOptions, Topology},
    trace,
};
use kubesent_proto::{self as proto, Action, Outcome, OutcomeResult, Strategy, Verdict};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, field, info, info_span, warn};

use crate::{
    gate::{Decision, Policy},
    intent::{Claim, Intent, IntentError, Intents, Phase},
};

/// Settings of a remediator replica.
#[derive(Debug, Clone)]
pub struct RemediatorConfig {
    /// Stream and consumer sizing.
    pub topology: Topology,
    /// What the gate allows.
    pub policy: Policy,
    /// Leader election; `None` makes this replica always lead.
    pub leader: Option<LeaderConfig>,
    /// This replica's identity, recorded in intents, events and outcomes.
    pub identity: String,
    /// Longest wait for a deleted pod's DELETED event.
    pub delete_timeout: Duration,
    /// How long a fixed pod must stay healthy to count as healed.
    pub verify_window: Duration,
    /// Longest wait for a replacement to become ready before the fix counts as ineffective.
    pub verify_timeout: Duration,
}

impl Default for RemediatorConfig {
    fn default() -> Self {
        Self {
            topology: Topology::default(),
            policy: Policy::default(),
            leader: None,
            identity: "kubesent-remediator".into(),
            delete_timeout: Duration::from_secs(120),
            verify_window: Duration::from_secs(120),
            verify_timeout: Duration::from_secs(600),
        }
    }
}

/// The remediator's clients and metrics.
pub struct RemediatorDeps {
    /// Kubernetes client.
    pub kube: kube::Client,
    /// JetStream context.
    pub js: jetstream::Context,
    /// Metrics.
    pub metrics: Arc<RemediatorMetrics>,
}

/// Errors that stop the remediator.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Shared runtime failure.
    #[error(transparent)]
    Common(#[from] kubesent_common::Error),
}

/// Why handling one verdict must be retried later.
#[derive(Debug, thiserror::Error)]
enum StepError {
    #[error("kubernetes: {0}")]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Intent(#[from] IntentError),
    #[error(transparent)]
    Common(#[from] kubesent_common::Error),
    #[error("{0}")]
    Timeout(String),
    #[error("outcome subject: {0}")]
    Subject(#[from] proto::InvalidNamespace),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

/// Remediator metrics.
#[derive(Debug, Default)]
pub struct RemediatorMetrics {
    outcomes: Family<ResultLabel, Counter>,
    retries: Counter,
    leader: Gauge,
}

impl RemediatorMetrics {
    /// Creates the metrics and registers them under `kubesent_remediator_`.
    pub fn register(registry: &mut Registry) -> Arc<Self> {
        let metrics = Self::default();
        let r = registry.sub_registry_with_prefix("kubesent_remediator");
        r.register("outcomes", "Outcomes recorded, by result", metrics.outcomes.clone());
        r.register("retries", "Verdicts handed back for a later retry", metrics.retries.clone());
        r.register("leader", "1 when this replica leads", metrics.leader.clone());
        Arc::new(metrics)
    }

    /// Outcomes recorded with `result`.
    pub fn outcomes(&self, result: OutcomeResult) -> u64 {
        self.outcomes.get_or_create(&ResultLabel { result: result.as_str() }).get()
    }
}

/// Runs a remediator replica until `shutdown`.
pub async fn run(
    config: RemediatorConfig,
    deps: RemediatorDeps,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let intents = Intents::new(nats::ensure_intents(&deps.js, &config.topology).await?);
    let consumer =
        nats::ensure_consumer(&deps.js, proto::VERDICTS_STREAM, config.topology.remediator_consumer())
            .await?;
    let leadership =
        kubesent_common::leader::Leadership::new(deps.kube.clone(), config.leader.clone(), shutdown.clone());
    let leading = leadership.watch();
    let recorder = Recorder::new(
        deps.kube.clone(),
        Reporter { controller: "kubesent-remediator".into(), instance: Some(config.identity.clone()) },
    );
    let remediator = Arc::new(Remediator { config, deps, intents, recorder });
    tokio::spawn(
        remediator
            .clone()
            .resume_on_takeover(leading.clone(), shutdown.clone())
            .instrument(info_span!("takeover")),
    );
    let worker = remediator.clone();
    // Remediations are few and each one is careful; two at a time is plenty and keeps ordering simple.
    let options = PullOptions { concurrency: 2, ..PullOptions::default() };
    nats::pull_loop(consumer, options, leading, shutdown, move |message| {
        let worker = worker.clone();
        async move { worker.handle(message).await }
    })
    .await;
    // Shutting down: let the election release the lease.
    leadership.release().await;
    Ok(())
}

struct Remediator {
    config: RemediatorConfig,
    deps: RemediatorDeps,
    intents: Intents,
    recorder: Recorder,
}

/// How a verdict ended, before it is published.
struct Finished {
    result: OutcomeResult,
    strategy: Option<Strategy>,
    detail: String,
    replacement_uid: Option<String>,
}

impl Finished {
    fn plain(result: OutcomeResult, detail: impl Into<String>) -> Self {
        Self { result, strategy: None, detail: detail.into(), replacement_uid: None }
    }
}

impl Remediator {
    async fn resume_on_takeover(
        self: Arc<Self>,
        mut leading: watch::Receiver<bool>,
        shutdown: CancellationToken,
    ) {
        loop {
            let is_leader = *leading.borrow_and_update();
            self.deps.metrics.leader.set(i64::from(is_leader));
            if is_leader {
                match self.intents.unfinished().await {
                    Ok(open) => {
                        for (intent, revision) in open {
                            info!(incident = %intent.incident, phase = ?intent.phase, "finishing an intent left half-done");
                            let span = info_span!("resume", incident = %intent.incident);
                            if let Err(error) = self.finish_replace(intent, revision).instrument(span).await {
                                warn!(%error, "resuming an intent failed; the verdict's redelivery will retry");
                            }
                        }
                    }
                    Err(error) => warn!(%error, "listing unfinished intents failed"),
                }
            }
            tokio::select! {
                changed = leading.changed() => if changed.is_err() { return },
                () = shutdown.cancelled() => return,
            }
        }
    }

    async fn handle(&self, message: jetstream::Message) {
        let span =
            info_span!("remediate", incident = field::Empty, namespace = field::Empty, pod = field::Empty);
        trace::continue_trace(&span, message.headers.as_ref());
        self.handle_in_span(message, &span).instrument(span.clone()).await;
    }

    async fn handle_in_span(&self, message: jetstream::Message, span: &tracing::Span) {
        let deliveries = message.info().map(|i| i.delivered).unwrap_or(1);
        let verdict: Verdict = match proto::decode(&message.payload) {
            Ok(verdict) => verdict,
            Err(error) => {
                warn!(%error, "undecodable verdict; dead-lettering it");
                if let Err(error) = nats::dead_letter(
                    &self.deps.js,
                    "remediator",
                    &message,
                    &format!("undecodable verdict: {error}"),
                )
                .await
                {
                    warn!(%error, "dead-lettering failed");
                }
                return;
            }
        };
        span.record("incident", verdict.incident.as_str());
        span.record("namespace", verdict.pod.namespace.as_str());
        span.record("pod", verdict.pod.name.as_str());
        let _progress = nats::ProgressAcker::start(&message, Duration::from_secs(20));
        let result = match self.remediate(&verdict).await {
            Ok(finished) => self.record(&verdict, finished).await,
            Err(error) => Err(error),
        };
        match result {
            Ok(()) => {
                if let Err(error) = message.double_ack().await {
                    warn!(%error, "acknowledging the verdict failed; a redelivery will find the outcome recorded");
                }
            }
            Err(error) if deliveries >= self.config.topology.max_deliver => {
                warn!(%error, deliveries, "verdict failed on its last delivery; dead-lettering it");
                let reason = format!("failed after {deliveries} deliveries: {error}");
                if let Err(error) = nats::dead_letter(&self.deps.js, "remediator", &message, &reason).await {
                    warn!(%error, "dead-lettering failed");
                }
            }
            Err(error) => {
                self.deps.metrics.retries.inc();
                let delay =
                    Duration::from_secs(2u64.saturating_pow(u32::try_from(deliveries).unwrap_or(8).min(8)));
                warn!(%error, deliveries, retry_in = ?delay, "remediation step failed; the verdict will be redelivered");
                let _ = message.ack_with(jetstream::AckKind::Nak(Some(delay))).await;
            }
        }
    }

    /// Gates and applies a verdict.
    async fn remediate(&self, verdict: &Verdict) -> Result<Finished, StepError> {
        // A redelivered verdict whose intent is already under way continues where it stopped.
        if let Some((intent, revision)) = self.intents.get(&verdict.incident).await? {
            return self.finish_replace(intent, revision).await;
        }
        let pods: Api<Pod> = Api::namespaced(self.deps.kube.clone(), &verdict.pod.namespace);
        let live = pods.get_opt(&verdict.pod.name).await?;
        let decision = gate::decide(verdict, live.as_ref(), &self.config.policy, jiff::Timestamp::now());
        info!(?decision, action = verdict.action.kind_str(), confidence = verdict.confidence, "gate decided");
        let pod = match decision {
            Decision::Apply => {
                live.ok_or_else(|| StepError::Timeout("the pod vanished after the gate".into()))?
            }
            Decision::Suggest(detail) => return Ok(Finished::plain(OutcomeResult::Suggested, detail)),
            Decision::Stale(detail) => return Ok(Finished::plain(OutcomeResult::Stale, detail)),
            Decision::DiagnosisOnly => {
                return Ok(Finished::plain(OutcomeResult::DiagnosisOnly, verdict.root_cause.clone()));
            }
            Decision::Deny(detail) => return Ok(Finished::plain(OutcomeResult::Denied, detail)),
        };
        if let Some(detail) = self.previous_fix_failed(&pod).await? {
            return Ok(Finished::plain(OutcomeResult::Denied, detail));
        }
        if let Some(owner) =
            pod.metadata.owner_references.iter().flatten().find(|o| o.controller == Some(true))
        {
            return Ok(Finished::plain(
                OutcomeResult::Denied,
                format!(
                    "the pod is controlled by {} {}: fixing it through its owner is not supported in this version",
                    owner.kind, owner.name
                ),
            ));
        }
        let Action::IncreaseMemory { container, from, to } = &verdict.action else {
            return Ok(Finished::plain(
                OutcomeResult::Denied,
                format!("{} is not supported for bare pods", verdict.action.kind_str()),
            ));
        };
        let intent = Intent {
            schema: proto::SCHEMA_VERSION,
            incident: verdict.incident.clone(),
            phase: Phase::Pending,
            target: proto::PodRef {
                resource_version: pod.metadata.resource_version.clone().unwrap_or_default(),
                ..verdict.pod.clone()
            },
            action: verdict.action.clone(),
            original: replace::sanitized(&pod),
            replacement: replace::with_memory_limit(&pod, container, *from, *to, &verdict.incident),
            actor: self.config.identity.clone(),
            replacement_uid: None,
            result: None,
            detail: None,
            updated_at: jiff::Timestamp::now(),
        };
        if !self.intents.lock(&intent.target, &intent.incident).await? {
            return Ok(Finished::plain(
                OutcomeResult::Denied,
                "another remediation of this pod is in progress",
            ));
        }
        let (intent, revision) = match self.intents.claim(&intent).await? {
            Claim::Fresh(revision) => (intent, revision),
            Claim::Existing(existing, revision) => (*existing, revision),
        };
        self.event(
            &pod,
            EventType::Normal,
            "Remediating",
            "IncreaseMemory",
            format!("memory limit of {container}: {from} -> {to} (incident {})", verdict.incident),
        )
        .await;
        self.finish_replace(intent, revision).await
    }

    /// Whether the pod is a KubeSent replacement whose fix did not heal it: then nothing more is
    /// tried automatically (escalate, do not loop).
    async fn previous_fix_failed(&self, pod: &Pod) -> Result<Option<String>, StepError> {
        let Some(previous) =
            pod.metadata.annotations.as_ref().and_then(|a| a.get(replace::INCIDENT_ANNOTATION))
        else {
            return Ok(None);
        };
        let previous = proto::IncidentId(previous.clone());
        Ok(match self.intents.get(&previous).await? {
            Some((intent, _)) if intent.result == Some(OutcomeResult::Ineffective) => Some(format!(
                "KubeSent already changed this pod for incident {previous} and it did not heal; escalated to a human instead of trying again"
            )),
            _ => None,
        })
    }

    /// Drives a force replace from whatever phase it is in to done.
    async fn finish_replace(&self, mut intent: Intent, mut revision: u64) -> Result<Finished, StepError> {
        let pods: Api<Pod> = Api::namespaced(self.deps.kube.clone(), &intent.target.namespace);
        let name = intent.target.name.clone();
        loop {
            match intent.phase {
                Phase::Pending => {
                    self.delete_original(&pods, &intent).await?;
                    intent.phase = Phase::Deleted;
                }
                Phase::Deleted => {
                    let wait =
                        await_condition(pods.clone(), &name, conditions::is_deleted(&intent.target.uid));
                    tokio::time::timeout(self.config.delete_timeout, wait)
                        .await
                        .map_err(|_| {
                            StepError::Timeout(format!(
                                "pod {name} still terminating after {:?}",
                                self.config.delete_timeout
                            ))
                        })?
                        .map_err(|e| {
                            StepError::Timeout(format!("waiting for the DELETED event failed: {e}"))
                        })?;
                    let created = match pods.create(&PostParams::default(), &intent.replacement).await {
                        Ok(pod) => pod,
                        Err(kube::Error::Api(status)) if status.is_already_exists() => {
                            let existing = pods.get(&name).await?;
                            let ours = existing
                                .metadata
                                .annotations
                                .as_ref()
                                .and_then(|a| a.get(replace::INCIDENT_ANNOTATION))
                                == Some(&intent.incident.to_string());
                            if !ours {
                                let detail = format!(
                                    "the name {name} was taken by another pod before the replacement was created"
                                );
                                return self
                                    .done(intent, revision, OutcomeResult::Failed, detail, None)
                                    .await;
                            }
                            existing
                        }
                        Err(error) => return Err(error.into()),
                    };
                    intent.replacement_uid = created.metadata.uid.clone();
                    intent.phase = Phase::Created;
                    info!(replacement = ?intent.replacement_uid, "replacement pod created");
                }
                Phase::Created => {
                    let uid = intent.replacement_uid.clone().unwrap_or_default();
                    let container = intent.action.container().unwrap_or_default().to_owned();
                    let (result, detail) = self.verify(&pods, &name, &uid, &container).await;
                    if let Ok(pod) = pods.get(&name).await {
                        let (kind, reason) = if result == OutcomeResult::Healed {
                            (EventType::Normal, "Remediated")
                        } else {
                            (EventType::Warning, "RemediationIneffective")
                        };
                        self.event(&pod, kind, reason, intent.action.kind_str(), detail.clone()).await;
                    }
                    let replacement = intent.replacement_uid.clone();
                    return self.done(intent, revision, result, detail, replacement).await;
                }
                Phase::Done => {
                    return Ok(Finished {
                        result: intent.result.unwrap_or(OutcomeResult::Applied),
                        strategy: Some(Strategy::ForceReplace),
                        detail: intent.detail.unwrap_or_default(),
                        replacement_uid: intent.replacement_uid,
                    });
                }
            }
            intent.actor = self.config.identity.clone();
            intent.updated_at = jiff::Timestamp::now();
            revision = self.intents.advance(&intent, revision).await?;
        }
    }

    async fn done(
        &self,
        mut intent: Intent,
        revision: u64,
        result: OutcomeResult,
        detail: String,
        replacement_uid: Option<String>,
    ) -> Result<Finished, StepError> {
        intent.phase = Phase::Done;
        intent.result = Some(result);
        intent.detail = Some(detail.clone());
        intent.updated_at = jiff::Timestamp::now();
        self.intents.advance(&intent, revision).await?;
        if let Err(error) = self.intents.unlock(&intent.target).await {
            warn!(%error, "releasing the pod lock failed");
        }
        Ok(Finished { result, strategy: Some(Strategy::ForceReplace), detail, replacement_uid })
    }

    /// Deletes the original pod with a uid precondition and the latest resourceVersion. A status update
    /// between read and delete changes the resourceVersion, so a conflict is re-read and retried while
    /// the uid is the same.
    async fn delete_original(&self, pods: &Api<Pod>, intent: &Intent) -> Result<(), StepError> {
        const ATTEMPTS: usize = 5;
        for _ in 0..ATTEMPTS {
            let Some(current) = pods.get_opt(&intent.target.name).await? else { return Ok(()) };
            if current.metadata.uid.as_deref() != Some(intent.target.uid.as_str()) {
                // Already replaced (by us before a crash, or by someone else): nothing to delete.
                return Ok(());
            }
            let params = DeleteParams {
                preconditions: Some(Preconditions {
                    uid: Some(intent.target.uid.clone()),
                    resource_version: current.metadata.resource_version.clone(),
                }),
                ..DeleteParams::default()
            };
            match pods.delete(&intent.target.name, &params).await {
                Ok(_) => {
                    info!("original pod deleted with uid and resourceVersion preconditions");
                    return Ok(());
                }
                Err(kube::Error::Api(status)) if status.is_not_found() => return Ok(()),
                Err(kube::Error::Api(status)) if status.is_conflict() => continue,
                Err(error) => return Err(error.into()),
            }
        }
        Err(StepError::Timeout(format!("the pod kept changing during {ATTEMPTS} delete attempts")))
    }

    /// Watches the replacement until it has been healthy for the verify window (healed), fails again,
    /// or the timeout passes (ineffective).
    async fn verify(
        &self,
        pods: &Api<Pod>,
        name: &str,
        uid: &str,
        container: &str,
    ) -> (OutcomeResult, String) {
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let mut events = watcher(pods.clone(), config).default_backoff().applied_objects().boxed();
        let deadline = tokio::time::Instant::now() + self.config.verify_timeout;
        let mut healthy_since: Option<tokio::time::Instant> = None;
        loop {
            let healed_at = healthy_since.map(|t| t + self.config.verify_window);
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => {
                    return (OutcomeResult::Ineffective, format!("the replacement did not stay healthy within {:?}", self.config.verify_timeout));
                }
                () = async { match healed_at { Some(at) => tokio::time::sleep_until(at).await, None => std::future::pending().await } } => {
                    return (OutcomeResult::Healed, format!("the replacement ran healthy for {:?}", self.config.verify_window));
                }
                event = events.next() => {
                    let Some(Ok(pod)) = event else { continue };
                    if pod.metadata.uid.as_deref() != Some(uid) {
                        continue;
                    }
                    match container_health(&pod, container) {
                        Health::Failing(reason) => return (OutcomeResult::Ineffective, format!("the replacement failed again: {reason}")),
                        Health::Ready => { healthy_since.get_or_insert_with(tokio::time::Instant::now); }
                        Health::Starting => healthy_since = None,
                    }
                }
            }
        }
    }

    async fn record(&self, verdict: &Verdict, finished: Finished) -> Result<(), StepError> {
        let outcome = Outcome {
            schema: proto::SCHEMA_VERSION,
            incident: verdict.incident.clone(),
            pod: verdict.pod.clone(),
            action: verdict.action.clone(),
            result: finished.result,
            strategy: finished.strategy,
            detail: finished.detail,
            replacement_uid: finished.replacement_uid,
            actor: self.config.identity.clone(),
            trace_id: trace::current_trace_id(),
            at: jiff::Timestamp::now(),
        };
        let subject = proto::outcome_subject(&verdict.pod.namespace, outcome.result)?;
        nats::publish(
            &self.deps.js,
            subject,
            &format!("outcome-{}", verdict.incident),
            proto::encode(&outcome),
            &[(proto::headers::INCIDENT, verdict.incident.as_str())],
        )
        .await?;
        self.deps.metrics.outcomes.get_or_create(&ResultLabel { result: outcome.result.as_str() }).inc();
        info!(result = outcome.result.as_str(), detail = %outcome.detail, "outcome recorded");
        Ok(())
    }

    async fn event(&self, pod: &Pod, type_: EventType, reason: &str, action: &str, note: String) {
        let reference: ObjectReference = pod.object_ref(&());
        let event = KubeEvent {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: action.into(),
            secondary: None,
        };
        if let Err(error) = self.recorder.publish(&event, &reference).await {
            warn!(%error, "recording a Kubernetes event failed");
        }
    }
}

/// How a container looks during verification.
#[derive(Debug, PartialEq)]
enum Health {
    Ready,
    Starting,
    Failing(String),
}

fn container_health(pod: &Pod, container: &str) -> Health {
    let Some(cs) = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|l| l.iter().find(|c| c.name == container))
    else {
        return Health::Starting;
    };
    let state = cs.state.clone().unwrap_or_default();
    if let Some(t) = state.terminated.as_ref().filter(|t| t.exit_code != 0) {
        return Health::Failing(t.reason.clone().unwrap_or_else(|| format!("exit code {}", t.exit_code)));
    }
    if let Some(t) = cs.last_state.as_ref().and_then(|s| s.terminated.as_ref()) {
        return Health::Failing(t.reason.clone().unwrap_or_else(|| format!("exit code {}", t.exit_code)));
    }
    if let Some(reason) = state
        .waiting
        .as_ref()
        .and_then(|w| w.reason.clone())
        .filter(|r| r != "ContainerCreating" && r != "PodInitializing")
    {
        return Health::Failing(reason);
    }
    if state.running.is_some() && cs.ready { Health::Ready } else { Health::Starting }
}
