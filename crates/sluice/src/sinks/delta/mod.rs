//! The `delta` sink: a Delta Lake table, committed exactly once.
//!
//! The Parquet files are written as a `parquet` sink writes them (same
//! writer, `partition_by` folders and `target_file_size`), in the types
//! Delta holds ([`types`]). What differs is the log: each sluice commit is
//! one Delta transaction (version) that adds the commit's files and carries
//! a `txn` action with app id `<pipeline>/<sink>` and version = the commit's
//! epoch (Spark's and Flink's idempotence). Its `commitInfo` holds sluice's
//! commit record (lineage, provenance, source offsets, state), so recovery
//! reads the table's own log: there is no second log to keep in step, and
//! every Delta reader sees exactly the committed rows.
//!
//! The first commit creates the table (schema, partition columns, and
//! sluice's schema metadata as table properties). Later commits evolve it
//! when a column is added as nullable; a change `sluice schema check --mode
//! full` would refuse is refused with the same explanation.

mod table;
mod types;

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::{Schema, SchemaRef};
use deltalake_core::DeltaTableError;
use deltalake_core::kernel::transaction::{CommitBuilder, CommitProperties, TableReference};
use deltalake_core::kernel::{Action, Add, MetadataExt, Transaction};
use deltalake_core::operations::create::CreateBuilder;
use deltalake_core::protocol::{DeltaOperation, OutputMode, SaveMode};
use object_store::ObjectStoreExt;
use sluice_contract::compat;
use sluice_contract::metadata::{LINEAGE, PIPELINE, SCHEMA, SCHEMA_VERSION};
use tokio::sync::Mutex;

use table::COMMIT_INFO_KEY;
pub(crate) use table::{HISTORY_DEPTH, Table, kernel_schema, sluice_commit};

use super::file::{FileSink, Layout};
use super::{CommitRecord, DeltaSinkConfig, EpochOutput, Recovered, Sealed, Sink, SinkLog};
use crate::commit_log::{Commit, CommittedFile};
use crate::error::{Result, RetryHint, SluiceError};
use crate::spec::PipelineSpec;
use crate::storage::StoreRegistry;

/// The schema metadata kept as table properties. Provenance changes every
/// epoch, so it goes into each commit's `commitInfo` instead.
const PROPERTY_KEYS: [&str; 4] = [PIPELINE, SCHEMA, SCHEMA_VERSION, LINEAGE];

/// A sink writing a Delta table; see the module docs.
pub(super) struct DeltaSink {
    files: FileSink,
    /// `<pipeline name>/<sink name>`: the `txn` app id.
    app_id: String,
    table: Mutex<Table>,
}

impl std::fmt::Debug for DeltaSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DeltaSink({})", self.app_id)
    }
}

impl DeltaSink {
    /// Opens a `delta` sink.
    pub(super) fn open(
        name: &str,
        c: &DeltaSinkConfig,
        spec: &PipelineSpec,
        stores: &StoreRegistry,
    ) -> Result<Arc<dyn Sink>> {
        let files = FileSink::parquet(name, c, Layout::Delta, spec, stores)?;
        let table = Table::new(files.location(), Arc::clone(files.store()))
            .map_err(|m| SluiceError::spec(spec.issue(format!("sinks.{name}.url"), m)))?;
        Ok(Arc::new(DeltaSink {
            app_id: format!("{}/{name}", spec.pipeline.name),
            files,
            table: Mutex::new(table),
        }))
    }

    fn err(&self, message: impl Into<String>, retry: RetryHint) -> SluiceError {
        SluiceError::Sink {
            sink: self.files.name().to_string(),
            url: self.files.location().url(),
            message: message.into(),
            retry,
            cause: None,
        }
    }

    fn delta_err(&self, what: &str, e: DeltaTableError) -> SluiceError {
        SluiceError::sink_failed(self.files.name(), self.files.location().url(), what, e)
    }

    /// sluice's commits in the table's history, newest first; those of this
    /// pipeline's sink only (another pipeline may write the same table).
    async fn own_commits(&self, table: &Table) -> Result<Vec<Commit>> {
        let history = table
            .history(Some(table::HISTORY_DEPTH))
            .await
            .map_err(|e| self.delta_err("cannot read the table's history", e))?;
        let mut commits = Vec::new();
        for info in &history {
            let Some(commit) = sluice_commit(info) else {
                continue;
            };
            let commit = commit.map_err(|m| self.err(m, RetryHint::Never))?;
            if self.owns(&commit) {
                commits.push(commit);
            }
        }
        Ok(commits)
    }

    fn owns(&self, commit: &Commit) -> bool {
        let pipeline = commit.pipeline.split('@').next().unwrap_or_default();
        format!("{pipeline}/{}", commit.sink) == self.app_id
    }

    /// The files the table's newest version names (see [`Table::named_files`]).
    async fn named_files(&self, table: &mut Table) -> Result<std::collections::BTreeSet<String>> {
        table
            .refresh()
            .await
            .map_err(|e| self.delta_err("cannot read the table's log", e))?;
        table
            .named_files()
            .await
            .map_err(|e| self.delta_err("cannot list the table's files", e))
    }

    /// Deletes the files of `sealed` (never committed).
    async fn discard(&self, sealed: &Sealed) {
        for f in &sealed.files {
            let _ = self
                .files
                .store()
                .delete(&self.files.location().child(&f.path))
                .await;
        }
    }

    /// The actions that bring the table's schema and properties to
    /// `schema`'s, when they differ; refuses what would break its readers.
    fn evolve(&self, table: &Table, schema: &SchemaRef) -> Result<Vec<Action>> {
        let (current, partitions) = table
            .schema()
            .map_err(|e| self.delta_err("cannot read the table's schema", e))?;
        let wanted = self.files.partition_by();
        if partitions != wanted {
            return Err(self.err(
                format!(
                    "the table is partitioned by [{}] but the sink's `partition_by` is [{}]; a Delta table's partition columns cannot change",
                    partitions.join(", "),
                    wanted.join(", ")
                ),
                RetryHint::Never,
            ));
        }
        let incoming = kernel_schema(schema).map_err(|m| self.err(m, RetryHint::Never))?;
        let incoming_arrow =
            table::arrow_schema(&incoming).map_err(|m| self.err(m, RetryHint::Never))?;
        let breaks = compat::check(
            &current,
            "the table's schema",
            &incoming_arrow,
            "this run's schema",
            compat::Mode::Full,
        );
        if !breaks.is_empty() {
            let list: Vec<String> = breaks.iter().map(|b| format!("  {b}")).collect();
            return Err(self.err(
                format!(
                    "this run's schema would break the table's readers (the check of `sluice schema check --mode full`):\n{}",
                    list.join("\n")
                ),
                RetryHint::Never,
            ));
        }
        let current_kernel = kernel_schema(&current).map_err(|m| self.err(m, RetryHint::Never))?;
        let added: Vec<_> = incoming
            .fields()
            .filter(|f| current_kernel.field(f.name()).is_none())
            .cloned()
            .collect();
        let properties = table
            .properties()
            .map_err(|e| self.delta_err("cannot read the table's properties", e))?;
        let changed: Vec<(String, String)> = properties_of(schema)
            .into_iter()
            .filter(|(k, v)| properties.get(k) != Some(v))
            .collect();
        if added.is_empty() && changed.is_empty() {
            return Ok(Vec::new());
        }
        let snapshot = table
            .table
            .snapshot()
            .map_err(|e| self.delta_err("cannot read the table", e))?;
        let mut metadata = snapshot.metadata().clone();
        if !added.is_empty() {
            let merged = deltalake_core::kernel::StructType::try_new(
                current_kernel.fields().cloned().chain(added),
            )
            .map_err(|e| self.err(e.to_string(), RetryHint::Never))?;
            metadata = metadata.with_schema(&merged).map_err(|e| {
                self.err(
                    format!("cannot evolve the table's schema: {e}"),
                    RetryHint::Never,
                )
            })?;
        }
        for (k, v) in changed {
            metadata = metadata.add_config_key(k, v).map_err(|e| {
                self.err(
                    format!("cannot set the table's properties: {e}"),
                    RetryHint::Never,
                )
            })?;
        }
        Ok(vec![Action::Metadata(metadata)])
    }

    /// Whether the commit of `epoch` is in the table already: made by this
    /// run (a commit whose answer was lost) it is done; made by another
    /// writer of the same sink (a zombie) this run must stop.
    async fn committed_already(&self, table: &Table, record: &CommitRecord) -> Result<bool> {
        let version = table
            .app_version(&self.app_id)
            .await
            .map_err(|e| self.delta_err("cannot read the table's transactions", e))?;
        let Some(version) = version else {
            return Ok(false);
        };
        if version < epoch_version(record.epoch) {
            return Ok(false);
        }
        let commits = self.own_commits(table).await?;
        match commits.iter().find(|c| c.epoch == record.epoch) {
            Some(c) if c.run_id == record.run_id => Ok(true),
            Some(c) => Err(self.err(
                format!(
                    "epoch {} was committed to the table by run {} while this run ({}) was writing it; two runs of one pipeline write this sink, so this one stops (restart it to resume from the table)",
                    record.epoch, c.run_id, record.run_id
                ),
                RetryHint::Never,
            )),
            None => Err(self.err(
                format!(
                    "the table records epoch {version} for `{}`, past this commit's epoch {}, but holds no sluice commit of it; another writer uses this app id",
                    self.app_id, record.epoch
                ),
                RetryHint::Never,
            )),
        }
    }
}

/// The `txn` version of an epoch (Delta's versions are signed).
fn epoch_version(epoch: u64) -> i64 {
    i64::try_from(epoch).unwrap_or(i64::MAX)
}

/// sluice's schema metadata that becomes table properties.
fn properties_of(schema: &Schema) -> Vec<(String, String)> {
    PROPERTY_KEYS
        .iter()
        .filter_map(|k| Some((k.to_string(), schema.metadata().get(*k)?.clone())))
        .collect()
}

/// The `add` action of a committed file.
fn add_action(f: &CommittedFile, now_ms: i64) -> Action {
    Action::Add(Add {
        path: f.path.clone(),
        partition_values: f
            .partition
            .iter()
            .map(|(k, v)| {
                let value = (v != super::file::NULL_PARTITION).then(|| v.clone());
                (k.clone(), value)
            })
            .collect(),
        size: i64::try_from(f.bytes).unwrap_or(i64::MAX),
        modification_time: now_ms,
        data_change: true,
        stats: Some(serde_json::json!({ "numRecords": f.rows }).to_string()),
        ..Default::default()
    })
}

#[async_trait]
impl Sink for DeltaSink {
    fn name(&self) -> &str {
        self.files.name()
    }

    fn kind(&self) -> &str {
        "delta"
    }

    fn url(&self) -> String {
        self.files.location().url()
    }

    async fn check_reachable(&self) -> Result<()> {
        self.files.check_reachable().await
    }

    fn state_store(&self) -> Option<crate::state::StateStore> {
        self.files.state_store()
    }

    async fn recover(&self) -> Result<Recovered> {
        let mut table = self.table.lock().await;
        let named = self.named_files(&mut table).await?;
        let removed = self.files.remove_unlisted(&named).await?;
        let commits = self.own_commits(&table).await?;
        let version = table
            .app_version(&self.app_id)
            .await
            .map_err(|e| self.delta_err("cannot read the table's transactions", e))?;
        let newest = commits.iter().map(|c| epoch_version(c.epoch)).max();
        if version.is_some() && version != newest {
            return Err(self.err(
                format!(
                    "the table's `txn` of `{}` is at {}, but its newest sluice commit in the last {} versions is {}; the log was cut or edited",
                    self.app_id,
                    version.unwrap_or_default(),
                    table::HISTORY_DEPTH,
                    newest.map_or("none".to_string(), |v| v.to_string()),
                ),
                RetryHint::Never,
            ));
        }
        Ok(Recovered {
            log: SinkLog::durable(commits.into_iter().map(Commit::into_range).collect()),
            removed_files: removed,
        })
    }

    async fn write(&self, output: EpochOutput) -> Result<u64> {
        let output = match types::delta_schema(output.schema()) {
            Some(target) => output.conformed(target, types::conform),
            None => output,
        };
        self.files.write(output).await
    }

    async fn seal(&self, group: u64) -> Result<Sealed> {
        self.files.seal(group).await
    }

    async fn commit(&self, sealed: Sealed, record: &CommitRecord) -> Result<()> {
        let mut table = self.table.lock().await;
        table
            .refresh()
            .await
            .map_err(|e| self.delta_err("cannot read the table's log", e))?;
        if self.committed_already(&table, record).await? {
            self.discard(&sealed).await;
            return Ok(());
        }
        let schema =
            types::delta_schema(&record.schema).unwrap_or_else(|| Arc::clone(&record.schema));
        let commit = Commit {
            schema: schema.as_ref().clone(),
            ..Commit::of(
                record,
                self.files.name(),
                sealed.clone(),
                self.files.partition_by().to_vec(),
            )
        };
        let info = serde_json::to_value(&commit)
            .map_err(|e| self.err(format!("cannot record the commit: {e}"), RetryHint::Never))?;
        let now_ms = chrono::Utc::now().timestamp_millis();
        let adds: Vec<Action> = sealed.files.iter().map(|f| add_action(f, now_ms)).collect();
        let properties = CommitProperties::default()
            .with_application_transaction(Transaction::new_with_last_update(
                &self.app_id,
                epoch_version(record.epoch),
                Some(now_ms),
            ))
            .with_metadata([(COMMIT_INFO_KEY.to_string(), info)]);
        let result = if table.exists() {
            let mut actions = self.evolve(&table, &schema)?;
            actions.extend(adds);
            let snapshot = table
                .table
                .snapshot()
                .map_err(|e| self.delta_err("cannot read the table", e))?;
            CommitBuilder::from(properties)
                .with_actions(actions)
                .build(
                    Some(snapshot as &dyn TableReference),
                    Arc::clone(&table.log_store),
                    DeltaOperation::StreamingUpdate {
                        output_mode: OutputMode::Append,
                        query_id: self.app_id.clone(),
                        epoch_id: epoch_version(record.epoch),
                    },
                )
                .await
                .map(|_| ())
        } else {
            let kernel = kernel_schema(&schema).map_err(|m| self.err(m, RetryHint::Never))?;
            let configuration: HashMap<String, Option<String>> = properties_of(&schema)
                .into_iter()
                .map(|(k, v)| (k, Some(v)))
                .collect();
            CreateBuilder::new()
                .with_log_store(Arc::clone(&table.log_store))
                .with_columns(kernel.fields().cloned())
                .with_partition_columns(self.files.partition_by().to_vec())
                .with_configuration(configuration)
                .with_raise_if_key_not_exists(false)
                .with_save_mode(SaveMode::ErrorIfExists)
                .with_actions(adds)
                .with_commit_properties(properties)
                .await
                .map(|_| ())
        };
        match result {
            Ok(()) => Ok(()),
            Err(e) => {
                // the commit may have landed and its answer been lost, or a
                // concurrent writer may have won: the log says which
                let landed = match table.refresh().await {
                    Ok(_) => self.committed_already(&table, record).await?,
                    Err(_) => false,
                };
                if landed {
                    Ok(())
                } else {
                    Err(self.delta_err(
                        &format!("cannot commit epoch {} to the table", record.epoch),
                        e,
                    ))
                }
            }
        }
    }

    async fn abort(&self) {
        self.files.abort().await;
        let mut table = self.table.lock().await;
        if let Ok(named) = self.named_files(&mut table).await {
            let _ = self.files.remove_unlisted(&named).await;
        }
    }

    async fn reset(&self) -> Result<u64> {
        let mut table = self.table.lock().await;
        let named = self.named_files(&mut table).await?;
        let mut deleted = 0u64;
        let store = self.files.store();
        let location = self.files.location();
        // data first, then the log, newest version first: an interrupted
        // reset leaves a log whose versions are a prefix
        for path in &named {
            match store.delete(&location.child(path)).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => deleted += 1,
                Err(e) => {
                    return Err(SluiceError::sink_failed(
                        self.files.name(),
                        location.url(),
                        "cannot delete a file of the table",
                        e,
                    ));
                }
            }
        }
        deleted += self.files.remove_unlisted(&Default::default()).await?.len() as u64;
        let log_dir = location.child("_delta_log");
        let mut logs: Vec<_> =
            futures::TryStreamExt::try_collect::<Vec<_>>(store.list(Some(&log_dir)))
                .await
                .map_err(|e| {
                    SluiceError::sink_failed(
                        self.files.name(),
                        location.url(),
                        "cannot list the log",
                        e,
                    )
                })?;
        logs.sort_by(|a, b| b.location.cmp(&a.location));
        for meta in logs {
            match store.delete(&meta.location).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => deleted += 1,
                Err(e) => {
                    return Err(SluiceError::sink_failed(
                        self.files.name(),
                        location.url(),
                        "cannot delete the table's log",
                        e,
                    ));
                }
            }
        }
        *table =
            Table::new(location, Arc::clone(store)).map_err(|m| self.err(m, RetryHint::Never))?;
        Ok(deleted)
    }
}
