//! Operator decisions on remediations that wait for approval, as the `kubesent-intents` bucket holds
//! them.
//!
//! An operator never writes an intent. It writes a decision under `decision.<its NATS user>.<incident>`
//! in the intents bucket, a key the NATS permissions let only that user write (`deploy/base/nats/
//! auth.conf`), so the remediator knows from the key alone which user decided; the name the operator
//! gives (`--by`, `$USER`) is recorded beside it. The leading remediator takes each decision, checks it
//! against the intent, and for an approval decides the whole remediation again against the cluster as it
//! is then; then it removes the decision. A decision for an incident that is not waiting is recorded in
//! the log and dropped.

use jiff::Timestamp;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::IncidentId;

/// The key prefix of decisions.
pub const DECISION_PREFIX: &str = "decision";
/// Largest decision the remediator reads.
pub const MAX_DECISION_BYTES: usize = 4096;
/// Longest name an operator may give.
const MAX_NAME: usize = 128;

/// Approve or reject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Choice {
    /// Carry the remediation out (after checking it against the cluster again).
    Approve,
    /// Record it as denied and free its target.
    Reject,
}

/// What an operator decided about one incident.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Decision {
    /// Payload schema version.
    pub schema: u32,
    /// The incident (must be the one the key names).
    pub incident: IncidentId,
    /// Approve or reject.
    pub decision: Choice,
    /// The name the operator gave (self-reported: `--by`, `$USER`).
    pub by: String,
    /// Why (recorded with a rejection).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When it was decided.
    pub at: Timestamp,
}

/// A decision as the remediator read it: what was decided, and by which NATS user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Taken {
    /// The NATS user whose key it was written under.
    pub user: String,
    /// The decision.
    pub decision: Decision,
}

impl Taken {
    /// Who decided, for intents and outcomes: the name given and the NATS user that wrote it.
    pub fn attribution(&self) -> String {
        format!("{} (NATS user {})", self.decision.by, self.user)
    }
}

/// Why a decision was not taken.
#[derive(Debug, thiserror::Error)]
pub enum DecisionError {
    /// The key is not `decision.<user>.<incident>`.
    #[error("{0:?} is not a decision key")]
    Key(String),
    /// The value is not a decision for the incident its key names.
    #[error("decision {key} is unreadable: {why}")]
    Unreadable {
        /// The key.
        key: String,
        /// What is wrong.
        why: String,
    },
}

/// Whether `user` can be a key token (what NATS user names used for operators must be).
/// Whether `user` can be one token of a bucket key (a NATS user name).
pub fn is_key_token(user: &str) -> bool {
    !user.is_empty()
        && user.len() <= 128
        && user.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'=')
}

/// The key of `user`'s decision about `incident`.
pub fn key(user: &str, incident: &IncidentId) -> Result<String, DecisionError> {
    if !is_key_token(user) {
        return Err(DecisionError::Key(format!("{DECISION_PREFIX}.{user}.{incident}")));
    }
    Ok(format!("{DECISION_PREFIX}.{user}.{incident}"))
}

/// The user and incident a decision key names.
pub fn parse_key(key: &str) -> Result<(String, IncidentId), DecisionError> {
    let mut parts = key.splitn(3, '.');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(DECISION_PREFIX), Some(user), Some(incident))
            if is_key_token(user) && incident.starts_with("inc-") && !incident.contains('.') =>
        {
            Ok((user.to_owned(), IncidentId(incident.to_owned())))
        }
        _ => Err(DecisionError::Key(key.to_owned())),
    }
}

/// Reads the decision stored under `key`: small, of a known schema, for the incident the key names.
pub fn read(key: &str, value: &[u8]) -> Result<Taken, DecisionError> {
    let (user, incident) = parse_key(key)?;
    let unreadable = |why: String| DecisionError::Unreadable { key: key.to_owned(), why };
    if value.len() > MAX_DECISION_BYTES {
        return Err(unreadable(format!("{} bytes", value.len())));
    }
    let mut decision: Decision = serde_json::from_slice(value).map_err(|e| unreadable(e.to_string()))?;
    if decision.schema != crate::SCHEMA_VERSION {
        return Err(unreadable(format!("schema {}", decision.schema)));
    }
    if decision.incident != incident {
        return Err(unreadable(format!("it names {} under the key of {incident}", decision.incident)));
    }
    decision.by = crate::validate::clip_text_to(&decision.by.replace(['\n', '\t'], " "), MAX_NAME);
    decision.reason = decision.reason.as_deref().map(|r| crate::validate::clip_text_to(r, 1024));
    Ok(Taken { user, decision })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decision(incident: &str) -> Decision {
        Decision {
            schema: crate::SCHEMA_VERSION,
            incident: IncidentId(incident.into()),
            decision: Choice::Approve,
            by: "alice".into(),
            reason: None,
            at: jiff::Timestamp::UNIX_EPOCH,
        }
    }

    #[test]
    fn the_key_names_the_user_who_could_write_it_and_the_incident() {
        let incident = IncidentId("inc-0123456789abcdef01234567".into());
        let key = key("kubesent-operator", &incident).expect("key");
        assert_eq!(key, "decision.kubesent-operator.inc-0123456789abcdef01234567");
        assert_eq!(parse_key(&key).expect("parses"), ("kubesent-operator".into(), incident.clone()));
        let taken =
            read(&key, &serde_json::to_vec(&decision(incident.as_str())).expect("json")).expect("read");
        assert_eq!(taken.attribution(), "alice (NATS user kubesent-operator)");
    }

    #[test]
    fn malformed_keys_and_decisions_are_refused() {
        for bad in [
            "decision",
            "decision.alice",
            "decision..inc-1",
            "decision.a.b.inc-1",
            "paused",
            "decision.al ice.inc-1",
        ] {
            assert!(parse_key(bad).is_err(), "{bad}");
        }
        assert!(key("al.ice", &IncidentId("inc-1".into())).is_err(), "a user cannot add key tokens");
        let key = "decision.alice.inc-1";
        assert!(read(key, b"not json").is_err());
        assert!(
            read(key, &serde_json::to_vec(&decision("inc-2")).expect("json")).is_err(),
            "another incident"
        );
        let mut newer = serde_json::to_value(decision("inc-1")).expect("json");
        newer["schema"] = serde_json::json!(9);
        assert!(read(key, &serde_json::to_vec(&newer).expect("json")).is_err());
        let mut extra = serde_json::to_value(decision("inc-1")).expect("json");
        extra["action"] = serde_json::json!({"type": "rollback_image"});
        assert!(
            read(key, &serde_json::to_vec(&extra).expect("json")).is_err(),
            "a decision carries no action"
        );
        assert!(read(key, &vec![b' '; MAX_DECISION_BYTES + 1]).is_err());
    }

    #[test]
    fn a_given_name_is_kept_to_one_short_line() {
        let mut long = decision("inc-1");
        long.by = format!("mallory\n\u{1b}[2J{}", "x".repeat(500));
        let taken = read("decision.alice.inc-1", &serde_json::to_vec(&long).expect("json")).expect("read");
        assert!(taken.decision.by.len() <= MAX_NAME && !taken.decision.by.contains('\n'));
        assert!(!taken.decision.by.contains('\u{1b}'));
    }
}
