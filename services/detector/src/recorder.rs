//! The recorder: writes the watch side's [`ServedChange`]s to the `kubesent-revisions` bucket while this
//! replica leads (a follower's changes are the leader's to write; on taking the lead the watch side hands
//! over every revision known-good now). A failed write is retried with back-off, in order.

use std::{collections::VecDeque, sync::Arc, time::Duration};

use kubesent_common::{Backoff, served::ServedStore};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::{DetectorMetrics, RecordChange, RecordLabel, served::ServedChange};

/// Changes kept while writes fail; beyond it the oldest is dropped (a known-good revision is recorded
/// again when a replica next takes the lead).
const MAX_PENDING: usize = 50_000;

pub(crate) struct Recorder {
    pub(crate) store: ServedStore,
    pub(crate) leading: watch::Receiver<bool>,
    pub(crate) changes: mpsc::Receiver<ServedChange>,
    pub(crate) metrics: Arc<DetectorMetrics>,
}

impl Recorder {
    pub(crate) async fn run(mut self, shutdown: CancellationToken) {
        let mut pending: VecDeque<ServedChange> = VecDeque::new();
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
        loop {
            if *self.leading.borrow() {
                if let Some(change) = pending.front() {
                    match self.write(change).await {
                        Ok(()) => {
                            pending.pop_front();
                            backoff.reset();
                        }
                        Err(error) => {
                            self.metrics.revision_record_failures.inc();
                            let delay = backoff.next_delay();
                            warn!(%error, retry_in = ?delay, pending = pending.len(), "recording a revision's health failed; will retry");
                            tokio::select! {
                                () = tokio::time::sleep(delay) => {}
                                () = shutdown.cancelled() => return,
                            }
                        }
                    }
                    continue;
                }
            } else {
                // A follower records nothing: what it saw is recorded by the leader.
                pending.clear();
            }
            tokio::select! {
                change = self.changes.recv() => match change {
                    Some(change) => {
                        if *self.leading.borrow() {
                            if pending.len() >= MAX_PENDING {
                                pending.pop_front();
                            }
                            pending.push_back(change);
                        }
                    }
                    None => return,
                },
                changed = self.leading.changed() => if changed.is_err() { return },
                () = shutdown.cancelled() => return,
            }
        }
    }

    async fn write(&self, change: &ServedChange) -> Result<(), kubesent_common::served::ServedError> {
        let (namespace, workload) = change.workload();
        let (written, label) = match change {
            ServedChange::KnownGood { uid, served, .. } => (
                self.store
                    .update(namespace, workload, uid, |record| record.record(uid, served.clone()))
                    .await?,
                RecordChange::KnownGood,
            ),
            ServedChange::Ended { uid, revision, at, .. } => (
                self.store.update(namespace, workload, uid, |record| record.end(uid, revision, *at)).await?,
                RecordChange::Ended,
            ),
        };
        if written {
            self.metrics.revisions_recorded.get_or_create(&RecordLabel { change: label }).inc();
            self.metrics.notify();
            debug!(%namespace, %workload, change = label.as_str(), "revision health recorded");
        }
        Ok(())
    }
}
