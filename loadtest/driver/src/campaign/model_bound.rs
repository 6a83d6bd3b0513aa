//! The model-bound scenario: every job needs the model (crash loops the rules cannot explain), the model
//! is slow (2 s), rationed (600 requests per minute for the whole project) and sometimes answers 429; the
//! same backlog is drained by one diagnoser and by three. The quota is the project's, so the figure that
//! matters is the number of requests over quota in any 60-second window: it must be 0 however many
//! replicas ask.

use std::{
    collections::BTreeSet,
    fmt,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Pod;
use kube::{Api, api::PostParams};
use kubesent_gemini_sim::{GeminiSim, GeminiSimConfig, Reply};
use kubesent_proto::{self as proto, Verdict};
use serde_json::{Value, json};

use super::{
    report::{self, Progress},
    topology::{self, Topology, TopologyOptions},
};

/// The project's quota in the scenario, requests per minute.
pub const QUOTA_RPM: u32 = 600;

/// What to run.
#[derive(Debug, Clone)]
pub struct ModelBoundOptions {
    /// The `kubesent` executable.
    pub exe: PathBuf,
    /// Jobs in the backlog (each a crash-looping pod the rules cannot explain).
    pub jobs: usize,
    /// Diagnoser replica counts to compare.
    pub diagnosers: Vec<usize>,
    /// Where reports go.
    pub report_dir: Option<PathBuf>,
}

/// One run.
#[derive(Debug, Clone, Default)]
pub struct ModelRun {
    /// Diagnoser replicas.
    pub diagnosers: usize,
    /// Jobs in the backlog.
    pub jobs: usize,
    /// Verdicts published.
    pub verdicts: usize,
    /// Verdicts that came from the model.
    pub model_verdicts: usize,
    /// Requests the model API received.
    pub requests: usize,
    /// 429s it answered (scripted ones and quota ones).
    pub rate_limited: usize,
    /// The most requests in any 60-second window.
    pub busiest_minute: usize,
    /// Requests beyond the quota in that window.
    pub over_quota: usize,
    /// From the first failing pod to the last verdict.
    pub drain: Duration,
    /// Jobs dead-lettered.
    pub dead_lettered: u64,
}

/// Both runs.
#[derive(Debug, Default)]
pub struct ModelReport {
    /// One per diagnoser count.
    pub runs: Vec<ModelRun>,
    /// Where the markdown report was written.
    pub written: Option<PathBuf>,
}

impl ModelReport {
    fn to_json(&self, machine: &Value) -> Value {
        json!({
            "scenario": "model-bound",
            "machine": machine,
            "quota_rpm": QUOTA_RPM,
            "model_latency_seconds": 2,
            "runs": self.runs.iter().map(|r| json!({
                "diagnosers": r.diagnosers, "jobs": r.jobs, "verdicts": r.verdicts, "model_verdicts": r.model_verdicts,
                "requests": r.requests, "rate_limited_429": r.rate_limited, "busiest_minute": r.busiest_minute,
                "quota_use": r.busiest_minute as f64 / f64::from(QUOTA_RPM), "over_quota": r.over_quota,
                "drain_seconds": r.drain.as_secs_f64(), "dead_lettered": r.dead_lettered,
            })).collect::<Vec<_>>(),
        })
    }
}

impl fmt::Display for ModelReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "# Model-bound backlog\n")?;
        writeln!(
            f,
            "Machine: {}. gemini-sim: 2 s per answer, {QUOTA_RPM} requests per minute for the project, 5 scripted 429s.\n",
            report::machine_line(&report::machine())
        )?;
        writeln!(
            f,
            "| diagnosers | jobs | verdicts (from the model) | requests | 429s | busiest 60 s | over quota | drain | dead-lettered |\n|---|---|---|---|---|---|---|---|---|"
        )?;
        for r in &self.runs {
            writeln!(
                f,
                "| {} | {} | {} ({}) | {} | {} | {} ({:.0} % of the quota) | {} | {:.0} s | {} |",
                r.diagnosers,
                r.jobs,
                r.verdicts,
                r.model_verdicts,
                r.requests,
                r.rate_limited,
                r.busiest_minute,
                r.busiest_minute as f64 * 100.0 / f64::from(QUOTA_RPM),
                r.over_quota,
                r.drain.as_secs_f64(),
                r.dead_lettered
            )?;
        }
        Ok(())
    }
}

/// Runs the scenario once per diagnoser count.
pub async fn run(options: &ModelBoundOptions) -> anyhow::Result<ModelReport> {
    let mut report = ModelReport::default();
    let mut progress = Progress::new("runs", options.diagnosers.len());
    for (index, diagnosers) in options.diagnosers.iter().enumerate() {
        progress.update(index, &format!("{diagnosers} diagnoser(s)"));
        report.runs.push(run_once(options, *diagnosers).await?);
    }
    progress.update(options.diagnosers.len(), "done");
    progress.finish();
    if let Some(dir) = &options.report_dir {
        let machine = report::machine();
        report.written =
            Some(report::write(dir, "model-bound", &report.to_json(&machine), &report.to_string())?);
    }
    Ok(report)
}

async fn run_once(options: &ModelBoundOptions, diagnosers: usize) -> anyhow::Result<ModelRun> {
    let answer = json!({"action": "none", "root_cause": "the ledger is corrupt: restore it from the last backup", "confidence": 0.7});
    let gemini = GeminiSim::start(GeminiSimConfig {
        latency: Duration::from_secs(2),
        rpm_limit: Some(QUOTA_RPM),
        default_reply: Reply::Answer { text: answer.to_string() },
        ..GeminiSimConfig::default()
    })
    .await?;
    for _ in 0..5 {
        gemini.script(None, Reply::RateLimited { retry_delay: "2s".into() });
    }
    let overrides = topology::overrides([
        ("KUBESENT_MODELS", "gemini-3.5-flash".to_owned()),
        ("KUBESENT_LLM_URL", gemini.url()),
        ("GEMINI_API_KEY", "model-bound-key".to_owned()),
        ("KUBESENT_MODEL_RPM", QUOTA_RPM.to_string()),
        ("KUBESENT_LOG_JSON", "false".to_owned()),
    ]);
    let mut topology = Topology::start(&TopologyOptions {
        exe: options.exe.clone(),
        diagnosers,
        overrides,
        ..TopologyOptions::default()
    })
    .await
    .context("starting the topology")?;
    let mut tap = topology.js.client().subscribe(proto::VERDICTS_SUBJECTS).await?;
    let pods: Api<Pod> = Api::namespaced(topology.kube.clone(), "shop");
    let started = Instant::now();
    let crash = json!({"sim.kubesent.io/exit-code": "3", "sim.kubesent.io/logs": "starting\nunexpected state 0x2f in the ledger"});
    for i in 0..options.jobs {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": format!("crash{i}"), "namespace": "shop", "annotations": crash},
            "spec": {"containers": [{"name": "app", "image": "registry.local/shop/ledger:1"}]}
        }))?;
        pods.create(&PostParams::default(), &pod).await?;
    }
    let mut run = ModelRun { diagnosers, jobs: options.jobs, ..ModelRun::default() };
    let mut seen = BTreeSet::new();
    let deadline = started + Duration::from_secs(600);
    let mut last = started;
    while seen.len() < options.jobs && Instant::now() < deadline {
        topology.supervise()?;
        match tokio::time::timeout(Duration::from_secs(1), tap.next()).await {
            Ok(Some(message)) => {
                if let Ok(verdict) = proto::decode::<Verdict>(&message.payload)
                    && seen.insert(verdict.incident.clone())
                {
                    run.verdicts += 1;
                    run.model_verdicts +=
                        usize::from(matches!(verdict.source, proto::VerdictSource::Model { .. }));
                    last = Instant::now();
                }
            }
            Ok(None) => break,
            Err(_) => {}
        }
    }
    run.drain = last.saturating_duration_since(started);
    let requests = gemini.requests();
    run.requests = requests.len();
    run.rate_limited = requests.iter().filter(|r| r.status == 429).count();
    // Every request counts against the quota, answered or refused.
    let times: Vec<u64> = requests.iter().map(|r| r.at_ms).collect();
    let mut start = 0;
    for end in 0..times.len() {
        while times[end].saturating_sub(times[start]) >= 60_000 {
            start += 1;
        }
        run.busiest_minute = run.busiest_minute.max(end + 1 - start);
    }
    run.over_quota = run.busiest_minute.saturating_sub(QUOTA_RPM as usize);
    for replica in topology.replicas.iter().filter(|r| r.role == kubesent_common::nats::Role::Diagnoser) {
        let metrics = replica.process.metrics().await.unwrap_or_default();
        run.dead_lettered += metrics
            .lines()
            .find_map(|l| l.strip_prefix("kubesent_diagnoser_jobs_total{outcome=\"dead_lettered\"} "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0) as u64;
    }
    topology.stop().await;
    gemini.shutdown().await;
    Ok(run)
}
