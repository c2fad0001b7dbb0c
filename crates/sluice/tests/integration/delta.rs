//! The delta sink and source through the library: one Delta version per
//! sluice commit with its `txn`, nothing written twice on a rerun or a
//! replay, schema evolution and its refusals, partition columns, and the
//! values Delta cannot hold.

use std::path::Path;

use sluice::{Engine, PipelineSpec, Result};

use crate::common::{committed_rows, query, scalar};

fn spec(dir: &Path, text: &str) -> PipelineSpec {
    PipelineSpec::from_toml(text, &dir.join("pipeline.toml"), dir).unwrap()
}

/// A generator of `rows` events into a Delta table at `table`, cut into
/// epochs of 100 rows, each its own commit.
fn generated(dir: &Path, rows: u64, query: &str, sink_keys: &str) -> PipelineSpec {
    generated_at(dir, "table", rows, query, sink_keys)
}

/// [`generated`], into the table at `url`.
fn generated_at(dir: &Path, url: &str, rows: u64, query: &str, sink_keys: &str) -> PipelineSpec {
    spec(
        dir,
        &format!(
            r#"
[pipeline]
name = "gen"
[settings]
commit_interval = "0s"
[settings.epoch]
max_rows = 100
[sources.events]
kind = "generator"
seed = 3
total_rows = {rows}
keys = 7
[stages.picked]
kind = "sql"
inputs = ["events"]
query = "{query}"
[sinks.table]
kind = "delta"
input = "picked"
url = "{url}"
{sink_keys}
"#
        ),
    )
}

/// Every row of the table, read by a sluice `delta` source into memory.
async fn table_rows(engine: &Engine, dir: &Path, sql: &str) -> Result<i128> {
    rows_at(engine, dir, "table", sql).await
}

/// [`table_rows`] of the table at `url`.
async fn rows_at(engine: &Engine, dir: &Path, url: &str, sql: &str) -> Result<i128> {
    let copy = spec(
        dir,
        &format!(
            r#"
[pipeline]
name = "reader"
[sources.t]
kind = "delta"
url = "{url}"
[sinks.copy]
kind = "parquet"
input = "t"
url = "memory:///copy"
"#
        ),
    );
    engine.compile(copy.clone()).await?.reset_sinks().await?;
    engine.run(copy).await?;
    let rows = committed_rows(engine, "memory:///copy").await?;
    Ok(scalar(&query(rows, sql).await))
}

fn url(dir: &Path) -> String {
    dir.join("table").display().to_string()
}

#[tokio::test]
async fn every_commit_is_one_delta_version_and_a_rerun_writes_nothing() -> Result<()> {
    let tmp = tempfile::tempdir().unwrap();
    let engine = Engine::new();
    let q = "SELECT event_id, event_time, key, value, tags, device FROM events";
    let summary = engine.run(generated(tmp.path(), 1000, q, "")).await?;
    assert_eq!(summary.epochs, 10);
    let history =
        sluice::delta::history(&engine, &url(tmp.path()), &Default::default(), None).await?;
    let ops: Vec<&str> = history.iter().map(|v| v.operation.as_str()).collect();
    assert_eq!(ops.len(), 10, "{ops:?}");
    assert_eq!(ops[0], "CREATE TABLE");
    assert!(ops[1..].iter().all(|o| *o == "STREAMING UPDATE"), "{ops:?}");
    let epochs: Vec<u64> = history
        .iter()
        .map(|v| v.commit.as_ref().expect("a sluice commit").epoch)
        .collect();
    assert_eq!(epochs, (0..10).collect::<Vec<_>>());

    let again = engine.run(generated(tmp.path(), 1000, q, "")).await?;
    assert_eq!(again.epochs, 0, "the table's txn says every epoch is in");
    let after =
        sluice::delta::history(&engine, &url(tmp.path()), &Default::default(), None).await?;
    assert_eq!(after.len(), 10);

    assert_eq!(
        table_rows(
            &engine,
            tmp.path(),
            "SELECT count(DISTINCT event_id) FROM t"
        )
        .await?,
        1000
    );
    assert_eq!(
        table_rows(&engine, tmp.path(), "SELECT count(*) FROM t").await?,
        1000
    );
    Ok(())
}

#[tokio::test]
async fn the_lineage_carries_on_through_a_delta_source() -> Result<()> {
    let tmp = tempfile::tempdir().unwrap();
    let engine = Engine::new();
    engine
        .run(generated(
            tmp.path(),
            200,
            "SELECT event_id, key FROM events",
            "",
        ))
        .await?;
    table_rows(&engine, tmp.path(), "SELECT count(*) FROM t").await?;
    let copy = committed_rows(&engine, "memory:///copy").await?;
    let lineage = copy[0]
        .schema()
        .metadata()
        .get("sluice.lineage")
        .cloned()
        .unwrap_or_default();
    for stage in ["events", "picked", "table", "t", "copy"] {
        assert!(
            lineage.contains(&format!("\"stage\":\"{stage}\"")),
            "{stage} in {lineage}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn a_nullable_column_added_evolves_the_table_and_a_breaking_change_is_refused() -> Result<()>
{
    let tmp = tempfile::tempdir().unwrap();
    let engine = Engine::new();
    engine
        .run(generated(
            tmp.path(),
            200,
            "SELECT event_id, key FROM events",
            "",
        ))
        .await?;
    // a required column new to the table: its older rows have none
    let e = engine
        .run(generated(
            tmp.path(),
            400,
            "SELECT event_id, key, value FROM events",
            "",
        ))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("`value`: required (not null) but absent from the data"),
        "{e}"
    );
    // 400 rows now: the first 200 are committed, the next 200 read `value`
    // too, as a nullable column
    engine
        .run(generated(
            tmp.path(),
            400,
            "SELECT event_id, key, CASE WHEN event_id >= 0 THEN value END AS value FROM events",
            "",
        ))
        .await?;
    assert_eq!(
        table_rows(
            &engine,
            tmp.path(),
            "SELECT count(*) FROM t WHERE value IS NULL"
        )
        .await?,
        200
    );
    assert_eq!(
        table_rows(&engine, tmp.path(), "SELECT count(value) FROM t").await?,
        200
    );
    // `key` becomes a number: readers of the table would break
    let e = engine
        .run(generated(
            tmp.path(),
            600,
            "SELECT event_id, CAST(length(key) AS BIGINT) AS key, CASE WHEN event_id >= 0 THEN value END AS value FROM events",
            "",
        ))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("`key`"), "{e}");
    assert!(e.contains("sluice schema check"), "{e}");
    Ok(())
}

#[tokio::test]
async fn partition_by_makes_delta_partition_columns_with_nulls_as_null() -> Result<()> {
    let tmp = tempfile::tempdir().unwrap();
    let engine = Engine::new();
    let q = "SELECT event_id, category, date_trunc('hour', event_time) AS hour FROM events";
    engine
        .run(generated(
            tmp.path(),
            500,
            q,
            r#"partition_by = ["category", "hour"]"#,
        ))
        .await?;
    assert_eq!(
        table_rows(
            &engine,
            tmp.path(),
            "SELECT count(*) FROM t WHERE category IS NULL"
        )
        .await?,
        // the generator's null categories, as a plain parquet copy counts them
        {
            let copy = spec(
                tmp.path(),
                r#"
[pipeline]
name = "plain"
[sources.events]
kind = "generator"
seed = 3
total_rows = 500
keys = 7
[sinks.plain]
kind = "parquet"
input = "events"
url = "memory:///plain"
"#,
            );
            engine.run(copy).await?;
            let rows = committed_rows(&engine, "memory:///plain").await?;
            scalar(&query(rows, "SELECT count(*) FROM t WHERE category IS NULL").await)
        }
    );
    assert_eq!(
        table_rows(
            &engine,
            tmp.path(),
            "SELECT count(DISTINCT event_id) FROM t"
        )
        .await?,
        500
    );
    let hours = table_rows(
        &engine,
        tmp.path(),
        "SELECT count(*) FROM t WHERE hour = date_trunc('hour', hour)",
    )
    .await?;
    assert_eq!(hours, 500, "timestamp partition values read back exactly");
    Ok(())
}

#[tokio::test]
async fn a_nanosecond_a_delta_table_cannot_hold_fails_the_run_naming_the_column() {
    let tmp = tempfile::tempdir().unwrap();
    let engine = Engine::new();
    let q = "SELECT event_id, arrow_cast(event_time, 'Timestamp(Nanosecond, Some(\\\"UTC\\\"))') + INTERVAL '1 nanosecond' AS at FROM events";
    let e = engine
        .run(generated(tmp.path(), 100, q, ""))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("column `at`"), "{e}");
    assert!(e.contains("cannot be held"), "{e}");
}

#[tokio::test]
async fn nanoseconds_of_whole_microseconds_are_written_as_delta_timestamps() -> Result<()> {
    let tmp = tempfile::tempdir().unwrap();
    let engine = Engine::new();
    let q = "SELECT event_id, event_time, arrow_cast(event_time, 'Timestamp(Nanosecond, Some(\\\"Europe/Berlin\\\"))') AS at FROM events";
    engine.run(generated(tmp.path(), 100, q, "")).await?;
    // the same instants, now in Delta's UTC microseconds
    let differ = table_rows(
        &engine,
        tmp.path(),
        "SELECT count(*) FROM t WHERE arrow_cast(at, 'Int64') <> arrow_cast(event_time, 'Int64') \
         OR arrow_typeof(at) <> arrow_typeof(event_time)",
    )
    .await?;
    assert_eq!(differ, 0);
    assert_eq!(
        table_rows(&engine, tmp.path(), "SELECT count(at) FROM t").await?,
        100
    );
    Ok(())
}

#[tokio::test]
async fn a_reset_deletes_the_table_and_the_next_run_writes_every_row_once() -> Result<()> {
    let tmp = tempfile::tempdir().unwrap();
    let engine = Engine::new();
    let q = "SELECT event_id, key FROM events";
    engine.run(generated(tmp.path(), 300, q, "")).await?;
    let deleted = engine
        .compile(generated(tmp.path(), 300, q, ""))
        .await?
        .reset_sinks()
        .await?;
    assert!(deleted >= 6, "3 data files and 3 log versions: {deleted}");
    let log_entries = std::fs::read_dir(tmp.path().join("table/_delta_log"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(log_entries, 0, "the log is gone");
    let again = engine.run(generated(tmp.path(), 300, q, "")).await?;
    assert_eq!(again.epochs, 3);
    assert_eq!(
        table_rows(
            &engine,
            tmp.path(),
            "SELECT count(DISTINCT event_id) FROM t"
        )
        .await?,
        300
    );
    assert_eq!(
        table_rows(&engine, tmp.path(), "SELECT count(*) FROM t").await?,
        300
    );
    Ok(())
}

#[tokio::test]
async fn an_in_memory_table_is_written_and_read_through_the_same_store() -> Result<()> {
    let tmp = tempfile::tempdir().unwrap();
    let engine = Engine::new();
    let q = "SELECT event_id, key FROM events";
    engine
        .run(generated_at(tmp.path(), "memory:///tables/t", 250, q, ""))
        .await?;
    assert_eq!(
        rows_at(
            &engine,
            tmp.path(),
            "memory:///tables/t",
            "SELECT count(DISTINCT event_id) FROM t"
        )
        .await?,
        250
    );
    assert!(!tmp.path().join("table").exists(), "nothing on disk");
    Ok(())
}
