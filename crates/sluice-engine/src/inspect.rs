//! `sluice inspect`: what a sluice sink holds, read from its commit log.

use crate::commit_log::{Commit, CommitLog};
use crate::engine::Engine;
use crate::error::{Result, RetryHint, SluiceError};
use crate::spec::S3Settings;
use crate::storage::Location;

/// Every commit of the sink at `url` (a folder or object-store URL), oldest first.
pub async fn read_commits(engine: &Engine, url: &str, s3: &S3Settings) -> Result<Vec<Commit>> {
    let cwd = std::env::current_dir().unwrap_or_else(|_| ".".into());
    let loc = Location::parse(url, &cwd).map_err(|m| SluiceError::Sink {
        sink: String::new(),
        url: url.to_string(),
        message: m,
        retry: RetryHint::Never,
    })?;
    let store = engine.stores().store_for(&loc, s3).map_err(|m| SluiceError::Sink {
        sink: String::new(),
        url: url.to_string(),
        message: m,
        retry: RetryHint::Never,
    })?;
    CommitLog::new(store, loc.clone()).read_all().await.map_err(|e| SluiceError::Sink {
        sink: String::new(),
        url: loc.url(),
        message: e.to_string(),
        retry: RetryHint::WithBackoff,
    })
}
