//! Dead letters: rows that could not be read or processed, kept instead of
//! failing the run.
//!
//! A csv/jsonl source or an external stage with `on_error = "dead_letter"`
//! hands every row it cannot take (with its raw input, an [`ErrorCode`], the
//! message, where it came from) to its epoch's [`DeadLetters`]; the rest
//! of the data flows on. After each epoch's sinks are written, the epoch loop
//! writes the epoch's dead letters to the pipeline's `[dead_letter]` sink,
//! which commits with the others under the same commit protocol.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use datafusion::arrow::array::{
    ArrayRef, RecordBatch, StringArray, TimestampMicrosecondArray, UInt64Array,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use serde::Deserialize;
use sluice_contract::ErrorCode;

use crate::metrics::ComponentId;

/// What to do with a row that cannot be read or processed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    /// The epoch fails with the first bad row; nothing of it is committed.
    #[default]
    Fail,
    /// The row is dropped and counted.
    Skip,
    /// The row goes to the pipeline's dead-letter sink, and is counted.
    DeadLetter,
}

/// The `[dead_letter]` table: where a pipeline's dead letters go.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterConfig {
    /// Folder or URL of the dead-letter Parquet sink (same commit protocol as
    /// every sink), relative to the pipeline file.
    pub url: String,
}

/// The name the dead-letter sink goes by in summaries and commits.
pub(crate) const SINK_NAME: &str = "dead_letter";

/// One row that did not make it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct DeadLetter {
    /// The source or stage that gave up on it.
    pub component: ComponentId,
    /// The shared error vocabulary's code.
    pub code: ErrorCode,
    /// What was wrong.
    pub message: String,
    /// The input file, for source rows.
    pub file: Option<String>,
    /// The 1-based line in that file, when known.
    pub line: Option<u64>,
    /// Byte offset of the range the row was read in, when the line is not known.
    pub offset: Option<u64>,
    /// The raw input: the line as read, or the row as JSON (stage rows).
    pub raw: String,
    /// Dropped (`on_error = "skip"`): counted, not written.
    pub skipped: bool,
}

/// The dead letters of one epoch's execution, shared by every scan and
/// stage of it (see [`crate::epoch::EpochBinding`]). A source read by several sinks' plans reports the
/// same row more than once: rows are kept once per key (the producer's name
/// for the row: file and line, or partition and ordinal).
#[derive(Debug, Default)]
pub(crate) struct DeadLetters {
    rows: Mutex<BTreeMap<(ComponentId, String), DeadLetter>>,
}

impl DeadLetters {
    /// A new, empty collector.
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Keeps a row, once per `key` within its component.
    pub(crate) fn push(&self, key: String, d: DeadLetter) {
        let key = (d.component.clone(), key);
        if let Ok(mut rows) = self.rows.lock() {
            rows.entry(key).or_insert(d);
        }
    }

    /// Takes every row given up on so far (skipped ones included).
    pub(crate) fn take(&self) -> Vec<DeadLetter> {
        match self.rows.lock() {
            Ok(mut rows) => std::mem::take(&mut *rows).into_values().collect(),
            Err(_) => Vec::new(),
        }
    }
}

/// The schema of the dead-letter sink.
pub(crate) fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("epoch", DataType::UInt64, false),
        Field::new(
            "at",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
        Field::new("component", DataType::Utf8, false),
        Field::new("role", DataType::Utf8, false),
        Field::new("code", DataType::Utf8, false),
        Field::new("message", DataType::Utf8, false),
        Field::new("file", DataType::Utf8, true),
        Field::new("line", DataType::UInt64, true),
        Field::new("offset", DataType::UInt64, true),
        Field::new("raw", DataType::Utf8, false),
    ]))
}

/// The rows of one epoch as a batch of [`schema`].
pub(crate) fn to_batch(
    epoch: u64,
    rows: &[DeadLetter],
) -> Result<RecordBatch, datafusion::arrow::error::ArrowError> {
    let now = chrono::Utc::now().timestamp_micros();
    let strings = |f: &dyn Fn(&DeadLetter) -> Option<String>| -> ArrayRef {
        Arc::new(rows.iter().map(f).collect::<StringArray>())
    };
    let columns: Vec<ArrayRef> = vec![
        Arc::new(UInt64Array::from(vec![epoch; rows.len()])),
        Arc::new(TimestampMicrosecondArray::from(vec![now; rows.len()]).with_timezone("UTC")),
        strings(&|d| Some(d.component.name().to_string())),
        strings(&|d| Some(d.component.role().to_string())),
        strings(&|d| Some(d.code.as_str().to_string())),
        strings(&|d| Some(d.message.clone())),
        strings(&|d| d.file.clone()),
        Arc::new(rows.iter().map(|d| d.line).collect::<UInt64Array>()),
        Arc::new(rows.iter().map(|d| d.offset).collect::<UInt64Array>()),
        strings(&|d| Some(d.raw.clone())),
    ];
    RecordBatch::try_new(schema(), columns)
}
