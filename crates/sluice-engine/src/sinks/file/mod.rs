//! File sinks (`parquet`, `csv`, `jsonl`): files on any object store, committed exactly once.
//!
//! Each partition of the plan writes its own files, named
//! `part-<epoch>-<run>-<partition>-<seq>.<ext>` so no two writers ever
//! collide, rolling to a new file past `target_file_size`; `partition_by`
//! adds hive folders. When every partition is done the epoch's files are
//! listed in a commit file ([`crate::commit_log`]); only then are they output.

mod config;
mod hive;
mod writer;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::execution::TaskContext;
use datafusion::physical_plan::{ExecutionPlan, ExecutionPlanProperties};
use futures::StreamExt;
use object_store::{ObjectStore, ObjectStoreExt};
use parquet::basic::Compression;
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use sluice_contract::metadata::ALL_KEYS;
use tokio::task::JoinSet;

pub use config::{CsvSinkConfig, JsonlSinkConfig, ParquetSinkConfig};
pub use hive::{HiveSplitter, NULL_PARTITION};
pub use writer::{OpenFile, OutputFormat};

use super::{CommitInfo, Recovery, Sink, Written};
use crate::commit_log::{COMMIT_FORMAT, Commit, CommitLog, CommittedFile, data_file_name};
use crate::error::{Result, RetryHint, SluiceError};
use crate::spec::PipelineSpec;
use crate::storage::{Location, StoreRegistry};

/// A sink writing files; see the module docs.
#[derive(Debug)]
pub struct FileSink {
    name: String,
    location: Location,
    store: Arc<dyn ObjectStore>,
    log: CommitLog,
    format: OutputFormat,
    partition_by: Vec<String>,
    target_file_bytes: u64,
}

impl FileSink {
    fn open(
        name: &str,
        url: &str,
        format: OutputFormat,
        partition_by: &[String],
        target: u64,
        spec: &PipelineSpec,
        stores: &StoreRegistry,
    ) -> Result<Arc<dyn Sink>> {
        let key = format!("sinks.{name}.url");
        let location = Location::parse(url, &spec.base_dir).map_err(|m| SluiceError::spec(spec.issue(&key, m)))?;
        if location.glob.is_some() {
            return Err(SluiceError::spec(spec.issue(&key, format!("`{url}` is a glob; a sink writes to one folder"))));
        }
        let store = stores.store_for(&location, &spec.settings.s3).map_err(|m| SluiceError::spec(spec.issue(&key, m)))?;
        if target == 0 {
            return Err(SluiceError::spec(spec.issue(format!("sinks.{name}.target_file_size"), "must be more than 0 bytes")));
        }
        Ok(Arc::new(FileSink {
            name: name.to_string(),
            log: CommitLog::new(Arc::clone(&store), location.clone()),
            location,
            store,
            format,
            partition_by: partition_by.to_vec(),
            target_file_bytes: target,
        }))
    }

    /// Opens a `parquet` sink.
    pub fn open_parquet(name: &str, c: &ParquetSinkConfig, spec: &PipelineSpec, stores: &StoreRegistry) -> Result<Arc<dyn Sink>> {
        let compression: Compression = c.compression.parse().map_err(|e| {
            SluiceError::spec(
                spec.issue(format!("sinks.{name}.compression"), format!("`{}`: {e}", c.compression))
                    .with_help("use zstd(1..22), snappy, lz4, gzip(0..9), brotli(0..11) or uncompressed"),
            )
        })?;
        if c.row_group_rows == 0 {
            return Err(SluiceError::spec(spec.issue(format!("sinks.{name}.row_group_rows"), "must be at least 1")));
        }
        let props = WriterProperties::builder()
            .set_compression(compression)
            .set_max_row_group_row_count(Some(c.row_group_rows))
            .set_created_by(format!("sluice {}", env!("CARGO_PKG_VERSION")))
            .build();
        Self::open(name, &c.url, OutputFormat::Parquet(props), &c.partition_by, c.target_file_size.0, spec, stores)
    }

    /// Opens a `csv` sink.
    pub fn open_csv(name: &str, c: &CsvSinkConfig, spec: &PipelineSpec, stores: &StoreRegistry) -> Result<Arc<dyn Sink>> {
        let delimiter = match c.delimiter.as_bytes() {
            [b] => *b,
            _ if c.delimiter == "\\t" => b'\t',
            _ => {
                return Err(SluiceError::spec(
                    spec.issue(format!("sinks.{name}.delimiter"), "must be exactly one ASCII character"),
                ));
            }
        };
        let format = OutputFormat::Csv { header: c.header, delimiter };
        Self::open(name, &c.url, format, &c.partition_by, c.target_file_size.0, spec, stores)
    }

    /// Opens a `jsonl` sink.
    pub fn open_jsonl(name: &str, c: &JsonlSinkConfig, spec: &PipelineSpec, stores: &StoreRegistry) -> Result<Arc<dyn Sink>> {
        Self::open(name, &c.url, OutputFormat::Jsonl, &c.partition_by, c.target_file_size.0, spec, stores)
    }

    fn err(&self, message: impl Into<String>, retry: RetryHint) -> SluiceError {
        SluiceError::Sink { sink: self.name.clone(), url: self.location.url(), message: message.into(), retry }
    }

    /// The format, with sluice's metadata also in Parquet's key-value metadata
    /// (readers that ignore `ARROW:schema` see it too).
    fn format_for(&self, schema: &SchemaRef) -> OutputFormat {
        match &self.format {
            OutputFormat::Parquet(props) => {
                let kv: Vec<KeyValue> = ALL_KEYS
                    .iter()
                    .filter_map(|k| schema.metadata().get(*k).map(|v| KeyValue::new(k.to_string(), v.clone())))
                    .collect();
                let props = props.clone().into_builder().set_key_value_metadata(Some(kv)).build();
                OutputFormat::Parquet(props)
            }
            other => other.clone(),
        }
    }
}

/// What every partition writer of one epoch shares.
struct EpochWrite {
    store: Arc<dyn ObjectStore>,
    location: Location,
    format: OutputFormat,
    schema: SchemaRef,
    splitter: Option<HiveSplitter>,
    target: u64,
    epoch: u64,
    run_id: String,
}

struct Open {
    file: OpenFile,
    rel: String,
    rows: u64,
    values: BTreeMap<String, String>,
}

impl EpochWrite {
    async fn write_partition(
        &self,
        partition: usize,
        mut stream: datafusion::execution::SendableRecordBatchStream,
    ) -> std::result::Result<Vec<CommittedFile>, (Vec<CommittedFile>, SluiceError)> {
        let mut open: HashMap<String, Open> = HashMap::new();
        let mut done: Vec<CommittedFile> = Vec::new();
        let mut seq = 0usize;
        let result: std::result::Result<(), SluiceError> = async {
            while let Some(batch) = stream.next().await {
                let batch = batch.map_err(|e| SluiceError::from_datafusion(e, None))?;
                if batch.num_rows() == 0 {
                    continue;
                }
                let batch = batch
                    .with_schema(Arc::clone(&self.schema))
                    .map_err(|e| SluiceError::Internal(format!("output batch does not match the plan schema: {e}")))?;
                let pieces = match &self.splitter {
                    Some(s) => s
                        .split(&batch)
                        .map_err(|e| SluiceError::Internal(format!("partitioning failed: {e}")))?
                        .into_iter()
                        .map(|p| (p.dir, p.values, p.batch))
                        .collect(),
                    None => vec![(String::new(), BTreeMap::new(), batch)],
                };
                for (dir, values, piece) in pieces {
                    if !open.contains_key(&dir) {
                        let name = data_file_name(self.epoch, &self.run_id, partition, seq, self.format.extension());
                        seq += 1;
                        let rel = if dir.is_empty() { name } else { format!("{dir}/{name}") };
                        let schema = match &self.splitter {
                            Some(s) => Arc::clone(&s.file_schema),
                            None => Arc::clone(&self.schema),
                        };
                        let file = OpenFile::create(Arc::clone(&self.store), self.location.child(&rel), &self.format, schema)
                            .map_err(|m| self.sink_err(&rel, m))?;
                        open.insert(dir.clone(), Open { file, rel, rows: 0, values });
                    }
                    let Some(o) = open.get_mut(&dir) else { continue };
                    o.file.write(&piece).await.map_err(|m| self.sink_err(&o.rel, m))?;
                    o.rows += piece.num_rows() as u64;
                    if o.file.size() >= self.target {
                        if let Some(o) = open.remove(&dir) {
                            done.push(self.finish(o).await?);
                        }
                    }
                }
            }
            Ok(())
        }
        .await;
        match result {
            Ok(()) => {
                let mut first_err = None;
                for (_, o) in open.drain() {
                    match self.finish(o).await {
                        Ok(f) => done.push(f),
                        Err(e) => first_err = first_err.or(Some(e)),
                    }
                }
                match first_err {
                    None => Ok(done),
                    Some(e) => Err((done, e)),
                }
            }
            Err(e) => {
                for (_, o) in open.drain() {
                    o.file.abort().await;
                }
                Err((done, e))
            }
        }
    }

    async fn finish(&self, o: Open) -> std::result::Result<CommittedFile, SluiceError> {
        let bytes = o.file.finish().await.map_err(|m| self.sink_err(&o.rel, m))?;
        Ok(CommittedFile { path: o.rel, rows: o.rows, bytes, partition: o.values })
    }

    fn sink_err(&self, rel: &str, message: String) -> SluiceError {
        SluiceError::Sink {
            sink: String::new(),
            url: self.location.object_url(&self.location.child(rel)),
            message,
            retry: RetryHint::WithBackoff,
        }
    }
}

#[async_trait]
impl Sink for FileSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &str {
        self.format.extension()
    }

    fn url(&self) -> String {
        self.location.url()
    }

    async fn check_reachable(&self) -> Result<()> {
        if let Some(p) = self.location.local_path() {
            let mut cur = Some(p.as_path());
            while let Some(c) = cur {
                if c.exists() {
                    if !c.is_dir() {
                        return Err(self.err(format!("{} exists and is not a folder", c.display()), RetryHint::Never));
                    }
                    let md = std::fs::metadata(c).map_err(|e| self.err(e.to_string(), RetryHint::Never))?;
                    if md.permissions().readonly() {
                        return Err(self.err(format!("{} is read-only", c.display()), RetryHint::Never));
                    }
                    return Ok(());
                }
                cur = c.parent();
            }
            return Ok(());
        }
        let prefix = (!self.location.prefix.as_ref().is_empty()).then_some(&self.location.prefix);
        self.store
            .list_with_delimiter(prefix)
            .await
            .map(|_| ())
            .map_err(|e| self.err(format!("unreachable: {e}"), RetryHint::WithBackoff))
    }

    async fn recover(&self) -> Result<Recovery> {
        let removed = self.log.remove_uncommitted().await.map_err(|e| self.err(e.to_string(), RetryHint::WithBackoff))?;
        let commits = self.log.read_all().await.map_err(|e| self.err(e.to_string(), RetryHint::WithBackoff))?;
        Ok(Recovery {
            last_epoch: commits.last().map(|c| c.epoch),
            offsets: commits.into_iter().map(|c| (c.epoch, c.source_offsets)).collect(),
            removed_files: removed,
            durable: true,
        })
    }

    async fn write(
        &self,
        epoch: u64,
        run_id: &str,
        plan: Arc<dyn ExecutionPlan>,
        task: Arc<TaskContext>,
        schema: SchemaRef,
    ) -> Result<Written> {
        let splitter = if self.partition_by.is_empty() {
            None
        } else {
            Some(HiveSplitter::try_new(&schema, &self.partition_by).map_err(|m| self.err(m, RetryHint::Never))?)
        };
        let job = Arc::new(EpochWrite {
            store: Arc::clone(&self.store),
            location: self.location.clone(),
            format: self.format_for(&schema),
            schema,
            splitter,
            target: self.target_file_bytes,
            epoch,
            run_id: run_id.to_string(),
        });
        let mut tasks = JoinSet::new();
        for p in 0..plan.output_partitioning().partition_count() {
            let stream = plan.execute(p, Arc::clone(&task)).map_err(|e| SluiceError::from_datafusion(e, Some(&self.name)))?;
            let job = Arc::clone(&job);
            tasks.spawn(async move { job.write_partition(p, stream).await });
        }
        let mut written = Written::default();
        let mut failure: Option<SluiceError> = None;
        while let Some(joined) = tasks.join_next().await {
            let files = match joined {
                Ok(Ok(files)) => files,
                Ok(Err((files, e))) => {
                    failure.get_or_insert(e);
                    tasks.abort_all();
                    files
                }
                Err(e) if e.is_cancelled() => continue,
                Err(e) => {
                    failure.get_or_insert(SluiceError::Internal(format!("a writer task of sink `{}` panicked: {e}", self.name)));
                    tasks.abort_all();
                    continue;
                }
            };
            for f in files {
                written.rows += f.rows;
                written.bytes += f.bytes;
                written.files.push(f);
            }
        }
        if let Some(e) = failure {
            self.abort(&written).await;
            // files of aborted writers carry sluice's names: sweep them now too
            let _ = self.log.remove_uncommitted().await;
            return Err(match e {
                SluiceError::Sink { url, message, retry, .. } => SluiceError::Sink { sink: self.name.clone(), url, message, retry },
                other => other,
            });
        }
        written.files.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(written)
    }

    async fn commit(&self, epoch: u64, written: &Written, schema: SchemaRef, info: &CommitInfo) -> Result<()> {
        let commit = Commit {
            format: COMMIT_FORMAT,
            epoch,
            pipeline: info.pipeline.clone(),
            sink: self.name.clone(),
            run_id: info.run_id.clone(),
            committed_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            files: written.files.clone(),
            rows: written.rows,
            bytes: written.bytes,
            schema: schema.as_ref().clone(),
            partition_by: self.partition_by.clone(),
            lineage: info.lineage.clone(),
            provenance: info.provenance.clone(),
            source_offsets: info.source_offsets.clone(),
        };
        self.log.write(&commit).await.map_err(|e| self.err(e.to_string(), RetryHint::Never))
    }

    async fn reset(&self) -> Result<u64> {
        self.log.reset().await.map_err(|e| self.err(e.to_string(), RetryHint::WithBackoff))
    }

    async fn abort(&self, written: &Written) {
        for f in &written.files {
            let _ = self.store.delete(&self.location.child(&f.path)).await;
        }
    }
}
