//! CHAT_LLM_BASE_URL (or OPENAI_BASE_URL), CHAT_LLM_API_KEY (or OPENAI_API_KEY), CHAT_LLM_MODEL,
//! CHAT_LLM_CONNECT_TIMEOUT, CHAT_LLM_FIRST_TOKEN_TIMEOUT, CHAT_LLM_IDLE_TIMEOUT,
//! CHAT_LLM_TOTAL_TIMEOUT, CHAT_LLM_MAX_RETRIES, CHAT_LLM_RETRY_BASE_DELAY,
//! CHAT_LLM_MAX_OUTPUT_TOKENS, CHAT_LLM_CONTEXT_WINDOW, CHAT_DEV_MODEL_DELAY, CHAT_MODELS

use std::{path::PathBuf, time::Duration};

use clap::Args;
use secrecy::{ExposeSecret, SecretString};

use super::{
    ConfigError, Environment,
    catalog::{Shared, read_catalog},
    invalid, is_http_url, non_empty, secret,
};
use crate::llm::{CatalogSettings, ModelSettings, OpenAiSettings};

#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// Root of an OpenAI-compatible API, e.g. http://localhost:11434/v1. Unset: the built-in
    /// development model answers.
    #[arg(long, env = "CHAT_LLM_BASE_URL", global = true)]
    pub llm_base_url: Option<String>,

    /// Fallback for CHAT_LLM_BASE_URL.
    #[arg(long, env = "OPENAI_BASE_URL", hide = true, global = true)]
    pub openai_base_url: Option<String>,

    /// API key sent as a bearer token to the model.
    #[arg(long, env = "CHAT_LLM_API_KEY", value_parser = secret, hide_env_values = true, global = true)]
    pub llm_api_key: Option<SecretString>,

    /// Fallback for CHAT_LLM_API_KEY.
    #[arg(
        long,
        env = "OPENAI_API_KEY",
        value_parser = secret,
        hide = true,
        hide_env_values = true,
        global = true
    )]
    pub openai_api_key: Option<SecretString>,

    /// Model name, e.g. gpt-4o-mini or llama3.2. Required with CHAT_LLM_BASE_URL.
    #[arg(long, env = "CHAT_LLM_MODEL", global = true)]
    pub llm_model: Option<String>,

    /// How long connecting to the model may take.
    #[arg(long, env = "CHAT_LLM_CONNECT_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration, global = true)]
    pub llm_connect_timeout: Duration,

    /// How long the model may take to send the first chunk of a reply.
    #[arg(long, env = "CHAT_LLM_FIRST_TOKEN_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration, global = true)]
    pub llm_first_token_timeout: Duration,

    /// The longest pause allowed between two chunks of a reply.
    #[arg(long, env = "CHAT_LLM_IDLE_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration, global = true)]
    pub llm_idle_timeout: Duration,

    /// The longest a whole reply may take.
    #[arg(long, env = "CHAT_LLM_TOTAL_TIMEOUT", default_value = "10m", value_parser = humantime::parse_duration, global = true)]
    pub llm_total_timeout: Duration,

    /// Retries on connection errors, 429 and 5xx, before the first token.
    #[arg(long, env = "CHAT_LLM_MAX_RETRIES", default_value_t = 2, global = true)]
    pub llm_max_retries: u32,

    /// Backoff before the first retry; doubled for each further one, with jitter.
    #[arg(long, env = "CHAT_LLM_RETRY_BASE_DELAY", default_value = "250ms", value_parser = humantime::parse_duration, global = true)]
    pub llm_retry_base_delay: Duration,

    /// The longest reply the model may write, in tokens; sent as `max_completion_tokens`. Set it
    /// to the model's real ceiling; 0 sends none, for servers that refuse the field.
    #[arg(
        long,
        env = "CHAT_LLM_MAX_OUTPUT_TOKENS",
        default_value_t = 4096,
        global = true
    )]
    pub llm_max_output_tokens: u32,

    /// The model's context window in tokens, as `ListModels` reports it; unset: not known.
    #[arg(long, env = "CHAT_LLM_CONTEXT_WINDOW", global = true)]
    pub llm_context_window: Option<u32>,

    /// A JSON file naming the models clients choose among, with their fallbacks and prices
    /// (README, "Models"). Replaces CHAT_LLM_BASE_URL, CHAT_LLM_MODEL and CHAT_LLM_API_KEY; the
    /// other CHAT_LLM_ settings apply to every model.
    #[arg(long, env = "CHAT_MODELS", global = true)]
    pub models: Option<PathBuf>,

    /// Pause before each word of the development model's reply.
    #[arg(long, env = "CHAT_DEV_MODEL_DELAY", default_value = "40ms", value_parser = humantime::parse_duration, global = true)]
    pub dev_model_delay: Duration,
}

impl ModelArgs {
    /// Whether these settings name a real model rather than the built-in one.
    pub fn names_a_real_model(&self) -> bool {
        self.models.is_some()
            || [&self.llm_base_url, &self.openai_base_url]
                .into_iter()
                .any(|url| url.as_deref().is_some_and(|url| !url.is_empty()))
    }

    /// The catalog: CHAT_MODELS's, or the one model of the single-model settings.
    pub fn into_catalog(self, env: Environment) -> Result<CatalogSettings, ConfigError> {
        let Some(path) = self.models.clone() else {
            let context_window = self.llm_context_window.unwrap_or(0);
            return Ok(CatalogSettings::of_one(
                self.single_model(env)?,
                context_window,
            ));
        };
        if self.names_a_single_model() {
            return Err(invalid(
                "CHAT_MODELS",
                "names the models; unset CHAT_LLM_BASE_URL, CHAT_LLM_MODEL and CHAT_LLM_API_KEY, \
                 or unset CHAT_MODELS",
            ));
        }
        let template = self.real_model(String::new(), None, String::new());
        let read_env = |name: &str| std::env::var(name).ok();
        read_catalog(
            &path,
            &Shared {
                env,
                template: &template,
                dev_delay: self.dev_model_delay,
                read_env: &read_env,
            },
        )
    }

    /// Whether a CHAT_LLM_ setting names a model, a URL or a key. (The OPENAI_ variables are
    /// other tools' too, and a catalog may read its keys from them.)
    fn names_a_single_model(&self) -> bool {
        let set = |value: &Option<String>| value.as_deref().is_some_and(|v| !v.is_empty());
        set(&self.llm_base_url)
            || set(&self.llm_model)
            || self
                .llm_api_key
                .as_ref()
                .is_some_and(|key| !key.expose_secret().is_empty())
    }

    /// The one model the CHAT_LLM_ settings name, or the built-in one.
    fn single_model(&self, env: Environment) -> Result<ModelSettings, ConfigError> {
        let Some(base_url) = non_empty(self.llm_base_url.clone().or(self.openai_base_url.clone()))
        else {
            if env == Environment::Production {
                return Err(invalid(
                    "CHAT_LLM_BASE_URL",
                    "production needs a real model; the built-in development model is refused",
                ));
            }
            return Ok(ModelSettings::Development {
                delay: self.dev_model_delay,
            });
        };
        if !is_http_url(&base_url) {
            return Err(invalid(
                "CHAT_LLM_BASE_URL",
                "must start with http:// or https://",
            ));
        }
        let model = non_empty(self.llm_model.clone()).ok_or_else(|| {
            invalid(
                "CHAT_LLM_MODEL",
                "must name the model when CHAT_LLM_BASE_URL is set",
            )
        })?;
        let api_key = self
            .llm_api_key
            .clone()
            .or(self.openai_api_key.clone())
            .filter(|key| !key.expose_secret().is_empty());
        Ok(ModelSettings::OpenAi(
            self.real_model(base_url, api_key, model),
        ))
    }

    /// A real model at `base_url`, with the timeouts, retries and output ceiling every real
    /// model shares.
    fn real_model(
        &self,
        base_url: String,
        api_key: Option<SecretString>,
        model: String,
    ) -> OpenAiSettings {
        OpenAiSettings {
            base_url,
            api_key,
            model,
            max_output_tokens: Some(self.llm_max_output_tokens).filter(|&tokens| tokens > 0),
            connect_timeout: self.llm_connect_timeout,
            first_token_timeout: self.llm_first_token_timeout,
            idle_timeout: self.llm_idle_timeout,
            total_timeout: self.llm_total_timeout,
            max_retries: self.llm_max_retries,
            retry_base_delay: self.llm_retry_base_delay,
        }
    }
}
