//! kube-sim against the real clients: kube-rs, kube-runtime's watcher and `kubectl --server`.

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, Client,
    api::{DeleteParams, ListParams, LogParams, PostParams, Preconditions, WatchEvent, WatchParams},
};
use kube_runtime::{
    WatchStreamExt as _,
    wait::{await_condition, conditions},
    watcher,
};
use kubesent_kube_sim::{KubeSim, SimConfig};
use serde_json::json;

/// Fast kubelet: 1 simulated second = 10 ms.
const FAST: f64 = 0.01;
/// Upper bound for anything a test waits on; the simulated kubelet needs far less.
const PATIENCE: Duration = Duration::from_secs(20);

async fn sim() -> KubeSim {
    KubeSim::start(SimConfig { time_scale: FAST, ..SimConfig::default() }).await.expect("kube-sim starts")
}

/// The pod's condition of type `kind`, if it has one.
fn pod_condition(pod: &Pod, kind: &str) -> Option<k8s_openapi::api::core::v1::PodCondition> {
    pod.status.as_ref()?.conditions.as_ref()?.iter().find(|c| c.type_ == kind).cloned()
}

fn client(sim: &KubeSim) -> Client {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let mut config = kube::Config::new(sim.url().parse().expect("url"));
    config.default_retry = false;
    Client::try_from(config).expect("client")
}

fn pod(name: &str, limit: &str, need: &str) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "annotations": {"sim.kubesent.io/memory-need": need}},
        "spec": {"containers": [{"name": "app", "image": "registry.local/shop/web:1.4.2",
            "resources": {"limits": {"memory": limit}}}]}
    }))
    .expect("pod json")
}

fn last_terminated_reason(pod: &Pod) -> Option<String> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .first()?
        .last_state
        .as_ref()?
        .terminated
        .as_ref()?
        .reason
        .clone()
}

async fn wait_for(api: &Api<Pod>, name: &str, cond: impl kube_runtime::wait::Condition<Pod>) -> Pod {
    tokio::time::timeout(PATIENCE, await_condition(api.clone(), name, cond))
        .await
        .expect("condition reached in time")
        .expect("watch works")
        .expect("pod exists")
}

/// POSTs a raw body with a plain TCP client, so the test controls every byte.
async fn reqwest_like_post(sim: &KubeSim, path: &str, body: &str) -> (u16, serde_json::Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(sim.addr()).await.expect("connect");
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read");
    let code = response.split_whitespace().nth(1).and_then(|c| c.parse().ok()).expect("status line");
    let json_start = response.find("\r\n\r\n").map(|i| i + 4).expect("body");
    let body = &response[json_start..];
    // 204 No Content has no body.
    (
        code,
        if body.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_str(body).expect("json body")
        },
    )
}

fn which_kubectl() -> Result<std::path::PathBuf, ()> {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("kubectl"))
        .find(|p| p.is_file())
        .ok_or(())
}

/// Runs `kubectl --server <sim> <args>` and returns what it printed as rows of whitespace-separated cells.
async fn kubectl_rows(kubectl: &std::path::Path, sim: &KubeSim, args: &[&str]) -> Vec<Vec<String>> {
    let out = tokio::process::Command::new(kubectl)
        .arg("--server")
        .arg(sim.url())
        .args(args)
        .output()
        .await
        .expect("kubectl runs");
    assert!(out.status.success(), "kubectl {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.split_whitespace().map(str::to_owned).collect())
        .collect()
}

/// Runs `kubectl --server <sim> <args>` with `input` on its standard input.
async fn kubectl_with_input(
    kubectl: &std::path::Path,
    sim: &KubeSim,
    args: &[&str],
    input: &str,
) -> std::process::Output {
    use tokio::io::AsyncWriteExt as _;
    let mut child = tokio::process::Command::new(kubectl)
        .arg("--server")
        .arg(sim.url())
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("kubectl runs");
    {
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(input.as_bytes()).await.expect("written");
    }
    child.wait_with_output().await.expect("kubectl ends")
}

/// The first object of `api` (as listed, then as it changes) that `done` holds for, within [`PATIENCE`].
async fn first_that<K>(api: Api<K>, what: &str, done: impl Fn(&K) -> bool) -> K
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
{
    let stream = watcher(api, watcher::Config::default()).applied_objects();
    let found = async {
        futures::pin_mut!(stream);
        while let Some(object) = stream.try_next().await.expect("watch") {
            if done(&object) {
                return object;
            }
        }
        panic!("the watch of {what} ended");
    };
    tokio::time::timeout(PATIENCE, found).await.unwrap_or_else(|_| panic!("{what} in time"))
}

fn deployment(name: &str, replicas: i32, image: &str) -> k8s_openapi::api::apps::v1::Deployment {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": image, "resources": {"limits": {"memory": "256Mi"}}}]}}}
    }))
    .expect("deployment json")
}

async fn wait_deployment(
    api: &Api<k8s_openapi::api::apps::v1::Deployment>,
    name: &str,
    cond: impl Fn(&k8s_openapi::api::apps::v1::Deployment) -> bool,
) -> k8s_openapi::api::apps::v1::Deployment {
    tokio::time::timeout(
        PATIENCE,
        await_condition(api.clone(), name, move |d: Option<&k8s_openapi::api::apps::v1::Deployment>| {
            d.is_some_and(&cond)
        }),
    )
    .await
    .expect("deployment condition in time")
    .expect("watch works")
    .expect("deployment exists")
}

fn status_of(d: &k8s_openapi::api::apps::v1::Deployment) -> (i32, i32, i32) {
    let s = d.status.clone().unwrap_or_default();
    (s.replicas.unwrap_or(0), s.updated_replicas.unwrap_or(0), s.available_replicas.unwrap_or(0))
}

/// Follows the pods of `api` with a watcher until `done` holds for the current set.
async fn pods_until(api: &Api<Pod>, done: impl Fn(&[Pod]) -> bool) -> Vec<Pod> {
    let mut current: std::collections::BTreeMap<String, Pod> = std::collections::BTreeMap::new();
    let mut events = watcher(api.clone(), watcher::Config::default()).boxed();
    let mut listed = false;
    tokio::time::timeout(PATIENCE, async {
        loop {
            match events.try_next().await.expect("watch ok").expect("stream open") {
                watcher::Event::Init => current.clear(),
                watcher::Event::InitApply(p) | watcher::Event::Apply(p) => {
                    current.insert(p.metadata.name.clone().unwrap_or_default(), p);
                }
                watcher::Event::Delete(p) => {
                    current.remove(p.metadata.name.as_deref().unwrap_or_default());
                }
                watcher::Event::InitDone => listed = true,
            }
            let pods: Vec<Pod> = current.values().cloned().collect();
            if listed && done(&pods) {
                return pods;
            }
        }
    })
    .await
    .expect("pods reached the expected state in time")
}

fn container_status(pod: &Pod) -> Option<k8s_openapi::api::core::v1::ContainerStatus> {
    pod.status.as_ref()?.container_statuses.as_ref()?.first().cloned()
}

fn waiting_reason(pod: &Pod) -> Option<String> {
    container_status(pod)?.state?.waiting?.reason
}

async fn events_for(client: &Client, pod: &str) -> Vec<(String, String)> {
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client.clone(), "shop");
    let selector = format!("involvedObject.name={pod},involvedObject.kind=Pod");
    events
        .list(&ListParams::default().fields(&selector))
        .await
        .expect("events")
        .items
        .into_iter()
        .map(|e| (e.reason.unwrap_or_default(), e.message.unwrap_or_default()))
        .collect()
}

fn plain_pod(name: &str, image: &str) -> Pod {
    serde_json::from_value(
        json!({"metadata": {"name": name}, "spec": {"containers": [{"name": "app", "image": image}]}}),
    )
    .expect("pod")
}

fn client_with_token(sim: &KubeSim, token: &str) -> Client {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let mut config = kube::Config::new(sim.url().parse().expect("url"));
    config.default_retry = false;
    config.auth_info.token = Some(token.to_owned().into());
    Client::try_from(config).expect("client")
}

const RBAC_YAML: &str = include_str!("../../../../deploy/base/rbac.yaml");

type PodEvents = futures::stream::BoxStream<'static, Result<watcher::Event<Pod>, watcher::Error>>;

/// Waits for the watcher to report `name` as applied.
async fn expect_apply(events: &mut PodEvents, name: &str) -> Pod {
    tokio::time::timeout(PATIENCE, async {
        loop {
            if let watcher::Event::Apply(p) = events.try_next().await.expect("ok").expect("open")
                && p.metadata.name.as_deref() == Some(name)
            {
                return p;
            }
        }
    })
    .await
    .expect("event in time")
}

fn with_readiness_probe(mut pod: Pod, initial_delay_seconds: i32) -> Pod {
    let container = &mut pod.spec.as_mut().expect("spec").containers[0];
    container.readiness_probe = Some(
        serde_json::from_value(
            json!({"httpGet": {"path": "/ready", "port": 8080}, "initialDelaySeconds": initial_delay_seconds}),
        )
        .expect("probe json"),
    );
    pod
}

fn ready(pod: &Pod) -> bool {
    container_status(pod).is_some_and(|cs| cs.ready)
        && pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

mod admission;
mod api;
mod autoscalers;
mod controllers;
mod daemon_sets;
mod field_managers;
mod jobs;
mod kubectl;
mod kubelet;
mod namespaces;
mod nodes;
mod watch;
mod webhooks;
