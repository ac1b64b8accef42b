//! Budgets: a turn whose user has spent their budget is refused before the model is asked, and
//! turns admitted at once, on two replicas, cannot pass it together.

use std::time::Duration;

use chat_service::domain::{Budget, UsagePeriod};
use chrono::{Datelike, Utc};
use serde_json::{Value, json};
use tonic::Status;

use super::{
    limits::assert_quota,
    regenerate::regenerate,
    send_message::{Turn, replica_of, send, send_ok, send_request},
    support::{FakeLlm, Script, TestApp, streams::read_to_end},
    usage::priced,
};

/// A call that used 39 tokens (30 in, 9 out), costing 102 millionths at [`priced`]'s prices.
fn reported(deltas: &[&str]) -> Script {
    Script::Reported {
        deltas: deltas.iter().map(|d| (*d).to_owned()).collect(),
        usage: json!({"prompt_tokens": 30, "completion_tokens": 9,
                      "prompt_tokens_details": {"cached_tokens": 20}}),
    }
}

/// A budget of `tokens` a day.
fn daily_tokens(tokens: i64) -> Budget {
    Budget {
        tokens: Some(tokens),
        cost_micros: None,
        period: UsagePeriod::Day,
    }
}

/// The status a refused turn ended with, whether before its stream or in it.
#[track_caller]
fn refusal(sent: Result<Turn, Status>) -> Status {
    match sent {
        Err(status) => status,
        Ok(turn) => turn
            .error
            .unwrap_or_else(|| panic!("the turn was not refused: {:?}", turn.events)),
    }
}

/// The next midnight, UTC: when a daily budget renews.
fn next_midnight() -> chrono::DateTime<Utc> {
    let today = Utc::now().date_naive();
    let tomorrow = today.succ_opt().unwrap_or(today);
    tomorrow.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc()
}

async fn message_count(app: &TestApp) -> i64 {
    app.db.count("SELECT count(*) AS n FROM messages").await
}

#[tokio::test]
async fn a_turn_past_the_budget_is_refused_before_the_model_is_asked_until_the_period_renews() {
    let fake = FakeLlm::start().await;
    fake.script([reported(&["One."]), reported(&["Two."])]);
    let app = TestApp::with_fake_llm(&fake, |config| {
        config.limits.budget = daily_tokens(40);
    })
    .await;

    // 39 of 40 tokens: the next turn is let in, and completes although it goes over.
    let first = send_ok(&app, "alice", "", "First").await;
    assert!(first.error.is_none(), "{:?}", first.error);
    let conversation = first.conversation_id();
    let second = send_ok(&app, "alice", &conversation, "Second").await;
    assert!(second.error.is_none(), "{:?}", second.error);
    assert_eq!(second.text(), "Two.");
    let messages = message_count(&app).await;

    // 78 of 40: refused, in the conversation, in a new one and as a regeneration, with when the
    // budget renews; nothing is written and the model is not asked.
    let in_conversation = refusal(send(&app, "alice", &conversation, "Third").await);
    let retry = assert_quota(&in_conversation, "token_budget")
        .unwrap_or_else(|| panic!("no RetryInfo in {in_conversation:?}"));
    let renews = Utc::now() + chrono::Duration::from_std(retry).unwrap_or_default();
    let off = (next_midnight() - renews).num_seconds();
    assert!(
        (0..=60).contains(&off),
        "retry in {retry:?}, {off} s off midnight"
    );
    let midnight = next_midnight().format("%Y-%m-%dT00:00:00Z").to_string();
    assert!(
        in_conversation.message().contains("40 tokens a day")
            && in_conversation.message().contains(&midnight),
        "{}",
        in_conversation.message()
    );
    let new_conversation = refusal(send(&app, "alice", "", "Fourth").await);
    assert_quota(&new_conversation, "token_budget");
    let first_message = match first.events.first() {
        Some(chat_service::api::proto::send_message_response::Event::Accepted(accepted)) => {
            accepted.user_message.clone().unwrap_or_default().id
        }
        other => panic!("{other:?}"),
    };
    let regenerated = refusal(regenerate(&app, &first_message).await);
    assert_quota(&regenerated, "token_budget");
    assert_eq!(message_count(&app).await, messages);
    assert_eq!(fake.received().len(), 2);
    let metrics = app.scrape_metrics().await;
    assert!(
        metrics.contains("chat_limit_refusals_total{limit=\"token_budget\"} 3"),
        "{metrics}"
    );

    // Another user has a budget of their own.
    fake.script([reported(&["Hi bob."])]);
    let bob = send_ok(&app, "bob", "", "Hello").await;
    assert!(bob.error.is_none(), "{:?}", bob.error);
}

#[tokio::test]
async fn a_cost_budget_counts_at_the_catalogs_prices() {
    let fake = FakeLlm::start().await;
    fake.script([reported(&["One."])]);
    let catalog = priced(&fake);
    let app = TestApp::spawn_with(|config| {
        config.model = catalog;
        // 100 millionths: a call costs 102.
        config.limits.budget = Budget {
            tokens: Some(1_000_000),
            cost_micros: Some(100),
            period: UsagePeriod::Week,
        };
    })
    .await;
    let first = send_ok(&app, "alice", "", "First").await;
    assert!(first.error.is_none(), "{:?}", first.error);
    let refused = refusal(send(&app, "alice", &first.conversation_id(), "Second").await);
    let retry = assert_quota(&refused, "cost_budget")
        .unwrap_or_else(|| panic!("no RetryInfo in {refused:?}"));
    // A week's budget renews on Monday.
    let renews = Utc::now() + chrono::Duration::from_std(retry).unwrap_or_default();
    let monday = (renews + chrono::Duration::seconds(30)).weekday();
    assert_eq!(monday, chrono::Weekday::Mon, "{renews}");
    assert!(
        refused.message().contains("100 millionths"),
        "{}",
        refused.message()
    );
}

/// Runs `chat-service ARGS` on the app's database.
pub(super) async fn command(app: &TestApp, args: &[&str]) -> (bool, String, String) {
    let url = app.db.url.expose();
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_chat-service"))
        .args(args)
        .env_clear()
        .env("DATABASE_URL", secrecy::ExposeSecret::expose_secret(&url))
        .env("RUST_LOG", "warn")
        .output()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn an_operator_gives_a_user_a_budget_of_their_own_and_takes_it_away() {
    let fake = FakeLlm::start().await;
    fake.script([reported(&["One."]), reported(&["Two."])]);
    let app = TestApp::with_fake_llm(&fake, |_| {}).await;
    let (set, _, stderr) = command(
        &app,
        &[
            "budget", "set", "--user", "alice", "--tokens", "30", "--period", "day",
        ],
    )
    .await;
    assert!(set, "{stderr}");
    let (shown, stdout, stderr) = command(&app, &["usage", "--user", "alice"]).await;
    assert!(shown, "{stderr}");
    let shown: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert_eq!(
        (&shown["budget"], &shown["own_budget"]),
        (
            &json!({"tokens": 30, "cost_micros": null, "period": "day"}),
            &json!(true)
        )
    );

    let first = send_ok(&app, "alice", "", "First").await;
    assert!(first.error.is_none(), "{:?}", first.error);
    let conversation = first.conversation_id();
    assert_quota(
        &refusal(send(&app, "alice", &conversation, "Second").await),
        "token_budget",
    );
    // Without a default, bob has no limit.
    fake.script([reported(&["Hi bob."])]);
    assert!(send_ok(&app, "bob", "", "Hi").await.error.is_none());

    let (cleared, _, stderr) = command(&app, &["budget", "clear", "--user", "alice"]).await;
    assert!(cleared, "{stderr}");
    let again = send_ok(&app, "alice", &conversation, "Second").await;
    assert!(again.error.is_none(), "{:?}", again.error);

    // What the command refuses.
    let (ok, _, stderr) = command(
        &app,
        &[
            "budget",
            "set",
            "--user",
            "alice",
            "--cost=-1",
            "--period",
            "day",
        ],
    )
    .await;
    assert!(!ok && stderr.contains("not an amount"), "{stderr}");
    let (ok, _, stderr) = command(
        &app,
        &[
            "budget", "set", "--user", "alice", "--tokens", "5", "--period", "year",
        ],
    )
    .await;
    assert!(!ok && stderr.contains("day, week or month"), "{stderr}");
}

/// Opens a turn of alice's on `app` and reads until it is accepted or refused: the refusal, or
/// the stream, whose reply the upstream holds.
async fn start_turn(
    app: &TestApp,
    content: &str,
) -> Result<tonic::Streaming<chat_service::api::proto::SendMessageResponse>, Status> {
    let request = app.request(
        "alice",
        chat_service::api::proto::SendMessageRequest {
            content: content.to_owned(),
            ..Default::default()
        },
    );
    let mut stream = app.chat().send_message(request).await?.into_inner();
    match stream.message().await {
        Ok(Some(_accepted)) => Ok(stream),
        Ok(None) => panic!("the stream ended without an event"),
        Err(status) => Err(status),
    }
}

#[tokio::test]
async fn two_replicas_let_one_turn_of_a_budget_through_at_once() {
    let fake = FakeLlm::start().await;
    let gate = std::sync::Arc::new(tokio::sync::Notify::new());
    // Whichever turn is let in waits for the gate; a second would answer at once.
    fake.script([
        Script::Gated {
            gate: gate.clone(),
            then: Box::new(reported(&["Held."])),
        },
        reported(&["Not held."]),
    ]);
    let budget = daily_tokens(1_000_000);
    let a = TestApp::with_fake_llm(&fake, |config| config.limits.budget = budget).await;
    let url = a.config.database.url.clone();
    let b = TestApp::with_fake_llm(&fake, |config| {
        config.database.url = url;
        config.limits.budget = budget;
    })
    .await;

    // Two turns at once, one on each replica, in two new conversations.
    let (on_a, on_b) = tokio::join!(start_turn(&a, "On a"), start_turn(&b, "On b"));
    let (mut admitted, refused) = match (on_a, on_b) {
        (Ok(stream), Err(status)) | (Err(status), Ok(stream)) => (stream, status),
        (Ok(_), Ok(_)) => panic!("both turns were let in"),
        (Err(a), Err(b)) => panic!("both turns were refused: {a:?} {b:?}"),
    };
    let retry = assert_quota(&refused, "budget_turn");
    assert_eq!(retry, Some(Duration::from_secs(1)), "{refused:?}");
    assert_eq!(message_count(&a).await, 1);

    // Once the turn let in ends, the next is let in, on either replica.
    gate.notify_one();
    let (_, error) = read_to_end(&mut admitted).await;
    assert!(error.is_none(), "{error:?}");
    let next = send_ok(&b, "alice", "", "Next").await;
    assert!(next.error.is_none(), "{:?}", next.error);
    assert_eq!(next.text(), "Not held.");
    assert_eq!(fake.received().len(), 2);
}

#[tokio::test]
async fn without_a_budget_a_users_turns_run_at_once() {
    let fake = FakeLlm::start().await;
    let gate = std::sync::Arc::new(tokio::sync::Notify::new());
    fake.script([
        Script::Gated {
            gate: gate.clone(),
            then: Box::new(reported(&["Held."])),
        },
        reported(&["Not held."]),
    ]);
    let a = TestApp::with_fake_llm(&fake, |_| {}).await;
    let b = replica_of(&a, &fake).await;
    let held = start_turn(&a, "On a").await;
    assert!(held.is_ok(), "{:?}", held.as_ref().err());
    let other = send_ok(&b, "alice", "", "On b").await;
    assert!(other.error.is_none(), "{:?}", other.error);
    gate.notify_one();
    let (_, error) = read_to_end(&mut held.unwrap_or_else(|e| panic!("{e:?}"))).await;
    assert!(error.is_none(), "{error:?}");
}

#[tokio::test]
async fn a_turn_refused_for_another_reason_leaves_the_budget_free() {
    let fake = FakeLlm::start().await;
    let app = TestApp::with_fake_llm(&fake, |config| {
        config.limits.storage.messages_per_conversation = 2;
        config.limits.budget = daily_tokens(1_000_000);
    })
    .await;
    let first = send_ok(&app, "alice", "", "One").await;
    assert!(first.error.is_none(), "{:?}", first.error);
    // The conversation is full: the turn took the budget in the lock, and gives it back.
    let full = refusal(send(&app, "alice", &first.conversation_id(), "Two").await);
    super::limits::assert_storage_limit(&full, "conversation_messages");
    let next = send_ok(&app, "alice", "", "Three").await;
    assert!(next.error.is_none(), "{:?}", next.error);
    assert_eq!(
        app.db
            .count("SELECT count(*) AS n FROM users WHERE budget_turn IS NOT NULL")
            .await,
        1
    );
}

/// A replica that served a user while they had no budget learns of the budget an operator gives
/// them by their next turn, which it checks against it: one let in (and the budget taken), one
/// with a request id refused, on two replicas that had not seen the budget.
#[tokio::test]
async fn a_budget_given_to_a_user_served_without_one_holds_from_their_next_turn() {
    let fake = FakeLlm::start().await;
    fake.script([
        reported(&["One."]),
        reported(&["Two."]),
        reported(&["Three."]),
        reported(&["Four."]),
    ]);
    let a = TestApp::with_fake_llm(&fake, |_| {}).await;
    let b = replica_of(&a, &fake).await;
    let first = send_ok(&a, "alice", "", "First").await;
    assert!(first.error.is_none(), "{:?}", first.error);
    let conversation = first.conversation_id();
    for replica in [&a, &b] {
        let turn = send_ok(replica, "alice", &conversation, "Again").await;
        assert!(turn.error.is_none(), "{:?}", turn.error);
    }

    // Far from spent: the turn is let in, with the budget taken by it.
    let (set, _, stderr) = command(
        &a,
        &[
            "budget", "set", "--user", "alice", "--tokens", "1000000", "--period", "day",
        ],
    )
    .await;
    assert!(set, "{stderr}");
    let let_in = send_ok(&a, "alice", &conversation, "Fourth").await;
    assert!(let_in.error.is_none(), "{:?}", let_in.error);
    assert_eq!(let_in.text(), "Four.");
    assert_eq!(
        a.db.count(
            "SELECT count(*) AS n FROM users u JOIN turns t ON t.id = u.budget_turn
             WHERE u.subject = 'alice' AND t.state = 'completed'"
        )
        .await,
        1
    );

    // Spent: refused on the other replica, with a request id; nothing written, no model asked.
    let (set, _, stderr) = command(
        &a,
        &[
            "budget", "set", "--user", "alice", "--tokens", "30", "--period", "day",
        ],
    )
    .await;
    assert!(set, "{stderr}");
    let messages = message_count(&a).await;
    let keyed = chat_service::api::proto::SendMessageRequest {
        conversation_id: conversation.clone(),
        content: "Fifth".to_owned(),
        request_id: "fifth".to_owned(),
        ..Default::default()
    };
    assert_quota(
        &refusal(send_request(&b, "alice", keyed).await),
        "token_budget",
    );
    assert_eq!(message_count(&a).await, messages);
    assert_eq!(
        a.db.count("SELECT count(*) AS n FROM turns WHERE request_key = 'fifth'")
            .await,
        0
    );
    assert_eq!(fake.received().len(), 4);
}
