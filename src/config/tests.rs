//! The settings as flags and the environment give them, parsed the way the binary parses them.

use std::time::Duration;

use clap::Parser;
use secrecy::ExposeSecret;

use super::*;
use crate::{api::JwtKey, llm::ModelSettings, telemetry::LogFormat};

#[derive(Parser)]
struct Flags {
    #[command(flatten)]
    settings: Settings,
}

fn settings(args: &[&str]) -> Settings {
    let argv = std::iter::once("chat-service").chain(args.iter().copied());
    Flags::try_parse_from(argv)
        .unwrap_or_else(|e| panic!("{e}"))
        .settings
}

/// Settings that production accepts: a real key and a real model.
fn production() -> Settings {
    let secret = "s".repeat(32);
    settings(&[
        "--env",
        "production",
        "--jwt-secret",
        &secret,
        "--llm-base-url",
        "http://vllm:8000/v1",
        "--llm-model",
        "qwen",
    ])
}

fn refused_setting(args: &[&str]) -> Option<&'static str> {
    settings(args).into_config(false).err().map(|e| e.setting)
}

#[test]
fn durations_need_a_unit() {
    let parsed = settings(&["--llm-retry-base-delay", "250ms", "--shutdown-grace", "2m"]);
    assert_eq!(
        parsed.model.llm_retry_base_delay,
        Duration::from_millis(250)
    );
    assert_eq!(parsed.server.shutdown_grace, Duration::from_secs(120));
    let argv = ["chat-service", "--shutdown-grace", "5"];
    assert!(Flags::try_parse_from(argv).is_err());
    let argv = ["chat-service", "--shutdown-grace", "s"];
    assert!(Flags::try_parse_from(argv).is_err());
}

#[test]
fn production_refuses_the_development_key_and_model() {
    assert_eq!(refused_setting(&["--env", "production"]), Some("CHAT_ENV"));
    let secret = "s".repeat(32);
    assert_eq!(
        refused_setting(&["--env", "production", "--jwt-secret", &secret]),
        Some("CHAT_LLM_BASE_URL")
    );
    let config = production().into_config(false);
    assert!(config.is_ok_and(|c| matches!(c.model.models[0].settings, ModelSettings::OpenAi(_))));
}

/// A catalog file in the system's temporary directory, removed when dropped.
struct CatalogFile(std::path::PathBuf);

impl CatalogFile {
    fn new(text: &str) -> Self {
        let path = std::env::temp_dir().join(format!("chat-models-{}.json", uuid::Uuid::new_v4()));
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("{e}"));
        Self(path)
    }

    fn path(&self) -> &str {
        self.0
            .to_str()
            .unwrap_or_else(|| panic!("a path that is not UTF-8"))
    }
}

impl Drop for CatalogFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn the_single_model_settings_are_a_catalog_of_one() {
    let names = |settings: Settings| {
        let config = settings
            .into_config(false)
            .unwrap_or_else(|e| panic!("{e}"));
        let names: Vec<String> = config.model.models.into_iter().map(|m| m.name).collect();
        (names, config.model.default)
    };
    assert_eq!(names(production()), (vec!["qwen".to_owned()], 0));
    assert_eq!(names(settings(&[])), (vec!["dev".to_owned()], 0));
}

#[test]
fn a_catalog_file_names_the_models_and_the_title_model_must_be_one() {
    let file = CatalogFile::new(
        r#"{"default": "other", "models": [{"name": "local", "development": true},
                                           {"name": "other", "development": true}]}"#,
    );
    let path = file.path();
    let with = |more: &[&'static str]| -> Vec<&str> {
        [&["--env", "development", "--models", path][..], more].concat()
    };
    let config = settings(&with(&[]))
        .into_config(false)
        .unwrap_or_else(|e| panic!("{e}"));
    let names: Vec<&str> = config
        .model
        .models
        .iter()
        .map(|m| m.name.as_str())
        .collect();
    assert_eq!(names, ["local", "other"]);
    assert_eq!(config.model.default, 1);
    // A catalog and a single model at once is ambiguous.
    assert_eq!(
        refused_setting(&with(&[
            "--llm-base-url",
            "http://a/v1",
            "--llm-model",
            "m"
        ])),
        Some("CHAT_MODELS")
    );
    assert_eq!(
        refused_setting(&with(&["--title-model", "missing"])),
        Some("CHAT_TITLE_MODEL")
    );
    assert!(
        settings(&with(&["--title-model", "local"]))
            .into_config(false)
            .is_ok()
    );
    // Production refuses the development model in a catalog too.
    let secret = "s".repeat(32);
    let production = [
        "--env",
        "production",
        "--jwt-secret",
        &secret,
        "--models",
        file.path(),
    ];
    assert_eq!(refused_setting(&production), Some("CHAT_MODELS"));
    let missing = [
        "--env",
        "development",
        "--models",
        "/nonexistent/models.json",
    ];
    assert_eq!(refused_setting(&missing), Some("CHAT_MODELS"));
}

#[test]
fn a_model_url_needs_a_model_name() {
    let local = ["--env", "development", "--llm-base-url"];
    assert_eq!(
        refused_setting(&[&local[..], &["http://localhost:11434/v1"]].concat()),
        Some("CHAT_LLM_MODEL")
    );
    assert_eq!(
        refused_setting(&[&local[..], &["localhost:11434", "--llm-model", "m"]].concat()),
        Some("CHAT_LLM_BASE_URL")
    );
}

#[test]
fn a_real_model_needs_a_real_key_unless_development_is_asked_for() {
    let real_model = [
        "--llm-base-url",
        "http://vllm:8000/v1",
        "--llm-model",
        "qwen",
    ];
    assert_eq!(refused_setting(&real_model), Some("CHAT_JWT_SECRET"));
    let asked = [&["--env", "development"][..], &real_model[..]].concat();
    assert!(settings(&asked).into_config(false).is_ok());
    let secret = "s".repeat(32);
    let keyed = [&["--jwt-secret", secret.as_str()][..], &real_model[..]].concat();
    assert!(settings(&keyed).into_config(false).is_ok());
    // With nothing configured, the quick start works as before.
    let config = settings(&[]).into_config(false);
    assert!(config.is_ok_and(|c| matches!(c.auth.key, JwtKey::Development)));
}

#[test]
fn short_secrets_and_bad_urls_name_their_setting() {
    assert_eq!(
        refused_setting(&["--jwt-secret", "short"]),
        Some("CHAT_JWT_SECRET")
    );
    assert_eq!(
        refused_setting(&["--database-url", "postgres://localhost"]),
        Some("DATABASE_URL")
    );
    assert_eq!(
        refused_setting(&["--jwt-public-key-file", "/nonexistent/key.pem"]),
        Some("CHAT_JWT_PUBLIC_KEY_FILE")
    );
}

#[test]
fn a_key_set_is_fetched_over_https_or_from_this_machine() {
    for refused in [
        "http://idp.example/jwks.json",
        "ftp://127.0.0.1/jwks.json",
        "not a url",
    ] {
        assert_eq!(
            refused_setting(&["--jwt-jwks-url", refused]),
            Some("CHAT_JWT_JWKS_URL"),
            "{refused}"
        );
    }
    for accepted in [
        "https://idp.example/.well-known/jwks.json",
        "http://127.0.0.1:8080/jwks.json",
        "http://[::1]/jwks.json",
        "http://localhost/jwks.json",
    ] {
        assert_eq!(
            refused_setting(&["--jwt-jwks-url", accepted]),
            None,
            "{accepted}"
        );
    }
    let secret = "s".repeat(32);
    let both = [
        "--jwt-jwks-url",
        "https://idp.example/jwks",
        "--jwt-secret",
        &secret,
    ];
    assert_eq!(refused_setting(&both), Some("CHAT_JWT_SECRET"));
}

#[test]
fn secrets_never_show_in_debug_output() {
    let password = "database-password-1234";
    let secret = "jwt-secret-that-is-long-enough-1234";
    let key = "sk-model-api-key-1234";
    let parsed = settings(&[
        "--database-url",
        &format!("postgres://app:{password}@db/chat"),
        "--jwt-secret",
        secret,
        "--llm-base-url",
        "http://vllm:8000/v1",
        "--llm-model",
        "qwen",
        "--llm-api-key",
        key,
    ]);
    let config = parsed.clone().into_config(false);
    let config = config.unwrap_or_else(|e| panic!("{e}"));
    let printed = format!("{parsed:?} {config:?}");
    for hidden in [password, secret, key] {
        assert!(!printed.contains(hidden), "{hidden} was printed");
    }
    // Hidden from printing, not lost.
    assert!(
        config
            .database
            .url
            .expose()
            .expose_secret()
            .contains(password)
    );
    assert!(matches!(config.auth.key, JwtKey::Hs256Secret(_)));
    assert!(matches!(
        &config.model.models[0].settings,
        ModelSettings::OpenAi(settings) if settings.api_key.as_ref().is_some_and(|k| k.expose_secret() == key)
    ));
}

#[test]
fn logs_are_json_unless_a_person_is_watching() {
    let format = |settings: Settings, terminal| {
        settings
            .into_config(terminal)
            .map(|c| c.log.format)
            .unwrap_or_else(|e| panic!("{e}"))
    };
    assert_eq!(format(settings(&[]), false), LogFormat::Json);
    assert_eq!(format(settings(&[]), true), LogFormat::Pretty);
    assert_eq!(
        format(production(), true),
        LogFormat::Json,
        "production logs JSON even on a terminal"
    );
    assert_eq!(
        format(settings(&["--log-format", "json"]), true),
        LogFormat::Json
    );
}
