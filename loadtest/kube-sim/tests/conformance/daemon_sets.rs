//! The DaemonSet controller: a pod on every node that admits it, rolled one node at a time, with
//! ControllerRevisions and the tolerations the real controller adds.

use k8s_openapi::api::{apps::v1::DaemonSet, core::v1::Node};

use super::*;

fn daemon_set(image: &str) -> DaemonSet {
    serde_json::from_value(json!({
        "metadata": {"name": "agent"},
        "spec": {"selector": {"matchLabels": {"app": "agent"}},
            "template": {"metadata": {"labels": {"app": "agent"}},
                "spec": {"containers": [{"name": "agent", "image": image}]}}}
    }))
    .expect("daemonset json")
}

async fn until_ds(
    api: &Api<DaemonSet>,
    cond: impl Fn(&k8s_openapi::api::apps::v1::DaemonSetStatus) -> bool,
) -> DaemonSet {
    tokio::time::timeout(
        PATIENCE,
        await_condition(api.clone(), "agent", move |d: Option<&DaemonSet>| {
            d.and_then(|d| d.status.as_ref()).is_some_and(&cond)
        }),
    )
    .await
    .expect("daemonset condition in time")
    .expect("watch works")
    .expect("daemonset exists")
}

fn nodes_of(pods: &[Pod]) -> Vec<String> {
    let mut nodes: Vec<String> =
        pods.iter().filter_map(|p| p.spec.as_ref().and_then(|s| s.node_name.clone())).collect();
    nodes.sort();
    nodes
}

#[tokio::test]
async fn a_daemon_set_runs_one_pod_per_node_and_follows_a_new_node() {
    let sim = sim().await;
    let client = client(&sim);
    let sets: Api<DaemonSet> = Api::namespaced(client.clone(), "shop");
    sets.create(&PostParams::default(), &daemon_set("registry.local/ops/agent:1")).await.expect("created");
    until_ds(&sets, |s| s.number_ready == 3 && s.desired_number_scheduled == 3).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "shop");
    let running = pods.list(&ListParams::default().labels("app=agent")).await.expect("pods").items;
    assert_eq!(nodes_of(&running), ["sim-node-1", "sim-node-2", "sim-node-3"]);
    let tolerations = running[0].spec.as_ref().and_then(|s| s.tolerations.clone()).unwrap_or_default();
    assert!(
        tolerations.iter().any(|t| t.key.as_deref() == Some("node.kubernetes.io/not-ready")),
        "the controller's tolerations: {tolerations:?}"
    );
    // A fourth node joins: the DaemonSet follows it.
    let nodes: Api<Node> = Api::all(client);
    let node: Node = serde_json::from_value(json!({"metadata": {"name": "late-node"},
        "status": {"allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110"}}}))
    .expect("node json");
    nodes.create(&PostParams::default(), &node).await.expect("node created");
    until_ds(&sets, |s| s.number_ready == 4).await;
    let running = pods.list(&ListParams::default().labels("app=agent")).await.expect("pods").items;
    assert!(nodes_of(&running).contains(&"late-node".to_owned()), "{:?}", nodes_of(&running));
}

#[tokio::test]
async fn a_new_template_rolls_out_node_by_node_to_a_new_controller_revision() {
    let sim = sim().await;
    let client = client(&sim);
    let sets: Api<DaemonSet> = Api::namespaced(client.clone(), "shop");
    sets.create(&PostParams::default(), &daemon_set("registry.local/ops/agent:1")).await.expect("created");
    until_ds(&sets, |s| s.number_ready == 3).await;
    let image = json!({"spec": {"template": {"spec": {"containers": [{"name": "agent", "image": "registry.local/ops/agent:2"}]}}}});
    sets.patch("agent", &kube::api::PatchParams::default(), &kube::api::Patch::Strategic(&image))
        .await
        .expect("patched");
    until_ds(&sets, |s| s.updated_number_scheduled == Some(3) && s.number_ready == 3).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "shop");
    let running = pods.list(&ListParams::default().labels("app=agent")).await.expect("pods").items;
    let live: Vec<&Pod> = running.iter().filter(|p| p.metadata.deletion_timestamp.is_none()).collect();
    assert_eq!(live.len(), 3);
    assert!(live.iter().all(|p| {
        p.spec
            .as_ref()
            .is_some_and(|s| s.containers[0].image.as_deref() == Some("registry.local/ops/agent:2"))
    }));
    let revisions: Api<k8s_openapi::api::apps::v1::ControllerRevision> = Api::namespaced(client, "shop");
    let mut numbers: Vec<i64> = revisions
        .list(&ListParams::default())
        .await
        .expect("revisions")
        .items
        .iter()
        .map(|r| r.revision)
        .collect();
    numbers.sort_unstable();
    assert_eq!(numbers, [1, 2], "one revision per template");
}

#[tokio::test]
async fn kubectl_get_daemonsets_prints_desired_current_ready_and_up_to_date() {
    let Ok(kubectl) = which_kubectl() else {
        eprintln!("skipped: kubectl is not installed");
        return;
    };
    let sim = sim().await;
    let sets: Api<DaemonSet> = Api::namespaced(client(&sim), "shop");
    sets.create(&PostParams::default(), &daemon_set("registry.local/ops/agent:1")).await.expect("created");
    until_ds(&sets, |s| s.number_ready == 3).await;
    let rows = kubectl_rows(&kubectl, &sim, &["-n", "shop", "get", "daemonsets"]).await;
    assert_eq!(
        rows[0],
        ["NAME", "DESIRED", "CURRENT", "READY", "UP-TO-DATE", "AVAILABLE", "NODE", "SELECTOR", "AGE"]
    );
    assert_eq!(&rows[1][..7], ["agent", "3", "3", "3", "3", "3", "<none>"]);
}

#[tokio::test]
async fn with_max_surge_each_node_keeps_a_ready_pod_while_its_new_one_starts_beside_it() {
    use std::collections::BTreeMap;
    let sim = sim().await;
    let client = client(&sim);
    let sets: Api<DaemonSet> = Api::namespaced(client.clone(), "shop");
    let mut set = daemon_set("registry.local/ops/agent:1");
    set.spec.as_mut().expect("spec").update_strategy = Some(
        serde_json::from_value(
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}),
        )
        .expect("strategy"),
    );
    sets.create(&PostParams::default(), &set).await.expect("created");
    until_ds(&sets, |s| s.number_ready == 3).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "shop");
    let mut watch = kube_runtime::watcher(pods, kube_runtime::watcher::Config::default().labels("app=agent"))
        .default_backoff()
        .boxed();
    let image = json!({"spec": {"template": {"spec": {"containers": [{"name": "agent", "image": "registry.local/ops/agent:2"}]}}}});
    sets.patch("agent", &kube::api::PatchParams::default(), &kube::api::Patch::Strategic(&image))
        .await
        .expect("patched");
    // Follow every pod until all three nodes run a ready agent:2, checking each state on the way.
    let (fewest_ready_nodes, most_on_a_node) = tokio::time::timeout(PATIENCE, async {
        let mut live: BTreeMap<String, Pod> = BTreeMap::new();
        let (mut fewest, mut most, mut listed) = (usize::MAX, 0, false);
        while let Some(event) = watch.next().await {
            match event.expect("watch works") {
                kube_runtime::watcher::Event::InitDone => listed = true,
                kube_runtime::watcher::Event::Apply(pod) | kube_runtime::watcher::Event::InitApply(pod) => {
                    let name = pod.metadata.name.clone().unwrap_or_default();
                    if pod.metadata.deletion_timestamp.is_some() {
                        live.remove(&name);
                    } else {
                        live.insert(name, pod);
                    }
                }
                kube_runtime::watcher::Event::Delete(pod) => {
                    live.remove(&pod.metadata.name.clone().unwrap_or_default());
                }
                kube_runtime::watcher::Event::Init => {}
            }
            if !listed {
                continue;
            }
            let node = |p: &Pod| p.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_default();
            let ready = |p: &Pod| {
                p.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            };
            let image =
                |p: &Pod| p.spec.as_ref().and_then(|s| s.containers[0].image.clone()).unwrap_or_default();
            let ready_nodes: std::collections::BTreeSet<String> =
                live.values().filter(|p| ready(p)).map(node).collect();
            fewest = fewest.min(ready_nodes.len());
            let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
            for pod in live.values() {
                *per_node.entry(node(pod)).or_default() += 1;
            }
            most = most.max(per_node.values().copied().max().unwrap_or(0));
            if live.len() == 3 && live.values().all(|p| ready(p) && image(p) == "registry.local/ops/agent:2")
            {
                return (fewest, most);
            }
        }
        panic!("watch ended");
    })
    .await
    .expect("rolled out in time");
    assert_eq!(fewest_ready_nodes, 3, "maxUnavailable 0: no node was ever without a ready agent");
    assert_eq!(most_on_a_node, 2, "the new pod started beside the old one");
}
