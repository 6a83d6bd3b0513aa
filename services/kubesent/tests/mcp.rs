//! `kubesent mcp` with a real MCP client: the official Python SDK (`mcp` on PyPI, installed by `make
//! setup`) spawns it over stdio as the reader, lists its tools and their hints and its incident
//! resources (reading one), reads incidents, one incident, a live pod's diagnosis, the policy state and what waits for approval, and is refused a write
//! (saying how to enable writes) and bad arguments; then it talks to `kubesent mcp --listen --allow-writes`
//! over Streamable HTTP and approves a waiting fix, which the remediator carries out, attributed to the
//! client's declared name and the operator's NATS user.

use std::{path::PathBuf, process::Stdio, time::Duration};

use kubesent_common::nats::Role;
use kubesent_proto::OutcomeResult;
use kubesent_testkit::bus::next_outcome;
use serde_json::{Value, json};

mod support;

fn repository() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs the Python client with `calls` (`{"calls": […], "watch": uri?}`) over `transport` (`["stdio", exe,
/// args…]` or `["http", url]`).
async fn agent(transport: Vec<String>, calls: Value, env: Vec<(String, String)>) -> Value {
    let sdk = repository().join(".tools/mcp");
    assert!(sdk.exists(), "the MCP Python SDK is installed by `make setup` into {}", sdk.display());
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/mcp/client.py");
    tokio::task::spawn_blocking(move || {
        use std::io::Write as _;
        let mut child = std::process::Command::new("python3")
            .arg(script)
            .args(transport)
            .env("PYTHONPATH", sdk)
            .envs(env)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("python3 runs");
        child.stdin.take().expect("stdin").write_all(calls.to_string().as_bytes()).expect("calls written");
        let output = child.wait_with_output().expect("the client ends");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "the client failed: {}\n{stdout}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
    })
    .await
    .expect("joined")
}

fn result(out: &Value, index: usize) -> &Value {
    &out["results"][index]
}

fn texts(out: &Value, index: usize) -> String {
    result(out, index)["texts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_reads_incidents_and_diagnoses_over_stdio_and_approves_a_fix_over_http_with_writes_allowed()
{
    let dir = tempfile::tempdir().expect("temp dir");
    let (stack, mut outcomes, waiting) = support::a_fix_waiting_for_approval(dir.path()).await;
    let incident = waiting.incident.to_string();

    // The kubeconfig diagnose_pod reads, pointing at kube-sim.
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        json!({"apiVersion": "v1", "kind": "Config", "current-context": "sim",
            "clusters": [{"name": "sim", "cluster": {"server": stack.kube_sim.url()}}],
            "users": [{"name": "u", "user": {}}],
            "contexts": [{"name": "sim", "context": {"cluster": "sim", "user": "u", "namespace": "shop"}}]})
        .to_string(),
    )
    .expect("kubeconfig");
    let mut reader = stack.users.env(Role::Reader);
    reader.push(("KUBESENT_NATS_URL".into(), stack.nats.url().to_owned()));
    reader.push(("KUBECONFIG".into(), kubeconfig.display().to_string()));
    let exe = env!("CARGO_BIN_EXE_kubesent").to_owned();
    let calls = json!([
        {"tool": "list_incidents", "arguments": {"namespace": "shop", "workload": "web-1"}},
        {"tool": "show_incident", "arguments": {"incident": incident}},
        {"tool": "diagnose_pod", "arguments": {"namespace": "shop", "pod": "web-1"}},
        {"tool": "policy_state"},
        {"tool": "pending_approvals"},
        {"tool": "approve", "arguments": {"incident": incident}},
        {"tool": "show_incident", "arguments": {"incident": "inc-../../etc/passwd"}},
        {"tool": "list_incidents", "arguments": {"namespace": "Not A Namespace"}},
        {"tool": "list_incidents", "arguments": {"namespace": "shop", "workload": "checkout"}},
    ]);
    let out =
        agent(vec!["stdio".into(), exe.clone(), "mcp".into()], json!({"calls": calls}), reader.clone()).await;
    let tools: Vec<&Value> = out["tools"].as_array().expect("tools").iter().collect();
    let names: Vec<&str> = tools.iter().filter_map(|t| t["name"].as_str()).collect();
    for name in ["list_incidents", "show_incident", "diagnose_pod", "policy_state", "pending_approvals"] {
        let tool = tools.iter().find(|t| t["name"] == name).unwrap_or_else(|| panic!("{name} in {names:?}"));
        assert_eq!(tool["annotations"]["readOnlyHint"], true, "{tool}");
        assert_eq!(tool["input_schema"]["type"], "object", "{tool}");
    }
    for name in ["approve", "reject", "undo", "pause", "resume"] {
        let tool = tools.iter().find(|t| t["name"] == name).unwrap_or_else(|| panic!("{name} in {names:?}"));
        assert_eq!(tool["annotations"]["destructiveHint"], true, "{tool}");
    }
    // The incident as a resource, its history as JSON.
    let uri = format!("kubesent://incidents/{incident}");
    assert_eq!(out["resources"][0]["uri"], uri.as_str(), "{}", out["resources"]);
    assert!(
        out["resources"][0]["description"]
            .as_str()
            .is_some_and(|d| d.starts_with("shop/Pod web-1: oom-killed")),
        "{}",
        out["resources"]
    );
    let history: Value =
        serde_json::from_str(out["read"][0]["texts"][0].as_str().unwrap_or("null")).expect("JSON");
    assert_eq!(history["incident"], incident.as_str());
    assert_eq!(history["outcomes"][0]["result"], "awaiting_approval", "{history}");
    assert!(texts(&out, 0).contains(&incident), "{}", texts(&out, 0));
    assert!(
        texts(&out, 1).contains("awaiting_approval") && texts(&out, 1).contains("OOM"),
        "{}",
        texts(&out, 1)
    );
    assert!(
        texts(&out, 2).contains("shop/web-1") && texts(&out, 2).contains("increase_memory"),
        "{}",
        texts(&out, 2)
    );
    assert!(
        texts(&out, 3).starts_with("not paused; 0 actions in the last hour (30 of the budget left)"),
        "{}",
        texts(&out, 3)
    );
    assert!(
        texts(&out, 4).starts_with("1 awaiting approval") && texts(&out, 4).contains(&incident),
        "{}",
        texts(&out, 4)
    );
    let refused = &result(&out, 5)["mcp_error"];
    assert!(
        refused["message"].as_str().is_some_and(|m| m.contains("kubesent mcp --allow-writes")),
        "{refused}"
    );
    assert!(
        result(&out, 6)["mcp_error"]["message"].as_str().is_some_and(|m| m.contains("is not an incident id"))
    );
    assert!(
        result(&out, 7)["mcp_error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("is not a namespace name"))
    );
    assert!(texts(&out, 8).starts_with("0 incidents"), "another workload's: {}", texts(&out, 8));

    // Over Streamable HTTP, with writes allowed (the operator's credential).
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("a port").local_addr().expect("addr").port();
    let operator = stack.users.env(Role::Operator);
    let password = operator
        .iter()
        .find(|(k, _)| k == "KUBESENT_NATS_PASSWORD")
        .map(|(_, v)| v.clone())
        .expect("password");
    let mut server = tokio::process::Command::new(&exe)
        .args(["mcp", "--listen", &format!("127.0.0.1:{port}"), "--allow-writes"])
        .envs(reader)
        .env("KUBESENT_MCP_OPERATOR_PASSWORD", password)
        .kill_on_drop(true)
        .spawn()
        .expect("kubesent mcp --listen runs");
    tokio::time::timeout(Duration::from_secs(30), async {
        while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the HTTP server listens");
    // Subscribed to the incident's resource while approving: its update arrives once the remediator acts.
    let calls = json!({"calls": [{"tool": "approve", "arguments": {"incident": incident}}], "watch": uri});
    let out = agent(vec!["http".into(), format!("http://127.0.0.1:{port}/mcp")], calls, Vec::new()).await;
    assert_eq!(out["updated"], uri.as_str(), "the subscription told of the update: {out}");
    assert!(
        texts(&out, 0).starts_with(&format!(
            "approved {incident} as mcp:kubesent-test-agent (NATS user kubesent-operator)"
        )),
        "{out}"
    );
    let healed = next_outcome(&mut outcomes).await;
    assert_eq!(healed.result, OutcomeResult::Healed, "{}", healed.detail);
    assert_eq!(healed.decided_by.as_deref(), Some("mcp:kubesent-test-agent (NATS user kubesent-operator)"));
    server.kill().await.expect("stopped");
    stack.stop().await;
}
