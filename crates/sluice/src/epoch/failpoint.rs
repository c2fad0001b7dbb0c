//! Crash points for the kill tests: `SLUICE_FAILPOINT=before_commit`,
//! `between_commits`, `after_commit` (optionally `@<epoch>`) or
//! `mid_upload` aborts the process there.
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
