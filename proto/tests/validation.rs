//! A consumer believes a message only when it is small, of a known schema, of the exact shape, within
//! every bound, self-consistent and on the subject its content belongs on.

use kubesent_proto::{
    self as proto, Action, Failure, FailureJob, FailureKind, IncidentKey, MemoryQuantity, PodRef, Verdict,
    VerdictSource, VerdictStatus, WorkloadRef,
    validate::{self, Invalid},
};
use serde_json::{Value, json};

fn key() -> IncidentKey {
    IncidentKey {
        namespace: "shop".into(),
        workload: WorkloadRef { kind: kubesent_proto::WorkloadKind::Deployment, name: "web".into() },
        container: "app".into(),
        kind: FailureKind::OomKilled,
        template_hash: "5d8f".into(),
    }
}

fn verdict() -> Verdict {
    let key = key();
    Verdict {
        schema: proto::SCHEMA_VERSION,
        incident: key.fingerprint(),
        key,
        pod: PodRef {
            namespace: "shop".into(),
            name: "web-5d8f-abcde".into(),
            uid: "0b6e3c1a-2f4d-4d55-9a3e-1f2c3d4e5f60".into(),
            resource_version: "4242".into(),
        },
        failure: Failure {
            kind: FailureKind::OomKilled,
            container: "app".into(),
            init_container: false,
            reason: "OOMKilled".into(),
            message: None,
            exit_code: Some(137),
            restart_count: 3,
            image: "registry.local/shop/web:1.4.2".into(),
            failed_at: None,
        },
        status: VerdictStatus::Diagnosed,
        root_cause: "container app was OOM-killed at its limit of 128Mi".into(),
        action: Action::IncreaseMemory {
            container: "app".into(),
            from: MemoryQuantity::from_mib(128),
            to: MemoryQuantity::from_mib(256),
        },
        confidence: 95,
        source: VerdictSource::Rules { rule: "oom-increase-memory".into() },
        diagnosed_at: "2026-11-30T10:00:00Z".parse().expect("time"),
        detected_at: None,
        evidence: None,
    }
}

fn job() -> FailureJob {
    let v = verdict();
    FailureJob {
        schema: proto::SCHEMA_VERSION,
        incident: v.incident,
        key: v.key,
        pod: v.pod,
        failure: v.failure,
        affected_pods: 2,
        detected_at: v.diagnosed_at,
    }
}

const VERDICT_SUBJECT: &str = "kubesent.verdicts.shop.increase-memory";

fn receive(mutate: impl FnOnce(&mut Value)) -> Result<Verdict, Invalid> {
    let mut value = serde_json::to_value(verdict()).expect("json");
    mutate(&mut value);
    validate::receive_verdict(VERDICT_SUBJECT, &serde_json::to_vec(&value).expect("bytes"))
}

#[test]
fn a_well_formed_verdict_and_job_on_their_own_subjects_are_believed() {
    let v = verdict();
    assert_eq!(validate::receive_verdict(VERDICT_SUBJECT, &proto::encode(&v)).expect("valid"), v);
    let j = job();
    let received = validate::receive_job("kubesent.jobs.shop.oom-killed", &proto::encode(&j)).expect("valid");
    assert_eq!(received, j);
}

#[test]
fn malformed_out_of_bounds_and_inconsistent_verdicts_are_refused_with_the_reason() {
    type Mutation = Box<dyn FnOnce(&mut Value)>;
    let cases: Vec<(&str, &str, Mutation)> = vec![
        ("a newer schema", "schema", Box::new(|v| v["schema"] = json!(2))),
        ("no schema", "malformed", Box::new(|v| drop(v.as_object_mut().map(|o| o.remove("schema"))))),
        ("an unknown field", "malformed", Box::new(|v| v["patch"] = json!({"spec": {"hostPID": true}}))),
        (
            "an unknown action field",
            "malformed",
            Box::new(|v| v["action"]["namespace"] = json!("kube-system")),
        ),
        ("an unknown action", "malformed", Box::new(|v| v["action"] = json!({"type": "delete_pod"}))),
        ("a missing field", "malformed", Box::new(|v| drop(v.as_object_mut().map(|o| o.remove("pod"))))),
        ("a confidence over 100", "invalid", Box::new(|v| v["confidence"] = json!(250))),
        ("a negative confidence", "malformed", Box::new(|v| v["confidence"] = json!(-1))),
        (
            "an incident that is not the key's",
            "invalid",
            Box::new(|v| v["incident"] = json!("inc-000000000000000000000000")),
        ),
        ("a key in another namespace", "invalid", Box::new(|v| v["key"]["namespace"] = json!("payments"))),
        ("a pod in another namespace", "invalid", Box::new(|v| v["pod"]["namespace"] = json!("kube-system"))),
        ("a namespace with subject tokens", "invalid", Box::new(|v| v["pod"]["namespace"] = json!("shop.>"))),
        ("a pod name with a slash", "invalid", Box::new(|v| v["pod"]["name"] = json!("../etc"))),
        ("an empty uid", "invalid", Box::new(|v| v["pod"]["uid"] = json!(""))),
        (
            "a container that is not failing",
            "invalid",
            Box::new(|v| v["key"]["container"] = json!("sidecar")),
        ),
        (
            // A typed kind on the wire: refused as it is decoded.
            "an unknown workload kind",
            "malformed",
            Box::new(|v| v["key"]["workload"]["kind"] = json!("ClusterRole")),
        ),
        ("a huge root cause", "invalid", Box::new(|v| v["root_cause"] = json!("x".repeat(9000)))),
        ("control characters", "invalid", Box::new(|v| v["root_cause"] = json!("ok\u{1b}[2Jcleared"))),
        (
            "an image with spaces",
            "invalid",
            Box::new(|v| v["failure"]["image"] = json!("web:1 --privileged")),
        ),
        ("a zero memory limit", "invalid", Box::new(|v| v["action"]["to"] = json!("0"))),
        ("an absurd memory limit", "malformed", Box::new(|v| v["action"]["to"] = json!("99999999Ei"))),
        ("a negative memory limit", "malformed", Box::new(|v| v["action"]["to"] = json!("-1Gi"))),
        (
            "a memory limit that is not a quantity",
            "malformed",
            Box::new(|v| v["action"]["to"] = json!("lots")),
        ),
        ("a negative restart count", "invalid", Box::new(|v| v["failure"]["restart_count"] = json!(-4))),
        ("not an object", "malformed", Box::new(|v| *v = json!([1, 2, 3]))),
    ];
    for (what, label, mutate) in cases {
        match receive(mutate) {
            Ok(_) => panic!("{what}: believed"),
            Err(error) => assert_eq!(error.label(), label, "{what}: {error}"),
        }
    }
}

#[test]
fn a_verdict_on_another_namespaces_or_actions_subject_is_refused() {
    let payload = proto::encode(&verdict());
    for subject in [
        "kubesent.verdicts.payments.increase-memory",
        "kubesent.verdicts.shop.rollback-image",
        "kubesent.verdicts.shop",
    ] {
        let error = validate::receive_verdict(subject, &payload).expect_err(subject);
        assert_eq!(error.label(), "wrong_subject", "{subject}: {error}");
    }
}

#[test]
fn a_job_with_no_affected_pods_or_on_another_subject_is_refused() {
    let mut j = job();
    j.affected_pods = 0;
    let error = validate::receive_job("kubesent.jobs.shop.oom-killed", &proto::encode(&j)).expect_err("zero");
    assert_eq!(error.label(), "invalid");
    let error =
        validate::receive_job("kubesent.jobs.shop.crash-loop", &proto::encode(&job())).expect_err("subject");
    assert_eq!(error.label(), "wrong_subject");
}

#[test]
fn arbitrary_bytes_never_panic_and_are_refused() {
    for payload in [&b""[..], b"\xff\xfe", b"{", b"null", b"{\"schema\":1}", &[b'{'; 70_000][..]] {
        assert!(validate::receive_verdict(VERDICT_SUBJECT, payload).is_err());
        assert!(validate::receive_job("kubesent.jobs.shop.oom-killed", payload).is_err());
    }
}
