//! This service's export format, JSON Lines, version 1: a header line, then one line per
//! conversation with its messages in the order they were written and their tool calls. Times are
//! RFC 3339 in UTC with microseconds; ids are the service's, for reference, and are not read back.
//!
//! ```text
//! {"format":"chat-service.conversations","version":1}
//! {"conversation":{"id":…,"title":…,"title_source":"client","create_time":…,"update_time":…},
//!  "messages":[{"id":…,"role":"user","content":…,"status":"complete","create_time":…,
//!               "tool_calls":[{"id":"call_1","name":…,"arguments":{…},"status":"succeeded",
//!                              "result":{…}}],
//!               "model":…}]}
//! ```
//!
//! `"model"`, on an assistant's message, names the model that wrote it, when that was recorded;
//! lines without it, as exports before models were recorded wrote, are read as unknown.
//!
//! A message follows the one before it. Only a conversation with branches says otherwise: a
//! message's `"parent"` is the index in `messages` of the one it follows, when that is another;
//! `"root": true` marks another first message (an edited first message); the conversation's
//! `"leaf"` is the index of its current leaf, when that is not the last message. Lines without
//! them, as every export before branches wrote, are read as one line.

use std::collections::HashMap;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use crate::domain::{
    ArchivedConversation, ArchivedMessage, ArchivedParent, ArchivedToolCall, Conversation,
    InvalidTree, Message, MessageId, MessageStatus, Role, Title, TitleSource, ToolCallStatus,
};

pub const FORMAT: &str = "chat-service.conversations";
pub const VERSION: u32 = 1;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    pub format: String,
    pub version: u32,
}

impl Header {
    pub fn current() -> Self {
        Self {
            format: FORMAT.to_owned(),
            version: VERSION,
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConversationLine {
    pub conversation: ConversationFields,
    pub messages: Vec<MessageLine>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConversationFields {
    /// Not read back: an import gives the conversation a new id.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub id: String,
    pub title: String,
    pub title_source: TitleSource,
    pub create_time: String,
    pub update_time: String,
    /// The index in `messages` of the current leaf, when that is not the last message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leaf: Option<usize>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessageLine {
    /// Not read back.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub id: String,
    /// The index in `messages` of the message this one follows, when that is not the one before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<usize>,
    /// Whether this message follows none, though messages come before it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub root: bool,
    pub role: Role,
    pub content: String,
    pub status: MessageStatus,
    pub create_time: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCallLine>,
    /// On an assistant's message: the name of the model that wrote it, when it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolCallLine {
    /// The provider's id for the call.
    pub id: String,
    pub name: String,
    pub arguments: serde_json::Value,
    pub status: ToolCallStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
}

/// Why a line is not a conversation this service can store.
#[derive(Debug, thiserror::Error)]
pub enum InvalidLine {
    #[error("not valid JSON for this format: {0}")]
    Json(#[from] serde_json::Error),
    #[error("{field}: {reason}")]
    Field { field: &'static str, reason: String },
}

/// The longest name of a model a message may carry, as the catalog allows.
const MAX_MODEL_CHARS: usize = 64;

/// A message's model, as a name: short, and storable.
fn model_name(name: String) -> Result<String, InvalidLine> {
    if name.chars().count() > MAX_MODEL_CHARS {
        return Err(invalid(
            "messages.model",
            format!("is longer than {MAX_MODEL_CHARS} characters"),
        ));
    }
    storable("messages.model", name)
}

fn invalid(field: &'static str, reason: impl ToString) -> InvalidLine {
    InvalidLine::Field {
        field,
        reason: reason.to_string(),
    }
}

fn time_text(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn parse_time(field: &'static str, text: &str) -> Result<DateTime<Utc>, InvalidLine> {
    DateTime::parse_from_rfc3339(text)
        .map(|time| time.with_timezone(&Utc))
        .map_err(|e| invalid(field, format!("{text:?} is not an RFC 3339 time: {e}")))
}

/// Text PostgreSQL can store: anything but NUL.
fn storable(field: &'static str, text: String) -> Result<String, InvalidLine> {
    if text.contains('\0') {
        return Err(invalid(
            field,
            "holds a NUL character, which cannot be stored",
        ));
    }
    Ok(text)
}

/// JSON PostgreSQL's jsonb can store: no NUL in any string or key.
fn storable_json(
    field: &'static str,
    value: serde_json::Value,
) -> Result<serde_json::Value, InvalidLine> {
    fn holds_nul(value: &serde_json::Value) -> bool {
        match value {
            serde_json::Value::String(text) => text.contains('\0'),
            serde_json::Value::Array(items) => items.iter().any(holds_nul),
            serde_json::Value::Object(fields) => fields
                .iter()
                .any(|(key, value)| key.contains('\0') || holds_nul(value)),
            _ => false,
        }
    }
    if holds_nul(&value) {
        return Err(invalid(
            field,
            "holds a NUL character, which cannot be stored",
        ));
    }
    Ok(value)
}

impl ConversationLine {
    /// The line for a stored conversation and its messages, in the order they were written,
    /// each with the message it follows, and its current leaf.
    pub fn of(
        conversation: &Conversation,
        source: TitleSource,
        messages: Vec<(Message, Option<MessageId>)>,
        leaf: Option<MessageId>,
    ) -> Self {
        let index: HashMap<MessageId, usize> = messages
            .iter()
            .enumerate()
            .map(|(at, (message, _))| (message.id, at))
            .collect();
        let last = messages.len().checked_sub(1);
        let leaf = leaf
            .and_then(|leaf| index.get(&leaf).copied())
            .filter(|leaf| Some(*leaf) != last);
        let lines = messages
            .into_iter()
            .enumerate()
            .map(|(at, (message, parent))| {
                let parent = parent.and_then(|parent| index.get(&parent).copied());
                MessageLine {
                    id: message.id.to_string(),
                    parent: parent.filter(|parent| Some(*parent) != at.checked_sub(1)),
                    root: parent.is_none() && at > 0,
                    role: message.role,
                    content: message.content,
                    status: message.status,
                    create_time: time_text(message.create_time),
                    model: message.model,
                    tool_calls: message
                        .tool_calls
                        .into_iter()
                        .map(|call| ToolCallLine {
                            id: call.provider_call_id,
                            name: call.name,
                            arguments: call.arguments,
                            status: call.status,
                            result: call.result,
                        })
                        .collect(),
                }
            })
            .collect();
        Self {
            conversation: ConversationFields {
                id: conversation.id.to_string(),
                title: conversation.title.as_str().to_owned(),
                title_source: source,
                create_time: time_text(conversation.create_time),
                update_time: time_text(conversation.update_time),
                leaf,
            },
            messages: lines,
        }
    }

    /// The conversation the line describes, checked as the service checks what it stores.
    pub fn into_archived(self) -> Result<ArchivedConversation, InvalidLine> {
        let fields = self.conversation;
        let title = Title::parse(&fields.title).map_err(|e| invalid("conversation.title", e))?;
        let messages = self
            .messages
            .into_iter()
            .map(MessageLine::into_archived)
            .collect::<Result<Vec<_>, _>>()?;
        let archived = ArchivedConversation {
            title,
            title_source: fields.title_source,
            create_time: parse_time("conversation.create_time", &fields.create_time)?,
            update_time: parse_time("conversation.update_time", &fields.update_time)?,
            messages,
            leaf: fields.leaf,
        };
        match archived.parents() {
            Ok(_) => Ok(archived),
            Err(e @ InvalidTree::LeafMissing(_)) => Err(invalid("conversation.leaf", e)),
            Err(e @ InvalidTree::ParentNotBefore(_)) => Err(invalid("messages.parent", e)),
        }
    }
}

impl MessageLine {
    fn into_archived(self) -> Result<ArchivedMessage, InvalidLine> {
        let parent = match (self.parent, self.root) {
            (None, false) => ArchivedParent::Previous,
            (None, true) => ArchivedParent::Root,
            (Some(parent), false) => ArchivedParent::Message(parent),
            (Some(_), true) => {
                return Err(invalid(
                    "messages.root",
                    "a message that follows a parent is not a first message",
                ));
            }
        };
        let tool_calls = self
            .tool_calls
            .into_iter()
            .map(|call| {
                Ok(ArchivedToolCall {
                    provider_call_id: storable("messages.tool_calls.id", call.id)?,
                    name: storable("messages.tool_calls.name", call.name)?,
                    arguments: storable_json("messages.tool_calls.arguments", call.arguments)?,
                    status: call.status,
                    result: call
                        .result
                        .map(|result| storable_json("messages.tool_calls.result", result))
                        .transpose()?,
                })
            })
            .collect::<Result<Vec<_>, InvalidLine>>()?;
        Ok(ArchivedMessage {
            parent,
            role: self.role,
            content: storable("messages.content", self.content)?,
            status: self.status,
            create_time: parse_time("messages.create_time", &self.create_time)?,
            tool_calls,
            model: self.model.map(model_name).transpose()?,
        })
    }
}
