//! Configs of the file sources.

use serde::Deserialize;

use crate::ops::line_scan::{Compression, CsvOptions};
use crate::spec::ColumnSpec;

fn default_true() -> bool {
    true
}

fn default_delimiter() -> String {
    ",".into()
}

fn default_quote() -> String {
    "\"".into()
}

fn default_infer_rows() -> usize {
    1000
}

/// `[sources.<name>] kind = "csv"`: delimited text files.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CsvSourceConfig {
    /// A file, a folder, a glob (`data/*.csv`) or a URL (`s3://bucket/in/`),
    /// relative to the pipeline file.
    pub path: String,
    /// Declared columns (`[{ name = "id", type = "bigint" }, ...]`); inferred
    /// from the first file when absent.
    #[serde(default)]
    pub columns: Option<Vec<ColumnSpec>>,
    /// Read as this registry schema (`name@version`, from `settings.schemas`)
    /// instead of declaring or inferring columns.
    #[serde(default)]
    pub schema: Option<String>,
    /// Whether the first line of every file is a header (default true).
    #[serde(default = "default_true")]
    pub header: bool,
    /// Field delimiter, one character (default `,`).
    #[serde(default = "default_delimiter")]
    pub delimiter: String,
    /// Quote character (default `"`).
    #[serde(default = "default_quote")]
    pub quote: String,
    /// Escape character inside quoted values, if any.
    #[serde(default)]
    pub escape: Option<String>,
    /// Set when quoted values may contain newlines; large files are then read
    /// by one partition each instead of being split.
    #[serde(default)]
    pub newlines_in_values: bool,
    /// `auto` (by extension), `none`, `gzip` or `zstd`.
    #[serde(default)]
    pub compression: Compression,
    /// Rows sampled from the first file to infer the schema (default 1000).
    #[serde(default = "default_infer_rows")]
    pub infer_rows: usize,
}

impl CsvSourceConfig {
    /// A config reading `path` with defaults.
    pub fn new(path: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            columns: None,
            schema: None,
            header: true,
            delimiter: default_delimiter(),
            quote: default_quote(),
            escape: None,
            newlines_in_values: false,
            compression: Compression::Auto,
            infer_rows: default_infer_rows(),
        }
    }

    /// The dialect, or the offending key and why.
    pub(crate) fn options(&self) -> Result<CsvOptions, (&'static str, String)> {
        let one_byte = |key: &'static str, v: &str| -> Result<u8, (&'static str, String)> {
            let unescaped = if v == "\\t" { "\t" } else { v };
            match unescaped.as_bytes() {
                [b] => Ok(*b),
                _ => Err((
                    key,
                    format!("`{key}` must be exactly one ASCII character, got {v:?}"),
                )),
            }
        };
        Ok(CsvOptions {
            has_header: self.header,
            delimiter: one_byte("delimiter", &self.delimiter)?,
            quote: one_byte("quote", &self.quote)?,
            escape: self
                .escape
                .as_deref()
                .map(|e| one_byte("escape", e))
                .transpose()?,
            newlines_in_values: self.newlines_in_values,
        })
    }
}

/// `[sources.<name>] kind = "jsonl"`: one JSON object per line.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonlSourceConfig {
    /// A file, a folder, a glob or a URL, relative to the pipeline file.
    pub path: String,
    /// Declared columns; inferred from the first file when absent.
    #[serde(default)]
    pub columns: Option<Vec<ColumnSpec>>,
    /// Read as this registry schema (`name@version`, from `settings.schemas`)
    /// instead of declaring or inferring columns.
    #[serde(default)]
    pub schema: Option<String>,
    /// `auto` (by extension), `none`, `gzip` or `zstd`.
    #[serde(default)]
    pub compression: Compression,
    /// Lines sampled from the first file to infer the schema (default 1000).
    #[serde(default = "default_infer_rows")]
    pub infer_rows: usize,
}

impl JsonlSourceConfig {
    /// A config reading `path` with defaults.
    pub fn new(path: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            columns: None,
            schema: None,
            compression: Compression::Auto,
            infer_rows: default_infer_rows(),
        }
    }
}

/// `[sources.<name>] kind = "parquet"`: Parquet files (or a sluice sink's output).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParquetSourceConfig {
    /// A file, a folder, a glob or a URL, relative to the pipeline file.
    pub path: String,
    /// Read every file as this registry schema (`name@version`): files written
    /// at earlier versions read with missing nullable columns as NULL and
    /// widened types (`docs/schemas.md`); a file that cannot is refused.
    #[serde(default)]
    pub schema: Option<String>,
}

/// `[sources.<name>] kind = "arrow_ipc"`: Arrow IPC (Feather v2) files.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArrowIpcSourceConfig {
    /// A file, a folder, a glob or a URL, relative to the pipeline file.
    pub path: String,
}

fn default_poll() -> crate::spec::HumanDuration {
    crate::spec::HumanDuration(std::time::Duration::from_millis(500))
}

/// Format of the files a `dir` source tails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DirFormat {
    /// CSV (with a header line).
    Csv,
    /// JSON lines.
    Jsonl,
    /// Parquet.
    Parquet,
}

/// `[sources.<name>] kind = "dir"`: tails a folder or object-store prefix.
///
/// Every file that appears is read exactly once, in arrival order (last
/// modified, then name); a file must be complete when it appears (write it
/// elsewhere and rename it in). The stream never ends.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirSourceConfig {
    /// The folder, glob or URL prefix to watch, relative to the pipeline file.
    pub path: String,
    /// `csv`, `jsonl` or `parquet`.
    pub format: DirFormat,
    /// Declared columns (csv, jsonl); needed when the folder starts empty.
    #[serde(default)]
    pub columns: Option<Vec<ColumnSpec>>,
    /// CSV: the first line of every file is a header (default true).
    #[serde(default = "default_true")]
    pub header: bool,
    /// CSV field delimiter (default `,`).
    #[serde(default = "default_delimiter")]
    pub delimiter: String,
    /// `auto` (by extension), `none`, `gzip` or `zstd` (csv, jsonl).
    #[serde(default)]
    pub compression: Compression,
    /// How often the folder is listed while waiting for files (default 500ms).
    #[serde(default = "default_poll")]
    pub poll_interval: crate::spec::HumanDuration,
}
