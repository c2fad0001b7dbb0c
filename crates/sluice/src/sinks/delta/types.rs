//! The Arrow types a Delta table can hold, and the casts that get a batch there.
//!
//! Delta has fewer types than Arrow: timestamps are microseconds, either
//! without a zone (`timestamp_ntz`) or in UTC (`timestamp`); there are no
//! unsigned integers and no 64-bit dates. The delta sink writes its files in
//! the table's types, so that every Delta reader reads the same values sluice
//! computed. Each cast keeps every value or refuses the batch, naming the
//! column and a value it could not keep: a nanosecond timestamp with a
//! sub-microsecond part is refused, never truncated.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, RecordBatch, RecordBatchOptions};
use datafusion::arrow::compute::kernels::cmp::eq;
use datafusion::arrow::compute::{CastOptions, cast_with_options};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};

/// The Delta-readable type of a top-level column, when it differs from `t`.
/// Nested types are left as they are (the table's creation refuses those
/// Delta cannot hold, naming them).
fn delta_type(t: &DataType) -> Option<DataType> {
    match t {
        DataType::Timestamp(unit, tz) => {
            let utc = tz.as_ref().map(|_| Arc::<str>::from("UTC"));
            let same_zone = match (tz, &utc) {
                (Some(a), Some(b)) => a == b,
                (None, None) => true,
                _ => false,
            };
            (*unit != TimeUnit::Microsecond || !same_zone)
                .then_some(DataType::Timestamp(TimeUnit::Microsecond, utc))
        }
        DataType::Date64 => Some(DataType::Date32),
        DataType::UInt8 => Some(DataType::Int16),
        DataType::UInt16 => Some(DataType::Int32),
        DataType::UInt32 | DataType::UInt64 => Some(DataType::Int64),
        _ => None,
    }
}

/// `schema` with every column in a type Delta holds, metadata kept; `None`
/// when it already is.
pub(super) fn delta_schema(schema: &SchemaRef) -> Option<SchemaRef> {
    let mut changed = false;
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| match delta_type(f.data_type()) {
            Some(t) => {
                changed = true;
                f.as_ref().clone().with_data_type(t)
            }
            None => f.as_ref().clone(),
        })
        .collect();
    changed.then(|| Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone())))
}

/// `batch` cast to `target` (from [`delta_schema`]), column by column with
/// Arrow's kernels; an error names the column and a value the cast would
/// change.
pub(super) fn conform(batch: &RecordBatch, target: &SchemaRef) -> Result<RecordBatch, String> {
    let columns = batch
        .columns()
        .iter()
        .zip(target.fields())
        .map(|(column, field)| {
            if column.data_type() == field.data_type() {
                Ok(Arc::clone(column))
            } else {
                lossless_cast(column, field.data_type())
                    .map_err(|m| format!("column `{}`: {m}", field.name()))
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    RecordBatch::try_new_with_options(
        Arc::clone(target),
        columns,
        &RecordBatchOptions::new().with_row_count(Some(batch.num_rows())),
    )
    .map_err(|e| e.to_string())
}

/// Casts `column` to `to`, refusing when a value would change: the cast
/// back must give every value again (Arrow's casts truncate nanoseconds and
/// milliseconds of a day silently; an integer that does not fit is an error
/// with `safe: false`).
fn lossless_cast(column: &ArrayRef, to: &DataType) -> Result<ArrayRef, String> {
    let strict = CastOptions {
        safe: false,
        ..Default::default()
    };
    let cast = cast_with_options(column, to, &strict).map_err(|e| {
        format!(
            "a value of type {} does not fit Delta's {to}: {e}",
            column.data_type()
        )
    })?;
    let back = cast_with_options(&cast, column.data_type(), &strict).map_err(|e| e.to_string())?;
    let same = eq(&back, column).map_err(|e| e.to_string())?;
    // nulls compare as null; every non-null value must compare equal
    if same.true_count() == column.len() - column.null_count() {
        return Ok(cast);
    }
    let row = (0..column.len())
        .find(|&i| column.is_valid(i) && !same.value(i))
        .unwrap_or(0);
    let text = ArrayFormatter::try_new(column.as_ref(), &FormatOptions::default())
        .map(|f| f.value(row).to_string())
        .unwrap_or_default();
    Err(format!(
        "{text} ({}) cannot be held by Delta's {to} without changing it; cast the column in SQL (e.g. date_trunc) to say how it may change",
        column.data_type()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{
        Date64Array, Int64Array, TimestampNanosecondArray, TimestampSecondArray, UInt64Array,
    };
    use proptest::prelude::*;

    fn batch_of(column: ArrayRef) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![Field::new(
            "c",
            column.data_type().clone(),
            true,
        )]));
        RecordBatch::try_new(schema, vec![column]).unwrap()
    }

    fn to_delta(column: ArrayRef) -> Result<RecordBatch, String> {
        let batch = batch_of(column);
        let target = delta_schema(batch.schema_ref()).expect("a type Delta lacks");
        conform(&batch, &target)
    }

    #[test]
    fn zoned_timestamps_become_utc_microseconds_at_the_same_instant() {
        let t = TimestampSecondArray::from(vec![Some(1_700_000_000), None])
            .with_timezone("Europe/Berlin");
        let out = to_delta(Arc::new(t)).unwrap();
        assert_eq!(
            out.schema().field(0).data_type(),
            &DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
        );
        let us = out
            .column(0)
            .as_any()
            .downcast_ref::<datafusion::arrow::array::TimestampMicrosecondArray>()
            .unwrap();
        assert_eq!(us.value(0), 1_700_000_000_000_000);
        assert!(us.is_null(1));
    }

    #[test]
    fn a_sub_microsecond_part_is_refused_and_named() {
        let t = TimestampNanosecondArray::from(vec![1_000, 1_001]);
        let e = to_delta(Arc::new(t)).unwrap_err();
        assert!(e.contains("column `c`"), "{e}");
        assert!(e.contains("00.000001001"), "{e}");
    }

    #[test]
    fn an_unsigned_value_past_i64_is_refused() {
        let e = to_delta(Arc::new(UInt64Array::from(vec![1, u64::MAX]))).unwrap_err();
        assert!(e.contains("column `c`"), "{e}");
        let ok = to_delta(Arc::new(UInt64Array::from(vec![1, i64::MAX as u64]))).unwrap();
        let v = ok.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
        assert_eq!(v.value(1), i64::MAX);
    }

    #[test]
    fn a_date64_off_midnight_is_refused() {
        assert!(to_delta(Arc::new(Date64Array::from(vec![86_400_000 * 3]))).is_ok());
        assert!(to_delta(Arc::new(Date64Array::from(vec![86_400_000 * 3 + 1]))).is_err());
    }

    #[test]
    fn types_delta_holds_are_left_alone() {
        let s = Arc::new(Schema::new(vec![
            Field::new("a", DataType::Int64, true),
            Field::new("b", DataType::Utf8View, true),
            Field::new("c", DataType::Timestamp(TimeUnit::Microsecond, None), true),
            Field::new(
                "d",
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                true,
            ),
        ]));
        assert!(delta_schema(&s).is_none());
    }

    proptest! {
        /// Every nanosecond value is either kept exactly (as microseconds)
        /// or refused; none is changed.
        #[test]
        fn nanoseconds_are_kept_or_refused(values in proptest::collection::vec(proptest::option::of(any::<i64>()), 1..40)) {
            let column: ArrayRef = Arc::new(TimestampNanosecondArray::from(values.clone()));
            match to_delta(column) {
                Ok(out) => {
                    let us = out.column(0).as_any().downcast_ref::<datafusion::arrow::array::TimestampMicrosecondArray>().unwrap();
                    for (i, v) in values.iter().enumerate() {
                        match v {
                            Some(ns) => prop_assert_eq!(us.value(i) as i128 * 1000, *ns as i128),
                            None => prop_assert!(us.is_null(i)),
                        }
                    }
                }
                Err(_) => prop_assert!(values.iter().flatten().any(|ns| ns % 1000 != 0)),
            }
        }
    }
}
