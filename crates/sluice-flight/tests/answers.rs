//! The engine's client against a peer that sends what no SDK would: bytes
//! that make arrow's IPC decoding panic end the exchange with an error that
//! names the stage and says why, not with a silent abort.

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

/// Answers every exchange with that schema message.
struct Garbler;

type BoxS<T> = BoxStream<'static, Result<T, Status>>;

#[tonic::async_trait]
impl FlightService for Garbler {
    type HandshakeStream = BoxS<HandshakeResponse>;
    type ListFlightsStream = BoxS<FlightInfo>;
    type DoGetStream = BoxS<FlightData>;
    type DoPutStream = BoxS<PutResult>;
    type DoExchangeStream = BoxS<FlightData>;
    type DoActionStream = BoxS<arrow_flight::Result>;
    type ListActionsStream = BoxS<ActionType>;

    async fn do_exchange(
        &self,
        _: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoExchangeStream>, Status> {
        let schema = FlightData {
            data_header: schema_arrow_panics_on().into(),
            ..Default::default()
        };
        Ok(Response::new(
            futures::stream::iter([Ok(schema)])
                .chain(futures::stream::pending())
                .boxed(),
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_arrow_panics_on_is_a_protocol_violation_naming_the_stage() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("garbler.sock");
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(
        tokio::net::UnixListener::bind(&socket).unwrap(),
    );
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(FlightServiceServer::new(Garbler))
            .serve_with_incoming(incoming),
    );
    let client = StageClient::connect(&Target::Unix(socket.clone()), Duration::from_secs(10))
        .await
        .unwrap();
    let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)]));
    let batch = RecordBatch::try_new(
        Arc::clone(&schema),
        vec![Arc::new(Int64Array::from(vec![1]))],
    )
    .unwrap();
    let open = OpenRequest::new(sluice_flight::PROTOCOL, "garbler", 1, 0);
    let input = futures::stream::iter([Ok(batch)]).boxed();
    let mut events = client.exchange(&open, schema, input, None).await.unwrap();
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
