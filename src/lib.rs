//! sluice: a modular streaming ETL engine on Apache Arrow and DataFusion.
//!
//! This crate is the facade: it re-exports the engine ([`sluice_engine`]) and
//! the shared contract ([`sluice_contract`]) so an embedding program depends on
//! one crate. The `sluice` binary (the CLI) is built from the same package.
//!
//! ```no_run
//! # async fn demo() -> sluice::Result<()> {
//! let engine = sluice::Engine::new();
//! let spec = sluice::PipelineSpec::from_file("examples/tpch_revenue/pipeline.toml")?;
//! let summary = engine.run(spec).await?;
//! for c in &summary.components {
//!     println!("{} {}: {} rows", c.role, c.name, c.rows_out);
//! }
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

pub use sluice_contract as contract;
pub use sluice_engine::*;
