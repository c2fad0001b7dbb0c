//! Stages: the transformations between sources and sinks.
//!
//! Transforms are verbs: `sql`, a SELECT over the stage's inputs (chains of
//! SQL stages compile into one DataFusion plan), `external`, a Go or Rust
//! program speaking the stage protocol, planned as an operator in that
//! plan, and `operator`, a physical operator with state of its own
//! ([`crate::operators`]).

pub(crate) mod external;
pub(crate) mod operator;
pub(crate) mod snapshot;
pub(crate) mod sql;

pub use external::ExternalStageConfig;
pub use operator::OperatorStageConfig;
pub use sql::{Scope, SqlStageConfig};

use crate::spec::decode_table;

/// The config of one stage, by kind.
#[derive(Debug, Clone)]
pub enum StageConfig {
    /// `kind = "sql"`.
    Sql(SqlStageConfig),
    /// `kind = "external"`: a Go or Rust program over Arrow Flight.
    External(ExternalStageConfig),
    /// `kind = "operator"`: a physical operator (`dedupe`, `window`, yours).
    Operator(OperatorStageConfig),
}

impl StageConfig {
    /// Every stage kind, as written in pipeline files.
    pub const KINDS: [&'static str; 3] = ["sql", "external", "operator"];

    /// Decodes the table of a stage of the given kind.
    pub fn from_table(kind: &str, table: toml::Table) -> Result<Self, String> {
        match kind {
            "sql" => decode_table(table).map(StageConfig::Sql),
            "external" => decode_table(table).map(StageConfig::External),
            "operator" => decode_table(table).map(StageConfig::Operator),
            other => Err(format!("unknown kind `{other}`")),
        }
    }

    /// The names this stage reads.
    pub fn inputs(&self) -> &[String] {
        match self {
            StageConfig::Sql(c) => &c.inputs,
            StageConfig::External(c) => &c.inputs,
            StageConfig::Operator(c) => &c.inputs,
        }
    }

    /// The kind as written in pipeline files.
    pub fn kind(&self) -> &'static str {
        match self {
            StageConfig::Sql(_) => "sql",
            StageConfig::External(_) => "external",
            StageConfig::Operator(_) => "operator",
        }
    }

    /// The declared output schema as `(name, version)`, if any.
    pub fn declared_schema(&self) -> Option<(String, Option<String>)> {
        match self {
            StageConfig::Sql(c) => c.schema.as_ref().map(|s| match s.split_once('@') {
                Some((n, v)) => (n.to_string(), Some(v.to_string())),
                None => (s.clone(), None),
            }),
            StageConfig::External(_) | StageConfig::Operator(_) => None,
        }
    }
}
