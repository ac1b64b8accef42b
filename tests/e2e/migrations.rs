//! The migrations that give messages their sequence, run on a database as the previous release
//! left it: the messages already stored keep the order they were listed in, a write of the
//! previous release during a rolling update is numbered like the service's own, and the
//! service then works on the result.

use chat_service::{
    api::proto::{GetConversationRequest, ListMessagesRequest, SearchConversationsRequest},
    store::{SearchConfig, run_migrations},
};
use diesel::{QueryableByName, sql_query, sql_types::BigInt};
use diesel_async::RunQueryDsl;

use super::{
    send_message::send_ok,
    support::{FakeLlm, TestApp, TestDatabase},
};

/// What diesel records of the migrations it ran, as it creates it.
const MIGRATIONS_TABLE: &str = "CREATE TABLE __diesel_schema_migrations (
    version VARCHAR(50) PRIMARY KEY NOT NULL,
    run_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP)";

/// The previous release's schema, and the first migration of this one, which only changes the
/// catalog and can run while the previous release still writes.
const APPLIED_BY_HAND: [(&str, &str); 3] = [
    (
        "20261123000001",
        include_str!("../../migrations/2026-11-23-000001_create_chat_schema/up.sql"),
    ),
    (
        "20261123000002",
        include_str!("../../migrations/2026-11-23-000002_conversation_revision/up.sql"),
    ),
    (
        "20261126000003",
        include_str!("../../migrations/2026-11-26-000003_message_sequence/up.sql"),
    ),
];

/// Messages stored before conversations had revisions: its revision is 0.
const BEFORE_REVISIONS: &str = "01900000-0000-7000-8000-0000000000c1";
/// Messages stored since: its revision counts them.
const COUNTED: &str = "01900000-0000-7000-8000-0000000000c2";
/// Some of each.
const MIXED: &str = "01900000-0000-7000-8000-0000000000c3";

/// Data as the previous release wrote it. Times tie and ids disagree with times here and there:
/// the order the previous release listed was (time, id).
const PREVIOUS_DATA: &str = "
    INSERT INTO users (id, subject) VALUES ('01900000-0000-7000-8000-00000000a11c', 'alice');
    INSERT INTO conversations (id, user_id, title, revision) VALUES
        ('01900000-0000-7000-8000-0000000000c1', '01900000-0000-7000-8000-00000000a11c', 'old', 0),
        ('01900000-0000-7000-8000-0000000000c2', '01900000-0000-7000-8000-00000000a11c', 'counted', 3),
        ('01900000-0000-7000-8000-0000000000c3', '01900000-0000-7000-8000-00000000a11c', 'mixed', 2);
    INSERT INTO messages (id, conversation_id, role, content, status, created_at) VALUES
        ('01900000-0000-7000-8000-000000000019', '01900000-0000-7000-8000-0000000000c1', 'user', 'old 1', 'complete', '2026-01-01 00:00:01+00'),
        ('01900000-0000-7000-8000-000000000011', '01900000-0000-7000-8000-0000000000c1', 'assistant', 'old 2', 'complete', '2026-01-01 00:00:02+00'),
        ('01900000-0000-7000-8000-000000000013', '01900000-0000-7000-8000-0000000000c1', 'user', 'old 4', 'complete', '2026-01-01 00:00:03+00'),
        ('01900000-0000-7000-8000-000000000012', '01900000-0000-7000-8000-0000000000c1', 'user', 'old 3', 'complete', '2026-01-01 00:00:03+00'),
        ('01900000-0000-7000-8000-000000000021', '01900000-0000-7000-8000-0000000000c2', 'user', 'counted 1', 'complete', '2026-01-02 00:00:01+00'),
        ('01900000-0000-7000-8000-000000000022', '01900000-0000-7000-8000-0000000000c2', 'assistant', 'counted 2', 'complete', '2026-01-02 00:00:02+00'),
        ('01900000-0000-7000-8000-000000000023', '01900000-0000-7000-8000-0000000000c2', 'user', 'counted 3', 'complete', '2026-01-02 00:00:03+00'),
        ('01900000-0000-7000-8000-000000000035', '01900000-0000-7000-8000-0000000000c3', 'user', 'mixed 1', 'complete', '2026-01-03 00:00:01+00'),
        ('01900000-0000-7000-8000-000000000034', '01900000-0000-7000-8000-0000000000c3', 'assistant', 'mixed 2', 'complete', '2026-01-03 00:00:02+00'),
        ('01900000-0000-7000-8000-000000000033', '01900000-0000-7000-8000-0000000000c3', 'user', 'mixed 3', 'complete', '2026-01-03 00:00:03+00'),
        ('01900000-0000-7000-8000-000000000032', '01900000-0000-7000-8000-0000000000c3', 'assistant', 'mixed 4', 'complete', '2026-01-03 00:00:04+00'),
        ('01900000-0000-7000-8000-000000000031', '01900000-0000-7000-8000-0000000000c3', 'user', 'mixed 5', 'complete', '2026-01-03 00:00:05+00');";

/// The previous release's statement for adding a message, which writes no sequence: a replica
/// of that release still running while this one's migrations run.
const PREVIOUS_APPEND: &str = "WITH touched AS (
         UPDATE conversations
         SET updated_at = GREATEST(updated_at, now()), revision = revision + 1
         WHERE id = '01900000-0000-7000-8000-0000000000c2'
         RETURNING id, revision
     ), inserted AS (
         INSERT INTO messages (id, conversation_id, role, content, status, created_at)
         SELECT '01900000-0000-7000-8000-000000000024', id, 'assistant', 'counted 4',
                'complete', '2026-01-02 00:00:04+00'
         FROM touched
     )
     SELECT revision FROM touched";

#[derive(QueryableByName, Debug, PartialEq)]
struct Numbers {
    #[diesel(sql_type = BigInt)]
    revision: i64,
    #[diesel(sql_type = BigInt)]
    newest: i64,
}

#[tokio::test]
async fn existing_messages_are_numbered_in_the_order_they_were_listed() {
    let db = TestDatabase::empty().await;
    db.run_sql(MIGRATIONS_TABLE).await;
    for (version, up) in APPLIED_BY_HAND {
        db.run_sql(up).await;
        db.run_sql(&format!(
            "INSERT INTO __diesel_schema_migrations (version) VALUES ('{version}')"
        ))
        .await;
        if version == "20261123000002" {
            db.run_sql(PREVIOUS_DATA).await;
        }
    }
    db.run_sql(PREVIOUS_APPEND).await;

    let applied = run_migrations(&db.url, &SearchConfig::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        applied,
        [
            "20261126000004",
            "20261126000005",
            "20261126000006",
            "20261126000007",
            "20261126000008",
            "20261126000009",
            "20261127000010",
            "20261127000011",
            "20261206000012",
            "20261206000013",
            "20261206000014",
            "20261206000015",
            "20261206000016",
            "20261207000017",
            "20261207000018",
            "20261207000019",
            "20261207000020",
            "20261207000021",
            "20261207000022",
            "20261207000023",
            "20261207000024",
            "20261207000025"
        ]
    );

    let contents = |conversation: &'static str| {
        let db = &db;
        async move {
            db.messages(conversation)
                .await
                .into_iter()
                .map(|m| m.content)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        contents(BEFORE_REVISIONS).await,
        ["old 1", "old 2", "old 3", "old 4"]
    );
    assert_eq!(
        contents(COUNTED).await,
        ["counted 1", "counted 2", "counted 3", "counted 4"]
    );
    assert_eq!(
        contents(MIXED).await,
        ["mixed 1", "mixed 2", "mixed 3", "mixed 4", "mixed 5"]
    );
    // The newest message of each conversation is at the conversation's revision, as every
    // message written from now on will be.
    let mut conn = db.connect().await;
    for conversation in [BEFORE_REVISIONS, COUNTED, MIXED] {
        let numbers = sql_query(format!(
            "SELECT c.revision, max(m.sequence) AS newest
             FROM conversations c JOIN messages m ON m.conversation_id = c.id
             WHERE c.id = '{conversation}' GROUP BY c.revision"
        ))
        .get_result::<Numbers>(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(numbers.newest, numbers.revision, "{conversation}");
    }
    assert_eq!(
        db.count(
            "SELECT count(*) AS n FROM pg_indexes
             WHERE indexname = 'messages_conversation_chronological_idx'"
        )
        .await,
        0
    );

    // The service takes it from there: a turn sees the old messages in order, and paging
    // lists them.
    let fake = FakeLlm::start().await;
    let url = db.url.clone();
    let app = TestApp::with_fake_llm(&fake, move |config| config.database.url = url).await;
    let turn = send_ok(&app, "alice", BEFORE_REVISIONS, "old 5").await;
    assert!(turn.error.is_none(), "{:?}", turn.error);
    let sent: Vec<String> = fake.received()[0]
        .messages()
        .into_iter()
        .map(|(_, content)| content)
        .collect();
    assert_eq!(sent, ["old 1", "old 2", "old 3", "old 4", "old 5"]);

    let mut listed = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = app
            .conversations()
            .list_messages(app.request(
                "alice",
                ListMessagesRequest {
                    conversation_id: MIXED.to_owned(),
                    page_size: 2,
                    page_token,
                },
            ))
            .await
            .unwrap_or_else(|e| panic!("{e:?}"))
            .into_inner();
        listed.extend(page.messages.into_iter().map(|m| m.content));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(
        listed,
        ["mixed 1", "mixed 2", "mixed 3", "mixed 4", "mixed 5"]
    );
    let newest = app
        .conversations()
        .get_conversation(app.request(
            "alice",
            GetConversationRequest {
                conversation_id: COUNTED.to_owned(),
            },
        ))
        .await
        .unwrap_or_else(|e| panic!("{e:?}"))
        .into_inner();
    assert_eq!(
        newest.messages.last().map(|m| m.content.as_str()),
        Some("counted 4")
    );
}

/// Every migration before search, and the first of search's, which only changes the catalog
/// and can run while the previous release still writes.
const BEFORE_SEARCH: [(&str, &str); 12] = [
    APPLIED_BY_HAND[0],
    APPLIED_BY_HAND[1],
    APPLIED_BY_HAND[2],
    (
        "20261126000004",
        include_str!("../../migrations/2026-11-26-000004_number_existing_messages/up.sql"),
    ),
    (
        "20261126000005",
        include_str!("../../migrations/2026-11-26-000005_message_sequence_index/up.sql"),
    ),
    (
        "20261126000006",
        include_str!("../../migrations/2026-11-26-000006_require_message_sequence/up.sql"),
    ),
    (
        "20261126000007",
        include_str!("../../migrations/2026-11-26-000007_drop_chronological_index/up.sql"),
    ),
    (
        "20261126000008",
        include_str!("../../migrations/2026-11-26-000008_await_client_tool_results/up.sql"),
    ),
    (
        "20261126000009",
        include_str!("../../migrations/2026-11-26-000009_validate_message_status/up.sql"),
    ),
    (
        "20261127000010",
        include_str!("../../migrations/2026-11-27-000010_durable_turns/up.sql"),
    ),
    (
        "20261127000011",
        include_str!("../../migrations/2026-11-27-000011_validate_interrupted_status/up.sql"),
    ),
    (
        "20261206000012",
        include_str!("../../migrations/2026-12-06-000012_message_search_vector/up.sql"),
    ),
];

/// Alice's conversation as the previous release left it: one message naming Lisbon, and 12,000
/// more, so that filling in their words takes more than one batch.
const BEFORE_SEARCH_DATA: &str = "
    INSERT INTO users (id, subject) VALUES ('01900000-0000-7000-8000-00000000a11c', 'alice');
    INSERT INTO conversations (id, user_id, title, revision) VALUES
        ('01900000-0000-7000-8000-0000000000c1', '01900000-0000-7000-8000-00000000a11c', 'old', 12001),
        ('01900000-0000-7000-8000-0000000000c4', '01900000-0000-7000-8000-00000000a11c', 'Named, empty', 0),
        ('01900000-0000-7000-8000-0000000000c5', '01900000-0000-7000-8000-00000000a11c', '', 0);
    INSERT INTO messages (id, conversation_id, role, content, status, created_at, sequence) VALUES
        ('01900000-0000-7000-8000-000000000011', '01900000-0000-7000-8000-0000000000c1', 'user',
         'An old question about the trams of Lisbon', 'complete', '2026-01-01 00:00:01+00', 1);
    INSERT INTO messages (id, conversation_id, role, content, status, created_at, sequence)
    SELECT gen_random_uuid(), '01900000-0000-7000-8000-0000000000c1', 'assistant',
           'filler ' || g, 'complete', '2026-01-01 00:00:02+00', g + 1
    FROM generate_series(1, 12000) g;";

/// The previous release adding a reply while this one's migrations run: it names no search
/// configuration, and writes no words of its own.
const PREVIOUS_REPLY: &str = "WITH touched AS (
         UPDATE conversations SET revision = revision + 1
         WHERE id = '01900000-0000-7000-8000-0000000000c1'
         RETURNING id, revision
     )
     INSERT INTO messages (id, conversation_id, role, content, status, created_at, sequence)
     SELECT '01900000-0000-7000-8000-000000000012', id, 'assistant',
            'Tram 28 crosses the Alfama', 'complete', now(), revision
     FROM touched";

#[tokio::test]
async fn messages_stored_before_search_are_found_once_migrated() {
    let db = TestDatabase::empty().await;
    db.run_sql(MIGRATIONS_TABLE).await;
    for (version, up) in BEFORE_SEARCH {
        if version == "20261206000012" {
            db.run_sql(BEFORE_SEARCH_DATA).await;
        }
        db.run_sql(up).await;
        db.run_sql(&format!(
            "INSERT INTO __diesel_schema_migrations (version) VALUES ('{version}')"
        ))
        .await;
    }
    db.run_sql(PREVIOUS_REPLY).await;
    let without_words = "SELECT count(*) AS n FROM messages WHERE search_vector IS NULL";
    assert_eq!(db.count(without_words).await, 12_001);

    let applied = run_migrations(&db.url, &SearchConfig::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        applied,
        [
            "20261206000013",
            "20261206000014",
            "20261206000015",
            "20261206000016",
            "20261207000017",
            "20261207000018",
            "20261207000019",
            "20261207000020",
            "20261207000021",
            "20261207000022",
            "20261207000023",
            "20261207000024",
            "20261207000025"
        ]
    );
    assert_eq!(db.count(without_words).await, 0);
    // The previous release still writes while it is replaced; its messages get their words.
    db.run_sql(
        &PREVIOUS_REPLY
            .replace("000000000012", "000000000013")
            .replace("Tram 28 crosses the Alfama", "The miradouro above Graça"),
    )
    .await;
    assert_eq!(db.count(without_words).await, 0);
    // The title the client gave a conversation that has no message yet stays the client's; a
    // conversation named after its first message, or not named yet, may be named by the model.
    assert_eq!(
        db.count(
            "SELECT count(*) AS n FROM conversations
             WHERE (id = '01900000-0000-7000-8000-0000000000c4' AND title_source = 'client')
                OR (id IN ('01900000-0000-7000-8000-0000000000c1',
                           '01900000-0000-7000-8000-0000000000c5') AND title_source = 'derived')"
        )
        .await,
        3
    );
    assert_eq!(
        db.count(
            "SELECT count(*) AS n FROM pg_index
             WHERE indexrelid = 'messages_search_idx'::regclass AND indisvalid"
        )
        .await,
        1
    );

    let fake = FakeLlm::start().await;
    let url = db.url.clone();
    let app = TestApp::with_fake_llm(&fake, move |config| config.database.url = url).await;
    for (query, message) in [
        ("lisbon", "01900000-0000-7000-8000-000000000011"),
        ("alfama", "01900000-0000-7000-8000-000000000012"),
        ("miradouro", "01900000-0000-7000-8000-000000000013"),
    ] {
        let found = app
            .conversations()
            .search_conversations(app.request(
                "alice",
                SearchConversationsRequest {
                    query: query.to_owned(),
                    ..Default::default()
                },
            ))
            .await
            .unwrap_or_else(|e| panic!("{e:?}"))
            .into_inner()
            .matches;
        let found: Vec<&str> = found.iter().map(|m| m.message_id.as_str()).collect();
        assert_eq!(found, [message], "{query}");
    }
}
