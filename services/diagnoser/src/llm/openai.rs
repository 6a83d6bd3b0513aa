//! An OpenAI-compatible chat-completions client, for self-hosted models (vLLM, llama.cpp, Ollama) and
//! Gemini's own OpenAI endpoint.

use std::time::Duration;

use secrecy::{ExposeSecret as _, SecretString};
use serde::Deserialize;
use serde_json::json;

use super::{LlmError, ModelReply, Prompt, answer_schema, gemini::error_from};

/// An OpenAI-compatible client.
#[derive(Clone)]
pub struct OpenAiClient {
    http: reqwest::Client,
    base_url: String,
    api_key: Option<SecretString>,
}

impl std::fmt::Debug for OpenAiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiClient").field("base_url", &self.base_url).finish_non_exhaustive()
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Message {
    content: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Choice {
    message: Message,
    finish_reason: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Usage {
    prompt_tokens: Option<u32>,
    completion_tokens: Option<u32>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Completion {
    choices: Vec<Choice>,
    model: Option<String>,
    usage: Option<Usage>,
}

impl OpenAiClient {
    /// A client for `base_url` (the part before `/chat/completions`, e.g. `http://vllm:8000/v1`).
    pub fn new(base_url: &str, api_key: Option<SecretString>, timeout: Duration) -> Result<Self, LlmError> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| LlmError::Fatal(format!("http client: {e}")))?;
        Ok(Self { http, base_url: base_url.trim_end_matches('/').to_owned(), api_key })
    }

    /// Asks `model` and returns the text of its first choice.
    pub async fn generate(&self, model: &str, prompt: &Prompt) -> Result<ModelReply, LlmError> {
        let body = json!({
            "model": model,
            "messages": [{"role": "system", "content": prompt.system}, {"role": "user", "content": prompt.user}],
            "temperature": 0.1,
            "max_tokens": 1024,
            "response_format": {"type": "json_schema", "json_schema": {"name": "verdict", "schema": answer_schema()}},
        });
        let mut request = self.http.post(format!("{}/chat/completions", self.base_url)).json(&body);
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key.expose_secret());
        }
        let response =
            request.send().await.map_err(|e| LlmError::Transient(format!("request failed: {e}")))?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(super::parse_retry_after);
        let text = response
            .text()
            .await
            .map_err(|e| LlmError::Transient(format!("reading the answer failed: {e}")))?;
        if status != 200 {
            return Err(error_from(status, &text, retry_after));
        }
        let completion: Completion = serde_json::from_str(&text)
            .map_err(|e| LlmError::Unusable(format!("not a chat completion: {e}")))?;
        let choice =
            completion.choices.into_iter().next().ok_or_else(|| LlmError::Unusable("no choices".into()))?;
        if choice.finish_reason.as_deref().is_some_and(|r| r != "stop") {
            return Err(LlmError::Unusable(format!(
                "finish_reason {}",
                choice.finish_reason.unwrap_or_default()
            )));
        }
        let content = choice
            .message
            .content
            .filter(|c| !c.is_empty())
            .ok_or_else(|| LlmError::Unusable("empty answer".into()))?;
        Ok(ModelReply {
            text: content,
            model_version: completion.model,
            prompt_tokens: completion.usage.as_ref().and_then(|u| u.prompt_tokens),
            output_tokens: completion.usage.as_ref().and_then(|u| u.completion_tokens),
        })
    }
}
