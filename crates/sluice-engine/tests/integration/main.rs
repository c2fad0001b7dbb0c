//! Integration tests of the engine through its public API: embedding, epochs
//! and resume, file sources at scale, and SQL semantics (.slt files).

mod common;
mod embedding;
mod epochs;
mod evolution;
mod files;
mod slt;
