//! The `score` example stage in Rust: an I/O-bound stage that adds a risk
//! score per row, asked from an HTTP service (`scoresvc`) in chunks of
//! `chunk_rows` keys, `concurrency` requests at a time. Its Go twin is
//! `sdk/go/examples/score`; both follow examples/stages/README.md, and
//! docs/stages.md ("Go or Rust?") measures the two.
//!
//! ```text
//! SLUICE_STAGE_SOCKET=/tmp/score.sock cargo run -p sluice-flight --example score
//! ```

#[path = "common/lines.rs"]
mod lines;

use std::sync::Arc;
use std::time::Duration;

use arrow_array::cast::AsArray;
use arrow_array::types::Int64Type;
use arrow_array::{ArrayRef, Int32Array, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use sluice_contract::ErrorCode;
use sluice_flight::manifest::{ErrorSemantics, Ordering};
use sluice_flight::{Manifest, OpenRequest, Processed, Processor, Stage, StageError, serve};

fn output_schema() -> SchemaRef {
    let mut fields: Vec<Field> = lines::lines_schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.push(Field::new("risk", DataType::Int32, false));
    Arc::new(Schema::new(fields))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    url: String,
    #[serde(default = "default_chunk_rows")]
    chunk_rows: usize,
    #[serde(default = "default_concurrency")]
    concurrency: usize,
    #[serde(default = "default_timeout_ms")]
    timeout_ms: u64,
}

fn default_chunk_rows() -> usize {
    1024
}
fn default_concurrency() -> usize {
    8
}
fn default_timeout_ms() -> u64 {
    10_000
}

#[derive(Serialize)]
struct Ask<'a> {
    keys: &'a [i64],
}

#[derive(Deserialize)]
struct Answer {
    scores: Vec<i32>,
}

struct Score;

#[async_trait::async_trait]
impl Stage for Score {
    fn manifest(&self) -> Manifest {
        let mut m = Manifest::new("score", "1.0.0");
        m.input_schema = Some(lines::decl("lines", lines::lines_schema()));
        m.output_schema = Some(lines::decl("scored_lines", output_schema()));
        m.ordering = Ordering::Preserve;
        m.errors = ErrorSemantics::FatalOnly;
        m
    }

    async fn open(&self, request: &OpenRequest) -> Result<Box<dyn Processor>, StageError> {
        let invalid = |message: String| {
            StageError::new(
                ErrorCode::InvalidArgument,
                format!("config of stage `{}`: {message}", request.stage),
            )
        };
        let config: Config =
            serde_json::from_value(request.config.clone()).map_err(|e| invalid(e.to_string()))?;
        if config.url.is_empty()
            || config.chunk_rows == 0
            || config.concurrency == 0
            || config.timeout_ms == 0
        {
            return Err(invalid(
                "url is required; chunk_rows, concurrency and timeout_ms must be at least 1".into(),
            ));
        }
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(config.timeout_ms))
            // keep a connection per request in flight
            .pool_max_idle_per_host(config.concurrency)
            .build()
            .map_err(|e| StageError::new(ErrorCode::Internal, e.to_string()))?;
        Ok(Box::new(Run {
            endpoint: format!("{}/score", config.url),
            config,
            client,
            schema: output_schema(),
        }))
    }
}

struct Run {
    config: Config,
    endpoint: String,
    client: reqwest::Client,
    schema: SchemaRef,
}

impl Run {
    /// The service's scores for `keys`.
    async fn ask(&self, keys: &[i64]) -> Result<Vec<i32>, String> {
        let body = serde_json::to_vec(&Ask { keys }).map_err(|e| e.to_string())?;
        let resp = self
            .client
            .post(&self.endpoint)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status();
        let text = resp.bytes().await.map_err(|e| e.to_string())?;
        if !status.is_success() {
            let msg = String::from_utf8_lossy(&text[..text.len().min(512)]).into_owned();
            return Err(format!("HTTP {status}: {}", msg.trim()));
        }
        let answer: Answer = serde_json::from_slice(&text).map_err(|e| format!("answer: {e}"))?;
        if answer.scores.len() != keys.len() {
            return Err(format!(
                "answer has {} scores for {} keys",
                answer.scores.len(),
                keys.len()
            ));
        }
        Ok(answer.scores)
    }
}

#[async_trait::async_trait]
impl Processor for Run {
    async fn process(&mut self, batch: RecordBatch) -> Result<Processed, StageError> {
        let keys = batch.column(0).as_primitive::<Int64Type>().values();
        // `buffered` keeps the chunks in order while `concurrency` are asked at once
        // a loop, not a closure: the future must be `Send` for every lifetime
        // of a chunk, which the compiler cannot prove through a closure
        let mut asks = Vec::new();
        for chunk in keys.chunks(self.config.chunk_rows) {
            asks.push(self.ask(chunk));
        }
        let chunks: Vec<Vec<i32>> = futures::stream::iter(asks)
            .buffered(self.config.concurrency)
            .try_collect()
            .await
            .map_err(|e| {
                StageError::new(
                    ErrorCode::Unavailable,
                    format!("score service {}: {e}", self.config.url),
                )
            })?;
        let risk = Int32Array::from(chunks.concat());
        let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
        columns.push(Arc::new(risk));
        let out = RecordBatch::try_new(Arc::clone(&self.schema), columns)
            .map_err(|e| StageError::new(ErrorCode::Internal, e.to_string()))?;
        Ok(Processed::batch(out))
    }
}

// large batches: mimalloc reuses memory where the system allocator maps and faults in fresh pages
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    serve(Score).await?;
    Ok(())
}
