//! `kubesent diagnose` on kubectl output, as a user runs it.

use std::{path::PathBuf, process::Command};

use serde_json::{Value, json};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../detector/tests/fixtures").join(name)
}

fn diagnose(args: &[&str]) -> (i32, Value, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_kubesent"))
        .arg("diagnose")
        .args(args)
        .output()
        .expect("kubesent runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (output.status.code().unwrap_or(-1), serde_json::from_str(&stdout).unwrap_or(Value::Null), stderr)
}

fn temp_file(name: &str, content: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join(name);
    std::fs::write(&path, content).expect("written");
    (dir, path)
}

#[test]
fn an_oom_killed_pod_gets_a_memory_increase_offline() {
    let pod = fixture("oom-crashloop.json");
    let (code, verdict, stderr) = diagnose(&["--pod", pod.to_str().expect("path"), "--offline"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        verdict["action"],
        json!({"type": "increase_memory", "container": "app", "from": "256Mi", "to": "512Mi"})
    );
    assert_eq!(verdict["failure"]["kind"], "oom-killed");
    assert_eq!(verdict["confidence"], 95);
    assert_eq!(verdict["source"], "rules");
    assert!(verdict["root_cause"].as_str().is_some_and(|c| c.contains("OOM-killed")));
}

#[test]
fn logs_and_events_from_kubectl_inform_the_verdict() {
    let (_d1, logs) = temp_file("prev.txt", "booting\nError: connect ECONNREFUSED 10.96.0.12:5432\n");
    let events = json!({"apiVersion": "v1", "kind": "List", "items": [
        {"metadata": {"name": "e1"}, "involvedObject": {"kind": "Pod", "name": "web-7d9c5b7f6-ccccc"}, "reason": "BackOff", "message": "Back-off restarting failed container", "type": "Warning", "count": 4},
        {"metadata": {"name": "e2"}, "involvedObject": {"kind": "Pod", "name": "someone-else"}, "reason": "Pulled", "message": "irrelevant", "type": "Normal"}]});
    let (_d2, events_path) = temp_file("events.json", &events.to_string());
    let (code, verdict, stderr) = diagnose(&[
        "--pod",
        fixture("crashloop-exit-1.json").to_str().expect("path"),
        "--previous-logs",
        logs.to_str().expect("path"),
        "--events",
        events_path.to_str().expect("path"),
        "--offline",
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(verdict["action"], json!({"type": "none"}));
    assert!(
        verdict["root_cause"]
            .as_str()
            .is_some_and(|c| c.contains("unreachable") && c.contains("ECONNREFUSED")),
        "{verdict}"
    );
}

#[test]
fn a_healthy_pod_gets_a_verdict_that_says_so() {
    let (code, verdict, stderr) =
        diagnose(&["--pod", fixture("healthy-stale-oom.json").to_str().expect("path"), "--offline"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(verdict["action"], json!({"type": "none"}));
    assert_eq!(verdict["failure"], Value::Null);
    assert!(verdict["root_cause"].as_str().is_some_and(|c| c.contains("no container")));
}

#[test]
fn unreadable_or_wrong_kind_input_is_a_clear_error() {
    let (code, _, stderr) = diagnose(&["--pod", "/no/such/file.json", "--offline"]);
    assert_ne!(code, 0);
    assert!(stderr.contains("cannot read /no/such/file.json"), "{stderr}");
    let (_d, deployment) =
        temp_file("d.json", r#"{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"web"}}"#);
    let (code, _, stderr) = diagnose(&["--pod", deployment.to_str().expect("path"), "--offline"]);
    assert_ne!(code, 0);
    assert!(stderr.contains("is a Deployment, not a Pod"), "{stderr}");
    let (_d, garbage) = temp_file("g.json", "\u{0}\u{1}not json");
    let (code, _, stderr) = diagnose(&["--pod", garbage.to_str().expect("path"), "--offline"]);
    assert_ne!(code, 0);
    assert!(stderr.contains("is neither"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    // A file cut short while it was saved: one line saying where, not a YAML parser's drawing.
    let (_d, truncated) = temp_file("t.json", r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"x""#);
    let (code, _, stderr) = diagnose(&["--pod", truncated.to_str().expect("path"), "--offline"]);
    assert_ne!(code, 0);
    assert!(stderr.contains("is not valid JSON") && stderr.contains("ends too early"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    let (_d, two) = temp_file(
        "l.json",
        r#"{"kind":"List","items":[{"kind":"Pod","metadata":{"name":"a"}},{"kind":"Pod","metadata":{"name":"b"}}]}"#,
    );
    let (code, _, stderr) = diagnose(&["--pod", two.to_str().expect("path"), "--offline"]);
    assert_ne!(code, 0);
    assert!(stderr.contains("holds 2 objects"), "{stderr}");
}

#[test]
fn a_reader_that_closes_the_pipe_ends_the_command_quietly_with_success() {
    // As `kubesent diagnose … | head -0` would: the reader is gone before anything is written.
    let pod = fixture("oom-crashloop.json");
    let mut child = Command::new(env!("CARGO_BIN_EXE_kubesent"))
        .args(["diagnose", "--offline", "--pod", pod.to_str().expect("path")])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("kubesent runs");
    drop(child.stdout.take());
    let output = child.wait_with_output().expect("kubesent ends");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("panicked") && !stderr.contains("Broken pipe"), "{stderr}");
}

/// Runs `kubesent diagnose` with `stdin` on its standard input.
fn diagnose_stdin(args: &[&str], stdin: &str) -> (i32, Value, String) {
    use std::io::Write as _;
    let mut child = Command::new(env!("CARGO_BIN_EXE_kubesent"))
        .arg("diagnose")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("kubesent runs");
    child.stdin.take().expect("stdin").write_all(stdin.as_bytes()).expect("written");
    let output = child.wait_with_output().expect("kubesent ends");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    (
        output.status.code().unwrap_or(-1),
        serde_json::from_str(&stdout).unwrap_or(Value::Null),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// An evicted pod as `kubectl get pod -o yaml` prints it.
const EVICTED_POD_YAML: &str = r#"apiVersion: v1
kind: Pod
metadata:
  name: grow-test-7484cd87cb-wvpgt
  namespace: ephemeral-metrics
  uid: 3d1f0a52-8d4e-4b1c-9a57-1f2e3d4c5b6a
  ownerReferences:
  - apiVersion: apps/v1
    kind: ReplicaSet
    name: grow-test-7484cd87cb
    uid: 9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d
    controller: true
spec:
  containers:
  - name: grow-test
    image: local.io/local/grow-test:latest
    resources:
      limits:
        ephemeral-storage: 5Ki
        memory: 128Mi
status:
  phase: Failed
  reason: Evicted
  message: 'Pod ephemeral local storage usage exceeds the total limit of containers 5Ki. '
  containerStatuses:
  - name: grow-test
    image: local.io/local/grow-test:latest
    imageID: ""
    ready: false
    restartCount: 1
    state:
      terminated:
        exitCode: 137
        reason: ContainerStatusUnknown
        message: The container could not be located when the pod was terminated
"#;

#[test]
fn kubectl_yaml_on_standard_input_is_diagnosed_and_an_eviction_is_not_read_as_a_sigkill() {
    let (code, verdict, stderr) = diagnose_stdin(&["--pod", "-", "--offline"], EVICTED_POD_YAML);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(verdict["failure"]["kind"], "evicted", "{verdict}");
    assert_eq!(verdict["action"], json!({"type": "none"}), "an eviction never raises a memory limit");
    assert!(
        verdict["root_cause"].as_str().is_some_and(|c| c.contains("ephemeral storage over 5Ki")),
        "{verdict}"
    );
}

#[test]
fn events_from_kubectl_events_in_events_k8s_io_shape_inform_the_verdict() {
    let (_d1, pod) =
        temp_file("pod.json", &std::fs::read_to_string(fixture("oom-crashloop.json")).expect("fixture"));
    let name = serde_json::from_str::<Value>(&std::fs::read_to_string(&pod).expect("pod"))
        .expect("json")["metadata"]["name"]
        .as_str()
        .expect("name")
        .to_owned();
    let events = json!({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "e1"},
         "regarding": {"kind": "Pod", "name": name}, "reason": "BackOff", "note": "Back-off restarting failed container",
         "type": "Warning", "deprecatedCount": 4, "reportingController": "kubelet"}]});
    let (_d2, events_path) = temp_file("events.yaml", &events.to_string());
    let (code, verdict, stderr) = diagnose(&[
        "--pod",
        pod.to_str().expect("path"),
        "--events",
        events_path.to_str().expect("path"),
        "--offline",
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(verdict["failure"]["kind"], "oom-killed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_pod_is_read_through_the_current_kubeconfig() {
    use k8s_openapi::api::core::v1::Pod;
    use kube::{Api, api::PostParams};
    // At 0.05 the kubelet's back-off after the third OOM kill (40 s simulated) lasts 2 s: the pod shows
    // its failure for as long as the diagnosis takes (between kills it runs with a stale lastState).
    let sim = kubesent_kube_sim::KubeSim::start(kubesent_kube_sim::SimConfig {
        time_scale: 0.05,
        ..Default::default()
    })
    .await
    .expect("kube-sim");
    let kube = kubesent_common::kube_client(Some(&sim.url())).await.expect("client");
    let pods: Api<Pod> = Api::namespaced(kube, "shop");
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "web-1", "annotations": {"sim.kubesent.io/memory-need": "200Mi"}},
        "spec": {"containers": [{"name": "app", "image": "registry.local/shop/web:1.4.2",
            "resources": {"limits": {"memory": "128Mi"}}}]}
    }))
    .expect("pod");
    pods.create(&PostParams::default(), &pod).await.expect("created");
    let oom = |p: Option<&Pod>| {
        p.and_then(|p| p.status.as_ref()?.container_statuses.as_ref()?.first().cloned()).is_some_and(|c| {
            let backing_off =
                c.state.and_then(|s| s.waiting).and_then(|w| w.reason).as_deref() == Some("CrashLoopBackOff");
            let oom_killed = c.last_state.and_then(|s| s.terminated).and_then(|t| t.reason).as_deref()
                == Some("OOMKilled");
            backing_off && oom_killed && c.restart_count >= 3
        })
    };
    tokio::time::timeout(
        std::time::Duration::from_secs(30),
        kube_runtime::wait::await_condition(pods, "web-1", oom),
    )
    .await
    .expect("OOM-killed in time")
    .expect("watch");
    let verdict = diagnose_live(&sim.url(), "shop/web-1").await;
    assert_eq!(verdict["failure"]["kind"], "oom-killed", "{verdict}");
    assert_eq!(
        verdict["action"],
        json!({"type": "increase_memory", "container": "app", "from": "128Mi", "to": "256Mi"})
    );
    // A bare name is looked up in the kubeconfig context's namespace, as kubectl does.
    let (code, stdout, stderr) = run_live(&sim.url(), Some("shop"), "web-1").await;
    assert_eq!(code, 0, "{stderr}");
    let verdict: Value = serde_json::from_str(&stdout).expect("json verdict");
    assert_eq!(verdict["failure"]["kind"], "oom-killed", "{verdict}");
    // A pod that is not there: one line saying so.
    let (code, stdout, stderr) = run_live(&sim.url(), None, "shop/nosuchpod").await;
    assert_ne!(code, 0);
    assert!(stdout.is_empty(), "nothing on stdout but the answer: {stdout}");
    assert_eq!(stderr.trim(), "kubesent: no pod nosuchpod in namespace shop (kubectl get pods -n shop)");
}

/// `kubesent diagnose <target> --offline` against the cluster at `url`, through a kubeconfig naming it.
async fn diagnose_live(url: &str, target: &str) -> Value {
    let (code, stdout, stderr) = run_live(url, None, target).await;
    assert_eq!(code, 0, "{stderr}");
    serde_json::from_str(&stdout).expect("json verdict")
}

/// Runs `kubesent diagnose <target> --offline` through a kubeconfig whose context names the cluster at
/// `url` (and `namespace`); (exit code, stdout, stderr).
async fn run_live(url: &str, namespace: Option<&str>, target: &str) -> (i32, String, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let kubeconfig = dir.path().join("config");
    let namespace = namespace.map(|n| format!("    namespace: {n}\n")).unwrap_or_default();
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: sim\n  cluster:\n    server: {url}\ncontexts:\n- name: sim\n  context:\n    cluster: sim\n    user: me\n{namespace}current-context: sim\nusers:\n- name: me\n  user: {{}}\n"
        ),
    )
    .expect("kubeconfig");
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_kubesent"))
        .args(["diagnose", target, "--offline"])
        .env("KUBECONFIG", &kubeconfig)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .output()
        .await
        .expect("kubesent runs");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_pod_of_a_bad_new_revision_is_diagnosed_with_its_owner_s_history() {
    use k8s_openapi::api::{apps::v1::Deployment, core::v1::Pod};
    use kube::{
        Api,
        api::{ListParams, Patch, PatchParams, PostParams},
    };
    let sim = kubesent_kube_sim::KubeSim::start(kubesent_kube_sim::SimConfig {
        time_scale: 0.01,
        ..Default::default()
    })
    .await
    .expect("kube-sim");
    let kube = kubesent_common::kube_client(Some(&sim.url())).await.expect("client");
    let deployments: Api<Deployment> = Api::namespaced(kube.clone(), "shop");
    let web: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "app", "image": "registry.local/shop/web:1.4.2",
                    // Ready 5 s after start: revision 2's pods crash (after 2 s) before they are
                    // available, so revision 1's pods keep serving.
                    "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080}, "initialDelaySeconds": 5}}]}}}
    }))
    .expect("deployment");
    deployments.create(&PostParams::default(), &web).await.expect("created");
    let ready = |d: Option<&Deployment>| d.and_then(|d| d.status.as_ref()?.ready_replicas) == Some(2);
    tokio::time::timeout(
        std::time::Duration::from_secs(30),
        kube_runtime::wait::await_condition(deployments.clone(), "web", ready),
    )
    .await
    .expect("ready in time")
    .expect("watch");
    let update = json!({"spec": {"template": {"metadata": {"annotations": {
        "sim.kubesent.io/exit-code": "1", "sim.kubesent.io/logs": "panic: unknown flag --listen-port"}}}}});
    deployments.patch("web", &PatchParams::default(), &Patch::Strategic(&update)).await.expect("updated");
    let pods: Api<Pod> = Api::namespaced(kube, "shop");
    let crashing = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        loop {
            let listed = pods.list(&ListParams::default().labels("app=web")).await.expect("pods");
            let found = listed.items.into_iter().find(|p| {
                p.status.as_ref().and_then(|s| s.container_statuses.as_ref()).is_some_and(|c| {
                    c.iter().any(|c| {
                        c.state.as_ref().and_then(|s| s.waiting.as_ref()).and_then(|w| w.reason.as_deref())
                            == Some("CrashLoopBackOff")
                    })
                })
            });
            if let Some(pod) = found {
                return pod;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("a pod of revision 2 crash-loops");
    let name = crashing.metadata.name.clone().expect("name");
    let verdict = diagnose_live(&sim.url(), &format!("shop/{name}")).await;
    assert_eq!(verdict["action"]["type"], "rollback_revision", "{verdict}");
    assert_eq!(verdict["action"]["from"]["number"], 2, "{verdict}");
    assert_eq!(verdict["action"]["to"]["number"], 1, "{verdict}");
}

fn kubesent(args: &[&str]) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_kubesent")).args(args).output().expect("kubesent runs");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_and_resume_set_and_clear_the_kill_switch_and_unknown_incidents_are_refused() {
    use kubesent_common::nats;
    use kubesent_remediator::guardrails::{Guardrails, Limits};
    use kubesent_testkit::nats_server::NatsServer;

    let server = NatsServer::start().await.expect("nats-server");
    let url = server.url().to_owned();
    let (code, _, stderr) = tokio::task::spawn_blocking({
        let url = url.clone();
        move || kubesent(&["pause", "--nats-url", &url])
    })
    .await
    .expect("ran");
    assert_ne!(code, 0, "nothing to pause before any remediator ran");
    assert!(stderr.contains("has a KubeSent remediator run against it?"), "{stderr}");

    let js = async_nats::jetstream::new(nats::connect(&url, "test").await.expect("nats"));
    let bucket = nats::ensure_intents(&js, &nats::Topology::default()).await.expect("bucket");
    let guardrails = Guardrails::new(bucket, Limits::default());
    let (code, stdout, stderr) = tokio::task::spawn_blocking({
        let url = url.clone();
        move || kubesent(&["pause", "--nats-url", &url, "--reason", "node pool upgrade", "--by", "alice"])
    })
    .await
    .expect("ran");
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("paused"), "{stdout}");
    let recorded = guardrails.paused().await.expect("read").expect("paused");
    assert!(
        recorded.starts_with("node pool upgrade; paused by alice (NATS user kubesent-operator) at "),
        "attributed: {recorded}"
    );

    let (code, _, stderr) = tokio::task::spawn_blocking({
        let url = url.clone();
        move || kubesent(&["resume", "--nats-url", &url])
    })
    .await
    .expect("ran");
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(guardrails.paused().await.expect("read"), None);

    for verb in ["approve", "reject", "undo"] {
        let url = url.clone();
        let (code, _, stderr) = tokio::task::spawn_blocking(move || {
            kubesent(&[verb, "inc-000000000000000000000000", "--nats-url", &url])
        })
        .await
        .expect("ran");
        assert_ne!(code, 0, "{verb} of an unknown incident fails");
        assert!(stderr.contains("no remediation is recorded for incident"), "{verb}: {stderr}");
    }
}

#[test]
fn a_wrong_autonomy_policy_stops_the_remediator_at_once_in_one_line_naming_the_line() {
    let (_dir, policy) = temp_file("policy.yaml", "default: auto\nclasses:\n  memory-lower: auto\n");
    let path = policy.to_str().expect("utf-8").to_owned();
    // NATS on a port nobody listens on: the policy is refused before anything connects.
    let (code, stdout, stderr) =
        kubesent(&["remediator", "--autonomy-policy", &path, "--nats-url", "nats://127.0.0.1:1"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains(&path) && stderr.contains("line 3") && stderr.contains("memory-lower"),
        "{stderr}"
    );
}

#[test]
fn nonsense_memory_factors_are_refused_at_start() {
    for (role, flag) in [("diagnoser", "--memory-factor"), ("remediator", "--max-memory-factor")] {
        for value in ["NaN", "inf", "0.5", "-2", "1e9", "lots"] {
            let (code, _, stderr) = kubesent(&[role, &format!("{flag}={value}"), "--help"]);
            assert_eq!(code, 2, "{role} {flag} {value}: {stderr}");
            assert!(stderr.contains("invalid value"), "{stderr}");
        }
        let (code, _, stderr) = kubesent(&[role, flag, "3", "--help"]);
        assert_eq!(code, 0, "{stderr}");
    }
}

#[test]
fn every_subcommand_the_readme_names_exists() {
    let readme = std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../README.md"))
        .expect("README");
    let listed = readme
        .split("the product binary: `kubesent ")
        .nth(1)
        .and_then(|rest| rest.split('`').next())
        .expect("the README lists the product's subcommands");
    let subcommands: Vec<&str> = listed.split('|').map(str::trim).collect();
    assert!(subcommands.len() >= 10, "{subcommands:?}");
    for subcommand in subcommands {
        let output =
            Command::new(env!("CARGO_BIN_EXE_kubesent")).args([subcommand, "--help"]).output().expect("runs");
        assert!(
            output.status.success(),
            "kubesent {subcommand} --help: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_run_with_a_role_that_may_not_do_it_says_so_at_once_in_one_line() {
    use kubesent_common::nats::{self, Role};
    use kubesent_testkit::nats_server::NatsServer;

    let (server, users) = NatsServer::start_secured().await.expect("nats-server");
    // The intents bucket exists (a remediator ran).
    let remediator = nats::connect_as(&users.args(server.url(), Role::Remediator), Role::Remediator, "test")
        .await
        .expect("remediator connects");
    nats::ensure_intents(&async_nats::jetstream::new(remediator), &nats::Topology::default())
        .await
        .expect("bucket");
    let reader = users.env(Role::Reader);
    let url = server.url().to_owned();
    for args in [
        vec!["undo", "inc-000000000000000000000000"],
        vec!["pause"],
        vec!["approve", "inc-000000000000000000000000"],
    ] {
        let (reader, url) = (reader.clone(), url.clone());
        let started = std::time::Instant::now();
        let output = tokio::task::spawn_blocking(move || {
            Command::new(env!("CARGO_BIN_EXE_kubesent"))
                .args(&args)
                .args(["--nats-url", &url])
                .envs(reader)
                .output()
                .expect("kubesent runs")
        })
        .await
        .expect("ran");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_ne!(output.status.code(), Some(0), "{stderr}");
        assert!(started.elapsed() < std::time::Duration::from_secs(5), "at once: {:?}", started.elapsed());
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
        assert!(
            stderr.contains("kubesent-reader") && stderr.contains("kubesent-operator"),
            "names the user and the role that may: {stderr}"
        );
        assert!(output.stdout.is_empty(), "nothing on stdout: {}", String::from_utf8_lossy(&output.stdout));
    }
}

#[test]
fn an_unreachable_server_is_named_in_one_line() {
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("a port").local_addr().expect("addr").port();
    let nats = format!("nats://127.0.0.1:{port}");
    for command in [&["incidents"][..], &["undo", "inc-000000000000000000000000"], &["pause"]] {
        let (code, stdout, stderr) = kubesent(&[command, &["--nats-url", &nats]].concat());
        assert_ne!(code, 0, "{command:?}");
        assert!(stdout.is_empty(), "{command:?}: {stdout}");
        assert_eq!(stderr.trim().lines().count(), 1, "{command:?}: {stderr}");
        assert!(stderr.contains(&nats) && stderr.contains("cannot be reached"), "{command:?}: {stderr}");
    }
    let dir = tempfile::tempdir().expect("dir");
    let kubeconfig = dir.path().join("config");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: c\nclusters: [{{name: c, cluster: {{server: \"http://127.0.0.1:{port}\"}}}}]\nusers: [{{name: u, user: {{token: t}}}}]\ncontexts: [{{name: c, context: {{cluster: c, user: u, namespace: shop}}}}]\n"
        ),
    )
    .expect("kubeconfig");
    let output = Command::new(env!("CARGO_BIN_EXE_kubesent"))
        .args(["diagnose", "web-1"])
        .env("KUBECONFIG", &kubeconfig)
        .output()
        .expect("kubesent runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_ne!(output.status.code(), Some(0));
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains(&format!("http://127.0.0.1:{port}")) && stderr.contains("shop/web-1"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_nats_password_can_come_from_a_file_as_a_mounted_secret_gives_it() {
    use kubesent_common::nats::Role;
    use kubesent_testkit::nats_server::NatsServer;

    let (server, users) = NatsServer::start_secured().await.expect("nats-server");
    let env: std::collections::BTreeMap<String, String> = users.env(Role::Reader).into_iter().collect();
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("password");
    // As a Secret's file may hold it: with a trailing newline.
    std::fs::write(&file, format!("{}\n", env["KUBESENT_NATS_PASSWORD"])).expect("written");
    let (url, user) = (server.url().to_owned(), env["KUBESENT_NATS_USER"].clone());
    let output = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_kubesent"))
            .args(["incidents", "--nats-url", &url, "--nats-user", &user])
            .env("KUBESENT_NATS_PASSWORD_FILE", &file)
            .output()
            .expect("kubesent runs")
    })
    .await
    .expect("ran");
    let stderr = String::from_utf8_lossy(&output.stderr);
    // Connected and authorised: what is missing is only the audit stream nobody created here.
    assert!(!stderr.contains("refused the credentials") && !stderr.contains("password file"), "{stderr}");
    let (code, _, stderr) =
        kubesent(&["incidents", "--nats-user", "u", "--nats-password-file", "/no/such/password"]);
    assert_ne!(code, 0);
    assert!(stderr.contains("NATS password file /no/such/password"), "{stderr}");
}
