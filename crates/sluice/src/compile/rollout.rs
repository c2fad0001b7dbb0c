//! A rolled-out stage: every branch planned over its own copy of the input
//! (split for the canary when the stage has one input), under one
//! [`RolloutNode`] inside the stage's border.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::catalog::TableProvider;
use datafusion::datasource::ViewTable;
use datafusion::logical_expr::{Extension, LogicalPlan};
use datafusion::prelude::SessionContext;

use super::stages::{Branch, plan_branch};
use super::windows::TimeContext;
use crate::error::{Result, SluiceError};
use crate::ops::stage::StageNode;
use crate::rollout::config::{Mode, StageRollout};
use crate::rollout::exec::{PRIMARY, RolloutNode};
use crate::rollout::split::{CanarySplitNode, Side, can_split_by};
use crate::spec::PipelineSpec;
use crate::stages::StageConfig;
use crate::stages::external::ExternalRuntime;

/// Plans stage `name` with its variants; their runtimes join `externals`
/// (a variant's as `<name>@<variant>`).
pub(super) async fn plan_rollout(
    ctx: &SessionContext,
    spec: &PipelineSpec,
    name: &str,
    stage: &StageConfig,
    r: &StageRollout,
    externals: &mut BTreeMap<String, Arc<ExternalRuntime>>,
    time: &TimeContext,
) -> Result<LogicalPlan> {
    let issue = |key: String, message: String| {
        SluiceError::spec(spec.issue(key, message).with_help("see docs/rollout.md"))
    };
    // only a one-input stage's rows can be split between the branches
    let split = match stage.inputs() {
        [input] => Some(input.clone()),
        _ => None,
    };
    let by = match &split {
        Some(input) => {
            let schema = ctx
                .table(input.as_str())
                .await
                .map_err(|e| SluiceError::Internal(format!("input `{input}` of `{name}`: {e}")))?
                .schema()
                .as_arrow()
                .clone();
            if r.config.by.is_empty() {
                (0..schema.fields().len()).collect()
            } else {
                let mut idx = Vec::new();
                for c in &r.config.by {
                    let i = schema.index_of(c).map_err(|_| {
                        issue(
                            format!("stages.{name}.rollout.by"),
                            format!(
                                "`{c}` is not a column of `{input}`, the stage's input (columns: {})",
                                schema.fields().iter().map(|f| f.name().as_str()).collect::<Vec<_>>().join(", ")
                            ),
                        )
                    })?;
                    let t = schema.field(i).data_type();
                    if !can_split_by(t) {
                        return Err(issue(
                            format!("stages.{name}.rollout.by"),
                            format!(
                                "`{c}` is a {t}, which the canary split cannot hash: name scalar columns (integers, strings, dates, ...)"
                            ),
                        ));
                    }
                    idx.push(i);
                }
                idx
            }
        }
        None if r.config.mode == Mode::Canary => {
            return Err(issue(
                format!("stages.{name}.rollout.mode"),
                format!(
                    "a canary splits the rows of the stage's one input, and `{name}` reads {}",
                    stage.inputs().len()
                ),
            ));
        }
        None => Vec::new(),
    };

    let mut names = vec![PRIMARY.to_string()];
    let mut plans = Vec::new();
    let branches = std::iter::once((Branch::primary(name), stage, Side::Primary)).chain(
        r.variants
            .iter()
            .map(|(v, c)| (Branch::variant(name, v), c, Side::Variant)),
    );
    for (branch, config, side) in branches {
        let swapped = match &split {
            Some(input) => Some(split_input(ctx, name, input, side, &by).await?),
            None => None,
        };
        let planned = plan_branch(ctx, spec, &branch, config, time).await;
        if let (Some(input), Some(original)) = (&split, swapped) {
            restore(ctx, input, original)?;
        }
        let (plan, runtime) = planned?;
        if let Some(rt) = runtime {
            rt.keep_recent();
            externals.insert(branch.component.clone(), rt);
        }
        if side == Side::Variant {
            names.push(
                branch
                    .key
                    .rsplit('.')
                    .next()
                    .unwrap_or_default()
                    .to_string(),
            );
        }
        plans.push(plan);
    }

    // every branch makes the primary's columns
    let primary = plans[0].schema().as_arrow().clone();
    for (v, plan) in names.iter().zip(&plans).skip(1) {
        let theirs = plan.schema().as_arrow();
        let describe = |s: &datafusion::arrow::datatypes::Schema| {
            s.fields()
                .iter()
                .map(|f| format!("{} {}", f.name(), f.data_type()))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let same = theirs.fields().len() == primary.fields().len()
            && theirs
                .fields()
                .iter()
                .zip(primary.fields())
                .all(|(a, b)| a.name() == b.name() && a.data_type() == b.data_type());
        if !same {
            return Err(issue(
                format!("stages.{name}.variants.{v}"),
                format!(
                    "variant `{v}` of stage `{name}` makes other columns than the stage:\n  stage:   {}\n  variant: {}",
                    describe(&primary),
                    describe(theirs)
                ),
            ));
        }
    }
    for k in &r.config.key {
        if primary.index_of(k).is_err() {
            return Err(issue(
                format!("stages.{name}.rollout.key"),
                format!("`{k}` is not a column of stage `{name}`"),
            ));
        }
    }
    if let Some(c) = &r.config.variant_column
        && primary.index_of(c).is_ok()
    {
        return Err(issue(
            format!("stages.{name}.rollout.variant_column"),
            format!("stage `{name}` already has a column `{c}`"),
        ));
    }
    let node = RolloutNode::try_new(name, names, plans, r.config.variant_column.clone())
        .map_err(|e| SluiceError::Internal(format!("rollout of `{name}`: {e}")))?;
    let plan = LogicalPlan::Extension(Extension {
        node: Arc::new(node),
    });
    Ok(StageNode::wrap(name, stage.kind(), plan))
}

/// Registers `input` as its own plan under a split for `side`, while one
/// branch is planned; returns the provider to put back.
async fn split_input(
    ctx: &SessionContext,
    stage: &str,
    input: &str,
    side: Side,
    by: &[usize],
) -> Result<Arc<dyn TableProvider>> {
    let internal = |e: datafusion::error::DataFusionError| {
        SluiceError::Internal(format!("canary split of `{stage}`: {e}"))
    };
    let plan = ctx
        .table(input)
        .await
        .map_err(internal)?
        .into_unoptimized_plan();
    let node = CanarySplitNode {
        stage: stage.to_string(),
        side,
        by: by.to_vec(),
        input: plan,
    };
    let original = ctx
        .deregister_table(input)
        .map_err(internal)?
        .ok_or_else(|| {
            SluiceError::Internal(format!("input `{input}` of `{stage}` is not registered"))
        })?;
    let split = LogicalPlan::Extension(Extension {
        node: Arc::new(node),
    });
    ctx.register_table(input, Arc::new(ViewTable::new(split, None)))
        .map_err(internal)?;
    Ok(original)
}

fn restore(ctx: &SessionContext, input: &str, original: Arc<dyn TableProvider>) -> Result<()> {
    let internal = |e: datafusion::error::DataFusionError| {
        SluiceError::Internal(format!("input `{input}`: {e}"))
    };
    ctx.deregister_table(input).map_err(internal)?;
    ctx.register_table(input, original).map_err(internal)?;
    Ok(())
}
