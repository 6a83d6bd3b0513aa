//! kube-sim at scale: memory per stored pod, paged-list throughput through kube-rs, and watch fan-out
//! to several watchers. Not a test: it reports numbers so load tests know the simulator is not their
//! bottleneck. Run with `make bench-kube-sim` (release build).

use std::time::{Duration, Instant};

use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, Client,
    api::{ListParams, WatchEvent, WatchParams},
};
use kubesent_kube_sim::{KubeSim, SimConfig, StoreConfig, resources::PODS, store::Mutation};
use serde_json::{Value, json};

const NAMESPACES: usize = 50;
const WATCHERS: usize = 5;
const MODIFICATIONS: usize = 20_000;
/// Pods created through the API per namespace kind.
const API_CREATES: usize = 10_000;
/// Creates in flight at once.
const API_CONCURRENCY: usize = 16;

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).and_then(|p| p.parse::<u64>().ok()))
        .map_or(0, |pages| pages * 4096)
}

/// A pod as the kubelet leaves it: running, with status, labels and owner.
fn pod(i: usize) -> (String, String, Value) {
    let ns = format!("ns-{}", i % NAMESPACES);
    let name = format!("web-7d9c5b7f6-{i:06}");
    let value = json!({
        "metadata": {"name": name, "namespace": ns, "uid": format!("00000000-0000-4000-8000-{i:012}"),
            "creationTimestamp": "2026-11-01T09:00:00Z", "generation": 1,
            "labels": {"app": "web", "pod-template-hash": "7d9c5b7f6"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7d9c5b7f6", "uid": "9f0e2d4c-1b3a-4e5f-8a7b-6c5d4e3f2a10", "controller": true, "blockOwnerDeletion": true}]},
        "spec": {"nodeName": "sim-node-1", "restartPolicy": "Always", "terminationGracePeriodSeconds": 30,
            "containers": [{"name": "app", "image": "registry.local/shop/web:1.4.2",
                "resources": {"requests": {"cpu": "250m", "memory": "256Mi"}, "limits": {"memory": "256Mi"}}}]},
        "status": {"phase": "Running", "qosClass": "Burstable", "podIP": "10.244.1.23", "startTime": "2026-11-01T09:00:02Z",
            "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2026-11-01T09:00:04Z"}],
            "containerStatuses": [{"name": "app", "image": "registry.local/shop/web:1.4.2", "imageID": "registry.local/shop/web@sha256:4f2a9c0d",
                "containerID": "containerd://a81c5e7f", "ready": true, "started": true, "restartCount": 0,
                "state": {"running": {"startedAt": "2026-11-01T09:00:03Z"}}}]}
    });
    (ns, name, value)
}

fn client(sim: &KubeSim) -> Client {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let mut config = kube::Config::new(sim.url().parse().expect("url"));
    config.default_retry = false;
    Client::try_from(config).expect("client")
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let total: usize =
        std::env::var("KUBE_SIM_BENCH_PODS").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000);
    let sim = KubeSim::start(SimConfig {
        store: StoreConfig { history_per_resource: 50_000, watch_buffer: 65_536 },
        ..SimConfig::default()
    })
    .await
    .expect("kube-sim starts");
    let store = sim.state().store.clone();
    let baseline = rss_bytes();
    let mut checkpoint = None;
    let started = Instant::now();
    for i in 0..total {
        let (ns, name, value) = pod(i);
        store.mutate(&PODS, &ns, &name, |_| Ok(Mutation::Put(value))).expect("stored");
        if i + 1 == total / 10 {
            checkpoint = Some((i + 1, rss_bytes()));
        }
    }
    let inserted_in = started.elapsed();
    let full = rss_bytes();
    println!(
        "kube-sim scale benchmark ({} cores)",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!(
        "  stored {total} pods in {:.2}s ({:.0} writes/s)",
        inserted_in.as_secs_f64(),
        total as f64 / inserted_in.as_secs_f64()
    );
    if let Some((count, rss)) = checkpoint {
        let per_pod = (full.saturating_sub(rss)) as f64 / (total - count) as f64;
        println!("  memory per stored pod (RSS growth {count}..{total}): {:.0} bytes", per_pod);
    }
    println!("  RSS: {} MiB before, {} MiB with {total} pods", baseline >> 20, full >> 20);

    // Paged list of every pod through kube-rs, as the watcher's initial list does.
    let pods: Api<Pod> = Api::all(client(&sim));
    let started = Instant::now();
    let mut listed = 0;
    let mut token: Option<String> = None;
    loop {
        let mut params = ListParams::default().limit(500);
        if let Some(t) = &token {
            params = params.continue_token(t);
        }
        let page = pods.list(&params).await.expect("page");
        listed += page.items.len();
        match page.metadata.continue_ {
            Some(t) if !t.is_empty() => token = Some(t),
            _ => break,
        }
    }
    let list_time = started.elapsed();
    println!(
        "  paged list (limit 500) of {listed} pods via kube-rs: {:.2}s ({:.0} pods/s)",
        list_time.as_secs_f64(),
        listed as f64 / list_time.as_secs_f64()
    );

    // Watch fan-out: every watcher must see every modification.
    let rv = store.current_revision().to_string();
    let mut streams = Vec::new();
    for _ in 0..WATCHERS {
        let api: Api<Pod> = Api::all(client(&sim));
        streams.push(api.watch(&WatchParams::default().timeout(290), &rv).await.expect("watch").boxed());
    }
    let counters: Vec<_> = streams
        .into_iter()
        .map(|mut stream| {
            tokio::spawn(async move {
                let mut seen = 0usize;
                while seen < MODIFICATIONS {
                    match stream.try_next().await {
                        Ok(Some(WatchEvent::Modified(_))) => seen += 1,
                        Ok(Some(_)) => {}
                        Ok(None) | Err(_) => break,
                    }
                }
                seen
            })
        })
        .collect();
    let started = Instant::now();
    for i in 0..MODIFICATIONS {
        let (ns, name, mut value) = pod(i % total);
        value["status"]["containerStatuses"][0]["restartCount"] = json!(i);
        store.mutate(&PODS, &ns, &name, |_| Ok(Mutation::Put(value))).expect("modified");
    }
    let mut delivered = 0;
    for counter in counters {
        delivered +=
            tokio::time::timeout(Duration::from_secs(600), counter).await.expect("in time").expect("task");
    }
    let fan_out = started.elapsed();
    println!(
        "  watch fan-out: {MODIFICATIONS} modifications to {WATCHERS} watchers, {delivered} events delivered in {:.2}s ({:.0} events/s)",
        fan_out.as_secs_f64(),
        delivered as f64 / fan_out.as_secs_f64()
    );
    sim.shutdown().await;

    api_creates().await;
}

/// Pods created through the API write path (kube-rs over HTTP, as clients and controllers' creates go):
/// in a namespace with no LimitRange, quota or webhook, and in one with a LimitRange and a quota, so the
/// cost of admission can be read off. Uses only the HTTP API, so the same code measures an older kube-sim.
async fn api_creates() {
    for ns in ["plain", "admitted"] {
        // A fresh cluster each, with room for every pod (25 nodes of 512 pods of 256Mi).
        let nodes = (1..=25)
            .map(|i| kubesent_kube_sim::nodes::NodeConfig::worker(&format!("sim-node-{i}")))
            .collect();
        let sim = KubeSim::start(SimConfig { nodes, ..SimConfig::default() }).await.expect("kube-sim starts");
        let client = client(&sim);
        let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
        let namespace = serde_json::from_value(json!({"metadata": {"name": ns}})).expect("namespace");
        namespaces.create(&Default::default(), &namespace).await.expect("namespace created");
        if ns == "admitted" && !admission_objects(&client, ns).await {
            println!(
                "  (this kube-sim has no LimitRanges or quotas: the admitted namespace is not measured)"
            );
            sim.shutdown().await;
            continue;
        }
        let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
        let started = Instant::now();
        futures::stream::iter(0..API_CREATES)
            .map(|i| {
                let pods = pods.clone();
                async move {
                    let pod: Pod = serde_json::from_value(json!({"metadata": {"name": format!("web-{i:05}"),
                        "labels": {"app": "web"}},
                        "spec": {"containers": [{"name": "app", "image": "registry.local/shop/web:1.4.2",
                            "resources": {"limits": {"memory": "256Mi"}}}]}}))
                    .expect("pod");
                    pods.create(&Default::default(), &pod).await.expect("created");
                }
            })
            .buffer_unordered(API_CONCURRENCY)
            .collect::<Vec<()>>()
            .await;
        let took = started.elapsed();
        println!(
            "  API creates in namespace {ns:?}: {API_CREATES} pods via kube-rs, {API_CONCURRENCY} at a time, in {:.2}s ({:.0} creates/s)",
            took.as_secs_f64(),
            API_CREATES as f64 / took.as_secs_f64()
        );
        sim.shutdown().await;
    }
}

/// Creates a LimitRange and a ResourceQuota in `ns`; false when this kube-sim does not serve them.
async fn admission_objects(client: &Client, ns: &str) -> bool {
    let dynamic = |kind: &str, plural: &str| {
        let gvk = kube::api::GroupVersionKind::gvk("", "v1", kind);
        let resource = kube::api::ApiResource::from_gvk_with_plural(&gvk, plural);
        Api::<kube::api::DynamicObject>::namespaced_with(client.clone(), ns, &resource)
    };
    let limit_range = json!({"apiVersion": "v1", "kind": "LimitRange", "metadata": {"name": "defaults"},
        "spec": {"limits": [{"type": "Container", "default": {"memory": "256Mi"}, "defaultRequest": {"memory": "128Mi"},
            "max": {"memory": "4Gi"}}]}});
    let quota = json!({"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "team"},
        "spec": {"hard": {"pods": "100000", "limits.memory": "10000Gi"}}});
    dynamic("LimitRange", "limitranges")
        .create(&Default::default(), &serde_json::from_value(limit_range).expect("limit range"))
        .await
        .is_ok()
        && dynamic("ResourceQuota", "resourcequotas")
            .create(&Default::default(), &serde_json::from_value(quota).expect("quota"))
            .await
            .is_ok()
}
