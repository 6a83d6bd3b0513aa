//! Detector figures: watch-event → JetStream latency at a given event rate, and RSS per tracked pod.
//!
//! Latency: kube-sim holds N bare pods; the generator turns one pod per event into an OOM kill at the
//! target rate (every event is a failure transition, the worst case), and the time from the write in
//! kube-sim to the job's arrival on `kubesent.jobs.>` (it is delivered as JetStream stores it) is
//! recorded. RSS: a `kubesent detector` process watches 10,000 then 100,000 pods; the growth divided by
//! the extra pods is the memory per tracked pod.

use std::{
    collections::HashMap,
    path::PathBuf,
    process::Stdio,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use async_nats::jetstream;
use futures::StreamExt as _;
use hdrhistogram::Histogram;
use kubesent_common::{
    nats::{self, Topology},
    nats_server::NatsServer,
};
use kubesent_detector::{DetectorConfig, DetectorDeps, DetectorMetrics};
use kubesent_kube_sim::{
    KubeSim, SimConfig, StoreConfig,
    realistic::{AppState, RealisticPod},
    resources::PODS,
    store::Mutation,
};
use kubesent_proto::{self as proto, FailureJob};
use prometheus_client::registry::Registry;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// What to measure.
#[derive(Debug, Clone)]
pub struct Options {
    /// Event rates (events per second) for the latency runs.
    pub rates: Vec<u32>,
    /// Seconds each latency run lasts.
    pub seconds: u64,
    /// The `kubesent` executable to run as a detector process for the RSS figures (`None` skips them).
    pub detector_exe: Option<PathBuf>,
    /// Tracked pods at which RSS is read (the first is the baseline).
    pub rss_pods: Vec<usize>,
    /// Size of each pod's JSON in KiB (a realistic pod: managedFields, a sidecar, env lists, probes).
    pub pod_kib: usize,
}

/// One latency run.
#[derive(Debug, Clone)]
pub struct LatencyRun {
    /// Target event rate.
    pub target_rate: u32,
    /// Events generated.
    pub events: usize,
    /// Jobs received.
    pub jobs: usize,
    /// Achieved rate (events per second over the generation time).
    pub achieved_rate: f64,
    /// Median latency.
    pub p50: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// Maximum.
    pub max: Duration,
}

/// RSS of a detector process at a number of tracked pods.
#[derive(Debug, Clone)]
pub struct RssPoint {
    /// Tracked pods.
    pub pods: usize,
    /// Resident set size in bytes.
    pub rss: u64,
}

/// The detector report.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Latency runs.
    pub latency: Vec<LatencyRun>,
    /// RSS readings.
    pub rss: Vec<RssPoint>,
    /// Bytes of each pod's JSON.
    pub pod_bytes: usize,
}

impl Report {
    /// Bytes per tracked pod between the first and last RSS readings.
    pub fn bytes_per_pod(&self) -> Option<f64> {
        let (first, last) = (self.rss.first()?, self.rss.last()?);
        (last.pods > first.pods)
            .then(|| (last.rss.saturating_sub(first.rss)) as f64 / (last.pods - first.pods) as f64)
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "detector: watch event -> JetStream, every event a failure transition, pods of {:.1} KiB",
            self.pod_bytes as f64 / 1024.0
        )?;
        for run in &self.latency {
            writeln!(
                f,
                "  {:>6} events/s target: {} events, {} jobs, achieved {:.0}/s, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
                run.target_rate,
                run.events,
                run.jobs,
                run.achieved_rate,
                run.p50.as_secs_f64() * 1e3,
                run.p99.as_secs_f64() * 1e3,
                run.max.as_secs_f64() * 1e3
            )?;
        }
        for point in &self.rss {
            writeln!(
                f,
                "  detector RSS with {:>6} tracked pods: {:.1} MiB",
                point.pods,
                point.rss as f64 / (1 << 20) as f64
            )?;
        }
        if let Some(per_pod) = self.bytes_per_pod() {
            writeln!(f, "  memory per tracked pod: {per_pod:.0} bytes")?;
        }
        Ok(())
    }
}

/// Makes realistic bare pods of one size by copying a template: Running, or just OOM-killed.
#[derive(Debug, Clone)]
pub struct PodMaker {
    running: Value,
    oom_killed: Value,
}

impl PodMaker {
    /// Templates of about `kib` KiB.
    pub fn new(kib: usize) -> Self {
        let template = |state| {
            let pod = RealisticPod {
                namespace: String::new(),
                name: "template".into(),
                index: 0,
                deployment: None,
                state,
                size_kib: kib,
            };
            pod.with_env(pod.padding())
        };
        PodMaker { running: template(AppState::Healthy), oom_killed: template(AppState::OomKilled) }
    }

    /// Bare pod `name` number `i` in `namespace`, Running or OOM-killed.
    pub fn pod(&self, namespace: &str, name: &str, i: usize, oom_killed: bool) -> Value {
        let mut pod = if oom_killed { self.oom_killed.clone() } else { self.running.clone() };
        pod["metadata"]["name"] = json!(name);
        pod["metadata"]["namespace"] = json!(namespace);
        pod["metadata"]["uid"] = json!(format!("00000000-0000-4000-8000-{i:012}"));
        pod
    }

    /// Bytes of one pod's JSON.
    pub fn size(&self) -> usize {
        serde_json::to_vec(&self.running).map_or(0, |v| v.len())
    }
}

/// A Running bare pod as the kubelet leaves it.
pub fn running_pod(namespace: &str, name: &str, i: usize) -> Value {
    json!({
        "metadata": {"name": name, "namespace": namespace, "uid": format!("00000000-0000-4000-8000-{i:012}"),
            "creationTimestamp": "2026-11-01T09:00:00Z", "labels": {"app": "load"}},
        "spec": {"nodeName": "sim-node-1", "restartPolicy": "Always",
            "containers": [{"name": "app", "image": "registry.local/load:1", "resources": {"limits": {"memory": "128Mi"}}}]},
        "status": {"phase": "Running", "podIP": "10.244.0.2",
            "conditions": [{"type": "Ready", "status": "True"}],
            "containerStatuses": [{"name": "app", "image": "registry.local/load:1", "imageID": "registry.local/load@sha256:1",
                "containerID": "containerd://1", "ready": true, "started": true, "restartCount": 0,
                "state": {"running": {"startedAt": "2026-11-01T09:00:03Z"}}}]}
    })
}

fn insert_pods(
    sim: &KubeSim,
    pods: &PodMaker,
    namespace: &str,
    prefix: &str,
    range: std::ops::Range<usize>,
) -> anyhow::Result<()> {
    let store = &sim.state().store;
    for i in range {
        let name = format!("{prefix}-{i}");
        let pod = pods.pod(namespace, &name, i, false);
        store
            .mutate(&PODS, namespace, &name, |_| Ok(Mutation::Put(pod)))
            .map_err(|e| anyhow::anyhow!(e.message))?;
    }
    Ok(())
}

/// Runs the detector scenario.
pub async fn run(options: &Options) -> anyhow::Result<Report> {
    kubesent_common::install_crypto_provider();
    let pods = PodMaker::new(options.pod_kib);
    let mut report = Report { pod_bytes: pods.size(), ..Report::default() };
    for rate in &options.rates {
        report.latency.push(latency_run(*rate, options.seconds, &pods).await?);
    }
    if let Some(exe) = &options.detector_exe {
        report.rss = rss_run(exe, &options.rss_pods, &pods).await?;
    }
    Ok(report)
}

async fn latency_run(rate: u32, seconds: u64, pods: &PodMaker) -> anyhow::Result<LatencyRun> {
    let events = usize::try_from(u64::from(rate) * seconds)?;
    let nats_server = NatsServer::start().await?;
    let sim = KubeSim::start(SimConfig {
        store: StoreConfig { history_per_resource: 200_000, watch_buffer: 262_144 },
        ..SimConfig::default()
    })
    .await?;
    let client = nats::connect(nats_server.url(), "loadtest").await?;
    let js = jetstream::new(client.clone());
    let topology = Topology { max_jobs: 10_000_000, ..Topology::default() };
    nats::ensure_streams(&js, &topology).await?;
    insert_pods(&sim, pods, "load", "p", 0..events)?;

    let metrics = DetectorMetrics::register(&mut Registry::default());
    let kube = kubesent_common::kube_client(Some(&sim.url())).await?;
    let config = DetectorConfig {
        namespaces: Vec::new(),
        excluded_namespaces: Vec::new(),
        leader: None,
        group_wait: Duration::ZERO,
        incident_ttl: kubesent_detector::DEFAULT_INCIDENT_TTL,
        topology,
    };
    let shutdown = CancellationToken::new();
    let detector = tokio::spawn(kubesent_detector::run(
        config,
        DetectorDeps { kube, js: js.clone(), metrics: metrics.clone(), health: Default::default() },
        shutdown.clone(),
    ));
    let tracked = i64::try_from(events)?;
    tokio::time::timeout(Duration::from_secs(600), metrics.wait_until(|m| m.tracked_pods() >= tracked))
        .await
        .context("the detector did not list every pod")?;

    let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::new(Mutex::new(HashMap::with_capacity(events)));
    let mut jobs = client.subscribe("kubesent.jobs.>").await?;
    let receiver = {
        let sent = sent.clone();
        tokio::spawn(async move {
            let mut histogram = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("valid bounds");
            let mut received = 0usize;
            while received < events {
                let Ok(Some(message)) = tokio::time::timeout(Duration::from_secs(60), jobs.next()).await
                else {
                    break;
                };
                let at = Instant::now();
                let Ok(job) = proto::decode::<FailureJob>(&message.payload) else { continue };
                let started = sent
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .get(&job.pod.name)
                    .copied();
                if let Some(started) = started {
                    let micros = u64::try_from(at.duration_since(started).as_micros()).unwrap_or(u64::MAX);
                    histogram.saturating_record(micros.max(1));
                    received += 1;
                }
            }
            (histogram, received)
        })
    };
    // The OOM-killed pods are made before the clock starts: copying a 10 KiB template costs the
    // generator as much as the detector spends on an event, and it shares the machine with it.
    let killed: Vec<Value> = (0..events).map(|i| pods.pod("load", &format!("p-{i}"), i, true)).collect();
    let mut killed = killed.into_iter();
    // Generate: a batch of events every millisecond.
    let started = Instant::now();
    let store = sim.state().store.clone();
    let mut ticker = tokio::time::interval(Duration::from_millis(1));
    let mut next = 0usize;
    while next < events {
        ticker.tick().await;
        let due = ((started.elapsed().as_secs_f64() * f64::from(rate)) as usize).min(events);
        while next < due {
            let name = format!("p-{next}");
            let pod = killed.next().context("a pod for every event")?;
            sent.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(name.clone(), Instant::now());
            store
                .mutate(&PODS, "load", &name, |_| Ok(Mutation::Put(pod)))
                .map_err(|e| anyhow::anyhow!(e.message))?;
            next += 1;
        }
    }
    let generation = started.elapsed();
    let (histogram, received) = receiver.await?;
    shutdown.cancel();
    let _ = detector.await;
    sim.shutdown().await;
    if received == 0 {
        bail!("no job arrived");
    }
    let micros = |v: u64| Duration::from_micros(v);
    Ok(LatencyRun {
        target_rate: rate,
        events,
        jobs: received,
        achieved_rate: events as f64 / generation.as_secs_f64(),
        p50: micros(histogram.value_at_quantile(0.5)),
        p99: micros(histogram.value_at_quantile(0.99)),
        max: micros(histogram.max()),
    })
}

fn rss_of(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("VmRSS not found")?;
    Ok(kib * 1024)
}

async fn tracked_pods(admin: &str) -> Option<i64> {
    let body = reqwest::get(format!("http://{admin}/metrics")).await.ok()?.text().await.ok()?;
    body.lines()
        .find_map(|l| l.strip_prefix("kubesent_detector_tracked_pods "))
        .and_then(|v| v.trim().parse().ok())
}

async fn rss_run(exe: &PathBuf, points: &[usize], maker: &PodMaker) -> anyhow::Result<Vec<RssPoint>> {
    let nats_server = NatsServer::start().await?;
    let sim = KubeSim::start(SimConfig::default()).await?;
    let admin = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.local_addr()?.to_string()
    };
    let mut child = tokio::process::Command::new(exe)
        .args(["detector", "--leader-election", "false", "--admin-listen", &admin])
        .args(["--kube-api-url", &sim.url(), "--nats-url", nats_server.url()])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("starting the detector process")?;
    let pid = child.id().context("detector pid")?;
    let mut readings = Vec::new();
    let mut inserted = 0;
    for &pods in points {
        insert_pods(&sim, maker, "rss", "r", inserted..pods)?;
        inserted = pods;
        let deadline = Instant::now() + Duration::from_secs(600);
        // The detector reports progress only through /metrics; read it until it tracks every pod.
        loop {
            if tracked_pods(&admin).await.is_some_and(|n| n >= i64::try_from(pods).unwrap_or(i64::MAX)) {
                break;
            }
            if Instant::now() > deadline {
                bail!("the detector did not track {pods} pods in time");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        readings.push(RssPoint { pods, rss: rss_of(pid)? });
    }
    let _ = child.kill().await;
    sim.shutdown().await;
    Ok(readings)
}
