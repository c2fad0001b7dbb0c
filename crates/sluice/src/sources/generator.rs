//! The `generator` source: synthetic events, deterministic given a seed.
//!
//! Row `i` is a pure function of `(seed, i)`, so any range of rows can be
//! generated again exactly (replays after a crash) and in parallel. Events
//! have an event time, a key drawn from a Zipf-skewed distribution, a value,
//! an optional field, a list and a struct. With `rows_per_second` rows become
//! available at that rate (a live stream); without, as fast as the pipeline
//! takes them. With `total_rows` the source ends.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use datafusion::arrow::array::{
    ArrayRef, Float64Builder, Int32Builder, Int64Array, ListBuilder, RecordBatch, StringBuilder,
    StructArray, TimestampMicrosecondArray,
};
use datafusion::arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};
use datafusion::execution::TaskContext;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sluice_contract::SourceProvenance;

use super::{AnySource, Slice, SliceLimits, Source, SourceContext};
use crate::error::{Result, SluiceError};
use crate::ops::generate::{BatchGenerator, Batches, GeneratedTable};

fn default_seed() -> u64 {
    42
}
fn default_keys() -> u64 {
    1000
}
fn default_skew() -> f64 {
    1.1
}
fn default_start() -> String {
    "2024-01-01T00:00:00Z".into()
}

/// `[sources.<name>] kind = "generator"`: synthetic events.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GeneratorSourceConfig {
    /// Seed: the same seed gives the same rows (default 42).
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Rows made available per second; absent: as fast as the pipeline reads.
    #[serde(default)]
    pub rows_per_second: Option<f64>,
    /// Rows in total; absent: the stream never ends.
    #[serde(default)]
    pub total_rows: Option<u64>,
    /// Distinct keys (default 1000).
    #[serde(default = "default_keys")]
    pub keys: u64,
    /// Zipf exponent of the key distribution: 0 uniform, 1.1 (default) skewed.
    #[serde(default = "default_skew")]
    pub key_skew: f64,
    /// Event time of row 0 (RFC 3339; default 2024-01-01T00:00:00Z).
    #[serde(default = "default_start")]
    pub start_time: String,
}

/// The schema of generated events.
pub(super) fn events_schema() -> SchemaRef {
    let device = Fields::from(vec![
        Field::new("os", DataType::Utf8, false),
        Field::new("version", DataType::Int32, true),
    ]);
    Arc::new(Schema::new(vec![
        Field::new("event_id", DataType::Int64, false),
        Field::new(
            "event_time",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
        Field::new("key", DataType::Utf8, false),
        Field::new("value", DataType::Float64, false),
        Field::new("category", DataType::Utf8, true),
        Field::new_list("tags", Field::new_list_field(DataType::Utf8, true), true),
        Field::new("device", DataType::Struct(device), false),
    ]))
}

/// splitmix64: a fast, well-mixed hash of a row number.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Rows `[start, end)` in chunks of `chunk`; a unit is a chunk's first row.
#[derive(Debug)]
struct EventGenerator {
    seed: u64,
    /// Cumulative Zipf probabilities of the keys.
    cdf: Arc<Vec<f64>>,
    start_us: i64,
    step_us: i64,
    end: u64,
    chunk: u64,
}

const CATEGORIES: [&str; 4] = ["click", "view", "purchase", "share"];
const TAGS: [&str; 4] = ["new", "promo", "mobile", "beta"];
const OS: [&str; 5] = ["linux", "macos", "windows", "android", "ios"];

impl EventGenerator {
    fn batch(
        &self,
        from: u64,
        to: u64,
    ) -> std::result::Result<RecordBatch, datafusion::arrow::error::ArrowError> {
        let n = (to - from) as usize;
        let ids = Int64Array::from_iter_values((from..to).map(|i| i as i64));
        let times = TimestampMicrosecondArray::from_iter_values(
            (from..to).map(|i| self.start_us + i as i64 * self.step_us),
        )
        .with_timezone("UTC");
        let mut keys = StringBuilder::with_capacity(n, n * 8);
        let mut values = Float64Builder::with_capacity(n);
        let mut cats = StringBuilder::with_capacity(n, n * 6);
        let mut tags = ListBuilder::new(StringBuilder::new());
        let mut os = StringBuilder::with_capacity(n, n * 6);
        let mut version = Int32Builder::with_capacity(n);
        for i in from..to {
            let h = mix(self.seed ^ mix(i));
            let u = (h >> 11) as f64 / (1u64 << 53) as f64;
            let k = self
                .cdf
                .partition_point(|c| *c < u)
                .min(self.cdf.len().saturating_sub(1));
            keys.append_value(format!("user-{k}"));
            values.append_value(((h >> 7) % 100_000) as f64 / 100.0);
            let h2 = mix(h);
            if h2.is_multiple_of(5) {
                cats.append_null();
            } else {
                cats.append_value(CATEGORIES[(h2 % 4) as usize]);
            }
            match h2 % 7 {
                0 => tags.append_null(),
                m => {
                    for t in 0..(m % 3) {
                        tags.values()
                            .append_value(TAGS[((h2 >> (8 + t * 4)) % 4) as usize]);
                    }
                    tags.append(true);
                }
            }
            let h3 = mix(h2);
            os.append_value(OS[(h3 % 5) as usize]);
            if h3.is_multiple_of(9) {
                version.append_null()
            } else {
                version.append_value((h3 % 20) as i32)
            }
        }
        let schema = events_schema();
        let device_fields = match schema.field(6).data_type() {
            DataType::Struct(f) => f.clone(),
            _ => Fields::empty(),
        };
        let device = StructArray::try_new(
            device_fields,
            vec![
                Arc::new(os.finish()) as ArrayRef,
                Arc::new(version.finish()),
            ],
            None,
        )?;
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(ids),
                Arc::new(times),
                Arc::new(keys.finish()),
                Arc::new(values.finish()),
                Arc::new(cats.finish()),
                Arc::new(tags.finish()),
                Arc::new(device),
            ],
        )
    }
}

impl BatchGenerator for EventGenerator {
    fn describe(&self) -> String {
        format!(
            "events seed={} keys={} rows<{}",
            self.seed,
            self.cdf.len(),
            self.end
        )
    }
    fn schema(&self) -> SchemaRef {
        events_schema()
    }
    fn generate(&self, unit: u64, _task: &TaskContext) -> Batches {
        let to = (unit + self.chunk).min(self.end);
        Box::new(std::iter::once(self.batch(unit, to)))
    }
}

/// Opens a `generator` source.
pub(super) fn open(
    cfg: &GeneratorSourceConfig,
    ctx: &SourceContext<'_>,
) -> Result<Box<dyn AnySource>> {
    let issue = |key: &str, msg: String| {
        SluiceError::spec(ctx.spec.issue(format!("sources.{}.{key}", ctx.name), msg))
    };
    if cfg.keys == 0 || cfg.keys > 10_000_000 {
        return Err(issue(
            "keys",
            format!("keys must be 1..=10000000, got {}", cfg.keys),
        ));
    }
    if let Some(r) = cfg.rows_per_second {
        // at least one row a day, at most one a nanosecond
        if !((1.0 / 86_400.0)..=1e9).contains(&r) {
            return Err(issue(
                "rows_per_second",
                format!("must be between 0.0000116 (a row a day) and 1e9, got {r}"),
            ));
        }
    }
    let start = chrono::DateTime::parse_from_rfc3339(&cfg.start_time).map_err(|e| {
        issue(
            "start_time",
            format!("`{}` is not an RFC 3339 time: {e}", cfg.start_time),
        )
    })?;
    // Zipf: P(k) ∝ 1/(k+1)^s
    let weights: Vec<f64> = (0..cfg.keys)
        .map(|k| 1.0 / ((k + 1) as f64).powf(cfg.key_skew))
        .collect();
    let total: f64 = weights.iter().sum();
    let mut acc = 0.0;
    let cdf: Vec<f64> = weights
        .iter()
        .map(|w| {
            acc += w / total;
            acc
        })
        .collect();
    let step_us = cfg
        .rows_per_second
        .map_or(1000, |r| (1e6 / r).round().max(1.0) as i64);
    Ok(Box::new(GeneratorSource {
        name: ctx.name.to_string(),
        config: cfg.clone(),
        cdf: Arc::new(cdf),
        start_us: start.timestamp_micros(),
        step_us,
        next: 0,
        clock: None,
        target_partitions: ctx.target_partitions,
        chunk: ctx.batch_size as u64,
    }))
}

#[derive(Debug)]
struct GeneratorSource {
    name: String,
    config: GeneratorSourceConfig,
    cdf: Arc<Vec<f64>>,
    start_us: i64,
    step_us: i64,
    next: u64,
    /// When pacing started and the row it started at (rate-limited streams).
    clock: Option<(Instant, u64)>,
    target_partitions: usize,
    chunk: u64,
}

/// A generator's position: the number of the next row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GeneratorOffset {
    /// Rows `0..next` were handed out.
    pub next: u64,
}

impl GeneratorSource {
    /// The last row number whose event time fits in a timestamp.
    fn last_row(&self) -> u64 {
        ((i64::MAX - self.start_us.max(0)) / self.step_us.max(1)) as u64
    }

    /// Committed offsets `start..end` this generator can make again.
    fn check(&self, start: &GeneratorOffset, end: &GeneratorOffset) -> Result<()> {
        if start.next <= end.next && end.next <= self.last_row() {
            return Ok(());
        }
        Err(SluiceError::Source {
            source_name: self.name.clone(),
            file: None,
            line: None,
            message: format!(
                "the committed offsets (rows {}..{}) are not a range this generator makes (rows 0..{}); the commit log was edited or belongs to another pipeline",
                start.next,
                end.next,
                self.last_row()
            ),
            retry: crate::error::RetryHint::Never,
            cause: None,
        })
    }

    fn slice(&self, from: u64, to: u64) -> Slice<GeneratorOffset> {
        let generator = Arc::new(EventGenerator {
            seed: self.config.seed,
            cdf: Arc::clone(&self.cdf),
            start_us: self.start_us,
            step_us: self.step_us,
            end: to,
            chunk: self.chunk,
        });
        let units: Vec<u64> = (from..to).step_by(self.chunk.max(1) as usize).collect();
        Slice {
            table: Arc::new(GeneratedTable::new(
                generator,
                units,
                self.target_partitions,
            )),
            start: GeneratorOffset { next: from },
            end: GeneratorOffset { next: to },
            estimated_rows: Some(to - from),
            uris: vec![format!(
                "generator://{}?seed={}&rows={from}..{to}",
                self.name, self.config.seed
            )],
        }
    }

    /// Rows available now (rate-limited streams make them available over time).
    fn available(&mut self) -> u64 {
        let cap = self.config.total_rows.unwrap_or(u64::MAX);
        match self.config.rows_per_second {
            None => cap,
            Some(rate) => {
                let (t0, r0) = *self.clock.get_or_insert((Instant::now(), self.next));
                (r0 + (t0.elapsed().as_secs_f64() * rate) as u64).min(cap)
            }
        }
    }
}

#[async_trait]
impl Source for GeneratorSource {
    type Offset = GeneratorOffset;

    fn kind(&self) -> &str {
        "generator"
    }
    fn schema(&self) -> SchemaRef {
        events_schema()
    }
    fn is_bounded(&self) -> bool {
        self.config.total_rows.is_some()
    }
    fn provenance(&self) -> SourceProvenance {
        let mut parameters = serde_json::Map::new();
        parameters.insert("seed".into(), json!(self.config.seed));
        parameters.insert("keys".into(), json!(self.config.keys));
        parameters.insert("key_skew".into(), json!(self.config.key_skew));
        parameters.insert("rows_per_second".into(), json!(self.config.rows_per_second));
        SourceProvenance {
            source: self.name.clone(),
            kind: "generator".into(),
            uris: vec![format!(
                "generator://{}?seed={}",
                self.name, self.config.seed
            )],
            parameters,
            upstream: None,
        }
    }
    async fn restart(&mut self) -> Result<()> {
        self.next = 0;
        self.clock = None;
        Ok(())
    }
    async fn resume(&mut self, at: &GeneratorOffset) -> Result<()> {
        self.check(at, at)?;
        self.next = at.next;
        self.clock = None;
        Ok(())
    }
    async fn next_slice(&mut self, limits: &SliceLimits) -> Result<Option<Slice<GeneratorOffset>>> {
        let cap = self.config.total_rows.unwrap_or(u64::MAX);
        if self.next >= cap {
            return Ok(None);
        }
        let want = self
            .next
            .saturating_add(limits.max_rows.unwrap_or(1_000_000))
            .min(cap)
            .min(self.last_row());
        let mut available = self.available();
        if available < want
            && let Some(rate) = self.config.rows_per_second
        {
            // wait for the rows, at most the epoch's latency bound
            let missing = (want - available) as f64 / rate;
            let wait = Duration::try_from_secs_f64(missing)
                .unwrap_or(Duration::MAX)
                .min(limits.max_latency.unwrap_or(Duration::from_secs(1)));
            tokio::time::sleep(wait).await;
            available = self.available();
        }
        let to = want.min(available);
        let from = self.next;
        self.next = to;
        Ok(Some(self.slice(from, to)))
    }
    async fn replay(
        &mut self,
        start: &GeneratorOffset,
        end: &GeneratorOffset,
    ) -> Result<Slice<GeneratorOffset>> {
        self.check(start, end)?;
        self.next = end.next;
        self.clock = None;
        Ok(self.slice(start.next, end.next))
    }
    fn estimated_remaining_rows(&self) -> Option<u64> {
        self.config.total_rows.map(|t| t.saturating_sub(self.next))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generator(seed: u64) -> EventGenerator {
        let cdf: Vec<f64> = (1..=100).map(|k| k as f64 / 100.0).collect();
        EventGenerator {
            seed,
            cdf: Arc::new(cdf),
            start_us: 0,
            step_us: 1000,
            end: 1_000,
            chunk: 100,
        }
    }

    #[test]
    fn rows_are_a_function_of_seed_and_row_number() {
        let a = generator(7).batch(100, 300).unwrap();
        let b = generator(7).batch(100, 300).unwrap();
        assert_eq!(a, b);
        let parts = [
            generator(7).batch(100, 200).unwrap(),
            generator(7).batch(200, 300).unwrap(),
        ];
        let joined = datafusion::arrow::compute::concat_batches(&a.schema(), &parts).unwrap();
        assert_eq!(a, joined, "any split of a range gives the same rows");
        assert_ne!(a, generator(8).batch(100, 300).unwrap());
        assert!(a.column(4).null_count() > 0, "category is optional");
    }
}
