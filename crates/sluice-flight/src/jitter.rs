//! The jittery stage: a pass-through whose timing varies the way a real
//! stage's does, to check the *engine* (docs/stages.md, "Checking the engine
//! with a jittery stage").
//!
//! `sluice stage jitter` serves it. Put it in a pipeline where a
//! pass-through stage could be: the output must be exactly the output
//! without it, however its answers come:
//!
//! - a random delay before each answer (`max_delay_ms`);
//! - every `burst_every` batches (at a random phase) a pause of `burst_ms`,
//!   after which the batches the engine sent meanwhile are answered at once:
//!   answers arrive in bursts;
//! - up to `stalls` stalls of `stall_ms` (past the engine's `timeout`, so the
//!   engine replaces the stage and retries the epoch), counted across the
//!   stage's restarts in `stall_file`, each after `stall_after` batches of
//!   the process.
//!
//! The delays come from a generator seeded with `seed`, the epoch and the
//! partition, so a run's jitter can be replayed. The settings are the
//! stage's `config` table; the timing promise of its manifest is
//! [`JitterStage::timing`] (the `--promise-*` flags).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arrow_array::RecordBatch;
use serde::Deserialize;
use sluice_contract::ErrorCode;

use crate::StageError;
use crate::manifest::{Manifest, OpenRequest, Timing};
use crate::server::{Processed, Processor, Stage};

/// The jittery pass-through stage; see the module docs.
#[derive(Debug, Default)]
pub struct JitterStage {
    /// The timing its manifest promises, if any.
    pub timing: Option<Timing>,
    /// Batches this process has answered (the stalls wait for `stall_after`).
    answered: Arc<AtomicU64>,
}

/// The stage's `config` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct JitterConfig {
    #[serde(default)]
    seed: u64,
    #[serde(default = "default_max_delay")]
    max_delay_ms: u64,
    #[serde(default)]
    burst_every: u64,
    #[serde(default)]
    burst_ms: u64,
    #[serde(default)]
    stalls: u64,
    #[serde(default)]
    stall_ms: u64,
    #[serde(default)]
    stall_after: u64,
    #[serde(default)]
    stall_file: Option<PathBuf>,
}

fn default_max_delay() -> u64 {
    20
}

impl JitterStage {
    /// A jittery stage promising `timing`.
    pub fn new(timing: Option<Timing>) -> Self {
        Self {
            timing,
            answered: Arc::default(),
        }
    }
}

#[async_trait::async_trait]
impl Stage for JitterStage {
    fn manifest(&self) -> Manifest {
        let mut m = Manifest::new("jitter", env!("CARGO_PKG_VERSION"));
        m.timing = self.timing;
        m
    }

    async fn open(&self, request: &OpenRequest) -> Result<Box<dyn Processor>, StageError> {
        let config: JitterConfig = match &request.config {
            serde_json::Value::Null => serde_json::from_str("{}"),
            c => serde_json::from_value(c.clone()),
        }
        .map_err(|e| StageError::new(ErrorCode::InvalidArgument, format!("config: {e}")))?;
        if config.stalls > 0 && config.stall_file.is_none() {
            return Err(StageError::new(
                ErrorCode::InvalidArgument,
                "config: `stalls` needs a `stall_file` to count them across restarts",
            ));
        }
        let rng = SplitMix(
            config.seed
                ^ request.epoch.rotate_left(17)
                ^ u64::from(request.partition).rotate_left(41),
        );
        let mut jitter = Jitter {
            config,
            rng,
            batch: 0,
            burst_phase: 0,
            answered: Arc::clone(&self.answered),
        };
        if jitter.config.burst_every > 0 {
            jitter.burst_phase = jitter.rng.next() % jitter.config.burst_every;
        }
        Ok(Box::new(jitter))
    }
}

struct Jitter {
    config: JitterConfig,
    rng: SplitMix,
    /// Batches of this exchange so far.
    batch: u64,
    burst_phase: u64,
    answered: Arc<AtomicU64>,
}

impl Jitter {
    /// Takes one stall if any is left (counted in the stall file, which
    /// outlives the process the engine is about to replace).
    async fn take_stall(&self) -> Result<bool, StageError> {
        let Some(path) = &self.config.stall_file else {
            return Ok(false);
        };
        // the partitions of one process count in one file: one at a time
        static COUNTING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
        let _counting = COUNTING.lock().await;
        let failed = |e: std::io::Error| {
            StageError::new(
                ErrorCode::Internal,
                format!("stall_file {}: {e}", path.display()),
            )
        };
        // read once: the count and the text the new line is added to
        let mut text = match tokio::fs::read_to_string(path).await {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(failed(e)),
        };
        let done = text.lines().count() as u64;
        if done >= self.config.stalls {
            return Ok(false);
        }
        text.push_str(&format!("stalled by process {}\n", std::process::id()));
        tokio::fs::write(path, text).await.map_err(failed)?;
        Ok(true)
    }
}

#[async_trait::async_trait]
impl Processor for Jitter {
    async fn process(&mut self, batch: RecordBatch) -> Result<Processed, StageError> {
        let c = &self.config;
        let mut wait = Duration::from_millis(self.rng.next() % c.max_delay_ms.saturating_add(1));
        if c.burst_every > 0 && self.batch % c.burst_every == self.burst_phase {
            wait = wait.saturating_add(Duration::from_millis(c.burst_ms));
        }
        let answered = self.answered.fetch_add(1, Ordering::Relaxed);
        if c.stalls > 0 && answered >= c.stall_after && self.take_stall().await? {
            wait = wait.saturating_add(Duration::from_millis(c.stall_ms));
        }
        self.batch += 1;
        tokio::time::sleep(wait).await;
        Ok(Processed::batch(batch))
    }
}

/// A small, seedable generator (SplitMix64): the delays need to be
/// replayable, not cryptographic.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(config: serde_json::Value) -> OpenRequest {
        OpenRequest::new(crate::PROTOCOL, "j", 3, 1).with_config(config)
    }

    #[tokio::test]
    async fn stalls_are_counted_across_processes_in_the_stall_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("stalls");
        let config = serde_json::json!({"max_delay_ms": 0, "stalls": 2, "stall_ms": 1, "stall_after": 1, "stall_file": file});
        let batch = crate::conformance::type_zoo(3);
        // three "processes", each answering three batches
        for _ in 0..3 {
            let stage = JitterStage::new(None);
            let mut p = stage.open(&open(config.clone())).await.unwrap();
            for _ in 0..3 {
                let out = p.process(batch.clone()).await.unwrap();
                assert_eq!(out.output.as_ref(), Some(&batch));
            }
        }
        let stalls = std::fs::read_to_string(&file).unwrap();
        assert_eq!(stalls.lines().count(), 2, "{stalls}");
    }

    #[tokio::test]
    async fn bad_configs_are_refused() {
        let stage = JitterStage::new(None);
        for c in [
            serde_json::json!({"stalls": 1}),
            serde_json::json!({"max_delay": 3}),
            serde_json::json!({"seed": -1}),
        ] {
            let e = stage.open(&open(c.clone())).await.err().unwrap();
            assert_eq!(e.code, ErrorCode::InvalidArgument, "{c}");
        }
    }
}
