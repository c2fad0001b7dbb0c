//! Epochs: bounded input cut into several commits, resumed across runs.

use sluice::sinks::SinkConfig;
use sluice::sources::{SourceConfig, SourceKind, TpchSourceConfig};
use sluice::{Engine, PipelineSpec, Result, RunOptions};

use crate::common::{committed_rows, query, scalar};

/// TPC-H orders at SF 0.01 (15,000 rows) in 5 parts.
fn orders() -> TpchSourceConfig {
    TpchSourceConfig {
        table: sluice::sources::TpchTable::Orders,
        scale_factor: 0.01,
        parts: Some(5),
    }
}

fn orders_spec(url: &str) -> PipelineSpec {
    let mut spec = PipelineSpec::new("epochs", "1")
        .with_source("orders", orders())
        .with_source(
            "nation",
            SourceConfig::from(TpchSourceConfig {
                table: sluice::sources::TpchTable::Nation,
                scale_factor: 0.01,
                parts: None,
            })
            .with_lookup(true),
        )
        .with_sql_stage(
            "joined",
            &["orders", "nation"],
            "SELECT o.o_orderkey, o.o_totalprice, n.n_name FROM orders o JOIN nation n ON o.o_custkey % 25 = n.n_nationkey",
        )
        .with_sink("out", SinkConfig::parquet("joined", url));
    spec.settings.epoch.max_rows = Some(3_000);
    spec
}

#[tokio::test]
async fn a_run_stopped_after_some_epochs_resumes_to_the_same_output() -> Result<()> {
    let engine = Engine::new();
    let whole = engine.run(orders_spec("memory:///epochs/whole")).await?;
    assert_eq!(whole.epochs, 5, "5 parts of 3000 orders, one per epoch");

    let first = engine
        .compile(orders_spec("memory:///epochs/split"))
        .await?;
    assert_eq!(
        first
            .run(RunOptions {
                max_epochs: Some(2),
                ..Default::default()
            })
            .await?
            .epochs,
        2
    );
    let rest = engine
        .compile(orders_spec("memory:///epochs/split"))
        .await?
        .run(RunOptions::default())
        .await?;
    assert_eq!((rest.first_epoch, rest.epochs), (2, 3));

    let a = committed_rows(&engine, "memory:///epochs/whole").await?;
    let b = committed_rows(&engine, "memory:///epochs/split").await?;
    let sig = "SELECT count(*), count(DISTINCT o_orderkey), sum(o_totalprice) FROM t";
    let (qa, qb) = (query(a, sig).await, query(b, sig).await);
    assert_eq!(qa, qb);
    // the lookup table joined every epoch: every order found its nation
    assert_eq!(scalar(&qa), 15_000);
    Ok(())
}

#[tokio::test]
async fn changing_the_generator_under_committed_output_is_refused() -> Result<()> {
    let engine = Engine::new();
    let mut spec = orders_spec("memory:///epochs/changed");
    let c = engine.compile(spec.clone()).await?;
    c.run(RunOptions {
        max_epochs: Some(1),
        ..Default::default()
    })
    .await?;
    if let Some(SourceKind::Tpch(t)) = spec.sources.get_mut("orders").map(|s| &mut s.kind) {
        t.scale_factor = 0.02;
    }
    let err = engine
        .compile(spec)
        .await?
        .run(RunOptions::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("source `orders`") && err.contains("scale_factor=0.01"),
        "{err}"
    );
    Ok(())
}

/// A sink whose second commit fails once with a transient error, keeping
/// what it commits in memory.
#[derive(Debug, Default)]
struct FlakyCommits {
    staged: std::sync::Mutex<
        std::collections::BTreeMap<u64, Vec<sluice::datafusion::arrow::array::RecordBatch>>,
    >,
    committed: std::sync::Mutex<
        Vec<(
            sluice::sinks::CommittedRange,
            Vec<sluice::datafusion::arrow::array::RecordBatch>,
        )>,
    >,
    commits_tried: std::sync::atomic::AtomicUsize,
}

#[derive(Debug)]
struct FlakySink(std::sync::Arc<FlakyCommits>);

#[async_trait::async_trait]
impl sluice::sinks::Sink for FlakySink {
    fn name(&self) -> &str {
        "flaky"
    }
    fn kind(&self) -> &str {
        "flaky"
    }
    fn url(&self) -> String {
        "flaky://memory".into()
    }
    async fn recover(&self) -> Result<sluice::sinks::Recovered> {
        let committed = self.0.committed.lock().unwrap();
        Ok(sluice::sinks::Recovered {
            log: sluice::sinks::SinkLog::durable(committed.iter().map(|c| c.0.clone()).collect()),
            removed_files: Vec::new(),
        })
    }
    async fn write(&self, output: sluice::sinks::EpochOutput) -> Result<u64> {
        use futures::StreamExt;
        let mut rows = output.execute_all()?;
        let mut batches = Vec::new();
        while let Some(b) = rows.next().await {
            batches.push(b.map_err(|e| output.error(e))?);
        }
        let n = batches.iter().map(|b| b.num_rows() as u64).sum();
        self.0
            .staged
            .lock()
            .unwrap()
            .entry(output.commit_group())
            .or_default()
            .extend(batches);
        Ok(n)
    }
    async fn commit(
        &self,
        _sealed: sluice::sinks::Sealed,
        record: &sluice::sinks::CommitRecord,
    ) -> Result<()> {
        if self
            .0
            .commits_tried
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            == 1
        {
            return Err(sluice::SluiceError::Sink {
                sink: "flaky".into(),
                url: self.url(),
                message: "the store is throttling (once)".into(),
                retry: sluice::RetryHint::WithBackoff,
                cause: None,
            });
        }
        let batches = self
            .0
            .staged
            .lock()
            .unwrap()
            .remove(&record.first_epoch)
            .unwrap_or_default();
        self.0
            .committed
            .lock()
            .unwrap()
            .push((record.range(), batches));
        Ok(())
    }
    async fn abort(&self) {
        self.0.staged.lock().unwrap().clear();
    }
}

#[derive(Debug)]
struct FlakyFactory(std::sync::Arc<FlakyCommits>);

impl sluice::sinks::SinkFactory for FlakyFactory {
    fn open(
        &self,
        _: &sluice::sinks::SinkContext<'_>,
    ) -> Result<std::sync::Arc<dyn sluice::sinks::Sink>> {
        Ok(std::sync::Arc::new(FlakySink(std::sync::Arc::clone(
            &self.0,
        ))))
    }
}

/// A commit that fails with a transient error is retried, and the epochs
/// after it commit too (they once gave up behind the failed commit for
/// good, and the run committed nothing more).
#[tokio::test]
async fn after_a_failed_commit_is_retried_later_epochs_commit() -> Result<()> {
    let flaky = std::sync::Arc::new(FlakyCommits::default());
    let mut spec = PipelineSpec::new("flaky", "1")
        .with_source("orders", orders())
        .with_custom_sink(
            "flaky",
            "orders",
            std::sync::Arc::new(FlakyFactory(std::sync::Arc::clone(&flaky))),
        );
    spec.settings.epoch.max_rows = Some(3_000);
    spec.settings.retries = Some(2);
    spec.settings.epochs_in_flight = Some(2);
    Engine::new().run(spec).await?;
    assert!(
        flaky
            .commits_tried
            .load(std::sync::atomic::Ordering::SeqCst)
            > 2
    );
    let committed = flaky.committed.lock().unwrap();
    // (each commit's batches carry their own provenance: count by hand)
    let mut keys = std::collections::BTreeSet::new();
    let mut rows = 0;
    for b in committed.iter().flat_map(|c| c.1.iter()) {
        let k = b.column_by_name("o_orderkey").unwrap();
        let k = sluice::datafusion::arrow::compute::cast(
            k,
            &sluice::datafusion::arrow::datatypes::DataType::Int64,
        )
        .unwrap();
        let k = k
            .as_any()
            .downcast_ref::<sluice::datafusion::arrow::array::Int64Array>()
            .unwrap();
        keys.extend(k.values().iter().copied());
        rows += b.num_rows();
    }
    assert_eq!((rows, keys.len()), (15_000, 15_000));
    Ok(())
}
