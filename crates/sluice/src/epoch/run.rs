//! The epoch loop of one run.
//!
//! ```text
//! recover the sinks ─► replay what only some sinks committed ─► resume the sources
//!   loop: next slice of every source ─► bind them to a new epoch ─► plan + write every sink
//!         ─► at a commit point: hand the group of epochs to the committer, go on
//!         ─► when a commit is done: acknowledge the sources
//! ```
//!
//! A commit point comes after every epoch of a bounded pipeline, and every
//! `commit_interval` (default 10 s) of a streaming one, at the end of the
//! input, and on a graceful stop. Up to `epochs_in_flight` epochs are in
//! memory at once: the one being written and those whose commit is under way.
//!
//! A failure that may pass (a stage crashed, a store hiccup) lets the
//! commits under way finish, discards everything written since the last
//! commit, rewinds the sources to it and tries again; any other failure does
//! the same and ends the run.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use datafusion::catalog::TableProvider;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::physical_plan::ExecutionPlan;
use opentelemetry::{Context, KeyValue};
use serde_json::Value;
use tokio::sync::broadcast;
use tracing::Instrument;

use super::binding::EpochBinding;
use super::committer::{CommitJob, CommitQueue, Committed, Committer, SinkPart};
use super::handle::{RunEvent, RunOptions, StopSignal};
use super::recovery::{self, SinkLog};
use super::stats::Stats;
use crate::commit_log::{SourceOffsets, new_run_id};
use crate::compile::{PipelinePlan, PlannedSink, SinkInput};
use crate::dead_letter;
use crate::error::{Result, RetryHint, SluiceError};
use crate::metrics::{LatencySummary, RunSummary};
use crate::observe::{HttpServer, LivePage, RunMetrics, trace};
use crate::openlineage;
use crate::rollout::control::{RolloutControl, merge_records};
use crate::rollout::{Choice, RolloutRecord};
use crate::sinks::EpochOutput;
use crate::sources::{AnySource, Slice, SliceLimits};
use crate::state::clock::ClockInput;
use crate::state::{EventTimeConfig, SinkState, Snapshot, StateScope};

/// One run of a compiled pipeline; see the module docs.
pub(crate) struct Run {
    plan: Arc<PipelinePlan>,
    sources: BTreeMap<String, Box<dyn AnySource>>,
    options: RunOptions,
    run_id: Arc<str>,
    stop: Arc<StopSignal>,
    events: broadcast::Sender<RunEvent>,
    /// Set when metrics are served.
    metrics: Option<Arc<RunMetrics>>,
    /// Set when the live page is served.
    live: Option<Arc<LivePage>>,
    /// The run's span.
    trace: Context,
    /// The sources whose partitions this worker shares with others
    /// ([`Run::share_logs`]).
    shared: BTreeSet<String>,
    /// The rolled-out stages' choices, guard and status.
    rollout: Option<RolloutControl>,
}

/// How the loop cuts and commits epochs, from `[settings]`.
struct Pace {
    limits: SliceLimits,
    commit_interval: Duration,
    max_retries: u32,
    in_flight: usize,
}

/// The epochs written and not yet handed to the committer.
struct Group {
    first: u64,
    last: u64,
    offsets: BTreeMap<String, SourceOffsets>,
    sinks: BTreeMap<String, SinkPart>,
    read_at: Vec<Instant>,
    stats: Stats,
    /// The last epoch's span: the commit's parent.
    trace: Context,
    /// The rollout choices every epoch of the group ran with (a change of
    /// choice closes the group, so a replay can run it the same way).
    choices: BTreeMap<String, Choice>,
    /// What the rolled-out stages did over the group.
    rollout: BTreeMap<String, RolloutRecord>,
}

/// Which epoch a write is: its number, its commit group (the first epoch
/// of the commit it will be in) and its span.
struct EpochAt {
    number: u64,
    group: u64,
    trace: Context,
}

/// What the loop carries from epoch to epoch.
struct LoopState {
    /// The next epoch's number.
    epoch: u64,
    /// The first epoch after the last commit: where a rewind goes back to.
    after_commit: u64,
    /// The epoch this run's loop started at (after replays).
    loop_start: u64,
    /// Where each source is reading, and where the last commit left it.
    reading: BTreeMap<String, Value>,
    committed: BTreeMap<String, Value>,
    /// Lookup sources, read whole once.
    lookups: BTreeMap<String, Option<Slice<Value>>>,
    group: Option<Group>,
    queue: CommitQueue,
    stats: Stats,
    latencies: Vec<Duration>,
    last_commit: Instant,
    retries_left: u32,
    /// Sinks with a commit log; the others deliver rows as they are written.
    durable: BTreeSet<String>,
    /// Each sink's state after the last epoch written, and after the last
    /// commit (where a rewind goes back to).
    state: BTreeMap<String, SinkState>,
    committed_state: BTreeMap<String, SinkState>,
    /// When each event-time source last read a row (for `idle_timeout`).
    last_read: BTreeMap<String, Instant>,
    /// The epoch that closes every window at the end of bounded input ran.
    flushed: bool,
}

/// What one round of reading gave.
struct Read {
    /// The slices with rows to read.
    slices: BTreeMap<String, Slice<Value>>,
    /// Every source's offsets.
    offsets: BTreeMap<String, SourceOffsets>,
    /// Whether every bounded source is exhausted.
    exhausted: bool,
    /// Bounded sources read to their end.
    ended: BTreeSet<String>,
}

/// One sink's work in an epoch: its plan, the part it writes, the task
/// context the plan runs in, and the state scope its operators share.
type SinkJob<'a> = (
    &'a PlannedSink,
    Arc<dyn ExecutionPlan>,
    SinkPart,
    Arc<datafusion::execution::TaskContext>,
    Arc<StateScope>,
);

/// What one step of the loop decided.
enum Step {
    Continue,
    Done,
}

impl Run {
    pub(super) fn new(
        plan: Arc<PipelinePlan>,
        sources: BTreeMap<String, Box<dyn AnySource>>,
        options: RunOptions,
        stop: Arc<StopSignal>,
        events: broadcast::Sender<RunEvent>,
    ) -> Self {
        Self {
            rollout: RolloutControl::new(&plan),
            plan,
            sources,
            options,
            run_id: new_run_id().into(),
            stop,
            events,
            metrics: None,
            live: None,
            trace: Context::new(),
            shared: BTreeSet::new(),
        }
    }

    /// Runs until the bounded sources are exhausted, `max_epochs` is
    /// reached, the streaming sources go idle (`exit_when_idle`) or a stop
    /// is requested; commits everything written before returning.
    pub(super) async fn run(mut self) -> Result<RunSummary> {
        let servers = match self.export_spans() {
            Ok(()) => self.serve().await,
            Err(e) => Err(e),
        };
        let servers = match servers {
            Ok(s) => s,
            Err(e) => {
                Self::shutdown_stages(&self.plan).await;
                return Err(e);
            }
        };
        self.trace = trace::start(
            "run",
            &Context::new(),
            vec![
                KeyValue::new("sluice.pipeline", self.plan.spec.id()),
                KeyValue::new("sluice.run_id", self.run_id.to_string()),
            ],
            None,
        );
        let lineage = openlineage::Emitter::for_plan(&self.plan);
        if let Some(l) = &lineage {
            l.emit("START", None).await;
        }
        // every log line of the run names its trace
        let in_trace = trace::log_span(&self.trace);
        let result = self.run_epochs(lineage.as_ref()).instrument(in_trace).await;
        // stopped stages export their last spans as they go
        Self::shutdown_stages(&self.plan).await;
        trace::end(
            &self.trace,
            result.as_ref().err().map(|e| e as &dyn std::error::Error),
        );
        trace::flush().await;
        match &result {
            Ok(summary) => {
                self.emit(RunEvent::Finished {
                    epochs: summary.epochs,
                });
                if let Some(l) = &lineage {
                    l.emit("COMPLETE", None).await;
                }
            }
            Err(e) => {
                self.emit(RunEvent::Failed {
                    error: e.to_string(),
                });
                if let Some(l) = &lineage {
                    l.emit("FAIL", Some(&e.to_string())).await;
                }
            }
        }
        if let Some(live) = &self.live {
            live.finished(result.as_ref().map_err(ToString::to_string));
        }
        if !servers.is_empty() {
            // the last scrape of a short run sees its final counts: the
            // endpoints stay up after the summary is out
            let linger = self.plan.spec.observability.metrics_linger;
            tokio::spawn(async move {
                tokio::time::sleep(linger.map_or(Duration::ZERO, |d| d.0)).await;
                drop(servers);
            });
        }
        result
    }

    async fn shutdown_stages(plan: &PipelinePlan) {
        for rt in plan.externals.values() {
            if let Some(breach) = rt.timing_verdict() {
                tracing::warn!("{breach}");
            }
            rt.shutdown().await;
        }
    }

    /// Starts exporting spans when `[observability]` (or the environment)
    /// names an OTLP endpoint.
    fn export_spans(&self) -> Result<()> {
        trace::export(&self.plan.spec.observability).map_err(|e| {
            SluiceError::spec(
                self.plan
                    .spec
                    .issue("observability.otlp", e)
                    .with_help("an OTLP/gRPC endpoint, e.g. http://127.0.0.1:4317 (or set OTEL_EXPORTER_OTLP_ENDPOINT)"),
            )
        })
    }

    /// Starts serving metrics and the live page when the spec or the
    /// options ask for them.
    async fn serve(&mut self) -> Result<Vec<HttpServer>> {
        let config = &self.plan.spec.observability;
        let mut servers = Vec::new();
        let cannot = |key: &str, what: &str, addr: &str, e: std::io::Error, example: &str| {
            SluiceError::spec(
                self.plan
                    .spec
                    .issue(format!("observability.{key}"), format!("cannot serve {what} on {addr}: {e}"))
                    .with_help(format!("use a free `host:port`, e.g. {example} (loopback, or a network only its users reach)")),
            )
        };
        if let Some(addr) = self
            .options
            .metrics
            .clone()
            .or_else(|| config.metrics.clone())
        {
            let metrics = Arc::new(RunMetrics::new(&self.plan.spec.id(), config));
            let server = crate::observe::serve(&addr, Arc::clone(&metrics), Arc::clone(&self.plan))
                .await
                .map_err(|e| cannot("metrics", "metrics", &addr, e, "127.0.0.1:9464"))?;
            tracing::info!(addr = %server.addr(), "serving metrics at /metrics");
            self.metrics = Some(metrics);
            servers.push(server);
        }
        if let Some(addr) = self.options.ui.clone().or_else(|| config.ui.clone()) {
            let live = Arc::new(LivePage::new(&self.plan, &self.run_id));
            let server = Arc::clone(&live)
                .serve(&addr)
                .await
                .map_err(|e| cannot("ui", "the live page", &addr, e, "127.0.0.1:8080"))?;
            tracing::info!(addr = %server.addr(), "serving the live page");
            self.live = Some(live);
            servers.push(server);
        }
        Ok(servers)
    }

    fn emit(&self, event: RunEvent) {
        // no subscriber is fine: events are for whoever listens
        let _ = self.events.send(event);
    }

    fn pace(&self) -> Pace {
        let streaming = self
            .sources
            .iter()
            .any(|(n, s)| !self.is_lookup(n) && !s.is_bounded());
        let settings = &self.plan.spec.settings;
        let e = &settings.epoch;
        Pace {
            limits: SliceLimits {
                max_rows: e.max_rows.or(streaming.then_some(1_000_000)),
                max_bytes: e.max_bytes.map(|b| b.0),
                max_latency: Some(e.max_latency.map(|d| d.0).unwrap_or(Duration::from_secs(1))),
            },
            commit_interval: settings
                .commit_interval
                .map(|d| d.0)
                .unwrap_or(if streaming {
                    Duration::from_secs(10)
                } else {
                    Duration::ZERO
                }),
            max_retries: self
                .plan
                .externals
                .values()
                .map(|r| r.config.retries)
                .max()
                .unwrap_or(0)
                .max(settings.retries.unwrap_or(0)),
            in_flight: settings.epochs_in_flight.unwrap_or(2).max(1),
        }
    }

    fn is_lookup(&self, source: &str) -> bool {
        self.plan.is_lookup(source)
    }

    async fn run_epochs(&mut self, lineage: Option<&openlineage::Emitter>) -> Result<RunSummary> {
        let started = Instant::now();
        let pace = self.pace();

        // 0. workers of a consumer group share the sinks' logs
        let shared = self.share_logs()?;
        self.shared = shared.clone();

        // 1. what the sinks hold
        let mut logs: BTreeMap<String, SinkLog> = BTreeMap::new();
        let mut removed_files = Vec::new();
        for (name, s) in &self.plan.sinks {
            let r = s.sink.recover().await?;
            let url = s.sink.url();
            removed_files.extend(
                r.removed_files
                    .iter()
                    .map(|f| format!("{}/{f}", url.trim_end_matches('/'))),
            );
            logs.insert(name.clone(), r.log);
        }
        let mut resume = recovery::plan(&logs).map_err(SluiceError::Recovery)?;
        for (name, at) in recovery::shared_positions(&logs, &shared) {
            resume.resume_at.insert(name, at);
        }
        let committer = Arc::new(Committer::new(
            Arc::clone(&self.plan),
            Arc::clone(&self.run_id),
        ));
        // (a shared log's newest commit holds another worker's clocks)
        let states = if shared.is_empty() {
            load_states(&self.plan, &logs, &committer).await?
        } else {
            BTreeMap::new()
        };
        let first_epoch = resume
            .replays
            .first()
            .map_or(resume.next_epoch, |r| r.range.first);
        self.emit(RunEvent::Started {
            run_id: self.run_id.to_string(),
            first_epoch,
        });

        let mut st = LoopState {
            epoch: resume.next_epoch,
            after_commit: resume.next_epoch,
            loop_start: resume.next_epoch,
            reading: resume.resume_at.clone(),
            committed: resume.resume_at.clone(),
            lookups: BTreeMap::new(),
            group: None,
            queue: CommitQueue::new(Arc::clone(&committer), pace.in_flight - 1),
            stats: Stats::default(),
            latencies: Vec::new(),
            last_commit: Instant::now(),
            retries_left: pace.max_retries,
            durable: logs
                .iter()
                .filter(|(_, l)| l.durable)
                .map(|(n, _)| n.clone())
                .collect(),
            committed_state: states.clone(),
            state: states,
            last_read: BTreeMap::new(),
            flushed: false,
        };

        // 2. ranges only some sinks committed: written to those, one commit each
        for replay in &resume.replays {
            self.load_lookups(&mut st).await?;
            self.replay(&mut st, replay, &pace, lineage).await?;
        }
        // the replays re-committed older ranges: the newest commit still rules
        st.after_commit = st.loop_start;
        st.committed = resume.resume_at.clone();
        st.reading = resume.resume_at.clone();

        // 3. every source where the newest commit left it
        let plan = Arc::clone(&self.plan);
        for (name, src) in self.sources.iter_mut() {
            if let Some(at) = resume.resume_at.get(name)
                && !plan.is_lookup(name)
            {
                src.resume_json(at).await.map_err(|e| e.in_source(name))?;
            }
        }
        let expected: u64 = self
            .sources
            .iter()
            .filter(|(n, _)| !self.is_lookup(n))
            .filter_map(|(_, s)| s.estimated_remaining_rows())
            .sum();
        self.plan
            .progress
            .rows_expected
            .store(expected, Ordering::Relaxed);

        // 4. the epoch loop
        loop {
            let failure = match self.step(&mut st, &pace, lineage).await {
                Ok(Step::Continue) => continue,
                Ok(Step::Done) => match self.finish(&mut st, lineage).await {
                    Ok(()) => break,
                    Err(e) => e,
                },
                Err(e) => e,
            };
            // the commits under way finish first: what they commit stays
            let failure = self.settle(&mut st, lineage).await.err().unwrap_or(failure);
            st.queue.restart_chain();
            self.abort_sinks().await;
            if failure.retry_hint() == RetryHint::Rewind && !shared.is_empty() {
                // partitions moved between the workers: not a failure
                tracing::info!(epoch = st.after_commit, reason = %failure, "rewinding to the shared log");
                self.rewind_to_log(&mut st, &shared).await?;
                continue;
            }
            let retry = failure.retry_hint() == RetryHint::WithBackoff && st.retries_left > 0;
            if let Some(m) = &self.metrics {
                m.epoch_failed(retry);
            }
            if let Some(l) = &self.live {
                l.epoch_failed();
            }
            if retry {
                st.retries_left -= 1;
                let attempt = pace.max_retries - st.retries_left;
                let delay = Duration::from_millis(200 * 2u64.pow(attempt.min(5)));
                tracing::warn!(epoch = st.after_commit, attempt, error = %failure, "epoch failed; rewinding to the last commit and retrying in {delay:?}");
                self.emit(RunEvent::Retrying {
                    epoch: st.after_commit,
                    attempt,
                    error: failure.to_string(),
                    delay,
                });
                self.rewind(&mut st).await?;
                tokio::time::sleep(delay).await;
                continue;
            }
            return Err(failure);
        }

        Ok(RunSummary {
            pipeline: self.plan.spec.id(),
            run_id: self.run_id.to_string(),
            epochs: st.epoch - st.loop_start,
            first_epoch,
            removed_files,
            components: st.stats.components(&self.plan),
            wall: started.elapsed(),
            outputs: self
                .plan
                .sinks
                .iter()
                .map(|(n, s)| (n.clone(), s.sink.url()))
                .collect(),
            latency: LatencySummary::of(&mut st.latencies),
        })
    }

    /// Reads, writes and maybe commits one epoch.
    async fn step(
        &mut self,
        st: &mut LoopState,
        pace: &Pace,
        lineage: Option<&openlineage::Emitter>,
    ) -> Result<Step> {
        while let Some(done) = st.queue.next_ready().await {
            self.committed(st, done?, lineage).await?;
        }
        let done = st.epoch - st.loop_start;
        if self.options.max_epochs.is_some_and(|m| done >= m) || self.stop.requested() {
            return Ok(Step::Done);
        }
        self.load_lookups(st).await?;
        let read_started = SystemTime::now();
        let read = self.next_slices(st, &pace.limits).await?;
        let Read {
            slices,
            offsets,
            exhausted,
            ended,
        } = read;
        let read_done = SystemTime::now();
        // (counting a folder's backlog walks its files: only when shown)
        let shown = self.metrics.is_some() || self.live.is_some();
        for (name, src) in self.sources.iter().filter(|_| shown) {
            if let Some(files) = src.backlog() {
                if let Some(m) = &self.metrics {
                    m.backlog(name, src.kind(), files);
                }
                if let Some(l) = &self.live {
                    l.backlog(name, files);
                }
            }
        }
        let flush = slices.is_empty()
            && exhausted
            && !st.flushed
            && st.state.values().any(SinkState::holds_rows);
        if slices.is_empty() && !flush {
            if exhausted {
                return Ok(Step::Done);
            }
            // a streaming source had nothing new this epoch
            if st.group.is_some() && st.last_commit.elapsed() >= pace.commit_interval {
                self.close_group(st, lineage).await?;
            }
            return Ok(if self.options.exit_when_idle {
                Step::Done
            } else {
                Step::Continue
            });
        }
        let choices = match self.rollout.as_mut() {
            Some(r) => r.refresh().await.clone(),
            None => BTreeMap::new(),
        };
        if st.group.as_ref().is_some_and(|g| g.choices != choices) {
            // a flag changed: what ran the old way commits on its own
            self.close_group(st, lineage).await?;
        }
        let sinks: Vec<String> = self.plan.sinks.keys().cloned().collect();
        let epoch = st.epoch;
        let first = st.group.as_ref().map_or(epoch, |g| g.first);
        // the epoch's span starts where its read did; an idle read makes none
        let epoch_cx = trace::start(
            "epoch",
            &self.trace,
            vec![KeyValue::new("sluice.epoch", epoch as i64)],
            Some(read_started),
        );
        let read_cx = trace::start("source read", &epoch_cx, Vec::new(), Some(read_started));
        trace::end_at(&read_cx, read_done);
        let at = EpochAt {
            number: epoch,
            group: first,
            trace: epoch_cx,
        };
        if flush {
            // the end of bounded input: the watermark goes to +∞ and every
            // window still open is emitted, in an epoch of its own
            st.flushed = true;
            tracing::info!(epoch, "end of input: closing every window");
        }
        let clocks = self.clock_inputs(st, &slices, &ended, flush);
        let t = Instant::now();
        let written = self
            .write_epoch(st, &at, &slices, offsets, &sinks, &choices, &clocks, true)
            .instrument(trace::log_span(&at.trace))
            .await;
        trace::end(
            &at.trace,
            written.as_ref().err().map(|e| e as &dyn std::error::Error),
        );
        written?;
        if let Some(m) = &self.metrics {
            m.epoch_written(t.elapsed());
        }
        if let Some(r) = self.rollout.as_mut() {
            for (stage, reason) in r.guard().await {
                self.emit(RunEvent::RolledBack {
                    stage,
                    epoch,
                    reason,
                });
            }
        }
        st.epoch += 1;
        st.retries_left = pace.max_retries;
        if st.last_commit.elapsed() >= pace.commit_interval {
            self.close_group(st, lineage).await?;
        }
        Ok(Step::Continue)
    }

    /// Commits what is left and waits for every commit.
    async fn finish(
        &mut self,
        st: &mut LoopState,
        lineage: Option<&openlineage::Emitter>,
    ) -> Result<()> {
        if st.group.is_some() {
            self.close_group(st, lineage).await?;
        }
        self.settle(st, lineage).await
    }

    /// Waits for every commit under way; returns the first failure, after
    /// which the later commits are given up.
    async fn settle(
        &mut self,
        st: &mut LoopState,
        lineage: Option<&openlineage::Emitter>,
    ) -> Result<()> {
        let mut failure = None;
        while let Some(done) = st.queue.next().await {
            match (done, &failure) {
                (Ok(c), None) => {
                    if let Err(e) = self.committed(st, c, lineage).await {
                        failure = Some(e);
                    }
                }
                (Err(e), None) => failure = Some(e),
                // after a failure nothing later is committed; its error says no more
                (_, Some(_)) => {}
            }
        }
        failure.map_or(Ok(()), Err)
    }

    /// Hands the group of written epochs to the committer; waits while the
    /// commits under way fill `epochs_in_flight`.
    async fn close_group(
        &mut self,
        st: &mut LoopState,
        lineage: Option<&openlineage::Emitter>,
    ) -> Result<()> {
        let Some(g) = st.group.take() else {
            return Ok(());
        };
        st.queue.push(CommitJob {
            first: g.first,
            last: g.last,
            offsets: g.offsets,
            sinks: g.sinks,
            read_at: g.read_at,
            stats: g.stats,
            trace: g.trace,
            rollout: g.rollout,
        });
        st.last_commit = Instant::now();
        while st.queue.is_full() {
            let Some(done) = st.queue.next().await else {
                break;
            };
            self.committed(st, done?, lineage).await?;
        }
        Ok(())
    }

    /// A commit is done: the sources may release its input.
    async fn committed(
        &mut self,
        st: &mut LoopState,
        c: Committed,
        lineage: Option<&openlineage::Emitter>,
    ) -> Result<()> {
        for (name, o) in &c.offsets {
            if let Some(src) = self.sources.get_mut(name) {
                src.ack_json(&o.end).await.map_err(|e| e.in_source(name))?;
            }
            st.committed.insert(name.clone(), o.end.clone());
        }
        st.after_commit = c.last + 1;
        if !self.shared.is_empty()
            && let Some(op) = c.states.values().flat_map(|s| s.operators.keys()).next()
        {
            // (dedupe and custom operators keep state without event time)
            return Err(SluiceError::Plan {
                stage: op.clone(),
                file: None,
                message: format!(
                    "operator `{op}` keeps state between epochs, which workers sharing a consumer group's partitions cannot split; run one worker (`assignment = \"all\"`)"
                ),
            });
        }
        st.committed_state.extend(c.states);
        st.stats.add(&c.stats);
        if self.metrics.is_some() || self.live.is_some() {
            let components = st.stats.components(&self.plan);
            if let Some(m) = &self.metrics {
                m.components(&components);
                m.row_errors(&st.stats.row_errors(&self.plan));
                m.committed(c.last, c.took, &c.latencies);
            }
            if let Some(l) = &self.live {
                l.committed(
                    c.first,
                    c.last,
                    c.took,
                    &c.latencies,
                    &c.rows,
                    &c.offsets,
                    components,
                );
            }
        }
        st.latencies.extend(c.latencies);
        if let Some(r) = &self.rollout {
            let status = r.write_status(&self.plan, c.last).await;
            if let Some(m) = &self.metrics {
                m.rollout(&status);
            }
        }
        tracing::info!(first_epoch = c.first, epoch = c.last, "committed");
        self.emit(RunEvent::Committed {
            first_epoch: c.first,
            epoch: c.last,
            rows: c.rows,
            offsets: c.offsets,
        });
        if let Some(l) = lineage {
            l.emit("RUNNING", None).await;
        }
        Ok(())
    }

    /// Writes a range some sinks committed to the sinks that lack it, from
    /// the offsets recorded, and commits it; a failure that may pass is
    /// retried on the same slices.
    async fn replay(
        &mut self,
        st: &mut LoopState,
        replay: &recovery::Replay,
        pace: &Pace,
        lineage: Option<&openlineage::Emitter>,
    ) -> Result<()> {
        let range = &replay.range;
        let mut slices = BTreeMap::new();
        let plan = Arc::clone(&self.plan);
        for (name, src) in self.sources.iter_mut() {
            if let Some(o) = range.offsets.get(name).filter(|o| o.start != o.end) {
                if plan.is_lookup(name) {
                    continue;
                }
                let slice = src
                    .replay_json(&o.start, &o.end)
                    .await
                    .map_err(|e| e.in_source(name))?;
                slices.insert(name.clone(), slice);
            }
        }
        // the sinks that lack the range; a sink without a log is not written twice
        let sinks: Vec<String> = replay.sinks.iter().cloned().collect();
        let choices = self
            .rollout
            .as_ref()
            .map(|r| r.replay_choices(&range.rollout))
            .transpose()?
            .unwrap_or_default();
        // the sources' clocks as the sinks that hold the range recorded them
        let clocks: BTreeMap<String, ClockInput> = self
            .plan
            .sources
            .iter()
            .filter_map(|(name, p)| {
                let t = p.event_time.as_ref()?;
                let ended = range.state.clocks.get(name).is_some_and(|c| c.ended);
                Some((name.clone(), clock_input(t, false, ended)))
            })
            .collect();
        let mut attempt = 0;
        loop {
            let at = EpochAt {
                number: range.last,
                group: range.first,
                trace: trace::start(
                    "epoch",
                    &self.trace,
                    vec![
                        KeyValue::new("sluice.epoch", range.last as i64),
                        KeyValue::new("sluice.replay", true),
                    ],
                    None,
                ),
            };
            let written = self
                .write_epoch(
                    st,
                    &at,
                    &slices,
                    range.offsets.clone(),
                    &sinks,
                    &choices,
                    &clocks,
                    false,
                )
                .instrument(trace::log_span(&at.trace))
                .await;
            trace::end(
                &at.trace,
                written.as_ref().err().map(|e| e as &dyn std::error::Error),
            );
            let result = match written {
                Ok(()) => self.finish(st, lineage).await,
                Err(e) => Err(e),
            };
            match result {
                Ok(()) => return Ok(()),
                Err(e)
                    if e.retry_hint() == RetryHint::WithBackoff && attempt < pace.max_retries =>
                {
                    attempt += 1;
                    st.group = None;
                    st.state = st.committed_state.clone();
                    self.abort_sinks().await;
                    tokio::time::sleep(Duration::from_millis(200 * 2u64.pow(attempt.min(5)))).await;
                }
                Err(e) => {
                    st.group = None;
                    self.abort_sinks().await;
                    return Err(e);
                }
            }
        }
    }

    /// One slice per source (lookups are read once, in [`Run::load_lookups`]).
    async fn next_slices(&mut self, st: &mut LoopState, limits: &SliceLimits) -> Result<Read> {
        let mut read = Read {
            slices: BTreeMap::new(),
            offsets: BTreeMap::new(),
            exhausted: true,
            ended: BTreeSet::new(),
        };
        let plan = Arc::clone(&self.plan);
        for (name, src) in self.sources.iter_mut() {
            if plan.is_lookup(name) {
                continue;
            }
            let here = st.reading.get(name).cloned().unwrap_or(Value::Null);
            match src
                .next_slice_json(limits)
                .await
                .map_err(|e| e.in_source(name))?
            {
                Some(s) => {
                    read.exhausted = false;
                    read.offsets.insert(
                        name.clone(),
                        SourceOffsets {
                            start: s.start.clone(),
                            end: s.end.clone(),
                        },
                    );
                    if s.start != s.end {
                        st.reading.insert(name.clone(), s.end.clone());
                        st.last_read.insert(name.clone(), Instant::now());
                        read.slices.insert(name.clone(), s);
                    }
                }
                None => {
                    if src.is_bounded() {
                        read.ended.insert(name.clone());
                    }
                    read.offsets.insert(
                        name.clone(),
                        SourceOffsets {
                            start: here.clone(),
                            end: here,
                        },
                    );
                }
            }
        }
        Ok(read)
    }

    /// What this epoch tells every event-time source's clock: idle when it
    /// read nothing for its `idle_timeout`, ended when read to its end (or
    /// `flush`: the epoch closing every window).
    fn clock_inputs(
        &self,
        st: &mut LoopState,
        slices: &BTreeMap<String, Slice<Value>>,
        ended: &BTreeSet<String>,
        flush: bool,
    ) -> BTreeMap<String, ClockInput> {
        let mut out = BTreeMap::new();
        for (name, p) in &self.plan.sources {
            let Some(t) = &p.event_time else { continue };
            let quiet = st
                .last_read
                .entry(name.clone())
                .or_insert_with(Instant::now)
                .elapsed();
            let idle =
                !slices.contains_key(name) && t.idle_timeout.is_some_and(|limit| quiet >= limit);
            out.insert(
                name.clone(),
                clock_input(t, idle, flush || ended.contains(name)),
            );
        }
        out
    }

    /// Reads every lookup source whole, once per run.
    async fn load_lookups(&mut self, st: &mut LoopState) -> Result<()> {
        let plan = Arc::clone(&self.plan);
        for (name, src) in self.sources.iter_mut() {
            let lookup = plan.is_lookup(name);
            if lookup && !st.lookups.contains_key(name) {
                let whole = src
                    .next_slice_json(&SliceLimits::default())
                    .await
                    .map_err(|e| e.in_source(name))?;
                st.lookups.insert(name.clone(), whole);
            }
        }
        Ok(())
    }

    /// Plans and writes epoch `epoch` (of the commit group starting at
    /// `first`) to `sinks` with the rollout `choices`, then its dead letters
    /// and shadow diffs; adds it to the group. `for_guard`: the epoch is
    /// new (not a replay), so the rollout guard judges it.
    #[allow(clippy::too_many_arguments)]
    async fn write_epoch(
        &mut self,
        st: &mut LoopState,
        at: &EpochAt,
        slices: &BTreeMap<String, Slice<Value>>,
        offsets: BTreeMap<String, SourceOffsets>,
        sinks: &[String],
        choices: &BTreeMap<String, Choice>,
        clocks: &BTreeMap<String, ClockInput>,
        for_guard: bool,
    ) -> Result<()> {
        let (epoch, first) = (at.number, at.group);
        let read_at = Instant::now();
        let mut tables: BTreeMap<String, Arc<dyn TableProvider>> = BTreeMap::new();
        let mut uris: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let lookups = st
            .lookups
            .iter()
            .filter_map(|(n, s)| Some((n, s.as_ref()?)));
        for (name, slice) in slices.iter().chain(lookups) {
            tables.insert(name.clone(), Arc::clone(&slice.table));
            uris.insert(name.clone(), slice.uris.clone());
        }
        let binding = Arc::new(
            EpochBinding::new(epoch, tables, at.trace.clone()).with_rollout(choices.clone()),
        );
        let state = binding.bind(&self.plan.session.state());
        let task = state.task_ctx();

        let mut jobs: Vec<SinkJob<'_>> = Vec::new();
        let mut dead_letter_sink = None;
        let mut diff_sinks = Vec::new();
        for name in sinks {
            let Some(s) = self.plan.sinks.get(name) else {
                continue;
            };
            let provenance = self.plan.provenance(&s.sources, &uris);
            let part = SinkPart {
                schema: s.output_schema(&provenance, choices)?,
                provenance,
                state: None,
            };
            match s.input {
                SinkInput::Plan(_) => {
                    // every sink runs its own plan, with its own state
                    let scope = Arc::new(StateScope::new(
                        name,
                        epoch,
                        st.state.get(name).cloned().unwrap_or_default(),
                        clocks.clone(),
                    ));
                    let sink_state = scope.bind(&state);
                    let plan = self.plan.physical_plan(s, &sink_state).await?;
                    jobs.push((s, plan, part, sink_state.task_ctx(), scope));
                }
                SinkInput::DeadLetters => dead_letter_sink = Some((s, part)),
                SinkInput::RolloutDiff(ref stage) => diff_sinks.push((s, part, stage.clone())),
            }
        }
        let mut stats = Stats::default();
        let writes = jobs.iter().map(|(s, plan, part, task, _)| {
            let output = EpochOutput {
                epoch,
                commit_group: first,
                run_id: Arc::clone(&self.run_id),
                plan: Arc::clone(plan),
                task: Arc::clone(task),
                schema: Arc::clone(&part.schema),
                sink: s.id.clone(),
                conform: None,
            };
            let span = trace::start(
                "sink write",
                &at.trace,
                vec![trace::component(s.id.name())],
                None,
            );
            async move {
                let t = Instant::now();
                let r = s.sink.write(output).await;
                trace::end(&span, r.as_ref().err().map(|e| e as &dyn std::error::Error));
                (r, t.elapsed())
            }
        });
        let results = futures::future::join_all(writes).await;
        let mut failure = None;
        for ((s, _, _, _, _), (r, took)) in jobs.iter().zip(results) {
            match r {
                Ok(rows) => {
                    let c = stats.of(s.id.clone());
                    c.wall += took;
                    if !st.durable.contains(s.id.name()) {
                        // nothing to commit: the rows are delivered as they are written
                        c.rows += rows;
                    }
                }
                Err(e) => failure = failure.or(Some(e)),
            }
        }
        if let Some(e) = failure {
            return Err(e);
        }
        let plans: Vec<Arc<dyn ExecutionPlan>> =
            jobs.iter().map(|(_, p, _, _, _)| Arc::clone(p)).collect();
        stats.add_stage_borders(&plans);

        let mut letters = binding.dead_letters().take();
        let (records, mut samples) = match self.rollout.as_mut() {
            Some(r) => {
                let tallies = binding.rollout().take();
                r.observe(&self.plan, epoch, choices, tallies, &mut letters, for_guard)
                    .await?
            }
            None => Default::default(),
        };
        stats.add_dead_letters(&letters);
        if let Some(l) = &self.live {
            l.epoch_written(epoch, &letters);
        }
        let mut written: BTreeMap<String, SinkPart> = BTreeMap::new();
        for (s, _, mut part, _, scope) in jobs {
            let name = s.id.name().to_string();
            let after = scope.finish();
            if !after.is_empty() {
                part.state = Some(after.clone());
                st.state.insert(name.clone(), after);
            }
            written.insert(name, part);
        }
        if let Some((s, part)) = dead_letter_sink {
            let kept: Vec<_> = letters.into_iter().filter(|d| !d.skipped).collect();
            let batch = dead_letter::to_batch(epoch, &kept)
                .map_err(|e| SluiceError::Internal(format!("dead letters: {e}")))?;
            let t = Instant::now();
            write_rows(&self.run_id, s, &part, batch, epoch, first, &task).await?;
            stats.of(s.id.clone()).wall += t.elapsed();
            written.insert(dead_letter::SINK_NAME.to_string(), part);
        }
        for (s, part, stage) in diff_sinks {
            let rows = samples.remove(&stage).unwrap_or_default();
            let variant = choices.get(&stage).map_or("", |c| c.variant.as_str());
            let batch = crate::rollout::diff::to_batch(epoch, &stage, variant, &rows)
                .map_err(|e| SluiceError::Internal(format!("shadow diff of `{stage}`: {e}")))?;
            let t = Instant::now();
            write_rows(&self.run_id, s, &part, batch, epoch, first, &task).await?;
            stats.of(s.id.clone()).wall += t.elapsed();
            written.insert(s.id.name().to_string(), part);
        }

        let group = st.group.get_or_insert_with(|| Group {
            first,
            last: epoch,
            offsets: BTreeMap::new(),
            sinks: BTreeMap::new(),
            read_at: Vec::new(),
            stats: Stats::default(),
            trace: Context::new(),
            choices: choices.clone(),
            rollout: BTreeMap::new(),
        });
        merge_records(&mut group.rollout, records);
        group.last = epoch;
        group.trace = at.trace.clone();
        // offsets over the group: the first epoch's start, the last epoch's end
        for (src, o) in offsets {
            group
                .offsets
                .entry(src)
                .and_modify(|r| r.end = o.end.clone())
                .or_insert(o);
        }
        group.sinks.extend(written);
        group.read_at.push(read_at);
        group.stats.add(&stats);
        Ok(())
    }

    /// Discards what was written since the last commit and puts every
    /// source back at the last committed offsets.
    async fn rewind(&mut self, st: &mut LoopState) -> Result<()> {
        st.group = None;
        let plan = Arc::clone(&self.plan);
        for (name, src) in self.sources.iter_mut() {
            if plan.is_lookup(name) {
                continue;
            }
            let at = st.committed.get(name).cloned().unwrap_or(Value::Null);
            src.resume_json(&at).await.map_err(|e| e.in_source(name))?;
        }
        st.reading = st.committed.clone();
        st.epoch = st.after_commit;
        st.state = st.committed_state.clone();
        Ok(())
    }

    /// The sources whose partitions the workers of a consumer group share
    /// (see [`crate::sources::Source::shares_partitions`]); when there is
    /// one, every sink's log is shared ([`crate::sinks::Sink::share`]).
    /// What sharing cannot keep exactly once is refused: another source
    /// (every worker would read all of it), several sinks (a worker could
    /// commit to one and lose the partition before the other), event time
    /// (each worker's clock sees only its partitions).
    fn share_logs(&self) -> Result<BTreeSet<String>> {
        let shared: BTreeSet<String> = self
            .sources
            .iter()
            .filter(|(n, s)| !self.is_lookup(n) && s.shares_partitions())
            .map(|(n, _)| n.clone())
            .collect();
        let Some(first) = shared.first() else {
            return Ok(shared);
        };
        let refuse = |key: String, m: String| {
            SluiceError::spec(self.plan.spec.issue(key, m).with_help(
                "run one worker (`assignment = \"all\"`), or split the pipeline so that the shared Kafka source feeds one sink",
            ))
        };
        let key = format!("sources.{first}.assignment");
        if let Some((other, _)) = self
            .sources
            .iter()
            .find(|(n, _)| !self.is_lookup(n) && !shared.contains(*n))
        {
            return Err(refuse(
                key,
                format!(
                    "with `assignment = \"group\"`, source `{other}` would be read whole by every worker; a pipeline sharing a consumer group's partitions reads nothing else (lookups aside)"
                ),
            ));
        }
        if self.plan.sinks.len() != 1 {
            return Err(refuse(
                key,
                format!(
                    "with `assignment = \"group\"`, a pipeline has one sink (this one has {}: {}); `[dead_letter]` counts as one, use `on_error = \"skip\"` or `\"fail\"`",
                    self.plan.sinks.len(),
                    self.plan
                        .sinks
                        .keys()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        if let Some(n) = shared.iter().find(|n| {
            self.plan
                .sources
                .get(*n)
                .is_some_and(|s| s.event_time.is_some())
        }) {
            return Err(refuse(format!("sources.{n}.event_time"), "with `assignment = \"group\"`, event time (and the windows it closes) is not supported: each worker's clock would see only its own partitions".to_string()));
        }
        if let Some((n, _)) = self.plan.externals.iter().find(|(_, rt)| {
            rt.manifest.stateful && rt.manifest.protocol == sluice_flight::version::V1_1
        }) {
            return Err(refuse(format!("stages.{n}"), "with `assignment = \"group\"`, a stateful external stage is not supported: its committed state is per worker, and a partition moving to another worker would leave it behind".to_string()));
        }
        for s in self.plan.sinks.values() {
            s.sink.share(&shared, &self.run_id)?;
        }
        Ok(shared)
    }

    /// After a rebalance or a lost race for a partition: reads the shared
    /// log again and resumes every shared source at its positions.
    async fn rewind_to_log(&mut self, st: &mut LoopState, shared: &BTreeSet<String>) -> Result<()> {
        let mut logs = BTreeMap::new();
        for (name, s) in &self.plan.sinks {
            logs.insert(name.clone(), s.sink.recover().await?.log);
        }
        for name in shared {
            st.committed.remove(name);
        }
        st.committed
            .extend(recovery::shared_positions(&logs, shared));
        self.rewind(st).await
    }

    async fn abort_sinks(&mut self) {
        for s in self.plan.sinks.values() {
            s.sink.abort().await;
        }
    }
}

/// Writes `batch`, rows the loop made itself (dead letters, a diff
/// sample), to sink `s` for epoch `epoch`.
#[allow(clippy::too_many_arguments)]
async fn write_rows(
    run_id: &Arc<str>,
    s: &PlannedSink,
    part: &SinkPart,
    batch: datafusion::arrow::array::RecordBatch,
    epoch: u64,
    first: u64,
    task: &Arc<datafusion::execution::TaskContext>,
) -> Result<()> {
    let schema = batch.schema();
    let plan = MemorySourceConfig::try_new_exec(&[vec![batch]], schema, None)
        .map_err(|e| SluiceError::Internal(format!("{}: {e}", s.id)))?;
    s.sink
        .write(EpochOutput {
            epoch,
            commit_group: first,
            run_id: Arc::clone(run_id),
            plan,
            task: Arc::clone(task),
            schema: Arc::clone(&part.schema),
            sink: s.id.clone(),
            conform: None,
        })
        .await?;
    Ok(())
}

/// The clock input of a source timed by `t`.
fn clock_input(t: &EventTimeConfig, idle: bool, ended: bool) -> ClockInput {
    ClockInput {
        bound_us: t.bound_us(),
        idle,
        ended,
        late: t.late,
    }
}

/// Reads, for every sink, the state its last commit names, and deletes
/// the snapshot files no last commit names.
async fn load_states(
    plan: &PipelinePlan,
    logs: &BTreeMap<String, SinkLog>,
    committer: &Committer,
) -> Result<BTreeMap<String, SinkState>> {
    let mut out = BTreeMap::new();
    for (name, s) in &plan.sinks {
        let Some(store) = s.sink.state_store() else {
            continue;
        };
        let last = logs
            .get(name)
            .and_then(|l| l.commits.iter().max_by_key(|c| c.last))
            .map(|c| c.state.clone())
            .unwrap_or_default();
        let mut state = SinkState {
            clocks: last.clocks.clone(),
            ..Default::default()
        };
        let mut keep = BTreeSet::new();
        for (op, r) in &last.operators {
            let snapshot = Snapshot::new(store.read(r).await?);
            let _ = snapshot.stored.set(r.clone());
            keep.insert(r.path.clone());
            state.operators.insert(op.clone(), snapshot);
        }
        let removed = store.remove_unreferenced(&keep).await?;
        if !removed.is_empty() {
            tracing::info!(sink = %name, files = removed.len(), "deleted state snapshots no commit names");
        }
        committer.remember_snapshots(name, keep);
        if !state.is_empty() {
            out.insert(name.clone(), state);
        }
    }
    Ok(out)
}
