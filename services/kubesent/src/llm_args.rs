//! The model flags shared by `kubesent diagnoser` and `kubesent diagnose`.

use std::time::Duration;

use clap::{Args, ValueEnum};

/// Which model API the diagnoser speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Backend {
    /// Google Gemini (`generateContent`).
    Gemini,
    /// Any OpenAI-compatible chat-completions endpoint.
    Openai,
}

/// Model settings of the diagnoser (and of `kubesent diagnose`).
#[derive(Debug, Clone, Args)]
pub struct LlmArgs {
    /// Models to ask when the rules are unsure, in fallback order (comma-separated); none = rules only.
    #[arg(long, env = "KUBESENT_MODELS", value_delimiter = ',')]
    models: Vec<String>,
    /// `gemini`, or `openai` for any OpenAI-compatible endpoint (vLLM, llama.cpp, Ollama).
    #[arg(long, env = "KUBESENT_LLM_BACKEND", value_enum, default_value_t = Backend::Gemini)]
    llm_backend: Backend,
    /// Base URL of the model API.
    #[arg(long, env = "KUBESENT_LLM_URL", default_value = "https://generativelanguage.googleapis.com")]
    llm_url: String,
    /// API key (Gemini) or bearer token (OpenAI-compatible).
    #[arg(long, env = "GEMINI_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Requests per minute per model for the whole diagnoser pool (the project's quota).
    #[arg(long, env = "KUBESENT_MODEL_RPM", default_value_t = 60)]
    model_rpm: u32,
    /// Input tokens per minute per model for the whole pool (unlimited when unset).
    #[arg(long, env = "KUBESENT_MODEL_TPM")]
    model_tpm: Option<u32>,
    /// Seconds one model request may take.
    #[arg(long, env = "KUBESENT_MODEL_TIMEOUT_SECONDS", default_value_t = 60)]
    model_timeout_seconds: u64,
}

impl LlmArgs {
    /// The chain settings these flags describe.
    pub fn settings(&self) -> kubesent_diagnoser::llm::LlmSettings {
        let backend = match self.llm_backend {
            Backend::Gemini => kubesent_diagnoser::llm::BackendKind::Gemini,
            Backend::Openai => kubesent_diagnoser::llm::BackendKind::OpenAi,
        };
        kubesent_diagnoser::llm::LlmSettings {
            models: self.models.iter().filter(|m| !m.trim().is_empty()).cloned().collect(),
            backend,
            base_url: self.llm_url.clone(),
            api_key: self.api_key.clone().map(secrecy::SecretString::from),
            limits: kubesent_diagnoser::ratelimit::Limits { rpm: self.model_rpm, tpm: self.model_tpm },
            timeout: Duration::from_secs(self.model_timeout_seconds),
            max_wait: Duration::from_secs(20),
        }
    }
}
