//! The chaos scenario: failures keep coming (bare pods OOM-killed, Deployments OOM-killed, rollouts to a
//! missing image) while faults are injected one after another: `kill -9` and graceful stops of the
//! detector leader, of diagnosers mid-job and of the remediator leader (also exactly while a force
//! replace has deleted its pod and not yet created the replacement, and while a rollout is verified), a
//! NATS server killed and restarted, the whole NATS cluster restarted, apiserver error bursts, 429s,
//! latency, dropped watches, a kube-sim restart, a replica partitioned from the apiserver, a leader
//! stopped (SIGSTOP) past its lease. Processes that die are started again, as Kubernetes would.
//!
//! Measured as it goes: each leader failover (graceful ≤ 2 s, crash ≤ lease + 2 s) and, after each crash
//! of the remediator leader, that every intent it left unfinished gets its outcome within lease + verify
//! window + 5 s. At the end the invariant checker reads the outside world.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    path::PathBuf,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use k8s_openapi::api::{apps::v1::Deployment, core::v1::Pod};
use kube::{
    Api,
    api::{Patch, PatchParams, PostParams},
};
use kubesent_common::nats::Role;
use kubesent_kube_sim::ImageState;
use kubesent_proto::intent::{Intent, Phase};
use kubesent_proto::{self as proto, IncidentId, MemoryQuantity, OutcomeResult};
use serde_json::{Value, json};

use super::{
    invariants::{self, Expectations, Tap, Violation, World},
    report::{self, Progress},
    topology::{self, Topology, TopologyOptions},
};

/// Lease duration in the campaign (deploy/base: 15 s); shorter so ≥ 500 faults fit in 30 minutes.
const LEASE_SECONDS: u64 = 5;
/// Verify window in the campaign (deploy/base: 120 s).
const VERIFY_SECONDS: u64 = 3;
/// The longest one fault may take (injecting it and waiting for what it measures).
const FAULT_LIMIT: Duration = Duration::from_secs(300);
/// How often the generator causes a new failure.
const FAILURE_EVERY: Duration = Duration::from_secs(3);
const GOOD_IMAGE: &str = "registry.local/shop/app:1.0";
const MISSING_IMAGE: &str = "registry.local/shop/app:404";

/// What to run.
#[derive(Debug, Clone)]
pub struct ChaosOptions {
    /// The `kubesent` executable.
    pub exe: PathBuf,
    /// Faults to inject.
    pub faults: usize,
    /// Seed of the fault sequence.
    pub seed: u64,
    /// Where the JSON and markdown reports go (none when `None`).
    pub report_dir: Option<PathBuf>,
    /// Only the faults whose name contains this (every fault when `None`): to repeat one kind of fault
    /// many times, e.g. `remediator leader`.
    pub only: Option<String>,
    /// Inject every kind of fault once, in a seeded order, before any is repeated (the short campaign
    /// CI runs); otherwise kinds are drawn by weight.
    pub every_kind_first: bool,
    /// Where the services' logs go and stay (a temporary directory, removed at the end, when `None`).
    pub dir: Option<PathBuf>,
}

/// Every kind of fault the campaign injects.
pub fn fault_kinds() -> Vec<&'static str> {
    FAULTS.iter().map(|(name, _)| *name).chain([STALL]).collect()
}

/// One leader failover.
#[derive(Debug, Clone)]
pub struct Failover {
    /// Detector or remediator.
    pub role: &'static str,
    /// Whether the leader was stopped gracefully (SIGTERM) or crashed (SIGKILL).
    pub graceful: bool,
    /// For a crash: whether its pod was lost (the standby took over) rather than restarted.
    pub lost: bool,
    /// From the signal to another replica holding the lease.
    pub took: Duration,
}

/// What the campaign did and found.
#[derive(Debug, Default)]
pub struct ChaosReport {
    /// Faults injected, by kind.
    pub faults: BTreeMap<&'static str, usize>,
    /// Wall time spent on each kind of fault (injecting it and waiting for what it measures).
    pub fault_time: BTreeMap<&'static str, Duration>,
    /// Failures the generator caused.
    pub failures: usize,
    /// Final outcomes, by result.
    pub outcomes: BTreeMap<String, usize>,
    /// What the remediators' own metrics counted over every incarnation (outcomes by result, SLI
    /// observations by kind), checked against the audit log.
    pub counted: BTreeMap<String, f64>,
    /// Leader failovers measured.
    pub failovers: Vec<Failover>,
    /// Intents left unfinished by a crashed remediator leader, and how long each took to its outcome.
    pub takeovers: Vec<Duration>,
    /// Process restarts, by replica.
    pub restarts: BTreeMap<String, u32>,
    /// Peak RSS (MiB) and CPU seconds, by replica.
    pub processes: BTreeMap<String, (f64, f64)>,
    /// Broken invariants.
    pub violations: Vec<Violation>,
    /// Wall time.
    pub elapsed: Duration,
    /// The settings changed from deploy/base.
    pub overrides: Vec<(String, String)>,
    /// Where the markdown report was written.
    pub written: Option<PathBuf>,
}

impl ChaosReport {
    /// Faults injected in all.
    pub fn total_faults(&self) -> usize {
        self.faults.values().sum()
    }

    fn to_json(&self, machine: &Value) -> Value {
        let percentile = |values: &mut Vec<f64>, p: f64| -> f64 {
            values.sort_by(f64::total_cmp);
            if values.is_empty() { 0.0 } else { values[((values.len() - 1) as f64 * p).round() as usize] }
        };
        let mut graceful: Vec<f64> =
            self.failovers.iter().filter(|f| f.graceful).map(|f| f.took.as_secs_f64()).collect();
        let seconds = |keep: &dyn Fn(&Failover) -> bool| -> Vec<f64> {
            self.failovers.iter().filter(|f| keep(f)).map(|f| f.took.as_secs_f64()).collect()
        };
        let mut crash = seconds(&|f| !f.graceful && !f.lost);
        let mut lost = seconds(&|f| f.lost);
        let mut takeovers: Vec<f64> = self.takeovers.iter().map(Duration::as_secs_f64).collect();
        json!({
            "scenario": "chaos",
            "machine": machine,
            "elapsed_seconds": self.elapsed.as_secs_f64(),
            "faults": self.faults,
            "fault_seconds": self.fault_time.iter().map(|(k, d)| (*k, d.as_secs_f64())).collect::<BTreeMap<_, _>>(),
            "faults_total": self.total_faults(),
            "failures": self.failures,
            "outcomes": self.outcomes,
            "counted_by_the_remediators": self.counted,
            "failover_graceful_seconds": {"count": graceful.len(), "p50": percentile(&mut graceful, 0.5), "max": graceful.last().copied().unwrap_or(0.0)},
            "failover_crash_restarted_seconds": {"count": crash.len(), "p50": percentile(&mut crash, 0.5), "max": crash.last().copied().unwrap_or(0.0)},
            "failover_crash_pod_lost_seconds": {"count": lost.len(), "p50": percentile(&mut lost, 0.5), "max": lost.last().copied().unwrap_or(0.0)},
            "takeover_outcome_seconds": {"count": takeovers.len(), "p50": percentile(&mut takeovers, 0.5), "max": takeovers.last().copied().unwrap_or(0.0)},
            "restarts": self.restarts,
            "processes": self.processes.iter().map(|(k, (rss, cpu))| (k.clone(), json!({"peak_rss_mib": rss, "cpu_seconds": cpu}))).collect::<BTreeMap<_, _>>(),
            "overrides": self.overrides,
            "violations": invariants::violations_json(&self.violations),
        })
    }
}

impl fmt::Display for ChaosReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let json = self.to_json(&report::machine());
        writeln!(f, "# Chaos campaign\n")?;
        writeln!(
            f,
            "Machine: {}. Wall time {:.0} s.\n",
            report::machine_line(&json["machine"]),
            self.elapsed.as_secs_f64()
        )?;
        writeln!(
            f,
            "Changed from deploy/base (to fit the campaign's time): {}.\n",
            self.overrides.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(", ")
        )?;
        writeln!(f, "| fault | injected | wall time s |\n|---|---|---|")?;
        for (kind, count) in &self.faults {
            let seconds = self.fault_time.get(kind).map_or(0.0, Duration::as_secs_f64);
            writeln!(f, "| {kind} | {count} | {seconds:.0} |")?;
        }
        writeln!(f, "| **all** | **{}** | |\n", self.total_faults())?;
        writeln!(f, "Failures caused: {}; final outcomes: {:?}.\n", self.failures, self.outcomes)?;
        let counted: Vec<String> = self
            .counted
            .iter()
            .filter(|(_, v)| **v > 0.0)
            .map(|(series, v)| format!("{}={v}", series.trim_start_matches("kubesent_remediator_")))
            .collect();
        writeln!(
            f,
            "Counted by the remediators' own metrics over every incarnation (never more than the audit log): {}.\n",
            counted.join(", ")
        )?;
        for (name, key) in [
            ("graceful stop: leadership back", "failover_graceful_seconds"),
            ("crash, container restarted: leadership back", "failover_crash_restarted_seconds"),
            ("crash, pod lost: the standby leads", "failover_crash_pod_lost_seconds"),
            ("remediator crash: every unfinished intent's outcome", "takeover_outcome_seconds"),
        ] {
            let v = &json[key];
            writeln!(
                f,
                "- {name}: {} measured, p50 {:.2} s, max {:.2} s",
                v["count"],
                v["p50"].as_f64().unwrap_or(0.0),
                v["max"].as_f64().unwrap_or(0.0)
            )?;
        }
        writeln!(f, "\n| process | restarts | peak RSS MiB | CPU s |\n|---|---|---|---|")?;
        for (name, (rss, cpu)) in &self.processes {
            writeln!(
                f,
                "| {name} | {} | {rss:.1} | {cpu:.1} |",
                self.restarts.get(name).copied().unwrap_or(0)
            )?;
        }
        invariants::write_violations(f, &self.violations)
    }
}

/// A small deterministic generator (xorshift64*), so a seed repeats a campaign.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// The faults, with their weights.
const FAULTS: [(&str, u64); 16] = [
    ("kill -9 detector leader", 5),
    ("stop detector leader", 3),
    ("kill -9 a diagnoser", 10),
    ("stop a diagnoser", 4),
    ("kill -9 remediator leader", 5),
    ("kill -9 remediator leader between delete and create", 4),
    ("kill -9 remediator leader during a rollout verification", 4),
    ("stop remediator leader", 3),
    ("kill and restart one NATS server", 4),
    ("restart the whole NATS cluster", 1),
    ("apiserver error burst", 7),
    ("apiserver 429s", 7),
    ("apiserver latency", 5),
    ("drop every watch", 8),
    ("restart kube-sim", 2),
    ("partition a replica from the apiserver", 3),
];
/// SIGSTOP of a leader past its lease: rare, it takes a lease and more.
const STALL: &str = "stall a leader past its lease (SIGSTOP, SIGCONT)";

/// Creates failures until `stop`: one every [`FAILURE_EVERY`], cycling through a bare pod OOM-killed (force
/// replace on Kubernetes 1.32), a Deployment OOM-killed (template patch and rollout) and a rollout to a
/// missing image (rollback). API calls are retried through the injected apiserver faults.
async fn generate(
    kube: kube::Client,
    created: Arc<Mutex<BTreeSet<(String, String)>>>,
    stop: tokio_util::sync::CancellationToken,
) {
    let pods: Api<Pod> = Api::namespaced(kube.clone(), "shop");
    let deployments: Api<Deployment> = Api::namespaced(kube.clone(), "shop");
    let mut index = 0u64;
    loop {
        let name = match index % 3 {
            0 => format!("b{index}"),
            1 => format!("d{index}"),
            _ => format!("r{index}"),
        };
        let kind = index % 3;
        let (pods, deployments, created, name_for_task) =
            (pods.clone(), deployments.clone(), created.clone(), name.clone());
        tokio::spawn(async move {
            let name = name_for_task;
            let need = json!({"sim.kubesent.io/memory-need": "200Mi"});
            let post = PostParams::default();
            let patch = PatchParams::default();
            let result: anyhow::Result<()> = async {
                match kind {
                    0 => {
                        let pod: Pod = serde_json::from_value(json!({
                            "metadata": {"name": name, "namespace": "shop", "labels": {"app": name}, "annotations": need},
                            "spec": {"containers": [{"name": "app", "image": GOOD_IMAGE, "resources": {"limits": {"memory": "128Mi"}}}]}
                        }))?;
                        retry(|| pods.create(&post, &pod)).await?;
                    }
                    1 => {
                        let oom = deployment(&name, need.clone());
                        retry(|| deployments.create(&post, &oom)).await?;
                    }
                    _ => {
                        let healthy = deployment(&name, json!({}));
                        retry(|| deployments.create(&post, &healthy)).await?;
                        // Revision 1 runs ready, then the rollout to a missing image.
                        let started = Instant::now();
                        loop {
                            let ready = retry(|| deployments.get(&name)).await?.status.and_then(|s| s.ready_replicas);
                            if ready == Some(2) || started.elapsed() > Duration::from_secs(120) {
                                break;
                            }
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                        let update = Patch::Strategic(json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": MISSING_IMAGE}]}}}}));
                        retry(|| deployments.patch(&name, &patch, &update)).await?;
                    }
                }
                Ok(())
            }
            .await;
            if result.is_ok() {
                created.lock().unwrap_or_else(PoisonError::into_inner).insert(("shop".to_owned(), name));
            }
        });
        index += 1;
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(FAILURE_EVERY) => {}
        }
    }
}

fn deployment(name: &str, annotations: Value) -> Deployment {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "shop"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}, "annotations": annotations},
                "spec": {"containers": [{"name": "app", "image": GOOD_IMAGE, "resources": {"limits": {"memory": "128Mi"}}}]}}}
    }))
    .unwrap_or_default()
}

/// Retries an API call through injected faults (errors, 429s) for up to a minute.
pub(crate) async fn retry<T, F, Fut>(call: F) -> anyhow::Result<T>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, kube::Error>>,
{
    let started = Instant::now();
    loop {
        match call().await {
            Ok(value) => return Ok(value),
            Err(kube::Error::Api(status)) if status.is_already_exists() || status.code == 404 => {
                return Err(anyhow::anyhow!("{}", status.message));
            }
            Err(error) if started.elapsed() > Duration::from_secs(60) => return Err(error.into()),
            Err(_) => tokio::time::sleep(Duration::from_millis(300)).await,
        }
    }
}

/// Waits until a live replica holds `role`'s lease again; returns how long it took from `since`.
/// Replicas that die meanwhile are started again, as they would be.
async fn failover(
    topology: &mut Topology,
    role: Role,
    last_renewal: Option<String>,
    since: Instant,
    limit: Duration,
) -> Option<Duration> {
    while since.elapsed() < limit {
        let _ = topology.supervise();
        // Leadership is back when a live replica renews the lease: the standby, or the crashed replica's
        // restarted container (same pod name, so it takes its own lease back, as in a cluster).
        if let Ok(Some((holder, renewed))) = topology.leader(role).await
            && !holder.is_empty()
            && renewed != last_renewal
        {
            return Some(since.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

/// Unfinished intents in the bucket (phase and incident), read by the observer.
async fn unfinished(topology: &Topology) -> Vec<Intent> {
    let Ok(bucket) = topology.js.get_key_value(proto::INTENTS_BUCKET).await else { return Vec::new() };
    let Ok(mut keys) = bucket.keys().await else { return Vec::new() };
    let mut open = Vec::new();
    while let Some(Ok(key)) = futures::StreamExt::next(&mut keys).await {
        if key.starts_with("inc-")
            && let Ok(Some(value)) = bucket.get(&key).await
            && let Ok(intent) = serde_json::from_slice::<Intent>(&value)
            && intent.phase != Phase::Done
        {
            open.push(intent);
        }
    }
    open
}

/// The time each incident's final outcome was published, as far as the audit stream shows now.
async fn final_outcome_times(topology: &Topology) -> BTreeMap<IncidentId, jiff::Timestamp> {
    let mut times = BTreeMap::new();
    let Ok(stream) = topology.js.get_stream(proto::OUTCOMES_STREAM).await else { return times };
    let Ok(info) = stream.clone().info().await.map(|i| i.state.clone()) else { return times };
    for sequence in info.first_sequence..=info.last_sequence {
        if let Ok(message) = stream.get_raw_message(sequence).await
            && let Ok(outcome) = proto::decode::<proto::Outcome>(&message.payload)
            && outcome.result != OutcomeResult::AwaitingApproval
        {
            times.entry(outcome.incident).or_insert(outcome.at);
        }
    }
    times
}

/// Runs the campaign.
pub async fn run(options: &ChaosOptions) -> anyhow::Result<ChaosReport> {
    let started = Instant::now();
    let overrides = topology::overrides([
        ("KUBESENT_LEASE_SECONDS", LEASE_SECONDS.to_string()),
        ("KUBESENT_VERIFY_SECONDS", VERIFY_SECONDS.to_string()),
        ("KUBESENT_MAX_ACTIONS_PER_HOUR", "100000".to_owned()),
        ("KUBESENT_BREAKER_FAILURES", "100000".to_owned()),
        ("KUBESENT_LOG_JSON", "false".to_owned()),
        // Rollbacks are only announced (shadow) and followed up through the faults, every second.
        ("KUBESENT_FOLLOWUP_EVERY", "1s".to_owned()),
    ]);
    let mut topology = Topology::start(&TopologyOptions {
        exe: options.exe.clone(),
        kubernetes_minor: 32,
        overrides: overrides.clone(),
        dir: options.dir.clone(),
        autonomy_policy: Some(format!(
            "{}classes:\n  image-rollback: shadow\n",
            topology::DEPLOY_AUTONOMY_POLICY
        )),
        ..TopologyOptions::default()
    })
    .await
    .context("starting the topology")?;
    topology.sim.state().registry.set(MISSING_IMAGE, ImageState::Missing);
    let tap = Tap::start(&topology.js.client()).await?;
    let created = Arc::new(Mutex::new(BTreeSet::new()));
    let stop = tokio_util::sync::CancellationToken::new();
    let generator = tokio::spawn(generate(topology.kube.clone(), created.clone(), stop.clone()));

    let mut report = ChaosReport { overrides: overrides.clone(), ..ChaosReport::default() };
    let mut rng = Rng(options.seed.max(1));
    let faults: Vec<(&str, u64)> = FAULTS
        .iter()
        .copied()
        .filter(|(name, _)| options.only.as_deref().is_none_or(|only| name.contains(only)))
        .collect();
    anyhow::ensure!(!faults.is_empty(), "no fault's name contains {:?}", options.only);
    let stall = options.only.as_deref().is_none_or(|only| STALL.contains(only));
    let total_weight: u64 = faults.iter().map(|(_, w)| w).sum();
    let mut progress = Progress::new("faults", options.faults);
    let lease = Duration::from_secs(LEASE_SECONDS);
    // Every kind once first, when asked, in a seeded order.
    let mut first_round: Vec<&str> = if options.every_kind_first {
        let mut kinds: Vec<&str> = faults.iter().map(|(name, _)| *name).collect();
        if stall {
            kinds.push(STALL);
        }
        for i in (1..kinds.len()).rev() {
            kinds.swap(i, rng.below(i as u64 + 1) as usize);
        }
        kinds
    } else {
        Vec::new()
    };
    for done in 0..options.faults {
        topology.supervise()?;
        topology.sample_counts().await;
        // Every kind once first (when asked), then a stall every 50 faults; otherwise by weight.
        let fault = if let Some(next) = first_round.pop() {
            next
        } else if stall && done % 50 == 49 {
            STALL
        } else {
            let mut pick = rng.below(total_weight);
            faults
                .iter()
                .find(|(_, w)| {
                    if pick < *w {
                        true
                    } else {
                        pick -= w;
                        false
                    }
                })
                .map_or(faults[0].0, |(f, _)| *f)
        };
        progress.update(done, fault);
        let injected = Instant::now();
        // Every fault ends by itself within a few leases; one that does not is a hang to report, not
        // to wait on.
        tokio::time::timeout(FAULT_LIMIT, inject(&mut topology, fault, &mut rng, &mut report, lease, &tap))
            .await
            .map_err(|_| anyhow::anyhow!("fault {done} ({fault}) did not finish within {FAULT_LIMIT:?}"))??;
        *report.faults.entry(fault).or_default() += 1;
        // Between faults, a moment for the pipeline (and the restarted processes) to work.
        let pause = Duration::from_millis(100 + rng.below(400));
        let until = Instant::now() + pause;
        while Instant::now() < until {
            topology.supervise()?;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        *report.fault_time.entry(fault).or_default() += injected.elapsed();
    }
    progress.update(options.faults, "draining");
    progress.finish();

    // Heal everything, stop causing failures, and let every failure reach its outcome.
    stop.cancel();
    let _ = generator.await;
    heal(&mut topology).await?;
    let expected_failures = created.lock().unwrap_or_else(PoisonError::into_inner).clone();
    let deadline = Instant::now() + Duration::from_secs(300);
    let expectations = Expectations {
        failures: expected_failures.clone(),
        images: [GOOD_IMAGE, MISSING_IMAGE].into_iter().map(str::to_owned).collect(),
        max_memory: MemoryQuantity::from_mib(8 * 1024),
    };
    let tokens: Vec<String> =
        topology.replicas.iter().filter(|r| r.role == Role::Remediator).map(|r| r.token.clone()).collect();
    let world = loop {
        topology.supervise()?;
        // JetStream may still be electing leaders after the last fault (a server restarted): reading
        // the world is tried again until the deadline.
        let world = match World::read(&topology.js, &topology.kube, topology.sim.requests()).await {
            Ok(world) => world,
            Err(error) if Instant::now() < deadline => {
                tracing::debug!(%error, "reading the outside world failed; trying again");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(error) => return Err(error.context("reading the outside world after the faults")),
        };
        let missing = invariants::check(&world, &expectations, &tokens, &tap)
            .iter()
            .any(|v| v.invariant == "no job lost");
        if !missing || Instant::now() > deadline {
            break world;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    report.violations.extend(invariants::check(&world, &expectations, &tokens, &tap));
    // Verdicts handed back by replicas that died come back and are answered again: once none is left,
    // the remediators' own counts must still show each incident once.
    if !topology.verdicts_settled(Duration::from_secs(120)).await {
        tracing::warn!(
            "verdicts still pending after two minutes; counting what the remediators counted so far"
        );
    }
    topology.sample_counts().await;
    let world = World::read(&topology.js, &topology.kube, topology.sim.requests()).await.unwrap_or(world);
    report.counted = topology.counts();
    report.violations.extend(invariants::check_counts(&world, &report.counted));
    report.failures = expected_failures.len();
    for (_, outcomes) in world.finals() {
        if let Some(first) = outcomes.first() {
            *report.outcomes.entry(first.result.as_str().to_owned()).or_default() += 1;
        }
    }
    topology.supervise()?;
    for replica in &topology.replicas {
        report.restarts.insert(replica.identity.clone(), replica.restarts);
        report
            .processes
            .insert(replica.identity.clone(), (replica.peak_rss as f64 / 1048576.0, replica.cpu_seconds()));
    }
    report.elapsed = started.elapsed();
    if let Some(dir) = &options.report_dir {
        let machine = report::machine();
        report.written = Some(report::write(dir, "chaos", &report.to_json(&machine), &report.to_string())?);
    }
    topology.stop().await;
    Ok(report)
}

/// Lifts every fault: apiserver faults off, partitions healed, stopped processes continued, every NATS
/// server up, every process running.
async fn heal(topology: &mut Topology) -> anyhow::Result<()> {
    let faults = &topology.sim.state().faults;
    faults.set_error_rate(0.0);
    faults.set_latency(Duration::ZERO);
    faults.throttle(0, 0);
    for replica in &topology.replicas {
        faults.heal(&replica.token);
    }
    topology.continue_all()?;
    topology.nats.start_all().await?;
    topology.supervise()?;
    Ok(())
}

/// Injects one fault and waits for what it measures.
async fn inject(
    topology: &mut Topology,
    fault: &str,
    rng: &mut Rng,
    report: &mut ChaosReport,
    lease: Duration,
    tap: &Tap,
) -> anyhow::Result<()> {
    let pick = |topology: &Topology, role: Role, rng: &mut Rng| -> Option<String> {
        let candidates: Vec<&str> = topology
            .replicas
            .iter()
            .filter(|r| r.role == role && !r.stopped)
            .map(|r| r.identity.as_str())
            .collect();
        (!candidates.is_empty()).then(|| candidates[rng.below(candidates.len() as u64) as usize].to_owned())
    };
    match fault {
        "kill -9 detector leader"
        | "stop detector leader"
        | "kill -9 remediator leader"
        | "stop remediator leader"
        | "kill -9 remediator leader between delete and create"
        | "kill -9 remediator leader during a rollout verification" => {
            let role = if fault.contains("detector") { Role::Detector } else { Role::Remediator };
            let graceful = fault.starts_with("stop");
            if fault.contains("between delete and create") {
                wait_for_phase(topology, Phase::Deleted, Duration::from_secs(8)).await;
            } else if fault.contains("rollout verification") {
                wait_for_phase(topology, Phase::Applied, Duration::from_secs(8)).await;
            }
            // A failover is measured with a standby there to take over: every replica of the role running
            // and ready (as after a pod restart in a cluster).
            topology.wait_ready(role, Duration::from_secs(60)).await?;
            let Some((leader, last_renewal)) = topology.leader(role).await? else { return Ok(()) };
            if topology.replicas.iter().all(|r| r.identity != leader) {
                return Ok(());
            }
            let open = if role == Role::Remediator { unfinished(topology).await } else { Vec::new() };
            // A crash is a container restart half the time (the pod comes back under its name and takes
            // its lease back) and a lost pod the other half (the standby must take over once the lease
            // expires).
            let lost = !graceful && rng.below(2) == 0;
            if let Some(replica) = topology.replica_mut(&leader) {
                replica.held = lost;
            }
            let since = Instant::now();
            topology.sample_counts().await;
            topology.signal(&leader, if graceful { "TERM" } else { "KILL" })?;
            let limit = if graceful { Duration::from_secs(2) } else { lease + Duration::from_secs(2) };
            let restored =
                failover(topology, role, last_renewal, since, limit + Duration::from_secs(10)).await;
            if let Some(replica) = topology.replica_mut(&leader) {
                replica.held = false;
            }
            match restored {
                Some(took) => {
                    if took > limit {
                        report.violations.push(Violation {
                            invariant: "failover in time",
                            detail: format!(
                                "{} failover after {fault} took {took:?} (limit {limit:?})",
                                role.as_str()
                            ),
                            history: Vec::new(),
                        });
                    }
                    report.failovers.push(Failover { role: role.as_str(), graceful, lost, took });
                }
                None => report.violations.push(Violation {
                    invariant: "failover in time",
                    detail: format!("no {} took over after {fault}", role.as_str()),
                    history: Vec::new(),
                }),
            }
            if role == Role::Remediator && !graceful && !open.is_empty() {
                // Every intent the crashed leader left must get its outcome within lease + verify + 5 s.
                let limit = lease + Duration::from_secs(VERIFY_SECONDS + 5);
                let kill_time = jiff::Timestamp::now()
                    - jiff::SignedDuration::try_from(since.elapsed()).unwrap_or_default();
                let wanted: BTreeSet<IncidentId> = open.iter().map(|i| i.incident.clone()).collect();
                let mut times = BTreeMap::new();
                while since.elapsed() < limit + Duration::from_secs(30) {
                    topology.supervise()?;
                    times = final_outcome_times(topology).await;
                    if wanted.iter().all(|i| times.contains_key(i)) {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                for incident in &wanted {
                    match times.get(incident) {
                        Some(at) => {
                            let took = at.duration_since(kill_time).unsigned_abs();
                            report.takeovers.push(took);
                            if took > limit {
                                report.violations.push(Violation {
                                    invariant: "outcome within lease + verify + 5 s of a remediator crash",
                                    detail: format!(
                                        "{incident} finished {took:?} after the crash (limit {limit:?})"
                                    ),
                                    history: tap.history(incident.as_str()),
                                });
                            }
                        }
                        None => report.violations.push(Violation {
                            invariant: "outcome within lease + verify + 5 s of a remediator crash",
                            detail: format!(
                                "{incident} has no outcome {:?} after the crash",
                                since.elapsed()
                            ),
                            history: tap.history(incident.as_str()),
                        }),
                    }
                }
            }
        }
        "kill -9 a diagnoser" | "stop a diagnoser" => {
            if let Some(identity) = pick(topology, Role::Diagnoser, rng) {
                topology.sample_counts().await;
                topology.signal(&identity, if fault.starts_with("stop") { "TERM" } else { "KILL" })?;
            }
        }
        "kill and restart one NATS server" => {
            let index = rng.below(topology.nats.size() as u64) as usize;
            topology.nats.kill(index).await;
            tokio::time::sleep(Duration::from_millis(1000 + rng.below(3000))).await;
            topology.nats.start_node(index).await?;
        }
        "restart the whole NATS cluster" => {
            topology.nats.stop_all().await;
            tokio::time::sleep(Duration::from_secs(1)).await;
            topology.nats.start_all().await?;
            // Let JetStream elect its leaders before the next fault: every stream answers again.
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(60) {
                let mut answering = 0;
                for stream in [proto::JOBS_STREAM, proto::VERDICTS_STREAM, proto::OUTCOMES_STREAM] {
                    if let Ok(mut stream) = topology.js.get_stream(stream).await
                        && stream.info().await.is_ok()
                    {
                        answering += 1;
                    }
                }
                if answering == 3 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        "apiserver error burst" => {
            topology.sim.state().faults.set_error_rate(0.3);
            tokio::time::sleep(Duration::from_millis(1500 + rng.below(1500))).await;
            topology.sim.state().faults.set_error_rate(0.0);
        }
        "apiserver 429s" => topology.sim.state().faults.throttle(20, 1),
        "apiserver latency" => {
            topology.sim.state().faults.set_latency(Duration::from_millis(300));
            tokio::time::sleep(Duration::from_millis(1500 + rng.below(1500))).await;
            topology.sim.state().faults.set_latency(Duration::ZERO);
        }
        "drop every watch" => topology.sim.state().faults.drop_watches(),
        "restart kube-sim" => topology.sim.restart().await?,
        "partition a replica from the apiserver" => {
            let role = if rng.below(2) == 0 { Role::Detector } else { Role::Remediator };
            if let Some(identity) = pick(topology, role, rng) {
                let token = topology
                    .replicas
                    .iter()
                    .find(|r| r.identity == identity)
                    .map(|r| r.token.clone())
                    .unwrap_or_default();
                topology.sim.state().faults.partition(&token);
                tokio::time::sleep(lease + Duration::from_secs(2)).await;
                topology.sim.state().faults.heal(&token);
            }
        }
        _ => {
            // A leader stopped past its lease, then continued: it must step down, not act on stale leadership.
            let role = if rng.below(2) == 0 { Role::Detector } else { Role::Remediator };
            if let Some((leader, _)) = topology.leader(role).await?
                && topology.replicas.iter().any(|r| r.identity == leader)
            {
                topology.signal(&leader, "STOP")?;
                tokio::time::sleep(lease + Duration::from_secs(2)).await;
                topology.signal(&leader, "CONT")?;
            }
        }
    }
    Ok(())
}

/// Waits (at most `limit`) until some intent is in `phase`.
async fn wait_for_phase(topology: &Topology, phase: Phase, limit: Duration) {
    let started = Instant::now();
    while started.elapsed() < limit {
        if unfinished(topology).await.iter().any(|i| i.phase == phase) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
