//! The `blackhole` sink: reads every row and keeps none, for benchmarks.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::execution::TaskContext;
use datafusion::physical_plan::{ExecutionPlan, ExecutionPlanProperties};
use futures::StreamExt;
use serde::Deserialize;

use super::{Sink, Written};
use crate::error::{Result, SluiceError};

/// `[sinks.<name>] kind = "blackhole"`: counts rows and drops them.
///
/// Not durable: it keeps no commit log. Useful to measure a pipeline without
/// the cost of writing.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlackholeSinkConfig {
    /// The stage or source to consume.
    pub input: String,
}

/// Drops rows; see [`BlackholeSinkConfig`].
#[derive(Debug)]
pub struct BlackholeSink {
    name: String,
}

impl BlackholeSink {
    /// A blackhole sink.
    pub fn new(name: &str) -> Self {
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
    async fn write(
        &self,
        _epoch: u64,
        _run_id: &str,
        plan: Arc<dyn ExecutionPlan>,
        task: Arc<TaskContext>,
        _schema: SchemaRef,
    ) -> Result<Written> {
        // every partition drains in its own task, as a file sink would write
        let mut tasks = tokio::task::JoinSet::new();
        for p in 0..plan.output_partitioning().partition_count() {
            let mut stream = plan
                .execute(p, Arc::clone(&task))
                .map_err(|e| SluiceError::from_datafusion(e, Some(&self.name)))?;
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
                .map_err(|e| SluiceError::from_datafusion(e, Some(&self.name)))?;
        }
        Ok(Written {
            files: vec![],
            rows,
            bytes: 0,
        })
    }
}
