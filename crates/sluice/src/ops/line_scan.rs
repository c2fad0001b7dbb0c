//! `LineScanExec`: reads line-oriented files (CSV, JSON lines) from an object store.
//!
//! - Output schema: the source schema, projected when a projection is pushed down.
//! - Emits: a batch every `batch_size` rows of a file, and at the end of each file.
//! - State: one decoder and the undecoded tail of the current chunk per partition.
//! - Failure: a malformed row fails the scan with a [`SluiceError::Source`]
//!   naming the source, the file and the line (or, inside a split of a large
//!   file, the byte offset of the split).
//!
//! Files are read as byte streams, decompressed on the fly (gzip, zstd), and
//! fed to arrow's incremental CSV / JSON decoders. A large uncompressed file
//! is split into byte ranges so several partitions parse it at once; a range
//! owns the lines that start inside it (as DataFusion's own CSV scan does),
//! which assumes no newline inside a quoted value. Each partition runs in its
//! own task, so reading and parsing overlap with the rest of the plan.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use async_compression::tokio::bufread::{GzipDecoder, ZstdDecoder};
use async_trait::async_trait;
use bytes::{Buf, Bytes};
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::error::ArrowError;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{Result, internal_err, project_schema};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{Expr, TableType};
use datafusion::physical_expr::EquivalenceProperties;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchReceiverStreamBuilder;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PhysicalExpr, PlanProperties,
};
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::{GetOptions, GetRange, ObjectMeta, ObjectStore, ObjectStoreExt};
use serde::Deserialize;
use tokio::sync::mpsc::Sender;
use tokio_util::io::{ReaderStream, StreamReader};

use crate::dead_letter::{DeadLetter, DeadLetters, OnError};
use crate::epoch::EpochBinding;
use crate::error::{RetryHint, SluiceError};
use crate::metrics::ComponentId;
use sluice_contract::ErrorCode;

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
    /// Whether a byte range of a file can be read on its own (no newlines in values).
    pub(crate) fn splittable(&self) -> bool {
        match self {
            LineFormat::Csv(o) => !o.newlines_in_values,
            LineFormat::Jsonl => true,
        }
    }

    fn name(&self) -> &'static str {
        match self {
            LineFormat::Csv(_) => "csv",
            LineFormat::Jsonl => "jsonl",
        }
    }
}

/// Files smaller than this are never split.
const MIN_SPLIT_BYTES: u64 = 8 << 20;

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

    fn bounds(&self) -> Range<u64> {
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
    /// What to do with a line that cannot be read.
    pub on_error: OnError,
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
        let split_size = (total / self.target_partitions.max(1) as u64).max(MIN_SPLIT_BYTES);
        let mut units = Vec::new();
        for f in &self.files {
            let object = &f.object;
            let compression = self.compression.of(object.location.as_ref());
            let Range {
                start: first,
                end: last,
            } = f.bounds();
            let len = last - first;
            if compression == Compression::None
                && self.format.splittable()
                && len > split_size + split_size / 2
            {
                let mut start = first;
                while start < last {
                    let end = (start + split_size).min(last);
                    let end = if last - end < split_size / 2 {
                        last
                    } else {
                        end
                    };
                    units.push(LineUnit {
                        object: object.clone(),
                        range: Some(start..end),
                        compression,
                    });
                    start = end;
                }
            } else {
                units.push(LineUnit {
                    object: object.clone(),
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
            },
            self.groups(),
            limit,
        )?))
    }
}

/// What every partition of a scan shares.
#[derive(Debug, Clone)]
struct ScanShared {
    source_name: String,
    store: Arc<dyn ObjectStore>,
    store_url: String,
    format: LineFormat,
    file_schema: SchemaRef,
    projection: Option<Vec<usize>>,
    batch_size: usize,
    on_error: OnError,
}

/// Reads CSV / JSON-lines files; see the module docs.
#[derive(Debug)]
pub(crate) struct LineScanExec {
    shared: ScanShared,
    groups: Vec<Vec<LineUnit>>,
    limit: Option<usize>,
    schema: SchemaRef,
    props: Arc<PlanProperties>,
}

impl LineScanExec {
    fn try_new(
        shared: ScanShared,
        groups: Vec<Vec<LineUnit>>,
        limit: Option<usize>,
    ) -> Result<Self> {
        let schema = project_schema(&shared.file_schema, shared.projection.as_ref())?;
        let props = PlanProperties::new(
            EquivalenceProperties::new(Arc::clone(&schema)),
            Partitioning::UnknownPartitioning(groups.len().max(1)),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        Ok(Self {
            shared,
            groups,
            limit,
            schema,
            props: Arc::new(props),
        })
    }
}

impl DisplayAs for LineScanExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let units: usize = self.groups.iter().map(Vec::len).sum();
        let files: std::collections::BTreeSet<&str> = self
            .groups
            .iter()
            .flatten()
            .map(|u| u.object.location.as_ref())
            .collect();
        write!(
            f,
            "LineScanExec: source={} format={} files={} units={units} partitions={}",
            self.shared.source_name,
            self.shared.format.name(),
            files.len(),
            self.groups.len().max(1)
        )?;
        if let Some(p) = &self.shared.projection {
            let names: Vec<&str> = p
                .iter()
                .map(|i| self.shared.file_schema.field(*i).name().as_str())
                .collect();
            write!(f, " projection=[{}]", names.join(", "))?;
        }
        if let Some(l) = self.limit {
            write!(f, " limit={l}")?;
        }
        Ok(())
    }
}

impl ExecutionPlan for LineScanExec {
    fn name(&self) -> &str {
        "LineScanExec"
    }
    fn properties(&self) -> &Arc<PlanProperties> {
        &self.props
    }
    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }
    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }
    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if children.is_empty() {
            Ok(self)
        } else {
            internal_err!("LineScanExec has no children")
        }
    }
    fn execute(
        &self,
        partition: usize,
        ctx: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let dead_letters = Arc::clone(EpochBinding::of_task(&ctx)?.dead_letters());
        let units = self.groups.get(partition).cloned().unwrap_or_default();
        let mut builder = RecordBatchReceiverStreamBuilder::new(Arc::clone(&self.schema), 2);
        let tx = builder.tx();
        let shared = self.shared.clone();
        let limit = self.limit;
        builder.spawn(async move {
            let mut remaining = limit.unwrap_or(usize::MAX);
            for unit in units {
                if remaining == 0 {
                    break;
                }
                let reader = UnitReader {
                    shared: &shared,
                    unit: &unit,
                    dead_letters: &dead_letters,
                };
                match reader.read(&tx, &mut remaining).await {
                    Ok(true) => {}
                    // the consumer went away: stop quietly
                    Ok(false) => break,
                    Err(e) => return Err(e.into_datafusion()),
                }
            }
            Ok(())
        });
        Ok(builder.build())
    }
}

/// Reads one unit and sends its batches.
struct UnitReader<'a> {
    shared: &'a ScanShared,
    unit: &'a LineUnit,
    /// The epoch's dead letters (`on_error = "skip"` counts there too).
    dead_letters: &'a DeadLetters,
}

/// Decoder state, by format.
enum Decoder {
    Csv(Box<datafusion::arrow::csv::reader::Decoder>),
    Json(Box<datafusion::arrow::json::reader::Decoder>),
}

impl Decoder {
    fn decode(&mut self, buf: &[u8]) -> Result<usize, ArrowError> {
        match self {
            Decoder::Csv(d) => d.decode(buf),
            Decoder::Json(d) => d.decode(buf),
        }
    }
    fn flush(&mut self) -> Result<Option<RecordBatch>, ArrowError> {
        match self {
            Decoder::Csv(d) => d.flush(),
            Decoder::Json(d) => d.flush(),
        }
    }
    fn capacity_left(&self, batch_size: usize) -> bool {
        match self {
            Decoder::Csv(d) => d.capacity() > 0,
            // the JSON decoder counts a row from its first byte: a full count
            // can include a record still cut at the chunk's end
            Decoder::Json(d) => d.len() < batch_size || d.has_partial_record(),
        }
    }
}

impl UnitReader<'_> {
    fn uri(&self) -> String {
        let base = self
            .shared
            .store_url
            .strip_suffix('/')
            .unwrap_or(&self.shared.store_url);
        format!("{base}/{}", self.unit.object.location)
    }

    fn error(&self, line: Option<u64>, message: String, retry: RetryHint) -> SluiceError {
        SluiceError::Source {
            source_name: self.shared.source_name.clone(),
            file: Some(self.uri()),
            line,
            message,
            retry,
            cause: None,
        }
    }

    /// Reading the unit failed because of `cause` (a store or stream
    /// error): retried only when the cause may pass.
    fn failed(&self, cause: impl std::error::Error + Send + Sync + 'static) -> SluiceError {
        SluiceError::source_failed(
            &self.shared.source_name,
            Some(self.uri()),
            "cannot read",
            cause,
        )
    }

    fn starts_at_file_start(&self) -> bool {
        self.unit.range.as_ref().is_none_or(|r| r.start == 0)
    }

    fn decoder(&self, header: bool) -> Result<Decoder, SluiceError> {
        let schema = Arc::clone(&self.shared.file_schema);
        let bs = self.shared.batch_size;
        Ok(match &self.shared.format {
            LineFormat::Csv(o) => {
                let mut b = datafusion::arrow::csv::ReaderBuilder::new(schema)
                    .with_header(header)
                    .with_delimiter(o.delimiter)
                    .with_quote(o.quote)
                    .with_batch_size(bs);
                if let Some(e) = o.escape {
                    b = b.with_escape(e);
                }
                if let Some(p) = &self.shared.projection {
                    b = b.with_projection(p.clone());
                }
                Decoder::Csv(Box::new(b.build_decoder()))
            }
            LineFormat::Jsonl => {
                // decode straight into the projected schema: other keys are skipped
                let projected = project_schema(&schema, self.shared.projection.as_ref())
                    .map_err(|e| SluiceError::Internal(e.to_string()))?;
                Decoder::Json(Box::new(
                    datafusion::arrow::json::ReaderBuilder::new(projected)
                        .with_batch_size(bs)
                        .build_decoder()
                        .map_err(|e| self.error(None, e.to_string(), RetryHint::Never))?,
                ))
            }
        })
    }

    /// Opens the unit as a stream of decompressed bytes.
    async fn open(&self) -> Result<BoxStream<'static, std::io::Result<Bytes>>, SluiceError> {
        let path = &self.unit.object.location;
        let store_err = |e: object_store::Error| self.failed(e);
        let result = match &self.unit.range {
            Some(r) if r.start > 0 => {
                // one byte early, to see whether a line starts exactly at r.start
                let opts = GetOptions {
                    range: Some(GetRange::Bounded(r.start - 1..self.unit.object.size)),
                    ..Default::default()
                };
                self.shared
                    .store
                    .get_opts(path, opts)
                    .await
                    .map_err(store_err)?
            }
            _ => self.shared.store.get(path).await.map_err(store_err)?,
        };
        let raw = crate::storage::byte_stream(result);
        Ok(match self.unit.compression {
            Compression::Gzip => {
                let mut d = GzipDecoder::new(StreamReader::new(raw));
                d.multiple_members(true);
                ReaderStream::with_capacity(d, 1 << 20).boxed()
            }
            Compression::Zstd => {
                ReaderStream::with_capacity(ZstdDecoder::new(StreamReader::new(raw)), 1 << 20)
                    .boxed()
            }
            _ => raw.boxed(),
        })
    }

    /// Reads the unit; returns false when the receiver is gone.
    async fn read(
        &self,
        tx: &Sender<Result<RecordBatch>>,
        remaining: &mut usize,
    ) -> Result<bool, SluiceError> {
        let mut stream = self.open().await?;
        let has_header = matches!(&self.shared.format, LineFormat::Csv(o) if o.has_header)
            && self.starts_at_file_start();
        let mut decoder = self.decoder(has_header)?;
        let tolerant = self.shared.on_error != OnError::Fail;
        let mut records = RecordCounter::default();
        let mut given_up = 0u64;
        let mut window = RangeWindow::new(self.unit.range.clone());
        let mut pending = Bytes::new();
        let mut eof = false;
        // JSON decoding errors carry no line: keep the batch's bytes to find it
        // (and every batch's bytes when bad lines are skipped or dead-lettered)
        let keep_bytes = matches!(self.shared.format, LineFormat::Jsonl) || tolerant;
        let mut batch_bytes: Vec<Bytes> = Vec::new();
        let mut lines_done: u64 = 0;
        let mut rows_done: u64 = 0;
        // After a decoding error with `on_error` skip or dead_letter: salvage
        // the failed batch line by line, then carry on with a fresh decoder
        // (the loop's own end-of-unit path then reconciles the counts).
        macro_rules! salvage_and_go_on {
            () => {{
                let mut lines = Lines {
                    done: &mut lines_done,
                    header: has_header,
                    rows: &mut rows_done,
                    given_up: &mut given_up,
                };
                let sent = self
                    .salvage(
                        &mut decoder,
                        &mut batch_bytes,
                        &mut pending,
                        eof,
                        &mut lines,
                        tx,
                        remaining,
                    )
                    .await?;
                if !sent {
                    return Ok(false);
                }
                if *remaining == 0 {
                    return Ok(true);
                }
                if !eof && !pending.is_empty() && memchr::memchr(b'\n', &pending).is_none() {
                    // the bad line goes on in the next chunk: take that in
                    // first, or the same bytes would fail again and again
                    match stream.next().await {
                        Some(Ok(chunk)) => {
                            let (chunk, last) = window.clip(chunk);
                            records.feed(&chunk);
                            let mut joined = Vec::with_capacity(pending.len() + chunk.len());
                            joined.extend_from_slice(&pending);
                            joined.extend_from_slice(&chunk);
                            pending = Bytes::from(joined);
                            eof = last;
                        }
                        Some(Err(e)) => return Err(self.failed(e)),
                        None => eof = true,
                    }
                }
                continue;
            }};
        }
        loop {
            if pending.is_empty() && !eof {
                match stream.next().await {
                    Some(Ok(chunk)) => {
                        let (chunk, last) = window.clip(chunk);
                        records.feed(&chunk);
                        pending = chunk;
                        eof = last;
                    }
                    Some(Err(e)) => return Err(self.failed(e)),
                    None => eof = true,
                }
            }
            let mut must_flush = false;
            if !pending.is_empty() {
                let n = match decoder.decode(&pending) {
                    Ok(n) => n,
                    Err(_) if tolerant => {
                        salvage_and_go_on!();
                    }
                    Err(e) => {
                        return Err(self.decode_error(
                            e,
                            rows_done,
                            lines_done,
                            &batch_bytes,
                            &pending,
                        ));
                    }
                };
                if keep_bytes {
                    batch_bytes.push(pending.slice(..n));
                }
                pending.advance(n);
                must_flush = !decoder.capacity_left(self.shared.batch_size);
                if !must_flush && !pending.is_empty() && n == 0 {
                    return Err(SluiceError::Internal(format!(
                        "{} decoder made no progress on {}",
                        self.shared.format.name(),
                        self.uri()
                    )));
                }
            } else if eof {
                let cut = matches!(&decoder, Decoder::Json(d) if d.has_partial_record());
                match decoder.decode(&[]) {
                    Ok(_) if !(tolerant && cut) => {}
                    Err(e) if !tolerant => {
                        return Err(self.decode_error(
                            e,
                            rows_done,
                            lines_done,
                            &batch_bytes,
                            &pending,
                        ));
                    }
                    _ => {
                        salvage_and_go_on!();
                    }
                }
                must_flush = true;
            }
            if must_flush {
                let batch = match decoder.flush() {
                    Ok(b) => b,
                    Err(_) if tolerant => {
                        salvage_and_go_on!();
                    }
                    Err(e) => {
                        return Err(self.decode_error(
                            e,
                            rows_done,
                            lines_done,
                            &batch_bytes,
                            &pending,
                        ));
                    }
                };
                if keep_bytes {
                    lines_done += batch_bytes
                        .iter()
                        .map(|b| memchr::memchr_iter(b'\n', b).count() as u64)
                        .sum::<u64>();
                    batch_bytes.clear();
                }
                if let Some(mut batch) = batch {
                    rows_done += batch.num_rows() as u64;
                    if batch.num_rows() > *remaining {
                        batch = batch.slice(0, *remaining);
                    }
                    *remaining -= batch.num_rows();
                    if batch.num_rows() > 0 && tx.send(Ok(batch)).await.is_err() {
                        return Ok(false);
                    }
                    if *remaining == 0 {
                        return Ok(true);
                    }
                }
                if eof && pending.is_empty() {
                    if let Decoder::Json(d) = &decoder
                        && d.has_partial_record()
                    {
                        return Err(self.error(
                            Some(lines_done + 1),
                            "the file ends in the middle of a JSON value".into(),
                            RetryHint::Never,
                        ));
                    }
                    self.reconcile(records.total(), rows_done, given_up, has_header)?;
                    return Ok(true);
                }
            }
        }
    }

    /// After a decoding error with `on_error` skip or dead_letter: decodes the
    /// failed batch's complete lines one at a time, sends the good rows, hands
    /// the bad ones over (with their raw text and line), and starts a fresh
    /// decoder on what follows. Nothing of the batch was sent before, so no
    /// row is lost or repeated. Returns false when the receiver is gone.
    #[allow(clippy::too_many_arguments)]
    async fn salvage(
        &self,
        decoder: &mut Decoder,
        batch_bytes: &mut Vec<Bytes>,
        pending: &mut Bytes,
        eof: bool,
        lines: &mut Lines<'_>,
        tx: &Sender<Result<RecordBatch>>,
        remaining: &mut usize,
    ) -> Result<bool, SluiceError> {
        let mut all =
            Vec::with_capacity(batch_bytes.iter().map(Bytes::len).sum::<usize>() + pending.len());
        for b in batch_bytes.drain(..) {
            all.extend_from_slice(&b);
        }
        all.extend_from_slice(pending);
        // complete lines only: a line cut at the chunk's end waits for the rest
        let cut = if eof {
            all.len()
        } else {
            memchr::memrchr(b'\n', &all).map_or(0, |i| i + 1)
        };
        let rest = Bytes::copy_from_slice(&all[cut..]);
        let complete = &all[..cut];
        let whole = self.starts_at_file_start();
        let mut header = lines.header && *lines.done == 0;
        let mut good = Vec::new();
        let mut pieces = complete.split(|b| *b == b'\n').peekable();
        let mut index = 0u64;
        while let Some(line) = pieces.next() {
            if pieces.peek().is_none() && line.is_empty() {
                break; // after the last newline
            }
            index += 1;
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            if std::mem::take(&mut header) {
                continue;
            }
            match self.decode_line(line) {
                Ok(Some(batch)) => good.push(batch),
                Ok(None) => {}
                Err(message) => {
                    let line_no = *lines.done + index;
                    self.give_up(line, line_no, whole, message);
                    *lines.given_up += 1;
                }
            }
        }
        *lines.done += memchr::memchr_iter(b'\n', complete).count() as u64;
        *pending = rest;
        *decoder = self.decoder(false)?;
        let schema = good.first().map(|b| b.schema());
        if let Some(schema) = schema {
            let mut batch = datafusion::arrow::compute::concat_batches(&schema, &good)
                .map_err(|e| SluiceError::Internal(format!("joining salvaged rows: {e}")))?;
            *lines.rows += batch.num_rows() as u64;
            if batch.num_rows() > *remaining {
                batch = batch.slice(0, *remaining);
            }
            *remaining -= batch.num_rows();
            if batch.num_rows() > 0 && tx.send(Ok(batch)).await.is_err() {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Checks, at the end of a unit read whole, that every record (non-blank
    /// line, the header aside) came out as a row or was given up: no row is
    /// lost between the bytes and the batches. A mismatch fails the epoch.
    fn reconcile(
        &self,
        records: u64,
        rows: u64,
        given_up: u64,
        header: bool,
    ) -> Result<(), SluiceError> {
        if matches!(&self.shared.format, LineFormat::Csv(o) if o.newlines_in_values) {
            return Ok(()); // a record may span lines
        }
        let expected = records.saturating_sub(u64::from(header && records > 0));
        if expected == rows + given_up {
            return Ok(());
        }
        Err(self.error(
            None,
            format!("counts do not reconcile: {expected} records read, {rows} rows passed on + {given_up} given up"),
            RetryHint::Never,
        ))
    }

    /// Decodes one line on its own.
    fn decode_line(&self, line: &[u8]) -> Result<Option<RecordBatch>, String> {
        let mut d = self.decoder(false).map_err(|e| e.to_string())?;
        let mut text = Vec::with_capacity(line.len() + 1);
        text.extend_from_slice(line);
        text.push(b'\n');
        let n = d.decode(&text).map_err(|e| strip_arrow_prefix(&e))?;
        if n < text.len() {
            d.decode(&text[n..]).map_err(|e| strip_arrow_prefix(&e))?;
        }
        if let Decoder::Json(j) = &d
            && j.has_partial_record()
        {
            return Err("the line is not a complete JSON value".into());
        }
        d.flush().map_err(|e| strip_arrow_prefix(&e))
    }

    /// Counts a bad line as skipped, or hands it to the dead letters.
    fn give_up(&self, line: &[u8], line_no: u64, whole: bool, message: String) {
        let dead = self.dead_letters;
        let code = if message.contains("non-nullable") || message.contains("null value") {
            ErrorCode::ConstraintViolation
        } else if message.contains("number of fields")
            || message.contains("UTF-8")
            || message.contains("JSON value")
        {
            ErrorCode::Malformed
        } else if message.contains("pars") || message.contains("cast") {
            ErrorCode::TypeMismatch
        } else {
            ErrorCode::Malformed
        };
        let key = format!(
            "{}:{line_no}:{}",
            self.uri(),
            self.unit.range.as_ref().map_or(0, |r| r.start)
        );
        dead.push(
            key,
            DeadLetter {
                component: ComponentId::Source(self.shared.source_name.clone()),
                code,
                message,
                file: Some(self.uri()),
                line: whole.then_some(line_no),
                offset: (!whole).then(|| self.unit.range.as_ref().map_or(0, |r| r.start)),
                raw: String::from_utf8_lossy(line).into_owned(),
                skipped: self.shared.on_error == OnError::Skip,
            },
        );
    }

    /// Turns a decoder error into one that names the file and the line.
    fn decode_error(
        &self,
        e: ArrowError,
        rows_done: u64,
        lines_done: u64,
        batch: &[Bytes],
        pending: &Bytes,
    ) -> SluiceError {
        let message = e.to_string();
        let message = message
            .strip_prefix("Csv error: ")
            .or_else(|| message.strip_prefix("Json error: "))
            .unwrap_or(&message);
        let whole = self.starts_at_file_start();
        match &self.shared.format {
            LineFormat::Csv(o) => {
                let header = u64::from(o.has_header && whole);
                // arrow counts records from 1 including the header in "for line N",
                // and data rows from 1 (header excluded) in "at line N"
                let line = number_after(message, "for line ")
                    .or_else(|| number_after(message, "at line ").map(|n| n + header));
                let _ = rows_done;
                if whole {
                    self.error(line, message.to_string(), RetryHint::Never)
                } else {
                    let start = self.unit.range.as_ref().map(|r| r.start).unwrap_or(0);
                    self.error(
                        None,
                        format!("{message} (in the split starting at byte {start})"),
                        RetryHint::Never,
                    )
                }
            }
            LineFormat::Jsonl => {
                let found = locate_bad_json_line(self.shared, batch, pending);
                match (found, whole) {
                    (Some((i, msg)), true) => {
                        self.error(Some(lines_done + i + 1), msg, RetryHint::Never)
                    }
                    (Some((_, msg)), false) => {
                        let start = self.unit.range.as_ref().map(|r| r.start).unwrap_or(0);
                        self.error(
                            None,
                            format!("{msg} (in the split starting at byte {start})"),
                            RetryHint::Never,
                        )
                    }
                    (None, _) => self.error(None, message.to_string(), RetryHint::Never),
                }
            }
        }
    }
}

/// Lines consumed so far in a unit, whether its first one is a header, and
/// the rows salvaged and given up (for the unit's reconciliation).
struct Lines<'a> {
    done: &'a mut u64,
    header: bool,
    rows: &'a mut u64,
    given_up: &'a mut u64,
}

/// Counts the non-blank lines of a byte stream fed in chunks: the records a
/// unit holds, counted independently of the decoders.
#[derive(Default)]
struct RecordCounter {
    in_line: bool,
    lines: u64,
}

impl RecordCounter {
    fn feed(&mut self, bytes: &[u8]) {
        let mut start = 0;
        for nl in memchr::memchr_iter(b'\n', bytes) {
            self.in_line |= bytes[start..nl].iter().any(|c| !c.is_ascii_whitespace());
            self.lines += u64::from(self.in_line);
            self.in_line = false;
            start = nl + 1;
        }
        self.in_line |= bytes[start..].iter().any(|c| !c.is_ascii_whitespace());
    }

    fn total(&self) -> u64 {
        self.lines + u64::from(self.in_line)
    }
}

/// The decoder's message for a line decoded on its own, without its prefix
/// and without the decoder's line count (always 0 or 1 here; the dead letter
/// carries the line in the file).
fn strip_arrow_prefix(e: &ArrowError) -> String {
    let m = e.to_string();
    let mut m = m
        .strip_prefix("Csv error: ")
        .or_else(|| m.strip_prefix("Json error: "))
        .unwrap_or(&m)
        .to_string();
    for marker in [" for line ", " at line "] {
        if let Some(i) = m.find(marker) {
            let digits = m[i + marker.len()..]
                .chars()
                .take_while(char::is_ascii_digit)
                .count();
            m.replace_range(i..i + marker.len() + digits, "");
        }
    }
    m
}

/// Finds the first line of `batch` + `pending` that fails to decode on its
/// own: its index within those bytes and the decoder's message.
fn locate_bad_json_line(
    shared: &ScanShared,
    batch: &[Bytes],
    pending: &Bytes,
) -> Option<(u64, String)> {
    let mut all = Vec::with_capacity(batch.iter().map(Bytes::len).sum::<usize>() + pending.len());
    for b in batch {
        all.extend_from_slice(b);
    }
    all.extend_from_slice(pending);
    let schema = project_schema(&shared.file_schema, shared.projection.as_ref()).ok()?;
    for (i, line) in all.split(|b| *b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let mut d = datafusion::arrow::json::ReaderBuilder::new(Arc::clone(&schema))
            .build_decoder()
            .ok()?;
        let result = d.decode(line).and_then(|_| {
            if d.has_partial_record() {
                Err(ArrowError::JsonError(
                    "the line is not a complete JSON value".into(),
                ))
            } else {
                d.flush().map(|_| ())
            }
        });
        if let Err(e) = result {
            let m = e.to_string();
            return Some((
                i as u64,
                m.strip_prefix("Json error: ").unwrap_or(&m).to_string(),
            ));
        }
    }
    None
}

fn number_after(text: &str, marker: &str) -> Option<u64> {
    let rest = &text[text.find(marker)? + marker.len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// Keeps the bytes of the lines that start inside a byte range.
struct RangeWindow {
    /// Absolute offset of the next byte of the stream.
    pos: u64,
    /// Still dropping the partial line before the range.
    skipping: bool,
    /// Offset of the range's last byte; the line containing it is the last one.
    last_byte: Option<u64>,
    done: bool,
}

impl RangeWindow {
    fn new(range: Option<Range<u64>>) -> Self {
        match range {
            None => Self {
                pos: 0,
                skipping: false,
                last_byte: None,
                done: false,
            },
            Some(r) => Self {
                pos: r.start.saturating_sub(1),
                skipping: r.start > 0,
                last_byte: Some(r.end.saturating_sub(1)),
                done: false,
            },
        }
    }

    /// Returns the part of `chunk` inside the window and whether the window is finished.
    fn clip(&mut self, mut chunk: Bytes) -> (Bytes, bool) {
        if self.done {
            return (Bytes::new(), true);
        }
        let chunk_start = self.pos;
        self.pos += chunk.len() as u64;
        let mut offset = chunk_start;
        if self.skipping {
            match memchr::memchr(b'\n', &chunk) {
                Some(i) => {
                    chunk.advance(i + 1);
                    offset += i as u64 + 1;
                    self.skipping = false;
                    // the newline ending the previous unit's last line is at or past
                    // our last byte: no line starts inside this range
                    if self.last_byte.is_some_and(|last| offset > last) {
                        self.done = true;
                        return (Bytes::new(), true);
                    }
                }
                None => return (Bytes::new(), false),
            }
        }
        if let Some(last) = self.last_byte
            && self.pos > last
        {
            // the window ends at the first newline at or after `last`
            let from = last.saturating_sub(offset) as usize;
            match memchr::memchr(b'\n', chunk.get(from.min(chunk.len())..).unwrap_or(&[])) {
                Some(i) => {
                    chunk.truncate(from + i + 1);
                    self.done = true;
                    return (chunk, true);
                }
                None => {
                    // the last line continues in the next chunk
                    self.last_byte = Some(self.pos);
                }
            }
        }
        (chunk, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines_of(data: &str, range: Range<u64>, chunk: usize) -> String {
        let mut w = RangeWindow::new(Some(range.clone()));
        // the stream of a split starts one byte early
        let start = range.start.saturating_sub(1) as usize;
        let mut out = Vec::new();
        for c in data.as_bytes()[start..].chunks(chunk) {
            let (b, done) = w.clip(Bytes::copy_from_slice(c));
            out.extend_from_slice(&b);
            if done {
                break;
            }
        }
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn ranges_own_the_lines_that_start_in_them() {
        let data = "aa\nbbbb\ncc\ndddddd\ne\n";
        for chunk in [1, 2, 3, 7, 100] {
            for cut in 1..data.len() as u64 {
                let a = lines_of(data, 0..cut, chunk);
                let b = lines_of(data, cut..data.len() as u64, chunk);
                assert_eq!(
                    format!("{a}{b}"),
                    data,
                    "cut at {cut}, chunk {chunk}: {a:?} + {b:?}"
                );
                assert!(a.is_empty() || a.ends_with('\n'));
            }
        }
    }

    #[test]
    fn records_are_counted_across_chunks_without_blank_lines() {
        let text = b"a,1\n\n  \nb,2\r\nc,3\n   d,4";
        for cut in 0..text.len() {
            let mut c = RecordCounter::default();
            c.feed(&text[..cut]);
            c.feed(&text[cut..]);
            assert_eq!(c.total(), 4, "cut at {cut}");
        }
    }

    #[test]
    fn three_way_splits_lose_and_repeat_nothing() {
        let data = "a\nbbbbbbbbbbbbbbbb\nc\ndd\n\neeeeeeeeeee\nf";
        let n = data.len() as u64;
        for chunk in [1, 4, 64] {
            for c1 in 1..n {
                for c2 in c1..n {
                    let parts = [
                        lines_of(data, 0..c1, chunk),
                        lines_of(data, c1..c2, chunk),
                        lines_of(data, c2..n, chunk),
                    ];
                    assert_eq!(
                        parts.concat(),
                        data,
                        "cuts {c1},{c2} chunk {chunk}: {parts:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn compression_follows_the_extension() {
        assert_eq!(Compression::Auto.of("a/b.csv.gz"), Compression::Gzip);
        assert_eq!(Compression::Auto.of("b.jsonl.zst"), Compression::Zstd);
        assert_eq!(Compression::Auto.of("b.csv"), Compression::None);
        assert_eq!(Compression::Gzip.of("b.csv"), Compression::Gzip);
    }

    #[test]
    fn numbers_are_read_after_markers() {
        assert_eq!(
            number_after(
                "incorrect number of fields for line 7, expected 3",
                "for line "
            ),
            Some(7)
        );
        assert_eq!(number_after("nothing here", "for line "), None);
    }
}
