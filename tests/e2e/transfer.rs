//! `chat-service export` and `chat-service import`, run as a user runs them: the binary, its
//! standard input and output, against the test's database.

use std::process::Stdio;

use chat_service::api::proto::{
    GetConversationRequest, ListConversationsRequest, Message, SendMessageRequest,
    SwitchBranchRequest,
};
use tokio::io::AsyncWriteExt;

use super::{
    send_message::send_ok,
    support::{
        FakeLlm, Script, TestApp, TestDatabase, app::without_user_limits, streams::read_to_end,
    },
};

/// The parent that makes a message another first one.
const ROOT: &str = "00000000-0000-0000-0000-000000000000";

/// What one run of the binary left.
struct Run {
    success: bool,
    stdout: String,
    stderr: String,
}

/// Runs `chat-service ARGS` on `db` with `input` on its standard input.
async fn chat_service(db: &TestDatabase, args: &[&str], input: &[u8]) -> Run {
    let url = db.url.expose();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_chat-service"))
        .args(args)
        .env_clear()
        .env("DATABASE_URL", secrecy::ExposeSecret::expose_secret(&url))
        .env("CHAT_LOG_FORMAT", "json")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    let mut stdin = child.stdin.take().unwrap_or_else(|| panic!("no stdin"));
    stdin
        .write_all(input)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    drop(stdin);
    let output = child
        .wait_with_output()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    Run {
        success: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

async fn export(db: &TestDatabase, user: &str) -> String {
    let run = chat_service(db, &["export", "--user", user], b"").await;
    assert!(run.success, "{}", run.stderr);
    run.stdout
}

/// An export with its ids taken out: what must survive a round trip.
fn without_ids(export: &str) -> String {
    export
        .lines()
        .map(|line| {
            let mut value: serde_json::Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
            if let Some(conversation) = value.get_mut("conversation") {
                conversation["id"] = serde_json::Value::Null;
            }
            if let Some(messages) = value.get_mut("messages").and_then(|m| m.as_array_mut()) {
                for message in messages {
                    message["id"] = serde_json::Value::Null;
                }
            }
            value.to_string()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A conversation with tool calls, as an export holds it: the service's own turns cannot make
/// one without an MCP server.
const WITH_TOOLS: &str = r#"{"conversation":{"title":"Weather","title_source":"model","create_time":"2026-11-01T10:00:00.000001Z","update_time":"2026-11-01T10:00:05.000000Z"},"messages":[{"role":"user","content":"Weather in Lisbon?","status":"complete","create_time":"2026-11-01T10:00:00.000001Z"},{"role":"assistant","content":"","status":"complete","create_time":"2026-11-01T10:00:01.000000Z","tool_calls":[{"id":"call_1","name":"weather","arguments":{"city":"Lisbon"},"status":"succeeded","result":{"celsius":21}},{"id":"call_2","name":"clock","arguments":{},"status":"failed","result":{"error":"timed out"}}]},{"role":"assistant","content":"21 °C and sunny.","status":"complete","create_time":"2026-11-01T10:00:05.000000Z"}]}"#;

#[tokio::test]
async fn an_export_imported_into_a_fresh_database_exports_the_same() {
    let fake = FakeLlm::start().await;
    let app = TestApp::with_fake_llm(&fake, without_user_limits).await;
    let named = app.create_conversation("alice", "Trip to Lisbon").await;
    fake.script([Script::reply(&["Go in May."]), Script::reply(&["Tram 28."])]);
    send_ok(&app, "alice", &named, "When should I go?").await;
    send_ok(
        &app,
        "alice",
        &named,
        "And the trams? \"quoted\" \\ ünïcode",
    )
    .await;
    fake.script([Script::reply(&["Hello!"])]);
    send_ok(&app, "alice", "", "Hi").await;
    send_ok(&app, "bob", "", "Bob's own").await;
    let header = "{\"format\":\"chat-service.conversations\",\"version\":1}\n";
    let imported = chat_service(
        &app.db,
        &["import", "--user", "alice"],
        format!("{header}{WITH_TOOLS}\n").as_bytes(),
    )
    .await;
    assert!(imported.success, "{}", imported.stderr);
    assert!(
        imported
            .stderr
            .contains("imported 1 conversations (3 messages)"),
        "{}",
        imported.stderr
    );

    let first = export(&app.db, "alice").await;
    let lines: Vec<&str> = first.lines().collect();
    assert_eq!(lines[0], header.trim_end());
    // Three conversations, oldest first; bob's is not among them.
    assert_eq!(lines.len(), 4, "{first}");
    assert!(!first.contains("Bob's own"));
    // The imported one was created first.
    let trip: serde_json::Value = serde_json::from_str(lines[2]).unwrap_or_default();
    assert_eq!(trip["conversation"]["title"], "Trip to Lisbon");
    assert_eq!(trip["conversation"]["title_source"], "client");
    let contents: Vec<&str> = trip["messages"]
        .as_array()
        .map(|m| m.iter().filter_map(|m| m["content"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(
        contents,
        [
            "When should I go?",
            "Go in May.",
            "And the trams? \"quoted\" \\ ünïcode",
            "Tram 28."
        ]
    );
    // Each reply names the model that wrote it; the user's messages name none.
    assert_eq!(trip["messages"][1]["model"], "fake-model");
    assert_eq!(trip["messages"][0].get("model"), None);
    let tools: serde_json::Value = serde_json::from_str(lines[1]).unwrap_or_default();
    assert_eq!(
        tools["messages"][1]["tool_calls"][0]["arguments"]["city"],
        "Lisbon"
    );

    // Into another database, and out again: the same but for the ids.
    let fresh = TestDatabase::new().await;
    let imported = chat_service(&fresh, &["import", "--user", "carol"], first.as_bytes()).await;
    assert!(imported.success, "{}", imported.stderr);
    let second = export(&fresh, "carol").await;
    assert_eq!(without_ids(&second), without_ids(&first));
    assert_ne!(second, first, "an import gives new ids");

    // What was imported is the user's like any conversation: listed, read, and continued.
    let carol =
        TestApp::with_fake_llm(&fake, |config| config.database.url = fresh.url.clone()).await;
    let listed = carol
        .conversations()
        .list_conversations(carol.request("carol", ListConversationsRequest::default()))
        .await
        .unwrap_or_else(|e| panic!("{e:?}"))
        .into_inner()
        .conversations;
    assert_eq!(listed.len(), 3);
    let trip = listed
        .iter()
        .find(|c| c.title == "Trip to Lisbon")
        .unwrap_or_else(|| panic!("{listed:?}"));
    fake.script([Script::reply(&["Sure."])]);
    send_ok(&carol, "carol", &trip.id, "Thanks").await;
    let sent: Vec<String> = fake
        .received()
        .last()
        .map(|r| r.messages().into_iter().map(|(_, c)| c).collect())
        .unwrap_or_default();
    assert_eq!(
        sent,
        [
            "When should I go?",
            "Go in May.",
            "And the trams? \"quoted\" \\ ünïcode",
            "Tram 28.",
            "Thanks"
        ]
    );
}

#[tokio::test]
async fn a_chatgpt_export_is_imported_as_the_branch_its_user_last_saw() {
    let db = TestDatabase::new().await;
    let fixture = include_bytes!("../fixtures/chatgpt-conversations.json");
    let run = chat_service(&db, &["import", "--user", "alice"], fixture).await;
    // One conversation is refused, with its place and reason; the others are stored.
    assert!(!run.success);
    assert!(
        run.stderr
            .contains("refused conversation 2: current_node \"gone\" is not in its mapping"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("imported 2 conversations (5 messages) into alice; refused 1"),
        "{}",
        run.stderr
    );

    let app = TestApp::spawn_with(|config| config.database.url = db.url.clone()).await;
    let listed = app
        .conversations()
        .list_conversations(app.request("alice", ListConversationsRequest::default()))
        .await
        .unwrap_or_else(|e| panic!("{e:?}"))
        .into_inner()
        .conversations;
    let titles: Vec<&str> = listed.iter().map(|c| c.title.as_str()).collect();
    assert_eq!(titles, ["Bonjour à tous", "Tram routes in Lisbon"]);
    let trams = app
        .conversations()
        .get_conversation(app.request(
            "alice",
            GetConversationRequest {
                conversation_id: listed[1].id.clone(),
            },
        ))
        .await
        .unwrap_or_else(|e| panic!("{e:?}"))
        .into_inner();
    // The branch that ends at current_node, without the hidden system message, the search
    // addressed to the browser, the tool's answer and the image.
    let said: Vec<(i32, &str, i32)> = trams
        .messages
        .iter()
        .map(|m| (m.role, m.content.as_str(), m.status))
        .collect();
    use chat_service::api::proto::{MessageStatus, Role};
    assert_eq!(
        said,
        [
            (
                Role::User as i32,
                "Which tram climbs to the castle?",
                MessageStatus::Complete as i32
            ),
            (
                Role::Assistant as i32,
                "Tram 28 climbs to the castle.",
                MessageStatus::Complete as i32
            ),
            (
                Role::User as i32,
                "Is this the stop?",
                MessageStatus::Complete as i32
            ),
            (
                Role::Assistant as i32,
                "Yes: Martim Moniz.",
                MessageStatus::Cancelled as i32
            ),
        ]
    );
    // ChatGPT's replies keep the model it names for them.
    let models: Vec<&str> = trams.messages.iter().map(|m| m.model.as_str()).collect();
    assert_eq!(models, ["", "gpt-4o", "", "gpt-4o"]);
    let first = trams.messages[0].create_time.unwrap_or_default();
    assert_eq!((first.seconds, first.nanos), (1_764_931_201, 0));
    let created = trams
        .conversation
        .unwrap_or_default()
        .create_time
        .unwrap_or_default();
    assert_eq!(
        (created.seconds, created.nanos),
        (1_764_931_200, 123_456_000)
    );
}

#[tokio::test]
async fn bad_input_is_refused_with_its_line_and_nothing_is_half_written() {
    let db = TestDatabase::new().await;
    let header = "{\"format\":\"chat-service.conversations\",\"version\":1}";
    let good = r#"{"conversation":{"title":"Good","title_source":"client","create_time":"2026-11-01T10:00:00Z","update_time":"2026-11-01T10:00:00Z"},"messages":[{"role":"user","content":"fine","status":"complete","create_time":"2026-11-01T10:00:00Z"}]}"#;
    // Its second message has a role no message has: the first must not be stored either.
    let bad_role = r#"{"conversation":{"title":"Bad","title_source":"client","create_time":"2026-11-01T10:00:00Z","update_time":"2026-11-01T10:00:00Z"},"messages":[{"role":"user","content":"kept?","status":"complete","create_time":"2026-11-01T10:00:00Z"},{"role":"wizard","content":"no","status":"complete","create_time":"2026-11-01T10:00:00Z"}]}"#;
    let nul = r#"{"conversation":{"title":"Nul","title_source":"client","create_time":"2026-11-01T10:00:00Z","update_time":"2026-11-01T10:00:00Z"},"messages":[{"role":"user","content":"a\u0000b","status":"complete","create_time":"2026-11-01T10:00:00Z"}]}"#;
    let bad_time = r#"{"conversation":{"title":"Time","title_source":"client","create_time":"yesterday","update_time":"2026-11-01T10:00:00Z"},"messages":[]}"#;
    // Its first message follows its second: not a tree written in order.
    let forward = r#"{"conversation":{"title":"Forward","title_source":"client","create_time":"2026-11-01T10:00:00Z","update_time":"2026-11-01T10:00:00Z"},"messages":[{"parent":1,"role":"user","content":"a","status":"complete","create_time":"2026-11-01T10:00:00Z"},{"role":"assistant","content":"b","status":"complete","create_time":"2026-11-01T10:00:00Z"}]}"#;
    let no_leaf = r#"{"conversation":{"title":"Leaf","title_source":"client","create_time":"2026-11-01T10:00:00Z","update_time":"2026-11-01T10:00:00Z","leaf":4},"messages":[{"role":"user","content":"a","status":"complete","create_time":"2026-11-01T10:00:00Z"}]}"#;
    let long_model = format!(
        r#"{{"conversation":{{"title":"Model","title_source":"client","create_time":"2026-11-01T10:00:00Z","update_time":"2026-11-01T10:00:00Z"}},"messages":[{{"role":"assistant","content":"a","status":"complete","create_time":"2026-11-01T10:00:00Z","model":"{}"}}]}}"#,
        "m".repeat(65)
    );
    let input = format!(
        "{header}\n{good}\n{bad_role}\n\n{nul}\n{bad_time}\nnot json\n{forward}\n{no_leaf}\n{long_model}\n"
    );
    let run = chat_service(&db, &["import", "--user", "alice"], input.as_bytes()).await;
    assert!(!run.success);
    for expected in [
        "refused line 3: not valid JSON for this format: unknown variant `wizard`",
        "refused line 5: messages.content: holds a NUL character",
        "refused line 6: conversation.create_time: \"yesterday\" is not an RFC 3339 time",
        "refused line 7: not valid JSON for this format",
        "refused line 8: messages.parent: message 0 must follow a message that comes before it",
        "refused line 9: conversation.leaf: 4 is not the index of one of its messages",
        "refused line 10: messages.model: is longer than 64 characters",
        "imported 1 conversations (1 messages) into alice; refused 7",
    ] {
        assert!(
            run.stderr.contains(expected),
            "{expected} in {}",
            run.stderr
        );
    }
    assert_eq!(
        db.count("SELECT count(*) AS n FROM messages").await,
        1,
        "only the good conversation's message"
    );
    assert_eq!(db.count("SELECT count(*) AS n FROM conversations").await, 1);

    // Not an export at all: nothing is written, and the reason says what was expected.
    let before = db.snapshot().await;
    for input in [
        "{\"format\":\"something else\",\"version\":1}\n",
        "",
        "hello\n",
    ] {
        let run = chat_service(&db, &["import", "--user", "alice"], input.as_bytes()).await;
        assert!(!run.success, "{input:?}");
        assert!(run.stderr.contains("error:"), "{}", run.stderr);
    }
    let newer = "{\"format\":\"chat-service.conversations\",\"version\":2}\n";
    let run = chat_service(&db, &["import", "--user", "alice"], newer.as_bytes()).await;
    assert!(
        run.stderr
            .contains("version 2 of the export format; this service reads version 1"),
        "{}",
        run.stderr
    );
    assert_eq!(db.snapshot().await, before);

    // An unknown user exports nothing but the header, and is not created.
    let run = chat_service(&db, &["export", "--user", "nobody"], b"").await;
    assert!(run.success, "{}", run.stderr);
    assert_eq!(run.stdout, format!("{header}\n"));
    assert_eq!(
        db.count("SELECT count(*) AS n FROM users WHERE subject = 'nobody'")
            .await,
        0
    );
}

/// Alice's message `content` in `conversation`, after `parent`.
async fn send_after(app: &TestApp, conversation: &str, parent: &str, content: &str) {
    let request = app.request(
        "alice",
        SendMessageRequest {
            conversation_id: conversation.to_owned(),
            content: content.to_owned(),
            parent_message_id: parent.to_owned(),
            ..Default::default()
        },
    );
    let mut stream = app
        .chat()
        .send_message(request)
        .await
        .unwrap_or_else(|e| panic!("{e:?}"))
        .into_inner();
    let (_, error) = read_to_end(&mut stream).await;
    assert!(error.is_none(), "{error:?}");
}

async fn branch_of(app: &TestApp, user: &str, conversation: &str) -> Vec<Message> {
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
        .messages
}

#[tokio::test]
async fn a_conversation_with_branches_comes_back_with_them() {
    let fake = FakeLlm::start().await;
    let app = TestApp::with_fake_llm(&fake, without_user_limits).await;
    let conversation = send_ok(&app, "alice", "", "first").await.conversation_id();
    send_ok(&app, "alice", &conversation, "second").await;
    let line = branch_of(&app, "alice", &conversation).await;
    send_after(&app, &conversation, &line[1].id, "second, edited").await;
    send_after(&app, &conversation, ROOT, "first, edited").await;
    // Back to the first branch: the leaf is not the last message written.
    app.conversations()
        .switch_branch(app.request(
            "alice",
            SwitchBranchRequest {
                conversation_id: conversation.clone(),
                message_id: line[3].id.clone(),
            },
        ))
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));

    let first = export(&app.db, "alice").await;
    let exported: serde_json::Value =
        serde_json::from_str(first.lines().nth(1).unwrap_or_default()).unwrap_or_default();
    let messages = exported["messages"].as_array().cloned().unwrap_or_default();
    let contents: Vec<&str> = messages
        .iter()
        .filter_map(|m| m["content"].as_str())
        .collect();
    assert_eq!(
        contents,
        [
            "first",
            "You said: first.",
            "second",
            "You said: second.",
            "second, edited",
            "You said: second, edited.",
            "first, edited",
            "You said: first, edited."
        ]
    );
    let links: Vec<(Option<u64>, Option<bool>)> = messages
        .iter()
        .map(|m| (m["parent"].as_u64(), m["root"].as_bool()))
        .collect();
    assert_eq!(
        links,
        [
            (None, None),
            (None, None),
            (None, None),
            (None, None),
            (Some(1), None),
            (None, None),
            (None, Some(true)),
            (None, None)
        ]
    );
    assert_eq!(exported["conversation"]["leaf"], 3);

    let fresh = TestDatabase::new().await;
    let imported = chat_service(&fresh, &["import", "--user", "carol"], first.as_bytes()).await;
    assert!(imported.success, "{}", imported.stderr);
    let second = export(&fresh, "carol").await;
    assert_eq!(without_ids(&second), without_ids(&first));

    // Carol's copy shows the same branch, with the same siblings, and goes on from its leaf.
    let carol =
        TestApp::with_fake_llm(&fake, |config| config.database.url = fresh.url.clone()).await;
    let copy: serde_json::Value =
        serde_json::from_str(second.lines().nth(1).unwrap_or_default()).unwrap_or_default();
    let copied = copy["conversation"]["id"].as_str().unwrap_or_default();
    let shown = branch_of(&carol, "carol", copied).await;
    let seen: Vec<(&str, u32, u32)> = shown
        .iter()
        .map(|m| (m.content.as_str(), m.sibling_index, m.sibling_count))
        .collect();
    assert_eq!(
        seen,
        [
            ("first", 0, 2),
            ("You said: first.", 0, 1),
            ("second", 0, 2),
            ("You said: second.", 0, 1)
        ]
    );
    send_ok(&carol, "carol", copied, "third").await;
    let sent: Vec<String> = fake
        .received()
        .last()
        .map(|r| r.messages().into_iter().map(|(_, c)| c).collect())
        .unwrap_or_default();
    assert_eq!(
        sent,
        [
            "first",
            "You said: first.",
            "second",
            "You said: second.",
            "third"
        ]
    );
}
