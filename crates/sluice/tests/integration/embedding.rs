//! Pipelines built in code: a memory source, a UDF, memory sinks.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, Int64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema};
use datafusion::logical_expr::{ColumnarValue, Volatility, create_udf};
use sluice::sinks::SinkConfig;
use sluice::sources::MemorySource;
use sluice::{Engine, PipelineSpec, Result};

use crate::common::{committed_rows, query, scalar};

fn people() -> (Arc<Schema>, Vec<RecordBatch>) {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("city", DataType::Utf8, true),
    ]));
    let batches = (0..4)
        .map(|b| {
            let ids = Int64Array::from_iter_values((0..250).map(|i| b * 250 + i));
            let cities = StringArray::from_iter((0..250).map(|i| {
                if i % 10 == 0 {
                    None
                } else {
                    Some(["oslo", "rome", "lima"][i % 3])
                }
            }));
            RecordBatch::try_new(
                schema.clone(),
                vec![Arc::new(ids) as ArrayRef, Arc::new(cities)],
            )
            .unwrap()
        })
        .collect();
    (schema, batches)
}

#[tokio::test]
async fn a_pipeline_built_in_code_runs_with_a_udf_and_commits_to_memory() -> Result<()> {
    let mut engine = Engine::new();
    engine.register_udf(create_udf(
        "times_ten",
        vec![DataType::Int64],
        DataType::Int64,
        Volatility::Immutable,
        Arc::new(|args: &[ColumnarValue]| {
            let a = ColumnarValue::values_to_arrays(args)?;
            let v: Int64Array = a[0].as_primitive::<Int64Type>().unary(|x| x * 10);
            Ok(ColumnarValue::Array(Arc::new(v)))
        }),
    ));
    let (schema, batches) = people();
    let spec = PipelineSpec::new("embedded", "3.1")
        .with_custom_source("people", Arc::new(MemorySource::try_new(schema, batches)?))
        .with_sql_stage(
            "scaled",
            &["people"],
            "SELECT id, times_ten(id) AS big, city FROM people WHERE city IS NOT NULL",
        )
        .with_sql_stage(
            "by_city",
            &["scaled"],
            "SELECT city, count(*) AS n, sum(big) AS total FROM scaled GROUP BY city",
        )
        .with_sink(
            "detail",
            SinkConfig::parquet("scaled", "memory:///emb/detail"),
        )
        .with_sink(
            "summary",
            SinkConfig::parquet("by_city", "memory:///emb/summary"),
        );
    let summary = engine.run(spec).await?;
    assert_eq!(summary.epochs, 1);
    assert_eq!(summary.component("people").map(|c| c.rows_out), Some(1000));
    assert_eq!(summary.component("scaled").map(|c| c.rows_out), Some(900));
    assert_eq!(
        summary.component("detail").map(|c| (c.rows_in, c.rows_out)),
        Some((900, 900))
    );

    let detail = committed_rows(&engine, "memory:///emb/detail").await?;
    let expected: i128 = (0..1000i64)
        .filter(|i| i % 250 % 10 != 0)
        .map(|i| i as i128 * 10)
        .sum();
    assert_eq!(
        scalar(&query(detail.clone(), "SELECT sum(big) FROM t").await),
        expected
    );
    let md = detail[0].schema().metadata().clone();
    assert_eq!(
        md.get("sluice.pipeline").map(String::as_str),
        Some("embedded@3.1")
    );
    assert_eq!(md.get("sluice.schema").map(String::as_str), Some("scaled"));

    let by_city = committed_rows(&engine, "memory:///emb/summary").await?;
    let out = query(by_city, "SELECT sum(n) FROM t").await;
    assert_eq!(scalar(&out), 900);
    Ok(())
}

#[tokio::test]
async fn a_second_engine_run_finds_nothing_new() -> Result<()> {
    let engine = Engine::new();
    let (schema, batches) = people();
    let spec = || {
        PipelineSpec::new("again", "1")
            .with_custom_source(
                "people",
                Arc::new(MemorySource::try_new(schema.clone(), batches.clone()).unwrap()),
            )
            .with_sink("out", SinkConfig::parquet("people", "memory:///again/out"))
    };
    assert_eq!(engine.run(spec()).await?.epochs, 1);
    let second = engine.run(spec()).await?;
    assert_eq!(
        second.epochs, 0,
        "the commit says the memory source is done"
    );
    let rows = committed_rows(&engine, "memory:///again/out").await?;
    assert_eq!(rows.iter().map(|b| b.num_rows()).sum::<usize>(), 1000);
    assert!(rows[0].column(1).null_count() > 0);
    Ok(())
}
