//! The large-cluster scenario: kube-sim holding ≥ 100,000 pods across ≥ 2,000 workloads, the real topology
//! as processes watching all of it, then a failure storm — hundreds of workloads failing within a minute:
//! Deployments whose every replica is OOM-killed, rollouts to a missing image, crash loops the rules
//! cannot explain (so the model is asked), bare pods OOM-killed.
//!
//! Everything is measured from the outside: the driver's own watch sees each pod fail; a tap on
//! `kubesent.>` sees each job, verdict and outcome; a watch on the intents bucket sees each fix applied;
//! gemini-sim counts the model calls. Beside KubeSent's figures, the same watch stream is counted through
//! the naive approach: one model call per MODIFIED event of a pod in CrashLoopBackOff, ImagePullBackOff,
//! ErrImagePull or OOMKilled, with no grouping and no dedup.

use std::{
    collections::BTreeMap,
    fmt,
    path::PathBuf,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use futures::StreamExt as _;
use k8s_openapi::api::{apps::v1::Deployment, core::v1::Pod};
use kube::{
    Api,
    api::{Patch, PatchParams, PostParams, WatchEvent, WatchParams},
};
use kubesent_gemini_sim::{GeminiSim, GeminiSimConfig};
use kubesent_kube_sim::{
    ImageState,
    resources::{PODS, REPLICASETS},
    store::Mutation,
};
use kubesent_proto::intent::{Intent, Phase};
use kubesent_proto::{self as proto, FailureJob, Outcome, OutcomeResult};
use serde_json::{Value, json};

use super::{
    report::{self, Progress},
    topology::{self, Topology, TopologyOptions},
};

const GOOD_IMAGE: &str = "registry.local/shop/app:1.0";
const MISSING_IMAGE: &str = "registry.local/shop/app:404";

/// How big the cluster and the storm are.
#[derive(Debug, Clone)]
pub struct StormOptions {
    /// The `kubesent` executable.
    pub exe: PathBuf,
    /// Healthy background workloads (each a ReplicaSet's pods) and pods per workload.
    pub background_workloads: usize,
    /// Pods per background workload.
    pub pods_per_workload: usize,
    /// Deployments whose every replica is OOM-killed, and their replicas.
    pub oom_deployments: usize,
    /// Replicas of each of those.
    pub oom_replicas: i32,
    /// Rollouts to a missing image.
    pub bad_rollouts: usize,
    /// Crash loops the rules cannot explain (the model is asked).
    pub crash_loops: usize,
    /// Bare pods OOM-killed.
    pub bare_pods: usize,
    /// Over how long the storm's failures are spread.
    pub storm_window: Duration,
    /// Where reports go.
    pub report_dir: Option<PathBuf>,
    /// Keep deploy/base's guardrails (budget 30/h, breaker 20 in 5 min, cooldown 10 min) instead of
    /// turning them off: the storm then measures how fast the verdicts beyond them get their outcome.
    pub guardrails: bool,
}

impl StormOptions {
    /// The README's run: 100,000 background pods in 2,000 workloads, a storm of 340 failing workloads.
    pub fn large(exe: PathBuf) -> Self {
        Self {
            exe,
            background_workloads: 2_000,
            pods_per_workload: 50,
            oom_deployments: 150,
            oom_replicas: 5,
            bad_rollouts: 100,
            crash_loops: 40,
            bare_pods: 50,
            storm_window: Duration::from_secs(50),
            report_dir: Some(PathBuf::from("loadtest/reports")),
            guardrails: false,
        }
    }
}

/// One pipeline stage's latencies.
#[derive(Debug, Clone, Default)]
pub struct Latencies(Vec<f64>);

impl Latencies {
    fn push(&mut self, seconds: f64) {
        self.0.push(seconds.max(0.0));
    }

    /// The `p` quantile in seconds (0 when empty).
    pub fn quantile(&self, p: f64) -> f64 {
        let mut values = self.0.clone();
        values.sort_by(f64::total_cmp);
        if values.is_empty() { 0.0 } else { values[((values.len() - 1) as f64 * p).round() as usize] }
    }

    /// How many were measured.
    pub fn count(&self) -> usize {
        self.0.len()
    }
}

/// The remediator's figures over the storm, from its metrics.
#[derive(Debug, Clone, Copy, Default)]
pub struct RemediatorPeaks {
    /// Most verdicts planned and changed at once (bounded by `--concurrency`).
    pub verdicts_in_flight: f64,
    /// Most verifications at once.
    pub verifications_in_flight: f64,
    /// Most API writes in one second.
    pub writes_per_second: f64,
    /// API writes in all.
    pub writes: f64,
}

/// One metric's value summed over the replicas' `/metrics` texts.
fn metric(texts: &[String], name: &str) -> f64 {
    texts
        .iter()
        .flat_map(|t| t.lines())
        .filter_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse::<f64>().ok())
        .sum()
}

/// What the storm showed.
#[derive(Debug, Default)]
pub struct StormReport {
    /// Pods and workloads in the cluster.
    pub pods: usize,
    /// Workloads in the cluster.
    pub workloads: usize,
    /// Workloads made to fail in the storm.
    pub failing_workloads: usize,
    /// Pod status change (seen by the driver's watch) → job stored.
    pub detection: Latencies,
    /// Job → verdict.
    pub diagnosis: Latencies,
    /// Verdict → fix applied (the intent reached applied, deleted or created).
    pub fix: Latencies,
    /// First failure seen → healed outcome.
    pub healed: Latencies,
    /// Verdict → its fix applied, or its outcome when no fix is applied (`suggested`, `denied`, …):
    /// how long a verdict waits for the remediator's answer.
    pub decision: Latencies,
    /// The remediator, sampled every second: peak verdicts in flight (planned and their change made),
    /// peak verifications in flight, peak API writes in one second, and writes in all.
    pub remediator_peaks: RemediatorPeaks,
    /// Jobs published, incidents, verdicts, final outcomes by result.
    pub jobs: usize,
    /// Distinct incidents.
    pub incidents: usize,
    /// Final outcomes by result.
    pub outcomes: BTreeMap<String, usize>,
    /// Model calls KubeSent made (gemini-sim's count).
    pub model_calls: usize,
    /// Model calls the naive approach would have made over the same watch stream.
    pub naive_model_calls: usize,
    /// Peak messages waiting in the jobs and verdicts streams, and the time series (every second).
    pub queue_depth: Vec<(u64, u64)>,
    /// Peak RSS (MiB) and CPU seconds per replica.
    pub processes: BTreeMap<String, (f64, f64)>,
    /// From the first failure to the last outcome.
    pub storm_duration: Duration,
    /// Settings changed from deploy/base.
    pub overrides: Vec<(String, String)>,
    /// KubeSent's record of served revisions at the end: revisions the leading detector tracks, workloads
    /// recorded, and the bucket's bytes.
    pub served: ServedFigures,
    /// Where the markdown report was written.
    pub written: Option<PathBuf>,
}

/// The record of served revisions at the end of the storm.
#[derive(Debug, Clone, Default)]
pub struct ServedFigures {
    /// Revisions the leading detector tracks.
    pub tracked_revisions: f64,
    /// Workloads with a record (keys of the bucket).
    pub records: u64,
    /// Bytes the bucket holds.
    pub bytes: u64,
}

impl StormReport {
    fn to_json(&self, machine: &Value) -> Value {
        let stage = |l: &Latencies| json!({"count": l.count(), "p50": l.quantile(0.5), "p95": l.quantile(0.95), "p99": l.quantile(0.99)});
        json!({
            "scenario": "large cluster storm",
            "machine": machine,
            "pods": self.pods, "workloads": self.workloads, "failing_workloads": self.failing_workloads,
            "detection_seconds": stage(&self.detection),
            "job_to_verdict_seconds": stage(&self.diagnosis),
            "verdict_to_fix_seconds": stage(&self.fix),
            "failure_to_healed_seconds": stage(&self.healed),
            "verdict_to_decision_seconds": stage(&self.decision),
            "remediator": {"peak_verdicts_in_flight": self.remediator_peaks.verdicts_in_flight,
                "peak_verifications_in_flight": self.remediator_peaks.verifications_in_flight,
                "peak_api_writes_per_second": self.remediator_peaks.writes_per_second,
                "api_writes": self.remediator_peaks.writes},
            "jobs": self.jobs, "incidents": self.incidents,
            "jobs_per_incident": self.jobs as f64 / self.incidents.max(1) as f64,
            "model_calls": self.model_calls,
            "model_calls_per_incident": self.model_calls as f64 / self.incidents.max(1) as f64,
            "naive_model_calls": self.naive_model_calls,
            "outcomes": self.outcomes,
            "queue_depth_peak": {"jobs": self.queue_depth.iter().map(|q| q.0).max().unwrap_or(0), "verdicts": self.queue_depth.iter().map(|q| q.1).max().unwrap_or(0)},
            "queue_depth_per_second": self.queue_depth,
            "processes": self.processes.iter().map(|(k, (rss, cpu))| (k.clone(), json!({"peak_rss_mib": rss, "cpu_seconds": cpu}))).collect::<BTreeMap<_, _>>(),
            "storm_seconds": self.storm_duration.as_secs_f64(),
            "served_revisions": {"tracked_revisions": self.served.tracked_revisions,
                "records": self.served.records, "bucket_bytes": self.served.bytes},
            "overrides": self.overrides,
        })
    }
}

impl fmt::Display for StormReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let machine = report::machine();
        writeln!(f, "# Large cluster and failure storm\n")?;
        writeln!(f, "Machine: {}.\n", report::machine_line(&machine))?;
        writeln!(
            f,
            "Cluster: {} pods in {} workloads; storm: {} workloads failing within a minute; from the first failure to the last outcome {:.0} s.",
            self.pods,
            self.workloads,
            self.failing_workloads,
            self.storm_duration.as_secs_f64()
        )?;
        writeln!(
            f,
            "Changed from deploy/base: {}.\n",
            self.overrides.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(", ")
        )?;
        writeln!(f, "| stage | measured | p50 | p95 | p99 |\n|---|---|---|---|---|")?;
        for (name, l) in [
            ("pod status change → job stored", &self.detection),
            ("job → verdict", &self.diagnosis),
            ("verdict → fix applied", &self.fix),
            ("failure → healed", &self.healed),
            ("verdict → fix applied, or its outcome if none", &self.decision),
        ] {
            writeln!(
                f,
                "| {name} | {} | {:.2} s | {:.2} s | {:.2} s |",
                l.count(),
                l.quantile(0.5),
                l.quantile(0.95),
                l.quantile(0.99)
            )?;
        }
        writeln!(
            f,
            "\nJobs {} for {} incidents ({:.2} per incident); final outcomes {:?}.",
            self.jobs,
            self.incidents,
            self.jobs as f64 / self.incidents.max(1) as f64,
            self.outcomes
        )?;
        writeln!(
            f,
            "Model calls: KubeSent {} ({:.2} per incident); the naive approach over the same watch stream {}.",
            self.model_calls,
            self.model_calls as f64 / self.incidents.max(1) as f64,
            self.naive_model_calls
        )?;
        writeln!(
            f,
            "Queue depth peak: {} jobs, {} verdicts.\n",
            self.queue_depth.iter().map(|q| q.0).max().unwrap_or(0),
            self.queue_depth.iter().map(|q| q.1).max().unwrap_or(0)
        )?;
        let peaks = &self.remediator_peaks;
        writeln!(
            f,
            "Remediator: at most {} verdicts planned and changed at once, {} verifications at once; {} API writes, at most {} in one second.\n",
            peaks.verdicts_in_flight, peaks.verifications_in_flight, peaks.writes, peaks.writes_per_second
        )?;
        writeln!(
            f,
            "Record of served revisions: the leading detector tracks {:.0} revisions; {} workloads recorded known-good in {:.1} KiB.\n",
            self.served.tracked_revisions,
            self.served.records,
            self.served.bytes as f64 / 1024.0
        )?;
        writeln!(f, "| process | peak RSS MiB | CPU s |\n|---|---|---|")?;
        for (name, (rss, cpu)) in &self.processes {
            writeln!(f, "| {name} | {rss:.1} | {cpu:.1} |")?;
        }
        Ok(())
    }
}

/// The record of served revisions: the leading detector's tracked revisions, the bucket's keys and bytes.
async fn served_figures(topology: &Topology) -> ServedFigures {
    let mut figures = ServedFigures::default();
    for replica in topology.replicas.iter().filter(|r| r.role == kubesent_common::nats::Role::Detector) {
        let text = replica.process.metrics().await.unwrap_or_default();
        if metric(std::slice::from_ref(&text), "kubesent_detector_leader") >= 1.0 {
            figures.tracked_revisions = metric(&[text], "kubesent_detector_tracked_revisions");
        }
    }
    let stream = format!("KV_{}", proto::served::REVISIONS_BUCKET);
    if let Ok(mut stream) = topology.js.get_stream(stream).await
        && let Ok(info) = stream.info().await
    {
        figures.records = info.state.messages;
        figures.bytes = info.state.bytes;
    }
    figures
}

/// A message seen on the bus: when, its subject, its payload.
type Passed = (Instant, String, Vec<u8>);

/// Background pods per node.
const PODS_PER_NODE: usize = 100;

/// The ReplicaSet of background workload `w` (revision 1 of Deployment `bg{w}`), written straight into the
/// store after its pods (its controller then finds every pod it wants).
fn background_replica_set(w: usize, replicas: usize) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "ReplicaSet",
        "metadata": {"name": format!("bg{w}-7d9c5b7f6"), "namespace": "background", "uid": format!("rs-{w}"),
            "creationTimestamp": "2026-11-01T09:00:00Z",
            "labels": {"app": format!("bg{w}"), "pod-template-hash": "7d9c5b7f6"},
            "annotations": {"deployment.kubernetes.io/revision": "1"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": format!("bg{w}"), "uid": format!("deploy-{w}"), "controller": true}]},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": format!("bg{w}"), "pod-template-hash": "7d9c5b7f6"}},
            "template": {"metadata": {"labels": {"app": format!("bg{w}"), "pod-template-hash": "7d9c5b7f6"}},
                "spec": {"containers": [{"name": "app", "image": "registry.local/background:1", "resources": {"limits": {"memory": "128Mi"}}}]}}},
        "status": {"replicas": replicas, "readyReplicas": replicas, "availableReplicas": replicas, "observedGeneration": 1}
    })
}

/// A healthy pod of background workload `w` (owned by its ReplicaSet), written straight into the store.
fn background_pod(w: usize, i: usize, node: usize) -> Value {
    let name = format!("bg{w}-7d9c5b7f6-{i:05}");
    json!({
        "metadata": {"name": name, "namespace": "background", "uid": format!("00000000-0000-4000-{w:04x}-{i:012}"),
            "creationTimestamp": "2026-11-01T09:00:00Z", "labels": {"app": format!("bg{w}"), "pod-template-hash": "7d9c5b7f6"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": format!("bg{w}-7d9c5b7f6"), "uid": format!("rs-{w}"), "controller": true}]},
        "spec": {"nodeName": format!("sim-node-{node}"), "restartPolicy": "Always",
            "containers": [{"name": "app", "image": "registry.local/background:1", "resources": {"limits": {"memory": "128Mi"}}}]},
        "status": {"phase": "Running", "podIP": "10.244.0.2", "conditions": [{"type": "Ready", "status": "True"}],
            "containerStatuses": [{"name": "app", "image": "registry.local/background:1", "imageID": "registry.local/background@sha256:1",
                "containerID": "containerd://1", "ready": true, "started": true, "restartCount": 0,
                "state": {"running": {"startedAt": "2026-11-01T09:00:03Z"}}}]}
    })
}

fn deployment(name: &str, replicas: i32, image: &str, annotations: Value) -> Deployment {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "shop"},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}, "annotations": annotations},
                "spec": {"containers": [{"name": "app", "image": image, "resources": {"limits": {"memory": "128Mi"}}}]}}}
    }))
    .unwrap_or_default()
}

/// The workload a pod belongs to: `<deployment>-<hash>-<suffix>` → `<deployment>`, a bare pod → itself.
fn workload_of(pod: &str) -> String {
    let parts: Vec<&str> = pod.rsplitn(3, '-').collect();
    if parts.len() == 3 && parts[0].len() == 5 { parts[2].to_owned() } else { pod.to_owned() }
}

/// Whether a pod shows a failure the naive approach would send to a model.
fn naive_failing(pod: &Pod) -> bool {
    pod.status.as_ref().and_then(|s| s.container_statuses.as_ref()).is_some_and(|statuses| {
        statuses.iter().any(|c| {
            let waiting = c.state.as_ref().and_then(|s| s.waiting.as_ref()).and_then(|w| w.reason.as_deref());
            let oom = c.state.as_ref().and_then(|s| s.terminated.as_ref()).and_then(|t| t.reason.as_deref())
                == Some("OOMKilled");
            oom || matches!(waiting, Some("CrashLoopBackOff" | "ImagePullBackOff" | "ErrImagePull"))
        })
    })
}

/// Runs the scenario.
pub async fn run(options: &StormOptions) -> anyhow::Result<StormReport> {
    let gemini = GeminiSim::start(GeminiSimConfig {
        latency: Duration::from_millis(500),
        ..GeminiSimConfig::default()
    })
    .await?;
    let mut overrides = topology::overrides([
        ("KUBESENT_VERIFY_SECONDS", "5".to_owned()),
        ("KUBESENT_MODELS", "gemini-3.5-flash".to_owned()),
        ("KUBESENT_LLM_URL", gemini.url()),
        ("GEMINI_API_KEY", "storm-test-key".to_owned()),
        ("KUBESENT_MODEL_RPM", "600".to_owned()),
        ("KUBESENT_LOG_JSON", "false".to_owned()),
        // Short enough that the healthy background is recorded known-good within the run (the record's
        // size at 100,000 pods is one of the figures).
        ("KUBESENT_KNOWN_GOOD_AFTER", "20s".to_owned()),
    ]);
    if !options.guardrails {
        overrides.extend(topology::overrides([
            ("KUBESENT_MAX_ACTIONS_PER_HOUR", "100000".to_owned()),
            ("KUBESENT_BREAKER_FAILURES", "100000".to_owned()),
            ("KUBESENT_COOLDOWN_MINUTES", "0".to_owned()),
        ]));
    }
    let mut progress = Progress::new("steps", 5);
    progress.update(0, "starting the topology");
    // About 100 pods per node, as on a real cluster (kubelet's max-pods is 110), so that reading one
    // node's pods costs what it would there.
    let background = options.background_workloads * options.pods_per_workload;
    let node_count = (background / PODS_PER_NODE).max(3);
    let mut topology = Topology::start(&TopologyOptions {
        exe: options.exe.clone(),
        overrides: overrides.clone(),
        nodes: (1..=node_count)
            .map(|n| kubesent_kube_sim::nodes::NodeConfig::worker(&format!("sim-node-{n}")))
            .collect(),
        ..TopologyOptions::default()
    })
    .await
    .context("starting the topology")?;
    let mut report = StormReport { overrides, ..StormReport::default() };

    progress.update(1, "filling the cluster");
    let store = &topology.sim.state().store;
    for w in 0..options.background_workloads {
        for i in 0..options.pods_per_workload {
            let pod = background_pod(w, i, (w * options.pods_per_workload + i) % node_count + 1);
            let name = pod["metadata"]["name"].as_str().unwrap_or_default().to_owned();
            store
                .mutate(&PODS, "background", &name, |_| Ok(Mutation::Put(pod.clone())))
                .map_err(|e| anyhow::anyhow!(e.message))?;
        }
        let set = background_replica_set(w, options.pods_per_workload);
        let name = set["metadata"]["name"].as_str().unwrap_or_default().to_owned();
        store
            .mutate(&REPLICASETS, "background", &name, |_| Ok(Mutation::Put(set.clone())))
            .map_err(|e| anyhow::anyhow!(e.message))?;
    }
    let deployments: Api<Deployment> = Api::namespaced(topology.kube.clone(), "shop");
    let pods: Api<Pod> = Api::namespaced(topology.kube.clone(), "shop");
    let post = PostParams::default();
    for r in 0..options.bad_rollouts {
        deployments.create(&post, &deployment(&format!("roll{r}"), 2, GOOD_IMAGE, json!({}))).await?;
    }
    // Wait for the detectors to track every pod (their metric), so the storm is measured on a warm watch.
    let expected_pods = options.background_workloads * options.pods_per_workload;
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        topology.supervise()?;
        let mut tracked = Vec::new();
        for replica in topology.replicas.iter().filter(|r| r.role == kubesent_common::nats::Role::Detector) {
            let metrics = replica.process.metrics().await.unwrap_or_default();
            let count = metrics
                .lines()
                .find_map(|l| l.strip_prefix("kubesent_detector_tracked_pods "))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .unwrap_or(0.0);
            tracked.push(count as usize);
        }
        if tracked.iter().all(|t| *t >= expected_pods) || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    report.pods = expected_pods + options.bad_rollouts * 2;
    report.workloads = options.background_workloads + options.bad_rollouts;

    // Observers: the driver's pod watch, the bus tap, the intents watch, the queue sampler.
    let first_failure: Arc<Mutex<BTreeMap<String, Instant>>> = Arc::default();
    let naive = Arc::new(Mutex::new(0usize));
    let watch = {
        let (first_failure, naive, pods) = (first_failure.clone(), naive.clone(), pods.clone());
        tokio::spawn(async move {
            let Ok(stream) = pods.watch(&WatchParams::default(), "0").await else { return };
            let mut stream = Box::pin(stream);
            while let Some(Ok(event)) = stream.next().await {
                if let WatchEvent::Modified(pod) = event
                    && naive_failing(&pod)
                {
                    *naive.lock().unwrap_or_else(PoisonError::into_inner) += 1;
                    let workload = workload_of(pod.metadata.name.as_deref().unwrap_or_default());
                    first_failure
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .entry(workload)
                        .or_insert_with(Instant::now);
                }
            }
        })
    };
    let bus: Arc<Mutex<Vec<Passed>>> = Arc::default();
    let tap = {
        let bus = bus.clone();
        let mut subscription = topology.js.client().subscribe("kubesent.>").await?;
        tokio::spawn(async move {
            while let Some(message) = subscription.next().await {
                bus.lock().unwrap_or_else(PoisonError::into_inner).push((
                    Instant::now(),
                    message.subject.to_string(),
                    message.payload.to_vec(),
                ));
            }
        })
    };
    let applied: Arc<Mutex<BTreeMap<String, Instant>>> = Arc::default();
    let intents_watch = {
        let applied = applied.clone();
        let bucket = topology.js.get_key_value(proto::INTENTS_BUCKET).await?;
        let mut updates = bucket.watch_all().await?;
        tokio::spawn(async move {
            while let Some(Ok(entry)) = updates.next().await {
                if let Ok(intent) = serde_json::from_slice::<Intent>(&entry.value)
                    && matches!(intent.phase, Phase::Applied | Phase::Deleted | Phase::Created)
                {
                    applied
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .entry(intent.incident.to_string())
                        .or_insert_with(Instant::now);
                }
            }
        })
    };

    // The storm: every failure caused within a minute.
    progress.update(2, "the storm");
    topology.sim.state().registry.set(MISSING_IMAGE, ImageState::Missing);
    let storm_started = Instant::now();
    let oom = json!({"sim.kubesent.io/memory-need": "200Mi"});
    let crash = json!({"sim.kubesent.io/exit-code": "3", "sim.kubesent.io/logs": "starting\nunexpected state 0x2f in the ledger"});
    let patch = Patch::Strategic(
        json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": MISSING_IMAGE}]}}}}),
    );
    // Interleaved, so each kind of failure is spread over the minute.
    let total = options.oom_deployments + options.bad_rollouts + options.crash_loops + options.bare_pods;
    let spacing = options.storm_window / total.max(1) as u32;
    let mut steps = Vec::with_capacity(total);
    for i in 0..total {
        for (kind, count) in [
            (0, options.oom_deployments),
            (1, options.bad_rollouts),
            (2, options.crash_loops),
            (3, options.bare_pods),
        ] {
            if i < count {
                steps.push((kind, i));
            }
        }
    }
    for (kind, i) in steps {
        match kind {
            0 => {
                let oom_deployment =
                    deployment(&format!("oom{i}"), options.oom_replicas, GOOD_IMAGE, oom.clone());
                deployments.create(&post, &oom_deployment).await?;
            }
            1 => {
                deployments.patch(&format!("roll{i}"), &PatchParams::default(), &patch).await?;
            }
            2 => {
                deployments
                    .create(&post, &deployment(&format!("crash{i}"), 1, GOOD_IMAGE, crash.clone()))
                    .await?;
            }
            _ => {
                let pod: Pod = serde_json::from_value(json!({
                    "metadata": {"name": format!("bare{i}"), "namespace": "shop", "annotations": oom},
                    "spec": {"containers": [{"name": "app", "image": GOOD_IMAGE, "resources": {"limits": {"memory": "128Mi"}}}]}
                }))?;
                pods.create(&post, &pod).await?;
            }
        }
        tokio::time::sleep(spacing).await;
    }
    report.failing_workloads =
        options.oom_deployments + options.bad_rollouts + options.crash_loops + options.bare_pods;
    report.pods +=
        options.oom_deployments * options.oom_replicas as usize + options.crash_loops + options.bare_pods;
    report.workloads += options.oom_deployments + options.crash_loops + options.bare_pods;

    // Until every failing workload has a final outcome (or ten minutes), sampling the queues.
    progress.update(3, "until every failure has its outcome");
    let jobs_stream = topology.js.get_stream(proto::JOBS_STREAM).await?;
    let verdicts_stream = topology.js.get_stream(proto::VERDICTS_STREAM).await?;
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut last_outcome = storm_started;
    let mut writes_before: Option<f64> = None;
    loop {
        topology.supervise()?;
        let mut texts = Vec::new();
        for replica in topology.replicas.iter().filter(|r| r.role == kubesent_common::nats::Role::Remediator)
        {
            texts.push(replica.process.metrics().await.unwrap_or_default());
        }
        let peaks = &mut report.remediator_peaks;
        peaks.verdicts_in_flight =
            peaks.verdicts_in_flight.max(metric(&texts, "kubesent_remediator_verdicts_in_flight"));
        peaks.verifications_in_flight =
            peaks.verifications_in_flight.max(metric(&texts, "kubesent_remediator_verifications_in_flight"));
        let writes = metric(&texts, "kubesent_remediator_api_writes_total");
        if let Some(before) = writes_before {
            peaks.writes_per_second = peaks.writes_per_second.max(writes - before);
        }
        writes_before = Some(writes);
        peaks.writes = writes;
        let jobs = jobs_stream.clone().info().await.map(|i| i.state.messages).unwrap_or(0);
        let verdicts = verdicts_stream.clone().info().await.map(|i| i.state.messages).unwrap_or(0);
        report.queue_depth.push((jobs, verdicts));
        let finished: usize = {
            let bus = bus.lock().unwrap_or_else(PoisonError::into_inner);
            let mut done = std::collections::BTreeSet::new();
            for (at, subject, payload) in bus.iter().filter(|(_, s, _)| s.starts_with("kubesent.outcomes.")) {
                if let Ok(outcome) = proto::decode::<Outcome>(payload)
                    && outcome.result != OutcomeResult::AwaitingApproval
                {
                    done.insert(workload_of(&outcome.pod.name));
                    last_outcome = last_outcome.max(*at);
                    let _ = subject;
                }
            }
            done.len()
        };
        if finished >= report.failing_workloads || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    report.storm_duration = last_outcome.saturating_duration_since(storm_started);

    // The figures.
    progress.update(4, "figures");
    let bus = bus.lock().unwrap_or_else(PoisonError::into_inner).clone();
    let first_failure = first_failure.lock().unwrap_or_else(PoisonError::into_inner).clone();
    let applied = applied.lock().unwrap_or_else(PoisonError::into_inner).clone();
    let mut job_at: BTreeMap<String, (Instant, String)> = BTreeMap::new();
    let mut verdict_at: BTreeMap<String, Instant> = BTreeMap::new();
    let mut incidents = std::collections::BTreeSet::new();
    for (at, subject, payload) in &bus {
        if subject.starts_with("kubesent.jobs.") {
            if let Ok(job) = proto::decode::<FailureJob>(payload) {
                report.jobs += 1;
                incidents.insert(job.incident.to_string());
                let workload = job.key.workload.name.clone();
                if let Some(seen) = first_failure.get(&workload) {
                    report.detection.push(at.saturating_duration_since(*seen).as_secs_f64());
                }
                job_at.entry(job.incident.to_string()).or_insert((*at, workload));
            }
        } else if subject.starts_with("kubesent.verdicts.") {
            if let Ok(verdict) = proto::decode::<proto::Verdict>(payload) {
                let incident = verdict.incident.to_string();
                if let Some((job, _)) = job_at.get(&incident) {
                    report.diagnosis.push(at.saturating_duration_since(*job).as_secs_f64());
                }
                verdict_at.entry(incident.clone()).or_insert(*at);
                if let Some(fixed) = applied.get(&incident) {
                    report.fix.push(fixed.saturating_duration_since(*at).as_secs_f64());
                }
            }
        } else if subject.starts_with("kubesent.outcomes.")
            && let Ok(outcome) = proto::decode::<Outcome>(payload)
            && outcome.result != OutcomeResult::AwaitingApproval
        {
            *report.outcomes.entry(outcome.result.as_str().to_owned()).or_default() += 1;
            if let Some(verdict) = verdict_at.get(outcome.incident.as_str()) {
                let answered = applied.get(outcome.incident.as_str()).map_or(*at, |fixed| (*fixed).min(*at));
                report.decision.push(answered.saturating_duration_since(*verdict).as_secs_f64());
            }
            if outcome.result == OutcomeResult::Healed
                && let Some(seen) = first_failure.get(&workload_of(&outcome.pod.name))
            {
                report.healed.push(at.saturating_duration_since(*seen).as_secs_f64());
            }
        }
    }
    report.incidents = incidents.len();
    report.model_calls = gemini.requests().len();
    report.naive_model_calls = *naive.lock().unwrap_or_else(PoisonError::into_inner);
    topology.supervise()?;
    report.served = served_figures(&topology).await;
    for replica in &topology.replicas {
        report
            .processes
            .insert(replica.identity.clone(), (replica.peak_rss as f64 / 1048576.0, replica.cpu_seconds()));
    }
    progress.update(5, "done");
    progress.finish();
    watch.abort();
    tap.abort();
    intents_watch.abort();
    if let Some(dir) = &options.report_dir {
        let machine = report::machine();
        report.written = Some(report::write(dir, "storm", &report.to_json(&machine), &report.to_string())?);
    }
    topology.stop().await;
    gemini.shutdown().await;
    Ok(report)
}
