//! The developers' commands: the demo, the simulators as servers, the load tests and campaigns. Each
//! runs the product as it ships, as processes of the `kubesent` binary (found beside this one, or named by
//! `--kubesent`); none of this is in that binary.

use std::{
    io::IsTerminal as _,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, bail};
use clap::{Args, Parser, Subcommand};

/// KubeSent's developer tools: the demo, the Kubernetes and Gemini simulators, load tests and campaigns.
#[derive(Debug, Parser)]
#[command(name = "kubesent-dev", version, about, long_about = None)]
pub struct Cli {
    /// The product binary the demo and the campaigns run as processes (default: `kubesent` beside this
    /// executable, where `cargo build -p kubesent -p kubesent-dev` puts both).
    #[arg(long, env = "KUBESENT_BIN", global = true)]
    kubesent: Option<PathBuf>,
    /// What to run.
    #[command(subcommand)]
    command: Command,
}

/// The developers' commands.
#[derive(Debug, Subcommand)]
enum Command {
    /// Run KubeSent as deployed, on this machine, against the simulators, and play its failures.
    Demo(DemoArgs),
    /// Run the Kubernetes API simulator.
    KubeSim(KubeSimArgs),
    /// Run the Gemini API emulator.
    GeminiSim(GeminiSimArgs),
    /// Run a load-test scenario or campaign against the simulators and print its figures.
    #[command(subcommand)]
    Loadtest(Scenario),
    /// Act as a GitOps controller next to KubeSent: apply a manifest again whenever the live object
    /// drifts from it (server-side apply, forced, under its own field manager), until Ctrl-C.
    Gitops(GitopsArgs),
}

/// `kubesent-dev gitops`
#[derive(Debug, Args)]
struct GitopsArgs {
    /// The manifest (YAML or JSON, one object with its namespace) that Git holds.
    #[arg(long)]
    manifest: PathBuf,
    /// Seconds a drift is left before the manifest is applied again (0: on every change).
    #[arg(long, default_value_t = 0.0)]
    delay_seconds: f64,
    /// The field manager of its applies.
    #[arg(long, default_value = kubesent_loadtest::gitops::DEFAULT_FIELD_MANAGER)]
    field_manager: String,
    /// The API server (default: the kubeconfig's).
    #[arg(long)]
    kube_api_url: Option<String>,
}

/// `kubesent-dev demo`
#[derive(Debug, Args)]
struct DemoArgs {
    /// Wall-clock seconds per simulated kubelet second (0.1 = ten times faster than real time).
    #[arg(long, default_value_t = 0.1)]
    time_scale: f64,
    /// Seconds a fix must stay healthy to count as healed.
    #[arg(long, default_value_t = 3)]
    verify_seconds: u64,
    /// Keep everything running after the demo, for kubectl and `kubesent incidents`, until Ctrl-C.
    #[arg(long)]
    keep_running: bool,
    /// Where the services' logs and the kubeconfigs go (a temporary directory when unset).
    #[arg(long)]
    dir: Option<PathBuf>,
}

impl Cli {
    /// Runs the chosen command to completion.
    pub async fn run(self) -> anyhow::Result<()> {
        match self.command {
            Command::Demo(args) => {
                let options = kubesent_loadtest::demo::DemoOptions {
                    exe: product_binary(self.kubesent.as_deref())?,
                    time_scale: args.time_scale,
                    verify_seconds: args.verify_seconds,
                    keep_running: args.keep_running,
                    dir: args.dir,
                    live: std::io::stdout().is_terminal(),
                };
                kubesent_loadtest::demo::run(options, std::io::stdout().lock()).await
            }
            Command::KubeSim(args) => run_kube_sim(args).await,
            Command::GeminiSim(args) => run_gemini_sim(args).await,
            Command::Loadtest(scenario) => run_loadtest(scenario, self.kubesent.as_deref()).await,
            Command::Gitops(args) => run_gitops(args).await,
        }
    }
}

/// The product binary: `explicit`, else `kubesent` beside this executable.
pub fn product_binary(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    let path = match explicit {
        Some(path) => path.to_owned(),
        None => std::env::current_exe()
            .context("finding this executable")?
            .with_file_name(format!("kubesent{}", std::env::consts::EXE_SUFFIX)),
    };
    if !path.is_file() {
        bail!(
            "the product binary {} does not exist: build it beside this one (cargo build -p kubesent -p kubesent-dev, as make demo does) or name it with --kubesent PATH",
            path.display()
        );
    }
    Ok(path)
}

/// Load-test scenarios.
#[derive(Debug, Subcommand)]
enum Scenario {
    /// Detector: watch-event → JetStream latency at several event rates, and RSS per tracked pod.
    Detector {
        /// Event rates to measure (events per second).
        #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
        rates: Vec<u32>,
        /// Shares of the events that are failure transitions, in percent (one run per rate and share);
        /// the other events change healthy pods.
        #[arg(long, value_delimiter = ',', default_value = "10,100")]
        failure_percents: Vec<usize>,
        /// Seconds per rate.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Tracked pods at which the detector process's RSS is read (first = baseline).
        #[arg(long, value_delimiter = ',', default_value = "10000,100000")]
        rss_pods: Vec<usize>,
        /// Skip the RSS measurement.
        #[arg(long)]
        no_rss: bool,
        /// Size of each pod's JSON in KiB (realistic pods: managedFields, a sidecar, env lists, probes).
        #[arg(long, default_value_t = 10)]
        pod_kib: usize,
    },
    /// Model-bound: every job needs a slow, rationed model (2 s, 600 RPM, some 429s); the same backlog
    /// drained by 1 and by 3 diagnosers; never over the project's quota.
    ModelBound {
        /// Jobs in the backlog.
        #[arg(long, default_value_t = 600)]
        jobs: usize,
        /// Diagnoser replica counts to compare.
        #[arg(long, value_delimiter = ',', default_value = "1,3")]
        diagnosers: Vec<usize>,
        /// Where the JSON and markdown reports go.
        #[arg(long, default_value = "loadtest/reports")]
        report_dir: std::path::PathBuf,
    },
    /// Large cluster: ≥ 100,000 pods in ≥ 2,000 workloads watched by the real topology as processes,
    /// then a storm of hundreds of failing workloads; figures per pipeline stage, model calls beside the
    /// naive approach's.
    Storm {
        /// Healthy background workloads (50 pods each).
        #[arg(long, default_value_t = 2000)]
        workloads: usize,
        /// Scale of the storm (1.0: 150 OOM Deployments of 5 replicas, 100 bad rollouts, 40 crash loops,
        /// 50 bare pods).
        #[arg(long, default_value_t = 1.0)]
        storm_scale: f64,
        /// Keep deploy/base's guardrails (budget 30/h, breaker 20 in 5 min, cooldown 10 min).
        #[arg(long)]
        guardrails: bool,
        /// Where the JSON and markdown reports go.
        #[arg(long, default_value = "loadtest/reports")]
        report_dir: std::path::PathBuf,
    },
    /// Chaos: the real topology as processes (3 NATS servers, 2 detectors, 3 diagnosers, 2 remediators)
    /// under continuous failures while faults are injected; fails on any invariant violation.
    Chaos {
        /// Faults to inject.
        #[arg(long, env = "FAULTS", default_value_t = 500)]
        faults: usize,
        /// Seed of the fault sequence.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Where the JSON and markdown reports go.
        #[arg(long, default_value = "loadtest/reports")]
        report_dir: std::path::PathBuf,
        /// Only the faults whose name contains this text (e.g. `remediator leader`), to repeat one kind.
        #[arg(long)]
        only: Option<String>,
        /// Where the services' logs go and stay (a temporary directory, removed at the end, when unset).
        #[arg(long)]
        logs: Option<std::path::PathBuf>,
    },
    /// The world: ≥ 200 incidents, each in a namespace with a constraint a real cluster puts between a fix
    /// and its landing (quota, LimitRange, clamping or refusing webhook, a node pool too small, a GitOps
    /// reconciler, a VPA, a PDB), against the real topology as processes; fails on any invariant violation.
    World {
        /// Incidents (namespaces).
        #[arg(long, default_value_t = 220)]
        incidents: usize,
        /// Incidents set up at once.
        #[arg(long, default_value_t = 20)]
        parallel: usize,
        /// Seed of the constraints drawn.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Where the JSON and markdown reports go.
        #[arg(long, default_value = "loadtest/reports")]
        report_dir: std::path::PathBuf,
        /// Where the services' logs go and stay (a temporary directory, removed at the end, when unset).
        #[arg(long)]
        logs: Option<std::path::PathBuf>,
        /// Run the remediator with taking back turned off, to see the checker catch what it leaves.
        #[arg(long)]
        without_take_back: bool,
    },
    /// Hostile messages: forged, replayed, mutated and malformed jobs, verdicts and KV writes from
    /// unprivileged and wrongly privileged clients against the services as processes; fails unless
    /// nothing outside policy changed and no service crashed.
    Hostile {
        /// Messages and attempts to send.
        #[arg(long, default_value_t = 600)]
        messages: usize,
        /// Seed of the mutations (the same seed repeats the campaign).
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Where the JSON and markdown reports go.
        #[arg(long, default_value = "loadtest/reports")]
        report_dir: std::path::PathBuf,
    },
    /// Diagnoser: rules-path throughput and per-job time, and the pool-wide model quota over replicas.
    Diagnoser {
        /// Jobs in the rules-path saturation run.
        #[arg(long, default_value_t = 5000)]
        jobs: usize,
        /// Replica counts for the quota runs (empty skips them).
        #[arg(long, value_delimiter = ',', default_value = "1,3,10")]
        quota_replicas: Vec<usize>,
        /// Seconds per quota run.
        #[arg(long, default_value_t = 100)]
        quota_seconds: u64,
    },
}

/// `kubesent-dev kube-sim`
#[derive(Debug, Args)]
struct KubeSimArgs {
    /// Address to listen on.
    #[arg(long, env = "KUBE_SIM_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Wall-clock seconds per simulated kubelet second (0.1 = ten times faster).
    #[arg(long, env = "KUBE_SIM_TIME_SCALE", default_value_t = 1.0)]
    time_scale: f64,
    /// Worker nodes (`sim-node-1` …).
    #[arg(long, env = "KUBE_SIM_NODES", default_value_t = 3)]
    nodes: usize,
    /// Allocatable memory of each node.
    #[arg(long, env = "KUBE_SIM_NODE_MEMORY", default_value = "128Gi", value_parser = parse_quantity)]
    node_memory: kubesent_proto::MemoryQuantity,
    /// Allocatable CPU of each node, in cores.
    #[arg(long, env = "KUBE_SIM_NODE_CPU", default_value_t = 16)]
    node_cpu: u64,
    /// Allocatable ephemeral storage of each node.
    #[arg(long, env = "KUBE_SIM_NODE_STORAGE", default_value = "500Gi", value_parser = parse_quantity)]
    node_storage: kubesent_proto::MemoryQuantity,
}

fn parse_quantity(text: &str) -> Result<kubesent_proto::MemoryQuantity, String> {
    kubesent_proto::MemoryQuantity::parse(text).map_err(|e| e.to_string())
}

/// `kubesent-dev gemini-sim`
#[derive(Debug, Args)]
struct GeminiSimArgs {
    /// Address to listen on.
    #[arg(long, env = "GEMINI_SIM_LISTEN", default_value = "127.0.0.1:8081")]
    listen: SocketAddr,
    /// Latency added to every answer, in milliseconds.
    #[arg(long, env = "GEMINI_SIM_LATENCY_MS", default_value_t = 0)]
    latency_ms: u64,
    /// Requests per minute per model (unlimited when unset).
    #[arg(long, env = "GEMINI_SIM_RPM")]
    rpm: Option<u32>,
}

/// `kubesent-dev kube-sim`: serves until a signal.
async fn run_kube_sim(args: KubeSimArgs) -> anyhow::Result<()> {
    let _telemetry = kubesent_common::telemetry::init("kube-sim", false);
    let nodes = (1..=args.nodes.max(1))
        .map(|i| kubesent_kube_sim::nodes::NodeConfig {
            cpu_millis: args.node_cpu.saturating_mul(1000),
            memory: args.node_memory,
            ephemeral_storage: args.node_storage,
            ..kubesent_kube_sim::nodes::NodeConfig::worker(&format!("sim-node-{i}"))
        })
        .collect();
    let config = kubesent_kube_sim::SimConfig {
        listen: args.listen,
        time_scale: args.time_scale,
        nodes,
        ..Default::default()
    };
    let sim = kubesent_kube_sim::KubeSim::start(config)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    println!("kube-sim serving on {}  (try: kubectl --server {} get pods -A)", sim.url(), sim.url());
    kubesent_common::shutdown_on_signal().cancelled().await;
    sim.shutdown().await;
    Ok(())
}

/// `kubesent-dev gitops`: reconciles until a signal.
async fn run_gitops(args: GitopsArgs) -> anyhow::Result<()> {
    use kubesent_loadtest::gitops::{Reconciler, ReconcilerOptions, read_manifest};
    let _telemetry = kubesent_common::telemetry::init("gitops", false);
    kubesent_common::install_crypto_provider();
    let text = std::fs::read_to_string(&args.manifest)
        .with_context(|| format!("reading {}", args.manifest.display()))?;
    let manifest = read_manifest(&text).with_context(|| format!("reading {}", args.manifest.display()))?;
    let client = kubesent_common::kube_client(args.kube_api_url.as_deref()).await?;
    let options = ReconcilerOptions {
        delay: Duration::try_from_secs_f64(args.delay_seconds).context("--delay-seconds")?,
        field_manager: args.field_manager,
    };
    let reconciler = Reconciler::start(client, manifest, options)?;
    println!("reconciling {} (Ctrl-C to stop)", args.manifest.display());
    kubesent_common::shutdown_on_signal().cancelled().await;
    println!("applied {} times", reconciler.applies());
    reconciler.stop().await;
    Ok(())
}

/// `kubesent-dev gemini-sim`: serves until a signal.
async fn run_gemini_sim(args: GeminiSimArgs) -> anyhow::Result<()> {
    let _telemetry = kubesent_common::telemetry::init("gemini-sim", false);
    let config = kubesent_gemini_sim::GeminiSimConfig {
        listen: args.listen,
        latency: Duration::from_millis(args.latency_ms),
        rpm_limit: args.rpm,
        ..Default::default()
    };
    let sim = kubesent_gemini_sim::GeminiSim::start(config)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    println!("gemini-sim serving on {}/v1beta/models/{{model}}:generateContent", sim.url());
    kubesent_common::shutdown_on_signal().cancelled().await;
    sim.shutdown().await;
    Ok(())
}

/// `kubesent-dev loadtest <scenario>`: runs it and prints its report.
async fn run_loadtest(scenario: Scenario, kubesent: Option<&Path>) -> anyhow::Result<()> {
    // The campaigns' own clients are refused and answered with errors on purpose (hostile messages,
    // injected apiserver faults); their refusals are counted in the report, not logged line by line.
    let filter = match scenario {
        Scenario::Hostile { .. }
        | Scenario::Chaos { .. }
        | Scenario::World { .. }
        | Scenario::Storm { .. }
        | Scenario::ModelBound { .. } => {
            "warn,async_nats=off,kubesent_common::nats::connect=off,kube_client::client::builder=off"
        }
        _ => "warn",
    };
    let _telemetry = kubesent_common::telemetry::init_with_level("kubesent-loadtest", false, filter);
    let exe = product_binary(kubesent)?;
    match scenario {
        Scenario::Detector { rates, failure_percents, seconds, rss_pods, no_rss, pod_kib } => {
            let options = kubesent_loadtest::detector::Options {
                rates,
                failure_percents,
                seconds,
                exe: exe.clone(),
                rss_pods: if no_rss { Vec::new() } else { rss_pods },
                pod_kib,
            };
            let report = kubesent_loadtest::detector::run(&options).await?;
            println!("{report}");
        }
        Scenario::ModelBound { jobs, diagnosers, report_dir } => {
            let options = kubesent_loadtest::campaign::model_bound::ModelBoundOptions {
                exe: exe.clone(),
                jobs,
                diagnosers,
                report_dir: Some(report_dir),
            };
            let report = kubesent_loadtest::campaign::model_bound::run(&options).await?;
            print!("{report}");
            if let Some(path) = &report.written {
                println!("\nreport: {}", path.display());
            }
            if report.runs.iter().any(|r| r.over_quota > 0 || r.dead_lettered > 0) {
                anyhow::bail!("the model-bound run went over the quota or dead-lettered jobs");
            }
        }
        Scenario::Storm { workloads, storm_scale, report_dir, guardrails } => {
            let mut options = kubesent_loadtest::campaign::storm::StormOptions::large(exe.clone());
            let scale = |n: usize| ((n as f64) * storm_scale.clamp(0.0, 100.0)).round() as usize;
            options.background_workloads = workloads;
            options.oom_deployments = scale(options.oom_deployments);
            options.bad_rollouts = scale(options.bad_rollouts);
            options.crash_loops = scale(options.crash_loops);
            options.bare_pods = scale(options.bare_pods);
            options.report_dir = Some(report_dir);
            options.guardrails = guardrails;
            let report = kubesent_loadtest::campaign::storm::run(&options).await?;
            print!("{report}");
            if let Some(path) = &report.written {
                println!("\nreport: {}", path.display());
            }
        }
        Scenario::Chaos { faults, seed, report_dir, only, logs } => {
            let options = kubesent_loadtest::campaign::chaos::ChaosOptions {
                exe: exe.clone(),
                faults,
                seed,
                report_dir: Some(report_dir),
                only,
                every_kind_first: false,
                dir: logs,
            };
            let report = kubesent_loadtest::campaign::chaos::run(&options).await?;
            print!("{report}");
            if let Some(path) = &report.written {
                println!("\nreport: {}", path.display());
            }
            if !report.violations.is_empty() {
                anyhow::bail!("the chaos campaign found {} invariant violation(s)", report.violations.len());
            }
        }
        Scenario::World { incidents, parallel, seed, report_dir, logs, without_take_back } => {
            let options = kubesent_loadtest::campaign::world::WorldOptions {
                exe: exe.clone(),
                incidents,
                parallel,
                seed,
                every_constraint_first: true,
                report_dir: Some(report_dir),
                dir: logs,
                without_take_back,
            };
            let report = kubesent_loadtest::campaign::world::run(&options).await?;
            print!("{report}");
            if let Some(path) = &report.written {
                println!("\nreport: {}", path.display());
            }
            if !report.violations.is_empty() {
                anyhow::bail!("the world campaign found {} invariant violation(s)", report.violations.len());
            }
        }
        Scenario::Hostile { messages, seed, report_dir } => {
            let options = kubesent_loadtest::hostile::Options {
                exe: exe.clone(),
                messages,
                seed,
                report_dir: Some(report_dir),
            };
            let report = kubesent_loadtest::hostile::run(&options).await?;
            print!("{report}");
            if let Some(path) = &report.written {
                println!("\nreport: {}", path.display());
            }
            if !report.passed() {
                anyhow::bail!("the hostile campaign broke {} invariant(s)", report.violations.len());
            }
        }
        Scenario::Diagnoser { jobs, quota_replicas, quota_seconds } => {
            print!("{}", kubesent_loadtest::diagnoser::rules(jobs).await?);
            for replicas in quota_replicas {
                print!("{}", kubesent_loadtest::diagnoser::quota(replicas, quota_seconds).await?);
            }
        }
    }
    Ok(())
}
