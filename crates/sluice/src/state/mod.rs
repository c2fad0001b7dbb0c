//! State that outlives an epoch, committed with the epoch.
//!
//! Windows, dedupe and custom operators keep rows from one epoch to the
//! next; a source with `event_time` keeps the largest event time it has
//! read. Both belong to one sink's plan (every sink runs its own plan), so
//! they are kept per sink and committed by the sink's commit:
//!
//! | file | what it holds |
//! |---|---|
//! | [`clock`] | event-time clocks and watermarks: where each source's event time stands |
//! | [`scope`] | [`StateScope`]: one sink's state for one epoch's execution, the API operators read and write |
//! | [`store`] | [`StateStore`]: snapshots as Arrow IPC files under `_sluice/state/` beside the commit log |
//!
//! The life of a state: an epoch's operators read the state the previous
//! epoch left ([`StateScope::previous`]) and save their new one
//! ([`StateScope::save`]); the loop carries it in memory to the next epoch.
//! At a commit, the committer writes every snapshot not yet on the store
//! ([`StateStore::write`]) and the sink's commit names them
//! ([`StateCommit`]): writing the state is part of the commit, so a crash
//! before it leaves only files no commit names, which the next run deletes.
//! A restart loads the state the last commit names; a failed epoch rewinds
//! to it.

pub(crate) mod clock;
pub(crate) mod scope;
pub(crate) mod store;

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use datafusion::arrow::array::RecordBatch;
use serde::{Deserialize, Serialize};

pub use clock::{EventTimeConfig, Late, SourceClock, format_event_time};
pub use scope::StateScope;
pub use store::StateStore;

/// What one operator keeps between epochs.
#[derive(Debug, Clone, Default)]
pub struct OperatorState {
    /// The operator's rows (in a schema of its own).
    pub batches: Vec<RecordBatch>,
    /// The operator's watermark when it saved them: event time before
    /// which everything was emitted. `None`: none yet.
    pub watermark: Option<i64>,
}

impl OperatorState {
    /// Rows kept.
    pub fn rows(&self) -> u64 {
        self.batches.iter().map(|b| b.num_rows() as u64).sum()
    }

    /// Bytes of the rows in memory.
    pub fn memory_bytes(&self) -> u64 {
        self.batches
            .iter()
            .map(|b| b.get_array_memory_size() as u64)
            .sum()
    }

    /// Whether nothing is kept.
    pub fn is_empty(&self) -> bool {
        self.batches.iter().all(|b| b.num_rows() == 0)
    }
}

/// An operator's state as the loop carries it: the state, and where it is
/// stored once a commit wrote it (shared by every copy, so a state an epoch
/// left unchanged is not written again).
#[derive(Debug, Clone, Default)]
pub(crate) struct Snapshot {
    pub state: Arc<OperatorState>,
    pub stored: Arc<OnceLock<StateRef>>,
}

impl Snapshot {
    pub(crate) fn new(state: OperatorState) -> Self {
        Self {
            state: Arc::new(state),
            stored: Arc::new(OnceLock::new()),
        }
    }
}

/// One sink's state between epochs: every operator's snapshot and every
/// event-time source's clock.
#[derive(Debug, Clone, Default)]
pub(crate) struct SinkState {
    pub operators: BTreeMap<String, Snapshot>,
    pub clocks: BTreeMap<String, SourceClock>,
}

impl SinkState {
    /// Whether an operator holds rows (windows not yet emitted, keys not yet evicted).
    pub(crate) fn holds_rows(&self) -> bool {
        self.operators.values().any(|s| !s.state.is_empty())
    }

    /// Whether there is anything to commit.
    pub(crate) fn is_empty(&self) -> bool {
        self.operators.is_empty() && self.clocks.is_empty()
    }
}

/// Where a commit's snapshot of one operator is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StateRef {
    /// The snapshot file, relative to the sink's root
    /// (`_sluice/state/<operator>/<epoch>-<run>.arrow`).
    pub path: String,
    /// The commit (last epoch) that wrote it.
    pub epoch: u64,
    /// Rows kept (window groups, keys).
    pub rows: u64,
    /// Size of the file.
    pub bytes: u64,
    /// Bytes the state took in memory (Arrow buffers) when it was written.
    #[serde(default)]
    pub memory_bytes: u64,
    /// CRC-32 of the file: a snapshot changed after its commit is refused,
    /// not restored with a wrong value. (Absent in commits of older runs.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crc32: Option<u32>,
    /// The operator's watermark (µs since the Unix epoch), when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watermark: Option<i64>,
}

/// The state a commit covers, in the commit file: every operator's
/// snapshot and every event-time source's clock after its last epoch.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StateCommit {
    /// Snapshots, by operator (`<stage>`, `<stage>.1`, ...; a join's two
    /// sides as `<operator>.left` and `<operator>.right`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub operators: BTreeMap<String, StateRef>,
    /// Clocks, by source.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub clocks: BTreeMap<String, SourceClock>,
}

impl StateCommit {
    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.operators.is_empty() && self.clocks.is_empty()
    }
}
