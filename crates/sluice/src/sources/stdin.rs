//! The `stdin` source: JSON lines or CSV arriving on standard input.
//!
//! Lines are read by a background task; each slice is the lines that arrived
//! within the epoch's limits, parsed by the same reader as files (errors
//! name `stdin` and the line). Standard input cannot be read twice: a slice
//! is kept in memory until its commit, so a failed epoch is retried in the
//! same process, but after a crash the uncommitted lines are gone. Use a
//! `dir` source when the input must survive a crash.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use datafusion::arrow::datatypes::SchemaRef;
use object_store::memory::InMemory;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use serde::{Deserialize, Serialize};
use sluice_contract::SourceProvenance;
use tokio::io::AsyncBufReadExt;
use tokio::sync::mpsc;

use super::{AnySource, Slice, SliceLimits, Source, SourceContext};
use crate::dead_letter::OnError;
use crate::error::{Result, RetryHint, SluiceError};
use crate::ops::line_scan::{Compression, CsvOptions, FilePart, LineFilesTable, LineFormat, split};
use crate::spec::ColumnSpec;
use crate::spec::values::schema_from_columns;

/// Format of standard input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StdinFormat {
    /// One JSON object per line.
    Jsonl,
    /// CSV lines.
    Csv,
}

/// `[sources.<name>] kind = "stdin"`: lines from standard input.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StdinSourceConfig {
    /// `jsonl` or `csv`.
    pub format: StdinFormat,
    /// The columns (standard input cannot be read twice to infer them).
    pub columns: Vec<ColumnSpec>,
    /// CSV: the first line is a header (default false).
    #[serde(default)]
    pub header: bool,
    /// CSV field delimiter (default `,`).
    #[serde(default)]
    pub delimiter: Option<String>,
}

/// Opens a `stdin` source.
pub(super) fn open(
    cfg: &StdinSourceConfig,
    on_error: OnError,
    ctx: &SourceContext<'_>,
) -> Result<Box<dyn AnySource>> {
    let key = |k: &str| format!("sources.{}.{k}", ctx.name);
    let schema = schema_from_columns(&cfg.columns)
        .map_err(|m| SluiceError::spec(ctx.spec.issue(key("columns"), m)))?;
    let format = match cfg.format {
        StdinFormat::Jsonl => LineFormat::Jsonl,
        StdinFormat::Csv => {
            let delimiter = match cfg.delimiter.as_deref().unwrap_or(",").as_bytes() {
                [b] => *b,
                _ => {
                    return Err(SluiceError::spec(
                        ctx.spec
                            .issue(key("delimiter"), "must be exactly one ASCII character"),
                    ));
                }
            };
            // the header is skipped once, by the reader task, not per slice
            LineFormat::Csv(CsvOptions {
                has_header: false,
                delimiter,
                ..CsvOptions::default()
            })
        }
    };
    let (tx, rx) = mpsc::channel::<std::io::Result<Bytes>>(4096);
    let skip_header = cfg.header && cfg.format == StdinFormat::Csv;
    tokio::spawn(async move {
        let mut reader = tokio::io::BufReader::with_capacity(1 << 20, tokio::io::stdin());
        let mut first = true;
        loop {
            let mut line = Vec::new();
            match reader.read_until(b'\n', &mut line).await {
                Ok(0) => return,
                Ok(_) => {}
                Err(e) => {
                    // a failed read is not the end of the input: the run fails
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            }
            if std::mem::take(&mut first) && skip_header {
                continue;
            }
            if !line.ends_with(b"\n") {
                line.push(b'\n');
            }
            if tx.send(Ok(Bytes::from(line))).await.is_err() {
                return;
            }
        }
    });
    Ok(Box::new(StdinSource {
        name: ctx.name.to_string(),
        schema: Arc::new(schema),
        format,
        lines: rx,
        eof: false,
        read: 0,
        kept: Vec::new(),
        again: Default::default(),
        store: Arc::new(InMemory::new()),
        target_partitions: ctx.target_partitions,
        batch_size: ctx.batch_size,
        on_error,
        header_lines: u64::from(skip_header),
    }))
}

#[derive(Debug)]
struct StdinSource {
    name: String,
    schema: SchemaRef,
    format: LineFormat,
    lines: mpsc::Receiver<std::io::Result<Bytes>>,
    eof: bool,
    /// Lines read so far.
    read: u64,
    /// Slices not committed yet: (first line, end line, object), for retries.
    kept: Vec<(u64, u64, ObjectPath)>,
    /// Kept slices to serve again after a rewind.
    again: std::collections::VecDeque<(u64, u64, ObjectPath)>,
    store: Arc<InMemory>,
    target_partitions: usize,
    batch_size: usize,
    /// What to do with a line that cannot be read.
    on_error: OnError,
    /// Lines before the first one counted (the CSV header, read once).
    header_lines: u64,
}

/// Standard input's position: lines read before it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StdinOffset {
    /// Lines of this and earlier runs' input handed out.
    pub lines: u64,
}

impl StdinSource {
    async fn slice_of(&self, from: u64, to: u64, path: &ObjectPath) -> Result<Slice<StdinOffset>> {
        let meta = self
            .store
            .head(path)
            .await
            .map_err(|e| SluiceError::Internal(format!("stdin buffer: {e}")))?;
        let table = LineFilesTable {
            source_name: self.name.clone(),
            store: Arc::clone(&self.store) as Arc<dyn ObjectStore>,
            store_url: "stdin://".into(),
            format: self.format.clone(),
            schema: Arc::clone(&self.schema),
            files: vec![FilePart::whole(meta)],
            compression: Compression::None,
            target_partitions: self.target_partitions,
            batch_size: self.batch_size,
            on_error: self.on_error,
            // physical lines of standard input, the header included
            line_offset: self.header_lines + from,
            min_split_bytes: split::MIN_SPLIT_BYTES,
            bytes_per_row: None,
        };
        Ok(Slice {
            table: Arc::new(table),
            start: StdinOffset { lines: from },
            end: StdinOffset { lines: to },
            estimated_rows: Some(to - from),
            uris: vec![format!("stdin://lines/{}-{}", from + 1, to)],
        })
    }
}

#[async_trait]
impl Source for StdinSource {
    type Offset = StdinOffset;

    fn kind(&self) -> &str {
        "stdin"
    }
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }
    fn is_bounded(&self) -> bool {
        false
    }
    fn provenance(&self) -> SourceProvenance {
        SourceProvenance {
            source: self.name.clone(),
            kind: "stdin".into(),
            uris: vec!["stdin://".into()],
            parameters: Default::default(),
            upstream: None,
        }
    }
    async fn resume(&mut self, at: &StdinOffset) -> Result<()> {
        let at = at.lines;
        if self.kept.is_empty() {
            // a new process reads a new standard input: count lines from the commit on
            self.read = at;
        } else {
            // rewound after a failed epoch: serve the kept lines again first
            self.again = self
                .kept
                .iter()
                .filter(|(f, _, _)| *f >= at)
                .cloned()
                .collect();
        }
        Ok(())
    }
    async fn restart(&mut self) -> Result<()> {
        self.resume(&StdinOffset { lines: 0 }).await
    }
    async fn next_slice(&mut self, limits: &SliceLimits) -> Result<Option<Slice<StdinOffset>>> {
        if let Some((f, t, path)) = self.again.pop_front() {
            return self.slice_of(f, t, &path).await.map(Some);
        }
        if self.eof && self.lines.is_empty() {
            return Ok(None);
        }
        let max = limits.max_rows.unwrap_or(1_000_000);
        let deadline = super::deadline_after(limits.max_latency.unwrap_or(Duration::from_secs(1)));
        let mut buf = Vec::new();
        let mut n = 0u64;
        while n < max {
            let wait = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(wait, self.lines.recv()).await {
                Ok(Some(Ok(line))) => {
                    buf.extend_from_slice(&line);
                    n += 1;
                }
                Ok(Some(Err(e))) => {
                    return Err(SluiceError::source_failed(
                        &self.name,
                        Some("stdin".into()),
                        "cannot read standard input",
                        e,
                    ));
                }
                Ok(None) => {
                    self.eof = true;
                    break;
                }
                Err(_) => break,
            }
        }
        let from = self.read;
        if n == 0 {
            if self.eof {
                return Ok(None);
            }
            let table = Arc::new(datafusion::datasource::empty::EmptyTable::new(Arc::clone(
                &self.schema,
            )));
            return Ok(Some(Slice {
                table,
                start: StdinOffset { lines: from },
                end: StdinOffset { lines: from },
                estimated_rows: Some(0),
                uris: vec![],
            }));
        }
        self.read += n;
        let path = ObjectPath::from(format!("stdin/lines-{}-{}", from + 1, self.read));
        self.store
            .put(&path, buf.into())
            .await
            .map_err(|e| SluiceError::Source {
                source_name: self.name.clone(),
                file: Some("stdin".into()),
                line: None,
                message: format!("cannot buffer input: {e}"),
                retry: RetryHint::Never,
                cause: None,
            })?;
        self.kept.push((from, self.read, path.clone()));
        self.slice_of(from, self.read, &path).await.map(Some)
    }
    async fn replay(
        &mut self,
        start: &StdinOffset,
        end: &StdinOffset,
    ) -> Result<Slice<StdinOffset>> {
        let (from, to) = (start.lines, end.lines);
        match self
            .kept
            .iter()
            .find(|(f, t, _)| *f == from && *t == to)
            .cloned()
        {
            Some((f, t, path)) => self.slice_of(f, t, &path).await,
            None => Err(SluiceError::Source {
                source_name: self.name.clone(),
                file: Some("stdin".into()),
                line: None,
                message: format!(
                    "lines {}..{to} of standard input are gone (stdin cannot be read twice)",
                    from + 1
                ),
                retry: RetryHint::Never,
                cause: None,
            }),
        }
    }
    async fn ack(&mut self, at: &StdinOffset) -> Result<()> {
        let done = at.lines;
        let mut keep = Vec::new();
        for (f, t, p) in self.kept.drain(..) {
            if t <= done {
                let _ = self.store.delete(&p).await;
            } else {
                keep.push((f, t, p));
            }
        }
        self.kept = keep;
        Ok(())
    }
}
