//! Pipeline specs: what a pipeline file says, parsed and checked.
//!
//! A spec is a TOML file (or a [`PipelineSpec`] built in code):
//!
//! ```toml
//! [pipeline]
//! name = "tpch_revenue"
//! version = "1.0.0"
//!
//! [sources.lineitem]
//! kind = "tpch"
//! table = "lineitem"
//!
//! [stages.priced]
//! kind = "sql"
//! inputs = ["lineitem"]
//! sql = "priced.sql"
//!
//! [sinks.out]
//! kind = "parquet"
//! input = "priced"
//! url = "out/priced"
//! ```
//!
//! Parsing is two-step so that every error names the file, the line and the
//! key: the document is read with spans, then each component table is decoded
//! into its kind's config (`deny_unknown_fields` everywhere).

#[cfg(test)]
mod docs_check;
pub(crate) mod graph;
pub(crate) mod keys;
pub(crate) mod values;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

pub use crate::dead_letter::{DeadLetterConfig, OnError};
use crate::error::{Result, SluiceError, SpecIssue};
pub use crate::observe::ObservabilityConfig;
pub use crate::openlineage::LineageConfig;
use crate::sinks::SinkConfig;
use crate::sources::{CustomSource, SourceConfig, SourceKind};
pub use crate::stages::{
    ExternalStageConfig, OperatorStageConfig, Scope, SqlStageConfig, StageConfig,
};
pub use values::{ByteSize, ColumnSpec, HumanDuration};

/// The file name used in errors for pipelines built in code.
pub const IN_CODE: &str = "<code>";

/// The `[pipeline]` table: identity of the pipeline.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineMeta {
    /// Pipeline name, recorded in output metadata and commits.
    pub name: String,
    /// Pipeline version (any string; semver recommended).
    #[serde(default = "default_version")]
    pub version: String,
    /// Free text shown by `sluice explain`.
    #[serde(default)]
    pub description: Option<String>,
}

fn default_version() -> String {
    "0.1.0".to_string()
}

/// The `[settings]` table: how the pipeline runs.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// The schema registry folder (`<name>/<version>.json` files), relative
    /// to the pipeline file (default `schemas`).
    #[serde(default)]
    pub schemas: Option<String>,
    /// Parallel partitions per plan (default: the number of CPU cores).
    #[serde(default)]
    pub target_partitions: Option<usize>,
    /// Rows per Arrow batch inside the plan (default 8192).
    #[serde(default)]
    pub batch_size: Option<usize>,
    /// How input is cut into epochs (the unit of commit).
    #[serde(default)]
    pub epoch: EpochSettings,
    /// Longest time written rows wait for their commit (streaming default
    /// 10s; bounded pipelines commit every epoch). Files stay open between
    /// commits, so this also bounds a file's age.
    #[serde(default)]
    pub commit_interval: Option<HumanDuration>,
    /// Retries of an epoch whose failure may pass (a store or stage hiccup);
    /// external stages may raise it with their own `retries` (default 0).
    #[serde(default)]
    pub retries: Option<u32>,
    /// Epochs in memory at once (default 2): while one epoch's commit seals
    /// and commits the sinks' files, the next epoch is read and computed.
    /// Commits stay in epoch order; 1 commits each epoch before reading
    /// the next.
    #[serde(default)]
    pub epochs_in_flight: Option<usize>,
    /// Settings for `s3://` URLs, on top of the `AWS_*` environment variables.
    #[serde(default)]
    pub s3: S3Settings,
    /// Where the rollout flags file is (default: `_sluice/rollout.json`
    /// beside the first file sink's commit log).
    #[serde(default)]
    pub rollout_flags: Option<String>,
}

/// The `[settings.epoch]` table.
///
/// A bounded source with no limits set is read as one epoch; limits split it
/// at file (or generator part) boundaries, or inside a large uncompressed
/// CSV/JSON-lines file (line-level offsets), so each epoch commits on its own.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EpochSettings {
    /// Upper bound on the rows of one epoch (estimated from bytes for files).
    #[serde(default)]
    pub max_rows: Option<u64>,
    /// Upper bound on the input bytes of one epoch.
    #[serde(default)]
    pub max_bytes: Option<ByteSize>,
    /// Upper bound on how long an epoch waits for input (streaming sources).
    #[serde(default)]
    pub max_latency: Option<HumanDuration>,
}

/// The `[settings.s3]` table. Anything unset comes from `AWS_*` variables.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Settings {
    /// Endpoint of an S3-compatible server, e.g. `http://127.0.0.1:9000`.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// AWS region (default from `AWS_REGION`, else `us-east-1`).
    #[serde(default)]
    pub region: Option<String>,
    /// Allow plain `http://` endpoints.
    #[serde(default)]
    pub allow_http: Option<bool>,
}

/// A whole pipeline: identity, settings and the graph of components.
#[derive(Debug, Clone)]
pub struct PipelineSpec {
    /// The file the spec came from ([`IN_CODE`] for specs built in code).
    pub file: PathBuf,
    /// Directory that relative paths (SQL files, local data) are resolved against.
    pub base_dir: PathBuf,
    /// Identity.
    pub pipeline: PipelineMeta,
    /// Runtime settings.
    pub settings: Settings,
    /// Sources by name.
    pub sources: BTreeMap<String, SourceConfig>,
    /// Stages by name.
    pub stages: BTreeMap<String, StageConfig>,
    /// The variants and rollout of the stages that have them, by stage.
    pub rollouts: BTreeMap<String, crate::rollout::StageRollout>,
    /// Sinks by name.
    pub sinks: BTreeMap<String, SinkConfig>,
    /// Where rows that sources or stages give up on go (`on_error = "dead_letter"`).
    pub dead_letter: Option<crate::dead_letter::DeadLetterConfig>,
    /// Where OpenLineage run events go.
    pub lineage: Option<crate::openlineage::LineageConfig>,
    /// `[observability]`: where metrics are served.
    pub observability: ObservabilityConfig,
    /// Line of each table (`sources.orders`) and of each key written in
    /// one (`sources.orders.on_error`) in the file, for error messages.
    pub lines: BTreeMap<String, usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpec {
    pipeline: PipelineMeta,
    #[serde(default)]
    settings: Settings,
    #[serde(default)]
    sources: BTreeMap<String, toml::Spanned<toml::Table>>,
    #[serde(default)]
    stages: BTreeMap<String, toml::Spanned<toml::Table>>,
    #[serde(default)]
    sinks: BTreeMap<String, toml::Spanned<toml::Table>>,
    #[serde(default)]
    dead_letter: Option<crate::dead_letter::DeadLetterConfig>,
    #[serde(default)]
    lineage: Option<crate::openlineage::LineageConfig>,
    #[serde(default)]
    observability: crate::observe::ObservabilityConfig,
}

impl PipelineSpec {
    /// An empty spec to fill in code; relative paths resolve against the
    /// current directory.
    pub fn new(name: impl Into<String>, version: impl Into<String>) -> Self {
        Self {
            file: PathBuf::from(IN_CODE),
            base_dir: PathBuf::from("."),
            pipeline: PipelineMeta {
                name: name.into(),
                version: version.into(),
                description: None,
            },
            settings: Settings::default(),
            sources: BTreeMap::new(),
            stages: BTreeMap::new(),
            rollouts: BTreeMap::new(),
            sinks: BTreeMap::new(),
            dead_letter: None,
            lineage: None,
            observability: Default::default(),
            lines: BTreeMap::new(),
        }
    }

    /// Adds a source.
    pub fn with_source(mut self, name: impl Into<String>, source: impl Into<SourceConfig>) -> Self {
        self.sources.insert(name.into(), source.into());
        self
    }

    /// Adds a custom source implemented in Rust (see [`crate::sources::Source`]).
    pub fn with_custom_source(
        self,
        name: impl Into<String>,
        factory: Arc<dyn crate::sources::SourceFactory>,
    ) -> Self {
        self.with_source(
            name,
            SourceConfig::from(SourceKind::Custom(CustomSource(factory))),
        )
    }

    /// Adds a custom sink implemented in Rust (see [`crate::sinks::Sink`]),
    /// reading the stage or source `input`; it is committed with the others.
    pub fn with_custom_sink(
        self,
        name: impl Into<String>,
        input: impl Into<String>,
        factory: Arc<dyn crate::sinks::SinkFactory>,
    ) -> Self {
        self.with_sink(
            name,
            SinkConfig::new(input, crate::sinks::SinkKind::Custom(factory)),
        )
    }

    /// Adds an SQL stage reading `inputs`.
    pub fn with_sql_stage(
        mut self,
        name: impl Into<String>,
        inputs: &[&str],
        query: impl Into<String>,
    ) -> Self {
        self.stages.insert(
            name.into(),
            StageConfig::Sql(SqlStageConfig {
                inputs: inputs.iter().map(|s| s.to_string()).collect(),
                query: Some(query.into()),
                sql: None,
                schema: None,
                description: None,
                scope: crate::stages::Scope::Stream,
            }),
        );
        self
    }

    /// Adds an operator stage (`kind = "operator"`) reading `input`:
    /// `operator` names a built-in (`dedupe`, `window`) or one registered
    /// with [`crate::Engine::register_operator`]; `options` are its keys.
    pub fn with_operator_stage(
        mut self,
        name: impl Into<String>,
        input: &str,
        operator: &str,
        options: toml::Table,
    ) -> Self {
        self.stages.insert(
            name.into(),
            StageConfig::Operator(OperatorStageConfig {
                inputs: vec![input.to_string()],
                operator: operator.to_string(),
                description: None,
                options,
            }),
        );
        self
    }

    /// Adds a sink.
    pub fn with_sink(mut self, name: impl Into<String>, sink: SinkConfig) -> Self {
        self.sinks.insert(name.into(), sink);
        self
    }

    /// Reads and parses a pipeline file. Every problem found is reported,
    /// with the file, line and key.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| {
            SluiceError::spec(
                SpecIssue::new(path, "", format!("cannot read the pipeline file: {e}"))
                    .with_help("check the path; pipeline files are TOML"),
            )
        })?;
        let base_dir = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let base_dir = if base_dir.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            base_dir
        };
        Self::from_toml(&text, path, &base_dir)
    }

    /// Reads a pipeline file and applies `key=value` overrides first
    /// (`sources.lineitem.scale_factor=0.01`, `sinks.out.url="/tmp/x"`).
    /// Values are TOML values; anything that does not parse as one is a string.
    pub fn from_file_with_overrides(path: impl AsRef<Path>, overrides: &[String]) -> Result<Self> {
        if overrides.is_empty() {
            return Self::from_file(path);
        }
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| {
            SluiceError::spec(SpecIssue::new(
                path,
                "",
                format!("cannot read the pipeline file: {e}"),
            ))
        })?;
        let mut doc: toml::Table = toml::from_str(&text).map_err(|e| {
            SluiceError::spec(
                SpecIssue::new(path, "", e.message().to_string())
                    .at_line(e.span().map(|s| line_of(&text, s.start))),
            )
        })?;
        for o in overrides {
            let (key, value) = o.split_once('=').ok_or_else(|| {
                SluiceError::spec(SpecIssue::new(
                    path,
                    o.as_str(),
                    "an override is written `key.path=value`",
                ))
            })?;
            let value_text = value;
            let value = toml::from_str::<toml::Table>(&format!("v = {value}"))
                .ok()
                .and_then(|mut t| t.remove("v"))
                .unwrap_or_else(|| toml::Value::String(value.to_string()));
            let parts: Vec<&str> = key.trim().split('.').collect();
            let mut table = &mut doc;
            for p in &parts[..parts.len() - 1] {
                let entry = table
                    .entry(p.to_string())
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()));
                table = entry.as_table_mut().ok_or_else(|| {
                    SluiceError::spec(SpecIssue::new(
                        path,
                        key,
                        format!("`{p}` is not a table, so `{key}` cannot be set"),
                    ))
                })?;
            }
            let last = parts[parts.len() - 1];
            // `version=2.0` on a string key means the string "2.0"
            let value = match (table.get(last), &value) {
                (Some(toml::Value::String(_)), v) if !v.is_str() => {
                    toml::Value::String(value_text.trim().to_string())
                }
                _ => value,
            };
            table.insert(last.to_string(), value);
        }
        let text = toml::to_string(&doc)
            .map_err(|e| SluiceError::Internal(format!("cannot re-encode the spec: {e}")))?;
        let base_dir = path
            .parent()
            .map(Path::to_path_buf)
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or_else(|| PathBuf::from("."));
        Self::from_toml(&text, path, &base_dir)
    }

    /// Parses pipeline TOML text; `file` is used in error messages.
    pub fn from_toml(text: &str, file: &Path, base_dir: &Path) -> Result<Self> {
        let written = key_lines(text);
        let mut raw: RawSpec = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| line_of(text, s.start));
            let message = e.message().to_string();
            // the key: the one written on the error's line, or the one named
            let at_line = line.and_then(|l| {
                written
                    .iter()
                    .filter(|(_, kl)| **kl == l)
                    .map(|(k, _)| k.clone())
                    .max_by_key(String::len)
            });
            let named = key_from_toml_message(&message);
            let key = match at_line {
                Some(k) if !named.is_empty() && !k.ends_with(&format!(".{named}")) => {
                    format!("{k}.{named}")
                }
                Some(k) => k,
                None => named,
            };
            let help = suggestion(&message)
                .or_else(|| Some("see docs/pipeline.md for every key".to_string()));
            let mut issue = SpecIssue::new(file, key, message).at_line(line);
            issue.help = help;
            SluiceError::spec(issue)
        })?;
        let mut issues = Vec::new();
        let mut lines = written;
        let rollouts =
            crate::rollout::config::take_rollouts(text, file, &mut raw.stages, &mut issues);
        let sources = decode_section(
            text,
            file,
            "sources",
            &raw.sources,
            SourceConfig::from_table,
            &mut issues,
            &mut lines,
        );
        let stages = decode_section(
            text,
            file,
            "stages",
            &raw.stages,
            StageConfig::from_table,
            &mut issues,
            &mut lines,
        );
        let sinks = decode_section(
            text,
            file,
            "sinks",
            &raw.sinks,
            SinkConfig::from_table,
            &mut issues,
            &mut lines,
        );
        if !issues.is_empty() {
            return Err(SluiceError::Spec(issues));
        }
        Ok(Self {
            file: file.to_path_buf(),
            base_dir: base_dir.to_path_buf(),
            pipeline: raw.pipeline,
            settings: raw.settings,
            sources,
            stages,
            rollouts,
            sinks,
            dead_letter: raw.dead_letter,
            lineage: raw.lineage,
            observability: raw.observability,
            lines,
        })
    }

    /// `name@version` of the pipeline.
    pub fn id(&self) -> String {
        format!("{}@{}", self.pipeline.name, self.pipeline.version)
    }

    /// Line of a key (`"sources.orders.on_error"`) or, when it is not
    /// written there, of the nearest table around it, when parsed from a file.
    pub fn line_of(&self, key: &str) -> Option<usize> {
        let mut k = key;
        loop {
            if let Some(l) = self.lines.get(k) {
                return Some(*l);
            }
            k = &k[..k.rfind('.')?];
        }
    }

    /// A spec issue located at a key in this spec's file.
    pub fn issue(&self, key: impl Into<String>, message: impl Into<String>) -> SpecIssue {
        let key = key.into();
        let line = self.line_of(&key);
        SpecIssue::new(&self.file, key, message).at_line(line)
    }

    /// The schema registry of this pipeline.
    pub fn registry(&self) -> sluice_contract::registry::Registry {
        sluice_contract::registry::Registry::new(
            self.resolve_path(self.settings.schemas.as_deref().unwrap_or("schemas")),
        )
    }

    /// Resolves a path written in the spec against the spec's directory.
    pub fn resolve_path(&self, p: &str) -> PathBuf {
        let path = Path::new(p);
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.base_dir.join(path)
        }
    }
}

/// Decodes every component table of one section (`sources`, `stages`, `sinks`).
fn decode_section<T>(
    text: &str,
    file: &Path,
    section: &str,
    tables: &BTreeMap<String, toml::Spanned<toml::Table>>,
    from_table: fn(&str, toml::Table) -> std::result::Result<T, String>,
    issues: &mut Vec<SpecIssue>,
    lines: &mut BTreeMap<String, usize>,
) -> BTreeMap<String, T> {
    let mut out = BTreeMap::new();
    for (name, table) in tables {
        let line = line_of(text, table.span().start);
        let key = format!("{section}.{name}");
        lines.insert(key.clone(), line);
        let mut t = table.get_ref().clone();
        let kind = match t.remove("kind") {
            Some(toml::Value::String(k)) => k,
            Some(other) => {
                issues.push(
                    SpecIssue::new(
                        file,
                        format!("{key}.kind"),
                        format!("`kind` must be a string, found {}", other.type_str()),
                    )
                    .at_line(Some(line)),
                );
                continue;
            }
            None => {
                issues.push(
                    SpecIssue::new(file, &key, "missing `kind`")
                        .at_line(Some(line))
                        .with_help(format!(
                            "add `kind = \"...\"`; {section} kinds: {}",
                            kinds_of(section).join(", ")
                        )),
                );
                continue;
            }
        };
        let at = |k: &str| lines.get(&format!("{key}.{k}")).copied();
        let culprit = |e: &str| offending_key(e, table.get_ref());
        match from_table(&kind, t) {
            Ok(cfg) => {
                out.insert(name.clone(), cfg);
            }
            Err(e) => {
                let (key, line) = match culprit(&e) {
                    Some(k) => (format!("{key}.{k}"), at(&k).unwrap_or(line)),
                    None => (key.clone(), line),
                };
                issues.push(component_issue(file, &key, line, &kind, section, e))
            }
        }
    }
    out
}

/// Kinds known for each section, for help texts.
fn kinds_of(section: &str) -> Vec<&'static str> {
    match section {
        "sources" => crate::sources::KINDS.iter().map(|k| k.name).collect(),
        "stages" => StageConfig::KINDS.to_vec(),
        _ => crate::sinks::KINDS.iter().map(|k| k.name).collect(),
    }
}

/// Decoding errors of a component table, made into an issue with a hint.
fn component_issue(
    file: &Path,
    key: &str,
    line: usize,
    kind: &str,
    section: &str,
    message: String,
) -> SpecIssue {
    let help = if message.starts_with("unknown kind") {
        Some(format!("{section} kinds: {}", kinds_of(section).join(", ")))
    } else {
        suggestion(&message)
            .or_else(|| Some(format!("see the `{kind}` section of docs/pipeline.md")))
    };
    let mut issue = SpecIssue::new(file, key, message).at_line(Some(line));
    issue.help = help;
    issue
}

/// Decodes a component table into its config type; unknown keys are errors.
pub(crate) fn decode_table<T: for<'de> Deserialize<'de>>(
    table: toml::Table,
) -> std::result::Result<T, String> {
    toml::Value::Table(table)
        .try_into::<T>()
        .map_err(|e| e.message().trim().to_string())
}

pub(crate) fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())]
        .bytes()
        .filter(|b| *b == b'\n')
        .count()
        + 1
}

/// The line of every table header and of every key written in a table,
/// by dotted path (`sources.orders` and `sources.orders.on_error`). Read from
/// the text because `toml` keeps no spans inside a table.
fn key_lines(text: &str) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    let mut table = String::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if let Some(rest) = line.strip_prefix('[') {
            if rest.starts_with('[') {
                table.clear(); // an array of tables: not tracked
                continue;
            }
            if let Some(end) = rest.find(']') {
                table = rest[..end]
                    .split('.')
                    .map(|p| p.trim().trim_matches('"'))
                    .collect::<Vec<_>>()
                    .join(".");
                out.entry(table.clone()).or_insert(i + 1);
            }
            continue;
        }
        let Some(eq) = line.find('=') else { continue };
        let key = line[..eq].trim();
        let key = key
            .split('.')
            .next()
            .unwrap_or(key)
            .trim()
            .trim_matches('"');
        if key.is_empty() || key.starts_with('#') || table.is_empty() {
            if !key.is_empty() && !key.starts_with('#') && table.is_empty() {
                out.entry(key.to_string()).or_insert(i + 1);
            }
            continue;
        }
        out.entry(format!("{table}.{key}")).or_insert(i + 1);
    }
    out
}

/// The key of `table` a decoding error is about: the one named in "unknown
/// field `x`" / "missing field `x`", or the one holding the value an
/// "unknown variant `v`" / "invalid type: ... `v`" error quotes.
fn offending_key(message: &str, table: &toml::Table) -> Option<String> {
    let named = key_from_toml_message(message);
    if table.contains_key(&named) {
        return Some(named);
    }
    let quoted = message.split('`').nth(1)?;
    table
        .iter()
        .find(|(_, v)| match v {
            toml::Value::String(s) => s == quoted,
            toml::Value::Table(_) | toml::Value::Array(_) => false,
            other => other.to_string() == quoted,
        })
        .map(|(k, _)| k.clone())
}

/// Pulls the offending key out of serde's "unknown field `x`" messages.
pub(crate) fn key_from_toml_message(message: &str) -> String {
    if let Some(rest) = message.strip_prefix("unknown field `")
        && let Some(end) = rest.find('`')
    {
        return rest[..end].to_string();
    }
    if let Some(rest) = message.strip_prefix("missing field `")
        && let Some(end) = rest.find('`')
    {
        return rest[..end].to_string();
    }
    String::new()
}

/// For "unknown field `x`, expected one of `a`, `b`", suggests the closest known key.
fn suggestion(message: &str) -> Option<String> {
    let unknown = message.strip_prefix("unknown field `")?.split('`').next()?;
    let expected = message.split("expected").nth(1)?;
    let known: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
    let best = known.iter().min_by_key(|k| edit_distance(unknown, k))?;
    if edit_distance(unknown, best) <= 3 {
        Some(format!("did you mean `{best}`?"))
    } else {
        Some(format!("known keys: {}", known.join(", ")))
    }
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<PipelineSpec> {
        PipelineSpec::from_toml(text, Path::new("p.toml"), Path::new("."))
    }

    proptest::proptest! {
        /// A pipeline file with any bytes changed, cut or repeated parses or
        /// is refused with issues at lines inside the file; never a panic.
        #[test]
        fn mangled_pipeline_files_are_refused_not_panicked_on(
            edits in proptest::collection::vec(
                (proptest::prelude::any::<proptest::sample::Index>(), "[\\[\\]=\".a-z_0-9 \n{},]{0,6}"),
                0..6,
            ),
            cut in proptest::prelude::any::<proptest::sample::Index>(),
        ) {
            let mut text = String::from(r#"
[pipeline]
name = "demo"

[sources.orders]
kind = "csv"
path = "orders.csv"
on_error = "dead_letter"

[stages.big]
kind = "sql"
inputs = ["orders"]
query = "SELECT * FROM orders"

[sinks.out]
kind = "parquet"
input = "big"
url = "out"

[dead_letter]
url = "dead"
"#);
            for (at, insert) in &edits {
                let mut i = at.index(text.len() + 1);
                while !text.is_char_boundary(i) {
                    i -= 1;
                }
                text.insert_str(i, insert);
            }
            let mut end = cut.index(text.len() + 1);
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            let lines = text[..end].lines().count().max(1);
            if let Err(SluiceError::Spec(issues)) = parse(&text[..end]) {
                for i in issues {
                    proptest::prop_assert!(i.line.is_none_or(|l| l >= 1 && l <= lines + 1), "{i:?}");
                }
            }
        }
    }

    #[test]
    fn parses_a_small_pipeline() -> Result<()> {
        let spec = parse(
            r#"
[pipeline]
name = "demo"

[sources.orders]
kind = "csv"
path = "orders.csv"

[stages.big]
kind = "sql"
inputs = ["orders"]
query = "SELECT * FROM orders WHERE amount > 10"

[sinks.out]
kind = "parquet"
input = "big"
url = "out/big"
"#,
        )?;
        assert_eq!(spec.id(), "demo@0.1.0");
        assert_eq!(spec.sinks["out"].input, "big");
        assert_eq!(spec.line_of("stages.big"), Some(9));
        Ok(())
    }

    #[test]
    fn unknown_keys_name_file_line_key_and_a_fix() {
        let err = parse(
            r#"
[pipeline]
name = "demo"

[sources.orders]
kind = "csv"
path = "orders.csv"
delimeter = ";"
"#,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("p.toml:8: `sources.orders.delimeter`: unknown field `delimeter`"),
            "{err}"
        );
        assert!(err.contains("did you mean `delimiter`?"), "{err}");
    }

    #[test]
    fn unknown_top_level_table_and_kind_are_reported() {
        let err = parse("[pipeline]\nname = \"x\"\n[sorces.a]\nkind = \"csv\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("p.toml:3"), "{err}");
        assert!(err.contains("`sorces`"), "{err}");
        let err = parse("[pipeline]\nname = \"x\"\n[sources.a]\nkind = \"xls\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown kind `xls`"), "{err}");
        assert!(err.contains("csv, jsonl"), "{err}");
    }

    #[test]
    fn overrides_set_nested_keys() -> Result<()> {
        let dir = std::env::temp_dir().join(format!("sluice-ovr-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("p.toml");
        std::fs::write(&file, "[pipeline]\nname = \"x\"\n[sources.t]\nkind = \"tpch\"\n[sinks.o]\nkind = \"stdout\"\ninput = \"t\"\n").unwrap();
        let spec = PipelineSpec::from_file_with_overrides(
            &file,
            &[
                "sources.t.scale_factor=0.5".into(),
                "settings.epoch.max_rows=10".into(),
                "pipeline.version=\"2.0\"".into(),
            ],
        )?;
        match &spec.sources["t"].kind {
            SourceKind::Tpch(c) => assert_eq!(c.scale_factor, 0.5),
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(spec.settings.epoch.max_rows, Some(10));
        assert_eq!(spec.pipeline.version, "2.0");
        Ok(())
    }

    #[test]
    fn suggestion_picks_the_closest_key() {
        let m = "unknown field `inptus`, expected one of `inputs`, `query`, `sql`";
        assert_eq!(suggestion(m).as_deref(), Some("did you mean `inputs`?"));
    }
}
