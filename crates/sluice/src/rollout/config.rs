//! `[stages.<name>.variants.<v>]` and `[stages.<name>.rollout]`: the
//! variants of a stage and how traffic reaches them.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::SpecIssue;
use crate::stages::StageConfig;

/// What a rollout does with its variant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// The variant is ignored: the primary does all the work.
    #[default]
    Off,
    /// The variant sees the same input as the primary; its output is
    /// compared, never delivered.
    Shadow,
    /// `percent` of the rows (by a hash of `by`) go through the variant and
    /// are delivered.
    Canary,
    /// The variant replaces the primary.
    Primary,
}

impl Mode {
    /// The mode as written in pipeline and flags files.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Off => "off",
            Mode::Shadow => "shadow",
            Mode::Canary => "canary",
            Mode::Primary => "primary",
        }
    }

    /// Parses `off`, `shadow`, `canary` or `primary`.
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "off" => Mode::Off,
            "shadow" => Mode::Shadow,
            "canary" => Mode::Canary,
            "primary" => Mode::Primary,
            _ => return None,
        })
    }

    /// Whether the variant runs at all.
    pub fn runs_variant(self) -> bool {
        self != Mode::Off
    }
}

fn default_percent() -> f64 {
    10.0
}

fn default_tolerance() -> f64 {
    1e-9
}

fn default_diff_sample() -> usize {
    1000
}

fn default_min_epochs() -> u32 {
    5
}

/// `[stages.<name>.rollout]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutConfig {
    /// `off` (default), `shadow`, `canary` or `primary`; a flags file
    /// written by `sluice rollout set` overrides it without a restart.
    #[serde(default)]
    pub mode: Mode,
    /// The variant rolled out (default: the only one declared).
    #[serde(default)]
    pub variant: Option<String>,
    /// Canary: the share of rows, 0 to 100 (default 10).
    #[serde(default = "default_percent")]
    pub percent: f64,
    /// Canary: the input columns whose hash splits the rows, so every row of
    /// a key goes the same way (default: every input column).
    #[serde(default)]
    pub by: Vec<String>,
    /// Shadow: output columns that identify a row, so a differing row is
    /// reported as changed (with the columns that differ) rather than as
    /// one missing and one extra row.
    #[serde(default)]
    pub key: Vec<String>,
    /// Shadow: floats within `tolerance × max(1, |a|, |b|)` are equal
    /// (default 1e-9).
    #[serde(default = "default_tolerance")]
    pub tolerance: f64,
    /// Shadow: where a sample of the differing rows is written (a Parquet
    /// sink under the commit protocol).
    #[serde(default)]
    pub diff: Option<String>,
    /// Shadow: differing rows written to `diff` per epoch, at most (default 1000).
    #[serde(default = "default_diff_sample")]
    pub diff_sample: usize,
    /// Thresholds that roll the variant back by themselves.
    #[serde(default)]
    pub guard: Option<GuardConfig>,
    /// A column added to the stage's output naming the variant that made
    /// each row (`primary` or the variant's name).
    #[serde(default)]
    pub variant_column: Option<String>,
}

impl Default for RolloutConfig {
    fn default() -> Self {
        Self {
            mode: Mode::Off,
            variant: None,
            percent: default_percent(),
            by: Vec::new(),
            key: Vec::new(),
            tolerance: default_tolerance(),
            diff: None,
            diff_sample: default_diff_sample(),
            guard: None,
            variant_column: None,
        }
    }
}

/// `guard = { ... }`: when the variant breaks one of these over the last
/// `min_epochs` epochs it ran in, the engine rolls back to the primary.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GuardConfig {
    /// Row errors, failed exchanges and restarts per row sent to the variant.
    #[serde(default)]
    pub max_error_rate: Option<f64>,
    /// Shadow: differing rows (missing + extra + changed) per primary row.
    #[serde(default)]
    pub max_diff_rate: Option<f64>,
    /// The variant's 99th percentile batch round trip (external variants).
    #[serde(default)]
    pub max_p99_ms: Option<f64>,
    /// The window the rates are taken over, in epochs; the variant is
    /// called ready after this many healthy epochs (default 5).
    #[serde(default = "default_min_epochs")]
    pub min_epochs: u32,
}

/// The variants of one stage and its rollout.
#[derive(Debug, Clone)]
pub struct StageRollout {
    /// Variants by name (any stage config; the primary's `inputs`).
    pub variants: BTreeMap<String, StageConfig>,
    /// How they roll out (defaults when the table is absent: `off`).
    pub config: RolloutConfig,
    /// The stage reads one input, so its rows can be split for a canary.
    pub splittable: bool,
}

impl StageRollout {
    /// The variant the rollout is about.
    pub fn variant(&self) -> Option<&str> {
        match &self.config.variant {
            Some(v) => Some(v.as_str()),
            None if self.variants.len() == 1 => self.variants.keys().next().map(String::as_str),
            None => None,
        }
    }
}

/// What one epoch ran a stage's rollout with; recorded in every commit, so
/// a replay runs the same way.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Choice {
    /// The mode.
    pub mode: Mode,
    /// The variant.
    pub variant: String,
    /// Canary share of rows, 0 to 100.
    pub percent: f64,
}

impl std::fmt::Display for Choice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.mode {
            Mode::Canary => write!(f, "canary {} {}%", self.variant, self.percent),
            m => write!(f, "{} {}", m.as_str(), self.variant),
        }
    }
}

/// Takes `variants` and `rollout` out of every stage table (the stage kinds
/// decode the rest) and decodes them. A variant without `inputs` reads the
/// primary's.
pub(crate) fn take_rollouts(
    text: &str,
    file: &Path,
    stages: &mut BTreeMap<String, toml::Spanned<toml::Table>>,
    issues: &mut Vec<SpecIssue>,
) -> BTreeMap<String, StageRollout> {
    let mut out = BTreeMap::new();
    for (name, table) in stages.iter_mut() {
        let line = crate::spec::line_of(text, table.span().start);
        let t = table.get_mut();
        let variants = t.remove("variants");
        let rollout = t.remove("rollout");
        if variants.is_none() && rollout.is_none() {
            continue;
        }
        let issue = |key: String, message: String| {
            SpecIssue::new(file, key, message)
                .at_line(Some(line))
                .with_help("see docs/rollout.md")
        };
        let inputs = t.get("inputs").cloned();
        let mut decoded = BTreeMap::new();
        match variants {
            Some(toml::Value::Table(vs)) => {
                for (v, body) in vs {
                    let key = format!("stages.{name}.variants.{v}");
                    let toml::Value::Table(mut body) = body else {
                        issues.push(issue(key, "a variant is a table, like a stage".into()));
                        continue;
                    };
                    if v == "primary"
                        || !v
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                    {
                        issues.push(issue(key, format!("`{v}` cannot name a variant: use letters, digits, `_` or `-`, and not `primary` (the stage itself)")));
                        continue;
                    }
                    match (body.get("inputs"), &inputs) {
                        (None, Some(i)) => {
                            body.insert("inputs".into(), i.clone());
                        }
                        (Some(mine), Some(theirs)) if mine != theirs => {
                            issues.push(issue(
                                format!("{key}.inputs"),
                                "a variant reads the primary's inputs; leave `inputs` out".into(),
                            ));
                            continue;
                        }
                        _ => {}
                    }
                    let kind = match body.remove("kind") {
                        Some(toml::Value::String(k)) => k,
                        _ => {
                            issues.push(issue(
                                key,
                                "a variant needs `kind = \"external\"` or `kind = \"sql\"`".into(),
                            ));
                            continue;
                        }
                    };
                    match StageConfig::from_table(&kind, body) {
                        Ok(c) => {
                            decoded.insert(v, c);
                        }
                        Err(e) => issues.push(issue(key, e)),
                    }
                }
            }
            Some(other) => issues.push(issue(
                format!("stages.{name}.variants"),
                format!(
                    "`variants` is a table of stage tables, found {}",
                    other.type_str()
                ),
            )),
            None => {}
        }
        let config = match rollout {
            Some(v) => match v.try_into::<RolloutConfig>() {
                Ok(c) => c,
                Err(e) => {
                    issues.push(issue(
                        format!("stages.{name}.rollout"),
                        e.message().trim().to_string(),
                    ));
                    continue;
                }
            },
            None => RolloutConfig::default(),
        };
        let splittable = matches!(&inputs, Some(toml::Value::Array(a)) if a.len() == 1);
        let r = StageRollout {
            variants: decoded,
            config,
            splittable,
        };
        if let Some(message) = check(&r) {
            issues.push(issue(format!("stages.{name}.rollout"), message));
            continue;
        }
        out.insert(name.clone(), r);
    }
    out
}

/// What is wrong with a rollout, on its own (the compiler checks columns).
fn check(r: &StageRollout) -> Option<String> {
    let c = &r.config;
    if r.variants.is_empty() {
        return Some(
            "a rollout needs a variant: add a table `[stages.<name>.variants.<variant>]`".into(),
        );
    }
    match (&c.variant, r.variant()) {
        (Some(v), _) if !r.variants.contains_key(v) => {
            return Some(format!(
                "`variant = \"{v}\"` is not among the stage's variants ({})",
                r.variants.keys().cloned().collect::<Vec<_>>().join(", ")
            ));
        }
        (None, None) => {
            return Some(
                "the stage has several variants: name the one rolled out with `variant = \"...\"`"
                    .into(),
            );
        }
        _ => {}
    }
    if !(0.0..=100.0).contains(&c.percent) {
        return Some(format!(
            "`percent` is a share of rows from 0 to 100, found {}",
            c.percent
        ));
    }
    if c.tolerance.is_nan() || c.tolerance < 0.0 {
        return Some(format!(
            "`tolerance` must be 0 or more, found {}",
            c.tolerance
        ));
    }
    if let Some(g) = &c.guard {
        if g.min_epochs == 0 {
            return Some("`guard.min_epochs` must be at least 1".into());
        }
        for (k, v) in [
            ("max_error_rate", g.max_error_rate),
            ("max_diff_rate", g.max_diff_rate),
            ("max_p99_ms", g.max_p99_ms),
        ] {
            if let Some(v) = v
                && (v.is_nan() || v < 0.0)
            {
                return Some(format!("`guard.{k}` must be 0 or more, found {v}"));
            }
        }
    }
    None
}
