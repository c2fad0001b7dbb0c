//! The `external` stage: a program (Go, Rust, Python, ...) speaking the stage
//! protocol (`sluice.stage.v1` or `v1.1`, docs/protocol.md).
//!
//! [`ExternalRuntime`] owns the connection: it starts the child process on a
//! unix socket (or dials a URL), waits for `health`, keeps the manifest, and
//! restarts a child that died, with backoff. The plan operator
//! ([`crate::ops::external_stage::ExternalStageExec`]) asks it for a client
//! per exchange.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Deserialize;
use sluice_contract::ErrorCode;
use sluice_flight::security::{ClientSecurity, TlsFiles, Token};
use sluice_flight::{Manifest, Setting, StageClient, StageError, Target};
use tokio::process::Child;
use tokio::sync::Mutex;

use crate::spec::HumanDuration;

pub(crate) use crate::dead_letter::OnError;

/// How long a batch may wait for its answer when neither the pipeline nor
/// the manifest's `timing` says.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

fn default_retries() -> u32 {
    3
}

fn default_in_flight() -> usize {
    4
}

fn default_on_error() -> OnError {
    OnError::Fail
}

/// `[stages.<name>] kind = "external"`: a stage running out of process.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExternalStageConfig {
    /// The one stage or source it reads.
    pub inputs: Vec<String>,
    /// Program and arguments to start (paths relative to the pipeline file);
    /// the engine sets `SLUICE_STAGE_SOCKET`. Exactly one of `command` and `url`.
    #[serde(default)]
    pub command: Option<Vec<String>>,
    /// Address of a running stage: `grpc://host:port`, or `grpcs://host:port`
    /// with `tls`.
    #[serde(default)]
    pub url: Option<String>,
    /// For a `grpcs://` url: the CA that signed the stage's certificate, and
    /// the engine's certificate and key when the stage asks for one (mutual
    /// TLS). PEM files, relative to the pipeline file.
    #[serde(default)]
    pub tls: Option<TlsFiles>,
    /// A bearer token sent with every call to a remote stage, from the
    /// environment: `token = "env:STAGE_TOKEN"`.
    #[serde(default)]
    pub token: Option<String>,
    /// The stage's own settings, passed in every open request.
    #[serde(default)]
    pub config: Option<toml::Table>,
    /// How long the engine waits for the answer to a batch: by default the
    /// manifest's `timing.max_answer_ms` (v1.1), else 30s.
    #[serde(default)]
    pub timeout: Option<HumanDuration>,
    /// How often a failed epoch is retried when the failure may pass
    /// (the stage crashed, timed out or was unavailable); default 3.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Batches sent and not yet answered, at most (default 4).
    #[serde(default = "default_in_flight")]
    pub max_in_flight: usize,
    /// `fail` (default) or `skip`: what row errors do.
    #[serde(default = "default_on_error")]
    pub on_error: OnError,
    /// Batches to and from a child stage whose manifest says
    /// `shared_memory` travel through shared memory (default `true`);
    /// `false` sends them over Flight, as to a remote stage.
    #[serde(default = "default_true")]
    pub shared_memory: bool,
    /// A v1.1 stage whose answer to a batch is that batch unchanged says so
    /// instead of sending the rows back, and the engine reuses the batch it
    /// sent (default `true`); `false` makes it send the rows, which is what
    /// measuring the transport wants.
    #[serde(default = "default_true")]
    pub unchanged_answers: bool,
}

fn default_true() -> bool {
    true
}

impl ExternalStageConfig {
    /// The stage's config as JSON, for open requests.
    pub fn config_json(&self) -> serde_json::Value {
        match &self.config {
            Some(t) => serde_json::to_value(t).unwrap_or(serde_json::Value::Null),
            None => serde_json::Value::Null,
        }
    }
}

/// How the runtime reaches the stage.
#[derive(Debug)]
enum Launch {
    Child {
        program: PathBuf,
        args: Vec<String>,
        socket: PathBuf,
        /// Where the child exports its spans (`[observability] otlp`).
        otlp: Option<String>,
    },
    Remote(Target, ClientSecurity),
}

#[derive(Debug, Default)]
struct State {
    child: Option<Child>,
    client: Option<StageClient>,
    starts: u32,
}

/// The connection to one external stage; see the module docs.
#[derive(Debug)]
pub(crate) struct ExternalRuntime {
    /// Stage name in the pipeline.
    pub name: String,
    /// Its config.
    pub config: ExternalStageConfig,
    /// The manifest the stage described itself with.
    pub manifest: Manifest,
    launch: Launch,
    state: Mutex<State>,
    /// Times the child process was (re)started.
    pub starts: AtomicU64,
    /// Answers slower than the manifest's `timing.batch_p99_ms`.
    pub over_p99: AtomicU64,
    /// Output batches that came through shared memory.
    pub shm_batches: AtomicU64,
    /// Input batches sent through shared memory.
    pub shm_input_batches: Arc<AtomicU64>,
    /// Answers that were the input batch unchanged, reused without its
    /// rows travelling back.
    pub unchanged_batches: AtomicU64,
    /// Answers slower than the manifest's `timing.max_answer_ms`.
    pub over_max: AtomicU64,
    /// Round-trip time of each answered batch, in microseconds (sent →
    /// answered): the first million, for percentiles.
    pub latencies_us: std::sync::Mutex<Vec<u32>>,
    /// Every round trip, in seconds, as `/metrics` shows them.
    round_trips: std::sync::Mutex<crate::observe::Histogram>,
    /// Round trips since the rollout guard last took them (microseconds;
    /// only kept for rolled-out stages, whose guard takes them every epoch).
    recent_us: std::sync::Mutex<Option<Vec<u32>>>,
}

const START_TIMEOUT: Duration = Duration::from_secs(20);

/// How long a stage being replaced (it hung, or failed an exchange with a
/// retryable status) gets between SIGTERM and SIGKILL: enough to export its
/// spans and log why, short enough not to hold the retry back.
const RESTART_GRACE: Duration = Duration::from_secs(2);

/// What a stage's child process has used so far.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ProcessUsage {
    pub cpu_seconds: f64,
    pub rss_bytes: u64,
    pub peak_rss_bytes: u64,
}

/// CPU seconds (user + system) this process has used, from `/proc/self/stat`.
pub(crate) fn own_cpu_seconds() -> Option<f64> {
    cpu_seconds_of(&std::fs::read_to_string("/proc/self/stat").ok()?)
}

/// User + system CPU seconds in the text of a `/proc/<pid>/stat` file.
fn cpu_seconds_of(stat: &str) -> Option<f64> {
    // the fields after the `(comm)`, which may hold spaces
    let f: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    // USER_HZ is 100 on every Linux sluice runs on
    Some(ticks / 100.0)
}

impl ExternalRuntime {
    /// Starts (or dials) the stage and reads its manifest. A child is told
    /// to export its spans to `otlp`.
    pub(crate) async fn start(
        name: &str,
        config: ExternalStageConfig,
        base_dir: &std::path::Path,
        otlp: Option<String>,
    ) -> Result<Arc<Self>, StageError> {
        if config.command.is_some() && (config.tls.is_some() || config.token.is_some()) {
            let setting = if config.tls.is_some() {
                Setting::Tls
            } else {
                Setting::Token
            };
            return Err(StageError::new(
                ErrorCode::InvalidArgument,
                "`tls` and `token` are for remote stages (`url`); a child stage listens on a private unix socket",
            )
            .about(setting));
        }
        let launch = match (&config.command, &config.url) {
            (Some(cmd), None) if !cmd.is_empty() => {
                let program = PathBuf::from(&cmd[0]);
                let program = if program.components().count() > 1 && program.is_relative() {
                    base_dir.join(program)
                } else {
                    program
                };
                let socket = sluice_flight::launch::socket_path(name);
                Launch::Child {
                    program,
                    args: cmd[1..].to_vec(),
                    socket,
                    otlp,
                }
            }
            (None, Some(url)) => {
                let token = config
                    .token
                    .as_deref()
                    .map(Token::from_reference)
                    .transpose()
                    .map_err(|m| {
                        StageError::new(ErrorCode::InvalidArgument, m).about(Setting::Token)
                    })?;
                let security = ClientSecurity {
                    tls: config.tls.as_ref().map(|t| t.relative_to(base_dir)),
                    token,
                };
                Launch::Remote(Target::Url(url.clone()), security)
            }
            _ => {
                return Err(StageError::new(
                    ErrorCode::InvalidArgument,
                    "an external stage needs exactly one of `command` (a program to start) and `url` (grpc://host:port)",
                ));
            }
        };
        let mut rt = ExternalRuntime {
            name: name.to_string(),
            config,
            manifest: Manifest::new("", ""),
            launch,
            state: Mutex::new(State::default()),
            starts: AtomicU64::new(0),
            over_p99: AtomicU64::new(0),
            shm_batches: AtomicU64::new(0),
            shm_input_batches: Arc::default(),
            unchanged_batches: AtomicU64::new(0),
            over_max: AtomicU64::new(0),
            latencies_us: std::sync::Mutex::new(Vec::new()),
            round_trips: std::sync::Mutex::default(),
            recent_us: std::sync::Mutex::new(None),
        };
        let mut client = rt.client().await?;
        rt.manifest = client.describe().await?;
        Ok(Arc::new(rt))
    }

    /// A client to a live stage: starts or restarts the child when needed.
    ///
    /// Boxed so the future's type does not leak into callers (rustc cannot
    /// prove the unboxed one `Send` inside DataFusion's spawned tasks).
    pub(crate) fn client(&self) -> futures::future::BoxFuture<'_, Result<StageClient, StageError>> {
        Box::pin(self.client_inner())
    }

    async fn client_inner(&self) -> Result<StageClient, StageError> {
        let mut state = self.state.lock().await;
        let alive = match state.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => matches!(self.launch, Launch::Remote(..)) && state.client.is_some(),
        };
        if alive && let Some(c) = &state.client {
            return Ok(c.clone());
        }
        state.client = None;
        match &self.launch {
            Launch::Remote(target, security) => {
                let c = StageClient::connect_with(target, self.answer_timeout(), security).await?;
                state.client = Some(c.clone());
                Ok(c)
            }
            Launch::Child {
                program,
                args,
                socket,
                otlp,
            } => {
                if state.starts > 0 {
                    // a restart: back off so a crashing stage does not spin
                    let delay = Duration::from_millis(100 * 2u64.pow(state.starts.min(6)));
                    tokio::time::sleep(delay.min(Duration::from_secs(5))).await;
                }
                if let Some(mut old) = state.child.take() {
                    sluice_flight::launch::stop(&mut old, RESTART_GRACE).await;
                }
                let mut child = sluice_flight::launch::spawn(sluice_flight::launch::ChildStage {
                    name: &self.name,
                    program,
                    args,
                    socket,
                    otlp: otlp.as_deref(),
                })
                .map_err(|e| {
                    StageError::new(e.code, format!("stage `{}`: {}", self.name, e.message))
                })?;
                state.starts += 1;
                self.starts.fetch_add(1, Ordering::Relaxed);
                let result =
                    sluice_flight::launch::wait_healthy(&mut child, socket, START_TIMEOUT).await;
                state.child = Some(child);
                let c = result.map_err(|e| {
                    StageError::new(
                        e.code,
                        format!(
                            "stage `{}` ({}): {}",
                            self.name,
                            program.display(),
                            e.message
                        ),
                    )
                })?;
                state.client = Some(c.clone());
                Ok(c)
            }
        }
    }

    /// How long a batch may wait for its answer: the pipeline's `timeout`,
    /// else the stage's promised `max_answer_ms`, else 30 s.
    pub(crate) fn answer_timeout(&self) -> Duration {
        match (&self.config.timeout, &self.manifest.timing) {
            (Some(t), _) => t.0,
            (None, Some(timing)) => Duration::from_millis(timing.max_answer_ms),
            (None, None) => DEFAULT_TIMEOUT,
        }
    }

    /// Measures one round trip against the manifest's timing promise (a
    /// batch that timed out counts as answered at its timeout: later than
    /// promised when the timeout is the promise or longer).
    pub(crate) fn check_timing(&self, took: Duration) {
        let Some(t) = self.manifest.timing else {
            return;
        };
        if took > Duration::from_millis(t.batch_p99_ms) {
            self.over_p99.fetch_add(1, Ordering::Relaxed);
        }
        if took >= Duration::from_millis(t.max_answer_ms) {
            let n = self.over_max.fetch_add(1, Ordering::Relaxed) + 1;
            // the first breach and then every hundredth: a log line per
            // slow batch would drown the rest
            if n == 1 || n.is_multiple_of(100) {
                tracing::warn!(
                    stage = %self.name,
                    took_ms = took.as_millis() as u64,
                    max_answer_ms = t.max_answer_ms,
                    breaches = n,
                    "an answer took longer than the stage's manifest promises (timing.max_answer_ms)"
                );
            }
        }
    }

    /// The stage's timing promise against what was measured so far: a
    /// message when the measured p99 is above the promised one.
    pub(crate) fn timing_verdict(&self) -> Option<String> {
        let t = self.manifest.timing?;
        let p99 = self.latency_quantile_us(0.99)?;
        let answers = self
            .latencies_us
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len();
        (u64::from(p99) > t.batch_p99_ms.saturating_mul(1000)).then(|| {
            format!(
                "stage `{}` promises a batch p99 of {} ms (timing.batch_p99_ms); measured {:.1} ms over {answers} answers, {} of them over the promise and {} over max_answer_ms ({} ms)",
                self.name,
                t.batch_p99_ms,
                f64::from(p99) / 1000.0,
                self.over_p99.load(Ordering::Relaxed),
                self.over_max.load(Ordering::Relaxed),
                t.max_answer_ms
            )
        })
    }

    /// Records the round trip of one batch.
    pub(crate) fn record_latency(&self, took: Duration) {
        self.check_timing(took);
        let mut l = self.latencies_us.lock().unwrap_or_else(|p| p.into_inner());
        // a bounded sample is plenty for percentiles
        if l.len() < 1_000_000 {
            l.push(took.as_micros().min(u32::MAX as u128) as u32);
        }
        drop(l);
        if let Some(r) = self
            .recent_us
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
            .filter(|r| r.len() < 1_000_000)
        {
            r.push(took.as_micros().min(u32::MAX as u128) as u32);
        }
        // the histogram counts all: a Prometheus counter never stops
        self.round_trips
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .observe(took.as_secs_f64());
    }

    /// Starts keeping the round trips for [`ExternalRuntime::take_recent`].
    pub(crate) fn keep_recent(&self) {
        self.recent_us
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert_with(Vec::new);
    }

    /// The round trips (microseconds) since the last call.
    pub(crate) fn take_recent(&self) -> Vec<u32> {
        self.recent_us
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// CPU seconds (user + system), resident and peak resident bytes of the
    /// child process, from `/proc` (Linux); `None` for a remote stage or elsewhere.
    pub(crate) async fn process_usage(&self) -> Option<ProcessUsage> {
        let pid = self.state.lock().await.child.as_ref()?.id()?;
        let stat = tokio::fs::read_to_string(format!("/proc/{pid}/stat"))
            .await
            .ok()?;
        let cpu_seconds = cpu_seconds_of(&stat)?;
        let status = tokio::fs::read_to_string(format!("/proc/{pid}/status"))
            .await
            .ok()?;
        let kb = |key: &str| -> Option<u64> {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))?
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
                .map(|k| k * 1024)
        };
        Some(ProcessUsage {
            cpu_seconds,
            rss_bytes: kb("VmRSS:")?,
            peak_rss_bytes: kb("VmHWM:")?,
        })
    }

    /// The histogram of every round trip so far.
    pub(crate) fn round_trips(&self) -> crate::observe::Histogram {
        self.round_trips
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The `q` quantile (0..=1) of the recorded batch round trips, in microseconds.
    pub(crate) fn latency_quantile_us(&self, q: f64) -> Option<u32> {
        let mut l = self
            .latencies_us
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if l.is_empty() {
            return None;
        }
        l.sort_unstable();
        let i = ((l.len() - 1) as f64 * q).round() as usize;
        l.get(i).copied()
    }

    /// If the child process has exited, how (for errors after a crash).
    pub(crate) fn exit_status(&self) -> futures::future::BoxFuture<'_, Option<String>> {
        Box::pin(async move {
            let mut state = self.state.lock().await;
            let child = state.child.as_mut()?;
            // a crash closes the socket a moment before the exit is visible
            for _ in 0..20 {
                if let Ok(Some(status)) = child.try_wait() {
                    return Some(status.to_string());
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            None
        })
    }

    /// Forgets the current connection after an exchange failed with a
    /// retryable status, so the next call replaces the child (SIGTERM, then
    /// SIGKILL after [`RESTART_GRACE`]) or redials the URL. With `kill` (the
    /// stage hung) the child is stopped here already, so no exchange of the
    /// retry can reach it.
    pub(crate) fn reset(&self, kill: bool) -> futures::future::BoxFuture<'_, ()> {
        Box::pin(async move {
            let mut state = self.state.lock().await;
            state.client = None;
            if kill && let Some(child) = state.child.as_mut() {
                sluice_flight::launch::stop(child, RESTART_GRACE).await;
            }
        })
    }

    /// Stops the child process, if any: SIGTERM first, so it can export its
    /// last spans.
    pub(crate) fn shutdown(&self) -> futures::future::BoxFuture<'_, ()> {
        Box::pin(self.shutdown_inner())
    }

    async fn shutdown_inner(&self) {
        let mut state = self.state.lock().await;
        state.client = None;
        if let Some(mut child) = state.child.take() {
            sluice_flight::launch::stop(&mut child, Duration::from_secs(5)).await;
        }
        if let Launch::Child { socket, .. } = &self.launch {
            let _ = std::fs::remove_file(socket);
        }
    }
}
