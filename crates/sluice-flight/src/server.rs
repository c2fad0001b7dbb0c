//! The Rust stage SDK: implement [`Stage`] (and a [`Processor`] per
//! exchange), then call [`serve`].
//!
//! ```no_run
//! use sluice_flight::{Manifest, OpenRequest, Processed, Processor, Stage, StageError, serve};
//! use arrow_array::RecordBatch;
//!
//! struct Identity;
//! struct Pass;
//!
//! #[async_trait::async_trait]
//! impl Stage for Identity {
//!     fn manifest(&self) -> Manifest { Manifest::new("identity", "1.0.0") }
//!     async fn open(&self, _req: &OpenRequest) -> Result<Box<dyn Processor>, StageError> { Ok(Box::new(Pass)) }
//! }
//!
//! #[async_trait::async_trait]
//! impl Processor for Pass {
//!     async fn process(&mut self, batch: RecordBatch) -> Result<Processed, StageError> { Ok(Processed::batch(batch)) }
//! }
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     serve(Identity).await?;
//!     Ok(())
//! }
//! ```
//!
//! The rules, which the SDK enforces:
//! - `process` gets each input batch once, in order. Row indexes of
//!   [`RowError`]s refer to that batch. A row is either in the output or
//!   reported as a row error or deliberately filtered, never two of these.
//! - Returning `Err` is fatal for the exchange: the engine fails (and may
//!   retry) the epoch. Use row errors for bad rows.
//! - Output must match the manifest's output schema (the input schema when
//!   the manifest has none); a mismatch is a `SCHEMA_MISMATCH` naming the field.
//! - `flush` runs once at the end of the exchange; a stateful stage returns
//!   what it still holds.

use std::pin::Pin;
use std::sync::Arc;

use arrow_array::{ArrayRef, RecordBatch};
use arrow_flight::decode::{DecodedPayload, FlightDataDecoder};
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_server::{FlightService, FlightServiceServer};
use arrow_flight::{
    Action, ActionType, Criteria, Empty, FlightData, FlightDescriptor, FlightInfo,
    HandshakeRequest, HandshakeResponse, PollInfo, PutResult, SchemaResult, Ticket,
};
use arrow_schema::SchemaRef;
use futures::stream::BoxStream;
use futures::{Stream, StreamExt, TryStreamExt};
use sluice_contract::{ErrorCode, LineageEntry};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::codec::{
    BatchEncoder, MESSAGE_BUDGET, control_message, normalize_metadata_only, slices,
};
use crate::codes::StageError;
use crate::envelope::{Envelope, Kind, RowErrorEntry};
use crate::manifest::{ErrorSemantics, Manifest, OpenRequest, check_schema};
use crate::security::{StageSecurity, TokenCheck};
use crate::shm::{Release, SlotRef, expand, release_message, stage_side};
use crate::version::{self, DescribeRequest};
use crate::{ENV_ADDR, ENV_SOCKET, MAX_MESSAGE_SIZE};
use base64::Engine as _;

/// A row that failed, reported instead of output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowError {
    /// Index of the row in the input batch.
    pub row: u64,
    /// Why, as a code.
    pub code: ErrorCode,
    /// Why, in words.
    pub message: String,
}

impl RowError {
    /// A row error.
    pub fn new(row: u64, code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            row,
            code,
            message: message.into(),
        }
    }
}

/// What one input batch produced.
#[derive(Debug, Clone, Default)]
pub struct Processed {
    /// Output rows, if any.
    pub output: Option<RecordBatch>,
    /// Rows that failed.
    pub row_errors: Vec<RowError>,
}

impl Processed {
    /// Just an output batch.
    pub fn batch(batch: RecordBatch) -> Self {
        Self {
            output: Some(batch),
            row_errors: Vec::new(),
        }
    }
}

/// Per-exchange processing state.
#[async_trait::async_trait]
pub trait Processor: Send {
    /// Transforms one input batch.
    async fn process(&mut self, batch: RecordBatch) -> Result<Processed, StageError>;

    /// Returns what a stateful stage still holds, at the end of the exchange.
    async fn flush(&mut self) -> Result<Vec<RecordBatch>, StageError> {
        Ok(Vec::new())
    }

    /// A stateful stage's state after the exchange (after [`Processor::flush`]),
    /// committed by the engine with the epoch and handed back in the next
    /// exchange's [`OpenRequest::restore`]. Called only when the manifest
    /// says `stateful` and the protocol is v1.1; such a stage must implement
    /// it (the default fails the exchange).
    async fn snapshot(&mut self) -> Result<Vec<u8>, StageError> {
        Err(StageError::new(
            ErrorCode::Internal,
            "the manifest says stateful, but the processor does not implement Processor::snapshot",
        ))
    }
}

/// A stage: what it is ([`Manifest`]) and how to start an exchange.
#[async_trait::async_trait]
pub trait Stage: Send + Sync + 'static {
    /// The manifest `describe` returns.
    fn manifest(&self) -> Manifest;

    /// Starts an exchange; `request.config` is the stage's config table.
    async fn open(&self, request: &OpenRequest) -> Result<Box<dyn Processor>, StageError>;

    /// Liveness; an error makes `health` fail with `UNAVAILABLE`.
    async fn health(&self) -> Result<(), StageError> {
        Ok(())
    }
}

/// The Flight service of a stage, for embedding in a tonic server.
pub fn service<S: Stage>(stage: S) -> Result<FlightServiceServer<StageService<S>>, StageError> {
    let mut manifest = stage.manifest();
    // the SDK reads and writes batches in shared memory for every stage
    // that speaks v1.1 (a stage pinned to v1 cannot announce it)
    manifest.shared_memory = manifest.protocol != crate::version::V1;
    manifest
        .check()
        .map_err(|m| StageError::new(ErrorCode::Internal, format!("invalid manifest: {m}")))?;
    Ok(FlightServiceServer::new(StageService {
        stage: Arc::new(stage),
        manifest: Arc::new(manifest),
    })
    .max_decoding_message_size(MAX_MESSAGE_SIZE)
    .max_encoding_message_size(MAX_MESSAGE_SIZE))
}

/// Errors of [`serve`].
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Neither `SLUICE_STAGE_SOCKET` nor `SLUICE_STAGE_ADDR` is set.
    #[error(
        "set {ENV_SOCKET} (a unix socket path) or {ENV_ADDR} (host:port) so the stage knows where to listen"
    )]
    NoAddress,
    /// The manifest is invalid.
    #[error("{0}")]
    Manifest(StageError),
    /// Listening or serving failed.
    #[error("cannot serve on {0}: {1}")]
    Io(String, String),
    /// The TLS or token settings of the environment are incomplete or unreadable.
    #[error("{0}")]
    Security(String),
}

/// Serves `stage` on the unix socket in `SLUICE_STAGE_SOCKET` (or TCP
/// `SLUICE_STAGE_ADDR`) until SIGINT or SIGTERM. With
/// `SLUICE_STAGE_TLS_CERT` and `_KEY` it serves TLS (mutual TLS with
/// `SLUICE_STAGE_TLS_CLIENT_CA`), with `SLUICE_STAGE_TOKEN` every call must
/// carry that bearer token ([`crate::security`]).
pub async fn serve<S: Stage>(stage: S) -> Result<(), ServeError> {
    // the engine's log format, unless the program set up logging itself
    crate::logging::init();
    let manifest = stage.manifest();
    let svc = service(stage).map_err(ServeError::Manifest)?;
    // spans go where OTEL_EXPORTER_OTLP_ENDPOINT says (the engine passes it on)
    let telemetry = crate::trace::export_from_env(&manifest);
    let result = serve_service(svc).await;
    // the last spans are sent from a blocking thread: flushing waits for them
    let _ = tokio::task::spawn_blocking(move || crate::trace::shutdown(telemetry)).await;
    result
}

async fn serve_service<S: Stage>(
    svc: FlightServiceServer<StageService<S>>,
) -> Result<(), ServeError> {
    let shutdown = async {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
        }
    };
    let security = StageSecurity::from_env().map_err(ServeError::Security)?;
    let mut builder = tonic::transport::Server::builder()
        .initial_stream_window_size(crate::STREAM_WINDOW)
        .initial_connection_window_size(crate::CONNECTION_WINDOW)
        .max_frame_size(crate::MAX_FRAME);
    if security.token.is_some() && security.tls.is_none() && std::env::var(ENV_SOCKET).is_err() {
        tracing::warn!(
            "the stage checks a token over plain TCP: anyone on the path can read it; serve TLS too"
        );
    }
    if let Some(tls) = security.tls {
        builder = builder
            .tls_config(tls)
            .map_err(|e| ServeError::Security(format!("TLS: {e}")))?;
    }
    let router = builder.add_service(tonic::service::interceptor::InterceptedService::new(
        svc,
        TokenCheck(security.token),
    ));
    if let Ok(path) = std::env::var(ENV_SOCKET) {
        let _ = std::fs::remove_file(&path);
        let listener = tokio::net::UnixListener::bind(&path)
            .map_err(|e| ServeError::Io(path.clone(), e.to_string()))?;
        let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
        let result = router
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await;
        let _ = std::fs::remove_file(&path);
        return result.map_err(|e| ServeError::Io(path, e.to_string()));
    }
    if let Ok(addr) = std::env::var(ENV_ADDR) {
        let sock = addr
            .parse()
            .map_err(|e| ServeError::Io(addr.clone(), format!("{e}")))?;
        return router
            .serve_with_shutdown(sock, shutdown)
            .await
            .map_err(|e| ServeError::Io(addr, e.to_string()));
    }
    Err(ServeError::NoAddress)
}

/// The Flight service of one stage; see [`service`].
pub struct StageService<S> {
    stage: Arc<S>,
    manifest: Arc<Manifest>,
}

type BoxS<T> = BoxStream<'static, Result<T, Status>>;

fn fatal(code: ErrorCode, msg: impl Into<String>) -> Status {
    StageError::new(code, msg).into()
}

#[tonic::async_trait]
impl<S: Stage> FlightService for StageService<S> {
    type HandshakeStream = BoxS<HandshakeResponse>;
    type ListFlightsStream = BoxS<FlightInfo>;
    type DoGetStream = BoxS<FlightData>;
    type DoPutStream = BoxS<PutResult>;
    type DoExchangeStream = BoxS<FlightData>;
    type DoActionStream = BoxS<arrow_flight::Result>;
    type ListActionsStream = BoxS<ActionType>;

    async fn handshake(
        &self,
        _: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<Self::HandshakeStream>, Status> {
        Err(Status::unimplemented("a sluice stage has no handshake"))
    }
    async fn list_flights(
        &self,
        _: Request<Criteria>,
    ) -> Result<Response<Self::ListFlightsStream>, Status> {
        Err(Status::unimplemented("a sluice stage lists no flights"))
    }
    async fn get_flight_info(
        &self,
        _: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        Err(Status::unimplemented("use DoAction(describe)"))
    }
    async fn poll_flight_info(
        &self,
        _: Request<FlightDescriptor>,
    ) -> Result<Response<PollInfo>, Status> {
        Err(Status::unimplemented("use DoAction(describe)"))
    }
    async fn get_schema(
        &self,
        _: Request<FlightDescriptor>,
    ) -> Result<Response<SchemaResult>, Status> {
        Err(Status::unimplemented("use DoAction(describe)"))
    }
    async fn do_get(&self, _: Request<Ticket>) -> Result<Response<Self::DoGetStream>, Status> {
        Err(Status::unimplemented(
            "a sluice stage serves DoExchange only",
        ))
    }
    async fn do_put(
        &self,
        _: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoPutStream>, Status> {
        Err(Status::unimplemented(
            "a sluice stage serves DoExchange only",
        ))
    }
    async fn list_actions(
        &self,
        _: Request<Empty>,
    ) -> Result<Response<Self::ListActionsStream>, Status> {
        let actions = ["describe", "health"].map(|a| {
            Ok(ActionType {
                r#type: a.into(),
                description: format!("sluice.stage {a}"),
            })
        });
        Ok(Response::new(futures::stream::iter(actions).boxed()))
    }

    async fn do_action(
        &self,
        request: Request<Action>,
    ) -> Result<Response<Self::DoActionStream>, Status> {
        let action = request.into_inner();
        let body = match action.r#type.as_str() {
            "describe" => {
                let version = DescribeRequest::parse(&action.body)
                    .and_then(|r| version::negotiate(&r.protocols, &version::SPOKEN))
                    .map_err(|m| fatal(ErrorCode::InvalidArgument, m))?;
                serde_json::to_vec(&self.manifest.in_protocol(version)).map_err(|e| {
                    fatal(
                        ErrorCode::Internal,
                        format!("cannot encode the manifest: {e}"),
                    )
                })?
            }
            "health" => match self.stage.health().await {
                Ok(()) => br#"{"status":"ok"}"#.to_vec(),
                Err(e) => return Err(fatal(ErrorCode::Unavailable, e.message)),
            },
            other => {
                return Err(fatal(
                    ErrorCode::InvalidArgument,
                    format!("unknown action `{other}`; actions are describe and health"),
                ));
            }
        };
        let result = arrow_flight::Result { body: body.into() };
        Ok(Response::new(futures::stream::iter([Ok(result)]).boxed()))
    }

    async fn do_exchange(
        &self,
        request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoExchangeStream>, Status> {
        let (tx, rx) = mpsc::channel::<Result<FlightData, Status>>(8);
        // the process on the other end of the stage's unix socket: only it
        // may share memory, and only a memory file it holds (over TCP, or
        // in a tonic server without peer credentials, there is none)
        let peer = request
            .extensions()
            .get::<tonic::transport::server::UdsConnectInfo>()
            .and_then(|info| info.peer_cred)
            .and_then(|cred| cred.pid());
        let input = request.into_inner();
        let stage = Arc::clone(&self.stage);
        let manifest = Arc::clone(&self.manifest);
        tokio::spawn(async move {
            let errors = tx.clone();
            if let Err(status) = run_exchange(stage, manifest, input, tx, peer).await {
                let _ = errors.send(Err(status)).await;
            }
        });
        Ok(Response::new(ReceiverStream::new(rx).boxed()))
    }
}

/// Sends output messages, stopping quietly when the engine has gone.
struct Out {
    tx: mpsc::Sender<Result<FlightData, Status>>,
    seq: u64,
    epoch: u64,
    /// Slots of the engine's shared memory whose input batches are gone
    /// (their last array dropped), given back before the next message.
    releases: Arc<std::sync::Mutex<Vec<SlotRef>>>,
}

impl Out {
    async fn send(&self, m: FlightData) -> Result<(), Status> {
        let released =
            std::mem::take(&mut *self.releases.lock().unwrap_or_else(|p| p.into_inner()));
        for slot in released {
            self.push(release_message(self.epoch, slot)).await?;
        }
        self.push(m).await
    }
    async fn push(&self, m: FlightData) -> Result<(), Status> {
        self.tx
            .send(Ok(m))
            .await
            .map_err(|_| Status::cancelled("the engine closed the exchange"))
    }
    fn envelope(&mut self, kind: Kind) -> Envelope {
        let e = Envelope::new(kind, self.epoch, self.seq);
        self.seq += 1;
        e
    }

    /// Sends one output batch (answering `in_seq`, or none at `flush`): in
    /// several messages when it is larger than [`MESSAGE_BUDGET`], since a
    /// message over the 64 MiB limit would fail the exchange
    /// (docs/protocol.md, section 1).
    async fn send_batch(
        &mut self,
        encoder: &mut BatchEncoder,
        batch: RecordBatch,
        in_seq: Option<u64>,
        lineage: &LineageEntry,
    ) -> Result<(), Status> {
        for piece in slices(batch, usize::MAX, MESSAGE_BUDGET) {
            let mut e = self.envelope(Kind::Batch);
            e.in_seq = in_seq;
            e.lineage = Some(lineage.clone());
            for m in encoder
                .batch_messages(&piece, &e)
                .map_err(|e| fatal(ErrorCode::Internal, e.to_string()))?
            {
                self.send(m).await?;
            }
        }
        Ok(())
    }
}

/// One exchange, with its span (a child of the engine's, when the engine
/// traces and this process exports: see [`crate::trace`]).
async fn run_exchange<S: Stage>(
    stage: Arc<S>,
    manifest: Arc<Manifest>,
    input: Streaming<FlightData>,
    tx: mpsc::Sender<Result<FlightData, Status>>,
    peer: Option<i32>,
) -> Result<(), Status> {
    let mut span = crate::trace::ExchangeSpan::default();
    let result = exchange_traced(stage, manifest, input, tx, peer, &mut span).await;
    log_exchange(&span, result.as_ref().err());
    span.end(result.as_ref().err());
    result
}

/// The exchange's log line, with its trace: a failure at warn (info when
/// the engine gave up on it: nothing is wrong then), the end at debug.
fn log_exchange(span: &crate::trace::ExchangeSpan, error: Option<&Status>) {
    let _in_trace = span.log_span().entered();
    let (stage, epoch, partition) = span.opened.clone().unwrap_or_default();
    match error {
        Some(e) if e.code() == tonic::Code::Cancelled => {
            tracing::info!(
                stage,
                epoch,
                partition,
                error = e.message(),
                "exchange cancelled"
            )
        }
        Some(e) => tracing::warn!(
            stage,
            epoch,
            partition,
            code = ?e.code(),
            error = e.message(),
            "exchange failed"
        ),
        None => tracing::debug!(stage, epoch, partition, "exchange flushed"),
    }
}

async fn exchange_traced<S: Stage>(
    stage: Arc<S>,
    manifest: Arc<Manifest>,
    input: Streaming<FlightData>,
    tx: mpsc::Sender<Result<FlightData, Status>>,
    peer: Option<i32>,
    span: &mut crate::trace::ExchangeSpan,
) -> Result<(), Status> {
    // set once the open request is read, if it offers shared memory
    let incoming = Arc::new(std::sync::OnceLock::new());
    let input = expand(input, Arc::clone(&incoming), |m| {
        fatal(ErrorCode::InvalidArgument, m)
    });
    let mut decoder = FlightDataDecoder::new(
        input
            .map_ok(normalize_metadata_only)
            .map_err(FlightError::from),
    );
    // the first message: descriptor (open request) + input schema
    let first = decoder
        .next()
        .await
        .ok_or_else(|| {
            fatal(
                ErrorCode::InvalidArgument,
                "the exchange ended before its first message",
            )
        })?
        .map_err(|e| {
            fatal(
                ErrorCode::InvalidArgument,
                format!("cannot decode the first message: {e}"),
            )
        })?;
    let cmd = first
        .inner
        .flight_descriptor
        .as_ref()
        .map(|d| d.cmd.clone())
        .ok_or_else(|| {
            fatal(
                ErrorCode::InvalidArgument,
                "the first message has no descriptor with the open request",
            )
        })?;
    let open: OpenRequest = serde_json::from_slice(&cmd).map_err(|e| {
        fatal(
            ErrorCode::InvalidArgument,
            format!("the open request is not valid JSON: {e}"),
        )
    })?;
    if !version::is_spoken(&open.protocol) {
        return Err(fatal(
            ErrorCode::InvalidArgument,
            format!(
                "the engine opened the exchange in {}; this stage speaks {}",
                open.protocol,
                version::SPOKEN.join(", ")
            ),
        ));
    }
    // a snapshot that does not decode is the engine's bug, refused before
    // the stage sees the exchange
    open.restore().map_err(Status::from)?;
    let input_schema: SchemaRef = match first.payload {
        DecodedPayload::Schema(s) => s,
        _ => {
            return Err(fatal(
                ErrorCode::InvalidArgument,
                "the first message must carry the input schema",
            ));
        }
    };
    if let Some(decl) = &manifest.input_schema {
        check_schema(&decl.schema, &input_schema).map_err(|m| {
            fatal(
                ErrorCode::SchemaMismatch,
                format!("stage `{}` input: {m}", manifest.name),
            )
        })?;
    }
    let output_schema = manifest.output_for(&input_schema);
    let releases = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut out = Out {
        tx,
        seq: 0,
        epoch: open.epoch,
        releases: Arc::clone(&releases),
    };
    let mut encoder = BatchEncoder::new();
    if let Some(offer) = &open.shared_memory {
        // a client elsewhere (TCP) could name any file of this machine for
        // the stage to read unchecked and write into
        let Some(peer) = peer else {
            return Err(fatal(
                ErrorCode::InvalidArgument,
                format!(
                    "stage `{}`: shared memory is taken only from an engine on the stage's unix socket",
                    manifest.name
                ),
            ));
        };
        let release: Release = Arc::new(move |slot| {
            releases
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(slot)
        });
        let side = stage_side(offer, peer, Arc::clone(&output_schema), release).map_err(|m| {
            fatal(
                ErrorCode::InvalidArgument,
                format!("stage `{}`: {m} (a stage in another container or on another machine cannot: set `shared_memory = false` on the stage in the pipeline)", manifest.name),
            )
        })?;
        encoder = encoder.with_shared_memory(side.writer);
        let _ = incoming.set(side.incoming);
        // SAFETY: the memory is a sealed memfd held by the process on the
        // other end of the stage's unix socket (checked by `stage_side`):
        // the engine, which the stage trusts to send valid Arrow as it
        // trusts it with its input. Checking every string's UTF-8 again
        // would cost what the shared memory saves.
        decoder = unsafe { decoder.with_skip_validation() };
    }
    let mut processor = stage.open(&open).await.map_err(Status::from)?;

    out.send(encoder.schema_message(&output_schema)).await?;
    let lineage = LineageEntry {
        stage: manifest.name.clone(),
        kind: "external".into(),
        version: manifest.version.clone(),
        language: manifest.language.clone(),
    };
    let mut rows_out = 0u64;
    let mut ended = false;
    // the engine checks the batch it reuses, under the input's schema,
    // against the output schema: a stage that renames its input's columns
    // sends its rows
    let takes_unchanged =
        open.takes_unchanged() && check_schema(&output_schema, &input_schema).is_ok();
    while let Some(msg) = decoder.next().await {
        let msg = msg.map_err(|e| {
            fatal(
                ErrorCode::InvalidArgument,
                format!("cannot decode an input message: {e}"),
            )
        })?;
        let md = msg.inner.app_metadata.clone();
        match msg.payload {
            DecodedPayload::RecordBatch(batch) => {
                let env =
                    Envelope::decode(&md).map_err(|m| fatal(ErrorCode::InvalidArgument, m))?;
                if env.kind != Kind::Batch || env.epoch != open.epoch {
                    return Err(fatal(
                        ErrorCode::InvalidArgument,
                        format!("unexpected envelope on a batch: {env:?}"),
                    ));
                }
                span.start_once(env.traceparent.as_deref(), &open);
                if batch.num_rows() as u64 > manifest.max_batch_rows {
                    return Err(fatal(
                        ErrorCode::InvalidArgument,
                        format!(
                            "batch of {} rows exceeds max_batch_rows {}",
                            batch.num_rows(),
                            manifest.max_batch_rows
                        ),
                    ));
                }
                let n = batch.num_rows() as u64;
                // `Arc`s of the input's arrays, to see whether the output is them
                let input = batch.columns().to_vec();
                let processed = processor.process(batch).await.map_err(Status::from)?;
                let output = processed.output.filter(|b| b.num_rows() > 0);
                let same = output.as_ref().is_some_and(|b| is_unchanged(&input, n, b));
                // before any await: a slot of shared memory the input reads
                // goes back to the engine with this answer, not the next
                drop(input);
                if same && !processed.row_errors.is_empty() {
                    return Err(fatal(
                        ErrorCode::Internal,
                        format!(
                            "stage `{}` answered input batch {} with its input unchanged and reported row errors for it: a stage must leave the rows it reports out of its output",
                            manifest.name, env.seq
                        ),
                    ));
                }
                match output {
                    Some(b) if same && takes_unchanged => {
                        // the nulls where the output schema says not null
                        drop(conform(&manifest, &output_schema, b)?);
                        rows_out += n;
                        let e = out.envelope(Kind::Unchanged).answering(env.seq);
                        out.send(control_message(&e)).await?;
                    }
                    Some(b) => {
                        let b = conform(&manifest, &output_schema, b)?;
                        rows_out += b.num_rows() as u64;
                        out.send_batch(&mut encoder, b, Some(env.seq), &lineage)
                            .await?;
                    }
                    None => {
                        let e = out.envelope(Kind::Ack).answering(env.seq);
                        out.send(control_message(&e)).await?;
                    }
                }
                if !processed.row_errors.is_empty() {
                    if manifest.errors == ErrorSemantics::FatalOnly {
                        return Err(fatal(
                            ErrorCode::Internal,
                            "the stage reported row errors but its manifest says errors = fatal_only",
                        ));
                    }
                    if let Some(bad) = processed.row_errors.iter().find(|r| r.row >= n) {
                        return Err(fatal(
                            ErrorCode::Internal,
                            format!("row error for row {} of a batch of {n} rows", bad.row),
                        ));
                    }
                    // the engine refuses it too (docs/protocol.md, section 5)
                    let mut seen = std::collections::HashSet::new();
                    if let Some(twice) = processed.row_errors.iter().find(|r| !seen.insert(r.row)) {
                        return Err(fatal(
                            ErrorCode::Internal,
                            format!("two row errors name row {}", twice.row),
                        ));
                    }
                    let mut e = out.envelope(Kind::RowErrors).answering(env.seq);
                    e.errors = Some(
                        processed
                            .row_errors
                            .into_iter()
                            .map(|r| RowErrorEntry {
                                row: r.row,
                                code: r.code.to_string(),
                                message: r.message,
                            })
                            .collect(),
                    );
                    out.send(control_message(&e)).await?;
                }
            }
            DecodedPayload::None => {
                let env =
                    Envelope::decode(&md).map_err(|m| fatal(ErrorCode::InvalidArgument, m))?;
                if env.kind != Kind::End {
                    return Err(fatal(
                        ErrorCode::InvalidArgument,
                        format!("unexpected control message `{:?}`", env.kind),
                    ));
                }
                ended = true;
                break;
            }
            DecodedPayload::Schema(_) => {
                return Err(fatal(
                    ErrorCode::InvalidArgument,
                    "the input schema may not change within an exchange",
                ));
            }
        }
    }
    if !ended {
        return Err(fatal(
            ErrorCode::InvalidArgument,
            "the exchange ended without an `end` message",
        ));
    }
    // with shared memory the engine goes on giving the stage's slots back
    // after `end` (protocol.md section 8): taking those releases while the
    // flush output is written lets it use the slots again ([`shm::expand`]
    // frees them as it reads; anything else after `end` stops the reading)
    let stage_name = manifest.name.clone();
    let _releases_after_end = incoming.get().is_some().then(|| {
        AbortOnDrop(tokio::spawn(async move {
            match decoder.next().await {
                None => {}
                Some(Err(e)) => tracing::warn!(
                    stage = stage_name,
                    error = %e,
                    "after `end`: the engine broke the protocol"
                ),
                Some(Ok(_)) => tracing::warn!(
                    stage = stage_name,
                    "after `end`: the engine sent more than releases; not read"
                ),
            }
        }))
    });
    // the tail: `_releases_after_end` is dropped (its task aborted) after it
    async {
        for b in processor.flush().await.map_err(Status::from)? {
            if b.num_rows() == 0 {
                continue;
            }
            let b = conform(&manifest, &output_schema, b)?;
            rows_out += b.num_rows() as u64;
            out.send_batch(&mut encoder, b, None, &lineage).await?;
        }
        let mut e = out.envelope(Kind::Flushed);
        e.rows = Some(rows_out);
        if open.carries_state(&manifest) {
            let state = processor.snapshot().await.map_err(Status::from)?;
            e.snapshot = Some(base64::engine::general_purpose::STANDARD.encode(state));
        }
        out.send(control_message(&e)).await
    }
    .await
}

/// A task that ends with its handle: the reading of releases after `end`
/// stops when the exchange does, also when flushing fails or panics.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Whether `output` is, by construction, the input whose arrays are
/// `input`: the same arrays, or arrays over the same buffers with the same
/// offsets and lengths (its values cannot differ). Equal values in other
/// buffers do not count: comparing them would cost what sending them does.
fn is_unchanged(input: &[ArrayRef], rows: u64, output: &RecordBatch) -> bool {
    input.len() == output.num_columns()
        && output.num_rows() as u64 == rows
        && input
            .iter()
            .zip(output.columns())
            .all(|(i, o)| Arc::ptr_eq(i, o) || i.to_data().ptr_eq(&o.to_data()))
}

/// Checks an output batch against the declared output schema and labels it with it.
fn conform(
    manifest: &Manifest,
    schema: &SchemaRef,
    batch: RecordBatch,
) -> Result<RecordBatch, Status> {
    let actual = batch.schema();
    check_schema(schema, &actual).map_err(|m| {
        fatal(
            ErrorCode::SchemaMismatch,
            format!("stage `{}` output: {m}", manifest.name),
        )
    })?;
    for (i, f) in schema.fields().iter().enumerate() {
        if !f.is_nullable() && batch.column(i).null_count() > 0 {
            return Err(fatal(
                ErrorCode::SchemaMismatch,
                format!(
                    "stage `{}` output: field `{}` is declared not null but has nulls",
                    manifest.name,
                    f.name()
                ),
            ));
        }
    }
    RecordBatch::try_new(Arc::clone(schema), batch.columns().to_vec()).map_err(|e| {
        fatal(
            ErrorCode::SchemaMismatch,
            format!("stage `{}` output: {e}", manifest.name),
        )
    })
}

/// A stream type alias used by the client too.
pub type FlightDataStream = Pin<Box<dyn Stream<Item = Result<FlightData, Status>> + Send>>;
