//! `sluice rollout set|status|promote|rollback`: the flags of a pipeline's
//! rolled-out stages, changed while it runs (it reads them every epoch).

use std::path::Path;
use std::process::ExitCode;

use comfy_table::Table;
use comfy_table::presets::UTF8_FULL_CONDENSED;
use serde_json::Value;
use sluice::{Engine, PipelineSpec};

use super::report;

/// `set`, `promote` (mode=primary) and `rollback` (mode=off).
pub async fn set(engine: &Engine, pipeline: &Path, stage: &str, changes: &[String]) -> ExitCode {
    let spec = match PipelineSpec::from_file(pipeline) {
        Ok(s) => s,
        Err(e) => return report(&e),
    };
    match sluice::rollout::set(engine, &spec, stage, changes).await {
        Ok((flag, url)) => {
            let share = match (flag.mode, flag.percent) {
                (sluice::rollout::Mode::Canary, Some(p)) => format!(" at {p}%"),
                _ => String::new(),
            };
            outln!(
                "stage `{stage}`: {} {}{share} (from the next epoch; written to {url})",
                flag.mode.as_str(),
                flag.variant
            );
            ExitCode::SUCCESS
        }
        Err(e) => report(&e),
    }
}

/// `status`: the flags and the last run's numbers, per stage and variant.
pub async fn status(engine: &Engine, pipeline: &Path, json: bool) -> ExitCode {
    let spec = match PipelineSpec::from_file(pipeline) {
        Ok(s) => s,
        Err(e) => return report(&e),
    };
    let (flags, status, url) = match sluice::rollout::status(engine, &spec).await {
        Ok(s) => s,
        Err(e) => return report(&e),
    };
    if json {
        let out = serde_json::json!({"flags_file": url, "flags": flags, "status": status});
        outln!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
        return ExitCode::SUCCESS;
    }
    outln!("flags: {url}");
    let Some(status) = status else {
        for (stage, r) in &spec.rollouts {
            let f = flags.stages.get(stage);
            outln!(
                "stage `{stage}`: {} {} (no run has reported yet)",
                f.map_or(r.config.mode.as_str(), |f| f.mode.as_str()),
                f.map_or(r.variant().unwrap_or_default(), |f| f.variant.as_str())
            );
        }
        return ExitCode::SUCCESS;
    };
    outln!(
        "last run report: {} (epoch {})",
        status["updated_at"].as_str().unwrap_or("?"),
        status["last_committed_epoch"]
    );
    for (stage, s) in status["stages"].as_object().into_iter().flatten() {
        let percent = if s["mode"] == "canary" {
            format!(" {}%", s["percent"].as_f64().unwrap_or(0.0))
        } else {
            String::new()
        };
        outln!(
            "\nstage `{stage}`: {} {}{percent} · guard: {}",
            s["mode"].as_str().unwrap_or("?"),
            s["variant"].as_str().unwrap_or("?"),
            s["verdict"].as_str().unwrap_or("?")
        );
        if let Some(f) = flags.stages.get(stage)
            && let Some(reason) = &f.reason
        {
            outln!("  flag set by {} at {}: {reason}", f.set_by, f.set_at);
        }
        let d = &s["diff"];
        if d["primary_rows"].as_u64().unwrap_or(0) > 0
            || d["variant_rows"].as_u64().unwrap_or(0) > 0
        {
            outln!(
                "  shadow diff: {} missing, {} extra, {} changed{}",
                d["missing"],
                d["extra"],
                d["changed"],
                d["columns"]
                    .as_object()
                    .filter(|c| !c.is_empty())
                    .map(|c| format!(
                        " (by column: {})",
                        c.iter()
                            .map(|(k, v)| format!("{k} {v}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                    .unwrap_or_default()
            );
        }
        let mut t = Table::new();
        t.load_preset(UTF8_FULL_CONDENSED);
        t.set_header(vec![
            "variant",
            "implementation",
            "rows",
            "errors",
            "failures",
            "p50 ms",
            "p99 ms",
            "CPU s",
            "RSS MiB",
        ]);
        for (b, v) in s["branches"].as_object().into_iter().flatten() {
            t.add_row(vec![
                b.clone(),
                text(&v["implementation"]).unwrap_or_else(|| text(&v["kind"]).unwrap_or_default()),
                v["rows"].to_string(),
                v["row_errors"].to_string(),
                v["failures"].to_string(),
                num(&v["p50_ms"], 2),
                num(&v["p99_ms"], 2),
                num(&v["cpu_seconds"], 2),
                v["rss_bytes"]
                    .as_f64()
                    .map_or("-".into(), |b| format!("{:.1}", b / 1048576.0)),
            ]);
        }
        outln!("{t}");
    }
    ExitCode::SUCCESS
}

fn text(v: &Value) -> Option<String> {
    v.as_str().map(str::to_string)
}

fn num(v: &Value, digits: usize) -> String {
    v.as_f64().map_or("-".into(), |x| format!("{x:.digits$}"))
}
