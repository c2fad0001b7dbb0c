//! `StageExec`: a transparent marker at a stage border that counts what flows through it.
//!
//! A chain of SQL stages is one DataFusion plan, so stage borders would vanish
//! in it. [`StageNode`] (logical) and [`StageExec`] (physical) keep them
//! visible without blocking optimisation: filters and projections are pushed
//! through the node (logical and physical filter pushdown, projection
//! pruning, limit pushdown), so a predicate written in a later stage still
//! reaches the Parquet scan of a source.
//!
//! - Input/output schema: identical; batches pass through untouched.
//! - Emits: each input batch, immediately.
//! - State: the [`StageCounters`] (rows, batches, bytes, first/last batch time)
//!   that the run summary reads from the executed plan.
//! - Failure: forwards its input's errors unchanged.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::Session;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DFSchemaRef, Result, internal_datafusion_err};
use datafusion::config::ConfigOptions;
use datafusion::execution::{RecordBatchStream, SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::{
    Expr, LogicalPlan, UserDefinedLogicalNode, UserDefinedLogicalNodeCore,
};
use datafusion::physical_plan::filter_pushdown::{
    ChildPushdownResult, FilterDescription, FilterPushdownPhase, FilterPushdownPropagation,
};
use datafusion::physical_plan::metrics::{ExecutionPlanMetricsSet, MetricBuilder, MetricsSet};
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, PhysicalExpr,
    PlanProperties,
};
use datafusion::physical_planner::{ExtensionPlanner, PhysicalPlanner};
use futures::{Stream, StreamExt};

use crate::error::in_component;
use crate::metrics::ComponentId;

/// What a stage border belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum StageRole {
    /// The output of a source scan.
    Source,
    /// The output of a transformation stage.
    Stage,
}

impl StageRole {
    /// The component a border named `name` with this role belongs to.
    pub(crate) fn component(self, name: &str) -> ComponentId {
        match self {
            StageRole::Source => ComponentId::Source(name.to_string()),
            StageRole::Stage => ComponentId::Stage(name.to_string()),
        }
    }
}

impl fmt::Display for StageRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StageRole::Source => "source",
            StageRole::Stage => "stage",
        })
    }
}

/// Live counters of one stage border in one executed plan.
#[derive(Debug, Default)]
pub(crate) struct StageCounters {
    /// Rows that passed.
    pub rows: AtomicU64,
    /// Batches that passed.
    pub batches: AtomicU64,
    /// Bytes of the batches that passed (Arrow buffer sizes of the slices).
    pub bytes: AtomicU64,
    /// Nanoseconds after `origin` of the first poll, plus one (0 = never).
    first_ns: AtomicU64,
    /// Nanoseconds after `origin` of the last batch or end of stream.
    last_ns: AtomicU64,
    origin: std::sync::OnceLock<Instant>,
}

impl StageCounters {
    fn mark(&self, now: Instant) {
        let origin = *self.origin.get_or_init(|| now);
        let ns = now.saturating_duration_since(origin).as_nanos() as u64 + 1;
        if self.first_ns.load(Ordering::Relaxed) == 0 {
            let _ = self
                .first_ns
                .compare_exchange(0, ns, Ordering::Relaxed, Ordering::Relaxed);
        }
        self.last_ns.fetch_max(ns, Ordering::Relaxed);
    }

    /// Time between the first poll and the last batch.
    pub(crate) fn active(&self) -> std::time::Duration {
        let first = self.first_ns.load(Ordering::Relaxed);
        let last = self.last_ns.load(Ordering::Relaxed);
        std::time::Duration::from_nanos(last.saturating_sub(first))
    }
}

/// Logical marker of a stage's output inside the fused plan.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd)]
pub(crate) struct StageNode {
    /// Stage name.
    pub stage: String,
    /// Stage kind (`sql`, ...).
    pub kind: String,
    /// The stage's plan.
    pub input: LogicalPlan,
}

impl Hash for StageNode {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.stage.hash(state);
        self.kind.hash(state);
        self.input.hash(state);
    }
}

impl StageNode {
    /// Wraps `input` as the output of `stage`.
    pub(crate) fn wrap(stage: &str, kind: &str, input: LogicalPlan) -> LogicalPlan {
        LogicalPlan::Extension(datafusion::logical_expr::Extension {
            node: Arc::new(StageNode {
                stage: stage.to_string(),
                kind: kind.to_string(),
                input,
            }),
        })
    }
}

impl UserDefinedLogicalNodeCore for StageNode {
    fn name(&self) -> &str {
        "Stage"
    }
    fn inputs(&self) -> Vec<&LogicalPlan> {
        vec![&self.input]
    }
    fn schema(&self) -> &DFSchemaRef {
        self.input.schema()
    }
    fn expressions(&self) -> Vec<Expr> {
        vec![]
    }
    fn prevent_predicate_push_down_columns(&self) -> std::collections::HashSet<String> {
        // transparent: every predicate may move below the border
        std::collections::HashSet::new()
    }
    fn necessary_children_exprs(&self, output_columns: &[usize]) -> Option<Vec<Vec<usize>>> {
        // output column i is input column i, so a parent's projection passes through
        Some(vec![output_columns.to_vec()])
    }
    fn supports_limit_pushdown(&self) -> bool {
        true
    }
    fn fmt_for_explain(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "Stage: {} ({})", self.stage, self.kind)
    }
    fn with_exprs_and_inputs(
        &self,
        _exprs: Vec<Expr>,
        mut inputs: Vec<LogicalPlan>,
    ) -> Result<Self> {
        let input = inputs
            .pop()
            .ok_or_else(|| internal_datafusion_err!("Stage node rebuilt without an input"))?;
        Ok(StageNode {
            stage: self.stage.clone(),
            kind: self.kind.clone(),
            input,
        })
    }
}

/// Plans [`StageNode`] into [`StageExec`].
#[derive(Debug, Default)]
pub(crate) struct StagePlanner;

#[async_trait]
impl ExtensionPlanner for StagePlanner {
    async fn plan_extension(
        &self,
        _planner: &dyn PhysicalPlanner,
        node: &dyn UserDefinedLogicalNode,
        _logical_inputs: &[&LogicalPlan],
        physical_inputs: &[Arc<dyn ExecutionPlan>],
        _session: &dyn Session,
        _ctx: &PhysicalPlanningContext,
    ) -> Result<Option<Arc<dyn ExecutionPlan>>> {
        let Some(stage) = node.as_any().downcast_ref::<StageNode>() else {
            return Ok(None);
        };
        let input = physical_inputs.first().ok_or_else(|| {
            internal_datafusion_err!("stage `{}` has no physical input", stage.stage)
        })?;
        Ok(Some(Arc::new(StageExec::new(
            &stage.stage,
            &stage.kind,
            StageRole::Stage,
            Arc::clone(input),
        ))))
    }
}

/// Physical marker of a stage border; see the module docs.
#[derive(Debug)]
pub(crate) struct StageExec {
    stage: String,
    kind: String,
    role: StageRole,
    input: Arc<dyn ExecutionPlan>,
    counters: Arc<StageCounters>,
    progress: Option<Arc<AtomicU64>>,
    metrics: ExecutionPlanMetricsSet,
    props: Arc<PlanProperties>,
}

impl StageExec {
    /// A border named `stage` above `input`.
    pub(crate) fn new(
        stage: &str,
        kind: &str,
        role: StageRole,
        input: Arc<dyn ExecutionPlan>,
    ) -> Self {
        let props = PlanProperties::new(
            input.equivalence_properties().clone(),
            input.output_partitioning().clone(),
            input.pipeline_behavior(),
            input.boundedness(),
        );
        Self {
            stage: stage.to_string(),
            kind: kind.to_string(),
            role,
            input,
            counters: Arc::new(StageCounters::default()),
            progress: None,
            metrics: ExecutionPlanMetricsSet::new(),
            props: Arc::new(props),
        }
    }

    /// Also adds every row that passes to `progress` (a run-wide counter).
    pub(crate) fn with_progress(mut self, progress: Arc<AtomicU64>) -> Self {
        self.progress = Some(progress);
        self
    }

    /// Stage name.
    pub(crate) fn stage(&self) -> &str {
        &self.stage
    }

    /// Source or stage.
    pub(crate) fn role(&self) -> StageRole {
        self.role
    }

    /// The counters of this border.
    pub(crate) fn counters(&self) -> &Arc<StageCounters> {
        &self.counters
    }
}

impl DisplayAs for StageExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "StageExec: {}={} kind={}",
            self.role, self.stage, self.kind
        )
    }
}

impl ExecutionPlan for StageExec {
    /// The input's statistics are passed on (see [`crate::ops::pass_stats`]).
    fn child_stats_requests(
        &self,
        partition: Option<usize>,
    ) -> Vec<datafusion::physical_plan::ChildStats> {
        crate::ops::pass_stats::of_input(partition)
    }
    /// Every row passes unchanged: the input's statistics.
    fn statistics_from_inputs(
        &self,
        input_stats: &[Arc<datafusion::common::Statistics>],
        _args: &datafusion::physical_plan::StatisticsArgs,
    ) -> Result<Arc<datafusion::common::Statistics>> {
        crate::ops::pass_stats::passed_on(input_stats, &self.schema(), true)
    }
    fn name(&self) -> &str {
        "StageExec"
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
    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        vec![false]
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
            .ok_or_else(|| internal_datafusion_err!("StageExec rebuilt without a child"))?;
        let mut new = StageExec::new(&self.stage, &self.kind, self.role, input);
        new.counters = Arc::clone(&self.counters);
        new.progress = self.progress.clone();
        Ok(Arc::new(new))
    }
    fn supports_limit_pushdown(&self) -> bool {
        true
    }
    fn gather_filters_for_pushdown(
        &self,
        _phase: FilterPushdownPhase,
        parent_filters: Vec<Arc<dyn PhysicalExpr>>,
        _config: &ConfigOptions,
    ) -> Result<FilterDescription> {
        FilterDescription::from_children(parent_filters, &self.children())
    }
    fn handle_child_pushdown_result(
        &self,
        _phase: FilterPushdownPhase,
        child_pushdown_result: ChildPushdownResult,
        _config: &ConfigOptions,
    ) -> Result<FilterPushdownPropagation<Arc<dyn ExecutionPlan>>> {
        Ok(FilterPushdownPropagation::if_all(child_pushdown_result))
    }
    fn execute(
        &self,
        partition: usize,
        ctx: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let input = self.input.execute(partition, ctx)?;
        let output_rows = MetricBuilder::new(&self.metrics).output_rows(partition);
        let batches = MetricBuilder::new(&self.metrics).counter("output_batches", partition);
        let bytes = MetricBuilder::new(&self.metrics).counter("output_bytes", partition);
        Ok(Box::pin(StageStream {
            input,
            component: self.role.component(&self.stage),
            counters: Arc::clone(&self.counters),
            progress: self.progress.clone(),
            output_rows,
            batches,
            bytes,
            started: false,
        }))
    }
    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }
}

struct StageStream {
    input: SendableRecordBatchStream,
    /// Named in the errors that come up through this border.
    component: ComponentId,
    counters: Arc<StageCounters>,
    progress: Option<Arc<AtomicU64>>,
    output_rows: datafusion::physical_plan::metrics::Count,
    batches: datafusion::physical_plan::metrics::Count,
    bytes: datafusion::physical_plan::metrics::Count,
    started: bool,
}

impl Stream for StageStream {
    type Item = Result<RecordBatch>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if !self.started {
            self.started = true;
            self.counters.mark(Instant::now());
        }
        match self.input.poll_next_unpin(cx) {
            Poll::Ready(Some(Ok(batch))) => {
                let rows = batch.num_rows() as u64;
                let size = slice_bytes(&batch) as u64;
                self.counters.rows.fetch_add(rows, Ordering::Relaxed);
                self.counters.batches.fetch_add(1, Ordering::Relaxed);
                self.counters.bytes.fetch_add(size, Ordering::Relaxed);
                if let Some(p) = &self.progress {
                    p.fetch_add(rows, Ordering::Relaxed);
                }
                self.output_rows.add(rows as usize);
                self.batches.add(1);
                self.bytes.add(size as usize);
                self.counters.mark(Instant::now());
                Poll::Ready(Some(Ok(batch)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(in_component(e, &self.component)))),
            Poll::Ready(None) => {
                self.counters.mark(Instant::now());
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl RecordBatchStream for StageStream {
    fn schema(&self) -> SchemaRef {
        self.input.schema()
    }
}

/// Bytes of the data a batch's slices refer to (not of whole shared
/// buffers): what the stage counts as having passed through it.
fn slice_bytes(batch: &RecordBatch) -> usize {
    batch
        .columns()
        .iter()
        .map(|c| c.to_data().get_slice_memory_size().unwrap_or(0))
        .sum()
}

/// Every [`StageExec`] in a plan, outermost first.
pub(crate) fn stage_execs(plan: &Arc<dyn ExecutionPlan>) -> Vec<&StageExec> {
    let mut out = Vec::new();
    fn walk<'a>(p: &'a Arc<dyn ExecutionPlan>, out: &mut Vec<&'a StageExec>) {
        if let Some(s) = p.downcast_ref::<StageExec>() {
            out.push(s);
        }
        for c in p.children() {
            walk(c, out);
        }
    }
    walk(plan, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::Int64Array;
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::datasource::MemTable;
    use datafusion::execution::SessionStateBuilder;
    use datafusion::physical_plan::{collect, displayable};
    use datafusion::prelude::SessionContext;

    #[derive(Debug)]
    struct Planner;
    #[async_trait]
    impl datafusion::execution::context::QueryPlanner for Planner {
        async fn create_physical_plan(
            &self,
            plan: &LogicalPlan,
            session: &dyn Session,
        ) -> Result<Arc<dyn ExecutionPlan>> {
            datafusion::physical_planner::DefaultPhysicalPlanner::with_extension_planners(vec![
                Arc::new(StagePlanner),
            ])
            .create_physical_plan(plan, session)
            .await
        }
    }

    #[tokio::test]
    async fn filters_and_projections_cross_the_border_and_rows_are_counted() -> Result<()> {
        let state = SessionStateBuilder::new()
            .with_default_features()
            .with_query_planner(Arc::new(Planner))
            .build();
        let ctx = SessionContext::new_with_state(state);
        let schema = Arc::new(Schema::new(vec![
            Field::new("a", DataType::Int64, false),
            Field::new("b", DataType::Int64, false),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from_iter_values(0..100)),
                Arc::new(Int64Array::from_iter_values(100..200)),
            ],
        )?;
        ctx.register_table("t", Arc::new(MemTable::try_new(schema, vec![vec![batch]])?))?;
        let inner = ctx
            .sql("SELECT a, b, a * 2 AS c FROM t")
            .await?
            .into_unoptimized_plan();
        let staged = StageNode::wrap("doubled", "sql", inner);
        let df = ctx
            .execute_logical_plan(staged)
            .await?
            .filter(datafusion::prelude::col("a").lt(datafusion::prelude::lit(10i64)))?;
        let df = df.select_columns(&["c"])?;
        let plan = df.create_physical_plan().await?;
        let text = displayable(plan.as_ref()).indent(true).to_string();
        // the filter of the outer query ran below the border
        let stage_line = text
            .lines()
            .position(|l| l.contains("StageExec: stage=doubled"))
            .unwrap();
        let filter_line = text.lines().position(|l| l.contains("FilterExec")).unwrap();
        assert!(
            filter_line > stage_line,
            "filter should be below the stage border:\n{text}"
        );
        let out = collect(Arc::clone(&plan), ctx.task_ctx()).await?;
        assert_eq!(out.iter().map(|b| b.num_rows()).sum::<usize>(), 10);
        let stages = stage_execs(&plan);
        assert_eq!(stages.len(), 1);
        assert_eq!(stages[0].counters().rows.load(Ordering::Relaxed), 10);
        Ok(())
    }
}
