//! The remediator on its own, against kube-sim and a real nats-server: verdicts are published by hand, so
//! what the shell around the decisions does is checked directly: a refusal recorded with nothing changed
//! (dry-run), what it reads for the plan (an earlier intent, a controller that is gone), locks, the kill
//! switch, the budget, approvals, exactly-once under redelivery, finishing a half-done step after a crash,
//! purging. Which refusal a verdict gets is the plan's and the gate's table tests' (`src/plan.rs`,
//! `src/gate.rs`), not repeated here.

use kube::api::{DeleteParams, Preconditions};
use kubesent_common::nats::NatsArgs;
use kubesent_proto::{IncidentId, OutcomeResult};
use kubesent_remediator::operator::{Operator, Taken};
use kubesent_remediator::{intent::Claim, replace};
use support::*;

mod support;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_dry_run_the_fix_is_recorded_as_a_suggestion_and_nothing_changes() {
    let world = world(36).await;
    let failing = create(&world, &pod("web-1", "128Mi", "200Mi"), true).await;
    let mut outcomes = world.client.subscribe("kubesent.outcomes.>").await.expect("subscribed");
    let remediator = start(&world, Policy { dry_run: true, ..Policy::default() });
    publish(&world, &verdict(&failing, increase(128, 256), 95), "v1").await;

    let outcome = next_outcome(&mut outcomes).await;
    assert_eq!(outcome.result, OutcomeResult::Suggested, "{}", outcome.detail);
    assert_eq!(outcome.action, increase(128, 256));
    assert!(changes(&world).is_empty(), "{:?}", changes(&world));
    remediator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verification_does_not_hold_the_slot_the_next_verdict_needs() {
    let world = world(36).await;
    let first = create(&world, &pod("web-1", "128Mi", "200Mi"), true).await;
    let second = create(&world, &pod("web-2", "128Mi", "200Mi"), true).await;
    let mut entries = world.bucket.watch_all().await.expect("watch");
    // One verdict at a time, and a verify window far longer than the test.
    let remediator = start_with(
        &world,
        RemediatorConfig {
            concurrency: 1,
            verify_window: Duration::from_secs(600),
            verify_timeout: Duration::from_secs(1200),
            ..config()
        },
    );
    publish(&world, &verdict(&first, increase(128, 256), 95), "v1").await;
    publish(&world, &verdict(&second, increase(128, 256), 95), "v2").await;

    // Both changes are made while the first is still being verified.
    let mut applied = std::collections::BTreeSet::new();
    tokio::time::timeout(PATIENCE, async {
        while applied.len() < 2 {
            let entry = entries.next().await.expect("an entry").expect("readable");
            if let Ok(intent) = serde_json::from_slice::<Intent>(&entry.value)
                && intent.phase == Phase::Applied
            {
                applied.insert(intent.target.name);
            }
        }
    })
    .await
    .expect("the second fix was made while the first was verified");
    assert_eq!(applied, ["web-1".to_owned(), "web-2".to_owned()].into());
    let outcomes = world.js.get_stream(proto::OUTCOMES_STREAM).await.expect("stream");
    assert_eq!(outcomes.cached_info().state.messages, 0, "both still verifying");
    remediator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_locked_by_another_incident_is_not_touched() {
    let world = world(36).await;
    let failing = create(&world, &pod("web-1", "128Mi", "200Mi"), true).await;
    let verdict = verdict(&failing, increase(128, 256), 95);
    let other = IncidentId("inc-000000000000000000000000".into());
    assert!(world.intents.lock(&intent::lock_key(&verdict.pod), &other).await.expect("lock"));
    let mut outcomes = world.client.subscribe("kubesent.outcomes.>").await.expect("subscribed");
    let remediator = start(&world, Policy::default());
    publish(&world, &verdict, "v1").await;

    let outcome = next_outcome(&mut outcomes).await;
    assert_eq!(outcome.result, OutcomeResult::Denied);
    assert!(outcome.detail.contains("in progress"), "{}", outcome.detail);
    let pods: Api<Pod> = Api::namespaced(world.kube.clone(), "shop");
    assert_eq!(memory_limit(&pods.get("web-1").await.expect("pod")), "128Mi");
    remediator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_whose_previous_fix_was_ineffective_is_escalated_not_changed_again() {
    let world = world(36).await;
    let previous = IncidentId("inc-111111111111111111111111".into());
    let mut marked = pod("web-1", "128Mi", "200Mi");
    marked
        .metadata
        .annotations
        .get_or_insert_default()
        .insert(replace::INCIDENT_ANNOTATION.into(), previous.to_string());
    let failing = create(&world, &marked, true).await;
    let mut done = verdict(&failing, increase(64, 128), 95);
    done.incident = previous.clone();
    let record = Intent {
        result: Some(OutcomeResult::Ineffective),
        detail: Some("pod web-1 failed again".into()),
        // (Its verdict was for that earlier incident; this one stands in for it.)
        verdict: None,
        ..stored_intent(&done, Phase::Done, Strategy::InPlaceResize)
    };
    assert!(matches!(world.intents.claim(&record).await.expect("stored"), Claim::Fresh(_)));
    let mut outcomes = world.client.subscribe("kubesent.outcomes.>").await.expect("subscribed");
    let remediator = start(&world, Policy::default());
    publish(&world, &verdict(&failing, increase(128, 256), 95), "v1").await;

    let outcome = next_outcome(&mut outcomes).await;
    assert_eq!(outcome.result, OutcomeResult::Denied);
    assert!(outcome.detail.contains("escalated"), "{}", outcome.detail);
    assert!(changes(&world).is_empty(), "{:?}", changes(&world));
    remediator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verdict_delivered_twice_is_applied_once() {
    let world = world(36).await;
    let failing = create(&world, &pod("web-1", "128Mi", "200Mi"), true).await;
    let verdict = verdict(&failing, increase(128, 256), 95);
    let mut acks = world.client.subscribe("$JS.ACK.KUBESENT_VERDICTS.>").await.expect("subscribed");
    let mut outcomes = world.client.subscribe("kubesent.outcomes.>").await.expect("subscribed");
    let remediator = start(&world, Policy::default());
    publish(&world, &verdict, "first").await;
    let outcome = next_outcome(&mut outcomes).await;
    assert_eq!(outcome.result, OutcomeResult::Healed, "{}", outcome.detail);
    assert_eq!(outcome.strategy, Some(Strategy::InPlaceResize));

    // The same verdict again (a redelivery, or a second diagnoser): handled, acknowledged, not applied.
    publish(&world, &verdict, "second").await;
    let mut acked = 0;
    while acked < 2 {
        let ack =
            tokio::time::timeout(PATIENCE, acks.next()).await.expect("ack in time").expect("subscribed");
        if ack.payload.starts_with(b"+ACK") {
            acked += 1;
        }
    }
    let resizes: Vec<_> = changes(&world).into_iter().filter(|c| c.contains("/resize")).collect();
    assert_eq!(resizes.len(), 1, "{resizes:?}");
    let stream = world.js.get_stream(proto::OUTCOMES_STREAM).await.expect("stream");
    assert_eq!(stream.get_info().await.expect("info").state.messages, 1, "one outcome per incident");
    assert_eq!(
        remediator.metrics.outcomes(OutcomeResult::Healed),
        1,
        "the second delivery records nothing again: no phantom outcome in the metrics"
    );
    remediator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replace_interrupted_after_the_delete_is_finished_by_the_next_leader() {
    // Kubernetes 1.32: no in-place resize, so the fix is a force replace.
    let world = world(32).await;
    let failing = create(&world, &pod("web-1", "128Mi", "200Mi"), true).await;
    let verdict = verdict(&failing, increase(128, 256), 95);
    // What a leader that crashed right after its delete leaves behind: the intent, and no pod.
    let record = Intent {
        original: Some(replace::sanitized(&failing)),
        replacement: Some(replace::with_memory_limit(
            &failing,
            "app",
            MemoryQuantity::from_mib(128),
            MemoryQuantity::from_mib(256),
            &verdict.incident,
        )),
        ..stored_intent(&verdict, Phase::Deleted, Strategy::ForceReplace)
    };
    assert!(world.intents.lock(&record.lock, &record.incident).await.expect("lock"));
    assert!(matches!(world.intents.claim(&record).await.expect("stored"), Claim::Fresh(_)));
    let pods: Api<Pod> = Api::namespaced(world.kube.clone(), "shop");
    let params = DeleteParams {
        preconditions: Some(Preconditions { uid: failing.metadata.uid.clone(), resource_version: None }),
        ..DeleteParams::default()
    };
    pods.delete("web-1", &params).await.expect("deleted");
    let mut entries = world.bucket.watch(record.incident.as_str()).await.expect("watch");
    let mut outcomes = world.client.subscribe("kubesent.outcomes.>").await.expect("subscribed");

    let remediator = start(&world, Policy::default());
    let finished = until_done(&mut entries).await;
    assert_eq!(finished.result, Some(OutcomeResult::Healed), "{:?}", finished.detail);
    let replacement = pods.get("web-1").await.expect("the pod exists again");
    assert_ne!(replacement.metadata.uid, failing.metadata.uid);
    assert_eq!(finished.replacement_uid, replacement.metadata.uid);
    assert_eq!(memory_limit(&replacement), "256Mi");
    // Recorded by the takeover itself: no verdict is on the stream to be redelivered.
    let outcome = next_outcome(&mut outcomes).await;
    assert_eq!((outcome.incident.clone(), outcome.result), (verdict.incident.clone(), OutcomeResult::Healed));
    assert_eq!(outcome.strategy, Some(Strategy::ForceReplace));
    assert!(
        world
            .intents
            .lock(&record.lock, &IncidentId("inc-222222222222222222222222".into()))
            .await
            .expect("lock"),
        "the lock was released"
    );
    remediator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_intent_naming_a_kind_kubesent_does_not_change_ends_failed_and_changes_nothing() {
    let world = world(36).await;
    let failing = create(&world, &pod("web-1", "128Mi", "200Mi"), true).await;
    let verdict = verdict(&failing, increase(128, 256), 95);
    // A forged or corrupted intent: an owner patch of a DaemonSet, which KubeSent never plans. It must
    // not be read as the Deployment of the same name.
    let record = Intent {
        workload: Some(proto::WorkloadRef {
            kind: kubesent_proto::WorkloadKind::DaemonSet,
            name: "web".into(),
        }),
        ..stored_intent(&verdict, Phase::Pending, Strategy::OwnerPatch)
    };
    assert!(world.intents.lock(&record.lock, &record.incident).await.expect("lock"));
    assert!(matches!(world.intents.claim(&record).await.expect("stored"), Claim::Fresh(_)));
    let mut entries = world.bucket.watch(record.incident.as_str()).await.expect("watch");

    let remediator = start(&world, Policy::default());
    let finished = until_done(&mut entries).await;
    assert_eq!(finished.result, Some(OutcomeResult::Failed), "{:?}", finished.detail);
    assert!(finished.detail.as_deref().is_some_and(|d| d.contains("not DaemonSet")), "{:?}", finished.detail);
    assert!(changes(&world).is_empty(), "{:?}", changes(&world));
    remediator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_verdict_is_dead_lettered_with_the_reason() {
    let world = world(36).await;
    let mut dead_letters =
        world.client.subscribe(proto::dlq_subject("remediator")).await.expect("subscribed");
    let remediator = start(&world, Policy::default());
    world
        .js
        .publish("kubesent.verdicts.shop.increase-memory", "{\"schema\":1,\"action\":7}".into())
        .await
        .expect("published")
        .await
        .expect("stored");
    let dead = tokio::time::timeout(PATIENCE, dead_letters.next())
        .await
        .expect("dead letter in time")
        .expect("subscribed");
    let headers = dead.headers.expect("headers");
    let reason = headers.get(proto::headers::DLQ_REASON).map(|v| v.to_string()).expect("reason");
    assert!(reason.starts_with("invalid verdict: malformed payload"), "{reason}");
    assert_eq!(remediator.metrics.rejected("malformed"), 1);
    assert!(changes(&world).is_empty());
    remediator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_paused_fixes_are_only_suggested_and_after_resume_they_are_applied() {
    let world = world(36).await;
    let first = create(&world, &pod("web-1", "128Mi", "200Mi"), true).await;
    let second = create(&world, &pod("web-2", "128Mi", "200Mi"), true).await;
    world.guardrails().pause("registry migration").await.expect("paused");
    let mut outcomes = world.client.subscribe("kubesent.outcomes.>").await.expect("subscribed");
    let remediator = start(&world, Policy::default());
    publish(&world, &verdict(&first, increase(128, 256), 95), "v1").await;
    let outcome = next_outcome(&mut outcomes).await;
    assert_eq!(outcome.result, OutcomeResult::Suggested);
    assert!(outcome.detail.contains("paused (registry migration)"), "{}", outcome.detail);
    assert!(changes(&world).is_empty(), "{:?}", changes(&world));

    world.guardrails().resume().await.expect("resumed");
    publish(&world, &verdict(&second, increase(128, 256), 95), "v2").await;
    let outcome = next_outcome(&mut outcomes).await;
    assert_eq!(outcome.pod.name, "web-2");
    assert_eq!(outcome.result, OutcomeResult::Healed, "{}", outcome.detail);
    remediator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actions_beyond_the_hourly_budget_are_only_suggested() {
    let world = world(36).await;
    let first = create(&world, &pod("web-1", "128Mi", "200Mi"), true).await;
    let second = create(&world, &pod("web-2", "128Mi", "200Mi"), true).await;
    let mut outcomes = world.client.subscribe("kubesent.outcomes.>").await.expect("subscribed");
    let limits = Limits { actions_per_hour: 1, ..Limits::default() };
    let remediator = start_with(&world, RemediatorConfig { limits, ..config() });
    publish(&world, &verdict(&first, increase(128, 256), 95), "v1").await;
    assert_eq!(next_outcome(&mut outcomes).await.result, OutcomeResult::Healed);
    publish(&world, &verdict(&second, increase(128, 256), 95), "v2").await;
    let outcome = next_outcome(&mut outcomes).await;
    assert_eq!(outcome.pod.name, "web-2");
    assert_eq!(outcome.result, OutcomeResult::Suggested);
    assert!(outcome.detail.contains("budget of 1 actions per hour"), "{}", outcome.detail);
    let pods: Api<Pod> = Api::namespaced(world.kube.clone(), "shop");
    assert_eq!(memory_limit(&pods.get("web-2").await.expect("pod")), "128Mi");
    remediator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_approval_mode_a_fix_waits_for_a_human_and_is_carried_out_once_approved() {
    let world = world(36).await;
    let failing = create(&world, &pod("web-1", "128Mi", "200Mi"), true).await;
    let verdict = verdict(&failing, increase(128, 256), 95);
    let mut outcomes = world.client.subscribe("kubesent.outcomes.>").await.expect("subscribed");
    let remediator = start_with(&world, RemediatorConfig { approval_required: true, ..config() });
    publish(&world, &verdict, "v1").await;

    let pending = next_outcome(&mut outcomes).await;
    assert_eq!(pending.result, OutcomeResult::AwaitingApproval);
    assert!(pending.detail.contains(&format!("kubesent approve {}", verdict.incident)), "{}", pending.detail);
    assert!(changes(&world).is_empty(), "nothing changes before the approval: {:?}", changes(&world));

    let operator = Operator::connect(&NatsArgs::url(world._nats.url()), "alice").await.expect("operator");
    let taken = operator.approve(&verdict.incident, PATIENCE).await.expect("approved");
    assert_eq!(taken, Taken::Taken(None), "the leader took the approval");
    let outcome = next_outcome(&mut outcomes).await;
    assert_eq!(outcome.result, OutcomeResult::Healed, "{}", outcome.detail);
    assert_eq!(outcome.strategy, Some(Strategy::InPlaceResize));
    assert_eq!(outcome.decided_by.as_deref(), Some("alice (NATS user kubesent-operator)"), "attributed");
    let (intent, _) = world.intents.get(&verdict.incident).await.expect("read").expect("intent");
    assert_eq!(intent.approved_by.as_deref(), Some("alice (NATS user kubesent-operator)"));
    let pods: Api<Pod> = Api::namespaced(world.kube.clone(), "shop");
    let resized = pods.get("web-1").await.expect("pod");
    assert_eq!(memory_limit(&resized), "256Mi");
    assert!(
        resized.metadata.managed_fields.iter().flatten().any(|entry| {
            entry.manager.as_deref() == Some(kubesent_remediator::FIELD_MANAGER)
                && entry.subresource.as_deref() == Some("resize")
        }),
        "the resize is recorded under KubeSent's field manager: {:?}",
        resized.metadata.managed_fields
    );
    let again = operator.approve(&verdict.incident, PATIENCE).await.expect_err("already done");
    assert!(again.to_string().contains("not waiting for approval"), "{again}");
    remediator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_fix_is_never_applied_and_frees_its_target() {
    let world = world(36).await;
    let failing = create(&world, &pod("web-1", "128Mi", "200Mi"), true).await;
    let verdict = verdict(&failing, increase(128, 256), 95);
    let mut outcomes = world.client.subscribe("kubesent.outcomes.>").await.expect("subscribed");
    let remediator = start_with(&world, RemediatorConfig { approval_required: true, ..config() });
    publish(&world, &verdict, "v1").await;
    assert_eq!(next_outcome(&mut outcomes).await.result, OutcomeResult::AwaitingApproval);

    let operator = Operator::connect(&NatsArgs::url(world._nats.url()), "alice").await.expect("operator");
    let taken =
        operator.reject(&verdict.incident, "fixing the leak instead", PATIENCE).await.expect("rejected");
    let Taken::Taken(Some(outcome)) = taken else { panic!("no outcome: {taken:?}") };
    assert_eq!(outcome.result, OutcomeResult::Denied);
    assert!(
        outcome.detail.contains("rejected by alice (NATS user kubesent-operator): fixing the leak instead"),
        "{}",
        outcome.detail
    );
    assert_eq!(outcome.decided_by.as_deref(), Some("alice (NATS user kubesent-operator)"));
    let (rejected, _) = world.intents.get(&verdict.incident).await.expect("read").expect("intent");
    assert_eq!(rejected.phase, Phase::Done);
    assert_eq!(rejected.result, Some(OutcomeResult::Denied));
    let other = IncidentId("inc-444444444444444444444444".into());
    assert!(
        world.intents.lock(&intent::lock_key(&verdict.pod), &other).await.expect("lock"),
        "the pod is free"
    );
    remediator.stop().await;
    assert!(changes(&world).is_empty(), "{:?}", changes(&world));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_intents_past_their_retention_are_purged_and_the_rest_kept() {
    let world = world(36).await;
    let healthy = create(&world, &pod("web-1", "256Mi", "200Mi"), false).await;
    let long_ago = jiff::Timestamp::now() - jiff::SignedDuration::from_hours(24 * 40);
    let intent_for = |n: u8, phase: Phase, updated_at: jiff::Timestamp| {
        let mut base = verdict(&healthy, increase(256, 512), 95);
        base.incident = IncidentId(format!("inc-{}", format!("{n}").repeat(24)));
        // (Made-up incidents: no verdict of theirs would validate.)
        Intent { updated_at, verdict: None, ..stored_intent(&base, phase, Strategy::InPlaceResize) }
    };
    let old_done = intent_for(5, Phase::Done, long_ago);
    let recent_done = intent_for(6, Phase::Done, jiff::Timestamp::now());
    let old_open = intent_for(7, Phase::AwaitingApproval, long_ago);
    for intent in [&old_done, &recent_done, &old_open] {
        assert!(matches!(world.intents.claim(intent).await.expect("stored"), Claim::Fresh(_)));
    }
    let mut removals = world.bucket.watch(old_done.incident.as_str()).await.expect("watch");
    let retention = Duration::from_secs(30 * 24 * 3600);
    let remediator = start_with(&world, RemediatorConfig { intent_retention: retention, ..config() });
    let removed =
        tokio::time::timeout(PATIENCE, removals.next()).await.expect("purged in time").expect("watch");
    assert_eq!(removed.expect("entry").operation, jetstream::kv::Operation::Purge);
    remediator.stop().await;
    assert!(world.intents.get(&old_done.incident).await.expect("read").is_none());
    assert!(
        world.intents.get(&recent_done.incident).await.expect("read").is_some(),
        "still within retention"
    );
    assert!(
        world.intents.get(&old_open.incident).await.expect("read").is_some(),
        "an unfinished intent (here: one waiting for approval) is never purged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_whose_controller_is_gone_is_stale_not_retried() {
    let world = world(36).await;
    let mut orphan = pod("web-1", "128Mi", "200Mi");
    orphan.metadata.owner_references = Some(vec![
        serde_json::from_value(
            json!({"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7d9c5b7f6",
            "uid": "0d7c4a52-0000-4000-8000-000000000000", "controller": true}),
        )
        .expect("owner reference"),
    ]);
    let failing = create(&world, &orphan, true).await;
    let mut outcomes = world.client.subscribe("kubesent.outcomes.>").await.expect("subscribed");
    let mut acks = world.client.subscribe("$JS.ACK.KUBESENT_VERDICTS.>").await.expect("subscribed");
    let remediator = start(&world, Policy::default());
    publish(&world, &verdict(&failing, increase(128, 256), 95), "v1").await;

    let outcome = next_outcome(&mut outcomes).await;
    assert_eq!(outcome.result, OutcomeResult::Stale);
    assert!(
        outcome.detail.contains("controller ReplicaSet web-7d9c5b7f6 no longer exists"),
        "{}",
        outcome.detail
    );
    // Stopped once the verdict is acknowledged: a stop mid-handler drops the handler (the next leader
    // takes the verdict over), which is not what this test is about.
    loop {
        let ack =
            tokio::time::timeout(PATIENCE, acks.next()).await.expect("ack in time").expect("subscribed");
        if ack.payload.starts_with(b"+ACK") {
            break;
        }
    }
    let metrics = remediator.metrics.clone();
    remediator.stop().await;
    assert_eq!(metrics.outcomes(OutcomeResult::Stale), 1, "recorded once, not retried");
    assert!(changes(&world).is_empty(), "{:?}", changes(&world));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approved_fix_whose_target_changed_while_it_waited_is_not_applied() {
    let world = world(36).await;
    let failing = create(&world, &pod("web-1", "128Mi", "200Mi"), true).await;
    let verdict = verdict(&failing, increase(128, 256), 95);
    let mut outcomes = world.client.subscribe("kubesent.outcomes.>").await.expect("subscribed");
    let remediator = start_with(&world, RemediatorConfig { approval_required: true, ..config() });
    publish(&world, &verdict, "v1").await;
    assert_eq!(next_outcome(&mut outcomes).await.result, OutcomeResult::AwaitingApproval);

    // Someone else raised the limit meanwhile: the approved change no longer fits the live pod.
    let pods: Api<Pod> = Api::namespaced(world.kube.clone(), "shop");
    let resize = json!({"spec": {"containers": [{"name": "app", "resources": {"limits": {"memory": "512Mi"}, "requests": {"memory": "512Mi"}}}]}});
    pods.patch_subresource(
        "resize",
        "web-1",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Strategic(&resize),
    )
    .await
    .expect("resized by hand");
    let before = changes(&world);
    let operator = Operator::connect(&NatsArgs::url(world._nats.url()), "alice").await.expect("operator");
    operator.approve(&verdict.incident, PATIENCE).await.expect("approved");
    let outcome = next_outcome(&mut outcomes).await;
    assert_eq!(outcome.result, OutcomeResult::Denied, "{}", outcome.detail);
    assert!(outcome.detail.contains("live limit is 512Mi"), "{}", outcome.detail);
    assert_eq!(memory_limit(&pods.get("web-1").await.expect("pod")), "512Mi", "left as it was");
    assert_eq!(changes(&world), before, "nothing changed after the approval");
    remediator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_patch_a_crashed_leader_made_is_not_made_again_by_the_next() {
    let done = finish_a_crashed_leaders_template_patch(Phase::Pending).await;
    assert_eq!(done.result, Some(OutcomeResult::Healed));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fix_a_crashed_leader_applied_is_verified_by_the_next_whose_name_is_on_the_done_intent() {
    let done = finish_a_crashed_leaders_template_patch(Phase::Applied).await;
    assert_eq!(done.result, Some(OutcomeResult::Healed));
    assert_eq!(done.actor, config().identity, "the replica that finished it, not the one that crashed");
}

/// A Deployment whose template a leader patched before it crashed, its intent left at `phase`: the next
/// leader finishes it without patching again. Returns the intent as marked done.
async fn finish_a_crashed_leaders_template_patch(phase: Phase) -> Intent {
    use k8s_openapi::api::apps::v1::Deployment;
    use kube::api::{ListParams, Patch, PatchParams};
    let world = world(36).await;
    let deployments: Api<Deployment> = Api::namespaced(world.kube.clone(), "shop");
    let web: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}, "annotations": {"sim.kubesent.io/memory-need": "200Mi"}},
                "spec": {"containers": [{"name": "app", "image": "registry.local/shop/web:1.4.2",
                    "resources": {"limits": {"memory": "128Mi"}}}]}}}
    }))
    .expect("deployment json");
    deployments.create(&PostParams::default(), &web).await.expect("created");
    let pods: Api<Pod> = Api::namespaced(world.kube.clone(), "shop");
    let failing = loop {
        let list = pods.list(&ListParams::default().labels("app=web")).await.expect("pods");
        if let Some(pod) = list.items.into_iter().find(|p| restarts(p) > 0) {
            break pod;
        }
        // kube-sim's kubelet OOM-kills within a few simulated seconds.
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut verdict = verdict(&failing, increase(128, 256), 95);
    verdict.key.workload = WorkloadRef { kind: kubesent_proto::WorkloadKind::Deployment, name: "web".into() };
    verdict.incident = verdict.key.fingerprint();
    // What a leader that crashed after its template patch, before recording it, leaves behind.
    let patched = json!({
        "metadata": {"annotations": {"kubesent.io/incident": verdict.incident.as_str(),
            "kubesent.io/original-memory-limit.app": "128Mi"}},
        "spec": {"template": {"spec": {"containers": [{"name": "app", "resources": {"limits": {"memory": "256Mi"}}}]}}}
    });
    deployments.patch("web", &PatchParams::default(), &Patch::Strategic(&patched)).await.expect("patched");
    let record = Intent {
        workload: Some(WorkloadRef { kind: kubesent_proto::WorkloadKind::Deployment, name: "web".into() }),
        lock: intent::workload_lock_key("shop", "Deployment", "web"),
        old_revision: failing.metadata.labels.as_ref().and_then(|l| l.get("pod-template-hash")).cloned(),
        ..stored_intent(&verdict, phase, Strategy::OwnerPatch)
    };
    assert!(world.intents.lock(&record.lock, &record.incident).await.expect("lock"));
    assert!(matches!(world.intents.claim(&record).await.expect("stored"), Claim::Fresh(_)));
    let before = world.sim.requests().len();
    let mut outcomes = world.client.subscribe("kubesent.outcomes.>").await.expect("subscribed");
    let mut entries = world.bucket.watch(record.incident.as_str()).await.expect("watch");

    let remediator = start(&world, Policy::default());
    let outcome = next_outcome(&mut outcomes).await;
    assert_eq!(
        (outcome.incident.clone(), outcome.result),
        (verdict.incident.clone(), OutcomeResult::Healed),
        "{}",
        outcome.detail
    );
    let patches: Vec<String> = world.sim.requests()[before..]
        .iter()
        .filter(|r| r.method == "PATCH" && r.path.ends_with("/deployments/web"))
        .map(|r| format!("{} {} {}", r.method, r.path, r.status))
        .collect();
    assert!(patches.is_empty(), "the template was not patched again: {patches:?}");
    let done = until_done(&mut entries).await;
    remediator.stop().await;
    done
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_stopped_mid_verification_stops_acting_and_its_successor_finishes_the_fix() {
    use kubesent_common::leader::{LeaderConfig, STANDBY_POLL};
    let world = world(36).await;
    let failing = create(&world, &pod("web-1", "128Mi", "200Mi"), true).await;
    let verdict = verdict(&failing, increase(128, 256), 95);
    let elected = |identity: &str, verify_window| RemediatorConfig {
        identity: identity.into(),
        leader: Some(LeaderConfig {
            namespace: "kubesent".into(),
            lease_name: "kubesent-remediator".into(),
            identity: identity.into(),
            ttl: Duration::from_secs(15),
            standby_poll: STANDBY_POLL,
        }),
        verify_window,
        ..config()
    };
    let mut entries = world.bucket.watch(verdict.incident.as_str()).await.expect("watch");
    let mut outcomes = world.client.subscribe("kubesent.outcomes.>").await.expect("subscribed");
    // The first leader verifies for ten minutes: it is stopped long before that.
    let first = start_with(&world, elected("remediator-a", Duration::from_secs(600)));
    publish(&world, &verdict, "verdict").await;
    loop {
        let entry = tokio::time::timeout(PATIENCE, entries.next()).await.expect("in time").expect("watch");
        let intent: Intent = serde_json::from_slice(&entry.expect("entry").value).expect("an intent");
        if intent.phase == Phase::Applied {
            break;
        }
    }
    let second = start_with(&world, elected("remediator-b", Duration::from_millis(500)));

    // A graceful stop ends the remediation where it stands (as a crash would) and only then releases
    // the lease; before, the old leader went on verifying beside its successor.
    tokio::time::timeout(Duration::from_secs(30), first.stop())
        .await
        .expect("the stopped leader does not finish its ten-minute verification first");
    let outcome = next_outcome(&mut outcomes).await;
    assert_eq!(outcome.result, OutcomeResult::Healed, "{}", outcome.detail);
    assert_eq!(outcome.actor, "remediator-b", "the successor finished it");
    // The outcome is recorded before the done mark: follow the intent until it is marked.
    let done = until_done(&mut entries).await;
    assert_eq!(done.actor, "remediator-b", "the intent names who finished it");
    let resizes: Vec<_> = changes(&world).into_iter().filter(|c| c.contains("/resize")).collect();
    assert_eq!(resizes.len(), 1, "applied once: {resizes:?}");
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_autonomy_policy_puts_a_namespace_in_shadow_and_its_annotation_can_only_make_a_class_stricter() {
    let world = world(36).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let policy = dir.path().join("policy.yaml");
    // Memory raises in auto everywhere; the namespace shop's own annotation asks for approval of in-place
    // resizes (stricter: taken) and auto for everything (looser: ignored).
    std::fs::write(&policy, "default: auto\nnamespaces:\n  - name: payments\n    mode: shadow\n")
        .expect("policy");
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(world.kube.clone());
    let annotated = serde_json::json!({"metadata": {"annotations": {
        "kubesent.io/autonomy": "in-place-resize=approve,force-replace=approve,memory-raise=auto"}}});
    let patched = namespaces
        .patch("shop", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&annotated))
        .await;
    if patched.is_err() {
        let namespace: k8s_openapi::api::core::v1::Namespace = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "shop", "annotations": {
                "kubesent.io/autonomy": "in-place-resize=approve,force-replace=approve,memory-raise=auto"}}
        }))
        .expect("namespace");
        namespaces.create(&PostParams::default(), &namespace).await.expect("namespace created");
    }
    let failing = create(&world, &pod("web-1", "128Mi", "200Mi"), true).await;
    let mut outcomes = world.client.subscribe("kubesent.outcomes.>").await.expect("subscribed");
    let remediator =
        start_with(&world, RemediatorConfig { autonomy_policy: Some(policy.clone()), ..config() });
    publish(&world, &verdict(&failing, increase(128, 256), 95), "v1").await;
    let outcome = next_outcome(&mut outcomes).await;
    assert_eq!(outcome.result, OutcomeResult::AwaitingApproval, "{}", outcome.detail);
    assert!(pod_changes(&world).is_empty(), "{:?}", pod_changes(&world));
    remediator.stop().await;

    // The same namespace in shadow by the policy: decided and recorded, nothing changed.
    std::fs::write(&policy, "default: auto\nnamespaces:\n  - name: shop\n    mode: shadow\n")
        .expect("policy");
    let second = create(&world, &pod("web-2", "128Mi", "200Mi"), true).await;
    let remediator = start_with(&world, RemediatorConfig { autonomy_policy: Some(policy), ..config() });
    let shadowed = verdict(&second, increase(128, 256), 95);
    publish(&world, &shadowed, "v2").await;
    // The first incident's approval is still awaited (and announced again by the new leader).
    let mut outcome = next_outcome(&mut outcomes).await;
    while outcome.incident != shadowed.incident {
        outcome = next_outcome(&mut outcomes).await;
    }
    assert_eq!(outcome.result, OutcomeResult::Suggested, "{}", outcome.detail);
    assert!(
        outcome.detail.starts_with("shadow (namespace rule 1 of the policy (shop)): KubeSent would"),
        "{}",
        outcome.detail
    );
    assert!(pod_changes(&world).is_empty(), "{:?}", pod_changes(&world));
    remediator.stop().await;
}

/// The changes made to the cluster other than the test's own annotation of the namespace.
fn pod_changes(world: &World) -> Vec<String> {
    changes(world).into_iter().filter(|c| !c.starts_with("PATCH /api/v1/namespaces/shop ")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fix_a_model_proposed_waits_for_approval_where_the_rules_would_act() {
    let world = world(36).await;
    let failing = create(&world, &pod("web-1", "128Mi", "200Mi"), true).await;
    let mut outcomes = world.client.subscribe("kubesent.outcomes.>").await.expect("subscribed");
    let remediator = start_with(&world, config());
    let mut proposed = verdict(&failing, increase(128, 256), 95);
    proposed.source = kubesent_proto::VerdictSource::Model { model: "gemini-3.5-flash".into() };
    publish(&world, &proposed, "v1").await;
    let outcome = next_outcome(&mut outcomes).await;
    assert_eq!(outcome.result, OutcomeResult::AwaitingApproval, "{}", outcome.detail);
    assert!(changes(&world).is_empty(), "{:?}", changes(&world));
    let held = world.bucket.get(proposed.incident.as_str()).await.expect("read").expect("the intent");
    let intent: Intent = serde_json::from_slice(&held).expect("intent");
    assert!(
        intent.detail.as_deref().is_some_and(|d| d.contains("model gemini-3.5-flash, on probation")),
        "{intent:?}"
    );
    remediator.stop().await;
}
