//! Configs of the file sinks.

use serde::Deserialize;

use crate::spec::ByteSize;

fn default_compression() -> String {
    "zstd(3)".into()
}

fn default_target() -> ByteSize {
    ByteSize(128 << 20)
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
    /// The stage or source to write.
    pub input: String,
    /// Folder or URL (`s3://bucket/out/`, `memory:///out`) to write to,
    /// relative to the pipeline file.
    pub url: String,
    /// The contract readers of this output rely on: a registry schema
    /// `name@version` that `validate` checks the sink's input against.
    #[serde(default)]
    pub schema: Option<String>,
    /// Codec and level: `zstd(3)` (default), `zstd(1)`, `snappy`, `lz4`,
    /// `gzip(6)`, `brotli(4)` or `uncompressed`.
    #[serde(default = "default_compression")]
    pub compression: String,
    /// Columns to partition by, in hive layout (`col=value/`); they are not
    /// repeated inside the files.
    #[serde(default)]
    pub partition_by: Vec<String>,
    /// A file is closed and a new one started past this size (default 128MiB).
    #[serde(default = "default_target")]
    pub target_file_size: ByteSize,
    /// Rows per row group at most (default 1048576).
    #[serde(default = "default_row_group_rows")]
    pub row_group_rows: usize,
}

impl ParquetSinkConfig {
    /// A config writing `input` to `url` with defaults.
    pub fn new(input: impl Into<String>, url: impl Into<String>) -> Self {
        Self {
            input: input.into(),
            url: url.into(),
            schema: None,
            compression: default_compression(),
            partition_by: Vec::new(),
            target_file_size: default_target(),
            row_group_rows: default_row_group_rows(),
        }
    }
}

/// `[sinks.<name>] kind = "csv"`: CSV files with a commit log.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CsvSinkConfig {
    /// The stage or source to write.
    pub input: String,
    /// Folder or URL to write to.
    pub url: String,
    /// Field delimiter, one character (default `,`).
    #[serde(default = "default_delimiter")]
    pub delimiter: String,
    /// Write a header line in every file (default true).
    #[serde(default = "default_true")]
    pub header: bool,
    /// Columns to partition by, in hive layout.
    #[serde(default)]
    pub partition_by: Vec<String>,
    /// A file is closed and a new one started past this size (default 128MiB).
    #[serde(default = "default_target")]
    pub target_file_size: ByteSize,
}

/// `[sinks.<name>] kind = "jsonl"`: JSON-lines files with a commit log.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonlSinkConfig {
    /// The stage or source to write.
    pub input: String,
    /// Folder or URL to write to.
    pub url: String,
    /// Columns to partition by, in hive layout.
    #[serde(default)]
    pub partition_by: Vec<String>,
    /// A file is closed and a new one started past this size (default 128MiB).
    #[serde(default = "default_target")]
    pub target_file_size: ByteSize,
}
