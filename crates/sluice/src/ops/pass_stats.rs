//! Statistics of operators that pass their input's rows on: the planner
//! sees through them to a scan's size (which side of a join to build a hash
//! table on).

use std::sync::Arc;

use datafusion::arrow::datatypes::Schema;
use datafusion::common::{Result, Statistics};
use datafusion::physical_plan::ChildStats;

/// The one input's statistics, at the partition asked for.
pub(crate) fn of_input(partition: Option<usize>) -> Vec<ChildStats> {
    vec![ChildStats::At(partition)]
}

/// The input's statistics, passed on: as they are (`exact`: every row passes
/// unchanged) or as estimates (some rows may be taken out).
pub(crate) fn passed_on(
    input_stats: &[Arc<Statistics>],
    schema: &Schema,
    exact: bool,
) -> Result<Arc<Statistics>> {
    Ok(match input_stats.first() {
        Some(s) if exact => Arc::clone(s),
        Some(s) => Arc::new(s.as_ref().clone().to_inexact()),
        None => Arc::new(Statistics::new_unknown(schema)),
    })
}
