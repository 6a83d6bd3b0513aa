//! Leader election against kube-sim's Leases, with the real kube-leader-election client.

use std::time::Duration;

use kubesent_common::leader::{self, LeaderConfig};
use kubesent_kube_sim::{KubeSim, SimConfig};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

const PATIENCE: Duration = Duration::from_secs(30);

fn candidate(identity: &str) -> LeaderConfig {
    LeaderConfig {
        namespace: "kubesent".into(),
        lease_name: "kubesent-remediator".into(),
        identity: identity.into(),
        ttl: Duration::from_secs(3),
    }
}

async fn until(rx: &mut watch::Receiver<bool>, wanted: bool) {
    tokio::time::timeout(PATIENCE, rx.wait_for(|leading| *leading == wanted))
        .await
        .expect("in time")
        .expect("sender alive");
}

#[tokio::test]
async fn one_candidate_leads_and_the_other_takes_over_when_it_steps_down() {
    let sim = KubeSim::start(SimConfig::default()).await.expect("kube-sim starts");
    let client = kubesent_common::kube_client(Some(&sim.url())).await.expect("client");
    let stop_a = CancellationToken::new();
    let (mut a, task_a) = leader::spawn(client.clone(), candidate("a"), stop_a.clone());
    until(&mut a, true).await;

    let stop_b = CancellationToken::new();
    let (mut b, _task_b) = leader::spawn(client.clone(), candidate("b"), stop_b.clone());
    // b has tried at least once (its first attempt happens at once) and stays a follower while a renews.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!*b.borrow(), "only one candidate leads");
    assert!(*a.borrow());

    stop_a.cancel();
    task_a.await.expect("a stopped");
    assert!(!*a.borrow());
    until(&mut b, true).await;
    stop_b.cancel();
}
