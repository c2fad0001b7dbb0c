//! Sink configs: `input` (every sink) and the file keys (every file sink),
//! decoded once, around each kind's own keys; and the one list of kinds.

use std::sync::Arc;

use serde::Deserialize;

use super::blackhole::BlackholeSink;
use super::file::{CsvSinkConfig, FileSink, JsonlSinkConfig, ParquetSinkConfig};
use super::kafka::{KafkaSink, KafkaSinkConfig};
use super::stdout::{StdoutSink, StdoutSinkConfig};
use super::{Sink, SinkContext, SinkFactory};
use crate::error::Result;
use crate::spec::keys::{fields_of, split_off, with_all_keys};
use crate::spec::{ByteSize, PipelineSpec, decode_table};
use crate::storage::StoreRegistry;

/// `[sinks.<name>]`: the stage or source it writes, and its kind.
#[derive(Debug, Clone)]
pub struct SinkConfig {
    /// `input`: the stage or source it writes.
    pub input: String,
    /// `kind` and the kind's own keys.
    pub kind: SinkKind,
}

/// A sink's kind and its own keys.
#[derive(Debug, Clone)]
pub enum SinkKind {
    /// `kind = "parquet"`.
    Parquet(ParquetSinkConfig),
    /// `kind = "delta"`: a Delta Lake table (Parquet files, Delta's log).
    Delta(DeltaSinkConfig),
    /// `kind = "csv"`.
    Csv(CsvSinkConfig),
    /// `kind = "jsonl"`.
    Jsonl(JsonlSinkConfig),
    /// `kind = "stdout"`.
    Stdout(StdoutSinkConfig),
    /// `kind = "kafka"`.
    Kafka(KafkaSinkConfig),
    /// `kind = "blackhole"`: reads every row and keeps none.
    Blackhole,
    /// A sink added in code.
    Custom(Arc<dyn SinkFactory>),
}

/// `kind = "delta"` has the parquet sink's keys: its files are written the
/// same way; only the log differs.
pub type DeltaSinkConfig = ParquetSinkConfig;

/// The keys every file sink (`parquet`, `csv`, `jsonl`) has: where the
/// files go and how they are cut.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSinkKeys {
    /// Folder or URL the files and the commit log go to.
    pub url: String,
    /// Hive partition columns (`col=value/` folders; the column is not
    /// repeated in the files; nulls go to `__HIVE_DEFAULT_PARTITION__`).
    #[serde(default)]
    pub partition_by: Vec<String>,
    /// A file is closed and the next one started past this size (default 128MiB).
    #[serde(default = "default_target")]
    pub target_file_size: ByteSize,
}

fn default_target() -> ByteSize {
    ByteSize(128 << 20)
}

impl FileSinkKeys {
    /// Files at `url`, unpartitioned, of the default size.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            partition_by: Vec::new(),
            target_file_size: default_target(),
        }
    }
}

impl Default for FileSinkKeys {
    fn default() -> Self {
        Self::new("")
    }
}

impl SinkConfig {
    /// A sink of `kind` writing `input`.
    pub fn new(input: impl Into<String>, kind: SinkKind) -> Self {
        Self {
            input: input.into(),
            kind,
        }
    }

    /// A Parquet sink writing `input` to `url`, with defaults.
    pub fn parquet(input: impl Into<String>, url: impl Into<String>) -> Self {
        Self::new(input, SinkKind::Parquet(ParquetSinkConfig::new(url)))
    }

    /// The kind as written in pipeline files.
    pub fn kind_name(&self) -> &'static str {
        match &self.kind {
            SinkKind::Parquet(_) => "parquet",
            SinkKind::Delta(_) => "delta",
            SinkKind::Csv(_) => "csv",
            SinkKind::Jsonl(_) => "jsonl",
            SinkKind::Stdout(_) => "stdout",
            SinkKind::Kafka(_) => "kafka",
            SinkKind::Blackhole => "blackhole",
            SinkKind::Custom(_) => "custom",
        }
    }

    /// The file keys, for a file sink.
    pub fn files(&self) -> Option<&FileSinkKeys> {
        match &self.kind {
            SinkKind::Parquet(c) | SinkKind::Delta(c) => Some(&c.files),
            SinkKind::Csv(c) => Some(&c.files),
            SinkKind::Jsonl(c) => Some(&c.files),
            SinkKind::Stdout(_)
            | SinkKind::Kafka(_)
            | SinkKind::Blackhole
            | SinkKind::Custom(_) => None,
        }
    }

    /// Decodes a `[sinks.<name>]` table (without its `kind`).
    pub(crate) fn from_table(
        kind: &str,
        mut table: toml::Table,
    ) -> std::result::Result<Self, String> {
        let Some(entry) = KINDS.iter().find(|k| k.name == kind) else {
            return Err(format!("unknown kind `{kind}`"));
        };
        let input = match table.remove("input") {
            Some(toml::Value::String(s)) => s,
            Some(other) => {
                return Err(format!(
                    "invalid type: {}, expected a string for key `input`",
                    other.type_str()
                ));
            }
            None => return Err("missing field `input`".into()),
        };
        let files = if entry.files {
            let keys = split_off(&mut table, fields_of::<FileSinkKeys>());
            Some(decode_table::<FileSinkKeys>(keys)?)
        } else {
            None
        };
        let mut kind = (entry.decode)(table).map_err(|e| with_all_keys(e, &entry.all_keys()))?;
        if let Some(files) = files {
            match &mut kind {
                SinkKind::Parquet(c) | SinkKind::Delta(c) => c.files = files,
                SinkKind::Csv(c) => c.files = files,
                SinkKind::Jsonl(c) => c.files = files,
                SinkKind::Stdout(_)
                | SinkKind::Kafka(_)
                | SinkKind::Blackhole
                | SinkKind::Custom(_) => {}
            }
        }
        Ok(Self { input, kind })
    }

    /// Opens the sink.
    pub(crate) fn open(
        &self,
        name: &str,
        spec: &PipelineSpec,
        stores: &StoreRegistry,
    ) -> Result<Arc<dyn Sink>> {
        match &self.kind {
            SinkKind::Parquet(c) => FileSink::open_parquet(name, c, spec, stores),
            SinkKind::Delta(c) => open_delta(name, c, spec, stores),
            SinkKind::Csv(c) => FileSink::open_csv(name, c, spec, stores),
            SinkKind::Jsonl(c) => FileSink::open_jsonl(name, c, spec, stores),
            SinkKind::Stdout(c) => Ok(Arc::new(StdoutSink::new(name, c.clone()))),
            SinkKind::Kafka(c) => KafkaSink::open(name, c, spec, stores),
            SinkKind::Blackhole => Ok(Arc::new(BlackholeSink::new(name))),
            SinkKind::Custom(factory) => factory.open(&SinkContext { name, spec }),
        }
    }
}

#[cfg(feature = "delta")]
fn open_delta(
    name: &str,
    c: &DeltaSinkConfig,
    spec: &PipelineSpec,
    stores: &StoreRegistry,
) -> Result<Arc<dyn Sink>> {
    super::delta::DeltaSink::open(name, c, spec, stores)
}

#[cfg(not(feature = "delta"))]
fn open_delta(
    name: &str,
    _: &DeltaSinkConfig,
    spec: &PipelineSpec,
    _: &StoreRegistry,
) -> Result<Arc<dyn Sink>> {
    Err(crate::error::SluiceError::spec(spec.issue(
        format!("sinks.{name}.kind"),
        "sluice was built without its `delta` feature (on by default)",
    )))
}

/// A kind of sink a pipeline file can name.
pub(crate) struct Kind {
    /// `kind = "<name>"`.
    pub name: &'static str,
    /// Takes the [`FileSinkKeys`].
    pub files: bool,
    /// Its own keys.
    pub keys: fn() -> &'static [&'static str],
    decode: fn(toml::Table) -> std::result::Result<SinkKind, String>,
}

impl Kind {
    /// Every key a table of this kind may have (besides `kind`).
    pub(crate) fn all_keys(&self) -> Vec<&'static str> {
        let mut keys = vec!["input"];
        if self.files {
            keys.extend(fields_of::<FileSinkKeys>());
        }
        keys.extend((self.keys)());
        keys
    }
}

/// `kind = "blackhole"` has no keys of its own.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NoKeys {}

/// Every sink kind a pipeline file can name: the one list.
pub(crate) const KINDS: &[Kind] = &[
    Kind {
        name: "parquet",
        files: true,
        keys: fields_of::<ParquetSinkConfig>,
        decode: |t| decode_table(t).map(SinkKind::Parquet),
    },
    Kind {
        name: "delta",
        files: true,
        keys: fields_of::<DeltaSinkConfig>,
        decode: |t| decode_table(t).map(SinkKind::Delta),
    },
    Kind {
        name: "csv",
        files: true,
        keys: fields_of::<CsvSinkConfig>,
        decode: |t| decode_table(t).map(SinkKind::Csv),
    },
    Kind {
        name: "jsonl",
        files: true,
        keys: fields_of::<JsonlSinkConfig>,
        decode: |t| decode_table(t).map(SinkKind::Jsonl),
    },
    Kind {
        name: "stdout",
        files: false,
        keys: fields_of::<StdoutSinkConfig>,
        decode: |t| decode_table(t).map(SinkKind::Stdout),
    },
    Kind {
        name: "kafka",
        files: false,
        keys: fields_of::<KafkaSinkConfig>,
        decode: |t| decode_table(t).map(SinkKind::Kafka),
    },
    Kind {
        name: "blackhole",
        files: false,
        keys: fields_of::<NoKeys>,
        decode: |t| decode_table::<NoKeys>(t).map(|_| SinkKind::Blackhole),
    },
];
