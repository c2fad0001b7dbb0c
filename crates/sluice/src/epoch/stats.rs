//! What a run counts, per component, and the summary built from it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use datafusion::physical_plan::ExecutionPlan;
use sluice_contract::ErrorCode;

use crate::compile::PipelinePlan;
use crate::dead_letter::DeadLetter;
use crate::metrics::{ComponentId, ComponentStats};
use crate::ops::stage::stage_execs;
use crate::spec::graph::NodeKind;

/// Counters of one component.
#[derive(Debug, Default, Clone)]
pub(crate) struct Counts {
    pub rows: u64,
    pub batches: u64,
    pub bytes: u64,
    pub wall: Duration,
    pub files: u64,
    /// Rows dropped (`on_error = "skip"`).
    pub skipped: u64,
    /// Rows sent to the dead-letter sink.
    pub dead: u64,
    /// Rows given up on (skipped or dead-lettered), by error code.
    pub codes: BTreeMap<ErrorCode, u64>,
}

/// Counters by component.
#[derive(Debug, Default, Clone)]
pub(crate) struct Stats(BTreeMap<ComponentId, Counts>);

impl Stats {
    pub(super) fn of(&mut self, id: ComponentId) -> &mut Counts {
        self.0.entry(id).or_default()
    }

    /// Adds another set of counters (an epoch's, once it is committed).
    pub(super) fn add(&mut self, other: &Stats) {
        for (k, v) in &other.0 {
            let a = self.of(k.clone());
            a.rows += v.rows;
            a.batches += v.batches;
            a.bytes += v.bytes;
            a.wall += v.wall;
            a.files += v.files;
            a.skipped += v.skipped;
            a.dead += v.dead;
            for (code, n) in &v.codes {
                *a.codes.entry(*code).or_default() += n;
            }
        }
    }

    /// Counts the rows sources and stages gave up on.
    pub(super) fn add_dead_letters(&mut self, letters: &[DeadLetter]) {
        for d in letters {
            let a = self.of(d.component.clone());
            *a.codes.entry(d.code).or_default() += 1;
            if d.skipped {
                a.skipped += 1;
            } else {
                a.dead += 1;
            }
        }
    }

    /// Adds the counters of every stage border of the executed plans of one
    /// epoch. A source or stage shared by several sinks' plans is computed
    /// once per plan: the rows of one computation (the largest) count.
    pub(super) fn add_stage_borders(&mut self, plans: &[Arc<dyn ExecutionPlan>]) {
        let mut epoch: BTreeMap<ComponentId, Counts> = BTreeMap::new();
        for plan in plans {
            for s in stage_execs(plan) {
                let c = s.counters();
                let this = Counts {
                    rows: c.rows.load(Ordering::Relaxed),
                    batches: c.batches.load(Ordering::Relaxed),
                    bytes: c.bytes.load(Ordering::Relaxed),
                    wall: c.active(),
                    ..Counts::default()
                };
                let e = epoch.entry(s.role().component(s.stage())).or_default();
                if this.rows >= e.rows {
                    *e = this;
                }
            }
        }
        self.add(&Stats(epoch));
    }

    /// Rows given up on so far, by component (with its kind) and code.
    pub(super) fn row_errors(
        &self,
        plan: &PipelinePlan,
    ) -> Vec<(ComponentId, String, ErrorCode, u64)> {
        let kind_of = |id: &ComponentId| match id {
            ComponentId::Source(n) => plan.sources.get(n).map(|s| s.kind.clone()),
            ComponentId::Stage(n) => plan.spec.stages.get(n).map(|s| s.kind().to_string()),
            ComponentId::Sink(n) => plan.sinks.get(n).map(|s| s.sink.kind().to_string()),
        };
        self.0
            .iter()
            .flat_map(|(id, c)| {
                let kind = kind_of(id).unwrap_or_default();
                c.codes
                    .iter()
                    .map(move |(code, n)| (id.clone(), kind.clone(), *code, *n))
            })
            .collect()
    }

    fn get(&self, id: &ComponentId) -> Option<&Counts> {
        self.0.get(id)
    }

    /// Rows given up on by every component (what the dead-letter sink receives).
    fn dead_total(&self) -> u64 {
        self.0.values().map(|c| c.dead).sum()
    }

    /// Per-component stats of a run: sources, stages in order, sinks.
    pub(super) fn components(&self, plan: &PipelinePlan) -> Vec<ComponentStats> {
        let rows_out = |id: ComponentId| self.get(&id).map_or(0, |a| a.rows);
        let out_of = |name: &str| match plan.graph.kinds.get(name) {
            Some(NodeKind::Source) => rows_out(ComponentId::Source(name.to_string())),
            _ => rows_out(ComponentId::Stage(name.to_string())),
        };
        let mut out: Vec<ComponentStats> = Vec::new();
        for (name, src) in &plan.sources {
            let id = ComponentId::Source(name.clone());
            let mut s = stats(&id, &src.kind, 0, self.get(&id));
            // rows read = rows passed on + rows given up on
            s.rows_in = s.rows_out + s.rows_skipped + s.rows_dead_lettered;
            out.push(s);
        }
        for name in &plan.graph.stage_order {
            let kind = plan.spec.stages.get(name).map_or("sql", |s| s.kind());
            let rows_in = plan
                .graph
                .inputs
                .get(name)
                .into_iter()
                .flatten()
                .map(|i| out_of(i))
                .sum();
            let id = ComponentId::Stage(name.clone());
            let mut s = stats(&id, kind, rows_in, self.get(&id));
            if let Some(rt) = plan.externals.get(name) {
                s.process_starts = rt.starts.load(Ordering::Relaxed);
                s.batch_latency_p50_us = rt.latency_quantile_us(0.5).unwrap_or(0) as u64;
                s.batch_latency_p99_us = rt.latency_quantile_us(0.99).unwrap_or(0) as u64;
                s.batches_in_shared_memory = rt.shm_batches.load(Ordering::Relaxed);
                s.batches_unchanged = rt.unchanged_batches.load(Ordering::Relaxed);
                s.input_batches_in_shared_memory = rt.shm_input_batches.load(Ordering::Relaxed);
            }
            out.push(s);
        }
        for (name, s) in &plan.sinks {
            // the dead-letter sink has no input in the graph: its rows come
            // from everywhere; a diff sink's rows are the diff's sample
            let rows_in = match (plan.spec.sinks.get(name), &s.input) {
                (Some(c), _) => out_of(&c.input),
                (None, crate::compile::SinkInput::RolloutDiff(_)) => rows_out(s.id.clone()),
                (None, _) => self.dead_total(),
            };
            out.push(stats(&s.id, s.sink.kind(), rows_in, self.get(&s.id)));
        }
        out
    }
}

fn stats(id: &ComponentId, kind: &str, rows_in: u64, a: Option<&Counts>) -> ComponentStats {
    let mut s = ComponentStats {
        name: id.name().into(),
        role: id.role().into(),
        kind: kind.into(),
        rows_in,
        ..Default::default()
    };
    if let Some(a) = a {
        s.rows_out = a.rows;
        s.batches = a.batches;
        s.bytes = a.bytes;
        s.wall = a.wall;
        s.files = a.files;
        s.rows_skipped = a.skipped;
        s.rows_dead_lettered = a.dead;
    }
    s
}
