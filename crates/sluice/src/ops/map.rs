//! `MapExec`: a function applied to every batch, partition by partition.
//!
//! - Output schema: the input's (the function keeps it: it filters rows).
//! - Emits: each input batch as the function returns it.
//! - State: per partition, the number of rows seen before the batch (the
//!   function's third argument), so what it reports names rows stably.
//! - Failure: the function's errors and the input's, unchanged.

use std::fmt;
use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{Result, internal_datafusion_err};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, PhysicalExpr, PlanProperties,
};
use futures::StreamExt;

/// `(partition, batch, rows of the partition before it) -> batch`.
pub(crate) type BatchFn = Arc<dyn Fn(usize, RecordBatch, u64) -> Result<RecordBatch> + Send + Sync>;

/// Applies a function to every batch; see the module docs.
pub(crate) struct MapExec {
    name: &'static str,
    input: Arc<dyn ExecutionPlan>,
    f: BatchFn,
    props: Arc<PlanProperties>,
}

impl fmt::Debug for MapExec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct(self.name).finish()
    }
}

impl MapExec {
    /// `f` over `input`, shown as `name`.
    pub(crate) fn new(name: &'static str, input: Arc<dyn ExecutionPlan>, f: BatchFn) -> Self {
        let props = Arc::new(input.properties().as_ref().clone());
        Self {
            name,
            input,
            f,
            props,
        }
    }
}

impl DisplayAs for MapExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{}", self.name)
    }
}

impl ExecutionPlan for MapExec {
    fn name(&self) -> &str {
        self.name
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
            .ok_or_else(|| internal_datafusion_err!("{} rebuilt without a child", self.name))?;
        Ok(Arc::new(MapExec::new(
            self.name,
            input,
            Arc::clone(&self.f),
        )))
    }
    fn execute(
        &self,
        partition: usize,
        ctx: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let input = self.input.execute(partition, ctx)?;
        let schema = input.schema();
        let f = Arc::clone(&self.f);
        let mut seen = 0u64;
        let stream = input.map(move |batch| {
            let batch = batch?;
            let first = seen;
            seen += batch.num_rows() as u64;
            f(partition, batch, first)
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
    }
}
