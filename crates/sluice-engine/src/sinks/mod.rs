//! Sinks: where rows are delivered.
//!
//! A [`Sink`] writes one epoch's rows, then commits them. File sinks
//! (`parquet`, `csv`, `jsonl`) write uniquely named files to any object store
//! and then create one commit file per epoch, so output appears atomically and
//! exactly once (see [`crate::commit_log`]). `stdout` prints a table, for
//! debugging, and keeps no log.

pub mod blackhole;
pub mod file;
pub mod stdout;

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::execution::TaskContext;
use datafusion::physical_plan::ExecutionPlan;
use sluice_contract::{LineageEntry, Provenance};

pub use blackhole::BlackholeSinkConfig;
pub use file::{CsvSinkConfig, JsonlSinkConfig, ParquetSinkConfig};
pub use stdout::StdoutSinkConfig;

use crate::commit_log::{CommittedFile, SourceOffsets};
use crate::error::Result;
use crate::spec::{PipelineSpec, decode_table};
use crate::storage::StoreRegistry;

/// The config of one sink, by kind: the registry of sink kinds.
#[derive(Debug, Clone)]
pub enum SinkConfig {
    /// `kind = "parquet"`.
    Parquet(ParquetSinkConfig),
    /// `kind = "csv"`.
    Csv(CsvSinkConfig),
    /// `kind = "jsonl"`.
    Jsonl(JsonlSinkConfig),
    /// `kind = "stdout"`.
    Stdout(StdoutSinkConfig),
    /// `kind = "blackhole"`.
    Blackhole(BlackholeSinkConfig),
}

impl SinkConfig {
    /// Every sink kind a pipeline file can name.
    pub const KINDS: [&'static str; 5] = ["parquet", "csv", "jsonl", "stdout", "blackhole"];

    /// Decodes the table of a sink of the given kind.
    pub fn from_table(kind: &str, table: toml::Table) -> std::result::Result<Self, String> {
        match kind {
            "parquet" => decode_table(table).map(SinkConfig::Parquet),
            "csv" => decode_table(table).map(SinkConfig::Csv),
            "jsonl" => decode_table(table).map(SinkConfig::Jsonl),
            "stdout" => decode_table(table).map(SinkConfig::Stdout),
            "blackhole" => decode_table(table).map(SinkConfig::Blackhole),
            other => Err(format!("unknown kind `{other}`")),
        }
    }

    /// The kind as written in pipeline files.
    pub fn kind(&self) -> &'static str {
        match self {
            SinkConfig::Parquet(_) => "parquet",
            SinkConfig::Csv(_) => "csv",
            SinkConfig::Jsonl(_) => "jsonl",
            SinkConfig::Stdout(_) => "stdout",
            SinkConfig::Blackhole(_) => "blackhole",
        }
    }

    /// The input (stage or source) this sink reads.
    pub fn input(&self) -> &str {
        match self {
            SinkConfig::Parquet(c) => &c.input,
            SinkConfig::Csv(c) => &c.input,
            SinkConfig::Jsonl(c) => &c.input,
            SinkConfig::Stdout(c) => &c.input,
            SinkConfig::Blackhole(c) => &c.input,
        }
    }

    /// The URL the sink writes to, if it writes files.
    pub fn url(&self) -> Option<&str> {
        match self {
            SinkConfig::Parquet(c) => Some(&c.url),
            SinkConfig::Csv(c) => Some(&c.url),
            SinkConfig::Jsonl(c) => Some(&c.url),
            SinkConfig::Stdout(_) | SinkConfig::Blackhole(_) => None,
        }
    }

    /// Opens the sink.
    pub fn open(
        &self,
        name: &str,
        spec: &PipelineSpec,
        stores: &StoreRegistry,
    ) -> Result<Arc<dyn Sink>> {
        match self {
            SinkConfig::Parquet(c) => file::FileSink::open_parquet(name, c, spec, stores),
            SinkConfig::Csv(c) => file::FileSink::open_csv(name, c, spec, stores),
            SinkConfig::Jsonl(c) => file::FileSink::open_jsonl(name, c, spec, stores),
            SinkConfig::Stdout(c) => Ok(Arc::new(stdout::StdoutSink::new(name, c.clone()))),
            SinkConfig::Blackhole(_) => Ok(Arc::new(blackhole::BlackholeSink::new(name))),
        }
    }
}

/// The epochs one commit covers and the source offsets over them.
#[derive(Debug, Clone, Default)]
pub struct CommittedRange {
    /// First epoch covered.
    pub first: u64,
    /// Last epoch covered (the commit's number).
    pub last: u64,
    /// Offsets per source: the first epoch's start, the last epoch's end.
    pub offsets: BTreeMap<String, SourceOffsets>,
}

/// What a sink found when a run started.
#[derive(Debug, Clone, Default)]
pub struct Recovery {
    /// The newest committed epoch.
    pub last_epoch: Option<u64>,
    /// Every commit, by last epoch (to resume, and to replay a range another
    /// sink has not committed yet).
    pub commits: BTreeMap<u64, CommittedRange>,
    /// Debris of earlier runs that was deleted.
    pub removed_files: Vec<String>,
    /// Whether the sink keeps a commit log at all.
    pub durable: bool,
}

/// Files written for an epoch, not yet committed.
#[derive(Debug, Clone, Default)]
pub struct Written {
    /// The files.
    pub files: Vec<CommittedFile>,
    /// Rows written.
    pub rows: u64,
    /// Bytes written.
    pub bytes: u64,
}

/// Everything a commit records besides the files.
#[derive(Debug, Clone)]
pub struct CommitInfo {
    /// `name@version` of the pipeline.
    pub pipeline: String,
    /// This run's id.
    pub run_id: String,
    /// Lineage of the sink's data.
    pub lineage: Vec<LineageEntry>,
    /// Provenance of the sink's data.
    pub provenance: Provenance,
    /// Offsets of every source over the committed epochs.
    pub source_offsets: BTreeMap<String, SourceOffsets>,
    /// First epoch the commit covers.
    pub first_epoch: u64,
}

/// A sink; see the module docs.
#[async_trait]
pub trait Sink: Send + Sync + Debug {
    /// Sink name in the pipeline.
    fn name(&self) -> &str;

    /// Kind as written in pipeline files.
    fn kind(&self) -> &str;

    /// Where it writes (for messages).
    fn url(&self) -> String;

    /// Checks the sink can be reached, without writing.
    async fn check_reachable(&self) -> Result<()> {
        Ok(())
    }

    /// Reads the commit log and deletes uncommitted debris of earlier runs.
    /// The default is a sink without a log (`durable = false`).
    async fn recover(&self) -> Result<Recovery> {
        Ok(Recovery::default())
    }

    /// Writes every partition of `plan` for `epoch`, with `schema` (the plan's
    /// schema plus sluice's metadata) as the files' schema. Rows go into
    /// files that may stay open for later epochs; nothing is output until
    /// [`Sink::seal`] and [`Sink::commit`]. Returns the rows written.
    async fn write(
        &self,
        epoch: u64,
        run_id: &str,
        plan: Arc<dyn ExecutionPlan>,
        task: Arc<TaskContext>,
        schema: SchemaRef,
    ) -> Result<Written>;

    /// Closes every open file: returns all files written since the last
    /// commit, ready to be committed. The default has none.
    async fn seal(&self) -> Result<Written> {
        Ok(Written::default())
    }

    /// Makes the sealed files part of the output, atomically, as the commit of
    /// the epochs `info.first_epoch..=epoch`. The default does nothing.
    async fn commit(
        &self,
        _epoch: u64,
        _written: &Written,
        _schema: SchemaRef,
        _info: &CommitInfo,
    ) -> Result<()> {
        Ok(())
    }

    /// Deletes everything written since the last commit.
    async fn abort(&self) {}

    /// Deletes everything this sink ever committed (data files and commit
    /// log), so the next run starts from the beginning. Returns the number of
    /// objects deleted. Files sluice did not write are left alone.
    async fn reset(&self) -> Result<u64> {
        Ok(0)
    }
}
