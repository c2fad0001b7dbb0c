//! The DataFusion session a pipeline is planned and run in.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::context::QueryPlanner;
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_planner::{DefaultPhysicalPlanner, ExtensionPlanner, PhysicalPlanner};
use datafusion::prelude::SessionContext;

use crate::engine::Engine;
use crate::ops::external_stage::ExternalStagePlanner;
use crate::ops::operator_stage::OperatorPlanner;
use crate::ops::slot::SlotPlanner;
use crate::ops::stage::StagePlanner;
use crate::ops::window_aggregate::WindowAggregatePlanner;
use crate::ops::window_join::WindowJoinPlanner;
use crate::rollout::exec::RolloutPlanner;
use crate::rollout::split::CanarySplitPlanner;
use crate::spec::PipelineSpec;

/// Plans logical plans with sluice's extension nodes.
pub(crate) struct SluiceQueryPlanner {
    planners: Vec<Arc<dyn ExtensionPlanner + Send + Sync>>,
}

impl std::fmt::Debug for SluiceQueryPlanner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SluiceQueryPlanner({} extension planners)",
            self.planners.len()
        )
    }
}

impl Default for SluiceQueryPlanner {
    fn default() -> Self {
        Self {
            planners: vec![
                Arc::new(StagePlanner),
                Arc::new(ExternalStagePlanner),
                Arc::new(RolloutPlanner),
                Arc::new(CanarySplitPlanner),
                Arc::new(WindowAggregatePlanner),
                Arc::new(WindowJoinPlanner),
                Arc::new(OperatorPlanner),
                Arc::new(SlotPlanner),
            ],
        }
    }
}

#[async_trait]
impl QueryPlanner for SluiceQueryPlanner {
    async fn create_physical_plan(
        &self,
        plan: &LogicalPlan,
        session: &dyn Session,
    ) -> datafusion::common::Result<Arc<dyn ExecutionPlan>> {
        DefaultPhysicalPlanner::with_extension_planners(self.planners.clone())
            .create_physical_plan(plan, session)
            .await
    }
}

/// The context a spec is planned in: the engine's session config and
/// runtime (memory pool, spill folder), the spec's `[settings]` on top, the
/// engine's functions and stores.
pub(crate) fn session_for(engine: &Engine, spec: &PipelineSpec) -> SessionContext {
    let mut config = engine.session_config().clone();
    if let Some(p) = spec.settings.target_partitions {
        config = config.with_target_partitions(p.max(1));
    }
    if let Some(b) = spec.settings.batch_size {
        config = config.with_batch_size(b.max(1));
    }
    config = config.with_information_schema(false);
    // operator stages find their factories here
    config = config.with_extension(Arc::clone(engine.operators()));
    // parquet metadata (sluice's lineage and schema versions) travels with the data
    config.options_mut().execution.parquet.skip_metadata = false;
    let state = SessionStateBuilder::new()
        .with_config(config)
        .with_runtime_env(Arc::clone(engine.runtime_env()))
        .with_default_features()
        .with_query_planner(Arc::new(SluiceQueryPlanner::default()))
        .build();
    let ctx = SessionContext::new_with_state(state);
    for f in crate::functions::all() {
        ctx.register_udf(f);
    }
    for udf in engine.udfs() {
        ctx.register_udf(udf.clone());
    }
    for udaf in engine.udafs() {
        ctx.register_udaf(udaf.clone());
    }
    engine.stores().register_all(&ctx);
    ctx
}
