//! SQL functions sluice adds to DataFusion's.
//!
//! | function | what it gives |
//! |---|---|
//! | [`hop()`] `hop(ts, slide, size)` | the starts of the hopping windows a row belongs to, to `unnest` |

pub(crate) mod hop;

use datafusion::logical_expr::ScalarUDF;

/// Every function sluice registers in a pipeline's session.
pub(crate) fn all() -> Vec<ScalarUDF> {
    vec![hop()]
}

/// `hop(ts, slide, size)`, to register in a session of your own (a batch
/// query that should answer like a pipeline, say).
pub fn hop() -> ScalarUDF {
    ScalarUDF::from(hop::Hop::new())
}
