//! `WindowAggregateExec`: a `GROUP BY` over event-time windows, computed
//! across epochs and emitted once per window.
//!
//! A stage's `GROUP BY date_bin(INTERVAL '1 minute', ts), k` over a source
//! with `event_time = "ts"` is planned as this operator instead of a
//! per-epoch aggregate (see `compile/windows.rs`).
//!
//! - Input: the aggregate's input; output schema: the aggregate's.
//! - Each epoch: the epoch's rows are aggregated into accumulator *states*
//!   (DataFusion's `Partial` mode, in parallel), merged with the states kept
//!   from earlier epochs (`PartialReduce`), then split by the watermark:
//!   groups whose window ended at or before it are finished (`Final`) and
//!   emitted, the rest are kept. Any aggregate works, built-in or a UDAF,
//!   through `Accumulator::state` / `merge_batch`.
//! - Emits: once, after its input is read whole; a window's rows come out
//!   in the epoch the watermark passes its end, never again.
//! - State: the open windows' accumulator states, one row per (window,
//!   key), and the watermark; saved in the sink's [`StateScope`] and
//!   committed with the epoch. Closed windows are evicted, so the state is
//!   bounded by the watermark.
//! - Late rows: a row for a window already emitted (possible when an idle
//!   source held the watermark back) is dropped and counted, or a dead
//!   letter (`LATE`) when a source upstream says `late = "dead_letter"`.
//! - Failure: a state that does not fit the aggregate (another pipeline's,
//!   or edited) fails the epoch naming the operator.

use std::fmt;
use std::hash::Hash;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{
    Array, AsArray, BooleanArray, RecordBatch, TimestampMicrosecondArray,
};
use datafusion::arrow::compute::kernels::cmp::{gt, lt_eq};
use datafusion::arrow::compute::{cast, concat_batches, filter_record_batch, not};
use datafusion::arrow::datatypes::{DataType, SchemaRef, TimeUnit, TimestampMicrosecondType};
use datafusion::catalog::Session;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DFSchemaRef, Result, internal_datafusion_err, internal_err};
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::{
    Aggregate, Expr, Extension, LogicalPlan, UserDefinedLogicalNode, UserDefinedLogicalNodeCore,
};
use datafusion::physical_expr::EquivalenceProperties;
use datafusion::physical_expr::aggregate::AggregateFunctionExpr;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode, PhysicalGroupBy};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PhysicalExpr, PlanProperties,
    collect,
};
use datafusion::physical_planner::{ExtensionPlanner, PhysicalPlanner};
use futures::TryStreamExt;
use sluice_contract::ErrorCode;

use crate::dead_letter::{DeadLetter, DeadLetters};
use crate::epoch::EpochBinding;
use crate::metrics::ComponentId;
use crate::ops::check::row_json;
use crate::ops::map::MapExec;
use crate::ops::slot::SlotNode;
use crate::state::clock::END_OF_TIME;
use crate::state::format_event_time;
use crate::state::{Late, OperatorState, StateScope};

/// What makes an aggregate a windowed one: the group key that is a window
/// start, the windows' length, and the event-time sources upstream.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd)]
pub(crate) struct Windowing {
    /// The state's name: `<stage>` or `<stage>.<n>`.
    pub operator: String,
    /// The stage it belongs to (messages, dead letters).
    pub stage: String,
    /// Index of the window-start key among the group keys.
    pub window: usize,
    /// Length of a window in µs: it ends at start + size.
    pub size_us: i64,
    /// The event-time sources upstream: the watermark is their least.
    pub sources: Vec<String>,
    /// What a row for a window already emitted does.
    pub late: Late,
}

/// A windowed aggregate in a logical plan; see the module docs.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd)]
pub(crate) struct WindowAggregateNode {
    pub windowing: Windowing,
    pub aggregate: Aggregate,
}

impl WindowAggregateNode {
    /// `aggregate`, computed across epochs as `windowing` says.
    pub(crate) fn plan(windowing: Windowing, aggregate: Aggregate) -> LogicalPlan {
        LogicalPlan::Extension(Extension {
            node: Arc::new(WindowAggregateNode {
                windowing,
                aggregate,
            }),
        })
    }
}

impl UserDefinedLogicalNodeCore for WindowAggregateNode {
    fn name(&self) -> &str {
        "WindowAggregate"
    }
    fn inputs(&self) -> Vec<&LogicalPlan> {
        vec![&self.aggregate.input]
    }
    fn schema(&self) -> &DFSchemaRef {
        &self.aggregate.schema
    }
    fn expressions(&self) -> Vec<Expr> {
        let a = &self.aggregate;
        a.group_expr.iter().chain(&a.aggr_expr).cloned().collect()
    }
    fn necessary_children_exprs(&self, _output_columns: &[usize]) -> Option<Vec<Vec<usize>>> {
        // whatever is read of the output, the groups and aggregates need these
        let input = self.aggregate.input.schema();
        let mut used: Vec<usize> = UserDefinedLogicalNodeCore::expressions(self)
            .iter()
            .flat_map(|e| e.column_refs())
            .filter_map(|c| input.index_of_column(c).ok())
            .collect();
        used.sort_unstable();
        used.dedup();
        Some(vec![used])
    }
    fn fmt_for_explain(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let w = &self.windowing;
        let exprs: Vec<String> = UserDefinedLogicalNodeCore::expressions(self)
            .iter()
            .map(|e| e.to_string())
            .collect();
        write!(
            f,
            "WindowAggregate: operator={} window={} size={}µs sources=[{}] exprs=[{}]",
            w.operator,
            self.aggregate.group_expr[w.window],
            w.size_us,
            w.sources.join(", "),
            exprs.join(", ")
        )
    }
    fn with_exprs_and_inputs(
        &self,
        exprs: Vec<Expr>,
        mut inputs: Vec<LogicalPlan>,
    ) -> Result<Self> {
        let input = inputs
            .pop()
            .ok_or_else(|| internal_datafusion_err!("WindowAggregate rebuilt without an input"))?;
        let groups = self.aggregate.group_expr.len();
        if exprs.len() != groups + self.aggregate.aggr_expr.len() {
            return internal_err!("WindowAggregate rebuilt with a different number of expressions");
        }
        let (group_expr, aggr_expr) = exprs.split_at(groups);
        let aggregate =
            Aggregate::try_new(Arc::new(input), group_expr.to_vec(), aggr_expr.to_vec())?;
        if aggregate.schema.fields().len() != self.aggregate.schema.fields().len() {
            return internal_err!("WindowAggregate rebuilt with another schema");
        }
        Ok(WindowAggregateNode {
            windowing: self.windowing.clone(),
            aggregate,
        })
    }
}

/// Plans [`WindowAggregateNode`] into [`WindowAggregateExec`].
#[derive(Debug, Default)]
pub(crate) struct WindowAggregatePlanner;

#[async_trait]
impl ExtensionPlanner for WindowAggregatePlanner {
    async fn plan_extension(
        &self,
        planner: &dyn PhysicalPlanner,
        node: &dyn UserDefinedLogicalNode,
        _logical_inputs: &[&LogicalPlan],
        physical_inputs: &[Arc<dyn ExecutionPlan>],
        session: &dyn Session,
        _ctx: &PhysicalPlanningContext,
    ) -> Result<Option<Arc<dyn ExecutionPlan>>> {
        let Some(node) = node.as_any().downcast_ref::<WindowAggregateNode>() else {
            return Ok(None);
        };
        let [input] = physical_inputs else {
            return internal_err!("WindowAggregate has one input");
        };
        let parts = AggregateParts::plan(planner, session, &node.aggregate).await?;
        let exec = WindowAggregateExec::try_new(
            node.windowing.clone(),
            parts,
            Arc::clone(input),
            Arc::clone(node.aggregate.schema.inner()),
        )?;
        Ok(Some(Arc::new(exec)))
    }
}

/// DataFusion's physical form of an aggregate: the pieces every mode shares.
#[derive(Debug, Clone)]
pub(crate) struct AggregateParts {
    pub group_by: Arc<PhysicalGroupBy>,
    pub aggr_expr: Vec<Arc<AggregateFunctionExpr>>,
    pub filter_expr: Vec<Option<Arc<dyn PhysicalExpr>>>,
    /// The schema of the aggregate's input.
    pub input_schema: SchemaRef,
}

impl AggregateParts {
    /// Plans `aggregate` with DataFusion's own planner over a slot of its
    /// input's schema, and keeps the physical expressions of the first
    /// (raw-input) aggregate: the same lowering as any `GROUP BY`.
    pub(crate) async fn plan(
        planner: &dyn PhysicalPlanner,
        session: &dyn Session,
        aggregate: &Aggregate,
    ) -> Result<Self> {
        let probe = LogicalPlan::Aggregate(Aggregate::try_new(
            Arc::new(SlotNode::plan(0, &aggregate.input)),
            aggregate.group_expr.clone(),
            aggregate.aggr_expr.clone(),
        )?);
        let physical = planner.create_physical_plan(&probe, session).await?;
        let mut found = None;
        let mut stack = vec![physical];
        while let Some(p) = stack.pop() {
            if let Some(a) = p.downcast_ref::<AggregateExec>()
                && matches!(
                    a.mode(),
                    AggregateMode::Partial
                        | AggregateMode::Single
                        | AggregateMode::SinglePartitioned
                )
            {
                found = Some(AggregateParts {
                    group_by: Arc::new(a.group_expr().clone()),
                    aggr_expr: a.aggr_expr().to_vec(),
                    filter_expr: a.filter_expr().to_vec(),
                    input_schema: a.input_schema(),
                });
                break;
            }
            stack.extend(p.children().into_iter().cloned());
        }
        let parts = found.ok_or_else(|| {
            internal_datafusion_err!("DataFusion planned the aggregate without an AggregateExec")
        })?;
        if parts.group_by.has_grouping_set() {
            return internal_err!("a windowed aggregate cannot have grouping sets");
        }
        Ok(parts)
    }

    /// An aggregate of `mode` over `input`.
    pub(crate) fn exec(
        &self,
        mode: AggregateMode,
        input: Arc<dyn ExecutionPlan>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let group_by = match mode {
            AggregateMode::Partial | AggregateMode::Single => self.group_by.as_ref().clone(),
            _ => self.group_by.as_final(),
        };
        Ok(Arc::new(AggregateExec::try_new(
            mode,
            group_by,
            self.aggr_expr.clone(),
            self.filter_expr.clone(),
            input,
            Arc::clone(&self.input_schema),
        )?))
    }
}

/// Computes a windowed aggregate across epochs; see the module docs.
#[derive(Debug)]
pub(crate) struct WindowAggregateExec {
    windowing: Windowing,
    parts: AggregateParts,
    input: Arc<dyn ExecutionPlan>,
    schema: SchemaRef,
    props: Arc<PlanProperties>,
}

impl WindowAggregateExec {
    fn try_new(
        windowing: Windowing,
        parts: AggregateParts,
        input: Arc<dyn ExecutionPlan>,
        schema: SchemaRef,
    ) -> Result<Self> {
        let (have, want) = (input.schema(), &parts.input_schema);
        let same = have.fields().len() == want.fields().len()
            && have
                .fields()
                .iter()
                .zip(want.fields())
                .all(|(a, b)| a.name() == b.name() && a.data_type() == b.data_type());
        if !same {
            return internal_err!(
                "window `{}`: the input's schema {have:?} is not the aggregate's {want:?}",
                windowing.operator
            );
        }
        let props = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(Arc::clone(&schema)),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Final,
            Boundedness::Bounded,
        ));
        Ok(Self {
            windowing,
            parts,
            input,
            schema,
            props,
        })
    }
}

impl DisplayAs for WindowAggregateExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let w = &self.windowing;
        let keys: Vec<&str> = self
            .parts
            .group_by
            .expr()
            .iter()
            .map(|(_, n)| n.as_str())
            .collect();
        let aggs: Vec<&str> = self.parts.aggr_expr.iter().map(|a| a.name()).collect();
        write!(
            f,
            "WindowAggregateExec: operator={} window={} size={} gby=[{}] aggr=[{}]",
            w.operator,
            keys.get(w.window).copied().unwrap_or("?"),
            humantime_us(w.size_us),
            keys.join(", "),
            aggs.join(", ")
        )
    }
}

impl ExecutionPlan for WindowAggregateExec {
    fn name(&self) -> &str {
        "WindowAggregateExec"
    }
    fn properties(&self) -> &Arc<PlanProperties> {
        &self.props
    }
    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }
    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        // the epoch's rows are aggregated partition by partition, in parallel
        vec![true]
    }
    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        for (e, _) in self.parts.group_by.expr() {
            if f(e)? == TreeNodeRecursion::Stop {
                return Ok(TreeNodeRecursion::Stop);
            }
        }
        Ok(TreeNodeRecursion::Continue)
    }
    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let input = children.pop().ok_or_else(|| {
            internal_datafusion_err!("WindowAggregateExec rebuilt without a child")
        })?;
        Ok(Arc::new(WindowAggregateExec::try_new(
            self.windowing.clone(),
            self.parts.clone(),
            input,
            Arc::clone(&self.schema),
        )?))
    }
    fn execute(
        &self,
        partition: usize,
        ctx: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        if partition != 0 {
            return internal_err!("WindowAggregateExec has one partition, asked for {partition}");
        }
        let run = Epoch {
            windowing: self.windowing.clone(),
            parts: self.parts.clone(),
            input: Arc::clone(&self.input),
            schema: Arc::clone(&self.schema),
        };
        let stream = futures::stream::once(run.run(ctx))
            .map_ok(|batches| futures::stream::iter(batches.into_iter().map(Ok)))
            .try_flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            Arc::clone(&self.schema),
            stream,
        )))
    }
}

/// One epoch of a windowed aggregate.
struct Epoch {
    windowing: Windowing,
    parts: AggregateParts,
    input: Arc<dyn ExecutionPlan>,
    schema: SchemaRef,
}

impl Epoch {
    /// Aggregates the epoch, merges, emits what the watermark closed, saves the rest.
    async fn run(self, ctx: Arc<TaskContext>) -> Result<Vec<RecordBatch>> {
        let w = &self.windowing;
        let scope = StateScope::of_task(&ctx)?;
        let dead = Arc::clone(EpochBinding::of_task(&ctx)?.dead_letters());
        let previous = scope.previous(&w.operator);
        let before = previous.as_ref().and_then(|p| p.watermark);

        // 1. the epoch's rows as accumulator states, rows of emitted windows out
        let input = late_rows(
            w,
            &self.parts.group_by.expr()[w.window].0,
            before,
            Arc::clone(&self.input),
            dead,
        );
        let partial = self.parts.exec(AggregateMode::Partial, input)?;
        let state_schema = partial.schema();
        let fresh = collect(partial, Arc::clone(&ctx)).await?;
        let fresh_rows: usize = fresh.iter().map(|b| b.num_rows()).sum();
        let after = scope.watermark(&w.sources, before);
        if fresh_rows == 0 && after == before {
            return Ok(Vec::new());
        }

        // 2. merged with the windows kept from earlier epochs
        let mut states = Vec::new();
        if let Some(p) = &previous {
            for b in p.batches.iter().filter(|b| b.num_rows() > 0) {
                if b.schema().fields() != state_schema.fields() {
                    return Err(state_mismatch(w, &b.schema(), &state_schema));
                }
                states.push(b.clone());
            }
        }
        let merged = match (states.is_empty(), fresh_rows == 0) {
            (true, _) => fresh,
            (false, true) => states,
            (false, false) => {
                states.extend(fresh);
                let all =
                    MemorySourceConfig::try_new_exec(&[states], Arc::clone(&state_schema), None)?;
                collect(
                    self.parts.exec(AggregateMode::PartialReduce, all)?,
                    Arc::clone(&ctx),
                )
                .await?
            }
        };

        // 3. the windows the watermark passed are finished and emitted
        let (closed, open) = split_closed(&merged, w.window, w.size_us, after)?;
        let out = if closed.iter().all(|b| b.num_rows() == 0) {
            Vec::new()
        } else {
            let closed =
                MemorySourceConfig::try_new_exec(&[closed], Arc::clone(&state_schema), None)?;
            collect(self.parts.exec(AggregateMode::Final, closed)?, ctx).await?
        };
        let open = match open.len() {
            0 | 1 => open,
            _ => vec![concat_batches(&state_schema, &open)?],
        };
        scope.save(
            &w.operator,
            OperatorState {
                batches: open,
                watermark: after,
            },
        );
        out.into_iter()
            .map(|b| {
                b.with_schema(Arc::clone(&self.schema)).map_err(|e| {
                    internal_datafusion_err!("window `{}`: output schema: {e}", w.operator)
                })
            })
            .collect()
    }
}

fn state_mismatch(
    w: &Windowing,
    have: &SchemaRef,
    want: &SchemaRef,
) -> datafusion::error::DataFusionError {
    datafusion::error::DataFusionError::External(Box::new(crate::error::SluiceError::Plan {
        stage: w.stage.clone(),
        file: None,
        message: format!(
            "the state of window `{}` does not fit its aggregate (it holds {:?}, the aggregate keeps {:?}); the state belongs to another version of the query: run with --reset to start over",
            w.operator,
            have.fields().iter().map(|f| f.name()).collect::<Vec<_>>(),
            want.fields().iter().map(|f| f.name()).collect::<Vec<_>>()
        ),
    }))
}

/// The window starts of column `index` of `batch` as µs since the epoch.
pub(crate) fn starts_us(batch: &RecordBatch, index: usize) -> Result<TimestampMicrosecondArray> {
    let col = batch.column(index);
    if !matches!(col.data_type(), DataType::Timestamp(_, _)) {
        return internal_err!("a window start is {}, not a timestamp", col.data_type());
    }
    let us = cast(col, &DataType::Timestamp(TimeUnit::Microsecond, None))?;
    Ok(us.as_primitive::<TimestampMicrosecondType>().clone())
}

/// Rows of `batches` whose window (start in column `index`, `size_us`
/// long) ended at or before `watermark`, and the others. Everything is
/// closed at the end of time; nothing before the first watermark.
pub(crate) fn split_closed(
    batches: &[RecordBatch],
    index: usize,
    size_us: i64,
    watermark: Option<i64>,
) -> Result<(Vec<RecordBatch>, Vec<RecordBatch>)> {
    let (mut closed, mut open) = (Vec::new(), Vec::new());
    for b in batches.iter().filter(|b| b.num_rows() > 0) {
        match watermark {
            None => open.push(b.clone()),
            Some(END_OF_TIME) => closed.push(b.clone()),
            Some(wm) => {
                let starts = starts_us(b, index)?;
                let limit = TimestampMicrosecondArray::new_scalar(wm.saturating_sub(size_us));
                let done = lt_eq(&starts, &limit)?;
                // a null start never closes before the end of time
                let done = BooleanArray::from_iter(done.iter().map(|d| Some(d == Some(true))));
                match done.true_count() {
                    0 => open.push(b.clone()),
                    n if n == b.num_rows() => closed.push(b.clone()),
                    _ => {
                        closed.push(filter_record_batch(b, &done)?);
                        open.push(filter_record_batch(b, &not(&done)?)?);
                    }
                }
            }
        }
    }
    Ok((closed, open))
}

/// A window length for EXPLAIN: `1m`, `10s`, `250ms`.
pub(crate) fn humantime_us(us: i64) -> String {
    const UNITS: [(i64, &str); 5] = [
        (86_400_000_000, "d"),
        (3_600_000_000, "h"),
        (60_000_000, "m"),
        (1_000_000, "s"),
        (1_000, "ms"),
    ];
    for (n, unit) in UNITS {
        if us >= n && us % n == 0 {
            return format!("{}{unit}", us / n);
        }
    }
    format!("{us}µs")
}

/// `input` without the rows of windows emitted before (`before` is the
/// operator's last watermark; `start` the window start of a row).
pub(crate) fn late_rows(
    windowing: &Windowing,
    start: &Arc<dyn PhysicalExpr>,
    before: Option<i64>,
    input: Arc<dyn ExecutionPlan>,
    dead: Arc<DeadLetters>,
) -> Arc<dyn ExecutionPlan> {
    let Some(wm) = before else {
        return input;
    };
    let this = Arc::new(LateRows {
        windowing: windowing.clone(),
        start: Arc::clone(start),
        closed_up_to: wm.saturating_sub(windowing.size_us),
        dead,
    });
    Arc::new(MapExec::new(
        "LateRowsExec",
        input,
        Arc::new(move |partition: usize, batch: RecordBatch, ordinal: u64| {
            this.keep(partition, batch, ordinal)
        }),
    ))
}

/// Takes out the rows of windows already emitted.
struct LateRows {
    windowing: Windowing,
    /// The window-start expression over the input.
    start: Arc<dyn PhysicalExpr>,
    /// Windows starting at or before this have been emitted.
    closed_up_to: i64,
    dead: Arc<DeadLetters>,
}

impl LateRows {
    fn keep(&self, partition: usize, batch: RecordBatch, first: u64) -> Result<RecordBatch> {
        let starts = self.start.evaluate(&batch)?.into_array(batch.num_rows())?;
        let one = RecordBatch::try_new(
            Arc::new(datafusion::arrow::datatypes::Schema::new(vec![
                datafusion::arrow::datatypes::Field::new("s", starts.data_type().clone(), true),
            ])),
            vec![starts],
        )?;
        let starts = starts_us(&one, 0)?;
        let keep = gt(
            &starts,
            &TimestampMicrosecondArray::new_scalar(self.closed_up_to),
        )?;
        // a null start is kept: its row has no window to be late for
        let keep = BooleanArray::from_iter(keep.iter().map(|k| Some(k != Some(false))));
        if keep.true_count() == batch.num_rows() {
            return Ok(batch);
        }
        let w = &self.windowing;
        for (row, k) in keep.iter().enumerate() {
            if k == Some(true) {
                continue;
            }
            self.dead.push(
                format!("window-late:{}:{partition}:{}", w.operator, first + row as u64),
                DeadLetter {
                    component: ComponentId::Stage(w.stage.clone()),
                    code: ErrorCode::Late,
                    message: format!(
                        "window starting {} was already emitted (the watermark passed {}): a source upstream was idle or slower",
                        format_event_time(starts.value(row)),
                        format_event_time(self.closed_up_to.saturating_add(w.size_us))
                    ),
                    file: None,
                    line: None,
                    offset: None,
                    raw: row_json(&batch, row),
                    skipped: w.late == Late::Drop,
                },
            );
        }
        Ok(filter_record_batch(&batch, &keep)?)
    }
}
