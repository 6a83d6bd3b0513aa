//! `kubesent diagnose`: the diagnoser on kubectl output (JSON or YAML, files or standard input), or on a
//! live pod read through the current kubeconfig, without a broker.
//!
//! ```sh
//! kubectl get pod web-1 -o yaml | kubesent diagnose --pod - --offline
//! kubectl logs web-1 --previous > prev.txt
//! kubectl events -o json > events.json        # or kubectl get events -o json
//! kubesent diagnose --pod pod.json --previous-logs prev.txt --events events.json --offline
//! kubesent diagnose shop/web-1 --offline       # pod, logs and events from the cluster
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
    /// A live pod, `namespace/name`: its spec, logs and events are read from the current kubeconfig.
    #[arg(conflicts_with = "pod", required_unless_present = "pod")]
    target: Option<String>,
    /// `kubectl get pod <name> -o json` or `-o yaml` output; `-` reads standard input.
    #[arg(long)]
    pod: Option<PathBuf>,
    /// `kubectl logs <name>` output (current container).
    #[arg(long)]
    logs: Option<PathBuf>,
    /// `kubectl logs <name> --previous` output (the crashed container).
    #[arg(long)]
    previous_logs: Option<PathBuf>,
    /// `kubectl events -o json` or `kubectl get events -o json|yaml` output.
    #[arg(long)]
    events: Option<PathBuf>,
    /// Rules only: never call a model.
    #[arg(long)]
    offline: bool,
    #[command(flatten)]
    llm: LlmArgs,
}

/// The contents of `path`, or of standard input for `-`.
fn read(path: &Path) -> anyhow::Result<String> {
    let bytes = if path == Path::new("-") {
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut bytes)
            .context("cannot read standard input")?;
        bytes
    } else {
        std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?
    };
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// The innermost cause of `error` (`Connection refused (os error 111)`), without the wrappers that repeat it.
fn innermost(error: &(dyn std::error::Error + 'static)) -> String {
    let mut last = error;
    while let Some(source) = last.source() {
        last = source;
    }
    last.to_string()
}

/// A JSON or YAML document, as kubectl prints it with `-o json` or `-o yaml`.
pub(crate) fn parse_document(text: &str, path: &Path) -> anyhow::Result<Value> {
    match serde_json::from_str(text) {
        Ok(value) => Ok(value),
        // What starts as JSON is JSON (YAML would only echo the same fault in more lines): one line
        // naming where it broke, cut short or otherwise.
        Err(json) if text.trim_start().starts_with('{') => bail!(
            "{} is not valid JSON ({json}){}: save it again with kubectl get … -o json",
            path.display(),
            if json.is_eof() { ", it ends too early" } else { "" }
        ),
        Err(_) => match serde_saphyr::from_str::<Value>(text) {
            Ok(value) if value.is_object() => Ok(value),
            Ok(_) => bail!("{} is neither a JSON nor a YAML object", path.display()),
            Err(yaml) => {
                let first = yaml.to_string();
                let first = first.lines().next().unwrap_or_default().trim().to_owned();
                bail!("{} is neither JSON nor YAML ({first})", path.display())
            }
        },
    }
}

fn read_document(path: &Path) -> anyhow::Result<Value> {
    parse_document(&read(path)?, path)
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

pub(crate) fn events_for(value: Value, pod: &Pod, path: &Path) -> anyhow::Result<Vec<Event>> {
    let items = match value.get("kind").and_then(Value::as_str) {
        _ if value.is_array() => value.as_array().cloned().unwrap_or_default(),
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
        let event: Event = serde_json::from_value(core_event(item))
            .with_context(|| format!("{} holds an invalid Event", path.display()))?;
        if event.involved_object.name.as_deref() == Some(name.as_str()) {
            events.push(event);
        }
    }
    Ok(events)
}

/// An events.k8s.io/v1 Event (what `kubectl events` may print) in core/v1 shape: `regarding` is the
/// involved object, `note` the message, `deprecatedCount` the count. A core/v1 Event is returned as is.
fn core_event(mut item: Value) -> Value {
    if item.get("involvedObject").is_none()
        && let Some(object) = item.as_object_mut()
    {
        if let Some(regarding) = object.remove("regarding") {
            object.insert("involvedObject".into(), regarding);
        }
        if let Some(note) = object.remove("note") {
            object.insert("message".into(), note);
        }
        // A repeated event counts its repeats in `series` (`deprecatedCount` is for old clients).
        let series = object.get("series").and_then(|s| s.get("count")).cloned();
        if let Some(count) = series.or_else(|| object.remove("deprecatedCount")) {
            object.insert("count".into(), count);
        }
        for (old, core) in
            [("deprecatedFirstTimestamp", "firstTimestamp"), ("deprecatedLastTimestamp", "lastTimestamp")]
        {
            if let Some(time) = object.remove(old).filter(|t| !t.is_null()) {
                object.insert(core.into(), time);
            }
        }
        for field in [
            "related",
            "reportingController",
            "reportingInstance",
            "series",
            "deprecatedSource",
            "deprecatedFirstTimestamp",
            "deprecatedLastTimestamp",
            "apiVersion",
            "kind",
        ] {
            object.remove(field);
        }
    }
    item
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

/// What `kubesent diagnose` looks at: the pod, its logs and its events.
struct Inputs {
    pod: Pod,
    events: Vec<Event>,
    current_logs: Option<String>,
    previous_logs: Option<String>,
    /// What only the cluster knows: the owner's revisions and the node's health.
    cluster: Option<ClusterContext>,
}

/// The owner chain, the pod's revision and the one before it, and the node's health, read live.
struct ClusterContext {
    owners: Vec<String>,
    revision: Option<evidence::CurrentRevision>,
    previous: Option<evidence::PreviousRevision>,
    node: Option<evidence::NodeHealth>,
    marks: Option<kubesent_diagnoser::gather::OwnerMarks>,
}

/// Reads the inputs from kubectl output files (or standard input).
fn from_files(args: &DiagnoseArgs, pod_path: &Path) -> anyhow::Result<Inputs> {
    let stdin_uses =
        [Some(pod_path), args.events.as_deref(), args.logs.as_deref(), args.previous_logs.as_deref()]
            .iter()
            .filter(|p| p.is_some_and(|p| p == Path::new("-")))
            .count();
    if stdin_uses > 1 {
        bail!("only one input can be read from standard input (-)");
    }
    let pod = single_pod(read_document(pod_path)?, pod_path)?;
    let events = match &args.events {
        Some(path) => events_for(read_document(path)?, &pod, path)?,
        None => Vec::new(),
    };
    let current_logs = args.logs.as_deref().map(read).transpose()?;
    let previous_logs = args.previous_logs.as_deref().map(read).transpose()?;
    Ok(Inputs { pod, events, current_logs, previous_logs, cluster: None })
}

/// Reads the pod `namespace/name`, its logs (current and previous, of the failing container) and its
/// events from the cluster of the current kubeconfig.
async fn from_cluster(target: &str) -> anyhow::Result<Inputs> {
    use kube::{
        Api,
        api::{ListParams, LogParams},
    };
    let client = kubesent_common::kube_client(None).await.context("no usable kubeconfig")?;
    // `namespace/name`, or a name in the kubeconfig context's namespace, as kubectl takes it.
    let (namespace, name) = match target.split_once('/') {
        Some((ns, n)) if !ns.is_empty() && !n.is_empty() => (ns.to_owned(), n),
        Some(_) => {
            bail!("give the pod as namespace/name or name (e.g. shop/web-1), or kubectl output with --pod")
        }
        None => (client.default_namespace().to_owned(), target),
    };
    let namespace = namespace.as_str();
    let target = format!("{namespace}/{name}");
    let target = target.as_str();
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let pod = match pods.get(name).await {
        Ok(pod) => pod,
        Err(kube::Error::Api(status)) if status.is_not_found() => {
            bail!("no pod {name} in namespace {namespace} (kubectl get pods -n {namespace})")
        }
        Err(kube::Error::Api(status)) => bail!("reading pod {target}: {} ({})", status.message, status.code),
        Err(error) => {
            let server = kube::Config::infer().await.map(|c| c.cluster_url.to_string()).unwrap_or_default();
            bail!(
                "reading pod {target} from the API server {server}: {} (is the cluster up, and the kubeconfig's server right? kubectl cluster-info)",
                innermost(&error)
            )
        }
    };
    let failing = classify::classify(&LeanPod::from(&pod)).into_iter().find(|o| o.failure.is_some());
    let container = failing.map(|o| o.name);
    let logs = |previous: bool| {
        let params = LogParams {
            container: container.clone(),
            previous,
            tail_lines: Some(200),
            ..LogParams::default()
        };
        let pods = pods.clone();
        async move { pods.logs(name, &params).await.ok() }
    };
    let (current_logs, previous_logs) = (logs(false).await, logs(true).await);
    let events: Api<Event> = Api::namespaced(client.clone(), namespace);
    let events = events
        .list(&ListParams::default().fields(&format!("involvedObject.name={name}")))
        .await
        .with_context(|| format!("listing the events of {target}"))?
        .items;
    let (owners, revision, previous, marks) =
        kubesent_diagnoser::gather::owners(&client, namespace, &pod, true, None)
            .await
            .with_context(|| format!("reading the owners of {target}"))?;
    let node = kubesent_diagnoser::gather::node(&client, &pod).await;
    let cluster = Some(ClusterContext { owners, revision, previous, node, marks });
    Ok(Inputs { pod, events, current_logs, previous_logs, cluster })
}

/// Runs `kubesent diagnose` and prints the verdict as JSON.
pub async fn run(args: DiagnoseArgs) -> anyhow::Result<()> {
    let verdict = verdict_json(&args).await?;
    crate::out!("{}", serde_json::to_string_pretty(&verdict)?)?;
    Ok(())
}

/// The verdict `kubesent diagnose` prints for `args`, as JSON.
pub async fn verdict_json(args: &DiagnoseArgs) -> anyhow::Result<Value> {
    let Inputs { pod, events, current_logs, previous_logs, cluster } = match (&args.pod, &args.target) {
        (Some(path), _) => from_files(args, path)?,
        (None, Some(target)) => from_cluster(target).await?,
        (None, None) => bail!("give a pod: namespace/name, or --pod with kubectl output"),
    };
    let lean = LeanPod::from(&pod);
    let observations = classify::classify(&lean);
    let Some((container, signal)) =
        observations.iter().find_map(|o| o.failure.clone().map(|f| (o.clone(), f)))
    else {
        let healthy = kubesent_diagnoser::rules::healthy();
        return Ok(json!({
            "root_cause": healthy.root_cause, "failure": null, "action": {"type": "none"},
            "confidence": healthy.confidence, "source": "rules", "rule": healthy.rule,
        }));
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
    let evidence = match cluster {
        Some(ClusterContext { owners, revision, previous, node, marks }) => {
            let mut evidence = evidence::build(&pod, logs, &events, owners, revision, previous, &redactor);
            evidence.node = node;
            evidence.own_change = kubesent_diagnoser::gather::own_change(&pod, marks.as_ref(), &job.failure);
            evidence
        }
        None => evidence::build(&pod, logs, &events, owners, None, None, &redactor),
    };
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
    Ok(render(&verdict, Some(failure)))
}
