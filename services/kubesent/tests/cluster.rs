//! A service and NATS at its edges: started before NATS is up it waits, alive and unready; a stream that
//! exists with other settings is a clear error at once. The production topology (three servers, every
//! stream at three replicas, the services started together, a server crash, a whole-cluster restart) is
//! the chaos smoke's (`tests/chaos.rs`): it starts every replica at once on a fresh cluster, fails if one
//! exits before it is ready, and injects every kind of fault under the invariant checker.

use std::{path::Path, time::Duration};

use async_nats::jetstream;
use kubesent_common::nats::{self, Role};
use kubesent_kube_sim::{KubeSim, SimConfig};
use kubesent_loadtest::processes::{ServiceProcess, ServiceSpec};
use kubesent_proto as proto;

/// Upper bound for a service's set-up.
const PATIENCE: Duration = Duration::from_secs(120);

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
