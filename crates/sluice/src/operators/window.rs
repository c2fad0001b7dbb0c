//! `operator = "window"`: each window's rows handed on together, once it closes.
//!
//! A `GROUP BY` over windows gives one row per window and key. Some work
//! needs the window's rows themselves: a top-N or a median per window, a
//! stage downstream (an external one, say) that must see a window whole.
//! This operator adds `window_start` and `window_end` to each row and emits
//! all of a window's rows in the epoch the watermark passes its end.
//!
//! ```toml
//! [stages.windowed_bids]
//! kind = "operator"
//! operator = "window"
//! inputs = ["bid"]
//! size = "10s"        # tumbling windows
//! # slide = "2s"      # hopping: a row is in every window holding it
//! # gap = "30s"       # sessions instead of size: a key's rows less than gap apart
//! # key = ["bidder"]  # sessions are per key (default: one session stream)
//! ```
//!
//! Windows are aligned to the Unix epoch, as `date_bin` and `hop()` align
//! them. A session ends `gap` after its last row. Downstream, a
//! `GROUP BY window_start` (or a window function `PARTITION BY
//! window_start`) of fixed windows is complete in every epoch, so it needs
//! no state and is not refused over a stream; session starts differ by key,
//! so they are not whole.
//!
//! State: the rows of windows not yet closed (`<stage>`), with their
//! window columns; bounded by the watermark.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, RecordBatch, TimestampMicrosecondArray, UInt32Array};
use datafusion::arrow::compute::{concat_batches, take_record_batch};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::common::{Result, internal_err};
use datafusion::physical_plan::ExecutionPlan;
use serde::Deserialize;

use super::rows::{EpochRowsExec, EpochStep, Judged, restored};
use super::{ColumnTiming, Operator, OperatorContext, OperatorFactory};
use crate::functions::hop::starts;
use crate::ops::sessions::{self, SessionColumns};
use crate::ops::window_aggregate::{WindowKind, split_closed, starts_us};
use crate::spec::values::HumanDuration;
use crate::state::{OperatorState, StateScope};

/// The options of `operator = "window"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct WindowOptions {
    #[serde(default)]
    size: Option<HumanDuration>,
    #[serde(default)]
    slide: Option<HumanDuration>,
    #[serde(default)]
    gap: Option<HumanDuration>,
    #[serde(default)]
    key: Vec<String>,
}

/// The most windows one row may fall in (as for `hop()`).
const MAX_WINDOWS: i64 = 10_000;

/// Builds `window` operators; see the module docs.
#[derive(Debug)]
pub struct WindowFactory;

fn us(d: HumanDuration, what: &str) -> std::result::Result<i64, String> {
    match i64::try_from(d.0.as_micros()) {
        Ok(us) if us > 0 => Ok(us),
        _ => Err(format!(
            "`{what}` must be longer than zero and shorter than 290,000 years"
        )),
    }
}

impl OperatorFactory for WindowFactory {
    fn create(&self, cx: &OperatorContext) -> std::result::Result<Arc<dyn Operator>, String> {
        let o: WindowOptions = cx.options()?;
        let time = cx.require_event_time("window")?;
        let names: Vec<&str> = cx
            .input
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect();
        let index = |c: &str| {
            cx.input.index_of(c).map_err(|_| {
                format!(
                    "`key` names `{c}`, which is not a column of the input ({})",
                    names.join(", ")
                )
            })
        };
        let (kind, slide_us) = match (o.size, o.slide, o.gap) {
            (Some(size), slide, None) => {
                let size_us = us(size, "size")?;
                let slide_us = match slide {
                    Some(s) => us(s, "slide")?,
                    None => size_us,
                };
                if size_us.div_euclid(slide_us) >= MAX_WINDOWS {
                    return Err(format!(
                        "a row would fall in more than {MAX_WINDOWS} windows (size / slide); use a longer slide"
                    ));
                }
                if !o.key.is_empty() {
                    return Err(
                        "`key` is for sessions (`gap`); fixed windows hold every key's rows".into(),
                    );
                }
                (WindowKind::Fixed { size_us }, slide_us)
            }
            (None, None, Some(gap)) => (
                WindowKind::Session {
                    gap_us: us(gap, "gap")?,
                },
                0,
            ),
            (None, Some(_), Some(_)) | (Some(_), _, Some(_)) => {
                return Err(
                    "set `size` (with `slide` for hopping windows) or `gap` (sessions), not both"
                        .into(),
                );
            }
            (None, _, None) => {
                return Err("set `size` for tumbling windows (and `slide` for hopping ones), or `gap` for sessions".into());
            }
        };
        for taken in ["window_start", "window_end"] {
            if names.contains(&taken) {
                return Err(format!(
                    "the input has a column `{taken}` already; the operator adds it: rename it upstream"
                ));
            }
        }
        let event_time = index(time)?;
        let DataType::Timestamp(_, tz) = cx.input.field(event_time).data_type() else {
            return Err(format!("the event time `{time}` is not a timestamp"));
        };
        let window_type = DataType::Timestamp(TimeUnit::Microsecond, tz.clone());
        let mut fields: Vec<Field> = cx
            .input
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        fields.push(Field::new("window_start", window_type.clone(), false));
        fields.push(Field::new("window_end", window_type.clone(), false));
        Ok(Arc::new(Window {
            judged: Judged {
                stage: cx.stage.clone(),
                event_time,
                sources: cx.sources.clone(),
                late: cx.late,
            },
            kind,
            slide_us,
            key: o
                .key
                .iter()
                .map(|c| index(c))
                .collect::<Result<Vec<_>, _>>()?,
            window_type,
            schema: Arc::new(Schema::new(fields)),
        }))
    }
}

/// A `window` stage; see the module docs.
#[derive(Debug, Clone)]
struct Window {
    judged: Judged,
    kind: WindowKind,
    /// For fixed windows: the slide (the size for tumbling ones).
    slide_us: i64,
    /// For sessions: the key columns.
    key: Vec<usize>,
    /// The type of `window_start` and `window_end`.
    window_type: DataType,
    schema: SchemaRef,
}

impl Operator for Window {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }
    fn plan(&self, input: Arc<dyn ExecutionPlan>) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(Arc::new(EpochRowsExec::new(
            self.judged.clone(),
            Arc::new(self.clone()),
            input,
            Arc::clone(&self.schema),
        )))
    }
    fn column_timing(&self, index: usize) -> ColumnTiming {
        match self.kind {
            WindowKind::Fixed { size_us } if index == self.start_column() => {
                ColumnTiming::WindowStart { size_us }
            }
            // rows come out late (at their window's end): their event time
            // no longer meets the watermark
            _ => ColumnTiming::Other,
        }
    }
}

impl Window {
    fn start_column(&self) -> usize {
        self.schema.fields().len() - 2
    }

    /// The epoch's rows, one per window each falls in, with the window columns.
    fn assign(&self, batch: &RecordBatch) -> Result<RecordBatch> {
        let times = starts_us(batch, self.judged.event_time)?;
        let mut rows: Vec<u32> = Vec::with_capacity(batch.num_rows());
        let mut window_starts: Vec<i64> = Vec::with_capacity(batch.num_rows());
        let mut window_ends: Vec<i64> = Vec::with_capacity(batch.num_rows());
        for (row, t) in times.iter().enumerate() {
            // behind an EventTimeExec a row has an event time; without one
            // it has no window to be in
            let Some(t) = t else { continue };
            let Ok(row) = u32::try_from(row) else {
                return internal_err!("a batch of more than 4 billion rows");
            };
            match self.kind {
                WindowKind::Fixed { size_us } => {
                    for s in starts(t, self.slide_us, size_us) {
                        rows.push(row);
                        window_starts.push(s);
                        window_ends.push(s.saturating_add(size_us));
                    }
                }
                WindowKind::Session { gap_us } => {
                    rows.push(row);
                    window_starts.push(t);
                    window_ends.push(t.saturating_add(gap_us));
                }
            }
        }
        let taken = take_record_batch(batch, &UInt32Array::from(rows))?;
        let mut columns: Vec<ArrayRef> = taken.columns().to_vec();
        for values in [window_starts, window_ends] {
            columns.push(Arc::new(
                TimestampMicrosecondArray::from(values).with_data_type(self.window_type.clone()),
            ));
        }
        Ok(RecordBatch::try_new(Arc::clone(&self.schema), columns)?)
    }
}

impl EpochStep for Window {
    fn describe(&self) -> String {
        self.kind.describe()
    }

    fn run(
        &self,
        fresh: Vec<RecordBatch>,
        scope: &StateScope,
        _before: Option<i64>,
        after: Option<i64>,
    ) -> Result<Vec<RecordBatch>> {
        let mut all = restored(
            &self.judged.stage,
            "rows of open windows",
            scope.previous(&self.judged.stage),
            &self.schema,
        )?;
        for b in fresh.iter().filter(|b| b.num_rows() > 0) {
            all.push(self.assign(b)?);
        }
        all.retain(|b| b.num_rows() > 0);
        let mut all = vec![concat_batches(&self.schema, &all)?];
        let start = self.start_column();
        if let WindowKind::Session { .. } = self.kind {
            let at = SessionColumns {
                keys: self.key.clone(),
                start,
                end: start + 1,
            };
            all = vec![sessions::assign(&all[0], &at)?];
        }
        // a window closes when the watermark reaches its end
        let (closed, open) = split_closed(&all, start + 1, 0, after)?;
        scope.save(
            &self.judged.stage,
            OperatorState {
                batches: vec![concat_batches(&self.schema, &open)?],
                watermark: after,
            },
        );
        Ok(closed)
    }
}
