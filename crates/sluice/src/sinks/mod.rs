//! Sinks: where rows are delivered.
//!
//! A [`Sink`] writes each epoch's rows, then commits a group of epochs at
//! once. File sinks (`parquet`, `csv`, `jsonl`) write uniquely named files
//! to any object store and then create one commit file per commit, so output
//! appears atomically and exactly once (see [`crate::commit_log`]). `stdout` prints a table, for
//! debugging, and keeps no log. A Rust program adds its own sink with a
//! [`SinkFactory`]; it takes part in the same commit protocol.

mod blackhole;
mod config;
#[cfg(feature = "delta")]
pub(crate) mod delta;
mod file;
mod kafka;
mod stdout;

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{ExecutionPlan, ExecutionPlanProperties};
use futures::StreamExt;
use sluice_contract::{LineageEntry, Provenance};

pub use config::DeltaSinkConfig;
pub(crate) use config::KINDS;
pub use config::{FileSinkKeys, SinkConfig, SinkKind};
pub use file::{CsvSinkConfig, JsonlSinkConfig, ParquetSinkConfig};
pub use kafka::{KafkaSinkConfig, KafkaSinkFormat};
pub use stdout::StdoutSinkConfig;

use crate::commit_log::{CommittedFile, SourceOffsets};
pub use crate::epoch::recovery::{CommittedRange, SinkLog};
use crate::error::{Result, SluiceError};
use crate::metrics::ComponentId;
use crate::spec::PipelineSpec;
use crate::state::{StateCommit, StateStore};

/// What a sink found when a run started.
#[derive(Debug, Clone, Default)]
pub struct Recovered {
    /// Its commit log, as data ([`SinkLog::not_durable`] for a sink without one).
    pub log: SinkLog,
    /// Debris of earlier runs that was deleted (paths relative to the sink).
    pub removed_files: Vec<String>,
}

/// What a sink's sealed writes hold, ready to be committed.
#[derive(Debug, Clone, Default)]
pub struct Sealed {
    /// The files (empty for sinks that are not file based).
    pub files: Vec<CommittedFile>,
    /// Rows written.
    pub rows: u64,
    /// Bytes written.
    pub bytes: u64,
}

/// Everything a commit records besides what was sealed.
#[derive(Debug, Clone)]
pub struct CommitRecord {
    /// First epoch the commit covers: the `commit_group` of its writes.
    pub first_epoch: u64,
    /// Last epoch the commit covers: the commit's number.
    pub epoch: u64,
    /// `name@version` of the pipeline.
    pub pipeline: String,
    /// This run's id.
    pub run_id: String,
    /// Lineage of the sink's data.
    pub lineage: Vec<LineageEntry>,
    /// Provenance of the sink's data.
    pub provenance: Provenance,
    /// The schema of the rows, with sluice's metadata.
    pub schema: SchemaRef,
    /// Offsets of every source over the committed epochs; a restart
    /// resumes at their `end`.
    pub source_offsets: BTreeMap<String, SourceOffsets>,
    /// How every rolled-out stage ran over these epochs; keep it in the
    /// log, so that [`Sink::recover`] can hand it back for a replay.
    pub rollout: BTreeMap<String, crate::rollout::RolloutRecord>,
    /// The state the commit covers: the operators' snapshots (already
    /// written to [`Sink::state_store`]) and the event-time clocks. Keep it
    /// in the log, so that [`Sink::recover`] can hand it back.
    pub state: StateCommit,
}

impl CommitRecord {
    /// What [`Sink::recover`] reports of this commit once it is made.
    pub fn range(&self) -> CommittedRange {
        CommittedRange {
            first: self.first_epoch,
            last: self.epoch,
            offsets: self.source_offsets.clone(),
            rollout: crate::rollout::control::choices_of(&self.rollout),
            state: self.state.clone(),
        }
    }
}

/// One epoch's rows for a sink: a plan whose partitions can be written in
/// parallel.
pub struct EpochOutput {
    pub(crate) epoch: u64,
    pub(crate) commit_group: u64,
    pub(crate) run_id: Arc<str>,
    pub(crate) plan: Arc<dyn ExecutionPlan>,
    pub(crate) task: Arc<TaskContext>,
    pub(crate) schema: SchemaRef,
    pub(crate) sink: ComponentId,
    /// A sink's own casts of every batch ([`EpochOutput::conformed`]), with
    /// the schema the plan's batches have before them.
    pub(crate) conform: Option<(SchemaRef, Conform)>,
}

/// Casts a batch to a sink's schema, or says why a value cannot be cast.
pub(crate) type Conform = fn(&RecordBatch, &SchemaRef) -> std::result::Result<RecordBatch, String>;

impl Debug for EpochOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EpochOutput")
            .field("epoch", &self.epoch)
            .field("commit_group", &self.commit_group)
            .field("sink", &self.sink)
            .finish()
    }
}

impl EpochOutput {
    /// The epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Writes with the same group are committed together, by
    /// [`Sink::seal`] and [`Sink::commit`] of that group. It is the number
    /// of the first epoch of the commit.
    pub fn commit_group(&self) -> u64 {
        self.commit_group
    }

    /// The run's id (sluice puts it in file names so runs never collide).
    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    /// The schema of the rows, with sluice's metadata (`sluice.lineage`, ...).
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// How many partitions the rows come in.
    pub fn partitions(&self) -> usize {
        self.plan.output_partitioning().partition_count()
    }

    #[cfg_attr(not(feature = "delta"), allow(dead_code))]
    /// The same rows, each batch cast by `conform` to `target` (a sink whose
    /// format holds fewer types than Arrow: Delta's).
    pub(crate) fn conformed(mut self, target: SchemaRef, conform: Conform) -> Self {
        let planned = std::mem::replace(&mut self.schema, target);
        self.conform = Some((planned, conform));
        self
    }

    /// The rows of one partition, with [`EpochOutput::schema`]; errors name
    /// the component they happened in.
    pub fn execute(&self, partition: usize) -> Result<SendableRecordBatchStream> {
        let stream = self
            .plan
            .execute(partition, Arc::clone(&self.task))
            .map_err(|e| SluiceError::from_datafusion(e, Some(self.sink.clone())))?;
        let schema = Arc::clone(&self.schema);
        let conform = self.conform.clone();
        let sink = self.sink.clone();
        let with_metadata = stream.map(move |batch| {
            let batch = batch?;
            let Some((planned, conform)) = &conform else {
                return batch.with_schema(Arc::clone(&schema)).map_err(|e| {
                    datafusion::common::internal_datafusion_err!(
                        "{sink}: a batch does not match its plan's schema: {e}"
                    )
                });
            };
            let batch = batch.with_schema(Arc::clone(planned)).map_err(|e| {
                datafusion::common::internal_datafusion_err!(
                    "{sink}: a batch does not match its plan's schema: {e}"
                )
            })?;
            conform(&batch, &schema)
                .map_err(|m| datafusion::common::exec_datafusion_err!("{sink}: {m}"))
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            Arc::clone(&self.schema),
            with_metadata,
        )))
    }

    /// Every partition's rows in one stream.
    pub fn execute_all(&self) -> Result<SendableRecordBatchStream> {
        if self.partitions() == 1 {
            return self.execute(0);
        }
        let streams = (0..self.partitions())
            .map(|p| self.execute(p))
            .collect::<Result<Vec<_>>>()?;
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            Arc::clone(&self.schema),
            futures::stream::select_all(streams),
        )))
    }

    /// The error of a sink, from a DataFusion error of its rows.
    pub fn error(&self, e: datafusion::error::DataFusionError) -> SluiceError {
        SluiceError::from_datafusion(e, Some(self.sink.clone()))
    }
}

/// A sink; see the module docs.
///
/// The commit protocol, as the engine drives it: every epoch, [`Sink::write`]
/// (rows go where no reader sees them yet, grouped by
/// [`EpochOutput::commit_group`]); at a commit point, [`Sink::seal`] of the
/// group on every sink, then [`Sink::commit`] on each, in epoch order. After a
/// failure, [`Sink::abort`]. When a run starts, [`Sink::recover`] says what
/// is committed, so a replayed epoch is never written twice. While one group
/// is being sealed and committed, the next group may already be written.
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

    /// Where the state of stateful operators upstream of this sink (windows,
    /// dedupe) is kept, beside the commit log. The default keeps none: such
    /// state lives in memory only and a restart begins it afresh.
    fn state_store(&self) -> Option<StateStore> {
        None
    }

    /// Reads the commit log and deletes uncommitted debris of earlier runs.
    /// The default is a sink without a log, which rows reach as they are
    /// written.
    async fn recover(&self) -> Result<Recovered> {
        Ok(Recovered::default())
    }

    /// Writes one epoch's rows. Nothing is output until the group is
    /// sealed and committed. Returns the rows written.
    async fn write(&self, output: EpochOutput) -> Result<u64>;

    /// Closes everything written for `group`: returns it, ready to be
    /// committed. The default has nothing to seal.
    async fn seal(&self, group: u64) -> Result<Sealed> {
        let _ = group;
        Ok(Sealed::default())
    }

    /// Makes the sealed writes part of the output, atomically, as the
    /// commit of the epochs `record.first_epoch..=record.epoch`.
    async fn commit(&self, sealed: Sealed, record: &CommitRecord) -> Result<()> {
        let _ = (sealed, record);
        Ok(())
    }

    /// Shares the sink's commit log with the other workers of the pipeline
    /// (a `kafka` source with `assignment = "group"`): each worker reads
    /// some partitions of `sources` and commits them, and a commit that
    /// starts a partition anywhere but where the log has it fails with
    /// [`crate::RetryHint::Rewind`] (see `docs/exactly-once.md`). Run
    /// `run_id` is this worker. The default refuses: a sink without such a
    /// log cannot be shared.
    fn share(&self, sources: &std::collections::BTreeSet<String>, run_id: &str) -> Result<()> {
        let _ = (sources, run_id);
        Err(SluiceError::Sink {
            sink: self.name().to_string(),
            url: self.url(),
            message: format!(
                "a `{}` sink cannot be shared by several workers of a consumer group; use a file sink (parquet, csv, jsonl)",
                self.kind()
            ),
            retry: crate::error::RetryHint::Never,
            cause: None,
        })
    }

    /// Deletes everything written and not committed (every group).
    async fn abort(&self) {}

    /// Deletes everything this sink ever committed (data files and commit
    /// log), so the next run starts from the beginning. Returns the number of
    /// objects deleted. Files sluice did not write are left alone.
    async fn reset(&self) -> Result<u64> {
        Ok(0)
    }
}

/// What a custom sink needs to open itself.
#[derive(Debug)]
pub struct SinkContext<'a> {
    /// Sink name in the pipeline.
    pub name: &'a str,
    /// The whole spec (paths resolve against its directory).
    pub spec: &'a PipelineSpec,
}

/// Opens a custom sink; implement this to add a sink from Rust code.
pub trait SinkFactory: Send + Sync + Debug {
    /// Creates the sink for one run of the pipeline.
    fn open(&self, ctx: &SinkContext<'_>) -> Result<Arc<dyn Sink>>;
}
