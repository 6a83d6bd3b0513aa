//! The rule engine against a labelled evaluation set of realistic failures (`tests/eval/cases.json`):
//! it reports the accuracy and fails below the bar.

use k8s_openapi::api::core::v1::{Event, Pod};
use kubesent_detector::{classify::classify, lean::LeanPod, tracker::Transition};
use kubesent_diagnoser::{
    MemoryPolicy,
    evidence::{self, PreviousRevision},
    redact::Redactor,
    rules,
};
use kubesent_proto::{Action, FailureKind};
use serde::Deserialize;

/// Fraction of cases the rules must get right (action, its target, and the root cause's key phrase).
const ACCURACY_BAR: f64 = 0.95;

#[derive(Deserialize)]
struct Expected {
    action: String,
    to: Option<String>,
    root_cause_contains: Vec<String>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    pod: Pod,
    previous_logs: Option<String>,
    logs: Option<String>,
    events: Vec<Event>,
    previous_revision: Option<PreviousRevision>,
    expected: Expected,
}

fn action_type(action: &Action) -> &'static str {
    match action {
        Action::IncreaseMemory { .. } => "increase_memory",
        Action::RollbackImage { .. } => "rollback_image",
        Action::None => "none",
    }
}

fn action_target(action: &Action) -> Option<String> {
    match action {
        Action::IncreaseMemory { to, .. } => Some(to.to_string()),
        Action::RollbackImage { to, .. } => Some(to.clone()),
        Action::None => None,
    }
}

#[test]
fn the_rule_engine_is_right_on_the_evaluation_set() {
    let text = std::fs::read_to_string(format!("{}/tests/eval/cases.json", env!("CARGO_MANIFEST_DIR")))
        .expect("cases");
    let cases: Vec<Case> = serde_json::from_str(&text).expect("cases parse");
    assert!(cases.len() >= 30, "the evaluation set has at least 30 cases");
    let redactor = Redactor;
    let mut wrong = Vec::new();
    for case in &cases {
        let observation = classify(&LeanPod::from(&case.pod))
            .into_iter()
            .find(|o| o.failure.is_some())
            .expect("each case fails");
        let signal = observation.failure.clone().expect("failure");
        let job = kubesent_detector::build_job(
            &LeanPod::from(&case.pod),
            &Transition { container: observation.clone(), signal },
        );
        let crashed =
            matches!(job.failure.kind, FailureKind::OomKilled | FailureKind::Killed | FailureKind::CrashLoop);
        let logs = match (crashed, &case.previous_logs, &case.logs) {
            (true, Some(previous), _) => {
                Some(evidence::log_tail(&observation.name, true, previous, &redactor))
            }
            (_, _, Some(current)) => Some(evidence::log_tail(&observation.name, false, current, &redactor)),
            _ => None,
        };
        let evidence = evidence::build(
            &case.pod,
            logs,
            &case.events,
            Vec::new(),
            None,
            case.previous_revision.clone(),
            &redactor,
        );
        let verdict = rules::diagnose(&job, &evidence, &MemoryPolicy::default());
        let cause = verdict.root_cause.to_lowercase();
        let right = action_type(&verdict.action) == case.expected.action
            && action_target(&verdict.action) == case.expected.to
            && case.expected.root_cause_contains.iter().all(|k| cause.contains(&k.to_lowercase()));
        println!(
            "{} {:<40} {:<16} {:>3}  {}",
            if right { "ok  " } else { "MISS" },
            case.name,
            action_type(&verdict.action),
            verdict.confidence,
            verdict.root_cause
        );
        if !right {
            wrong.push(case.name.clone());
        }
    }
    let accuracy = 1.0 - wrong.len() as f64 / cases.len() as f64;
    println!(
        "rule engine accuracy: {:.1}% ({} of {} cases)",
        accuracy * 100.0,
        cases.len() - wrong.len(),
        cases.len()
    );
    assert!(accuracy >= ACCURACY_BAR, "accuracy {accuracy:.3} below {ACCURACY_BAR}; wrong: {wrong:?}");
}
