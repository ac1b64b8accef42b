//! Titles written by the model: asked for once a new conversation's first reply is told, in the
//! background; a client's title is never replaced, and a failure changes nothing.

use std::sync::Arc;

use super::{
    eventually,
    send_message::send_ok,
    support::{FakeLlm, Script, TestApp, app::without_user_limits},
};
use chat_service::api::proto::GetConversationRequest;

async fn app_naming_conversations(fake: &FakeLlm) -> TestApp {
    TestApp::with_fake_llm(fake, |config| {
        without_user_limits(config);
        config.turns.titles = true;
    })
    .await
}

async fn title(app: &TestApp, user: &str, conversation: &str) -> String {
    app.conversations()
        .get_conversation(app.request(
            user,
            GetConversationRequest {
                conversation_id: conversation.to_owned(),
            },
        ))
        .await
        .unwrap_or_else(|e| panic!("{e:?}"))
        .into_inner()
        .conversation
        .unwrap_or_default()
        .title
}

/// How many titles the metrics count with `outcome`.
async fn titles_counted(app: &TestApp, outcome: &str) -> u64 {
    let line = format!("chat_conversation_titles_total{{outcome=\"{outcome}\"}} ");
    app.scrape_metrics()
        .await
        .lines()
        .find_map(|l| l.strip_prefix(&line).and_then(|n| n.trim().parse().ok()))
        .unwrap_or(0)
}

async fn source(app: &TestApp, conversation: &str) -> i64 {
    app.db
        .count(&format!(
            "SELECT CASE title_source WHEN 'derived' THEN 0 WHEN 'client' THEN 1 ELSE 2 END::bigint AS n
             FROM conversations WHERE id = '{conversation}'"
        ))
        .await
}

#[tokio::test]
async fn the_model_names_a_new_conversation_once_its_first_reply_is_told() {
    let fake = FakeLlm::start().await;
    let app = app_naming_conversations(&fake).await;
    let gate = Arc::new(tokio::sync::Notify::new());
    fake.script([
        Script::reply(&["Tram 28 ", "climbs the Alfama."]),
        Script::Gated {
            gate: gate.clone(),
            then: Box::new(Script::reply(&[
                "**Title:** \"Lisbon's ",
                "tram 28\"\nmore",
            ])),
        },
    ]);

    // The reply completes while the title's request is held: the title costs it nothing.
    let turn = send_ok(&app, "alice", "", "Which tram goes through the Alfama?").await;
    assert!(turn.error.is_none(), "{:?}", turn.error);
    assert_eq!(turn.text(), "Tram 28 climbs the Alfama.");
    let conversation = turn.conversation_id();
    assert_eq!(
        title(&app, "alice", &conversation).await,
        "Which tram goes through the Alfama?"
    );

    // The model is shown the first exchange, and offered no tools.
    let asked = eventually(|| async { fake.received().get(1).cloned() }).await;
    let messages = asked.messages();
    assert_eq!(messages.len(), 2, "{messages:?}");
    assert_eq!(messages[0].0, "system");
    assert!(messages[0].1.contains("title"), "{}", messages[0].1);
    assert_eq!(messages[1].0, "user");
    assert_eq!(
        messages[1].1,
        "User: Which tram goes through the Alfama?\n\nAssistant: Tram 28 climbs the Alfama."
    );
    assert!(asked.body.get("tools").is_none(), "{}", asked.body);

    // Once the model answers, its title, unwrapped, replaces the derived one.
    gate.notify_one();
    eventually(|| async {
        (title(&app, "alice", &conversation).await == "Lisbon's tram 28").then_some(())
    })
    .await;
    assert_eq!(source(&app, &conversation).await, 2);
    assert_eq!(titles_counted(&app, "named").await, 1);
    // The title's call counts in the user's usage beside the reply's, estimated as neither
    // upstream answer reported any; it wrote no message, so the reply alone has its usage.
    assert_eq!(
        app.db
            .count("SELECT calls + 10 * estimated_calls AS n FROM usage_days")
            .await,
        22
    );
    assert_eq!(
        app.db
            .count(&format!(
                "SELECT count(*) AS n FROM messages
                 WHERE conversation_id = '{conversation}' AND usage IS NOT NULL"
            ))
            .await,
        1
    );

    // Only the first reply names the conversation.
    fake.script([Script::reply(&["Yes."])]);
    send_ok(&app, "alice", &conversation, "Every day?").await;
    assert_eq!(fake.received().len(), 3);
    assert_eq!(
        title(&app, "alice", &conversation).await,
        "Lisbon's tram 28"
    );
}

#[tokio::test]
async fn a_clients_title_is_kept_and_a_failed_title_changes_nothing() {
    let fake = FakeLlm::start().await;
    let app = app_naming_conversations(&fake).await;

    // Named by the client: the model is not even asked.
    let named = app.create_conversation("alice", "Mine").await;
    fake.script([Script::reply(&["Sure."])]);
    send_ok(&app, "alice", &named, "Hello there").await;
    eventually(|| async { (titles_counted(&app, "kept").await == 1).then_some(()) }).await;
    assert_eq!(fake.received().len(), 1);
    assert_eq!(title(&app, "alice", &named).await, "Mine");
    assert_eq!(source(&app, &named).await, 1);

    // The model fails: the derived title stays, and the reply was whole.
    let before = app.db.count("SELECT count(*) AS n FROM messages").await;
    fake.script([
        Script::reply(&["Fine."]),
        Script::Status {
            code: 400,
            retry_after: None,
        },
    ]);
    let turn = send_ok(&app, "alice", "", "How are you today").await;
    assert!(turn.error.is_none(), "{:?}", turn.error);
    let conversation = turn.conversation_id();
    eventually(|| async { (titles_counted(&app, "failed").await == 1).then_some(()) }).await;
    assert_eq!(
        title(&app, "alice", &conversation).await,
        "How are you today"
    );
    assert_eq!(source(&app, &conversation).await, 0);
    assert_eq!(
        app.db.count("SELECT count(*) AS n FROM messages").await,
        before + 2
    );

    // A rename while the model writes wins over the model's title.
    let gate = Arc::new(tokio::sync::Notify::new());
    fake.script([
        Script::reply(&["Noted."]),
        Script::Gated {
            gate: gate.clone(),
            then: Box::new(Script::reply(&["A model title"])),
        },
    ]);
    let turn = send_ok(&app, "alice", "", "Plan a picnic").await;
    let conversation = turn.conversation_id();
    eventually(|| async { (fake.received().len() == 4).then_some(()) }).await;
    let renamed = app
        .conversations()
        .update_conversation(app.request(
            "alice",
            chat_service::api::proto::UpdateConversationRequest {
                conversation: Some(chat_service::api::proto::Conversation {
                    id: conversation.clone(),
                    title: "Picnic".to_owned(),
                    ..Default::default()
                }),
                update_mask: None,
            },
        ))
        .await
        .map(|_| ())
        .map_err(|status| status.code());
    assert_eq!(renamed, Ok(()));
    gate.notify_one();
    eventually(|| async { (titles_counted(&app, "kept").await == 2).then_some(()) }).await;
    assert_eq!(title(&app, "alice", &conversation).await, "Picnic");
    assert_eq!(source(&app, &conversation).await, 1);
}
