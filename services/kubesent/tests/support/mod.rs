//! What several end-to-end test files share: the failing workloads they create.

#![allow(dead_code)]

use k8s_openapi::api::core::v1::Pod;
use serde_json::json;

/// A bare pod in `shop` whose container needs 200Mi under a 128Mi limit: kube-sim OOM-kills it.
pub fn oom_pod(name: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "shop", "labels": {"app": "web"},
            "annotations": {"sim.kubesent.io/memory-need": "200Mi"}},
        "spec": {"containers": [{"name": "app", "image": "registry.local/shop/web:1.4.2",
            "resources": {"limits": {"memory": "128Mi"}, "requests": {"memory": "128Mi"}}}]}
    }))
    .expect("pod json")
}
