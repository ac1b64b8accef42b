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

/// The most a buffer keeps between events: a usual event is a few hundred bytes, and one of up
/// to the limit is held only while it is read.
const KEPT_BYTES: usize = 16 * 1024;

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
        while let Some(end) = memchr::memchr2(b'\n', b'\r', bytes) {
            self.check_room(end)?;
            if self.line.is_empty() {
                // The usual case: the whole line is in this read, and is read where it lies.
                self.take_line(&bytes[..end], events);
            } else {
                self.line.extend_from_slice(&bytes[..end]);
                let line = std::mem::take(&mut self.line);
                self.take_line(&line, events);
                // Kept for the next line that spans two reads, so that such a stream allocates
                // nothing more.
                if line.capacity() <= KEPT_BYTES {
                    self.line = line;
                    self.line.clear();
                }
            }
            let crlf = bytes[end] == b'\r' && bytes.get(end + 1) == Some(&b'\n');
            if bytes[end] == b'\r' && end + 1 == bytes.len() {
                self.after_cr = true;
            }
            bytes = &bytes[end + if crlf { 2 } else { 1 }..];
        }
        self.check_room(bytes.len())?;
        self.line.extend_from_slice(bytes);
        Ok(())
    }

    /// Whether bytes of an event that never ended are held: at the end of the body they are
    /// dropped, as the standard says.
    pub(super) fn holds_partial_event(&self) -> bool {
        !self.line.is_empty() || !self.data.is_empty()
    }

    /// Refuses `more` bytes of the event being read, and forgets what it held, if they would
    /// take it past the limit.
    fn check_room(&mut self, more: usize) -> Result<(), EventTooLarge> {
        let held = self.line.len() + self.data.len();
        if held.saturating_add(more) > self.max_event_bytes {
            self.line = Vec::new();
            self.data = Vec::new();
            return Err(EventTooLarge);
        }
        Ok(())
    }

    /// One whole line, without its end.
    fn take_line(&mut self, mut line: &[u8], events: &mut VecDeque<String>) {
        if !std::mem::replace(&mut self.started, true) {
            line = line.strip_prefix(BYTE_ORDER_MARK).unwrap_or(line);
        }
        if line.is_empty() {
            self.dispatch(events);
            return;
        }
        let (field, value) = match memchr::memchr(b':', line) {
            Some(0) => return,
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &[][..]),
        };
        if field == b"data" {
            self.data.extend_from_slice(value);
            self.data.push(b'\n');
        }
    }

    fn dispatch(&mut self, events: &mut VecDeque<String>) {
        let Some((b'\n', data)) = self.data.split_last() else {
            return;
        };
        // A string of the event's own size; the buffer stays, grown to the largest event, so
        // that reading a stream allocates once an event.
        events.push_back(String::from_utf8_lossy(data).into_owned());
        self.data.clear();
        if self.data.capacity() > KEPT_BYTES {
            self.data = Vec::new();
        }
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
    fn how_the_body_is_split_into_reads_changes_nothing() {
        let body =
            "\u{feff}data: {\"a\":1}\r\n: ping\r\n\r\ndata: x\rdata:y\r\rdata: \u{e9}t\u{e9}\n\n";
        let whole = decode(&[body.as_bytes()]);
        assert_eq!(
            whole,
            Ok(vec![
                "{\"a\":1}".to_owned(),
                "x\ny".to_owned(),
                "\u{e9}t\u{e9}".to_owned()
            ])
        );
        let bytes = body.as_bytes();
        for at in 0..=bytes.len() {
            assert_eq!(
                decode(&[&bytes[..at], &bytes[at..]]),
                whole,
                "split at {at}"
            );
        }
        let one_by_one: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(decode(&one_by_one), whole);
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
