//! `EpochTable`: the table a source is registered as, showing the slice of
//! the epoch being planned.
//!
//! The pipeline's logical plan is built once against these tables, which
//! know only their schema. Physical planning of an epoch scans the slice the
//! epoch's [`EpochBinding`] holds for the source (nothing, when it has
//! none), so every epoch's plan reads exactly its own input. Every scan is wrapped
//! in a [`StageExec`] so the source's rows are counted; when the source has
//! an event time, in an [`EventTimeExec`] (the rows in the source's order,
//! the clock moved on, late rows out); when it declares checks, in a
//! [`CheckExec`] above that.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{ScanArgs, ScanResult, Session, TableProvider};
use datafusion::common::Result;
use datafusion::datasource::empty::EmptyTable;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown, TableType};
use datafusion::physical_plan::ExecutionPlan;

use datafusion::common::DFSchema;
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::physical_expr::create_physical_expr;
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_plan::PhysicalExpr;
use datafusion::physical_plan::projection::ProjectionExec;

use crate::dead_letter::OnError;
use crate::epoch::EpochBinding;
use crate::ops::check::{Check, CheckExec};
use crate::ops::event_time::{EventTimeExec, SourceOrder};
use crate::ops::stage::{StageExec, StageRole};

/// A source as a table whose content is the current epoch's slice.
#[derive(Debug)]
pub(crate) struct EpochTable {
    name: String,
    kind: String,
    schema: SchemaRef,
    progress: Arc<AtomicU64>,
    checks: Option<DeclaredChecks>,
    event_time: Option<EventTime>,
}

/// A source's event-time column and how its scan's partitions are ordered.
#[derive(Debug, Clone)]
pub(crate) struct EventTime {
    /// The column.
    pub column: String,
    /// How the scan's partitions make up the source's order.
    pub order: SourceOrder,
    /// What a row without event time does.
    pub on_error: OnError,
}

/// A source's declared checks: (text, expression over the source's columns).
#[derive(Debug, Clone)]
pub(crate) struct DeclaredChecks {
    /// The checks.
    pub checks: Vec<(String, Expr)>,
    /// What a failing row does.
    pub on_error: OnError,
}

impl EpochTable {
    /// A table for source `name` with a fixed schema; `progress` counts rows read.
    pub(crate) fn new(name: &str, kind: &str, schema: SchemaRef, progress: Arc<AtomicU64>) -> Self {
        Self {
            name: name.to_string(),
            kind: kind.to_string(),
            schema,
            progress,
            checks: None,
            event_time: None,
        }
    }

    /// The source's name.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// The column the source's rows are timed by, if any.
    pub(crate) fn event_time_column(&self) -> Option<String> {
        self.event_time.as_ref().map(|t| t.column.clone())
    }

    /// Reads the rows in the source's order and judges their event time.
    pub(crate) fn with_event_time(mut self, event_time: Option<EventTime>) -> Self {
        self.event_time = event_time;
        self
    }

    /// Checks every row read against `checks`.
    pub(crate) fn with_checks(mut self, checks: DeclaredChecks) -> Self {
        self.checks = (!checks.checks.is_empty()).then_some(checks);
        self
    }

    /// What this source reads in the epoch being planned: its slice, or
    /// nothing.
    fn current(&self, state: &dyn Session) -> Result<Arc<dyn TableProvider>> {
        let binding = EpochBinding::of_session(state)?;
        Ok(match binding.slice(&self.name) {
            Some(slice) => Arc::clone(slice),
            None => Arc::new(EmptyTable::new(Arc::clone(&self.schema))),
        })
    }
}

impl EpochTable {
    /// Scans every row of the slice (no filters or limits: every row read
    /// is ordered, timed and checked) with the columns asked for plus those
    /// the event time and the checks read; then times, checks, projects.
    async fn whole_scan(
        &self,
        state: &dyn Session,
        projection: Option<Vec<usize>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let wanted: Vec<usize> =
            projection.unwrap_or_else(|| (0..self.schema.fields().len()).collect());
        let mut read: std::collections::BTreeSet<usize> = wanted.iter().copied().collect();
        for (_, e) in self.checks.iter().flat_map(|c| &c.checks) {
            for c in e.column_refs() {
                read.insert(self.schema.index_of(&c.name)?);
            }
        }
        if let Some(t) = &self.event_time {
            read.insert(self.schema.index_of(&t.column)?);
        }
        let read: Vec<usize> = read.into_iter().collect();
        let args = ScanArgs::default().with_projection(Some(read.as_slice()));
        let mut plan = self
            .current(state)?
            .scan_with_args(state, args)
            .await?
            .into_inner();
        if let Some(t) = &self.event_time {
            plan = Arc::new(EventTimeExec::try_new(
                &self.name, &t.column, t.order, t.on_error, plan,
            )?);
        }
        if let Some(checks) = &self.checks {
            let df_schema = DFSchema::try_from(plan.schema().as_ref().clone())?;
            let props = datafusion::execution::context::ExecutionProps::new();
            let compiled = checks
                .checks
                .iter()
                .map(|(sql, e)| {
                    Ok(Check {
                        sql: sql.clone(),
                        expr: create_physical_expr(
                            &strip_qualifiers(e.clone())?,
                            &df_schema,
                            &props,
                            &PhysicalPlanningContext::default(),
                        )?,
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            plan = Arc::new(CheckExec::new(&self.name, compiled, checks.on_error, plan));
        }
        if read == wanted {
            return Ok(plan);
        }
        let exprs = wanted
            .iter()
            .map(|i| {
                let pos = read.iter().position(|r| r == i).unwrap_or(0);
                let name = self.schema.field(*i).name().clone();
                (
                    Arc::new(Column::new(&name, pos)) as Arc<dyn PhysicalExpr>,
                    name,
                )
            })
            .collect::<Vec<_>>();
        Ok(Arc::new(ProjectionExec::try_new(exprs, plan)?))
    }
}

/// A check parsed against the source's table may name columns with the
/// table's qualifier; the scan's schema has none.
fn strip_qualifiers(e: Expr) -> Result<Expr> {
    use datafusion::common::tree_node::{Transformed, TreeNode};
    e.transform(|e| match e {
        Expr::Column(c) if c.relation.is_some() => Ok(Transformed::yes(Expr::Column(
            datafusion::common::Column::new_unqualified(c.name),
        ))),
        other => Ok(Transformed::no(other)),
    })
    .map(|t| t.data)
}

#[async_trait]
impl TableProvider for EpochTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let args = ScanArgs::default()
            .with_projection(projection.map(|p| p.as_slice()))
            .with_filters(Some(filters))
            .with_limit(limit);
        Ok(self.scan_with_args(state, args).await?.into_inner())
    }

    async fn scan_with_args<'a>(
        &self,
        state: &dyn Session,
        args: ScanArgs<'a>,
    ) -> Result<ScanResult> {
        let inner = if self.checks.is_none() && self.event_time.is_none() {
            self.current(state)?
                .scan_with_args(state, args)
                .await?
                .into_inner()
        } else {
            self.whole_scan(state, args.projection().map(|p| p.to_vec()))
                .await?
        };
        let exec = StageExec::new(&self.name, &self.kind, StageRole::Source, inner)
            .with_progress(Arc::clone(&self.progress));
        Ok(ScanResult::new(Arc::new(exec)))
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        // Inexact: DataFusion keeps its own filter and also hands the
        // predicate to the slice's scan, which may use it to prune.
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }
}
