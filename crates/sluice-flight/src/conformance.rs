//! The conformance kit: certifies that a stage speaks the stage protocol
//! (`sluice.stage.v1` or `v1.1`, whichever `describe` settles on).
//!
//! [`check`] runs every check against a live stage and returns one
//! [`CheckResult`] per check; `sluice stage check` prints them as a table.
//! Checks that need data generate it from the manifest's input schema (any
//! schema for pass-through stages, which also get the full type zoo: nested
//! struct and list, nullable, dictionary, decimal, timestamp with time zone).

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_array::builder::{Int32Builder, ListBuilder, StringDictionaryBuilder, StringViewBuilder};
use arrow_array::types::Int32Type;
use arrow_array::{
    Array, ArrayRef, BinaryViewArray, BooleanArray, Date32Array, Decimal128Array, Float32Array,
    Float64Array, Int8Array, Int16Array, Int32Array, Int64Array, LargeStringArray, RecordBatch,
    StringArray, StringViewArray, StructArray, TimestampMicrosecondArray, UInt32Array, UInt64Array,
    new_null_array,
};
use arrow_flight::flight_service_client::FlightServiceClient;
use arrow_flight::{FlightData, FlightDescriptor};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use futures::StreamExt;
use tonic::transport::Channel;

use crate::client::{StageClient, StageEvent, Target};
use crate::codec::{BatchEncoder, control_message};
use crate::envelope::{Envelope, Kind};
use crate::manifest::{ErrorSemantics, Manifest, OpenRequest, check_schema};
use crate::row_errors::SentBatches;
use crate::version::{self, DescribeRequest};
use crate::{MAX_MESSAGE_SIZE, StageError};
use sluice_contract::ErrorCode;

/// The outcome of one check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The stage behaves as the protocol says.
    Pass,
    /// It does not; why.
    Fail(String),
    /// The check does not apply to this stage; why.
    Skip(String),
}

/// One check and its outcome.
#[derive(Debug, Clone)]
pub struct CheckResult {
    /// Short name.
    pub name: &'static str,
    /// What it verifies.
    pub what: &'static str,
    /// The outcome.
    pub outcome: Outcome,
    /// How long it took.
    pub took: Duration,
    /// The path the batches took; `None` for checks without batches. The
    /// kit runs every exchange check over each path the stage offers.
    pub path: Option<BatchPath>,
}

/// The way the batches of an exchange travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchPath {
    /// In the Flight messages themselves.
    Flight,
    /// Through the exchange's shared memory ([`crate::shm`]).
    SharedMemory,
}

impl BatchPath {
    /// As the kit's table names it: `flight` or `shm`.
    pub fn as_str(self) -> &'static str {
        match self {
            BatchPath::Flight => "flight",
            BatchPath::SharedMemory => "shm",
        }
    }
}

/// A generated batch for `schema` of `rows` rows, when every type is one
/// the kit can generate.
pub fn sample_batch(schema: &SchemaRef, rows: usize, seed: u64) -> Option<RecordBatch> {
    let columns: Option<Vec<ArrayRef>> = schema
        .fields()
        .iter()
        .map(|f| sample_array(f, rows, seed))
        .collect();
    RecordBatch::try_new(Arc::clone(schema), columns?).ok()
}

fn sample_array(field: &Field, rows: usize, seed: u64) -> Option<ArrayRef> {
    let null = |i: usize| field.is_nullable() && (i as u64 + seed) % 7 == 3;
    let n = |i: usize| (i as u64).wrapping_mul(2654435761).wrapping_add(seed);
    Some(match field.data_type() {
        DataType::Boolean => Arc::new(
            (0..rows)
                .map(|i| (!null(i)).then_some(n(i) % 2 == 0))
                .collect::<BooleanArray>(),
        ),
        DataType::Int8 => Arc::new(
            (0..rows)
                .map(|i| (!null(i)).then_some((n(i) % 100) as i8))
                .collect::<Int8Array>(),
        ),
        DataType::Int16 => Arc::new(
            (0..rows)
                .map(|i| (!null(i)).then_some((n(i) % 1000) as i16))
                .collect::<Int16Array>(),
        ),
        // small positive values: valid for quantities, line numbers, keys
        DataType::Int32 => Arc::new(
            (0..rows)
                .map(|i| (!null(i)).then_some((n(i) % 50 + 1) as i32))
                .collect::<Int32Array>(),
        ),
        DataType::Int64 => Arc::new(
            (0..rows)
                .map(|i| (!null(i)).then_some((n(i) % 50 + 1) as i64))
                .collect::<Int64Array>(),
        ),
        DataType::UInt32 => Arc::new(
            (0..rows)
                .map(|i| (!null(i)).then_some((n(i) % 1000) as u32))
                .collect::<UInt32Array>(),
        ),
        DataType::UInt64 => Arc::new(
            (0..rows)
                .map(|i| (!null(i)).then_some(n(i) % 1000))
                .collect::<UInt64Array>(),
        ),
        DataType::Float32 => Arc::new(
            (0..rows)
                .map(|i| (!null(i)).then_some((n(i) % 1000) as f32 / 10.0))
                .collect::<Float32Array>(),
        ),
        DataType::Float64 => Arc::new(
            (0..rows)
                .map(|i| (!null(i)).then_some((n(i) % 100_000) as f64 / 100.0))
                .collect::<Float64Array>(),
        ),
        DataType::Utf8 => {
            let words = [
                "AIR",
                "MAIL",
                "SHIP",
                "TRUCK",
                "RAIL",
                "FOB",
                "REG AIR",
                "ünïcødé",
                "",
            ];
            Arc::new(
                (0..rows)
                    .map(|i| (!null(i)).then(|| words[(n(i) % 8) as usize]))
                    .collect::<StringArray>(),
            )
        }
        DataType::LargeUtf8 => Arc::new(
            (0..rows)
                .map(|i| (!null(i)).then(|| format!("v{}", n(i) % 97)))
                .collect::<LargeStringArray>(),
        ),
        DataType::Date32 => Arc::new(
            (0..rows)
                .map(|i| (!null(i)).then_some((n(i) % 20_000) as i32))
                .collect::<Date32Array>(),
        ),
        DataType::Timestamp(TimeUnit::Microsecond, tz) => Arc::new(
            (0..rows)
                .map(|i| (!null(i)).then_some((n(i) % 1_000_000_000) as i64 * 1000))
                .collect::<TimestampMicrosecondArray>()
                .with_timezone_opt(tz.clone()),
        ),
        DataType::Decimal128(p, s) => Arc::new(
            (0..rows)
                .map(|i| (!null(i)).then_some((n(i) % 1_000_000) as i128))
                .collect::<Decimal128Array>()
                .with_precision_and_scale(*p, *s)
                .ok()?,
        ),
        DataType::Null => new_null_array(&DataType::Null, rows),
        _ => return None,
    })
}

/// A batch of every type the protocol must carry intact.
pub fn type_zoo(rows: usize) -> RecordBatch {
    let tags = {
        let mut b = ListBuilder::new(Int32Builder::new());
        for i in 0..rows {
            if i % 5 == 4 {
                b.append_null();
            } else {
                for j in 0..(i % 3) {
                    b.values().append_value((i * 10 + j) as i32);
                }
                b.append(true);
            }
        }
        b.finish()
    };
    let dict = {
        let mut b = StringDictionaryBuilder::<Int32Type>::new();
        for i in 0..rows {
            if i % 6 == 5 {
                b.append_null()
            } else {
                b.append_value(["red", "green", "blue"][i % 3])
            }
        }
        b.finish()
    };
    let inner_fields = vec![
        Field::new("x", DataType::Int64, false),
        Field::new("label", DataType::Utf8, true),
    ];
    let point = StructArray::new(
        inner_fields.clone().into(),
        vec![
            Arc::new(Int64Array::from_iter_values((0..rows).map(|i| i as i64))) as ArrayRef,
            Arc::new(
                (0..rows)
                    .map(|i| (i % 4 != 0).then(|| format!("p{i}")))
                    .collect::<StringArray>(),
            ),
        ],
        None,
    );
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("maybe", DataType::Float64, true),
        Field::new("price", DataType::Decimal128(15, 2), true),
        Field::new(
            "at",
            DataType::Timestamp(TimeUnit::Microsecond, Some("Europe/Oslo".into())),
            true,
        ),
        Field::new("tags", tags.data_type().clone(), true),
        Field::new("color", dict.data_type().clone(), true),
        Field::new("point", DataType::Struct(inner_fields.into()), false),
    ]));
    let columns: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from_iter_values(0..rows as i64)),
        Arc::new(
            (0..rows)
                .map(|i| (i % 3 != 0).then_some(i as f64 / 3.0))
                .collect::<Float64Array>(),
        ),
        Arc::new(
            (0..rows)
                .map(|i| (i % 4 != 1).then_some(i as i128 * 101))
                .collect::<Decimal128Array>()
                .with_precision_and_scale(15, 2)
                .unwrap_or_else(|_| Decimal128Array::from(vec![0i128; rows])),
        ),
        Arc::new(
            (0..rows)
                .map(|i| (i % 5 != 2).then_some(1_700_000_000_000_000 + i as i64))
                .collect::<TimestampMicrosecondArray>()
                .with_timezone("Europe/Oslo"),
        ),
        Arc::new(tags),
        Arc::new(dict),
        Arc::new(point),
    ];
    // every column above is built for `schema`; a failure here is a bug in the kit
    RecordBatch::try_new(schema, columns).unwrap_or_else(|e| panic!("type zoo: {e}"))
}

/// A batch of view types (as DataFusion's readers make them): `Utf8View`
/// with short (inlined) and long strings, `BinaryView`, and a list of
/// `Utf8View`, with nulls.
pub fn view_zoo(rows: usize) -> RecordBatch {
    let text = |i: usize| match i % 4 {
        0 => None,
        1 => Some(format!("s{i}")),
        _ => Some(format!("a string longer than twelve bytes, number {i}")),
    };
    let names = {
        let mut b = ListBuilder::new(StringViewBuilder::new());
        for i in 0..rows {
            if i % 5 == 4 {
                b.append_null();
            } else {
                for j in 0..(i % 3) {
                    b.values().append_value(format!("name {i}.{j} of the list"));
                }
                b.append(true);
            }
        }
        b.finish()
    };
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("text", DataType::Utf8View, true),
        Field::new("bytes", DataType::BinaryView, true),
        Field::new("names", names.data_type().clone(), true),
    ]));
    let columns: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from_iter_values(0..rows as i64)),
        Arc::new((0..rows).map(text).collect::<StringViewArray>()),
        Arc::new(
            (0..rows)
                .map(|i| text(i + 1).map(String::into_bytes))
                .collect::<BinaryViewArray>(),
        ),
        Arc::new(names),
    ];
    // every column above is built for `schema`; a failure here is a bug in the kit
    RecordBatch::try_new(schema, columns).unwrap_or_else(|e| panic!("view zoo: {e}"))
}

/// `batch` with its view types cast to plain ones, as the engine sends it
/// to a stage whose manifest says `plain_types`.
pub fn plain_batch(batch: &RecordBatch) -> Result<RecordBatch, arrow_schema::ArrowError> {
    let fields: Vec<Field> = batch
        .schema()
        .fields()
        .iter()
        .map(|f| match crate::manifest::plain_type(f.data_type()) {
            Some(t) => f.as_ref().clone().with_data_type(t),
            None => f.as_ref().clone(),
        })
        .collect();
    let columns = batch
        .columns()
        .iter()
        .zip(&fields)
        .map(|(c, f)| arrow_cast::cast(c, f.data_type()))
        .collect::<Result<Vec<_>, _>>()?;
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
}

#[derive(Clone)]
struct Kit {
    target: Target,
    client: StageClient,
    manifest: Manifest,
    /// The `config` of every open request.
    config: serde_json::Value,
}

impl Kit {
    fn open(&self, epoch: u64) -> OpenRequest {
        OpenRequest::new(&self.manifest.protocol, "conformance", epoch, 0)
            .with_config(self.config.clone())
    }

    /// Runs epoch `epoch` of a stateful stage from `snapshot`; returns its
    /// output rows and the snapshot of its `flushed`.
    async fn run_stateful(
        &self,
        client: &StageClient,
        batches: Vec<RecordBatch>,
        epoch: u64,
        snapshot: Option<String>,
    ) -> Result<(Vec<RecordBatch>, Option<String>), String> {
        let schema = batches.first().map(|b| b.schema()).ok_or("no input")?;
        let mut open = self.open(epoch);
        open.snapshot = snapshot;
        let input = futures::stream::iter(batches.into_iter().map(Ok)).boxed();
        let events: Vec<StageEvent> = client
            .exchange(&open, schema, input, None)
            .await
            .map_err(|e| e.to_string())?
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<_, _>>()
            .map_err(|e| e.to_string())?;
        let mut rows = Vec::new();
        let mut snapshot = None;
        for e in events {
            match e {
                StageEvent::Batch { batch, .. } => rows.push(batch),
                StageEvent::Flushed(env) => snapshot = env.snapshot,
                _ => {}
            }
        }
        match snapshot {
            Some(s) => Ok((rows, Some(s))),
            None => Err(format!("the `flushed` of epoch {epoch} has no `snapshot`")),
        }
    }

    /// The batches to send through the stage, if the kit can make them.
    fn input(&self, rows: usize, seed: u64) -> Option<RecordBatch> {
        match &self.manifest.input_schema {
            Some(decl) => sample_batch(&decl.schema, rows, seed),
            None => Some(type_zoo(rows)),
        }
    }

    /// Runs an exchange to its end; returns the events.
    async fn run(
        &self,
        batches: Vec<RecordBatch>,
        epoch: u64,
    ) -> Result<Vec<StageEvent>, StageError> {
        let schema = match batches.first() {
            Some(b) => b.schema(),
            None => self
                .input(1, 0)
                .map(|b| b.schema())
                .unwrap_or_else(|| Arc::new(Schema::empty())),
        };
        let input = futures::stream::iter(batches.into_iter().map(Ok)).boxed();
        let events = self
            .client
            .exchange(&self.open(epoch), schema, input, None)
            .await?;
        events.collect::<Vec<_>>().await.into_iter().collect()
    }

    /// Sends `batch` through a pass-through stage; passes when `expected`
    /// comes back: same schema, same values.
    async fn passes_through(
        &self,
        batch: RecordBatch,
        expected: RecordBatch,
        epoch: u64,
    ) -> Outcome {
        let events = match self.run(vec![batch], epoch).await {
            Ok(ev) => ev,
            Err(e) => return Outcome::Fail(e.to_string()),
        };
        let got: Vec<RecordBatch> = events
            .into_iter()
            .filter_map(|e| match e {
                StageEvent::Batch { batch, .. } => Some(batch),
                _ => None,
            })
            .collect();
        if let Some(b) = got
            .iter()
            .find(|b| b.schema().fields() != expected.schema().fields())
        {
            return Outcome::Fail(format!(
                "the output schema is not the input's: {} (sent {})",
                b.schema(),
                expected.schema()
            ));
        }
        match arrow_select::concat::concat_batches(&expected.schema(), &got) {
            Ok(b) if b.columns() == expected.columns() => Outcome::Pass,
            Ok(_) => Outcome::Fail("values changed on the way".into()),
            Err(e) => Outcome::Fail(format!("output does not have the input schema: {e}")),
        }
    }

    async fn raw(&self) -> Result<FlightServiceClient<Channel>, String> {
        let uri = match &self.target {
            Target::Unix(p) => format!("unix://{}", p.display()),
            Target::Url(u) => u.replacen("grpc://", "http://", 1),
        };
        let channel = tonic::transport::Endpoint::from_shared(uri)
            .map_err(|e| e.to_string())?
            .initial_stream_window_size(crate::STREAM_WINDOW)
            .initial_connection_window_size(crate::CONNECTION_WINDOW)
            .connect()
            .await
            .map_err(|e| e.to_string())?;
        Ok(FlightServiceClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE))
    }
}

fn rows_of(events: &[StageEvent]) -> usize {
    events
        .iter()
        .map(|e| {
            if let StageEvent::Batch { batch, .. } = e {
                batch.num_rows()
            } else {
                0
            }
        })
        .sum()
}

fn flushed_last(events: &[StageEvent]) -> Result<u64, String> {
    match events.last() {
        Some(StageEvent::Flushed(e)) => Ok(e.rows.unwrap_or(0)),
        other => Err(format!("the last message is not `flushed` but {other:?}")),
    }
}

/// Every answered input batch gets a batch or an ack; row errors point into it.
fn answers_are_complete(
    events: &[StageEvent],
    inputs: &[RecordBatch],
    manifest: &Manifest,
) -> Result<(), String> {
    for i in 0..inputs.len() as u64 {
        let answered = events.iter().any(|e| match e {
            StageEvent::Batch { envelope, .. } | StageEvent::Ack(envelope) => {
                envelope.in_seq == Some(i)
            }
            _ => false,
        });
        if !answered {
            return Err(format!(
                "input batch {i} got neither an output batch nor an ack"
            ));
        }
    }
    // the rows they name: the engine's own check
    let mut sent = SentBatches::default();
    for (i, b) in inputs.iter().enumerate() {
        sent.sent(i as u64, b.num_rows() as u64);
    }
    for e in events {
        if let StageEvent::RowErrors(env) = e {
            if manifest.errors == ErrorSemantics::FatalOnly {
                return Err(
                    "row errors from a stage whose manifest says errors = fatal_only".into(),
                );
            }
            let errors = env.errors.as_deref().unwrap_or_default();
            sent.accept(env.in_seq, errors)?;
            if let Some(r) = errors
                .iter()
                .find(|r| r.code.parse::<sluice_contract::ErrorCode>().is_err())
            {
                return Err(format!(
                    "row error code `{}` is not in the vocabulary",
                    r.code
                ));
            }
        }
    }
    Ok(())
}

fn check_outputs(
    events: &[StageEvent],
    manifest: &Manifest,
    input: &SchemaRef,
) -> Result<(), String> {
    let expected = manifest.output_for(input);
    for e in events {
        if let StageEvent::Batch { batch, .. } = e {
            check_schema(&expected, &batch.schema())?;
        }
    }
    Ok(())
}

async fn timed<F: std::future::Future<Output = Outcome>>(
    name: &'static str,
    what: &'static str,
    f: F,
) -> CheckResult {
    let t = Instant::now();
    let outcome = match tokio::time::timeout(Duration::from_secs(60), f).await {
        Ok(o) => o,
        Err(_) => Outcome::Fail("no result within 60 s".into()),
    };
    CheckResult {
        name,
        what,
        outcome,
        took: t.elapsed(),
        path: None,
    }
}

/// A stateful stage (v1.1) is exactly once across its crashes: four epochs,
/// each opened with the snapshot of the one before, give the same rows when
/// the stage is killed in the middle of epoch 2 (or, without `restart`, the
/// exchange is dropped) and epoch 2 is replayed from epoch 1's snapshot, as
/// the engine does.
async fn state(kit: &Kit, restart: Option<Restart<'_>>) -> Outcome {
    if !kit.manifest.stateful || kit.manifest.protocol != version::V1_1 {
        return Outcome::Skip("not a stateful v1.1 stage".into());
    }
    // the fourth epoch's rows show the state the third left: snapshots are
    // compared by what they do, not by their bytes (a stage need not encode
    // its state deterministically)
    let epochs: Vec<Vec<RecordBatch>> = (0..4u64)
        .map(|e| {
            (0..2)
                .filter_map(|b| kit.input(300, 40 + 2 * e + b))
                .collect()
        })
        .collect();
    if epochs.iter().any(|b| b.len() != 2) {
        return Outcome::Skip("the kit cannot generate input of this schema".into());
    }
    let calm = async {
        let mut snapshot = None;
        let mut out = Vec::new();
        for (e, batches) in epochs.iter().enumerate() {
            let (rows, s) = kit
                .run_stateful(&kit.client, batches.clone(), 20 + e as u64, snapshot)
                .await?;
            out.push(rows);
            snapshot = s;
        }
        Ok::<_, String>(out)
    };
    let want = match calm.await {
        Ok(r) => r,
        Err(e) => return Outcome::Fail(e),
    };
    let interrupted = async {
        let (first, s1) = kit
            .run_stateful(&kit.client, epochs[0].clone(), 20, None)
            .await?;
        // epoch 2: one batch in, its answer out, then the stage dies
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<RecordBatch, StageError>>(2);
        let mut open = kit.open(21);
        open.snapshot = s1.clone();
        let mut events = kit
            .client
            .exchange(
                &open,
                epochs[1][0].schema(),
                tokio_stream::wrappers::ReceiverStream::new(rx).boxed(),
                None,
            )
            .await
            .map_err(|e| e.to_string())?;
        let _ = tx.send(Ok(epochs[1][0].clone())).await;
        // the first answer: the stage has taken the batch into its state
        let _ = events.next().await;
        let client = match restart {
            Some(restart) => {
                restart().await?;
                let mut c = StageClient::connect(&kit.target, Duration::from_secs(10))
                    .await
                    .map_err(|e| format!("after the restart: {e}"))?;
                c.use_shared_memory(kit.client.uses_shared_memory());
                c.offer_unchanged_answers(kit.client.offers_unchanged_answers());
                c
            }
            None => kit.client.clone(),
        };
        drop((tx, events));
        let (second, s2) = kit.run_stateful(&client, epochs[1].clone(), 21, s1).await?;
        let (third, s3) = kit.run_stateful(&client, epochs[2].clone(), 22, s2).await?;
        let (fourth, _) = kit.run_stateful(&client, epochs[3].clone(), 23, s3).await?;
        Ok::<_, String>(vec![first, second, third, fourth])
    };
    let got = match interrupted.await {
        Ok(r) => r,
        Err(e) => return Outcome::Fail(e),
    };
    for (e, (w, g)) in want.iter().zip(&got).enumerate() {
        let same = match (w.first(), g.first()) {
            (Some(first), Some(_)) => {
                let schema = first.schema();
                match (
                    arrow_select::concat::concat_batches(&schema, w),
                    arrow_select::concat::concat_batches(&schema, g),
                ) {
                    (Ok(w), Ok(g)) => w.columns() == g.columns(),
                    _ => false,
                }
            }
            (None, None) => true,
            _ => false,
        };
        if !same {
            return Outcome::Fail(format!(
                "epoch {} gave other rows after the stage {} mid-epoch 2 and epoch 2 was replayed from epoch 1's snapshot",
                e + 1,
                if restart.is_some() {
                    "was killed"
                } else {
                    "lost its exchange"
                }
            ));
        }
    }
    Outcome::Pass
}

/// Version negotiation (docs/protocol.md, section 2): a stage answers an
/// engine in the newest version both speak, or refuses by naming both.
async fn versions(kit: &Kit) -> Outcome {
    let mut client = kit.client.clone();
    match client.describe_as(None).await {
        Ok(m) if m.protocol != version::V1 => {
            return Outcome::Fail(format!(
                "an engine speaking only {} got a manifest in {}",
                version::V1,
                m.protocol
            ));
        }
        Ok(_) => {}
        // a stage may need a newer engine; it must say which versions
        // (the client's own refusal of a manifest in a version it does not
        // speak says "this engine speaks": that is the stage's fault)
        Err(e)
            if e.code == ErrorCode::InvalidArgument
                && e.message.contains(version::V1)
                && !e.message.contains("this engine speaks") => {}
        Err(e) => {
            return Outcome::Fail(format!(
                "an engine speaking only {}: {e} (expected a v1 manifest or INVALID_ARGUMENT naming the versions)",
                version::V1
            ));
        }
    }
    let unknown = DescribeRequest {
        protocols: vec!["sluice.stage.v0-unknown".into()],
    };
    match client.describe_as(Some(&unknown)).await {
        // a v1 stage predates negotiation: it ignores the request, and an
        // engine that does not speak v1 refuses it
        Ok(m) if m.protocol == version::V1 && kit.manifest.protocol == version::V1 => Outcome::Pass,
        Ok(m) => Outcome::Fail(format!(
            "an engine speaking only sluice.stage.v0-unknown got a manifest in {}",
            m.protocol
        )),
        Err(e)
            if e.code == ErrorCode::InvalidArgument
                && e.message.contains("v0-unknown")
                && !e.message.contains("this engine speaks") =>
        {
            Outcome::Pass
        }
        Err(e) => Outcome::Fail(format!(
            "an unknown version: {e} (expected INVALID_ARGUMENT naming both sides' versions)"
        )),
    }
}

fn from(r: Result<(), String>) -> Outcome {
    match r {
        Ok(()) => Outcome::Pass,
        Err(m) => Outcome::Fail(m),
    }
}

/// Kills the stage's process (SIGKILL) and starts it again at the same
/// target, for the `state` check; `sluice stage check` passes one for the
/// program it started.
pub type Restart<'a> =
    &'a (dyn Fn() -> futures::future::BoxFuture<'static, Result<(), String>> + Sync);

/// Runs every check against the stage at `target`, opening every exchange
/// with `config` (the stage's `config` table in a pipeline; `null` for none).
pub async fn check(target: &Target, config: &serde_json::Value) -> Vec<CheckResult> {
    check_with(target, config, None).await
}

/// [`check`], able to kill and restart the stage (the `state` check kills a
/// stateful stage mid-exchange; without `restart` it only aborts the exchange).
pub async fn check_with(
    target: &Target,
    config: &serde_json::Value,
    restart: Option<Restart<'_>>,
) -> Vec<CheckResult> {
    let mut out = Vec::new();
    let t = Instant::now();
    let client = match StageClient::connect(target, Duration::from_secs(10)).await {
        Ok(c) => c,
        Err(e) => {
            out.push(CheckResult {
                name: "connect",
                what: "the stage accepts a gRPC connection",
                outcome: Outcome::Fail(e.to_string()),
                took: t.elapsed(),
                path: None,
            });
            return out;
        }
    };
    let mut probe = client.clone();
    let manifest = match probe.describe().await {
        Ok(m) => {
            let ok = if m.language.is_empty() || m.name.is_empty() {
                Outcome::Fail("name and language must be set".into())
            } else {
                Outcome::Pass
            };
            out.push(CheckResult {
                name: "describe",
                what: "the manifest decodes, is coherent and names the protocol",
                outcome: ok,
                took: t.elapsed(),
                path: None,
            });
            m
        }
        Err(e) => {
            out.push(CheckResult {
                name: "describe",
                what: "the manifest decodes, is coherent and names the protocol",
                outcome: Outcome::Fail(e.to_string()),
                took: t.elapsed(),
                path: None,
            });
            return out;
        }
    };
    // the checks send their batches both ways (the client does not offer
    // `unchanged` answers unless told to): a stage that passes its input
    // through must still encode it right; the `unchanged` check offers them
    let kit = Kit {
        target: target.clone(),
        client,
        manifest,
        config: config.clone(),
    };
    out.push(
        timed(
            "versions",
            "a v1 engine gets a v1 manifest (or a clear refusal); an unknown version is refused",
            versions(&kit),
        )
        .await,
    );
    out.push(
        timed("health", "`health` answers ok", async {
            from(kit.client.clone().health().await.map_err(|e| e.to_string()))
        })
        .await,
    );

    // every check with batches, over Flight and, for a child stage that
    // offers it, through shared memory
    let mut paths = vec![BatchPath::Flight];
    let mut shm = kit.client.clone();
    // the client decides whether the stage can be offered shared memory
    shm.use_shared_memory(kit.manifest.shared_memory);
    if shm.uses_shared_memory() {
        paths.push(BatchPath::SharedMemory);
    }
    for path in paths {
        let mut kit = kit.clone();
        kit.client
            .use_shared_memory(path == BatchPath::SharedMemory);
        for mut r in exchange_checks(&kit, restart).await {
            r.path = Some(path);
            out.push(r);
        }
    }
    out
}

/// The checks that exchange batches, over the path `kit.client` takes.
async fn exchange_checks(kit: &Kit, restart: Option<Restart<'_>>) -> Vec<CheckResult> {
    let kit = kit.clone();
    let mut out = Vec::new();
    out.push(
        timed(
            "exchange",
            "batches in, answers with envelopes, `flushed` last with the row count",
            async {
                let Some(b) = kit.input(500, 1) else {
                    return Outcome::Skip(
                        "the input schema has types the kit cannot generate".into(),
                    );
                };
                let inputs = vec![
                    b.clone(),
                    kit.input(257, 2).unwrap_or(b.clone()),
                    b.slice(0, 1),
                ];
                match kit.run(inputs.clone(), 1).await {
                    Ok(ev) => from((|| {
                        let rows = flushed_last(&ev)?;
                        if rows as usize != rows_of(&ev) {
                            return Err(format!(
                                "`flushed` says {rows} rows, {} arrived",
                                rows_of(&ev)
                            ));
                        }
                        answers_are_complete(&ev, &inputs, &kit.manifest)?;
                        check_outputs(&ev, &kit.manifest, &inputs[0].schema())?;
                        path_taken(&ev, kit.client.uses_shared_memory())
                    })()),
                    Err(e) => Outcome::Fail(e.to_string()),
                }
            },
        )
        .await,
    );

    out.push(
        timed(
            "unchanged",
            "`unchanged` answers (v1.1, offered as the engine offers them) stand for batches as sent, with the row counts right",
            async {
                if kit.manifest.protocol != crate::version::V1_1 {
                    return Outcome::Skip("a v1 stage is not offered `unchanged` answers".into());
                }
                let Some(b) = kit.input(300, 6) else {
                    return Outcome::Skip("the input schema has types the kit cannot generate".into());
                };
                // the engine offers them only where its batches pass for the output schema
                if check_schema(&kit.manifest.output_for(&b.schema()), &b.schema()).is_err() {
                    return Outcome::Skip("the output schema is not the input's: the engine does not offer `unchanged` answers".into());
                }
                let inputs = vec![b.clone(), kit.input(100, 7).unwrap_or(b)];
                let mut offered = kit.clone();
                offered.client.offer_unchanged_answers(true);
                let events = match offered.run(inputs, 6).await {
                    Ok(ev) => ev,
                    Err(e) => return Outcome::Fail(e.to_string()),
                };
                let unchanged = events
                    .iter()
                    .filter(|e| e.envelope().kind == Kind::Unchanged)
                    .count();
                match flushed_last(&events) {
                    Err(e) => Outcome::Fail(e),
                    Ok(rows) if rows as usize != rows_of(&events) => Outcome::Fail(format!(
                        "`flushed` says {rows} rows, {} arrived ({unchanged} batches answered `unchanged`)",
                        rows_of(&events)
                    )),
                    Ok(_) if unchanged == 0 => Outcome::Skip("the stage answered no batch `unchanged`".into()),
                    Ok(_) => Outcome::Pass,
                }
            },
        )
        .await,
    );

    out.push(
        timed("types", "nested struct and list, nullable, dictionary, decimal, timestamp with tz survive unchanged", async {
            if kit.manifest.input_schema.is_some() {
                return Outcome::Skip("the stage declares its input schema; fidelity is checked on that schema by `exchange`".into());
            }
            let zoo = type_zoo(300);
            kit.passes_through(zoo.clone(), zoo, 2).await
        })
        .await,
    );

    out.push(
        timed("views", "view types (Utf8View, BinaryView, nested) survive, or arrive plain when the manifest says plain_types", async {
            if kit.manifest.input_schema.is_some() {
                return Outcome::Skip("the stage declares its input schema; fidelity is checked on that schema by `exchange`".into());
            }
            let views = view_zoo(300);
            if !kit.manifest.plain_types {
                return kit.passes_through(views.clone(), views, 5).await;
            }
            // what the engine sends such a stage
            match plain_batch(&views) {
                Ok(plain) => kit.passes_through(plain.clone(), plain, 5).await,
                Err(e) => Outcome::Fail(format!("the kit cannot cast its view types: {e}")),
            }
        })
        .await,
    );

    out.push(
        timed(
            "empty",
            "an exchange without batches ends with `flushed` and 0 rows",
            async {
                match kit.run(vec![], 3).await {
                    Ok(ev) => from(flushed_last(&ev).and_then(|r| {
                        if r == 0 {
                            Ok(())
                        } else {
                            Err(format!("{r} rows from no input"))
                        }
                    })),
                    Err(e) => Outcome::Fail(e.to_string()),
                }
            },
        )
        .await,
    );

    out.push(
        timed(
            "large",
            "a batch over 4 MiB (the gRPC default limit) goes through",
            async {
                let rows = (kit.manifest.max_batch_rows as usize).min(200_000);
                let Some(b) = kit.input(rows, 4) else {
                    return Outcome::Skip("cannot generate input".into());
                };
                let size: usize = b.columns().iter().map(|c| c.get_array_memory_size()).sum();
                if size < 4 << 20 {
                    return Outcome::Skip(format!(
                        "max_batch_rows {} allows only {} KiB batches",
                        kit.manifest.max_batch_rows,
                        size / 1024
                    ));
                }
                match kit.run(vec![b], 4).await {
                    Ok(ev) => from(flushed_last(&ev).map(|_| ())),
                    Err(e) => Outcome::Fail(e.to_string()),
                }
            },
        )
        .await,
    );

    out.push(
        timed(
            "malformed",
            "garbage FlightData (through shared memory: a slot outside the engine's half, a slot of garbage, a batch carrying its data and naming a slot too) gets an error status, and the stage keeps serving",
            async {
                let Some(b) = kit.input(10, 5) else {
                    return Outcome::Skip("cannot generate input".into());
                };
                // the memory a shared-memory exchange is offered: its first
                // 64 bytes hold garbage
                let shared = if kit.client.uses_shared_memory() {
                    match crate::shm::Mapping::create(1 << 20) {
                        Ok((mapping, path)) => {
                            if let Some(p) = mapping.slot_ptr(0, 64) {
                                // SAFETY: inside the mapping, which nobody else writes yet
                                unsafe { std::ptr::write_bytes(p, 0x5a, 64) };
                            }
                            let offer = crate::shm::Offer { path, size: 1 << 20, stage_offset: 1 << 19 };
                            Some((mapping, offer))
                        }
                        Err(e) => return Outcome::Fail(format!("cannot create shared memory: {e}")),
                    }
                } else {
                    None
                };
                let in_slot = |offset: u64| {
                    let mut e = Envelope::new(Kind::Batch, 5, 0);
                    e.shm = Some(crate::shm::SlotRef { offset, length: 64 });
                    control_message(&e)
                };
                // a good batch whose envelope names a slot too: in two places
                let in_both = || {
                    let mut encoder = BatchEncoder::new();
                    let _ = encoder.schema_message(&b.schema());
                    let mut e = Envelope::new(Kind::Batch, 5, 0);
                    e.shm = Some(crate::shm::SlotRef { offset: 64, length: 64 });
                    encoder.batch_messages(&b, &e).unwrap_or_default()
                };
                // each: the messages between the schema and `end`
                let bad: Vec<Vec<FlightData>> = match &shared {
                    None => vec![vec![FlightData {
                        data_header: vec![0xde, 0xad, 0xbe, 0xef, 1, 2, 3].into(),
                        data_body: vec![9; 64].into(),
                        app_metadata: Envelope::new(Kind::Batch, 5, 0).encode().into(),
                        ..Default::default()
                    }]],
                    Some((_, offer)) => vec![vec![in_slot(offer.size)], vec![in_slot(0)], in_both()],
                };
                for garbage in bad {
                    let mut raw = match kit.raw().await {
                        Ok(r) => r,
                        Err(e) => return Outcome::Fail(e),
                    };
                    let mut open = kit.open(5);
                    open.shared_memory = shared.as_ref().map(|(_, o)| o.clone());
                    let mut encoder = BatchEncoder::new();
                    let mut first = encoder.schema_message(&b.schema());
                    first.flight_descriptor = Some(FlightDescriptor::new_cmd(
                        serde_json::to_vec(&open).unwrap_or_default(),
                    ));
                    let what = garbage
                        .last()
                        .map(|m| String::from_utf8_lossy(&m.app_metadata).into_owned())
                        .unwrap_or_default();
                    let request = futures::stream::iter(
                        std::iter::once(first)
                            .chain(garbage)
                            .chain(std::iter::once(control_message(&Envelope::new(Kind::End, 5, 1)))),
                    );
                    let answer = match raw.do_exchange(request).await {
                        Ok(resp) => resp
                            .into_inner()
                            .collect::<Vec<_>>()
                            .await
                            .into_iter()
                            .find_map(|m| m.err()),
                        Err(status) => Some(status),
                    };
                    if answer.is_none() {
                        return Outcome::Fail(format!(
                            "the stage accepted a bad message without an error: {what}"
                        ));
                    }
                    if let Err(e) = kit.client.clone().health().await {
                        return Outcome::Fail(format!("unhealthy afterwards: {e}"));
                    }
                }
                Outcome::Pass
            },
        )
        .await,
    );

    out.push(
        timed(
            "cancel",
            "an exchange dropped mid-stream leaves the stage healthy and serving",
            async {
                let Some(b) = kit.input(100, 6) else {
                    return Outcome::Skip("cannot generate input".into());
                };
                let (tx, rx) = tokio::sync::mpsc::channel::<Result<RecordBatch, StageError>>(1);
                let input = tokio_stream::wrappers::ReceiverStream::new(rx).boxed();
                match kit
                    .client
                    .exchange(&kit.open(6), b.schema(), input, None)
                    .await
                {
                    Ok(mut events) => {
                        let _ = tx.send(Ok(b.clone())).await;
                        let _ = tokio::time::timeout(Duration::from_secs(5), events.next()).await;
                        drop(events);
                        drop(tx);
                    }
                    Err(e) => return Outcome::Fail(e.to_string()),
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                match kit.run(vec![b], 7).await {
                    Ok(ev) => from(flushed_last(&ev).map(|_| ())),
                    Err(e) => Outcome::Fail(format!("not serving after a cancelled exchange: {e}")),
                }
            },
        )
        .await,
    );

    out.push(
        timed(
            "backpressure",
            "200 batches sent while the answers are read slowly: no loss, no deadlock",
            async {
                let Some(b) = kit.input(256, 8) else {
                    return Outcome::Skip("cannot generate input".into());
                };
                let inputs: Vec<RecordBatch> = (0..200).map(|_| b.clone()).collect();
                let input = futures::stream::iter(inputs.clone().into_iter().map(Ok)).boxed();
                match kit
                    .client
                    .exchange(&kit.open(8), b.schema(), input, None)
                    .await
                {
                    Ok(mut events) => {
                        let mut all = Vec::new();
                        while let Some(e) = events.next().await {
                            match e {
                                Ok(e) => all.push(e),
                                Err(e) => return Outcome::Fail(e.to_string()),
                            }
                            if all.len() % 20 == 0 {
                                tokio::time::sleep(Duration::from_millis(20)).await;
                            }
                        }
                        from(
                            flushed_last(&all)
                                .map(|_| ())
                                .and_then(|_| answers_are_complete(&all, &inputs, &kit.manifest)),
                        )
                    }
                    Err(e) => Outcome::Fail(e.to_string()),
                }
            },
        )
        .await,
    );

    out.push(
        timed("concurrent", "8 exchanges at once all complete", async {
            let Some(b) = kit.input(300, 9) else {
                return Outcome::Skip("cannot generate input".into());
            };
            let runs = (0..8).map(|i| kit.run(vec![b.clone(), b.clone()], 100 + i));
            let results = futures::future::join_all(runs).await;
            from(results.into_iter().try_for_each(|r| {
                r.map_err(|e| e.to_string())
                    .and_then(|ev| flushed_last(&ev).map(|_| ()))
            }))
        })
        .await,
    );

    out.push(
        timed(
            "row_errors",
            "row errors are well formed (row index inside the batch, known code) and the rows they name are left out of the output",
            async {
                if kit.manifest.errors == ErrorSemantics::FatalOnly {
                    return Outcome::Skip("the manifest says errors = fatal_only".into());
                }
                // varied input makes a validating stage reject some rows
                let inputs: Vec<RecordBatch> =
                    (0..4).filter_map(|i| kit.input(1000, 20 + i)).collect();
                match kit.run(inputs.clone(), 9).await {
                    Ok(ev) => {
                        let n: usize = ev
                            .iter()
                            .map(|e| {
                                if let StageEvent::RowErrors(env) = e {
                                    env.errors.as_ref().map_or(0, Vec::len)
                                } else {
                                    0
                                }
                            })
                            .sum();
                        let checked = answers_are_complete(&ev, &inputs, &kit.manifest)
                            .and_then(|()| reported_rows_are_left_out(&ev, &inputs));
                        match checked {
                            Err(m) => Outcome::Fail(m),
                            Ok(()) if n == 0 => {
                                Outcome::Skip("no row failed on the generated input".into())
                            }
                            Ok(()) => Outcome::Pass,
                        }
                    }
                    Err(e) => Outcome::Fail(e.to_string()),
                }
            },
        )
        .await,
    );
    out.push(
        timed(
            "state",
            "a stateful stage killed mid-epoch and replayed from its last snapshot gives the uninterrupted run's rows, in that epoch and the next two",
            state(&kit, restart),
        )
        .await,
    );
    out
}

/// On the shared-memory path, small answers (the kit's are) come through
/// shared memory: a stage that offers it and answers over Flight anyway
/// does not implement it. Over Flight, no answer may name a slot.
fn path_taken(events: &[StageEvent], shared: bool) -> Result<(), String> {
    let batches: Vec<&Envelope> = events
        .iter()
        .filter_map(|e| match e {
            // an `unchanged` answer travels in neither
            StageEvent::Batch { envelope, .. } if envelope.kind == Kind::Batch => Some(envelope),
            _ => None,
        })
        .collect();
    let in_shm = batches.iter().filter(|e| e.shm.is_some()).count();
    match (shared, in_shm) {
        (true, 0) if !batches.is_empty() => Err(format!(
            "the stage offers shared memory, but sent all {} output batches over Flight",
            batches.len()
        )),
        (false, n) if n > 0 => Err(format!(
            "{n} output batches name a slot of shared memory, which this exchange did not offer"
        )),
        _ => Ok(()),
    }
}

/// A row a stage reports as failed MUST NOT also be in its output (it would
/// be delivered and dead-lettered). Checkable when the output has the input's
/// schema (a filter or validator): no reported input row may come back,
/// value for value, in the answers to its batch.
fn reported_rows_are_left_out(events: &[StageEvent], inputs: &[RecordBatch]) -> Result<(), String> {
    use arrow_cast::display::{ArrayFormatter, FormatOptions};
    let options = FormatOptions::default().with_null("\u{0}null");
    // each row as text, one cell after the other (the kit's inputs are small)
    let rows_of = |b: &RecordBatch| -> Result<Vec<String>, String> {
        let formatters = b
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())?;
        Ok((0..b.num_rows())
            .map(|i| {
                formatters
                    .iter()
                    .map(|f| f.value(i).to_string())
                    .collect::<Vec<_>>()
                    .join("\u{1}")
            })
            .collect())
    };
    for e in events {
        let StageEvent::RowErrors(env) = e else {
            continue;
        };
        let (Some(seq), Some(errors)) = (env.in_seq, env.errors.as_ref()) else {
            continue;
        };
        let Some(input) = inputs.get(seq as usize) else {
            continue;
        };
        let answers: Vec<&RecordBatch> = events
            .iter()
            .filter_map(|e| match e {
                StageEvent::Batch { batch, envelope } if envelope.in_seq == Some(seq) => {
                    Some(batch)
                }
                _ => None,
            })
            .collect();
        if answers
            .iter()
            .any(|b| b.schema().fields() != input.schema().fields())
        {
            // output of another shape: the kit cannot tell rows apart
            return Ok(());
        }
        let input_rows = rows_of(input)?;
        let mut answered = std::collections::HashSet::new();
        for b in answers {
            answered.extend(rows_of(b)?);
        }
        if let Some(kept) = errors.iter().find(|r| {
            input_rows
                .get(r.row as usize)
                .is_some_and(|row| answered.contains(row))
        }) {
            return Err(format!(
                "row {} of input batch {seq} is reported ({}) and also in the output: it would be delivered and dead-lettered; a stage must leave the rows it reports out",
                kept.row, kept.code
            ));
        }
    }
    Ok(())
}

/// Whether every check passed or was skipped.
pub fn all_passed(results: &[CheckResult]) -> bool {
    results
        .iter()
        .all(|r| !matches!(r.outcome, Outcome::Fail(_)))
}
