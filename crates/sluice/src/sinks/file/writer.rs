//! Writers of one output file per format.

use bytes::Bytes;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use parquet::arrow::AsyncArrowWriter;
use parquet::file::properties::WriterProperties;

use super::upload::Upload;
use crate::error::Cause;

/// The file format a sink writes.
#[derive(Debug, Clone)]
pub(crate) enum OutputFormat {
    /// Parquet with these writer properties.
    Parquet(Box<WriterProperties>),
    /// CSV.
    Csv {
        /// Header line in every file.
        header: bool,
        /// Field delimiter.
        delimiter: u8,
    },
    /// JSON lines.
    Jsonl,
}

impl OutputFormat {
    /// File extension, without the dot.
    pub(crate) fn extension(&self) -> &'static str {
        match self {
            OutputFormat::Parquet(_) => "parquet",
            OutputFormat::Csv { .. } => "csv",
            OutputFormat::Jsonl => "jsonl",
        }
    }
}

/// Errors while writing one file: the writer's or the store's, kept as the cause.
pub(super) type WriteResult<T> = Result<T, Cause>;

/// One output file being written.
pub(crate) enum OpenFile {
    /// A Parquet file.
    Parquet(Box<AsyncArrowWriter<Upload>>),
    /// A text file (CSV or JSON lines).
    Text {
        /// The upload.
        upload: Box<Upload>,
        /// CSV or JSON lines.
        format: OutputFormat,
        /// Whether a batch was written already (the CSV header goes first only).
        started: bool,
        /// Bytes handed to the upload.
        written: u64,
    },
}

impl OpenFile {
    /// Starts a file, written through `upload`.
    pub(crate) fn create(
        upload: Upload,
        format: &OutputFormat,
        schema: SchemaRef,
    ) -> WriteResult<Self> {
        match format {
            OutputFormat::Parquet(props) => {
                let w = AsyncArrowWriter::try_new(upload, schema, Some(props.as_ref().clone()))
                    .map_err(Cause::new)?;
                Ok(OpenFile::Parquet(Box::new(w)))
            }
            other => Ok(OpenFile::Text {
                upload: Box::new(upload),
                format: other.clone(),
                started: false,
                written: 0,
            }),
        }
    }

    /// Appends a batch.
    pub(crate) async fn write(&mut self, batch: &RecordBatch) -> WriteResult<()> {
        match self {
            OpenFile::Parquet(w) => w.write(batch).await.map_err(Cause::new),
            OpenFile::Text {
                upload,
                format,
                started,
                written,
            } => {
                let mut buf = Vec::with_capacity(batch.get_array_memory_size() / 2);
                match format {
                    OutputFormat::Csv { header, delimiter } => {
                        let mut w = datafusion::arrow::csv::WriterBuilder::new()
                            .with_header(*header && !*started)
                            .with_delimiter(*delimiter)
                            .build(&mut buf);
                        w.write(batch).map_err(Cause::new)?;
                    }
                    _ => {
                        let mut w = datafusion::arrow::json::LineDelimitedWriter::new(&mut buf);
                        w.write(batch).map_err(Cause::new)?;
                        w.finish().map_err(Cause::new)?;
                    }
                }
                *started = true;
                *written += buf.len() as u64;
                upload.put(Bytes::from(buf)).await
            }
        }
    }

    /// Estimated size of the file so far (including buffered rows).
    pub(crate) fn size(&self) -> u64 {
        match self {
            OpenFile::Parquet(w) => (w.bytes_written() + w.in_progress_size()) as u64,
            OpenFile::Text { written, .. } => *written,
        }
    }

    /// Finishes the file; returns its size in bytes.
    pub(crate) async fn finish(self) -> WriteResult<u64> {
        match self {
            OpenFile::Parquet(mut w) => {
                w.finish().await.map_err(Cause::new)?;
                Ok(w.bytes_written() as u64)
            }
            OpenFile::Text {
                mut upload,
                written,
                ..
            } => {
                upload.finish().await?;
                Ok(written)
            }
        }
    }

    /// Gives the file up (its partial upload is discarded).
    pub(crate) async fn abort(self) {
        match self {
            OpenFile::Parquet(w) => {
                let mut inner = w.into_inner();
                inner.abort().await;
            }
            OpenFile::Text { mut upload, .. } => {
                upload.abort().await;
            }
        }
    }
}
