//! `TpchScanExec`: generates TPC-H rows with `tpchgen-arrow`, one stream per partition.
//!
//! - Output schema: the table's schema (projected when a projection is pushed down).
//! - Emits: one batch per `batch_size` generated rows, as generated.
//! - State: none beyond the generator iterator of the part being generated.
//! - Failure: generator errors are returned as execution errors.
//!
//! Each partition generates its share of the slice's parts in order, so the
//! rows of a slice are the same whatever the number of partitions.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::error::ArrowError;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{Result, project_schema};
use datafusion::error::DataFusionError;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{Expr, TableType};
use datafusion::physical_expr::EquivalenceProperties;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PhysicalExpr, PlanProperties};
use serde::Deserialize;
use tpchgen::generators::{
    CustomerGenerator, LineItemGenerator, NationGenerator, OrderGenerator, PartGenerator, PartSuppGenerator,
    RegionGenerator, SupplierGenerator,
};
use tpchgen_arrow::{
    CustomerArrow, LineItemArrow, NationArrow, OrderArrow, PartArrow, PartSuppArrow, RegionArrow, SupplierArrow,
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

type BatchIter = Box<dyn Iterator<Item = Result<RecordBatch, ArrowError>> + Send>;

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

    fn generate(self, sf: f64, part: i32, parts: i32, batch_size: usize) -> BatchIter {
        match self {
            TpchTable::Lineitem => {
                Box::new(LineItemArrow::new(LineItemGenerator::new(sf, part, parts)).with_batch_size(batch_size))
            }
            TpchTable::Orders => Box::new(OrderArrow::new(OrderGenerator::new(sf, part, parts)).with_batch_size(batch_size)),
            TpchTable::Customer => {
                Box::new(CustomerArrow::new(CustomerGenerator::new(sf, part, parts)).with_batch_size(batch_size))
            }
            TpchTable::Part => Box::new(PartArrow::new(PartGenerator::new(sf, part, parts)).with_batch_size(batch_size)),
            TpchTable::Partsupp => {
                Box::new(PartSuppArrow::new(PartSuppGenerator::new(sf, part, parts)).with_batch_size(batch_size))
            }
            TpchTable::Supplier => {
                Box::new(SupplierArrow::new(SupplierGenerator::new(sf, part, parts)).with_batch_size(batch_size))
            }
            TpchTable::Nation => Box::new(NationArrow::new(NationGenerator::new(sf, part, parts)).with_batch_size(batch_size)),
            TpchTable::Region => Box::new(RegionArrow::new(RegionGenerator::new(sf, part, parts)).with_batch_size(batch_size)),
        }
    }
}

/// The parts of one slice of a TPC-H table, as a table.
#[derive(Debug)]
pub struct TpchTableProvider {
    table: TpchTable,
    scale_factor: f64,
    total_parts: usize,
    parts: Vec<usize>,
    target_partitions: usize,
    batch_size: usize,
}

impl TpchTableProvider {
    /// Generates `parts` (1-based) of `total_parts` of `table`.
    pub fn new(
        table: TpchTable,
        scale_factor: f64,
        total_parts: usize,
        parts: Vec<usize>,
        target_partitions: usize,
        batch_size: usize,
    ) -> Self {
        Self { table, scale_factor, total_parts, parts, target_partitions, batch_size }
    }
}

#[async_trait]
impl TableProvider for TpchTableProvider {
    fn schema(&self) -> SchemaRef {
        self.table.schema()
    }
    fn table_type(&self) -> TableType {
        TableType::Base
    }
    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let partitions = self.target_partitions.clamp(1, self.parts.len().max(1));
        let mut groups = vec![Vec::new(); partitions];
        for (i, p) in self.parts.iter().enumerate() {
            groups[i % partitions].push(*p);
        }
        Ok(Arc::new(TpchScanExec::try_new(
            self.table,
            self.scale_factor,
            self.total_parts,
            groups,
            projection.cloned(),
            limit,
            self.batch_size,
        )?))
    }
}

/// Generates TPC-H parts; see the module docs.
#[derive(Debug)]
pub struct TpchScanExec {
    table: TpchTable,
    scale_factor: f64,
    total_parts: usize,
    groups: Vec<Vec<usize>>,
    projection: Option<Vec<usize>>,
    limit: Option<usize>,
    batch_size: usize,
    schema: SchemaRef,
    props: Arc<PlanProperties>,
}

impl TpchScanExec {
    /// A scan generating `groups[i]` in partition `i`.
    pub fn try_new(
        table: TpchTable,
        scale_factor: f64,
        total_parts: usize,
        groups: Vec<Vec<usize>>,
        projection: Option<Vec<usize>>,
        limit: Option<usize>,
        batch_size: usize,
    ) -> Result<Self> {
        let schema = project_schema(&table.schema(), projection.as_ref())?;
        let props = PlanProperties::new(
            EquivalenceProperties::new(Arc::clone(&schema)),
            Partitioning::UnknownPartitioning(groups.len()),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        Ok(Self {
            table,
            scale_factor,
            total_parts,
            groups,
            projection,
            limit,
            batch_size,
            schema,
            props: Arc::new(props),
        })
    }
}

impl DisplayAs for TpchScanExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let parts: usize = self.groups.iter().map(Vec::len).sum();
        write!(
            f,
            "TpchScanExec: table={} scale_factor={} parts={parts}/{} partitions={}",
            self.table.name(),
            self.scale_factor,
            self.total_parts,
            self.groups.len()
        )?;
        if let Some(p) = &self.projection {
            let all = self.table.schema();
            let names: Vec<&str> = p.iter().map(|i| all.field(*i).name().as_str()).collect();
            write!(f, " projection=[{}]", names.join(", "))?;
        }
        if let Some(l) = self.limit {
            write!(f, " limit={l}")?;
        }
        Ok(())
    }
}

impl ExecutionPlan for TpchScanExec {
    fn name(&self) -> &str {
        "TpchScanExec"
    }
    fn properties(&self) -> &Arc<PlanProperties> {
        &self.props
    }
    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }
    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }
    fn with_new_children(self: Arc<Self>, children: Vec<Arc<dyn ExecutionPlan>>) -> Result<Arc<dyn ExecutionPlan>> {
        if children.is_empty() {
            Ok(self)
        } else {
            Err(DataFusionError::Internal("TpchScanExec has no children".into()))
        }
    }
    fn execute(&self, partition: usize, _ctx: Arc<TaskContext>) -> Result<SendableRecordBatchStream> {
        let parts = self.groups.get(partition).cloned().ok_or_else(|| {
            DataFusionError::Internal(format!("TpchScanExec has no partition {partition}"))
        })?;
        let (table, sf, total, bs) = (self.table, self.scale_factor, self.total_parts as i32, self.batch_size);
        let projection = self.projection.clone();
        let batches = parts.into_iter().flat_map(move |p| table.generate(sf, p as i32, total, bs));
        let mut remaining = self.limit.unwrap_or(usize::MAX);
        let iter = batches
            .map(move |b| {
                let b = b?;
                match &projection {
                    Some(p) => b.project(p),
                    None => Ok(b),
                }
            })
            .map_while(move |b| {
                if remaining == 0 {
                    return None;
                }
                Some(b.map(|b| {
                    let b = if b.num_rows() > remaining { b.slice(0, remaining) } else { b };
                    remaining -= b.num_rows();
                    b
                }))
            })
            .map(|r| r.map_err(DataFusionError::from));
        Ok(Box::pin(RecordBatchStreamAdapter::new(Arc::clone(&self.schema), futures::stream::iter(iter))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::physical_plan::collect;
    use datafusion::prelude::SessionContext;

    #[tokio::test]
    async fn parts_cover_the_table_whatever_the_partitioning() -> Result<()> {
        let ctx = SessionContext::new();
        let count = |groups: Vec<Vec<usize>>| {
            let exec = TpchScanExec::try_new(TpchTable::Orders, 0.01, 4, groups, Some(vec![0]), None, 1000).unwrap();
            let task = ctx.task_ctx();
            async move {
                let out = collect(Arc::new(exec), task).await?;
                let mut keys: Vec<i64> = out
                    .iter()
                    .flat_map(|b| {
                        b.column(0)
                            .as_any()
                            .downcast_ref::<datafusion::arrow::array::Int64Array>()
                            .unwrap()
                            .values()
                            .to_vec()
                    })
                    .collect();
                keys.sort_unstable();
                Ok::<_, DataFusionError>(keys)
            }
        };
        let one = count(vec![vec![1, 2, 3, 4]]).await?;
        let two = count(vec![vec![1, 3], vec![2, 4]]).await?;
        assert_eq!(one.len(), 15_000);
        assert_eq!(one, two);
        Ok(())
    }
}
