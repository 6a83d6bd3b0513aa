//! The model fallback chain. Models are tried in order:
//! - 429 → the model cools down for `RetryInfo.retryDelay` (a minute when absent) and the next is tried;
//! - 404 → the model is retired (until the configuration changes);
//! - 5xx, timeouts, connection errors → one retry, then the next model;
//! - 400/401/403 → the model is retired and the error logged (a wrong key or an unsupported field);
//! - an unusable answer (blocked, truncated, not the schema) → the next model;
//! - a model whose rate-limit slot is too far away counts as busy until then.
//!
//! When no model can answer now the chain says until when, and closes its gate until then, so workers
//! stop pulling jobs instead of retrying in a storm.

use std::{
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};
use tokio::{sync::watch, time::Instant};
use tracing::{Instrument as _, info_span, warn};

use super::{
    LlmError, ModelReply, Prompt,
    gemini::{GeminiClient, Thinking},
    openai::OpenAiClient,
};
use crate::ratelimit::{Reservation, SharedLimiter};

/// Cool-down after a 429 without a retry delay.
const DEFAULT_COOL_DOWN: Duration = Duration::from_secs(60);
/// Cool-down after the per-day quota ran out without a retry delay (it resets at midnight Pacific).
const DAILY_COOL_DOWN: Duration = Duration::from_secs(3600);
/// Longest cool-down, whatever the API says.
const MAX_COOL_DOWN: Duration = Duration::from_secs(2 * 86_400);

/// How a model is called.
#[derive(Debug, Clone)]
pub enum Backend {
    /// The Gemini API.
    Gemini(GeminiClient, Thinking),
    /// An OpenAI-compatible endpoint.
    OpenAi(OpenAiClient),
}

impl Backend {
    /// The provider as OpenTelemetry's GenAI conventions name it (`gen_ai.provider.name`).
    pub fn provider(&self) -> &'static str {
        match self {
            Self::Gemini(..) => "gcp.gemini",
            Self::OpenAi(_) => "openai",
        }
    }
}

/// One model of the chain.
pub struct Model {
    /// The model id.
    pub name: String,
    /// How to call it.
    pub backend: Backend,
    /// Its pool-wide rate limit.
    pub limiter: SharedLimiter,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Health {
    Ready,
    CoolingUntil(Instant),
    Retired,
}

kubesent_common::label_values! {
    /// How one model call ended.
    pub enum CallResult {
        /// A usable answer.
        Ok => "ok",
        /// 429: the model is rationed; it cools down.
        RateLimited => "rate_limited",
        /// 404: the model does not exist (retired from the chain).
        NotFound => "not_found",
        /// Refused for good (400, 401, 403).
        Refused => "refused",
        /// A transient failure (5xx, timeout, broken connection).
        Transient => "transient",
        /// An answer that could not be used (malformed, out of bounds).
        Unusable => "unusable",
        /// Not asked: the pool's budget for the model was spent.
        Busy => "busy",
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct CallLabels {
    model: String,
    result: CallResult,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ModelLabel {
    model: String,
}

fn latency_histogram() -> Histogram {
    Histogram::new([0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0])
}

/// Per-model call metrics: what the quota and the fallbacks are doing.
#[derive(Debug, Clone)]
pub struct ModelMetrics {
    calls: Family<CallLabels, Counter>,
    latency: Family<ModelLabel, Histogram, fn() -> Histogram>,
    prompt_tokens: Family<ModelLabel, Counter>,
    available: Family<ModelLabel, Gauge>,
}

impl Default for ModelMetrics {
    fn default() -> Self {
        Self {
            calls: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            prompt_tokens: Family::default(),
            available: Family::default(),
        }
    }
}

impl ModelMetrics {
    /// Calls to `model` that ended with `result`.
    pub fn calls(&self, model: &str, result: CallResult) -> u64 {
        self.calls.get_or_create(&CallLabels { model: model.to_owned(), result }).get()
    }

    /// Prompt tokens sent to `model` (as the API counted them, else estimated).
    pub fn prompt_tokens(&self, model: &str) -> u64 {
        self.prompt_tokens.get_or_create(&ModelLabel { model: model.to_owned() }).get()
    }

    /// 1 while `model` may be asked; 0 once it was rate-limited (until it answers again) or retired.
    pub fn available(&self, model: &str) -> i64 {
        self.available.get_or_create(&ModelLabel { model: model.to_owned() }).get()
    }

    fn count(&self, model: &str, result: CallResult) {
        self.calls.get_or_create(&CallLabels { model: model.to_owned(), result }).inc();
    }
}

/// Why the chain could not answer.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ChainError {
    /// Every model is cooling down or busy; the earliest is usable at `until`.
    #[error("no model is available before {until:?}")]
    Unavailable {
        /// When the first model becomes usable again.
        until: Instant,
    },
    /// The models that answered gave nothing usable.
    #[error("no usable answer: {0}")]
    Unusable(String),
}

/// An answer and who gave it.
#[derive(Debug, Clone, PartialEq)]
pub struct Answered<T> {
    /// The parsed answer.
    pub value: T,
    /// The model id asked.
    pub model: String,
    /// The model that answered, as the API reported it.
    pub model_version: Option<String>,
}

/// The fallback chain.
pub struct ModelChain {
    models: Vec<(Model, Mutex<Health>)>,
    metrics: ModelMetrics,
    /// Longest wait for a rate-limit slot before a model counts as busy.
    max_wait: Duration,
    usable: watch::Sender<bool>,
}

impl std::fmt::Debug for ModelChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(
                self.models
                    .iter()
                    .map(|(m, h)| (m.name.clone(), *h.lock().unwrap_or_else(PoisonError::into_inner))),
            )
            .finish()
    }
}

impl ModelChain {
    /// A chain over `models`, tried in order.
    pub fn new(models: Vec<Model>, max_wait: Duration) -> Arc<Self> {
        let metrics = ModelMetrics::default();
        // Every series exists from the start, at zero, so rates and alerts see it before the first call.
        for model in &models {
            let label = ModelLabel { model: model.name.clone() };
            metrics.available.get_or_create(&label).set(1);
            let _ = metrics.latency.get_or_create(&label);
            let _ = metrics.prompt_tokens.get_or_create(&label);
            for result in CallResult::ALL {
                let _ =
                    metrics.calls.get_or_create(&CallLabels { model: model.name.clone(), result: *result });
            }
        }
        Arc::new(Self {
            models: models.into_iter().map(|m| (m, Mutex::new(Health::Ready))).collect(),
            metrics,
            max_wait,
            usable: watch::Sender::new(true),
        })
    }

    /// The chain's per-model metrics.
    pub fn metrics(&self) -> &ModelMetrics {
        &self.metrics
    }

    /// Registers the per-model metrics under `kubesent_diagnoser_model_`.
    pub fn register_metrics(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("kubesent_diagnoser_model");
        r.register("calls", "Model calls, by model and result", self.metrics.calls.clone());
        r.register("latency_seconds", "Model call latency, by model", self.metrics.latency.clone());
        r.register("prompt_tokens", "Prompt tokens sent, by model", self.metrics.prompt_tokens.clone());
        r.register(
            "available",
            "1 while a model may be asked, 0 while it cools down or is retired",
            self.metrics.available.clone(),
        );
    }

    /// True while at least one model may be usable; workers pull jobs only then.
    pub fn usable(&self) -> watch::Receiver<bool> {
        self.usable.subscribe()
    }

    fn set(&self, index: usize, health: Health) {
        *self.models[index].1.lock().unwrap_or_else(PoisonError::into_inner) = health;
        let label = ModelLabel { model: self.models[index].0.name.clone() };
        self.metrics.available.get_or_create(&label).set(i64::from(health == Health::Ready));
    }

    fn health(&self, index: usize) -> Health {
        *self.models[index].1.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Closes the gate until `until`.
    fn pause(self: &Arc<Self>, until: Instant) {
        if !self.usable.send_replace(false) {
            return;
        }
        let chain = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(until).await;
            chain.usable.send_replace(true);
        });
    }

    async fn call(&self, model: &Model, prompt: &Prompt) -> Result<ModelReply, LlmError> {
        match &model.backend {
            Backend::Gemini(client, thinking) => client.generate(&model.name, prompt, thinking).await,
            Backend::OpenAi(client) => client.generate(&model.name, prompt).await,
        }
    }

    /// Asks the models in order until one gives an answer `accept` takes.
    pub async fn ask<T>(
        self: &Arc<Self>,
        prompt: &Prompt,
        accept: impl Fn(&ModelReply) -> Result<T, LlmError>,
    ) -> Result<Answered<T>, ChainError> {
        let tokens = prompt.estimated_tokens();
        let mut earliest: Option<Instant> = None;
        let mut unusable: Option<String> = None;
        let mut later = |at: Instant| earliest = Some(earliest.map_or(at, |e: Instant| e.min(at)));
        for index in 0..self.models.len() {
            let model = &self.models[index].0;
            match self.health(index) {
                Health::Retired => continue,
                Health::CoolingUntil(until) if until > Instant::now() => {
                    later(until);
                    continue;
                }
                _ => {}
            }
            for attempt in 1..=2 {
                match model.limiter.reserve(tokens, self.max_wait).await {
                    Ok(Reservation::Go(wait)) => tokio::time::sleep(wait).await,
                    Ok(Reservation::Busy(wait)) => {
                        self.metrics.count(&model.name, CallResult::Busy);
                        later(Instant::now() + wait);
                        break;
                    }
                    Err(error) => {
                        // Fail closed: without the shared state the pool's quota cannot be guaranteed.
                        warn!(model = %model.name, %error, "rate-limit state unavailable; treating the model as busy");
                        later(Instant::now() + Duration::from_secs(5));
                        break;
                    }
                }
                let span = info_span!(
                    "llm_attempt",
                    otel.name = %format_args!("generate_content {}", model.name),
                    otel.kind = "client",
                    gen_ai.provider.name = model.backend.provider(),
                    gen_ai.operation.name = "generate_content",
                    gen_ai.request.model = %model.name,
                    model = %model.name,
                    attempt,
                    tokens,
                    status = tracing::field::Empty
                );
                let started = Instant::now();
                let result = self.call(model, prompt).instrument(span.clone()).await;
                let label = ModelLabel { model: model.name.clone() };
                self.metrics.latency.get_or_create(&label).observe(started.elapsed().as_secs_f64());
                if let Ok(reply) = &result {
                    let sent = reply.prompt_tokens.unwrap_or(tokens);
                    self.metrics.prompt_tokens.get_or_create(&label).inc_by(u64::from(sent));
                }
                let result =
                    result.and_then(|reply| accept(&reply).map(|value| (value, reply.model_version)));
                span.record(
                    "status",
                    match &result {
                        Ok(_) => "ok".to_owned(),
                        Err(e) => e.to_string(),
                    },
                );
                self.metrics.count(&model.name, call_result(&result));
                let error = match result {
                    Ok((value, model_version)) => {
                        self.set(index, Health::Ready);
                        return Ok(Answered { value, model: model.name.clone(), model_version });
                    }
                    Err(error) => error,
                };
                let next = after_error(&error, attempt, Instant::now());
                match &next {
                    AfterError::Retry => warn!(model = %model.name, %error, attempt, "model call failed"),
                    AfterError::CoolUntil(until) => {
                        let cool = until.saturating_duration_since(Instant::now());
                        warn!(model = %model.name, ?cool, %error, "model rate-limited; cooling it down");
                    }
                    AfterError::Retire => {
                        warn!(model = %model.name, %error, "model refused the request; retiring it")
                    }
                    AfterError::NextModel => {
                        warn!(model = %model.name, %error, attempt, "model call failed; trying the next model")
                    }
                    AfterError::Unusable(_) => {
                        warn!(model = %model.name, %error, "unusable answer; trying the next model")
                    }
                }
                match next {
                    AfterError::Retry => continue,
                    AfterError::CoolUntil(until) => {
                        self.set(index, Health::CoolingUntil(until));
                        later(until);
                    }
                    AfterError::Retire => self.set(index, Health::Retired),
                    AfterError::NextModel => {}
                    AfterError::Unusable(message) => unusable = Some(message),
                }
                break;
            }
        }
        if let Some(message) = unusable {
            return Err(ChainError::Unusable(message));
        }
        if (0..self.models.len()).all(|i| self.health(i) == Health::Retired) {
            // Rules still work without models: do not stop pulling jobs.
            return Err(ChainError::Unusable("every configured model was retired".into()));
        }
        let until = earliest.unwrap_or_else(|| Instant::now() + Duration::from_secs(10));
        self.pause(until);
        Err(ChainError::Unavailable { until })
    }
}

/// What the chain does with a model after a call that failed with `error` on attempt `attempt` (of 2).
#[derive(Debug, Clone, PartialEq)]
enum AfterError {
    /// Ask it once more (a transient failure on the first attempt).
    Retry,
    /// Cool it down until then (429: rationed), and try the next model.
    CoolUntil(Instant),
    /// Retire it (404: it does not exist; 400/401/403: refused for good), and try the next model.
    Retire,
    /// Try the next model (a transient failure again).
    NextModel,
    /// Remember its answer was unusable, and try the next model.
    Unusable(String),
}

/// The model's next step after `error` at `now` (pure: the chain applies it).
fn after_error(error: &LlmError, attempt: u32, now: Instant) -> AfterError {
    match error {
        LlmError::RateLimited { retry_after, daily } => {
            let cool = retry_after.unwrap_or(if *daily { DAILY_COOL_DOWN } else { DEFAULT_COOL_DOWN });
            AfterError::CoolUntil(now + cool.min(MAX_COOL_DOWN))
        }
        LlmError::NotFound(_) | LlmError::Fatal(_) => AfterError::Retire,
        LlmError::Transient(_) if attempt < 2 => AfterError::Retry,
        LlmError::Transient(_) => AfterError::NextModel,
        LlmError::Unusable(message) => AfterError::Unusable(message.clone()),
    }
}

/// How one call ended, for the call metrics.
fn call_result<T>(result: &Result<T, LlmError>) -> CallResult {
    match result {
        Ok(_) => CallResult::Ok,
        Err(LlmError::RateLimited { .. }) => CallResult::RateLimited,
        Err(LlmError::NotFound(_)) => CallResult::NotFound,
        Err(LlmError::Fatal(_)) => CallResult::Refused,
        Err(LlmError::Transient(_)) => CallResult::Transient,
        Err(LlmError::Unusable(_)) => CallResult::Unusable,
    }
}

#[cfg(test)]
mod decision_tests {
    use super::*;

    #[test]
    fn each_model_error_moves_the_chain_on_as_the_fallback_rules_say() {
        let now = Instant::now();
        let rows: [(&str, LlmError, u32, AfterError); 9] = [
            (
                "429 with a retry delay",
                LlmError::RateLimited { retry_after: Some(Duration::from_secs(17)), daily: false },
                1,
                AfterError::CoolUntil(now + Duration::from_secs(17)),
            ),
            (
                "429 without one",
                LlmError::RateLimited { retry_after: None, daily: false },
                1,
                AfterError::CoolUntil(now + DEFAULT_COOL_DOWN),
            ),
            (
                "the daily quota spent",
                LlmError::RateLimited { retry_after: None, daily: true },
                1,
                AfterError::CoolUntil(now + DAILY_COOL_DOWN),
            ),
            (
                "an absurd retry delay",
                LlmError::RateLimited { retry_after: Some(Duration::from_secs(10_000_000)), daily: false },
                1,
                AfterError::CoolUntil(now + MAX_COOL_DOWN),
            ),
            ("404", LlmError::NotFound("models/gone".into()), 1, AfterError::Retire),
            ("403", LlmError::Fatal("API key invalid".into()), 1, AfterError::Retire),
            ("a first 503", LlmError::Transient("503".into()), 1, AfterError::Retry),
            ("a second 503", LlmError::Transient("503".into()), 2, AfterError::NextModel),
            (
                "an answer out of schema",
                LlmError::Unusable("not the schema".into()),
                1,
                AfterError::Unusable("not the schema".into()),
            ),
        ];
        for (case, error, attempt, expected) in rows {
            assert_eq!(after_error(&error, attempt, now), expected, "{case}");
        }
    }

    #[test]
    fn every_error_is_counted_under_its_own_call_result() {
        assert_eq!(call_result::<()>(&Ok(())), CallResult::Ok);
        let counted: Vec<CallResult> = [
            LlmError::RateLimited { retry_after: None, daily: false },
            LlmError::NotFound(String::new()),
            LlmError::Fatal(String::new()),
            LlmError::Transient(String::new()),
            LlmError::Unusable(String::new()),
        ]
        .into_iter()
        .map(|e| call_result::<()>(&Err(e)))
        .collect();
        assert_eq!(
            counted,
            [
                CallResult::RateLimited,
                CallResult::NotFound,
                CallResult::Refused,
                CallResult::Transient,
                CallResult::Unusable
            ]
        );
    }
}
