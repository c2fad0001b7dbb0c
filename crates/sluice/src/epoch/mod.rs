//! Epochs: running a compiled pipeline as a sequence of bounded executions,
//! each committed exactly once.
//!
//! | file | what it holds |
//! |---|---|
//! | [`run`] | the loop: slice, bind, write, hand to the committer, acknowledge |
//! | [`binding`] | [`EpochBinding`]: one epoch's slices and dead letters, bound to its execution |
//! | [`committer`] | the commit protocol: seal every sink, commit each in order, several epochs in flight |
//! | [`recovery`] | from the sinks' commit logs to where a run resumes (pure, unit-tested) |
//! | [`handle`] | [`RunHandle`]: stop, wait, follow the events of a run |
//! | [`stats`] | per-component counters, keyed by [`crate::metrics::ComponentId`] |
//! | [`failpoint`] | crash points for the kill tests (the `failpoints` feature only) |
//!
//! Why epochs: a long-running DataFusion plan buffers rows inside operators
//! and has no point where "everything up to here is written" holds. Running
//! bounded plans over slices gives every commit a clear meaning: these files
//! hold exactly the rows of these offsets.

mod binding;
mod committer;
pub(crate) mod failpoint;
mod handle;
pub(crate) mod ledger;
pub(crate) mod recovery;
mod run;
mod stats;

use std::sync::Arc;

pub(crate) use binding::EpochBinding;
#[cfg(feature = "failpoints")]
pub use failpoint::FAILPOINT_ENV;
pub use handle::{RunEvent, RunHandle, RunOptions, Stopper};
pub use recovery::RecoveryError;

use crate::compile::CompiledPipeline;
use crate::error::Result;
use crate::metrics::RunSummary;

impl CompiledPipeline {
    /// Starts the pipeline on the tokio runtime and returns at once; the
    /// handle stops it, waits for it and follows its events.
    pub fn start(self, options: RunOptions) -> RunHandle {
        let (events, first) = tokio::sync::broadcast::channel(handle::EVENTS_KEPT);
        let stop = Arc::new(handle::StopSignal::default());
        let progress = Arc::clone(&self.plan.progress);
        let run = run::Run::new(
            self.plan,
            self.sources,
            options,
            Arc::clone(&stop),
            events.clone(),
        );
        RunHandle {
            stop,
            progress,
            events,
            first_events: std::sync::Mutex::new(Some(first)),
            task: tokio::spawn(run.run()),
        }
    }

    /// Runs the pipeline until its bounded sources are exhausted (or
    /// `max_epochs`, or idle streaming sources with `exit_when_idle`);
    /// commits everything written before returning.
    pub async fn run(self, options: RunOptions) -> Result<RunSummary> {
        self.start(options).wait().await
    }
}
