//! The Rust SDK's server, end to end over a unix socket: what a stage
//! answers reaches the engine's client as the protocol says.

use std::sync::Arc;
use std::time::Duration;

use arrow_array::{Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use futures::StreamExt;
use sluice_flight::{
    Manifest, OpenRequest, Processed, Processor, Stage, StageClient, StageError, StageEvent,
    Target, service,
};

/// Answers each input batch with 70 rows of 1 MiB each: one answer larger
/// than the 64 MiB message limit.
struct Grow;
struct GrowRun;

const ROW_BYTES: usize = 1 << 20;
const ROWS: usize = 70;

#[async_trait::async_trait]
impl Stage for Grow {
    fn manifest(&self) -> Manifest {
        let mut m = Manifest::new("grow", "1.0.0");
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("blob", DataType::Utf8, false),
        ]));
        m.output_schema = Some(sluice_flight::SchemaDecl {
            name: "grown".into(),
            version: "1".into(),
            schema: Arc::clone(&schema),
        });
        m.input_schema = Some(sluice_flight::SchemaDecl {
            name: "ids".into(),
            version: "1".into(),
            schema: Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)])),
        });
        m
    }

    async fn open(&self, _: &OpenRequest) -> Result<Box<dyn Processor>, StageError> {
        Ok(Box::new(GrowRun))
    }
}

#[async_trait::async_trait]
impl Processor for GrowRun {
    async fn process(&mut self, _: RecordBatch) -> Result<Processed, StageError> {
        let ids = Int64Array::from_iter_values(0..ROWS as i64);
        let blobs = StringArray::from_iter_values((0..ROWS).map(|i| {
            let c = char::from(b'a' + (i % 26) as u8);
            c.to_string().repeat(ROW_BYTES)
        }));
        let schema = self_schema();
        Ok(Processed::batch(
            RecordBatch::try_new(schema, vec![Arc::new(ids), Arc::new(blobs)]).unwrap(),
        ))
    }
}

/// Serves `stage` on a unix socket in `dir`, as the engine's child would be,
/// and connects the engine's client to it.
async fn serve_on_unix_socket<S: Stage>(
    dir: &std::path::Path,
    stage: S,
) -> (
    tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
    StageClient,
) {
    let socket = dir.join("stage.sock");
    let listener = tokio::net::UnixListener::bind(&socket).unwrap();
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service(stage).unwrap())
            .serve_with_incoming(incoming),
    );
    let client = StageClient::connect(&Target::Unix(socket), Duration::from_secs(10))
        .await
        .unwrap();
    (server, client)
}

fn self_schema() -> Arc<Schema> {
    Grow.manifest().output_schema.unwrap().schema
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_larger_than_the_message_limit_arrives_in_pieces() {
    let dir = tempfile::tempdir().unwrap();
    let (server, mut client) = serve_on_unix_socket(dir.path(), Grow).await;
    let manifest = client.describe().await.unwrap();
    let input_schema = manifest.input_schema.as_ref().unwrap().schema.clone();
    let input = RecordBatch::try_new(
        Arc::clone(&input_schema),
        vec![Arc::new(Int64Array::from(vec![1, 2]))],
    )
    .unwrap();
    let open = OpenRequest::new(&manifest.protocol, "grow", 1, 0);
    let events: Vec<StageEvent> = client
        .exchange(
            &open,
            input_schema,
            futures::stream::iter([Ok(input)]).boxed(),
            None,
        )
        .await
        .unwrap()
        .map(|e| e.unwrap())
        .collect()
        .await;
    let pieces: Vec<&RecordBatch> = events
        .iter()
        .filter_map(|e| match e {
            StageEvent::Batch { batch, envelope } => {
                assert_eq!(envelope.in_seq, Some(0));
                Some(batch)
            }
            _ => None,
        })
        .collect();
    assert!(pieces.len() >= 3, "{} pieces", pieces.len());
    let all = arrow_select::concat::concat_batches(&self_schema(), pieces).unwrap();
    let ids = all.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
    assert_eq!(ids.values().to_vec(), (0..ROWS as i64).collect::<Vec<_>>());
    match events.last() {
        Some(StageEvent::Flushed(e)) => assert_eq!(e.rows, Some(ROWS as u64)),
        other => panic!("last event {other:?}"),
    }
    server.abort();
}

/// Keeps every input batch until the end of the exchange (as a buffering
/// stage would) and answers each with itself.
struct Hoard;
struct HoardRun(Vec<RecordBatch>);

#[async_trait::async_trait]
impl Stage for Hoard {
    fn manifest(&self) -> Manifest {
        Manifest::new("hoard", "1.0.0")
    }
    async fn open(&self, _: &OpenRequest) -> Result<Box<dyn Processor>, StageError> {
        Ok(Box::new(HoardRun(Vec::new())))
    }
}

#[async_trait::async_trait]
impl Processor for HoardRun {
    async fn process(&mut self, batch: RecordBatch) -> Result<Processed, StageError> {
        if batch.num_columns() == 2 {
            HELD.lock().unwrap().push(in_shared_memory(&batch));
        }
        self.0.push(batch.clone());
        Ok(Processed::batch(batch))
    }
}

/// Through shared memory, a stage that holds on to its input keeps the
/// engine's slots: once the engine's half is full the batches go over
/// Flight instead, and every batch still arrives, unchanged and in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stage_holding_its_input_fills_the_shared_memory_and_the_rest_goes_over_flight() {
    let inputs: Vec<RecordBatch> = (0..100).map(big_batch).collect();
    let (_, answers_in_memory) = echo_through_shared_memory(Hoard, &inputs).await;
    // the engine copies answers out and releases them at once: they all fit
    assert!(answers_in_memory.iter().all(|&m| m));
    // the inputs: the first ones read in place from the engine's memory
    // file, the rest (once the engine's half was full) from Flight
    let held = HELD.lock().unwrap().clone();
    assert_eq!(held.len(), inputs.len());
    let in_memory = held.iter().take_while(|&&m| m).count();
    assert!(
        in_memory > 0 && in_memory < inputs.len() && !held[in_memory..].contains(&true),
        "{held:?}"
    );
}

/// Runs `inputs` through `stage`, served on a unix socket, with shared
/// memory: every answer must be its input, in order. Returns the events
/// and, for each answer, whether it came through shared memory.
async fn echo_through_shared_memory<S: Stage>(
    stage: S,
    inputs: &[RecordBatch],
) -> (Vec<StageEvent>, Vec<bool>) {
    let dir = tempfile::tempdir().unwrap();
    let (server, mut client) = serve_on_unix_socket(dir.path(), stage).await;
    let manifest = client.describe().await.unwrap();
    assert!(manifest.shared_memory, "the Rust SDK offers shared memory");
    client.use_shared_memory(true);
    // the rows must travel back: these echoes would answer `unchanged`
    client.offer_unchanged_answers(false);
    let open = OpenRequest::new(&manifest.protocol, &manifest.name, 1, 0);
    // the input stream owns its batches
    let owned = inputs.to_vec();
    let events = tokio::time::timeout(Duration::from_secs(120), async {
        client
            .exchange(
                &open,
                inputs[0].schema(),
                futures::stream::iter(owned.into_iter().map(Ok)).boxed(),
                None,
            )
            .await
            .unwrap()
            .map(|e| e.unwrap())
            .collect::<Vec<StageEvent>>()
            .await
    })
    .await
    .expect("no deadlock");
    server.abort();
    let answers: Vec<(&RecordBatch, bool)> = events
        .iter()
        .filter_map(|e| match e {
            StageEvent::Batch { batch, envelope } => Some((batch, envelope.shm.is_some())),
            _ => None,
        })
        .collect();
    assert_eq!(answers.len(), inputs.len());
    for (i, ((got, _), want)) in answers.iter().zip(inputs).enumerate() {
        assert_eq!(*got, want, "batch {i}");
    }
    let in_memory = answers.iter().map(|(_, m)| *m).collect();
    (events, in_memory)
}

/// Batch `i` of 4 MiB: 100 of them are more than either side's 256 MiB
/// half of an exchange's shared memory.
fn big_batch(i: i64) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("s", DataType::Utf8, false),
    ]));
    let ids = Int64Array::from_iter_values((0..1024).map(|r| i * 1024 + r));
    let s =
        StringArray::from_iter_values((0..1024).map(|r| format!("{i}:{r}:{}", "x".repeat(4096))));
    RecordBatch::try_new(schema, vec![Arc::new(ids), Arc::new(s)]).unwrap()
}

/// Answers nothing until `end`, then everything it was sent: all its
/// output is flush output.
struct Gather;
struct GatherRun(Vec<RecordBatch>);

#[async_trait::async_trait]
impl Stage for Gather {
    fn manifest(&self) -> Manifest {
        Manifest::new("gather", "1.0.0")
    }
    async fn open(&self, _: &OpenRequest) -> Result<Box<dyn Processor>, StageError> {
        Ok(Box::new(GatherRun(Vec::new())))
    }
}

#[async_trait::async_trait]
impl Processor for GatherRun {
    async fn process(&mut self, batch: RecordBatch) -> Result<Processed, StageError> {
        self.0.push(batch);
        Ok(Processed::default())
    }
    async fn flush(&mut self) -> Result<Vec<RecordBatch>, StageError> {
        Ok(std::mem::take(&mut self.0))
    }
}

/// Flush output larger than the stage's half still goes through shared
/// memory: the engine gives the stage's slots back after `end` too, and
/// the stage reads those releases while it flushes. Without them the half
/// would hold at most `capacity` answers and the rest would go over Flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_output_reuses_the_slots_the_engine_gives_back_after_end() {
    let inputs: Vec<RecordBatch> = (0..100).map(big_batch).collect();
    let (events, answers_in_memory) = echo_through_shared_memory(Gather, &inputs).await;
    assert!(matches!(events.last(), Some(StageEvent::Flushed(_))));
    let capacity = (sluice_flight::shm::DEFAULT_SIZE / 2) as usize
        / sluice_flight::codec::ipc_bytes(&inputs[0]);
    let in_memory = answers_in_memory.iter().filter(|&&m| m).count();
    assert!(
        in_memory > capacity,
        "{in_memory} of {} flush answers through shared memory; the stage's half holds {capacity}",
        inputs.len()
    );
}

/// An input that fails mid-exchange still ends the request stream at once,
/// without `end`, with shared memory too (where a clean `end` keeps it open
/// for releases): the stage sees the input aborted and fails the exchange,
/// instead of waiting for more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_input_ends_the_exchange_without_end_through_shared_memory() {
    let dir = tempfile::tempdir().unwrap();
    let (server, mut client) = serve_on_unix_socket(dir.path(), Gather).await;
    let manifest = client.describe().await.unwrap();
    client.use_shared_memory(true);
    let open = OpenRequest::new(&manifest.protocol, "gather", 1, 0);
    let batch = big_batch(0);
    let input = futures::stream::iter([
        Ok(batch.clone()),
        Err(StageError::new(
            sluice_contract::ErrorCode::Internal,
            "the source failed",
        )),
    ])
    .boxed();
    let events = tokio::time::timeout(Duration::from_secs(60), async {
        client
            .exchange(&open, batch.schema(), input, None)
            .await
            .unwrap()
            .collect::<Vec<_>>()
            .await
    })
    .await
    .expect("the stage saw the input end, no hang");
    let error = events
        .iter()
        .find_map(|e| e.as_ref().err())
        .expect("the exchange fails");
    assert!(error.message.contains("without an `end`"), "{error}");
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, Ok(StageEvent::Flushed(_))))
    );
    server.abort();
}

/// Whether each batch `HoardRun` took lies in a memory file of the stages'
/// shared memory, in the order taken (one hoarding test per process).
static HELD: std::sync::Mutex<Vec<bool>> = std::sync::Mutex::new(Vec::new());

/// Whether `batch`'s string data lies in a memory file the stage mapped
/// (`/proc/self/maps` names it `/memfd:sluice-stage`).
fn in_shared_memory(batch: &RecordBatch) -> bool {
    let at = batch.column(1).to_data().buffers()[1].as_ptr() as usize;
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .filter(|l| l.contains("/memfd:sluice-stage"))
        .filter_map(|l| l.split_whitespace().next()?.split_once('-'))
        .filter_map(|(from, to)| {
            Some((
                usize::from_str_radix(from, 16).ok()?,
                usize::from_str_radix(to, 16).ok()?,
            ))
        })
        .any(|(from, to)| (from..to).contains(&at))
}

/// Over TCP a stage refuses shared memory: a client elsewhere could name
/// any file of the stage's machine for it to read and write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stage_on_tcp_refuses_shared_memory() {
    use arrow_flight::FlightDescriptor;
    use arrow_flight::flight_service_client::FlightServiceClient;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service(Hoard).unwrap())
            .serve_with_incoming(incoming),
    );
    let (_memory, path) = sluice_flight::shm::Mapping::create(1 << 20).unwrap();
    let open = OpenRequest {
        shared_memory: Some(sluice_flight::shm::Offer {
            path,
            size: 1 << 20,
            stage_offset: 1 << 19,
        }),
        ..OpenRequest::new(sluice_flight::PROTOCOL, "hoard", 1, 0)
    };
    let schema = Schema::new(vec![Field::new("id", DataType::Int64, false)]);
    let mut first = sluice_flight::codec::BatchEncoder::new().schema_message(&schema);
    first.flight_descriptor = Some(FlightDescriptor::new_cmd(
        serde_json::to_vec(&open).unwrap(),
    ));
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut raw = FlightServiceClient::new(channel);
    let status = match raw.do_exchange(futures::stream::iter([first])).await {
        Ok(r) => r
            .into_inner()
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .find_map(|m| m.err())
            .expect("an error"),
        Err(s) => s,
    };
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status}");
    assert!(status.message().contains("unix socket"), "{status}");
    server.abort();
}

/// A stage whose manifest says protocol v1 (the SDK still negotiates the
/// version with the engine).
struct PinnedToV1;

#[async_trait::async_trait]
impl Stage for PinnedToV1 {
    fn manifest(&self) -> Manifest {
        let mut m = Manifest::new("pinned", "1.0.0");
        m.protocol = sluice_flight::version::V1.into();
        m
    }
    async fn open(&self, _: &OpenRequest) -> Result<Box<dyn Processor>, StageError> {
        Ok(Box::new(HoardRun(Vec::new())))
    }
}

/// The SDK announces shared memory only in a v1.1 manifest: one that says
/// v1 cannot carry the key, and is served (it was refused as invalid).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v1_manifest_is_served_without_shared_memory() {
    let dir = tempfile::tempdir().unwrap();
    let (server, mut client) = serve_on_unix_socket(dir.path(), PinnedToV1).await;
    let manifest = client.describe().await.unwrap();
    assert!(!manifest.shared_memory);
    server.abort();
}

/// What [`Answerer`] answers each input batch with.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Answer {
    /// The input itself.
    Same,
    /// The input's arrays, in a batch of its own (as `conform` makes).
    Rebuilt,
    /// Equal values in new arrays.
    Copy,
    /// The input without its last row.
    Shorter,
    /// The input itself, with a row error for row 0.
    SameWithRowError,
    /// The input's arrays under the declared output schema, which renames
    /// a column: the engine could not take its own batch for that.
    Renamed,
}

/// [`big_batch`]'s schema with `id` called `key`.
fn renamed() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("key", DataType::Int64, false),
        Field::new("s", DataType::Utf8, false),
    ]))
}

struct Answerer(Answer);
struct AnswererRun(Answer);

#[async_trait::async_trait]
impl Stage for Answerer {
    fn manifest(&self) -> Manifest {
        let mut m = Manifest::new("answerer", "1.0.0");
        m.errors = sluice_flight::manifest::ErrorSemantics::Row;
        if self.0 == Answer::Renamed {
            m.output_schema = Some(sluice_flight::SchemaDecl {
                name: "renamed".into(),
                version: "1".into(),
                schema: renamed(),
            });
        }
        m
    }
    async fn open(&self, _: &OpenRequest) -> Result<Box<dyn Processor>, StageError> {
        Ok(Box::new(AnswererRun(self.0)))
    }
}

#[async_trait::async_trait]
impl Processor for AnswererRun {
    async fn process(&mut self, batch: RecordBatch) -> Result<Processed, StageError> {
        let mut out = Processed::batch(match self.0 {
            Answer::Same | Answer::SameWithRowError => batch,
            Answer::Rebuilt => {
                RecordBatch::try_new(batch.schema(), batch.columns().to_vec()).unwrap()
            }
            Answer::Copy => {
                let columns = batch
                    .columns()
                    .iter()
                    .map(|c| {
                        let data = c.to_data();
                        let mut copy = arrow_data::transform::MutableArrayData::new(
                            vec![&data],
                            false,
                            c.len(),
                        );
                        copy.try_extend(0, 0, c.len()).unwrap();
                        arrow_array::make_array(copy.freeze())
                    })
                    .collect();
                RecordBatch::try_new(batch.schema(), columns).unwrap()
            }
            Answer::Shorter => batch.slice(0, batch.num_rows() - 1),
            Answer::Renamed => RecordBatch::try_new(renamed(), batch.columns().to_vec()).unwrap(),
        });
        if self.0 == Answer::SameWithRowError {
            out.row_errors.push(sluice_flight::RowError::new(
                0,
                sluice_contract::ErrorCode::Rejected,
                "no",
            ));
        }
        Ok(out)
    }
}

/// Three batches through [`Answerer`] with `unchanged` answers offered
/// or not, over Flight or shared memory: the events, or the failure.
async fn answered(
    answer: Answer,
    offered: bool,
    shared_memory: bool,
    protocol: &str,
) -> (Vec<RecordBatch>, Result<Vec<StageEvent>, StageError>) {
    let dir = tempfile::tempdir().unwrap();
    let (server, mut client) = serve_on_unix_socket(dir.path(), Answerer(answer)).await;
    client.describe().await.unwrap();
    client.use_shared_memory(shared_memory);
    client.offer_unchanged_answers(offered);
    let inputs: Vec<RecordBatch> = (0..3).map(big_batch).map(|b| b.slice(0, 50)).collect();
    let open = OpenRequest::new(protocol, "answerer", 1, 0);
    let events = client
        .exchange(
            &open,
            inputs[0].schema(),
            futures::stream::iter(inputs.clone().into_iter().map(Ok)).boxed(),
            None,
        )
        .await
        .unwrap()
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect();
    server.abort();
    (inputs, events)
}

/// A stage whose answer is its input (the same arrays) answers
/// `unchanged` where the engine offers it, and the engine's client yields
/// the very batch it sent; anything else, and any exchange without the
/// offer, sends the rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_that_is_its_input_goes_back_as_unchanged_only_where_offered() {
    use sluice_flight::Kind;
    let cases = [
        (Answer::Same, true, sluice_flight::PROTOCOL, true),
        (Answer::Rebuilt, true, sluice_flight::PROTOCOL, true),
        (Answer::Same, false, sluice_flight::PROTOCOL, false),
        (Answer::Same, true, sluice_flight::version::V1, false),
        (Answer::Copy, true, sluice_flight::PROTOCOL, false),
        (Answer::Shorter, true, sluice_flight::PROTOCOL, false),
        (Answer::Renamed, true, sluice_flight::PROTOCOL, false),
    ];
    for (answer, offered, protocol, want_unchanged) in cases {
        for shared_memory in [false, true] {
            let what = format!("{answer:?}, offered {offered}, {protocol}, shm {shared_memory}");
            let (inputs, events) = answered(answer, offered, shared_memory, protocol).await;
            let events = events.unwrap_or_else(|e| panic!("{what}: {e}"));
            let batches: Vec<(&RecordBatch, &sluice_flight::Envelope)> = events
                .iter()
                .filter_map(|e| match e {
                    StageEvent::Batch { batch, envelope } => Some((batch, envelope)),
                    _ => None,
                })
                .collect();
            assert_eq!(batches.len(), 3, "{what}");
            let mut rows = 0;
            for (i, ((batch, envelope), input)) in batches.iter().zip(&inputs).enumerate() {
                let want_rows = input.num_rows() - usize::from(answer == Answer::Shorter);
                assert_eq!(batch.num_rows(), want_rows, "{what}: batch {i}");
                assert_eq!(
                    batch.columns(),
                    input.slice(0, want_rows).columns(),
                    "{what}: batch {i}"
                );
                assert_eq!(envelope.in_seq, Some(i as u64), "{what}");
                rows += want_rows as u64;
                if want_unchanged {
                    assert_eq!(envelope.kind, Kind::Unchanged, "{what}: batch {i}");
                    assert!(envelope.shm.is_none() && envelope.lineage.is_none());
                    // no copy: the engine's own arrays
                    assert!(Arc::ptr_eq(batch.column(1), input.column(1)), "{what}");
                } else {
                    assert_eq!(envelope.kind, Kind::Batch, "{what}: batch {i}");
                }
            }
            match events.last() {
                Some(StageEvent::Flushed(e)) => assert_eq!(e.rows, Some(rows), "{what}"),
                other => panic!("{what}: last event {other:?}"),
            }
        }
    }
}

/// A stage must leave the rows it reports out of its output: an answer
/// that is its whole input and reports a row of it fails the exchange,
/// whether the engine offered `unchanged` answers or not (the SDK sees it
/// either way; the engine cannot when the rows travel).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_that_is_its_input_with_row_errors_fails_the_exchange() {
    for offered in [true, false] {
        let (_, events) = answered(
            Answer::SameWithRowError,
            offered,
            false,
            sluice_flight::PROTOCOL,
        )
        .await;
        let err = events.unwrap_err();
        assert_eq!(err.code, sluice_contract::ErrorCode::Internal, "{err}");
        assert!(
            err.message
                .contains("leave the rows it reports out of its output"),
            "offered {offered}: {err}"
        );
    }
}
