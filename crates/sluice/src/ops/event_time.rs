//! `EventTimeExec`: a source's rows in the source's order, its event-time
//! clock moved on, late rows taken out.
//!
//! - Input: the source's scan, in one or more partitions. A generated
//!   source (`generator`, `nexmark`) hands out units of work round robin,
//!   one batch per unit, so its order is the partitions' batches taken in
//!   turn; every other source is scanned in one partition, read as is.
//! - Output schema: the input's; one partition, in the source's order.
//! - Emits: each input batch without its late rows (zero-copy when it has none).
//! - Late: a row whose event time is more than the `watermark` bound behind
//!   the largest event time of the rows before it (this epoch's and every
//!   earlier epoch's, from the sink's [`StateScope`]) is late: dropped and
//!   counted (`late = "drop"`), or a dead letter with code `LATE`
//!   (`late = "dead_letter"`). A row with no event time goes to the
//!   source's `on_error` (`CONSTRAINT_VIOLATION`).
//! - State: none of its own; it tells the scope the largest event time it
//!   read, which becomes the source's clock for the next epoch.
//! - Failure: forwards its input's errors; with `on_error = "fail"`, a row
//!   without event time fails the epoch.

use std::fmt;
use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray, BooleanArray, RecordBatch};
use datafusion::arrow::compute::{cast, filter_record_batch};
use datafusion::arrow::datatypes::{DataType, TimeUnit, TimestampMicrosecondType};
use datafusion::common::runtime::SpawnedTask;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{Result, internal_datafusion_err, internal_err};
use datafusion::error::DataFusionError;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::EquivalenceProperties;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, Partitioning,
    PhysicalExpr, PlanProperties,
};
use futures::StreamExt;
use sluice_contract::ErrorCode;
use tokio::sync::mpsc;

use crate::dead_letter::{DeadLetter, DeadLetters, OnError};
use crate::epoch::EpochBinding;
use crate::metrics::ComponentId;
use crate::ops::check::row_json;
use crate::state::clock::ClockInput;
use crate::state::{Late, StateScope, format_event_time};

/// How a scan's partitions make up the source's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SourceOrder {
    /// Batch `i` of the source is batch `i / n` of partition `i % n`.
    RoundRobin,
    /// Partition 0's batches, then partition 1's, ...
    Concatenated,
}

/// Orders a source's rows and judges their event time; see the module docs.
#[derive(Debug)]
pub(crate) struct EventTimeExec {
    source: String,
    column: String,
    index: usize,
    order: SourceOrder,
    on_error: OnError,
    input: Arc<dyn ExecutionPlan>,
    props: Arc<PlanProperties>,
}

impl EventTimeExec {
    /// Reads `input` (source `source`, event time in `column`) in the
    /// source's `order`.
    pub(crate) fn try_new(
        source: &str,
        column: &str,
        order: SourceOrder,
        on_error: OnError,
        input: Arc<dyn ExecutionPlan>,
    ) -> Result<Self> {
        let schema = input.schema();
        let index = schema.index_of(column)?;
        if !matches!(schema.field(index).data_type(), DataType::Timestamp(_, _)) {
            return internal_err!(
                "source `{source}`: event_time column `{column}` is {}, not a timestamp",
                schema.field(index).data_type()
            );
        }
        let props = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(Arc::clone(&schema)),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Incremental,
            Boundedness::Bounded,
        ));
        Ok(Self {
            source: source.to_string(),
            column: column.to_string(),
            index,
            order,
            on_error,
            input,
            props,
        })
    }
}

impl DisplayAs for EventTimeExec {
    fn fmt_as(&self, t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        match t {
            DisplayFormatType::TreeRender => {
                write!(f, "source={}\nevent_time={}", self.source, self.column)
            }
            _ => write!(
                f,
                "EventTimeExec: source={} event_time={} order={:?}",
                self.source, self.column, self.order
            ),
        }
    }
}

impl ExecutionPlan for EventTimeExec {
    /// The input's statistics are passed on (see [`crate::ops::pass_stats`]).
    fn child_stats_requests(
        &self,
        partition: Option<usize>,
    ) -> Vec<datafusion::physical_plan::ChildStats> {
        crate::ops::pass_stats::of_input(partition)
    }
    /// Rows may be taken out: the input's statistics, as estimates.
    fn statistics_from_inputs(
        &self,
        input_stats: &[Arc<datafusion::common::Statistics>],
        _args: &datafusion::physical_plan::StatisticsArgs,
    ) -> Result<Arc<datafusion::common::Statistics>> {
        crate::ops::pass_stats::passed_on(input_stats, &self.schema(), false)
    }
    fn name(&self) -> &str {
        "EventTimeExec"
    }
    fn properties(&self) -> &Arc<PlanProperties> {
        &self.props
    }
    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }
    fn maintains_input_order(&self) -> Vec<bool> {
        vec![self.input.output_partitioning().partition_count() == 1]
    }
    /// The input's partitions are the source's own; a repartition below
    /// would deal its batches anew and lose the order lateness is judged in.
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
            .ok_or_else(|| internal_datafusion_err!("EventTimeExec rebuilt without a child"))?;
        Ok(Arc::new(EventTimeExec::try_new(
            &self.source,
            &self.column,
            self.order,
            self.on_error,
            input,
        )?))
    }
    fn execute(
        &self,
        partition: usize,
        ctx: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        if partition != 0 {
            return internal_err!("EventTimeExec has one partition, asked for {partition}");
        }
        let dead = Arc::clone(EpochBinding::of_task(&ctx)?.dead_letters());
        let scope = StateScope::of_task(&ctx).ok();
        let input = self.ordered(Arc::clone(&ctx))?;
        let schema = self.input.schema();
        let mut judge = Judge {
            source: self.source.clone(),
            index: self.index,
            on_error: self.on_error,
            clock: scope.as_ref().and_then(|s| {
                s.clock_input(&self.source)
                    .map(|i| (i, s.clock_before(&self.source).max_event_time))
            }),
            scope,
            dead,
            ordinal: 0,
        };
        let stream = input.map(move |batch| judge.batch(batch?));
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
    }
}

impl EventTimeExec {
    /// The input's partitions as one stream in the source's order. Every
    /// partition is read by a task of its own a couple of batches ahead, so
    /// the scan stays parallel while the order is kept.
    fn ordered(
        &self,
        ctx: Arc<TaskContext>,
    ) -> Result<futures::stream::BoxStream<'static, Result<RecordBatch>>> {
        let n = self.input.output_partitioning().partition_count();
        if n == 1 {
            return Ok(self.input.execute(0, ctx)?.boxed());
        }
        let mut receivers = Vec::with_capacity(n);
        let mut tasks = Vec::with_capacity(n);
        for p in 0..n {
            let mut stream = self.input.execute(p, Arc::clone(&ctx))?;
            let (tx, rx) = mpsc::channel::<Result<RecordBatch>>(2);
            tasks.push(SpawnedTask::spawn(async move {
                while let Some(b) = stream.next().await {
                    if tx.send(b).await.is_err() {
                        break;
                    }
                }
            }));
            receivers.push(rx);
        }
        let order = self.order;
        let state = (receivers, 0usize, tasks);
        Ok(
            futures::stream::unfold(state, move |(mut rx, mut at, tasks)| async move {
                loop {
                    if rx.is_empty() {
                        return None;
                    }
                    let i = match order {
                        SourceOrder::RoundRobin => at % rx.len(),
                        SourceOrder::Concatenated => 0,
                    };
                    match rx[i].recv().await {
                        Some(b) => {
                            at = i + 1;
                            return Some((b, (rx, at, tasks)));
                        }
                        // that partition is done; the next in turn moves up
                        None => {
                            rx.remove(i);
                            at = i;
                        }
                    }
                }
            })
            .boxed(),
        )
    }
}

/// The per-batch work of one execution.
struct Judge {
    source: String,
    index: usize,
    on_error: OnError,
    /// The loop's word on the source and the largest event time so far:
    /// `None` when the execution has no state scope (nothing is late then).
    clock: Option<(ClockInput, Option<i64>)>,
    scope: Option<Arc<StateScope>>,
    dead: Arc<DeadLetters>,
    /// Rows of the source seen so far in this epoch (dead-letter keys).
    ordinal: u64,
}

impl Judge {
    fn batch(&mut self, batch: RecordBatch) -> Result<RecordBatch> {
        let first = self.ordinal;
        self.ordinal += batch.num_rows() as u64;
        let micros = cast(
            batch.column(self.index),
            &DataType::Timestamp(TimeUnit::Microsecond, None),
        )?;
        let times = micros.as_primitive::<TimestampMicrosecondType>();
        let Some((input, mut max)) = self.clock else {
            return Ok(batch);
        };
        let bound = input.bound_us;
        // fast path: no nulls and nothing behind the watermark of the rows before
        let batch_min = datafusion::arrow::compute::min(times);
        let batch_max = datafusion::arrow::compute::max(times);
        let clean = times.null_count() == 0
            && match (max, batch_min) {
                (None, _) | (_, None) => false,
                (Some(m), Some(lo)) => lo >= m.saturating_sub(bound),
            };
        if clean {
            if let Some(hi) = batch_max {
                max = Some(max.map_or(hi, |m| m.max(hi)));
            }
            self.finish(max);
            return Ok(batch);
        }
        let mut keep = Vec::with_capacity(times.len());
        let mut late = Vec::new();
        let mut no_time = Vec::new();
        for (row, t) in times.iter().enumerate() {
            match t {
                None => {
                    no_time.push(row);
                    keep.push(false);
                }
                Some(t) => {
                    if max.is_some_and(|m| t < m.saturating_sub(bound)) {
                        late.push((row, t, max.unwrap_or(t)));
                        keep.push(false);
                    } else {
                        max = Some(max.map_or(t, |m| m.max(t)));
                        keep.push(true);
                    }
                }
            }
        }
        self.finish(max);
        if let Some(&row) = no_time.first()
            && self.on_error == OnError::Fail
        {
            return Err(DataFusionError::External(Box::new(
                crate::error::SluiceError::Source {
                    source_name: self.source.clone(),
                    file: None,
                    line: None,
                    message: format!(
                        "[CONSTRAINT_VIOLATION] {} row(s) have no event time (column `{}` is null); first: {}",
                        no_time.len(),
                        batch.schema().field(self.index).name(),
                        row_json(&batch, row)
                    ),
                    retry: crate::error::RetryHint::Never,
                    cause: None,
                },
            )));
        }
        for row in no_time {
            self.dead.push(
                format!("event_time:{}", first + row as u64),
                DeadLetter {
                    component: ComponentId::Source(self.source.clone()),
                    code: ErrorCode::ConstraintViolation,
                    message: format!(
                        "the row has no event time (column `{}` is null)",
                        batch.schema().field(self.index).name()
                    ),
                    file: None,
                    line: None,
                    offset: None,
                    raw: row_json(&batch, row),
                    skipped: self.on_error == OnError::Skip,
                },
            );
        }
        for (row, t, m) in late {
            self.dead.push(
                format!("late:{}", first + row as u64),
                DeadLetter {
                    component: ComponentId::Source(self.source.clone()),
                    code: ErrorCode::Late,
                    message: format!(
                        "event time {} is behind the watermark {} (the largest event time before it, {}, minus the bound)",
                        format_event_time(t),
                        format_event_time(m.saturating_sub(bound)),
                        format_event_time(m)
                    ),
                    file: None,
                    line: None,
                    offset: None,
                    raw: row_json(&batch, row),
                    skipped: input.late == Late::Drop,
                },
            );
        }
        Ok(filter_record_batch(&batch, &BooleanArray::from(keep))?)
    }

    /// Remembers the largest event time so far, here and in the scope.
    fn finish(&mut self, max: Option<i64>) {
        if let Some((input, _)) = self.clock {
            self.clock = Some((input, max));
        }
        if let (Some(scope), Some(m)) = (&self.scope, max) {
            scope.observe(&self.source, m);
        }
    }
}
