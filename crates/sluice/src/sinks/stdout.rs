//! The `stdout` sink: prints rows as a table, for debugging.

use std::io::Write;

use async_trait::async_trait;
use datafusion::arrow::util::pretty::pretty_format_batches;
use futures::StreamExt;
use serde::Deserialize;

use super::{EpochOutput, Sink};
use crate::error::{Result, RetryHint, SluiceError};

fn default_max_rows() -> usize {
    20
}

/// `[sinks.<name>] kind = "stdout"`: prints the rows as a table.
///
/// Not durable: it keeps no commit log, so every run prints its input again.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StdoutSinkConfig {
    /// Rows printed per epoch at most (default 20); the rest are counted.
    #[serde(default = "default_max_rows")]
    pub max_rows: usize,
}

/// Prints rows; see [`StdoutSinkConfig`].
#[derive(Debug)]
pub(super) struct StdoutSink {
    name: String,
    config: StdoutSinkConfig,
}

impl StdoutSink {
    /// A stdout sink.
    pub(super) fn new(name: &str, config: StdoutSinkConfig) -> Self {
        Self {
            name: name.to_string(),
            config,
        }
    }
}

#[async_trait]
impl Sink for StdoutSink {
    fn name(&self) -> &str {
        &self.name
    }
    fn kind(&self) -> &str {
        "stdout"
    }
    fn url(&self) -> String {
        "stdout".into()
    }
    async fn write(&self, output: EpochOutput) -> Result<u64> {
        let mut stream = output.execute_all()?;
        let mut shown = Vec::new();
        let (mut kept, mut total) = (0usize, 0u64);
        while let Some(batch) = stream.next().await {
            let batch = batch.map_err(|e| output.error(e))?;
            total += batch.num_rows() as u64;
            if kept < self.config.max_rows {
                let take = (self.config.max_rows - kept).min(batch.num_rows());
                shown.push(batch.slice(0, take));
                kept += take;
            }
        }
        let table = pretty_format_batches(&shown).map_err(|e| SluiceError::Sink {
            sink: self.name.clone(),
            url: self.url(),
            message: e.to_string(),
            retry: RetryHint::Never,
            cause: None,
        })?;
        let mut text = format!(
            "sink `{}` epoch {}: {total} rows\n{table}\n",
            self.name,
            output.epoch()
        );
        if total > kept as u64 {
            text.push_str(&format!("... {} more rows\n", total - kept as u64));
        }
        // A closed stdout (`sluice run … | head`) is an error of this sink,
        // not a signal that kills the engine (SIGPIPE stays ignored). The
        // write blocks: off the async threads.
        let written = tokio::task::spawn_blocking(move || {
            let mut stdout = std::io::stdout().lock();
            stdout
                .write_all(text.as_bytes())
                .and_then(|()| stdout.flush())
        })
        .await;
        let failed = match written {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(e) => Some(e.to_string()),
        };
        if let Some(e) = failed {
            return Err(SluiceError::Sink {
                sink: self.name.clone(),
                url: self.url(),
                message: format!("cannot write to stdout: {e}"),
                retry: RetryHint::Never,
                cause: None,
            });
        }
        Ok(total)
    }
}
