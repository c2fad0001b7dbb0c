//! Epochs: bounded input cut into several commits, resumed across runs.

use sluice::sinks::SinkConfig;
use sluice::sources::{SourceConfig, SourceKind, TpchSourceConfig};
use sluice::{Engine, PipelineSpec, Result, RunOptions};

use crate::common::{committed_rows, query, scalar};

fn orders_spec(url: &str) -> PipelineSpec {
    let mut spec = PipelineSpec::new("epochs", "1")
        .with_source(
            "orders",
            TpchSourceConfig {
                table: sluice::sources::TpchTable::Orders,
                scale_factor: 0.01,
                parts: Some(5),
            },
        )
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
