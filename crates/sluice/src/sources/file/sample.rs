//! Schema inference for line formats from a sample of the first file.

use std::io::Cursor;
use std::sync::Arc;

use async_compression::tokio::bufread::{GzipDecoder, ZstdDecoder};
use datafusion::arrow::datatypes::Schema;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt};
use tokio::io::AsyncReadExt;
use tokio_util::io::StreamReader;

use crate::error::Cause;
use crate::ops::line_scan::{Compression, LineFormat};

/// Bytes read from the start of the first file to infer its schema.
const SAMPLE_BYTES: usize = 4 << 20;

/// Infers the schema of a CSV / JSON-lines file from its first `rows` rows.
/// Also returns the average bytes per row of the sample (uncompressed size
/// for plain files, compressed size for compressed ones) to size epochs.
/// Why a schema could not be inferred.
#[derive(Debug)]
pub(super) enum InferError {
    /// Reading or parsing the sample failed (the cause says whether to retry).
    Failed(&'static str, Cause),
    /// The sample has nothing to infer from.
    Refused(&'static str),
}

pub(super) async fn infer_lines_schema(
    store: &Arc<dyn ObjectStore>,
    file: &ObjectMeta,
    format: &LineFormat,
    compression: Compression,
    rows: usize,
) -> Result<(Schema, Option<f64>), InferError> {
    let got = store
        .get(&file.location)
        .await
        .map_err(|e| InferError::Failed("cannot read", Cause::new(e)))?;
    let reader = StreamReader::new(crate::storage::byte_stream(got));
    let mut sample = Vec::new();
    let read = match compression {
        Compression::Gzip => {
            let mut d = GzipDecoder::new(reader);
            d.multiple_members(true);
            d.take(SAMPLE_BYTES as u64).read_to_end(&mut sample).await
        }
        Compression::Zstd => {
            ZstdDecoder::new(reader)
                .take(SAMPLE_BYTES as u64)
                .read_to_end(&mut sample)
                .await
        }
        _ => {
            reader
                .take(SAMPLE_BYTES as u64)
                .read_to_end(&mut sample)
                .await
        }
    };
    read.map_err(|e| {
        InferError::Failed("cannot read a sample to infer the schema", Cause::new(e))
    })?;
    // keep whole lines only
    if sample.len() == SAMPLE_BYTES
        && let Some(last) = memchr::memrchr(b'\n', &sample)
    {
        sample.truncate(last + 1);
    }
    if sample.iter().all(u8::is_ascii_whitespace) {
        return Err(InferError::Refused(
            "the file is empty, so no schema can be inferred; declare `columns`",
        ));
    }
    let (schema, n) = match format {
        LineFormat::Csv(o) => {
            let mut f = datafusion::arrow::csv::reader::Format::default()
                .with_header(o.has_header)
                .with_delimiter(o.delimiter)
                .with_quote(o.quote);
            if let Some(e) = o.escape {
                f = f.with_escape(e);
            }
            f.infer_schema(Cursor::new(&sample), Some(rows))
                .map_err(|e| InferError::Failed("cannot infer the CSV schema", Cause::new(e)))?
        }
        LineFormat::Jsonl => {
            datafusion::arrow::json::reader::infer_json_schema(Cursor::new(&sample), Some(rows))
                .map_err(|e| InferError::Failed("cannot infer the JSON schema", Cause::new(e)))?
        }
    };
    if schema.fields().is_empty() {
        return Err(InferError::Refused(
            "no columns found in the sample; declare `columns`",
        ));
    }
    let bytes_per_row = (n > 0 && compression == Compression::None).then(|| {
        let consumed: usize = if n >= rows {
            sample.len().min(avg_prefix_len(&sample, n))
        } else {
            sample.len()
        };
        consumed as f64 / n as f64
    });
    Ok((schema, bytes_per_row))
}

/// Bytes of the first `lines` lines.
fn avg_prefix_len(sample: &[u8], lines: usize) -> usize {
    memchr::memchr_iter(b'\n', sample)
        .nth(lines.saturating_sub(1))
        .map(|i| i + 1)
        .unwrap_or(sample.len())
}
