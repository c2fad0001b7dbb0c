//! Delta tables a `delta` sink writes: their history, compaction and vacuum
//! (`sluice inspect`, `sluice compact`, `sluice vacuum`).
//!
//! A streaming sink commits often, and each commit adds at least one file
//! per partition written: after a day at one commit a second, a table holds
//! tens of thousands of small files. [`compact`] rewrites them into files of
//! a target size in one Delta transaction that changes no data (readers of
//! any version see the same rows; a sluice run may keep committing while it
//! runs). The files it replaced stay, for readers of older versions, until
//! [`vacuum`] deletes those removed longer ago than the retention period.

use std::num::NonZeroU64;
use std::time::Duration;

use deltalake_core::operations::vacuum::VacuumMode;
use serde::Serialize;

use crate::commit_log::Commit;
use crate::engine::Engine;
use crate::error::{Result, RetryHint, SluiceError};
use crate::sinks::delta::{Table, sluice_commit};
use crate::spec::S3Settings;
use crate::storage::Location;

/// One version of a Delta table's history.
#[derive(Debug, Clone, Serialize)]
pub struct TableVersion {
    /// The Delta version, as its writer recorded it (the version it read,
    /// plus one); `None` for a first version or a writer that records none.
    pub version: Option<u64>,
    /// When it was committed (milliseconds since the Unix epoch).
    pub timestamp: Option<i64>,
    /// The operation (`STREAMING UPDATE`, `CREATE TABLE`, `OPTIMIZE`, ...).
    pub operation: String,
    /// sluice's record, when a sluice sink made the version.
    pub commit: Option<Commit>,
}

/// What [`compact`] did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Compaction {
    /// The table version it committed (none when there was nothing to do).
    pub version: Option<u64>,
    /// Files rewritten.
    pub files_removed: u64,
    /// Files written.
    pub files_added: u64,
    /// Bytes of the files rewritten.
    pub bytes_removed: i64,
    /// Bytes of the files written.
    pub bytes_added: i64,
}

/// Opens the table at `url` (a folder or object-store URL), refreshed.
async fn open(engine: &Engine, url: &str, s3: &S3Settings) -> Result<Table> {
    let fail = |message: String| SluiceError::Sink {
        sink: String::new(),
        url: url.to_string(),
        message,
        retry: RetryHint::Never,
        cause: None,
    };
    let cwd = std::env::current_dir().unwrap_or_else(|_| ".".into());
    let loc = Location::parse(url, &cwd).map_err(fail)?;
    let store = engine.stores().store_for(&loc, s3).map_err(fail)?;
    let mut table = Table::new(&loc, store).map_err(fail)?;
    let exists = table
        .refresh()
        .await
        .map_err(|e| SluiceError::sink_failed("delta", loc.url(), "cannot read the log", e))?;
    if !exists {
        return Err(fail(format!("{url}: no Delta table here (no _delta_log/)")));
    }
    Ok(table)
}

/// Whether `url` holds a Delta table.
pub async fn is_table(engine: &Engine, url: &str, s3: &S3Settings) -> bool {
    open(engine, url, s3).await.is_ok()
}

/// The table's history, oldest first: its newest `limit` versions (all
/// those its log keeps when `None`).
pub async fn history(
    engine: &Engine,
    url: &str,
    s3: &S3Settings,
    limit: Option<usize>,
) -> Result<Vec<TableVersion>> {
    let table = open(engine, url, s3).await?;
    let infos = table
        .history(limit)
        .await
        .map_err(|e| SluiceError::sink_failed("delta", url.into(), "cannot read the history", e))?;
    let mut out = Vec::with_capacity(infos.len());
    for info in &infos {
        let commit = match sluice_commit(info) {
            Some(Ok(c)) => Some(c),
            Some(Err(m)) => {
                return Err(SluiceError::Sink {
                    sink: String::new(),
                    url: url.to_string(),
                    message: m,
                    retry: RetryHint::Never,
                    cause: None,
                });
            }
            None => None,
        };
        // the version a commit read, plus one: what its writer recorded
        // (a log entry says nothing of its own number)
        let version = info.read_version.and_then(|v| v.checked_add(1));
        out.push(TableVersion {
            version,
            timestamp: info.timestamp,
            operation: info.operation.clone().unwrap_or_default(),
            commit,
        });
    }
    out.reverse();
    Ok(out)
}

/// Rewrites the table's small files into files of about `target_bytes`, in
/// one transaction that changes no data; see the module docs. Running it
/// again finds nothing to do.
pub async fn compact(
    engine: &Engine,
    url: &str,
    s3: &S3Settings,
    target_bytes: u64,
) -> Result<Compaction> {
    let target = NonZeroU64::new(target_bytes).ok_or_else(|| SluiceError::Sink {
        sink: String::new(),
        url: url.to_string(),
        message: "the target file size must be more than 0 bytes".into(),
        retry: RetryHint::Never,
        cause: None,
    })?;
    let table = open(engine, url, s3).await?;
    let before = table.table.version();
    let (after, metrics) = table
        .table
        .optimize()
        .with_target_size(target)
        .await
        .map_err(|e| SluiceError::sink_failed("delta", url.into(), "cannot compact", e))?;
    let version = after.version().filter(|v| Some(*v) != before);
    Ok(Compaction {
        version,
        files_removed: metrics.num_files_removed,
        files_added: metrics.num_files_added,
        bytes_removed: metrics.files_removed.total_size,
        bytes_added: metrics.files_added.total_size,
    })
}

/// Deletes the files the table removed longer ago than `retention` (they
/// were compacted away or the rows rewritten); with `full`, also files in
/// the folder the log never named and older than `retention` (debris of
/// runs of other writers). Returns the deleted paths (those it would delete,
/// with `dry_run`). A retention shorter than the table's
/// `delta.deletedFileRetentionDuration` (7 days by default) would break
/// readers of versions that recent, and is refused unless `force`.
pub async fn vacuum(
    engine: &Engine,
    url: &str,
    s3: &S3Settings,
    retention: Duration,
    full: bool,
    dry_run: bool,
    force: bool,
) -> Result<Vec<String>> {
    let table = open(engine, url, s3).await?;
    let retention = chrono::Duration::from_std(retention).map_err(|e| SluiceError::Sink {
        sink: String::new(),
        url: url.to_string(),
        message: format!("retention: {e}"),
        retry: RetryHint::Never,
        cause: None,
    })?;
    let (_, metrics) = table
        .table
        .vacuum()
        .with_retention_period(retention)
        .with_enforce_retention_duration(!force)
        .with_mode(if full {
            VacuumMode::Full
        } else {
            VacuumMode::Lite
        })
        .with_dry_run(dry_run)
        .await
        .map_err(|e| SluiceError::sink_failed("delta", url.into(), "cannot vacuum", e))?;
    Ok(metrics.files_deleted)
}
