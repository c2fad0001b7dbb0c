//! SQL functions sluice adds to DataFusion's.
//!
//! | function | what it gives |
//! |---|---|
//! | [`hop()`] `hop(ts, slide, size)` | the starts of the hopping windows a row belongs to, to `unnest` |
//! | [`session()`] `session(ts, gap)` | a `GROUP BY` key for session windows, planned by the compiler |

pub(crate) mod hop;
pub(crate) mod session;

use datafusion::logical_expr::ScalarUDF;

/// Every function sluice registers in a pipeline's session.
pub(crate) fn all() -> Vec<ScalarUDF> {
    vec![hop(), session()]
}

/// `hop(ts, slide, size)`, to register in a session of your own (a batch
/// query that should answer like a pipeline, say).
pub fn hop() -> ScalarUDF {
    ScalarUDF::from(hop::Hop::new())
}

/// `session(ts, gap)`: it plans only as a `GROUP BY` key over event time,
/// in a pipeline; registered elsewhere it explains that when called.
pub fn session() -> ScalarUDF {
    ScalarUDF::from(session::Session::new())
}
