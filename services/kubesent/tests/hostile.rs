//! A short hostile-message campaign (the full one is `make hostile`): forged, replayed, mutated and
//! malformed jobs, verdicts and KV writes from unprivileged and wrongly privileged clients, against the
//! services as separate processes with deploy/base's NATS permissions and RBAC. Nothing outside policy
//! changes, no service crashes, and the refusals are counted where they happen.

use kubesent_loadtest::hostile::{Options, run};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_barrage_of_hostile_messages_changes_nothing_outside_policy_and_crashes_nothing() {
    let options =
        Options { exe: env!("CARGO_BIN_EXE_kubesent").into(), messages: 150, seed: 7, report_dir: None };
    let report = run(&options).await.expect("the campaign runs");
    println!("{report}");
    assert!(report.passed(), "{report}");
    assert!(report.total() >= 150);
    assert!(report.refused_by_nats > 0, "permission refusals are counted");
    assert!(report.dead_lettered.values().sum::<u64>() > 0, "invalid messages are dead-lettered and counted");
    assert!(
        report.outcomes.get("denied").copied().unwrap_or(0) > 0,
        "forged requests are denied with a reason"
    );
    assert!(report.genuine.is_some(), "the genuine failure was fixed during the attack");
    assert!(!report.remediator_writes.is_empty(), "its fix is among the remediator's writes");
    assert!(
        report.remediator_writes.iter().all(|w| w.ends_with("/deployments/web")),
        "the remediator changed only the genuine target: {:?}",
        report.remediator_writes
    );
}
