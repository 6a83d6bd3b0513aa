//! Nodes and the scheduler: pods placed by their requests, selectors and tolerations; a pod no node
//! has room for stays Pending with the scheduler's message until room frees up; NotReady nodes.

use k8s_openapi::api::core::v1::{Event, Node};
use kubesent_kube_sim::nodes::NodeConfig;
use kubesent_proto::MemoryQuantity;

use super::*;

/// A cluster of `count` nodes with `memory_gib` of allocatable memory each.
async fn cluster(count: usize, memory_gib: u64) -> KubeSim {
    let nodes = (1..=count)
        .map(|i| NodeConfig {
            memory: MemoryQuantity::from_mib(memory_gib * 1024),
            ..NodeConfig::worker(&format!("node-{i}"))
        })
        .collect();
    KubeSim::start(SimConfig { time_scale: FAST, nodes, ..SimConfig::default() })
        .await
        .expect("kube-sim starts")
}

fn requesting(name: &str, memory: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"containers": [{"name": "app", "image": "registry.local/shop/web:1",
            "resources": {"requests": {"memory": memory}}}]}
    }))
    .expect("pod json")
}

fn scheduled_condition(pod: &Pod) -> Option<k8s_openapi::api::core::v1::PodCondition> {
    pod_condition(pod, "PodScheduled")
}

#[tokio::test]
async fn pods_are_spread_over_the_nodes_by_their_requests_and_report_their_node_and_host_ip() {
    let sim = cluster(3, 4).await;
    let client = client(&sim);
    let nodes: Api<Node> = Api::all(client.clone());
    let names: Vec<String> = nodes
        .list(&ListParams::default())
        .await
        .expect("nodes")
        .items
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .collect();
    assert_eq!(names, ["node-1", "node-2", "node-3"]);
    let pods: Api<Pod> = Api::namespaced(client, "shop");
    for i in 0..3 {
        pods.create(&PostParams::default(), &requesting(&format!("p{i}"), "3Gi")).await.expect("created");
    }
    let mut used = Vec::new();
    for i in 0..3 {
        let pod = wait_for(&pods, &format!("p{i}"), conditions::is_pod_running()).await;
        let spec = pod.spec.expect("spec");
        let status = pod.status.expect("status");
        let node = spec.node_name.expect("bound");
        let ip = nodes.get(&node).await.expect("node").status.and_then(|s| s.addresses).unwrap_or_default();
        assert_eq!(Some(ip[0].address.clone()), status.host_ip, "the host IP is its node's");
        used.push(node);
    }
    used.sort();
    assert_eq!(used, ["node-1", "node-2", "node-3"], "3Gi each: one per 4Gi node");
}

#[tokio::test]
async fn a_pod_no_node_has_room_for_stays_pending_with_the_schedulers_message_until_room_frees_up() {
    let sim = cluster(3, 4).await;
    let client = client(&sim);
    let pods: Api<Pod> = Api::namespaced(client.clone(), "shop");
    for i in 0..3 {
        pods.create(&PostParams::default(), &requesting(&format!("p{i}"), "3Gi")).await.expect("created");
        wait_for(&pods, &format!("p{i}"), conditions::is_pod_running()).await;
    }
    pods.create(&PostParams::default(), &requesting("late", "3Gi")).await.expect("created");
    let message = "0/3 nodes are available: 3 Insufficient memory. preemption: 0/3 nodes are available: 3 No preemption victims found for incoming pod.";
    let pending = wait_for(&pods, "late", |p: Option<&Pod>| {
        p.and_then(scheduled_condition).is_some_and(|c| c.status == "False")
    })
    .await;
    let condition = scheduled_condition(&pending).expect("condition");
    assert_eq!(
        (condition.reason.as_deref(), condition.message.as_deref()),
        (Some("Unschedulable"), Some(message))
    );
    assert_eq!(pending.status.and_then(|s| s.phase).as_deref(), Some("Pending"));
    assert!(pending.spec.and_then(|s| s.node_name).is_none());
    let events: Api<Event> = Api::namespaced(client.clone(), "shop");
    let failed = events
        .list(&ListParams::default().fields("involvedObject.name=late,reason=FailedScheduling"))
        .await
        .expect("events")
        .items;
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0].type_.as_deref(), Some("Warning"));
    assert_eq!(failed[0].message.as_deref(), Some(message));
    assert_eq!(failed[0].source.as_ref().and_then(|s| s.component.as_deref()), Some("default-scheduler"));

    // Room frees up: the scheduler places it at once.
    pods.delete("p1", &DeleteParams::default()).await.expect("deleted");
    let running = wait_for(&pods, "late", conditions::is_pod_running()).await;
    assert!(running.spec.and_then(|s| s.node_name).is_some());
}

#[tokio::test]
async fn selectors_taints_and_not_ready_nodes_keep_pods_off_and_are_named_in_the_message() {
    let sim = cluster(2, 4).await;
    let client = client(&sim);
    // node-2 goes NotReady: tainted, so nothing new goes there.
    let admin = reqwest_like_post(&sim, "/_sim/nodes/ready", r#"{"node": "node-2", "ready": false}"#).await;
    assert_eq!(admin.0, 204, "{admin:?}");
    let nodes: Api<Node> = Api::all(client.clone());
    let node = nodes.get("node-2").await.expect("node");
    let ready =
        node.status.and_then(|s| s.conditions).unwrap_or_default().into_iter().find(|c| c.type_ == "Ready");
    assert_eq!(ready.map(|c| c.status).as_deref(), Some("False"));
    let pods: Api<Pod> = Api::namespaced(client, "shop");
    let mut picky = requesting("picky", "1Gi");
    picky.spec.as_mut().expect("spec").node_selector = Some([("disk".to_owned(), "ssd".to_owned())].into());
    pods.create(&PostParams::default(), &picky).await.expect("created");
    let pending = wait_for(&pods, "picky", |p: Option<&Pod>| {
        p.and_then(scheduled_condition).is_some_and(|c| c.status == "False")
    })
    .await;
    assert_eq!(
        scheduled_condition(&pending).and_then(|c| c.message).as_deref(),
        Some(
            "0/2 nodes are available: 1 node(s) didn't match Pod's node affinity/selector, 1 node(s) had untolerated taint {node.kubernetes.io/not-ready: }. preemption: 0/2 nodes are available: 2 Preemption is not helpful for scheduling."
        )
    );
    pods.create(&PostParams::default(), &requesting("plain", "1Gi")).await.expect("created");
    let plain = wait_for(&pods, "plain", conditions::is_pod_running()).await;
    assert_eq!(plain.spec.and_then(|s| s.node_name).as_deref(), Some("node-1"));
}

#[tokio::test]
async fn kubectl_get_nodes_prints_status_roles_and_version() {
    let Ok(kubectl) = which_kubectl() else {
        eprintln!("skipped: kubectl is not installed");
        return;
    };
    let sim = cluster(2, 4).await;
    let admin = reqwest_like_post(&sim, "/_sim/nodes/ready", r#"{"node": "node-2", "ready": false}"#).await;
    assert_eq!(admin.0, 204);
    let rows = kubectl_rows(&kubectl, &sim, &["get", "nodes"]).await;
    assert_eq!(rows[0], ["NAME", "STATUS", "ROLES", "AGE", "VERSION"]);
    assert_eq!([&rows[1][..3], &rows[1][4..]].concat(), ["node-1", "Ready", "<none>", "v1.36.0"]);
    assert_eq!(&rows[2][..2], ["node-2", "NotReady"]);
}

/// The pods with `labels` that run and are not terminating.
async fn running_pods(pods: &Api<Pod>, labels: &str) -> Vec<Pod> {
    let listed = pods.list(&ListParams::default().labels(labels)).await.expect("pods");
    listed
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .collect()
}

fn status_of_pod(pod: &Pod) -> (Option<String>, Option<String>, Option<String>) {
    let status = pod.status.clone().unwrap_or_default();
    (status.phase, status.reason, status.message)
}

#[tokio::test]
async fn a_pod_writing_past_its_ephemeral_storage_limit_is_evicted_with_the_kubelets_message() {
    let sim = cluster(1, 4).await;
    let client = client(&sim);
    let pods: Api<Pod> = Api::namespaced(client.clone(), "shop");
    let filler: Pod = serde_json::from_value(json!({
        "metadata": {"name": "filler", "annotations": {"sim.kubesent.io/disk-use": "2Gi"}},
        "spec": {"containers": [{"name": "app", "image": "registry.local/shop/web:1",
            "resources": {"limits": {"ephemeral-storage": "1Gi"}}}]}
    }))
    .expect("pod json");
    pods.create(&PostParams::default(), &filler).await.expect("created");
    let message = "Pod ephemeral local storage usage exceeds the total limit of containers 1Gi. ";
    let evicted = wait_for(&pods, "filler", |p: Option<&Pod>| {
        p.and_then(|p| p.status.as_ref()?.phase.clone()).as_deref() == Some("Failed")
    })
    .await;
    assert_eq!(
        status_of_pod(&evicted),
        (Some("Failed".into()), Some("Evicted".into()), Some(message.into()))
    );
    let terminated = evicted.status.and_then(|s| s.container_statuses).unwrap_or_default()[0]
        .state
        .clone()
        .and_then(|s| s.terminated)
        .expect("the container was killed");
    assert_eq!(terminated.exit_code, 137);
    let events: Api<Event> = Api::namespaced(client, "shop");
    let evictions = events
        .list(&ListParams::default().fields("involvedObject.name=filler,reason=Evicted"))
        .await
        .expect("events")
        .items;
    assert_eq!(evictions.len(), 1);
    assert_eq!(
        (evictions[0].type_.as_deref(), evictions[0].message.as_deref()),
        (Some("Warning"), Some(message))
    );
}

#[tokio::test]
async fn a_node_short_of_memory_reports_pressure_and_evicts_the_pod_furthest_over_its_request() {
    let sim = cluster(1, 4).await;
    let client = client(&sim);
    let pods: Api<Pod> = Api::namespaced(client.clone(), "shop");
    // Three pods that ask for 256Mi and use 1.5Gi each: 4.5Gi on a 4Gi node.
    for (name, need) in [("a", "1400Mi"), ("b", "1400Mi"), ("greedy", "1600Mi")] {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": name, "annotations": {"sim.kubesent.io/memory-need": need}},
            "spec": {"containers": [{"name": "app", "image": "registry.local/shop/web:1",
                "resources": {"requests": {"memory": "256Mi"}}}]}
        }))
        .expect("pod json");
        pods.create(&PostParams::default(), &pod).await.expect("created");
    }
    let evicted = wait_for(&pods, "greedy", |p: Option<&Pod>| {
        p.and_then(|p| p.status.as_ref()?.reason.clone()).as_deref() == Some("Evicted")
    })
    .await;
    let (phase, _, message) = status_of_pod(&evicted);
    assert_eq!(phase.as_deref(), Some("Failed"));
    let message = message.expect("message");
    assert!(
        message.starts_with("The node was low on resource: memory. Threshold quantity: 100Mi, available: ")
            && message.ends_with(
                "Container app was using 1638400Ki, request is 256Mi, has larger consumption of memory. "
            ),
        "{message}"
    );
    let disruption = pod_condition(&evicted, "DisruptionTarget").expect("DisruptionTarget");
    assert_eq!(
        (disruption.status.as_str(), disruption.reason.as_deref()),
        ("True", Some("TerminationByKubelet"))
    );
    // With the greedy pod gone the node has room again and says so.
    let nodes: Api<Node> = Api::all(client);
    tokio::time::timeout(
        PATIENCE,
        await_condition(nodes, "node-1", |n: Option<&Node>| {
            n.and_then(|n| n.status.as_ref()?.conditions.clone())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "MemoryPressure" && c.status == "False"))
                && n.is_some_and(|n| {
                    n.spec.as_ref().and_then(|s| s.taints.as_ref()).is_none_or(Vec::is_empty)
                })
        }),
    )
    .await
    .expect("pressure clears in time")
    .expect("watch works");
    for name in ["a", "b"] {
        let pod = pods.get(name).await.expect("pod");
        assert_eq!(pod.status.and_then(|s| s.phase).as_deref(), Some("Running"), "{name} kept running");
    }
}

#[tokio::test]
async fn pods_leave_a_node_that_stays_not_ready_after_their_default_toleration_and_are_replaced_elsewhere() {
    use futures::StreamExt as _;
    let sim = cluster(2, 4).await;
    let client = client(&sim);
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> = Api::namespaced(client.clone(), "shop");
    deployments
        .create(&PostParams::default(), &deployment("web", 1, "registry.local/shop/web:1"))
        .await
        .expect("created");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "shop");
    let running = |pods: Api<Pod>| async move {
        tokio::time::timeout(PATIENCE, async {
            loop {
                if let Some(pod) = running_pods(&pods, "app=web").await.into_iter().next() {
                    return pod;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("a web pod runs")
    };
    let first = running(pods.clone()).await;
    let tolerations = first.spec.as_ref().and_then(|s| s.tolerations.clone()).unwrap_or_default();
    assert!(
        tolerations.iter().any(|t| t.key.as_deref() == Some("node.kubernetes.io/not-ready")
            && t.effect.as_deref() == Some("NoExecute")
            && t.toleration_seconds == Some(300)),
        "DefaultTolerationSeconds: {tolerations:?}"
    );
    let node = first.spec.as_ref().and_then(|s| s.node_name.clone()).expect("bound");
    // A pod that tolerates not-ready for ever stays on the node.
    let stayer: Pod = serde_json::from_value(json!({"metadata": {"name": "agent"},
        "spec": {"nodeName": node, "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists",
            "effect": "NoExecute"}],
            "containers": [{"name": "agent", "image": "registry.local/shop/agent:1"}]}}))
    .expect("pod json");
    pods.create(&PostParams::default(), &stayer).await.expect("created");
    wait_for(&pods, "agent", conditions::is_pod_running()).await;

    let mut watch = kube_runtime::watcher(pods.clone(), kube_runtime::watcher::Config::default()).boxed();
    let body = format!(r#"{{"node": "{node}", "ready": false}}"#);
    assert_eq!(reqwest_like_post(&sim, "/_sim/nodes/ready", &body).await.0, 204);
    let nodes: Api<Node> = Api::all(client.clone());
    let taints = nodes.get(&node).await.expect("node").spec.and_then(|s| s.taints).unwrap_or_default();
    assert!(
        taints.iter().any(|t| t.key == "node.kubernetes.io/not-ready"
            && t.effect == "NoExecute"
            && t.time_added.is_some()),
        "{taints:?}"
    );
    // 300 simulated seconds later the web pod is marked and deleted.
    let marked = tokio::time::timeout(PATIENCE, async {
        while let Some(event) = watch.next().await {
            if let Ok(kube_runtime::watcher::Event::Apply(pod)) = event
                && pod.metadata.name == first.metadata.name
                && let Some(c) = pod_condition(&pod, "DisruptionTarget")
            {
                return c;
            }
        }
        panic!("watch ended");
    })
    .await
    .expect("evicted in time");
    assert_eq!((marked.status.as_str(), marked.reason.as_deref()), ("True", Some("DeletionByTaintManager")));
    let replacement = running(pods.clone()).await;
    assert_ne!(replacement.metadata.name, first.metadata.name);
    assert_ne!(
        replacement.spec.and_then(|s| s.node_name).as_deref(),
        Some(node.as_str()),
        "placed on the ready node"
    );
    let events: Api<Event> = Api::namespaced(client, "shop");
    let name = first.metadata.name.clone().unwrap_or_default();
    let evictions = events
        .list(
            &ListParams::default().fields(&format!("involvedObject.name={name},reason=TaintManagerEviction")),
        )
        .await
        .expect("events")
        .items;
    assert_eq!(evictions.len(), 1);
    assert_eq!(
        evictions[0].message.as_deref(),
        Some(format!("Marking for deletion Pod shop/{name}").as_str())
    );
    let agent = pods.get("agent").await.expect("the tolerating pod stays");
    assert!(agent.metadata.deletion_timestamp.is_none());
}

#[tokio::test]
async fn kubectl_drain_cordons_the_node_and_evicts_its_pods_through_the_eviction_api() {
    let Ok(kubectl) = which_kubectl() else {
        eprintln!("skipped: kubectl is not installed");
        return;
    };
    let sim = cluster(2, 4).await;
    let client = client(&sim);
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> = Api::namespaced(client.clone(), "shop");
    deployments
        .create(&PostParams::default(), &deployment("web", 2, "registry.local/shop/web:1"))
        .await
        .expect("created");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "shop");
    let running_web = || running_pods(&pods, "app=web");
    tokio::time::timeout(PATIENCE, async {
        while running_web().await.len() < 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("two web pods run");
    let on_node_1: Vec<String> = running_web()
        .await
        .into_iter()
        .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some("node-1"))
        .filter_map(|p| p.metadata.name)
        .collect();
    assert_eq!(on_node_1.len(), 1, "the scheduler spreads the two pods over the two nodes");

    let out = tokio::process::Command::new(&kubectl)
        .args(["--server", &sim.url(), "drain", "node-1", "--ignore-daemonsets", "--timeout=30s"])
        .output()
        .await
        .expect("kubectl runs");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "kubectl drain failed: {stderr}\n{stdout}");
    assert!(stdout.contains("node/node-1 cordoned") && stdout.contains("node/node-1 drained"), "{stdout}");
    for name in &on_node_1 {
        assert!(stdout.contains(&format!("pod/{name} evicted")), "{name} evicted:\n{stdout}");
    }
    let evictions =
        sim.requests().into_iter().filter(|r| r.path.ends_with("/eviction") && r.status == 201).count();
    assert_eq!(evictions, on_node_1.len(), "one Eviction per pod that was on the node");
    let nodes: Api<Node> = Api::all(client.clone());
    let node = nodes.get("node-1").await.expect("node");
    assert_eq!(node.spec.and_then(|s| s.unschedulable), Some(true));
    tokio::time::timeout(PATIENCE, async {
        loop {
            let running = running_web().await;
            if running.len() == 2
                && running
                    .iter()
                    .all(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some("node-2"))
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the Deployment runs both pods on the other node");
}

#[tokio::test]
async fn a_pod_deleted_on_an_unreachable_node_stays_terminating_until_the_node_is_back() {
    let sim = cluster(2, 4).await;
    let client = client(&sim);
    let pods: Api<Pod> = Api::namespaced(client.clone(), "shop");
    let pinned: Pod = serde_json::from_value(json!({"metadata": {"name": "db-0"},
        "spec": {"nodeName": "node-1", "containers": [{"name": "db", "image": "registry.local/shop/db:1"}]}}))
    .expect("pod json");
    pods.create(&PostParams::default(), &pinned).await.expect("created");
    wait_for(&pods, "db-0", conditions::is_pod_running()).await;
    let body = r#"{"node": "node-1", "ready": false, "unreachable": true}"#;
    assert_eq!(reqwest_like_post(&sim, "/_sim/nodes/ready", body).await.0, 204);
    let node = Api::<Node>::all(client.clone()).get("node-1").await.expect("node");
    let ready =
        node.status.and_then(|s| s.conditions).unwrap_or_default().into_iter().find(|c| c.type_ == "Ready");
    assert_eq!(
        ready.map(|c| (c.status, c.reason)),
        Some(("Unknown".into(), Some("NodeStatusUnknown".into())))
    );
    let taints = node.spec.and_then(|s| s.taints).unwrap_or_default();
    assert!(
        taints.iter().any(|t| t.key == "node.kubernetes.io/unreachable" && t.effect == "NoExecute"),
        "{taints:?}"
    );

    pods.delete("db-0", &DeleteParams::default()).await.expect("deleting");
    // Well past the grace period (30 simulated seconds, 0.3 s here): nobody confirms the pod stopped.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let stuck = pods.get("db-0").await.expect("still there");
    assert!(stuck.metadata.deletion_timestamp.is_some(), "Terminating");

    let back = r#"{"node": "node-1", "ready": true}"#;
    assert_eq!(reqwest_like_post(&sim, "/_sim/nodes/ready", back).await.0, 204);
    tokio::time::timeout(
        PATIENCE,
        await_condition(
            pods.clone(),
            "db-0",
            conditions::is_deleted(&stuck.metadata.uid.clone().unwrap_or_default()),
        ),
    )
    .await
    .expect("gone once the node is back")
    .expect("watch works");
}
