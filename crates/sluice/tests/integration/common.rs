//! Helpers: reading committed output back, building specs.

use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::prelude::SessionContext;
use sluice::{Engine, Result};

/// All rows a sink at `url` committed, read through its commit log.
pub async fn committed_rows(engine: &Engine, url: &str) -> Result<Vec<RecordBatch>> {
    sluice::inspect::read_committed_rows(engine, url, &Default::default()).await
}

/// Runs `sql` over `batches` registered as table `t`.
pub async fn query(batches: Vec<RecordBatch>, sql: &str) -> Vec<RecordBatch> {
    let ctx = SessionContext::new();
    let schema = batches.first().map(|b| b.schema()).expect("some output");
    let table = datafusion::datasource::MemTable::try_new(schema, vec![batches]).unwrap();
    ctx.register_table("t", Arc::new(table)).unwrap();
    ctx.sql(sql).await.unwrap().collect().await.unwrap()
}

/// The single i64/u64 value of a one-row, one-column result, as i128.
pub fn scalar(batches: &[RecordBatch]) -> i128 {
    use datafusion::arrow::array::{Array, AsArray};
    use datafusion::arrow::datatypes::{Decimal128Type, Int64Type, UInt64Type};
    let col = batches[0].column(0);
    match col.data_type() {
        datafusion::arrow::datatypes::DataType::Int64 => {
            col.as_primitive::<Int64Type>().value(0) as i128
        }
        datafusion::arrow::datatypes::DataType::UInt64 => {
            col.as_primitive::<UInt64Type>().value(0) as i128
        }
        datafusion::arrow::datatypes::DataType::Decimal128(..) => {
            col.as_primitive::<Decimal128Type>().value(0)
        }
        other => panic!("unexpected type {other} (null: {})", col.is_null(0)),
    }
}
