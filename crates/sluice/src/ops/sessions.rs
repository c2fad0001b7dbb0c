//! Session windows inside [`super::window_aggregate::WindowAggregateExec`].
//!
//! `GROUP BY k, session(ts, gap)` is aggregated first by `(k, ts)`: each
//! such group is a session of its own, `[ts, ts + gap)`. The operator keeps
//! one row of accumulator states per open session, with the session's end
//! in an extra column after the group keys ([`SESSION_END`]). Each epoch:
//!
//! 1. the epoch's groups become sessions ([`as_sessions`]) beside the kept ones;
//! 2. sessions of a key that overlap are given one start and one end
//!    ([`assign`]): sorted by key and start, a session joins the one before
//!    when it starts before that one's end;
//! 3. DataFusion merges the states of rows with the same key, start and end
//!    ([`group_by`], `PartialReduce`), one row per session;
//! 4. a session whose end the watermark passed can grow no more (a row
//!    joining it would be behind the watermark): it is finished and emitted.
//!
//! The sort and the sweep of step 2 are the only row-by-row work; no Arrow
//! kernel groups a key's runs by distance.

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, RecordBatch, TimestampMicrosecondArray, UInt32Array,
};
use datafusion::arrow::compute::take;
use datafusion::arrow::datatypes::{
    DataType, Field, Schema, SchemaRef, TimeUnit, TimestampMicrosecondType,
};
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::common::{Result, internal_err};
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_plan::aggregates::PhysicalGroupBy;

use super::window_aggregate::starts_us;

/// The column of a session's end in the kept state.
pub(crate) const SESSION_END: &str = "__sluice_session_end";

/// The kept state's schema: the partial aggregate's (`groups` keys, then
/// the accumulators' states) with [`SESSION_END`] after the keys.
pub(crate) fn state_schema(partial: &Schema, groups: usize) -> SchemaRef {
    let mut fields: Vec<Arc<Field>> = partial.fields().iter().cloned().collect();
    fields.insert(
        groups,
        Arc::new(Field::new(
            SESSION_END,
            DataType::Timestamp(TimeUnit::Microsecond, None),
            true,
        )),
    );
    Arc::new(Schema::new(fields))
}

/// The `PartialReduce` grouping of kept states: the keys and the end.
pub(crate) fn group_by(partial: &PhysicalGroupBy) -> PhysicalGroupBy {
    let mut expr = partial.as_final().expr().to_vec();
    let end = expr.len();
    expr.push((Arc::new(Column::new(SESSION_END, end)), SESSION_END.into()));
    PhysicalGroupBy::new_single(expr)
}

/// Partial states grouped by key and event time (column `window`) as
/// sessions of their own, `gap_us` long, in `schema` ([`state_schema`]).
pub(crate) fn as_sessions(
    batch: &RecordBatch,
    schema: &SchemaRef,
    groups: usize,
    window: usize,
    gap_us: i64,
) -> Result<RecordBatch> {
    let ends: TimestampMicrosecondArray = starts_us(batch, window)?
        .unary::<_, TimestampMicrosecondType>(|start| start.saturating_add(gap_us));
    let mut columns = batch.columns().to_vec();
    columns.insert(groups, Arc::new(ends) as ArrayRef);
    Ok(RecordBatch::try_new(Arc::clone(schema), columns)?)
}

/// Where a batch of sessions holds what [`assign`] reads and rewrites.
#[derive(Debug, Clone)]
pub(crate) struct SessionColumns {
    /// The key's columns.
    pub keys: Vec<usize>,
    /// The session's start (any timestamp type).
    pub start: usize,
    /// The session's end (`Timestamp(Microsecond)`, any time zone).
    pub end: usize,
}

impl SessionColumns {
    /// The layout of [`state_schema`]: keys, then the end.
    pub(crate) fn of_state(groups: usize, window: usize) -> Self {
        Self {
            keys: (0..groups).filter(|i| *i != window).collect(),
            start: window,
            end: groups,
        }
    }
}

/// `batch` (sessions kept and new ones) with the start and the end of every
/// row set to those of the session it merges into; see the module docs.
pub(crate) fn assign(batch: &RecordBatch, at: &SessionColumns) -> Result<RecordBatch> {
    let n = batch.num_rows();
    if n == 0 {
        return Ok(batch.clone());
    }
    let Ok(n32) = u32::try_from(n) else {
        return internal_err!("{n} open sessions in one epoch: more than a batch can index");
    };
    let keys: Vec<ArrayRef> = at
        .keys
        .iter()
        .map(|i| Arc::clone(batch.column(*i)))
        .collect();
    let starts = starts_us(batch, at.start)?;
    let Some(ends) = batch
        .column(at.end)
        .as_primitive_opt::<TimestampMicrosecondType>()
    else {
        return internal_err!("a session's end is not a Timestamp(Microsecond)");
    };

    // rows by key, then start
    let mut sort_columns = keys.clone();
    sort_columns.push(Arc::new(starts.clone()));
    let by_key_and_start = RowConverter::new(
        sort_columns
            .iter()
            .map(|c| SortField::new(c.data_type().clone()))
            .collect(),
    )?
    .convert_columns(&sort_columns)?;
    let mut order: Vec<u32> = (0..n32).collect();
    order.sort_unstable_by(|a, b| {
        by_key_and_start
            .row(*a as usize)
            .cmp(&by_key_and_start.row(*b as usize))
    });
    let key_rows = RowConverter::new(
        keys.iter()
            .map(|c| SortField::new(c.data_type().clone()))
            .collect(),
    )?
    .convert_columns(&keys)?;
    // without key columns every row is of the one key (and the converter
    // gives no rows to compare)
    let same_key =
        |a: u32, b: u32| keys.is_empty() || key_rows.row(a as usize) == key_rows.row(b as usize);
    let end_of = |i: u32| ends.is_valid(i as usize).then(|| ends.value(i as usize));

    // the sweep: each row's session, as the row its session starts with
    let mut first_of = vec![0u32; n];
    let mut end = vec![None; n];
    let mut session: Vec<u32> = Vec::new();
    let mut session_end: Option<i64> = None;
    let mut close = |rows: &mut Vec<u32>, at: Option<i64>| {
        for r in rows.drain(..) {
            end[r as usize] = at;
        }
    };
    for (i, &row) in order.iter().enumerate() {
        let joins = i > 0
            && same_key(order[i - 1], row)
            && starts.is_valid(row as usize)
            && session_end.is_some_and(|e| starts.value(row as usize) < e);
        if joins {
            session_end = session_end.max(end_of(row));
        } else {
            close(&mut session, session_end);
            session_end = end_of(row);
        }
        first_of[row as usize] = session.first().copied().unwrap_or(row);
        session.push(row);
    }
    close(&mut session, session_end);

    let mut columns = batch.columns().to_vec();
    columns[at.start] = take(batch.column(at.start), &UInt32Array::from(first_of), None)?;
    columns[at.end] = Arc::new(
        TimestampMicrosecondArray::from(end)
            .with_data_type(batch.column(at.end).data_type().clone()),
    );
    Ok(RecordBatch::try_new(batch.schema(), columns)?)
}

/// Kept session states without [`SESSION_END`]: the partial aggregate's
/// schema again, for the `Final` aggregate.
pub(crate) fn without_end(batch: &RecordBatch, groups: usize) -> Result<RecordBatch> {
    let keep: Vec<usize> = (0..batch.num_columns()).filter(|i| *i != groups).collect();
    Ok(batch.project(&keep)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Int64Array, StringArray};
    use proptest::prelude::*;

    /// Sessions of (key, ts) rows, `gap` apart at most, by brute force:
    /// (key, start, end) of each row's session.
    fn brute(rows: &[(String, i64)], gap: i64) -> Vec<(String, i64, i64)> {
        rows.iter()
            .map(|(k, t)| {
                let mut same: Vec<i64> = rows
                    .iter()
                    .filter(|(k2, _)| k2 == k)
                    .map(|(_, t2)| *t2)
                    .collect();
                same.sort_unstable();
                // grow the run around t in both directions
                let i = same.iter().position(|x| x == t).unwrap();
                let (mut lo, mut hi) = (i, i);
                while lo > 0 && same[lo] - same[lo - 1] < gap {
                    lo -= 1;
                }
                while hi + 1 < same.len() && same[hi + 1] - same[hi] < gap {
                    hi += 1;
                }
                (k.clone(), same[lo], same[hi] + gap)
            })
            .collect()
    }

    fn batch(rows: &[(String, i64)], gap: i64) -> RecordBatch {
        let partial = Schema::new(vec![
            Field::new("k", DataType::Utf8, true),
            Field::new("ts", DataType::Timestamp(TimeUnit::Microsecond, None), true),
            Field::new("n", DataType::Int64, true),
        ]);
        let b = RecordBatch::try_new(
            Arc::new(partial.clone()),
            vec![
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| &r.0))),
                Arc::new(TimestampMicrosecondArray::from_iter_values(
                    rows.iter().map(|r| r.1),
                )),
                Arc::new(Int64Array::from_iter_values(0..rows.len() as i64)),
            ],
        )
        .unwrap();
        as_sessions(&b, &state_schema(&partial, 2), 2, 1, gap).unwrap()
    }

    proptest! {
        #[test]
        fn every_row_gets_the_start_and_end_of_its_run(
            rows in proptest::collection::vec(("[abc]", 0i64..200), 0..60),
            gap in 1i64..30,
        ) {
            let rows: Vec<(String, i64)> = rows;
            let got = assign(&batch(&rows, gap), &SessionColumns::of_state(2, 1)).unwrap();
            let keys = got.column(0).as_string::<i32>();
            let starts = got.column(1).as_primitive::<TimestampMicrosecondType>();
            let ends = got.column(2).as_primitive::<TimestampMicrosecondType>();
            let got: Vec<(String, i64, i64)> = (0..got.num_rows())
                .map(|i| (keys.value(i).to_string(), starts.value(i), ends.value(i)))
                .collect();
            prop_assert_eq!(got, brute(&rows, gap));
        }
    }

    #[test]
    fn a_kept_session_bridged_by_a_new_row_merges_with_the_next() {
        // kept: [0, 15) and [25, 40); a row at 12 (gap 15: [12, 27)) reaches both
        let schema = state_schema(
            &Schema::new(vec![
                Field::new("ts", DataType::Timestamp(TimeUnit::Microsecond, None), true),
                Field::new("n", DataType::Int64, true),
            ]),
            1,
        );
        let b = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(TimestampMicrosecondArray::from(vec![0, 25, 12])),
                Arc::new(TimestampMicrosecondArray::from(vec![15, 40, 27])),
                Arc::new(Int64Array::from(vec![1, 2, 3])),
            ],
        )
        .unwrap();
        let got = assign(&b, &SessionColumns::of_state(1, 0)).unwrap();
        let starts = got.column(0).as_primitive::<TimestampMicrosecondType>();
        let ends = got.column(1).as_primitive::<TimestampMicrosecondType>();
        assert_eq!(starts.values().to_vec(), vec![0, 0, 0]);
        assert_eq!(ends.values().to_vec(), vec![40, 40, 40]);
    }
}
