//! sluice's own physical operators, one per module.

pub(crate) mod check;
pub(crate) mod event_time;
pub(crate) mod external_stage;
pub(crate) mod file_errors;
pub(crate) mod generate;
pub(crate) mod line_scan;
pub(crate) mod map;
pub(crate) mod operator_stage;
pub(crate) mod pass_stats;
pub(crate) mod sessions;
pub(crate) mod slot;
pub(crate) mod stage;
pub(crate) mod tpch_scan;
pub(crate) mod window_aggregate;
pub(crate) mod window_join;
