//! Server-sent events, decoded from a response body's bytes as they arrive, as the HTML
//! standard's event-stream format defines them: lines end with CRLF, LF or CR (also across two
//! reads), `data:` lines of one event are joined with LF, a blank line ends the event, lines that
//! start with `:` are comments, and a byte-order mark at the very start is skipped. Only the data
//! is kept: the Chat Completions stream names no event types and needs no ids.

use std::collections::VecDeque;

/// An event, or a line of one, longer than the decoder accepts; nothing of it was kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct EventTooLarge;

#[derive(Debug)]
pub(super) struct SseDecoder {
    /// The line being read, without its end.
    line: Vec<u8>,
    /// The data of the event being read: each `data:` line's value followed by LF.
    data: Vec<u8>,
    /// The last line ended with CR, so an LF that comes next is part of that end.
    after_cr: bool,
    /// Whether a line has been read: a byte-order mark may only start the first.
    started: bool,
    max_event_bytes: usize,
}

const BYTE_ORDER_MARK: &[u8] = "\u{feff}".as_bytes();

impl SseDecoder {
    /// A decoder that refuses an event whose lines take more than `max_event_bytes` together.
    pub(super) fn new(max_event_bytes: usize) -> Self {
        Self {
            line: Vec::new(),
            data: Vec::new(),
            after_cr: false,
            started: false,
            max_event_bytes,
        }
    }

    /// Reads the next bytes of the body and appends the data of each event they complete to
    /// `events`. An invalid UTF-8 sequence becomes U+FFFD, as the standard decodes it.
    pub(super) fn push(
        &mut self,
        mut bytes: &[u8],
        events: &mut VecDeque<String>,
    ) -> Result<(), EventTooLarge> {
        if bytes.is_empty() {
            return Ok(());
        }
        if self.after_cr && bytes.first() == Some(&b'\n') {
            bytes = &bytes[1..];
        }
        self.after_cr = false;
        while let Some(end) = bytes.iter().position(|&b| b == b'\n' || b == b'\r') {
            self.extend_line(&bytes[..end])?;
            self.end_line(events);
            let crlf = bytes[end] == b'\r' && bytes.get(end + 1) == Some(&b'\n');
            if bytes[end] == b'\r' && end + 1 == bytes.len() {
                self.after_cr = true;
            }
            bytes = &bytes[end + if crlf { 2 } else { 1 }..];
        }
        self.extend_line(bytes)
    }

    /// Whether bytes of an event that never ended are held: at the end of the body they are
    /// dropped, as the standard says.
    pub(super) fn holds_partial_event(&self) -> bool {
        !self.line.is_empty() || !self.data.is_empty()
    }

    fn extend_line(&mut self, bytes: &[u8]) -> Result<(), EventTooLarge> {
        let held = self.line.len() + self.data.len();
        if held.saturating_add(bytes.len()) > self.max_event_bytes {
            self.line = Vec::new();
            self.data = Vec::new();
            return Err(EventTooLarge);
        }
        self.line.extend_from_slice(bytes);
        Ok(())
    }

    fn end_line(&mut self, events: &mut VecDeque<String>) {
        let mut line = std::mem::take(&mut self.line);
        if !std::mem::replace(&mut self.started, true) && line.starts_with(BYTE_ORDER_MARK) {
            line.drain(..BYTE_ORDER_MARK.len());
        }
        if line.is_empty() {
            self.dispatch(events);
            return;
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(0) => return,
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (&line[..], &[][..]),
        };
        if field == b"data" {
            self.data.extend_from_slice(value);
            self.data.push(b'\n');
        }
        // The line's buffer is kept for the next line, so that a steady stream allocates nothing.
        line.clear();
        self.line = line;
    }

    fn dispatch(&mut self, events: &mut VecDeque<String>) {
        if self.data.is_empty() {
            return;
        }
        let mut data = std::mem::take(&mut self.data);
        data.pop();
        events.push_back(match String::from_utf8(data) {
            Ok(text) => text,
            Err(invalid) => String::from_utf8_lossy(invalid.as_bytes()).into_owned(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(pieces: &[&[u8]]) -> Result<Vec<String>, EventTooLarge> {
        let mut decoder = SseDecoder::new(64);
        let mut events = VecDeque::new();
        for piece in pieces {
            decoder.push(piece, &mut events)?;
        }
        Ok(events.into())
    }

    #[test]
    fn events_end_at_a_blank_line_whatever_ends_the_lines() {
        let expected = vec!["a".to_owned(), "b".to_owned(), "c".to_owned()];
        assert_eq!(
            decode(&[b"data: a\n\ndata: b\r\n\r\ndata: c\r\r"]),
            Ok(expected.clone())
        );
        // Each line end split between two reads.
        assert_eq!(
            decode(&[b"data: a\n", b"\ndata: b\r", b"\n\r", b"\ndata: c\r", b"\r"]),
            Ok(expected)
        );
    }

    #[test]
    fn a_cr_then_an_lf_in_the_next_read_is_one_line_end() {
        // Were the LF a second end, the blank line would dispatch "a" before "b" joined it.
        assert_eq!(
            decode(&[b"data: a\r", b"", b"\ndata: b\n\n"]),
            Ok(vec!["a\nb".to_owned()])
        );
    }

    #[test]
    fn data_lines_join_and_other_fields_and_comments_are_ignored() {
        assert_eq!(
            decode(&[b": keep-alive\nevent: x\nid: 7\ndata:one\ndata:  two\ndata\n\n"]),
            Ok(vec!["one\n two\n".to_owned()])
        );
    }

    #[test]
    fn an_event_without_data_is_not_dispatched_and_an_unfinished_one_is_held() {
        let mut decoder = SseDecoder::new(64);
        let mut events = VecDeque::new();
        decoder
            .push(b"event: ping\n\ndata: half", &mut events)
            .unwrap();
        assert!(events.is_empty());
        assert!(decoder.holds_partial_event());
    }

    #[test]
    fn a_byte_order_mark_is_skipped_only_at_the_start() {
        let bom = "\u{feff}";
        let body = format!("{bom}data: a\n\n{bom}data: b\n\n");
        assert_eq!(decode(&[body.as_bytes()]), Ok(vec!["a".to_owned()]));
    }

    #[test]
    fn invalid_utf8_becomes_the_replacement_character() {
        assert_eq!(
            decode(&[b"data: \xff!\n\n"]),
            Ok(vec!["\u{fffd}!".to_owned()])
        );
    }

    #[test]
    fn an_event_longer_than_the_limit_is_refused_even_in_small_reads() {
        let line = [b'x'; 40];
        assert_eq!(
            decode(&[b"data: ", &line, b"\n", b"data: ", &line]),
            Err(EventTooLarge)
        );
        assert_eq!(
            decode(&[b"data: ", &line, b"\n\ndata: ", &line, b"\n\n"]).map(|e| e.len()),
            Ok(2)
        );
    }
}
