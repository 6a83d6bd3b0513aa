//! VerticalPodAutoscalers served as the VPA's CustomResourceDefinition serves them: kubectl creates and
//! lists them by their short name with the CRD's printer columns; kube-rs lists, reads and watches them
//! as dynamic objects, so a reader can see that a VPA manages a workload.

use kube::{
    api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams},
    core::WatchEvent,
};

use super::*;

fn vpas(client: &Client) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("autoscaling.k8s.io", "v1", "VerticalPodAutoscaler");
    let resource = ApiResource::from_gvk_with_plural(&gvk, "verticalpodautoscalers");
    Api::namespaced_with(client.clone(), "shop", &resource)
}

#[tokio::test]
async fn a_vertical_pod_autoscaler_is_listed_read_and_watched_with_its_target() {
    let Ok(kubectl) = which_kubectl() else {
        eprintln!("skipped: kubectl is not installed");
        return;
    };
    let sim = sim().await;
    let client = client(&sim);
    let manifest = serde_json::to_string(
        &json!({"apiVersion": "autoscaling.k8s.io/v1", "kind": "VerticalPodAutoscaler",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {"targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
            "updatePolicy": {"updateMode": "Auto"}}}),
    )
    .expect("manifest");
    let out = kubectl_with_input(&kubectl, &sim, &["apply", "-f", "-"], &manifest).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let api = vpas(&client);
    let listed = api.list(&ListParams::default()).await.expect("listed");
    assert_eq!(listed.items.len(), 1);
    let vpa = &listed.items[0];
    assert_eq!(vpa.data.pointer("/spec/targetRef/kind"), Some(&json!("Deployment")));
    assert_eq!(vpa.data.pointer("/spec/targetRef/name"), Some(&json!("web")));
    let version = listed.metadata.resource_version.clone().expect("a list version");

    // Its recommender (a test here) writes the recommendation through the status; a watcher sees it.
    let mut changes = api.watch(&WatchParams::default(), &version).await.expect("watch").boxed();
    let status = json!({"status": {"recommendation": {"containerRecommendations": [{"containerName": "app",
        "target": {"cpu": "250m", "memory": "300Mi"}}]},
        "conditions": [{"type": "RecommendationProvided", "status": "True"}]}});
    api.patch_status("web", &PatchParams::default(), &Patch::Merge(&status)).await.expect("status written");
    let event = tokio::time::timeout(PATIENCE, changes.try_next()).await.expect("in time").expect("watch");
    let Some(WatchEvent::Modified(modified)) = event else { panic!("a modification: {event:?}") };
    assert_eq!(
        modified.data.pointer("/status/recommendation/containerRecommendations/0/target/memory"),
        Some(&json!("300Mi"))
    );

    let rows = kubectl_rows(&kubectl, &sim, &["-n", "shop", "get", "vpa"]).await;
    assert_eq!(rows[0], ["NAME", "MODE", "CPU", "MEM", "PROVIDED", "AGE"]);
    assert_eq!(rows[1][..5], ["web", "Auto", "250m", "300Mi", "True"]);
}
