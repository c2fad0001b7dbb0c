//! The engine's error type.
//!
//! Every error says what went wrong and where: the pipeline file and key for
//! configuration mistakes, the stage for planning errors, the source, file and
//! line for bad input. Runtime errors carry a [`RetryHint`] so a supervisor can
//! tell a flaky store from a bad row.

use std::fmt;
use std::path::PathBuf;

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

/// Everything that can go wrong in the engine.
#[derive(Debug, thiserror::Error)]
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

    /// Reading or writing an object store failed.
    #[error("object store {url}: {source}")]
    Store {
        /// The URL being accessed.
        url: String,
        /// The store's error.
        #[source]
        source: object_store::Error,
    },

    /// Executing the pipeline's plan failed.
    #[error("{}: {source}", .component.as_ref().map_or_else(|| "execution failed".to_string(), |c| format!("{c} failed")))]
    Execution {
        /// The source, stage or sink whose part of the plan failed.
        component: Option<ComponentId>,
        /// DataFusion's error.
        #[source]
        source: DataFusionError,
    },

    /// The sinks' commit logs do not say where to resume.
    #[error("cannot resume from the sinks' commit logs: {0}")]
    Recovery(#[from] crate::epoch::recovery::RecoveryError),

    /// A bug in sluice: an invariant did not hold.
    #[error("internal error (this is a bug in sluice, please report it): {0}")]
    Internal(String),
}

impl SluiceError {
    /// Whether retrying the same work may succeed.
    pub fn retry_hint(&self) -> RetryHint {
        match self {
            SluiceError::Source { retry, .. }
            | SluiceError::Sink { retry, .. }
            | SluiceError::Stage { retry, .. } => *retry,
            SluiceError::Store { source, .. } => store_retry_hint(source),
            SluiceError::Execution { source, .. } => match source.find_root() {
                DataFusionError::ObjectStore(e) => store_retry_hint(e),
                DataFusionError::IoError(e) => io_retry_hint(e),
                _ => RetryHint::Never,
            },
            _ => RetryHint::Never,
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
                source: err,
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
                ..
            } => SluiceError::Source {
                source_name: name.to_string(),
                file,
                line,
                message,
                retry,
            },
            other => other,
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

/// Whether an object store operation that failed this way may succeed when
/// tried again: throttling, timeouts and broken connections may; a missing
/// object, a refused permission or a bad path will not.
pub fn store_retry_hint(e: &object_store::Error) -> RetryHint {
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
pub fn io_retry_hint(e: &std::io::Error) -> RetryHint {
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
    if carries_sluice_error(&err) {
        return err;
    }
    SluiceError::Execution {
        component: Some(component.clone()),
        source: err,
    }
    .into_datafusion()
}

fn carries_sluice_error(err: &DataFusionError) -> bool {
    match err {
        DataFusionError::External(e) => {
            e.downcast_ref::<SluiceError>().is_some()
                || e.downcast_ref::<DataFusionError>()
                    .is_some_and(carries_sluice_error)
        }
        DataFusionError::Context(_, inner) => carries_sluice_error(inner),
        DataFusionError::Shared(shared) => carries_sluice_error(shared),
        _ => false,
    }
}

/// Finds a [`SluiceError`] inside DataFusion's error wrappers (`External`,
/// `Context`, `Shared`), returning the original error when there is none.
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
        DataFusionError::Shared(shared) => match shared.find_root() {
            DataFusionError::External(e) => match e.downcast_ref::<SluiceError>() {
                Some(s) => Ok(clone_for_report(s)),
                None => Err(DataFusionError::Shared(shared)),
            },
            _ => Err(DataFusionError::Shared(shared)),
        },
        other => Err(other),
    }
}

/// A shared error can't be moved out; rebuild a report-equivalent copy.
fn clone_for_report(err: &SluiceError) -> SluiceError {
    match err {
        SluiceError::Source {
            source_name,
            file,
            line,
            message,
            retry,
        } => SluiceError::Source {
            source_name: source_name.clone(),
            file: file.clone(),
            line: *line,
            message: message.clone(),
            retry: *retry,
        },
        SluiceError::Sink {
            sink,
            url,
            message,
            retry,
        } => SluiceError::Sink {
            sink: sink.clone(),
            url: url.clone(),
            message: message.clone(),
            retry: *retry,
        },
        SluiceError::Spec(issues) => SluiceError::Spec(issues.clone()),
        SluiceError::Stage {
            stage,
            code,
            message,
            retry,
        } => SluiceError::Stage {
            stage: stage.clone(),
            code: *code,
            message: message.clone(),
            retry: *retry,
        },
        SluiceError::Plan {
            stage,
            file,
            message,
        } => SluiceError::Plan {
            stage: stage.clone(),
            file: file.clone(),
            message: message.clone(),
        },
        SluiceError::Execution { component, source } => SluiceError::Execution {
            component: component.clone(),
            source: DataFusionError::Execution(source.to_string()),
        },
        other => SluiceError::Execution {
            component: None,
            source: DataFusionError::Execution(other.to_string()),
        },
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
