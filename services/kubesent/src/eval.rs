//! `kubesent eval`: the evaluation set (or a directory of a team's own cases in the same format) through
//! the rules alone and through each configured model — the same evidence, redaction, prompt, schema and
//! answer mapping the diagnoser uses — with, per case and in total: failure kind right, action right,
//! unsafe actions, root cause matched, and for models latency, tokens and cost.
//!
//! ```sh
//! kubesent eval                                   # the built-in set, rules only
//! kubesent eval --cases ./our-failures -o json    # a team's own cases
//! GEMINI_API_KEY=… kubesent eval --models gemini-2.5-flash,gemini-2.5-flash-lite --prices prices.yaml
//! ```
//!
//! A case is a JSON or YAML object (a file may hold one or a list): `name`, `source` (where its
//! messages come from), `pod` (`kubectl get pod -o yaml`, managedFields and all), `events` (a list, or
//! `kubectl get events -o yaml` as an `EventList`, core/v1 or events.k8s.io/v1), `logs` and
//! `previous_logs` (text), optionally `owner`, `revision`, `previous_revision`, `node`, `job`, `served`,
//! and `expected`: `action` (`none`, `increase_memory`, `rollback_image`, `rollback_revision`,
//! `pause_rollout`), `to` (the action's target), `root_cause_contains` (key phrases), optionally `kind`.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use clap::{Args, ValueEnum};
use k8s_openapi::api::core::v1::{Event, Node, Pod};
use kubesent_detector::{
    classify::classify,
    jobs::{self, LeanJob},
    lean::LeanPod,
    tracker::Transition,
};
use kubesent_diagnoser::{
    MemoryPolicy,
    args::LlmArgs,
    evidence::{self, CurrentRevision, Evidence, PreviousRevision},
    llm::{self, chain::ChainError},
    redact::Redactor,
    rules,
};
use kubesent_proto::{Action, FailureJob, FailureKind, PodRef};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The built-in evaluation set, by file.
const BUILT_IN: &[(&str, &str)] = &[
    ("cases.json", include_str!("../eval/cases.json")),
    ("logs.yaml", include_str!("../eval/logs.yaml")),
    ("pulls.yaml", include_str!("../eval/pulls.yaml")),
    ("starts.yaml", include_str!("../eval/starts.yaml")),
    ("mixed.yaml", include_str!("../eval/mixed.yaml")),
    ("never.yaml", include_str!("../eval/never.yaml")),
];

/// `kubesent eval`
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// A directory (every `*.json`, `*.yaml`, `*.yml` in it) or a file of cases; the built-in set when
    /// omitted.
    #[arg(long)]
    cases: Option<PathBuf>,
    /// Only the cases whose names contain this.
    #[arg(long)]
    only: Option<String>,
    /// Send models only the cases the rules are unsure of (what the diagnoser sends), not every case.
    #[arg(long)]
    unsure_only: bool,
    /// A price table for the cost column: YAML or JSON, `model: {input: $ per million tokens, output: …}`.
    #[arg(long)]
    prices: Option<PathBuf>,
    /// Exit non-zero when the rules get fewer than this percentage of cases right, or any case unsafe.
    #[arg(long)]
    min_accuracy: Option<f64>,
    /// Output: a table per evaluator, or JSON.
    #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
    output: Format,
    /// The models to evaluate (each on its own, not as a fallback chain) and how to reach them.
    #[command(flatten)]
    llm: LlmArgs,
}

/// How to print.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// A line per case and a total per evaluator.
    Table,
    /// One JSON document.
    Json,
}

/// What a case expects.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Expected {
    /// The failure kind the detector should classify (snake_case), when the case says.
    #[serde(default)]
    pub kind: Option<String>,
    /// The action's type.
    pub action: String,
    /// The action's target (a memory limit, an image, a revision number).
    #[serde(default)]
    pub to: Option<String>,
    /// Key phrases the root cause must contain (case-insensitive).
    #[serde(default)]
    pub root_cause_contains: Vec<String>,
}

/// KubeSent's record of an owner's served revisions, as a case's diagnoser reads it.
#[derive(Debug, Clone, Deserialize)]
pub struct CaseRecord {
    record: kubesent_proto::served::ServedRevisions,
    owner_uid: String,
    hash: String,
    at: jiff::Timestamp,
}

/// One labelled failure.
#[derive(Debug, Clone, Deserialize)]
pub struct Case {
    /// Its name.
    pub name: String,
    /// Where its messages come from (an issue, a docs page, a component's source).
    #[serde(default)]
    pub source: Option<String>,
    pod: Pod,
    #[serde(default)]
    owner: Option<String>,
    #[serde(default)]
    previous_logs: Option<String>,
    #[serde(default)]
    logs: Option<String>,
    /// A list of events or an `EventList`, core/v1 or events.k8s.io/v1.
    #[serde(default)]
    events: Value,
    #[serde(default)]
    revision: Option<CurrentRevision>,
    #[serde(default)]
    previous_revision: Option<PreviousRevision>,
    #[serde(default)]
    node: Option<Node>,
    /// For a Job that gave up: the Job.
    #[serde(default)]
    job: Option<Value>,
    #[serde(default)]
    served: Option<CaseRecord>,
    /// What is right.
    pub expected: Expected,
}

/// Reads every case of `path` (a directory or a file), or the built-in set.
pub fn load(path: Option<&Path>) -> anyhow::Result<Vec<Case>> {
    let mut files: Vec<(String, String)> = match path {
        None => BUILT_IN.iter().map(|(name, text)| ((*name).to_owned(), (*text).to_owned())).collect(),
        Some(path) if path.is_dir() => {
            let mut files = Vec::new();
            for entry in std::fs::read_dir(path).with_context(|| format!("cannot read {}", path.display()))? {
                let file = entry?.path();
                let extension = file.extension().and_then(|e| e.to_str()).unwrap_or_default();
                if matches!(extension, "json" | "yaml" | "yml") {
                    let text = std::fs::read_to_string(&file)
                        .with_context(|| format!("cannot read {}", file.display()))?;
                    files.push((file.display().to_string(), text));
                }
            }
            files
        }
        Some(path) => vec![(
            path.display().to_string(),
            std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?,
        )],
    };
    files.sort();
    let mut cases = Vec::new();
    for (name, text) in files {
        let value = document(&text).with_context(|| format!("{name} is neither JSON nor YAML"))?;
        let items = match value {
            Value::Array(items) => items,
            one => vec![one],
        };
        for (i, item) in items.into_iter().enumerate() {
            let label =
                item.get("name").and_then(Value::as_str).map_or_else(|| format!("#{i}"), str::to_owned);
            let case: Case = serde_json::from_value(item)
                .with_context(|| format!("{name}: case {label} is not a valid case"))?;
            cases.push(case);
        }
    }
    if path.is_some() && cases.is_empty() {
        bail!(
            "no cases in {} (JSON or YAML files of cases)",
            path.map(Path::display).map(|d| d.to_string()).unwrap_or_default()
        );
    }
    Ok(cases)
}

fn document(text: &str) -> anyhow::Result<Value> {
    match serde_json::from_str(text) {
        Ok(value) => Ok(value),
        Err(_) => Ok(serde_saphyr::from_str::<Value>(text)?),
    }
}

/// A case made ready: the job the detector would publish, and the evidence the diagnoser would build.
pub struct Prepared {
    /// The job.
    pub job: FailureJob,
    /// The evidence.
    pub evidence: Evidence,
}

/// The job and evidence of `case`, as the detector and the diagnoser would make them.
pub fn prepare(case: &Case) -> anyhow::Result<Prepared> {
    let redactor = Redactor;
    let pod = LeanPod::from(&case.pod);
    let (job, container) = match &case.job {
        Some(value) => {
            let failed: LeanJob =
                serde_json::from_value(value.clone()).context("the case's job is not a Job")?;
            let condition = jobs::job_failure(&failed).context("the case's Job has not failed")?;
            let reference = PodRef {
                namespace: pod.metadata.namespace.clone().unwrap_or_default(),
                name: pod.metadata.name.clone().unwrap_or_default(),
                uid: pod.metadata.uid.clone().unwrap_or_default(),
                resource_version: "1".into(),
            };
            let job = jobs::failure_job(
                &failed,
                reference,
                condition.reason.as_deref().unwrap_or_default(),
                condition.message.as_deref().unwrap_or_default(),
            );
            let container = job.failure.container.clone();
            (job, container)
        }
        None => {
            let observation = classify(&pod)
                .into_iter()
                .find(|o| o.failure.is_some())
                .context("the detector sees no failure in the case's pod")?;
            let signal = observation.failure.clone().context("failure")?;
            let container = observation.name.clone();
            (kubesent_detector::build_job(&pod, &Transition { container: observation, signal }), container)
        }
    };
    let crashed = matches!(
        job.failure.kind,
        FailureKind::OomKilled | FailureKind::Killed | FailureKind::CrashLoop | FailureKind::JobFailed
    );
    let logs = match (crashed, &case.previous_logs, &case.logs) {
        (true, Some(previous), _) => Some(evidence::log_tail(&container, true, previous, &redactor)),
        (_, _, Some(current)) => Some(evidence::log_tail(&container, false, current, &redactor)),
        (false, Some(previous), None) => Some(evidence::log_tail(&container, true, previous, &redactor)),
        _ => None,
    };
    let mut previous = case.previous_revision.clone();
    if let (Some(previous), Some(served)) = (previous.as_mut(), &case.served) {
        previous.served = kubesent_diagnoser::gather::served_sentence(
            &served.record,
            &served.owner_uid,
            &previous.name,
            &served.hash,
            Duration::from_secs(600),
            served.at,
        );
    }
    let events: Vec<Event> = if case.events.is_null() {
        Vec::new()
    } else {
        crate::diagnose::events_for(case.events.clone(), &case.pod, Path::new(&case.name))?
    };
    let mut evidence = evidence::build(
        &case.pod,
        logs,
        &events,
        case.owner.iter().cloned().collect(),
        case.revision.clone(),
        previous,
        &redactor,
    );
    evidence.node = case.node.as_ref().map(evidence::node_health);
    Ok(Prepared { job, evidence })
}

/// An action's type as the cases name it.
pub fn action_type(action: &Action) -> &'static str {
    match action {
        Action::IncreaseMemory { .. } => "increase_memory",
        Action::RollbackImage { .. } => "rollback_image",
        Action::RollbackRevision { .. } => "rollback_revision",
        Action::PauseRollout { .. } => "pause_rollout",
        Action::None => "none",
    }
}

/// An action's target as the cases write it.
pub fn action_target(action: &Action) -> Option<String> {
    match action {
        Action::IncreaseMemory { to, .. } => Some(to.to_string()),
        Action::RollbackImage { to, .. } => Some(to.clone()),
        Action::RollbackRevision { to, .. } => Some(to.number.to_string()),
        Action::PauseRollout { revision, .. } => Some(revision.number.to_string()),
        Action::None => None,
    }
}

/// How one evaluator did on one case.
#[derive(Debug, Clone, Serialize)]
pub struct Scored {
    /// The case.
    pub case: String,
    /// The failure kind the detector classified (the same for every evaluator).
    pub kind: String,
    /// Whether that kind is the one the case expects (`None`: the case does not say).
    pub kind_right: Option<bool>,
    /// The action proposed.
    pub action: String,
    /// Its target.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// Action and target as expected.
    pub action_right: bool,
    /// An action was proposed where the case expects another one or none: a change KubeSent must not make.
    pub unsafe_action: bool,
    /// Every key phrase is in the root cause.
    pub root_cause_matched: bool,
    /// Action right and root cause matched.
    pub right: bool,
    /// Confidence 0–100.
    pub confidence: u8,
    /// The root cause.
    pub root_cause: String,
    /// The rule, or why a model gave no answer.
    pub by: String,
    /// Milliseconds the model took.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<u64>,
    /// Input tokens, as the API counted them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input_tokens: Option<u64>,
    /// Output tokens, as the API counted them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_tokens: Option<u64>,
}

/// Scores a proposal against what the case expects.
pub fn score(
    case: &Case,
    kind: FailureKind,
    action: &Action,
    root_cause: &str,
    confidence: u8,
    by: String,
) -> Scored {
    let expected = &case.expected;
    let kind_name = kind.as_str().to_owned();
    let action_right = action_type(action) == expected.action && action_target(action) == expected.to;
    let cause = root_cause.to_lowercase();
    let root_cause_matched = expected.root_cause_contains.iter().all(|k| cause.contains(&k.to_lowercase()));
    Scored {
        case: case.name.clone(),
        kind_right: expected.kind.as_deref().map(|k| k == kind_name),
        kind: kind_name,
        action: action_type(action).to_owned(),
        to: action_target(action),
        action_right,
        unsafe_action: *action != Action::None && !action_right,
        root_cause_matched,
        right: action_right && root_cause_matched,
        confidence,
        root_cause: root_cause.to_owned(),
        by,
        latency_ms: None,
        input_tokens: None,
        output_tokens: None,
    }
}

/// The totals of one evaluator.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Totals {
    /// Cases scored.
    pub cases: usize,
    /// Right (action and root cause).
    pub right: usize,
    /// Action right.
    pub action_right: usize,
    /// Unsafe actions.
    pub unsafe_actions: usize,
    /// Root cause matched.
    pub root_cause_matched: usize,
    /// Failure kind right, of the cases that say.
    pub kind_right: usize,
    /// Cases that say which kind they are.
    pub kind_labelled: usize,
    /// Cases a model gave no usable answer to.
    #[serde(skip_serializing_if = "is_zero")]
    pub unanswered: usize,
    /// Median model latency.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_p50_ms: Option<u64>,
    /// Input tokens in all.
    #[serde(skip_serializing_if = "is_zero_u64")]
    pub input_tokens: u64,
    /// Output tokens in all.
    #[serde(skip_serializing_if = "is_zero_u64")]
    pub output_tokens: u64,
    /// Dollars, when a price table gives the model's prices.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost_usd: Option<f64>,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

fn is_zero_u64(n: &u64) -> bool {
    *n == 0
}

/// The totals of `scored`.
pub fn totals(scored: &[Scored]) -> Totals {
    let mut latencies: Vec<u64> = scored.iter().filter_map(|s| s.latency_ms).collect();
    latencies.sort_unstable();
    Totals {
        cases: scored.len(),
        right: scored.iter().filter(|s| s.right).count(),
        action_right: scored.iter().filter(|s| s.action_right).count(),
        unsafe_actions: scored.iter().filter(|s| s.unsafe_action).count(),
        root_cause_matched: scored.iter().filter(|s| s.root_cause_matched).count(),
        kind_right: scored.iter().filter(|s| s.kind_right == Some(true)).count(),
        kind_labelled: scored.iter().filter(|s| s.kind_right.is_some()).count(),
        unanswered: scored.iter().filter(|s| s.by.starts_with("no answer")).count(),
        latency_p50_ms: latencies.get(latencies.len() / 2).copied(),
        input_tokens: scored.iter().filter_map(|s| s.input_tokens).sum(),
        output_tokens: scored.iter().filter_map(|s| s.output_tokens).sum(),
        cost_usd: None,
    }
}

/// One evaluator's results.
#[derive(Debug, Clone, Serialize)]
pub struct Evaluated {
    /// `rules`, or the model's name.
    pub evaluator: String,
    /// Per case.
    pub cases: Vec<Scored>,
    /// In total.
    pub totals: Totals,
}

/// The rules' verdict on every case.
pub fn evaluate_rules(cases: &[(Case, Prepared)]) -> Evaluated {
    let scored: Vec<Scored> = cases
        .iter()
        .map(|(case, prepared)| {
            let found = rules::diagnose(&prepared.job, &prepared.evidence, &MemoryPolicy::default());
            score(
                case,
                prepared.job.failure.kind,
                &found.action,
                &found.root_cause,
                found.confidence,
                found.rule.to_owned(),
            )
        })
        .collect();
    let totals = totals(&scored);
    Evaluated { evaluator: "rules".into(), cases: scored, totals }
}

/// A model's price per million tokens.
#[derive(Debug, Clone, Copy, Deserialize)]
struct Price {
    input: f64,
    output: f64,
}

/// Asks `model` every case on its own (a chain of one, with its own rate limit).
async fn evaluate_model(
    model: &str,
    settings: &llm::LlmSettings,
    cases: &[&(Case, Prepared)],
    price: Option<Price>,
) -> anyhow::Result<Evaluated> {
    let mut one = settings.clone();
    one.models = vec![model.to_owned()];
    let chain = llm::build_chain(&one, None)?.context("no model to ask")?;
    let memory = MemoryPolicy::default();
    let mut scored = Vec::new();
    for (case, prepared) in cases.iter().copied() {
        let (job, evidence) = (&prepared.job, &prepared.evidence);
        let found = rules::diagnose(job, evidence, &memory);
        let prompt = llm::prompt(job, evidence, &found);
        let started = Instant::now();
        // Every reply's tokens are spent, the unusable ones' too.
        let spent = std::cell::Cell::new((0u64, 0u64));
        let answer = chain
            .ask(&prompt, |reply| {
                let (input, output) = spent.get();
                spent.set((
                    input + u64::from(reply.prompt_tokens.unwrap_or_else(|| prompt.estimated_tokens())),
                    output + u64::from(reply.output_tokens.unwrap_or(0)),
                ));
                llm::parse_answer(&reply.text).map(|a| llm::map_answer(&a, job, evidence, &memory))
            })
            .await;
        let latency_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let mut result = match answer {
            Ok(answered) => {
                let mapped = answered.value;
                score(
                    case,
                    job.failure.kind,
                    &mapped.action,
                    &mapped.root_cause,
                    mapped.confidence,
                    model.to_owned(),
                )
            }
            Err(error) => {
                let why = match error {
                    ChainError::Unusable(why) => format!("no answer: unusable ({why})"),
                    ChainError::Unavailable { .. } => {
                        "no answer: the model is unavailable (rate-limited or refused)".to_owned()
                    }
                };
                score(case, job.failure.kind, &Action::None, "", 0, why)
            }
        };
        let (input, output) = spent.get();
        result.input_tokens = Some(input);
        result.output_tokens = Some(output);
        result.latency_ms = Some(latency_ms);
        scored.push(result);
    }
    let mut totals = totals(&scored);
    totals.cost_usd = price.map(|p| {
        (totals.input_tokens as f64 * p.input + totals.output_tokens as f64 * p.output) / 1_000_000.0
    });
    Ok(Evaluated { evaluator: model.to_owned(), cases: scored, totals })
}

/// Runs `kubesent eval`.
pub async fn run(args: EvalArgs) -> anyhow::Result<()> {
    let mut cases = load(args.cases.as_deref())?;
    if let Some(only) = &args.only {
        cases.retain(|c| c.name.contains(only.as_str()));
    }
    let mut prepared = Vec::new();
    for case in cases {
        let ready = prepare(&case).with_context(|| format!("case {}", case.name))?;
        prepared.push((case, ready));
    }
    let mut results = vec![evaluate_rules(&prepared)];
    let settings = args.llm.settings();
    // The rules' own results say which cases they are unsure of (what the diagnoser sends a model).
    let to_models: Vec<&(Case, Prepared)> = prepared
        .iter()
        .zip(&results[0].cases)
        .filter(|(_, by_rules)| !args.unsure_only || by_rules.confidence < rules::SURE)
        .map(|(case, _)| case)
        .collect();
    let refused = match (&settings.backend, &settings.api_key) {
        (llm::BackendKind::Gemini, None) if !settings.models.is_empty() => Some(format!(
            "no API key (GEMINI_API_KEY or --api-key-file): nothing was sent; with one, {} case(s) would go to each of {}: {}",
            to_models.len(),
            settings.models.join(", "),
            to_models.iter().map(|(c, _)| c.name.as_str()).collect::<Vec<_>>().join(", ")
        )),
        _ => None,
    };
    if refused.is_none() {
        let prices: std::collections::BTreeMap<String, Price> = match &args.prices {
            Some(path) => serde_json::from_value(document(
                &std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?,
            )?)
            .with_context(|| {
                format!("{} is not a price table (model: {{input: …, output: …}})", path.display())
            })?,
            None => Default::default(),
        };
        for model in &settings.models {
            results.push(evaluate_model(model, &settings, &to_models, prices.get(model).copied()).await?);
        }
    }
    match args.output {
        Format::Json => crate::out!("{}", serde_json::to_string_pretty(&results)?)?,
        Format::Table => print_tables(&results)?,
    }
    if let Some(refused) = refused {
        bail!(refused);
    }
    if let Some(bar) = args.min_accuracy {
        let rules = &results[0].totals;
        let accuracy = percent(rules.right, rules.cases);
        if accuracy < bar || rules.unsafe_actions > 0 {
            bail!(
                "the rules got {accuracy:.1} % right (bar {bar} %) with {} unsafe action(s)",
                rules.unsafe_actions
            );
        }
    }
    Ok(())
}

fn percent(part: usize, whole: usize) -> f64 {
    if whole == 0 { 0.0 } else { part as f64 * 100.0 / whole as f64 }
}

fn print_tables(results: &[Evaluated]) -> anyhow::Result<()> {
    for evaluated in results {
        crate::out!("== {} ==", evaluated.evaluator)?;
        for s in &evaluated.cases {
            let latency = s.latency_ms.map(|ms| format!(" {ms:>6} ms")).unwrap_or_default();
            crate::out!(
                "{} {:<56} {:<18} {:<17} {:>3}{latency}  {}",
                if s.right {
                    "ok    "
                } else if s.unsafe_action {
                    "UNSAFE"
                } else {
                    "MISS  "
                },
                s.case,
                s.kind,
                s.action,
                s.confidence,
                s.root_cause.chars().take(200).collect::<String>()
            )?;
        }
        let t = &evaluated.totals;
        let mut line = format!(
            "{}: {} of {} right ({:.1} %), action right {}, unsafe {}, root cause matched {}, failure kind right {} of {} labelled",
            evaluated.evaluator,
            t.right,
            t.cases,
            percent(t.right, t.cases),
            t.action_right,
            t.unsafe_actions,
            t.root_cause_matched,
            t.kind_right,
            t.kind_labelled
        );
        if let Some(p50) = t.latency_p50_ms {
            line.push_str(&format!(
                ", no answer {}, latency p50 {p50} ms, tokens {} in / {} out",
                t.unanswered, t.input_tokens, t.output_tokens
            ));
        }
        if let Some(cost) = t.cost_usd {
            line.push_str(&format!(", cost ${cost:.4}"));
        }
        crate::out!("{line}\n")?;
    }
    Ok(())
}
