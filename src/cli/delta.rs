//! `sluice compact` and `sluice vacuum`: upkeep of a Delta table a `delta`
//! sink writes; and the Delta history `sluice inspect` prints.

use std::process::ExitCode;
use std::time::Duration;

use comfy_table::Table;
use comfy_table::presets::UTF8_FULL_CONDENSED;
use sluice::Engine;
use sluice::delta::TableVersion;
use sluice::spec::S3Settings;

/// Compacts the table at `url` into files of about `target` bytes.
pub async fn compact(engine: &Engine, url: &str, target: u64, json: bool) -> ExitCode {
    match sluice::delta::compact(engine, url, &S3Settings::default(), target).await {
        Ok(c) if json => print_json(&c),
        Ok(c) => {
            match c.version {
                Some(v) => outln!(
                    "{url}: version {v}: {} files ({} bytes) rewritten as {} ({} bytes)",
                    c.files_removed,
                    c.bytes_removed,
                    c.files_added,
                    c.bytes_added
                ),
                None => outln!("{url}: nothing to compact"),
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

/// Vacuums the table at `url`.
pub async fn vacuum(
    engine: &Engine,
    url: &str,
    retain: Duration,
    full: bool,
    dry_run: bool,
    force: bool,
) -> ExitCode {
    let s3 = S3Settings::default();
    match sluice::delta::vacuum(engine, url, &s3, retain, full, dry_run, force).await {
        Ok(files) => {
            let verb = if dry_run { "would delete" } else { "deleted" };
            outln!("{url}: {verb} {} files", files.len());
            for f in files {
                outln!("  {f}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

/// Prints a Delta table's history: every version, and the sluice epoch of
/// those a sluice sink committed.
pub fn print_history(versions: &[TableVersion]) {
    outln!("\nDelta history (oldest first):");
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_header(vec![
        "version",
        "committed at",
        "operation",
        "sluice epoch",
        "rows",
    ]);
    for v in versions {
        let at = v
            .timestamp
            .and_then(chrono::DateTime::from_timestamp_millis)
            .map_or("-".to_string(), |t| {
                t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
            });
        t.add_row(vec![
            v.version.map_or("-".to_string(), |v| v.to_string()),
            at,
            v.operation.clone(),
            v.commit
                .as_ref()
                .map_or("-".to_string(), |c| c.epoch.to_string()),
            v.commit
                .as_ref()
                .map_or("-".to_string(), |c| c.rows.to_string()),
        ]);
    }
    outln!("{t}");
}

fn print_json(value: &impl serde::Serialize) -> ExitCode {
    match serde_json::to_string_pretty(value) {
        Ok(s) => {
            outln!("{s}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}
