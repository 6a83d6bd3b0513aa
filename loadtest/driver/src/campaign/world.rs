//! The world campaign: KubeSent in a cluster where others act. Every incident is a Deployment OOM-killed
//! at 128Mi in a namespace of its own, with one constraint drawn at random that a real cluster may put
//! between a fix and its landing: a ResourceQuota just below or above the raise, a LimitRange max below
//! or above it, a mutating webhook that clamps memory, a validating webhook that refuses it, a node pool
//! too small for it, a GitOps reconciler that puts the manifest back after a random delay, a
//! VerticalPodAutoscaler, a PodDisruptionBudget (or nothing).
//!
//! The invariant checker reads the outside world (kube-sim's request log and objects, the audit stream):
//! - each incident ends as its constraint allows (healed where the raise can land, `denied` before any
//!   write where admission would refuse it, `not_landed` or `reverted` after a write that did not land or
//!   made things worse, `overridden` or `healed` beside a reconciler, `suggested` beside a VPA);
//! - KubeSent never leaves a change in place that did not help, and takes one back within 15 s;
//! - KubeSent writes a Deployment at most once per incident chain, plus once to take its change back;
//! - every incident with a write ends with an outcome within 30 s of it;
//! - and the chaos campaign's invariants (one final outcome each, no job lost, no request repeated, no
//!   action outside policy).

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    path::PathBuf,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use futures::StreamExt as _;
use k8s_openapi::api::{
    admissionregistration::v1::{MutatingWebhookConfiguration, ValidatingWebhookConfiguration},
    apps::v1::Deployment,
    core::v1::{LimitRange, ResourceQuota},
    policy::v1::PodDisruptionBudget,
};
use kube::{
    Api,
    api::{ApiResource, DynamicObject, GroupVersionKind, PostParams},
};
use kubesent_common::nats::Role;
use kubesent_kube_sim::nodes::{NodeConfig, Taint};
use kubesent_proto::{self as proto, MemoryQuantity, Outcome, OutcomeResult, Verdict};
use kubesent_testkit::webhook::{WebhookServer, answer, configuration, pod_rule};
use serde_json::{Value, json};

use super::{
    chaos::{Rng, retry},
    invariants::{self, Expectations, Tap, Violation, World},
    report::{self, Progress},
    topology::{self, Topology, TopologyOptions},
};
use crate::gitops::{Reconciler, ReconcilerOptions};

/// Verify window in the campaign (deploy/base: 120 s).
const VERIFY_SECONDS: u64 = 3;
/// The image every Deployment runs.
const IMAGE: &str = "registry.local/world/app:1.0";
/// The memory limit every Deployment starts with, and what its container needs (so it is OOM-killed
/// until the limit is raised to 256Mi).
const LIMIT_MIB: u64 = 128;
const NEED: &str = "200Mi";
/// The longest KubeSent may leave a change that did not land or made things worse in place.
const TAKE_BACK_LIMIT: Duration = Duration::from_secs(15);
/// The longest from KubeSent's write to the incident's outcome, beyond the verify window.
const OUTCOME_LIMIT: Duration = Duration::from_secs(30);
/// The longest one wave of incidents may take to reach its outcomes.
const WAVE_LIMIT: Duration = Duration::from_secs(240);
/// The taint of the small nodes, so that only the Deployment meant for one lands there.
const SMALL_NODE_TAINT: &str = "world.kubesent.io/small";

/// What to run.
#[derive(Debug, Clone)]
pub struct WorldOptions {
    /// The `kubesent` executable.
    pub exe: PathBuf,
    /// Incidents (namespaces) in all.
    pub incidents: usize,
    /// Incidents set up at once.
    pub parallel: usize,
    /// Seed of the constraints drawn.
    pub seed: u64,
    /// Every constraint once first, in a seeded order, before any is drawn at random (the smoke CI runs).
    pub every_constraint_first: bool,
    /// Where the JSON and markdown reports go (none when `None`).
    pub report_dir: Option<PathBuf>,
    /// Where the services' logs go and stay (a temporary directory when `None`).
    pub dir: Option<PathBuf>,
    /// Run the remediator with taking back turned off (`KUBESENT_TAKE_BACK=false`): to see the checker
    /// catch what KubeSent would then leave in place.
    pub without_take_back: bool,
}

/// The constraint a namespace puts between the fix (128Mi → 256Mi) and its landing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Constraint {
    /// Nothing: the fix lands.
    Nothing,
    /// A quota of 300Mi `limits.memory`: the new pod (256Mi beside the old 128Mi) does not fit.
    QuotaBelow,
    /// A quota of 1Gi: it fits.
    QuotaAbove,
    /// A LimitRange max of 192Mi per container.
    LimitRangeBelow,
    /// A LimitRange max of 1Gi.
    LimitRangeAbove,
    /// A mutating webhook that clamps every new pod's memory to 160Mi.
    ClampingWebhook,
    /// A validating webhook that refuses a pod above 192Mi.
    RefusingWebhook,
    /// The Deployment's node pool is one node of 300Mi: the raised pod fits there beside nothing.
    NodeTooSmall,
    /// A GitOps reconciler that applies the original manifest again after a delay.
    Reconciler,
    /// A VerticalPodAutoscaler (updateMode Auto) manages the container.
    Autoscaler,
    /// A PodDisruptionBudget allowing no disruption (a Deployment's rollout does not evict).
    Budget,
}

impl Constraint {
    /// Every constraint.
    pub const ALL: [Self; 11] = [
        Self::Nothing,
        Self::QuotaBelow,
        Self::QuotaAbove,
        Self::LimitRangeBelow,
        Self::LimitRangeAbove,
        Self::ClampingWebhook,
        Self::RefusingWebhook,
        Self::NodeTooSmall,
        Self::Reconciler,
        Self::Autoscaler,
        Self::Budget,
    ];

    /// Its name in the report.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Nothing => "nothing",
            Self::QuotaBelow => "quota below the fix",
            Self::QuotaAbove => "quota above the fix",
            Self::LimitRangeBelow => "LimitRange max below the fix",
            Self::LimitRangeAbove => "LimitRange max above the fix",
            Self::ClampingWebhook => "clamping webhook",
            Self::RefusingWebhook => "refusing webhook",
            Self::NodeTooSmall => "node pool too small",
            Self::Reconciler => "GitOps reconciler",
            Self::Autoscaler => "VerticalPodAutoscaler",
            Self::Budget => "PodDisruptionBudget",
        }
    }

    /// The outcomes its first incident may end with.
    pub const fn allowed(self) -> &'static [OutcomeResult] {
        match self {
            Self::Nothing | Self::QuotaAbove | Self::LimitRangeAbove | Self::Budget => {
                &[OutcomeResult::Healed]
            }
            Self::QuotaBelow | Self::LimitRangeBelow => &[OutcomeResult::Denied],
            Self::ClampingWebhook => &[OutcomeResult::NotLanded],
            Self::RefusingWebhook | Self::NodeTooSmall => &[OutcomeResult::Reverted],
            // Put back while KubeSent verifies (overridden), or after it healed.
            Self::Reconciler => &[OutcomeResult::Overridden, OutcomeResult::Healed],
            Self::Autoscaler => &[OutcomeResult::Suggested],
        }
    }

    /// Whether the fix can land and heal within the constraint (and so must).
    pub const fn healable(self) -> bool {
        matches!(self, Self::Nothing | Self::QuotaAbove | Self::LimitRangeAbove | Self::Budget)
    }
}

/// One incident as set up.
#[derive(Debug, Clone)]
struct Case {
    namespace: String,
    constraint: Constraint,
    /// The reconciler's delay, for [`Constraint::Reconciler`].
    delay: Duration,
}

/// What became of one incident.
#[derive(Debug, Clone)]
pub struct CaseResult {
    /// Its namespace.
    pub namespace: String,
    /// Its constraint.
    pub constraint: Constraint,
    /// The first final outcome in the namespace.
    pub result: Option<OutcomeResult>,
    /// KubeSent's writes to the Deployment.
    pub writes: usize,
    /// From KubeSent's first write to its outcome.
    pub write_to_outcome: Option<Duration>,
    /// From KubeSent's first write to its take-back.
    pub write_to_take_back: Option<Duration>,
    /// From the verdict to the outcome.
    pub verdict_to_outcome: Option<Duration>,
}

/// What the campaign did and found.
#[derive(Debug, Default)]
pub struct WorldReport {
    /// Every incident.
    pub cases: Vec<CaseResult>,
    /// Outcomes by constraint.
    pub outcomes: BTreeMap<Constraint, BTreeMap<&'static str, usize>>,
    /// Broken invariants.
    pub violations: Vec<Violation>,
    /// Wall time.
    pub elapsed: Duration,
    /// The settings changed from deploy/base.
    pub overrides: Vec<(String, String)>,
    /// Where the markdown report was written.
    pub written: Option<PathBuf>,
}

fn quantiles(mut values: Vec<f64>) -> Value {
    values.sort_by(f64::total_cmp);
    let at = |p: f64| {
        if values.is_empty() { 0.0 } else { values[((values.len() - 1) as f64 * p).round() as usize] }
    };
    json!({"count": values.len(), "p50": at(0.5), "p95": at(0.95), "max": values.last().copied().unwrap_or(0.0)})
}

impl WorldReport {
    fn timing(&self, pick: impl Fn(&CaseResult) -> Option<Duration>) -> Value {
        quantiles(self.cases.iter().filter_map(&pick).map(|d| d.as_secs_f64()).collect())
    }

    fn timings(&self) -> Vec<(&'static str, Value)> {
        let after_write = |result: OutcomeResult| {
            self.timing(move |c| c.write_to_outcome.filter(|_| c.result == Some(result)))
        };
        vec![
            (
                "KubeSent's write → it took back what did not land or hurt",
                self.timing(|c| c.write_to_take_back),
            ),
            ("KubeSent's write → not_landed", after_write(OutcomeResult::NotLanded)),
            ("KubeSent's write → reverted", after_write(OutcomeResult::Reverted)),
            ("KubeSent's write → overridden", after_write(OutcomeResult::Overridden)),
            ("KubeSent's write → healed (includes the verify window)", after_write(OutcomeResult::Healed)),
            (
                "verdict → denied or suggested (no write)",
                self.timing(|c| c.verdict_to_outcome.filter(|_| c.writes == 0)),
            ),
        ]
    }

    fn to_json(&self, machine: &Value) -> Value {
        json!({
            "scenario": "world",
            "machine": machine,
            "elapsed_seconds": self.elapsed.as_secs_f64(),
            "incidents": self.cases.len(),
            "outcomes": self.outcomes.iter().map(|(c, o)| (c.name(), o.clone())).collect::<BTreeMap<_, _>>(),
            "timings_seconds": self.timings().into_iter().collect::<BTreeMap<_, _>>(),
            "overrides": self.overrides,
            "violations": invariants::violations_json(&self.violations),
        })
    }
}

impl fmt::Display for WorldReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let machine = report::machine();
        writeln!(f, "# World campaign\n")?;
        writeln!(
            f,
            "Machine: {}. Wall time {:.0} s. {} incidents, each a Deployment OOM-killed at 128Mi (the fix: 256Mi) in a namespace of its own with one constraint.\n",
            report::machine_line(&machine),
            self.elapsed.as_secs_f64(),
            self.cases.len()
        )?;
        writeln!(
            f,
            "Changed from deploy/base (to fit the campaign's time): {}.\n",
            self.overrides.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(", ")
        )?;
        writeln!(f, "| constraint | incidents | allowed | outcomes |\n|---|---|---|---|")?;
        for (constraint, outcomes) in &self.outcomes {
            let allowed: Vec<&str> = constraint.allowed().iter().map(|r| r.as_str()).collect();
            let seen: Vec<String> = outcomes.iter().map(|(r, n)| format!("{r} {n}")).collect();
            writeln!(
                f,
                "| {} | {} | {} | {} |",
                constraint.name(),
                outcomes.values().sum::<usize>(),
                allowed.join(" or "),
                seen.join(", ")
            )?;
        }
        writeln!(f)?;
        for (name, v) in self.timings() {
            writeln!(
                f,
                "- {name}: {} measured, p50 {:.2} s, p95 {:.2} s, max {:.2} s",
                v["count"],
                v["p50"].as_f64().unwrap_or(0.0),
                v["p95"].as_f64().unwrap_or(0.0),
                v["max"].as_f64().unwrap_or(0.0)
            )?;
        }
        invariants::write_violations(f, &self.violations)
    }
}

/// The Deployment of every incident, with what its constraint adds to the pod template.
fn deployment(case: &Case) -> Value {
    let mut template_labels = json!({"app": "app"});
    let mut spec = json!({"containers": [{"name": "app", "image": IMAGE,
        "resources": {"limits": {"memory": format!("{LIMIT_MIB}Mi")}, "requests": {"memory": format!("{LIMIT_MIB}Mi")}}}]});
    match case.constraint {
        Constraint::ClampingWebhook => template_labels["world.kubesent.io/webhook"] = json!("clamp"),
        Constraint::RefusingWebhook => template_labels["world.kubesent.io/webhook"] = json!("refuse"),
        Constraint::NodeTooSmall => {
            spec["nodeSelector"] = json!({"pool": case.namespace});
            spec["tolerations"] =
                json!([{"key": SMALL_NODE_TAINT, "operator": "Exists", "effect": "NoSchedule"}]);
        }
        _ => {}
    }
    json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "app", "namespace": case.namespace},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "app"}},
            "template": {"metadata": {"labels": template_labels, "annotations": {"sim.kubesent.io/memory-need": NEED}},
                "spec": spec}}})
}

/// The small node of a [`Constraint::NodeTooSmall`] namespace: 300Mi, tainted, labelled with its pool.
fn small_node(namespace: &str) -> NodeConfig {
    NodeConfig {
        memory: MemoryQuantity::from_mib(300),
        labels: [("pool".to_owned(), namespace.to_owned())].into(),
        taints: vec![Taint {
            key: SMALL_NODE_TAINT.to_owned(),
            value: String::new(),
            effect: "NoSchedule".to_owned(),
        }],
        ..NodeConfig::worker(&format!("small-{namespace}"))
    }
}

fn object<T: k8s_openapi::serde::de::DeserializeOwned>(value: Value) -> anyhow::Result<T> {
    Ok(serde_json::from_value(value)?)
}

/// Creates what the constraint needs in the namespace, then the Deployment (a reconciler creates it
/// itself). Returns the reconciler, if any.
async fn set_up(kube: &kube::Client, case: &Case) -> anyhow::Result<Option<Reconciler>> {
    let ns = case.namespace.as_str();
    let post = PostParams::default();
    match case.constraint {
        Constraint::QuotaBelow | Constraint::QuotaAbove => {
            let hard = if case.constraint == Constraint::QuotaBelow { "300Mi" } else { "1Gi" };
            let quota: ResourceQuota = object(json!({"metadata": {"name": "team-quota"},
                "spec": {"hard": {"limits.memory": hard}}}))?;
            let api: Api<ResourceQuota> = Api::namespaced(kube.clone(), ns);
            retry(|| api.create(&post, &quota)).await?;
        }
        Constraint::LimitRangeBelow | Constraint::LimitRangeAbove => {
            let max = if case.constraint == Constraint::LimitRangeBelow { "192Mi" } else { "1Gi" };
            let range: LimitRange = object(json!({"metadata": {"name": "limits"},
                "spec": {"limits": [{"type": "Container", "max": {"memory": max}}]}}))?;
            let api: Api<LimitRange> = Api::namespaced(kube.clone(), ns);
            retry(|| api.create(&post, &range)).await?;
        }
        Constraint::Autoscaler => {
            let gvk = GroupVersionKind::gvk("autoscaling.k8s.io", "v1", "VerticalPodAutoscaler");
            let resource = ApiResource::from_gvk_with_plural(&gvk, "verticalpodautoscalers");
            let api: Api<DynamicObject> = Api::namespaced_with(kube.clone(), ns, &resource);
            let vpa: DynamicObject = object(json!({"apiVersion": "autoscaling.k8s.io/v1",
                "kind": "VerticalPodAutoscaler", "metadata": {"name": "app-vpa"},
                "spec": {"targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "app"},
                    "updatePolicy": {"updateMode": "Auto"}}}))?;
            retry(|| api.create(&post, &vpa)).await?;
        }
        Constraint::Budget => {
            let budget: PodDisruptionBudget = object(json!({"metadata": {"name": "app"},
                "spec": {"maxUnavailable": 0, "selector": {"matchLabels": {"app": "app"}}}}))?;
            let api: Api<PodDisruptionBudget> = Api::namespaced(kube.clone(), ns);
            retry(|| api.create(&post, &budget)).await?;
        }
        Constraint::Reconciler => {
            let options = ReconcilerOptions { delay: case.delay, ..ReconcilerOptions::default() };
            return Ok(Some(Reconciler::start(kube.clone(), deployment(case), options)?));
        }
        Constraint::Nothing
        | Constraint::ClampingWebhook
        | Constraint::RefusingWebhook
        | Constraint::NodeTooSmall => {}
    }
    let api: Api<Deployment> = Api::namespaced(kube.clone(), ns);
    let app: Deployment = object(deployment(case))?;
    retry(|| api.create(&post, &app)).await?;
    Ok(None)
}

/// The two webhooks, each for the pods labelled for it: one clamps memory to 160Mi, one refuses more
/// than 192Mi.
async fn webhooks(kube: &kube::Client) -> anyhow::Result<(WebhookServer, WebhookServer)> {
    let memory = |review: &Value| {
        review
            .pointer("/request/object/spec/containers/0/resources/limits/memory")
            .and_then(Value::as_str)
            .and_then(|m| MemoryQuantity::parse(m).ok())
    };
    let clamp_to = MemoryQuantity::from_mib(160);
    let clamping = WebhookServer::start(move |review| {
        let patch = memory(review).filter(|m| *m > clamp_to).map(|_| {
            json!([{"op": "replace", "path": "/spec/containers/0/resources/limits/memory", "value": clamp_to.to_string()},
                {"op": "replace", "path": "/spec/containers/0/resources/requests/memory", "value": clamp_to.to_string()}])
        });
        answer(review, true, json!({}), patch)
    });
    let ceiling = MemoryQuantity::from_mib(192);
    let refusing = WebhookServer::start(move |review| {
        if memory(review).is_some_and(|m| m > ceiling) {
            answer(
                review,
                false,
                json!({"code": 403, "message": "memory above 192Mi needs an exception from the platform team"}),
                None,
            )
        } else {
            answer(review, true, json!({}), None)
        }
    });
    let selector = |value: &str| json!({"failurePolicy": "Fail", "objectSelector": {"matchLabels": {"world.kubesent.io/webhook": value}}});
    let mutating: MutatingWebhookConfiguration = serde_json::from_value(configuration(
        "MutatingWebhookConfiguration",
        "memory-clamp.world.example.com",
        &clamping.url(),
        pod_rule(&["CREATE"]),
        selector("clamp"),
    ))?;
    let validating: ValidatingWebhookConfiguration = serde_json::from_value(configuration(
        "ValidatingWebhookConfiguration",
        "memory-ceiling.world.example.com",
        &refusing.url(),
        pod_rule(&["CREATE"]),
        selector("refuse"),
    ))?;
    let post = PostParams::default();
    Api::<MutatingWebhookConfiguration>::all(kube.clone()).create(&post, &mutating).await?;
    Api::<ValidatingWebhookConfiguration>::all(kube.clone()).create(&post, &validating).await?;
    Ok((clamping, refusing))
}

/// Draws the incidents' constraints (and reconciler delays).
fn draw(options: &WorldOptions) -> Vec<Case> {
    let mut rng = Rng(options.seed.max(1));
    let mut first: Vec<Constraint> =
        if options.every_constraint_first { Constraint::ALL.to_vec() } else { Vec::new() };
    for i in (1..first.len()).rev() {
        first.swap(i, rng.below(i as u64 + 1) as usize);
    }
    (0..options.incidents)
        .map(|i| {
            let (constraint, delay) = match first.pop() {
                // The first reconciler puts the manifest back at once (KubeSent is still verifying).
                Some(constraint) => (constraint, Duration::ZERO),
                // At once, while KubeSent verifies, or after its verify window.
                None => (
                    Constraint::ALL[rng.below(Constraint::ALL.len() as u64) as usize],
                    Duration::from_millis([0, 500, 1_500, 6_000, 10_000][rng.below(5) as usize]),
                ),
            };
            Case { namespace: format!("world-{i:03}"), constraint, delay }
        })
        .collect()
}

/// Outcomes and verdicts as they pass, by namespace.
#[derive(Clone, Default)]
struct Seen {
    outcomes: Arc<Mutex<BTreeMap<String, Vec<Outcome>>>>,
    verdicts: Arc<Mutex<BTreeMap<String, Vec<Verdict>>>>,
    changed: Arc<tokio::sync::Notify>,
}

impl Seen {
    async fn start(client: &async_nats::Client) -> anyhow::Result<Self> {
        let mut outcomes = client.subscribe(proto::OUTCOMES_SUBJECTS).await?;
        let mut verdicts = client.subscribe(proto::VERDICTS_SUBJECTS).await?;
        let seen = Self::default();
        let keep = seen.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    Some(message) = outcomes.next() => {
                        if let Ok(outcome) = proto::decode::<Outcome>(&message.payload) {
                            let mut map = keep.outcomes.lock().unwrap_or_else(PoisonError::into_inner);
                            map.entry(outcome.pod.namespace.clone()).or_default().push(outcome);
                            keep.changed.notify_waiters();
                        }
                    }
                    Some(message) = verdicts.next() => {
                        if let Ok(verdict) = proto::decode::<Verdict>(&message.payload) {
                            let mut map = keep.verdicts.lock().unwrap_or_else(PoisonError::into_inner);
                            map.entry(verdict.pod.namespace.clone()).or_default().push(verdict);
                        }
                    }
                    else => return,
                }
            }
        });
        Ok(seen)
    }

    /// The first final outcome in `namespace`.
    fn first_final(&self, namespace: &str) -> Option<Outcome> {
        let map = self.outcomes.lock().unwrap_or_else(PoisonError::into_inner);
        map.get(namespace)?
            .iter()
            .filter(|o| o.result != OutcomeResult::AwaitingApproval)
            .min_by_key(|o| o.at)
            .cloned()
    }

    fn verdict_at(&self, namespace: &str, incident: &proto::IncidentId) -> Option<jiff::Timestamp> {
        let map = self.verdicts.lock().unwrap_or_else(PoisonError::into_inner);
        map.get(namespace)?.iter().find(|v| &v.incident == incident).map(|v| v.diagnosed_at)
    }

    /// Waits until every namespace of `cases` has a final outcome, or `limit`.
    async fn wait_for(&self, cases: &[Case], limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let changed = self.changed.notified();
            if cases.iter().all(|c| self.first_final(&c.namespace).is_some()) {
                return;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return;
            }
        }
    }
}

/// Runs the campaign.
pub async fn run(options: &WorldOptions) -> anyhow::Result<WorldReport> {
    let started = Instant::now();
    let cases = draw(options);
    let mut overrides = topology::overrides([
        ("KUBESENT_LEASE_SECONDS", "5".to_owned()),
        ("KUBESENT_VERIFY_SECONDS", VERIFY_SECONDS.to_string()),
        ("KUBESENT_MAX_ACTIONS_PER_HOUR", "100000".to_owned()),
        ("KUBESENT_BREAKER_FAILURES", "100000".to_owned()),
        ("KUBESENT_LOG_JSON", "false".to_owned()),
    ]);
    if options.without_take_back {
        overrides.push(("KUBESENT_TAKE_BACK".to_owned(), "false".to_owned()));
    }
    let mut nodes: Vec<NodeConfig> = (1..=3).map(|i| NodeConfig::worker(&format!("sim-node-{i}"))).collect();
    nodes.extend(
        cases.iter().filter(|c| c.constraint == Constraint::NodeTooSmall).map(|c| small_node(&c.namespace)),
    );
    let namespaces: Vec<String> =
        ["kubesent".to_owned()].into_iter().chain(cases.iter().map(|c| c.namespace.clone())).collect();
    let mut topology = Topology::start(&TopologyOptions {
        exe: options.exe.clone(),
        kubernetes_minor: 36,
        overrides: overrides.clone(),
        dir: options.dir.clone(),
        nodes,
        namespaces,
        ..TopologyOptions::default()
    })
    .await
    .context("starting the topology")?;
    let (_clamping, _refusing) = webhooks(&topology.kube).await.context("configuring the webhooks")?;
    let tap = Tap::start(&topology.js.client()).await?;
    let seen = Seen::start(&topology.js.client()).await?;

    let mut progress = Progress::new("incidents", cases.len());
    let mut reconcilers = Vec::new();
    let mut done = 0;
    for wave in cases.chunks(options.parallel.max(1)) {
        topology.supervise()?;
        progress.update(done, "setting up");
        let set_up = futures::future::join_all(wave.iter().map(|case| set_up(&topology.kube, case))).await;
        for (case, result) in wave.iter().zip(set_up) {
            if let Some(reconciler) = result.with_context(|| format!("setting up {}", case.namespace))? {
                reconcilers.push(reconciler);
            }
        }
        seen.wait_for(wave, WAVE_LIMIT).await;
        done += wave.len();
    }
    progress.update(done, "settling");
    // Reconcilers that put the manifest back after KubeSent healed cause new failures: they must be
    // answered too (with a suggestion, never a second write).
    tokio::time::sleep(Duration::from_secs(15)).await;
    progress.finish();
    for reconciler in reconcilers {
        reconciler.stop().await;
    }

    let world = World::read(&topology.js, &topology.kube, topology.sim.requests()).await?;
    let tokens: Vec<String> =
        topology.replicas.iter().filter(|r| r.role == Role::Remediator).map(|r| r.token.clone()).collect();
    let expectations = Expectations {
        failures: cases.iter().map(|c| (c.namespace.clone(), "app".to_owned())).collect(),
        images: BTreeSet::from([IMAGE.to_owned()]),
        max_memory: MemoryQuantity::from_mib(8 * 1024),
    };
    let mut report = WorldReport { overrides, ..WorldReport::default() };
    report.violations.extend(invariants::check(&world, &expectations, &tokens, &tap));
    let (cases, violations) = check(&cases, &world, &seen, &tokens, &tap);
    report.violations.extend(violations);
    for case in &cases {
        let result = case.result.map_or("none", OutcomeResult::as_str);
        *report.outcomes.entry(case.constraint).or_default().entry(result).or_default() += 1;
    }
    report.cases = cases;
    report.elapsed = started.elapsed();
    if let Some(dir) = &options.report_dir {
        let machine = report::machine();
        report.written = Some(report::write(dir, "world", &report.to_json(&machine), &report.to_string())?);
    }
    topology.stop().await;
    Ok(report)
}

/// The world campaign's own invariants, and what became of each incident.
fn check(
    cases: &[Case],
    world: &World,
    seen: &Seen,
    tokens: &[String],
    tap: &Tap,
) -> (Vec<CaseResult>, Vec<Violation>) {
    let mut violations = Vec::new();
    let mut results = Vec::new();
    let limit = MemoryQuantity::from_mib(LIMIT_MIB);
    for case in cases {
        let ns = case.namespace.as_str();
        let path = format!("/apis/apps/v1/namespaces/{ns}/deployments/app");
        let writes: Vec<jiff::Timestamp> = world
            .requests
            .iter()
            .filter(|r| {
                tokens.contains(&r.client)
                    && r.method == "PATCH"
                    && r.path == path
                    && (200..300).contains(&r.status)
            })
            .map(|r| r.at)
            .collect();
        let first = seen.first_final(ns);
        let history = || first.as_ref().map(|o| tap.history(o.incident.as_str())).unwrap_or_default();
        let mut violation = |invariant: &'static str, detail: String| {
            violations.push(Violation {
                invariant,
                detail: format!("{ns} ({}): {detail}", case.constraint.name()),
                history: history(),
            });
        };
        let result = first.as_ref().map(|o| o.result);
        let since = |from: jiff::Timestamp, to: jiff::Timestamp| {
            Duration::try_from(to.duration_since(from)).unwrap_or(Duration::ZERO)
        };
        let write_to_outcome = writes.first().zip(first.as_ref()).map(|(w, o)| since(*w, o.at));
        let write_to_take_back = (writes.len() >= 2).then(|| since(writes[0], writes[1]));
        let verdict_to_outcome =
            first.as_ref().and_then(|o| seen.verdict_at(ns, &o.incident).map(|v| since(v, o.at)));
        match result {
            None => violation("every incident ends with an outcome", "no final outcome".into()),
            Some(result) if !case.constraint.allowed().contains(&result) => violation(
                "each incident ends as its constraint allows",
                format!(
                    "ended {} (allowed: {:?}): {}",
                    result.as_str(),
                    case.constraint.allowed().iter().map(|r| r.as_str()).collect::<Vec<_>>(),
                    first.as_ref().map(|o| o.detail.as_str()).unwrap_or_default()
                ),
            ),
            Some(_) => {}
        }
        // The Deployment at the end: KubeSent's change stays only where it healed.
        let deployment = world.deployments.iter().find(|d| {
            d.metadata.namespace.as_deref() == Some(ns) && d.metadata.name.as_deref() == Some("app")
        });
        let template_limit = deployment
            .and_then(|d| d.spec.as_ref()?.template.spec.as_ref()?.containers.first().cloned())
            .and_then(|c| c.resources?.limits?.get("memory").cloned())
            .and_then(|q| MemoryQuantity::parse(&q.0).ok());
        let healed = seen
            .outcomes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(ns)
            .is_some_and(|o| o.iter().any(|o| o.result == OutcomeResult::Healed));
        if template_limit != Some(limit) && !healed {
            violation(
                "nothing left changed that did not help",
                format!(
                    "the template's memory limit is {} and no fix healed",
                    template_limit.map_or_else(|| "unset".to_owned(), |m| m.to_string())
                ),
            );
        }
        if case.constraint.healable() {
            let ready = deployment.and_then(|d| d.status.as_ref()?.ready_replicas).unwrap_or(0);
            if result != Some(OutcomeResult::Healed) || ready < 1 {
                violation(
                    "every healable incident heals",
                    format!("ended {:?} with {ready} ready pod(s)", result.map(OutcomeResult::as_str)),
                );
            }
        }
        // One write per incident chain, and one more to take it back.
        let took_back = matches!(result, Some(OutcomeResult::NotLanded | OutcomeResult::Reverted));
        let allowed_writes = match result {
            Some(OutcomeResult::Denied | OutcomeResult::Suggested) => 0,
            _ if took_back => 2,
            _ => 1,
        };
        if writes.len() > allowed_writes {
            violation(
                "KubeSent never writes the same field twice in one incident chain",
                format!("{} writes to the Deployment, {allowed_writes} allowed", writes.len()),
            );
        }
        if took_back {
            match write_to_take_back {
                Some(took) if took <= TAKE_BACK_LIMIT => {}
                took => violation(
                    "what did not land or hurt is taken back within 15 s",
                    format!("taken back after {took:?}"),
                ),
            }
        }
        if let Some(took) = write_to_outcome
            && took > OUTCOME_LIMIT + Duration::from_secs(VERIFY_SECONDS)
        {
            violation(
                "every incident ends within 30 s of the cluster showing it",
                format!("its outcome came {took:?} after KubeSent's write"),
            );
        }
        results.push(CaseResult {
            namespace: case.namespace.clone(),
            constraint: case.constraint,
            result,
            writes: writes.len(),
            write_to_outcome,
            write_to_take_back,
            verdict_to_outcome,
        });
    }
    (results, violations)
}
