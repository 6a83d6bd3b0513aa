//! The demo as a newcomer runs it (`make demo`), without a terminal: every scenario ends as the summary
//! says it should, and the commands to look around are printed. The demo runs the product binary's
//! processes; its own command-line wrapper is `kubesent-dev demo`.

use kubesent_loadtest::demo::{self, DemoOptions};

#[tokio::test]
async fn the_demo_plays_every_scenario_on_the_deployed_topology_and_ends_with_a_summary() {
    kubesent_common::install_crypto_provider();
    let dir = tempfile::tempdir().expect("a directory");
    let options = DemoOptions {
        exe: env!("CARGO_BIN_EXE_kubesent").into(),
        time_scale: 0.1,
        verify_seconds: 3,
        keep_running: false,
        dir: Some(dir.path().to_owned()),
        live: false,
    };
    let mut out = Vec::new();
    let result = demo::run(options, &mut out).await;
    let stdout = String::from_utf8_lossy(&out);
    assert!(result.is_ok(), "the demo succeeded: {result:?}\n{stdout}");
    let summary = stdout.split("Summary").nth(1).expect("a summary");
    for scenario in [
        "✓ OOM storm of a 5-replica Deployment: shop/Deployment checkout, 5 pods → memory 128Mi→256Mi → healed",
        "✓ bare pod OOM-killed: shop/Pod worker",
        "✓ rollout to a missing image: shop/Deployment web",
        "✓ crash loop from a missing env var: shop/Pod api",
        "DATABASE_URL",
        "✓ excluded namespace: kube-system/node-agent",
        "✓ failover: remediator-",
        "✓ counted once: after the failover",
        "kubesent incidents",
        "export KUBECONFIG=",
        "alias kubesent=",
    ] {
        assert!(summary.contains(scenario), "{scenario:?} in the summary:\n{summary}");
    }
    // One credentials file per role a person uses, named in the summary, readable by its owner only.
    for (role, user) in
        [("reader", "kubesent-reader"), ("operator", "kubesent-operator"), ("notifier", "kubesent-notifier")]
    {
        let file = dir.path().join(format!("{role}.env"));
        assert!(summary.contains(&format!("source {}", file.display())), "{role} in the summary:\n{summary}");
        let text = std::fs::read_to_string(&file).expect("the credentials file");
        for line in [
            "export KUBESENT_NATS_URL='nats://",
            &format!("export KUBESENT_NATS_USER='{user}'"),
            "export KUBESENT_NATS_PASSWORD='",
        ] {
            assert!(text.contains(line), "{line:?} in {role}.env:\n{text}");
        }
        assert_eq!(text.contains("KUBECONFIG"), role == "operator", "only undo needs a kubeconfig");
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&file).expect("metadata").permissions().mode();
        assert_eq!(mode & 0o077, 0, "{role}.env is private: {mode:o}");
    }
    assert!(!summary.contains('✗'), "{summary}");
    assert!(!stdout.contains("\x1b["), "plain lines without a terminal");
}
