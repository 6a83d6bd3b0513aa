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

#[tokio::test]
async fn an_under_provisioned_container_is_oom_killed_and_crash_loops() {
    let sim = sim().await;
    let pods: Api<Pod> = Api::namespaced(client(&sim), "shop");
    pods.create(&PostParams::default(), &pod("web-1", "128Mi", "200Mi")).await.expect("created");
    let crashed = wait_for(&pods, "web-1", |p: Option<&Pod>| {
        p.and_then(last_terminated_reason).as_deref() == Some("OOMKilled")
            && p.and_then(|p| {
                p.status.as_ref()?.container_statuses.as_ref()?.first()?.state.as_ref()?.waiting.clone()
            })
            .is_some_and(|w| w.reason.as_deref() == Some("CrashLoopBackOff"))
    })
    .await;
    let status = &crashed.status.expect("status").container_statuses.expect("statuses")[0];
    let terminated = status.last_state.as_ref().and_then(|s| s.terminated.as_ref()).expect("terminated");
    assert_eq!(terminated.exit_code, 137);
    assert!(status.restart_count >= 1);
    let message = status
        .state
        .as_ref()
        .and_then(|s| s.waiting.as_ref())
        .and_then(|w| w.message.clone())
        .expect("message");
    assert!(message.starts_with("back-off 10s restarting failed container=app pod=web-1_shop("), "{message}");

    let previous = pods
        .logs("web-1", &LogParams { previous: true, ..LogParams::default() })
        .await
        .expect("previous logs");
    assert!(previous.contains("allocating"), "{previous}");
}

#[tokio::test]
async fn a_container_with_enough_memory_runs() {
    let sim = sim().await;
    let pods: Api<Pod> = Api::namespaced(client(&sim), "shop");
    pods.create(&PostParams::default(), &pod("web-2", "256Mi", "200Mi")).await.expect("created");
    wait_for(&pods, "web-2", conditions::is_pod_running()).await;
    let err = pods
        .logs("web-2", &LogParams { previous: true, ..LogParams::default() })
        .await
        .expect_err("no previous");
    let kube::Error::Api(status) = err else { panic!("expected a Status, got {err:?}") };
    assert_eq!(status.code, 400);
    assert_eq!(status.message, "previous terminated container \"app\" in pod \"web-2\" not found");
}

#[tokio::test]
async fn delete_preconditions_are_enforced_and_graceful_delete_ends_in_deleted() {
    let sim = sim().await;
    let pods: Api<Pod> = Api::namespaced(client(&sim), "shop");
    let created = pods.create(&PostParams::default(), &pod("web-3", "256Mi", "1Mi")).await.expect("created");
    let uid = created.metadata.uid.clone().expect("uid");
    wait_for(&pods, "web-3", conditions::is_pod_running()).await;

    let wrong = DeleteParams {
        preconditions: Some(Preconditions { uid: Some("not-the-uid".into()), resource_version: None }),
        ..DeleteParams::default()
    };
    let err = pods.delete("web-3", &wrong).await.expect_err("precondition fails");
    let kube::Error::Api(status) = err else { panic!("expected a Status") };
    assert_eq!((status.code, status.reason.as_str()), (409, "Conflict"));
    assert!(
        status.message.contains("Precondition failed: UID in precondition: not-the-uid"),
        "{}",
        status.message
    );

    let right = DeleteParams {
        preconditions: Some(Preconditions { uid: Some(uid.clone()), resource_version: None }),
        ..DeleteParams::default()
    };
    let answer = pods.delete("web-3", &right).await.expect("deleted");
    let terminating = answer.left().expect("pods return the object, not a Status");
    assert!(terminating.metadata.deletion_timestamp.is_some());

    let err = pods
        .create(&PostParams::default(), &pod("web-3", "256Mi", "1Mi"))
        .await
        .expect_err("name still taken");
    let kube::Error::Api(status) = err else { panic!("expected a Status") };
    assert_eq!((status.code, status.reason.as_str()), (409, "AlreadyExists"));

    tokio::time::timeout(PATIENCE, await_condition(pods.clone(), "web-3", conditions::is_deleted(&uid)))
        .await
        .expect("deleted in time")
        .expect("watch works");
}

#[tokio::test]
async fn malformed_and_invalid_requests_get_status_errors() {
    let sim = sim().await;
    let http = reqwest_like_post(&sim, "/api/v1/namespaces/shop/pods", "{not json").await;
    assert_eq!(http.0, 400);
    assert_eq!(http.1["kind"], "Status");
    assert_eq!(http.1["reason"], "BadRequest");

    let pods: Api<Pod> = Api::namespaced(client(&sim), "shop");
    let invalid: Pod =
        serde_json::from_value(json!({"metadata": {"name": "x"}, "spec": {"containers": []}})).expect("json");
    let err = pods.create(&PostParams::default(), &invalid).await.expect_err("invalid");
    let kube::Error::Api(status) = err else { panic!("expected a Status") };
    assert_eq!((status.code, status.reason.as_str()), (422, "Invalid"));
    assert_eq!(status.message, "Pod \"x\" is invalid: spec.containers: Required value");

    let err = pods
        .list(&ListParams::default().fields("spec.containers.image=x"))
        .await
        .expect_err("unsupported field");
    let kube::Error::Api(status) = err else { panic!("expected a Status") };
    assert_eq!(
        (status.code, status.message.as_str()),
        (400, "field label not supported: spec.containers.image")
    );
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
    (code, serde_json::from_str(&response[json_start..]).expect("json body"))
}

#[tokio::test]
async fn the_watcher_lists_pages_then_streams_changes() {
    let sim = sim().await;
    let pods: Api<Pod> = Api::all(client(&sim));
    let shop: Api<Pod> = Api::namespaced(client(&sim), "shop");
    for i in 0..5 {
        shop.create(&PostParams::default(), &pod(&format!("pre-{i}"), "256Mi", "1Mi"))
            .await
            .expect("created");
    }
    let config = watcher::Config::default().page_size(2);
    let mut events = watcher(pods, config).boxed();
    let mut initial = 0;
    loop {
        match events.try_next().await.expect("watch ok").expect("stream open") {
            watcher::Event::InitApply(_) => initial += 1,
            watcher::Event::InitDone => break,
            _ => {}
        }
    }
    assert_eq!(initial, 5);
    shop.create(&PostParams::default(), &pod("late", "256Mi", "1Mi")).await.expect("created");
    let seen = tokio::time::timeout(PATIENCE, async {
        while let Some(event) = events.try_next().await.expect("watch ok") {
            if let watcher::Event::Apply(p) = event
                && p.metadata.name.as_deref() == Some("late")
            {
                return true;
            }
        }
        false
    })
    .await
    .expect("in time");
    assert!(seen);
    assert!(
        sim.requests().iter().any(|r| r.query.contains("continue=")),
        "the watcher paged through the list"
    );
}

#[tokio::test]
async fn a_watch_from_an_expired_resource_version_gets_an_in_stream_410() {
    let sim = KubeSim::start(SimConfig {
        time_scale: FAST,
        store: kubesent_kube_sim::StoreConfig { history_per_resource: 2, watch_buffer: 64 },
        ..SimConfig::default()
    })
    .await
    .expect("starts");
    let pods: Api<Pod> = Api::namespaced(client(&sim), "shop");
    let first = pods.create(&PostParams::default(), &pod("a", "256Mi", "1Mi")).await.expect("created");
    let old_rv = first.metadata.resource_version.expect("rv");
    // The kubelet's status updates push the first revision out of the 3-event history.
    wait_for(&pods, "a", conditions::is_pod_running()).await;
    let mut stream =
        pods.watch(&WatchParams::default().timeout(5), &old_rv).await.expect("watch starts").boxed();
    match stream.next().await {
        Some(Ok(WatchEvent::Error(status))) => {
            assert_eq!(status.code, 410);
            assert!(
                status.message.starts_with(&format!("too old resource version: {old_rv} (")),
                "{}",
                status.message
            );
        }
        other => panic!("expected an ERROR event, got {other:?}"),
    }
}

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

fn which_kubectl() -> Result<std::path::PathBuf, ()> {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("kubectl"))
        .find(|p| p.is_file())
        .ok_or(())
}

#[tokio::test]
async fn bookmarks_come_only_when_asked_and_timeout_seconds_closes_the_watch() {
    let sim = KubeSim::start(SimConfig {
        time_scale: FAST,
        bookmark_interval: Duration::from_millis(100),
        ..SimConfig::default()
    })
    .await
    .expect("starts");
    let pods: Api<Pod> = Api::namespaced(client(&sim), "shop");
    let created = pods.create(&PostParams::default(), &pod("a", "256Mi", "1Mi")).await.expect("created");
    let rv = created.metadata.resource_version.expect("rv");

    let with = pods.watch(&WatchParams::default().timeout(1), &rv).await.expect("watch").boxed();
    let events: Vec<_> =
        tokio::time::timeout(PATIENCE, with.collect::<Vec<_>>()).await.expect("closed after timeoutSeconds");
    let bookmarks = events.iter().filter(|e| matches!(e, Ok(WatchEvent::Bookmark(_)))).count();
    assert!(bookmarks >= 2, "periodic bookmarks and one before the timeout, got {bookmarks}");

    let without =
        pods.watch(&WatchParams::default().disable_bookmarks().timeout(1), &rv).await.expect("watch").boxed();
    let events: Vec<_> = tokio::time::timeout(PATIENCE, without.collect::<Vec<_>>())
        .await
        .expect("closed after timeoutSeconds");
    assert!(events.iter().all(|e| !matches!(e, Ok(WatchEvent::Bookmark(_)))), "no bookmark unless asked");
    assert!(
        events.iter().any(|e| matches!(e, Ok(WatchEvent::Modified(_)))),
        "the kubelet's status updates are streamed"
    );
}

#[tokio::test]
async fn a_lease_update_without_resource_version_is_invalid_and_a_stale_one_conflicts() {
    use k8s_openapi::api::coordination::v1::Lease;
    let sim = sim().await;
    let leases: Api<Lease> = Api::namespaced(client(&sim), "kubesent");
    let lease: Lease =
        serde_json::from_value(json!({"metadata": {"name": "remediator"}, "spec": {"holderIdentity": "a"}}))
            .expect("lease");
    let created = leases.create(&PostParams::default(), &lease).await.expect("created");

    let err = leases
        .replace("remediator", &PostParams::default(), &lease)
        .await
        .expect_err("needs a resourceVersion");
    let kube::Error::Api(status) = err else { panic!("expected a Status") };
    assert_eq!(status.code, 422);
    assert_eq!(
        status.message,
        "Lease.coordination.k8s.io \"remediator\" is invalid: metadata.resourceVersion: Invalid value: 0x0: must be specified for an update"
    );

    let mut update = created.clone();
    update.spec.as_mut().expect("spec").holder_identity = Some("b".into());
    leases
        .replace("remediator", &PostParams::default(), &update)
        .await
        .expect("current resourceVersion is accepted");
    let err = leases.replace("remediator", &PostParams::default(), &update).await.expect_err("now stale");
    let kube::Error::Api(status) = err else { panic!("expected a Status") };
    assert_eq!((status.code, status.reason.as_str()), (409, "Conflict"));
}

#[tokio::test]
async fn status_updates_change_only_the_status() {
    let sim = sim().await;
    let pods: Api<Pod> = Api::namespaced(client(&sim), "shop");
    pods.create(&PostParams::default(), &pod("s", "256Mi", "1Mi")).await.expect("created");
    let patch = json!({"status": {"phase": "Failed", "reason": "Evicted"}, "spec": {"containers": [{"name": "app", "image": "other:2"}]}});
    let patched = pods
        .patch_status("s", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&patch))
        .await
        .expect("status patched");
    assert_eq!(patched.status.as_ref().and_then(|s| s.reason.as_deref()), Some("Evicted"));
    assert_eq!(
        patched.spec.expect("spec").containers[0].image.as_deref(),
        Some("registry.local/shop/web:1.4.2")
    );
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

#[tokio::test]
async fn a_deployment_runs_its_pods_through_a_replica_set_with_a_template_hash() {
    use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
    let sim = sim().await;
    let client = client(&sim);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "shop");
    deployments
        .create(&PostParams::default(), &deployment("web", 3, "registry.local/shop/web:1"))
        .await
        .expect("created");
    let ready = wait_deployment(&deployments, "web", |d| status_of(d) == (3, 3, 3)).await;
    assert_eq!(
        ready
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("deployment.kubernetes.io/revision"))
            .map(String::as_str),
        Some("1")
    );

    let sets: Vec<ReplicaSet> = Api::<ReplicaSet>::namespaced(client.clone(), "shop")
        .list(&ListParams::default())
        .await
        .expect("list")
        .items;
    assert_eq!(sets.len(), 1);
    let rs = &sets[0];
    let hash =
        rs.metadata.labels.as_ref().and_then(|l| l.get("pod-template-hash")).cloned().expect("hash label");
    assert_eq!(rs.metadata.name.as_deref(), Some(format!("web-{hash}").as_str()));
    let owner = &rs.metadata.owner_references.as_ref().expect("owner")[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str(), owner.controller),
        ("Deployment", "web", Some(true))
    );

    let pods = Api::<Pod>::namespaced(client, "shop")
        .list(&ListParams::default().labels(&format!("pod-template-hash={hash}")))
        .await
        .expect("pods");
    assert_eq!(pods.items.len(), 3);
    for pod in &pods.items {
        assert!(pod.metadata.name.as_deref().is_some_and(|n| n.starts_with(&format!("web-{hash}-"))));
        let owner = &pod.metadata.owner_references.as_ref().expect("owner")[0];
        assert_eq!((owner.kind.as_str(), owner.controller), ("ReplicaSet", Some(true)));
    }
}

#[tokio::test]
async fn a_template_change_rolls_out_a_new_revision_and_keeps_the_old_one_in_history() {
    use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
    let sim = sim().await;
    let client = client(&sim);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "shop");
    deployments
        .create(&PostParams::default(), &deployment("web", 2, "registry.local/shop/web:1"))
        .await
        .expect("created");
    wait_deployment(&deployments, "web", |d| status_of(d) == (2, 2, 2)).await;
    let patch = json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": "registry.local/shop/web:2"}]}}}});
    deployments
        .patch("web", &kube::api::PatchParams::default(), &kube::api::Patch::Strategic(&patch))
        .await
        .expect("patched");
    let rolled = wait_deployment(&deployments, "web", |d| {
        status_of(d) == (2, 2, 2)
            && d.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get("deployment.kubernetes.io/revision"))
                .map(String::as_str)
                == Some("2")
            && d.status.as_ref().and_then(|s| s.observed_generation) == d.metadata.generation
    })
    .await;
    assert_eq!(rolled.metadata.generation, Some(2));
    let sets: Vec<ReplicaSet> = Api::<ReplicaSet>::namespaced(client.clone(), "shop")
        .list(&ListParams::default())
        .await
        .expect("list")
        .items;
    assert_eq!(sets.len(), 2, "the old ReplicaSet stays as revision history");
    let by_revision = |r: &str| {
        sets.iter()
            .find(|rs| {
                rs.metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get("deployment.kubernetes.io/revision"))
                    .map(String::as_str)
                    == Some(r)
            })
            .expect("revision")
    };
    assert_eq!(by_revision("1").spec.as_ref().and_then(|s| s.replicas), Some(0));
    assert_eq!(by_revision("2").spec.as_ref().and_then(|s| s.replicas), Some(2));
    let old_image = by_revision("1")
        .spec
        .as_ref()
        .and_then(|s| s.template.as_ref())
        .and_then(|t| t.spec.as_ref())
        .map(|s| s.containers[0].image.clone());
    assert_eq!(
        old_image,
        Some(Some("registry.local/shop/web:1".into())),
        "the previous revision's image is readable"
    );
    let pods = pods_until(&Api::namespaced(client.clone(), "shop"), |pods| {
        pods.len() == 2
            && pods.iter().all(|p| {
                p.spec.as_ref().and_then(|s| s.containers[0].image.clone()).as_deref()
                    == Some("registry.local/shop/web:2")
            })
    })
    .await;
    assert_eq!(pods.len(), 2);
}

#[tokio::test]
async fn a_stateful_set_creates_ordinal_pods_in_order() {
    use k8s_openapi::api::apps::v1::StatefulSet;
    let sim = sim().await;
    let client = client(&sim);
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), "shop");
    let sts: StatefulSet = serde_json::from_value(json!({"metadata": {"name": "db"},
        "spec": {"replicas": 3, "serviceName": "db", "selector": {"matchLabels": {"app": "db"}},
            "template": {"metadata": {"labels": {"app": "db"}}, "spec": {"containers": [{"name": "db", "image": "registry.local/db:1"}]}}}}))
    .expect("sts json");
    sets.create(&PostParams::default(), &sts).await.expect("created");
    tokio::time::timeout(
        PATIENCE,
        await_condition(sets.clone(), "db", |s: Option<&StatefulSet>| {
            s.and_then(|s| s.status.as_ref()).is_some_and(|st| st.ready_replicas == Some(3))
        }),
    )
    .await
    .expect("ready in time")
    .expect("watch works");
    let pods = Api::<Pod>::namespaced(client, "shop").list(&ListParams::default()).await.expect("pods").items;
    let mut names: Vec<String> = pods.iter().filter_map(|p| p.metadata.name.clone()).collect();
    names.sort();
    assert_eq!(names, ["db-0", "db-1", "db-2"]);
    let created: Vec<_> = ["db-0", "db-1", "db-2"]
        .iter()
        .map(|n| {
            pods.iter()
                .find(|p| p.metadata.name.as_deref() == Some(n))
                .and_then(|p| p.metadata.resource_version.clone())
                .and_then(|rv| rv.parse::<u64>().ok())
        })
        .collect();
    assert!(pods.iter().all(|p| {
        p.metadata
            .labels
            .as_ref()
            .is_some_and(|l| l.get("controller-revision-hash").is_some_and(|h| h.starts_with("db-")))
    }));
    let owner = pods[0].metadata.owner_references.as_ref().expect("owner")[0].clone();
    assert_eq!((owner.kind.as_str(), owner.controller), ("StatefulSet", Some(true)));
    assert_eq!(created.len(), 3);
}

#[tokio::test]
async fn deleting_a_deployment_garbage_collects_its_replica_sets_and_pods() {
    use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
    let sim = sim().await;
    let client = client(&sim);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "shop");
    deployments
        .create(&PostParams::default(), &deployment("web", 2, "registry.local/shop/web:1"))
        .await
        .expect("created");
    wait_deployment(&deployments, "web", |d| status_of(d) == (2, 2, 2)).await;
    deployments.delete("web", &DeleteParams::default()).await.expect("deleted");
    pods_until(&Api::namespaced(client.clone(), "shop"), |pods| pods.is_empty()).await;
    let sets =
        Api::<ReplicaSet>::namespaced(client, "shop").list(&ListParams::default()).await.expect("rs").items;
    assert!(sets.is_empty(), "the ReplicaSet is collected too");
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

#[tokio::test]
async fn a_missing_image_backs_off_with_the_kubelets_messages_and_events() {
    let sim = sim().await;
    sim.state().registry.set("registry.local/shop/web:9.9.9", kubesent_kube_sim::ImageState::Missing);
    let client = client(&sim);
    let pods: Api<Pod> = Api::namespaced(client.clone(), "shop");
    pods.create(&PostParams::default(), &plain_pod("web-9", "registry.local/shop/web:9.9.9"))
        .await
        .expect("created");
    let pod = wait_for(&pods, "web-9", |p: Option<&Pod>| {
        p.and_then(waiting_reason).as_deref() == Some("ImagePullBackOff")
    })
    .await;
    let message = container_status(&pod).and_then(|s| s.state?.waiting?.message).expect("message");
    assert!(message.starts_with("Back-off pulling image \"registry.local/shop/web:9.9.9\": ErrImagePull: rpc error: code = NotFound"), "{message}");
    assert!(message.ends_with("registry.local/shop/web:9.9.9: not found"), "{message}");
    let reasons: Vec<String> = events_for(&client, "web-9").await.into_iter().map(|(r, _)| r).collect();
    for expected in ["Scheduled", "Pulling", "Failed", "BackOff"] {
        assert!(reasons.iter().any(|r| r == expected), "missing {expected} in {reasons:?}");
    }
    let err = pods.logs("web-9", &LogParams::default()).await.expect_err("no logs yet");
    let kube::Error::Api(status) = err else { panic!("expected a Status") };
    assert_eq!(
        status.message,
        "container \"app\" in pod \"web-9\" is waiting to start: trying and failing to pull image"
    );
}

#[tokio::test]
async fn a_private_image_needs_a_pull_secret_that_exists() {
    use k8s_openapi::api::core::v1::Secret;
    let sim = sim().await;
    sim.state().registry.set("registry.local/private/app", kubesent_kube_sim::ImageState::Private);
    let client = client(&sim);
    let pods: Api<Pod> = Api::namespaced(client.clone(), "shop");
    pods.create(&PostParams::default(), &plain_pod("no-secret", "registry.local/private/app:1"))
        .await
        .expect("created");
    let pod = wait_for(&pods, "no-secret", |p: Option<&Pod>| {
        p.and_then(waiting_reason).as_deref() == Some("ImagePullBackOff")
    })
    .await;
    let message = container_status(&pod).and_then(|s| s.state?.waiting?.message).expect("message");
    assert!(message.contains("pull access denied") && message.contains("authorization failed"), "{message}");

    let secret: Secret = serde_json::from_value(
        json!({"metadata": {"name": "regcred"}, "type": "kubernetes.io/dockerconfigjson",
        "data": {".dockerconfigjson": "e30="}}),
    )
    .expect("secret");
    Api::<Secret>::namespaced(client.clone(), "shop")
        .create(&PostParams::default(), &secret)
        .await
        .expect("secret created");
    let mut with_secret = plain_pod("with-secret", "registry.local/private/app:1");
    with_secret.spec.as_mut().expect("spec").image_pull_secrets =
        Some(vec![k8s_openapi::api::core::v1::LocalObjectReference { name: "regcred".into() }]);
    pods.create(&PostParams::default(), &with_secret).await.expect("created");
    wait_for(&pods, "with-secret", conditions::is_pod_running()).await;
}

#[tokio::test]
async fn a_missing_config_map_key_is_a_config_error_until_the_key_exists() {
    use k8s_openapi::api::core::v1::ConfigMap;
    let sim = sim().await;
    let client = client(&sim);
    let pods: Api<Pod> = Api::namespaced(client.clone(), "shop");
    let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "cfg"}, "spec": {"containers": [{"name": "app", "image": "web:1",
        "env": [{"name": "DB_URL", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "db_url"}}}]}]}})).expect("pod");
    pods.create(&PostParams::default(), &pod).await.expect("created");
    let failing = wait_for(&pods, "cfg", |p: Option<&Pod>| {
        p.and_then(waiting_reason).as_deref() == Some("CreateContainerConfigError")
    })
    .await;
    let message = container_status(&failing).and_then(|s| s.state?.waiting?.message);
    assert_eq!(message.as_deref(), Some("configmap \"settings\" not found"));

    let configs: Api<ConfigMap> = Api::namespaced(client.clone(), "shop");
    let partial: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "settings"}, "data": {"other": "x"}}))
            .expect("cm");
    configs.create(&PostParams::default(), &partial).await.expect("cm created");
    wait_for(&pods, "cfg", |p: Option<&Pod>| {
        p.and_then(container_status).and_then(|s| s.state?.waiting?.message).as_deref()
            == Some("couldn't find key db_url in ConfigMap shop/settings")
    })
    .await;
    let fixed = json!({"data": {"db_url": "postgres://db"}});
    configs
        .patch("settings", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&fixed))
        .await
        .expect("patched");
    wait_for(&pods, "cfg", conditions::is_pod_running()).await;
}

#[tokio::test]
async fn a_scripted_exit_code_crash_loops_with_its_logs() {
    let sim = sim().await;
    let pods: Api<Pod> = Api::namespaced(client(&sim), "shop");
    let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "crash", "annotations": {
        "sim.kubesent.io/exit-code": "3", "sim.kubesent.io/logs": "connecting to db:5432\nerror: connection refused"}},
        "spec": {"containers": [{"name": "app", "image": "web:1"}]}})).expect("pod");
    pods.create(&PostParams::default(), &pod).await.expect("created");
    let looping = wait_for(&pods, "crash", |p: Option<&Pod>| {
        p.and_then(waiting_reason).as_deref() == Some("CrashLoopBackOff")
    })
    .await;
    let last = container_status(&looping).and_then(|s| s.last_state?.terminated).expect("last termination");
    assert_eq!((last.exit_code, last.reason.as_deref()), (3, Some("Error")));
    let logs = pods
        .logs("crash", &LogParams { previous: true, tail_lines: Some(2), ..LogParams::default() })
        .await
        .expect("logs");
    assert_eq!(logs, "error: connection refused\nfatal: exiting with status 3\n");
}

#[tokio::test]
async fn resizing_memory_in_place_heals_an_oom_loop_only_when_the_new_limit_is_enough() {
    let sim = sim().await;
    let pods: Api<Pod> = Api::namespaced(client(&sim), "shop");
    for name in ["right", "wrong"] {
        pods.create(&PostParams::default(), &pod(name, "128Mi", "200Mi")).await.expect("created");
    }
    for name in ["right", "wrong"] {
        wait_for(&pods, name, |p: Option<&Pod>| {
            p.and_then(last_terminated_reason).as_deref() == Some("OOMKilled")
        })
        .await;
    }
    let resize = |limit: &str| json!({"spec": {"containers": [{"name": "app", "resources": {"limits": {"memory": limit}, "requests": {"memory": limit}}}]}});
    let resized = pods
        .patch_resize(
            "right",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Strategic(&resize("256Mi")),
        )
        .await
        .expect("resize accepted");
    assert_eq!(resized.metadata.generation, Some(2));
    pods.patch_resize(
        "wrong",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Strategic(&resize("160Mi")),
    )
    .await
    .expect("resize accepted");
    let healed = wait_for(&pods, "right", |p: Option<&Pod>| {
        p.is_some_and(|p| {
            p.status.as_ref().and_then(|s| s.observed_generation) == Some(2)
                && container_status(p).is_some_and(|s| {
                    s.ready && s.resources.and_then(|r| r.limits).is_some_and(|l| l["memory"].0 == "256Mi")
                })
        })
    })
    .await;
    let restarts_after_fix = container_status(&healed).map(|s| s.restart_count).unwrap_or_default();
    let still_failing = wait_for(&pods, "wrong", |p: Option<&Pod>| {
        p.and_then(container_status).is_some_and(|s| {
            s.restart_count >= 3
                && s.resources.and_then(|r| r.limits).is_some_and(|l| l["memory"].0 == "160Mi")
        })
    })
    .await;
    assert_eq!(
        last_terminated_reason(&still_failing).as_deref(),
        Some("OOMKilled"),
        "a wrong fix does not heal"
    );
    let now = pods.get("right").await.expect("pod");
    assert_eq!(
        container_status(&now).map(|s| s.restart_count),
        Some(restarts_after_fix),
        "the right fix stopped the OOM kills"
    );
}

#[tokio::test]
async fn changing_a_pods_resources_through_an_update_is_forbidden_but_the_image_may_change() {
    let sim = sim().await;
    let pods: Api<Pod> = Api::namespaced(client(&sim), "shop");
    pods.create(&PostParams::default(), &pod("upd", "128Mi", "1Mi")).await.expect("created");
    let patch =
        json!({"spec": {"containers": [{"name": "app", "resources": {"limits": {"memory": "256Mi"}}}]}});
    let err = pods
        .patch("upd", &kube::api::PatchParams::default(), &kube::api::Patch::Strategic(&patch))
        .await
        .expect_err("forbidden");
    let kube::Error::Api(status) = err else { panic!("expected a Status") };
    assert_eq!((status.code, status.reason.as_str()), (422, "Invalid"));
    assert!(status.message.starts_with("Pod \"upd\" is invalid: spec: Forbidden: pod updates may not change fields other than `spec.containers[*].image`"), "{}", status.message);
    let image = json!({"spec": {"containers": [{"name": "app", "image": "registry.local/shop/web:2"}]}});
    let updated = pods
        .patch("upd", &kube::api::PatchParams::default(), &kube::api::Patch::Strategic(&image))
        .await
        .expect("image update allowed");
    assert_eq!(updated.spec.expect("spec").containers[0].image.as_deref(), Some("registry.local/shop/web:2"));
    wait_for(&pods, "upd", |p: Option<&Pod>| {
        p.and_then(container_status).is_some_and(|s| s.image == "registry.local/shop/web:2" && s.ready)
    })
    .await;
}

#[tokio::test]
async fn multi_container_logs_need_a_container_name() {
    let sim = sim().await;
    let pods: Api<Pod> = Api::namespaced(client(&sim), "shop");
    let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "two"}, "spec": {"containers": [
        {"name": "app", "image": "web:1"}, {"name": "sidecar", "image": "proxy:1"}]}}))
    .expect("pod");
    pods.create(&PostParams::default(), &pod).await.expect("created");
    let err = pods.logs("two", &LogParams::default()).await.expect_err("ambiguous");
    let kube::Error::Api(status) = err else { panic!("expected a Status") };
    assert_eq!(
        (status.code, status.message.as_str()),
        (400, "a container name must be specified for pod two, choose one of: [app sidecar]")
    );
    let err = pods
        .logs("two", &LogParams { container: Some("nope".into()), ..LogParams::default() })
        .await
        .expect_err("unknown");
    let kube::Error::Api(status) = err else { panic!("expected a Status") };
    assert_eq!(status.message, "container nope is not valid for pod two");
}

#[tokio::test]
async fn the_runtime_recorder_creates_then_patches_an_event_series() {
    use k8s_openapi::api::events::v1::Event;
    use kube_runtime::events::{Event as RuntimeEvent, EventType, Recorder, Reporter};
    let sim = sim().await;
    let client = client(&sim);
    let pods: Api<Pod> = Api::namespaced(client.clone(), "shop");
    let created = pods.create(&PostParams::default(), &pod("ev", "256Mi", "1Mi")).await.expect("created");
    let recorder = Recorder::new(
        client.clone(),
        Reporter { controller: "kubesent-remediator".into(), instance: Some("r-0".into()) },
    );
    let reference = kube::Resource::object_ref(&created, &());
    let event = RuntimeEvent {
        type_: EventType::Normal,
        reason: "OOMRemediation".into(),
        note: Some("memory 128Mi -> 256Mi".into()),
        action: "IncreaseMemory".into(),
        secondary: None,
    };
    recorder.publish(&event, &reference).await.expect("first event created");
    recorder.publish(&event, &reference).await.expect("repeat patched as a series");
    let events =
        Api::<Event>::namespaced(client, "shop").list(&ListParams::default()).await.expect("list").items;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].series.as_ref().map(|s| s.count), Some(2));
    assert!(
        sim.requests()
            .iter()
            .any(|r| r.method == "PATCH"
                && r.path.starts_with("/apis/events.k8s.io/v1/namespaces/shop/events/"))
    );
}

#[tokio::test]
async fn an_invalid_events_k8s_io_event_is_refused() {
    use k8s_openapi::api::events::v1::Event;
    let sim = sim().await;
    let events: Api<Event> = Api::namespaced(client(&sim), "shop");
    let event: Event =
        serde_json::from_value(json!({"metadata": {"name": "bad"}, "type": "Fatal", "reason": "X"}))
            .expect("event");
    let err = events.create(&PostParams::default(), &event).await.expect_err("invalid");
    let kube::Error::Api(status) = err else { panic!("expected a Status") };
    assert_eq!(status.code, 422);
    assert!(status.message.contains("eventTime: Required value"), "{}", status.message);
    assert!(status.message.contains("type: Unsupported value: \"Fatal\""), "{}", status.message);
}

#[tokio::test]
async fn a_streaming_list_sends_initial_events_then_an_end_bookmark() {
    let sim = sim().await;
    let pods: Api<Pod> = Api::namespaced(client(&sim), "shop");
    for i in 0..3 {
        pods.create(&PostParams::default(), &pod(&format!("s{i}"), "256Mi", "1Mi")).await.expect("created");
    }
    let mut events = watcher(pods.clone(), watcher::Config::default().streaming_lists()).boxed();
    let mut initial = 0;
    loop {
        match tokio::time::timeout(PATIENCE, events.try_next())
            .await
            .expect("in time")
            .expect("ok")
            .expect("open")
        {
            watcher::Event::InitApply(_) => initial += 1,
            watcher::Event::InitDone => break,
            _ => {}
        }
    }
    assert_eq!(initial, 3);
    let first = sim
        .requests()
        .into_iter()
        .find(|r| r.method == "GET" && r.path == "/api/v1/namespaces/shop/pods")
        .expect("a request");
    assert!(first.query.contains("sendInitialEvents=true"), "{}", first.query);
    assert!(
        !sim.requests()
            .iter()
            .any(|r| r.path == "/api/v1/namespaces/shop/pods" && r.query.contains("limit=")),
        "no list call"
    );
}

fn client_with_token(sim: &KubeSim, token: &str) -> Client {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let mut config = kube::Config::new(sim.url().parse().expect("url"));
    config.default_retry = false;
    config.auth_info.token = Some(token.to_owned().into());
    Client::try_from(config).expect("client")
}

const RBAC_YAML: &str = include_str!("../../../deploy/base/rbac.yaml");

#[tokio::test]
async fn rbac_from_the_deployment_yaml_allows_what_is_granted_and_forbids_the_rest() {
    let sim = sim().await;
    let admin = sim.enable_rbac();
    assert!(sim.apply_yaml(RBAC_YAML).expect("rbac applied") >= 10);
    let admin_pods: Api<Pod> = Api::namespaced(client_with_token(&sim, &admin), "shop");
    admin_pods.create(&PostParams::default(), &pod("web-1", "256Mi", "1Mi")).await.expect("admin creates");

    let diagnoser = client_with_token(&sim, &sim.service_account_token("kubesent", "kubesent-diagnoser"));
    let pods: Api<Pod> = Api::namespaced(diagnoser, "shop");
    pods.get("web-1").await.expect("the diagnoser may read pods");
    let err = pods.delete("web-1", &DeleteParams::default()).await.expect_err("but not delete them");
    let kube::Error::Api(status) = err else { panic!("expected a Status") };
    assert_eq!((status.code, status.reason.as_str()), (403, "Forbidden"));
    assert_eq!(
        status.message,
        "pods \"web-1\" is forbidden: User \"system:serviceaccount:kubesent:kubesent-diagnoser\" cannot delete resource \"pods\" in API group \"\" in the namespace \"shop\""
    );
    let resize =
        json!({"spec": {"containers": [{"name": "app", "resources": {"limits": {"memory": "512Mi"}}}]}});
    let err = pods
        .patch_resize("web-1", &kube::api::PatchParams::default(), &kube::api::Patch::Strategic(&resize))
        .await
        .expect_err("pods/resize is not granted");
    let kube::Error::Api(status) = err else { panic!("expected a Status") };
    assert!(status.message.contains("cannot patch resource \"pods/resize\""), "{}", status.message);

    let detector = client_with_token(&sim, &sim.service_account_token("kubesent", "kubesent-detector"));
    Api::<Pod>::all(detector.clone())
        .list(&ListParams::default())
        .await
        .expect("the detector lists pods everywhere");
    let err = Api::<Pod>::namespaced(detector, "shop").get("web-1").await.expect_err("but has no get");
    let kube::Error::Api(status) = err else { panic!("expected a Status") };
    assert_eq!(status.code, 403);

    let anonymous = client(&sim);
    let err = Api::<Pod>::namespaced(anonymous, "shop").get("web-1").await.expect_err("no token");
    let kube::Error::Api(status) = err else { panic!("expected a Status") };
    assert_eq!((status.code, status.reason.as_str()), (401, "Unauthorized"));
}

#[tokio::test]
async fn injected_errors_throttling_and_latency_reach_the_client() {
    let sim = sim().await;
    let pods: Api<Pod> = Api::namespaced(client(&sim), "shop");
    sim.state().faults.set_error_rate(1.0);
    let err = pods.list(&ListParams::default()).await.expect_err("every request fails");
    let kube::Error::Api(status) = err else { panic!("expected a Status") };
    assert_eq!((status.code, status.reason.as_str()), (500, "InternalError"));
    sim.state().faults.set_error_rate(0.0);

    sim.state().faults.throttle(1, 7);
    let err = pods.list(&ListParams::default()).await.expect_err("throttled");
    let kube::Error::Api(status) = err else { panic!("expected a Status") };
    assert_eq!(status.code, 429);
    assert_eq!(status.message, "Too many requests, please try again later.\n");
    pods.list(&ListParams::default()).await.expect("only one request was throttled");

    // kube's default retry layer retries 429 and honours Retry-After.
    let mut config = kube::Config::new(sim.url().parse().expect("url"));
    config.default_retry = true;
    let retrying: Api<Pod> = Api::namespaced(Client::try_from(config).expect("client"), "shop");
    sim.state().faults.throttle(2, 1);
    retrying.list(&ListParams::default()).await.expect("retried past the throttling");
    let throttled = sim.requests().iter().filter(|r| r.status == 429).count();
    assert_eq!(throttled, 3);

    sim.state().faults.set_latency(Duration::from_millis(200));
    let started = std::time::Instant::now();
    pods.list(&ListParams::default()).await.expect("slow but served");
    assert!(started.elapsed() >= Duration::from_millis(200));
}

#[tokio::test]
async fn dropped_watches_and_a_restart_resume_from_the_last_resource_version_without_a_relist() {
    let mut sim = sim().await;
    let shop: Api<Pod> = Api::namespaced(client(&sim), "shop");
    let mut events = watcher(shop.clone(), watcher::Config::default()).boxed();
    loop {
        if let watcher::Event::InitDone = events.try_next().await.expect("ok").expect("open") {
            break;
        }
    }
    sim.state().faults.drop_watches();
    shop.create(&PostParams::default(), &pod("after-drop", "256Mi", "1Mi")).await.expect("created");
    let seen = expect_apply(&mut events, "after-drop").await;
    let rv_before_restart: u64 = seen.metadata.resource_version.expect("rv").parse().expect("number");

    sim.restart().await.expect("restarted on the same port");
    let shop: Api<Pod> = Api::namespaced(client(&sim), "shop");
    let created =
        shop.create(&PostParams::default(), &pod("after-restart", "256Mi", "1Mi")).await.expect("created");
    let rv_after: u64 = created.metadata.resource_version.expect("rv").parse().expect("number");
    assert!(rv_after > rv_before_restart, "resourceVersions continue across the restart");
    expect_apply(&mut events, "after-restart").await;

    let lists = sim
        .requests()
        .iter()
        .filter(|r| {
            r.method == "GET" && r.path == "/api/v1/namespaces/shop/pods" && !r.query.contains("watch=")
        })
        .count();
    assert_eq!(lists, 1, "the watcher re-watched from its resourceVersion instead of listing again");
}

#[tokio::test]
async fn a_partitioned_client_hangs_while_others_are_served() {
    let sim = sim().await;
    let cut_off = client_with_token(&sim, "client-a");
    let other = client_with_token(&sim, "client-b");
    sim.state().faults.partition("client-a");
    let pending = tokio::spawn(async move {
        Api::<Pod>::namespaced(cut_off, "shop").list(&ListParams::default()).await.map(|l| l.items.len())
    });
    Api::<Pod>::namespaced(other, "shop")
        .list(&ListParams::default())
        .await
        .expect("another client is served");
    assert!(!pending.is_finished(), "the partitioned client gets no answer");
    sim.state().faults.heal("client-a");
    let answered = tokio::time::timeout(PATIENCE, pending)
        .await
        .expect("answered after healing")
        .expect("task")
        .expect("listed");
    assert_eq!(answered, 0);
}

#[tokio::test]
async fn the_request_log_shows_that_no_mutating_call_was_made() {
    let sim = sim().await;
    let pods: Api<Pod> = Api::namespaced(client(&sim), "shop");
    pods.list(&ListParams::default()).await.expect("list");
    let _ = pods.get_opt("nope").await.expect("get");
    assert!(sim.state().mutating_requests().is_empty());
    pods.create(&PostParams::default(), &pod("m", "256Mi", "1Mi")).await.expect("created");
    let mutating = sim.state().mutating_requests();
    assert_eq!(mutating.len(), 1);
    assert_eq!((mutating[0].method.as_str(), mutating[0].status), ("POST", 201));
}

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

#[tokio::test]
async fn unscheduled_and_finished_pods_are_deleted_at_once() {
    // Real-time kubelet: binding takes 100 ms, so a delete right after create hits an unscheduled pod.
    let sim = KubeSim::start(SimConfig::default()).await.expect("starts");
    let pods: Api<Pod> = Api::namespaced(client(&sim), "shop");
    pods.create(&PostParams::default(), &pod("early", "256Mi", "1Mi")).await.expect("created");
    let deleted =
        pods.delete("early", &DeleteParams::default()).await.expect("deleted").left().expect("object");
    assert_eq!(deleted.spec.and_then(|s| s.node_name), None);
    assert!(pods.get_opt("early").await.expect("get").is_none(), "gone without a grace period");

    let fast = KubeSim::start(SimConfig { time_scale: FAST, ..SimConfig::default() }).await.expect("starts");
    let pods: Api<Pod> = Api::namespaced(client(&fast), "shop");
    let job: Pod = serde_json::from_value(
        json!({"metadata": {"name": "done", "annotations": {"sim.kubesent.io/exit-code": "0"}},
        "spec": {"restartPolicy": "Never", "containers": [{"name": "app", "image": "job:1"}]}}),
    )
    .expect("pod");
    pods.create(&PostParams::default(), &job).await.expect("created");
    wait_for(&pods, "done", |p: Option<&Pod>| {
        p.and_then(|p| p.status.as_ref()?.phase.clone()).as_deref() == Some("Succeeded")
    })
    .await;
    pods.delete("done", &DeleteParams::default()).await.expect("deleted");
    assert!(pods.get_opt("done").await.expect("get").is_none(), "a finished pod has no grace period");
}

#[tokio::test]
async fn an_infeasible_resize_is_reported_as_pending() {
    let sim = sim().await;
    let pods: Api<Pod> = Api::namespaced(client(&sim), "shop");
    pods.create(&PostParams::default(), &pod("big", "256Mi", "1Mi")).await.expect("created");
    wait_for(&pods, "big", conditions::is_pod_running()).await;
    let resize = json!({"spec": {"containers": [{"name": "app", "resources": {"limits": {"memory": "64Gi"}, "requests": {"memory": "64Gi"}}}]}});
    pods.patch_resize("big", &kube::api::PatchParams::default(), &kube::api::Patch::Strategic(&resize))
        .await
        .expect("accepted by the API");
    let pending = wait_for(&pods, "big", |p: Option<&Pod>| {
        p.and_then(|p| p.status.as_ref()?.conditions.clone())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "PodResizePending"))
    })
    .await;
    let condition = pending
        .status
        .and_then(|s| s.conditions)
        .and_then(|c| c.into_iter().find(|c| c.type_ == "PodResizePending"))
        .expect("condition");
    assert_eq!(condition.reason.as_deref(), Some("Infeasible"));
    assert!(
        condition.message.is_some_and(
            |m| m.starts_with("Node didn't have enough capacity: memory, requested: 68719476736")
        )
    );
}

#[tokio::test]
async fn log_parameters_limit_bytes_timestamps_and_validation() {
    let sim = sim().await;
    let pods: Api<Pod> = Api::namespaced(client(&sim), "shop");
    let p: Pod = serde_json::from_value(
        json!({"metadata": {"name": "chatty", "annotations": {"sim.kubesent.io/logs": "one\ntwo\nthree"}},
        "spec": {"containers": [{"name": "app", "image": "web:1"}]}}),
    )
    .expect("pod");
    pods.create(&PostParams::default(), &p).await.expect("created");
    wait_for(&pods, "chatty", conditions::is_pod_running()).await;
    let limited = pods
        .logs("chatty", &LogParams { limit_bytes: Some(10), ..LogParams::default() })
        .await
        .expect("logs");
    assert_eq!(limited.len(), 10);
    let stamped = pods
        .logs("chatty", &LogParams { timestamps: true, tail_lines: Some(1), ..LogParams::default() })
        .await
        .expect("logs");
    let (stamp, line) = stamped.trim_end().split_once(' ').expect("timestamp prefix");
    assert!(stamp.parse::<jiff::Timestamp>().is_ok(), "{stamp}");
    assert_eq!(line, "ready: listening on :8080");
    let err = pods
        .logs("chatty", &LogParams { tail_lines: Some(-1), ..LogParams::default() })
        .await
        .expect_err("negative");
    let kube::Error::Api(status) = err else { panic!("expected a Status") };
    assert_eq!(status.code, 422);
    assert!(
        status.message.contains("tailLines: Invalid value: -1: must be greater than or equal to 0"),
        "{}",
        status.message
    );
}

#[tokio::test]
async fn a_continue_token_older_than_the_history_is_expired() {
    let sim = sim().await;
    let pods: Api<Pod> = Api::namespaced(client(&sim), "shop");
    for i in 0..3 {
        pods.create(&PostParams::default(), &pod(&format!("c{i}"), "256Mi", "1Mi")).await.expect("created");
    }
    let first = pods.list(&ListParams::default().limit(1)).await.expect("first page");
    let token = first.metadata.continue_.clone().expect("more pages");
    pods.list(&ListParams::default().limit(1).continue_token(&token)).await.expect("a fresh token works");
    // A write after the list, then a compaction: the list's revision is gone from history.
    pods.create(&PostParams::default(), &pod("later", "256Mi", "1Mi")).await.expect("created");
    sim.state().store.compact(&kubesent_kube_sim::resources::PODS);
    let err = pods.list(&ListParams::default().limit(1).continue_token(&token)).await.expect_err("expired");
    let kube::Error::Api(status) = err else { panic!("expected a Status") };
    assert_eq!((status.code, status.reason.as_str()), (410, "Expired"));
    assert!(status.message.starts_with("The provided continue parameter is too old"), "{}", status.message);
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

#[tokio::test]
async fn a_container_with_a_readiness_probe_runs_unready_until_its_initial_delay_has_passed() {
    let sim = sim().await;
    let pods: Api<Pod> = Api::namespaced(client(&sim), "shop");
    pods.create(&PostParams::default(), &with_readiness_probe(pod("web-1", "256Mi", "200Mi"), 30))
        .await
        .expect("created");
    let running = wait_for(&pods, "web-1", conditions::is_pod_running()).await;
    assert!(!ready(&running), "running but not yet ready: {:?}", running.status);
    let became_ready = wait_for(&pods, "web-1", |p: Option<&Pod>| p.is_some_and(ready)).await;
    assert_eq!(container_status(&became_ready).map(|cs| cs.restart_count), Some(0));
}

#[tokio::test]
async fn a_container_killed_before_its_first_readiness_probe_is_never_ready() {
    let sim = sim().await;
    let pods: Api<Pod> = Api::namespaced(client(&sim), "shop");
    // OOM-killed after 2 s of running; the first readiness probe would come at 30 s.
    pods.create(&PostParams::default(), &with_readiness_probe(pod("web-1", "128Mi", "200Mi"), 30))
        .await
        .expect("created");
    let mut events = watcher(pods.clone(), watcher::Config::default()).applied_objects().boxed();
    let mut states = Vec::new();
    tokio::time::timeout(PATIENCE, async {
        while let Some(pod) = events.try_next().await.expect("watch ok") {
            let restarts = container_status(&pod).map_or(0, |cs| cs.restart_count);
            states.push(pod);
            if restarts >= 2 {
                return;
            }
        }
    })
    .await
    .expect("two restarts in time");
    assert!(!states.iter().any(ready), "no state of the pod was ready");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_ends_even_while_clients_watch_again_the_moment_their_watch_ends() {
    use k8s_openapi::api::coordination::v1::Lease;
    let mut sim = sim().await;
    let client = client(&sim);
    // Watchers that re-watch at once, as kube-runtime's watcher does after a dropped watch: a watch
    // that arrives while the server drains must not keep the restart waiting.
    let mut watchers = Vec::new();
    for _ in 0..4 {
        let leases: Api<Lease> = Api::namespaced(client.clone(), "kubesent");
        watchers.push(tokio::spawn(async move {
            let mut events = watcher(leases, watcher::Config::default()).boxed();
            while events.next().await.is_some() {}
        }));
    }
    for attempt in 0..20 {
        tokio::time::timeout(PATIENCE, sim.restart())
            .await
            .unwrap_or_else(|_| panic!("restart {attempt} did not end"))
            .expect("restarted");
        // A pooled connection the restart closed can fail one request, as against a real apiserver.
        let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
        let mut served = pods.list(&ListParams::default()).await;
        for _ in 0..3 {
            if served.is_ok() {
                break;
            }
            served = pods.list(&ListParams::default()).await;
        }
        served.expect("serving again");
    }
    for watcher in watchers {
        watcher.abort();
    }
}
