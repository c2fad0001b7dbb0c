//! Starting a stage program on a unix socket and waiting until it serves.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sluice_contract::ErrorCode;
use tokio::process::{Child, Command};

use crate::client::{StageClient, Target};
use crate::codes::StageError;

/// Starts `program args` with `SLUICE_STAGE_SOCKET=socket`; the child dies
/// with its handle.
pub fn spawn(program: &Path, args: &[String], socket: &Path) -> Result<Child, StageError> {
    let _ = std::fs::remove_file(socket);
    Command::new(program)
        .args(args)
        .env(crate::ENV_SOCKET, socket)
        .kill_on_drop(true)
        .stdin(std::process::Stdio::null())
        .spawn()
        .map_err(|e| {
            StageError::new(
                ErrorCode::Unavailable,
                format!("cannot start {}: {e}", program.display()),
            )
        })
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
        if socket.exists()
            && let Ok(mut c) = StageClient::connect(&target, Duration::from_secs(2)).await
            && c.health().await.is_ok()
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
