//! `OperatorNode`: an operator stage (`kind = "operator"`) in a logical plan.
//!
//! The node holds the [`Operator`] its factory built; the physical planner
//! asks the operator for its plan over the planned input. Nothing is pushed
//! through it: an operator sees its input's rows and columns as they are.

use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::common::{
    DFSchema, DFSchemaRef, Result, internal_datafusion_err, internal_err, plan_err,
};
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::{
    Expr, Extension, LogicalPlan, UserDefinedLogicalNode, UserDefinedLogicalNodeCore,
};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_planner::{ExtensionPlanner, PhysicalPlanner};

use crate::operators::Operator;

/// An operator stage over its input; see the module docs.
#[derive(Debug, Clone)]
pub(crate) struct OperatorNode {
    /// The stage.
    pub stage: String,
    /// The operator's name, as the stage wrote it.
    pub name: String,
    pub operator: Arc<dyn Operator>,
    pub input: LogicalPlan,
    schema: DFSchemaRef,
}

impl OperatorNode {
    pub(crate) fn plan(
        stage: &str,
        name: &str,
        operator: Arc<dyn Operator>,
        input: LogicalPlan,
    ) -> Result<LogicalPlan> {
        let schema = Arc::new(DFSchema::try_from(operator.schema().as_ref().clone())?);
        Ok(LogicalPlan::Extension(Extension {
            node: Arc::new(OperatorNode {
                stage: stage.to_string(),
                name: name.to_string(),
                operator,
                input,
                schema,
            }),
        }))
    }
}

// the operator is the stage's, one per stage: the stage and input say which node it is
impl PartialEq for OperatorNode {
    fn eq(&self, other: &Self) -> bool {
        self.stage == other.stage && self.name == other.name && self.input == other.input
    }
}
impl Eq for OperatorNode {}
impl Hash for OperatorNode {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.stage.hash(state);
        self.name.hash(state);
        self.input.hash(state);
    }
}
impl PartialOrd for OperatorNode {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        match (&self.stage, &self.name).cmp(&(&other.stage, &other.name)) {
            Ordering::Equal => self.input.partial_cmp(&other.input),
            o => Some(o),
        }
    }
}

impl UserDefinedLogicalNodeCore for OperatorNode {
    fn name(&self) -> &str {
        "Operator"
    }
    fn inputs(&self) -> Vec<&LogicalPlan> {
        vec![&self.input]
    }
    fn schema(&self) -> &DFSchemaRef {
        &self.schema
    }
    fn expressions(&self) -> Vec<Expr> {
        Vec::new()
    }
    fn fmt_for_explain(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "Operator: stage={} operator={}", self.stage, self.name)
    }
    fn with_exprs_and_inputs(
        &self,
        exprs: Vec<Expr>,
        mut inputs: Vec<LogicalPlan>,
    ) -> Result<Self> {
        if !exprs.is_empty() {
            return internal_err!("an operator stage has no expressions");
        }
        let input = inputs.pop().ok_or_else(|| {
            internal_datafusion_err!("an operator stage rebuilt without an input")
        })?;
        Ok(OperatorNode {
            input,
            ..self.clone()
        })
    }
}

/// Plans [`OperatorNode`] by asking its operator.
#[derive(Debug, Default)]
pub(crate) struct OperatorPlanner;

#[async_trait]
impl ExtensionPlanner for OperatorPlanner {
    async fn plan_extension(
        &self,
        _planner: &dyn PhysicalPlanner,
        node: &dyn UserDefinedLogicalNode,
        _logical_inputs: &[&LogicalPlan],
        physical_inputs: &[Arc<dyn ExecutionPlan>],
        _session: &dyn Session,
        _ctx: &PhysicalPlanningContext,
    ) -> Result<Option<Arc<dyn ExecutionPlan>>> {
        let Some(node) = node.as_any().downcast_ref::<OperatorNode>() else {
            return Ok(None);
        };
        let [input] = physical_inputs else {
            return internal_err!("an operator stage has one input");
        };
        // the operator was built for the logical input's columns; the
        // physical plan must hand it the same ones
        let (logical, physical) = (node.input.schema().as_arrow().clone(), input.schema());
        let same = logical.fields().len() == physical.fields().len()
            && logical
                .fields()
                .iter()
                .zip(physical.fields())
                .all(|(a, b)| a.name() == b.name() && a.data_type() == b.data_type());
        if !same {
            return plan_err!(
                "operator `{}` of stage `{}` was built for the input {logical:?}, the plan gives {physical:?}",
                node.name,
                node.stage
            );
        }
        let plan = node.operator.plan(Arc::clone(input))?;
        let (have, want) = (plan.schema(), node.operator.schema());
        if have.fields() != want.fields() {
            return plan_err!(
                "operator `{}` of stage `{}` planned output {have:?}, not the schema it declared {want:?}",
                node.name,
                node.stage
            );
        }
        Ok(Some(plan))
    }
}
