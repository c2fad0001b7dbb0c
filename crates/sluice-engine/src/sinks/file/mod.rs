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

use super::{CommitInfo, CommittedRange, Recovery, Sink, Written};
use crate::commit_log::{COMMIT_FORMAT, Commit, CommitLog, CommittedFile, data_file_name};
use crate::error::{Result, RetryHint, SluiceError};
use crate::spec::PipelineSpec;
use crate::storage::{Location, StoreRegistry};

/// A sink writing files; see the module docs.
pub struct FileSink {
    name: String,
    location: Location,
    store: Arc<dyn ObjectStore>,
    log: CommitLog,
    format: OutputFormat,
    partition_by: Vec<String>,
    target_file_bytes: u64,
    pending: tokio::sync::Mutex<Pending>,
}

impl std::fmt::Debug for FileSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FileSink({} -> {})", self.name, self.location.url())
    }
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
        let location = Location::parse(url, &spec.base_dir)
            .map_err(|m| SluiceError::spec(spec.issue(&key, m)))?;
        if location.glob.is_some() {
            return Err(SluiceError::spec(spec.issue(
                &key,
                format!("`{url}` is a glob; a sink writes to one folder"),
            )));
        }
        let store = stores
            .store_for(&location, &spec.settings.s3)
            .map_err(|m| SluiceError::spec(spec.issue(&key, m)))?;
        if target == 0 {
            return Err(SluiceError::spec(spec.issue(
                format!("sinks.{name}.target_file_size"),
                "must be more than 0 bytes",
            )));
        }
        Ok(Arc::new(FileSink {
            name: name.to_string(),
            log: CommitLog::new(Arc::clone(&store), location.clone()),
            location,
            store,
            format,
            partition_by: partition_by.to_vec(),
            target_file_bytes: target,
            pending: tokio::sync::Mutex::new(Pending::default()),
        }))
    }

    /// Opens a `parquet` sink.
    pub fn open_parquet(
        name: &str,
        c: &ParquetSinkConfig,
        spec: &PipelineSpec,
        stores: &StoreRegistry,
    ) -> Result<Arc<dyn Sink>> {
        let compression: Compression = c.compression.parse().map_err(|e| {
            SluiceError::spec(
                spec.issue(
                    format!("sinks.{name}.compression"),
                    format!("`{}`: {e}", c.compression),
                )
                .with_help(
                    "use zstd(1..22), snappy, lz4, gzip(0..9), brotli(0..11) or uncompressed",
                ),
            )
        })?;
        if c.row_group_rows == 0 {
            return Err(SluiceError::spec(spec.issue(
                format!("sinks.{name}.row_group_rows"),
                "must be at least 1",
            )));
        }
        let props = WriterProperties::builder()
            .set_compression(compression)
            .set_max_row_group_row_count(Some(c.row_group_rows))
            .set_created_by(format!("sluice {}", env!("CARGO_PKG_VERSION")))
            .build();
        Self::open(
            name,
            &c.url,
            OutputFormat::Parquet(props),
            &c.partition_by,
            c.target_file_size.0,
            spec,
            stores,
        )
    }

    /// Opens a `csv` sink.
    pub fn open_csv(
        name: &str,
        c: &CsvSinkConfig,
        spec: &PipelineSpec,
        stores: &StoreRegistry,
    ) -> Result<Arc<dyn Sink>> {
        let delimiter = match c.delimiter.as_bytes() {
            [b] => *b,
            _ if c.delimiter == "\\t" => b'\t',
            _ => {
                return Err(SluiceError::spec(spec.issue(
                    format!("sinks.{name}.delimiter"),
                    "must be exactly one ASCII character",
                )));
            }
        };
        let format = OutputFormat::Csv {
            header: c.header,
            delimiter,
        };
        Self::open(
            name,
            &c.url,
            format,
            &c.partition_by,
            c.target_file_size.0,
            spec,
            stores,
        )
    }

    /// Opens a `jsonl` sink.
    pub fn open_jsonl(
        name: &str,
        c: &JsonlSinkConfig,
        spec: &PipelineSpec,
        stores: &StoreRegistry,
    ) -> Result<Arc<dyn Sink>> {
        Self::open(
            name,
            &c.url,
            OutputFormat::Jsonl,
            &c.partition_by,
            c.target_file_size.0,
            spec,
            stores,
        )
    }

    fn err(&self, message: impl Into<String>, retry: RetryHint) -> SluiceError {
        SluiceError::Sink {
            sink: self.name.clone(),
            url: self.location.url(),
            message: message.into(),
            retry,
        }
    }

    /// The format, with sluice's metadata also in Parquet's key-value metadata
    /// (readers that ignore `ARROW:schema` see it too).
    fn format_for(&self, schema: &SchemaRef) -> OutputFormat {
        match &self.format {
            OutputFormat::Parquet(props) => {
                let kv: Vec<KeyValue> = ALL_KEYS
                    .iter()
                    .filter_map(|k| {
                        schema
                            .metadata()
                            .get(*k)
                            .map(|v| KeyValue::new(k.to_string(), v.clone()))
                    })
                    .collect();
                let props = props
                    .clone()
                    .into_builder()
                    .set_key_value_metadata(Some(kv))
                    .build();
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

/// A file being written.
struct Open {
    file: OpenFile,
    rel: String,
    rows: u64,
    values: BTreeMap<String, String>,
}

/// What a sink holds between commits: files stay open across epochs (so a
/// commit every few epochs does not mean a tiny file every epoch), files
/// rolled by size wait, closed, for the next commit.
#[derive(Default)]
struct Pending {
    /// Open files by plan partition and hive folder.
    open: HashMap<usize, HashMap<String, Open>>,
    /// Closed files not committed yet.
    closed: Vec<CommittedFile>,
    /// Next file number per plan partition.
    seq: HashMap<usize, usize>,
    /// Rows written since the last commit.
    rows: u64,
}

/// One partition's files, handed to its writer task and back.
struct PartitionFiles {
    open: HashMap<String, Open>,
    closed: Vec<CommittedFile>,
    seq: usize,
    rows: u64,
}

impl EpochWrite {
    /// Appends one partition's rows of this epoch to its files.
    async fn write_partition(
        &self,
        partition: usize,
        mut stream: datafusion::execution::SendableRecordBatchStream,
        mut files: PartitionFiles,
    ) -> std::result::Result<PartitionFiles, SluiceError> {
        let result: std::result::Result<(), SluiceError> = async {
            while let Some(batch) = stream.next().await {
                let batch = batch.map_err(|e| SluiceError::from_datafusion(e, None))?;
                if batch.num_rows() == 0 {
                    continue;
                }
                let batch = batch.with_schema(Arc::clone(&self.schema)).map_err(|e| {
                    SluiceError::Internal(format!(
                        "output batch does not match the plan schema: {e}"
                    ))
                })?;
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
                    if !files.open.contains_key(&dir) {
                        let name = data_file_name(
                            self.epoch,
                            &self.run_id,
                            partition,
                            files.seq,
                            self.format.extension(),
                        );
                        files.seq += 1;
                        let rel = if dir.is_empty() {
                            name
                        } else {
                            format!("{dir}/{name}")
                        };
                        let schema = match &self.splitter {
                            Some(s) => Arc::clone(&s.file_schema),
                            None => Arc::clone(&self.schema),
                        };
                        let file = OpenFile::create(
                            Arc::clone(&self.store),
                            self.location.child(&rel),
                            &self.format,
                            schema,
                        )
                        .map_err(|m| self.sink_err(&rel, m))?;
                        files.open.insert(
                            dir.clone(),
                            Open {
                                file,
                                rel,
                                rows: 0,
                                values,
                            },
                        );
                    }
                    let Some(o) = files.open.get_mut(&dir) else {
                        continue;
                    };
                    o.file
                        .write(&piece)
                        .await
                        .map_err(|m| self.sink_err(&o.rel, m))?;
                    o.rows += piece.num_rows() as u64;
                    files.rows += piece.num_rows() as u64;
                    if o.file.size() >= self.target {
                        if let Some(o) = files.open.remove(&dir) {
                            files.closed.push(finish(&self.location, o).await?);
                        }
                    }
                }
            }
            Ok(())
        }
        .await;
        match result {
            Ok(()) => Ok(files),
            Err(e) => {
                for (_, o) in files.open.drain() {
                    o.file.abort().await;
                }
                Err(e)
            }
        }
    }

    fn sink_err(&self, rel: &str, message: String) -> SluiceError {
        sink_err(&self.location, rel, message)
    }
}

fn sink_err(location: &Location, rel: &str, message: String) -> SluiceError {
    SluiceError::Sink {
        sink: String::new(),
        url: location.object_url(&location.child(rel)),
        message,
        retry: RetryHint::WithBackoff,
    }
}

/// Closes a file; returns what the commit records of it.
async fn finish(location: &Location, o: Open) -> std::result::Result<CommittedFile, SluiceError> {
    let bytes = o
        .file
        .finish()
        .await
        .map_err(|m| sink_err(location, &o.rel, m))?;
    Ok(CommittedFile {
        path: o.rel,
        rows: o.rows,
        bytes,
        partition: o.values,
    })
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
                        return Err(self.err(
                            format!("{} exists and is not a folder", c.display()),
                            RetryHint::Never,
                        ));
                    }
                    let md = std::fs::metadata(c)
                        .map_err(|e| self.err(e.to_string(), RetryHint::Never))?;
                    if md.permissions().readonly() {
                        return Err(
                            self.err(format!("{} is read-only", c.display()), RetryHint::Never)
                        );
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
        let removed = self
            .log
            .remove_uncommitted()
            .await
            .map_err(|e| self.err(e.to_string(), RetryHint::WithBackoff))?;
        let commits = self
            .log
            .read_all()
            .await
            .map_err(|e| self.err(e.to_string(), RetryHint::WithBackoff))?;
        Ok(Recovery {
            last_epoch: commits.last().map(|c| c.epoch),
            commits: commits
                .into_iter()
                .map(|c| {
                    (
                        c.epoch,
                        CommittedRange {
                            first: c.first_epoch.min(c.epoch),
                            last: c.epoch,
                            offsets: c.source_offsets,
                        },
                    )
                })
                .collect(),
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
            Some(
                HiveSplitter::try_new(&schema, &self.partition_by)
                    .map_err(|m| self.err(m, RetryHint::Never))?,
            )
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
        // one epoch at a time: the lock is held for the whole write
        let mut pending = self.pending.lock().await;
        let mut tasks = JoinSet::new();
        for p in 0..plan.output_partitioning().partition_count() {
            let stream = plan
                .execute(p, Arc::clone(&task))
                .map_err(|e| SluiceError::from_datafusion(e, Some(&self.name)))?;
            let files = PartitionFiles {
                open: pending.open.remove(&p).unwrap_or_default(),
                closed: Vec::new(),
                seq: pending.seq.get(&p).copied().unwrap_or(0),
                rows: 0,
            };
            let job = Arc::clone(&job);
            tasks.spawn(async move { (p, job.write_partition(p, stream, files).await) });
        }
        let mut rows = 0;
        let mut failure: Option<SluiceError> = None;
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok((p, Ok(files))) => {
                    rows += files.rows;
                    pending.open.insert(p, files.open);
                    pending.closed.extend(files.closed);
                    pending.seq.insert(p, files.seq);
                }
                Ok((_, Err(e))) => {
                    failure.get_or_insert(e);
                    tasks.abort_all();
                }
                Err(e) if e.is_cancelled() => {}
                Err(e) => {
                    failure.get_or_insert(SluiceError::Internal(format!(
                        "a writer task of sink `{}` panicked: {e}",
                        self.name
                    )));
                    tasks.abort_all();
                }
            }
        }
        pending.rows += rows;
        drop(pending);
        if let Some(e) = failure {
            return Err(match e {
                SluiceError::Sink {
                    url,
                    message,
                    retry,
                    ..
                } => SluiceError::Sink {
                    sink: self.name.clone(),
                    url,
                    message,
                    retry,
                },
                other => other,
            });
        }
        Ok(Written {
            files: Vec::new(),
            rows,
            bytes: 0,
        })
    }

    async fn seal(&self) -> Result<Written> {
        let mut pending = self.pending.lock().await;
        let opens: Vec<Open> = pending
            .open
            .drain()
            .flat_map(|(_, m)| m.into_values())
            .collect();
        let mut failure = None;
        for o in opens {
            match finish(&self.location, o).await {
                Ok(f) => pending.closed.push(f),
                Err(e) => failure = failure.or(Some(e)),
            }
        }
        if let Some(e) = failure {
            return Err(e);
        }
        let mut files = pending.closed.clone();
        files.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(Written {
            rows: files.iter().map(|f| f.rows).sum(),
            bytes: files.iter().map(|f| f.bytes).sum(),
            files,
        })
    }

    async fn commit(
        &self,
        epoch: u64,
        written: &Written,
        schema: SchemaRef,
        info: &CommitInfo,
    ) -> Result<()> {
        let commit = Commit {
            format: COMMIT_FORMAT,
            epoch,
            first_epoch: info.first_epoch,
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
        self.log
            .write(&commit)
            .await
            .map_err(|e| self.err(e.to_string(), RetryHint::Never))?;
        let mut pending = self.pending.lock().await;
        pending.closed.clear();
        pending.rows = 0;
        Ok(())
    }

    async fn reset(&self) -> Result<u64> {
        self.log
            .reset()
            .await
            .map_err(|e| self.err(e.to_string(), RetryHint::WithBackoff))
    }

    async fn abort(&self) {
        let mut pending = self.pending.lock().await;
        for (_, files) in pending.open.drain() {
            for (_, o) in files {
                o.file.abort().await;
            }
        }
        for f in pending.closed.drain(..) {
            let _ = self.store.delete(&self.location.child(&f.path)).await;
        }
        pending.rows = 0;
        drop(pending);
        // anything else this run left (files of tasks that were cancelled)
        let _ = self.log.remove_uncommitted().await;
    }
}
