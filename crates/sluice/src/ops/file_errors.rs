//! `FileErrorsExec`: a file scan's errors name the source and the file.
//!
//! - Output schema: the input's; batches pass unchanged.
//! - Failure: an error of the scan underneath (DataFusion's Parquet or Arrow
//!   IPC reader: a corrupt page, a bad column chunk) becomes a
//!   [`SluiceError::Source`] naming the source and the file. With one file
//!   that is the file; with several, each Parquet file of the slice is read
//!   again until the one that fails is found (only after a failure, so the
//!   good path pays nothing).
//! - A panic inside the reader (the parquet crate slices page bytes by
//!   lengths read from the file, and some corrupt lengths make it panic) is
//!   caught here and becomes such an error too; the scan is not polled again.

use std::fmt;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use datafusion::arrow::array::RecordBatch;

use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DataFusionError, Result, internal_datafusion_err};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, PhysicalExpr, PlanProperties,
};
use futures::{Stream, StreamExt, TryStreamExt};
use object_store::ObjectStore;
use object_store::ObjectStoreExt;
use object_store::path::Path;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::error::{SluiceError, find_sluice_error};

/// The files a scan reads: (URI for messages, path in the store).
pub(crate) type ScannedFiles = Arc<Vec<(String, Path)>>;

/// Names the source and the file in a scan's errors; see the module docs.
#[derive(Debug)]
pub(crate) struct FileErrorsExec {
    input: Arc<dyn ExecutionPlan>,
    source_name: String,
    store: Arc<dyn ObjectStore>,
    files: ScannedFiles,
    /// Whether the files are Parquet (the only format probed for the culprit).
    parquet: bool,
    props: Arc<PlanProperties>,
}

impl FileErrorsExec {
    pub(crate) fn new(
        input: Arc<dyn ExecutionPlan>,
        source_name: String,
        store: Arc<dyn ObjectStore>,
        files: ScannedFiles,
        parquet: bool,
    ) -> Self {
        let props = Arc::new(input.properties().as_ref().clone());
        Self {
            input,
            source_name,
            store,
            files,
            parquet,
            props,
        }
    }
}

impl DisplayAs for FileErrorsExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "FileErrorsExec: source={} files={}",
            self.source_name,
            self.files.len()
        )
    }
}

impl ExecutionPlan for FileErrorsExec {
    fn name(&self) -> &str {
        "FileErrorsExec"
    }
    fn properties(&self) -> &Arc<PlanProperties> {
        &self.props
    }
    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }
    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }
    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }
    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let input = children
            .pop()
            .ok_or_else(|| internal_datafusion_err!("FileErrorsExec rebuilt without a child"))?;
        Ok(Arc::new(FileErrorsExec::new(
            input,
            self.source_name.clone(),
            Arc::clone(&self.store),
            Arc::clone(&self.files),
            self.parquet,
        )))
    }
    fn execute(
        &self,
        partition: usize,
        ctx: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let input = self.input.execute(partition, ctx)?;
        let schema = input.schema();
        let (name, store, files, parquet) = (
            self.source_name.clone(),
            Arc::clone(&self.store),
            Arc::clone(&self.files),
            self.parquet,
        );
        let stream = CatchPanics { input: Some(input) }.or_else(move |e| {
            let (name, store, files) = (name.clone(), Arc::clone(&store), Arc::clone(&files));
            async move { Err(named(e, &name, store, &files, parquet).await) }
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            schema,
            stream.boxed(),
        )))
    }
}

/// A scan's stream whose panics become errors; after one, it ends.
struct CatchPanics {
    input: Option<SendableRecordBatchStream>,
}

impl Stream for CatchPanics {
    type Item = Result<RecordBatch>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let Some(input) = self.input.as_mut() else {
            return Poll::Ready(None);
        };
        match std::panic::catch_unwind(AssertUnwindSafe(|| input.poll_next_unpin(cx))) {
            Ok(p) => p,
            Err(payload) => {
                self.input = None;
                let what = sluice_flight::panic_message(payload.as_ref());
                Poll::Ready(Some(Err(DataFusionError::Execution(format!(
                    "the reader failed on corrupt data ({what})"
                )))))
            }
        }
    }
}

/// `e`, as an error of source `name` reading the file that fails.
async fn named(
    e: DataFusionError,
    name: &str,
    store: Arc<dyn ObjectStore>,
    files: &[(String, Path)],
    parquet: bool,
) -> DataFusionError {
    if find_sluice_error(&e).is_some() {
        return e;
    }
    let file = match files {
        [(uri, _)] => Some(uri.clone()),
        _ if parquet => {
            // the reader may panic again on the culprit: that names it too
            let mut culprit = None;
            for (uri, path) in files {
                if read_whole(Arc::clone(&store), path).await.is_err() {
                    culprit = Some(uri.clone());
                    break;
                }
            }
            culprit
        }
        _ => None,
    };
    let what = match (&file, files.len()) {
        (None, n) if n > 1 => format!("cannot read one of {n} files"),
        _ => "cannot read".to_string(),
    };
    SluiceError::source_failed(name, file, &what, e).into_datafusion()
}

/// Reads a Parquet file to its end (in memory, off the async threads: this
/// runs only after a scan failed).
async fn read_whole(store: Arc<dyn ObjectStore>, path: &Path) -> Result<(), String> {
    let bytes = store
        .get(path)
        .await
        .map_err(|e| e.to_string())?
        .bytes()
        .await
        .map_err(|e| e.to_string())?;
    tokio::task::spawn_blocking(move || {
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
            .and_then(|b| b.build())
            .map_err(|e| e.to_string())?;
        for batch in reader {
            batch.map_err(|e| e.to_string())?;
        }
        Ok(())
    })
    .await
    .map_err(|e| e.to_string())?
}
