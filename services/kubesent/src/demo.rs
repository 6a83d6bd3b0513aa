//! `kubesent demo`: the whole pipeline on one machine. A bare pod with a 128Mi limit that needs 200Mi
//! starts OOM-looping; KubeSent detects it, diagnoses it and replaces it with a larger limit. Every step
//! is printed as it happens, from the messages on the broker and the pod watch.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Args;
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Pod;
use kube::{Api, api::PostParams};
use kube_runtime::{WatchStreamExt as _, watcher};
use kubesent_proto::{self as proto, FailureJob, Outcome, OutcomeResult, Verdict};
use serde_json::json;

use crate::stack::{Stack, StackOptions};

/// `kubesent demo`
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Wall-clock seconds per simulated kubelet second (0.25 = four times faster than real time).
    #[arg(long, default_value_t = 0.25)]
    time_scale: f64,
    /// Seconds the fixed pod must stay healthy to count as healed.
    #[arg(long, default_value_t = 3)]
    verify_seconds: u64,
    /// Keep the simulators and services running after the demo, for kubectl, until Ctrl-C.
    #[arg(long)]
    keep_running: bool,
}

/// How long the demo waits for the outcome before giving up.
const DEMO_TIMEOUT: Duration = Duration::from_secs(180);

struct Clock(Instant);

impl Clock {
    fn say(&self, what: impl AsRef<str>) {
        println!("[{:>6.2}s] {}", self.0.elapsed().as_secs_f64(), what.as_ref());
    }
}

/// A one-line summary of the pod's first container, like `kubectl get pod` shows it.
fn summary(pod: &Pod) -> String {
    let limit = pod
        .spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .and_then(|c| c.resources.as_ref()?.limits.as_ref()?.get("memory").map(|q| q.0.clone()))
        .unwrap_or_else(|| "-".into());
    let Some(cs) = pod.status.as_ref().and_then(|s| s.container_statuses.as_ref()).and_then(|l| l.first())
    else {
        return format!("Pending (limit {limit})");
    };
    let state = cs.state.clone().unwrap_or_default();
    let status = if pod.metadata.deletion_timestamp.is_some() {
        "Terminating".into()
    } else if let Some(w) = state.waiting {
        w.reason.unwrap_or_default()
    } else if let Some(t) = state.terminated {
        t.reason.unwrap_or_else(|| format!("exit {}", t.exit_code))
    } else if cs.ready {
        "Running, ready".into()
    } else {
        "Running".into()
    };
    format!("{status} (restarts {}, limit {limit})", cs.restart_count)
}

/// Runs the demo.
pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let clock = Clock(Instant::now());
    println!(
        "KubeSent demo: nats-server, the Kubernetes API simulator, the Gemini emulator and the three services, in one process.\n"
    );
    let stack = Stack::start(StackOptions {
        time_scale: args.time_scale,
        verify_window: Duration::from_secs(args.verify_seconds),
        dry_run: false,
        rbac: true,
        ..StackOptions::default()
    })
    .await?;
    clock.say(format!("nats-server (JetStream) at {}", stack.nats.url()));
    clock.say(format!(
        "kube-sim at {}   try: kubectl --server {} get pods -A",
        stack.kube_sim.url(),
        stack.kube_sim.url()
    ));
    clock.say(format!("gemini-sim at {}", stack.gemini_sim.url()));

    let mut messages =
        stack.nats_client.subscribe("kubesent.>").await.context("subscribing to kubesent.>")?;
    let pods: Api<Pod> = Api::namespaced(stack.kube.clone(), "shop");
    let mut pod_events = watcher(pods.clone(), watcher::Config::default()).default_backoff().boxed();

    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "web-1", "namespace": "shop", "labels": {"app": "web"},
            "annotations": {"kubesent.io/demo": "true", "sim.kubesent.io/memory-need": "200Mi"}},
        "spec": {"containers": [{"name": "app", "image": "registry.local/shop/web:1.4.2",
            "resources": {"limits": {"memory": "128Mi"}, "requests": {"memory": "128Mi", "cpu": "100m"}}}]}
    }))?;
    pods.create(&PostParams::default(), &pod).await.context("creating the demo pod")?;
    clock.say("created bare pod shop/web-1: memory limit 128Mi, but the app needs 200Mi");

    let deadline = tokio::time::sleep(DEMO_TIMEOUT);
    tokio::pin!(deadline);
    let mut last_line = String::new();
    let outcome = loop {
        tokio::select! {
            () = &mut deadline => bail!("no outcome within {DEMO_TIMEOUT:?}"),
            Some(Ok(event)) = pod_events.next() => {
                let (pod, deleted) = match event {
                    watcher::Event::Apply(pod) | watcher::Event::InitApply(pod) => (pod, false),
                    watcher::Event::Delete(pod) => (pod, true),
                    watcher::Event::Init | watcher::Event::InitDone => continue,
                };
                let uid = pod.metadata.uid.as_deref().unwrap_or("?").get(..8).unwrap_or("?").to_owned();
                let state = if deleted { "deleted".to_owned() } else { summary(&pod) };
                let line = format!("pod shop/web-1 uid {uid}: {state}");
                if line != last_line {
                    clock.say(&line);
                    last_line = line;
                }
            }
            Some(message) = messages.next() => {
                let subject = message.subject.as_str();
                if subject.starts_with("kubesent.jobs.") {
                    if let Ok(job) = proto::decode::<FailureJob>(&message.payload) {
                        clock.say(format!("detector  → job {} on {}: {} {} in container {} (restart {})",
                            job.incident, subject, job.failure.kind.as_str(), job.failure.reason, job.failure.container, job.failure.restart_count));
                    }
                } else if subject.starts_with("kubesent.verdicts.") {
                    if let Ok(verdict) = proto::decode::<Verdict>(&message.payload) {
                        clock.say(format!("diagnoser → verdict: {} | action {} | confidence {}",
                            verdict.root_cause, serde_json::to_string(&verdict.action)?, verdict.confidence));
                    }
                } else if subject.starts_with("kubesent.outcomes.") {
                    let outcome: Outcome = proto::decode(&message.payload)?;
                    let how = outcome.strategy.map(|s| format!(" by {}", serde_json::to_string(&s).unwrap_or_default().trim_matches('"'))).unwrap_or_default();
                    clock.say(format!("remediator → outcome {}{how}: {}", outcome.result.as_str(), outcome.detail));
                    break outcome;
                }
            }
        }
    };
    let fixed = pods.get("web-1").await?;
    clock.say(format!("pod shop/web-1 now: {}", summary(&fixed)));
    let annotations = fixed.metadata.annotations.clone().unwrap_or_default();
    if let Some(original) = annotations.get("kubesent.io/original-memory-limit.app") {
        clock.say(format!(
            "the original limit is recorded on the pod: kubesent.io/original-memory-limit.app={original}"
        ));
    }
    let healed = outcome.result == OutcomeResult::Healed;
    println!(
        "\n{}",
        if healed { "Healed: one job, one verdict, one outcome." } else { "The pod was not healed." }
    );
    if args.keep_running {
        println!("\nStill running. kubectl --server {} get pods -A   (Ctrl-C to stop)", stack.kube_sim.url());
        // NATS runs with deploy/base's users: the operator's, for kubesent pause|approve|reject|undo.
        let operator = stack.users.env(kubesent_common::nats::Role::Operator);
        let exports: Vec<String> = operator.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!(
            "As an operator: export KUBESENT_NATS_URL={} {}   then e.g. kubesent pause --reason test",
            stack.nats.url(),
            exports.join(" ")
        );
        kubesent_common::shutdown_on_signal().cancelled().await;
    }
    stack.stop().await;
    if !healed {
        bail!("demo ended with outcome {}", outcome.result.as_str());
    }
    Ok(())
}
