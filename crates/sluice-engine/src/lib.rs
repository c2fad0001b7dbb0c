//! The sluice engine: pipelines of sources, SQL stages and sinks compiled into
//! DataFusion plans and run in epochs that commit exactly once.
//!
//! The main types, in the order data meets them:
//!
//! - [`PipelineSpec`]: a pipeline as written in TOML (or built in code), with
//!   errors that name the file, line and key ([`spec`]).
//! - [`sources::Source`]: hands out input as slices with offsets; built-ins
//!   for CSV, JSON lines, Parquet, Arrow IPC and TPC-H, plus your own through
//!   [`sources::SourceFactory`].
//! - [`Engine::compile`]: registers sources as tables and SQL stages as views,
//!   so a chain of stages is one optimized DataFusion plan per sink
//!   ([`compile`]); [`ops::stage::StageExec`] keeps the stage borders visible
//!   for metrics without blocking pushdown.
//! - [`CompiledPipeline::run`]: the epoch loop ([`runner`]): slice, execute,
//!   write files, commit them atomically to the sink's commit log
//!   ([`commit_log`]), acknowledge.
//! - [`metrics::RunSummary`]: per-component rows, batches, bytes and time.
//!
//! Why epochs: a long-running DataFusion plan buffers rows inside operators
//! and has no point where "everything up to here is written" holds. Running
//! bounded plans over slices gives every commit a clear meaning: these files
//! hold exactly the rows of these offsets.
#![deny(missing_docs)]

pub mod commit_log;
pub mod compile;
pub mod dead_letter;
pub mod engine;
pub mod error;
pub mod explain;
pub mod inspect;
pub mod metrics;
pub mod openlineage;
pub mod ops;
pub mod runner;
pub mod sinks;
pub mod sources;
pub mod spec;
pub mod stages;
pub mod storage;

pub use compile::CompiledPipeline;
pub use engine::Engine;
pub use error::{Result, RetryHint, SluiceError, SpecIssue};
pub use metrics::{ComponentStats, RunSummary};
pub use runner::RunOptions;
pub use spec::PipelineSpec;

/// Re-export of DataFusion, so embedders use the same version.
pub use datafusion;
