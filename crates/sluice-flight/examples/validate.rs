//! The `validate` example stage in Rust: drops rows with too large a quantity
//! or an empty ship mode and reports them as row errors. Its Go twin is
//! `sdk/go/examples/validate`; both follow examples/stages/README.md.
//!
//! ```text
//! SLUICE_STAGE_SOCKET=/tmp/validate.sock cargo run -p sluice-flight --example validate
//! ```

#[path = "common/lines.rs"]
mod lines;

use arrow_array::cast::AsArray;
use arrow_array::types::Int64Type;
use arrow_array::{BooleanArray, RecordBatch};
use arrow_select::filter::filter_record_batch;
use serde::Deserialize;
use sluice_contract::ErrorCode;
use sluice_flight::manifest::{ErrorSemantics, Ordering};
use sluice_flight::{
    Manifest, OpenRequest, Processed, Processor, RowError, Stage, StageError, serve,
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default = "default_max")]
    max_quantity: i64,
}

fn default_max() -> i64 {
    45
}

struct Validate;

struct Run {
    max_quantity: i64,
}

#[async_trait::async_trait]
impl Stage for Validate {
    fn manifest(&self) -> Manifest {
        let mut m = Manifest::new("validate", "1.0.0");
        m.input_schema = Some(lines::decl("lines", lines::lines_schema()));
        m.output_schema = Some(lines::decl("valid_lines", lines::lines_schema()));
        m.ordering = Ordering::Preserve;
        m.errors = ErrorSemantics::Row;
        m
    }

    async fn open(&self, request: &OpenRequest) -> Result<Box<dyn Processor>, StageError> {
        let config = if request.config.is_null() {
            serde_json::json!({})
        } else {
            request.config.clone()
        };
        let c: Config = serde_json::from_value(config).map_err(|e| {
            StageError::new(
                ErrorCode::InvalidArgument,
                format!("config of stage `{}`: {e}", request.stage),
            )
        })?;
        Ok(Box::new(Run {
            max_quantity: c.max_quantity,
        }))
    }
}

#[async_trait::async_trait]
impl Processor for Run {
    async fn process(&mut self, batch: RecordBatch) -> Result<Processed, StageError> {
        let quantity = batch.column(lines::QUANTITY).as_primitive::<Int64Type>();
        let mode = batch.column(lines::SHIPMODE).as_string::<i32>();
        let mut errors = Vec::new();
        // rows are checked in order; only failing rows cost more than a comparison
        let keep: BooleanArray = (0..batch.num_rows())
            .map(|i| {
                let q = quantity.value(i);
                if q > self.max_quantity {
                    errors.push(RowError::new(
                        i as u64,
                        ErrorCode::Rejected,
                        format!("quantity {q} exceeds {}", self.max_quantity),
                    ));
                    Some(false)
                } else if mode.value(i).is_empty() {
                    errors.push(RowError::new(
                        i as u64,
                        ErrorCode::Malformed,
                        "empty ship mode",
                    ));
                    Some(false)
                } else {
                    Some(true)
                }
            })
            .collect();
        let output = if errors.is_empty() {
            batch
        } else {
            filter_record_batch(&batch, &keep)
                .map_err(|e| StageError::new(ErrorCode::Internal, e.to_string()))?
        };
        Ok(Processed {
            output: Some(output),
            row_errors: errors,
        })
    }
}

// large batches: mimalloc reuses memory where the system allocator maps and faults in fresh pages
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    serve(Validate).await?;
    Ok(())
}
