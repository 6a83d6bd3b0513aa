//! Stream, consumer, bucket, subject and header names shared by every service.
//!
//! Subjects carry only DNS-label tokens (namespaces and the kebab-case kind names of this crate);
//! pod names can hold dots and never go into a subject.

use crate::{Action, FailureKind, OutcomeResult};

/// Work queue of failure jobs, filled by the detector leader.
pub const JOBS_STREAM: &str = "KUBESENT_JOBS";
/// Work queue of verdicts, drained by the remediator leader.
pub const VERDICTS_STREAM: &str = "KUBESENT_VERDICTS";
/// The audit log of everything KubeSent decided and did.
pub const OUTCOMES_STREAM: &str = "KUBESENT_OUTCOMES";
/// Poison and max-delivered messages of every stage.
pub const DLQ_STREAM: &str = "KUBESENT_DLQ";
/// Remediation write-ahead log and per-target locks.
pub const INTENTS_BUCKET: &str = "kubesent-intents";
/// The diagnoser pool's shared durable pull consumer on [`JOBS_STREAM`].
pub const DIAGNOSERS_CONSUMER: &str = "diagnosers";
/// The remediator's durable pull consumer on [`VERDICTS_STREAM`].
pub const REMEDIATOR_CONSUMER: &str = "remediator";
/// The notifier's durable pull consumer on [`OUTCOMES_STREAM`].
pub const NOTIFIER_CONSUMER: &str = "notifier";

/// Subject filter of [`JOBS_STREAM`].
pub const JOBS_SUBJECTS: &str = "kubesent.jobs.>";
/// Subject filter of [`VERDICTS_STREAM`].
pub const VERDICTS_SUBJECTS: &str = "kubesent.verdicts.>";
/// Subject filter of [`OUTCOMES_STREAM`].
pub const OUTCOMES_SUBJECTS: &str = "kubesent.outcomes.>";
/// Subjects of the audit log's policy changes (promotions, demotions): `kubesent.policy.<event>`, kept in
/// the outcomes stream beside the outcomes.
pub const POLICY_SUBJECTS: &str = "kubesent.policy.>";
/// The reversals in the audit log (`kubesent undo`, and KubeSent's own take-backs).
pub const REVERTED_SUBJECTS: &str = "kubesent.outcomes.*.reverted";
/// The remediator's durable consumer of operators' reversals (counted in their class's record).
pub const REVERTS_CONSUMER: &str = "remediator-reverts";
/// Subject filter of [`DLQ_STREAM`].
pub const DLQ_SUBJECTS: &str = "kubesent.dlq.>";

/// Header names KubeSent sets on its messages (besides `Nats-Msg-Id` and the W3C trace headers).
pub mod headers {
    /// W3C trace context.
    pub const TRACEPARENT: &str = "traceparent";
    /// W3C trace state.
    pub const TRACESTATE: &str = "tracestate";
    /// Incident fingerprint, so a message can be correlated without parsing it.
    pub const INCIDENT: &str = "KubeSent-Incident";
    /// On dead letters: why the message was dead-lettered.
    pub const DLQ_REASON: &str = "KubeSent-Dlq-Reason";
    /// On dead letters: the subject the message was first published on.
    pub const DLQ_ORIGINAL_SUBJECT: &str = "KubeSent-Original-Subject";
    /// On dead letters: the stream the message came from.
    pub const DLQ_ORIGINAL_STREAM: &str = "KubeSent-Original-Stream";
    /// On dead letters: the message's sequence in its original stream.
    pub const DLQ_ORIGINAL_SEQUENCE: &str = "KubeSent-Original-Sequence";
    /// On dead letters: how many times the message had been delivered.
    pub const DLQ_DELIVERIES: &str = "KubeSent-Deliveries";
}

/// A namespace that is not a DNS label and so cannot be a subject token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("namespace {0:?} is not a DNS label and cannot be used in a subject")]
pub struct InvalidNamespace(pub String);

/// Whether `text` is an RFC 1123 DNS label (what Kubernetes requires of namespace names).
pub fn is_dns_label(text: &str) -> bool {
    let bytes = text.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-'
}

fn namespace_token(namespace: &str) -> Result<&str, InvalidNamespace> {
    if is_dns_label(namespace) { Ok(namespace) } else { Err(InvalidNamespace(namespace.to_owned())) }
}

/// `kubesent.jobs.<namespace>.<failure>`
pub fn job_subject(namespace: &str, kind: FailureKind) -> Result<String, InvalidNamespace> {
    Ok(format!("kubesent.jobs.{}.{}", namespace_token(namespace)?, kind.as_str()))
}

/// `kubesent.verdicts.<namespace>.<action>`
pub fn verdict_subject(namespace: &str, action: &Action) -> Result<String, InvalidNamespace> {
    Ok(format!("kubesent.verdicts.{}.{}", namespace_token(namespace)?, action.kind_str()))
}

/// `kubesent.outcomes.<namespace>.<result>`
pub fn outcome_subject(namespace: &str, result: OutcomeResult) -> Result<String, InvalidNamespace> {
    Ok(format!("kubesent.outcomes.{}.{}", namespace_token(namespace)?, result.as_str()))
}

/// `kubesent.dlq.<stage>`; `stage` is a fixed service name such as `diagnoser`.
pub fn dlq_subject(stage: &str) -> String {
    format!("kubesent.dlq.{stage}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_are_built_from_namespace_and_kind_tokens() {
        assert_eq!(
            job_subject("shop", FailureKind::OomKilled).as_deref(),
            Ok("kubesent.jobs.shop.oom-killed")
        );
        assert_eq!(
            outcome_subject("shop", OutcomeResult::Applied).as_deref(),
            Ok("kubesent.outcomes.shop.applied")
        );
    }

    #[test]
    fn a_namespace_that_could_inject_subject_tokens_is_refused() {
        for bad in ["", "a.b", "a>", "*", "Shop", "-x", "x-", "a b", &"a".repeat(64)] {
            assert!(job_subject(bad, FailureKind::OomKilled).is_err(), "{bad:?}");
        }
    }
}
