//! File sources: `csv`, `jsonl`, `parquet` and `arrow_ipc` from a path, a glob
//! or an object-store URL.
//!
//! The files are listed when the source opens; a slice is a run of files in
//! path order, and the offsets are the set of files consumed, so a restart
//! skips exactly what a commit covered. A large uncompressed CSV or JSON-lines
//! file that does not fit an epoch's limits is read over several epochs: the
//! offsets then also hold how many of its bytes are consumed (line-level
//! offsets; a byte range owns the lines that start inside it). CSV and JSON
//! lines are read by sluice's own [`LineScanExec`](crate::ops::line_scan)
//! (errors name the file and line); Parquet and Arrow IPC by DataFusion's
//! listing tables (pruning and filter pushdown).
//!
//! Pointed at the output of a sluice sink, a file source reads only the files
//! its commit log lists, and keeps the lineage and provenance written there.

mod config;
mod footer;
mod named;
mod sample;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::catalog::TableProvider;
use datafusion::datasource::file_format::FileFormat;
use datafusion::datasource::file_format::arrow::ArrowFormat;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::physical_expr_adapter::DefaultPhysicalExprAdapterFactory;
use object_store::{ObjectMeta, ObjectStore};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sluice_contract::metadata::{lineage_from, provenance_from, strip_sluice_keys};
use sluice_contract::{LineageEntry, Provenance, SourceProvenance};

pub use config::{
    ArrowIpcSourceConfig, CsvSourceConfig, DirFormat, DirSourceConfig, JsonlSourceConfig,
    ParquetSourceConfig,
};

use super::{AnySource, Slice, SliceLimits, Source, SourceContext};
use crate::commit_log::CommitLog;
use crate::dead_letter::OnError;
use crate::error::{Result, RetryHint, SluiceError};
use crate::ops::line_scan::{Compression, FilePart, LineFilesTable, LineFormat, split};
use crate::spec::values::schema_from_columns;
use crate::storage::{Location, list_objects};

/// How a file source decodes its files.
#[derive(Debug, Clone)]
enum Format {
    Lines(LineFormat, Compression),
    Parquet,
    ArrowIpc,
}

impl Format {
    fn kind(&self) -> &'static str {
        match self {
            Format::Lines(LineFormat::Csv(_), _) => "csv",
            Format::Lines(LineFormat::Jsonl, _) => "jsonl",
            Format::Parquet => "parquet",
            Format::ArrowIpc => "arrow_ipc",
        }
    }
}

/// Opens a `csv` source.
pub(crate) async fn open_csv(
    cfg: &CsvSourceConfig,
    on_error: OnError,
    ctx: &SourceContext<'_>,
) -> Result<Box<dyn AnySource>> {
    let options = cfg.options().map_err(|(key, msg)| {
        SluiceError::spec(ctx.spec.issue(format!("sources.{}.{key}", ctx.name), msg))
    })?;
    let format = Format::Lines(LineFormat::Csv(options), cfg.compression);
    let declared = Declared::resolve(ctx, cfg.columns.as_deref(), cfg.schema.as_deref())?;
    let mut source =
        FileSource::open_with(ctx, &cfg.path, format, declared, cfg.infer_rows, None).await?;
    source.on_error = on_error;
    Ok(Box::new(source))
}

/// Opens a `jsonl` source.
pub(crate) async fn open_jsonl(
    cfg: &JsonlSourceConfig,
    on_error: OnError,
    ctx: &SourceContext<'_>,
) -> Result<Box<dyn AnySource>> {
    let format = Format::Lines(LineFormat::Jsonl, cfg.compression);
    let declared = Declared::resolve(ctx, cfg.columns.as_deref(), cfg.schema.as_deref())?;
    let mut source =
        FileSource::open_with(ctx, &cfg.path, format, declared, cfg.infer_rows, None).await?;
    source.on_error = on_error;
    Ok(Box::new(source))
}

/// Opens a `dir` source: a file source that keeps listing.
pub(crate) async fn open_dir(
    cfg: &DirSourceConfig,
    on_error: OnError,
    ctx: &SourceContext<'_>,
) -> Result<Box<dyn AnySource>> {
    let format = match cfg.format {
        DirFormat::Csv => {
            let mut c = CsvSourceConfig::new(cfg.path.clone());
            c.header = cfg.header;
            c.delimiter = cfg.delimiter.clone();
            let options = c.options().map_err(|(key, msg)| {
                SluiceError::spec(ctx.spec.issue(format!("sources.{}.{key}", ctx.name), msg))
            })?;
            Format::Lines(LineFormat::Csv(options), cfg.compression)
        }
        DirFormat::Jsonl => Format::Lines(LineFormat::Jsonl, cfg.compression),
        DirFormat::Parquet => Format::Parquet,
    };
    let declared = Declared::resolve(ctx, cfg.columns.as_deref(), None)?;
    let mut source = FileSource::open_with(
        ctx,
        &cfg.path,
        format,
        declared,
        1000,
        Some(cfg.poll_interval.0),
    )
    .await?;
    source.follow = Some(cfg.poll_interval.0);
    source.on_error = on_error;
    Ok(Box::new(source))
}

/// Opens a `parquet` source.
pub(crate) async fn open_parquet(
    cfg: &ParquetSourceConfig,
    ctx: &SourceContext<'_>,
) -> Result<Box<dyn AnySource>> {
    let declared = Declared::resolve(ctx, None, cfg.schema.as_deref())?;
    FileSource::open(ctx, &cfg.path, Format::Parquet, declared, 0).await
}

/// Opens an `arrow_ipc` source.
pub(crate) async fn open_arrow_ipc(
    cfg: &ArrowIpcSourceConfig,
    ctx: &SourceContext<'_>,
) -> Result<Box<dyn AnySource>> {
    FileSource::open(ctx, &cfg.path, Format::ArrowIpc, Declared::None, 0).await
}

/// What a file source was told about its schema.
#[derive(Debug, Clone)]
enum Declared {
    None,
    Columns(Schema),
    /// A registry schema: its `name@version` and the schema.
    Registry(String, Schema),
}

impl Declared {
    fn resolve(
        ctx: &SourceContext<'_>,
        columns: Option<&[crate::spec::ColumnSpec]>,
        schema: Option<&str>,
    ) -> Result<Self> {
        let issue = |key: &str, m: String| {
            SluiceError::spec(ctx.spec.issue(format!("sources.{}.{key}", ctx.name), m))
        };
        match (columns, schema) {
            (Some(_), Some(_)) => Err(issue(
                "schema",
                "give either `columns` or `schema`, not both".into(),
            )),
            (Some(cols), None) => Ok(Declared::Columns(
                schema_from_columns(cols).map_err(|m| issue("columns", m))?,
            )),
            (None, Some(reference)) => {
                let registered = ctx
                    .spec
                    .registry()
                    .get(reference)
                    .map_err(|e| issue("schema", e.to_string()))?;
                Ok(Declared::Registry(
                    format!("{}@{}", registered.name, registered.version),
                    registered.schema,
                ))
            }
            (None, None) => Ok(Declared::None),
        }
    }
}

#[derive(Debug)]
struct FileSource {
    /// `dir` sources: list again every slice, polling at this interval.
    follow: Option<std::time::Duration>,
    name: String,
    format: Format,
    location: Location,
    store: Arc<dyn ObjectStore>,
    schema: SchemaRef,
    files: Vec<ObjectMeta>,
    consumed: BTreeSet<String>,
    /// Files read in part: bytes consumed so far.
    partial: BTreeMap<String, u64>,
    /// Average bytes per row seen while inferring, to turn row limits into files.
    bytes_per_row: Option<f64>,
    upstream_lineage: Vec<LineageEntry>,
    upstream_provenance: Option<Provenance>,
    /// The registry schema (`name@version`) every file is read as.
    read_as: Option<String>,
    /// The schema versions the files say they were written at.
    written_as: Vec<String>,
    /// What to do with a row that cannot be read (csv, jsonl).
    on_error: OnError,
    target_partitions: usize,
    batch_size: usize,
}

impl FileSource {
    fn error(&self, file: Option<String>, message: String, retry: RetryHint) -> SluiceError {
        SluiceError::Source {
            source_name: self.name.clone(),
            file,
            line: None,
            message,
            retry,
            cause: None,
        }
    }

    async fn open(
        ctx: &SourceContext<'_>,
        path: &str,
        format: Format,
        declared: Declared,
        infer_rows: usize,
    ) -> Result<Box<dyn AnySource>> {
        Ok(Box::new(
            Self::open_with(ctx, path, format, declared, infer_rows, None).await?,
        ))
    }

    /// Opens a file source; with `follow`, an empty folder is fine when the
    /// columns are declared, and the folder is listed again for every slice.
    async fn open_with(
        ctx: &SourceContext<'_>,
        path: &str,
        format: Format,
        declared: Declared,
        infer_rows: usize,
        follow: Option<std::time::Duration>,
    ) -> Result<Self> {
        let key = format!("sources.{}.path", ctx.name);
        let location = Location::parse(path, &ctx.spec.base_dir)
            .map_err(|m| SluiceError::spec(ctx.spec.issue(&key, m)))?;
        let store = ctx
            .stores
            .store_for(&location, &ctx.spec.settings.s3)
            .map_err(|m| SluiceError::spec(ctx.spec.issue(&key, m)))?;
        let src_err = |file: Option<String>, message: String, retry| SluiceError::Source {
            source_name: ctx.name.to_string(),
            file,
            line: None,
            message,
            retry,
            cause: None,
        };

        let listed = list_objects(store.as_ref(), &location).await.map_err(|e| {
            SluiceError::source_failed(ctx.name, Some(location.url()), "cannot list input files", e)
        })?;
        let single_file = listed.len() == 1 && listed[0].location == location.prefix;
        // the output of a sluice sink: read what its commits list, nothing else
        let commits = if location.glob.is_none() && !single_file {
            let log = CommitLog::new(Arc::clone(&store), location.clone());
            log.read_all().await.map_err(|e| {
                SluiceError::source_failed(
                    ctx.name,
                    Some(location.url()),
                    "cannot read the commit log of the sink it reads",
                    e,
                )
            })?
        } else {
            Vec::new()
        };
        // a sluice sink knows its schema (without hive partition columns, which
        // are folder names, not file columns)
        let committed_schema = commits.last().map(|c| {
            let fields: Vec<_> = c
                .schema
                .fields()
                .iter()
                .filter(|f| !c.partition_by.contains(f.name()))
                .cloned()
                .collect();
            let mut md = c.schema.metadata().clone();
            strip_sluice_keys(&mut md);
            Schema::new_with_metadata(fields, md)
        });
        let (files, upstream_lineage, upstream_provenance) = if let Some(last) = commits.last() {
            let mut files = Vec::new();
            for c in &commits {
                for f in &c.files {
                    files.push(ObjectMeta {
                        location: location.child(&f.path),
                        last_modified: chrono::Utc::now(),
                        size: f.bytes,
                        e_tag: None,
                        version: None,
                    });
                }
            }
            (files, last.lineage.clone(), Some(last.provenance.clone()))
        } else {
            (listed, Vec::new(), None)
        };
        // an empty folder is fine only for a `dir` source with declared columns
        let may_start_empty = follow.is_some() && !matches!(declared, Declared::None);
        if files.is_empty() && committed_schema.is_none() && !may_start_empty {
            return Err(SluiceError::spec(
                ctx.spec
                    .issue(&key, format!("source `{}`: no input files match `{path}` ({})", ctx.name, location.url()))
                    .with_help("the path is relative to the pipeline file; a folder, a file, a glob like `data/*.csv` or a URL"),
            ));
        }

        if matches!(format, Format::Parquet) {
            // before the parquet crate reads a footer that would make it panic
            footer::check_footers(store.as_ref(), &location, ctx.name, &files).await?;
        }
        let mut bytes_per_row = None;
        let mut written_as = Vec::new();
        let (schema, lineage, provenance) = match (&declared, &format) {
            (Declared::Registry(reference, schema), Format::Parquet) => {
                written_as =
                    check_files_read_as(ctx, &store, &location, &files, reference, schema).await?;
                (schema.clone(), upstream_lineage, upstream_provenance)
            }
            (Declared::None, _) if committed_schema.is_some() => (
                committed_schema.unwrap_or_else(Schema::empty),
                upstream_lineage,
                upstream_provenance,
            ),
            (Declared::Columns(schema) | Declared::Registry(_, schema), _) => {
                (schema.clone(), upstream_lineage, upstream_provenance)
            }
            (Declared::None, Format::Lines(lf, compression)) => {
                let first = &files[0];
                let (schema, bpr) = sample::infer_lines_schema(
                    &store,
                    first,
                    lf,
                    compression.of(first.location.as_ref()),
                    infer_rows,
                )
                .await
                .map_err(|e| {
                    let file = Some(location.object_url(&first.location));
                    match e {
                        sample::InferError::Failed(what, cause) => {
                            SluiceError::source_failed(ctx.name, file, what, cause)
                        }
                        sample::InferError::Refused(m) => {
                            src_err(file, m.to_string(), RetryHint::Never)
                        }
                    }
                })?;
                bytes_per_row = bpr;
                (schema, upstream_lineage, upstream_provenance)
            }
            (Declared::None, Format::Parquet | Format::ArrowIpc) => {
                let ff: Arc<dyn FileFormat> = match format {
                    Format::Parquet => Arc::new(ParquetFormat::default().with_skip_metadata(false)),
                    _ => Arc::new(ArrowFormat),
                };
                let state = ctx.session.state();
                let inferred = ff.infer_schema(&state, &store, &files).await.map_err(|e| {
                    SluiceError::source_failed(
                        ctx.name,
                        Some(location.url()),
                        "cannot read the schema",
                        e,
                    )
                })?;
                // the files' own record of where they came from wins over nothing
                let md = inferred.metadata().clone();
                let lineage = if upstream_lineage.is_empty() {
                    lineage_from(&md)
                        .map_err(|m| src_err(Some(location.url()), m, RetryHint::Never))?
                        .unwrap_or_default()
                } else {
                    upstream_lineage
                };
                let provenance = match upstream_provenance {
                    Some(p) => Some(p),
                    None => provenance_from(&md)
                        .map_err(|m| src_err(Some(location.url()), m, RetryHint::Never))?,
                };
                let mut md = md;
                strip_sluice_keys(&mut md);
                (
                    Schema::new_with_metadata(inferred.fields().clone(), md),
                    lineage,
                    provenance,
                )
            }
        };
        if bytes_per_row.is_none()
            && let Format::Lines(lf, compression) = &format
            && let Some(first) = files.first()
            && compression.of(first.location.as_ref()) == Compression::None
        {
            // sized by `epoch.max_rows` from the first epoch on, declared columns or not
            bytes_per_row = sample::bytes_per_row(&store, first, lf).await;
        }
        Ok(FileSource {
            follow,
            name: ctx.name.to_string(),
            format,
            location,
            store,
            schema: Arc::new(schema),
            files,
            consumed: BTreeSet::new(),
            partial: BTreeMap::new(),
            bytes_per_row,
            upstream_lineage: lineage,
            upstream_provenance: provenance,
            read_as: match declared {
                Declared::Registry(reference, _) => Some(reference),
                _ => None,
            },
            written_as,
            on_error: OnError::Fail,
            target_partitions: ctx.target_partitions,
            batch_size: ctx.batch_size,
        })
    }

    fn offsets(&self) -> FileOffset {
        FileOffset {
            files: self.consumed.clone(),
            partial: self.partial.clone(),
        }
    }

    /// Whether `file` may be read in byte ranges over several epochs.
    fn splittable(&self, file: &ObjectMeta) -> bool {
        match &self.format {
            Format::Lines(lf, compression) => {
                split::splittable(lf, compression.of(file.location.as_ref()))
            }
            Format::Parquet | Format::ArrowIpc => false,
        }
    }

    fn table_for(&self, files: Vec<FilePart>) -> Result<Arc<dyn TableProvider>> {
        match &self.format {
            Format::Lines(lf, compression) => Ok(Arc::new(LineFilesTable {
                source_name: self.name.clone(),
                store: Arc::clone(&self.store),
                store_url: self.location.store_url.as_str().to_string(),
                format: lf.clone(),
                schema: Arc::clone(&self.schema),
                files,
                compression: *compression,
                target_partitions: self.target_partitions,
                batch_size: self.batch_size,
                on_error: self.on_error,
                line_offset: 0,
                min_split_bytes: split::MIN_SPLIT_BYTES,
                bytes_per_row: self.bytes_per_row,
            })),
            Format::Parquet | Format::ArrowIpc => {
                let urls = files
                    .iter()
                    .map(|f| ListingTableUrl::parse(self.location.object_url(&f.object.location)))
                    .collect::<datafusion::common::Result<Vec<_>>>()
                    .map_err(|e| self.error(None, e.to_string(), RetryHint::Never))?;
                let ff: Arc<dyn FileFormat> = match self.format {
                    Format::Parquet => Arc::new(ParquetFormat::default().with_skip_metadata(false)),
                    _ => Arc::new(ArrowFormat),
                };
                let options = ListingOptions::new(ff).with_file_extension("");
                // files written at an earlier schema version read under this one
                // (missing nullable columns as NULL, widening casts)
                let config = ListingTableConfig::new_with_multi_paths(urls)
                    .with_listing_options(options)
                    .with_schema(Arc::clone(&self.schema))
                    .with_expr_adapter_factory(Arc::new(DefaultPhysicalExprAdapterFactory));
                let table = ListingTable::try_new(config)
                    .map_err(|e| self.error(None, e.to_string(), RetryHint::Never))?;
                let scanned = files
                    .iter()
                    .map(|f| {
                        (
                            self.location.object_url(&f.object.location),
                            f.object.location.clone(),
                        )
                    })
                    .collect();
                Ok(Arc::new(named::NamedFilesTable {
                    inner: table,
                    source_name: self.name.clone(),
                    store: Arc::clone(&self.store),
                    files: Arc::new(scanned),
                    parquet: matches!(self.format, Format::Parquet),
                }))
            }
        }
    }
}

#[async_trait]
impl Source for FileSource {
    type Offset = FileOffset;

    fn kind(&self) -> &str {
        self.format.kind()
    }

    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn provenance(&self) -> SourceProvenance {
        let mut parameters = serde_json::Map::new();
        parameters.insert("format".into(), json!(self.format.kind()));
        parameters.insert("location".into(), json!(self.location.original));
        if let Some(r) = &self.read_as {
            parameters.insert("read_as".into(), json!(r));
            parameters.insert("written_as".into(), json!(self.written_as));
        }
        SourceProvenance {
            source: self.name.clone(),
            kind: self.format.kind().into(),
            uris: self
                .files
                .iter()
                .map(|f| self.location.object_url(&f.location))
                .collect(),
            parameters,
            upstream: self.upstream_provenance.clone().map(Box::new),
        }
    }

    fn upstream_lineage(&self) -> Vec<LineageEntry> {
        self.upstream_lineage.clone()
    }

    async fn resume(&mut self, at: &FileOffset) -> Result<()> {
        (self.consumed, self.partial) = (at.files.clone(), at.partial.clone());
        Ok(())
    }

    async fn next_slice(&mut self, limits: &SliceLimits) -> Result<Option<Slice<FileOffset>>> {
        let Some(poll) = self.follow else {
            return self.next_files(limits);
        };
        let deadline = super::deadline_after(
            limits
                .max_latency
                .unwrap_or(std::time::Duration::from_secs(1)),
        );
        loop {
            self.relist().await?;
            if let Some(slice) = self.next_files(limits)? {
                return Ok(Some(slice));
            }
            if std::time::Instant::now() >= deadline {
                // nothing new for now: an empty slice keeps the stream going
                let at = self.offsets();
                let table: Arc<dyn TableProvider> = Arc::new(
                    datafusion::datasource::empty::EmptyTable::new(Arc::clone(&self.schema)),
                );
                return Ok(Some(Slice {
                    table,
                    start: at.clone(),
                    end: at,
                    estimated_rows: Some(0),
                    uris: vec![],
                }));
            }
            tokio::time::sleep(
                poll.min(deadline.saturating_duration_since(std::time::Instant::now())),
            )
            .await;
        }
    }

    async fn replay(&mut self, start: &FileOffset, end: &FileOffset) -> Result<Slice<FileOffset>> {
        let (done_before, partial_before) = (&start.files, &start.partial);
        let (done_after, partial_after) = (end.files.clone(), end.partial.clone());
        // every file the epoch touched, from the byte it started at to the one it reached
        let mut wanted: BTreeMap<&str, (u64, Option<u64>)> = BTreeMap::new();
        for f in done_after.iter().filter(|f| !done_before.contains(*f)) {
            wanted.insert(f, (partial_before.get(f).copied().unwrap_or(0), None));
        }
        for (f, to) in partial_after.iter() {
            let from = partial_before.get(f).copied().unwrap_or(0);
            if *to > from {
                wanted.insert(f, (from, Some(*to)));
            }
        }
        let mut parts: Vec<FilePart> = Vec::new();
        let mut seen = BTreeSet::new();
        for f in &self.files {
            let Some((from, to)) = wanted.get(f.location.as_ref()) else {
                continue;
            };
            if !seen.insert(f.location.as_ref()) {
                continue; // listed twice (by two commits of an edited log)
            }
            let to = to.unwrap_or(f.size);
            if *from > to || to > f.size {
                return Err(self.error(
                    Some(self.location.object_url(&f.location)),
                    format!(
                        "the committed offsets name bytes {from}..{to} of a file of {} bytes; the input changed since it was committed, so the epoch cannot be re-read exactly",
                        f.size
                    ),
                    RetryHint::Never,
                ));
            }
            parts.push(if *from == 0 && to == f.size {
                FilePart::whole(f.clone())
            } else {
                FilePart {
                    object: f.clone(),
                    range: Some(*from..to),
                }
            });
        }
        let missing = wanted.len().saturating_sub(parts.len());
        if missing > 0 {
            return Err(self.error(
                Some(self.location.url()),
                format!("{missing} file(s) of an epoch being replayed are gone from the input; it cannot be re-read exactly"),
                RetryHint::Never,
            ));
        }
        (self.consumed, self.partial) = (done_after, partial_after);
        let uris = parts
            .iter()
            .map(|f| self.location.object_url(&f.object.location))
            .collect();
        let table = self.table_for(parts)?;
        Ok(Slice {
            table,
            start: start.clone(),
            end: end.clone(),
            estimated_rows: None,
            uris,
        })
    }

    fn estimated_remaining_rows(&self) -> Option<u64> {
        let b = self.bytes_per_row?;
        let left: u64 = self
            .files
            .iter()
            .filter(|f| !self.consumed.contains(f.location.as_ref()))
            .map(|f| {
                f.size
                    - self
                        .partial
                        .get(f.location.as_ref())
                        .copied()
                        .unwrap_or(0)
                        .min(f.size)
            })
            .sum();
        Some((left as f64 / b.max(1.0)) as u64)
    }

    fn is_bounded(&self) -> bool {
        self.follow.is_none()
    }

    fn backlog(&self) -> Option<u64> {
        self.follow?;
        let waiting = self
            .files
            .iter()
            .filter(|f| !self.consumed.contains(f.location.as_ref()))
            .count();
        Some(waiting as u64)
    }

    async fn restart(&mut self) -> Result<()> {
        self.consumed.clear();
        self.partial.clear();
        Ok(())
    }
}

impl FileSource {
    /// Lists the folder again (dir sources), keeping arrival order: last
    /// modified, then name.
    async fn relist(&mut self) -> Result<()> {
        let mut files = list_objects(self.store.as_ref(), &self.location)
            .await
            .map_err(|e| {
                SluiceError::source_failed(
                    &self.name,
                    Some(self.location.url()),
                    "cannot list input files",
                    e,
                )
            })?;
        files.sort_by(|a, b| {
            a.last_modified
                .cmp(&b.last_modified)
                .then_with(|| a.location.as_ref().cmp(b.location.as_ref()))
        });
        if matches!(self.format, Format::Parquet) {
            let known: BTreeSet<&object_store::path::Path> =
                self.files.iter().map(|f| &f.location).collect();
            let new: Vec<ObjectMeta> = files
                .iter()
                .filter(|f| !known.contains(&f.location))
                .cloned()
                .collect();
            footer::check_footers(self.store.as_ref(), &self.location, &self.name, &new).await?;
        }
        self.files = files;
        Ok(())
    }

    /// The next run of unconsumed files within `limits`. A large splittable
    /// file that does not fit is cut: the slice takes the bytes that fit
    /// (at least `split::MIN_SPLIT_BYTES`) and the next slice goes on from there.
    fn next_files(&mut self, limits: &SliceLimits) -> Result<Option<Slice<FileOffset>>> {
        let start = self.offsets();
        let mut chosen: Vec<FilePart> = Vec::new();
        let (mut bytes, mut rows) = (0u64, 0u64);
        let mut cut: Option<(String, u64)> = None;
        for f in &self.files {
            if self.consumed.contains(f.location.as_ref()) {
                continue;
            }
            let from = self
                .partial
                .get(f.location.as_ref())
                .copied()
                .unwrap_or(0)
                .min(f.size);
            let size = f.size - from;
            let rows_of = |b: u64| {
                self.bytes_per_row
                    .map(|bpr| (b as f64 / bpr.max(1.0)) as u64)
            };
            // bytes left in this epoch's budget, from max_bytes and max_rows
            let budget = [
                limits.max_bytes.map(|m| m.saturating_sub(bytes)),
                match (limits.max_rows, self.bytes_per_row) {
                    (Some(m), Some(bpr)) => Some((m.saturating_sub(rows) as f64 * bpr) as u64),
                    _ => None,
                },
            ]
            .into_iter()
            .flatten()
            .min();
            let fits = budget.is_none_or(|b| size <= b);
            if !fits && self.splittable(f) && size > split::MIN_SPLIT_BYTES {
                let take = budget.unwrap_or(size).max(split::MIN_SPLIT_BYTES);
                if take < size
                    && (chosen.is_empty() || budget.is_some_and(|b| b >= split::MIN_SPLIT_BYTES))
                {
                    chosen.push(FilePart {
                        object: f.clone(),
                        range: Some(from..from + take),
                    });
                    cut = Some((f.location.to_string(), from + take));
                    rows += rows_of(take).unwrap_or(0);
                    break;
                }
            }
            if !chosen.is_empty() && !fits {
                break;
            }
            bytes += size;
            rows += rows_of(size).unwrap_or(0);
            chosen.push(if from == 0 {
                FilePart::whole(f.clone())
            } else {
                FilePart {
                    object: f.clone(),
                    range: Some(from..f.size),
                }
            });
        }
        if chosen.is_empty() {
            return Ok(None);
        }
        for f in &chosen {
            let path = f.object.location.to_string();
            if cut.as_ref().is_none_or(|(p, _)| p != &path) {
                self.partial.remove(&path);
                self.consumed.insert(path);
            }
        }
        if let Some((path, at)) = cut {
            self.partial.insert(path, at);
        }
        let uris = chosen
            .iter()
            .map(|f| self.location.object_url(&f.object.location))
            .collect();
        let estimated_rows = self.bytes_per_row.map(|_| rows);
        let table = self.table_for(chosen)?;
        Ok(Some(Slice {
            table,
            start,
            end: self.offsets(),
            estimated_rows,
            uris,
        }))
    }
}

/// A file source's position: `{"files": [done...], "partial": {file: bytes}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileOffset {
    /// Files read whole (their paths in the store).
    pub files: BTreeSet<String>,
    /// Files read in part: the bytes read so far.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub partial: BTreeMap<String, u64>,
}

/// Files whose schema is checked against a declared registry schema (the
/// first and the last ones listed: a folder is usually written in order).
const CHECKED_FILES: usize = 16;

/// Checks that the Parquet files read as `reference` can be (naming the file
/// and the field when not), and returns the schema versions they were written
/// at (their `sluice.schema`/`sluice.schema.version` metadata, when present).
async fn check_files_read_as(
    ctx: &SourceContext<'_>,
    store: &Arc<dyn ObjectStore>,
    location: &Location,
    files: &[ObjectMeta],
    reference: &str,
    schema: &Schema,
) -> Result<Vec<String>> {
    use sluice_contract::metadata::{SCHEMA, SCHEMA_VERSION};
    let state = ctx.session.state();
    let ff = ParquetFormat::default().with_skip_metadata(false);
    let half = CHECKED_FILES / 2;
    let sample: Vec<&ObjectMeta> = if files.len() <= CHECKED_FILES {
        files.iter().collect()
    } else {
        files[..half]
            .iter()
            .chain(&files[files.len() - half..])
            .collect()
    };
    let mut written = BTreeSet::new();
    for f in sample {
        let url = location.object_url(&f.location);
        let file_schema = ff
            .infer_schema(&state, store, std::slice::from_ref(f))
            .await
            .map_err(|e| SluiceError::Source {
                source_name: ctx.name.to_string(),
                file: Some(url.clone()),
                line: None,
                message: format!("cannot read the schema: {e}"),
                retry: RetryHint::Never,
                cause: None,
            })?;
        let who = format!("source `{}` reading it as {reference}", ctx.name);
        let breaks = sluice_contract::compat::read_breaks(&file_schema, schema, &who);
        if let Some(b) = breaks.first() {
            return Err(SluiceError::Source {
                source_name: ctx.name.to_string(),
                file: Some(url),
                line: None,
                message: format!("the file cannot be read as {reference}: {b}"),
                retry: RetryHint::Never,
                cause: None,
            });
        }
        let md = file_schema.metadata();
        if let (Some(n), Some(v)) = (md.get(SCHEMA), md.get(SCHEMA_VERSION)) {
            written.insert(format!("{n}@{v}"));
        }
    }
    Ok(written.into_iter().collect())
}
