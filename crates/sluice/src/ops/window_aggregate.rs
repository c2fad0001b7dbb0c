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
use crate::ops::sessions;
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
    /// Fixed-length windows or sessions.
    pub kind: WindowKind,
    /// The event-time sources upstream: the watermark is their least.
    pub sources: Vec<String>,
    /// What a row for a window already emitted does.
    pub late: Late,
}

/// How long a window is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd)]
pub(crate) enum WindowKind {
    /// Tumbling or hopping windows, `size_us` long: a window ends at its
    /// start + size, for every key at once.
    Fixed { size_us: i64 },
    /// Session windows (`session(ts, gap)`): a key's rows less than
    /// `gap_us` apart; a session ends `gap_us` after its last row, so each
    /// key's sessions end at their own times (see [`super::sessions`]).
    Session { gap_us: i64 },
}

impl WindowKind {
    /// The window's size or the session's gap, in µs.
    pub(crate) fn length_us(self) -> i64 {
        match self {
            WindowKind::Fixed { size_us } => size_us,
            WindowKind::Session { gap_us } => gap_us,
        }
    }

    /// Once the watermark is `wm`, a row whose window key (window start,
    /// or its own event time for sessions) is at or before this may belong
    /// to a window already emitted.
    fn emitted_up_to(self, wm: i64) -> i64 {
        match self {
            WindowKind::Fixed { size_us } => wm.saturating_sub(size_us),
            // a session emitted ended at or before wm; a row at wm or later
            // cannot have belonged to it
            WindowKind::Session { .. } => wm.saturating_sub(1),
        }
    }

    /// For EXPLAIN: `size=1m` or `session gap=10s`.
    pub(crate) fn describe(self) -> String {
        match self {
            WindowKind::Fixed { size_us } => format!("size={}", humantime_us(size_us)),
            WindowKind::Session { gap_us } => format!("session gap={}", humantime_us(gap_us)),
        }
    }
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
            "WindowAggregate: operator={} window={} {} sources=[{}] exprs=[{}]",
            w.operator,
            self.aggregate.group_expr[w.window],
            w.kind.describe(),
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
        self.exec_grouped(mode, group_by, input)
    }

    /// An aggregate of `mode` over `input`, grouped by `group_by` (a
    /// session's keys and end, say) instead of the query's keys.
    pub(crate) fn exec_grouped(
        &self,
        mode: AggregateMode,
        group_by: PhysicalGroupBy,
        input: Arc<dyn ExecutionPlan>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
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
            "WindowAggregateExec: operator={} window={} {} gby=[{}] aggr=[{}]",
            w.operator,
            keys.get(w.window).copied().unwrap_or("?"),
            w.kind.describe(),
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

        // 2. merged with the windows kept from earlier epochs; 3. the windows
        // the watermark passed are split off
        let previous = previous.map(|p| p.batches.clone()).unwrap_or_default();
        let (closed, open, kept_schema) = match w.kind {
            WindowKind::Fixed { size_us } => {
                let states = checked(w, previous, &state_schema)?;
                let merged = self.merge(states, fresh, &state_schema, &ctx).await?;
                let (closed, open) = split_closed(&merged, w.window, size_us, after)?;
                (closed, open, state_schema.clone())
            }
            WindowKind::Session { gap_us } => {
                let groups = self.parts.group_by.expr().len();
                let kept_schema = sessions::state_schema(&state_schema, groups);
                let mut states = checked(w, previous, &kept_schema)?;
                for b in fresh.iter().filter(|b| b.num_rows() > 0) {
                    states.push(sessions::as_sessions(
                        b,
                        &kept_schema,
                        groups,
                        w.window,
                        gap_us,
                    )?);
                }
                let merged = if fresh_rows == 0 {
                    states
                } else {
                    let all = sessions::assign(
                        &concat_batches(&kept_schema, &states)?,
                        &sessions::SessionColumns::of_state(groups, w.window),
                    )?;
                    let all = MemorySourceConfig::try_new_exec(
                        &[vec![all]],
                        Arc::clone(&kept_schema),
                        None,
                    )?;
                    let reduce = self.parts.exec_grouped(
                        AggregateMode::PartialReduce,
                        sessions::group_by(&self.parts.group_by),
                        all,
                    )?;
                    collect(reduce, Arc::clone(&ctx)).await?
                };
                // a session ends gap after its last row: closed once the watermark is there
                let (closed, open) = split_closed(&merged, groups, 0, after)?;
                let closed = closed
                    .iter()
                    .map(|b| sessions::without_end(b, groups))
                    .collect::<Result<Vec<_>>>()?;
                (closed, open, kept_schema)
            }
        };
        let out = if closed.iter().all(|b| b.num_rows() == 0) {
            Vec::new()
        } else {
            let closed =
                MemorySourceConfig::try_new_exec(&[closed], Arc::clone(&state_schema), None)?;
            collect(self.parts.exec(AggregateMode::Final, closed)?, ctx).await?
        };
        let open = match open.len() {
            0 | 1 => open,
            _ => vec![concat_batches(&kept_schema, &open)?],
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

impl Epoch {
    /// The epoch's fresh states merged with the kept ones: one row per
    /// window and key.
    async fn merge(
        &self,
        mut states: Vec<RecordBatch>,
        fresh: Vec<RecordBatch>,
        schema: &SchemaRef,
        ctx: &Arc<TaskContext>,
    ) -> Result<Vec<RecordBatch>> {
        let fresh_rows: usize = fresh.iter().map(|b| b.num_rows()).sum();
        Ok(match (states.is_empty(), fresh_rows == 0) {
            (true, _) => fresh,
            (false, true) => states,
            (false, false) => {
                states.extend(fresh);
                let all = MemorySourceConfig::try_new_exec(&[states], Arc::clone(schema), None)?;
                collect(
                    self.parts.exec(AggregateMode::PartialReduce, all)?,
                    Arc::clone(ctx),
                )
                .await?
            }
        })
    }
}

/// The kept state's non-empty batches, if they are in `schema`.
fn checked(w: &Windowing, kept: Vec<RecordBatch>, schema: &SchemaRef) -> Result<Vec<RecordBatch>> {
    kept.into_iter()
        .filter(|b| b.num_rows() > 0)
        .map(|b| {
            if b.schema().fields() == schema.fields() {
                Ok(b)
            } else {
                Err(state_mismatch(w, &b.schema(), schema))
            }
        })
        .collect()
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

/// Rows of `batches` whose window ended at or before `watermark`, and the
/// others: a window ends at the time in column `column` + `length_us` (its
/// start + size, or its end + 0). Everything is closed at the end of time;
/// nothing before the first watermark.
pub(crate) fn split_closed(
    batches: &[RecordBatch],
    column: usize,
    length_us: i64,
    watermark: Option<i64>,
) -> Result<(Vec<RecordBatch>, Vec<RecordBatch>)> {
    let (mut closed, mut open) = (Vec::new(), Vec::new());
    for b in batches.iter().filter(|b| b.num_rows() > 0) {
        match watermark {
            None => open.push(b.clone()),
            Some(END_OF_TIME) => closed.push(b.clone()),
            Some(wm) => {
                let starts = starts_us(b, column)?;
                let limit = TimestampMicrosecondArray::new_scalar(wm.saturating_sub(length_us));
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
    LateRows {
        operator: windowing.operator.clone(),
        stage: windowing.stage.clone(),
        late: windowing.late,
        start: Arc::clone(start),
        closed_up_to: windowing.kind.emitted_up_to(wm),
        watermark: wm,
        missed: Missed::Window(windowing.kind),
        dead,
    }
    .over(input)
}

/// `input` without the rows whose event time (`time`) is behind `before`,
/// an operator stage's last watermark: rows they belong with may have been
/// emitted. The built-in operator stages take them out with this.
pub(crate) fn behind_watermark(
    stage: &str,
    late: Late,
    time: Arc<dyn PhysicalExpr>,
    before: Option<i64>,
    input: Arc<dyn ExecutionPlan>,
    dead: Arc<DeadLetters>,
) -> Arc<dyn ExecutionPlan> {
    let Some(wm) = before else {
        return input;
    };
    LateRows {
        operator: stage.to_string(),
        stage: stage.to_string(),
        late,
        start: time,
        closed_up_to: wm.saturating_sub(1),
        watermark: wm,
        missed: Missed::Watermark,
        dead,
    }
    .over(input)
}

/// What a late row missed, for its dead letter.
#[derive(Debug, Clone, Copy)]
enum Missed {
    /// A window (its start is what is judged).
    Window(WindowKind),
    /// An operator's watermark (the row's event time is judged).
    Watermark,
}

impl Missed {
    fn message(self, value: i64, watermark: i64) -> String {
        let (value, watermark) = (format_event_time(value), format_event_time(watermark));
        match self {
            Missed::Window(WindowKind::Fixed { .. }) => format!(
                "window starting {value} was already emitted (the watermark passed {watermark}): a source upstream was idle or slower"
            ),
            Missed::Window(WindowKind::Session { .. }) => format!(
                "event time {value} is behind the session window's watermark {watermark}: the session it belongs to may have been emitted; a source upstream was idle or slower"
            ),
            Missed::Watermark => format!(
                "event time {value} is behind the operator's watermark {watermark}: rows it belongs with may have been emitted; a source upstream was idle or slower"
            ),
        }
    }
}

/// Takes out the rows that come too late (see [`late_rows`], [`behind_watermark`]).
struct LateRows {
    /// The state's name, in dead-letter keys.
    operator: String,
    /// The stage the dead letters name.
    stage: String,
    late: Late,
    /// What is judged: the window start, or the event time.
    start: Arc<dyn PhysicalExpr>,
    /// Rows whose judged time is at or before this are late.
    closed_up_to: i64,
    /// The operator's watermark.
    watermark: i64,
    missed: Missed,
    dead: Arc<DeadLetters>,
}

impl LateRows {
    /// `input` through this filter, batch by batch.
    fn over(self, input: Arc<dyn ExecutionPlan>) -> Arc<dyn ExecutionPlan> {
        let this = Arc::new(self);
        Arc::new(MapExec::new(
            "LateRowsExec",
            input,
            Arc::new(move |partition: usize, batch: RecordBatch, ordinal: u64| {
                this.keep(partition, batch, ordinal)
            }),
        ))
    }

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
        // a null is kept: its row has no time to be late by
        let keep = BooleanArray::from_iter(keep.iter().map(|k| Some(k != Some(false))));
        if keep.true_count() == batch.num_rows() {
            return Ok(batch);
        }
        for (row, k) in keep.iter().enumerate() {
            if k == Some(true) {
                continue;
            }
            self.dead.push(
                format!(
                    "window-late:{}:{partition}:{}",
                    self.operator,
                    first + row as u64
                ),
                DeadLetter {
                    component: ComponentId::Stage(self.stage.clone()),
                    code: ErrorCode::Late,
                    message: self.missed.message(starts.value(row), self.watermark),
                    file: None,
                    line: None,
                    offset: None,
                    raw: row_json(&batch, row),
                    skipped: self.late == Late::Drop,
                },
            );
        }
        Ok(filter_record_batch(&batch, &keep)?)
    }
}
