//! Crash points for the kill tests: `SLUICE_FAILPOINT=before_commit`,
//! `between_commits`, `after_commit` (optionally `@<epoch>`) or
//! `mid_upload` aborts the process there. `stop_before_commit` makes the
//! process a zombie instead: the first time every sink is sealed, it stops
//! itself (SIGSTOP) until someone sends it SIGCONT, and then commits.
//!
//! Compiled only with the `failpoints` feature (the CLI's tests turn it on);
//! a library build has no way to abort the service embedding it.

/// Environment variable naming a crash point.
#[cfg(feature = "failpoints")]
pub const FAILPOINT_ENV: &str = "SLUICE_FAILPOINT";

/// Where the commit protocol may be interrupted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Point {
    /// Every sink sealed, none committed.
    BeforeCommit,
    /// The first sink committed, the others not.
    BetweenCommits,
    /// Every sink committed, the sources not acknowledged.
    AfterCommit,
    /// A part of a multipart upload is on the store, the upload not complete.
    MidUpload,
    /// As [`Point::BeforeCommit`], where the process stops rather than aborts.
    #[cfg_attr(not(feature = "failpoints"), allow(dead_code))]
    StopBeforeCommit,
}

impl Point {
    /// As `SLUICE_FAILPOINT` names it.
    #[cfg(feature = "failpoints")]
    fn name(self) -> &'static str {
        match self {
            Point::BeforeCommit => "before_commit",
            Point::BetweenCommits => "between_commits",
            Point::AfterCommit => "after_commit",
            Point::MidUpload => "mid_upload",
            Point::StopBeforeCommit => "stop_before_commit",
        }
    }
}

/// The crash point of this process, if any.
#[derive(Debug, Clone, Default)]
pub(crate) struct Failpoint {
    #[cfg(feature = "failpoints")]
    armed: Option<(Point, Option<u64>)>,
}

impl Failpoint {
    /// Reads [`FAILPOINT_ENV`] (with the `failpoints` feature; never otherwise).
    pub(crate) fn from_env() -> Self {
        #[cfg(feature = "failpoints")]
        {
            let armed = std::env::var(FAILPOINT_ENV).ok().and_then(|v| {
                let (point, epoch) = match v.split_once('@') {
                    Some((p, e)) => (p.to_string(), e.parse().ok()),
                    None => (v, None),
                };
                let point = [
                    Point::BeforeCommit,
                    Point::BetweenCommits,
                    Point::AfterCommit,
                    Point::MidUpload,
                    Point::StopBeforeCommit,
                ]
                .into_iter()
                .find(|p| p.name() == point)?;
                Some((point, epoch))
            });
            Self { armed }
        }
        #[cfg(not(feature = "failpoints"))]
        Self::default()
    }

    /// Aborts the process when `point` at `epoch` is the armed crash point.
    pub(crate) fn hit(&self, point: Point, epoch: u64) {
        #[cfg(feature = "failpoints")]
        if point == Point::BeforeCommit
            && self
                .armed
                .is_some_and(|(p, _)| p == Point::StopBeforeCommit)
        {
            static STOPPED: std::sync::atomic::AtomicBool =
                std::sync::atomic::AtomicBool::new(false);
            if !STOPPED.swap(true, std::sync::atomic::Ordering::SeqCst) {
                eprintln!(
                    "sluice: failpoint `stop_before_commit` hit at epoch {epoch}; stopping the process (SIGSTOP)"
                );
                // (a test build only: a short blocking call is fine here)
                let _ = std::process::Command::new("kill")
                    .args(["-STOP", &std::process::id().to_string()])
                    .status();
            }
            return;
        }
        #[cfg(feature = "failpoints")]
        if let Some((p, e)) = self.armed
            && p == point
            && e.is_none_or(|e| e == epoch)
        {
            eprintln!(
                "sluice: failpoint `{}` hit at epoch {epoch}; aborting the process",
                point.name()
            );
            std::process::abort();
        }
        #[cfg(not(feature = "failpoints"))]
        let _ = (point, epoch);
    }
}
