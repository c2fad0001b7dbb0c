//! `sluice inspect`: the commits of a sink.

use std::process::ExitCode;

use comfy_table::Table;
use comfy_table::presets::UTF8_FULL_CONDENSED;
use sluice::Commit;
use sluice::Engine;
use sluice::spec::S3Settings;

/// Prints what the sink at `url` holds.
pub async fn run(engine: &Engine, url: &str, json: bool) -> ExitCode {
    let commits = match sluice::inspect::read_commits(engine, url, &S3Settings::default()).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    if json {
        match serde_json::to_string_pretty(&commits) {
            Ok(s) => outln!("{s}"),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(1);
            }
        }
        return ExitCode::SUCCESS;
    }
    let delta = if sluice::delta::is_table(engine, url, &S3Settings::default()).await {
        match sluice::delta::history(engine, url, &S3Settings::default(), None).await {
            Ok(h) => Some(h),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(1);
            }
        }
    } else {
        None
    };
    let Some(last) = commits.last() else {
        if let Some(history) = &delta {
            outln!("{url}: a Delta table with no sluice commits");
            super::delta::print_history(history);
            return ExitCode::SUCCESS;
        }
        eprintln!("{url}: no sluice commits here (no _sluice/commits/ folder with commit files)");
        return ExitCode::from(1);
    };
    outln!(
        "sink `{}` of pipeline {} at {url}",
        last.sink,
        last.pipeline
    );
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_header(vec![
        "epoch",
        "committed at",
        "run",
        "files",
        "rows",
        "bytes",
    ]);
    for c in &commits {
        t.add_row(vec![
            c.epoch.to_string(),
            c.committed_at.clone(),
            c.run_id.clone(),
            c.files.len().to_string(),
            c.rows.to_string(),
            c.bytes.to_string(),
        ]);
    }
    outln!("{t}");
    let (files, rows, bytes) = commits.iter().fold((0usize, 0u64, 0u64), |(f, r, b), c| {
        (
            f + c.files.len(),
            r.saturating_add(c.rows),
            b.saturating_add(c.bytes),
        )
    });
    outln!(
        "total: {} commits, {files} files, {rows} rows, {bytes} bytes",
        commits.len()
    );
    outln!("\nfiles of the last commit:");
    for f in &last.files {
        outln!("  {} ({} rows, {} bytes)", f.path, f.rows, f.bytes);
    }
    outln!("\nschema:");
    for field in last.schema.fields() {
        outln!(
            "  {}: {}{}",
            field.name(),
            field.data_type(),
            if field.is_nullable() { "" } else { " not null" }
        );
    }
    if !last.partition_by.is_empty() {
        outln!("  partitioned by: {}", last.partition_by.join(", "));
    }
    outln!("\nlineage:");
    for (i, l) in last.lineage.iter().enumerate() {
        outln!(
            "  {}. {} ({}, {} {})",
            i + 1,
            l.stage,
            l.kind,
            l.language,
            l.version
        );
    }
    print_rollouts(&commits);
    print_state(last);
    outln!("\nsource offsets at the last commit:");
    for (src, o) in &last.source_offsets {
        outln!("  {src}: {}", o.end);
    }
    if let Some(history) = &delta {
        super::delta::print_history(history);
    }
    ExitCode::SUCCESS
}

/// How each rolled-out stage ran, commit by commit: the choice, the rows by
/// branch, and a shadow's diff. Consecutive commits with the same choice are
/// one line.
fn print_rollouts(commits: &[Commit]) {
    let stages: std::collections::BTreeSet<&String> =
        commits.iter().flat_map(|c| c.rollout.keys()).collect();
    if stages.is_empty() {
        return;
    }
    outln!("\nrollouts:");
    for stage in stages {
        outln!("  {stage}:");
        let mut runs: Vec<(u64, u64, sluice::rollout::RolloutRecord)> = Vec::new();
        for c in commits {
            let Some(r) = c.rollout.get(stage) else {
                continue;
            };
            match runs.last_mut() {
                Some((_, last, sum)) if sum.choice == r.choice => {
                    *last = c.epoch;
                    sum.add(r);
                }
                _ => runs.push((c.epoch, c.epoch, r.clone())),
            }
        }
        for (first, last, r) in runs {
            let epochs = if first == last {
                format!("epoch {first}")
            } else {
                format!("epochs {first}..={last}")
            };
            let rows: Vec<String> = r.rows.iter().map(|(b, n)| format!("{b} {n}")).collect();
            let mut line = format!("    {epochs}: {}; rows: {}", r.choice, rows.join(", "));
            if let Some(d) = &r.diff {
                line.push_str(&format!(
                    "; diff: {} missing, {} extra, {} changed",
                    d.missing, d.extra, d.changed
                ));
                for (col, n) in &d.columns {
                    line.push_str(&format!(", {col} {n}"));
                }
            }
            outln!("{line}");
        }
    }
}

/// The state the last commit covers: every stateful operator's snapshot
/// (its stage and version, rows, bytes, watermark) and the event-time
/// clocks of the sources.
fn print_state(last: &Commit) {
    let state = &last.state;
    if state.is_empty() {
        return;
    }
    outln!("\nstate at the last commit:");
    if !state.operators.is_empty() {
        let mut t = Table::new();
        t.load_preset(UTF8_FULL_CONDENSED);
        t.set_header(vec![
            "operator",
            "stage version",
            "rows",
            "bytes on disk",
            "bytes in memory",
            "watermark",
            "snapshot",
        ]);
        for (operator, s) in &state.operators {
            // operators are named `<stage>`, `<stage>.1`, `<stage>.left`, ...
            let stage = operator.split('.').next().unwrap_or(operator);
            let version = last
                .lineage
                .iter()
                .find(|l| l.stage == stage)
                .map_or("-".to_string(), |l| l.version.clone());
            t.add_row(vec![
                operator.clone(),
                version,
                s.rows.to_string(),
                s.bytes.to_string(),
                s.memory_bytes.to_string(),
                s.watermark.map_or("-".into(), |w| match w {
                    // the input ended: every window closed
                    i64::MAX => "end of input".to_string(),
                    w => sluice::state::format_event_time(w),
                }),
                s.path.clone(),
            ]);
        }
        outln!("{t}");
        let (rows, bytes, memory) =
            state
                .operators
                .values()
                .fold((0u64, 0u64, 0u64), |(r, b, m), s| {
                    // the numbers come from commit files: no overflow on an edited one
                    (
                        r.saturating_add(s.rows),
                        b.saturating_add(s.bytes),
                        m.saturating_add(s.memory_bytes),
                    )
                });
        outln!(
            "  {} operators, {rows} rows of state, {bytes} bytes on disk, {memory} in memory",
            state.operators.len()
        );
    }
    for (source, clock) in &state.clocks {
        let time = clock
            .max_event_time
            .map_or("none yet".into(), sluice::state::format_event_time);
        let ended = if clock.ended { " (ended)" } else { "" };
        outln!("  {source}: largest event time {time}{ended}");
    }
}
