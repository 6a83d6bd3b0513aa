//! The remediator: the leader pulls verdicts, passes each through the safety gate ([`gate`]) and the
//! cluster-wide guardrails ([`guardrails`]), chooses the rung of the action ladder ([`ladder`]), writes the
//! intent to KV ([`intent`]) before anything changes, carries it out, verifies that the target heals, and
//! records an `Outcome` in `KUBESENT_OUTCOMES`.
//!
//! A remediator that takes over finishes any intent left half-done, so nothing deleted stays deleted. A
//! replica acts only while it leads ([`fence`]): work is dropped the moment it stops leading or shuts
//! down, and the lease is released only after that; KV compare-and-set and API preconditions keep two
//! replicas that both believe they lead (a stalled one waking up) from acting twice.
//! Changes are reversible with [`undo`].

/// The field manager every KubeSent write is recorded under in `metadata.managedFields`, so that a
/// reader (and KubeSent itself) can tell its changes from other actors'.
pub use kubesent_common::marks::FIELD_MANAGER;

/// Patch parameters of every KubeSent write: its own field manager.
pub fn patch_params() -> kube::api::PatchParams {
    kube::api::PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..kube::api::PatchParams::default()
    }
}

pub mod args;
pub mod autonomy;
pub mod bounds;
pub mod earned;
pub mod followup;
pub mod gate;
pub mod guardrails;
pub mod intent;
pub mod ladder;
pub mod operator;
pub mod plan;
pub mod preflight;
pub mod refusal;
pub mod replace;
pub mod undo;
pub mod workload;

mod executors;
mod fence;
mod nodes;
mod tasks;
mod verify;

use std::{sync::Arc, time::Duration};

use async_nats::jetstream;
use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use kube::{Api, Resource as _};
use kube_runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kubesent_common::{
    admin::Health,
    leader::LeaderConfig,
    nats::{
        self, PullOptions, Role, Topology,
        disposition::{self, Disposition, Handled},
    },
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
use tracing::{Instrument as _, info, warn};

use crate::{
    gate::Policy,
    guardrails::{Guard, Guardrails},
    intent::{Claim, IntentError, Intents},
    ladder::Owner,
    workload::{Workload, WorkloadError},
};
use kubesent_proto::intent::{Intent, Phase};

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
    /// The autonomy policy file (modes per action class and namespace), read at start and again when
    /// it changes; `None`: every class `auto` (the global flags still apply).
    pub autonomy_policy: Option<std::path::PathBuf>,
    /// Verdicts handled at once: planning and making a change (its verification goes on apart).
    pub concurrency: usize,
    /// Verifications watched at once (each a watch of the target's pods, and of its workload).
    pub max_verifications: usize,
    /// Writes to the Kubernetes API per second (patches, creates, deletes, evictions), with a burst of
    /// twice that: well inside a controller's share of the apiserver's priority and fairness.
    pub writes_per_second: u32,
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
    /// Take back a change of KubeSent's that did not land or made the workload worse (on by default).
    pub take_back: bool,
    /// How long a revision must have served healthy, by KubeSent's record, to be rolled back to after a
    /// finished rollout scaled it down.
    pub known_good_after: Duration,
    /// Following decisions, keeping each class's record, promotion and demotion.
    pub earned: EarnedConfig,
}

/// How KubeSent follows its decisions up and keeps each action class's record.
#[derive(Debug, Clone)]
pub struct EarnedConfig {
    /// How long a shadow or suggested decision is followed for what humans did.
    pub followup_window: Duration,
    /// How often the leader looks at the follow-ups.
    pub followup_every: Duration,
    /// Field managers taken for people (prefixes); every other manager is a controller.
    pub human_managers: Vec<String>,
    /// When a record earns a promotion (also: when a model's own record ends its probation).
    pub promotion: proto::autonomy::PromotionRule,
    /// Promote a class that earned it without waiting for `kubesent policy promote`.
    pub auto_promote: bool,
    /// Harmful automatic fixes of a class within [`EarnedConfig::demote_window`] that demote it to
    /// `approve` (0: never).
    pub demote_after: u32,
    /// The class breaker's window.
    pub demote_window: Duration,
}

impl Default for EarnedConfig {
    fn default() -> Self {
        Self {
            followup_window: Duration::from_secs(24 * 3600),
            followup_every: Duration::from_secs(30),
            human_managers: followup::HUMAN_FIELD_MANAGERS.split(',').map(str::to_owned).collect(),
            promotion: proto::autonomy::PromotionRule::default(),
            auto_promote: false,
            demote_after: 2,
            demote_window: Duration::from_secs(24 * 3600),
        }
    }
}

impl Default for RemediatorConfig {
    fn default() -> Self {
        Self {
            topology: Topology::default(),
            policy: Policy::default(),
            limits: guardrails::Limits::default(),
            approval_required: false,
            autonomy_policy: None,
            concurrency: 8,
            max_verifications: 512,
            writes_per_second: 20,
            intent_retention: Duration::from_secs(30 * 24 * 3600),
            leader: None,
            identity: "kubesent-remediator".into(),
            delete_timeout: Duration::from_secs(120),
            verify_window: Duration::from_secs(120),
            verify_timeout: Duration::from_secs(600),
            take_back: true,
            known_good_after: Duration::from_secs(600),
            earned: EarnedConfig::default(),
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
    /// Readiness, set once the streams, the intents bucket and the verdicts consumer are set up.
    pub health: Arc<Health>,
}

/// Errors that stop the remediator.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Shared runtime failure.
    #[error(transparent)]
    Common(#[from] kubesent_common::Error),
    /// The autonomy policy file cannot be read or is not valid.
    #[error("the autonomy policy {path}: {why}")]
    Policy {
        /// The file.
        path: String,
        /// What is wrong (the line, for a format error).
        why: String,
    },
}

/// Reads and validates the autonomy policy file.
pub fn read_policy(path: &std::path::Path) -> Result<autonomy::AutonomyPolicy, Error> {
    let error = |why: String| Error::Policy { path: path.display().to_string(), why };
    let text = std::fs::read_to_string(path).map_err(|e| error(e.to_string()))?;
    autonomy::AutonomyPolicy::parse(&text).map_err(|e| error(e.to_string()))
}

/// How often the autonomy policy file is read again (a mounted ConfigMap changes by a symlink swap,
/// which a file watch would miss).
const POLICY_RELOAD: Duration = Duration::from_secs(10);

/// Reads the policy file again every [`POLICY_RELOAD`] and takes a changed, valid one; an invalid one is
/// logged and the policy in force kept.
async fn reload_policy(
    path: std::path::PathBuf,
    policy: Arc<std::sync::RwLock<autonomy::AutonomyPolicy>>,
    shutdown: CancellationToken,
) {
    let mut last = std::fs::read_to_string(&path).unwrap_or_default();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(POLICY_RELOAD) => {}
        }
        reload_once(&path, &mut last, &policy);
    }
}

/// One look at the policy file: a changed, valid file replaces the policy in force (true); a changed,
/// invalid one is logged and ignored.
fn reload_once(
    path: &std::path::Path,
    last: &mut String,
    policy: &std::sync::RwLock<autonomy::AutonomyPolicy>,
) -> bool {
    let Ok(text) = std::fs::read_to_string(path) else { return false };
    if text == *last {
        return false;
    }
    let taken = match autonomy::AutonomyPolicy::parse(&text) {
        Ok(parsed) => {
            *policy.write().unwrap_or_else(std::sync::PoisonError::into_inner) = parsed;
            info!(path = %path.display(), "autonomy policy reloaded");
            true
        }
        Err(error) => {
            tracing::error!(path = %path.display(), %error, "the changed autonomy policy is not valid; the one in force is kept");
            false
        }
    };
    *last = text;
    taken
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
    /// Every attempt met a conflict: the object changed under each.
    #[error("{what} kept changing during {attempts} attempts")]
    KeptChanging { what: String, attempts: usize },
    /// A workload could not be read or written.
    #[error(transparent)]
    Workload(#[from] WorkloadError),
    /// The patch cannot be built from the live object (a container or a limit is missing).
    #[error("no patch")]
    NoPatch(#[source] ladder::Mismatch),
    #[error("pod {pod} still terminating after {after:?}")]
    StillTerminating { pod: String, after: Duration },
    #[error("waiting for the pod's deletion")]
    Wait(#[source] kube_runtime::wait::Error),
    #[error("outcome subject: {0}")]
    Subject(#[from] proto::InvalidNamespace),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ClassLabel {
    class: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct DecisionLabel {
    class: &'static str,
    mode: &'static str,
    /// `rules` or `model` (model names come from verdicts: not a label).
    proposer: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct JudgementLabel {
    class: &'static str,
    judgement: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct FollowUpLabel {
    class: &'static str,
    response: &'static str,
}

/// Remediator metrics.
#[derive(Debug)]
pub struct RemediatorMetrics {
    outcomes: Family<ResultLabel, Counter>,
    rejected: Family<ReasonLabel, Counter>,
    retries: Counter,
    leader: Gauge,
    verdict_to_fix: kubesent_common::metrics::SliHistograms,
    failure_to_healed: kubesent_common::metrics::SliHistograms,
    /// From the fix applied to KubeSent seeing that it did not land or was overridden, by result.
    fix_undone: Family<
        ResultLabel,
        prometheus_client::metrics::histogram::Histogram,
        fn() -> prometheus_client::metrics::histogram::Histogram,
    >,
    /// Verdicts being planned and their change made (at most `--concurrency`).
    verdicts_in_flight: Gauge,
    /// Verifications under way (at most `--max-verifications`).
    verifications_in_flight: Gauge,
    /// Writes to the Kubernetes API, after the rate limit let them through.
    writes: Counter,
    /// Decisions by action class, mode and proposer.
    decisions: Family<DecisionLabel, Counter>,
    /// Outcomes counted in a class's record, by judgement.
    judgements: Family<JudgementLabel, Counter>,
    /// Follow-ups ended, by what humans did.
    followups: Family<FollowUpLabel, Counter>,
    /// Follow-ups under way.
    followups_open: Gauge,
    /// Each class's mode for every namespace (0 auto, 1 approve, 2 shadow).
    class_mode: Family<ClassLabel, Gauge>,
}

/// 50 ms to about half an hour: a refusal or an override shows in seconds.
fn fix_undone_histogram() -> prometheus_client::metrics::histogram::Histogram {
    prometheus_client::metrics::histogram::Histogram::new(
        prometheus_client::metrics::histogram::exponential_buckets(0.05, 2.0, 16),
    )
}

impl Default for RemediatorMetrics {
    fn default() -> Self {
        Self {
            outcomes: Family::default(),
            rejected: Family::default(),
            retries: Counter::default(),
            leader: Gauge::default(),
            verdict_to_fix: kubesent_common::metrics::sli_histograms(),
            failure_to_healed: kubesent_common::metrics::sli_histograms(),
            fix_undone: Family::new_with_constructor(fix_undone_histogram),
            verdicts_in_flight: Gauge::default(),
            verifications_in_flight: Gauge::default(),
            writes: Counter::default(),
            decisions: Family::default(),
            judgements: Family::default(),
            followups: Family::default(),
            followups_open: Gauge::default(),
            class_mode: Family::default(),
        }
    }
}

impl RemediatorMetrics {
    /// Creates the metrics and registers them under `kubesent_remediator_`.
    pub fn register(registry: &mut Registry) -> Arc<Self> {
        let metrics = Self::default();
        let r = registry.sub_registry_with_prefix("kubesent_remediator");
        r.register("outcomes", "Outcomes recorded, by result", metrics.outcomes.clone());
        r.register(
            "rejected_messages",
            "Verdicts refused as invalid (oversized, unknown schema, malformed, out of bounds, wrong subject) and dead-lettered",
            metrics.rejected.clone(),
        );
        for reason in proto::Invalid::LABELS {
            let _ = metrics.rejected.get_or_create(&ReasonLabel { reason });
        }
        r.register("retries", "Verdicts handed back for a later retry", metrics.retries.clone());
        r.register("leader", "1 when this replica leads", metrics.leader.clone());
        r.register(
            "verdict_to_fix_seconds",
            "From the verdict to the fix applied (the owner patched, the pod resized or replaced), by failure kind",
            metrics.verdict_to_fix.clone(),
        );
        r.register(
            "failure_to_healed_seconds",
            "From the failure (the container's termination or the condition's change, else its detection) to the fix verified healthy, by failure kind",
            metrics.failure_to_healed.clone(),
        );
        r.register(
            "fix_undone_detection_seconds",
            "From a fix applied to KubeSent seeing that it did not land (not_landed), another manager changed it back (overridden) or it made the workload worse and was taken back (reverted), by result",
            metrics.fix_undone.clone(),
        );
        r.register(
            "verdicts_in_flight",
            "Verdicts being planned and their change made (at most --concurrency)",
            metrics.verdicts_in_flight.clone(),
        );
        r.register(
            "verifications_in_flight",
            "Changes being verified, each apart from the verdict that asked for it (at most --max-verifications)",
            metrics.verifications_in_flight.clone(),
        );
        r.register(
            "api_writes",
            "Writes to the Kubernetes API (patches, creates, deletes, evictions) let through by the write rate limit",
            metrics.writes.clone(),
        );
        r.register(
            "autonomy_decisions",
            "Fixes decided, by action class, the mode they were decided in and who proposed them (rules or a model)",
            metrics.decisions.clone(),
        );
        r.register(
            "autonomy_judgements",
            "Outcomes counted in an action class's record (agreed, disagreed, harmful), by class",
            metrics.judgements.clone(),
        );
        r.register(
            "autonomy_followups",
            "Follow-ups of shadow and suggested decisions ended, by class and what humans did (same, different, nothing, controller)",
            metrics.followups.clone(),
        );
        r.register("autonomy_followups_open", "Follow-ups under way", metrics.followups_open.clone());
        r.register(
            "autonomy_class_mode",
            "Each action class's mode for every namespace: 0 auto, 1 approve, 2 shadow (namespace rules aside)",
            metrics.class_mode.clone(),
        );
        for class in proto::autonomy::ActionClass::ALL {
            let _ = metrics.class_mode.get_or_create(&ClassLabel { class: class.as_str() });
            for mode in [autonomy::Mode::Auto, autonomy::Mode::Approve, autonomy::Mode::Shadow] {
                for proposer in ["rules", "model"] {
                    let label = DecisionLabel { class: class.as_str(), mode: mode.as_str(), proposer };
                    let _ = metrics.decisions.get_or_create(&label);
                }
            }
            for response in [
                proto::autonomy::HumanResponse::Same,
                proto::autonomy::HumanResponse::Different,
                proto::autonomy::HumanResponse::Nothing,
                proto::autonomy::HumanResponse::Controller,
            ] {
                let label = FollowUpLabel { class: class.as_str(), response: response.as_str() };
                let _ = metrics.followups.get_or_create(&label);
            }
            for judgement in [
                proto::autonomy::Judgement::Agreed,
                proto::autonomy::Judgement::Disagreed,
                proto::autonomy::Judgement::Harmful,
            ] {
                let _ = metrics
                    .judgements
                    .get_or_create(&JudgementLabel { class: class.as_str(), judgement: judgement.as_str() });
            }
        }
        // Every series exists from the start, at zero, so rates and alerts see it before the first event.
        for result in OutcomeResult::ALL {
            let _ = metrics.outcomes.get_or_create(&ResultLabel { result: result.as_str() });
        }
        for result in [OutcomeResult::NotLanded, OutcomeResult::Overridden, OutcomeResult::Reverted] {
            let _ = metrics.fix_undone.get_or_create(&ResultLabel { result: result.as_str() });
        }
        Arc::new(metrics)
    }

    /// Observes how long after `applied_at` a fix was seen not to land or to be overridden.
    fn observe_fix_undone(&self, result: OutcomeResult, applied_at: jiff::Timestamp) {
        let seconds = jiff::Timestamp::now().duration_since(applied_at).as_secs_f64();
        if seconds >= 0.0 {
            self.fix_undone.get_or_create(&ResultLabel { result: result.as_str() }).observe(seconds);
        }
    }

    /// Outcomes recorded with `result`.
    pub fn outcomes(&self, result: OutcomeResult) -> u64 {
        self.outcomes.get_or_create(&ResultLabel { result: result.as_str() }).get()
    }

    /// Verdicts refused as invalid, for `reason` (a [`proto::Invalid::label`]).
    pub fn rejected(&self, reason: &'static str) -> u64 {
        self.rejected.get_or_create(&ReasonLabel { reason }).get()
    }
}

/// Runs a remediator replica until `shutdown`.
pub async fn run(
    config: RemediatorConfig,
    deps: RemediatorDeps,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    // The policy is validated before anything else: a wrong file is a clear fatal error at start.
    let autonomy = match &config.autonomy_policy {
        Some(path) => read_policy(path)?,
        None => autonomy::AutonomyPolicy::default(),
    };
    let autonomy = Arc::new(std::sync::RwLock::new(autonomy));
    if let Some(path) = config.autonomy_policy.clone() {
        tokio::spawn(reload_policy(path, autonomy.clone(), shutdown.clone()));
    }
    // Waits for JetStream and for the verdicts stream (the diagnoser creates it) instead of exiting.
    let setup = async {
        nats::prepare(&deps.js, &config.topology, Role::Remediator, &shutdown).await?;
        let bucket = nats::open_intents(&deps.js, &config.topology, &shutdown).await?;
        let consumer = config.topology.remediator_consumer();
        let consumer = nats::open_consumer(&deps.js, proto::VERDICTS_STREAM, consumer, &shutdown).await?;
        Ok::<_, kubesent_common::Error>((bucket, consumer))
    };
    let (bucket, consumer) = match setup.await {
        Err(_) if shutdown.is_cancelled() => return Ok(()),
        result => result?,
    };
    deps.health.set_ready(true);
    let intents = Intents::new(bucket.clone());
    let followups = followup::Followups::new(bucket.clone());
    let records = earned::Records::new(bucket.clone());
    let human_managers = followup::HumanManagers::new(&config.earned.human_managers);
    let guardrails = Guardrails::new(bucket, config.limits.clone());
    let leadership = kubesent_common::leader::Leadership::new(deps.kube.clone(), config.leader.clone());
    let leading = leadership.watch();
    let recorder = Recorder::new(
        deps.kube.clone(),
        Reporter { controller: "kubesent-remediator".into(), instance: Some(config.identity.clone()) },
    );
    let max_verifications = config.max_verifications.max(1);
    let writes = {
        let rate =
            std::num::NonZeroU32::new(config.writes_per_second.max(1)).unwrap_or(std::num::NonZeroU32::MIN);
        let burst = rate.saturating_mul(std::num::NonZeroU32::new(2).unwrap_or(std::num::NonZeroU32::MIN));
        governor::RateLimiter::direct(governor::Quota::per_second(rate).allow_burst(burst))
    };
    let served = kubesent_common::served::ServedStore::new(deps.js.clone());
    let remediator = Arc::new(Remediator {
        config,
        autonomy,
        served,
        deps,
        intents,
        followups,
        records,
        human_managers,
        guardrails,
        recorder,
        turns: fence::Turns::default(),
        verifications: Arc::new(tokio::sync::Semaphore::new(max_verifications)),
        writes,
        leading: leading.clone(),
        shutdown: shutdown.clone(),
    });
    // No span for these loops: they live as long as the process, and a span is exported when it ends.
    tokio::spawn(remediator.clone().resume_on_takeover(leading.clone(), shutdown.clone()));
    tokio::spawn(remediator.clone().take_decisions(leading.clone(), shutdown.clone()));
    tokio::spawn(remediator.clone().purge_old_intents(leading.clone(), shutdown.clone()));
    tokio::spawn(remediator.clone().follow_up(leading.clone(), shutdown.clone()));
    tokio::spawn(remediator.clone().take_policy_requests(leading.clone(), shutdown.clone()));
    tokio::spawn(remediator.clone().count_reverts(leading.clone(), shutdown.clone()));
    let worker = remediator.clone();
    // Verdicts are planned and changes made several at a time; each verification then goes on apart, so
    // a storm's verdicts never wait behind verify windows. The per-target locks keep two remediations off
    // the same pod or workload, and the guardrails bound how many actions start per hour.
    let options = PullOptions { concurrency: remediator.config.concurrency.max(1), ..PullOptions::default() };
    let client = remediator.deps.js.client();
    nats::pull_loop(consumer, options, leading, shutdown, move |message| {
        let worker = worker.clone();
        async move {
            let verdict = message.clone();
            let (leading, shutdown) = (worker.leading.clone(), worker.shutdown.clone());
            if let Err(dropped) = fence::while_leading(&leading, &shutdown, worker.handle(message)).await {
                // Stopped as a crash would stop it; handed back at once for the next leader, which
                // continues from the intent if one was written.
                info!(?dropped, subject = %verdict.subject, "stopped a remediation; the next leader continues it");
                let _ = verdict.ack_with(jetstream::AckKind::Nak(None)).await;
            }
        }
    })
    .await;
    // Acks and publishes still in the client's buffer reach the server before the process ends.
    let _ = client.flush().await;
    // Shutting down, every remediation stopped: only now release the lease (see `fence`).
    leadership.release().await;
    Ok(())
}

struct Remediator {
    config: RemediatorConfig,
    /// Modes per action class and namespace, reloaded when the file changes.
    autonomy: Arc<std::sync::RwLock<autonomy::AutonomyPolicy>>,
    /// KubeSent's record of the revisions each workload served (the detector's).
    served: kubesent_common::served::ServedStore,
    deps: RemediatorDeps,
    intents: Intents,
    /// Shadow and suggested decisions being followed.
    followups: followup::Followups,
    /// Each class's record and the overrides in force.
    records: earned::Records,
    /// Which field managers are people.
    human_managers: followup::HumanManagers,
    guardrails: Guardrails,
    recorder: Recorder,
    /// One task at a time drives an incident.
    turns: fence::Turns,
    /// Verifications under way, bounded.
    verifications: Arc<tokio::sync::Semaphore>,
    /// The apiserver write rate limit.
    writes: governor::DefaultDirectRateLimiter,
    /// Whether this replica leads: nothing acts unless it does.
    leading: watch::Receiver<bool>,
    shutdown: CancellationToken,
}

/// What [`Remediator::prepare`] found.
enum Prepared {
    /// Nothing to do: the verdict ends here (stale, denied, suggested, diagnosis only).
    Finished(Finished),
    /// The action is within bounds: take the guardrails and the lock, write the intent, act.
    Act(Box<Act>),
}

/// An action within bounds, ready to be carried out.
struct Act {
    pod: Pod,
    owner: Owner,
    intent: Intent,
    /// The target in words (`Deployment web`, `pod web-1`).
    what: String,
    /// The guardrails' key of the workload (`shop/Deployment/web`).
    workload_key: String,
}

/// How a verdict ended, before it is published.
#[derive(Debug, Clone)]
struct Finished {
    result: OutcomeResult,
    strategy: Option<Strategy>,
    detail: String,
    replacement_uid: Option<String>,
    /// Who approved or rejected it, when a human did.
    decided_by: Option<String>,
    /// Already on the audit log (recorded when its intent was marked done).
    recorded: bool,
    /// Not finished: the change is made and its verification goes on in a task of its own (see
    /// [`HandOff`]).
    verifying: bool,
    /// The class and mode of the decision, when known here (else derived when it is recorded).
    autonomy: Option<proto::autonomy::Autonomy>,
}

impl Finished {
    fn plain(result: OutcomeResult, detail: impl Into<String>) -> Self {
        Self {
            result,
            strategy: None,
            detail: detail.into(),
            replacement_uid: None,
            decided_by: None,
            recorded: false,
            verifying: false,
            autonomy: None,
        }
    }

    /// The same, decided in `mode` for `class`.
    fn in_mode(self, class: proto::autonomy::ActionClass, mode: autonomy::Mode, strategy: Strategy) -> Self {
        Self { autonomy: Some(proto::autonomy::Autonomy { class, mode }), strategy: Some(strategy), ..self }
    }
}

/// Where the task that drives an intent lets go of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HandOff {
    /// Once the change is made: verifying is watching, and goes on in a task of its own, so the verdict's
    /// slot is free for the next verdict (see [`Remediator::verify_apart`]).
    AtVerification,
    /// Only at the end.
    Never,
}

impl Finished {
    /// How a finished intent ended, for its outcome.
    fn of(intent: &Intent) -> Self {
        Self {
            result: intent.result.unwrap_or(OutcomeResult::Applied),
            strategy: Some(intent.strategy),
            detail: intent.detail.clone().unwrap_or_default(),
            replacement_uid: intent.replacement_uid.clone(),
            decided_by: intent.approved_by.clone(),
            recorded: false,
            verifying: false,
            autonomy: None,
        }
    }
}

impl Remediator {
    async fn handle(self: &Arc<Self>, message: jetstream::Message) {
        let _counted = GaugeGuard::inc(self.deps.metrics.verdicts_in_flight.clone());
        let span = trace::consumer_span(
            "verdict",
            proto::REMEDIATOR_CONSUMER,
            message.subject.as_str(),
            message.headers.as_ref(),
        );
        self.handle_in_span(message, &span).instrument(span.clone()).await;
    }

    async fn handle_in_span(self: &Arc<Self>, message: jetstream::Message, span: &tracing::Span) {
        let deliveries = message.info().map(|i| i.delivered).unwrap_or(1).max(1).unsigned_abs();
        // Hand-overs between leaders count as deliveries too, so the limit is four times the
        // pipeline's (with the back-off, over an hour of retries).
        let max_deliveries = self.config.topology.max_deliver.max(1).unsigned_abs().saturating_mul(4);
        // A verdict is a request, never an authority: first its shape and bounds, then (in `remediate`)
        // every bound of its action again from the cluster itself.
        let handled = match proto::validate::receive_verdict(message.subject.as_str(), &message.payload) {
            Err(error) => {
                warn!(%error, subject = %message.subject, "invalid verdict; dead-lettering it");
                self.deps.metrics.rejected.get_or_create(&ReasonLabel { reason: error.label() }).inc();
                Handled::Invalid(format!("invalid verdict: {error}"))
            }
            Ok(verdict) => {
                trace::record_target(
                    span,
                    verdict.incident.as_str(),
                    &verdict.pod.namespace,
                    &verdict.pod.name,
                );
                let _progress = nats::ProgressAcker::start(&message, Duration::from_secs(5));
                match self.remediate_and_record(&verdict, None).await {
                    Ok(()) => Handled::Done,
                    Err(error) => Handled::Failed(error.to_string()),
                }
            }
        };
        let failed = matches!(handled, Handled::Failed(_));
        let disposition = disposition::dispose(handled, deliveries, max_deliveries);
        match &disposition {
            Disposition::DeadLetter(reason) => warn!(%reason, deliveries, "dead-lettering the verdict"),
            Disposition::RetryAfter(delay) if failed => {
                self.deps.metrics.retries.inc();
                warn!(deliveries, retry_in = ?delay, "remediation step failed; the verdict will be redelivered");
            }
            Disposition::Ack | Disposition::RetryAfter(_) => {}
        }
        if let Err(error) = disposition::settle(&self.deps.js, "remediator", &message, &disposition).await {
            warn!(%error, ?disposition, "settling the verdict failed; a redelivery will find the outcome recorded");
        }
    }

    /// Remediates `verdict` and records its outcome. A refusal by the API's authorization cannot be
    /// retried away: a remediation that changed nothing yet ends as failed, loudly.
    /// Remediates `verdict` and records how it ended; `approved_by`: a human approved it after it was only
    /// suggested (see [`Remediator::remediate`]).
    pub(crate) async fn remediate_and_record(
        self: &Arc<Self>,
        verdict: &Verdict,
        approved_by: Option<&str>,
    ) -> Result<(), StepError> {
        match self.remediate(verdict, approved_by).await {
            Ok(finished) if finished.verifying => self.verify_apart(&verdict.incident).await,
            Ok(finished) => {
                let finished = Finished { decided_by: approved_by.map(str::to_owned), ..finished };
                self.record(verdict, finished).await
            }
            Err(StepError::Kube(kube::Error::Api(status))) if matches!(status.code, 401 | 403) => {
                let detail = format!(
                    "the remediator may not do this ({}): grant it the rules in deploy/base/rbac.yaml",
                    status.message
                );
                match self.give_up_if_unchanged(&verdict.incident, &detail).await? {
                    Some(finished) => self.record(verdict, finished).await,
                    None => Err(StepError::Kube(kube::Error::Api(status))),
                }
            }
            Err(error) => Err(error),
        }
    }

    /// Verifies the incident's change in a task of its own, which records the outcome; the verdict is
    /// done with. At most `max_verifications` run at once (a full pool makes the verdict wait here).
    /// While this replica leads: its successor finishes an unfinished verification from the intent.
    async fn verify_apart(self: &Arc<Self>, incident: &proto::IncidentId) -> Result<(), StepError> {
        let Some((intent, revision)) = self.intents.get(incident).await? else { return Ok(()) };
        let Ok(permit) = self.verifications.clone().acquire_owned().await else { return Ok(()) };
        let span = tracing::info_span!("verification", incident = %incident);
        let remediator = self.clone();
        let gauge = self.deps.metrics.verifications_in_flight.clone();
        self.clone().spawn_while_leading(
            async move {
                let _permit = permit;
                let _counted = GaugeGuard::inc(gauge);
                remediator.finish(intent, revision, "a verification").await;
            }
            .instrument(span),
        );
        Ok(())
    }

    /// Keeps a verdict a guardrail held, so a human can approve it after the fact (best effort: without it
    /// the incident is still recorded as suggested).
    async fn keep_suggested(&self, verdict: &Verdict) {
        if let Err(error) = self.intents.keep_suggested(verdict).await {
            warn!(%error, "keeping the suggested verdict for a later approval failed");
        }
    }

    /// Waits for room under the apiserver write rate limit; called before every write to the cluster.
    pub(crate) async fn write_permit(&self) {
        use governor::clock::{Clock as _, DefaultClock};
        while let Err(not_until) = self.writes.check() {
            tokio::time::sleep(not_until.wait_time_from(DefaultClock::default().now())).await;
        }
        self.deps.metrics.writes.inc();
    }

    /// Gates and applies a verdict. `approved_by`: a human approved it after it was only suggested; it is
    /// decided again against the cluster, and the human's consent stands in for the budget, cooldown and
    /// breaker (the kill switch still holds), as in approval mode.
    async fn remediate(&self, verdict: &Verdict, approved_by: Option<&str>) -> Result<Finished, StepError> {
        // A redelivered verdict whose intent is already under way continues where it stopped.
        if let Some((intent, revision)) = self.intents.get(&verdict.incident).await? {
            return self.drive(intent, revision, HandOff::AtVerification).await;
        }
        // Boxed, as the strategies are: the decision holds API responses and keeps the handler's future small.
        let act = match Box::pin(self.prepare(verdict)).await? {
            Prepared::Finished(finished) => return Ok(finished),
            Prepared::Act(act) => *act,
        };
        let Act { pod, owner, mut intent, what, workload_key } = act;
        let Some(class) = autonomy::ActionClass::of(&intent.action, intent.strategy) else {
            return Ok(Finished::plain(OutcomeResult::DiagnosisOnly, "no action"));
        };
        let resolved = self.mode_of(class, &intent.target.namespace, &verdict.source).await?;
        if approved_by.is_none() {
            let proposer =
                if matches!(verdict.source, proto::VerdictSource::Model { .. }) { "model" } else { "rules" };
            let label = DecisionLabel { class: class.as_str(), mode: resolved.mode.as_str(), proposer };
            self.deps.metrics.decisions.get_or_create(&label).inc();
        }
        let decided = |finished: Finished| finished.in_mode(class, resolved.mode, intent.strategy);
        if resolved.mode == autonomy::Mode::Shadow {
            // Decided and recorded, nothing changed; a human's approval does not override shadow.
            return Ok(decided(Finished::plain(
                OutcomeResult::Suggested,
                format!(
                    "shadow ({}): KubeSent would {} {} on {what}; nothing was changed",
                    resolved.why,
                    verdict.action.kind_str(),
                    describe(&verdict.action)
                ),
            )));
        }
        let approval = resolved.mode == autonomy::Mode::Approve;
        if approval && approved_by.is_none() && intent.phase == Phase::Pending {
            intent.phase = Phase::AwaitingApproval;
            intent.detail = Some(format!("waits for approval ({})", resolved.why));
        }
        if approval || approved_by.is_some() {
            // A human decides instead of the budget, cooldown and breaker; the kill switch still holds.
            if let Some(reason) = self.guardrails.paused().await? {
                self.keep_suggested(verdict).await;
                return Ok(decided(Finished::plain(
                    OutcomeResult::Suggested,
                    format!(
                        "KubeSent is paused ({reason}); actions are only suggested (`kubesent approve {}` once resumed)",
                        verdict.incident
                    ),
                )));
            }
        } else if let Guard::Hold(why) =
            self.guardrails.admit(&workload_key, verdict.incident.as_str()).await?
        {
            info!(%why, "the guardrails hold the action; it is only suggested");
            self.keep_suggested(verdict).await;
            return Ok(decided(Finished::plain(
                OutcomeResult::Suggested,
                format!("{why} (`kubesent approve {}` carries it out)", verdict.incident),
            )));
        }
        if let Some(by) = approved_by {
            intent.approved_by = Some(by.to_owned());
            if intent.phase == Phase::AwaitingApproval {
                intent.phase = Phase::Pending;
            }
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
            self.event(&w.object_ref(), EventType::Normal, reason, verdict.action.kind_str(), note).await;
        }
        self.drive(intent, revision, HandOff::AtVerification).await
    }

    /// The mode of `class` in `namespace`: the policy in force with its overrides, the namespace's own
    /// annotation (read from the cluster), the proposer's probation and the global flags.
    async fn mode_of(
        &self,
        class: autonomy::ActionClass,
        namespace: &str,
        source: &proto::VerdictSource,
    ) -> Result<autonomy::Resolved, StepError> {
        let facts = self.namespace_facts(namespace).await?;
        let overrides = self.records.overrides(class, namespace).await?;
        let global = autonomy::Global {
            dry_run: self.config.policy.dry_run,
            require_approval: self.config.approval_required,
        };
        let policy = self.autonomy.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        let proposer = match source {
            proto::VerdictSource::Model { model } => {
                autonomy::Proposer::Model(model, self.model_earned(class, model).await?)
            }
            _ => autonomy::Proposer::Rules,
        };
        let resolved = autonomy::resolve(&policy, class, &facts, &overrides, global, proposer);
        info!(class = class.as_str(), mode = resolved.mode.as_str(), why = %resolved.why, "autonomy decided");
        Ok(resolved)
    }

    /// What the cluster says of `namespace` that autonomy reads: its labels and annotation.
    pub(crate) async fn namespace_facts(
        &self,
        namespace: &str,
    ) -> Result<autonomy::NamespaceFacts, StepError> {
        let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(self.deps.kube.clone());
        let meta = namespaces.get_opt(namespace).await?.map(|n| n.metadata).unwrap_or_default();
        Ok(autonomy::NamespaceFacts {
            name: namespace.to_owned(),
            labels: meta.labels.unwrap_or_default(),
            annotation: meta.annotations.and_then(|mut a| a.remove(autonomy::NAMESPACE_ANNOTATION)),
        })
    }

    /// Everything the cluster says about a verdict before any guardrail or lock: the gate against the live
    /// pod, the owner and the bounds re-derived from the cluster, the reverted and escalation markers,
    /// GitOps, the ladder's rung and the intent to write. Changes nothing, so it runs again, against the
    /// cluster as it is then, before an approved remediation is carried out.
    async fn prepare(&self, verdict: &Verdict) -> Result<Prepared, StepError> {
        let refused = |refusal: refusal::Refusal| {
            Ok(Prepared::Finished(Finished::plain(refusal.result(), refusal.to_string())))
        };
        let now = jiff::Timestamp::now();
        let pods: Api<Pod> = Api::namespaced(self.deps.kube.clone(), &verdict.pod.namespace);
        let live = pods.get_opt(&verdict.pod.name).await?;
        // The gate first: a verdict it ends costs no further reads.
        let gate = gate::check(verdict, live.as_ref(), &self.config.policy, now);
        info!(?gate, action = verdict.action.kind_str(), confidence = verdict.confidence, "gate decided");
        let pod = match (gate, live) {
            (Err(refusal), _) => return refused(refusal),
            (Ok(()), Some(pod)) => pod,
            (Ok(()), None) => {
                let uid = verdict.pod.uid.clone();
                let (namespace, name) = (verdict.pod.namespace.clone(), verdict.pod.name.clone());
                return refused(gate::Stale::PodGone { namespace, name, uid }.into());
            }
        };
        let owner = self.resolve_owner(&pod).await?;
        // The bounds come from the cluster, never from the message: a rollback's target from the owner's
        // own revision history, read here by the remediator itself.
        let history = if plan::needs_history(&verdict.action, &owner) {
            Some(kubesent_common::revisions::history(&self.deps.kube, &verdict.pod.namespace, &pod).await?)
        } else {
            None
        };
        let previous_fix = self.previous_fix(plan::fix_marker(&pod, &owner)).await?;
        let room = if plan::needs_room(&verdict.action) {
            Some(self.room(&verdict.pod.namespace, &pod, &verdict.action).await)
        } else {
            None
        };
        // A rollback to a revision a finished rollout scaled down needs KubeSent's record that it served
        // healthy, read here by the remediator itself (never taken from the verdict's evidence).
        let served = match (&history, plan::needs_served(&verdict.action, history.as_ref())) {
            (Some(kubesent_common::revisions::History { owner: Some(workload), .. }), true) => {
                match self.served.read(&verdict.pod.namespace, workload).await {
                    Ok(record) => record,
                    Err(error) => {
                        warn!(%error, "the record of served revisions cannot be read; the rollback is only suggested");
                        None
                    }
                }
            }
            _ => None,
        };
        let seen = plan::Observed {
            live: Some(&pod),
            owner: &owner,
            history: history.as_ref(),
            previous_fix: previous_fix.as_ref(),
            room: room.as_ref(),
            served: served.as_ref(),
        };
        let settings = plan::Settings {
            policy: &self.config.policy,
            approval_required: self.config.approval_required,
            identity: &self.config.identity,
            known_good_after: self.config.known_good_after,
        };
        match plan::decide(verdict, seen, settings, now) {
            Ok(plan::Planned { intent, what, workload_key }) => {
                Ok(Prepared::Act(Box::new(Act { pod, owner, intent, what, workload_key })))
            }
            Err(refusal) => {
                if let refusal::Refusal::OutOfBounds(why) = &refusal {
                    warn!(%why, "the action is outside what the cluster vouches for; denied");
                }
                refused(refusal)
            }
        }
    }

    /// Continues an intent with its strategy, from whatever phase it is in.
    async fn drive(
        &self,
        mut intent: Intent,
        mut revision: u64,
        hand_off: HandOff,
    ) -> Result<Finished, StepError> {
        let turn = self.turns.take(&intent.incident).await;
        if turn.waited {
            // Another task drove it meanwhile: continue from where that left it.
            if let Some((current, current_revision)) = self.intents.get(&intent.incident).await? {
                (intent, revision) = (current, current_revision);
            }
        }
        match intent.phase {
            Phase::AwaitingApproval => return Ok(awaiting_approval(&intent)),
            Phase::Approved => {
                // The approval is a human's consent to a request, not a new authority: everything is
                // checked against the cluster as it is now, before anything changes.
                if let Some(refused) = Box::pin(self.recheck(&intent)).await? {
                    info!(result = refused.result.as_str(), detail = %refused.detail, "the approved remediation no longer holds");
                    return self.done(intent, revision, refused.result, refused.detail, None).await;
                }
                info!(approved_by = ?intent.approved_by, "carrying out an approved remediation");
                intent.phase = Phase::Pending;
                revision = self.advance(&mut intent, revision).await?;
            }
            _ => {}
        }
        Box::pin(self.execute(intent, revision, hand_off)).await
    }

    /// Checks an approved intent against the cluster again, with the verdict it carries: `Some` says how it
    /// ends instead (the target healed, changed or went away, or the action left its bounds).
    async fn recheck(&self, intent: &Intent) -> Result<Option<Finished>, StepError> {
        let Some(verdict) = intent.verdict.as_deref() else {
            return Ok(Some(Finished::plain(
                OutcomeResult::Denied,
                "the intent carries no verdict to check against the cluster again",
            )));
        };
        if verdict.incident != intent.incident || verdict.action != intent.action {
            return Ok(Some(Finished::plain(OutcomeResult::Denied, "the intent and its verdict disagree")));
        }
        Ok(match self.prepare(verdict).await? {
            Prepared::Finished(finished) => Some(finished),
            Prepared::Act(act)
                if act.intent.strategy == intent.strategy && act.intent.lock == intent.lock =>
            {
                None
            }
            Prepared::Act(act) => Some(Finished::plain(
                OutcomeResult::Stale,
                format!("{} changed since the approval; nothing was applied", act.what),
            )),
        })
    }

    /// What bounds a memory raise in `namespace`: its LimitRanges and ResourceQuotas, and every
    /// schedulable node's allocatable memory and what its pods request. What cannot be read (a cluster
    /// that does not let KubeSent list nodes, say) is left out and logged: the pre-flight then checks what
    /// it has, and admission stays the last word.
    async fn room(&self, namespace: &str, pod: &Pod, action: &Action) -> preflight::Room {
        use k8s_openapi::api::core::v1::{LimitRange, ResourceQuota};
        let kube = &self.deps.kube;
        let list = kube::api::ListParams::default();
        let limit_ranges = Api::<LimitRange>::namespaced(kube.clone(), namespace).list(&list).await;
        let quotas = Api::<ResourceQuota>::namespaced(kube.clone(), namespace).list(&list).await;
        // What the raised pod could need (read node by node until one has it free).
        let spec = pod.spec.clone().unwrap_or_default();
        let need = match action {
            Action::IncreaseMemory { container, to, .. } => preflight::raised_request(&spec, container, *to),
            _ => preflight::pod_request(&spec),
        };
        let nodes = nodes::room(kube, spec.node_name.as_deref(), need).await;
        let mut room = preflight::Room::default();
        match limit_ranges {
            Ok(list) => room.limit_ranges = list.items,
            Err(error) => {
                warn!(%error, namespace, "could not read the LimitRanges; the pre-flight goes without them")
            }
        }
        match quotas {
            Ok(list) => room.quotas = list.items,
            Err(error) => {
                warn!(%error, namespace, "could not read the ResourceQuotas; the pre-flight goes without them")
            }
        }
        match nodes {
            Ok(nodes) => room.nodes = nodes,
            Err(error) => warn!(%error, "could not read the nodes' room; the pre-flight goes without it"),
        }
        room.autoscalers = self.vertical_autoscalers(namespace).await;
        room
    }

    /// The namespace's VerticalPodAutoscalers; none where the VPA is not installed (the API answers 404).
    async fn vertical_autoscalers(&self, namespace: &str) -> Vec<preflight::VerticalAutoscaler> {
        use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
        let gvk = GroupVersionKind::gvk("autoscaling.k8s.io", "v1", "VerticalPodAutoscaler");
        let resource = ApiResource::from_gvk_with_plural(&gvk, "verticalpodautoscalers");
        let api = Api::<DynamicObject>::namespaced_with(self.deps.kube.clone(), namespace, &resource);
        match api.list(&kube::api::ListParams::default()).await {
            Ok(list) => list
                .items
                .iter()
                .filter_map(|object| serde_json::to_value(object).ok())
                .filter_map(|value| preflight::VerticalAutoscaler::from_json(&value))
                .collect(),
            Err(kube::Error::Api(status)) if status.code == 404 => Vec::new(),
            Err(error) => {
                warn!(%error, namespace, "could not read the VerticalPodAutoscalers; the pre-flight goes without them");
                Vec::new()
            }
        }
    }

    /// The controlling workload of `pod`, resolving a ReplicaSet to its Deployment.
    async fn resolve_owner(&self, pod: &Pod) -> Result<Owner, StepError> {
        use kubesent_common::owner::{self, Resolved};
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        Ok(match owner::resolve(&self.deps.kube, &namespace, &pod.metadata).await? {
            Resolved::Bare => Owner::Bare,
            Resolved::Deployment { deployment, .. } => Owner::Workload(Workload::Deployment(deployment)),
            Resolved::StatefulSet(set) => Owner::Workload(Workload::StatefulSet(set)),
            Resolved::Other { kind, name } => Owner::Unsupported(kind, name),
            Resolved::Missing { kind, name } => Owner::Missing(kind, name),
        })
    }

    /// The intent of the fix KubeSent made before under `marker`, if it still has it.
    async fn previous_fix(
        &self,
        marker: Option<proto::IncidentId>,
    ) -> Result<Option<plan::PreviousFix>, StepError> {
        let Some(incident) = marker else { return Ok(None) };
        Ok(self.intents.get(&incident).await?.map(|(intent, _)| plan::PreviousFix {
            incident,
            result: intent.result,
            action: intent.action,
        }))
    }

    /// Stores the next phase of an intent.
    async fn advance(&self, intent: &mut Intent, revision: u64) -> Result<u64, StepError> {
        intent.actor = self.config.identity.clone();
        intent.updated_at = jiff::Timestamp::now();
        let applied_now = intent.phase == Phase::Applied && intent.applied_at.is_none();
        if applied_now {
            intent.applied_at = Some(intent.updated_at);
        }
        let revision = self.intents.advance(intent, revision).await?;
        // Observed once the intent says so: a write that failed is tried again and observed then.
        if applied_now && let Some(verdict) = intent.verdict.as_deref() {
            kubesent_common::metrics::observe_since(
                &self.deps.metrics.verdict_to_fix,
                verdict.failure.kind,
                verdict.diagnosed_at,
                intent.updated_at,
            );
        }
        Ok(revision)
    }

    async fn record(&self, verdict: &Verdict, finished: Finished) -> Result<(), StepError> {
        self.record_for(&verdict.incident, &verdict.pod, &verdict.action, Some(verdict), finished).await
    }

    /// Publishes the outcome of `incident`. Each incident has one final outcome (its message id is
    /// `outcome-<incident>`); a remediation waiting for approval is announced under `pending-<incident>`.
    /// A shadow or suggested decision is followed up from here on (see [`followup`]).
    async fn record_for(
        &self,
        incident: &proto::IncidentId,
        pod: &proto::PodRef,
        action: &Action,
        verdict: Option<&Verdict>,
        finished: Finished,
    ) -> Result<(), StepError> {
        if finished.recorded {
            return Ok(());
        }
        let autonomy = match finished.autonomy {
            Some(autonomy) => Some(autonomy),
            None => self.derived_autonomy(action, verdict, &finished).await,
        };
        let diagnosis = verdict.map(proto::Diagnosis::of);
        if finished.result == OutcomeResult::Suggested
            && let (Some(autonomy), Some(diagnosis)) = (autonomy, diagnosis.as_ref())
        {
            // Written before the outcome, so no follow-up is lost to a crash in between.
            let window = jiff::SignedDuration::try_from(self.config.earned.followup_window)
                .unwrap_or(jiff::SignedDuration::from_hours(24));
            let now = jiff::Timestamp::now();
            let following = proto::autonomy::Following {
                schema: proto::SCHEMA_VERSION,
                incident: incident.clone(),
                pod: pod.clone(),
                workload: diagnosis.workload.clone(),
                action: action.clone(),
                autonomy,
                diagnosis: Some(diagnosis.clone()),
                decided_at: now,
                until: now.checked_add(window).unwrap_or(now),
                seen: None,
                healthy_since: None,
            };
            self.followups.start(&following).await?;
        }
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
            decided_by: finished.decided_by,
            trace_id: trace::current_trace_id(),
            diagnosis,
            autonomy,
            followup: None,
            at: jiff::Timestamp::now(),
        };
        let kind = if outcome.result == OutcomeResult::AwaitingApproval { "pending" } else { "outcome" };
        self.publish_outcome(&outcome, &format!("{kind}-{incident}")).await?;
        Ok(())
    }

    /// The class and mode of a decision recorded without them: a remediation's (approved by a human, or
    /// automatic), or a suggestion made before its mode was resolved (GitOps, a human's earlier revert),
    /// resolved now. `None` for outcomes that decide nothing (denied, stale, diagnosis only).
    async fn derived_autonomy(
        &self,
        action: &Action,
        verdict: Option<&Verdict>,
        finished: &Finished,
    ) -> Option<proto::autonomy::Autonomy> {
        use autonomy::Mode;
        let bare = verdict.is_some_and(|v| v.key.workload.kind == proto::WorkloadKind::Pod);
        let strategy =
            finished.strategy.unwrap_or(if bare { Strategy::InPlaceResize } else { Strategy::OwnerPatch });
        let class = autonomy::ActionClass::of(action, strategy)?;
        let mode = match finished.result {
            OutcomeResult::AwaitingApproval => Mode::Approve,
            _ if finished.decided_by.is_some() => Mode::Approve,
            OutcomeResult::Suggested => {
                let verdict = verdict?;
                match self.mode_of(class, &verdict.pod.namespace, &verdict.source).await {
                    Ok(resolved) => resolved.mode,
                    Err(error) => {
                        warn!(%error, "resolving the mode of a suggestion failed; recorded as auto");
                        Mode::Auto
                    }
                }
            }
            OutcomeResult::Denied | OutcomeResult::Stale | OutcomeResult::DiagnosisOnly => return None,
            _ if finished.strategy.is_none() => return None,
            _ => Mode::Auto,
        };
        Some(proto::autonomy::Autonomy { class, mode })
    }

    /// Publishes `outcome` under `message_id` and, unless JetStream already stored it (a repeat after a
    /// lost acknowledgement or by an earlier leader), counts it: metrics, and the class's record. Returns
    /// whether it was new.
    pub(crate) async fn publish_outcome(
        &self,
        outcome: &Outcome,
        message_id: &str,
    ) -> Result<bool, StepError> {
        let (incident, pod) = (&outcome.incident, &outcome.pod);
        let subject = proto::outcome_subject(&pod.namespace, outcome.result)?;
        let span =
            trace::producer_span(false, &subject, message_id, incident.as_str(), &pod.namespace, &pod.name);
        let published = nats::publish(
            &self.deps.js,
            subject,
            message_id,
            proto::encode(outcome),
            &[(proto::headers::INCIDENT, incident.as_str())],
        )
        .instrument(span)
        .await?;
        if published.duplicate {
            // Recorded before (by this replica before a failed acknowledgement, or by an earlier
            // leader): the audit log keeps the first; nothing is counted or observed again.
            info!(result = outcome.result.as_str(), "outcome already recorded; not counted again");
            return Ok(false);
        }
        if let Some(diagnosis) =
            outcome.diagnosis.as_ref().filter(|_| outcome.result == OutcomeResult::Healed)
        {
            let failed =
                diagnosis.failure.failed_at.or(diagnosis.detected_at).unwrap_or(diagnosis.diagnosed_at);
            kubesent_common::metrics::observe_since(
                &self.deps.metrics.failure_to_healed,
                diagnosis.failure.kind,
                failed,
                outcome.at,
            );
        }
        self.deps.metrics.outcomes.get_or_create(&ResultLabel { result: outcome.result.as_str() }).inc();
        info!(result = outcome.result.as_str(), detail = %outcome.detail, "outcome recorded");
        self.count_in_record(outcome).await;
        Ok(true)
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
        decided_by: None,
        recorded: false,
        verifying: false,
        autonomy: None,
    }
}

/// Counts one in a gauge until dropped (however the work ends: done, failed or dropped).
struct GaugeGuard(Gauge);

impl GaugeGuard {
    fn inc(gauge: Gauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// A one-phrase description of an action for events.
fn describe(action: &Action) -> String {
    match action {
        Action::IncreaseMemory { container, from, to } => {
            format!("memory limit of {container}: {from} -> {to}")
        }
        Action::RollbackImage { container, from, to } => format!("image of {container}: {from} -> {to}"),
        Action::RollbackRevision { from, to, .. } => format!("template: {from} -> {to}"),
        Action::PauseRollout { revision, .. } => format!("rollout paused at {revision}"),
        Action::None => String::new(),
    }
}

#[cfg(test)]
mod policy_tests {
    use super::*;

    #[test]
    fn a_changed_valid_policy_is_taken_and_a_broken_one_leaves_the_policy_in_force() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("policy.yaml");
        std::fs::write(&path, "default: auto\n").expect("write");
        let policy = std::sync::RwLock::new(read_policy(&path).expect("valid"));
        let mut last = std::fs::read_to_string(&path).expect("read");
        assert!(!reload_once(&path, &mut last, &policy), "unchanged");
        std::fs::write(&path, "default: shadow\n").expect("write");
        assert!(reload_once(&path, &mut last, &policy), "changed");
        assert_eq!(policy.read().expect("lock").default, autonomy::Mode::Shadow);
        std::fs::write(&path, "default: shadow\nclasses:\n  memory-lower: auto\n").expect("write");
        assert!(!reload_once(&path, &mut last, &policy), "invalid");
        assert_eq!(policy.read().expect("lock").default, autonomy::Mode::Shadow, "the policy in force kept");
        let error = read_policy(&path).expect_err("invalid at start").to_string();
        assert!(error.contains("policy.yaml") && error.contains("memory-lower"), "{error}");
    }
}
