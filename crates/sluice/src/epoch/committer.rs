//! The committer: owns the commit protocol.
//!
//! A commit covers a group of epochs (`first..=last`). It seals every sink
//! the group wrote (all files closed and on the store), then commits the
//! sinks one by one (each sink's commit is atomic), in epoch order with the
//! commits before it, then hands back what it committed so the sources can
//! be acknowledged. [`CommitQueue`] lets the next epochs be read and written
//! while a commit is under way, up to `settings.epochs_in_flight`.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use datafusion::arrow::datatypes::SchemaRef;
use opentelemetry::KeyValue;
use sluice_contract::Provenance;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::Instrument;

use super::failpoint::{Failpoint, Point};
use super::stats::Stats;
use crate::commit_log::SourceOffsets;
use crate::compile::{PipelinePlan, PlannedSink};
use crate::error::{Result, SluiceError};
use crate::observe::trace;
use crate::sinks::CommitRecord;
use crate::state::{SinkState, StateCommit};

/// What one sink wrote in a group: the provenance and schema of the group's
/// last epoch, which its commit records.
#[derive(Debug, Clone)]
pub(crate) struct SinkPart {
    pub provenance: Provenance,
    pub schema: SchemaRef,
    /// The sink's state after the group's last epoch (`None`: it has none).
    pub state: Option<SinkState>,
}

/// A group of written epochs, to be committed.
#[derive(Debug)]
pub(crate) struct CommitJob {
    /// First epoch of the group (the sinks' commit group).
    pub first: u64,
    /// Last epoch: the commit's number.
    pub last: u64,
    /// Offsets per source: the first epoch's start, the last epoch's end.
    pub offsets: BTreeMap<String, SourceOffsets>,
    /// The sinks the group wrote.
    pub sinks: BTreeMap<String, SinkPart>,
    /// When each epoch's input was read (for read-to-commit latency).
    pub read_at: Vec<Instant>,
    /// What the group's epochs counted; it counts once they are committed.
    pub stats: Stats,
    /// The group's last epoch's span: the commit's parent.
    pub trace: opentelemetry::Context,
    /// How the rolled-out stages ran over the group.
    pub rollout: BTreeMap<String, crate::rollout::RolloutRecord>,
}

/// A commit made.
#[derive(Debug)]
pub(crate) struct Committed {
    pub first: u64,
    pub last: u64,
    pub offsets: BTreeMap<String, SourceOffsets>,
    /// The group's counts plus the sinks' committed rows, bytes and files.
    pub stats: Stats,
    /// Rows committed, by sink.
    pub rows: BTreeMap<String, u64>,
    /// Read-to-commit latency of each epoch.
    pub latencies: Vec<Duration>,
    /// Time from the start of sealing to the last sink's commit.
    pub took: Duration,
    /// The state each sink committed, by sink.
    pub states: BTreeMap<String, SinkState>,
}

/// Makes commits; see the module docs.
pub(crate) struct Committer {
    plan: Arc<PipelinePlan>,
    run_id: Arc<str>,
    failpoint: Failpoint,
    /// The snapshot files each sink's last commit names: superseded by the
    /// next commit, then deleted.
    snapshots: std::sync::Mutex<BTreeMap<String, BTreeSet<String>>>,
}

impl Committer {
    pub(super) fn new(plan: Arc<PipelinePlan>, run_id: Arc<str>) -> Self {
        Self {
            plan,
            run_id,
            failpoint: Failpoint::from_env(),
            snapshots: Default::default(),
        }
    }

    /// The snapshot files the sinks' last commits name (from recovery).
    pub(super) fn remember_snapshots(&self, sink: &str, paths: BTreeSet<String>) {
        if let Ok(mut s) = self.snapshots.lock() {
            s.insert(sink.to_string(), paths);
        }
    }

    /// Writes the snapshots of `state` no earlier commit wrote, as commit
    /// `last`; returns what the commit records. A sink without a state store
    /// records the clocks only (its state lives in memory).
    async fn write_state(
        &self,
        sink: &PlannedSink,
        state: &SinkState,
        last: u64,
    ) -> Result<StateCommit> {
        let mut commit = StateCommit {
            operators: BTreeMap::new(),
            clocks: state.clocks.clone(),
        };
        let Some(store) = sink.sink.state_store() else {
            return Ok(commit);
        };
        for (op, snapshot) in &state.operators {
            let stored = match snapshot.stored.get() {
                Some(r) => r.clone(),
                None => {
                    let r = store.write(op, last, &self.run_id, &snapshot.state).await?;
                    // a later commit of the same snapshot refers to this file
                    let _ = snapshot.stored.set(r.clone());
                    r
                }
            };
            commit.operators.insert(op.clone(), stored);
        }
        Ok(commit)
    }

    /// After `sink` committed `commit`: deletes the snapshot files only the
    /// commit before named (best effort; the next run's recovery deletes
    /// what is left).
    async fn drop_superseded(&self, sink: &PlannedSink, commit: &StateCommit) {
        let Some(store) = sink.sink.state_store() else {
            return;
        };
        let now: BTreeSet<String> = commit.operators.values().map(|r| r.path.clone()).collect();
        let before = match self.snapshots.lock() {
            Ok(mut s) => s.insert(sink.id.name().to_string(), now.clone()),
            Err(_) => None,
        };
        let gone: Vec<String> = before
            .unwrap_or_default()
            .into_iter()
            .filter(|p| !now.contains(p))
            .collect();
        if let Err(e) = store.delete(&gone).await {
            tracing::warn!(error = %e, "cannot delete superseded state snapshots; the next run will");
        }
    }

    /// Seals and commits `job`; the commits wait for `previous` (the commit
    /// before it) to succeed. `None`: given up because an earlier commit
    /// failed (whose error says what happened).
    pub(super) async fn commit(
        &self,
        job: CommitJob,
        previous: Option<oneshot::Receiver<bool>>,
    ) -> Result<Option<Committed>> {
        let cx = trace::start(
            "commit",
            &job.trace,
            vec![
                KeyValue::new("sluice.first_epoch", job.first as i64),
                KeyValue::new("sluice.epoch", job.last as i64),
            ],
            None,
        );
        let result = self
            .commit_traced(job, previous)
            .instrument(trace::log_span(&cx))
            .await;
        trace::end(
            &cx,
            result.as_ref().err().map(|e| e as &dyn std::error::Error),
        );
        result
    }

    async fn commit_traced(
        &self,
        job: CommitJob,
        previous: Option<oneshot::Receiver<bool>>,
    ) -> Result<Option<Committed>> {
        let CommitJob {
            first,
            last,
            offsets,
            sinks,
            read_at,
            mut stats,
            trace: _,
            rollout,
        } = job;
        let started = Instant::now();
        // seal every sink first: all files closed and on the store
        let mut sealed = Vec::with_capacity(sinks.len());
        for (name, part) in sinks {
            let Some(planned) = self.plan.sinks.get(&name) else {
                return Err(SluiceError::Internal(format!(
                    "epochs {first}..={last} name sink `{name}`, which the plan does not have"
                )));
            };
            let t = Instant::now();
            let s = planned.sink.seal(first).await?;
            sealed.push((planned, part, s, t.elapsed()));
        }
        if let Some(previous) = previous
            && !previous.await.unwrap_or(false)
        {
            return Ok(None);
        }
        self.failpoint.hit(Point::BeforeCommit, last);
        let mut rows = BTreeMap::new();
        let progress = &self.plan.progress;
        let choices = crate::rollout::control::choices_of(&rollout);
        let mut states = BTreeMap::new();
        for (i, (planned, part, sealed, sealing)) in sealed.into_iter().enumerate() {
            let t = Instant::now();
            let state = match &part.state {
                Some(s) => self.write_state(planned, s, last).await?,
                None => StateCommit::default(),
            };
            let record = CommitRecord {
                first_epoch: first,
                epoch: last,
                pipeline: self.plan.spec.id(),
                run_id: self.run_id.to_string(),
                lineage: planned.lineage_with(&choices),
                provenance: part.provenance,
                schema: part.schema,
                source_offsets: offsets.clone(),
                rollout: rollout.clone(),
                state,
            };
            let (n, bytes, files) = (sealed.rows, sealed.bytes, sealed.files.len() as u64);
            planned.sink.commit(sealed, &record).await?;
            if let Some(s) = part.state {
                self.drop_superseded(planned, &record.state).await;
                states.insert(planned.id.name().to_string(), s);
            }
            if i == 0 {
                self.failpoint.hit(Point::BetweenCommits, last);
            }
            progress.rows_committed.fetch_add(n, Ordering::Relaxed);
            progress.files_committed.fetch_add(files, Ordering::Relaxed);
            let c = stats.of(planned.id.clone());
            c.rows += n;
            c.bytes += bytes;
            c.files += files;
            c.wall += sealing + t.elapsed();
            rows.insert(planned.id.name().to_string(), n);
        }
        self.failpoint.hit(Point::AfterCommit, last);
        progress.epochs_committed.store(last + 1, Ordering::Relaxed);
        let now = Instant::now();
        Ok(Some(Committed {
            first,
            last,
            offsets,
            stats,
            rows,
            latencies: read_at.iter().map(|t| now.duration_since(*t)).collect(),
            took: now.duration_since(started),
            states,
        }))
    }
}

/// Commits under way, oldest first; see the module docs.
pub(crate) struct CommitQueue {
    committer: Arc<Committer>,
    /// How many commits may be under way while the next epoch is written.
    capacity: usize,
    running: VecDeque<JoinHandle<Result<Option<Committed>>>>,
    /// Fires when the newest commit is done (`true` when it succeeded).
    newest: Option<oneshot::Receiver<bool>>,
}

impl CommitQueue {
    /// A queue letting `capacity` commits run while epochs are written
    /// (`epochs_in_flight - 1`; 0 commits synchronously).
    pub(super) fn new(committer: Arc<Committer>, capacity: usize) -> Self {
        Self {
            committer,
            capacity,
            running: VecDeque::new(),
            newest: None,
        }
    }

    /// Starts committing `job` after the commits before it.
    pub(super) fn push(&mut self, job: CommitJob) {
        let (done, newest) = oneshot::channel();
        let previous = self.newest.replace(newest);
        let committer = Arc::clone(&self.committer);
        self.running.push_back(tokio::spawn(async move {
            let result = committer.commit(job, previous).await;
            let _ = done.send(matches!(result, Ok(Some(_))));
            result
        }));
    }

    /// Starts afresh once every commit is done (after a failed epoch was
    /// settled and rewound): the next commit waits for nothing before it,
    /// rather than giving up behind the commit that failed.
    pub(super) fn restart_chain(&mut self) {
        debug_assert!(self.running.is_empty(), "commits still running");
        self.newest = None;
    }

    /// Whether the next epoch must wait for the oldest commit.
    pub(super) fn is_full(&self) -> bool {
        self.running.len() > self.capacity
    }

    /// The oldest commit, once it is done. Commits given up after an
    /// earlier one failed are passed over: the failure was reported.
    pub(super) async fn next(&mut self) -> Option<Result<Committed>> {
        loop {
            let handle = self.running.pop_front()?;
            match handle.await {
                Ok(Ok(Some(c))) => return Some(Ok(c)),
                Ok(Ok(None)) => continue,
                Ok(Err(e)) => return Some(Err(e)),
                Err(e) => {
                    return Some(Err(SluiceError::Internal(format!(
                        "a commit task failed: {e}"
                    ))));
                }
            }
        }
    }

    /// The oldest commit if it is done, without waiting.
    pub(super) async fn next_ready(&mut self) -> Option<Result<Committed>> {
        if self.running.front()?.is_finished() {
            self.next().await
        } else {
            None
        }
    }
}
