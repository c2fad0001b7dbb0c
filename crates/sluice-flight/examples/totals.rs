//! The `totals` example stage in Rust: per-key running totals, a stateful
//! stage whose state takes part in the engine's commits (protocol v1.1).
//! Its Go twin is `sdk/go/examples/totals`.
//!
//! Input `{id, key, value}` (Int64), output the same plus `total`: for each
//! row in order, the sum of `value` (a null counts 0) over every row of its
//! `key` so far, this row included; a null key has a null total. The state
//! is the map of totals, snapshotted as `{"totals":{"<key>":<total>,...}}`
//! at the end of each exchange and restored from the open request, so the
//! totals run on across epochs, crashes and restarts, exactly once.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow_array::{Array, Int64Array, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use serde::{Deserialize, Serialize};
use sluice_contract::ErrorCode;
use sluice_flight::manifest::ErrorSemantics;
use sluice_flight::{
    Manifest, OpenRequest, Processed, Processor, SchemaDecl, Stage, StageError, serve,
};

struct Totals;

#[derive(Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct State {
    /// Keys as decimal strings (JSON object keys), sorted.
    totals: BTreeMap<String, i64>,
}

struct Run {
    totals: BTreeMap<i64, i64>,
}

fn input_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, true),
        Field::new("key", DataType::Int64, true),
        Field::new("value", DataType::Int64, true),
    ]))
}

fn output_schema() -> SchemaRef {
    let mut fields: Vec<Field> = input_schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.push(Field::new("total", DataType::Int64, true));
    Arc::new(Schema::new(fields))
}

#[async_trait::async_trait]
impl Stage for Totals {
    fn manifest(&self) -> Manifest {
        let mut m = Manifest::new("totals", "1.0.0");
        m.stateful = true;
        m.errors = ErrorSemantics::FatalOnly;
        m.input_schema = Some(SchemaDecl {
            name: "keyed_values".into(),
            version: "1".into(),
            schema: input_schema(),
        });
        m.output_schema = Some(SchemaDecl {
            name: "running_totals".into(),
            version: "1".into(),
            schema: output_schema(),
        });
        m
    }

    async fn open(&self, request: &OpenRequest) -> Result<Box<dyn Processor>, StageError> {
        let state: State = match request.restore()? {
            // an empty snapshot is an empty state
            None => State::default(),
            Some(bytes) if bytes.is_empty() => State::default(),
            Some(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                StageError::new(ErrorCode::InvalidArgument, format!("snapshot: {e}"))
            })?,
        };
        let totals = state
            .totals
            .into_iter()
            .map(|(k, v)| {
                k.parse::<i64>().map(|k| (k, v)).map_err(|_| {
                    StageError::new(
                        ErrorCode::InvalidArgument,
                        format!("snapshot: key `{k}` is not an integer"),
                    )
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Box::new(Run { totals }))
    }
}

#[async_trait::async_trait]
impl Processor for Run {
    async fn process(&mut self, batch: RecordBatch) -> Result<Processed, StageError> {
        let int = |i: usize| {
            batch
                .column(i)
                .as_any()
                .downcast_ref::<Int64Array>()
                .ok_or_else(|| StageError::new(ErrorCode::SchemaMismatch, "expected Int64"))
        };
        let (keys, values) = (int(1)?, int(2)?);
        // a running total is a scan: each row depends on the one before
        let total: Int64Array = (0..batch.num_rows())
            .map(|i| {
                if keys.is_null(i) {
                    return Ok(None);
                }
                let key = keys.value(i);
                let add = if values.is_null(i) {
                    0
                } else {
                    values.value(i)
                };
                let t = self.totals.entry(key).or_insert(0);
                // never a wrapped total: the value would be silently wrong
                *t = t.checked_add(add).ok_or_else(|| {
                    StageError::new(
                        ErrorCode::Rejected,
                        format!("the total of key {key} overflows Int64"),
                    )
                })?;
                Ok(Some(*t))
            })
            .collect::<Result<_, StageError>>()?;
        let mut columns = batch.columns().to_vec();
        columns.push(Arc::new(total));
        let out = RecordBatch::try_new(output_schema(), columns)
            .map_err(|e| StageError::new(ErrorCode::Internal, e.to_string()))?;
        Ok(Processed::batch(out))
    }

    async fn snapshot(&mut self) -> Result<Vec<u8>, StageError> {
        let state = State {
            totals: self
                .totals
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
        };
        serde_json::to_vec(&state).map_err(|e| StageError::new(ErrorCode::Internal, e.to_string()))
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    serve(Totals).await?;
    Ok(())
}
