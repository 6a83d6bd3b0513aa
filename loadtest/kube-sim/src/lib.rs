//! A Kubernetes API simulator: a real HTTP server that the real kube-rs client, kube-runtime's
//! watcher, kube-leader-election and `kubectl --server` talk to, with apiserver semantics (list
//! paging, watch with resourceVersion, bookmarks and 410 expiry, preconditions, graceful pod deletion,
//! `Status` errors) and a small kubelet that OOM-kills under-provisioned containers.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! let sim = kubesent_kube_sim::KubeSim::start(kubesent_kube_sim::SimConfig::default()).await?;
//! println!("kubectl --server {} get pods -A", sim.url());
//! # Ok(()) }
//! ```

pub mod actor;
mod admin;
pub mod admission;
mod api;
mod api_error;
pub mod controllers;
pub mod disruption;
mod event_views;
mod events;
pub mod faults;
pub mod kubelet;
pub mod nodes;
pub mod pods;
pub mod rbac;
pub mod realistic;
pub mod registry;
mod resize;
pub mod resources;
mod selectors;
mod state;
pub mod store;
pub mod webhooks;

use std::{
    collections::VecDeque,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

pub use api::{DeleteOptions, Deleted};
pub use api_error::{ApiError, FieldError};
pub use kubelet::{SimClock, annotations};
pub use registry::ImageState;
pub use state::{RequestRecord, ServerConfig, SimState};
pub use store::StoreConfig;
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::sync::CancellationToken;

/// Settings of a simulator instance.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Address to listen on; port 0 picks a free port.
    pub listen: SocketAddr,
    /// Wall-clock seconds per simulated second for the kubelet (1.0 = real time).
    pub time_scale: f64,
    /// Interval of BOOKMARK events on watches that ask for them (the apiserver's is about a minute).
    pub bookmark_interval: Duration,
    /// Store tunables (watch history, watcher buffers).
    pub store: StoreConfig,
    /// The cluster's nodes (by default three large workers, `sim-node-1` to `sim-node-3`). Pods are
    /// scheduled onto them by their requests, and resizes beyond a node's allocatable are infeasible.
    pub nodes: Vec<nodes::NodeConfig>,
    /// Kubernetes minor version served (1.`minor`); `pods/resize` exists from 33.
    pub kubernetes_minor: u32,
    /// Namespaces that exist from the start besides `default`, `kube-system`, `kube-public` and
    /// `kube-node-lease` (as if an admin had created them): by default `kubesent` (where KubeSent's
    /// leases live) and `shop` (the demo's and the tests' application). Objects in any other namespace
    /// are refused until it is created, as a real apiserver refuses them.
    pub namespaces: Vec<String>,
}

/// The namespaces every cluster has.
pub const SYSTEM_NAMESPACES: [&str; 4] = ["default", "kube-system", "kube-public", "kube-node-lease"];

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            time_scale: 1.0,
            bookmark_interval: Duration::from_secs(60),
            store: StoreConfig::default(),
            nodes: (1..=3).map(|i| nodes::NodeConfig::worker(&format!("sim-node-{i}"))).collect(),
            kubernetes_minor: 36,
            namespaces: vec!["kubesent".to_owned(), "shop".to_owned()],
        }
    }
}

/// A running simulator; stopped when [`KubeSim::shutdown`] is called or it is dropped.
pub struct KubeSim {
    state: Arc<SimState>,
    addr: SocketAddr,
    server: Option<JoinHandle<()>>,
    /// Stops the current HTTP server (not the store, kubelet or controllers).
    server_stop: CancellationToken,
}

impl KubeSim {
    /// Binds `config.listen` and starts serving.
    pub async fn start(config: SimConfig) -> std::io::Result<Self> {
        let listener = TcpListener::bind(config.listen).await?;
        Self::serve(config, listener)
    }

    /// Serves on an already bound listener.
    pub fn serve(config: SimConfig, listener: TcpListener) -> std::io::Result<Self> {
        let addr = listener.local_addr()?;
        let store = Arc::new(store::Store::new(config.store));
        let registry = Arc::new(registry::Registry::default());
        for (index, node) in config.nodes.iter().enumerate() {
            let object = node.object(index, config.kubernetes_minor);
            store
                .mutate(&resources::NODES, "", &node.name, |_| Ok(store::Mutation::Put(object)))
                .map_err(|error| std::io::Error::other(format!("node {}: {}", node.name, error.message)))?;
        }
        let nodes = nodes::Nodes::new(store.clone());
        let kubelet =
            kubelet::Kubelet::new(store.clone(), registry.clone(), SimClock::new(config.time_scale), nodes);
        let shutdown = CancellationToken::new();
        let state = Arc::new(SimState {
            store,
            kubelet,
            registry,
            config: ServerConfig { kubernetes_minor: config.kubernetes_minor },
            faults: faults::Faults::default(),
            rbac: rbac::Rbac::default(),
            bookmark_interval: config.bookmark_interval,
            shutdown: shutdown.clone(),
            requests: Mutex::new(VecDeque::new()),
            server_address: Mutex::new(addr.to_string()),
            job_failures: Mutex::default(),
        });
        for namespace in SYSTEM_NAMESPACES.iter().copied().chain(config.namespaces.iter().map(String::as_str))
        {
            let object =
                serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}});
            match state.create(
                &resources::NAMESPACES,
                "",
                object,
                false,
                &actor::Actor::admin("kube-apiserver"),
            ) {
                Ok(_) => {}
                Err(error) if error.code == 409 => {}
                Err(error) => {
                    return Err(std::io::Error::other(format!("namespace {namespace}: {}", error.message)));
                }
            }
        }
        controllers::spawn(state.clone(), shutdown.clone());
        state.kubelet.spawn_eviction_manager(shutdown.clone());
        let server_stop = shutdown.child_token();
        let server = Self::spawn_server(&state, listener, server_stop.clone());
        Ok(Self { state, addr, server: Some(server), server_stop })
    }

    fn spawn_server(state: &Arc<SimState>, listener: TcpListener, stop: CancellationToken) -> JoinHandle<()> {
        let app = api::http::router(state.clone());
        // NB: without TCP_NODELAY a watch line waits for Nagle and the client's delayed ACK (~40 ms).
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            let _ = tcp.set_nodelay(true);
        });
        tokio::spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned());
            if let Err(error) = serve.await {
                tracing::error!(%error, "kube-sim server failed");
            }
        })
    }

    /// Restarts the API server on the same address, as an apiserver restart looks to clients: every
    /// connection and watch ends, and the store (with its resourceVersions) is kept.
    pub async fn restart(&mut self) -> std::io::Result<()> {
        self.state.faults.drop_watches();
        self.server_stop.cancel();
        if let Some(server) = self.server.take() {
            drain(server, &self.state.faults).await;
        }
        let listener = TcpListener::bind(self.addr).await?;
        self.server_stop = self.state.shutdown.child_token();
        self.server = Some(Self::spawn_server(&self.state, listener, self.server_stop.clone()));
        Ok(())
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The shared state (store, kubelet, request log) for in-process assertions.
    pub fn state(&self) -> &Arc<SimState> {
        &self.state
    }

    /// A copy of the request log.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.state.requests()
    }

    /// Creates (or replaces) every object of a multi-document YAML manifest, as `kubectl apply` would
    /// for new objects. Returns how many objects were applied.
    pub fn apply_yaml(&self, yaml: &str) -> Result<usize, ApiError> {
        let documents: Vec<serde_json::Value> = serde_saphyr::from_multiple(yaml)
            .map_err(|e| ApiError::bad_request(format!("invalid YAML: {e}")))?;
        let mut applied = 0;
        for document in documents.into_iter().filter(|d| d.is_object()) {
            let kind = document.get("kind").and_then(serde_json::Value::as_str).unwrap_or_default();
            let api_version =
                document.get("apiVersion").and_then(serde_json::Value::as_str).unwrap_or_default();
            let def = resources::ALL
                .iter()
                .copied()
                .find(|d| d.kind == kind && d.api_version() == api_version)
                .ok_or_else(|| {
                    ApiError::bad_request(format!("kind {kind} in {api_version} is not served"))
                })?;
            let namespace = if def.namespaced {
                document
                    .pointer("/metadata/namespace")
                    .and_then(serde_json::Value::as_str)
                    .unwrap_or("default")
                    .to_owned()
            } else {
                String::new()
            };
            let name = document
                .pointer("/metadata/name")
                .and_then(serde_json::Value::as_str)
                .unwrap_or_default()
                .to_owned();
            match self.state.create(
                def,
                &namespace,
                document.clone(),
                false,
                &actor::Actor::admin("kube-sim"),
            ) {
                Ok(_) => {}
                Err(e) if e.code == 409 => {
                    let mut replacement = document;
                    let current = self.state.store.get(def, &namespace, &name)?;
                    replacement["metadata"]["resourceVersion"] =
                        serde_json::json!(current.resource_version.to_string());
                    self.state.replace(
                        def,
                        &namespace,
                        &name,
                        None,
                        replacement,
                        &actor::Actor::admin("kube-sim"),
                    )?;
                }
                Err(e) => return Err(e),
            }
            applied += 1;
        }
        Ok(applied)
    }

    /// Turns token authentication and RBAC on. The returned token authenticates as a cluster admin.
    pub fn enable_rbac(&self) -> String {
        let token = format!("admin-{}", uuid::Uuid::new_v4().simple());
        self.state.rbac.add_token(&token, rbac::UserInfo::admin());
        self.state.rbac.set_enabled(true);
        token
    }

    /// A bearer token that authenticates as ServiceAccount `namespace/name`.
    pub fn service_account_token(&self, namespace: &str, name: &str) -> String {
        let token = format!("sa-{namespace}-{name}-{}", uuid::Uuid::new_v4().simple());
        self.state.rbac.add_token(&token, rbac::UserInfo::service_account(namespace, name));
        token
    }

    /// Stops serving and ends open watches.
    pub async fn shutdown(mut self) {
        self.state.shutdown.cancel();
        if let Some(server) = self.server.take() {
            drain(server, &self.state.faults).await;
        }
    }
}

/// Waits for a stopping server to finish. A draining server still answers requests on open
/// connections, and clients watch again the moment a watch ends: those watches are ended too, until
/// every connection has closed.
async fn drain(mut server: JoinHandle<()>, faults: &faults::Faults) {
    loop {
        tokio::select! {
            _ = &mut server => return,
            () = tokio::time::sleep(std::time::Duration::from_millis(20)) => faults.drop_watches(),
        }
    }
}

impl Drop for KubeSim {
    fn drop(&mut self) {
        self.state.shutdown.cancel();
    }
}
