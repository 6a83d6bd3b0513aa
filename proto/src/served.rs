//! What each workload revision served, as the `kubesent-revisions` bucket holds it: the detector's record
//! of revisions it saw healthy (every desired pod ready, no restart) for at least its settling time
//! (`--known-good-after`). The cluster forgets whether a revision scaled down by a finished rollout ever
//! worked; this record does not, so a revision that crashes a moment after its rollout completed can be
//! rolled back to the one before it.
//!
//! One key per workload (`<namespace>.<kind>.<name>`), holding its last [`MAX_SERVED_PER_WORKLOAD`]
//! known-good revisions. Only the detector role may write the bucket; the diagnoser and the remediator
//! read it, and the remediator checks every record against the workload's own history before it trusts
//! it (a record can only ever select a revision the owner itself still holds).

use jiff::{SignedDuration, Timestamp};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{WorkloadKind, WorkloadRef};

/// The bucket of served revisions.
pub const REVISIONS_BUCKET: &str = "kubesent-revisions";
/// Known-good revisions kept per workload (the oldest is dropped first).
pub const MAX_SERVED_PER_WORKLOAD: usize = 10;
/// Largest record read (ten revisions of a workload with long names fit in a fraction of it).
pub const MAX_SERVED_BYTES: usize = 16 * 1024;

/// The key of a workload's record, `None` for a kind without revisions or a name no key can hold.
pub fn served_key(namespace: &str, workload: &WorkloadRef) -> Option<String> {
    let kind = match workload.kind {
        WorkloadKind::Deployment => "deployment",
        WorkloadKind::StatefulSet => "statefulset",
        _ => return None,
    };
    // Namespaces are DNS labels and workload names DNS subdomains: both fit a KV key as they are.
    let fits = |s: &str, dots: bool| {
        !s.is_empty()
            && s.len() <= 253
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || (dots && b == b'.'))
            && !s.starts_with('.')
            && !s.ends_with('.')
            && !s.contains("..")
    };
    (fits(namespace, false) && fits(&workload.name, true))
        .then(|| format!("{namespace}.{kind}.{}", workload.name))
}

/// The known-good revisions of one workload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ServedRevisions {
    /// Payload schema version.
    pub schema: u32,
    /// The workload's namespace.
    pub namespace: String,
    /// The workload.
    pub workload: WorkloadRef,
    /// The workload's uid: a workload deleted and created again under the same name starts afresh.
    pub uid: String,
    /// Known-good revisions, oldest first, at most [`MAX_SERVED_PER_WORKLOAD`].
    pub revisions: Vec<ServedRevision>,
}

/// One revision that served healthy for at least the detector's settling time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ServedRevision {
    /// The ReplicaSet or ControllerRevision holding it.
    pub name: String,
    /// Its `pod-template-hash` (Deployment) or `controller-revision-hash` (StatefulSet).
    pub hash: String,
    /// Pods it served with, every one ready.
    pub replicas: i32,
    /// Since when every desired pod of it was ready without a restart.
    pub healthy_since: Timestamp,
    /// When it had served healthy for the settling time.
    pub known_good_at: Timestamp,
    /// When it stopped serving healthy (scaled down, a pod unready or restarted); `None` while it
    /// still serves, or when the detector did not see it stop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<Timestamp>,
}

impl ServedRevision {
    /// How long it is proven to have served healthy: until it stopped, or until it was recorded
    /// known-good when the end was not seen.
    pub fn proven(&self) -> SignedDuration {
        self.until.unwrap_or(self.known_good_at).duration_since(self.healthy_since)
    }

    /// A sentence for an evidence list: "served 3/3 ready for 6h until 2026-12-06T14:02:00Z".
    pub fn describe(&self) -> String {
        let seconds = self.proven().as_secs().max(0);
        let span = match seconds / 60 {
            m if m >= 120 => format!("{} h", m / 60),
            m if m >= 2 => format!("{m} min"),
            _ => format!("{seconds} s"),
        };
        let end = match self.until {
            Some(until) => format!("until {}", until.strftime("%Y-%m-%d %H:%M UTC")),
            None => format!("by {}", self.known_good_at.strftime("%Y-%m-%d %H:%M UTC")),
        };
        format!("served {0}/{0} ready for {span} {end}", self.replicas)
    }
}

/// Why a record does not show a revision known-good.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotKnownGood {
    /// No record of the workload, or none of that revision.
    #[error("KubeSent never saw revision {0} serve healthy")]
    NeverSeen(String),
    /// The record is of another workload of the same name (deleted and created again).
    #[error("the record of revision {revision} is of another {workload} (uid {recorded}, not {actual})")]
    OtherWorkload {
        /// The revision.
        revision: String,
        /// The workload.
        workload: WorkloadRef,
        /// The uid recorded.
        recorded: String,
        /// The workload's uid now.
        actual: String,
    },
    /// The record names another hash than the revision has.
    #[error("the record of revision {revision} names hash {recorded}, the revision has {actual}")]
    OtherHash {
        /// The revision.
        revision: String,
        /// The hash recorded.
        recorded: String,
        /// The revision's hash.
        actual: String,
    },
    /// It served healthy for less than the settling time.
    #[error(
        "revision {revision} served healthy for {served_secs} s, less than the {needed_secs} s that make it known-good"
    )]
    TooYoung {
        /// The revision.
        revision: String,
        /// Seconds it is proven to have served.
        served_secs: i64,
        /// Seconds required.
        needed_secs: i64,
    },
    /// The record is absurd (ends before it starts, known-good before healthy, in the future).
    #[error("the record of revision {0} is not consistent")]
    Inconsistent(String),
}

impl ServedRevisions {
    /// An empty record for a workload.
    pub fn new(namespace: &str, workload: WorkloadRef, uid: &str) -> Self {
        Self {
            schema: crate::SCHEMA_VERSION,
            namespace: namespace.to_owned(),
            workload,
            uid: uid.to_owned(),
            revisions: Vec::new(),
        }
    }

    /// Records `served`, replacing what was known of the same revision unless that is the same healthy
    /// stretch seen earlier (not ended, started before): then the earlier start stands. A record of
    /// another uid is started afresh. Keeps the newest [`MAX_SERVED_PER_WORKLOAD`]. Whether anything
    /// changed.
    pub fn record(&mut self, uid: &str, mut served: ServedRevision) -> bool {
        if self.uid != uid {
            self.uid = uid.to_owned();
            self.revisions.clear();
        }
        if let Some(known) = self.revisions.iter().find(|r| r.name == served.name && r.hash == served.hash)
            && known.until.is_none()
            && known.healthy_since <= served.healthy_since
        {
            // Still the same healthy stretch, seen from a detector that started watching later (a new
            // leader): the earlier start stands.
            if known.replicas == served.replicas {
                return false;
            }
            served.healthy_since = known.healthy_since;
            served.known_good_at = known.known_good_at;
        }
        self.revisions.retain(|r| r.name != served.name);
        self.revisions.push(served);
        self.revisions.sort_by_key(|r| r.known_good_at);
        let excess = self.revisions.len().saturating_sub(MAX_SERVED_PER_WORKLOAD);
        self.revisions.drain(..excess);
        true
    }

    /// Records that revision `name` stopped serving healthy at `at` (nothing when it is not recorded
    /// or already ended).
    pub fn end(&mut self, uid: &str, name: &str, at: Timestamp) -> bool {
        if self.uid != uid {
            return false;
        }
        match self.revisions.iter_mut().find(|r| r.name == name && r.until.is_none()) {
            Some(revision) => {
                revision.until = Some(at.max(revision.known_good_at));
                true
            }
            None => false,
        }
    }

    /// The record of revision `name` (hash `hash`) of the workload with `uid`, if it proves the
    /// revision served healthy for at least `settle` before `now`.
    pub fn known_good(
        &self,
        uid: &str,
        name: &str,
        hash: &str,
        settle: std::time::Duration,
        now: Timestamp,
    ) -> Result<&ServedRevision, NotKnownGood> {
        let revision = self
            .revisions
            .iter()
            .rev()
            .find(|r| r.name == name)
            .ok_or_else(|| NotKnownGood::NeverSeen(name.to_owned()))?;
        if self.uid != uid {
            return Err(NotKnownGood::OtherWorkload {
                revision: name.to_owned(),
                workload: self.workload.clone(),
                recorded: self.uid.clone(),
                actual: uid.to_owned(),
            });
        }
        if revision.hash != hash {
            return Err(NotKnownGood::OtherHash {
                revision: name.to_owned(),
                recorded: revision.hash.clone(),
                actual: hash.to_owned(),
            });
        }
        let ordered = revision.healthy_since <= revision.known_good_at
            && revision.until.is_none_or(|until| until >= revision.known_good_at)
            && revision.known_good_at <= now
            && revision.replicas > 0;
        if !ordered {
            return Err(NotKnownGood::Inconsistent(name.to_owned()));
        }
        let needed = SignedDuration::try_from(settle).unwrap_or(SignedDuration::MAX);
        if revision.proven() < needed {
            return Err(NotKnownGood::TooYoung {
                revision: name.to_owned(),
                served_secs: revision.proven().as_secs(),
                needed_secs: needed.as_secs(),
            });
        }
        Ok(revision)
    }

    /// Reads a record from the bucket's bytes (bounded; anything else is refused).
    pub fn decode(bytes: &[u8]) -> Result<Self, UnreadableRecord> {
        if bytes.len() > MAX_SERVED_BYTES {
            return Err(UnreadableRecord(format!("{} bytes, at most {MAX_SERVED_BYTES}", bytes.len())));
        }
        let record: Self =
            serde_json::from_slice(bytes).map_err(|error| UnreadableRecord(error.to_string()))?;
        if record.revisions.len() > MAX_SERVED_PER_WORKLOAD {
            return Err(UnreadableRecord(format!(
                "{} revisions recorded, at most {MAX_SERVED_PER_WORKLOAD}",
                record.revisions.len()
            )));
        }
        Ok(record)
    }
}

/// A record that cannot be read (too large, not JSON of the shape, too many revisions).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unreadable record of served revisions: {0}")]
pub struct UnreadableRecord(pub String);

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn at(text: &str) -> Timestamp {
        text.parse().expect("timestamp")
    }

    fn web() -> WorkloadRef {
        WorkloadRef { kind: WorkloadKind::Deployment, name: "web".into() }
    }

    fn served(name: &str, since: &str, good: &str, until: Option<&str>) -> ServedRevision {
        ServedRevision {
            name: name.into(),
            hash: name.trim_start_matches("web-").into(),
            replicas: 3,
            healthy_since: at(since),
            known_good_at: at(good),
            until: until.map(at),
        }
    }

    const TEN_MINUTES: Duration = Duration::from_secs(600);

    #[test]
    fn keys_name_namespace_kind_and_workload_and_refuse_what_no_key_can_hold() {
        assert_eq!(served_key("shop", &web()).as_deref(), Some("shop.deployment.web"));
        let set = WorkloadRef { kind: WorkloadKind::StatefulSet, name: "db.v2".into() };
        assert_eq!(served_key("shop", &set).as_deref(), Some("shop.statefulset.db.v2"));
        let job = WorkloadRef { kind: WorkloadKind::Job, name: "x".into() };
        assert_eq!(served_key("shop", &job), None);
        for bad in ["", "a*b", "a>b", "a b", "A", ".a", "a..b"] {
            let named = WorkloadRef { kind: WorkloadKind::Deployment, name: bad.into() };
            assert_eq!(served_key("shop", &named), None, "{bad:?}");
        }
        assert_eq!(served_key("a.b", &web()), None, "a namespace is a DNS label");
    }

    #[test]
    fn a_revision_that_served_long_enough_is_known_good_and_says_for_how_long() {
        let mut record = ServedRevisions::new("shop", web(), "u1");
        record.record("u1", served("web-111", "2026-12-06T08:00:00Z", "2026-12-06T08:10:00Z", None));
        assert!(record.end("u1", "web-111", at("2026-12-06T14:02:00Z")));
        let good = record
            .known_good("u1", "web-111", "111", TEN_MINUTES, at("2026-12-06T15:00:00Z"))
            .expect("known good");
        assert_eq!(good.describe(), "served 3/3 ready for 6 h until 2026-12-06 14:02 UTC");
        let mut short = good.clone();
        short.until = Some(short.healthy_since + SignedDuration::from_secs(45));
        assert_eq!(short.describe(), "served 3/3 ready for 45 s until 2026-12-06 08:00 UTC");
        short.until = Some(short.healthy_since + SignedDuration::from_mins(30));
        assert_eq!(short.describe(), "served 3/3 ready for 30 min until 2026-12-06 08:30 UTC");
    }

    #[test]
    fn missing_young_foreign_or_absurd_records_prove_nothing() {
        let now = at("2026-12-06T15:00:00Z");
        let mut record = ServedRevisions::new("shop", web(), "u1");
        record.record("u1", served("web-111", "2026-12-06T08:00:00Z", "2026-12-06T08:05:00Z", None));
        record.record(
            "u1",
            served("web-222", "2026-12-06T09:00:00Z", "2026-12-06T09:00:00Z", Some("2026-12-06T08:00:00Z")),
        );
        assert!(matches!(
            record.known_good("u1", "web-333", "333", TEN_MINUTES, now),
            Err(NotKnownGood::NeverSeen(_))
        ));
        assert!(matches!(
            record.known_good("u1", "web-111", "111", TEN_MINUTES, now),
            Err(NotKnownGood::TooYoung { served_secs: 300, needed_secs: 600, .. })
        ));
        assert!(record.known_good("u1", "web-111", "111", Duration::from_secs(300), now).is_ok());
        assert!(matches!(
            record.known_good("u2", "web-111", "111", Duration::ZERO, now),
            Err(NotKnownGood::OtherWorkload { .. })
        ));
        assert!(matches!(
            record.known_good("u1", "web-111", "999", Duration::ZERO, now),
            Err(NotKnownGood::OtherHash { .. })
        ));
        assert!(matches!(
            record.known_good("u1", "web-222", "222", Duration::ZERO, now),
            Err(NotKnownGood::Inconsistent(_))
        ));
        assert!(matches!(
            record.known_good("u1", "web-111", "111", Duration::ZERO, at("2026-12-06T08:00:00Z")),
            Err(NotKnownGood::Inconsistent(_))
        ));
    }

    #[test]
    fn a_record_keeps_the_newest_revisions_and_starts_afresh_for_a_new_workload() {
        let mut record = ServedRevisions::new("shop", web(), "u1");
        for hour in 0..12 {
            let since = format!("2026-12-06T{hour:02}:00:00Z");
            let good = format!("2026-12-06T{hour:02}:10:00Z");
            record.record("u1", served(&format!("web-{hour}"), &since, &good, None));
        }
        assert_eq!(record.revisions.len(), MAX_SERVED_PER_WORKLOAD);
        assert_eq!(record.revisions[0].name, "web-2");
        assert!(!record.end("u2", "web-11", at("2026-12-06T13:00:00Z")), "not that workload's record");
        record.record("u2", served("web-1", "2026-12-06T13:00:00Z", "2026-12-06T13:10:00Z", None));
        assert_eq!(record.uid, "u2");
        assert_eq!(record.revisions.len(), 1);
    }

    #[test]
    fn a_later_view_of_the_same_healthy_stretch_keeps_its_earlier_start() {
        let mut record = ServedRevisions::new("shop", web(), "u1");
        assert!(record.record("u1", served("web-111", "2026-12-06T08:00:00Z", "2026-12-06T08:10:00Z", None)));
        // A new leader that started watching at 09:00 records it again.
        assert!(
            !record.record("u1", served("web-111", "2026-12-06T09:00:00Z", "2026-12-06T09:10:00Z", None))
        );
        assert_eq!(record.revisions[0].healthy_since, at("2026-12-06T08:00:00Z"));
        // After an end, a new stretch is a new record.
        record.end("u1", "web-111", at("2026-12-06T10:00:00Z"));
        assert!(record.record("u1", served("web-111", "2026-12-06T11:00:00Z", "2026-12-06T11:10:00Z", None)));
        assert_eq!(record.revisions[0].healthy_since, at("2026-12-06T11:00:00Z"));
    }

    #[test]
    fn oversized_or_malformed_records_are_refused_when_read() {
        assert!(ServedRevisions::decode(&vec![b' '; MAX_SERVED_BYTES + 1]).is_err());
        assert!(ServedRevisions::decode(b"{\"schema\":1}").is_err());
        let mut record = ServedRevisions::new("shop", web(), "u1");
        record.record("u1", served("web-1", "2026-12-06T08:00:00Z", "2026-12-06T08:10:00Z", None));
        let bytes = serde_json::to_vec(&record).expect("encodes");
        assert_eq!(ServedRevisions::decode(&bytes).expect("decodes"), record);
    }
}
