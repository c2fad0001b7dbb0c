//! The `parse` example stage in Rust: a CPU-bound stage that parses access
//! log lines with a regular expression into id, ip, time, method, path,
//! status and bytes. Its Go twin is `sdk/go/examples/parse`; both follow
//! examples/stages/README.md, and docs/stages.md ("Go or Rust?") measures
//! the two.
//!
//! ```text
//! SLUICE_STAGE_SOCKET=/tmp/parse.sock cargo run -p sluice-flight --example parse
//! ```

#[path = "common/lines.rs"]
mod lines;

use std::sync::Arc;

use arrow_array::builder::{Int32Builder, Int64Builder, StringBuilder};
use arrow_array::cast::AsArray;
use arrow_array::types::Int64Type;
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use regex::Regex;
use serde::Deserialize;
use sluice_contract::ErrorCode;
use sluice_flight::manifest::{ErrorSemantics, Ordering};
use sluice_flight::{
    Manifest, OpenRequest, Processed, Processor, RowError, Stage, StageError, serve,
};

/// The format, in the syntax Rust's regex crate and Go's regexp share (both
/// RE2): ip, two ignored fields, [time], "method path protocol", status, bytes.
const ACCESS_LINE: &str =
    r#"^(\S+) \S+ \S+ \[([^\]]+)\] "([A-Z]+) (\S+) HTTP/[0-9.]+" ([0-9]{3}) ([0-9]+|-)$"#;

fn input_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("line", DataType::Utf8, false),
    ]))
}

fn output_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("ip", DataType::Utf8, false),
        Field::new("time", DataType::Utf8, false),
        Field::new("method", DataType::Utf8, false),
        Field::new("path", DataType::Utf8, false),
        Field::new("status", DataType::Int32, false),
        Field::new("bytes", DataType::Int64, true),
    ]))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NoConfig {}

struct Parse;

#[async_trait::async_trait]
impl Stage for Parse {
    fn manifest(&self) -> Manifest {
        let mut m = Manifest::new("parse", "1.0.0");
        m.input_schema = Some(lines::decl("log_lines", input_schema()));
        m.output_schema = Some(lines::decl("access_log", output_schema()));
        m.ordering = Ordering::Preserve;
        m.errors = ErrorSemantics::Row;
        m
    }

    async fn open(&self, request: &OpenRequest) -> Result<Box<dyn Processor>, StageError> {
        if !request.config.is_null() {
            let _: NoConfig = serde_json::from_value(request.config.clone()).map_err(|e| {
                StageError::new(
                    ErrorCode::InvalidArgument,
                    format!("config of stage `{}`: {e}", request.stage),
                )
            })?;
        }
        let regex = Regex::new(ACCESS_LINE)
            .map_err(|e| StageError::new(ErrorCode::Internal, e.to_string()))?;
        Ok(Box::new(Run {
            locations: regex.capture_locations(),
            regex,
            schema: output_schema(),
        }))
    }
}

struct Run {
    regex: Regex,
    /// Reused for every line: matching allocates nothing.
    locations: regex::CaptureLocations,
    schema: SchemaRef,
}

/// The output columns being built.
struct Columns {
    id: Int64Builder,
    text: [StringBuilder; 4],
    status: Int32Builder,
    bytes: Int64Builder,
}

impl Run {
    /// Appends the parsed `line` to `out`, or says why it cannot.
    fn parse(&mut self, out: &mut Columns, id: i64, line: &str) -> Result<(), String> {
        if self
            .regex
            .captures_read(&mut self.locations, line)
            .is_none()
        {
            return Err("not an access log line".into());
        }
        let group = |g: usize| {
            let (s, e) = self.locations.get(g).unwrap_or_default();
            &line[s..e]
        };
        let sent = group(6);
        let bytes = match sent {
            "-" => None,
            digits => Some(
                digits
                    .parse::<i64>()
                    .map_err(|_| format!("bytes {digits} do not fit an int64"))?,
            ),
        };
        // three digits: always fits
        let status = group(5).parse::<i32>().unwrap_or_default();
        out.id.append_value(id);
        for (g, b) in out.text.iter_mut().enumerate() {
            b.append_value(group(g + 1));
        }
        out.status.append_value(status);
        out.bytes.append_option(bytes);
        Ok(())
    }
}

#[async_trait::async_trait]
impl Processor for Run {
    async fn process(&mut self, batch: RecordBatch) -> Result<Processed, StageError> {
        let ids = batch.column(0).as_primitive::<Int64Type>();
        let lines = batch.column(1).as_string::<i32>();
        let n = batch.num_rows();
        let text_bytes = lines.value_data().len();
        let mut out = Columns {
            id: Int64Builder::with_capacity(n),
            text: std::array::from_fn(|_| StringBuilder::with_capacity(n, text_bytes / 4)),
            status: Int32Builder::with_capacity(n),
            bytes: Int64Builder::with_capacity(n),
        };
        let mut errors = Vec::new();
        for (row, (id, line)) in ids.values().iter().zip(lines.iter()).enumerate() {
            if let Err(message) = self.parse(&mut out, *id, line.unwrap_or_default()) {
                errors.push(RowError::new(row as u64, ErrorCode::Malformed, message));
            }
        }
        let mut columns: Vec<ArrayRef> = vec![Arc::new(out.id.finish())];
        columns.extend(
            out.text
                .iter_mut()
                .map(|b| Arc::new(b.finish()) as ArrayRef),
        );
        columns.push(Arc::new(out.status.finish()));
        columns.push(Arc::new(out.bytes.finish()));
        let kept = RecordBatch::try_new(Arc::clone(&self.schema), columns)
            .map_err(|e| StageError::new(ErrorCode::Internal, e.to_string()))?;
        Ok(Processed {
            // no row kept: the SDK answers with an ack
            output: (kept.num_rows() > 0).then_some(kept),
            row_errors: errors,
        })
    }
}

// large batches: mimalloc reuses memory where the system allocator maps and faults in fresh pages
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    serve(Parse).await?;
    Ok(())
}
