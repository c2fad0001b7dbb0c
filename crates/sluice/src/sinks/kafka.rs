//! The `kafka` sink: rows as messages of a topic, one Kafka transaction per
//! sluice commit.
//!
//! - **Exactly once.** A commit's messages and its sluice commit record go
//!   to Kafka in one transaction: the messages to `topic`, the record (the
//!   same JSON a file sink's commit file holds) to the commit-log topic
//!   (`commit_topic`, default `sluice.commits`, compacted, keyed by
//!   `<pipeline>/<sink>`). A `read_committed` consumer sees both or
//!   neither; after a crash, [`Sink::recover`] reads the commit log topic
//!   and the engine replays only what it lacks.
//! - **Zombies are fenced.** The transactional id is
//!   `sluice.<pipeline>.<sink>`; a new run's `init_transactions` aborts a
//!   dead run's open transaction and fences any process still using the id,
//!   whose next commit then fails.
//! - **Rows wait in memory until their commit.** A producer has one
//!   transaction open at a time, and the engine writes the next epoch while
//!   the previous one commits; so epochs are encoded as they are written
//!   and sent when committed. The transaction is open only while a commit
//!   is sent, so `transaction_timeout` bounds the time one commit takes,
//!   not the commit interval.
//! - **Headers** carry `sluice.schema`, `sluice.schema.version`,
//!   `sluice.lineage` (the schema's metadata) and the epoch's
//!   `traceparent`.
//! - **Formats.** JSON, one object per message; or Avro in the Confluent
//!   wire format, with the writer schema (derived from the sink's Arrow
//!   schema) registered in a Confluent-compatible registry, or named by the
//!   id the user registered it under.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow_avro::schema::{AvroSchema, FingerprintStrategy};
use arrow_avro::writer::WriterBuilder;
use arrow_avro::writer::format::AvroSoeFormat;
use async_trait::async_trait;
use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Schema, SchemaRef};
use futures::StreamExt;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::Consumer;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde::Deserialize;

use super::{CommitRecord, EpochOutput, Recovered, Sealed, Sink, SinkLog};
use crate::commit_log::Commit;
use crate::epoch::EpochBinding;
use crate::error::{Result, RetryHint, SluiceError};
use crate::kafka::{
    REQUEST_TIMEOUT, blocking, client_config, partitions_of, plain_consumer, retry_hint,
};
use crate::spec::PipelineSpec;
use crate::spec::values::HumanDuration;
use crate::storage::{Location, StoreRegistry};

/// The schema metadata every message carries as headers (besides the
/// epoch's `traceparent`): small, and what a consumer needs to know what it
/// reads and where it came from.
const HEADERS: &[&str] = &["sluice.schema", "sluice.schema.version", "sluice.lineage"];

fn default_commit_topic() -> String {
    "sluice.commits".into()
}

/// Message format of a Kafka sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KafkaSinkFormat {
    /// One JSON object per message (the default).
    #[default]
    Json,
    /// Avro in the Confluent wire format: a 0 byte, the writer schema's id
    /// (4 bytes, big endian), the body.
    Avro,
}

/// `[sinks.<name>] kind = "kafka"`: rows as messages of a topic.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSinkConfig {
    /// Bootstrap servers, `host:port[,host:port]`.
    pub brokers: String,
    /// The topic written to (it must exist).
    pub topic: String,
    /// The column whose value (as text) is each message's key; absent: no key.
    #[serde(default)]
    pub key: Option<String>,
    /// `json` (default) or `avro`.
    #[serde(default)]
    pub format: KafkaSinkFormat,
    /// `format = "avro"`: a Confluent-compatible registry the writer schema
    /// is registered in (`POST <url>/subjects/<subject>/versions`).
    #[serde(default)]
    pub schema_registry: Option<String>,
    /// `format = "avro"`: the registry subject (default `<topic>-value`).
    #[serde(default)]
    pub subject: Option<String>,
    /// `format = "avro"`: the id the writer schema is registered under,
    /// when it is registered already (no registry is then asked).
    #[serde(default)]
    pub schema_id: Option<u32>,
    /// The topic sluice's commit records go to (created, compacted, when missing).
    #[serde(default = "default_commit_topic")]
    pub commit_topic: String,
    /// The longest one commit's transaction may stay open (default 60s; the
    /// broker caps it with `transaction.max.timeout.ms`, 15 min by default).
    #[serde(default)]
    pub transaction_timeout: Option<HumanDuration>,
    /// A folder or URL where the state of windowed operators feeding the
    /// sink is kept across restarts (relative to the pipeline file); absent:
    /// in memory only.
    #[serde(default)]
    pub state_url: Option<String>,
    /// librdkafka settings passed to the producer as they are.
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

/// Messages of one epoch, encoded and waiting for their commit.
#[derive(Debug, Default)]
struct Encoded {
    /// The values, back to back.
    values: Vec<u8>,
    /// End of each value in `values`.
    ends: Vec<usize>,
    /// Each message's key, when the sink has a key column.
    keys: Vec<Option<Vec<u8>>>,
    /// The headers of every message of the epoch.
    headers: Vec<(String, Vec<u8>)>,
}

/// An epoch's Avro encoder and the writer schema it encodes (the sink's
/// columns without sluice's metadata).
struct AvroWriter {
    plain: SchemaRef,
    encoder: arrow_avro::writer::Encoder,
}

pub(crate) struct KafkaSink {
    name: String,
    cfg: KafkaSinkConfig,
    /// `<pipeline name>/<sink>`: the key of this sink's commit records.
    log_key: String,
    pipeline: String,
    producer: Arc<ThreadedProducer<DefaultProducerContext>>,
    client: ClientConfig,
    /// Encoded epochs by commit group.
    pending: Mutex<BTreeMap<u64, Vec<Encoded>>>,
    timeout: Duration,
    /// `init_transactions` is called once per producer (a second call fails).
    initialized: std::sync::atomic::AtomicBool,
    /// Where operator state is kept (`state_url`).
    state: Option<crate::state::StateStore>,
    /// `format = "avro"`: the writer schema's id, once known.
    avro_id: tokio::sync::OnceCell<u32>,
}

impl std::fmt::Debug for KafkaSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSink")
            .field("name", &self.name)
            .field("topic", &self.cfg.topic)
            .finish()
    }
}

impl KafkaSink {
    pub(crate) fn open(
        name: &str,
        cfg: &KafkaSinkConfig,
        spec: &PipelineSpec,
        stores: &StoreRegistry,
    ) -> Result<Arc<dyn Sink>> {
        let issue =
            |k: &str, m: &str| SluiceError::spec(spec.issue(format!("sinks.{name}.{k}"), m));
        match cfg.format {
            KafkaSinkFormat::Avro if cfg.schema_id.is_none() && cfg.schema_registry.is_none() => {
                return Err(issue(
                    "schema_registry",
                    "`format = \"avro\"` needs `schema_registry` (where the writer schema is registered) or `schema_id` (the id it is registered under)",
                ));
            }
            KafkaSinkFormat::Json => {
                for (k, given) in [
                    ("schema_registry", cfg.schema_registry.is_some()),
                    ("subject", cfg.subject.is_some()),
                    ("schema_id", cfg.schema_id.is_some()),
                ] {
                    if given {
                        return Err(issue(k, "only for `format = \"avro\"`"));
                    }
                }
            }
            KafkaSinkFormat::Avro => {}
        }
        let timeout = cfg
            .transaction_timeout
            .map_or(Duration::from_secs(60), |d| d.0);
        if timeout < Duration::from_secs(1) {
            return Err(issue("transaction_timeout", "must be at least 1s"));
        }
        let state = match &cfg.state_url {
            Some(url) => {
                let location = Location::parse(url, &spec.base_dir).map_err(|m| {
                    SluiceError::spec(spec.issue(format!("sinks.{name}.state_url"), m))
                })?;
                let store = stores
                    .store_for(&location, &spec.settings.s3)
                    .map_err(|m| {
                        SluiceError::spec(spec.issue(format!("sinks.{name}.state_url"), m))
                    })?;
                Some(crate::state::StateStore::new(
                    name,
                    &location.url(),
                    store,
                    location.prefix,
                ))
            }
            None => None,
        };
        let client = client_config(&cfg.brokers, &cfg.options);
        let mut producer_config = client.clone();
        producer_config
            .set(
                "transactional.id",
                format!("sluice.{}.{name}", spec.pipeline.name),
            )
            .set("enable.idempotence", "true")
            .set("transaction.timeout.ms", timeout.as_millis().to_string())
            .set("linger.ms", "5");
        for (k, v) in &cfg.options {
            producer_config.set(k, v);
        }
        let producer: ThreadedProducer<DefaultProducerContext> =
            producer_config.create().map_err(|e| SluiceError::Sink {
                sink: name.to_string(),
                url: format!("kafka://{}", cfg.topic),
                message: format!("cannot create the Kafka producer: {e}"),
                retry: RetryHint::Never,
                cause: None,
            })?;
        Ok(Arc::new(KafkaSink {
            name: name.to_string(),
            cfg: cfg.clone(),
            log_key: format!("{}/{name}", spec.pipeline.name),
            pipeline: spec.pipeline.name.clone(),
            producer: Arc::new(producer),
            client,
            pending: Mutex::new(BTreeMap::new()),
            timeout,
            initialized: std::sync::atomic::AtomicBool::new(false),
            state,
            avro_id: match cfg.schema_id {
                Some(id) => tokio::sync::OnceCell::new_with(Some(id)),
                None => tokio::sync::OnceCell::new(),
            },
        }))
    }

    fn err(&self, message: String, retry: RetryHint) -> SluiceError {
        SluiceError::Sink {
            sink: self.name.clone(),
            url: self.url(),
            message,
            retry,
            cause: None,
        }
    }

    fn kafka_err(&self, what: &str, e: KafkaError) -> SluiceError {
        let fenced = matches!(
            e.rdkafka_error_code(),
            Some(
                RDKafkaErrorCode::Fenced
                    | RDKafkaErrorCode::ProducerFenced
                    | RDKafkaErrorCode::InvalidProducerEpoch
            )
        );
        if fenced {
            return self.err(
                format!(
                    "{what}: another run of pipeline `{}` took over transactional id `sluice.{}.{}` (this run is a zombie and stops): {e}",
                    self.pipeline, self.pipeline, self.name
                ),
                RetryHint::Never,
            );
        }
        self.err(format!("{what}: {e}"), retry_hint(&e))
    }

    /// Creates the commit-log topic when it is missing: one partition,
    /// compacted (a sink's newest commits are kept).
    async fn ensure_commit_topic(&self) -> Result<()> {
        let admin: AdminClient<DefaultClientContext> = self
            .client
            .create()
            .map_err(|e| self.kafka_err("cannot create a Kafka admin client", e))?;
        let topic = NewTopic::new(&self.cfg.commit_topic, 1, TopicReplication::Fixed(-1))
            .set("cleanup.policy", "compact");
        let opts = AdminOptions::new().operation_timeout(Some(REQUEST_TIMEOUT));
        let results = admin
            .create_topics([&topic], &opts)
            .await
            .map_err(|e| self.kafka_err("cannot create the commit log topic", e))?;
        for r in results {
            match r {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((t, code)) => {
                    return Err(self.err(
                        format!("cannot create the commit log topic `{t}`: {code}"),
                        RetryHint::WithBackoff,
                    ));
                }
            }
        }
        Ok(())
    }

    /// This sink's commit records in the commit-log topic, oldest first.
    async fn read_log(&self) -> Result<Vec<Commit>> {
        let consumer = Arc::new(
            plain_consumer(&self.client)
                .map_err(|e| self.kafka_err("cannot create a Kafka consumer", e))?,
        );
        let topic = self.cfg.commit_topic.clone();
        let key = self.log_key.clone();
        let records = blocking(move || {
            let (low, high) = consumer.fetch_watermarks(&topic, 0, REQUEST_TIMEOUT)?;
            let mut out: Vec<(i64, Vec<u8>)> = Vec::new();
            if high <= low {
                return Ok(out);
            }
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(&topic, 0, Offset::Offset(low))?;
            consumer.assign(&tpl)?;
            let deadline = std::time::Instant::now() + REQUEST_TIMEOUT;
            loop {
                let at = consumer
                    .position()?
                    .find_partition(&topic, 0)
                    .and_then(|e| match e.offset() {
                        Offset::Offset(o) => Some(o),
                        _ => None,
                    })
                    .unwrap_or(low);
                if at >= high {
                    break;
                }
                if std::time::Instant::now() > deadline {
                    return Err(KafkaError::MessageConsumption(
                        RDKafkaErrorCode::OperationTimedOut,
                    ));
                }
                match consumer.poll(Duration::from_millis(200)) {
                    Some(Ok(m)) => {
                        if m.key() == Some(key.as_bytes())
                            && let Some(v) = m.payload()
                        {
                            out.push((m.offset(), v.to_vec()));
                        }
                        if m.offset() + 1 >= high {
                            break;
                        }
                    }
                    Some(Err(e)) => return Err(e),
                    None => {}
                }
            }
            Ok(out)
        })
        .await
        .map_err(|e| self.kafka_err("cannot read the commit log topic", e))?;
        records
            .into_iter()
            .map(|(offset, v)| {
                serde_json::from_slice::<Commit>(&v).map_err(|e| {
                    self.err(
                        format!(
                            "the commit record at offset {offset} of topic `{}` is corrupt: {e}",
                            self.cfg.commit_topic
                        ),
                        RetryHint::Never,
                    )
                })
            })
            .collect()
    }

    /// The id of the writer schema of rows of `schema`: `schema_id`, or
    /// the id the registry gives it (registered once per run; registering
    /// the same schema again gives the same id).
    async fn avro_id(&self, schema: &Schema) -> Result<u32> {
        self.avro_id
            .get_or_try_init(|| async {
                let registry = self.cfg.schema_registry.as_deref().unwrap_or_default();
                let subject = self
                    .cfg
                    .subject
                    .clone()
                    .unwrap_or_else(|| format!("{}-value", self.cfg.topic));
                let writer = AvroSchema::try_from(schema).map_err(|e| {
                    self.err(
                        format!("the sink's columns have no Avro schema: {e}"),
                        RetryHint::Never,
                    )
                })?;
                crate::sources::kafka::avro::register_schema(
                    registry,
                    &subject,
                    &writer.json_string,
                )
                .await
                .map_err(|m| self.err(m, RetryHint::WithBackoff))
            })
            .await
            .copied()
    }

    /// Encodes one batch's rows as Avro messages with `avro`'s encoder.
    fn encode_avro(
        &self,
        batch: &datafusion::arrow::array::RecordBatch,
        avro: &mut AvroWriter,
        into: &mut Encoded,
    ) -> Result<()> {
        let failed =
            |e: String| self.err(format!("cannot encode rows as Avro: {e}"), RetryHint::Never);
        // the same columns under the writer schema (no sluice metadata)
        let batch = datafusion::arrow::array::RecordBatch::try_new(
            Arc::clone(&avro.plain),
            batch.columns().to_vec(),
        )
        .map_err(|e| failed(e.to_string()))?;
        avro.encoder
            .encode(&batch)
            .map_err(|e| failed(e.to_string()))?;
        for row in avro.encoder.flush().iter() {
            into.values.extend_from_slice(&row);
            into.ends.push(into.values.len());
        }
        Ok(())
    }

    /// Encodes one batch's rows as messages (JSON, or Avro with `avro`'s
    /// encoder), with their keys.
    fn encode(
        &self,
        batch: &datafusion::arrow::array::RecordBatch,
        avro: Option<&mut AvroWriter>,
        into: &mut Encoded,
    ) -> Result<()> {
        let before = into.ends.len();
        match avro {
            Some(avro) => self.encode_avro(batch, avro, into)?,
            None => self.encode_json(batch, into)?,
        }
        if into.ends.len() - before != batch.num_rows() {
            return Err(self.err(
                format!(
                    "{} rows became {} messages",
                    batch.num_rows(),
                    into.ends.len() - before
                ),
                RetryHint::Never,
            ));
        }
        self.encode_keys(batch, into)
    }

    /// Encodes one batch's rows as JSON messages.
    fn encode_json(
        &self,
        batch: &datafusion::arrow::array::RecordBatch,
        into: &mut Encoded,
    ) -> Result<()> {
        let mut w = datafusion::arrow::json::LineDelimitedWriter::new(Vec::new());
        w.write(batch)
            .and_then(|_| w.finish())
            .map_err(|e| self.err(format!("cannot encode rows as JSON: {e}"), RetryHint::Never))?;
        let json = w.into_inner();
        // one line per row: arrow's JSON writer escapes line breaks in values
        let mut start = 0;
        for end in memchr::memchr_iter(b'\n', &json) {
            into.values.extend_from_slice(&json[start..end]);
            into.ends.push(into.values.len());
            start = end + 1;
        }
        Ok(())
    }

    /// Each row's key: the `key` column as text.
    fn encode_keys(
        &self,
        batch: &datafusion::arrow::array::RecordBatch,
        into: &mut Encoded,
    ) -> Result<()> {
        if let Some(key) = &self.cfg.key {
            let column = batch.column_by_name(key).ok_or_else(|| {
                self.err(
                    format!("the key column `{key}` is not among the sink's columns"),
                    RetryHint::Never,
                )
            })?;
            let text = cast(column, &DataType::Utf8).map_err(|e| {
                self.err(
                    format!("the key column `{key}` cannot be text: {e}"),
                    RetryHint::Never,
                )
            })?;
            let text = text.as_string::<i32>();
            for i in 0..text.len() {
                into.keys
                    .push(text.is_valid(i).then(|| text.value(i).as_bytes().to_vec()));
            }
        }
        Ok(())
    }

    /// Sends every message of `groups` and the commit record, and commits,
    /// in one transaction. Blocking: runs on the blocking pool.
    fn send_transaction(
        producer: &ThreadedProducer<DefaultProducerContext>,
        topic: &str,
        groups: &[Encoded],
        commit_topic: &str,
        log_key: &str,
        record: &[u8],
        timeout: Duration,
    ) -> std::result::Result<(), KafkaError> {
        producer.begin_transaction()?;
        let sent = (|| {
            for e in groups {
                let mut headers = OwnedHeaders::new();
                for (k, v) in &e.headers {
                    headers = headers.insert(Header {
                        key: k,
                        value: Some(v),
                    });
                }
                let mut start = 0;
                for (i, end) in e.ends.iter().enumerate() {
                    let value = &e.values[start..*end];
                    start = *end;
                    let mut rec: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic)
                        .payload(value)
                        .headers(headers.clone());
                    if let Some(Some(k)) = e.keys.get(i) {
                        rec = rec.key(k.as_slice());
                    }
                    send(producer, rec)?;
                }
            }
            send(
                producer,
                BaseRecord::to(commit_topic)
                    .key(log_key.as_bytes())
                    .payload(record),
            )
        })();
        match sent.and_then(|_| producer.commit_transaction(timeout)) {
            Ok(()) => Ok(()),
            Err(e) => {
                if e.rdkafka_error_code().is_some() {
                    let _ = producer.abort_transaction(timeout);
                }
                Err(e)
            }
        }
    }
}

/// Sends one record, waiting while the producer's queue is full.
fn send<'a>(
    producer: &ThreadedProducer<DefaultProducerContext>,
    mut rec: BaseRecord<'a, [u8], [u8]>,
) -> std::result::Result<(), KafkaError> {
    loop {
        match producer.send(rec) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                rec = back;
                std::thread::sleep(Duration::from_millis(5));
            }
            Err((e, _)) => return Err(e),
        }
    }
}

#[async_trait]
impl Sink for KafkaSink {
    fn name(&self) -> &str {
        &self.name
    }
    fn kind(&self) -> &str {
        "kafka"
    }
    fn url(&self) -> String {
        format!("kafka://{}/{}", self.cfg.brokers, self.cfg.topic)
    }

    fn state_store(&self) -> Option<crate::state::StateStore> {
        self.state.clone()
    }

    async fn check_reachable(&self) -> Result<()> {
        let consumer = Arc::new(
            plain_consumer(&self.client)
                .map_err(|e| self.kafka_err("cannot create a Kafka consumer", e))?,
        );
        partitions_of(consumer, &self.cfg.topic)
            .await
            .map(|_| ())
            .map_err(|m| self.err(m, RetryHint::WithBackoff))
    }

    async fn recover(&self) -> Result<Recovered> {
        self.check_reachable().await?;
        self.ensure_commit_topic().await?;
        // fences any earlier run and aborts its open transaction, so the
        // commit log below is read up to its end
        if !self.initialized.load(std::sync::atomic::Ordering::Acquire) {
            let producer = Arc::clone(&self.producer);
            let timeout = self.timeout.max(REQUEST_TIMEOUT);
            blocking(move || producer.init_transactions(timeout))
                .await
                .map_err(|e| self.kafka_err("cannot start the transactional producer", e))?;
            self.initialized
                .store(true, std::sync::atomic::Ordering::Release);
        }
        let commits = self.read_log().await?;
        Ok(Recovered {
            log: SinkLog::durable(commits.into_iter().map(Commit::into_range).collect()),
            removed_files: Vec::new(),
        })
    }

    async fn write(&self, output: EpochOutput) -> Result<u64> {
        let mut encoded = Encoded::default();
        let schema = output.schema();
        for k in HEADERS {
            if let Some(v) = schema.metadata().get(*k) {
                encoded.headers.push((k.to_string(), v.as_bytes().to_vec()));
            }
        }
        if let Ok(binding) = EpochBinding::of_task(&output.task)
            && let Some(tp) = crate::observe::trace::traceparent(binding.trace())
        {
            encoded
                .headers
                .push(("traceparent".into(), tp.into_bytes()));
        }
        // Avro: the columns without sluice's metadata (which the headers
        // carry), so the writer schema is the same in every epoch
        let mut avro = match self.cfg.format {
            KafkaSinkFormat::Json => None,
            KafkaSinkFormat::Avro => {
                let plain: SchemaRef = Arc::new(Schema::new(
                    schema
                        .fields()
                        .iter()
                        .map(|f| f.as_ref().clone().with_metadata(Default::default()))
                        .collect::<Vec<_>>(),
                ));
                let id = self.avro_id(&plain).await?;
                // one encoder for the epoch, not one per batch
                let encoder = WriterBuilder::new(plain.as_ref().clone())
                    .with_fingerprint_strategy(FingerprintStrategy::Id(id))
                    .build_encoder::<AvroSoeFormat>()
                    .map_err(|e| {
                        self.err(format!("cannot encode rows as Avro: {e}"), RetryHint::Never)
                    })?;
                Some(AvroWriter { plain, encoder })
            }
        };
        let mut stream = output.execute_all()?;
        let mut rows = 0u64;
        while let Some(batch) = stream.next().await {
            let batch = batch.map_err(|e| output.error(e))?;
            rows += batch.num_rows() as u64;
            self.encode(&batch, avro.as_mut(), &mut encoded)?;
        }
        if let Ok(mut pending) = self.pending.lock() {
            pending
                .entry(output.commit_group())
                .or_default()
                .push(encoded);
        }
        Ok(rows)
    }

    async fn seal(&self, group: u64) -> Result<Sealed> {
        let pending = self
            .pending
            .lock()
            .map_err(|_| SluiceError::Internal("kafka sink lock".into()))?;
        let (rows, bytes) = pending
            .get(&group)
            .map(|es| {
                es.iter().fold((0u64, 0u64), |(r, b), e| {
                    (r + e.ends.len() as u64, b + e.values.len() as u64)
                })
            })
            .unwrap_or_default();
        Ok(Sealed {
            files: Vec::new(),
            rows,
            bytes,
        })
    }

    async fn commit(&self, sealed: Sealed, record: &CommitRecord) -> Result<()> {
        let groups: Vec<Encoded> = {
            let mut pending = self
                .pending
                .lock()
                .map_err(|_| SluiceError::Internal("kafka sink lock".into()))?;
            let keys: Vec<u64> = pending
                .range(record.first_epoch..=record.epoch)
                .map(|(k, _)| *k)
                .collect();
            keys.into_iter()
                .flat_map(|k| pending.remove(&k).unwrap_or_default())
                .collect()
        };
        let commit = Commit::of(record, &self.name, sealed, Vec::new());
        let body = serde_json::to_vec(&commit)
            .map_err(|e| self.err(format!("cannot record the commit: {e}"), RetryHint::Never))?;
        let producer = Arc::clone(&self.producer);
        let (topic, commit_topic, key, timeout) = (
            self.cfg.topic.clone(),
            self.cfg.commit_topic.clone(),
            self.log_key.clone(),
            self.timeout,
        );
        blocking(move || {
            KafkaSink::send_transaction(
                &producer,
                &topic,
                &groups,
                &commit_topic,
                &key,
                &body,
                timeout,
            )
        })
        .await
        .map_err(|e| {
            self.kafka_err(
                &format!(
                    "cannot commit epochs {}..={}",
                    record.first_epoch, record.epoch
                ),
                e,
            )
        })
    }

    async fn abort(&self) {
        if let Ok(mut pending) = self.pending.lock() {
            pending.clear();
        }
    }

    async fn reset(&self) -> Result<u64> {
        Err(self.err(
            "messages of a Kafka topic cannot be taken back; delete and create the topic (and its records in the commit log topic) to start over".into(),
            RetryHint::Never,
        ))
    }
}
