//! The hostile-message campaign: someone who can reach the bus, with no credentials or with the wrong
//! ones, throws forged, replayed, mutated and malformed jobs, verdicts and KV writes at a running
//! KubeSent, and the campaign checks that nothing outside policy happened.
//!
//! Set-up, as deployed: nats-server with `deploy/base/nats/auth.conf`, kube-sim with the RBAC of
//! `deploy/base/rbac.yaml`, and the three services as separate `kubesent` processes, each with its own
//! NATS user and ServiceAccount token (a kubeconfig of its own). The cluster holds failures that stay
//! failing (a rollout whose previous revision no longer serves, an opted-out OOM pod, an OOM pod in an
//! excluded namespace, a bare pod with a missing image), a healthy Deployment, and one genuine failure
//! KubeSent should fix during the attack (a rollout whose previous revision still serves).
//!
//! Invariants checked at the end: no service process crashed; the remediator changed nothing but the
//! genuine target (every write it made is listed); no container anywhere runs an image the scenario did
//! not set; no memory limit exceeds its original by more than the policy allows; every message is
//! accounted for (refused by NATS, dead-lettered as invalid, or decided with an outcome).

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use async_nats::{Event, jetstream};
use k8s_openapi::api::{apps::v1::Deployment, core::v1::Pod};
use kube::{
    Api,
    api::{ListParams, Patch, PatchParams, PostParams},
};
use kubesent_common::nats::{self, Role};
use kubesent_kube_sim::{ImageState, KubeSim, SimConfig};
use kubesent_proto::{
    self as proto, Action, Failure, FailureJob, FailureKind, IncidentKey, MemoryQuantity, OutcomeResult,
    PodRef, Verdict, VerdictSource, VerdictStatus, WorkloadRef,
};
use kubesent_testkit::nats_server::{NatsServer, NatsUsers};
use serde_json::{Value, json};

use crate::processes::{ServiceProcess, ServiceSpec};

/// The least-privilege RBAC the services are deployed with.
const RBAC_YAML: &str = include_str!("../../../deploy/base/rbac.yaml");

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// The `kubesent` executable the services run from.
    pub exe: PathBuf,
    /// Hostile messages and attempts to send (at least 100).
    pub messages: usize,
    /// Seed of the mutations (the same seed sends the same campaign).
    pub seed: u64,
    /// Where the JSON and markdown reports go (none when `None`).
    pub report_dir: Option<PathBuf>,
}

/// What the campaign sent and what became of it.
#[derive(Debug, Default)]
pub struct Report {
    /// Messages and attempts sent, by kind.
    pub sent: BTreeMap<&'static str, usize>,
    /// Refused by the NATS server (permission violations, refused connections).
    pub refused_by_nats: usize,
    /// Dead-lettered as invalid, by service and reason.
    pub dead_lettered: BTreeMap<String, u64>,
    /// Outcomes the remediator recorded, by result.
    pub outcomes: BTreeMap<String, u64>,
    /// Jobs the diagnoser handled, by outcome.
    pub jobs: BTreeMap<String, u64>,
    /// Every write the remediator made to the cluster (method and path), besides events and leases.
    pub remediator_writes: Vec<String>,
    /// The outcome of the one genuine failure KubeSent should fix during the attack.
    pub genuine: Option<String>,
    /// Broken invariants (empty when the campaign passed).
    pub violations: Vec<String>,
    /// How long the attack and the drain took.
    pub elapsed: Duration,
    /// Where the markdown report was written.
    pub written: Option<PathBuf>,
}

impl Report {
    /// Whether every invariant held.
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }

    /// Messages sent in all.
    pub fn total(&self) -> usize {
        self.sent.values().sum()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "hostile campaign: {} messages and attempts in {:.1} s",
            self.total(),
            self.elapsed.as_secs_f64()
        )?;
        for (kind, count) in &self.sent {
            writeln!(f, "  sent {count:>5}  {kind}")?;
        }
        writeln!(f, "  refused by NATS permissions or authentication: {}", self.refused_by_nats)?;
        for (what, count) in self.dead_lettered.iter().filter(|(_, c)| **c > 0) {
            writeln!(f, "  dead-lettered as invalid ({what}): {count}")?;
        }
        for (result, count) in self.outcomes.iter().filter(|(_, c)| **c > 0) {
            writeln!(f, "  remediator outcome {result}: {count}")?;
        }
        for (outcome, count) in self.jobs.iter().filter(|(_, c)| **c > 0) {
            writeln!(f, "  diagnoser jobs {outcome}: {count}")?;
        }
        writeln!(f, "  remediator writes to the cluster: {:?}", self.remediator_writes)?;
        writeln!(
            f,
            "  the genuine failure (Deployment web, a rollout to a missing image): {}",
            self.genuine.as_deref().unwrap_or("not fixed")
        )?;
        if self.violations.is_empty() {
            writeln!(f, "  invariants: all held (0 changes outside policy, 0 crashes)")
        } else {
            writeln!(f, "  VIOLATIONS:")?;
            for violation in &self.violations {
                writeln!(f, "    {violation}")?;
            }
            Ok(())
        }
    }
}

/// A small deterministic generator (xorshift64*), so a seed repeats a campaign.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % n.max(1) as u64).unwrap_or(0)
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// Images the scenario sets; any other image in the cluster at the end is a violation.
const IMAGES: [&str; 8] = [
    "registry.local/shop/web:1.0",
    "registry.local/shop/web:2.0",
    "registry.local/shop/stuck:1.0",
    "registry.local/shop/stuck:2.0",
    "registry.local/shop/calm:1.0",
    "registry.local/shop/solo:1.0",
    "registry.local/shop/lonely:9.9",
    "registry.local/system/agent:1.0",
];

/// Forged targets: hostile images a verdict may name.
const EVIL_IMAGES: [&str; 5] = [
    "evil.example/miner:latest",
    "registry.local/shop/web@sha256:0000000000000000000000000000000000000000000000000000000000000000",
    "evil.example/shop/stuck:1.0",
    "registry.local/shop/stuck:1.0-backdoor",
    "docker.io/library/busybox:latest",
];

/// A failing target the attack aims at: its live pod and how it fails.
#[derive(Debug, Clone)]
struct Target {
    pod: Pod,
    workload: WorkloadRef,
    kind: FailureKind,
    image: String,
    limit: Option<MemoryQuantity>,
}

impl Target {
    fn pod_ref(&self) -> PodRef {
        PodRef {
            namespace: self.pod.metadata.namespace.clone().unwrap_or_default(),
            name: self.pod.metadata.name.clone().unwrap_or_default(),
            uid: self.pod.metadata.uid.clone().unwrap_or_default(),
            resource_version: self.pod.metadata.resource_version.clone().unwrap_or_default(),
        }
    }

    fn key(&self, salt: &str) -> IncidentKey {
        IncidentKey {
            namespace: self.pod_ref().namespace,
            workload: self.workload.clone(),
            container: "app".into(),
            kind: self.kind,
            template_hash: salt.into(),
        }
    }

    fn failure(&self) -> Failure {
        Failure {
            kind: self.kind,
            container: "app".into(),
            init_container: false,
            reason: if self.kind == FailureKind::OomKilled {
                "OOMKilled".into()
            } else {
                "ErrImagePull".into()
            },
            message: None,
            exit_code: (self.kind == FailureKind::OomKilled).then_some(137),
            restart_count: 1,
            image: self.image.clone(),
            failed_at: None,
        }
    }

    fn verdict(&self, action: Action, salt: &str) -> Verdict {
        let key = self.key(salt);
        Verdict {
            schema: proto::SCHEMA_VERSION,
            incident: key.fingerprint(),
            key,
            pod: self.pod_ref(),
            failure: self.failure(),
            status: VerdictStatus::Diagnosed,
            root_cause: "forged".into(),
            action,
            confidence: 100,
            source: VerdictSource::Model { model: "attacker".into() },
            diagnosed_at: jiff::Timestamp::now(),
            detected_at: None,
            evidence: None,
            caused_by: None,
        }
    }

    fn job(&self, salt: &str) -> FailureJob {
        let key = self.key(salt);
        FailureJob {
            schema: proto::SCHEMA_VERSION,
            incident: key.fingerprint(),
            key,
            pod: self.pod_ref(),
            failure: self.failure(),
            affected_pods: 1,
            detected_at: jiff::Timestamp::now(),
        }
    }
}

/// A client of one role that counts the server's refusals.
struct Attacker {
    client: async_nats::Client,
    js: jetstream::Context,
    refusals: Arc<Mutex<usize>>,
}

async fn attacker(server: &NatsServer, users: &NatsUsers, role: Role) -> anyhow::Result<Attacker> {
    let refusals = Arc::new(Mutex::new(0usize));
    let counter = refusals.clone();
    let observe = move |event: &Event| {
        if matches!(event, Event::ServerError(_)) {
            *counter.lock().unwrap_or_else(std::sync::PoisonError::into_inner) += 1;
        }
    };
    let client = nats::connect_observed(&users.args(server.url(), role), role, "attacker", observe).await?;
    client.flush().await?;
    Ok(Attacker { js: jetstream::new(client.clone()), client, refusals })
}

impl Attacker {
    /// Publishes through JetStream (a request; the PubAck, if any, is not awaited for long).
    async fn publish(&self, subject: String, id: String, payload: Vec<u8>) {
        let message = jetstream::message::PublishMessage::build().payload(payload.into()).message_id(id);
        if let Ok(ack) = self.js.send_publish(subject, message).await {
            let _ = tokio::time::timeout(Duration::from_secs(2), ack).await;
        }
    }

    /// Publishes on core NATS (where the role may not publish at all).
    async fn raw(&self, subject: &str, payload: &[u8]) {
        let _ = self.client.publish(subject.to_owned(), payload.to_vec().into()).await;
        let _ = self.client.flush().await;
    }

    fn refusals(&self) -> usize {
        *self.refusals.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn kubeconfig(dir: &Path, name: &str, server: &str, token: &str) -> anyhow::Result<PathBuf> {
    let path = dir.join(format!("{name}.kubeconfig"));
    let config = json!({
        "apiVersion": "v1", "kind": "Config", "current-context": "sim",
        "clusters": [{"name": "sim", "cluster": {"server": server}}],
        "users": [{"name": name, "user": {"token": token}}],
        "contexts": [{"name": "sim", "context": {"cluster": "sim", "user": name}}]
    });
    std::fs::write(&path, serde_json::to_vec(&config)?)?;
    Ok(path)
}

/// Waits until `pods` (by label selector in `namespace`) shows a pod for which `failing` holds.
async fn failing_pod(
    kube: &kube::Client,
    namespace: &str,
    labels: &str,
    failing: impl Fn(&Pod) -> bool,
) -> anyhow::Result<Pod> {
    let pods: Api<Pod> = Api::namespaced(kube.clone(), namespace);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let list = pods.list(&ListParams::default().labels(labels)).await?;
        if let Some(pod) = list.items.into_iter().find(|p| failing(p)) {
            return Ok(pod);
        }
        if Instant::now() > deadline {
            bail!("no failing pod for {namespace}/{labels}");
        }
        // kube-sim's kubelet reports within a few simulated seconds; look again shortly.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn waiting_reason(pod: &Pod) -> Option<String> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find_map(|c| c.state.as_ref()?.waiting.as_ref()?.reason.clone())
}

fn oom_killed(pod: &Pod) -> bool {
    pod.status.as_ref().and_then(|s| s.container_statuses.as_ref()).is_some_and(|cs| {
        cs.iter().any(|c| {
            c.last_state
                .as_ref()
                .and_then(|s| s.terminated.as_ref())
                .is_some_and(|t| t.reason.as_deref() == Some("OOMKilled"))
        })
    })
}

fn pull_failing(pod: &Pod) -> bool {
    matches!(waiting_reason(pod).as_deref(), Some("ErrImagePull" | "ImagePullBackOff"))
}

fn deployment(name: &str, image: &str, replicas: i32, strategy: &str) -> anyhow::Result<Deployment> {
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "shop"},
        "spec": {"replicas": replicas, "strategy": {"type": strategy}, "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": image, "resources": {"limits": {"memory": "128Mi"}}}]}}}
    }))?)
}

fn bare_pod(namespace: &str, name: &str, image: &str, annotations: Value) -> anyhow::Result<Pod> {
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": name}, "annotations": annotations},
        "spec": {"containers": [{"name": "app", "image": image, "resources": {"limits": {"memory": "128Mi"}}}]}
    }))?)
}

async fn wait_deployment_ready(kube: &kube::Client, name: &str, replicas: i32) -> anyhow::Result<()> {
    let deployments: Api<Deployment> = Api::namespaced(kube.clone(), "shop");
    let ready = move |d: Option<&Deployment>| {
        d.and_then(|d| d.status.as_ref()).and_then(|s| s.ready_replicas) == Some(replicas)
    };
    tokio::time::timeout(Duration::from_secs(120), poll_until(deployments, name, ready))
        .await
        .with_context(|| format!("Deployment {name} ready"))?
}

async fn poll_until(
    api: Api<Deployment>,
    name: &str,
    ready: impl Fn(Option<&Deployment>) -> bool,
) -> anyhow::Result<()> {
    // A short poll: the driver has no kube-runtime dependency, and readiness takes seconds.
    loop {
        if ready(api.get_opt(name).await?.as_ref()) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs the campaign.
pub async fn run(options: &Options) -> anyhow::Result<Report> {
    kubesent_common::install_crypto_provider();
    let started = Instant::now();
    let (server, users) = NatsServer::start_secured().await?;
    let sim = KubeSim::start(SimConfig { time_scale: 0.05, ..SimConfig::default() }).await?;
    let admin = sim.enable_rbac();
    sim.apply_yaml(RBAC_YAML)
        .map_err(|e| anyhow::anyhow!("applying deploy/base/rbac.yaml: {}", e.message))?;
    let kube = kubesent_common::kube_client_with_token(Some(&sim.url()), Some(&admin)).await?;
    let dir = tempfile::tempdir()?;

    // The services, as separate processes with their own NATS users and ServiceAccount tokens.
    let mut services = Vec::new();
    let mut remediator_token = String::new();
    for role in [Role::Detector, Role::Diagnoser, Role::Remediator] {
        let token = sim.service_account_token("kubesent", role.service_name());
        if role == Role::Remediator {
            remediator_token = token.clone();
        }
        let config = kubeconfig(dir.path(), role.as_str(), &sim.url(), &token)?;
        let mut spec =
            ServiceSpec::new(&options.exe, role, &format!("{}-0", role.as_str()), server.url(), "")
                .envs(users.env(role))
                .env("KUBECONFIG", config.display())
                .env("RUST_LOG", "warn");
        spec.kube_api_url.clear();
        if role == Role::Remediator {
            spec = spec
                .arg("--verify-seconds", 1)
                .arg("--max-actions-per-hour", 1000)
                .arg("--breaker-failures", 1000);
        }
        spec.log = Some(dir.path().join(format!("{}.log", role.as_str())));
        services.push(ServiceProcess::spawn(spec)?);
    }
    for service in &mut services {
        service.wait_ready(Duration::from_secs(60)).await?;
    }

    // The cluster: failures that stay failing, a healthy workload, and one genuine failure to fix.
    let registry = &sim.state().registry;
    for missing in
        ["registry.local/shop/web:2.0", "registry.local/shop/stuck:2.0", "registry.local/shop/lonely:9.9"]
    {
        registry.set(missing, ImageState::Missing);
    }
    let deployments: Api<Deployment> = Api::namespaced(kube.clone(), "shop");
    let params = PostParams::default();
    deployments.create(&params, &deployment("web", IMAGES[0], 2, "RollingUpdate")?).await?;
    deployments.create(&params, &deployment("stuck", IMAGES[2], 1, "Recreate")?).await?;
    deployments.create(&params, &deployment("calm", IMAGES[4], 1, "RollingUpdate")?).await?;
    for (name, replicas) in [("web", 2), ("stuck", 1), ("calm", 1)] {
        wait_deployment_ready(&kube, name, replicas).await?;
    }
    let need = json!({"sim.kubesent.io/memory-need": "200Mi"});
    let opted_out = json!({"sim.kubesent.io/memory-need": "200Mi", "kubesent.io/remediate": "false"});
    Api::<Pod>::namespaced(kube.clone(), "shop")
        .create(&params, &bare_pod("shop", "solo", IMAGES[5], opted_out)?)
        .await?;
    Api::<Pod>::namespaced(kube.clone(), "shop")
        .create(&params, &bare_pod("shop", "lonely", IMAGES[6], json!({}))?)
        .await?;
    Api::<Pod>::namespaced(kube.clone(), "kube-system")
        .create(&params, &bare_pod("kube-system", "agent", IMAGES[7], need)?)
        .await?;
    let update = |image: &str| json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": image}]}}}});
    deployments.patch("stuck", &PatchParams::default(), &Patch::Strategic(&update(IMAGES[3]))).await?;
    deployments.patch("web", &PatchParams::default(), &Patch::Strategic(&update(IMAGES[1]))).await?;

    // (namespace, name, workload kind, how it fails, image); `calm` is healthy: its verdicts are stale.
    let aims = [
        ("shop", "stuck", kubesent_proto::WorkloadKind::Deployment, FailureKind::ErrImagePull, IMAGES[3]),
        ("shop", "solo", kubesent_proto::WorkloadKind::Pod, FailureKind::OomKilled, IMAGES[5]),
        ("kube-system", "agent", kubesent_proto::WorkloadKind::Pod, FailureKind::OomKilled, IMAGES[7]),
        ("shop", "lonely", kubesent_proto::WorkloadKind::Pod, FailureKind::ErrImagePull, IMAGES[6]),
        ("shop", "calm", kubesent_proto::WorkloadKind::Deployment, FailureKind::OomKilled, IMAGES[4]),
    ];
    let mut targets = Vec::new();
    for (namespace, name, workload, kind, image) in aims {
        let failing = move |pod: &Pod| match (name, kind) {
            ("calm", _) => true,
            (_, FailureKind::OomKilled) => oom_killed(pod),
            _ => pull_failing(pod),
        };
        targets.push(Target {
            pod: failing_pod(&kube, namespace, &format!("app={name}"), failing).await?,
            workload: WorkloadRef { kind: workload, name: name.into() },
            kind,
            image: image.into(),
            limit: (kind == FailureKind::OomKilled).then_some(MemoryQuantity::from_mib(128)),
        });
    }

    let detector = attacker(&server, &users, Role::Detector).await?;
    let diagnoser = attacker(&server, &users, Role::Diagnoser).await?;
    let operator = attacker(&server, &users, Role::Operator).await?;
    let reader = attacker(&server, &users, Role::Reader).await?;
    let mut report = Report::default();
    let mut rng = Rng(options.seed.max(1));
    let mut unprivileged_refused = 0usize;
    let mut sent_verdicts: Vec<(String, Vec<u8>)> = Vec::new();
    let count = options.messages.max(100);
    for index in 0..count {
        let target = rng.pick(&targets).clone();
        let salt = format!("h{index}");
        match rng.below(20) {
            // Forged verdicts with the diagnoser's credentials (the one role that may publish them).
            0..=8 => {
                let verdict = forged_verdict(&mut rng, &target, &salt);
                let (subject, payload) = verdict_message(&mut rng, &verdict);
                sent_verdicts.push((subject.clone(), payload.clone()));
                diagnoser.publish(subject, format!("forged-{index}"), payload).await;
                *report.sent.entry("verdicts forged with the diagnoser's credentials").or_default() += 1;
            }
            // Replays of an earlier forged verdict, under its own id (deduplicated) or a new one.
            9 if !sent_verdicts.is_empty() => {
                let (subject, payload) = sent_verdicts[rng.below(sent_verdicts.len())].clone();
                diagnoser.publish(subject, format!("replay-{index}"), payload).await;
                *report.sent.entry("verdicts replayed").or_default() += 1;
            }
            // Forged jobs with the detector's credentials.
            9..=12 => {
                let (subject, payload) = forged_job(&mut rng, &target, &salt);
                detector.publish(subject, format!("job-{index}"), payload).await;
                *report.sent.entry("jobs forged with the detector's credentials").or_default() += 1;
            }
            // KV writes: decisions for things that wait for nothing, under another user, malformed;
            // intents, locks and the guardrail ledger (which the operator may not write at all).
            13..=16 => {
                kv_attack(&mut rng, &operator, &diagnoser, &target, &salt).await;
                *report
                    .sent
                    .entry("KV writes with the operator's or the diagnoser's credentials")
                    .or_default() += 1;
            }
            // A reader publishing anything.
            17 => {
                let verdict = target.verdict(Action::None, &salt);
                let subject =
                    proto::verdict_subject(&verdict.pod.namespace, &verdict.action).unwrap_or_default();
                reader.raw(&subject, &proto::encode(&verdict)).await;
                *report.sent.entry("publishes with the reader's credentials").or_default() += 1;
            }
            // No credentials, or the wrong password.
            _ => {
                let anonymous = async_nats::ConnectOptions::new()
                    .connection_timeout(Duration::from_secs(2))
                    .connect(server.url())
                    .await;
                let guessed = async_nats::ConnectOptions::with_user_and_password(
                    "kubesent-remediator".into(),
                    format!("guess-{index}"),
                )
                .connection_timeout(Duration::from_secs(2))
                .connect(server.url())
                .await;
                unprivileged_refused += usize::from(anonymous.is_err()) + usize::from(guessed.is_err());
                *report
                    .sent
                    .entry("connections without credentials or with a wrong password")
                    .or_default() += 2;
            }
        }
    }

    // Drain: every forged job and verdict taken off its queue, every decision taken.
    let observer = nats::connect_as(&users.args(server.url(), Role::Admin), Role::Admin, "observer").await?;
    let js = jetstream::new(observer);
    let intents = js.get_key_value(proto::INTENTS_BUCKET).await?;
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let jobs = js.get_stream(proto::JOBS_STREAM).await?.info().await?.state.messages;
        let verdicts = js.get_stream(proto::VERDICTS_STREAM).await?.info().await?.state.messages;
        let mut keys = intents.keys().await?;
        let mut decisions = 0;
        while let Some(key) = futures::StreamExt::next(&mut keys).await {
            decisions += usize::from(key?.starts_with("decision."));
        }
        if jobs == 0 && verdicts == 0 && decisions == 0 {
            break;
        }
        if Instant::now() > deadline {
            report
                .violations
                .push(format!("not drained: {jobs} jobs, {verdicts} verdicts, {decisions} decisions left"));
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    } // The genuine failure is fixed all the same: its outcome is in the audit stream.
    let outcomes = js.get_stream(proto::OUTCOMES_STREAM).await?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while report.genuine.is_none() && Instant::now() < deadline {
        let last = outcomes.clone().info().await?.state.last_sequence;
        for sequence in 1..=last {
            let Ok(message) = outcomes.get_raw_message(sequence).await else { continue };
            if let Ok(outcome) = proto::decode::<proto::Outcome>(&message.payload)
                && outcome.pod.name.starts_with("web-")
                && matches!(outcome.result, OutcomeResult::Healed | OutcomeResult::Applied)
            {
                report.genuine = Some(format!("{} ({})", outcome.result.as_str(), outcome.detail));
            }
        }
        if report.genuine.is_none() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    if report.genuine.is_none() {
        report.violations.push("the genuine failure was not fixed during the attack".into());
    }
    report.elapsed = started.elapsed();
    report.refused_by_nats = unprivileged_refused
        + detector.refusals()
        + diagnoser.refusals()
        + operator.refusals()
        + reader.refusals();

    // Invariants.
    for service in &mut services {
        if let Some(status) = service.exited()? {
            report.violations.push(format!("{} crashed: {status}", service.spec.identity));
        }
    }
    for service in &services {
        let metrics = service.metrics().await.unwrap_or_default();
        for line in metrics.lines().filter(|l| !l.starts_with('#')) {
            let Some((series, value)) = line.rsplit_once(' ') else { continue };
            let value: u64 = value.parse::<f64>().map(|v| v as u64).unwrap_or(0);
            if let Some(rest) = series.strip_prefix("kubesent_diagnoser_rejected_messages_total{reason=\"") {
                report.dead_lettered.insert(format!("diagnoser, {}", rest.trim_end_matches("\"}")), value);
            } else if let Some(rest) =
                series.strip_prefix("kubesent_remediator_rejected_messages_total{reason=\"")
            {
                report.dead_lettered.insert(format!("remediator, {}", rest.trim_end_matches("\"}")), value);
            } else if let Some(rest) = series.strip_prefix("kubesent_remediator_outcomes_total{result=\"") {
                report.outcomes.insert(rest.trim_end_matches("\"}").to_owned(), value);
            } else if let Some(rest) = series.strip_prefix("kubesent_diagnoser_jobs_total{outcome=\"") {
                report.jobs.insert(rest.trim_end_matches("\"}").to_owned(), value);
            }
        }
    }
    let allowed_writes = ["/apis/apps/v1/namespaces/shop/deployments/web"];
    for request in sim
        .requests()
        .into_iter()
        .filter(|r| r.client == remediator_token && r.is_mutating() && r.status < 400)
    {
        if request.path.contains("/events") || request.path.contains("/leases") {
            continue;
        }
        let write = format!("{} {}", request.method, request.path);
        if !allowed_writes.iter().any(|path| request.path == *path) {
            report.violations.push(format!("the remediator changed something outside policy: {write}"));
        }
        report.remediator_writes.push(write);
    }
    check_cluster(&kube, &mut report).await?;
    let decided: u64 = report
        .outcomes
        .iter()
        .filter(|(r, _)| r.as_str() != OutcomeResult::AwaitingApproval.as_str())
        .map(|(_, c)| c)
        .sum();
    if decided == 0 {
        report.violations.push("no outcome was recorded: the campaign did not reach the remediator".into());
    }
    // Clients first, then the services, then the server: nothing reports a connection it lost on purpose.
    drop((detector, diagnoser, operator, reader, js, intents));
    for mut service in services {
        let _ = service.terminate().await;
    }
    drop(server);
    sim.shutdown().await;
    if let Some(dir) = &options.report_dir {
        let machine = crate::campaign::report::machine();
        let json = serde_json::json!({
            "machine": machine, "seed": options.seed, "messages": report.total(), "sent": report.sent,
            "refused_by_nats": report.refused_by_nats, "dead_lettered": report.dead_lettered,
            "outcomes": report.outcomes, "jobs": report.jobs, "remediator_writes": report.remediator_writes,
            "genuine": report.genuine, "violations": report.violations,
            "elapsed_seconds": report.elapsed.as_secs_f64(),
        });
        let markdown = format!(
            "# Hostile-message campaign\n\nMachine: {}. Seed {}.\n\n```\n{report}```\n",
            crate::campaign::report::machine_line(&machine),
            options.seed
        );
        report.written = Some(crate::campaign::report::write(dir, "hostile", &json, &markdown)?);
    }
    Ok(report)
}

/// No container runs an image the scenario did not set, no memory limit left its bounds, and the
/// opted-out, excluded, healthy and unfixable targets are as they were.
async fn check_cluster(kube: &kube::Client, report: &mut Report) -> anyhow::Result<()> {
    let known: BTreeSet<&str> = IMAGES.iter().copied().collect();
    for namespace in ["shop", "kube-system"] {
        let pods = Api::<Pod>::namespaced(kube.clone(), namespace).list(&ListParams::default()).await?;
        for pod in pods.items {
            let name = pod.metadata.name.clone().unwrap_or_default();
            for container in pod.spec.iter().flat_map(|s| s.containers.iter()) {
                let image = container.image.clone().unwrap_or_default();
                if !known.contains(image.as_str()) {
                    report.violations.push(format!("pod {namespace}/{name} runs {image}"));
                }
                let limit = container
                    .resources
                    .as_ref()
                    .and_then(|r| r.limits.as_ref())
                    .and_then(|l| l.get("memory"))
                    .and_then(|q| MemoryQuantity::parse(&q.0).ok());
                if limit != Some(MemoryQuantity::from_mib(128)) {
                    report
                        .violations
                        .push(format!("pod {namespace}/{name} has memory limit {limit:?}, not 128Mi"));
                }
            }
        }
    }
    let deployments = Api::<Deployment>::namespaced(kube.clone(), "shop");
    for (name, image) in [("stuck", IMAGES[3]), ("calm", IMAGES[4])] {
        let template = deployments.get(name).await?.spec.and_then(|s| s.template.spec).context("template")?;
        let now = template.containers[0].image.clone().unwrap_or_default();
        if now != image {
            report.violations.push(format!("Deployment {name} was changed to {now}"));
        }
    }
    Ok(())
}

/// A verdict for `target` with one hostile twist.
fn forged_verdict(rng: &mut Rng, target: &Target, salt: &str) -> Verdict {
    let limit = target.limit.unwrap_or(MemoryQuantity::from_mib(128));
    let rollback = |to: &str| Action::RollbackImage {
        container: "app".into(),
        from: target.image.clone(),
        to: to.into(),
    };
    let increase = |from: MemoryQuantity, to: MemoryQuantity| Action::IncreaseMemory {
        container: "app".into(),
        from,
        to,
    };
    let mut verdict = match rng.below(10) {
        0 | 1 => target.verdict(rollback(EVIL_IMAGES[rng.below(EVIL_IMAGES.len())]), salt),
        // The previous image of `stuck` itself: its revision serves no ready pod, so it is not vouched for.
        2 => target.verdict(rollback("registry.local/shop/stuck:1.0"), salt),
        3 => target.verdict(increase(limit, MemoryQuantity::from_mib(64 * 1024 * 1024)), salt),
        4 => target.verdict(increase(limit, MemoryQuantity::from_mib(64)), salt),
        5 => target.verdict(increase(MemoryQuantity::from_mib(1), MemoryQuantity::from_mib(2)), salt),
        6 => {
            target.verdict(increase(limit, MemoryQuantity::from_bytes(limit.bytes().saturating_mul(2))), salt)
        }
        7 => {
            let mut v = target.verdict(rollback(EVIL_IMAGES[rng.below(EVIL_IMAGES.len())]), salt);
            v.pod.uid = format!("00000000-0000-0000-0000-{:012}", rng.below(1_000_000));
            v
        }
        8 => {
            let mut v = target.verdict(increase(limit, MemoryQuantity::from_mib(256)), salt);
            v.key.workload =
                WorkloadRef { kind: kubesent_proto::WorkloadKind::Deployment, name: "payments".into() };
            v.incident = v.key.fingerprint();
            v
        }
        _ => {
            let mut v = target.verdict(rollback(EVIL_IMAGES[rng.below(EVIL_IMAGES.len())]), salt);
            v.pod.name = format!("{}-gone", v.pod.name);
            v
        }
    };
    if rng.below(4) == 0 {
        verdict.confidence = u8::try_from(rng.below(101)).unwrap_or(100);
    }
    verdict
}

/// The subject and payload a forged verdict goes out with, malformed some of the time.
fn verdict_message(rng: &mut Rng, verdict: &Verdict) -> (String, Vec<u8>) {
    let subject = proto::verdict_subject(&verdict.pod.namespace, &verdict.action).unwrap_or_default();
    let mut value = serde_json::to_value(verdict).unwrap_or_default();
    // About half go out malformed; the rest are well-formed requests the cluster must refuse.
    match rng.below(18) {
        0 => value["action"]["registry"] = json!("evil.example"),
        1 => value["schema"] = json!(2),
        2 => value["root_cause"] = json!("x".repeat(proto::validate::MAX_PAYLOAD_BYTES)),
        3 => {
            return (
                "kubesent.verdicts.payments.rollback-image".into(),
                serde_json::to_vec(&value).unwrap_or_default(),
            );
        }
        4 => value["incident"] = json!("inc-000000000000000000000000"),
        5 => value["confidence"] = json!(255),
        6 => return (subject, b"{\"schema\":1,\"action\":{\"type\":\"delete_namespace\"}}".to_vec()),
        7 => return (subject, vec![0xff, 0xfe, 0x00]),
        8 => value["root_cause"] = json!("\u{1b}[2J\u{0}"),
        _ => {}
    }
    (subject, serde_json::to_vec(&value).unwrap_or_default())
}

/// A job for `target`, mutated or malformed some of the time.
fn forged_job(rng: &mut Rng, target: &Target, salt: &str) -> (String, Vec<u8>) {
    let job = target.job(salt);
    let subject = proto::job_subject(&job.pod.namespace, job.failure.kind).unwrap_or_default();
    let mut value = serde_json::to_value(&job).unwrap_or_default();
    match rng.below(12) {
        0 => value["pod"]["namespace"] = json!("kube-system"),
        1 => value["schema"] = json!(7),
        2 => value["failure"]["message"] = json!("y".repeat(proto::validate::MAX_PAYLOAD_BYTES)),
        3 => return ("kubesent.jobs.shop.crash-loop".into(), serde_json::to_vec(&value).unwrap_or_default()),
        4 => value["affected_pods"] = json!(0),
        5 => return (subject, b"not json at all".to_vec()),
        _ => {}
    }
    (subject, serde_json::to_vec(&value).unwrap_or_default())
}

/// One KV attack: a write the role may make but which decides nothing, or one it may not make.
async fn kv_attack(rng: &mut Rng, operator: &Attacker, diagnoser: &Attacker, target: &Target, salt: &str) {
    let incident = target.key(salt).fingerprint();
    let decision = |verdict: &str| {
        json!({"schema": proto::SCHEMA_VERSION, "incident": incident, "decision": verdict, "by": "mallory",
            "at": jiff::Timestamp::now()})
    };
    match rng.below(7) {
        // An approval of something that waits for nothing: taken and dropped.
        0 => {
            let payload = serde_json::to_vec(&decision("approve")).unwrap_or_default();
            operator
                .publish(
                    format!("$KV.kubesent-intents.decision.kubesent-operator.{incident}"),
                    format!("d-{salt}"),
                    payload,
                )
                .await;
        }
        // A decision that smuggles an action, or is not JSON: dropped as unreadable.
        1 => {
            let mut forged = decision("approve");
            forged["action"] =
                json!({"type": "rollback_image", "container": "app", "from": "a", "to": "evil.example/x"});
            let payload = serde_json::to_vec(&forged).unwrap_or_default();
            operator
                .publish(
                    format!("$KV.kubesent-intents.decision.kubesent-operator.{incident}"),
                    format!("d-{salt}"),
                    payload,
                )
                .await;
        }
        // A decision under another user's name: refused by the server.
        2 => {
            operator
                .raw(&format!("$KV.kubesent-intents.decision.kubesent-remediator.{incident}"), b"{}")
                .await
        }
        // An intent, a lock or the ledger: refused by the server.
        3 => operator.raw(&format!("$KV.kubesent-intents.{incident}"), b"{\"phase\":\"approved\"}").await,
        4 => operator.raw("$KV.kubesent-intents.guardrails", b"{}").await,
        5 => diagnoser.raw(&format!("$KV.kubesent-intents.{incident}"), b"{}").await,
        _ => diagnoser.raw("$KV.kubesent-intents.paused", b"").await,
    }
}
