//! What the remediator tests share: a world of kube-sim and a real nats-server, a remediator to start
//! and stop, failing pods, verdicts as the diagnoser (or a forger) would publish them.

// Each test binary uses part of what is shared here.
#![allow(dead_code, unused_imports)]

pub use std::{sync::Arc, time::Duration};

pub use async_nats::jetstream;
pub use futures::StreamExt as _;
pub use k8s_openapi::api::core::v1::Pod;
pub use kube::{Api, api::PostParams};
pub use kube_runtime::wait::await_condition;
pub use kubesent_common::nats::{self, Topology};
pub use kubesent_kube_sim::{KubeSim, SimConfig};
pub use kubesent_proto::intent::{Intent, Phase};
pub use kubesent_proto::{
    self as proto, Action, FailureKind, MemoryQuantity, Outcome, Strategy, Verdict, VerdictSource,
    WorkloadRef,
};
pub use kubesent_remediator::{
    RemediatorConfig, RemediatorDeps, RemediatorMetrics,
    gate::Policy,
    guardrails::{Guardrails, Limits},
    intent::{self, Intents},
};
use kubesent_testkit::nats_server::NatsServer;
pub use kubesent_testkit::{
    bus::{PATIENCE, next_outcome},
    fixtures::{self, increase, sim_pod as pod},
};
pub use prometheus_client::registry::Registry;
pub use serde_json::json;
pub use tokio_util::sync::CancellationToken;

pub struct World {
    pub _nats: NatsServer,
    pub sim: KubeSim,
    pub kube: kube::Client,
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub intents: Intents,
    pub bucket: jetstream::kv::Store,
}

impl World {
    pub fn guardrails(&self) -> Guardrails {
        Guardrails::new(self.bucket.clone(), Limits::default())
    }
}

pub async fn world(kubernetes_minor: u32) -> World {
    let nats = NatsServer::start().await.expect("nats-server");
    let sim = KubeSim::start(SimConfig { time_scale: 0.01, kubernetes_minor, ..SimConfig::default() })
        .await
        .expect("kube-sim");
    let kube = kubesent_common::kube_client(Some(&sim.url())).await.expect("kube client");
    let client = nats::connect(nats.url(), "test").await.expect("nats");
    let js = jetstream::new(client.clone());
    let topology = Topology::default();
    nats::ensure_streams(&js, &topology).await.expect("streams");
    let bucket = nats::ensure_intents(&js, &topology).await.expect("intents bucket");
    World { _nats: nats, sim, kube, client, js, intents: Intents::new(bucket.clone()), bucket }
}

pub struct Running {
    pub metrics: Arc<RemediatorMetrics>,
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<()>,
}

impl Running {
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.expect("remediator task");
    }
}

pub fn start(world: &World, policy: Policy) -> Running {
    start_with(world, RemediatorConfig { policy, ..config() })
}

pub fn config() -> RemediatorConfig {
    RemediatorConfig {
        verify_window: Duration::from_millis(500),
        verify_timeout: Duration::from_secs(30),
        ..RemediatorConfig::default()
    }
}

pub fn start_with(world: &World, config: RemediatorConfig) -> Running {
    let metrics = RemediatorMetrics::register(&mut Registry::default());
    let deps = RemediatorDeps {
        kube: world.kube.clone(),
        js: world.js.clone(),
        metrics: metrics.clone(),
        health: Default::default(),
    };
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    let task = tokio::spawn(async move {
        kubesent_remediator::run(config, deps, token).await.expect("remediator runs");
    });
    Running { metrics, shutdown, task }
}

pub fn restarts(pod: &Pod) -> i32 {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.first())
        .map_or(0, |c| c.restart_count)
}

pub fn memory_limit(pod: &Pod) -> String {
    let container = &pod.spec.as_ref().expect("spec").containers[0];
    container.resources.as_ref().and_then(|r| r.limits.clone()).expect("limits")["memory"].0.clone()
}

/// Creates a pod and waits until it has been OOM-killed (or, with enough memory, until it runs).
pub async fn create(world: &World, pod: &Pod, oom: bool) -> Pod {
    let pods: Api<Pod> = Api::namespaced(world.kube.clone(), "shop");
    let name = pod.metadata.name.clone().expect("name");
    pods.create(&PostParams::default(), pod).await.expect("pod created");
    let reached = move |p: Option<&Pod>| {
        p.is_some_and(|p| {
            let cs = p.status.as_ref().and_then(|s| s.container_statuses.as_ref()).and_then(|c| c.first());
            if oom {
                cs.and_then(|c| c.last_state.as_ref()).and_then(|s| s.terminated.as_ref()).is_some()
            } else {
                cs.is_some_and(|c| c.ready)
            }
        })
    };
    tokio::time::timeout(PATIENCE, await_condition(pods, &name, reached))
        .await
        .expect("pod state in time")
        .expect("watch")
        .expect("pod exists")
}

/// The verdict the diagnoser would publish for `pod`'s OOM kill.
pub fn verdict(pod: &Pod, action: Action, confidence: u8) -> Verdict {
    Verdict { confidence, ..fixtures::verdict(pod, action) }
}

/// An intent for `verdict` as an earlier remediator would have stored it.
pub fn stored_intent(verdict: &Verdict, phase: Phase, strategy: Strategy) -> Intent {
    Intent {
        schema: proto::SCHEMA_VERSION,
        incident: verdict.incident.clone(),
        phase,
        strategy,
        target: verdict.pod.clone(),
        workload: None,
        lock: intent::lock_key(&verdict.pod),
        action: verdict.action.clone(),
        original: None,
        replacement: None,
        old_revision: None,
        approved_by: None,
        baseline_restarts: None,
        actor: "an earlier remediator".into(),
        replacement_uid: None,
        result: None,
        detail: None,
        verdict: Some(Box::new(verdict.clone())),
        updated_at: jiff::Timestamp::now(),
        applied_at: None,
    }
}

pub async fn publish(world: &World, verdict: &Verdict, msg_id: &str) {
    let subject = proto::verdict_subject("shop", &verdict.action).expect("subject");
    nats::publish(&world.js, subject, msg_id, proto::encode(verdict), &[]).await.expect("published");
}

/// Mutating requests the remediator sent to kube-sim (the test's own pod creation excluded).
pub fn changes(world: &World) -> Vec<String> {
    world
        .sim
        .requests()
        .into_iter()
        .filter(|r| r.method != "GET" && !r.path.contains("/events"))
        .map(|r| format!("{} {} {}", r.method, r.path, r.status))
        .filter(|r| !r.starts_with("POST /api/v1/namespaces/shop/pods "))
        .collect()
}

/// Follows an intent's KV entries (a watch on its key) until it is done.
pub async fn until_done(entries: &mut jetstream::kv::Watch) -> Intent {
    tokio::time::timeout(PATIENCE, async {
        while let Some(entry) = entries.next().await {
            let intent: Intent = serde_json::from_slice(&entry.expect("entry").value).expect("an intent");
            if intent.phase == Phase::Done {
                return intent;
            }
        }
        panic!("intent watch ended");
    })
    .await
    .expect("the intent was finished in time")
}
