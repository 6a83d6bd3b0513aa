//! The detector as a service: against kube-sim and a real nats-server, with leader election.

use std::{collections::BTreeSet, sync::Arc, time::Duration};

use async_nats::jetstream;
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Pod;
use kube::{Api, api::PostParams};
use kubesent_common::{
    leader::LeaderConfig,
    nats::{self, Topology},
};
use kubesent_detector::{DetectorConfig, DetectorDeps, DetectorMetrics};
use kubesent_kube_sim::{KubeSim, SimConfig};
use kubesent_proto::{self as proto, FailureJob};
use kubesent_testkit::{fixtures::oom_pod, nats_server::NatsServer};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

const PATIENCE: Duration = Duration::from_secs(60);

struct World {
    nats: NatsServer,
    sim: KubeSim,
    kube: kube::Client,
    js: jetstream::Context,
    topology: Topology,
}

async fn world(topology: &Topology) -> World {
    let nats = NatsServer::start().await.expect("nats-server starts");
    let sim = KubeSim::start(SimConfig { time_scale: 0.01, ..SimConfig::default() })
        .await
        .expect("kube-sim starts");
    let kube = kubesent_common::kube_client(Some(&sim.url())).await.expect("kube client");
    let js = jetstream::new(nats::connect(nats.url(), "test").await.expect("nats"));
    nats::ensure_streams(&js, topology).await.expect("streams");
    World { nats, sim, kube, js, topology: topology.clone() }
}

fn detector(
    world: &World,
    leader: Option<&str>,
) -> (Arc<DetectorMetrics>, impl std::future::Future<Output = ()> + use<>, CancellationToken) {
    let metrics = DetectorMetrics::register(&mut Registry::default());
    let config = DetectorConfig {
        namespaces: Vec::new(),
        excluded_namespaces: Vec::new(),
        leader: leader.map(|identity| LeaderConfig {
            namespace: "kubesent".into(),
            lease_name: "kubesent-detector".into(),
            identity: identity.into(),
            ttl: Duration::from_secs(3),
            standby_poll: kubesent_common::leader::STANDBY_POLL,
        }),
        group_wait: Duration::ZERO,
        holds: kubesent_detector::incidents::Holds::default(),
        incident_ttl: kubesent_detector::DEFAULT_INCIDENT_TTL,
        topology: world.topology.clone(),
        known_good_after: Duration::from_secs(1),
    };
    let deps = DetectorDeps {
        kube: world.kube.clone(),
        js: world.js.clone(),
        metrics: metrics.clone(),
        health: Default::default(),
    };
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    (
        metrics,
        async move { kubesent_detector::run(config, deps, token).await.expect("detector runs") },
        shutdown,
    )
}

async fn stored_jobs(js: &jetstream::Context) -> Vec<FailureJob> {
    let stream = js.get_stream(proto::JOBS_STREAM).await.expect("stream");
    let last = stream.get_info().await.expect("info").state.last_sequence;
    let mut jobs = Vec::new();
    for sequence in 1..=last {
        if let Ok(message) = stream.get_raw_message(sequence).await {
            jobs.push(proto::decode(&message.payload).expect("job decodes"));
        }
    }
    jobs
}

/// Waits until the jobs stream holds `count` messages, checking after every publish on the subject.
async fn until_stream_has(world: &World, count: u64) {
    let mut publishes = world.js.client().subscribe("kubesent.jobs.>").await.expect("subscribed");
    let stream = world.js.get_stream(proto::JOBS_STREAM).await.expect("stream");
    tokio::time::timeout(PATIENCE, async {
        loop {
            if stream.get_info().await.expect("info").state.messages >= count {
                return;
            }
            publishes.next().await;
        }
    })
    .await
    .expect("jobs stored in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_leader_is_replaced_and_every_incident_is_published_exactly_once() {
    let world = world(&Topology::default()).await;
    let (a_metrics, a_run, _a_stop) = detector(&world, Some("detector-a"));
    let a = tokio::spawn(a_run);
    a_metrics.wait_until(DetectorMetrics::is_leader).await;
    let (b_metrics, b_run, b_stop) = detector(&world, Some("detector-b"));
    let b = tokio::spawn(b_run);

    let pods: Api<Pod> = Api::namespaced(world.kube.clone(), "shop");
    for i in 0..10 {
        pods.create(&PostParams::default(), &oom_pod(&format!("first-{i}"))).await.expect("created");
    }
    until_stream_has(&world, 10).await;
    assert!(!b_metrics.is_leader(), "the standby did not publish");
    a.abort(); // a crash: no step-down, the lease has to expire
    for i in 0..10 {
        pods.create(&PostParams::default(), &oom_pod(&format!("second-{i}"))).await.expect("created");
    }
    tokio::time::timeout(PATIENCE, b_metrics.wait_until(|m| m.is_leader() && m.jobs_published() >= 10))
        .await
        .expect("the standby took over");
    until_stream_has(&world, 20).await;

    let jobs = stored_jobs(&world.js).await;
    let incidents: BTreeSet<_> = jobs.iter().map(|j| j.incident.clone()).collect();
    assert_eq!(jobs.len(), 20, "one job per incident");
    assert_eq!(incidents.len(), 20, "no incident twice");
    let pods_seen: BTreeSet<_> = jobs.iter().map(|j| j.pod.name.clone()).collect();
    assert_eq!(pods_seen.len(), 20);
    assert!(
        b_metrics.jobs_deduplicated() > 0,
        "the new leader republished open incidents and JetStream dropped them"
    );
    b_stop.cancel();
    b.await.expect("b stopped");
    world.sim.shutdown().await;
}

/// Deployment `web` of `replicas` pods running `image` (healthy, no probe).
fn healthy_deployment(replicas: i32, image: &str) -> k8s_openapi::api::apps::v1::Deployment {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "app", "image": image}]}}}
    }))
    .expect("deployment")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_record_of_a_known_good_revision_survives_a_leader_change_and_the_new_leader_records_its_end() {
    use kubesent_detector::RecordChange;
    use kubesent_proto::{WorkloadKind, WorkloadRef};
    let world = world(&Topology::default()).await;
    let (a_metrics, a_run, _a_stop) = detector(&world, Some("detector-a"));
    let a = tokio::spawn(a_run);
    a_metrics.wait_until(DetectorMetrics::is_leader).await;
    let (b_metrics, b_run, b_stop) = detector(&world, Some("detector-b"));
    let b = tokio::spawn(b_run);

    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(world.kube.clone(), "shop");
    deployments.create(&PostParams::default(), &healthy_deployment(2, "web:1")).await.expect("created");
    tokio::time::timeout(
        PATIENCE,
        a_metrics.wait_until(|m| m.revisions_recorded(RecordChange::KnownGood) >= 1),
    )
    .await
    .expect("revision 1 recorded known-good by the leader");
    assert_eq!(b_metrics.revisions_recorded(RecordChange::KnownGood), 0, "the standby writes nothing");
    let store = kubesent_common::served::ServedStore::new(world.js.clone());
    let web = WorkloadRef { kind: WorkloadKind::Deployment, name: "web".into() };
    let first = store.read("shop", &web).await.expect("read").expect("a record");
    assert_eq!(first.revisions.len(), 1);
    let revision = first.revisions[0].clone();
    assert_eq!(revision.replicas, 2);
    assert!(revision.name.starts_with("web-") && revision.name.ends_with(&revision.hash), "{revision:?}");
    assert_eq!(revision.until, None, "still serving");

    a.abort(); // a crash: no step-down, the lease has to expire
    tokio::time::timeout(PATIENCE, b_metrics.wait_until(DetectorMetrics::is_leader))
        .await
        .expect("the standby took over");
    // A rollout to revision 2 scales revision 1 down: the new leader records the end of its service.
    let update = serde_json::json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": "web:2"}]}}}});
    deployments
        .patch("web", &kube::api::PatchParams::default(), &kube::api::Patch::Strategic(&update))
        .await
        .expect("updated");
    tokio::time::timeout(PATIENCE, b_metrics.wait_until(|m| m.revisions_recorded(RecordChange::Ended) >= 1))
        .await
        .expect("the end recorded by the new leader");
    let after = store.read("shop", &web).await.expect("read").expect("the record");
    let kept = after.revisions.iter().find(|r| r.name == revision.name).expect("revision 1 kept");
    // Never shortened: the earlier of the two leaders' starts stands.
    assert!(kept.healthy_since <= revision.healthy_since, "{kept:?} against {revision:?}");
    assert!(kept.until.is_some_and(|until| until >= kept.known_good_at), "{kept:?}");
    b_stop.cancel();
    b.await.expect("b stopped");
    world.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_jobs_stream_is_retried_until_there_is_room_and_nothing_is_lost() {
    let topology = Topology { max_jobs: 2, ..Topology::default() };
    let world = world(&topology).await;
    let (metrics, run, stop) = detector(&world, None);
    let task = tokio::spawn(run);
    let pods: Api<Pod> = Api::namespaced(world.kube.clone(), "shop");
    for i in 0..4 {
        pods.create(&PostParams::default(), &oom_pod(&format!("flood-{i}"))).await.expect("created");
    }
    tokio::time::timeout(
        PATIENCE,
        metrics.wait_until(|m| m.jobs_published() == 2 && m.publish_failures() > 0 && m.pending_jobs() == 2),
    )
    .await
    .expect("the stream pushed back");
    let first = stored_jobs(&world.js).await;
    assert_eq!(first.len(), 2);

    // A consumer drains the stream; the detector's retries then get through.
    let consumer = nats::ensure_consumer(&world.js, proto::JOBS_STREAM, topology.diagnosers_consumer())
        .await
        .expect("consumer");
    let mut batch = consumer.fetch().max_messages(2).messages().await.expect("fetch");
    while let Some(message) = batch.next().await {
        message.expect("message").double_ack().await.expect("acked");
    }
    tokio::time::timeout(PATIENCE, metrics.wait_until(|m| m.jobs_published() == 4 && m.pending_jobs() == 0))
        .await
        .expect("the rest published");
    let rest = stored_jobs(&world.js).await;
    let all: BTreeSet<_> = first.iter().chain(rest.iter()).map(|j| j.pod.name.clone()).collect();
    assert_eq!(all.len(), 4, "every failure seen was published: {all:?}");
    stop.cancel();
    task.await.expect("stopped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_seen_while_nats_is_down_are_published_once_it_is_back() {
    let mut world = world(&Topology::default()).await;
    let (metrics, run, stop) = detector(&world, None);
    let task = tokio::spawn(run);
    let pods: Api<Pod> = Api::namespaced(world.kube.clone(), "shop");
    pods.create(&PostParams::default(), &oom_pod("before")).await.expect("created");
    tokio::time::timeout(PATIENCE, metrics.wait_until(|m| m.jobs_published() == 1)).await.expect("first job");

    world.nats.kill().await;
    for i in 0..3 {
        pods.create(&PostParams::default(), &oom_pod(&format!("outage-{i}"))).await.expect("created");
    }
    tokio::time::timeout(PATIENCE, metrics.wait_until(|m| m.publish_failures() > 0 && m.pending_jobs() >= 3))
        .await
        .expect("publishing fails while NATS is down, and the jobs are kept");
    world.nats.restart().await.expect("nats-server back on the same port");
    // A publish in flight when the server died may have been stored without its ack reaching the
    // detector; the retry is then a duplicate. Either way each incident is in the stream once.
    until_stream_has(&world, 4).await;
    let jobs = stored_jobs(&world.js).await;
    let names: BTreeSet<_> = jobs.iter().map(|j| j.pod.name.clone()).collect();
    assert_eq!(names, ["before", "outage-0", "outage-1", "outage-2"].into_iter().map(String::from).collect());
    assert_eq!(jobs.len(), 4, "nothing twice");
    stop.cancel();
    task.await.expect("stopped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_oom_killed_inside_a_running_container_is_reported_as_an_oom_of_that_container() {
    use kube::runtime::wait::await_condition;
    let world = world(&Topology::default()).await;
    let (metrics, run, stop) = detector(&world, None);
    let task = tokio::spawn(run);
    let pods: Api<Pod> = Api::namespaced(world.kube.clone(), "shop");
    for name in ["steady", "older"] {
        pods.create(&PostParams::default(), &kubesent_testkit::fixtures::sim_pod(name, "256Mi", "64Mi"))
            .await
            .expect("created");
    }
    let running = |pod: Option<&Pod>| {
        pod.and_then(|p| p.status.as_ref()).and_then(|s| s.container_statuses.as_ref()).is_some_and(|cs| {
            cs.iter()
                .all(|c| c.container_id.is_some() && c.state.as_ref().is_some_and(|s| s.running.is_some()))
        })
    };
    let mut seen = Vec::new();
    for name in ["steady", "older"] {
        let pod = tokio::time::timeout(PATIENCE, await_condition(pods.clone(), name, running))
            .await
            .expect("running in time")
            .expect("watch")
            .expect("the pod");
        seen.push(pod);
    }
    // node-problem-detector's Node event for the kernel's `oom-kill:` line names the victim's cgroup.
    let kernel_line = |pod: &Pod| {
        let uid = pod.metadata.uid.clone().expect("uid");
        let id = pod
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|cs| cs[0].container_id.clone())
            .expect("id");
        let id = id.rsplit('/').next().expect("bare id").to_owned();
        format!(
            "oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset={id},mems_allowed=0,oom_memcg=/kubepods/burstable/pod{uid},task_memcg=/kubepods/burstable/pod{uid}/{id},task=python3,pid=4242,uid=0"
        )
    };
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(world.kube.clone(), "default");
    let node_event = |name: &str, pod: &Pod, at: jiff::Timestamp| -> k8s_openapi::api::core::v1::Event {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "default"},
            "involvedObject": {"kind": "Node", "name": pod.spec.as_ref().and_then(|s| s.node_name.clone()).expect("bound"), "apiVersion": "v1"},
            "reason": "OOMKilling", "type": "Warning", "message": kernel_line(pod),
            "source": {"component": "kernel-monitor"}, "count": 1,
            "firstTimestamp": at.to_string(), "lastTimestamp": at.to_string()
        }))
        .expect("event")
    };
    let hour_ago = jiff::Timestamp::now() - jiff::SignedDuration::from_hours(1);
    events
        .create(&PostParams::default(), &node_event("node.older", &seen[1], hour_ago))
        .await
        .expect("stale event");
    events
        .create(&PostParams::default(), &node_event("node.steady", &seen[0], jiff::Timestamp::now()))
        .await
        .expect("event");
    tokio::time::timeout(PATIENCE, metrics.wait_until(|m| m.jobs_published() >= 1)).await.expect("a job");
    let jobs = stored_jobs(&world.js).await;
    assert_eq!(jobs.len(), 1, "only the recent kill: {jobs:?}");
    let job = &jobs[0];
    assert_eq!(
        (
            job.pod.name.as_str(),
            job.failure.kind,
            job.failure.container.as_str(),
            job.failure.reason.as_str()
        ),
        ("steady", proto::FailureKind::OomKilled, "app", "ProcessOOMKilled")
    );
    assert!(job.failure.message.as_deref().is_some_and(|m| m.contains("python3 (pid 4242)")), "{job:?}");
    stop.cancel();
    task.await.expect("stopped");
    world.sim.shutdown().await;
}
