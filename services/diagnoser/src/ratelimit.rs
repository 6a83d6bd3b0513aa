//! Pool-wide request and token rate limits per model.
//!
//! Gemini quotas are per Google Cloud project, so the diagnoser pool, not each replica, must stay under
//! them. Two stages:
//! - **governor** (GCRA, per replica): a replica never exceeds the pool's rate on its own, and a single
//!   diagnoser without NATS (`kubesent diagnose`) is limited by it alone;
//! - **a shared GCRA in the NATS KV bucket `kubesent-ratelimit`**: one entry per model holds the
//!   theoretical arrival times for requests and for tokens (UNIX milliseconds). A replica *reserves* the
//!   next slot with a compare-and-set update (`max(now, next) → next + spacing`) and sleeps until its slot,
//!   so replicas never stampede and the pool's requests are at least `spacing` apart. A reservation
//!   further away than `max_wait` is refused, which makes the model "busy" for the fallback chain.
//!
//! The spacing is `60 s / rpm` plus 1 %, so no 60-second window holds more than `rpm` requests even with
//! scheduling jitter; token spacing is `60 s / tpm` per estimated input token. Replicas' clocks are
//! assumed NTP-synchronised: a skew of s milliseconds shifts one replica's slots by s.

use std::{
    num::NonZeroU32,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use async_nats::jetstream::kv;
use governor::{
    Quota, RateLimiter,
    clock::{Clock as _, DefaultClock},
    state::{InMemoryState, NotKeyed},
};
use serde::{Deserialize, Serialize};

/// The shared limiter state's bucket.
pub use kubesent_common::nats::roles::RATE_LIMIT_BUCKET;
/// Headroom over the quota's exact spacing, absorbing scheduling and network jitter.
const SPACING_MARGIN: f64 = 1.01;
/// Compare-and-set attempts before giving up on a reservation.
const CAS_ATTEMPTS: usize = 32;

/// A model's quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Requests per minute for the whole pool.
    pub rpm: u32,
    /// Input tokens per minute for the whole pool, if limited.
    pub tpm: Option<u32>,
}

/// The outcome of a reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reservation {
    /// Send after this wait.
    Go(Duration),
    /// The next slot is further away than allowed: the model is busy this long.
    Busy(Duration),
}

/// Errors of the shared state.
#[derive(Debug, thiserror::Error)]
pub enum LimitError {
    /// The KV bucket could not be read or written.
    #[error("rate limit state: {0}")]
    Store(String),
}

#[derive(Debug, Default, Clone, Copy, Serialize, Deserialize)]
struct State {
    /// Earliest time (UNIX ms) of the next request.
    next_request_ms: u64,
    /// Earliest time (UNIX ms) the token budget allows the next request.
    next_token_ms: u64,
}

/// One model's limiter.
pub struct SharedLimiter {
    key: String,
    spacing_ms: u64,
    token_spacing_ms: Option<f64>,
    local: RateLimiter<NotKeyed, InMemoryState, DefaultClock>,
    shared: Option<kv::Store>,
}

impl std::fmt::Debug for SharedLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedLimiter")
            .field("key", &self.key)
            .field("spacing_ms", &self.spacing_ms)
            .finish_non_exhaustive()
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A KV key for a model id (`[-/_=.a-zA-Z0-9]`, no leading or trailing dot).
fn key_for(model: &str) -> String {
    let cleaned: String = model
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_') { c } else { '_' })
        .collect();
    format!("model-{cleaned}")
}

impl SharedLimiter {
    /// A limiter for `model` with `limits`, shared through `bucket` when given (else this replica only).
    pub fn new(model: &str, limits: Limits, bucket: Option<kv::Store>) -> Self {
        let rpm = limits.rpm.max(1);
        let spacing = Duration::from_secs_f64(60.0 / f64::from(rpm) * SPACING_MARGIN);
        let quota = Quota::with_period(spacing)
            .unwrap_or_else(|| Quota::per_minute(NonZeroU32::MIN))
            .allow_burst(NonZeroU32::MIN);
        Self {
            key: key_for(model),
            spacing_ms: u64::try_from(spacing.as_millis()).unwrap_or(u64::MAX).max(1),
            token_spacing_ms: limits.tpm.map(|tpm| 60_000.0 / f64::from(tpm.max(1)) * SPACING_MARGIN),
            local: RateLimiter::direct(quota),
            shared: bucket,
        }
    }

    /// Reserves a slot for a request of `tokens` input tokens, at most `max_wait` ahead.
    pub async fn reserve(&self, tokens: u32, max_wait: Duration) -> Result<Reservation, LimitError> {
        if let Err(not_until) = self.local.check() {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            if wait > max_wait {
                return Ok(Reservation::Busy(wait));
            }
            tokio::time::sleep(wait).await;
            // The local slot is used by this reservation now.
            let _ = self.local.check();
        }
        let Some(kv) = &self.shared else { return Ok(Reservation::Go(Duration::ZERO)) };
        let token_cost = self.token_spacing_ms.map_or(0, |s| (s * f64::from(tokens)).ceil() as u64);
        for _ in 0..CAS_ATTEMPTS {
            let entry = kv.entry(&self.key).await.map_err(|e| LimitError::Store(e.to_string()))?;
            let (state, revision) = match &entry {
                Some(e) if e.operation == kv::Operation::Put => {
                    (serde_json::from_slice::<State>(&e.value).unwrap_or_default(), Some(e.revision))
                }
                Some(e) => (State::default(), Some(e.revision)),
                None => (State::default(), None),
            };
            let now = now_ms();
            let slot = now.max(state.next_request_ms).max(state.next_token_ms);
            let wait = Duration::from_millis(slot - now);
            if wait > max_wait {
                return Ok(Reservation::Busy(wait));
            }
            let next = State {
                next_request_ms: slot + self.spacing_ms,
                next_token_ms: state.next_token_ms.max(slot).saturating_add(token_cost),
            };
            let payload = serde_json::to_vec(&next).map_err(|e| LimitError::Store(e.to_string()))?;
            let written = match revision {
                Some(revision) => kv
                    .update(&self.key, payload.into(), revision)
                    .await
                    .map(|_| ())
                    .map_err(|e| (kubesent_common::nats::is_cas_conflict(&e), e.to_string())),
                None => kv
                    .create(&self.key, payload.into())
                    .await
                    .map(|_| ())
                    .map_err(|e| (kubesent_common::nats::is_cas_conflict(&e), e.to_string())),
            };
            match written {
                Ok(()) => return Ok(Reservation::Go(wait)),
                // Another replica reserved first: read again.
                Err((true, _)) => continue,
                Err((false, error)) => {
                    return Err(LimitError::Store(format!("writing the reservation failed: {error}")));
                }
            }
        }
        Err(LimitError::Store(format!("gave up after {CAS_ATTEMPTS} contended reservations")))
    }
}

/// Opens (or creates) the shared limiter bucket.
/// Opens (or creates) the shared limiter bucket, waiting for JetStream until `shutdown`.
pub async fn bucket(
    js: &async_nats::jetstream::Context,
    replicas: usize,
    shutdown: &tokio_util::sync::CancellationToken,
) -> Result<kv::Store, LimitError> {
    let config = kv::Config {
        bucket: RATE_LIMIT_BUCKET.into(),
        description: "KubeSent pool-wide model rate limits".into(),
        history: 1,
        num_replicas: replicas,
        ..Default::default()
    };
    kubesent_common::nats::open_bucket(js, config, shutdown)
        .await
        .map_err(|e| LimitError::Store(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_ids_become_valid_kv_keys() {
        assert_eq!(key_for("gemini-3.5-flash"), "model-gemini-3_5-flash");
        assert_eq!(key_for("meta/llama:70b"), "model-meta_llama_70b");
    }

    #[tokio::test]
    async fn a_local_limiter_spaces_requests_by_the_quota() {
        let limiter = SharedLimiter::new("m", Limits { rpm: 60, tpm: None }, None);
        assert_eq!(limiter.reserve(10, Duration::ZERO).await.ok(), Some(Reservation::Go(Duration::ZERO)));
        match limiter.reserve(10, Duration::ZERO).await {
            Ok(Reservation::Busy(wait)) => assert!(wait > Duration::from_millis(900), "{wait:?}"),
            other => panic!("expected busy, got {other:?}"),
        }
    }
}
