//! sluice: a streaming ETL engine on Apache Arrow and DataFusion. Pipelines
//! of sources, SQL and external stages, and sinks, run in epochs that commit
//! exactly once.
//!
//! The main types, in the order data meets them:
//!
//! - [`PipelineSpec`]: a pipeline as written in TOML, or built in code
//!   ([`PipelineSpec::new`], `with_source`, `with_sql_stage`, `with_sink`,
//!   `with_custom_source`, `with_custom_sink`); errors name the file, line and key.
//! - [`sources::Source`]: hands out input as slices with typed offsets;
//!   built-ins for CSV, JSON lines, Parquet, Arrow IPC, TPC-H, a generator,
//!   a folder to tail and stdin, plus your own through [`sources::SourceFactory`].
//! - [`Engine::compile`]: sources become tables, SQL stages views, so a
//!   chain of stages is one optimized DataFusion plan per sink; the result,
//!   a [`CompiledPipeline`], never changes while it runs.
//! - [`CompiledPipeline::start`]: the epoch loop on the tokio runtime, a
//!   [`RunHandle`] to stop it, wait for its [`RunSummary`] and follow its
//!   [`RunEvent`]s. Each epoch is bound to its own execution, so the next one
//!   is read and computed while the last one commits.
//! - [`operators`]: stages that are physical operators with state of their
//!   own (`dedupe`, `window`, and yours through [`Engine::register_operator`]).
//! - [`sinks::Sink`]: writes an epoch's rows where no reader sees them, then
//!   commits them atomically; file sinks keep a commit log beside the data
//!   ([`inspect`] reads it). Your own sinks take part in the same protocol.
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
//!
//! `examples/embed.rs` shows the rest: a run handle, a custom source with
//! typed offsets, a custom sink under the commit protocol, a UDF, and an
//! engine given its own DataFusion `SessionConfig` and `RuntimeEnv`.
#![deny(missing_docs)]
#![warn(unreachable_pub, unnameable_types)]

mod commit_log;
mod compile;
mod dead_letter;
#[cfg(feature = "delta")]
pub mod delta;
mod engine;
mod epoch;
mod error;
mod explain;
pub mod functions;
pub mod inspect;
mod kafka;
mod metrics;
mod observe;
mod openlineage;
pub mod operators;
mod ops;
pub mod rollout;
pub mod sinks;
pub mod sources;
pub mod spec;
mod stages;
pub mod state;
mod storage;

pub use commit_log::{Commit, CommittedFile, SourceOffsets};
pub use compile::CompiledPipeline;
pub use engine::Engine;
#[cfg(feature = "failpoints")]
pub use epoch::FAILPOINT_ENV;
pub use epoch::{RecoveryError, RunEvent, RunHandle, RunOptions, Stopper};
pub use error::{Cause, Result, RetryHint, SluiceError, SpecIssue};
pub use explain::GraphFormat;
pub use metrics::{ComponentId, ComponentStats, LatencySummary, Progress, RunSummary};
pub use spec::PipelineSpec;

/// DataFusion, so embedders use the same version.
pub use datafusion;
/// The shared contract: metadata keys, lineage and provenance types, the
/// error vocabulary, the schema registry and its compatibility rules.
pub use sluice_contract as contract;
/// TOML, the form of an operator stage's options ([`operators::OperatorContext`]).
pub use toml;
