//! `kubesent demo` as a newcomer runs it (`make demo`), without a terminal: every scenario ends as the
//! summary says it should, and the commands to look around are printed.

#[test]
fn the_demo_plays_every_scenario_on_the_deployed_topology_and_ends_with_a_summary() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_kubesent"))
        .arg("demo")
        .output()
        .expect("kubesent runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the demo succeeded:\n{stdout}\n{stderr}");
    let summary = stdout.split("Summary").nth(1).expect("a summary");
    for scenario in [
        "✓ OOM storm of a 5-replica Deployment: shop/Deployment checkout, 5 pods → memory 128Mi→256Mi → healed",
        "✓ bare pod OOM-killed: shop/Pod worker",
        "✓ rollout to a missing image: shop/Deployment web",
        "✓ crash loop from a missing env var: shop/Pod api",
        "DATABASE_URL",
        "✓ excluded namespace: kube-system/node-agent",
        "✓ failover: remediator-",
        "kubesent incidents",
        "export KUBECONFIG=",
    ] {
        assert!(summary.contains(scenario), "{scenario:?} in the summary:\n{summary}");
    }
    assert!(!summary.contains('✗'), "{summary}");
    assert!(!stdout.contains("\x1b["), "plain lines without a terminal");
}
