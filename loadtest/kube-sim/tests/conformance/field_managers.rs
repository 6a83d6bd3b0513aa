//! Who wrote what: every write records `metadata.managedFields` under its field manager, and
//! server-side apply owns fields, refuses to change another manager's values unless forced, and creates
//! what does not exist — through kubectl and kube-rs.

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Patch, PatchParams};
use serde_json::Value;

use super::*;

/// The managers of `object`'s entries as `(manager, operation, subresource)`.
fn entries(object: &Value) -> Vec<(String, String, String)> {
    object["metadata"]["managedFields"]
        .as_array()
        .map(|list| {
            list.iter()
                .map(|e| {
                    let text = |k: &str| e[k].as_str().unwrap_or_default().to_owned();
                    (text("manager"), text("operation"), text("subresource"))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The manager whose entry holds the path `fields` (FieldsV1 keys, outermost first).
fn owner(object: &Value, fields: &[&str]) -> Option<String> {
    object["metadata"]["managedFields"].as_array()?.iter().find_map(|entry| {
        let mut node = &entry["fieldsV1"];
        for field in fields {
            node = node.get(*field)?;
        }
        entry["manager"].as_str().map(str::to_owned)
    })
}

const MEMORY: [&str; 8] = [
    "f:spec",
    "f:template",
    "f:spec",
    "f:containers",
    "k:{\"name\":\"app\"}",
    "f:resources",
    "f:limits",
    "f:memory",
];

#[tokio::test]
async fn each_write_is_recorded_under_its_field_manager_and_kubectl_shows_them() {
    let Ok(kubectl) = which_kubectl() else {
        eprintln!("skipped: kubectl is not installed");
        return;
    };
    let sim = sim().await;
    let client = client(&sim);
    let manifest = serde_json::to_string(&json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "app", "image": "registry.local/shop/web:1",
                    "resources": {"limits": {"memory": "128Mi"}}}]}}}}))
    .expect("manifest");
    let out = kubectl_with_input(&kubectl, &sim, &["apply", "-f", "-"], &manifest).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // KubeSent raises the memory limit under its own manager, as the remediator patches.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "shop");
    let raise = json!({"spec": {"template": {"spec": {"containers": [{"name": "app",
        "resources": {"limits": {"memory": "256Mi"}}}]}}}});
    deployments
        .patch(
            "web",
            &PatchParams { field_manager: Some("kubesent-remediator".into()), ..PatchParams::default() },
            &Patch::Strategic(&raise),
        )
        .await
        .expect("patched");
    // The controller writes the status as kube-controller-manager.
    first_that(deployments.clone(), "a status", |d: &Deployment| d.status.is_some()).await;

    let out = tokio::process::Command::new(&kubectl)
        .args([
            "--server",
            &sim.url(),
            "-n",
            "shop",
            "get",
            "deployment",
            "web",
            "-o",
            "json",
            "--show-managed-fields",
        ])
        .output()
        .await
        .expect("kubectl runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let shown: Value = serde_json::from_slice(&out.stdout).expect("json");
    let managers = entries(&shown);
    for expected in [
        ("kubectl-client-side-apply", "Update", ""),
        ("kubesent-remediator", "Update", ""),
        ("kube-controller-manager", "Update", "status"),
    ] {
        assert!(
            managers.iter().any(|(m, o, s)| (m.as_str(), o.as_str(), s.as_str()) == expected),
            "{expected:?} in {managers:?}"
        );
    }
    assert_eq!(owner(&shown, &MEMORY).as_deref(), Some("kubesent-remediator"), "{shown}");
    assert_eq!(owner(&shown, &["f:spec", "f:replicas"]).as_deref(), Some("kubectl-client-side-apply"));
    assert_eq!(
        owner(&shown, &["f:status", "f:replicas"]).as_deref(),
        Some("kube-controller-manager"),
        "{shown}"
    );

    // `kubectl edit` (a patch under kubectl-edit) takes the field it changed.
    let out = tokio::process::Command::new(&kubectl)
        .args([
            "--server",
            &sim.url(),
            "-n",
            "shop",
            "patch",
            "deployment",
            "web",
            "--field-manager=kubectl-edit",
            "-p",
            r#"{"spec":{"replicas":3}}"#,
        ])
        .output()
        .await
        .expect("kubectl runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let now = serde_json::to_value(deployments.get("web").await.expect("read")).expect("json");
    assert_eq!(owner(&now, &["f:spec", "f:replicas"]).as_deref(), Some("kubectl-edit"));
    assert_eq!(owner(&now, &MEMORY).as_deref(), Some("kubesent-remediator"));
}

#[tokio::test]
async fn server_side_apply_refuses_to_change_another_managers_value_until_forced() {
    let Ok(kubectl) = which_kubectl() else {
        eprintln!("skipped: kubectl is not installed");
        return;
    };
    let sim = sim().await;
    let client = client(&sim);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "shop");
    // A GitOps controller applies the manifest: the object is created (201) and owned by its manager.
    let manifest = |memory: &str| {
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "app", "image": "registry.local/shop/web:1",
                        "resources": {"limits": {"memory": memory}}}]}}}})
    };
    let applied = deployments
        .patch("web", &PatchParams::apply("gitops"), &Patch::Apply(&manifest("128Mi")))
        .await
        .expect("created by apply");
    let applied = serde_json::to_value(applied).expect("json");
    assert_eq!(entries(&applied)[0], ("gitops".into(), "Apply".into(), String::new()));
    assert_eq!(owner(&applied, &MEMORY).as_deref(), Some("gitops"));

    // Another writer changes the memory: the GitOps manager loses that field.
    let raise = json!({"spec": {"template": {"spec": {"containers": [{"name": "app",
        "resources": {"limits": {"memory": "256Mi"}}}]}}}});
    deployments
        .patch(
            "web",
            &PatchParams { field_manager: Some("kubesent-remediator".into()), ..PatchParams::default() },
            &Patch::Strategic(&raise),
        )
        .await
        .expect("raised");

    // Applying the old value again conflicts, with the apiserver's message and cause.
    let refused = deployments
        .patch("web", &PatchParams::apply("gitops"), &Patch::Apply(&manifest("128Mi")))
        .await
        .expect_err("a conflict");
    let kube::Error::Api(status) = refused else { panic!("an API error: {refused:?}") };
    assert_eq!(status.code, 409);
    assert_eq!(status.reason, "Conflict");
    assert!(
        status.message.starts_with(
            "Apply failed with 1 conflict: conflict with \"kubesent-remediator\" using apps/v1 at "
        ) && status
            .message
            .ends_with(": .spec.template.spec.containers[name=\"app\"].resources.limits.memory"),
        "{}",
        status.message
    );

    // kubectl apply --server-side says the same; with --force-conflicts it takes the field back.
    let yaml = serde_json::to_string(&manifest("128Mi")).expect("manifest");
    let out = kubectl_with_input(
        &kubectl,
        &sim,
        &["apply", "--server-side", "--field-manager=gitops", "-f", "-"],
        &yaml,
    )
    .await;
    assert!(!out.status.success(), "refused");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("conflict with \"kubesent-remediator\""),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = kubectl_with_input(
        &kubectl,
        &sim,
        &["apply", "--server-side", "--force-conflicts", "--field-manager=gitops", "-f", "-"],
        &yaml,
    )
    .await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let now = serde_json::to_value(deployments.get("web").await.expect("read")).expect("json");
    assert_eq!(
        now.pointer("/spec/template/spec/containers/0/resources/limits/memory"),
        Some(&json!("128Mi"))
    );
    assert_eq!(owner(&now, &MEMORY).as_deref(), Some("gitops"));

    // kubectl creates with server-side apply too (it asks for server-side field validation).
    let mut other = manifest("64Mi");
    other["metadata"]["name"] = json!("api");
    let out = kubectl_with_input(
        &kubectl,
        &sim,
        &["apply", "--server-side", "--field-manager=gitops", "-f", "-"],
        &other.to_string(),
    )
    .await;
    assert!(out.status.success(), "created by kubectl's apply: {}", String::from_utf8_lossy(&out.stderr));

    // An apply without a field manager is refused as the apiserver refuses it.
    let (code, body) = raw_patch(
        &sim,
        "/apis/apps/v1/namespaces/shop/deployments/web",
        "application/apply-patch+yaml",
        &yaml,
    )
    .await;
    assert_eq!(code, 422);
    assert_eq!(
        body["message"],
        "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch"
    );
}

/// PATCHes a raw body with `content_type` and no query, with a plain TCP client.
async fn raw_patch(sim: &KubeSim, path: &str, content_type: &str, body: &str) -> (u16, Value) {
    let response = reqwest::Client::new()
        .patch(format!("{}{path}", sim.url()))
        .header("Content-Type", content_type)
        .body(body.to_owned())
        .send()
        .await
        .expect("sent");
    let code = response.status().as_u16();
    (code, response.json().await.expect("a Status"))
}
