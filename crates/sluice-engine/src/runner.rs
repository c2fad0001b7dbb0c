//! The epoch runner: slices in, files out, atomic commits.
//!
//! ```text
//! recover sinks ─► resume sources at the committed offsets
//!   loop: next slice of every source ─► install the slices in the source tables
//!         ─► plan + write every sink (files stay open across epochs)
//!         ─► at a commit point: seal the files, commit every sink, ack the sources
//! ```
//!
//! A commit point comes after every epoch of a bounded pipeline, and every
//! `commit_interval` (default 10 s) of a streaming one, at the end of the
//! input, and on a graceful stop. A commit covers the epochs since the last
//! one, with the source offsets of the first epoch's start and the last
//! epoch's end; so a restart resumes exactly after the committed rows.
//!
//! A run that dies before a commit leaves files no commit lists; the next run
//! deletes them and re-reads from the committed offsets. If the pipeline has
//! several sinks and only some committed, the missing range is replayed from
//! the offsets recorded by those that did and written only to the others, so
//! no sink sees a row twice. A failure that may pass (a stage crashed, a store
//! hiccup) discards what was written since the last commit, rewinds the
//! sources and tries again.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use datafusion::catalog::TableProvider;
use datafusion::datasource::empty::EmptyTable;
use datafusion::physical_plan::ExecutionPlan;
use serde_json::Value;
use sluice_contract::{Provenance, SourceProvenance};

use crate::commit_log::{SourceOffsets, new_run_id};
use crate::compile::CompiledPipeline;
use crate::dead_letter;
use crate::error::{Result, RetryHint, SluiceError};
use crate::metrics::{ComponentStats, LatencySummary, RunSummary};
use crate::openlineage;
use crate::ops::stage::{StageRole, stage_execs};
use crate::sinks::{CommitInfo, Recovery};
use crate::sources::{Slice, SliceLimits};
use crate::spec::graph::NodeKind;

/// Options of one run.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Stop after this many epochs (the rest is left for the next run).
    pub max_epochs: Option<u64>,
    /// Stop (and commit) once streaming sources have nothing new for an epoch.
    pub exit_when_idle: bool,
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
    /// Rows given up on: dropped (`on_error = "skip"`) and dead-lettered.
    skipped: u64,
    dead: u64,
}

/// An epoch written but not yet committed.
struct Uncommitted {
    epoch: u64,
    read_at: Instant,
    offsets: BTreeMap<String, SourceOffsets>,
    provenance: BTreeMap<String, Provenance>,
}

impl CompiledPipeline {
    /// Runs the pipeline until its bounded sources are exhausted, `max_epochs`
    /// is reached, streaming sources go idle (`exit_when_idle`) or a stop is
    /// requested ([`crate::metrics::Progress::request_stop`]); commits
    /// everything written before returning.
    pub async fn run(&mut self, options: RunOptions) -> Result<RunSummary> {
        self.lineage = self.lineage_emitter().map(Arc::new);
        if let Some(l) = &self.lineage {
            l.emit("START", None).await;
        }
        let result = self.run_epochs(options).await;
        if let Some(l) = self.lineage.take() {
            match &result {
                Ok(_) => l.emit("COMPLETE", None).await,
                Err(e) => l.emit("FAIL", Some(&e.to_string())).await,
            }
        }
        result
    }

    /// The OpenLineage emitter of a run: sources as inputs, sinks as outputs
    /// with the column lineage of their plans.
    fn lineage_emitter(&self) -> Option<openlineage::Emitter> {
        let config = self.spec.lineage.as_ref()?;
        let dataset_of = |name: &str| -> openlineage::Dataset {
            let p = self.sources.get(name).map(|s| s.source.provenance());
            let uris = p.map(|p| p.uris).unwrap_or_default();
            match uris.as_slice() {
                [one] if one.contains(":///") || one.starts_with("s3://") => {
                    openlineage::Dataset::from_url(one)
                }
                [first, ..] if first.contains(":///") || first.starts_with("s3://") => {
                    // many files: the folder holding them
                    openlineage::Dataset::from_url(
                        first.rsplit_once('/').map_or(first.as_str(), |(d, _)| d),
                    )
                }
                _ => openlineage::Dataset {
                    namespace: format!("sluice://{}", self.spec.pipeline.name),
                    name: name.into(),
                },
            }
        };
        let inputs = self
            .sources
            .iter()
            .map(|(n, s)| openlineage::Input {
                dataset: dataset_of(n),
                schema: s.source.schema().as_ref().clone(),
            })
            .collect();
        let source_names: std::collections::BTreeSet<String> =
            self.sources.keys().cloned().collect();
        let outputs = self
            .sinks
            .values()
            .map(|s| {
                let columns = openlineage::column_lineage(&s.plan, &source_names)
                    .into_iter()
                    .map(|(col, from)| {
                        (
                            col,
                            from.into_iter().map(|(t, c)| (dataset_of(&t), c)).collect(),
                        )
                    })
                    .collect();
                openlineage::Output {
                    dataset: openlineage::Dataset::from_url(&s.sink.url()),
                    schema: s.plan.schema().as_arrow().clone(),
                    columns,
                }
            })
            .collect();
        let file = config.file.as_deref().map(|f| self.spec.resolve_path(f));
        Some(openlineage::Emitter::new(
            config,
            file,
            &self.spec.pipeline.name,
            inputs,
            outputs,
        ))
    }

    async fn run_epochs(&mut self, options: RunOptions) -> Result<RunSummary> {
        let started = Instant::now();
        let run_id = new_run_id();
        let failpoint = Failpoint::from_env();

        // 1. recover every sink
        let mut recoveries: BTreeMap<String, Recovery> = BTreeMap::new();
        let mut removed_files = Vec::new();
        for (name, s) in &self.sinks {
            let r = s.sink.recover().await?;
            removed_files.extend(
                r.removed_files
                    .iter()
                    .map(|f| format!("{}/{f}", s.sink.url().trim_end_matches('/'))),
            );
            recoveries.insert(name.clone(), r);
        }
        let durable: Vec<&Recovery> = recoveries.values().filter(|r| r.durable).collect();
        let first_epoch = durable
            .iter()
            .map(|r| r.last_epoch.map_or(0, |e| e + 1))
            .min()
            .unwrap_or(0);
        let max_committed = durable.iter().filter_map(|r| r.last_epoch).max();
        // ranges committed by some sinks and not others
        let mut replays: Vec<crate::sinks::CommittedRange> = Vec::new();
        if let Some(max) = max_committed {
            let mut e = first_epoch;
            while e <= max {
                let Some(rec) = durable.iter().find_map(|r| {
                    r.commits
                        .values()
                        .find(|c| c.first <= e && e <= c.last)
                        .cloned()
                }) else {
                    return Err(SluiceError::Internal(format!(
                        "no sink recorded the offsets of committed epoch {e}"
                    )));
                };
                e = rec.last + 1;
                replays.push(rec);
            }
        }

        // 2. resume sources where the slowest sink's last commit ended
        let mut positions: BTreeMap<String, Value> = BTreeMap::new();
        if first_epoch > 0 {
            let prev = first_epoch - 1;
            let offsets = durable
                .iter()
                .find_map(|r| {
                    r.commits
                        .values()
                        .find(|c| c.last == prev)
                        .map(|c| c.offsets.clone())
                })
                .unwrap_or_default();
            for (name, src) in self.sources.iter_mut().filter(|(_, s)| !s.lookup) {
                if let Some(o) = offsets.get(name) {
                    src.source.resume(&o.end).await?;
                    positions.insert(name.clone(), o.end.clone());
                }
            }
        }
        let committed_positions = positions.clone();
        let expected: u64 = self
            .sources
            .values()
            .filter(|s| !s.lookup)
            .filter_map(|s| s.source.estimated_remaining_rows())
            .sum();
        self.progress
            .rows_expected
            .store(expected, Ordering::Relaxed);

        let streaming = self
            .sources
            .values()
            .any(|s| !s.lookup && !s.source.is_bounded());
        let settings = self.spec.settings.clone();
        let e = &settings.epoch;
        let limits = SliceLimits {
            max_rows: e.max_rows.or(streaming.then_some(1_000_000)),
            max_bytes: e.max_bytes.map(|b| b.0),
            max_latency: Some(e.max_latency.map(|d| d.0).unwrap_or(Duration::from_secs(1))),
        };
        let commit_interval = settings
            .commit_interval
            .map(|d| d.0)
            .unwrap_or(if streaming {
                Duration::from_secs(10)
            } else {
                Duration::ZERO
            });
        let max_retries = self
            .externals
            .values()
            .map(|r| r.config.retries)
            .max()
            .unwrap_or(0)
            .max(settings.retries.unwrap_or(0));

        let mut state = LoopState {
            run_id,
            failpoint,
            lookups: BTreeMap::new(),
            acc: BTreeMap::new(),
            latencies: Vec::new(),
            uncommitted: Vec::new(),
            positions,
            committed_positions,
            epoch: first_epoch,
            done: 0,
            last_commit: Instant::now(),
            recoveries,
        };

        // 3. replay ranges only some sinks committed, one commit each
        if !replays.is_empty() {
            self.load_lookups(&mut state).await?;
        }
        for rec in replays {
            let mut slices = BTreeMap::new();
            for (name, src) in self.sources.iter_mut().filter(|(_, s)| !s.lookup) {
                if let Some(o) = rec.offsets.get(name).filter(|o| o.start != o.end) {
                    let slice = src.source.replay(&o.start, &o.end).await?;
                    src.source.resume(&o.end).await?;
                    slices.insert(name.clone(), slice);
                }
            }
            state.epoch = rec.last;
            let offsets = rec.offsets.clone();
            self.write_with_retries(&mut state, slices, offsets, max_retries, Some(rec.first))
                .await?;
            self.commit_pending(&mut state, Some(rec.first)).await?;
            state.epoch = rec.last + 1;
        }

        // 4. the epoch loop
        let mut retries_left = max_retries;
        loop {
            if options.max_epochs.is_some_and(|m| state.done >= m) || self.progress.stop_requested()
            {
                break;
            }
            let (slices, offsets, any_data, exhausted) =
                self.next_slices(&mut state, &limits).await?;
            if exhausted && !any_data {
                break;
            }
            if !any_data {
                // a streaming source had nothing new this epoch
                if !state.uncommitted.is_empty() && state.last_commit.elapsed() >= commit_interval {
                    self.commit_pending(&mut state, None).await?;
                }
                if options.exit_when_idle {
                    break;
                }
                continue;
            }
            match self
                .write_with_retries(&mut state, slices, offsets, 0, None)
                .await
            {
                Ok(()) => {}
                Err(e) if e.retry_hint() == RetryHint::WithBackoff && retries_left > 0 => {
                    retries_left -= 1;
                    let attempt = max_retries - retries_left;
                    let delay = Duration::from_millis(200 * 2u64.pow(attempt.min(5)));
                    tracing::warn!(epoch = state.epoch, attempt, error = %e, "epoch failed; rewinding to the last commit and retrying in {delay:?}");
                    self.rewind(&mut state).await?;
                    tokio::time::sleep(delay).await;
                    continue;
                }
                Err(e) => {
                    self.abort_sinks().await;
                    return Err(e);
                }
            }
            retries_left = max_retries;
            state.done += 1;
            state.epoch += 1;
            if state.last_commit.elapsed() >= commit_interval {
                self.commit_pending(&mut state, None).await?;
            }
        }
        if !state.uncommitted.is_empty() {
            self.commit_pending(&mut state, None).await?;
        }

        for rt in self.externals.values() {
            rt.shutdown().await;
        }
        let epochs = state.done;
        Ok(RunSummary {
            pipeline: self.spec.id(),
            run_id: state.run_id.clone(),
            epochs,
            first_epoch,
            removed_files,
            components: self.components(&state.acc),
            wall: started.elapsed(),
            outputs: self
                .sinks
                .iter()
                .map(|(n, s)| (n.clone(), s.sink.url()))
                .collect(),
            latency: LatencySummary::of(&mut state.latencies),
        })
    }

    /// One slice per source (lookups: the whole table, read once).
    /// Returns the slices, their offsets, whether any has rows to read, and
    /// whether every bounded source is exhausted.
    async fn next_slices(
        &mut self,
        state: &mut LoopState,
        limits: &SliceLimits,
    ) -> Result<(
        BTreeMap<String, Slice>,
        BTreeMap<String, SourceOffsets>,
        bool,
        bool,
    )> {
        let mut slices = BTreeMap::new();
        let mut offsets = BTreeMap::new();
        let mut exhausted = true;
        self.load_lookups(state).await?;
        for (name, src) in self.sources.iter_mut() {
            if src.lookup {
                continue;
            }
            let here = state.positions.get(name).cloned().unwrap_or(Value::Null);
            match src.source.next_slice(limits).await? {
                Some(s) => {
                    exhausted = false;
                    offsets.insert(
                        name.clone(),
                        SourceOffsets {
                            start: s.start.clone(),
                            end: s.end.clone(),
                        },
                    );
                    if s.start != s.end {
                        state.positions.insert(name.clone(), s.end.clone());
                        slices.insert(name.clone(), s);
                    }
                }
                None => {
                    offsets.insert(
                        name.clone(),
                        SourceOffsets {
                            start: here.clone(),
                            end: here,
                        },
                    );
                }
            }
        }
        let any = !slices.is_empty();
        Ok((slices, offsets, any, exhausted))
    }

    /// Reads every lookup source whole, once per run.
    async fn load_lookups(&mut self, state: &mut LoopState) -> Result<()> {
        for (name, src) in self.sources.iter_mut().filter(|(_, s)| s.lookup) {
            if !state.lookups.contains_key(name) {
                let whole = src.source.next_slice(&SliceLimits::default()).await?;
                state.lookups.insert(name.clone(), whole);
            }
        }
        Ok(())
    }

    /// Installs the slices and writes one epoch to every sink that has not
    /// committed it; retries (on the same slices) failures that may pass.
    async fn write_with_retries(
        &mut self,
        state: &mut LoopState,
        slices: BTreeMap<String, Slice>,
        offsets: BTreeMap<String, SourceOffsets>,
        max_retries: u32,
        replay_first: Option<u64>,
    ) -> Result<()> {
        for (name, src) in &self.sources {
            let table: Arc<dyn TableProvider> = match slices
                .get(name)
                .or_else(|| state.lookups.get(name).and_then(|s| s.as_ref()))
            {
                Some(s) => Arc::clone(&s.table),
                None => Arc::new(EmptyTable::new(src.source.schema())),
            };
            src.table.set_slice(table);
        }
        for rt in self.externals.values() {
            rt.set_epoch(state.epoch);
        }
        let read_at = Instant::now();
        let mut attempt = 0;
        loop {
            match self.write_epoch(state, &slices, replay_first).await {
                Ok(provenance) => {
                    state.uncommitted.push(Uncommitted {
                        epoch: state.epoch,
                        read_at,
                        offsets,
                        provenance,
                    });
                    return Ok(());
                }
                Err(e) if e.retry_hint() == RetryHint::WithBackoff && attempt < max_retries => {
                    // a replay writes into sinks that hold nothing else uncommitted
                    attempt += 1;
                    self.abort_sinks().await;
                    tokio::time::sleep(Duration::from_millis(200 * 2u64.pow(attempt.min(5)))).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Plans and writes one epoch to every sink that needs it; returns the
    /// provenance of each sink's rows.
    async fn write_epoch(
        &self,
        state: &mut LoopState,
        slices: &BTreeMap<String, Slice>,
        replay_first: Option<u64>,
    ) -> Result<BTreeMap<String, Provenance>> {
        let epoch = state.epoch;
        self.dead_letters.clear();
        let mut jobs = Vec::new();
        for (name, s) in &self.sinks {
            if name == dead_letter::SINK_NAME
                || !Self::sink_needs(&state.recoveries, name, epoch, replay_first)
            {
                continue;
            }
            let plan = self.physical_plan(name).await?;
            let provenance = self.provenance_for(&s.sources, slices, &state.lookups);
            let schema = self.output_schema(s, &provenance)?;
            jobs.push((name.clone(), plan, schema, provenance));
        }
        let task = self.ctx.task_ctx();
        let writes = jobs.iter().map(|(name, plan, schema, _)| {
            let sink = Arc::clone(&self.sinks[name].sink);
            let (plan, schema, task, run_id) = (
                Arc::clone(plan),
                Arc::clone(schema),
                Arc::clone(&task),
                state.run_id.clone(),
            );
            async move {
                let t = Instant::now();
                let r = sink.write(epoch, &run_id, plan, task, schema).await;
                (r, t.elapsed())
            }
        });
        let results = futures::future::join_all(writes).await;
        let mut first_error = None;
        let mut epoch_stages: BTreeMap<(u8, String), Accumulated> = BTreeMap::new();
        for ((name, plan, _, _), (r, took)) in jobs.iter().zip(results) {
            match r {
                Ok(w) => {
                    let durable = state.recoveries.get(name).is_some_and(|r| r.durable);
                    let a = state.acc.entry((2, name.clone())).or_default();
                    a.wall += took;
                    if !durable {
                        // nothing to commit: the rows are delivered as they are written
                        a.rows += w.rows;
                    }
                    // a source or stage shared by several sinks is computed once per
                    // sink's plan; report the rows of one computation (the largest)
                    let mut this_plan = BTreeMap::new();
                    collect_stage_metrics(plan, &mut this_plan);
                    for (k, v) in this_plan {
                        let e = epoch_stages.entry(k).or_default();
                        if v.rows >= e.rows {
                            *e = v;
                        }
                    }
                }
                Err(e) => first_error = first_error.or(Some(e)),
            }
        }
        if let Some(e) = first_error {
            return Err(e);
        }
        for (k, v) in epoch_stages {
            let a = state.acc.entry(k).or_default();
            a.rows += v.rows;
            a.batches += v.batches;
            a.bytes += v.bytes;
            a.wall += v.wall;
        }
        let mut provenance: BTreeMap<String, Provenance> =
            jobs.into_iter().map(|(n, _, _, p)| (n, p)).collect();
        if let Some(p) = self.write_dead_letters(state, slices, replay_first).await? {
            provenance.insert(dead_letter::SINK_NAME.to_string(), p);
        }
        Ok(provenance)
    }

    /// After the epoch's sinks are written: counts the rows sources and
    /// stages gave up on, and writes the dead-lettered ones to the
    /// `[dead_letter]` sink (committed with the others).
    async fn write_dead_letters(
        &self,
        state: &mut LoopState,
        slices: &BTreeMap<String, Slice>,
        replay_first: Option<u64>,
    ) -> Result<Option<Provenance>> {
        let epoch = state.epoch;
        let letters = self.dead_letters.take();
        for d in &letters {
            let role = if d.role == "source" { 0 } else { 1 };
            let a = state.acc.entry((role, d.component.clone())).or_default();
            if d.skipped {
                a.skipped += 1
            } else {
                a.dead += 1
            }
        }
        let Some(s) = self.sinks.get(dead_letter::SINK_NAME) else {
            return Ok(None);
        };
        if !Self::sink_needs(
            &state.recoveries,
            dead_letter::SINK_NAME,
            epoch,
            replay_first,
        ) {
            return Ok(None);
        }
        let kept: Vec<_> = letters.into_iter().filter(|d| !d.skipped).collect();
        let batch = dead_letter::to_batch(epoch, &kept)
            .map_err(|e| SluiceError::Internal(format!("dead letters: {e}")))?;
        let plan = datafusion::datasource::memory::MemorySourceConfig::try_new_exec(
            &[vec![batch]],
            dead_letter::schema(),
            None,
        )
        .map_err(|e| SluiceError::Internal(format!("dead letters: {e}")))?;
        let provenance = self.provenance_for(&s.sources, slices, &state.lookups);
        let schema = self.output_schema(s, &provenance)?;
        let t = Instant::now();
        s.sink
            .write(epoch, &state.run_id, plan, self.ctx.task_ctx(), schema)
            .await?;
        state
            .acc
            .entry((2, dead_letter::SINK_NAME.to_string()))
            .or_default()
            .wall += t.elapsed();
        Ok(Some(provenance))
    }

    fn sink_needs(
        recoveries: &BTreeMap<String, Recovery>,
        sink: &str,
        epoch: u64,
        replay_first: Option<u64>,
    ) -> bool {
        let Some(r) = recoveries.get(sink) else {
            return true;
        };
        if !r.durable {
            // a sink without a log is not written twice by a replay
            return replay_first.is_none();
        }
        !r.last_epoch.is_some_and(|l| l >= epoch)
    }

    /// Seals every sink's files and commits the epochs written since the last commit.
    async fn commit_pending(
        &mut self,
        state: &mut LoopState,
        replay_first: Option<u64>,
    ) -> Result<()> {
        let Some(last) = state.uncommitted.last() else {
            return Ok(());
        };
        let epoch = last.epoch;
        let first =
            replay_first.unwrap_or_else(|| state.uncommitted.first().map_or(epoch, |u| u.epoch));
        // offsets over the range: the first epoch's start, the last epoch's end
        let mut offsets: BTreeMap<String, SourceOffsets> = BTreeMap::new();
        for u in &state.uncommitted {
            for (src, o) in &u.offsets {
                offsets
                    .entry(src.clone())
                    .and_modify(|r| r.end = o.end.clone())
                    .or_insert_with(|| o.clone());
            }
        }
        let provenance = last.provenance.clone();
        // seal every sink first: all files closed and on the store
        let mut sealed = Vec::new();
        for (name, s) in &self.sinks {
            if Self::sink_needs(&state.recoveries, name, epoch, replay_first) {
                let t = Instant::now();
                sealed.push((name.clone(), s.sink.seal().await?, t.elapsed()));
            }
        }
        Failpoint::hit(&state.failpoint, "before_commit", epoch);
        for (i, (name, written, sealing)) in sealed.into_iter().enumerate() {
            let s = &self.sinks[&name];
            let t = Instant::now();
            let info = CommitInfo {
                pipeline: self.spec.id(),
                run_id: state.run_id.clone(),
                lineage: s.lineage.clone(),
                provenance: provenance.get(&name).cloned().unwrap_or_default(),
                source_offsets: offsets.clone(),
                first_epoch: first,
            };
            let schema = self.output_schema(s, &info.provenance)?;
            s.sink.commit(epoch, &written, schema, &info).await?;
            if i == 0 {
                Failpoint::hit(&state.failpoint, "between_commits", epoch);
            }
            self.progress
                .rows_committed
                .fetch_add(written.rows, Ordering::Relaxed);
            self.progress
                .files_committed
                .fetch_add(written.files.len() as u64, Ordering::Relaxed);
            let a = state.acc.entry((2, name.clone())).or_default();
            a.rows += written.rows;
            a.bytes += written.bytes;
            a.files += written.files.len() as u64;
            a.wall += sealing + t.elapsed();
            if let Some(r) = state.recoveries.get_mut(&name) {
                if r.durable {
                    r.last_epoch = Some(epoch);
                }
            }
        }
        Failpoint::hit(&state.failpoint, "after_commit", epoch);
        for (name, o) in &offsets {
            if let Some(src) = self.sources.get_mut(name) {
                src.source.ack(&o.end).await?;
            }
        }
        let now = Instant::now();
        for u in state.uncommitted.drain(..) {
            state.latencies.push(now.duration_since(u.read_at));
        }
        state.committed_positions = state.positions.clone();
        state.last_commit = now;
        self.progress
            .epochs_committed
            .store(epoch + 1, Ordering::Relaxed);
        tracing::info!(first_epoch = first, epoch, "committed");
        if let Some(l) = &self.lineage {
            l.emit("RUNNING", None).await;
        }
        Ok(())
    }

    /// Discards what was written since the last commit and puts every source
    /// back at the last committed offsets.
    async fn rewind(&mut self, state: &mut LoopState) -> Result<()> {
        self.abort_sinks().await;
        let first = state.uncommitted.first().map(|u| u.epoch);
        state.uncommitted.clear();
        for (name, src) in self.sources.iter_mut().filter(|(_, s)| !s.lookup) {
            let at = state
                .committed_positions
                .get(name)
                .cloned()
                .unwrap_or(Value::Null);
            if at.is_null() {
                src.source.restart().await?;
            } else {
                src.source.resume(&at).await?;
            }
        }
        state.positions = state.committed_positions.clone();
        if let Some(f) = first {
            state.done = state.done.saturating_sub(state.epoch - f);
            state.epoch = f;
        }
        Ok(())
    }

    async fn abort_sinks(&self) {
        for s in self.sinks.values() {
            s.sink.abort().await;
        }
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
                if let Some(s) = slices
                    .get(name)
                    .or_else(|| lookups.get(name).and_then(|s| s.as_ref()))
                {
                    if !s.uris.is_empty() {
                        p.uris = s.uris.clone();
                    }
                } else {
                    p.uris.clear();
                }
                Some(p)
            })
            .collect();
        Provenance {
            pipeline: self.spec.id(),
            sources: entries,
        }
    }

    fn components(&self, acc: &BTreeMap<(u8, String), Accumulated>) -> Vec<ComponentStats> {
        let mut out: Vec<ComponentStats> = Vec::new();
        let rows_out =
            |role: u8, name: &str| acc.get(&(role, name.to_string())).map_or(0, |a| a.rows);
        let out_of = |name: &str| match self.graph.kinds.get(name) {
            Some(NodeKind::Source) => rows_out(0, name),
            _ => rows_out(1, name),
        };
        for (name, src) in &self.sources {
            let a = acc.get(&(0, name.clone()));
            let mut s = stats(name, "source", src.source.kind(), 0, a);
            // rows read = rows passed on + rows given up on
            s.rows_in = s.rows_out + s.rows_skipped + s.rows_dead_lettered;
            out.push(s);
        }
        for name in &self.graph.stage_order {
            let kind = self.spec.stages.get(name).map_or("sql", |s| s.kind());
            let rows_in = self
                .graph
                .inputs
                .get(name)
                .into_iter()
                .flatten()
                .map(|i| out_of(i))
                .sum();
            let mut s = stats(name, "stage", kind, rows_in, acc.get(&(1, name.clone())));
            if let Some(rt) = self.externals.get(name) {
                s.rows_skipped += rt.rows_skipped.load(Ordering::Relaxed);
                s.process_starts = rt.starts.load(Ordering::Relaxed);
                s.batch_latency_p50_us = rt.latency_quantile_us(0.5).unwrap_or(0) as u64;
                s.batch_latency_p99_us = rt.latency_quantile_us(0.99).unwrap_or(0) as u64;
            }
            out.push(s);
        }
        for (name, s) in &self.sinks {
            // the dead-letter sink has no input in the graph: its rows come from everywhere
            let rows_in = self
                .spec
                .sinks
                .get(name)
                .map_or_else(|| acc.values().map(|a| a.dead).sum(), |c| out_of(c.input()));
            out.push(stats(
                name,
                "sink",
                s.sink.kind(),
                rows_in,
                acc.get(&(2, name.clone())),
            ));
        }
        out
    }
}

/// What the epoch loop carries.
struct LoopState {
    run_id: String,
    failpoint: Option<Failpoint>,
    lookups: BTreeMap<String, Option<Slice>>,
    acc: BTreeMap<(u8, String), Accumulated>,
    latencies: Vec<Duration>,
    uncommitted: Vec<Uncommitted>,
    positions: BTreeMap<String, Value>,
    committed_positions: BTreeMap<String, Value>,
    epoch: u64,
    done: u64,
    last_commit: Instant,
    recoveries: BTreeMap<String, Recovery>,
}

fn stats(
    name: &str,
    role: &str,
    kind: &str,
    rows_in: u64,
    a: Option<&Accumulated>,
) -> ComponentStats {
    let mut s = ComponentStats {
        name: name.into(),
        role: role.into(),
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

/// Adds the counters of every stage border in an executed plan.
fn collect_stage_metrics(
    plan: &Arc<dyn ExecutionPlan>,
    acc: &mut BTreeMap<(u8, String), Accumulated>,
) {
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
