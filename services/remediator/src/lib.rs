//! The remediator: the leader pulls verdicts, passes each through the safety gate, applies the typed
//! action, verifies that the target heals, and records an `Outcome` in `KUBESENT_OUTCOMES`.
//!
//! For a bare pod the memory fix is a force replace: the intent (with the full sanitized pod) is written
//! to the KV bucket first, the pod is deleted with uid and resourceVersion preconditions, the DELETED
//! watch event is awaited, and the pod is created again with the new limit. A remediator that takes over
//! finishes any intent left half-done, so nothing deleted stays deleted.

pub mod gate;
pub mod guardrails;
pub mod intent;
pub mod ladder;
pub mod replace;
pub mod undo;

use std::{
    collections::{BTreeMap, HashSet},
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use async_nats::jetstream;
use futures::StreamExt as _;
use k8s_openapi::api::{
    apps::v1::{Deployment, ReplicaSet, StatefulSet},
    core::v1::{ObjectReference, Pod},
};
use kube::{
    Api, Resource as _,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions},
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
    guardrails::{Guard, Guardrails},
    intent::{Claim, Intent, IntentError, Intents, Phase},
    ladder::{Owner, Plan, WorkloadKind},
};

/// Settings of a remediator replica.
#[derive(Debug, Clone)]
pub struct RemediatorConfig {
    /// Stream and consumer sizing.
    pub topology: Topology,
    /// What the gate allows.
    pub policy: Policy,
    /// Cooldown, hourly budget and circuit breaker.
    pub limits: guardrails::Limits,
    /// Manual-approval mode: every fix waits for `kubesent approve`.
    pub approval_required: bool,
    /// Finished intents are kept this long (the escalation rule and `kubesent undo` read them), then purged.
    pub intent_retention: Duration,
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
            limits: guardrails::Limits::default(),
            approval_required: false,
            intent_retention: Duration::from_secs(30 * 24 * 3600),
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
    Guardrails(#[from] guardrails::GuardrailsError),
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
        // Every series exists from the start, at zero, so rates and alerts see it before the first event.
        for result in OutcomeResult::ALL {
            let _ = metrics.outcomes.get_or_create(&ResultLabel { result: result.as_str() });
        }
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
    let bucket = nats::ensure_intents(&deps.js, &config.topology).await?;
    let intents = Intents::new(bucket.clone());
    let guardrails = Guardrails::new(bucket, config.limits.clone());
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
    let remediator = Arc::new(Remediator { config, deps, intents, guardrails, recorder });
    tokio::spawn(
        remediator
            .clone()
            .resume_on_takeover(leading.clone(), shutdown.clone())
            .instrument(info_span!("takeover")),
    );
    tokio::spawn(
        remediator
            .clone()
            .carry_out_approvals(leading.clone(), shutdown.clone())
            .instrument(info_span!("approvals")),
    );
    tokio::spawn(
        remediator
            .clone()
            .purge_old_intents(leading.clone(), shutdown.clone())
            .instrument(info_span!("retention")),
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
    guardrails: Guardrails,
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

impl Intent {
    /// How a finished intent ended, for its outcome.
    fn finished(&self) -> Finished {
        Finished {
            result: self.result.unwrap_or(OutcomeResult::Applied),
            strategy: Some(self.strategy),
            detail: self.detail.clone().unwrap_or_default(),
            replacement_uid: self.replacement_uid.clone(),
        }
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
                            if matches!(intent.phase, Phase::AwaitingApproval | Phase::Approved) {
                                // Waiting for a human, or the approvals task's to carry out.
                                continue;
                            } else if intent.approved_by.is_some() {
                                // Approved and under way; its verdict was acknowledged when it began to
                                // wait, so the outcome is recorded from here.
                                self.clone().finish_approved(intent, revision).instrument(span).await;
                            } else if let Err(error) = self.drive(intent, revision).instrument(span).await {
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

    /// While leading, purges finished intents older than the retention, at a tenth of it (at most hourly).
    async fn purge_old_intents(
        self: Arc<Self>,
        mut leading: watch::Receiver<bool>,
        shutdown: CancellationToken,
    ) {
        let every =
            (self.config.intent_retention / 10).clamp(Duration::from_secs(1), Duration::from_secs(3600));
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                led = leading.wait_for(|leads| *leads) => if led.is_err() { return },
            }
            let retention = jiff::SignedDuration::try_from(self.config.intent_retention)
                .unwrap_or(jiff::SignedDuration::MAX);
            let cutoff = jiff::Timestamp::now().checked_sub(retention).unwrap_or(jiff::Timestamp::MIN);
            match self.intents.purge_finished_before(cutoff).await {
                Ok(0) => {}
                Ok(purged) => info!(purged, "purged finished intents past their retention"),
                Err(error) => warn!(%error, "purging old intents failed; trying again later"),
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
        }
    }

    /// While leading, carries out every remediation a human approves (`kubesent approve`).
    async fn carry_out_approvals(
        self: Arc<Self>,
        mut leading: watch::Receiver<bool>,
        shutdown: CancellationToken,
    ) {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                led = leading.wait_for(|leads| *leads) => if led.is_err() { return },
            }
            let mut updates = match self.intents.watch().await {
                Ok(updates) => Box::pin(updates),
                Err(error) => {
                    warn!(%error, "watching for approvals failed; trying again");
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            };
            // Approvals given before the watch began (or while another replica led) are listed once the
            // watch runs, so none falls between the two; one approval is carried out once.
            let in_flight: Arc<Mutex<HashSet<proto::IncidentId>>> = Arc::default();
            let start = |intent: Intent, revision: u64| {
                let fresh =
                    in_flight.lock().unwrap_or_else(PoisonError::into_inner).insert(intent.incident.clone());
                if fresh {
                    let span = info_span!("approved", incident = %intent.incident);
                    let (remediator, in_flight) = (self.clone(), in_flight.clone());
                    tokio::spawn(
                        async move {
                            let incident = intent.incident.clone();
                            remediator.finish_approved(intent, revision).await;
                            in_flight.lock().unwrap_or_else(PoisonError::into_inner).remove(&incident);
                        }
                        .instrument(span),
                    );
                }
            };
            match self.intents.unfinished().await {
                Ok(open) => {
                    for (intent, revision) in open.into_iter().filter(|(i, _)| i.phase == Phase::Approved) {
                        start(intent, revision);
                    }
                }
                Err(error) => warn!(%error, "listing approved intents failed"),
            }
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    changed = leading.changed() => {
                        if changed.is_err() { return }
                        if !*leading.borrow() { break }
                    }
                    update = updates.next() => match update {
                        Some(Ok((intent, revision))) if intent.phase == Phase::Approved => start(intent, revision),
                        Some(Ok(_)) => {}
                        Some(Err(error @ IntentError::Corrupt { .. })) => warn!(%error, "skipping an unreadable intent"),
                        Some(Err(error)) => {
                            warn!(%error, "the approvals watch failed; watching again");
                            break;
                        }
                        None => break,
                    }
                }
            }
        }
    }

    /// Carries out an approved remediation and records its outcome, retrying transient failures.
    async fn finish_approved(self: Arc<Self>, intent: Intent, revision: u64) {
        const ATTEMPTS: u32 = 5;
        let (incident, pod, action) = (intent.incident.clone(), intent.target.clone(), intent.action.clone());
        let (mut intent, mut revision) = (intent, revision);
        for attempt in 1..=ATTEMPTS {
            match self.drive(intent.clone(), revision).await {
                Ok(finished) => {
                    if let Err(error) = self.record_for(&incident, &pod, &action, finished).await {
                        warn!(%error, "recording the outcome of an approved remediation failed");
                    }
                    return;
                }
                // Another replica (or an earlier attempt) moved it on: carry on from where it is.
                Err(error) => {
                    warn!(%error, attempt, "an approved remediation step failed; retrying");
                    tokio::time::sleep(Duration::from_secs(2u64.pow(attempt))).await;
                    match self.intents.get(&incident).await {
                        Ok(Some((current, current_revision))) => {
                            (intent, revision) = (current, current_revision)
                        }
                        Ok(None) => return,
                        Err(error) => warn!(%error, "re-reading the intent failed"),
                    }
                }
            }
        }
        warn!("an approved remediation kept failing; the next leader resumes it");
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
            Err(StepError::Kube(kube::Error::Api(status))) if matches!(status.code, 401 | 403) => {
                // Retrying cannot help; a remediation that changed nothing yet ends as failed, loudly.
                let detail = format!(
                    "the remediator may not do this ({}): grant it the rules in deploy/base/rbac.yaml",
                    status.message
                );
                match self.give_up_if_unchanged(&verdict.incident, &detail).await {
                    Ok(true) => self.record(&verdict, Finished::plain(OutcomeResult::Failed, detail)).await,
                    Ok(false) => Err(StepError::Kube(kube::Error::Api(status))),
                    Err(error) => Err(error),
                }
            }
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
            return self.drive(intent, revision).await;
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
        let owner = self.resolve_owner(&pod).await?;
        let marker = match &owner {
            Owner::Workload(w) => w
                .object
                .pointer("/metadata/annotations")
                .and_then(|a| a.get(replace::INCIDENT_ANNOTATION))
                .and_then(|v| v.as_str())
                .map(str::to_owned),
            _ => pod.metadata.annotations.as_ref().and_then(|a| a.get(replace::INCIDENT_ANNOTATION)).cloned(),
        };
        let annotations_of_target = match &owner {
            Owner::Workload(w) => w.metadata_maps().1,
            _ => pod.metadata.annotations.clone().unwrap_or_default(),
        };
        if let Some(container) = verdict.action.container()
            && let Some(reverted) =
                annotations_of_target.get(&format!("{}.{container}", undo::REVERTED_ANNOTATION))
        {
            return Ok(Finished::plain(
                OutcomeResult::Suggested,
                format!(
                    "a human reverted KubeSent's change to container {container} (incident {reverted}); further changes are only suggested"
                ),
            ));
        }
        if let Some(detail) = self.previous_fix_failed(marker).await? {
            return Ok(Finished::plain(OutcomeResult::Denied, detail));
        }
        let plan = match ladder::plan(&verdict.action, &owner) {
            Ok(plan) => plan,
            Err(why) => return Ok(Finished::plain(OutcomeResult::Denied, why)),
        };
        let (labels, annotations, what) = match &owner {
            Owner::Workload(w) => {
                let (l, a) = w.metadata_maps();
                (l, a, format!("{} {}", w.kind.as_str(), w.name))
            }
            _ => (
                pod.metadata.labels.clone().unwrap_or_default(),
                pod.metadata.annotations.clone().unwrap_or_default(),
                format!("pod {}", verdict.pod.name),
            ),
        };
        if let Some(tool) = ladder::gitops_manager(&labels, &annotations) {
            return Ok(Finished::plain(
                OutcomeResult::Suggested,
                format!(
                    "{what} is managed by {tool}: change it in Git ({}); KubeSent only suggests",
                    serde_json::to_string(&verdict.action).unwrap_or_default()
                ),
            ));
        }
        if let Owner::Workload(w) = &owner
            && let Err(why) = ladder::template_matches(w, &verdict.action)
        {
            return Ok(Finished::plain(OutcomeResult::Stale, why));
        }
        let target = proto::PodRef {
            resource_version: pod.metadata.resource_version.clone().unwrap_or_default(),
            ..verdict.pod.clone()
        };
        let (strategy, workload, lock) = match (&plan, &owner) {
            (Plan::PatchOwner, Owner::Workload(w)) => (
                Strategy::OwnerPatch,
                Some(proto::WorkloadRef { kind: w.kind.as_str().into(), name: w.name.clone() }),
                intent::workload_lock_key(&verdict.pod.namespace, w.kind.as_str(), &w.name),
            ),
            (Plan::ResizeInPlace, _) => (Strategy::InPlaceResize, None, intent::lock_key(&target)),
            _ => (Strategy::PodPatch, None, intent::lock_key(&target)),
        };
        let replacement = match &verdict.action {
            Action::IncreaseMemory { container, from, to } if strategy == Strategy::InPlaceResize => {
                Some(replace::with_memory_limit(&pod, container, *from, *to, &verdict.incident))
            }
            _ => None,
        };
        let old_revision = pod
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("pod-template-hash").or_else(|| l.get("controller-revision-hash")))
            .cloned();
        let approval = self.config.approval_required;
        let intent = Intent {
            schema: proto::SCHEMA_VERSION,
            incident: verdict.incident.clone(),
            phase: if approval { Phase::AwaitingApproval } else { Phase::Pending },
            strategy,
            target,
            workload,
            lock,
            action: verdict.action.clone(),
            original: Some(replace::sanitized(&pod)),
            replacement,
            old_revision,
            approved_by: None,
            baseline_restarts: None,
            actor: self.config.identity.clone(),
            replacement_uid: None,
            result: None,
            detail: None,
            updated_at: jiff::Timestamp::now(),
        };
        let workload_key = match &owner {
            Owner::Workload(w) => format!("{}/{}/{}", verdict.pod.namespace, w.kind.as_str(), w.name),
            _ => format!("{}/Pod/{}", verdict.pod.namespace, verdict.pod.name),
        };
        if approval {
            // A human decides instead of the budget, cooldown and breaker; the kill switch still holds.
            if let Some(reason) = self.guardrails.paused().await? {
                return Ok(Finished::plain(
                    OutcomeResult::Suggested,
                    format!("KubeSent is paused ({reason}); actions are only suggested"),
                ));
            }
        } else if let Guard::Hold(why) =
            self.guardrails.admit(&workload_key, verdict.incident.as_str()).await?
        {
            info!(%why, "the guardrails hold the action; it is only suggested");
            return Ok(Finished::plain(OutcomeResult::Suggested, why));
        }
        if !self.intents.lock(&intent.lock, &intent.incident).await? {
            return Ok(Finished::plain(
                OutcomeResult::Denied,
                format!("another remediation of {what} is in progress"),
            ));
        }
        let (intent, revision) = match self.intents.claim(&intent).await? {
            Claim::Fresh(revision) => (intent, revision),
            Claim::Existing(existing, revision) => (*existing, revision),
        };
        let note = format!(
            "{} {} (incident {})",
            verdict.action.kind_str(),
            describe(&verdict.action),
            verdict.incident
        );
        let reason = if intent.phase == Phase::AwaitingApproval { "AwaitingApproval" } else { "Remediating" };
        self.event(&pod.object_ref(&()), EventType::Normal, reason, verdict.action.kind_str(), note.clone())
            .await;
        if let Owner::Workload(w) = &owner {
            self.event(
                &workload_ref(&verdict.pod.namespace, w),
                EventType::Normal,
                reason,
                verdict.action.kind_str(),
                note,
            )
            .await;
        }
        self.drive(intent, revision).await
    }

    /// Continues an intent with its strategy, from whatever phase it is in.
    async fn drive(&self, mut intent: Intent, mut revision: u64) -> Result<Finished, StepError> {
        match intent.phase {
            Phase::AwaitingApproval => return Ok(awaiting_approval(&intent)),
            Phase::Approved => {
                info!(approved_by = ?intent.approved_by, "carrying out an approved remediation");
                intent.phase = Phase::Pending;
                revision = self.advance(&mut intent, revision).await?;
            }
            _ => {}
        }
        // Each strategy's future holds a watcher; boxing keeps the handler's future (and the stack
        // frames that poll it) small.
        match intent.strategy {
            Strategy::ForceReplace => Box::pin(self.finish_replace(intent, revision)).await,
            Strategy::OwnerPatch => Box::pin(self.finish_owner_patch(intent, revision)).await,
            Strategy::InPlaceResize => Box::pin(self.finish_resize(intent, revision)).await,
            Strategy::PodPatch => Box::pin(self.finish_pod_patch(intent, revision)).await,
        }
    }

    /// The controlling workload of `pod`, resolving a ReplicaSet to its Deployment.
    async fn resolve_owner(&self, pod: &Pod) -> Result<Owner, StepError> {
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let Some(controller) =
            pod.metadata.owner_references.iter().flatten().find(|o| o.controller == Some(true))
        else {
            return Ok(Owner::Bare);
        };
        let kube = self.deps.kube.clone();
        match controller.kind.as_str() {
            "ReplicaSet" => {
                let rs =
                    Api::<ReplicaSet>::namespaced(kube.clone(), &namespace).get(&controller.name).await?;
                match rs
                    .metadata
                    .owner_references
                    .iter()
                    .flatten()
                    .find(|o| o.controller == Some(true) && o.kind == "Deployment")
                {
                    Some(deployment) => {
                        let object =
                            Api::<Deployment>::namespaced(kube, &namespace).get(&deployment.name).await?;
                        Ok(Owner::Workload(ladder::Workload {
                            kind: WorkloadKind::Deployment,
                            name: deployment.name.clone(),
                            object: serde_json::to_value(object).unwrap_or_default(),
                        }))
                    }
                    None => Ok(Owner::Unsupported("ReplicaSet".into(), controller.name.clone())),
                }
            }
            "StatefulSet" => {
                let object = Api::<StatefulSet>::namespaced(kube, &namespace).get(&controller.name).await?;
                Ok(Owner::Workload(ladder::Workload {
                    kind: WorkloadKind::StatefulSet,
                    name: controller.name.clone(),
                    object: serde_json::to_value(object).unwrap_or_default(),
                }))
            }
            other => Ok(Owner::Unsupported(other.into(), controller.name.clone())),
        }
    }

    async fn workload(
        &self,
        namespace: &str,
        reference: &proto::WorkloadRef,
    ) -> Result<ladder::Workload, StepError> {
        let kube = self.deps.kube.clone();
        let (kind, object) = match reference.kind.as_str() {
            "StatefulSet" => (
                WorkloadKind::StatefulSet,
                serde_json::to_value(
                    Api::<StatefulSet>::namespaced(kube, namespace).get(&reference.name).await?,
                ),
            ),
            _ => (
                WorkloadKind::Deployment,
                serde_json::to_value(
                    Api::<Deployment>::namespaced(kube, namespace).get(&reference.name).await?,
                ),
            ),
        };
        Ok(ladder::Workload { kind, name: reference.name.clone(), object: object.unwrap_or_default() })
    }

    /// Whether a previous KubeSent fix of this target (named by its `kubesent.io/incident` annotation)
    /// did not heal it: then nothing more is tried automatically (escalate, do not loop).
    async fn previous_fix_failed(&self, marker: Option<String>) -> Result<Option<String>, StepError> {
        let Some(previous) = marker else { return Ok(None) };
        let previous = proto::IncidentId(previous);
        Ok(match self.intents.get(&previous).await? {
            Some((intent, _)) if intent.result == Some(OutcomeResult::Ineffective) => Some(format!(
                "KubeSent already changed this for incident {previous} and it did not heal; escalated to a human instead of trying again"
            )),
            _ => None,
        })
    }

    /// Stores the next phase of an intent.
    async fn advance(&self, intent: &mut Intent, revision: u64) -> Result<u64, StepError> {
        intent.actor = self.config.identity.clone();
        intent.updated_at = jiff::Timestamp::now();
        Ok(self.intents.advance(intent, revision).await?)
    }

    /// Patches the owner's template (guarded by its resourceVersion), then verifies the rollout.
    async fn finish_owner_patch(&self, mut intent: Intent, mut revision: u64) -> Result<Finished, StepError> {
        let namespace = intent.target.namespace.clone();
        let Some(reference) = intent.workload.clone() else {
            return self
                .done(intent, revision, OutcomeResult::Failed, "the intent names no workload".into(), None)
                .await;
        };
        loop {
            match intent.phase {
                // Only drive() moves an intent past approval; never act on one here.
                Phase::AwaitingApproval | Phase::Approved => return Ok(awaiting_approval(&intent)),
                Phase::Pending => {
                    const ATTEMPTS: usize = 4;
                    let mut patched = false;
                    for _ in 0..ATTEMPTS {
                        let workload = self.workload(&namespace, &reference).await?;
                        if let Err(why) = ladder::template_matches(&workload, &intent.action) {
                            return self.done(intent, revision, OutcomeResult::Stale, why, None).await;
                        }
                        let patch = ladder::owner_patch(&workload, &intent.action, &intent.incident)
                            .map_err(StepError::Timeout)?;
                        let params = PatchParams::default();
                        let result = match workload.kind {
                            WorkloadKind::Deployment => {
                                Api::<Deployment>::namespaced(self.deps.kube.clone(), &namespace)
                                    .patch(&workload.name, &params, &Patch::Strategic(&patch))
                                    .await
                                    .map(|_| ())
                            }
                            WorkloadKind::StatefulSet => {
                                Api::<StatefulSet>::namespaced(self.deps.kube.clone(), &namespace)
                                    .patch(&workload.name, &params, &Patch::Strategic(&patch))
                                    .await
                                    .map(|_| ())
                            }
                        };
                        match result {
                            Ok(()) => {
                                patched = true;
                                break;
                            }
                            // Changed since it was read: read it again and re-check.
                            Err(kube::Error::Api(status)) if status.is_conflict() => continue,
                            Err(error) => return Err(error.into()),
                        }
                    }
                    if !patched {
                        return Err(StepError::Timeout(format!(
                            "{} {} kept changing during {ATTEMPTS} patch attempts",
                            reference.kind, reference.name
                        )));
                    }
                    info!(workload = %reference.name, kind = %reference.kind, "owner's pod template patched");
                    intent.phase = Phase::Applied;
                }
                Phase::Applied | Phase::Created | Phase::Deleted => {
                    let workload = self.workload(&namespace, &reference).await?;
                    let container = intent.action.container().unwrap_or_default().to_owned();
                    let old = intent.old_revision.clone().unwrap_or_default();
                    let desired = workload.replicas();
                    let label = if workload.kind == WorkloadKind::Deployment {
                        "pod-template-hash"
                    } else {
                        "controller-revision-hash"
                    };
                    let is_old =
                        move |p: &Pod| p.metadata.labels.as_ref().and_then(|l| l.get(label)) == Some(&old);
                    let pods: Api<Pod> = Api::namespaced(self.deps.kube.clone(), &namespace);
                    if workload.kind == WorkloadKind::StatefulSet {
                        self.delete_stuck_pods(&pods, &workload, &is_old).await?;
                    }
                    let config = watcher::Config::default().labels(&workload.selector());
                    let verdict = self
                        .verify(pods, config, |pods| {
                            ladder::rollout_progress(pods, &container, &is_old, desired)
                        })
                        .await;
                    let (result, detail) = verdict.describe(
                        &format!("the rollout of {} {}", reference.kind, reference.name),
                        self.config.verify_window,
                    );
                    let (kind, reason) = if result == OutcomeResult::Healed {
                        (EventType::Normal, "Remediated")
                    } else {
                        (EventType::Warning, "RemediationIneffective")
                    };
                    self.event(
                        &workload_ref(&namespace, &workload),
                        kind,
                        reason,
                        intent.action.kind_str(),
                        detail.clone(),
                    )
                    .await;
                    return self.done(intent, revision, result, detail, None).await;
                }
                Phase::Done => return Ok(intent.finished()),
            }
            revision = self.advance(&mut intent, revision).await?;
        }
    }

    /// Deletes (uid-guarded) the StatefulSet's pods that the failing template left unready, so the
    /// controller creates them again from the fixed template (see [`ladder::stuck_pods`]).
    async fn delete_stuck_pods(
        &self,
        pods: &Api<Pod>,
        workload: &ladder::Workload,
        is_old: &impl Fn(&Pod) -> bool,
    ) -> Result<(), StepError> {
        let listed = pods.list(&ListParams::default().labels(&workload.selector())).await?;
        let owned: Vec<Pod> = listed
            .items
            .into_iter()
            .filter(|p| {
                p.metadata.owner_references.iter().flatten().any(|o| Some(o.uid.as_str()) == workload.uid())
            })
            .collect();
        for pod in ladder::stuck_pods(&owned, is_old) {
            let name = pod.metadata.name.clone().unwrap_or_default();
            let params = DeleteParams {
                preconditions: Some(Preconditions { uid: pod.metadata.uid.clone(), resource_version: None }),
                ..DeleteParams::default()
            };
            match pods.delete(&name, &params).await {
                Ok(_) => {
                    info!(pod = %name, "deleted a pod stuck on the failing revision; the StatefulSet recreates it")
                }
                Err(kube::Error::Api(status)) if status.is_not_found() || status.is_conflict() => {}
                Err(error) => return Err(error.into()),
            }
        }
        Ok(())
    }

    /// Resizes a bare pod in place and verifies it; falls back to a force replace where the server does
    /// not serve `pods/resize` or the node cannot fit the new size.
    async fn finish_resize(&self, mut intent: Intent, mut revision: u64) -> Result<Finished, StepError> {
        let pods: Api<Pod> = Api::namespaced(self.deps.kube.clone(), &intent.target.namespace);
        let name = intent.target.name.clone();
        let Action::IncreaseMemory { container, from, to } = intent.action.clone() else {
            return self
                .done(
                    intent,
                    revision,
                    OutcomeResult::Failed,
                    "a resize needs a memory increase".into(),
                    None,
                )
                .await;
        };
        loop {
            match intent.phase {
                // Only drive() moves an intent past approval; never act on one here.
                Phase::AwaitingApproval | Phase::Approved => return Ok(awaiting_approval(&intent)),
                Phase::Pending => {
                    let Some(pod) = pods
                        .get_opt(&name)
                        .await?
                        .filter(|p| p.metadata.uid.as_deref() == Some(intent.target.uid.as_str()))
                    else {
                        return self
                            .done(
                                intent,
                                revision,
                                OutcomeResult::Stale,
                                "the pod was replaced before the resize".into(),
                                None,
                            )
                            .await;
                    };
                    let patch =
                        ladder::resize_patch(&pod, &container, from, to).map_err(StepError::Timeout)?;
                    // The resize subresource changes resources only; the record of what it was (to
                    // reverse it) and of the incident goes on the pod first.
                    let record = serde_json::json!({"metadata": {"annotations": {
                        format!("{}.{container}", replace::ORIGINAL_MEMORY_ANNOTATION): from.to_string(),
                        replace::INCIDENT_ANNOTATION: intent.incident.to_string()}}});
                    pods.patch(&name, &PatchParams::default(), &Patch::Merge(&record)).await?;
                    match pods.patch_resize(&name, &PatchParams::default(), &Patch::Strategic(&patch)).await {
                        Ok(_) => {
                            info!(%container, %to, "resized in place");
                            intent.phase = Phase::Applied;
                        }
                        Err(kube::Error::Api(status)) if matches!(status.code, 404 | 405 | 422) => {
                            info!(code = status.code, message = %status.message, "in-place resize not possible; replacing the pod");
                            return self.fall_back_to_replace(intent, revision).await;
                        }
                        Err(error) => return Err(error.into()),
                    }
                }
                Phase::Applied | Phase::Created | Phase::Deleted => {
                    if intent.baseline_restarts.is_none() {
                        // First the kubelet has to actuate the new size (or say it cannot).
                        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
                        let uid = intent.target.uid.clone();
                        let actuated = self
                            .wait_for(pods.clone(), config, |pods| {
                                match pods.iter().find(|p| p.metadata.uid.as_deref() == Some(uid.as_str())) {
                                    None => ladder::Progress::Failing("the pod is gone".into()),
                                    Some(pod) => match ladder::resize_state(pod, &container, to) {
                                        Ok(true) => ladder::Progress::Healthy,
                                        Ok(false) => ladder::Progress::Waiting,
                                        Err(why) => ladder::Progress::Failing(why),
                                    },
                                }
                            })
                            .await;
                        if !matches!(actuated, Verification::Healed) {
                            info!(?actuated, "the resize was not actuated; replacing the pod");
                            return self.fall_back_to_replace(intent, revision).await;
                        }
                        let pod = pods.get(&name).await?;
                        intent.baseline_restarts = Some(
                            pod.status
                                .as_ref()
                                .and_then(|s| s.container_statuses.as_ref())
                                .and_then(|c| c.iter().find(|c| c.name == container))
                                .map_or(0, |c| c.restart_count),
                        );
                        revision = self.advance(&mut intent, revision).await?;
                    }
                    return self.verify_pod_in_place(intent, revision, &pods, &container).await;
                }
                Phase::Done => return Ok(intent.finished()),
            }
            revision = self.advance(&mut intent, revision).await?;
        }
    }

    /// Switches an intent to a force replace (the original pod and its replacement are in the intent).
    async fn fall_back_to_replace(&self, mut intent: Intent, revision: u64) -> Result<Finished, StepError> {
        intent.strategy = Strategy::ForceReplace;
        intent.phase = Phase::Pending;
        let revision = self.advance(&mut intent, revision).await?;
        Box::pin(self.finish_replace(intent, revision)).await
    }

    /// Patches a bare pod's image (an update the apiserver allows) and verifies it.
    async fn finish_pod_patch(&self, mut intent: Intent, mut revision: u64) -> Result<Finished, StepError> {
        let pods: Api<Pod> = Api::namespaced(self.deps.kube.clone(), &intent.target.namespace);
        let name = intent.target.name.clone();
        let Action::RollbackImage { container, from, to } = intent.action.clone() else {
            return self
                .done(
                    intent,
                    revision,
                    OutcomeResult::Failed,
                    "a pod patch needs an image rollback".into(),
                    None,
                )
                .await;
        };
        loop {
            match intent.phase {
                // Only drive() moves an intent past approval; never act on one here.
                Phase::AwaitingApproval | Phase::Approved => return Ok(awaiting_approval(&intent)),
                Phase::Pending => {
                    let Some(pod) = pods
                        .get_opt(&name)
                        .await?
                        .filter(|p| p.metadata.uid.as_deref() == Some(intent.target.uid.as_str()))
                    else {
                        return self
                            .done(
                                intent,
                                revision,
                                OutcomeResult::Stale,
                                "the pod was replaced before the patch".into(),
                                None,
                            )
                            .await;
                    };
                    intent.baseline_restarts = Some(
                        pod.status
                            .as_ref()
                            .and_then(|s| s.container_statuses.as_ref())
                            .and_then(|c| c.iter().find(|c| c.name == container))
                            .map_or(0, |c| c.restart_count),
                    );
                    let patch = serde_json::json!({
                        "metadata": {"annotations": {
                            format!("{}.{container}", ladder::ORIGINAL_IMAGE_ANNOTATION): from,
                            replace::INCIDENT_ANNOTATION: intent.incident.to_string()}},
                        "spec": {"containers": [{"name": container, "image": to}]}
                    });
                    pods.patch(&name, &PatchParams::default(), &Patch::Strategic(&patch)).await?;
                    info!(%container, %to, "pod image rolled back");
                    intent.phase = Phase::Applied;
                }
                Phase::Applied | Phase::Created | Phase::Deleted => {
                    return self.verify_pod_in_place(intent, revision, &pods, &container).await;
                }
                Phase::Done => return Ok(intent.finished()),
            }
            revision = self.advance(&mut intent, revision).await?;
        }
    }

    /// Verifies a pod changed in place: its container must run healthy for the window without restarting
    /// again (one restart to leave the back-off is expected).
    async fn verify_pod_in_place(
        &self,
        intent: Intent,
        revision: u64,
        pods: &Api<Pod>,
        container: &str,
    ) -> Result<Finished, StepError> {
        let name = intent.target.name.clone();
        let uid = intent.target.uid.clone();
        let baseline = intent.baseline_restarts.unwrap_or(0);
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let verdict = self
            .verify(pods.clone(), config, |pods| {
                match pods.iter().find(|p| p.metadata.uid.as_deref() == Some(uid.as_str())) {
                    None => ladder::Progress::Failing("the pod is gone".into()),
                    Some(pod) => ladder::container_progress(pod, container, Some(baseline)),
                }
            })
            .await;
        let (result, detail) = verdict.describe(&format!("pod {name}"), self.config.verify_window);
        if let Ok(pod) = pods.get(&name).await {
            let (kind, reason) = if result == OutcomeResult::Healed {
                (EventType::Normal, "Remediated")
            } else {
                (EventType::Warning, "RemediationIneffective")
            };
            self.event(&pod.object_ref(&()), kind, reason, intent.action.kind_str(), detail.clone()).await;
        }
        self.done(intent, revision, result, detail, None).await
    }

    /// Drives a force replace from whatever phase it is in to done.
    async fn finish_replace(&self, mut intent: Intent, mut revision: u64) -> Result<Finished, StepError> {
        let pods: Api<Pod> = Api::namespaced(self.deps.kube.clone(), &intent.target.namespace);
        let name = intent.target.name.clone();
        let Some(replacement) = intent.replacement.clone() else {
            return self
                .done(
                    intent,
                    revision,
                    OutcomeResult::Failed,
                    "the intent holds no replacement pod".into(),
                    None,
                )
                .await;
        };
        loop {
            match intent.phase {
                // Only drive() moves an intent past approval; never act on one here.
                Phase::AwaitingApproval | Phase::Approved => return Ok(awaiting_approval(&intent)),
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
                    let created = match pods.create(&PostParams::default(), &replacement).await {
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
                Phase::Created | Phase::Applied => {
                    let uid = intent.replacement_uid.clone().unwrap_or_default();
                    let container = intent.action.container().unwrap_or_default().to_owned();
                    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
                    let verdict = self
                        .verify(pods.clone(), config, |pods| {
                            match pods.iter().find(|p| p.metadata.uid.as_deref() == Some(uid.as_str())) {
                                None => ladder::Progress::Waiting,
                                Some(pod) => ladder::container_progress(pod, &container, None),
                            }
                        })
                        .await;
                    let (result, detail) = verdict.describe("the replacement", self.config.verify_window);
                    if let Ok(pod) = pods.get(&name).await {
                        let (kind, reason) = if result == OutcomeResult::Healed {
                            (EventType::Normal, "Remediated")
                        } else {
                            (EventType::Warning, "RemediationIneffective")
                        };
                        self.event(
                            &pod.object_ref(&()),
                            kind,
                            reason,
                            intent.action.kind_str(),
                            detail.clone(),
                        )
                        .await;
                    }
                    let replacement_uid = intent.replacement_uid.clone();
                    return self.done(intent, revision, result, detail, replacement_uid).await;
                }
                Phase::Done => return Ok(intent.finished()),
            }
            revision = self.advance(&mut intent, revision).await?;
        }
    }

    /// Ends the incident's intent as failed if nothing was changed yet (true); an intent that already
    /// changed something is kept so a retry or a takeover finishes it (false).
    async fn give_up_if_unchanged(
        &self,
        incident: &proto::IncidentId,
        detail: &str,
    ) -> Result<bool, StepError> {
        match self.intents.get(incident).await? {
            None => Ok(true),
            Some((intent, revision)) if intent.phase == Phase::Pending => {
                self.done(intent, revision, OutcomeResult::Failed, detail.to_owned(), None).await?;
                Ok(true)
            }
            Some(_) => Ok(false),
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
        intent.detail = Some(detail);
        intent.replacement_uid = replacement_uid.or(intent.replacement_uid.clone());
        intent.updated_at = jiff::Timestamp::now();
        self.intents.advance(&intent, revision).await?;
        let lock =
            if intent.lock.is_empty() { intent::lock_key(&intent.target) } else { intent.lock.clone() };
        if let Err(error) = self.intents.unlock(&lock).await {
            warn!(%error, "releasing the lock failed");
        }
        Ok(intent.finished())
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

    /// Waits until `evaluate` says healthy (at once), failing, or the verify timeout passes.
    async fn wait_for(
        &self,
        pods: Api<Pod>,
        config: watcher::Config,
        evaluate: impl Fn(&[Pod]) -> ladder::Progress,
    ) -> Verification {
        Box::pin(self.watch_pods(pods, config, Duration::ZERO, evaluate)).await
    }

    /// Waits until `evaluate` has said healthy for the whole verify window, failing, or the timeout.
    async fn verify(
        &self,
        pods: Api<Pod>,
        config: watcher::Config,
        evaluate: impl Fn(&[Pod]) -> ladder::Progress,
    ) -> Verification {
        Box::pin(self.watch_pods(pods, config, self.config.verify_window, evaluate)).await
    }

    async fn watch_pods(
        &self,
        pods: Api<Pod>,
        config: watcher::Config,
        window: Duration,
        evaluate: impl Fn(&[Pod]) -> ladder::Progress,
    ) -> Verification {
        let mut events = watcher(pods, config).default_backoff().boxed();
        let mut current: BTreeMap<String, Pod> = BTreeMap::new();
        let mut listed = false;
        let deadline = tokio::time::Instant::now() + self.config.verify_timeout;
        let mut healthy_since: Option<tokio::time::Instant> = None;
        loop {
            let healed_at = healthy_since.map(|t| t + window);
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => return Verification::TimedOut(self.config.verify_timeout),
                () = async { match healed_at { Some(at) => tokio::time::sleep_until(at).await, None => std::future::pending().await } } => return Verification::Healed,
                event = events.next() => {
                    let Some(Ok(event)) = event else { continue };
                    match event {
                        watcher::Event::Init => current.clear(),
                        watcher::Event::InitApply(pod) | watcher::Event::Apply(pod) => {
                            current.insert(pod.metadata.name.clone().unwrap_or_default(), pod);
                        }
                        watcher::Event::Delete(pod) => {
                            current.remove(pod.metadata.name.as_deref().unwrap_or_default());
                        }
                        watcher::Event::InitDone => listed = true,
                    }
                    if !listed {
                        continue;
                    }
                    let pods: Vec<Pod> = current.values().cloned().collect();
                    match evaluate(&pods) {
                        ladder::Progress::Failing(why) => return Verification::Failed(why),
                        ladder::Progress::Healthy => {
                            let since = *healthy_since.get_or_insert_with(tokio::time::Instant::now);
                            if window.is_zero() && since <= tokio::time::Instant::now() {
                                return Verification::Healed;
                            }
                        }
                        ladder::Progress::Waiting => healthy_since = None,
                    }
                }
            }
        }
    }

    async fn record(&self, verdict: &Verdict, finished: Finished) -> Result<(), StepError> {
        self.record_for(&verdict.incident, &verdict.pod, &verdict.action, finished).await
    }

    /// Publishes the outcome of `incident`. Each incident has one final outcome (its message id is
    /// `outcome-<incident>`); a remediation waiting for approval is announced under `pending-<incident>`.
    async fn record_for(
        &self,
        incident: &proto::IncidentId,
        pod: &proto::PodRef,
        action: &Action,
        finished: Finished,
    ) -> Result<(), StepError> {
        let outcome = Outcome {
            schema: proto::SCHEMA_VERSION,
            incident: incident.clone(),
            pod: pod.clone(),
            action: action.clone(),
            result: finished.result,
            strategy: finished.strategy,
            detail: finished.detail,
            replacement_uid: finished.replacement_uid,
            actor: self.config.identity.clone(),
            trace_id: trace::current_trace_id(),
            at: jiff::Timestamp::now(),
        };
        let subject = proto::outcome_subject(&pod.namespace, outcome.result)?;
        let kind = if outcome.result == OutcomeResult::AwaitingApproval { "pending" } else { "outcome" };
        nats::publish(
            &self.deps.js,
            subject,
            &format!("{kind}-{incident}"),
            proto::encode(&outcome),
            &[(proto::headers::INCIDENT, incident.as_str())],
        )
        .await?;
        self.deps.metrics.outcomes.get_or_create(&ResultLabel { result: outcome.result.as_str() }).inc();
        info!(result = outcome.result.as_str(), detail = %outcome.detail, "outcome recorded");
        Ok(())
    }

    async fn event(
        &self,
        reference: &ObjectReference,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) {
        let event = KubeEvent {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: action.into(),
            secondary: None,
        };
        if let Err(error) = self.recorder.publish(&event, reference).await {
            warn!(%error, "recording a Kubernetes event failed");
        }
    }
}

/// The not-yet-final outcome of a remediation waiting for a human.
fn awaiting_approval(intent: &Intent) -> Finished {
    Finished {
        result: OutcomeResult::AwaitingApproval,
        strategy: Some(intent.strategy),
        detail: format!(
            "waiting for approval: kubesent approve {0} (or kubesent reject {0})",
            intent.incident
        ),
        replacement_uid: None,
    }
}

/// How a verification ended.
#[derive(Debug, Clone, PartialEq)]
enum Verification {
    Healed,
    Failed(String),
    TimedOut(Duration),
}

impl Verification {
    /// The outcome and its sentence, for `what` (`the replacement`, `pod web-1`, …).
    fn describe(&self, what: &str, window: Duration) -> (OutcomeResult, String) {
        match self {
            Self::Healed => (OutcomeResult::Healed, format!("{what} ran healthy for {window:?}")),
            Self::Failed(why) => (OutcomeResult::Ineffective, format!("{what} failed again: {why}")),
            Self::TimedOut(timeout) => {
                (OutcomeResult::Ineffective, format!("{what} did not stay healthy within {timeout:?}"))
            }
        }
    }
}

/// A one-phrase description of an action for events.
fn describe(action: &Action) -> String {
    match action {
        Action::IncreaseMemory { container, from, to } => {
            format!("memory limit of {container}: {from} -> {to}")
        }
        Action::RollbackImage { container, from, to } => format!("image of {container}: {from} -> {to}"),
        Action::None => String::new(),
    }
}

/// An ObjectReference to a workload, for events.
fn workload_ref(namespace: &str, workload: &ladder::Workload) -> ObjectReference {
    ObjectReference {
        api_version: Some("apps/v1".into()),
        kind: Some(workload.kind.as_str().into()),
        name: Some(workload.name.clone()),
        namespace: Some(namespace.into()),
        uid: workload.uid().map(str::to_owned),
        ..ObjectReference::default()
    }
}
