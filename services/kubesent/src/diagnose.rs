//! `kubesent diagnose`: the diagnoser on kubectl output, without a cluster or a broker.
//!
//! ```sh
//! kubectl get pod web-1 -o json > pod.json
//! kubectl logs web-1 --previous > prev.txt
//! kubectl get events -o json > events.json
//! kubesent diagnose --pod pod.json --previous-logs prev.txt --events events.json --offline
//! ```

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use clap::Args;
use k8s_openapi::api::core::v1::{Event, Pod};
use kubesent_detector::{classify, lean::LeanPod, tracker::Transition};
use kubesent_diagnoser::{Diagnoser, Diagnosis, MemoryPolicy, evidence, redact::Redactor};
use kubesent_proto::{FailureKind, Verdict, VerdictSource};
use serde_json::{Value, json};

use kubesent_diagnoser::args::LlmArgs;

/// `kubesent diagnose`
#[derive(Debug, Args)]
pub struct DiagnoseArgs {
    /// `kubectl get pod <name> -o json` output.
    #[arg(long)]
    pod: PathBuf,
    /// `kubectl logs <name>` output (current container).
    #[arg(long)]
    logs: Option<PathBuf>,
    /// `kubectl logs <name> --previous` output (the crashed container).
    #[arg(long)]
    previous_logs: Option<PathBuf>,
    /// `kubectl get events -o json` output.
    #[arg(long)]
    events: Option<PathBuf>,
    /// Rules only: never call a model.
    #[arg(long)]
    offline: bool,
    #[command(flatten)]
    llm: LlmArgs,
}

fn read(path: &Path) -> anyhow::Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

fn read_json(path: &Path) -> anyhow::Result<Value> {
    serde_json::from_str(&read(path)?).with_context(|| format!("{} is not JSON", path.display()))
}

/// The single Pod in `value` (a Pod, or a List/PodList holding exactly one).
fn single_pod(value: Value, path: &Path) -> anyhow::Result<Pod> {
    let kind = value.get("kind").and_then(Value::as_str).unwrap_or("Pod").to_owned();
    let pod_value = match kind.as_str() {
        "Pod" => value,
        "List" | "PodList" => {
            let items = value.get("items").and_then(Value::as_array).cloned().unwrap_or_default();
            match <[Value; 1]>::try_from(items) {
                Ok([item]) => item,
                Err(items) => bail!("{} holds {} objects; give exactly one Pod", path.display(), items.len()),
            }
        }
        other => bail!("{} is a {other}, not a Pod (use `kubectl get pod <name> -o json`)", path.display()),
    };
    if let Some(kind) = pod_value.get("kind").and_then(Value::as_str).filter(|k| *k != "Pod") {
        bail!("{} holds a {kind}, not a Pod", path.display());
    }
    serde_json::from_value(pod_value).with_context(|| format!("{} is not a valid Pod", path.display()))
}

fn events_for(value: Value, pod: &Pod, path: &Path) -> anyhow::Result<Vec<Event>> {
    let items = match value.get("kind").and_then(Value::as_str) {
        Some("List" | "EventList") | None => {
            value.get("items").and_then(Value::as_array).cloned().unwrap_or_default()
        }
        Some("Event") => vec![value],
        Some(other) => {
            bail!("{} is a {other}, not events (use `kubectl get events -o json`)", path.display())
        }
    };
    let name = pod.metadata.name.clone().unwrap_or_default();
    let mut events = Vec::new();
    for item in items {
        let event: Event = serde_json::from_value(item)
            .with_context(|| format!("{} holds an invalid Event", path.display()))?;
        if event.involved_object.name.as_deref() == Some(name.as_str()) {
            events.push(event);
        }
    }
    Ok(events)
}

fn render(verdict: &Verdict, failure: Option<Value>) -> Value {
    let (source, detail) = match &verdict.source {
        VerdictSource::Rules { rule } => ("rules", json!({"rule": rule})),
        VerdictSource::Model { model } => ("model", json!({"model": model})),
        VerdictSource::None => ("none", json!({})),
    };
    let mut out = json!({
        "root_cause": verdict.root_cause,
        "failure": failure,
        "action": verdict.action,
        "confidence": verdict.confidence,
        "source": source,
    });
    if let (Some(out), Some(detail)) = (out.as_object_mut(), detail.as_object()) {
        out.extend(detail.clone());
    }
    out
}

/// Runs `kubesent diagnose` and prints the verdict as JSON.
pub async fn run(args: DiagnoseArgs) -> anyhow::Result<()> {
    let pod = single_pod(read_json(&args.pod)?, &args.pod)?;
    let events = match &args.events {
        Some(path) => events_for(read_json(path)?, &pod, path)?,
        None => Vec::new(),
    };
    let current_logs = args.logs.as_deref().map(read).transpose()?;
    let previous_logs = args.previous_logs.as_deref().map(read).transpose()?;
    let lean = LeanPod::from(&pod);
    let observations = classify::classify(&lean);
    let Some((container, signal)) =
        observations.iter().find_map(|o| o.failure.clone().map(|f| (o.clone(), f)))
    else {
        let healthy = kubesent_diagnoser::rules::healthy();
        let out = json!({
            "root_cause": healthy.root_cause, "failure": null, "action": {"type": "none"},
            "confidence": healthy.confidence, "source": "rules", "rule": healthy.rule,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    };
    let job = kubesent_detector::build_job(&lean, &Transition { container: container.clone(), signal });
    let redactor = Redactor;
    let crashed =
        matches!(job.failure.kind, FailureKind::OomKilled | FailureKind::Killed | FailureKind::CrashLoop);
    let logs = match (crashed, &previous_logs, &current_logs) {
        (true, Some(previous), _) => Some(evidence::log_tail(&container.name, true, previous, &redactor)),
        (_, _, Some(current)) => Some(evidence::log_tail(&container.name, false, current, &redactor)),
        (false, Some(previous), None) => Some(evidence::log_tail(&container.name, true, previous, &redactor)),
        _ => None,
    };
    let owners = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .filter(|o| o.controller == Some(true))
        .map(|o| format!("{}/{}", o.kind, o.name))
        .collect();
    let evidence = evidence::build(&pod, logs, &events, owners, None, None, &redactor);
    let models =
        if args.offline { None } else { kubesent_diagnoser::llm::build_chain(&args.llm.settings(), None)? };
    let diagnoser = Diagnoser { memory: MemoryPolicy::default(), models };
    let verdict = match diagnoser.diagnose(&job, &evidence).await {
        Diagnosis::Verdict(verdict) => *verdict,
        Diagnosis::Deferred { fallback, .. } => {
            let mut verdict = *fallback;
            verdict.root_cause = format!("{} (no model was available)", verdict.root_cause);
            verdict
        }
    };
    let failure = json!({
        "kind": job.failure.kind, "container": job.failure.container, "init_container": job.failure.init_container,
        "reason": job.failure.reason, "exit_code": job.failure.exit_code, "restart_count": job.failure.restart_count,
    });
    println!("{}", serde_json::to_string_pretty(&render(&verdict, Some(failure)))?);
    Ok(())
}
