//! Why a verdict ends without a change: one typed [`Refusal`] for every check before a change (the gate,
//! the bounds, the markers KubeSent and humans leave, the ladder, GitOps, the template), each mapped to
//! the outcome it is recorded as.

use kubesent_proto::{IncidentId, OutcomeResult};

use crate::{
    bounds::OutOfBounds,
    gate::{Denial, Stale},
    ladder::{Mismatch, NoRung},
    preflight::{Blocked, ManagedByAutoscaler},
};

/// Why a verdict ends without a change, and with which result.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Refusal {
    /// The target is gone, replaced or healthy.
    #[error(transparent)]
    Stale(#[from] Stale),
    /// The verdict carries no action; the detail is its root cause.
    #[error("{0}")]
    DiagnosisOnly(String),
    /// A dry run: decided and recorded, nothing changed.
    #[error("dry-run: nothing was changed")]
    DryRun,
    /// Policy or the evidence refuses the action.
    #[error(transparent)]
    Denied(#[from] Denial),
    /// The pod's controller no longer exists (it is being deleted, or orphaned).
    #[error("the pod's controller {kind} {name} no longer exists")]
    OwnerGone {
        /// Controller kind.
        kind: String,
        /// Controller name.
        name: String,
    },
    /// The action is outside what the cluster vouches for.
    #[error(transparent)]
    OutOfBounds(#[from] OutOfBounds),
    /// A human reverted an earlier change of KubeSent's to this container.
    #[error(
        "KubeSent's change to container {container} (incident {incident}) was taken back (by `kubesent undo`, or by KubeSent because it did not land or made things worse); further changes are only suggested"
    )]
    RevertedByHuman {
        /// The container.
        container: String,
        /// The incident whose change was reverted.
        incident: String,
    },
    /// KubeSent changed this target before and it did not heal.
    #[error(
        "KubeSent already changed this for incident {0} and it did not heal; escalated to a human instead of trying again"
    )]
    PreviousFixIneffective(IncidentId),
    /// Another manager overrode KubeSent's earlier change to this target: KubeSent does not fight it.
    #[error(
        "another manager overrode KubeSent's change for incident {0}; KubeSent does not change it again and only suggests"
    )]
    OverriddenBefore(IncidentId),
    /// No rung of the ladder applies the action to this target.
    #[error(transparent)]
    NoRung(#[from] NoRung),
    /// The target is managed by a GitOps tool: the change belongs in Git.
    #[error("{what} is managed by {tool}: change it in Git ({action}); KubeSent only suggests")]
    GitOps {
        /// The target in words.
        what: String,
        /// The tool.
        tool: &'static str,
        /// The action, as JSON.
        action: String,
    },
    /// The owner's template no longer holds what the verdict was made from.
    #[error(transparent)]
    TemplateMoved(#[from] Mismatch),
    /// Admission or the scheduler would not take the change (see [`crate::preflight`]).
    #[error("the fix would not land: {0}")]
    WouldNotLand(#[from] Blocked),
    /// A VerticalPodAutoscaler manages the container's resources.
    #[error(transparent)]
    ManagedByAutoscaler(#[from] Box<ManagedByAutoscaler>),
}

impl Refusal {
    /// The outcome this refusal is recorded as.
    pub fn result(&self) -> OutcomeResult {
        match self {
            Self::DryRun
            | Self::RevertedByHuman { .. }
            | Self::GitOps { .. }
            | Self::ManagedByAutoscaler(_)
            | Self::OverriddenBefore(_)
            | Self::OutOfBounds(OutOfBounds::NotProvenGood { .. }) => OutcomeResult::Suggested,
            Self::Stale(_) | Self::OwnerGone { .. } | Self::TemplateMoved(_) => OutcomeResult::Stale,
            Self::DiagnosisOnly(_) => OutcomeResult::DiagnosisOnly,
            Self::Denied(_)
            | Self::OutOfBounds(_)
            | Self::PreviousFixIneffective(_)
            | Self::NoRung(_)
            | Self::WouldNotLand(_) => OutcomeResult::Denied,
        }
    }
}
