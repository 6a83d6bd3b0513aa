//! Admission webhooks: configurations applied with kubectl, a webhook server of the test's own that
//! kube-sim calls with an `AdmissionReview` v1, and the apiserver's behaviour seen through kube-rs and
//! kubectl: JSONPatch mutations (the SREGym trap that clamps memory limits), refusals with the
//! webhook's message, `FailedCreate` events, and the failure policy of a webhook that is down or slow.

use k8s_openapi::api::{
    apps::v1::{Deployment, ReplicaSet},
    core::v1::Event,
};
use kube::api::{Patch, PatchParams};
use serde_json::Value;

use super::*;

use kubesent_testkit::webhook::{WebhookServer, answer, pod_rule};

/// A webhook configuration of one webhook, as a manifest for `kubectl apply`.
fn configuration(kind: &str, name: &str, url: &str, rule: Value, extra: Value) -> String {
    kubesent_testkit::webhook::configuration(kind, name, url, rule, extra).to_string()
}

async fn kubectl_apply(kubectl: &std::path::Path, sim: &KubeSim, manifest: &str) {
    let out = kubectl_with_input(kubectl, sim, &["apply", "-f", "-"], manifest).await;
    assert!(out.status.success(), "kubectl apply: {}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test]
async fn a_mutating_webhook_clamps_the_memory_of_the_pods_a_replica_set_creates() {
    let Ok(kubectl) = which_kubectl() else {
        eprintln!("skipped: kubectl is not installed");
        return;
    };
    // The SREGym trap: every new pod's first container gets 16Mi of memory, whatever its template says
    // (the request too: the apiserver has already defaulted it to the limit, and a request above the
    // limit is invalid).
    let server = WebhookServer::start(|review| {
        let clamp = json!([
            {"op": "replace", "path": "/spec/containers/0/resources/limits/memory", "value": "16Mi"},
            {"op": "add", "path": "/spec/containers/0/resources/requests", "value": {"memory": "16Mi"}},
        ]);
        answer(review, true, json!({}), Some(clamp))
    });
    let sim = sim().await;
    let manifest = configuration(
        "MutatingWebhookConfiguration",
        "memory-clamp.policy.example.com",
        &server.url(),
        pod_rule(&["CREATE"]),
        json!({"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "shop"}}}),
    );
    kubectl_apply(&kubectl, &sim, &manifest).await;
    let rows = kubectl_rows(&kubectl, &sim, &["get", "mutatingwebhookconfigurations"]).await;
    assert_eq!(rows[0], ["NAME", "WEBHOOKS", "AGE"]);
    assert_eq!(rows[1][..2], ["memory-clamp", "1"]);

    let client = client(&sim);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "shop");
    deployments
        .create(&PostParams::default(), &deployment("web", 1, "registry.local/shop/web:1"))
        .await
        .expect("created");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "shop");
    let pod = first_that(pods, "the web pod", |_| true).await;
    let limit = pod
        .spec
        .as_ref()
        .and_then(|s| s.containers[0].resources.as_ref()?.limits.as_ref()?.get("memory").cloned());
    assert_eq!(limit.map(|q| q.0).as_deref(), Some("16Mi"), "the pod runs with the clamped limit");
    let template_limit = deployments.get("web").await.expect("deployment").spec.and_then(|s| {
        s.template.spec?.containers[0].resources.as_ref()?.limits.as_ref()?.get("memory").cloned()
    });
    assert_eq!(template_limit.map(|q| q.0).as_deref(), Some("256Mi"), "the Deployment still says 256Mi");

    let reviews = server.reviews();
    let request =
        &reviews.iter().find(|r| r["request"]["kind"]["kind"] == "Pod").expect("a pod review")["request"];
    assert_eq!(request["operation"], "CREATE");
    assert_eq!(request["namespace"], "shop");
    assert_eq!(request["name"], "", "a generated name is not known to admission");
    assert_eq!(request["userInfo"]["username"], "system:serviceaccount:kube-system:replicaset-controller");
    assert_eq!(request["object"]["spec"]["containers"][0]["resources"]["limits"]["memory"], "256Mi");

    // Other namespaces are not selected.
    let elsewhere: Api<Pod> = Api::namespaced(client, "default");
    let created =
        elsewhere.create(&PostParams::default(), &plain_pod("free", "registry.local/shop/web:1")).await;
    assert!(created.expect("created").spec.is_some_and(|s| s.containers[0].resources.is_none()));
}

#[tokio::test]
async fn a_validating_webhook_refuses_with_its_message_and_the_replica_set_reports_failed_create() {
    let Ok(kubectl) = which_kubectl() else {
        eprintln!("skipped: kubectl is not installed");
        return;
    };
    // Images from registry.evil are refused; a Deployment's memory may not go above 1Gi.
    let server = WebhookServer::start(|review| {
        let object = &review["request"]["object"];
        let image = object.pointer("/spec/containers/0/image").and_then(Value::as_str).unwrap_or_default();
        let memory = object
            .pointer("/spec/template/spec/containers/0/resources/limits/memory")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if image.starts_with("registry.evil/") {
            answer(
                review,
                false,
                json!({"code": 403, "reason": "Forbidden", "message": format!("image {image} is not from an allowed registry")}),
                None,
            )
        } else if memory.ends_with("Gi") && memory.trim_end_matches("Gi").parse::<u32>().is_ok_and(|g| g > 1)
        {
            answer(
                review,
                false,
                json!({"message": format!("memory {memory} is above the 1Gi policy")}),
                None,
            )
        } else {
            answer(review, true, json!({}), None)
        }
    });
    let sim = sim().await;
    let images = configuration(
        "ValidatingWebhookConfiguration",
        "images.policy.example.com",
        &server.url(),
        pod_rule(&["CREATE", "UPDATE"]),
        json!({}),
    );
    kubectl_apply(&kubectl, &sim, &images).await;
    let sizes = configuration(
        "ValidatingWebhookConfiguration",
        "sizes.policy.example.com",
        &server.url(),
        json!({"operations": ["UPDATE"], "apiGroups": ["apps"], "apiVersions": ["v1"], "resources": ["deployments"]}),
        json!({}),
    );
    kubectl_apply(&kubectl, &sim, &sizes).await;

    let client = client(&sim);
    let pods: Api<Pod> = Api::namespaced(client.clone(), "shop");
    let refused = pods.create(&PostParams::default(), &plain_pod("bad", "registry.evil/miner:1")).await;
    let Err(kube::Error::Api(status)) = refused else { panic!("refused: {refused:?}") };
    assert_eq!(status.code, 403);
    assert_eq!(
        status.message,
        "admission webhook \"images.policy.example.com\" denied the request: image registry.evil/miner:1 is not from an allowed registry"
    );
    let out = kubectl_with_input(
        &kubectl,
        &sim,
        &["-n", "shop", "run", "bad", "--image=registry.evil/miner:1"],
        "",
    )
    .await;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(
            "Error from server (Forbidden): admission webhook \"images.policy.example.com\" denied the request"
        ),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A controller's pod refused: a FailedCreate event with the webhook's words.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "shop");
    deployments
        .create(&PostParams::default(), &deployment("web", 1, "registry.evil/miner:1"))
        .await
        .expect("created");
    let set =
        first_that(Api::<ReplicaSet>::namespaced(client.clone(), "shop"), "the ReplicaSet", |_| true).await;
    let set_name = set.metadata.name.clone().expect("name");
    let failed = first_that(Api::<Event>::namespaced(client.clone(), "shop"), "FailedCreate", |e| {
        e.reason.as_deref() == Some("FailedCreate")
            && e.involved_object.name.as_deref() == Some(set_name.as_str())
    })
    .await;
    assert_eq!(
        failed.message.as_deref(),
        Some(
            "Error creating: admission webhook \"images.policy.example.com\" denied the request: image registry.evil/miner:1 is not from an allowed registry"
        )
    );

    // An update refused keeps the object as it was; one within policy goes through.
    let raise = |memory: &str| {
        Patch::Strategic(json!({"spec": {"template": {"spec": {"containers": [{"name": "app",
            "resources": {"limits": {"memory": memory}}}]}}}}))
    };
    let refused = deployments.patch("web", &PatchParams::default(), &raise("4Gi")).await;
    let Err(kube::Error::Api(status)) = refused else { panic!("refused: {refused:?}") };
    assert_eq!(status.code, 400, "a refusal without a code is a 400");
    assert_eq!(
        status.message,
        "admission webhook \"sizes.policy.example.com\" denied the request: memory 4Gi is above the 1Gi policy"
    );
    let patched =
        deployments.patch("web", &PatchParams::default(), &raise("512Mi")).await.expect("within policy");
    let limit = patched.spec.and_then(|s| {
        s.template.spec?.containers[0].resources.as_ref()?.limits.as_ref()?.get("memory").cloned()
    });
    assert_eq!(limit.map(|q| q.0).as_deref(), Some("512Mi"));
    let update = server
        .reviews()
        .into_iter()
        .find(|r| r["request"]["kind"]["kind"] == "Deployment")
        .expect("the Deployment's update was reviewed");
    assert_eq!(update["request"]["operation"], "UPDATE");
    assert_eq!(
        update["request"]["oldObject"]["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"],
        "256Mi"
    );
}

#[tokio::test]
async fn a_webhook_that_is_down_or_slow_refuses_under_fail_and_is_skipped_under_ignore() {
    let Ok(kubectl) = which_kubectl() else {
        eprintln!("skipped: kubectl is not installed");
        return;
    };
    let sim = sim().await;
    let client = client(&sim);
    let pods: Api<Pod> = Api::namespaced(client.clone(), "shop");
    // Nothing listens on a port just freed.
    let down = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr");
    let manifest = configuration(
        "ValidatingWebhookConfiguration",
        "down.policy.example.com",
        &format!("http://{down}/validate"),
        pod_rule(&["CREATE"]),
        json!({}),
    );
    kubectl_apply(&kubectl, &sim, &manifest).await;
    let refused = pods.create(&PostParams::default(), &plain_pod("a", "registry.local/shop/web:1")).await;
    let Err(kube::Error::Api(status)) = refused else { panic!("refused: {refused:?}") };
    assert_eq!((status.code, status.reason.as_str()), (500, "InternalError"));
    assert!(
        status.message.starts_with(&format!(
            "Internal error occurred: failed calling webhook \"down.policy.example.com\": failed to call webhook: Post \"http://{down}/validate?timeout=10s\""
        )),
        "{}",
        status.message
    );

    let ignore = configuration(
        "ValidatingWebhookConfiguration",
        "down.policy.example.com",
        &format!("http://{down}/validate"),
        pod_rule(&["CREATE"]),
        json!({"failurePolicy": "Ignore"}),
    );
    kubectl_apply(&kubectl, &sim, &ignore).await;
    pods.create(&PostParams::default(), &plain_pod("b", "registry.local/shop/web:1"))
        .await
        .expect("created past an ignored webhook");

    // A webhook slower than its timeout.
    let slow = WebhookServer::start(|review| {
        std::thread::sleep(std::time::Duration::from_millis(2500));
        answer(review, true, json!({}), None)
    });
    let manifest = configuration(
        "MutatingWebhookConfiguration",
        "slow.policy.example.com",
        &slow.url(),
        pod_rule(&["CREATE"]),
        json!({"timeoutSeconds": 1}),
    );
    kubectl_apply(&kubectl, &sim, &manifest).await;
    let refused = pods.create(&PostParams::default(), &plain_pod("c", "registry.local/shop/web:1")).await;
    let Err(kube::Error::Api(status)) = refused else { panic!("refused: {refused:?}") };
    assert!(status.message.ends_with("?timeout=1s\": context deadline exceeded"), "{}", status.message);
}
