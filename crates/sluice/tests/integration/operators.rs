//! Operator stages (`kind = "operator"`): the built-in `dedupe` and
//! `window` give the answer of their rule over the whole input, whatever
//! the epoch cuts and restarts; a custom operator registered through the
//! engine keeps state the same way.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use datafusion::arrow::array::{Int64Array, RecordBatch, StringArray};
use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::Result as DfResult;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::EquivalenceProperties;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PhysicalExpr, PlanProperties,
    collect,
};
use datafusion::prelude::SessionContext;
use sluice::operators::{Operator, OperatorContext, OperatorFactory};
use sluice::sinks::SinkConfig;
use sluice::state::{Late, OperatorState, StateScope};
use sluice::{Engine, PipelineSpec, Result};

use crate::common::committed_rows;
use crate::windows::{
    Event, SEC, SESSIONS_IN_BATCH, TUMBLING, arbitrary_events, batch, batch_answer_of, events,
    on_time, run_with_restarts, session_events, sorted, sorted_text, source,
};

/// A pipeline: the events, operator `operator` with `options` as stage
/// `op`, then `sql` over `op` (if any) as stage `after`, into `url`.
fn pipeline(
    events: &[Event],
    operator: &str,
    options: &str,
    sql: Option<&str>,
    max_rows: Option<u64>,
    url: &str,
) -> PipelineSpec {
    let options: toml::Table = options.parse().unwrap();
    let mut spec = PipelineSpec::new("operators", "1.0")
        .with_source("events", source(events, Late::Drop))
        .with_operator_stage("op", "events", operator, options);
    let last = match sql {
        Some(sql) => {
            spec = spec.with_sql_stage("after", &["op"], sql);
            "after"
        }
        None => "op",
    };
    spec = spec.with_sink("out", SinkConfig::parquet(last, url));
    spec.settings.epoch.max_rows = max_rows;
    spec
}

/// Keeps a key's row when no kept row of the key is less than `within`
/// before it, in (key, time, value) order: the rule over the whole input.
fn deduped(events: &[Event], within: i64) -> Vec<Event> {
    let mut rows = events.to_vec();
    rows.sort_by_key(|e| (e.1, e.0, e.2));
    let mut last: HashMap<&str, i64> = HashMap::new();
    rows.into_iter()
        .filter(|e| match last.get(e.1) {
            Some(l) if e.0 < l + within => false,
            _ => {
                last.insert(e.1, e.0);
                true
            }
        })
        .collect()
}

const DEDUPE: &str = "key = [\"k\"]\nwithin = \"3s\"";

#[tokio::test(flavor = "multi_thread")]
async fn dedupe_keeps_what_its_rule_keeps_over_the_whole_input_for_every_epoch_size() -> Result<()>
{
    let events = session_events();
    let kept = deduped(&events, 3 * SEC);
    assert!(
        kept.len() < events.len() * 2 / 3,
        "the events repeat keys within 3 s"
    );
    let want = sorted(&[batch(&kept)], "ts, k, v").await;
    for max_rows in [None, Some(1), Some(5), Some(17), Some(64)] {
        let url = format!("memory:///operators/dedupe/{max_rows:?}");
        let engine = Engine::new();
        let summary = engine
            .run(pipeline(&events, "dedupe", DEDUPE, None, max_rows, &url))
            .await?;
        let got = committed_rows(&engine, &url).await?;
        assert_eq!(
            sorted(&got, "ts, k, v").await,
            want,
            "max_rows {max_rows:?} ({} epochs)",
            summary.epochs
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn tumbling_window_rows_grouped_downstream_equal_the_batch_answer() -> Result<()> {
    // the windows' rows come out whole, so the GROUP BY after the operator
    // is complete in every epoch and is not refused over a stream
    let events = events();
    let sql = "SELECT window_start AS w, k, count(*) AS n, sum(v) AS total FROM op GROUP BY window_start, k";
    let want = sorted(
        &batch_answer_of(TUMBLING, &[("events", &events)]).await,
        "w, k, n, total",
    )
    .await;
    for max_rows in [None, Some(3), Some(17)] {
        let url = format!("memory:///operators/tumble/{max_rows:?}");
        let engine = Engine::new();
        let spec = pipeline(
            &events,
            "window",
            "size = \"10s\"",
            Some(sql),
            max_rows,
            &url,
        );
        engine.run(spec).await?;
        let got = committed_rows(&engine, &url).await?;
        assert_eq!(
            sorted(&got, "w, k, n, total").await,
            want,
            "max_rows {max_rows:?}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_top_row_of_each_hopping_window_is_what_batch_sql_picks() -> Result<()> {
    // what a GROUP BY cannot say: the row with the largest value per window
    let events = events();
    let sql = "SELECT window_start AS w, k, v FROM ( \
                 SELECT window_start, k, v, row_number() OVER (PARTITION BY window_start ORDER BY v DESC) AS r FROM op) \
               WHERE r = 1";
    let batch_sql = "SELECT w, k, v FROM ( \
                       SELECT w, k, v, row_number() OVER (PARTITION BY w ORDER BY v DESC) AS r FROM ( \
                         SELECT unnest(hop(ts, INTERVAL '5 seconds', INTERVAL '15 seconds')) AS w, k, v FROM events)) \
                     WHERE r = 1";
    let want = sorted(
        &batch_answer_of(batch_sql, &[("events", &events)]).await,
        "w, k, v",
    )
    .await;
    let url = "memory:///operators/top";
    let engine = Engine::new();
    let options = "size = \"15s\"\nslide = \"5s\"";
    engine
        .run(pipeline(
            &events,
            "window",
            options,
            Some(sql),
            Some(9),
            url,
        ))
        .await?;
    let got = committed_rows(&engine, url).await?;
    assert_eq!(sorted(&got, "w, k, v").await, want);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn session_window_rows_make_the_sessions_batch_sql_finds() -> Result<()> {
    let events = session_events();
    let columns = "k, s, n, total, last";
    let want = sorted(
        &batch_answer_of(SESSIONS_IN_BATCH, &[("events", &events)]).await,
        columns,
    )
    .await;
    for max_rows in [None, Some(1), Some(13)] {
        let url = format!("memory:///operators/session/{max_rows:?}");
        let engine = Engine::new();
        let options = "gap = \"2s\"\nkey = [\"k\"]";
        engine
            .run(pipeline(&events, "window", options, None, max_rows, &url))
            .await?;
        let got = committed_rows(&engine, &url).await?;
        let sessions = summarize(
            &got,
            "SELECT k, window_start AS s, count(*) AS n, sum(v) AS total, max(ts) AS last \
             FROM t GROUP BY k, window_start",
        )
        .await;
        assert_eq!(
            sorted(&sessions, columns).await,
            want,
            "max_rows {max_rows:?}"
        );
        // a session ends its gap after its last row
        let ends = summarize(
            &got,
            "SELECT count(*) AS wrong FROM (SELECT window_end, max(ts) AS last FROM t GROUP BY k, window_start, window_end) \
             WHERE window_end <> last + INTERVAL '2 seconds'",
        )
        .await;
        assert_eq!(
            sorted(&ends, "wrong").await,
            sorted(&[zero_wrong()], "wrong").await
        );
    }
    Ok(())
}

/// `sql` over `batches` as table `t`.
async fn summarize(batches: &[RecordBatch], sql: &str) -> Vec<RecordBatch> {
    let ctx = SessionContext::new();
    let schema = batches[0].schema();
    let table = datafusion::datasource::MemTable::try_new(schema, vec![batches.to_vec()]).unwrap();
    ctx.register_table("t", Arc::new(table)).unwrap();
    ctx.sql(sql).await.unwrap().collect().await.unwrap()
}

fn zero_wrong() -> RecordBatch {
    RecordBatch::try_from_iter([("wrong", Arc::new(Int64Array::from(vec![0])) as _)]).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_option_or_an_unknown_operator_is_refused_with_the_key() -> Result<()> {
    let events = events();
    let cases = [
        (
            "dedupe",
            "key = [\"nope\"]\nwithin = \"3s\"",
            "`key` names `nope`",
        ),
        ("dedupe", "key = [\"k\"]", "within"),
        ("window", "size = \"10s\"\ngap = \"2s\"", "not both"),
        ("window", "sise = \"10s\"", "sise"),
        ("shuffle", "", "there is no operator `shuffle`"),
    ];
    for (operator, options, says) in cases {
        let spec = pipeline(
            &events,
            operator,
            options,
            None,
            None,
            "memory:///operators/refused",
        );
        let err = Engine::new().compile(spec).await.unwrap_err().to_string();
        assert!(err.contains(says), "{operator} {options}: {err}");
        assert!(err.contains("stages.op"), "{operator} {options}: {err}");
    }
    Ok(())
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(12))]

    /// Random streams through dedupe, cut and restarted at random: what is
    /// committed is the rule over the rows on time.
    #[test]
    fn dedupe_survives_any_epoch_cuts_and_restarts(
        events in arbitrary_events(),
        max_rows in 1u64..40,
        stops in proptest::collection::vec(1u64..6, 1..4),
    ) {
        let kept = deduped(&on_time(&events, 2 * SEC), 3 * SEC);
        let want = sorted_text(&[batch(&kept)], "ts, k, v");
        let make = |url: &str| pipeline(&events, "dedupe", DEDUPE, None, Some(max_rows), url);
        let got = sorted_text(&run_with_restarts(&make, &stops), "ts, k, v");
        proptest::prop_assert_eq!(got, want, "max_rows {}, stops {:?}", max_rows, stops);
    }
}

// A custom operator, as an embedder writes one: a running count per key,
// kept across epochs in the state scope.

#[derive(Debug)]
struct RunningCountFactory;

impl OperatorFactory for RunningCountFactory {
    fn create(&self, cx: &OperatorContext) -> std::result::Result<Arc<dyn Operator>, String> {
        let key = cx
            .options
            .get("key")
            .and_then(|k| k.as_str())
            .ok_or("`key` (a column name) is required")?;
        let index = cx.input.index_of(key).map_err(|e| e.to_string())?;
        Ok(Arc::new(RunningCount {
            stage: cx.stage.clone(),
            key: index,
        }))
    }
}

#[derive(Debug)]
struct RunningCount {
    stage: String,
    key: usize,
}

fn counts_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("key", DataType::Utf8, false),
        Field::new("count", DataType::Int64, false),
    ]))
}

impl Operator for RunningCount {
    fn schema(&self) -> SchemaRef {
        counts_schema()
    }
    fn plan(&self, input: Arc<dyn ExecutionPlan>) -> DfResult<Arc<dyn ExecutionPlan>> {
        Ok(Arc::new(RunningCountExec {
            stage: self.stage.clone(),
            key: self.key,
            props: Arc::new(PlanProperties::new(
                EquivalenceProperties::new(counts_schema()),
                Partitioning::UnknownPartitioning(1),
                EmissionType::Final,
                Boundedness::Bounded,
            )),
            input,
        }))
    }
}

#[derive(Debug)]
struct RunningCountExec {
    stage: String,
    key: usize,
    input: Arc<dyn ExecutionPlan>,
    props: Arc<PlanProperties>,
}

impl DisplayAs for RunningCountExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "RunningCountExec")
    }
}

impl ExecutionPlan for RunningCountExec {
    fn name(&self) -> &str {
        "RunningCountExec"
    }
    fn properties(&self) -> &Arc<PlanProperties> {
        &self.props
    }
    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }
    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }
    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        Ok(Arc::new(RunningCountExec {
            stage: self.stage.clone(),
            key: self.key,
            input: children.pop().unwrap(),
            props: Arc::clone(&self.props),
        }))
    }
    fn execute(
        &self,
        _partition: usize,
        ctx: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        let (stage, key, input) = (self.stage.clone(), self.key, Arc::clone(&self.input));
        let run = async move {
            let scope = StateScope::of_task(&ctx)?;
            // the counts so far, from the last epoch or the last commit
            let mut counts: std::collections::BTreeMap<String, i64> = Default::default();
            if let Some(saved) = scope.previous(&stage) {
                for b in &saved.batches {
                    let keys = b.column(0).as_any().downcast_ref::<StringArray>().unwrap();
                    let n = b.column(1).as_any().downcast_ref::<Int64Array>().unwrap();
                    for i in 0..b.num_rows() {
                        counts.insert(keys.value(i).to_string(), n.value(i));
                    }
                }
            }
            for b in collect(input, ctx).await? {
                let keys = b
                    .column(key)
                    .as_any()
                    .downcast_ref::<StringArray>()
                    .unwrap();
                for k in keys.iter().flatten() {
                    *counts.entry(k.to_string()).or_default() += 1;
                }
            }
            let batch = RecordBatch::try_new(
                counts_schema(),
                vec![
                    Arc::new(StringArray::from_iter_values(counts.keys())),
                    Arc::new(Int64Array::from_iter_values(counts.values().copied())),
                ],
            )?;
            scope.save(
                &stage,
                OperatorState {
                    batches: vec![batch.clone()],
                    watermark: None,
                },
            );
            Ok(batch)
        };
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            counts_schema(),
            futures::stream::once(run),
        )))
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_registered_operator_keeps_its_state_across_epochs_and_restarts() -> Result<()> {
    let events = events();
    let url = "memory:///operators/custom";
    let mut engine = Engine::new();
    engine.register_operator("running_count", Arc::new(RunningCountFactory));
    for max_epochs in [Some(3), Some(2), None] {
        let spec = pipeline(&events, "running_count", "key = \"k\"", None, Some(10), url);
        engine
            .compile(spec)
            .await?
            .run(sluice::RunOptions {
                max_epochs,
                ..Default::default()
            })
            .await?;
    }
    // every epoch committed the counts so far; the last ones count everything
    let got = committed_rows(&engine, url).await?;
    let got = concat_batches(&got[0].schema(), &got).unwrap();
    // read back from Parquet as a string view
    let keys = datafusion::arrow::compute::cast(got.column(0), &DataType::Utf8).unwrap();
    let keys = keys.as_any().downcast_ref::<StringArray>().unwrap();
    let n = got.column(1).as_any().downcast_ref::<Int64Array>().unwrap();
    let max = |k: &str| {
        (0..got.num_rows())
            .filter(|i| keys.value(*i) == k)
            .map(|i| n.value(i))
            .max()
    };
    let want = |k: &str| events.iter().filter(|e| e.1 == k).count() as i64;
    assert_eq!(max("a"), Some(want("a")));
    assert_eq!(max("b"), Some(want("b")));
    Ok(())
}
