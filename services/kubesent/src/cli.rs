//! Command-line interface: one binary, one subcommand per role.

use std::{sync::Arc, time::Duration};

use anyhow::Context as _;
use async_nats::jetstream;
use clap::{Args, Parser, Subcommand};
use kubesent_common::{
    CommonArgs, ProcessArgs,
    admin::{self, Health},
    nats::{self, NatsArgs, Role, Topology},
};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;
use tracing::info;

use kubesent_remediator::operator::{Operator, Taken};

/// KubeSent: self-healing for Kubernetes workloads.
#[derive(Debug, Parser)]
#[command(name = "kubesent", version, about, long_about = None)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The roles of the binary.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Watch pods and publish one job per failure incident (leader-elected).
    Detector(kubesent_detector::args::DetectorArgs),
    /// Diagnose failure jobs into verdicts (a pool of workers).
    Diagnoser(kubesent_diagnoser::args::DiagnoserArgs),
    /// Gate and apply verdicts (leader-elected).
    Remediator(kubesent_remediator::args::RemediatorArgs),
    /// Turn the kill switch on: every remediator only suggests until `kubesent resume`.
    Pause(PauseArgs),
    /// Turn the kill switch off.
    Resume(ResumeArgs),
    /// Reverse the change KubeSent made for an incident, and record that in the audit log.
    Undo(UndoArgs),
    /// Approve a fix waiting in manual-approval mode; the leading remediator carries it out.
    Approve(ApproveArgs),
    /// Reject a fix waiting in manual-approval mode; it is recorded as denied.
    Reject(RejectArgs),
    /// List incidents from the audit log and the intents, or show one's timeline (`incidents show <id>`).
    Incidents(crate::incidents::IncidentsArgs),
    /// Follow every KubeSent subject live (jobs, verdicts, outcomes, dead letters), one line per message.
    Tail(crate::incidents::TailArgs),
    /// Tell humans what KubeSent did: Slack and a generic JSON webhook, from the audit log.
    Notifier(crate::notifier::NotifierArgs),
    /// Take Slack's Approve/Reject clicks on fixes that wait for approval (the app's interactivity URL).
    Slack(crate::slack::SlackArgs),
    /// Serve KubeSent to agents over the Model Context Protocol (stdio, or Streamable HTTP with --listen).
    Mcp(crate::mcp::McpArgs),
    /// Diagnose a pod from kubectl output (`kubectl get pod -o json`, logs, events) and print the verdict.
    Diagnose(crate::diagnose::DiagnoseArgs),
    /// Run the evaluation set (or your own cases) through the rules and each model, and score them.
    Eval(crate::eval::EvalArgs),
    /// Promote, demote or reset an action class's autonomy, or show the overrides and each class's record.
    Policy(crate::policy::PolicyArgs),
    /// The record behind earned autonomy: decisions, agreement with people, results, per class and namespace.
    Report(crate::report::ReportArgs),
}

/// What every operator command takes: how to reach NATS as the operator, and who is acting.
#[derive(Debug, Args)]
pub struct OperatorArgs {
    #[command(flatten)]
    nats: NatsArgs,
    /// Who is acting (recorded with the NATS user in the intent, the kill switch and the audit log).
    #[arg(long, env = "USER", default_value = "an operator")]
    by: String,
}

/// `kubesent pause`
#[derive(Debug, Args)]
pub struct PauseArgs {
    #[command(flatten)]
    operator: OperatorArgs,
    /// Why (recorded in every outcome while paused).
    #[arg(long, default_value = "paused by an operator")]
    reason: String,
}

/// `kubesent undo`
#[derive(Debug, Args)]
pub struct UndoArgs {
    /// The incident whose change to reverse (`inc-…`, as in the outcome).
    incident: String,
    #[command(flatten)]
    operator: OperatorArgs,
    /// Kubernetes API URL; when unset, in-cluster configuration or the kubeconfig is used (the change is
    /// reversed with your own Kubernetes credentials).
    #[arg(long, env = "KUBESENT_KUBE_API_URL")]
    kube_api_url: Option<String>,
}

/// `kubesent approve`
#[derive(Debug, Args)]
pub struct ApproveArgs {
    /// The incident (`inc-…`, as in its `awaiting_approval` outcome).
    incident: String,
    #[command(flatten)]
    operator: OperatorArgs,
    /// How long to wait for the leading remediator to take the approval.
    #[arg(long, default_value_t = 30)]
    wait_seconds: u64,
}

/// `kubesent reject`
#[derive(Debug, Args)]
pub struct RejectArgs {
    /// The incident (`inc-…`, as in its `awaiting_approval` outcome).
    incident: String,
    #[command(flatten)]
    operator: OperatorArgs,
    /// Why (recorded in the outcome).
    #[arg(long, default_value = "rejected")]
    reason: String,
    /// How long to wait for the leading remediator to record the rejection.
    #[arg(long, default_value_t = 30)]
    wait_seconds: u64,
}

/// `kubesent resume`
#[derive(Debug, Args)]
pub struct ResumeArgs {
    #[command(flatten)]
    operator: OperatorArgs,
}

impl OperatorArgs {
    /// Connects as the operator.
    pub async fn connect(&self) -> anyhow::Result<Operator> {
        Ok(Operator::connect(&self.nats, &self.by).await?)
    }
}

impl Cli {
    /// Whether the subcommand runs on one thread. The detector's work is one ordered stream (watch,
    /// classify, group, publish): spread over worker threads, every watch event became a cross-thread
    /// wake-up, and on 2 cores those context switches cost more CPU than decoding the event.
    pub fn single_threaded(&self) -> bool {
        matches!(self.command, Command::Detector(_))
    }

    /// Runs the chosen subcommand to completion.
    pub async fn run(self) -> anyhow::Result<()> {
        match self.command {
            Command::Detector(args) => run_detector(args).await,
            Command::Diagnoser(args) => run_diagnoser(args).await,
            Command::Remediator(args) => run_remediator(args).await,
            Command::Pause(args) => {
                let operator = args.operator.connect().await?;
                let recorded = operator.pause(&args.reason).await?;
                crate::out!("paused: remediators only suggest until `kubesent resume` ({recorded})")?;
                Ok(())
            }
            Command::Resume(args) => {
                let suggested = args.operator.connect().await?.resume().await?;
                crate::out!("resumed: remediators act again")?;
                if !suggested.is_empty() {
                    crate::out!(
                        "{} incidents were only suggested (while paused, or held by another guardrail); `kubesent approve <incident>` carries one out, decided again against the cluster:",
                        suggested.len()
                    )?;
                    for verdict in &suggested {
                        crate::out!(
                            "  {}  {}/{} {}: {}",
                            verdict.incident,
                            verdict.key.namespace,
                            verdict.key.workload,
                            verdict.failure.kind.as_str(),
                            kubesent_remediator::undo::describe(&verdict.action)
                        )?;
                    }
                }
                Ok(())
            }
            Command::Undo(args) => run_undo(args).await,
            Command::Approve(args) => {
                let operator = args.operator.connect().await?;
                let incident = kubesent_proto::IncidentId(args.incident);
                let taken = operator.approve(&incident, Duration::from_secs(args.wait_seconds)).await?;
                match taken {
                    Taken::Taken(_) => crate::out!(
                        "approved {incident} as {}: the leading remediator checks it against the cluster again and carries it out; its outcome follows in {}",
                        operator.attribution(),
                        kubesent_proto::OUTCOMES_STREAM
                    )?,
                    Taken::Pending => crate::out!(
                        "approval of {incident} recorded as {}; no leading remediator has taken it yet (it will when one leads)",
                        operator.attribution()
                    )?,
                }
                Ok(())
            }
            Command::Reject(args) => run_reject(args).await,
            Command::Diagnose(args) => crate::diagnose::run(args).await,
            Command::Eval(args) => crate::eval::run(args).await,
            Command::Incidents(args) => crate::incidents::run(args).await,
            Command::Notifier(args) => run_notifier(args).await,
            Command::Slack(args) => run_slack(args).await,
            Command::Mcp(args) => crate::mcp::run(args).await,
            Command::Tail(args) => crate::incidents::tail(args).await,
            Command::Policy(args) => crate::policy::run(args).await,
            Command::Report(args) => crate::report::run(args).await,
        }
    }
}

async fn run_notifier(args: crate::notifier::NotifierArgs) -> anyhow::Result<()> {
    let config = args.config()?;
    // No Kubernetes client and no streams of its own: it reads the audit log through its consumer.
    let mut ctx = start_process(&args.process, Role::Notifier, None, Topology::default()).await?;
    let metrics = crate::notifier::NotifierMetrics::register(&mut ctx.registry);
    ctx.publish_metrics();
    let deps = crate::notifier::NotifierDeps { js: ctx.js.clone(), metrics, health: ctx.health.clone() };
    crate::notifier::run(config, deps, ctx.shutdown.clone()).await
}

async fn run_slack(args: crate::slack::SlackArgs) -> anyhow::Result<()> {
    let config = args.config()?;
    // No Kubernetes client: it writes decisions, as `kubesent approve` does, with its own NATS user.
    let mut ctx = start_process(&args.process, Role::Slack, None, Topology::default()).await?;
    ctx.publish_metrics();
    let operator = Operator::connect_as(&args.process.nats, Role::Slack, "slack").await?;
    ctx.health.set_ready(true);
    crate::slack::run(config, operator, ctx.js.client(), args.listen, ctx.shutdown.clone()).await
}

/// What every service gets from [`start_service`].
struct ServiceContext {
    /// The Kubernetes client (`None` for the notifier, which never talks to Kubernetes).
    kube: Option<kube::Client>,
    js: jetstream::Context,
    topology: Topology,
    registry: Registry,
    published_registry: Arc<admin::LateRegistry>,
    health: Arc<Health>,
    shutdown: CancellationToken,
    _telemetry: kubesent_common::telemetry::TelemetryGuard,
}

impl ServiceContext {
    /// The Kubernetes client of a service that has one.
    fn kube(&self) -> anyhow::Result<kube::Client> {
        self.kube.clone().context("this service has no Kubernetes client")
    }

    /// Publishes the registered metrics on `/metrics` (everything must be registered by now).
    fn publish_metrics(&mut self) {
        let _ = self.published_registry.set(std::mem::take(&mut self.registry));
    }
}

/// Starts what every service needs: telemetry, the admin endpoint (live at once, ready only when the
/// service says so), the Kubernetes client and the NATS connection (retried in the background).
async fn start_service(common: &CommonArgs, role: Role) -> anyhow::Result<ServiceContext> {
    let topology =
        Topology { replicas: common.stream_replicas, max_jobs: common.max_jobs, ..Topology::default() };
    start_process(&common.process, role, Some(common.kube_api_url.as_deref()), topology).await
}

/// Starts a process of `role`: telemetry, the admin endpoint, a Kubernetes client when `kube_api_url`
/// is given (`Some(None)`: in-cluster or the kubeconfig), NATS.
async fn start_process(
    process: &ProcessArgs,
    role: Role,
    kube_api_url: Option<Option<&str>>,
    topology: Topology,
) -> anyhow::Result<ServiceContext> {
    let service = role.service_name();
    let telemetry = kubesent_common::telemetry::init(service, process.log_json);
    let shutdown = kubesent_common::shutdown_on_signal();
    let health = Arc::new(Health::default());
    let published_registry = Arc::new(admin::LateRegistry::new());
    let listener = tokio::net::TcpListener::bind(process.admin_listen)
        .await
        .with_context(|| format!("binding the admin endpoint {}", process.admin_listen))?;
    let app = admin::router(published_registry.clone(), health.clone());
    tokio::spawn(admin::serve(listener, app, shutdown.clone()));
    info!(listen = %process.admin_listen, "admin endpoint serving /healthz, /readyz and /metrics");
    let kube = match kube_api_url {
        Some(url) => Some(kubesent_common::kube_client(url).await?),
        None => None,
    };
    let client = nats::connect_as(&process.nats, role, &format!("{service}/{}", process.identity)).await?;
    let js = jetstream::new(client);
    info!(service, identity = %process.identity, nats = %process.nats.url, "started");
    Ok(ServiceContext {
        kube,
        js,
        topology,
        registry: Registry::default(),
        published_registry,
        health,
        shutdown,
        _telemetry: telemetry,
    })
}

async fn run_detector(args: kubesent_detector::args::DetectorArgs) -> anyhow::Result<()> {
    let mut ctx = start_service(&args.common, Role::Detector).await?;
    let metrics = kubesent_detector::DetectorMetrics::register(&mut ctx.registry);
    ctx.publish_metrics();
    let deps = kubesent_detector::DetectorDeps {
        kube: ctx.kube()?,
        js: ctx.js.clone(),
        metrics,
        health: ctx.health.clone(),
    };
    kubesent_detector::run(args.config(ctx.topology.clone()), deps, ctx.shutdown.clone()).await?;
    Ok(())
}

async fn run_diagnoser(args: kubesent_diagnoser::args::DiagnoserArgs) -> anyhow::Result<()> {
    let mut ctx = start_service(&args.common, Role::Diagnoser).await?;
    let metrics = kubesent_diagnoser::DiagnoserMetrics::register(&mut ctx.registry);
    let settings = args.llm.settings();
    let bucket = if settings.models.is_empty() {
        None
    } else {
        let bucket = kubesent_diagnoser::ratelimit::bucket(&ctx.js, ctx.topology.replicas, &ctx.shutdown);
        Some(bucket.await?)
    };
    let models = kubesent_diagnoser::llm::build_chain(&settings, bucket)?;
    if let Some(chain) = &models {
        chain.register_metrics(&mut ctx.registry);
    }
    ctx.publish_metrics();
    info!(models = ?settings.models, backend = ?settings.backend, "model chain configured");
    let deps = kubesent_diagnoser::DiagnoserDeps {
        kube: ctx.kube()?,
        js: ctx.js.clone(),
        metrics,
        models,
        health: ctx.health.clone(),
    };
    kubesent_diagnoser::run(args.config(ctx.topology.clone()), deps, ctx.shutdown.clone()).await?;
    Ok(())
}

async fn run_remediator(args: kubesent_remediator::args::RemediatorArgs) -> anyhow::Result<()> {
    // A wrong autonomy policy is a clear fatal error before anything connects.
    if let Some(path) = &args.autonomy_policy {
        kubesent_remediator::read_policy(path)?;
    }
    let mut ctx = start_service(&args.common, Role::Remediator).await?;
    let metrics = kubesent_remediator::RemediatorMetrics::register(&mut ctx.registry);
    ctx.publish_metrics();
    let deps = kubesent_remediator::RemediatorDeps {
        kube: ctx.kube()?,
        js: ctx.js.clone(),
        metrics,
        health: ctx.health.clone(),
    };
    kubesent_remediator::run(args.config(ctx.topology.clone()), deps, ctx.shutdown.clone()).await?;
    Ok(())
}

async fn run_reject(args: RejectArgs) -> anyhow::Result<()> {
    let operator = args.operator.connect().await?;
    let incident = kubesent_proto::IncidentId(args.incident);
    match operator.reject(&incident, &args.reason, Duration::from_secs(args.wait_seconds)).await? {
        Taken::Taken(outcome) => crate::out!(
            "rejected {incident} as {}: {}",
            operator.attribution(),
            outcome.map(|o| o.detail).unwrap_or_else(|| "recorded as denied".into())
        )?,
        Taken::Pending => crate::out!(
            "rejection of {incident} recorded as {}; no leading remediator has taken it yet (it will when one leads)",
            operator.attribution()
        )?,
    }
    Ok(())
}

async fn run_undo(args: UndoArgs) -> anyhow::Result<()> {
    // Warnings to stderr; the connection's own server errors are this command's error, said once.
    let _telemetry = kubesent_common::telemetry::init_with(
        "kubesent-undo",
        kubesent_common::telemetry::TelemetryOptions {
            default_filter: "warn,kubesent_common::nats::connect=off".into(),
            to_stderr: true,
            ..Default::default()
        },
    );
    let incident = kubesent_proto::IncidentId(args.incident.clone());
    let operator = args.operator.connect().await?;
    // Known before the Kubernetes client is needed, so an unknown incident says so.
    operator.remediation(&incident).await?;
    let kube = kubesent_common::kube_client(args.kube_api_url.as_deref()).await?;
    let undone = operator.undo(&kube, &incident).await?;
    crate::out!(
        "reverted {}: {} (recorded in {} as {})",
        undone.target,
        undone.detail,
        kubesent_proto::OUTCOMES_STREAM,
        operator.attribution()
    )?;
    Ok(())
}
