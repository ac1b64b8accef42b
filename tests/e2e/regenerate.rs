//! Another reply to a user's message: a sibling of the replies before it, made from the branch
//! up to the message alone, and retried, resumed and cancelled like any turn.

use std::sync::Arc;

use chat_service::api::proto::{
    CancelTurnRequest, Disconnect, Message, RegenerateReplyRequest, ResumeTurnRequest,
    SendMessageRequest, regenerate_reply_response, resume_turn_response,
    send_message_response::Event,
};
use tokio::sync::Notify;
use tonic::{Code, Status, Streaming};

use super::{
    assert_bad_field,
    branches::{
        assert_linked, contents, last_context, places, send_after, shown, switch, two_turns,
    },
    limits::assert_storage_limit,
    send_message::{Turn, replica_of, send_ok},
    support::{FakeLlm, Script, TestApp, streams::read_to_end},
};

fn request(message: &str, request_id: &str, on_disconnect: Disconnect) -> RegenerateReplyRequest {
    RegenerateReplyRequest {
        message_id: message.to_owned(),
        request_id: request_id.to_owned(),
        on_disconnect: on_disconnect.into(),
        ..Default::default()
    }
}

fn event(response: regenerate_reply_response::Event) -> Event {
    use regenerate_reply_response::Event as Regenerated;
    match response {
        Regenerated::Accepted(accepted) => Event::Accepted(accepted),
        Regenerated::Delta(delta) => Event::Delta(delta),
        Regenerated::ToolCall(call) => Event::ToolCall(call),
        Regenerated::ToolResult(result) => Event::ToolResult(result),
        Regenerated::Completed(completed) => Event::Completed(completed),
    }
}

/// Reads the rest of a regeneration's stream.
async fn read_regenerated(
    stream: &mut Streaming<chat_service::api::proto::RegenerateReplyResponse>,
) -> Turn {
    let (responses, error) = read_to_end(stream).await;
    let events = responses
        .into_iter()
        .filter_map(|r| r.event)
        .map(event)
        .collect();
    Turn { events, error }
}

/// Alice asks `app` for another reply to `message`, and reads it whole.
async fn regenerate_as(
    app: &TestApp,
    user: &str,
    message: &str,
    request_id: &str,
) -> Result<Turn, Status> {
    let request = app.request(user, request(message, request_id, Disconnect::Cancel));
    let mut stream = app.chat().regenerate_reply(request).await?.into_inner();
    Ok(read_regenerated(&mut stream).await)
}

pub(super) async fn regenerate(app: &TestApp, message: &str) -> Result<Turn, Status> {
    regenerate_as(app, "alice", message, "").await
}

/// The user message that `accepted` gave.
fn answered(turn: &Turn) -> Message {
    match turn.events.first() {
        Some(Event::Accepted(accepted)) => accepted.user_message.clone().unwrap_or_default(),
        other => panic!("the first event is not `accepted`: {other:?}"),
    }
}

/// The id of the reply that `completed` gave.
fn reply_id(turn: &Turn) -> String {
    turn.completed().message.unwrap_or_default().id
}

#[tokio::test]
async fn a_regenerated_reply_is_a_sibling_that_the_model_and_the_reads_see() {
    let fake = FakeLlm::start().await;
    let app = TestApp::with_fake_llm(&fake, |_| {}).await;
    let (conversation, before) = two_turns(&app).await;

    fake.script([Script::reply(&["Another ", "answer."])]);
    let again = regenerate(&app, &before[2].id)
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));
    assert!(again.error.is_none(), "{:?}", again.error);
    assert_eq!(again.shape(), ["accepted", "delta", "completed"]);
    assert_eq!(again.conversation_id(), conversation);
    assert_eq!(answered(&again).id, before[2].id);
    assert_eq!(again.text(), "Another answer.");
    assert_eq!(
        last_context(&fake),
        ["first", "You said: first.", "second"],
        "the earlier reply is not sent"
    );

    // The new reply follows "second", beside the first, and is the leaf.
    let after = shown(&app, &conversation).await;
    assert_eq!(
        contents(&after),
        ["first", "You said: first.", "second", "Another answer."]
    );
    assert_linked(&after);
    assert_eq!(after[3].id, reply_id(&again));
    assert_eq!(places(&after), [(0, 1), (0, 1), (0, 1), (1, 2)]);
    // The versions a client switches between, named: none for a message without siblings.
    assert_eq!(
        after[3].sibling_ids,
        [before[3].id.clone(), after[3].id.clone()]
    );
    assert!(
        after[..3].iter().all(|m| m.sibling_ids.is_empty()),
        "{after:#?}"
    );
    assert_eq!(
        app.db.messages(&conversation).await.len(),
        5,
        "nothing lost"
    );

    // The conversation goes on from it.
    send_ok(&app, "alice", &conversation, "third").await;
    assert_eq!(
        last_context(&fake),
        [
            "first",
            "You said: first.",
            "second",
            "Another answer.",
            "third"
        ]
    );

    // The first reply comes back, and the conversation goes on from there too.
    let switched = switch(&app, &conversation, &before[3].id)
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(contents(&switched), contents(&before));
    assert_eq!(places(&switched), [(0, 1), (0, 1), (0, 1), (0, 2)]);
    assert_eq!(switched[3].sibling_ids, after[3].sibling_ids);
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

    // The first message's reply regenerated, from deep in another branch: the model sees the
    // first message alone.
    fake.script([Script::reply(&["Once more."])]);
    regenerate(&app, &before[0].id)
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(last_context(&fake), ["first"]);
    let rooted = shown(&app, &conversation).await;
    assert_eq!(contents(&rooted), ["first", "Once more."]);
    assert_eq!(places(&rooted), [(0, 1), (1, 2)]);
    assert_eq!(app.db.messages(&conversation).await.len(), 10);
}

#[tokio::test]
async fn what_is_not_the_caller_s_user_message_is_refused_and_nothing_is_written() {
    let fake = FakeLlm::start().await;
    let app = TestApp::with_fake_llm(&fake, |config| {
        config.limits.storage.siblings_per_message = 2
    })
    .await;
    let (conversation, before) = two_turns(&app).await;
    let bobs = send_ok(&app, "bob", "", "bob's").await.conversation_id();
    let bobs_message = app.db.messages(&bobs).await[0].id.clone();
    let turns = "SELECT count(*) AS n FROM turns";
    let stored_turns = app.db.count(turns).await;
    let asked = fake.received().len();

    let reply = regenerate(&app, &before[3].id).await.unwrap_err();
    assert_bad_field(&reply, "message_id");
    assert!(reply.message().contains("user's message"), "{reply:?}");
    for missing in [bobs_message.as_str(), conversation.as_str()] {
        let refused = regenerate(&app, missing).await.unwrap_err();
        assert_eq!(refused.code(), Code::NotFound, "{refused:?}");
        assert!(!refused.message().contains("bob"), "{refused:?}");
    }
    // Bob's own message is his to regenerate.
    regenerate_as(&app, "bob", &bobs_message, "")
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));
    let malformed = regenerate(&app, "not-an-id").await.unwrap_err();
    assert_bad_field(&malformed, "message_id");
    let odd = app
        .chat()
        .regenerate_reply(app.request(
            "alice",
            RegenerateReplyRequest {
                message_id: before[2].id.clone(),
                on_disconnect: 7,
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_bad_field(&odd, "on_disconnect");

    // Two messages may follow one (CHAT_MAX_SIBLINGS=2): the first reply and one more.
    regenerate(&app, &before[2].id)
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));
    let full = regenerate(&app, &before[2].id).await.unwrap_err();
    assert_storage_limit(&full, "message_siblings");

    assert_eq!(
        fake.received().len(),
        asked + 2,
        "the model was asked for Bob's reply and the one that fitted"
    );
    assert_eq!(app.db.count(turns).await, stored_turns + 2);
    assert_eq!(app.db.messages(&conversation).await.len(), 5);
    assert_eq!(app.db.messages(&bobs).await.len(), 3);
}

#[tokio::test]
async fn a_conversation_that_holds_as_many_messages_as_allowed_takes_no_other_reply() {
    let fake = FakeLlm::start().await;
    // Every message counts, on every branch: the two turns fill it.
    let app = TestApp::with_fake_llm(&fake, |config| {
        config.limits.storage.messages_per_conversation = 4
    })
    .await;
    let (conversation, before) = two_turns(&app).await;
    let asked = fake.received().len();
    let full = regenerate(&app, &before[2].id).await.unwrap_err();
    assert_storage_limit(&full, "conversation_messages");
    assert_eq!(fake.received().len(), asked, "the model was not asked");
    assert_eq!(app.db.messages(&conversation).await.len(), 4);
    assert_eq!(app.db.count("SELECT count(*) AS n FROM turns").await, 2);
}

#[tokio::test]
async fn a_branch_with_a_reply_still_generating_is_not_regenerated_but_another_one_is() {
    let fake = FakeLlm::start().await;
    let app = TestApp::with_fake_llm(&fake, |_| {}).await;
    let (conversation, before) = two_turns(&app).await;

    // "second"'s reply is being regenerated, held mid-reply.
    let gate = Arc::new(Notify::new());
    fake.script([Script::paused(&["Hel"], &gate, &["lo."])]);
    let held = app.request("alice", request(&before[2].id, "", Disconnect::Cancel));
    let mut generating = app
        .chat()
        .regenerate_reply(held)
        .await
        .unwrap()
        .into_inner();
    let first = generating.message().await.unwrap().and_then(|r| r.event);
    assert!(
        matches!(first, Some(regenerate_reply_response::Event::Accepted(_))),
        "{first:?}"
    );

    // The same message, or an edit below it, would land beside or below the held reply.
    let busy = regenerate(&app, &before[2].id).await.unwrap_err();
    assert_eq!(busy.code(), Code::FailedPrecondition, "{busy:?}");
    assert!(busy.message().contains("CancelTurn"), "{busy:?}");
    let below = send_after(&app, &conversation, &before[2].id, "beside")
        .await
        .unwrap_err();
    assert_eq!(below.code(), Code::FailedPrecondition, "{below:?}");

    // "first" is above it, but its new reply starts another branch: both go ahead.
    let other = regenerate(&app, &before[0].id)
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));
    assert!(other.error.is_none(), "{:?}", other.error);
    gate.notify_one();
    let held = read_regenerated(&mut generating).await;
    assert!(held.error.is_none(), "{:?}", held.error);
    assert_eq!(held.text(), "Hello.");

    // The held reply landed beside "second"'s first; "first"'s new branch stays current.
    let current = shown(&app, &conversation).await;
    assert_eq!(current.len(), 2);
    assert_eq!(current[1].id, reply_id(&other));
    let old = switch(&app, &conversation, &reply_id(&held)).await.unwrap();
    assert_eq!(
        contents(&old),
        ["first", "You said: first.", "second", "Hello."]
    );
    assert_eq!(places(&old), [(0, 1), (0, 2), (0, 1), (1, 2)]);
    assert_linked(&old);
}

#[tokio::test]
async fn a_retried_regeneration_is_one_reply() {
    let fake = FakeLlm::start().await;
    let app = TestApp::with_fake_llm(&fake, |_| {}).await;
    let (conversation, before) = two_turns(&app).await;
    let asked = fake.received().len();

    fake.script([Script::reply(&["Another ", "answer."])]);
    let first = regenerate_as(&app, "alice", &before[2].id, "again-1")
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));
    let retried = regenerate_as(&app, "alice", &before[2].id, "again-1")
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(fake.received().len(), asked + 1, "the model was asked once");
    assert_eq!(retried.events, first.events, "the retry replays the turn");
    assert_eq!(app.db.messages(&conversation).await.len(), 5);

    // The same id for another message, or the id of a SendMessage, is another request.
    let other = regenerate_as(&app, "alice", &before[0].id, "again-1")
        .await
        .unwrap_err();
    assert_bad_field(&other, "request_id");
    let keyed = SendMessageRequest {
        conversation_id: conversation.clone(),
        content: "third".to_owned(),
        request_id: "send-1".to_owned(),
        ..Default::default()
    };
    let mut stream = app
        .chat()
        .send_message(app.request("alice", keyed))
        .await
        .unwrap()
        .into_inner();
    let (_, error) = read_to_end(&mut stream).await;
    assert!(error.is_none(), "{error:?}");
    let reused = regenerate_as(&app, "alice", &before[2].id, "send-1")
        .await
        .unwrap_err();
    assert_bad_field(&reused, "request_id");
    assert_eq!(app.db.messages(&conversation).await.len(), 7);
}

/// A regeneration of `message` that continues when its stream breaks, held after "Hel" until
/// `gate` opens; read up to its first delta.
async fn a_held_regeneration(
    app: &TestApp,
    fake: &FakeLlm,
    message: &str,
    gate: &Arc<Notify>,
) -> Streaming<chat_service::api::proto::RegenerateReplyResponse> {
    fake.script([Script::paused(&["Hel"], gate, &["lo."])]);
    let held = app.request("alice", request(message, "", Disconnect::Continue));
    let mut stream = app
        .chat()
        .regenerate_reply(held)
        .await
        .unwrap()
        .into_inner();
    for _ in 0..2 {
        stream.message().await.unwrap();
    }
    stream
}

#[tokio::test]
async fn a_regenerated_reply_is_resumed_and_cancelled_by_its_message_on_any_replica() {
    let fake = FakeLlm::start().await;
    let a = TestApp::with_fake_llm(&fake, |_| {}).await;
    let (conversation, before) = two_turns(&a).await;
    let second = before[2].id.clone();

    // The stream breaks mid-reply; the turn goes on, and the message's id finds it.
    let gate = Arc::new(Notify::new());
    drop(a_held_regeneration(&a, &fake, &second, &gate).await);
    let resume = ResumeTurnRequest {
        message_id: second.clone(),
        after_sequence: 2,
    };
    let mut resumed = a
        .chat()
        .resume_turn(a.request("alice", resume))
        .await
        .unwrap()
        .into_inner();
    gate.notify_one();
    let (rest, error) = read_to_end(&mut resumed).await;
    assert!(error.is_none(), "{error:?}");
    let rest: Vec<_> = rest.into_iter().map(|r| (r.sequence, r.event)).collect();
    assert!(
        matches!(&rest[..], [(3, Some(resume_turn_response::Event::Delta(d))), (4, Some(resume_turn_response::Event::Completed(_)))] if d.text == "lo."),
        "{rest:?}"
    );
    let current = shown(&a, &conversation).await;
    assert_eq!(
        contents(&current),
        ["first", "You said: first.", "second", "Hello."]
    );

    // The next regeneration is cancelled by the message's id too.
    let gate = Arc::new(Notify::new());
    let mut held = a_held_regeneration(&a, &fake, &second, &gate).await;
    a.chat()
        .cancel_turn(a.request(
            "alice",
            CancelTurnRequest {
                message_id: second.clone(),
            },
        ))
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));
    let cut = read_regenerated(&mut held).await;
    assert_eq!(cut.error.map(|s| s.code()), Some(Code::Cancelled));
    let stored = a.db.messages(&conversation).await;
    let last = stored.last().unwrap_or_else(|| panic!("no messages"));
    assert_eq!(
        (last.content.as_str(), last.status.as_str()),
        ("Hel", "cancelled")
    );
    // On a second replica, which never saw the conversation, the cut reply is the third.
    let b = replica_of(&a, &fake).await;
    let current = shown(&b, &conversation).await;
    assert_eq!(places(&current)[3], (2, 3));

    // Resumed from the start once ended, the message's newest turn replays from storage.
    let replay = ResumeTurnRequest {
        message_id: second,
        after_sequence: 0,
    };
    let mut replayed = b
        .chat()
        .resume_turn(b.request("alice", replay))
        .await
        .unwrap()
        .into_inner();
    let (events, error) = read_to_end(&mut replayed).await;
    let texts: Vec<String> = events
        .into_iter()
        .filter_map(|r| match r.event {
            Some(resume_turn_response::Event::Delta(d)) => Some(d.text),
            _ => None,
        })
        .collect();
    assert_eq!(texts, ["Hel"], "the cut reply, not the one before it");
    assert_eq!(error.map(|s| s.code()), Some(Code::Cancelled));
}

#[tokio::test]
async fn the_model_sees_as_many_messages_before_as_a_new_message_would_get() {
    let fake = FakeLlm::start().await;
    let app = TestApp::with_fake_llm(&fake, |config| config.turns.history_messages = 2).await;
    let (_, before) = two_turns(&app).await;
    regenerate(&app, &before[2].id)
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(last_context(&fake), ["You said: first.", "second"]);
}

#[tokio::test]
async fn deleting_a_conversation_deletes_every_branch_and_turn() {
    let fake = FakeLlm::start().await;
    let app = TestApp::with_fake_llm(&fake, |_| {}).await;
    let (conversation, before) = two_turns(&app).await;
    send_after(&app, &conversation, &before[1].id, "second, edited")
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));
    regenerate(&app, &before[2].id)
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));
    let of_it = |table: &str| {
        format!("SELECT count(*) AS n FROM {table} WHERE conversation_id = '{conversation}'")
    };
    assert_eq!(app.db.count(&of_it("messages")).await, 7);
    assert_eq!(app.db.count(&of_it("turns")).await, 4);

    app.conversations()
        .delete_conversation(app.request(
            "alice",
            chat_service::api::proto::DeleteConversationRequest {
                conversation_id: conversation.clone(),
            },
        ))
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(app.db.count(&of_it("messages")).await, 0);
    assert_eq!(app.db.count(&of_it("turns")).await, 0);
    let gone = regenerate(&app, &before[2].id).await.unwrap_err();
    assert_eq!(gone.code(), Code::NotFound, "{gone:?}");
}

#[tokio::test]
async fn a_replica_that_remembers_the_old_branch_answers_from_the_new_one() {
    let fake = FakeLlm::start().await;
    let a = TestApp::with_fake_llm(&fake, |_| {}).await;
    let b = replica_of(&a, &fake).await;
    let (conversation, before) = two_turns(&a).await;
    // A remembers the conversation up to "You said: second."; B regenerates that reply.
    fake.script([Script::reply(&["Another answer."])]);
    regenerate(&b, &before[2].id)
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));
    send_ok(&a, "alice", &conversation, "third").await;
    assert_eq!(
        last_context(&fake),
        [
            "first",
            "You said: first.",
            "second",
            "Another answer.",
            "third"
        ]
    );
}

#[tokio::test]
async fn a_failed_regeneration_is_generated_again_by_its_retry_from_its_branch() {
    let fake = FakeLlm::start().await;
    let app = TestApp::with_fake_llm(&fake, |_| {}).await;
    let (conversation, before) = two_turns(&app).await;
    // "second" edited, and the conversation goes on below the edit.
    send_after(&app, &conversation, &before[1].id, "second, edited")
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));
    send_ok(&app, "alice", &conversation, "third").await;
    let edited = shown(&app, &conversation).await;
    assert_eq!(edited[2].content, "second, edited");

    // Its reply regenerated: the model fails, and no reply is stored.
    fake.script([Script::Status {
        code: 400,
        retry_after: None,
    }]);
    let failed = regenerate_as(&app, "alice", &edited[2].id, "again-1")
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));
    assert!(failed.error.is_some(), "{:?}", failed.events);
    let stored = app.db.messages(&conversation).await.len();

    // The retry generates it, from the edit's branch, though messages came after it.
    fake.script([Script::reply(&["Another answer."])]);
    let retried = regenerate_as(&app, "alice", &edited[2].id, "again-1")
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));
    assert!(retried.error.is_none(), "{:?}", retried.error);
    assert_eq!(
        last_context(&fake),
        ["first", "You said: first.", "second, edited"]
    );
    let current = shown(&app, &conversation).await;
    assert_eq!(
        contents(&current),
        [
            "first",
            "You said: first.",
            "second, edited",
            "Another answer."
        ]
    );
    assert_eq!(places(&current), [(0, 1), (0, 1), (1, 2), (1, 2)]);
    assert_eq!(app.db.messages(&conversation).await.len(), stored + 1);
}
