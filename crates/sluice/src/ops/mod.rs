//! sluice's own physical operators, one per module.

pub mod check;
pub mod external_stage;
pub mod generate;
pub mod line_scan;
pub mod stage;
pub mod tpch_scan;
