//! What `sluice rollout set|status|promote|rollback` do, for the CLI and
//! for embedders: read and change a pipeline's flags file without running it.

use super::config::{Choice, Mode};
use super::control::validate;
use super::flags::{FLAGS_FORMAT, Flag, Flags, FlagsFile, now};
use crate::engine::Engine;
use crate::error::{Result, SluiceError};
use crate::spec::PipelineSpec;

fn flags_file(engine: &Engine, spec: &PipelineSpec) -> Result<FlagsFile> {
    if spec.rollouts.is_empty() {
        return Err(SluiceError::spec(
            spec.issue(
                "stages",
                "the pipeline rolls nothing out: no stage has `variants`",
            )
            .with_help("add `[stages.<name>.variants.<variant>]` (see docs/rollout.md)"),
        ));
    }
    FlagsFile::of(spec, engine.stores())
        .map_err(|e| SluiceError::spec(spec.issue("settings.rollout_flags", e)))?
        .ok_or_else(|| {
            SluiceError::spec(
                spec.issue(
                    "settings.rollout_flags",
                    "the pipeline has no file sink to keep its rollout flags beside",
                )
                .with_help("set `[settings] rollout_flags = \"state/rollout.json\"`"),
            )
        })
}

/// Changes stage `stage`'s flag with `changes` (`mode=canary`,
/// `percent=25`, `variant=rust`), starting from the flag in force (the
/// file's, else the pipeline's `[rollout]`). Returns the flag written and
/// the file's URL.
pub async fn set(
    engine: &Engine,
    spec: &PipelineSpec,
    stage: &str,
    changes: &[String],
) -> Result<(Flag, String)> {
    let file = flags_file(engine, spec)?;
    let r = spec.rollouts.get(stage).ok_or_else(|| {
        SluiceError::spec(spec.issue(
            format!("stages.{stage}"),
            format!(
                "stage `{stage}` has no variants; rolled-out stages: {}",
                spec.rollouts.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
        ))
    })?;
    let bad = |m: String| {
        SluiceError::spec(
            spec.issue(format!("stages.{stage}.rollout"), m)
                .with_help("e.g. `mode=canary percent=25`, `mode=shadow variant=rust`, `mode=off`"),
        )
    };
    let mut flags = file.read().await.map_err(bad)?.unwrap_or(Flags {
        format: FLAGS_FORMAT,
        stages: Default::default(),
    });
    let mut choice = match flags.stages.get(stage) {
        Some(f) => f.choice(r),
        None => Choice {
            mode: r.config.mode,
            variant: r.variant().unwrap_or_default().to_string(),
            percent: r.config.percent,
        },
    };
    for c in changes {
        let (k, v) = c
            .split_once('=')
            .ok_or_else(|| bad(format!("`{c}` is not KEY=VALUE")))?;
        match k {
            "mode" => {
                choice.mode = Mode::parse(v).ok_or_else(|| {
                    bad(format!(
                        "mode `{v}`: expected off, shadow, canary or primary"
                    ))
                })?
            }
            "variant" => choice.variant = v.to_string(),
            "percent" => {
                choice.percent = v
                    .trim_end_matches('%')
                    .parse::<f64>()
                    .map_err(|_| bad(format!("percent `{v}` is not a number")))?
            }
            other => {
                return Err(bad(format!(
                    "unknown key `{other}`: expected mode, variant or percent"
                )));
            }
        }
    }
    validate(stage, r, &choice).map_err(bad)?;
    let flag = Flag {
        mode: choice.mode,
        variant: choice.variant,
        percent: Some(choice.percent),
        set_by: "cli".into(),
        set_at: now(),
        reason: None,
    };
    flags.stages.insert(stage.to_string(), flag.clone());
    file.write(&flags).await.map_err(bad)?;
    Ok((flag, file.url.clone()))
}

/// The flags in force and the status the last run wrote (JSON, see
/// docs/rollout.md), with the flags file's URL.
pub async fn status(
    engine: &Engine,
    spec: &PipelineSpec,
) -> Result<(Flags, Option<serde_json::Value>, String)> {
    let file = flags_file(engine, spec)?;
    let err = |m: String| SluiceError::spec(spec.issue("settings.rollout_flags", m));
    let flags = file.read().await.map_err(err)?.unwrap_or_default();
    let status = file.read_status().await.map_err(err)?;
    Ok((flags, status, file.url.clone()))
}
