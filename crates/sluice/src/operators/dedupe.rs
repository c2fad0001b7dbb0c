//! `operator = "dedupe"`: a key's first row, its repeats within a horizon dropped.
//!
//! ```toml
//! [stages.unique_bids]
//! kind = "operator"
//! operator = "dedupe"
//! inputs = ["bid"]
//! key = ["auction", "bidder"]   # the columns that make a row the same
//! within = "10s"                # event-time horizon
//! ```
//!
//! Taken in event-time order, a key's row is kept when no kept row of the
//! key is less than `within` before it, and dropped otherwise. Rows of the
//! same key and event time are taken in the order of their values, so the
//! kept one does not depend on arrival order.
//!
//! Rows arrive out of order (up to the source's `watermark` bound), and a
//! row that comes later may be earlier in event time. So a row waits until
//! the watermark passes its event time; only then is it judged and, when
//! kept, emitted. That makes the output the same as this rule applied to
//! the whole input at once, however the input is cut into epochs; the
//! price is a delay of the watermark bound. The event time flows on: a
//! window or dedupe downstream may use it.
//!
//! State: the rows still waiting (`<stage>`), and each key's last kept
//! event time (`<stage>.keys`), evicted once the watermark passes it +
//! `within` (a row judged after that is kept anyway). Both are bounded by
//! the watermark: by the keys seen in the last `within` plus the bound.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, BooleanArray, RecordBatch, TimestampMicrosecondArray, UInt32Array,
};
use datafusion::arrow::compute::kernels::cmp::lt;
use datafusion::arrow::compute::{cast, concat_batches, filter_record_batch, take_record_batch};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::row::{OwnedRow, RowConverter, SortField};
use datafusion::common::Result;
use datafusion::physical_plan::ExecutionPlan;
use serde::Deserialize;

use super::rows::{EpochRowsExec, EpochStep, Judged, restored};
use super::{ColumnTiming, Operator, OperatorContext, OperatorFactory};
use crate::ops::window_aggregate::{humantime_us, starts_us};
use crate::spec::values::HumanDuration;
use crate::state::clock::END_OF_TIME;
use crate::state::{OperatorState, StateScope};

/// The options of `operator = "dedupe"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct DedupeOptions {
    /// The columns that make two rows the same.
    key: Vec<String>,
    /// The event-time horizon.
    within: HumanDuration,
}

/// Builds `dedupe` operators; see the module docs.
#[derive(Debug)]
pub struct DedupeFactory;

impl OperatorFactory for DedupeFactory {
    fn create(&self, cx: &OperatorContext) -> std::result::Result<Arc<dyn Operator>, String> {
        let options: DedupeOptions = cx.options()?;
        let time = cx.require_event_time("dedupe")?;
        let index = |c: &str| {
            cx.input.index_of(c).map_err(|_| {
                let names: Vec<&str> = cx
                    .input
                    .fields()
                    .iter()
                    .map(|f| f.name().as_str())
                    .collect();
                format!(
                    "`key` names `{c}`, which is not a column of the input ({})",
                    names.join(", ")
                )
            })
        };
        if options.key.is_empty() {
            return Err(
                "`key` lists no column; name the columns that make two rows the same".into(),
            );
        }
        let key = options
            .key
            .iter()
            .map(|c| index(c))
            .collect::<Result<Vec<_>, _>>()?;
        let within_us = i64::try_from(options.within.0.as_micros()).unwrap_or(i64::MAX);
        if within_us <= 0 {
            return Err("`within` must be longer than zero".into());
        }
        Ok(Arc::new(Dedupe {
            judged: Judged {
                stage: cx.stage.clone(),
                event_time: index(time)?,
                sources: cx.sources.clone(),
                late: cx.late,
            },
            key,
            within_us,
            schema: Arc::clone(&cx.input),
        }))
    }
}

/// A `dedupe` stage; see the module docs.
#[derive(Debug, Clone)]
struct Dedupe {
    judged: Judged,
    /// Key columns of the input.
    key: Vec<usize>,
    within_us: i64,
    schema: SchemaRef,
}

impl Operator for Dedupe {
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
        // a row is emitted in the epoch whose watermark passes it, never later
        ColumnTiming::Input(index)
    }
}

impl Dedupe {
    fn keys_name(&self) -> String {
        format!("{}.keys", self.judged.stage)
    }

    /// The schema of `<stage>.keys`: the key columns and the last kept time.
    fn keys_schema(&self) -> SchemaRef {
        let mut fields: Vec<Field> = self
            .key
            .iter()
            .map(|i| self.schema.field(*i).clone().with_nullable(true))
            .collect();
        fields.push(Field::new(
            "last_kept",
            DataType::Timestamp(TimeUnit::Microsecond, None),
            false,
        ));
        Arc::new(Schema::new(fields))
    }

    fn key_converter(&self) -> Result<RowConverter> {
        Ok(RowConverter::new(
            self.key
                .iter()
                .map(|i| SortField::new(self.schema.field(*i).data_type().clone()))
                .collect(),
        )?)
    }

    /// Each key's last kept event time, from the saved state.
    fn last_kept(&self, scope: &StateScope, keys: &RowConverter) -> Result<HashMap<OwnedRow, i64>> {
        let mut out = HashMap::new();
        let saved = restored(
            &self.judged.stage,
            "keys",
            scope.previous(&self.keys_name()),
            &self.keys_schema(),
        )?;
        let n = self.key.len();
        for b in &saved {
            let rows = keys.convert_columns(&b.columns()[..n])?;
            let times = starts_us(b, n)?;
            for (i, row) in rows.iter().enumerate() {
                out.insert(row.owned(), times.value(i));
            }
        }
        Ok(out)
    }
}

impl EpochStep for Dedupe {
    fn describe(&self) -> String {
        let names: Vec<&str> = self
            .key
            .iter()
            .map(|i| self.schema.field(*i).name().as_str())
            .collect();
        format!(
            "dedupe key=[{}] within={}",
            names.join(", "),
            humantime_us(self.within_us)
        )
    }

    fn run(
        &self,
        fresh: Vec<RecordBatch>,
        scope: &StateScope,
        _before: Option<i64>,
        after: Option<i64>,
    ) -> Result<Vec<RecordBatch>> {
        // the rows waiting and the epoch's, split at the watermark
        let mut all = restored(
            &self.judged.stage,
            "rows waiting for the watermark",
            scope.previous(&self.judged.stage),
            &self.schema,
        )?;
        all.extend(fresh);
        all.retain(|b| b.num_rows() > 0);
        let all = concat_batches(&self.schema, &all)?;
        let (ready, waiting) = match after {
            // (an empty batch of its own: a slice would keep the buffers alive in the state)
            None => (RecordBatch::new_empty(Arc::clone(&self.schema)), all),
            Some(END_OF_TIME) => (all, RecordBatch::new_empty(Arc::clone(&self.schema))),
            Some(wm) => {
                let times = starts_us(&all, self.judged.event_time)?;
                let ready = lt(&times, &TimestampMicrosecondArray::new_scalar(wm))?;
                // a row without event time has nothing to wait for
                let ready = BooleanArray::from_iter(ready.iter().map(|r| Some(r != Some(false))));
                (
                    filter_record_batch(&all, &ready)?,
                    filter_record_batch(&all, &datafusion::arrow::compute::not(&ready)?)?,
                )
            }
        };
        scope.save(
            &self.judged.stage,
            OperatorState {
                batches: vec![waiting],
                watermark: after,
            },
        );

        // the ready rows in key and event-time order, each judged against the last kept
        let keys = self.key_converter()?;
        let mut last = self.last_kept(scope, &keys)?;
        let out = if ready.num_rows() == 0 {
            ready
        } else {
            let order = self.order(&ready)?;
            let ready = take_record_batch(&ready, &order)?;
            let key_rows = keys.convert_columns(
                &self
                    .key
                    .iter()
                    .map(|i| Arc::clone(ready.column(*i)))
                    .collect::<Vec<ArrayRef>>(),
            )?;
            let times = starts_us(&ready, self.judged.event_time)?;
            let mut keep = Vec::with_capacity(ready.num_rows());
            for (i, row) in key_rows.iter().enumerate() {
                // a null event time (none behind an EventTimeExec) counts as
                // the earliest: one such row per key is kept until the next
                // watermark
                let t = if times.is_valid(i) {
                    times.value(i)
                } else {
                    i64::MIN
                };
                let row = row.owned();
                let kept = match last.get(&row) {
                    Some(&l) => t >= l.saturating_add(self.within_us),
                    None => true,
                };
                if kept {
                    last.insert(row, t);
                }
                keep.push(kept);
            }
            filter_record_batch(&ready, &BooleanArray::from(keep))?
        };

        // keys a row to come can still repeat
        let live: Vec<(OwnedRow, i64)> = last
            .into_iter()
            .filter(|(_, t)| match after {
                None => true,
                Some(wm) => t.saturating_add(self.within_us) > wm,
            })
            .collect();
        let mut columns = keys.convert_rows(live.iter().map(|(r, _)| r.row()))?;
        columns.push(Arc::new(TimestampMicrosecondArray::from_iter_values(
            live.iter().map(|(_, t)| *t),
        )));
        let schema = self.keys_schema();
        // the row format gives dictionaries back as their values
        let columns = columns
            .iter()
            .zip(schema.fields())
            .map(|(c, f)| cast(c, f.data_type()))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        scope.save(
            &self.keys_name(),
            OperatorState {
                batches: vec![RecordBatch::try_new(schema, columns)?],
                watermark: after,
            },
        );
        Ok(vec![out])
    }
}

impl Dedupe {
    /// Row order of `batch` by key, event time, then every column.
    fn order(&self, batch: &RecordBatch) -> Result<UInt32Array> {
        let mut columns: Vec<ArrayRef> = self
            .key
            .iter()
            .map(|i| Arc::clone(batch.column(*i)))
            .collect();
        columns.push(Arc::new(starts_us(batch, self.judged.event_time)?));
        columns.extend(batch.columns().iter().cloned());
        let converter = RowConverter::new(
            columns
                .iter()
                .map(|c| SortField::new(c.data_type().clone()))
                .collect(),
        )?;
        let rows = converter.convert_columns(&columns)?;
        let Ok(n) = u32::try_from(batch.num_rows()) else {
            return datafusion::common::internal_err!("a batch of more than 4 billion rows");
        };
        let mut order: Vec<u32> = (0..n).collect();
        order.sort_unstable_by(|a, b| rows.row(*a as usize).cmp(&rows.row(*b as usize)));
        Ok(UInt32Array::from(order))
    }
}
