//! Schema inference for line formats from a sample of the first file.

use std::io::Cursor;
use std::sync::Arc;

use datafusion::arrow::datatypes::Schema;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt};
use tokio::io::AsyncReadExt;
use tokio_util::io::StreamReader;

use crate::error::Cause;
use crate::ops::line_scan::framing::{Frame, Framer, UTF8_BOM};
use crate::ops::line_scan::{Compression, JsonChecker, LineFormat};

/// Bytes read from the start of the first file to infer its schema.
const SAMPLE_BYTES: usize = 4 << 20;

/// Why a schema could not be inferred.
#[derive(Debug)]
pub(super) enum InferError {
    /// Reading or parsing the sample failed (the cause says whether to retry).
    Failed(&'static str, Cause),
    /// The sample has nothing to infer from.
    Refused(&'static str),
}

/// Infers the schema of a CSV / JSON-lines file from its first `rows`
/// records, framed as a scan frames them: a record that cannot be read is
/// sampled around (it meets `on_error` when read). Also returns the average
/// bytes per row of the sample for plain files, to size epochs.
pub(super) async fn infer_lines_schema(
    store: &Arc<dyn ObjectStore>,
    file: &ObjectMeta,
    format: &LineFormat,
    compression: Compression,
    rows: usize,
) -> Result<(Schema, Option<f64>), InferError> {
    let sample = read_sample(store, file, compression, SAMPLE_BYTES).await?;
    let records = Sample::frame(&sample, format, sample.len() < SAMPLE_BYTES);
    if records.frames.is_empty() {
        return Err(InferError::Refused(
            "the file is empty, so no schema can be inferred; declare `columns`",
        ));
    }
    let schema = match format {
        LineFormat::Csv(o) => {
            let mut f = datafusion::arrow::csv::reader::Format::default()
                .with_header(o.has_header)
                .with_delimiter(o.delimiter)
                .with_quote(o.quote);
            if let Some(e) = o.escape {
                f = f.with_escape(e);
            }
            // the header and the records with as many fields as it has
            let wanted = records.frames[0].fields;
            // the header stays the header even when it is malformed (the scan
            // skips the first record as the header whatever it holds)
            let good: Vec<&Frame> = records
                .frames
                .iter()
                .enumerate()
                .filter(|(i, r)| {
                    (*i == 0 && o.has_header) || (r.fault.is_none() && r.fields == wanted)
                })
                .map(|(_, r)| r)
                .take(rows + usize::from(o.has_header))
                .collect();
            let text = records.join(&good);
            f.infer_schema(Cursor::new(&text), Some(rows))
                .map_err(|e| InferError::Failed("cannot infer the CSV schema", Cause::new(e)))?
                .0
        }
        LineFormat::Jsonl => infer_json(&records, rows)?,
    };
    if schema.fields().is_empty() {
        return Err(InferError::Refused(
            "no columns found in the sample; declare `columns`",
        ));
    }
    let bytes_per_row = (compression == Compression::None)
        .then(|| records.bytes_per_record(rows))
        .flatten();
    Ok((schema, bytes_per_row))
}

/// The average bytes per record of the start of an uncompressed file, to
/// size epochs by `max_rows` from the first one on.
pub(super) async fn bytes_per_row(
    store: &Arc<dyn ObjectStore>,
    file: &ObjectMeta,
    format: &LineFormat,
) -> Option<f64> {
    const BYTES: usize = 1 << 20;
    let sample = read_sample(store, file, Compression::None, BYTES)
        .await
        .ok()?;
    Sample::frame(&sample, format, sample.len() < BYTES).bytes_per_record(usize::MAX)
}

/// JSON lines: the schema of the records that are JSON objects; a record
/// that arrow cannot fit with the others is left out (it meets `on_error`
/// when read).
fn infer_json(records: &Sample<'_>, rows: usize) -> Result<Schema, InferError> {
    let syntax = JsonChecker::new(&Schema::empty());
    let mut scratch = Vec::new();
    let good: Vec<&Frame> = records
        .frames
        .iter()
        .filter(|r| syntax.check(records.text(r), &mut scratch).is_ok())
        .take(rows)
        .collect();
    let infer = |frames: &[&Frame]| {
        datafusion::arrow::json::reader::infer_json_schema(
            Cursor::new(records.join(frames)),
            Some(rows),
        )
        .map(|(schema, _)| schema)
    };
    match infer(&good) {
        Ok(schema) => Ok(schema),
        Err(first) => {
            // keep each record only if the schema still infers with it
            let mut kept: Vec<&Frame> = Vec::new();
            for r in good {
                kept.push(r);
                if infer(&kept).is_err() {
                    kept.pop();
                }
            }
            if kept.is_empty() {
                return Err(InferError::Failed(
                    "cannot infer the JSON schema",
                    Cause::new(first),
                ));
            }
            infer(&kept)
                .map_err(|e| InferError::Failed("cannot infer the JSON schema", Cause::new(e)))
        }
    }
}

/// Reads up to `limit` bytes from the start of `file`, decompressed.
async fn read_sample(
    store: &Arc<dyn ObjectStore>,
    file: &ObjectMeta,
    compression: Compression,
    limit: usize,
) -> Result<Vec<u8>, InferError> {
    let got = store
        .get(&file.location)
        .await
        .map_err(|e| InferError::Failed("cannot read", Cause::new(e)))?;
    let stream = crate::ops::line_scan::decompressed(crate::storage::byte_stream(got), compression);
    let mut sample = Vec::new();
    let read = StreamReader::new(stream)
        .take(limit as u64)
        .read_to_end(&mut sample)
        .await;
    read.map_err(|e| {
        InferError::Failed("cannot read a sample to infer the schema", Cause::new(e))
    })?;
    Ok(sample)
}

/// The whole records of a sample, framed as a scan frames them.
struct Sample<'a> {
    bytes: &'a [u8],
    frames: Vec<Frame>,
}

impl<'a> Sample<'a> {
    /// Frames `sample`; `complete` when it is the whole file (otherwise the
    /// record it ends inside is left out).
    fn frame(sample: &'a [u8], format: &LineFormat, complete: bool) -> Self {
        let bytes = sample.strip_prefix(UTF8_BOM).unwrap_or(sample);
        let mut frames = Vec::new();
        Framer::new(format.dialect(), 1).frame(bytes, complete, &mut frames);
        Self { bytes, frames }
    }

    fn text(&self, f: &Frame) -> &[u8] {
        &self.bytes[f.start..f.end]
    }

    /// The records, one per line.
    fn join(&self, frames: &[&Frame]) -> Vec<u8> {
        let mut out = Vec::new();
        for f in frames {
            out.extend_from_slice(self.text(f));
            out.push(b'\n');
        }
        out
    }

    /// Bytes per record over the first `n` records (terminators and blank
    /// lines included, as the file holds them).
    fn bytes_per_record(&self, n: usize) -> Option<f64> {
        let taken = &self.frames[..self.frames.len().min(n)];
        let last = taken.last()?;
        let end = self.bytes[last.end..]
            .iter()
            .position(|b| *b != b'\r' && *b != b'\n')
            .map_or(self.bytes.len(), |i| last.end + i);
        Some(end as f64 / taken.len() as f64)
    }
}
