//! `sluice inspect`: what a sluice sink holds, read from its commit log (or
//! from a Delta table's log, for a `delta` sink).

use datafusion::arrow::array::RecordBatch;
use datafusion::prelude::{ParquetReadOptions, SessionContext};

use crate::commit_log::{Commit, CommitLog};
use crate::engine::Engine;
use crate::error::{Result, RetryHint, SluiceError};
use crate::spec::S3Settings;
use crate::storage::Location;

/// Every commit of the sink at `url` (a folder or object-store URL), oldest
/// first: from its commit log, or, for a `delta` sink, from the sluice
/// records in the Delta table's history.
pub async fn read_commits(engine: &Engine, url: &str, s3: &S3Settings) -> Result<Vec<Commit>> {
    #[cfg(feature = "delta")]
    if crate::delta::is_table(engine, url, s3).await {
        let history = crate::delta::history(engine, url, s3, None).await?;
        return Ok(history.into_iter().filter_map(|v| v.commit).collect());
    }
    Ok(open(engine, url, s3).await?.1)
}

/// Every row a Parquet sink at `url` committed (the files its commits list,
/// nothing else), with the schema of its last commit.
pub async fn read_committed_rows(
    engine: &Engine,
    url: &str,
    s3: &S3Settings,
) -> Result<Vec<RecordBatch>> {
    let (loc, commits) = open(engine, url, s3).await?;
    let files: Vec<String> = commits
        .iter()
        .flat_map(|c| c.files.iter().map(|f| loc.object_url(&loc.child(&f.path))))
        .collect();
    if files.is_empty() {
        return Ok(Vec::new());
    }
    let ctx = SessionContext::new();
    engine.stores().register_all(&ctx);
    let df = ctx
        .read_parquet(files, ParquetReadOptions::default().skip_metadata(false))
        .await
        .map_err(|e| SluiceError::from_datafusion(e, None))?;
    df.collect()
        .await
        .map_err(|e| SluiceError::from_datafusion(e, None))
}

async fn open(engine: &Engine, url: &str, s3: &S3Settings) -> Result<(Location, Vec<Commit>)> {
    let cwd = std::env::current_dir().unwrap_or_else(|_| ".".into());
    let loc = Location::parse(url, &cwd).map_err(|m| SluiceError::Sink {
        sink: String::new(),
        url: url.to_string(),
        message: m,
        retry: RetryHint::Never,
        cause: None,
    })?;
    let store = engine
        .stores()
        .store_for(&loc, s3)
        .map_err(|m| SluiceError::Sink {
            sink: String::new(),
            url: url.to_string(),
            message: m,
            retry: RetryHint::Never,
            cause: None,
        })?;
    let commits = CommitLog::new(store, loc.clone())
        .read_all()
        .await
        .map_err(|e| {
            SluiceError::sink_failed("inspect", loc.url(), "cannot read the commit log", e)
        })?;
    Ok((loc, commits))
}
