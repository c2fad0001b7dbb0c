//! The `enrich` example stage in Rust: adds `ship_class` (a lookup on the
//! ship mode) and `is_air`. Its Go twin is `sdk/go/examples/enrich`; both
//! follow examples/stages/README.md.
//!
//! ```text
//! SLUICE_STAGE_SOCKET=/tmp/enrich.sock cargo run -p sluice-flight --example enrich
//! ```

#[path = "common/lines.rs"]
mod lines;

use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::{ArrayRef, BooleanArray, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use serde::Deserialize;
use sluice_contract::ErrorCode;
use sluice_flight::manifest::{ErrorSemantics, Ordering};
use sluice_flight::{Manifest, OpenRequest, Processed, Processor, Stage, StageError, serve};

fn output_schema() -> SchemaRef {
    let mut fields: Vec<Field> = lines::lines_schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.push(Field::new("ship_class", DataType::Utf8, true));
    fields.push(Field::new("is_air", DataType::Boolean, false));
    Arc::new(Schema::new(fields))
}

fn ship_class(mode: &str) -> Option<&'static str> {
    match mode {
        "AIR" | "REG AIR" => Some("air"),
        "MAIL" => Some("mail"),
        "SHIP" => Some("sea"),
        "RAIL" | "TRUCK" | "FOB" => Some("ground"),
        _ => None,
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NoConfig {}

struct Enrich;

struct Run {
    schema: SchemaRef,
}

#[async_trait::async_trait]
impl Stage for Enrich {
    fn manifest(&self) -> Manifest {
        let mut m = Manifest::new("enrich", "1.0.0");
        m.input_schema = Some(lines::decl("lines", lines::lines_schema()));
        m.output_schema = Some(lines::decl("enriched_lines", output_schema()));
        m.ordering = Ordering::Preserve;
        m.errors = ErrorSemantics::FatalOnly;
        m
    }

    async fn open(&self, request: &OpenRequest) -> Result<Box<dyn Processor>, StageError> {
        if !request.config.is_null() {
            let _: NoConfig = serde_json::from_value(request.config.clone()).map_err(|e| {
                StageError::new(
                    ErrorCode::InvalidArgument,
                    format!("config of stage `{}`: {e}", request.stage),
                )
            })?;
        }
        Ok(Box::new(Run {
            schema: output_schema(),
        }))
    }
}

#[async_trait::async_trait]
impl Processor for Run {
    async fn process(&mut self, batch: RecordBatch) -> Result<Processed, StageError> {
        let modes = batch.column(lines::SHIPMODE).as_string::<i32>();
        let class: StringArray = modes.iter().map(|m| m.and_then(ship_class)).collect();
        let is_air: BooleanArray = class.iter().map(|c| Some(c == Some("air"))).collect();
        let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
        columns.push(Arc::new(class));
        columns.push(Arc::new(is_air));
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
    serve(Enrich).await?;
    Ok(())
}
