//! sluice's own physical operators, one per module.

pub(crate) mod check;
pub(crate) mod external_stage;
pub(crate) mod generate;
pub(crate) mod line_scan;
pub(crate) mod stage;
pub(crate) mod tpch_scan;
