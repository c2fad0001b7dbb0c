//! `EpochTable`: the table a source is registered as, showing the current epoch's slice.
//!
//! The pipeline's logical plan is built once against these tables; before
//! each epoch the runner installs the source's new [`Slice`](super::Slice),
//! and physical planning then scans exactly that slice. Every scan is wrapped
//! in a [`StageExec`] so the source's rows are counted.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{ScanArgs, ScanResult, Session, TableProvider};
use datafusion::common::Result;
use datafusion::error::DataFusionError;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown, TableType};
use datafusion::physical_plan::ExecutionPlan;

use crate::ops::stage::{StageExec, StageRole};

/// A source as a table whose content is the current epoch's slice.
#[derive(Debug)]
pub struct EpochTable {
    name: String,
    kind: String,
    schema: SchemaRef,
    current: Mutex<Option<Arc<dyn TableProvider>>>,
    progress: Arc<AtomicU64>,
}

impl EpochTable {
    /// A table for source `name` with a fixed schema; `progress` counts rows read.
    pub fn new(name: &str, kind: &str, schema: SchemaRef, progress: Arc<AtomicU64>) -> Self {
        Self { name: name.to_string(), kind: kind.to_string(), schema, current: Mutex::new(None), progress }
    }

    /// Installs the slice the next physical plan will scan.
    pub fn set_slice(&self, table: Arc<dyn TableProvider>) {
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = Some(table);
    }

    fn current(&self) -> Result<Arc<dyn TableProvider>> {
        self.current.lock().unwrap_or_else(|p| p.into_inner()).clone().ok_or_else(|| {
            DataFusionError::Internal(format!("source `{}` was planned before it had a slice (this is a bug)", self.name))
        })
    }
}

#[async_trait]
impl TableProvider for EpochTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let args = ScanArgs::default().with_projection(projection.map(|p| p.as_slice())).with_filters(Some(filters)).with_limit(limit);
        Ok(self.scan_with_args(state, args).await?.into_inner())
    }

    async fn scan_with_args<'a>(&self, state: &dyn Session, args: ScanArgs<'a>) -> Result<ScanResult> {
        let inner = self.current()?.scan_with_args(state, args).await?.into_inner();
        let exec = StageExec::new(&self.name, &self.kind, StageRole::Source, inner).with_progress(Arc::clone(&self.progress));
        Ok(ScanResult::new(Arc::new(exec)))
    }

    fn supports_filters_pushdown(&self, filters: &[&Expr]) -> Result<Vec<TableProviderFilterPushDown>> {
        // Inexact: DataFusion keeps its own filter and also hands the
        // predicate to the slice's scan, which may use it to prune.
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }
}
