//! Embedding sluice in a Rust program: a pipeline built in code (no TOML),
//! a Rust UDF callable from SQL, and a custom in-memory source.
//!
//! ```text
//! cargo run --example embed
//! ```
//!
//! The source produces sensor readings in memory, one slice (epoch) per
//! "minute"; two SQL stages keep the hot readings (using the UDF) and
//! aggregate them; the sink writes Parquet to the engine's in-memory object
//! store with the usual commit log, which the program then reads back.

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::json;
use sluice::contract::SourceProvenance;
use sluice::datafusion::arrow::array::{
    ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray,
};
use sluice::datafusion::arrow::compute::kernels::arity::unary;
use sluice::datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use sluice::datafusion::datasource::MemTable;
use sluice::datafusion::logical_expr::{ColumnarValue, Volatility, create_udf};
use sluice::sinks::{ParquetSinkConfig, SinkConfig};
use sluice::sources::{Slice, SliceLimits, Source, SourceContext, SourceFactory};
use sluice::{Engine, PipelineSpec, Result, SluiceError};

/// Readings of a few sensors, generated in memory: `minutes` slices of `per_minute` rows.
#[derive(Debug)]
struct SensorFeed {
    minutes: u64,
    per_minute: u64,
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
        .map_err(|e| SluiceError::Internal(e.to_string()))
    }

    fn slice(&self, from: u64, to: u64) -> Result<Slice> {
        let batches = (from..to)
            .map(|m| self.minute(m))
            .collect::<Result<Vec<_>>>()?;
        let table = MemTable::try_new(sensor_schema(), vec![batches])
            .map_err(|e| SluiceError::Internal(e.to_string()))?;
        Ok(Slice {
            table: Arc::new(table),
            start: json!({ "minute": from }),
            end: json!({ "minute": to }),
            estimated_rows: Some((to - from) * self.per_minute),
            uris: vec![format!("sensors://feed/minutes/{from}..{to}")],
        })
    }
}

#[async_trait]
impl SourceFactory for SensorFeed {
    async fn open(&self, ctx: &SourceContext<'_>) -> Result<Box<dyn Source>> {
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
                json!(self.per_minute),
            )]),
            upstream: None,
        }
    }
    async fn resume(&mut self, offsets: &serde_json::Value) -> Result<()> {
        self.next_minute = offsets["minute"].as_u64().unwrap_or(0);
        Ok(())
    }
    async fn next_slice(&mut self, limits: &SliceLimits) -> Result<Option<Slice>> {
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
        start: &serde_json::Value,
        end: &serde_json::Value,
    ) -> Result<Slice> {
        let (from, to) = (
            start["minute"].as_u64().unwrap_or(0),
            end["minute"].as_u64().unwrap_or(0),
        );
        self.next_minute = to;
        self.slice(from, to)
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let mut engine = Engine::new();

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
    let spec = PipelineSpec::new("embedded_sensors", "1.0.0")
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
        .with_sink("out", SinkConfig::Parquet(ParquetSinkConfig::new("per_sensor", out)));

    let summary = engine.run(spec).await?;
    println!(
        "{} committed {} epochs in {:.3}s",
        summary.pipeline,
        summary.epochs,
        summary.wall.as_secs_f64()
    );
    for c in &summary.components {
        println!(
            "  {:<6} {:<10} {:>8} rows in {:>8} rows out",
            c.role, c.name, c.rows_in, c.rows_out
        );
    }

    // read the result back through the commit log, as any reader should
    let commits = sluice::inspect::read_commits(&engine, out, &Default::default()).await?;
    let rows: u64 = commits.iter().map(|c| c.rows).sum();
    println!("{} commits, {rows} rows at {out}", commits.len());
    let hot = summary.component("hot").map_or(0, |c| c.rows_out);
    let expected_groups = summary.component("per_sensor").map_or(0, |c| c.rows_out);
    if commits.len() != 5 || rows != expected_groups || hot == 0 {
        return Err(SluiceError::Internal(format!(
            "unexpected result: {} commits, {rows} rows committed, {expected_groups} groups, {hot} hot readings",
            commits.len()
        )));
    }
    println!("ok: one commit per minute, every group committed once");
    Ok(())
}
