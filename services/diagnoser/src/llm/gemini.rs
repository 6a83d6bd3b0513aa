//! The Gemini `generateContent` client: plain reqwest, typed request and response, the key in the
//! `x-goog-api-key` header, structured output with `responseJsonSchema`, thinking at its minimum.

use std::time::Duration;

use secrecy::{ExposeSecret as _, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{LlmError, ModelReply, Prompt, answer_schema, parse_proto_duration};

/// How a model family turns thinking down.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Thinking {
    /// Gemini 3.x: `thinkingLevel` (`minimal` is the lowest most models accept).
    Level(String),
    /// Gemini 2.5: `thinkingBudget` (0 turns it off on Flash models).
    Budget(i32),
    /// Send no thinking configuration.
    Default,
}

impl Thinking {
    /// The usual setting for a model id: a budget of 0 for 2.x models, the minimal level otherwise.
    pub fn for_model(model: &str) -> Self {
        if model.starts_with("gemini-2") { Self::Budget(0) } else { Self::Level("minimal".into()) }
    }
}

/// A Gemini REST client.
#[derive(Clone)]
pub struct GeminiClient {
    http: reqwest::Client,
    base_url: String,
    api_key: SecretString,
    max_output_tokens: u32,
}

impl std::fmt::Debug for GeminiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeminiClient")
            .field("base_url", &self.base_url)
            .field("api_key", &"[REDACTED]")
            .finish()
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Part<'a> {
    text: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Content<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'a str>,
    parts: Vec<Part<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct GenerationConfig {
    temperature: f32,
    max_output_tokens: u32,
    candidate_count: u32,
    response_mime_type: &'static str,
    response_json_schema: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    thinking_config: Option<Value>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Request<'a> {
    system_instruction: Content<'a>,
    contents: Vec<Content<'a>>,
    generation_config: GenerationConfig,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct ResponsePart {
    text: Option<String>,
    thought: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct ResponseContent {
    parts: Option<Vec<ResponsePart>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct Candidate {
    content: Option<ResponseContent>,
    finish_reason: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct PromptFeedback {
    block_reason: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct Usage {
    prompt_token_count: Option<u32>,
    candidates_token_count: Option<u32>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct Response {
    candidates: Option<Vec<Candidate>>,
    prompt_feedback: Option<PromptFeedback>,
    usage_metadata: Option<Usage>,
    model_version: Option<String>,
}

/// Reads a `google.rpc.Status` error body into an [`LlmError`].
pub(crate) fn error_from(status: u16, body: &str, retry_after_header: Option<Duration>) -> LlmError {
    let parsed: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    // Errors of the OpenAI-compatible endpoint come wrapped in an array.
    let error = parsed.get("error").or_else(|| parsed.get(0).and_then(|e| e.get("error")));
    let message: String = error
        .and_then(|e| e.get("message"))
        .and_then(Value::as_str)
        .unwrap_or(body)
        .chars()
        .take(300)
        .collect();
    let details = error.and_then(|e| e.get("details")).and_then(Value::as_array).cloned().unwrap_or_default();
    let type_is = |d: &Value, t: &str| d.get("@type").and_then(Value::as_str).is_some_and(|x| x.ends_with(t));
    match status {
        429 => {
            let retry_after = details
                .iter()
                .find(|d| type_is(d, "RetryInfo"))
                .and_then(|d| d.get("retryDelay"))
                .and_then(Value::as_str)
                .and_then(parse_proto_duration)
                .or(retry_after_header);
            let daily = details
                .iter()
                .filter(|d| type_is(d, "QuotaFailure"))
                .any(|d| d.to_string().contains("PerDay"));
            LlmError::RateLimited { retry_after, daily }
        }
        404 => LlmError::NotFound(message),
        400 | 401 | 403 => LlmError::Fatal(format!("{status}: {message}")),
        _ => LlmError::Transient(format!("{status}: {message}")),
    }
}

impl GeminiClient {
    /// A client for `base_url` (`https://generativelanguage.googleapis.com`, or gemini-sim's URL).
    pub fn new(base_url: &str, api_key: SecretString, timeout: Duration) -> Result<Self, LlmError> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| LlmError::Fatal(format!("http client: {e}")))?;
        Ok(Self {
            http,
            base_url: base_url.trim_end_matches('/').to_owned(),
            api_key,
            max_output_tokens: 1024,
        })
    }

    /// Asks `model` and returns the text of its first candidate.
    pub async fn generate(
        &self,
        model: &str,
        prompt: &Prompt,
        thinking: &Thinking,
    ) -> Result<ModelReply, LlmError> {
        let thinking_config = match thinking {
            Thinking::Level(level) => Some(serde_json::json!({"thinkingLevel": level})),
            Thinking::Budget(budget) => Some(serde_json::json!({"thinkingBudget": budget})),
            Thinking::Default => None,
        };
        let request = Request {
            system_instruction: Content { role: None, parts: vec![Part { text: &prompt.system }] },
            contents: vec![Content { role: Some("user"), parts: vec![Part { text: &prompt.user }] }],
            generation_config: GenerationConfig {
                temperature: 0.1,
                max_output_tokens: self.max_output_tokens,
                candidate_count: 1,
                response_mime_type: "application/json",
                response_json_schema: answer_schema(),
                thinking_config,
            },
        };
        let mut key = reqwest::header::HeaderValue::from_str(self.api_key.expose_secret())
            .map_err(|_| LlmError::Fatal("the API key is not a valid header value".into()))?;
        key.set_sensitive(true);
        let response = self
            .http
            .post(format!("{}/v1beta/models/{model}:generateContent", self.base_url))
            .header("x-goog-api-key", key)
            .json(&request)
            .send()
            .await
            .map_err(|e| LlmError::Transient(format!("request failed: {e}")))?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(super::parse_retry_after);
        let body = response
            .text()
            .await
            .map_err(|e| LlmError::Transient(format!("reading the answer failed: {e}")))?;
        if status != 200 {
            return Err(error_from(status, &body, retry_after));
        }
        let parsed: Response = serde_json::from_str(&body)
            .map_err(|e| LlmError::Unusable(format!("not a GenerateContentResponse: {e}")))?;
        if let Some(reason) = parsed.prompt_feedback.as_ref().and_then(|f| f.block_reason.clone()) {
            return Err(LlmError::Unusable(format!("prompt blocked: {reason}")));
        }
        let candidate = parsed
            .candidates
            .unwrap_or_default()
            .into_iter()
            .next()
            .ok_or_else(|| LlmError::Unusable("no candidates".into()))?;
        let finish = candidate.finish_reason.unwrap_or_default();
        let text: String = candidate
            .content
            .and_then(|c| c.parts)
            .unwrap_or_default()
            .into_iter()
            .filter(|p| p.thought != Some(true))
            .filter_map(|p| p.text)
            .collect();
        if finish != "STOP" {
            return Err(LlmError::Unusable(format!("finishReason {finish}")));
        }
        if text.is_empty() {
            return Err(LlmError::Unusable("no text in the answer".into()));
        }
        Ok(ModelReply {
            text,
            model_version: parsed.model_version,
            prompt_tokens: parsed.usage_metadata.as_ref().and_then(|u| u.prompt_token_count),
            output_tokens: parsed.usage_metadata.as_ref().and_then(|u| u.candidates_token_count),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_429_body_yields_the_retry_delay_and_whether_the_daily_quota_ran_out() {
        let body = r#"{"error":{"code":429,"message":"quota","status":"RESOURCE_EXHAUSTED","details":[
            {"@type":"type.googleapis.com/google.rpc.QuotaFailure","violations":[{"quotaId":"GenerateRequestsPerDayPerProjectPerModel-FreeTier"}]},
            {"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"37.5s"}]}}"#;
        assert_eq!(
            error_from(429, body, None),
            LlmError::RateLimited { retry_after: Some(Duration::from_millis(37_500)), daily: true }
        );
        assert_eq!(
            error_from(429, "{}", Some(Duration::from_secs(3))),
            LlmError::RateLimited { retry_after: Some(Duration::from_secs(3)), daily: false }
        );
        assert!(
            matches!(error_from(404, r#"{"error":{"message":"models/x is not found"}}"#, None), LlmError::NotFound(m) if m.contains("not found"))
        );
        assert!(matches!(error_from(503, "overloaded", None), LlmError::Transient(_)));
        assert!(matches!(error_from(400, "bad key", None), LlmError::Fatal(_)));
    }
}
