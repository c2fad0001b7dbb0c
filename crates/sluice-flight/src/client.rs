//! The engine side of the protocol: connect to a stage, describe it, check
//! its health, and run exchanges.

use std::path::PathBuf;
use std::time::Duration;

use arrow_array::RecordBatch;
use arrow_flight::decode::{DecodedPayload, FlightDataDecoder};
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_client::FlightServiceClient;
use arrow_flight::{Action, FlightData, FlightDescriptor};
use arrow_schema::SchemaRef;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use sluice_contract::ErrorCode;
use tonic::transport::{Channel, Endpoint};

use crate::MAX_MESSAGE_SIZE;
use crate::codec::{BatchEncoder, control_message, normalize_metadata_only};
use crate::codes::StageError;
use crate::envelope::{Envelope, Kind};
use crate::manifest::{Manifest, OpenRequest};

/// Where a stage listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A unix socket (a child process the engine started).
    Unix(PathBuf),
    /// A URL: `grpc://host:port` or `http://host:port`.
    Url(String),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Unix(p) => write!(f, "unix://{}", p.display()),
            Target::Url(u) => f.write_str(u),
        }
    }
}

/// What a stage sends back in an exchange.
#[derive(Debug, Clone)]
pub enum StageEvent {
    /// Output rows.
    Batch {
        /// The rows.
        batch: RecordBatch,
        /// Its envelope.
        envelope: Envelope,
    },
    /// An input batch produced no row.
    Ack(Envelope),
    /// Rows of an input batch failed (`envelope.errors`).
    RowErrors(Envelope),
    /// All output was sent (`envelope.rows` rows).
    Flushed(Envelope),
}

impl StageEvent {
    /// The event's envelope.
    pub fn envelope(&self) -> &Envelope {
        match self {
            StageEvent::Batch { envelope, .. }
            | StageEvent::Ack(envelope)
            | StageEvent::RowErrors(envelope)
            | StageEvent::Flushed(envelope) => envelope,
        }
    }
}

/// A connection to one stage.
#[derive(Debug, Clone)]
pub struct StageClient {
    inner: FlightServiceClient<Channel>,
    target: Target,
}

fn unavailable(target: &Target, e: impl std::fmt::Display) -> StageError {
    StageError::new(ErrorCode::Unavailable, format!("{target}: {e}"))
}

impl StageClient {
    /// Connects (lazily: the first call dials).
    pub async fn connect(target: &Target, timeout: Duration) -> Result<Self, StageError> {
        let uri = match target {
            Target::Unix(p) => format!("unix://{}", p.display()),
            Target::Url(u) => u.replacen("grpc://", "http://", 1),
        };
        let endpoint = Endpoint::from_shared(uri.clone())
            .map_err(|e| {
                StageError::new(
                    ErrorCode::InvalidArgument,
                    format!("`{uri}` is not a stage address: {e}"),
                )
            })?
            .connect_timeout(timeout)
            .tcp_nodelay(true)
            .initial_stream_window_size(crate::STREAM_WINDOW)
            .initial_connection_window_size(crate::CONNECTION_WINDOW)
            .max_frame_size(crate::MAX_FRAME);
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| unavailable(target, e))?;
        let inner = FlightServiceClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE);
        Ok(Self {
            inner,
            target: target.clone(),
        })
    }

    /// Where the stage listens.
    pub fn target(&self) -> &Target {
        &self.target
    }

    async fn action(&mut self, name: &str) -> Result<Vec<u8>, StageError> {
        let mut stream = self
            .inner
            .do_action(Action {
                r#type: name.into(),
                body: Default::default(),
            })
            .await
            .map_err(|s| StageError::from_status(&s))?
            .into_inner();
        let first = stream
            .next()
            .await
            .ok_or_else(|| {
                StageError::new(ErrorCode::Internal, format!("`{name}` returned no result"))
            })?
            .map_err(|s| StageError::from_status(&s))?;
        Ok(first.body.to_vec())
    }

    /// `DoAction("describe")`.
    pub async fn describe(&mut self) -> Result<Manifest, StageError> {
        let body = self.action("describe").await?;
        let m: Manifest = serde_json::from_slice(&body).map_err(|e| {
            StageError::new(
                ErrorCode::SchemaMismatch,
                format!("{}: the manifest is not valid: {e}", self.target),
            )
        })?;
        m.check().map_err(|e| {
            StageError::new(ErrorCode::SchemaMismatch, format!("{}: {e}", self.target))
        })?;
        Ok(m)
    }

    /// `DoAction("health")`.
    pub async fn health(&mut self) -> Result<(), StageError> {
        self.action("health").await.map(|_| ())
    }

    /// Runs one exchange: sends `open`, the schema, every batch of `input`
    /// and `end`; returns the stage's events as they arrive. An `Err` in
    /// `input` aborts the exchange: `end` is never sent, so the stage cannot
    /// mistake a failed input for a complete one.
    ///
    /// The future is boxed and owns everything it uses, so it can be awaited
    /// inside tasks that must be `Send` (rustc cannot prove that for the
    /// unboxed future of an `async fn` holding these stream closures).
    pub fn exchange(
        &self,
        open: &OpenRequest,
        input_schema: SchemaRef,
        input: BoxStream<'static, Result<RecordBatch, StageError>>,
        traceparent: Option<String>,
    ) -> BoxFuture<'static, Result<BoxStream<'static, Result<StageEvent, StageError>>, StageError>>
    {
        let this = self.clone();
        let open = open.clone();
        Box::pin(async move {
            this.exchange_owned(open, input_schema, input, traceparent)
                .await
        })
    }

    async fn exchange_owned(
        mut self,
        open: OpenRequest,
        input_schema: SchemaRef,
        mut input: BoxStream<'static, Result<RecordBatch, StageError>>,
        traceparent: Option<String>,
    ) -> Result<BoxStream<'static, Result<StageEvent, StageError>>, StageError> {
        let cmd = serde_json::to_vec(&open)
            .map_err(|e| StageError::new(ErrorCode::Internal, e.to_string()))?;
        let epoch = open.epoch;
        // encoding runs in its own task: it overlaps with the rest of the
        // plan, and the request stream stays a plain channel
        let (req_tx, req_rx) = tokio::sync::mpsc::channel::<FlightData>(2);
        tokio::spawn(async move {
            let mut encoder = BatchEncoder::new();
            let mut first = encoder.schema_message(&input_schema);
            first.flight_descriptor = Some(FlightDescriptor::new_cmd(cmd));
            if req_tx.send(first).await.is_err() {
                return;
            }
            let mut seq = 0u64;
            while let Some(batch) = input.next().await {
                let Ok(batch) = batch else { return };
                let mut e = Envelope::new(Kind::Batch, epoch, seq);
                e.traceparent = traceparent.clone();
                seq += 1;
                match encoder.batch_messages(&batch, &e) {
                    Ok(msgs) => {
                        for m in msgs {
                            if req_tx.send(m).await.is_err() {
                                return;
                            }
                        }
                    }
                    // an unencodable batch: stop without `end`, the stage
                    // fails the exchange and the engine sees why
                    Err(_) => return,
                }
            }
            let _ = req_tx
                .send(control_message(&Envelope::new(Kind::End, epoch, seq)))
                .await;
        });
        let request = tokio_stream::wrappers::ReceiverStream::new(req_rx);
        let response = self
            .inner
            .do_exchange(request)
            .await
            .map_err(|s| StageError::from_status(&s))?
            .into_inner();
        let target = self.target.clone();
        let (ev_tx, ev_rx) = tokio::sync::mpsc::channel::<Result<StageEvent, StageError>>(2);
        tokio::spawn(async move {
            let mut decoder = FlightDataDecoder::new(
                response
                    .map_ok(normalize_metadata_only)
                    .map_err(FlightError::from),
            );
            while let Some(msg) = decoder.next().await {
                let event = match msg {
                    Ok(m) => decode_event(&target, m),
                    Err(FlightError::Tonic(status)) => Some(Err(StageError::from_status(&status))),
                    // a batch before the schema, IPC that does not decode:
                    // the stage's bug, not a broken connection (not retried)
                    Err(e) => Some(Err(StageError::new(
                        ErrorCode::Internal,
                        format!("{target}: protocol violation: {e}"),
                    ))),
                };
                if let Some(event) = event {
                    let stop = event.is_err();
                    if ev_tx.send(event).await.is_err() || stop {
                        return;
                    }
                }
            }
        });
        Ok(tokio_stream::wrappers::ReceiverStream::new(ev_rx).boxed())
    }
}

/// One decoded message as an event; `None` for messages without one (schema, dictionaries).
fn decode_event(
    target: &Target,
    msg: arrow_flight::decode::DecodedFlightData,
) -> Option<Result<StageEvent, StageError>> {
    let md = msg.inner.app_metadata.clone();
    // what a stage sends that breaks the protocol is its bug: `INTERNAL`,
    // not retried (docs/protocol.md, section 5)
    let bad = |m: String| {
        StageError::new(
            ErrorCode::Internal,
            format!("{target}: protocol violation: {m}"),
        )
    };
    match msg.payload {
        DecodedPayload::Schema(_) => None,
        DecodedPayload::RecordBatch(batch) => Some(Envelope::decode(&md).map_err(bad).and_then(
            |envelope| match envelope.kind {
                Kind::Batch => Ok(StageEvent::Batch { batch, envelope }),
                other => Err(bad(format!(
                    "{} rows in an `{}` message: only a `batch` message carries rows",
                    batch.num_rows(),
                    other.as_str()
                ))),
            },
        )),
        DecodedPayload::None if md.is_empty() => None,
        DecodedPayload::None => Some(Envelope::decode(&md).map_err(bad).and_then(
            |e| match e.kind {
                Kind::Ack => Ok(StageEvent::Ack(e)),
                Kind::RowErrors => Ok(StageEvent::RowErrors(e)),
                Kind::Flushed => Ok(StageEvent::Flushed(e)),
                other => Err(bad(format!(
                    "a `{}` message without rows from the stage",
                    other.as_str()
                ))),
            },
        )),
    }
}
