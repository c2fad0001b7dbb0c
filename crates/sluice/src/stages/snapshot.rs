//! A stateful external stage's state, as the engine keeps it (protocol v1.1).
//!
//! The stage hands its state over as bytes in its `flushed` message; the
//! engine keeps them as a one-row Arrow batch in the sink's state, under
//! `<stage>.partition<N>`, where windows keep theirs: the epoch's commit
//! writes it, a restart loads what the last commit names, a failed epoch
//! rewinds to it. The next exchange of that partition opens with it.
//!
//! A snapshot is one partition's: kept with the plan's partition count, and
//! refused when a later plan has another (its rows would meet another
//! partition's state: wrong values, silently).

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use datafusion::arrow::array::{Array, BinaryArray, RecordBatch, UInt64Array};
use datafusion::arrow::buffer::{Buffer, OffsetBuffer};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use sluice_contract::ErrorCode;
use sluice_flight::StageError;

use crate::state::OperatorState;

/// The state's name in the sink's state: one per stage and plan partition
/// (an exchange is one partition of one epoch).
pub(crate) fn key(stage: &str, partition: usize) -> String {
    format!("{stage}.partition{partition}")
}

/// The bytes a stage snapshotted, from the `flushed` envelope's base64, kept
/// with the plan's partition count.
pub(crate) fn from_base64(text: &str, partitions: usize) -> Result<OperatorState, String> {
    let bytes = STANDARD
        .decode(text)
        .map_err(|e| format!("the `flushed` snapshot is not base64: {e}"))?;
    let schema = Arc::new(Schema::new(vec![
        Field::new("snapshot", DataType::Binary, false),
        Field::new("partitions", DataType::UInt64, false),
    ]));
    let len = bytes.len();
    // the decoded bytes become the column's buffer as they are
    let column = BinaryArray::new(
        OffsetBuffer::from_lengths([len]),
        Buffer::from_vec(bytes),
        None,
    );
    let partitions = UInt64Array::from(vec![partitions as u64]);
    let batch = RecordBatch::try_new(schema, vec![Arc::new(column), Arc::new(partitions)])
        .map_err(|e| format!("cannot keep the snapshot: {e}"))?;
    Ok(OperatorState {
        batches: vec![batch],
        watermark: None,
    })
}

/// The open request's base64 of a kept state, for a plan of `partitions`
/// partitions. A state that is not what [`from_base64`] keeps (a snapshot
/// file changed under the engine), or one kept by a plan with another
/// partition count, is refused, not handed over wrong.
pub(crate) fn to_base64(state: &OperatorState, partitions: usize) -> Result<String, StageError> {
    let broken = |why: &str| {
        StageError::new(
            ErrorCode::Internal,
            format!("the stage's committed state is not a snapshot: {why}"),
        )
    };
    let [batch] = state.batches.as_slice() else {
        return Err(broken("not one batch"));
    };
    let column = batch
        .column_by_name("snapshot")
        .and_then(|c| c.as_any().downcast_ref::<BinaryArray>())
        .ok_or_else(|| broken("no binary `snapshot` column"))?;
    let kept = batch
        .column_by_name("partitions")
        .and_then(|c| c.as_any().downcast_ref::<UInt64Array>())
        .filter(|c| c.len() == 1 && !c.is_null(0))
        .ok_or_else(|| broken("no partition count"))?
        .value(0);
    if column.len() != 1 || column.is_null(0) {
        return Err(broken("not one snapshot"));
    }
    if kept != partitions as u64 {
        return Err(StageError::new(
            ErrorCode::InvalidArgument,
            format!(
                "the stage's state was committed by a plan of {kept} partition(s), this plan has {partitions}: a partition's state would meet other rows; keep `target_partitions` (and the input's parts) as they were, or start from an empty state"
            ),
        ));
    }
    Ok(STANDARD.encode(column.value(0)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Any bytes a stage snapshots come back as they were.
        #[test]
        fn a_snapshot_survives_the_state(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let text = STANDARD.encode(&bytes);
            let state = from_base64(&text, 2).unwrap();
            prop_assert_eq!(to_base64(&state, 2).unwrap(), text);
            // another plan's partitions: refused, never handed over
            prop_assert!(to_base64(&state, 3).is_err());
        }

        /// Text that is not base64 is refused, never kept.
        #[test]
        fn text_that_is_not_base64_is_refused(text in "[^A-Za-z0-9+/=]{1,20}") {
            prop_assert!(from_base64(&text, 1).is_err());
        }
    }

    #[test]
    fn a_state_of_another_shape_is_refused() {
        assert!(to_base64(&OperatorState::default(), 1).is_err());
    }
}
