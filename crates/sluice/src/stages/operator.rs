//! The `operator` stage: a physical operator over the stage's input.

use serde::Deserialize;

/// `[stages.<name>] kind = "operator"`: a built-in operator (`dedupe`,
/// `window`) or one registered with
/// [`Engine::register_operator`](crate::Engine::register_operator), over
/// one input. Every other key of the table is the operator's own option,
/// checked by the operator (see [`crate::operators`]).
#[derive(Debug, Clone, Deserialize)]
pub struct OperatorStageConfig {
    /// The source or stage it reads: exactly one.
    pub inputs: Vec<String>,
    /// The operator's name.
    pub operator: String,
    /// Free text shown by `sluice explain`.
    #[serde(default)]
    pub description: Option<String>,
    /// The operator's options: the rest of the table.
    #[serde(flatten)]
    pub options: toml::Table,
}
