//! Embedding sluice in a Rust program: an engine with its own DataFusion
//! session config and memory-limited runtime, a pipeline built in code (no
//! TOML), a Rust UDF callable from SQL, a custom source with typed offsets,
//! a custom sink under the commit protocol, and a run followed, stopped and
//! resumed through its handle.
//!
//! ```text
//! cargo run --example embed
//! ```
//!
//! The source produces sensor readings in memory, one slice (epoch) per
//! "minute"; two SQL stages keep the hot readings (using the UDF) and
//! aggregate them. One sink writes Parquet to the engine's in-memory object
//! store with sluice's commit log; the other is this program's own: a
//! ledger in memory that shows what a custom sink does to be exactly once.
//! The first run is stopped after its second commit; the second run resumes
//! where the commits say and finishes. Every group of readings must be in
//! both sinks exactly once.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use sluice::contract::SourceProvenance;
use sluice::datafusion::arrow::array::{
    ArrayRef, AsArray, Float64Array, Int64Array, RecordBatch, StringArray,
};
use sluice::datafusion::arrow::compute::cast;
use sluice::datafusion::arrow::compute::kernels::arity::unary;
use sluice::datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef};
use sluice::datafusion::datasource::MemTable;
use sluice::datafusion::execution::runtime_env::RuntimeEnvBuilder;
use sluice::datafusion::logical_expr::{ColumnarValue, Volatility, create_udf};
use sluice::datafusion::prelude::SessionConfig;
use sluice::sinks::{
    CommitRecord, CommittedRange, EpochOutput, Recovered, Sealed, Sink, SinkConfig, SinkContext,
    SinkFactory, SinkLog,
};
use sluice::sources::{AnySource, Slice, SliceLimits, Source, SourceContext, SourceFactory};
use sluice::{Engine, PipelineSpec, Result, RunEvent, RunOptions, SluiceError, SourceOffsets};

// ---- a custom source with typed offsets ------------------------------------

/// Readings of a few sensors, generated in memory: `minutes` slices of `per_minute` rows.
#[derive(Debug)]
struct SensorFeed {
    minutes: u64,
    per_minute: u64,
}

/// Where the feed is. The engine keeps it (as JSON) in every commit and
/// hands it back decoded; offsets that do not decode fail the run, naming
/// the source, instead of silently starting over.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct MinuteOffset {
    /// Minutes `0..minute` were handed out.
    minute: u64,
}

/// The open source: which minute comes next.
#[derive(Debug)]
struct SensorSource {
    name: String,
    minutes: u64,
    per_minute: u64,
    next_minute: u64,
}

fn sensor_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("minute", DataType::Int64, false),
        Field::new("sensor", DataType::Utf8, false),
        Field::new("celsius", DataType::Float64, false),
    ]))
}

fn internal(e: impl std::fmt::Display) -> SluiceError {
    SluiceError::Internal(e.to_string())
}

impl SensorSource {
    /// The readings of one minute; deterministic, so a replayed epoch is identical.
    fn minute(&self, minute: u64) -> Result<RecordBatch> {
        let n = self.per_minute as usize;
        let minutes = Int64Array::from(vec![minute as i64; n]);
        let sensors = StringArray::from_iter_values((0..n).map(|i| format!("sensor-{}", i % 4)));
        let celsius = Float64Array::from_iter_values(
            (0..n).map(|i| 20.0 + ((i as u64 * 7 + minute * 13) % 20) as f64),
        );
        RecordBatch::try_new(
            sensor_schema(),
            vec![Arc::new(minutes), Arc::new(sensors), Arc::new(celsius)],
        )
        .map_err(internal)
    }

    fn slice(&self, from: u64, to: u64) -> Result<Slice<MinuteOffset>> {
        let batches = (from..to)
            .map(|m| self.minute(m))
            .collect::<Result<Vec<_>>>()?;
        let table = MemTable::try_new(sensor_schema(), vec![batches]).map_err(internal)?;
        Ok(Slice {
            table: Arc::new(table),
            start: MinuteOffset { minute: from },
            end: MinuteOffset { minute: to },
            estimated_rows: Some((to - from) * self.per_minute),
            uris: vec![format!("sensors://feed/minutes/{from}..{to}")],
        })
    }
}

#[async_trait]
impl SourceFactory for SensorFeed {
    async fn open(&self, ctx: &SourceContext<'_>) -> Result<Box<dyn AnySource>> {
        Ok(Box::new(SensorSource {
            name: ctx.name.to_string(),
            minutes: self.minutes,
            per_minute: self.per_minute,
            next_minute: 0,
        }))
    }
}

#[async_trait]
impl Source for SensorSource {
    type Offset = MinuteOffset;

    fn kind(&self) -> &str {
        "sensor_feed"
    }
    fn schema(&self) -> SchemaRef {
        sensor_schema()
    }
    fn provenance(&self) -> SourceProvenance {
        SourceProvenance {
            source: self.name.clone(),
            kind: "sensor_feed".into(),
            uris: vec!["sensors://feed".into()],
            parameters: serde_json::Map::from_iter([(
                "per_minute".to_string(),
                serde_json::json!(self.per_minute),
            )]),
            upstream: None,
        }
    }
    async fn resume(&mut self, at: &MinuteOffset) -> Result<()> {
        self.next_minute = at.minute;
        Ok(())
    }
    async fn restart(&mut self) -> Result<()> {
        self.next_minute = 0;
        Ok(())
    }
    async fn next_slice(&mut self, limits: &SliceLimits) -> Result<Option<Slice<MinuteOffset>>> {
        if self.next_minute >= self.minutes {
            return Ok(None);
        }
        // one minute per epoch unless the limits allow more
        let per_epoch = limits.max_rows.map_or(1, |m| (m / self.per_minute).max(1));
        let to = (self.next_minute + per_epoch).min(self.minutes);
        let slice = self.slice(self.next_minute, to)?;
        self.next_minute = to;
        Ok(Some(slice))
    }
    async fn replay(
        &mut self,
        start: &MinuteOffset,
        end: &MinuteOffset,
    ) -> Result<Slice<MinuteOffset>> {
        self.slice(start.minute, end.minute)
    }
}

// ---- a custom sink under the commit protocol --------------------------------

/// One commit of the ledger: the epochs it covers, where the sources were,
/// and the rows.
#[derive(Debug)]
struct LedgerCommit {
    range: CommittedRange,
    batches: Vec<RecordBatch>,
}

/// An in-memory ledger that outlives runs (a real one would be a database
/// table with the commit log in the same transaction as the rows).
#[derive(Debug, Default)]
struct Ledger {
    /// Rows written and not committed, by commit group.
    staged: Mutex<BTreeMap<u64, Vec<RecordBatch>>>,
    committed: Mutex<Vec<LedgerCommit>>,
}

impl Ledger {
    fn rows(&self) -> Vec<RecordBatch> {
        let committed = self.committed.lock().unwrap_or_else(|p| p.into_inner());
        committed
            .iter()
            .flat_map(|c| c.batches.iter().cloned())
            .collect()
    }
}

#[derive(Debug)]
struct LedgerSink {
    name: String,
    ledger: Arc<Ledger>,
}

#[async_trait]
impl Sink for LedgerSink {
    fn name(&self) -> &str {
        &self.name
    }
    fn kind(&self) -> &str {
        "ledger"
    }
    fn url(&self) -> String {
        "ledger://memory".into()
    }
    /// What the ledger holds decides where the next run starts: a range it
    /// already has is never written to it again.
    async fn recover(&self) -> Result<Recovered> {
        self.ledger
            .staged
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        let committed = self
            .ledger
            .committed
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        Ok(Recovered {
            log: SinkLog::durable(committed.iter().map(|c| c.range.clone()).collect()),
            removed_files: Vec::new(),
        })
    }
    async fn write(&self, output: EpochOutput) -> Result<u64> {
        let mut rows = output.execute_all()?;
        let mut batches = Vec::new();
        while let Some(batch) = rows.next().await {
            batches.push(batch.map_err(|e| output.error(e))?);
        }
        let n = batches.iter().map(|b| b.num_rows() as u64).sum();
        self.ledger
            .staged
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(output.commit_group())
            .or_default()
            .extend(batches);
        Ok(n)
    }
    async fn seal(&self, group: u64) -> Result<Sealed> {
        let staged = self.ledger.staged.lock().unwrap_or_else(|p| p.into_inner());
        let rows = staged
            .get(&group)
            .map_or(0, |b| b.iter().map(|b| b.num_rows() as u64).sum());
        Ok(Sealed {
            rows,
            ..Sealed::default()
        })
    }
    async fn commit(&self, _sealed: Sealed, record: &CommitRecord) -> Result<()> {
        let batches = self
            .ledger
            .staged
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&record.first_epoch)
            .unwrap_or_default();
        self.ledger
            .committed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(LedgerCommit {
                range: record.range(),
                batches,
            });
        Ok(())
    }
    async fn abort(&self) {
        self.ledger
            .staged
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }
}

#[derive(Debug)]
struct LedgerFactory(Arc<Ledger>);

impl SinkFactory for LedgerFactory {
    fn open(&self, ctx: &SinkContext<'_>) -> Result<Arc<dyn Sink>> {
        Ok(Arc::new(LedgerSink {
            name: ctx.name.to_string(),
            ledger: Arc::clone(&self.0),
        }))
    }
}

// ---- the program ------------------------------------------------------------

fn pipeline(ledger: &Arc<Ledger>, out: &str) -> PipelineSpec {
    PipelineSpec::new("embedded_sensors", "1.0.0")
        .with_custom_source("readings", Arc::new(SensorFeed { minutes: 5, per_minute: 1000 }))
        .with_sql_stage(
            "hot",
            &["readings"],
            "SELECT minute, sensor, to_fahrenheit(celsius) AS fahrenheit FROM readings WHERE celsius >= 35",
        )
        .with_sql_stage(
            "per_sensor",
            &["hot"],
            "SELECT minute, sensor, count(*) AS readings, max(fahrenheit) AS max_f FROM hot GROUP BY minute, sensor",
        )
        .with_sink("parquet", SinkConfig::parquet("per_sensor", out))
        .with_custom_sink("ledger", "per_sensor", Arc::new(LedgerFactory(Arc::clone(ledger))))
}

/// The (minute, sensor) groups in `batches`; fails on a group seen twice.
fn groups(batches: &[RecordBatch]) -> Result<BTreeSet<(i64, String)>> {
    let mut seen = BTreeSet::new();
    for b in batches {
        let minutes = b
            .column_by_name("minute")
            .ok_or_else(|| internal("no minute column"))?
            .as_primitive::<Int64Type>();
        // Parquet read back gives string views: compare as plain strings
        let sensors = cast(
            b.column_by_name("sensor")
                .ok_or_else(|| internal("no sensor column"))?,
            &DataType::Utf8,
        )
        .map_err(internal)?;
        let sensors = sensors.as_string::<i32>();
        for i in 0..b.num_rows() {
            let key = (minutes.value(i), sensors.value(i).to_string());
            if !seen.insert(key.clone()) {
                return Err(internal(format!("group {key:?} was committed twice")));
            }
        }
    }
    Ok(seen)
}

#[tokio::main]
async fn main() -> Result<()> {
    // the embedder owns DataFusion's session and runtime: two partitions,
    // and operators may hold at most 512 MiB
    let runtime = RuntimeEnvBuilder::new()
        .with_memory_limit(512 << 20, 1.0)
        .build_arc()
        .map_err(internal)?;
    let mut engine = Engine::new()
        .with_session_config(SessionConfig::new().with_target_partitions(2))
        .with_runtime_env(runtime);

    // a Rust function, callable from every SQL stage as to_fahrenheit(x)
    let to_fahrenheit = create_udf(
        "to_fahrenheit",
        vec![DataType::Float64],
        DataType::Float64,
        Volatility::Immutable,
        Arc::new(|args: &[ColumnarValue]| {
            let arrays = ColumnarValue::values_to_arrays(args)?;
            let c = arrays[0]
                .as_any()
                .downcast_ref::<Float64Array>()
                .ok_or_else(|| {
                    sluice::datafusion::error::DataFusionError::Internal(
                        "to_fahrenheit expects Float64".into(),
                    )
                })?;
            let f: Float64Array = unary(c, |v| v * 9.0 / 5.0 + 32.0);
            Ok(ColumnarValue::Array(Arc::new(f) as ArrayRef))
        }),
    );
    engine.register_udf(to_fahrenheit);

    let out = "memory:///embedded/hot_sensors";
    let ledger = Arc::new(Ledger::default());

    // run 1: follow the commits, ask for a stop after the second one
    let handle = engine
        .compile(pipeline(&ledger, out))
        .await?
        .start(RunOptions::default());
    let mut events = handle.events();
    while let Some(event) = events.next().await {
        match event {
            RunEvent::Committed {
                first_epoch,
                epoch,
                rows,
                offsets,
            } => {
                let at: Option<&SourceOffsets> = offsets.get("readings");
                println!(
                    "committed epochs {first_epoch}..={epoch}: {rows:?}, readings now at {}",
                    at.map_or_else(|| "?".to_string(), |o| o.end.to_string())
                );
                if epoch == 1 {
                    // a graceful stop: what is written is committed first
                    handle.stop();
                }
            }
            RunEvent::Finished { .. } | RunEvent::Failed { .. } => break,
            _ => {}
        }
    }
    let first = handle.wait().await?;
    println!("run 1: {} epochs committed", first.epochs);

    // run 2: the commits say where the feed stopped; it resumes there
    let second = engine.run(pipeline(&ledger, out)).await?;
    println!(
        "run 2: started at epoch {}, {} epochs committed",
        second.first_epoch, second.epochs
    );
    for c in &second.components {
        println!(
            "  {:<6} {:<10} {:>8} rows in {:>8} rows out",
            c.role, c.name, c.rows_in, c.rows_out
        );
    }

    // every group once, in both sinks, read the way their readers read them
    let parquet = sluice::inspect::read_committed_rows(&engine, out, &Default::default()).await?;
    let in_parquet = groups(&parquet)?;
    let in_ledger = groups(&ledger.rows())?;
    let minutes: BTreeSet<i64> = in_ledger.iter().map(|(m, _)| *m).collect();
    if first.epochs + second.epochs != 5
        || second.first_epoch != first.epochs
        || in_parquet != in_ledger
        || minutes != (0..5).collect()
    {
        return Err(internal(format!(
            "unexpected result: {} + {} epochs, run 2 started at {}, {} groups in Parquet, {} in the ledger, minutes {minutes:?}",
            first.epochs,
            second.epochs,
            second.first_epoch,
            in_parquet.len(),
            in_ledger.len()
        )));
    }
    println!(
        "ok: {} groups of 5 minutes, each committed once to Parquet and to the ledger",
        in_ledger.len()
    );
    Ok(())
}
