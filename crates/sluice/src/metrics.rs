//! Run metrics: live progress counters and the summary of a finished run.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;

/// Counters a UI can poll while a pipeline runs.
#[derive(Debug, Default)]
pub struct Progress {
    /// Rows read by all sources so far.
    pub rows_read: Arc<AtomicU64>,
    /// Estimated rows the run will read in total (0 = unknown).
    pub rows_expected: AtomicU64,
    /// Epochs committed in this run.
    pub epochs_committed: AtomicU64,
    /// Rows committed by all sinks in this run.
    pub rows_committed: AtomicU64,
    /// Files committed by all sinks in this run.
    pub files_committed: AtomicU64,
}

impl Progress {
    /// A snapshot: (rows read, rows expected or 0, epochs committed).
    pub fn snapshot(&self) -> (u64, u64, u64) {
        (
            self.rows_read.load(Ordering::Relaxed),
            self.rows_expected.load(Ordering::Relaxed),
            self.epochs_committed.load(Ordering::Relaxed),
        )
    }
}

/// A component of a pipeline: what stats, dead letters and errors are keyed by.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(tag = "role", content = "name", rename_all = "snake_case")]
pub enum ComponentId {
    /// `[sources.<name>]`.
    Source(String),
    /// `[stages.<name>]`.
    Stage(String),
    /// `[sinks.<name>]`, or the `[dead_letter]` sink.
    Sink(String),
}

impl ComponentId {
    /// Its name in the pipeline.
    pub fn name(&self) -> &str {
        match self {
            ComponentId::Source(n) | ComponentId::Stage(n) | ComponentId::Sink(n) => n,
        }
    }

    /// `source`, `stage` or `sink`.
    pub fn role(&self) -> &'static str {
        match self {
            ComponentId::Source(_) => "source",
            ComponentId::Stage(_) => "stage",
            ComponentId::Sink(_) => "sink",
        }
    }
}

impl std::fmt::Display for ComponentId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} `{}`", self.role(), self.name())
    }
}

/// What one component did over a run.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct ComponentStats {
    /// Component name.
    pub name: String,
    /// `source`, `stage` or `sink`.
    pub role: String,
    /// Kind (`tpch`, `sql`, `parquet`, ...).
    pub kind: String,
    /// Rows that reached it.
    pub rows_in: u64,
    /// Rows it produced (for sinks: rows committed).
    pub rows_out: u64,
    /// Batches it produced.
    pub batches: u64,
    /// Bytes it produced (Arrow buffer sizes; for sinks, file bytes).
    pub bytes: u64,
    /// Time from its first to its last batch, summed over epochs.
    #[serde(serialize_with = "secs")]
    pub wall: Duration,
    /// Files committed (sinks only).
    pub files: u64,
    /// Rows it could not take and dropped (`on_error = "skip"`).
    pub rows_skipped: u64,
    /// Rows it could not take, sent to the dead-letter sink (`on_error = "dead_letter"`).
    pub rows_dead_lettered: u64,
    /// Times an external stage's process was started (1 = never restarted).
    pub process_starts: u64,
    /// External stages: median round trip of a batch (sent → answered), µs.
    pub batch_latency_p50_us: u64,
    /// External stages: 99th percentile round trip of a batch, µs.
    pub batch_latency_p99_us: u64,
    /// External stages: output batches that came through shared memory
    /// (docs/protocol.md, section 8) rather than over Flight.
    pub batches_in_shared_memory: u64,
    /// External stages: input batches sent to the stage through shared
    /// memory (with `unchanged` answers the output count stays 0).
    pub input_batches_in_shared_memory: u64,
    /// External stages: answers that were the input batch unchanged, reused
    /// by the engine without the rows travelling back (protocol.md, section 3).
    pub batches_unchanged: u64,
}

impl ComponentStats {
    /// Rows out per second of wall time.
    pub fn rows_per_sec(&self) -> f64 {
        per_sec(self.rows_out as f64, self.wall)
    }
    /// Megabytes (10^6) out per second of wall time.
    pub fn mb_per_sec(&self) -> f64 {
        per_sec(self.bytes as f64 / 1e6, self.wall)
    }
}

fn per_sec(v: f64, d: Duration) -> f64 {
    if d.is_zero() {
        0.0
    } else {
        v / d.as_secs_f64()
    }
}

pub(crate) fn secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// Percentiles of the time from reading an epoch's input to committing it.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct LatencySummary {
    /// Epochs measured.
    pub epochs: usize,
    /// Median, seconds.
    pub p50: f64,
    /// 95th percentile, seconds.
    pub p95: f64,
    /// 99th percentile, seconds.
    pub p99: f64,
    /// Largest, seconds.
    pub max: f64,
}

impl LatencySummary {
    /// Percentiles of `samples` (sorted in place).
    pub fn of(samples: &mut [Duration]) -> Self {
        if samples.is_empty() {
            return Self::default();
        }
        samples.sort_unstable();
        let q = |p: f64| samples[((samples.len() - 1) as f64 * p).round() as usize].as_secs_f64();
        Self {
            epochs: samples.len(),
            p50: q(0.5),
            p95: q(0.95),
            p99: q(0.99),
            max: q(1.0),
        }
    }
}

/// The summary of one run.
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    /// `name@version`.
    pub pipeline: String,
    /// Id of the run (in its file names and commits).
    pub run_id: String,
    /// Epochs committed by this run.
    pub epochs: u64,
    /// The epoch the run started at (0 for a fresh sink).
    pub first_epoch: u64,
    /// Files of earlier, interrupted runs that were deleted.
    pub removed_files: Vec<String>,
    /// Per-component stats: sources, stages, sinks, in pipeline order.
    pub components: Vec<ComponentStats>,
    /// Wall time of the run.
    #[serde(serialize_with = "secs")]
    pub wall: Duration,
    /// Sink name → URL.
    pub outputs: BTreeMap<String, String>,
    /// Read-to-commit latency of the epochs committed.
    pub latency: LatencySummary,
}

impl RunSummary {
    /// The stats of a component by name.
    pub fn component(&self, name: &str) -> Option<&ComponentStats> {
        self.components.iter().find(|c| c.name == name)
    }
}
