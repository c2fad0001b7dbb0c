//! Stages: each SQL stage planned against the tables and views before it,
//! each external stage started and checked against its manifest; both
//! registered as views behind a [`StageNode`] border.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use datafusion::arrow::datatypes::Schema;
use datafusion::config::Dialect;
use datafusion::datasource::ViewTable;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::SessionContext;
use datafusion::sql::parser::Statement;

use super::windows::{self, TimeContext};
use crate::error::{Result, SluiceError, SpecIssue};
use crate::ops::external_stage::ExternalStageNode;
use crate::ops::stage::StageNode;
use crate::spec::PipelineSpec;
use crate::spec::graph::Graph;
use crate::stages::external::ExternalRuntime;
use crate::stages::{Scope, StageConfig};

/// Plans every stage in graph order and registers it as a view. Stages
/// whose input failed are skipped (their names join `failed`); returns the
/// external stages' runtimes.
pub(super) async fn plan_all(
    ctx: &SessionContext,
    spec: &PipelineSpec,
    graph: &Graph,
    time: &TimeContext,
    failed: &mut Vec<String>,
    errors: &mut Vec<SluiceError>,
) -> BTreeMap<String, Arc<ExternalRuntime>> {
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
        let planned = match spec.rollouts.get(name) {
            Some(r) => {
                super::rollout::plan_rollout(ctx, spec, name, stage, r, &mut externals, time).await
            }
            None => plan_branch(ctx, spec, &Branch::primary(name), stage, time)
                .await
                .map(|(plan, rt)| {
                    if let Some(rt) = rt {
                        externals.insert(name.clone(), rt);
                    }
                    StageNode::wrap(name, stage.kind(), plan)
                }),
        };
        let plan = match planned {
            Ok(plan) => plan,
            Err(e) => {
                failed.push(name.clone());
                errors.push(e);
                continue;
            }
        };
        if let Some((schema_name, version)) = stage.declared_schema() {
            let reference = version.map_or(schema_name.clone(), |v| format!("{schema_name}@{v}"));
            if let Some(issue) = check_contract(
                spec,
                format!("stages.{name}.schema"),
                &format!("stage `{name}`"),
                &reference,
                plan.schema().as_arrow(),
            ) {
                errors.push(SluiceError::spec(issue));
            }
        }
        if let Err(e) = ctx.register_table(name.as_str(), Arc::new(ViewTable::new(plan, None))) {
            errors.push(SluiceError::Internal(format!(
                "cannot register stage `{name}`: {e}"
            )));
        }
    }
    externals
}

/// One way of computing a stage: the stage itself, or one of its variants.
pub(crate) struct Branch {
    /// Its table's key: `stages.<name>` or `stages.<name>.variants.<v>`.
    pub key: String,
    /// How messages name it.
    pub label: String,
    /// Its component and process name: `<name>` or `<name>@<v>`.
    pub component: String,
}

impl Branch {
    pub(crate) fn primary(name: &str) -> Self {
        Self {
            key: format!("stages.{name}"),
            label: format!("stage `{name}`"),
            component: name.to_string(),
        }
    }

    pub(crate) fn variant(name: &str, variant: &str) -> Self {
        Self {
            key: format!("stages.{name}.variants.{variant}"),
            label: format!("variant `{variant}` of stage `{name}`"),
            component: crate::rollout::control::variant_component(name, variant),
        }
    }
}

/// Plans one branch of a stage, without its stage border; an external
/// branch also gives its runtime.
pub(super) async fn plan_branch(
    ctx: &SessionContext,
    spec: &PipelineSpec,
    branch: &Branch,
    stage: &StageConfig,
    time: &TimeContext,
) -> Result<(LogicalPlan, Option<Arc<ExternalRuntime>>)> {
    match stage {
        StageConfig::Sql(_) => plan_sql(ctx, spec, branch, stage, time)
            .await
            .map(|p| (p, None)),
        StageConfig::External(c) => plan_external(ctx, spec, branch, c)
            .await
            .map(|(p, rt)| (p, Some(rt))),
        StageConfig::Operator(c) => plan_operator(ctx, spec, branch, c, time)
            .await
            .map(|p| (p, None)),
    }
}

/// Builds an operator stage's operator with its factory, over its input.
async fn plan_operator(
    ctx: &SessionContext,
    spec: &PipelineSpec,
    branch: &Branch,
    c: &crate::stages::OperatorStageConfig,
    time: &TimeContext,
) -> Result<LogicalPlan> {
    let (label, key) = (&branch.label, &branch.key);
    let issue = |at: String, message: String| {
        SluiceError::spec(spec.issue(at, format!("{label}: {message}")))
    };
    let [input] = c.inputs.as_slice() else {
        return Err(SluiceError::spec(
            spec.issue(
                format!("{key}.inputs"),
                format!(
                    "an operator stage reads exactly one input, found {}",
                    c.inputs.len()
                ),
            )
            .with_help("join or union the inputs in an sql stage first"),
        ));
    };
    let registry = ctx
        .state()
        .config()
        .get_extension::<crate::operators::OperatorRegistry>()
        .ok_or_else(|| SluiceError::Internal("the session has no operator registry".into()))?;
    let Some(factory) = registry.get(&c.operator) else {
        return Err(SluiceError::spec(
            spec.issue(
                format!("{key}.operator"),
                format!("{label}: there is no operator `{}`", c.operator),
            )
            .with_help(format!(
                "the operators are {}; register your own with Engine::register_operator",
                registry.names().join(", ")
            )),
        ));
    };
    let plan = ctx
        .table(input.as_str())
        .await
        .map_err(|e| issue(format!("{key}.inputs"), e.to_string()))?
        .into_unoptimized_plan();
    let event_time = (0..plan.schema().fields().len())
        .find(|i| matches!(time.column(&plan, *i), windows::Timing::EventTime(_)))
        .map(|i| plan.schema().field(i).name().clone());
    let sources = time.sources_of(&plan);
    let cx = crate::operators::OperatorContext {
        stage: branch.component.clone(),
        options: c.options.clone(),
        input: Arc::new(plan.schema().as_arrow().clone()),
        event_time,
        late: windows::strictest(&sources, time),
        sources: sources.into_iter().collect(),
    };
    let operator = factory.create(&cx).map_err(|m| {
        // an option of the table (an unknown one, say) is shown at its own line
        let option = crate::spec::key_from_toml_message(&m);
        let at = if c.options.contains_key(&option) {
            format!("{key}.{option}")
        } else {
            key.clone()
        };
        issue(at, format!("operator `{}`: {m}", c.operator))
    })?;
    crate::ops::operator_stage::OperatorNode::plan(&branch.component, &c.operator, operator, plan)
        .map_err(|e| issue(key.clone(), e.to_string()))
}

/// The SQL text of a stage and the file it came from.
pub(crate) fn stage_sql(
    spec: &PipelineSpec,
    branch: &Branch,
    stage: &StageConfig,
) -> Result<(String, Option<PathBuf>)> {
    let key = &branch.key;
    let StageConfig::Sql(c) = stage else {
        return Err(SluiceError::Internal(format!(
            "{} is not an sql stage",
            branch.label
        )));
    };
    match (&c.query, &c.sql) {
        (Some(q), None) => Ok((q.clone(), None)),
        (None, Some(path)) => {
            let full = spec.resolve_path(path);
            let text = std::fs::read_to_string(&full).map_err(|e| {
                SluiceError::spec(
                    spec.issue(
                        format!("{key}.sql"),
                        format!("cannot read {}: {e}", full.display()),
                    )
                    .with_help("the path is relative to the pipeline file"),
                )
            })?;
            Ok((text, Some(full)))
        }
        (Some(_), Some(_)) => Err(SluiceError::spec(
            spec.issue(key.clone(), "both `query` and `sql` are set")
                .with_help("keep one: inline `query` or a `sql` file"),
        )),
        (None, None) => Err(SluiceError::spec(spec.issue(
            key.clone(),
            "an sql stage needs `query` (inline SQL) or `sql` (a .sql file)",
        ))),
    }
}

async fn plan_sql(
    ctx: &SessionContext,
    spec: &PipelineSpec,
    branch: &Branch,
    stage: &StageConfig,
    time: &TimeContext,
) -> Result<LogicalPlan> {
    let (sql, file) = stage_sql(spec, branch, stage)?;
    let key = format!(
        "{}.{}",
        branch.key,
        if file.is_some() { "sql" } else { "query" }
    );
    let label = &branch.label;
    let plan_err = |message: String| {
        let source = file
            .as_ref()
            .map(|f| format!(" in {}", f.display()))
            .unwrap_or_default();
        SluiceError::spec(
            spec.issue(
                &key,
                format!("{label}: the SQL{source} does not plan: {message}"),
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
                format!("{}.inputs", branch.key),
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
    // windows over event time keep state across epochs; what is left over
    // a stream would answer per epoch, which only `scope = "epoch"` wants
    let plan = windows::plan_windows(plan, &branch.component, time)
        .map_err(|e| plan_err(e.to_string()))?;
    if let StageConfig::Sql(c) = stage
        && c.scope == Scope::Stream
        && let Some(p) = windows::per_epoch_results(&plan, time).first()
    {
        return Err(per_epoch_refused(spec, branch, p));
    }
    // surface type errors now, attributed to this stage
    state.optimize(&plan).map_err(|e| plan_err(e.to_string()))?;
    Ok(plan)
}

/// Starts an external stage, checks its manifest against its input and
/// plans it as an [`ExternalStageNode`] inside a stage border.
async fn plan_external(
    ctx: &SessionContext,
    spec: &PipelineSpec,
    branch: &Branch,
    c: &crate::stages::ExternalStageConfig,
) -> Result<(LogicalPlan, Arc<ExternalRuntime>)> {
    let (name, label, key) = (&branch.component, &branch.label, &branch.key);
    let [input] = c.inputs.as_slice() else {
        return Err(SluiceError::spec(
            spec.issue(
                format!("{key}.inputs"),
                format!(
                    "an external stage reads exactly one input, found {}",
                    c.inputs.len()
                ),
            )
            .with_help("join or union the inputs in an sql stage first"),
        ));
    };
    let runtime = ExternalRuntime::start(name, c.clone(), &spec.base_dir, spec.observability.otlp_endpoint()).await.map_err(|e| {
        // the key the error is about, for the file and line of the message
        let which = match e.setting {
            Some(setting) => setting.key(),
            None if c.url.is_some() => "url",
            None => "command",
        };
        SluiceError::spec(
            spec.issue(format!("{key}.{which}"), format!("{label}: {e}"))
                .with_help("the program must serve the stage protocol on $SLUICE_STAGE_SOCKET (see docs/protocol.md); build the example stages with `./scripts/build-stages`"),
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
    let plan = if m.plain_types {
        plain_types(plan).map_err(|e| SluiceError::Plan {
            stage: name.to_string(),
            file: None,
            message: e.to_string(),
        })?
    } else {
        plan
    };
    if let Some(decl) = &m.input_schema {
        let upstream = plan.schema().as_arrow().clone();
        sluice_flight::manifest::check_schema(&decl.schema, &upstream).map_err(|msg| {
            SluiceError::spec(
                spec.issue(
                    format!("{key}.inputs"),
                    format!(
                        "`{input}` does not give {label} ({} {} in {}) the input its manifest declares ({}@{}): {msg}",
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
    Ok((plan, runtime))
}

/// `plan` with its view-typed columns cast to plain types (a manifest's
/// `plain_types`): the cast is one Arrow kernel per column, in the plan, so
/// the stage's input schema, the checks and the exchange all see plain types.
fn plain_types(plan: LogicalPlan) -> datafusion::error::Result<LogicalPlan> {
    use datafusion::logical_expr::{Expr, LogicalPlanBuilder, cast};
    use sluice_flight::manifest::plain_type;
    let schema = Arc::clone(plan.schema());
    if schema
        .fields()
        .iter()
        .all(|f| plain_type(f.data_type()).is_none())
    {
        return Ok(plan);
    }
    let columns = schema.iter().map(|(qualifier, field)| {
        let column = Expr::Column((qualifier, field).into());
        match plain_type(field.data_type()) {
            Some(plain) => cast(column, plain).alias_qualified(qualifier.cloned(), field.name()),
            None => column,
        }
    });
    LogicalPlanBuilder::from(plan).project(columns)?.build()
}

/// The refusal of an aggregate or join that would answer per epoch.
fn per_epoch_refused(spec: &PipelineSpec, branch: &Branch, p: &windows::PerEpoch) -> SluiceError {
    let streams = p
        .streams
        .iter()
        .map(|s| format!("`{s}`"))
        .collect::<Vec<_>>()
        .join(", ");
    let key = format!("{}.sql", branch.key);
    let key = if spec.line_of(&branch.key).is_some() {
        key
    } else {
        branch.key.clone()
    };
    SluiceError::spec(
        spec.issue(
            key,
            format!(
                "{}: {} over {streams}, which never {}, would be computed per epoch: every epoch would give its own partial answer, not the answer over the stream",
                branch.label,
                p.what,
                if p.streams.len() == 1 { "ends" } else { "end" },
            ),
        )
        .with_help(
            "window it by event time: set `event_time` on the source and group by a window, e.g. `GROUP BY date_bin(INTERVAL '1 minute', <event_time>), k` (see docs/windows.md); or join a table marked `lookup = true`; or, if one answer per epoch is what you want, set `scope = \"epoch\"` on the stage",
        ),
    )
}

fn is_query(statement: &Statement) -> bool {
    matches!(statement, Statement::Statement(s) if matches!(**s, datafusion::sql::sqlparser::ast::Statement::Query(_)))
}

/// A stage or sink that declares `schema = "name@version"` (or a bare
/// name, its latest version) found in the registry must produce rows its
/// readers can read as that schema: every declared field present (or
/// nullable) with a type that widens to the declared one. A name the
/// registry does not hold is only a label.
pub(super) fn check_contract(
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
