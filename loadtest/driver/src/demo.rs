//! The demo (`make demo`, `kubesent-dev demo`): KubeSent as it is deployed, on one machine. Two detectors,
//! three diagnosers and two remediators run as separate processes of the product binary, `kubesent` (each
//! with its own identity, NATS user and
//! ServiceAccount token, competing for their Leases) against a 3-server JetStream cluster and kube-sim
//! with `deploy/base`'s RBAC, and play the failures KubeSent is for:
//!
//! - an OOM storm: a 5-replica Deployment whose pods all run out of memory, one incident, one fix;
//! - a bare pod OOM-killed, resized in place;
//! - a rollout to an image that does not exist, rolled back;
//! - a crash loop from a missing environment variable: a diagnosis, no change;
//! - a failure in an excluded namespace (`kube-system`): ignored;
//! - the leading remediator killed while it verifies a fix: the standby takes the Lease and finishes it;
//! - earned autonomy: namespace `payments` in shadow, so KubeSent only says what it would do for an
//!   OOM-killed Deployment; a person then makes the same change (as `kubectl set resources` would), and
//!   the follow-up counts it as agreed; `kubesent report` shows the record at the end.
//!
//! A live view shows each incident move through detected → diagnosed → acting → its result, with who
//! acted and the timings (a redrawn table on a terminal, one line per step otherwise), then a summary
//! and the commands to look around.

use std::{
    collections::BTreeMap,
    io::Write,
    path::PathBuf,
    time::{Duration, Instant},
};

use crate::campaign::topology::{self, Topology, TopologyOptions};
use anyhow::{Context as _, bail};
use futures::StreamExt as _;
use k8s_openapi::api::{apps::v1::Deployment, core::v1::Pod};
use kube::{
    Api,
    api::{Patch, PatchParams, PostParams},
};
use kubesent_common::nats::Role;
use kubesent_kube_sim::ImageState;
use kubesent_proto::intent::{Intent, Phase};
use kubesent_proto::{
    self as proto, Action, FailureJob, IncidentId, Outcome, OutcomeResult, Verdict, autonomy::HumanResponse,
};
use serde_json::json;

/// How the demo runs.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// The product binary, `kubesent`, whose processes the demo runs.
    pub exe: PathBuf,
    /// Wall-clock seconds per simulated kubelet second (0.1 = ten times faster than real time).
    pub time_scale: f64,
    /// Seconds a fix must stay healthy to count as healed.
    pub verify_seconds: u64,
    /// Keep everything running after the demo, for kubectl and `kubesent incidents`, until Ctrl-C.
    pub keep_running: bool,
    /// Where the services' logs and the kubeconfigs go (a temporary directory when unset).
    pub dir: Option<PathBuf>,
    /// Redraw a table (a terminal) instead of writing one line per step.
    pub live: bool,
}

/// How long the scenarios may take before the demo gives up.
const DEMO_TIMEOUT: Duration = Duration::from_secs(180);

/// The demo's workloads, by `namespace/kind name`, and what each shows.
const SCENARIOS: [(&str, &str); 5] = [
    ("shop/Deployment checkout", "OOM storm of a 5-replica Deployment"),
    ("shop/Pod worker", "bare pod OOM-killed"),
    ("shop/Deployment web", "rollout to a missing image"),
    ("shop/Pod api", "crash loop from a missing env var"),
    ("payments/Deployment ledger", "shadow (namespace payments)"),
];

/// The demo's autonomy policy: deploy/base's, with namespace `payments` in shadow.
fn demo_policy() -> String {
    format!("{}namespaces:\n  - name: payments\n    mode: shadow\n", topology::DEPLOY_AUTONOMY_POLICY)
}

/// What a person sets ledger's memory to, as `kubectl set resources` would.
const LEDGER_RAISE: &str = "256Mi";

/// One incident as the view shows it.
#[derive(Debug, Clone)]
struct Row {
    workload: String,
    failure: String,
    pods: u32,
    state: String,
    action: String,
    by: String,
    detected: Option<Duration>,
    diagnosed: Option<Duration>,
    done: Option<Duration>,
    result: Option<OutcomeResult>,
    root_cause: String,
    detail: String,
    /// What people did after a decision KubeSent did not carry out, and who.
    followed: Option<(HumanResponse, String)>,
}

fn secs(at: Option<Duration>) -> String {
    at.map(|d| format!("{:.1}s", d.as_secs_f64())).unwrap_or_else(|| "-".into())
}

fn action_words(action: &Action) -> String {
    match action {
        Action::IncreaseMemory { from, to, .. } => format!("memory {from}→{to}"),
        Action::RollbackImage { to, .. } => format!("image→{}", to.rsplit('/').next().unwrap_or(to)),
        Action::RollbackRevision { from, to, .. } => format!("revision {}→{}", from.number, to.number),
        Action::PauseRollout { revision, .. } => format!("pause at {}", revision.number),
        Action::None => "diagnosis only".into(),
    }
}

/// What the demo knows so far.
#[derive(Default)]
struct View {
    rows: BTreeMap<IncidentId, Row>,
    leaders: BTreeMap<&'static str, String>,
    notes: Vec<String>,
    jobs_excluded: Vec<String>,
}

impl View {
    fn row(&mut self, incident: &IncidentId, workload: impl FnOnce() -> String) -> &mut Row {
        self.rows.entry(incident.clone()).or_insert_with(|| Row {
            workload: workload(),
            failure: String::new(),
            pods: 1,
            state: "detected".into(),
            action: "-".into(),
            by: "-".into(),
            detected: None,
            diagnosed: None,
            done: None,
            result: None,
            root_cause: String::new(),
            detail: String::new(),
            followed: None,
        })
    }

    /// Takes one message; the line to print for it (plain mode).
    fn take(&mut self, subject: &str, payload: &[u8], at: Duration) -> Option<String> {
        if subject.starts_with("kubesent.jobs.") {
            let job: FailureJob = proto::decode(payload).ok()?;
            if job.pod.namespace == "kube-system" {
                self.jobs_excluded.push(format!("{}/{}", job.pod.namespace, job.pod.name));
            }
            let workload =
                format!("{}/{} {}", job.key.namespace, job.key.workload.kind, job.key.workload.name);
            let row = self.row(&job.incident, || workload.clone());
            row.failure = job.failure.kind.as_str().to_owned();
            row.pods = job.affected_pods;
            row.detected.get_or_insert(at);
            return Some(format!(
                "{workload}: detected {} ({} pod{}), incident {}",
                job.failure.kind.as_str(),
                job.affected_pods,
                if job.affected_pods == 1 { "" } else { "s" },
                job.incident
            ));
        }
        if subject.starts_with("kubesent.verdicts.") {
            let verdict: Verdict = proto::decode(payload).ok()?;
            let workload = format!(
                "{}/{} {}",
                verdict.key.namespace, verdict.key.workload.kind, verdict.key.workload.name
            );
            let row = self.row(&verdict.incident, || workload.clone());
            row.state = "diagnosed".into();
            row.action = action_words(&verdict.action);
            row.root_cause = verdict.root_cause.clone();
            row.diagnosed.get_or_insert(at);
            return Some(format!("{workload}: diagnosed ({}%): {}", verdict.confidence, verdict.root_cause));
        }
        if subject.starts_with("kubesent.outcomes.") {
            let outcome: Outcome = proto::decode(payload).ok()?;
            let workload = outcome
                .diagnosis
                .as_ref()
                .map(|d| format!("{}/{} {}", outcome.pod.namespace, d.workload.kind, d.workload.name))
                .unwrap_or_else(|| format!("{}/Pod {}", outcome.pod.namespace, outcome.pod.name));
            let row = self.row(&outcome.incident, || workload.clone());
            if let Some(followup) =
                outcome.followup.as_ref().filter(|_| outcome.result == OutcomeResult::Followed)
            {
                let by = followup.by.clone().unwrap_or_default();
                row.state = format!("followed: {}", followup.response.as_str());
                row.followed = Some((followup.response, by));
                return Some(format!("{workload}: followed up: {}", outcome.detail));
            }
            row.state = outcome.result.as_str().to_owned();
            row.by = outcome.actor.trim_start_matches("kubesent-").to_owned();
            row.detail = outcome.detail.clone();
            // The first final outcome counts: a verdict handed back by a killed replica is answered again
            // on the wire (JetStream keeps one copy in the audit log).
            if outcome.result != OutcomeResult::AwaitingApproval && row.result.is_none() {
                row.result = Some(outcome.result);
                row.done = Some(at);
            }
            return Some(format!(
                "{workload}: {} by {}: {}",
                outcome.result.as_str(),
                outcome.actor,
                outcome.detail
            ));
        }
        None
    }

    /// The live table.
    fn table(&self, elapsed: Duration) -> String {
        let mut out = format!(
            "KubeSent demo · {:.0}s · leaders: detector {} · remediator {}\n\n",
            elapsed.as_secs_f64(),
            self.leaders.get("detector").map(String::as_str).unwrap_or("-"),
            self.leaders.get("remediator").map(String::as_str).unwrap_or("-"),
        );
        out.push_str(&format!(
            "{:<28} {:<14} {:>4}  {:<14} {:<20} {:<20} {:>8} {:>8} {:>8}\n",
            "WORKLOAD", "FAILURE", "PODS", "STATE", "ACTION", "BY", "DETECTED", "VERDICT", "DONE"
        ));
        for row in self.rows.values() {
            out.push_str(&format!(
                "{:<28} {:<14} {:>4}  {:<14} {:<20} {:<20} {:>8} {:>8} {:>8}\n",
                row.workload,
                row.failure,
                row.pods,
                row.state,
                row.action,
                row.by,
                secs(row.detected),
                secs(row.diagnosed),
                secs(row.done)
            ));
        }
        if !self.notes.is_empty() {
            out.push('\n');
            for note in &self.notes {
                out.push_str(&format!("  {note}\n"));
            }
        }
        out
    }

    /// The workload's incident once it ended (a suggestion: once its follow-up did too).
    fn finished(&self, workload: &str) -> Option<&Row> {
        self.rows.values().find(|r| {
            r.workload == workload
                && r.result.is_some()
                && (r.result != Some(OutcomeResult::Suggested) || r.followed.is_some())
        })
    }
}

/// Writes as it goes: a redrawn table on a terminal, plain lines otherwise.
struct Screen<W> {
    live: bool,
    started: Instant,
    out: W,
}

impl<W: Write> Screen<W> {
    fn line(&mut self, text: &str) {
        if !self.live {
            let _ = writeln!(self.out, "[{:>6.2}s] {text}", self.started.elapsed().as_secs_f64());
        }
    }

    fn draw(&mut self, view: &View) {
        if self.live {
            let _ = write!(self.out, "\x1b[2J\x1b[H{}", view.table(self.started.elapsed()));
            let _ = self.out.flush();
        }
    }
}

fn pod(name: &str, annotations: serde_json::Value, env: serde_json::Value) -> anyhow::Result<Pod> {
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": name}, "annotations": annotations},
        "spec": {"containers": [{"name": "app", "image": format!("registry.local/shop/{name}:1.0"), "env": env,
            "resources": {"limits": {"memory": "128Mi"}, "requests": {"memory": "128Mi", "cpu": "50m"}}}]}
    }))?)
}

fn deployment(name: &str, replicas: i32, annotations: serde_json::Value) -> anyhow::Result<Deployment> {
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}, "annotations": annotations},
                "spec": {"containers": [{"name": "app", "image": format!("registry.local/shop/{name}:1.0"),
                    "resources": {"limits": {"memory": "128Mi"}, "requests": {"memory": "128Mi", "cpu": "50m"}}}]}}}
    }))?)
}

/// Starts the workloads of every scenario.
async fn create_scenarios(kube: &kube::Client, sim: &kubesent_kube_sim::KubeSim) -> anyhow::Result<()> {
    let params = PostParams::default();
    let deployments: Api<Deployment> = Api::namespaced(kube.clone(), "shop");
    let pods: Api<Pod> = Api::namespaced(kube.clone(), "shop");
    let oom = json!({"sim.kubesent.io/memory-need": "200Mi"});
    deployments.create(&params, &deployment("checkout", 5, oom.clone())?).await.context("checkout")?;
    pods.create(&params, &pod("worker", oom.clone(), json!([]))?).await.context("worker")?;
    let crash = json!({"sim.kubesent.io/exit-code": "1", "sim.kubesent.io/run-seconds": "1",
        "sim.kubesent.io/logs": "starting api 3.2.0\nfatal: missing required environment variable DATABASE_URL"});
    pods.create(&params, &pod("api", crash, json!([{"name": "LOG_LEVEL", "value": "info"}]))?)
        .await
        .context("api")?;
    let system: Api<Pod> = Api::namespaced(kube.clone(), "kube-system");
    system.create(&params, &pod("node-agent", oom.clone(), json!([]))?).await.context("node-agent")?;
    let payments: Api<Deployment> = Api::namespaced(kube.clone(), "payments");
    payments.create(&params, &deployment("ledger", 2, oom)?).await.context("ledger")?;
    // A healthy revision first; its rollout to a missing image follows once it serves.
    deployments.create(&params, &deployment("web", 3, json!({}))?).await.context("web")?;
    sim.state().registry.set("registry.local/shop/web:1.1", ImageState::Missing);
    Ok(())
}

/// Runs the demo, writing what happens to `out`.
pub async fn run(args: DemoOptions, out: impl Write) -> anyhow::Result<()> {
    let mut screen = Screen { live: args.live, started: Instant::now(), out };
    writeln!(
        screen.out,
        "KubeSent demo: 2 detectors, 3 diagnosers and 2 remediators as separate processes, a 3-server JetStream\ncluster and the Kubernetes API simulator with deploy/base's RBAC. Starting (about 15 s)…"
    )?;
    let mut topology = Topology::start(&TopologyOptions {
        exe: args.exe.clone(),
        detectors: 2,
        diagnosers: 3,
        remediators: 2,
        time_scale: args.time_scale,
        kubernetes_minor: 36,
        overrides: topology::overrides([
            ("KUBESENT_LEASE_SECONDS", "5".to_owned()),
            ("KUBESENT_VERIFY_SECONDS", args.verify_seconds.to_string()),
            ("KUBESENT_LOG_JSON", "false".to_owned()),
            // Compressed as the verify window is: a revision serving for 30 s is known-good, so a bad
            // deploy tried by hand after the scenarios (README) is rolled back even once its rollout finished.
            ("KUBESENT_KNOWN_GOOD_AFTER", "30s".to_owned()),
            // Follow-ups are looked at each second (deploy/base: 30 s), so the person's change shows soon.
            ("KUBESENT_FOLLOWUP_EVERY", "1s".to_owned()),
        ]),
        namespaces: vec!["kubesent".to_owned(), "shop".to_owned(), "payments".to_owned()],
        autonomy_policy: Some(demo_policy()),
        dir: args.dir.clone(),
        ..TopologyOptions::default()
    })
    .await
    .context("starting the services")?;
    screen.started = Instant::now();
    let mut view = View::default();
    let client = topology.js.client();
    let mut messages = client.subscribe("kubesent.>").await.context("subscribing to kubesent.>")?;
    let intents = topology.js.get_key_value(proto::INTENTS_BUCKET).await.context("the intents bucket")?;
    create_scenarios(&topology.kube, &topology.sim).await?;
    screen.line("created: Deployment checkout (5 replicas that need 200Mi, limit 128Mi), pod worker (the same), pod api (exits: DATABASE_URL is not set), pod kube-system/node-agent (OOM, excluded namespace), Deployment web (healthy), Deployment payments/ledger (2 replicas that need 200Mi; payments is in shadow)");

    let deployments: Api<Deployment> = Api::namespaced(topology.kube.clone(), "shop");
    let mut web_rolled_out = false;
    let mut person_raised_ledger = false;
    let mut killed: Option<(String, Duration)> = None;
    let mut took_over: Option<(String, Duration)> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let deadline = tokio::time::sleep(DEMO_TIMEOUT);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            () = &mut deadline => {
                screen.draw(&view);
                bail!("the scenarios did not finish within {DEMO_TIMEOUT:?} (logs in {})", topology.dir().display());
            }
            Some(message) = messages.next() => {
                if let Some(line) = view.take(message.subject.as_str(), &message.payload, screen.started.elapsed()) {
                    screen.line(&line);
                }
            }
            _ = tick.tick() => {
                let now = screen.started.elapsed();
                for restarted in topology.supervise()? {
                    screen.line(&format!("{restarted} exited and was started again (as its Deployment would)"));
                }
                for role in [Role::Detector, Role::Remediator] {
                    if let Ok(Some((holder, _))) = topology.leader(role).await {
                        let short = holder.trim_start_matches("kubesent-").to_owned();
                        let previous = view.leaders.insert(role.as_str(), short.clone());
                        if previous.as_ref() != Some(&short) {
                            screen.line(&format!("{} leader: {short}", role.as_str()));
                            if role == Role::Remediator
                                && let Some((victim, at)) = &killed
                                && took_over.is_none()
                                && holder != *victim
                            {
                                took_over = Some((short.clone(), now.saturating_sub(*at)));
                                // Its pod comes back (as a new one would): a standby again.
                                if let Some(replica) = topology.replica_mut(victim) {
                                    replica.held = false;
                                }
                                view.notes.push(format!("{short} took the remediator Lease {:.1}s after the kill", now.saturating_sub(*at).as_secs_f64()));
                            }
                        }
                    }
                }
                // The rollout to a missing image, once revision 1 serves.
                if !web_rolled_out
                    && let Ok(web) = deployments.get("web").await
                    && web.status.as_ref().and_then(|s| s.ready_replicas) == Some(3)
                {
                    let update = json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": "registry.local/shop/web:1.1"}]}}}});
                    deployments.patch("web", &PatchParams::default(), &Patch::Strategic(&update)).await?;
                    web_rolled_out = true;
                    screen.line("Deployment web: revision 1 serves; rolling out revision 2 with image web:1.1, which does not exist");
                }
                // KubeSent only said what it would do for ledger: a person does it.
                if !person_raised_ledger
                    && view.rows.values().any(|r| r.workload == "payments/Deployment ledger" && r.result == Some(OutcomeResult::Suggested))
                {
                    let ledger: Api<Deployment> = Api::namespaced(topology.kube.clone(), "payments");
                    let raise = json!({"spec": {"template": {"spec": {"containers": [{"name": "app",
                        "resources": {"limits": {"memory": LEDGER_RAISE}, "requests": {"memory": LEDGER_RAISE}}}]}}}});
                    let params = PatchParams { field_manager: Some("kubectl-set".into()), ..PatchParams::default() };
                    ledger.patch("ledger", &params, &Patch::Strategic(&raise)).await?;
                    person_raised_ledger = true;
                    screen.line(&format!("payments/Deployment ledger: a person raises memory to {LEDGER_RAISE}, as `kubectl set resources deployment/ledger -n payments --limits=memory={LEDGER_RAISE} --requests=memory={LEDGER_RAISE}` does (field manager kubectl-set)"));
                }
                // Kill the leading remediator while it verifies the storm's fix.
                if killed.is_none()
                    && let Some((incident, _)) = view.rows.iter().find(|(_, r)| r.workload == "shop/Deployment checkout")
                    && let Ok(Some(value)) = intents.get(incident.as_str()).await
                    && let Ok(intent) = serde_json::from_slice::<Intent>(&value)
                    && intent.phase == Phase::Applied
                    && let Ok(Some((leader, _))) = topology.leader(Role::Remediator).await
                {
                    // As a lost pod: not started again until the standby has taken over.
                    if let Some(replica) = topology.replica_mut(&leader) {
                        replica.held = true;
                    }
                    topology.sample_counts().await;
                    topology.signal(&leader, "KILL")?;
                    let short = leader.trim_start_matches("kubesent-").to_owned();
                    view.notes.push(format!("killed {short} (SIGKILL) while it verified checkout's fix"));
                    screen.line(&format!("SIGKILL to {leader}, the leading remediator, in the middle of verifying checkout's fix"));
                    killed = Some((leader, now));
                }
                screen.draw(&view);
                let all_done = SCENARIOS.iter().all(|(workload, _)| view.finished(workload).is_some());
                if all_done && took_over.is_some() {
                    break;
                }
            }
        }
    }
    let elapsed = screen.started.elapsed();
    // The verdicts the killed leader held come back and are answered again: once none is left, each
    // incident must be counted once in the remediators' own metrics (outcomes, SLI observations).
    let settled = topology.verdicts_settled(Duration::from_secs(60)).await;
    topology.sample_counts().await;
    let counts = topology.counts();
    let repeats =
        match crate::campaign::invariants::World::read(&topology.js, &topology.kube, Vec::new()).await {
            Ok(world) => crate::campaign::invariants::check_counts(&world, &counts),
            Err(error) => {
                vec![crate::campaign::invariants::Violation {
                    invariant: "reading the audit log",
                    detail: format!("{error:#}"),
                    history: Vec::new(),
                }]
            }
        };
    let healed_observations: f64 = counts
        .iter()
        .filter(|(series, _)| series.starts_with("kubesent_remediator_failure_to_healed_seconds_count"))
        .map(|(_, v)| v)
        .sum();
    let system: Api<Pod> = Api::namespaced(topology.kube.clone(), "kube-system");
    let agent_restarts = system
        .get("node-agent")
        .await
        .ok()
        .and_then(|p| p.status?.container_statuses?.first().map(|c| c.restart_count))
        .unwrap_or(0);
    screen.draw(&view);

    let out = &mut screen.out;
    writeln!(out, "\nSummary ({:.0} s after the services were up)", elapsed.as_secs_f64())?;
    let mut all_as_expected = true;
    for (workload, what) in SCENARIOS {
        let Some(row) = view.finished(workload) else { continue };
        let expected = match workload {
            "shop/Pod api" => row.result == Some(OutcomeResult::DiagnosisOnly),
            "payments/Deployment ledger" => {
                row.result == Some(OutcomeResult::Suggested)
                    && row.followed.as_ref().is_some_and(|(response, _)| *response == HumanResponse::Same)
            }
            _ => row.result == Some(OutcomeResult::Healed),
        };
        all_as_expected &= expected;
        writeln!(
            out,
            "  {} {what}: {workload}, {} pod{} → {} → {} in {} (by {})",
            if expected { "✓" } else { "✗" },
            row.pods,
            if row.pods == 1 { "" } else { "s" },
            row.action,
            row.state,
            secs(row.done.zip(row.detected).map(|(d, s)| d.saturating_sub(s))),
            row.by
        )?;
        if workload == "shop/Pod api" {
            writeln!(out, "      {}", row.root_cause)?;
        }
        if let Some((response, by)) = &row.followed {
            writeln!(
                out,
                "      then a person made {} change ({by}): counted as {} in memory-raise's record",
                if *response == HumanResponse::Same { "the same" } else { "a different" },
                if *response == HumanResponse::Same { "agreed" } else { "disagreed" }
            )?;
        }
    }
    let ignored = view.jobs_excluded.is_empty();
    all_as_expected &= ignored;
    writeln!(
        out,
        "  {} excluded namespace: kube-system/node-agent OOM-killed {agent_restarts} times, {}",
        if ignored { "✓" } else { "✗" },
        if ignored { "no incident".to_owned() } else { format!("incidents for {:?}", view.jobs_excluded) }
    )?;
    if let (Some((victim, _)), Some((successor, after))) = (&killed, &took_over) {
        writeln!(
            out,
            "  ✓ failover: {} killed mid-fix; {successor} led {:.1} s later and finished the fix",
            victim.trim_start_matches("kubesent-"),
            after.as_secs_f64()
        )?;
    }
    let counted_once = settled && repeats.is_empty();
    all_as_expected &= counted_once;
    writeln!(
        out,
        "  {} counted once: after the failover, every verdict handed back was answered without a second outcome ({healed_observations} healed observations in the remediators' metrics){}",
        if counted_once { "✓" } else { "✗" },
        if counted_once {
            String::new()
        } else if !settled {
            "; verdicts were still pending after a minute".to_owned()
        } else {
            format!("; {}", repeats.iter().map(|v| v.detail.clone()).collect::<Vec<_>>().join("; "))
        }
    )?;
    // The record behind earned autonomy, as an operator reads it.
    let report = std::process::Command::new(&args.exe)
        .args(["report", "--since", "1h"])
        .env("KUBESENT_NATS_URL", topology.nats.urls())
        .envs(topology.users.env(Role::Reader))
        .output()
        .context("running kubesent report")?;
    let report_text = String::from_utf8_lossy(&report.stdout);
    let reported = report.status.success() && report_text.contains("memory-raise       payments");
    all_as_expected &= reported;
    writeln!(out, "\n{} kubesent report --since 1h:", if reported { "✓" } else { "✗" })?;
    for line in report_text.lines() {
        writeln!(out, "  {line}")?;
    }
    if !report.status.success() {
        writeln!(out, "  {}", String::from_utf8_lossy(&report.stderr).trim())?;
    }
    let dir = topology.dir().display().to_string();
    let admin = topology.dir().join("admin.kubeconfig");
    let admin_token = topology.admin_token.clone();
    std::fs::write(
        &admin,
        serde_json::to_vec(&json!({
            "apiVersion": "v1", "kind": "Config", "current-context": "kube-sim",
            "clusters": [{"name": "kube-sim", "cluster": {"server": topology.sim.url()}}],
            "users": [{"name": "admin", "user": {"token": admin_token}}],
            "contexts": [{"name": "kube-sim", "context": {"cluster": "kube-sim", "user": "admin", "namespace": "shop"}}]
        }))?,
    )?;
    // One file per role a person uses, to `source`: the NATS servers and that role's user and password
    // (the operator's also the kubeconfig `kubesent undo` acts with), readable by the owner only.
    let mut sourced = Vec::new();
    for (role, what) in [
        (
            Role::Reader,
            "kubesent incidents; kubesent incidents show <incident>; kubesent tail; kubesent report; kubesent policy show",
        ),
        (
            Role::Operator,
            "kubesent pause --reason test; kubesent resume; kubesent approve|reject|undo <incident>; kubesent policy promote <class>",
        ),
        (Role::Notifier, "kubesent notifier --webhook-url http://127.0.0.1:9/ (or --slack-webhook-url …)"),
        (
            Role::Slack,
            "kubesent slack --slack-signing-secret … --slack-approvers U0123ABCD --listen 127.0.0.1:8080",
        ),
    ] {
        let file = topology.dir().join(format!("{}.env", role.as_str()));
        let mut lines = vec![format!("export KUBESENT_NATS_URL='{}'", topology.nats.urls())];
        lines.extend(topology.users.env(role).into_iter().map(|(k, v)| format!("export {k}='{v}'")));
        if role == Role::Operator {
            lines.push(format!("export KUBECONFIG='{}'", admin.display()));
        }
        write_private(&file, &(lines.join("\n") + "\n"))?;
        sourced.push(format!("  source {}    then: {what}", file.display()));
    }
    let look = format!(
        "\nLook around{}:\n  export KUBECONFIG={}\n  kubectl get deploy,pods -n shop; kubectl describe deploy checkout; kubectl get events -n shop\n  alias kubesent={}\n{}\n  the services' logs: {dir}/kubesent-*.log",
        if args.keep_running {
            " (still running; Ctrl-C to stop)"
        } else {
            " (`make demo DEMO_ARGS=--keep-running` keeps it up)"
        },
        admin.display(),
        args.exe.display(),
        sourced.join("\n"),
    );
    writeln!(out, "{look}")?;
    out.flush()?;
    if args.keep_running {
        // kubectl sends no bearer token over plain HTTP, so the kubeconfig above would be refused while
        // RBAC is on: the scenarios ran under deploy/base's RBAC; looking around needs none.
        topology.sim.state().rbac.set_enabled(false);
        kubesent_common::shutdown_on_signal().cancelled().await;
    }
    topology.stop().await;
    if !all_as_expected {
        bail!("a scenario did not end as expected (logs in {dir})");
    }
    Ok(())
}

/// Writes `text` to `path`, readable and writable by its owner only (it holds a password).
fn write_private(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file =
        std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    file.write_all(text.as_bytes())
}
