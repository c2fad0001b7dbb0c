//! `ExternalStageExec`: sends its input through an external stage and streams back the output.
//!
//! - Input schema: the manifest's input schema (checked when the pipeline
//!   compiles); output schema: the manifest's output schema (the input
//!   schema for a pass-through stage).
//! - Emits: output batches as the stage answers them, partition by
//!   partition; one `DoExchange` per partition per epoch.
//! - State: the number of batches in flight (at most `max_in_flight`), the
//!   row errors seen.
//! - Failure: a fatal status, a closed stream without `flushed`, a batch
//!   without an answer within `timeout`, output that breaks the manifest, or a
//!   row error under `on_error = "fail"` fails the partition with an error
//!   naming the stage; unavailable/timeout failures are retryable (the epoch loop
//!   re-runs the epoch from its offsets).

use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::Session;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DFSchema, DFSchemaRef, Result, internal_datafusion_err};
use datafusion::error::DataFusionError;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::{
    Expr, LogicalPlan, UserDefinedLogicalNode, UserDefinedLogicalNodeCore,
};
use datafusion::physical_expr::EquivalenceProperties;
use datafusion::physical_plan::stream::RecordBatchReceiverStreamBuilder;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, PhysicalExpr,
    PlanProperties,
};
use datafusion::physical_planner::{ExtensionPlanner, PhysicalPlanner};
use futures::StreamExt;
use opentelemetry::KeyValue;
use sluice_contract::ErrorCode;
use sluice_flight::envelope::Kind;
use sluice_flight::manifest::check_schema;
use sluice_flight::row_errors::SentBatches;
use sluice_flight::{OpenRequest, StageError, StageEvent};
use tokio::sync::Semaphore;
use tracing::Instrument;

use crate::dead_letter::DeadLetter;
use crate::epoch::EpochBinding;
use crate::error::{RetryHint, SluiceError};
use crate::metrics::ComponentId;
use crate::observe::trace;
use crate::stages::external::{ExternalRuntime, OnError};
use crate::stages::snapshot;
use crate::state::StateScope;

/// Logical node of an external stage.
#[derive(Debug, Clone)]
pub(crate) struct ExternalStageNode {
    /// The runtime of the stage.
    pub runtime: Arc<ExternalRuntime>,
    /// Its input plan.
    pub input: LogicalPlan,
    /// Its output schema.
    pub schema: DFSchemaRef,
}

impl ExternalStageNode {
    /// A node sending `input` through the stage; the output schema comes from the manifest.
    pub(crate) fn try_new(runtime: Arc<ExternalRuntime>, input: LogicalPlan) -> Result<Self> {
        let input_schema = Arc::new(input.schema().as_arrow().clone());
        let out = runtime.manifest.output_for(&input_schema);
        let schema = Arc::new(DFSchema::try_from(out.as_ref().clone())?);
        Ok(Self {
            runtime,
            input,
            schema,
        })
    }
}

impl PartialEq for ExternalStageNode {
    fn eq(&self, other: &Self) -> bool {
        self.runtime.name == other.runtime.name && self.input == other.input
    }
}
impl Eq for ExternalStageNode {}
impl PartialOrd for ExternalStageNode {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        self.runtime.name.partial_cmp(&other.runtime.name)
    }
}
impl Hash for ExternalStageNode {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.runtime.name.hash(state);
        self.input.hash(state);
    }
}

impl UserDefinedLogicalNodeCore for ExternalStageNode {
    fn name(&self) -> &str {
        "ExternalStage"
    }
    fn inputs(&self) -> Vec<&LogicalPlan> {
        vec![&self.input]
    }
    fn schema(&self) -> &DFSchemaRef {
        &self.schema
    }
    fn expressions(&self) -> Vec<Expr> {
        vec![]
    }
    fn fmt_for_explain(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "ExternalStage: {} ({} {} {})",
            self.runtime.name,
            self.runtime.manifest.name,
            self.runtime.manifest.version,
            self.runtime.manifest.language
        )
    }
    fn with_exprs_and_inputs(
        &self,
        _exprs: Vec<Expr>,
        mut inputs: Vec<LogicalPlan>,
    ) -> Result<Self> {
        let input = inputs
            .pop()
            .ok_or_else(|| internal_datafusion_err!("external stage rebuilt without input"))?;
        Ok(Self {
            runtime: Arc::clone(&self.runtime),
            input,
            schema: Arc::clone(&self.schema),
        })
    }
}

/// Plans [`ExternalStageNode`] into [`ExternalStageExec`].
#[derive(Debug, Default)]
pub(crate) struct ExternalStagePlanner;

#[async_trait]
impl ExtensionPlanner for ExternalStagePlanner {
    async fn plan_extension(
        &self,
        _planner: &dyn PhysicalPlanner,
        node: &dyn UserDefinedLogicalNode,
        _logical_inputs: &[&LogicalPlan],
        physical_inputs: &[Arc<dyn ExecutionPlan>],
        _session: &dyn Session,
        _ctx: &PhysicalPlanningContext,
    ) -> Result<Option<Arc<dyn ExecutionPlan>>> {
        let Some(n) = node.as_any().downcast_ref::<ExternalStageNode>() else {
            return Ok(None);
        };
        let input = physical_inputs.first().ok_or_else(|| {
            internal_datafusion_err!("external stage `{}` has no input", n.runtime.name)
        })?;
        let schema: SchemaRef = Arc::new(n.schema.as_arrow().clone());
        Ok(Some(Arc::new(ExternalStageExec::new(
            Arc::clone(&n.runtime),
            Arc::clone(input),
            schema,
        ))))
    }
}

/// Runs an external stage; see the module docs.
#[derive(Debug)]
pub(crate) struct ExternalStageExec {
    runtime: Arc<ExternalRuntime>,
    input: Arc<dyn ExecutionPlan>,
    schema: SchemaRef,
    props: Arc<PlanProperties>,
}

impl ExternalStageExec {
    /// An exec sending `input` through `runtime`'s stage.
    pub(crate) fn new(
        runtime: Arc<ExternalRuntime>,
        input: Arc<dyn ExecutionPlan>,
        schema: SchemaRef,
    ) -> Self {
        let props = PlanProperties::new(
            EquivalenceProperties::new(Arc::clone(&schema)),
            input.output_partitioning().clone(),
            input.pipeline_behavior(),
            input.boundedness(),
        );
        Self {
            runtime,
            input,
            schema,
            props: Arc::new(props),
        }
    }
}

impl DisplayAs for ExternalStageExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let m = &self.runtime.manifest;
        write!(
            f,
            "ExternalStageExec: stage={} impl={}@{} language={} max_in_flight={}",
            self.runtime.name, m.name, m.version, m.language, self.runtime.config.max_in_flight
        )
    }
}

impl ExecutionPlan for ExternalStageExec {
    fn name(&self) -> &str {
        "ExternalStageExec"
    }
    fn properties(&self) -> &Arc<PlanProperties> {
        &self.props
    }
    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }
    fn maintains_input_order(&self) -> Vec<bool> {
        vec![self.runtime.manifest.ordering == sluice_flight::manifest::Ordering::Preserve]
    }
    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }
    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let input = children
            .pop()
            .ok_or_else(|| internal_datafusion_err!("ExternalStageExec without child"))?;
        Ok(Arc::new(ExternalStageExec::new(
            Arc::clone(&self.runtime),
            input,
            Arc::clone(&self.schema),
        )))
    }
    fn execute(
        &self,
        partition: usize,
        ctx: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let binding = EpochBinding::of_task(&ctx)?;
        // a stateful stage's state lives in the sink's state (none where no
        // sink plan runs, as in `sluice stage bench`)
        let state = StateScope::of_task(&ctx).ok();
        let partitions = self.input.output_partitioning().partition_count();
        let input = self.input.execute(partition, ctx)?;
        let mut builder = RecordBatchReceiverStreamBuilder::new(Arc::clone(&self.schema), 2);
        let tx = builder.tx();
        let runtime = Arc::clone(&self.runtime);
        let schema = Arc::clone(&self.schema);
        // the exchange's span, under the epoch's; the stage's own spans go under it
        let span = trace::start(
            "exchange",
            binding.trace(),
            vec![
                trace::component(&runtime.name),
                KeyValue::new("sluice.partition", partition as i64),
            ],
            None,
        );
        let exchange_of = Exchange {
            runtime: Arc::clone(&runtime),
            binding,
            state,
            partition,
            partitions,
            traceparent: trace::traceparent(&span),
        };
        let log_span = trace::log_span(&span);
        builder.spawn(async move {
            let result = exchange(exchange_of, input, schema, tx)
                .instrument(log_span)
                .await;
            match &result {
                Err(Failure::Stage(e)) => trace::end(&span, Some(e)),
                Err(Failure::Input(e)) => trace::end(&span, Some(e)),
                Ok(()) => trace::end(&span, None),
            }
            match result {
                Ok(()) => Ok(()),
                Err(Failure::Input(e)) => Err(e),
                Err(Failure::Stage(e)) => {
                    // a dead child explains a broken stream: that may pass with a restart
                    let e = match runtime.exit_status().await {
                        Some(status) if !e.code.is_retryable() => StageError::new(
                            ErrorCode::Unavailable,
                            format!(
                                "the stage process exited ({status}) mid-exchange: {}",
                                e.message
                            ),
                        ),
                        _ => e,
                    };
                    if e.code.is_retryable() {
                        runtime.reset(e.code == ErrorCode::Timeout).await;
                    }
                    Err(stage_failure(&runtime.name, e).into_datafusion())
                }
            }
        });
        Ok(builder.build())
    }
}

fn stage_failure(stage: &str, e: StageError) -> SluiceError {
    let retry = if e.code.is_retryable() {
        RetryHint::WithBackoff
    } else {
        RetryHint::Never
    };
    SluiceError::Stage {
        stage: stage.to_string(),
        code: e.code,
        message: e.message,
        retry,
    }
}

/// Which exchange: the stage, the epoch it belongs to, the plan partition.
struct Exchange {
    runtime: Arc<ExternalRuntime>,
    binding: Arc<EpochBinding>,
    /// The sink's state, for a stateful stage's snapshots.
    state: Option<Arc<StateScope>>,
    /// How many partitions the plan has (a snapshot is one partition's).
    partitions: usize,
    partition: usize,
    /// The exchange span's W3C context, sent to the stage with every batch.
    traceparent: Option<String>,
}

/// One exchange, boxed: rustc cannot prove the unboxed future `Send` for
/// DataFusion's task spawner (a higher-ranked lifetime limitation).
fn exchange(
    of: Exchange,
    input: SendableRecordBatchStream,
    schema: SchemaRef,
    tx: tokio::sync::mpsc::Sender<Result<RecordBatch>>,
) -> futures::future::BoxFuture<'static, Result<(), Failure>> {
    Box::pin(exchange_inner(of, input, schema, tx))
}

/// Why an exchange ended early: the stage, or the stage's own input.
enum Failure {
    Stage(StageError),
    Input(DataFusionError),
}

impl From<StageError> for Failure {
    fn from(e: StageError) -> Self {
        Failure::Stage(e)
    }
}

async fn exchange_inner(
    of: Exchange,
    input: SendableRecordBatchStream,
    schema: SchemaRef,
    tx: tokio::sync::mpsc::Sender<Result<RecordBatch>>,
) -> Result<(), Failure> {
    let input_failed: Arc<std::sync::Mutex<Option<DataFusionError>>> = Arc::default();
    let result = exchange_body(of, input, schema, tx, Arc::clone(&input_failed)).await;
    // an upstream failure explains whatever the stage then said: report it
    if let Some(e) = input_failed
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
    {
        return Err(Failure::Input(e));
    }
    result.map_err(Failure::Stage)
}

async fn exchange_body(
    of: Exchange,
    input: SendableRecordBatchStream,
    schema: SchemaRef,
    tx: tokio::sync::mpsc::Sender<Result<RecordBatch>>,
    input_failed: Arc<std::sync::Mutex<Option<DataFusionError>>>,
) -> Result<(), StageError> {
    let Exchange {
        runtime,
        binding,
        state,
        partition,
        partitions,
        traceparent,
    } = of;
    let mut client = runtime.client().await?;
    // decided per exchange: the manifest is described after the first connection
    client.use_shared_memory(runtime.config.shared_memory && runtime.manifest.shared_memory);
    client.count_sent_in_shared_memory(Arc::clone(&runtime.shm_input_batches));
    let manifest = runtime.manifest.clone();
    let config = runtime.config.clone();
    let mut open = OpenRequest::new(
        // the version `describe` settled on
        &manifest.protocol,
        &runtime.name,
        binding.epoch(),
        partition as u32,
    )
    .with_config(config.config_json());
    let stateful = open.carries_state(&manifest);
    let state_key = snapshot::key(&runtime.name, partition);
    if stateful && let Some(scope) = &state {
        open.snapshot = scope
            .previous(&state_key)
            .map(|s| snapshot::to_base64(&s, partitions))
            .transpose()?;
    }
    let input_schema = input.schema();
    // an `unchanged` answer is the batch the engine sent, taken as output:
    // offered only where what it sends passes for the output schema (the
    // engine's check, not each SDK's idea of it)
    client.offer_unchanged_answers(
        runtime.config.unchanged_answers && check_schema(&schema, &input_schema).is_ok(),
    );
    let max_rows = manifest.max_batch_rows.min(usize::MAX as u64) as usize;
    let max_bytes = manifest.max_batch_bytes.min(usize::MAX as u64) as usize;
    // backpressure: a permit per batch in flight, returned when it is answered
    let permits = Arc::new(Semaphore::new(config.max_in_flight.max(1)));
    let in_flight = Arc::new(AtomicUsize::new(0));
    let sent = Arc::new(AtomicU64::new(0));
    // a feeder task reads the input and hands batches to the exchange as
    // permits allow; an input error is passed on through `input_failed`
    let (feed, fed) = tokio::sync::mpsc::channel::<Result<RecordBatch, StageError>>(1);
    // send time of every batch, by sequence number, for round-trip latency
    let sent_at: Arc<std::sync::Mutex<std::collections::VecDeque<(u64, std::time::Instant)>>> =
        Arc::default();
    // with on_error = "dead_letter", the batches still in flight (and a few
    // answered ones), by sequence number, to look up the rows of row errors
    let keep_sent = config.on_error == OnError::DeadLetter;
    let recent: Arc<std::sync::Mutex<std::collections::VecDeque<(u64, RecordBatch)>>> =
        Arc::default();
    let keep_at_most = 2 * config.max_in_flight.max(1) + 2;
    // the row count of every batch sent, to check the stage's row errors
    let sent_batches: Arc<std::sync::Mutex<SentBatches>> = Arc::default();
    // set once every input batch was handed over: only then may `flushed` come
    let input_done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let feeder = {
        let input_done = Arc::clone(&input_done);
        let recent = Arc::clone(&recent);
        let sent_batches = Arc::clone(&sent_batches);
        let (permits, in_flight, sent, failed) = (
            Arc::clone(&permits),
            Arc::clone(&in_flight),
            Arc::clone(&sent),
            Arc::clone(&input_failed),
        );
        let sent_at = Arc::clone(&sent_at);
        let mut input = input;
        tokio::spawn(async move {
            while let Some(b) = input.next().await {
                let b = match b {
                    Ok(b) => b,
                    Err(e) => {
                        *failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                        // abort the exchange: the stage must not see an `end`
                        let _ = feed
                            .send(Err(StageError::new(ErrorCode::Internal, "input failed")))
                            .await;
                        return;
                    }
                };
                for piece in sluice_flight::codec::slices(b, max_rows, max_bytes) {
                    if piece.num_rows() == 0 {
                        continue;
                    }
                    match Arc::clone(&permits).acquire_owned().await {
                        Ok(p) => p.forget(),
                        Err(_) => return,
                    }
                    in_flight.fetch_add(1, Ordering::Relaxed);
                    let seq = sent.fetch_add(1, Ordering::Relaxed);
                    sent_batches
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .sent(seq, piece.num_rows() as u64);
                    sent_at
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push_back((seq, std::time::Instant::now()));
                    if keep_sent {
                        let mut r = recent.lock().unwrap_or_else(|p| p.into_inner());
                        r.push_back((seq, piece.clone()));
                        while r.len() > keep_at_most {
                            r.pop_front();
                        }
                    }
                    if feed.send(Ok(piece)).await.is_err() {
                        return;
                    }
                }
            }
            // (before `feed` drops, which makes the client send `end`)
            input_done.store(true, Ordering::SeqCst);
        })
    };
    let _abort_feeder = AbortOnDrop(feeder);
    let batches = tokio_stream::wrappers::ReceiverStream::new(fed).boxed();
    let mut events = client
        .exchange(&open, input_schema, batches, traceparent)
        .await?;
    let timeout = runtime.answer_timeout();
    let mut rows_received = 0u64;
    let mut answers = Answers::default();
    // once the input is over and every batch answered, the stage owes
    // `flushed`: the timeout counts from then
    let mut owed_flushed_since: Option<std::time::Instant> = None;
    loop {
        // the timeout counts from the oldest unanswered batch's sending
        let oldest = sent_at
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .front()
            .map(|(_, t)| *t);
        let owed_since = match oldest {
            Some(t) => Some(t),
            None if input_done.load(Ordering::SeqCst) => {
                Some(*owed_flushed_since.get_or_insert_with(std::time::Instant::now))
            }
            None => None,
        };
        // nothing owed: look again soon, a batch may be sent meanwhile
        let wait = owed_since.map_or(IDLE_LOOK, |t| timeout.saturating_sub(t.elapsed()));
        let next = match tokio::time::timeout(wait, events.next()).await {
            Ok(n) => n,
            Err(_) => match owed_since {
                Some(t) if t.elapsed() >= timeout => {
                    runtime.check_timing(t.elapsed());
                    return Err(StageError::new(
                        ErrorCode::Timeout,
                        if oldest.is_some() {
                            format!("no answer to a batch within {timeout:?}")
                        } else {
                            format!("no `flushed` within {timeout:?} of the end of the input")
                        },
                    ));
                }
                _ => continue,
            },
        };
        let Some(event) = next else {
            return Err(StageError::new(
                ErrorCode::Unavailable,
                "the stage closed the exchange without `flushed` (did it crash?)",
            ));
        };
        let event = event?;
        let epoch = event.envelope().epoch;
        if epoch != open.epoch {
            return Err(violation(format!(
                "a `{}` message of epoch {epoch} in the exchange of epoch {}",
                event.envelope().kind.as_str(),
                open.epoch
            )));
        }
        match event {
            StageEvent::Batch { batch, envelope } => {
                if envelope.shm.is_some() {
                    runtime.shm_batches.fetch_add(1, Ordering::Relaxed);
                }
                let unchanged = envelope.kind == Kind::Unchanged;
                if unchanged {
                    // the engine's own batch, whose schema passed at the offer
                    runtime.unchanged_batches.fetch_add(1, Ordering::Relaxed);
                } else {
                    check_schema(&schema, &batch.schema()).map_err(|m| {
                        StageError::new(
                            ErrorCode::SchemaMismatch,
                            format!("output breaks the manifest: {m}"),
                        )
                    })?;
                }
                let batch = RecordBatch::try_new(Arc::clone(&schema), batch.columns().to_vec())
                    .map_err(|e| {
                        let what = if unchanged {
                            "an input batch answered `unchanged`"
                        } else {
                            "output"
                        };
                        StageError::new(
                            ErrorCode::SchemaMismatch,
                            format!("{what} breaks the manifest: {e}"),
                        )
                    })?;
                if let Some(seq) = envelope.in_seq {
                    let sent = sent.load(Ordering::Relaxed);
                    let newly = answers.answer(seq, sent).map_err(violation)?;
                    answered(&permits, &in_flight, newly);
                    if newly > 0 {
                        record(&runtime, &sent_at, seq);
                    }
                }
                rows_received += batch.num_rows() as u64;
                if forward(tx.clone(), batch).await.is_err() {
                    return Ok(());
                }
            }
            StageEvent::Ack(envelope) => {
                let Some(seq) = envelope.in_seq else {
                    return Err(violation(
                        "an `ack` has no `in_seq`: it must name the input batch it answers".into(),
                    ));
                };
                let newly = answers
                    .answer(seq, sent.load(Ordering::Relaxed))
                    .map_err(violation)?;
                answered(&permits, &in_flight, newly);
                if newly > 0 {
                    record(&runtime, &sent_at, seq);
                }
            }
            StageEvent::RowErrors(envelope) => {
                let errors = envelope.errors.unwrap_or_default();
                sent_batches
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .accept(envelope.in_seq, &errors)
                    .map_err(violation)?;
                match config.on_error {
                    OnError::Fail => {
                        let first = errors.first().map(code_of);
                        return Err(StageError::new(
                            first.as_ref().map_or(ErrorCode::Rejected, |f| f.0),
                            format!(
                                "{} row error(s) with on_error = \"fail\"; first: row {} of input batch {}: {}",
                                errors.len(),
                                errors.first().map_or(0, |f| f.row),
                                envelope.in_seq.unwrap_or(0),
                                first.as_ref().map_or("", |f| f.1.as_str())
                            ),
                        ));
                    }
                    OnError::Skip | OnError::DeadLetter => {
                        let skipped = config.on_error == OnError::Skip;
                        let batch = (!skipped)
                            .then(|| {
                                envelope.in_seq.and_then(|seq| {
                                    let r = recent.lock().unwrap_or_else(|p| p.into_inner());
                                    r.iter().find(|(s, _)| *s == seq).map(|(_, b)| b.clone())
                                })
                            })
                            .flatten();
                        for e in &errors {
                            // a skipped row is only counted: its input is not kept
                            let raw = match (&batch, skipped) {
                                (_, true) => String::new(),
                                (Some(b), false) => crate::ops::check::row_json(b, e.row as usize),
                                (None, false) => format!(
                                    "{{\"unavailable\": \"row {} of input batch {:?}\"}}",
                                    e.row, envelope.in_seq
                                ),
                            };
                            let key = format!("{partition}:{:?}:{}", envelope.in_seq, e.row);
                            let (code, message) = code_of(e);
                            binding.dead_letters().push(
                                key,
                                DeadLetter {
                                    component: ComponentId::Stage(runtime.name.clone()),
                                    code,
                                    message,
                                    file: None,
                                    line: None,
                                    offset: None,
                                    raw,
                                    skipped,
                                },
                            );
                        }
                    }
                }
            }
            StageEvent::Flushed(envelope) => {
                // an early `flushed` would end the partition with input unread
                let sent = sent.load(Ordering::Relaxed);
                if !input_done.load(Ordering::SeqCst) || answers.next < sent {
                    return Err(violation(format!(
                        "`flushed` before the exchange was over ({} of {sent} input batches answered{})",
                        answers.next,
                        if input_done.load(Ordering::SeqCst) {
                            ""
                        } else {
                            ", more input to come"
                        }
                    )));
                }
                match envelope.rows {
                    None => {
                        return Err(violation(
                            "`flushed` without `rows` (the count of output rows it sent)".into(),
                        ));
                    }
                    Some(rows) if rows != rows_received => {
                        return Err(violation(format!(
                            "the stage says it sent {rows} rows, {rows_received} arrived"
                        )));
                    }
                    Some(_) => {}
                }
                match (stateful, envelope.snapshot) {
                    (true, Some(text)) => {
                        let saved = snapshot::from_base64(&text, partitions).map_err(violation)?;
                        if let Some(scope) = &state {
                            scope.save(&state_key, saved);
                        }
                    }
                    (true, None) => {
                        return Err(violation(
                            "a stateful stage's `flushed` has no `snapshot` (its state after the exchange)".into(),
                        ));
                    }
                    (false, Some(_)) => {
                        return Err(violation(
                            "a `snapshot` from a stage whose manifest does not say stateful (or speaks v1)".into(),
                        ));
                    }
                    (false, None) => {}
                }
                return Ok(());
            }
        }
    }
}

/// A row error's code and message. A code outside the shared vocabulary
/// (a newer stage's) is read as `REJECTED`, and the message says so: the
/// row is still refused, and nothing is silently renamed.
fn code_of(e: &sluice_flight::RowErrorEntry) -> (ErrorCode, String) {
    match e.code.parse() {
        Ok(code) => (code, e.message.clone()),
        Err(_) => (
            ErrorCode::Rejected,
            format!(
                "{} (the stage's code `{}` is not in sluice.stage.v1's vocabulary; read as REJECTED)",
                e.message, e.code
            ),
        ),
    }
}

/// Sends one output batch downstream (owned sender, boxed: see [`exchange`]).
fn forward(
    tx: tokio::sync::mpsc::Sender<Result<RecordBatch>>,
    batch: RecordBatch,
) -> futures::future::BoxFuture<'static, Result<(), ()>> {
    Box::pin(async move { tx.send(Ok(batch)).await.map_err(|_| ()) })
}

/// Stops the feeder task when the exchange ends early.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How often an exchange that owes nothing looks again whether a batch was
/// sent (and so an answer is owed, with its timeout).
const IDLE_LOOK: Duration = Duration::from_millis(50);

/// Records the round trips of the input batches `seq` answers: it and every
/// earlier one still unanswered (answers come in order).
fn record(
    runtime: &ExternalRuntime,
    sent_at: &std::sync::Mutex<std::collections::VecDeque<(u64, std::time::Instant)>>,
    seq: u64,
) {
    let mut q = sent_at.lock().unwrap_or_else(|p| p.into_inner());
    while let Some((s, t)) = q.front().copied() {
        if s > seq {
            break;
        }
        q.pop_front();
        runtime.record_latency(t.elapsed());
    }
}

/// `n` more input batches are answered: their permits come back.
fn answered(permits: &Semaphore, in_flight: &AtomicUsize, n: u64) {
    if n == 0 {
        return;
    }
    let n = usize::try_from(n).unwrap_or(usize::MAX);
    permits.add_permits(n);
    let _ = in_flight.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |f| {
        Some(f.saturating_sub(n))
    });
}

/// A stage's answer that breaks the protocol: a bug of the stage, not retried.
fn violation(m: String) -> StageError {
    StageError::new(ErrorCode::Internal, format!("protocol violation: {m}"))
}

/// Which input batches are answered. Answers come in input order, so an
/// answer to batch `s` answers every batch up to `s`; a further `batch`
/// message for an answered batch (a large answer split in several) answers
/// nothing new. Counting this way, a stage that answers a batch twice does
/// not get two permits back, and backpressure holds.
#[derive(Debug, Default)]
struct Answers {
    /// The first batch not answered yet.
    next: u64,
}

impl Answers {
    /// An answer for input batch `in_seq`, `sent` batches having been sent:
    /// how many batches it newly answers.
    fn answer(&mut self, in_seq: u64, sent: u64) -> Result<u64, String> {
        if in_seq >= sent {
            return Err(format!(
                "an answer for input batch {in_seq}, which was never sent ({sent} sent)"
            ));
        }
        let newly = (in_seq + 1).saturating_sub(self.next);
        self.next = self.next.max(in_seq + 1);
        Ok(newly)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_answers_every_batch_up_to_it_once() {
        let mut a = Answers::default();
        assert_eq!(a.answer(0, 3), Ok(1));
        assert_eq!(a.answer(0, 3), Ok(0)); // a second batch message for batch 0
        assert_eq!(a.answer(2, 3), Ok(2)); // batch 1 had no answer of its own
        assert_eq!(a.answer(1, 3), Ok(0));
        assert!(a.answer(3, 3).unwrap_err().contains("never sent"));
    }
}
