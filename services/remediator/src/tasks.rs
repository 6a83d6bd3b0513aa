//! What the leader does besides handling verdicts: finish intents left half-done when it takes over, carry
//! out approved remediations, purge finished intents past their retention.

use std::{
    collections::HashSet,
    future::Future,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use futures::StreamExt as _;
use kubesent_proto as proto;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, info, info_span, warn};

use kubesent_proto::{
    approval::{self, Choice},
    intent::{Intent, Phase},
};

use crate::{Finished, Remediator, fence, intent::IntentError};
use kubesent_common::nats::Role as NatsRole;

/// How often a leader looks for unfinished intents nobody here is driving.
const SWEEP_EVERY: Duration = Duration::from_secs(10);
/// How long listing the unfinished intents may take before it is asked again.
const LIST_TIMEOUT: Duration = Duration::from_secs(5);

impl Remediator {
    /// Whenever this replica begins to lead, finishes every intent an earlier leader left half-done, and
    /// looks again every [`SWEEP_EVERY`] while it leads, for any intent nobody here is driving (one a
    /// dropped verdict left, one a listing missed).
    pub(crate) async fn resume_on_takeover(
        self: Arc<Self>,
        mut leading: watch::Receiver<bool>,
        shutdown: CancellationToken,
    ) {
        loop {
            let is_leader = *leading.borrow_and_update();
            self.deps.metrics.leader.set(i64::from(is_leader));
            let mut next = SWEEP_EVERY;
            if is_leader {
                match tokio::time::timeout(LIST_TIMEOUT, self.intents.unfinished()).await {
                    Ok(Ok(open)) => {
                        for (intent, revision) in open {
                            if !self.turns.busy(&intent.incident) {
                                self.clone().resume(intent, revision);
                            }
                        }
                    }
                    // Not left to the verdicts' redelivery (minutes): asked again soon.
                    Ok(Err(error)) => {
                        warn!(%error, "listing unfinished intents failed; trying again");
                        next = Duration::from_secs(1);
                    }
                    Err(_) => {
                        warn!(timeout = ?LIST_TIMEOUT, "listing unfinished intents got no answer; trying again");
                        next = Duration::from_secs(1);
                    }
                }
            }
            tokio::select! {
                changed = leading.changed() => if changed.is_err() { return },
                () = tokio::time::sleep(next), if is_leader => {}
                () = shutdown.cancelled() => return,
            }
        }
    }

    /// Finishes an intent an earlier leader left half-done, in its own task, while this replica leads.
    fn resume(self: Arc<Self>, intent: Intent, revision: u64) {
        if matches!(intent.phase, Phase::AwaitingApproval | Phase::Approved) {
            // Waiting for a human, or for the decisions task to carry it out.
            return;
        }
        info!(incident = %intent.incident, phase = ?intent.phase, "finishing an intent left half-done");
        // An approved one under way had its verdict acknowledged when it began to wait; any other's verdict
        // is redelivered after its ack wait and then finds the outcome already recorded (same message id).
        let span = info_span!(parent: None, "resume", incident = %intent.incident);
        self.clone().spawn_while_leading(self.finish(intent, revision, "a resumed intent").instrument(span));
    }

    /// Drives an intent to its end and records its outcome. A failed step is tried again from the intent
    /// as it then stands (another task may have moved it on), a few times with back-off; what still fails
    /// is left to the verdict's redelivery or the next leader.
    pub(crate) async fn finish(self: Arc<Self>, intent: Intent, revision: u64, what: &'static str) {
        const ATTEMPTS: u32 = 6;
        let (incident, pod, action) = (intent.incident.clone(), intent.target.clone(), intent.action.clone());
        let verdict = intent.verdict.clone();
        let (mut intent, mut revision) = (intent, revision);
        let mut backoff = kubesent_common::Backoff::new(Duration::from_millis(500), Duration::from_secs(8));
        for attempt in 1..=ATTEMPTS {
            match self.drive(intent.clone(), revision, crate::HandOff::Never).await {
                Ok(finished) => match self
                    .record_for(&incident, &pod, &action, verdict.as_deref(), finished)
                    .await
                {
                    Ok(()) => return,
                    Err(error) => warn!(%error, attempt, what, "recording the outcome failed; trying again"),
                },
                Err(error) => warn!(%error, attempt, what, "a remediation step failed; trying again"),
            }
            tokio::time::sleep(backoff.next_delay()).await;
            match self.intents.get(&incident).await {
                Ok(Some((current, current_revision))) => (intent, revision) = (current, current_revision),
                Ok(None) => return,
                Err(error) => warn!(%error, "re-reading the intent failed"),
            }
        }
        warn!(what, "a remediation kept failing; the verdict's redelivery or the next leader finishes it");
    }

    /// While leading, purges finished intents older than the retention, at a tenth of it (at most hourly).
    pub(crate) async fn purge_old_intents(
        self: Arc<Self>,
        mut leading: watch::Receiver<bool>,
        shutdown: CancellationToken,
    ) {
        let every =
            (self.config.intent_retention / 10).clamp(Duration::from_secs(1), Duration::from_secs(3600));
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                led = leading.wait_for(|leads| *leads) => if led.is_err() { return },
            }
            let retention = jiff::SignedDuration::try_from(self.config.intent_retention)
                .unwrap_or(jiff::SignedDuration::MAX);
            let cutoff = jiff::Timestamp::now().checked_sub(retention).unwrap_or(jiff::Timestamp::MIN);
            match self.intents.purge_finished_before(cutoff).await {
                Ok(0) => {}
                Ok(purged) => info!(purged, "purged finished intents past their retention"),
                Err(error) => warn!(%error, "purging old intents failed; trying again later"),
            }
            // A suggestion is approved within a day or not at all: its cluster has moved on since.
            let suggested_cutoff = jiff::Timestamp::now() - jiff::SignedDuration::from_hours(24);
            match self.intents.purge_suggested_before(suggested_cutoff.max(cutoff)).await {
                Ok(0) => {}
                Ok(purged) => info!(purged, "purged suggested verdicts nobody approved"),
                Err(error) => warn!(%error, "purging old suggested verdicts failed; trying again later"),
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
        }
    }

    /// While leading, takes every operator decision (`kubesent approve`, `kubesent reject`): approved
    /// remediations are carried out (after checking them against the cluster again), rejected ones are
    /// recorded as denied. Decisions written while nobody led, and approvals an earlier leader did not
    /// finish, are taken up when leadership begins; each approval is carried out once.
    pub(crate) async fn take_decisions(
        self: Arc<Self>,
        mut leading: watch::Receiver<bool>,
        shutdown: CancellationToken,
    ) {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                led = leading.wait_for(|leads| *leads) => if led.is_err() { return },
            }
            let mut updates = match self.intents.decisions().await {
                Ok(updates) => Box::pin(updates),
                Err(error) => {
                    warn!(%error, "watching for decisions failed; trying again");
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            };
            let in_flight: Arc<Mutex<HashSet<proto::IncidentId>>> = Arc::default();
            match self.intents.unfinished().await {
                Ok(open) => {
                    for (intent, revision) in open.into_iter().filter(|(i, _)| i.phase == Phase::Approved) {
                        self.clone().carry_out(intent, revision, &in_flight);
                    }
                }
                Err(error) => warn!(%error, "listing approved intents failed"),
            }
            match self.intents.pending_decisions().await {
                Ok(pending) => {
                    for (key, value) in pending {
                        self.clone().take(&key, &value, &in_flight).await;
                    }
                }
                Err(error) => warn!(%error, "listing pending decisions failed"),
            }
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    changed = leading.changed() => {
                        if changed.is_err() { return }
                        if !*leading.borrow() { break }
                    }
                    update = updates.next() => match update {
                        Some(Ok((key, value))) => self.clone().take(&key, &value, &in_flight).await,
                        Some(Err(error)) => {
                            warn!(%error, "the decisions watch failed; watching again");
                            break;
                        }
                        None => break,
                    }
                }
            }
        }
    }

    /// Takes one decision, then removes it (a decision that cannot be taken is logged and removed too; one
    /// the store failed on stays for the next leader).
    async fn take(
        self: Arc<Self>,
        key: &str,
        value: &[u8],
        in_flight: &Arc<Mutex<HashSet<proto::IncidentId>>>,
    ) {
        let taken = match approval::read(key, value) {
            Ok(taken) => taken,
            Err(error) => {
                warn!(%error, "dropping an unreadable decision");
                self.drop_decision(key).await;
                return;
            }
        };
        // Decisions are for people: a service's user (which may write the bucket for its own work) decides
        // nothing.
        let services = [NatsRole::Detector, NatsRole::Diagnoser, NatsRole::Remediator];
        if services.iter().any(|role| role.service_name() == taken.user) {
            warn!(user = %taken.user, key, "dropping a decision written under a service's user");
            self.drop_decision(key).await;
            return;
        }
        let incident = taken.decision.incident.clone();
        let by = taken.attribution();
        let span = info_span!(parent: None, "decision", %incident, %by);
        let result = match taken.decision.decision {
            Choice::Approve => match self.intents.approve(&incident, &by).instrument(span.clone()).await {
                Ok((intent, revision)) => {
                    info!(parent: &span, "approved; carrying it out");
                    self.clone().carry_out(intent, revision, in_flight);
                    Ok(())
                }
                Err(IntentError::Unknown(_)) => match self.intents.suggested(&incident).await {
                    // Only suggested (a guardrail held it): decided again against the cluster now.
                    Ok(Some(verdict)) => {
                        info!(parent: &span, "a suggested remediation approved; deciding it again");
                        self.clone().carry_out_suggested(verdict, by.clone(), span.clone(), in_flight);
                        Ok(())
                    }
                    Ok(None) => Err(IntentError::Unknown(incident.to_string())),
                    Err(error) => Err(error),
                },
                Err(error) => Err(error),
            },
            Choice::Reject => {
                let reason = taken.decision.reason.clone().unwrap_or_else(|| "rejected".into());
                match self.intents.reject(&incident, &by, &reason).instrument(span.clone()).await {
                    Ok(intent) => {
                        let finished = Finished { decided_by: Some(by.clone()), ..Finished::of(&intent) };
                        if let Err(error) = self
                            .record_for(
                                &incident,
                                &intent.target,
                                &intent.action,
                                intent.verdict.as_deref(),
                                finished,
                            )
                            .instrument(span.clone())
                            .await
                        {
                            warn!(parent: &span, %error, "recording the rejection failed");
                        }
                        Ok(())
                    }
                    Err(error) => Err(error),
                }
            }
        };
        match result {
            Ok(()) => {}
            Err(error @ (IntentError::NotAwaitingApproval { .. } | IntentError::Unknown(_))) => {
                info!(parent: &span, %error, "the decision has nothing to decide; dropped");
            }
            Err(error) => {
                warn!(parent: &span, %error, "taking the decision failed; the next leader takes it");
                return;
            }
        }
        self.drop_decision(key).await;
    }

    async fn drop_decision(&self, key: &str) {
        if let Err(error) = self.intents.drop_decision(key).await {
            warn!(%error, key, "removing a decision failed");
        }
    }

    /// Carries out an approved remediation in its own task, once per incident at a time.
    fn carry_out(
        self: Arc<Self>,
        intent: Intent,
        revision: u64,
        in_flight: &Arc<Mutex<HashSet<proto::IncidentId>>>,
    ) {
        let fresh = in_flight.lock().unwrap_or_else(PoisonError::into_inner).insert(intent.incident.clone());
        if !fresh {
            return;
        }
        let span = info_span!(parent: None, "approved", incident = %intent.incident);
        // In flight until the work ends or is dropped (also unpolled, when this replica stopped leading).
        let in_flight = InFlight { incidents: in_flight.clone(), incident: intent.incident.clone() };
        let remediator = self.clone();
        self.spawn_while_leading(
            async move {
                let _in_flight = in_flight;
                remediator.finish(intent, revision, "an approved remediation").await;
            }
            .instrument(span),
        );
    }

    /// Carries out a suggested verdict a human approved, in its own task, once per incident at a time: it
    /// is decided again against the cluster (the kill switch still holds) and its outcome is attributed.
    fn carry_out_suggested(
        self: Arc<Self>,
        verdict: proto::Verdict,
        by: String,
        span: tracing::Span,
        in_flight: &Arc<Mutex<HashSet<proto::IncidentId>>>,
    ) {
        let fresh = in_flight.lock().unwrap_or_else(PoisonError::into_inner).insert(verdict.incident.clone());
        if !fresh {
            return;
        }
        let in_flight = InFlight { incidents: in_flight.clone(), incident: verdict.incident.clone() };
        let remediator = self.clone();
        self.spawn_while_leading(
            async move {
                let _in_flight = in_flight;
                match remediator.remediate_and_record(&verdict, Some(&by)).await {
                    Ok(()) => {
                        if let Err(error) = remediator.intents.forget_suggested(&verdict.incident).await {
                            warn!(%error, "forgetting the approved suggestion failed");
                        }
                    }
                    Err(error) => warn!(%error, "the approved suggestion failed; approve it again"),
                }
            }
            .instrument(span),
        );
    }

    /// Runs `work` in its own task while this replica leads ([`fence::while_leading`]).
    pub(crate) fn spawn_while_leading(self: Arc<Self>, work: impl Future<Output = ()> + Send + 'static) {
        tokio::spawn(async move {
            if let Err(dropped) = fence::while_leading(&self.leading, &self.shutdown, work).await {
                info!(?dropped, "stopped acting: the next leader continues from the intent");
            }
        });
    }
}

/// Marks an incident's approval as being carried out, until dropped.
struct InFlight {
    incidents: Arc<Mutex<HashSet<proto::IncidentId>>>,
    incident: proto::IncidentId,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.incidents.lock().unwrap_or_else(PoisonError::into_inner).remove(&self.incident);
    }
}
