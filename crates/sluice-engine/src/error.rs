//! The engine's error type.
//!
//! Every error says what went wrong and where: the pipeline file and key for
//! configuration mistakes, the stage for planning errors, the source, file and
//! line for bad input. Runtime errors carry a [`RetryHint`] so a supervisor can
//! tell a flaky store from a bad row.

use std::fmt;
use std::path::PathBuf;

use datafusion::error::DataFusionError;

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
    #[error("execution failed{}: {source}", .context.as_ref().map(|c| format!(" in {c}")).unwrap_or_default())]
    Execution {
        /// Which sink's plan failed, if known.
        context: Option<String>,
        /// DataFusion's error.
        #[source]
        source: DataFusionError,
    },

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
            SluiceError::Store { .. } => RetryHint::WithBackoff,
            SluiceError::Execution { source, .. } => match source.find_root() {
                DataFusionError::ObjectStore(_) | DataFusionError::IoError(_) => {
                    RetryHint::WithBackoff
                }
                _ => RetryHint::Never,
            },
            _ => RetryHint::Never,
        }
    }

    /// Wraps a DataFusion error raised while running `context`, unwrapping a
    /// sluice error that an operator smuggled through DataFusion.
    pub fn from_datafusion(err: DataFusionError, context: Option<&str>) -> Self {
        match take_sluice_error(err) {
            Ok(sluice) => sluice,
            Err(err) => SluiceError::Execution {
                context: context.map(str::to_string),
                source: err,
            },
        }
    }

    /// Wraps this error so it can travel through DataFusion's operators.
    pub fn into_datafusion(self) -> DataFusionError {
        DataFusionError::External(Box::new(self))
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
        other => SluiceError::Internal(other.to_string()),
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
        let back = SluiceError::from_datafusion(df, Some("sink out"));
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
