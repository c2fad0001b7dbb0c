//! From a checked spec to DataFusion: sources as tables, stages as views, one
//! logical plan per sink.
//!
//! Each source is registered as an [`EpochTable`]; each SQL stage is planned
//! against the tables and views before it, wrapped in a [`StageNode`] and
//! registered as a view. DataFusion inlines views, so a chain of stages is one
//! plan that the optimizer sees whole: filters and projections move across
//! stage borders into the scans.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::catalog::Session;
use datafusion::config::Dialect;
use datafusion::datasource::ViewTable;
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::context::QueryPlanner;
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_planner::{DefaultPhysicalPlanner, ExtensionPlanner, PhysicalPlanner};
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion::sql::parser::Statement;
use sluice_contract::{LineageEntry, metadata};

use crate::dead_letter::{self, DeadLetters, OnError};
use crate::engine::Engine;
use crate::error::{Result, SluiceError, SpecIssue};
use crate::metrics::Progress;
use crate::ops::external_stage::{ExternalStageNode, ExternalStagePlanner};
use crate::ops::stage::{StageNode, StagePlanner};
use crate::sinks::Sink;
use crate::sources::{EpochTable, Source, SourceContext};
use crate::spec::PipelineSpec;
use crate::spec::graph::Graph;
use crate::stages::StageConfig;
use crate::stages::external::ExternalRuntime;

/// Plans logical plans with sluice's extension nodes.
pub struct SluiceQueryPlanner {
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
            planners: vec![Arc::new(StagePlanner), Arc::new(ExternalStagePlanner)],
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

/// An opened source and the table it is registered as.
#[derive(Debug)]
pub struct CompiledSource {
    /// The source.
    pub source: Box<dyn Source>,
    /// Its table in the DataFusion context.
    pub table: Arc<EpochTable>,
    /// Read whole in every epoch.
    pub lookup: bool,
}

/// A sink and the plan of its input.
#[derive(Debug)]
pub struct CompiledSink {
    /// The sink.
    pub sink: Arc<dyn Sink>,
    /// Logical plan of the rows it writes.
    pub plan: LogicalPlan,
    /// Lineage written with its data.
    pub lineage: Vec<LineageEntry>,
    /// `sluice.schema` of its data.
    pub schema_name: String,
    /// `sluice.schema.version` of its data.
    pub schema_version: String,
    /// Sources feeding it.
    pub sources: Vec<String>,
}

/// A pipeline ready to run: see [`crate::runner`].
pub struct CompiledPipeline {
    /// The spec.
    pub spec: PipelineSpec,
    /// Its checked graph.
    pub graph: Graph,
    /// The DataFusion context holding the sources and stages.
    pub ctx: SessionContext,
    /// Sources by name.
    pub sources: BTreeMap<String, CompiledSource>,
    /// Sinks by name.
    pub sinks: BTreeMap<String, CompiledSink>,
    /// Live counters for progress display.
    pub progress: Arc<Progress>,
    /// External stages, by name.
    pub externals: BTreeMap<String, Arc<ExternalRuntime>>,
    /// Rows sources and stages gave up on in the epoch being written.
    pub dead_letters: Arc<DeadLetters>,
    /// The OpenLineage events of the current run, when `[lineage]` is set.
    pub lineage: Option<Arc<crate::openlineage::Emitter>>,
}

impl std::fmt::Debug for CompiledPipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledPipeline")
            .field("pipeline", &self.spec.id())
            .field("sources", &self.sources.keys().collect::<Vec<_>>())
            .field("sinks", &self.sinks.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl CompiledPipeline {
    /// Plans a sink's input against the slices installed in the source tables.
    pub async fn physical_plan(&self, sink: &str) -> Result<Arc<dyn ExecutionPlan>> {
        let s = self
            .sinks
            .get(sink)
            .ok_or_else(|| SluiceError::Internal(format!("no sink `{sink}`")))?;
        self.ctx
            .state()
            .create_physical_plan(&s.plan)
            .await
            .map_err(|e| SluiceError::from_datafusion(e, Some(&format!("sink `{sink}`"))))
    }

    /// The schema a sink writes: its plan's schema plus sluice's metadata.
    pub fn output_schema(
        &self,
        sink: &CompiledSink,
        provenance: &sluice_contract::Provenance,
    ) -> Result<SchemaRef> {
        let arrow: Schema = sink.plan.schema().as_arrow().clone();
        let mut md = arrow.metadata().clone();
        md.insert(metadata::PIPELINE.into(), self.spec.id());
        md.insert(metadata::SCHEMA.into(), sink.schema_name.clone());
        md.insert(metadata::SCHEMA_VERSION.into(), sink.schema_version.clone());
        md.insert(metadata::LINEAGE.into(), to_json(&sink.lineage)?);
        md.insert(metadata::PROVENANCE.into(), to_json(provenance)?);
        Ok(Arc::new(Schema::new_with_metadata(
            arrow.fields().clone(),
            md,
        )))
    }
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v)
        .map_err(|e| SluiceError::Internal(format!("cannot encode metadata: {e}")))
}

/// Builds the DataFusion context for a spec.
pub fn session_for(engine: &Engine, spec: &PipelineSpec) -> SessionContext {
    let partitions = spec.settings.target_partitions.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
    });
    let mut config = SessionConfig::new()
        .with_target_partitions(partitions.max(1))
        .with_batch_size(spec.settings.batch_size.unwrap_or(8192).max(1))
        .with_information_schema(false);
    // views keep sluice's stage borders; parquet metadata travels with the data
    config.options_mut().execution.parquet.skip_metadata = false;
    let state = SessionStateBuilder::new()
        .with_config(config)
        .with_default_features()
        .with_query_planner(Arc::new(SluiceQueryPlanner::default()))
        .build();
    let ctx = SessionContext::new_with_state(state);
    for udf in engine.udfs() {
        ctx.register_udf(udf.clone());
    }
    for udaf in engine.udafs() {
        ctx.register_udaf(udaf.clone());
    }
    engine.stores().register_all(&ctx);
    ctx
}

/// Compiles `spec`; with `collect`, keeps going after errors and returns them all.
pub async fn compile(engine: &Engine, spec: PipelineSpec) -> Result<CompiledPipeline> {
    let graph = Graph::check(&spec).map_err(SluiceError::Spec)?;
    let ctx = session_for(engine, &spec);
    let progress = Arc::new(Progress::default());
    let mut errors: Vec<SluiceError> = Vec::new();

    let target_partitions = ctx.state().config().target_partitions();
    let batch_size = ctx.state().config().batch_size();
    let dead_letters = DeadLetters::new();
    if let Some(issue) = check_dead_letter_sink(&spec) {
        errors.push(SluiceError::spec(issue));
    }
    let mut sources = BTreeMap::new();
    for (name, cfg) in &spec.sources {
        let sctx = SourceContext {
            name,
            spec: &spec,
            stores: engine.stores(),
            session: &ctx,
            target_partitions,
            batch_size,
            dead_letters: &dead_letters,
        };
        match cfg.open(&sctx).await {
            Ok(source) => {
                let checks =
                    match parse_checks(&ctx, &spec, name, cfg, &source.schema(), &dead_letters) {
                        Ok(c) => c,
                        Err(e) => {
                            errors.push(e);
                            continue;
                        }
                    };
                let table = Arc::new(
                    EpochTable::new(
                        name,
                        source.kind(),
                        source.schema(),
                        Arc::clone(&progress.rows_read),
                    )
                    .with_checks(checks),
                );
                if let Err(e) = ctx.register_table(name.as_str(), Arc::clone(&table) as _) {
                    errors.push(SluiceError::Internal(format!(
                        "cannot register source `{name}`: {e}"
                    )));
                }
                sources.insert(
                    name.clone(),
                    CompiledSource {
                        source,
                        table,
                        lookup: cfg.is_lookup(),
                    },
                );
            }
            Err(e) => errors.push(e),
        }
    }
    // the engine's stores may have grown (s3 buckets opened by sources)
    engine.stores().register_all(&ctx);

    let mut failed: Vec<String> = spec
        .sources
        .keys()
        .filter(|n| !sources.contains_key(*n))
        .cloned()
        .collect();
    let mut externals = BTreeMap::new();
    for name in &graph.stage_order {
        let Some(stage) = spec.stages.get(name) else {
            continue;
        };
        if stage.inputs().iter().any(|i| failed.contains(i)) {
            // an input already failed; its error is reported, don't pile on
            failed.push(name.clone());
            continue;
        }
        let planned = match stage {
            StageConfig::Sql(_) => plan_stage(&ctx, &spec, name, stage).await,
            StageConfig::External(c) => {
                match plan_external(&ctx, &spec, name, c, &dead_letters).await {
                    Ok((plan, runtime)) => {
                        externals.insert(name.clone(), runtime);
                        Ok(plan)
                    }
                    Err(e) => Err(e),
                }
            }
        };
        match planned {
            Ok(plan) => {
                if let Some((schema_name, version)) = stage.declared_schema() {
                    let reference =
                        version.map_or(schema_name.clone(), |v| format!("{schema_name}@{v}"));
                    let key = format!("stages.{name}.schema");
                    if let Some(issue) = check_contract(
                        &spec,
                        key,
                        &format!("stage `{name}`"),
                        &reference,
                        plan.schema().as_arrow(),
                    ) {
                        errors.push(SluiceError::spec(issue));
                    }
                }
                let view = ViewTable::new(plan, None);
                if let Err(e) = ctx.register_table(name.as_str(), Arc::new(view)) {
                    errors.push(SluiceError::Internal(format!(
                        "cannot register stage `{name}`: {e}"
                    )));
                }
            }
            Err(e) => {
                failed.push(name.clone());
                errors.push(e);
            }
        }
    }

    let mut sinks = BTreeMap::new();
    for (name, cfg) in &spec.sinks {
        let input = cfg.input();
        if failed.iter().any(|f| f == input) {
            continue;
        }
        let sink = match cfg.open(name, &spec, engine.stores()) {
            Ok(s) => s,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        engine.stores().register_all(&ctx);
        let plan = match ctx.table(input).await {
            Ok(df) => df.into_unoptimized_plan(),
            Err(e) => {
                errors.push(SluiceError::Plan {
                    stage: name.clone(),
                    file: None,
                    message: e.to_string(),
                });
                continue;
            }
        };
        let schema = plan.schema().as_arrow().clone();
        if let Some(issue) = check_partition_columns(&spec, name, cfg, &schema) {
            errors.push(SluiceError::spec(issue));
            continue;
        }
        if let crate::sinks::SinkConfig::Parquet(crate::sinks::ParquetSinkConfig {
            schema: Some(reference),
            ..
        }) = cfg
        {
            if let Some(issue) = check_contract(
                &spec,
                format!("sinks.{name}.schema"),
                &format!("sink `{name}`'s input"),
                reference,
                &schema,
            ) {
                errors.push(SluiceError::spec(issue));
                continue;
            }
        }
        let (schema_name, schema_version) =
            match spec.stages.get(input).and_then(|s| s.declared_schema()) {
                Some((n, v)) => (n, v.unwrap_or_else(|| spec.pipeline.version.clone())),
                None => (input.to_string(), spec.pipeline.version.clone()),
            };
        let lineage = lineage_of(&spec, &graph, &sources, &externals, name, cfg.kind());
        sinks.insert(
            name.clone(),
            CompiledSink {
                sink,
                plan,
                lineage,
                schema_name,
                schema_version,
                sources: graph.sources_of(name),
            },
        );
    }

    if let Some(dl) = &spec.dead_letter {
        match open_dead_letter_sink(&spec, dl, engine, &ctx) {
            Ok(s) => {
                sinks.insert(dead_letter::SINK_NAME.to_string(), s);
            }
            Err(e) => errors.push(e),
        }
    }

    if !errors.is_empty() {
        return Err(merge_errors(errors));
    }
    Ok(CompiledPipeline {
        spec,
        graph,
        ctx,
        sources,
        sinks,
        progress,
        externals,
        dead_letters,
        lineage: None,
    })
}

/// One error, or all spec issues together, or a list.
pub fn merge_errors(mut errors: Vec<SluiceError>) -> SluiceError {
    if errors.len() == 1 {
        return errors.remove(0);
    }
    let mut issues: Vec<SpecIssue> = Vec::new();
    for e in errors {
        match e {
            SluiceError::Spec(mut i) => issues.append(&mut i),
            other => issues.push(SpecIssue::new("", "", other.to_string())),
        }
    }
    SluiceError::Spec(issues)
}

/// A source's `checks`, parsed as SQL predicates over its columns; the error
/// names the check's key.
fn parse_checks(
    ctx: &SessionContext,
    spec: &PipelineSpec,
    name: &str,
    cfg: &crate::sources::SourceConfig,
    schema: &datafusion::arrow::datatypes::SchemaRef,
    dead_letters: &Arc<DeadLetters>,
) -> Result<crate::sources::epoch_table::DeclaredChecks> {
    let df_schema = datafusion::common::DFSchema::try_from(schema.as_ref().clone())
        .map_err(|e| SluiceError::Internal(format!("source `{name}` schema: {e}")))?;
    let mut checks = Vec::new();
    for (i, sql) in cfg.checks().iter().enumerate() {
        let issue =
            |m: String| SluiceError::spec(spec.issue(format!("sources.{name}.checks[{i}]"), m));
        let expr = ctx
            .parse_sql_expr(sql, &df_schema)
            .map_err(|e| issue(format!("`{sql}`: {e}")))?;
        let field = datafusion::logical_expr::ExprSchemable::to_field(&expr, &df_schema)
            .map_err(|e| issue(format!("`{sql}`: {e}")))?
            .1;
        let data_type = field.data_type().clone();
        if data_type != datafusion::arrow::datatypes::DataType::Boolean {
            return Err(issue(format!(
                "`{sql}` is {data_type}, a check must be true or false"
            )));
        }
        checks.push((sql.clone(), expr));
    }
    Ok(crate::sources::epoch_table::DeclaredChecks {
        checks,
        on_error: cfg.on_error(),
        dead_letters: Arc::clone(dead_letters),
    })
}

/// `on_error = "dead_letter"` anywhere needs the pipeline's `[dead_letter]`
/// table, and the name `dead_letter` is then taken.
fn check_dead_letter_sink(spec: &PipelineSpec) -> Option<SpecIssue> {
    let wants: Vec<String> = spec
        .sources
        .iter()
        .filter(|(_, c)| c.on_error() == OnError::DeadLetter)
        .map(|(n, _)| format!("sources.{n}.on_error"))
        .chain(
            spec.stages
                .iter()
                .filter(|(_, c)| matches!(c, StageConfig::External(e) if e.on_error == OnError::DeadLetter))
                .map(|(n, _)| format!("stages.{n}.on_error")),
        )
        .collect();
    if spec.dead_letter.is_none() {
        let key = wants.first()?;
        return Some(
            spec.issue(
                key.clone(),
                "`on_error = \"dead_letter\"` needs a dead-letter sink, and the pipeline has none",
            )
            .with_help("add a table `[dead_letter]` with `url = \"out/dead_letters\"`"),
        );
    }
    if spec.sinks.contains_key(dead_letter::SINK_NAME) {
        return Some(spec.issue(
            format!("sinks.{}", dead_letter::SINK_NAME),
            "`dead_letter` is the name of the pipeline's dead-letter sink; rename this sink",
        ));
    }
    None
}

/// The `[dead_letter]` sink: a Parquet sink of [`dead_letter::schema`] rows
/// under the same commit protocol as every sink.
fn open_dead_letter_sink(
    spec: &PipelineSpec,
    dl: &dead_letter::DeadLetterConfig,
    engine: &Engine,
    ctx: &SessionContext,
) -> Result<CompiledSink> {
    let cfg = crate::sinks::SinkConfig::Parquet(crate::sinks::ParquetSinkConfig::new(
        dead_letter::SINK_NAME,
        &dl.url,
    ));
    let sink = cfg.open(dead_letter::SINK_NAME, spec, engine.stores())?;
    let empty = datafusion::datasource::empty::EmptyTable::new(dead_letter::schema());
    let plan = ctx
        .read_table(Arc::new(empty))
        .map_err(|e| SluiceError::Internal(format!("dead-letter plan: {e}")))?
        .into_unoptimized_plan();
    Ok(CompiledSink {
        sink,
        plan,
        lineage: Vec::new(),
        schema_name: dead_letter::SINK_NAME.into(),
        schema_version: "1".into(),
        sources: spec.sources.keys().cloned().collect(),
    })
}

/// A stage or sink that declares `schema = "name@version"` (or a bare
/// name, its latest version) found in the registry must produce rows its
/// readers can read as that schema: every declared field present (or
/// nullable) with a type that widens to the declared one. A name the
/// registry does not hold is only a label.
fn check_contract(
    spec: &PipelineSpec,
    key: String,
    who: &str,
    reference: &str,
    output: &Schema,
) -> Option<SpecIssue> {
    let registry = spec.registry();
    let schema_name = reference.split('@').next().unwrap_or(reference);
    if !registry.root().join(schema_name).is_dir() {
        return None;
    }
    let declared = match registry.get(reference) {
        Ok(d) => d,
        Err(e) => return Some(spec.issue(key, e.to_string())),
    };
    let readers = format!("readers of {}@{}", declared.name, declared.version);
    let breaks = sluice_contract::compat::read_breaks(output, &declared.schema, &readers);
    if breaks.is_empty() {
        return None;
    }
    let list: Vec<String> = breaks.iter().map(|b| format!("  {b}")).collect();
    Some(
        spec.issue(key, format!("{who} does not produce {reference} ({}):\n{}", declared.file.display(), list.join("\n")))
            .with_help("change the query (CAST, COALESCE, add the column) or declare a schema version that matches it"),
    )
}

fn check_partition_columns(
    spec: &PipelineSpec,
    name: &str,
    cfg: &crate::sinks::SinkConfig,
    schema: &Schema,
) -> Option<SpecIssue> {
    use crate::sinks::SinkConfig;
    let cols = match cfg {
        SinkConfig::Parquet(c) => &c.partition_by,
        SinkConfig::Csv(c) => &c.partition_by,
        SinkConfig::Jsonl(c) => &c.partition_by,
        SinkConfig::Stdout(_) | SinkConfig::Blackhole(_) => return None,
    };
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    cols.iter().find(|c| !names.contains(&c.as_str())).map(|c| {
        spec.issue(
            format!("sinks.{name}.partition_by"),
            format!("`{c}` is not a column of `{}`", cfg.input()),
        )
        .with_help(format!("columns are: {}", names.join(", ")))
    })
}

/// The SQL text of a stage and the file it came from.
fn stage_sql(
    spec: &PipelineSpec,
    name: &str,
    stage: &StageConfig,
) -> Result<(String, Option<PathBuf>)> {
    let StageConfig::Sql(c) = stage else {
        return Err(SluiceError::Internal(format!(
            "stage `{name}` is not an sql stage"
        )));
    };
    match (&c.query, &c.sql) {
        (Some(q), None) => Ok((q.clone(), None)),
        (None, Some(path)) => {
            let full = spec.resolve_path(path);
            let text = std::fs::read_to_string(&full).map_err(|e| {
                SluiceError::spec(
                    spec.issue(
                        format!("stages.{name}.sql"),
                        format!("cannot read {}: {e}", full.display()),
                    )
                    .with_help("the path is relative to the pipeline file"),
                )
            })?;
            Ok((text, Some(full)))
        }
        (Some(_), Some(_)) => Err(SluiceError::spec(
            spec.issue(format!("stages.{name}"), "both `query` and `sql` are set")
                .with_help("keep one: inline `query` or a `sql` file"),
        )),
        (None, None) => Err(SluiceError::spec(spec.issue(
            format!("stages.{name}"),
            "an sql stage needs `query` (inline SQL) or `sql` (a .sql file)",
        ))),
    }
}

async fn plan_stage(
    ctx: &SessionContext,
    spec: &PipelineSpec,
    name: &str,
    stage: &StageConfig,
) -> Result<LogicalPlan> {
    let (sql, file) = stage_sql(spec, name, stage)?;
    let key = format!(
        "stages.{name}.{}",
        if file.is_some() { "sql" } else { "query" }
    );
    let plan_err = |message: String| {
        let source = file
            .as_ref()
            .map(|f| format!(" in {}", f.display()))
            .unwrap_or_default();
        SluiceError::spec(
            spec.issue(
                &key,
                format!("stage `{name}`: the SQL{source} does not plan: {message}"),
            )
            .with_help("fix the query; column and table names are those of the stage's inputs"),
        )
    };
    let state = ctx.state();
    let statement = state
        .sql_to_statement(&sql, &Dialect::Generic)
        .map_err(|e| plan_err(e.to_string()))?;
    if !is_query(&statement) {
        return Err(plan_err(
            "an sql stage must be a query (SELECT, WITH or VALUES), not a command".into(),
        ));
    }
    let refs = state
        .resolve_table_references(&statement)
        .map_err(|e| plan_err(e.to_string()))?;
    let inputs = stage.inputs();
    let unknown: Vec<String> = refs
        .iter()
        .map(|r| r.table().to_string())
        .filter(|t| !inputs.iter().any(|i| i == t))
        .collect();
    if !unknown.is_empty() {
        return Err(SluiceError::spec(
            spec.issue(
                format!("stages.{name}.inputs"),
                format!(
                    "the SQL{} reads {} which {} not among the stage's inputs [{}]",
                    file.as_ref()
                        .map(|f| format!(" in {}", f.display()))
                        .unwrap_or_default(),
                    unknown
                        .iter()
                        .map(|u| format!("`{u}`"))
                        .collect::<Vec<_>>()
                        .join(", "),
                    if unknown.len() == 1 { "is" } else { "are" },
                    inputs.join(", ")
                ),
            )
            .with_help("add it to `inputs` (a source or an earlier stage) or fix the table name"),
        ));
    }
    let plan = state
        .statement_to_plan(statement)
        .await
        .map_err(|e| plan_err(e.to_string()))?;
    // surface type errors now, attributed to this stage
    state.optimize(&plan).map_err(|e| plan_err(e.to_string()))?;
    Ok(StageNode::wrap(name, stage.kind(), plan))
}

/// Starts an external stage, checks its manifest against its input and
/// plans it as an [`ExternalStageNode`] inside a stage border.
async fn plan_external(
    ctx: &SessionContext,
    spec: &PipelineSpec,
    name: &str,
    c: &crate::stages::ExternalStageConfig,
    dead_letters: &Arc<DeadLetters>,
) -> Result<(LogicalPlan, Arc<ExternalRuntime>)> {
    let [input] = c.inputs.as_slice() else {
        return Err(SluiceError::spec(
            spec.issue(
                format!("stages.{name}.inputs"),
                format!(
                    "an external stage reads exactly one input, found {}",
                    c.inputs.len()
                ),
            )
            .with_help("join or union the inputs in an sql stage first"),
        ));
    };
    let runtime = ExternalRuntime::start(name, c.clone(), &spec.base_dir, Arc::clone(dead_letters)).await.map_err(|e| {
        let key = if c.url.is_some() { "url" } else { "command" };
        SluiceError::spec(
            spec.issue(format!("stages.{name}.{key}"), format!("stage `{name}`: {e}"))
                .with_help("the program must serve sluice.stage.v1 on $SLUICE_STAGE_SOCKET (see docs/protocol.md); build the example stages with `./scripts/build-stages`"),
        )
    })?;
    let plan = ctx
        .table(input.as_str())
        .await
        .map_err(|e| SluiceError::Plan {
            stage: name.to_string(),
            file: None,
            message: e.to_string(),
        })?
        .into_unoptimized_plan();
    let m = &runtime.manifest;
    if let Some(decl) = &m.input_schema {
        let upstream = plan.schema().as_arrow().clone();
        sluice_flight::manifest::check_schema(&decl.schema, &upstream).map_err(|msg| {
            SluiceError::spec(
                spec.issue(
                    format!("stages.{name}.inputs"),
                    format!(
                        "`{input}` does not give stage `{name}` ({} {} in {}) the input its manifest declares ({}@{}): {msg}",
                        m.name, m.version, m.language, decl.name, decl.version
                    ),
                )
                .with_help("CAST or rename the columns in an sql stage before it"),
            )
        })?;
    }
    let node =
        ExternalStageNode::try_new(Arc::clone(&runtime), plan).map_err(|e| SluiceError::Plan {
            stage: name.to_string(),
            file: None,
            message: e.to_string(),
        })?;
    let plan = LogicalPlan::Extension(datafusion::logical_expr::Extension {
        node: Arc::new(node),
    });
    Ok((StageNode::wrap(name, "external", plan), runtime))
}

fn is_query(statement: &Statement) -> bool {
    matches!(statement, Statement::Statement(s) if matches!(**s, datafusion::sql::sqlparser::ast::Statement::Query(_)))
}

fn lineage_of(
    spec: &PipelineSpec,
    graph: &Graph,
    sources: &BTreeMap<String, CompiledSource>,
    externals: &BTreeMap<String, Arc<ExternalRuntime>>,
    sink: &str,
    sink_kind: &str,
) -> Vec<LineageEntry> {
    let version = spec.pipeline.version.clone();
    let mut out = Vec::new();
    for node in graph.ancestors(sink) {
        if let Some(src) = sources.get(&node) {
            out.extend(src.source.upstream_lineage());
            out.push(LineageEntry {
                stage: node.clone(),
                kind: format!("source:{}", src.source.kind()),
                version: version.clone(),
                language: "rust".into(),
            });
        } else if let Some(rt) = externals.get(&node) {
            out.push(LineageEntry {
                stage: node.clone(),
                kind: "external".into(),
                version: rt.manifest.version.clone(),
                language: rt.manifest.language.clone(),
            });
        } else if let Some(stage) = spec.stages.get(&node) {
            out.push(LineageEntry {
                stage: node.clone(),
                kind: stage.kind().into(),
                version: version.clone(),
                language: "sql".into(),
            });
        }
    }
    out.push(LineageEntry {
        stage: sink.to_string(),
        kind: format!("sink:{sink_kind}"),
        version,
        language: "rust".into(),
    });
    out
}
