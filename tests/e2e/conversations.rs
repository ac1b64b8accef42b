use std::collections::HashSet;

use chat_service::api::proto::{
    Conversation, CreateConversationRequest, DeleteConversationRequest, GetConversationRequest,
    ListConversationsRequest, ListMessagesRequest, MessageStatus, Role, UpdateConversationRequest,
};
use prost_types::FieldMask;
use tonic::{Code, Status};

use super::{
    assert_bad_field,
    send_message::send_ok,
    support::{TestApp, app::without_user_limits},
};

async fn list_page(
    app: &TestApp,
    user: &str,
    page_size: i32,
    page_token: &str,
) -> (Vec<String>, String) {
    let request = app.request(
        user,
        ListConversationsRequest {
            page_size,
            page_token: page_token.to_owned(),
        },
    );
    let page = app
        .conversations()
        .list_conversations(request)
        .await
        .unwrap_or_else(|e| panic!("{e:?}"))
        .into_inner();
    (
        page.conversations.into_iter().map(|c| c.id).collect(),
        page.next_page_token,
    )
}

#[tokio::test]
async fn a_new_user_has_no_conversations() {
    let app = TestApp::spawn().await;
    let (ids, next) = list_page(&app, "alice", 0, "").await;
    assert!(ids.is_empty());
    assert_eq!(next, "");
    // The user was created on first use.
    assert_eq!(
        app.db
            .count("SELECT count(*) AS n FROM users WHERE subject = 'alice'")
            .await,
        1
    );
}

#[tokio::test]
async fn create_stores_the_conversation_with_its_title() {
    let app = TestApp::spawn().await;
    let request = app.request(
        "alice",
        CreateConversationRequest {
            title: "  Trip planning ".to_owned(),
        },
    );
    let conversation = app
        .conversations()
        .create_conversation(request)
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));
    let conversation = conversation.into_inner().conversation.unwrap_or_default();
    assert_eq!(conversation.title, "Trip planning");
    assert_eq!(conversation.create_time, conversation.update_time);
    assert!(conversation.create_time.is_some());
    let stored = app
        .db
        .count(&format!(
            "SELECT count(*) AS n FROM conversations c JOIN users u ON u.id = c.user_id
             WHERE c.id = '{}' AND c.title = 'Trip planning' AND u.subject = 'alice'",
            conversation.id
        ))
        .await;
    assert_eq!(stored, 1);
}

#[tokio::test]
async fn an_invalid_title_is_refused_and_nothing_is_stored() {
    let app = TestApp::spawn().await;
    let request = app.request(
        "alice",
        CreateConversationRequest {
            title: "x".repeat(201),
        },
    );
    let status = app
        .conversations()
        .create_conversation(request)
        .await
        .expect_err("accepted");
    assert_bad_field(&status, "title");
    assert_eq!(
        app.db
            .count("SELECT count(*) AS n FROM conversations")
            .await,
        0
    );
}

#[tokio::test]
async fn conversations_are_listed_most_recently_updated_first() {
    let app = TestApp::spawn().await;
    let first = app.create_conversation("alice", "first").await;
    let second = app.create_conversation("alice", "second").await;
    let third = app.create_conversation("alice", "third").await;
    assert_eq!(
        list_page(&app, "alice", 0, "").await.0,
        vec![third.clone(), second.clone(), first.clone()]
    );

    // The oldest one gets a new message: it moves to the top.
    app.db
        .run_sql(&format!(
            "UPDATE conversations SET updated_at = now() + interval '1 minute' WHERE id = '{first}'"
        ))
        .await;
    assert_eq!(
        list_page(&app, "alice", 0, "").await.0,
        vec![first.clone(), third.clone(), second.clone()]
    );

    // Equal update times are ordered by id, newest id first, every time.
    app.db
        .run_sql("UPDATE conversations SET updated_at = timestamptz '2026-01-01 00:00:00+00'")
        .await;
    let expected = vec![third, second, first];
    assert_eq!(list_page(&app, "alice", 0, "").await.0, expected);
    assert_eq!(list_page(&app, "alice", 2, "").await.0, expected[..2]);
}

#[tokio::test]
async fn paging_45_conversations_by_20_gives_20_20_5_without_duplicates_or_gaps() {
    let app = TestApp::spawn_with(without_user_limits).await;
    let mut created = Vec::new();
    for i in 0..45 {
        created.push(
            app.create_conversation("alice", &format!("conversation {i}"))
                .await,
        );
    }
    // Some share an update time, so that ties are crossed by page boundaries.
    app.db
        .run_sql("UPDATE conversations SET updated_at = date_trunc('minute', updated_at)")
        .await;

    let mut seen = Vec::new();
    let mut sizes = Vec::new();
    let mut token = String::new();
    loop {
        let (ids, next) = list_page(&app, "alice", 20, &token).await;
        sizes.push(ids.len());
        seen.extend(ids);
        if next.is_empty() {
            break;
        }
        token = next;
    }
    assert_eq!(sizes, vec![20, 20, 5]);
    assert_eq!(seen.iter().collect::<HashSet<_>>().len(), 45, "duplicates");
    assert_eq!(
        seen.iter().collect::<HashSet<_>>(),
        created.iter().collect::<HashSet<_>>(),
        "gaps"
    );
}

#[tokio::test]
async fn page_size_is_defaulted_capped_and_never_negative() {
    let app = TestApp::spawn().await;
    list_page(&app, "alice", 0, "").await;
    app.db
        .run_sql(
            "INSERT INTO conversations (id, user_id, title, created_at, updated_at)
             SELECT gen_random_uuid(), u.id, 'c' || g, now(), now() - g * interval '1 second'
             FROM users u, generate_series(1, 105) g WHERE u.subject = 'alice'",
        )
        .await;

    let (ids, next) = list_page(&app, "alice", 0, "").await;
    assert_eq!(ids.len(), 20);
    assert!(!next.is_empty());
    let (ids, next) = list_page(&app, "alice", 1000, "").await;
    assert_eq!(ids.len(), 100);
    let (rest, last) = list_page(&app, "alice", 1000, &next).await;
    assert_eq!(rest.len(), 5);
    assert_eq!(last, "");

    let request = app.request(
        "alice",
        ListConversationsRequest {
            page_size: -1,
            page_token: String::new(),
        },
    );
    let status = app
        .conversations()
        .list_conversations(request)
        .await
        .expect_err("accepted");
    assert_bad_field(&status, "page_size");
}

#[tokio::test]
async fn forged_or_foreign_page_tokens_are_refused() {
    let app = TestApp::spawn().await;
    for i in 0..3 {
        app.create_conversation("alice", &format!("c{i}")).await;
        app.create_conversation("bob", &format!("c{i}")).await;
    }
    let (_, alice_token) = list_page(&app, "alice", 1, "").await;
    assert!(!alice_token.is_empty());

    let mut altered = alice_token.clone().into_bytes();
    let last = altered.len() - 2;
    altered[last] = if altered[last] == b'A' { b'B' } else { b'A' };
    let altered = String::from_utf8(altered).unwrap_or_default();
    let offset_like = "MjA".to_owned();

    for (user, token) in [
        ("alice", altered),
        ("alice", "garbage!".to_owned()),
        ("alice", offset_like),
        ("bob", alice_token.clone()),
    ] {
        let request = app.request(
            user,
            ListConversationsRequest {
                page_size: 1,
                page_token: token.clone(),
            },
        );
        let status = app
            .conversations()
            .list_conversations(request)
            .await
            .err()
            .unwrap_or_else(|| panic!("{token} accepted"));
        assert_bad_field(&status, "page_token");
    }

    // A token from one listing is not valid in another.
    let conversation = app.create_conversation("alice", "with messages").await;
    let request = app.request(
        "alice",
        ListMessagesRequest {
            conversation_id: conversation,
            page_size: 1,
            page_token: alice_token,
        },
    );
    let status = app
        .conversations()
        .list_messages(request)
        .await
        .expect_err("accepted");
    assert_bad_field(&status, "page_token");
}

#[tokio::test]
async fn get_conversation_returns_all_messages_in_the_conversations_order() {
    let app = TestApp::spawn().await;
    let conversation = app.create_conversation("alice", "history").await;
    // Inserted in reverse, with times and ids that disagree with the sequence: the order must
    // come from the sequence alone.
    app.db
        .run_sql(&format!(
            "INSERT INTO messages (id, conversation_id, role, content, status, created_at, sequence) VALUES
             ('00000000-0000-7000-8000-000000000001', '{conversation}', 'assistant', 'third', 'cancelled', '2026-01-01 00:00:01+00', 3),
             ('00000000-0000-7000-8000-000000000002', '{conversation}', 'user', 'second', 'complete', '2026-01-01 00:00:02+00', 2),
             ('00000000-0000-7000-8000-000000000003', '{conversation}', 'system', 'first', 'complete', '2026-01-01 00:00:03+00', 1);
             UPDATE conversations SET revision = 3 WHERE id = '{conversation}';
             INSERT INTO tool_calls (id, message_id, position, provider_call_id, name, arguments, status) VALUES
             (gen_random_uuid(), '00000000-0000-7000-8000-000000000001', 1, 'call_b', 'get_time', '{{}}', 'requested'),
             (gen_random_uuid(), '00000000-0000-7000-8000-000000000001', 0, 'call_a', 'get_weather', '{{\"city\":\"Lisbon\"}}', 'requested');"
        ))
        .await;

    let request = app.request(
        "alice",
        GetConversationRequest {
            conversation_id: conversation.clone(),
        },
    );
    let response = app
        .conversations()
        .get_conversation(request)
        .await
        .unwrap_or_else(|e| panic!("{e:?}"))
        .into_inner();
    assert_eq!(
        response.conversation.map(|c| c.id),
        Some(conversation.clone())
    );
    let contents: Vec<_> = response
        .messages
        .iter()
        .map(|m| m.content.as_str())
        .collect();
    assert_eq!(contents, ["first", "second", "third"]);
    let roles: Vec<_> = response.messages.iter().map(|m| m.role()).collect();
    assert_eq!(roles, [Role::System, Role::User, Role::Assistant]);
    assert_eq!(response.messages[2].status(), MessageStatus::Cancelled);
    assert!(
        response
            .messages
            .iter()
            .all(|m| m.conversation_id == conversation)
    );

    let calls: Vec<_> = response.messages[2]
        .tool_calls
        .iter()
        .map(|c| (c.id.as_str(), c.name.as_str()))
        .collect();
    assert_eq!(calls, [("call_a", "get_weather"), ("call_b", "get_time")]);
    let arguments: serde_json::Value =
        serde_json::from_str(&response.messages[2].tool_calls[0].arguments_json)
            .unwrap_or_default();
    assert_eq!(arguments, serde_json::json!({"city": "Lisbon"}));
}

#[tokio::test]
async fn list_messages_pages_through_a_long_history_in_order() {
    let app = TestApp::spawn().await;
    let conversation = app.create_conversation("alice", "long").await;
    app.db.seed_messages(&conversation, 45).await;

    let mut contents = Vec::new();
    let mut sizes = Vec::new();
    let mut token = String::new();
    loop {
        let request = app.request(
            "alice",
            ListMessagesRequest {
                conversation_id: conversation.clone(),
                page_size: 20,
                page_token: token,
            },
        );
        let page = app
            .conversations()
            .list_messages(request)
            .await
            .unwrap_or_else(|e| panic!("{e:?}"))
            .into_inner();
        sizes.push(page.messages.len());
        contents.extend(page.messages.into_iter().map(|m| m.content));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(sizes, vec![20, 20, 5]);
    let expected: Vec<_> = (1..=45).map(|i| format!("message {i}")).collect();
    assert_eq!(contents, expected);
}

/// One page of the conversation's messages, read as `alice`.
async fn messages_page(
    app: &TestApp,
    conversation: &str,
    page_size: i32,
    page_token: String,
) -> chat_service::api::proto::ListMessagesResponse {
    let request = app.request(
        "alice",
        ListMessagesRequest {
            conversation_id: conversation.to_owned(),
            page_size,
            page_token,
        },
    );
    app.conversations()
        .list_messages(request)
        .await
        .unwrap_or_else(|e| panic!("{e:?}"))
        .into_inner()
}

/// A client pages through a conversation while turns add to it, in interleavings drawn from a
/// few seeds: the pages give every message that was there when the last page was read, once
/// each, in order.
#[tokio::test]
async fn pages_read_while_turns_are_written_give_every_message_once_in_order() {
    let app = TestApp::spawn_with(without_user_limits).await;
    for seed in [1_u64, 7, 42, 1_000, 65_537, 4_294_967_311] {
        let conversation = app.create_conversation("alice", "growing").await;
        // A linear congruential generator: the plan depends on the seed alone.
        let mut state = seed;
        let mut draw = |below: u64| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (state >> 33) % below
        };
        send_ok(&app, "alice", &conversation, "first").await;
        let mut written = 2;
        let (mut seen, mut token, mut ended_at) = (Vec::new(), String::new(), None);
        let mut plan = Vec::new();
        while ended_at.is_none() && plan.len() < 16 {
            if draw(2) == 0 {
                let turns = 1 + draw(3);
                plan.push(format!("write {turns}"));
                for _ in 0..turns {
                    send_ok(&app, "alice", &conversation, "more").await;
                    written += 2;
                }
            } else {
                let size = i32::try_from(1 + draw(5)).unwrap();
                plan.push(format!("read {size}"));
                let page = messages_page(&app, &conversation, size, token).await;
                seen.extend(page.messages.into_iter().map(|m| m.id));
                token = page.next_page_token;
                if token.is_empty() {
                    ended_at = Some(written);
                }
            }
        }
        // What the plan left unread is read now, with no more writes.
        while ended_at.is_none() {
            let page = messages_page(&app, &conversation, 3, token).await;
            seen.extend(page.messages.into_iter().map(|m| m.id));
            token = page.next_page_token;
            if token.is_empty() {
                ended_at = Some(written);
            }
        }
        let stored: Vec<String> = app
            .db
            .messages(&conversation)
            .await
            .into_iter()
            .map(|m| m.id)
            .collect();
        assert_eq!(stored.len(), written, "seed {seed}, plan {plan:?}");
        let expected = &stored[..ended_at.unwrap_or(written)];
        assert_eq!(seen, expected, "seed {seed}, plan {plan:?}");
    }
}

#[tokio::test]
async fn delete_removes_the_conversation_its_messages_and_their_tool_calls() {
    let app = TestApp::spawn().await;
    let doomed = app.create_conversation("alice", "doomed").await;
    let kept = app.create_conversation("alice", "kept").await;
    for conversation in [&doomed, &kept] {
        app.db.seed_messages(conversation, 4).await;
        app.db
            .run_sql(&format!(
                "INSERT INTO tool_calls (id, message_id, position, provider_call_id, name, arguments, status)
                 SELECT gen_random_uuid(), id, 0, 'call', 'search', '{{}}', 'requested'
                 FROM messages WHERE conversation_id = '{conversation}' AND role = 'assistant'"
            ))
            .await;
    }

    let request = app.request(
        "alice",
        DeleteConversationRequest {
            conversation_id: doomed.clone(),
        },
    );
    app.conversations()
        .delete_conversation(request)
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));

    let db = &app.db;
    assert_eq!(
        db.count(&format!(
            "SELECT count(*) AS n FROM conversations WHERE id = '{doomed}'"
        ))
        .await,
        0
    );
    assert_eq!(
        db.count(&format!(
            "SELECT count(*) AS n FROM messages WHERE conversation_id = '{doomed}'"
        ))
        .await,
        0
    );
    assert_eq!(
        db.count("SELECT count(*) AS n FROM tool_calls").await,
        2,
        "only the kept conversation's tool calls remain"
    );
    assert_eq!(
        db.count(&format!(
            "SELECT count(*) AS n FROM messages WHERE conversation_id = '{kept}'"
        ))
        .await,
        4
    );

    let request = app.request(
        "alice",
        GetConversationRequest {
            conversation_id: doomed.clone(),
        },
    );
    let status = app
        .conversations()
        .get_conversation(request)
        .await
        .expect_err("still there");
    assert_eq!(status.code(), Code::NotFound);
    let request = app.request(
        "alice",
        DeleteConversationRequest {
            conversation_id: doomed,
        },
    );
    let status = app
        .conversations()
        .delete_conversation(request)
        .await
        .expect_err("deleted twice");
    assert_eq!(status.code(), Code::NotFound);
}

#[tokio::test]
async fn malformed_ids_are_invalid_arguments() {
    let app = TestApp::spawn().await;
    let mut client = app.conversations();
    for id in ["", "42", "not-a-uuid", "0190f1c27b3a7d4e8f001234567890ab"] {
        let request = app.request(
            "alice",
            GetConversationRequest {
                conversation_id: id.to_owned(),
            },
        );
        assert_bad_field(
            &client.get_conversation(request).await.expect_err(id),
            "conversation_id",
        );
        let request = app.request(
            "alice",
            ListMessagesRequest {
                conversation_id: id.to_owned(),
                page_size: 0,
                page_token: String::new(),
            },
        );
        assert_bad_field(
            &client.list_messages(request).await.expect_err(id),
            "conversation_id",
        );
        let request = app.request(
            "alice",
            DeleteConversationRequest {
                conversation_id: id.to_owned(),
            },
        );
        let status = client.delete_conversation(request).await.expect_err(id);
        assert_bad_field(&status, "conversation_id");
    }
}

#[tokio::test]
async fn unknown_ids_are_not_found() {
    let app = TestApp::spawn().await;
    let missing = uuid::Uuid::now_v7().to_string();
    let request = app.request(
        "alice",
        GetConversationRequest {
            conversation_id: missing.clone(),
        },
    );
    let status = app
        .conversations()
        .get_conversation(request)
        .await
        .expect_err("found");
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(status.message(), "conversation not found");
    let request = app.request(
        "alice",
        ListMessagesRequest {
            conversation_id: missing,
            page_size: 0,
            page_token: String::new(),
        },
    );
    let status = app
        .conversations()
        .list_messages(request)
        .await
        .expect_err("found");
    assert_eq!(status.code(), Code::NotFound);
}

/// Asks to update `user`'s conversation `id` to `title`, with `mask` as the update mask (`None`:
/// no mask at all).
async fn update(
    app: &TestApp,
    user: &str,
    id: &str,
    title: &str,
    mask: Option<&[&str]>,
) -> Result<Conversation, Status> {
    let request = app.request(
        user,
        UpdateConversationRequest {
            conversation: Some(Conversation {
                id: id.to_owned(),
                title: title.to_owned(),
                ..Default::default()
            }),
            update_mask: mask.map(|paths| FieldMask {
                paths: paths.iter().map(|&p| p.to_owned()).collect(),
            }),
        },
    );
    Ok(app
        .conversations()
        .update_conversation(request)
        .await?
        .into_inner()
        .conversation
        .unwrap_or_default())
}

#[tokio::test]
async fn update_renames_for_good_without_reordering_the_list() {
    let app = TestApp::spawn().await;
    let older = app.create_conversation("alice", "").await;
    let newer = app.create_conversation("alice", "Newer").await;
    let before = list_page(&app, "alice", 0, "").await.0;
    assert_eq!(before, [newer.clone(), older.clone()]);

    let renamed = update(&app, "alice", &older, "  Trip to Lisbon ", Some(&["title"]))
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(renamed.id, older);
    assert_eq!(renamed.title, "Trip to Lisbon");
    // Renaming is not activity: the update time stays, and so does the list's order.
    assert_eq!(renamed.update_time, renamed.create_time);
    assert_eq!(list_page(&app, "alice", 0, "").await.0, before);
    // The client chose it: the model will not replace it.
    let chosen = format!(
        "SELECT count(*) AS n FROM conversations
         WHERE id = '{older}' AND title = 'Trip to Lisbon' AND title_source = 'client'"
    );
    assert_eq!(app.db.count(&chosen).await, 1);

    // Without a mask, the fields given a value; output-only fields in a mask are ignored.
    let renamed = update(&app, "alice", &older, "Lisbon", None)
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(renamed.title, "Lisbon");
    let renamed = update(
        &app,
        "alice",
        &older,
        "Porto",
        Some(&["id", "update_time", "title"]),
    )
    .await
    .unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(renamed.title, "Porto");
    let renamed = update(&app, "alice", &older, "Faro", Some(&["*"]))
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(renamed.title, "Faro");

    // Nothing given and no mask: nothing changes, and the conversation comes back as it is.
    let unchanged = update(&app, "alice", &older, "", None)
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(unchanged.title, "Faro");
    let unchanged = update(&app, "alice", &older, "Ignored", Some(&["create_time"]))
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(unchanged.title, "Faro");
    // A title created with the conversation is the client's too.
    let created = format!(
        "SELECT count(*) AS n FROM conversations WHERE id = '{newer}' AND title_source = 'client'"
    );
    assert_eq!(app.db.count(&created).await, 1);
}

#[tokio::test]
async fn bad_updates_are_refused_and_change_nothing() {
    let app = TestApp::spawn().await;
    let id = app.create_conversation("alice", "Kept").await;
    let before = app.db.snapshot().await;

    let refused = [
        ("conversation.title", "", Some(&["title"][..])),
        ("conversation.title", "two\nlines", Some(&["title"][..])),
        ("conversation.title", &"t".repeat(201), None),
        ("update_mask", "New", Some(&["title", "color"][..])),
        ("update_mask", "New", Some(&["messages"][..])),
    ];
    for (field, title, mask) in refused {
        let status = update(&app, "alice", &id, title, mask)
            .await
            .err()
            .unwrap_or_else(|| panic!("{title:?} with {mask:?} was accepted"));
        assert_bad_field(&status, field);
    }
    let status = update(&app, "alice", "not-a-uuid", "New", None)
        .await
        .err()
        .unwrap_or_else(|| panic!("a malformed id was accepted"));
    assert_bad_field(&status, "conversation.id");
    let status = app
        .conversations()
        .update_conversation(app.request("alice", UpdateConversationRequest::default()))
        .await
        .err()
        .unwrap_or_else(|| panic!("an update without a conversation was accepted"));
    assert_bad_field(&status, "conversation");

    // Someone else's conversation, or one that does not exist, is not found.
    for (user, conversation) in [
        ("bob", id.as_str()),
        ("alice", "01900000-0000-7000-8000-000000000000"),
    ] {
        let status = update(&app, user, conversation, "Mine now", Some(&["title"]))
            .await
            .err()
            .unwrap_or_else(|| panic!("{user} renamed {conversation}"));
        assert_eq!(status.code(), Code::NotFound, "{status:?}");
    }
    // The one call that made a change made bob a user; nothing else changed.
    app.db
        .run_sql("DELETE FROM users WHERE subject = 'bob'")
        .await;
    assert_eq!(app.db.snapshot().await, before);
}
