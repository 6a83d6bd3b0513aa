//! Someone who can publish on `kubesent.verdicts.>` is not someone KubeSent obeys. Forged and hostile
//! verdicts (rollback targets outside the owner's history, revision rollbacks and pauses that do not fit
//! the failure, other registries, swapped digests, other
//! containers, workloads and namespaces, excluded namespaces, healthy, gone and replaced pods, absurd
//! values, unknown fields, other schema versions, oversized payloads, wrong subjects) change nothing:
//! each is denied or found stale with the reason, or dead-lettered as invalid. The one genuine request
//! among them is carried out, so the test can tell "refused" from "broken".

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{ListParams, Patch, PatchParams};
use kubesent_kube_sim::ImageState;
use kubesent_proto::OutcomeResult;
use support::*;

mod support;

const GOOD: &str = "registry.local/shop/web:1.0.0";
const MISSING: &str = "registry.local/shop/web:2.0.0";

/// A Deployment `web` whose revision 1 runs ready and whose revision 2 names a missing image.
async fn broken_rollout(world: &World) -> Pod {
    let deployments: Api<Deployment> = Api::namespaced(world.kube.clone(), "shop");
    let web: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "app", "image": GOOD,
                    "resources": {"limits": {"memory": "128Mi"}}}]}}}
    }))
    .expect("deployment json");
    deployments.create(&PostParams::default(), &web).await.expect("deployment created");
    let ready =
        |d: Option<&Deployment>| d.and_then(|d| d.status.as_ref()).and_then(|s| s.ready_replicas) == Some(2);
    tokio::time::timeout(PATIENCE, await_condition(deployments.clone(), "web", ready))
        .await
        .expect("revision 1 ready")
        .expect("watch");
    world.sim.state().registry.set(MISSING, ImageState::Missing);
    let update = json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": MISSING}]}}}});
    deployments.patch("web", &PatchParams::default(), &Patch::Strategic(&update)).await.expect("updated");
    let pods: Api<Pod> = Api::namespaced(world.kube.clone(), "shop");
    loop {
        let failing = pods
            .list(&ListParams::default().labels("app=web"))
            .await
            .expect("pods")
            .items
            .into_iter()
            .find(|p| {
                p.status.as_ref().and_then(|s| s.container_statuses.as_ref()).is_some_and(|cs| {
                    cs.iter().any(|c| {
                        c.state.as_ref().and_then(|s| s.waiting.as_ref()).and_then(|w| w.reason.as_deref())
                            == Some("ErrImagePull")
                            || c.state
                                .as_ref()
                                .and_then(|s| s.waiting.as_ref())
                                .and_then(|w| w.reason.as_deref())
                                == Some("ImagePullBackOff")
                    })
                })
            });
        if let Some(pod) = failing {
            return pod;
        }
        // kube-sim's kubelet reports the pull failure within a few simulated seconds.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// The verdict a forger would publish for `pod`'s failed pull, with `action`, naming `workload`, made a
/// new incident by `tag`, and sure of itself.
fn pull_verdict(pod: &Pod, action: Action, workload: (&str, &str), tag: &str) -> Verdict {
    let kind = proto::WorkloadKind::parse(workload.0).expect("a workload kind");
    let verdict = fixtures::failing_with(fixtures::verdict(pod, action), FailureKind::ErrImagePull);
    let verdict = fixtures::rekeyed(verdict, |key| {
        key.workload = WorkloadRef { kind, name: workload.1.into() };
        key.template_hash = tag.into();
    });
    Verdict {
        root_cause: "trust me".into(),
        confidence: 100,
        source: VerdictSource::Model { model: "anyone".into() },
        ..verdict
    }
}

fn rollback(to: &str) -> Action {
    Action::RollbackImage { container: "app".into(), from: MISSING.into(), to: to.into() }
}

/// Publishes raw bytes on `subject` with a fresh message id.
async fn publish_raw(world: &World, subject: &str, payload: Vec<u8>, id: &str) {
    nats::publish(&world.js, subject.to_owned(), id, payload, &[]).await.expect("stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_hostile_verdicts_change_nothing_and_each_refusal_says_why() {
    let world = world(36).await;
    let failing = broken_rollout(&world).await;
    let oom = create(&world, &pod("solo", "128Mi", "200Mi"), true).await;
    let healthy = create(&world, &pod("calm", "256Mi", "200Mi"), false).await;
    let lonely = {
        let pods: Api<Pod> = Api::namespaced(world.kube.clone(), "shop");
        let bare: Pod = serde_json::from_value(json!({"metadata": {"name": "lonely", "namespace": "shop"},
            "spec": {"containers": [{"name": "app", "image": MISSING}]}}))
        .expect("pod json");
        pods.create(&PostParams::default(), &bare).await.expect("created");
        let pulling = |p: Option<&Pod>| {
            p.and_then(|p| p.status.as_ref()).and_then(|s| s.container_statuses.as_ref()).is_some_and(|c| {
                c.iter().any(|c| {
                    c.state.as_ref().and_then(|s| s.waiting.as_ref()).is_some_and(|w| {
                        matches!(w.reason.as_deref(), Some("ErrImagePull" | "ImagePullBackOff"))
                    })
                })
            })
        };
        tokio::time::timeout(PATIENCE, await_condition(pods, "lonely", pulling))
            .await
            .expect("in time")
            .expect("watch")
            .expect("exists")
    };
    let mut system_pod = pod("agent", "128Mi", "200Mi");
    system_pod.metadata.namespace = Some("kube-system".into());
    let system = {
        let pods: Api<Pod> = Api::namespaced(world.kube.clone(), "kube-system");
        pods.create(&PostParams::default(), &system_pod).await.expect("created");
        let crashed = |p: Option<&Pod>| {
            p.and_then(|p| p.status.as_ref()).and_then(|s| s.container_statuses.as_ref()).is_some_and(|c| {
                c.iter().any(|c| c.last_state.as_ref().and_then(|s| s.terminated.as_ref()).is_some())
            })
        };
        tokio::time::timeout(PATIENCE, await_condition(pods, "agent", crashed))
            .await
            .expect("in time")
            .expect("watch")
            .expect("exists")
    };
    let before = changes(&world);
    let mut outcomes = world.client.subscribe("kubesent.outcomes.>").await.expect("subscribed");
    let mut dead = world.client.subscribe(proto::dlq_subject("remediator")).await.expect("subscribed");
    let remediator = start(&world, Policy::default());

    // Well-formed requests the cluster does not vouch for: each gets an outcome that says why.
    let mut in_other_namespace = pull_verdict(&failing, rollback(GOOD), ("Deployment", "web"), "ns");
    in_other_namespace.pod.namespace = "payments".into();
    in_other_namespace.key.namespace = "payments".into();
    in_other_namespace.incident = in_other_namespace.key.fingerprint();
    let mut stale_uid = pull_verdict(&failing, rollback(GOOD), ("Deployment", "web"), "uid");
    stale_uid.pod.uid = "00000000-0000-0000-0000-000000000000".into();
    let mut gone = pull_verdict(&failing, rollback(GOOD), ("Deployment", "web"), "gone");
    gone.pod.name = "web-gone-12345".into();
    let mut other_container = pull_verdict(&failing, rollback(GOOD), ("Deployment", "web"), "c");
    other_container.action =
        Action::RollbackImage { container: "sidecar".into(), from: MISSING.into(), to: GOOD.into() };
    other_container.key.container = "sidecar".into();
    other_container.failure.container = "sidecar".into();
    other_container.incident = other_container.key.fingerprint();
    let oom_verdict = |action: Action, target: &Pod, tag: &str| {
        let mut v = verdict(target, action, 100);
        v.key.template_hash = tag.into();
        v.key.namespace = target.metadata.namespace.clone().expect("namespace");
        v.pod.namespace = v.key.namespace.clone();
        v.incident = v.key.fingerprint();
        v
    };
    let requests: Vec<(&str, Verdict, OutcomeResult, &str)> = vec![
        (
            "the forged rollback to another registry",
            pull_verdict(&failing, rollback("evil.example/miner:latest"), ("Deployment", "web"), "evil"),
            OutcomeResult::Denied,
            "previous revision",
        ),
        (
            "the right repository from another registry",
            pull_verdict(
                &failing,
                rollback("evil.example/shop/web:1.0.0"),
                ("Deployment", "web"),
                "registry",
            ),
            OutcomeResult::Denied,
            "previous revision",
        ),
        (
            "a swapped digest",
            pull_verdict(
                &failing,
                rollback("registry.local/shop/web@sha256:4d3c2b1a"),
                ("Deployment", "web"),
                "digest",
            ),
            OutcomeResult::Denied,
            "previous revision",
        ),
        (
            "a rollback to the failing image",
            pull_verdict(&failing, rollback(MISSING), ("Deployment", "web"), "same"),
            OutcomeResult::Denied,
            "changes nothing",
        ),
        (
            "another workload's name",
            pull_verdict(&failing, rollback(GOOD), ("Deployment", "payments-api"), "owner"),
            OutcomeResult::Denied,
            "belongs to Deployment web",
        ),
        (
            "a memory increase for a pull failure",
            pull_verdict(&failing, increase(128, 256), ("Deployment", "web"), "mem"),
            OutcomeResult::Denied,
            "does not fit",
        ),
        ("another namespace", in_other_namespace, OutcomeResult::Stale, "no longer exists"),
        ("a replaced pod's uid", stale_uid, OutcomeResult::Stale, "no longer exists"),
        ("a pod that is gone", gone, OutcomeResult::Stale, "no longer exists"),
        ("a container that is not failing", other_container, OutcomeResult::Stale, "no longer shows"),
        (
            "a healthy pod",
            oom_verdict(increase(256, 512), &healthy, "healthy"),
            OutcomeResult::Stale,
            "no longer shows",
        ),
        (
            "an excluded namespace",
            oom_verdict(increase(128, 256), &system, "system"),
            OutcomeResult::Denied,
            "excluded",
        ),
        (
            "a huge memory limit",
            oom_verdict(increase(128, 8 * 1024 * 1024 * 1024), &oom, "huge"),
            OutcomeResult::Denied,
            "cap",
        ),
        (
            "a limit that is not the live one",
            oom_verdict(increase(64, 128), &oom, "from"),
            OutcomeResult::Denied,
            "live limit",
        ),
        (
            "a revision rollback for a pull failure",
            pull_verdict(
                &failing,
                Action::RollbackRevision {
                    container: "app".into(),
                    from: proto::RevisionRef { number: 2, name: "web-2".into() },
                    to: proto::RevisionRef { number: 1, name: "web-1".into() },
                },
                ("Deployment", "web"),
                "revision",
            ),
            OutcomeResult::Denied,
            "does not fit",
        ),
        (
            "a paused rollout for a pull failure",
            pull_verdict(
                &failing,
                Action::PauseRollout {
                    container: "app".into(),
                    revision: proto::RevisionRef { number: 2, name: "web-2".into() },
                },
                ("Deployment", "web"),
                "pause",
            ),
            OutcomeResult::Denied,
            "does not fit",
        ),
        (
            "a bare pod rolled back to an image it never recorded",
            pull_verdict(
                &lonely,
                Action::RollbackImage { container: "app".into(), from: MISSING.into(), to: GOOD.into() },
                ("Pod", "lonely"),
                "bare",
            ),
            OutcomeResult::Denied,
            "no revision history",
        ),
    ];
    let count = requests.len();
    for (index, (_, verdict, _, _)) in requests.iter().enumerate() {
        let subject = proto::verdict_subject(&verdict.pod.namespace, &verdict.action).expect("subject");
        publish_raw(&world, &subject, proto::encode(verdict), &format!("forged-{index}")).await;
    }
    let mut by_incident: BTreeMap<proto::IncidentId, Outcome> = BTreeMap::new();
    while by_incident.len() < count {
        let outcome = next_outcome(&mut outcomes).await;
        by_incident.insert(outcome.incident.clone(), outcome);
    }
    for (what, verdict, result, reason) in &requests {
        let outcome = &by_incident[&verdict.incident];
        assert_eq!(outcome.result, *result, "{what}: {}", outcome.detail);
        assert!(outcome.detail.contains(reason), "{what}: {:?} does not say {reason:?}", outcome.detail);
    }

    // Messages that are not well-formed requests: dead-lettered with the reason, never acted on.
    let valid = pull_verdict(&failing, rollback(GOOD), ("Deployment", "web"), "raw");
    let mut unknown_field = serde_json::to_value(&valid).expect("json");
    unknown_field["action"]["registry_override"] = json!("evil.example");
    let mut newer_schema = serde_json::to_value(&valid).expect("json");
    newer_schema["schema"] = json!(2);
    let mut wrong_incident = valid.clone();
    wrong_incident.incident = proto::IncidentId("inc-000000000000000000000000".into());
    let mut padded = serde_json::to_value(&valid).expect("json");
    padded["root_cause"] = json!("x".repeat(proto::validate::MAX_PAYLOAD_BYTES));
    let subject = proto::verdict_subject("shop", &valid.action).expect("subject");
    let invalid: Vec<(&str, String, Vec<u8>, &str)> = vec![
        (
            "an unknown field",
            subject.clone(),
            serde_json::to_vec(&unknown_field).expect("bytes"),
            "malformed",
        ),
        ("a newer schema", subject.clone(), serde_json::to_vec(&newer_schema).expect("bytes"), "schema"),
        (
            "an incident that is not its key's",
            subject.clone(),
            proto::encode(&wrong_incident),
            "not the fingerprint",
        ),
        (
            "an oversized payload",
            subject.clone(),
            serde_json::to_vec(&padded).expect("bytes"),
            "exceeds the limit",
        ),
        (
            "another namespace's subject",
            "kubesent.verdicts.payments.rollback-image".into(),
            proto::encode(&valid),
            "belongs on",
        ),
        ("not JSON", subject.clone(), b"\x00\xff rm -rf /".to_vec(), "malformed"),
    ];
    for (index, (_, subject, payload, _)) in invalid.iter().enumerate() {
        publish_raw(&world, subject, payload.clone(), &format!("invalid-{index}")).await;
    }
    let mut reasons = Vec::new();
    for _ in &invalid {
        let letter =
            tokio::time::timeout(PATIENCE, dead.next()).await.expect("dead letter in time").expect("open");
        let headers = letter.headers.expect("headers");
        reasons.push(headers.get(proto::headers::DLQ_REASON).map(|v| v.to_string()).expect("reason"));
    }
    for (what, _, _, reason) in &invalid {
        assert!(
            reasons.iter().any(|r| r.contains(reason)),
            "{what}: no dead letter says {reason:?}: {reasons:#?}"
        );
    }

    assert_eq!(changes(&world), before, "nothing forged changed anything");
    let deployments: Api<Deployment> = Api::namespaced(world.kube.clone(), "shop");
    let template = deployments.get("web").await.expect("web").spec.expect("spec").template;
    assert_eq!(template.spec.expect("pod spec").containers[0].image.as_deref(), Some(MISSING));

    // The genuine request among them: the previous revision's image, which still serves ready pods, as
    // the rules propose it (a model's would wait for approval: models are on probation).
    let mut genuine = pull_verdict(&failing, rollback(GOOD), ("Deployment", "web"), "genuine");
    genuine.source = VerdictSource::Rules { rule: "image-not-found-rollback".into() };
    let subject = proto::verdict_subject("shop", &genuine.action).expect("subject");
    publish_raw(&world, &subject, proto::encode(&genuine), "genuine").await;
    let outcome = loop {
        let outcome = next_outcome(&mut outcomes).await;
        if outcome.incident == genuine.incident {
            break outcome;
        }
    };
    assert!(matches!(outcome.result, OutcomeResult::Healed | OutcomeResult::Applied), "{}", outcome.detail);
    let template = deployments.get("web").await.expect("web").spec.expect("spec").template;
    assert_eq!(template.spec.expect("pod spec").containers[0].image.as_deref(), Some(GOOD));
    remediator.stop().await;
}
