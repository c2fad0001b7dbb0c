//! The engine side of the protocol: connect to a stage, describe it, check
//! its health, and run exchanges.

use std::error::Error as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arrow_array::RecordBatch;
use arrow_flight::decode::{DecodedPayload, FlightDataDecoder};
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_client::FlightServiceClient;
use arrow_flight::{Action, FlightData, FlightDescriptor};
use arrow_schema::SchemaRef;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt, TryStreamExt};
use sluice_contract::ErrorCode;
use tonic::transport::{Channel, Endpoint};

use crate::MAX_MESSAGE_SIZE;
use crate::codec::{BatchEncoder, control_message, normalize_metadata_only};
use crate::codes::{Setting, StageError};
use crate::envelope::{Envelope, Kind};
use crate::manifest::{Manifest, OpenRequest};
use crate::security::{ClientSecurity, Token};
use crate::unchanged::Held;
use crate::version::{self, DescribeRequest};
use crate::views::ViewsAsBinary;

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
    /// Output rows: a `batch` message, or the input batch an `unchanged`
    /// answer stands for (`envelope.kind` says which).
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
    /// Sent with every call (`authorization: Bearer ...`).
    token: Option<Token>,
    /// Over TLS: whether a client certificate is offered.
    tls_client_cert: Option<bool>,
    /// Whether a call ever succeeded on this connection: after one, a
    /// closed connection is not a TLS refusal but a stage going away.
    proven: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Offer the stage shared memory in each exchange ([`crate::shm`]).
    shared_memory: bool,
    /// Offer `unchanged` answers in each v1.1 exchange ([`crate::unchanged`]).
    unchanged: bool,
    /// Counts the input batches that went through shared memory.
    sent_in_shm: Option<Arc<std::sync::atomic::AtomicU64>>,
}

fn unavailable(target: &Target, e: impl std::fmt::Display) -> StageError {
    StageError::new(ErrorCode::Unavailable, format!("{target}: {e}"))
}

impl StageClient {
    /// Connects to a stage without TLS or token.
    pub async fn connect(target: &Target, timeout: Duration) -> Result<Self, StageError> {
        Self::connect_with(target, timeout, &ClientSecurity::default()).await
    }

    /// Connects with the pipeline's `tls` (for `grpcs://` URLs) and `token`.
    pub async fn connect_with(
        target: &Target,
        timeout: Duration,
        security: &ClientSecurity,
    ) -> Result<Self, StageError> {
        // refusals of the connection's TLS: no retry passes them
        let refuse = |m: String| {
            StageError::new(ErrorCode::InvalidArgument, format!("{target}: {m}"))
                .about(Setting::Tls)
        };
        let uri = match target {
            Target::Unix(p) => format!("unix://{}", p.display()),
            Target::Url(u) => {
                let tls = u.starts_with("grpcs://");
                match (tls, &security.tls) {
                    (true, None) => {
                        return Err(refuse(
                            "a grpcs:// stage needs `tls = { ca = \"...\" }`: the CA that signed its certificate".into(),
                        ));
                    }
                    (false, Some(_)) => {
                        return Err(refuse("`tls` is set but the url is not grpcs://".into()));
                    }
                    _ => {}
                }
                u.replacen("grpcs://", "https://", 1)
                    .replacen("grpc://", "http://", 1)
            }
        };
        let mut endpoint = Endpoint::from_shared(uri.clone())
            .map_err(|e| {
                StageError::new(
                    ErrorCode::InvalidArgument,
                    format!("`{uri}` is not a stage address: {e}"),
                )
                .about(Setting::Url)
            })?
            .connect_timeout(timeout)
            .tcp_nodelay(true)
            .initial_stream_window_size(crate::STREAM_WINDOW)
            .initial_connection_window_size(crate::CONNECTION_WINDOW)
            .max_frame_size(crate::MAX_FRAME);
        if let Some(files) = &security.tls {
            let config = files.client_config().map_err(refuse)?;
            endpoint = endpoint
                .tls_config(config)
                .map_err(|e| refuse(e.to_string()))?;
        }
        let channel = endpoint.connect().await.map_err(|e| {
            match crate::security::explain_tls_failure(&e) {
                // a TLS refusal does not pass with a retry
                Some(why) => refuse(format!("{why} ({})", crate::security::error_chain(&e))),
                None => unavailable(target, crate::security::error_chain(&e)),
            }
        })?;
        let inner = FlightServiceClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE);
        Ok(Self {
            inner,
            target: target.clone(),
            token: security.token.clone(),
            tls_client_cert: security.tls.as_ref().map(|t| t.cert.is_some()),
            proven: Default::default(),
            shared_memory: false,
            unchanged: false,
            sent_in_shm: None,
        })
    }

    /// Offers shared memory in each exchange (a stage whose manifest says
    /// `shared_memory`, on a unix socket: it must be on this machine);
    /// otherwise batches go over Flight.
    pub fn use_shared_memory(&mut self, on: bool) {
        self.shared_memory = on && matches!(self.target, Target::Unix(_));
    }

    /// Whether exchanges offer shared memory.
    pub fn uses_shared_memory(&self) -> bool {
        self.shared_memory
    }

    /// Offers `unchanged` answers in each v1.1 exchange (off by default):
    /// a stage that answers a batch with the batch itself then sends no
    /// rows back, and the exchange yields the batch it sent, under the
    /// schema it was sent with; the caller checks it as any answer. The
    /// exchange holds each batch until a later one is answered, so the
    /// caller bounds what is held by bounding the batches in flight.
    pub fn offer_unchanged_answers(&mut self, on: bool) {
        self.unchanged = on;
    }

    /// Whether v1.1 exchanges offer `unchanged` answers.
    pub fn offers_unchanged_answers(&self) -> bool {
        self.unchanged
    }

    /// Adds one to `counter` for every input batch an exchange sends
    /// through shared memory (answers are counted where they arrive: their
    /// envelope names a slot). With `unchanged` answers no answer carries
    /// rows, so this is what shows the path taken.
    pub fn count_sent_in_shared_memory(&mut self, counter: Arc<std::sync::atomic::AtomicU64>) {
        self.sent_in_shm = Some(counter);
    }

    /// A request carrying the token, if any.
    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(message);
        if let Some(t) = &self.token {
            t.attach(&mut r);
        }
        r
    }

    /// A failed call, in the pipeline's words when it was refused for its
    /// token or its TLS (neither passes with a retry).
    fn failed(&self, status: &tonic::Status) -> StageError {
        if status.code() == tonic::Code::Unauthenticated {
            let which = match &self.token {
                Some(t) => format!("the token in `{}`", t.source()),
                None => "the call: no `token` is set".into(),
            };
            return StageError::new(
                ErrorCode::InvalidArgument,
                format!(
                    "{}: the stage refused {which} ({})",
                    self.target,
                    status.message()
                ),
            )
            .about(Setting::Token);
        }
        let chain = crate::security::error_chain(status);
        if let Some(why) = crate::security::explain_tls_failure(status) {
            return StageError::new(
                ErrorCode::InvalidArgument,
                format!("{}: {why} ({chain})", self.target),
            )
            .about(Setting::Tls);
        }
        // with TLS 1.3 a server refuses a client certificate after the
        // client finished its handshake: the client only sees the
        // connection close, without the TLS alert
        let closed = status.source().is_some()
            && !self.proven.load(std::sync::atomic::Ordering::Relaxed)
            && matches!(
                status.code(),
                tonic::Code::Unavailable | tonic::Code::Cancelled | tonic::Code::Unknown
            );
        if let (true, Some(offered)) = (closed, self.tls_client_cert) {
            let why = if offered {
                "it probably refused the client certificate in `tls.cert` (not signed by a CA it trusts)"
            } else {
                "it probably requires a client certificate: set `tls.cert` and `tls.key`"
            };
            return StageError::new(
                ErrorCode::InvalidArgument,
                format!(
                    "{}: the stage closed the connection after the TLS handshake; {why} ({chain})",
                    self.target
                ),
            )
            .about(Setting::Tls);
        }
        let mut e = StageError::from_status(status);
        if status.source().is_some() {
            // "transport error" alone says nothing: add its causes
            e.message = format!("{}: {chain}", self.target);
        }
        e
    }

    /// Where the stage listens.
    pub fn target(&self) -> &Target {
        &self.target
    }

    async fn action(&mut self, name: &str, body: Vec<u8>) -> Result<Vec<u8>, StageError> {
        let mut stream = self
            .inner
            .do_action(self.request(Action {
                r#type: name.into(),
                body: body.into(),
            }))
            .await
            .map_err(|s| self.failed(&s))?
            .into_inner();
        let first = stream
            .next()
            .await
            .ok_or_else(|| {
                StageError::new(ErrorCode::Internal, format!("`{name}` returned no result"))
            })?
            .map_err(|s| self.failed(&s))?;
        self.proven
            .store(true, std::sync::atomic::Ordering::Relaxed);
        Ok(first.body.to_vec())
    }

    /// `DoAction("describe")`, naming the protocol versions this engine
    /// speaks; the manifest comes back in the newest one the stage speaks too.
    pub async fn describe(&mut self) -> Result<Manifest, StageError> {
        self.describe_as(Some(&DescribeRequest::ours())).await
    }

    /// `describe` as an engine speaking `request.protocols` would send it;
    /// `None` sends the empty body of a `sluice.stage.v1` engine (the
    /// conformance kit plays other engines with it).
    pub async fn describe_as(
        &mut self,
        request: Option<&DescribeRequest>,
    ) -> Result<Manifest, StageError> {
        let request = match request {
            Some(r) => serde_json::to_vec(r)
                .map_err(|e| StageError::new(ErrorCode::Internal, e.to_string()))?,
            None => Vec::new(),
        };
        let body = self.action("describe", request).await?;
        let m: Manifest = serde_json::from_slice(&body).map_err(|e| {
            StageError::new(
                ErrorCode::SchemaMismatch,
                format!("{}: the manifest is not valid: {e}", self.target),
            )
        })?;
        if !version::is_spoken(&m.protocol) {
            // a stage that ignored the request's versions
            return Err(StageError::new(
                ErrorCode::InvalidArgument,
                format!(
                    "{}: the stage speaks {}; this engine speaks {}",
                    self.target,
                    m.protocol,
                    version::SPOKEN.join(", ")
                ),
            ));
        }
        m.check().map_err(|e| {
            StageError::new(ErrorCode::SchemaMismatch, format!("{}: {e}", self.target))
        })?;
        Ok(m)
    }

    /// `DoAction("health")`.
    pub async fn health(&mut self) -> Result<(), StageError> {
        self.action("health", Vec::new()).await.map(|_| ())
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
        mut open: OpenRequest,
        input_schema: SchemaRef,
        mut input: BoxStream<'static, Result<RecordBatch, StageError>>,
        traceparent: Option<String>,
    ) -> Result<BoxStream<'static, Result<StageEvent, StageError>>, StageError> {
        let epoch = open.epoch;
        let mut encoder = BatchEncoder::new();
        // the stage's releases of our slots, and ours of its slots, travel
        // beside the batches
        let (rel_tx, rel_rx) = tokio::sync::mpsc::unbounded_channel::<crate::shm::SlotRef>();
        let incoming = Arc::new(std::sync::OnceLock::new());
        open.shared_memory = None;
        if self.shared_memory {
            let release: crate::shm::Release = Arc::new(move |slot| {
                let _ = rel_tx.send(slot);
            });
            match crate::shm::engine_side(Arc::clone(&input_schema), release) {
                Ok((offer, side)) => {
                    open.shared_memory = Some(offer);
                    encoder = encoder.with_shared_memory(side.writer);
                    let _ = incoming.set(side.incoming);
                }
                Err(e) => tracing::warn!(
                    target = %self.target,
                    error = %e,
                    "no shared memory for the exchange; batches go over Flight"
                ),
            }
        }
        let offered = self.unchanged && open.protocol == crate::version::V1_1;
        open.unchanged = offered.then_some(true);
        let held = offered.then(|| Arc::new(std::sync::Mutex::new(Held::default())));
        let holding = held.clone();
        let sent_in_shm = self.sent_in_shm.clone();
        // with shared memory the request stream stays open after `end`, for
        // releases (below); without, it half-closes after `end`, as in v1
        let keep_open = open.shared_memory.is_some();
        let cmd = serde_json::to_vec(&open)
            .map_err(|e| StageError::new(ErrorCode::Internal, e.to_string()))?;
        // encoding runs in its own task: it overlaps with the rest of the
        // plan, and the request stream stays a plain channel
        let (req_tx, req_rx) = tokio::sync::mpsc::channel::<FlightData>(2);
        // set once `end` is sent: the input was whole
        let ended = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let ended_here = Arc::clone(&ended);
        tokio::spawn(async move {
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
                if let Some(h) = &holding {
                    // held before it is sent: its answer may come at once
                    h.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .hold(batch.clone());
                }
                seq += 1;
                match encoder.batch_messages(&batch, &e) {
                    Ok(msgs) => {
                        // a batch in a slot is one metadata-only message;
                        // over Flight its message has an IPC header
                        if let (Some(n), [m]) = (&sent_in_shm, msgs.as_slice())
                            && m.data_header.is_empty()
                        {
                            n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
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
            let end = control_message(&Envelope::new(Kind::End, epoch, seq));
            if req_tx.send(end).await.is_ok() {
                ended_here.store(true, std::sync::atomic::Ordering::Release);
            }
        });
        // With shared memory, after `end` the request stream stays open while
        // the stage's slots are given back (protocol.md section 8: its flush
        // output can use them again), until the stage's `flushed` (nothing
        // is released after it) or the end of its answer. Without shared
        // memory it ends after `end`. When the input failed it ends at once,
        // without `end`: the stage must see that.
        let requests = tokio_stream::wrappers::ReceiverStream::new(req_rx)
            .map(Some)
            .chain(
                futures::stream::once(async move {
                    let clean = ended.load(std::sync::atomic::Ordering::Acquire);
                    (!(keep_open && clean)).then_some(None)
                })
                .filter_map(futures::future::ready),
            );
        let releases = tokio_stream::wrappers::UnboundedReceiverStream::new(rel_rx)
            .map(move |slot| Some(crate::shm::release_message(epoch, slot)));
        // fires at `flushed`, or when the decoding ends (its sender dropped)
        let (answered_tx, answered_rx) = tokio::sync::oneshot::channel::<()>();
        let answered = futures::stream::once(async move {
            let _ = answered_rx.await;
            None
        });
        let request = self.request(
            futures::stream::select(futures::stream::select(requests, releases), answered)
                .take_while(|m| futures::future::ready(m.is_some()))
                .filter_map(futures::future::ready),
        );
        let response = self
            .inner
            .do_exchange(request)
            .await
            .map_err(|s| self.failed(&s))?
            .into_inner();
        let target = self.target.clone();
        let (ev_tx, ev_rx) = tokio::sync::mpsc::channel::<Result<StageEvent, StageError>>(2);
        // arrow's IPC decoding panics on some malformed schemas and batches
        // (`fb_to_schema`'s unwraps): a stage's bytes must end the exchange
        // with an error that says so, not a silent task abort that reads as
        // a crashed stage
        let (panic_tx, panic_target) = (ev_tx.clone(), target.clone());
        let decode = async move {
            let violation = {
                let target = target.clone();
                move |m: String| -> tonic::Status {
                    StageError::new(
                        ErrorCode::Internal,
                        format!("{target}: protocol violation: {m}"),
                    )
                    .into()
                }
            };
            let messages = crate::shm::expand(response, incoming, violation);
            // the answer's string views are checked faster than arrow's
            // reader would (crate::views): set at the stage's schema message
            let views = Arc::new(std::sync::OnceLock::<Option<ViewsAsBinary>>::new());
            let plan = Arc::clone(&views);
            let messages = messages.map_ok(move |m| {
                // decided once, at the first message with IPC data (the
                // decoder refuses anything but the schema there)
                if plan.get().is_none() && !m.data_header.is_empty() {
                    let found = ViewsAsBinary::for_schema_message(&m);
                    let (message, p) = match found {
                        Some((binary, p)) => (binary, Some(p)),
                        None => (m, None),
                    };
                    let _ = plan.set(p);
                    return message;
                }
                m
            });
            let mut decoder = FlightDataDecoder::new(
                messages
                    .map_ok(normalize_metadata_only)
                    .map_err(FlightError::from),
            );
            let mut answered = Some(answered_tx);
            loop {
                // the events' reader may go away first (the exchange is over
                // for the engine): then nothing waits for the rest
                let msg = tokio::select! {
                    msg = decoder.next() => msg,
                    _ = ev_tx.closed() => return,
                };
                let Some(msg) = msg else { return };
                let event = match msg {
                    Ok(m) => decode_event(
                        &target,
                        m,
                        views.get().and_then(Option::as_ref),
                        held.as_deref(),
                    ),
                    Err(FlightError::Tonic(status)) => Some(Err(StageError::from_status(&status))),
                    // a batch before the schema, IPC that does not decode:
                    // the stage's bug, not a broken connection (not retried)
                    Err(e) => Some(Err(StageError::new(
                        ErrorCode::Internal,
                        format!("{target}: protocol violation: {e}"),
                    ))),
                };
                if let Some(event) = event {
                    if matches!(event, Ok(StageEvent::Flushed(_)))
                        && let Some(tx) = answered.take()
                    {
                        let _ = tx.send(());
                    }
                    let stop = event.is_err();
                    if ev_tx.send(event).await.is_err() || stop {
                        return;
                    }
                }
            }
        };
        tokio::spawn(async move {
            if let Err(panic) = std::panic::AssertUnwindSafe(decode).catch_unwind().await {
                let why = crate::panic_message(panic.as_ref());
                let _ = panic_tx
                    .send(Err(StageError::new(
                        ErrorCode::Internal,
                        format!("{panic_target}: protocol violation: the stage's answer cannot be decoded ({why})"),
                    )))
                    .await;
            }
        });
        Ok(tokio_stream::wrappers::ReceiverStream::new(ev_rx).boxed())
    }
}

/// One decoded message as an event; `None` for messages without one
/// (schema, dictionaries). `held`: the batches an `unchanged` answer may
/// stand for, when the exchange offered them.
fn decode_event(
    target: &Target,
    msg: arrow_flight::decode::DecodedFlightData,
    views: Option<&ViewsAsBinary>,
    held: Option<&std::sync::Mutex<Held>>,
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
    let event = match msg.payload {
        DecodedPayload::Schema(_) => None,
        DecodedPayload::RecordBatch(batch) => Some(
            match views {
                Some(v) => v.restore(batch).map_err(bad),
                None => Ok(batch),
            }
            .and_then(|batch| Envelope::decode(&md).map_err(bad).map(|e| (batch, e)))
            .and_then(|(batch, envelope)| match envelope.kind {
                Kind::Batch => Ok(StageEvent::Batch { batch, envelope }),
                other => Err(bad(format!(
                    "{} rows in an `{}` message: only a `batch` message carries rows",
                    batch.num_rows(),
                    other.as_str()
                ))),
            }),
        ),
        DecodedPayload::None if md.is_empty() => None,
        DecodedPayload::None => Some(Envelope::decode(&md).map_err(bad).and_then(
            |e| match e.kind {
                Kind::Ack => Ok(StageEvent::Ack(e)),
                Kind::RowErrors => Ok(StageEvent::RowErrors(e)),
                Kind::Flushed => Ok(StageEvent::Flushed(e)),
                Kind::Unchanged => unchanged(held, e).map_err(bad),
                other => Err(bad(format!(
                    "a `{}` message without rows from the stage",
                    other.as_str()
                ))),
            },
        )),
    };
    // every answer names the batch it answers: the held ones before it go,
    // and a batch answered `unchanged` gets no other answer
    if let (Some(Ok(event)), Some(held)) = (&event, held)
        && let Some(in_seq) = event.envelope().in_seq
    {
        let mut held = held.lock().unwrap_or_else(|p| p.into_inner());
        let checked = match event {
            StageEvent::RowErrors(_) => held.row_errors(in_seq),
            StageEvent::Batch { envelope, .. } if envelope.kind == Kind::Unchanged => Ok(()),
            _ => held.rows(in_seq),
        };
        if let Err(m) = checked {
            return Some(Err(bad(m)));
        }
    }
    event
}

/// An `unchanged` answer as the batch it stands for: the batch the engine
/// sent as its `in_seq`.
fn unchanged(
    held: Option<&std::sync::Mutex<Held>>,
    envelope: Envelope,
) -> Result<StageEvent, String> {
    let Some(held) = held else {
        return Err(
            "an `unchanged` answer, which the engine did not offer in this exchange".into(),
        );
    };
    let Some(in_seq) = envelope.in_seq else {
        return Err(
            "an `unchanged` answer has no `in_seq`: it must name the input batch it stands for"
                .into(),
        );
    };
    let batch = held
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .unchanged(in_seq)?;
    Ok(StageEvent::Batch { batch, envelope })
}
