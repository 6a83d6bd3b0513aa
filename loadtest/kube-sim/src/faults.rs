//! Faults on demand: added latency, a random error rate, 429 throttling with `Retry-After`, dropped
//! watches, and a network partition of one client. A restart with resourceVersion continuity is
//! [`KubeSim::restart`](crate::KubeSim::restart).

use std::{
    collections::HashSet,
    sync::{Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use axum::{
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::api_error::ApiError;

#[derive(Debug, Default)]
struct FaultState {
    latency: Duration,
    error_rate: f64,
    throttle_remaining: u32,
    retry_after: u32,
    partitioned: HashSet<String>,
    random: u64,
    /// Requests whose path contains the text get a 500 while the count lasts.
    failing_paths: Vec<(String, u32)>,
}

/// The fault switches of one simulator.
#[derive(Debug)]
pub struct Faults {
    state: Mutex<FaultState>,
    /// Cancelled to end every open watch; replaced afterwards. Each client's watches end on a child.
    watches: Mutex<(CancellationToken, std::collections::HashMap<String, CancellationToken>)>,
    /// Woken when a partition heals.
    healed: Notify,
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            state: Mutex::new(FaultState { random: 0x9e37_79b9_7f4a_7c15, ..FaultState::default() }),
            watches: Mutex::new((CancellationToken::new(), std::collections::HashMap::new())),
            healed: Notify::new(),
        }
    }
}

/// What to do with one request.
pub enum Decision {
    /// Serve it (after `delay`).
    Serve(Duration),
    /// Answer with this response instead (after `delay`).
    Respond(Duration, Response),
}

impl Faults {
    fn lock(&self) -> MutexGuard<'_, FaultState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds `latency` to every request.
    pub fn set_latency(&self, latency: Duration) {
        self.lock().latency = latency;
    }

    /// Fails this fraction (0–1) of requests with 500 InternalError.
    pub fn set_error_rate(&self, rate: f64) {
        self.lock().error_rate = if rate.is_finite() { rate.clamp(0.0, 1.0) } else { 0.0 };
    }

    /// Answers the next `count` requests with 429 and `Retry-After: retry_after`, as API Priority and
    /// Fairness does (a text/plain body).
    pub fn throttle(&self, count: u32, retry_after: u32) {
        let mut state = self.lock();
        state.throttle_remaining = count;
        state.retry_after = retry_after;
    }

    /// Answers the next `count` requests whose path contains `path` with 500 InternalError (an error
    /// burst that hits one kind of object).
    pub fn fail_path(&self, path: &str, count: u32) {
        self.lock().failing_paths.push((path.to_owned(), count));
    }

    /// Cuts `client` off: its requests hang and its open watches end until [`Faults::heal`].
    pub fn partition(&self, client: &str) {
        self.lock().partitioned.insert(client.to_owned());
        let mut watches = self.watches.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(token) = watches.1.remove(client) {
            token.cancel();
        }
    }

    /// Ends a partition.
    pub fn heal(&self, client: &str) {
        self.lock().partitioned.remove(client);
        self.healed.notify_waiters();
    }

    /// Ends every open watch now; clients re-watch from their last resourceVersion.
    pub fn drop_watches(&self) {
        let mut watches = self.watches.lock().unwrap_or_else(PoisonError::into_inner);
        watches.0.cancel();
        *watches = (CancellationToken::new(), std::collections::HashMap::new());
    }

    /// The token a new watch of `client` ends on.
    pub fn watch_token(&self, client: &str) -> CancellationToken {
        let mut watches = self.watches.lock().unwrap_or_else(PoisonError::into_inner);
        let global = watches.0.clone();
        watches.1.entry(client.to_owned()).or_insert_with(|| global.child_token()).clone()
    }

    fn is_partitioned(&self, client: &str) -> bool {
        self.lock().partitioned.contains(client)
    }

    /// Waits while `client` is partitioned (a partitioned client's requests never get an answer).
    pub async fn wait_while_partitioned(&self, client: &str) {
        loop {
            let healed = self.healed.notified();
            if !self.is_partitioned(client) {
                return;
            }
            healed.await;
        }
    }

    /// Decides the fate of one request to `path`.
    pub fn decide(&self, path: &str) -> Decision {
        let mut state = self.lock();
        let delay = state.latency;
        if let Some((_, remaining)) = state
            .failing_paths
            .iter_mut()
            .find(|(fragment, remaining)| *remaining > 0 && path.contains(fragment.as_str()))
        {
            *remaining -= 1;
            return Decision::Respond(delay, ApiError::internal("injected fault").into_response());
        }
        if state.throttle_remaining > 0 {
            state.throttle_remaining -= 1;
            let retry_after = state.retry_after;
            let mut response = (
                StatusCode::TOO_MANY_REQUESTS,
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                "Too many requests, please try again later.\n",
            )
                .into_response();
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
            return Decision::Respond(delay, response);
        }
        if state.error_rate > 0.0 {
            // xorshift64: reproducible, no extra dependency.
            let mut x = state.random;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            state.random = x;
            if (x as f64 / u64::MAX as f64) < state.error_rate {
                return Decision::Respond(delay, ApiError::internal("injected fault").into_response());
            }
        }
        Decision::Serve(delay)
    }
}
