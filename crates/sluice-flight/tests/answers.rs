//! The engine's client against peers that do what no SDK does: bytes that
//! make arrow's IPC decoding panic end the exchange with an error that names
//! the stage and says why, not with a silent abort; stages that wait for
//! the end of the engine's stream where the protocol lets them; and
//! `unchanged` answers that name no batch the engine holds.

use std::sync::Arc;
use std::time::Duration;

use arrow_array::{Int64Array, RecordBatch};
use arrow_flight::flight_service_server::{FlightService, FlightServiceServer};
use arrow_flight::{
    Action, ActionType, Criteria, Empty, FlightData, FlightDescriptor, FlightInfo,
    HandshakeRequest, HandshakeResponse, PollInfo, PutResult, SchemaResult, Ticket,
};
use arrow_schema::{DataType, Field, Schema};
use futures::StreamExt;
use futures::stream::BoxStream;
use sluice_flight::{OpenRequest, StageClient, Target};
use tonic::{Request, Response, Status, Streaming};

/// A schema message of one `Int32` field whose bit width reads 7: valid
/// flatbuffers that arrow's `fb_to_schema` panics on.
fn schema_arrow_panics_on() -> Vec<u8> {
    let schema = Schema::new(vec![Field::new("x", DataType::Int32, false)]);
    let header = sluice_flight::codec::BatchEncoder::new()
        .schema_message(&schema)
        .data_header
        .to_vec();
    let bit_width = |h: &[u8]| {
        arrow_ipc::root_as_message(h)
            .ok()
            .and_then(|m| m.header_as_schema())
            .and_then(|s| s.fields())
            .and_then(|f| f.get(0).type_as_int())
            .map(|i| i.bitWidth())
    };
    assert_eq!(bit_width(&header), Some(32));
    // the 32 to patch is the one the flatbuffer reader reads as the width
    (0..header.len().saturating_sub(4))
        .filter(|&i| header[i..i + 4] == 32i32.to_le_bytes())
        .map(|i| {
            let mut h = header.clone();
            h[i..i + 4].copy_from_slice(&7i32.to_le_bytes());
            h
        })
        .find(|h| bit_width(h) == Some(7))
        .expect("the bit width is in the header")
}

/// A stage no SDK would write.
#[derive(Clone, Copy)]
enum Peer {
    /// Answers every exchange with that schema message.
    Garbler,
    /// Reads the engine's stream to its end before it answers, as a v1
    /// stage may: without shared memory the engine half-closes after `end`.
    AnswersAtEof,
    /// Answers after `end`, then reads the engine's stream to its end before
    /// it ends its answer: the engine ends its stream at `flushed`, with
    /// shared memory too (where it stays open after `end` for releases).
    WaitsForEofAfterFlushed,
    /// Reads the input to `end`, then answers with the schema and these
    /// messages.
    Says(fn() -> Vec<FlightData>),
}

/// Reads `input` to its `end` (or its end), and then, when `to_eof`, on to
/// the end of the stream.
async fn read_input(input: &mut Streaming<FlightData>, to_eof: bool) {
    while let Some(Ok(m)) = input.next().await {
        let end = sluice_flight::Envelope::decode(&m.app_metadata)
            .is_ok_and(|e| e.kind == sluice_flight::Kind::End);
        if end && !to_eof {
            return;
        }
    }
}

type BoxS<T> = BoxStream<'static, Result<T, Status>>;

#[tonic::async_trait]
impl FlightService for Peer {
    type HandshakeStream = BoxS<HandshakeResponse>;
    type ListFlightsStream = BoxS<FlightInfo>;
    type DoGetStream = BoxS<FlightData>;
    type DoPutStream = BoxS<PutResult>;
    type DoExchangeStream = BoxS<FlightData>;
    type DoActionStream = BoxS<arrow_flight::Result>;
    type ListActionsStream = BoxS<ActionType>;

    async fn do_exchange(
        &self,
        request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoExchangeStream>, Status> {
        if let Peer::Garbler = self {
            let schema = FlightData {
                data_header: schema_arrow_panics_on().into(),
                ..Default::default()
            };
            return Ok(Response::new(
                futures::stream::iter([Ok(schema)])
                    .chain(futures::stream::pending())
                    .boxed(),
            ));
        }
        let schema = Schema::new(vec![Field::new("id", DataType::Int64, false)]);
        let mut flushed = sluice_flight::Envelope::new(sluice_flight::Kind::Flushed, 1, 1);
        flushed.rows = Some(0);
        let answer = [
            sluice_flight::codec::BatchEncoder::new().schema_message(&schema),
            sluice_flight::codec::control_message(&flushed),
        ];
        let mut input = request.into_inner();
        if let Peer::Says(script) = self {
            read_input(&mut input, false).await;
            let answer: Vec<FlightData> =
                std::iter::once(answer[0].clone()).chain(script()).collect();
            return Ok(Response::new(
                futures::stream::iter(answer.into_iter().map(Ok)).boxed(),
            ));
        }
        if let Peer::AnswersAtEof = self {
            // not even the answer's headers before the engine's stream ends
            read_input(&mut input, true).await;
            return Ok(Response::new(futures::stream::iter(answer.map(Ok)).boxed()));
        }
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            read_input(&mut input, false).await;
            for m in answer {
                let _ = tx.send(Ok(m)).await;
            }
            read_input(&mut input, true).await;
            // the answer ends with `tx`
        });
        Ok(Response::new(
            tokio_stream::wrappers::ReceiverStream::new(rx).boxed(),
        ))
    }
    async fn handshake(
        &self,
        _: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<Self::HandshakeStream>, Status> {
        Err(Status::unimplemented(""))
    }
    async fn list_flights(
        &self,
        _: Request<Criteria>,
    ) -> Result<Response<Self::ListFlightsStream>, Status> {
        Err(Status::unimplemented(""))
    }
    async fn get_flight_info(
        &self,
        _: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        Err(Status::unimplemented(""))
    }
    async fn poll_flight_info(
        &self,
        _: Request<FlightDescriptor>,
    ) -> Result<Response<PollInfo>, Status> {
        Err(Status::unimplemented(""))
    }
    async fn get_schema(
        &self,
        _: Request<FlightDescriptor>,
    ) -> Result<Response<SchemaResult>, Status> {
        Err(Status::unimplemented(""))
    }
    async fn do_get(&self, _: Request<Ticket>) -> Result<Response<Self::DoGetStream>, Status> {
        Err(Status::unimplemented(""))
    }
    async fn do_put(
        &self,
        _: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoPutStream>, Status> {
        Err(Status::unimplemented(""))
    }
    async fn do_action(
        &self,
        _: Request<Action>,
    ) -> Result<Response<Self::DoActionStream>, Status> {
        Err(Status::unimplemented(""))
    }
    async fn list_actions(
        &self,
        _: Request<Empty>,
    ) -> Result<Response<Self::ListActionsStream>, Status> {
        Err(Status::unimplemented(""))
    }
}

/// `peer` served on a unix socket in `dir`, and a client to it.
async fn serve(
    dir: &std::path::Path,
    peer: Peer,
) -> (
    tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
    std::path::PathBuf,
    StageClient,
) {
    let socket = dir.join("peer.sock");
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(
        tokio::net::UnixListener::bind(&socket).unwrap(),
    );
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(FlightServiceServer::new(peer))
            .serve_with_incoming(incoming),
    );
    let client = StageClient::connect(&Target::Unix(socket.clone()), Duration::from_secs(10))
        .await
        .unwrap();
    (server, socket, client)
}

/// An exchange of one one-row batch.
async fn exchange_one_row(
    client: &StageClient,
) -> futures::stream::BoxStream<'static, Result<sluice_flight::StageEvent, sluice_flight::StageError>>
{
    exchange_rows(client, 1).await
}

/// One row of `id`.
fn one_row(id: i64) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)]));
    RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(vec![id]))]).unwrap()
}

/// An exchange of `n` one-row batches, ids 1 to `n`.
async fn exchange_rows(
    client: &StageClient,
    n: i64,
) -> futures::stream::BoxStream<'static, Result<sluice_flight::StageEvent, sluice_flight::StageError>>
{
    let open = OpenRequest::new(sluice_flight::PROTOCOL, "peer", 1, 0);
    let input = futures::stream::iter((1..=n).map(|id| Ok(one_row(id)))).boxed();
    client
        .exchange(&open, one_row(0).schema(), input, None)
        .await
        .unwrap()
}

/// Stages that wait for the end of the engine's stream get it: without
/// shared memory right after `end`, with it at `flushed`. Every event
/// arrives and the answer ends (it hangs otherwise).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stage_waiting_for_the_end_of_the_engines_stream_gets_it() {
    for (peer, shared_memory) in [
        (Peer::AnswersAtEof, false),
        (Peer::WaitsForEofAfterFlushed, false),
        (Peer::WaitsForEofAfterFlushed, true),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (server, _, mut client) = serve(dir.path(), peer).await;
        client.use_shared_memory(shared_memory);
        let events = tokio::time::timeout(Duration::from_secs(20), async {
            exchange_one_row(&client).await.collect::<Vec<_>>().await
        })
        .await
        .expect("the answer ends, not a hang");
        assert!(
            matches!(
                events.last(),
                Some(Ok(sluice_flight::StageEvent::Flushed(_)))
            ),
            "{events:?}"
        );
        server.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_arrow_panics_on_is_a_protocol_violation_naming_the_stage() {
    let dir = tempfile::tempdir().unwrap();
    let (server, socket, client) = serve(dir.path(), Peer::Garbler).await;
    let mut events = exchange_one_row(&client).await;
    let first = tokio::time::timeout(Duration::from_secs(20), events.next())
        .await
        .expect("an answer, not a hang");
    let err = match first {
        Some(Err(e)) => e.to_string(),
        other => panic!("want an error, got {other:?}"),
    };
    assert!(
        err.contains(&socket.display().to_string())
            && err.contains("protocol violation")
            && err.contains("cannot be decoded"),
        "{err}"
    );
    server.abort();
}

/// A manifest is the stage's too: a declared schema arrow's reader panics
/// on is refused as not a schema, and `describe` does not take the engine
/// down.
#[test]
fn a_declared_schema_arrow_panics_on_is_refused() {
    use base64::Engine as _;
    let header = schema_arrow_panics_on();
    // the encapsulated message, as a manifest carries it
    let mut ipc = vec![0xFF, 0xFF, 0xFF, 0xFF];
    ipc.extend_from_slice(&(header.len() as i32).to_le_bytes());
    ipc.extend_from_slice(&header);
    let text = base64::engine::general_purpose::STANDARD.encode(&ipc);
    let e = sluice_flight::manifest::schema_from_base64(&text).unwrap_err();
    assert!(e.contains("not an Arrow IPC schema"), "{e}");
}

/// A metadata-only `kind` answering input batch `in_seq`.
fn says(kind: sluice_flight::Kind, seq: u64, in_seq: Option<u64>) -> FlightData {
    let mut e = sluice_flight::Envelope::new(kind, 1, seq);
    e.in_seq = in_seq;
    sluice_flight::codec::control_message(&e)
}

/// A row (id 9) in a message of `kind` answering `in_seq`.
fn row(kind: sluice_flight::Kind, seq: u64, in_seq: u64) -> FlightData {
    let e = sluice_flight::Envelope::new(kind, 1, seq).answering(in_seq);
    let mut m = sluice_flight::codec::BatchEncoder::new()
        .batch_messages(&one_row(9), &e)
        .unwrap();
    m.pop().unwrap()
}

/// `row_errors` for row 0 of `in_seq`.
fn reports(seq: u64, in_seq: u64) -> FlightData {
    let mut e =
        sluice_flight::Envelope::new(sluice_flight::Kind::RowErrors, 1, seq).answering(in_seq);
    e.errors = Some(vec![sluice_flight::RowErrorEntry {
        row: 0,
        code: "REJECTED".into(),
        message: "no".into(),
    }]);
    sluice_flight::codec::control_message(&e)
}

fn flushed(seq: u64, rows: u64) -> FlightData {
    let mut e = sluice_flight::Envelope::new(sluice_flight::Kind::Flushed, 1, seq);
    e.rows = Some(rows);
    sluice_flight::codec::control_message(&e)
}

/// An `unchanged` answer stands for the batch the engine sent, only where
/// the engine offered it, while it holds the batch, and as the batch's only
/// answer. Anything else is a protocol violation: rows made up, delivered
/// twice, or delivered and dead-lettered, whatever the order of the
/// messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchanged_answers_stand_for_a_batch_sent_or_are_refused() {
    use sluice_flight::Kind::{Ack, Batch, Unchanged};
    use sluice_flight::StageEvent;
    // (offered, what the peer answers to two one-row batches, the refusal or "" for none)
    type Script = fn() -> Vec<FlightData>;
    let cases: [(bool, Script, &str); 13] = [
        (
            true,
            || {
                vec![
                    says(Unchanged, 0, Some(0)),
                    says(Unchanged, 1, Some(1)),
                    flushed(2, 2),
                ]
            },
            "",
        ),
        (
            false,
            || vec![says(Unchanged, 0, Some(0))],
            "which the engine did not offer",
        ),
        (true, || vec![says(Unchanged, 0, None)], "has no `in_seq`"),
        (
            true,
            || vec![says(Unchanged, 0, Some(2))],
            "never sent (2 sent)",
        ),
        (
            true,
            || vec![says(Unchanged, 0, Some(0)), reports(1, 0)],
            "which the stage answered `unchanged`",
        ),
        (
            true,
            || {
                vec![
                    says(Unchanged, 0, Some(0)),
                    says(Ack, 1, Some(1)),
                    reports(2, 0),
                ]
            },
            "which the stage answered `unchanged`",
        ),
        (
            true,
            || vec![says(Ack, 0, Some(0)), says(Unchanged, 1, Some(0))],
            "answered already",
        ),
        (
            true,
            || vec![row(Batch, 0, 0), says(Unchanged, 1, Some(0))],
            "answered already",
        ),
        (
            true,
            || vec![says(Unchanged, 0, Some(0)), says(Unchanged, 1, Some(0))],
            "answered already",
        ),
        (
            true,
            || vec![says(Unchanged, 0, Some(0)), row(Batch, 1, 0)],
            "the batch's only one",
        ),
        (
            true,
            || vec![says(Ack, 0, Some(1)), says(Unchanged, 1, Some(0))],
            "after an answer for a later batch",
        ),
        (
            true,
            || vec![row(Unchanged, 0, 0)],
            "only a `batch` message carries rows",
        ),
        (
            true,
            || vec![reports(0, 0), says(Unchanged, 1, Some(0))],
            "after `row_errors` for it",
        ),
    ];
    for (offered, script, refusal) in cases {
        let dir = tempfile::tempdir().unwrap();
        let (server, _, mut client) = serve(dir.path(), Peer::Says(script)).await;
        client.offer_unchanged_answers(offered);
        let events = tokio::time::timeout(Duration::from_secs(20), async {
            exchange_rows(&client, 2).await.collect::<Vec<_>>().await
        })
        .await
        .expect("the answer ends, not a hang");
        server.abort();
        let what = format!(
            "{:?}",
            script()
                .iter()
                .map(|m| String::from_utf8_lossy(&m.app_metadata).into_owned())
                .collect::<Vec<_>>()
        );
        if refusal.is_empty() {
            let ids: Vec<i64> = events
                .iter()
                .filter_map(|e| match e {
                    Ok(StageEvent::Batch { batch, envelope }) => {
                        assert_eq!(envelope.kind, Unchanged, "{what}");
                        let ids = batch.column(0).as_any().downcast_ref::<Int64Array>();
                        Some(ids.unwrap().value(0))
                    }
                    Ok(_) => None,
                    Err(e) => panic!("{what}: {e}"),
                })
                .collect();
            assert_eq!(ids, [1, 2], "{what}: the batches sent");
            assert!(
                matches!(events.last(), Some(Ok(StageEvent::Flushed(_)))),
                "{what}"
            );
            continue;
        }
        let err = events
            .into_iter()
            .find_map(Result::err)
            .unwrap_or_else(|| panic!("{what}: no refusal"));
        assert!(
            err.message.contains("protocol violation") && err.message.contains(refusal),
            "{what}: {err}"
        );
        assert_eq!(err.code, sluice_contract::ErrorCode::Internal, "{what}");
    }
}
