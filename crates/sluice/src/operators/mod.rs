//! Physical operators as stages: `kind = "operator"`.
//!
//! Some stream work is not a query: keeping the first of a key's rows
//! within a time horizon, handing on the rows of each window whole. An
//! operator stage plans such work as a DataFusion `ExecutionPlan` over its
//! input, run once per epoch, with state carried from epoch to epoch
//! through [`StateScope`](crate::state::StateScope) and committed with the
//! epoch, as the windows of SQL stages are.
//!
//! ```toml
//! [stages.unique_bids]
//! kind = "operator"
//! operator = "dedupe"
//! inputs = ["bid"]
//! key = ["auction", "bidder"]
//! within = "10s"
//! ```
//!
//! | operator | what it does |
//! |---|---|
//! | [`dedupe`] | keeps a key's first row, drops its others less than `within` later in event time |
//! | [`window`] | hands on each window's rows together, with `window_start` and `window_end`, once the window closes |
//!
//! Your own: implement [`OperatorFactory`] (read the stage's table, check
//! the input) and [`Operator`] (plan an epoch), and register the factory
//! with [`crate::Engine::register_operator`]; a stage then names it in
//! `operator = "..."`. An operator reads and saves its state with
//! `StateScope::of_task(&ctx)?` in its `execute`: [`previous`] gives what
//! the last epoch saved (or the last commit restored), [`save`] keeps the
//! new state, [`watermark`] says how far event time has gone.
//!
//! [`previous`]: crate::state::StateScope::previous
//! [`save`]: crate::state::StateScope::save
//! [`watermark`]: crate::state::StateScope::watermark

pub mod dedupe;
mod rows;
pub mod window;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, RwLock};

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::Result;
use datafusion::physical_plan::ExecutionPlan;

use crate::state::Late;

/// One operator stage, built by its [`OperatorFactory`] at compile time.
pub trait Operator: fmt::Debug + Send + Sync {
    /// The schema of what it emits.
    fn schema(&self) -> SchemaRef;

    /// The plan of one epoch over `input` (a plan of the input's schema,
    /// the epoch's rows). It is executed once per epoch, partition 0 of
    /// its output being read when it has one partition.
    fn plan(&self, input: Arc<dyn ExecutionPlan>) -> Result<Arc<dyn ExecutionPlan>>;

    /// What output column `index` is, as far as event time goes: whether
    /// windows and event-time operators downstream may use it.
    fn column_timing(&self, index: usize) -> ColumnTiming {
        let _ = index;
        ColumnTiming::Other
    }
}

/// What an operator's output column is, for the stages downstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ColumnTiming {
    /// Nothing to do with event time (the default).
    Other,
    /// Input column `n`, unchanged, emitted no later than the watermark
    /// lets a window or dedupe downstream still take it (the event time
    /// flows on).
    Input(usize),
    /// The start of windows `size_us` long whose rows are all emitted in
    /// the same epoch, for every key: a `GROUP BY` on it downstream is
    /// complete in each epoch.
    WindowStart {
        /// Window length in µs.
        size_us: i64,
    },
}

/// What a factory is given to build an operator.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct OperatorContext {
    /// The stage (`<stage>@<variant>` for a variant in a rollout): the
    /// operator's state goes by this name (and names starting with it and
    /// a dot).
    pub stage: String,
    /// The stage's table without `kind`, `operator`, `inputs` and
    /// `description`: the operator's own options.
    pub options: toml::Table,
    /// The schema of the stage's input.
    pub input: SchemaRef,
    /// The input column that is the event time of a source upstream, if any.
    pub event_time: Option<String>,
    /// The event-time sources upstream: pass them to
    /// [`StateScope::watermark`](crate::state::StateScope::watermark).
    pub sources: Vec<String>,
    /// What the sources upstream say to do with late rows.
    pub late: Late,
}

impl OperatorContext {
    /// A context for stage `stage` over `input`, with no event time: what a
    /// factory's own tests build (the engine fills in the rest).
    pub fn new(stage: &str, options: toml::Table, input: SchemaRef) -> Self {
        Self {
            stage: stage.to_string(),
            options,
            input,
            event_time: None,
            sources: Vec::new(),
            late: Late::Drop,
        }
    }

    /// The same, with `column` of the input as the event time of `sources`.
    pub fn with_event_time(mut self, column: &str, sources: &[&str]) -> Self {
        self.event_time = Some(column.to_string());
        self.sources = sources.iter().map(|s| s.to_string()).collect();
        self
    }

    /// The options as `T` (a serde struct; unknown keys are the caller's to refuse).
    pub fn options<T: serde::de::DeserializeOwned>(&self) -> std::result::Result<T, String> {
        crate::spec::decode_table(self.options.clone())
    }

    /// The event-time column, or why the operator needs one.
    pub fn require_event_time(&self, operator: &str) -> std::result::Result<&str, String> {
        self.event_time.as_deref().ok_or_else(|| {
            format!(
                "the `{operator}` operator works on event time, and no column of its input is a source's `event_time`: set `event_time` on the source it reads"
            )
        })
    }
}

/// Builds an operator from a stage's table.
pub trait OperatorFactory: fmt::Debug + Send + Sync {
    /// The operator for this stage, or what is wrong with its options or
    /// its input (shown against the stage's table).
    fn create(&self, cx: &OperatorContext) -> std::result::Result<Arc<dyn Operator>, String>;
}

/// The operators a pipeline may name: the built-ins and the engine's.
#[derive(Debug, Default)]
pub(crate) struct OperatorRegistry {
    factories: RwLock<BTreeMap<String, Arc<dyn OperatorFactory>>>,
}

impl OperatorRegistry {
    /// The built-in operators.
    pub(crate) fn with_builtins() -> Self {
        let registry = Self::default();
        registry.register("dedupe", Arc::new(dedupe::DedupeFactory));
        registry.register("window", Arc::new(window::WindowFactory));
        registry
    }

    pub(crate) fn register(&self, name: &str, factory: Arc<dyn OperatorFactory>) {
        if let Ok(mut f) = self.factories.write() {
            f.insert(name.to_string(), factory);
        }
    }

    pub(crate) fn get(&self, name: &str) -> Option<Arc<dyn OperatorFactory>> {
        self.factories.read().ok()?.get(name).cloned()
    }

    pub(crate) fn names(&self) -> Vec<String> {
        self.factories
            .read()
            .map(|f| f.keys().cloned().collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
    use proptest::prelude::*;

    fn context(options: toml::Table) -> OperatorContext {
        OperatorContext {
            stage: "op".into(),
            options,
            input: Arc::new(Schema::new(vec![
                Field::new(
                    "ts",
                    DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
                    false,
                ),
                Field::new("k", DataType::Utf8, true),
                Field::new("v", DataType::Int64, true),
            ])),
            event_time: Some("ts".into()),
            sources: vec!["events".into()],
            late: Late::Drop,
        }
    }

    /// Values a pipeline file may hold for an option.
    fn value() -> impl Strategy<Value = toml::Value> {
        let duration = prop_oneof![
            Just("10s".to_string()),
            Just("0s".to_string()),
            Just("1ms".to_string()),
            Just("0.0000001s".to_string()),
            Just("99999999999999h".to_string()),
            Just("-5s".to_string()),
            "[0-9]{0,6}(ms|s|m|h|x)?",
        ];
        let column =
            prop_oneof![Just("k"), Just("ts"), Just("nope"), Just("")].prop_map(String::from);
        prop_oneof![
            duration.prop_map(toml::Value::String),
            column.clone().prop_map(toml::Value::String),
            proptest::collection::vec(column, 0..3)
                .prop_map(|c| toml::Value::Array(c.into_iter().map(toml::Value::String).collect())),
            any::<i64>().prop_map(toml::Value::Integer),
            any::<bool>().prop_map(toml::Value::Boolean),
        ]
    }

    proptest! {
        /// Whatever a stage's table holds, building an operator gives an
        /// operator or a message, never a panic.
        #[test]
        fn any_options_build_an_operator_or_say_what_is_wrong(
            entries in proptest::collection::vec(
                (prop_oneof![Just("key"), Just("within"), Just("size"), Just("slide"), Just("gap"), Just("extra")], value()),
                0..5,
            ),
        ) {
            let options: toml::Table = entries.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
            let registry = OperatorRegistry::with_builtins();
            for name in registry.names() {
                let factory = registry.get(&name).unwrap();
                match factory.create(&context(options.clone())) {
                    Ok(op) => {
                        // what it declares is a schema over the input's columns and more
                        prop_assert!(op.schema().fields().len() >= 2);
                    }
                    Err(message) => prop_assert!(!message.is_empty()),
                }
            }
        }
    }
}
