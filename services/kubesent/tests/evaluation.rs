//! The evaluation set (`services/kubesent/eval/`): the rules against labelled failures from real
//! clusters, and `kubesent eval` as a team runs it, rules only and against a model (gemini-sim).

use std::{path::Path, process::Command};

use kubesent::eval;
use kubesent_gemini_sim::{GeminiSim, GeminiSimConfig, Reply};
use serde_json::Value;

/// Fraction of cases the rules must get right (action, its target, and the root cause's key phrases).
const ACCURACY_BAR: f64 = 0.95;

fn rules_on(cases: Vec<eval::Case>) -> eval::Evaluated {
    let prepared: Vec<(eval::Case, eval::Prepared)> = cases
        .into_iter()
        .map(|case| {
            let ready = eval::prepare(&case).unwrap_or_else(|e| panic!("case {}: {e:#}", case.name));
            (case, ready)
        })
        .collect();
    eval::evaluate_rules(&prepared)
}

#[test]
fn the_rule_engine_is_right_on_the_evaluation_set_and_never_unsafe() {
    let cases = eval::load(None).expect("the built-in set loads");
    assert!(cases.len() >= 120, "the evaluation set has at least 120 cases, not {}", cases.len());
    let evaluated = rules_on(cases);
    let mut wrong = Vec::new();
    for s in &evaluated.cases {
        println!(
            "{} {:<60} {:<17} {:>3}  {}",
            if s.right { "ok  " } else { "MISS" },
            s.case,
            s.action,
            s.confidence,
            s.root_cause
        );
        if !s.right {
            wrong.push(s.case.clone());
        }
        if let Some(kind_right) = s.kind_right {
            assert!(kind_right, "{}: the detector classified it {}", s.case, s.kind);
        }
    }
    let t = &evaluated.totals;
    let accuracy = t.right as f64 / t.cases as f64;
    println!(
        "rule engine accuracy: {:.1}% ({} of {} cases), {} unsafe",
        accuracy * 100.0,
        t.right,
        t.cases,
        t.unsafe_actions
    );
    assert_eq!(t.unsafe_actions, 0, "no case gets an action it must not: {wrong:?}");
    assert!(accuracy >= ACCURACY_BAR, "accuracy {accuracy:.3} below {ACCURACY_BAR}; wrong: {wrong:?}");
}

#[test]
fn every_case_added_for_reading_failures_cites_a_real_source() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("eval");
    for file in ["logs.yaml", "pulls.yaml", "starts.yaml", "mixed.yaml", "never.yaml"] {
        let cases = eval::load(Some(&dir.join(file))).expect("loads");
        assert!(!cases.is_empty(), "{file} holds cases");
        for case in cases {
            let source = case.source.unwrap_or_default();
            assert!(
                source.starts_with("https://"),
                "{file}: case {} cites where it comes from: {source:?}",
                case.name
            );
        }
    }
}

#[test]
fn a_status_code_in_a_pod_name_is_not_read_as_the_registry_refusing_credentials() {
    // Found by the chaos campaign: a missing image in a rollout of Deployment "r401" was called an
    // authorization failure because "401" appeared in the pod's name.
    let text = include_str!("../eval/cases.json").replace("web-6d8f9c7b5-s1", "r401-6d8f9c7b5-s1");
    let mut cases: Vec<Value> = serde_json::from_str(&text).expect("cases parse");
    cases.retain(|c| c["name"] == "errimagepull-not-found-rollback");
    // The scheduler's event names the pod.
    let scheduled = serde_json::json!({
        "metadata": {"name": "r401-6d8f9c7b5-s1.scheduled", "namespace": "shop"},
        "involvedObject": {"kind": "Pod", "name": "r401-6d8f9c7b5-s1", "namespace": "shop"},
        "reason": "Scheduled", "type": "Normal",
        "message": "Successfully assigned shop/r401-6d8f9c7b5-s1 to node-1"
    });
    cases[0]["events"].as_array_mut().expect("events").insert(0, scheduled);
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("case.json"), serde_json::to_string(&cases).expect("json"))
        .expect("write");
    let evaluated = rules_on(eval::load(Some(dir.path())).expect("loads"));
    assert_eq!(evaluated.cases[0].action, "rollback_image", "{}", evaluated.cases[0].root_cause);
}

fn kubesent_command(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_kubesent"));
    command.args(args).env_remove("GEMINI_API_KEY").env_remove("KUBESENT_MODELS").envs(env.iter().copied());
    command
}

fn outcome(output: std::process::Output) -> (i32, String, String) {
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn kubesent(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    outcome(kubesent_command(args, env).output().expect("kubesent runs"))
}

/// `kubesent` run without blocking the runtime that serves gemini-sim.
async fn kubesent_async(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut command = tokio::process::Command::from(kubesent_command(args, env));
    outcome(command.output().await.expect("kubesent runs"))
}

#[test]
fn kubesent_eval_prints_the_rules_table_and_holds_the_bar() {
    let (code, out, err) = kubesent(&["eval", "--min-accuracy", "95"], &[]);
    assert_eq!(code, 0, "{err}");
    let total = out.lines().find(|l| l.starts_with("rules: ")).expect("a total line");
    assert!(total.contains("unsafe 0"), "{total}");
    assert!(out.lines().filter(|l| l.starts_with("ok ")).count() >= 114, "{out}");
}

/// `kubesent eval` of the cases in `dir` through `model` at gemini-sim's `url`.
fn eval_of<'a>(dir: &'a Path, model: &'a str, url: &'a str) -> Vec<&'a str> {
    vec!["eval", "--cases", dir.to_str().expect("utf-8"), "--models", model, "--llm-url", url]
}

/// Two cases of the built-in set in a directory of their own: an OOM kill and a crash with a Python
/// traceback.
fn two_cases() -> tempfile::TempDir {
    let cases: Vec<Value> = serde_json::from_str(include_str!("../eval/cases.json")).expect("cases");
    let picked: Vec<&Value> =
        cases.iter().filter(|c| c["name"] == "java-oom-512Mi" || c["name"] == "postgres-refused").collect();
    assert_eq!(picked.len(), 2);
    let dir = tempfile::tempdir().expect("temp dir");
    for case in picked {
        let name = case["name"].as_str().expect("name");
        std::fs::write(dir.path().join(format!("{name}.json")), case.to_string()).expect("write");
    }
    dir
}

#[tokio::test]
async fn kubesent_eval_scores_a_model_with_the_diagnosers_prompt_and_counts_its_tokens_and_cost() {
    let sim = GeminiSim::start(GeminiSimConfig::default()).await.expect("gemini-sim");
    let model = "gemini-3.5-flash";
    // Files are read in name order: java-oom-512Mi, then postgres-refused.
    sim.script(
        Some(model),
        Reply::Answer {
            text: r#"{"root_cause":"container app was OOM-killed at its 512Mi limit","action":"increase_memory","memory_limit":"1Gi","confidence":0.9}"#.into(),
        },
    );
    sim.script(Some(model), Reply::Answer { text: "not json".into() });
    let dir = two_cases();
    let prices = dir.path().join("prices.txt");
    std::fs::write(&prices, format!("{model}: {{input: 0.30, output: 2.50}}\n")).expect("write");
    let url = sim.url();
    let mut args = eval_of(dir.path(), model, &url);
    args.extend(["--prices", prices.to_str().expect("utf-8"), "-o", "json"]);
    let (code, out, err) = kubesent_async(&args, &[("GEMINI_API_KEY", "test-key")]).await;
    assert_eq!(code, 0, "{err}");
    let results: Value = serde_json::from_str(&out).expect("JSON");
    let [rules, asked] = results.as_array().expect("evaluators").as_slice() else { panic!("{out}") };
    assert_eq!(rules["evaluator"], "rules");
    assert_eq!(rules["totals"]["right"], 2);
    assert_eq!(asked["evaluator"], model);
    let oom = &asked["cases"][0];
    assert_eq!(
        (oom["case"].as_str(), oom["action"].as_str(), oom["to"].as_str()),
        (Some("java-oom-512Mi"), Some("increase_memory"), Some("1Gi"))
    );
    assert_eq!(oom["action_right"], true);
    // gemini-sim counts 412 prompt and 38 candidate tokens per answer.
    assert_eq!((oom["input_tokens"].as_u64(), oom["output_tokens"].as_u64()), (Some(412), Some(38)));
    assert!(asked["cases"][1]["by"].as_str().is_some_and(|b| b.starts_with("no answer: unusable")), "{out}");
    assert_eq!(asked["totals"]["unanswered"], 1);
    assert_eq!(asked["totals"]["unsafe_actions"], 0);
    let cost = asked["totals"]["cost_usd"].as_f64().expect("a cost");
    let expected = (2.0 * 412.0 * 0.30 + 2.0 * 38.0 * 2.50) / 1_000_000.0;
    assert!((cost - expected).abs() < 1e-9, "{cost} vs {expected}");
    // The model saw what the diagnoser sends: the schema, and the evidence with the pod in it.
    let requests = sim.requests();
    assert_eq!(requests.len(), 2);
    let body = requests[0].body.to_string();
    assert!(body.contains("responseJsonSchema") && body.contains("orders-5f7c9d8b6-a1"), "{body}");
    sim.shutdown().await;
}

#[tokio::test]
async fn kubesent_eval_sends_nothing_without_an_api_key_and_says_which_cases_would_go_where() {
    let sim = GeminiSim::start(GeminiSimConfig::default()).await.expect("gemini-sim");
    let dir = two_cases();
    let url = sim.url();
    let (code, out, err) = kubesent_async(&eval_of(dir.path(), "gemini-3.5-flash", &url), &[]).await;
    assert_ne!(code, 0);
    assert!(out.contains("rules: 2 of 2 right"), "the rules still ran: {out}");
    assert!(
        err.contains("no API key")
            && err
                .contains("2 case(s) would go to each of gemini-3.5-flash: java-oom-512Mi, postgres-refused"),
        "{err}"
    );
    assert!(sim.requests().is_empty(), "nothing was sent");
    sim.shutdown().await;
}

#[test]
fn a_process_oom_killed_inside_a_running_container_is_diagnosed_with_its_limit_and_never_changed() {
    use kubesent_detector::{lean::LeanPod, oom};
    let uid = "8b2c1d3e-4f5a-4b6c-9d7e-0f1a2b3c4d5e";
    let id = "4f1c2a7d9b3e5f60718293a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4";
    let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "worker-6b7c8d9f5-x1", "namespace": "shop", "uid": uid,
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "worker-6b7c8d9f5", "uid": "rs", "controller": true}]},
        "spec": {"nodeName": "node-a", "containers": [{"name": "app", "image": "worker:3",
            "resources": {"limits": {"memory": "512Mi"}}}]},
        "status": {"phase": "Running", "containerStatuses": [{"name": "app", "image": "worker:3", "imageID": "",
            "ready": true, "restartCount": 0, "containerID": format!("containerd://{id}"), "state": {"running": {}}}]}
    }))
    .expect("pod");
    // node-problem-detector's OOMKilling event for the kernel's oom-kill line (cgroup v1, cgroupfs driver).
    let message = format!(
        "oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset={id},mems_allowed=0,oom_memcg=/kubepods/burstable/pod{uid}/{id},task_memcg=/kubepods/burstable/pod{uid}/{id},task=celery,pid=3117,uid=1000"
    );
    let found = oom::process_oom(&message).expect("attributed");
    let lean = LeanPod::from(&pod);
    let transition = oom::transition(&lean, &found, None).expect("the container");
    let job = kubesent_detector::build_job(&lean, &transition);
    let evidence = kubesent_diagnoser::evidence::build(
        &pod,
        None,
        &[],
        vec!["Deployment/worker".into()],
        None,
        None,
        &kubesent_diagnoser::redact::Redactor,
    );
    let verdict =
        kubesent_diagnoser::rules::diagnose(&job, &evidence, &kubesent_diagnoser::MemoryPolicy::default());
    assert_eq!((verdict.rule, &verdict.action), ("oom-process-in-container", &kubesent_proto::Action::None));
    for phrase in ["process celery (pid 3117) was oom-killed", "inside container app", "512mi", "1gi"] {
        assert!(verdict.root_cause.to_lowercase().contains(phrase), "{phrase}: {}", verdict.root_cause);
    }
}
