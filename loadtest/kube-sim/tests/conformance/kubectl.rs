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
