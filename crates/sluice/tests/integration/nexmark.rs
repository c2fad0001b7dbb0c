//! The Nexmark queries of `benches/nexmark/`, each run as a stream cut into
//! many epochs, give what the same SQL gives in one batch over the same
//! events (DataFusion alone, no sluice operator in between).

use std::path::Path;
use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::util::pretty::pretty_format_batches;
use datafusion::prelude::SessionContext;
use sluice::sinks::SinkConfig;
use sluice::spec::StageConfig;
use sluice::{Engine, PipelineSpec, Result};

use crate::common::committed_rows;

/// Events of the whole sequence each test run generates.
const EVENTS: u64 = 20_000;
/// Events per second of event time: 200 s of events, 20 windows of 10 s.
const EVENT_RATE: u64 = 100;

/// The pipeline `benches/nexmark/<query>.toml`, over [`EVENTS`] events at
/// [`EVENT_RATE`], cut into epochs of `max_rows`.
fn query_spec(query: &str, max_rows: u64) -> PipelineSpec {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../benches/nexmark")
        .join(format!("{query}.toml"));
    let plain = PipelineSpec::from_file(&path).unwrap();
    let mut overrides: Vec<String> = plain
        .sources
        .keys()
        .flat_map(|s| {
            [
                format!("sources.{s}.events={EVENTS}"),
                format!("sources.{s}.event_rate={EVENT_RATE}"),
            ]
        })
        .collect();
    overrides.push(format!("settings.epoch.max_rows={max_rows}"));
    PipelineSpec::from_file_with_overrides(&path, &overrides).unwrap()
}

/// Rows of `batches` as sorted text lines (an order-free comparison).
fn sorted_lines(batches: &[RecordBatch]) -> Vec<String> {
    let text = pretty_format_batches(batches).unwrap().to_string();
    let mut lines: Vec<String> = text
        .lines()
        .filter(|l| l.starts_with("| "))
        .skip(1) // the header
        .map(str::to_string)
        .collect();
    lines.sort();
    lines
}

/// The query of the pipeline's one stage (or `batch_sql`, the same
/// question without sluice's own functions) run over all the events of its
/// sources at once: the sources are first written out as they are, then
/// the SQL runs in a plain DataFusion session.
async fn batch_answer(
    spec: &PipelineSpec,
    query: &str,
    batch_sql: Option<&str>,
) -> Result<Vec<RecordBatch>> {
    let engine = Engine::new();
    let mut dump = PipelineSpec::new("dump", "1");
    for (name, source) in &spec.sources {
        dump.sources.insert(name.clone(), source.clone());
        dump = dump.with_sink(
            format!("{name}_rows"),
            SinkConfig::parquet(name.as_str(), format!("memory:///nexmark/dump/{name}")),
        );
    }
    engine.run(dump).await?;
    let ctx = SessionContext::new();
    ctx.register_udf(sluice::functions::hop());
    for name in spec.sources.keys() {
        let rows = committed_rows(&engine, &format!("memory:///nexmark/dump/{name}")).await?;
        let table =
            datafusion::datasource::MemTable::try_new(rows[0].schema(), vec![rows]).unwrap();
        ctx.register_table(name.as_str(), Arc::new(table)).unwrap();
    }
    let Some(StageConfig::Sql(stage)) = spec.stages.get(query) else {
        panic!("{query}.toml has an sql stage named {query}");
    };
    let sql = batch_sql.unwrap_or_else(|| stage.query.as_deref().expect("an inline query"));
    Ok(ctx.sql(sql).await.unwrap().collect().await.unwrap())
}

/// Runs `query` streamed in epochs of `max_rows` rows and compares its
/// output with the batch answer.
async fn streamed_equals_batch(query: &str, max_rows: u64) -> Result<()> {
    streamed_equals(query, max_rows, None).await
}

/// Runs `query` streamed in epochs of `max_rows` rows and compares its
/// output with `batch_sql` (or the query itself) in one batch.
async fn streamed_equals(query: &str, max_rows: u64, batch_sql: Option<&str>) -> Result<()> {
    let mut spec = query_spec(query, max_rows);
    let url = format!("memory:///nexmark/{query}");
    spec.sinks.clear();
    let spec = spec.with_sink("out", SinkConfig::parquet(query, url.as_str()));
    let want = sorted_lines(&batch_answer(&spec, query, batch_sql).await?);
    assert!(!want.is_empty(), "{query}: the batch answer has rows");
    let engine = Engine::new();
    let summary = engine.run(spec).await?;
    assert!(summary.epochs > 3, "{query}: cut into epochs ({summary:?})");
    let got = sorted_lines(&committed_rows(&engine, &url).await?);
    assert_eq!(got.len(), want.len(), "{query}: rows");
    assert!(
        got == want,
        "{query}: the streamed rows differ from the batch answer"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn q0_passthrough() -> Result<()> {
    streamed_equals_batch("q0", 2_999).await
}

#[tokio::test(flavor = "multi_thread")]
async fn q1_currency_conversion() -> Result<()> {
    streamed_equals_batch("q1", 2_999).await
}

#[tokio::test(flavor = "multi_thread")]
async fn q2_selection() -> Result<()> {
    streamed_equals_batch("q2", 2_999).await
}

#[tokio::test(flavor = "multi_thread")]
async fn q5_hot_items_over_hopping_windows() -> Result<()> {
    streamed_equals_batch("q5", 997).await
}

#[tokio::test(flavor = "multi_thread")]
async fn q7_highest_bid_through_a_windowed_join() -> Result<()> {
    streamed_equals_batch("q7", 997).await
}

#[tokio::test(flavor = "multi_thread")]
async fn q8_new_users_over_two_streams() -> Result<()> {
    streamed_equals_batch("q8", 97).await
}

#[tokio::test(flavor = "multi_thread")]
async fn q11_user_sessions() -> Result<()> {
    // the sessions of q11 in plain SQL: a bid 10 s or more after the
    // bidder's last one starts a new session
    let batch_sql = "WITH marked AS ( \
           SELECT bidder, date_time, \
                  CASE WHEN date_time < lag(date_time) OVER (PARTITION BY bidder ORDER BY date_time) \
                                        + INTERVAL '10 seconds' THEN 0 ELSE 1 END AS starts \
           FROM bid), \
         numbered AS ( \
           SELECT bidder, date_time, \
                  sum(starts) OVER (PARTITION BY bidder ORDER BY date_time RANGE UNBOUNDED PRECEDING) AS session \
           FROM marked) \
         SELECT bidder, count(*) AS bid_count, min(date_time) AS starttime, \
                max(date_time) + INTERVAL '10 seconds' AS endtime \
         FROM numbered GROUP BY bidder, session";
    streamed_equals("q11", 997, Some(batch_sql)).await
}
