//! The diagnoser worker pool: every replica pulls failure jobs from the shared durable consumer
//! `diagnosers`, gathers the evidence (spec, logs, events, owners, previous revision), redacts it,
//! applies the deterministic rules, asks the model chain when the rules are unsure, and publishes a
//! `Verdict`.
//!
//! Jobs are acknowledged only after the verdict is stored (its `Nats-Msg-Id` is derived from the
//! incident, so a redelivered job republishes nothing new). Undecodable jobs and jobs that keep failing
//! go to `KUBESENT_DLQ` with the reason; a job whose pod is gone gets a `stale` verdict. When no model
//! can answer, the job is handed back with a delay and the worker stops pulling until a model is usable.

pub mod args;
pub mod evidence;
pub mod gather;
pub mod llm;
pub mod logread;
pub mod ratelimit;
pub mod redact;
pub mod rules;

use std::{sync::Arc, time::Duration};

use async_nats::jetstream;
use kubesent_common::{
    admin::Health,
    nats::{
        self, ProgressAcker, PullOptions, Role, Topology,
        disposition::{self, Disposition, Handled},
    },
    trace,
};
use kubesent_proto::{self as proto, Action, FailureJob, Verdict, VerdictSource, VerdictStatus};

use crate::{
    evidence::Evidence,
    llm::chain::{ChainError, ModelChain},
    redact::Redactor,
};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, info, info_span, warn};

pub use rules::MemoryPolicy;

/// Settings of a diagnoser replica.
#[derive(Debug, Clone)]
pub struct DiagnoserConfig {
    /// Stream and consumer sizing (shared with the other services).
    pub topology: Topology,
    /// Concurrency and fetch timing.
    pub pull: PullOptions,
    /// Bounds of the OOM memory formula.
    pub memory: MemoryPolicy,
    /// Interval of progress acks while a job is worked on.
    pub progress_interval: Duration,
    /// How long a revision must have served healthy (by the detector's record) before a rollback to it
    /// after its rollout finished is proposed.
    pub known_good_after: Duration,
}

impl Default for DiagnoserConfig {
    fn default() -> Self {
        Self {
            topology: Topology::default(),
            pull: PullOptions::default(),
            memory: MemoryPolicy::default(),
            progress_interval: Duration::from_secs(10),
            known_good_after: Duration::from_secs(600),
        }
    }
}

/// The diagnoser's clients and metrics.
pub struct DiagnoserDeps {
    /// Kubernetes client (read-only use).
    pub kube: kube::Client,
    /// JetStream context.
    pub js: jetstream::Context,
    /// Metrics.
    pub metrics: Arc<DiagnoserMetrics>,
    /// The model fallback chain; `None` diagnoses with rules only.
    pub models: Option<Arc<ModelChain>>,
    /// Readiness, set once the streams and the jobs consumer are set up.
    pub health: Arc<Health>,
}

/// What a diagnosis came to.
#[derive(Debug, Clone, PartialEq)]
pub enum Diagnosis {
    /// A verdict to publish.
    Verdict(Box<Verdict>),
    /// The rules were unsure and no model can answer before `until`: hand the job back.
    Deferred {
        /// When the first model is usable again.
        until: tokio::time::Instant,
        /// The rules' verdict, for a job that cannot wait any longer.
        fallback: Box<Verdict>,
    },
}

/// Turns a job and its evidence into a verdict: rules first, the model chain when they are unsure.
#[derive(Debug, Clone)]
pub struct Diagnoser {
    /// Bounds of the memory formula (also applied to model answers).
    pub memory: MemoryPolicy,
    /// The model chain, if configured.
    pub models: Option<Arc<ModelChain>>,
}

impl Diagnoser {
    /// Diagnoses `job` from its evidence.
    pub async fn diagnose(&self, job: &FailureJob, evidence: &Evidence) -> Diagnosis {
        let found = rules::diagnose(job, evidence, &self.memory);
        let mut rules_verdict = verdict(
            job,
            VerdictStatus::Diagnosed,
            found.root_cause.clone(),
            found.action.clone(),
            found.confidence,
            VerdictSource::Rules { rule: found.rule.to_owned() },
        );
        rules_verdict.caused_by = found.caused_by.clone();
        let Some(models) = self.models.as_ref().filter(|_| found.confidence < rules::SURE) else {
            return Diagnosis::Verdict(Box::new(rules_verdict));
        };
        let prompt = llm::prompt(job, evidence, &found);
        let answer = models
            .ask(&prompt, |reply| {
                llm::parse_answer(&reply.text).map(|a| llm::map_answer(&a, job, evidence, &self.memory))
            })
            .await;
        match answer {
            Ok(answered) => {
                let mapped = answered.value;
                let model = answered.model_version.unwrap_or(answered.model);
                match settle(&found, &mapped) {
                    Settled::Model => Diagnosis::Verdict(Box::new(verdict(
                        job,
                        VerdictStatus::Diagnosed,
                        mapped.root_cause,
                        mapped.action,
                        mapped.confidence,
                        VerdictSource::Model { model },
                    ))),
                    Settled::Rules { why } => {
                        // The rules' diagnosis stands; the model's view goes beside it.
                        let mut stands = rules_verdict;
                        stands.evidence = Some(format!(
                            "model {} said (confidence {}, not taken: {why}): {}",
                            model_name(&model),
                            mapped.confidence,
                            mapped.root_cause.trim()
                        ));
                        Diagnosis::Verdict(Box::new(stands))
                    }
                }
            }
            Err(ChainError::Unusable(why)) => {
                let mut fallback = rules_verdict;
                fallback.root_cause = format!("{} (model answer unusable: {why})", fallback.root_cause);
                Diagnosis::Verdict(Box::new(fallback))
            }
            Err(ChainError::Unavailable { until }) => {
                Diagnosis::Deferred { until, fallback: Box::new(rules_verdict) }
            }
        }
    }
}

/// Which diagnosis stands when the rules were unsure and a model answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// The model's answer replaces the rules' verdict.
    Model,
    /// The rules' verdict stands; the model's answer is only noted.
    Rules {
        /// Why the answer was not taken.
        why: &'static str,
    },
}

/// Letters and digits a model's root cause needs to say anything.
const MIN_ROOT_CAUSE_CHARS: usize = 12;

/// A model answer never makes the verdict worse: it replaces the rules' verdict only when it says
/// something (a root cause of some substance) and is at least as confident as the rules were.
pub fn settle(rules: &rules::RuleVerdict, model: &llm::Mapped) -> Settled {
    let substance = model.root_cause.chars().filter(|c| c.is_alphanumeric()).count();
    if substance < MIN_ROOT_CAUSE_CHARS {
        Settled::Rules { why: "its root cause says nothing" }
    } else if model.confidence < rules.confidence {
        Settled::Rules { why: "it is less confident than the rules" }
    } else {
        Settled::Model
    }
}

/// Errors that stop the diagnoser.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Shared runtime failure.
    #[error(transparent)]
    Common(#[from] kubesent_common::Error),
}

/// Why one job could not be diagnosed this time (it will be retried).
#[derive(Debug, thiserror::Error)]
enum JobError {
    #[error("reading the pod: {0}")]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Common(#[from] kubesent_common::Error),
    #[error("verdict subject: {0}")]
    Subject(#[from] proto::InvalidNamespace),
}

kubesent_common::label_values! {
    /// How the diagnoser finished with a job.
    pub enum JobOutcome {
        /// A verdict was published.
        Diagnosed => "diagnosed",
        /// The target was gone: a stale verdict was published.
        Stale => "stale",
        /// No model could answer yet: handed back for later.
        Deferred => "deferred",
        /// Diagnosing failed: the job comes back.
        Retried => "retried",
        /// Failed on its last delivery, or invalid: dead-lettered.
        DeadLettered => "dead_lettered",
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: JobOutcome,
}

/// Diagnoser metrics.
#[derive(Debug)]
pub struct DiagnoserMetrics {
    jobs: Family<OutcomeLabel, Counter>,
    rejected: Family<ReasonLabel, Counter>,
    job_to_verdict: kubesent_common::metrics::SliHistograms,
}

impl Default for DiagnoserMetrics {
    fn default() -> Self {
        Self {
            jobs: Family::default(),
            rejected: Family::default(),
            job_to_verdict: kubesent_common::metrics::sli_histograms(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

impl DiagnoserMetrics {
    /// Creates the metrics and registers them under `kubesent_diagnoser_`.
    pub fn register(registry: &mut Registry) -> Arc<Self> {
        let metrics = Self::default();
        let r = registry.sub_registry_with_prefix("kubesent_diagnoser");
        r.register("jobs", "Jobs handled, by outcome", metrics.jobs.clone());
        r.register(
            "job_to_verdict_seconds",
            "From the detector seeing the failure to its verdict published, by failure kind",
            metrics.job_to_verdict.clone(),
        );
        r.register(
            "rejected_messages",
            "Jobs refused as invalid (oversized, unknown schema, malformed, out of bounds, wrong subject) and dead-lettered",
            metrics.rejected.clone(),
        );
        for reason in proto::Invalid::LABELS {
            let _ = metrics.rejected.get_or_create(&ReasonLabel { reason });
        }
        // Every series exists from the start, at zero, so rates and alerts see it before the first event.
        for outcome in JobOutcome::ALL {
            let _ = metrics.jobs.get_or_create(&OutcomeLabel { outcome: *outcome });
        }
        Arc::new(metrics)
    }

    fn count(&self, outcome: JobOutcome) {
        self.jobs.get_or_create(&OutcomeLabel { outcome }).inc();
    }

    /// Jobs handled with `outcome`.
    pub fn jobs(&self, outcome: JobOutcome) -> u64 {
        self.jobs.get_or_create(&OutcomeLabel { outcome }).get()
    }

    /// Jobs refused as invalid, for `reason` (a [`proto::Invalid::label`]).
    pub fn rejected(&self, reason: &'static str) -> u64 {
        self.rejected.get_or_create(&ReasonLabel { reason }).get()
    }
}

/// Runs a diagnoser replica until `shutdown`.
pub async fn run(
    config: DiagnoserConfig,
    deps: DiagnoserDeps,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    // Waits for JetStream and for the jobs stream (the detector creates it) instead of exiting.
    let setup = async {
        nats::prepare(&deps.js, &config.topology, Role::Diagnoser, &shutdown).await?;
        let consumer = config.topology.diagnosers_consumer();
        nats::open_consumer(&deps.js, proto::JOBS_STREAM, consumer, &shutdown).await
    };
    let consumer = match setup.await {
        Err(_) if shutdown.is_cancelled() => return Ok(()),
        result => result?,
    };
    deps.health.set_ready(true);
    // Without models the gate never closes; with them, it follows the chain's availability.
    let (_open, mut gate) = watch::channel(true);
    if let Some(models) = &deps.models {
        gate = models.usable();
    }
    let diagnoser = Diagnoser { memory: config.memory, models: deps.models.clone() };
    let served = kubesent_common::served::ServedStore::new(deps.js.clone());
    let worker = Arc::new(Worker { config: config.clone(), deps, diagnoser, redactor: Redactor, served });
    info!(concurrency = config.pull.concurrency, "diagnoser pulling jobs");
    let client = worker.deps.js.client();
    nats::pull_loop(consumer, config.pull.clone(), gate, shutdown, move |message| {
        let worker = worker.clone();
        async move { worker.handle(message).await }
    })
    .await;
    // Acks and publishes still in the client's buffer reach the server before the process ends.
    let _ = client.flush().await;
    Ok(())
}

struct Worker {
    config: DiagnoserConfig,
    deps: DiagnoserDeps,
    diagnoser: Diagnoser,
    redactor: Redactor,
    served: kubesent_common::served::ServedStore,
}

impl Worker {
    async fn handle(&self, message: jetstream::Message) {
        let span = trace::consumer_span(
            "failure job",
            proto::DIAGNOSERS_CONSUMER,
            message.subject.as_str(),
            message.headers.as_ref(),
        );
        self.handle_in_span(message, &span).instrument(span.clone()).await;
    }

    async fn handle_in_span(&self, message: jetstream::Message, span: &tracing::Span) {
        let deliveries = message.info().map(|i| i.delivered).unwrap_or(1).max(1).unsigned_abs();
        let max_deliveries = self.config.topology.max_deliver.max(1).unsigned_abs();
        let handled = match proto::validate::receive_job(message.subject.as_str(), &message.payload) {
            Err(error) => {
                warn!(%error, subject = %message.subject, "invalid job; dead-lettering it");
                self.deps.metrics.rejected.get_or_create(&ReasonLabel { reason: error.label() }).inc();
                Handled::Invalid(format!("invalid job: {error}"))
            }
            Ok(job) => {
                trace::record_target(span, job.incident.as_str(), &job.pod.namespace, &job.pod.name);
                let _progress = ProgressAcker::start(&message, self.config.progress_interval);
                match self.diagnose_and_publish(&job, deliveries >= max_deliveries).await {
                    Ok(Diagnosed::Published(status)) => {
                        self.deps.metrics.count(status);
                        Handled::Done
                    }
                    Ok(Diagnosed::Deferred(delay)) => {
                        info!(retry_in = ?delay, "no model can answer now; handing the job back");
                        self.deps.metrics.count(JobOutcome::Deferred);
                        Handled::Deferred(delay)
                    }
                    Err(error) => Handled::Failed(error.to_string()),
                }
            }
        };
        let failed = matches!(handled, Handled::Failed(_));
        let disposition = disposition::dispose(handled, deliveries, max_deliveries);
        match &disposition {
            Disposition::DeadLetter(reason) => warn!(%reason, deliveries, "dead-lettering the job"),
            Disposition::RetryAfter(delay) if failed => {
                warn!(deliveries, retry_in = ?delay, "diagnosis failed; the job will be redelivered");
                self.deps.metrics.count(JobOutcome::Retried);
            }
            Disposition::Ack | Disposition::RetryAfter(_) => {}
        }
        match disposition::settle(&self.deps.js, "diagnoser", &message, &disposition).await {
            Ok(()) if matches!(disposition, Disposition::DeadLetter(_)) => {
                self.deps.metrics.count(JobOutcome::DeadLettered);
            }
            Ok(()) => {}
            Err(error) => {
                warn!(%error, ?disposition, "settling the job failed; the server delivers it again after its ack wait")
            }
        }
    }

    /// Diagnoses `job` and publishes the verdict; returns the metric outcome, or the delay after which
    /// the job should come back because no model could answer.
    async fn diagnose_and_publish(
        &self,
        job: &FailureJob,
        last_delivery: bool,
    ) -> Result<Diagnosed, JobError> {
        let known = gather::KnownGood { store: &self.served, after: self.config.known_good_after };
        let gathered = gather::gather(&self.deps.kube, job, &self.redactor, last_delivery, Some(&known))
            .instrument(info_span!("evidence"))
            .await?;
        let summary = gathered.as_ref().map(|(_, evidence)| evidence.summary());
        let verdict = match gathered {
            None => stale_verdict(job),
            Some((_pod, evidence)) => match self.diagnoser.diagnose(job, &evidence).await {
                Diagnosis::Verdict(verdict) => *verdict,
                // A job that cannot be handed back again gets the rules' verdict rather than a dead letter.
                Diagnosis::Deferred { fallback, .. } if last_delivery => *fallback,
                Diagnosis::Deferred { until, .. } => {
                    return Ok(Diagnosed::Deferred(
                        until.saturating_duration_since(tokio::time::Instant::now()),
                    ));
                }
            },
        };
        let mut verdict = publishable(verdict);
        // What the diagnosis was made from, and a model's answer that was not taken.
        let summary = match (summary, verdict.evidence.take()) {
            (Some(summary), Some(model)) => Some(format!("{summary}; {model}")),
            (summary, model) => summary.or(model),
        };
        verdict.evidence = summary.map(|s| proto::validate::clip_text_to(&s, 1024));
        let subject = proto::verdict_subject(&job.pod.namespace, &verdict.action)?;
        let message_id = format!("verdict-{}", job.incident);
        let span = trace::producer_span(
            false,
            &subject,
            &message_id,
            job.incident.as_str(),
            &job.pod.namespace,
            &job.pod.name,
        );
        let published = nats::publish(
            &self.deps.js,
            subject,
            &message_id,
            proto::encode(&verdict),
            &[(proto::headers::INCIDENT, job.incident.as_str())],
        )
        .instrument(span)
        .await?;
        if !published.duplicate {
            kubesent_common::metrics::observe_since(
                &self.deps.metrics.job_to_verdict,
                job.failure.kind,
                job.detected_at,
                jiff::Timestamp::now(),
            );
        }
        info!(
            action = verdict.action.kind_str(),
            confidence = verdict.confidence,
            status = ?verdict.status,
            source = ?verdict.source,
            duplicate = published.duplicate,
            root_cause = %verdict.root_cause,
            "verdict published"
        );
        Ok(Diagnosed::Published(match verdict.status {
            VerdictStatus::Diagnosed => JobOutcome::Diagnosed,
            VerdictStatus::Stale => JobOutcome::Stale,
        }))
    }
}

/// How a job was handled.
enum Diagnosed {
    /// A verdict was published (the metric outcome).
    Published(JobOutcome),
    /// No model could answer: hand the job back after this delay.
    Deferred(Duration),
}

fn verdict(
    job: &FailureJob,
    status: VerdictStatus,
    root_cause: String,
    action: Action,
    confidence: u8,
    source: VerdictSource,
) -> Verdict {
    Verdict {
        schema: proto::SCHEMA_VERSION,
        incident: job.incident.clone(),
        key: job.key.clone(),
        pod: job.pod.clone(),
        failure: job.failure.clone(),
        status,
        root_cause: proto::validate::clip_text(&root_cause),
        action,
        confidence: confidence.min(100),
        source: match source {
            VerdictSource::Model { model } => VerdictSource::Model { model: model_name(&model) },
            other => other,
        },
        diagnosed_at: jiff::Timestamp::now(),
        detected_at: Some(job.detected_at),
        evidence: None,
        caused_by: None,
    }
}

/// A model name as a verdict may carry it (the API's version string is outside our control).
fn model_name(raw: &str) -> String {
    let name: String = raw.chars().filter(char::is_ascii_graphic).take(256).collect();
    if name.is_empty() { "unnamed-model".into() } else { name }
}

/// `verdict` as the remediator will accept it: one that fails validation (a model's answer that slipped
/// past the mapping) goes out as a diagnosis with the reason instead of an action.
fn publishable(verdict: Verdict) -> Verdict {
    use proto::Validate as _;
    match verdict.validate() {
        Ok(()) => verdict,
        Err(error) => {
            warn!(%error, "the verdict is invalid; publishing it as a diagnosis only");
            let root_cause = format!("{} (no action: the verdict was invalid: {error})", verdict.root_cause);
            Verdict { root_cause: proto::validate::clip_text(&root_cause), action: Action::None, ..verdict }
        }
    }
}

/// The verdict for a job whose pod was deleted or replaced before it could be examined.
pub fn stale_verdict(job: &FailureJob) -> Verdict {
    verdict(
        job,
        VerdictStatus::Stale,
        format!(
            "pod {}/{} (uid {}) is gone: deleted or replaced before diagnosis",
            job.pod.namespace, job.pod.name, job.pod.uid
        ),
        Action::None,
        0,
        VerdictSource::None,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_model_answer_replaces_the_rules_only_when_it_says_something_and_is_at_least_as_confident() {
        let rules = rules::RuleVerdict {
            rule: "crash-exit-code",
            root_cause: "container app crash-loops with exit code 1".into(),
            action: Action::None,
            confidence: 60,
            caused_by: None,
        };
        let said = "the database password in secret db-credentials was rotated";
        let cases = [
            ("", 99, Settled::Rules { why: "its root cause says nothing" }),
            ("   \n ", 99, Settled::Rules { why: "its root cause says nothing" }),
            ("unknown.", 99, Settled::Rules { why: "its root cause says nothing" }),
            (said, 10, Settled::Rules { why: "it is less confident than the rules" }),
            (said, 59, Settled::Rules { why: "it is less confident than the rules" }),
            (said, 60, Settled::Model),
            (said, 95, Settled::Model),
            ("", 10, Settled::Rules { why: "its root cause says nothing" }),
        ];
        for (root_cause, confidence, expected) in cases {
            let model = llm::Mapped { root_cause: root_cause.into(), action: Action::None, confidence };
            assert_eq!(settle(&rules, &model), expected, "{root_cause:?} at {confidence}");
        }
    }
}
