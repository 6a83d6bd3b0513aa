//! The record that earns (or costs) a class its autonomy: every outcome the agreement rules count
//! ([`proto::autonomy::judge`]) is kept in its class's record; a class whose automatic fixes were harmful
//! `--demote-after` times within `--demote-window` drops to `approve` at once (a breaker per class); a
//! class whose record earns a promotion is announced once (and promoted, with `--auto-promote`);
//! operators' `kubesent policy promote|demote|reset` requests are taken here. Overrides live in the
//! intents bucket beside the intents, so every replica and every leader after this one sees them.

use std::sync::Arc;

use async_nats::jetstream::kv;
use futures::StreamExt as _;
use jiff::Timestamp;
use kubesent_common::nats::{self, Role as NatsRole};
use kubesent_proto::{
    self as proto, Outcome,
    autonomy::{
        self as earned, ActionClass, ClassRecord, Judgement, Mode, Override, PolicyChange, PolicyEvent,
        PolicyRequest, PolicyStep, RecordEntry, Tally,
    },
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{Remediator, StepError, autonomy, intent::IntentError};

/// The name automatic changes are attributed to.
pub const KUBESENT: &str = "kubesent";
/// Attempts at a compare-and-set of a class record before giving up on one judgement.
const CAS_ATTEMPTS: usize = 8;

fn store_error(error: impl std::fmt::Display) -> IntentError {
    IntentError::Store(error.to_string())
}

/// The class records and overrides in the intents bucket.
#[derive(Clone)]
pub struct Records {
    kv: kv::Store,
}

impl Records {
    /// Wraps the bucket.
    pub fn new(kv: kv::Store) -> Self {
        Self { kv }
    }

    /// `class`'s record and its revision (`None`: never written).
    pub async fn record(&self, class: ActionClass) -> Result<(ClassRecord, Option<u64>), IntentError> {
        match self.kv.entry(earned::record_key(class)).await.map_err(store_error)? {
            Some(entry) if entry.operation == kv::Operation::Put => {
                let record = serde_json::from_slice(&entry.value).unwrap_or_else(|error| {
                    warn!(%error, class = class.as_str(), "an unreadable class record starts again");
                    ClassRecord::default()
                });
                Ok((record, Some(entry.revision)))
            }
            _ => Ok((ClassRecord::default(), None)),
        }
    }

    /// Changes `class`'s record with `change`, compare-and-set; returns the record written.
    pub async fn change(
        &self,
        class: ActionClass,
        change: impl Fn(&mut ClassRecord),
    ) -> Result<ClassRecord, IntentError> {
        let key = earned::record_key(class);
        for _ in 0..CAS_ATTEMPTS {
            let (mut record, revision) = self.record(class).await?;
            change(&mut record);
            let payload = serde_json::to_vec(&record).map_err(store_error)?;
            let written: Result<(), Box<dyn std::error::Error + Send + Sync>> = match revision {
                Some(revision) => {
                    self.kv.update(&key, payload.into(), revision).await.map(|_| ()).map_err(Into::into)
                }
                None => self.kv.create(&key, payload.into()).await.map(|_| ()).map_err(Into::into),
            };
            match written {
                Ok(()) => return Ok(record),
                Err(error) if nats::is_cas_conflict(error.as_ref()) => {}
                Err(error) => return Err(store_error(error)),
            }
        }
        Err(IntentError::Conflict(key))
    }

    /// The overrides in force for `class` in `namespace`.
    pub async fn overrides(
        &self,
        class: ActionClass,
        namespace: &str,
    ) -> Result<autonomy::Overrides, IntentError> {
        Ok(autonomy::Overrides {
            cluster: self.stored_override(class, None).await?.as_ref().map(autonomy::Override::of),
            namespace: match namespace {
                "" => None,
                ns => self.stored_override(class, Some(ns)).await?.as_ref().map(autonomy::Override::of),
            },
        })
    }

    /// The override stored for `class` (in `namespace`), if any.
    pub async fn stored_override(
        &self,
        class: ActionClass,
        namespace: Option<&str>,
    ) -> Result<Option<Override>, IntentError> {
        let key = earned::override_key(class, namespace).map_err(store_error)?;
        let Some(bytes) = self.kv.get(&key).await.map_err(store_error)? else { return Ok(None) };
        match serde_json::from_slice::<Override>(&bytes) {
            Ok(set) if set.schema == proto::SCHEMA_VERSION => Ok(Some(set)),
            _ => {
                warn!(key, "ignoring an unreadable autonomy override");
                Ok(None)
            }
        }
    }

    /// Sets (`Some`) or removes the override of `class` (in `namespace`).
    pub async fn set_override(
        &self,
        class: ActionClass,
        namespace: Option<&str>,
        set: Option<&Override>,
    ) -> Result<(), IntentError> {
        let key = earned::override_key(class, namespace).map_err(store_error)?;
        match set {
            Some(set) => {
                let payload = serde_json::to_vec(set).map_err(store_error)?;
                self.kv.put(&key, payload.into()).await.map(|_| ()).map_err(store_error)
            }
            None => self.kv.purge(&key).await.map_err(store_error),
        }
    }

    /// Every operator request written under `policy.>`, from now on: key, value and revision.
    pub async fn requests(
        &self,
    ) -> Result<
        impl futures::Stream<Item = Result<(String, bytes::Bytes, u64), IntentError>> + use<>,
        IntentError,
    > {
        let updates = self.kv.watch(format!("{}.>", earned::REQUEST_PREFIX)).await.map_err(store_error)?;
        Ok(updates.filter_map(|entry| async move {
            match entry {
                Ok(entry) if entry.operation == kv::Operation::Put => {
                    Some(Ok((entry.key, entry.value, entry.revision)))
                }
                Ok(_) => None,
                Err(error) => Some(Err(store_error(error))),
            }
        }))
    }

    /// Requests written while no remediator took them.
    pub async fn pending_requests(&self) -> Result<Vec<(String, bytes::Bytes, u64)>, IntentError> {
        let prefix = format!("{}.", earned::REQUEST_PREFIX);
        let mut keys = self.kv.keys().await.map_err(store_error)?;
        let mut pending = Vec::new();
        while let Some(key) = keys.next().await {
            let key = key.map_err(store_error)?;
            if key.starts_with(&prefix)
                && let Some(entry) = self.kv.entry(&key).await.map_err(store_error)?
                && entry.operation == kv::Operation::Put
            {
                pending.push((key, entry.value, entry.revision));
            }
        }
        Ok(pending)
    }

    /// Removes a request once taken, unless the operator wrote a newer one under its key meanwhile (that
    /// one is taken next).
    pub async fn drop_request(&self, key: &str, revision: u64) -> Result<(), IntentError> {
        match self.kv.purge_expect_revision(key, Some(revision)).await {
            Ok(()) => Ok(()),
            Err(error) if nats::is_cas_conflict(&error) => Ok(()),
            Err(error) => Err(store_error(error)),
        }
    }
}

/// `d` as people write it (`24h`, `1h 30m`).
fn friendly(d: std::time::Duration) -> String {
    format!("{:#}", jiff::SignedDuration::try_from(d).unwrap_or(jiff::SignedDuration::MAX))
}

/// Whether the harmful automatic fixes in `record` since `since` reach `threshold`.
pub fn breaker_trips(record: &ClassRecord, since: Timestamp, threshold: u32) -> bool {
    threshold > 0
        && record.tally(since, |e| e.mode == Mode::Auto && e.judgement == Judgement::Harmful).harmful
            >= threshold
}

/// The tally that decides whether a class (optionally in one namespace, or for one proposer) earns a
/// promotion.
pub fn tally(
    record: &ClassRecord,
    since: Timestamp,
    namespace: Option<&str>,
    proposer: Option<&str>,
) -> Tally {
    record.tally(since, |e| {
        namespace.is_none_or(|ns| e.namespace == ns) && proposer.is_none_or(|p| e.proposer == p)
    })
}

impl Remediator {
    /// The oldest judgement the record counts.
    fn record_since(&self) -> Timestamp {
        let window =
            jiff::SignedDuration::try_from(self.config.intent_retention).unwrap_or(jiff::SignedDuration::MAX);
        Timestamp::now().checked_sub(window).unwrap_or(Timestamp::MIN)
    }

    /// Counts a recorded outcome in its class's record, then trips the class's breaker or announces its
    /// promotion when the record says so (best effort: the audit log keeps the outcome either way).
    pub(crate) async fn count_in_record(&self, outcome: &Outcome) {
        let (Some(autonomy), Some(judgement)) = (outcome.autonomy, earned::judge(outcome)) else { return };
        self.deps
            .metrics
            .judgements
            .get_or_create(&crate::JudgementLabel {
                class: autonomy.class.as_str(),
                judgement: judgement.as_str(),
            })
            .inc();
        let entry = RecordEntry {
            incident: outcome.incident.clone(),
            namespace: outcome.pod.namespace.clone(),
            proposer: outcome
                .diagnosis
                .as_ref()
                .map_or_else(|| earned::RULES.to_owned(), |d| earned::proposer(&d.source)),
            mode: autonomy.mode,
            judgement,
            at: outcome.at,
        };
        let record = match self.records.change(autonomy.class, |record| record.add(entry.clone())).await {
            Ok(record) => record,
            Err(error) => {
                warn!(%error, "counting the outcome in its class's record failed");
                return;
            }
        };
        let result = match judgement {
            Judgement::Harmful if autonomy.mode == Mode::Auto => {
                self.trip_breaker(autonomy.class, &record).await
            }
            Judgement::Agreed => self.announce_if_earned(autonomy.class, &record).await,
            _ => Ok(()),
        };
        if let Err(error) = result {
            warn!(%error, class = autonomy.class.as_str(), "acting on the class's record failed");
        }
    }

    /// Demotes `class` to `approve` everywhere when its harmful automatic fixes reach the threshold.
    async fn trip_breaker(&self, class: ActionClass, record: &ClassRecord) -> Result<(), StepError> {
        let window = jiff::SignedDuration::try_from(self.config.earned.demote_window)
            .unwrap_or(jiff::SignedDuration::MAX);
        let mut since = Timestamp::now().checked_sub(window).unwrap_or(Timestamp::MIN);
        match self.records.stored_override(class, None).await? {
            // A demotion since the harm began already holds.
            Some(set) if set.event == PolicyEvent::Demoted && set.at >= since => return Ok(()),
            // Harm before a promotion was weighed by whoever promoted: only what came after counts.
            Some(set) if set.event == PolicyEvent::Promoted => since = since.max(set.at),
            _ => {}
        }
        if !breaker_trips(record, since, self.config.earned.demote_after) {
            return Ok(());
        }
        let harmful =
            record.tally(since, |e| e.mode == Mode::Auto && e.judgement == Judgement::Harmful).harmful;
        let why = format!(
            "{harmful} automatic {} fixes were harmful (ineffective, not landed or reverted) within {}; \
             {class} waits for approval until an operator promotes it again (`kubesent policy promote {class}`)",
            class,
            friendly(self.config.earned.demote_window),
        );
        let from = self.class_mode(class).await?;
        let to = from.stricter(Mode::Approve);
        self.change_policy(PolicyEvent::Demoted, class, None, from, to, KUBESENT, &why, record).await
    }

    /// Announces (once) that `class`'s record earns a promotion, or promotes it with `--auto-promote`.
    async fn announce_if_earned(&self, class: ActionClass, record: &ClassRecord) -> Result<(), StepError> {
        let counted = tally(record, self.record_since(), None, None);
        if counted.earns(self.config.earned.promotion).is_err() {
            if record.eligible_since.is_some() {
                self.records.change(class, |r| r.eligible_since = None).await?;
            }
            return Ok(());
        }
        let from = self.class_mode(class).await?;
        let Some(to) = from.promoted() else { return Ok(()) };
        let why = format!(
            "{} of {} judged {class} decisions agreed with people, none harmful",
            counted.agreed,
            counted.judged()
        );
        if self.config.earned.auto_promote {
            let by = format!("{KUBESENT} (--auto-promote)");
            return self.change_policy(PolicyEvent::Promoted, class, None, from, to, &by, &why, record).await;
        }
        if record.eligible_since.is_some() {
            return Ok(());
        }
        self.records.change(class, |r| r.eligible_since = Some(Timestamp::now())).await?;
        let why = format!("{why}: `kubesent policy promote {class}` moves it from {from} to {to}");
        self.publish_policy(PolicyEvent::Eligible, class, None, from, from, KUBESENT, &why, counted).await
    }

    /// The mode `class` has for every namespace: the policy file's and the overrides in force.
    pub(crate) async fn class_mode(&self, class: ActionClass) -> Result<Mode, StepError> {
        let overrides = autonomy::Overrides {
            cluster: self.records.stored_override(class, None).await?.as_ref().map(autonomy::Override::of),
            namespace: None,
        };
        let policy = self.autonomy.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        Ok(autonomy::policy_mode(&policy, class, None, &overrides).mode)
    }

    /// The mode `class` has in `namespace` (for every namespace when `None`) by the policy file and the
    /// overrides in force: what a promotion or demotion steps from.
    async fn scoped_mode(&self, class: ActionClass, namespace: Option<&str>) -> Result<Mode, StepError> {
        let Some(ns) = namespace else { return self.class_mode(class).await };
        let overrides = self.records.overrides(class, ns).await?;
        let facts = self.namespace_facts(ns).await?;
        let policy = self.autonomy.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        Ok(autonomy::policy_mode(&policy, class, Some(&facts), &overrides).mode)
    }

    /// Sets the override and records the change in the audit log.
    #[allow(clippy::too_many_arguments)]
    async fn change_policy(
        &self,
        event: PolicyEvent,
        class: ActionClass,
        namespace: Option<&str>,
        from: Mode,
        to: Mode,
        by: &str,
        why: &str,
        record: &ClassRecord,
    ) -> Result<(), StepError> {
        let set = match event {
            PolicyEvent::Promoted | PolicyEvent::Demoted => Some(Override {
                schema: proto::SCHEMA_VERSION,
                mode: to,
                event,
                by: by.to_owned(),
                why: why.to_owned(),
                at: Timestamp::now(),
            }),
            _ => None,
        };
        self.records.set_override(class, namespace, set.as_ref()).await?;
        if event == PolicyEvent::Promoted {
            self.records.change(class, |r| r.eligible_since = None).await?;
        }
        let counted = tally(record, self.record_since(), namespace, None);
        self.publish_policy(event, class, namespace, from, to, by, why, counted).await
    }

    /// Publishes a policy change to the audit log.
    #[allow(clippy::too_many_arguments)]
    async fn publish_policy(
        &self,
        event: PolicyEvent,
        class: ActionClass,
        namespace: Option<&str>,
        from: Mode,
        to: Mode,
        by: &str,
        why: &str,
        record: Tally,
    ) -> Result<(), StepError> {
        let change = PolicyChange {
            schema: proto::SCHEMA_VERSION,
            event,
            class,
            namespace: namespace.map(str::to_owned),
            from,
            to,
            by: by.to_owned(),
            why: why.to_owned(),
            record,
            at: Timestamp::now(),
        };
        let at = change.at.as_nanosecond();
        let message_id = format!("policy-{}-{class}-{}-{at}", event.as_str(), namespace.unwrap_or("all"));
        nats::publish(&self.deps.js, earned::policy_subject(event), &message_id, proto::encode(&change), &[])
            .await?;
        info!(event = event.as_str(), class = class.as_str(), ?namespace, %from, %to, %by, %why, "autonomy policy");
        Ok(())
    }

    /// Whether `model`'s own record for `class` earns it out of probation.
    pub(crate) async fn model_earned(&self, class: ActionClass, model: &str) -> Result<bool, StepError> {
        let (record, _) = self.records.record(class).await?;
        Ok(tally(&record, self.record_since(), None, Some(model)).earns(self.config.earned.promotion).is_ok())
    }

    /// Sets the class-mode gauge of every class (their mode for every namespace).
    pub(crate) async fn publish_class_modes(&self) {
        for class in ActionClass::ALL {
            if let Ok(mode) = self.class_mode(class).await {
                let value = match mode {
                    Mode::Auto => 0,
                    Mode::Approve => 1,
                    Mode::Shadow => 2,
                };
                self.deps
                    .metrics
                    .class_mode
                    .get_or_create(&crate::ClassLabel { class: class.as_str() })
                    .set(value);
            }
        }
    }

    /// While leading, counts every reversal an operator records (`kubesent undo`) in its class's record:
    /// the remediator records its own outcomes, but an operator's undo is published by the CLI.
    pub(crate) async fn count_reverts(
        self: Arc<Self>,
        leading: watch::Receiver<bool>,
        shutdown: CancellationToken,
    ) {
        let config = self.config.topology.reverts_consumer();
        let consumer = match nats::open_consumer(&self.deps.js, proto::OUTCOMES_STREAM, config, &shutdown)
            .await
        {
            Ok(consumer) => consumer,
            Err(error) => {
                warn!(%error, "no consumer of reversals: operators' undos are not counted in the records");
                return;
            }
        };
        let options = nats::PullOptions { concurrency: 1, ..nats::PullOptions::default() };
        nats::pull_loop(consumer, options, leading, shutdown, move |message| {
            let remediator = self.clone();
            async move {
                if let Ok(outcome) = proto::decode::<Outcome>(&message.payload)
                    && outcome.actor.starts_with("kubesent undo")
                {
                    remediator.count_in_record(&outcome).await;
                }
                if let Err(error) = message.ack().await {
                    warn!(%error, "acknowledging a reversal failed; it may be counted again");
                }
            }
        })
        .await;
    }

    /// While leading, takes every operator's `kubesent policy` request.
    pub(crate) async fn take_policy_requests(
        self: Arc<Self>,
        mut leading: watch::Receiver<bool>,
        shutdown: CancellationToken,
    ) {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                led = leading.wait_for(|leads| *leads) => if led.is_err() { return },
            }
            let mut updates = match self.records.requests().await {
                Ok(updates) => Box::pin(updates),
                Err(error) => {
                    warn!(%error, "watching for policy requests failed; trying again");
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(std::time::Duration::from_secs(1)) => continue,
                    }
                }
            };
            match self.records.pending_requests().await {
                Ok(pending) => {
                    for (key, value, revision) in pending {
                        self.take_request(&key, &value, revision).await;
                    }
                }
                Err(error) => warn!(%error, "listing pending policy requests failed"),
            }
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    changed = leading.changed() => {
                        if changed.is_err() { return }
                        if !*leading.borrow() { break }
                    }
                    update = updates.next() => match update {
                        Some(Ok((key, value, revision))) => self.take_request(&key, &value, revision).await,
                        Some(Err(error)) => {
                            warn!(%error, "the policy requests watch failed; watching again");
                            break;
                        }
                        None => break,
                    }
                }
            }
        }
    }

    /// Takes one request, records what became of it, and removes it.
    async fn take_request(&self, key: &str, value: &[u8], revision: u64) {
        let drop_it = || async {
            if let Err(error) = self.records.drop_request(key, revision).await {
                warn!(%error, key, "removing a policy request failed");
            }
        };
        let Some((user, class, namespace)) = earned::parse_request_key(key) else {
            warn!(key, "dropping a policy request under a key that names no user and class");
            return drop_it().await;
        };
        let services = [NatsRole::Detector, NatsRole::Diagnoser, NatsRole::Remediator];
        if services.iter().any(|role| role.service_name() == user) {
            warn!(%user, key, "dropping a policy request written under a service's user");
            return drop_it().await;
        }
        let request = match (value.len() <= earned::MAX_REQUEST_BYTES)
            .then(|| serde_json::from_slice::<PolicyRequest>(value))
        {
            Some(Ok(request)) if request.schema == proto::SCHEMA_VERSION && request.by.len() <= 128 => {
                request
            }
            _ => {
                warn!(key, "dropping an unreadable policy request");
                return drop_it().await;
            }
        };
        let by = format!("{} (NATS user {user})", request.by);
        match self.carry_out_request(class, namespace.as_deref(), &request, &by).await {
            Ok(()) => drop_it().await,
            Err(error) => warn!(%error, key, "taking a policy request failed; the next leader takes it"),
        }
    }

    async fn carry_out_request(
        &self,
        class: ActionClass,
        namespace: Option<&str>,
        request: &PolicyRequest,
        by: &str,
    ) -> Result<(), StepError> {
        let (record, _) = self.records.record(class).await?;
        let counted = tally(&record, self.record_since(), namespace, None);
        let from = self.scoped_mode(class, namespace).await?;
        let reason = request.reason.as_deref().map(|r| format!(" ({r})")).unwrap_or_default();
        let refuse = |why: String| async move {
            self.publish_policy(PolicyEvent::Refused, class, namespace, from, from, by, &why, counted).await
        };
        match request.step {
            PolicyStep::Promote => {
                let Some(to) = from.promoted() else {
                    return refuse(format!("{class} is already auto")).await;
                };
                let earned = counted.earns(self.config.earned.promotion);
                if let Err(short) = &earned
                    && !request.force
                {
                    return refuse(format!(
                        "the record does not earn {class} a promotion ({short}); `--force` promotes it anyway"
                    ))
                    .await;
                }
                let basis = match earned {
                    Ok(()) => format!("{} of {} judged decisions agreed", counted.agreed, counted.judged()),
                    Err(short) => format!("forced: {short}"),
                };
                let why = format!("promoted by {by}{reason}: {basis}");
                self.change_policy(PolicyEvent::Promoted, class, namespace, from, to, by, &why, &record).await
            }
            PolicyStep::Demote => {
                let Some(to) = from.demoted() else {
                    return refuse(format!("{class} is already shadow")).await;
                };
                let why = format!("demoted by {by}{reason}");
                self.change_policy(PolicyEvent::Demoted, class, namespace, from, to, by, &why, &record).await
            }
            PolicyStep::Reset => {
                if self.records.stored_override(class, namespace).await?.is_none() {
                    return refuse(format!("no override of {class} is in force there")).await;
                }
                self.records.set_override(class, namespace, None).await?;
                let to = self.scoped_mode(class, namespace).await?;
                let why = format!("reset by {by}{reason}: the policy file decides {class} again");
                self.publish_policy(PolicyEvent::Reset, class, namespace, from, to, by, &why, counted).await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use kubesent_proto::IncidentId;

    use super::*;

    fn entry(n: usize, mode: Mode, judgement: Judgement, at: i64, proposer: &str) -> RecordEntry {
        RecordEntry {
            incident: IncidentId(format!("inc-{n}")),
            namespace: if n.is_multiple_of(2) { "shop".into() } else { "payments".into() },
            proposer: proposer.into(),
            mode,
            judgement,
            at: Timestamp::from_second(at).expect("time"),
        }
    }

    #[test]
    fn the_class_breaker_counts_only_harmful_automatic_fixes_within_its_window() {
        let mut record = ClassRecord::default();
        record.add(entry(1, Mode::Auto, Judgement::Harmful, 100, "rules"));
        record.add(entry(2, Mode::Approve, Judgement::Harmful, 200, "rules"));
        record.add(entry(3, Mode::Auto, Judgement::Disagreed, 300, "rules"));
        let since = |s| Timestamp::from_second(s).expect("time");
        assert!(!breaker_trips(&record, since(0), 2), "one automatic harm, one approved");
        record.add(entry(4, Mode::Auto, Judgement::Harmful, 400, "rules"));
        assert!(breaker_trips(&record, since(0), 2));
        assert!(!breaker_trips(&record, since(150), 2), "the first is outside the window");
        assert!(!breaker_trips(&record, since(0), 0), "a threshold of 0 turns the breaker off");
    }

    #[test]
    fn windows_are_said_as_people_write_them() {
        assert_eq!(friendly(std::time::Duration::from_secs(24 * 3600)), "24h");
        assert_eq!(friendly(std::time::Duration::from_secs(5400)), "1h 30m");
    }

    #[test]
    fn a_tally_is_kept_per_namespace_and_per_proposer() {
        let mut record = ClassRecord::default();
        for n in 0..10 {
            record.add(entry(
                n,
                Mode::Shadow,
                Judgement::Agreed,
                10,
                if n < 4 { "gemini-3.5-flash" } else { "rules" },
            ));
        }
        let all = Timestamp::UNIX_EPOCH;
        assert_eq!(tally(&record, all, None, None).agreed, 10);
        assert_eq!(tally(&record, all, Some("shop"), None).agreed, 5);
        assert_eq!(tally(&record, all, None, Some("gemini-3.5-flash")).agreed, 4);
        assert_eq!(tally(&record, all, Some("payments"), Some("rules")).agreed, 3);
    }
}
