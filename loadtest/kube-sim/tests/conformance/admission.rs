//! The cluster's other actors at admission: LimitRanges default and bound a pod's resources, quotas
//! count them and refuse what would not fit, each with the apiserver's own 403 message; the controllers
//! say so in `FailedCreate` events and keep trying, and succeed once room is made.

use k8s_openapi::api::{
    apps::v1::{Deployment, ReplicaSet},
    core::v1::{Event, LimitRange, ResourceQuota},
};
use kube::api::{Patch, PatchParams};

use super::*;

#[tokio::test]
async fn a_quota_refuses_a_pod_that_would_not_fit_and_the_replica_set_says_so_until_there_is_room() {
    let Ok(kubectl) = which_kubectl() else {
        eprintln!("skipped: kubectl is not installed");
        return;
    };
    let sim = sim().await;
    let client = client(&sim);
    // `kubectl create quota` sends the quota as protobuf.
    let out = tokio::process::Command::new(&kubectl)
        .args([
            "--server",
            &sim.url(),
            "-n",
            "shop",
            "create",
            "quota",
            "team",
            "--hard=pods=3,limits.memory=512Mi",
        ])
        .output()
        .await
        .expect("kubectl runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // Three replicas of 256Mi: two fit, the third does not.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "shop");
    deployments
        .create(&PostParams::default(), &deployment("web", 3, "registry.local/shop/web:1"))
        .await
        .expect("created");
    let sets: Api<ReplicaSet> = Api::namespaced(client.clone(), "shop");
    let set = first_that(sets, "the ReplicaSet", |_| true).await;
    let set_name = set.metadata.name.clone().expect("name");
    let events: Api<Event> = Api::namespaced(client.clone(), "shop");
    let failed = first_that(events, "a FailedCreate event", |e| {
        e.reason.as_deref() == Some("FailedCreate")
            && e.involved_object.name.as_deref() == Some(set_name.as_str())
    })
    .await;
    assert_eq!(failed.type_.as_deref(), Some("Warning"));
    assert_eq!(failed.source.and_then(|s| s.component).as_deref(), Some("replicaset-controller"));
    assert_eq!(
        failed.message.as_deref(),
        Some(format!(
            "Error creating: pods \"{set_name}-\" is forbidden: exceeded quota: team, requested: limits.memory=256Mi, used: limits.memory=512Mi, limited: limits.memory=512Mi"
        ))
        .as_deref()
    );
    let has_failure = |d: Option<&Deployment>| {
        d.and_then(|d| d.status.as_ref()?.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "ReplicaFailure" && c.status == "True"))
    };
    let web = tokio::time::timeout(PATIENCE, await_condition(deployments.clone(), "web", has_failure))
        .await
        .expect("the Deployment's ReplicaFailure in time")
        .expect("watch")
        .expect("web");
    let failure = web
        .status
        .and_then(|s| s.conditions)
        .into_iter()
        .flatten()
        .find(|c| c.type_ == "ReplicaFailure")
        .expect("condition");
    assert_eq!(failure.reason.as_deref(), Some("FailedCreate"));

    // The quota's status counts what runs; kubectl prints it as the apiserver's printer does.
    let quotas: Api<ResourceQuota> = Api::namespaced(client.clone(), "shop");
    let two_pods = |q: Option<&ResourceQuota>| {
        q.and_then(|q| q.status.as_ref()?.used.as_ref()?.get("pods")).is_some_and(|p| p.0 == "2")
    };
    let team = tokio::time::timeout(PATIENCE, await_condition(quotas.clone(), "team", two_pods))
        .await
        .expect("the quota's usage in time")
        .expect("watch")
        .expect("team");
    assert_eq!(team.status.and_then(|s| s.used).expect("used")["limits.memory"].0, "512Mi");
    let rows = kubectl_rows(&kubectl, &sim, &["get", "quota", "-n", "shop"]).await;
    assert_eq!(rows[0], ["NAME", "AGE", "REQUEST", "LIMIT"]);
    assert_eq!(rows[1][0], "team");
    assert_eq!(rows[1][2..], ["pods:", "2/3", "limits.memory:", "512Mi/512Mi"]);

    // A pod that does not state what the quota counts is refused for that.
    let pods: Api<Pod> = Api::namespaced(client.clone(), "shop");
    let unstated = plain_pod("unstated", "registry.local/shop/web:1");
    let refusal = pods.create(&PostParams::default(), &unstated).await.expect_err("refused");
    let kube::Error::Api(status) = refusal else { panic!("{refusal}") };
    assert_eq!(status.code, 403);
    assert_eq!(
        status.message,
        "pods \"unstated\" is forbidden: failed quota: team: must specify limits.memory for: app"
    );

    // Room is made: the ReplicaSet's next try succeeds.
    let more = Patch::Merge(json!({"spec": {"hard": {"limits.memory": "1Gi"}}}));
    quotas.patch("team", &PatchParams::default(), &more).await.expect("patched");
    let three =
        |d: Option<&Deployment>| d.and_then(|d| d.status.as_ref()).is_some_and(|s| s.replicas == Some(3));
    tokio::time::timeout(PATIENCE, await_condition(deployments, "web", three))
        .await
        .expect("the third replica in time")
        .expect("watch");
}

#[tokio::test]
async fn a_limit_range_fills_in_what_a_pod_leaves_out_and_refuses_what_is_outside_its_bounds() {
    let sim = sim().await;
    let client = client(&sim);
    let ranges: Api<LimitRange> = Api::namespaced(client.clone(), "shop");
    let range: LimitRange = serde_json::from_value(json!({"metadata": {"name": "memory"},
        "spec": {"limits": [{"type": "Container", "default": {"memory": "256Mi"}, "defaultRequest": {"memory": "128Mi"},
            "max": {"memory": "512Mi"}}]}}))
    .expect("range");
    ranges.create(&PostParams::default(), &range).await.expect("created");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "shop");

    let defaulted = pods
        .create(&PostParams::default(), &plain_pod("plain", "registry.local/shop/web:1"))
        .await
        .expect("admitted");
    let resources = defaulted.spec.expect("spec").containers[0].resources.clone().expect("resources");
    assert_eq!(resources.limits.expect("limits")["memory"].0, "256Mi");
    assert_eq!(resources.requests.expect("requests")["memory"].0, "128Mi");
    assert_eq!(
        defaulted.metadata.annotations.expect("annotations")["kubernetes.io/limit-ranger"],
        "LimitRanger plugin set: memory request for container app; memory limit for container app"
    );

    let refusal = pods.create(&PostParams::default(), &pod("big", "1Gi", "10Mi")).await.expect_err("refused");
    let kube::Error::Api(status) = refusal else { panic!("{refusal}") };
    assert_eq!((status.code, status.reason.as_str()), (403, "Forbidden"));
    assert_eq!(
        status.message,
        "pods \"big\" is forbidden: maximum memory usage per Container is 512Mi, but limit is 1Gi"
    );
}

#[tokio::test]
async fn kubectl_lists_limit_ranges_with_their_creation_time() {
    let Ok(kubectl) = which_kubectl() else {
        eprintln!("skipped: kubectl is not installed");
        return;
    };
    let sim = sim().await;
    let manifest = r#"{"apiVersion": "v1", "kind": "LimitRange", "metadata": {"name": "memory", "namespace": "shop"},
        "spec": {"limits": [{"type": "Container", "max": {"memory": "1Gi"}}]}}"#;
    let out = kubectl_with_input(&kubectl, &sim, &["apply", "-f", "-"], manifest).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rows = kubectl_rows(&kubectl, &sim, &["get", "limits", "-n", "shop"]).await;
    assert_eq!(rows[0], ["NAME", "CREATED", "AT"]);
    assert_eq!(rows[1][0], "memory");
    assert!(rows[1][1].ends_with('Z'), "{:?}", rows[1]);
}

#[tokio::test]
async fn an_eviction_that_would_break_a_disruption_budget_is_refused_until_the_budget_allows_it() {
    let Ok(kubectl) = which_kubectl() else {
        eprintln!("skipped: kubectl is not installed");
        return;
    };
    let sim = sim().await;
    let client = client(&sim);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "shop");
    deployments
        .create(&PostParams::default(), &deployment("web", 2, "registry.local/shop/web:1"))
        .await
        .expect("created");
    wait_deployment(&deployments, "web", |d| status_of(d).2 == 2).await;
    // `kubectl create pdb` sends the budget as protobuf.
    let out = tokio::process::Command::new(&kubectl)
        .args([
            "--server",
            &sim.url(),
            "-n",
            "shop",
            "create",
            "pdb",
            "web",
            "--selector=app=web",
            "--min-available=2",
        ])
        .output()
        .await
        .expect("kubectl runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let budgets: Api<k8s_openapi::api::policy::v1::PodDisruptionBudget> =
        Api::namespaced(client.clone(), "shop");
    let counted = |b: Option<&k8s_openapi::api::policy::v1::PodDisruptionBudget>| {
        b.and_then(|b| b.status.as_ref())
            .is_some_and(|s| s.current_healthy == Some(2) && s.expected_pods == Some(2))
    };
    let web = tokio::time::timeout(PATIENCE, await_condition(budgets.clone(), "web", counted))
        .await
        .expect("the budget's status in time")
        .expect("watch")
        .expect("web");
    let status = web.status.expect("status");
    assert_eq!((status.desired_healthy, status.disruptions_allowed), (Some(2), Some(0)));
    let rows = kubectl_rows(&kubectl, &sim, &["get", "pdb", "-n", "shop"]).await;
    assert_eq!(rows[0], ["NAME", "MIN", "AVAILABLE", "MAX", "UNAVAILABLE", "ALLOWED", "DISRUPTIONS", "AGE"]);
    assert_eq!(rows[1][..4], ["web", "2", "N/A", "0"]);

    let pods: Api<Pod> = Api::namespaced(client.clone(), "shop");
    let victim = pods.list(&ListParams::default().labels("app=web")).await.expect("pods").items[0]
        .metadata
        .name
        .clone()
        .expect("name");
    let refusal = pods.evict(&victim, &kube::api::EvictParams::default()).await.expect_err("refused");
    let kube::Error::Api(answer) = refusal else { panic!("{refusal}") };
    assert_eq!((answer.code, answer.reason.as_str()), (429, "TooManyRequests"));
    assert_eq!(answer.message, "Cannot evict pod as it would violate the pod's disruption budget.");
    assert!(
        pods.get_opt(&victim).await.expect("read").is_some_and(|p| p.metadata.deletion_timestamp.is_none()),
        "not evicted"
    );

    // A budget that allows one disruption lets one eviction through.
    budgets
        .patch("web", &PatchParams::default(), &Patch::Merge(json!({"spec": {"minAvailable": 1}})))
        .await
        .expect("patched");
    pods.evict(&victim, &kube::api::EvictParams::default()).await.expect("evicted");
}

#[tokio::test]
async fn a_budget_made_before_its_pods_follows_them_as_they_come_and_go() {
    let sim = sim().await;
    let client = client(&sim);
    let budgets: Api<k8s_openapi::api::policy::v1::PodDisruptionBudget> =
        Api::namespaced(client.clone(), "shop");
    let budget = serde_json::from_value(json!({"metadata": {"name": "web"},
        "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "web"}}}}))
    .expect("budget");
    budgets.create(&PostParams::default(), &budget).await.expect("created");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "shop");
    deployments
        .create(&PostParams::default(), &deployment("web", 2, "registry.local/shop/web:1"))
        .await
        .expect("created");
    let status = |healthy: i32, allowed: i32| {
        move |b: Option<&k8s_openapi::api::policy::v1::PodDisruptionBudget>| {
            b.and_then(|b| b.status.as_ref()).is_some_and(|s| {
                s.current_healthy == Some(healthy)
                    && s.expected_pods == Some(healthy)
                    && s.disruptions_allowed == Some(allowed)
            })
        }
    };
    tokio::time::timeout(PATIENCE, await_condition(budgets.clone(), "web", status(2, 1)))
        .await
        .expect("the budget counts the pods that came after it")
        .expect("watch");
    // Scaled down to one pod, the budget allows no disruption any more.
    deployments
        .patch("web", &PatchParams::default(), &Patch::Merge(json!({"spec": {"replicas": 1}})))
        .await
        .expect("scaled");
    tokio::time::timeout(PATIENCE, await_condition(budgets.clone(), "web", status(1, 0)))
        .await
        .expect("the budget follows the pods that went")
        .expect("watch");
}
