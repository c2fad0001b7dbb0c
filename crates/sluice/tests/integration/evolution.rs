//! Property: for random pairs of schemas, "the checker says compatible"
//! implies "a Parquet file written under the old schema reads under the new
//! one through a sluice pipeline, keeping every value".

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, Int64Array, RecordBatch, StructArray};
use datafusion::arrow::compute::{cast, concat_batches};
use datafusion::arrow::datatypes::{DataType, Field, Fields, Schema, TimeUnit};
use datafusion::parquet::arrow::ArrowWriter;
use proptest::prelude::*;
use sluice::sinks::SinkConfig;
use sluice::sources::ParquetSourceConfig;
use sluice::{Engine, PipelineSpec};
use sluice_contract::compat::read_breaks;
use sluice_contract::registry::schema_to_json;

use crate::common::committed_rows;

const ROWS: usize = 4;

fn types() -> Vec<DataType> {
    let ts = |u| DataType::Timestamp(u, Some("UTC".into()));
    vec![
        DataType::Int8,
        DataType::Int16,
        DataType::Int32,
        DataType::Int64,
        DataType::UInt8,
        DataType::UInt16,
        DataType::UInt32,
        DataType::Float32,
        DataType::Float64,
        DataType::Utf8,
        DataType::Decimal128(9, 2),
        DataType::Decimal128(12, 3),
        ts(TimeUnit::Millisecond),
        ts(TimeUnit::Microsecond),
        DataType::Date32,
        DataType::Struct(Fields::from(vec![
            Field::new("a", DataType::Int32, true),
            Field::new("b", DataType::Utf8, true),
        ])),
    ]
}

/// One old field and what happens to it: (type, nullable, change, pick).
type FieldPlan = (usize, bool, usize, usize);

/// A type of the same family as `types()[ty]` (numbers, times, strings,
/// structs), picked by `pick`: most changes worth checking stay in a family.
fn relative(ty: usize, pick: usize) -> usize {
    const NUMBERS: [usize; 11] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11];
    const TIMES: [usize; 3] = [12, 13, 14];
    if NUMBERS.contains(&ty) {
        NUMBERS[pick % NUMBERS.len()]
    } else if TIMES.contains(&ty) {
        TIMES[pick % TIMES.len()]
    } else {
        pick % 16
    }
}

fn schemas(old: &[FieldPlan], added: &[(usize, bool)]) -> (Schema, Schema) {
    let t = types();
    let mut old_fields = Vec::new();
    let mut new_fields = Vec::new();
    for (i, (ty, nullable, change, other)) in old.iter().enumerate() {
        let name = format!("f{i}");
        let f = Field::new(&name, t[*ty].clone(), *nullable);
        old_fields.push(f.clone());
        match change {
            0 | 1 => new_fields.push(f),
            2 => new_fields.push(Field::new(
                &name,
                t[relative(*ty, *other)].clone(),
                *nullable,
            )),
            3 => {} // dropped
            4 => new_fields.push(f.with_nullable(!nullable)),
            _ => match t[*ty].clone() {
                // a struct gains a field (nullable or not, by `other`)
                DataType::Struct(sub) => {
                    let mut sub: Vec<Field> = sub.iter().map(|s| s.as_ref().clone()).collect();
                    sub.push(Field::new("c", DataType::Int64, other % 2 == 0));
                    new_fields.push(Field::new(&name, DataType::Struct(sub.into()), *nullable));
                }
                _ => new_fields.push(Field::new(&name, t[*other].clone(), true)),
            },
        }
    }
    for (i, (ty, nullable)) in added.iter().enumerate() {
        new_fields.push(Field::new(format!("g{i}"), t[*ty].clone(), *nullable));
    }
    (Schema::new(old_fields), Schema::new(new_fields))
}

/// A column of `ROWS` small values (null in row 1 when nullable).
fn column(dt: &DataType, nullable: bool) -> ArrayRef {
    let values: Vec<Option<i64>> = (0..ROWS as i64)
        .map(|i| {
            if nullable && i == 1 {
                None
            } else {
                Some(i * 7 + 1)
            }
        })
        .collect();
    let ints: ArrayRef = Arc::new(Int64Array::from(values));
    match dt {
        DataType::Struct(fields) => {
            let children = fields
                .iter()
                .map(|f| column(f.data_type(), f.is_nullable()))
                .collect();
            let nulls = nullable.then(|| ints.logical_nulls()).flatten();
            Arc::new(StructArray::new(fields.clone(), children, nulls))
        }
        DataType::Date32 => cast(&cast(&ints, &DataType::Int32).unwrap(), dt).unwrap(),
        other => cast(&ints, other).unwrap(),
    }
}

/// Asserts `new` holds what `old` held (cast to the new type), or nulls.
fn assert_kept(old: Option<&ArrayRef>, new: &ArrayRef, path: &str) {
    match new.data_type() {
        DataType::Struct(fields) => {
            let new_s = new.as_struct();
            let old_s = old.map(|o| o.as_struct());
            for (i, f) in fields.iter().enumerate() {
                let old_child = old_s.and_then(|o| o.column_by_name(f.name()));
                assert_kept(old_child, new_s.column(i), &format!("{path}.{}", f.name()));
            }
            if let Some(o) = old {
                for row in 0..ROWS {
                    assert_eq!(
                        o.is_null(row),
                        new.is_null(row),
                        "{path}: row {row} null-ness"
                    );
                }
            }
        }
        dt => match old {
            None => assert_eq!(
                new.null_count(),
                ROWS,
                "{path}: a field the data lacks reads as NULL"
            ),
            Some(o) => {
                // kept means: the value read is the value written, so it
                // converts back exactly (a lossy cast would also "match" a cast)
                let expected = cast(o, dt).unwrap();
                assert_eq!(&expected, new, "{path}: values read");
                let back = cast(new, o.data_type()).unwrap();
                assert_eq!(&back, o, "{path}: values kept");
            }
        },
    }
}

/// Writes rows of `old` to a Parquet file and runs them through a pipeline
/// whose source reads them as `new`: the rows written and the rows committed.
fn read_as_new(old: &Schema, new: &Schema) -> Result<(RecordBatch, Vec<RecordBatch>), String> {
    let dir = tempfile::tempdir().unwrap();
    let registry = dir.path().join("schemas");
    std::fs::create_dir_all(registry.join("t")).unwrap();
    std::fs::write(
        registry.join("t/2.json"),
        schema_to_json("t", 2, new).to_string(),
    )
    .unwrap();
    let columns = old
        .fields()
        .iter()
        .map(|f| column(f.data_type(), f.is_nullable()))
        .collect();
    let batch = RecordBatch::try_new(Arc::new(old.clone()), columns).unwrap();
    let file = std::fs::File::create(dir.path().join("old.parquet")).unwrap();
    let mut w = ArrowWriter::try_new(file, batch.schema(), None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();

    let url = format!(
        "memory:///evolution/{}",
        dir.path().file_name().unwrap().to_string_lossy()
    );
    let mut spec = PipelineSpec::new("evolution", "1")
        .with_source(
            "t",
            ParquetSourceConfig {
                path: dir.path().join("old.parquet").to_string_lossy().into(),
                schema: Some("t@2".into()),
            },
        )
        .with_sink("out", SinkConfig::parquet("t", &url));
    spec.settings.schemas = Some(registry.to_string_lossy().into());
    spec.settings.target_partitions = Some(1);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let out = rt.block_on(async {
        let engine = Engine::new();
        engine.run(spec).await.map_err(|e| e.to_string())?;
        committed_rows(&engine, &url)
            .await
            .map_err(|e| e.to_string())
    })?;
    Ok((batch, out))
}

proptest! {
    // about 4 of 5 random schema pairs are breaking and rejected: the
    // default limit of 1024 rejects would end a run of 256 cases at random
    #![proptest_config(ProptestConfig { cases: 256, max_global_rejects: 1 << 16, ..ProptestConfig::default() })]

    #[test]
    fn compatible_by_the_checker_means_readable_keeping_every_value(
        old in prop::collection::vec((0..16usize, any::<bool>(), 0..6usize, 0..16usize), 1..5),
        added in prop::collection::vec((0..16usize, any::<bool>()), 0..3),
    ) {
        let (old_schema, new_schema) = schemas(&old, &added);
        prop_assume!(!new_schema.fields().is_empty());
        prop_assume!(read_breaks(&old_schema, &new_schema, "test").is_empty());
        let (old_batch, out) = read_as_new(&old_schema, &new_schema).map_err(TestCaseError::fail)?;
        prop_assert!(!out.is_empty(), "no output");
        let out = concat_batches(&out[0].schema(), &out).unwrap();
        prop_assert_eq!(out.num_rows(), ROWS);
        for (i, f) in new_schema.fields().iter().enumerate() {
            assert_kept(old_batch.column_by_name(f.name()), out.column(i), f.name());
        }
    }
}
