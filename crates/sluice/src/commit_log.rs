//! The commit log: `_sluice/commits/<epoch>.json` beside a sink's data.
//!
//! A sink writes its data files under unique names, then creates one commit
//! file per commit (the epochs `first_epoch..=epoch`) with `PutMode::Create`
//! (atomic on local disk, memory and S3), named by its last epoch. The commit
//! lists every file with its rows and bytes, the output schema, the lineage,
//! the provenance and the source offsets over its epochs. Only
//! committed files are part of the output; anything else under the sink that
//! carries sluice's data-file naming is debris from a run that died before its
//! commit, and [`CommitLog::remove_uncommitted`] deletes it.
//!
//! Several workers may share one log ([`CommitLog::share`], for a `kafka`
//! source with `assignment = "group"`). A commit then takes the next free
//! number of the log rather than its epoch's, and only after
//! [`crate::epoch::ledger::conflict`] finds that every partition it holds
//! starts where the log has it. Debris is then only what this run left,
//! or what is older than [`SHARED_DEBRIS_AGE`]: another worker's files may
//! be about to be committed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use datafusion::arrow::datatypes::Schema;
use futures::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};
use sluice_contract::{LineageEntry, Provenance};

use crate::storage::{Location, relative_to};

/// Folder (under a sink's root) of the commit files.
pub(crate) const COMMITS_DIR: &str = "_sluice/commits";
/// Version of the commit file format.
pub(crate) const COMMIT_FORMAT: u32 = 1;
/// In a shared log, how old a file no commit lists must be before another
/// run deletes it. A worker never commits a group it began writing more
/// than half of this ago (a paused worker's files may be gone).
pub(crate) const SHARED_DEBRIS_AGE: Duration = Duration::from_secs(3600);

impl Commit {
    /// The commit of `sealed` by sink `sink`, as `record` describes it,
    /// committed now.
    pub(crate) fn of(
        record: &crate::sinks::CommitRecord,
        sink: &str,
        sealed: crate::sinks::Sealed,
        partition_by: Vec<String>,
    ) -> Self {
        Commit {
            format: COMMIT_FORMAT,
            epoch: record.epoch,
            first_epoch: record.first_epoch,
            pipeline: record.pipeline.clone(),
            sink: sink.to_string(),
            run_id: record.run_id.clone(),
            committed_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            rows: sealed.rows,
            bytes: sealed.bytes,
            files: sealed.files,
            schema: record.schema.as_ref().clone(),
            partition_by,
            lineage: record.lineage.clone(),
            provenance: record.provenance.clone(),
            source_offsets: record.source_offsets.clone(),
            rollout: record.rollout.clone(),
            state: record.state.clone(),
        }
    }

    /// What [`crate::sinks::Sink::recover`] reports of this commit.
    pub(crate) fn into_range(self) -> crate::epoch::recovery::CommittedRange {
        crate::epoch::recovery::CommittedRange {
            first: self.first_epoch.min(self.epoch),
            last: self.epoch,
            offsets: self.source_offsets,
            rollout: self
                .rollout
                .into_iter()
                .map(|(s, r)| (s, r.choice))
                .collect(),
            state: self.state,
        }
    }
}

/// One data file of a commit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommittedFile {
    /// Path relative to the sink's root, e.g. `ship_year=1995/part-...parquet`.
    pub path: String,
    /// Rows in the file.
    pub rows: u64,
    /// Size of the file in bytes.
    pub bytes: u64,
    /// Hive partition values of the file, when the sink is partitioned.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub partition: BTreeMap<String, String>,
}

/// Offsets of one source for one epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceOffsets {
    /// Where the epoch started (the previous commit's `end`).
    pub start: serde_json::Value,
    /// Where the epoch ended; a restart resumes here.
    pub end: serde_json::Value,
}

/// The content of one commit file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Commit {
    /// [`COMMIT_FORMAT`].
    pub format: u32,
    /// The last epoch this commit covers.
    pub epoch: u64,
    /// The first epoch this commit covers (several epochs share a commit when
    /// files are rolled by size or age rather than per epoch).
    #[serde(default)]
    pub first_epoch: u64,
    /// `name@version` of the pipeline.
    pub pipeline: String,
    /// Sink name in the pipeline.
    pub sink: String,
    /// Id of the run that wrote it (also in the data file names).
    pub run_id: String,
    /// When the commit was written (RFC 3339, UTC).
    pub committed_at: String,
    /// Data files of this epoch.
    pub files: Vec<CommittedFile>,
    /// Total rows in `files`.
    pub rows: u64,
    /// Total bytes in `files`.
    pub bytes: u64,
    /// The Arrow schema of the files, with its metadata.
    pub schema: Schema,
    /// Hive partition columns, outermost first.
    #[serde(default)]
    pub partition_by: Vec<String>,
    /// Lineage of the data, oldest step first.
    pub lineage: Vec<LineageEntry>,
    /// Where the data came from.
    pub provenance: Provenance,
    /// Offsets of every source of the pipeline at this epoch.
    pub source_offsets: BTreeMap<String, SourceOffsets>,
    /// How every rolled-out stage ran over these epochs (mode, variant,
    /// percent, rows per variant, shadow diff counts); a replay runs the same way.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub rollout: BTreeMap<String, crate::rollout::RolloutRecord>,
    /// The state of the stateful operators feeding the sink and the
    /// event-time clocks of its sources, after the last epoch.
    #[serde(default, skip_serializing_if = "crate::state::StateCommit::is_empty")]
    pub state: crate::state::StateCommit,
}

/// Errors of the commit log.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CommitLogError {
    /// The epoch already has a commit: another run committed it first.
    #[error(
        "epoch {epoch} is already committed at {path}; another run of this pipeline may be writing to the same sink"
    )]
    AlreadyCommitted {
        /// The epoch.
        epoch: u64,
        /// The commit file.
        path: String,
    },
    /// In a shared log, another worker committed a partition this commit
    /// holds first (a rebalance moved it, or this worker was paused).
    #[error(
        "another worker committed {source_name} partition {partition} first: this commit starts it at {ours}, commit {slot} of the log has it at {theirs}; rewinding to the log"
    )]
    Conflict {
        /// The source.
        source_name: String,
        /// The partition, as a path in the source's offsets.
        partition: String,
        /// Where this commit starts it.
        ours: String,
        /// Where the log has it.
        theirs: String,
        /// The newest commit of the log.
        slot: u64,
    },
    /// In a shared log, a commit of writes begun too long ago (see
    /// [`SHARED_DEBRIS_AGE`]).
    #[error(
        "the files of this commit were begun {age_s}s ago, more than half of the {limit_s}s after which other workers may delete them; rewinding to the log"
    )]
    TooOld {
        /// Seconds since the first write of the commit.
        age_s: u64,
        /// [`SHARED_DEBRIS_AGE`] in seconds.
        limit_s: u64,
    },
    /// A commit file exists but cannot be parsed.
    #[error("commit file {path} is corrupt: {message}")]
    Corrupt {
        /// The commit file.
        path: String,
        /// What is wrong with it.
        message: String,
    },
    /// A local folder could not be read or cleaned.
    #[error("{path}: {source}")]
    Local {
        /// The file or folder involved.
        path: String,
        /// The filesystem's error.
        #[source]
        source: std::io::Error,
    },
    /// The store failed.
    #[error("{path}: {source}")]
    Store {
        /// The object involved.
        path: String,
        /// The store's error.
        #[source]
        source: object_store::Error,
    },
}

impl CommitLogError {
    /// Whether the same operation may succeed when tried again: a store
    /// that failed for a while may; a corrupt or conflicting log will not.
    pub(crate) fn retry_hint(&self) -> crate::error::RetryHint {
        use crate::error::RetryHint;
        match self {
            CommitLogError::AlreadyCommitted { .. } | CommitLogError::Corrupt { .. } => {
                RetryHint::Never
            }
            CommitLogError::Conflict { .. } | CommitLogError::TooOld { .. } => RetryHint::Rewind,
            CommitLogError::Local { source, .. } => crate::error::io_retry_hint(source),
            CommitLogError::Store { source, .. } => crate::error::store_retry_hint(source),
        }
    }
}

/// The commit log of one sink location.
#[derive(Debug, Clone)]
pub(crate) struct CommitLog {
    store: Arc<dyn ObjectStore>,
    root: Location,
    /// Set when workers share the log ([`CommitLog::share`]).
    shared: Arc<OnceLock<Shared>>,
}

/// How a log is shared.
#[derive(Debug)]
struct Shared {
    /// The sources whose offsets are partitions owned by one worker at a time.
    sources: BTreeSet<String>,
    /// This run's id (in its data file names).
    run_id: String,
    /// The log's positions, read up to a commit.
    ledger: Mutex<Ledger>,
}

/// The positions of the shared sources after commit `through`.
#[derive(Debug, Default, Clone)]
struct Ledger {
    through: Option<u64>,
    positions: BTreeMap<String, serde_json::Value>,
}

impl CommitLog {
    /// The log of the sink rooted at `root`.
    pub(crate) fn new(store: Arc<dyn ObjectStore>, root: Location) -> Self {
        Self {
            store,
            root,
            shared: Arc::new(OnceLock::new()),
        }
    }

    /// Shares the log with other workers of the pipeline, each reading
    /// some partitions of `sources` (see the module docs). Run `run_id`
    /// is this worker.
    pub(crate) fn share(&self, sources: BTreeSet<String>, run_id: &str) {
        let _ = self.shared.set(Shared {
            sources,
            run_id: run_id.to_string(),
            ledger: Mutex::new(Ledger::default()),
        });
    }

    /// Whether other workers share the log.
    pub(crate) fn is_shared(&self) -> bool {
        self.shared.get().is_some()
    }

    fn commit_path(&self, epoch: u64) -> ObjectPath {
        self.root.child(&format!("{COMMITS_DIR}/{epoch:020}.json"))
    }

    fn store_err(&self, path: &ObjectPath) -> impl Fn(object_store::Error) -> CommitLogError + '_ {
        let p = self.root.object_url(path);
        move |source| CommitLogError::Store {
            path: p.clone(),
            source,
        }
    }

    /// Committed epochs, in increasing order.
    pub(crate) async fn epochs(&self) -> Result<Vec<u64>, CommitLogError> {
        let dir = self.root.child(COMMITS_DIR);
        let metas: Vec<_> = self
            .store
            .list(Some(&dir))
            .try_collect()
            .await
            .map_err(self.store_err(&dir))?;
        let mut epochs: Vec<u64> = metas
            .iter()
            .filter_map(|m| m.location.filename()?.strip_suffix(".json")?.parse().ok())
            .collect();
        epochs.sort_unstable();
        Ok(epochs)
    }

    /// Reads the commit of `epoch`.
    pub(crate) async fn read(&self, epoch: u64) -> Result<Commit, CommitLogError> {
        let path = self.commit_path(epoch);
        let bytes = self
            .store
            .get(&path)
            .await
            .map_err(self.store_err(&path))?
            .bytes()
            .await
            .map_err(self.store_err(&path))?;
        serde_json::from_slice(&bytes).map_err(|e| CommitLogError::Corrupt {
            path: self.root.object_url(&path),
            message: e.to_string(),
        })
    }

    /// Reads every commit, oldest first.
    pub(crate) async fn read_all(&self) -> Result<Vec<Commit>, CommitLogError> {
        let mut out = Vec::new();
        for e in self.epochs().await? {
            out.push(self.read(e).await?);
        }
        Ok(out)
    }

    /// Creates the commit file of `commit.epoch`; fails if it exists. In a
    /// shared log, creates the next free one, once the commit fits the log
    /// ([`crate::epoch::ledger::conflict`]). Returns the number it took.
    pub(crate) async fn write(&self, commit: &Commit) -> Result<u64, CommitLogError> {
        let Some(shared) = self.shared.get() else {
            return self.create(commit).await.map(|()| commit.epoch);
        };
        loop {
            let ledger = self.read_ledger(shared).await?;
            for (name, offsets) in &commit.source_offsets {
                let Some(log) = ledger.positions.get(name) else {
                    continue;
                };
                if !shared.sources.contains(name) {
                    continue;
                }
                if let Some((partition, ours, theirs)) =
                    crate::epoch::ledger::conflict(log, &offsets.start)
                {
                    return Err(CommitLogError::Conflict {
                        source_name: name.clone(),
                        partition,
                        ours: ours.to_string(),
                        theirs: theirs.to_string(),
                        slot: ledger.through.unwrap_or(0),
                    });
                }
            }
            let slot = ledger.through.map_or(0, |t| t + 1);
            let numbered = Commit {
                epoch: slot,
                first_epoch: slot,
                ..commit.clone()
            };
            match self.create(&numbered).await {
                Ok(()) => return Ok(slot),
                // another worker took the number: read what it committed
                Err(CommitLogError::AlreadyCommitted { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// The shared sources' positions after the newest commit, reading only
    /// the commits made since the last call.
    async fn read_ledger(&self, shared: &Shared) -> Result<Ledger, CommitLogError> {
        let mut ledger = shared
            .ledger
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for e in self.epochs().await? {
            if ledger.through.is_some_and(|t| e <= t) {
                continue;
            }
            let c = self.read(e).await?;
            for name in &shared.sources {
                if let Some(o) = c.source_offsets.get(name) {
                    let at = ledger
                        .positions
                        .entry(name.clone())
                        .or_insert_with(|| serde_json::json!({}));
                    *at = crate::epoch::ledger::positions([&*at, &o.end]);
                }
            }
            ledger.through = Some(e);
        }
        *shared.ledger.lock().unwrap_or_else(|p| p.into_inner()) = ledger.clone();
        Ok(ledger)
    }

    async fn create(&self, commit: &Commit) -> Result<(), CommitLogError> {
        let path = self.commit_path(commit.epoch);
        let body = serde_json::to_vec_pretty(commit).map_err(|e| CommitLogError::Corrupt {
            path: self.root.object_url(&path),
            message: e.to_string(),
        })?;
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        match self
            .store
            .put_opts(&path, PutPayload::from(body), opts)
            .await
        {
            Ok(_) => Ok(()),
            Err(object_store::Error::AlreadyExists { .. }) => {
                Err(CommitLogError::AlreadyCommitted {
                    epoch: commit.epoch,
                    path: self.root.object_url(&path),
                })
            }
            Err(e) => Err(self.store_err(&path)(e)),
        }
    }

    /// Paths (relative to the root) of every committed data file.
    pub(crate) async fn committed_files(&self) -> Result<BTreeSet<String>, CommitLogError> {
        Ok(self
            .read_all()
            .await?
            .into_iter()
            .flat_map(|c| c.files.into_iter().map(|f| f.path))
            .collect())
    }

    /// Deletes data files that no commit lists and that sluice wrote (their
    /// names match [`is_data_file_name`]); other files are never touched.
    /// Returns the deleted paths.
    pub(crate) async fn remove_uncommitted(&self) -> Result<Vec<String>, CommitLogError> {
        self.remove_unlisted(&self.committed_files().await?).await
    }

    /// Deletes the files sluice wrote under the root that `committed` does
    /// not list (paths relative to the root), as [`Self::remove_uncommitted`]
    /// does for the files of this log; a sink whose files another log lists
    /// (Delta's) passes that log's files. Returns the deleted paths.
    pub(crate) async fn remove_unlisted(
        &self,
        committed: &BTreeSet<String>,
    ) -> Result<Vec<String>, CommitLogError> {
        let prefix = (!self.root.prefix.as_ref().is_empty()).then_some(&self.root.prefix);
        let all: Vec<_> = self
            .store
            .list(prefix)
            .try_collect()
            .await
            .map_err(self.store_err(&self.root.prefix))?;
        let mut removed = self.remove_staged_uploads().await?;
        let listed: Vec<(String, ObjectPath)> = all
            .into_iter()
            .filter(|m| {
                self.may_delete(m.location.filename().unwrap_or(""), m.last_modified.into())
            })
            .map(|m| {
                (
                    relative_to(&m.location, &self.root.prefix).to_string(),
                    m.location,
                )
            })
            .collect();
        let debris: BTreeSet<&str> =
            crate::epoch::recovery::debris(committed, listed.iter().map(|(r, _)| r.as_str()))
                .into_iter()
                .collect();
        for (rel, location) in &listed {
            if !debris.contains(rel.as_str()) {
                continue;
            }
            match self.store.delete(location).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => removed.push(rel.clone()),
                Err(e) => return Err(self.store_err(location)(e)),
            }
        }
        Ok(removed)
    }
}

impl CommitLog {
    /// Whether a file no commit lists may be deleted: always, unless the
    /// log is shared; then only this run's or, another's, once older than
    /// [`SHARED_DEBRIS_AGE`].
    pub(crate) fn may_delete(&self, name: &str, modified: SystemTime) -> bool {
        let Some(shared) = self.shared.get() else {
            return true;
        };
        name.contains(&format!("-{}-", shared.run_id))
            || modified.elapsed().is_ok_and(|age| age >= SHARED_DEBRIS_AGE)
    }

    /// On local disk, an upload is written to `<file>#<n>` and renamed when
    /// complete; a process killed mid-upload leaves that staging file, which
    /// object_store's listing never shows. Deletes the staging files of
    /// sluice's data files and commit files. Returns their paths, relative to
    /// the root.
    async fn remove_staged_uploads(&self) -> Result<Vec<String>, CommitLogError> {
        let Some(root) = self.root.local_path() else {
            return Ok(Vec::new());
        };
        let url = self.root.url();
        let log = self.clone();
        tokio::task::spawn_blocking(move || {
            remove_staged_files(&root, |name, modified| log.may_delete(name, modified))
        })
        .await
        .map_err(|e| CommitLogError::Corrupt {
            path: url.clone(),
            message: format!("the staging-file sweep stopped: {e}"),
        })?
        .map_err(|(path, e)| CommitLogError::Local { path, source: e })
    }

    /// Deletes every committed data file and then the commit files, newest
    /// first, so an interrupted reset still leaves a consistent log.
    pub(crate) async fn reset(&self) -> Result<u64, CommitLogError> {
        let mut deleted = 0;
        let commits = self.read_all().await?;
        for c in commits.iter().rev() {
            for f in &c.files {
                let p = self.root.child(&f.path);
                match self.store.delete(&p).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => deleted += 1,
                    Err(e) => return Err(self.store_err(&p)(e)),
                }
            }
            let p = self.commit_path(c.epoch);
            self.store.delete(&p).await.map_err(self.store_err(&p))?;
            deleted += 1;
        }
        deleted += self.remove_uncommitted().await?.len() as u64;
        Ok(deleted)
    }
}

/// The name of a data file sluice writes: `part-<epoch>-<run>-<partition>-<seq>.<ext>`.
pub(crate) fn data_file_name(
    epoch: u64,
    run_id: &str,
    partition: usize,
    seq: usize,
    extension: &str,
) -> String {
    format!("part-{epoch:08}-{run_id}-{partition:03}-{seq:04}.{extension}")
}

/// Whether `name` is a data file name made by [`data_file_name`].
pub(crate) fn is_data_file_name(name: &str) -> bool {
    let Some(rest) = name.strip_prefix("part-") else {
        return false;
    };
    let stem = rest.split('.').next().unwrap_or("");
    let parts: Vec<&str> = stem.split('-').collect();
    parts.len() == 4
        && parts[0].len() >= 8
        && parts[0].bytes().all(|b| b.is_ascii_digit())
        && parts[1].len() == 8
        && parts[1].bytes().all(|b| b.is_ascii_hexdigit())
        && parts[2].bytes().all(|b| b.is_ascii_digit())
        && parts[3].bytes().all(|b| b.is_ascii_digit())
}

/// Whether `name` is an upload of object_store's local store still in
/// progress: `<name>#<digits>`, where `<name>` is a sluice data file or a
/// commit file.
pub(crate) fn is_staged_upload_name(name: &str) -> bool {
    let Some((base, n)) = name.rsplit_once('#') else {
        return false;
    };
    !n.is_empty()
        && n.bytes().all(|b| b.is_ascii_digit())
        && (is_data_file_name(base) || is_commit_file_name(base))
}

fn is_commit_file_name(name: &str) -> bool {
    name.strip_suffix(".json")
        .is_some_and(|e| !e.is_empty() && e.bytes().all(|b| b.is_ascii_digit()))
}

/// Walks a local sink folder and deletes staged uploads (see
/// [`is_staged_upload_name`]); returns their paths relative to `root`.
fn remove_staged_files(
    root: &std::path::Path,
    may_delete: impl Fn(&str, SystemTime) -> bool,
) -> Result<Vec<String>, (String, std::io::Error)> {
    let mut removed = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err((dir.display().to_string(), e)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| (dir.display().to_string(), e))?;
            let path = entry.path();
            let file_type = entry
                .file_type()
                .map_err(|e| (path.display().to_string(), e))?;
            if file_type.is_dir() {
                stack.push(path);
            } else if is_staged_upload_name(&entry.file_name().to_string_lossy())
                && may_delete(
                    &entry.file_name().to_string_lossy(),
                    entry
                        .metadata()
                        .and_then(|m| m.modified())
                        .unwrap_or(SystemTime::UNIX_EPOCH),
                )
            {
                match std::fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err((path.display().to_string(), e)),
                }
                let rel = path.strip_prefix(root).unwrap_or(&path);
                removed.push(rel.to_string_lossy().into_owned());
            }
        }
    }
    removed.sort();
    Ok(removed)
}

/// A new run id: 8 hex digits.
pub(crate) fn new_run_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..8].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;
    use std::path::Path;

    fn commit(epoch: u64, files: &[&str]) -> Commit {
        Commit {
            format: COMMIT_FORMAT,
            epoch,
            first_epoch: epoch,
            pipeline: "p@1".into(),
            sink: "out".into(),
            run_id: "0123abcd".into(),
            committed_at: "2026-01-01T00:00:00Z".into(),
            files: files
                .iter()
                .map(|f| CommittedFile {
                    path: f.to_string(),
                    rows: 1,
                    bytes: 1,
                    partition: BTreeMap::new(),
                })
                .collect(),
            rows: files.len() as u64,
            bytes: files.len() as u64,
            schema: Schema::empty(),
            partition_by: vec![],
            lineage: vec![],
            provenance: Provenance::default(),
            source_offsets: BTreeMap::new(),
            rollout: BTreeMap::new(),
            state: Default::default(),
        }
    }

    #[test]
    fn data_file_names_are_recognised() {
        let n = data_file_name(3, "0123abcd", 1, 2, "parquet");
        assert_eq!(n, "part-00000003-0123abcd-001-0002.parquet");
        assert!(is_data_file_name(&n));
        assert!(!is_data_file_name("part-0.parquet"));
        assert!(!is_data_file_name("notes.txt"));
    }

    #[test]
    fn staged_uploads_are_recognised() {
        let data = data_file_name(3, "0123abcd", 1, 2, "parquet");
        assert!(is_staged_upload_name(&format!("{data}#1")));
        assert!(is_staged_upload_name(&format!("{data}#12")));
        assert!(is_staged_upload_name("00000000000000000004.json#2"));
        assert!(!is_staged_upload_name(&data));
        assert!(!is_staged_upload_name(&format!("{data}#")));
        assert!(!is_staged_upload_name(&format!("{data}#x1")));
        assert!(!is_staged_upload_name("notes.txt#1"));
    }

    #[tokio::test]
    async fn staged_uploads_left_by_a_crash_are_removed_on_local_disk() -> Result<(), CommitLogError>
    {
        let tmp = tempfile::tempdir().map_err(|e| CommitLogError::Local {
            path: "tempdir".into(),
            source: e,
        })?;
        let store: Arc<dyn ObjectStore> = Arc::new(object_store::local::LocalFileSystem::new());
        let root = Location::parse(&tmp.path().to_string_lossy(), Path::new(".")).unwrap();
        let log = CommitLog::new(store, root);
        let data = data_file_name(0, "0123abcd", 0, 0, "parquet");
        std::fs::create_dir_all(tmp.path().join("k=1")).unwrap();
        std::fs::create_dir_all(tmp.path().join(COMMITS_DIR)).unwrap();
        for f in [
            format!("{data}#1"),
            format!("k=1/{data}#3"),
            format!("{COMMITS_DIR}/00000000000000000000.json#1"),
            "mine.csv#1".to_string(),
        ] {
            std::fs::write(tmp.path().join(&f), "x").unwrap();
        }
        let mut removed = log.remove_uncommitted().await?;
        removed.sort();
        assert_eq!(
            removed,
            vec![
                format!("{COMMITS_DIR}/00000000000000000000.json#1"),
                format!("k=1/{data}#3"),
                format!("{data}#1"),
            ]
        );
        assert!(tmp.path().join("mine.csv#1").exists(), "not sluice's: kept");
        Ok(())
    }

    #[tokio::test]
    async fn commits_are_created_once_and_orphans_removed() -> Result<(), CommitLogError> {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let root = Location::parse("memory:///sink", Path::new(".")).unwrap();
        let log = CommitLog::new(Arc::clone(&store), root.clone());
        let kept = data_file_name(0, "0123abcd", 0, 0, "parquet");
        let orphan = data_file_name(1, "0123abcd", 0, 0, "parquet");
        for name in [&kept, &orphan, &"README.md".to_string()] {
            store.put(&root.child(name), "x".into()).await.unwrap();
        }
        log.write(&commit(0, &[&kept])).await?;
        assert!(matches!(
            log.write(&commit(0, &[])).await,
            Err(CommitLogError::AlreadyCommitted { epoch: 0, .. })
        ));
        assert_eq!(log.epochs().await?, vec![0]);
        assert_eq!(log.read(0).await?.files.len(), 1);
        let removed = log.remove_uncommitted().await?;
        assert_eq!(removed, vec![orphan]);
        // the user's own file and the committed file stay
        assert!(store.head(&root.child("README.md")).await.is_ok());
        assert!(store.head(&root.child(&kept)).await.is_ok());
        Ok(())
    }

    fn with_offsets(mut c: Commit, partition: &str, start: i64, end: i64) -> Commit {
        let at = |o: i64| serde_json::json!({ "topics": { "t": { partition: o } } });
        c.source_offsets.insert(
            "orders".into(),
            SourceOffsets {
                start: at(start),
                end: at(end),
            },
        );
        c
    }

    /// Two workers share a log: a commit takes the next free number, and
    /// one that starts a partition behind the log is refused (a rewind),
    /// whatever number its epoch had.
    #[tokio::test]
    async fn a_shared_log_refuses_a_stale_range_and_numbers_commits_itself()
    -> Result<(), CommitLogError> {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let root = Location::parse("memory:///sink", Path::new(".")).unwrap();
        let (a, b) = (
            CommitLog::new(Arc::clone(&store), root.clone()),
            CommitLog::new(Arc::clone(&store), root.clone()),
        );
        let sources: BTreeSet<String> = ["orders".to_string()].into();
        a.share(sources.clone(), "aaaaaaaa");
        b.share(sources, "bbbbbbbb");
        assert_eq!(a.write(&with_offsets(commit(0, &[]), "0", 0, 10)).await?, 0);
        // b read partition 0 from the start too: a zombie's range
        let stale = b.write(&with_offsets(commit(0, &[]), "0", 0, 5)).await;
        let Err(e @ CommitLogError::Conflict { .. }) = stale else {
            panic!("a stale range was committed: {stale:?}");
        };
        assert_eq!(e.retry_hint(), crate::error::RetryHint::Rewind);
        assert!(e.to_string().contains("topics/t/0"), "{e}");
        // its own partition commits, under the next number
        assert_eq!(b.write(&with_offsets(commit(0, &[]), "1", 0, 7)).await?, 1);
        // and a range that follows the log does too
        assert_eq!(
            b.write(&with_offsets(commit(5, &[]), "0", 10, 12)).await?,
            2
        );
        assert_eq!(a.epochs().await?, vec![0, 1, 2]);
        assert_eq!(a.read(2).await?.first_epoch, 2);
        Ok(())
    }

    #[tokio::test]
    async fn a_shared_log_leaves_another_runs_fresh_files() -> Result<(), CommitLogError> {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let root = Location::parse("memory:///sink", Path::new(".")).unwrap();
        let log = CommitLog::new(Arc::clone(&store), root.clone());
        log.share(BTreeSet::new(), "aaaaaaaa");
        let mine = data_file_name(0, "aaaaaaaa", 0, 0, "parquet");
        let theirs = data_file_name(0, "bbbbbbbb", 0, 0, "parquet");
        for name in [&mine, &theirs] {
            store.put(&root.child(name), "x".into()).await.unwrap();
        }
        assert_eq!(log.remove_uncommitted().await?, vec![mine]);
        assert!(store.head(&root.child(&theirs)).await.is_ok());
        let old = SystemTime::now() - SHARED_DEBRIS_AGE - Duration::from_secs(1);
        assert!(
            log.may_delete(&theirs, old),
            "old debris of another run goes"
        );
        Ok(())
    }
}
