//! [`EpochBinding`]: what one epoch's execution reads, bound to that execution.
//!
//! The pipeline's plans are built once, against tables that only know their
//! schema ([`crate::sources::EpochTable`]). An epoch's slices, its dead
//! letters and its number travel with the execution instead, as an extension
//! of the DataFusion [`SessionConfig`](datafusion::prelude::SessionConfig)
//! the epoch is planned and run with: table providers read it at planning
//! time ([`EpochBinding::of_session`]), operators at execute time
//! ([`EpochBinding::of_task`]). Nothing is installed in shared slots, so two
//! epochs can be planned and executed at once without seeing each other's
//! input.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::catalog::{Session, TableProvider};
use datafusion::common::{Result, internal_datafusion_err};
use datafusion::execution::TaskContext;
use datafusion::execution::session_state::SessionState;

use crate::dead_letter::DeadLetters;
use crate::rollout::tally::EpochRollout;

/// One epoch's input and collectors; see the module docs.
#[derive(Debug)]
pub(crate) struct EpochBinding {
    epoch: u64,
    slices: BTreeMap<String, Arc<dyn TableProvider>>,
    dead_letters: Arc<DeadLetters>,
    /// The epoch's span: what the spans of its operators are children of.
    trace: opentelemetry::Context,
    /// The rollout choices it runs with, and what the branches did.
    rollout: EpochRollout,
}

impl EpochBinding {
    /// Epoch `epoch` reading `slices` (by source name; a source without a
    /// slice reads nothing this epoch).
    pub(crate) fn new(
        epoch: u64,
        slices: BTreeMap<String, Arc<dyn TableProvider>>,
        trace: opentelemetry::Context,
    ) -> Self {
        Self {
            epoch,
            slices,
            dead_letters: DeadLetters::new(),
            trace,
            rollout: EpochRollout::default(),
        }
    }

    /// The same epoch, running its rolled-out stages as `choices` says.
    pub(crate) fn with_rollout(
        mut self,
        choices: BTreeMap<String, crate::rollout::Choice>,
    ) -> Self {
        self.rollout = EpochRollout::new(choices);
        self
    }

    /// The epoch's rollout choices and tallies.
    pub(crate) fn rollout(&self) -> &EpochRollout {
        &self.rollout
    }

    /// The epoch's span (a no-op one when nothing is traced).
    pub(crate) fn trace(&self) -> &opentelemetry::Context {
        &self.trace
    }

    /// The epoch's number.
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The slice `source` reads in this epoch.
    pub(crate) fn slice(&self, source: &str) -> Option<&Arc<dyn TableProvider>> {
        self.slices.get(source)
    }

    /// Where this epoch's scans and stages put the rows they give up on.
    pub(crate) fn dead_letters(&self) -> &Arc<DeadLetters> {
        &self.dead_letters
    }

    /// A copy of `state` that plans and executes with this binding.
    pub(crate) fn bind(self: &Arc<Self>, state: &SessionState) -> SessionState {
        let mut state = state.clone();
        state.config_mut().set_extension(Arc::clone(self));
        state
    }

    /// The binding of the execution being planned.
    pub(crate) fn of_session(session: &dyn Session) -> Result<Arc<Self>> {
        session
            .config()
            .get_extension::<EpochBinding>()
            .ok_or_else(|| internal_datafusion_err!("a pipeline plan was planned outside an epoch"))
    }

    /// The binding of the execution running.
    pub(crate) fn of_task(task: &TaskContext) -> Result<Arc<Self>> {
        task.session_config()
            .get_extension::<EpochBinding>()
            .ok_or_else(|| {
                internal_datafusion_err!("a pipeline plan was executed outside an epoch")
            })
    }
}
