//! Leader election on a coordination.k8s.io Lease with kube-leader-election.
//!
//! NB: the lease gives no fencing (two replicas can both believe they lead for a moment), so KubeSent
//! never relies on it for safety: JetStream dedup, KV compare-and-set locks and API preconditions do.
//! Leadership only decides who does the work.

use std::time::{Duration, Instant};

use kube_leader_election::{LeaseLock, LeaseLockParams, LeaseLockResult};
use tokio::{sync::watch, task::JoinHandle};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// How often a standby asks for the lease (at most; a third of the lease when that is shorter).
const STANDBY_POLL: std::time::Duration = std::time::Duration::from_secs(1);

/// Where the lease lives and who competes for it.
#[derive(Debug, Clone)]
pub struct LeaderConfig {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Name of the Lease (one per service).
    pub lease_name: String,
    /// This replica's identity (the pod name).
    pub identity: String,
    /// Lease duration; renewals happen every third of it.
    pub ttl: Duration,
}

/// Starts competing for the lease. The receiver says whether this replica leads; it turns false when
/// renewals fail for two thirds of the lease (fail closed). On `shutdown` the lease is released.
pub fn spawn(
    client: kube::Client,
    config: LeaderConfig,
    shutdown: CancellationToken,
) -> (watch::Receiver<bool>, JoinHandle<()>) {
    let (tx, rx) = watch::channel(false);
    let task = tokio::spawn(async move {
        let lock = LeaseLock::new(
            client,
            &config.namespace,
            LeaseLockParams {
                lease_name: config.lease_name.clone(),
                holder_id: config.identity.clone(),
                lease_ttl: config.ttl,
            },
        );
        let renew_every = config.ttl / 3;
        let renew_deadline = config.ttl * 2 / 3;
        let mut last_renewal: Option<Instant> = None;
        loop {
            match lock.try_acquire_or_renew().await {
                Ok(LeaseLockResult::Acquired(_)) => {
                    last_renewal = Some(Instant::now());
                    if tx.send_if_modified(|leading| !std::mem::replace(leading, true)) {
                        info!(lease = %config.lease_name, identity = %config.identity, "acquired leadership");
                    }
                }
                Ok(LeaseLockResult::NotAcquired(_)) => {
                    last_renewal = None;
                    if tx.send_if_modified(|leading| std::mem::replace(leading, false)) {
                        warn!(lease = %config.lease_name, "lost leadership");
                    }
                }
                Err(error) => {
                    warn!(lease = %config.lease_name, %error, "lease renewal failed");
                    if last_renewal.is_none_or(|t| t.elapsed() >= renew_deadline)
                        && tx.send_if_modified(|leading| std::mem::replace(leading, false))
                    {
                        warn!(lease = %config.lease_name, "stepping down: lease not renewed within the deadline");
                    }
                }
            }
            // A leader renews every third of the lease; a standby asks every second (at most), so a
            // lease released on a graceful shutdown is taken over within about a second.
            let wait = if *tx.borrow() { renew_every } else { renew_every.min(STANDBY_POLL) };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = shutdown.cancelled() => break,
            }
        }
        if *tx.borrow() {
            tx.send_replace(false);
            match lock.step_down().await {
                Ok(()) => info!(lease = %config.lease_name, "released the lease"),
                Err(error) => warn!(lease = %config.lease_name, %error, "could not release the lease"),
            }
        }
    });
    (rx, task)
}

/// This replica's leadership for the lifetime of a service: elected on a Lease, or permanent without one.
/// Dropping it (a crash) stops the election without releasing the lease; [`Leadership::release`] (after
/// `shutdown`) lets the election step down.
pub struct Leadership {
    leading: watch::Receiver<bool>,
    election: Option<crate::AbortOnDrop<()>>,
    // NB: a permanent leader's sender must live as long as the receivers, or they see it closed.
    _permanent: Option<watch::Sender<bool>>,
}

impl Leadership {
    /// Competes for `config`'s lease, or leads permanently when `config` is `None`.
    pub fn new(client: kube::Client, config: Option<LeaderConfig>, shutdown: CancellationToken) -> Self {
        match config {
            Some(config) => {
                let (leading, task) = spawn(client, config, shutdown);
                Self { leading, election: Some(crate::AbortOnDrop::new(task)), _permanent: None }
            }
            None => {
                let (tx, leading) = watch::channel(true);
                Self { leading, election: None, _permanent: Some(tx) }
            }
        }
    }

    /// Whether this replica leads, as a watch.
    pub fn watch(&self) -> watch::Receiver<bool> {
        self.leading.clone()
    }

    /// Waits for the election to step down (call after cancelling its shutdown token).
    pub async fn release(self) {
        if let Some(election) = self.election {
            election.join().await;
        }
    }
}
