//! The epoch runner: slices in, files out, one atomic commit per epoch.
//!
//! ```text
//! recover sinks ─► resume sources at the committed offsets
//!   loop: next slice of every source ─► install slices in the source tables
//!         ─► plan + write every sink ─► commit every sink ─► ack sources
//! ```
//!
//! A run that dies between writing and committing leaves files no commit
//! lists; the next run deletes them and redoes the epoch from the recorded
//! offsets. If the pipeline has several sinks and only some committed an epoch,
//! the epoch is replayed from the offsets recorded by those that did, and
//! written only to the others, so no sink sees a row twice.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::TableProvider;
use datafusion::datasource::empty::EmptyTable;
use datafusion::physical_plan::ExecutionPlan;
use serde_json::Value;
use sluice_contract::{Provenance, SourceProvenance};

use crate::commit_log::{SourceOffsets, new_run_id};
use crate::compile::CompiledPipeline;
use crate::error::{Result, SluiceError};
use crate::metrics::{ComponentStats, RunSummary};
use crate::ops::stage::{StageRole, stage_execs};
use crate::sinks::{CommitInfo, Recovery, Written};
use crate::sources::{Slice, SliceLimits};
use crate::spec::graph::NodeKind;

/// Options of one run.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Stop after this many epochs (the rest is left for the next run).
    pub max_epochs: Option<u64>,
}

/// Environment variable naming a crash point, for crash tests:
/// `before_commit`, `between_commits` or `after_commit`, optionally `@<epoch>`.
pub const FAILPOINT_ENV: &str = "SLUICE_FAILPOINT";

#[derive(Debug, Clone)]
struct Failpoint {
    point: String,
    epoch: Option<u64>,
}

impl Failpoint {
    fn from_env() -> Option<Self> {
        let v = std::env::var(FAILPOINT_ENV).ok()?;
        let (point, epoch) = match v.split_once('@') {
            Some((p, e)) => (p.to_string(), e.parse().ok()),
            None => (v, None),
        };
        Some(Self { point, epoch })
    }

    fn hit(this: &Option<Self>, point: &str, epoch: u64) {
        if let Some(f) = this {
            if f.point == point && f.epoch.is_none_or(|e| e == epoch) {
                eprintln!("sluice: failpoint `{point}` hit at epoch {epoch}; aborting the process");
                std::process::abort();
            }
        }
    }
}

#[derive(Default)]
struct Accumulated {
    rows: u64,
    batches: u64,
    bytes: u64,
    wall: Duration,
    files: u64,
}

impl CompiledPipeline {
    /// Runs the pipeline until its bounded sources are exhausted (or
    /// `max_epochs`), committing each epoch.
    pub async fn run(&mut self, options: RunOptions) -> Result<RunSummary> {
        let started = Instant::now();
        let run_id = new_run_id();
        let failpoint = Failpoint::from_env();

        // 1. recover every sink
        let mut recoveries: BTreeMap<String, Recovery> = BTreeMap::new();
        let mut removed_files = Vec::new();
        for (name, s) in &self.sinks {
            let r = s.sink.recover().await?;
            removed_files.extend(r.removed_files.iter().map(|f| format!("{}/{f}", s.sink.url().trim_end_matches('/'))));
            recoveries.insert(name.clone(), r);
        }
        let durable: Vec<&Recovery> = recoveries.values().filter(|r| r.durable).collect();
        let first_epoch = durable.iter().map(|r| r.last_epoch.map_or(0, |e| e + 1)).min().unwrap_or(0);
        let max_committed = durable.iter().filter_map(|r| r.last_epoch).max();

        // 2. resume sources where the slowest sink's last commit ended
        let mut positions: BTreeMap<String, Value> = BTreeMap::new();
        if first_epoch > 0 {
            let prev = first_epoch - 1;
            let offsets = durable.iter().find_map(|r| r.offsets.get(&prev)).cloned().unwrap_or_default();
            for (name, src) in self.sources.iter_mut().filter(|(_, s)| !s.lookup) {
                if let Some(o) = offsets.get(name) {
                    src.source.resume(&o.end).await?;
                    positions.insert(name.clone(), o.end.clone());
                }
            }
        }
        let expected: u64 = self
            .sources
            .values()
            .filter(|s| !s.lookup)
            .filter_map(|s| s.source.estimated_remaining_rows())
            .sum();
        self.progress.rows_expected.store(expected, Ordering::Relaxed);

        let e = &self.spec.settings.epoch;
        let limits = SliceLimits {
            max_rows: e.max_rows,
            max_bytes: e.max_bytes.map(|b| b.0),
            max_latency: e.max_latency.map(|d| d.0),
        };
        let mut lookups: BTreeMap<String, Option<Slice>> = BTreeMap::new();
        let mut acc: BTreeMap<(u8, String), Accumulated> = BTreeMap::new();
        let mut epoch = first_epoch;
        let mut done = 0u64;

        loop {
            if options.max_epochs.is_some_and(|m| done >= m) {
                break;
            }
            let replaying = max_committed.is_some_and(|m| epoch <= m);

            // 3. one slice per source
            let mut slices: BTreeMap<String, Slice> = BTreeMap::new();
            let mut offsets: BTreeMap<String, SourceOffsets> = BTreeMap::new();
            let recorded = if replaying {
                durable.iter().find_map(|r| r.offsets.get(&epoch)).cloned()
            } else {
                None
            };
            for (name, src) in self.sources.iter_mut() {
                if src.lookup {
                    if !lookups.contains_key(name) {
                        let whole = src.source.next_slice(&SliceLimits::default()).await?;
                        lookups.insert(name.clone(), whole);
                    }
                    continue;
                }
                let slice = match &recorded {
                    Some(rec) => match rec.get(name) {
                        Some(o) if o.start != o.end => {
                            let s = src.source.replay(&o.start, &o.end).await?;
                            src.source.resume(&o.end).await?;
                            Some(s)
                        }
                        _ => None,
                    },
                    None => src.source.next_slice(&limits).await?,
                };
                let here = positions.get(name).cloned().unwrap_or(Value::Null);
                match slice {
                    Some(s) => {
                        offsets.insert(name.clone(), SourceOffsets { start: s.start.clone(), end: s.end.clone() });
                        positions.insert(name.clone(), s.end.clone());
                        slices.insert(name.clone(), s);
                    }
                    None => {
                        offsets.insert(name.clone(), SourceOffsets { start: here.clone(), end: here });
                    }
                }
            }
            if slices.is_empty() && recorded.is_none() {
                break;
            }

            // 4. install the slices
            for (name, src) in &self.sources {
                let table: Arc<dyn TableProvider> = match slices.get(name).or_else(|| lookups.get(name).and_then(|s| s.as_ref())) {
                    Some(s) => Arc::clone(&s.table),
                    None => Arc::new(EmptyTable::new(src.source.schema())),
                };
                src.table.set_slice(table);
            }

            // 5. plan and write every sink that has not committed this epoch;
            // a failure that may pass (a stage crashed or timed out, a store
            // hiccup) is retried on the same slices, so nothing is duplicated
            for rt in self.externals.values() {
                rt.set_epoch(epoch);
            }
            let max_retries = self.externals.values().map(|r| r.config.retries).max().unwrap_or(0);
            let mut attempt = 0u32;
            let (jobs, results) = loop {
                match self.write_epoch(epoch, &run_id, &recoveries, &slices, &lookups).await {
                    Ok(done) => break done,
                    Err(e) if e.retry_hint() == crate::error::RetryHint::WithBackoff && attempt < max_retries => {
                        attempt += 1;
                        let delay = Duration::from_millis(200 * 2u64.pow(attempt.min(5)));
                        tracing::warn!(epoch, attempt, error = %e, "epoch failed; retrying in {delay:?}");
                        tokio::time::sleep(delay).await;
                    }
                    Err(e) => return Err(e),
                }
            };
            Failpoint::hit(&failpoint, "before_commit", epoch);

            // 6. commit
            // a source or stage shared by several sinks is computed once per
            // sink's plan; report the rows of one computation (the largest)
            let mut epoch_stages: BTreeMap<(u8, String), Accumulated> = BTreeMap::new();
            for (i, ((name, plan, schema, provenance), (written, took))) in jobs.iter().zip(results).enumerate() {
                let written = written?;
                let s = &self.sinks[name];
                let info = CommitInfo {
                    pipeline: self.spec.id(),
                    run_id: run_id.clone(),
                    lineage: s.lineage.clone(),
                    provenance: provenance.clone(),
                    source_offsets: offsets.clone(),
                };
                let t = Instant::now();
                s.sink.commit(epoch, &written, Arc::clone(schema), &info).await?;
                if i == 0 {
                    Failpoint::hit(&failpoint, "between_commits", epoch);
                }
                self.progress.rows_committed.fetch_add(written.rows, Ordering::Relaxed);
                self.progress.files_committed.fetch_add(written.files.len() as u64, Ordering::Relaxed);
                let a = acc.entry((2, name.clone())).or_default();
                a.rows += written.rows;
                a.bytes += written.bytes;
                a.files += written.files.len() as u64;
                a.wall += took + t.elapsed();
                let mut this_plan = BTreeMap::new();
                collect_stage_metrics(plan, &mut this_plan);
                for (k, v) in this_plan {
                    let e = epoch_stages.entry(k).or_default();
                    if v.rows >= e.rows {
                        *e = v;
                    }
                }
            }
            for (k, v) in epoch_stages {
                let a = acc.entry(k).or_default();
                a.rows += v.rows;
                a.batches += v.batches;
                a.bytes += v.bytes;
                a.wall += v.wall;
            }
            Failpoint::hit(&failpoint, "after_commit", epoch);

            // 7. acknowledge
            for (name, s) in &slices {
                if let Some(src) = self.sources.get_mut(name) {
                    src.source.ack(&s.end).await?;
                }
            }
            self.progress.epochs_committed.fetch_add(1, Ordering::Relaxed);
            done += 1;
            epoch += 1;
        }

        for rt in self.externals.values() {
            rt.shutdown().await;
        }
        Ok(RunSummary {
            pipeline: self.spec.id(),
            run_id,
            epochs: done,
            first_epoch,
            removed_files,
            components: self.components(&acc),
            wall: started.elapsed(),
            outputs: self.sinks.iter().map(|(n, s)| (n.clone(), s.sink.url())).collect(),
        })
    }

    /// Plans and writes one epoch to every sink that has not committed it;
    /// on failure, deletes what was written.
    #[allow(clippy::type_complexity)]
    async fn write_epoch(
        &self,
        epoch: u64,
        run_id: &str,
        recoveries: &BTreeMap<String, Recovery>,
        slices: &BTreeMap<String, Slice>,
        lookups: &BTreeMap<String, Option<Slice>>,
    ) -> Result<(Vec<(String, Arc<dyn ExecutionPlan>, SchemaRef, Provenance)>, Vec<(Result<Written>, Duration)>)> {
        let mut jobs = Vec::new();
        for (name, s) in &self.sinks {
            let r = &recoveries[name];
            if r.durable && r.last_epoch.is_some_and(|l| l >= epoch) {
                continue;
            }
            let plan = self.physical_plan(name).await?;
            let provenance = self.provenance_for(&s.sources, slices, lookups);
            let schema = self.output_schema(s, &provenance)?;
            jobs.push((name.clone(), plan, schema, provenance));
        }
        let task = self.ctx.task_ctx();
        let writes = jobs.iter().map(|(name, plan, schema, _)| {
            let sink = Arc::clone(&self.sinks[name].sink);
            let (plan, schema, task, run_id) = (Arc::clone(plan), Arc::clone(schema), Arc::clone(&task), run_id.to_string());
            async move {
                let t = Instant::now();
                let r = sink.write(epoch, &run_id, plan, task, schema).await;
                (r, t.elapsed())
            }
        });
        let results: Vec<(Result<Written>, Duration)> = futures::future::join_all(writes).await;
        if results.iter().any(|(r, _)| r.is_err()) {
            let mut first = None;
            for ((name, ..), (r, _)) in jobs.iter().zip(results) {
                match r {
                    Ok(w) => self.sinks[name].sink.abort(&w).await,
                    Err(e) => first = first.or(Some(e)),
                }
            }
            return Err(first.unwrap_or_else(|| SluiceError::Internal("a sink failed without an error".into())));
        }
        Ok((jobs, results))
    }

    /// Deletes the committed output of every sink, so the next run starts
    /// over. Returns the number of objects deleted.
    pub async fn reset_sinks(&self) -> Result<u64> {
        let mut n = 0;
        for s in self.sinks.values() {
            n += s.sink.reset().await?;
        }
        Ok(n)
    }

    fn provenance_for(
        &self,
        sources: &[String],
        slices: &BTreeMap<String, Slice>,
        lookups: &BTreeMap<String, Option<Slice>>,
    ) -> Provenance {
        let entries = sources
            .iter()
            .filter_map(|name| {
                let src = self.sources.get(name)?;
                let mut p: SourceProvenance = src.source.provenance();
                if let Some(s) = slices.get(name).or_else(|| lookups.get(name).and_then(|s| s.as_ref())) {
                    if !s.uris.is_empty() {
                        p.uris = s.uris.clone();
                    }
                } else {
                    p.uris.clear();
                }
                Some(p)
            })
            .collect();
        Provenance { pipeline: self.spec.id(), sources: entries }
    }

    fn components(&self, acc: &BTreeMap<(u8, String), Accumulated>) -> Vec<ComponentStats> {
        let mut out: Vec<ComponentStats> = Vec::new();
        let rows_out = |role: u8, name: &str| acc.get(&(role, name.to_string())).map_or(0, |a| a.rows);
        let out_of = |name: &str| match self.graph.kinds.get(name) {
            Some(NodeKind::Source) => rows_out(0, name),
            _ => rows_out(1, name),
        };
        for (name, src) in &self.sources {
            let a = acc.get(&(0, name.clone()));
            out.push(stats(name, "source", src.source.kind(), 0, a));
        }
        for name in &self.graph.stage_order {
            let kind = self.spec.stages.get(name).map_or("sql", |s| s.kind());
            let rows_in = self.graph.inputs.get(name).into_iter().flatten().map(|i| out_of(i)).sum();
            let mut s = stats(name, "stage", kind, rows_in, acc.get(&(1, name.clone())));
            if let Some(rt) = self.externals.get(name) {
                s.rows_skipped = rt.rows_skipped.load(Ordering::Relaxed);
                s.process_starts = rt.starts.load(Ordering::Relaxed);
                s.batch_latency_p50_us = rt.latency_quantile_us(0.5).unwrap_or(0) as u64;
                s.batch_latency_p99_us = rt.latency_quantile_us(0.99).unwrap_or(0) as u64;
            }
            out.push(s);
        }
        for (name, s) in &self.sinks {
            let rows_in = out_of(self.spec.sinks[name].input());
            out.push(stats(name, "sink", s.sink.kind(), rows_in, acc.get(&(2, name.clone()))));
        }
        out
    }
}

fn stats(name: &str, role: &str, kind: &str, rows_in: u64, a: Option<&Accumulated>) -> ComponentStats {
    let mut s = ComponentStats { name: name.into(), role: role.into(), kind: kind.into(), rows_in, ..Default::default() };
    if let Some(a) = a {
        s.rows_out = a.rows;
        s.batches = a.batches;
        s.bytes = a.bytes;
        s.wall = a.wall;
        s.files = a.files;
    }
    s
}

/// Adds the counters of every stage border in an executed plan.
fn collect_stage_metrics(plan: &Arc<dyn ExecutionPlan>, acc: &mut BTreeMap<(u8, String), Accumulated>) {
    for s in stage_execs(plan) {
        let role = match s.role() {
            StageRole::Source => 0,
            StageRole::Stage => 1,
        };
        let c = s.counters();
        let a = acc.entry((role, s.stage().to_string())).or_default();
        a.rows += c.rows.load(Ordering::Relaxed);
        a.batches += c.batches.load(Ordering::Relaxed);
        a.bytes += c.bytes.load(Ordering::Relaxed);
        a.wall += c.active();
    }
}

