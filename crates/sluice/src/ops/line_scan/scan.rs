//! `LineScanExec`: reads line-oriented files (CSV, JSON lines) from an object store.
//!
//! - Output schema: the source schema, projected when a projection is pushed down.
//! - Emits: a batch every `batch_size` records of a unit, and at its end.
//! - State: per partition, the undecoded bytes of the current chunk and the
//!   records of the batch being gathered.
//! - Failure: a record that cannot be read is handed to `on_error`: skipped,
//!   dead-lettered, or (`fail`) the scan fails with a [`SluiceError::Source`]
//!   naming the source, the file and the record's first physical line.
//!
//! Each unit (a file, or a byte range of one; see [`super::split`]) is read
//! as a byte stream, decompressed on the fly, framed into records
//! ([`super::framing`]) and decoded a batch at a time
//! ([`super::decoding`]). Every record comes out exactly once: as a row, or
//! as a record given up. Each partition runs in its own task, so reading
//! and parsing overlap with the rest of the plan.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{Result, internal_err};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::EquivalenceProperties;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchReceiverStreamBuilder;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PhysicalExpr, PlanProperties,
};
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt};
use sluice_contract::ErrorCode;
use tokio::sync::mpsc::Sender;

use super::decoding::{Bad, BatchDecoder, CutBuffers};
use super::framing::UTF8_BOM;
use super::framing::{Frame, Framer, count_line_breaks};
use super::split::RangeWindow;
use super::{LineFormat, LineUnit};
use crate::dead_letter::{DeadLetter, DeadLetters, OnError};
use crate::epoch::EpochBinding;
use crate::error::{RetryHint, SluiceError};
use crate::metrics::ComponentId;

/// What every partition of a scan shares.
#[derive(Debug, Clone)]
pub(super) struct ScanShared {
    pub source_name: String,
    pub store: Arc<dyn ObjectStore>,
    pub store_url: String,
    pub format: LineFormat,
    pub file_schema: SchemaRef,
    pub projection: Option<Vec<usize>>,
    pub batch_size: usize,
    pub on_error: OnError,
    /// Physical lines before each file's first byte (standard input is read
    /// as a run of slices).
    pub line_offset: u64,
    /// Average bytes per record, when sampled (for the row estimate).
    pub bytes_per_row: Option<f64>,
}

/// Reads CSV / JSON-lines files; see the module docs.
#[derive(Debug)]
pub(crate) struct LineScanExec {
    shared: ScanShared,
    decoder: Arc<BatchDecoder>,
    groups: Vec<Vec<LineUnit>>,
    limit: Option<usize>,
    props: Arc<PlanProperties>,
}

impl LineScanExec {
    pub(super) fn try_new(
        shared: ScanShared,
        groups: Vec<Vec<LineUnit>>,
        limit: Option<usize>,
    ) -> Result<Self> {
        let decoder = BatchDecoder::new(
            shared.format.clone(),
            &shared.file_schema,
            shared.projection.as_ref(),
            shared.batch_size,
        )?;
        let props = PlanProperties::new(
            EquivalenceProperties::new(Arc::clone(decoder.schema())),
            Partitioning::UnknownPartitioning(groups.len().max(1)),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        Ok(Self {
            shared,
            decoder: Arc::new(decoder),
            groups,
            limit,
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
    /// The bytes to read and the rows they hold, as estimates: enough for
    /// the planner to build a join's hash table on the smaller side.
    fn statistics_from_inputs(
        &self,
        _input_stats: &[Arc<datafusion::common::Statistics>],
        args: &datafusion::physical_plan::StatisticsArgs,
    ) -> Result<Arc<datafusion::common::Statistics>> {
        let partition = args.partition();
        let bytes = |units: &[LineUnit]| -> u64 {
            units
                .iter()
                .map(|u| u.range.as_ref().map_or(u.object.size, |r| r.end - r.start))
                .sum()
        };
        let total = match partition {
            Some(p) => self.groups.get(p).map_or(0, |g| bytes(g)),
            None => self.groups.iter().map(|g| bytes(g)).sum(),
        };
        use datafusion::common::stats::Precision;
        let mut stats = datafusion::common::Statistics::new_unknown(self.decoder.schema());
        stats.total_byte_size = Precision::Inexact(usize::try_from(total).unwrap_or(usize::MAX));
        if let Some(bpr) = self.shared.bytes_per_row.filter(|b| *b >= 1.0) {
            stats.num_rows = Precision::Inexact((total as f64 / bpr) as usize);
        }
        Ok(Arc::new(stats))
    }
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
        let mut builder =
            RecordBatchReceiverStreamBuilder::new(Arc::clone(self.decoder.schema()), 2);
        let tx = builder.tx();
        let shared = self.shared.clone();
        let decoder = Arc::clone(&self.decoder);
        let limit = self.limit;
        builder.spawn(async move {
            let mut remaining = limit.unwrap_or(usize::MAX);
            for unit in units {
                if remaining == 0 {
                    break;
                }
                let reader = UnitReader {
                    shared: &shared,
                    decoder: &decoder,
                    unit: &unit,
                    dead_letters: &dead_letters,
                    line_base: None,
                    first_offset: None,
                    buffers: CutBuffers::default(),
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

/// Where a record was found.
#[derive(Debug, Clone, Copy)]
struct Origin {
    /// Physical line of its first byte, counted from the unit's first line.
    line: u64,
    /// Byte offset in the (decompressed) file.
    offset: u64,
}

/// The records of the batch being gathered.
#[derive(Default)]
struct Gathered {
    /// The well-framed records, each followed by `\n`.
    raw: Vec<u8>,
    spans: Vec<Range<usize>>,
    /// Where each span came from.
    span_origin: Vec<Origin>,
    /// Records refused before decoding: where, the raw bytes, and why.
    refused: Vec<(Origin, Vec<u8>, ErrorCode, String)>,
}

impl Gathered {
    fn len(&self) -> usize {
        self.spans.len() + self.refused.len()
    }

    /// Empties it, keeping the buffers' memory for the next batch (fresh
    /// buffers per batch cost page faults: the kernel zeroes every new page).
    fn clear(&mut self) {
        self.raw.clear();
        self.spans.clear();
        self.span_origin.clear();
        self.refused.clear();
    }
}

/// Reads one unit and sends its batches.
struct UnitReader<'a> {
    shared: &'a ScanShared,
    decoder: &'a BatchDecoder,
    unit: &'a LineUnit,
    /// The epoch's dead letters (`on_error = "skip"` counts there too).
    dead_letters: &'a DeadLetters,
    /// Physical line of the unit's first byte, once known (counted only
    /// when a record is given up inside a range that starts mid-file).
    line_base: Option<u64>,
    /// File offset of the unit's first line.
    first_offset: Option<u64>,
    /// The decoder's buffers, kept from batch to batch.
    buffers: CutBuffers,
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
        Ok(super::decompressed(
            crate::storage::byte_stream(result),
            self.unit.compression,
        ))
    }

    /// Reads the unit; returns false when the receiver is gone.
    async fn read(
        mut self,
        tx: &Sender<Result<RecordBatch>>,
        remaining: &mut usize,
    ) -> Result<bool, SluiceError> {
        let mut stream = self.open().await?;
        let mut window = RangeWindow::new(self.unit.range.clone());
        let mut framer = Framer::new(self.shared.format.dialect(), 1);
        let mut header = matches!(&self.shared.format, LineFormat::Csv(o) if o.has_header)
            && self.starts_at_file_start();
        // the bytes not framed yet, and the file offset of the first
        let mut buf: Vec<u8> = Vec::new();
        let mut buf_offset: Option<u64> = None;
        let mut bom_checked = !self.starts_at_file_start();
        let mut eof = false;
        let mut frames: Vec<Frame> = Vec::new();
        let mut batch = Gathered::default();
        let mut scratch = Vec::new();
        while !eof {
            match stream.next().await {
                Some(Ok(chunk)) => {
                    let (chunk, at, last) = window.clip(chunk);
                    if !chunk.is_empty() {
                        buf_offset.get_or_insert(at);
                        self.first_offset.get_or_insert(at);
                    }
                    buf.extend_from_slice(&chunk);
                    eof = last;
                }
                Some(Err(e)) => return Err(self.failed(e)),
                None => eof = true,
            }
            if !bom_checked && (buf.len() >= UTF8_BOM.len() || eof) {
                bom_checked = true;
                if buf.starts_with(UTF8_BOM) {
                    buf.drain(..UTF8_BOM.len());
                    buf_offset = Some(buf_offset.unwrap_or(0) + UTF8_BOM.len() as u64);
                }
            }
            if !bom_checked {
                continue;
            }
            let base = buf_offset.unwrap_or(0);
            frames.clear();
            let used = framer.frame(&buf, eof, &mut frames);
            for f in &frames {
                if std::mem::take(&mut header) {
                    continue;
                }
                let record = &buf[f.start..f.end];
                let origin = Origin {
                    line: f.line,
                    offset: base + f.start as u64,
                };
                let problem = match f.fault {
                    Some(fault) => Err(super::json_check::Problem {
                        code: ErrorCode::Malformed,
                        message: fault.to_string(),
                    }),
                    None => self.decoder.precheck(record, f.fields, &mut scratch),
                };
                match problem {
                    Ok(()) => {
                        let s = batch.raw.len();
                        batch.raw.extend_from_slice(record);
                        batch.spans.push(s..batch.raw.len());
                        batch.raw.push(b'\n');
                        batch.span_origin.push(origin);
                    }
                    Err(p) => batch
                        .refused
                        .push((origin, record.to_vec(), p.code, p.message)),
                }
                if batch.len() >= self.shared.batch_size {
                    let sent = self.emit(&batch, tx, remaining).await?;
                    batch.clear();
                    if !sent {
                        return Ok(false);
                    }
                    if *remaining == 0 {
                        return Ok(true);
                    }
                }
            }
            buf.drain(..used);
            buf_offset = Some(base + used as u64);
        }
        self.emit(&batch, tx, remaining).await
    }

    /// Decodes a gathered batch, hands its bad records to `on_error`, and
    /// sends its rows. Returns false when the receiver is gone.
    async fn emit(
        &mut self,
        batch: &Gathered,
        tx: &Sender<Result<RecordBatch>>,
        remaining: &mut usize,
    ) -> Result<bool, SluiceError> {
        let mut bad: Vec<Bad> = Vec::new();
        let rows = self
            .decoder
            .decode(&batch.raw, &batch.spans, &mut bad, &mut self.buffers)
            .map_err(|e| SluiceError::Internal(format!("decoding {}: {e}", self.uri())))?;
        // every record given up, in file order
        let mut given_up: Vec<(Origin, &[u8], ErrorCode, String)> = batch
            .refused
            .iter()
            .map(|(o, raw, code, m)| (*o, raw.as_slice(), *code, m.clone()))
            .chain(bad.into_iter().map(|b| {
                (
                    batch.span_origin[b.index],
                    &batch.raw[batch.spans[b.index].clone()],
                    b.code,
                    b.message,
                )
            }))
            .collect();
        given_up.sort_by_key(|g| g.0.offset);
        if !given_up.is_empty() {
            let base = self.line_base().await?;
            for (origin, raw, code, message) in given_up {
                let line = base + origin.line - 1;
                if self.shared.on_error == OnError::Fail {
                    return Err(SluiceError::Source {
                        source_name: self.shared.source_name.clone(),
                        file: Some(self.uri()),
                        line: Some(line),
                        message: format!("{message} ({code})"),
                        retry: RetryHint::Never,
                        cause: None,
                    });
                }
                self.give_up(raw, line, origin.offset, code, message);
            }
        }
        let Some(mut rows) = rows else {
            return Ok(true);
        };
        if rows.num_rows() > *remaining {
            rows = rows.slice(0, *remaining);
        }
        *remaining -= rows.num_rows();
        Ok(tx.send(Ok(rows)).await.is_ok())
    }

    /// The physical line of the unit's first byte: counted from the file's
    /// start when the unit is a range that starts mid-file.
    async fn line_base(&mut self) -> Result<u64, SluiceError> {
        if let Some(b) = self.line_base {
            return Ok(b);
        }
        let before = self.first_offset.unwrap_or(0);
        let mut base = self.shared.line_offset + 1;
        if before > 0 {
            let opts = GetOptions {
                range: Some(GetRange::Bounded(0..before)),
                ..Default::default()
            };
            let got = self
                .shared
                .store
                .get_opts(&self.unit.object.location, opts)
                .await
                .map_err(|e| self.failed(e))?;
            let mut stream = crate::storage::byte_stream(got);
            let mut cr = false;
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| self.failed(e))?;
                base += count_line_breaks(&chunk, &mut cr);
            }
            base += u64::from(cr);
        }
        self.line_base = Some(base);
        Ok(base)
    }

    /// Counts a bad record as skipped, or hands it to the dead letters.
    fn give_up(&self, raw: &[u8], line: u64, offset: u64, code: ErrorCode, message: String) {
        let key = format!("{}:{offset:020}", self.uri());
        let message = format!("{message} (bytes {offset}..{})", offset + raw.len() as u64);
        self.dead_letters.push(
            key,
            DeadLetter {
                component: ComponentId::Source(self.shared.source_name.clone()),
                code,
                message,
                file: Some(self.uri()),
                line: Some(line),
                offset: Some(offset),
                raw: String::from_utf8_lossy(raw).into_owned(),
                skipped: self.shared.on_error == OnError::Skip,
            },
        );
    }
}
