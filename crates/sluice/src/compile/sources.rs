//! Sources: each opened (its input found, its schema known) and registered
//! as an [`EpochTable`] under its name, with its declared checks.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::prelude::SessionContext;

use super::plan::PlannedSource;
use crate::engine::Engine;
use crate::error::{Result, SluiceError};
use crate::metrics::Progress;
use crate::ops::event_time::SourceOrder;
use crate::sources::epoch_table::{DeclaredChecks, EventTime};
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
        let order = source_order(cfg.kind_name());
        let sctx = SourceContext {
            name,
            spec,
            stores: engine.stores(),
            session: ctx,
            // a source timed by event time is read in its order: generated
            // sources deal units round robin, the others read in one partition
            target_partitions: match (&cfg.event_time, order) {
                (Some(_), SourceOrder::Concatenated) => 1,
                _ => target_partitions,
            },
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
        let event_time = match check_event_time(spec, name, cfg, &source.schema()) {
            Ok(t) => t.map(|column| EventTime {
                column,
                order,
                on_error: cfg.on_error,
            }),
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
        .with_checks(checks)
        .with_event_time(event_time);
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
            event_time: cfg.event_time.clone(),
        };
        opened.insert(name.clone(), (source, planned));
    }
    opened
}

/// How the scan of a source of kind `kind` orders its partitions: the
/// generators deal their units round robin, one batch each.
pub(crate) fn source_order(kind: &str) -> SourceOrder {
    match kind {
        "generator" | "nexmark" => SourceOrder::RoundRobin,
        _ => SourceOrder::Concatenated,
    }
}

/// A source's `event_time`: a timestamp column of its rows; a lookup table
/// has no event time (it is read whole in every epoch).
fn check_event_time(
    spec: &PipelineSpec,
    name: &str,
    cfg: &SourceConfig,
    schema: &datafusion::arrow::datatypes::SchemaRef,
) -> Result<Option<String>> {
    let Some(t) = &cfg.event_time else {
        return Ok(None);
    };
    let key = format!("sources.{name}.event_time");
    if cfg.lookup {
        return Err(SluiceError::spec(
            spec.issue(
                key,
                "a lookup table is read whole in every epoch; it has no event time",
            )
            .with_help(
                "remove `event_time` (and `watermark`, `idle_timeout`, `late`), or `lookup`",
            ),
        ));
    }
    let names = || {
        schema
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let field = schema.field_with_name(&t.column).map_err(|_| {
        SluiceError::spec(
            spec.issue(
                &key,
                format!("`{}` is not a column of the source", t.column),
            )
            .with_help(format!("columns are: {}", names())),
        )
    })?;
    if !matches!(
        field.data_type(),
        datafusion::arrow::datatypes::DataType::Timestamp(_, _)
    ) {
        return Err(SluiceError::spec(
            spec.issue(
                &key,
                format!(
                    "`{}` is {}, not a timestamp",
                    t.column,
                    field.data_type()
                ),
            )
            .with_help("declare the column as a timestamp in `columns`, or time the rows by another column"),
        ));
    }
    Ok(Some(t.column.clone()))
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
