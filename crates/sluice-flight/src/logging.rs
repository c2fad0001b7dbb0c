//! Logs of the engine and of Rust stages, in one format.
//!
//! [`init`] logs to stderr: `SLUICE_LOG` is the filter (default `warn`),
//! `SLUICE_LOG_FORMAT=json` makes JSON lines. A JSON line carries, at its top
//! level, `timestamp`, `level`, `target`, `message`, the event's fields, and
//! `trace_id` / `span_id` when it was logged inside a span that names them
//! (the engine opens one per epoch, exchange and commit when it exports
//! traces), so a log line finds its trace.
//!
//! [`forward_stderr`] reads a stage process's stderr line by line into this
//! log, each line tagged with the stage's name.

use std::fmt;

use serde_json::{Map, Value};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// The variable holding the log filter (`warn`, `info`, `sluice=debug`, ...).
pub const ENV_FILTER: &str = "SLUICE_LOG";

/// The variable choosing the format: `json` for JSON lines, else text.
pub const ENV_FORMAT: &str = "SLUICE_LOG_FORMAT";

/// Installs the logger, unless the program installed one already.
pub fn init() {
    let filter = EnvFilter::try_from_env(ENV_FILTER).unwrap_or_else(|_| EnvFilter::new("warn"));
    let json = std::env::var(ENV_FORMAT).as_deref() == Ok("json");
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = if json {
        fmt.event_format(JsonLines).boxed()
    } else {
        fmt.boxed()
    };
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(TraceIds)
        .with(fmt)
        .try_init();
}

/// A span that puts `trace_id` and `span_id` on every line logged inside it.
pub fn span_with_trace_ids(trace_id: &str, span_id: &str) -> tracing::Span {
    // error level, so the ids reach every line a filter lets through at a
    // default of `warn` or more (a filter naming only some targets, with
    // no default, turns the span off, and its lines have no ids)
    tracing::error_span!("trace", trace_id = trace_id, span_id = span_id)
}

/// The ids a span was opened with, kept in its extensions.
#[derive(Debug, Clone, Default)]
struct Ids {
    trace_id: Option<String>,
    span_id: Option<String>,
}

impl Visit for Ids {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "trace_id" => self.trace_id = Some(value.to_string()),
            "span_id" => self.span_id = Some(value.to_string()),
            _ => {}
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.record_str(field, &format!("{value:?}"));
    }
}

/// Keeps the `trace_id` / `span_id` a span was opened with.
struct TraceIds;

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for TraceIds {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut ids = Ids::default();
        attrs.record(&mut ids);
        if ids.trace_id.is_some()
            && let Some(span) = ctx.span(id)
        {
            span.extensions_mut().insert(ids);
        }
    }
}

/// An event's fields as JSON values.
struct Fields<'a>(&'a mut Map<String, Value>);

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_string(), value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_string(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_string(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_string(), value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        // NaN and infinities have no JSON number: they go as text
        let v = serde_json::Number::from_f64(value)
            .map_or_else(|| value.to_string().into(), Value::Number);
        self.0.insert(field.name().to_string(), v);
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().to_string(), format!("{value:?}").into());
    }
}

/// JSON lines with the trace ids at the top (see the module docs).
struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut line = Map::new();
        let mut timestamp = String::new();
        SystemTime.format_time(&mut Writer::new(&mut timestamp))?;
        line.insert("timestamp".into(), timestamp.into());
        let meta = event.metadata();
        line.insert("level".into(), meta.level().as_str().into());
        line.insert("target".into(), meta.target().into());
        event.record(&mut Fields(&mut line));
        // the innermost span that names a trace, unless the line names its own
        if let Some(scope) = ctx.event_scope().filter(|_| !line.contains_key("trace_id")) {
            for span in scope {
                if let Some(ids) = span.extensions().get::<Ids>() {
                    if let Some(t) = &ids.trace_id {
                        line.insert("trace_id".into(), t.clone().into());
                    }
                    if let Some(s) = &ids.span_id {
                        line.insert("span_id".into(), s.clone().into());
                    }
                    break;
                }
            }
        }
        let text = serde_json::to_string(&line).map_err(|_| fmt::Error)?;
        writeln!(writer, "{text}")
    }
}

/// The longest stage stderr line taken as one; a longer one is logged in
/// pieces of this size (nothing is dropped, and a stage cannot make the
/// engine buffer without bound).
const MAX_LINE: usize = 16 * 1024;

/// Logs every line `stderr` gives (a stage process's), tagged `stage`,
/// until it closes. A JSON line (the SDKs' `SLUICE_LOG_FORMAT=json`) gives
/// its level, message and trace ids; a text line its level when it names
/// one (`level=INFO`, ` WARN `); any other line is a warning, so a crash's
/// output is seen under the default filter.
pub async fn forward_stderr(stderr: impl AsyncRead + Unpin, stage: String) {
    let mut reader = BufReader::new(stderr);
    let mut line = Vec::new();
    // a read error ends the stream as its end does: the stage is gone
    while let Ok(buf) = reader.fill_buf().await {
        if buf.is_empty() {
            break;
        }
        let newline = buf.iter().position(|&b| b == b'\n');
        let take = newline.unwrap_or(buf.len());
        let room = MAX_LINE - line.len();
        let used = take.min(room);
        line.extend_from_slice(&buf[..used]);
        let whole = newline.is_some() && used == take;
        reader.consume(if whole { take + 1 } else { used });
        if whole {
            log_stage_line(&stage, &String::from_utf8_lossy(&line));
            line.clear();
        } else if line.len() == MAX_LINE {
            // a piece of a long line ends on a character: the bytes of one
            // cut in two start the next piece, not two replacement marks
            let cut = match std::str::from_utf8(&line) {
                Err(e) if e.error_len().is_none() && e.valid_up_to() > 0 => e.valid_up_to(),
                _ => MAX_LINE,
            };
            log_stage_line(&stage, &String::from_utf8_lossy(&line[..cut]));
            line.drain(..cut);
        }
    }
    if !line.is_empty() {
        log_stage_line(&stage, &String::from_utf8_lossy(&line));
    }
}

/// What one stage log line says.
#[derive(Debug, PartialEq)]
struct StageLine<'a> {
    level: Level,
    message: std::borrow::Cow<'a, str>,
    trace_id: Option<String>,
    span_id: Option<String>,
}

/// The keys of a JSON line that the engine's own line carries otherwise.
const OWN_KEYS: &[&str] = &[
    "timestamp",
    "time",
    "level",
    "target",
    "msg",
    "message",
    "fields",
    "trace_id",
    "span_id",
    // the engine names the stage itself (as the pipeline calls it)
    "stage",
];

fn parse_stage_line(line: &str) -> StageLine<'_> {
    let line = line.strip_suffix('\r').unwrap_or(line);
    if line.starts_with('{')
        && let Ok(Value::Object(o)) = serde_json::from_str::<Value>(line)
    {
        let text = |k: &str| o.get(k).and_then(Value::as_str).map(str::to_string);
        let message = text("msg").or_else(|| text("message")).or_else(|| {
            o.get("fields")
                .and_then(|f| f.get("message"))
                .and_then(Value::as_str)
                .map(str::to_string)
        });
        // the line's other fields (the stage's epoch, the error, ...) follow
        // the message as `key=value`
        let mut fields = String::new();
        for (k, v) in &o {
            if !OWN_KEYS.contains(&k.as_str()) {
                let v = v.as_str().map_or_else(|| v.to_string(), str::to_string);
                fields.push_str(&format!(" {k}={v}"));
            }
        }
        return StageLine {
            level: text("level")
                .and_then(|l| level_named(&l))
                .unwrap_or(Level::WARN),
            // the whole line when it has no message: its fields are the message
            message: match message {
                Some(m) => format!("{m}{fields}").into(),
                None => line.into(),
            },
            trace_id: text("trace_id"),
            span_id: text("span_id"),
        };
    }
    let level = line
        .split_whitespace()
        .take(4)
        .find_map(|w| level_named(w.strip_prefix("level=").unwrap_or(w)))
        .unwrap_or(Level::WARN);
    StageLine {
        level,
        message: line.into(),
        trace_id: None,
        span_id: None,
    }
}

fn level_named(name: &str) -> Option<Level> {
    Some(match name.to_ascii_uppercase().as_str() {
        "ERROR" | "FATAL" | "PANIC" => Level::ERROR,
        "WARN" | "WARNING" => Level::WARN,
        "INFO" => Level::INFO,
        "DEBUG" => Level::DEBUG,
        "TRACE" => Level::TRACE,
        _ => return None,
    })
}

fn log_stage_line(stage: &str, raw: &str) {
    let line = parse_stage_line(raw);
    if line.message.trim().is_empty() {
        return;
    }
    // the ids as the line's own fields (the JSON format puts them at the
    // top): a span would be subject to the filter, and cost one per line
    let (message, trace_id, span_id) = (
        &*line.message,
        line.trace_id.as_deref(),
        line.span_id.as_deref(),
    );
    match line.level {
        Level::ERROR => {
            tracing::error!(target: "sluice::stage", stage, trace_id, span_id, "{message}")
        }
        Level::WARN => {
            tracing::warn!(target: "sluice::stage", stage, trace_id, span_id, "{message}")
        }
        Level::INFO => {
            tracing::info!(target: "sluice::stage", stage, trace_id, span_id, "{message}")
        }
        Level::DEBUG => {
            tracing::debug!(target: "sluice::stage", stage, trace_id, span_id, "{message}")
        }
        _ => tracing::trace!(target: "sluice::stage", stage, trace_id, span_id, "{message}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage_lines_give_their_level_message_and_trace() {
        let go = r#"{"time":"2026-12-02T04:00:00Z","level":"INFO","msg":"exchange failed","epoch":3,"error":"no good","trace_id":"4bf92f3577b34da6a3ce929d0e0e4736","span_id":"00f067aa0ba902b7"}"#;
        let l = parse_stage_line(go);
        assert_eq!(
            (l.level, &*l.message),
            (Level::INFO, "exchange failed epoch=3 error=no good"),
            "the line's own fields follow its message"
        );
        assert_eq!(
            l.trace_id.as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(l.span_id.as_deref(), Some("00f067aa0ba902b7"));
        let rust =
            r#"{"timestamp":"x","level":"WARN","target":"t","message":"spans are not exported"}"#;
        assert_eq!(parse_stage_line(rust).level, Level::WARN);
        assert_eq!(parse_stage_line(rust).message, "spans are not exported");
        let text = "time=2026-12-02T04:00:00Z level=DEBUG msg=\"exchange flushed\"";
        assert_eq!(parse_stage_line(text).level, Level::DEBUG);
        assert_eq!(
            parse_stage_line("2026-12-02T04:00:00Z  ERROR stage: boom\r").level,
            Level::ERROR
        );
        assert_eq!(
            parse_stage_line("2026-12-02T04:00:00Z  ERROR stage: boom\r").message,
            "2026-12-02T04:00:00Z  ERROR stage: boom"
        );
        // anything else (a panic, a stack trace) is a warning, kept whole
        let panic = "thread 'main' panicked at src/main.rs:3:5: information";
        assert_eq!(parse_stage_line(panic).level, Level::WARN);
        assert_eq!(parse_stage_line(panic).message, panic);
        // JSON that is not an object, or is cut, is text
        assert_eq!(parse_stage_line("[1,2]").message, "[1,2]");
        assert_eq!(
            parse_stage_line(r#"{"level":"INFO","msg":"cut"#).level,
            Level::WARN
        );
    }

    /// Forwards `input` and returns the lines the forwarder logged.
    fn forwarded(input: Vec<u8>) -> Vec<String> {
        use std::sync::{Arc, Mutex};
        #[derive(Clone, Default)]
        struct Sink(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Sink {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let sink = Sink::default();
        let writer = sink.clone();
        let subscriber = tracing_subscriber::registry().with(TraceIds).with(
            tracing_subscriber::fmt::layer()
                .event_format(JsonLines)
                .with_writer(move || writer.clone()),
        );
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        tracing::subscriber::with_default(subscriber, || {
            rt.block_on(forward_stderr(&input[..], "valid".into()));
        });
        let out = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        out.lines().map(str::to_string).collect()
    }

    #[test]
    fn every_byte_of_a_stages_stderr_reaches_the_log_in_lines_of_bounded_size() {
        let long = "x".repeat(MAX_LINE * 2 + 5);
        let mut input = format!("first\n{long}\n").into_bytes();
        input.extend_from_slice(b"\xff\xfebinary\nlast without newline");
        let lines = forwarded(input);
        let parsed: Vec<Value> = lines
            .iter()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let messages: Vec<&str> = parsed
            .iter()
            .map(|v| v["message"].as_str().unwrap())
            .collect();
        assert_eq!(messages[0], "first");
        assert_eq!(
            messages[1..4].concat(),
            long,
            "the long line is cut, not lost"
        );
        assert!(messages[1..4].iter().all(|m| m.len() <= MAX_LINE));
        assert_eq!(messages[4], "\u{fffd}\u{fffd}binary");
        assert_eq!(messages[5], "last without newline");
        assert_eq!(messages.len(), 6);
        assert!(
            parsed
                .iter()
                .all(|v| v["stage"] == "valid" && v["target"] == "sluice::stage")
        );
    }

    #[test]
    fn a_long_line_is_cut_between_characters() {
        // one byte, then 2-byte characters: a piece of MAX_LINE bytes ends inside one
        let long = format!("x{}", "é".repeat(MAX_LINE));
        let lines = forwarded(format!("{long}\n").into_bytes());
        let pieces: Vec<String> = lines
            .iter()
            .map(|l| {
                serde_json::from_str::<Value>(l).unwrap()["message"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert_eq!(pieces.concat(), long, "no character is lost or replaced");
    }

    #[test]
    fn json_lines_carry_the_trace_ids_of_the_span_they_were_logged_in() {
        let line = r#"{"level":"ERROR","msg":"exchange failed","trace_id":"4bf92f3577b34da6a3ce929d0e0e4736","span_id":"00f067aa0ba902b7"}"#;
        let lines = forwarded(format!("{line}\nplain\n").into_bytes());
        let first: Value = serde_json::from_str(&lines[0]).unwrap();
        assert_eq!(first["level"], "ERROR");
        assert_eq!(first["message"], "exchange failed");
        assert_eq!(first["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(first["span_id"], "00f067aa0ba902b7");
        let second: Value = serde_json::from_str(&lines[1]).unwrap();
        assert!(second.get("trace_id").is_none(), "{second}");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

        #[test]
        fn any_stderr_is_forwarded_as_json_lines_of_bounded_size(
            input in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40_000)
        ) {
            for l in forwarded(input) {
                let v: Value = serde_json::from_str(&l).unwrap();
                proptest::prop_assert_eq!(&v["stage"], "valid");
                // a cut multi-byte character may grow by its replacement
                proptest::prop_assert!(v["message"].as_str().unwrap().len() <= MAX_LINE * 3);
            }
        }

        #[test]
        fn text_lines_arrive_whole_and_in_order(
            lines in proptest::collection::vec("[ -z|~]{0,200}", 0..50)
        ) {
            let input = lines.join("\n").into_bytes();
            let got: Vec<String> = forwarded(input)
                .iter()
                .map(|l| serde_json::from_str::<Value>(l).unwrap()["message"].as_str().unwrap().to_string())
                .collect();
            let want: Vec<&String> = lines.iter().filter(|l| !l.trim().is_empty()).collect();
            proptest::prop_assert_eq!(got.iter().collect::<Vec<_>>(), want);
        }
    }
}
