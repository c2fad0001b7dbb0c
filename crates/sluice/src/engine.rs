//! [`Engine`]: the entry point for running pipelines from Rust.

use std::sync::Arc;

use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::logical_expr::{AggregateUDF, ScalarUDF};
use datafusion::prelude::SessionConfig;
use object_store::ObjectStore;

use crate::compile::{CompiledPipeline, compile, merge_errors};
use crate::epoch::RunOptions;
use crate::error::{Result, SluiceError};
use crate::metrics::RunSummary;
use crate::operators::{OperatorFactory, OperatorRegistry};
use crate::spec::PipelineSpec;
use crate::storage::StoreRegistry;

/// Runs pipelines; holds what outlives one run: the DataFusion session
/// config and runtime (memory pool, spill folder), user functions and object
/// stores.
///
/// ```no_run
/// # async fn demo() -> sluice::Result<()> {
/// use sluice::{Engine, PipelineSpec};
/// let engine = Engine::new();
/// let spec = PipelineSpec::from_file("examples/tpch_revenue/pipeline.toml")?;
/// let summary = engine.run(spec).await?;
/// println!("{} epochs committed", summary.epochs);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Engine {
    session_config: SessionConfig,
    runtime: Arc<RuntimeEnv>,
    udfs: Vec<ScalarUDF>,
    udafs: Vec<AggregateUDF>,
    operators: Arc<OperatorRegistry>,
    stores: Arc<StoreRegistry>,
}

impl Default for Engine {
    fn default() -> Self {
        Self {
            session_config: SessionConfig::new(),
            runtime: Arc::new(RuntimeEnv::default()),
            udfs: Vec::new(),
            udafs: Vec::new(),
            operators: Arc::new(OperatorRegistry::with_builtins()),
            stores: Arc::new(StoreRegistry::new()),
        }
    }
}

impl Engine {
    /// An engine with DataFusion's default session config and runtime, no
    /// user functions and the default stores (local files, one in-memory
    /// store, S3 from the environment).
    pub fn new() -> Self {
        Self::default()
    }

    /// Plans and runs every pipeline with this session config (partitions,
    /// batch size, any DataFusion option). A pipeline's `[settings]`
    /// `target_partitions` and `batch_size` still win where they are set.
    pub fn with_session_config(mut self, config: SessionConfig) -> Self {
        self.session_config = config;
        self
    }

    /// Runs every pipeline in this runtime: its memory pool bounds what
    /// operators may hold, its disk manager says where they spill.
    pub fn with_runtime_env(mut self, runtime: Arc<RuntimeEnv>) -> Self {
        self.runtime = runtime;
        self
    }

    /// Makes a scalar function callable from every SQL stage.
    pub fn register_udf(&mut self, udf: ScalarUDF) -> &mut Self {
        self.udfs.push(udf);
        self
    }

    /// Makes an aggregate function callable from every SQL stage.
    pub fn register_udaf(&mut self, udaf: AggregateUDF) -> &mut Self {
        self.udafs.push(udaf);
        self
    }

    /// Makes `operator = "<name>"` stages (`kind = "operator"`) build
    /// their operator with `factory`; a name of a built-in (`dedupe`,
    /// `window`) replaces it. See [`crate::operators`].
    pub fn register_operator(
        &mut self,
        name: &str,
        factory: Arc<dyn OperatorFactory>,
    ) -> &mut Self {
        self.operators.register(name, factory);
        self
    }

    /// Uses `store` for every location under `url` (e.g. `s3://bucket`).
    pub fn register_object_store(&self, url: &str, store: Arc<dyn ObjectStore>) {
        self.stores.register(url, store);
    }

    pub(crate) fn session_config(&self) -> &SessionConfig {
        &self.session_config
    }

    pub(crate) fn runtime_env(&self) -> &Arc<RuntimeEnv> {
        &self.runtime
    }

    pub(crate) fn udfs(&self) -> &[ScalarUDF] {
        &self.udfs
    }

    pub(crate) fn udafs(&self) -> &[AggregateUDF] {
        &self.udafs
    }

    pub(crate) fn operators(&self) -> &Arc<OperatorRegistry> {
        &self.operators
    }

    pub(crate) fn stores(&self) -> &StoreRegistry {
        &self.stores
    }

    /// Opens sources, plans stages and sinks; fails with every problem found.
    pub async fn compile(&self, spec: PipelineSpec) -> Result<CompiledPipeline> {
        compile(self, spec).await
    }

    /// Compiles and runs a pipeline to the end of its bounded input.
    pub async fn run(&self, spec: PipelineSpec) -> Result<RunSummary> {
        self.compile(spec).await?.run(RunOptions::default()).await
    }

    /// Checks a pipeline without running it: the spec, the graph, every
    /// source's input, every stage's SQL, and that every sink is reachable.
    pub async fn validate(&self, spec: PipelineSpec) -> Result<CompiledPipeline> {
        let compiled = self.compile(spec).await?;
        let mut errors = Vec::new();
        for (name, s) in &compiled.plan.sinks {
            if let Err(e) = s.sink.check_reachable().await {
                let issue = compiled
                    .plan
                    .spec
                    .issue(format!("sinks.{name}.url"), e.to_string())
                    .with_help(
                        "point `url` at a folder (or bucket prefix) sluice can create and write",
                    );
                errors.push(SluiceError::spec(issue));
            }
        }
        if errors.is_empty() {
            Ok(compiled)
        } else {
            Err(merge_errors(errors))
        }
    }
}

impl From<Vec<SluiceError>> for SluiceError {
    fn from(errors: Vec<SluiceError>) -> Self {
        merge_errors(errors)
    }
}
