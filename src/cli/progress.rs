//! The progress bar shown while a pipeline runs.

use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use sluice::Progress;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A running progress display.
pub struct Bar {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

/// Starts drawing `progress` on stderr (hidden when stderr is not a terminal).
pub fn start(progress: Arc<Progress>) -> Bar {
    let (stop, mut stopped) = oneshot::channel();
    let task = tokio::spawn(async move {
        let (_, expected, _) = progress.snapshot();
        let bar = if expected > 0 {
            let b = ProgressBar::new(expected);
            b.set_style(
                ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {wide_bar} {human_pos}/{human_len} rows ({per_sec}, eta {eta}) {msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            b
        } else {
            let b = ProgressBar::new_spinner();
            b.set_style(
                ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {human_pos} rows ({per_sec}) {msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            b
        };
        loop {
            let (rows, _, epochs) = progress.snapshot();
            bar.set_position(rows);
            bar.set_message(format!("epochs committed: {epochs}"));
            tokio::select! {
                _ = &mut stopped => break,
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
        bar.finish_and_clear();
    });
    Bar { stop, task }
}

impl Bar {
    /// Stops and clears the bar.
    pub async fn finish(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}
