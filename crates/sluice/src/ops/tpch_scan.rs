//! TPC-H tables generated in-process by `tpchgen-arrow`, as a
//! [`BatchGenerator`] for [`GenerateExec`](super::generate::GenerateExec):
//! a unit of work is a generator part.

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::execution::TaskContext;
use serde::Deserialize;

use super::generate::{BatchGenerator, Batches};
use tpchgen::generators::{
    CustomerGenerator, LineItemGenerator, NationGenerator, OrderGenerator, PartGenerator,
    PartSuppGenerator, RegionGenerator, SupplierGenerator,
};
use tpchgen_arrow::{
    CustomerArrow, LineItemArrow, NationArrow, OrderArrow, PartArrow, PartSuppArrow, RegionArrow,
    SupplierArrow,
};

/// A TPC-H table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TpchTable {
    /// `lineitem`, about 6M rows per scale factor.
    Lineitem,
    /// `orders`, 1.5M rows per scale factor.
    Orders,
    /// `customer`, 150k rows per scale factor.
    Customer,
    /// `part`, 200k rows per scale factor.
    Part,
    /// `partsupp`, 800k rows per scale factor.
    Partsupp,
    /// `supplier`, 10k rows per scale factor.
    Supplier,
    /// `nation`, 25 rows.
    Nation,
    /// `region`, 5 rows.
    Region,
}

impl TpchTable {
    /// The table's name.
    pub fn name(self) -> &'static str {
        match self {
            TpchTable::Lineitem => "lineitem",
            TpchTable::Orders => "orders",
            TpchTable::Customer => "customer",
            TpchTable::Part => "part",
            TpchTable::Partsupp => "partsupp",
            TpchTable::Supplier => "supplier",
            TpchTable::Nation => "nation",
            TpchTable::Region => "region",
        }
    }

    /// The table's Arrow schema.
    pub fn schema(self) -> SchemaRef {
        match self {
            TpchTable::Lineitem => LineItemArrow::schema_ref(),
            TpchTable::Orders => OrderArrow::schema_ref(),
            TpchTable::Customer => CustomerArrow::schema_ref(),
            TpchTable::Part => PartArrow::schema_ref(),
            TpchTable::Partsupp => PartSuppArrow::schema_ref(),
            TpchTable::Supplier => SupplierArrow::schema_ref(),
            TpchTable::Nation => NationArrow::schema_ref(),
            TpchTable::Region => RegionArrow::schema_ref(),
        }
    }

    /// Approximate row count at a scale factor.
    pub fn estimated_rows(self, sf: f64) -> u64 {
        let per_sf = match self {
            TpchTable::Lineitem => 6_001_215.0,
            TpchTable::Orders => 1_500_000.0,
            TpchTable::Customer => 150_000.0,
            TpchTable::Part => 200_000.0,
            TpchTable::Partsupp => 800_000.0,
            TpchTable::Supplier => 10_000.0,
            TpchTable::Nation => return 25,
            TpchTable::Region => return 5,
        };
        (per_sf * sf).ceil() as u64
    }

    /// Whether the generator can split the table into parts.
    pub fn is_partitionable(self) -> bool {
        !matches!(self, TpchTable::Nation | TpchTable::Region)
    }

    fn generate(self, sf: f64, part: i32, parts: i32, batch_size: usize) -> Batches {
        match self {
            TpchTable::Lineitem => Box::new(
                LineItemArrow::new(LineItemGenerator::new(sf, part, parts))
                    .with_batch_size(batch_size),
            ),
            TpchTable::Orders => Box::new(
                OrderArrow::new(OrderGenerator::new(sf, part, parts)).with_batch_size(batch_size),
            ),
            TpchTable::Customer => Box::new(
                CustomerArrow::new(CustomerGenerator::new(sf, part, parts))
                    .with_batch_size(batch_size),
            ),
            TpchTable::Part => Box::new(
                PartArrow::new(PartGenerator::new(sf, part, parts)).with_batch_size(batch_size),
            ),
            TpchTable::Partsupp => Box::new(
                PartSuppArrow::new(PartSuppGenerator::new(sf, part, parts))
                    .with_batch_size(batch_size),
            ),
            TpchTable::Supplier => Box::new(
                SupplierArrow::new(SupplierGenerator::new(sf, part, parts))
                    .with_batch_size(batch_size),
            ),
            TpchTable::Nation => Box::new(
                NationArrow::new(NationGenerator::new(sf, part, parts)).with_batch_size(batch_size),
            ),
            TpchTable::Region => Box::new(
                RegionArrow::new(RegionGenerator::new(sf, part, parts)).with_batch_size(batch_size),
            ),
        }
    }
}

/// A TPC-H table cut into `parts` generator parts; a unit is a 1-based part.
#[derive(Debug)]
pub(crate) struct TpchGenerator {
    table: TpchTable,
    scale_factor: f64,
    parts: usize,
    batch_size: usize,
}

impl TpchGenerator {
    /// `table` at `scale_factor` in `parts` parts.
    pub(crate) fn new(
        table: TpchTable,
        scale_factor: f64,
        parts: usize,
        batch_size: usize,
    ) -> Self {
        Self {
            table,
            scale_factor,
            parts,
            batch_size,
        }
    }
}

impl BatchGenerator for TpchGenerator {
    fn describe(&self) -> String {
        format!(
            "tpch table={} scale_factor={} parts={}",
            self.table.name(),
            self.scale_factor,
            self.parts
        )
    }
    fn schema(&self) -> SchemaRef {
        self.table.schema()
    }
    fn generate(&self, unit: u64, _task: &TaskContext) -> Batches {
        self.table.generate(
            self.scale_factor,
            unit as i32,
            self.parts as i32,
            self.batch_size,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::generate::GenerateExec;
    use datafusion::arrow::array::Int64Array;
    use datafusion::physical_plan::collect;
    use datafusion::prelude::SessionContext;
    use std::sync::Arc;

    #[tokio::test]
    async fn parts_cover_the_table_whatever_the_partitioning() -> datafusion::common::Result<()> {
        let ctx = SessionContext::new();
        let generator: Arc<dyn BatchGenerator> =
            Arc::new(TpchGenerator::new(TpchTable::Orders, 0.01, 4, 1000));
        let mut runs = Vec::new();
        for groups in [vec![vec![1, 2, 3, 4]], vec![vec![1, 3], vec![2, 4]]] {
            let exec = GenerateExec::try_new(Arc::clone(&generator), groups, Some(vec![0]), None)?;
            let out = collect(Arc::new(exec), ctx.task_ctx()).await?;
            let mut keys: Vec<i64> = out
                .iter()
                .flat_map(|b| {
                    b.column(0)
                        .as_any()
                        .downcast_ref::<Int64Array>()
                        .map(|a| a.values().to_vec())
                        .unwrap_or_default()
                })
                .collect();
            keys.sort_unstable();
            runs.push(keys);
        }
        assert_eq!(runs[0].len(), 15_000);
        assert_eq!(runs[0], runs[1]);
        Ok(())
    }
}
