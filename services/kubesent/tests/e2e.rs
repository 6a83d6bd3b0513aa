//! End to end: a real nats-server, kube-sim, gemini-sim and the three services in one process, with
//! kube-sim's RBAC on so every service runs with the permissions of `deploy/base/rbac.yaml`.

use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::{
    apps::v1::{Deployment, StatefulSet},
    core::v1::Pod,
    rbac::v1::ClusterRole,
};
use kube::{
    Api,
    api::{ListParams, Patch, PatchParams, PostParams},
};
use kube_runtime::wait::await_condition;
use kubesent_kube_sim::ImageState;
use kubesent_loadtest::stack::{Stack, StackOptions};
use kubesent_proto::{self as proto, Action, MemoryQuantity, OutcomeResult, Strategy};
use kubesent_testkit::bus::{next_outcome, next_verdict};
use serde_json::json;
use support::oom_pod;

mod support;

/// Upper bound for the whole detect → diagnose → fix → verify path (it takes a few seconds).
const PATIENCE: Duration = Duration::from_secs(90);

/// A Deployment `web` in `shop`; `template_annotations` steer kube-sim's kubelet.
fn deployment(
    replicas: i32,
    image: &str,
    labels: serde_json::Value,
    template_annotations: serde_json::Value,
) -> Deployment {
    serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": "shop", "labels": labels},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}, "annotations": template_annotations},
                "spec": {"containers": [{"name": "app", "image": image,
                    "resources": {"limits": {"memory": "128Mi"}, "requests": {"memory": "128Mi"}}}]}}}
    }))
    .expect("deployment json")
}

/// Creates Deployment `web` of `replicas` pods of 128Mi that need 200Mi (OOM-killed), as the admin.
async fn create_oom_deployment(stack: &Stack, replicas: i32) -> Api<Deployment> {
    let deployments: Api<Deployment> = Api::namespaced(stack.kube.clone(), "shop");
    let web = deployment(
        replicas,
        "registry.local/shop/web:1.4.2",
        json!({}),
        json!({"sim.kubesent.io/memory-need": "200Mi"}),
    );
    deployments.create(&PostParams::default(), &web).await.expect("deployment created");
    deployments
}

fn increase_128_to_256() -> Action {
    Action::IncreaseMemory {
        container: "app".into(),
        from: MemoryQuantity::from_mib(128),
        to: MemoryQuantity::from_mib(256),
    }
}

/// A stack with RBAC on whose revisions are known-good only after an hour: the detector records none.
async fn stack_recording_nothing_known_good() -> Stack {
    Stack::start(StackOptions {
        time_scale: 0.02,
        verify_window: Duration::from_secs(1),
        rbac: true,
        known_good_after: Duration::from_secs(3600),
        ..StackOptions::default()
    })
    .await
    .expect("stack starts")
}

/// A stack with RBAC on, serving Kubernetes 1.`minor`.
async fn stack(minor: u32) -> Stack {
    Stack::start(StackOptions {
        time_scale: 0.02,
        verify_window: Duration::from_secs(1),
        rbac: true,
        kubernetes_minor: minor,
        ..StackOptions::default()
    })
    .await
    .expect("stack starts")
}

async fn last_sequence(js: &async_nats::jetstream::Context, stream: &str) -> u64 {
    js.get_stream(stream).await.expect("stream").info().await.expect("info").state.last_sequence
}

/// One job, one verdict, one outcome, nothing dead-lettered, and no request refused by RBAC.
async fn assert_one_of_each_and_least_privilege(stack: &Stack) {
    assert_eq!(last_sequence(&stack.js, proto::JOBS_STREAM).await, 1, "one job");
    assert_eq!(last_sequence(&stack.js, proto::VERDICTS_STREAM).await, 1, "one verdict");
    assert_eq!(last_sequence(&stack.js, proto::OUTCOMES_STREAM).await, 1, "one outcome");
    assert_eq!(last_sequence(&stack.js, proto::DLQ_STREAM).await, 0, "nothing dead-lettered");
    let forbidden: Vec<_> =
        stack.kube_sim.requests().into_iter().filter(|r| r.status == 401 || r.status == 403).collect();
    assert!(forbidden.is_empty(), "least privilege is enough: {forbidden:?}");
}

fn memory_limit(pod: &Pod) -> String {
    let container = &pod.spec.as_ref().expect("spec").containers[0];
    container.resources.as_ref().and_then(|r| r.limits.clone()).expect("limits")["memory"].0.clone()
}

/// The pods with `labels` that are not terminating.
async fn live_pods(pods: &Api<Pod>, labels: &str) -> Vec<Pod> {
    let listed = pods.list(&ListParams::default().labels(labels)).await.expect("pods");
    listed.items.into_iter().filter(|p| p.metadata.deletion_timestamp.is_none()).collect()
}

/// Runs `kubesent undo <incident> --by alice` as the operator against `stack` (RBAC off).
async fn kubesent_undo(stack: &Stack, incident: &proto::IncidentId) -> std::process::Output {
    kubesent_as_operator(stack, &["undo", incident.as_str(), "--kube-api-url", &stack.kube_sim.url()]).await
}

/// Runs `kubesent <args> --nats-url … --by alice` as the operator against `stack`.
async fn kubesent_as_operator(stack: &Stack, args: &[&str]) -> std::process::Output {
    let operator = stack.users.env(kubesent_common::nats::Role::Operator);
    let nats = stack.nats.url().to_owned();
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_kubesent"))
            .args(&args)
            .args(["--nats-url", &nats, "--by", "alice"])
            .envs(operator)
            .output()
            .expect("kubesent runs")
    })
    .await
    .expect("ran")
}

fn running_ready(pod: &Pod) -> bool {
    pod.status.as_ref().and_then(|s| s.container_statuses.clone()).is_some_and(|statuses| {
        statuses.iter().all(|s| s.ready && s.state.as_ref().is_some_and(|s| s.running.is_some()))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oom_killed_bare_pod_is_resized_in_place_and_keeps_running() {
    let stack = stack(36).await;
    let mut outcomes = stack.nats_client.subscribe("kubesent.outcomes.>").await.expect("subscribed");
    let pods: Api<Pod> = Api::namespaced(stack.kube.clone(), "shop");
    let original = pods.create(&PostParams::default(), &oom_pod("web-1")).await.expect("pod created");
    let original_uid = original.metadata.uid.clone().expect("uid");

    let outcome = next_outcome(&mut outcomes).await;
    assert_eq!(outcome.result, OutcomeResult::Healed, "{}", outcome.detail);
    assert_eq!(outcome.strategy, Some(Strategy::InPlaceResize));
    assert_eq!(outcome.action, increase_128_to_256());

    let resized = pods.get("web-1").await.expect("pod exists");
    assert_eq!(resized.metadata.uid.as_deref(), Some(original_uid.as_str()), "the same pod, not a new one");
    assert_eq!(memory_limit(&resized), "256Mi");
    let annotations = resized.metadata.annotations.clone().expect("annotations");
    assert_eq!(annotations["kubesent.io/original-memory-limit.app"], "128Mi");
    assert_eq!(annotations["kubesent.io/incident"], outcome.incident.as_str());
    assert!(running_ready(&resized), "{:?}", resized.status);
    let requests = stack.kube_sim.requests();
    assert!(
        requests
            .iter()
            .any(|r| r.method == "PATCH" && r.path.ends_with("/pods/web-1/resize") && r.status == 200)
    );
    assert!(!requests.iter().any(|r| r.method == "DELETE" && r.path.contains("/pods/")), "nothing deleted");
    assert_one_of_each_and_least_privilege(&stack).await;
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_in_place_resize_an_oom_killed_bare_pod_is_replaced_with_more_memory() {
    let _telemetry = kubesent_common::telemetry::init("e2e", false);
    // Kubernetes 1.32 does not serve pods/resize: the resize falls back to a force replace.
    let stack = stack(32).await;
    let mut outcomes = stack.nats_client.subscribe("kubesent.outcomes.>").await.expect("subscribed");
    let pods: Api<Pod> = Api::namespaced(stack.kube.clone(), "shop");
    let original = pods.create(&PostParams::default(), &oom_pod("web-1")).await.expect("pod created");
    let original_uid = original.metadata.uid.clone().expect("uid");

    let outcome = next_outcome(&mut outcomes).await;
    assert_eq!(outcome.result, OutcomeResult::Healed, "{}", outcome.detail);
    assert_eq!(outcome.strategy, Some(Strategy::ForceReplace));
    assert_eq!(outcome.action, increase_128_to_256());
    assert_eq!(outcome.pod.uid, original_uid);

    let replacement = pods.get("web-1").await.expect("replacement exists");
    assert_ne!(replacement.metadata.uid.as_deref(), Some(original_uid.as_str()));
    assert_eq!(outcome.replacement_uid, replacement.metadata.uid);
    assert_eq!(memory_limit(&replacement), "256Mi");
    let annotations = replacement.metadata.annotations.clone().expect("annotations");
    assert_eq!(annotations["kubesent.io/original-memory-limit.app"], "128Mi");
    assert!(running_ready(&replacement), "{:?}", replacement.status);
    let status =
        &replacement.status.as_ref().and_then(|s| s.container_statuses.clone()).expect("statuses")[0];
    assert_eq!(status.restart_count, 0);

    let requests = stack.kube_sim.requests();
    assert!(
        requests
            .iter()
            .any(|r| r.method == "PATCH" && r.path.ends_with("/pods/web-1/resize") && r.status == 404)
    );
    assert!(
        requests.iter().any(|r| r.method == "DELETE" && r.path.ends_with("/pods/web-1") && r.status == 200)
    );
    assert_one_of_each_and_least_privilege(&stack).await;
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oom_killed_deployment_gets_more_memory_in_its_template_and_rolls_out() {
    let stack = stack(36).await;
    let mut outcomes = stack.nats_client.subscribe("kubesent.outcomes.>").await.expect("subscribed");
    let deployments: Api<Deployment> = Api::namespaced(stack.kube.clone(), "shop");
    let pods: Api<Pod> = Api::namespaced(stack.kube.clone(), "shop");
    let web = deployment(
        3,
        "registry.local/shop/web:1.4.2",
        json!({}),
        json!({"sim.kubesent.io/memory-need": "200Mi"}),
    );
    deployments.create(&PostParams::default(), &web).await.expect("deployment created");

    let outcome = next_outcome(&mut outcomes).await;
    assert_eq!(outcome.result, OutcomeResult::Healed, "{}", outcome.detail);
    assert_eq!(outcome.strategy, Some(Strategy::OwnerPatch));
    assert_eq!(outcome.action, increase_128_to_256());

    let web = deployments.get("web").await.expect("deployment");
    let template = web.spec.as_ref().and_then(|s| s.template.spec.clone()).expect("template");
    let limits = template.containers[0].resources.as_ref().and_then(|r| r.limits.clone()).expect("limits");
    assert_eq!(limits["memory"].0, "256Mi");
    let annotations = web.metadata.annotations.clone().expect("annotations");
    assert_eq!(annotations["kubesent.io/original-memory-limit.app"], "128Mi", "reversible");
    assert_eq!(annotations["kubesent.io/incident"], outcome.incident.as_str());
    // `kubectl rollout history` says why the new revision exists.
    let sets: Api<k8s_openapi::api::apps::v1::ReplicaSet> = Api::namespaced(stack.kube.clone(), "shop");
    let newest = sets
        .list(&Default::default())
        .await
        .expect("replica sets")
        .items
        .into_iter()
        .max_by_key(|rs| {
            rs.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get("deployment.kubernetes.io/revision")?.parse::<i64>().ok())
        })
        .expect("a replica set");
    assert_eq!(
        newest.metadata.annotations.unwrap_or_default().get("kubernetes.io/change-cause").map(String::as_str),
        Some(format!("KubeSent, incident {}: memory limit of app 128Mi -> 256Mi", outcome.incident).as_str())
    );
    let live = live_pods(&pods, "app=web").await;
    assert_eq!(live.len(), 3, "the rollout replaced every pod");
    for pod in &live {
        assert_eq!(memory_limit(pod), "256Mi");
        assert!(running_ready(pod), "{:?}", pod.status);
    }
    let requests = stack.kube_sim.requests();
    assert!(
        !requests.iter().any(|r| r.method == "DELETE" && r.path.contains("/pods/")),
        "pods were left to the rollout"
    );
    let diagnosis = outcome.diagnosis.as_ref().expect("the audit log keeps the verdict");
    assert!(diagnosis.root_cause.contains("OOM-killed"), "{}", diagnosis.root_cause);
    assert!(diagnosis.failure.failed_at.is_some(), "the container's termination time travels with the job");
    // The SLIs: each stage of this incident is one observation in its failure kind's histogram.
    let metrics = stack.metrics.text();
    for histogram in [
        "kubesent_detector_detection_seconds",
        "kubesent_diagnoser_job_to_verdict_seconds",
        "kubesent_remediator_verdict_to_fix_seconds",
        "kubesent_remediator_failure_to_healed_seconds",
    ] {
        let series = format!("{histogram}_count{{kind=\"oom-killed\"}} 1");
        assert!(metrics.contains(&series), "{series} in:\n{metrics}");
    }
    assert_one_of_each_and_least_privilege(&stack).await;
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oom_killed_stateful_set_gets_more_memory_and_its_stuck_pod_is_recreated() {
    let stack = stack(36).await;
    let mut outcomes = stack.nats_client.subscribe("kubesent.outcomes.>").await.expect("subscribed");
    let sets: Api<StatefulSet> = Api::namespaced(stack.kube.clone(), "shop");
    let pods: Api<Pod> = Api::namespaced(stack.kube.clone(), "shop");
    // OrderedReady: db-0 is OOM-killed before its first readiness probe, so it is never ready, db-1 is never
    // created and the controller never replaces db-0 by itself, even after the template is fixed.
    let db: StatefulSet = serde_json::from_value(json!({
        "metadata": {"name": "db", "namespace": "shop"},
        "spec": {"replicas": 2, "serviceName": "db", "selector": {"matchLabels": {"app": "db"}},
            "template": {"metadata": {"labels": {"app": "db"}, "annotations": {"sim.kubesent.io/memory-need": "200Mi"}},
                "spec": {"containers": [{"name": "app", "image": "registry.local/shop/db:16",
                    "readinessProbe": {"tcpSocket": {"port": 5432}, "initialDelaySeconds": 10},
                    "resources": {"limits": {"memory": "128Mi"}, "requests": {"memory": "128Mi"}}}]}}}
    }))
    .expect("statefulset json");
    sets.create(&PostParams::default(), &db).await.expect("statefulset created");

    let outcome = next_outcome(&mut outcomes).await;
    assert_eq!(outcome.result, OutcomeResult::Healed, "{}", outcome.detail);
    assert_eq!(outcome.strategy, Some(Strategy::OwnerPatch));
    assert_eq!(outcome.action, increase_128_to_256());
    let db = sets.get("db").await.expect("statefulset");
    let annotations = db.metadata.annotations.clone().expect("annotations");
    assert_eq!(annotations["kubesent.io/original-memory-limit.app"], "128Mi", "reversible");
    let live = live_pods(&pods, "app=db").await;
    let mut names: Vec<_> = live.iter().filter_map(|p| p.metadata.name.clone()).collect();
    names.sort();
    assert_eq!(names, ["db-0", "db-1"]);
    for pod in &live {
        assert_eq!(memory_limit(pod), "256Mi");
        assert!(running_ready(pod), "{:?}", pod.status);
    }
    assert_one_of_each_and_least_privilege(&stack).await;
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubesent_undo_restores_the_template_records_the_reversal_and_refuses_a_second_time() {
    // RBAC off: the CLI below talks to kube-sim as its administrator.
    let stack = Stack::start(StackOptions {
        time_scale: 0.02,
        verify_window: Duration::from_secs(1),
        ..StackOptions::default()
    })
    .await
    .expect("stack starts");
    let mut outcomes = stack.nats_client.subscribe("kubesent.outcomes.>").await.expect("subscribed");
    let deployments = create_oom_deployment(&stack, 2).await;
    let healed = next_outcome(&mut outcomes).await;
    assert_eq!(healed.result, OutcomeResult::Healed, "{}", healed.detail);
    let incident = healed.incident.to_string();
    let output = kubesent_undo(&stack, &healed.incident).await;
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(String::from_utf8_lossy(&output.stdout).contains("reverted Deployment web"));

    let reverted = next_outcome(&mut outcomes).await;
    assert_eq!(reverted.result, OutcomeResult::Reverted);
    assert_eq!(reverted.incident, healed.incident);
    assert!(reverted.actor.starts_with("kubesent undo"), "{}", reverted.actor);
    assert_eq!(reverted.decided_by.as_deref(), Some("alice (NATS user kubesent-operator)"), "attributed");
    let web = deployments.get("web").await.expect("deployment");
    let template = web.spec.as_ref().and_then(|s| s.template.spec.clone()).expect("template");
    let limits = template.containers[0].resources.as_ref().and_then(|r| r.limits.clone()).expect("limits");
    assert_eq!(limits["memory"].0, "128Mi", "the template is as it was");
    let annotations = web.metadata.annotations.clone().unwrap_or_default();
    assert!(!annotations.contains_key("kubesent.io/original-memory-limit.app"));
    assert_eq!(
        annotations.get("kubesent.io/reverted.app"),
        Some(&incident),
        "KubeSent leaves it to the human now"
    );

    let again = kubesent_undo(&stack, &healed.incident).await;
    assert!(!again.status.success(), "nothing to reverse the second time");
    assert!(String::from_utf8_lossy(&again.stderr).contains("no longer holds KubeSent's value"));
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_updated_to_a_missing_image_is_rolled_back_to_the_previous_image() {
    let _telemetry = kubesent_common::telemetry::init("e2e", false);
    let stack = stack(36).await;
    let mut outcomes = stack.nats_client.subscribe("kubesent.outcomes.>").await.expect("subscribed");
    let deployments: Api<Deployment> = Api::namespaced(stack.kube.clone(), "shop");
    let pods: Api<Pod> = Api::namespaced(stack.kube.clone(), "shop");
    let web = deployment(3, "registry.local/shop/web:1.4.2", json!({}), json!({}));
    deployments.create(&PostParams::default(), &web).await.expect("deployment created");
    let available =
        |d: Option<&Deployment>| d.and_then(|d| d.status.as_ref()).and_then(|s| s.ready_replicas) == Some(3);
    tokio::time::timeout(PATIENCE, await_condition(deployments.clone(), "web", available))
        .await
        .expect("revision 1 ready in time")
        .expect("watch");

    stack.kube_sim.state().registry.set("registry.local/shop/web:1.5.0", ImageState::Missing);
    let update = json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": "registry.local/shop/web:1.5.0"}]}}}});
    deployments.patch("web", &PatchParams::default(), &Patch::Strategic(&update)).await.expect("updated");

    let outcome = next_outcome(&mut outcomes).await;
    assert_eq!(outcome.result, OutcomeResult::Healed, "{}", outcome.detail);
    assert_eq!(outcome.strategy, Some(Strategy::OwnerPatch));
    assert_eq!(
        outcome.action,
        Action::RollbackImage {
            container: "app".into(),
            from: "registry.local/shop/web:1.5.0".into(),
            to: "registry.local/shop/web:1.4.2".into()
        }
    );
    let web = deployments.get("web").await.expect("deployment");
    let template = web.spec.as_ref().and_then(|s| s.template.spec.clone()).expect("template");
    assert_eq!(template.containers[0].image.as_deref(), Some("registry.local/shop/web:1.4.2"));
    let annotations = web.metadata.annotations.clone().expect("annotations");
    assert_eq!(annotations["kubesent.io/original-image.app"], "registry.local/shop/web:1.5.0", "reversible");
    let live = live_pods(&pods, "app=web").await;
    assert_eq!(live.len(), 3);
    for pod in &live {
        assert_eq!(
            pod.spec.as_ref().expect("spec").containers[0].image.as_deref(),
            Some("registry.local/shop/web:1.4.2")
        );
        assert!(running_ready(pod), "{:?}", pod.status);
    }
    assert_one_of_each_and_least_privilege(&stack).await;
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stateful_set_updated_to_a_missing_image_is_rolled_back_from_its_controller_revisions() {
    let stack = stack(36).await;
    let mut outcomes = stack.nats_client.subscribe("kubesent.outcomes.>").await.expect("subscribed");
    let sets: Api<StatefulSet> = Api::namespaced(stack.kube.clone(), "shop");
    let pods: Api<Pod> = Api::namespaced(stack.kube.clone(), "shop");
    let db: StatefulSet = serde_json::from_value(json!({
        "metadata": {"name": "db", "namespace": "shop"},
        "spec": {"replicas": 3, "serviceName": "db", "selector": {"matchLabels": {"app": "db"}},
            "template": {"metadata": {"labels": {"app": "db"}},
                "spec": {"containers": [{"name": "app", "image": "registry.local/shop/db:16.4",
                    "resources": {"limits": {"memory": "128Mi"}}}]}}}
    }))
    .expect("statefulset json");
    sets.create(&PostParams::default(), &db).await.expect("statefulset created");
    let ready =
        |s: Option<&StatefulSet>| s.and_then(|s| s.status.as_ref()).and_then(|s| s.ready_replicas) == Some(3);
    tokio::time::timeout(PATIENCE, await_condition(sets.clone(), "db", ready))
        .await
        .expect("revision 1 ready in time")
        .expect("watch");

    stack.kube_sim.state().registry.set("registry.local/shop/db:16.5", ImageState::Missing);
    let update = json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": "registry.local/shop/db:16.5"}]}}}});
    sets.patch("db", &PatchParams::default(), &Patch::Strategic(&update)).await.expect("updated");

    let outcome = next_outcome(&mut outcomes).await;
    assert_eq!(outcome.result, OutcomeResult::Healed, "{}", outcome.detail);
    assert_eq!(outcome.strategy, Some(Strategy::OwnerPatch));
    assert_eq!(
        outcome.action,
        Action::RollbackImage {
            container: "app".into(),
            from: "registry.local/shop/db:16.5".into(),
            to: "registry.local/shop/db:16.4".into()
        }
    );
    let live = live_pods(&pods, "app=db").await;
    assert_eq!(live.len(), 3);
    for pod in &live {
        assert_eq!(
            pod.spec.as_ref().expect("spec").containers[0].image.as_deref(),
            Some("registry.local/shop/db:16.4")
        );
        assert!(running_ready(pod), "{:?}", pod.status);
    }
    assert_one_of_each_and_least_privilege(&stack).await;
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_managed_by_argo_cd_gets_a_suggestion_and_is_left_unchanged() {
    let stack = stack(36).await;
    let mut outcomes = stack.nats_client.subscribe("kubesent.outcomes.>").await.expect("subscribed");
    let deployments: Api<Deployment> = Api::namespaced(stack.kube.clone(), "shop");
    let web = deployment(
        1,
        "registry.local/shop/web:1.4.2",
        json!({"argocd.argoproj.io/instance": "shop"}),
        json!({"sim.kubesent.io/memory-need": "200Mi"}),
    );
    let created = deployments.create(&PostParams::default(), &web).await.expect("deployment created");

    let outcome = next_outcome(&mut outcomes).await;
    assert_eq!(outcome.result, OutcomeResult::Suggested, "{}", outcome.detail);
    assert!(outcome.detail.contains("Argo CD"), "{}", outcome.detail);
    assert_eq!(outcome.action, increase_128_to_256(), "the suggestion names the fix");
    let web = deployments.get("web").await.expect("deployment");
    assert_eq!(web.metadata.generation, created.metadata.generation, "the template is unchanged");
    let requests = stack.kube_sim.requests();
    assert!(
        !requests.iter().any(|r| r.method != "GET" && r.path.contains("/deployments/web") && r.status < 300),
        "nothing was written to the deployment"
    );
    assert_one_of_each_and_least_privilege(&stack).await;
    stack.stop().await;
}

/// How many fixes the remediator saw not land (`not_landed`) or changed back (`overridden`), from its
/// detection-time histogram.
fn fixes_undone(stack: &Stack, result: &str) -> u64 {
    let series = format!("kubesent_remediator_fix_undone_detection_seconds_count{{result=\"{result}\"}} ");
    let text = stack.metrics.text();
    text.lines().find_map(|line| line.strip_prefix(series.as_str())?.parse().ok()).unwrap_or(0)
}

/// The writes KubeSent made to Deployment `web` that the API took.
fn kubesent_writes_to_web(stack: &Stack) -> usize {
    stack
        .kube_sim
        .requests()
        .into_iter()
        .filter(|r| {
            r.method == "PATCH"
                && r.status < 300
                && r.path.ends_with("/deployments/web")
                && r.query.contains("fieldManager=kubesent-remediator")
        })
        .count()
}

/// Nothing but GETs, lists and watches reached the Deployment `web` (and no pod was written by KubeSent).
fn nothing_written_to_web(stack: &Stack) {
    let written: Vec<_> = stack
        .kube_sim
        .requests()
        .into_iter()
        .filter(|r| r.method == "PATCH" && r.path.contains("/deployments/web"))
        .collect();
    assert!(written.is_empty(), "nothing was written to the deployment: {written:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raise_no_node_has_room_for_is_denied_before_anything_changes() {
    // Two nodes of 1Gi; the Deployment's containers state only a limit, so the request is the limit.
    let nodes = (1..=2)
        .map(|i| kubesent_kube_sim::nodes::NodeConfig {
            memory: MemoryQuantity::from_mib(1024),
            ..kubesent_kube_sim::nodes::NodeConfig::worker(&format!("sim-node-{i}"))
        })
        .collect();
    let stack = Stack::start(StackOptions {
        time_scale: 0.02,
        verify_window: Duration::from_secs(1),
        rbac: true,
        nodes,
        ..StackOptions::default()
    })
    .await
    .expect("stack starts");
    let mut outcomes = stack.nats_client.subscribe("kubesent.outcomes.>").await.expect("subscribed");
    let deployments: Api<Deployment> = Api::namespaced(stack.kube.clone(), "shop");
    let web: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}, "annotations": {"sim.kubesent.io/memory-need": "600Mi"}},
                "spec": {"containers": [{"name": "app", "image": "registry.local/shop/web:1.4.2",
                    "resources": {"limits": {"memory": "384Mi"}}}]}}}
    }))
    .expect("deployment json");
    deployments.create(&PostParams::default(), &web).await.expect("deployment created");

    let outcome = next_outcome(&mut outcomes).await;
    assert_eq!(outcome.result, OutcomeResult::Denied, "{}", outcome.detail);
    assert!(
        outcome.detail.contains("the fix would not land: no node has room for the new pod"),
        "{}",
        outcome.detail
    );
    assert!(
        outcome.detail.contains("a raise of the limit alone would fit if the request stayed at 384Mi"),
        "says what a human can change: {}",
        outcome.detail
    );
    nothing_written_to_web(&stack);
    assert_one_of_each_and_least_privilege(&stack).await;
    stack.stop().await;
}

/// A stack whose nodes are a 1Gi node of pool `web` and a 4Gi node of pool `batch`, and Deployment `web`
/// of two pods of 384Mi that need 600Mi, on pool `web` only. The pre-flight reads memory, not node
/// selectors: the 4Gi node has room for the raise (768Mi), but the pods may only run where 256Mi is left.
async fn raise_that_fits_no_node_of_its_pool(
    take_back: bool,
) -> (Stack, async_nats::Subscriber, Api<Deployment>) {
    let node = |name: &str, mib: u64, pool: &str| kubesent_kube_sim::nodes::NodeConfig {
        memory: MemoryQuantity::from_mib(mib),
        labels: [("pool".to_owned(), pool.to_owned())].into(),
        ..kubesent_kube_sim::nodes::NodeConfig::worker(name)
    };
    let stack = Stack::start(StackOptions {
        time_scale: 0.02,
        verify_window: Duration::from_secs(1),
        rbac: true,
        nodes: vec![node("sim-node-1", 1024, "web"), node("sim-node-2", 4096, "batch")],
        take_back,
        ..StackOptions::default()
    })
    .await
    .expect("stack starts");
    let outcomes = stack.nats_client.subscribe("kubesent.outcomes.>").await.expect("subscribed");
    let deployments: Api<Deployment> = Api::namespaced(stack.kube.clone(), "shop");
    let web: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}, "annotations": {"sim.kubesent.io/memory-need": "600Mi"}},
                "spec": {"nodeSelector": {"pool": "web"}, "containers": [{"name": "app", "image": "registry.local/shop/web:1.4.2",
                    "resources": {"limits": {"memory": "384Mi"}}}]}}}
    }))
    .expect("deployment json");
    deployments.create(&PostParams::default(), &web).await.expect("deployment created");
    (stack, outcomes, deployments)
}

/// The memory limit of container `app` in Deployment `web`'s template.
async fn template_memory_limit(deployments: &Api<Deployment>) -> Option<String> {
    let web = deployments.get("web").await.expect("web");
    let resources = web.spec?.template.spec?.containers.first()?.resources.clone()?;
    resources.limits?.get("memory").map(|q| q.0.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raise_whose_new_pods_cannot_be_scheduled_is_taken_back_within_seconds_and_reverted() {
    let (stack, mut outcomes, deployments) = raise_that_fits_no_node_of_its_pool(true).await;

    let outcome = next_outcome(&mut outcomes).await;
    assert_eq!(outcome.result, OutcomeResult::Reverted, "{}", outcome.detail);
    assert!(outcome.detail.contains("made things worse: its new pod web-"), "{}", outcome.detail);
    assert!(outcome.detail.contains("cannot be scheduled: 0/2 nodes are available"), "{}", outcome.detail);
    assert!(
        outcome.detail.contains("KubeSent took its change back (memory limit of app 768Mi -> 384Mi)"),
        "{}",
        outcome.detail
    );
    assert_eq!(
        template_memory_limit(&deployments).await.as_deref(),
        Some("384Mi"),
        "the template is as it was"
    );
    assert_eq!(kubesent_writes_to_web(&stack), 2, "one change and its take-back, nothing more");
    assert_eq!(fixes_undone(&stack, "reverted"), 1, "the detection time was observed");
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(stack.kube.clone(), "shop");
    let announced = events.list(&Default::default()).await.expect("events");
    assert!(
        announced.items.iter().any(|e| e.reason.as_deref() == Some("RemediationReverted")
            && e.regarding.as_ref().and_then(|r| r.kind.as_deref()) == Some("Deployment")),
        "announced on the Deployment: {:?}",
        announced.items.iter().map(|e| &e.reason).collect::<Vec<_>>()
    );
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_taking_back_off_the_pending_pod_kubesents_raise_left_is_kubesents_incident_not_the_owners() {
    let (stack, mut outcomes, deployments) = raise_that_fits_no_node_of_its_pool(false).await;

    let raised = next_outcome(&mut outcomes).await;
    assert_eq!(raised.result, OutcomeResult::Ineffective, "{}", raised.detail);
    assert!(
        raised.detail.contains("KubeSent left its change in place (taking changes back is turned off)"),
        "{}",
        raised.detail
    );
    assert_eq!(template_memory_limit(&deployments).await.as_deref(), Some("768Mi"), "the raise stays");
    // The new pod stays Pending; the detector reports it, and the diagnosis names KubeSent's incident.
    let pending = next_outcome(&mut outcomes).await;
    assert_eq!(pending.result, OutcomeResult::DiagnosisOnly, "{}", pending.detail);
    let diagnosis = pending.diagnosis.expect("the outcome carries its diagnosis");
    assert_eq!(diagnosis.failure.kind, proto::FailureKind::Unschedulable);
    assert_eq!(diagnosis.caused_by.as_ref(), Some(&raised.incident), "attributed to KubeSent's incident");
    assert!(
        diagnosis.root_cause.contains(&format!(
            "KubeSent's own change for incident {} (the memory limit of app raised from 384Mi to 768Mi) caused this",
            raised.incident
        )),
        "{}",
        diagnosis.root_cause
    );
    assert!(!diagnosis.root_cause.to_lowercase().contains("lower its memory"), "{}", diagnosis.root_cause);
    assert_eq!(kubesent_writes_to_web(&stack), 1, "one write, nothing on the second incident");
    // `kubesent incidents show` links both ways.
    let (code, shown, stderr) = as_reader(&stack, &["incidents", "show", raised.incident.as_str()]).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(
        shown
            .contains(&format!("caused      incident {}: unschedulable in Deployment web", pending.incident)),
        "{shown}"
    );
    let (code, shown, stderr) = as_reader(&stack, &["incidents", "show", pending.incident.as_str()]).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(
        shown.contains(&format!("caused by   KubeSent's change for incident {}", raised.incident)),
        "{shown}"
    );
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raise_the_namespaces_quota_cannot_hold_is_denied_naming_the_quota() {
    let stack = stack(36).await;
    let mut outcomes = stack.nats_client.subscribe("kubesent.outcomes.>").await.expect("subscribed");
    let quotas: Api<k8s_openapi::api::core::v1::ResourceQuota> = Api::namespaced(stack.kube.clone(), "shop");
    let quota = serde_json::from_value(
        json!({"metadata": {"name": "shop-quota"}, "spec": {"hard": {"limits.memory": "400Mi"}}}),
    )
    .expect("quota json");
    quotas.create(&PostParams::default(), &quota).await.expect("quota created");
    create_oom_deployment(&stack, 2).await;

    // Two pods of 128Mi use 256Mi of 400Mi: a new pod of 256Mi does not fit beside them.
    let outcome = next_outcome(&mut outcomes).await;
    assert_eq!(outcome.result, OutcomeResult::Denied, "{}", outcome.detail);
    assert_eq!(outcome.action, increase_128_to_256());
    assert!(
        outcome.detail.contains(
            "ResourceQuota shop-quota allows 144Mi more limits.memory; the fix needs 256Mi (raise the quota or free room in the namespace)"
        ),
        "{}",
        outcome.detail
    );
    nothing_written_to_web(&stack);
    assert_one_of_each_and_least_privilege(&stack).await;
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_a_vertical_pod_autoscaler_manages_gets_a_suggestion_naming_it() {
    use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
    let stack = stack(36).await;
    let mut outcomes = stack.nats_client.subscribe("kubesent.outcomes.>").await.expect("subscribed");
    let gvk = GroupVersionKind::gvk("autoscaling.k8s.io", "v1", "VerticalPodAutoscaler");
    let resource = ApiResource::from_gvk_with_plural(&gvk, "verticalpodautoscalers");
    let vpas: Api<DynamicObject> = Api::namespaced_with(stack.kube.clone(), "shop", &resource);
    let vpa: DynamicObject = serde_json::from_value(json!({"apiVersion": "autoscaling.k8s.io/v1",
        "kind": "VerticalPodAutoscaler", "metadata": {"name": "web-vpa"},
        "spec": {"targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
            "updatePolicy": {"updateMode": "Auto"},
            "resourcePolicy": {"containerPolicies": [{"containerName": "*", "maxAllowed": {"memory": "192Mi"}}]}}}))
    .expect("vpa json");
    vpas.create(&PostParams::default(), &vpa).await.expect("vpa created");
    create_oom_deployment(&stack, 1).await;

    let outcome = next_outcome(&mut outcomes).await;
    assert_eq!(outcome.result, OutcomeResult::Suggested, "{}", outcome.detail);
    assert_eq!(outcome.action, increase_128_to_256(), "the suggestion names the fix");
    assert!(
        outcome
            .detail
            .contains("managed by VerticalPodAutoscaler web-vpa (updateMode Auto, maxAllowed memory 192Mi)"),
        "{}",
        outcome.detail
    );
    nothing_written_to_web(&stack);
    assert_one_of_each_and_least_privilege(&stack).await;
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fix_a_gitops_tool_puts_back_ends_overridden_naming_it_and_is_never_fought() {
    use kubesent_loadtest::gitops::{Reconciler, ReconcilerOptions};
    let stack = stack(36).await;
    let mut outcomes = stack.nats_client.subscribe("kubesent.outcomes.>").await.expect("subscribed");
    // Git holds the Deployment as it is: the reconciler creates it, and applies it again on every drift.
    let mut manifest = serde_json::to_value(deployment(
        1,
        "registry.local/shop/web:1.4.2",
        json!({}),
        json!({"sim.kubesent.io/memory-need": "200Mi"}),
    ))
    .expect("manifest");
    manifest["apiVersion"] = json!("apps/v1");
    manifest["kind"] = json!("Deployment");
    let reconciler = Reconciler::start(stack.kube.clone(), manifest, ReconcilerOptions::default())
        .expect("reconciler starts");

    let outcome = next_outcome(&mut outcomes).await;
    assert_eq!(outcome.result, OutcomeResult::Overridden, "{}", outcome.detail);
    assert!(
        outcome.detail.contains("the memory limit of app is 128Mi again, not 256Mi"),
        "{}",
        outcome.detail
    );
    assert!(
        outcome.detail.contains("field manager \"gitops-reconciler\""),
        "names the manager: {}",
        outcome.detail
    );
    assert!(reconciler.applies() >= 2, "the reconciler put its manifest back");
    assert_eq!(kubesent_writes_to_web(&stack), 1, "KubeSent wrote once and did not fight");
    assert_eq!(fixes_undone(&stack, "overridden"), 1, "the detection time was observed");
    reconciler.stop().await;
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raise_a_webhook_clamps_on_the_way_in_ends_not_landed_and_is_taken_back() {
    use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
    use kubesent_testkit::webhook::{WebhookServer, answer, configuration, pod_rule};
    // A mutating webhook that caps every new pod's memory at 192Mi (the SREGym trap, gentler).
    let cap = MemoryQuantity::from_mib(192);
    let server = WebhookServer::start(move |review| {
        let limit = review
            .pointer("/request/object/spec/containers/0/resources/limits/memory")
            .and_then(|m| m.as_str())
            .and_then(|m| MemoryQuantity::parse(m).ok());
        let clamp = limit.filter(|l| *l > cap).map(|_| {
            json!([{"op": "replace", "path": "/spec/containers/0/resources/limits/memory", "value": "192Mi"},
                {"op": "replace", "path": "/spec/containers/0/resources/requests/memory", "value": "192Mi"}])
        });
        answer(review, true, json!({}), clamp)
    });
    let stack = stack(36).await;
    let webhooks: Api<MutatingWebhookConfiguration> = Api::all(stack.kube.clone());
    let config = serde_json::from_value(configuration(
        "MutatingWebhookConfiguration",
        "memory-cap.policy.example.com",
        &server.url(),
        pod_rule(&["CREATE"]),
        json!({"failurePolicy": "Fail"}),
    ))
    .expect("configuration");
    webhooks.create(&PostParams::default(), &config).await.expect("webhook configured");
    let mut outcomes = stack.nats_client.subscribe("kubesent.outcomes.>").await.expect("subscribed");
    let deployments = create_oom_deployment(&stack, 1).await;

    let outcome = next_outcome(&mut outcomes).await;
    assert_eq!(outcome.result, OutcomeResult::NotLanded, "{}", outcome.detail);
    assert!(
        outcome.detail.contains(
            "was admitted with memory limit 192Mi for app, not the 256Mi KubeSent wrote into the template"
        ),
        "{}",
        outcome.detail
    );
    assert!(
        outcome.detail.contains(
            "it could have been changed by mutating webhook memory-cap.policy.example.com (MutatingWebhookConfiguration memory-cap)"
        ),
        "names the webhook: {}",
        outcome.detail
    );
    assert!(outcome.detail.contains("KubeSent took its change back"), "{}", outcome.detail);
    let web = deployments.get("web").await.expect("deployment");
    let template = web.spec.as_ref().and_then(|s| s.template.spec.clone()).expect("template");
    let limits = template.containers[0].resources.as_ref().and_then(|r| r.limits.clone()).expect("limits");
    assert_eq!(limits["memory"].0, "128Mi", "the template is back where it was");
    let annotations = web.metadata.annotations.clone().unwrap_or_default();
    assert_eq!(
        annotations.get("kubesent.io/reverted.app"),
        Some(&outcome.incident.to_string()),
        "only suggested after"
    );
    assert_eq!(kubesent_writes_to_web(&stack), 2, "the raise and its taking back, nothing more");
    assert_eq!(fixes_undone(&stack, "not_landed"), 1, "the detection time was observed");
    assert!(!server.reviews().is_empty(), "kube-sim asked the webhook");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remediator_without_permission_records_a_failure_and_changes_nothing() {
    let mut stack = stack(36).await;
    // An installation whose remediator role lacks pod patch and resize.
    let roles: Api<ClusterRole> = Api::all(stack.kube.clone());
    let narrowed = json!({"rules": [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch", "create", "delete"]},
        {"apiGroups": ["apps"], "resources": ["replicasets", "deployments", "statefulsets"], "verbs": ["get"]},
        {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]}]});
    roles
        .patch("kubesent-remediator", &PatchParams::default(), &Patch::Merge(&narrowed))
        .await
        .expect("narrowed");
    let mut outcomes = stack.nats_client.subscribe("kubesent.outcomes.>").await.expect("subscribed");
    let mut acks = stack.nats_client.subscribe("$JS.ACK.KUBESENT_VERDICTS.>").await.expect("subscribed");
    let pods: Api<Pod> = Api::namespaced(stack.kube.clone(), "shop");
    let original = pods.create(&PostParams::default(), &oom_pod("web-1")).await.expect("pod created");

    let outcome = next_outcome(&mut outcomes).await;
    assert_eq!(outcome.result, OutcomeResult::Failed, "{}", outcome.detail);
    // The verdict is acknowledged once its outcome is recorded and counted; a stop before that would
    // drop the handler (the next leader takes the verdict over).
    loop {
        let ack =
            tokio::time::timeout(PATIENCE, acks.next()).await.expect("ack in time").expect("subscribed");
        if ack.payload.starts_with(b"+ACK") {
            break;
        }
    }
    assert!(outcome.detail.contains("deploy/base/rbac.yaml"), "{}", outcome.detail);
    let pod = pods.get("web-1").await.expect("pod exists");
    assert_eq!(pod.metadata.uid, original.metadata.uid);
    assert_eq!(memory_limit(&pod), "128Mi");
    stack.stop_services().await;
    assert_eq!(
        last_sequence(&stack.js, proto::DLQ_STREAM).await,
        0,
        "a verdict without permission is not retried into the DLQ"
    );
    assert_eq!(stack.metrics.remediator.outcomes(OutcomeResult::Failed), 1);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unparsable_job_is_dead_lettered_with_the_reason() {
    let mut stack = Stack::start(StackOptions::default()).await.expect("stack starts");
    let mut dead_letters = stack.nats_client.subscribe("kubesent.dlq.diagnoser").await.expect("subscribed");
    let ack = stack
        .js
        .publish("kubesent.jobs.shop.oom-killed", "{\"schema\":1,\"incident\":42}".into())
        .await
        .expect("published")
        .await
        .expect("stored");
    let dead = tokio::time::timeout(PATIENCE, dead_letters.next())
        .await
        .expect("dead letter in time")
        .expect("subscription open");
    let headers = dead.headers.expect("dead letter headers");
    let reason = headers.get(proto::headers::DLQ_REASON).map(|v| v.to_string()).expect("reason header");
    assert!(reason.starts_with("invalid job: malformed payload"), "{reason}");
    let original_sequence = headers.get(proto::headers::DLQ_ORIGINAL_SEQUENCE).map(|v| v.to_string());
    assert_eq!(original_sequence, Some(ack.sequence.to_string()));
    // The diagnoser acknowledges the job and counts it after the dead letter is stored.
    stack.stop_services().await;
    let jobs = stack
        .js
        .get_stream(proto::JOBS_STREAM)
        .await
        .expect("jobs")
        .info()
        .await
        .expect("info")
        .state
        .messages;
    assert_eq!(jobs, 0, "the poison job was removed from the work queue");
    assert_eq!(stack.metrics.diagnoser.jobs(kubesent_diagnoser::JobOutcome::DeadLettered), 1);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_no_node_has_room_for_gets_one_incident_naming_the_shortage_and_no_action() {
    let stack = stack(36).await;
    let mut verdicts = stack.nats_client.subscribe("kubesent.verdicts.>").await.expect("subscribed");
    let mut outcomes = stack.nats_client.subscribe("kubesent.outcomes.>").await.expect("subscribed");
    let deployments: Api<Deployment> = Api::namespaced(stack.kube.clone(), "shop");
    let mut huge = deployment(2, "registry.local/shop/web:1.4.2", json!({}), json!({}));
    let container =
        &mut huge.spec.as_mut().expect("spec").template.spec.as_mut().expect("pod spec").containers[0];
    container.resources = Some(
        serde_json::from_value(json!({"requests": {"memory": "512Gi"}, "limits": {"memory": "512Gi"}}))
            .expect("resources"),
    );
    deployments.create(&PostParams::default(), &huge).await.expect("deployment created");

    let verdict = next_verdict(&mut verdicts).await;
    assert_eq!(verdict.failure.kind, proto::FailureKind::Unschedulable);
    assert_eq!(verdict.action, Action::None);
    assert!(verdict.root_cause.contains("no node has 512Gi of memory free"), "{}", verdict.root_cause);
    assert!(verdict.root_cause.contains("3 Insufficient memory"), "{}", verdict.root_cause);
    let outcome = next_outcome(&mut outcomes).await;
    assert_eq!(outcome.result, OutcomeResult::DiagnosisOnly, "{}", outcome.detail);
    // Both replicas are one incident.
    assert_one_of_each_and_least_privilege(&stack).await;
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_evicted_for_its_disk_use_gets_one_incident_naming_the_limit_and_no_memory_change() {
    let stack = stack(36).await;
    let mut verdicts = stack.nats_client.subscribe("kubesent.verdicts.>").await.expect("subscribed");
    let mut outcomes = stack.nats_client.subscribe("kubesent.outcomes.>").await.expect("subscribed");
    let pods: Api<Pod> = Api::namespaced(stack.kube.clone(), "shop");
    let filler: Pod = serde_json::from_value(json!({
        "metadata": {"name": "filler", "namespace": "shop", "annotations": {"sim.kubesent.io/disk-use": "2Gi"}},
        "spec": {"containers": [{"name": "app", "image": "registry.local/shop/web:1.4.2",
            "resources": {"limits": {"memory": "128Mi", "ephemeral-storage": "1Gi"}}}]}
    }))
    .expect("pod json");
    pods.create(&PostParams::default(), &filler).await.expect("pod created");

    let verdict = next_verdict(&mut verdicts).await;
    assert_eq!(verdict.failure.kind, proto::FailureKind::Evicted);
    assert_eq!(verdict.action, Action::None, "an eviction never raises a memory limit");
    assert!(verdict.root_cause.contains("ephemeral storage over 1Gi"), "{}", verdict.root_cause);
    let outcome = next_outcome(&mut outcomes).await;
    assert_eq!(outcome.result, OutcomeResult::DiagnosisOnly, "{}", outcome.detail);
    let after = pods.get("filler").await.expect("pod");
    assert_eq!(memory_limit(&after), "128Mi", "nothing changed");
    assert_one_of_each_and_least_privilege(&stack).await;
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_whose_entrypoint_is_missing_gets_one_incident_naming_it_and_no_action() {
    let stack = stack(36).await;
    let mut verdicts = stack.nats_client.subscribe("kubesent.verdicts.>").await.expect("subscribed");
    let mut outcomes = stack.nats_client.subscribe("kubesent.outcomes.>").await.expect("subscribed");
    let deployments: Api<Deployment> = Api::namespaced(stack.kube.clone(), "shop");
    let message = "failed to create containerd task: failed to create shim task: OCI runtime create failed: runc create failed: unable to start container process: exec: \"/app/server\": stat /app/server: no such file or directory: unknown";
    let broken = deployment(
        2,
        "registry.local/shop/web:1.4.2",
        json!({}),
        json!({"sim.kubesent.io/start-error": message}),
    );
    deployments.create(&PostParams::default(), &broken).await.expect("deployment created");

    let verdict = next_verdict(&mut verdicts).await;
    assert_eq!(verdict.failure.kind, proto::FailureKind::StartError);
    assert_eq!(verdict.failure.exit_code, Some(128));
    assert_eq!(verdict.action, Action::None);
    assert!(verdict.root_cause.contains("entrypoint \"/app/server\""), "{}", verdict.root_cause);
    let outcome = next_outcome(&mut outcomes).await;
    assert_eq!(outcome.result, OutcomeResult::DiagnosisOnly, "{}", outcome.detail);
    assert_one_of_each_and_least_privilege(&stack).await;
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_updated_to_a_crash_looping_revision_is_rolled_back_healed_and_can_be_undone() {
    // RBAC off: `kubesent undo` below talks to kube-sim as its administrator.
    let stack = Stack::start(StackOptions {
        time_scale: 0.02,
        verify_window: Duration::from_secs(1),
        ..StackOptions::default()
    })
    .await
    .expect("stack starts");
    let mut verdicts = stack.nats_client.subscribe("kubesent.verdicts.>").await.expect("subscribed");
    let mut outcomes = stack.nats_client.subscribe("kubesent.outcomes.>").await.expect("subscribed");
    let deployments: Api<Deployment> = Api::namespaced(stack.kube.clone(), "shop");
    let pods: Api<Pod> = Api::namespaced(stack.kube.clone(), "shop");
    let mut web = deployment(3, "registry.local/shop/web:1.4.2", json!({}), json!({}));
    // Ready 5 s after start: revision 2's pods crash before they are ever available, so the rollout
    // keeps revision 1's (as it would in a cluster, whatever the timing).
    let probe = json!({"httpGet": {"path": "/ready", "port": 8080}, "initialDelaySeconds": 5});
    if let Some(spec) = web.spec.as_mut().and_then(|s| s.template.spec.as_mut()) {
        spec.containers[0].readiness_probe = Some(serde_json::from_value(probe).expect("probe"));
    }
    deployments.create(&PostParams::default(), &web).await.expect("deployment created");
    let available =
        |d: Option<&Deployment>| d.and_then(|d| d.status.as_ref()).and_then(|s| s.ready_replicas) == Some(3);
    tokio::time::timeout(PATIENCE, await_condition(deployments.clone(), "web", available))
        .await
        .expect("revision 1 ready in time")
        .expect("watch");
    let good_template = deployments.get("web").await.expect("web").spec.expect("spec").template;

    // Revision 2 reads a setting that is not there and exits at start.
    let update = json!({"spec": {"template": {
        "metadata": {"annotations": {"sim.kubesent.io/exit-code": "1", "sim.kubesent.io/run-seconds": "1",
            "sim.kubesent.io/logs": "panic: required setting PAYMENTS_URL is not set"}},
        "spec": {"containers": [{"name": "app", "env": [{"name": "PAYMENTS_MODE", "value": "strict"}]}]}}}});
    deployments.patch("web", &PatchParams::default(), &Patch::Strategic(&update)).await.expect("updated");

    let verdict = next_verdict(&mut verdicts).await;
    assert_eq!(verdict.failure.kind, proto::FailureKind::CrashLoop);
    let Action::RollbackRevision { container, from, to } = verdict.action.clone() else {
        panic!("a revision rollback: {:?} ({})", verdict.action, verdict.root_cause);
    };
    assert_eq!((container.as_str(), from.number, to.number), ("app", 2, 1), "{}", verdict.root_cause);
    assert!(verdict.root_cause.contains("PAYMENTS_URL"), "{}", verdict.root_cause);
    let outcome = next_outcome(&mut outcomes).await;
    assert_eq!(outcome.result, OutcomeResult::Healed, "{}", outcome.detail);
    assert_eq!(outcome.strategy, Some(Strategy::OwnerPatch));

    let rolled_back = deployments.get("web").await.expect("deployment");
    let template = rolled_back.spec.clone().expect("spec").template;
    assert_eq!(template, good_template, "the template is revision 1's again");
    let annotations = rolled_back.metadata.annotations.clone().expect("annotations");
    assert_eq!(annotations["kubesent.io/original-revision"], from.name, "reversible");
    let live = live_pods(&pods, "app=web").await;
    assert_eq!(live.len(), 3);
    for pod in &live {
        assert!(running_ready(pod), "{:?}", pod.status);
        let hash = pod.metadata.labels.as_ref().and_then(|l| l.get("pod-template-hash")).expect("hash");
        assert!(to.name.ends_with(hash.as_str()), "pod {:?} runs revision 1's ReplicaSet", pod.metadata.name);
    }
    assert_one_of_each_and_least_privilege(&stack).await;

    let output = kubesent_undo(&stack, &outcome.incident).await;
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let forward = deployments.get("web").await.expect("deployment");
    let annotations = forward.spec.clone().expect("spec").template.metadata.and_then(|m| m.annotations);
    assert_eq!(
        annotations.unwrap_or_default().get("sim.kubesent.io/exit-code").map(String::as_str),
        Some("1"),
        "undo goes forward to revision 2 again"
    );
    let annotations = forward.metadata.annotations.clone().unwrap_or_default();
    assert_eq!(annotations.get("kubesent.io/reverted.app"), Some(&outcome.incident.to_string()));
    assert!(!annotations.contains_key("kubesent.io/original-revision"));
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_updated_to_a_revision_that_never_becomes_ready_is_rolled_back() {
    let stack = stack(36).await;
    let mut verdicts = stack.nats_client.subscribe("kubesent.verdicts.>").await.expect("subscribed");
    let mut outcomes = stack.nats_client.subscribe("kubesent.outcomes.>").await.expect("subscribed");
    let deployments: Api<Deployment> = Api::namespaced(stack.kube.clone(), "shop");
    let mut web = deployment(2, "registry.local/shop/web:1.4.2", json!({}), json!({}));
    let probe = json!({"httpGet": {"path": "/ready", "port": 8080}, "initialDelaySeconds": 1});
    if let Some(spec) = web.spec.as_mut().and_then(|s| s.template.spec.as_mut()) {
        spec.containers[0].readiness_probe = Some(serde_json::from_value(probe).expect("probe"));
    }
    deployments.create(&PostParams::default(), &web).await.expect("deployment created");
    let available =
        |d: Option<&Deployment>| d.and_then(|d| d.status.as_ref()).and_then(|s| s.ready_replicas) == Some(2);
    tokio::time::timeout(PATIENCE, await_condition(deployments.clone(), "web", available))
        .await
        .expect("revision 1 ready in time")
        .expect("watch");

    // Revision 2's readiness endpoint answers 503 for ever.
    let update = json!({"spec": {"template": {"metadata": {"annotations": {
        "sim.kubesent.io/readiness-failure": "HTTP probe failed with statuscode: 503"}}}}});
    deployments.patch("web", &PatchParams::default(), &Patch::Strategic(&update)).await.expect("updated");

    let verdict = next_verdict(&mut verdicts).await;
    assert_eq!(verdict.failure.kind, proto::FailureKind::NotReady);
    assert!(verdict.root_cause.contains("statuscode: 503"), "{}", verdict.root_cause);
    let Action::RollbackRevision { from, to, .. } = verdict.action.clone() else {
        panic!("a revision rollback: {:?} ({})", verdict.action, verdict.root_cause);
    };
    assert_eq!((from.number, to.number), (2, 1));
    let outcome = next_outcome(&mut outcomes).await;
    assert_eq!(outcome.result, OutcomeResult::Healed, "{}", outcome.detail);
    let web = deployments.get("web").await.expect("deployment");
    let annotations =
        web.spec.expect("spec").template.metadata.and_then(|m| m.annotations).unwrap_or_default();
    assert!(!annotations.contains_key("sim.kubesent.io/readiness-failure"), "revision 1's template again");
    assert_one_of_each_and_least_privilege(&stack).await;
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_out_of_retries_or_past_their_deadline_get_a_diagnosis_each_and_no_change() {
    let stack = stack(36).await;
    let mut verdicts = stack.nats_client.subscribe("kubesent.verdicts.>").await.expect("subscribed");
    let jobs: Api<k8s_openapi::api::batch::v1::Job> = Api::namespaced(stack.kube.clone(), "shop");
    let job = |name: &str, spec: serde_json::Value, annotations: serde_json::Value| {
        let mut value = json!({"metadata": {"name": name, "namespace": "shop"},
            "spec": {"template": {"metadata": {"annotations": annotations},
                "spec": {"restartPolicy": "Never",
                    "containers": [{"name": "main", "image": "registry.local/shop/report:3.1"}]}}}});
        if let (Some(target), Some(extra)) = (value["spec"].as_object_mut(), spec.as_object()) {
            target.extend(extra.clone());
        }
        serde_json::from_value::<k8s_openapi::api::batch::v1::Job>(value).expect("job json")
    };
    let retries = job(
        "report",
        json!({"backoffLimit": 1}),
        json!({"sim.kubesent.io/exit-code": "1", "sim.kubesent.io/run-seconds": "1",
            "sim.kubesent.io/logs": "psql: error: connection to server at \"db\" (10.0.0.7), port 5432 failed: Connection refused"}),
    );
    jobs.create(&PostParams::default(), &retries).await.expect("job created");
    let slow =
        job("nightly", json!({"activeDeadlineSeconds": 30}), json!({"sim.kubesent.io/run-seconds": "3600"}));
    jobs.create(&PostParams::default(), &slow).await.expect("job created");

    let mut job_verdicts = std::collections::BTreeMap::new();
    while job_verdicts.len() < 2 {
        let verdict = next_verdict(&mut verdicts).await;
        if verdict.failure.kind == proto::FailureKind::JobFailed {
            assert_eq!(verdict.action, Action::None);
            job_verdicts.insert(verdict.key.workload.name.clone(), verdict);
        }
    }
    let report = &job_verdicts["report"];
    assert_eq!(report.failure.reason, "BackoffLimitExceeded");
    assert!(
        report.root_cause.contains("gave up after its pods failed 2 times (backoffLimit 1)"),
        "{}",
        report.root_cause
    );
    assert!(report.root_cause.contains("unreachable"), "the pods' own failure: {}", report.root_cause);
    let nightly = &job_verdicts["nightly"];
    assert_eq!(nightly.failure.reason, "DeadlineExceeded");
    assert!(nightly.root_cause.contains("activeDeadlineSeconds (30 s)"), "{}", nightly.root_cause);
    let forbidden: Vec<_> =
        stack.kube_sim.requests().into_iter().filter(|r| r.status == 401 || r.status == 403).collect();
    assert!(forbidden.is_empty(), "least privilege is enough: {forbidden:?}");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_rollout_with_nothing_ready_to_go_back_to_is_paused_with_the_reason_and_can_be_resumed() {
    // RBAC off: `kubesent undo` below talks to kube-sim as its administrator.
    let stack = Stack::start(StackOptions {
        time_scale: 0.02,
        verify_window: Duration::from_secs(1),
        ..StackOptions::default()
    })
    .await
    .expect("stack starts");
    let mut verdicts = stack.nats_client.subscribe("kubesent.verdicts.>").await.expect("subscribed");
    let mut outcomes = stack.nats_client.subscribe("kubesent.outcomes.>").await.expect("subscribed");
    let deployments: Api<Deployment> = Api::namespaced(stack.kube.clone(), "shop");
    // Revision 1 never became ready; revision 2, meant to fix it, crashes at start.
    let mut web = deployment(
        2,
        "registry.local/shop/web:1.4.2",
        json!({}),
        json!({"sim.kubesent.io/readiness-failure": "HTTP probe failed with statuscode: 503"}),
    );
    let probe = json!({"httpGet": {"path": "/ready", "port": 8080}, "initialDelaySeconds": 1});
    if let Some(spec) = web.spec.as_mut().and_then(|s| s.template.spec.as_mut()) {
        spec.containers[0].readiness_probe = Some(serde_json::from_value(probe).expect("probe"));
    }
    deployments.create(&PostParams::default(), &web).await.expect("deployment created");
    let first = next_verdict(&mut verdicts).await;
    assert_eq!(first.failure.kind, proto::FailureKind::NotReady);
    assert_eq!(first.action, Action::None, "no earlier revision: {}", first.root_cause);
    let update = json!({"spec": {"template": {"metadata": {"annotations": {
        "sim.kubesent.io/readiness-failure": null, "sim.kubesent.io/exit-code": "3", "sim.kubesent.io/run-seconds": "1"}}}}});
    deployments.patch("web", &PatchParams::default(), &Patch::Strategic(&update)).await.expect("updated");

    let paused_verdict = loop {
        let verdict = next_verdict(&mut verdicts).await;
        if matches!(verdict.action, Action::PauseRollout { .. }) {
            break verdict;
        }
    };
    assert!(
        paused_verdict.root_cause.contains("no ready pods to go back to"),
        "{}",
        paused_verdict.root_cause
    );
    let outcome = loop {
        let outcome = next_outcome(&mut outcomes).await;
        if outcome.incident == paused_verdict.incident {
            break outcome;
        }
    };
    assert_eq!(outcome.result, OutcomeResult::Applied, "{}", outcome.detail);
    assert!(outcome.detail.contains("kubectl rollout resume deployment/web"), "{}", outcome.detail);
    let web = deployments.get("web").await.expect("deployment");
    assert_eq!(web.spec.as_ref().and_then(|s| s.paused), Some(true), "paused");
    let annotations = web.metadata.annotations.clone().unwrap_or_default();
    assert!(
        annotations.get("kubesent.io/paused-reason").is_some_and(|r| r.contains("no ready pods")),
        "{annotations:?}"
    );

    let output = kubesent_undo(&stack, &outcome.incident).await;
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let resumed = deployments.get("web").await.expect("deployment");
    assert_eq!(resumed.spec.as_ref().and_then(|s| s.paused), Some(false), "resumed by undo");
    assert!(!resumed.metadata.annotations.unwrap_or_default().contains_key("kubesent.io/paused-reason"));
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stateful_set_updated_to_a_crash_looping_revision_is_rolled_back_from_its_controller_revisions() {
    let stack = stack(36).await;
    let mut verdicts = stack.nats_client.subscribe("kubesent.verdicts.>").await.expect("subscribed");
    let mut outcomes = stack.nats_client.subscribe("kubesent.outcomes.>").await.expect("subscribed");
    let sets: Api<StatefulSet> = Api::namespaced(stack.kube.clone(), "shop");
    let pods: Api<Pod> = Api::namespaced(stack.kube.clone(), "shop");
    let good_template = stateful_set_updated_to_a_crash_loop(&stack, None).await;

    let verdict = next_verdict(&mut verdicts).await;
    let Action::RollbackRevision { from, to, .. } = verdict.action.clone() else {
        panic!("a revision rollback: {:?} ({})", verdict.action, verdict.root_cause);
    };
    assert_eq!((from.number, to.number), (2, 1), "{}", verdict.root_cause);
    let outcome = next_outcome(&mut outcomes).await;
    assert_eq!(outcome.result, OutcomeResult::Healed, "{}", outcome.detail);
    assert_eq!(sets.get("db").await.expect("db").spec.expect("spec").template, good_template);
    let live = live_pods(&pods, "app=db").await;
    assert_eq!(live.len(), 3);
    for pod in &live {
        assert!(running_ready(pod), "{:?}", pod.status);
        let revision = pod.metadata.labels.as_ref().and_then(|l| l.get("controller-revision-hash"));
        assert_eq!(revision, Some(&to.name), "pod {:?} runs revision 1", pod.metadata.name);
    }
    assert_one_of_each_and_least_privilege(&stack).await;
    stack.stop().await;
}

/// StatefulSet `db` of 3 pods, ready at revision 1 (with a PodDisruptionBudget requiring
/// `min_available` of its pods, when given), then updated to a revision whose container exits at once.
/// Returns revision 1's template.
async fn stateful_set_updated_to_a_crash_loop(
    stack: &Stack,
    min_available: Option<i32>,
) -> k8s_openapi::api::core::v1::PodTemplateSpec {
    let sets: Api<StatefulSet> = Api::namespaced(stack.kube.clone(), "shop");
    let db: StatefulSet = serde_json::from_value(json!({
        "metadata": {"name": "db", "namespace": "shop"},
        "spec": {"replicas": 3, "serviceName": "db", "selector": {"matchLabels": {"app": "db"}},
            "template": {"metadata": {"labels": {"app": "db"}},
                "spec": {"containers": [{"name": "app", "image": "registry.local/shop/db:16.4",
                    "readinessProbe": {"tcpSocket": {"port": 5432}, "initialDelaySeconds": 5}}]}}}
    }))
    .expect("statefulset json");
    sets.create(&PostParams::default(), &db).await.expect("statefulset created");
    let ready =
        |s: Option<&StatefulSet>| s.and_then(|s| s.status.as_ref()).and_then(|s| s.ready_replicas) == Some(3);
    tokio::time::timeout(PATIENCE, await_condition(sets.clone(), "db", ready))
        .await
        .expect("revision 1 ready in time")
        .expect("watch");
    if let Some(min_available) = min_available {
        let budgets: Api<k8s_openapi::api::policy::v1::PodDisruptionBudget> =
            Api::namespaced(stack.kube.clone(), "shop");
        let budget = serde_json::from_value(json!({"metadata": {"name": "db"},
            "spec": {"minAvailable": min_available, "selector": {"matchLabels": {"app": "db"}}}}))
        .expect("budget json");
        budgets.create(&PostParams::default(), &budget).await.expect("budget created");
    }
    let good_template = sets.get("db").await.expect("db").spec.expect("spec").template;
    let update = json!({"spec": {"template": {"metadata": {"annotations": {
        "sim.kubesent.io/exit-code": "1", "sim.kubesent.io/run-seconds": "1",
        "sim.kubesent.io/logs": "FATAL: could not load server certificate file \"server.crt\": No such file or directory"}}}}});
    sets.patch("db", &PatchParams::default(), &Patch::Strategic(&update)).await.expect("updated");
    good_template
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_pod_a_disruption_budget_protects_is_not_forced_out_and_the_fix_escalates() {
    let stack = stack(36).await;
    let mut outcomes = stack.nats_client.subscribe("kubesent.outcomes.>").await.expect("subscribed");
    // Every pod must stay: the budget allows no disruption, not even of the pod stuck unready.
    stateful_set_updated_to_a_crash_loop(&stack, Some(3)).await;

    let outcome = next_outcome(&mut outcomes).await;
    assert_eq!(outcome.result, OutcomeResult::Ineffective, "{}", outcome.detail);
    assert!(
        outcome.detail.contains("may not be evicted: PodDisruptionBudget db needs 3 healthy pods and has 2"),
        "{}",
        outcome.detail
    );
    assert!(outcome.detail.contains("KubeSent does not force an eviction"), "{}", outcome.detail);
    let deleted =
        stack.kube_sim.requests().into_iter().any(|r| r.method == "DELETE" && r.path.contains("/pods/"));
    assert!(!deleted, "no pod was deleted around the budget");
    assert_one_of_each_and_least_privilege(&stack).await;
    stack.stop().await;
}

/// Runs `kubesent <args>` as the reader against `stack`; (exit code, stdout, stderr).
async fn as_reader(stack: &Stack, args: &[&str]) -> (i32, String, String) {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_kubesent"))
        .args(args)
        .args(["--nats-url", stack.nats.url()])
        .envs(stack.users.env(kubesent_common::nats::Role::Reader))
        .output()
        .await
        .expect("kubesent runs");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubesent_tail_follows_an_incident_live_and_kubesent_incidents_lists_and_shows_it() {
    use tokio::io::AsyncBufReadExt as _;
    let stack = stack(36).await;
    let mut outcomes = stack.nats_client.subscribe("kubesent.outcomes.>").await.expect("subscribed");
    let mut tail = tokio::process::Command::new(env!("CARGO_BIN_EXE_kubesent"))
        .args(["tail", "--nats-url", stack.nats.url()])
        .envs(stack.users.env(kubesent_common::nats::Role::Reader))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("kubesent tail starts");
    let mut errors = tokio::io::BufReader::new(tail.stderr.take().expect("stderr")).lines();
    let following = tokio::time::timeout(PATIENCE, errors.next_line()).await.expect("in time").expect("read");
    assert!(following.is_some_and(|l| l.contains("following kubesent.>")), "tail subscribed first");
    let mut lines = tokio::io::BufReader::new(tail.stdout.take().expect("stdout")).lines();

    let pods: Api<Pod> = Api::namespaced(stack.kube.clone(), "shop");
    pods.create(&PostParams::default(), &oom_pod("web-1")).await.expect("created");
    let healed = next_outcome(&mut outcomes).await;
    assert_eq!(healed.result, OutcomeResult::Healed, "{}", healed.detail);
    let incident = healed.incident.to_string();

    // Live: the job, the verdict and the outcome, one readable line each.
    let mut seen = Vec::new();
    while !seen.iter().any(|l: &String| l.contains("outcome ")) {
        let line =
            tokio::time::timeout(PATIENCE, lines.next_line()).await.expect("a line in time").expect("read");
        seen.push(line.expect("tail still running"));
    }
    for (kind, says) in
        [("job ", "oom-killed OOMKilled"), ("verdict ", "increase-memory 95%"), ("outcome ", "healed")]
    {
        assert!(
            seen.iter().any(|l| l.contains(kind) && l.contains(&incident) && l.contains(says)),
            "a {kind}line saying {says:?}: {seen:#?}"
        );
    }
    tail.kill().await.expect("stopped");

    // The list, in each format, and its filters.
    let (code, table, stderr) = as_reader(&stack, &["incidents"]).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(table.starts_with("INCIDENT"), "{table}");
    let row = table.lines().find(|l| l.contains(&incident)).expect("the incident is listed");
    for column in ["shop", "Pod/web-1", "oom-killed", "memory 128Mi→256Mi", "healed", "OOM-killed"] {
        assert!(row.contains(column), "{column} in {row}");
    }
    let (code, json, stderr) =
        as_reader(&stack, &["incidents", "-o", "json", "--namespace", "shop", "--since", "1h"]).await;
    assert_eq!(code, 0, "{stderr}");
    let listed: serde_json::Value = serde_json::from_str(&json).expect("JSON");
    let item = listed
        .as_array()
        .and_then(|a| a.iter().find(|i| i["incident"] == incident.as_str()))
        .expect("listed");
    assert_eq!(item["result"], "healed");
    assert_eq!(item["action"]["type"], "increase_memory");
    assert_eq!(item["failure"]["kind"], "oom-killed");
    let (_, denied, _) = as_reader(&stack, &["incidents", "--result", "denied"]).await;
    assert!(!denied.contains(&incident), "filtered out by result: {denied}");
    let (_, elsewhere, _) = as_reader(&stack, &["incidents", "-n", "payments"]).await;
    assert!(!elsewhere.contains(&incident), "filtered out by namespace: {elsewhere}");

    // One incident's timeline, from failure to outcome.
    let (code, shown, stderr) = as_reader(&stack, &["incidents", "show", &incident]).await;
    assert_eq!(code, 0, "{stderr}");
    let order: Vec<usize> = ["failed", "detected", "diagnosed", "remediation", "outcome"]
        .iter()
        .map(|what| shown.find(&format!("  {what} ")).unwrap_or_else(|| panic!("{what} in\n{shown}")))
        .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "in time order:\n{shown}");
    assert!(shown.contains("rule oom-increase-memory, confidence 95"), "{shown}");
    assert!(shown.contains("[evidence: logs: "), "the verdict's evidence, summarised: {shown}");
    assert!(shown.contains("healed by remediator-0"), "{shown}");
    let (code, _, stderr) = as_reader(&stack, &["incidents", "show", "inc-000000000000000000000000"]).await;
    assert_ne!(code, 0);
    assert!(stderr.contains("no incident"), "{stderr}");
    stack.stop().await;
}

/// Creates Deployment `web` of 3 healthy pods (ready as soon as they run) and waits until they serve.
async fn create_serving_web(stack: &Stack) -> Api<Deployment> {
    let deployments: Api<Deployment> = Api::namespaced(stack.kube.clone(), "shop");
    let web = deployment(3, "registry.local/shop/web:1.4.2", json!({}), json!({}));
    deployments.create(&PostParams::default(), &web).await.expect("deployment created");
    let serving =
        |d: Option<&Deployment>| d.and_then(|d| d.status.as_ref()).and_then(|s| s.ready_replicas) == Some(3);
    tokio::time::timeout(PATIENCE, await_condition(deployments.clone(), "web", serving))
        .await
        .expect("revision 1 ready in time")
        .expect("watch");
    deployments
}

/// Updates `web` to a revision whose pods run (ready) for 100 simulated seconds, then exit with a Go
/// panic, and waits until the rollout has finished: every pod on revision 2, revision 1 scaled to zero.
async fn roll_out_a_revision_that_crashes_after_it_is_ready(deployments: &Api<Deployment>) {
    let update = json!({"spec": {"template": {
        "metadata": {"annotations": {"sim.kubesent.io/exit-code": "2", "sim.kubesent.io/run-seconds": "100",
            "sim.kubesent.io/logs": "panic: config key db.url missing\n\ngoroutine 1 [running]:\nmain.main()\n\t/src/main.go:18 +0x1d4"}},
        "spec": {"containers": [{"name": "app", "env": [{"name": "DB_MODE", "value": "pooled"}]}]}}}});
    deployments.patch("web", &PatchParams::default(), &Patch::Strategic(&update)).await.expect("updated");
    let finished = |d: Option<&Deployment>| {
        d.and_then(|d| Some((d.metadata.generation?, d.status.as_ref()?))).is_some_and(|(generation, s)| {
            s.observed_generation == Some(generation)
                && s.updated_replicas == Some(3)
                && s.replicas == Some(3)
                && s.available_replicas == Some(3)
        })
    };
    tokio::time::timeout(PATIENCE, await_condition(deployments.clone(), "web", finished))
        .await
        .expect("the rollout finished before its pods crash")
        .expect("watch");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revision_that_crashes_after_its_rollout_finished_is_rolled_back_to_the_known_good_one_and_can_be_undone()
 {
    // RBAC off: `kubesent undo` below talks to kube-sim as its administrator. Known-good after 2 s.
    let stack = Stack::start(StackOptions {
        time_scale: 0.02,
        verify_window: Duration::from_secs(1),
        ..StackOptions::default()
    })
    .await
    .expect("stack starts");
    let mut verdicts = stack.nats_client.subscribe("kubesent.verdicts.>").await.expect("subscribed");
    let mut outcomes = stack.nats_client.subscribe("kubesent.outcomes.>").await.expect("subscribed");
    let deployments = create_serving_web(&stack).await;
    let good_template = deployments.get("web").await.expect("web").spec.expect("spec").template;
    let detector = stack.metrics.detector.clone();
    tokio::time::timeout(
        PATIENCE,
        detector.wait_until(|m| m.revisions_recorded(kubesent_detector::RecordChange::KnownGood) >= 1),
    )
    .await
    .expect("revision 1 recorded known-good");

    roll_out_a_revision_that_crashes_after_it_is_ready(&deployments).await;
    let verdict = next_verdict(&mut verdicts).await;
    assert_eq!(verdict.failure.kind, proto::FailureKind::CrashLoop);
    let Action::RollbackRevision { from, to, .. } = verdict.action.clone() else {
        panic!("a revision rollback: {:?} ({})", verdict.action, verdict.root_cause);
    };
    assert_eq!((from.number, to.number), (2, 1), "{}", verdict.root_cause);
    for said in ["config key db.url missing", "scaled down when the rollout finished", "served 3/3 ready for"]
    {
        assert!(verdict.root_cause.contains(said), "{said:?} in {}", verdict.root_cause);
    }
    let outcome = next_outcome(&mut outcomes).await;
    assert_eq!(outcome.result, OutcomeResult::Healed, "{}", outcome.detail);
    let rolled_back = deployments.get("web").await.expect("deployment");
    assert_eq!(
        rolled_back.spec.clone().expect("spec").template,
        good_template,
        "revision 1's template again"
    );
    let pods: Api<Pod> = Api::namespaced(stack.kube.clone(), "shop");
    let live = live_pods(&pods, "app=web").await;
    assert_eq!(live.len(), 3);
    assert!(live.iter().all(running_ready), "{live:?}");

    let output = kubesent_undo(&stack, &outcome.incident).await;
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let forward = deployments.get("web").await.expect("deployment");
    let annotations = forward.spec.expect("spec").template.metadata.and_then(|m| m.annotations);
    let annotations = annotations.unwrap_or_default();
    assert_eq!(
        annotations.get("sim.kubesent.io/exit-code").map(String::as_str),
        Some("2"),
        "undo goes forward to revision 2 again"
    );
    assert_eq!(annotations.get("kubesent.io/undone"), Some(&outcome.incident.to_string()));
    // Revision 2 crashes again: a new incident (not a duplicate the jobs stream's dedup window drops),
    // which KubeSent only suggests for, since a human took its change back.
    let again = next_verdict(&mut verdicts).await;
    assert_ne!(again.incident, outcome.incident, "a new incident");
    let reverted = next_outcome(&mut outcomes).await;
    assert_eq!(
        (reverted.incident.clone(), reverted.result),
        (outcome.incident.clone(), OutcomeResult::Reverted)
    );
    let suggested = next_outcome(&mut outcomes).await;
    assert_eq!(suggested.incident, again.incident);
    assert_eq!(suggested.result, OutcomeResult::Suggested, "{}", suggested.detail);
    assert!(suggested.detail.contains("taken back"), "{}", suggested.detail);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revision_never_seen_serving_healthy_for_long_enough_gets_a_suggestion_only() {
    let stack = stack_recording_nothing_known_good().await;
    let mut verdicts = stack.nats_client.subscribe("kubesent.verdicts.>").await.expect("subscribed");
    let mut outcomes = stack.nats_client.subscribe("kubesent.outcomes.>").await.expect("subscribed");
    let deployments = create_serving_web(&stack).await;
    roll_out_a_revision_that_crashes_after_it_is_ready(&deployments).await;

    let verdict = next_verdict(&mut verdicts).await;
    assert_eq!(verdict.action, Action::None, "{}", verdict.root_cause);
    for said in
        ["config key db.url missing", "scaled down by the rollout", "kubectl rollout undo deployment/web"]
    {
        assert!(verdict.root_cause.contains(said), "{said:?} in {}", verdict.root_cause);
    }
    let outcome = next_outcome(&mut outcomes).await;
    assert_eq!(outcome.result, OutcomeResult::DiagnosisOnly, "{}", outcome.detail);
    assert_eq!(stack.metrics.detector.revisions_recorded(kubesent_detector::RecordChange::KnownGood), 0);
    // The detector's watches of ReplicaSets and StatefulSets included.
    assert_one_of_each_and_least_privilege(&stack).await;
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_record_can_at_worst_select_the_revision_the_owners_own_history_holds() {
    // Known-good after an hour: nothing the detector sees is recorded; the record below is forged, as a
    // stolen detector credential could write it.
    let stack = stack_recording_nothing_known_good().await;
    let mut verdicts = stack.nats_client.subscribe("kubesent.verdicts.>").await.expect("subscribed");
    let mut outcomes = stack.nats_client.subscribe("kubesent.outcomes.>").await.expect("subscribed");
    let deployments = create_serving_web(&stack).await;
    let first = deployments.get("web").await.expect("web");
    let good_template = first.spec.clone().expect("spec").template;
    let uid = first.metadata.uid.clone().expect("uid");
    let sets: Api<k8s_openapi::api::apps::v1::ReplicaSet> = Api::namespaced(stack.kube.clone(), "shop");
    let revision_1 = sets.list(&ListParams::default().labels("app=web")).await.expect("sets").items;
    let revision_1 = revision_1.first().expect("revision 1's ReplicaSet").metadata.clone();
    let (name, hash) = (
        revision_1.name.clone().expect("name"),
        revision_1.labels.as_ref().and_then(|l| l.get("pod-template-hash")).cloned().expect("hash"),
    );
    // Forged: it claims revision 1 served for two days, and that a revision the owner never had did too.
    let web = proto::WorkloadRef { kind: proto::WorkloadKind::Deployment, name: "web".into() };
    let store = kubesent_common::served::ServedStore::new(stack.js.clone());
    let forged = |name: &str, hash: &str| proto::served::ServedRevision {
        name: name.into(),
        hash: hash.into(),
        replicas: 3,
        healthy_since: jiff::Timestamp::now() - jiff::SignedDuration::from_hours(48),
        known_good_at: jiff::Timestamp::now() - jiff::SignedDuration::from_hours(47),
        until: None,
    };
    let written = store
        .update("shop", &web, &uid, |record| {
            record.record(&uid, forged("web-evil", "evil"));
            record.record(&uid, forged(&name, &hash))
        })
        .await
        .expect("forged");
    assert!(written);

    roll_out_a_revision_that_crashes_after_it_is_ready(&deployments).await;
    let verdict = next_verdict(&mut verdicts).await;
    let Action::RollbackRevision { from, to, .. } = verdict.action.clone() else {
        panic!("a revision rollback: {:?} ({})", verdict.action, verdict.root_cause);
    };
    assert_eq!((from.number, to.number, to.name.as_str()), (2, 1, name.as_str()), "only the revision before");
    let outcome = next_outcome(&mut outcomes).await;
    assert_eq!(outcome.result, OutcomeResult::Healed, "{}", outcome.detail);
    let template = deployments.get("web").await.expect("web").spec.expect("spec").template;
    assert_eq!(template, good_template, "exactly revision 1's template from the owner's own history");
    assert_one_of_each_and_least_privilege(&stack).await;
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fix_only_suggested_while_paused_is_named_on_resume_and_carried_out_when_approved() {
    let stack = stack(36).await;
    let mut outcomes = stack.nats_client.subscribe("kubesent.outcomes.>").await.expect("subscribed");
    let paused = kubesent_as_operator(&stack, &["pause", "--reason", "maintenance"]).await;
    assert!(paused.status.success(), "{}", String::from_utf8_lossy(&paused.stderr));
    let deployments = create_oom_deployment(&stack, 2).await;
    let suggested = next_outcome(&mut outcomes).await;
    assert_eq!(suggested.result, OutcomeResult::Suggested, "{}", suggested.detail);
    assert!(suggested.detail.contains("paused (maintenance"), "{}", suggested.detail);
    assert_eq!(suggested.action, increase_128_to_256());

    let resumed = kubesent_as_operator(&stack, &["resume"]).await;
    let said = String::from_utf8_lossy(&resumed.stdout);
    assert!(resumed.status.success(), "{}", String::from_utf8_lossy(&resumed.stderr));
    assert!(
        said.contains("1 incidents were only suggested") && said.contains(suggested.incident.as_str()),
        "{said}"
    );
    assert!(said.contains("memory limit of app 128Mi -> 256Mi"), "{said}");

    let approved = kubesent_as_operator(&stack, &["approve", suggested.incident.as_str()]).await;
    assert!(approved.status.success(), "{}", String::from_utf8_lossy(&approved.stderr));
    let healed = loop {
        let outcome = next_outcome(&mut outcomes).await;
        if outcome.incident == suggested.incident && outcome.result != OutcomeResult::Suggested {
            break outcome;
        }
    };
    assert_eq!(healed.result, OutcomeResult::Healed, "{}", healed.detail);
    assert!(healed.decided_by.as_deref().is_some_and(|by| by.contains("alice")), "{:?}", healed.decided_by);
    let template = deployments.get("web").await.expect("web").spec.expect("spec").template;
    let limits = template.spec.expect("spec").containers[0].resources.clone().expect("resources").limits;
    assert_eq!(limits.expect("limits")["memory"].0, "256Mi");
    let again = kubesent_as_operator(&stack, &["resume"]).await;
    assert!(
        !String::from_utf8_lossy(&again.stdout).contains("only suggested"),
        "the approved one is no longer kept"
    );
    stack.stop().await;
}

/// Runs `kubesent <args> --nats-url …` as the reader against `stack`.
async fn kubesent_as_reader(stack: &Stack, args: &[&str]) -> std::process::Output {
    let reader = stack.users.env(kubesent_common::nats::Role::Reader);
    let nats = stack.nats.url().to_owned();
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_kubesent"))
            .args(&args)
            .args(["--nats-url", &nats])
            .envs(reader)
            .output()
            .expect("kubesent runs")
    })
    .await
    .expect("ran")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promotion_through_the_cli_changes_what_the_next_incident_does_and_the_report_shows_the_record() {
    let dir = tempfile::tempdir().expect("temp dir");
    let policy = dir.path().join("autonomy.yaml");
    std::fs::write(&policy, "classes:\n  memory-raise: shadow\n").expect("policy");
    let stack = Stack::start(StackOptions {
        time_scale: 0.02,
        verify_window: Duration::from_secs(1),
        rbac: true,
        autonomy_policy: Some(policy),
        ..StackOptions::default()
    })
    .await
    .expect("stack starts");
    let mut outcomes = stack.nats_client.subscribe("kubesent.outcomes.>").await.expect("subscribed");
    create_oom_deployment(&stack, 1).await;
    let shadowed = next_outcome(&mut outcomes).await;
    assert_eq!(shadowed.result, OutcomeResult::Suggested, "{}", shadowed.detail);
    assert!(
        shadowed.detail.starts_with("shadow (the policy's mode for memory-raise)"),
        "{}",
        shadowed.detail
    );

    let refused = kubesent_as_operator(&stack, &["policy", "promote", "memory-raise"]).await;
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "the record does not earn it");
    assert!(
        stderr.contains("0 of the 20 judged decisions it needs") && stderr.contains("--force"),
        "{stderr}"
    );
    let promoted = kubesent_as_operator(
        &stack,
        &["policy", "promote", "memory-raise", "--force", "--reason", "the raises were right"],
    )
    .await;
    let stdout = String::from_utf8_lossy(&promoted.stdout);
    assert!(promoted.status.success(), "{}", String::from_utf8_lossy(&promoted.stderr));
    assert!(stdout.starts_with("promoted memory-raise: shadow → approve"), "{stdout}");
    assert!(stdout.contains("alice (NATS user kubesent-operator)"), "{stdout}");

    // The next memory raise waits for a person instead of only being announced.
    let deployments: Api<Deployment> = Api::namespaced(stack.kube.clone(), "shop");
    let mut api = deployment(
        1,
        "registry.local/shop/api:2.0",
        json!({}),
        json!({"sim.kubesent.io/memory-need": "200Mi"}),
    );
    api.metadata.name = Some("api".into());
    let selector = json!({"app": "api"});
    let spec = api.spec.as_mut().expect("spec");
    spec.selector.match_labels = serde_json::from_value(selector.clone()).ok();
    spec.template.metadata.as_mut().expect("metadata").labels = serde_json::from_value(selector).ok();
    deployments.create(&PostParams::default(), &api).await.expect("deployment created");
    let waiting = next_outcome(&mut outcomes).await;
    assert_eq!(waiting.result, OutcomeResult::AwaitingApproval, "{}", waiting.detail);

    let report = kubesent_as_reader(&stack, &["report", "-o", "json"]).await;
    assert!(report.status.success(), "{}", String::from_utf8_lossy(&report.stderr));
    let report: serde_json::Value = serde_json::from_slice(&report.stdout).expect("JSON");
    let shop = report["rows"]
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["class"] == "memory-raise" && r["namespace"] == "shop"))
        .cloned()
        .expect("a row for memory-raise in shop");
    assert_eq!(shop["decisions"], json!({"approve": 1, "shadow": 1}), "{shop}");
    let events: Vec<&str> =
        report["policy"].as_array().into_iter().flatten().filter_map(|c| c["event"].as_str()).collect();
    assert_eq!(events, ["refused", "promoted"], "{report}");
    let shown = kubesent_as_reader(&stack, &["policy", "show"]).await;
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(
        shown.contains("override memory-raise: approve (promoted) by alice (NATS user kubesent-operator)"),
        "{shown}"
    );
    let forbidden: Vec<_> =
        stack.kube_sim.requests().into_iter().filter(|r| r.status == 401 || r.status == 403).collect();
    assert!(forbidden.is_empty(), "least privilege is enough: {forbidden:?}");
    stack.stop().await;
}
