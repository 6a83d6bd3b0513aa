//! Earned autonomy against kube-sim and a real nats-server: what people did after a shadow decision is
//! followed (the same change, a different one) and survives a failover; harmful automatic fixes demote
//! their class; an operator's promotion changes what the next incident does. Which response and which
//! judgement each case is, is the table tests' (`src/followup.rs`, `proto/src/autonomy.rs`).

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{ListParams, Patch, PatchParams};
use kubesent_common::nats::NatsArgs;
use kubesent_proto::{
    OutcomeResult,
    autonomy::{ActionClass, HumanResponse, Judgement, Mode, PolicyChange, PolicyEvent, PolicyStep},
};
use kubesent_remediator::{EarnedConfig, operator::Operator};
use support::*;

mod support;

/// A remediator that follows decisions up every 100 ms for `window`, with the autonomy policy `policy`.
fn following(policy: &std::path::Path, window: Duration) -> RemediatorConfig {
    RemediatorConfig {
        autonomy_policy: Some(policy.to_owned()),
        earned: EarnedConfig {
            followup_window: window,
            followup_every: Duration::from_millis(100),
            ..EarnedConfig::default()
        },
        ..config()
    }
}

/// Deployment `name` in `shop`: pods of 128Mi that need 200Mi (OOM-killed until raised).
async fn oom_deployment(world: &World, name: &str) -> Pod {
    let deployments: Api<Deployment> = Api::namespaced(world.kube.clone(), "shop");
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "shop"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}, "annotations": {"sim.kubesent.io/memory-need": "200Mi"}},
                "spec": {"containers": [{"name": "app", "image": "registry.local/shop/web:1",
                    "resources": {"limits": {"memory": "128Mi"}, "requests": {"memory": "128Mi"}}}]}}}
    }))
    .expect("deployment");
    deployments.create(&PostParams::default(), &deployment).await.expect("deployment created");
    let pods: Api<Pod> = Api::namespaced(world.kube.clone(), "shop");
    tokio::time::timeout(PATIENCE, async {
        loop {
            let listed =
                pods.list(&ListParams::default().labels(&format!("app={name}"))).await.expect("pods");
            if let Some(pod) = listed.items.into_iter().find(|p| restarts(p) > 0) {
                return pod;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("an OOM-killed pod in time")
}

/// A person raising the template's memory limit with kubectl (`kubectl edit`'s field manager).
async fn kubectl_sets_memory(world: &World, name: &str, limit: &str, manager: &str) {
    let deployments: Api<Deployment> = Api::namespaced(world.kube.clone(), "shop");
    let patch = json!({"spec": {"template": {"spec": {"containers": [{"name": "app",
        "resources": {"limits": {"memory": limit}, "requests": {"memory": limit}}}]}}}});
    let params = PatchParams { field_manager: Some(manager.into()), ..PatchParams::default() };
    deployments.patch(name, &params, &Patch::Strategic(&patch)).await.expect("patched by a person");
}

/// The audit log as it is published, kept so that waiting for one incident loses no other's outcome.
struct AuditLog {
    subscriber: async_nats::Subscriber,
    seen: Vec<Outcome>,
}

impl AuditLog {
    async fn follow(world: &World) -> Self {
        let subscriber = world.client.subscribe("kubesent.outcomes.>").await.expect("subscribed");
        Self { subscriber, seen: Vec::new() }
    }

    /// The first outcome of `incident` with `result` (waiting for it when not seen yet).
    async fn outcome(&mut self, incident: &proto::IncidentId, result: OutcomeResult) -> Outcome {
        loop {
            if let Some(found) = self.seen.iter().find(|o| o.incident == *incident && o.result == result) {
                return found.clone();
            }
            let next = next_outcome(&mut self.subscriber).await;
            self.seen.push(next);
        }
    }
}

/// Waits until the follow-up of `incident` is gone from the bucket.
async fn follow_up_ended(world: &World, incident: &proto::IncidentId) {
    let key = proto::autonomy::followup_key(incident);
    let mut watch = world.bucket.watch_with_history(&key).await.expect("a watch");
    tokio::time::timeout(PATIENCE, async {
        while let Some(entry) = watch.next().await {
            if entry.expect("entry").operation != jetstream::kv::Operation::Put {
                return;
            }
        }
    })
    .await
    .expect("the follow-up ended in time");
}

/// `class`'s record once `judged` says it holds what the test waits for.
async fn record(
    world: &World,
    class: ActionClass,
    judged: impl Fn(&proto::autonomy::ClassRecord) -> bool,
) -> proto::autonomy::ClassRecord {
    let mut watch =
        world.bucket.watch_with_history(proto::autonomy::record_key(class)).await.expect("a watch");
    tokio::time::timeout(PATIENCE, async {
        while let Some(entry) = watch.next().await {
            let entry = entry.expect("entry");
            if let Ok(record) = serde_json::from_slice(&entry.value)
                && judged(&record)
            {
                return record;
            }
        }
        panic!("the watch of the record ended");
    })
    .await
    .expect("the record in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_making_the_proposed_change_after_a_shadow_decision_agrees_even_across_a_failover() {
    let world = world(36).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, "default: shadow\n").expect("policy");
    let failing = oom_deployment(&world, "web").await;
    let mut audit = AuditLog::follow(&world).await;
    let first = start_with(&world, following(&policy, Duration::from_secs(600)));
    let shadowed = verdict(&failing, increase(128, 256), 95);
    publish(&world, &shadowed, "v1").await;
    let decided = audit.outcome(&shadowed.incident, OutcomeResult::Suggested).await;
    let autonomy = decided.autonomy.expect("the class and mode are recorded");
    assert_eq!((autonomy.class, autonomy.mode), (ActionClass::MemoryRaise, Mode::Shadow));
    let key = proto::autonomy::followup_key(&shadowed.incident);
    assert!(world.bucket.get(&key).await.expect("read").is_some(), "followed from the decision on");
    // The leader goes away; a person makes the change meanwhile; the next leader sees it.
    first.stop().await;
    kubectl_sets_memory(&world, "web", "256Mi", "kubectl-edit").await;
    let second = start_with(&world, following(&policy, Duration::from_secs(600)));
    let followed = audit.outcome(&shadowed.incident, OutcomeResult::Followed).await;
    let followup = followed.followup.clone().expect("what people did");
    assert_eq!(followup.response, HumanResponse::Same, "{}", followed.detail);
    assert_eq!(followup.by.as_deref(), Some("kubectl-edit"));
    assert!(followup.failure_stopped, "the raised pods run: {}", followed.detail);
    assert!(
        followed.detail.contains("a human made the change KubeSent proposed (kubectl-edit)"),
        "{}",
        followed.detail
    );
    follow_up_ended(&world, &shadowed.incident).await;
    let judged = record(&world, ActionClass::MemoryRaise, |r| !r.entries.is_empty()).await;
    assert_eq!(judged.entries.len(), 1);
    assert_eq!((judged.entries[0].judgement, judged.entries[0].mode), (Judgement::Agreed, Mode::Shadow));
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_different_change_by_a_person_counts_against_the_class_and_a_controllers_change_not_at_all() {
    let world = world(36).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, "default: shadow\n").expect("policy");
    let less = oom_deployment(&world, "web").await;
    let gitops = oom_deployment(&world, "api").await;
    let mut audit = AuditLog::follow(&world).await;
    let remediator = start_with(&world, following(&policy, Duration::from_secs(3)));
    let (first, second) = (verdict(&less, increase(128, 256), 95), verdict(&gitops, increase(128, 256), 95));
    publish(&world, &first, "v1").await;
    publish(&world, &second, "v2").await;
    for incident in [&first.incident, &second.incident] {
        audit.outcome(incident, OutcomeResult::Suggested).await;
    }
    // Less than proposed, by a person: still OOM-killed, the window ends with a different change.
    kubectl_sets_memory(&world, "web", "160Mi", "kubectl-patch").await;
    // As proposed, but by a GitOps controller: not a person's judgement.
    kubectl_sets_memory(&world, "api", "256Mi", "argocd-controller").await;
    let different = audit.outcome(&first.incident, OutcomeResult::Followed).await;
    let followup = different.followup.expect("a finding");
    assert_eq!(
        (followup.response, followup.failure_stopped),
        (HumanResponse::Different, false),
        "{}",
        different.detail
    );
    let controller = audit.outcome(&second.incident, OutcomeResult::Followed).await;
    assert_eq!(
        controller.followup.expect("a finding").response,
        HumanResponse::Controller,
        "{}",
        controller.detail
    );
    let judged = record(&world, ActionClass::MemoryRaise, |r| !r.entries.is_empty()).await;
    assert_eq!(
        judged.entries.iter().map(|e| (e.incident.clone(), e.judgement)).collect::<Vec<_>>(),
        [(first.incident.clone(), Judgement::Disagreed)],
        "only the person's change is judged"
    );
    remediator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_automatic_fixes_people_took_back_demote_their_class_to_approve() {
    let world = world(36).await;
    let mut audit = AuditLog::follow(&world).await;
    let mut changes = world.client.subscribe("kubesent.policy.>").await.expect("subscribed");
    let remediator = start_with(&world, config());
    let operator = Operator::connect(&NatsArgs::url(world._nats.url()), "alice").await.expect("operator");
    for name in ["web-1", "web-2"] {
        let failing = create(&world, &pod(name, "128Mi", "200Mi"), true).await;
        let fix = verdict(&failing, increase(128, 256), 95);
        publish(&world, &fix, name).await;
        let healed = audit.outcome(&fix.incident, OutcomeResult::Healed).await;
        assert_eq!(
            healed.autonomy.map(|a| (a.class, a.mode)),
            Some((ActionClass::InPlaceResize, Mode::Auto))
        );
        let mut intent = world.bucket.watch_with_history(fix.incident.as_str()).await.expect("a watch");
        until_done(&mut intent).await;
        operator.undo(&world.kube, &fix.incident).await.expect("undone");
    }
    let demoted = tokio::time::timeout(PATIENCE, changes.next()).await.expect("in time").expect("a change");
    let demoted: PolicyChange = proto::decode(&demoted.payload).expect("a policy change");
    assert_eq!(
        (demoted.event, demoted.class, demoted.from, demoted.to),
        (PolicyEvent::Demoted, ActionClass::InPlaceResize, Mode::Auto, Mode::Approve)
    );
    assert!(demoted.why.contains("2 automatic in-place-resize fixes were harmful"), "{}", demoted.why);
    assert_eq!(demoted.record.harmful, 2);
    let failing = create(&world, &pod("web-3", "128Mi", "200Mi"), true).await;
    let next = verdict(&failing, increase(128, 256), 95);
    publish(&world, &next, "web-3").await;
    let held = audit.outcome(&next.incident, OutcomeResult::AwaitingApproval).await;
    assert!(held.detail.contains("waiting for approval"), "{}", held.detail);

    // An operator's promotion, forced past the record, lets the class act on its own again.
    let promoted = operator
        .policy(ActionClass::InPlaceResize, None, PolicyStep::Promote, false, None, PATIENCE)
        .await
        .expect("asked")
        .expect("taken");
    assert_eq!(promoted.event, PolicyEvent::Refused, "{}", promoted.why);
    assert!(promoted.why.contains("2 harmful"), "{}", promoted.why);
    let promoted = operator
        .policy(
            ActionClass::InPlaceResize,
            None,
            PolicyStep::Promote,
            true,
            Some("fixed the sizing".into()),
            PATIENCE,
        )
        .await
        .expect("asked")
        .expect("taken");
    assert_eq!((promoted.event, promoted.to), (PolicyEvent::Promoted, Mode::Auto), "{}", promoted.why);
    assert!(
        promoted.why.contains("alice (NATS user kubesent-operator)") && promoted.why.contains("forced"),
        "{}",
        promoted.why
    );
    let failing = create(&world, &pod("web-4", "128Mi", "200Mi"), true).await;
    let after = verdict(&failing, increase(128, 256), 95);
    publish(&world, &after, "web-4").await;
    audit.outcome(&after.incident, OutcomeResult::Healed).await;
    remediator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_that_earns_a_promotion_is_announced_once_and_with_auto_promote_the_class_moves_up() {
    let world = world(36).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, "default: shadow\n").expect("policy");
    let mut audit = AuditLog::follow(&world).await;
    let mut changes = world.client.subscribe("kubesent.policy.>").await.expect("subscribed");
    let earning = |auto_promote| {
        let mut config = following(&policy, Duration::from_secs(600));
        config.earned.promotion = proto::autonomy::PromotionRule { min_judged: 1, min_agreement: 0.95 };
        config.earned.auto_promote = auto_promote;
        config
    };
    let remediator = start_with(&world, earning(false));
    let web = oom_deployment(&world, "web").await;
    let first = verdict(&web, increase(128, 256), 95);
    publish(&world, &first, "v1").await;
    audit.outcome(&first.incident, OutcomeResult::Suggested).await;
    kubectl_sets_memory(&world, "web", "256Mi", "kubectl-edit").await;
    audit.outcome(&first.incident, OutcomeResult::Followed).await;
    let announced = tokio::time::timeout(PATIENCE, changes.next()).await.expect("in time").expect("a change");
    let announced: PolicyChange = proto::decode(&announced.payload).expect("a policy change");
    assert_eq!(
        (announced.event, announced.from, announced.to),
        (PolicyEvent::Eligible, Mode::Shadow, Mode::Shadow)
    );
    assert!(
        announced.why.contains("`kubesent policy promote memory-raise` moves it from shadow to approve"),
        "{}",
        announced.why
    );
    // A second agreement is not announced again (the next change seen below is the promotion).
    let shop = oom_deployment(&world, "shop").await;
    let again = verdict(&shop, increase(128, 256), 95);
    publish(&world, &again, "v1b").await;
    audit.outcome(&again.incident, OutcomeResult::Suggested).await;
    kubectl_sets_memory(&world, "shop", "256Mi", "kubectl-edit").await;
    audit.outcome(&again.incident, OutcomeResult::Followed).await;
    record(&world, ActionClass::MemoryRaise, |r| r.entries.len() == 2).await;
    remediator.stop().await;

    // With --auto-promote the next agreement moves the class itself.
    let remediator = start_with(&world, earning(true));
    let api = oom_deployment(&world, "api").await;
    let second = verdict(&api, increase(128, 256), 95);
    publish(&world, &second, "v2").await;
    audit.outcome(&second.incident, OutcomeResult::Suggested).await;
    kubectl_sets_memory(&world, "api", "512Mi", "kubectl-patch").await;
    audit.outcome(&second.incident, OutcomeResult::Followed).await;
    let promoted = tokio::time::timeout(PATIENCE, changes.next()).await.expect("in time").expect("a change");
    let promoted: PolicyChange = proto::decode(&promoted.payload).expect("a policy change");
    assert_eq!(
        (promoted.event, promoted.from, promoted.to),
        (PolicyEvent::Promoted, Mode::Shadow, Mode::Approve)
    );
    assert_eq!(promoted.by, "kubesent (--auto-promote)");
    let db = oom_deployment(&world, "db").await;
    let third = verdict(&db, increase(128, 256), 95);
    publish(&world, &third, "v3").await;
    audit.outcome(&third.incident, OutcomeResult::AwaitingApproval).await;
    remediator.stop().await;
}
