//! What one epoch's execution knows about its rollouts: the choice each
//! rolled-out stage runs with, and what its branches produced.
//!
//! It travels in the [`EpochBinding`](crate::epoch::EpochBinding). A stage
//! read by two sinks runs in both sinks' plans; only the first
//! [`RolloutExec`](super::exec::RolloutExec) instance to ask counts and
//! captures rows ([`EpochRollout::claim`]), so every row is counted once
//! and the shadow variant runs once per epoch.

use std::collections::BTreeMap;
use std::sync::Mutex;

use datafusion::arrow::array::RecordBatch;

use super::config::Choice;

/// What one stage's branches did in one epoch.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    /// The plan instance that counts (see the module docs).
    owner: Option<usize>,
    /// Rows delivered, by branch name (`primary` or the variant's).
    pub delivered: BTreeMap<String, u64>,
    /// Shadow: the primary's and the variant's output, for the diff.
    pub primary_rows: Vec<RecordBatch>,
    pub variant_rows: Vec<RecordBatch>,
    /// Shadow: the variant failed (its output is incomplete); why.
    pub variant_failure: Option<String>,
    /// Shadow: branches whose capture started and has not reached the
    /// end; any left after the epoch means its consumer stopped early, and
    /// the outputs cannot be compared.
    pub open_captures: u32,
}

/// The rollouts of one epoch; see the module docs.
#[derive(Debug, Default)]
pub(crate) struct EpochRollout {
    choices: BTreeMap<String, Choice>,
    tallies: Mutex<BTreeMap<String, Tally>>,
}

impl EpochRollout {
    /// An epoch running each stage's rollout as `choices` says.
    pub(crate) fn new(choices: BTreeMap<String, Choice>) -> Self {
        Self {
            choices,
            tallies: Mutex::default(),
        }
    }

    /// The choice `stage` runs with this epoch.
    pub(crate) fn choice(&self, stage: &str) -> Option<&Choice> {
        self.choices.get(stage)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Tally>> {
        self.tallies.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether plan instance `owner` is the one that counts `stage`'s rows.
    pub(crate) fn claim(&self, stage: &str, owner: usize) -> bool {
        let mut t = self.lock();
        let tally = t.entry(stage.to_string()).or_default();
        *tally.owner.get_or_insert(owner) == owner
    }

    /// Runs `f` on `stage`'s tally.
    pub(crate) fn with<R>(&self, stage: &str, f: impl FnOnce(&mut Tally) -> R) -> R {
        f(self.lock().entry(stage.to_string()).or_default())
    }

    /// Every stage's tally, leaving none.
    pub(crate) fn take(&self) -> BTreeMap<String, Tally> {
        std::mem::take(&mut *self.lock())
    }
}
