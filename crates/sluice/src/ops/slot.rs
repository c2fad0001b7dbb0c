//! `SlotNode` / `SlotExec`: a placeholder input, filled with rows at execute time.
//!
//! A stateful operator runs a piece of DataFusion over rows it holds (a
//! join of the windows that closed, say). It plans that piece once, with
//! DataFusion's own planner, over slots of the right schema, and fills the
//! slots with the epoch's rows when it runs ([`fill`]). So the piece is
//! planned and optimized exactly as the same SQL would be.
//!
//! - Output schema: the slot's; one partition.
//! - A slot left unfilled fails when executed (a bug).

use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::Session;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{DFSchemaRef, Result, internal_err};
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::{
    Expr, Extension, LogicalPlan, UserDefinedLogicalNode, UserDefinedLogicalNodeCore,
};
use datafusion::physical_expr::EquivalenceProperties;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PhysicalExpr, PlanProperties,
};
use datafusion::physical_planner::{ExtensionPlanner, PhysicalPlanner};

/// A logical placeholder of `schema`, told apart from the others by `id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SlotNode {
    pub id: usize,
    pub schema: DFSchemaRef,
}

impl Hash for SlotNode {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.id.hash(state);
        self.schema.hash(state);
    }
}

impl PartialOrd for SlotNode {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        self.id.partial_cmp(&other.id)
    }
}

impl SlotNode {
    /// A plan reading slot `id` with the schema of `like`.
    pub(crate) fn plan(id: usize, like: &LogicalPlan) -> LogicalPlan {
        LogicalPlan::Extension(Extension {
            node: Arc::new(SlotNode {
                id,
                schema: Arc::clone(like.schema()),
            }),
        })
    }
}

impl UserDefinedLogicalNodeCore for SlotNode {
    fn name(&self) -> &str {
        "Slot"
    }
    fn inputs(&self) -> Vec<&LogicalPlan> {
        vec![]
    }
    fn schema(&self) -> &DFSchemaRef {
        &self.schema
    }
    fn expressions(&self) -> Vec<Expr> {
        vec![]
    }
    fn fmt_for_explain(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "Slot: {}", self.id)
    }
    fn with_exprs_and_inputs(&self, _exprs: Vec<Expr>, _inputs: Vec<LogicalPlan>) -> Result<Self> {
        Ok(self.clone())
    }
}

/// Plans [`SlotNode`] into [`SlotExec`].
#[derive(Debug, Default)]
pub(crate) struct SlotPlanner;

#[async_trait]
impl ExtensionPlanner for SlotPlanner {
    async fn plan_extension(
        &self,
        _planner: &dyn PhysicalPlanner,
        node: &dyn UserDefinedLogicalNode,
        _logical_inputs: &[&LogicalPlan],
        _physical_inputs: &[Arc<dyn ExecutionPlan>],
        _session: &dyn Session,
        _ctx: &PhysicalPlanningContext,
    ) -> Result<Option<Arc<dyn ExecutionPlan>>> {
        let Some(slot) = node.as_any().downcast_ref::<SlotNode>() else {
            return Ok(None);
        };
        Ok(Some(Arc::new(SlotExec::new(
            slot.id,
            Arc::clone(slot.schema.inner()),
        ))))
    }
}

/// The physical placeholder; see the module docs.
#[derive(Debug)]
pub(crate) struct SlotExec {
    id: usize,
    schema: SchemaRef,
    props: Arc<PlanProperties>,
}

impl SlotExec {
    fn new(id: usize, schema: SchemaRef) -> Self {
        let props = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(Arc::clone(&schema)),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Incremental,
            Boundedness::Bounded,
        ));
        Self { id, schema, props }
    }
}

impl DisplayAs for SlotExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "SlotExec: {}", self.id)
    }
}

impl ExecutionPlan for SlotExec {
    fn name(&self) -> &str {
        "SlotExec"
    }
    fn properties(&self) -> &Arc<PlanProperties> {
        &self.props
    }
    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }
    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }
    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if children.is_empty() {
            Ok(self)
        } else {
            internal_err!("SlotExec has no children")
        }
    }
    fn execute(
        &self,
        _partition: usize,
        _ctx: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        internal_err!("slot {} was executed before it was filled", self.id)
    }
}

/// `plan` with every slot replaced by its rows (`rows[id]`).
pub(crate) fn fill(
    plan: &Arc<dyn ExecutionPlan>,
    rows: &[Vec<RecordBatch>],
) -> Result<Arc<dyn ExecutionPlan>> {
    Arc::clone(plan)
        .transform_up(|p| {
            let Some(slot) = p.downcast_ref::<SlotExec>() else {
                return Ok(Transformed::no(p));
            };
            let Some(batches) = rows.get(slot.id) else {
                return internal_err!("no rows for slot {}", slot.id);
            };
            let exec: Arc<dyn ExecutionPlan> = MemorySourceConfig::try_new_exec(
                std::slice::from_ref(batches),
                Arc::clone(&slot.schema),
                None,
            )?;
            Ok(Transformed::yes(exec))
        })
        .map(|t| t.data)
}
