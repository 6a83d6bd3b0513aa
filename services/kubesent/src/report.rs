//! `kubesent report`: the record behind each step of earned autonomy, per action class and namespace,
//! over a period, read from the audit log: decisions and the modes they were made in, agreement with
//! people (the agreement rules of [`kubesent_proto::autonomy::judge`]), approvals and rejections,
//! healed/ineffective/not landed/reverted, the median time to heal, who proposed the fixes (the rules or
//! each model), whether each class's record earns a promotion, and the policy changes of the period.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use async_nats::jetstream;
use clap::{Args, ValueEnum};
use kubesent_common::nats::{self, NatsArgs, Role};
use kubesent_proto::{
    self as proto, IncidentId, Outcome, OutcomeResult,
    autonomy::{self as earned, ActionClass, Judgement, Mode, PolicyChange, PromotionRule, Tally},
};
use serde::Serialize;

/// `kubesent report`
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// The period: the records of the last … (`7d`, `24h`, `30m`).
    #[arg(long, default_value = "7d", value_parser = parse_period)]
    since: Duration,
    /// Only this namespace.
    #[arg(short = 'n', long)]
    namespace: Option<String>,
    /// Output: a table, or JSON for tooling.
    #[arg(short = 'o', long, value_enum, default_value_t = ReportFormat::Text)]
    output: ReportFormat,
    #[command(flatten)]
    promotion: PromotionArgs,
    #[command(flatten)]
    nats: NatsArgs,
}

fn parse_period(text: &str) -> Result<Duration, String> {
    crate::incidents::parse_age(text).map_err(|e| e.to_string())
}

/// How the report is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReportFormat {
    /// Aligned text.
    Text,
    /// One JSON document.
    Json,
}

/// What one class did in one namespace (or in all: `namespace` empty) over the period.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Row {
    /// The class.
    pub class: String,
    /// The namespace (`*` in a class's total).
    pub namespace: String,
    /// Decisions (incidents), by the mode they were made in.
    pub decisions: BTreeMap<String, u32>,
    /// How they counted (the latest judgement of each incident).
    pub record: Tally,
    /// What follow-ups saw people do, by response.
    pub followups: BTreeMap<String, u32>,
    /// Fixes people approved.
    pub approved: u32,
    /// Fixes people rejected.
    pub rejected: u32,
    /// Results of the fixes made, by result (healed, ineffective, not_landed, reverted, overridden, …).
    pub results: BTreeMap<String, u32>,
    /// Median seconds from the failure to healed.
    pub median_seconds_to_heal: Option<f64>,
    /// Decisions by who proposed them: `rules` or a model's name.
    pub proposers: BTreeMap<String, u32>,
    /// Whether the record earns a promotion, or why not (a class's total only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub promotion: Option<String>,
}

/// The report.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Report {
    /// Start of the period.
    pub since: Option<jiff::Timestamp>,
    /// Per class and namespace, then each class's total (namespace `*`).
    pub rows: Vec<Row>,
    /// The policy changes of the period (promotions, demotions, classes that earned one).
    pub policy: Vec<PolicyChange>,
}

#[derive(Default)]
struct Acc {
    decisions: BTreeMap<IncidentId, Mode>,
    judgements: BTreeMap<IncidentId, Judgement>,
    followups: BTreeMap<String, u32>,
    approved: BTreeSet<IncidentId>,
    rejected: BTreeSet<IncidentId>,
    results: BTreeMap<IncidentId, OutcomeResult>,
    heal_seconds: Vec<f64>,
    proposers: BTreeMap<IncidentId, String>,
}

impl Acc {
    fn add(&mut self, outcome: &Outcome, mode: Mode) {
        let incident = outcome.incident.clone();
        if outcome.result != OutcomeResult::Followed {
            self.decisions.entry(incident.clone()).or_insert(mode);
        }
        if let Some(judgement) = earned::judge(outcome) {
            self.judgements.insert(incident.clone(), judgement);
        }
        if let Some(followup) = &outcome.followup {
            *self.followups.entry(followup.response.as_str().to_owned()).or_default() += 1;
        }
        let by_human = outcome.decided_by.is_some();
        match outcome.result {
            OutcomeResult::Denied if by_human => {
                self.rejected.insert(incident.clone());
            }
            OutcomeResult::Reverted if outcome.actor.starts_with("kubesent undo") => {}
            _ if by_human => {
                self.approved.insert(incident.clone());
            }
            _ => {}
        }
        if matches!(
            outcome.result,
            OutcomeResult::Applied
                | OutcomeResult::Healed
                | OutcomeResult::Ineffective
                | OutcomeResult::NotLanded
                | OutcomeResult::Reverted
                | OutcomeResult::Overridden
                | OutcomeResult::Failed
        ) {
            self.results.insert(incident.clone(), outcome.result);
        }
        if outcome.result == OutcomeResult::Healed
            && let Some(d) = &outcome.diagnosis
        {
            let failed = d.failure.failed_at.or(d.detected_at).unwrap_or(d.diagnosed_at);
            let seconds = outcome.at.duration_since(failed).as_secs_f64();
            if seconds >= 0.0 {
                self.heal_seconds.push(seconds);
            }
        }
        if let Some(d) = &outcome.diagnosis {
            self.proposers.entry(incident).or_insert_with(|| earned::proposer(&d.source));
        }
    }

    fn row(&self, class: ActionClass, namespace: &str) -> Row {
        let mut decisions = BTreeMap::new();
        for mode in self.decisions.values() {
            *decisions.entry(mode.as_str().to_owned()).or_default() += 1;
        }
        let mut record = Tally::default();
        for judgement in self.judgements.values() {
            record.add(*judgement);
        }
        let mut results = BTreeMap::new();
        for result in self.results.values() {
            *results.entry(result.as_str().to_owned()).or_default() += 1;
        }
        let mut proposers = BTreeMap::new();
        for proposer in self.proposers.values() {
            *proposers.entry(proposer.clone()).or_default() += 1;
        }
        Row {
            class: class.as_str().to_owned(),
            namespace: namespace.to_owned(),
            decisions,
            record,
            followups: self.followups.clone(),
            approved: u32::try_from(self.approved.len()).unwrap_or(u32::MAX),
            rejected: u32::try_from(self.rejected.len()).unwrap_or(u32::MAX),
            results,
            median_seconds_to_heal: median(&self.heal_seconds),
            proposers,
            promotion: None,
        }
    }
}

fn median(values: &[f64]) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(sorted[n / 2]),
        _ => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2.0),
    }
}

/// The report of `outcomes` and `policy` (the audit log's records of the period), oldest first.
pub fn build(outcomes: &[Outcome], policy: Vec<PolicyChange>, rule: PromotionRule) -> Report {
    // The mode each incident was decided in: its first record that has one.
    let mut modes: BTreeMap<&IncidentId, Mode> = BTreeMap::new();
    let mut by_row: BTreeMap<(ActionClass, String), Acc> = BTreeMap::new();
    let mut by_class: BTreeMap<ActionClass, Acc> = BTreeMap::new();
    for outcome in outcomes {
        let Some(autonomy) = outcome.autonomy else { continue };
        let mode = *modes.entry(&outcome.incident).or_insert(autonomy.mode);
        by_row.entry((autonomy.class, outcome.pod.namespace.clone())).or_default().add(outcome, mode);
        by_class.entry(autonomy.class).or_default().add(outcome, mode);
    }
    let mut rows: Vec<Row> = by_row.iter().map(|((class, ns), acc)| acc.row(*class, ns)).collect();
    for (class, acc) in &by_class {
        let mut total = acc.row(*class, "*");
        total.promotion = Some(match total.record.earns(rule) {
            Ok(()) => "earns a promotion".to_owned(),
            Err(short) => format!("not yet: {short}"),
        });
        rows.push(total);
    }
    Report { since: None, rows, policy }
}

fn counts(map: &BTreeMap<String, u32>) -> String {
    if map.is_empty() {
        return "-".to_owned();
    }
    map.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", ")
}

/// The report as text.
pub fn text(report: &Report) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    if report.rows.is_empty() {
        out.push_str("no decisions of any action class in the period\n");
    }
    for row in &report.rows {
        let agreement =
            row.record.agreement().map_or_else(|| "-".to_owned(), |a| format!("{:.0} %", a * 100.0));
        let heal = row.median_seconds_to_heal.map_or_else(|| "-".to_owned(), |s| format!("{s:.0} s"));
        let _ = writeln!(
            out,
            "{:<18} {:<16} decisions: {}; agreement {agreement} ({} agreed, {} disagreed, {} harmful); \
             people: {}; approved {}, rejected {}; results: {}; median to heal {heal}; proposed by: {}{}",
            row.class,
            row.namespace,
            counts(&row.decisions),
            row.record.agreed,
            row.record.disagreed,
            row.record.harmful,
            counts(&row.followups),
            row.approved,
            row.rejected,
            counts(&row.results),
            counts(&row.proposers),
            row.promotion.as_deref().map(|p| format!("; {p}")).unwrap_or_default(),
        );
    }
    for change in &report.policy {
        let scope = change.namespace.as_deref().map(|ns| format!(" in {ns}")).unwrap_or_default();
        let _ = writeln!(
            out,
            "policy {} {}{scope}: {} → {} by {} at {}: {}",
            change.event.as_str(),
            change.class,
            change.from,
            change.to,
            change.by,
            change.at.strftime("%Y-%m-%d %H:%M:%S"),
            change.why
        );
    }
    out
}

/// Reads the audit log's outcomes and policy changes since `since` (of `namespace`, when given).
async fn read(
    js: &jetstream::Context,
    since: Duration,
    namespace: Option<&str>,
) -> anyhow::Result<(Vec<Outcome>, Vec<PolicyChange>)> {
    let (mut outcomes, mut policy) = (Vec::new(), Vec::new());
    let subjects = vec![proto::OUTCOMES_SUBJECTS.to_owned(), proto::POLICY_SUBJECTS.to_owned()];
    crate::incidents::read_audit_log(js, subjects, Some(since), |subject, payload| {
        if subject.starts_with("kubesent.policy.") {
            if let Ok(change) = proto::decode::<PolicyChange>(payload)
                && namespace.is_none_or(|ns| change.namespace.as_deref().is_none_or(|n| n == ns))
            {
                policy.push(change);
            }
        } else if let Ok(outcome) = proto::decode::<Outcome>(payload)
            && namespace.is_none_or(|ns| outcome.pod.namespace == ns)
        {
            outcomes.push(outcome);
        }
    })
    .await?;
    Ok((outcomes, policy))
}

/// The promotion rule as the remediator is configured with it (its `--promote-after` and
/// `--promote-agreement`).
#[derive(Debug, Clone, Copy, Args)]
pub struct PromotionArgs {
    /// Judged decisions a class needs to earn a promotion (as the remediator's `--promote-after`).
    #[arg(long, default_value_t = 20)]
    promote_after: u32,
    /// Agreement a class needs to earn a promotion, in percent (as the remediator's
    /// `--promote-agreement`).
    #[arg(long, default_value_t = 95)]
    promote_agreement: u8,
}

impl PromotionArgs {
    /// The rule.
    pub fn rule(self) -> PromotionRule {
        PromotionRule {
            min_judged: self.promote_after,
            min_agreement: f64::from(self.promote_agreement.min(100)) / 100.0,
        }
    }
}

/// Runs `kubesent report`.
pub async fn run(args: ReportArgs) -> anyhow::Result<()> {
    let client = nats::connect_as(&args.nats, Role::Reader, "kubesent-report").await?;
    let js = jetstream::new(client);
    let (outcomes, policy) = read(&js, args.since, args.namespace.as_deref()).await?;
    let mut report = build(&outcomes, policy, args.promotion.rule());
    report.since = jiff::Timestamp::now().checked_sub(jiff::SignedDuration::try_from(args.since)?).ok();
    match args.output {
        ReportFormat::Text => crate::out_raw!("{}", text(&report))?,
        ReportFormat::Json => crate::out!("{}", serde_json::to_string_pretty(&report)?)?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use jiff::Timestamp;
    use kubesent_proto::{
        Action, Diagnosis, Failure, FailureKind, MemoryQuantity, PodRef, VerdictSource, WorkloadKind,
        WorkloadRef,
        autonomy::{Autonomy, FollowUp, HumanResponse},
    };

    use super::*;

    fn at(second: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + second).expect("time")
    }

    fn outcome(
        incident: &str,
        ns: &str,
        result: OutcomeResult,
        mode: Mode,
        second: i64,
        model: Option<&str>,
    ) -> Outcome {
        let failure: Failure = serde_json::from_value(serde_json::json!({
            "kind": FailureKind::OomKilled, "container": "app", "reason": "OOMKilled", "restart_count": 3,
            "image": "web:1", "failed_at": at(0)
        }))
        .expect("failure");
        Outcome {
            schema: proto::SCHEMA_VERSION,
            incident: IncidentId(incident.into()),
            pod: PodRef {
                namespace: ns.into(),
                name: "web-1".into(),
                uid: "u".into(),
                resource_version: "1".into(),
            },
            action: Action::IncreaseMemory {
                container: "app".into(),
                from: MemoryQuantity::from_mib(128),
                to: MemoryQuantity::from_mib(256),
            },
            result,
            strategy: None,
            detail: String::new(),
            replacement_uid: None,
            actor: "kubesent-remediator-0".into(),
            decided_by: None,
            trace_id: None,
            diagnosis: Some(Diagnosis {
                workload: WorkloadRef { kind: WorkloadKind::Deployment, name: "web".into() },
                failure,
                root_cause: "oom".into(),
                confidence: 95,
                source: match model {
                    Some(model) => VerdictSource::Model { model: model.into() },
                    None => VerdictSource::Rules { rule: "oom".into() },
                },
                detected_at: Some(at(0)),
                diagnosed_at: at(1),
                evidence: None,
                caused_by: None,
            }),
            autonomy: Some(Autonomy { class: ActionClass::MemoryRaise, mode }),
            followup: None,
            at: at(second),
        }
    }

    #[test]
    fn the_report_counts_decisions_agreement_people_results_and_proposers_per_class_and_namespace() {
        let followed = |incident: &str, response| {
            let mut o = outcome(incident, "payments", OutcomeResult::Followed, Mode::Shadow, 300, None);
            o.followup = Some(FollowUp {
                response,
                by: Some("kubectl-edit".into()),
                changed_at: None,
                failure_stopped: true,
            });
            o
        };
        let mut approved =
            outcome("inc-4", "shop", OutcomeResult::Healed, Mode::Approve, 90, Some("gemini-3.5-flash"));
        approved.decided_by = Some("alice (NATS user kubesent-operator)".into());
        let mut rejected = outcome("inc-5", "shop", OutcomeResult::Denied, Mode::Approve, 50, None);
        rejected.decided_by = Some("bob (NATS user kubesent-operator)".into());
        let outcomes = vec![
            outcome("inc-1", "payments", OutcomeResult::Suggested, Mode::Shadow, 10, None),
            followed("inc-1", HumanResponse::Same),
            outcome("inc-2", "payments", OutcomeResult::Suggested, Mode::Shadow, 10, None),
            followed("inc-2", HumanResponse::Different),
            outcome("inc-3", "shop", OutcomeResult::Healed, Mode::Auto, 60, None),
            outcome(
                "inc-4",
                "shop",
                OutcomeResult::AwaitingApproval,
                Mode::Approve,
                20,
                Some("gemini-3.5-flash"),
            ),
            approved,
            outcome("inc-5", "shop", OutcomeResult::AwaitingApproval, Mode::Approve, 20, None),
            rejected,
            outcome("inc-6", "shop", OutcomeResult::Healed, Mode::Auto, 120, None),
            outcome("inc-6", "shop", OutcomeResult::Reverted, Mode::Auto, 200, None),
        ];
        let report = build(&outcomes, Vec::new(), PromotionRule::default());
        let row = |ns: &str| report.rows.iter().find(|r| r.namespace == ns).cloned().expect("row");
        let payments = row("payments");
        assert_eq!(payments.decisions, BTreeMap::from([("shadow".into(), 2)]));
        assert_eq!(payments.record, Tally { agreed: 1, disagreed: 1, harmful: 0 });
        assert_eq!(payments.followups, BTreeMap::from([("different".into(), 1), ("same".into(), 1)]));
        let shop = row("shop");
        assert_eq!(shop.decisions, BTreeMap::from([("approve".into(), 2), ("auto".into(), 2)]));
        assert_eq!(
            shop.record,
            Tally { agreed: 2, disagreed: 1, harmful: 1 },
            "inc-6 healed, then reverted: harmful"
        );
        assert_eq!((shop.approved, shop.rejected), (1, 1));
        assert_eq!(shop.results, BTreeMap::from([("healed".into(), 2), ("reverted".into(), 1)]));
        assert_eq!(shop.median_seconds_to_heal, Some(90.0), "healed 60, 90 and 120 s after the failure");
        assert_eq!(shop.proposers, BTreeMap::from([("gemini-3.5-flash".into(), 1), ("rules".into(), 3)]));
        let total = row("*");
        assert_eq!(total.record.judged(), 6);
        assert!(total.promotion.as_deref().is_some_and(|p| p.contains("1 harmful")), "{:?}", total.promotion);
        let text = text(&report);
        assert!(text.contains("memory-raise       payments"), "{text}");
    }

    #[test]
    fn the_median_is_the_middle_value_or_the_mean_of_the_two() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
    }
}
