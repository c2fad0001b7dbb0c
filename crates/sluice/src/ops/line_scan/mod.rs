//! Reading line-oriented files (CSV, JSON lines): every record passed on,
//! skipped or dead-lettered, exactly once.
//!
//! - [`split`]: which files are cut into byte ranges, and where (one planner
//!   for partitions and epochs).
//! - [`framing`]: bytes into records, with their physical lines; stretches
//!   that cannot be framed become one faulty record each.
//! - [`json_check`] and [`numbers`]: what arrow's readers would accept but
//!   change (a truncated number, a trailing comma) is refused first.
//! - [`decoding`]: records into Arrow batches, bad records found and named;
//!   CSV read column by column by [`csv_columns`].
//! - [`scan`]: `LineScanExec`, the DataFusion operator that runs them.
//!
//! This module holds the formats and the table a slice of files is read as.

mod csv_columns;
pub(crate) mod decoding;
pub(crate) mod framing;
mod json_check;
mod numbers;
mod scan;
pub(crate) mod split;

use std::ops::Range;
use std::sync::Arc;

use async_compression::tokio::bufread::{GzipDecoder, ZstdDecoder};
use async_trait::async_trait;
use bytes::Bytes;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::Result;
use datafusion::logical_expr::{Expr, TableType};
use datafusion::physical_plan::ExecutionPlan;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::{ObjectMeta, ObjectStore};
use serde::Deserialize;
use tokio_util::io::{ReaderStream, StreamReader};

use crate::dead_letter::OnError;
use framing::Dialect;
pub(crate) use json_check::JsonChecker;
use scan::{LineScanExec, ScanShared};

/// Compression of an input file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// From the file extension: `.gz`/`.gzip` is gzip, `.zst`/`.zstd` is zstd.
    #[default]
    Auto,
    /// Not compressed.
    None,
    /// gzip (multi-member files too).
    Gzip,
    /// zstd.
    Zstd,
}

impl Compression {
    /// The compression of `path`, resolving `Auto` by extension.
    pub fn of(self, path: &str) -> Compression {
        match self {
            Compression::Auto => {
                let lower = path.to_ascii_lowercase();
                if lower.ends_with(".gz") || lower.ends_with(".gzip") {
                    Compression::Gzip
                } else if lower.ends_with(".zst") || lower.ends_with(".zstd") {
                    Compression::Zstd
                } else {
                    Compression::None
                }
            }
            other => other,
        }
    }
}

/// `raw` decompressed as `compression` says (`Auto` must be resolved
/// first, see [`Compression::of`]), in 1 MiB pieces: what scans and schema
/// samples read.
pub(crate) fn decompressed(
    raw: BoxStream<'static, std::io::Result<Bytes>>,
    compression: Compression,
) -> BoxStream<'static, std::io::Result<Bytes>> {
    match compression {
        Compression::Gzip => {
            let mut d = GzipDecoder::new(StreamReader::new(raw));
            d.multiple_members(true);
            ReaderStream::with_capacity(d, 1 << 20).boxed()
        }
        Compression::Zstd => {
            ReaderStream::with_capacity(ZstdDecoder::new(StreamReader::new(raw)), 1 << 20).boxed()
        }
        Compression::None | Compression::Auto => raw,
    }
}

/// How to decode lines.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum LineFormat {
    /// Delimited text.
    Csv(CsvOptions),
    /// One JSON object per line.
    Jsonl,
}

/// CSV dialect.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct CsvOptions {
    /// The first line of each file is a header.
    pub has_header: bool,
    /// Field delimiter.
    pub delimiter: u8,
    /// Quote character.
    pub quote: u8,
    /// Escape character, if any.
    pub escape: Option<u8>,
    /// Values may contain newlines inside quotes (disables splitting files).
    pub newlines_in_values: bool,
}

impl Default for CsvOptions {
    fn default() -> Self {
        Self {
            has_header: true,
            delimiter: b',',
            quote: b'"',
            escape: None,
            newlines_in_values: false,
        }
    }
}

impl LineFormat {
    /// How records of this format are framed.
    pub(crate) fn dialect(&self) -> Dialect {
        match self {
            LineFormat::Csv(o) => Dialect::Csv {
                delimiter: o.delimiter,
                quote: o.quote,
                escape: o.escape,
                newlines_in_values: o.newlines_in_values,
            },
            LineFormat::Jsonl => Dialect::Jsonl,
        }
    }

    fn name(&self) -> &'static str {
        match self {
            LineFormat::Csv(_) => "csv",
            LineFormat::Jsonl => "jsonl",
        }
    }
}

/// One file, or one byte range of an uncompressed file.
#[derive(Debug, Clone)]
pub(crate) struct LineUnit {
    /// The file.
    pub object: ObjectMeta,
    /// Byte range, when the file is split.
    pub range: Option<Range<u64>>,
    /// Compression of the file.
    pub compression: Compression,
}

/// A file of a slice: whole, or the lines that start inside a byte range
/// (line-level offsets: a large file is read over several epochs; the
/// ranges need not fall on line starts: a range owns the lines that start
/// inside it).
#[derive(Debug, Clone)]
pub(crate) struct FilePart {
    /// The file.
    pub object: ObjectMeta,
    /// The bytes this slice owns; `None` for the whole file.
    pub range: Option<Range<u64>>,
}

impl FilePart {
    /// The whole file.
    pub(crate) fn whole(object: ObjectMeta) -> Self {
        Self {
            object,
            range: None,
        }
    }

    pub(crate) fn bounds(&self) -> Range<u64> {
        self.range.clone().unwrap_or(0..self.object.size)
    }
}

/// The files of one slice of a CSV or JSON-lines source, as a table.
#[derive(Debug)]
pub(crate) struct LineFilesTable {
    /// Source name, for errors.
    pub source_name: String,
    /// Where the files live.
    pub store: Arc<dyn ObjectStore>,
    /// `scheme://authority` of the store, for file URIs in errors.
    pub store_url: String,
    /// How to decode.
    pub format: LineFormat,
    /// Schema of the rows.
    pub schema: SchemaRef,
    /// The files, whole or in part.
    pub files: Vec<FilePart>,
    /// Compression setting of the source.
    pub compression: Compression,
    /// Partitions to read with.
    pub target_partitions: usize,
    /// Rows per batch.
    pub batch_size: usize,
    /// What to do with a record that cannot be read.
    pub on_error: OnError,
    /// Physical lines before the first byte of each file (standard input,
    /// read as a run of slices, counts on from the slices before).
    pub line_offset: u64,
    /// Files (or parts) are cut for partitions in pieces no smaller than
    /// this ([`split::MIN_SPLIT_BYTES`]; tests cut smaller).
    pub min_split_bytes: u64,
    /// Average bytes per record, when sampled: the scan's row estimate for
    /// the planner (which side of a join to build a hash table on).
    pub bytes_per_row: Option<f64>,
}

impl LineFilesTable {
    /// Cuts the files into units and deals them to at most `target_partitions`
    /// groups of about equal bytes.
    fn groups(&self) -> Vec<Vec<LineUnit>> {
        let total: u64 = self
            .files
            .iter()
            .map(|f| f.bounds().end - f.bounds().start)
            .sum();
        let split_size = total / self.target_partitions.max(1) as u64;
        let mut units = Vec::new();
        for f in &self.files {
            let compression = self.compression.of(f.object.location.as_ref());
            if split::splittable(&self.format, compression) {
                units.extend(
                    split::cut(f.bounds(), split_size, self.min_split_bytes)
                        .into_iter()
                        .map(|r| LineUnit {
                            object: f.object.clone(),
                            // a whole file stays whole: its first line may be a header
                            range: (r != (0..f.object.size)).then_some(r),
                            compression,
                        }),
                );
            } else {
                units.push(LineUnit {
                    object: f.object.clone(),
                    range: f.range.clone(),
                    compression,
                });
            }
        }
        let n = self.target_partitions.clamp(1, units.len().max(1));
        let mut groups: Vec<(u64, Vec<LineUnit>)> = vec![(0, Vec::new()); n];
        for u in units {
            let size = u
                .range
                .as_ref()
                .map(|r| r.end - r.start)
                .unwrap_or(u.object.size);
            // groups is never empty: n >= 1
            if let Some(g) = groups.iter_mut().min_by_key(|g| g.0) {
                g.0 += size;
                g.1.push(u);
            }
        }
        groups.into_iter().map(|g| g.1).collect()
    }
}

#[async_trait]
impl TableProvider for LineFilesTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }
    fn table_type(&self) -> TableType {
        TableType::Base
    }
    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(Arc::new(LineScanExec::try_new(
            ScanShared {
                source_name: self.source_name.clone(),
                store: Arc::clone(&self.store),
                store_url: self.store_url.clone(),
                format: self.format.clone(),
                file_schema: Arc::clone(&self.schema),
                projection: projection.cloned(),
                batch_size: self.batch_size,
                on_error: self.on_error,
                line_offset: self.line_offset,
                bytes_per_row: self.bytes_per_row,
            },
            self.groups(),
            limit,
        )?))
    }
}

#[cfg(test)]
mod tests;
