//! A consumer believes a message only when it is small, of a known schema, of the exact shape, within
//! every bound, self-consistent and on the subject its content belongs on.

use kubesent_proto::{
    self as proto, FailureJob, Strategy, Verdict, WorkloadKind, WorkloadRef,
    approval::{self, Choice, Decision},
    intent::{self, Intent, Phase},
    validate::{self, Invalid},
};
use kubesent_testkit::fixtures;
use serde_json::{Value, json};

/// A verdict raising the memory of Deployment `web`'s container `app` from 128Mi to 256Mi.
fn verdict() -> Verdict {
    let pod =
        fixtures::owned_by(fixtures::oom_killed_pod("web-5d8f-abcde", "128Mi"), "ReplicaSet", "web-5d8f");
    fixtures::verdict(&pod, fixtures::increase(128, 256))
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

/// The intent of an owner patch carrying out [`verdict`], as the remediator writes it.
fn intent() -> Intent {
    let verdict = verdict();
    Intent {
        schema: proto::SCHEMA_VERSION,
        incident: verdict.incident.clone(),
        phase: Phase::Applied,
        strategy: Strategy::OwnerPatch,
        target: verdict.pod.clone(),
        workload: Some(WorkloadRef { kind: WorkloadKind::Deployment, name: "web".into() }),
        lock: "lock-0123456789abcdef".into(),
        action: verdict.action.clone(),
        original: None,
        replacement: None,
        old_revision: Some("5d8f".into()),
        approved_by: None,
        baseline_restarts: None,
        actor: "kubesent-remediator-0".into(),
        replacement_uid: None,
        result: None,
        detail: None,
        verdict: Some(Box::new(verdict)),
        updated_at: "2026-11-30T10:00:00Z".parse().expect("time"),
        applied_at: None,
    }
}

fn read_intent(mutate: impl FnOnce(&mut Value)) -> Result<Intent, Invalid> {
    let mut value = serde_json::to_value(intent()).expect("json");
    mutate(&mut value);
    intent::decode(&serde_json::to_vec(&value).expect("bytes"))
}

#[test]
fn an_intent_is_read_back_as_written_and_a_newer_writers_extra_fields_do_not_stop_a_reader() {
    let written = intent();
    assert_eq!(intent::decode(&proto::encode(&written)).expect("valid"), written);
    assert!(read_intent(|v| v["written_by_a_newer_remediator"] = json!({"x": 1})).is_ok());
}

#[test]
fn an_intent_out_of_bounds_is_refused() {
    type Mutation = Box<dyn FnOnce(&mut Value)>;
    let cases: Vec<(&str, Mutation)> = vec![
        ("a newer schema", Box::new(|v| v["schema"] = json!(2))),
        ("an incident that is no incident id", Box::new(|v| v["incident"] = json!("inc-../../x"))),
        ("a workload kind there is none of", Box::new(|v| v["workload"]["kind"] = json!("ClusterRole"))),
        ("a workload name with a slash", Box::new(|v| v["workload"]["name"] = json!("../web"))),
        ("an action out of bounds", Box::new(|v| v["action"]["to"] = json!("0"))),
        ("a verdict out of bounds", Box::new(|v| v["verdict"]["confidence"] = json!(250))),
        ("a target in no namespace", Box::new(|v| v["target"]["namespace"] = json!("Shop!"))),
        ("control characters in the detail", Box::new(|v| v["detail"] = json!("ok\u{1b}[2J"))),
    ];
    for (case, mutate) in cases {
        assert!(read_intent(mutate).is_err(), "{case}");
    }
    assert!(matches!(intent::decode(&vec![b' '; intent::MAX_INTENT_BYTES + 1]), Err(Invalid::Oversized(_))));
}

#[test]
fn a_decision_is_read_only_for_the_incident_and_user_its_key_names() {
    let incident = verdict().incident;
    let decision = Decision {
        schema: proto::SCHEMA_VERSION,
        incident: incident.clone(),
        decision: Choice::Approve,
        by: "alice".into(),
        reason: None,
        at: "2026-11-30T10:00:00Z".parse().expect("time"),
    };
    let key = approval::key("kubesent-operator", &incident).expect("key");
    let taken = approval::read(&key, &proto::encode(&decision)).expect("read");
    assert_eq!(taken.user, "kubesent-operator");
    assert_eq!(taken.decision, decision);
    let other = approval::key("kubesent-operator", &verdict_of_another_incident()).expect("key");
    assert!(approval::read(&other, &proto::encode(&decision)).is_err(), "under another incident's key");
}

fn verdict_of_another_incident() -> proto::IncidentId {
    fixtures::naming(verdict(), WorkloadKind::Deployment, "api").incident
}
