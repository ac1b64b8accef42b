//! JSON log lines, written straight into the line's buffer: each event's fields at the top
//! level and, under `span`, the request's span, whose fields are rendered once, as they are
//! recorded, and copied into each line as they are.
//!
//! `tracing-subscriber`'s own JSON format keeps a span's fields as a JSON object that it parses
//! back for every line logged inside the span and for every field recorded on it, and writes
//! through `serde_json` one character at a time: under callgrind, three lines a turn cost the
//! service more instructions than anything else a turn does. The lines are the same shape.

use std::fmt::{self, Write as _};

use chrono::{SecondsFormat, Utc};
use tracing::{
    Event, Subscriber,
    field::{Field, Visit},
    span,
};
use tracing_subscriber::{
    field::RecordFields,
    fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields, format::Writer},
    registry::{LookupSpan, SpanRef},
};

use super::RPC_SPAN;

/// A span's fields as the members of a JSON object, without its braces, so that fields
/// recorded later are appended and a line copies them as they are.
#[derive(Debug, Default, Clone, Copy)]
pub struct JsonMembers;

impl<'writer> FormatFields<'writer> for JsonMembers {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'writer>, fields: R) -> fmt::Result {
        let mut members = Members::new(writer, true);
        fields.record(&mut members);
        members.result
    }

    fn add_fields(
        &self,
        current: &'writer mut FormattedFields<Self>,
        fields: &span::Record<'_>,
    ) -> fmt::Result {
        let first = current.fields.is_empty();
        let mut members = Members::new(current.as_writer(), first);
        fields.record(&mut members);
        members.result
    }
}

/// One line per event: `timestamp`, `level`, the event's fields (its text as `message`),
/// `target`, and its request's span, with its fields and `name`.
#[derive(Debug, Default, Clone, Copy)]
pub struct JsonLines;

impl<S> FormatEvent<S, JsonMembers> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, JsonMembers>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        writer.write_str("{\"timestamp\":\"")?;
        writer.write_str(&Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true))?;
        writer.write_str("\",\"level\":\"")?;
        writer.write_str(meta.level().as_str())?;
        writer.write_char('"')?;
        let mut members = Members::new(writer.by_ref(), false);
        event.record(&mut members);
        members.result?;
        writer.write_str(",\"target\":")?;
        string(&mut writer, meta.target())?;
        if let Some(span) = shown_span(ctx) {
            writer.write_str(",\"span\":{")?;
            if let Some(fields) = span.extensions().get::<FormattedFields<JsonMembers>>()
                && !fields.fields.is_empty()
            {
                writer.write_str(&fields.fields)?;
                writer.write_char(',')?;
            }
            writer.write_str("\"name\":")?;
            string(&mut writer, span.name())?;
            writer.write_char('}')?;
        }
        writer.write_str("}\n")
    }
}

/// The span a line shows: its request's, or, outside any request, the innermost.
fn shown_span<'a, S>(ctx: &'a FmtContext<'_, S, JsonMembers>) -> Option<SpanRef<'a, S>>
where
    S: Subscriber + for<'l> LookupSpan<'l>,
{
    let mut innermost = None;
    for span in ctx.event_scope()? {
        if span.name() == RPC_SPAN {
            return Some(span);
        }
        innermost.get_or_insert(span);
    }
    innermost
}

/// Writes fields as `"name":value` members, after a comma unless they are the first.
struct Members<'a> {
    out: Writer<'a>,
    first: bool,
    result: fmt::Result,
}

impl<'a> Members<'a> {
    fn new(out: Writer<'a>, first: bool) -> Self {
        Self {
            out,
            first,
            result: Ok(()),
        }
    }

    fn member(&mut self, field: &Field, value: impl FnOnce(&mut Writer<'a>) -> fmt::Result) {
        if self.result.is_err() {
            return;
        }
        self.result = (|| {
            if !std::mem::take(&mut self.first) {
                self.out.write_char(',')?;
            }
            string(&mut self.out, field.name())?;
            self.out.write_char(':')?;
            value(&mut self.out)
        })();
    }
}

impl Visit for Members<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.member(field, |out| {
            out.write_char('"')?;
            write!(Escaping(out), "{value:?}")?;
            out.write_char('"')
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
            out.write_str(if value { "true" } else { "false" })
        });
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        // JSON has no NaN or infinity; `Debug` keeps a fraction or an exponent, as JSON allows.
        self.member(field, |out| {
            if value.is_finite() {
                write!(out, "{value:?}")
            } else {
                out.write_str("null")
            }
        });
    }
}

/// `text` as a JSON string.
fn string(out: &mut Writer<'_>, text: &str) -> fmt::Result {
    out.write_char('"')?;
    Escaping(out).write_str(text)?;
    out.write_char('"')
}

/// Passes text on with what JSON forbids inside a string escaped: quotes, backslashes and
/// control characters. Runs of other text are passed on whole.
struct Escaping<'a, 'w>(&'a mut Writer<'w>);

impl fmt::Write for Escaping<'_, '_> {
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
            self.0.write_str(&text[plain..at])?;
            if escaped.is_empty() {
                write!(self.0, "\\u{byte:04x}")?;
            } else {
                self.0.write_str(escaped)?;
            }
            plain = at + 1;
        }
        self.0.write_str(&text[plain..])
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
        assert_eq!(
            lines[1]["span"],
            json!({"db.operation.name": "UPDATE", "name": "db"})
        );
    }
}
