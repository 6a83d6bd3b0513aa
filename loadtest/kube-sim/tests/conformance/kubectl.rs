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
