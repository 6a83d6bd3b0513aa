//! Classification and grouping of realistic pods (fixtures under `tests/fixtures/`), and robustness
//! against arbitrary pod JSON.

use kubesent_detector::{classify::classify, incident::incident_key, lean::LeanPod, tracker::PodTracker};
use kubesent_proto::{FailureKind, WorkloadRef};
use proptest::prelude::*;

/// A fixture decoded as the detector's watch decodes it.
fn fixture(name: &str) -> LeanPod {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// (container, init container?, kind, exit code) of one failing container.
type Expected = (&'static str, bool, FailureKind, Option<i32>);

/// (container, init, kind, exit code) of every failing container.
fn failures(pod: &LeanPod) -> Vec<(String, bool, FailureKind, Option<i32>)> {
    classify(pod)
        .into_iter()
        .filter_map(|o| o.failure.map(|f| (o.name, o.init, f.kind, f.exit_code)))
        .collect()
}

#[test]
fn every_failure_kind_is_classified_from_realistic_pods() {
    use FailureKind::*;
    let cases: &[(&str, &[Expected])] = &[
        ("oom-crashloop.json", &[("app", false, OomKilled, Some(137))]),
        ("oom-terminated.json", &[("app", false, OomKilled, Some(137))]),
        ("killed-137.json", &[("app", false, Killed, Some(137))]),
        ("crashloop-exit-1.json", &[("app", false, CrashLoop, Some(1))]),
        ("image-pull-back-off.json", &[("app", false, ImagePullBackOff, None)]),
        ("err-image-pull.json", &[("app", false, ErrImagePull, None)]),
        ("invalid-image-name.json", &[("app", false, InvalidImageName, None)]),
        ("create-container-config-error.json", &[("app", false, CreateContainerConfigError, None)]),
        ("init-crashloop.json", &[("migrate", true, CrashLoop, Some(2))]),
        ("init-oom.json", &[("migrate", true, OomKilled, Some(137))]),
        ("sidecar-oom.json", &[("proxy", false, OomKilled, Some(137))]),
        ("bare-oom.json", &[("app", false, OomKilled, Some(137))]),
        ("job-exit-1.json", &[("report", false, CrashLoop, Some(1))]),
        ("healthy-stale-oom.json", &[]),
        ("healthy.json", &[]),
    ];
    for (file, expected) in cases {
        let found = failures(&fixture(file));
        let expected: Vec<_> = expected.iter().map(|(c, i, k, e)| ((*c).to_owned(), *i, *k, *e)).collect();
        assert_eq!(found, expected, "{file}");
    }
}

#[test]
fn exit_137_without_oom_killed_is_its_own_kind() {
    let pod = fixture("killed-137.json");
    assert_eq!(failures(&pod)[0].2, FailureKind::Killed);
    assert_ne!(FailureKind::Killed, FailureKind::OomKilled);
}

#[test]
fn replica_set_pods_group_under_their_deployment_and_bare_pods_under_themselves() {
    let owned = incident_key(&fixture("oom-crashloop.json"), "app", FailureKind::OomKilled);
    assert_eq!(
        owned.workload,
        WorkloadRef { kind: kubesent_proto::WorkloadKind::Deployment, name: "web".into() }
    );
    assert_eq!(owned.template_hash, "7d9c5b7f6");
    let other_replica = incident_key(&fixture("oom-terminated.json"), "app", FailureKind::OomKilled);
    assert_eq!(owned.fingerprint(), other_replica.fingerprint());
    let bare = incident_key(&fixture("bare-oom.json"), "app", FailureKind::OomKilled);
    assert_eq!(bare.workload, WorkloadRef { kind: kubesent_proto::WorkloadKind::Pod, name: "solo".into() });
}

#[test]
fn the_reference_pod_seen_for_the_first_time_is_reported_once() {
    let pod = fixture("oom-crashloop.json");
    let mut tracker = PodTracker::default();
    assert_eq!(tracker.observe(&pod).len(), 1);
    for _ in 0..10 {
        assert!(tracker.observe(&pod).is_empty(), "no job for a repeated MODIFIED event");
    }
    let healthy = fixture("healthy-stale-oom.json");
    assert!(tracker.observe(&healthy).is_empty(), "a stale lastState is not a failure");
}

/// Arbitrary JSON, biased towards pod-shaped objects with odd fields and types.
fn arbitrary_json() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        "[A-Za-z0-9 :/._-]{0,12}".prop_map(serde_json::Value::from),
        prop_oneof![
            Just("CrashLoopBackOff"),
            Just("OOMKilled"),
            Just("ErrImagePull"),
            Just("Error"),
            Just("Never")
        ]
        .prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        let keys = prop_oneof![
            Just("metadata".to_owned()),
            Just("status".to_owned()),
            Just("spec".to_owned()),
            Just("containerStatuses".to_owned()),
            Just("initContainerStatuses".to_owned()),
            Just("state".to_owned()),
            Just("lastState".to_owned()),
            Just("waiting".to_owned()),
            Just("terminated".to_owned()),
            Just("running".to_owned()),
            Just("reason".to_owned()),
            Just("exitCode".to_owned()),
            Just("restartCount".to_owned()),
            Just("name".to_owned()),
            Just("uid".to_owned()),
            Just("ownerReferences".to_owned()),
            Just("labels".to_owned()),
            "[a-z]{1,6}",
        ];
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
            prop::collection::btree_map(keys, inner, 0..6)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_pod_json_never_panics_the_detector(value in arbitrary_json()) {
        // Whatever the watch decodes must classify, group and track without panicking.
        if let Ok(pod) = serde_json::from_value::<LeanPod>(value) {
            let mut tracker = PodTracker::default();
            for observation in classify(&pod) {
                if let Some(failure) = observation.failure {
                    let _ = incident_key(&pod, &observation.name, failure.kind).fingerprint();
                }
            }
            let _ = tracker.observe(&pod);
            let _ = tracker.observe(&pod);
        }
    }
}
