//! The bounds of an action, re-derived from what the remediator itself read from the cluster. A verdict
//! is a request, never an authority: anyone who can publish on the bus can claim any confidence, name any
//! image or any workload, so nothing in it is believed that the cluster does not confirm.
//!
//! The gate ([`crate::gate`]) already holds an action to the live pod (same uid, still failing, the failing
//! container, the live memory limit as `from`, the memory cap and factor). Here the rest is checked: the
//! incident names the workload the pod really belongs to, neither the pod nor its owner opted out, and a
//! rollback goes only to an image the workload's own history vouches for. A revision rollback goes to the
//! revision just before the failing one, and only while it still serves or, scaled down by a finished
//! rollout, while KubeSent's own record (read by the remediator itself) shows it served healthy for the
//! settling time. A forged record can at worst select that same revision: the target always comes from
//! the owner's own history.

use k8s_openapi::api::core::v1::Pod;
use kubesent_common::revisions::{History, Revision, same_template};
use kubesent_proto::{
    Action, RevisionRef, Verdict, WorkloadKind, WorkloadRef,
    served::{NotKnownGood, ServedRevisions},
};

use crate::{
    gate::OPT_OUT_ANNOTATION,
    ladder::{ORIGINAL_IMAGE_ANNOTATION, Owner},
    workload::Workload,
};

/// What the remediator read about the target.
#[derive(Debug, Clone, Copy)]
pub struct Observed<'a> {
    /// The live failing pod.
    pub pod: &'a Pod,
    /// Its controlling workload, resolved from the pod's owner references.
    pub owner: &'a Owner,
    /// The owner's revision history (read for rollbacks only).
    pub history: Option<&'a History>,
    /// KubeSent's record of the revisions the owner served (read for a revision rollback to a revision
    /// with no ready pods only; `None`: not read, such a rollback is refused).
    pub served: Option<Served<'a>>,
}

/// KubeSent's record of what an owner's revisions served, as the remediator read it, with the settling
/// time that makes a revision known-good and the time it is checked at.
#[derive(Debug, Clone, Copy)]
pub struct Served<'a> {
    /// The record (`None`: there is none).
    pub record: Option<&'a ServedRevisions>,
    /// How long a revision must have served healthy.
    pub after: std::time::Duration,
    /// Now.
    pub now: jiff::Timestamp,
}

/// Why an action is outside what the cluster vouches for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OutOfBounds {
    /// The verdict names another workload than the pod's.
    #[error("the verdict names {named} but pod {pod} belongs to {actual}")]
    NotThePodsWorkload {
        /// The workload the verdict names.
        named: WorkloadRef,
        /// The pod.
        pod: String,
        /// The workload it belongs to.
        actual: WorkloadRef,
    },
    /// The owner or its pod template opted out.
    #[error("{0} opted out ({OPT_OUT_ANNOTATION}=false)")]
    OptedOut(WorkloadRef),
    /// A rollback to the image the container already runs.
    #[error("rolling {container} back to the image it runs ({image}) changes nothing")]
    SameImage {
        /// The container.
        container: String,
        /// Its image.
        image: String,
    },
    /// The workload has no revision before the failing one.
    #[error("{0} has no earlier revision to roll back to")]
    NoEarlierRevision(WorkloadRef),
    /// The revision to go back to has no ready pods: nothing shows it works.
    #[error("revision {revision} of {workload} has no ready pods: it is not known to work")]
    NotKnownToWork {
        /// The workload.
        workload: WorkloadRef,
        /// The revision's number.
        revision: i64,
    },
    /// The revision to go back to was scaled down, and KubeSent's record does not show it served healthy
    /// for the settling time: only a human who knows it worked can go back (recorded as a suggestion).
    #[error(
        "revision {revision} of {workload} was scaled down and KubeSent's record does not show it known-good ({why}); if it worked: kubectl rollout undo {} --to-revision={revision}",
        rollout_target(workload)
    )]
    NotProvenGood {
        /// The workload.
        workload: WorkloadRef,
        /// The revision's number.
        revision: i64,
        /// Why the record does not show it.
        why: Box<NotKnownGood>,
    },
    /// The image named is not the previous revision's.
    #[error(
        "{to} is not the image of {workload}'s previous revision {revision} (it runs {runs} in {container})"
    )]
    NotThePreviousImage {
        /// The workload.
        workload: WorkloadRef,
        /// The previous revision's number.
        revision: i64,
        /// The image the verdict names.
        to: String,
        /// The image the previous revision runs.
        runs: String,
        /// The container.
        container: String,
    },
    /// The previous revision has no such container.
    #[error("revision {revision} of {workload} has no container {container}")]
    NoContainerInRevision {
        /// The workload.
        workload: WorkloadRef,
        /// The previous revision's number.
        revision: i64,
        /// The container.
        container: String,
    },
    /// A bare pod is rolled back only to the image KubeSent recorded on it.
    #[error(
        "a bare pod has no revision history: KubeSent rolls it back only to an image it recorded ({annotation}), and {to} is not it"
    )]
    NotRecordedOnThePod {
        /// The annotation that would record it.
        annotation: String,
        /// The image the verdict names.
        to: String,
    },
    /// Only a Deployment or a StatefulSet has revisions.
    #[error("only a Deployment or a StatefulSet has revisions to roll back")]
    NoRevisions,
    /// The owner's revision history was not read (or belongs to another workload).
    #[error("the revision history of {0} was not read")]
    HistoryNotRead(WorkloadRef),
    /// The failing pod runs none of the owner's revisions.
    #[error("pod {pod} runs no revision of {workload}")]
    PodRunsNoRevision {
        /// The pod.
        pod: String,
        /// The workload.
        workload: WorkloadRef,
    },
    /// The revision the action goes from is not the one the failing pod runs.
    #[error("the failing pod runs {runs} of {workload}, not {named}")]
    NotThePodsRevision {
        /// The workload.
        workload: WorkloadRef,
        /// The revision the pod runs.
        runs: RevisionRef,
        /// The revision the verdict names.
        named: RevisionRef,
    },
    /// The failing pod's revision is not the newest: it is from an older rollout.
    #[error(
        "revision {revision} is not the newest of {workload} (revision {newest} is): the failing pod is from an older rollout"
    )]
    NotTheNewest {
        /// The workload.
        workload: WorkloadRef,
        /// The pod's revision number.
        revision: i64,
        /// The newest revision number.
        newest: i64,
    },
    /// The revision to go back to is not the one just before the failing one.
    #[error("{named} is not the revision before {from} of {workload} ({previous} is)")]
    NotTheRevisionBefore {
        /// The workload.
        workload: WorkloadRef,
        /// The failing revision's number.
        from: i64,
        /// The revision the verdict names.
        named: RevisionRef,
        /// The revision before it.
        previous: RevisionRef,
    },
    /// The revision holds more than a pod template (a ControllerRevision can): restoring the template
    /// would not restore it.
    #[error(
        "revision {revision} of {workload} holds more than a pod template: rolling the template back would not restore it"
    )]
    MoreThanATemplate {
        /// The workload.
        workload: WorkloadRef,
        /// The revision's number.
        revision: i64,
    },
    /// The revision holds no pod template.
    #[error("revision {revision} of {workload} holds no pod template")]
    NoTemplate {
        /// The workload.
        workload: WorkloadRef,
        /// The revision's number.
        revision: i64,
    },
    /// Both revisions hold the same template: a rollback changes nothing.
    #[error("revisions {from} and {to} of {workload} hold the same template")]
    SameTemplate {
        /// The workload.
        workload: WorkloadRef,
        /// The failing revision's number.
        from: i64,
        /// The revision to go back to.
        to: i64,
    },
    /// Only a Deployment's rollout can be paused.
    #[error("{0} has no pause: only a Deployment's rollout can be paused")]
    NoPause(WorkloadRef),
    /// The failing pod does not run the revision to pause at.
    #[error("the failing pod does not run {revision} of {workload}")]
    PodDoesNotRun {
        /// The workload.
        workload: WorkloadRef,
        /// The revision the verdict names.
        revision: RevisionRef,
    },
    /// The rollout is over: nothing to pause.
    #[error("{workload} has no rollout under way to pause at revision {revision}: {why}")]
    NoRolloutToPause {
        /// The workload.
        workload: WorkloadRef,
        /// The revision the verdict names.
        revision: i64,
        /// Why not.
        why: &'static str,
    },
    /// The revision before has ready pods: a rollback is the fix, not a pause.
    #[error("revision {revision} of {workload} has ready pods: roll back to it instead of pausing")]
    RollBackInstead {
        /// The workload.
        workload: WorkloadRef,
        /// The serving revision's number.
        revision: i64,
    },
}

/// `deployment/web` for `kubectl rollout`.
fn rollout_target(workload: &WorkloadRef) -> String {
    format!("{}/{}", workload.kind.as_str().to_ascii_lowercase(), workload.name)
}

/// Checks the action against what the cluster vouches for.
pub fn check(verdict: &Verdict, seen: Observed<'_>) -> Result<(), OutOfBounds> {
    owner_matches(verdict, seen)?;
    not_opted_out(seen.owner)?;
    match &verdict.action {
        Action::RollbackImage { container, from, to } => rollback_target(container, from, to, seen),
        Action::RollbackRevision { from, to, .. } => revision_target(from, to, seen),
        Action::PauseRollout { revision, .. } => pause_target(revision, seen),
        Action::IncreaseMemory { .. } | Action::None => Ok(()),
    }
}

/// The incident must name the workload the pod really belongs to: a verdict cannot borrow a pod to
/// change another workload.
fn owner_matches(verdict: &Verdict, seen: Observed<'_>) -> Result<(), OutOfBounds> {
    let named = &verdict.key.workload;
    let actual = match seen.owner {
        Owner::Bare => WorkloadRef { kind: WorkloadKind::Pod, name: verdict.pod.name.clone() },
        Owner::Workload(w) => w.reference(),
        // Nothing is changed for these; the ladder says why.
        Owner::Unsupported(..) | Owner::Missing(..) => return Ok(()),
    };
    if *named == actual {
        Ok(())
    } else {
        Err(OutOfBounds::NotThePodsWorkload { named: named.clone(), pod: verdict.pod.name.clone(), actual })
    }
}

/// `kubesent.io/remediate: "false"` on the owner itself or on its pod template opts the workload out
/// (the gate checks the pod).
fn not_opted_out(owner: &Owner) -> Result<(), OutOfBounds> {
    let Owner::Workload(w) = owner else { return Ok(()) };
    let opted_out = w.annotation(OPT_OUT_ANNOTATION) == Some("false")
        || w.template_annotation(OPT_OUT_ANNOTATION) == Some("false");
    if opted_out { Err(OutOfBounds::OptedOut(w.reference())) } else { Ok(()) }
}

/// The owner's history, if it is the history of this workload.
fn history_of<'a>(w: &Workload, seen: Observed<'a>) -> Option<&'a History> {
    seen.history.filter(|h| h.owner.as_ref() == Some(&w.reference()))
}

/// A rollback goes only to the image of the owner's previous revision while that revision still has
/// ready pods (it is known to work), read from the cluster by the remediator; a bare pod has no history,
/// so only the image KubeSent itself recorded on it is a target.
fn rollback_target(container: &str, from: &str, to: &str, seen: Observed<'_>) -> Result<(), OutOfBounds> {
    if from == to {
        return Err(OutOfBounds::SameImage { container: container.to_owned(), image: to.to_owned() });
    }
    match seen.owner {
        Owner::Workload(w) => {
            let workload = w.reference();
            let Some(history) = history_of(w, seen) else {
                return Err(OutOfBounds::HistoryNotRead(workload));
            };
            let Some(previous) = history.previous.as_ref() else {
                return Err(OutOfBounds::NoEarlierRevision(workload));
            };
            if previous.ready_replicas <= 0 {
                return Err(OutOfBounds::NotKnownToWork { workload, revision: previous.number });
            }
            match previous.images.get(container) {
                Some(image) if image == to => Ok(()),
                Some(image) => Err(OutOfBounds::NotThePreviousImage {
                    workload,
                    revision: previous.number,
                    to: to.to_owned(),
                    runs: image.clone(),
                    container: container.to_owned(),
                }),
                None => Err(OutOfBounds::NoContainerInRevision {
                    workload,
                    revision: previous.number,
                    container: container.to_owned(),
                }),
            }
        }
        Owner::Bare => {
            let annotation = format!("{ORIGINAL_IMAGE_ANNOTATION}.{container}");
            let recorded = seen.pod.metadata.annotations.as_ref().and_then(|a| a.get(&annotation));
            match recorded {
                Some(image) if image == to => Ok(()),
                _ => Err(OutOfBounds::NotRecordedOnThePod { annotation, to: to.to_owned() }),
            }
        }
        Owner::Unsupported(..) | Owner::Missing(..) => Ok(()),
    }
}

fn reference(revision: &Revision) -> RevisionRef {
    RevisionRef { number: revision.number, name: revision.name.clone() }
}

/// A revision rollback goes from the owner's newest revision, which the failing pod runs, to the one
/// just before it, while that one still has ready pods and holds nothing but a pod template; the
/// numbers and names are the owner's own, as the remediator read them.
fn revision_target(from: &RevisionRef, to: &RevisionRef, seen: Observed<'_>) -> Result<(), OutOfBounds> {
    let Owner::Workload(w) = seen.owner else { return Err(OutOfBounds::NoRevisions) };
    let workload = w.reference();
    let Some(history) = history_of(w, seen) else { return Err(OutOfBounds::HistoryNotRead(workload)) };
    let Some(current) = history.current.as_ref() else {
        let pod = seen.pod.metadata.name.clone().unwrap_or_default();
        return Err(OutOfBounds::PodRunsNoRevision { pod, workload });
    };
    if reference(current) != *from {
        return Err(OutOfBounds::NotThePodsRevision {
            workload,
            runs: reference(current),
            named: from.clone(),
        });
    }
    if history.newest != Some(current.number) {
        let newest = history.newest.unwrap_or_default();
        return Err(OutOfBounds::NotTheNewest { workload, revision: current.number, newest });
    }
    let Some(previous) = history.previous.as_ref() else {
        return Err(OutOfBounds::NoEarlierRevision(workload));
    };
    if reference(previous) != *to {
        return Err(OutOfBounds::NotTheRevisionBefore {
            workload,
            from: from.number,
            named: to.clone(),
            previous: reference(previous),
        });
    }
    if previous.ready_replicas <= 0 {
        known_good(&workload, previous, history, seen.served)?;
    }
    if !previous.only_template {
        return Err(OutOfBounds::MoreThanATemplate { workload, revision: previous.number });
    }
    match (previous.template.as_ref(), current.template.as_ref()) {
        (None, _) => Err(OutOfBounds::NoTemplate { workload, revision: previous.number }),
        (Some(to_template), Some(from_template)) if same_template(to_template, from_template) => {
            Err(OutOfBounds::SameTemplate { workload, from: from.number, to: to.number })
        }
        _ => Ok(()),
    }
}

/// A revision with no ready pods is a rollback target only when a finished rollout scaled it to zero
/// and KubeSent's record shows it served healthy for the settling time.
fn known_good(
    workload: &WorkloadRef,
    previous: &Revision,
    history: &History,
    served: Option<Served<'_>>,
) -> Result<(), OutOfBounds> {
    let not_known = || OutOfBounds::NotKnownToWork { workload: workload.clone(), revision: previous.number };
    // Pods that are there and not ready say more than any record: it does not work now.
    let Some(served) = served.filter(|_| previous.replicas <= 0) else { return Err(not_known()) };
    let proven = match served.record {
        Some(record) => record
            .known_good(&history.owner_uid, &previous.name, &previous.hash, served.after, served.now)
            .map(|_| ()),
        None => Err(NotKnownGood::NeverSeen(previous.name.clone())),
    };
    proven.map_err(|why| OutOfBounds::NotProvenGood {
        workload: workload.clone(),
        revision: previous.number,
        why: Box::new(why),
    })
}

/// A rollout is paused only where it could not be rolled back: a Deployment whose newest revision, which
/// the failing pod runs, follows a revision without ready pods.
fn pause_target(revision: &RevisionRef, seen: Observed<'_>) -> Result<(), OutOfBounds> {
    let Owner::Workload(w) = seen.owner else { return Err(OutOfBounds::NoRevisions) };
    let workload = w.reference();
    if w.kind() != WorkloadKind::Deployment {
        return Err(OutOfBounds::NoPause(workload));
    }
    let Some(history) = history_of(w, seen) else { return Err(OutOfBounds::HistoryNotRead(workload)) };
    if history.current.as_ref().map(reference).as_ref() != Some(revision) {
        return Err(OutOfBounds::PodDoesNotRun { workload, revision: revision.clone() });
    }
    let over = |why| {
        Err(OutOfBounds::NoRolloutToPause { workload: workload.clone(), revision: revision.number, why })
    };
    if history.newest != Some(revision.number) {
        return over("it is not the newest revision");
    }
    match history.previous.as_ref() {
        None => over("there is no earlier revision"),
        Some(previous) if previous.ready_replicas > 0 => {
            Err(OutOfBounds::RollBackInstead { workload, revision: previous.number })
        }
        Some(previous) if previous.replicas <= 0 => over("the revision before it is scaled down"),
        Some(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::apps::v1::Deployment;
    use kubesent_testkit::fixtures;
    use serde_json::{Value, json};

    use super::*;

    fn pod() -> Pod {
        fixtures::waiting(fixtures::oom_killed_pod("web-7d9-x", "256Mi"), "ErrImagePull", FAILING)
    }

    const FAILING: &str = "registry.local/shop/web:2.0.0";

    fn deployment_json(annotations: Value) -> Value {
        json!({"metadata": {"name": "web", "annotations": annotations},
            "spec": {"selector": {}, "template": {"metadata": {}, "spec": {"containers": [{"name": "app"}]}}}})
    }

    fn typed(object: Value) -> Owner {
        Owner::Workload(Workload::Deployment(Box::new(
            serde_json::from_value::<Deployment>(object).expect("deployment"),
        )))
    }

    fn deployment(annotations: Value) -> Owner {
        typed(deployment_json(annotations))
    }

    fn history(previous_image: &str, ready: i32) -> History {
        let revision = |number: i64, image: &str, ready_replicas: i32| Revision {
            number,
            name: format!("web-{number}"),
            hash: format!("{number}"),
            images: BTreeMap::from([("app".to_owned(), image.to_owned())]),
            ready_replicas,
            replicas: 2,
            template: Some(
                serde_json::from_value(json!({"spec": {"containers": [{"name": "app", "image": image}]}}))
                    .expect("template"),
            ),
            only_template: true,
        };
        History {
            owner: Some(WorkloadRef { kind: WorkloadKind::Deployment, name: "web".into() }),
            current: Some(revision(4, "registry.local/shop/web:2.0.0", 0)),
            previous: Some(revision(3, previous_image, ready)),
            newest: Some(4),
            ..History::default()
        }
    }

    /// A refused case: what it is, the verdict, the history read, the refusal expected.
    type Case<'a> = (&'static str, Verdict, Option<&'a History>, fn(&OutOfBounds) -> bool);

    /// The verdict rolling the pod's `app` back to `to`, naming the workload `kind` `name`.
    fn rollback(to: &str, (kind, name): (&str, &str)) -> Verdict {
        let kind = WorkloadKind::parse(kind).expect("a workload kind");
        fixtures::naming(fixtures::verdict(&pod(), fixtures::rollback_image(FAILING, to)), kind, name)
    }

    #[test]
    fn only_the_previous_serving_revisions_image_is_a_rollback_target() {
        let pod = pod();
        let owner = deployment(json!({}));
        let good = history("registry.local/shop/web:1.9.0", 2);
        let seen = Observed { pod: &pod, owner: &owner, history: Some(&good), served: None };
        assert_eq!(check(&rollback("registry.local/shop/web:1.9.0", ("Deployment", "web")), seen), Ok(()));

        let not_serving = history("registry.local/shop/web:1.9.0", 0);
        let other_owner = History {
            owner: Some(WorkloadRef { kind: WorkloadKind::Deployment, name: "api".into() }),
            ..good.clone()
        };
        let refused: [Case<'_>; 8] = [
            (
                "another registry",
                rollback("evil.example/miner:latest", ("Deployment", "web")),
                Some(&good),
                |e| matches!(e, OutOfBounds::NotThePreviousImage { .. }),
            ),
            (
                "a swapped digest",
                rollback("registry.local/shop/web@sha256:0000", ("Deployment", "web")),
                Some(&good),
                |e| matches!(e, OutOfBounds::NotThePreviousImage { .. }),
            ),
            (
                "the failing image",
                rollback("registry.local/shop/web:2.0.0", ("Deployment", "web")),
                Some(&good),
                |e| matches!(e, OutOfBounds::SameImage { .. }),
            ),
            (
                "another workload's name",
                rollback("registry.local/shop/web:1.9.0", ("Deployment", "api")),
                Some(&good),
                |e| matches!(e, OutOfBounds::NotThePodsWorkload { .. }),
            ),
            (
                "a bare pod's name",
                rollback("registry.local/shop/web:1.9.0", ("Pod", "web-7d9-x")),
                Some(&good),
                |e| matches!(e, OutOfBounds::NotThePodsWorkload { .. }),
            ),
            (
                "no history read",
                rollback("registry.local/shop/web:1.9.0", ("Deployment", "web")),
                None,
                |e| matches!(e, OutOfBounds::HistoryNotRead(_)),
            ),
            (
                "another workload's history",
                rollback("registry.local/shop/web:1.9.0", ("Deployment", "web")),
                Some(&other_owner),
                |e| matches!(e, OutOfBounds::HistoryNotRead(_)),
            ),
            (
                "a previous revision without ready pods",
                rollback("registry.local/shop/web:1.9.0", ("Deployment", "web")),
                Some(&not_serving),
                |e| matches!(e, OutOfBounds::NotKnownToWork { revision: 3, .. }),
            ),
        ];
        for (what, verdict, history, expected) in refused {
            let seen = Observed { pod: &pod, owner: &owner, history, served: None };
            let why = check(&verdict, seen).expect_err(what);
            assert!(expected(&why), "{what}: {why}");
        }
    }

    fn revision_rollback(from: (i64, &str), to: (i64, &str)) -> Verdict {
        let mut verdict = rollback("unused", ("Deployment", "web"));
        verdict.action = Action::RollbackRevision {
            container: "app".into(),
            from: RevisionRef { number: from.0, name: from.1.into() },
            to: RevisionRef { number: to.0, name: to.1.into() },
        };
        verdict
    }

    #[test]
    fn a_revision_rollback_goes_only_from_the_newest_revision_to_the_serving_one_before_it() {
        let pod = pod();
        let owner = deployment(json!({}));
        let good = history("registry.local/shop/web:1.9.0", 2);
        let seen = Observed { pod: &pod, owner: &owner, history: Some(&good), served: None };
        assert_eq!(check(&revision_rollback((4, "web-4"), (3, "web-3")), seen), Ok(()));

        let older = History { newest: Some(5), ..good.clone() };
        let mut not_serving = good.clone();
        if let Some(p) = not_serving.previous.as_mut() {
            p.ready_replicas = 0;
        }
        let mut more_than_a_template = good.clone();
        if let Some(p) = more_than_a_template.previous.as_mut() {
            p.only_template = false;
        }
        let same = history("registry.local/shop/web:2.0.0", 2);
        let cases: [Case<'_>; 8] = [
            ("an older revision named", revision_rollback((4, "web-4"), (2, "web-2")), Some(&good), |e| {
                matches!(e, OutOfBounds::NotTheRevisionBefore { .. })
            }),
            ("another revision's name", revision_rollback((4, "web-4"), (3, "evil-3")), Some(&good), |e| {
                matches!(e, OutOfBounds::NotTheRevisionBefore { .. })
            }),
            (
                "a revision the pod does not run",
                revision_rollback((5, "web-5"), (3, "web-3")),
                Some(&good),
                |e| matches!(e, OutOfBounds::NotThePodsRevision { runs, .. } if runs.number == 4),
            ),
            (
                "the pod on an older rollout",
                revision_rollback((4, "web-4"), (3, "web-3")),
                Some(&older),
                |e| matches!(e, OutOfBounds::NotTheNewest { newest: 5, .. }),
            ),
            (
                "a previous revision without ready pods",
                revision_rollback((4, "web-4"), (3, "web-3")),
                Some(&not_serving),
                |e| matches!(e, OutOfBounds::NotKnownToWork { .. }),
            ),
            (
                "a revision holding more than a template",
                revision_rollback((4, "web-4"), (3, "web-3")),
                Some(&more_than_a_template),
                |e| matches!(e, OutOfBounds::MoreThanATemplate { .. }),
            ),
            ("the same template", revision_rollback((4, "web-4"), (3, "web-3")), Some(&same), |e| {
                matches!(e, OutOfBounds::SameTemplate { .. })
            }),
            ("no history read", revision_rollback((4, "web-4"), (3, "web-3")), None, |e| {
                matches!(e, OutOfBounds::HistoryNotRead(_))
            }),
        ];
        for (what, verdict, history, expected) in cases {
            let seen = Observed { pod: &pod, owner: &owner, history, served: None };
            let why = check(&verdict, seen).expect_err(what);
            assert!(expected(&why), "{what}: {why}");
        }
        let seen = Observed { pod: &pod, owner: &Owner::Bare, history: None, served: None };
        let mut bare = revision_rollback((4, "web-4"), (3, "web-3"));
        bare.key.workload = WorkloadRef { kind: WorkloadKind::Pod, name: "web-7d9-x".into() };
        assert_eq!(check(&bare, seen), Err(OutOfBounds::NoRevisions));
    }

    #[test]
    fn a_rollout_is_paused_only_when_the_revision_before_it_has_nothing_ready() {
        let pod = pod();
        let owner = deployment(json!({}));
        let pause = |number: i64, name: &str| {
            let mut verdict = rollback("unused", ("Deployment", "web"));
            verdict.action = Action::PauseRollout {
                container: "app".into(),
                revision: RevisionRef { number, name: name.into() },
            };
            verdict
        };
        let nothing_ready = history("registry.local/shop/web:1.9.0", 0);
        let seen = Observed { pod: &pod, owner: &owner, history: Some(&nothing_ready), served: None };
        assert_eq!(check(&pause(4, "web-4"), seen), Ok(()));
        assert!(matches!(check(&pause(3, "web-3"), seen), Err(OutOfBounds::PodDoesNotRun { .. })));
        let serving = history("registry.local/shop/web:1.9.0", 2);
        let seen = Observed { pod: &pod, owner: &owner, history: Some(&serving), served: None };
        assert!(matches!(
            check(&pause(4, "web-4"), seen),
            Err(OutOfBounds::RollBackInstead { revision: 3, .. })
        ));
        let mut finished = nothing_ready.clone();
        if let Some(previous) = finished.previous.as_mut() {
            previous.replicas = 0;
        }
        let seen = Observed { pod: &pod, owner: &owner, history: Some(&finished), served: None };
        assert!(matches!(check(&pause(4, "web-4"), seen), Err(OutOfBounds::NoRolloutToPause { .. })));
        let mut object = deployment_json(json!({}));
        object["spec"]["serviceName"] = json!("web");
        let set = Owner::Workload(Workload::StatefulSet(Box::new(
            serde_json::from_value(object).expect("statefulset"),
        )));
        let mut verdict = pause(4, "web-4");
        verdict.key.workload.kind = WorkloadKind::StatefulSet;
        let seen = Observed { pod: &pod, owner: &set, history: Some(&nothing_ready), served: None };
        assert!(matches!(check(&verdict, seen), Err(OutOfBounds::NoPause(_))));
    }

    #[test]
    fn a_bare_pod_is_rolled_back_only_to_the_image_kubesent_recorded() {
        let mut pod = pod();
        let seen = Observed { pod: &pod, owner: &Owner::Bare, history: None, served: None };
        assert!(matches!(
            check(&rollback("registry.local/shop/web:1.9.0", ("Pod", "web-7d9-x")), seen),
            Err(OutOfBounds::NotRecordedOnThePod { .. })
        ));
        pod.metadata.annotations = Some(BTreeMap::from([(
            "kubesent.io/original-image.app".to_owned(),
            "registry.local/shop/web:1.9.0".to_owned(),
        )]));
        let seen = Observed { pod: &pod, owner: &Owner::Bare, history: None, served: None };
        assert_eq!(check(&rollback("registry.local/shop/web:1.9.0", ("Pod", "web-7d9-x")), seen), Ok(()));
    }

    #[test]
    fn an_owner_or_its_template_that_opted_out_is_left_alone() {
        let pod = pod();
        let good = history("registry.local/shop/web:1.9.0", 2);
        let verdict = rollback("registry.local/shop/web:1.9.0", ("Deployment", "web"));
        let owner = deployment(json!({"kubesent.io/remediate": "false"}));
        let seen = Observed { pod: &pod, owner: &owner, history: Some(&good), served: None };
        assert!(matches!(check(&verdict, seen), Err(OutOfBounds::OptedOut(_))));
        let mut object = deployment_json(json!({}));
        object["spec"]["template"]["metadata"]["annotations"] = json!({"kubesent.io/remediate": "false"});
        let owner = typed(object);
        let seen = Observed { pod: &pod, owner: &owner, history: Some(&good), served: None };
        assert!(matches!(check(&verdict, seen), Err(OutOfBounds::OptedOut(_))));
    }
}
