//! Sinks: each opened, its input planned, its partition columns and schema
//! contract checked, its lineage and schema metadata fixed.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::datatypes::Schema;
use datafusion::prelude::SessionContext;
use sluice_contract::LineageEntry;

use super::plan::{PlannedSink, PlannedSource, SinkInput, VariantLineage, sink_schema};
use super::stages::check_contract;
use crate::dead_letter;
use crate::engine::Engine;
use crate::error::{Result, SluiceError, SpecIssue};
use crate::metrics::ComponentId;
use crate::rollout::control::variant_component;
use crate::sinks::{ParquetSinkConfig, SinkConfig, SinkKind};
use crate::sources::AnySource;
use crate::spec::PipelineSpec;
use crate::spec::graph::Graph;
use crate::stages::StageConfig;
use crate::stages::external::ExternalRuntime;

/// Everything sinks are planned from.
pub(super) struct SinkInputs<'a> {
    pub engine: &'a Engine,
    pub spec: &'a PipelineSpec,
    pub graph: &'a Graph,
    pub ctx: &'a SessionContext,
    pub sources: &'a BTreeMap<String, (Box<dyn AnySource>, PlannedSource)>,
    pub externals: &'a BTreeMap<String, Arc<ExternalRuntime>>,
    /// Sources and stages that failed to compile: their sinks are skipped.
    pub failed: &'a [String],
}

/// Opens and plans every sink, and the `[dead_letter]` sink.
pub(super) async fn plan_all(
    inputs: SinkInputs<'_>,
    errors: &mut Vec<SluiceError>,
) -> BTreeMap<String, PlannedSink> {
    let SinkInputs {
        engine,
        spec,
        graph,
        ctx,
        sources,
        externals,
        failed,
    } = inputs;
    let mut sinks = BTreeMap::new();
    for (name, cfg) in &spec.sinks {
        let input = cfg.input.as_str();
        if failed.iter().any(|f| f == input) {
            continue;
        }
        let sink = match cfg.open(name, spec, engine.stores()) {
            Ok(s) => s,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        engine.stores().register_all(ctx);
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
        if let Some(issue) = check_partition_columns(spec, name, cfg, &schema) {
            errors.push(SluiceError::spec(issue));
            continue;
        }
        if let SinkKind::Parquet(ParquetSinkConfig {
            schema: Some(reference),
            ..
        })
        | SinkKind::Delta(ParquetSinkConfig {
            schema: Some(reference),
            ..
        }) = &cfg.kind
            && let Some(issue) = check_contract(
                spec,
                format!("sinks.{name}.schema"),
                &format!("sink `{name}`'s input"),
                reference,
                &schema,
            )
        {
            errors.push(SluiceError::spec(issue));
            continue;
        }
        let (schema_name, schema_version) =
            match spec.stages.get(input).and_then(|s| s.declared_schema()) {
                Some((n, v)) => (n, v.unwrap_or_else(|| spec.pipeline.version.clone())),
                None => (input.to_string(), spec.pipeline.version.clone()),
            };
        let (lineage, variant_lineage) =
            lineage_of(spec, graph, sources, externals, name, cfg.kind_name());
        let out_schema = match sink_schema(spec, &schema, &schema_name, &schema_version, &lineage) {
            Ok(s) => s,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        sinks.insert(
            name.clone(),
            PlannedSink {
                sink,
                id: ComponentId::Sink(name.clone()),
                input: SinkInput::Plan(plan),
                schema: out_schema,
                lineage,
                variant_lineage,
                sources: graph.sources_of(name),
            },
        );
    }
    if let Some(dl) = &spec.dead_letter {
        let schema = dead_letter::schema();
        let name = dead_letter::SINK_NAME;
        match open_internal_sink(spec, engine, name, &dl.url, &schema, SinkInput::DeadLetters) {
            Ok(s) => {
                sinks.insert(name.to_string(), s);
            }
            // the sink is written `[dead_letter]`: its issues say so, at its lines
            Err(e) => errors.push(rekey(spec, e, &format!("sinks.{name}"), "dead_letter")),
        }
    }
    for (stage, r) in &spec.rollouts {
        let Some(url) = &r.config.diff else { continue };
        let name = crate::rollout::control::diff_sink_name(stage);
        if spec.sinks.contains_key(&name) {
            errors.push(SluiceError::spec(spec.issue(
                format!("sinks.{name}"),
                format!("`{name}` is the name of stage `{stage}`'s diff sink; rename this sink"),
            )));
            continue;
        }
        let schema = crate::rollout::diff::schema();
        let input = SinkInput::RolloutDiff(stage.clone());
        match open_internal_sink(spec, engine, &name, url, &schema, input) {
            Ok(s) => {
                sinks.insert(name, s);
            }
            Err(e) => errors.push(e),
        }
    }
    sinks
}

/// `e` with the issues about keys under `from` moved to `to` (and to its
/// lines in the file).
fn rekey(spec: &PipelineSpec, e: SluiceError, from: &str, to: &str) -> SluiceError {
    match e {
        SluiceError::Spec(issues) => SluiceError::Spec(
            issues
                .into_iter()
                .map(|mut i| {
                    if let Some(rest) = i.key.strip_prefix(from) {
                        i.key = format!("{to}{rest}");
                        i.line = spec.line_of(&i.key);
                    }
                    i
                })
                .collect(),
        ),
        other => other,
    }
}

/// A sink whose rows the epoch loop makes (dead letters, a shadow diff):
/// Parquet, under the same commit protocol as every sink.
fn open_internal_sink(
    spec: &PipelineSpec,
    engine: &Engine,
    name: &str,
    url: &str,
    schema: &Schema,
    input: SinkInput,
) -> Result<PlannedSink> {
    let cfg = SinkConfig::parquet(name, url);
    let sink = cfg.open(name, spec, engine.stores())?;
    Ok(PlannedSink {
        sink,
        id: ComponentId::Sink(name.into()),
        input,
        schema: sink_schema(spec, schema, name, "1", &[])?,
        lineage: Vec::new(),
        variant_lineage: VariantLineage::new(),
        sources: spec.sources.keys().cloned().collect(),
    })
}

fn check_partition_columns(
    spec: &PipelineSpec,
    name: &str,
    cfg: &SinkConfig,
    schema: &Schema,
) -> Option<SpecIssue> {
    let cols = &cfg.files()?.partition_by;
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    cols.iter().find(|c| !names.contains(&c.as_str())).map(|c| {
        spec.issue(
            format!("sinks.{name}.partition_by"),
            format!("`{c}` is not a column of `{}`", cfg.input),
        )
        .with_help(format!("columns are: {}", names.join(", ")))
    })
}

/// Lineage of a sink's data: its sources and stages in order, then the
/// sink. With it, the entries of every variant of a rolled-out ancestor (by
/// stage, then variant), for [`PlannedSink::lineage_with`].
fn lineage_of(
    spec: &PipelineSpec,
    graph: &Graph,
    sources: &BTreeMap<String, (Box<dyn AnySource>, PlannedSource)>,
    externals: &BTreeMap<String, Arc<ExternalRuntime>>,
    sink: &str,
    sink_kind: &str,
) -> (Vec<LineageEntry>, VariantLineage) {
    let version = spec.pipeline.version.clone();
    let mut out = Vec::new();
    let mut variants = VariantLineage::new();
    for node in graph.ancestors(sink) {
        if let Some((source, _)) = sources.get(&node) {
            out.extend(source.upstream_lineage());
            out.push(LineageEntry {
                stage: node.clone(),
                kind: format!("source:{}", source.kind()),
                version: version.clone(),
                language: "rust".into(),
            });
        } else if let Some(stage) = spec.stages.get(&node) {
            out.push(stage_entry(&node, stage, externals, &version));
            if let Some(r) = spec.rollouts.get(&node) {
                let entries = r.variants.iter().map(|(v, config)| {
                    let component = variant_component(&node, v);
                    (
                        v.clone(),
                        stage_entry(&component, config, externals, &version),
                    )
                });
                variants.insert(node.clone(), entries.collect());
            }
        }
    }
    out.push(LineageEntry {
        stage: sink.to_string(),
        kind: format!("sink:{sink_kind}"),
        version,
        language: "rust".into(),
    });
    (out, variants)
}

/// The lineage entry of the stage (or variant) `component`: an external
/// one names its manifest's version and language, any other the pipeline's.
fn stage_entry(
    component: &str,
    config: &StageConfig,
    externals: &BTreeMap<String, Arc<ExternalRuntime>>,
    pipeline_version: &str,
) -> LineageEntry {
    match externals.get(component) {
        Some(rt) => LineageEntry {
            stage: component.to_string(),
            kind: "external".into(),
            version: rt.manifest.version.clone(),
            language: rt.manifest.language.clone(),
        },
        None => LineageEntry {
            stage: component.to_string(),
            kind: config.kind().into(),
            version: pipeline_version.to_string(),
            language: "sql".into(),
        },
    }
}
