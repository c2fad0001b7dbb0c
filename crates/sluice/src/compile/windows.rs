//! Windows in SQL: finding the aggregates and joins over event-time
//! windows, planning them as operators that keep state across epochs, and
//! refusing the ones that would silently give per-epoch answers.
//!
//! Every column of a plan has a [`Timing`], traced back through
//! projections, filters, joins, unions, `unnest` and the views of earlier
//! stages to the source tables:
//!
//! - the event time of a source (`event_time = "ts"`);
//! - a window start *assigned* to each row: `date_bin(INTERVAL '1 minute', ts)`,
//!   `date_trunc('minute', ts)`, or an element of `unnest(hop(ts, slide, size))`;
//! - a window start *emitted* by a windowed operator upstream: all its rows
//!   of one window arrive in the same epoch, so a `GROUP BY` on it is
//!   complete within the epoch and needs no state; so is a join of two such
//!   streams when their operators share one watermark (the same sources);
//! - anything else.
//!
//! A `GROUP BY` with an assigned window key becomes a
//! [`WindowAggregateNode`]; a join whose `ON` equates window keys of the
//! same size on both sides (unless both are whole already) becomes a
//! [`WindowJoinNode`], which holds each window until the watermark of both
//! sides passes its end. An
//! aggregate, distinct, window function or join left over a source that
//! never ends is refused by `validate` unless its stage says `scope = "epoch"`.

use std::collections::{BTreeMap, BTreeSet};

use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{Result, ScalarValue, internal_err, plan_err};
use datafusion::datasource::{ViewTable, source_as_provider};
use datafusion::logical_expr::{Expr, JoinType, LogicalPlan};
use datafusion::optimizer::OptimizerRule;
use datafusion::optimizer::extract_equijoin_predicate::ExtractEquijoinPredicate;

use crate::functions::hop::interval_us;
use crate::operators::ColumnTiming;
use crate::ops::operator_stage::OperatorNode;
use crate::ops::window_aggregate::{WindowAggregateNode, WindowKind, Windowing};
use crate::ops::window_join::WindowJoinNode;
use crate::sources::EpochTable;
use crate::state::Late;

/// What the compiler knows of the sources, for tracing time.
#[derive(Debug, Default)]
pub(crate) struct TimeContext {
    /// The event-time column of each source that has one.
    pub event_times: BTreeMap<String, String>,
    /// What each event-time source's late rows do.
    pub late: BTreeMap<String, Late>,
    /// Sources that never end and are not lookups.
    pub streams: BTreeSet<String>,
    /// Sources read whole in every epoch.
    pub lookups: BTreeSet<String>,
}

/// What a column is, as far as time goes; see the module docs.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Timing {
    Other,
    /// The event time of these sources.
    EventTime(BTreeSet<String>),
    /// A window start assigned to each row, over the event time of `sources`.
    Assigned {
        size_us: i64,
        sources: BTreeSet<String>,
    },
    /// The window start of windows emitted whole upstream, by an operator
    /// whose watermark is that of `sources`: every row of a window comes
    /// out in the epoch that watermark passes the window's end.
    Emitted {
        size_us: i64,
        sources: BTreeSet<String>,
    },
    /// A list of hopping-window starts (before `unnest`).
    Hops {
        size_us: i64,
        sources: BTreeSet<String>,
    },
    /// `session(ts, gap)` over the event time `ts` of `sources`: a
    /// `GROUP BY` key for session windows.
    Session {
        gap_us: i64,
        ts: Box<Expr>,
        sources: BTreeSet<String>,
    },
}

impl Timing {
    fn window_size(&self) -> Option<i64> {
        match self {
            Timing::Assigned { size_us, .. } | Timing::Emitted { size_us, .. } => Some(*size_us),
            _ => None,
        }
    }
}

/// The source table or the view a scan reads.
enum Scanned {
    Source(String, Option<String>),
    View(LogicalPlan),
    Other,
}

fn scanned(scan: &datafusion::logical_expr::TableScan) -> Scanned {
    let Ok(provider) = source_as_provider(&scan.source) else {
        return Scanned::Other;
    };
    if let Some(t) = provider.downcast_ref::<EpochTable>() {
        return Scanned::Source(t.name().to_string(), t.event_time_column());
    }
    if let Some(v) = provider.downcast_ref::<ViewTable>() {
        return Scanned::View(v.logical_plan().clone());
    }
    Scanned::Other
}

impl TimeContext {
    /// What the opened sources say.
    pub(crate) fn of(
        spec: &crate::spec::PipelineSpec,
        opened: &BTreeMap<
            String,
            (
                Box<dyn crate::sources::AnySource>,
                super::plan::PlannedSource,
            ),
        >,
    ) -> Self {
        let mut cx = TimeContext::default();
        for (name, (source, planned)) in opened {
            if planned.lookup {
                cx.lookups.insert(name.clone());
            } else if !source.is_bounded() {
                cx.streams.insert(name.clone());
            }
            if let Some(t) = spec.sources.get(name).and_then(|c| c.event_time.as_ref()) {
                cx.event_times.insert(name.clone(), t.column.clone());
                cx.late.insert(name.clone(), t.late);
            }
        }
        cx
    }

    /// The timing of output column `index` of `plan`.
    pub(crate) fn column(&self, plan: &LogicalPlan, index: usize) -> Timing {
        match plan {
            LogicalPlan::Projection(p) => match p.expr.get(index) {
                Some(e) => self.expr(e, &p.input),
                None => Timing::Other,
            },
            LogicalPlan::Filter(f) => self.column(&f.input, index),
            LogicalPlan::Sort(s) => self.column(&s.input, index),
            LogicalPlan::Limit(l) => self.column(&l.input, index),
            LogicalPlan::Repartition(r) => self.column(&r.input, index),
            LogicalPlan::SubqueryAlias(a) => self.column(&a.input, index),
            LogicalPlan::Distinct(datafusion::logical_expr::Distinct::All(input)) => {
                self.column(input, index)
            }
            LogicalPlan::Window(w) if index < w.input.schema().fields().len() => {
                self.column(&w.input, index)
            }
            LogicalPlan::TableScan(scan) => {
                let i = scan
                    .projection
                    .as_ref()
                    .map_or(Some(index), |p| p.get(index).copied());
                let Some(i) = i else { return Timing::Other };
                match scanned(scan) {
                    Scanned::Source(name, Some(column)) => {
                        let field = scan.source.schema();
                        if field.fields().get(i).is_some_and(|f| *f.name() == column) {
                            Timing::EventTime(BTreeSet::from([name]))
                        } else {
                            Timing::Other
                        }
                    }
                    Scanned::View(view) => self.column(&view, i),
                    _ => Timing::Other,
                }
            }
            LogicalPlan::Join(j) => {
                let left = j.left.schema().fields().len();
                match j.join_type {
                    JoinType::LeftSemi | JoinType::LeftAnti | JoinType::LeftMark => {
                        self.column(&j.left, index)
                    }
                    JoinType::RightSemi | JoinType::RightAnti | JoinType::RightMark => {
                        self.column(&j.right, index)
                    }
                    _ if index < left => self.column(&j.left, index),
                    _ => self.column(&j.right, index - left),
                }
            }
            LogicalPlan::Union(u) => {
                let all: Vec<Timing> = u.inputs.iter().map(|i| self.column(i, index)).collect();
                match all.first() {
                    Some(first) if all.iter().all(|t| t == first) => first.clone(),
                    _ if all.iter().all(|t| matches!(t, Timing::EventTime(_))) => {
                        Timing::EventTime(
                            all.into_iter()
                                .flat_map(|t| match t {
                                    Timing::EventTime(s) => s,
                                    _ => BTreeSet::new(),
                                })
                                .collect(),
                        )
                    }
                    _ => Timing::Other,
                }
            }
            LogicalPlan::Aggregate(a) => match a.group_expr.get(index) {
                // grouped by a window emitted whole: still whole
                Some(e) => match self.expr(e, &a.input) {
                    t @ Timing::Emitted { .. } => t,
                    _ => Timing::Other,
                },
                None => Timing::Other,
            },
            LogicalPlan::Unnest(u) => {
                let Some(&dep) = u.dependency_indices.get(index) else {
                    return Timing::Other;
                };
                let unnested = u.list_type_columns.iter().any(|(i, _)| *i == dep);
                match (self.column(&u.input, dep), unnested) {
                    (Timing::Hops { size_us, sources }, true) => {
                        Timing::Assigned { size_us, sources }
                    }
                    (_, true) => Timing::Other,
                    (t, false) => t,
                }
            }
            LogicalPlan::Extension(e) => {
                let node = e.node.as_any();
                if let Some(s) = node.downcast_ref::<crate::ops::stage::StageNode>() {
                    return self.column(&s.input, index);
                }
                if let Some(w) = node.downcast_ref::<WindowAggregateNode>() {
                    return if index == w.windowing.window {
                        match w.windowing.kind {
                            WindowKind::Fixed { size_us } => Timing::Emitted {
                                size_us,
                                sources: w.windowing.sources.iter().cloned().collect(),
                            },
                            // each key's sessions close at their own times:
                            // a session start is not whole across keys
                            WindowKind::Session { .. } => Timing::Other,
                        }
                    } else {
                        match w.aggregate.group_expr.get(index) {
                            Some(e) => match self.expr(e, &w.aggregate.input) {
                                t @ Timing::Emitted { .. } => t,
                                _ => Timing::Other,
                            },
                            None => Timing::Other,
                        }
                    };
                }
                if let Some(o) = node.downcast_ref::<OperatorNode>() {
                    return match o.operator.column_timing(index) {
                        ColumnTiming::Input(i) => self.column(&o.input, i),
                        ColumnTiming::WindowStart { size_us } => Timing::Emitted {
                            size_us,
                            sources: self.sources_of(&o.input),
                        },
                        _ => Timing::Other,
                    };
                }
                if let Some(j) = node.downcast_ref::<WindowJoinNode>() {
                    // rows of a window come out together, when the join's
                    // watermark passes its end
                    return match self.column(&LogicalPlan::Join(j.join.clone()), index) {
                        Timing::Assigned { size_us, .. } | Timing::Emitted { size_us, .. } => {
                            Timing::Emitted {
                                size_us,
                                sources: j.windowing.sources.iter().cloned().collect(),
                            }
                        }
                        t => t,
                    };
                }
                Timing::Other
            }
            _ => Timing::Other,
        }
    }

    /// The timing of `expr` over `input`'s columns.
    pub(crate) fn expr(&self, expr: &Expr, input: &LogicalPlan) -> Timing {
        match expr {
            Expr::Column(c) => match input.schema().index_of_column(c) {
                Ok(i) => self.column(input, i),
                Err(_) => Timing::Other,
            },
            Expr::Alias(a) => self.expr(&a.expr, input),
            Expr::Cast(c)
                if matches!(
                    c.field.data_type(),
                    datafusion::arrow::datatypes::DataType::Timestamp(_, _)
                ) =>
            {
                self.expr(&c.expr, input)
            }
            Expr::ScalarFunction(f) => {
                let name = f.func.name();
                let args = &f.args;
                match (name, args.as_slice()) {
                    ("date_bin", [stride, ts, rest @ ..]) if rest.len() <= 1 => {
                        let (Some(size_us), Timing::EventTime(sources)) =
                            (literal_interval(stride), self.expr(ts, input))
                        else {
                            return Timing::Other;
                        };
                        if rest.iter().any(|o| !matches!(o, Expr::Literal(..))) || size_us <= 0 {
                            return Timing::Other;
                        }
                        Timing::Assigned { size_us, sources }
                    }
                    ("date_trunc", [unit, ts]) => {
                        let size_us = match unit {
                            Expr::Literal(ScalarValue::Utf8(Some(u)), _)
                            | Expr::Literal(ScalarValue::Utf8View(Some(u)), _)
                            | Expr::Literal(ScalarValue::LargeUtf8(Some(u)), _) => {
                                match u.to_ascii_lowercase().as_str() {
                                    "second" => 1_000_000,
                                    "minute" => 60_000_000,
                                    "hour" => 3_600_000_000,
                                    "day" => 86_400_000_000,
                                    _ => return Timing::Other,
                                }
                            }
                            _ => return Timing::Other,
                        };
                        match self.expr(ts, input) {
                            Timing::EventTime(sources) => Timing::Assigned { size_us, sources },
                            _ => Timing::Other,
                        }
                    }
                    ("session", [ts, gap]) => match (self.expr(ts, input), literal_interval(gap)) {
                        (Timing::EventTime(sources), Some(gap_us)) if gap_us > 0 => {
                            Timing::Session {
                                gap_us,
                                ts: Box::new(ts.clone()),
                                sources,
                            }
                        }
                        _ => Timing::Other,
                    },
                    ("hop", [ts, slide, size]) => {
                        match (
                            self.expr(ts, input),
                            literal_interval(slide),
                            literal_interval(size),
                        ) {
                            (Timing::EventTime(sources), Some(s), Some(size_us))
                                if s > 0 && size_us > 0 =>
                            {
                                Timing::Hops { size_us, sources }
                            }
                            _ => Timing::Other,
                        }
                    }
                    _ => Timing::Other,
                }
            }
            _ => Timing::Other,
        }
    }

    /// The event-time sources whose rows reach `plan`.
    pub(crate) fn sources_of(&self, plan: &LogicalPlan) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        self.walk_scans(plan, &mut |name, _| {
            if self.event_times.contains_key(name) {
                out.insert(name.to_string());
            }
        });
        out
    }

    /// The streams (sources that never end, not lookups) whose rows reach `plan`.
    pub(crate) fn streams_of(&self, plan: &LogicalPlan) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        self.walk_scans(plan, &mut |name, _| {
            if self.streams.contains(name) {
                out.insert(name.to_string());
            }
        });
        out
    }

    /// Whether every source whose rows reach `plan` is a lookup (or none is read).
    fn only_lookups(&self, plan: &LogicalPlan) -> bool {
        let mut all = true;
        self.walk_scans(plan, &mut |name, _| all &= self.lookups.contains(name));
        all
    }

    /// Calls `f` with every source table read under `plan`, through views.
    fn walk_scans(&self, plan: &LogicalPlan, f: &mut dyn FnMut(&str, Option<&str>)) {
        let _ = plan.apply(|p| {
            if let LogicalPlan::TableScan(scan) = p {
                match scanned(scan) {
                    Scanned::Source(name, column) => f(&name, column.as_deref()),
                    Scanned::View(view) => self.walk_scans(&view, f),
                    Scanned::Other => {}
                }
            }
            // subqueries in expressions read sources too
            for sub in p.expressions().iter().flat_map(subqueries) {
                self.walk_scans(&sub, f);
            }
            Ok(TreeNodeRecursion::Continue)
        });
    }
}

/// The plans of subqueries inside `e`.
fn subqueries(e: &Expr) -> Vec<LogicalPlan> {
    let mut out = Vec::new();
    let _ = e.apply(|e| {
        match e {
            Expr::ScalarSubquery(s) => out.push(s.subquery.as_ref().clone()),
            Expr::Exists(x) => out.push(x.subquery.subquery.as_ref().clone()),
            Expr::InSubquery(x) => out.push(x.subquery.subquery.as_ref().clone()),
            _ => {}
        }
        Ok(TreeNodeRecursion::Continue)
    });
    out
}

/// The length in µs of a constant interval literal.
fn literal_interval(e: &Expr) -> Option<i64> {
    match e {
        Expr::Literal(v, _) => interval_us(v),
        Expr::Cast(c) => literal_interval(&c.expr),
        _ => None,
    }
}

/// Plans a stage's windowed aggregates and joins as stateful operators
/// named after `stage` (`<stage>`, then `<stage>.1`, ...).
pub(crate) fn plan_windows(
    plan: LogicalPlan,
    stage: &str,
    cx: &TimeContext,
) -> Result<LogicalPlan> {
    let mut n = 0usize;
    let mut next_name = || {
        let name = if n == 0 {
            stage.to_string()
        } else {
            format!("{stage}.{n}")
        };
        n += 1;
        name
    };
    let planned = plan.transform_up(|p| match p {
        LogicalPlan::Aggregate(a) => {
            let window = a.group_expr.iter().enumerate().find_map(|(i, e)| {
                match cx.expr(e, &a.input) {
                    Timing::Assigned { size_us, .. } => Some((i, WindowKind::Fixed { size_us }, None)),
                    // only `session()` itself: its `ts` is over this input
                    Timing::Session { gap_us, ts, .. } if is_session_itself(e) => {
                        Some((i, WindowKind::Session { gap_us }, Some(ts)))
                    }
                    _ => None,
                }
            });
            let Some((window, kind, session_ts)) = window else {
                let session = a.group_expr.iter().find(|e| {
                    is_session_call(e) || matches!(cx.expr(e, &a.input), Timing::Session { .. })
                });
                if let Some(e) = session {
                    return plan_err!(
                        "GROUP BY {e}: {}; write the call itself in the GROUP BY, with a source's event time as its first argument",
                        crate::functions::session::ONLY_AS_A_GROUP_KEY
                    );
                }
                return Ok(Transformed::no(LogicalPlan::Aggregate(a)));
            };
            let a = match session_ts {
                // sessions are aggregated by event time first (see ops/sessions.rs)
                Some(ts) => group_by_event_time(a, window, *ts)?,
                None => a,
            };
            let sources = cx.sources_of(&a.input);
            let windowing = Windowing {
                operator: next_name(),
                stage: stage.to_string(),
                window,
                kind,
                late: strictest(&sources, cx),
                sources: sources.into_iter().collect(),
            };
            Ok(Transformed::yes(WindowAggregateNode::plan(windowing, a)))
        }
        LogicalPlan::Join(j) => {
            let join = normalize_join(LogicalPlan::Join(j))?;
            let LogicalPlan::Join(j) = join else {
                return Ok(Transformed::no(join));
            };
            // windows of the same size on both sides, unless both come whole
            // in the same epoch already
            if j.on.iter().any(|(l, r)| whole_on_both_sides(cx, &j, l, r)) {
                return Ok(Transformed::no(LogicalPlan::Join(j)));
            }
            let key = j.on.iter().enumerate().find_map(|(i, (l, r))| {
                let (lt, rt) = (cx.expr(l, &j.left), cx.expr(r, &j.right));
                match (lt.window_size(), rt.window_size()) {
                    (Some(a), Some(b)) if a == b => Some((i, a)),
                    _ => None,
                }
            });
            let Some((key, size_us)) = key else {
                return Ok(Transformed::no(LogicalPlan::Join(j)));
            };
            let mut sources = cx.sources_of(&j.left);
            sources.extend(cx.sources_of(&j.right));
            let windowing = Windowing {
                operator: next_name(),
                stage: stage.to_string(),
                window: key,
                kind: WindowKind::Fixed { size_us },
                late: strictest(&sources, cx),
                sources: sources.into_iter().collect(),
            };
            Ok(Transformed::yes(WindowJoinNode::plan(windowing, j)))
        }
        other => Ok(Transformed::no(other)),
    })
    .map(|t| t.data)?;
    refuse_session_left(&planned)?;
    Ok(planned)
}

/// A `session()` call the planning above did not turn into a session
/// window (in a SELECT or WHERE, beside another window key, with a gap
/// that is not a constant interval) would fail at run time: refuse it now.
fn refuse_session_left(plan: &LogicalPlan) -> Result<()> {
    let mut left = None;
    plan.apply(|p| {
        left = p.expressions().into_iter().find(is_session_call);
        Ok(if left.is_some() {
            TreeNodeRecursion::Stop
        } else {
            TreeNodeRecursion::Continue
        })
    })?;
    match left {
        Some(e) => plan_err!(
            "{e}: {}; it must be a key of its own in a GROUP BY, with a source's event time and a constant positive gap of fixed length (no months), and no other window key beside it",
            crate::functions::session::ONLY_AS_A_GROUP_KEY
        ),
        None => Ok(()),
    }
}

/// `a` grouped by the event time `ts` in place of its `session(ts, gap)`
/// key `window`, under the key's name: the schema stays the same.
fn group_by_event_time(
    a: datafusion::logical_expr::Aggregate,
    window: usize,
    ts: Expr,
) -> Result<datafusion::logical_expr::Aggregate> {
    let mut keys = a.group_expr.clone();
    let name = a.schema.field(window).name().clone();
    keys[window] = ts.alias(name);
    let rewritten = datafusion::logical_expr::Aggregate::try_new(a.input, keys, a.aggr_expr)?;
    let same = |x: &datafusion::arrow::datatypes::Field,
                y: &datafusion::arrow::datatypes::Field| {
        x.name() == y.name() && x.data_type() == y.data_type() && x.is_nullable() == y.is_nullable()
    };
    let fields = (rewritten.schema.fields(), a.schema.fields());
    if fields.0.len() != fields.1.len() || !fields.0.iter().zip(fields.1).all(|(x, y)| same(x, y)) {
        return internal_err!("grouping a session aggregate by event time changed its schema");
    }
    Ok(rewritten)
}

/// Whether `e` (under any alias) is a `session(...)` call.
fn is_session_itself(mut e: &Expr) -> bool {
    while let Expr::Alias(a) = e {
        e = &a.expr;
    }
    matches!(e, Expr::ScalarFunction(f) if f.func.name() == "session")
}

/// Whether `e` is `session(...)` or has it inside.
fn is_session_call(e: &Expr) -> bool {
    e.exists(|e| Ok(matches!(e, Expr::ScalarFunction(f) if f.func.name() == "session")))
        .unwrap_or(false)
}

/// Whether `l = r` of a join equates windows emitted whole on both sides
/// by operators of the same watermark: a window's rows of both sides then
/// come in the same epoch, and the join needs no state.
fn whole_on_both_sides(
    cx: &TimeContext,
    j: &datafusion::logical_expr::Join,
    l: &Expr,
    r: &Expr,
) -> bool {
    match (cx.expr(l, &j.left), cx.expr(r, &j.right)) {
        (
            Timing::Emitted {
                size_us: a,
                sources: sa,
            },
            Timing::Emitted {
                size_us: b,
                sources: sb,
            },
        ) => a == b && sa == sb,
        _ => false,
    }
}

/// Dead letters if any of `sources` asks for them, else drop.
pub(crate) fn strictest(sources: &BTreeSet<String>, cx: &TimeContext) -> Late {
    if sources
        .iter()
        .any(|s| cx.late.get(s) == Some(&Late::DeadLetter))
    {
        Late::DeadLetter
    } else {
        Late::Drop
    }
}

/// The `ON a = b` equalities of a join moved into its equi-keys, as
/// DataFusion's optimizer does later (the stage's plan is not optimized yet).
fn normalize_join(join: LogicalPlan) -> Result<LogicalPlan> {
    let config = datafusion::optimizer::OptimizerContext::new();
    ExtractEquijoinPredicate::new()
        .rewrite(join, &config)
        .map(|t| t.data)
}

/// Why a per-epoch result over a stream is refused: the operation and the streams.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PerEpoch {
    /// `GROUP BY k`, `a join`, ...
    pub what: String,
    /// The streams it reads.
    pub streams: Vec<String>,
}

/// The aggregates, distincts, window functions and joins of a stage's plan
/// that would give per-epoch answers over a stream (the plan of earlier
/// stages is theirs to answer for).
pub(crate) fn per_epoch_results(plan: &LogicalPlan, cx: &TimeContext) -> Vec<PerEpoch> {
    let mut out = Vec::new();
    let _ = plan.apply(|p| {
        let finding = match p {
            LogicalPlan::Aggregate(a) => {
                let whole = a
                    .group_expr
                    .iter()
                    .any(|e| matches!(cx.expr(e, &a.input), Timing::Emitted { .. }));
                let streams = cx.streams_of(&a.input);
                (!whole && !streams.is_empty()).then(|| PerEpoch {
                    what: if a.aggr_expr.is_empty() {
                        "DISTINCT / GROUP BY".into()
                    } else if a.group_expr.is_empty() {
                        format!("the aggregate {}", list(&a.aggr_expr))
                    } else {
                        format!("GROUP BY {}", list(&a.group_expr))
                    },
                    streams: streams.into_iter().collect(),
                })
            }
            LogicalPlan::Distinct(d) => {
                let input = d.input();
                let whole = (0..input.schema().fields().len())
                    .any(|i| matches!(cx.column(input, i), Timing::Emitted { .. }));
                let streams = cx.streams_of(input);
                (!whole && !streams.is_empty()).then(|| PerEpoch {
                    what: "DISTINCT".into(),
                    streams: streams.into_iter().collect(),
                })
            }
            LogicalPlan::Window(w) => {
                let streams = cx.streams_of(&w.input);
                let whole = w
                    .window_expr
                    .iter()
                    .all(|e| partitioned_by_emitted(e, &w.input, cx));
                (!whole && !streams.is_empty()).then(|| PerEpoch {
                    what: format!("the window function {}", list(&w.window_expr)),
                    streams: streams.into_iter().collect(),
                })
            }
            LogicalPlan::Join(j) => {
                let join = normalize_join(LogicalPlan::Join(j.clone())).unwrap_or(p.clone());
                let LogicalPlan::Join(j) = &join else {
                    return Ok(TreeNodeRecursion::Continue);
                };
                let whole = j.on.iter().any(|(l, r)| whole_on_both_sides(cx, j, l, r));
                let mut streams = cx.streams_of(&j.left);
                streams.extend(cx.streams_of(&j.right));
                let against_lookup = cx.only_lookups(&j.left) || cx.only_lookups(&j.right);
                (!whole && !against_lookup && !streams.is_empty()).then(|| PerEpoch {
                    what: format!("the {} join", j.join_type).to_lowercase(),
                    streams: streams.into_iter().collect(),
                })
            }
            _ => None,
        };
        out.extend(finding);
        Ok(TreeNodeRecursion::Continue)
    });
    out
}

/// Whether a window function is partitioned by a window emitted whole.
fn partitioned_by_emitted(e: &Expr, input: &LogicalPlan, cx: &TimeContext) -> bool {
    let mut e = e;
    while let Expr::Alias(a) = e {
        e = &a.expr;
    }
    match e {
        Expr::WindowFunction(w) => w
            .params
            .partition_by
            .iter()
            .any(|p| matches!(cx.expr(p, input), Timing::Emitted { .. })),
        _ => false,
    }
}

fn list(exprs: &[Expr]) -> String {
    exprs
        .iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
