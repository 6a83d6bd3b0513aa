//! Short forms of the scale scenarios (the full ones are `make loadtest`): they assert what must hold
//! whatever the machine — every failure ends in an outcome, one job per incident, fewer model calls than
//! the naive approach, never over the model quota, nothing dead-lettered — and report the timings.

use kubesent_loadtest::{
    campaign::{
        model_bound::{ModelBoundOptions, run as model_bound},
        storm::{StormOptions, run as storm},
    },
    detector,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_storm_on_a_busy_cluster_gets_one_job_per_incident_and_an_outcome_for_every_failure() {
    let options = StormOptions {
        exe: env!("CARGO_BIN_EXE_kubesent").into(),
        background_workloads: 100,
        pods_per_workload: 20,
        oom_deployments: 6,
        oom_replicas: 4,
        bad_rollouts: 4,
        crash_loops: 3,
        bare_pods: 4,
        storm_window: std::time::Duration::from_secs(10),
        report_dir: None,
        // deploy/base's guardrails, as installed (17 fixes stay within the budget of 30).
        guardrails: true,
    };
    let report = storm(&options).await.expect("the storm runs");
    println!("{report}");
    let finished: usize = report.outcomes.values().sum();
    assert!(finished >= report.failing_workloads, "every failing workload has a final outcome: {report}");
    assert_eq!(report.jobs, report.incidents, "one job per incident: {report}");
    assert!(report.remediator_peaks.writes > 0.0, "the remediator's writes were counted: {report}");
    assert!(
        report.model_calls < report.naive_model_calls,
        "fewer model calls than the naive approach: {report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_bound_backlog_never_goes_over_the_quota_and_loses_no_job() {
    let options = ModelBoundOptions {
        exe: env!("CARGO_BIN_EXE_kubesent").into(),
        jobs: 30,
        diagnosers: vec![2],
        report_dir: None,
    };
    let report = model_bound(&options).await.expect("the run");
    println!("{report}");
    let run = &report.runs[0];
    assert_eq!(run.verdicts, 30, "every job got its verdict: {report}");
    assert_eq!(run.over_quota, 0, "{report}");
    assert_eq!(run.dead_lettered, 0, "{report}");
    assert!(run.model_verdicts > 0, "the model was asked: {report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_detector_process_reports_every_failure_among_realistic_pods_once_and_nothing_else() {
    let options = detector::Options {
        rates: vec![500],
        failure_percents: vec![10, 100],
        seconds: 2,
        exe: env!("CARGO_BIN_EXE_kubesent").into(),
        rss_pods: vec![200, 600],
        pod_kib: 10,
    };
    let report = detector::run(&options).await.expect("the detector load test runs");
    println!("{report}");
    assert_eq!(report.latency.len(), 2, "{report}");
    for run in &report.latency {
        assert_eq!(run.failures, run.events * run.failure_percent / 100, "{report}");
        assert_eq!(run.jobs, run.failures, "one job per failing pod: {report}");
        assert_eq!(run.unexpected_jobs, 0, "no job for a healthy pod's change: {report}");
    }
    assert_eq!(report.rss.iter().map(|p| p.pods).collect::<Vec<_>>(), [200, 600], "{report}");
    assert!(report.pod_bytes >= 9 * 1024, "realistic pods: {report}");
}
