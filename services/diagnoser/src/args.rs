//! `kubesent diagnoser`'s flags and environment (and the model flags `kubesent diagnose` shares), and
//! the configuration they make.

use std::time::Duration;

use clap::{Args, ValueEnum};
use kubesent_common::{
    CommonArgs, growth_factor,
    nats::{PullOptions, Topology},
};
use kubesent_proto::MemoryQuantity;

use crate::{DiagnoserConfig, MemoryPolicy};

/// `kubesent diagnoser`
#[derive(Debug, Args)]
pub struct DiagnoserArgs {
    /// Settings every service takes.
    #[command(flatten)]
    pub common: CommonArgs,
    /// Jobs diagnosed at once by this replica.
    #[arg(long, env = "KUBESENT_CONCURRENCY", default_value_t = 8)]
    pub concurrency: usize,
    /// Factor of the OOM memory formula.
    #[arg(long, env = "KUBESENT_MEMORY_FACTOR", default_value_t = 2.0, value_parser = growth_factor)]
    pub memory_factor: f64,
    /// Cap of the OOM memory formula.
    #[arg(long, env = "KUBESENT_MEMORY_MAX", default_value = "8Gi")]
    pub memory_max: MemoryQuantity,
    /// The model chain.
    #[command(flatten)]
    pub llm: LlmArgs,
    /// How long a revision must have served healthy, by the detector's record, before a rollback to it
    /// after its rollout finished is proposed (the detector's and the remediator's setting of the same
    /// name should match).
    #[arg(long, env = "KUBESENT_KNOWN_GOOD_AFTER", default_value = "10m", value_parser = kubesent_common::positive_duration)]
    pub known_good_after: std::time::Duration,
}

impl DiagnoserArgs {
    /// The diagnoser's configuration, on streams sized by `topology`.
    pub fn config(&self, topology: Topology) -> DiagnoserConfig {
        DiagnoserConfig {
            topology,
            pull: PullOptions { concurrency: self.concurrency, ..PullOptions::default() },
            memory: MemoryPolicy { factor: self.memory_factor, max: self.memory_max },
            known_good_after: self.known_good_after,
            ..DiagnoserConfig::default()
        }
    }
}

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
    /// A file holding the API key (a Secret mounted as a file; a missing file is no key, as an optional
    /// Secret that was not created).
    #[arg(long, env = "KUBESENT_API_KEY_FILE", conflicts_with = "api_key")]
    api_key_file: Option<std::path::PathBuf>,
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
    pub fn settings(&self) -> crate::llm::LlmSettings {
        let backend = match self.llm_backend {
            Backend::Gemini => crate::llm::BackendKind::Gemini,
            Backend::Openai => crate::llm::BackendKind::OpenAi,
        };
        crate::llm::LlmSettings {
            models: self.models.iter().filter(|m| !m.trim().is_empty()).cloned().collect(),
            backend,
            base_url: self.llm_url.clone(),
            api_key: self
                .api_key
                .clone()
                .or_else(|| {
                    let text = std::fs::read_to_string(self.api_key_file.as_ref()?).ok()?;
                    Some(text.trim().to_owned()).filter(|key| !key.is_empty())
                })
                .map(secrecy::SecretString::from),
            limits: crate::ratelimit::Limits { rpm: self.model_rpm, tpm: self.model_tpm },
            timeout: Duration::from_secs(self.model_timeout_seconds),
            max_wait: Duration::from_secs(20),
        }
    }
}
