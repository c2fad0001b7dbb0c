//! The shadow diff: the primary's and the variant's output of one epoch,
//! compared as multisets of rows, both ways.
//!
//! Without a key, rows are equal when every column is (floats within the
//! tolerance); a row of the primary nobody matched is *missing* from the
//! variant, a row of the variant nobody matched is *extra*. With a key,
//! rows are matched by key first: a key in both whose other columns differ
//! is one *changed* row (with the columns that differ), not one missing and
//! one extra.
//!
//! Rows are grouped by the bytes of their exact columns (Arrow's row
//! format), so matching is a hash join; inside a group, rows are sorted by
//! their float columns and matched in one pass, so two floats within the
//! tolerance of each other pair up whatever the row order.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, RecordBatch, StringBuilder, UInt64Builder,
};
use datafusion::arrow::compute::{SortOptions, cast, concat_batches};
use datafusion::arrow::datatypes::{DataType, Field, Float64Type, Schema, SchemaRef};
use datafusion::arrow::row::{RowConverter, Rows, SortField};
use datafusion::common::Result;
use serde::{Deserialize, Serialize};

/// How to compare.
#[derive(Debug, Clone)]
pub(crate) struct DiffRule {
    /// Output columns that identify a row (may be empty).
    pub key: Vec<String>,
    /// Relative (and, below 1, absolute) tolerance of float columns.
    pub tolerance: f64,
    /// Differing rows kept as a sample, at most.
    pub sample: usize,
}

/// What the diff counted.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DiffCounts {
    /// Rows the primary produced.
    pub primary_rows: u64,
    /// Rows the variant produced.
    pub variant_rows: u64,
    /// Rows of the primary the variant lacks.
    pub missing: u64,
    /// Rows of the variant the primary lacks.
    pub extra: u64,
    /// Keys in both whose other columns differ.
    pub changed: u64,
    /// Changed rows per differing column.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub columns: BTreeMap<String, u64>,
}

impl DiffCounts {
    /// Differing rows.
    pub fn differing(&self) -> u64 {
        self.missing + self.extra + self.changed
    }

    /// Adds `other`'s counts.
    pub fn add(&mut self, other: &DiffCounts) {
        self.primary_rows += other.primary_rows;
        self.variant_rows += other.variant_rows;
        self.missing += other.missing;
        self.extra += other.extra;
        self.changed += other.changed;
        for (c, n) in &other.columns {
            *self.columns.entry(c.clone()).or_default() += n;
        }
    }
}

/// One differing row of the sample.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct DiffRow {
    /// `missing`, `extra` or `changed`.
    pub kind: &'static str,
    /// The key columns as a JSON object (keyed diffs).
    pub key: Option<String>,
    /// The columns that differ (changed rows).
    pub columns: Vec<String>,
    /// The primary's row as JSON.
    pub primary: Option<String>,
    /// The variant's row as JSON.
    pub variant: Option<String>,
}

/// One side, concatenated, with its columns prepared for comparing.
struct Side {
    batch: RecordBatch,
    /// The float columns as f64, by column index.
    floats: Vec<(usize, ArrayRef)>,
    /// Row bytes of the key columns (keyed) and of the other exact columns.
    key: Option<Rows>,
    exact: Option<Rows>,
}

fn is_float(t: &DataType) -> bool {
    matches!(t, DataType::Float16 | DataType::Float32 | DataType::Float64)
}

fn rows_of(batch: &RecordBatch, cols: &[usize]) -> Result<Option<Rows>> {
    if cols.is_empty() {
        return Ok(None);
    }
    let fields = cols
        .iter()
        .map(|i| SortField::new(batch.schema().field(*i).data_type().clone()))
        .collect();
    let conv = RowConverter::new(fields)?;
    let arrays: Vec<ArrayRef> = cols.iter().map(|i| Arc::clone(batch.column(*i))).collect();
    Ok(Some(conv.convert_columns(&arrays)?))
}

impl Side {
    fn new(
        schema: &SchemaRef,
        batches: &[RecordBatch],
        key: &[usize],
        exact: &[usize],
        floats: &[usize],
    ) -> Result<Self> {
        let schema = batches
            .first()
            .map_or_else(|| Arc::clone(schema), |b| b.schema());
        let batch = concat_batches(&schema, batches)?;
        let floats = floats
            .iter()
            .map(|i| Ok((*i, cast(batch.column(*i), &DataType::Float64)?)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            key: rows_of(&batch, key)?,
            exact: rows_of(&batch, exact)?,
            floats,
            batch,
        })
    }

    fn key_bytes(&self, row: usize) -> &[u8] {
        self.key.as_ref().map_or(&[], |r| r.row(row).data())
    }

    fn exact_bytes(&self, row: usize) -> &[u8] {
        self.exact.as_ref().map_or(&[], |r| r.row(row).data())
    }

    fn float(&self, k: usize, row: usize) -> Option<f64> {
        let a = self.floats[k].1.as_primitive::<Float64Type>();
        a.is_valid(row).then(|| a.value(row))
    }
}

fn close(a: Option<f64>, b: Option<f64>, tol: f64) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(x), Some(y)) if x.is_nan() && y.is_nan() => true,
        (Some(x), Some(y)) => x == y || (x - y).abs() <= tol * x.abs().max(y.abs()).max(1.0),
        _ => false,
    }
}

fn float_order(a: Option<f64>, b: Option<f64>) -> Ordering {
    match (a, b) {
        (None, None) => Ordering::Equal,
        (None, Some(_)) => Ordering::Less,
        (Some(_), None) => Ordering::Greater,
        (Some(x), Some(y)) => x.total_cmp(&y),
    }
}

/// A row of a group: the bytes it is still compared on, and its index.
type Member = (Vec<u8>, usize);

/// Compares `primary` with `variant` (same columns in the same order).
pub(crate) fn diff(
    primary: &[RecordBatch],
    variant: &[RecordBatch],
    schema: &SchemaRef,
    rule: &DiffRule,
) -> Result<(DiffCounts, Vec<DiffRow>)> {
    let key: Vec<usize> = rule
        .key
        .iter()
        .filter_map(|k| schema.index_of(k).ok())
        .collect();
    let mut floats = Vec::new();
    let mut exact = Vec::new();
    for (i, f) in schema.fields().iter().enumerate() {
        if key.contains(&i) {
            continue;
        }
        if is_float(f.data_type()) {
            floats.push(i);
        } else {
            exact.push(i);
        }
    }
    let p = Side::new(schema, primary, &key, &exact, &floats)?;
    let v = Side::new(schema, variant, &key, &exact, &floats)?;
    let mut counts = DiffCounts {
        primary_rows: p.batch.num_rows() as u64,
        variant_rows: v.batch.num_rows() as u64,
        ..Default::default()
    };

    // group by the key (keyed) or by every exact column (keyless)
    let keyed = !key.is_empty();
    let group_of = |s: &Side, row: usize| -> (Vec<u8>, Vec<u8>) {
        if keyed {
            (s.key_bytes(row).to_vec(), s.exact_bytes(row).to_vec())
        } else {
            (s.exact_bytes(row).to_vec(), Vec::new())
        }
    };
    let mut groups: HashMap<Vec<u8>, (Vec<Member>, Vec<Member>)> = HashMap::new();
    for row in 0..p.batch.num_rows() {
        let (g, sub) = group_of(&p, row);
        groups.entry(g).or_default().0.push((sub, row));
    }
    for row in 0..v.batch.num_rows() {
        let (g, sub) = group_of(&v, row);
        groups.entry(g).or_default().1.push((sub, row));
    }
    let mut sample = Vec::new();
    // groups in the primary's row order, so the sample is deterministic
    let mut ordered: Vec<_> = groups.into_values().collect();
    ordered.sort_by_key(|(ps, vs)| {
        (
            ps.first().map_or(usize::MAX, |x| x.1),
            vs.first().map_or(usize::MAX, |x| x.1),
        )
    });
    for (ps, vs) in ordered {
        let (p_rest, v_rest) = match_group(&p, &v, ps, vs, rule.tolerance);
        if keyed {
            let pairs = p_rest.len().min(v_rest.len());
            for (pr, vr) in p_rest.iter().zip(&v_rest) {
                let cols = differing_columns(&p, &v, *pr, *vr, &key, rule.tolerance)?;
                counts.changed += 1;
                let names: Vec<String> = cols
                    .iter()
                    .map(|c| schema.field(*c).name().clone())
                    .collect();
                for n in &names {
                    *counts.columns.entry(n.clone()).or_default() += 1;
                }
                if sample.len() < rule.sample {
                    sample.push(DiffRow {
                        kind: "changed",
                        key: Some(json_of(&p.batch, *pr, Some(&key))?),
                        columns: names,
                        primary: Some(json_of(&p.batch, *pr, None)?),
                        variant: Some(json_of(&v.batch, *vr, None)?),
                    });
                }
            }
            for pr in &p_rest[pairs..] {
                counts.missing += 1;
                if sample.len() < rule.sample {
                    sample.push(DiffRow {
                        kind: "missing",
                        key: Some(json_of(&p.batch, *pr, Some(&key))?),
                        columns: Vec::new(),
                        primary: Some(json_of(&p.batch, *pr, None)?),
                        variant: None,
                    });
                }
            }
            for vr in &v_rest[pairs..] {
                counts.extra += 1;
                if sample.len() < rule.sample {
                    sample.push(DiffRow {
                        kind: "extra",
                        key: Some(json_of(&v.batch, *vr, Some(&key))?),
                        columns: Vec::new(),
                        primary: None,
                        variant: Some(json_of(&v.batch, *vr, None)?),
                    });
                }
            }
        } else {
            for pr in &p_rest {
                counts.missing += 1;
                if sample.len() < rule.sample {
                    sample.push(DiffRow {
                        kind: "missing",
                        key: None,
                        columns: Vec::new(),
                        primary: Some(json_of(&p.batch, *pr, None)?),
                        variant: None,
                    });
                }
            }
            for vr in &v_rest {
                counts.extra += 1;
                if sample.len() < rule.sample {
                    sample.push(DiffRow {
                        kind: "extra",
                        key: None,
                        columns: Vec::new(),
                        primary: None,
                        variant: Some(json_of(&v.batch, *vr, None)?),
                    });
                }
            }
        }
    }
    Ok((counts, sample))
}

/// Matches the rows of one group: equal sub-group bytes (the exact columns
/// a keyed group still compares) and floats within the tolerance. Returns
/// the unmatched rows of each side, in row order.
fn match_group(
    p: &Side,
    v: &Side,
    mut ps: Vec<Member>,
    mut vs: Vec<Member>,
    tol: f64,
) -> (Vec<usize>, Vec<usize>) {
    let order = |s: &Side, a: &Member, b: &Member| {
        a.0.cmp(&b.0).then_with(|| {
            (0..s.floats.len())
                .map(|k| float_order(s.float(k, a.1), s.float(k, b.1)))
                .find(|o| o.is_ne())
                .unwrap_or(Ordering::Equal)
        })
    };
    ps.sort_by(|a, b| order(p, a, b));
    vs.sort_by(|a, b| order(v, a, b));
    let (mut i, mut j) = (0, 0);
    let (mut p_rest, mut v_rest) = (Vec::new(), Vec::new());
    while i < ps.len() && j < vs.len() {
        let (a, b) = (&ps[i], &vs[j]);
        let sub = a.0.cmp(&b.0);
        let within = sub.is_eq()
            && (0..p.floats.len()).all(|k| close(p.float(k, a.1), v.float(k, b.1), tol));
        if within {
            i += 1;
            j += 1;
            continue;
        }
        let first = sub.then_with(|| {
            (0..p.floats.len())
                .map(|k| float_order(p.float(k, a.1), v.float(k, b.1)))
                .find(|o| o.is_ne())
                .unwrap_or(Ordering::Equal)
        });
        if first.is_le() {
            p_rest.push(a.1);
            i += 1;
        } else {
            v_rest.push(b.1);
            j += 1;
        }
    }
    p_rest.extend(ps[i..].iter().map(|x| x.1));
    v_rest.extend(vs[j..].iter().map(|x| x.1));
    p_rest.sort_unstable();
    v_rest.sort_unstable();
    (p_rest, v_rest)
}

/// The non-key columns where row `pr` of the primary and `vr` of the variant differ.
fn differing_columns(
    p: &Side,
    v: &Side,
    pr: usize,
    vr: usize,
    key: &[usize],
    tol: f64,
) -> Result<Vec<usize>> {
    let mut out = Vec::new();
    for c in 0..p.batch.num_columns() {
        if key.contains(&c) {
            continue;
        }
        if let Some(k) = p.floats.iter().position(|(i, _)| *i == c) {
            if !close(p.float(k, pr), v.float(k, vr), tol) {
                out.push(c);
            }
            continue;
        }
        let cmp = datafusion::arrow::array::make_comparator(
            p.batch.column(c).as_ref(),
            v.batch.column(c).as_ref(),
            SortOptions::default(),
        )?;
        if cmp(pr, vr).is_ne() {
            out.push(c);
        }
    }
    Ok(out)
}

/// Row `row` of `batch` (or only its `cols`) as a JSON object.
fn json_of(batch: &RecordBatch, row: usize, cols: Option<&[usize]>) -> Result<String> {
    let one = batch.slice(row, 1);
    let one = match cols {
        Some(c) => one.project(c)?,
        None => one,
    };
    let mut w = datafusion::arrow::json::LineDelimitedWriter::new(Vec::new());
    w.write(&one)?;
    w.finish()?;
    let text = String::from_utf8_lossy(&w.into_inner())
        .trim_end()
        .to_string();
    Ok(text)
}

/// The schema of the diff sink's rows.
pub(crate) fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("epoch", DataType::UInt64, false),
        Field::new("stage", DataType::Utf8, false),
        Field::new("variant", DataType::Utf8, false),
        Field::new("kind", DataType::Utf8, false),
        Field::new("key", DataType::Utf8, true),
        Field::new("columns", DataType::Utf8, true),
        Field::new("primary_row", DataType::Utf8, true),
        Field::new("variant_row", DataType::Utf8, true),
    ]))
}

/// The sample of one epoch as a batch of [`schema`].
pub(crate) fn to_batch(
    epoch: u64,
    stage: &str,
    variant: &str,
    rows: &[DiffRow],
) -> Result<RecordBatch> {
    let mut e = UInt64Builder::new();
    let (mut s, mut va, mut k, mut key, mut cols, mut p, mut v) = (
        StringBuilder::new(),
        StringBuilder::new(),
        StringBuilder::new(),
        StringBuilder::new(),
        StringBuilder::new(),
        StringBuilder::new(),
        StringBuilder::new(),
    );
    for r in rows {
        e.append_value(epoch);
        s.append_value(stage);
        va.append_value(variant);
        k.append_value(r.kind);
        key.append_option(r.key.as_deref());
        cols.append_option((!r.columns.is_empty()).then(|| r.columns.join(",")));
        p.append_option(r.primary.as_deref());
        v.append_option(r.variant.as_deref());
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(e.finish()),
        Arc::new(s.finish()),
        Arc::new(va.finish()),
        Arc::new(k.finish()),
        Arc::new(key.finish()),
        Arc::new(cols.finish()),
        Arc::new(p.finish()),
        Arc::new(v.finish()),
    ];
    Ok(RecordBatch::try_new(schema(), columns)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Float64Array, Int64Array, StringArray};
    use proptest::prelude::*;

    fn schema3() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int64, false),
            Field::new("s", DataType::Utf8, true),
            Field::new("x", DataType::Float64, true),
        ]))
    }

    fn batch(rows: &[(i64, Option<&str>, Option<f64>)]) -> RecordBatch {
        RecordBatch::try_new(
            schema3(),
            vec![
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.0))),
                Arc::new(rows.iter().map(|r| r.1).collect::<StringArray>()),
                Arc::new(rows.iter().map(|r| r.2).collect::<Float64Array>()),
            ],
        )
        .unwrap()
    }

    fn rule(key: &[&str]) -> DiffRule {
        DiffRule {
            key: key.iter().map(|s| s.to_string()).collect(),
            tolerance: 1e-9,
            sample: 100,
        }
    }

    #[test]
    fn keyed_diff_names_the_changed_column() -> Result<()> {
        let p = batch(&[
            (1, Some("a"), Some(1.0)),
            (2, Some("b"), Some(2.0)),
            (3, None, None),
        ]);
        let v = batch(&[
            (3, None, None),
            (2, Some("B"), Some(2.0 + 1e-12)),
            (4, Some("d"), Some(4.0)),
        ]);
        let (c, sample) = diff(&[p], &[v], &schema3(), &rule(&["k"]))?;
        assert_eq!((c.missing, c.extra, c.changed), (1, 1, 1));
        assert_eq!(c.columns, BTreeMap::from([("s".to_string(), 1)]));
        assert_eq!(sample.len(), 3);
        let changed = sample.iter().find(|r| r.kind == "changed").unwrap();
        assert_eq!(changed.key.as_deref(), Some(r#"{"k":2}"#));
        assert_eq!(changed.columns, vec!["s".to_string()]);
        Ok(())
    }

    #[test]
    fn keyless_diff_is_a_multiset_diff() -> Result<()> {
        let p = batch(&[(1, Some("a"), Some(1.0)), (1, Some("a"), Some(1.0))]);
        let v = batch(&[(1, Some("a"), Some(1.0 + 1e-13))]);
        let (c, _) = diff(&[p], &[v], &schema3(), &rule(&[]))?;
        assert_eq!((c.missing, c.extra, c.changed), (1, 0, 0));
        Ok(())
    }

    fn arb_rows() -> impl Strategy<Value = Vec<(i64, Option<String>, Option<f64>)>> {
        proptest::collection::vec(
            (
                0i64..20,
                proptest::option::of("[a-c]{0,2}"),
                proptest::option::of(-5.0f64..5.0),
            ),
            0..60,
        )
    }

    fn to_batch_of(rows: &[(i64, Option<String>, Option<f64>)]) -> RecordBatch {
        let r: Vec<(i64, Option<&str>, Option<f64>)> = rows
            .iter()
            .map(|(k, s, x)| (*k, s.as_deref(), *x))
            .collect();
        batch(&r)
    }

    proptest! {
        #[test]
        fn a_permutation_has_no_differences(rows in arb_rows(), seed in any::<u64>(), split in 0usize..60) {
            let mut shuffled = rows.clone();
            // a deterministic shuffle from the seed
            let mut s = seed | 1;
            for i in (1..shuffled.len()).rev() {
                s ^= s << 13; s ^= s >> 7; s ^= s << 17;
                shuffled.swap(i, (s % (i as u64 + 1)) as usize);
            }
            let cut = split.min(shuffled.len());
            let p = to_batch_of(&rows);
            let v1 = to_batch_of(&shuffled[..cut]);
            let v2 = to_batch_of(&shuffled[cut..]);
            for key in [&[][..], &["k"][..]] {
                let (c, sample) = diff(std::slice::from_ref(&p), &[v1.clone(), v2.clone()], &schema3(), &rule(key)).unwrap();
                prop_assert_eq!(c.differing(), 0);
                prop_assert!(sample.is_empty());
            }
        }

        #[test]
        fn dropping_and_adding_rows_is_counted_exactly(rows in arb_rows(), drop in 0usize..10, add in arb_rows()) {
            let drop = drop.min(rows.len());
            let kept = &rows[drop..];
            // added rows use keys the primary never has
            let add: Vec<_> = add.into_iter().take(5).map(|(k, s, x)| (k + 100, s, x)).collect();
            let mut variant = kept.to_vec();
            variant.extend(add.iter().cloned());
            let (c, _) = diff(&[to_batch_of(&rows)], &[to_batch_of(&variant)], &schema3(), &rule(&[])).unwrap();
            prop_assert_eq!(c.missing, drop as u64);
            prop_assert_eq!(c.extra, add.len() as u64);
        }
    }
}
