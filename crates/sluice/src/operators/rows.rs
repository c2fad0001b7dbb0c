//! `EpochRowsExec`: what the built-in operators share.
//!
//! Both `dedupe` and `window` hold rows until the watermark says no row
//! still to come can change them, then emit. This exec does the common
//! part of an epoch, and hands the rest to the operator's [`EpochStep`]:
//!
//! - Input: any plan of the input's schema, every partition read.
//! - Late rows: a row whose event time is behind the operator's last
//!   watermark may belong with rows already emitted. It is dropped and
//!   counted, or a dead letter (`LATE`) when a source upstream says
//!   `late = "dead_letter"`, by the same filter windowed aggregates use
//!   ([`behind_watermark`]). Behind an `EventTimeExec` this happens only
//!   when several sources meet and one was idle.
//! - The step gets the epoch's rows on time, the watermark before and
//!   after the epoch, and the scope to read and save state by.
//! - Output: one partition, what the step returns.

use std::fmt;
use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{Result, internal_datafusion_err, internal_err};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::EquivalenceProperties;
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PhysicalExpr, PlanProperties,
    collect,
};
use futures::TryStreamExt;

use crate::epoch::EpochBinding;
use crate::ops::window_aggregate::behind_watermark;
use crate::state::{Late, StateScope};

/// An operator's own part of an epoch; see the module docs.
pub(crate) trait EpochStep: fmt::Debug + Send + Sync + 'static {
    /// How EXPLAIN shows it.
    fn describe(&self) -> String;

    /// Emits what `fresh` (the epoch's rows on time) and the state saved
    /// before let it, and saves the state the next epoch needs under the
    /// scope, with the watermark `after`.
    fn run(
        &self,
        fresh: Vec<RecordBatch>,
        scope: &StateScope,
        before: Option<i64>,
        after: Option<i64>,
    ) -> Result<Vec<RecordBatch>>;
}

/// Who the operator is, for state, watermarks and dead letters.
#[derive(Debug, Clone)]
pub(crate) struct Judged {
    /// The stage; its state's main name, whose watermark is the operator's.
    pub stage: String,
    /// The input column of event time.
    pub event_time: usize,
    /// The event-time sources upstream.
    pub sources: Vec<String>,
    pub late: Late,
}

/// Runs an [`EpochStep`] over the epoch's input; see the module docs.
#[derive(Debug)]
pub(crate) struct EpochRowsExec {
    judged: Judged,
    step: Arc<dyn EpochStep>,
    input: Arc<dyn ExecutionPlan>,
    schema: SchemaRef,
    props: Arc<PlanProperties>,
}

impl EpochRowsExec {
    pub(crate) fn new(
        judged: Judged,
        step: Arc<dyn EpochStep>,
        input: Arc<dyn ExecutionPlan>,
        schema: SchemaRef,
    ) -> Self {
        let props = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(Arc::clone(&schema)),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Final,
            Boundedness::Bounded,
        ));
        Self {
            judged,
            step,
            input,
            schema,
            props,
        }
    }
}

impl DisplayAs for EpochRowsExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "OperatorExec: stage={} {}",
            self.judged.stage,
            self.step.describe()
        )
    }
}

impl ExecutionPlan for EpochRowsExec {
    fn name(&self) -> &str {
        "OperatorExec"
    }
    fn properties(&self) -> &Arc<PlanProperties> {
        &self.props
    }
    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }
    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        // the step sees the epoch whole; repartitioning buys nothing
        vec![false]
    }
    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        // the step's columns are indexes, not expressions
        Ok(TreeNodeRecursion::Continue)
    }
    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let input = children
            .pop()
            .ok_or_else(|| internal_datafusion_err!("OperatorExec rebuilt without a child"))?;
        Ok(Arc::new(EpochRowsExec::new(
            self.judged.clone(),
            Arc::clone(&self.step),
            input,
            Arc::clone(&self.schema),
        )))
    }
    fn execute(
        &self,
        partition: usize,
        ctx: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        if partition != 0 {
            return internal_err!("OperatorExec has one partition, asked for {partition}");
        }
        let (judged, step, input) = (
            self.judged.clone(),
            Arc::clone(&self.step),
            Arc::clone(&self.input),
        );
        let run = async move {
            let scope = StateScope::of_task(&ctx)?;
            let binding = EpochBinding::of_task(&ctx)?;
            let before = scope.previous(&judged.stage).and_then(|p| p.watermark);
            let time = input.schema().field(judged.event_time).name().clone();
            let on_time = behind_watermark(
                &judged.stage,
                judged.late,
                Arc::new(Column::new(&time, judged.event_time)),
                before,
                input,
                Arc::clone(binding.dead_letters()),
            );
            let fresh = collect(on_time, Arc::clone(&ctx)).await?;
            let after = scope.watermark(&judged.sources, before);
            step.run(fresh, &scope, before, after)
        };
        let stream = futures::stream::once(run)
            .map_ok(|batches| futures::stream::iter(batches.into_iter().map(Ok)))
            .try_flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            Arc::clone(&self.schema),
            stream,
        )))
    }
}

/// The batches an operator saved, if they are in `schema`; a snapshot of
/// another version of the stage fails the epoch with what to do.
pub(crate) fn restored(
    stage: &str,
    what: &str,
    saved: Option<Arc<crate::state::OperatorState>>,
    schema: &SchemaRef,
) -> Result<Vec<RecordBatch>> {
    let Some(saved) = saved else {
        return Ok(Vec::new());
    };
    let fits = |b: &RecordBatch| {
        let have = b.schema();
        have.fields().len() == schema.fields().len()
            && have
                .fields()
                .iter()
                .zip(schema.fields())
                .all(|(a, b)| a.name() == b.name() && a.data_type() == b.data_type())
    };
    saved
        .batches
        .iter()
        .filter(|b| b.num_rows() > 0)
        .map(|b| {
            if fits(b) {
                Ok(b.clone())
            } else {
                Err(datafusion::error::DataFusionError::External(Box::new(
                    crate::error::SluiceError::Plan {
                        stage: stage.to_string(),
                        file: None,
                        message: format!(
                            "the saved {what} does not fit the operator (it holds {:?}, the operator keeps {:?}); it belongs to another version of the stage: run with --reset to start over",
                            b.schema().fields().iter().map(|f| f.name()).collect::<Vec<_>>(),
                            schema.fields().iter().map(|f| f.name()).collect::<Vec<_>>()
                        ),
                    },
                )))
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Int64Array, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};

    #[test]
    fn a_saved_state_of_another_shape_is_refused_with_what_to_do() {
        let want: SchemaRef = Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, true)]));
        let other =
            RecordBatch::try_from_iter([("name", Arc::new(StringArray::from(vec!["x"])) as _)])
                .unwrap();
        let fits =
            RecordBatch::try_from_iter([("k", Arc::new(Int64Array::from(vec![1])) as _)]).unwrap();
        let saved = |b: RecordBatch| {
            Some(Arc::new(crate::state::OperatorState {
                batches: vec![b],
                watermark: None,
            }))
        };
        let err = restored("op", "rows", saved(other), &want)
            .unwrap_err()
            .to_string();
        assert!(err.contains("--reset"), "{err}");
        assert_eq!(
            restored("op", "rows", saved(fits.clone()), &want).unwrap(),
            vec![fits]
        );
        assert!(restored("op", "rows", None, &want).unwrap().is_empty());
    }
}
