//! The rollout side of one run: which choice each epoch runs with, what
//! the variants did, the guard, and the status `sluice rollout status`
//! shows.
//!
//! ```text
//! epoch boundary: read the flags file ─► this epoch's choices (a change closes the commit group)
//! epoch written:  tallies ─► shadow diff ─► outcome in the guard's window ─► breach? roll back
//! commit:         choices + per-variant rows + diff counts in the commit; status file written
//! ```

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use datafusion::arrow::array::RecordBatch;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::config::{Choice, GuardConfig, Mode, StageRollout};
use super::diff::{self, DiffCounts, DiffRow, DiffRule};
use super::exec::PRIMARY;
use super::flags::{Flag, Flags, FlagsFile, now};
use super::tally::Tally;
use crate::compile::PipelinePlan;
use crate::dead_letter::DeadLetter;
use crate::error::{Result, SluiceError};
use crate::metrics::ComponentId;

/// What a commit records of one stage's rollout over its epochs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutRecord {
    /// The choice every epoch of the commit ran with.
    #[serde(flatten)]
    pub choice: Choice,
    /// Rows delivered, by branch (`primary` or the variant's name).
    #[serde(default)]
    pub rows: BTreeMap<String, u64>,
    /// Shadow: what the diff found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diff: Option<DiffCounts>,
}

impl RolloutRecord {
    /// Adds `other`'s rows and diff counts (of the same choice).
    pub fn add(&mut self, other: &RolloutRecord) {
        for (b, n) in &other.rows {
            *self.rows.entry(b.clone()).or_default() += n;
        }
        if let Some(d) = &other.diff {
            self.diff.get_or_insert_with(Default::default).add(d);
        }
    }
}

/// The choice of every stage in `records`.
pub(crate) fn choices_of(records: &BTreeMap<String, RolloutRecord>) -> BTreeMap<String, Choice> {
    records
        .iter()
        .map(|(s, r)| (s.clone(), r.choice.clone()))
        .collect()
}

/// Adds one epoch's records into a commit group's.
pub(crate) fn merge_records(
    into: &mut BTreeMap<String, RolloutRecord>,
    epoch: BTreeMap<String, RolloutRecord>,
) {
    for (stage, r) in epoch {
        match into.get_mut(&stage) {
            Some(have) => have.add(&r),
            None => {
                into.insert(stage, r);
            }
        }
    }
}

/// The name of stage `stage`'s diff sink.
pub(crate) fn diff_sink_name(stage: &str) -> String {
    format!("{stage}_diff")
}

/// The component name of a stage's variant (its dead letters, metrics and process).
pub(crate) fn variant_component(stage: &str, variant: &str) -> String {
    format!("{stage}@{variant}")
}

/// One epoch of a variant, as the guard sees it.
#[derive(Debug, Clone)]
struct Outcome {
    epoch: u64,
    /// Rows the variant produced (its whole output in shadow).
    variant_rows: u64,
    row_errors: u64,
    /// The variant failed or restarted in this epoch.
    failed: bool,
    diff: Option<DiffCounts>,
    latencies_us: Vec<u32>,
}

/// Totals of one branch over the run.
#[derive(Debug, Clone, Default, Serialize)]
struct BranchTotals {
    rows: u64,
    row_errors: u64,
    failures: u64,
    epochs: u64,
}

#[derive(Debug, Default)]
struct StageState {
    window: VecDeque<Outcome>,
    totals: BTreeMap<String, BranchTotals>,
    diff: DiffCounts,
    verdict: String,
    rollbacks: Vec<serde_json::Value>,
    /// Process starts of each external variant when last judged: more
    /// since then is a restart.
    starts_seen: BTreeMap<String, u64>,
    /// The flag the guard wrote, kept when the file cannot be written.
    guard_flag: Option<Flag>,
}

/// The rollouts of one run; see the module docs.
pub(crate) struct RolloutControl {
    stages: BTreeMap<String, StageRollout>,
    flags: Option<FlagsFile>,
    current: BTreeMap<String, Choice>,
    /// The last complaint about the flags file, so it is logged once.
    flags_error: Option<String>,
    state: BTreeMap<String, StageState>,
}

impl RolloutControl {
    /// The control of `plan`'s rollouts; `None` when it has none.
    pub(crate) fn new(plan: &PipelinePlan) -> Option<Self> {
        let rollouts = plan.rollout.as_ref()?;
        let current = rollouts
            .stages
            .iter()
            .map(|(s, r)| (s.clone(), default_choice(r)))
            .collect();
        let state = rollouts
            .stages
            .iter()
            .map(|(s, r)| {
                let starts = r
                    .variants
                    .keys()
                    .filter_map(|v| {
                        let rt = plan.externals.get(&variant_component(s, v))?;
                        Some((v.clone(), rt.starts.load(Ordering::Relaxed)))
                    })
                    .collect();
                (
                    s.clone(),
                    StageState {
                        starts_seen: starts,
                        verdict: "off".into(),
                        ..Default::default()
                    },
                )
            })
            .collect();
        Some(Self {
            stages: rollouts.stages.clone(),
            flags: rollouts.flags.clone(),
            current,
            flags_error: None,
            state,
        })
    }

    /// The choices of the next epoch: the flags file's entry for a stage
    /// when it has a valid one, else the pipeline's `[rollout]`. A flags
    /// file that cannot be read keeps the last choices (and says so once).
    pub(crate) async fn refresh(&mut self) -> &BTreeMap<String, Choice> {
        let read = match &self.flags {
            Some(f) => f.read().await,
            None => Ok(None),
        };
        match read {
            Ok(flags) => {
                self.flags_error = None;
                let flags = flags.unwrap_or_default();
                let mut invalid = None;
                for (stage, r) in &self.stages {
                    let guard = self.state.get(stage).and_then(|s| s.guard_flag.clone());
                    // the guard's rollback holds until someone sets the flag after it
                    // (it also holds when it could not be written to the file)
                    let file = flags.stages.get(stage);
                    let newest = match (file, guard.as_ref()) {
                        (Some(f), Some(g)) if g.set_at >= f.set_at => Some(g),
                        (Some(f), _) => Some(f),
                        (None, g) => g,
                    };
                    let choice = match newest {
                        Some(f) => match validate(stage, r, &f.choice(r)) {
                            Ok(()) => f.choice(r),
                            Err(e) => {
                                let file = self.flags.as_ref().map_or("", |f| f.url.as_str());
                                invalid =
                                    Some(format!("{file}: the entry of stage `{stage}`: {e}"));
                                continue;
                            }
                        },
                        None => default_choice(r),
                    };
                    // the guard judges a variant in a mode by its own epochs only
                    let was = self.current.get(stage);
                    if was.is_some_and(|c| c.mode != choice.mode || c.variant != choice.variant)
                        && let Some(st) = self.state.get_mut(stage)
                    {
                        st.window.clear();
                    }
                    self.current.insert(stage.clone(), choice);
                }
                if let Some(e) = invalid {
                    self.complain(e);
                }
            }
            Err(e) => self.complain(e),
        }
        &self.current
    }

    fn complain(&mut self, e: String) {
        if self.flags_error.as_ref() != Some(&e) {
            tracing::error!(error = %e, "rollout flags ignored; the stages keep their current choice");
            self.flags_error = Some(e);
        }
    }

    /// What one written epoch's rollouts did: the records for its commit,
    /// and the diff samples for the diff sinks (by stage). Removes the
    /// shadow variants' dead letters from `letters`: their rows are not
    /// delivered, so they are not the pipeline's errors.
    pub(crate) async fn observe(
        &mut self,
        plan: &PipelinePlan,
        epoch: u64,
        choices: &BTreeMap<String, Choice>,
        tallies: BTreeMap<String, Tally>,
        letters: &mut Vec<DeadLetter>,
        for_guard: bool,
    ) -> Result<(
        BTreeMap<String, RolloutRecord>,
        BTreeMap<String, Vec<DiffRow>>,
    )> {
        let mut records = BTreeMap::new();
        let mut samples = BTreeMap::new();
        let mut tallies = tallies;
        for (stage, r) in &self.stages {
            let Some(choice) = choices.get(stage) else {
                continue;
            };
            let mut tally = tallies.remove(stage).unwrap_or_default();
            let component = ComponentId::Stage(variant_component(stage, &choice.variant));
            let row_errors = letters.iter().filter(|d| d.component == component).count() as u64;
            if choice.mode == Mode::Shadow {
                letters.retain(|d| d.component != component);
            }
            let mut diff_counts = None;
            // a LIMIT downstream stops reading mid-way: nothing to compare
            // or judge, and nothing wrong with the variant
            let partial = tally.open_captures > 0;
            let compared = choice.mode == Mode::Shadow && !partial;
            if choice.mode == Mode::Shadow && partial {
                tracing::debug!(stage = %stage, variant = %choice.variant, epoch, "shadow not compared: the stage's output was not read to its end");
            }
            if compared {
                let rule = DiffRule {
                    key: r.config.key.clone(),
                    tolerance: r.config.tolerance,
                    sample: if r.config.diff.is_some() {
                        r.config.diff_sample
                    } else {
                        0
                    },
                };
                let (p, v) = (
                    std::mem::take(&mut tally.primary_rows),
                    std::mem::take(&mut tally.variant_rows),
                );
                let (counts, sample) = if tally.variant_failure.is_some() {
                    // an incomplete output would count every missing row as a difference
                    (DiffCounts::default(), Vec::new())
                } else {
                    // a diff that cannot be made is the shadow's failure, never the epoch's
                    let made = tokio::task::spawn_blocking(move || run_diff(&p, &v, &rule))
                        .await
                        .map_err(|e| format!("the shadow diff panicked: {e}"))
                        .and_then(|r| r.map_err(|e| e.to_string()));
                    match made {
                        Ok(m) => m,
                        Err(e) => {
                            tally.variant_failure = Some(e);
                            (DiffCounts::default(), Vec::new())
                        }
                    }
                };
                if counts.differing() > 0 {
                    tracing::warn!(stage = %stage, variant = %choice.variant, epoch, missing = counts.missing, extra = counts.extra, changed = counts.changed, "shadow variant differs from the primary");
                }
                samples.insert(stage.clone(), sample);
                diff_counts = Some(counts);
            }
            let primary_rows = tally.delivered.get(PRIMARY).copied().unwrap_or(0);
            let variant_rows = match choice.mode {
                // a failed shadow epoch counts every row it should have handled
                Mode::Shadow if tally.variant_failure.is_some() => primary_rows,
                Mode::Shadow => diff_counts.as_ref().map_or(0, |d| d.variant_rows),
                _ => tally.delivered.get(&choice.variant).copied().unwrap_or(0),
            };
            let runtime = plan
                .externals
                .get(&variant_component(stage, &choice.variant));
            let latencies_us = runtime.map(|rt| rt.take_recent()).unwrap_or_default();
            let st = self.state.entry(stage.clone()).or_default();
            let starts = runtime.map_or(0, |rt| rt.starts.load(Ordering::Relaxed));
            let seen = st.starts_seen.insert(choice.variant.clone(), starts);
            let restarted = starts > seen.unwrap_or(starts);
            if let Some(f) = &tally.variant_failure {
                tracing::warn!(stage = %stage, variant = %choice.variant, epoch, error = %f, "shadow variant failed; the primary's output is delivered");
            }
            for (branch, n) in &tally.delivered {
                let t = st.totals.entry(branch.clone()).or_default();
                t.rows += n;
                t.epochs += 1;
            }
            if choice.mode.runs_variant() {
                let failed = tally.variant_failure.is_some() || restarted;
                let t = st.totals.entry(choice.variant.clone()).or_default();
                if choice.mode == Mode::Shadow {
                    t.rows += variant_rows;
                    t.epochs += 1;
                }
                t.row_errors += row_errors;
                t.failures += u64::from(failed);
                if let Some(d) = &diff_counts {
                    st.diff.add(d);
                }
                if for_guard && (compared || choice.mode != Mode::Shadow) {
                    let outcome = Outcome {
                        epoch,
                        variant_rows,
                        row_errors,
                        failed,
                        diff: diff_counts.clone(),
                        latencies_us,
                    };
                    let keep = r.config.guard.as_ref().map_or(5, |g| g.min_epochs) as usize;
                    judge_later(&mut st.window, outcome, keep);
                }
            }
            records.insert(
                stage.clone(),
                RolloutRecord {
                    choice: choice.clone(),
                    rows: tally.delivered,
                    diff: diff_counts,
                },
            );
        }
        Ok((records, samples))
    }

    /// The choices a replay runs with: those its commit recorded; a stage
    /// the commit does not name (rolled out since) runs its primary. A
    /// recorded choice this pipeline cannot run (its variant was removed)
    /// is refused: replaying it another way would break exactly once.
    pub(crate) fn replay_choices(
        &self,
        recorded: &BTreeMap<String, Choice>,
    ) -> Result<BTreeMap<String, Choice>> {
        let mut out = BTreeMap::new();
        for (s, r) in &self.stages {
            let c = match recorded.get(s) {
                Some(c) if c.mode.runs_variant() => {
                    validate(s, r, c).map_err(|e| {
                        SluiceError::Internal(format!(
                            "cannot replay a committed range as it first ran ({c}): {e}; restore the variant to finish the replay"
                        ))
                    })?;
                    c.clone()
                }
                Some(c) => c.clone(),
                None => Choice {
                    mode: Mode::Off,
                    ..default_choice(r)
                },
            };
            out.insert(s.clone(), c);
        }
        Ok(out)
    }

    /// Judges every stage's window; rolls a breaching variant back to the
    /// primary (in the flags file, so it holds across restarts). Returns
    /// the stages rolled back, with why.
    pub(crate) async fn guard(&mut self) -> Vec<(String, String)> {
        let mut rolled = Vec::new();
        for (stage, r) in &self.stages {
            let Some(choice) = self.current.get(stage).cloned() else {
                continue;
            };
            let st = self.state.entry(stage.clone()).or_default();
            if !choice.mode.runs_variant() {
                if !st.verdict.starts_with("rolled back") {
                    st.verdict = "off".into();
                }
                continue;
            }
            let Some(g) = &r.config.guard else {
                st.verdict = "no guard".into();
                continue;
            };
            match breach(g, &st.window) {
                Some(reason) => {
                    let at = st.window.back().map_or(0, |o| o.epoch);
                    let flag = Flag {
                        mode: Mode::Off,
                        variant: choice.variant.clone(),
                        percent: Some(choice.percent),
                        set_by: "guard".into(),
                        set_at: now(),
                        reason: Some(format!("epoch {at}: {reason}")),
                    };
                    tracing::warn!(stage = %stage, variant = %choice.variant, mode = choice.mode.as_str(), epoch = at, reason = %reason, "rollout guard broken: rolling back to the primary");
                    st.verdict = format!("rolled back at epoch {at}: {reason}");
                    st.rollbacks.push(json!({"epoch": at, "from": choice.mode.as_str(), "variant": choice.variant, "reason": reason, "at": flag.set_at}));
                    st.window.clear();
                    st.guard_flag = Some(flag.clone());
                    if let Some(f) = &self.flags {
                        // a file that cannot be read is not overwritten: it may
                        // hold other stages' flags
                        let written = match f.read().await {
                            Ok(flags) => {
                                let mut flags = flags.unwrap_or(Flags {
                                    format: super::flags::FLAGS_FORMAT,
                                    stages: BTreeMap::new(),
                                });
                                flags.stages.insert(stage.clone(), flag.clone());
                                f.write(&flags).await
                            }
                            Err(e) => Err(e),
                        };
                        if let Err(e) = written {
                            tracing::error!(error = %e, "cannot record the rollback in the flags file; this run keeps it");
                        }
                    }
                    self.current.insert(stage.clone(), flag.choice(r));
                    rolled.push((stage.clone(), reason));
                }
                None => {
                    let n = st.window.len();
                    st.verdict = if n >= g.min_epochs as usize {
                        "ready".into()
                    } else {
                        format!("watching ({n} of {} epochs)", g.min_epochs)
                    };
                }
            }
        }
        rolled
    }

    /// The status `sluice rollout status` prints, as JSON.
    pub(crate) async fn status(&self, plan: &PipelinePlan, last_epoch: u64) -> serde_json::Value {
        let mut stages = serde_json::Map::new();
        for (stage, r) in &self.stages {
            let st = self.state.get(stage);
            let choice = self.current.get(stage);
            let mut branches = serde_json::Map::new();
            let names = std::iter::once(PRIMARY.to_string()).chain(r.variants.keys().cloned());
            for b in names {
                let runtime = if b == PRIMARY {
                    plan.externals.get(stage)
                } else {
                    plan.externals.get(&variant_component(stage, &b))
                };
                let totals = st
                    .and_then(|s| s.totals.get(&b))
                    .cloned()
                    .unwrap_or_default();
                let window: Vec<u32> = st
                    .filter(|_| b != PRIMARY)
                    .map(|s| {
                        s.window
                            .iter()
                            .flat_map(|o| o.latencies_us.iter().copied())
                            .collect()
                    })
                    .unwrap_or_default();
                let (p50, p99) = match runtime {
                    Some(rt) if window.is_empty() => {
                        (rt.latency_quantile_us(0.5), rt.latency_quantile_us(0.99))
                    }
                    _ => (quantile(&window, 0.5), quantile(&window, 0.99)),
                };
                let process = match runtime {
                    Some(rt) => rt.process_usage().await,
                    None => None,
                };
                branches.insert(
                    b.clone(),
                    json!({
                        "kind": if b == PRIMARY { plan.spec.stages.get(stage).map(|s| s.kind()) } else { r.variants.get(&b).map(|s| s.kind()) },
                        "implementation": runtime.map(|rt| format!("{} {} ({})", rt.manifest.name, rt.manifest.version, rt.manifest.language)),
                        "rows": totals.rows,
                        "row_errors": totals.row_errors,
                        "failures": totals.failures,
                        "epochs": totals.epochs,
                        "restarts": runtime.map(|rt| rt.starts.load(Ordering::Relaxed).saturating_sub(1)),
                        "p50_ms": p50.map(|u| u as f64 / 1000.0),
                        "p99_ms": p99.map(|u| u as f64 / 1000.0),
                        "cpu_seconds": process.map(|p| p.cpu_seconds),
                        "rss_bytes": process.map(|p| p.rss_bytes),
                        "peak_rss_bytes": process.map(|p| p.peak_rss_bytes),
                    }),
                );
            }
            stages.insert(
                stage.clone(),
                json!({
                    "mode": choice.map(|c| c.mode.as_str()),
                    "variant": choice.map(|c| c.variant.clone()),
                    "percent": choice.map(|c| c.percent),
                    "verdict": st.map(|s| s.verdict.clone()),
                    "guard": r.config.guard,
                    "diff": st.map(|s| s.diff.clone()),
                    "rollbacks": st.map(|s| s.rollbacks.clone()),
                    "branches": branches,
                }),
            );
        }
        json!({
            "pipeline": plan.spec.id(),
            "updated_at": now(),
            "last_committed_epoch": last_epoch,
            "stages": stages,
        })
    }

    /// Writes the status beside the flags file (a failure is logged: the
    /// status is for people, the commit already happened).
    pub(crate) async fn write_status(
        &self,
        plan: &PipelinePlan,
        last_epoch: u64,
    ) -> serde_json::Value {
        let status = self.status(plan, last_epoch).await;
        if let Some(f) = &self.flags
            && let Err(e) = f.write_status(&status).await
        {
            tracing::warn!(error = %e, "rollout status not written");
        }
        status
    }
}

/// The choice the pipeline file makes.
fn default_choice(r: &StageRollout) -> Choice {
    Choice {
        mode: r.config.mode,
        variant: r.variant().unwrap_or_default().to_string(),
        percent: r.config.percent,
    }
}

/// Why `choice` cannot run stage `stage`, if it cannot.
pub(crate) fn validate(
    stage: &str,
    r: &StageRollout,
    choice: &Choice,
) -> std::result::Result<(), String> {
    if !r.variants.contains_key(&choice.variant) {
        return Err(format!(
            "stage `{stage}` has no variant `{}` (it has {})",
            choice.variant,
            r.variants.keys().cloned().collect::<Vec<_>>().join(", ")
        ));
    }
    if !(0.0..=100.0).contains(&choice.percent) {
        return Err(format!(
            "stage `{stage}`: percent {} is not within 0 to 100",
            choice.percent
        ));
    }
    if choice.mode == Mode::Canary && !r.splittable {
        return Err(format!(
            "stage `{stage}`: a canary splits the rows of the stage's one input, and it reads several"
        ));
    }
    Ok(())
}

fn run_diff(
    p: &[RecordBatch],
    v: &[RecordBatch],
    rule: &DiffRule,
) -> Result<(DiffCounts, Vec<DiffRow>)> {
    let Some(schema) = p.first().or(v.first()).map(|b| b.schema()) else {
        return Ok((DiffCounts::default(), Vec::new()));
    };
    diff::diff(p, v, &schema, rule).map_err(|e| SluiceError::Internal(format!("shadow diff: {e}")))
}

/// Adds an epoch's outcome to the guard's window of the last `keep`. A
/// retried epoch is judged once: by the retry's outcome, failed if any
/// attempt failed.
fn judge_later(window: &mut VecDeque<Outcome>, mut outcome: Outcome, keep: usize) {
    if let Some(prev) = window.back()
        && prev.epoch == outcome.epoch
    {
        outcome.failed |= prev.failed;
        window.pop_back();
    }
    window.push_back(outcome);
    while window.len() > keep {
        window.pop_front();
    }
}

/// The first threshold the window breaks, said for people.
fn breach(g: &GuardConfig, window: &VecDeque<Outcome>) -> Option<String> {
    if window.is_empty() {
        return None;
    }
    let rows: u64 = window.iter().map(|o| o.variant_rows).sum();
    // a failed exchange or a restart counts every row of its epoch as an error
    let errors: u64 = window
        .iter()
        .map(|o| {
            if o.failed {
                o.variant_rows.max(1) + o.row_errors
            } else {
                o.row_errors
            }
        })
        .sum();
    if let Some(max) = g.max_error_rate {
        let handled = (rows + window.iter().map(|o| o.row_errors).sum::<u64>()).max(1);
        let rate = errors as f64 / handled as f64;
        if rate > max {
            return Some(format!(
                "error rate {rate:.6} > max_error_rate {max} over the last {} epochs",
                window.len()
            ));
        }
    }
    if let Some(max) = g.max_diff_rate {
        let (differing, primary) = window
            .iter()
            .filter_map(|o| o.diff.as_ref())
            .fold((0u64, 0u64), |(d, p), c| {
                (d + c.differing(), p + c.primary_rows.max(c.variant_rows))
            });
        let rate = differing as f64 / primary.max(1) as f64;
        if rate > max {
            return Some(format!(
                "diff rate {rate:.6} ({differing} differing rows) > max_diff_rate {max} over the last {} epochs",
                window.len()
            ));
        }
    }
    if let Some(max) = g.max_p99_ms {
        let all: Vec<u32> = window
            .iter()
            .flat_map(|o| o.latencies_us.iter().copied())
            .collect();
        if let Some(p99) = quantile(&all, 0.99) {
            let ms = p99 as f64 / 1000.0;
            if ms > max {
                return Some(format!("p99 batch latency {ms:.1} ms > max_p99_ms {max}"));
            }
        }
    }
    None
}

/// The `q` quantile (0..=1) of `samples`, nearest rank.
pub(crate) fn quantile(samples: &[u32], q: f64) -> Option<u32> {
    if samples.is_empty() {
        return None;
    }
    let mut s = samples.to_vec();
    s.sort_unstable();
    s.get(((s.len() - 1) as f64 * q).round() as usize).copied()
}

/// The plan's rollouts, fixed at compile time.
#[derive(Debug)]
pub(crate) struct RolloutPlan {
    /// Every rolled-out stage.
    pub stages: BTreeMap<String, StageRollout>,
    /// Where the flags are (none: the pipeline has no file sink and no
    /// `rollout_flags`; the pipeline's `[rollout]` tables rule).
    pub flags: Option<FlagsFile>,
}

impl RolloutPlan {
    /// The rollout plan of `spec`, when it rolls anything out.
    pub(crate) fn of(
        spec: &crate::spec::PipelineSpec,
        stores: &crate::storage::StoreRegistry,
    ) -> Result<Option<Arc<Self>>> {
        if spec.rollouts.is_empty() {
            return Ok(None);
        }
        let flags = FlagsFile::of(spec, stores).map_err(|e| {
            SluiceError::spec(
                spec.issue("settings.rollout_flags", e)
                    .with_help("a URL or path of the rollout flags file"),
            )
        })?;
        Ok(Some(Arc::new(Self {
            stages: spec.rollouts.clone(),
            flags,
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(rows: u64, errors: u64, failed: bool, differing: u64) -> Outcome {
        Outcome {
            epoch: 1,
            variant_rows: rows,
            row_errors: errors,
            failed,
            diff: Some(DiffCounts {
                primary_rows: rows,
                variant_rows: rows,
                changed: differing,
                ..Default::default()
            }),
            latencies_us: vec![1000; 10],
        }
    }

    #[test]
    fn a_retried_epoch_is_judged_once_and_keeps_its_failure() {
        let mut w = VecDeque::new();
        let at = |epoch, failed| Outcome {
            epoch,
            ..outcome(10, 0, failed, 0)
        };
        judge_later(&mut w, at(1, false), 3);
        judge_later(&mut w, at(2, true), 3);
        judge_later(&mut w, at(2, false), 3); // the retry of epoch 2
        assert_eq!(
            w.iter().map(|o| (o.epoch, o.failed)).collect::<Vec<_>>(),
            [(1, false), (2, true)]
        );
        for e in 3..=5 {
            judge_later(&mut w, at(e, false), 3);
        }
        assert_eq!(w.iter().map(|o| o.epoch).collect::<Vec<_>>(), [3, 4, 5]);
    }

    #[test]
    fn the_guard_names_the_threshold_it_breaks() {
        let g = GuardConfig {
            max_error_rate: Some(0.01),
            max_diff_rate: Some(0.0),
            max_p99_ms: Some(5.0),
            min_epochs: 3,
        };
        let w = |o: Vec<Outcome>| o.into_iter().collect::<VecDeque<_>>();
        assert_eq!(breach(&g, &w(vec![outcome(100, 0, false, 0)])), None);
        assert!(
            breach(&g, &w(vec![outcome(100, 5, false, 0)]))
                .unwrap()
                .contains("error rate")
        );
        assert!(
            breach(&g, &w(vec![outcome(100, 0, true, 0)]))
                .unwrap()
                .contains("error rate")
        );
        assert!(
            breach(&g, &w(vec![outcome(100, 0, false, 1)]))
                .unwrap()
                .contains("diff rate")
        );
        let mut slow = outcome(100, 0, false, 0);
        slow.latencies_us = vec![9000; 10];
        assert!(breach(&g, &w(vec![slow])).unwrap().contains("p99"));
    }
}
