//! Leader election on a coordination.k8s.io Lease with kube-leader-election.
//!
//! NB: the lease gives no fencing (two replicas can both believe they lead for a moment), so KubeSent
//! never relies on it for safety: JetStream dedup, KV compare-and-set locks and API preconditions do.
//! Leadership only decides who does the work.

use std::time::{Duration, Instant};

use futures::StreamExt as _;
use k8s_openapi::{api::coordination::v1::Lease, apimachinery::pkg::apis::meta::v1::MicroTime};
use kube::api::{Patch, PatchParams};
use kube_leader_election::{LeaseLock, LeaseLockParams, LeaseLockResult};
use kube_runtime::{WatchStreamExt as _, watcher};
use tokio::{sync::watch, task::JoinHandle};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// How often a standby asks for the lease when it sees no change of it (at most; a third of the lease
/// when that is shorter). A standby also watches the Lease and asks at once when it changes, so a lease
/// released on a graceful shutdown is taken over in the time of one watch event and one request.
pub const STANDBY_POLL: std::time::Duration = std::time::Duration::from_secs(1);

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
    /// How often a standby asks for the lease without seeing it change ([`STANDBY_POLL`]; capped at a
    /// third of the lease).
    pub standby_poll: Duration,
}

/// Starts competing for the lease. The receiver says whether this replica leads; it turns false when
/// renewals fail for two thirds of the lease (fail closed). When `step_down` is cancelled the lease is
/// released.
pub fn spawn(
    client: kube::Client,
    config: LeaderConfig,
    step_down: CancellationToken,
) -> (watch::Receiver<bool>, JoinHandle<()>) {
    let (tx, rx) = watch::channel(false);
    let task = tokio::spawn(async move {
        let leases = kube::Api::<Lease>::namespaced(client.clone(), &config.namespace);
        let mut changes = watcher(
            leases.clone(),
            watcher::Config::default().fields(&format!("metadata.name={}", config.lease_name)),
        )
        .default_backoff()
        .boxed();
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
        let mut watching = true;
        let mut last_renewal: Option<Instant> = None;
        let mut ask = true;
        loop {
            // A renewal that hangs (an apiserver partition) must not keep a leader leading past its
            // deadline: the request gets only the time left until then.
            // A standby's request gets the whole deadline.
            let left = match last_renewal {
                Some(t) if *tx.borrow() => renew_deadline.saturating_sub(t.elapsed()),
                _ => renew_deadline,
            };
            let asked = if ask {
                Some(
                    tokio::time::timeout(left.max(Duration::from_millis(100)), lock.try_acquire_or_renew())
                        .await,
                )
            } else {
                None
            };
            ask = true;
            match asked {
                None => {}
                Some(Err(_elapsed)) => {
                    warn!(lease = %config.lease_name, waited = ?left, "lease renewal got no answer in time");
                    if last_renewal.is_none_or(|t| t.elapsed() >= renew_deadline) {
                        last_renewal = None;
                        if tx.send_if_modified(|leading| std::mem::replace(leading, false)) {
                            warn!(lease = %config.lease_name, "stepping down: lease not renewed within the deadline");
                        }
                    }
                }
                Some(Ok(Ok(LeaseLockResult::Acquired(_)))) => {
                    last_renewal = Some(Instant::now());
                    if tx.send_if_modified(|leading| !std::mem::replace(leading, true)) {
                        info!(lease = %config.lease_name, identity = %config.identity, "acquired leadership");
                    }
                }
                Some(Ok(Ok(LeaseLockResult::NotAcquired(_)))) => {
                    last_renewal = None;
                    if tx.send_if_modified(|leading| std::mem::replace(leading, false)) {
                        warn!(lease = %config.lease_name, "lost leadership");
                    }
                }
                Some(Ok(Err(error))) => {
                    warn!(lease = %config.lease_name, %error, "lease renewal failed");
                    if last_renewal.is_none_or(|t| t.elapsed() >= renew_deadline)
                        && tx.send_if_modified(|leading| std::mem::replace(leading, false))
                    {
                        warn!(lease = %config.lease_name, "stepping down: lease not renewed within the deadline");
                    }
                }
            }
            // A leader renews every third of the lease; a standby asks every second (at most) and
            // whenever the Lease changes (released, taken, renewed).
            let leading = *tx.borrow();
            let next_try = tokio::time::Instant::now()
                + if leading { renew_every } else { renew_every.min(config.standby_poll) };
            let wake = loop {
                tokio::select! {
                    () = tokio::time::sleep_until(next_try) => break Wake::Ask,
                    change = changes.next(), if watching => match change {
                        Some(Ok(watcher::Event::Apply(lease) | watcher::Event::InitApply(lease))) if !leading => {
                            break if released(&lease) { Wake::Released(Box::new(lease)) } else { Wake::Ask };
                        }
                        Some(Ok(watcher::Event::Delete(_))) if !leading => break Wake::Ask,
                        // A leader's own renewals change the Lease too: it keeps its rhythm. Watch
                        // errors are retried by the watcher with back-off; the poll covers the gap.
                        Some(_) => {}
                        None => watching = false,
                    },
                    () = step_down.cancelled() => break Wake::Stop,
                }
            };
            match wake {
                Wake::Stop => break,
                Wake::Ask => {}
                Wake::Released(lease) => {
                    // kube-leader-election releases a lease by emptying its holder with a one-second
                    // duration, and acquires only expired leases: without this, every graceful hand-over
                    // would wait out that second and the next poll.
                    if take_released(&leases, &lease, &config).await {
                        last_renewal = Some(Instant::now());
                        tx.send_replace(true);
                        info!(lease = %config.lease_name, identity = %config.identity, "acquired leadership (the lease was released)");
                        ask = false;
                    }
                }
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

/// What woke an election waiting between requests.
enum Wake {
    /// Time to renew, or the Lease changed: ask for it.
    Ask,
    /// The Lease was released by its holder: take it at once.
    Released(Box<Lease>),
    /// Shutdown.
    Stop,
}

/// Whether a Lease has no holder (its holder stepped down).
pub fn released(lease: &Lease) -> bool {
    lease.spec.as_ref().and_then(|s| s.holder_identity.as_deref()).is_none_or(str::is_empty)
}

/// Takes a released Lease for `config.identity` with a merge patch that names the resourceVersion it was
/// seen at (an optimistic-lock precondition, and only the `patch` verb the election already needs): of
/// several standbys seeing the release, exactly one wins; the others get a conflict and stay standbys.
async fn take_released(api: &kube::Api<Lease>, lease: &Lease, config: &LeaderConfig) -> bool {
    let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
    let transitions = lease.spec.as_ref().and_then(|s| s.lease_transitions).unwrap_or(0).saturating_add(1);
    let patch = serde_json::json!({
        "metadata": {"resourceVersion": lease.metadata.resource_version},
        "spec": {
            "holderIdentity": config.identity,
            "acquireTime": now,
            "renewTime": now,
            "leaseDurationSeconds": i32::try_from(config.ttl.as_secs()).unwrap_or(i32::MAX),
            "leaseTransitions": transitions,
        }
    });
    match api.patch(&config.lease_name, &PatchParams::default(), &Patch::Merge(&patch)).await {
        Ok(_) => true,
        Err(kube::Error::Api(status)) if status.code == 409 => false,
        Err(error) => {
            warn!(lease = %config.lease_name, %error, "could not take the released lease");
            false
        }
    }
}

/// This replica's leadership for the lifetime of a service: elected on a Lease, or permanent without one.
/// The lease is held until [`Leadership::release`], which a service calls once its own work has stopped
/// (never at the first sign of a shutdown: a leader that released its lease while still acting would act
/// beside its successor). Dropping it (a crash) stops the election without releasing the lease.
pub struct Leadership {
    leading: watch::Receiver<bool>,
    election: Option<(crate::AbortOnDrop<()>, CancellationToken)>,
    // NB: a permanent leader's sender must live as long as the receivers, or they see it closed.
    _permanent: Option<watch::Sender<bool>>,
}

impl Leadership {
    /// Competes for `config`'s lease, or leads permanently when `config` is `None`.
    pub fn new(client: kube::Client, config: Option<LeaderConfig>) -> Self {
        match config {
            Some(config) => {
                let step_down = CancellationToken::new();
                let (leading, task) = spawn(client, config, step_down.clone());
                Self { leading, election: Some((crate::AbortOnDrop::new(task), step_down)), _permanent: None }
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

    /// Steps down and releases the lease (call once the service's work has stopped); waits until it is
    /// released.
    pub async fn release(self) {
        if let Some((election, step_down)) = self.election {
            step_down.cancel();
            election.join().await;
        }
    }
}

/// Leader election flags.
#[derive(Debug, Clone, clap::Args)]
pub struct LeaderArgs {
    /// Compete for a Lease and act only while holding it (turn off for a single replica).
    #[arg(long, env = "KUBESENT_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_election: bool,
    /// Lease duration in seconds (3 to 3600).
    #[arg(long, env = "KUBESENT_LEASE_SECONDS", default_value_t = 15)]
    pub lease_seconds: u64,
}

impl LeaderArgs {
    /// The election settings for `lease_name`, or `None` when leader election is off.
    pub fn config(&self, common: &crate::CommonArgs, lease_name: &str) -> Option<LeaderConfig> {
        self.leader_election.then(|| LeaderConfig {
            namespace: common.lease_namespace.clone(),
            lease_name: lease_name.to_owned(),
            identity: common.identity.clone(),
            ttl: Duration::from_secs(self.lease_seconds.clamp(3, 3600)),
            standby_poll: STANDBY_POLL,
        })
    }
}
