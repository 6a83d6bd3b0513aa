//! Detector figures: watch-event → JetStream latency at a given event rate, and RSS per tracked pod.
//!
//! Latency: kube-sim holds N bare pods; a `kubesent detector` process (as deployed: its own process,
//! its own runtime) watches them; the generator turns one pod per event into an OOM kill at the target
//! rate (every event is a failure transition, the worst case), and the time from the write in kube-sim
//! to the job's arrival on `kubesent.jobs.>` (it is delivered as JetStream stores it) is recorded.
//! RSS: a detector process watches 10,000 then 100,000 pods; the growth divided by the extra pods is
//! the memory per tracked pod.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::Stdio,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use async_nats::jetstream;
use futures::StreamExt as _;
use hdrhistogram::Histogram;
use kubesent_common::nats::{self, Topology};
use kubesent_kube_sim::{
    KubeSim, SimConfig, StoreConfig,
    realistic::{AppState, RealisticPod},
    resources::PODS,
    store::{Mutation, PreparedObject},
};
use kubesent_proto::{self as proto, FailureJob};
use kubesent_testkit::nats_server::NatsServer;

use crate::campaign::topology::usage;
use serde_json::{Value, json};

/// What to measure.
#[derive(Debug, Clone)]
pub struct Options {
    /// Event rates (events per second) for the latency runs.
    pub rates: Vec<u32>,
    /// Shares of the events that are failure transitions (percent), one latency run per rate and share;
    /// the rest are changes to healthy pods, as most events of a rollout or a node drain are.
    pub failure_percents: Vec<usize>,
    /// Seconds each latency run lasts.
    pub seconds: u64,
    /// The `kubesent` executable, run as the detector process.
    pub exe: PathBuf,
    /// Tracked pods at which RSS is read (the first is the baseline); empty skips the RSS figures.
    pub rss_pods: Vec<usize>,
    /// Size of each pod's JSON in KiB (a realistic pod: managedFields, a sidecar, env lists, probes).
    pub pod_kib: usize,
}

/// One latency run.
#[derive(Debug, Clone)]
pub struct LatencyRun {
    /// Target event rate.
    pub target_rate: u32,
    /// Percent of the events that are failure transitions (each one a job).
    pub failure_percent: usize,
    /// Events generated.
    pub events: usize,
    /// Events that were failure transitions.
    pub failures: usize,
    /// Jobs received for those failures.
    pub jobs: usize,
    /// Jobs received for pods that did not fail (must be none).
    pub unexpected_jobs: usize,
    /// Achieved rate (events per second over the generation time).
    pub achieved_rate: f64,
    /// Median latency.
    pub p50: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// Maximum.
    pub max: Duration,
    /// CPU time (user + system) the detector process spent per event while the events were generated
    /// and handled: the cost of one watch event on this machine, end to end inside the detector.
    pub detector_cpu_per_event: Duration,
    /// Cores the nats-server used meanwhile.
    pub nats_cores: f64,
    /// Cores the load-test process (kube-sim, the generator, the receiver) used meanwhile.
    pub driver_cores: f64,
    /// The most jobs the detector had sent and not yet seen acknowledged (its publish window, sampled
    /// from its metrics every 20 ms; at most 256).
    pub publish_window_peak: i64,
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
            "detector: failure watch event -> job on JetStream, pods of {:.1} KiB",
            self.pod_bytes as f64 / 1024.0
        )?;
        for run in &self.latency {
            writeln!(
                f,
                "  {:>6} events/s target, {:>3} % failures: {} events, {} jobs ({} unexpected), achieved {:.0}/s, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; detector CPU {:.1} µs/event ({:.0} % of a core), nats-server {:.0} %, kube-sim + generator {:.0} %; publish window peak {}",
                run.target_rate,
                run.failure_percent,
                run.events,
                run.jobs,
                run.unexpected_jobs,
                run.achieved_rate,
                run.p50.as_secs_f64() * 1e3,
                run.p99.as_secs_f64() * 1e3,
                run.max.as_secs_f64() * 1e3,
                run.detector_cpu_per_event.as_secs_f64() * 1e6,
                run.detector_cpu_per_event.as_secs_f64() * run.achieved_rate * 100.0,
                run.nats_cores * 100.0,
                run.driver_cores * 100.0,
                run.publish_window_peak,
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

/// What a generated pod shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodShape {
    /// Running and ready.
    Running,
    /// Running and ready, with an annotation changed: a watch event that is not a failure (the bulk of
    /// what a rollout or a node drain sends).
    Touched,
    /// Just OOM-killed: a failure transition.
    OomKilled,
}

/// Makes realistic bare pods of one size by copying a template.
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

    /// Bare pod `name` number `i` in `namespace`.
    pub fn pod(&self, namespace: &str, name: &str, i: usize, shape: PodShape) -> Value {
        let mut pod =
            if shape == PodShape::OomKilled { self.oom_killed.clone() } else { self.running.clone() };
        pod["metadata"]["name"] = json!(name);
        pod["metadata"]["namespace"] = json!(namespace);
        pod["metadata"]["uid"] = json!(format!("00000000-0000-4000-8000-{i:012}"));
        if shape == PodShape::Touched {
            pod["metadata"]["annotations"]["loadtest.kubesent.io/touched"] = json!("true");
        }
        pod
    }

    /// The same pod serialised for the store ahead of time, so that writing it costs the generator a
    /// copy.
    pub fn prepared(
        &self,
        namespace: &str,
        name: &str,
        i: usize,
        shape: PodShape,
    ) -> anyhow::Result<Arc<PreparedObject>> {
        let pod = self.pod(namespace, name, i, shape);
        Ok(Arc::new(
            PreparedObject::new(&PODS, namespace, name, pod).map_err(|e| anyhow::anyhow!(e.message))?,
        ))
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
        let pod = pods.prepared(namespace, &name, i, PodShape::Running)?;
        store
            .mutate(&PODS, namespace, &name, |_| Ok(Mutation::PutPrepared(pod)))
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
        for percent in &options.failure_percents {
            report.latency.push(latency_run(&options.exe, *rate, *percent, options.seconds, &pods).await?);
        }
    }
    if !options.rss_pods.is_empty() {
        report.rss = rss_run(&options.exe, &options.rss_pods, &pods).await?;
    }
    Ok(report)
}

async fn latency_run(
    exe: &Path,
    rate: u32,
    failure_percent: usize,
    seconds: u64,
    pods: &PodMaker,
) -> anyhow::Result<LatencyRun> {
    let events = usize::try_from(u64::from(rate) * seconds)?;
    // Spread evenly: event i is a failure when the running count of failures steps up at i.
    let failure_percent = failure_percent.clamp(1, 100);
    let is_failure = |i: usize| (i * failure_percent / 100) != ((i + 1) * failure_percent / 100);
    let failures = (0..events).filter(|&i| is_failure(i)).count();
    let nats_server = NatsServer::start().await?;
    let sim = KubeSim::start(SimConfig {
        store: StoreConfig { history_per_resource: 200_000, watch_buffer: 262_144 },
        ..SimConfig::default()
    })
    .await?;
    let client = nats::connect(nats_server.url(), "loadtest").await?;
    let max_jobs = i64::try_from(events)?.saturating_mul(2);
    nats::ensure_streams(&jetstream::new(client.clone()), &Topology { max_jobs, ..Topology::default() })
        .await?;
    insert_pods(&sim, pods, "load", "p", 0..events)?;
    let detector = DetectorProcess::start(exe, &sim.url(), nats_server.url(), max_jobs)?;
    detector.wait_until_tracking(events).await?;

    let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::new(Mutex::new(HashMap::with_capacity(events)));
    let mut jobs = client.subscribe("kubesent.jobs.>").await?;
    let receiver = {
        let sent = sent.clone();
        tokio::spawn(async move {
            let mut histogram = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("valid bounds");
            let (mut received, mut unexpected) = (0usize, 0usize);
            while received < failures {
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
                } else {
                    unexpected += 1;
                }
            }
            (histogram, received, unexpected)
        })
    };
    // The changed pods are made and serialised before the clock starts: serialising a 10 KiB pod
    // costs the generator more than the detector spends on an event, and it shares the machine with it.
    let changed = (0..events)
        .map(|i| {
            let shape = if is_failure(i) { PodShape::OomKilled } else { PodShape::Touched };
            pods.prepared("load", &format!("p-{i}"), i, shape)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut changed = changed.into_iter();
    // Generate: a batch of events every millisecond.
    let nats_pid = nats_server.pid().context("nats-server has exited")?;
    let cpu = || -> anyhow::Result<[f64; 3]> {
        Ok([usage(detector.pid()?)?.1, usage(nats_pid)?.1, usage(std::process::id())?.1])
    };
    let window_peak = Arc::new(std::sync::atomic::AtomicI64::new(0));
    let window = {
        let (admin, peak) = (detector.admin.clone(), window_peak.clone());
        kubesent_common::AbortOnDrop::new(tokio::spawn(async move {
            loop {
                let now = metric(&admin, "kubesent_detector_publishes_in_flight").await.unwrap_or(0);
                peak.fetch_max(now, std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }))
    };
    let cpu_before = cpu()?;
    let started = Instant::now();
    let store = sim.state().store.clone();
    let mut ticker = tokio::time::interval(Duration::from_millis(1));
    let mut next = 0usize;
    while next < events {
        ticker.tick().await;
        let due = ((started.elapsed().as_secs_f64() * f64::from(rate)) as usize).min(events);
        while next < due {
            let name = format!("p-{next}");
            let pod = changed.next().context("a pod for every event")?;
            if is_failure(next) {
                sent.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(name.clone(), Instant::now());
            }
            store
                .mutate(&PODS, "load", &name, |_| Ok(Mutation::PutPrepared(pod)))
                .map_err(|e| anyhow::anyhow!(e.message))?;
            next += 1;
        }
    }
    let generation = started.elapsed();
    let (histogram, received, unexpected) = receiver.await?;
    let elapsed = started.elapsed().as_secs_f64();
    let cpu_after = cpu()?;
    let used = |i: usize| (cpu_after[i] - cpu_before[i]).max(0.0);
    drop(window);
    drop(detector);
    sim.shutdown().await;
    if received == 0 {
        bail!("no job arrived");
    }
    let micros = |v: u64| Duration::from_micros(v);
    Ok(LatencyRun {
        target_rate: rate,
        failure_percent,
        events,
        failures,
        jobs: received,
        unexpected_jobs: unexpected,
        achieved_rate: events as f64 / generation.as_secs_f64(),
        p50: micros(histogram.value_at_quantile(0.5)),
        p99: micros(histogram.value_at_quantile(0.99)),
        max: micros(histogram.max()),
        detector_cpu_per_event: Duration::from_secs_f64(used(0) / events as f64),
        nats_cores: used(1) / elapsed,
        driver_cores: used(2) / elapsed,
        publish_window_peak: window_peak.load(std::sync::atomic::Ordering::Relaxed),
    })
}

/// A `kubesent detector` process watching kube-sim, killed when dropped.
struct DetectorProcess {
    child: tokio::process::Child,
    admin: String,
}

impl DetectorProcess {
    fn start(exe: &Path, kube_url: &str, nats_url: &str, max_jobs: i64) -> anyhow::Result<Self> {
        let admin = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
            listener.local_addr()?.to_string()
        };
        let child = tokio::process::Command::new(exe)
            .args(["detector", "--leader-election", "false", "--admin-listen", &admin])
            .args(["--kube-api-url", kube_url, "--nats-url", nats_url])
            .args(["--max-jobs", &max_jobs.to_string(), "--group-wait-ms", "0"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("starting the detector process")?;
        Ok(DetectorProcess { child, admin })
    }

    fn pid(&self) -> anyhow::Result<u32> {
        self.child.id().context("the detector process has exited")
    }

    /// Waits until the detector tracks `pods` pods. It reports progress only through /metrics, so
    /// this reads them until it does.
    async fn wait_until_tracking(&self, pods: usize) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(600);
        let wanted = i64::try_from(pods).unwrap_or(i64::MAX);
        while tracked_pods(&self.admin).await.is_none_or(|n| n < wanted) {
            if Instant::now() > deadline {
                bail!("the detector did not track {pods} pods in time");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }
}

async fn tracked_pods(admin: &str) -> Option<i64> {
    metric(admin, "kubesent_detector_tracked_pods").await
}

/// A gauge of the detector's metrics, read from its admin endpoint.
async fn metric(admin: &str, name: &str) -> Option<i64> {
    let body = reqwest::get(format!("http://{admin}/metrics")).await.ok()?.text().await.ok()?;
    body.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')).and_then(|v| v.trim().parse().ok())
}

async fn rss_run(exe: &Path, points: &[usize], maker: &PodMaker) -> anyhow::Result<Vec<RssPoint>> {
    let nats_server = NatsServer::start().await?;
    let sim = KubeSim::start(SimConfig::default()).await?;
    let detector = DetectorProcess::start(exe, &sim.url(), nats_server.url(), Topology::default().max_jobs)?;
    let mut readings = Vec::new();
    let mut inserted = 0;
    for &pods in points {
        insert_pods(&sim, maker, "rss", "r", inserted..pods)?;
        inserted = pods;
        detector.wait_until_tracking(pods).await?;
        readings.push(RssPoint { pods, rss: usage(detector.pid()?)?.0 });
    }
    drop(detector);
    sim.shutdown().await;
    Ok(readings)
}
