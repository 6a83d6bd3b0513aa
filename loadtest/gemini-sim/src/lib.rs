//! A Gemini REST emulator: `POST /v1beta/models/{model}:generateContent` with scripted answers,
//! configurable latency, per-model RPM quotas, and the real error bodies for 400/403/404/429/500/503
//! (429s carry `QuotaFailure` and `RetryInfo.retryDelay`). Every request is recorded so tests can
//! assert on what was sent, e.g. that secrets were redacted.
//!
//! Tests script it in-process ([`GeminiSim::script`]); a separately running emulator is scripted with
//! `POST /_sim/script` (a JSON [`Reply`]) and inspected with `GET /_sim/requests`.

use std::{
    collections::{HashMap, VecDeque},
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{Path, Query, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::sync::CancellationToken;

/// One scripted reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Reply {
    /// HTTP 200 with this text as the candidate's only part and `finishReason: STOP`.
    Answer {
        /// The candidate text (usually a JSON document).
        text: String,
    },
    /// HTTP 200, `finishReason: MAX_TOKENS` and no `parts`.
    MaxTokens,
    /// HTTP 200 with the candidate blocked: `finishReason: SAFETY`, no `parts`.
    Safety,
    /// HTTP 200 with no candidates and `promptFeedback.blockReason: SAFETY`.
    BlockedPrompt,
    /// 429 RESOURCE_EXHAUSTED with `RetryInfo.retryDelay` (e.g. `"1.5s"`).
    RateLimited {
        /// The `retryDelay` text.
        retry_delay: String,
    },
    /// 404 NOT_FOUND for the model.
    NotFound,
    /// 500 INTERNAL.
    Internal,
    /// 503 UNAVAILABLE ("The model is overloaded").
    Unavailable,
}

/// A request as the emulator received it.
#[derive(Debug, Clone, Serialize)]
pub struct RecordedRequest {
    /// Milliseconds since the emulator started.
    pub at_ms: u64,
    /// The model id from the path.
    pub model: String,
    /// The API key sent, if any.
    pub api_key: Option<String>,
    /// The request body.
    pub body: Value,
    /// The HTTP status answered.
    pub status: u16,
}

/// Settings of an emulator instance.
#[derive(Debug, Clone)]
pub struct GeminiSimConfig {
    /// Address to listen on; port 0 picks a free port.
    pub listen: SocketAddr,
    /// Model ids that exist.
    pub models: Vec<String>,
    /// Model ids that were shut down (404 "no longer available").
    pub retired_models: Vec<String>,
    /// Accepted API keys; empty accepts any non-empty key.
    pub api_keys: Vec<String>,
    /// Added to every answer.
    pub latency: Duration,
    /// Requests per minute per model, shared by all keys (a project quota); `None` = unlimited.
    pub rpm_limit: Option<u32>,
    /// Answer when nothing is scripted.
    pub default_reply: Reply,
}

impl Default for GeminiSimConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            models: vec![
                "gemini-3.5-flash".into(),
                "gemini-3.5-flash-lite".into(),
                "gemini-3.1-flash-lite".into(),
            ],
            retired_models: vec!["gemini-2.0-flash".into(), "gemini-3-pro-preview".into()],
            api_keys: Vec::new(),
            latency: Duration::ZERO,
            rpm_limit: None,
            default_reply: Reply::Answer {
                text: r#"{"action":"none","root_cause":"no scripted answer","confidence":0}"#.into(),
            },
        }
    }
}

struct Shared {
    config: Mutex<GeminiSimConfig>,
    started: Instant,
    /// Scripted replies per model; the `""` queue applies to any model.
    scripts: Mutex<HashMap<String, VecDeque<Reply>>>,
    requests: Mutex<Vec<RecordedRequest>>,
    /// Accepted request times per model, for the RPM window.
    windows: Mutex<HashMap<String, VecDeque<Instant>>>,
}

/// A running emulator; stopped on [`GeminiSim::shutdown`] or drop.
pub struct GeminiSim {
    shared: Arc<Shared>,
    addr: SocketAddr,
    shutdown: CancellationToken,
    server: Option<JoinHandle<()>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl GeminiSim {
    /// Binds `config.listen` and starts serving.
    pub async fn start(config: GeminiSimConfig) -> std::io::Result<Self> {
        let listener = TcpListener::bind(config.listen).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            config: Mutex::new(config),
            started: Instant::now(),
            scripts: Mutex::new(HashMap::new()),
            requests: Mutex::new(Vec::new()),
            windows: Mutex::new(HashMap::new()),
        });
        let app = Router::new()
            .route("/v1beta/models", get(list_models))
            .route("/v1beta/models/{call}", post(generate))
            .route("/v1beta/openai/chat/completions", post(chat_completions))
            .route("/v1/chat/completions", post(chat_completions))
            .route("/_sim/script", post(script_over_http))
            .route("/_sim/requests", get(requests_over_http))
            .with_state(shared.clone());
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let server = tokio::spawn(async move {
            if let Err(error) =
                axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned()).await
            {
                tracing::error!(%error, "gemini-sim server failed");
            }
        });
        Ok(Self { shared, addr, shutdown, server: Some(server) })
    }

    /// Base URL, e.g. `http://127.0.0.1:PORT` (the client appends `/v1beta/...`).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Queues a reply for `model` (or for any model when `None`). Queued replies are used in order.
    pub fn script(&self, model: Option<&str>, reply: Reply) {
        lock(&self.shared.scripts).entry(model.unwrap_or_default().to_owned()).or_default().push_back(reply);
    }

    /// Changes the latency added to every answer.
    pub fn set_latency(&self, latency: Duration) {
        lock(&self.shared.config).latency = latency;
    }

    /// Changes the answer given when nothing is scripted.
    pub fn set_default_reply(&self, reply: Reply) {
        lock(&self.shared.config).default_reply = reply;
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.shared.requests).clone()
    }

    /// Stops serving.
    pub async fn shutdown(mut self) {
        self.shutdown.cancel();
        if let Some(server) = self.server.take() {
            let _ = server.await;
        }
    }
}

impl Drop for GeminiSim {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn google_error(code: u16, status: &str, message: &str, details: Option<Value>) -> Response {
    let mut error = json!({"code": code, "message": message, "status": status});
    if let Some(details) = details {
        error["details"] = details;
    }
    let code = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (code, [(header::CONTENT_TYPE, "application/json; charset=UTF-8")], Json(json!({"error": error})))
        .into_response()
}

fn rate_limited(model: &str, limit: u32, retry_delay: &str) -> Response {
    let message = format!(
        "You exceeded your current quota, please check your plan and billing details. For more information on this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits. To monitor your current usage, head to: https://ai.dev/rate-limit. \n* Quota exceeded for metric: generativelanguage.googleapis.com/generate_content_requests, limit: {limit}, model: {model}\nPlease retry in {retry_delay}."
    );
    let details = json!([
        {"@type": "type.googleapis.com/google.rpc.Help", "links": [{"description": "Learn more about Gemini API quotas", "url": "https://ai.google.dev/gemini-api/docs/rate-limits"}]},
        {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [{
            "quotaMetric": "generativelanguage.googleapis.com/generate_content_requests",
            "quotaId": "GenerateRequestsPerMinutePerProjectPerModel",
            "quotaDimensions": {"location": "global", "model": model}, "quotaValue": limit.to_string()}]},
        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": retry_delay}
    ]);
    google_error(429, "RESOURCE_EXHAUSTED", &message, Some(details))
}

fn usage() -> Value {
    json!({"promptTokenCount": 412, "candidatesTokenCount": 38, "totalTokenCount": 450,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 412}]})
}

fn response_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

fn render(reply: &Reply, model: &str, limit: u32) -> Response {
    let ok = |body: Value| {
        (StatusCode::OK, [(header::CONTENT_TYPE, "application/json; charset=UTF-8")], Json(body))
            .into_response()
    };
    match reply {
        Reply::Answer { text } => ok(json!({
            "candidates": [{"content": {"role": "model", "parts": [{"text": text}]}, "finishReason": "STOP", "index": 0}],
            "usageMetadata": usage(), "modelVersion": model, "responseId": response_id()})),
        Reply::MaxTokens => ok(json!({
            "candidates": [{"content": {"role": "model"}, "finishReason": "MAX_TOKENS", "index": 0}],
            "usageMetadata": usage(), "modelVersion": model, "responseId": response_id()})),
        Reply::Safety => ok(json!({
            "candidates": [{"content": {"role": "model"}, "finishReason": "SAFETY", "index": 0,
                "safetyRatings": [{"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH", "blocked": true}]}],
            "usageMetadata": usage(), "modelVersion": model, "responseId": response_id()})),
        Reply::BlockedPrompt => ok(json!({
            "promptFeedback": {"blockReason": "SAFETY", "safetyRatings": [{"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH"}]},
            "usageMetadata": {"promptTokenCount": 380, "totalTokenCount": 380}, "modelVersion": model, "responseId": response_id()})),
        Reply::RateLimited { retry_delay } => rate_limited(model, limit, retry_delay),
        Reply::NotFound => google_error(
            404,
            "NOT_FOUND",
            &format!(
                "models/{model} is not found for API version v1beta, or is not supported for generateContent. Call ListModels to see the list of available models and their supported methods."
            ),
            None,
        ),
        Reply::Internal => google_error(
            500,
            "INTERNAL",
            "An internal error has occurred. Please retry or report in https://developers.generativeai.google/guide/troubleshooting",
            None,
        ),
        Reply::Unavailable => {
            google_error(503, "UNAVAILABLE", "The model is overloaded. Please try again later.", None)
        }
    }
}

/// Why a request body is refused with 400 INVALID_ARGUMENT, if it is.
fn invalid_argument(body: &Value) -> Option<String> {
    let config = body.get("generationConfig").or_else(|| body.get("generation_config"));
    let field = |name: &str, snake: &str| config.and_then(|c| c.get(name).or_else(|| c.get(snake)));
    let schema = field("responseSchema", "response_schema");
    let json_schema = field("responseJsonSchema", "response_json_schema");
    if schema.is_some() && json_schema.is_some() {
        return Some(
            "Invalid JSON payload: only one of response_schema and response_json_schema may be set.".into(),
        );
    }
    let mime = field("responseMimeType", "response_mime_type").and_then(Value::as_str);
    if (schema.is_some() || json_schema.is_some())
        && !matches!(mime, Some("application/json" | "text/x.enum"))
    {
        return Some(
            "response_mime_type must be application/json or text/x.enum when a response schema is set."
                .into(),
        );
    }
    let thinking = field("thinkingConfig", "thinking_config");
    if thinking.is_some_and(|t| t.get("thinkingBudget").is_some() && t.get("thinkingLevel").is_some()) {
        return Some("You can only set only one of thinking budget and thinking level.".into());
    }
    let contents_ok = body.get("contents").and_then(Value::as_array).is_some_and(|c| !c.is_empty());
    if !contents_ok {
        return Some("* GenerateContentRequest.contents: contents is not specified\n".into());
    }
    None
}

async fn generate(
    State(shared): State<Arc<Shared>>,
    Path(call): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some((model, method)) = call.split_once(':') else {
        return google_error(404, "NOT_FOUND", "Method not found.", None);
    };
    let api_key = headers
        .get("x-goog-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| query.get("key").cloned());
    let parsed: Result<Value, _> = serde_json::from_slice(&body);
    let config = lock(&shared.config).clone();
    let response = answer(&shared, &config, model, method, api_key.as_deref(), parsed.as_ref().ok()).await;
    let response = match parsed {
        Ok(_) => response,
        Err(e) => google_error(400, "INVALID_ARGUMENT", &format!("Invalid JSON payload received. {e}"), None),
    };
    lock(&shared.requests).push(RecordedRequest {
        at_ms: u64::try_from(shared.started.elapsed().as_millis()).unwrap_or(u64::MAX),
        model: model.to_owned(),
        api_key,
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        status: response.status().as_u16(),
    });
    response
}

async fn answer(
    shared: &Shared,
    config: &GeminiSimConfig,
    model: &str,
    method: &str,
    key: Option<&str>,
    body: Option<&Value>,
) -> Response {
    if method != "generateContent" {
        return google_error(
            404,
            "NOT_FOUND",
            &format!("Method {method} is not served by the emulator."),
            None,
        );
    }
    let Some(key) = key.filter(|k| !k.is_empty()) else {
        return google_error(
            403,
            "PERMISSION_DENIED",
            "Method doesn't allow unregistered callers (callers without established identity). Please use API Key or other form of API consumer identity to call this API.",
            None,
        );
    };
    if !config.api_keys.is_empty() && !config.api_keys.iter().any(|k| k == key) {
        let details = json!([{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID", "domain": "googleapis.com", "metadata": {"service": "generativelanguage.googleapis.com"}}]);
        return google_error(
            400,
            "INVALID_ARGUMENT",
            "API key not valid. Please pass a valid API key.",
            Some(details),
        );
    }
    if config.retired_models.iter().any(|m| m == model) {
        return google_error(
            404,
            "NOT_FOUND",
            &format!(
                "This model models/{model} is no longer available. Please update your code to use a newer model for the latest features and improvements."
            ),
            None,
        );
    }
    if !config.models.iter().any(|m| m == model) {
        return render(&Reply::NotFound, model, 0);
    }
    if let Some(reason) = body.and_then(invalid_argument) {
        return google_error(400, "INVALID_ARGUMENT", &reason, None);
    }
    if let Some(limit) = config.rpm_limit {
        let now = Instant::now();
        let mut windows = lock(&shared.windows);
        let window = windows.entry(model.to_owned()).or_default();
        while window.front().is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(60)) {
            window.pop_front();
        }
        if window.len() >= limit as usize {
            let wait = window
                .front()
                .map_or(Duration::ZERO, |t| Duration::from_secs(60).saturating_sub(now.duration_since(*t)));
            return rate_limited(model, limit, &format!("{:.3}s", wait.as_secs_f64()));
        }
        window.push_back(now);
    }
    let reply = {
        let mut scripts = lock(&shared.scripts);
        let specific = scripts.get_mut(model).and_then(VecDeque::pop_front);
        specific.or_else(|| scripts.get_mut("").and_then(VecDeque::pop_front))
    };
    if !config.latency.is_zero() {
        tokio::time::sleep(config.latency).await;
    }
    render(reply.as_ref().unwrap_or(&config.default_reply), model, config.rpm_limit.unwrap_or(0))
}

/// The OpenAI-compatible endpoint: the same scripts and quotas, OpenAI's response shape, and errors in
/// the Google shape wrapped in an array (as Gemini's compatibility endpoint sends them).
async fn chat_completions(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let parsed: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let model = parsed.get("model").and_then(Value::as_str).unwrap_or_default().to_owned();
    let api_key = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    let config = lock(&shared.config).clone();
    // Reuse the native path's checks, quotas and scripts with a minimal native body.
    let native_body = parsed.get("messages").map(|_| json!({"contents": [{"parts": [{"text": "x"}]}]}));
    let native = answer(
        &shared,
        &config,
        &model,
        "generateContent",
        api_key.as_deref().or(Some("openai-compatible")),
        native_body.as_ref(),
    )
    .await;
    let status = native.status();
    let bytes = axum::body::to_bytes(native.into_body(), 1 << 20).await.unwrap_or_default();
    let native_json: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let response = if status == StatusCode::OK {
        let text = native_json.pointer("/candidates/0/content/parts/0/text").and_then(Value::as_str);
        let finish = match native_json.pointer("/candidates/0/finishReason").and_then(Value::as_str) {
            Some("STOP") => "stop",
            Some("MAX_TOKENS") => "length",
            _ => "content_filter",
        };
        (StatusCode::OK, Json(json!({
            "id": format!("chatcmpl-{}", response_id()), "object": "chat.completion", "created": 1_793_527_200, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}],
            "usage": {"prompt_tokens": 412, "completion_tokens": 38, "total_tokens": 450}
        })))
            .into_response()
    } else {
        let mut wrapped = (status, Json(json!([native_json]))).into_response();
        if status == StatusCode::TOO_MANY_REQUESTS
            && let Some(delay) = native_json
                .pointer("/error/details")
                .and_then(Value::as_array)
                .and_then(|d| d.iter().find_map(|d| d.get("retryDelay")?.as_str()))
            && let Ok(seconds) = delay.trim_end_matches('s').parse::<f64>()
        {
            wrapped
                .headers_mut()
                .insert(header::RETRY_AFTER, axum::http::HeaderValue::from(seconds.ceil() as u64));
        }
        wrapped
    };
    lock(&shared.requests).push(RecordedRequest {
        at_ms: u64::try_from(shared.started.elapsed().as_millis()).unwrap_or(u64::MAX),
        model,
        api_key,
        body: parsed,
        status: response.status().as_u16(),
    });
    response
}

async fn list_models(State(shared): State<Arc<Shared>>) -> Response {
    let config = lock(&shared.config).clone();
    let models: Vec<Value> = config
        .models
        .iter()
        .map(|m| {
            json!({"name": format!("models/{m}"), "displayName": m, "inputTokenLimit": 1_048_576,
            "outputTokenLimit": 65_536, "supportedGenerationMethods": ["generateContent", "countTokens"]})
        })
        .collect();
    Json(json!({"models": models})).into_response()
}

#[derive(Deserialize)]
struct ScriptRequest {
    model: Option<String>,
    reply: Reply,
}

async fn script_over_http(
    State(shared): State<Arc<Shared>>,
    Json(request): Json<ScriptRequest>,
) -> StatusCode {
    lock(&shared.scripts).entry(request.model.unwrap_or_default()).or_default().push_back(request.reply);
    StatusCode::NO_CONTENT
}

async fn requests_over_http(State(shared): State<Arc<Shared>>) -> Json<Vec<RecordedRequest>> {
    Json(lock(&shared.requests).clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_schema_fields_or_both_thinking_fields_are_invalid() {
        let both = json!({"contents": [{"parts": [{"text": "x"}]}], "generationConfig": {"responseMimeType": "application/json", "responseSchema": {}, "responseJsonSchema": {}}});
        assert!(invalid_argument(&both).is_some());
        let no_mime =
            json!({"contents": [{"parts": [{"text": "x"}]}], "generationConfig": {"responseJsonSchema": {}}});
        assert!(invalid_argument(&no_mime).is_some());
        let thinking = json!({"contents": [{"parts": [{"text": "x"}]}], "generationConfig": {"thinkingConfig": {"thinkingBudget": 0, "thinkingLevel": "low"}}});
        assert!(invalid_argument(&thinking).is_some());
        let fine = json!({"contents": [{"parts": [{"text": "x"}]}], "generationConfig": {"responseMimeType": "application/json", "responseJsonSchema": {}}});
        assert!(invalid_argument(&fine).is_none());
    }
}
