//! File sinks (`parquet`, `csv`, `jsonl`): files on any object store, committed exactly once.
//!
//! Each partition of the plan writes its own files, named
//! `part-<epoch>-<run>-<partition>-<seq>.<ext>` so no two writers ever
//! collide, rolling to a new file past `target_file_size`; `partition_by`
//! adds hive folders. When every partition is done the epoch's files are
//! listed in a commit file ([`crate::commit_log`]); only then are they output.
//!
//! A Parquet sink without `partition_by` whose first commits hold no rows
//! writes one zero-row file carrying the schema: readers that glob the
//! folder (`read_parquet('out/*.parquet')`) then find the columns instead
//! of "no files found".

mod config;
mod hive;
mod upload;
mod writer;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::util::display::FormatOptions;
use futures::StreamExt;
use object_store::multipart::MultipartStore;
use object_store::{ObjectStore, ObjectStoreExt};
use parquet::basic::Compression;
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use sluice_contract::metadata::ALL_KEYS;
use tokio::task::JoinSet;

pub use config::{CsvSinkConfig, JsonlSinkConfig, ParquetSinkConfig};
pub(super) use hive::{HiveSplitter, NULL_PARTITION};
use upload::Upload;
pub(super) use writer::{OpenFile, OutputFormat};

use super::{CommitRecord, EpochOutput, Recovered, Sealed, Sink, SinkLog};
use crate::commit_log::{Commit, CommitLog, CommittedFile, data_file_name};
use crate::error::{Cause, Result, RetryHint, SluiceError};
use crate::spec::PipelineSpec;
use crate::storage::{Location, StoreRegistry};

/// A sink writing files; see the module docs.
pub(super) struct FileSink {
    name: String,
    location: Location,
    store: Arc<dyn ObjectStore>,
    /// The store's multipart uploads, when they are tracked (S3; see [`upload`]).
    multipart: Option<Arc<dyn MultipartStore>>,
    log: CommitLog,
    format: OutputFormat,
    partition_by: Vec<String>,
    target_file_bytes: u64,
    /// What each commit group holds until it is sealed. A group being
    /// written is taken out while it is, so sealing another group never
    /// waits for a write.
    groups: std::sync::Mutex<BTreeMap<u64, Pending>>,
    /// A data file is committed, or sealed for a commit (from the commit log
    /// at `recover`, then from every seal: seals run ahead of the commit
    /// before them); until then a commit of no rows gets a zero-row file
    /// (see the module docs). A run whose sealed files are not committed
    /// fails, and the next run reads the flag from the log again.
    holds_a_file: std::sync::atomic::AtomicBool,
    layout: Layout,
    /// When each commit group's first write began (a shared log refuses
    /// to commit a group begun too long ago).
    began: std::sync::Mutex<BTreeMap<u64, std::time::Instant>>,
}

/// Which log lists the files, and so how they are laid out for readers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::sinks) enum Layout {
    /// sluice's commit log (the `parquet`, `csv` and `jsonl` sinks).
    Plain,
    /// A Delta table's log (the `delta` sink): no zero-row file, since the
    /// table carries the schema, and partition values spelt as Delta reads
    /// them.
    Delta,
}

impl Layout {
    /// How partition values are spelt. Delta reads a timestamp partition
    /// value as `2024-01-02 03:04:05.000006` (no zone) or as ISO 8601 in UTC;
    /// the delta sink hands over zoned timestamps already in UTC.
    fn partition_format(self) -> FormatOptions<'static> {
        let options = FormatOptions::default();
        match self {
            Layout::Plain => options,
            Layout::Delta => options
                .with_timestamp_format(Some("%Y-%m-%d %H:%M:%S%.6f"))
                .with_timestamp_tz_format(Some("%Y-%m-%dT%H:%M:%S%.6fZ")),
        }
    }
}

impl std::fmt::Debug for FileSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FileSink({} -> {})", self.name, self.location.url())
    }
}

impl FileSink {
    #[allow(clippy::too_many_arguments)]
    fn open(
        name: &str,
        url: &str,
        format: OutputFormat,
        partition_by: &[String],
        target: u64,
        layout: Layout,
        spec: &PipelineSpec,
        stores: &StoreRegistry,
    ) -> Result<FileSink> {
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
        Ok(FileSink {
            name: name.to_string(),
            log: CommitLog::new(Arc::clone(&store), location.clone()),
            multipart: stores.multipart_for(&location),
            location,
            store,
            format,
            partition_by: partition_by.to_vec(),
            target_file_bytes: target,
            groups: std::sync::Mutex::new(BTreeMap::new()),
            holds_a_file: std::sync::atomic::AtomicBool::new(false),
            layout,
            began: std::sync::Mutex::new(BTreeMap::new()),
        })
    }

    /// Opens a `parquet` sink.
    pub(super) fn open_parquet(
        name: &str,
        c: &ParquetSinkConfig,
        spec: &PipelineSpec,
        stores: &StoreRegistry,
    ) -> Result<Arc<dyn Sink>> {
        Ok(Arc::new(Self::parquet(
            name,
            c,
            Layout::Plain,
            spec,
            stores,
        )?))
    }

    /// Parquet files laid out for `layout`'s log.
    pub(in crate::sinks) fn parquet(
        name: &str,
        c: &ParquetSinkConfig,
        layout: Layout,
        spec: &PipelineSpec,
        stores: &StoreRegistry,
    ) -> Result<FileSink> {
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
            &c.files.url,
            OutputFormat::Parquet(Box::new(props)),
            &c.files.partition_by,
            c.files.target_file_size.0,
            layout,
            spec,
            stores,
        )
    }

    /// Opens a `csv` sink.
    pub(super) fn open_csv(
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
            &c.files.url,
            format,
            &c.files.partition_by,
            c.files.target_file_size.0,
            Layout::Plain,
            spec,
            stores,
        )
        .map(|s| Arc::new(s) as Arc<dyn Sink>)
    }

    /// Opens a `jsonl` sink.
    pub(super) fn open_jsonl(
        name: &str,
        c: &JsonlSinkConfig,
        spec: &PipelineSpec,
        stores: &StoreRegistry,
    ) -> Result<Arc<dyn Sink>> {
        Self::open(
            name,
            &c.files.url,
            OutputFormat::Jsonl,
            &c.files.partition_by,
            c.files.target_file_size.0,
            Layout::Plain,
            spec,
            stores,
        )
        .map(|s| Arc::new(s) as Arc<dyn Sink>)
    }

    fn lock_groups(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Pending>> {
        // a poisoned lock means a writer panicked; its files are still listed
        self.groups.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The hive partition columns.
    pub(in crate::sinks) fn partition_by(&self) -> &[String] {
        &self.partition_by
    }

    /// Where the files go.
    pub(in crate::sinks) fn location(&self) -> &Location {
        &self.location
    }

    /// The store the files go to.
    pub(in crate::sinks) fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// Deletes what earlier runs left: their multipart uploads, and the
    /// files sluice wrote that `committed` (paths relative to the sink) does
    /// not list. For a sink whose files another log lists (Delta's).
    pub(in crate::sinks) async fn remove_unlisted(
        &self,
        committed: &std::collections::BTreeSet<String>,
    ) -> Result<Vec<String>> {
        let mut removed = self.abort_left_uploads().await?;
        removed.extend(
            self.log
                .remove_unlisted(committed)
                .await
                .map_err(|e| self.log_err(e))?,
        );
        Ok(removed)
    }

    /// Aborts the multipart uploads a killed run left (see [`upload`]).
    async fn abort_left_uploads(&self) -> Result<Vec<String>> {
        let Some(multipart) = &self.multipart else {
            return Ok(Vec::new());
        };
        upload::abort_left_uploads(&self.store, multipart, &self.location, |name, modified| {
            self.log.may_delete(name, modified)
        })
        .await
        .map_err(|e| {
            SluiceError::sink_failed(
                &self.name,
                self.location.url(),
                "cannot abort the uploads an earlier run left",
                e,
            )
        })
    }

    /// Takes a group out of the map for as long as it is written or sealed.
    fn take_group(&self, group: u64) -> Pending {
        self.lock_groups().remove(&group).unwrap_or_default()
    }

    fn put_group(&self, group: u64, pending: Pending) {
        self.lock_groups().insert(group, pending);
    }

    /// The error of a commit-log operation; its retry hint follows the cause.
    fn log_err(&self, e: crate::commit_log::CommitLogError) -> SluiceError {
        let retry = e.retry_hint();
        SluiceError::Sink {
            sink: self.name.clone(),
            url: self.location.url(),
            message: e.to_string(),
            retry,
            cause: None,
        }
    }

    /// A file's error, as this sink's (the writers of files do not know the
    /// sink's name).
    fn named(&self, e: SluiceError) -> SluiceError {
        match e {
            SluiceError::Sink {
                url,
                message,
                retry,
                cause,
                ..
            } => SluiceError::Sink {
                sink: self.name.clone(),
                url,
                message,
                retry,
                cause,
            },
            other => other,
        }
    }

    fn err(&self, message: impl Into<String>, retry: RetryHint) -> SluiceError {
        SluiceError::Sink {
            sink: self.name.clone(),
            url: self.location.url(),
            message: message.into(),
            retry,
            cause: None,
        }
    }

    /// What a zero-row file of the group would be made of, when the group
    /// needs one: a Parquet sink without `partition_by` (a reader globs its
    /// one folder) that has no committed file yet, and the group was written.
    fn wants_a_zero_row_file<'a>(
        &self,
        pending: &'a Pending,
    ) -> Option<&'a (SchemaRef, u64, String)> {
        let parquet = matches!(self.format, OutputFormat::Parquet(_));
        let holds = self.holds_a_file.load(std::sync::atomic::Ordering::Relaxed);
        (parquet && self.layout == Layout::Plain && self.partition_by.is_empty() && !holds)
            .then_some(pending.first_write.as_ref())
            .flatten()
    }

    /// Writes a Parquet file of no rows with the group's schema; named like
    /// every data file, so the commit log and recovery treat it as one.
    async fn zero_row_file(
        &self,
        (schema, epoch, run_id): &(SchemaRef, u64, String),
    ) -> std::result::Result<CommittedFile, SluiceError> {
        let rel = data_file_name(*epoch, run_id, 0, 0, self.format.extension());
        let upload = Upload::new(
            Arc::clone(&self.store),
            self.multipart.clone(),
            &self.location,
            self.location.child(&rel),
        );
        let file = OpenFile::create(upload, &self.format_for(schema), Arc::clone(schema))
            .map_err(|m| sink_err(&self.name, &self.location, &rel, m))?;
        let o = Open {
            file,
            rel,
            rows: 0,
            values: BTreeMap::new(),
        };
        finish(&self.name, &self.location, o).await
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
                    .as_ref()
                    .clone()
                    .into_builder()
                    .set_key_value_metadata(Some(kv))
                    .build();
                OutputFormat::Parquet(Box::new(props))
            }
            other => other.clone(),
        }
    }
}

/// What every partition writer of one epoch shares.
struct EpochWrite {
    /// The sink's name, for errors.
    name: String,
    store: Arc<dyn ObjectStore>,
    multipart: Option<Arc<dyn MultipartStore>>,
    location: Location,
    format: OutputFormat,
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

/// What one commit group holds until it is sealed: files stay open across
/// the group's epochs (so a commit every few epochs does not mean a tiny
/// file every epoch), files rolled by size wait, closed, for the commit.
#[derive(Default)]
struct Pending {
    /// The schema, epoch and run of the group's first write: what a
    /// zero-row file is made of.
    first_write: Option<(SchemaRef, u64, String)>,
    /// Open files by plan partition and hive folder.
    open: HashMap<usize, HashMap<String, Open>>,
    /// Closed files not committed yet.
    closed: Vec<CommittedFile>,
    /// Next file number per plan partition.
    seq: HashMap<usize, usize>,
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
            let schema = stream.schema();
            while let Some(batch) = stream.next().await {
                let batch = batch.map_err(|e| SluiceError::from_datafusion(e, None))?;
                if batch.num_rows() == 0 {
                    continue;
                }
                let pieces = match &self.splitter {
                    Some(s) => s
                        .split(&batch)
                        .map_err(|e| {
                            SluiceError::sink_failed(
                                &self.name,
                                self.location.url(),
                                "cannot split the rows by `partition_by`",
                                e,
                            )
                        })?
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
                            None => Arc::clone(&schema),
                        };
                        let upload = Upload::new(
                            Arc::clone(&self.store),
                            self.multipart.clone(),
                            &self.location,
                            self.location.child(&rel),
                        );
                        let file = OpenFile::create(upload, &self.format, schema)
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
                    if o.file.size() >= self.target
                        && let Some(o) = files.open.remove(&dir)
                    {
                        files
                            .closed
                            .push(finish(&self.name, &self.location, o).await?);
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

    fn sink_err(&self, rel: &str, cause: Cause) -> SluiceError {
        sink_err(&self.name, &self.location, rel, cause)
    }
}

/// Sink `name` failed writing file `rel`.
fn sink_err(name: &str, location: &Location, rel: &str, cause: Cause) -> SluiceError {
    SluiceError::sink_failed(
        name,
        location.object_url(&location.child(rel)),
        "cannot write",
        cause,
    )
}

/// Closes a file; returns what the commit records of it.
async fn finish(
    name: &str,
    location: &Location,
    o: Open,
) -> std::result::Result<CommittedFile, SluiceError> {
    let bytes = o
        .file
        .finish()
        .await
        .map_err(|m| sink_err(name, location, &o.rel, m))?;
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
            .map_err(|e| {
                SluiceError::sink_failed(&self.name, self.location.url(), "unreachable", e)
            })
    }

    async fn recover(&self) -> Result<Recovered> {
        let mut removed = self.abort_left_uploads().await?;
        removed.extend(
            self.log
                .remove_uncommitted()
                .await
                .map_err(|e| self.log_err(e))?,
        );
        let commits = self.log.read_all().await.map_err(|e| self.log_err(e))?;
        if commits.iter().any(|c| !c.files.is_empty()) {
            self.holds_a_file
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(Recovered {
            log: SinkLog::durable(commits.into_iter().map(Commit::into_range).collect()),
            removed_files: removed,
        })
    }

    async fn write(&self, output: EpochOutput) -> Result<u64> {
        let schema = Arc::clone(output.schema());
        let splitter = if self.partition_by.is_empty() {
            None
        } else {
            Some(
                HiveSplitter::try_new(&schema, &self.partition_by, self.layout.partition_format())
                    .map_err(|m| self.err(m, RetryHint::Never))?,
            )
        };
        let job = Arc::new(EpochWrite {
            name: self.name.clone(),
            store: Arc::clone(&self.store),
            multipart: self.multipart.clone(),
            location: self.location.clone(),
            format: self.format_for(&schema),
            splitter,
            target: self.target_file_bytes,
            epoch: output.epoch(),
            run_id: output.run_id().to_string(),
        });
        let group = output.commit_group();
        self.began
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(group)
            .or_insert_with(std::time::Instant::now);
        let mut pending = self.take_group(group);
        pending.first_write.get_or_insert_with(|| {
            (
                Arc::clone(&schema),
                output.epoch(),
                output.run_id().to_string(),
            )
        });
        let mut tasks = JoinSet::new();
        let mut failure: Option<SluiceError> = None;
        for p in 0..output.partitions() {
            let stream = match output.execute(p) {
                Ok(s) => s,
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            };
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
        // what was written stays in the group, for the commit or for `abort`
        self.put_group(group, pending);
        match failure {
            Some(e) => Err(self.named(e)),
            None => Ok(rows),
        }
    }

    async fn seal(&self, group: u64) -> Result<Sealed> {
        let mut pending = self.take_group(group);
        let opens: Vec<Open> = pending
            .open
            .drain()
            .flat_map(|(_, m)| m.into_values())
            .collect();
        let mut failure = None;
        for o in opens {
            match finish(&self.name, &self.location, o).await {
                Ok(f) => pending.closed.push(f),
                Err(e) => failure = failure.or(Some(e)),
            }
        }
        let mut files = std::mem::take(&mut pending.closed);
        if let Some(e) = failure {
            // the closed files stay listed for `abort`
            pending.closed = files;
            self.put_group(group, pending);
            return Err(self.named(e));
        }
        // claimed before the write: two groups sealed at once (epochs in
        // flight) would otherwise both see no file and both write one
        if files.is_empty()
            && let Some(first) = self.wants_a_zero_row_file(&pending)
            && !self
                .holds_a_file
                .swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            match self.zero_row_file(first).await {
                Ok(f) => files.push(f),
                Err(e) => {
                    self.holds_a_file
                        .store(false, std::sync::atomic::Ordering::SeqCst);
                    return Err(self.named(e));
                }
            }
        }
        if !files.is_empty() {
            self.holds_a_file
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        files.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(Sealed {
            rows: files.iter().map(|f| f.rows).sum(),
            bytes: files.iter().map(|f| f.bytes).sum(),
            files,
        })
    }

    async fn commit(&self, sealed: Sealed, record: &CommitRecord) -> Result<()> {
        let commit = Commit::of(record, &self.name, sealed, self.partition_by.clone());
        let began = self
            .began
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&record.first_epoch);
        if self.log.is_shared()
            && let Some(age) = began.map(|b| b.elapsed())
            && age > crate::commit_log::SHARED_DEBRIS_AGE / 2
        {
            return Err(self.log_err(crate::commit_log::CommitLogError::TooOld {
                age_s: age.as_secs(),
                limit_s: crate::commit_log::SHARED_DEBRIS_AGE.as_secs(),
            }));
        }
        self.log
            .write(&commit)
            .await
            .map(|_| ())
            .map_err(|e| self.log_err(e))
    }

    fn share(&self, sources: &std::collections::BTreeSet<String>, run_id: &str) -> Result<()> {
        if self.layout != Layout::Plain {
            return Err(self.err(
                "a sink whose files another log lists cannot be shared by workers",
                RetryHint::Never,
            ));
        }
        self.log.share(sources.clone(), run_id);
        Ok(())
    }

    fn state_store(&self) -> Option<crate::state::StateStore> {
        Some(crate::state::StateStore::new(
            &self.name,
            &self.location.url(),
            Arc::clone(&self.store),
            self.location.prefix.clone(),
        ))
    }

    async fn reset(&self) -> Result<u64> {
        self.log.reset().await.map_err(|e| self.log_err(e))
    }

    async fn abort(&self) {
        self.began.lock().unwrap_or_else(|p| p.into_inner()).clear();
        let groups = std::mem::take(&mut *self.lock_groups());
        for (_, mut pending) in groups {
            for (_, files) in pending.open.drain() {
                for (_, o) in files {
                    o.file.abort().await;
                }
            }
            for f in pending.closed.drain(..) {
                let _ = self.store.delete(&self.location.child(&f.path)).await;
            }
        }
        // anything else this run left (files of tasks that were cancelled,
        // groups sealed and not committed)
        let _ = self.abort_left_uploads().await;
        // sluice's log lists no file of a Delta layout: the delta sink sweeps
        // against the table's log itself
        if self.layout == Layout::Plain {
            let _ = self.log.remove_uncommitted().await;
        }
    }
}
