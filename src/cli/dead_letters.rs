//! `sluice dead-letters` (what a pipeline gave up on) and `sluice replay`
//! (feeding corrected rows back).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use comfy_table::Table;
use comfy_table::presets::UTF8_FULL_CONDENSED;
use sluice::datafusion::arrow::array::{Array, RecordBatch};
use sluice::datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use sluice::sources::SourceKind;
use sluice::spec::S3Settings;
use sluice::{Engine, PipelineSpec, Result, SluiceError, SpecIssue};

/// Lists the dead letters at `url` (or exports one source's raw lines).
pub async fn list(
    engine: &Engine,
    url: &str,
    source: Option<&str>,
    export: Option<&Path>,
    json: bool,
) -> ExitCode {
    let batches =
        match sluice::inspect::read_committed_rows(engine, url, &S3Settings::default()).await {
            Ok(b) => b,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(1);
            }
        };
    let rows = match records(&batches) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {url}: not a dead-letter sink ({e})");
            return ExitCode::from(1);
        }
    };
    let mut rows: Vec<_> = rows
        .into_iter()
        .filter(|r| source.is_none_or(|s| r["component"] == s))
        .collect();
    // in input order: epoch, component, file, line
    let num = |r: &Record, k: &str| r[k].parse::<u64>().unwrap_or(u64::MAX);
    rows.sort_by(|a, b| {
        (num(a, "epoch"), &a["component"], &a["file"], num(a, "line")).cmp(&(
            num(b, "epoch"),
            &b["component"],
            &b["file"],
            num(b, "line"),
        ))
    });
    if let Some(path) = export {
        let Some(source) = source else {
            eprintln!("error: --export needs --source: the raw lines of one source share a format");
            return ExitCode::from(2);
        };
        // rows that failed a check are decoded rows (JSON), not input lines
        let (lines, decoded): (Vec<_>, Vec<_>) = rows
            .iter()
            .partition(|r| !r["line"].is_empty() || !r["offset"].is_empty());
        let text: String = lines.iter().map(|r| format!("{}\n", r["raw"])).collect();
        if let Err(e) = std::fs::write(path, text) {
            eprintln!("error: {}: {e}", path.display());
            return ExitCode::from(1);
        }
        outln!(
            "wrote {} raw line(s) of `{source}` to {}",
            lines.len(),
            path.display()
        );
        if !decoded.is_empty() {
            outln!(
                "{} row(s) failed a check and are decoded rows, not input lines: not exported (see --json)",
                decoded.len()
            );
        }
        outln!(
            "fix them, then: sluice replay <pipeline.toml> --source {source} --input {}",
            path.display()
        );
        return ExitCode::SUCCESS;
    }
    if json {
        for r in &rows {
            outln!(
                "{}",
                serde_json::Value::Object(
                    r.iter()
                        .map(|(k, v)| (k.clone(), v.clone().into()))
                        .collect()
                )
            );
        }
        return ExitCode::SUCCESS;
    }
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED).set_header([
        "epoch",
        "component",
        "code",
        "where",
        "message",
        "raw",
    ]);
    for r in &rows {
        let place = match (r["file"].as_str(), r["line"].as_str(), r["offset"].as_str()) {
            ("", _, _) => "-".to_string(),
            (f, "", "") => f.to_string(),
            (f, "", o) => format!("{f} (split at byte {o})"),
            (f, l, _) => format!("{f}:{l}"),
        };
        let raw: String = r["raw"].chars().take(60).collect();
        t.add_row([
            r["epoch"].clone(),
            r["component"].clone(),
            r["code"].clone(),
            place,
            r["message"].clone(),
            raw,
        ]);
    }
    outln!("{t}");
    outln!("{} dead letter(s) at {url}", rows.len());
    ExitCode::SUCCESS
}

type Record = std::collections::BTreeMap<String, String>;

/// Rows as column name → text ("" for null).
fn records(batches: &[RecordBatch]) -> std::result::Result<Vec<Record>, String> {
    let mut out = Vec::new();
    let opts = FormatOptions::default();
    for b in batches {
        let needed = [
            "epoch",
            "component",
            "code",
            "message",
            "file",
            "line",
            "offset",
            "raw",
        ];
        for needed in needed {
            if b.column_by_name(needed).is_none() {
                return Err(format!("no column `{needed}`"));
            }
        }
        let columns: Vec<(String, &dyn Array)> = b
            .schema()
            .fields()
            .iter()
            .zip(b.columns())
            .map(|(f, c)| (f.name().clone(), c.as_ref()))
            .collect();
        let formatters = columns
            .iter()
            .map(|(_, c)| ArrayFormatter::try_new(*c, &opts))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())?;
        for row in 0..b.num_rows() {
            let mut r = Record::new();
            for ((name, col), f) in columns.iter().zip(&formatters) {
                let v = if col.is_null(row) {
                    String::new()
                } else {
                    f.value(row).to_string()
                };
                r.insert(name.clone(), v);
            }
            out.push(r);
        }
    }
    Ok(out)
}

/// The pipeline with `source` reading `input` instead of its own path: the
/// replayed rows flow into the same sinks and commit like any new input.
pub fn replay_spec(
    pipeline: &Path,
    source: &str,
    input: &Path,
    overrides: &mut Vec<String>,
) -> Result<PipelineSpec> {
    let spec = PipelineSpec::from_file_with_overrides(pipeline, overrides)?;
    let input: PathBuf = std::path::absolute(input).unwrap_or_else(|_| input.to_path_buf());
    let quoted = serde_json::to_string(&input.to_string_lossy()).unwrap_or_default();
    match spec.sources.get(source).map(|s| &s.kind) {
        Some(SourceKind::Csv(_)) => {
            overrides.push(format!("sources.{source}.path={quoted}"));
            // exported lines have no header
            overrides.push(format!("sources.{source}.header=false"));
        }
        Some(SourceKind::Jsonl(_)) => overrides.push(format!("sources.{source}.path={quoted}")),
        Some(other) => {
            return Err(SluiceError::spec(SpecIssue::new(
                pipeline,
                format!("sources.{source}"),
                format!(
                    "replay feeds lines to a csv or jsonl source; `{source}` is a {} source",
                    other.name()
                ),
            )));
        }
        None => {
            return Err(SluiceError::spec(SpecIssue::new(
                pipeline,
                format!("sources.{source}"),
                format!(
                    "no source `{source}` in the pipeline (sources: {})",
                    spec.sources.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            )));
        }
    }
    PipelineSpec::from_file_with_overrides(pipeline, overrides)
}
