//! What a human does to a running KubeSent, as operations the CLI only calls: approve or reject a
//! remediation that waits for approval, pause and resume every remediator, undo a change. Each runs with
//! the operator's NATS user (`kubesent-operator` in `deploy/base`), which may write only its own
//! decisions and the kill switch, and each is attributed: the name given (`--by`, `$USER`) and the NATS
//! user go into the intent, the kill switch and the audit log.

use std::time::Duration;

use async_nats::jetstream::{self, kv};
use futures::StreamExt as _;
use kubesent_common::nats::{self, NatsArgs, Role};
use kubesent_proto::{
    self as proto, IncidentId, Outcome, OutcomeResult,
    approval::{self, Choice, Decision, DecisionError},
};

use crate::{
    guardrails::{Guardrails, GuardrailsError, Limits},
    intent::{IntentError, Intents},
    undo::{self, UndoError, Undone},
};
use kubesent_proto::intent::{Intent, Phase};

/// The NATS user an operator is assumed to be when the settings name none (a credentials file).
pub const DEFAULT_OPERATOR_USER: &str = "kubesent-operator";

/// Errors of an operator's command.
#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    /// NATS could not be reached or set up.
    #[error(transparent)]
    Nats(#[from] kubesent_common::Error),
    /// The intents bucket failed.
    #[error(transparent)]
    Intent(#[from] IntentError),
    /// The decision could not be written.
    #[error(transparent)]
    Decision(#[from] DecisionError),
    /// The kill switch could not be set.
    #[error(transparent)]
    Guardrails(#[from] GuardrailsError),
    /// The change could not be reversed.
    #[error(transparent)]
    Undo(#[from] UndoError),
    /// No remediation is recorded for the incident.
    #[error("no remediation is recorded for incident {0}")]
    Unknown(IncidentId),
    /// Nothing waits for a decision under this incident.
    #[error("incident {incident} is not waiting for approval ({state})")]
    NotWaiting {
        /// The incident.
        incident: IncidentId,
        /// What it is instead.
        state: String,
    },
}

/// What became of a decision within the wait.
#[derive(Debug, Clone, PartialEq)]
pub enum Taken {
    /// A remediator took it; for a rejection, its outcome.
    Taken(Option<Box<Outcome>>),
    /// No leading remediator took it in time; it stays and the next leader takes it.
    Pending,
}

/// An operator's session: the NATS user and the name to record.
pub struct Operator {
    js: jetstream::Context,
    client: async_nats::Client,
    bucket: kv::Store,
    user: String,
    by: String,
}

impl Operator {
    /// Connects as the operator role with `nats`, recording actions as done by `by`.
    pub async fn connect(nats: &NatsArgs, by: &str) -> Result<Self, OperatorError> {
        Self::connect_as(nats, Role::Operator, by).await
    }

    /// Connects as `role` (the operator, or `kubesent slack`'s decisions-only user), recording actions as
    /// done by `by`.
    pub async fn connect_as(nats: &NatsArgs, role: Role, by: &str) -> Result<Self, OperatorError> {
        let client = nats::connect_as(nats, role, &format!("kubesent-{}", role.as_str())).await?;
        let js = jetstream::new(client.clone());
        let bucket = nats::existing_bucket(&js, proto::INTENTS_BUCKET).await?;
        let user = nats.user.clone().unwrap_or_else(|| role.service_name().to_owned());
        Ok(Self { js, client, bucket, user, by: by.to_owned() })
    }

    /// The same session, recording actions as done by `by` (one connection for many people's clicks).
    pub fn acting_as(&self, by: &str) -> Self {
        Self {
            js: self.js.clone(),
            client: self.client.clone(),
            bucket: self.bucket.clone(),
            user: self.user.clone(),
            by: by.to_owned(),
        }
    }

    /// Who this is, as recorded: the name given and the NATS user.
    pub fn attribution(&self) -> String {
        format!("{} (NATS user {})", self.by, self.user)
    }

    fn intents(&self) -> Intents {
        Intents::new(self.bucket.clone())
    }

    /// The remediation recorded for `incident`.
    pub async fn remediation(&self, incident: &IncidentId) -> Result<Intent, OperatorError> {
        let (intent, _) =
            self.intents().get(incident).await?.ok_or_else(|| OperatorError::Unknown(incident.clone()))?;
        Ok(intent)
    }

    /// Approves a remediation waiting for approval. The leading remediator decides it again against the
    /// cluster and carries it out; its outcome follows in the audit log.
    pub async fn approve(&self, incident: &IncidentId, wait: Duration) -> Result<Taken, OperatorError> {
        self.decide(incident, Choice::Approve, None, wait).await
    }

    /// Rejects a remediation waiting for approval: it is recorded as denied and its target freed.
    pub async fn reject(
        &self,
        incident: &IncidentId,
        reason: &str,
        wait: Duration,
    ) -> Result<Taken, OperatorError> {
        self.decide(incident, Choice::Reject, Some(reason.to_owned()), wait).await
    }

    async fn decide(
        &self,
        incident: &IncidentId,
        verdict: Choice,
        reason: Option<String>,
        wait: Duration,
    ) -> Result<Taken, OperatorError> {
        match self.intents().get(incident).await? {
            Some((intent, _)) if intent.phase == Phase::AwaitingApproval => {}
            Some((intent, _)) => {
                return Err(OperatorError::NotWaiting {
                    incident: incident.clone(),
                    state: format!("{:?}", intent.phase),
                });
            }
            // Only suggested (a guardrail held it): an approval has the remediator decide it again.
            None if verdict == Choice::Approve && self.intents().suggested(incident).await?.is_some() => {}
            None => {
                return Err(OperatorError::Unknown(incident.clone()));
            }
        }
        // Subscribed before the decision is written, so its outcome cannot be missed.
        let mut outcomes = self
            .client
            .subscribe(proto::OUTCOMES_SUBJECTS)
            .await
            .map_err(|e| OperatorError::Nats(kubesent_common::Error::Nats(Box::new(e))))?;
        let decision = Decision {
            schema: proto::SCHEMA_VERSION,
            incident: incident.clone(),
            decision: verdict,
            by: self.by.clone(),
            reason,
            at: jiff::Timestamp::now(),
        };
        let key = approval::key(&self.user, incident)?;
        let payload = serde_json::to_vec(&decision).map_err(|e| IntentError::Store(e.to_string()))?;
        self.bucket.put(key.as_str(), payload.into()).await.map_err(|e| IntentError::Store(e.to_string()))?;
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // A rejection ends in an outcome at once; an approval is taken when its decision is removed.
            let next = tokio::time::timeout(Duration::from_millis(200), outcomes.next()).await;
            if let Ok(Some(message)) = next
                && let Ok(outcome) = proto::decode::<Outcome>(&message.payload)
                && outcome.incident == *incident
                && outcome.result != OutcomeResult::AwaitingApproval
            {
                return Ok(Taken::Taken(Some(Box::new(outcome))));
            }
            let still_there = self.bucket.get(&key).await.map_err(|e| IntentError::Store(e.to_string()))?;
            if still_there.is_none() && verdict == Choice::Approve {
                return Ok(Taken::Taken(None));
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(Taken::Pending);
            }
        }
    }

    /// Asks the leading remediator to promote, demote or reset `class` (in `namespace`, or for every
    /// namespace), and waits for what it recorded: the policy change, or its refusal.
    pub async fn policy(
        &self,
        class: proto::autonomy::ActionClass,
        namespace: Option<&str>,
        step: proto::autonomy::PolicyStep,
        force: bool,
        reason: Option<String>,
        wait: Duration,
    ) -> Result<Option<proto::autonomy::PolicyChange>, OperatorError> {
        let key = proto::autonomy::request_key(&self.user, class, namespace)
            .map_err(|why| OperatorError::Decision(DecisionError::Key(why)))?;
        let nats_error = |e: &dyn std::fmt::Display| {
            OperatorError::Nats(kubesent_common::Error::Config(format!("policy changes: {e}")))
        };
        // Subscribed before the request is written, so its answer cannot be missed.
        let mut changes = self.client.subscribe(proto::POLICY_SUBJECTS).await.map_err(|e| nats_error(&e))?;
        let asked = jiff::Timestamp::now();
        let request = proto::autonomy::PolicyRequest {
            schema: proto::SCHEMA_VERSION,
            step,
            force,
            by: self.by.clone(),
            reason,
            at: asked,
        };
        let payload = serde_json::to_vec(&request).map_err(|e| IntentError::Store(e.to_string()))?;
        self.bucket.put(key.as_str(), payload.into()).await.map_err(|e| IntentError::Store(e.to_string()))?;
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, changes.next()).await {
                Ok(Some(message)) => {
                    if let Ok(change) = proto::decode::<proto::autonomy::PolicyChange>(&message.payload)
                        && change.class == class
                        && change.namespace.as_deref() == namespace
                        && change.at >= asked
                        && change.event != proto::autonomy::PolicyEvent::Eligible
                    {
                        return Ok(Some(change));
                    }
                }
                Ok(None) | Err(_) => return Ok(None),
            }
        }
    }

    /// Turns the kill switch on: every remediator only suggests until [`Operator::resume`].
    pub async fn pause(&self, reason: &str) -> Result<String, OperatorError> {
        let recorded = format!("{reason}; paused by {} at {}", self.attribution(), jiff::Timestamp::now());
        self.guardrails().pause(&recorded).await?;
        Ok(recorded)
    }

    /// Turns the kill switch off; returns the verdicts that were only suggested meanwhile (or under another
    /// guardrail) and can still be approved.
    pub async fn resume(&self) -> Result<Vec<proto::Verdict>, OperatorError> {
        self.guardrails().resume().await?;
        Ok(self.intents().suggested_verdicts().await?)
    }

    fn guardrails(&self) -> Guardrails {
        Guardrails::new(self.bucket.clone(), Limits::default())
    }

    /// Reverses KubeSent's change for `incident` with the operator's own Kubernetes credentials (`kube`),
    /// and records the reversal, attributed, in the audit log.
    pub async fn undo(&self, kube: &kube::Client, incident: &IncidentId) -> Result<Undone, OperatorError> {
        let intents = self.intents();
        let (intent, _) = intents.get(incident).await?.ok_or_else(|| UndoError::Unknown(incident.clone()))?;
        let undone = undo::undo(kube, &intents, incident).await?;
        let outcome = Outcome {
            schema: proto::SCHEMA_VERSION,
            incident: incident.clone(),
            pod: intent.target.clone(),
            action: undone.reverse.clone(),
            result: OutcomeResult::Reverted,
            strategy: Some(intent.strategy),
            detail: format!("{}: {}", undone.target, undone.detail),
            replacement_uid: None,
            actor: format!("kubesent undo ({})", kubesent_common::default_identity()),
            decided_by: Some(self.attribution()),
            trace_id: None,
            at: jiff::Timestamp::now(),
            diagnosis: None,
            // A human took the fix back: it counts against its class (as approved or automatic).
            autonomy: proto::autonomy::ActionClass::of(&intent.action, intent.strategy).map(|class| {
                let mode = if intent.approved_by.is_some() {
                    proto::autonomy::Mode::Approve
                } else {
                    proto::autonomy::Mode::Auto
                };
                proto::autonomy::Autonomy { class, mode }
            }),
            followup: None,
        };
        let subject = proto::outcome_subject(&intent.target.namespace, outcome.result)
            .map_err(|e| OperatorError::Nats(kubesent_common::Error::Config(e.to_string())))?;
        nats::publish(
            &self.js,
            subject,
            &format!("revert-{incident}"),
            proto::encode(&outcome),
            &[(proto::headers::INCIDENT, incident.as_str())],
        )
        .await?;
        Ok(undone)
    }
}
