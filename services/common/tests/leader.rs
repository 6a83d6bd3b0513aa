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
        standby_poll: leader::STANDBY_POLL,
    }
}

/// Long leases and no polling to speak of: only the watch on the Lease can wake a standby in time.
fn patient(identity: &str) -> LeaderConfig {
    LeaderConfig {
        ttl: Duration::from_secs(3600),
        standby_poll: Duration::from_secs(3600),
        ..candidate(identity)
    }
}

const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/kubesent/leases";

/// Waits until kube-sim's request log from `since` holds `gets` GETs of the lease and `watches` watches
/// of it: the standbys started since have asked once (and been refused) and watch the Lease. The leader
/// renews only every 20 minutes, so these requests are theirs.
async fn standbys_asked_and_watching(sim: &KubeSim, since: usize, gets: usize, watches: usize) {
    tokio::time::timeout(PATIENCE, async {
        loop {
            let requests = sim.requests();
            let new = &requests[since..];
            let asked =
                new.iter().filter(|r| r.method == "GET" && r.path.starts_with(&format!("{LEASES}/"))).count();
            let watching = new.iter().filter(|r| r.path == LEASES && r.query.contains("watch=true")).count();
            if asked >= gets && watching >= watches {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the standbys asked for the lease and watch it");
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

#[tokio::test]
async fn a_standby_takes_a_released_lease_when_it_sees_the_release_not_at_its_next_poll() {
    let sim = KubeSim::start(SimConfig::default()).await.expect("kube-sim starts");
    let client = kubesent_common::kube_client(Some(&sim.url())).await.expect("client");
    let stop_a = CancellationToken::new();
    let (mut a, task_a) = leader::spawn(client.clone(), patient("a"), stop_a.clone());
    until(&mut a, true).await;
    let before = sim.requests().len();
    let stop_b = CancellationToken::new();
    let (mut b, _task_b) = leader::spawn(client.clone(), patient("b"), stop_b.clone());
    standbys_asked_and_watching(&sim, before, 1, 1).await;
    assert!(!*b.borrow(), "a leads");

    stop_a.cancel();
    task_a.await.expect("a released the lease");
    until(&mut b, true).await;
    stop_b.cancel();
}

#[tokio::test]
async fn of_two_standbys_seeing_a_release_exactly_one_takes_the_lease() {
    let sim = KubeSim::start(SimConfig::default()).await.expect("kube-sim starts");
    let client = kubesent_common::kube_client(Some(&sim.url())).await.expect("client");
    let stop_a = CancellationToken::new();
    let (mut a, task_a) = leader::spawn(client.clone(), patient("a"), stop_a.clone());
    until(&mut a, true).await;
    let before = sim.requests().len();
    let stop = CancellationToken::new();
    let (mut b, _task_b) = leader::spawn(client.clone(), patient("b"), stop.clone());
    let (mut c, _task_c) = leader::spawn(client.clone(), patient("c"), stop.clone());
    standbys_asked_and_watching(&sim, before, 2, 2).await;
    let patches =
        || sim.requests().iter().filter(|r| r.method == "PATCH" && r.path.starts_with(LEASES)).count();

    stop_a.cancel();
    task_a.await.expect("a released the lease");
    // One takes it; wait for both attempts to have been answered before looking at the other.
    tokio::time::timeout(PATIENCE, async {
        tokio::select! {
            _ = b.wait_for(|leading| *leading) => {}
            _ = c.wait_for(|leading| *leading) => {}
        }
        // a's release, then b's and c's attempts.
        while patches() < 3 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("a standby took the lease and both tried");
    let (b_leads, c_leads) = (*b.borrow(), *c.borrow());
    assert!(b_leads != c_leads, "exactly one leads (b: {b_leads}, c: {c_leads})");
    let conflicts = sim.requests().iter().filter(|r| r.method == "PATCH" && r.status == 409).count();
    assert_eq!(conflicts, 1, "the other was refused by the resourceVersion");
    stop.cancel();
}

#[tokio::test]
async fn a_leader_cut_off_from_the_apiserver_steps_down_by_its_deadline_not_when_its_request_returns() {
    let sim = KubeSim::start(SimConfig::default()).await.expect("kube-sim starts");
    // Its own token, so kube-sim can cut exactly this client off.
    let client =
        kubesent_common::kube_client_with_token(Some(&sim.url()), Some("leader-a")).await.expect("client");
    let stop = CancellationToken::new();
    let (mut a, _task) = leader::spawn(client, candidate("a"), stop.clone());
    until(&mut a, true).await;
    // Every request it makes from now on hangs, as across a network partition: its renewal never
    // answers, and it must stop leading before its lease (3 s) can pass to another replica.
    sim.state().faults.partition("leader-a");
    // (Before, the election awaited the hung renewal and went on leading.)
    until(&mut a, false).await;
    sim.state().faults.heal("leader-a");
    stop.cancel();
}
