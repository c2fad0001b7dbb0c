//! What compiling a pipeline gives: an immutable [`PipelinePlan`], and the
//! opened sources a run reads from ([`CompiledPipeline`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::execution::session_state::SessionState;
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::SessionContext;
use sluice_contract::{LineageEntry, Provenance, SourceProvenance, metadata};

use crate::error::{Result, SluiceError};
use crate::metrics::{ComponentId, Progress};
use crate::rollout::{Choice, Mode};
use crate::sinks::Sink;
use crate::sources::AnySource;
use crate::spec::PipelineSpec;
use crate::spec::graph::Graph;
use crate::stages::external::ExternalRuntime;

/// A compiled pipeline: planned, its sources opened, ready to run.
///
/// Run it with [`CompiledPipeline::run`] (to the end) or
/// [`CompiledPipeline::start`] (a [`crate::RunHandle`] to stop, wait for and
/// follow).
pub struct CompiledPipeline {
    pub(crate) plan: Arc<PipelinePlan>,
    pub(crate) sources: BTreeMap<String, Box<dyn AnySource>>,
}

impl std::fmt::Debug for CompiledPipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledPipeline")
            .field("pipeline", &self.plan.spec.id())
            .field("sources", &self.sources.keys().collect::<Vec<_>>())
            .field("sinks", &self.plan.sinks.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl CompiledPipeline {
    /// The spec it was compiled from.
    pub fn spec(&self) -> &PipelineSpec {
        &self.plan.spec
    }

    /// Names of its sources.
    pub fn source_names(&self) -> impl Iterator<Item = &str> {
        self.plan.sources.keys().map(String::as_str)
    }

    /// Names of its stages, in the order they run.
    pub fn stage_names(&self) -> impl Iterator<Item = &str> {
        self.plan.graph.stage_order.iter().map(String::as_str)
    }

    /// Names of its sinks (with `dead_letter` when the pipeline has one).
    pub fn sink_names(&self) -> impl Iterator<Item = &str> {
        self.plan.sinks.keys().map(String::as_str)
    }

    /// Deletes the committed output of every sink, so the next run starts
    /// over. Returns the number of objects deleted.
    pub async fn reset_sinks(&self) -> Result<u64> {
        let mut n = 0;
        for s in self.plan.sinks.values() {
            n += s.sink.reset().await?;
            if let Some(state) = s.sink.state_store() {
                n += state.reset().await?;
            }
        }
        Ok(n)
    }
}

/// Everything compiling a pipeline decided, shared by the epochs of a run
/// and never changed by them.
pub(crate) struct PipelinePlan {
    /// The spec.
    pub spec: PipelineSpec,
    /// Its checked graph.
    pub graph: Graph,
    /// The context holding the sources as tables and the stages as views.
    pub session: SessionContext,
    /// Sources by name.
    pub sources: BTreeMap<String, PlannedSource>,
    /// Sinks by name, the `[dead_letter]` sink among them.
    pub sinks: BTreeMap<String, PlannedSink>,
    /// External stages, by name.
    pub externals: BTreeMap<String, Arc<ExternalRuntime>>,
    /// Live counters for a progress display (the source tables count rows read).
    pub progress: Arc<Progress>,
    /// The stages rolled out, and where their flags are.
    pub rollout: Option<Arc<crate::rollout::control::RolloutPlan>>,
}

/// A source as the plan knows it.
#[derive(Debug, Clone)]
pub(crate) struct PlannedSource {
    /// `csv`, `tpch`, ...
    pub kind: String,
    /// Its rows' schema.
    pub schema: SchemaRef,
    /// Read whole in every epoch.
    pub lookup: bool,
    /// Where its data comes from, before any slice narrows the URIs.
    pub provenance: SourceProvenance,
    /// Its event time, when its rows are timed.
    pub event_time: Option<crate::state::EventTimeConfig>,
}

/// What a sink writes.
#[derive(Debug, Clone)]
pub(crate) enum SinkInput {
    /// The rows of a stage or source: a logical plan over the source tables.
    Plan(LogicalPlan),
    /// The epoch's dead letters (`[dead_letter]`).
    DeadLetters,
    /// A sample of the rows where a shadow variant of this stage differs
    /// (`[stages.<stage>.rollout] diff`).
    RolloutDiff(String),
}

/// A sink and how its rows are made.
#[derive(Debug)]
pub(crate) struct PlannedSink {
    /// The sink.
    pub sink: Arc<dyn Sink>,
    /// `sink <name>`, for errors and stats.
    pub id: ComponentId,
    /// Its rows.
    pub input: SinkInput,
    /// The schema it writes, with every piece of sluice's metadata but the
    /// provenance (which depends on the epoch's input).
    pub schema: SchemaRef,
    /// Lineage written with its data (when every rolled-out stage runs its
    /// primary; see [`PlannedSink::lineage_with`]).
    pub lineage: Vec<LineageEntry>,
    /// The lineage entries of the variants of rolled-out stages upstream.
    pub variant_lineage: VariantLineage,
    /// Sources feeding it.
    pub sources: Vec<String>,
}

/// Lineage entries of variants: by stage, then by variant.
pub(crate) type VariantLineage = BTreeMap<String, BTreeMap<String, LineageEntry>>;

impl PlannedSink {
    /// The sink's schema for rows of `provenance`, made with the rollout
    /// `choices`.
    pub(crate) fn output_schema(
        &self,
        provenance: &Provenance,
        choices: &BTreeMap<String, Choice>,
    ) -> Result<SchemaRef> {
        let mut md = self.schema.metadata().clone();
        md.insert(metadata::PROVENANCE.into(), to_json(provenance)?);
        if !self.variant_lineage.is_empty() {
            md.insert(
                metadata::LINEAGE.into(),
                to_json(&self.lineage_with(choices))?,
            );
        }
        Ok(Arc::new(Schema::new_with_metadata(
            self.schema.fields().clone(),
            md,
        )))
    }

    /// The lineage of rows made with the rollout `choices`. A variant whose
    /// rows are delivered is named `<stage>@<variant>`: after its stage's
    /// entry for a canary (the rows are shared; the `variant_column` says
    /// whose each is), in its place when it runs as the primary. A shadow's
    /// rows are never delivered, so it is not named.
    pub(crate) fn lineage_with(&self, choices: &BTreeMap<String, Choice>) -> Vec<LineageEntry> {
        let mut out = Vec::with_capacity(self.lineage.len() + choices.len());
        for entry in &self.lineage {
            let variant = choices.get(&entry.stage).and_then(|c| {
                let e = self.variant_lineage.get(&entry.stage)?.get(&c.variant)?;
                Some((c.mode, e))
            });
            match variant {
                Some((Mode::Canary, v)) => out.extend([entry.clone(), v.clone()]),
                Some((Mode::Primary, v)) => out.push(v.clone()),
                _ => out.push(entry.clone()),
            }
        }
        out
    }
}

impl PipelinePlan {
    /// Whether `source` is a lookup table: read whole once, bound into every epoch.
    pub(crate) fn is_lookup(&self, source: &str) -> bool {
        self.sources.get(source).is_some_and(|s| s.lookup)
    }

    /// The physical plan of a sink's rows for the epoch `state` is bound to.
    pub(crate) async fn physical_plan(
        &self,
        sink: &PlannedSink,
        state: &SessionState,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let SinkInput::Plan(plan) = &sink.input else {
            return Err(SluiceError::Internal(format!(
                "{} has no plan: the epoch loop makes its rows",
                sink.id
            )));
        };
        state
            .create_physical_plan(plan)
            .await
            .map_err(|e| SluiceError::from_datafusion(e, Some(sink.id.clone())))
    }

    /// Provenance of the rows of `sources` read from `uris` (by source):
    /// a source that read nothing lists no URIs.
    pub(crate) fn provenance(
        &self,
        sources: &[String],
        uris: &BTreeMap<String, Vec<String>>,
    ) -> Provenance {
        let entries = sources
            .iter()
            .filter_map(|name| {
                let mut p = self.sources.get(name)?.provenance.clone();
                match uris.get(name) {
                    Some(u) if !u.is_empty() => p.uris = u.clone(),
                    Some(_) => {}
                    None => p.uris.clear(),
                }
                Some(p)
            })
            .collect();
        Provenance {
            pipeline: self.spec.id(),
            sources: entries,
        }
    }
}

/// JSON of a piece of metadata.
pub(crate) fn to_json<T: serde::Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v)
        .map_err(|e| SluiceError::Internal(format!("cannot encode metadata: {e}")))
}

/// The schema a sink writes: its input's plus sluice's metadata (provenance
/// is added per epoch, by [`PlannedSink::output_schema`]).
pub(crate) fn sink_schema(
    spec: &PipelineSpec,
    input: &Schema,
    schema_name: &str,
    schema_version: &str,
    lineage: &[LineageEntry],
) -> Result<SchemaRef> {
    let mut md = input.metadata().clone();
    md.insert(metadata::PIPELINE.into(), spec.id());
    md.insert(metadata::SCHEMA.into(), schema_name.to_string());
    md.insert(metadata::SCHEMA_VERSION.into(), schema_version.to_string());
    md.insert(metadata::LINEAGE.into(), to_json(&lineage)?);
    Ok(Arc::new(Schema::new_with_metadata(
        input.fields().clone(),
        md,
    )))
}
