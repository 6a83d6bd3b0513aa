//! `kubectl --server` against the simulator (skipped where kubectl is absent).

use super::*;

#[tokio::test]
async fn kubectl_lists_pods_and_reads_previous_logs() {
    let Ok(kubectl) = which_kubectl() else {
        eprintln!("skipped: kubectl is not installed");
        return;
    };
    let sim = sim().await;
    let pods: Api<Pod> = Api::namespaced(client(&sim), "shop");
    pods.create(&PostParams::default(), &pod("web-1", "128Mi", "200Mi")).await.expect("created");
    wait_for(&pods, "web-1", |p: Option<&Pod>| {
        p.and_then(last_terminated_reason).as_deref() == Some("OOMKilled")
    })
    .await;
    let server = sim.url();
    let run = |args: Vec<String>| {
        let kubectl = kubectl.clone();
        async move { tokio::process::Command::new(kubectl).args(args).output().await.expect("kubectl runs") }
    };
    let get = run(vec!["--server".into(), server.clone(), "get".into(), "pods".into(), "-A".into()]).await;
    let stdout = String::from_utf8_lossy(&get.stdout);
    assert!(get.status.success(), "kubectl get failed: {}", String::from_utf8_lossy(&get.stderr));
    assert!(stdout.contains("NAMESPACE") && stdout.contains("RESTARTS"), "{stdout}");
    assert!(stdout.contains("shop") && stdout.contains("web-1"), "{stdout}");
    let logs = run(vec![
        "--server".into(),
        server,
        "-n".into(),
        "shop".into(),
        "logs".into(),
        "web-1".into(),
        "--previous".into(),
    ])
    .await;
    assert!(logs.status.success(), "kubectl logs failed: {}", String::from_utf8_lossy(&logs.stderr));
    assert!(String::from_utf8_lossy(&logs.stdout).contains("allocating"));
}

#[tokio::test]
async fn kubectl_get_watch_prints_each_change_as_a_row() {
    use tokio::io::{AsyncBufReadExt as _, BufReader};
    let Ok(kubectl) = which_kubectl() else {
        eprintln!("skipped: kubectl is not installed");
        return;
    };
    let sim = sim().await;
    let mut watching = tokio::process::Command::new(kubectl)
        .args(["--server", &sim.url(), "-n", "shop", "get", "pods", "-w"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("kubectl runs");
    let mut lines = BufReader::new(watching.stdout.take().expect("stdout")).lines();
    // Created only once kubectl watches, so every row below comes from the watch, not the list.
    tokio::time::timeout(PATIENCE, async {
        while !sim
            .requests()
            .iter()
            .any(|r| r.path == "/api/v1/namespaces/shop/pods" && r.query.contains("watch=true"))
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("kubectl watches");
    let pods: Api<Pod> = Api::namespaced(client(&sim), "shop");
    pods.create(&PostParams::default(), &pod("web-1", "256Mi", "64Mi")).await.expect("created");
    // The header once, then a row per change of web-1 until it runs.
    let seen = tokio::time::timeout(PATIENCE, async {
        let mut seen = Vec::new();
        while let Some(line) = lines.next_line().await.expect("reads") {
            let cells: Vec<String> = line.split_whitespace().map(str::to_owned).collect();
            let running =
                cells.first().is_some_and(|c| c == "web-1") && cells.get(2).is_some_and(|c| c == "Running");
            seen.push(cells);
            if running {
                return seen;
            }
        }
        seen
    })
    .await
    .expect("kubectl printed the pod running in time");
    assert_eq!(seen[0], ["NAME", "READY", "STATUS", "RESTARTS", "AGE"], "{seen:?}");
    let statuses: Vec<&str> =
        seen[1..].iter().filter(|row| row[0] == "web-1").map(|row| row[2].as_str()).collect();
    assert!(statuses.first().is_some_and(|s| *s == "Pending"), "{statuses:?}");
    assert_eq!(statuses.last(), Some(&"Running"), "{statuses:?}");
    assert_eq!(seen.iter().filter(|row| row[0] == "NAME").count(), 1, "one header: {seen:?}");
}

/// The stdout of a kubectl run that must have succeeded.
fn ok(what: &str, (success, stdout, stderr): (bool, String, String)) -> String {
    assert!(success, "kubectl {what} failed: {stderr}\n{stdout}");
    stdout
}

/// Runs `kubectl --server <sim> -n shop <args>`; (success, stdout, stderr).
async fn kubectl_in_shop(kubectl: &std::path::Path, sim: &KubeSim, args: &[&str]) -> (bool, String, String) {
    let out = tokio::process::Command::new(kubectl)
        .args(["--server", &sim.url(), "-n", "shop", "--request-timeout=20s"])
        .args(args)
        .output()
        .await
        .expect("kubectl runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn kubectl_drives_a_deployment_through_its_life_as_people_do() {
    let Ok(kubectl) = which_kubectl() else {
        eprintln!("skipped: kubectl is not installed");
        return;
    };
    let sim = sim().await;
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> = Api::namespaced(client(&sim), "shop");
    deployments
        .create(&PostParams::default(), &deployment("web", 2, "registry.local/shop/web:1"))
        .await
        .expect("created");
    let run = |args: &'static [&'static str]| kubectl_in_shop(&kubectl, &sim, args);

    ok("wait", run(&["wait", "--for=condition=Available", "deployment/web", "--timeout=30s"]).await);
    let status = ok("rollout status", run(&["rollout", "status", "deployment/web", "--timeout=30s"]).await);
    assert!(status.contains("successfully rolled out"), "{status}");

    // A new revision, its history, and going back.
    ok("set image", run(&["set", "image", "deployment/web", "app=registry.local/shop/web:2"]).await);
    ok("rollout status", run(&["rollout", "status", "deployment/web", "--timeout=30s"]).await);
    // The change cause, as the kubectl docs say to record it: on the Deployment, after the change; its
    // controller copies it to the newest ReplicaSet, where `rollout history` reads it.
    ok(
        "annotate",
        run(&["annotate", "deployment/web", "kubernetes.io/change-cause=image 2 for the checkout fix"]).await,
    );
    let history = ok("rollout history", run(&["rollout", "history", "deployment/web"]).await);
    assert!(history.contains("REVISION") && history.lines().any(|l| l.starts_with('2')), "{history}");
    let cause_of = |revision: char| {
        history
            .lines()
            .find(|l| l.starts_with(revision))
            .map(|l| l[1..].trim().to_owned())
            .unwrap_or_default()
    };
    assert_eq!(cause_of('2'), "image 2 for the checkout fix", "{history}");
    assert_eq!(cause_of('1'), "<none>", "the older revision keeps its own: {history}");
    ok("rollout undo", run(&["rollout", "undo", "deployment/web"]).await);
    ok("rollout status", run(&["rollout", "status", "deployment/web", "--timeout=30s"]).await);
    let image = ok(
        "get",
        run(&["get", "deployment/web", "-o", "jsonpath={.spec.template.spec.containers[0].image}"]).await,
    );
    assert_eq!(image, "registry.local/shop/web:1", "undo restored revision 1's template");

    // Scale, patch, label, annotate.
    ok("scale", run(&["scale", "deployment/web", "--replicas=3"]).await);
    ok(
        "wait",
        run(&["wait", "--for=jsonpath={.status.readyReplicas}=3", "deployment/web", "--timeout=30s"]).await,
    );
    ok("patch", run(&["patch", "deployment/web", "-p", r#"{"spec":{"minReadySeconds":1}}"#]).await);
    ok("label", run(&["label", "deployment/web", "tier=frontend"]).await);
    ok("annotate", run(&["annotate", "deployment/web", "owner=shop-team"]).await);
    let shown = ok(
        "get",
        run(&[
            "get",
            "deployment/web",
            "-o",
            "jsonpath={.spec.minReadySeconds} {.metadata.labels.tier} {.metadata.annotations.owner}",
        ])
        .await,
    );
    assert_eq!(shown, "1 frontend shop-team");

    // What people read: describe, logs, events.
    let described = ok("describe", run(&["describe", "deployment/web"]).await);
    for part in ["Name:", "web", "Replicas:", "3 desired", "StrategyType:", "RollingUpdate", "Events:"] {
        assert!(described.contains(part), "{part} in describe:\n{described}");
    }
    let pods = ok(
        "get pods",
        run(&["get", "pods", "-l", "app=web", "-o", "jsonpath={.items[0].metadata.name}"]).await,
    );
    let described = ok("describe pod", kubectl_in_shop(&kubectl, &sim, &["describe", "pod", &pods]).await);
    for part in ["Node:", "Status:", "Containers:", "app:", "Image:", "Conditions:", "Events:"] {
        assert!(described.contains(part), "{part} in describe pod:\n{described}");
    }
    let logs = ok("logs", kubectl_in_shop(&kubectl, &sim, &["logs", &pods, "-c", "app", "--tail=1"]).await);
    assert_eq!(logs.lines().count(), 1, "--tail=1: {logs}");
    let events = ok("events", run(&["events"]).await);
    assert!(events.contains("ScalingReplicaSet") || events.contains("Scheduled"), "{events}");
    let node = ok("describe node", run(&["describe", "node", "sim-node-1"]).await);
    for part in ["Capacity:", "Allocatable:", "Non-terminated Pods:"] {
        assert!(node.contains(part), "{part} in describe node:\n{node}");
    }

    // Deleting without cascading leaves the ReplicaSets; with it, everything goes.
    ok("delete", run(&["delete", "deployment/web", "--cascade=orphan"]).await);
    let sets = ok("get rs", run(&["get", "rs", "-l", "app=web", "-o", "name"]).await);
    assert!(!sets.trim().is_empty(), "orphaned ReplicaSets stay: {sets}");
}

#[tokio::test]
async fn kubectl_apply_validates_on_the_server_and_refuses_unknown_fields_as_the_apiserver_does() {
    let Ok(kubectl) = which_kubectl() else {
        eprintln!("skipped: kubectl is not installed");
        return;
    };
    let sim = sim().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let manifest = |name: &str, extra: &str| {
        let path = dir.path().join(format!("{name}.yaml"));
        std::fs::write(
            &path,
            format!(
                "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {name}\nspec:\n  replicas: 1\n{extra}  selector:\n    matchLabels: {{app: {name}}}\n  template:\n    metadata:\n      labels: {{app: {name}}}\n    spec:\n      containers:\n      - name: app\n        image: registry.local/shop/{name}:1\n"
            ),
        )
        .expect("written");
        path.display().to_string()
    };
    // Default validation: kubectl reads /openapi/v3, finds fieldValidation and asks the server.
    let good = manifest("web", "");
    let (ok, out, err) = kubectl_in_shop(&kubectl, &sim, &["apply", "-f", &good]).await;
    assert!(ok, "{err}");
    assert!(out.contains("deployment.apps/web created"), "{out}");
    let (ok, out, err) = kubectl_in_shop(&kubectl, &sim, &["apply", "-f", &good]).await;
    assert!(ok && out.contains("unchanged"), "{out}{err}");
    assert!(sim.requests().iter().any(|r| r.path == "/openapi/v3"), "kubectl asked for the OpenAPI index");

    // An unknown field: refused with the strict decoding error, by create and by patch.
    let typo = manifest("api", "  replica: 3\n");
    let (ok, _, err) = kubectl_in_shop(&kubectl, &sim, &["apply", "-f", &typo]).await;
    assert!(!ok, "refused");
    assert!(err.contains(r#"strict decoding error: unknown field "spec.replica""#), "{err}");
    let patched = manifest("web", "  replica: 3\n");
    let (ok, _, err) = kubectl_in_shop(&kubectl, &sim, &["apply", "-f", &patched]).await;
    assert!(!ok && err.contains(r#"unknown field "spec.replica""#), "{err}");
    // --validate=warn: accepted, with the apiserver's warning.
    let (ok, _, err) = kubectl_in_shop(&kubectl, &sim, &["apply", "--validate=warn", "-f", &typo]).await;
    assert!(ok, "{err}");
    assert!(err.contains(r#"Warning: unknown field "spec.replica""#), "{err}");
}

#[tokio::test]
async fn kubectl_create_generators_send_protobuf_and_make_the_same_objects_as_json() {
    let Ok(kubectl) = which_kubectl() else {
        eprintln!("skipped: kubectl is not installed");
        return;
    };
    let sim = sim().await;
    let run = |args: &'static [&'static str]| kubectl_in_shop(&kubectl, &sim, args);

    let created = ok("create namespace", run(&["create", "namespace", "payments"]).await);
    assert!(created.contains("namespace/payments created"), "{created}");
    let phase = ok("get ns", run(&["get", "ns", "payments", "-o", "jsonpath={.status.phase}"]).await);
    assert_eq!(phase, "Active");

    ok(
        "create deployment",
        run(&[
            "create",
            "deployment",
            "api",
            "--image=registry.local/shop/api:1",
            "--replicas=2",
            "--port=8080",
        ])
        .await,
    );
    ok("rollout status", run(&["rollout", "status", "deployment/api", "--timeout=30s"]).await);
    let shown = ok(
        "get deployment",
        run(&[
            "get",
            "deployment/api",
            "-o",
            "jsonpath={.spec.replicas} {.spec.selector.matchLabels.app} {.spec.template.spec.containers[0].ports[0].containerPort} {.spec.strategy.type} {.status.readyReplicas}",
        ])
        .await,
    );
    assert_eq!(shown, "2 api 8080 RollingUpdate 2", "defaults applied to the decoded object as to JSON");

    ok(
        "create configmap",
        run(&["create", "configmap", "cfg", "--from-literal=mode=fast", "--from-literal=empty="]).await,
    );
    let data = ok("get configmap", run(&["get", "configmap", "cfg", "-o", "jsonpath={.data}"]).await);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&data).expect("json"),
        json!({"mode": "fast", "empty": ""})
    );
    ok("create secret", run(&["create", "secret", "generic", "db", "--from-literal=password=s3cr3t"]).await);
    let secret =
        ok("get secret", run(&["get", "secret", "db", "-o", "jsonpath={.type} {.data.password}"]).await);
    assert_eq!(secret, "Opaque czNjcjN0");

    ok(
        "create job",
        run(&["create", "job", "once", "--image=registry.local/shop/migrate:1", "--", "migrate", "--all"])
            .await,
    );
    let job = ok(
        "get job",
        run(&[
            "get",
            "job",
            "once",
            "-o",
            "jsonpath={.spec.template.spec.containers[0].command} {.spec.template.spec.restartPolicy}",
        ])
        .await,
    );
    assert_eq!(job, r#"["migrate","--all"] Never"#);
    ok(
        "create cronjob",
        run(&[
            "create",
            "cronjob",
            "nightly",
            "--image=registry.local/shop/migrate:1",
            "--schedule=0 3 * * *",
        ])
        .await,
    );
    ok("create job --from", run(&["create", "job", "nightly-now", "--from=cronjob/nightly"]).await);
    let owner = ok(
        "get job",
        run(&[
            "get",
            "job",
            "nightly-now",
            "-o",
            "jsonpath={.metadata.ownerReferences[0].kind}/{.metadata.ownerReferences[0].name}",
        ])
        .await,
    );
    assert_eq!(owner, "CronJob/nightly");

    // `kubectl run`: a bare pod, the largest message kubectl sends as protobuf.
    ok(
        "run",
        run(&[
            "run",
            "tool",
            "--image=registry.local/shop/tool:1",
            "--labels=app=tool",
            "--env=MODE=fast",
            "--port=9090",
        ])
        .await,
    );
    ok("wait", run(&["wait", "--for=condition=Ready", "pod/tool", "--timeout=30s"]).await);
    let pod = ok(
        "get pod",
        run(&[
            "get",
            "pod",
            "tool",
            "-o",
            "jsonpath={.metadata.labels.app} {.spec.containers[0].env[0].value} {.spec.containers[0].ports[0].containerPort} {.spec.restartPolicy}",
        ])
        .await,
    );
    assert_eq!(pod, "tool fast 9090 Always");

    let protobuf_creates = sim
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST" && r.content_type.starts_with("application/vnd.kubernetes.protobuf"))
        .count();
    assert!(protobuf_creates >= 7, "kubectl sent its creates as protobuf ({protobuf_creates} seen)");

    // Deleting a namespace removes what is in it; kubectl waits until it is gone.
    ok(
        "create in payments",
        run(&["-n", "payments", "create", "configmap", "ledger", "--from-literal=a=1"]).await,
    );
    let deleted = ok("delete namespace", run(&["delete", "namespace", "payments", "--timeout=30s"]).await);
    assert!(deleted.contains(r#"namespace "payments" deleted"#), "{deleted}");
    let (success, _, err) = run(&["get", "namespace", "payments"]).await;
    assert!(!success && err.contains(r#"namespaces "payments" not found"#), "{err}");

    // A namespace that does not exist is refused as the real server refuses it, protobuf or not.
    let (success, _, err) =
        kubectl_in_shop(&kubectl, &sim, &["-n", "nowhere", "create", "configmap", "x"]).await;
    assert!(!success && err.contains(r#"namespaces "nowhere" not found"#), "{err}");
}

#[tokio::test]
async fn kubectl_explain_reads_field_types_from_openapi_v3_and_v2() {
    let Ok(kubectl) = which_kubectl() else {
        eprintln!("skipped: kubectl is not installed");
        return;
    };
    let sim = sim().await;
    let (ok, out, err) = kubectl_in_shop(&kubectl, &sim, &["explain", "deployment.spec.replicas"]).await;
    assert!(ok, "{err} {:?}", sim.requests().iter().filter(|r| r.status >= 400).collect::<Vec<_>>());
    assert!(out.contains("Deployment") && out.contains("replicas") && out.contains("<integer>"), "{out}");
    let (ok, out, err) =
        kubectl_in_shop(&kubectl, &sim, &["explain", "deployment.spec.strategy.rollingUpdate"]).await;
    assert!(ok && out.contains("maxSurge\t<IntOrString>"), "{err}{out}");
    let (ok, out, err) = kubectl_in_shop(&kubectl, &sim, &["explain", "pod.spec.containers.resources"]).await;
    assert!(ok && out.contains("limits\t<map[string]Quantity>"), "{err}{out}");
    let (ok, out, err) =
        kubectl_in_shop(&kubectl, &sim, &["explain", "pod.spec.containers", "--output=plaintext-openapiv2"])
            .await;
    assert!(ok, "{err}");
    assert!(out.contains("containers") && out.contains("<[]Object>"), "{out}");
    for field in ["image", "resources", "livenessProbe"] {
        assert!(out.contains(field), "{field} among the container's fields:\n{out}");
    }
    assert!(sim.requests().iter().any(|r| r.path == "/openapi/v2" && r.status == 200), "kubectl read v2");
}

#[tokio::test]
async fn kubectl_validates_on_its_own_side_with_the_served_schemas_against_a_server_that_does_not() {
    let Ok(kubectl) = which_kubectl() else {
        eprintln!("skipped: kubectl is not installed");
        return;
    };
    // 1.24 neither advertises nor honours fieldValidation: kubectl downloads the schemas and validates.
    let sim = KubeSim::start(SimConfig { time_scale: FAST, kubernetes_minor: 24, ..SimConfig::default() })
        .await
        .expect("kube-sim starts");
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("typo.yaml");
    std::fs::write(
        &path,
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cfg\ndata:\n  mode: fast\nimmutabel: true\n",
    )
    .expect("written");
    let file = path.display().to_string();
    let (ok, out, err) =
        kubectl_in_shop(&kubectl, &sim, &["create", "--dry-run=client", "--validate=strict", "-f", &file])
            .await;
    assert!(!ok, "refused on the client: {out}");
    assert!(err.contains("immutabel"), "{err}");
    assert!(sim.requests().iter().all(|r| r.method == "GET"), "nothing was written");
}

#[tokio::test]
async fn kubectl_shows_events_recorded_through_events_k8s_io_in_get_events_and_describe() {
    use kube_runtime::events::{Event as RuntimeEvent, EventType, Recorder, Reporter};
    let Ok(kubectl) = which_kubectl() else {
        eprintln!("skipped: kubectl is not installed");
        return;
    };
    let sim = sim().await;
    let client = client(&sim);
    let pods: Api<Pod> = Api::namespaced(client.clone(), "shop");
    let created = pods.create(&PostParams::default(), &pod("ev", "256Mi", "1Mi")).await.expect("created");
    // As KubeSent's remediator records: events.k8s.io/v1, through kube-runtime.
    let recorder = Recorder::new(
        client,
        Reporter { controller: "kubesent-remediator".into(), instance: Some("r-0".into()) },
    );
    let event = RuntimeEvent {
        type_: EventType::Warning,
        reason: "RemediationReverted".into(),
        note: Some("KubeSent took its change back".into()),
        action: "increase_memory".into(),
        secondary: None,
    };
    recorder.publish(&event, &kube::Resource::object_ref(&created, &())).await.expect("recorded");
    let listed = ok("get events", kubectl_in_shop(&kubectl, &sim, &["get", "events"]).await);
    assert!(
        listed.contains("RemediationReverted") && listed.contains("KubeSent took its change back"),
        "{listed}"
    );
    let described = ok("describe", kubectl_in_shop(&kubectl, &sim, &["describe", "pod", "ev"]).await);
    assert!(described.contains("RemediationReverted"), "{described}");
}
