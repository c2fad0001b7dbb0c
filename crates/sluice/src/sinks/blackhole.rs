//! The `blackhole` sink: reads every row and keeps none, for benchmarks.

use async_trait::async_trait;
use futures::StreamExt;

use super::{EpochOutput, Sink};
use crate::error::{Result, SluiceError};

/// `[sinks.<name>] kind = "blackhole"`: counts rows and drops them.
///
/// Not durable: it keeps no commit log. Useful to measure a pipeline without
/// the cost of writing.
#[derive(Debug)]
pub(super) struct BlackholeSink {
    name: String,
}

impl BlackholeSink {
    /// A blackhole sink.
    pub(super) fn new(name: &str) -> Self {
        Self {
            name: name.to_string(),
        }
    }
}

#[async_trait]
impl Sink for BlackholeSink {
    fn name(&self) -> &str {
        &self.name
    }
    fn kind(&self) -> &str {
        "blackhole"
    }
    fn url(&self) -> String {
        "blackhole".into()
    }
    async fn write(&self, output: EpochOutput) -> Result<u64> {
        // every partition drains in its own task, as a file sink would write
        let mut tasks = tokio::task::JoinSet::new();
        for p in 0..output.partitions() {
            let mut stream = output.execute(p)?;
            tasks.spawn(async move {
                let mut rows = 0u64;
                while let Some(b) = stream.next().await {
                    rows += b?.num_rows() as u64;
                }
                Ok::<u64, datafusion::error::DataFusionError>(rows)
            });
        }
        let mut rows = 0;
        while let Some(r) = tasks.join_next().await {
            rows += r
                .map_err(|e| SluiceError::Internal(format!("a blackhole task failed: {e}")))?
                .map_err(|e| output.error(e))?;
        }
        Ok(rows)
    }
}
