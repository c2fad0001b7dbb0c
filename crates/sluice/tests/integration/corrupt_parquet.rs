//! Corrupt Parquet files never panic the engine: mutations of a valid file
//! (random bytes overwritten, the file cut short, the footer's metadata
//! length or the metadata itself garbled) go through schema inference and a
//! run. Each ends in rows or an error naming the source and the file.

use std::sync::Arc;

use datafusion::arrow::array::{Int64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::file::properties::WriterProperties;
use proptest::prelude::*;
use sluice::sinks::SinkConfig;
use sluice::sources::ParquetSourceConfig;
use sluice::{Engine, PipelineSpec};

/// A valid file of three row groups.
fn valid_file() -> Vec<u8> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("name", DataType::Utf8, true),
    ]));
    let ids: Vec<i64> = (0..300).collect();
    let names: Vec<Option<String>> = ids
        .iter()
        .map(|i| (i % 7 != 0).then(|| format!("name-{i}")))
        .collect();
    let batch = RecordBatch::try_new(
        Arc::clone(&schema),
        vec![
            Arc::new(Int64Array::from(ids)),
            Arc::new(StringArray::from(names)),
        ],
    )
    .unwrap();
    let props = WriterProperties::builder()
        .set_max_row_group_row_count(Some(100))
        .build();
    let mut out = Vec::new();
    let mut w = ArrowWriter::try_new(&mut out, schema, Some(props)).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    out
}

#[derive(Debug, Clone)]
enum Mutation {
    /// Overwrite bytes anywhere.
    Bytes(Vec<(prop::sample::Index, u8)>),
    /// Keep only the first part.
    Cut(prop::sample::Index),
    /// Replace the footer's metadata length.
    FooterLength(u32),
    /// Overwrite bytes of the metadata (the footer's thrift).
    Metadata(Vec<(prop::sample::Index, u8)>),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let bytes = || prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8);
    prop_oneof![
        bytes().prop_map(Mutation::Bytes),
        any::<prop::sample::Index>().prop_map(Mutation::Cut),
        any::<u32>().prop_map(Mutation::FooterLength),
        bytes().prop_map(Mutation::Metadata),
    ]
}

fn mutate(mut file: Vec<u8>, m: &Mutation) -> Vec<u8> {
    let n = file.len();
    let metadata = u32::from_le_bytes(file[n - 8..n - 4].try_into().unwrap()) as usize;
    match m {
        Mutation::Bytes(at) => at.iter().for_each(|(i, b)| file[i.index(n)] = *b),
        Mutation::Cut(at) => file.truncate(at.index(n)),
        Mutation::FooterLength(len) => file[n - 8..n - 4].copy_from_slice(&len.to_le_bytes()),
        Mutation::Metadata(at) => {
            let start = n - 8 - metadata;
            at.iter()
                .for_each(|(i, b)| file[start + i.index(metadata)] = *b)
        }
    }
    file
}

/// Runs a pipeline reading `bytes` as `broken.parquet`.
fn run(bytes: &[u8]) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.parquet");
    std::fs::write(&path, bytes).unwrap();
    let url = format!(
        "memory:///corrupt/{}",
        dir.path().file_name().unwrap().to_string_lossy()
    );
    let spec = PipelineSpec::new("corrupt", "1")
        .with_source(
            "t",
            ParquetSourceConfig {
                path: path.to_string_lossy().into(),
                schema: None,
            },
        )
        .with_sink("out", SinkConfig::parquet("t", &url));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(Engine::new().run(spec))
        .map(drop)
        .map_err(|e| e.to_string())
}

#[test]
fn the_valid_file_runs() {
    run(&valid_file()).unwrap();
}

#[test]
fn a_footer_longer_than_its_file_is_refused_naming_the_source_and_the_file() {
    let file = mutate(valid_file(), &Mutation::FooterLength(u32::MAX));
    let err = run(&file).unwrap_err();
    assert!(err.contains("source `t`"), "{err}");
    assert!(err.contains("broken.parquet"), "{err}");
    assert!(err.contains("more than the file's"), "{err}");
}

proptest! {
    // ~2 ms a case in a debug build: 25,000 cases take under a minute
    #![proptest_config(ProptestConfig { cases: 25_000, ..ProptestConfig::default() })]

    #[test]
    fn no_mutation_of_a_parquet_file_panics(m in mutation()) {
        let file = mutate(valid_file(), &m);
        // rows or an error naming the source and the file, never a panic
        // (proptest reports a panic as a failure)
        if let Err(e) = run(&file) {
            prop_assert!(e.contains("source `t`"), "{e}");
            prop_assert!(e.contains("broken.parquet"), "{e}");
            prop_assert!(!e.contains("panicked"), "{e}");
        }
    }
}
