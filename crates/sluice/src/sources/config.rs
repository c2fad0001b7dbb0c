//! Source configs: the keys every kind shares, decoded once, around each
//! kind's own keys; and the one list of kinds.
//!
//! `lookup`, `on_error` and `checks` mean the same for every kind that takes
//! them, and the engine (not the kind) applies `lookup` and `checks`, so they
//! live in [`SourceConfig`]. Each kind says which of them it takes; a file
//! naming one its kind does not take is refused like any unknown key.

use std::sync::Arc;

use serde::Deserialize;

use super::delta::{self, DeltaSourceConfig};
use super::file::{
    ArrowIpcSourceConfig, CsvSourceConfig, DirSourceConfig, JsonlSourceConfig, ParquetSourceConfig,
};
use super::generator::GeneratorSourceConfig;
use super::kafka::{self, KafkaFormat, KafkaSourceConfig};
use super::nexmark::NexmarkSourceConfig;
use super::stdin::StdinSourceConfig;
use super::tpch::TpchSourceConfig;
use super::{AnySource, SourceContext, SourceFactory};
use crate::dead_letter::OnError;
use crate::error::Result;
use crate::spec::decode_table;
use crate::spec::keys::{fields_of, split_off, unknown_key, with_all_keys};
use crate::spec::values::HumanDuration;
use crate::state::clock::EventTimeKeys;
use crate::state::{EventTimeConfig, Late};

/// `[sources.<name>]`: see the module docs.
#[derive(Debug, Clone)]
pub struct SourceConfig {
    /// `kind` and the kind's own keys.
    pub kind: SourceKind,
    /// `lookup`: read whole in every epoch instead of being cut into slices
    /// (a dimension joined to a stream).
    pub lookup: bool,
    /// `on_error`: what a row the source cannot read, or that breaks a
    /// check, does.
    pub on_error: OnError,
    /// `checks`: SQL predicates over the columns every row must pass.
    pub checks: Vec<String>,
    /// `event_time`, `watermark`, `idle_timeout`, `late`: the column the
    /// rows are timed by, and how far behind the watermark stays
    /// (see [`crate::state::clock`]).
    pub event_time: Option<EventTimeConfig>,
}

/// A source's kind and its own keys.
#[derive(Debug, Clone)]
pub enum SourceKind {
    /// `kind = "csv"`.
    Csv(CsvSourceConfig),
    /// `kind = "jsonl"`.
    Jsonl(JsonlSourceConfig),
    /// `kind = "parquet"`.
    Parquet(ParquetSourceConfig),
    /// `kind = "arrow_ipc"`.
    ArrowIpc(ArrowIpcSourceConfig),
    /// `kind = "delta"`: one version of a Delta table.
    Delta(DeltaSourceConfig),
    /// `kind = "tpch"`.
    Tpch(TpchSourceConfig),
    /// `kind = "generator"`.
    Generator(GeneratorSourceConfig),
    /// `kind = "nexmark"`.
    Nexmark(NexmarkSourceConfig),
    /// `kind = "dir"`.
    Dir(DirSourceConfig),
    /// `kind = "stdin"`.
    Stdin(StdinSourceConfig),
    /// `kind = "kafka"`.
    Kafka(KafkaSourceConfig),
    /// A source added in code.
    Custom(CustomSource),
}

/// A source implemented in Rust by the embedding program.
#[derive(Debug, Clone)]
pub struct CustomSource(pub Arc<dyn SourceFactory>);

impl From<SourceKind> for SourceConfig {
    /// A source of `kind` with the shared keys at their defaults.
    fn from(kind: SourceKind) -> Self {
        Self {
            kind,
            lookup: false,
            on_error: OnError::Fail,
            checks: Vec::new(),
            event_time: None,
        }
    }
}

/// A config of one kind is a source config with the shared keys at their defaults.
macro_rules! kind_into_config {
    ($($config:ident => $variant:ident),* $(,)?) => {$(
        impl From<$config> for SourceConfig {
            fn from(c: $config) -> Self {
                SourceKind::$variant(c).into()
            }
        }
    )*};
}

kind_into_config! {
    CsvSourceConfig => Csv,
    JsonlSourceConfig => Jsonl,
    ParquetSourceConfig => Parquet,
    ArrowIpcSourceConfig => ArrowIpc,
    TpchSourceConfig => Tpch,
    GeneratorSourceConfig => Generator,
    NexmarkSourceConfig => Nexmark,
    DirSourceConfig => Dir,
    StdinSourceConfig => Stdin,
    KafkaSourceConfig => Kafka,
}

impl SourceConfig {
    /// Reads the source whole in every epoch.
    pub fn with_lookup(mut self, lookup: bool) -> Self {
        self.lookup = lookup;
        self
    }

    /// What a row the source cannot read does.
    pub fn with_on_error(mut self, on_error: OnError) -> Self {
        self.on_error = on_error;
        self
    }

    /// SQL predicates every row must pass.
    pub fn with_checks(mut self, checks: Vec<String>) -> Self {
        self.checks = checks;
        self
    }

    /// Times rows by `event_time` (see [`crate::state::clock`]).
    pub fn with_event_time(mut self, event_time: EventTimeConfig) -> Self {
        self.event_time = Some(event_time);
        self
    }

    /// The `kind`, as written in a spec.
    pub fn kind_name(&self) -> &'static str {
        self.kind.name()
    }

    /// Decodes a `[sources.<name>]` table (without its `kind`).
    pub(crate) fn from_table(
        kind: &str,
        mut table: toml::Table,
    ) -> std::result::Result<Self, String> {
        let Some(entry) = KINDS.iter().find(|k| k.name == kind) else {
            return Err(format!("unknown kind `{kind}`"));
        };
        let shared = split_off(&mut table, SHARED_KEYS);
        if let Some(key) = shared.keys().find(|k| !entry.takes(k)) {
            return Err(unknown_key(key, &entry.all_keys()));
        }
        let shared: SharedKeys = decode_table(shared)?;
        let kind = (entry.decode)(table).map_err(|e| with_all_keys(e, &entry.all_keys()))?;
        let event_time = EventTimeKeys {
            event_time: shared.event_time.or_else(|| {
                // a Kafka source with a watermark is timed by its messages'
                // timestamps unless it names a column
                let timed = shared.watermark.is_some()
                    || shared.idle_timeout.is_some()
                    || shared.late.is_some();
                match &kind {
                    SourceKind::Kafka(k) if timed => Some(
                        if k.format == KafkaFormat::Raw {
                            "timestamp"
                        } else {
                            kafka::chunk::TIMESTAMP
                        }
                        .to_string(),
                    ),
                    _ => None,
                }
            }),
            watermark: shared.watermark,
            idle_timeout: shared.idle_timeout,
            late: shared.late,
        }
        .config()
        .map_err(|(key, message)| format!("`{key}`: {message}"))?;
        Ok(Self {
            kind,
            lookup: shared.lookup,
            on_error: shared.on_error,
            checks: shared.checks,
            event_time,
        })
    }

    /// Opens the source.
    pub(crate) async fn open(&self, ctx: &SourceContext<'_>) -> Result<Box<dyn AnySource>> {
        use super::{file, generator, nexmark, stdin, tpch};
        match &self.kind {
            SourceKind::Csv(c) => file::open_csv(c, self.on_error, ctx).await,
            SourceKind::Jsonl(c) => file::open_jsonl(c, self.on_error, ctx).await,
            SourceKind::Parquet(c) => file::open_parquet(c, ctx).await,
            SourceKind::ArrowIpc(c) => file::open_arrow_ipc(c, ctx).await,
            SourceKind::Delta(c) => delta::open(c, ctx).await,
            SourceKind::Tpch(c) => tpch::open(c, ctx),
            SourceKind::Generator(c) => generator::open(c, ctx),
            SourceKind::Nexmark(c) => nexmark::open(c, ctx),
            SourceKind::Dir(c) => file::open_dir(c, self.on_error, ctx).await,
            SourceKind::Stdin(c) => stdin::open(c, self.on_error, ctx),
            SourceKind::Kafka(c) => kafka::open(c, self.on_error, ctx).await,
            SourceKind::Custom(CustomSource(factory)) => factory.open(ctx).await,
        }
    }
}

impl SourceKind {
    /// The `kind`, as written in a spec.
    pub fn name(&self) -> &'static str {
        match self {
            SourceKind::Csv(_) => "csv",
            SourceKind::Jsonl(_) => "jsonl",
            SourceKind::Parquet(_) => "parquet",
            SourceKind::ArrowIpc(_) => "arrow_ipc",
            SourceKind::Delta(_) => "delta",
            SourceKind::Tpch(_) => "tpch",
            SourceKind::Generator(_) => "generator",
            SourceKind::Nexmark(_) => "nexmark",
            SourceKind::Dir(_) => "dir",
            SourceKind::Stdin(_) => "stdin",
            SourceKind::Kafka(_) => "kafka",
            SourceKind::Custom(_) => "custom",
        }
    }
}

/// The keys every kind may share, in [`SourceConfig`].
const SHARED_KEYS: &[&str] = &[
    "lookup",
    "on_error",
    "checks",
    "event_time",
    "watermark",
    "idle_timeout",
    "late",
];

/// The event-time keys: every kind that reads rows in an order takes them.
pub(crate) const EVENT_TIME: [&str; 4] = ["event_time", "watermark", "idle_timeout", "late"];

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SharedKeys {
    #[serde(default)]
    lookup: bool,
    #[serde(default)]
    on_error: OnError,
    #[serde(default)]
    checks: Vec<String>,
    #[serde(default)]
    event_time: Option<String>,
    #[serde(default)]
    watermark: Option<HumanDuration>,
    #[serde(default)]
    idle_timeout: Option<HumanDuration>,
    #[serde(default)]
    late: Option<Late>,
}

/// A kind of source a pipeline file can name.
pub(crate) struct Kind {
    /// `kind = "<name>"`.
    pub name: &'static str,
    /// The shared keys it takes ([`SHARED_KEYS`]) besides the event-time ones.
    pub shared: &'static [&'static str],
    /// Its own keys.
    pub keys: fn() -> &'static [&'static str],
    decode: fn(toml::Table) -> std::result::Result<SourceKind, String>,
}

impl Kind {
    fn takes(&self, shared_key: &str) -> bool {
        self.shared.contains(&shared_key) || EVENT_TIME.contains(&shared_key)
    }

    /// Every key a table of this kind may have (besides `kind`).
    pub(crate) fn all_keys(&self) -> Vec<&'static str> {
        let mut keys = (self.keys)().to_vec();
        keys.extend(self.shared);
        keys.extend(EVENT_TIME);
        keys
    }
}

/// Every source kind a pipeline file can name: the one list.
pub(crate) const KINDS: &[Kind] = &[
    Kind {
        name: "csv",
        shared: &["lookup", "on_error", "checks"],
        keys: fields_of::<CsvSourceConfig>,
        decode: |t| decode_table(t).map(SourceKind::Csv),
    },
    Kind {
        name: "jsonl",
        shared: &["lookup", "on_error", "checks"],
        keys: fields_of::<JsonlSourceConfig>,
        decode: |t| decode_table(t).map(SourceKind::Jsonl),
    },
    Kind {
        name: "parquet",
        shared: &["lookup", "on_error", "checks"],
        keys: fields_of::<ParquetSourceConfig>,
        decode: |t| decode_table(t).map(SourceKind::Parquet),
    },
    Kind {
        name: "arrow_ipc",
        shared: &["lookup"],
        keys: fields_of::<ArrowIpcSourceConfig>,
        decode: |t| decode_table(t).map(SourceKind::ArrowIpc),
    },
    Kind {
        name: "delta",
        shared: &["lookup"],
        keys: fields_of::<DeltaSourceConfig>,
        decode: |t| decode_table(t).map(SourceKind::Delta),
    },
    Kind {
        name: "tpch",
        shared: &["lookup"],
        keys: fields_of::<TpchSourceConfig>,
        decode: |t| decode_table(t).map(SourceKind::Tpch),
    },
    Kind {
        name: "generator",
        shared: &[],
        keys: fields_of::<GeneratorSourceConfig>,
        decode: |t| decode_table(t).map(SourceKind::Generator),
    },
    Kind {
        name: "nexmark",
        shared: &[],
        keys: fields_of::<NexmarkSourceConfig>,
        decode: |t| decode_table(t).map(SourceKind::Nexmark),
    },
    Kind {
        name: "dir",
        shared: &["on_error"],
        keys: fields_of::<DirSourceConfig>,
        decode: |t| decode_table(t).map(SourceKind::Dir),
    },
    Kind {
        name: "stdin",
        shared: &["on_error"],
        keys: fields_of::<StdinSourceConfig>,
        decode: |t| decode_table(t).map(SourceKind::Stdin),
    },
    Kind {
        name: "kafka",
        shared: &["on_error", "checks"],
        keys: fields_of::<KafkaSourceConfig>,
        decode: |t| decode_table(t).map(SourceKind::Kafka),
    },
];
