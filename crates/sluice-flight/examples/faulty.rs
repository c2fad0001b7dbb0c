//! `faulty`: an identity stage that misbehaves on request, for the engine's
//! fault tests (crash, hang, output that breaks the manifest).
//!
//! Config (all optional):
//! - `crash_at_batch = N`: the process exits at its Nth input batch;
//! - `hang_at_batch = N`: it stops answering at its Nth input batch;
//! - `bad_output = true`: it answers with a column of the wrong type;
//! - `report_kept = N`: it reports every Nth row of a batch as REJECTED but
//!   keeps it in its output (which the protocol forbids: the row would be
//!   delivered and dead-lettered). The output is a copy of the input: the
//!   SDK itself refuses an output that is the very input with row errors,
//!   and this mode is there for the kit's check, which must find it in
//!   stages written without the SDK;
//! - `once = "/path"`: misbehave only if this file does not exist yet (the
//!   stage creates it), so the restarted process behaves.
//!
//! Without a config in the open request, `SLUICE_FAULTY_CONFIG` (the same
//! keys, as JSON) is used (`sluice stage check --config` gives the kit a
//! config to send).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arrow_array::{ArrayRef, RecordBatch, StringArray};
use serde::Deserialize;
use sluice_contract::ErrorCode;
use sluice_flight::{Manifest, OpenRequest, Processed, Processor, Stage, StageError, serve};

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    crash_at_batch: Option<u64>,
    hang_at_batch: Option<u64>,
    #[serde(default)]
    bad_output: bool,
    report_kept: Option<u64>,
    once: Option<String>,
}

struct Faulty {
    /// Input batches seen by this process, across exchanges.
    seen: Arc<AtomicU64>,
    /// Whether this process misbehaves: decided once, at its first exchange.
    armed: std::sync::OnceLock<bool>,
}

struct Run {
    config: Config,
    armed: bool,
    seen: Arc<AtomicU64>,
}

#[async_trait::async_trait]
impl Stage for Faulty {
    fn manifest(&self) -> Manifest {
        let mut m = Manifest::new("faulty", "1.0.0");
        // `report_kept` reports row errors
        m.errors = sluice_flight::manifest::ErrorSemantics::Row;
        m
    }

    async fn open(&self, request: &OpenRequest) -> Result<Box<dyn Processor>, StageError> {
        let config: Config = if request.config.is_null() {
            match std::env::var("SLUICE_FAULTY_CONFIG") {
                Ok(json) => serde_json::from_str(&json)
                    .map_err(|e| StageError::new(ErrorCode::InvalidArgument, e.to_string()))?,
                Err(_) => Config::default(),
            }
        } else {
            serde_json::from_value(request.config.clone())
                .map_err(|e| StageError::new(ErrorCode::InvalidArgument, e.to_string()))?
        };
        let armed = *self.armed.get_or_init(|| match &config.once {
            Some(path) => std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(path)
                .is_ok(),
            None => true,
        });
        Ok(Box::new(Run {
            config,
            armed,
            seen: Arc::clone(&self.seen),
        }))
    }
}

#[async_trait::async_trait]
impl Processor for Run {
    async fn process(&mut self, batch: RecordBatch) -> Result<Processed, StageError> {
        let n = self.seen.fetch_add(1, Ordering::SeqCst) + 1;
        if self.armed {
            if self.config.crash_at_batch == Some(n) {
                eprintln!("faulty: crashing at input batch {n}");
                std::process::exit(3);
            }
            if self.config.hang_at_batch == Some(n) {
                eprintln!("faulty: hanging at input batch {n}");
                std::future::pending::<()>().await;
            }
        }
        if self.config.bad_output {
            // the first column replaced by text: breaks the output schema
            let mut cols: Vec<ArrayRef> = batch.columns().to_vec();
            cols[0] = Arc::new(StringArray::from_iter_values(
                (0..batch.num_rows()).map(|i| i.to_string()),
            ));
            let mut fields: Vec<arrow_schema::Field> = batch
                .schema()
                .fields()
                .iter()
                .map(|f| f.as_ref().clone())
                .collect();
            fields[0] =
                arrow_schema::Field::new(fields[0].name(), arrow_schema::DataType::Utf8, true);
            let bad = RecordBatch::try_new(Arc::new(arrow_schema::Schema::new(fields)), cols)
                .map_err(|e| StageError::new(ErrorCode::Internal, e.to_string()))?;
            return Ok(Processed::batch(bad));
        }
        if let Some(every) = self.config.report_kept.filter(|n| *n > 0) {
            let row_errors = (0..batch.num_rows() as u64)
                .step_by(every as usize)
                .map(|row| {
                    sluice_flight::RowError::new(row, ErrorCode::Rejected, "reported, but kept")
                })
                .collect();
            let every_row = arrow_array::UInt32Array::from_iter_values(0..batch.num_rows() as u32);
            let copy = arrow_select::take::take_record_batch(&batch, &every_row)
                .map_err(|e| StageError::new(ErrorCode::Internal, e.to_string()))?;
            return Ok(Processed {
                output: Some(copy),
                row_errors,
            });
        }
        Ok(Processed::batch(batch))
    }
}

// large batches: mimalloc reuses memory where the system allocator maps and faults in fresh pages
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    serve(Faulty {
        seen: Arc::new(AtomicU64::new(0)),
        armed: std::sync::OnceLock::new(),
    })
    .await?;
    Ok(())
}
