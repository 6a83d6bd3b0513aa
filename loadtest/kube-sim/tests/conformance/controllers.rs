//! The workload controllers: Deployments through ReplicaSets, rollouts and their history, StatefulSets, garbage collection.

use super::*;

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

    // As kubectl shows them: the StatefulSet's columns, and the events of its pods.
    let Ok(kubectl) = which_kubectl() else {
        eprintln!("kubectl columns skipped: kubectl is not installed");
        return;
    };
    let rows = kubectl_rows(&kubectl, &sim, &["-n", "shop", "get", "statefulsets", "-o", "wide"]).await;
    assert_eq!(rows[0], ["NAME", "READY", "AGE", "CONTAINERS", "IMAGES"], "{rows:?}");
    assert_eq!([&rows[1][..2], &rows[1][3..]].concat(), ["db", "3/3", "db", "registry.local/db:1"]);
    let events = kubectl_rows(&kubectl, &sim, &["-n", "shop", "get", "events"]).await;
    assert_eq!(events[0], ["LAST", "SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"], "{events:?}");
    assert!(
        events[1..].iter().any(|row| row[1] == "Normal" && row[2] == "Scheduled" && row[3] == "pod/db-0"),
        "{events:?}"
    );
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

#[tokio::test]
async fn a_paused_deployment_rolls_nothing_out_until_it_is_resumed() {
    use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
    let sim = sim().await;
    let client = client(&sim);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "shop");
    deployments
        .create(&PostParams::default(), &deployment("web", 2, "registry.local/shop/web:1"))
        .await
        .expect("created");
    wait_deployment(&deployments, "web", |d| status_of(d) == (2, 2, 2)).await;
    let params = kube::api::PatchParams::default();
    let pause = json!({"spec": {"paused": true,
        "template": {"spec": {"containers": [{"name": "app", "image": "registry.local/shop/web:2"}]}}}});
    deployments.patch("web", &params, &kube::api::Patch::Strategic(&pause)).await.expect("paused");
    let paused = wait_deployment(&deployments, "web", |d| {
        d.status.as_ref().and_then(|s| s.conditions.as_ref()).is_some_and(|c| {
            c.iter().any(|c| {
                c.type_ == "Progressing"
                    && c.status == "Unknown"
                    && c.reason.as_deref() == Some("DeploymentPaused")
            })
        })
    })
    .await;
    assert_eq!(status_of(&paused), (2, 0, 2), "the running revision keeps serving; none is up to date");
    let sets = Api::<ReplicaSet>::namespaced(client.clone(), "shop");
    assert_eq!(
        sets.list(&ListParams::default()).await.expect("list").items.len(),
        1,
        "no new ReplicaSet while paused"
    );

    let resume = json!({"spec": {"paused": false}});
    deployments.patch("web", &params, &kube::api::Patch::Strategic(&resume)).await.expect("resumed");
    wait_deployment(&deployments, "web", |d| {
        status_of(d) == (2, 2, 2)
            && d.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get("deployment.kubernetes.io/revision"))
                .map(String::as_str)
                == Some("2")
    })
    .await;
    assert_eq!(
        sets.list(&ListParams::default()).await.expect("list").items.len(),
        2,
        "rolled out once resumed"
    );
}

/// A Deployment of two healthy pods, then rolled (with `min_ready_seconds` set in the same change) to a
/// revision whose pods crash a few simulated seconds after they become ready.
async fn rolled_to_a_revision_that_crashes_after_ready(
    client: &kube::Client,
    min_ready_seconds: i32,
) -> Api<k8s_openapi::api::apps::v1::Deployment> {
    use k8s_openapi::api::apps::v1::Deployment;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "shop");
    let web = deployment("web", 2, "registry.local/shop/web:1");
    deployments.create(&PostParams::default(), &web).await.expect("created");
    wait_deployment(&deployments, "web", |d| status_of(d) == (2, 2, 2)).await;
    let patch = json!({"spec": {"minReadySeconds": min_ready_seconds, "template": {
        "metadata": {"annotations": {"sim.kubesent.io/exit-code": "2", "sim.kubesent.io/run-seconds": "3"}},
        "spec": {"containers": [{"name": "app", "image": "registry.local/shop/web:2"}]}}}});
    deployments
        .patch("web", &kube::api::PatchParams::default(), &kube::api::Patch::Strategic(&patch))
        .await
        .expect("patched");
    deployments
}

fn replicas_of_revision(sets: &[k8s_openapi::api::apps::v1::ReplicaSet], revision: &str) -> (i32, i32) {
    let rs = sets
        .iter()
        .find(|rs| {
            rs.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get("deployment.kubernetes.io/revision"))
                .map(String::as_str)
                == Some(revision)
        })
        .expect("revision");
    (
        rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0),
        rs.status.as_ref().and_then(|s| s.available_replicas).unwrap_or(0),
    )
}

#[tokio::test]
async fn without_min_ready_seconds_a_revision_that_crashes_after_ready_completes_its_rollout() {
    use k8s_openapi::api::apps::v1::ReplicaSet;
    let sim = sim().await;
    let client = client(&sim);
    let deployments = rolled_to_a_revision_that_crashes_after_ready(&client, 0).await;
    // Its pods count as available the moment they are ready: the old revision is scaled down to zero.
    let _ = &deployments;
    let revision = |rs: &ReplicaSet, wanted: &str| {
        rs.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("deployment.kubernetes.io/revision"))
            .map(String::as_str)
            == Some(wanted)
    };
    first_that(Api::<ReplicaSet>::namespaced(client.clone(), "shop"), "revision 1 scaled to zero", |rs| {
        revision(rs, "1") && rs.spec.as_ref().and_then(|s| s.replicas) == Some(0)
    })
    .await;
    let crashed = pods_until(&Api::namespaced(client, "shop"), |pods| {
        pods.iter().any(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.container_statuses.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.restart_count > 0))
        })
    })
    .await;
    assert!(!crashed.is_empty(), "and then the new revision crash-loops with nothing to fall back on");
}

#[tokio::test]
async fn with_min_ready_seconds_a_revision_that_crashes_after_ready_never_replaces_the_old_one() {
    use k8s_openapi::api::apps::v1::ReplicaSet;
    let sim = sim().await;
    let client = client(&sim);
    // 3,000 simulated seconds (30 s here): far longer than the new pods stay up (3 s).
    let deployments = rolled_to_a_revision_that_crashes_after_ready(&client, 3000).await;
    pods_until(&Api::namespaced(client.clone(), "shop"), |pods| {
        pods.iter().any(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.container_statuses.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.restart_count > 0))
        })
    })
    .await;
    let sets =
        Api::<ReplicaSet>::namespaced(client, "shop").list(&ListParams::default()).await.expect("list").items;
    assert_eq!(replicas_of_revision(&sets, "1"), (2, 2), "the old revision keeps serving");
    assert_eq!(replicas_of_revision(&sets, "2").1, 0, "no new pod was ever available");
    let web = deployments.get("web").await.expect("web");
    assert_eq!(web.status.and_then(|s| s.available_replicas), Some(2));
}
