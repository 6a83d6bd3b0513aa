//! What a consumer checks before it believes a message: its size, its schema version, its shape (no
//! unknown fields), every field's bounds, that its parts agree (the incident is the fingerprint of the
//! key, the key names the pod's namespace and the failing container) and that it arrived on the subject
//! its content belongs on. A message that fails is dead-lettered with the reason, never acted on.
//!
//! This is the structural half of the trust boundary; the remediator's other half re-derives every
//! bound of an action from the cluster itself.

use serde::de::DeserializeOwned;

use crate::{
    Action, DecodeError, Failure, FailureJob, IncidentKey, PodRef, Verdict, VerdictSource, WorkloadRef,
    is_dns_label,
};

/// Largest payload a consumer accepts; the jobs and verdicts streams refuse larger messages too.
pub const MAX_PAYLOAD_BYTES: usize = 64 * 1024;
/// Longest free text (a root cause, a kubelet message) a message may carry.
pub const MAX_TEXT_BYTES: usize = 8 * 1024;
/// Longest image reference.
pub const MAX_IMAGE_BYTES: usize = 1024;

/// Why a message was refused.
#[derive(Debug, thiserror::Error)]
pub enum Invalid {
    /// Larger than [`MAX_PAYLOAD_BYTES`].
    #[error("payload of {0} bytes exceeds the limit of {MAX_PAYLOAD_BYTES}")]
    Oversized(usize),
    /// Not JSON, not the expected shape, an unknown field or an unknown schema version.
    #[error(transparent)]
    Undecodable(#[from] DecodeError),
    /// A field out of bounds, or parts that disagree.
    #[error("{field}: {problem}")]
    Field {
        /// The field (`pod.namespace`, `confidence`, …).
        field: &'static str,
        /// What is wrong with it.
        problem: String,
    },
    /// Published on a subject its content does not belong on.
    #[error("arrived on {subject} but belongs on {expected}")]
    WrongSubject {
        /// Where it arrived.
        subject: String,
        /// Where its content says it belongs.
        expected: String,
    },
}

impl Invalid {
    /// A short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Oversized(_) => "oversized",
            Self::Undecodable(DecodeError::UnsupportedSchema { .. }) => "schema",
            Self::Undecodable(_) => "malformed",
            Self::Field { .. } => "invalid",
            Self::WrongSubject { .. } => "wrong_subject",
        }
    }

    /// Every label, for metrics that start at zero.
    pub const LABELS: [&'static str; 5] = ["oversized", "schema", "malformed", "invalid", "wrong_subject"];
}

pub(crate) fn bad(field: &'static str, problem: impl Into<String>) -> Invalid {
    Invalid::Field { field, problem: problem.into() }
}

/// A wire type whose fields can be checked against their bounds.
pub trait Validate {
    /// Checks every field and that the parts agree.
    fn validate(&self) -> Result<(), Invalid>;
}

/// Decodes and validates a payload: size first, then the schema version, then the shape, then the bounds.
pub fn decode_checked<T: DeserializeOwned + Validate>(payload: &[u8]) -> Result<T, Invalid> {
    if payload.len() > MAX_PAYLOAD_BYTES {
        return Err(Invalid::Oversized(payload.len()));
    }
    let value: T = crate::decode(payload)?;
    value.validate()?;
    Ok(value)
}

/// A job as the diagnoser may believe it: valid, and on `kubesent.jobs.<its namespace>.<its failure>`.
pub fn receive_job(subject: &str, payload: &[u8]) -> Result<FailureJob, Invalid> {
    let job: FailureJob = decode_checked(payload)?;
    let expected = crate::job_subject(&job.pod.namespace, job.failure.kind)
        .map_err(|e| bad("pod.namespace", e.to_string()))?;
    on_subject(subject, expected)?;
    Ok(job)
}

/// A verdict as the remediator may believe it (as a request, not an authority): valid, and on
/// `kubesent.verdicts.<its namespace>.<its action>`.
pub fn receive_verdict(subject: &str, payload: &[u8]) -> Result<Verdict, Invalid> {
    let verdict: Verdict = decode_checked(payload)?;
    let expected = crate::verdict_subject(&verdict.pod.namespace, &verdict.action)
        .map_err(|e| bad("pod.namespace", e.to_string()))?;
    on_subject(subject, expected)?;
    Ok(verdict)
}

fn on_subject(subject: &str, expected: String) -> Result<(), Invalid> {
    if subject == expected {
        Ok(())
    } else {
        Err(Invalid::WrongSubject { subject: subject.to_owned(), expected })
    }
}

/// Whether `text` is an RFC 1123 DNS subdomain (what Kubernetes requires of most object names).
pub fn is_dns_subdomain(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 253
        && text.split('.').all(|label| {
            let bytes = label.as_bytes();
            !bytes.is_empty()
                && bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
                && bytes[0] != b'-'
                && bytes[bytes.len() - 1] != b'-'
        })
}

/// Free text within `max` bytes, without control characters other than newline and tab.
pub(crate) fn text(field: &'static str, value: &str, max: usize) -> Result<(), Invalid> {
    if value.len() > max {
        return Err(bad(field, format!("{} bytes exceed the limit of {max}", value.len())));
    }
    if value.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
        return Err(bad(field, "holds control characters"));
    }
    Ok(())
}

/// `text` made fit for a message: control characters other than newline and tab become spaces, and it is
/// cut (at a character boundary, marked with `…`) to [`MAX_TEXT_BYTES`].
pub fn clip_text(text: &str) -> String {
    clip_text_to(text, MAX_TEXT_BYTES)
}

/// Like [`clip_text`], cut to `max` bytes (at least 8).
pub fn clip_text_to(text: &str, max: usize) -> String {
    let max = max.max(8);
    let mut clean: String =
        text.chars().map(|c| if c.is_control() && c != '\n' && c != '\t' { ' ' } else { c }).collect();
    if clean.len() > max {
        let mut end = max - '…'.len_utf8();
        while !clean.is_char_boundary(end) {
            end -= 1;
        }
        clean.truncate(end);
        clean.push('…');
    }
    clean
}

/// A short token (uid, resourceVersion, hash, rule or model name): printable ASCII without spaces.
pub(crate) fn token(field: &'static str, value: &str, max: usize, may_be_empty: bool) -> Result<(), Invalid> {
    if value.is_empty() && !may_be_empty {
        return Err(bad(field, "is empty"));
    }
    if value.len() > max || !value.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad(field, format!("{value:?} is not a token of at most {max} printable characters")));
    }
    Ok(())
}

/// An image reference: non-empty, at most [`MAX_IMAGE_BYTES`], no whitespace or control characters.
fn image(field: &'static str, value: &str) -> Result<(), Invalid> {
    token(field, value, MAX_IMAGE_BYTES, false)
}

fn namespace(field: &'static str, value: &str) -> Result<(), Invalid> {
    if is_dns_label(value) { Ok(()) } else { Err(bad(field, format!("{value:?} is not a namespace name"))) }
}

fn container(field: &'static str, value: &str) -> Result<(), Invalid> {
    if is_dns_label(value) { Ok(()) } else { Err(bad(field, format!("{value:?} is not a container name"))) }
}

/// An incident id as the fingerprint makes them: `inc-` and 24 lowercase hex digits.
pub(crate) fn incident(field: &'static str, value: &crate::IncidentId) -> Result<(), Invalid> {
    let hex = value.as_str().strip_prefix("inc-").unwrap_or_default();
    if hex.len() == 24 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        Ok(())
    } else {
        Err(bad(field, format!("{value} is not an incident id")))
    }
}

impl Validate for PodRef {
    fn validate(&self) -> Result<(), Invalid> {
        namespace("pod.namespace", &self.namespace)?;
        if !is_dns_subdomain(&self.name) {
            return Err(bad("pod.name", format!("{:?} is not a pod name", self.name)));
        }
        token("pod.uid", &self.uid, 128, false)?;
        token("pod.resource_version", &self.resource_version, 128, true)
    }
}

impl Validate for WorkloadRef {
    fn validate(&self) -> Result<(), Invalid> {
        if !is_dns_subdomain(&self.name) {
            return Err(bad("key.workload.name", format!("{:?} is not an object name", self.name)));
        }
        Ok(())
    }
}

impl Validate for IncidentKey {
    fn validate(&self) -> Result<(), Invalid> {
        namespace("key.namespace", &self.namespace)?;
        self.workload.validate()?;
        container("key.container", &self.container)?;
        token("key.template_hash", &self.template_hash, 128, true)
    }
}

impl Validate for Failure {
    fn validate(&self) -> Result<(), Invalid> {
        container("failure.container", &self.container)?;
        text("failure.reason", &self.reason, 256)?;
        if let Some(message) = &self.message {
            text("failure.message", message, MAX_TEXT_BYTES)?;
        }
        if self.restart_count < 0 {
            return Err(bad("failure.restart_count", "is negative"));
        }
        image("failure.image", &self.image)
    }
}

/// The checks a job and a verdict share: the parts and the incident agree.
fn incident_agrees(
    incident: &crate::IncidentId,
    key: &IncidentKey,
    pod: &PodRef,
    failure: &Failure,
) -> Result<(), Invalid> {
    key.validate()?;
    pod.validate()?;
    failure.validate()?;
    if *incident != key.fingerprint() {
        return Err(bad("incident", format!("{incident} is not the fingerprint of its key")));
    }
    if key.namespace != pod.namespace {
        return Err(bad("key.namespace", "differs from the pod's namespace"));
    }
    if key.container != failure.container {
        return Err(bad("key.container", "differs from the failing container"));
    }
    if key.kind.family() != failure.kind.family() {
        return Err(bad("key.kind", "differs from the failure's kind"));
    }
    if key.workload.kind == crate::WorkloadKind::Pod && key.workload.name != pod.name {
        return Err(bad("key.workload", "a bare pod's incident must name the pod"));
    }
    Ok(())
}

impl Validate for FailureJob {
    fn validate(&self) -> Result<(), Invalid> {
        incident_agrees(&self.incident, &self.key, &self.pod, &self.failure)?;
        if self.affected_pods == 0 {
            return Err(bad("affected_pods", "is zero"));
        }
        Ok(())
    }
}

impl Validate for Action {
    fn validate(&self) -> Result<(), Invalid> {
        match self {
            Self::IncreaseMemory { container: name, from, to } => {
                container("action.container", name)?;
                if from.bytes() == 0 || to.bytes() == 0 {
                    return Err(bad("action", "a memory limit of zero"));
                }
                Ok(())
            }
            Self::RollbackImage { container: name, from, to } => {
                container("action.container", name)?;
                image("action.from", from)?;
                image("action.to", to)
            }
            Self::RollbackRevision { container: name, from, to } => {
                container("action.container", name)?;
                for (field, revision) in [("action.from", from), ("action.to", to)] {
                    if revision.number <= 0 {
                        return Err(bad(
                            field,
                            format!("revision {} is not a revision number", revision.number),
                        ));
                    }
                    if !is_dns_subdomain(&revision.name) {
                        return Err(bad(field, "the revision's name is not an object name"));
                    }
                }
                if from.number == to.number || from.name == to.name {
                    return Err(bad("action.to", "is the revision rolled back from"));
                }
                Ok(())
            }
            Self::PauseRollout { container: name, revision } => {
                container("action.container", name)?;
                if revision.number <= 0 || !is_dns_subdomain(&revision.name) {
                    return Err(bad("action.revision", "is not a revision of a workload"));
                }
                Ok(())
            }
            Self::None => Ok(()),
        }
    }
}

impl Validate for Verdict {
    fn validate(&self) -> Result<(), Invalid> {
        incident_agrees(&self.incident, &self.key, &self.pod, &self.failure)?;
        text("root_cause", &self.root_cause, MAX_TEXT_BYTES)?;
        if let Some(evidence) = &self.evidence {
            text("evidence", evidence, MAX_TEXT_BYTES)?;
        }
        if let Some(cause) = &self.caused_by {
            incident("caused_by", cause)?;
        }
        if self.confidence > 100 {
            return Err(bad("confidence", format!("{} is not a percentage", self.confidence)));
        }
        self.action.validate()?;
        match &self.source {
            VerdictSource::Rules { rule } => token("source.rule", rule, 128, false),
            VerdictSource::Model { model } => token("source.model", model, 256, false),
            VerdictSource::None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_subdomains_are_recognised() {
        for good in ["web-1", "web.v2.example", "a"] {
            assert!(is_dns_subdomain(good), "{good}");
        }
        for bad in ["", "Web", "a..b", "-a", "a-", "a b", "a/b", &"a".repeat(254)] {
            assert!(!is_dns_subdomain(bad), "{bad}");
        }
    }

    #[test]
    fn clipped_text_always_passes_the_text_check() {
        for raw in ["plain", "tab\tand\nnewline", "\u{1b}[31mred\u{0}", &"é".repeat(MAX_TEXT_BYTES)] {
            let clipped = clip_text(raw);
            assert!(text("t", &clipped, MAX_TEXT_BYTES).is_ok(), "{raw:?}");
        }
        assert_eq!(clip_text("a\u{7}b"), "a b");
    }

    #[test]
    fn an_oversized_payload_is_refused_before_it_is_parsed() {
        let huge = vec![b' '; MAX_PAYLOAD_BYTES + 1];
        assert!(matches!(decode_checked::<FailureJob>(&huge), Err(Invalid::Oversized(_))));
    }
}
