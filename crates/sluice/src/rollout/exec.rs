//! `RolloutExec`: a rolled-out stage, choosing per epoch which of its
//! branches (the primary and its variants) run and which are delivered.
//!
//! - Inputs: one child per branch, the primary first; each is the stage's
//!   plan over its own copy of the input (with a
//!   [`CanarySplitExec`](super::split::CanarySplitExec) at its bottom when
//!   the stage has one input). The epoch loop picks the choice; it comes
//!   with the execution ([`super::tally::EpochRollout`]).
//! - Output schema: the primary's, a field nullable when any branch's is,
//!   plus the `variant_column` when configured.
//! - Emits, by mode: `off` the primary's batches; `primary` the variant's;
//!   `canary` both (each saw its side of the split); `shadow` the primary's,
//!   while the variant's output is captured for the diff.
//! - Failure: a branch whose output is delivered fails the partition; the
//!   shadow variant's failure is recorded for the guard and the delivered
//!   output goes on.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{ArrayRef, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::Session;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DFSchema, DFSchemaRef, Result, internal_datafusion_err};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::{
    Expr, LogicalPlan, UserDefinedLogicalNode, UserDefinedLogicalNodeCore,
};
use datafusion::physical_expr::{EquivalenceProperties, Partitioning};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::{
    RecordBatchReceiverStreamBuilder, RecordBatchStreamAdapter,
};
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, PhysicalExpr,
    PlanProperties,
};
use datafusion::physical_planner::{ExtensionPlanner, PhysicalPlanner};
use futures::StreamExt;

use super::config::Mode;
use crate::epoch::EpochBinding;

/// The name of the primary branch, in counts and the variant column.
pub(crate) const PRIMARY: &str = "primary";

/// Logical node of a rolled-out stage; see the module docs.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct RolloutNode {
    pub stage: String,
    /// Branch names: [`PRIMARY`], then the variants.
    pub branches: Vec<String>,
    pub inputs: Vec<LogicalPlan>,
    pub variant_column: Option<String>,
    pub schema: DFSchemaRef,
}

impl RolloutNode {
    /// A node over `inputs` (the primary's plan first), whose schemas the
    /// compiler checked agree in names and types.
    pub(crate) fn try_new(
        stage: &str,
        branches: Vec<String>,
        inputs: Vec<LogicalPlan>,
        variant_column: Option<String>,
    ) -> Result<Self> {
        let primary = inputs
            .first()
            .ok_or_else(|| internal_datafusion_err!("rollout of `{stage}` without a primary"))?
            .schema()
            .as_arrow()
            .clone();
        let mut fields: Vec<Field> = primary
            .fields()
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let nullable = inputs.iter().any(|p| {
                    p.schema()
                        .as_arrow()
                        .fields()
                        .get(i)
                        .is_some_and(|g| g.is_nullable())
                });
                f.as_ref().clone().with_nullable(nullable)
            })
            .collect();
        if let Some(c) = &variant_column {
            fields.push(Field::new(c, DataType::Utf8, false));
        }
        let schema = Schema::new_with_metadata(fields, primary.metadata().clone());
        Ok(Self {
            stage: stage.to_string(),
            branches,
            inputs,
            variant_column,
            schema: Arc::new(DFSchema::try_from(schema)?),
        })
    }
}

impl PartialOrd for RolloutNode {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        (&self.stage, &self.branches).partial_cmp(&(&other.stage, &other.branches))
    }
}

impl UserDefinedLogicalNodeCore for RolloutNode {
    fn name(&self) -> &str {
        "Rollout"
    }
    fn inputs(&self) -> Vec<&LogicalPlan> {
        self.inputs.iter().collect()
    }
    fn schema(&self) -> &DFSchemaRef {
        &self.schema
    }
    fn expressions(&self) -> Vec<Expr> {
        vec![]
    }
    fn fmt_for_explain(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "Rollout: stage={} branches=[{}]",
            self.stage,
            self.branches.join(", ")
        )
    }
    fn with_exprs_and_inputs(&self, _exprs: Vec<Expr>, inputs: Vec<LogicalPlan>) -> Result<Self> {
        if inputs.len() != self.branches.len() {
            return Err(internal_datafusion_err!(
                "rollout of `{}` rebuilt with {} inputs",
                self.stage,
                inputs.len()
            ));
        }
        Ok(Self {
            inputs,
            ..self.clone()
        })
    }
}

/// Plans [`RolloutNode`] into [`RolloutExec`].
#[derive(Debug, Default)]
pub(crate) struct RolloutPlanner;

#[async_trait]
impl ExtensionPlanner for RolloutPlanner {
    async fn plan_extension(
        &self,
        _planner: &dyn PhysicalPlanner,
        node: &dyn UserDefinedLogicalNode,
        _logical_inputs: &[&LogicalPlan],
        physical_inputs: &[Arc<dyn ExecutionPlan>],
        _session: &dyn Session,
        _ctx: &PhysicalPlanningContext,
    ) -> Result<Option<Arc<dyn ExecutionPlan>>> {
        let Some(n) = node.as_any().downcast_ref::<RolloutNode>() else {
            return Ok(None);
        };
        Ok(Some(Arc::new(RolloutExec::new(
            n.stage.clone(),
            n.branches.clone(),
            physical_inputs.to_vec(),
            Arc::new(n.schema.as_arrow().clone()),
            n.variant_column.is_some(),
        ))))
    }
}

/// Runs a rolled-out stage; see the module docs.
#[derive(Debug)]
pub(crate) struct RolloutExec {
    stage: String,
    branches: Vec<String>,
    children: Vec<Arc<dyn ExecutionPlan>>,
    schema: SchemaRef,
    variant_column: bool,
    props: Arc<PlanProperties>,
}

impl RolloutExec {
    fn new(
        stage: String,
        branches: Vec<String>,
        children: Vec<Arc<dyn ExecutionPlan>>,
        schema: SchemaRef,
        variant_column: bool,
    ) -> Self {
        let partitions = children
            .iter()
            .map(|c| c.output_partitioning().partition_count())
            .max()
            .unwrap_or(1)
            .max(1);
        let props = PlanProperties::new(
            EquivalenceProperties::new(Arc::clone(&schema)),
            Partitioning::UnknownPartitioning(partitions),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        Self {
            stage,
            branches,
            children,
            schema,
            variant_column,
            props: Arc::new(props),
        }
    }

    /// Partition `partition` of branch `i`, when the branch has it.
    fn branch(
        &self,
        i: usize,
        partition: usize,
        ctx: &Arc<TaskContext>,
    ) -> Result<Option<SendableRecordBatchStream>> {
        let child = &self.children[i];
        if partition >= child.output_partitioning().partition_count() {
            return Ok(None);
        }
        child.execute(partition, Arc::clone(ctx)).map(Some)
    }

    /// Makes branch `i`'s batches the node's: its schema, its variant column.
    fn labeler(&self, i: usize) -> Labeler {
        Labeler {
            schema: Arc::clone(&self.schema),
            name: self.variant_column.then(|| self.branches[i].clone()),
        }
    }
}

#[derive(Clone)]
struct Labeler {
    schema: SchemaRef,
    name: Option<String>,
}

impl Labeler {
    fn label(&self, batch: RecordBatch) -> Result<RecordBatch> {
        let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
        if let Some(n) = &self.name {
            columns.push(Arc::new(StringArray::from_iter_values(
                std::iter::repeat_n(n.as_str(), batch.num_rows()),
            )));
        }
        Ok(RecordBatch::try_new(Arc::clone(&self.schema), columns)?)
    }
}

impl DisplayAs for RolloutExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "RolloutExec: stage={} branches=[{}]",
            self.stage,
            self.branches.join(", ")
        )
    }
}

impl ExecutionPlan for RolloutExec {
    fn name(&self) -> &str {
        "RolloutExec"
    }
    fn properties(&self) -> &Arc<PlanProperties> {
        &self.props
    }
    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        self.children.iter().collect()
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
        Ok(Arc::new(Self::new(
            self.stage.clone(),
            self.branches.clone(),
            children,
            Arc::clone(&self.schema),
            self.variant_column,
        )))
    }
    fn execute(
        &self,
        partition: usize,
        ctx: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let binding = EpochBinding::of_task(&ctx)?;
        let choice = binding.rollout().choice(&self.stage).cloned();
        let variant = choice.as_ref().and_then(|c| {
            self.branches
                .iter()
                .position(|b| *b == c.variant)
                .filter(|i| *i > 0)
        });
        let (mode, v) = match (&choice, variant) {
            (Some(c), Some(v)) => (c.mode, v),
            _ => (Mode::Off, 0),
        };
        // a plan instance's address names it for the epoch: see tally.rs
        let counts = binding
            .rollout()
            .claim(&self.stage, self as *const Self as usize);
        let delivered: Vec<usize> = match mode {
            Mode::Off | Mode::Shadow => vec![0],
            Mode::Primary => vec![v],
            Mode::Canary => vec![0, v],
        };
        let mut builder = RecordBatchReceiverStreamBuilder::new(Arc::clone(&self.schema), 2);
        for i in delivered {
            let Some(mut stream) = self.branch(i, partition, &ctx)? else {
                continue;
            };
            let (tx, labeler, binding) = (builder.tx(), self.labeler(i), Arc::clone(&binding));
            let (stage, name) = (self.stage.clone(), self.branches[i].clone());
            let capture = counts && mode == Mode::Shadow;
            let read_to_end = capture.then(|| ReadToEnd::open(&binding, &stage));
            builder.spawn(async move {
                while let Some(batch) = stream.next().await {
                    let batch = batch?;
                    if counts {
                        binding.rollout().with(&stage, |t| {
                            *t.delivered.entry(name.clone()).or_default() +=
                                batch.num_rows() as u64;
                            if capture {
                                t.primary_rows.push(batch.clone());
                            }
                        });
                    }
                    if tx.send(Ok(labeler.label(batch)?)).await.is_err() {
                        return Ok(()); // the consumer stopped: the capture is partial
                    }
                }
                if let Some(r) = read_to_end {
                    r.reached();
                }
                Ok(())
            });
        }
        if mode == Mode::Shadow && counts {
            let (stage, binding) = (self.stage.clone(), Arc::clone(&binding));
            match self.branch(v, partition, &ctx) {
                Ok(Some(mut stream)) => {
                    let read_to_end = ReadToEnd::open(&binding, &stage);
                    builder.spawn(async move {
                        while let Some(batch) = stream.next().await {
                            match batch {
                                Ok(b) => binding.rollout().with(&stage, |t| t.variant_rows.push(b)),
                                Err(e) => {
                                    binding.rollout().with(&stage, |t| {
                                        t.variant_failure.get_or_insert(e.to_string());
                                    });
                                    break;
                                }
                            }
                        }
                        read_to_end.reached();
                        Ok(())
                    });
                }
                Ok(None) => {}
                Err(e) => binding.rollout().with(&stage, |t| {
                    t.variant_failure.get_or_insert(e.to_string());
                }),
            }
        }
        let stream = builder.build();
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            Arc::clone(&self.schema),
            stream,
        )))
    }
}

/// One shadow branch's capture, counted open in the stage's tally until the
/// branch is read to its end. A consumer that stops early (a `LIMIT`
/// downstream) leaves it open: the outputs are then partial, and not
/// compared (they would differ by whatever each branch had reached). It is
/// counted when the branch starts, not when its task is dropped: a dropped
/// stream aborts its tasks later, maybe after the epoch has been judged.
struct ReadToEnd {
    binding: Arc<EpochBinding>,
    stage: String,
}

impl ReadToEnd {
    fn open(binding: &Arc<EpochBinding>, stage: &str) -> Self {
        binding.rollout().with(stage, |t| t.open_captures += 1);
        Self {
            binding: Arc::clone(binding),
            stage: stage.to_string(),
        }
    }

    fn reached(self) {
        self.binding
            .rollout()
            .with(&self.stage, |t| t.open_captures -= 1);
    }
}
