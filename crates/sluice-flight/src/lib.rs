//! sluice's stage protocol, `sluice.stage.v1` and `v1.1`, over Arrow Flight.
//!
//! An external stage is a Flight server that transforms record batches; the
//! engine is its client. `docs/protocol.md` is the normative text; this crate
//! is its Rust implementation, shared by both ends:
//!
//! - [`envelope`]: the JSON envelope in every message's `app_metadata`,
//!   encoded canonically (byte-identical to the Go SDK; golden vectors in
//!   `testdata/protocol/`).
//! - [`manifest`]: what `DoAction("describe")` returns.
//! - [`server`]: the Rust stage SDK: implement [`Stage`] and [`Processor`],
//!   call [`serve`].
//! - [`client`]: the engine side: connect, describe, health, exchange.
//! - [`codes`]: fatal errors as gRPC statuses, `[CODE] message`.
//! - [`version`]: protocol versions, negotiated through `describe`.
//! - [`security`]: TLS and bearer tokens for remote stages.
//! - [`shm`]: the shared-memory path for child stages.
//! - [`views`]: checking the string views of a stage's answer.
#![deny(missing_docs)]

pub mod client;
pub mod codec;
pub mod codes;
pub mod conformance;
pub mod envelope;
pub mod jitter;
pub mod launch;
pub mod logging;
pub mod manifest;
pub mod row_errors;
pub mod security;
pub mod server;
pub mod shm;
#[cfg(feature = "otlp")]
pub mod telemetry;
mod trace;
mod unchanged;
pub mod version;
pub mod views;

pub use client::{StageClient, StageEvent, Target};
pub use codes::{Setting, StageError};
pub use envelope::{Envelope, Kind, RowErrorEntry};
pub use manifest::{Manifest, OpenRequest, SchemaDecl};
pub use server::{Processed, Processor, RowError, Stage, serve, service};

/// The newest protocol version this crate speaks ([`version`] lists them all).
pub const PROTOCOL: &str = version::V1_1;

/// Largest gRPC message either end accepts (a batch is one message).
pub const MAX_MESSAGE_SIZE: usize = 64 << 20;

/// HTTP/2 flow-control window per stream. gRPC's default (64 KiB) caps a
/// stream at one window per round trip, far below what a local socket
/// carries; batches are megabytes.
pub const STREAM_WINDOW: u32 = 16 << 20;

/// HTTP/2 flow-control window per connection (several exchanges share one).
pub const CONNECTION_WINDOW: u32 = 64 << 20;

/// Largest HTTP/2 frame (the maximum the protocol allows is 16 MiB - 1).
pub const MAX_FRAME: u32 = 1 << 20;

/// What a caught panic said (the payload `catch_unwind` returns). Arrow's
/// IPC reader panics on some malformed input (`fb_to_schema`'s unwraps),
/// and input the engine did not write is decoded under `catch_unwind`, the
/// panic becoming an error that quotes it.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("no message")
}

/// Environment variable naming the unix socket a child stage listens on.
pub const ENV_SOCKET: &str = "SLUICE_STAGE_SOCKET";

/// Environment variable naming the TCP address (`host:port`) a remote stage listens on.
pub const ENV_ADDR: &str = "SLUICE_STAGE_ADDR";
