//! [`StateScope`]: one sink's state for one epoch's execution.
//!
//! Every sink runs its own plan, so every sink has its own state. The loop
//! binds a scope to each sink's execution (an extension of the DataFusion
//! session config, as [`crate::epoch::EpochBinding`] is): operators find it
//! with [`StateScope::of_task`], read what the previous epoch left and save
//! what the next one needs. Nothing is shared between sinks or epochs, so a
//! replay to one sink cannot disturb another's state.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use datafusion::common::{Result, internal_datafusion_err};
use datafusion::execution::TaskContext;
use datafusion::execution::session_state::SessionState;

use super::clock::{ClockInput, SourceClock, combine};
use super::{OperatorState, SinkState, Snapshot};

/// One sink's state in one epoch; see the module docs.
#[derive(Debug)]
pub struct StateScope {
    sink: String,
    epoch: u64,
    before: SinkState,
    inputs: BTreeMap<String, ClockInput>,
    /// The largest event time each source read in this epoch.
    observed: Mutex<BTreeMap<String, i64>>,
    /// What operators saved in this epoch.
    saved: Mutex<BTreeMap<String, OperatorState>>,
}

impl StateScope {
    /// Sink `sink`'s scope for epoch `epoch`, starting from `before`, with
    /// the loop's word on every event-time source.
    pub(crate) fn new(
        sink: &str,
        epoch: u64,
        before: SinkState,
        inputs: BTreeMap<String, ClockInput>,
    ) -> Self {
        Self {
            sink: sink.to_string(),
            epoch,
            before,
            inputs,
            observed: Mutex::new(BTreeMap::new()),
            saved: Mutex::new(BTreeMap::new()),
        }
    }

    /// A copy of `state` that plans and executes with this scope.
    pub(crate) fn bind(self: &Arc<Self>, state: &SessionState) -> SessionState {
        let mut state = state.clone();
        state.config_mut().set_extension(Arc::clone(self));
        state
    }

    /// The scope of the execution running: what an operator's `execute` calls.
    pub fn of_task(task: &TaskContext) -> Result<Arc<Self>> {
        task.session_config()
            .get_extension::<StateScope>()
            .ok_or_else(|| {
                internal_datafusion_err!(
                    "a stateful operator was executed outside a sink's epoch (no state scope)"
                )
            })
    }

    /// The sink whose plan this is.
    pub fn sink(&self) -> &str {
        &self.sink
    }

    /// The epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// What `operator` saved in the last epoch before this one (or what the
    /// last commit restored); `None` before its first save.
    pub fn previous(&self, operator: &str) -> Option<Arc<OperatorState>> {
        self.before
            .operators
            .get(operator)
            .map(|s| Arc::clone(&s.state))
    }

    /// Keeps `state` for `operator`: what the next epoch's
    /// [`StateScope::previous`] gives, committed with this epoch's commit.
    pub fn save(&self, operator: &str, state: OperatorState) {
        if let Ok(mut saved) = self.saved.lock() {
            saved.insert(operator.to_string(), state);
        }
    }

    /// The watermark after this epoch of an operator reading `sources`,
    /// never behind `previous` (the operator's own last watermark). Call it
    /// once the operator's input is read whole.
    pub fn watermark(&self, sources: &[String], previous: Option<i64>) -> Option<i64> {
        let clocks: Vec<(SourceClock, ClockInput)> = sources
            .iter()
            .filter_map(|s| Some((self.clock_after(s), *self.inputs.get(s)?)))
            .collect();
        if clocks.is_empty() {
            return previous;
        }
        combine(clocks.iter().map(|(c, i)| (c, i)), previous)
    }

    /// The clock of `source` as the epoch started.
    pub(crate) fn clock_before(&self, source: &str) -> SourceClock {
        self.before.clocks.get(source).copied().unwrap_or_default()
    }

    /// What the loop said of `source` for this epoch.
    pub(crate) fn clock_input(&self, source: &str) -> Option<ClockInput> {
        self.inputs.get(source).copied()
    }

    /// `source` read rows up to event time `max` in this epoch.
    pub(crate) fn observe(&self, source: &str, max: i64) {
        if let Ok(mut seen) = self.observed.lock() {
            let v = seen.entry(source.to_string()).or_insert(max);
            *v = (*v).max(max);
        }
    }

    fn clock_after(&self, source: &str) -> SourceClock {
        let before = self.clock_before(source);
        let seen = self
            .observed
            .lock()
            .ok()
            .and_then(|s| s.get(source).copied());
        SourceClock {
            max_event_time: match (before.max_event_time, seen) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            },
            ended: before.ended || self.inputs.get(source).is_some_and(|i| i.ended),
        }
    }

    /// The sink's state after this epoch: the clocks moved on by what was
    /// read, the operators' saves in place of what they had.
    pub(crate) fn finish(&self) -> SinkState {
        let mut after = self.before.clone();
        for source in self.inputs.keys() {
            after
                .clocks
                .insert(source.clone(), self.clock_after(source));
        }
        let saved = self
            .saved
            .lock()
            .map(|mut s| std::mem::take(&mut *s))
            .unwrap_or_default();
        for (op, state) in saved {
            after.operators.insert(op, Snapshot::new(state));
        }
        after
    }
}
