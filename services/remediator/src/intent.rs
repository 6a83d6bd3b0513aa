//! The remediation write-ahead log and per-target locks in the `kubesent-intents` KV bucket.
//!
//! An intent is written (compare-and-set create) before anything changes and advanced (compare-and-set
//! update on its revision) after each step, so a remediator that takes over can finish any intent left
//! half-done, and two replicas can never both act on the same incident or the same pod.

use async_nats::jetstream::kv;
use futures::StreamExt as _;
use kubesent_proto::{
    IncidentId, OutcomeResult, PodRef,
    intent::{Intent, Phase},
};

/// Errors of the intent log.
#[derive(Debug, thiserror::Error)]
pub enum IntentError {
    /// Another writer changed the entry first.
    #[error("intent {0} was changed by another remediator")]
    Conflict(String),
    /// The bucket could not be read or written.
    #[error("intent store: {0}")]
    Store(String),
    /// The intent is not waiting for approval.
    #[error("incident {incident} is not waiting for approval (it is {phase:?})")]
    NotAwaitingApproval {
        /// The incident.
        incident: String,
        /// Where it is.
        phase: Phase,
    },
    /// No intent exists for the incident.
    #[error("no remediation is recorded for incident {0}")]
    Unknown(String),
    /// A stored entry is not an intent, or not one within bounds.
    #[error("intent {key} is unreadable: {error}")]
    Corrupt {
        /// The key.
        key: String,
        /// What is wrong with it.
        error: kubesent_proto::validate::Invalid,
    },
}

/// The result of claiming an intent.
#[derive(Debug)]
pub enum Claim {
    /// Newly written at this revision.
    Fresh(u64),
    /// Already there (a redelivery, or a takeover): continue from it.
    Existing(Box<Intent>, u64),
}

/// The key prefix of verdicts a guardrail held (`suggested.<incident>`).
pub const SUGGESTED_PREFIX: &str = "suggested";

/// Where the verdict a guardrail held for `incident` is kept.
pub fn suggested_key(incident: &IncidentId) -> String {
    format!("{SUGGESTED_PREFIX}.{incident}")
}

/// The intents bucket.
#[derive(Clone)]
pub struct Intents {
    kv: kv::Store,
}

/// KV key of a per-pod lock (pod names may hold dots; the key is a hash of namespace and name).
pub fn lock_key(target: &PodRef) -> String {
    hashed_key(&format!("{}/{}", target.namespace, target.name))
}

/// KV key of a per-workload lock: one remediation of a Deployment or StatefulSet at a time, however many
/// of its pods fail.
pub fn workload_lock_key(namespace: &str, kind: &str, name: &str) -> String {
    hashed_key(&format!("{kind}:{namespace}/{name}"))
}

fn hashed_key(text: &str) -> String {
    let hash =
        text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    format!("lock-{hash:016x}")
}

impl Intents {
    /// Wraps the bucket.
    pub fn new(kv: kv::Store) -> Self {
        Self { kv }
    }

    /// Reads an intent and its revision.
    pub async fn get(&self, incident: &IncidentId) -> Result<Option<(Intent, u64)>, IntentError> {
        let entry = self.kv.entry(incident.as_str()).await.map_err(|e| IntentError::Store(e.to_string()))?;
        match entry {
            Some(entry) if entry.operation == kv::Operation::Put => {
                let intent = kubesent_proto::intent::decode(&entry.value)
                    .map_err(|error| IntentError::Corrupt { key: incident.to_string(), error })?;
                Ok(Some((intent, entry.revision)))
            }
            _ => Ok(None),
        }
    }

    /// Writes `intent` unless one exists for the incident, in which case that one is returned.
    pub async fn claim(&self, intent: &Intent) -> Result<Claim, IntentError> {
        let payload = serde_json::to_vec(intent).map_err(|e| IntentError::Store(e.to_string()))?;
        match self.kv.create(intent.incident.as_str(), payload.into()).await {
            Ok(revision) => Ok(Claim::Fresh(revision)),
            Err(error) if kubesent_common::nats::is_cas_conflict(&error) => {
                match self.get(&intent.incident).await? {
                    Some((existing, revision)) => Ok(Claim::Existing(Box::new(existing), revision)),
                    None => Err(IntentError::Conflict(intent.incident.to_string())),
                }
            }
            Err(error) => Err(IntentError::Store(error.to_string())),
        }
    }

    /// Stores the next step of `intent`, only if nobody changed it since `revision`.
    pub async fn advance(&self, intent: &Intent, revision: u64) -> Result<u64, IntentError> {
        let payload = serde_json::to_vec(intent).map_err(|e| IntentError::Store(e.to_string()))?;
        self.kv.update(intent.incident.as_str(), payload.into(), revision).await.map_err(|error| {
            if kubesent_common::nats::is_cas_conflict(&error) {
                IntentError::Conflict(intent.incident.to_string())
            } else {
                IntentError::Store(error.to_string())
            }
        })
    }

    /// Takes the lock `key` for `incident`; false if another incident holds it.
    pub async fn lock(&self, key: &str, incident: &IncidentId) -> Result<bool, IntentError> {
        match self.kv.create(key, incident.to_string().into_bytes().into()).await {
            Ok(_) => Ok(true),
            Err(error) if kubesent_common::nats::is_cas_conflict(&error) => {
                let holder = self.kv.get(key).await.map_err(|e| IntentError::Store(e.to_string()))?;
                Ok(holder.is_some_and(|h| h == incident.as_str().as_bytes()))
            }
            Err(error) => Err(IntentError::Store(error.to_string())),
        }
    }

    /// Releases the lock `key`.
    pub async fn unlock(&self, key: &str) -> Result<(), IntentError> {
        self.kv.delete(key).await.map_err(|e| IntentError::Store(e.to_string()))
    }

    /// Keeps a verdict a guardrail held (the kill switch, budget, cooldown or breaker) under
    /// `suggested.<incident>`, so `kubesent approve` can carry it out after the fact.
    pub async fn keep_suggested(&self, verdict: &kubesent_proto::Verdict) -> Result<(), IntentError> {
        let key = suggested_key(&verdict.incident);
        self.kv
            .put(key.as_str(), kubesent_proto::encode(verdict).into())
            .await
            .map_err(|e| IntentError::Store(e.to_string()))?;
        Ok(())
    }

    /// The verdict kept for `incident` when a guardrail held it, if any.
    pub async fn suggested(
        &self,
        incident: &IncidentId,
    ) -> Result<Option<kubesent_proto::Verdict>, IntentError> {
        let key = suggested_key(incident);
        let Some(bytes) = self.kv.get(key.as_str()).await.map_err(|e| IntentError::Store(e.to_string()))?
        else {
            return Ok(None);
        };
        let verdict: kubesent_proto::Verdict = kubesent_proto::decode(&bytes).map_err(|error| {
            IntentError::Store(format!("the suggested verdict of {incident} cannot be read: {error}"))
        })?;
        if verdict.incident != *incident {
            return Err(IntentError::Store(format!(
                "the verdict kept under {key} is of {}",
                verdict.incident
            )));
        }
        Ok(Some(verdict))
    }

    /// Every verdict kept because a guardrail held it, oldest first.
    pub async fn suggested_verdicts(&self) -> Result<Vec<kubesent_proto::Verdict>, IntentError> {
        let prefix = format!("{SUGGESTED_PREFIX}.");
        let mut keys = self.kv.keys().await.map_err(|e| IntentError::Store(e.to_string()))?;
        let mut verdicts = Vec::new();
        while let Some(key) = keys.next().await {
            let key = key.map_err(|e| IntentError::Store(e.to_string()))?;
            if let Some(incident) = key.strip_prefix(&prefix)
                && let Ok(Some(verdict)) = self.suggested(&IncidentId(incident.to_owned())).await
            {
                verdicts.push(verdict);
            }
        }
        verdicts.sort_by_key(|v| v.diagnosed_at);
        Ok(verdicts)
    }

    /// Forgets the verdict kept for `incident` (it was approved).
    pub async fn forget_suggested(&self, incident: &IncidentId) -> Result<(), IntentError> {
        self.kv.purge(suggested_key(incident)).await.map_err(|e| IntentError::Store(e.to_string()))
    }

    /// Removes the suggested verdicts diagnosed before `cutoff` (and any that cannot be read); how many.
    pub async fn purge_suggested_before(&self, cutoff: jiff::Timestamp) -> Result<usize, IntentError> {
        let prefix = format!("{SUGGESTED_PREFIX}.");
        let mut keys = self.kv.keys().await.map_err(|e| IntentError::Store(e.to_string()))?;
        let mut old = Vec::new();
        while let Some(key) = keys.next().await {
            let key = key.map_err(|e| IntentError::Store(e.to_string()))?;
            if !key.starts_with(&prefix) {
                continue;
            }
            let Some(bytes) = self.kv.get(&key).await.map_err(|e| IntentError::Store(e.to_string()))? else {
                continue;
            };
            let kept_at = kubesent_proto::decode::<kubesent_proto::Verdict>(&bytes).map(|v| v.diagnosed_at);
            if kept_at.is_ok_and(|at| at >= cutoff) {
                continue;
            }
            old.push(key);
        }
        for key in &old {
            self.kv.purge(key).await.map_err(|e| IntentError::Store(e.to_string()))?;
        }
        Ok(old.len())
    }

    /// Approves an intent waiting for approval (the leader, taking an operator's decision); returns it with
    /// its new revision.
    pub(crate) async fn approve(
        &self,
        incident: &IncidentId,
        by: &str,
    ) -> Result<(Intent, u64), IntentError> {
        self.decide(incident, |intent| {
            intent.phase = Phase::Approved;
            intent.approved_by = Some(by.to_owned());
        })
        .await
    }

    /// Rejects an intent waiting for approval (the leader, taking an operator's decision): it ends as
    /// denied and its lock is released.
    pub(crate) async fn reject(
        &self,
        incident: &IncidentId,
        by: &str,
        reason: &str,
    ) -> Result<Intent, IntentError> {
        let (intent, _) = self
            .decide(incident, |intent| {
                intent.phase = Phase::Done;
                intent.result = Some(OutcomeResult::Denied);
                intent.detail = Some(format!("rejected by {by}: {reason}"));
            })
            .await?;
        let lock = if intent.lock.is_empty() { lock_key(&intent.target) } else { intent.lock.clone() };
        self.unlock(&lock).await?;
        Ok(intent)
    }

    async fn decide(
        &self,
        incident: &IncidentId,
        change: impl FnOnce(&mut Intent),
    ) -> Result<(Intent, u64), IntentError> {
        let (mut intent, revision) =
            self.get(incident).await?.ok_or_else(|| IntentError::Unknown(incident.to_string()))?;
        if intent.phase != Phase::AwaitingApproval {
            return Err(IntentError::NotAwaitingApproval {
                incident: incident.to_string(),
                phase: intent.phase,
            });
        }
        change(&mut intent);
        intent.updated_at = jiff::Timestamp::now();
        let revision = self.advance(&intent, revision).await?;
        Ok((intent, revision))
    }

    /// Every new operator decision (`decision.<user>.<incident>`), as key and value.
    pub async fn decisions(
        &self,
    ) -> Result<impl futures::Stream<Item = Result<(String, bytes::Bytes), IntentError>> + use<>, IntentError>
    {
        let updates = self
            .kv
            .watch(format!("{}.>", kubesent_proto::approval::DECISION_PREFIX))
            .await
            .map_err(|e| IntentError::Store(e.to_string()))?;
        Ok(updates.filter_map(|entry| async move {
            match entry {
                Ok(entry) if entry.operation == kv::Operation::Put => Some(Ok((entry.key, entry.value))),
                Ok(_) => None,
                Err(error) => Some(Err(IntentError::Store(error.to_string()))),
            }
        }))
    }

    /// Decisions written while no remediator was taking them.
    pub async fn pending_decisions(&self) -> Result<Vec<(String, bytes::Bytes)>, IntentError> {
        let prefix = format!("{}.", kubesent_proto::approval::DECISION_PREFIX);
        let mut keys = self.kv.keys().await.map_err(|e| IntentError::Store(e.to_string()))?;
        let mut pending = Vec::new();
        while let Some(key) = keys.next().await {
            let key = key.map_err(|e| IntentError::Store(e.to_string()))?;
            if key.starts_with(&prefix)
                && let Some(value) = self.kv.get(&key).await.map_err(|e| IntentError::Store(e.to_string()))?
            {
                pending.push((key, value));
            }
        }
        Ok(pending)
    }

    /// Removes a decision once it is taken (or refused).
    pub async fn drop_decision(&self, key: &str) -> Result<(), IntentError> {
        self.kv.purge(key).await.map_err(|e| IntentError::Store(e.to_string()))
    }

    /// Every change to an intent from now on (new intents, new phases), with its revision.
    pub async fn watch(
        &self,
    ) -> Result<impl futures::Stream<Item = Result<(Intent, u64), IntentError>> + use<>, IntentError> {
        let updates = self.kv.watch_all().await.map_err(|e| IntentError::Store(e.to_string()))?;
        Ok(updates.filter_map(|entry| async move {
            match entry {
                Ok(entry) if entry.operation == kv::Operation::Put && entry.key.starts_with("inc-") => Some(
                    kubesent_proto::intent::decode(&entry.value)
                        .map(|intent| (intent, entry.revision))
                        .map_err(|error| IntentError::Corrupt { key: entry.key.clone(), error }),
                ),
                Ok(_) => None,
                Err(error) => Some(Err(IntentError::Store(error.to_string()))),
            }
        }))
    }

    /// Removes finished intents last changed before `cutoff` (with their history); returns how many.
    pub async fn purge_finished_before(&self, cutoff: jiff::Timestamp) -> Result<usize, IntentError> {
        let mut keys = self.kv.keys().await.map_err(|e| IntentError::Store(e.to_string()))?;
        let mut stale = Vec::new();
        while let Some(key) = keys.next().await {
            let key = key.map_err(|e| IntentError::Store(e.to_string()))?;
            if key.starts_with("inc-") {
                stale.push(key);
            }
        }
        let mut purged = 0;
        for key in stale {
            let old_and_done = match self.get(&IncidentId(key.clone())).await {
                Ok(Some((intent, _))) => intent.phase == Phase::Done && intent.updated_at < cutoff,
                Ok(None) => false,
                // An unreadable entry helps nobody; it goes once it is old enough to judge by the bucket.
                Err(IntentError::Corrupt { .. }) => false,
                Err(error) => return Err(error),
            };
            if old_and_done {
                self.kv.purge(&key).await.map_err(|e| IntentError::Store(e.to_string()))?;
                purged += 1;
            }
        }
        Ok(purged)
    }

    /// Every intent that is not done, for a remediator that takes over.
    pub async fn unfinished(&self) -> Result<Vec<(Intent, u64)>, IntentError> {
        let mut keys = self.kv.keys().await.map_err(|e| IntentError::Store(e.to_string()))?;
        let mut open = Vec::new();
        while let Some(key) = keys.next().await {
            let key = key.map_err(|e| IntentError::Store(e.to_string()))?;
            if !key.starts_with("inc-") {
                continue;
            }
            match self.get(&IncidentId(key)).await {
                Ok(Some((intent, revision))) if intent.phase != Phase::Done => open.push((intent, revision)),
                Ok(_) => {}
                // Never acted on; one unreadable entry does not stop the others from being finished.
                Err(error @ IntentError::Corrupt { .. }) => {
                    tracing::warn!(%error, "skipping an unreadable intent (nothing is done for it; delete it with `nats kv del`)");
                }
                Err(error) => return Err(error),
            }
        }
        Ok(open)
    }
}
