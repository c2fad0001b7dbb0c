//! [`Engine`]: the entry point for running pipelines from Rust.

use std::sync::Arc;

use datafusion::logical_expr::{AggregateUDF, ScalarUDF};
use object_store::ObjectStore;

use crate::compile::{CompiledPipeline, compile, merge_errors};
use crate::error::{Result, SluiceError};
use crate::metrics::RunSummary;
use crate::runner::RunOptions;
use crate::spec::PipelineSpec;
use crate::storage::StoreRegistry;

/// Runs pipelines; holds what outlives one run: user functions and object stores.
///
/// ```no_run
/// # async fn demo() -> sluice_engine::Result<()> {
/// use sluice_engine::{Engine, PipelineSpec};
/// let engine = Engine::new();
/// let spec = PipelineSpec::from_file("examples/tpch_revenue/pipeline.toml")?;
/// let summary = engine.run(spec).await?;
/// println!("{} epochs committed", summary.epochs);
/// # Ok(()) }
/// ```
#[derive(Debug, Default)]
pub struct Engine {
    udfs: Vec<ScalarUDF>,
    udafs: Vec<AggregateUDF>,
    stores: Arc<StoreRegistry>,
}

impl Engine {
    /// An engine with no user functions and the default stores
    /// (local files, one in-memory store, S3 from the environment).
    pub fn new() -> Self {
        Self::default()
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

    /// Uses `store` for every location under `url` (e.g. `s3://bucket`).
    pub fn register_object_store(&self, url: &str, store: Arc<dyn ObjectStore>) {
        self.stores.register(url, store);
    }

    /// The registered scalar functions.
    pub fn udfs(&self) -> &[ScalarUDF] {
        &self.udfs
    }

    /// The registered aggregate functions.
    pub fn udafs(&self) -> &[AggregateUDF] {
        &self.udafs
    }

    /// The object stores.
    pub fn stores(&self) -> &StoreRegistry {
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
        for (name, s) in &compiled.sinks {
            if let Err(e) = s.sink.check_reachable().await {
                let issue = compiled
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
