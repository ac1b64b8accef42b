//! A user's conversations out of the service and back in: `chat-service export` writes them in
//! this service's JSON Lines format ([`format`]), and `chat-service import` reads that format or
//! ChatGPT's `conversations.json` ([`chatgpt`]). Each conversation is imported in a transaction
//! of its own, so a bad one is refused whole and the others are kept.

pub mod chatgpt;
pub mod format;

use std::io::{BufRead, Read, Write};

use crate::{
    domain::{ArchivedConversation, Subject},
    store::{Store, StoreError},
};

use self::format::{ConversationLine, Header};

/// The longest line an import reads: far beyond any conversation the service keeps by default,
/// and a bound on what a hostile file can make it hold.
const MAX_LINE_BYTES: u64 = 512 * 1024 * 1024;

/// What stops an export or an import as a whole.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("reading or writing failed: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    NotAnExport(String),
}

/// What an export wrote.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Exported {
    pub conversations: usize,
    pub messages: usize,
}

/// What an import stored, and what it refused: where (a line, or a conversation of a
/// ChatGPT export) and why.
#[derive(Debug, Default)]
pub struct Imported {
    pub conversations: usize,
    pub messages: usize,
    pub refused: Vec<(String, String)>,
}

/// Writes every conversation of the user `subject` names, oldest first, to `out`.
pub async fn export(
    store: &Store,
    subject: &Subject,
    out: &mut impl Write,
) -> Result<Exported, TransferError> {
    let mut exported = Exported::default();
    serde_json::to_writer(&mut *out, &Header::current()).map_err(std::io::Error::from)?;
    out.write_all(b"\n")?;
    let Some(user) = store.find_user(subject).await? else {
        out.flush()?;
        return Ok(exported);
    };
    for id in store.conversation_ids(user).await? {
        // A conversation deleted meanwhile is left out.
        let Some((conversation, source)) = store.conversation_with_title_source(user, id).await?
        else {
            continue;
        };
        let Some(whole) = store.every_message(user, id).await? else {
            continue;
        };
        exported.conversations += 1;
        exported.messages += whole.messages.len();
        let line = ConversationLine::of(&conversation, source, whole.messages, whole.leaf);
        serde_json::to_writer(&mut *out, &line).map_err(std::io::Error::from)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(exported)
}

/// Reads conversations from `input` and stores them as the user `subject` names, created if
/// new. `input` is this service's export, or ChatGPT's.
pub async fn import(
    store: &Store,
    subject: &Subject,
    mut input: impl BufRead,
) -> Result<Imported, TransferError> {
    let mut imported = Imported::default();
    let starts_an_array = loop {
        let buffer = input.fill_buf()?;
        match buffer.iter().position(|b| !b.is_ascii_whitespace()) {
            Some(at) => break buffer[at] == b'[',
            None if buffer.is_empty() => {
                return Err(TransferError::NotAnExport("the input is empty".to_owned()));
            }
            None => {
                let all = buffer.len();
                input.consume(all);
            }
        }
    };
    let conversations: Box<dyn Iterator<Item = (String, Result<ArchivedConversation, String>)>> =
        if starts_an_array {
            Box::new(chatgpt_conversations(input)?)
        } else {
            Box::new(lines(input)?)
        };
    // Only once the input is known to be an export: a mistaken file creates no user.
    let user = store.ensure_user(subject).await?;
    for (place, conversation) in conversations {
        let stored = match conversation {
            Ok(conversation) => store
                .import_conversation(user, &conversation)
                .await
                .map(|_| conversation.messages.len())
                .map_err(|e| e.to_string()),
            Err(reason) => Err(reason),
        };
        match stored {
            Ok(messages) => {
                imported.conversations += 1;
                imported.messages += messages;
            }
            Err(reason) => imported.refused.push((place, reason)),
        }
    }
    Ok(imported)
}

/// ChatGPT's export, read whole: it is one JSON document.
fn chatgpt_conversations(
    input: impl BufRead,
) -> Result<impl Iterator<Item = (String, Result<ArchivedConversation, String>)>, TransferError> {
    let all: Vec<serde_json::Value> = serde_json::from_reader(input.take(MAX_LINE_BYTES))
        .map_err(|e| TransferError::NotAnExport(format!("not a ChatGPT export: {e}")))?;
    Ok(all.into_iter().enumerate().map(|(index, value)| {
        let place = format!("conversation {}", index + 1);
        let conversation = serde_json::from_value::<chatgpt::ChatGptConversation>(value)
            .map_err(|e| e.to_string())
            .and_then(|c| c.into_archived().map_err(|e| e.to_string()));
        (place, conversation)
    }))
}

/// This service's export, a line at a time, after its header.
fn lines(
    mut input: impl BufRead,
) -> Result<impl Iterator<Item = (String, Result<ArchivedConversation, String>)>, TransferError> {
    let header = read_line(&mut input)?.unwrap_or_default();
    let expected = || {
        format!(
            "line 1 is not this service's export header ({{\"format\":\"{}\",\"version\":{}}}) nor the start of a ChatGPT export",
            format::FORMAT,
            format::VERSION
        )
    };
    let header: Header =
        serde_json::from_slice(&header).map_err(|_| TransferError::NotAnExport(expected()))?;
    if header.format != format::FORMAT {
        return Err(TransferError::NotAnExport(expected()));
    }
    if header.version != format::VERSION {
        return Err(TransferError::NotAnExport(format!(
            "line 1: version {} of the export format; this service reads version {}",
            header.version,
            format::VERSION
        )));
    }
    let mut number = 1;
    Ok(std::iter::from_fn(move || {
        loop {
            number += 1;
            let place = format!("line {number}");
            let line = match read_line(&mut input) {
                Ok(Some(line)) => line,
                Ok(None) => return None,
                Err(e) => return Some((place, Err(e.to_string()))),
            };
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let conversation = serde_json::from_slice::<ConversationLine>(&line)
                .map_err(format::InvalidLine::from)
                .and_then(ConversationLine::into_archived)
                .map_err(|e| e.to_string());
            return Some((place, conversation));
        }
    }))
}

/// The next line without its end, or `None` at the end of the input.
fn read_line(input: &mut impl BufRead) -> Result<Option<Vec<u8>>, TransferError> {
    let mut line = Vec::new();
    let read = input
        .by_ref()
        .take(MAX_LINE_BYTES + 1)
        .read_until(b'\n', &mut line)?;
    if read == 0 {
        return Ok(None);
    }
    if line.len() as u64 > MAX_LINE_BYTES {
        return Err(TransferError::NotAnExport(format!(
            "a line is longer than {MAX_LINE_BYTES} bytes"
        )));
    }
    if line.last() == Some(&b'\n') {
        line.pop();
    }
    Ok(Some(line))
}
