//! Integration tests of the engine through its public API: embedding, epochs
//! and resume, file sources at scale, schema evolution. (SQL semantics, the
//! .slt files, run as a unit test of `compile`.)

mod common;
mod corrupt_parquet;
mod delta;
mod embedding;
mod epochs;
mod errors;
mod evolution;
mod files;
mod nexmark;
mod operators;
mod windows;
