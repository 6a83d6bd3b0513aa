//! The lean watch decode against the full `Pod` decode: on every fixture, every realistic pod and every
//! generated pod, the detector sees the same pod, classifies it the same, groups it under the same
//! incident and raises the same transitions.

use k8s_openapi::api::core::v1::Pod;
use kube::core::WatchEvent;
use kubesent_detector::{classify::classify, incident::incident_key, lean::LeanPod, tracker::PodTracker};
use kubesent_kube_sim::realistic::{AppState, RealisticPod};
use proptest::prelude::*;
use serde_json::{Value, json};

/// Asserts that decoding `text` lean and decoding it fully then reducing it agree on everything the
/// detector derives from a pod.
fn assert_same_view(text: &str, what: &str) {
    let full: Pod = serde_json::from_str(text).unwrap_or_else(|e| panic!("{what}: not a Pod: {e}"));
    let lean: LeanPod =
        serde_json::from_str(text).unwrap_or_else(|e| panic!("{what}: lean decode failed: {e}"));
    let reduced = LeanPod::from(&full);
    assert_eq!(lean, reduced, "{what}: the lean decode holds what the full decode holds");
    let observations = classify(&lean);
    assert_eq!(observations, classify(&reduced), "{what}: classification");
    for observation in &observations {
        if let Some(failure) = &observation.failure {
            assert_eq!(
                incident_key(&lean, &observation.name, failure.kind),
                incident_key(&reduced, &observation.name, failure.kind),
                "{what}: incident key"
            );
        }
    }
    let (mut lean_tracker, mut full_tracker) = (PodTracker::default(), PodTracker::default());
    assert_eq!(lean_tracker.observe(&lean), full_tracker.observe(&reduced), "{what}: transitions");
}

#[test]
fn every_fixture_is_seen_the_same_by_the_lean_and_the_full_decode() {
    let dir = format!("{}/tests/fixtures", env!("CARGO_MANIFEST_DIR"));
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).expect("fixtures") {
        let path = entry.expect("entry").path();
        let text = std::fs::read_to_string(&path).expect("fixture");
        assert_same_view(&text, &path.display().to_string());
        seen += 1;
    }
    assert!(seen >= 15, "only {seen} fixtures");
}

#[test]
fn realistic_pods_of_every_size_and_state_are_seen_the_same() {
    for size in [5, 10, 20] {
        for state in AppState::ALL {
            for deployment in [true, false] {
                let mut pod = RealisticPod::replica(7, state, size);
                if !deployment {
                    pod.deployment = None;
                    pod.name = "solo".into();
                }
                let text = serde_json::to_string(&pod.to_json()).expect("json");
                assert_same_view(&text, &format!("{size} KiB {} (deployment: {deployment})", state.as_str()));
            }
        }
    }
}

#[test]
fn a_realistic_failing_pod_is_classified_from_the_lean_decode() {
    let text =
        serde_json::to_string(&RealisticPod::replica(3, AppState::OomCrashLoop, 10).to_json()).expect("json");
    let lean: LeanPod = serde_json::from_str(&text).expect("lean");
    let failing: Vec<_> =
        classify(&lean).into_iter().filter_map(|o| o.failure.map(|f| (o.name, f.kind))).collect();
    assert_eq!(failing, [("app".to_owned(), kubesent_proto::FailureKind::OomKilled)]);
    let key = incident_key(&lean, "app", kubesent_proto::FailureKind::OomKilled);
    assert_eq!(
        (key.workload.kind.as_str(), key.workload.name.as_str(), key.template_hash.as_str()),
        ("Deployment", "web", "7d9c5b7f6")
    );
}

#[test]
fn a_watch_line_decodes_into_a_lean_pod_event() {
    let pod = RealisticPod::replica(4, AppState::ImagePullBackOff, 10).to_json();
    let line = serde_json::to_string(&json!({"type": "MODIFIED", "object": pod})).expect("line");
    let event: WatchEvent<LeanPod> = serde_json::from_str(&line).expect("event");
    let WatchEvent::Modified(lean) = event else { panic!("not MODIFIED") };
    assert_eq!(lean.metadata.resource_version.as_deref(), Some("1004"));
    assert_eq!(classify(&lean).iter().filter(|o| o.failure.is_some()).count(), 1);
    let bookmark = r#"{"type":"BOOKMARK","object":{"kind":"Pod","apiVersion":"v1","metadata":{"resourceVersion":"12345"}}}"#;
    assert!(matches!(
        serde_json::from_str::<WatchEvent<LeanPod>>(bookmark).expect("bookmark"),
        WatchEvent::Bookmark(_)
    ));
}

/// A container state as the kubelet writes it, including reasons the detector does not know.
fn state() -> impl Strategy<Value = Value> {
    let reason = prop_oneof![
        Just("CrashLoopBackOff"),
        Just("ImagePullBackOff"),
        Just("ErrImagePull"),
        Just("InvalidImageName"),
        Just("CreateContainerConfigError"),
        Just("ContainerCreating"),
        Just("OOMKilled"),
        Just("Error"),
        Just("Completed"),
        Just("Unknown-Reason"),
    ];
    prop_oneof![
        Just(json!({})),
        Just(json!({"running": {"startedAt": "2026-11-01T09:00:00Z"}})),
        (reason.clone(), proptest::option::of("[a-z ]{0,20}"))
            .prop_map(|(r, m)| json!({"waiting": {"reason": r, "message": m}})),
        (
            reason,
            prop_oneof![Just(0), Just(1), Just(2), Just(137), Just(143), any::<i32>()],
            proptest::option::of("[a-z ]{0,20}")
        )
            .prop_map(|(r, code, m)| json!({"terminated": {"exitCode": code, "reason": r, "message": m}})),
    ]
}

fn container_status(name: String) -> impl Strategy<Value = Value> {
    (state(), state(), 0..20i32).prop_map(move |(state, last, restarts)| {
        json!({"name": name, "image": "registry.local/app:1", "imageID": "sha256:1", "ready": false,
            "restartCount": restarts, "state": state, "lastState": last, "started": false})
    })
}

/// A pod of 1–3 containers and 0–2 init containers, owned by a ReplicaSet, a StatefulSet, a Job, a
/// CronJob's Job or nothing, with extra labels, annotations and managedFields.
fn generated_pod() -> impl Strategy<Value = Value> {
    let names = |prefix: &'static str, max: usize| {
        (0..=max).prop_map(move |n| (0..n).map(|i| format!("{prefix}{i}")).collect::<Vec<_>>())
    };
    (names("c", 3), names("init", 2), 0..5usize, proptest::option::of(prop_oneof![Just("Always"), Just("OnFailure"), Just("Never")]), "[a-z]{1,8}")
        .prop_flat_map(|(containers, inits, owner, restart_policy, extra)| {
            let statuses: Vec<_> = containers.iter().cloned().map(container_status).collect();
            let init_statuses: Vec<_> = inits.iter().cloned().map(container_status).collect();
            (Just((containers, inits, owner, restart_policy, extra)), statuses, init_statuses)
        })
        .prop_map(|((containers, inits, owner, restart_policy, extra), statuses, init_statuses)| {
            let (owner_ref, labels) = match owner {
                0 => (json!(null), json!({"app": extra})),
                1 => (json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-5d8f", "uid": "rs", "controller": true}]),
                    json!({"app": "web", "pod-template-hash": "5d8f", extra.clone(): "x"})),
                2 => (json!([{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "db", "uid": "ss", "controller": true}]),
                    json!({"controller-revision-hash": "db-6c7", "statefulset.kubernetes.io/pod-name": "db-0"})),
                3 => (json!([{"apiVersion": "batch/v1", "kind": "Job", "name": "backup-29400120", "uid": "j", "controller": true}]),
                    json!({"batch.kubernetes.io/controller-uid": "j", "job-name": "backup-29400120"})),
                _ => (json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-5d8f", "uid": "rs", "controller": false}]),
                    json!({"pod-template-hash": "5d8f"})),
            };
            let spec_container = |name: &String| json!({"name": name, "image": format!("registry.local/{name}:1"),
                "env": [{"name": "A", "value": extra}], "resources": {"limits": {"memory": "128Mi"}, "requests": {"cpu": "1"}}});
            json!({
                "metadata": {"name": "p-1", "namespace": "shop", "uid": "u-1", "resourceVersion": "9", "labels": labels,
                    "ownerReferences": owner_ref, "annotations": {"note": extra},
                    "managedFields": [{"manager": "kubelet", "operation": "Update", "fieldsType": "FieldsV1",
                        "fieldsV1": {"f:status": {"f:phase": {}}}}]},
                "spec": {"containers": containers.iter().map(spec_container).collect::<Vec<_>>(),
                    "initContainers": inits.iter().map(spec_container).collect::<Vec<_>>(),
                    "restartPolicy": restart_policy, "nodeName": "n1"},
                "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "False"}],
                    "containerStatuses": statuses, "initContainerStatuses": init_statuses}
            })
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn every_generated_pod_is_seen_the_same_by_the_lean_and_the_full_decode(pod in generated_pod()) {
        assert_same_view(&pod.to_string(), &pod.to_string());
    }
}
