use chat_service::api::proto::{
    CreateConversationRequest, DeleteConversationRequest, GetConversationRequest,
    ListConversationsRequest, ListMessagesRequest,
};
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel_async::RunQueryDsl;
use tonic::Code;

use super::support::TestApp;

async fn alice_conversation_with_messages(app: &TestApp) -> String {
    let id = app.create_conversation("alice", "private").await;
    app.db
        .run_sql(&format!(
            "INSERT INTO messages (id, conversation_id, role, content, status, sequence) VALUES
             (gen_random_uuid(), '{id}', 'user', 'secret question', 'complete', 1),
             (gen_random_uuid(), '{id}', 'assistant', 'secret answer', 'complete', 2);
             UPDATE conversations SET revision = 2 WHERE id = '{id}';
             INSERT INTO tool_calls (id, message_id, position, provider_call_id, name, arguments, status)
             SELECT gen_random_uuid(), id, 0, 'call', 'lookup', '{{}}', 'requested'
             FROM messages WHERE role = 'assistant'"
        ))
        .await;
    id
}

#[tokio::test]
async fn another_users_conversation_is_not_found_on_every_rpc_and_nothing_changes() {
    let app = TestApp::spawn().await;
    let id = alice_conversation_with_messages(&app).await;
    // Bob exists too, so that his requests are not his first.
    let request = app.request("bob", ListConversationsRequest::default());
    app.conversations()
        .list_conversations(request)
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));
    let before = app.db.snapshot().await;

    let mut client = app.conversations();
    let missing = uuid::Uuid::now_v7().to_string();
    let mut statuses = Vec::new();
    for conversation_id in [id.clone(), missing] {
        let request = app.request(
            "bob",
            GetConversationRequest {
                conversation_id: conversation_id.clone(),
            },
        );
        statuses.push(client.get_conversation(request).await.err());
        let request = app.request(
            "bob",
            ListMessagesRequest {
                conversation_id: conversation_id.clone(),
                page_size: 0,
                page_token: String::new(),
            },
        );
        statuses.push(client.list_messages(request).await.err());
        let request = app.request("bob", DeleteConversationRequest { conversation_id });
        statuses.push(client.delete_conversation(request).await.err());
    }
    let statuses: Vec<_> = statuses
        .into_iter()
        .map(|status| status.map(|s| (s.code(), s.message().to_owned())))
        .collect();
    // Someone else's conversation and one that does not exist answer exactly alike.
    assert_eq!(statuses[..3], statuses[3..]);
    assert!(
        statuses
            .iter()
            .all(|s| s.as_ref().is_some_and(|(code, _)| *code == Code::NotFound)),
        "{statuses:?}"
    );

    let request = app.request("bob", ListConversationsRequest::default());
    let listed = app
        .conversations()
        .list_conversations(request)
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));
    assert!(listed.into_inner().conversations.is_empty());

    assert_eq!(
        app.db.snapshot().await,
        before,
        "a refused request changed the database"
    );
    let request = app.request(
        "alice",
        GetConversationRequest {
            conversation_id: id,
        },
    );
    let own = app
        .conversations()
        .get_conversation(request)
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(own.into_inner().messages.len(), 2);
}

#[tokio::test]
async fn deleting_a_user_removes_everything_they_own() {
    let app = TestApp::spawn().await;
    alice_conversation_with_messages(&app).await;
    let request = app.request(
        "bob",
        CreateConversationRequest {
            title: "bob's".to_owned(),
        },
    );
    app.conversations()
        .create_conversation(request)
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));

    app.db
        .run_sql("DELETE FROM users WHERE subject = 'alice'")
        .await;

    let db = &app.db;
    assert_eq!(
        db.count("SELECT count(*) AS n FROM conversations").await,
        1,
        "only bob's conversation is left"
    );
    assert_eq!(db.count("SELECT count(*) AS n FROM messages").await, 0);
    assert_eq!(db.count("SELECT count(*) AS n FROM tool_calls").await, 0);
}

#[tokio::test]
async fn the_database_refuses_a_message_for_a_missing_conversation() {
    let app = TestApp::spawn().await;
    let mut conn = app.db.connect().await;
    let result = diesel::sql_query(format!(
        "INSERT INTO messages (id, conversation_id, role, content, status, sequence)
         VALUES (gen_random_uuid(), '{}', 'user', 'orphan', 'complete', 1)",
        uuid::Uuid::now_v7()
    ))
    .execute(&mut conn)
    .await;
    assert!(
        matches!(
            result,
            Err(DieselError::DatabaseError(
                DatabaseErrorKind::ForeignKeyViolation,
                _
            ))
        ),
        "{result:?}"
    );
    assert_eq!(app.db.count("SELECT count(*) AS n FROM messages").await, 0);
}

#[tokio::test]
async fn the_database_refuses_an_unknown_role() {
    let app = TestApp::spawn().await;
    let id = alice_conversation_with_messages(&app).await;
    let mut conn = app.db.connect().await;
    let result = diesel::sql_query(format!(
        "INSERT INTO messages (id, conversation_id, role, content, status, sequence)
         VALUES (gen_random_uuid(), '{id}', 'narrator', 'hello', 'complete', 3)"
    ))
    .execute(&mut conn)
    .await;
    assert!(
        matches!(
            result,
            Err(DieselError::DatabaseError(
                DatabaseErrorKind::CheckViolation,
                _
            ))
        ),
        "{result:?}"
    );
}
