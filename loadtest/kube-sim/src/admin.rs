//! `/_sim/*`: control endpoints for a simulator running in another process (faults, registry,
//! partitions, the request log). Never subject to faults or RBAC.

use axum::{
    http::{Method, StatusCode},
    response::{IntoResponse, Response},
};
use serde::Deserialize;
use serde_json::json;

use crate::{registry::ImageState, state::SimState};

#[derive(Deserialize)]
struct FaultSettings {
    latency_ms: Option<u64>,
    error_rate: Option<f64>,
    throttle_count: Option<u32>,
    retry_after: Option<u32>,
}

#[derive(Deserialize)]
struct ImageSetting {
    image: String,
    state: ImageState,
}

#[derive(Deserialize)]
struct Partition {
    client: String,
    partitioned: bool,
}

#[derive(Deserialize)]
struct NodeReadiness {
    node: String,
    ready: bool,
    /// With `ready: false`: the kubelet stops posting status (conditions `Unknown`), not just NotReady.
    #[serde(default)]
    unreachable: bool,
}

fn bad(error: serde_json::Error) -> Response {
    (StatusCode::BAD_REQUEST, error.to_string()).into_response()
}

/// Serves one control request.
pub fn handle(state: &SimState, method: &Method, path: &str, body: &[u8]) -> Response {
    match (method.as_str(), path) {
        ("POST", "/_sim/faults") => match serde_json::from_slice::<FaultSettings>(body) {
            Ok(settings) => {
                if let Some(ms) = settings.latency_ms {
                    state.faults.set_latency(std::time::Duration::from_millis(ms));
                }
                if let Some(rate) = settings.error_rate {
                    state.faults.set_error_rate(rate);
                }
                if let Some(count) = settings.throttle_count {
                    state.faults.throttle(count, settings.retry_after.unwrap_or(1));
                }
                StatusCode::NO_CONTENT.into_response()
            }
            Err(e) => bad(e),
        },
        ("POST", "/_sim/drop-watches") => {
            state.faults.drop_watches();
            StatusCode::NO_CONTENT.into_response()
        }
        ("POST", "/_sim/registry") => match serde_json::from_slice::<ImageSetting>(body) {
            Ok(setting) => {
                state.registry.set(&setting.image, setting.state);
                StatusCode::NO_CONTENT.into_response()
            }
            Err(e) => bad(e),
        },
        ("POST", "/_sim/partition") => match serde_json::from_slice::<Partition>(body) {
            Ok(p) => {
                if p.partitioned {
                    state.faults.partition(&p.client);
                } else {
                    state.faults.heal(&p.client);
                }
                StatusCode::NO_CONTENT.into_response()
            }
            Err(e) => bad(e),
        },
        ("POST", "/_sim/nodes/ready") => match serde_json::from_slice::<NodeReadiness>(body) {
            Ok(setting) => match if setting.unreachable && !setting.ready {
                state.kubelet.nodes().set_unreachable(&setting.node)
            } else {
                state.kubelet.nodes().set_ready(&setting.node, setting.ready)
            } {
                Ok(()) => StatusCode::NO_CONTENT.into_response(),
                Err(error) => (StatusCode::NOT_FOUND, error.message).into_response(),
            },
            Err(e) => bad(e),
        },
        ("GET", "/_sim/requests") => {
            let requests: Vec<_> = state
                .requests()
                .into_iter()
                .map(|r| json!({"method": r.method, "path": r.path, "query": r.query, "status": r.status, "client": r.client}))
                .collect();
            axum::Json(requests).into_response()
        }
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}
