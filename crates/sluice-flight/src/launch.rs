//! Starting a stage program on a unix socket and waiting until it serves.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use sluice_contract::ErrorCode;
use tokio::process::{Child, Command};

use crate::client::{StageClient, Target};
use crate::codes::StageError;

/// The standard variable naming the OTLP endpoint spans go to (`http://host:4317`).
pub const ENV_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";

/// The standard variable naming the service spans belong to.
pub const ENV_SERVICE: &str = "OTEL_SERVICE_NAME";

/// A stage program to start on a unix socket.
#[derive(Debug, Clone, Copy)]
pub struct ChildStage<'a> {
    /// The stage's name: its stderr lines are logged under it.
    pub name: &'a str,
    /// The program.
    pub program: &'a Path,
    /// Its arguments.
    pub args: &'a [String],
    /// The socket it serves on (`SLUICE_STAGE_SOCKET`).
    pub socket: &'a Path,
    /// Where it exports its spans (`OTEL_EXPORTER_OTLP_ENDPOINT`), if anywhere.
    pub otlp: Option<&'a str>,
}

/// Starts a stage program with `SLUICE_STAGE_SOCKET`; the child dies with
/// its handle. Its stderr is read line by line into this process's log
/// ([`crate::logging::forward_stderr`]), tagged with the stage's name.
///
/// The child never inherits `OTEL_SERVICE_NAME`: a stage names its own
/// service (`<stage>-<language>`), so the engine's spans and each stage's
/// stay apart. Call it inside a tokio runtime (the stderr reader is a task).
pub fn spawn(stage: ChildStage<'_>) -> Result<Child, StageError> {
    let _ = std::fs::remove_file(stage.socket);
    let mut command = Command::new(stage.program);
    command.env_remove(ENV_SERVICE);
    // a child listens on a private unix socket: the engine's own stage TLS
    // and token settings are not for it (and the token is a secret)
    for var in [
        crate::security::ENV_TLS_CERT,
        crate::security::ENV_TLS_KEY,
        crate::security::ENV_TLS_CLIENT_CA,
        crate::security::ENV_TOKEN,
    ] {
        command.env_remove(var);
    }
    stop_with_this_process(&mut command);
    if let Some(endpoint) = stage.otlp {
        command.env(ENV_ENDPOINT, endpoint);
    }
    let mut child = command
        .args(stage.args)
        .env(crate::ENV_SOCKET, stage.socket)
        .kill_on_drop(true)
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            StageError::new(
                ErrorCode::Unavailable,
                format!("cannot start {}: {e}", stage.program.display()),
            )
        })?;
    if let Some(stderr) = child.stderr.take() {
        tokio::spawn(crate::logging::forward_stderr(
            stderr,
            stage.name.to_string(),
        ));
    }
    Ok(child)
}

/// Stops a child stage: SIGTERM, so it finishes its exchanges and exports
/// its last spans, then SIGKILL when it is still there after `grace`.
pub async fn stop(child: &mut Child, grace: Duration) {
    if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
        // SAFETY: kill(2) only sends a signal; `pid` is our own child, not
        // yet reaped (tokio's `id()` is None once it is), so it is not reused
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        if tokio::time::timeout(grace, child.wait()).await.is_ok() {
            return;
        }
    }
    let _ = child.start_kill();
    let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
}

/// Makes the child receive SIGTERM when this process dies, however it dies
/// (a crash, SIGKILL): a stage outliving its engine would hold its socket
/// and whatever pipes it inherited, and a restarted engine starts its own.
///
/// Linux ties the signal to the *thread* that started the child; the
/// engine starts stages from tokio's worker threads, which live as long as
/// the runtime (nothing in sluice moves a worker with `block_in_place`).
fn stop_with_this_process(command: &mut Command) {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: between fork and exec only async-signal-safe calls are
        // made: getpid/getppid/prctl; no allocation, no lock
        let parent = unsafe { libc::getpid() };
        unsafe {
            command.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // the engine died between fork and prctl: do not start
                if libc::getppid() != parent {
                    // (no allocation after fork: an OS error code, no message)
                    return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
                }
                Ok(())
            });
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = command;
}

/// Waits until the child answers `health` on its socket, or exits, or `timeout` passes.
pub async fn wait_healthy(
    child: &mut Child,
    socket: &Path,
    timeout: Duration,
) -> Result<StageClient, StageError> {
    let target = Target::Unix(socket.to_path_buf());
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(StageError::new(
                ErrorCode::Unavailable,
                format!("the stage exited at start ({status})"),
            ));
        }
        // a stage that accepts the call and never answers must not hold the
        // start past its deadline: each `health` gets what is left of it
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(100));
        if socket.exists()
            && let Ok(mut c) = StageClient::connect(&target, Duration::from_secs(2)).await
            && matches!(tokio::time::timeout(left, c.health()).await, Ok(Ok(())))
        {
            return Ok(c);
        }
        if Instant::now() > deadline {
            return Err(StageError::new(
                ErrorCode::Timeout,
                format!(
                    "no answer to `health` on {} within {timeout:?}",
                    socket.display()
                ),
            ));
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A fresh socket path in the temp folder for a stage called `name`.
pub fn socket_path(name: &str) -> PathBuf {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    std::env::temp_dir().join(format!("sluice-{}-{name}-{n}.sock", std::process::id()))
}
