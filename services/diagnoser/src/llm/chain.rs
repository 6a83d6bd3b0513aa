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

/// How a model is called.
#[derive(Debug, Clone)]
pub enum Backend {
    /// The Gemini API.
    Gemini(GeminiClient, Thinking),
    /// An OpenAI-compatible endpoint.
    OpenAi(OpenAiClient),
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
        Arc::new(Self {
            models: models.into_iter().map(|m| (m, Mutex::new(Health::Ready))).collect(),
            max_wait,
            usable: watch::Sender::new(true),
        })
    }

    /// True while at least one model may be usable; workers pull jobs only then.
    pub fn usable(&self) -> watch::Receiver<bool> {
        self.usable.subscribe()
    }

    fn set(&self, index: usize, health: Health) {
        *self.models[index].1.lock().unwrap_or_else(PoisonError::into_inner) = health;
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
                let span = info_span!("llm_attempt", model = %model.name, attempt, tokens, status = tracing::field::Empty);
                let result = self.call(model, prompt).instrument(span.clone()).await;
                let result =
                    result.and_then(|reply| accept(&reply).map(|value| (value, reply.model_version)));
                span.record(
                    "status",
                    match &result {
                        Ok(_) => "ok".to_owned(),
                        Err(e) => e.to_string(),
                    },
                );
                match result {
                    Ok((value, model_version)) => {
                        self.set(index, Health::Ready);
                        return Ok(Answered { value, model: model.name.clone(), model_version });
                    }
                    Err(LlmError::RateLimited { retry_after, daily }) => {
                        let cool =
                            retry_after.unwrap_or(if daily { DAILY_COOL_DOWN } else { DEFAULT_COOL_DOWN });
                        warn!(model = %model.name, ?cool, daily, "model rate-limited; cooling it down");
                        let until = Instant::now() + cool;
                        self.set(index, Health::CoolingUntil(until));
                        later(until);
                        break;
                    }
                    Err(LlmError::NotFound(message)) => {
                        warn!(model = %model.name, %message, "model not found; retiring it");
                        self.set(index, Health::Retired);
                        break;
                    }
                    Err(LlmError::Fatal(message)) => {
                        warn!(model = %model.name, %message, "model refused the request; retiring it");
                        self.set(index, Health::Retired);
                        break;
                    }
                    Err(LlmError::Transient(message)) => {
                        warn!(model = %model.name, %message, attempt, "model call failed");
                    }
                    Err(LlmError::Unusable(message)) => {
                        warn!(model = %model.name, %message, "unusable answer; trying the next model");
                        unusable = Some(message);
                        break;
                    }
                }
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
