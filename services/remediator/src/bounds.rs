//! The bounds of an action, re-derived from what the remediator itself read from the cluster. A verdict
//! is a request, never an authority: anyone who can publish on the bus can claim any confidence, name any
//! image or any workload, so nothing in it is believed that the cluster does not confirm.
//!
//! The gate ([`crate::gate`]) already holds an action to the live pod (same uid, still failing, the failing
//! container, the live memory limit as `from`, the memory cap and factor). Here the rest is checked: the
//! incident names the workload the pod really belongs to, neither the pod nor its owner opted out, and a
//! rollback goes only to an image the workload's own history vouches for.

use k8s_openapi::api::core::v1::Pod;
use kubesent_common::revisions::History;
use kubesent_proto::{Action, RevisionRef, Verdict};
use serde_json::Value;

use crate::{
    gate::OPT_OUT_ANNOTATION,
    ladder::{ORIGINAL_IMAGE_ANNOTATION, Owner},
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
}

/// Why the action is outside what the cluster vouches for, if it is.
pub fn check(verdict: &Verdict, seen: Observed<'_>) -> Result<(), String> {
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
fn owner_matches(verdict: &Verdict, seen: Observed<'_>) -> Result<(), String> {
    let named = &verdict.key.workload;
    let (kind, name) = match seen.owner {
        Owner::Bare => (kubesent_proto::WorkloadKind::Pod, verdict.pod.name.as_str()),
        Owner::Workload(w) => (w.kind.into(), w.name.as_str()),
        // Nothing is changed for these; the ladder says why.
        Owner::Unsupported(..) | Owner::Missing(..) => return Ok(()),
    };
    if named.kind == kind && named.name == name {
        Ok(())
    } else {
        Err(format!(
            "the verdict names {} {} but pod {} belongs to {kind} {name}",
            named.kind, named.name, verdict.pod.name
        ))
    }
}

/// `kubesent.io/remediate: "false"` on the owner itself or on its pod template opts the workload out
/// (the gate checks the pod).
fn not_opted_out(owner: &Owner) -> Result<(), String> {
    let Owner::Workload(w) = owner else { return Ok(()) };
    let opted_out = ["/metadata/annotations", "/spec/template/metadata/annotations"].iter().any(|pointer| {
        w.object.pointer(pointer).and_then(|a| a.get(OPT_OUT_ANNOTATION)).and_then(Value::as_str)
            == Some("false")
    });
    if opted_out {
        Err(format!("{} {} opted out ({OPT_OUT_ANNOTATION}=false)", w.kind.as_str(), w.name))
    } else {
        Ok(())
    }
}

/// A rollback goes only to the image of the owner's previous revision while that revision still has
/// ready pods (it is known to work), read from the cluster by the remediator; a bare pod has no history,
/// so only the image KubeSent itself recorded on it is a target.
fn rollback_target(container: &str, from: &str, to: &str, seen: Observed<'_>) -> Result<(), String> {
    if from == to {
        return Err(format!("rolling {container} back to the image it runs ({to}) changes nothing"));
    }
    match seen.owner {
        Owner::Workload(w) => {
            let what = format!("{} {}", w.kind.as_str(), w.name);
            let history = seen.history.filter(|h| {
                h.owner.as_ref().is_some_and(|(kind, name)| kind == w.kind.as_str() && *name == w.name)
            });
            let Some(previous) = history.and_then(|h| h.previous.as_ref()) else {
                return Err(format!("{what} has no earlier revision to roll back to"));
            };
            if previous.ready_replicas <= 0 {
                return Err(format!(
                    "revision {} of {what} has no ready pods: it is not known to work",
                    previous.number
                ));
            }
            match previous.images.get(container) {
                Some(image) if image == to => Ok(()),
                Some(image) => Err(format!(
                    "{to} is not the image of {what}'s previous revision {} (it runs {image} in {container})",
                    previous.number
                )),
                None => Err(format!("revision {} of {what} has no container {container}", previous.number)),
            }
        }
        Owner::Bare => {
            let key = format!("{ORIGINAL_IMAGE_ANNOTATION}.{container}");
            let recorded = seen.pod.metadata.annotations.as_ref().and_then(|a| a.get(&key));
            match recorded {
                Some(image) if image == to => Ok(()),
                _ => Err(format!(
                    "a bare pod has no revision history: KubeSent rolls it back only to an image it recorded ({key}), and {to} is not it"
                )),
            }
        }
        Owner::Unsupported(..) | Owner::Missing(..) => Ok(()),
    }
}

/// A revision rollback goes from the owner's newest revision, which the failing pod runs, to the one
/// just before it, while that one still has ready pods and holds nothing but a pod template; the
/// numbers and names are the owner's own, as the remediator read them.
fn revision_target(from: &RevisionRef, to: &RevisionRef, seen: Observed<'_>) -> Result<(), String> {
    let Owner::Workload(w) = seen.owner else {
        return Err("only a Deployment or a StatefulSet has revisions to roll back".into());
    };
    let what = format!("{} {}", w.kind.as_str(), w.name);
    let history = seen
        .history
        .filter(|h| h.owner.as_ref().is_some_and(|(kind, name)| kind == w.kind.as_str() && *name == w.name));
    let Some(history) = history else {
        return Err(format!("the revision history of {what} was not read"));
    };
    let Some(current) = history.current.as_ref() else {
        return Err(format!(
            "pod {} runs no revision of {what}",
            seen.pod.metadata.name.clone().unwrap_or_default()
        ));
    };
    if current.number != from.number || current.name != from.name {
        return Err(format!(
            "the failing pod runs revision {} ({}) of {what}, not {from}",
            current.number, current.name
        ));
    }
    if history.newest != Some(current.number) {
        return Err(format!(
            "revision {} is not the newest of {what} (revision {} is): the failing pod is from an older rollout",
            current.number,
            history.newest.unwrap_or_default()
        ));
    }
    let Some(previous) = history.previous.as_ref() else {
        return Err(format!("{what} has no earlier revision to roll back to"));
    };
    if previous.number != to.number || previous.name != to.name {
        return Err(format!(
            "{to} is not the revision before {} of {what} (revision {} ({}) is)",
            from.number, previous.number, previous.name
        ));
    }
    if previous.ready_replicas <= 0 {
        return Err(format!(
            "revision {} of {what} has no ready pods: it is not known to work",
            previous.number
        ));
    }
    if !previous.only_template {
        return Err(format!(
            "revision {} of {what} holds more than a pod template: rolling the template back would not restore it",
            previous.number
        ));
    }
    match (previous.template.as_ref(), current.template.as_ref()) {
        (None, _) => Err(format!("revision {} of {what} holds no pod template", previous.number)),
        (Some(to_template), Some(from_template))
            if kubesent_common::revisions::same_template(to_template, from_template) =>
        {
            Err(format!("revisions {} and {} of {what} hold the same template", from.number, to.number))
        }
        _ => Ok(()),
    }
}

/// A rollout is paused only where it could not be rolled back: a Deployment whose newest revision, which
/// the failing pod runs, follows a revision without ready pods.
fn pause_target(revision: &RevisionRef, seen: Observed<'_>) -> Result<(), String> {
    let Owner::Workload(w) = seen.owner else {
        return Err("only a Deployment's rollout can be paused".into());
    };
    if w.kind != crate::ladder::WorkloadKind::Deployment {
        return Err(format!(
            "{} {} has no pause: only a Deployment's rollout can be paused",
            w.kind.as_str(),
            w.name
        ));
    }
    let what = format!("Deployment {}", w.name);
    let history = seen
        .history
        .filter(|h| h.owner.as_ref().is_some_and(|(kind, name)| kind == "Deployment" && *name == w.name));
    let Some(history) = history else {
        return Err(format!("the revision history of {what} was not read"));
    };
    match history.current.as_ref() {
        Some(current) if current.number == revision.number && current.name == revision.name => {}
        _ => return Err(format!("the failing pod does not run {revision} of {what}")),
    }
    if history.newest != Some(revision.number) {
        return Err(format!("revision {} is not the newest of {what}: its rollout is over", revision.number));
    }
    match history.previous.as_ref() {
        None => Err(format!("{what} has no earlier revision: there is no rollout to pause")),
        Some(previous) if previous.ready_replicas > 0 => Err(format!(
            "revision {} of {what} has ready pods: roll back to it instead of pausing",
            previous.number
        )),
        Some(previous) if previous.replicas <= 0 => Err(format!(
            "revision {} of {what} is scaled down: the rollout is over, there is nothing to pause",
            previous.number
        )),
        Some(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use kubesent_common::revisions::Revision;
    use kubesent_proto::{
        Failure, FailureKind, IncidentKey, PodRef, VerdictSource, VerdictStatus, WorkloadRef,
    };
    use serde_json::json;

    use super::*;
    use crate::ladder::{Workload, WorkloadKind};

    fn pod() -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "web-7d9-x", "namespace": "shop", "uid": "u1"},
            "spec": {"containers": [{"name": "app", "image": "registry.local/shop/web:2.0.0"}]}}))
        .expect("pod")
    }

    fn deployment(annotations: Value) -> Owner {
        Owner::Workload(Workload {
            kind: WorkloadKind::Deployment,
            name: "web".into(),
            object: json!({"metadata": {"name": "web", "annotations": annotations},
                "spec": {"template": {"metadata": {}, "spec": {"containers": [{"name": "app"}]}}}}),
        })
    }

    fn history(previous_image: &str, ready: i32) -> History {
        let revision = |number: i64, image: &str, ready_replicas: i32| Revision {
            number,
            name: format!("web-{number}"),
            images: BTreeMap::from([("app".to_owned(), image.to_owned())]),
            ready_replicas,
            replicas: 2,
            template: Some(json!({"spec": {"containers": [{"name": "app", "image": image}]}})),
            only_template: true,
        };
        History {
            owner: Some(("Deployment".into(), "web".into())),
            current: Some(revision(4, "registry.local/shop/web:2.0.0", 0)),
            previous: Some(revision(3, previous_image, ready)),
            newest: Some(4),
        }
    }

    fn rollback(to: &str, workload: (&str, &str)) -> Verdict {
        let key = IncidentKey {
            namespace: "shop".into(),
            workload: WorkloadRef {
                kind: kubesent_proto::WorkloadKind::parse(workload.0).expect("a workload kind"),
                name: workload.1.into(),
            },
            container: "app".into(),
            kind: FailureKind::ErrImagePull,
            template_hash: "7d9".into(),
        };
        Verdict {
            schema: 1,
            incident: key.fingerprint(),
            key,
            pod: PodRef {
                namespace: "shop".into(),
                name: "web-7d9-x".into(),
                uid: "u1".into(),
                resource_version: "9".into(),
            },
            failure: Failure {
                kind: FailureKind::ErrImagePull,
                container: "app".into(),
                init_container: false,
                reason: "ErrImagePull".into(),
                message: None,
                exit_code: None,
                restart_count: 0,
                image: "registry.local/shop/web:2.0.0".into(),
                failed_at: None,
            },
            status: VerdictStatus::Diagnosed,
            root_cause: "missing image".into(),
            action: Action::RollbackImage {
                container: "app".into(),
                from: "registry.local/shop/web:2.0.0".into(),
                to: to.into(),
            },
            confidence: 100,
            source: VerdictSource::Rules { rule: "r".into() },
            diagnosed_at: "2026-11-30T10:00:00Z".parse().expect("time"),
            detected_at: None,
            evidence: None,
        }
    }

    #[test]
    fn only_the_previous_serving_revisions_image_is_a_rollback_target() {
        let pod = pod();
        let owner = deployment(json!({}));
        let good = history("registry.local/shop/web:1.9.0", 2);
        let seen = Observed { pod: &pod, owner: &owner, history: Some(&good) };
        assert_eq!(check(&rollback("registry.local/shop/web:1.9.0", ("Deployment", "web")), seen), Ok(()));

        let refused = [
            ("another registry", rollback("evil.example/miner:latest", ("Deployment", "web")), Some(&good)),
            (
                "a swapped digest",
                rollback("registry.local/shop/web@sha256:0000", ("Deployment", "web")),
                Some(&good),
            ),
            (
                "the failing image",
                rollback("registry.local/shop/web:2.0.0", ("Deployment", "web")),
                Some(&good),
            ),
            (
                "another workload's name",
                rollback("registry.local/shop/web:1.9.0", ("Deployment", "api")),
                Some(&good),
            ),
            (
                "a bare pod's name",
                rollback("registry.local/shop/web:1.9.0", ("Pod", "web-7d9-x")),
                Some(&good),
            ),
            ("no history read", rollback("registry.local/shop/web:1.9.0", ("Deployment", "web")), None),
        ];
        for (what, verdict, history) in refused {
            let seen = Observed { pod: &pod, owner: &owner, history };
            assert!(check(&verdict, seen).is_err(), "{what}");
        }
        let not_serving = history("registry.local/shop/web:1.9.0", 0);
        let seen = Observed { pod: &pod, owner: &owner, history: Some(&not_serving) };
        let why = check(&rollback("registry.local/shop/web:1.9.0", ("Deployment", "web")), seen)
            .expect_err("unproven");
        assert!(why.contains("no ready pods"), "{why}");
        let other_owner = History { owner: Some(("Deployment".into(), "api".into())), ..good.clone() };
        let seen = Observed { pod: &pod, owner: &owner, history: Some(&other_owner) };
        assert!(check(&rollback("registry.local/shop/web:1.9.0", ("Deployment", "web")), seen).is_err());
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
        let seen = Observed { pod: &pod, owner: &owner, history: Some(&good) };
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
        let cases: [(&str, Verdict, Option<&History>, &str); 8] = [
            (
                "an older revision named",
                revision_rollback((4, "web-4"), (2, "web-2")),
                Some(&good),
                "not the revision before",
            ),
            (
                "another revision's name",
                revision_rollback((4, "web-4"), (3, "evil-3")),
                Some(&good),
                "not the revision before",
            ),
            (
                "a revision the pod does not run",
                revision_rollback((5, "web-5"), (3, "web-3")),
                Some(&good),
                "runs revision 4",
            ),
            (
                "the pod on an older rollout",
                revision_rollback((4, "web-4"), (3, "web-3")),
                Some(&older),
                "not the newest",
            ),
            (
                "a previous revision without ready pods",
                revision_rollback((4, "web-4"), (3, "web-3")),
                Some(&not_serving),
                "no ready pods",
            ),
            (
                "a revision holding more than a template",
                revision_rollback((4, "web-4"), (3, "web-3")),
                Some(&more_than_a_template),
                "more than a pod template",
            ),
            (
                "the same template",
                revision_rollback((4, "web-4"), (3, "web-3")),
                Some(&same),
                "same template",
            ),
            ("no history read", revision_rollback((4, "web-4"), (3, "web-3")), None, "not read"),
        ];
        for (what, verdict, history, expected) in cases {
            let seen = Observed { pod: &pod, owner: &owner, history };
            let why = check(&verdict, seen).expect_err(what);
            assert!(why.contains(expected), "{what}: {why}");
        }
        let seen = Observed { pod: &pod, owner: &Owner::Bare, history: None };
        let mut bare = revision_rollback((4, "web-4"), (3, "web-3"));
        bare.key.workload = WorkloadRef { kind: kubesent_proto::WorkloadKind::Pod, name: "web-7d9-x".into() };
        assert!(check(&bare, seen).expect_err("bare").contains("only a Deployment or a StatefulSet"));
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
        let seen = Observed { pod: &pod, owner: &owner, history: Some(&nothing_ready) };
        assert_eq!(check(&pause(4, "web-4"), seen), Ok(()));
        assert!(check(&pause(3, "web-3"), seen).expect_err("not the pod's").contains("does not run"));
        let serving = history("registry.local/shop/web:1.9.0", 2);
        let seen = Observed { pod: &pod, owner: &owner, history: Some(&serving) };
        assert!(check(&pause(4, "web-4"), seen).expect_err("serving").contains("roll back to it instead"));
        let mut finished = nothing_ready.clone();
        if let Some(previous) = finished.previous.as_mut() {
            previous.replicas = 0;
        }
        let seen = Observed { pod: &pod, owner: &owner, history: Some(&finished) };
        assert!(check(&pause(4, "web-4"), seen).expect_err("over").contains("nothing to pause"));
        let mut set = deployment(json!({}));
        if let Owner::Workload(w) = &mut set {
            w.kind = WorkloadKind::StatefulSet;
        }
        let mut verdict = pause(4, "web-4");
        verdict.key.workload.kind = kubesent_proto::WorkloadKind::StatefulSet;
        let seen = Observed { pod: &pod, owner: &set, history: Some(&nothing_ready) };
        assert!(check(&verdict, seen).expect_err("no pause").contains("only a Deployment"));
    }

    #[test]
    fn a_bare_pod_is_rolled_back_only_to_the_image_kubesent_recorded() {
        let mut pod = pod();
        let seen = Observed { pod: &pod, owner: &Owner::Bare, history: None };
        assert!(check(&rollback("registry.local/shop/web:1.9.0", ("Pod", "web-7d9-x")), seen).is_err());
        pod.metadata.annotations = Some(BTreeMap::from([(
            "kubesent.io/original-image.app".to_owned(),
            "registry.local/shop/web:1.9.0".to_owned(),
        )]));
        let seen = Observed { pod: &pod, owner: &Owner::Bare, history: None };
        assert_eq!(check(&rollback("registry.local/shop/web:1.9.0", ("Pod", "web-7d9-x")), seen), Ok(()));
    }

    #[test]
    fn an_owner_or_its_template_that_opted_out_is_left_alone() {
        let pod = pod();
        let good = history("registry.local/shop/web:1.9.0", 2);
        let verdict = rollback("registry.local/shop/web:1.9.0", ("Deployment", "web"));
        let owner = deployment(json!({"kubesent.io/remediate": "false"}));
        assert!(check(&verdict, Observed { pod: &pod, owner: &owner, history: Some(&good) }).is_err());
        let Owner::Workload(mut w) = deployment(json!({})) else { unreachable!() };
        w.object["spec"]["template"]["metadata"]["annotations"] = json!({"kubesent.io/remediate": "false"});
        let owner = Owner::Workload(w);
        assert!(check(&verdict, Observed { pod: &pod, owner: &owner, history: Some(&good) }).is_err());
    }
}
