//! One Delta table, as the delta sink and the `sluice` commands see it: its
//! log store over sluice's own object store, its state, and sluice's
//! commits in its history.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use datafusion::arrow::datatypes::{Schema, SchemaRef};
use deltalake_core::kernel::engine::arrow_conversion::{TryIntoArrow, TryIntoKernel};
use deltalake_core::kernel::{CommitInfo, StructType};
use deltalake_core::logstore::{LogStoreRef, StorageConfig, default_logstore};
use deltalake_core::{DeltaTable, DeltaTableError};
use futures::TryStreamExt;
use object_store::ObjectStore;
use object_store::prefix::PrefixStore;
use url::Url;

use crate::commit_log::Commit;
use crate::storage::Location;

/// The key of sluice's commit record in a Delta commit's `commitInfo`.
pub(crate) const COMMIT_INFO_KEY: &str = "sluice";

/// How many of the newest Delta commits recovery reads for sluice's
/// records (each is one GET). The newest sluice commit is what a restart
/// needs; older ones matter only when another sink lags this far behind.
pub(crate) const HISTORY_DEPTH: usize = 1000;

/// A Delta table at a sluice location.
pub(crate) struct Table {
    pub(crate) location: Location,
    pub(crate) log_store: LogStoreRef,
    /// delta-rs's view of it, read by [`Table::refresh`] (it holds no state
    /// before the table exists).
    pub(crate) table: DeltaTable,
    /// Whether a state was read: later refreshes read only newer versions.
    loaded: bool,
}

impl std::fmt::Debug for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DeltaTable({})", self.location.url())
    }
}

impl Table {
    /// The table at `location`, read and written through `store` (the one
    /// sluice's other sinks use for that location: same settings, same
    /// in-memory store). Nothing is read yet.
    pub(crate) fn new(location: &Location, store: Arc<dyn ObjectStore>) -> Result<Self, String> {
        let url = Url::parse(&format!("{}/", location.url().trim_end_matches('/')))
            .map_err(|e| format!("`{}` is not a table URL: {e}", location.url()))?;
        let prefixed: Arc<dyn ObjectStore> = if location.prefix.as_ref().is_empty() {
            Arc::clone(&store)
        } else {
            Arc::new(PrefixStore::new(
                Arc::clone(&store),
                location.prefix.clone(),
            ))
        };
        // Delta's default log store commits a version with a create-if-absent
        // put, which local disk, memory and S3 all do atomically
        let log_store = default_logstore(prefixed, store, &url, &StorageConfig::default());
        Ok(Self {
            location: location.clone(),
            table: DeltaTable::new(Arc::clone(&log_store)),
            log_store,
            loaded: false,
        })
    }

    /// Reads the newest version of the log; `false` when there is no table yet.
    pub(crate) async fn refresh(&mut self) -> Result<bool, DeltaTableError> {
        let result = if self.loaded {
            self.table.update_state().await
        } else {
            // delta-rs refuses a folder that does not exist yet with a
            // location error: ask the log first
            if !self.log_store.is_delta_table_location().await? {
                return Ok(false);
            }
            self.table.load().await
        };
        match result {
            Ok(()) => {
                self.loaded = true;
                Ok(true)
            }
            Err(DeltaTableError::NotATable(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Whether the table exists (as of the last [`Table::refresh`]).
    pub(crate) fn exists(&self) -> bool {
        self.loaded && self.table.version().is_some()
    }

    /// The version an application last recorded (a `txn` action), if any.
    pub(crate) async fn app_version(&self, app_id: &str) -> Result<Option<i64>, DeltaTableError> {
        if !self.exists() {
            return Ok(None);
        }
        self.table
            .snapshot()?
            .transaction_version(self.log_store.as_ref(), app_id)
            .await
    }

    /// The newest `depth` commits (every one the log keeps when `None`),
    /// newest first.
    pub(crate) async fn history(
        &self,
        depth: Option<usize>,
    ) -> Result<Vec<CommitInfo>, DeltaTableError> {
        if !self.exists() {
            return Ok(Vec::new());
        }
        self.table.history(depth).try_collect().await
    }

    /// Every file the log still names: the live ones and those removed but
    /// not yet vacuumed (a reader of an older version reads them).
    pub(crate) async fn named_files(&self) -> Result<BTreeSet<String>, DeltaTableError> {
        if !self.exists() {
            return Ok(BTreeSet::new());
        }
        let state = self.table.snapshot()?;
        let mut files: BTreeSet<String> = state
            .log_data()
            .iter()
            .map(|f| f.path().into_owned())
            .collect();
        let tombstones: Vec<String> = state
            .all_tombstones(self.log_store.as_ref())
            .map_ok(|t| t.path().into_owned())
            .try_collect()
            .await?;
        files.extend(tombstones);
        Ok(files)
    }

    /// The table's schema as Arrow, and its partition columns.
    pub(crate) fn schema(&self) -> Result<(SchemaRef, Vec<String>), DeltaTableError> {
        let state = self.table.snapshot()?;
        let arrow: Schema = state.schema().as_ref().try_into_arrow()?;
        Ok((
            Arc::new(arrow),
            state.metadata().partition_columns().to_vec(),
        ))
    }

    /// The table's configuration (its properties).
    pub(crate) fn properties(&self) -> Result<HashMap<String, String>, DeltaTableError> {
        Ok(self.table.snapshot()?.metadata().configuration().clone())
    }
}

/// The Delta schema of an Arrow schema (in the types of
/// [`super::types::delta_schema`]); the error names what Delta cannot hold.
pub(crate) fn kernel_schema(schema: &Schema) -> Result<StructType, String> {
    schema
        .try_into_kernel()
        .map_err(|e| format!("Delta cannot hold this schema: {e}"))
}

/// The Arrow schema of a Delta schema.
pub(crate) fn arrow_schema(schema: &StructType) -> Result<Schema, String> {
    schema
        .try_into_arrow()
        .map_err(|e| format!("cannot read the table's schema as Arrow: {e}"))
}

/// sluice's record of a Delta commit, when sluice made it.
pub(crate) fn sluice_commit(info: &CommitInfo) -> Option<Result<Commit, String>> {
    let value = info.info.get(COMMIT_INFO_KEY)?;
    Some(
        serde_json::from_value::<Commit>(value.clone())
            .map_err(|e| format!("a Delta commit's `{COMMIT_INFO_KEY}` record is unreadable: {e}")),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn info_with(value: serde_json::Value) -> CommitInfo {
        let mut info = CommitInfo::default();
        info.info.insert(COMMIT_INFO_KEY.to_string(), value);
        info
    }

    /// A record sluice wrote, as JSON.
    fn record() -> serde_json::Value {
        serde_json::json!({
            "format": 1, "epoch": 4, "first_epoch": 3, "pipeline": "p@1", "sink": "s",
            "run_id": "0123abcd", "committed_at": "2026-12-03T00:00:00.000Z",
            "files": [{"path": "part-00000004-0123abcd-000-0000.parquet", "rows": 2, "bytes": 10}],
            "rows": 2, "bytes": 10,
            "schema": {"fields": [], "metadata": {}},
            "partition_by": [], "lineage": [], "provenance": {"pipeline": "p@1", "sources": []},
            "source_offsets": {}
        })
    }

    #[test]
    fn a_record_sluice_wrote_reads_back_and_other_commits_are_not_sluices() {
        let c = sluice_commit(&info_with(record())).unwrap().unwrap();
        assert_eq!((c.first_epoch, c.epoch, c.rows), (3, 4, 2));
        assert!(sluice_commit(&CommitInfo::default()).is_none());
    }

    proptest! {
        /// A peer's log may hold anything under the key: a record with any
        /// field replaced by any JSON is read or refused with a message,
        /// never a panic; a record read back keeps the epoch it says.
        #[test]
        fn any_record_in_a_commit_is_read_or_refused(
            field in 0usize..16,
            replacement in prop_oneof![
                Just(serde_json::Value::Null),
                any::<i64>().prop_map(serde_json::Value::from),
                any::<u64>().prop_map(serde_json::Value::from),
                any::<f64>().prop_map(serde_json::Value::from),
                ".{0,12}".prop_map(serde_json::Value::from),
                Just(serde_json::json!([1, "x", null])),
                Just(serde_json::json!({"a": {"b": []}})),
            ],
            drop in any::<bool>(),
        ) {
            let mut value = record();
            let keys: Vec<String> = value.as_object().unwrap().keys().cloned().collect();
            let key = &keys[field % keys.len()];
            if drop {
                value.as_object_mut().unwrap().remove(key);
            } else {
                value[key.as_str()] = replacement;
            }
            match sluice_commit(&info_with(value.clone())) {
                Some(Ok(c)) => prop_assert_eq!(Some(c.epoch), value["epoch"].as_u64()),
                Some(Err(m)) => prop_assert!(m.contains(COMMIT_INFO_KEY), "{}", m),
                None => prop_assert!(false, "the key is there"),
            }
        }
    }
}
