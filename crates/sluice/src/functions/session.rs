//! `session(ts, gap)`: a `GROUP BY` key for session windows.
//!
//! A session of a key is a run of its rows whose event times are each less
//! than `gap` after the one before; a gap of `gap` or more starts a new
//! session. The key's value is the session's start, the event time of its
//! first row:
//!
//! ```sql
//! SELECT bidder, session(date_time, INTERVAL '10 seconds') AS session_start,
//!        max(date_time) + INTERVAL '10 seconds' AS session_end, count(*) AS bids
//! FROM bid
//! GROUP BY bidder, session(date_time, INTERVAL '10 seconds')
//! ```
//!
//! Which session a row belongs to depends on the other rows of its key, so
//! the function cannot be computed row by row. It is a marker the compiler
//! reads: in a pipeline whose source has `event_time = "date_time"`, such a
//! `GROUP BY` becomes a session-window operator that merges sessions across
//! epochs and emits each once, when the watermark passes its end (its last
//! event time + `gap`). Anywhere else (`ts` not a source's event time, or
//! the function outside a `GROUP BY`) it is an error that says so.
//!
//! - `ts`: a timestamp; the key has its type.
//! - `gap`: a constant positive interval of fixed length (no months).

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, FieldRef};
use datafusion::common::{Result, exec_err, plan_err};
use datafusion::logical_expr::{
    ColumnarValue, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility,
};

/// The `session` function; see the module docs.
#[derive(Debug, PartialEq, Eq, Hash)]
pub(crate) struct Session {
    signature: Signature,
}

impl Session {
    pub(crate) fn new() -> Self {
        Self {
            signature: Signature::any(2, Volatility::Immutable),
        }
    }
}

/// Why `session()` cannot be computed where it stands.
pub(crate) const ONLY_AS_A_GROUP_KEY: &str = "session(ts, gap) is a GROUP BY key over the event time of a source (`event_time` on the source); it cannot be computed row by row (see docs/windows.md)";

impl ScalarUDFImpl for Session {
    fn name(&self) -> &str {
        "session"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, args: &[DataType]) -> Result<DataType> {
        match args {
            [
                ts @ DataType::Timestamp(_, _),
                DataType::Interval(_) | DataType::Duration(_),
            ] => Ok(ts.clone()),
            [other, DataType::Interval(_) | DataType::Duration(_)] => {
                plan_err!("session(ts, gap): ts must be a timestamp, got {other}")
            }
            [_, other] => plan_err!("session(ts, gap): gap must be an interval, got {other}"),
            _ => plan_err!("session(ts, gap) takes two arguments"),
        }
    }
    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        let types: Vec<DataType> = args
            .arg_fields
            .iter()
            .map(|f| f.data_type().clone())
            .collect();
        // null exactly where ts is: the compiler puts ts in its place
        let nullable = args.arg_fields.first().is_none_or(|f| f.is_nullable());
        Ok(Arc::new(Field::new(
            self.name(),
            self.return_type(&types)?,
            nullable,
        )))
    }
    fn invoke_with_args(&self, _args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        exec_err!("{ONLY_AS_A_GROUP_KEY}")
    }
}
