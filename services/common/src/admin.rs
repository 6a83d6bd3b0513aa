//! The admin HTTP endpoint every service serves: `/healthz`, `/readyz` and Prometheus `/metrics`.

use std::sync::{
    Arc, OnceLock,
    atomic::{AtomicBool, Ordering},
};

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use prometheus_client::{encoding::text::encode, registry::Registry};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Liveness and readiness as the service reports them.
#[derive(Debug, Default)]
pub struct Health {
    ready: AtomicBool,
    changed: tokio::sync::Notify,
}

impl Health {
    /// Marks the service ready (connected, streams set up) or not.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
        self.changed.notify_waiters();
    }

    /// Waits until the service is ready.
    pub async fn wait_ready(&self) {
        loop {
            let changed = self.changed.notified();
            if self.is_ready() {
                return;
            }
            changed.await;
        }
    }

    /// Whether the service is ready.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }
}

/// The metrics registry, published once every metric is registered. The endpoint serves before that
/// (liveness and readiness matter while the service waits for NATS); `/metrics` is empty until then.
pub type LateRegistry = OnceLock<Registry>;

#[derive(Clone)]
struct AdminState {
    registry: Arc<LateRegistry>,
    health: Arc<Health>,
}

/// The admin router.
pub fn router(registry: Arc<LateRegistry>, health: Arc<Health>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(AdminState { registry, health })
}

async fn readyz(State(state): State<AdminState>) -> Response {
    if state.health.is_ready() {
        (StatusCode::OK, "ready").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready").into_response()
    }
}

async fn metrics(State(state): State<AdminState>) -> Response {
    let mut body = String::new();
    let Some(registry) = state.registry.get() else {
        return (StatusCode::OK, body).into_response();
    };
    match encode(&mut body, registry) {
        Ok(()) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
            body,
        )
            .into_response(),
        Err(error) => (StatusCode::INTERNAL_SERVER_ERROR, error.to_string()).into_response(),
    }
}

/// Serves the admin router on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, app: Router, shutdown: CancellationToken) -> std::io::Result<()> {
    axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await
}
