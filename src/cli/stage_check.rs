//! `sluice stage check`: the conformance kit, as a table.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use comfy_table::Table;
use comfy_table::presets::UTF8_FULL_CONDENSED;
use futures::future::BoxFuture;
use sluice_flight::Target;
use sluice_flight::conformance::{Outcome, all_passed, check_with};

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
    // the `state` check kills the child and starts it again
    let child = Arc::new(tokio::sync::Mutex::new(child));
    let restart = {
        let child = Arc::clone(&child);
        let (program, args) = (
            command.first().cloned(),
            command.get(1..).map(<[String]>::to_vec),
        );
        let socket = socket_file.as_ref().map(|s| s.0.clone());
        move || -> BoxFuture<'static, Result<(), String>> {
            let child = Arc::clone(&child);
            let (program, args, socket) = (program.clone(), args.clone(), socket.clone());
            Box::pin(async move {
                let (Some(program), Some(args), Some(socket)) = (program, args, socket) else {
                    return Err("the kit did not start this stage".into());
                };
                let mut slot = child.lock().await;
                if let Some(mut old) = slot.take() {
                    let _ = old.kill().await;
                }
                let mut c = sluice_flight::launch::spawn(sluice_flight::launch::ChildStage {
                    name: "check",
                    program: std::path::Path::new(&program),
                    args: &args,
                    socket: &socket,
                    otlp: None,
                })
                .map_err(|e| e.to_string())?;
                let healthy =
                    sluice_flight::launch::wait_healthy(&mut c, &socket, Duration::from_secs(20))
                        .await;
                *slot = Some(c);
                healthy.map(|_| ()).map_err(|e| e.to_string())
            })
        }
    };
    let can_restart = socket_file.is_some();
    let results = check_with(&target, &config, can_restart.then_some(&restart as _)).await;
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_header(vec!["check", "path", "result", "ms", "what", "detail"]);
    for r in &results {
        let (result, detail) = match &r.outcome {
            Outcome::Pass => ("pass", String::new()),
            Outcome::Fail(m) => ("FAIL", m.clone()),
            Outcome::Skip(m) => ("skip", m.clone()),
        };
        t.add_row(vec![
            r.name.to_string(),
            r.path.map_or("", |p| p.as_str()).to_string(),
            result.to_string(),
            r.took.as_millis().to_string(),
            r.what.to_string(),
            detail,
        ]);
    }
    outln!("{t}");
    let mut ok = all_passed(&results);
    if let Some(mut c) = child.lock().await.take() {
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
