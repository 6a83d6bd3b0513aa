//! The production NATS topology: three nats-servers in one JetStream cluster, every stream and bucket at
//! three replicas, and the services as separate `kubesent` processes started at the same moment, as a
//! fresh install (or a cluster-wide restart) starts them. Nothing may crash-loop, a server crash must not
//! stop the pipeline, and a restart of the whole cluster must not lose a job.

use std::{collections::BTreeMap, path::Path, time::Duration};

use async_nats::jetstream;
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Pod;
use kube::{Api, api::PostParams};
use kubesent_common::nats::{self, Role};
use kubesent_kube_sim::{KubeSim, SimConfig};
use kubesent_loadtest::processes::{ServiceProcess, ServiceSpec};
use kubesent_proto::{self as proto, Outcome, OutcomeResult};
use kubesent_testkit::nats_server::{NatsCluster, NatsUsers, auth_config_with_observer};
use support::oom_pod;

mod support;

/// Upper bound for set-up on a forming cluster and for a heal after a restart (each takes seconds).
const PATIENCE: Duration = Duration::from_secs(120);

struct Install {
    cluster: NatsCluster,
    users: NatsUsers,
    _sim: KubeSim,
    kube: kube::Client,
    services: Vec<ServiceProcess>,
}

/// A fresh three-server cluster and kube-sim, then a detector, a diagnoser and a remediator process
/// started together with `--stream-replicas 3`, as `deploy/base` runs them.
async fn install() -> Install {
    let users = NatsUsers::generate();
    let cluster = NatsCluster::start_with(3, &auth_config_with_observer(), &users.server_env())
        .await
        .expect("nats cluster starts");
    let sim = KubeSim::start(SimConfig { time_scale: 0.02, ..SimConfig::default() }).await.expect("kube-sim");
    let kube = kubesent_common::kube_client(Some(&sim.url())).await.expect("kube client");
    let exe = Path::new(env!("CARGO_BIN_EXE_kubesent"));
    let spec = |role: Role| {
        ServiceSpec::new(exe, role, &format!("{}-0", role.as_str()), &cluster.urls(), &sim.url())
            .arg("--stream-replicas", 3)
            .env("RUST_LOG", "info,async_nats=warn")
            .envs(users.env(role))
    };
    let specs = [
        spec(Role::Detector),
        spec(Role::Diagnoser),
        spec(Role::Remediator).arg("--verify-seconds", 1).arg("--cooldown-minutes", 0),
    ];
    let mut services: Vec<ServiceProcess> =
        specs.into_iter().map(|s| ServiceProcess::spawn(s).expect("service starts")).collect();
    for service in &mut services {
        service.wait_ready(PATIENCE).await.expect("ready without a restart");
    }
    Install { cluster, users, _sim: sim, kube, services }
}

impl Install {
    async fn jetstream(&self) -> jetstream::Context {
        let client =
            nats::connect_as(&self.users.args(&self.cluster.urls(), Role::Admin), Role::Admin, "test")
                .await
                .expect("test client");
        jetstream::new(client)
    }

    fn assert_no_service_exited(&mut self) {
        for service in &mut self.services {
            let exited = service.exited().expect("process status");
            assert!(exited.is_none(), "{} exited: {exited:?}", service.spec.identity);
        }
    }

    async fn create_oom_pod(&self, name: &str) {
        let pods: Api<Pod> = Api::namespaced(self.kube.clone(), "shop");
        pods.create(&PostParams::default(), &oom_pod(name)).await.expect("pod created");
    }
}

/// Every outcome in the audit stream, by pod name (in order).
async fn outcomes_by_pod(js: &jetstream::Context) -> BTreeMap<String, Vec<Outcome>> {
    let mut by_pod: BTreeMap<String, Vec<Outcome>> = BTreeMap::new();
    let Ok(mut stream) = js.get_stream(proto::OUTCOMES_STREAM).await else { return by_pod };
    let Ok(info) = stream.info().await else { return by_pod };
    for sequence in info.state.first_sequence..=info.state.last_sequence {
        if let Ok(message) = stream.get_raw_message(sequence).await
            && let Ok(outcome) = proto::decode::<Outcome>(&message.payload)
        {
            by_pod.entry(outcome.pod.name.clone()).or_default().push(outcome);
        }
    }
    by_pod
}

/// Waits until every pod in `pods` has a final outcome in the audit stream, and returns them all. The
/// stream is the source of truth; published outcomes wake the wait (a wake-up lost while servers restart
/// only delays it to the next check).
async fn wait_for_final_outcomes(js: &jetstream::Context, pods: &[&str]) -> BTreeMap<String, Vec<Outcome>> {
    let mut wake = js.client().subscribe(proto::OUTCOMES_SUBJECTS).await.expect("subscribed");
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let outcomes = outcomes_by_pod(js).await;
        let finished = |pod: &&str| {
            outcomes
                .get(*pod)
                .is_some_and(|list| list.iter().any(|o| o.result != OutcomeResult::AwaitingApproval))
        };
        if pods.iter().all(finished) {
            return outcomes;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no final outcome for every pod of {pods:?}: {outcomes:#?}"
        );
        let _ = tokio::time::timeout(Duration::from_secs(1), wake.next()).await;
    }
}

fn assert_each_healed_once(outcomes: &BTreeMap<String, Vec<Outcome>>, pods: &[&str]) {
    for pod in pods {
        let list = &outcomes[*pod];
        assert_eq!(list.len(), 1, "one outcome for {pod}: {list:#?}");
        assert_eq!(list[0].result, OutcomeResult::Healed, "{pod}: {}", list[0].detail);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_started_together_on_a_fresh_cluster_come_up_without_restarting_and_ride_out_a_server_crash()
{
    let mut install = install().await;
    install.assert_no_service_exited();
    let js = install.jetstream().await;
    for stream in [proto::JOBS_STREAM, proto::VERDICTS_STREAM, proto::OUTCOMES_STREAM, proto::DLQ_STREAM] {
        let info = js.get_stream(stream).await.expect("stream exists").info().await.expect("info").clone();
        assert_eq!(info.config.num_replicas, 3, "{stream} is replicated");
    }
    let intents = format!("KV_{}", proto::INTENTS_BUCKET);
    let info = js.get_stream(&intents).await.expect("bucket exists").info().await.expect("info").clone();
    assert_eq!(info.config.num_replicas, 3, "the intents bucket is replicated");

    install.create_oom_pod("web-1").await;
    let outcomes = wait_for_final_outcomes(&js, &["web-1"]).await;
    assert_each_healed_once(&outcomes, &["web-1"]);

    // kill -9 of one server: its clients reconnect to another, its streams elect new leaders.
    install.cluster.kill(0).await;
    install.create_oom_pod("web-2").await;
    let outcomes = wait_for_final_outcomes(&js, &["web-1", "web-2"]).await;
    assert_each_healed_once(&outcomes, &["web-1", "web-2"]);
    install.assert_no_service_exited();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_whole_cluster_restarts_every_service_recovers_and_no_job_is_lost() {
    let mut install = install().await;
    let js = install.jetstream().await;
    // Failures in flight when every server goes down at once, and failures while they are down.
    for pod in ["before-1", "before-2", "before-3"] {
        install.create_oom_pod(pod).await;
    }
    let jobs = js.get_stream(proto::JOBS_STREAM).await.expect("jobs stream");
    let mut stored = js.client().subscribe(proto::JOBS_SUBJECTS.to_owned()).await.expect("subscribed");
    for _ in 0..3 {
        tokio::time::timeout(PATIENCE, stored.next()).await.expect("the jobs are published").expect("open");
    }
    drop(jobs);
    install.cluster.stop_all().await;
    for pod in ["during-1", "during-2"] {
        install.create_oom_pod(pod).await;
    }
    install.cluster.start_all().await.expect("the cluster starts again");

    let pods = ["before-1", "before-2", "before-3", "during-1", "during-2"];
    let outcomes = wait_for_final_outcomes(&js, &pods).await;
    assert_each_healed_once(&outcomes, &pods);
    install.assert_no_service_exited();
    for service in &install.services {
        assert!(service.is_ready().await, "{} is ready again", service.spec.identity);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_started_before_nats_stays_alive_and_unready_until_nats_is_up() {
    use kubesent_testkit::nats_server::NatsServer;
    let (mut nats, users) = NatsServer::start_secured().await.expect("nats-server");
    let url = nats.url().to_owned();
    nats.kill().await;
    let sim = KubeSim::start(SimConfig::default()).await.expect("kube-sim");
    let exe = Path::new(env!("CARGO_BIN_EXE_kubesent"));
    let spec =
        ServiceSpec::new(exe, Role::Detector, "detector-0", &url, &sim.url()).envs(users.env(Role::Detector));
    let mut detector = ServiceProcess::spawn(spec).expect("detector starts");
    let live = format!("http://{}/healthz", detector.admin);
    let client = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !client.get(&live).send().await.is_ok_and(|r| r.status().is_success()) {
        assert!(tokio::time::Instant::now() < deadline, "the admin endpoint never served");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!detector.is_ready().await, "not ready without NATS");
    assert!(detector.exited().expect("status").is_none(), "waits instead of exiting");

    nats.restart().await.expect("nats-server starts again on its port");
    detector.wait_ready(PATIENCE).await.expect("ready once NATS is up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_exists_with_other_settings_is_an_immediate_clear_error() {
    use async_nats::jetstream::stream;
    use kubesent_testkit::nats_server::NatsServer;
    let (nats, users) = NatsServer::start_secured().await.expect("nats-server");
    let observer =
        nats::connect_as(&users.args(nats.url(), Role::Admin), Role::Admin, "test").await.expect("nats");
    let js = jetstream::new(observer);
    js.create_stream(stream::Config {
        name: proto::JOBS_STREAM.into(),
        subjects: vec![proto::JOBS_SUBJECTS.into()],
        retention: stream::RetentionPolicy::Limits,
        ..Default::default()
    })
    .await
    .expect("a stream with other settings");
    let sim = KubeSim::start(SimConfig::default()).await.expect("kube-sim");
    let log = tempfile::NamedTempFile::new().expect("log file");
    let exe = Path::new(env!("CARGO_BIN_EXE_kubesent"));
    let mut spec = ServiceSpec::new(exe, Role::Detector, "detector-0", nats.url(), &sim.url())
        .envs(users.env(Role::Detector));
    spec.log = Some(log.path().to_owned());
    let mut detector = ServiceProcess::spawn(spec).expect("detector starts");
    let Ok(status) = tokio::time::timeout(Duration::from_secs(30), detector.wait()).await else {
        panic!("still running: {}", std::fs::read_to_string(log.path()).unwrap_or_default());
    };
    let status = status.expect("status");
    assert!(!status.success(), "a conflict is an error");
    let output = std::fs::read_to_string(log.path()).expect("log");
    assert!(output.contains("stream KUBESENT_JOBS") && output.contains("retrying cannot"), "{output}");
    assert!(!output.contains("retrying what="), "no retries: {output}");
}
