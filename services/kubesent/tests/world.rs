//! A short world campaign (the full one is `make world`, ≥ 200 incidents): every constraint a real
//! cluster puts between a fix and its landing, once each, against the real topology as processes; the
//! invariants must hold. Timings are reported, not asserted, except the limits the campaign checks itself.

use kubesent_loadtest::campaign::world::{Constraint, WorldOptions, run};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_constraint_of_a_busy_cluster_once_breaks_no_invariant() {
    let options = WorldOptions {
        exe: env!("CARGO_BIN_EXE_kubesent").into(),
        incidents: Constraint::ALL.len(),
        parallel: Constraint::ALL.len(),
        seed: 5,
        every_constraint_first: true,
        report_dir: None,
        dir: std::env::var_os("KUBESENT_WORLD_LOGS").map(Into::into),
        without_take_back: false,
    };
    let report = run(&options).await.expect("the campaign runs");
    println!("{report}");
    assert!(report.violations.is_empty(), "{report}");
    for constraint in Constraint::ALL {
        let seen: usize = report.outcomes.get(&constraint).map_or(0, |o| o.values().sum());
        assert_eq!(seen, 1, "{} once: {report}", constraint.name());
    }
}
