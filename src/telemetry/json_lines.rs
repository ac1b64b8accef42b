//! JSON log lines, written straight into a line's buffer: each event's fields at the top level
//! and, under `span`, the request's span, whose fields are rendered once, as they are recorded,
//! and copied into each line as they are.
//!
//! `tracing-subscriber`'s own JSON format keeps every span's fields as a JSON object that it
//! parses back for every line logged inside the span and for every field recorded on it, and
//! writes through `serde_json`: under callgrind, three lines a turn cost the service more
//! instructions than anything else a turn does. Its layer also renders the fields of every span,
//! the database's and the model's too, for lines that show one. This layer renders only the
//! request's.

use std::{
    cell::RefCell,
    fmt::{self, Write as _},
    io::Write as _,
};

use chrono::{SecondsFormat, Utc};
use tracing::{
    Event, Subscriber,
    field::{Field, Visit},
    span,
};
use tracing_subscriber::{
    fmt::MakeWriter,
    layer::{Context, Layer},
    registry::{LookupSpan, SpanRef},
};

use super::RPC_SPAN;

/// The layer that writes one JSON line per event to its writer.
pub struct JsonLines<W> {
    writer: W,
}

impl<W> JsonLines<W> {
    pub fn new(writer: W) -> Self {
        Self { writer }
    }
}

/// The request span's fields as the members of a JSON object, without its braces.
struct RequestFields(String);

/// The most a thread keeps of the buffer lines are written in: one long line does not hold its
/// size for good.
const LINE_KEPT: usize = 16 * 1024;

thread_local! {
    static LINE: RefCell<String> = const { RefCell::new(String::new()) };
}

impl<S, W> Layer<S> for JsonLines<W>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + 'static,
{
    fn on_new_span(&self, attrs: &span::Attributes<'_>, id: &span::Id, ctx: Context<'_, S>) {
        if attrs.metadata().name() != RPC_SPAN {
            return;
        }
        let Some(span) = ctx.span(id) else {
            return;
        };
        let mut fields = String::new();
        let mut members = Members::new(&mut fields, true);
        attrs.record(&mut members);
        span.extensions_mut().insert(RequestFields(fields));
    }

    fn on_record(&self, id: &span::Id, values: &span::Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else {
            return;
        };
        let mut extensions = span.extensions_mut();
        if let Some(RequestFields(fields)) = extensions.get_mut::<RequestFields>() {
            let first = fields.is_empty();
            values.record(&mut Members::new(fields, first));
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let log = |line: &mut String| {
            line.clear();
            if write_line(line, event, shown_span(event, &ctx)).is_ok() {
                // A log line that cannot be written has nowhere else to go.
                let _ = self
                    .writer
                    .make_writer_for(event.metadata())
                    .write_all(line.as_bytes());
            }
        };
        // The thread's buffer is gone while the thread exits (a value dropped then may log):
        // a buffer of the line's own then, as when it is somehow in use already.
        let reused = LINE.try_with(|buffer| {
            let Ok(mut line) = buffer.try_borrow_mut() else {
                return false;
            };
            log(&mut line);
            if line.capacity() > LINE_KEPT {
                *line = String::new();
            }
            true
        });
        if reused != Ok(true) {
            log(&mut String::new());
        }
    }
}

/// One line: `timestamp`, `level`, the event's fields (its text as `message`), `target`, and
/// `span`, with the request span's fields and its `name`.
fn write_line<S>(line: &mut String, event: &Event<'_>, span: Option<SpanRef<'_, S>>) -> fmt::Result
where
    S: for<'a> LookupSpan<'a>,
{
    let meta = event.metadata();
    line.push_str("{\"timestamp\":\"");
    line.push_str(&Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true));
    line.push_str("\",\"level\":\"");
    line.push_str(meta.level().as_str());
    line.push('"');
    let mut members = Members::new(line, false);
    event.record(&mut members);
    members.result?;
    line.push_str(",\"target\":");
    string(line, meta.target())?;
    if let Some(span) = span {
        line.push_str(",\"span\":{");
        if let Some(RequestFields(fields)) = span.extensions().get::<RequestFields>()
            && !fields.is_empty()
        {
            line.push_str(fields);
            line.push(',');
        }
        line.push_str("\"name\":");
        string(line, span.name())?;
        line.push('}');
    }
    line.push_str("}\n");
    Ok(())
}

/// The span a line shows: its request's, or, outside any request, the innermost (by name only).
fn shown_span<'a, S>(event: &Event<'_>, ctx: &'a Context<'_, S>) -> Option<SpanRef<'a, S>>
where
    S: Subscriber + for<'l> LookupSpan<'l>,
{
    let mut innermost = None;
    for span in ctx.event_scope(event)? {
        if span.name() == RPC_SPAN {
            return Some(span);
        }
        innermost.get_or_insert(span);
    }
    innermost
}

/// Writes fields as `"name":value` members, after a comma unless they are the first.
struct Members<'a> {
    out: &'a mut String,
    first: bool,
    result: fmt::Result,
}

impl<'a> Members<'a> {
    fn new(out: &'a mut String, first: bool) -> Self {
        Self {
            out,
            first,
            result: Ok(()),
        }
    }

    fn member(&mut self, field: &Field, value: impl FnOnce(&mut String) -> fmt::Result) {
        if self.result.is_err() {
            return;
        }
        if !std::mem::take(&mut self.first) {
            self.out.push(',');
        }
        self.result = string(self.out, field.name())
            .and_then(|()| self.out.write_char(':'))
            .and_then(|()| value(self.out));
    }
}

impl Visit for Members<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.member(field, |out| {
            out.push('"');
            write!(Escaping(out), "{value:?}")?;
            out.push('"');
            Ok(())
        });
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.member(field, |out| string(out, value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.member(field, |out| write!(out, "{value}"));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.member(field, |out| write!(out, "{value}"));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.member(field, |out| {
            out.push_str(if value { "true" } else { "false" });
            Ok(())
        });
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        // JSON has no NaN or infinity; `Debug` keeps a fraction or an exponent, as JSON allows.
        self.member(field, |out| {
            if value.is_finite() {
                write!(out, "{value:?}")
            } else {
                out.push_str("null");
                Ok(())
            }
        });
    }
}

/// `text` as a JSON string.
fn string(out: &mut String, text: &str) -> fmt::Result {
    out.push('"');
    Escaping(out).write_str(text)?;
    out.push('"');
    Ok(())
}

/// Passes text on with what JSON forbids inside a string escaped: quotes, backslashes and
/// control characters. Runs of other text are passed on whole.
struct Escaping<'a>(&'a mut String);

impl fmt::Write for Escaping<'_> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        let mut plain = 0;
        for (at, byte) in text.bytes().enumerate() {
            let escaped = match byte {
                b'"' => "\\\"",
                b'\\' => "\\\\",
                b'\n' => "\\n",
                b'\r' => "\\r",
                b'\t' => "\\t",
                0..=0x1f => "",
                _ => continue,
            };
            self.0.push_str(&text[plain..at]);
            if escaped.is_empty() {
                write!(self.0, "\\u{byte:04x}")?;
            } else {
                self.0.push_str(escaped);
            }
            plain = at + 1;
        }
        self.0.push_str(&text[plain..]);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use serde_json::{Value, json};
    use tracing_subscriber::{layer::SubscriberExt, registry};

    use super::*;
    use crate::telemetry::json_logs;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// The lines `log` writes, parsed.
    fn lines(log: impl FnOnce()) -> Vec<Value> {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = registry().with(json_logs(move || writer.clone()));
        tracing::subscriber::with_default(subscriber, log);
        let bytes = captured.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
        String::from_utf8(bytes)
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{line}: {e}")))
            .collect()
    }

    #[test]
    fn a_line_has_its_fields_and_the_request_span_it_was_logged_in() {
        let lines = lines(|| {
            let rpc = tracing::info_span!(
                RPC_SPAN,
                request_id = "r-1",
                rpc.method = "SendMessage",
                rpc.grpc.status_code = tracing::field::Empty,
            );
            let _rpc = rpc.enter();
            rpc.record("rpc.grpc.status_code", 5);
            let db = tracing::info_span!("db", db.operation.name = "INSERT");
            let _db = db.enter();
            tracing::warn!(
                attempt = 2_u64,
                offset = -3_i64,
                ratio = 0.5,
                huge = f64::INFINITY,
                done = true,
                error = %"a \"quoted\"\nline\u{1}\\",
                kind = ?Some("x"),
                "storing failed"
            );
        });
        assert_eq!(lines.len(), 1);
        let mut line = lines[0].clone();
        let timestamp = line["timestamp"].take();
        let parsed = chrono::DateTime::parse_from_rfc3339(timestamp.as_str().unwrap());
        assert!(parsed.is_ok(), "{timestamp}");
        assert_eq!(
            line,
            json!({
                "timestamp": null,
                "level": "WARN",
                "message": "storing failed",
                "attempt": 2,
                "offset": -3,
                "ratio": 0.5,
                "huge": null,
                "done": true,
                "error": "a \"quoted\"\nline\u{1}\\",
                "kind": "Some(\"x\")",
                "target": "chat_service::telemetry::json_lines::tests",
                "span": {
                    "request_id": "r-1",
                    "rpc.method": "SendMessage",
                    "rpc.grpc.status_code": 5,
                    "name": "rpc",
                },
            })
        );
    }

    #[test]
    fn a_line_outside_a_request_shows_its_innermost_span_or_none() {
        let lines = lines(|| {
            tracing::info!("started");
            let lease = tracing::info_span!("lease", replica = "a");
            let _lease = lease.enter();
            let db = tracing::info_span!("db", db.operation.name = "UPDATE");
            let _db = db.enter();
            tracing::info!("lease renewed");
        });
        assert_eq!(lines.len(), 2);
        assert!(lines[0].get("span").is_none(), "{:?}", lines[0]);
        // Only the request's span keeps its fields for log lines.
        assert_eq!(lines[1]["span"], json!({"name": "db"}));
    }
}
