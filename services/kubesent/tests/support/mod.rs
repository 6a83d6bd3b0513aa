//! What several end-to-end test files share: the failing workloads they create.

#![allow(dead_code)]

pub use kubesent_testkit::fixtures::oom_pod;

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::{Api, api::PostParams};
use kubesent_loadtest::stack::{Stack, StackOptions};
use kubesent_proto::{Outcome, OutcomeResult};

/// A stack (RBAC off) whose autonomy policy makes every fix wait for approval, with the bare pod
/// `shop/web-1` OOM-killed and its fix waiting; the subscription to the outcomes that follow.
pub async fn a_fix_waiting_for_approval(dir: &std::path::Path) -> (Stack, async_nats::Subscriber, Outcome) {
    let policy = dir.join("autonomy.yaml");
    std::fs::write(&policy, "default: approve\n").expect("policy");
    let stack = Stack::start(StackOptions {
        time_scale: 0.02,
        verify_window: Duration::from_secs(1),
        autonomy_policy: Some(policy),
        ..StackOptions::default()
    })
    .await
    .expect("stack starts");
    let mut outcomes = stack.nats_client.subscribe("kubesent.outcomes.>").await.expect("subscribed");
    let pods: Api<Pod> = Api::namespaced(stack.kube.clone(), "shop");
    pods.create(&PostParams::default(), &oom_pod("web-1")).await.expect("created");
    let waiting = kubesent_testkit::bus::next_outcome(&mut outcomes).await;
    assert_eq!(waiting.result, OutcomeResult::AwaitingApproval, "{}", waiting.detail);
    (stack, outcomes, waiting)
}
