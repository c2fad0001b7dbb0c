//! A Parquet or Arrow IPC slice as a table whose scan errors name the source
//! and the file ([`FileErrorsExec`]).

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::Result;
use datafusion::datasource::listing::ListingTable;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown, TableType};
use datafusion::physical_plan::ExecutionPlan;
use futures::FutureExt;
use object_store::ObjectStore;

use crate::error::{RetryHint, SluiceError};
use crate::ops::file_errors::{FileErrorsExec, ScannedFiles};

/// DataFusion's listing table, its scan wrapped; see the module docs.
#[derive(Debug)]
pub(super) struct NamedFilesTable {
    pub inner: ListingTable,
    pub source_name: String,
    pub store: Arc<dyn ObjectStore>,
    pub files: ScannedFiles,
    pub parquet: bool,
}

#[async_trait]
impl TableProvider for NamedFilesTable {
    fn schema(&self) -> SchemaRef {
        self.inner.schema()
    }
    fn table_type(&self) -> TableType {
        TableType::Base
    }
    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        self.inner.supports_filters_pushdown(filters)
    }
    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        // planning reads the files' metadata, where the parquet and
        // DataFusion crates may panic on corrupt values: caught here
        let plan = AssertUnwindSafe(self.inner.scan(state, projection, filters, limit))
            .catch_unwind()
            .await
            .map_err(|_| {
                let file = match self.files.as_slice() {
                    [(uri, _)] => Some(uri.clone()),
                    _ => None,
                };
                SluiceError::Source {
                    source_name: self.source_name.clone(),
                    file,
                    line: None,
                    message: "cannot plan the scan: the file metadata is corrupt".into(),
                    retry: RetryHint::Never,
                    cause: None,
                }
                .into_datafusion()
            })??;
        Ok(Arc::new(FileErrorsExec::new(
            plan,
            self.source_name.clone(),
            Arc::clone(&self.store),
            Arc::clone(&self.files),
            self.parquet,
        )))
    }
}
