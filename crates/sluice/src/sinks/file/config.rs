//! Configs of the file sinks.

use serde::Deserialize;

use super::super::FileSinkKeys;

fn default_compression() -> String {
    "zstd(3)".into()
}

fn default_row_group_rows() -> usize {
    1 << 20
}

fn default_true() -> bool {
    true
}

fn default_delimiter() -> String {
    ",".into()
}

/// `[sinks.<name>] kind = "parquet"`: Parquet files with a commit log.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParquetSinkConfig {
    /// `url`, `partition_by`, `target_file_size`: decoded once for every file sink.
    #[serde(skip)]
    pub files: FileSinkKeys,
    /// The contract readers of this output rely on: a registry schema
    /// `name@version` that `validate` checks the sink's input against.
    #[serde(default)]
    pub schema: Option<String>,
    /// Codec and level: `zstd(3)` (default), `zstd(1)`, `snappy`, `lz4`,
    /// `gzip(6)`, `brotli(4)` or `uncompressed`.
    #[serde(default = "default_compression")]
    pub compression: String,
    /// Rows per row group at most (default 1048576).
    #[serde(default = "default_row_group_rows")]
    pub row_group_rows: usize,
}

impl ParquetSinkConfig {
    /// A config writing to `url`, with defaults.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            files: FileSinkKeys::new(url),
            schema: None,
            compression: default_compression(),
            row_group_rows: default_row_group_rows(),
        }
    }
}

/// `[sinks.<name>] kind = "csv"`: CSV files with a commit log.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CsvSinkConfig {
    /// `url`, `partition_by`, `target_file_size`: decoded once for every file sink.
    #[serde(skip)]
    pub files: FileSinkKeys,
    /// Field delimiter, one character (default `,`).
    #[serde(default = "default_delimiter")]
    pub delimiter: String,
    /// Write a header line in every file (default true).
    #[serde(default = "default_true")]
    pub header: bool,
}

/// `[sinks.<name>] kind = "jsonl"`: JSON-lines files with a commit log.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonlSinkConfig {
    /// `url`, `partition_by`, `target_file_size`: decoded once for every file sink.
    #[serde(skip)]
    pub files: FileSinkKeys,
}
