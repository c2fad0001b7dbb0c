//! Compiling a pipeline: from a checked spec to one immutable DataFusion
//! plan per sink.
//!
//! Each source is registered as an [`EpochTable`](crate::sources::EpochTable)
//! ([`sources`]); each SQL stage is planned against the tables and views
//! before it, wrapped in a [`StageNode`](crate::ops::stage::StageNode) and
//! registered as a view ([`stages`]). DataFusion inlines views, so a chain of
//! stages is one plan that the optimizer sees whole: filters and projections
//! move across stage borders into the scans. Each sink gets the plan of its
//! input ([`sinks`]). The result ([`PipelinePlan`]) never changes while the
//! pipeline runs: what differs between epochs is bound to each epoch's
//! execution ([`crate::epoch::EpochBinding`]).

mod plan;
mod rollout;
pub(crate) mod session;
mod sinks;
#[cfg(test)]
mod slt_tests;
mod sources;
pub(crate) mod stages;
pub(crate) mod windows;

use std::sync::Arc;

pub use plan::CompiledPipeline;
pub(crate) use plan::{PipelinePlan, PlannedSink, SinkInput};

use crate::dead_letter::{self, OnError};
use crate::engine::Engine;
use crate::error::{Result, SluiceError, SpecIssue};
use crate::metrics::Progress;
use crate::spec::PipelineSpec;
use crate::spec::graph::Graph;
use crate::stages::StageConfig;

/// Compiles `spec`, reporting every problem found, not only the first.
pub(crate) async fn compile(engine: &Engine, spec: PipelineSpec) -> Result<CompiledPipeline> {
    let graph = Graph::check(&spec).map_err(SluiceError::Spec)?;
    let ctx = session::session_for(engine, &spec);
    let progress = Arc::new(Progress::default());
    let mut errors: Vec<SluiceError> = Vec::new();
    if let Some(issue) = check_dead_letter_sink(&spec) {
        errors.push(SluiceError::spec(issue));
    }
    if spec.settings.epochs_in_flight == Some(0) {
        errors.push(SluiceError::spec(
            spec.issue("settings.epochs_in_flight", "must be at least 1")
                .with_help(
                    "1 commits each epoch before the next is read; 2 (the default) overlaps them",
                ),
        ));
    }

    let rollout = match crate::rollout::control::RolloutPlan::of(&spec, engine.stores()) {
        Ok(r) => r,
        Err(e) => {
            errors.push(e);
            None
        }
    };
    let opened = sources::open_all(engine, &spec, &ctx, &progress, &mut errors).await;
    // the engine's stores may have grown (s3 buckets opened by sources)
    engine.stores().register_all(&ctx);
    let mut failed: Vec<String> = spec
        .sources
        .keys()
        .filter(|n| !opened.contains_key(*n))
        .cloned()
        .collect();
    let time = windows::TimeContext::of(&spec, &opened);
    let externals = stages::plan_all(&ctx, &spec, &graph, &time, &mut failed, &mut errors).await;
    let sinks = sinks::plan_all(
        sinks::SinkInputs {
            engine,
            spec: &spec,
            graph: &graph,
            ctx: &ctx,
            sources: &opened,
            externals: &externals,
            failed: &failed,
        },
        &mut errors,
    )
    .await;
    if !errors.is_empty() {
        for rt in externals.values() {
            rt.shutdown().await;
        }
        return Err(merge_errors(errors));
    }
    let mut planned = std::collections::BTreeMap::new();
    let mut opened_sources = std::collections::BTreeMap::new();
    for (name, (source, p)) in opened {
        planned.insert(name.clone(), p);
        opened_sources.insert(name, source);
    }
    Ok(CompiledPipeline {
        plan: Arc::new(PipelinePlan {
            spec,
            graph,
            session: ctx,
            sources: planned,
            sinks,
            externals,
            progress,
            rollout,
        }),
        sources: opened_sources,
    })
}

/// One error, or all spec issues together, or a list.
pub(crate) fn merge_errors(mut errors: Vec<SluiceError>) -> SluiceError {
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

/// `on_error = "dead_letter"` anywhere needs the pipeline's `[dead_letter]`
/// table, and the name `dead_letter` is then taken.
fn check_dead_letter_sink(spec: &PipelineSpec) -> Option<SpecIssue> {
    let wants: Vec<String> = spec
        .sources
        .iter()
        .filter(|(_, c)| c.on_error == OnError::DeadLetter)
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
