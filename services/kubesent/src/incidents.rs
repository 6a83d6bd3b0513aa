//! `kubesent incidents`, `kubesent incidents show` and `kubesent tail`: the built-in way to look into a
//! running installation, as the reader role (read-only: the audit log, the intents, the live subjects).
//!
//! The audit stream (`KUBESENT_OUTCOMES`) holds every outcome, each with the verdict it answers; the
//! intents bucket holds remediations under way and, in its history, each step they took. Jobs and verdicts
//! are work queues (gone once handled), so the past is read from those two; `tail` shows all four
//! subjects live.

use std::{collections::BTreeMap, time::Duration};

use anyhow::{Context as _, bail};
use async_nats::jetstream::{self, consumer::DeliverPolicy, kv};
use clap::{Args, Subcommand, ValueEnum};
use futures::StreamExt as _;
use kubesent_common::nats::{self, NatsArgs, Role};
use kubesent_proto::intent::{Intent, Phase};
use kubesent_proto::{self as proto, Action, FailureJob, IncidentId, Outcome, OutcomeResult, Verdict};
use serde_json::{Value, json};

/// `kubesent incidents`
#[derive(Debug, Args)]
pub struct IncidentsArgs {
    /// `show <incident>` for one incident's timeline; without it, the list.
    #[command(subcommand)]
    show: Option<ShowCommand>,
    #[command(flatten)]
    filter: Filter,
    /// Output: a table, a wider table, or JSON.
    #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
    output: Format,
    #[command(flatten)]
    nats: NatsArgs,
}

/// `kubesent incidents show`
#[derive(Debug, Subcommand)]
pub enum ShowCommand {
    /// One incident's timeline: failure, detection, verdict, each remediation step, outcomes, trace id.
    Show {
        /// The incident (`inc-…`).
        incident: String,
        /// Output: the timeline, or JSON.
        #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
        output: Format,
        /// How to reach NATS as the reader.
        #[command(flatten)]
        nats: NatsArgs,
    },
}

/// Which incidents to list.
#[derive(Debug, Args, Default)]
pub struct Filter {
    /// Only this namespace.
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// Only incidents whose latest result is this (`healed`, `denied`, `diagnosis_only`, …).
    #[arg(long)]
    pub result: Option<String>,
    /// Only incidents recorded this recently (`30m`, `12h`, `7d`); all that the audit log keeps when unset.
    #[arg(long)]
    pub since: Option<String>,
}

/// How to print.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Columns that fit a terminal.
    Table,
    /// More columns (pod, actor, trace id).
    Wide,
    /// JSON, one array.
    Json,
}

/// `kubesent tail`
#[derive(Debug, Args)]
pub struct TailArgs {
    /// The raw messages (subject and payload as JSON, one per line) instead of readable lines.
    #[arg(long)]
    json: bool,
    /// Only this namespace.
    #[arg(short = 'n', long)]
    namespace: Option<String>,
    #[command(flatten)]
    nats: NatsArgs,
}

/// Everything known about one incident.
#[derive(Debug, Clone, Default)]
pub struct Record {
    /// Its outcomes, oldest first (an approval wait, the final outcome, a reversal).
    pub outcomes: Vec<Outcome>,
    /// Its remediation's steps as the intents bucket kept them, oldest first (the latest is its state).
    pub steps: Vec<Intent>,
}

impl Record {
    /// The latest of KubeSent's own outcomes (a follow-up's finding is about what humans did after it).
    fn latest(&self) -> Option<&Outcome> {
        self.outcomes.iter().rev().find(|o| o.result != OutcomeResult::Followed).or(self.outcomes.last())
    }

    /// The verdict's diagnosis, from the latest outcome that keeps it or the remediation's verdict.
    fn diagnosis(&self) -> Option<proto::Diagnosis> {
        self.outcomes
            .iter()
            .rev()
            .find_map(|o| o.diagnosis.clone())
            .or_else(|| self.steps.last().and_then(|i| i.verdict.as_deref()).map(proto::Diagnosis::of))
    }

    /// When it was last recorded.
    fn at(&self) -> Option<jiff::Timestamp> {
        let outcome = self.latest().map(|o| o.at);
        let step = self.steps.last().map(|i| i.updated_at);
        outcome.max(step)
    }

    /// Its latest result, or the remediation's phase while it is under way.
    fn state(&self) -> String {
        match (self.latest(), self.steps.last()) {
            (_, Some(intent)) if intent.phase != Phase::Done && intent.phase != Phase::AwaitingApproval => {
                format!("acting ({})", phase_name(intent.phase))
            }
            (Some(outcome), _) => outcome.result.as_str().to_owned(),
            (None, Some(intent)) => phase_name(intent.phase).to_owned(),
            (None, None) => "unknown".to_owned(),
        }
    }

    fn action(&self) -> Option<&Action> {
        self.latest().map(|o| &o.action).or_else(|| self.steps.last().map(|i| &i.action))
    }

    fn pod(&self) -> Option<&proto::PodRef> {
        self.latest().map(|o| &o.pod).or_else(|| self.steps.last().map(|i| &i.target))
    }
}

fn phase_name(phase: Phase) -> &'static str {
    match phase {
        Phase::AwaitingApproval => "awaiting_approval",
        Phase::Approved => "approved",
        Phase::Pending => "pending",
        Phase::Applied => "applied",
        Phase::Deleted => "deleted",
        Phase::Created => "created",
        Phase::Done => "done",
    }
}

/// The number of seconds in `text` (`90s`, `30m`, `12h`, `7d`).
pub fn parse_age(text: &str) -> anyhow::Result<Duration> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 =
        number.parse().with_context(|| format!("{text:?} is not an age like 30m, 12h or 7d"))?;
    let unit = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => bail!("{text:?} is not an age like 30m, 12h or 7d"),
    };
    Ok(Duration::from_secs(number.saturating_mul(unit)))
}

/// Whether `record` passes `filter` (the age is checked when reading).
fn passes(record: &Record, filter: &Filter) -> bool {
    let namespace =
        filter.namespace.as_deref().is_none_or(|ns| record.pod().is_some_and(|p| p.namespace == ns));
    let result = filter.result.as_deref().is_none_or(|wanted| {
        record.latest().is_some_and(|o| o.result.as_str() == wanted) || record.state() == wanted
    });
    namespace && result
}

fn clipped(text: &str, width: usize) -> String {
    let text = text.replace(['\n', '\t'], " ");
    if text.chars().count() > width {
        format!("{}…", text.chars().take(width.saturating_sub(1)).collect::<String>())
    } else {
        text
    }
}

fn age(at: Option<jiff::Timestamp>, now: jiff::Timestamp) -> String {
    let Some(at) = at else { return "-".into() };
    let seconds = now.duration_since(at).as_secs().max(0);
    match seconds {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

fn action_text(action: Option<&Action>) -> String {
    match action {
        None | Some(Action::None) => "-".into(),
        Some(Action::IncreaseMemory { from, to, .. }) => format!("memory {from}→{to}"),
        Some(Action::RollbackImage { to, .. }) => format!("image→{to}"),
        Some(Action::RollbackRevision { from, to, .. }) => format!("revision {}→{}", from.number, to.number),
        Some(Action::PauseRollout { revision, .. }) => format!("pause at revision {}", revision.number),
    }
}

/// The list, as a table (`wide` adds pod, actor and trace id).
pub fn table(records: &BTreeMap<IncidentId, Record>, wide: bool, now: jiff::Timestamp) -> String {
    let mut rows: Vec<Vec<String>> = Vec::new();
    let mut header =
        vec!["INCIDENT", "AGE", "NAMESPACE", "WORKLOAD", "FAILURE", "ACTION", "RESULT", "ROOT CAUSE"];
    if wide {
        header.extend(["POD", "ACTOR", "TRACE"]);
    }
    let mut sorted: Vec<(&IncidentId, &Record)> = records.iter().collect();
    sorted.sort_by_key(|(_, r)| std::cmp::Reverse(r.at()));
    for (incident, record) in sorted {
        let diagnosis = record.diagnosis();
        let mut row = vec![
            incident.to_string(),
            age(record.at(), now),
            record.pod().map(|p| p.namespace.clone()).unwrap_or_default(),
            diagnosis
                .as_ref()
                .map(|d| format!("{}/{}", d.workload.kind, d.workload.name))
                .unwrap_or("-".into()),
            diagnosis.as_ref().map(|d| d.failure.kind.as_str().to_owned()).unwrap_or("-".into()),
            action_text(record.action()),
            record.state(),
            clipped(
                diagnosis.as_ref().map(|d| d.root_cause.as_str()).unwrap_or("-"),
                if wide { 100 } else { 60 },
            ),
        ];
        if wide {
            let latest = record.latest();
            row.push(record.pod().map(|p| p.name.clone()).unwrap_or_default());
            row.push(
                latest
                    .map(|o| o.actor.clone())
                    .or_else(|| record.steps.last().map(|i| i.actor.clone()))
                    .unwrap_or_default(),
            );
            row.push(latest.and_then(|o| o.trace_id.clone()).unwrap_or("-".into()));
        }
        rows.push(row);
    }
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let last = cells.len() - 1;
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| if i == last { c.clone() } else { format!("{c:<w$}", w = widths[i]) })
            .collect::<Vec<_>>()
            .join("   ")
            .trim_end()
            .to_owned()
    };
    let mut out = line(header.into_iter().map(String::from).collect());
    for row in rows {
        out.push('\n');
        out.push_str(&line(row));
    }
    out
}

/// The list as JSON.
pub fn json_list(records: &BTreeMap<IncidentId, Record>) -> Value {
    let items: Vec<Value> = records
        .iter()
        .map(|(incident, record)| {
            let diagnosis = record.diagnosis();
            json!({
                "incident": incident,
                "at": record.at(),
                "state": record.state(),
                "namespace": record.pod().map(|p| p.namespace.clone()),
                "pod": record.pod().map(|p| p.name.clone()),
                "workload": diagnosis.as_ref().map(|d| &d.workload),
                "failure": diagnosis.as_ref().map(|d| &d.failure),
                "root_cause": diagnosis.as_ref().map(|d| &d.root_cause),
                "confidence": diagnosis.as_ref().map(|d| d.confidence),
                "action": record.action(),
                "result": record.latest().map(|o| o.result),
                "detail": record.latest().map(|o| &o.detail),
                "actor": record.latest().map(|o| &o.actor),
                "trace_id": record.latest().and_then(|o| o.trace_id.clone()),
            })
        })
        .collect();
    Value::Array(items)
}

fn stamp(at: jiff::Timestamp) -> String {
    at.strftime("%Y-%m-%d %H:%M:%S%.3fZ").to_string()
}

/// The incidents whose failure KubeSent's change for `incident` caused, with their diagnoses.
pub fn caused_by<'a>(
    incident: &IncidentId,
    records: &'a BTreeMap<IncidentId, Record>,
) -> Vec<(&'a IncidentId, proto::Diagnosis)> {
    records
        .iter()
        .filter_map(|(id, record)| Some((id, record.diagnosis()?)))
        .filter(|(_, diagnosis)| diagnosis.caused_by.as_ref() == Some(incident))
        .collect()
}

/// One incident's timeline, oldest first, with the incidents its change caused (see [`caused_by`]).
pub fn timeline(
    incident: &IncidentId,
    record: &Record,
    caused: &[(&IncidentId, proto::Diagnosis)],
) -> String {
    let mut events: Vec<(jiff::Timestamp, String, String)> = Vec::new();
    let diagnosis = record.diagnosis();
    if let Some(d) = &diagnosis {
        let failure = &d.failure;
        let exit = failure.exit_code.map(|c| format!(" (exit {c})")).unwrap_or_default();
        let what = format!(
            "{} {}{exit} in container {} (restart {}){}",
            failure.kind.as_str(),
            failure.reason,
            failure.container,
            failure.restart_count,
            failure.message.as_deref().map(|m| format!(": {}", clipped(m, 200))).unwrap_or_default()
        );
        if let Some(at) = failure.failed_at {
            events.push((at, "failed".into(), what.clone()));
        }
        if let Some(at) = d.detected_at {
            events.push((
                at,
                "detected".into(),
                if failure.failed_at.is_some() { "job published".into() } else { what },
            ));
        }
        let source = match &d.source {
            proto::VerdictSource::Rules { rule } => format!("rule {rule}"),
            proto::VerdictSource::Model { model } => format!("model {model}"),
            proto::VerdictSource::None => "no diagnosis".into(),
        };
        let evidence = d.evidence.as_ref().map(|e| format!(" [evidence: {e}]")).unwrap_or_default();
        events.push((
            d.diagnosed_at,
            "diagnosed".into(),
            format!("{source}, confidence {}: {}{evidence}", d.confidence, d.root_cause),
        ));
        if let Some(cause) = &d.caused_by {
            events.push((
                d.diagnosed_at,
                "caused by".into(),
                format!("KubeSent's change for incident {cause}"),
            ));
        }
    }
    for (id, diagnosis) in caused {
        events.push((
            diagnosis.diagnosed_at,
            "caused".into(),
            format!(
                "incident {id}: {} in {} {} ({})",
                diagnosis.failure.kind.as_str(),
                diagnosis.workload.kind,
                diagnosis.workload.name,
                clipped(&diagnosis.root_cause, 200)
            ),
        ));
    }
    let mut last_phase = None;
    for step in &record.steps {
        if last_phase == Some(step.phase) {
            continue;
        }
        last_phase = Some(step.phase);
        let mut text = format!("{} by {}", phase_name(step.phase), step.actor);
        if step.phase == Phase::Pending || step.phase == Phase::AwaitingApproval {
            text.push_str(&format!(
                ": {} ({})",
                action_text(Some(&step.action)),
                serde_json::to_value(step.strategy)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default()
            ));
        }
        if let Some(by) = &step.approved_by {
            text.push_str(&format!(", approved by {by}"));
        }
        events.push((step.updated_at, "remediation".into(), text));
    }
    for outcome in &record.outcomes {
        let by = outcome.decided_by.as_ref().map(|d| format!(", decided by {d}")).unwrap_or_default();
        // The class and mode a decision was made in, and how it counts in that class's record.
        let autonomy = outcome.autonomy.map(|a| format!(" [{} in {}]", a.class, a.mode)).unwrap_or_default();
        let counted = match (outcome.autonomy, proto::autonomy::judge(outcome)) {
            (Some(a), Some(judgement)) => format!(" — counts as {} for {}", judgement.as_str(), a.class),
            _ => String::new(),
        };
        let label = if outcome.result == OutcomeResult::Followed { "followed up" } else { "outcome" };
        events.push((
            outcome.at,
            label.into(),
            format!(
                "{} by {}{by}{autonomy}: {}{counted}",
                outcome.result.as_str(),
                outcome.actor,
                outcome.detail
            ),
        ));
    }
    events.sort_by_key(|(at, _, _)| *at);
    let mut out = format!("Incident  {incident}\n");
    if let Some(pod) = record.pod() {
        let workload = diagnosis
            .as_ref()
            .map(|d| format!("{} {}, ", d.workload.kind, d.workload.name))
            .unwrap_or_default();
        out.push_str(&format!("Target    {}: {workload}pod {} (uid {})\n", pod.namespace, pod.name, pod.uid));
    }
    out.push_str(&format!("State     {}\n", record.state()));
    if let Some(trace) = record.outcomes.iter().rev().find_map(|o| o.trace_id.clone()) {
        out.push_str(&format!("Trace     {trace}\n"));
    }
    out.push_str("Timeline\n");
    for (at, what, text) in events {
        out.push_str(&format!("  {}  {what:<11} {text}\n", stamp(at)));
    }
    out
}

/// One readable line for a message on `subject`, or why it could not be read.
pub fn tail_line(subject: &str, payload: &[u8], reason: Option<&str>, now: jiff::Timestamp) -> String {
    let time = now.strftime("%H:%M:%S%.3f");
    let tokens: Vec<&str> = subject.split('.').collect();
    let kind = tokens.get(1).copied().unwrap_or_default();
    let line = match kind {
        "jobs" => proto::decode::<FailureJob>(payload).map(|job| {
            let exit = job.failure.exit_code.map(|c| format!(" exit {c}")).unwrap_or_default();
            format!(
                "job      {}  {}/{}  {} {}{exit} ({} pod{})",
                job.incident,
                job.pod.namespace,
                job.pod.name,
                job.failure.kind.as_str(),
                job.failure.reason,
                job.affected_pods,
                if job.affected_pods == 1 { "" } else { "s" }
            )
        }),
        "verdicts" => proto::decode::<Verdict>(payload).map(|v| {
            format!(
                "verdict  {}  {}/{}  {} {}%: {}",
                v.incident,
                v.pod.namespace,
                v.pod.name,
                v.action.kind_str(),
                v.confidence,
                clipped(&v.root_cause, 160)
            )
        }),
        "outcomes" => proto::decode::<Outcome>(payload).map(|o| {
            format!(
                "outcome  {}  {}/{}  {}: {}",
                o.incident,
                o.pod.namespace,
                o.pod.name,
                o.result.as_str(),
                clipped(&o.detail, 160)
            )
        }),
        "policy" => proto::decode::<proto::autonomy::PolicyChange>(payload).map(|c| {
            let scope = c.namespace.as_deref().map(|ns| format!(" in {ns}")).unwrap_or_default();
            format!(
                "policy   {} {}{scope}  {} → {}: {}",
                c.event.as_str(),
                c.class,
                c.from,
                c.to,
                clipped(&c.why, 160)
            )
        }),
        "dlq" => {
            return format!(
                "{time}  dead     {}  {}",
                tokens.get(2).copied().unwrap_or("?"),
                reason.unwrap_or("(no reason given)")
            );
        }
        _ => return format!("{time}  {subject}  ({} bytes)", payload.len()),
    };
    match line {
        Ok(line) => format!("{time}  {line}"),
        Err(error) => format!("{time}  {subject}  unreadable: {error}"),
    }
}

/// The raw message as one JSON line.
pub fn tail_json(subject: &str, payload: &[u8]) -> String {
    let body = serde_json::from_slice::<Value>(payload)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(payload).into_owned()));
    json!({"subject": subject, "payload": body}).to_string()
}

/// Reads every outcome since `since` (on the subjects of `namespace`, when given), by incident.
async fn outcomes(
    js: &jetstream::Context,
    namespace: Option<&str>,
    since: Option<Duration>,
) -> anyhow::Result<BTreeMap<IncidentId, Record>> {
    let mut records: BTreeMap<IncidentId, Record> = BTreeMap::new();
    let filter_subject = match namespace {
        Some(ns) => format!("kubesent.outcomes.{ns}.*"),
        None => proto::OUTCOMES_SUBJECTS.to_owned(),
    };
    read_audit_log(js, vec![filter_subject], since, |_, payload| {
        if let Ok(outcome) = proto::decode::<Outcome>(payload) {
            records.entry(outcome.incident.clone()).or_default().outcomes.push(outcome);
        }
    })
    .await?;
    Ok(records)
}

/// Reads the audit log's messages on `subjects` since `since` (all when `None`), oldest first, handing
/// each (subject, payload) to `take`; ends at the newest.
pub(crate) async fn read_audit_log(
    js: &jetstream::Context,
    subjects: Vec<String>,
    since: Option<Duration>,
    mut take: impl FnMut(&str, &[u8]),
) -> anyhow::Result<()> {
    let stream = js.get_stream(proto::OUTCOMES_STREAM).await.context("opening the audit stream")?;
    let deliver_policy = match since {
        Some(age) => DeliverPolicy::ByStartTime { start_time: time::OffsetDateTime::now_utc() - age },
        None => DeliverPolicy::All,
    };
    let mut consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            filter_subjects: subjects,
            deliver_policy,
            ..Default::default()
        })
        .await
        .context("reading the audit stream")?;
    if consumer.info().await.context("reading the audit stream")?.num_pending == 0 {
        return Ok(());
    }
    let mut messages = consumer.messages().await.context("reading the audit stream")?;
    while let Some(message) = tokio::time::timeout(Duration::from_secs(10), messages.next())
        .await
        .context("the audit stream stopped answering")?
    {
        let message = message.context("reading the audit stream")?;
        let pending = message.info().map(|i| i.pending).unwrap_or(0);
        take(message.subject.as_str(), &message.payload);
        if pending == 0 {
            break;
        }
    }
    Ok(())
}

/// Adds each remediation in the intents bucket (and, when `history`, its earlier steps) to `records`.
async fn intents(
    bucket: &kv::Store,
    records: &mut BTreeMap<IncidentId, Record>,
    only: Option<&IncidentId>,
    history: bool,
) -> anyhow::Result<()> {
    let keys: Vec<String> = match only {
        Some(incident) => vec![incident.to_string()],
        None => {
            let mut keys = bucket.keys().await.context("listing the intents")?;
            let mut all = Vec::new();
            while let Some(key) = keys.next().await {
                let key = key.context("listing the intents")?;
                if key.starts_with("inc-") {
                    all.push(key);
                }
            }
            all
        }
    };
    for key in keys {
        let mut steps = Vec::new();
        if history {
            let mut entries = bucket.history(&key).await.context("reading an intent's history")?;
            while let Some(entry) = entries.next().await {
                let entry = entry.context("reading an intent's history")?;
                if entry.operation == kv::Operation::Put
                    && let Ok(intent) = serde_json::from_slice::<Intent>(&entry.value)
                {
                    steps.push(intent);
                }
            }
        } else if let Some(value) = bucket.get(&key).await.context("reading an intent")?
            && let Ok(intent) = serde_json::from_slice::<Intent>(&value)
        {
            steps.push(intent);
        }
        if !steps.is_empty() {
            records.entry(IncidentId(key)).or_default().steps = steps;
        }
    }
    Ok(())
}

/// Runs `kubesent incidents` (or `incidents show`).
/// One incident as the audit log and the intents hold it (every step), with the incidents its change
/// caused; `None` when neither knows it.
pub async fn load_one(
    js: &jetstream::Context,
    incident: &IncidentId,
) -> anyhow::Result<Option<(Record, Vec<(IncidentId, proto::Diagnosis)>)>> {
    let bucket = js.get_key_value(proto::INTENTS_BUCKET).await.ok();
    let mut records = outcomes(js, None, None).await?;
    let caused: Vec<(IncidentId, proto::Diagnosis)> =
        caused_by(incident, &records).into_iter().map(|(id, d)| (id.clone(), d)).collect();
    records.retain(|id, _| id == incident);
    if let Some(bucket) = &bucket {
        intents(bucket, &mut records, Some(incident), true).await?;
    }
    Ok(records.remove(incident).map(|record| (record, caused)))
}

/// The incidents `filter` selects, from the audit log and the intents.
pub async fn load_list(
    js: &jetstream::Context,
    filter: &Filter,
    now: jiff::Timestamp,
) -> anyhow::Result<BTreeMap<IncidentId, Record>> {
    let bucket = js.get_key_value(proto::INTENTS_BUCKET).await.ok();
    let since = filter.since.as_deref().map(parse_age).transpose()?;
    let mut records = outcomes(js, filter.namespace.as_deref(), since).await?;
    if let Some(bucket) = &bucket {
        intents(bucket, &mut records, None, false).await?;
    }
    let cutoff = since.and_then(|age| jiff::SignedDuration::try_from(age).ok()).map(|age| now - age);
    records.retain(|_, record| {
        passes(record, filter) && cutoff.is_none_or(|c| record.at().is_some_and(|at| at >= c))
    });
    Ok(records)
}

/// One incident as JSON: its outcomes, its steps, the incidents its change caused.
pub fn json_one(incident: &IncidentId, record: &Record, caused: &[(IncidentId, proto::Diagnosis)]) -> Value {
    json!({"incident": incident, "outcomes": record.outcomes, "steps": record.steps,
        "caused": caused.iter().map(|(id, d)| json!({"incident": id, "diagnosis": d})).collect::<Vec<_>>()})
}

/// Runs `kubesent incidents`.
pub async fn run(args: IncidentsArgs) -> anyhow::Result<()> {
    let nats_args = match &args.show {
        Some(ShowCommand::Show { nats, .. }) => nats,
        None => &args.nats,
    };
    let client = nats::connect_as(nats_args, Role::Reader, "kubesent-incidents").await?;
    let js = jetstream::new(client);
    let now = jiff::Timestamp::now();
    if let Some(ShowCommand::Show { incident, output, .. }) = args.show {
        let incident = IncidentId(incident);
        let Some((record, caused)) = load_one(&js, &incident).await? else {
            bail!("no incident {incident} in the audit log or the intents");
        };
        match output {
            Format::Json => {
                crate::out!("{}", serde_json::to_string_pretty(&json_one(&incident, &record, &caused))?)?
            }
            Format::Table | Format::Wide => {
                let caused: Vec<(&IncidentId, proto::Diagnosis)> =
                    caused.iter().map(|(id, d)| (id, d.clone())).collect();
                crate::out_raw!("{}", timeline(&incident, &record, &caused))?
            }
        }
        return Ok(());
    }
    let records = load_list(&js, &args.filter, now).await?;
    match args.output {
        Format::Json => crate::out!("{}", serde_json::to_string_pretty(&json_list(&records))?)?,
        Format::Table => crate::out!("{}", table(&records, false, now))?,
        Format::Wide => crate::out!("{}", table(&records, true, now))?,
    }
    Ok(())
}

/// Runs `kubesent tail` until interrupted.
pub async fn tail(args: TailArgs) -> anyhow::Result<()> {
    let client = nats::connect_as(&args.nats, Role::Reader, "kubesent-tail").await?;
    let mut subscriber = client.subscribe("kubesent.>").await.context("subscribing to kubesent.>")?;
    client.flush().await.context("subscribing to kubesent.>")?;
    eprintln!("following kubesent.> (jobs, verdicts, outcomes, dead letters); Ctrl-C to stop");
    loop {
        let message = tokio::select! {
            message = subscriber.next() => message,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        let Some(message) = message else { bail!("the subscription ended (NATS connection closed)") };
        let subject = message.subject.as_str();
        let namespace = subject.split('.').nth(2);
        if let Some(wanted) = &args.namespace
            && !subject.starts_with("kubesent.dlq.")
            && !subject.starts_with("kubesent.policy.")
            && namespace != Some(wanted.as_str())
        {
            continue;
        }
        let line = if args.json {
            tail_json(subject, &message.payload)
        } else {
            let reason =
                message.headers.as_ref().and_then(|h| h.get(proto::headers::DLQ_REASON)).map(|v| v.as_str());
            tail_line(subject, &message.payload, reason, jiff::Timestamp::now())
        };
        crate::out!("{line}")?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timeline_names_the_class_and_mode_of_a_decision_and_how_its_follow_up_counts() {
        let outcome = |result: &str, at: &str, followup: Option<Value>| -> Outcome {
            let mut body = json!({
                "schema": 1, "incident": "inc-aaaaaaaaaaaaaaaaaaaaaaaa",
                "pod": {"namespace": "payments", "name": "ledger-1", "uid": "u", "resource_version": "1"},
                "action": {"type": "increase_memory", "container": "app", "from": "128Mi", "to": "256Mi"},
                "result": result, "detail": "d", "actor": "kubesent-remediator-0",
                "autonomy": {"class": "memory-raise", "mode": "shadow"}, "at": at
            });
            if let Some(followup) = followup {
                body["followup"] = followup;
            }
            serde_json::from_value(body).expect("outcome")
        };
        let record = Record {
            outcomes: vec![
                outcome("suggested", "2026-12-06T10:00:00Z", None),
                outcome(
                    "followed",
                    "2026-12-06T10:05:00Z",
                    Some(json!({"response": "same", "by": "kubectl-edit", "failure_stopped": true})),
                ),
            ],
            steps: Vec::new(),
        };
        let text = timeline(&IncidentId("inc-aaaaaaaaaaaaaaaaaaaaaaaa".into()), &record, &[]);
        assert!(
            text.contains("outcome     suggested by kubesent-remediator-0 [memory-raise in shadow]: d\n"),
            "{text}"
        );
        assert!(text.contains("followed up followed by kubesent-remediator-0 [memory-raise in shadow]: d — counts as agreed for memory-raise"), "{text}");
        assert!(text.contains("State     suggested"), "a follow-up is not the incident's result: {text}");
    }

    #[test]
    fn ages_read_as_people_write_them() {
        assert_eq!(parse_age("30m").expect("age"), Duration::from_secs(1800));
        assert_eq!(parse_age("7d").expect("age"), Duration::from_secs(7 * 86_400));
        assert!(parse_age("soon").is_err());
        assert!(parse_age("5w").is_err());
    }

    #[test]
    fn a_message_that_is_not_what_its_subject_says_is_shown_as_unreadable_not_dropped() {
        let now = jiff::Timestamp::UNIX_EPOCH;
        let line = tail_line("kubesent.verdicts.shop.none", b"{not json", None, now);
        assert!(line.contains("unreadable"), "{line}");
        let line = tail_line("kubesent.dlq.remediator", b"x", Some("invalid verdict: schema 2"), now);
        assert!(line.contains("dead     remediator  invalid verdict: schema 2"), "{line}");
    }
}
