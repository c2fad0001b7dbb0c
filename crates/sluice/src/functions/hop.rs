//! `hop(ts, slide, size)`: the starts of the hopping windows `ts` falls in.
//!
//! Hopping windows are `size` long and start every `slide` (aligned to the
//! Unix epoch, as `date_bin` aligns tumbling ones). A row belongs to every
//! window with `start <= ts < start + size`, so the function returns a list
//! (ascending); `unnest` makes one row per window:
//!
//! ```sql
//! SELECT w AS window_start, auction, count(*) AS bids
//! FROM (SELECT unnest(hop(date_time, INTERVAL '2 seconds', INTERVAL '10 seconds')) AS w, auction FROM bid)
//! GROUP BY w, auction
//! ```
//!
//! In a pipeline whose source has `event_time`, such a `GROUP BY` is
//! computed across epochs like a `date_bin` one: each window is emitted
//! once, when the watermark passes `start + size`.
//!
//! - `ts`: a timestamp; the starts are `Timestamp(Microsecond)` with its time zone.
//! - `slide`, `size`: constant intervals of fixed length (no months), both
//!   positive, at most 10,000 windows per row.
//! - A null `ts` gives a null list.

use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray, ListBuilder, TimestampMicrosecondBuilder};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, TimeUnit, TimestampMicrosecondType};
use datafusion::common::{Result, ScalarValue, exec_err, plan_err};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility,
};

/// The most windows one row may fall in.
const MAX_WINDOWS: i64 = 10_000;

/// The `hop` function; see the module docs.
#[derive(Debug, PartialEq, Eq, Hash)]
pub(crate) struct Hop {
    signature: Signature,
}

impl Hop {
    pub(crate) fn new() -> Self {
        Self {
            signature: Signature::any(3, Volatility::Immutable),
        }
    }
}

/// The length of a constant interval in µs, if it has a fixed one.
pub(crate) fn interval_us(v: &ScalarValue) -> Option<i64> {
    match v {
        ScalarValue::IntervalMonthDayNano(Some(i)) if i.months == 0 => (i.days as i64)
            .checked_mul(86_400_000_000)?
            .checked_add(i.nanoseconds / 1000),
        ScalarValue::IntervalDayTime(Some(i)) => (i.days as i64)
            .checked_mul(86_400_000_000)?
            .checked_add(i.milliseconds as i64 * 1000),
        ScalarValue::DurationSecond(Some(s)) => s.checked_mul(1_000_000),
        ScalarValue::DurationMillisecond(Some(s)) => s.checked_mul(1000),
        ScalarValue::DurationMicrosecond(Some(s)) => Some(*s),
        ScalarValue::DurationNanosecond(Some(s)) => Some(s / 1000),
        _ => None,
    }
}

/// The window starts (ascending) of the `slide`-apart, `size`-long windows
/// holding `ts`; all in µs.
pub(crate) fn starts(ts: i64, slide: i64, size: i64) -> impl Iterator<Item = i64> {
    let last = ts.div_euclid(slide).saturating_mul(slide);
    // the earliest start still holding ts: start + size > ts
    let n = (size - 1).div_euclid(slide);
    (0..=n)
        .rev()
        .map(move |k| last.saturating_sub(k.saturating_mul(slide)))
        .filter(move |s| s.saturating_add(size) > ts)
}

impl ScalarUDFImpl for Hop {
    fn name(&self) -> &str {
        "hop"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, args: &[DataType]) -> Result<DataType> {
        let tz = match args.first() {
            Some(DataType::Timestamp(_, tz)) => tz.clone(),
            Some(other) => {
                return plan_err!("hop(ts, slide, size): ts must be a timestamp, got {other}");
            }
            None => return plan_err!("hop(ts, slide, size) takes three arguments"),
        };
        for (i, what) in [(1, "slide"), (2, "size")] {
            match args.get(i) {
                Some(DataType::Interval(_) | DataType::Duration(_)) => {}
                Some(other) => {
                    return plan_err!(
                        "hop(ts, slide, size): {what} must be an interval, got {other}"
                    );
                }
                None => return plan_err!("hop(ts, slide, size) takes three arguments"),
            }
        }
        Ok(DataType::new_list(
            DataType::Timestamp(TimeUnit::Microsecond, tz),
            true,
        ))
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let [ts, slide, size] = args.args.as_slice() else {
            return exec_err!("hop(ts, slide, size) takes three arguments");
        };
        let length = |v: &ColumnarValue, what: &str| -> Result<i64> {
            match v {
                ColumnarValue::Scalar(s) => match interval_us(s) {
                    Some(us) if us > 0 => Ok(us),
                    _ => exec_err!(
                        "hop: {what} must be a positive interval of fixed length (no months), got {s}"
                    ),
                },
                ColumnarValue::Array(_) => exec_err!("hop: {what} must be a constant interval"),
            }
        };
        let (slide, size) = (length(slide, "slide")?, length(size, "size")?);
        if size.div_euclid(slide) >= MAX_WINDOWS {
            return exec_err!(
                "hop: a row would fall in more than {MAX_WINDOWS} windows (size / slide); use a longer slide"
            );
        }
        let tz = match ts.data_type() {
            DataType::Timestamp(_, tz) => tz,
            other => return exec_err!("hop: ts must be a timestamp, got {other}"),
        };
        let rows = args.number_rows;
        let ts = ts.to_array(rows)?;
        let us = cast(&ts, &DataType::Timestamp(TimeUnit::Microsecond, None))?;
        let us = us.as_primitive::<TimestampMicrosecondType>();
        let per_row = (size / slide + 1) as usize;
        let mut out = ListBuilder::with_capacity(
            TimestampMicrosecondBuilder::with_capacity(rows * per_row)
                .with_timezone_opt(tz.clone()),
            rows,
        )
        .with_field(Arc::new(Field::new(
            "item",
            DataType::Timestamp(TimeUnit::Microsecond, tz),
            true,
        )));
        for t in us.iter() {
            match t {
                None => out.append_null(),
                Some(t) => {
                    out.values().extend(starts(t, slide, size).map(Some));
                    out.append(true);
                }
            }
        }
        let array = Arc::new(out.finish()) as Arc<dyn Array>;
        Ok(match args.args.first() {
            Some(ColumnarValue::Scalar(_)) => {
                ColumnarValue::Scalar(ScalarValue::try_from_array(&array, 0)?)
            }
            _ => ColumnarValue::Array(array),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_row_falls_in_size_over_slide_windows() {
        // 10 s windows every 2 s: 12.5 s is in the windows starting 4, 6, 8, 10, 12
        let s: Vec<i64> = starts(12_500_000, 2_000_000, 10_000_000).collect();
        assert_eq!(
            s,
            vec![4_000_000, 6_000_000, 8_000_000, 10_000_000, 12_000_000]
        );
        // before the Unix epoch too
        let s: Vec<i64> = starts(-1, 2, 4).collect();
        assert_eq!(s, vec![-4, -2]);
    }

    proptest! {
        #[test]
        fn the_starts_are_exactly_the_windows_holding_ts(
            ts in -1_000_000i64..1_000_000,
            slide in 1i64..1000,
            size in 1i64..5000,
        ) {
            let got: Vec<i64> = starts(ts, slide, size).collect();
            // every multiple of slide whose window holds ts, by brute force
            let lo = (ts - size).div_euclid(slide) - 1;
            let hi = ts.div_euclid(slide) + 1;
            let want: Vec<i64> = (lo..=hi)
                .map(|k| k * slide)
                .filter(|s| *s <= ts && ts < s + size)
                .collect();
            prop_assert_eq!(got, want);
        }
    }
}
