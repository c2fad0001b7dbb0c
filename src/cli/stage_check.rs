//! `sluice stage check`: the conformance kit, as a table.

use std::process::ExitCode;
use std::time::Duration;

use comfy_table::Table;
use comfy_table::presets::UTF8_FULL_CONDENSED;
use sluice_flight::Target;
use sluice_flight::conformance::{Outcome, all_passed, check};

/// Certifies the stage at `url`, or the program `command` started on a unix socket.
pub async fn run(url: Option<String>, config: Option<String>, command: Vec<String>) -> ExitCode {
    let config = match config
        .as_deref()
        .map(serde_json::from_str::<serde_json::Value>)
    {
        None => serde_json::Value::Null,
        Some(Ok(c)) => c,
        Some(Err(e)) => {
            eprintln!("error: --config is not JSON: {e}");
            return ExitCode::from(2);
        }
    };
    let mut child = None;
    // the child's socket, removed whatever happens (as the engine does)
    let mut socket_file = None;
    let target = match (url, command.split_first()) {
        (Some(u), None) => Target::Url(u),
        (None, Some((program, args))) => {
            let socket = sluice_flight::launch::socket_path("check");
            socket_file = Some(SocketFile(socket.clone()));
            let mut c = match sluice_flight::launch::spawn(sluice_flight::launch::ChildStage {
                name: "check",
                program: std::path::Path::new(program),
                args,
                socket: &socket,
                otlp: None,
            }) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(1);
                }
            };
            if let Err(e) =
                sluice_flight::launch::wait_healthy(&mut c, &socket, Duration::from_secs(20)).await
            {
                eprintln!("error: {program}: {e}");
                sluice_flight::launch::stop(&mut c, Duration::from_secs(5)).await;
                return ExitCode::from(1);
            }
            child = Some(c);
            Target::Unix(socket)
        }
        _ => {
            eprintln!("error: give either --url grpc://host:port or a command after `--`");
            return ExitCode::from(2);
        }
    };
    outln!("conformance of the stage at {target}");
    let results = check(&target, &config).await;
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_header(vec!["check", "result", "ms", "what", "detail"]);
    for r in &results {
        let (result, detail) = match &r.outcome {
            Outcome::Pass => ("pass", String::new()),
            Outcome::Fail(m) => ("FAIL", m.clone()),
            Outcome::Skip(m) => ("skip", m.clone()),
        };
        t.add_row(vec![
            r.name.to_string(),
            result.to_string(),
            r.took.as_millis().to_string(),
            r.what.to_string(),
            detail,
        ]);
    }
    outln!("{t}");
    let mut ok = all_passed(&results);
    if let Some(mut c) = child {
        if let Ok(Some(status)) = c.try_wait() {
            outln!("the stage process exited during the checks ({status})");
            ok = false;
        }
        // as the engine stops a child stage: SIGTERM, 5 s, then SIGKILL
        sluice_flight::launch::stop(&mut c, Duration::from_secs(5)).await;
    }
    drop(socket_file);
    let (pass, fail, skip) = results
        .iter()
        .fold((0, 0, 0), |(p, f, s), r| match r.outcome {
            Outcome::Pass => (p + 1, f, s),
            Outcome::Fail(_) => (p, f + 1, s),
            Outcome::Skip(_) => (p, f, s + 1),
        });
    outln!("{pass} passed, {fail} failed, {skip} skipped");
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// Removes a child stage's socket file when dropped.
struct SocketFile(std::path::PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
