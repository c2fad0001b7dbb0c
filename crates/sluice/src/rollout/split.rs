//! The canary split: which rows of a stage's input go to the variant.
//!
//! A row goes to the variant when a stable hash of its `by` columns falls in
//! the first `percent` of 10,000 buckets. The hash is sluice's own (FNV-1a
//! over a canonical encoding, then a 64-bit finalizer), not DataFusion's,
//! whose seeds may change between releases: a replayed epoch must split the
//! same way after an upgrade. Integers of any width hash as the same i64, so
//! an `Int32` key and its `Int64` cast go the same way; strings and bytes of
//! every layout hash as their bytes (a `Utf8View` key and its `Utf8` cast go
//! the same way); other types hash their text form. A type with no text
//! form (a struct, a list) cannot be a `by` column: `validate` says so.
//!
//! [`CanarySplitNode`] / [`CanarySplitExec`] sit at the input of each branch
//! of a rolled-out stage: the primary's keeps the rows outside the canary,
//! the variant's the rows inside it. They filter only in an epoch whose
//! choice is `canary`; otherwise rows pass untouched.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{Array, ArrayRef, AsArray, BooleanArray, RecordBatch};
use datafusion::arrow::compute::{can_cast_types, cast, filter_record_batch};
use datafusion::arrow::datatypes::{DataType, Int64Type, SchemaRef};
use datafusion::catalog::Session;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DFSchemaRef, Result, internal_datafusion_err};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::{
    Expr, LogicalPlan, UserDefinedLogicalNode, UserDefinedLogicalNodeCore,
};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, PhysicalExpr, PlanProperties,
};
use datafusion::physical_planner::{ExtensionPlanner, PhysicalPlanner};
use futures::StreamExt;

use super::config::Mode;
use crate::epoch::EpochBinding;

/// Buckets a row hash falls in; `percent` selects the first `percent × 100`.
pub(crate) const BUCKETS: u64 = 10_000;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
const NULL_MARK: u64 = 0x9e37_79b9_7f4a_7c15;

fn fnv(mut h: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    h
}

/// splitmix64's finalizer: spreads FNV's low-entropy high bits.
fn finish(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// How a column is hashed: integers (that fit) as i64, strings and bytes
/// as themselves, everything else in its text form.
enum Form {
    Int,
    Bytes,
    Text,
}

fn form(t: &DataType) -> Form {
    match t {
        DataType::Int8
        | DataType::Int16
        | DataType::Int32
        | DataType::Int64
        | DataType::UInt8
        | DataType::UInt16
        | DataType::UInt32 => Form::Int,
        DataType::Utf8
        | DataType::LargeUtf8
        | DataType::Utf8View
        | DataType::Binary
        | DataType::LargeBinary
        | DataType::BinaryView => Form::Bytes,
        _ => Form::Text,
    }
}

/// Whether a column of type `t` can be a `by` column; checked when the
/// pipeline is planned, so that no epoch fails on it. Nested types are
/// refused: their text form is a rendering that may change between Arrow
/// releases, and a replay must split as the first run did.
pub(crate) fn can_split_by(t: &DataType) -> bool {
    match form(t) {
        Form::Int | Form::Bytes => true,
        Form::Text if t.is_nested() => false,
        Form::Text => match t {
            DataType::Dictionary(_, v) => can_split_by(v),
            _ => can_cast_types(t, &DataType::Utf8),
        },
    }
}

/// Mixes one value's bytes (or its NULL) into each row's hash. The length
/// goes first: ("ab","c") and ("a","bc") differ.
fn mix_bytes<'a>(hashes: &mut [u64], values: impl Iterator<Item = Option<&'a [u8]>>) {
    for (h, v) in hashes.iter_mut().zip(values) {
        *h = match v {
            None => fnv(*h, &NULL_MARK.to_le_bytes()),
            Some(v) => fnv(fnv(*h, &(v.len() as u64).to_le_bytes()), v),
        };
    }
}

/// The split hash of every row of `columns` (one value per row).
pub(crate) fn row_hashes(columns: &[ArrayRef], rows: usize) -> Result<Vec<u64>> {
    let mut hashes = vec![FNV_OFFSET; rows];
    for col in columns {
        let h = &mut hashes;
        match (form(col.data_type()), col.data_type()) {
            (Form::Int, _) => {
                let c = cast(col, &DataType::Int64)?;
                let a = c.as_primitive::<Int64Type>();
                for (i, h) in h.iter_mut().enumerate() {
                    *h = if a.is_null(i) {
                        fnv(*h, &NULL_MARK.to_le_bytes())
                    } else {
                        fnv(*h, &a.value(i).to_le_bytes())
                    };
                }
            }
            (Form::Bytes, DataType::Utf8) => mix_bytes(
                h,
                col.as_string::<i32>().iter().map(|v| v.map(str::as_bytes)),
            ),
            (Form::Bytes, DataType::LargeUtf8) => mix_bytes(
                h,
                col.as_string::<i64>().iter().map(|v| v.map(str::as_bytes)),
            ),
            (Form::Bytes, DataType::Utf8View) => {
                mix_bytes(h, col.as_string_view().iter().map(|v| v.map(str::as_bytes)))
            }
            (Form::Bytes, DataType::Binary) => mix_bytes(h, col.as_binary::<i32>().iter()),
            (Form::Bytes, DataType::LargeBinary) => mix_bytes(h, col.as_binary::<i64>().iter()),
            (Form::Bytes, _) => mix_bytes(h, col.as_binary_view().iter()),
            (Form::Text, _) => {
                let c = cast(col, &DataType::Utf8)?;
                mix_bytes(h, c.as_string::<i32>().iter().map(|v| v.map(str::as_bytes)));
            }
        }
    }
    Ok(hashes.into_iter().map(finish).collect())
}

/// Whether a row of hash `h` goes to the variant at `percent`.
pub(crate) fn in_canary(h: u64, percent: f64) -> bool {
    let cut = (percent * (BUCKETS as f64) / 100.0).round() as u64;
    h % BUCKETS < cut
}

/// Which branch a split feeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd)]
pub(crate) enum Side {
    Primary,
    Variant,
}

/// Logical node of the split at a branch's input; see the module docs.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd)]
pub(crate) struct CanarySplitNode {
    pub stage: String,
    pub side: Side,
    /// Indices of the `by` columns in the input.
    pub by: Vec<usize>,
    pub input: LogicalPlan,
}

impl UserDefinedLogicalNodeCore for CanarySplitNode {
    fn name(&self) -> &str {
        "CanarySplit"
    }
    fn inputs(&self) -> Vec<&LogicalPlan> {
        vec![&self.input]
    }
    fn schema(&self) -> &DFSchemaRef {
        self.input.schema()
    }
    fn expressions(&self) -> Vec<Expr> {
        vec![]
    }
    fn fmt_for_explain(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "CanarySplit: stage={} side={:?}", self.stage, self.side)
    }
    fn with_exprs_and_inputs(
        &self,
        _exprs: Vec<Expr>,
        mut inputs: Vec<LogicalPlan>,
    ) -> Result<Self> {
        let input = inputs
            .pop()
            .ok_or_else(|| internal_datafusion_err!("canary split rebuilt without input"))?;
        Ok(Self {
            input,
            ..self.clone()
        })
    }
}

/// Plans [`CanarySplitNode`] into [`CanarySplitExec`].
#[derive(Debug, Default)]
pub(crate) struct CanarySplitPlanner;

#[async_trait]
impl ExtensionPlanner for CanarySplitPlanner {
    async fn plan_extension(
        &self,
        _planner: &dyn PhysicalPlanner,
        node: &dyn UserDefinedLogicalNode,
        _logical_inputs: &[&LogicalPlan],
        physical_inputs: &[Arc<dyn ExecutionPlan>],
        _session: &dyn Session,
        _ctx: &PhysicalPlanningContext,
    ) -> Result<Option<Arc<dyn ExecutionPlan>>> {
        let Some(n) = node.as_any().downcast_ref::<CanarySplitNode>() else {
            return Ok(None);
        };
        let input = physical_inputs.first().ok_or_else(|| {
            internal_datafusion_err!("canary split of `{}` has no input", n.stage)
        })?;
        Ok(Some(Arc::new(CanarySplitExec::new(
            n.stage.clone(),
            n.side,
            n.by.clone(),
            Arc::clone(input),
        ))))
    }
}

/// Keeps the rows of one side of the canary split; see the module docs.
#[derive(Debug)]
pub(crate) struct CanarySplitExec {
    stage: String,
    side: Side,
    by: Vec<usize>,
    input: Arc<dyn ExecutionPlan>,
    props: Arc<PlanProperties>,
}

impl CanarySplitExec {
    fn new(stage: String, side: Side, by: Vec<usize>, input: Arc<dyn ExecutionPlan>) -> Self {
        let props = Arc::clone(input.properties());
        Self {
            stage,
            side,
            by,
            input,
            props,
        }
    }
}

impl DisplayAs for CanarySplitExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "CanarySplitExec: stage={} side={:?}",
            self.stage, self.side
        )
    }
}

impl ExecutionPlan for CanarySplitExec {
    fn name(&self) -> &str {
        "CanarySplitExec"
    }
    fn properties(&self) -> &Arc<PlanProperties> {
        &self.props
    }
    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }
    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }
    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }
    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let input = children
            .pop()
            .ok_or_else(|| internal_datafusion_err!("CanarySplitExec without child"))?;
        Ok(Arc::new(Self::new(
            self.stage.clone(),
            self.side,
            self.by.clone(),
            input,
        )))
    }
    fn execute(
        &self,
        partition: usize,
        ctx: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let binding = EpochBinding::of_task(&ctx)?;
        let input = self.input.execute(partition, ctx)?;
        let percent = match binding.rollout().choice(&self.stage) {
            Some(c) if c.mode == Mode::Canary => c.percent,
            _ => return Ok(input),
        };
        let schema: SchemaRef = input.schema();
        let (by, side) = (self.by.clone(), self.side);
        let stream = input.map(move |batch| {
            let batch = batch?;
            keep_side(&batch, &by, side, percent)
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
    }
}

/// The rows of `batch` on `side` of the split at `percent`.
pub(crate) fn keep_side(
    batch: &RecordBatch,
    by: &[usize],
    side: Side,
    percent: f64,
) -> Result<RecordBatch> {
    let cols: Vec<ArrayRef> = by.iter().map(|i| Arc::clone(batch.column(*i))).collect();
    let hashes = row_hashes(&cols, batch.num_rows())?;
    let mask: BooleanArray = hashes
        .iter()
        .map(|h| Some(in_canary(*h, percent) == (side == Side::Variant)))
        .collect();
    Ok(filter_record_batch(batch, &mask)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Int32Array, Int64Array, StringArray};
    use proptest::prelude::*;

    #[test]
    fn integer_widths_hash_alike_and_text_is_length_prefixed() -> Result<()> {
        let a: ArrayRef = Arc::new(Int32Array::from(vec![1, -7, 40_000]));
        let b: ArrayRef = Arc::new(Int64Array::from(vec![1, -7, 40_000]));
        assert_eq!(row_hashes(&[a], 3)?, row_hashes(&[b], 3)?);
        let x: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(vec!["ab"])),
            Arc::new(StringArray::from(vec!["c"])),
        ];
        let y: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(vec!["a"])),
            Arc::new(StringArray::from(vec!["bc"])),
        ];
        assert_ne!(row_hashes(&x, 1)?, row_hashes(&y, 1)?);
        Ok(())
    }

    #[test]
    fn every_string_layout_hashes_alike_and_nested_types_cannot_split() -> Result<()> {
        use datafusion::arrow::array::{BinaryArray, LargeStringArray, StringViewArray};
        let v = [Some("AIR"), None, Some("")];
        let utf8 = row_hashes(&[Arc::new(StringArray::from(v.to_vec()))], 3)?;
        let large: ArrayRef = Arc::new(LargeStringArray::from(v.to_vec()));
        let view: ArrayRef = Arc::new(StringViewArray::from(v.to_vec()));
        let bin: ArrayRef = Arc::new(BinaryArray::from(
            v.iter().map(|s| s.map(str::as_bytes)).collect::<Vec<_>>(),
        ));
        for c in [large, view, bin] {
            assert_eq!(row_hashes(&[c], 3)?, utf8);
        }
        assert!(can_split_by(&DataType::Float64));
        assert!(can_split_by(&DataType::Dictionary(
            Box::new(DataType::Int32),
            Box::new(DataType::Utf8)
        )));
        let list = DataType::List(Arc::new(datafusion::arrow::datatypes::Field::new(
            "x",
            DataType::Int32,
            true,
        )));
        assert!(!can_split_by(&list));
        Ok(())
    }

    #[test]
    fn the_hash_is_pinned() -> Result<()> {
        // a replay after an upgrade must split the same way: these values
        // (computed independently of this code) may never change
        let a: ArrayRef = Arc::new(Int64Array::from(vec![0, 42]));
        let s: ArrayRef = Arc::new(StringArray::from(vec![Some("AIR"), None]));
        assert_eq!(
            row_hashes(&[a, s], 2)?,
            vec![0x26cd_dfe3_262f_2d15, 0x8d14_69b0_4771_d958]
        );
        assert!(in_canary(0x26cd_dfe3_262f_2d15, 22.3) && !in_canary(0x26cd_dfe3_262f_2d15, 22.29));
        Ok(())
    }

    proptest! {
        #[test]
        fn the_two_sides_partition_every_batch(keys in proptest::collection::vec(any::<i64>(), 0..400), percent in 0.0f64..=100.0) {
            let schema = Arc::new(datafusion::arrow::datatypes::Schema::new(vec![
                datafusion::arrow::datatypes::Field::new("k", DataType::Int64, false),
            ]));
            let batch = RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(keys.clone()))]).unwrap();
            let p = keep_side(&batch, &[0], Side::Primary, percent).unwrap();
            let v = keep_side(&batch, &[0], Side::Variant, percent).unwrap();
            prop_assert_eq!(p.num_rows() + v.num_rows(), keys.len());
            let pk: std::collections::BTreeSet<i64> = p.column(0).as_primitive::<Int64Type>().values().iter().copied().collect();
            for k in v.column(0).as_primitive::<Int64Type>().values() {
                prop_assert!(!pk.contains(k), "key {} went both ways", k);
            }
            prop_assert_eq!(keep_side(&batch, &[0], Side::Variant, 0.0).unwrap().num_rows(), 0);
            prop_assert_eq!(keep_side(&batch, &[0], Side::Variant, 100.0).unwrap().num_rows(), keys.len());
        }
    }
}
