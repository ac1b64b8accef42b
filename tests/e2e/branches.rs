//! A conversation as a tree: an edit starts a branch, the model sees only the branch of the
//! message it answers, the reads show the current branch with each message's siblings, and a
//! switch brings another branch back.

use std::sync::Arc;

use chat_service::api::proto::{
    GetConversationRequest, ListMessagesRequest, Message, SendMessageRequest, SwitchBranchRequest,
    send_message_response::Event,
};
use tokio::sync::Notify;
use tonic::{Code, Status};

use super::{
    assert_bad_field,
    limits::assert_storage_limit,
    send_message::{Turn, send_ok},
    support::{FakeLlm, Script, TestApp, streams::read_to_end},
};

pub(super) const ROOT: &str = "00000000-0000-0000-0000-000000000000";

/// Alice's message `content` in `conversation`, after `parent` ("" for the leaf).
pub(super) async fn send_after(
    app: &TestApp,
    conversation: &str,
    parent: &str,
    content: &str,
) -> Result<Turn, Status> {
    let request = app.request(
        "alice",
        SendMessageRequest {
            conversation_id: conversation.to_owned(),
            content: content.to_owned(),
            parent_message_id: parent.to_owned(),
            ..Default::default()
        },
    );
    let mut stream = app.chat().send_message(request).await?.into_inner();
    let (responses, error) = read_to_end(&mut stream).await;
    let events = responses.into_iter().filter_map(|r| r.event).collect();
    Ok(Turn { events, error })
}

pub(super) async fn shown(app: &TestApp, conversation: &str) -> Vec<Message> {
    app.conversations()
        .get_conversation(app.request(
            "alice",
            GetConversationRequest {
                conversation_id: conversation.to_owned(),
            },
        ))
        .await
        .unwrap_or_else(|e| panic!("{e:?}"))
        .into_inner()
        .messages
}

pub(super) async fn switch(
    app: &TestApp,
    conversation: &str,
    to: &str,
) -> Result<Vec<Message>, Status> {
    let response = app
        .conversations()
        .switch_branch(app.request(
            "alice",
            SwitchBranchRequest {
                conversation_id: conversation.to_owned(),
                message_id: to.to_owned(),
            },
        ))
        .await?;
    Ok(response.into_inner().messages)
}

pub(super) fn contents(messages: &[Message]) -> Vec<&str> {
    messages.iter().map(|m| m.content.as_str()).collect()
}

/// (sibling_index, sibling_count) of each message.
pub(super) fn places(messages: &[Message]) -> Vec<(u32, u32)> {
    messages
        .iter()
        .map(|m| (m.sibling_index, m.sibling_count))
        .collect()
}

/// What the model was sent last, without the roles.
pub(super) fn last_context(fake: &FakeLlm) -> Vec<String> {
    let received = fake.received();
    let last = received
        .last()
        .unwrap_or_else(|| panic!("the model was never asked"));
    last.messages().into_iter().map(|(_, text)| text).collect()
}

/// Each message follows the one before it, the first none.
#[track_caller]
pub(super) fn assert_linked(messages: &[Message]) {
    assert_eq!(messages[0].parent_id, ROOT);
    for pair in messages.windows(2) {
        assert_eq!(pair[1].parent_id, pair[0].id, "{messages:#?}");
    }
}

/// A conversation of two turns: "first", "second", each answered by the echoing model.
pub(super) async fn two_turns(app: &TestApp) -> (String, Vec<Message>) {
    let first = send_ok(app, "alice", "", "first").await;
    let conversation = first.conversation_id();
    send_ok(app, "alice", &conversation, "second").await;
    let messages = shown(app, &conversation).await;
    assert_eq!(
        contents(&messages),
        ["first", "You said: first.", "second", "You said: second."]
    );
    (conversation, messages)
}

#[tokio::test]
async fn an_edit_starts_a_branch_that_the_model_and_the_reads_see_alone() {
    let fake = FakeLlm::start().await;
    let app = TestApp::with_fake_llm(&fake, |_| {}).await;
    let (conversation, before) = two_turns(&app).await;
    assert_linked(&before);
    assert_eq!(places(&before), [(0, 1); 4]);

    // "second" edited: sent with its parent, the first reply.
    let edited = send_after(&app, &conversation, &before[2].parent_id, "second, edited")
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));
    assert!(edited.error.is_none(), "{:?}", edited.error);
    assert_eq!(
        last_context(&fake),
        ["first", "You said: first.", "second, edited"],
        "the old branch is not sent"
    );
    let after = shown(&app, &conversation).await;
    assert_eq!(
        contents(&after),
        [
            "first",
            "You said: first.",
            "second, edited",
            "You said: second, edited."
        ]
    );
    assert_linked(&after);
    assert_eq!(places(&after), [(0, 1), (0, 1), (1, 2), (0, 1)]);
    assert_eq!(
        app.db.messages(&conversation).await.len(),
        6,
        "nothing lost"
    );

    // The conversation goes on from the edit's reply.
    send_ok(&app, "alice", &conversation, "third").await;
    assert_eq!(
        last_context(&fake),
        [
            "first",
            "You said: first.",
            "second, edited",
            "You said: second, edited.",
            "third"
        ]
    );

    // The old branch comes back, with its newest message as the leaf, and goes on from there.
    let switched = switch(&app, &conversation, &before[2].id)
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(contents(&switched), contents(&before));
    assert_eq!(places(&switched), [(0, 1), (0, 1), (0, 2), (0, 1)]);
    assert_eq!(
        contents(&shown(&app, &conversation).await),
        contents(&before)
    );
    send_ok(&app, "alice", &conversation, "fourth").await;
    assert_eq!(
        last_context(&fake),
        [
            "first",
            "You said: first.",
            "second",
            "You said: second.",
            "fourth"
        ]
    );

    // The first message edited: another root, which the model sees alone.
    send_after(&app, &conversation, ROOT, "first, edited")
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(last_context(&fake), ["first, edited"]);
    let rooted = shown(&app, &conversation).await;
    assert_eq!(
        contents(&rooted),
        ["first, edited", "You said: first, edited."]
    );
    assert_linked(&rooted);
    assert_eq!(places(&rooted), [(1, 2), (0, 1)]);
    // A switch to a message in the middle of a branch shows the newest message below it.
    let back = switch(&app, &conversation, &before[0].id)
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(
        back.last().map(|m| m.content.as_str()),
        Some("You said: fourth.")
    );
    assert_eq!(app.db.messages(&conversation).await.len(), 12);
}

#[tokio::test]
async fn a_page_token_of_a_branch_no_longer_current_is_refused() {
    let fake = FakeLlm::start().await;
    let app = TestApp::with_fake_llm(&fake, |_| {}).await;
    let (conversation, before) = two_turns(&app).await;
    send_after(&app, &conversation, &before[1].id, "second, edited")
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));
    let list = |token: String| {
        let app = &app;
        let conversation = conversation.clone();
        async move {
            app.conversations()
                .list_messages(app.request(
                    "alice",
                    ListMessagesRequest {
                        conversation_id: conversation,
                        page_size: 3,
                        page_token: token,
                    },
                ))
                .await
                .map(tonic::Response::into_inner)
        }
    };
    let first = list(String::new()).await.unwrap();
    assert_eq!(
        contents(&first.messages),
        ["first", "You said: first.", "second, edited"]
    );
    let second = list(first.next_page_token.clone()).await.unwrap();
    assert_eq!(contents(&second.messages), ["You said: second, edited."]);
    assert!(second.next_page_token.is_empty());

    // Page through, switch midway: the token names a message of the other branch.
    let first = list(String::new()).await.unwrap();
    let token = first.next_page_token;
    switch(&app, &conversation, &before[3].id).await.unwrap();
    let moved = list(token).await.unwrap_err();
    assert_eq!(moved.code(), Code::FailedPrecondition, "{moved:?}");
    assert!(moved.message().contains("first page"), "{moved:?}");
}

#[tokio::test]
async fn a_place_the_conversation_cannot_take_is_refused_and_nothing_is_written() {
    let fake = FakeLlm::start().await;
    let app = TestApp::with_fake_llm(&fake, |config| {
        config.limits.storage.siblings_per_message = 2
    })
    .await;
    let (conversation, before) = two_turns(&app).await;
    let other = send_ok(&app, "alice", "", "elsewhere")
        .await
        .conversation_id();
    let elsewhere = shown(&app, &other).await;
    let bobs = send_ok(&app, "bob", "", "bob's").await.conversation_id();
    let bobs_message = app.db.messages(&bobs).await[0].id.clone();
    let stored = app.db.messages(&conversation).await.len();

    for (parent, code) in [
        (elsewhere[0].id.as_str(), Code::NotFound),
        (bobs_message.as_str(), Code::NotFound),
        (conversation.as_str(), Code::NotFound),
    ] {
        let refused = send_after(&app, &conversation, parent, "astray")
            .await
            .unwrap_err();
        assert_eq!(refused.code(), code, "{refused:?}");
        assert!(!refused.message().contains("bob"), "{refused:?}");
    }
    let malformed = send_after(&app, &conversation, "not-an-id", "x")
        .await
        .unwrap_err();
    assert_bad_field(&malformed, "parent_message_id");
    let without_conversation = send_after(&app, "", &before[1].id, "x").await.unwrap_err();
    assert_bad_field(&without_conversation, "parent_message_id");

    // Two messages may follow one (CHAT_MAX_SIBLINGS=2): "second" and one edit.
    send_after(&app, &conversation, &before[1].id, "second, again")
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));
    let full = send_after(&app, &conversation, &before[1].id, "second, thrice")
        .await
        .unwrap_err();
    assert_storage_limit(&full, "message_siblings");
    assert_eq!(
        app.db.messages(&conversation).await.len(),
        stored + 2,
        "only the edit that fitted, and its reply"
    );
    assert!(
        app.db
            .messages(&conversation)
            .await
            .iter()
            .all(|m| m.content != "astray" && m.content != "second, thrice" && m.content != "x")
    );

    let unknown = switch(&app, &conversation, &elsewhere[0].id)
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound, "{unknown:?}");
}

#[tokio::test]
async fn a_branch_with_a_reply_still_generating_takes_no_edit_but_another_branch_does() {
    let fake = FakeLlm::start().await;
    let app = TestApp::with_fake_llm(&fake, |_| {}).await;
    let (conversation, before) = two_turns(&app).await;

    // "third" is being answered, held mid-reply.
    let gate = Arc::new(Notify::new());
    fake.script([Script::paused(&["Hel"], &gate, &["lo."])]);
    let request = app.request(
        "alice",
        SendMessageRequest {
            conversation_id: conversation.clone(),
            content: "third".to_owned(),
            ..Default::default()
        },
    );
    let mut generating = app.chat().send_message(request).await.unwrap().into_inner();
    let mut third_id = String::new();
    // Until its first delta, which comes only once "third" is committed.
    loop {
        match generating.message().await.unwrap().and_then(|r| r.event) {
            Some(Event::Accepted(accepted)) => {
                third_id = accepted.user_message.map(|m| m.id).unwrap_or_default();
            }
            Some(Event::Delta(_)) => break,
            other => panic!("{other:?}"),
        }
    }

    // After "third", its reply not written yet: refused.
    let busy = send_after(&app, &conversation, &third_id, "below third")
        .await
        .unwrap_err();
    assert_eq!(busy.code(), Code::FailedPrecondition, "{busy:?}");
    assert!(busy.message().contains("CancelTurn"), "{busy:?}");

    // An edit of "second" is another branch: it goes ahead while "third" is answered.
    let edited = send_after(&app, &conversation, &before[1].id, "second, edited")
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));
    assert!(edited.error.is_none(), "{:?}", edited.error);
    gate.notify_one();
    let (_, error) = read_to_end(&mut generating).await;
    assert!(error.is_none(), "{error:?}");

    // The held reply landed after "third", on its own branch; the edit's branch stays current.
    assert_eq!(
        contents(&shown(&app, &conversation).await),
        [
            "first",
            "You said: first.",
            "second, edited",
            "You said: second, edited."
        ]
    );
    let old = switch(&app, &conversation, &third_id).await.unwrap();
    assert_eq!(
        contents(&old),
        [
            "first",
            "You said: first.",
            "second",
            "You said: second.",
            "third",
            "Hello."
        ]
    );
    assert_linked(&old);
}

#[tokio::test]
async fn a_retried_edit_is_one_message() {
    let fake = FakeLlm::start().await;
    let app = TestApp::with_fake_llm(&fake, |_| {}).await;
    let (conversation, before) = two_turns(&app).await;
    let edit = |parent: &str| SendMessageRequest {
        conversation_id: conversation.clone(),
        content: "second, edited".to_owned(),
        parent_message_id: parent.to_owned(),
        request_id: "edit-1".to_owned(),
        ..Default::default()
    };
    for _ in 0..2 {
        let mut stream = app
            .chat()
            .send_message(app.request("alice", edit(&before[1].id)))
            .await
            .unwrap()
            .into_inner();
        let (_, error) = read_to_end(&mut stream).await;
        assert!(error.is_none(), "{error:?}");
    }
    assert_eq!(
        fake.received().len(),
        3,
        "the model was asked once for the edit"
    );
    assert_eq!(app.db.messages(&conversation).await.len(), 6);
    // The same id for another place is another request.
    let other = app
        .chat()
        .send_message(app.request("alice", edit(ROOT)))
        .await
        .unwrap_err();
    assert_eq!(other.code(), Code::InvalidArgument, "{other:?}");
}
