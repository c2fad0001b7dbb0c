//! Rolling out a new variant of a stage: flags, shadow diff, canary,
//! guard and status (see docs/rollout.md).
//!
//! A stage with `[stages.<name>.variants.<v>]` is planned once per branch
//! (the primary and each variant), each over its own copy of the input,
//! under one [`exec::RolloutNode`]. Which branches run and which are
//! delivered is decided per epoch ([`config::Choice`], from the flags file
//! or the pipeline), travels with the epoch's execution
//! ([`tally::EpochRollout`]) and is recorded in the commit, so a replayed
//! epoch runs the way it first ran. [`control::RolloutControl`] does the
//! run's side: choices, the diff, the guard, the status.

pub(crate) mod admin;
pub(crate) mod bench;
pub(crate) mod config;
pub(crate) mod control;
pub(crate) mod diff;
pub(crate) mod exec;
pub(crate) mod flags;
pub(crate) mod split;
pub(crate) mod tally;

pub use admin::{set, status};
pub use bench::{BenchOptions, BenchReport, BenchRow, bench};
pub use config::{Choice, GuardConfig, Mode, RolloutConfig, StageRollout};
pub use control::RolloutRecord;
pub use diff::DiffCounts;
pub use flags::{Flag, Flags};
