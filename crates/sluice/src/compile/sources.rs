//! Sources: each opened (its input found, its schema known) and registered
//! as an [`EpochTable`] under its name, with its declared checks.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::prelude::SessionContext;

use super::plan::PlannedSource;
use crate::engine::Engine;
use crate::error::{Result, SluiceError};
use crate::metrics::Progress;
use crate::sources::epoch_table::DeclaredChecks;
use crate::sources::{AnySource, EpochTable, SourceConfig, SourceContext};
use crate::spec::PipelineSpec;

/// Opens every source and registers its table; a source that fails to open
/// adds its error and is left out.
pub(super) async fn open_all(
    engine: &Engine,
    spec: &PipelineSpec,
    ctx: &SessionContext,
    progress: &Progress,
    errors: &mut Vec<SluiceError>,
) -> BTreeMap<String, (Box<dyn AnySource>, PlannedSource)> {
    let target_partitions = ctx.state().config().target_partitions();
    let batch_size = ctx.state().config().batch_size();
    let mut opened = BTreeMap::new();
    for (name, cfg) in &spec.sources {
        let sctx = SourceContext {
            name,
            spec,
            stores: engine.stores(),
            session: ctx,
            target_partitions,
            batch_size,
        };
        let source = match cfg.open(&sctx).await {
            Ok(s) => s,
            Err(e) => {
                errors.push(e.in_source(name));
                continue;
            }
        };
        let checks = match parse_checks(ctx, spec, name, cfg, &source.schema()) {
            Ok(c) => c,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        let table = EpochTable::new(
            name,
            source.kind(),
            source.schema(),
            Arc::clone(&progress.rows_read),
        )
        .with_checks(checks);
        if let Err(e) = ctx.register_table(name.as_str(), Arc::new(table)) {
            errors.push(SluiceError::Internal(format!(
                "cannot register source `{name}`: {e}"
            )));
            continue;
        }
        let planned = PlannedSource {
            kind: source.kind().to_string(),
            schema: source.schema(),
            lookup: cfg.lookup,
            provenance: source.provenance(),
        };
        opened.insert(name.clone(), (source, planned));
    }
    opened
}

/// A source's `checks`, parsed as SQL predicates over its columns; the error
/// names the check's key.
fn parse_checks(
    ctx: &SessionContext,
    spec: &PipelineSpec,
    name: &str,
    cfg: &SourceConfig,
    schema: &datafusion::arrow::datatypes::SchemaRef,
) -> Result<DeclaredChecks> {
    let df_schema =
        datafusion::common::DFSchema::try_from(schema.as_ref().clone()).map_err(|e| {
            // e.g. a CSV header `id,name,id`: SQL could not tell the columns apart
            SluiceError::spec(
                spec.issue(
                    format!("sources.{name}"),
                    format!("the source's columns cannot be used in SQL: {e}"),
                )
                .with_help("declare `columns` with distinct names"),
            )
        })?;
    let mut checks = Vec::new();
    for (i, sql) in cfg.checks.iter().enumerate() {
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
    Ok(DeclaredChecks {
        checks,
        on_error: cfg.on_error,
    })
}
