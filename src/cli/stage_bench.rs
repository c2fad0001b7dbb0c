//! `sluice stage bench`: a stage's variants side by side on sample input.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use comfy_table::Table;
use comfy_table::presets::UTF8_FULL_CONDENSED;
use sluice::rollout::{BenchOptions, bench};
use sluice::{Engine, PipelineSpec};

use super::report;

/// Runs the bench and prints the table (or JSON).
pub async fn run(
    engine: &Engine,
    pipeline: &Path,
    stage: &str,
    rows: usize,
    input: Option<PathBuf>,
    batch_sizes: Vec<usize>,
    json: bool,
) -> ExitCode {
    let spec = match PipelineSpec::from_file(pipeline) {
        Ok(s) => s,
        Err(e) => return report(&e),
    };
    let opts = BenchOptions {
        rows,
        input,
        batch_sizes,
    };
    let r = match bench(engine, &spec, stage, &opts).await {
        Ok(r) => r,
        Err(e) => return report(&e),
    };
    if json {
        outln!("{}", serde_json::to_string_pretty(&r).unwrap_or_default());
        return ExitCode::SUCCESS;
    }
    outln!(
        "stage `{}` over {} rows of {}",
        r.stage,
        r.input_rows,
        r.input
    );
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_header(vec![
        "variant",
        "implementation",
        "batch rows",
        "rows/s",
        "CPU s / M rows",
        "of it the stage's",
        "peak RSS MiB",
        "p50 ms",
        "p99 ms",
    ]);
    let opt = |v: Option<f64>, d: usize| v.map_or("-".to_string(), |x| format!("{x:.d$}"));
    for row in &r.rows {
        t.add_row(vec![
            row.variant.clone(),
            row.implementation.clone(),
            row.batch_size.to_string(),
            format!("{:.0}", row.rows_per_second),
            format!("{:.3}", row.cpu_s_per_m_rows),
            opt(row.stage_cpu_s_per_m_rows, 3),
            opt(row.peak_rss_bytes.map(|b| b as f64 / 1048576.0), 1),
            opt(row.p50_ms, 2),
            opt(row.p99_ms, 2),
        ]);
    }
    outln!("{t}");
    if let Some(c) = &r.cheapest {
        outln!("cheaper for this workload (least CPU per row at the largest batch size): {c}");
    }
    ExitCode::SUCCESS
}
