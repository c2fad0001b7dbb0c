//! `GenerateExec`: rows made in-process by a [`BatchGenerator`], one stream per partition.
//!
//! - Output schema: the generator's schema (projected when a projection is pushed down).
//! - Emits: each unit's batches as they are generated.
//! - State: the iterator of the unit being generated.
//! - Failure: generator errors are returned as execution errors.
//!
//! Work is cut into *units* (a TPC-H part, a range of event ids); each
//! partition generates its units in order, so the rows of a slice are the
//! same whatever the number of partitions.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::error::ArrowError;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{Result, internal_err, project_schema};
use datafusion::error::DataFusionError;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{Expr, TableType};
use datafusion::physical_expr::EquivalenceProperties;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PhysicalExpr, PlanProperties,
};

/// Batches of one unit of work.
pub(crate) type Batches = Box<dyn Iterator<Item = Result<RecordBatch, ArrowError>> + Send>;

/// Something that makes rows deterministically, unit by unit.
pub(crate) trait BatchGenerator: Send + Sync + fmt::Debug + 'static {
    /// Shown in EXPLAIN, e.g. `tpch lineitem sf=1`.
    fn describe(&self) -> String;
    /// The schema of every batch.
    fn schema(&self) -> SchemaRef;
    /// The batches of `unit`, in order. `task` is the executing epoch's
    /// (a generator that gives up on rows reaches its dead letters through it).
    fn generate(&self, unit: u64, task: &TaskContext) -> Batches;
}

/// The units of one slice of a generator, as a table.
#[derive(Debug)]
pub(crate) struct GeneratedTable {
    generator: Arc<dyn BatchGenerator>,
    units: Vec<u64>,
    target_partitions: usize,
}

impl GeneratedTable {
    /// A table of `units` of `generator`, scanned with up to `target_partitions` partitions.
    pub(crate) fn new(
        generator: Arc<dyn BatchGenerator>,
        units: Vec<u64>,
        target_partitions: usize,
    ) -> Self {
        Self {
            generator,
            units,
            target_partitions,
        }
    }
}

#[async_trait]
impl TableProvider for GeneratedTable {
    fn schema(&self) -> SchemaRef {
        self.generator.schema()
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
        let partitions = self.target_partitions.clamp(1, self.units.len().max(1));
        let mut groups = vec![Vec::new(); partitions];
        for (i, u) in self.units.iter().enumerate() {
            groups[i % partitions].push(*u);
        }
        Ok(Arc::new(GenerateExec::try_new(
            Arc::clone(&self.generator),
            groups,
            projection.cloned(),
            limit,
        )?))
    }
}

/// Generates rows; see the module docs.
#[derive(Debug)]
pub(crate) struct GenerateExec {
    generator: Arc<dyn BatchGenerator>,
    groups: Vec<Vec<u64>>,
    projection: Option<Vec<usize>>,
    limit: Option<usize>,
    schema: SchemaRef,
    props: Arc<PlanProperties>,
}

impl GenerateExec {
    /// A scan generating `groups[i]` in partition `i`.
    pub(crate) fn try_new(
        generator: Arc<dyn BatchGenerator>,
        groups: Vec<Vec<u64>>,
        projection: Option<Vec<usize>>,
        limit: Option<usize>,
    ) -> Result<Self> {
        let schema = project_schema(&generator.schema(), projection.as_ref())?;
        let props = PlanProperties::new(
            EquivalenceProperties::new(Arc::clone(&schema)),
            Partitioning::UnknownPartitioning(groups.len().max(1)),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        Ok(Self {
            generator,
            groups,
            projection,
            limit,
            schema,
            props: Arc::new(props),
        })
    }
}

impl DisplayAs for GenerateExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let units: usize = self.groups.iter().map(Vec::len).sum();
        write!(
            f,
            "GenerateExec: {} units={units} partitions={}",
            self.generator.describe(),
            self.groups.len()
        )?;
        if let Some(p) = &self.projection {
            let all = self.generator.schema();
            let names: Vec<&str> = p.iter().map(|i| all.field(*i).name().as_str()).collect();
            write!(f, " projection=[{}]", names.join(", "))?;
        }
        if let Some(l) = self.limit {
            write!(f, " limit={l}")?;
        }
        Ok(())
    }
}

impl ExecutionPlan for GenerateExec {
    fn name(&self) -> &str {
        "GenerateExec"
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
    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if children.is_empty() {
            Ok(self)
        } else {
            internal_err!("GenerateExec has no children")
        }
    }
    fn execute(
        &self,
        partition: usize,
        ctx: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let units = self.groups.get(partition).cloned().unwrap_or_default();
        let generator = Arc::clone(&self.generator);
        let projection = self.projection.clone();
        let batches = units
            .into_iter()
            .flat_map(move |u| generator.generate(u, &ctx));
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
                    let b = if b.num_rows() > remaining {
                        b.slice(0, remaining)
                    } else {
                        b
                    };
                    remaining -= b.num_rows();
                    b
                }))
            })
            // a sluice error a generator gave (a row it gave up on) stays
            // one, so the run reports it as such
            .map(|r| {
                r.map_err(|e| match e {
                    ArrowError::ExternalError(inner) => DataFusionError::External(inner),
                    e => DataFusionError::from(e),
                })
            });
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            Arc::clone(&self.schema),
            futures::stream::iter(iter),
        )))
    }
}
