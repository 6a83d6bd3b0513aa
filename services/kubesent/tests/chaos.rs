//! A short chaos campaign (the full one is `make chaos`, ≥ 500 faults): the real topology as processes
//! under continuous failures while every kind of fault is injected once; the invariants must hold.
//! Timings are reported, not asserted, except the failover and takeover limits the campaign checks itself.

use kubesent_loadtest::campaign::chaos::{ChaosOptions, fault_kinds, run};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_fault_against_the_real_topology_breaks_no_invariant() {
    let kinds = fault_kinds();
    let options = ChaosOptions {
        exe: env!("CARGO_BIN_EXE_kubesent").into(),
        faults: kinds.len(),
        seed: 3,
        report_dir: None,
        only: None,
        every_kind_first: true,
        dir: std::env::var_os("KUBESENT_CHAOS_LOGS").map(Into::into),
    };
    let report = run(&options).await.expect("the campaign runs");
    println!("{report}");
    assert!(report.violations.is_empty(), "{report}");
    for kind in kinds {
        assert_eq!(report.faults.get(kind), Some(&1), "{kind} injected once: {report}");
    }
    assert!(report.failures > 0, "failures kept coming");
    assert!(report.outcomes.values().sum::<usize>() >= report.failures, "every failure ended in an outcome");
}
