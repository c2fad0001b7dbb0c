//! `sluice stage check`: the conformance kit, as a table.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use comfy_table::Table;
use comfy_table::presets::UTF8_FULL_CONDENSED;
use sluice_flight::conformance::{Outcome, all_passed, check};
use sluice_flight::{StageClient, Target};

/// Certifies the stage at `url`, or the program `command` started on a unix socket.
pub async fn run(url: Option<String>, command: Vec<String>) -> ExitCode {
    let mut child = None;
    let target = match (url, command.split_first()) {
        (Some(u), None) => Target::Url(u),
        (None, Some((program, args))) => {
            let socket = std::env::temp_dir().join(format!("sluice-check-{}.sock", std::process::id()));
            let _ = std::fs::remove_file(&socket);
            let spawned = tokio::process::Command::new(program)
                .args(args)
                .env(sluice_flight::ENV_SOCKET, &socket)
                .kill_on_drop(true)
                .spawn();
            match spawned {
                Ok(c) => child = Some(c),
                Err(e) => {
                    eprintln!("error: cannot start {program}: {e}");
                    return ExitCode::from(1);
                }
            }
            let target = Target::Unix(socket.clone());
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if let Some(c) = child.as_mut() {
                    if let Ok(Some(status)) = c.try_wait() {
                        eprintln!("error: {program} exited at start ({status})");
                        return ExitCode::from(1);
                    }
                }
                if socket.exists() {
                    if let Ok(mut c) = StageClient::connect(&target, Duration::from_secs(2)).await {
                        if c.health().await.is_ok() {
                            break;
                        }
                    }
                }
                if Instant::now() > deadline {
                    eprintln!("error: {program} did not answer `health` on {} within 20 s", socket.display());
                    return ExitCode::from(1);
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            target
        }
        _ => {
            eprintln!("error: give either --url grpc://host:port or a command after `--`");
            return ExitCode::from(2);
        }
    };
    println!("conformance of the stage at {target} (sluice.stage.v1)");
    let results = check(&target).await;
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_header(vec!["check", "result", "ms", "what", "detail"]);
    for r in &results {
        let (result, detail) = match &r.outcome {
            Outcome::Pass => ("pass", String::new()),
            Outcome::Fail(m) => ("FAIL", m.clone()),
            Outcome::Skip(m) => ("skip", m.clone()),
        };
        t.add_row(vec![r.name.to_string(), result.to_string(), r.took.as_millis().to_string(), r.what.to_string(), detail]);
    }
    println!("{t}");
    let mut ok = all_passed(&results);
    if let Some(mut c) = child {
        if let Ok(Some(status)) = c.try_wait() {
            println!("the stage process exited during the checks ({status})");
            ok = false;
        }
        let _ = c.start_kill();
        let _ = c.wait().await;
    }
    let (pass, fail, skip) = results.iter().fold((0, 0, 0), |(p, f, s), r| match r.outcome {
        Outcome::Pass => (p + 1, f, s),
        Outcome::Fail(_) => (p, f + 1, s),
        Outcome::Skip(_) => (p, f, s + 1),
    });
    println!("{pass} passed, {fail} failed, {skip} skipped");
    if ok { ExitCode::SUCCESS } else { ExitCode::from(1) }
}
