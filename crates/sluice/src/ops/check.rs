//! `CheckExec`: a source's declared checks (`checks = ["amount >= 0"]`).
//!
//! - Output schema: the input's.
//! - Emits: each input batch without the rows a check is false for (SQL
//!   CHECK semantics: NULL passes).
//! - Failing rows: per the source's `on_error`: the epoch fails naming the
//!   check and the row, or the row is skipped, or it goes to the dead letters
//!   (code `CONSTRAINT_VIOLATION`, the row as JSON).
//! - It takes no filters or limits from above: every row read is checked.

use std::fmt;
use std::sync::Arc;

use datafusion::arrow::array::{Array, BooleanArray, RecordBatch};
use datafusion::arrow::compute::{and_kleene, filter_record_batch};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{Result, internal_datafusion_err, plan_err};
use datafusion::error::DataFusionError;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, PhysicalExpr, PlanProperties,
};
use futures::StreamExt;
use sluice_contract::ErrorCode;

use crate::dead_letter::{DeadLetter, DeadLetters, OnError};
use crate::epoch::EpochBinding;
use crate::metrics::ComponentId;

/// One declared check: its text and the expression over the input's columns.
#[derive(Debug, Clone)]
pub(crate) struct Check {
    /// As written in the spec.
    pub sql: String,
    /// Compiled against the input schema.
    pub expr: Arc<dyn PhysicalExpr>,
}

/// Filters out the rows that break a source's checks; see the module docs.
#[derive(Debug)]
pub(crate) struct CheckExec {
    source: String,
    checks: Vec<Check>,
    on_error: OnError,
    input: Arc<dyn ExecutionPlan>,
    props: Arc<PlanProperties>,
}

impl CheckExec {
    /// Checks `input`'s rows for source `source`.
    pub(crate) fn new(
        source: &str,
        checks: Vec<Check>,
        on_error: OnError,
        input: Arc<dyn ExecutionPlan>,
    ) -> Self {
        let props = Arc::new(input.properties().as_ref().clone());
        Self {
            source: source.into(),
            checks,
            on_error,
            input,
            props,
        }
    }
}

impl DisplayAs for CheckExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let checks: Vec<&str> = self.checks.iter().map(|c| c.sql.as_str()).collect();
        write!(
            f,
            "CheckExec: source={} checks=[{}]",
            self.source,
            checks.join(", ")
        )
    }
}

impl ExecutionPlan for CheckExec {
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
        "CheckExec"
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
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        for c in &self.checks {
            if f(&c.expr)? == TreeNodeRecursion::Stop {
                return Ok(TreeNodeRecursion::Stop);
            }
        }
        Ok(TreeNodeRecursion::Continue)
    }
    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let input = children
            .pop()
            .ok_or_else(|| internal_datafusion_err!("CheckExec rebuilt without a child"))?;
        Ok(Arc::new(CheckExec::new(
            &self.source,
            self.checks.clone(),
            self.on_error,
            input,
        )))
    }
    fn execute(
        &self,
        partition: usize,
        ctx: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let dead = Arc::clone(EpochBinding::of_task(&ctx)?.dead_letters());
        let input = self.input.execute(partition, ctx)?;
        let schema = input.schema();
        let (source, checks, on_error) = (self.source.clone(), self.checks.clone(), self.on_error);
        let mut ordinal = 0u64;
        let stream = input.map(move |batch| {
            let batch = batch?;
            let first = ordinal;
            ordinal += batch.num_rows() as u64;
            apply(&batch, &checks, &source, on_error, &dead, partition, first)
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
    }
}

/// The rows of `batch` every check passes; the others handled per `on_error`.
fn apply(
    batch: &RecordBatch,
    checks: &[Check],
    source: &str,
    on_error: OnError,
    dead: &DeadLetters,
    partition: usize,
    first: u64,
) -> Result<RecordBatch> {
    let mut keep: Option<BooleanArray> = None;
    let mut failed_by: Vec<Option<&str>> = vec![None; batch.num_rows()];
    for c in checks {
        let result = c.expr.evaluate(batch)?.into_array(batch.num_rows())?;
        let Some(passes) = result.as_any().downcast_ref::<BooleanArray>() else {
            return plan_err!(
                "source `{source}`: check `{}` is not a boolean expression",
                c.sql
            );
        };
        // NULL passes, as in SQL CHECK constraints
        for (row, slot) in failed_by.iter_mut().enumerate() {
            if slot.is_none() && passes.is_valid(row) && !passes.value(row) {
                *slot = Some(c.sql.as_str());
            }
        }
        let ok = datafusion::arrow::compute::kernels::boolean::or_kleene(
            passes,
            &datafusion::arrow::compute::is_null(passes)?,
        )?;
        keep = Some(match keep {
            None => ok,
            Some(k) => and_kleene(&k, &ok)?,
        });
    }
    let Some(keep) = keep else {
        return Ok(batch.clone());
    };
    if keep.true_count() == batch.num_rows() {
        return Ok(batch.clone());
    }
    let failing: Vec<(usize, &str)> = failed_by
        .iter()
        .enumerate()
        .filter_map(|(i, c)| c.map(|c| (i, c)))
        .collect();
    if on_error == OnError::Fail {
        let (row, check) = failing[0];
        return Err(DataFusionError::External(Box::new(
            crate::error::SluiceError::Source {
                source_name: source.into(),
                file: None,
                line: None,
                message: format!(
                    "[CONSTRAINT_VIOLATION] check `{check}` failed for {} row(s); first: {}",
                    failing.len(),
                    row_json(batch, row)
                ),
                retry: crate::error::RetryHint::Never,
                cause: None,
            },
        )));
    }
    for (row, check) in failing {
        let key = format!("check:{partition}:{}", first + row as u64);
        dead.push(
            key,
            DeadLetter {
                component: ComponentId::Source(source.into()),
                code: ErrorCode::ConstraintViolation,
                message: format!("check `{check}` failed"),
                file: None,
                line: None,
                offset: None,
                raw: row_json(batch, row),
                skipped: on_error == OnError::Skip,
            },
        );
    }
    Ok(filter_record_batch(batch, &keep)?)
}

/// Row `row` of `batch` as one JSON object (the raw input of a dead letter
/// that is a row rather than a line).
pub(crate) fn row_json(batch: &RecordBatch, row: usize) -> String {
    if row >= batch.num_rows() {
        return format!(
            "{{\"unavailable\": \"row {row} is outside the batch of {} rows\"}}",
            batch.num_rows()
        );
    }
    let mut w = datafusion::arrow::json::LineDelimitedWriter::new(Vec::new());
    let text = w
        .write(&batch.slice(row, 1))
        .and_then(|()| w.finish())
        .map(|()| w.into_inner());
    match text {
        Ok(bytes) => String::from_utf8_lossy(&bytes).trim_end().to_string(),
        Err(e) => format!("{{\"unavailable\": \"{e}\"}}"),
    }
}
