//! Runtime errors name the component they happened in, and keep their cause.

use std::sync::Arc;

use datafusion::arrow::array::{RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use sluice::sinks::SinkConfig;
use sluice::sources::MemorySource;
use sluice::{Engine, PipelineSpec, RetryHint};

fn words(values: &[&str]) -> (Arc<Schema>, Vec<RecordBatch>) {
    let schema = Arc::new(Schema::new(vec![Field::new("w", DataType::Utf8, false)]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![Arc::new(StringArray::from(values.to_vec()))],
    )
    .unwrap();
    (schema, vec![batch])
}

#[tokio::test]
async fn a_bad_cast_in_a_sql_stage_names_the_stage() {
    let (schema, batches) = words(&["1", "2", "three"]);
    let spec = PipelineSpec::new("casts", "1")
        .with_custom_source(
            "words",
            Arc::new(MemorySource::try_new(schema, batches).unwrap()),
        )
        .with_sql_stage(
            "numbers",
            &["words"],
            "SELECT CAST(w AS INT) AS n FROM words",
        )
        .with_sql_stage("doubled", &["numbers"], "SELECT n * 2 AS n2 FROM numbers")
        .with_sink("out", SinkConfig::parquet("doubled", "memory:///casts/out"));
    let err = Engine::new().run(spec).await.unwrap_err();
    let text = err.to_string();
    assert!(text.starts_with("stage `numbers` failed:"), "{text}");
    assert!(text.contains("three"), "{text}");
    assert_eq!(err.retry_hint(), RetryHint::Never, "bad data fails again");
}

#[tokio::test]
async fn batches_that_do_not_match_a_memory_source_are_refused_naming_the_columns() {
    let (_, batches) = words(&["a"]);
    let declared = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]));
    let err = MemorySource::try_new(declared, batches)
        .unwrap_err()
        .to_string();
    assert!(err.contains("batch 0 has the columns (w Utf8)"), "{err}");
    assert!(err.contains("declares (n Int64)"), "{err}");
}
