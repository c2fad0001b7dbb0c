//! The table printed at the end of a run.

use comfy_table::presets::UTF8_FULL_CONDENSED;
use comfy_table::{CellAlignment, Table};
use sluice::RunSummary;

fn human(n: f64) -> String {
    if n >= 1e9 {
        format!("{:.2}G", n / 1e9)
    } else if n >= 1e6 {
        format!("{:.2}M", n / 1e6)
    } else if n >= 1e3 {
        format!("{:.1}k", n / 1e3)
    } else {
        format!("{n:.0}")
    }
}

/// Prints the per-component table and what was committed.
pub fn print(s: &RunSummary) {
    if !s.removed_files.is_empty() {
        outln!(
            "recovered: deleted {} uncommitted file(s) left by an interrupted run",
            s.removed_files.len()
        );
    }
    if s.epochs == 0 {
        outln!(
            "{}: nothing new to read — every source is at its committed offsets ({} epoch(s) committed before). Run with --reset to rebuild the output.",
            s.pipeline,
            s.first_epoch
        );
        return;
    }
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_header(vec![
        "component",
        "kind",
        "rows in",
        "rows out",
        "batches",
        "wall s",
        "rows/s",
        "MB/s",
        "files",
    ]);
    for c in &s.components {
        t.add_row(vec![
            format!("{} {}", c.role, c.name),
            c.kind.clone(),
            c.rows_in.to_string(),
            c.rows_out.to_string(),
            if c.role == "sink" {
                "-".into()
            } else {
                c.batches.to_string()
            },
            format!("{:.2}", c.wall.as_secs_f64()),
            human(c.rows_per_sec()),
            format!("{:.1}", c.mb_per_sec()),
            if c.role == "sink" {
                c.files.to_string()
            } else {
                "-".into()
            },
        ]);
    }
    for i in 2..9 {
        if let Some(col) = t.column_mut(i) {
            col.set_cell_alignment(CellAlignment::Right);
        }
    }
    outln!("{t}");
    for c in &s.components {
        if c.rows_dead_lettered > 0 {
            outln!(
                "{} {}: {} row(s) could not be taken and went to the dead-letter sink",
                c.role,
                c.name,
                c.rows_dead_lettered
            );
        }
        if c.rows_skipped > 0 {
            outln!(
                "{} {}: {} row(s) could not be taken and were skipped (on_error = \"skip\")",
                c.role,
                c.name,
                c.rows_skipped
            );
        }
        if c.process_starts > 1 {
            outln!(
                "stage {}: the stage process was restarted {} time(s)",
                c.name,
                c.process_starts - 1
            );
        }
    }
    outln!(
        "{}: committed {} epoch(s) ({}..={}) in {:.2}s (run {})",
        s.pipeline,
        s.epochs,
        s.first_epoch,
        s.first_epoch + s.epochs - 1,
        s.wall.as_secs_f64(),
        s.run_id
    );
    if s.latency.epochs > 0 && (s.epochs > 1 || s.latency.max > 0.0) {
        outln!(
            "read-to-commit latency over {} epoch(s): p50 {:.3}s  p95 {:.3}s  p99 {:.3}s  max {:.3}s",
            s.latency.epochs,
            s.latency.p50,
            s.latency.p95,
            s.latency.p99,
            s.latency.max
        );
    }
    for (sink, url) in &s.outputs {
        outln!("  {sink} -> {url}");
    }
}
