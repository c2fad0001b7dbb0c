//! [`RunHandle`]: a running pipeline, to stop, wait for and follow.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;
use serde::Serialize;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

use crate::commit_log::SourceOffsets;
use crate::error::{Result, SluiceError};
use crate::metrics::{Progress, RunSummary};

/// Options of one run.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Stop after this many epochs (the rest is left for the next run).
    pub max_epochs: Option<u64>,
    /// Stop (and commit) once streaming sources have nothing new for an epoch.
    pub exit_when_idle: bool,
    /// Serve Prometheus metrics at this address, instead of the spec's
    /// `[observability] metrics`.
    pub metrics: Option<String>,
    /// Serve the live pipeline page at this address, instead of the spec's
    /// `[observability] ui`.
    pub ui: Option<String>,
}

/// What happens in a run, as it happens.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
#[non_exhaustive]
pub enum RunEvent {
    /// The sinks are recovered; epochs start at `first_epoch`.
    Started {
        /// The run's id.
        run_id: String,
        /// The first epoch this run writes (replays included).
        first_epoch: u64,
    },
    /// A commit: every sink holds the epochs `first_epoch..=epoch`.
    Committed {
        /// First epoch the commit covers.
        first_epoch: u64,
        /// Last epoch it covers.
        epoch: u64,
        /// Rows committed, by sink.
        rows: BTreeMap<String, u64>,
        /// Offsets of every source over the commit; a restart resumes at
        /// their `end`.
        offsets: BTreeMap<String, SourceOffsets>,
    },
    /// An epoch failed in a way that may pass: what was written since the
    /// last commit is discarded and it is tried again after `delay`.
    Retrying {
        /// The epoch the retry starts at.
        epoch: u64,
        /// Retries of this epoch so far, this one included.
        attempt: u32,
        /// What failed.
        error: String,
        /// The wait before the retry.
        #[serde(serialize_with = "crate::metrics::secs")]
        delay: Duration,
    },
    /// A rolled-out stage's variant broke its guard: from the next epoch on,
    /// the primary does all the work (the flags file says so too).
    RolledBack {
        /// The stage.
        stage: String,
        /// The epoch whose outcome broke the guard.
        epoch: u64,
        /// Which threshold broke, with the numbers.
        reason: String,
    },
    /// The run failed; nothing since the last commit is committed.
    Failed {
        /// What failed.
        error: String,
    },
    /// The run ended and everything it read is committed.
    Finished {
        /// Epochs this run committed.
        epochs: u64,
    },
}

/// The run's stop request: the first stops after the epoch under way, which
/// is committed.
#[derive(Debug, Default)]
pub(crate) struct StopSignal(AtomicBool);

impl StopSignal {
    pub(crate) fn request(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
    pub(crate) fn requested(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Asks a run to stop after the epoch under way; see [`RunHandle::stopper`].
#[derive(Debug, Clone)]
pub struct Stopper(Arc<StopSignal>);

impl Stopper {
    /// [`RunHandle::stop`].
    pub fn stop(&self) {
        self.0.request();
    }
}

/// A pipeline running on the tokio runtime; see [`crate::CompiledPipeline::start`].
#[derive(Debug)]
pub struct RunHandle {
    pub(crate) stop: Arc<StopSignal>,
    pub(crate) progress: Arc<Progress>,
    pub(crate) events: broadcast::Sender<RunEvent>,
    /// The receiver made before the run started, so the first call to
    /// [`RunHandle::events`] misses nothing.
    pub(crate) first_events: std::sync::Mutex<Option<broadcast::Receiver<RunEvent>>>,
    pub(crate) task: JoinHandle<Result<RunSummary>>,
}

/// Events kept for a subscriber that reads slowly; an event older than
/// this many is dropped for it.
pub(crate) const EVENTS_KEPT: usize = 1024;

impl RunHandle {
    /// Asks the run to stop after the epoch under way; everything written
    /// is committed first (a graceful stop). [`RunHandle::wait`] then
    /// returns the summary.
    pub fn stop(&self) {
        self.stop.request();
    }

    /// A cloneable way to ask for the same stop as [`RunHandle::stop`], for
    /// another task (a signal handler, say).
    pub fn stopper(&self) -> Stopper {
        Stopper(Arc::clone(&self.stop))
    }

    /// Live counters (rows read, epochs and rows committed) for a progress display.
    pub fn progress(&self) -> &Arc<Progress> {
        &self.progress
    }

    /// The run's events. The first call sees every event since the run
    /// started; later calls see those after the call. A subscriber more than
    /// 1024 events behind loses the oldest.
    pub fn events(&self) -> BoxStream<'static, RunEvent> {
        let receiver = self
            .first_events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .unwrap_or_else(|| self.events.subscribe());
        futures::stream::unfold(receiver, |mut r| async move {
            loop {
                match r.recv().await {
                    Ok(e) => return Some((e, r)),
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        })
        .boxed()
    }

    /// Waits for the run to end: its summary, or what failed.
    pub async fn wait(self) -> Result<RunSummary> {
        match self.task.await {
            Ok(result) => result,
            Err(e) => Err(SluiceError::Internal(format!("the run's task failed: {e}"))),
        }
    }
}
