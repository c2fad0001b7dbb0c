//! Event-time windows computed across epochs: the answer over the whole
//! input, whatever the epoch size, and exactly once through restarts.

use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::array::{
    ArrayRef, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use datafusion::arrow::util::display::array_value_to_string;
use datafusion::arrow::util::pretty::pretty_format_batches;
use datafusion::prelude::SessionContext;
use sluice::sinks::SinkConfig;
use sluice::sources::{CustomSource, MemorySource, SourceConfig, SourceKind};
use sluice::state::{EventTimeConfig, Late};
use sluice::{Engine, PipelineSpec, Result, RunOptions};

use crate::common::committed_rows;

/// An event: (µs since the epoch, key, value).
pub(crate) type Event = (i64, &'static str, i64);

pub(crate) fn schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
        Field::new("k", DataType::Utf8, false),
        Field::new("v", DataType::Int64, false),
    ]))
}

pub(crate) fn batch(events: &[Event]) -> RecordBatch {
    RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(
                TimestampMicrosecondArray::from_iter_values(events.iter().map(|e| e.0))
                    .with_timezone("UTC"),
            ) as ArrayRef,
            Arc::new(StringArray::from_iter_values(events.iter().map(|e| e.1))),
            Arc::new(Int64Array::from_iter_values(events.iter().map(|e| e.2))),
        ],
    )
    .unwrap()
}

pub(crate) const SEC: i64 = 1_000_000;

/// An event-time source over `events` (batches of 7) with a 2 s watermark.
pub(crate) fn source(events: &[Event], late: Late) -> SourceConfig {
    let batches: Vec<RecordBatch> = events.chunks(7).map(batch).collect();
    let source = MemorySource::try_new(schema(), batches).unwrap();
    SourceConfig::from(SourceKind::Custom(CustomSource(Arc::new(source)))).with_event_time(
        EventTimeConfig {
            column: "ts".into(),
            bound: Duration::from_secs(2),
            idle_timeout: None,
            late,
        },
    )
}

/// A pipeline of one stage, `sql` over `sources`, into memory at `url`.
fn pipeline(
    sources: &[(&str, &[Event])],
    sql: &str,
    max_rows: Option<u64>,
    url: &str,
    late: Late,
) -> PipelineSpec {
    let mut spec = PipelineSpec::new("windows", "1.0");
    for (name, events) in sources {
        spec = spec.with_source(*name, source(events, late));
    }
    let inputs: Vec<&str> = sources.iter().map(|(name, _)| *name).collect();
    let mut spec = spec
        .with_sql_stage("windowed", &inputs, sql)
        .with_sink("out", SinkConfig::parquet("windowed", url));
    spec.settings.epoch.max_rows = max_rows;
    spec
}

/// The tumbling pipeline over `events`.
fn windowed(events: &[Event], max_rows: Option<u64>, url: &str, late: Late) -> PipelineSpec {
    pipeline(&[("events", events)], TUMBLING, max_rows, url, late)
}

/// Runs `sql` over `sources` at several epoch sizes and checks every run
/// commits the batch answer, sorted by `columns`.
async fn equals_the_batch_answer(
    test: &str,
    sources: &[(&str, &[Event])],
    sql: &str,
    columns: &str,
) -> Result<()> {
    let want = sorted(&batch_answer_of(sql, sources).await, columns).await;
    for max_rows in [None, Some(1), Some(5), Some(17), Some(64)] {
        let url = format!("memory:///windows/{test}/{max_rows:?}");
        let mut engine = Engine::new();
        engine.register_udaf(sum_of_squares());
        let summary = engine
            .run(pipeline(sources, sql, max_rows, &url, Late::Drop))
            .await?;
        let got = committed_rows(&engine, &url).await?;
        assert_eq!(
            sorted(&got, columns).await,
            want,
            "{test}: max_rows {max_rows:?} ({} epochs)",
            summary.epochs
        );
    }
    Ok(())
}

/// The rows of `batches`, sorted, as text.
pub(crate) async fn sorted(batches: &[RecordBatch], columns: &str) -> String {
    let ctx = SessionContext::new();
    let schema = batches.first().map(|b| b.schema()).unwrap();
    let table = datafusion::datasource::MemTable::try_new(schema, vec![batches.to_vec()]).unwrap();
    ctx.register_table("t", Arc::new(table)).unwrap();
    let sql = format!("SELECT {columns} FROM t ORDER BY {columns}");
    let out = ctx.sql(&sql).await.unwrap().collect().await.unwrap();
    pretty_format_batches(&out).unwrap().to_string()
}

pub(crate) const TUMBLING: &str = "SELECT date_bin(INTERVAL '10 seconds', ts) AS w, k, count(*) AS n, sum(v) AS total \
     FROM events GROUP BY date_bin(INTERVAL '10 seconds', ts), k";

/// `sql` in one batch over all of each table's events, as DataFusion
/// answers it without sluice.
pub(crate) async fn batch_answer_of(sql: &str, tables: &[(&str, &[Event])]) -> Vec<RecordBatch> {
    let ctx = SessionContext::new();
    ctx.register_udf(hop_udf());
    ctx.register_udaf(sum_of_squares());
    for (name, events) in tables {
        let table =
            datafusion::datasource::MemTable::try_new(schema(), vec![vec![batch(events)]]).unwrap();
        ctx.register_table(*name, Arc::new(table)).unwrap();
    }
    ctx.sql(sql).await.unwrap().collect().await.unwrap()
}

/// The tumbling query over every event, in one batch.
async fn batch_answer(events: &[Event]) -> Vec<RecordBatch> {
    batch_answer_of(TUMBLING, &[("events", events)]).await
}

/// sluice's `hop`, taken from a compiled pipeline's session so the batch
/// answer uses the same function.
fn hop_udf() -> datafusion::logical_expr::ScalarUDF {
    sluice::functions::hop()
}

pub(crate) fn events() -> Vec<Event> {
    // out of order by up to 2 s; keys a and b; 60 s of events
    (0..120)
        .map(|i| {
            let jitter = [0, -1_500_000, 700_000, -300_000][i % 4];
            (
                i as i64 * SEC / 2 + jitter + SEC,
                if i % 3 == 0 { "a" } else { "b" },
                i as i64,
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn tumbling_windows_equal_the_batch_answer_for_every_epoch_size() -> Result<()> {
    let events = events();
    equals_the_batch_answer("tumble", &[("events", &events)], TUMBLING, "w, k, n, total").await
}

/// A user's aggregate, registered through the engine: the sum of the
/// squares, kept across epochs by its own `state` and `merge_batch`.
fn sum_of_squares() -> datafusion::logical_expr::AggregateUDF {
    use datafusion::arrow::array::AsArray;
    use datafusion::arrow::datatypes::Int64Type;
    use datafusion::common::ScalarValue;
    use datafusion::logical_expr::{Accumulator, Volatility, create_udaf};

    #[derive(Debug, Default)]
    struct SumOfSquares(i64);
    impl Accumulator for SumOfSquares {
        fn update_batch(&mut self, values: &[ArrayRef]) -> datafusion::common::Result<()> {
            for x in values[0].as_primitive::<Int64Type>().iter().flatten() {
                self.0 += x * x;
            }
            Ok(())
        }
        fn merge_batch(&mut self, states: &[ArrayRef]) -> datafusion::common::Result<()> {
            for x in states[0].as_primitive::<Int64Type>().iter().flatten() {
                self.0 += x;
            }
            Ok(())
        }
        fn state(&mut self) -> datafusion::common::Result<Vec<ScalarValue>> {
            Ok(vec![ScalarValue::Int64(Some(self.0))])
        }
        fn evaluate(&mut self) -> datafusion::common::Result<ScalarValue> {
            Ok(ScalarValue::Int64(Some(self.0)))
        }
        fn size(&self) -> usize {
            std::mem::size_of_val(self)
        }
    }
    create_udaf(
        "sum_of_squares",
        vec![DataType::Int64],
        Arc::new(DataType::Int64),
        Volatility::Immutable,
        Arc::new(|_| Ok(Box::new(SumOfSquares::default()))),
        Arc::new(vec![DataType::Int64]),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn any_aggregate_and_a_registered_udaf_keep_their_state_across_epochs() -> Result<()> {
    // accumulators whose states are lists (median, DISTINCT), sketches
    // (approx_distinct), pairs (avg) and a user's own
    let events = events();
    let sql = "SELECT date_bin(INTERVAL '10 seconds', ts) AS w, k, median(v) AS med, \
               approx_distinct(v) AS distinct_v, count(DISTINCT v % 3) AS classes, \
               sum_of_squares(v) AS squares, avg(v) AS mean \
               FROM events GROUP BY date_bin(INTERVAL '10 seconds', ts), k";
    let columns = "w, k, med, distinct_v, classes, squares, mean";
    equals_the_batch_answer("aggregates", &[("events", &events)], sql, columns).await
}

#[tokio::test(flavor = "multi_thread")]
async fn hopping_windows_equal_the_batch_answer_for_every_epoch_size() -> Result<()> {
    let events = events();
    let sql = "SELECT w, k, count(*) AS n, sum(v) AS total, min(v) AS first \
               FROM (SELECT unnest(hop(ts, INTERVAL '5 seconds', INTERVAL '15 seconds')) AS w, k, v FROM events) \
               GROUP BY w, k";
    equals_the_batch_answer("hop", &[("events", &events)], sql, "w, k, n, total, first").await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_windowed_join_of_two_streams_equals_the_batch_answer() -> Result<()> {
    let events = events();
    // the other stream: a row for every third event, a second later
    let other: Vec<Event> = events
        .iter()
        .step_by(3)
        .map(|&(t, k, v)| (t + SEC, k, v * 10))
        .collect();
    let sql = "SELECT a.w, a.k, a.v AS av, b.v AS bv \
               FROM (SELECT date_bin(INTERVAL '10 seconds', ts) AS w, k, v FROM events) a \
               JOIN (SELECT date_bin(INTERVAL '10 seconds', ts) AS w, k, v FROM other) b \
               ON a.w = b.w AND a.k = b.k";
    equals_the_batch_answer(
        "join",
        &[("events", &events), ("other", &other)],
        sql,
        "w, k, av, bv",
    )
    .await
}

/// Sessions of each key with a 2 s gap, as a pipeline computes them.
const SESSIONS: &str = "SELECT k, session(ts, INTERVAL '2 seconds') AS s, count(*) AS n, sum(v) AS total, max(ts) AS last \
     FROM events GROUP BY k, session(ts, INTERVAL '2 seconds')";

/// The same sessions in batch SQL, without `session()`: a row starts a
/// new session when it is 2 s or more after the key's row before it.
pub(crate) const SESSIONS_IN_BATCH: &str = "WITH marked AS ( \
       SELECT k, ts, v, CASE WHEN ts < lag(ts) OVER (PARTITION BY k ORDER BY ts) + INTERVAL '2 seconds' \
                             THEN 0 ELSE 1 END AS starts \
       FROM events), \
     numbered AS ( \
       SELECT k, ts, v, sum(starts) OVER (PARTITION BY k ORDER BY ts RANGE UNBOUNDED PRECEDING) AS session \
       FROM marked) \
     SELECT k, min(ts) AS s, count(*) AS n, sum(v) AS total, max(ts) AS last FROM numbered GROUP BY k, session";

/// Out of order by up to 1.5 s, three keys 1.2 s apart each, with a pause
/// of 5 s every 25 events: sessions break at the pauses and, by the
/// jitter, sometimes between them.
pub(crate) fn session_events() -> Vec<Event> {
    (0..150)
        .map(|i| {
            let jitter = [0, -1_500_000, 700_000, -300_000, 0][i % 5];
            let pause = (i / 25) as i64 * 5 * SEC;
            let k = ["a", "b", "c"][i % 3];
            (i as i64 * SEC * 4 / 10 + pause + jitter + SEC, k, i as i64)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn session_windows_equal_the_batch_answer_for_every_epoch_size() -> Result<()> {
    let events = session_events();
    let want = sorted(
        &batch_answer_of(SESSIONS_IN_BATCH, &[("events", &events)]).await,
        "k, s, n, total, last",
    )
    .await;
    // the events do make several sessions per key
    assert!(want.matches("| a ").count() > 3, "{want}");
    for max_rows in [None, Some(1), Some(5), Some(17), Some(64)] {
        let url = format!("memory:///windows/session/{max_rows:?}");
        let engine = Engine::new();
        let spec = pipeline(&[("events", &events)], SESSIONS, max_rows, &url, Late::Drop);
        let summary = engine.run(spec).await?;
        let got = committed_rows(&engine, &url).await?;
        assert_eq!(
            sorted(&got, "k, s, n, total, last").await,
            want,
            "max_rows {max_rows:?} ({} epochs)",
            summary.epochs
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn session_anywhere_but_a_group_by_key_over_event_time_is_refused_at_compile() -> Result<()> {
    let events = session_events();
    let refused = [
        // not the event time itself
        "SELECT k, session(ts + INTERVAL '1 second', INTERVAL '2 seconds') AS s, count(*) AS n \
         FROM events GROUP BY k, session(ts + INTERVAL '1 second', INTERVAL '2 seconds')",
        // not in a GROUP BY
        "SELECT k, session(ts, INTERVAL '2 seconds') AS s FROM events",
        "SELECT k FROM events WHERE session(ts, INTERVAL '2 seconds') > ts",
        // a gap of no length, or of months
        "SELECT k, count(*) FROM events GROUP BY k, session(ts, INTERVAL '0 seconds')",
        "SELECT k, count(*) FROM events GROUP BY k, session(ts, INTERVAL '1 month')",
        // beside another window key
        "SELECT k, count(*) FROM events \
         GROUP BY k, date_bin(INTERVAL '10 seconds', ts), session(ts, INTERVAL '2 seconds')",
    ];
    for sql in refused {
        let url = "memory:///windows/refused";
        let spec = pipeline(&[("events", &events)], sql, None, url, Late::Drop);
        let err = Engine::new().compile(spec).await.unwrap_err().to_string();
        assert!(
            err.contains("session(ts, gap) is a GROUP BY key over the event time"),
            "{sql}: {err}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn late_rows_are_dead_lettered_and_left_out_of_their_window() -> Result<()> {
    let mut events = events();
    // two rows 20 s behind the stream at the time they come
    events.insert(80, (5 * SEC, "a", 1000));
    events.insert(100, (9 * SEC, "b", 2000));
    let on_time: Vec<Event> = events.iter().filter(|e| e.2 < 1000).copied().collect();
    let want = sorted(&batch_answer(&on_time).await, "w, k, n, total").await;
    let url = "memory:///windows/late";
    let mut spec = windowed(&events, Some(9), url, Late::DeadLetter);
    spec.dead_letter = Some(sluice::spec::DeadLetterConfig {
        url: "memory:///windows/late_dead".into(),
    });
    let engine = Engine::new();
    let summary = engine.run(spec).await?;
    let got = committed_rows(&engine, url).await?;
    assert_eq!(sorted(&got, "w, k, n, total").await, want);
    let dead = committed_rows(&engine, "memory:///windows/late_dead").await?;
    let dead = sorted(&dead, "code, component").await;
    assert_eq!(dead.matches("LATE").count(), 2, "{dead}\n{summary:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_window_is_emitted_once_when_the_watermark_passes_its_end() -> Result<()> {
    let events = events();
    let url = "memory:///windows/once";
    let engine = Engine::new();
    // epochs of 10 events: 5 s of event time each
    let compiled = engine
        .compile(windowed(&events, Some(10), url, Late::Drop))
        .await?;
    let handle = compiled.start(RunOptions::default());
    // the stream ends once the run and its handle are gone
    let events_of_run = handle.events();
    let collect = tokio::spawn(async move {
        let mut seen = Vec::new();
        let mut events_of_run = events_of_run;
        while let Some(event) = futures::StreamExt::next(&mut events_of_run).await {
            if let sluice::RunEvent::Committed { epoch, rows, .. } = event {
                seen.push((epoch, rows.get("out").copied().unwrap_or(0)));
            }
        }
        seen
    });
    handle.wait().await?;
    let seen = collect.await.unwrap();
    let rows: u64 = seen.iter().map(|(_, r)| r).sum();
    // every (window, key) of the batch answer, each emitted once
    let want: usize = batch_answer(&events)
        .await
        .iter()
        .map(|b| b.num_rows())
        .sum();
    assert_eq!(rows, want as u64, "{seen:?}");
    // nothing comes out before the first window's end passes the watermark
    assert_eq!(seen.first().map(|s| s.1), Some(0), "{seen:?}");
    Ok(())
}

/// Events whose times go forward by random steps, out of order by less
/// than the 2 s bound, with some rows far behind (late).
pub(crate) fn arbitrary_events() -> impl proptest::strategy::Strategy<Value = Vec<Event>> {
    use proptest::prelude::*;
    let keys = prop_oneof![Just("a"), Just("b"), Just("c")];
    // times on a 100 ms grid: rows at the same time, and rows exactly a
    // gap or a horizon apart, are common, so the boundaries are tested
    let event = (
        (0..9i64).prop_map(|s| s * 100_000),
        (-19..=0i64).prop_map(|j| j * 100_000),
        prop::bool::weighted(0.05),
        keys,
    );
    prop::collection::vec(event, 1..160).prop_map(|steps| {
        let mut clock = 1_700_000_000 * SEC;
        steps
            .into_iter()
            .enumerate()
            .map(|(i, (step, jitter, late, k))| {
                clock += step;
                let t = if late {
                    clock - 30 * SEC
                } else {
                    clock + jitter
                };
                (t, k, i as i64)
            })
            .collect()
    })
}

/// The rows no later than the bound behind the largest event time before
/// them: what the engine must keep, computed on its own here.
pub(crate) fn on_time(events: &[Event], bound: i64) -> Vec<Event> {
    let mut max = i64::MIN;
    let mut kept = Vec::new();
    for &e in events {
        if max == i64::MIN || e.0 >= max - bound {
            kept.push(e);
        }
        max = max.max(e.0);
    }
    kept
}

/// Runs the pipeline `make(url)` stopped after each of `stops` epochs and
/// restarted, then to the end; the rows committed.
pub(crate) fn run_with_restarts(
    make: &dyn Fn(&str) -> PipelineSpec,
    stops: &[u64],
) -> Vec<RecordBatch> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let url = "memory:///windows/property";
        let engine = Engine::new();
        for max_epochs in stops.iter().copied().map(Some).chain([None]) {
            let compiled = engine.compile(make(url)).await.unwrap();
            compiled
                .run(RunOptions {
                    max_epochs,
                    ..Default::default()
                })
                .await
                .unwrap();
        }
        committed_rows(&engine, url).await.unwrap()
    })
}

/// `batches` sorted by `columns` as text ("" when there are no rows).
pub(crate) fn sorted_text(batches: &[RecordBatch], columns: &str) -> String {
    if batches.iter().all(|b| b.num_rows() == 0) {
        return String::new();
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    runtime.block_on(sorted(batches, columns))
}

/// `sql` over `batches` (as table `t`), each row as `|`-joined values, sorted.
pub(crate) fn rows_of(batches: &[RecordBatch], sql: &str) -> Vec<String> {
    let Some(first) = batches.first() else {
        return Vec::new();
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let out = runtime.block_on(async {
        let ctx = SessionContext::new();
        let table =
            datafusion::datasource::MemTable::try_new(first.schema(), vec![batches.to_vec()])
                .unwrap();
        ctx.register_table("t", Arc::new(table)).unwrap();
        ctx.sql(sql).await.unwrap().collect().await.unwrap()
    });
    let mut lines = Vec::new();
    for b in &out {
        for row in 0..b.num_rows() {
            let values: Vec<String> = b
                .columns()
                .iter()
                .map(|c| array_value_to_string(c, row).unwrap())
                .collect();
            lines.push(values.join("|"));
        }
    }
    lines.sort();
    lines
}

/// `sql` answered by DuckDB over `events` as a table
/// `events(ts TIMESTAMP, k VARCHAR, v BIGINT)` (UTC), each row as
/// `|`-joined values, sorted: an engine independent of DataFusion.
pub(crate) fn duckdb_rows(events: &[Event], sql: &str) -> Vec<String> {
    // ./scripts/test says which; by hand, the environment it prepared
    let python = std::env::var("SLUICE_PYTHON").unwrap_or_else(|_| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/../../target/pyenv/bin/python").into()
    });
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("events.csv");
    let body: String = std::iter::once("ts,k,v\n".to_string())
        .chain(events.iter().map(|(t, k, v)| format!("{t},{k},{v}\n")))
        .collect();
    std::fs::write(&csv, body).unwrap();
    let script = r#"
import sys, duckdb
con = duckdb.connect()
con.execute("SET TimeZone = 'UTC'")
con.execute("CREATE TABLE events AS SELECT make_timestamp(ts) AS ts, k, v FROM read_csv(?, header = true, "
            "columns = {'ts': 'BIGINT', 'k': 'VARCHAR', 'v': 'BIGINT'})", [sys.argv[1]])
for row in con.execute(sys.argv[2]).fetchall():
    print("|".join("" if x is None else str(x) for x in row))
"#;
    let out = std::process::Command::new(&python)
        .args(["-c", script, csv.to_str().unwrap(), sql])
        .output()
        .unwrap_or_else(|e| {
            panic!("{python}: {e}; run the tests with ./scripts/test (it prepares target/pyenv)")
        });
    assert!(
        out.status.success(),
        "DuckDB ({python}) failed; run the tests with ./scripts/test (it prepares target/pyenv with duckdb):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    lines.sort();
    lines
}

/// The tumbling windows in DuckDB's words (`time_bucket`), times as µs.
const TUMBLING_IN_DUCKDB: &str = "SELECT epoch_us(time_bucket(INTERVAL '10 seconds', ts)) AS w, k, count(*), sum(v) \
     FROM events GROUP BY ALL";

/// The sessions in DuckDB's words, times as µs.
const SESSIONS_IN_DUCKDB: &str = "WITH marked AS ( \
       SELECT k, ts, v, CASE WHEN ts < lag(ts) OVER (PARTITION BY k ORDER BY ts) + INTERVAL '2 seconds' \
                             THEN 0 ELSE 1 END AS starts FROM events), \
     numbered AS ( \
       SELECT k, ts, v, sum(starts) OVER (PARTITION BY k ORDER BY ts RANGE UNBOUNDED PRECEDING) AS session FROM marked) \
     SELECT k, epoch_us(min(ts)), count(*), sum(v), epoch_us(max(ts)) FROM numbered GROUP BY k, session";

/// `sql` over `events` in one batch, sorted by `columns` ("" when empty).
pub(crate) fn batch_answer_sorted(events: &[Event], sql: &str, columns: &str) -> String {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    runtime.block_on(async {
        let want = batch_answer_of(sql, &[("events", events)]).await;
        if want.iter().all(|b| b.num_rows() == 0) {
            String::new()
        } else {
            sorted(&want, columns).await
        }
    })
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(16))]

    /// Sessions of random streams, cut and restarted at random: the
    /// sessions committed are the batch answer over the rows on time.
    #[test]
    fn sessions_survive_any_epoch_cuts_and_restarts(
        events in arbitrary_events(),
        max_rows in 1u64..40,
        stops in proptest::collection::vec(1u64..6, 1..4),
    ) {
        let columns = "k, s, n, total, last";
        let kept = on_time(&events, 2 * SEC);
        let want = batch_answer_sorted(&kept, SESSIONS_IN_BATCH, columns);
        let make = |url: &str| pipeline(&[("events", &events)], SESSIONS, Some(max_rows), url, Late::Drop);
        let got = run_with_restarts(&make, &stops);
        proptest::prop_assert_eq!(sorted_text(&got, columns), want, "max_rows {}, stops {:?}", max_rows, stops);
        let normal = "SELECT k, arrow_cast(to_timestamp_micros(s), 'Int64'), n, total, arrow_cast(to_timestamp_micros(last), 'Int64') FROM t";
        proptest::prop_assert_eq!(rows_of(&got, normal), duckdb_rows(&kept, SESSIONS_IN_DUCKDB), "DuckDB");
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]

    /// Random out-of-order streams with late rows, cut into random epochs,
    /// the run stopped and restarted after random numbers of epochs: the
    /// windows committed are the batch answer over the rows on time, each
    /// once.
    #[test]
    fn windows_survive_any_epoch_cuts_and_restarts(
        events in arbitrary_events(),
        max_rows in 1u64..40,
        stops in proptest::collection::vec(1u64..6, 1..6),
    ) {
        let columns = "w, k, n, total";
        let kept = on_time(&events, 2 * SEC);
        let want = batch_answer_sorted(&kept, TUMBLING, columns);
        let make = |url: &str| windowed(&events, Some(max_rows), url, Late::Drop);
        let got = run_with_restarts(&make, &stops);
        proptest::prop_assert_eq!(sorted_text(&got, columns), want, "max_rows {}, stops {:?}", max_rows, stops);
        let normal = "SELECT arrow_cast(to_timestamp_micros(w), 'Int64'), k, n, total FROM t";
        proptest::prop_assert_eq!(rows_of(&got, normal), duckdb_rows(&kept, TUMBLING_IN_DUCKDB), "DuckDB");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_folder_of_files_is_judged_in_file_order_on_every_partition_count() -> Result<()> {
    // one file per 20 events: a scan dealt over partitions would read a
    // later file before an earlier one and find its rows late
    let events = events();
    let want = sorted(&batch_answer(&events).await, "w, k, n, total").await;
    let dir = tempfile::tempdir().unwrap();
    for (f, chunk) in events.chunks(20).enumerate() {
        let body: String = chunk
            .iter()
            .map(|(t, k, v)| {
                let ts = sluice::state::format_event_time(*t);
                format!("{{\"ts\": \"{ts}\", \"k\": \"{k}\", \"v\": {v}}}\n")
            })
            .collect();
        std::fs::write(dir.path().join(format!("part-{f:03}.jsonl")), body).unwrap();
    }
    for partitions in [1, 2, 4] {
        let mut jsonl = sluice::sources::JsonlSourceConfig::new(dir.path().to_string_lossy());
        let column = |name: &str, data_type: &str| sluice::spec::ColumnSpec {
            name: name.into(),
            data_type: data_type.into(),
            nullable: false,
        };
        jsonl.columns = Some(vec![
            column("ts", "timestamptz"),
            column("k", "varchar"),
            column("v", "bigint"),
        ]);
        let url = format!("memory:///windows/folder/{partitions}");
        let mut spec = PipelineSpec::new("windows", "1.0")
            .with_source(
                "events",
                SourceConfig::from(jsonl).with_event_time(EventTimeConfig {
                    column: "ts".into(),
                    bound: Duration::from_secs(2),
                    idle_timeout: None,
                    late: Late::Drop,
                }),
            )
            .with_sql_stage("windowed", &["events"], TUMBLING)
            .with_sink("out", SinkConfig::parquet("windowed", url.as_str()));
        spec.settings.target_partitions = Some(partitions);
        let engine = Engine::new();
        let summary = engine.run(spec).await?;
        let source = summary.component("events").unwrap();
        assert_eq!(
            source.rows_out,
            events.len() as u64,
            "{partitions} partitions: {source:?}"
        );
        let got = committed_rows(&engine, &url).await?;
        assert_eq!(
            sorted(&got, "w, k, n, total").await,
            want,
            "{partitions} partitions"
        );
    }
    Ok(())
}
