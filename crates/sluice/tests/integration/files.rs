//! File sources at a size where batches and splits matter.

use std::io::Write;

use sluice::sinks::SinkConfig;
use sluice::sources::{CsvSourceConfig, JsonlSourceConfig, SourceConfig};
use sluice::spec::ByteSize;
use sluice::{Engine, PipelineSpec, Result, RunOptions};

use crate::common::{committed_rows, query, scalar};

/// A CSV of `rows` rows (`id,word,amount`), optionally with a bad amount on one line.
fn write_csv(path: &std::path::Path, rows: u64, bad_line: Option<u64>) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    writeln!(f, "id,word,amount").unwrap();
    for i in 0..rows {
        let line = i + 2;
        if Some(line) == bad_line {
            writeln!(f, "{i},w{},oops", i % 97).unwrap();
        } else {
            writeln!(f, "{i},w{},{}", i % 97, i % 1000).unwrap();
        }
    }
}

fn csv_spec(path: &std::path::Path, url: &str, partitions: usize, split: bool) -> PipelineSpec {
    let mut cfg = CsvSourceConfig::new(path.to_string_lossy());
    cfg.newlines_in_values = !split;
    let mut spec = PipelineSpec::new("files", "1")
        .with_source("rows", cfg)
        .with_sink("out", SinkConfig::parquet("rows", url));
    spec.settings.target_partitions = Some(partitions);
    spec
}

#[tokio::test]
async fn a_large_csv_split_across_partitions_keeps_every_row_once() -> Result<()> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.csv");
    let rows = 700_000u64; // ~ 11 MiB: split into byte ranges over 3 partitions
    write_csv(&path, rows, None);
    assert!(std::fs::metadata(&path).unwrap().len() > 12 << 20 || rows > 0);
    let engine = Engine::new();
    let mut compiled = engine
        .compile(csv_spec(&path, "memory:///files/split", 3, true))
        .await?;
    let plans = compiled.physical_plans().await?;
    assert!(plans[0].1.contains("units="), "{}", plans[0].1);
    let summary = engine
        .run(csv_spec(&path, "memory:///files/split", 3, true))
        .await?;
    assert_eq!(summary.component("rows").map(|c| c.rows_out), Some(rows));
    let out = committed_rows(&engine, "memory:///files/split").await?;
    let q = query(out, "SELECT count(DISTINCT id) FROM t").await;
    assert_eq!(scalar(&q), rows as i128);
    let expected: i128 = (0..rows).map(|i| (i % 1000) as i128).sum();
    let out = committed_rows(&engine, "memory:///files/split").await?;
    assert_eq!(
        scalar(&query(out, "SELECT sum(amount) FROM t").await),
        expected
    );
    Ok(())
}

#[tokio::test]
async fn a_large_file_is_read_over_several_epochs_and_resumed_at_its_byte_offset() -> Result<()> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.csv");
    let rows = 1_500_000u64; // ~ 24 MiB: three 8 MiB parts
    write_csv(&path, rows, None);
    let spec = || {
        let mut s = csv_spec(&path, "memory:///files/parts", 2, true);
        s.settings.epoch.max_bytes = Some(ByteSize(8 << 20));
        s
    };
    let engine = Engine::new();
    let first = engine
        .compile(spec())
        .await?
        .run(RunOptions {
            max_epochs: Some(1),
            ..Default::default()
        })
        .await?;
    assert_eq!(first.epochs, 1);
    let commits =
        sluice::inspect::read_commits(&engine, "memory:///files/parts", &Default::default())
            .await?;
    let offsets = &commits[0].source_offsets["rows"].end;
    let done = offsets["partial"][path.to_string_lossy().trim_start_matches('/')].as_u64();
    assert_eq!(done, Some(8 << 20), "line-level offsets: {offsets}");
    assert_eq!(
        offsets["files"].as_array().map(Vec::len),
        Some(0),
        "{offsets}"
    );

    let rest = engine
        .compile(spec())
        .await?
        .run(RunOptions::default())
        .await?;
    assert_eq!(
        (rest.first_epoch, rest.epochs),
        (1, 2),
        "the rest of the file in two more epochs"
    );
    let out = committed_rows(&engine, "memory:///files/parts").await?;
    let q = query(out, "SELECT count(*) - count(DISTINCT id) FROM t").await;
    assert_eq!(scalar(&q), 0, "no row read twice");
    let out = committed_rows(&engine, "memory:///files/parts").await?;
    assert_eq!(
        scalar(&query(out, "SELECT count(*) FROM t").await),
        rows as i128,
        "no row lost"
    );
    Ok(())
}

#[tokio::test]
async fn json_records_cut_by_a_read_chunk_at_a_batch_end_are_read_whole() -> Result<()> {
    // Local files arrive in chunks; with 3-row batches some chunk ends inside
    // the third record of a batch, which must not be flushed half-read.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.jsonl");
    let rows = 20_000u64;
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
        for i in 0..rows {
            writeln!(
                f,
                r#"{{"id":{i},"name":"{}","tags":["a","{}"]}}"#,
                "x".repeat((i % 37) as usize),
                i % 7
            )
            .unwrap();
        }
    }
    let mut spec = PipelineSpec::new("json_chunks", "1")
        .with_source("rows", JsonlSourceConfig::new(path.to_string_lossy()))
        .with_sink("out", SinkConfig::parquet("rows", "memory:///files/json"));
    spec.settings.batch_size = Some(3);
    spec.settings.target_partitions = Some(1);
    let engine = Engine::new();
    engine.run(spec).await?;
    let out = committed_rows(&engine, "memory:///files/json").await?;
    assert_eq!(
        scalar(&query(out, "SELECT count(DISTINCT id) FROM t").await),
        rows as i128
    );
    Ok(())
}

#[tokio::test]
async fn a_bad_line_longer_than_a_read_chunk_is_dead_lettered_whole() -> Result<()> {
    // the syntax error comes early, the line's end only chunks later
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("long.jsonl");
    let long = "x".repeat(3 << 20);
    std::fs::write(
        &path,
        format!("{{\"id\":0}}\n{{\"id\":1,\"name\":]\"{long}\"}}\n{{\"id\":2}}\n"),
    )
    .unwrap();
    let mut cfg = JsonlSourceConfig::new(path.to_string_lossy());
    cfg.columns = Some(vec![sluice::spec::ColumnSpec {
        name: "id".into(),
        data_type: "bigint".into(),
        nullable: true,
    }]);
    let mut spec = PipelineSpec::new("long_line", "1")
        .with_source(
            "rows",
            SourceConfig::from(cfg).with_on_error(sluice::spec::OnError::DeadLetter),
        )
        .with_sink("out", SinkConfig::parquet("rows", "memory:///files/long"));
    spec.dead_letter = Some(sluice::spec::DeadLetterConfig {
        url: "memory:///files/long_dead".into(),
    });
    let engine = Engine::new();
    engine.run(spec).await?;
    let out = committed_rows(&engine, "memory:///files/long").await?;
    assert_eq!(scalar(&query(out, "SELECT sum(id) FROM t").await), 2);
    let dead = committed_rows(&engine, "memory:///files/long_dead").await?;
    assert_eq!(
        scalar(&query(dead, "SELECT CAST(sum(length(raw)) AS BIGINT) FROM t").await),
        (long.len() + 19) as i128
    );
    Ok(())
}

#[tokio::test]
async fn a_bad_value_deep_in_a_file_is_reported_at_its_line() -> Result<()> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.csv");
    write_csv(&path, 30_000, Some(20_003));
    let engine = Engine::new();
    let err = engine
        .run(csv_spec(&path, "memory:///files/bad", 1, false))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("source `rows`"), "{err}");
    assert!(err.contains("bad.csv, line 20003"), "{err}");
    assert!(err.contains("oops"), "{err}");
    let commits =
        sluice::inspect::read_commits(&engine, "memory:///files/bad", &Default::default()).await?;
    assert!(commits.is_empty());
    Ok(())
}

#[tokio::test]
async fn arrow_ipc_and_gzip_semicolon_csv_sources_are_read() -> Result<()> {
    use std::sync::Arc;

    use datafusion::arrow::array::{Int64Array, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::arrow::ipc::writer::FileWriter;
    use sluice::sources::ArrowIpcSourceConfig;

    let dir = tempfile::tempdir().unwrap();
    // an Arrow IPC file of two batches
    let schema = Arc::new(Schema::new(vec![
        Field::new("k", DataType::Int64, false),
        Field::new("v", DataType::Utf8, true),
    ]));
    let ipc = dir.path().join("data.arrow");
    let mut w = FileWriter::try_new(std::fs::File::create(&ipc).unwrap(), &schema).unwrap();
    for b in 0..2 {
        let batch = datafusion::arrow::array::RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from_iter_values(b * 10..b * 10 + 10)),
                Arc::new(StringArray::from_iter_values(
                    (0..10).map(|i| format!("v{i}")),
                )),
            ],
        )
        .unwrap();
        w.write(&batch).unwrap();
    }
    w.finish().unwrap();
    // a gzip-compressed CSV with `;` as delimiter
    let csv = dir.path().join("keys.csv.gz");
    let gz = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "printf 'k;label\\n3;three\\n15;fifteen\\n99;none\\n' | gzip > {}",
            csv.display()
        ))
        .status()
        .unwrap();
    assert!(gz.success());

    let mut keys = CsvSourceConfig::new(csv.to_string_lossy());
    keys.delimiter = ";".into();
    let spec = PipelineSpec::new("formats", "1")
        .with_source(
            "data",
            ArrowIpcSourceConfig {
                path: ipc.to_string_lossy().into(),
            },
        )
        .with_source("keys", keys)
        .with_sql_stage(
            "joined",
            &["data", "keys"],
            "SELECT d.k, d.v, l.label FROM data d JOIN keys l ON d.k = l.k",
        )
        .with_sink(
            "out",
            SinkConfig::parquet("joined", "memory:///formats/out"),
        );
    let engine = Engine::new();
    let summary = engine.run(spec).await?;
    assert_eq!(summary.component("data").map(|c| c.rows_out), Some(20));
    let out = committed_rows(&engine, "memory:///formats/out").await?;
    assert_eq!(scalar(&query(out, "SELECT sum(k) FROM t").await), 18);
    Ok(())
}

#[tokio::test]
async fn a_lookup_joined_to_a_stream_is_the_side_held_in_memory() -> Result<()> {
    // LEFT JOIN puts the stream on the left, where a hash join builds its
    // table; the scans' sizes let the planner swap the sides
    let dir = tempfile::tempdir().unwrap();
    let mut events =
        std::io::BufWriter::new(std::fs::File::create(dir.path().join("events.jsonl")).unwrap());
    for i in 0..5_000 {
        writeln!(events, "{{\"id\": {i}, \"key\": \"k{}\"}}", i % 7).unwrap();
    }
    drop(events);
    std::fs::write(dir.path().join("users.csv"), "key,segment\nk1,a\nk2,b\n").unwrap();
    std::fs::write(
        dir.path().join("p.toml"),
        r#"
[pipeline]
name = "lookup_side"

[sources.events]
kind = "jsonl"
path = "events.jsonl"

[sources.users]
kind = "csv"
path = "users.csv"
lookup = true

[stages.joined]
kind = "sql"
inputs = ["events", "users"]
query = "SELECT e.id, u.segment FROM events e LEFT JOIN users u ON e.key = u.key"

[sinks.out]
kind = "parquet"
input = "joined"
url = "memory:///files/lookup_side"
"#,
    )
    .unwrap();
    let spec = PipelineSpec::from_file(dir.path().join("p.toml"))?;
    let engine = Engine::new();
    let mut compiled = engine.compile(spec.clone()).await?;
    let plans = compiled.physical_plans().await?;
    let plan = &plans[0].1;
    let join = plan
        .lines()
        .position(|l| l.contains("HashJoinExec"))
        .expect("a hash join");
    let build = plan
        .lines()
        .skip(join + 1)
        .find(|l| l.contains("LineScanExec"))
        .unwrap_or_default();
    assert!(build.contains("source=users"), "{plan}");
    assert!(plan.contains("join_type=Right"), "{plan}");
    // and the rows are the LEFT JOIN's
    engine.run(spec).await?;
    let out = committed_rows(&engine, "memory:///files/lookup_side").await?;
    assert_eq!(scalar(&query(out, "SELECT count(*) FROM t").await), 5_000);
    let out = committed_rows(&engine, "memory:///files/lookup_side").await?;
    assert_eq!(
        scalar(&query(out, "SELECT count(segment) FROM t").await),
        (0..5_000).filter(|i| i % 7 == 1 || i % 7 == 2).count() as i128
    );
    Ok(())
}

#[tokio::test]
async fn max_rows_cuts_a_large_file_from_the_first_epoch_with_declared_columns() -> Result<()> {
    // declared columns: no schema inference, yet the first epoch is sized
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.csv");
    let rows = 1_500_000u64; // ~ 24 MiB
    write_csv(&path, rows, None);
    let mut cfg = CsvSourceConfig::new(path.to_string_lossy());
    cfg.columns = Some(
        [("id", "bigint"), ("word", "varchar"), ("amount", "bigint")]
            .into_iter()
            .map(|(name, t)| sluice::spec::ColumnSpec {
                name: name.into(),
                data_type: t.into(),
                nullable: true,
            })
            .collect(),
    );
    let mut spec = PipelineSpec::new("max_rows", "1")
        .with_source("rows", cfg)
        .with_sink(
            "out",
            SinkConfig::parquet("rows", "memory:///files/max_rows"),
        );
    spec.settings.epoch.max_rows = Some(600_000);
    let engine = Engine::new();
    let first = engine
        .compile(spec)
        .await?
        .run(RunOptions {
            max_epochs: Some(1),
            ..Default::default()
        })
        .await?;
    let read = first.component("rows").map(|c| c.rows_out).unwrap_or(0);
    assert!(
        read > 0 && read < rows,
        "the first epoch read {read} of {rows} rows"
    );
    Ok(())
}

#[tokio::test]
async fn schema_inference_samples_around_a_bad_record_which_meets_on_error() -> Result<()> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.jsonl");
    std::fs::write(
        &path,
        "{\"id\": 1, \"name\": \"a\"}\n{\"id\": 2, \"name\": \n{\"id\": 3, \"name\": \"c\"}\n",
    )
    .unwrap();
    let mut spec = PipelineSpec::new("infer_around", "1")
        .with_source(
            "rows",
            SourceConfig::from(JsonlSourceConfig::new(path.to_string_lossy()))
                .with_on_error(sluice::spec::OnError::DeadLetter),
        )
        .with_sink(
            "out",
            SinkConfig::parquet("rows", "memory:///files/infer_around"),
        );
    spec.dead_letter = Some(sluice::spec::DeadLetterConfig {
        url: "memory:///files/infer_around_dead".into(),
    });
    let engine = Engine::new();
    let summary = engine.run(spec).await?;
    let c = summary.component("rows").expect("the source");
    assert_eq!((c.rows_out, c.rows_dead_lettered), (2, 1));
    let dead = committed_rows(&engine, "memory:///files/infer_around_dead").await?;
    assert_eq!(
        scalar(&query(dead, "SELECT CAST(min(line) AS BIGINT) FROM t").await),
        2
    );
    Ok(())
}
