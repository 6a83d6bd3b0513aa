//! Who may act, and when: a replica acts only while it leads, and within it one task at a time drives an
//! incident.
//!
//! - [`while_leading`] runs a piece of work only as long as this replica leads and is not shutting down:
//!   the moment it stops leading (a lost lease, a stall past the lease, a graceful stop) the work is
//!   dropped, exactly as a crash would stop it, so a replica never acts beside its successor. Every step is
//!   idempotent and recorded in the intent first, so the successor continues from where it was dropped.
//! - [`Turns`] serialises the tasks of one replica that can meet on an incident (a takeover's resume, a
//!   redelivered verdict, an approval being carried out): the second waits for the first, then continues
//!   from the intent as the first left it.

use std::{
    collections::HashMap,
    future::Future,
    sync::{Arc, Mutex, PoisonError},
};

use kubesent_proto::IncidentId;
use tokio::sync::{OwnedMutexGuard, watch};
use tokio_util::sync::CancellationToken;

/// Why a piece of work was dropped before it finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dropped {
    /// This replica stopped leading.
    NotLeading,
    /// The service is shutting down.
    ShuttingDown,
}

/// Runs `work` while this replica leads; `Err` when it was dropped first (or never started: a replica that
/// does not lead does not begin).
pub(crate) async fn while_leading<T>(
    leading: &watch::Receiver<bool>,
    shutdown: &CancellationToken,
    work: impl Future<Output = T>,
) -> Result<T, Dropped> {
    let mut leading = leading.clone();
    tokio::select! {
        biased;
        () = shutdown.cancelled() => Err(Dropped::ShuttingDown),
        // Also resolves at once when this replica does not lead now, and when the election is gone.
        _ = leading.wait_for(|leads| !*leads) => Err(Dropped::NotLeading),
        done = work => Ok(done),
    }
}

/// One turn per incident among this replica's tasks.
#[derive(Debug, Default)]
pub(crate) struct Turns {
    incidents: Mutex<HashMap<IncidentId, Arc<tokio::sync::Mutex<()>>>>,
}

/// An incident's turn; the next task waiting for it goes on when this is dropped.
pub(crate) struct Turn<'a> {
    turns: &'a Turns,
    incident: IncidentId,
    guard: Option<OwnedMutexGuard<()>>,
    /// Whether another task had the turn first (the intent may have moved on since it was read).
    pub(crate) waited: bool,
}

impl Turns {
    /// Waits for `incident`'s turn.
    pub(crate) async fn take(&self, incident: &IncidentId) -> Turn<'_> {
        let lock = self
            .incidents
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(incident.clone())
            .or_default()
            .clone();
        let (guard, waited) = match lock.clone().try_lock_owned() {
            Ok(guard) => (guard, false),
            Err(_) => (lock.lock_owned().await, true),
        };
        Turn { turns: self, incident: incident.clone(), guard: Some(guard), waited }
    }

    /// Whether a task here has (or waits for) `incident`'s turn.
    pub(crate) fn busy(&self, incident: &IncidentId) -> bool {
        self.incidents.lock().unwrap_or_else(PoisonError::into_inner).contains_key(incident)
    }

    /// Incidents with a turn taken or awaited (for tests: finished turns leave nothing behind).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.incidents.lock().unwrap_or_else(PoisonError::into_inner).len()
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut incidents = self.turns.incidents.lock().unwrap_or_else(PoisonError::into_inner);
        // Nobody else holds or awaits this incident's lock: forget it.
        if incidents.get(&self.incident).is_some_and(|lock| Arc::strong_count(lock) == 1) {
            incidents.remove(&self.incident);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn incident(id: &str) -> IncidentId {
        IncidentId(id.to_owned())
    }

    #[tokio::test]
    async fn work_runs_to_its_end_while_the_replica_leads() {
        let (_tx, leading) = watch::channel(true);
        let done = while_leading(&leading, &CancellationToken::new(), async { 7 }).await;
        assert_eq!(done, Ok(7));
    }

    #[tokio::test]
    async fn a_replica_that_does_not_lead_does_not_begin() {
        let (_tx, leading) = watch::channel(false);
        let began = Arc::new(Mutex::new(false));
        let flag = began.clone();
        let done = while_leading(&leading, &CancellationToken::new(), async move {
            *flag.lock().unwrap_or_else(PoisonError::into_inner) = true;
        })
        .await;
        assert_eq!(done, Err(Dropped::NotLeading));
        assert!(!*began.lock().unwrap_or_else(PoisonError::into_inner), "the work was never polled");
    }

    #[tokio::test]
    async fn work_is_dropped_the_moment_leadership_is_lost() {
        let (tx, leading) = watch::channel(true);
        let (reached_tx, reached) = tokio::sync::oneshot::channel();
        let work = async move {
            let _ = reached_tx.send(());
            // Would act after this point; it must never get here.
            std::future::pending::<()>().await;
        };
        let fenced =
            tokio::spawn(async move { while_leading(&leading, &CancellationToken::new(), work).await });
        reached.await.expect("the work began");
        tx.send_replace(false);
        assert_eq!(fenced.await.expect("no panic"), Err(Dropped::NotLeading));
    }

    #[tokio::test]
    async fn work_is_dropped_on_shutdown() {
        let (_tx, leading) = watch::channel(true);
        let shutdown = CancellationToken::new();
        shutdown.cancel();
        let done = while_leading(&leading, &shutdown, std::future::pending::<()>()).await;
        assert_eq!(done, Err(Dropped::ShuttingDown));
    }

    #[tokio::test]
    async fn the_second_task_on_an_incident_waits_for_the_first_and_knows_it_waited() {
        let turns = Arc::new(Turns::default());
        let first = turns.take(&incident("inc-1")).await;
        assert!(!first.waited);
        let other = turns.take(&incident("inc-2")).await;
        assert!(!other.waited, "another incident does not wait");
        let waiting = {
            let turns = turns.clone();
            tokio::spawn(async move { turns.take(&incident("inc-1")).await.waited })
        };
        // The test runs on one thread: yielding lets the spawned task run until it blocks on the turn.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(!waiting.is_finished(), "the second task cannot have its turn while the first holds it");
        assert!(turns.busy(&incident("inc-1")));
        drop(first);
        assert!(waiting.await.expect("no panic"), "the second task waited");
        assert!(!turns.busy(&incident("inc-1")));
        drop(other);
        assert_eq!(turns.len(), 0, "finished turns leave nothing behind");
    }
}
