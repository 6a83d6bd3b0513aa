//! Namespaces as a resource with their lifecycle: the system namespaces exist, content in a missing
//! namespace is refused, and a deleted namespace is Terminating until its content is gone.

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};

use super::*;

fn namespace(name: &str) -> Namespace {
    serde_json::from_value(json!({"metadata": {"name": name}})).expect("namespace json")
}

#[tokio::test]
async fn the_system_namespaces_exist_and_a_new_one_is_active_with_its_name_label() {
    let sim = sim().await;
    let namespaces: Api<Namespace> = Api::all(client(&sim));
    for name in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        let ns = namespaces.get(name).await.unwrap_or_else(|e| panic!("{name} exists: {e}"));
        assert_eq!(ns.status.and_then(|s| s.phase).as_deref(), Some("Active"), "{name}");
    }
    let created = namespaces.create(&PostParams::default(), &namespace("payments")).await.expect("created");
    assert_eq!(created.status.and_then(|s| s.phase).as_deref(), Some("Active"));
    assert_eq!(
        created.metadata.labels.unwrap_or_default().get("kubernetes.io/metadata.name").map(String::as_str),
        Some("payments")
    );
    assert_eq!(created.spec.and_then(|s| s.finalizers), Some(vec!["kubernetes".to_owned()]));
}

#[tokio::test]
async fn content_in_a_namespace_that_does_not_exist_is_refused_as_not_found() {
    let sim = sim().await;
    let pods: Api<Pod> = Api::namespaced(client(&sim), "nowhere");
    let error =
        pods.create(&PostParams::default(), &pod("web-1", "128Mi", "64Mi")).await.expect_err("refused");
    let kube::Error::Api(status) = error else { panic!("an API error: {error}") };
    assert_eq!((status.code, status.reason.as_str()), (404, "NotFound"));
    assert_eq!(status.message, "namespaces \"nowhere\" not found");
}

#[tokio::test]
async fn a_deleted_namespace_terminates_refuses_new_content_and_goes_once_its_content_is_gone() {
    let sim = sim().await;
    let client = client(&sim);
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let uid =
        namespaces.create(&PostParams::default(), &namespace("temp")).await.expect("created").metadata.uid;
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> = Api::namespaced(client.clone(), "temp");
    deployments
        .create(&PostParams::default(), &deployment("web", 2, "registry.local/shop/web:1"))
        .await
        .expect("created");
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), "temp");
    let config: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "settings"}, "data": {"a": "1"}})).expect("json");
    configmaps.create(&PostParams::default(), &config).await.expect("created");
    wait_deployment(&deployments, "web", |d| status_of(d).2 == 2).await;

    namespaces.delete("temp", &DeleteParams::default()).await.expect("deleted");
    let terminating = namespaces.get("temp").await.expect("still there while its content goes");
    assert_eq!(terminating.status.and_then(|s| s.phase).as_deref(), Some("Terminating"));
    assert!(terminating.metadata.deletion_timestamp.is_some());
    let error = configmaps.create(&PostParams::default(), &config).await.expect_err("refused");
    let kube::Error::Api(status) = error else { panic!("an API error: {error}") };
    assert_eq!((status.code, status.reason.as_str()), (403, "Forbidden"));
    assert_eq!(
        status.message,
        "configmaps \"settings\" is forbidden: unable to create new content in namespace temp because it is being terminated"
    );

    tokio::time::timeout(
        PATIENCE,
        await_condition(namespaces.clone(), "temp", conditions::is_deleted(&uid.unwrap_or_default())),
    )
    .await
    .expect("the namespace goes in time")
    .expect("watch works");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "temp");
    assert!(pods.list(&ListParams::default()).await.expect("list").items.is_empty(), "its pods are gone");
    assert!(deployments.list(&ListParams::default()).await.expect("list").items.is_empty());
    assert!(configmaps.list(&ListParams::default()).await.expect("list").items.is_empty());
}

#[tokio::test]
async fn kubectl_get_prints_the_real_columns_for_namespaces_deployments_and_replica_sets() {
    let Ok(kubectl) = which_kubectl() else {
        eprintln!("skipped: kubectl is not installed");
        return;
    };
    let sim = sim().await;
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> = Api::namespaced(client(&sim), "shop");
    deployments
        .create(&PostParams::default(), &deployment("web", 2, "registry.local/shop/web:1"))
        .await
        .expect("created");
    wait_deployment(&deployments, "web", |d| status_of(d).2 == 2).await;
    let deploy = kubectl_rows(&kubectl, &sim, &["-n", "shop", "get", "deployments", "-o", "wide"]).await;
    assert_eq!(
        deploy[0],
        ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE", "CONTAINERS", "IMAGES", "SELECTOR"],
        "{deploy:?}"
    );
    assert_eq!(&deploy[1][..4], ["web", "2/2", "2", "2"]);
    assert_eq!(&deploy[1][5..], ["app", "registry.local/shop/web:1", "app=web"]);
    let rs = kubectl_rows(&kubectl, &sim, &["-n", "shop", "get", "replicasets", "-o", "wide"]).await;
    assert_eq!(
        rs[0],
        ["NAME", "DESIRED", "CURRENT", "READY", "AGE", "CONTAINERS", "IMAGES", "SELECTOR"],
        "{rs:?}"
    );
    assert_eq!(&rs[1][1..4], ["2", "2", "2"]);
    let ns = kubectl_rows(&kubectl, &sim, &["get", "namespaces"]).await;
    assert_eq!(ns[0], ["NAME", "STATUS", "AGE"]);
    let names: Vec<&str> = ns[1..].iter().map(|row| row[0].as_str()).collect();
    for name in ["default", "kube-node-lease", "kube-public", "kube-system", "shop"] {
        assert!(names.contains(&name), "{name} listed: {names:?}");
    }
    assert!(ns[1..].iter().all(|row| row[1] == "Active"), "{ns:?}");
}
