//! The contract every part of sluice agrees on, independent of the engine.
//!
//! sluice moves Arrow record batches between sources, stages and sinks that may
//! live in different processes and languages. What they must agree on lives
//! here, with no dependency on DataFusion, so an external stage written in Rust
//! can depend on this crate alone:
//!
//! - [`metadata`]: the Arrow schema metadata keys (`sluice.schema`,
//!   `sluice.lineage`, ...) that travel with the data into Parquet footers, and
//!   the typed [`LineageEntry`] / [`Provenance`] values stored under them.
//! - [`ErrorCode`]: the shared error vocabulary, the same words in the Rust and
//!   Go stage SDKs and in dead-letter records.
//! - [`registry`]: the schema registry folder (`schemas/<name>/<version>.json`)
//!   and [`compat`]: whether data written under one schema reads under another.
#![deny(missing_docs)]

pub mod compat;
pub mod error_code;
pub mod metadata;
pub mod registry;
pub mod types;

pub use error_code::ErrorCode;
pub use metadata::{LineageEntry, Provenance, SourceProvenance};
