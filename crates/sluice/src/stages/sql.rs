//! The `sql` stage: a SELECT over the stage's inputs.

use serde::Deserialize;

/// `[stages.<name>] kind = "sql"`: a SQL query over the stage's inputs.
///
/// The query may refer only to the names in `inputs` (sources or other
/// stages); `sluice validate` refuses any other table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqlStageConfig {
    /// Sources or stages this stage reads, by name.
    pub inputs: Vec<String>,
    /// The query, inline. Exactly one of `query` and `sql` is required.
    #[serde(default)]
    pub query: Option<String>,
    /// Path of a `.sql` file holding the query, relative to the pipeline file.
    #[serde(default)]
    pub sql: Option<String>,
    /// Declared output schema as `name@version`, written into output metadata
    /// (default: the stage name at the pipeline's version).
    #[serde(default)]
    pub schema: Option<String>,
    /// Free text shown by `sluice explain`.
    #[serde(default)]
    pub description: Option<String>,
    /// `"epoch"`: aggregates and joins over a stream are meant per epoch
    /// (each epoch's own answer); without it `validate` refuses them unless
    /// they are windowed by event time or join a lookup table.
    #[serde(default)]
    pub scope: Scope,
}

/// What an sql stage's aggregates and joins cover.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// The whole stream: only windowed (or lookup) aggregates and joins.
    #[default]
    Stream,
    /// Each epoch on its own.
    Epoch,
}
