//! `WindowJoinExec`: a join of two streams within event-time windows,
//! across epochs.
//!
//! A join whose `ON` equates the window starts of both sides (say
//! `p.w = a.w`, each `date_bin(INTERVAL '10 seconds', date_time)`) joins the
//! rows of both inputs in the same window and key: Nexmark q8's join.
//!
//! - Inputs: the join's two; output schema: the join's.
//! - Each epoch: both sides' rows are added to the rows kept from earlier
//!   epochs; the windows the watermark passed are joined (by DataFusion's
//!   own join over them, planned once over slots: hash join, filters, outer
//!   joins all as the SQL says) and emitted; the other rows are kept.
//! - Emits: once per window, when the watermark passes its end; so an outer
//!   join's unmatched rows come out then too.
//! - State: the rows of windows not yet closed, per side (`<operator>.left`,
//!   `<operator>.right`), with the watermark; bounded by it.
//! - Late rows: rows for a window already joined are dropped and counted,
//!   or dead letters (`LATE`), as for a windowed aggregate.

use std::fmt;
use std::hash::Hash;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::Session;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DFSchemaRef, Result, internal_datafusion_err, internal_err};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::{
    Expr, Extension, Join, LogicalPlan, UserDefinedLogicalNode, UserDefinedLogicalNodeCore,
};
use datafusion::physical_expr::EquivalenceProperties;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PhysicalExpr, PlanProperties,
    collect,
};
use datafusion::physical_planner::{ExtensionPlanner, PhysicalPlanner};
use futures::TryStreamExt;

use crate::epoch::EpochBinding;
use crate::ops::slot::{SlotNode, fill};
use crate::ops::window_aggregate::{Windowing, humantime_us, late_rows, split_closed};
use crate::state::{OperatorState, StateScope};

/// A windowed join in a logical plan; `windowing.window` is the index of
/// the window keys among the join's `on` pairs.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd)]
pub(crate) struct WindowJoinNode {
    pub windowing: Windowing,
    pub join: Join,
}

impl WindowJoinNode {
    /// `join`, computed across epochs as `windowing` says.
    pub(crate) fn plan(windowing: Windowing, join: Join) -> LogicalPlan {
        LogicalPlan::Extension(Extension {
            node: Arc::new(WindowJoinNode { windowing, join }),
        })
    }
}

impl UserDefinedLogicalNodeCore for WindowJoinNode {
    fn name(&self) -> &str {
        "WindowJoin"
    }
    fn inputs(&self) -> Vec<&LogicalPlan> {
        vec![&self.join.left, &self.join.right]
    }
    fn schema(&self) -> &DFSchemaRef {
        &self.join.schema
    }
    fn expressions(&self) -> Vec<Expr> {
        let mut out: Vec<Expr> = self
            .join
            .on
            .iter()
            .flat_map(|(l, r)| [l.clone(), r.clone()])
            .collect();
        out.extend(self.join.filter.clone());
        out
    }
    fn fmt_for_explain(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let w = &self.windowing;
        let on: Vec<String> = self
            .join
            .on
            .iter()
            .map(|(l, r)| format!("{l} = {r}"))
            .collect();
        write!(
            f,
            "WindowJoin: operator={} type={} size={} on=[{}]",
            w.operator,
            self.join.join_type,
            humantime_us(w.kind.length_us()),
            on.join(", ")
        )?;
        if let Some(filter) = &self.join.filter {
            write!(f, " filter={filter}")?;
        }
        Ok(())
    }
    fn with_exprs_and_inputs(&self, exprs: Vec<Expr>, inputs: Vec<LogicalPlan>) -> Result<Self> {
        let [left, right]: [LogicalPlan; 2] = inputs
            .try_into()
            .map_err(|_| internal_datafusion_err!("WindowJoin rebuilt without two inputs"))?;
        let pairs = self.join.on.len();
        let want = pairs * 2 + usize::from(self.join.filter.is_some());
        if exprs.len() != want {
            return internal_err!("WindowJoin rebuilt with a different number of expressions");
        }
        let on = exprs[..pairs * 2]
            .chunks(2)
            .map(|p| (p[0].clone(), p[1].clone()))
            .collect();
        let filter = self.join.filter.as_ref().map(|_| exprs[pairs * 2].clone());
        let join = Join::try_new(
            Arc::new(left),
            Arc::new(right),
            on,
            filter,
            self.join.join_type,
            self.join.join_constraint,
            self.join.null_equality,
            self.join.null_aware,
        )?;
        Ok(WindowJoinNode {
            windowing: self.windowing.clone(),
            join,
        })
    }
}

/// Plans [`WindowJoinNode`] into [`WindowJoinExec`].
#[derive(Debug, Default)]
pub(crate) struct WindowJoinPlanner;

#[async_trait]
impl ExtensionPlanner for WindowJoinPlanner {
    async fn plan_extension(
        &self,
        planner: &dyn PhysicalPlanner,
        node: &dyn UserDefinedLogicalNode,
        _logical_inputs: &[&LogicalPlan],
        physical_inputs: &[Arc<dyn ExecutionPlan>],
        session: &dyn Session,
        ctx: &PhysicalPlanningContext,
    ) -> Result<Option<Arc<dyn ExecutionPlan>>> {
        let Some(node) = node.as_any().downcast_ref::<WindowJoinNode>() else {
            return Ok(None);
        };
        let [left, right] = physical_inputs else {
            return internal_err!("WindowJoin has two inputs");
        };
        let j = &node.join;
        let Some((l, r)) = j.on.get(node.windowing.window) else {
            return internal_err!("WindowJoin: no window key at {}", node.windowing.window);
        };
        let starts = [
            planner.create_physical_expr(l, j.left.schema(), session, ctx)?,
            planner.create_physical_expr(r, j.right.schema(), session, ctx)?,
        ];
        // the join itself, planned by DataFusion over two slots
        let over_slots = LogicalPlan::Join(Join {
            left: Arc::new(SlotNode::plan(0, &j.left)),
            right: Arc::new(SlotNode::plan(1, &j.right)),
            ..j.clone()
        });
        let joined = planner.create_physical_plan(&over_slots, session).await?;
        Ok(Some(Arc::new(WindowJoinExec::new(
            node.windowing.clone(),
            [Arc::clone(left), Arc::clone(right)],
            starts,
            joined,
            Arc::clone(j.schema.inner()),
        ))))
    }
}

/// Joins two streams window by window; see the module docs.
#[derive(Debug)]
pub(crate) struct WindowJoinExec {
    windowing: Windowing,
    inputs: [Arc<dyn ExecutionPlan>; 2],
    /// Each side's window start, over that side's rows.
    starts: [Arc<dyn PhysicalExpr>; 2],
    /// The join over slot 0 (left) and slot 1 (right).
    joined: Arc<dyn ExecutionPlan>,
    schema: SchemaRef,
    props: Arc<PlanProperties>,
}

impl WindowJoinExec {
    fn new(
        windowing: Windowing,
        inputs: [Arc<dyn ExecutionPlan>; 2],
        starts: [Arc<dyn PhysicalExpr>; 2],
        joined: Arc<dyn ExecutionPlan>,
        schema: SchemaRef,
    ) -> Self {
        let props = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(Arc::clone(&schema)),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Final,
            Boundedness::Bounded,
        ));
        Self {
            windowing,
            inputs,
            starts,
            joined,
            schema,
            props,
        }
    }

    fn side(&self, i: usize) -> String {
        format!(
            "{}.{}",
            self.windowing.operator,
            if i == 0 { "left" } else { "right" }
        )
    }
}

impl DisplayAs for WindowJoinExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let w = &self.windowing;
        write!(
            f,
            "WindowJoinExec: operator={} size={} windows=[{}, {}]",
            w.operator,
            humantime_us(w.kind.length_us()),
            self.starts[0],
            self.starts[1]
        )
    }
}

impl ExecutionPlan for WindowJoinExec {
    fn name(&self) -> &str {
        "WindowJoinExec"
    }
    fn properties(&self) -> &Arc<PlanProperties> {
        &self.props
    }
    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.inputs[0], &self.inputs[1]]
    }
    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        for e in &self.starts {
            if f(e)? == TreeNodeRecursion::Stop {
                return Ok(TreeNodeRecursion::Stop);
            }
        }
        Ok(TreeNodeRecursion::Continue)
    }
    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let [left, right]: [Arc<dyn ExecutionPlan>; 2] = children
            .try_into()
            .map_err(|_| internal_datafusion_err!("WindowJoinExec rebuilt without two children"))?;
        Ok(Arc::new(WindowJoinExec::new(
            self.windowing.clone(),
            [left, right],
            self.starts.clone(),
            Arc::clone(&self.joined),
            Arc::clone(&self.schema),
        )))
    }
    fn execute(
        &self,
        partition: usize,
        ctx: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        if partition != 0 {
            return internal_err!("WindowJoinExec has one partition, asked for {partition}");
        }
        let run = self.epoch();
        let stream = futures::stream::once(run.run(ctx))
            .map_ok(|batches| futures::stream::iter(batches.into_iter().map(Ok)))
            .try_flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            Arc::clone(&self.schema),
            stream,
        )))
    }
}

impl WindowJoinExec {
    fn epoch(&self) -> Epoch {
        Epoch {
            windowing: self.windowing.clone(),
            inputs: self.inputs.clone(),
            starts: self.starts.clone(),
            joined: Arc::clone(&self.joined),
            schema: Arc::clone(&self.schema),
            names: [self.side(0), self.side(1)],
        }
    }
}

/// One epoch of a windowed join.
struct Epoch {
    windowing: Windowing,
    inputs: [Arc<dyn ExecutionPlan>; 2],
    starts: [Arc<dyn PhysicalExpr>; 2],
    joined: Arc<dyn ExecutionPlan>,
    schema: SchemaRef,
    names: [String; 2],
}

impl Epoch {
    async fn run(self, ctx: Arc<TaskContext>) -> Result<Vec<RecordBatch>> {
        let w = &self.windowing;
        let scope = StateScope::of_task(&ctx)?;
        let dead = Arc::clone(EpochBinding::of_task(&ctx)?.dead_letters());
        let previous = [
            scope.previous(&self.names[0]),
            scope.previous(&self.names[1]),
        ];
        let before = previous[0].as_ref().and_then(|p| p.watermark);

        // each side's kept rows and this epoch's, with the window start appended
        let mut sides: [Vec<RecordBatch>; 2] = [Vec::new(), Vec::new()];
        let mut fresh = 0usize;
        for i in 0..2 {
            let input = late_rows(
                w,
                &self.starts[i],
                before,
                Arc::clone(&self.inputs[i]),
                Arc::clone(&dead),
            );
            let schema = input.schema();
            let new = collect(input, Arc::clone(&ctx)).await?;
            fresh += new.iter().map(|b| b.num_rows()).sum::<usize>();
            if let Some(p) = &previous[i] {
                for b in p.batches.iter().filter(|b| b.num_rows() > 0) {
                    if b.schema().fields() != schema.fields() {
                        return internal_err!(
                            "the state of window join `{}` does not fit its input; run with --reset to start over",
                            w.operator
                        );
                    }
                    sides[i].push(b.clone());
                }
            }
            sides[i].extend(new);
        }
        let after = scope.watermark(&w.sources, before);
        if fresh == 0 && after == before {
            return Ok(Vec::new());
        }

        // the windows the watermark passed are joined now, the rest kept
        let mut closed: [Vec<RecordBatch>; 2] = [Vec::new(), Vec::new()];
        for i in 0..2 {
            let keyed = with_start(&sides[i], &self.starts[i])?;
            let last = keyed.first().map(|b| b.num_columns() - 1).unwrap_or(0);
            let (c, o) = split_closed(&keyed, last, w.kind.length_us(), after)?;
            closed[i] = drop_last(c, last)?;
            scope.save(
                &self.names[i],
                OperatorState {
                    batches: drop_last(o, last)?,
                    watermark: after,
                },
            );
        }
        if closed.iter().all(|c| c.is_empty()) {
            return Ok(Vec::new());
        }
        let plan = fill(&self.joined, &closed)?;
        collect(plan, ctx)
            .await?
            .into_iter()
            .map(|b| {
                b.with_schema(Arc::clone(&self.schema)).map_err(|e| {
                    internal_datafusion_err!("window join `{}`: output schema: {e}", w.operator)
                })
            })
            .collect()
    }
}

/// `batches` with the window start (`start` evaluated) as a last column.
fn with_start(batches: &[RecordBatch], start: &Arc<dyn PhysicalExpr>) -> Result<Vec<RecordBatch>> {
    batches
        .iter()
        .map(|b| {
            let s = start.evaluate(b)?.into_array(b.num_rows())?;
            let mut fields: Vec<_> = b.schema().fields().iter().cloned().collect();
            fields.push(Arc::new(datafusion::arrow::datatypes::Field::new(
                "__window_start",
                s.data_type().clone(),
                true,
            )));
            let mut columns = b.columns().to_vec();
            columns.push(s);
            Ok(RecordBatch::try_new(
                Arc::new(datafusion::arrow::datatypes::Schema::new(fields)),
                columns,
            )?)
        })
        .collect()
}

/// `batches` without column `last`, compacted into one batch.
fn drop_last(batches: Vec<RecordBatch>, last: usize) -> Result<Vec<RecordBatch>> {
    let kept: Vec<RecordBatch> = batches
        .into_iter()
        .filter(|b| b.num_rows() > 0)
        .map(|mut b| {
            b.remove_column(last);
            b
        })
        .collect();
    Ok(match kept.first() {
        Some(first) if kept.len() > 1 => vec![datafusion::arrow::compute::concat_batches(
            &first.schema(),
            &kept,
        )?],
        _ => kept,
    })
}
