//! Observability: a run's metrics, served for Prometheus, its spans,
//! exported over OTLP, and a live page.
//!
//! `[observability] metrics = "127.0.0.1:9464"` (or `sluice run --metrics`)
//! serves metrics at `/metrics` while the run lasts, and `metrics_linger`
//! longer, so the last scrape of a short run sees its final counts. The
//! counters are set from the numbers the run summary is made of, at every
//! commit: at the end of a run they equal the summary's.
//!
//! `otlp = "http://127.0.0.1:4317"` (or `--otlp`, or
//! `OTEL_EXPORTER_OTLP_ENDPOINT`) exports the spans of [`trace`].
//!
//! `ui = "127.0.0.1:8080"` (or `--ui`) serves the live pipeline page of
//! [`live`], fed at the same points as the metrics.

mod live;
mod prometheus;
mod server;
pub(crate) mod trace;

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use sluice_contract::ErrorCode;

use crate::compile::PipelinePlan;
use crate::metrics::{ComponentId, ComponentStats};
use crate::spec::HumanDuration;
pub(crate) use live::LivePage;
pub(crate) use prometheus::Histogram;
use prometheus::{Family, FamilyKind, Labels, Registry};
pub(crate) use server::HttpServer;

/// The `[observability]` table.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObservabilityConfig {
    /// Serve Prometheus metrics at `http://<this>/metrics` while the
    /// pipeline runs (e.g. `127.0.0.1:9464`); nothing is served when unset.
    #[serde(default)]
    pub metrics: Option<String>,
    /// How long `/metrics` and the live page keep serving after the run
    /// ends, so a scrape (or a look) sees the final counts (default 0s).
    #[serde(default)]
    pub metrics_linger: Option<HumanDuration>,
    /// Serve the live pipeline page at `http://<this>/` while the pipeline
    /// runs (e.g. `127.0.0.1:8080`); nothing is served when unset.
    #[serde(default)]
    pub ui: Option<String>,
    /// Export spans over OTLP/gRPC to this endpoint (e.g.
    /// `http://127.0.0.1:4317`); else to `OTEL_EXPORTER_OTLP_ENDPOINT` when
    /// it is set; else nothing is exported. External stages the engine
    /// starts are handed the same endpoint.
    #[serde(default)]
    pub otlp: Option<String>,
    /// The service: the `service` label of every series and the
    /// `service.name` of the engine's spans (default `OTEL_SERVICE_NAME`
    /// for spans, else `sluice`).
    #[serde(default)]
    pub service_name: Option<String>,
}

impl ObservabilityConfig {
    /// Where spans go: `otlp`, else `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub fn otlp_endpoint(&self) -> Option<String> {
        self.otlp
            .clone()
            .or_else(|| std::env::var(sluice_flight::telemetry::ENV_ENDPOINT).ok())
            .filter(|e| !e.trim().is_empty())
    }

    /// The `service.name` of the engine's spans.
    pub fn trace_service(&self) -> String {
        self.service_name
            .clone()
            .or_else(|| std::env::var(sluice_flight::telemetry::ENV_SERVICE).ok())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "sluice".to_string())
    }
}

const fn family(name: &'static str, help: &'static str, kind: FamilyKind) -> Family {
    Family { name, help, kind }
}

const ROWS_IN: Family = family(
    "sluice_rows_in_total",
    "Rows that reached the component (a source: rows read, given up on ones included).",
    FamilyKind::Counter,
);
const ROWS_OUT: Family = family(
    "sluice_rows_out_total",
    "Rows the component produced (a sink: rows committed).",
    FamilyKind::Counter,
);
const BYTES_OUT: Family = family(
    "sluice_bytes_out_total",
    "Bytes the component produced (Arrow buffer sizes; a sink: file bytes committed).",
    FamilyKind::Counter,
);
const BATCHES_OUT: Family = family(
    "sluice_batches_out_total",
    "Record batches the component produced.",
    FamilyKind::Counter,
);
const FILES: Family = family(
    "sluice_files_committed_total",
    "Files a sink committed.",
    FamilyKind::Counter,
);
const SKIPPED: Family = family(
    "sluice_rows_skipped_total",
    "Rows the component could not take and dropped (on_error = \"skip\").",
    FamilyKind::Counter,
);
const DEAD: Family = family(
    "sluice_rows_dead_lettered_total",
    "Rows the component could not take, sent to the dead-letter sink.",
    FamilyKind::Counter,
);
const ROW_ERRORS: Family = family(
    "sluice_row_errors_total",
    "Rows given up on (skipped or dead-lettered), by error code.",
    FamilyKind::Counter,
);
const EPOCH_FAILURES: Family = family(
    "sluice_epoch_failures_total",
    "Epochs that failed; retried=\"true\" when the run rewound and tried again.",
    FamilyKind::Counter,
);
const EPOCH_SECONDS: Family = family(
    "sluice_epoch_duration_seconds",
    "Time to read, compute and write one epoch.",
    FamilyKind::Histogram,
);
const COMMIT_SECONDS: Family = family(
    "sluice_commit_duration_seconds",
    "Time to seal and commit every sink for one group of epochs.",
    FamilyKind::Histogram,
);
const LATENCY_SECONDS: Family = family(
    "sluice_read_to_commit_seconds",
    "Time from reading an epoch's input to the commit that makes it visible.",
    FamilyKind::Histogram,
);
const COMMITS: Family = family(
    "sluice_commits_total",
    "Commits (every sink committed a group of epochs).",
    FamilyKind::Counter,
);
const LAST_EPOCH: Family = family(
    "sluice_last_committed_epoch",
    "The newest committed epoch.",
    FamilyKind::Gauge,
);
const STAGE_ROUND_TRIP: Family = family(
    "sluice_stage_batch_round_trip_seconds",
    "Round trip of a batch through an external stage (sent to answered).",
    FamilyKind::Histogram,
);
const STAGE_SHM_BATCHES: Family = family(
    "sluice_stage_shared_memory_batches_total",
    "Output batches of an external stage that came through shared memory rather than over Flight.",
    FamilyKind::Counter,
);
const STAGE_SHM_INPUT_BATCHES: Family = family(
    "sluice_stage_shared_memory_input_batches_total",
    "Input batches sent to an external stage through shared memory rather than over Flight.",
    FamilyKind::Counter,
);
const STAGE_UNCHANGED_BATCHES: Family = family(
    "sluice_stage_unchanged_batches_total",
    "Answers of an external stage that were its input batch unchanged, reused without the rows travelling back.",
    FamilyKind::Counter,
);
const STAGE_STARTS: Family = family(
    "sluice_stage_process_starts_total",
    "Times an external stage's process was started (1 = never restarted).",
    FamilyKind::Counter,
);
const STAGE_PROMISE: Family = family(
    "sluice_stage_timing_promise_seconds",
    "What an external stage's manifest promises (timing, protocol v1.1): promise=batch_p99 or max_answer.",
    FamilyKind::Gauge,
);
const STAGE_OVER_PROMISE: Family = family(
    "sluice_stage_answers_over_promise_total",
    "Answers of an external stage slower than its manifest's timing promise (promise=batch_p99 or max_answer).",
    FamilyKind::Counter,
);
const BACKLOG: Family = family(
    "sluice_source_backlog_files",
    "Files waiting to be read in a tailed folder.",
    FamilyKind::Gauge,
);

const ROLLOUT_ROWS: Family = family(
    "sluice_rollout_rows_total",
    "Rows a branch of a rolled-out stage produced (variant=\"primary\" for the stage itself).",
    FamilyKind::Counter,
);
const ROLLOUT_ERRORS: Family = family(
    "sluice_rollout_row_errors_total",
    "Row errors of a branch of a rolled-out stage.",
    FamilyKind::Counter,
);
const ROLLOUT_FAILURES: Family = family(
    "sluice_rollout_failures_total",
    "Epochs in which a variant failed or restarted.",
    FamilyKind::Counter,
);
const ROLLOUT_DIFF: Family = family(
    "sluice_rollout_diff_rows_total",
    "Shadow: rows where the variant differs from the primary, by kind (missing, extra, changed).",
    FamilyKind::Counter,
);
const ROLLOUT_ROLLBACKS: Family = family(
    "sluice_rollout_rollbacks_total",
    "Times the guard rolled a variant back to the primary.",
    FamilyKind::Counter,
);
const ROLLOUT_MODE: Family = family(
    "sluice_rollout_mode",
    "1 for the mode a rolled-out stage's variant runs in now.",
    FamilyKind::Gauge,
);
const ROLLOUT_PERCENT: Family = family(
    "sluice_rollout_canary_percent",
    "The canary share of rows, 0 to 100.",
    FamilyKind::Gauge,
);
const ROLLOUT_P99: Family = family(
    "sluice_rollout_batch_p99_seconds",
    "99th percentile batch round trip of an external branch (the variant's over the guard's window).",
    FamilyKind::Gauge,
);

/// The metrics of one run; see the module docs.
#[derive(Debug)]
pub(crate) struct RunMetrics {
    registry: Registry,
    pipeline: String,
    service: String,
}

impl RunMetrics {
    pub(crate) fn new(pipeline: &str, config: &ObservabilityConfig) -> Self {
        Self {
            registry: Registry::default(),
            pipeline: pipeline.to_string(),
            service: config
                .service_name
                .clone()
                .unwrap_or_else(|| "sluice".into()),
        }
    }

    fn run_labels(&self) -> Labels {
        vec![
            ("service", self.service.clone()),
            ("pipeline", self.pipeline.clone()),
        ]
    }

    fn component_labels(&self, name: &str, kind: &str) -> Labels {
        let mut l = self.run_labels();
        l.push(("component", name.to_string()));
        l.push(("kind", kind.to_string()));
        l
    }

    /// The per-component counts of the run so far (the summary's numbers).
    pub(crate) fn components(&self, stats: &[ComponentStats]) {
        for c in stats {
            let l = self.component_labels(&c.name, &c.kind);
            self.registry.set(ROWS_IN, l.clone(), c.rows_in as f64);
            self.registry.set(ROWS_OUT, l.clone(), c.rows_out as f64);
            self.registry.set(BYTES_OUT, l.clone(), c.bytes as f64);
            self.registry.set(BATCHES_OUT, l.clone(), c.batches as f64);
            self.registry.set(SKIPPED, l.clone(), c.rows_skipped as f64);
            self.registry
                .set(DEAD, l.clone(), c.rows_dead_lettered as f64);
            if c.role == "sink" {
                self.registry.set(FILES, l, c.files as f64);
            }
        }
    }

    /// Rows given up on so far, by component and code.
    pub(crate) fn row_errors(&self, counts: &[(ComponentId, String, ErrorCode, u64)]) {
        for (id, kind, code, n) in counts {
            let mut l = self.component_labels(id.name(), kind);
            l.push(("code", code.as_str().to_string()));
            self.registry.set(ROW_ERRORS, l, *n as f64);
        }
    }

    /// An epoch was written, in `took`.
    pub(crate) fn epoch_written(&self, took: Duration) {
        self.registry
            .observe(EPOCH_SECONDS, self.run_labels(), took.as_secs_f64());
    }

    /// A commit of epochs up to `epoch` took `took`; its epochs were read
    /// `latencies` before it.
    pub(crate) fn committed(&self, epoch: u64, took: Duration, latencies: &[Duration]) {
        let l = self.run_labels();
        self.registry.add(COMMITS, l.clone(), 1.0);
        self.registry.set(LAST_EPOCH, l.clone(), epoch as f64);
        self.registry
            .observe(COMMIT_SECONDS, l.clone(), took.as_secs_f64());
        for d in latencies {
            self.registry
                .observe(LATENCY_SECONDS, l.clone(), d.as_secs_f64());
        }
    }

    /// An epoch failed; `retried` when the run goes on from the last commit.
    pub(crate) fn epoch_failed(&self, retried: bool) {
        let mut l = self.run_labels();
        l.push(("retried", retried.to_string()));
        self.registry.add(EPOCH_FAILURES, l, 1.0);
    }

    /// Files waiting in source `name`'s folder.
    pub(crate) fn backlog(&self, name: &str, kind: &str, files: u64) {
        self.registry
            .set(BACKLOG, self.component_labels(name, kind), files as f64);
    }

    /// The rollout status (as `sluice rollout status` reads it) after a commit.
    pub(crate) fn rollout(&self, status: &serde_json::Value) {
        let Some(stages) = status["stages"].as_object() else {
            return;
        };
        for (stage, s) in stages {
            let labels = |variant: &str| {
                let mut l = self.run_labels();
                l.push(("stage", stage.clone()));
                l.push(("variant", variant.to_string()));
                l
            };
            let variant = s["variant"].as_str().unwrap_or_default();
            for mode in ["off", "shadow", "canary", "primary"] {
                let mut l = labels(variant);
                l.push(("mode", mode.to_string()));
                let on = s["mode"].as_str() == Some(mode);
                self.registry
                    .set(ROLLOUT_MODE, l, if on { 1.0 } else { 0.0 });
            }
            let num = |v: &serde_json::Value| v.as_f64().unwrap_or(0.0);
            self.registry
                .set(ROLLOUT_PERCENT, labels(variant), num(&s["percent"]));
            let rollbacks = s["rollbacks"].as_array().map_or(0, Vec::len);
            self.registry
                .set(ROLLOUT_ROLLBACKS, labels(variant), rollbacks as f64);
            for kind in ["missing", "extra", "changed"] {
                let mut l = labels(variant);
                l.push(("kind", kind.to_string()));
                self.registry.set(ROLLOUT_DIFF, l, num(&s["diff"][kind]));
            }
            for (b, v) in s["branches"].as_object().into_iter().flatten() {
                self.registry.set(ROLLOUT_ROWS, labels(b), num(&v["rows"]));
                self.registry
                    .set(ROLLOUT_ERRORS, labels(b), num(&v["row_errors"]));
                self.registry
                    .set(ROLLOUT_FAILURES, labels(b), num(&v["failures"]));
                if let Some(ms) = v["p99_ms"].as_f64() {
                    self.registry.set(ROLLOUT_P99, labels(b), ms / 1000.0);
                }
            }
        }
    }

    /// What only the external stages know, read when scraped.
    fn stages(&self, plan: &PipelinePlan) {
        for (name, rt) in &plan.externals {
            let l = self.component_labels(name, "external");
            self.registry.set(
                STAGE_STARTS,
                l.clone(),
                rt.starts.load(std::sync::atomic::Ordering::Relaxed) as f64,
            );
            self.registry.set(
                STAGE_SHM_BATCHES,
                l.clone(),
                rt.shm_batches.load(std::sync::atomic::Ordering::Relaxed) as f64,
            );
            self.registry.set(
                STAGE_SHM_INPUT_BATCHES,
                l.clone(),
                rt.shm_input_batches
                    .load(std::sync::atomic::Ordering::Relaxed) as f64,
            );
            self.registry.set(
                STAGE_UNCHANGED_BATCHES,
                l.clone(),
                rt.unchanged_batches
                    .load(std::sync::atomic::Ordering::Relaxed) as f64,
            );
            if let Some(t) = rt.manifest.timing {
                let promises = [
                    ("batch_p99", t.batch_p99_ms, &rt.over_p99),
                    ("max_answer", t.max_answer_ms, &rt.over_max),
                ];
                for (promise, ms, over) in promises {
                    let mut l = l.clone();
                    l.push(("promise", promise.to_string()));
                    self.registry
                        .set(STAGE_PROMISE, l.clone(), ms as f64 / 1000.0);
                    self.registry.set(
                        STAGE_OVER_PROMISE,
                        l,
                        over.load(std::sync::atomic::Ordering::Relaxed) as f64,
                    );
                }
            }
            self.registry
                .set_histogram(STAGE_ROUND_TRIP, l, rt.round_trips());
        }
    }

    /// The exposition text, with the external stages' numbers as of now.
    pub(crate) fn render(&self, plan: &PipelinePlan) -> String {
        self.stages(plan);
        self.registry.render()
    }
}

/// Serves `metrics` of `plan` at `addr` until the returned server is dropped.
pub(crate) async fn serve(
    addr: &str,
    metrics: Arc<RunMetrics>,
    plan: Arc<PipelinePlan>,
) -> std::io::Result<HttpServer> {
    HttpServer::bind(
        addr,
        Arc::new(move |path: &str| {
            (path == "/metrics").then(|| {
                server::Reply::new(
                    "text/plain; version=0.0.4; charset=utf-8",
                    metrics.render(&plan),
                )
            })
        }),
    )
    .await
}
