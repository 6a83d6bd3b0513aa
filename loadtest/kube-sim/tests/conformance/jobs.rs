//! The Job controller: completions, the backoff limit and the active deadline, as kubectl shows them.

use k8s_openapi::api::batch::v1::Job;

use super::*;

fn job(name: &str, spec: serde_json::Value, annotations: serde_json::Value) -> Job {
    let mut spec = spec;
    spec["template"] = json!({
        "metadata": {"annotations": annotations},
        "spec": {"restartPolicy": "Never",
            "containers": [{"name": "task", "image": "registry.local/shop/migrate:1"}]}
    });
    serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).expect("job json")
}

async fn until_job(api: &Api<Job>, name: &str, cond: impl Fn(&Job) -> bool) -> Job {
    tokio::time::timeout(
        PATIENCE,
        await_condition(api.clone(), name, move |j: Option<&Job>| j.is_some_and(&cond)),
    )
    .await
    .expect("job condition in time")
    .expect("watch works")
    .expect("job exists")
}

fn condition(job: &Job, kind: &str) -> Option<k8s_openapi::api::batch::v1::JobCondition> {
    job.status.as_ref()?.conditions.as_ref()?.iter().find(|c| c.type_ == kind && c.status == "True").cloned()
}

#[tokio::test]
async fn a_job_whose_pods_keep_failing_fails_with_backoff_limit_exceeded() {
    let sim = sim().await;
    let jobs: Api<Job> = Api::namespaced(client(&sim), "shop");
    let created = jobs
        .create(
            &PostParams::default(),
            &job(
                "migrate",
                json!({"backoffLimit": 1}),
                json!({"sim.kubesent.io/exit-code": "1", "sim.kubesent.io/run-seconds": "1"}),
            ),
        )
        .await
        .expect("created");
    let uid = created.metadata.uid.clone().expect("uid");
    let selector = created.spec.as_ref().and_then(|s| s.selector.clone()).expect("defaulted selector");
    assert_eq!(
        selector.match_labels.unwrap_or_default().get("batch.kubernetes.io/controller-uid"),
        Some(&uid)
    );
    let failed = until_job(&jobs, "migrate", |j| condition(j, "Failed").is_some()).await;
    let reason = condition(&failed, "Failed").expect("failed");
    assert_eq!(
        (reason.reason.as_deref(), reason.message.as_deref()),
        (Some("BackoffLimitExceeded"), Some("Job has reached the specified backoff limit"))
    );
    assert_eq!(
        failed.status.as_ref().and_then(|s| s.failed),
        Some(2),
        "backoffLimit 1: the second failure ends it"
    );
    let pods: Api<Pod> = Api::namespaced(client(&sim), "shop");
    let owned = pods.list(&ListParams::default().labels("job-name=migrate")).await.expect("pods").items;
    assert_eq!(owned.len(), 2);
    assert!(owned.iter().all(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Failed")));
}

#[tokio::test]
async fn a_job_completes_after_its_completions_one_at_a_time() {
    let sim = sim().await;
    let jobs: Api<Job> = Api::namespaced(client(&sim), "shop");
    jobs.create(
        &PostParams::default(),
        &job(
            "report",
            json!({"completions": 2, "parallelism": 1}),
            json!({"sim.kubesent.io/exit-code": "0", "sim.kubesent.io/run-seconds": "1"}),
        ),
    )
    .await
    .expect("created");
    let done = until_job(&jobs, "report", |j| condition(j, "Complete").is_some()).await;
    let status = done.status.clone().expect("status");
    assert_eq!(status.succeeded, Some(2));
    assert!(status.completion_time.is_some() && status.start_time.is_some());
    assert_eq!(condition(&done, "Complete").and_then(|c| c.reason).as_deref(), Some("CompletionsReached"));
}

#[tokio::test]
async fn a_job_past_its_active_deadline_fails_and_its_running_pod_is_deleted() {
    let sim = sim().await;
    let jobs: Api<Job> = Api::namespaced(client(&sim), "shop");
    jobs.create(&PostParams::default(), &job("forever", json!({"activeDeadlineSeconds": 1}), json!({})))
        .await
        .expect("created");
    let failed = until_job(&jobs, "forever", |j| condition(j, "Failed").is_some()).await;
    assert_eq!(condition(&failed, "Failed").and_then(|c| c.reason).as_deref(), Some("DeadlineExceeded"));
    let pods: Api<Pod> = Api::namespaced(client(&sim), "shop");
    tokio::time::timeout(PATIENCE, async {
        loop {
            let left =
                pods.list(&ListParams::default().labels("job-name=forever")).await.expect("pods").items;
            if left.iter().all(|p| p.metadata.deletion_timestamp.is_some()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("its pod is deleted");
}

#[tokio::test]
async fn a_job_whose_pods_would_restart_forever_is_refused() {
    let sim = sim().await;
    let jobs: Api<Job> = Api::namespaced(client(&sim), "shop");
    let mut always = job("bad", json!({}), json!({}));
    always.spec.as_mut().expect("spec").template.spec.as_mut().expect("pod spec").restart_policy =
        Some("Always".into());
    let error = jobs.create(&PostParams::default(), &always).await.expect_err("refused");
    let kube::Error::Api(status) = error else { panic!("an API error: {error}") };
    assert_eq!(status.code, 422);
    assert_eq!(
        status.message,
        "Job.batch \"bad\" is invalid: spec.template.spec.restartPolicy: Unsupported value: \"Always\": supported values: \"OnFailure\", \"Never\""
    );
}

#[tokio::test]
async fn kubectl_get_jobs_prints_status_and_completions() {
    let Ok(kubectl) = which_kubectl() else {
        eprintln!("skipped: kubectl is not installed");
        return;
    };
    let sim = sim().await;
    let jobs: Api<Job> = Api::namespaced(client(&sim), "shop");
    jobs.create(
        &PostParams::default(),
        &job(
            "migrate",
            json!({"backoffLimit": 0}),
            json!({"sim.kubesent.io/exit-code": "1", "sim.kubesent.io/run-seconds": "1"}),
        ),
    )
    .await
    .expect("created");
    until_job(&jobs, "migrate", |j| condition(j, "Failed").is_some()).await;
    let rows = kubectl_rows(&kubectl, &sim, &["-n", "shop", "get", "jobs"]).await;
    assert_eq!(rows[0], ["NAME", "STATUS", "COMPLETIONS", "DURATION", "AGE"]);
    assert_eq!(&rows[1][..3], ["migrate", "Failed", "0/1"]);
}

#[tokio::test]
async fn a_cron_job_runs_a_job_each_scheduled_minute_and_keeps_its_history_limit() {
    use k8s_openapi::api::batch::v1::CronJob;
    let sim = sim().await;
    let cron_jobs: Api<CronJob> = Api::namespaced(client(&sim), "shop");
    let jobs: Api<Job> = Api::namespaced(client(&sim), "shop");
    let report: CronJob = serde_json::from_value(json!({
        "metadata": {"name": "report"},
        "spec": {"schedule": "*/1 * * * *", "successfulJobsHistoryLimit": 1,
            "jobTemplate": {"metadata": {"labels": {"app": "report"}},
                "spec": {"template": {"metadata": {"annotations": {"sim.kubesent.io/exit-code": "0", "sim.kubesent.io/run-seconds": "1"}},
                    "spec": {"restartPolicy": "Never", "containers": [{"name": "main", "image": "registry.local/shop/report:1"}]}}}}}
    }))
    .expect("cronjob json");
    let created = cron_jobs.create(&PostParams::default(), &report).await.expect("created");
    let defaulted = created.spec;
    assert_eq!(defaulted.concurrency_policy.as_deref(), Some("Allow"), "defaulted");
    // A minute of simulated time is 0.6 s here: three runs, each a Job named for its scheduled minute,
    // and of the finished ones only the newest kept.
    let ran = tokio::time::timeout(PATIENCE, async {
        let mut seen = std::collections::BTreeSet::new();
        loop {
            let listed = jobs.list(&ListParams::default()).await.expect("jobs").items;
            seen.extend(listed.iter().filter_map(|j| j.metadata.name.clone()));
            let succeeded = listed
                .iter()
                .filter(|j| j.status.as_ref().and_then(|s| s.succeeded).unwrap_or(0) >= 1)
                .count();
            let status = cron_jobs.get("report").await.expect("cronjob").status.unwrap_or_default();
            if seen.len() >= 3 && succeeded == 1 && status.last_successful_time.is_some() {
                return (status, listed);
            }
            assert!(
                succeeded <= 1 || seen.len() < 2,
                "at most successfulJobsHistoryLimit finished Jobs: {listed:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the CronJob ran three times and kept its history");
    let (status, listed) = ran;
    let scheduled = status.last_schedule_time.expect("lastScheduleTime").0;
    for job in &listed {
        let name = job.metadata.name.clone().unwrap_or_default();
        let minute: i64 = name.strip_prefix("report-").and_then(|m| m.parse().ok()).expect("report-<minute>");
        assert!(minute * 60 <= scheduled.as_second(), "{name} is a scheduled minute's run");
        let owner = &job.metadata.owner_references.as_ref().expect("owner")[0];
        assert_eq!((owner.kind.as_str(), owner.name.as_str()), ("CronJob", "report"));
        assert_eq!(
            job.metadata.labels.as_ref().and_then(|l| l.get("app")).map(String::as_str),
            Some("report")
        );
    }
}

#[tokio::test]
async fn a_failed_jobs_pods_are_recreated_after_a_growing_back_off() {
    // A tenth of real time, so the back-off (10 s, 20 s: 1 s, 2 s here) shows in whole-second timestamps.
    let sim =
        KubeSim::start(SimConfig { time_scale: 0.1, ..SimConfig::default() }).await.expect("kube-sim starts");
    let jobs: Api<Job> = Api::namespaced(client(&sim), "shop");
    jobs.create(
        &PostParams::default(),
        &job(
            "flaky",
            json!({"backoffLimit": 2}),
            json!({"sim.kubesent.io/exit-code": "1", "sim.kubesent.io/run-seconds": "0"}),
        ),
    )
    .await
    .expect("created");
    until_job(&jobs, "flaky", |j| condition(j, "Failed").is_some()).await;
    let pods: Api<Pod> = Api::namespaced(client(&sim), "shop");
    let mut owned = pods.list(&ListParams::default().labels("job-name=flaky")).await.expect("pods").items;
    owned.sort_by_key(|p| p.metadata.creation_timestamp.clone().map(|t| t.0));
    assert_eq!(owned.len(), 3);
    let created = |p: &Pod| p.metadata.creation_timestamp.as_ref().expect("created").0;
    let finished = |p: &Pod| {
        p.status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|c| c[0].state.clone())
            .and_then(|s| s.terminated)
            .and_then(|t| t.finished_at)
            .expect("finished")
            .0
    };
    // The third pod came at least 10 s + 20 s (simulated) after the first one failed; whole-second
    // timestamps can hide up to a second of it.
    let span = created(&owned[2]).duration_since(finished(&owned[0]));
    assert!(span >= jiff::SignedDuration::from_secs(2), "third pod {span:?} after the first failure");
}
