//! The diagnoser worker pool: every replica pulls failure jobs from the shared durable consumer
//! `diagnosers`, examines the live pod, applies the deterministic rules and publishes a `Verdict`.
//!
//! Jobs are acknowledged only after the verdict is stored (its `Nats-Msg-Id` is derived from the
//! incident, so a redelivered job republishes nothing new). Undecodable jobs and jobs that keep failing
//! go to `KUBESENT_DLQ` with the reason; a job whose pod is gone gets a `stale` verdict.

pub mod rules;

use std::{sync::Arc, time::Duration};

use async_nats::jetstream::{self, AckKind};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kubesent_common::{
    nats::{self, ProgressAcker, PullOptions, Topology},
    trace,
};
use kubesent_proto::{self as proto, Action, FailureJob, Verdict, VerdictSource, VerdictStatus};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, field, info, info_span, warn};

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
}

impl Default for DiagnoserConfig {
    fn default() -> Self {
        Self {
            topology: Topology::default(),
            pull: PullOptions::default(),
            memory: MemoryPolicy::default(),
            progress_interval: Duration::from_secs(10),
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

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

/// Diagnoser metrics.
#[derive(Debug, Default)]
pub struct DiagnoserMetrics {
    jobs: Family<OutcomeLabel, Counter>,
}

impl DiagnoserMetrics {
    /// Creates the metrics and registers them under `kubesent_diagnoser_`.
    pub fn register(registry: &mut Registry) -> Arc<Self> {
        let metrics = Self::default();
        let r = registry.sub_registry_with_prefix("kubesent_diagnoser");
        r.register("jobs", "Jobs handled, by outcome", metrics.jobs.clone());
        Arc::new(metrics)
    }

    fn count(&self, outcome: &'static str) {
        self.jobs.get_or_create(&OutcomeLabel { outcome }).inc();
    }

    /// Jobs handled with `outcome` (`diagnosed`, `stale`, `dead_lettered`, `retried`).
    pub fn jobs(&self, outcome: &'static str) -> u64 {
        self.jobs.get_or_create(&OutcomeLabel { outcome }).get()
    }
}

/// Runs a diagnoser replica until `shutdown`.
pub async fn run(
    config: DiagnoserConfig,
    deps: DiagnoserDeps,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let consumer =
        nats::ensure_consumer(&deps.js, proto::JOBS_STREAM, config.topology.diagnosers_consumer()).await?;
    let (_open, gate) = watch::channel(true);
    let worker = Arc::new(Worker { config: config.clone(), deps });
    info!(concurrency = config.pull.concurrency, "diagnoser pulling jobs");
    nats::pull_loop(consumer, config.pull.clone(), gate, shutdown, move |message| {
        let worker = worker.clone();
        async move { worker.handle(message).await }
    })
    .await;
    Ok(())
}

struct Worker {
    config: DiagnoserConfig,
    deps: DiagnoserDeps,
}

impl Worker {
    async fn handle(&self, message: jetstream::Message) {
        let span =
            info_span!("diagnose", incident = field::Empty, namespace = field::Empty, pod = field::Empty);
        trace::continue_trace(&span, message.headers.as_ref());
        self.handle_in_span(message, &span).instrument(span.clone()).await;
    }

    async fn handle_in_span(&self, message: jetstream::Message, span: &tracing::Span) {
        let deliveries = message.info().map(|i| i.delivered).unwrap_or(1);
        let job: FailureJob = match proto::decode(&message.payload) {
            Ok(job) => job,
            Err(error) => {
                warn!(%error, subject = %message.subject, "undecodable job; dead-lettering it");
                self.dead_letter(&message, &format!("undecodable job: {error}")).await;
                return;
            }
        };
        span.record("incident", job.incident.as_str());
        span.record("namespace", job.pod.namespace.as_str());
        span.record("pod", job.pod.name.as_str());
        let _progress = ProgressAcker::start(&message, self.config.progress_interval);
        match self.diagnose_and_publish(&job).await {
            Ok(status) => {
                if let Err(error) = message.double_ack().await {
                    warn!(%error, "acknowledging the job failed; it will be redelivered and deduplicated");
                }
                self.deps.metrics.count(status);
            }
            Err(error) if deliveries >= self.config.topology.max_deliver => {
                warn!(%error, deliveries, "job failed on its last delivery; dead-lettering it");
                self.dead_letter(&message, &format!("failed after {deliveries} deliveries: {error}")).await;
            }
            Err(error) => {
                let delay =
                    Duration::from_secs(2u64.saturating_pow(u32::try_from(deliveries).unwrap_or(8).min(8)));
                warn!(%error, deliveries, retry_in = ?delay, "diagnosis failed; the job will be redelivered");
                self.deps.metrics.count("retried");
                let _ = message.ack_with(AckKind::Nak(Some(delay))).await;
            }
        }
    }

    async fn dead_letter(&self, message: &jetstream::Message, reason: &str) {
        match nats::dead_letter(&self.deps.js, "diagnoser", message, reason).await {
            Ok(()) => self.deps.metrics.count("dead_lettered"),
            Err(error) => warn!(%error, "dead-lettering failed; the job stays on the stream"),
        }
    }

    /// Diagnoses `job` and publishes the verdict; returns the metric outcome.
    async fn diagnose_and_publish(&self, job: &FailureJob) -> Result<&'static str, JobError> {
        let pods: Api<Pod> = Api::namespaced(self.deps.kube.clone(), &job.pod.namespace);
        let live = pods.get_opt(&job.pod.name).await?;
        let verdict = match live.filter(|p| p.metadata.uid.as_deref() == Some(job.pod.uid.as_str())) {
            None => stale_verdict(job),
            Some(pod) => {
                let found = rules::diagnose(job, &pod, &self.config.memory);
                verdict(
                    job,
                    VerdictStatus::Diagnosed,
                    found.root_cause,
                    found.action,
                    found.confidence,
                    VerdictSource::Rules { rule: found.rule.to_owned() },
                )
            }
        };
        let subject = proto::verdict_subject(&job.pod.namespace, &verdict.action)?;
        let published = nats::publish(
            &self.deps.js,
            subject,
            &format!("verdict-{}", job.incident),
            proto::encode(&verdict),
            &[(proto::headers::INCIDENT, job.incident.as_str())],
        )
        .await?;
        info!(
            action = verdict.action.kind_str(),
            confidence = verdict.confidence,
            status = ?verdict.status,
            duplicate = published.duplicate,
            root_cause = %verdict.root_cause,
            "verdict published"
        );
        Ok(match verdict.status {
            VerdictStatus::Diagnosed => "diagnosed",
            VerdictStatus::Stale => "stale",
        })
    }
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
        root_cause,
        action,
        confidence,
        source,
        diagnosed_at: jiff::Timestamp::now(),
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
