//! Leader election on a coordination.k8s.io Lease with kube-leader-election.
//!
//! NB: the lease gives no fencing (two replicas can both believe they lead for a moment), so KubeSent
//! never relies on it for safety: JetStream dedup, KV compare-and-set locks and API preconditions do.
//! Leadership only decides who does the work.

use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::{api::coordination::v1::Lease, apimachinery::pkg::apis::meta::v1::MicroTime};
use kube::api::{Patch, PatchParams};
use kube_leader_election::{LeaseLock, LeaseLockParams, LeaseLockResult};
use kube_runtime::{WatchStreamExt as _, watcher};
use tokio::{sync::watch, task::JoinHandle, time::Instant};
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
        let timing = Timing::of(&config);
        let mut watching = true;
        let mut term = Term::default();
        let mut ask = true;
        loop {
            let asked = if ask {
                let timeout = timing.request_timeout(term, Instant::now());
                Some(match tokio::time::timeout(timeout, lock.try_acquire_or_renew()).await {
                    Err(_elapsed) => {
                        warn!(lease = %config.lease_name, waited = ?timeout, "lease renewal got no answer in time");
                        Answer::TimedOut
                    }
                    Ok(Ok(LeaseLockResult::Acquired(_))) => Answer::Acquired,
                    Ok(Ok(LeaseLockResult::NotAcquired(_))) => Answer::NotAcquired,
                    Ok(Err(error)) => {
                        warn!(lease = %config.lease_name, %error, "lease renewal failed");
                        Answer::Failed
                    }
                })
            } else {
                None
            };
            ask = true;
            if let Some(answer) = asked {
                let next = timing.after(term, answer, Instant::now());
                match (term.leading, next.leading) {
                    (false, true) => {
                        info!(lease = %config.lease_name, identity = %config.identity, "acquired leadership")
                    }
                    (true, false) if answer == Answer::NotAcquired => {
                        warn!(lease = %config.lease_name, "lost leadership")
                    }
                    (true, false) => {
                        warn!(lease = %config.lease_name, "stepping down: lease not renewed within the deadline")
                    }
                    _ => {}
                }
                term = next;
                tx.send_if_modified(|leading| std::mem::replace(leading, term.leading) != term.leading);
            }
            // A leader renews every third of the lease; a standby asks every second (at most) and
            // whenever the Lease changes (released, taken, renewed).
            let leading = term.leading;
            let next_try = timing.next_ask(term, Instant::now());
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
                        term = Term { leading: true, last_renewal: Some(Instant::now()) };
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

/// What a lease request came back with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// This replica holds the lease (acquired or renewed).
    Acquired,
    /// Another replica holds it.
    NotAcquired,
    /// The request failed (an API error).
    Failed,
    /// No answer within the request's timeout.
    TimedOut,
}

/// An election's memory between requests: whether this replica leads, and when it last renewed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Term {
    /// Whether it leads.
    pub leading: bool,
    /// Its last successful renewal, while it leads.
    pub last_renewal: Option<Instant>,
}

/// The timing of an election, from the lease duration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// A leader renews every third of the lease.
    pub renew_every: Duration,
    /// A leader that could not renew for two thirds of the lease steps down (before it expires for the
    /// others).
    pub renew_deadline: Duration,
    /// A standby asks this often without seeing the Lease change.
    pub standby_poll: Duration,
}

impl Timing {
    /// The timing of `config`'s lease.
    pub fn of(config: &LeaderConfig) -> Self {
        Self {
            renew_every: config.ttl / 3,
            renew_deadline: config.ttl * 2 / 3,
            standby_poll: config.standby_poll.min(config.ttl / 3),
        }
    }

    /// How long the next request may wait for its answer: a leader gets only what is left until its
    /// renewal deadline (a renewal that hangs on a partitioned apiserver must not keep it leading past
    /// it), at least 100 ms; a standby gets the whole deadline.
    pub fn request_timeout(&self, term: Term, now: Instant) -> Duration {
        let left = match term.last_renewal {
            Some(renewed) if term.leading => {
                self.renew_deadline.saturating_sub(now.saturating_duration_since(renewed))
            }
            _ => self.renew_deadline,
        };
        left.max(Duration::from_millis(100))
    }

    /// When to ask again after a request at `now`.
    pub fn next_ask(&self, term: Term, now: Instant) -> Instant {
        now + if term.leading { self.renew_every } else { self.standby_poll }
    }

    /// The term after a request answered `answer` at `now`: leading on an acquisition; a standby at once
    /// when another replica holds the lease; after a failed or unanswered request, a leader keeps leading
    /// until its last renewal is older than the deadline, then steps down (fail closed).
    pub fn after(&self, term: Term, answer: Answer, now: Instant) -> Term {
        match answer {
            Answer::Acquired => Term { leading: true, last_renewal: Some(now) },
            Answer::NotAcquired => Term::default(),
            Answer::Failed | Answer::TimedOut => {
                let overdue = term
                    .last_renewal
                    .is_none_or(|renewed| now.saturating_duration_since(renewed) >= self.renew_deadline);
                if overdue { Term::default() } else { term }
            }
        }
    }
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
            identity: common.process.identity.clone(),
            ttl: Duration::from_secs(self.lease_seconds.clamp(3, 3600)),
            standby_poll: STANDBY_POLL,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timing() -> Timing {
        let config = LeaderConfig {
            namespace: "kubesent".into(),
            lease_name: "kubesent-remediator".into(),
            identity: "remediator-0".into(),
            ttl: Duration::from_secs(15),
            standby_poll: STANDBY_POLL,
        };
        Timing::of(&config)
    }

    #[tokio::test(start_paused = true)]
    async fn a_leader_that_cannot_renew_keeps_leading_until_its_deadline_then_steps_down() {
        let timing = timing();
        assert_eq!(timing.renew_every, Duration::from_secs(5));
        assert_eq!(timing.renew_deadline, Duration::from_secs(10));
        let term = timing.after(Term::default(), Answer::Acquired, Instant::now());
        assert!(term.leading);
        assert_eq!(timing.request_timeout(term, Instant::now()), Duration::from_secs(10));

        tokio::time::advance(Duration::from_secs(5)).await;
        let term = timing.after(term, Answer::Failed, Instant::now());
        assert!(term.leading, "5 s after its renewal a failed renewal is no reason to step down");
        assert_eq!(
            timing.request_timeout(term, Instant::now()),
            Duration::from_secs(5),
            "the next renewal may wait only what is left of the deadline"
        );

        tokio::time::advance(Duration::from_millis(4_999)).await;
        let still = timing.after(term, Answer::TimedOut, Instant::now());
        assert!(still.leading, "1 ms before the deadline");
        assert_eq!(
            timing.request_timeout(still, Instant::now()),
            Duration::from_millis(100),
            "at least 100 ms"
        );

        tokio::time::advance(Duration::from_millis(1)).await;
        let stepped_down = timing.after(still, Answer::TimedOut, Instant::now());
        assert_eq!(stepped_down, Term::default(), "at the deadline, before the lease expires for the others");
    }

    #[tokio::test(start_paused = true)]
    async fn a_renewal_resets_the_deadline_and_another_holder_ends_the_term_at_once() {
        let timing = timing();
        let term = timing.after(Term::default(), Answer::Acquired, Instant::now());
        tokio::time::advance(Duration::from_secs(9)).await;
        let renewed = timing.after(term, Answer::Acquired, Instant::now());
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(timing.after(renewed, Answer::Failed, Instant::now()).leading, "9 s after the renewal");
        assert_eq!(timing.after(renewed, Answer::NotAcquired, Instant::now()), Term::default());
    }

    #[tokio::test(start_paused = true)]
    async fn a_leader_renews_every_third_of_the_lease_and_a_standby_asks_every_second() {
        let timing = timing();
        let now = Instant::now();
        let leader = Term { leading: true, last_renewal: Some(now) };
        assert_eq!(timing.next_ask(leader, now), now + Duration::from_secs(5));
        assert_eq!(timing.next_ask(Term::default(), now), now + STANDBY_POLL);
        assert_eq!(
            timing.request_timeout(Term::default(), now),
            Duration::from_secs(10),
            "a standby waits the deadline"
        );
        assert_eq!(
            timing.after(Term::default(), Answer::Failed, now),
            Term::default(),
            "a standby stays one"
        );
        let short = Timing::of(&LeaderConfig {
            namespace: "kubesent".into(),
            lease_name: "l".into(),
            identity: "i".into(),
            ttl: Duration::from_secs(3),
            standby_poll: Duration::from_secs(5),
        });
        assert_eq!(short.standby_poll, Duration::from_secs(1), "capped at a third of the lease");
    }
}
