//! The book of open incidents: which pods show each incident, and when each is due for publishing.
//!
//! An incident of a controller-owned workload waits `group_wait` after its first failure, so replicas
//! that fail together are counted in one job; a bare pod's incident is due at once. A leader that takes
//! over makes every open incident due again (JetStream drops the ones already published).
//!
//! An incident stays open while any of its pods exists, up to `ttl` (the dedup window): a container
//! that crash-loops is running between its kills, and closing the incident each time would publish it
//! again on every kill. Past the window JetStream would accept the same id again, so a failure that is
//! still there then is a new job.

use std::{
    cmp::Reverse,
    collections::{BTreeSet, BinaryHeap, HashMap, HashSet, VecDeque},
    time::Duration,
};

use kubesent_proto::{FailureJob, IncidentId};
use tokio::time::Instant;

/// A change seen by the watch side.
#[derive(Debug, Clone, PartialEq)]
pub enum Update {
    /// A container of a pod entered a failure.
    Open(Box<FailureJob>),
    /// A pod was deleted.
    Gone {
        /// The pod.
        pod_uid: String,
    },
    /// A relist finished: only these pods exist.
    Resync(BTreeSet<String>),
    /// A pod no longer shows a waiting failure (an unschedulable pod was placed).
    Cleared {
        /// The pod.
        pod_uid: String,
        /// The incident it no longer shows.
        incident: IncidentId,
    },
}

struct OpenIncident {
    job: FailureJob,
    pods: BTreeSet<String>,
    opened_at: Instant,
    /// When it is due: a schedule entry for an earlier time is from before it was closed and opened
    /// again, and is skipped.
    due_at: Instant,
}

/// How long incidents about states a pod can leave by itself are held before they are due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Holds {
    /// An unschedulable pod (Pending).
    pub unschedulable: Duration,
    /// A scheduled pod whose containers have not started (still creating, or an init container still
    /// running).
    pub never_started: Duration,
    /// A running container that is not ready.
    pub not_ready: Duration,
}

impl Default for Holds {
    /// The detector's default thresholds.
    fn default() -> Self {
        Self {
            unschedulable: crate::DEFAULT_PENDING_THRESHOLD,
            never_started: crate::DEFAULT_START_THRESHOLD,
            not_ready: crate::DEFAULT_UNREADY_THRESHOLD,
        }
    }
}

/// Open incidents and their publishing schedule.
#[derive(Default)]
pub struct IncidentBook {
    open: HashMap<IncidentId, OpenIncident>,
    due: BinaryHeap<Reverse<(Instant, u64, IncidentId)>>,
    /// Incidents with an entry in `due` that has not been taken yet.
    scheduled: HashSet<IncidentId>,
    /// Entries in `due` whose incident was closed before its turn (skipped when they come up).
    stale: usize,
    /// Incidents in the order they were opened, for expiry.
    opened: VecDeque<(Instant, IncidentId)>,
    sequence: u64,
    /// How long incidents about waiting states wait before they are due.
    holds: Holds,
}

impl IncidentBook {
    /// A book whose unschedulable and not-ready incidents wait their hold (or the group wait, if longer)
    /// before they are due; one whose pods all leave that state by then is dropped unpublished.
    pub fn with_holds(holds: Holds) -> Self {
        Self { holds, ..Self::default() }
    }

    /// Number of open incidents.
    pub fn open(&self) -> usize {
        self.open.len()
    }

    /// Number of incidents waiting to be published (held ones included, closed ones not).
    pub fn pending(&self) -> usize {
        self.due.len().saturating_sub(self.stale)
    }

    fn schedule(&mut self, id: IncidentId, at: Instant) {
        self.sequence += 1;
        self.scheduled.insert(id.clone());
        self.due.push(Reverse((at, self.sequence, id)));
    }

    /// Closes `id`: its entry in `due`, if it has one, is now stale.
    fn close(&mut self, id: &IncidentId) {
        if self.open.remove(id).is_some() && self.scheduled.remove(id) {
            self.stale += 1;
        }
    }

    /// Closes every open incident `keep` says no to.
    fn close_unless(&mut self, mut keep: impl FnMut(&mut OpenIncident) -> bool) {
        let closing: Vec<IncidentId> =
            self.open.iter_mut().filter_map(|(id, incident)| (!keep(incident)).then(|| id.clone())).collect();
        for id in closing {
            self.close(&id);
        }
    }

    /// Applies a change. A new incident is due at `now`, or `now + group_wait` for a controller-owned workload.
    pub fn apply(&mut self, update: Update, now: Instant, group_wait: Duration) {
        match update {
            Update::Open(job) => {
                let id = job.incident.clone();
                // A Job's failure is held by the Job: its pods go when it passes its deadline.
                let pod = if job.failure.kind == kubesent_proto::FailureKind::JobFailed {
                    crate::jobs::holder(&job.key.template_hash)
                } else {
                    job.pod.uid.clone()
                };
                if let Some(incident) = self.open.get_mut(&id) {
                    incident.pods.insert(pod);
                    return;
                }
                let wait = if job.failure.kind == kubesent_proto::FailureKind::Unschedulable {
                    self.holds.unschedulable.max(group_wait)
                } else if job.failure.kind == kubesent_proto::FailureKind::NotReady {
                    self.holds.not_ready.max(group_wait)
                } else if job.failure.kind == kubesent_proto::FailureKind::NeverStarted {
                    self.holds.never_started.max(group_wait)
                } else if job.key.workload.kind == kubesent_proto::WorkloadKind::Pod {
                    Duration::ZERO
                } else {
                    group_wait
                };
                // Bounded, so no setting can overflow the clock; a longer wait would only delay the job.
                let due_at = now + wait.min(Duration::from_secs(3600));
                self.open.insert(
                    id.clone(),
                    OpenIncident { job: *job, pods: BTreeSet::from([pod]), opened_at: now, due_at },
                );
                self.opened.push_back((now, id.clone()));
                self.schedule(id, due_at);
            }
            Update::Gone { pod_uid } => self.close_unless(|incident| {
                incident.pods.remove(&pod_uid);
                !incident.pods.is_empty()
            }),
            Update::Cleared { pod_uid, incident } => {
                let emptied = self.open.get_mut(&incident).is_some_and(|open| {
                    open.pods.remove(&pod_uid);
                    open.pods.is_empty()
                });
                if emptied {
                    self.close(&incident);
                }
            }
            Update::Resync(existing) => self.close_unless(|incident| {
                incident
                    .pods
                    .retain(|uid| existing.contains(uid) || uid.starts_with(crate::jobs::HOLDER_PREFIX));
                !incident.pods.is_empty()
            }),
        }
    }

    /// Closes incidents opened `ttl` or longer before `now`.
    pub fn expire(&mut self, now: Instant, ttl: Duration) {
        while let Some((opened_at, id)) = self.opened.front().cloned() {
            if now.duration_since(opened_at) < ttl {
                break;
            }
            self.opened.pop_front();
            if self.open.get(&id).is_some_and(|incident| incident.opened_at == opened_at) {
                self.close(&id);
            }
        }
    }

    /// Makes every open incident due now (a new leader republishes them), except those still held for
    /// their threshold, which stay due when they were.
    pub fn republish_all(&mut self, now: Instant) {
        self.due.clear();
        self.scheduled.clear();
        self.stale = 0;
        let ids: Vec<(IncidentId, Instant)> =
            self.open.iter().map(|(id, incident)| (id.clone(), incident.due_at)).collect();
        for (id, due_at) in ids {
            // One held for a threshold stays held until it is due.
            let at = due_at.max(now);
            if let Some(incident) = self.open.get_mut(&id) {
                incident.due_at = at;
            }
            self.schedule(id, at);
        }
    }

    /// When the next incident is due, if any.
    pub fn next_due(&self) -> Option<Instant> {
        self.due.peek().map(|Reverse((at, _, _))| *at)
    }

    /// Takes the next job due at `now`, with the number of pods that show it. Incidents closed before
    /// their turn are skipped. A job whose publishing fails goes back with [`IncidentBook::retry`].
    pub fn take_due(&mut self, now: Instant) -> Option<FailureJob> {
        loop {
            let Reverse((at, _, _)) = self.due.peek()?;
            if *at > now {
                return None;
            }
            let Reverse((at, _, id)) = self.due.pop()?;
            if let Some(incident) = self.open.get(&id).filter(|incident| at >= incident.due_at) {
                self.scheduled.remove(&id);
                let mut job = incident.job.clone();
                job.affected_pods = u32::try_from(incident.pods.len()).unwrap_or(u32::MAX).max(1);
                return Some(job);
            }
            self.stale = self.stale.saturating_sub(1);
        }
    }

    /// Schedules a job whose publishing failed again at `at`, if its incident is still open.
    pub fn retry(&mut self, id: &IncidentId, at: Instant) {
        if self.open.contains_key(id) {
            self.schedule(id.clone(), at);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kubesent_proto::{Failure, FailureKind, IncidentKey, PodRef, WorkloadRef};

    fn job(workload_kind: &str, pod: &str) -> Box<FailureJob> {
        let key = IncidentKey {
            namespace: "shop".into(),
            workload: WorkloadRef {
                kind: kubesent_proto::WorkloadKind::parse(workload_kind).expect("a workload kind"),
                name: "web".into(),
            },
            container: "app".into(),
            kind: FailureKind::OomKilled,
            template_hash: "h".into(),
        };
        Box::new(FailureJob {
            schema: 1,
            incident: key.fingerprint(),
            key,
            pod: PodRef {
                namespace: "shop".into(),
                name: pod.into(),
                uid: pod.into(),
                resource_version: "1".into(),
            },
            failure: Failure {
                kind: FailureKind::OomKilled,
                container: "app".into(),
                init_container: false,
                reason: "OOMKilled".into(),
                message: None,
                exit_code: Some(137),
                restart_count: 1,
                image: "web:1".into(),
                failed_at: None,
            },
            affected_pods: 1,
            detected_at: jiff::Timestamp::UNIX_EPOCH,
        })
    }

    #[test]
    fn fifty_failing_replicas_are_one_job_that_counts_them() {
        let mut book = IncidentBook::default();
        let start = Instant::now();
        let wait = Duration::from_secs(2);
        for i in 0..50 {
            book.apply(Update::Open(job("Deployment", &format!("web-{i}"))), start, wait);
        }
        assert!(book.take_due(start).is_none(), "a workload's incident waits for its replicas");
        let published = book.take_due(start + wait).expect("due after the group wait");
        assert_eq!(published.affected_pods, 50);
        assert!(book.take_due(start + wait).is_none(), "one job");
    }

    #[test]
    fn a_bare_pod_is_due_at_once_and_a_closed_incident_is_never_published() {
        let mut book = IncidentBook::default();
        let now = Instant::now();
        book.apply(Update::Open(job("Pod", "solo")), now, Duration::from_secs(2));
        book.apply(Update::Open(job("Pod", "other")), now, Duration::from_secs(2));
        book.apply(Update::Gone { pod_uid: "solo".into() }, now, Duration::ZERO);
        book.apply(Update::Gone { pod_uid: "other".into() }, now, Duration::ZERO);
        assert!(book.take_due(now).is_none());
        assert_eq!(book.open(), 0);
    }

    #[test]
    fn an_incident_stays_open_through_a_crash_loop_and_expires_after_the_window() {
        let mut book = IncidentBook::default();
        let now = Instant::now();
        book.apply(Update::Open(job("Pod", "looping")), now, Duration::ZERO);
        book.take_due(now).expect("published once");
        // The same container fails again and again: still the same open incident, nothing new is due.
        for i in 1..5 {
            book.apply(Update::Open(job("Pod", "looping")), now + Duration::from_secs(i), Duration::ZERO);
        }
        assert!(book.take_due(now + Duration::from_secs(5)).is_none());
        book.expire(now + Duration::from_secs(900), Duration::from_secs(900));
        assert_eq!(book.open(), 0);
        book.apply(Update::Open(job("Pod", "looping")), now + Duration::from_secs(901), Duration::ZERO);
        assert!(
            book.take_due(now + Duration::from_secs(901)).is_some(),
            "a failure past the window is a new job"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_pod_unscheduled_or_not_started_waits_for_its_threshold_and_one_that_moves_on_meanwhile_is_never_published()
     {
        for (kind, hold) in [
            (kubesent_proto::FailureKind::Unschedulable, Duration::from_secs(120)),
            (kubesent_proto::FailureKind::NeverStarted, Duration::from_secs(300)),
        ] {
            let mut book = IncidentBook::with_holds(Holds {
                unschedulable: Duration::from_secs(120),
                never_started: Duration::from_secs(300),
                not_ready: Duration::from_secs(600),
            });
            let group_wait = Duration::from_secs(2);
            let opened = Instant::now();
            let mut pending = job("Deployment", "web-1");
            pending.failure.kind = kind;
            let id = pending.incident.clone();
            book.apply(Update::Open(pending.clone()), opened, group_wait);
            assert_eq!(
                book.next_due(),
                Some(opened + hold),
                "{kind:?}: the publisher sleeps until the threshold, not the grouping window"
            );
            tokio::time::advance(hold / 2).await;
            assert!(book.take_due(Instant::now()).is_none(), "{kind:?}: not before the threshold");
            book.apply(
                Update::Cleared { pod_uid: pending.pod.uid.clone(), incident: id.clone() },
                Instant::now(),
                group_wait,
            );
            assert_eq!((book.open(), book.pending()), (0, 0), "{kind:?}: closed, nothing to publish");
            tokio::time::advance(hold / 2 + Duration::from_secs(1)).await;
            assert!(book.take_due(Instant::now()).is_none(), "{kind:?}: moved on in time: never published");

            let reopened = Instant::now();
            book.apply(Update::Open(pending), reopened, group_wait);
            tokio::time::advance(hold - Duration::from_secs(1)).await;
            assert!(
                book.take_due(Instant::now()).is_none(),
                "{kind:?}: a new hold from when it was seen again"
            );
            tokio::time::advance(Duration::from_secs(1)).await;
            assert_eq!(book.pending(), 1, "{kind:?}: the one cleared meanwhile is no longer pending");
            assert_eq!(
                book.take_due(Instant::now()).map(|j| j.incident),
                Some(id),
                "{kind:?}: still stuck: published"
            );
            assert_eq!(book.pending(), 0, "{kind:?}: nothing left to publish");
        }
    }

    #[test]
    fn a_container_that_turns_unready_between_crashes_is_held_from_each_time_it_turns_unready() {
        let mut book = IncidentBook::with_holds(Holds {
            unschedulable: Duration::from_secs(120),
            never_started: Duration::from_secs(300),
            not_ready: Duration::from_secs(300),
        });
        let now = Instant::now();
        let mut unready = job("Deployment", "web-1");
        unready.failure.kind = kubesent_proto::FailureKind::NotReady;
        let id = unready.incident.clone();
        let cleared = Update::Cleared { pod_uid: unready.pod.uid.clone(), incident: id.clone() };
        // Unready, then crashed (cleared), then unready again 200 s later.
        book.apply(Update::Open(unready.clone()), now, Duration::from_secs(2));
        book.apply(cleared.clone(), now + Duration::from_secs(10), Duration::from_secs(2));
        let again = now + Duration::from_secs(200);
        book.apply(Update::Open(unready.clone()), again, Duration::from_secs(2));
        assert!(
            book.take_due(now + Duration::from_secs(301)).is_none(),
            "the first hold's turn does not publish the second"
        );
        book.republish_all(now + Duration::from_secs(302));
        assert!(book.take_due(now + Duration::from_secs(303)).is_none(), "a new leader keeps the hold");
        assert_eq!(
            book.take_due(again + Duration::from_secs(300)).map(|j| j.incident),
            Some(id),
            "unready for the whole hold: published"
        );
    }

    #[test]
    fn a_new_leader_makes_every_open_incident_due_again() {
        let mut book = IncidentBook::default();
        let now = Instant::now();
        book.apply(Update::Open(job("Pod", "a")), now, Duration::ZERO);
        book.take_due(now).expect("due");
        book.republish_all(now);
        assert!(book.take_due(now).is_some());
    }

    #[test]
    fn a_failed_publish_is_retried_later_while_the_incident_is_open() {
        let mut book = IncidentBook::default();
        let now = Instant::now();
        book.apply(Update::Open(job("Pod", "a")), now, Duration::ZERO);
        let taken = book.take_due(now).expect("due");
        book.retry(&taken.incident, now + Duration::from_secs(1));
        assert!(book.take_due(now).is_none());
        assert!(book.take_due(now + Duration::from_secs(1)).is_some());
    }
}
