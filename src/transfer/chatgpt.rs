//! ChatGPT's export (`conversations.json`): a JSON array of conversations, each a tree of
//! messages (`mapping`, by node id, each node naming its parent) and the node the user last
//! saw (`current_node`). The branch that ends there is the conversation as its user left it;
//! only what the user and the assistant said to each other is kept: system and tool messages,
//! hidden messages and messages addressed to a tool (code to run, searches) are left out.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::Deserialize;

use crate::domain::{
    ArchivedConversation, ArchivedMessage, ArchivedParent, MessageStatus, Role, Title, TitleSource,
};

#[derive(Debug, Deserialize)]
pub struct ChatGptConversation {
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    create_time: Option<f64>,
    #[serde(default)]
    update_time: Option<f64>,
    #[serde(default)]
    mapping: HashMap<String, Node>,
    #[serde(default)]
    current_node: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Node {
    #[serde(default)]
    message: Option<NodeMessage>,
    #[serde(default)]
    parent: Option<String>,
}

#[derive(Debug, Deserialize)]
struct NodeMessage {
    author: Author,
    #[serde(default)]
    create_time: Option<f64>,
    #[serde(default)]
    content: Option<Content>,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    recipient: Option<String>,
    #[serde(default)]
    metadata: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
struct Author {
    role: String,
}

#[derive(Debug, Deserialize)]
struct Content {
    #[serde(default)]
    parts: Vec<serde_json::Value>,
    #[serde(default)]
    text: Option<String>,
}

/// Why a ChatGPT conversation cannot be stored.
#[derive(Debug, thiserror::Error)]
pub enum InvalidChatGpt {
    #[error("current_node {0:?} is not in its mapping")]
    UnknownNode(String),
    #[error("its messages form a loop")]
    Loop,
}

/// Seconds since the epoch, as ChatGPT writes times.
fn time(seconds: Option<f64>) -> Option<DateTime<Utc>> {
    let seconds = seconds.filter(|s| s.is_finite())?;
    // Microseconds, as PostgreSQL keeps them; the cast saturates on absurd values.
    #[allow(clippy::cast_possible_truncation)]
    let micros = (seconds * 1e6).round() as i64;
    DateTime::from_timestamp_micros(micros)
}

/// Its text: the string parts, joined; images and other attachments are left out. NUL, which
/// PostgreSQL's text cannot hold, is dropped.
fn text(content: &Content) -> String {
    let parts = content.parts.iter().filter_map(serde_json::Value::as_str);
    let joined: String = match &content.text {
        Some(text) if content.parts.is_empty() => text.clone(),
        _ => parts.collect::<Vec<_>>().join("\n"),
    };
    joined.replace('\0', "")
}

/// A title as this service keeps them: one line of at most 200 characters.
fn title(text: Option<&str>) -> Title {
    let line: String = text
        .unwrap_or_default()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(Title::MAX_CHARS)
        .collect();
    Title::parse(&line).unwrap_or_default()
}

/// A message as this service keeps it, if it is one the user and the assistant said to each
/// other; `last_time` is the time of the one before, and becomes its.
fn shown(message: &NodeMessage, last_time: &mut DateTime<Utc>) -> Option<ArchivedMessage> {
    let role = match message.author.role.as_str() {
        "user" => Role::User,
        "assistant" => Role::Assistant,
        _ => return None,
    };
    let metadata = |key: &str| message.metadata.as_ref().and_then(|m| m.get(key));
    let hidden = metadata("is_visually_hidden_from_conversation")
        .and_then(serde_json::Value::as_bool)
        .unwrap_or(false);
    let to_a_tool = message.recipient.as_deref().is_some_and(|r| r != "all");
    let content = message.content.as_ref().map(text).unwrap_or_default();
    if hidden || to_a_tool || content.trim().is_empty() {
        return None;
    }
    *last_time = time(message.create_time).unwrap_or(*last_time);
    let status = match message.status.as_deref() {
        Some("finished_partial_completion" | "in_progress") => MessageStatus::Cancelled,
        _ => MessageStatus::Complete,
    };
    // The model ChatGPT names, on its replies: a name, so no more than a name's length.
    let model = metadata("model_slug")
        .and_then(serde_json::Value::as_str)
        .filter(|slug| role == Role::Assistant && !slug.is_empty() && slug.len() <= 64)
        .map(|slug| slug.replace('\0', ""));
    Some(ArchivedMessage {
        parent: ArchivedParent::Previous,
        role,
        content,
        status,
        create_time: *last_time,
        tool_calls: Vec::new(),
        model,
    })
}

impl ChatGptConversation {
    /// The branch the user last saw, as a conversation of this service.
    pub fn into_archived(self) -> Result<ArchivedConversation, InvalidChatGpt> {
        let create_time = time(self.create_time).unwrap_or(DateTime::UNIX_EPOCH);
        let update_time = time(self.update_time).unwrap_or(create_time);
        let mut branch = Vec::new();
        let mut at = self.current_node.clone();
        while let Some(id) = at {
            let node = self
                .mapping
                .get(&id)
                .ok_or_else(|| InvalidChatGpt::UnknownNode(id.clone()))?;
            if branch.len() > self.mapping.len() {
                return Err(InvalidChatGpt::Loop);
            }
            branch.push(node);
            at = node.parent.clone();
        }
        branch.reverse();
        let mut last_time = create_time;
        let messages = branch
            .into_iter()
            .filter_map(|node| node.message.as_ref())
            .filter_map(|message| shown(message, &mut last_time))
            .collect();
        Ok(ArchivedConversation {
            title: title(self.title.as_deref()),
            // ChatGPT's titles are written by its model.
            title_source: TitleSource::Model,
            create_time,
            update_time,
            messages,
            leaf: None,
        })
    }
}
