//! OpenLineage run events: START when a run begins, RUNNING after every
//! commit, COMPLETE at the end, FAIL on an error; appended as JSON lines to a
//! file or POSTed to an HTTP endpoint (`[lineage]` in the pipeline file).
//!
//! Every event names the job (the pipeline), the run (a UUID), the input
//! datasets (sources) and output datasets (sinks) with a `schema` facet, and
//! each output carries a `columnLineage` facet: for every output column, the
//! source columns it is computed from, traced through the pipeline's
//! DataFusion logical plan (projections, aggregates, joins, windows, stage
//! borders). Events follow the OpenLineage 2-0-2 spec.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::PathBuf;

use datafusion::arrow::datatypes::Schema;
use datafusion::logical_expr::{Expr, LogicalPlan};
use serde::Deserialize;
use serde_json::{Value, json};

const SPEC: &str = "https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/RunEvent";
const SCHEMA_FACET: &str =
    "https://openlineage.io/spec/facets/1-2-0/SchemaDatasetFacet.json#/$defs/SchemaDatasetFacet";
const COLUMN_LINEAGE_FACET: &str = "https://openlineage.io/spec/facets/1-2-0/ColumnLineageDatasetFacet.json#/$defs/ColumnLineageDatasetFacet";
const ERROR_FACET: &str = "https://openlineage.io/spec/facets/1-0-1/ErrorMessageRunFacet.json#/$defs/ErrorMessageRunFacet";

/// The `[lineage]` table: where OpenLineage events go.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LineageConfig {
    /// Append events as JSON lines to this file (relative to the pipeline file).
    #[serde(default)]
    pub file: Option<String>,
    /// POST each event to this URL (e.g. Marquez: `http://host:5000/api/v1/lineage`).
    #[serde(default)]
    pub url: Option<String>,
    /// The job namespace (default `sluice`).
    #[serde(default)]
    pub namespace: Option<String>,
}

/// A dataset as OpenLineage names it: `namespace` (`file`, `s3://bucket`) and `name`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Dataset {
    /// Where it lives.
    pub namespace: String,
    /// Its name there.
    pub name: String,
}

impl Dataset {
    /// Names a dataset by URL: `file:///a/b` → (`file`, `/a/b`);
    /// `s3://bucket/k` → (`s3://bucket`, `k`); anything else → (`scheme://authority`, path).
    pub(crate) fn from_url(url: &str) -> Self {
        let url = url.trim_end_matches('/');
        if let Some(path) = url.strip_prefix("file://") {
            return Self {
                namespace: "file".into(),
                name: path.into(),
            };
        }
        match url.split_once("://") {
            Some((scheme, rest)) => {
                let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
                Self {
                    namespace: format!("{scheme}://{authority}"),
                    name: if path.is_empty() {
                        "/".into()
                    } else {
                        path.into()
                    },
                }
            }
            None => Self {
                namespace: "file".into(),
                name: url.into(),
            },
        }
    }
}

/// One output of the run: its dataset, schema and column lineage.
#[derive(Debug, Clone)]
pub(crate) struct Output {
    /// The sink's dataset.
    pub dataset: Dataset,
    /// What it writes.
    pub schema: Schema,
    /// Output column → source columns (source dataset, column).
    pub columns: BTreeMap<String, BTreeSet<(Dataset, String)>>,
}

/// One input of the run.
#[derive(Debug, Clone)]
pub(crate) struct Input {
    /// The source's dataset.
    pub dataset: Dataset,
    /// Its schema.
    pub schema: Schema,
}

/// Writes a run's events.
#[derive(Debug)]
pub(crate) struct Emitter {
    file: Option<PathBuf>,
    url: Option<String>,
    namespace: String,
    job: String,
    run_id: String,
    producer: String,
    inputs: Vec<Input>,
    outputs: Vec<Output>,
}

impl Emitter {
    /// The emitter of a run of `plan`, when its spec has `[lineage]`:
    /// sources as inputs, sinks as outputs with the column lineage of their
    /// plans.
    pub(crate) fn for_plan(plan: &crate::compile::PipelinePlan) -> Option<Self> {
        let config = plan.spec.lineage.as_ref()?;
        let dataset_of = |name: &str| -> Dataset {
            let uris = plan
                .sources
                .get(name)
                .map(|s| s.provenance.uris.clone())
                .unwrap_or_default();
            match uris.as_slice() {
                [one] if one.contains(":///") || one.starts_with("s3://") => Dataset::from_url(one),
                [first, ..] if first.contains(":///") || first.starts_with("s3://") => {
                    // many files: the folder holding them
                    Dataset::from_url(first.rsplit_once('/').map_or(first.as_str(), |(d, _)| d))
                }
                _ => Dataset {
                    namespace: format!("sluice://{}", plan.spec.pipeline.name),
                    name: name.into(),
                },
            }
        };
        let inputs = plan
            .sources
            .iter()
            .map(|(n, s)| Input {
                dataset: dataset_of(n),
                schema: s.schema.as_ref().clone(),
            })
            .collect();
        let source_names: BTreeSet<String> = plan.sources.keys().cloned().collect();
        let outputs = plan
            .sinks
            .values()
            .map(|s| {
                let (schema, columns) = match &s.input {
                    crate::compile::SinkInput::Plan(lp) => (
                        lp.schema().as_arrow().clone(),
                        column_lineage(lp, &source_names)
                            .into_iter()
                            .map(|(col, from)| {
                                (
                                    col,
                                    from.into_iter().map(|(t, c)| (dataset_of(&t), c)).collect(),
                                )
                            })
                            .collect(),
                    ),
                    crate::compile::SinkInput::DeadLetters
                    | crate::compile::SinkInput::RolloutDiff(_) => {
                        let schema = s.schema.as_ref().clone();
                        // rows from everywhere: no column comes from one source column
                        let columns = schema
                            .fields()
                            .iter()
                            .map(|f| (f.name().clone(), BTreeSet::new()))
                            .collect();
                        (schema, columns)
                    }
                };
                Output {
                    dataset: Dataset::from_url(&s.sink.url()),
                    schema,
                    columns,
                }
            })
            .collect();
        let file = config.file.as_deref().map(|f| plan.spec.resolve_path(f));
        Some(Self::new(
            config,
            file,
            &plan.spec.pipeline.name,
            inputs,
            outputs,
        ))
    }

    /// An emitter for one run of `job`.
    pub(crate) fn new(
        config: &LineageConfig,
        file: Option<PathBuf>,
        job: &str,
        inputs: Vec<Input>,
        outputs: Vec<Output>,
    ) -> Self {
        Self {
            file,
            url: config.url.clone(),
            namespace: config.namespace.clone().unwrap_or_else(|| "sluice".into()),
            job: job.into(),
            run_id: uuid::Uuid::new_v4().to_string(),
            producer: format!(
                "https://github.com/sluice-etl/sluice/tree/v{}",
                env!("CARGO_PKG_VERSION")
            ),
            inputs,
            outputs,
        }
    }

    /// Sends an event of `event_type` (`START`, `RUNNING`, `COMPLETE`, `FAIL`);
    /// an error message goes into FAIL's `errorMessage` facet. Failing to
    /// deliver is logged, never fatal: lineage must not stop the data.
    pub(crate) async fn emit(&self, event_type: &str, error: Option<&str>) {
        let event = self.event(event_type, error);
        if let Some(path) = &self.file {
            let line = format!("{event}\n");
            let path = path.clone();
            let written = tokio::task::spawn_blocking(move || {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir)?;
                }
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)?
                    .write_all(line.as_bytes())
            })
            .await;
            if !matches!(written, Ok(Ok(()))) {
                tracing::warn!(?written, "cannot write the OpenLineage event");
            }
        }
        if let Some(url) = &self.url {
            let sent = reqwest::Client::new()
                .post(url)
                .header("content-type", "application/json")
                .body(event.to_string())
                .send()
                .await;
            match sent {
                Ok(r) if r.status().is_success() => {}
                Ok(r) => {
                    tracing::warn!(status = %r.status(), url, "the OpenLineage endpoint refused the event")
                }
                Err(e) => tracing::warn!(error = %e, url, "cannot POST the OpenLineage event"),
            }
        }
    }

    /// The event as JSON.
    pub(crate) fn event(&self, event_type: &str, error: Option<&str>) -> Value {
        let facet = |url: &str| json!({ "_producer": self.producer, "_schemaURL": url });
        let schema_facet = |schema: &Schema| {
            let mut f = facet(SCHEMA_FACET);
            f["fields"] = schema
                .fields()
                .iter()
                .map(|c| json!({ "name": c.name(), "type": c.data_type().to_string() }))
                .collect();
            f
        };
        let mut run = json!({ "runId": self.run_id });
        if let Some(message) = error {
            let mut e = facet(ERROR_FACET);
            e["message"] = json!(message);
            e["programmingLanguage"] = json!("rust");
            run["facets"] = json!({ "errorMessage": e });
        }
        let inputs: Vec<Value> = self
            .inputs
            .iter()
            .map(|i| json!({ "namespace": i.dataset.namespace, "name": i.dataset.name, "facets": { "schema": schema_facet(&i.schema) } }))
            .collect();
        let outputs: Vec<Value> = self
            .outputs
            .iter()
            .map(|o| {
                let mut lineage = facet(COLUMN_LINEAGE_FACET);
                lineage["fields"] = o
                    .columns
                    .iter()
                    .map(|(col, from)| {
                        let fields: Vec<Value> =
                            from.iter().map(|(d, f)| json!({ "namespace": d.namespace, "name": d.name, "field": f })).collect();
                        (col.clone(), json!({ "inputFields": fields }))
                    })
                    .collect::<serde_json::Map<_, _>>()
                    .into();
                json!({
                    "namespace": o.dataset.namespace,
                    "name": o.dataset.name,
                    "facets": { "schema": schema_facet(&o.schema), "columnLineage": lineage },
                })
            })
            .collect();
        json!({
            "eventType": event_type,
            "eventTime": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "producer": self.producer,
            "schemaURL": SPEC,
            "run": run,
            "job": { "namespace": self.namespace, "name": self.job },
            "inputs": inputs,
            "outputs": outputs,
        })
    }
}

/// The source columns (table, column) each output column of `plan` is
/// computed from. `sources` are the table names that are sources; other
/// tables are followed through their plans (stage views are inlined).
pub(crate) fn column_lineage(
    plan: &LogicalPlan,
    sources: &BTreeSet<String>,
) -> BTreeMap<String, BTreeSet<(String, String)>> {
    plan.schema()
        .columns()
        .iter()
        .enumerate()
        .map(|(i, c)| (c.name.clone(), trace(plan, i, sources)))
        .collect()
}

/// Where output column `index` of `plan` comes from.
fn trace(
    plan: &LogicalPlan,
    index: usize,
    sources: &BTreeSet<String>,
) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    match plan {
        LogicalPlan::TableScan(scan) => {
            let name = scan.source.schema();
            let column = scan
                .projection
                .as_ref()
                .and_then(|p| p.get(index).copied())
                .unwrap_or(index);
            let table = scan.table_name.table().to_string();
            if let Some(f) = name.fields().get(column)
                && sources.contains(&table)
            {
                out.insert((table, f.name().clone()));
            }
        }
        LogicalPlan::Projection(p) => {
            if let Some(e) = p.expr.get(index) {
                out.extend(from_expr(e, &p.input, sources));
            }
        }
        LogicalPlan::Aggregate(a) => {
            let exprs: Vec<&Expr> = a.group_expr.iter().chain(a.aggr_expr.iter()).collect();
            if let Some(e) = exprs.get(index) {
                out.extend(from_expr(e, &a.input, sources));
            }
        }
        LogicalPlan::Window(w) => {
            let n = w.input.schema().fields().len();
            if index < n {
                out.extend(trace(&w.input, index, sources));
            } else if let Some(e) = w.window_expr.get(index - n) {
                out.extend(from_expr(e, &w.input, sources));
            }
        }
        LogicalPlan::Join(j) => {
            let n = j.left.schema().fields().len();
            let side_len = j.right.schema().fields().len();
            match j.join_type {
                // semi and anti joins keep one side's columns
                datafusion::logical_expr::JoinType::LeftSemi
                | datafusion::logical_expr::JoinType::LeftAnti => {
                    out.extend(trace(&j.left, index, sources))
                }
                datafusion::logical_expr::JoinType::RightSemi
                | datafusion::logical_expr::JoinType::RightAnti => {
                    out.extend(trace(&j.right, index, sources))
                }
                _ if index < n => out.extend(trace(&j.left, index, sources)),
                _ if index - n < side_len => out.extend(trace(&j.right, index - n, sources)),
                _ => {}
            }
        }
        LogicalPlan::Union(u) => {
            for input in &u.inputs {
                out.extend(trace(input, index, sources));
            }
        }
        // same columns as the only input: filters, sorts, limits, aliases, ...
        other => {
            let inputs = other.inputs();
            if let [input] = inputs.as_slice() {
                if input.schema().fields().len() == other.schema().fields().len() {
                    out.extend(trace(input, index, sources));
                } else if let Some(field) = other.schema().fields().get(index) {
                    // an extension (external stage) with its own columns: same name, else all
                    match input.schema().index_of_column_by_name(None, field.name()) {
                        Some(i) => out.extend(trace(input, i, sources)),
                        None => {
                            for i in 0..input.schema().fields().len() {
                                out.extend(trace(input, i, sources));
                            }
                        }
                    }
                }
            }
        }
    }
    out
}

/// The source columns an expression over `input`'s columns reads.
fn from_expr(
    e: &Expr,
    input: &LogicalPlan,
    sources: &BTreeSet<String>,
) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for c in e.column_refs() {
        if let Ok(i) = input.schema().index_of_column(c) {
            out.extend(trace(input, i, sources));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datasets_are_named_by_url() {
        assert_eq!(
            Dataset::from_url("file:///data/out/"),
            Dataset {
                namespace: "file".into(),
                name: "/data/out".into()
            }
        );
        assert_eq!(
            Dataset::from_url("s3://bucket/a/b"),
            Dataset {
                namespace: "s3://bucket".into(),
                name: "a/b".into()
            }
        );
    }
}
