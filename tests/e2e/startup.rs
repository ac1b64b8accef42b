use chat_service::{Application, StartupError, store::DatabaseUrl};

use super::support::{TestDatabase, app::test_config};

#[tokio::test]
async fn a_missing_database_is_created_and_migrated() {
    let db = TestDatabase::unused();
    assert!(!db.exists().await);
    let app = Application::build(test_config(&db))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    drop(app);
    assert!(db.exists().await);
    assert_eq!(
        db.count("SELECT count(*) AS n FROM service_secrets WHERE name = 'page_token'")
            .await,
        1
    );
    assert_eq!(db.count("SELECT count(*) AS n FROM users").await, 0);
}

#[tokio::test]
async fn an_unreachable_database_stops_start_up_with_a_message_naming_it() {
    let db = TestDatabase::unused();
    let mut config = test_config(&db);
    // Port 1 on loopback: nothing listens there.
    config.database.url = DatabaseUrl::parse("postgres://app:hunter2@127.0.0.1:1/chat")
        .unwrap_or_else(|e| panic!("{e}"));
    let error = Application::build(config)
        .await
        .err()
        .unwrap_or_else(|| panic!("started without a database"));
    assert!(matches!(error, StartupError::Database(_)), "{error:?}");
    let message = error.to_string();
    assert!(
        message.contains("postgres://app:***@127.0.0.1:1/chat"),
        "{message}"
    );
    assert!(!message.contains("hunter2"), "{message}");
    assert!(message.contains("DATABASE_URL"), "{message}");
}

#[tokio::test]
async fn without_migrations_an_empty_database_is_reported_as_not_migrated() {
    let db = TestDatabase::unused();
    let mut config = test_config(&db);
    config.database.migrate_on_start = false;
    let error = Application::build(config)
        .await
        .err()
        .unwrap_or_else(|| panic!("started on an empty schema"));
    assert!(
        error.to_string().contains("chat-service migrate"),
        "{error}"
    );
}

#[tokio::test]
async fn a_search_configuration_the_database_lacks_stops_start_up_with_a_message_naming_it() {
    let db = TestDatabase::unused();
    drop(
        Application::build(test_config(&db))
            .await
            .unwrap_or_else(|e| panic!("{e}")),
    );
    let mut config = test_config(&db);
    config.database.search_config =
        chat_service::store::SearchConfig::parse("klingon").unwrap_or_else(|e| panic!("{e}"));
    let error = Application::build(config)
        .await
        .err()
        .unwrap_or_else(|| panic!("started with a search configuration the database lacks"));
    assert!(matches!(error, StartupError::Database(_)), "{error:?}");
    let message = error.to_string();
    assert!(message.contains("CHAT_SEARCH_CONFIG"), "{message}");
    assert!(message.contains("\"klingon\""), "{message}");
    assert!(message.contains("simple or english"), "{message}");
}

/// Runs `chat-service token --user alice` (which reads the whole configuration) with only
/// `settings` in its environment.
fn token_with(settings: &[(&str, &str)]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_chat-service"))
        .args(["token", "--user", "alice"])
        .env_clear()
        .envs(settings.iter().copied())
        .output()
        .unwrap_or_else(|e| panic!("cannot run the binary: {e}"))
}

#[test]
fn a_real_model_without_a_signing_key_does_not_start_unless_development_is_asked_for() {
    let real_model = [
        ("CHAT_LLM_BASE_URL", "http://127.0.0.1:1/v1"),
        ("CHAT_LLM_MODEL", "paid-model"),
    ];
    let refused = token_with(&real_model);
    assert!(
        !refused.status.success(),
        "started with the development key"
    );
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(message.contains("CHAT_JWT_SECRET"), "{message}");
    assert!(message.contains("CHAT_ENV=development"), "{message}");

    let asked = token_with(&[&real_model[..], &[("CHAT_ENV", "development")]].concat());
    assert!(asked.status.success(), "{asked:?}");

    // The quick start needs no settings at all.
    let quick_start = token_with(&[]);
    assert!(quick_start.status.success(), "{quick_start:?}");
    assert!(!quick_start.stdout.is_empty());
}
