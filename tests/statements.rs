//! What each kind of turn sends to PostgreSQL, counted statement by statement as the service's
//! connections send them (diesel's instrumentation, installed for every connection this process
//! opens), against the table in BENCHMARKS.md ("Every statement of a turn"). A turn that starts
//! sending more than the table says fails here, and so does one that sends fewer: then the table
//! is out of date. A test binary of its own, so that no other test's connections are counted.

// A failed expectation is a failed test, reported by panicking like an assertion.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
// The 60-line limit (clippy.toml) is for the service's own code: a test, or a fake that
// plays a protocol, reads best whole.
#![allow(clippy::too_many_lines)]

use std::{
    collections::HashMap,
    sync::{Mutex, OnceLock},
};

use chat_service::api::proto::{
    GetConversationRequest, RegenerateReplyRequest, SendMessageRequest, SendMessageResponse,
    send_message_response,
};
use chat_service_test_support::{FakeLlm, FakeToolServer, Script, TestApp, mcp::TOOLS};
use diesel::connection::{Instrumentation, InstrumentationEvent, set_default_instrumentation};
use tokio::sync::Mutex as AsyncMutex;

/// Statements sent so far, by the database they were sent to, in order.
fn sent() -> &'static Mutex<HashMap<String, Vec<String>>> {
    static SENT: OnceLock<Mutex<HashMap<String, Vec<String>>>> = OnceLock::new();
    SENT.get_or_init(Mutex::default)
}

/// One connection's counter: it learns its database as the connection opens, and counts nothing
/// until the connection is set up.
struct Counter {
    database: Option<String>,
    /// Until the pool's set-up of the connection has sent its last statement: the preparation
    /// of the statement that creates a conversation. A connection the pool opens while a turn
    /// is measured would otherwise add its set-up to the turn. Connections that are never set
    /// up so (the readiness probe's, the tests' own) are never counted.
    setting_up: bool,
}

/// The statement that creates a conversation with its first message, after the budget's CTEs.
fn is_create_conversation(sql: &str) -> bool {
    sql.starts_with("WITH budget AS") && sql.contains("INSERT INTO conversations")
}

impl Instrumentation for Counter {
    fn on_connection_event(&mut self, event: InstrumentationEvent<'_>) {
        match event {
            InstrumentationEvent::StartEstablishConnection { url, .. } => {
                let path = url.rsplit('/').next().unwrap_or_default();
                self.database = Some(path.split('?').next().unwrap_or_default().to_owned());
                self.setting_up = true;
            }
            InstrumentationEvent::StartQuery { query, .. } => {
                let text = query.to_string();
                // The text without the binds diesel's display appends.
                let sql = text.split(" -- binds:").next().unwrap_or_default();
                let sql = sql.split_whitespace().collect::<Vec<_>>().join(" ");
                if self.setting_up {
                    self.setting_up = !is_create_conversation(&sql);
                    return;
                }
                let database = self.database.clone().unwrap_or_default();
                sent()
                    .lock()
                    .unwrap()
                    .entry(database)
                    .or_default()
                    .push(sql);
            }
            _ => {}
        }
    }
}

fn counter() -> Option<Box<dyn Instrumentation>> {
    Some(Box::new(Counter {
        database: None,
        setting_up: true,
    }))
}

/// Tests run one at a time: each measures a window of its own database's statements, and the
/// background work of the others (leases, health checks) would only add noise to the machine.
fn serial() -> &'static AsyncMutex<()> {
    static SERIAL: OnceLock<AsyncMutex<()>> = OnceLock::new();
    SERIAL.get_or_init(|| {
        set_default_instrumentation(counter).unwrap();
        AsyncMutex::new(())
    })
}

/// What the replica does on its own, whatever the turns: its lease, the sweep of lapsed turns,
/// readiness checks. Not part of any turn.
fn background(sql: &str) -> bool {
    sql == "SELECT 1"
        || sql.contains("replicas")
        || sql.starts_with("WITH lapsed AS")
        || sql.starts_with("SELECT id, attempt FROM turns")
}

/// The statements `app`'s database has been sent so far, the replica's own work left out.
fn statements(app: &TestApp) -> Vec<String> {
    let database = app.db.url.database_name().to_owned();
    let sent = sent().lock().unwrap();
    sent.get(&database)
        .map(|all| all.iter().filter(|sql| !background(sql)).cloned().collect())
        .unwrap_or_default()
}

/// A short name for a statement of a turn, as the table in BENCHMARKS.md names it.
fn kind(sql: &str) -> &'static str {
    match sql {
        "BEGIN" => "BEGIN",
        "COMMIT" => "COMMIT",
        _ if sql.starts_with("WITH tip AS") && sql.contains("FOR NO KEY UPDATE") => {
            "lock and write user message"
        }
        _ if sql.starts_with("WITH tip AS") => "write user message",
        _ if sql.starts_with("WITH RECURSIVE tip AS") => "write user message at a chosen place",
        _ if sql.starts_with("WITH locked AS") && sql.contains("INSERT INTO tool_calls") => {
            "write reply with calls"
        }
        _ if sql.starts_with("WITH locked AS") => "write reply",
        _ if is_create_conversation(sql) => "create conversation",
        _ if sql.starts_with("WITH RECURSIVE locked AS") => "regenerate",
        _ if sql.starts_with("WITH conversation AS") && sql.contains("budget AS") => {
            "lock conversation and budget"
        }
        _ if sql.starts_with("WITH conversation AS") => "lock conversation",
        _ if sql.starts_with(r#"SELECT "conversations"."revision""#) => "lock conversation",
        _ if sql.starts_with("SELECT t.id, t.conversation_id") => "find turn",
        _ if sql.starts_with("SELECT m.id, m.content, m.status") => "read replies",
        _ if sql.starts_with("UPDATE tool_calls") => "store tool result",
        _ if sql.starts_with("SELECT m.id, m.role, m.content") => "read history",
        _ if sql.starts_with("WITH RECURSIVE path AS") => "read branch",
        _ if sql.starts_with(r#"INSERT INTO "users""#) => "create user",
        _ if sql.starts_with(r#"SELECT "users"."id""#) => "find user",
        _ => "other",
    }
}

/// Runs `turn` and returns the statements it sent, by kind, in order.
async fn statements_of<T, F: std::future::Future<Output = T>>(
    app: &TestApp,
    turn: F,
) -> Vec<&'static str> {
    let before = statements(app).len();
    turn.await;
    let after = statements(app);
    let sent: Vec<&'static str> = after[before..].iter().map(|sql| kind(sql)).collect();
    assert!(
        !sent.contains(&"other"),
        "a statement this test does not know: {:#?}",
        &after[before..]
    );
    sent
}

/// Sends a message and reads its stream to the end: `completed` comes only once the reply is
/// stored. Returns the conversation's id.
async fn turn(app: &TestApp, conversation_id: &str, request_id: &str) -> String {
    let request = app.request(
        "alice",
        SendMessageRequest {
            conversation_id: conversation_id.to_owned(),
            content: "How many statements is this?".to_owned(),
            request_id: request_id.to_owned(),
            ..Default::default()
        },
    );
    let mut stream = app.chat().send_message(request).await.unwrap().into_inner();
    let mut events: Vec<SendMessageResponse> = Vec::new();
    while let Some(event) = stream.message().await.unwrap() {
        events.push(event);
    }
    use send_message_response::Event;
    assert!(
        matches!(
            events.last().and_then(|e| e.event.as_ref()),
            Some(Event::Completed(_))
        ),
        "the turn did not complete: {events:?}"
    );
    match events.first().and_then(|e| e.event.as_ref()) {
        Some(Event::Accepted(accepted)) => accepted.conversation_id.clone(),
        other => panic!("the first event is not `accepted`: {other:?}"),
    }
}

/// The user's message with its turn, in one flight: `BEGIN`, the lock, the write, `COMMIT`.
const FIRST_FLIGHT: [&str; 4] = ["BEGIN", "lock conversation", "write user message", "COMMIT"];

/// The first flight of a turn with a request id: the lock is part of the write, since the model
/// waits for the write's claim of the id anyway.
const KEYED_FIRST_FLIGHT: [&str; 3] = ["BEGIN", "lock and write user message", "COMMIT"];

/// The first flight, then the reply with the turn's end in one statement.
fn plain_turn() -> Vec<&'static str> {
    [FIRST_FLIGHT.as_slice(), &["write reply"]].concat()
}

/// The statements of a second turn in a conversation, with `request_id` (empty: none); the
/// first turn creates the user and the conversation, and opens connections.
async fn second_turn(request_id: &str) -> Vec<&'static str> {
    let _serial = serial().lock().await;
    let app = TestApp::spawn().await;
    let conversation = turn(&app, "", "").await;
    statements_of(&app, turn(&app, &conversation, request_id)).await
}

#[tokio::test]
async fn a_plain_turn_sends_what_the_table_says() {
    let sent = second_turn("").await;
    assert_eq!(sent, plain_turn(), "a plain turn, against BENCHMARKS.md");
}

#[tokio::test]
async fn a_keyed_turn_locks_and_claims_its_request_id_in_its_write() {
    let sent = second_turn("second").await;
    assert_eq!(
        sent,
        [KEYED_FIRST_FLIGHT.as_slice(), &["write reply"]].concat(),
        "a keyed turn, against BENCHMARKS.md"
    );
}

#[tokio::test]
async fn a_retry_of_a_finished_turn_finds_it_in_its_write_then_replays_it() {
    let _serial = serial().lock().await;
    let app = TestApp::spawn().await;
    let conversation = turn(&app, "", "first").await;
    turn(&app, &conversation, "again").await;
    let sent = statements_of(&app, turn(&app, &conversation, "again")).await;
    assert_eq!(
        sent,
        [
            KEYED_FIRST_FLIGHT.as_slice(),
            &["find turn", "read replies"]
        ]
        .concat(),
        "a retry of a finished turn, against BENCHMARKS.md"
    );
}

#[tokio::test]
async fn a_first_turn_creates_its_conversation_in_one_statement() {
    let _serial = serial().lock().await;
    let app = TestApp::spawn().await;
    turn(&app, "", "").await;
    // A second user, now that the connections are open: their first turn is measured.
    let before = statements(&app).len();
    let request = app.request(
        "bob",
        SendMessageRequest {
            content: "Hello".to_owned(),
            ..Default::default()
        },
    );
    let mut stream = app.chat().send_message(request).await.unwrap().into_inner();
    while stream.message().await.unwrap().is_some() {}
    let sent: Vec<&str> = statements(&app)[before..].iter().map(|s| kind(s)).collect();
    assert_eq!(
        sent,
        [
            // Once per user and replica: the user is looked for, and created if new.
            "find user",
            "create user",
            "BEGIN",
            "create conversation",
            "COMMIT",
            "write reply"
        ],
        "a first turn, against BENCHMARKS.md"
    );
}

#[tokio::test]
async fn a_tool_round_stores_the_calls_and_each_result() {
    let _serial = serial().lock().await;
    let tools = FakeToolServer::start().await;
    let fake = FakeLlm::start().await;
    fake.script([
        Script::reply(&["warming up"]),
        Script::tool_calls(&[("call_1", "echo", r#"{"text":"one"}"#)]),
        Script::reply(&["done"]),
    ]);
    let app = TestApp::with_fake_llm(&fake, |config| {
        config.tools.servers = vec![tools.settings("tasks", false)];
    })
    .await;
    app.wait_for_tools(TOOLS).await;
    let conversation = turn(&app, "", "").await;
    let sent = statements_of(&app, turn(&app, &conversation, "")).await;
    assert_eq!(
        sent,
        [
            FIRST_FLIGHT.as_slice(),
            // The round's reply with its calls, in one statement.
            &["write reply with calls", "store tool result", "write reply"],
        ]
        .concat(),
        "a turn with one tool round, against BENCHMARKS.md"
    );
}

#[tokio::test]
async fn a_regeneration_starts_its_turn_and_reads_its_context_in_one_flight() {
    let _serial = serial().lock().await;
    let app = TestApp::spawn().await;
    let conversation = turn(&app, "", "").await;
    turn(&app, &conversation, "").await;
    let shown = app
        .conversations()
        .get_conversation(app.request(
            "alice",
            GetConversationRequest {
                conversation_id: conversation,
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .messages;
    let second = shown[2].id.clone();
    let regenerate = async {
        let request = app.request(
            "alice",
            RegenerateReplyRequest {
                message_id: second,
                request_id: "again".to_owned(),
                ..Default::default()
            },
        );
        let mut stream = app
            .chat()
            .regenerate_reply(request)
            .await
            .unwrap()
            .into_inner();
        while stream.message().await.unwrap().is_some() {}
    };
    let sent = statements_of(&app, regenerate).await;
    assert_eq!(
        sent,
        ["BEGIN", "regenerate", "COMMIT", "write reply"],
        "a regenerated reply, against BENCHMARKS.md"
    );
}

/// An app whose user, alice, is given a budget of her own after her first turn, and that turn's
/// conversation.
async fn given_a_budget_after_a_first_turn() -> (TestApp, String) {
    let app = TestApp::spawn().await;
    let conversation = turn(&app, "", "").await;
    app.db
        .run_sql(
            "INSERT INTO user_budgets (user_id, tokens, period)
             SELECT id, 1000000, 'day' FROM users WHERE subject = 'alice'",
        )
        .await;
    (app, conversation)
}

/// A user given a budget of their own after their first turn: the replica, which sets no default
/// budget, locks their next turn without the budget, finds it, and locks the turn again with it;
/// from then on it locks their turns with the budget, until it finds one that limits nothing.
#[tokio::test]
async fn a_budget_of_ones_own_is_found_once_then_checked_in_the_lock() {
    let _serial = serial().lock().await;
    let (app, conversation) = given_a_budget_after_a_first_turn().await;
    let with_budget = [
        "BEGIN",
        "lock conversation and budget",
        "write user message",
        "COMMIT",
    ];
    let found = statements_of(&app, turn(&app, &conversation, "")).await;
    assert_eq!(
        found,
        [FIRST_FLIGHT.as_slice(), &with_budget, &["write reply"]].concat(),
        "the turn that finds the budget, against BENCHMARKS.md"
    );
    let known = statements_of(&app, turn(&app, &conversation, "")).await;
    assert_eq!(known, [with_budget.as_slice(), &["write reply"]].concat());

    // A budget of her own that limits nothing is no budget without a default: one turn with the
    // budget finds it so, and the next goes back to the plain lock, once.
    app.db
        .run_sql("UPDATE user_budgets SET tokens = NULL")
        .await;
    let unlimited = statements_of(&app, turn(&app, &conversation, "")).await;
    assert_eq!(
        unlimited,
        [with_budget.as_slice(), &["write reply"]].concat()
    );
    for _ in 0..2 {
        let plain = statements_of(&app, turn(&app, &conversation, "")).await;
        assert_eq!(plain, plain_turn());
    }
}

/// The same for a turn with a request id, whose first flight locks the conversation in its write:
/// the write finds the budget, writes nothing, and the turn is locked again with the budget.
#[tokio::test]
async fn a_keyed_turn_that_finds_a_budget_of_ones_own_is_locked_again_with_it() {
    let _serial = serial().lock().await;
    let (app, conversation) = given_a_budget_after_a_first_turn().await;
    let found = statements_of(&app, turn(&app, &conversation, "budgeted")).await;
    assert_eq!(
        found,
        [
            KEYED_FIRST_FLIGHT.as_slice(),
            &[
                "BEGIN",
                "lock conversation and budget",
                "write user message",
                "COMMIT",
                "write reply"
            ]
        ]
        .concat(),
        "a keyed turn that finds the budget, against BENCHMARKS.md"
    );
    assert_eq!(
        app.db
            .count("SELECT count(*) AS n FROM turns WHERE request_key = 'budgeted'")
            .await,
        1
    );
}

/// The types of the parameters of the statement that writes a reply, in order: what the service
/// binds (`bind_reply`).
const REPLY_PARAMETERS: &str = "uuid, uuid, timestamptz, uuid, text, text, text, uuid, int4, int4[], \
     text, jsonb, text, text, int4, int4, int4, int4, bool, int8";

/// Values for [`REPLY_PARAMETERS`]: only planned, never run.
const REPLY_VALUES: &str = "gen_random_uuid(), gen_random_uuid(), now(), gen_random_uuid(), \
     'assistant', 'text', 'complete', gen_random_uuid(), 1, '{4}', 'completed', '{}', \
     'generating', 'model', 1, 0, 1, 0, false, NULL";

/// The plan PostgreSQL keeps for `sql` (a statement with [`REPLY_PARAMETERS`]) once a connection
/// has run it a few times: the generic one.
async fn generic_plan(app: &TestApp, sql: &str) -> String {
    use diesel::{sql_query, sql_types::Text};
    use diesel_async::{RunQueryDsl, SimpleAsyncConnection};
    #[derive(diesel::QueryableByName)]
    struct Plan {
        #[diesel(sql_type = Text)]
        plan: String,
    }
    let mut conn = app.db.connect().await;
    conn.batch_execute(&format!(
        "SET plan_cache_mode = force_generic_plan;
         PREPARE reply ({REPLY_PARAMETERS}) AS {sql};
         CREATE FUNCTION pg_temp.plan_of(statement text) RETURNS text LANGUAGE plpgsql AS $$
         DECLARE line text; plan text := '';
         BEGIN
             FOR line IN EXECUTE statement LOOP plan := plan || line || E'\\n'; END LOOP;
             RETURN plan;
         END $$;"
    ))
    .await
    .unwrap();
    sql_query(format!(
        "SELECT pg_temp.plan_of('EXPLAIN EXECUTE reply ({})') AS plan",
        REPLY_VALUES.replace('\'', "''")
    ))
    .get_result::<Plan>(&mut conn)
    .await
    .unwrap()
    .plan
}

/// A database that has served for a while holds many ended turns, and was last vacuumed at a
/// quiet moment, when no turn was generating: as far as PostgreSQL knows, the index of generating
/// turns is empty. A statement that says which state the turn's row must be in could then be
/// planned to read that whole index to find its one row, and would go on reading it once turns
/// are generating again: every generating turn's entry (and those of turns that ended since) on
/// every reply, 500 of them a turn at 500 users. The turn's own row is found by its key.
#[tokio::test]
async fn a_reply_ends_its_turn_by_its_key_on_a_vacuumed_database() {
    let _serial = serial().lock().await;
    let app = TestApp::spawn().await;
    let conversation = turn(&app, "", "").await;
    let sent = statements_of(&app, turn(&app, &conversation, "")).await;
    assert_eq!(sent, plain_turn());
    let reply = statements(&app)
        .into_iter()
        .rfind(|sql| kind(sql) == "write reply")
        .unwrap();
    app.db
        .run_sql(
            "INSERT INTO turns (id, user_id, conversation_id, state, replica, created_at)
             SELECT gen_random_uuid(), c.user_id, c.id,
                    'completed', gen_random_uuid(), now()
             FROM conversations c, generate_series(1, 5000) n",
        )
        .await;
    app.db.run_sql("VACUUM ANALYZE turns").await;
    let plan = generic_plan(&app, &reply).await;
    assert!(
        plan.contains("Update on turns"),
        "the reply's statement ends its turn:\n{plan}"
    );
    assert!(
        !plan.contains("turns_generating_idx"),
        "the reply's statement reads the index of generating turns:\n{plan}"
    );
}
