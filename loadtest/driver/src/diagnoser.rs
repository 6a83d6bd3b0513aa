//! Diagnoser figures.
//!
//! **Rules path**: kube-sim holds N OOM-killed bare pods; their jobs are published to `KUBESENT_JOBS`,
//! a diagnoser (concurrency 16) gathers evidence from kube-sim and publishes verdicts. Throughput is
//! jobs per second at saturation; the per-job overhead is the publish → verdict time measured at a low
//! rate, where nothing queues.
//!
//! **Quota**: gemini-sim answers after 2 s and enforces a 600 RPM quota per model with 429s; 1, 3 or 10
//! diagnoser replicas (each its own NATS connection and limiter, sharing the KV bucket) work a backlog
//! of jobs the rules are unsure about. From gemini-sim's request log: the most requests in any
//! 60-second window, the 429s, and the utilization of the quota in the steady state.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use async_nats::jetstream;
use futures::StreamExt as _;
use hdrhistogram::Histogram;
use k8s_openapi::api::core::v1::Pod;
use kubesent_common::nats::{self, PullOptions, Topology};
use kubesent_detector::{classify::classify, lean::LeanPod, tracker::Transition};
use kubesent_diagnoser::{
    DiagnoserConfig, DiagnoserDeps, DiagnoserMetrics,
    llm::{
        chain::{Backend, Model, ModelChain},
        gemini::{GeminiClient, Thinking},
    },
    ratelimit::{self, Limits, SharedLimiter},
};
use kubesent_gemini_sim::{GeminiSim, GeminiSimConfig, Reply};
use kubesent_kube_sim::{KubeSim, SimConfig, resources::PODS, store::Mutation};
use kubesent_proto::{self as proto, FailureJob};
use kubesent_testkit::nats_server::NatsServer;
use prometheus_client::registry::Registry;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::detector::running_pod;

/// Figures of the rules path.
#[derive(Debug, Clone)]
pub struct RulesReport {
    /// Jobs in the saturation run.
    pub jobs: usize,
    /// Verdicts per second at saturation.
    pub throughput: f64,
    /// Per-job publish → verdict time at a low rate: median.
    pub p50: Duration,
    /// 99th percentile.
    pub p99: Duration,
}

/// Figures of one quota run.
#[derive(Debug, Clone)]
pub struct QuotaRun {
    /// Diagnoser replicas.
    pub replicas: usize,
    /// Successful model requests in the run.
    pub requests: usize,
    /// 429 answers gemini-sim gave.
    pub rejected: usize,
    /// Most successful requests in any 60-second window.
    pub max_per_minute: usize,
    /// Steady-state requests per minute divided by the quota.
    pub utilization: f64,
}

impl std::fmt::Display for RulesReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "diagnoser rules path (evidence from kube-sim, through NATS): {} jobs at {:.0} verdicts/s; per-job publish -> verdict at low rate p50 {:.1} ms, p99 {:.1} ms",
            self.jobs,
            self.throughput,
            self.p50.as_secs_f64() * 1e3,
            self.p99.as_secs_f64() * 1e3
        )
    }
}

impl std::fmt::Display for QuotaRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "diagnoser quota: {:>2} replicas, gemini-sim 2 s latency, 600 RPM: {} requests, {} rejected (429), max {} in any 60 s window, utilization {:.1}%",
            self.replicas,
            self.requests,
            self.rejected,
            self.max_per_minute,
            self.utilization * 100.0
        )
    }
}

fn oom_pod(name: &str, i: usize) -> Value {
    let mut pod = running_pod("load", name, i);
    pod["status"]["containerStatuses"][0]["state"] = json!({"waiting": {"reason": "CrashLoopBackOff"}});
    pod["status"]["containerStatuses"][0]["lastState"] =
        json!({"terminated": {"exitCode": 137, "reason": "OOMKilled", "finishedAt": "2026-11-01T09:00:05Z"}});
    pod["status"]["containerStatuses"][0]["restartCount"] = json!(2);
    pod
}

fn crash_pod(name: &str, i: usize) -> Value {
    let mut pod = oom_pod(name, i);
    pod["status"]["containerStatuses"][0]["lastState"] =
        json!({"terminated": {"exitCode": 1, "reason": "Error", "finishedAt": "2026-11-01T09:00:05Z"}});
    pod
}

/// Stores the pods and returns the jobs the detector would publish for them.
fn seed(sim: &KubeSim, count: usize, make: fn(&str, usize) -> Value) -> anyhow::Result<Vec<FailureJob>> {
    let mut jobs = Vec::with_capacity(count);
    for i in 0..count {
        let name = format!("d-{i}");
        let value = make(&name, i);
        let stored = sim
            .state()
            .store
            .mutate(&PODS, "load", &name, |_| Ok(Mutation::Put(value)))
            .map_err(|e| anyhow::anyhow!(e.message))?
            .context("stored")?;
        let pod: Pod = stored.typed().map_err(|e| anyhow::anyhow!(e.message))?;
        let pod = LeanPod::from(&pod);
        let observation =
            classify(&pod).into_iter().find(|o| o.failure.is_some()).context("the pod fails")?;
        let signal = observation.failure.clone().context("failure")?;
        jobs.push(kubesent_detector::build_job(&pod, &Transition { container: observation, signal }));
    }
    Ok(jobs)
}

async fn publish(js: &jetstream::Context, job: &FailureJob) -> anyhow::Result<()> {
    let subject = proto::job_subject(&job.pod.namespace, job.failure.kind)?;
    nats::publish(js, subject, job.incident.as_str(), proto::encode(job), &[]).await?;
    Ok(())
}

struct Setup {
    _nats: NatsServer,
    sim: KubeSim,
    js: jetstream::Context,
    kube: kube::Client,
    topology: Topology,
}

async fn setup() -> anyhow::Result<Setup> {
    kubesent_common::install_crypto_provider();
    let nats_server = NatsServer::start().await?;
    let sim = KubeSim::start(SimConfig::default()).await?;
    let js = jetstream::new(nats::connect(nats_server.url(), "loadtest").await?);
    let topology = Topology { max_jobs: 1_000_000, ..Topology::default() };
    nats::ensure_streams(&js, &topology).await?;
    let kube = kubesent_common::kube_client(Some(&sim.url())).await?;
    Ok(Setup { _nats: nats_server, sim, js, kube, topology })
}

fn start_diagnoser(
    setup: &Setup,
    js: jetstream::Context,
    concurrency: usize,
    models: Option<Arc<ModelChain>>,
    stop: &CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let deps = DiagnoserDeps {
        kube: setup.kube.clone(),
        js,
        metrics: DiagnoserMetrics::register(&mut Registry::default()),
        models,
        health: Default::default(),
    };
    let config = DiagnoserConfig {
        topology: setup.topology.clone(),
        pull: PullOptions { concurrency, fetch_wait: Duration::from_millis(500) },
        ..DiagnoserConfig::default()
    };
    let token = stop.clone();
    tokio::spawn(async move {
        if let Err(error) = kubesent_diagnoser::run(config, deps, token).await {
            tracing::error!(%error, "diagnoser stopped");
        }
    })
}

/// The rules path: throughput at saturation and per-job time at a low rate.
pub async fn rules(jobs: usize) -> anyhow::Result<RulesReport> {
    let setup = setup().await?;
    let seeded = seed(&setup.sim, jobs + 200, oom_pod)?;
    let (saturate, trickle) = seeded.split_at(jobs);
    let stop = CancellationToken::new();
    let mut verdicts = setup.js.client().subscribe("kubesent.verdicts.>").await?;
    // Saturation: the whole backlog first, then the diagnoser.
    for job in saturate {
        publish(&setup.js, job).await?;
    }
    let started = Instant::now();
    let worker = start_diagnoser(&setup, setup.js.clone(), 16, None, &stop);
    for _ in 0..jobs {
        tokio::time::timeout(Duration::from_secs(120), verdicts.next())
            .await
            .context("verdicts stopped coming")?
            .context("subscription closed")?;
    }
    let throughput = jobs as f64 / started.elapsed().as_secs_f64();
    // Low rate: 50 jobs per second, each timed from publish to verdict.
    let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::new(Mutex::new(HashMap::new()));
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut ticker = tokio::time::interval(Duration::from_millis(20));
    let mut pending = trickle.iter();
    let mut outstanding = 0usize;
    loop {
        tokio::select! {
            _ = ticker.tick() => match pending.next() {
                Some(job) => {
                    sent.lock().unwrap_or_else(PoisonError::into_inner).insert(job.incident.to_string(), Instant::now());
                    publish(&setup.js, job).await?;
                    outstanding += 1;
                }
                None if outstanding == 0 => break,
                None => {}
            },
            message = verdicts.next() => {
                let message = message.context("subscription closed")?;
                let verdict: proto::Verdict = proto::decode(&message.payload)?;
                if let Some(at) = sent.lock().unwrap_or_else(PoisonError::into_inner).remove(verdict.incident.as_str()) {
                    histogram.saturating_record(u64::try_from(at.elapsed().as_micros()).unwrap_or(u64::MAX).max(1));
                    outstanding = outstanding.saturating_sub(1);
                }
            }
        }
    }
    stop.cancel();
    let _ = worker.await;
    Ok(RulesReport {
        jobs,
        throughput,
        p50: Duration::from_micros(histogram.value_at_quantile(0.5)),
        p99: Duration::from_micros(histogram.value_at_quantile(0.99)),
    })
}

/// One quota run with `replicas` diagnosers for `seconds`.
pub async fn quota(replicas: usize, seconds: u64) -> anyhow::Result<QuotaRun> {
    const RPM: u32 = 600;
    const MODEL: &str = "gemini-3.5-flash";
    let setup = setup().await?;
    let gemini = GeminiSim::start(GeminiSimConfig {
        latency: Duration::from_secs(2),
        rpm_limit: Some(RPM),
        default_reply: Reply::Answer {
            text: r#"{"root_cause":"the app crashes at start-up","action":"none","confidence":0.6}"#.into(),
        },
        ..GeminiSimConfig::default()
    })
    .await?;
    // Far more jobs than the quota can serve in the run: the pool stays saturated.
    let backlog = usize::try_from(u64::from(RPM) * seconds / 60).unwrap_or(usize::MAX) * 3 / 2 + 100;
    let jobs = seed(&setup.sim, backlog, crash_pod)?;
    for job in &jobs {
        publish(&setup.js, job).await?;
    }
    let bucket = ratelimit::bucket(&setup.js, 1, &Default::default()).await?;
    let stop = CancellationToken::new();
    let mut workers = Vec::new();
    // 600 RPM at 2 s per answer needs 20 requests in flight; every replica count gets the same total.
    let per_replica = 32usize.div_ceil(replicas).max(4);
    for replica in 0..replicas {
        let client = nats::connect(setup._nats.url(), &format!("diagnoser-{replica}")).await?;
        let js = jetstream::new(client);
        let http = GeminiClient::new(&gemini.url(), "load-key".to_owned().into(), Duration::from_secs(30))?;
        let model = Model {
            name: MODEL.into(),
            backend: Backend::Gemini(http, Thinking::for_model(MODEL)),
            limiter: SharedLimiter::new(MODEL, Limits { rpm: RPM, tpm: None }, Some(bucket.clone())),
        };
        let chain = ModelChain::new(vec![model], Duration::from_secs(20));
        workers.push(start_diagnoser(&setup, js, per_replica, Some(chain), &stop));
    }
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.cancel();
    for worker in workers {
        let _ = worker.await;
    }
    let requests = gemini.requests();
    let ok: Vec<u64> = requests.iter().filter(|r| r.status == 200).map(|r| r.at_ms).collect();
    let rejected = requests.iter().filter(|r| r.status == 429).count();
    if ok.is_empty() {
        bail!("no model request succeeded");
    }
    // Most successful requests in any 60 s window (the emulator counts arrivals in (t - 60 s, t]).
    let mut max_per_minute = 0;
    let mut start = 0;
    for end in 0..ok.len() {
        while ok[end] - ok[start] >= 60_000 {
            start += 1;
        }
        max_per_minute = max_per_minute.max(end - start + 1);
    }
    // Steady state: from 10 s after the first request to the end of the run.
    let first = ok[0];
    let steady_from = first + 10_000;
    let steady_to = first + seconds.saturating_sub(5) * 1000;
    let steady = ok.iter().filter(|t| **t >= steady_from && **t < steady_to).count();
    let minutes = (steady_to.saturating_sub(steady_from)) as f64 / 60_000.0;
    let utilization = steady as f64 / (f64::from(RPM) * minutes);
    gemini.shutdown().await;
    Ok(QuotaRun { replicas, requests: ok.len(), rejected, max_per_minute, utilization })
}
