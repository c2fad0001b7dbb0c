//! Splitting batches by the values of partition columns (hive layout).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, RecordBatch, UInt32Array};
use datafusion::arrow::compute::take_record_batch;
use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};

/// Name of the folder for a null partition value (Hive's convention).
pub(crate) const NULL_PARTITION: &str = "__HIVE_DEFAULT_PARTITION__";

/// Splits batches by partition columns and drops those columns from the rows.
#[derive(Debug)]
pub(crate) struct HiveSplitter {
    columns: Vec<String>,
    key_indices: Vec<usize>,
    keep_indices: Vec<usize>,
    converter: RowConverter,
    /// How values are spelt in folder names and in [`PartitionSlice::values`].
    format: FormatOptions<'static>,
    /// Schema of the rows written into files (without partition columns).
    pub file_schema: SchemaRef,
}

/// The rows of one partition value.
#[derive(Debug)]
pub(crate) struct PartitionSlice {
    /// `col=value/col2=value2`, escaped.
    pub dir: String,
    /// The raw values, by column.
    pub values: BTreeMap<String, String>,
    /// The rows, without partition columns.
    pub batch: RecordBatch,
}

impl HiveSplitter {
    /// A splitter for `columns` of `schema`, spelling values with `format`
    /// (its null text is replaced); errors name a missing column.
    pub(crate) fn try_new(
        schema: &SchemaRef,
        columns: &[String],
        format: FormatOptions<'static>,
    ) -> Result<Self, String> {
        let mut key_indices = Vec::new();
        for c in columns {
            let i = schema.index_of(c).map_err(|_| {
                let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
                format!(
                    "partition column `{c}` is not in the output; columns are: {}",
                    names.join(", ")
                )
            })?;
            key_indices.push(i);
        }
        if key_indices.len() == schema.fields().len() {
            return Err(
                "every column is a partition column, so the files would hold no data".into(),
            );
        }
        let keep_indices: Vec<usize> = (0..schema.fields().len())
            .filter(|i| !key_indices.contains(i))
            .collect();
        let fields: Vec<_> = keep_indices
            .iter()
            .map(|i| schema.field(*i).clone())
            .collect();
        let file_schema = Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()));
        let sort_fields = key_indices
            .iter()
            .map(|i| SortField::new(schema.field(*i).data_type().clone()))
            .collect();
        let converter = RowConverter::new(sort_fields).map_err(|e| e.to_string())?;
        Ok(Self {
            columns: columns.to_vec(),
            key_indices,
            keep_indices,
            converter,
            format: format.with_null(NULL_PARTITION),
            file_schema,
        })
    }

    /// Splits `batch` by partition value.
    pub(crate) fn split(&self, batch: &RecordBatch) -> Result<Vec<PartitionSlice>, ArrowError> {
        let keys: Vec<ArrayRef> = self
            .key_indices
            .iter()
            .map(|i| Arc::clone(batch.column(*i)))
            .collect();
        let rows = self.converter.convert_columns(&keys)?;
        let mut groups: HashMap<&[u8], Vec<u32>> = HashMap::new();
        let mut order: Vec<&[u8]> = Vec::new();
        for (i, row) in rows.iter().enumerate() {
            let k = row.data();
            groups
                .entry(k)
                .or_insert_with(|| {
                    order.push(k);
                    Vec::new()
                })
                .push(i as u32);
        }
        let data = batch.project(&self.keep_indices)?;
        let formatters: Vec<ArrayFormatter> = keys
            .iter()
            .map(|k| ArrayFormatter::try_new(k.as_ref(), &self.format))
            .collect::<Result<_, _>>()?;
        let mut out = Vec::with_capacity(order.len());
        for k in order {
            let idx = &groups[k];
            let first = idx[0] as usize;
            let mut values = BTreeMap::new();
            let mut dir = String::new();
            for (j, (col, f)) in self.columns.iter().zip(&formatters).enumerate() {
                let v = if keys[j].is_null(first) {
                    NULL_PARTITION.to_string()
                } else {
                    f.value(first).to_string()
                };
                if !dir.is_empty() {
                    dir.push('/');
                }
                dir.push_str(&format!("{}={}", escape(col), escape(&v)));
                values.insert(col.clone(), v);
            }
            let batch = if idx.len() == batch.num_rows() {
                data.clone()
            } else {
                take_record_batch(&data, &UInt32Array::from(idx.clone()))?
            };
            out.push(PartitionSlice { dir, values, batch });
        }
        Ok(out)
    }
}

/// Percent-escapes characters that are unsafe in a path segment.
pub(super) fn escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b' ' | b':' | b'+') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Int64Array, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field};

    #[test]
    fn splits_by_value_and_drops_the_key() -> Result<(), ArrowError> {
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8, true),
            Field::new("v", DataType::Int64, false),
        ]));
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(StringArray::from(vec![
                    Some("a/b"),
                    None,
                    Some("a/b"),
                    Some("c"),
                ])),
                Arc::new(Int64Array::from(vec![1, 2, 3, 4])),
            ],
        )?;
        let s =
            HiveSplitter::try_new(&schema, &["k".to_string()], FormatOptions::default()).unwrap();
        let parts = s.split(&batch)?;
        let dirs: Vec<&str> = parts.iter().map(|p| p.dir.as_str()).collect();
        assert_eq!(dirs, vec!["k=a%2Fb", "k=__HIVE_DEFAULT_PARTITION__", "k=c"]);
        assert_eq!(parts[0].batch.num_rows(), 2);
        assert_eq!(parts[0].batch.num_columns(), 1);
        assert_eq!(parts[0].values["k"], "a/b");
        assert!(
            HiveSplitter::try_new(&schema, &["nope".to_string()], FormatOptions::default())
                .unwrap_err()
                .contains("nope")
        );
        Ok(())
    }
}
