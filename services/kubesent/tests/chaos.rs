//! A short chaos campaign (the full one is `make chaos`, ≥ 500 faults): the real topology as processes
//! under continuous failures while faults are injected; the invariants must hold. Timings are reported,
//! not asserted, except the failover and takeover limits the campaign checks itself.

use kubesent_loadtest::campaign::chaos::{ChaosOptions, run};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_faults_against_the_real_topology_break_no_invariant() {
    let options = ChaosOptions {
        exe: env!("CARGO_BIN_EXE_kubesent").into(),
        faults: 20,
        seed: 3,
        report_dir: None,
        only: None,
    };
    let report = run(&options).await.expect("the campaign runs");
    println!("{report}");
    assert!(report.violations.is_empty(), "{report}");
    assert_eq!(report.total_faults(), 20);
    assert!(report.failures > 0, "failures kept coming");
    assert!(report.outcomes.values().sum::<usize>() >= report.failures, "every failure ended in an outcome");
}
