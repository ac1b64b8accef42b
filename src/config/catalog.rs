//! CHAT_MODELS: the model catalog, a JSON file. Its shape:
//!
//! ```json
//! {
//!   "default": "fast",
//!   "models": [
//!     { "name": "fast", "base_url": "http://vllm:8000/v1", "model": "qwen2.5-7b",
//!       "api_key_env": "VLLM_API_KEY", "context_window": 32768,
//!       "prices": { "input": 0.05, "cached_input": 0.025, "output": 0.2 },
//!       "fallbacks": ["strong"] },
//!     { "name": "strong", "base_url": "https://api.openai.com/v1", "model": "gpt-4o",
//!       "api_key_env": "OPENAI_API_KEY", "context_window": 128000 }
//!   ]
//! }
//! ```
//!
//! Keys are never in the file: `api_key_env` names the environment variable that holds one, so
//! that the file can be an ordinary configuration map and the keys secrets. A model with
//! `"development": true` instead of a URL is the built-in development model.

use std::{collections::HashSet, path::Path};

use secrecy::SecretString;
use serde::Deserialize;

use super::{ConfigError, Environment, invalid, is_http_url};
use crate::llm::{CatalogModelSettings, CatalogSettings, ModelSettings, OpenAiSettings, Prices};

const SETTING: &str = "CHAT_MODELS";

/// The longest model name: names are metric labels and stored with every reply.
const MAX_NAME_CHARS: usize = 64;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogFile {
    /// Unset: the first model.
    default: Option<String>,
    models: Vec<ModelEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelEntry {
    name: String,
    #[serde(default)]
    development: bool,
    base_url: Option<String>,
    /// The upstream's name for the model; unset: `name`.
    model: Option<String>,
    api_key_env: Option<String>,
    context_window: Option<u32>,
    prices: Option<PriceEntry>,
    max_output_tokens: Option<u32>,
    #[serde(default)]
    fallbacks: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PriceEntry {
    input: f64,
    #[serde(default)]
    cached_input: Option<f64>,
    output: f64,
}

/// What every model of the catalog shares: the timeouts and retries of CHAT_LLM_*.
pub(super) struct Shared<'a> {
    pub env: Environment,
    /// A real model's settings, its URL, name and key left to each entry.
    pub template: &'a OpenAiSettings,
    pub dev_delay: std::time::Duration,
    /// Reads an environment variable, for `api_key_env`.
    pub read_env: &'a dyn Fn(&str) -> Option<String>,
}

/// Reads and checks the catalog at `path`.
pub(super) fn read_catalog(
    path: &Path,
    shared: &Shared<'_>,
) -> Result<CatalogSettings, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| invalid(SETTING, format!("cannot read {}: {error}", path.display())))?;
    parse_catalog(&text, shared)
}

pub(super) fn parse_catalog(
    text: &str,
    shared: &Shared<'_>,
) -> Result<CatalogSettings, ConfigError> {
    let file: CatalogFile = serde_json::from_str(text)
        .map_err(|error| invalid(SETTING, format!("not a model catalog: {error}")))?;
    let names = model_names(&file)?;
    let index_of = |name: &str| names.iter().position(|known| *known == name);
    let default = match &file.default {
        None => 0,
        Some(name) => index_of(name).ok_or_else(|| {
            invalid(
                SETTING,
                format!("the default {name:?} is not one of the models"),
            )
        })?,
    };
    let mut models = Vec::with_capacity(file.models.len());
    for entry in &file.models {
        let fallbacks = entry
            .fallbacks
            .iter()
            .map(|name| {
                index_of(name).ok_or_else(|| {
                    invalid(
                        SETTING,
                        format!(
                            "model {:?} falls back to {name:?}, which the catalog does not name",
                            entry.name
                        ),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        models.push(CatalogModelSettings {
            name: entry.name.clone(),
            settings: model_settings(entry, shared)?,
            context_window: context_window(entry)?,
            prices: entry
                .prices
                .as_ref()
                .map(|p| prices(p, &entry.name))
                .transpose()?,
            fallbacks,
        });
    }
    let catalog = CatalogSettings { models, default };
    if let Some(cycle) = find_cycle(&catalog) {
        return Err(invalid(
            SETTING,
            format!("the fallbacks form a cycle: {}", cycle.join(" → ")),
        ));
    }
    Ok(catalog)
}

/// The models' names, in order: at least one, each valid, none twice.
fn model_names(file: &CatalogFile) -> Result<Vec<&str>, ConfigError> {
    if file.models.is_empty() {
        return Err(invalid(SETTING, "the catalog names no model"));
    }
    let names: Vec<&str> = file.models.iter().map(|m| m.name.as_str()).collect();
    let mut seen = HashSet::new();
    for name in &names {
        check_name(name)?;
        if !seen.insert(*name) {
            return Err(invalid(SETTING, format!("two models are named {name:?}")));
        }
    }
    Ok(names)
}

fn check_name(name: &str) -> Result<(), ConfigError> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '/');
    if name.is_empty() || name.chars().count() > MAX_NAME_CHARS || !name.chars().all(allowed) {
        return Err(invalid(
            SETTING,
            format!(
                "model name {name:?} must be 1 to {MAX_NAME_CHARS} letters, digits, or - _ . : /"
            ),
        ));
    }
    Ok(())
}

fn model_settings(entry: &ModelEntry, shared: &Shared<'_>) -> Result<ModelSettings, ConfigError> {
    let name = &entry.name;
    if entry.development {
        return development_settings(entry, shared);
    }
    let base_url = entry.base_url.clone().ok_or_else(|| {
        invalid(
            SETTING,
            format!("model {name:?} needs a base_url (or \"development\": true)"),
        )
    })?;
    if !is_http_url(&base_url) {
        return Err(invalid(
            SETTING,
            format!("model {name:?}: base_url must start with http:// or https://"),
        ));
    }
    let upstream = entry.model.clone().unwrap_or_else(|| name.clone());
    if upstream.is_empty() {
        return Err(invalid(
            SETTING,
            format!("model {name:?}: model must not be empty"),
        ));
    }
    Ok(ModelSettings::OpenAi(OpenAiSettings {
        base_url,
        api_key: api_key(entry, shared)?,
        model: upstream,
        max_output_tokens: match entry.max_output_tokens {
            Some(0) => None,
            Some(tokens) => Some(tokens),
            None => shared.template.max_output_tokens,
        },
        ..shared.template.clone()
    }))
}

/// The built-in model, as an entry with `"development": true` asks for it.
fn development_settings(
    entry: &ModelEntry,
    shared: &Shared<'_>,
) -> Result<ModelSettings, ConfigError> {
    let name = &entry.name;
    if shared.env == Environment::Production {
        return Err(invalid(
            SETTING,
            format!("model {name:?} is the development model, which production refuses"),
        ));
    }
    if entry.base_url.is_some() || entry.api_key_env.is_some() || entry.model.is_some() {
        return Err(invalid(
            SETTING,
            format!("model {name:?} is the development model: it takes no base_url, model or key"),
        ));
    }
    Ok(ModelSettings::Development {
        delay: shared.dev_delay,
    })
}

/// A real model's key, from the variable its entry names; production requires one.
fn api_key(entry: &ModelEntry, shared: &Shared<'_>) -> Result<Option<SecretString>, ConfigError> {
    let name = &entry.name;
    let key = match &entry.api_key_env {
        None => None,
        Some(variable) => Some(
            (shared.read_env)(variable)
                .filter(|key| !key.is_empty())
                .map(SecretString::from)
                .ok_or_else(|| {
                    invalid(
                        SETTING,
                        format!("model {name:?}: its key variable {variable} is not set"),
                    )
                })?,
        ),
    };
    if key.is_none() && shared.env == Environment::Production {
        return Err(invalid(
            SETTING,
            format!("model {name:?} has no key (api_key_env), which production requires"),
        ));
    }
    Ok(key)
}

fn context_window(entry: &ModelEntry) -> Result<u32, ConfigError> {
    match entry.context_window {
        Some(0) | None if !entry.development => Err(invalid(
            SETTING,
            format!("model {:?} needs its context_window in tokens", entry.name),
        )),
        window => Ok(window.unwrap_or(0)),
    }
}

fn prices(entry: &PriceEntry, name: &str) -> Result<Prices, ConfigError> {
    let cached_input = entry.cached_input.unwrap_or(entry.input);
    let all = [entry.input, cached_input, entry.output];
    if all.iter().any(|price| !price.is_finite() || *price < 0.0) {
        return Err(invalid(
            SETTING,
            format!("model {name:?}: prices must be numbers of at least 0"),
        ));
    }
    Ok(Prices {
        input: entry.input,
        cached_input,
        output: entry.output,
    })
}

/// The names along a cycle of fallbacks, first repeated at the end, if there is one.
fn find_cycle(catalog: &CatalogSettings) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        OnPath,
        Done,
    }
    fn visit(
        catalog: &CatalogSettings,
        at: usize,
        marks: &mut [Mark],
        path: &mut Vec<usize>,
    ) -> bool {
        marks[at] = Mark::OnPath;
        path.push(at);
        for &next in &catalog.models[at].fallbacks {
            let mark = marks[next];
            if mark == Mark::OnPath {
                path.push(next);
                return true;
            }
            if mark == Mark::New && visit(catalog, next, marks, path) {
                return true;
            }
        }
        path.pop();
        marks[at] = Mark::Done;
        false
    }
    let mut marks = vec![Mark::New; catalog.models.len()];
    for start in 0..catalog.models.len() {
        let mut path = Vec::new();
        if marks[start] == Mark::New && visit(catalog, start, &mut marks, &mut path) {
            let repeated = path.last().copied()?;
            let from = path.iter().position(|&at| at == repeated)?;
            return Some(
                path[from..]
                    .iter()
                    .map(|&at| catalog.models[at].name.clone())
                    .collect(),
            );
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use secrecy::ExposeSecret;

    use super::*;

    fn template() -> OpenAiSettings {
        OpenAiSettings {
            base_url: String::new(),
            api_key: None,
            model: String::new(),
            max_output_tokens: Some(4096),
            connect_timeout: Duration::from_secs(5),
            first_token_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(30),
            total_timeout: Duration::from_secs(600),
            max_retries: 2,
            retry_base_delay: Duration::from_millis(250),
        }
    }

    fn parse(env: Environment, text: &str) -> Result<CatalogSettings, ConfigError> {
        let template = template();
        let read_env = |name: &str| (name == "KEY").then(|| "sk-test".to_owned());
        parse_catalog(
            text,
            &Shared {
                env,
                template: &template,
                dev_delay: Duration::ZERO,
                read_env: &read_env,
            },
        )
    }

    fn refusal(env: Environment, text: &str) -> String {
        match parse(env, text) {
            Ok(catalog) => panic!("accepted: {catalog:?}"),
            Err(error) => {
                assert_eq!(error.setting, SETTING);
                error.message
            }
        }
    }

    const TWO: &str = r#"{
        "default": "strong",
        "models": [
            { "name": "fast", "base_url": "http://a/v1", "model": "qwen", "api_key_env": "KEY",
              "context_window": 32768, "prices": { "input": 0.1, "output": 0.4 },
              "fallbacks": ["strong"], "max_output_tokens": 0 },
            { "name": "strong", "base_url": "https://b/v1", "api_key_env": "KEY",
              "context_window": 128000 }
        ]
    }"#;

    #[test]
    fn a_catalog_reads_into_models_with_their_keys_fallbacks_and_prices() {
        let catalog = parse(Environment::Production, TWO).expect("accepted");
        assert_eq!(catalog.default, 1);
        let fast = &catalog.models[0];
        assert_eq!(fast.name, "fast");
        assert_eq!(fast.context_window, 32768);
        assert_eq!(fast.fallbacks, vec![1]);
        assert_eq!(
            fast.prices,
            Some(Prices {
                input: 0.1,
                cached_input: 0.1,
                output: 0.4
            })
        );
        let ModelSettings::OpenAi(fast) = &fast.settings else {
            panic!("not a real model")
        };
        assert_eq!(fast.model, "qwen");
        assert_eq!(fast.max_output_tokens, None);
        assert_eq!(
            fast.api_key.as_ref().map(|k| k.expose_secret()),
            Some("sk-test")
        );
        let ModelSettings::OpenAi(strong) = &catalog.models[1].settings else {
            panic!("not a real model")
        };
        // The upstream's name defaults to the catalog's; the shared settings fill the rest.
        assert_eq!(strong.model, "strong");
        assert_eq!(strong.max_output_tokens, Some(4096));
        assert_eq!(strong.first_token_timeout, Duration::from_secs(60));
    }

    #[test]
    fn a_catalog_that_cannot_work_is_refused_with_the_reason() {
        let cases = [
            (r#"{"models": []}"#, "names no model"),
            (
                r#"{"models": [{"name": "a", "base_url": "http://a", "context_window": 1, "fallbacks": ["b"]}]}"#,
                "falls back to \"b\", which the catalog does not name",
            ),
            (
                r#"{"models": [
                    {"name": "a", "base_url": "http://a", "context_window": 1, "fallbacks": ["b"]},
                    {"name": "b", "base_url": "http://b", "context_window": 1, "fallbacks": ["c"]},
                    {"name": "c", "base_url": "http://c", "context_window": 1, "fallbacks": ["b"]}]}"#,
                "cycle: b → c → b",
            ),
            (
                r#"{"models": [{"name": "a", "base_url": "http://a", "context_window": 1, "fallbacks": ["a"]}]}"#,
                "cycle: a → a",
            ),
            (
                r#"{"models": [{"name": "a", "base_url": "http://a", "context_window": 1},
                               {"name": "a", "base_url": "http://b", "context_window": 1}]}"#,
                "two models are named",
            ),
            (
                r#"{"default": "z", "models": [{"name": "a", "base_url": "http://a", "context_window": 1}]}"#,
                "the default \"z\"",
            ),
            (
                r#"{"models": [{"name": "a", "base_url": "ftp://a", "context_window": 1}]}"#,
                "http:// or https://",
            ),
            (
                r#"{"models": [{"name": "a", "base_url": "http://a"}]}"#,
                "context_window",
            ),
            (
                r#"{"models": [{"name": "a b", "base_url": "http://a", "context_window": 1}]}"#,
                "letters, digits",
            ),
            (
                r#"{"models": [{"name": "a", "base_url": "http://a", "context_window": 1, "api_key_env": "UNSET"}]}"#,
                "UNSET is not set",
            ),
            (
                r#"{"models": [{"name": "a", "base_url": "http://a", "context_window": 1, "prices": {"input": -1, "output": 1}}]}"#,
                "prices",
            ),
            (
                r#"{"models": [{"name": "a", "url": "http://a", "context_window": 1}]}"#,
                "unknown field `url`",
            ),
        ];
        for (text, reason) in cases {
            let message = refusal(Environment::Development, text);
            assert!(message.contains(reason), "{text}: {message}");
        }
    }

    #[test]
    fn production_refuses_a_real_model_without_a_key_and_the_development_model() {
        let keyless = r#"{"models": [{"name": "a", "base_url": "http://a", "context_window": 1}]}"#;
        assert!(refusal(Environment::Production, keyless).contains("no key"));
        assert!(parse(Environment::Development, keyless).is_ok());
        let dev = r#"{"models": [{"name": "local", "development": true}]}"#;
        assert!(refusal(Environment::Production, dev).contains("development model"));
        let catalog = parse(Environment::Development, dev).expect("accepted");
        assert!(matches!(
            catalog.models[0].settings,
            ModelSettings::Development { .. }
        ));
    }
}
