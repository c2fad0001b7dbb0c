//! Criterion bench of the main job (examples/tpch_revenue) at a small scale
//! factor, writing to the engine's in-memory object store so the disk does
//! not dominate. Reports rows/s of lineitem read.
//!
//! ```text
//! cargo bench --bench tpch_pipeline
//! ```

use std::path::Path;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sluice::{Engine, PipelineSpec};

const SCALE: f64 = 0.05;

fn spec(run: usize) -> PipelineSpec {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    PipelineSpec::from_file_with_overrides(
        root.join("examples/tpch_revenue/pipeline.toml"),
        &[
            format!("sources.lineitem.scale_factor={SCALE}"),
            format!("sinks.out.url=\"memory:///bench/{run}\""),
        ],
    )
    .expect("the example pipeline parses")
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let rows = (6_001_215.0 * SCALE) as u64;
    let mut group = c.benchmark_group("tpch_revenue");
    group.throughput(Throughput::Elements(rows));
    group.sample_size(10);
    let mut run = 0;
    group.bench_function(format!("sf{SCALE}_to_memory_zstd"), |b| {
        b.iter(|| {
            run += 1;
            // a fresh engine per iteration: a fresh in-memory store, no leftover output
            let summary = rt
                .block_on(Engine::new().run(spec(run)))
                .expect("the pipeline runs");
            assert_eq!(summary.epochs, 1);
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
