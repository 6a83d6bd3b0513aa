//! A GitOps reconciler for tests and campaigns: it holds a workload's manifest (what Git says) and
//! applies it again whenever the live object drifts from it, after a delay or at once, with server-side
//! apply under its own field manager and forced — as Flux's kustomize-controller or Argo CD's self-heal
//! with server-side apply do. Put next to KubeSent, it undoes KubeSent's fixes the way those controllers
//! would, so tests can show KubeSent notices and does not fight it.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use futures::TryStreamExt as _;
use kube::{
    Api, Client,
    api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams},
    runtime::{WatchStreamExt as _, watcher},
};
use serde_json::Value;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// The field manager the reconciler applies under unless told otherwise.
pub const DEFAULT_FIELD_MANAGER: &str = "gitops-reconciler";

/// How the reconciler behaves.
#[derive(Debug, Clone)]
pub struct ReconcilerOptions {
    /// How long a drift is left before the manifest is applied again (zero: at once, on every change).
    pub delay: Duration,
    /// The field manager of its applies.
    pub field_manager: String,
}

impl Default for ReconcilerOptions {
    fn default() -> Self {
        Self { delay: Duration::ZERO, field_manager: DEFAULT_FIELD_MANAGER.to_owned() }
    }
}

/// What went wrong with a manifest.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// A field the reconciler needs is missing.
    #[error("the manifest has no {0}")]
    Missing(&'static str),
    /// The text is neither YAML nor JSON of one object.
    #[error("the manifest is not one YAML or JSON object: {0}")]
    Unreadable(String),
}

/// Reads a manifest written as YAML or JSON.
pub fn read_manifest(text: &str) -> Result<Value, ManifestError> {
    let value: Value = serde_saphyr::from_str(text).map_err(|e| ManifestError::Unreadable(e.to_string()))?;
    if !value.is_object() {
        return Err(ManifestError::Unreadable("not a mapping".into()));
    }
    Ok(value)
}

/// A running reconciler; stops when dropped or [`Reconciler::stop`]ped.
pub struct Reconciler {
    applies: Arc<AtomicU64>,
    applied: Arc<Notify>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Reconciler {
    /// Starts reconciling `manifest` (a whole object: apiVersion, kind, metadata.name and namespace)
    /// against the cluster of `client`. The first apply happens at once.
    pub fn start(client: Client, manifest: Value, options: ReconcilerOptions) -> Result<Self, ManifestError> {
        let api = dynamic_api(client, &manifest)?;
        let name = manifest
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .ok_or(ManifestError::Missing("metadata.name"))?
            .to_owned();
        let applies = Arc::new(AtomicU64::new(0));
        let applied = Arc::new(Notify::new());
        let shutdown = CancellationToken::new();
        let run = Run { api, name, manifest, options, applies: applies.clone(), applied: applied.clone() };
        let task = tokio::spawn(run.reconcile(shutdown.clone()));
        Ok(Self { applies, applied, shutdown, task })
    }

    /// How many times the manifest has been applied.
    pub fn applies(&self) -> u64 {
        self.applies.load(Ordering::SeqCst)
    }

    /// Waits until the manifest has been applied at least `count` times.
    pub async fn wait_for_applies(&self, count: u64) {
        loop {
            let applied = self.applied.notified();
            if self.applies() >= count {
                return;
            }
            applied.await;
        }
    }

    /// Stops the reconciler and waits for it.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        let _ = (&mut self.task).await;
    }
}

impl Drop for Reconciler {
    fn drop(&mut self) {
        self.shutdown.cancel();
        self.task.abort();
    }
}

/// The API of the manifest's kind in its namespace.
fn dynamic_api(client: Client, manifest: &Value) -> Result<Api<DynamicObject>, ManifestError> {
    let api_version =
        manifest.get("apiVersion").and_then(Value::as_str).ok_or(ManifestError::Missing("apiVersion"))?;
    let kind = manifest.get("kind").and_then(Value::as_str).ok_or(ManifestError::Missing("kind"))?;
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let resource = ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, kind));
    Ok(match manifest.pointer("/metadata/namespace").and_then(Value::as_str) {
        Some(namespace) => Api::namespaced_with(client, namespace, &resource),
        None => Api::all_with(client, &resource),
    })
}

struct Run {
    api: Api<DynamicObject>,
    name: String,
    manifest: Value,
    options: ReconcilerOptions,
    applies: Arc<AtomicU64>,
    applied: Arc<Notify>,
}

impl Run {
    async fn reconcile(self, shutdown: CancellationToken) {
        let config = watcher::Config::default().fields(&format!("metadata.name={}", self.name));
        let changes = watcher(self.api.clone(), config).applied_objects();
        futures::pin_mut!(changes);
        self.apply().await;
        loop {
            let next = tokio::select! {
                () = shutdown.cancelled() => return,
                next = changes.try_next() => next,
            };
            let live = match next {
                Ok(Some(object)) => object,
                Ok(None) => return,
                Err(error) => {
                    tracing::warn!(%error, "gitops reconciler: watch failed; the watcher retries");
                    continue;
                }
            };
            if !drifted(&self.manifest, &live) {
                continue;
            }
            // Argo CD's self-heal waits a moment before it syncs again; Flux waits for its interval.
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(self.options.delay) => {}
            }
            // A watch event can be older than the last apply: act on the object as it is now.
            match self.api.get_opt(&self.name).await {
                Ok(Some(now)) if !drifted(&self.manifest, &now) => continue,
                _ => self.apply().await,
            }
        }
    }

    async fn apply(&self) {
        let params = PatchParams::apply(&self.options.field_manager).force();
        match self.api.patch(&self.name, &params, &Patch::Apply(&self.manifest)).await {
            Ok(_) => {
                self.applies.fetch_add(1, Ordering::SeqCst);
                self.applied.notify_waiters();
            }
            Err(error) => tracing::warn!(%error, name = %self.name, "gitops reconciler: the apply failed"),
        }
    }
}

/// Whether the live object differs from the manifest in a field the manifest states (list items with a
/// `name` are matched by it, other lists compared whole).
pub fn drifted(manifest: &Value, live: &DynamicObject) -> bool {
    let Ok(live) = serde_json::to_value(live) else { return true };
    !contains(&live, manifest)
}

fn contains(live: &Value, wanted: &Value) -> bool {
    match (live, wanted) {
        (Value::Object(live), Value::Object(wanted)) => {
            wanted.iter().all(|(key, value)| live.get(key).is_some_and(|l| contains(l, value)))
        }
        (Value::Array(live), Value::Array(wanted)) if wanted.iter().all(|w| w.get("name").is_some()) => {
            live.len() == wanted.len()
                && wanted
                    .iter()
                    .all(|w| live.iter().any(|l| l.get("name") == w.get("name") && contains(l, w)))
        }
        (live, wanted) => live == wanted,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn live(memory: &str) -> DynamicObject {
        serde_json::from_value(json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "shop", "resourceVersion": "7"},
            "spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "app", "image": "web:1",
                "imagePullPolicy": "IfNotPresent", "resources": {"limits": {"memory": memory}}}]}}}}))
        .expect("object")
    }

    #[tokio::test]
    async fn a_change_to_a_stated_field_is_applied_back_under_the_reconcilers_own_manager() {
        use k8s_openapi::api::apps::v1::Deployment;
        use kubesent_kube_sim::{KubeSim, SimConfig};
        kubesent_common::install_crypto_provider();
        let sim =
            KubeSim::start(SimConfig { time_scale: 0.01, ..SimConfig::default() }).await.expect("kube-sim");
        let client = kubesent_common::kube_client(Some(&sim.url())).await.expect("client");
        let manifest = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "app", "image": "web:1", "resources": {"limits": {"memory": "128Mi"}}}]}}}});
        let reconciler =
            Reconciler::start(client.clone(), manifest, ReconcilerOptions::default()).expect("started");
        let patience = Duration::from_secs(20);
        tokio::time::timeout(patience, reconciler.wait_for_applies(1))
            .await
            .expect("created by its first apply");

        // Another actor (KubeSent) raises the memory: the reconciler puts the manifest's value back.
        let deployments: Api<Deployment> = Api::namespaced(client, "shop");
        let raise = json!({"spec": {"template": {"spec": {"containers": [{"name": "app",
            "resources": {"limits": {"memory": "256Mi"}}}]}}}});
        let params =
            PatchParams { field_manager: Some("kubesent-remediator".into()), ..PatchParams::default() };
        deployments.patch("web", &params, &Patch::Strategic(&raise)).await.expect("raised");
        tokio::time::timeout(patience, reconciler.wait_for_applies(2)).await.expect("applied again");
        let now = serde_json::to_value(deployments.get("web").await.expect("read")).expect("json");
        assert_eq!(
            now.pointer("/spec/template/spec/containers/0/resources/limits/memory"),
            Some(&json!("128Mi"))
        );
        let owner = now["metadata"]["managedFields"]
            .as_array()
            .and_then(|entries| {
                entries.iter().find(|e| {
                    e.pointer("/fieldsV1/f:spec/f:template/f:spec/f:containers/k:{\"name\":\"app\"}/f:resources/f:limits/f:memory")
                        .is_some()
                })
            })
            .and_then(|e| e["manager"].as_str().map(str::to_owned));
        assert_eq!(owner.as_deref(), Some(DEFAULT_FIELD_MANAGER), "{now}");
        // Its own apply is no drift: it does not apply again by itself.
        assert_eq!(reconciler.applies(), 2);
        reconciler.stop().await;
    }

    #[test]
    fn a_manifest_is_read_from_yaml_and_a_list_is_refused() {
        let manifest =
            read_manifest("apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n").expect("yaml");
        assert_eq!(manifest["metadata"]["name"], "web");
        assert!(matches!(read_manifest("- a\n- b\n"), Err(ManifestError::Unreadable(_))));
    }

    #[test]
    fn only_a_stated_field_that_differs_is_a_drift() {
        let manifest = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"template": {"spec": {"containers": [{"name": "app", "image": "web:1",
                "resources": {"limits": {"memory": "128Mi"}}}]}}}});
        assert!(!drifted(&manifest, &live("128Mi")), "defaults and server fields are no drift");
        assert!(drifted(&manifest, &live("256Mi")), "a changed limit is");
    }
}
