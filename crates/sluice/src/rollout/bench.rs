//! `sluice stage bench`: a stage's variants side by side on the same sample
//! input, at several batch sizes, so the choice between a Go, a Rust and an
//! SQL implementation rests on numbers for this workload.
//!
//! The sample is the stage's input: the pipeline's sources and upstream
//! stages run for one epoch of at most `rows` rows into a scratch Parquet
//! sink, or a Parquet file the user names. Each branch (the primary, each
//! variant) then runs over the very same rows: an external branch in a
//! fresh process of its own, through the engine's own exchange operator; an
//! SQL branch in a DataFusion session over the rows in memory. A warm-up
//! pass at the first batch size comes first and is not reported.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::datasource::MemTable;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::physical_plan::collect;
use datafusion::prelude::{ParquetReadOptions, SessionContext};
use serde::Serialize;

use super::exec::PRIMARY;
use crate::compile::session::session_for;
use crate::compile::stages::{Branch, stage_sql};
use crate::engine::Engine;
use crate::epoch::{EpochBinding, RunOptions};
use crate::error::{Result, SluiceError};
use crate::ops::external_stage::ExternalStageExec;
use crate::sinks::SinkConfig;
use crate::spec::PipelineSpec;
use crate::spec::graph::Graph;
use crate::stages::StageConfig;
use crate::stages::external::{ExternalRuntime, own_cpu_seconds};

/// What to bench with.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Rows of sample input, at most.
    pub rows: usize,
    /// A Parquet file to use as the input instead of the pipeline's sources.
    pub input: Option<PathBuf>,
    /// Rows per batch sent through the stage, one measurement each.
    pub batch_sizes: Vec<usize>,
}

/// One branch at one batch size.
#[derive(Debug, Clone, Serialize)]
pub struct BenchRow {
    /// `primary` or the variant's name.
    pub variant: String,
    /// `sql`, or the external stage's `name version (language)`.
    pub implementation: String,
    /// Rows per input batch.
    pub batch_size: usize,
    /// Rows out.
    pub rows_out: u64,
    /// Input rows per second of wall time.
    pub rows_per_second: f64,
    /// CPU seconds per million input rows, engine and stage process together.
    pub cpu_s_per_m_rows: f64,
    /// Of those, the stage process's (external branches).
    pub stage_cpu_s_per_m_rows: Option<f64>,
    /// The stage process's peak resident memory (external branches).
    pub peak_rss_bytes: Option<u64>,
    /// Median and 99th percentile batch round trip (external branches).
    pub p50_ms: Option<f64>,
    /// See `p50_ms`.
    pub p99_ms: Option<f64>,
}

/// The whole comparison.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// The stage.
    pub stage: String,
    /// Rows of the sample.
    pub input_rows: u64,
    /// Where the sample came from.
    pub input: String,
    /// Every branch at every batch size.
    pub rows: Vec<BenchRow>,
    /// The branch with the least CPU per row at the largest batch size.
    pub cheapest: Option<String>,
}

/// Benches stage `stage` of `spec`; see the module docs.
pub async fn bench(
    engine: &Engine,
    spec: &PipelineSpec,
    stage: &str,
    opts: &BenchOptions,
) -> Result<BenchReport> {
    let config = spec.stages.get(stage).ok_or_else(|| {
        SluiceError::spec(spec.issue(
            format!("stages.{stage}"),
            format!(
                "the pipeline has no stage `{stage}` (stages: {})",
                spec.stages.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
        ))
    })?;
    let [input] = config.inputs() else {
        return Err(SluiceError::spec(spec.issue(
            format!("stages.{stage}.inputs"),
            "`stage bench` feeds a stage one input; this one reads several",
        )));
    };
    if opts.batch_sizes.is_empty() || opts.batch_sizes.contains(&0) {
        return Err(SluiceError::Internal(
            "batch sizes must be at least 1".into(),
        ));
    }
    let scratch = Scratch::new()?;
    let (batches, from) = match &opts.input {
        Some(file) => (read_parquet(file).await?, file.display().to_string()),
        None => (
            sample(engine, spec, input, opts.rows, scratch.path()).await?,
            format!("the pipeline's `{input}`, one epoch"),
        ),
    };
    let schema = batches
        .first()
        .map(|b| b.schema())
        .ok_or_else(|| SluiceError::Internal(format!("the sample of `{input}` has no rows")))?;
    let all =
        concat_batches(&schema, &batches).map_err(|e| SluiceError::Internal(e.to_string()))?;
    let all = all.slice(0, all.num_rows().min(opts.rows));
    let n = all.num_rows();

    let mut branches: Vec<(String, Branch, &StageConfig)> =
        vec![(PRIMARY.to_string(), Branch::primary(stage), config)];
    if let Some(r) = spec.rollouts.get(stage) {
        for (v, c) in &r.variants {
            branches.push((v.clone(), Branch::variant(stage, v), c));
        }
    }
    let mut rows = Vec::new();
    for (name, branch, config) in &branches {
        let runner = Runner::start(engine, spec, input, branch, config).await?;
        // warm-up: a first pass starts caches, JITs and connections
        let warm = runner.run(&all, opts.batch_sizes[0]).await;
        if let Err(e) = warm {
            runner.stop().await;
            return Err(e);
        }
        for &size in &opts.batch_sizes {
            match runner.measure(&all, size).await {
                Ok((passes, m)) => {
                    let rows_in = (n * passes).max(1) as f64;
                    let q = |q: f64| quantile_ms(&m.latencies_us, q);
                    rows.push(BenchRow {
                        variant: name.clone(),
                        implementation: runner.implementation(),
                        batch_size: size,
                        rows_out: m.rows_out / passes as u64,
                        rows_per_second: rows_in / m.wall.max(1e-9),
                        cpu_s_per_m_rows: m.cpu * 1e6 / rows_in,
                        stage_cpu_s_per_m_rows: m.stage_cpu.map(|c| c * 1e6 / rows_in),
                        peak_rss_bytes: m.peak_rss,
                        p50_ms: q(0.5),
                        p99_ms: q(0.99),
                    })
                }
                Err(e) => {
                    runner.stop().await;
                    return Err(e);
                }
            }
        }
        runner.stop().await;
    }
    let largest = opts.batch_sizes.iter().max().copied();
    let cheapest = rows
        .iter()
        .filter(|r| Some(r.batch_size) == largest)
        .min_by(|a, b| a.cpu_s_per_m_rows.total_cmp(&b.cpu_s_per_m_rows))
        .map(|r| r.variant.clone());
    Ok(BenchReport {
        stage: stage.to_string(),
        input_rows: n as u64,
        input: from,
        rows,
        cheapest,
    })
}

async fn read_parquet(file: &Path) -> Result<Vec<RecordBatch>> {
    // the types as written: a stage's manifest says Utf8, not Utf8View
    let config = datafusion::prelude::SessionConfig::new().set_bool(
        "datafusion.execution.parquet.schema_force_view_types",
        false,
    );
    let ctx = SessionContext::new_with_config(config);
    let path = file.to_string_lossy();
    let df = ctx
        .read_parquet(path.as_ref(), ParquetReadOptions::default())
        .await
        .map_err(|e| SluiceError::Internal(format!("cannot read {}: {e}", file.display())))?;
    df.collect()
        .await
        .map_err(|e| SluiceError::Internal(format!("cannot read {}: {e}", file.display())))
}

/// One epoch of at most `rows` rows of `input` (a source or stage), run
/// through the pipeline into a scratch Parquet sink and read back.
async fn sample(
    engine: &Engine,
    spec: &PipelineSpec,
    input: &str,
    rows: usize,
    dir: &Path,
) -> Result<Vec<RecordBatch>> {
    let graph = Graph::check(spec).map_err(SluiceError::Spec)?;
    let mut keep = graph.ancestors(input);
    keep.push(input.to_string());
    let mut s = spec.clone();
    s.stages.retain(|n, _| keep.contains(n));
    s.sources.retain(|n, _| keep.contains(n));
    s.rollouts.retain(|n, _| keep.contains(n));
    // the sample run delivers nothing anywhere else: upstream rollouts run
    // their primaries and write no diff
    for r in s.rollouts.values_mut() {
        r.config.mode = super::config::Mode::Off;
        r.config.diff = None;
    }
    s.dead_letter = None;
    s.lineage = None;
    s.settings.rollout_flags = None;
    s.observability = Default::default();
    s.settings.epoch.max_rows = Some(rows as u64);
    let out = dir.join("sample");
    s.sinks = BTreeMap::from([(
        "sample".to_string(),
        SinkConfig::parquet(input, out.to_string_lossy()),
    )]);
    engine
        .compile(s)
        .await?
        .run(RunOptions {
            max_epochs: Some(1),
            ..Default::default()
        })
        .await?;
    let mut files: Vec<PathBuf> = std::fs::read_dir(&out)
        .map_err(|e| SluiceError::Internal(format!("{}: {e}", out.display())))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "parquet"))
        .collect();
    files.sort();
    let mut batches = Vec::new();
    for f in files {
        batches.extend(read_parquet(&f).await?);
    }
    Ok(batches)
}

/// A scratch folder for the sample, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Result<Self> {
        let dir =
            std::env::temp_dir().join(format!("sluice-bench-{}", crate::commit_log::new_run_id()));
        std::fs::create_dir_all(&dir)
            .map_err(|e| SluiceError::Internal(format!("scratch folder {}: {e}", dir.display())))?;
        Ok(Self(dir))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What one pass (or several, added up) measured.
#[derive(Default)]
struct Measured {
    rows_out: u64,
    wall: f64,
    cpu: f64,
    stage_cpu: Option<f64>,
    peak_rss: Option<u64>,
    latencies_us: Vec<u32>,
}

impl Measured {
    fn add(&mut self, m: Measured) {
        self.rows_out += m.rows_out;
        self.wall += m.wall;
        self.cpu += m.cpu;
        self.stage_cpu = match (self.stage_cpu, m.stage_cpu) {
            (Some(a), Some(b)) => Some(a + b),
            (a, b) => a.or(b),
        };
        self.peak_rss = self.peak_rss.max(m.peak_rss);
        self.latencies_us.extend(m.latencies_us);
    }
}

/// Passes are repeated until they add up to this much wall time: CPU time
/// is counted in 10 ms ticks, so one short pass would say little.
const MIN_WALL_SECONDS: f64 = 1.0;
const MAX_PASSES: usize = 100;

fn quantile_ms(samples: &[u32], q: f64) -> Option<f64> {
    super::control::quantile(samples, q).map(|u| u as f64 / 1000.0)
}

/// A branch ready to run passes over the sample.
enum Runner {
    External(Arc<ExternalRuntime>),
    Sql {
        ctx: SessionContext,
        input: String,
        sql: String,
    },
}

impl Runner {
    async fn start(
        engine: &Engine,
        spec: &PipelineSpec,
        input: &str,
        branch: &Branch,
        config: &StageConfig,
    ) -> Result<Self> {
        match config {
            StageConfig::External(c) => {
                let rt = ExternalRuntime::start(&branch.component, c.clone(), &spec.base_dir, None)
                    .await
                    .map_err(|e| {
                        SluiceError::spec(
                            spec.issue(branch.key.clone(), format!("{}: {e}", branch.label)),
                        )
                    })?;
                rt.keep_recent();
                Ok(Runner::External(rt))
            }
            StageConfig::Operator(_) => Err(SluiceError::spec(
                spec.issue(
                    branch.key.clone(),
                    format!(
                        "{}: an operator stage keeps state across epochs; `sluice rollout bench` times stateless stages over a sample",
                        branch.label
                    ),
                )
                .with_help("bench the sql or external stages around it"),
            )),
            StageConfig::Sql(_) => {
                let (sql, _) = stage_sql(spec, branch, config)?;
                Ok(Runner::Sql {
                    ctx: session_for(engine, spec),
                    input: input.to_string(),
                    sql,
                })
            }
        }
    }

    fn implementation(&self) -> String {
        match self {
            Runner::External(rt) => format!(
                "{} {} ({})",
                rt.manifest.name, rt.manifest.version, rt.manifest.language
            ),
            Runner::Sql { .. } => "sql".into(),
        }
    }

    /// Passes over `all` in batches of `size` until they took
    /// [`MIN_WALL_SECONDS`]; returns the number of passes and their sum.
    async fn measure(&self, all: &RecordBatch, size: usize) -> Result<(usize, Measured)> {
        let mut sum = Measured::default();
        let mut passes = 0;
        while passes == 0 || (sum.wall < MIN_WALL_SECONDS && passes < MAX_PASSES) {
            sum.add(self.run(all, size).await?);
            passes += 1;
        }
        Ok((passes, sum))
    }

    async fn run(&self, all: &RecordBatch, size: usize) -> Result<Measured> {
        let batches: Vec<RecordBatch> = (0..all.num_rows())
            .step_by(size)
            .map(|o| all.slice(o, size.min(all.num_rows() - o)))
            .collect();
        let schema: SchemaRef = all.schema();
        let internal = |e: datafusion::error::DataFusionError| SluiceError::Internal(e.to_string());
        let cpu0 = own_cpu_seconds().unwrap_or(0.0);
        match self {
            Runner::External(rt) => {
                let before = rt.process_usage().await;
                rt.take_recent();
                let out = rt.manifest.output_for(&schema);
                let input = MemorySourceConfig::try_new_exec(&[batches], Arc::clone(&schema), None)
                    .map_err(internal)?;
                let plan = Arc::new(ExternalStageExec::new(Arc::clone(rt), input, out));
                let binding = Arc::new(EpochBinding::new(
                    0,
                    BTreeMap::new(),
                    opentelemetry::Context::new(),
                ));
                let state = binding.bind(&SessionContext::new().state());
                let t = Instant::now();
                let result = collect(plan, state.task_ctx())
                    .await
                    .map_err(|e| SluiceError::from_datafusion(e, None))?;
                let wall = t.elapsed().as_secs_f64();
                let after = rt.process_usage().await;
                let stage_cpu = match (before, after) {
                    (Some(b), Some(a)) => Some(a.cpu_seconds - b.cpu_seconds),
                    _ => None,
                };
                let engine_cpu = own_cpu_seconds().unwrap_or(0.0) - cpu0;
                Ok(Measured {
                    rows_out: result.iter().map(|b| b.num_rows() as u64).sum(),
                    wall,
                    cpu: engine_cpu + stage_cpu.unwrap_or(0.0),
                    stage_cpu,
                    peak_rss: after.map(|a| a.peak_rss_bytes),
                    latencies_us: rt.take_recent(),
                })
            }
            Runner::Sql { ctx, input, sql } => {
                let table =
                    MemTable::try_new(Arc::clone(&schema), vec![batches]).map_err(internal)?;
                ctx.deregister_table(input.as_str()).map_err(internal)?;
                ctx.register_table(input.as_str(), Arc::new(table))
                    .map_err(internal)?;
                let t = Instant::now();
                let result = ctx
                    .sql(sql)
                    .await
                    .map_err(internal)?
                    .collect()
                    .await
                    .map_err(internal)?;
                let wall = t.elapsed().as_secs_f64();
                Ok(Measured {
                    rows_out: result.iter().map(|b| b.num_rows() as u64).sum(),
                    wall,
                    cpu: own_cpu_seconds().unwrap_or(0.0) - cpu0,
                    stage_cpu: None,
                    peak_rss: None,
                    latencies_us: Vec::new(),
                })
            }
        }
    }

    async fn stop(&self) {
        if let Runner::External(rt) = self {
            rt.shutdown().await;
        }
    }
}
