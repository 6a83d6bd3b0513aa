//! The running simulator's shared state: the store, the kubelet, the registry, faults, RBAC and the
//! request log. The HTTP front ([`crate::api::http`]), the verbs ([`crate::api`]), the controllers and the
//! admin endpoints all work on it.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::http::{Method, Uri};
use tokio_util::sync::CancellationToken;

use crate::{kubelet::Kubelet, registry::Registry, store::Store};

/// One request as the simulator saw it, for tests to assert on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    /// HTTP method.
    pub method: String,
    /// Path without the query.
    pub path: String,
    /// Raw query string.
    pub query: String,
    /// Response status.
    pub status: u16,
    /// The client: its bearer token, else its User-Agent.
    pub client: String,
    /// The request body's `Content-Type` (empty when none was sent).
    pub content_type: String,
    /// When it was answered.
    pub at: jiff::Timestamp,
}

impl RequestRecord {
    /// Whether the request could have changed state.
    pub fn is_mutating(&self) -> bool {
        !matches!(self.method.as_str(), "GET" | "HEAD" | "OPTIONS")
    }
}

/// Requests kept in the log; older ones are dropped.
const REQUEST_LOG_CAPACITY: usize = 100_000;

/// Server behaviour that depends on the simulated Kubernetes version.
#[derive(Debug, Clone, Copy)]
pub struct ServerConfig {
    /// The minor version served (`/version`, and which features exist: `pods/resize` from 33).
    pub kubernetes_minor: u32,
}

/// Shared state of a running simulator.
pub struct SimState {
    /// The object store.
    pub store: Arc<Store>,
    /// The simulated kubelet.
    pub kubelet: Arc<Kubelet>,
    /// The simulated container registry.
    pub registry: Arc<Registry>,
    /// Server behaviour settings.
    pub config: ServerConfig,
    /// Faults on demand.
    pub faults: crate::faults::Faults,
    /// Token authentication and RBAC (off by default).
    pub rbac: crate::rbac::Rbac,
    /// How often watches with `allowWatchBookmarks` get a BOOKMARK.
    pub bookmark_interval: Duration,
    /// Cancelled when the simulator stops; ends watch streams.
    pub shutdown: CancellationToken,
    pub(crate) requests: Mutex<VecDeque<RequestRecord>>,
    pub(crate) server_address: Mutex<String>,
    /// Per Job uid: how many of its pods had failed when the Job controller last saw the count grow,
    /// and when (its back-off counts from there; pod timestamps have whole seconds only, too coarse
    /// for a scaled clock).
    pub(crate) job_failures: Mutex<std::collections::HashMap<String, (usize, std::time::Instant)>>,
}

impl SimState {
    /// A copy of the request log, oldest first.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.requests.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned().collect()
    }

    /// The requests that could have changed state (anything but GET).
    pub fn mutating_requests(&self) -> Vec<RequestRecord> {
        self.requests().into_iter().filter(RequestRecord::is_mutating).collect()
    }

    pub(crate) fn log_request(
        &self,
        method: &Method,
        uri: &Uri,
        status: u16,
        client: &str,
        content_type: &str,
    ) {
        let mut log = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        if log.len() == REQUEST_LOG_CAPACITY {
            log.pop_front();
        }
        log.push_back(RequestRecord {
            method: method.to_string(),
            path: uri.path().to_owned(),
            query: uri.query().unwrap_or_default().to_owned(),
            status,
            client: client.to_owned(),
            content_type: content_type.to_owned(),
            at: jiff::Timestamp::now(),
        });
    }
}
