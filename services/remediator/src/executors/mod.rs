//! Executors: one per strategy, each in its own file, each doing the work of one phase of an intent at
//! a time. The phase loop around them is shared ([`Remediator::execute`]): it stops at approval, stores
//! every phase an executor reaches before going on (so a replica that takes over continues from there),
//! records how the intent ends and releases its lock, and switches strategy when an executor hands the
//! intent over (an in-place resize the node cannot fit becomes a force replace). Adding a strategy
//! takes: its `Strategy` (and, for a new kind of change, its `Action`) in `kubesent-proto`; the rung
//! that chooses it in [`crate::ladder::rung`] and its bounds in [`crate::bounds`]; the intent it writes in
//! [`crate::plan::decide`]; a file here and one arm in [`Remediator::execute`]; and its reversal in
//! [`crate::undo`].

mod owner_patch;
mod pod_patch;
mod replace;
mod resize;

use std::future::Future;

use k8s_openapi::api::core::v1::Pod;
use kube::{Api, Resource as _};
use kube_runtime::{events::EventType, watcher};
use kubesent_proto::{self as proto, OutcomeResult, Strategy};

use tracing::warn;

use crate::{Finished, HandOff, Remediator, StepError, awaiting_approval, intent, ladder};
use kubesent_proto::intent::{Intent, Phase};

/// Where an executor's step leaves the intent.
#[derive(Debug)]
pub(crate) enum Step {
    /// The intent changed (a new phase, or a new record such as a restart baseline): store it and
    /// step again.
    Advanced,
    /// The intent ends with this result.
    Finish {
        /// How it ended.
        result: OutcomeResult,
        /// Why, in words.
        detail: String,
        /// The pod that replaced the target, for a force replace.
        replacement_uid: Option<String>,
    },
    /// Another strategy carries the intent on from `Pending`.
    HandOver(Strategy),
}

impl Step {
    fn finish(result: OutcomeResult, detail: impl Into<String>) -> Self {
        Self::Finish { result, detail: detail.into(), replacement_uid: None }
    }
}

/// One strategy. `step` is called with the intent in a phase between `Pending` and its verification,
/// never awaiting approval and never done; it does that phase's work against the cluster, idempotently
/// (a takeover may run a step again after a crash), and says where that leaves the intent.
pub(crate) trait Executor {
    /// Does the work of the intent's current phase.
    fn step<'a>(
        &'a self,
        remediator: &'a Remediator,
        intent: &'a mut Intent,
    ) -> impl Future<Output = Result<Step, StepError>> + Send + 'a;
}

impl Remediator {
    /// Carries an intent through its strategy's phases to its end, from whatever phase it is in.
    pub(crate) async fn execute(
        &self,
        mut intent: Intent,
        mut revision: u64,
        hand_off: HandOff,
    ) -> Result<Finished, StepError> {
        loop {
            match intent.phase {
                // Only drive() moves an intent past approval; never act on one here.
                Phase::AwaitingApproval | Phase::Approved => return Ok(awaiting_approval(&intent)),
                // Its outcome was recorded before it was marked done: a redelivered verdict or a second
                // task finds it so, and records nothing again (no second outcome, metric or notification).
                Phase::Done => return Ok(Finished { recorded: true, ..Finished::of(&intent) }),
                // The change is made: what is left is verifying it, apart.
                Phase::Created | Phase::Applied if hand_off == HandOff::AtVerification => {
                    return Ok(Finished { verifying: true, ..Finished::of(&intent) });
                }
                Phase::Pending | Phase::Deleted | Phase::Created | Phase::Applied => {}
            }
            // Each step's future may hold a watcher; boxing keeps the handler's future (and the stack
            // frames that poll it) small.
            let step = match intent.strategy {
                Strategy::OwnerPatch => Box::pin(owner_patch::OwnerPatch.step(self, &mut intent)).await?,
                Strategy::InPlaceResize => Box::pin(resize::InPlaceResize.step(self, &mut intent)).await?,
                Strategy::PodPatch => Box::pin(pod_patch::PodPatch.step(self, &mut intent)).await?,
                Strategy::ForceReplace => Box::pin(replace::ForceReplace.step(self, &mut intent)).await?,
            };
            match step {
                Step::Advanced => revision = self.advance(&mut intent, revision).await?,
                Step::Finish { result, detail, replacement_uid } => {
                    return self.done(intent, revision, result, detail, replacement_uid).await;
                }
                Step::HandOver(strategy) => {
                    intent.strategy = strategy;
                    intent.phase = Phase::Pending;
                    revision = self.advance(&mut intent, revision).await?;
                }
            }
        }
    }

    /// Ends the incident as failed if nothing was changed yet: how it ended (its outcome already recorded
    /// when an intent was ended); `None` when an intent already changed something and is kept, so a retry
    /// or a takeover finishes it.
    pub(crate) async fn give_up_if_unchanged(
        &self,
        incident: &proto::IncidentId,
        detail: &str,
    ) -> Result<Option<Finished>, StepError> {
        match self.intents.get(incident).await? {
            None => Ok(Some(Finished::plain(OutcomeResult::Failed, detail))),
            Some((intent, revision)) if intent.phase == Phase::Pending => {
                Ok(Some(self.done(intent, revision, OutcomeResult::Failed, detail.to_owned(), None).await?))
            }
            Some(_) => Ok(None),
        }
    }

    /// Records how an intent ended: its outcome on the audit log, then the intent (phase Done, result,
    /// detail); releases its lock.
    pub(crate) async fn done(
        &self,
        mut intent: Intent,
        revision: u64,
        result: OutcomeResult,
        detail: String,
        replacement_uid: Option<String>,
    ) -> Result<Finished, StepError> {
        intent.phase = Phase::Done;
        intent.result = Some(result);
        intent.detail = Some(detail);
        // The replica that finished it (after a takeover, not the one that wrote the step before).
        intent.actor = self.config.identity.clone();
        intent.replacement_uid = replacement_uid.or(intent.replacement_uid.clone());
        intent.updated_at = jiff::Timestamp::now();
        let mut finished = Finished::of(&intent);
        // Observed before the outcome is on the audit log, so a reader of both sees them agree.
        // (A `reverted` recorded here is KubeSent's own take-back; `kubesent undo` records elsewhere.)
        if let (
            OutcomeResult::NotLanded | OutcomeResult::Overridden | OutcomeResult::Reverted,
            Some(applied_at),
        ) = (result, intent.applied_at)
        {
            self.deps.metrics.observe_fix_undone(result, applied_at);
        }
        // The outcome before the done mark: an intent marked done always has its outcome on the audit
        // log. A crash in between leaves the intent unfinished, and whoever finishes it records the same
        // outcome again (deduplicated by its message id).
        self.record_for(
            &intent.incident,
            &intent.target,
            &intent.action,
            intent.verdict.as_deref(),
            finished.clone(),
        )
        .await?;
        finished.recorded = true;
        self.intents.advance(&intent, revision).await?;
        let lock =
            if intent.lock.is_empty() { intent::lock_key(&intent.target) } else { intent.lock.clone() };
        if let Err(error) = self.intents.unlock(&lock).await {
            warn!(%error, "releasing the lock failed");
        }
        Ok(finished)
    }

    /// Verifies a pod changed in place: its container must run healthy for the window without restarting
    /// again (one restart to leave the back-off is expected). Announces the result on the pod.
    async fn verify_pod_in_place(&self, intent: &Intent, pods: &Api<Pod>, container: &str) -> Step {
        let name = intent.target.name.clone();
        let uid = intent.target.uid.clone();
        let baseline = intent.baseline_restarts.unwrap_or(0);
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let verdict = self
            .verify(pods.clone(), config, |pods| {
                match pods.iter().find(|p| p.metadata.uid.as_deref() == Some(uid.as_str())) {
                    None => ladder::Progress::Failing("the pod is gone".into()),
                    Some(pod) => ladder::container_progress(pod, container, Some(baseline)),
                }
            })
            .await;
        let (result, detail) = verdict.describe(&format!("pod {name}"), self.config.verify_window);
        if let Ok(pod) = pods.get(&name).await {
            self.announce(&pod.object_ref(&()), result, intent, &detail).await;
        }
        Step::finish(result, detail)
    }

    /// Records the verification's result as a Kubernetes event on `object`.
    async fn announce(
        &self,
        object: &k8s_openapi::api::core::v1::ObjectReference,
        result: OutcomeResult,
        intent: &Intent,
        detail: &str,
    ) {
        let (kind, reason) = match result {
            OutcomeResult::Healed => (EventType::Normal, "Remediated"),
            OutcomeResult::Reverted => (EventType::Warning, "RemediationReverted"),
            OutcomeResult::NotLanded => (EventType::Warning, "RemediationNotLanded"),
            OutcomeResult::Overridden => (EventType::Warning, "RemediationOverridden"),
            _ => (EventType::Warning, "RemediationIneffective"),
        };
        self.event(object, kind, reason, intent.action.kind_str(), detail.to_owned()).await;
    }
}

/// The restart count of `container` in `pod` (0 when it has no status yet).
fn restarts(pod: &Pod, container: &str) -> i32 {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.iter().find(|c| c.name == container))
        .map_or(0, |c| c.restart_count)
}

/// The live pod the intent targets, if it is still the same pod (same uid).
async fn target_pod(pods: &Api<Pod>, intent: &Intent) -> Result<Option<Pod>, StepError> {
    Ok(pods
        .get_opt(&intent.target.name)
        .await?
        .filter(|p| p.metadata.uid.as_deref() == Some(intent.target.uid.as_str())))
}
