//! Sources: where rows come from.
//!
//! Every source implements [`Source`]: it has a fixed Arrow schema, hands out
//! its input as a sequence of [`Slice`]s (one per epoch) with offsets, can
//! resume from the offsets of the last commit, and is told when a slice is
//! committed. Bounded sources (files, the TPC-H generator) end; the same trait
//! serves sources that never end (a directory to tail, Kafka) without changes
//! to the epoch loop.
//!
//! Sources are nouns. A source's config ([`SourceConfig`]) holds the keys
//! every kind shares, decoded once, around its kind's own ([`SourceKind`]);
//! the explicit list of kinds is [`KINDS`]. A Rust program embedding the
//! engine adds its own source with a [`SourceFactory`].

mod config;
mod delta;
pub(crate) mod epoch_table;
mod file;
mod generator;
pub(crate) mod kafka;
mod memory;
mod nexmark;
mod stdin;
mod tpch;

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::TableProvider;
use datafusion::prelude::SessionContext;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use sluice_contract::{LineageEntry, SourceProvenance};

pub use crate::ops::line_scan::Compression;
pub use crate::ops::tpch_scan::TpchTable;
#[cfg(test)]
pub(crate) use config::EVENT_TIME;
pub(crate) use config::KINDS;
pub use config::{CustomSource, SourceConfig, SourceKind};
pub use delta::{DeltaOffset, DeltaSourceConfig};
pub(crate) use epoch_table::EpochTable;
pub use file::{
    ArrowIpcSourceConfig, CsvSourceConfig, DirFormat, DirSourceConfig, FileOffset,
    JsonlSourceConfig, ParquetSourceConfig,
};
pub use generator::{GeneratorOffset, GeneratorSourceConfig};
pub use kafka::{KafkaAssignment, KafkaFormat, KafkaOffset, KafkaSourceConfig, KafkaStart};
pub use memory::{MemoryOffset, MemorySource};
pub use nexmark::{NexmarkOffset, NexmarkSourceConfig};
pub use stdin::{StdinFormat, StdinOffset, StdinSourceConfig};
pub use tpch::{TpchOffset, TpchSourceConfig};

use crate::error::{Result, RetryHint, SluiceError};
use crate::spec::PipelineSpec;
use crate::storage::StoreRegistry;

/// Limits on the size of one slice (one epoch's worth of a source).
#[derive(Debug, Clone, Copy, Default)]
pub struct SliceLimits {
    /// At most this many rows (estimated; a generator part or a small file is never split).
    pub max_rows: Option<u64>,
    /// At most this many input bytes.
    pub max_bytes: Option<u64>,
    /// Wait at most this long for input (unbounded sources).
    pub max_latency: Option<Duration>,
}

/// One epoch's worth of a source's input.
#[derive(Debug, Clone)]
pub struct Slice<O> {
    /// The rows of the slice, as a table DataFusion can scan.
    pub table: Arc<dyn TableProvider>,
    /// Offsets the slice starts at (the previous slice's `end`).
    pub start: O,
    /// Offsets after the slice; a commit records them and a restart resumes there.
    pub end: O,
    /// Estimated rows, for progress reporting.
    pub estimated_rows: Option<u64>,
    /// Input URIs (or generator descriptions) the slice reads.
    pub uris: Vec<String>,
}

impl<O> Slice<O> {
    fn try_map_offsets<P>(self, f: impl Fn(O) -> Result<P>) -> Result<Slice<P>> {
        Ok(Slice {
            table: self.table,
            start: f(self.start)?,
            end: f(self.end)?,
            estimated_rows: self.estimated_rows,
            uris: self.uris,
        })
    }
}

/// A source of rows; see the module docs.
///
/// Offsets are the source's own type: the engine stores them (as JSON) in
/// every commit and hands them back, decoded, to [`Source::resume`] and
/// [`Source::replay`]. Offsets that do not decode fail the run with an error
/// naming the source; they never silently restart it.
#[async_trait]
pub trait Source: Send + Debug {
    /// Where the source is: what a commit records and a restart resumes from.
    type Offset: Serialize + DeserializeOwned + Clone + PartialEq + Debug + Send + Sync + 'static;

    /// The kind, as written in pipeline files (`csv`, `tpch`, ...).
    fn kind(&self) -> &str;

    /// The schema of every slice.
    fn schema(&self) -> SchemaRef;

    /// Where the data comes from (URIs, generator parameters).
    fn provenance(&self) -> SourceProvenance;

    /// Lineage carried by the input itself (e.g. sluice-written Parquet).
    fn upstream_lineage(&self) -> Vec<LineageEntry> {
        Vec::new()
    }

    /// Whether the source ends.
    fn is_bounded(&self) -> bool {
        true
    }

    /// Whether several workers of the pipeline share the source's
    /// partitions (a `kafka` source with `assignment = "group"`). Its
    /// offsets are then a tree with one leaf per partition, holding the
    /// partitions this worker reads; the engine shares the sink's log
    /// ([`crate::sinks::Sink::share`]) and resumes the source at the log's
    /// positions of every partition whenever it rewinds. A source that
    /// sees its partitions move fails its read with
    /// [`RetryHint::Rewind`].
    fn shares_partitions(&self) -> bool {
        false
    }

    /// Moves the read position to `at` (a slice `end` from a commit).
    async fn resume(&mut self, at: &Self::Offset) -> Result<()>;

    /// Moves the read position back to the very beginning (before any commit).
    async fn restart(&mut self) -> Result<()> {
        Err(SluiceError::Source {
            source_name: self.kind().to_string(),
            file: None,
            line: None,
            message: format!(
                "source kind `{}` cannot restart from the beginning; an epoch that failed before the first commit cannot be retried",
                self.kind()
            ),
            retry: RetryHint::Never,
            cause: None,
        })
    }

    /// The next slice within `limits`, or `None` when a bounded source is exhausted.
    async fn next_slice(&mut self, limits: &SliceLimits) -> Result<Option<Slice<Self::Offset>>>;

    /// Re-creates the slice of an earlier epoch between two recorded offsets,
    /// and leaves the read position at `end`.
    ///
    /// Needed when a pipeline with several sinks stopped after some of them
    /// committed an epoch: the others get exactly the same rows again.
    async fn replay(
        &mut self,
        start: &Self::Offset,
        end: &Self::Offset,
    ) -> Result<Slice<Self::Offset>> {
        let _ = (start, end);
        Err(SluiceError::Source {
            source_name: self.kind().to_string(),
            file: None,
            line: None,
            message: format!(
                "source kind `{}` cannot replay an epoch; run the pipeline with a single durable sink",
                self.kind()
            ),
            retry: RetryHint::Never,
            cause: None,
        })
    }

    /// The slice ending at `at` is committed; its input may be released.
    async fn ack(&mut self, at: &Self::Offset) -> Result<()> {
        let _ = at;
        Ok(())
    }

    /// Estimated rows still to read, for progress reporting.
    fn estimated_remaining_rows(&self) -> Option<u64> {
        None
    }

    /// Input units (files of a tailed folder) waiting to be read, for lag
    /// metrics; `None` for a source that has no such count.
    fn backlog(&self) -> Option<u64> {
        None
    }
}

/// A [`Source`] whose offsets are handled as JSON, the form commits keep
/// them in. Implemented for every [`Source`]: a factory returns
/// `Box::new(my_source)`, never implements this itself.
#[async_trait]
pub trait AnySource: Send + Debug {
    /// [`Source::kind`].
    fn kind(&self) -> &str;
    /// [`Source::schema`].
    fn schema(&self) -> SchemaRef;
    /// [`Source::provenance`].
    fn provenance(&self) -> SourceProvenance;
    /// [`Source::upstream_lineage`].
    fn upstream_lineage(&self) -> Vec<LineageEntry>;
    /// [`Source::is_bounded`].
    fn is_bounded(&self) -> bool;
    /// [`Source::shares_partitions`].
    fn shares_partitions(&self) -> bool;
    /// [`Source::estimated_remaining_rows`].
    fn estimated_remaining_rows(&self) -> Option<u64>;
    /// [`Source::backlog`].
    fn backlog(&self) -> Option<u64>;
    /// [`Source::resume`] at committed offsets; `null` (a source never read
    /// before the commit) restarts it.
    async fn resume_json(&mut self, at: &Value) -> Result<()>;
    /// [`Source::restart`].
    async fn restart_json(&mut self) -> Result<()>;
    /// [`Source::next_slice`], offsets as JSON.
    async fn next_slice_json(&mut self, limits: &SliceLimits) -> Result<Option<Slice<Value>>>;
    /// [`Source::replay`] between committed offsets.
    async fn replay_json(&mut self, start: &Value, end: &Value) -> Result<Slice<Value>>;
    /// [`Source::ack`] of committed offsets.
    async fn ack_json(&mut self, at: &Value) -> Result<()>;
}

/// The JSON form of a source's offsets.
fn encode<S: Source + ?Sized>(source: &S, offset: S::Offset) -> Result<Value> {
    serde_json::to_value(offset).map_err(|e| SluiceError::Source {
        source_name: source.kind().to_string(),
        file: None,
        line: None,
        message: format!("its offsets do not encode as JSON: {e}"),
        retry: RetryHint::Never,
        cause: None,
    })
}

/// A source's offsets from their JSON form; an error names what is wrong.
fn decode<S: Source + ?Sized>(source: &S, at: &Value) -> Result<S::Offset> {
    serde_json::from_value(at.clone()).map_err(|e| SluiceError::Source {
        source_name: source.kind().to_string(),
        file: None,
        line: None,
        message: format!(
            "the committed offsets {at} are not offsets of a `{}` source ({e}); the commit log belongs to another pipeline or was edited",
            source.kind()
        ),
        retry: RetryHint::Never,
        cause: None,
    })
}

#[async_trait]
impl<S: Source> AnySource for S {
    fn kind(&self) -> &str {
        Source::kind(self)
    }
    fn schema(&self) -> SchemaRef {
        Source::schema(self)
    }
    fn provenance(&self) -> SourceProvenance {
        Source::provenance(self)
    }
    fn upstream_lineage(&self) -> Vec<LineageEntry> {
        Source::upstream_lineage(self)
    }
    fn is_bounded(&self) -> bool {
        Source::is_bounded(self)
    }
    fn shares_partitions(&self) -> bool {
        Source::shares_partitions(self)
    }
    fn estimated_remaining_rows(&self) -> Option<u64> {
        Source::estimated_remaining_rows(self)
    }
    fn backlog(&self) -> Option<u64> {
        Source::backlog(self)
    }
    async fn resume_json(&mut self, at: &Value) -> Result<()> {
        if at.is_null() {
            return self.restart().await;
        }
        let at = decode(self, at)?;
        self.resume(&at).await
    }
    async fn restart_json(&mut self) -> Result<()> {
        self.restart().await
    }
    async fn next_slice_json(&mut self, limits: &SliceLimits) -> Result<Option<Slice<Value>>> {
        match self.next_slice(limits).await? {
            Some(slice) => slice.try_map_offsets(|o| encode(self, o)).map(Some),
            None => Ok(None),
        }
    }
    async fn replay_json(&mut self, start: &Value, end: &Value) -> Result<Slice<Value>> {
        let (from, to) = (decode(self, start)?, decode(self, end)?);
        self.replay(&from, &to)
            .await?
            .try_map_offsets(|o| encode(self, o))
    }
    async fn ack_json(&mut self, at: &Value) -> Result<()> {
        if at.is_null() {
            return Ok(());
        }
        let at = decode(self, at)?;
        self.ack(&at).await
    }
}

/// `wait` from now, or a century from now when the clock cannot count that
/// far (a pipeline may set a latency of years).
pub(crate) fn deadline_after(wait: Duration) -> std::time::Instant {
    let now = std::time::Instant::now();
    now.checked_add(wait)
        .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 3600))
}

/// What a source needs to open itself.
pub struct SourceContext<'a> {
    /// Source name in the pipeline.
    pub name: &'a str,
    /// The whole spec (paths resolve against its directory).
    pub spec: &'a PipelineSpec,
    /// Object stores.
    pub(crate) stores: &'a StoreRegistry,
    /// A DataFusion context (for schema inference of file formats).
    pub session: &'a SessionContext,
    /// Partitions the plan runs with.
    pub target_partitions: usize,
    /// Rows per batch.
    pub batch_size: usize,
}

/// Opens a custom source; implement this to add a source from Rust code.
#[async_trait]
pub trait SourceFactory: Send + Sync + Debug {
    /// Creates the source for one run of the pipeline.
    async fn open(&self, ctx: &SourceContext<'_>) -> Result<Box<dyn AnySource>>;
}
