//! End to end: a real nats-server, kube-sim, gemini-sim and the three services in one process.

use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Pod;
use kube::{Api, api::PostParams};
use kubesent::stack::{Stack, StackOptions};
use kubesent_proto::{self as proto, Action, MemoryQuantity, Outcome, OutcomeResult, Strategy};
use serde_json::json;

/// Upper bound for the whole detect → diagnose → replace → verify path (it takes a few seconds).
const PATIENCE: Duration = Duration::from_secs(90);

fn oom_pod(name: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "shop", "labels": {"app": "web"},
            "annotations": {"sim.kubesent.io/memory-need": "200Mi"}},
        "spec": {"containers": [{"name": "app", "image": "registry.local/shop/web:1.4.2",
            "resources": {"limits": {"memory": "128Mi"}, "requests": {"memory": "128Mi"}}}]}
    }))
    .expect("pod json")
}

async fn last_sequence(js: &async_nats::jetstream::Context, stream: &str) -> u64 {
    js.get_stream(stream).await.expect("stream").info().await.expect("info").state.last_sequence
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oom_killed_bare_pod_is_replaced_with_more_memory_and_runs() {
    let _telemetry = kubesent_common::telemetry::init("e2e", false);
    // RBAC on: every service runs with its own ServiceAccount from deploy/base/rbac.yaml.
    let stack = Stack::start(StackOptions {
        time_scale: 0.02,
        verify_window: Duration::from_secs(1),
        dry_run: false,
        rbac: true,
    })
    .await
    .expect("stack starts");
    let mut outcomes = stack.nats_client.subscribe("kubesent.outcomes.>").await.expect("subscribed");
    let pods: Api<Pod> = Api::namespaced(stack.kube.clone(), "shop");
    let original = pods.create(&PostParams::default(), &oom_pod("web-1")).await.expect("pod created");
    let original_uid = original.metadata.uid.clone().expect("uid");

    let message = tokio::time::timeout(PATIENCE, outcomes.next())
        .await
        .expect("an outcome in time")
        .expect("subscription open");
    let outcome: Outcome = proto::decode(&message.payload).expect("outcome decodes");
    assert_eq!(outcome.result, OutcomeResult::Healed, "{}", outcome.detail);
    assert_eq!(outcome.strategy, Some(Strategy::ForceReplace));
    assert_eq!(
        outcome.action,
        Action::IncreaseMemory {
            container: "app".into(),
            from: MemoryQuantity::from_mib(128),
            to: MemoryQuantity::from_mib(256)
        }
    );
    assert_eq!(outcome.pod.uid, original_uid);

    let replacement = pods.get("web-1").await.expect("replacement exists");
    assert_ne!(replacement.metadata.uid.as_deref(), Some(original_uid.as_str()));
    assert_eq!(outcome.replacement_uid, replacement.metadata.uid);
    let container = &replacement.spec.as_ref().expect("spec").containers[0];
    let limits = container.resources.as_ref().and_then(|r| r.limits.clone()).expect("limits");
    assert_eq!(limits["memory"].0, "256Mi");
    let annotations = replacement.metadata.annotations.clone().expect("annotations");
    assert_eq!(annotations["kubesent.io/original-memory-limit.app"], "128Mi");
    let status =
        &replacement.status.as_ref().and_then(|s| s.container_statuses.clone()).expect("statuses")[0];
    assert!(status.ready && status.state.as_ref().is_some_and(|s| s.running.is_some()), "{status:?}");
    assert_eq!(status.restart_count, 0);

    assert_eq!(last_sequence(&stack.js, proto::JOBS_STREAM).await, 1, "one job");
    assert_eq!(last_sequence(&stack.js, proto::VERDICTS_STREAM).await, 1, "one verdict");
    assert_eq!(last_sequence(&stack.js, proto::OUTCOMES_STREAM).await, 1, "one outcome");
    assert_eq!(last_sequence(&stack.js, proto::DLQ_STREAM).await, 0, "nothing dead-lettered");
    let deleted_with_preconditions = stack
        .kube_sim
        .requests()
        .iter()
        .any(|r| r.method == "DELETE" && r.path.ends_with("/pods/web-1") && r.status == 200);
    assert!(deleted_with_preconditions);
    let forbidden: Vec<_> =
        stack.kube_sim.requests().into_iter().filter(|r| r.status == 401 || r.status == 403).collect();
    assert!(forbidden.is_empty(), "least privilege is enough: {forbidden:?}");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unparsable_job_is_dead_lettered_with_the_reason() {
    let stack = Stack::start(StackOptions::default()).await.expect("stack starts");
    let ack = stack
        .js
        .publish("kubesent.jobs.shop.oom-killed", "{\"schema\":1,\"incident\":42}".into())
        .await
        .expect("published")
        .await
        .expect("stored");
    let dlq = stack.js.get_stream(proto::DLQ_STREAM).await.expect("dlq stream");
    let mut dead = None;
    let mut waited = Duration::ZERO;
    // The diagnoser handles the job asynchronously; poll the DLQ's last message by subject.
    while dead.is_none() && waited < PATIENCE {
        match dlq.get_last_raw_message_by_subject("kubesent.dlq.diagnoser").await {
            Ok(message) => dead = Some(message),
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                waited += Duration::from_millis(50);
            }
        }
    }
    let dead = dead.expect("dead letter arrived");
    let reason = dead.headers.get(proto::headers::DLQ_REASON).map(|v| v.to_string()).expect("reason header");
    assert!(reason.starts_with("undecodable job: malformed payload"), "{reason}");
    let original_sequence = dead.headers.get(proto::headers::DLQ_ORIGINAL_SEQUENCE).map(|v| v.to_string());
    assert_eq!(original_sequence, Some(ack.sequence.to_string()));
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
    assert_eq!(stack.metrics.diagnoser.jobs("dead_lettered"), 1);
    stack.stop().await;
}
