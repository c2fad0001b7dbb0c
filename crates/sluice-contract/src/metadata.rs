//! Schema metadata keys and the typed values sluice stores under them.
//!
//! Every batch a sluice sink writes carries these keys in its Arrow schema
//! metadata, and so in the Parquet footer (`ARROW:schema` and the file's
//! key-value metadata). Values are JSON so any reader (pyarrow, DuckDB, a Go
//! stage) can decode them without a sluice library.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// `name@version` of the pipeline that produced the data.
pub const PIPELINE: &str = "sluice.pipeline";
/// Logical name of the schema of the data (a stage's declared output schema).
pub const SCHEMA: &str = "sluice.schema";
/// Version of [`SCHEMA`].
pub const SCHEMA_VERSION: &str = "sluice.schema.version";
/// JSON array of [`LineageEntry`]: every step the data went through, oldest first.
pub const LINEAGE: &str = "sluice.lineage";
/// JSON [`Provenance`]: where the data came from.
pub const PROVENANCE: &str = "sluice.provenance";

/// All keys sluice owns in schema metadata.
pub const ALL_KEYS: [&str; 5] = [PIPELINE, SCHEMA, SCHEMA_VERSION, LINEAGE, PROVENANCE];

/// One step of the path data took: a source, a stage or a sink.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineageEntry {
    /// Name of the source, stage or sink inside its pipeline.
    pub stage: String,
    /// What it is: `source:csv`, `sql`, `external`, `sink:parquet`, ...
    pub kind: String,
    /// Version of the pipeline (or of the external stage) that ran it.
    pub version: String,
    /// Implementation language: `sql`, `rust`, `go`, ...
    pub language: String,
}

/// Where one source's data came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceProvenance {
    /// Source name in the pipeline.
    pub source: String,
    /// Source kind (`csv`, `tpch`, ...).
    pub kind: String,
    /// Object URIs read, or a generator description (`tpch://lineitem?sf=1`).
    pub uris: Vec<String>,
    /// Generator or reader parameters that determine the data.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub parameters: serde_json::Map<String, serde_json::Value>,
    /// Provenance recorded by whoever wrote the input, when it was sluice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<Box<Provenance>>,
}

/// Where the data of a sink came from: every source that feeds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Provenance {
    /// `name@version` of the pipeline.
    pub pipeline: String,
    /// One entry per source feeding the output.
    pub sources: Vec<SourceProvenance>,
}

/// Reads the lineage stored in schema metadata, if any.
///
/// Returns `Ok(None)` when the key is absent and an error message when it is
/// present but not a valid lineage array.
pub fn lineage_from(
    metadata: &HashMap<String, String>,
) -> Result<Option<Vec<LineageEntry>>, String> {
    match metadata.get(LINEAGE) {
        None => Ok(None),
        Some(raw) => serde_json::from_str(raw)
            .map(Some)
            .map_err(|e| format!("metadata key `{LINEAGE}` is not a lineage array: {e}")),
    }
}

/// Reads the provenance stored in schema metadata, if any.
pub fn provenance_from(metadata: &HashMap<String, String>) -> Result<Option<Provenance>, String> {
    match metadata.get(PROVENANCE) {
        None => Ok(None),
        Some(raw) => serde_json::from_str(raw)
            .map(Some)
            .map_err(|e| format!("metadata key `{PROVENANCE}` is not a provenance object: {e}")),
    }
}

/// Removes every sluice key from a metadata map, leaving user keys alone.
pub fn strip_sluice_keys(metadata: &mut HashMap<String, String>) {
    for key in ALL_KEYS {
        metadata.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lineage_round_trips_through_metadata() {
        let lineage = vec![
            LineageEntry {
                stage: "orders".into(),
                kind: "source:csv".into(),
                version: "1".into(),
                language: "rust".into(),
            },
            LineageEntry {
                stage: "clean".into(),
                kind: "sql".into(),
                version: "1".into(),
                language: "sql".into(),
            },
        ];
        let mut md = HashMap::new();
        md.insert(
            LINEAGE.to_string(),
            serde_json::to_string(&lineage).unwrap(),
        );
        assert_eq!(lineage_from(&md).unwrap(), Some(lineage));
        md.insert(LINEAGE.to_string(), "{not json".into());
        let err = lineage_from(&md).unwrap_err();
        assert!(err.contains(LINEAGE), "{err}");
    }

    #[test]
    fn strip_keeps_user_keys() {
        let mut md = HashMap::from([
            (SCHEMA.to_string(), "x".to_string()),
            ("owner".to_string(), "etl".to_string()),
        ]);
        strip_sluice_keys(&mut md);
        assert_eq!(md.len(), 1);
        assert!(md.contains_key("owner"));
    }
}
