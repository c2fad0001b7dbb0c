//! The engine's error type.
//!
//! Every error says what went wrong and where: the pipeline file and key for
//! configuration mistakes, the stage for planning errors, the source, file and
//! line for bad input. Runtime errors carry a [`RetryHint`] so a supervisor can
//! tell a flaky store from a bad row.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use datafusion::error::DataFusionError;

use crate::metrics::ComponentId;

/// Result alias used across the engine.
pub type Result<T, E = SluiceError> = std::result::Result<T, E>;

/// Whether retrying the failed work may succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryHint {
    /// The same input will fail again (bad data, bad SQL).
    Never,
    /// A transient condition (network, store throttling); retrying may help.
    WithBackoff,
    /// This worker's view of a log it shares with other workers is stale
    /// (its consumer group moved partitions, or another worker committed
    /// them first): drop what is not committed, read the log again and go
    /// on, at once and without counting a retry.
    Rewind,
}

/// A mistake in a pipeline spec: which file, which key, what is wrong, how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecIssue {
    /// The pipeline file (or `<code>` for pipelines built in code).
    pub file: PathBuf,
    /// 1-based line in `file`, when known.
    pub line: Option<usize>,
    /// Dotted key path, e.g. `stages.revenue.inputs`.
    pub key: String,
    /// What is wrong.
    pub message: String,
    /// What to do about it.
    pub help: Option<String>,
}

impl SpecIssue {
    /// A new issue at `key` of `file`.
    pub fn new(
        file: impl Into<PathBuf>,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            file: file.into(),
            line: None,
            key: key.into(),
            message: message.into(),
            help: None,
        }
    }

    /// Sets the line the issue is on.
    pub fn at_line(mut self, line: Option<usize>) -> Self {
        self.line = line;
        self
    }

    /// Adds a hint on how to fix the issue.
    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }
}

impl fmt::Display for SpecIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        write!(f, ": `{}`: {}", self.key, self.message)?;
        if let Some(help) = &self.help {
            write!(f, "\n  help: {help}")?;
        }
        Ok(())
    }
}

/// The error another error was caused by, kept for [`std::error::Error::source`]
/// and for choosing the retry hint. Shared, so errors can be cloned (DataFusion
/// hands one error to every consumer of a shared plan node).
#[derive(Debug, Clone)]
pub struct Cause(Arc<dyn std::error::Error + Send + Sync>);

impl Cause {
    /// Keeps `e` as a cause.
    pub fn new(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self(Arc::new(e))
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for Cause {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}

/// Everything that can go wrong in the engine.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SluiceError {
    /// The pipeline spec is invalid; one entry per problem found.
    #[error("invalid pipeline:\n{}", .0.iter().map(|i| format!("- {i}")).collect::<Vec<_>>().join("\n"))]
    Spec(Vec<SpecIssue>),

    /// A stage could not be planned (SQL syntax, unknown column, type error).
    #[error("stage `{stage}`{}: {message}", .file.as_ref().map(|f| format!(" ({})", f.display())).unwrap_or_default())]
    Plan {
        /// Stage (or sink) name.
        stage: String,
        /// SQL file the stage came from, if any.
        file: Option<PathBuf>,
        /// DataFusion's message.
        message: String,
    },

    /// A source could not read its input.
    #[error("source `{source_name}`{}{}: {message}", .file.as_ref().map(|f| format!(": file {f}")).unwrap_or_default(), .line.map(|l| format!(", line {l}")).unwrap_or_default())]
    Source {
        /// Source name in the pipeline.
        source_name: String,
        /// File (URI) being read, when known.
        file: Option<String>,
        /// 1-based line in that file, when known.
        line: Option<u64>,
        /// What went wrong.
        message: String,
        /// Whether a retry may succeed.
        retry: RetryHint,
        /// The error underneath, when there is one.
        #[source]
        cause: Option<Cause>,
    },

    /// A sink could not write or commit.
    #[error("sink `{sink}` ({url}): {message}")]
    Sink {
        /// Sink name.
        sink: String,
        /// Where it writes.
        url: String,
        /// What went wrong.
        message: String,
        /// Whether a retry may succeed.
        retry: RetryHint,
        /// The error underneath, when there is one.
        #[source]
        cause: Option<Cause>,
    },

    /// An external stage failed.
    #[error("stage `{stage}` failed: [{code}] {message}")]
    Stage {
        /// Stage name.
        stage: String,
        /// Error code from the shared vocabulary.
        code: sluice_contract::ErrorCode,
        /// What went wrong.
        message: String,
        /// Whether a retry may succeed.
        retry: RetryHint,
    },

    /// Executing the pipeline's plan failed.
    #[error("{}: {source}", .component.as_ref().map_or_else(|| "execution failed".to_string(), |c| format!("{c} failed")))]
    Execution {
        /// The source, stage or sink whose part of the plan failed.
        component: Option<ComponentId>,
        /// DataFusion's error.
        #[source]
        source: Arc<DataFusionError>,
    },

    /// The sinks' commit logs do not say where to resume.
    #[error("cannot resume from the sinks' commit logs: {0}")]
    Recovery(#[from] crate::epoch::recovery::RecoveryError),

    /// A bug in sluice: an invariant did not hold.
    #[error("internal error (this is a bug in sluice, please report it): {0}")]
    Internal(String),
}

impl SluiceError {
    /// Whether retrying the same work may succeed. Errors that wrap
    /// another take the hint of the cause (a throttled store may pass, a
    /// corrupt file will not).
    pub fn retry_hint(&self) -> RetryHint {
        match self {
            SluiceError::Source { retry, .. }
            | SluiceError::Sink { retry, .. }
            | SluiceError::Stage { retry, .. } => *retry,
            SluiceError::Execution { source, .. } => retry_hint_of(source.as_ref()),
            SluiceError::Spec(_)
            | SluiceError::Plan { .. }
            | SluiceError::Recovery(_)
            | SluiceError::Internal(_) => RetryHint::Never,
        }
    }

    /// Wraps a DataFusion error raised while running `component`, unwrapping
    /// a sluice error that an operator smuggled through DataFusion (which
    /// names the component it happened in, when a stage border saw it).
    pub fn from_datafusion(err: DataFusionError, component: Option<ComponentId>) -> Self {
        match take_sluice_error(err) {
            Ok(sluice) => sluice,
            Err(err) => SluiceError::Execution {
                component,
                source: Arc::new(err),
            },
        }
    }

    /// Wraps this error so it can travel through DataFusion's operators.
    pub fn into_datafusion(self) -> DataFusionError {
        DataFusionError::External(Box::new(self))
    }

    /// This error, as one of source `name`: a source's own errors name it
    /// (a source implementation does not know the name it was given).
    pub fn in_source(self, name: &str) -> Self {
        match self {
            SluiceError::Source {
                file,
                line,
                message,
                retry,
                cause,
                ..
            } => SluiceError::Source {
                source_name: name.to_string(),
                file,
                line,
                message,
                retry,
                cause,
            },
            other => other,
        }
    }

    /// Source `name` failed to `what` (read, list, ...) because of `cause`;
    /// the retry hint is the cause's.
    pub(crate) fn source_failed(
        name: &str,
        file: Option<String>,
        what: &str,
        cause: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        let cause = Cause::new(cause);
        SluiceError::Source {
            source_name: name.to_string(),
            file,
            line: None,
            message: format!("{what}: {cause}"),
            retry: retry_hint_of(&cause),
            cause: Some(cause),
        }
    }

    /// Sink `name` failed to `what` at `url` because of `cause`; the retry
    /// hint is the cause's.
    pub(crate) fn sink_failed(
        name: &str,
        url: String,
        what: &str,
        cause: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        let cause = Cause::new(cause);
        SluiceError::Sink {
            sink: name.to_string(),
            url,
            message: format!("{what}: {cause}"),
            retry: retry_hint_of(&cause),
            cause: Some(cause),
        }
    }

    /// A single spec issue as an error.
    pub fn spec(issue: SpecIssue) -> Self {
        SluiceError::Spec(vec![issue])
    }
}

impl From<SluiceError> for DataFusionError {
    fn from(e: SluiceError) -> Self {
        e.into_datafusion()
    }
}

/// The retry hint of an error chain: that of the first error in it whose
/// kind says (a sluice error, an object store error, an I/O error);
/// anything else will fail the same way again.
pub(crate) fn retry_hint_of(err: &(dyn std::error::Error + 'static)) -> RetryHint {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(s) = e.downcast_ref::<SluiceError>() {
            return s.retry_hint();
        }
        if let Some(s) = e.downcast_ref::<object_store::Error>() {
            return store_retry_hint(s);
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            // object stores' errors reach readers wrapped in I/O errors
            return match io.get_ref() {
                Some(inner) if inner.is::<object_store::Error>() || inner.is::<SluiceError>() => {
                    retry_hint_of(inner)
                }
                _ => io_retry_hint(io),
            };
        }
        if let Some(DataFusionError::ObjectStore(s)) = e.downcast_ref::<DataFusionError>() {
            return store_retry_hint(s);
        }
        cur = e.source();
    }
    RetryHint::Never
}

/// Whether an object store operation that failed this way may succeed when
/// tried again: throttling, timeouts and broken connections may; a missing
/// object, a refused permission or a bad path will not.
pub(crate) fn store_retry_hint(e: &object_store::Error) -> RetryHint {
    use object_store::Error as E;
    match e {
        E::NotFound { .. }
        | E::AlreadyExists { .. }
        | E::Precondition { .. }
        | E::NotModified { .. }
        | E::InvalidPath { .. }
        | E::NotSupported { .. }
        | E::NotImplemented { .. }
        | E::PermissionDenied { .. }
        | E::Unauthenticated { .. }
        | E::UnknownConfigurationKey { .. } => RetryHint::Never,
        _ => RetryHint::WithBackoff,
    }
}

/// Whether a filesystem operation that failed this way may succeed when
/// tried again.
pub(crate) fn io_retry_hint(e: &std::io::Error) -> RetryHint {
    use std::io::ErrorKind as K;
    match e.kind() {
        K::Interrupted | K::TimedOut | K::WouldBlock | K::ResourceBusy => RetryHint::WithBackoff,
        _ => RetryHint::Never,
    }
}

/// Names `component` as where `err` happened, unless an error of sluice's
/// (which says where already) is inside it. Stage borders call this on the
/// errors that pass them, so the innermost border names the stage.
pub(crate) fn in_component(err: DataFusionError, component: &ComponentId) -> DataFusionError {
    if find_sluice_error(&err).is_some() {
        return err;
    }
    SluiceError::Execution {
        component: Some(component.clone()),
        source: Arc::new(err),
    }
    .into_datafusion()
}

/// The sluice error inside DataFusion's wrappers (`External`, `Context`,
/// `Shared`), if there is one.
pub(crate) fn find_sluice_error(err: &DataFusionError) -> Option<&SluiceError> {
    match err {
        DataFusionError::External(e) => e.downcast_ref::<SluiceError>().or_else(|| {
            e.downcast_ref::<DataFusionError>()
                .and_then(find_sluice_error)
        }),
        DataFusionError::Context(_, inner) => find_sluice_error(inner),
        DataFusionError::Shared(shared) => find_sluice_error(shared),
        _ => None,
    }
}

/// Finds a [`SluiceError`] inside DataFusion's error wrappers, returning the
/// original error when there is none.
fn take_sluice_error(err: DataFusionError) -> std::result::Result<SluiceError, DataFusionError> {
    match err {
        DataFusionError::External(boxed) => match boxed.downcast::<SluiceError>() {
            Ok(sluice) => Ok(*sluice),
            Err(other) => match other.downcast::<DataFusionError>() {
                Ok(inner) => take_sluice_error(*inner),
                Err(other) => Err(DataFusionError::External(other)),
            },
        },
        DataFusionError::Context(ctx, inner) => take_sluice_error(*inner)
            .map_err(|inner| DataFusionError::Context(ctx, Box::new(inner))),
        // a shared error can't be moved out: sluice's errors clone
        DataFusionError::Shared(shared) => match find_sluice_error(&shared) {
            Some(s) => Ok(s.clone()),
            None => Err(DataFusionError::Shared(shared)),
        },
        other => Err(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sluice_errors_survive_a_trip_through_datafusion() {
        let err = SluiceError::Source {
            source_name: "orders".into(),
            file: Some("file:///data/orders.csv".into()),
            line: Some(7),
            message: "expected 3 fields, found 2".into(),
            retry: RetryHint::Never,
            cause: None,
        };
        let df = DataFusionError::Context("scan".into(), Box::new(err.into_datafusion()));
        let back = SluiceError::from_datafusion(df, Some(ComponentId::Sink("out".into())));
        let text = back.to_string();
        assert!(
            text.contains("source `orders`: file file:///data/orders.csv, line 7"),
            "{text}"
        );
        assert_eq!(back.retry_hint(), RetryHint::Never);
    }

    #[test]
    fn retry_hints_follow_the_cause_through_wrappers() {
        let throttled = || object_store::Error::Generic {
            store: "S3",
            source: "503 Slow Down".into(),
        };
        let missing = || object_store::Error::NotFound {
            path: "a".into(),
            source: "gone".into(),
        };
        // a Parquet scan's store error, inside DataFusion's wrappers
        let parquet = |e: object_store::Error| {
            DataFusionError::ParquetError(Box::new(parquet::errors::ParquetError::External(
                Box::new(e),
            )))
        };
        let in_scan = |e| {
            SluiceError::from_datafusion(
                DataFusionError::Context("scan".into(), Box::new(parquet(e))),
                None,
            )
        };
        assert_eq!(in_scan(throttled()).retry_hint(), RetryHint::WithBackoff);
        assert_eq!(in_scan(missing()).retry_hint(), RetryHint::Never);
        // a reader's I/O error wrapping a store error
        let io = std::io::Error::other(throttled());
        assert_eq!(
            SluiceError::source_failed("s", None, "cannot read", io).retry_hint(),
            RetryHint::WithBackoff
        );
        let corrupt = std::io::Error::new(std::io::ErrorKind::InvalidData, "bad gzip header");
        assert_eq!(
            SluiceError::source_failed("s", None, "cannot read", corrupt).retry_hint(),
            RetryHint::Never
        );
        // the cause stays reachable
        let e = SluiceError::sink_failed("out", "s3://b/o".into(), "cannot write", throttled());
        let mut chain = Vec::new();
        let mut cur: Option<&dyn std::error::Error> = Some(&e);
        while let Some(c) = cur {
            chain.push(c.to_string());
            cur = c.source();
        }
        assert!(
            chain.iter().any(|c| c.contains("503 Slow Down")),
            "{chain:?}"
        );
        // an error shared by a plan's consumers comes back whole, hint and all
        let shared = DataFusionError::Shared(std::sync::Arc::new(
            SluiceError::sink_failed("out", "u".into(), "x", throttled()).into_datafusion(),
        ));
        assert_eq!(
            SluiceError::from_datafusion(shared, None).retry_hint(),
            RetryHint::WithBackoff
        );
    }

    #[test]
    fn spec_errors_list_every_issue_with_file_and_key() {
        let err = SluiceError::Spec(vec![
            SpecIssue::new("p.toml", "stages.a.inputs", "unknown input `x`")
                .with_help("declare [sources.x]"),
            SpecIssue::new("p.toml", "sinks.out.url", "missing"),
        ]);
        let text = err.to_string();
        assert!(
            text.contains(
                "p.toml: `stages.a.inputs`: unknown input `x`\n  help: declare [sources.x]"
            ),
            "{text}"
        );
        assert!(text.contains("p.toml: `sinks.out.url`: missing"), "{text}");
    }
}
