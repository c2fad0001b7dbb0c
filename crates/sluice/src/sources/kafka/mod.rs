//! The `kafka` source: messages of one or more topics, read in epochs whose
//! offset ranges are recorded in every commit.
//!
//! - **Offsets are sluice's.** A slice is, per partition, the messages from
//!   the offset its `start` records up to (not including) its `end`. The
//!   commit of the epoch stores both; a restart resumes at the `end` of the
//!   newest commit, and a replay reads exactly `start..end` again with
//!   `assign()`. Offsets committed to the consumer group after each sluice
//!   commit are for monitoring (`kafka-consumer-groups.sh --describe` shows
//!   the lag); sluice never reads them back.
//! - **Read committed.** Messages of aborted transactions are never read.
//! - **A message that does not decode** goes to `on_error`, naming its
//!   topic, partition and offset ([`chunk`]).
//! - **Gone messages fail the run.** A committed offset that retention has
//!   deleted since is an error naming the partition, never a silent skip
//!   (`auto.offset.reset = error`).
//!
//! The partitions of the topics are found once, when the source opens; each
//! partition's messages of a slice are one unit of the scan, spread over
//! the plan's partitions.
//!
//! With `assignment = "group"`, several `sluice run`s share the partitions:
//! the consumer group decides which ones each reads ([`group`]), and the
//! sink's log, shared by the workers, decides where
//! ([`crate::epoch::ledger`]).

pub(crate) mod avro;
pub(crate) mod chunk;
mod group;

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use datafusion::arrow::datatypes::{Schema, SchemaRef};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Deserializer, Serialize};
use sluice_contract::SourceProvenance;

use self::chunk::{Chunk, Decoding, SliceDecoder};
use super::{AnySource, Slice, SliceLimits, Source, SourceContext};
use crate::dead_letter::OnError;
use crate::error::{Result, RetryHint, SluiceError};
use crate::kafka::{REQUEST_TIMEOUT, blocking, client_config, partitions_of, source_error};
use crate::ops::generate::GeneratedTable;
use crate::ops::line_scan::decoding::BatchDecoder;
use crate::ops::line_scan::{CsvOptions, LineFormat};
use crate::spec::ColumnSpec;
use crate::spec::values::schema_from_columns;

/// How message values are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KafkaFormat {
    /// One JSON object per message.
    Json,
    /// One CSV record per message (no header).
    Csv,
    /// Avro in the Confluent wire format (a 0 byte, a 4-byte schema id,
    /// the body).
    Avro,
    /// The message as it is: key, value, headers, topic, partition, offset,
    /// timestamp.
    Raw,
}

/// Which partitions a process reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KafkaAssignment {
    /// Every partition of the topics (the default): one process reads all.
    #[default]
    All,
    /// The partitions the consumer group gives this process: every
    /// `sluice run` of the pipeline with the same `group` reads its share,
    /// and all of them commit to the same sink.
    Group,
}

/// Where a partition is first read from, when no commit says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KafkaStart {
    /// The oldest message kept (the default).
    #[default]
    Earliest,
    /// Messages produced after the source opened.
    Latest,
    /// The first message with a timestamp at or after this time (ms since
    /// the Unix epoch).
    At(i64),
}

impl<'de> Deserialize<'de> for KafkaStart {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        match s.as_str() {
            "earliest" => Ok(KafkaStart::Earliest),
            "latest" => Ok(KafkaStart::Latest),
            other => chrono::DateTime::parse_from_rfc3339(other)
                .map(|t| KafkaStart::At(t.timestamp_millis()))
                .map_err(|e| {
                    serde::de::Error::custom(format!(
                        "`{other}` is not `earliest`, `latest` or an RFC 3339 time ({e})"
                    ))
                }),
        }
    }
}

/// `[sources.<name>] kind = "kafka"`: messages of Kafka topics.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSourceConfig {
    /// Bootstrap servers, `host:port[,host:port]`.
    pub brokers: String,
    /// The topic to read (or `topics`).
    #[serde(default)]
    pub topic: Option<String>,
    /// Several topics of the same format and columns.
    #[serde(default)]
    pub topics: Option<Vec<String>>,
    /// The consumer group offsets are reported to (default
    /// `sluice.<pipeline name>`).
    #[serde(default)]
    pub group: Option<String>,
    /// `json`, `csv`, `avro` or `raw`.
    pub format: KafkaFormat,
    /// `earliest` (default), `latest` or an RFC 3339 time.
    #[serde(default)]
    pub start: KafkaStart,
    /// `all` (default: this process reads every partition) or `group`
    /// (the consumer group shares the partitions among the processes).
    #[serde(default)]
    pub assignment: KafkaAssignment,
    /// The columns of a value (`json`, `csv`).
    #[serde(default)]
    pub columns: Option<Vec<ColumnSpec>>,
    /// Values read as this registry schema (`name@version`) instead of `columns`.
    #[serde(default)]
    pub schema: Option<String>,
    /// CSV field delimiter (default `,`).
    #[serde(default)]
    pub delimiter: Option<String>,
    /// A Confluent-compatible schema registry (`format = "avro"`): writer
    /// schemas by id, `GET <url>/schemas/ids/<id>`.
    #[serde(default)]
    pub schema_registry: Option<String>,
    /// Writer schemas by id from sluice's registry (`format = "avro"`):
    /// `{ "17" = "orders@2" }`; looked up before `schema_registry`.
    #[serde(default)]
    pub schema_ids: BTreeMap<String, String>,
    /// librdkafka settings passed to the client as they are
    /// (`security.protocol`, `sasl.mechanism`, ...).
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

/// Where a Kafka source is: the next offset to read of every partition.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaOffset {
    /// Next offset, by topic and partition.
    pub topics: BTreeMap<String, BTreeMap<i32, i64>>,
}

impl KafkaOffset {
    fn get(&self, topic: &str, partition: i32) -> Option<i64> {
        self.topics.get(topic)?.get(&partition).copied()
    }
    fn set(&mut self, topic: &str, partition: i32, offset: i64) {
        self.topics
            .entry(topic.to_string())
            .or_default()
            .insert(partition, offset);
    }
    fn list(&self) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        for (t, parts) in &self.topics {
            for (p, o) in parts {
                // an assignment of a valid offset cannot fail
                let _ = tpl.add_partition_offset(t, *p, Offset::Offset(*o));
            }
        }
        tpl
    }
}

/// Opens a `kafka` source.
pub(super) async fn open(
    cfg: &KafkaSourceConfig,
    on_error: OnError,
    ctx: &SourceContext<'_>,
) -> Result<Box<dyn AnySource>> {
    let key = |k: &str| format!("sources.{}.{k}", ctx.name);
    let issue = |k: &str, m: String| SluiceError::spec(ctx.spec.issue(key(k), m));
    let topics: Vec<String> = match (&cfg.topic, &cfg.topics) {
        (Some(t), None) => vec![t.clone()],
        (None, Some(ts)) if !ts.is_empty() => ts.clone(),
        (Some(_), Some(_)) => {
            return Err(issue("topics", "give `topic` or `topics`, not both".into()));
        }
        _ => {
            return Err(issue(
                "topic",
                "the topic to read is missing (`topic` or `topics`)".into(),
            ));
        }
    };
    let (schema, decoding) = match cfg.format {
        KafkaFormat::Raw => {
            if cfg.columns.is_some() || cfg.schema.is_some() {
                return Err(issue(
                    "columns",
                    "`format = \"raw\"` has fixed columns (key, value, headers, topic, partition, offset, timestamp)".into(),
                ));
            }
            (chunk::raw_schema(), Decoding::Raw)
        }
        KafkaFormat::Json | KafkaFormat::Csv | KafkaFormat::Avro => {
            let declared = match (&cfg.columns, &cfg.schema) {
                (Some(cols), None) => schema_from_columns(cols).map_err(|m| issue("columns", m))?,
                (None, Some(reference)) => {
                    ctx.spec
                        .registry()
                        .get(reference)
                        .map_err(|e| issue("schema", e.to_string()))?
                        .schema
                }
                (Some(_), Some(_)) => {
                    return Err(issue(
                        "schema",
                        "give either `columns` or `schema`, not both".into(),
                    ));
                }
                (None, None) => {
                    return Err(issue(
                        "columns",
                        "a Kafka source of `json` or `csv` needs `columns` (or a registry `schema`)".into(),
                    ));
                }
            };
            for f in declared.fields() {
                if chunk::metadata_fields()
                    .iter()
                    .any(|m| m.name() == f.name())
                {
                    return Err(issue(
                        "columns",
                        format!("`{}` is the name of a column the source adds", f.name()),
                    ));
                }
            }
            let declared = Arc::new(declared);
            let mut fields: Vec<_> = declared
                .fields()
                .iter()
                .map(|f| f.as_ref().clone())
                .collect();
            fields.extend(chunk::metadata_fields());
            let schema = Arc::new(Schema::new_with_metadata(
                fields,
                declared.metadata().clone(),
            ));
            if cfg.format == KafkaFormat::Avro {
                let schemas = Arc::new(avro::WriterSchemas::default());
                for (id, reference) in &cfg.schema_ids {
                    let id: u32 = id.parse().map_err(|_| {
                        issue(
                            "schema_ids",
                            format!("`{id}` is not a schema id (a number)"),
                        )
                    })?;
                    let registered = ctx
                        .spec
                        .registry()
                        .get(reference)
                        .map_err(|e| issue("schema_ids", e.to_string()))?;
                    let writer = arrow_avro::schema::AvroSchema::try_from(&registered.schema)
                        .map_err(|e| {
                            issue("schema_ids", format!("`{reference}` has no Avro form: {e}"))
                        })?;
                    schemas.insert(id, writer);
                }
                if cfg.schema_ids.is_empty() && cfg.schema_registry.is_none() {
                    return Err(issue(
                        "schema_registry",
                        "`format = \"avro\"` needs `schema_registry` or `schema_ids` (where writer schemas are found by id)".into(),
                    ));
                }
                let decoding = Decoding::Avro(avro::AvroDecoding { declared, schemas });
                (schema, decoding)
            } else {
                let (format, csv) = match cfg.format {
                    KafkaFormat::Csv => {
                        let delimiter = match cfg.delimiter.as_deref().unwrap_or(",").as_bytes() {
                            [b] => *b,
                            _ => {
                                return Err(issue(
                                    "delimiter",
                                    "must be exactly one ASCII character".into(),
                                ));
                            }
                        };
                        let o = CsvOptions {
                            has_header: false,
                            delimiter,
                            newlines_in_values: true,
                            ..CsvOptions::default()
                        };
                        let format = LineFormat::Csv(o);
                        let dialect = Some(format.dialect());
                        (format, dialect)
                    }
                    _ => (LineFormat::Jsonl, None),
                };
                let decoder = BatchDecoder::new(format, &declared, None, ctx.batch_size)
                    .map_err(|e| issue("columns", e.to_string()))?;
                (schema, Decoding::Lines { decoder, csv })
            }
        }
    };
    let group = cfg
        .group
        .clone()
        .unwrap_or_else(|| format!("sluice.{}", ctx.spec.pipeline.name));
    let mut config = client_config(&cfg.brokers, &cfg.options);
    config
        .set("group.id", &group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        .set("isolation.level", "read_committed")
        // a committed offset that retention deleted fails the run
        .set("auto.offset.reset", "error")
        // librdkafka waits 1 s before fetching again once its queue holds
        // `queued.min.messages`; a consumer that drains it in bursts (an
        // epoch at a time) then idles: ask again after 10 ms, with more
        // queued, so a backlog is read at the speed it is decoded
        .set("fetch.queue.backoff.ms", "10")
        .set("queued.min.messages", "500000");
    // the user's settings win
    for (k, v) in &cfg.options {
        config.set(k, v);
    }
    let consumer: StreamConsumer = config
        .create()
        .map_err(|e| source_error(ctx.name, None, "cannot create the Kafka consumer", e))?;
    let member =
        match cfg.assignment {
            KafkaAssignment::All => None,
            KafkaAssignment::Group => {
                let mut member = client_config(&cfg.brokers, &cfg.options);
                member
                    .set("group.id", &group)
                    .set("enable.auto.commit", "false")
                    .set("enable.auto.offset.store", "false");
                for (k, v) in &cfg.options {
                    member.set(k, v);
                }
                Some(group::Membership::join(&member, &topics).map_err(|e| {
                    source_error(ctx.name, None, "cannot join the consumer group", e)
                })?)
            }
        };
    let consumer = Arc::new(consumer);
    let mut partitions = Vec::new();
    for t in &topics {
        let ps =
            partitions_of(Arc::clone(&consumer), t)
                .await
                .map_err(|m| SluiceError::Source {
                    source_name: ctx.name.to_string(),
                    file: Some(format!("kafka topic {t}")),
                    line: None,
                    message: format!("{m} (brokers {})", cfg.brokers),
                    retry: RetryHint::WithBackoff,
                    cause: None,
                })?;
        partitions.extend(ps.into_iter().map(|p| (t.clone(), p)));
    }
    Ok(Box::new(KafkaSource {
        name: ctx.name.to_string(),
        brokers: cfg.brokers.clone(),
        group,
        topics,
        start: cfg.start,
        schema,
        decoding: Arc::new(decoding),
        consumer,
        partitions: if member.is_some() {
            Vec::new()
        } else {
            partitions
        },
        member,
        generation: 0,
        first: None,
        position: None,
        kept: Vec::new(),
        again: VecDeque::new(),
        warm_until: None,
        target_partitions: ctx.target_partitions,
        batch_size: ctx.batch_size,
        on_error,
        schema_registry: cfg.schema_registry.clone(),
    }))
}

/// A slice not committed yet, kept for a retry in the same process.
#[derive(Debug, Clone)]
struct Kept {
    start: KafkaOffset,
    end: KafkaOffset,
    chunks: Vec<Arc<Chunk>>,
}

struct KafkaSource {
    name: String,
    brokers: String,
    group: String,
    topics: Vec<String>,
    start: KafkaStart,
    schema: SchemaRef,
    decoding: Arc<Decoding>,
    consumer: Arc<StreamConsumer>,
    /// The partitions read: every partition of the topics, or (with a
    /// group `member`) those it held at the last resume.
    partitions: Vec<(String, i32)>,
    /// `assignment = "group"`: this worker's place in the consumer group.
    member: Option<group::Membership>,
    /// The member's generation `partitions` were taken at.
    generation: u64,
    /// Where the first run began (`start` resolved), for `restart`.
    first: Option<KafkaOffset>,
    /// The next offset to read of every partition; `None` until the source
    /// is positioned (by `resume`, `restart` or the first slice).
    position: Option<KafkaOffset>,
    kept: Vec<Kept>,
    again: VecDeque<Kept>,
    /// Until when an empty read is checked against the topic's end.
    warm_until: Option<Instant>,
    target_partitions: usize,
    batch_size: usize,
    on_error: OnError,
    /// `format = "avro"`: where unknown schema ids are looked up.
    schema_registry: Option<String>,
}

impl std::fmt::Debug for KafkaSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSource")
            .field("name", &self.name)
            .field("topics", &self.topics)
            .field("position", &self.position)
            .finish()
    }
}

/// How long after an assignment a read of nothing is checked against the
/// topic's end (the first fetch connects to the partitions' leaders).
const WARM_UP: Duration = Duration::from_secs(30);

/// How long a replay may wait for a message before it fails.
const REPLAY_STALL: Duration = Duration::from_secs(60);

impl KafkaSource {
    fn error(&self, what: &str, e: rdkafka::error::KafkaError) -> SluiceError {
        source_error(&self.name, self.topics.first().map(String::as_str), what, e)
    }

    /// `start` resolved to an offset of every partition.
    async fn resolve_start(&self) -> Result<KafkaOffset> {
        let mut at = KafkaOffset::default();
        for (t, p) in &self.partitions {
            at.set(t, *p, self.start_of(t, *p).await?);
        }
        Ok(at)
    }

    async fn start_of(&self, topic: &str, partition: i32) -> Result<i64> {
        let consumer = Arc::clone(&self.consumer);
        let (t, p) = (topic.to_string(), partition);
        let (low, high) = blocking(move || consumer.fetch_watermarks(&t, p, REQUEST_TIMEOUT))
            .await
            .map_err(|e| {
                self.error(
                    &format!("cannot read the offsets of {topic}[{partition}]"),
                    e,
                )
            })?;
        match self.start {
            KafkaStart::Earliest => Ok(low),
            KafkaStart::Latest => Ok(high),
            KafkaStart::At(ms) => {
                let consumer = Arc::clone(&self.consumer);
                let mut tpl = TopicPartitionList::new();
                tpl.add_partition_offset(topic, partition, Offset::Offset(ms))
                    .map_err(|e| self.error("cannot look up offsets by time", e))?;
                let found = blocking(move || consumer.offsets_for_times(tpl, REQUEST_TIMEOUT))
                    .await
                    .map_err(|e| self.error("cannot look up offsets by time", e))?;
                let offset = found.find_partition(topic, partition).map(|e| e.offset());
                Ok(match offset {
                    Some(Offset::Offset(o)) => o,
                    // no message at or after the time: from the end
                    _ => high,
                })
            }
        }
    }

    /// Reads from `at` on: partitions `at` lacks (new since the commit) from
    /// their beginning, so none of their messages is skipped.
    async fn position_at(&mut self, at: &KafkaOffset) -> Result<()> {
        let mut full = KafkaOffset::default();
        for (t, p) in &self.partitions {
            let o = match at.get(t, *p) {
                Some(o) => o,
                // in a group, a partition no worker has committed yet
                None if self.member.is_some() => self.start_of(t, *p).await?,
                None => {
                    let consumer = Arc::clone(&self.consumer);
                    let (tc, pc) = (t.clone(), *p);
                    blocking(move || consumer.fetch_watermarks(&tc, pc, REQUEST_TIMEOUT))
                        .await
                        .map_err(|e| self.error("cannot read the offsets of a new partition", e))?
                        .0
                }
            };
            full.set(t, *p, o);
        }
        self.consumer
            .assign(&full.list())
            .map_err(|e| self.error("cannot assign the partitions", e))?;
        self.position = Some(full);
        self.warm_until = Some(Instant::now() + WARM_UP);
        Ok(())
    }

    /// Every partition is read to its end: `position` (or the consumer's
    /// own, which moves past transaction markers) is at the high watermark.
    async fn caught_up(&self, position: &KafkaOffset) -> Result<bool> {
        let fetched = self
            .consumer
            .position()
            .map_err(|e| self.error("cannot read the consumer's position", e))?;
        for (t, p) in &self.partitions {
            let consumer = Arc::clone(&self.consumer);
            let (tc, pc) = (t.clone(), *p);
            let (_, high) = blocking(move || consumer.fetch_watermarks(&tc, pc, REQUEST_TIMEOUT))
                .await
                .map_err(|e| self.error(&format!("cannot read the offsets of {t}[{p}]"), e))?;
            let theirs = match fetched.find_partition(t, *p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => o,
                _ => 0,
            };
            if position.get(t, *p).unwrap_or(0).max(theirs) < high {
                return Ok(false);
            }
        }
        Ok(true)
    }

    async fn ensure_positioned(&mut self) -> Result<()> {
        if self.position.is_none() && self.member.is_some() {
            return self.resume(&KafkaOffset::default()).await;
        }
        if self.position.is_none() {
            let first = self.resolve_start().await?;
            self.first = Some(first.clone());
            self.position_at(&first).await?;
        }
        Ok(())
    }

    /// Takes one message into its chunk; returns whether it was kept.
    fn take(
        &self,
        m: &rdkafka::message::BorrowedMessage<'_>,
        chunks: &mut BTreeMap<(String, i32), Chunk>,
        position: &mut KafkaOffset,
        until: Option<&KafkaOffset>,
    ) -> bool {
        let (topic, partition, offset) = (m.topic(), m.partition(), m.offset());
        let next = position.get(topic, partition).unwrap_or(0);
        if offset < next || until.is_some_and(|u| offset >= u.get(topic, partition).unwrap_or(0)) {
            return false;
        }
        let raw = matches!(self.decoding.as_ref(), Decoding::Raw).then(|| {
            let headers = m
                .headers()
                .map(|hs| {
                    hs.iter()
                        .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
                        .collect()
                })
                .unwrap_or_default();
            (m.key(), headers)
        });
        chunks
            .entry((topic.to_string(), partition))
            .or_insert_with(|| Chunk::new(Arc::from(topic), partition))
            .push(offset, m.timestamp().to_millis(), m.payload(), raw);
        position.set(topic, partition, offset + 1);
        true
    }

    fn slice_of(&self, kept: &Kept) -> Slice<KafkaOffset> {
        let rows: usize = kept.chunks.iter().map(|c| c.len()).sum();
        let uris = kept
            .chunks
            .iter()
            .map(|c| {
                let first = c.offsets.first().copied().unwrap_or(0);
                let last = c.offsets.last().copied().unwrap_or(0);
                format!("{}@{first}-{last}", c.uri())
            })
            .collect();
        let table: Arc<dyn datafusion::catalog::TableProvider> = if kept.chunks.is_empty() {
            Arc::new(datafusion::datasource::empty::EmptyTable::new(Arc::clone(
                &self.schema,
            )))
        } else {
            let decoder = SliceDecoder {
                source_name: self.name.clone(),
                schema: Arc::clone(&self.schema),
                decoding: Arc::clone(&self.decoding),
                chunks: kept.chunks.clone(),
                batch_size: self.batch_size,
                on_error: self.on_error,
            };
            Arc::new(GeneratedTable::new(
                Arc::new(decoder),
                (0..kept.chunks.len() as u64).collect(),
                self.target_partitions,
            ))
        };
        Slice {
            table,
            start: kept.start.clone(),
            end: kept.end.clone(),
            estimated_rows: Some(rows as u64),
            uris,
        }
    }

    /// `format = "avro"`: looks up in the registry every schema id of
    /// `chunks` not known yet. An id the registry lacks stays unknown (its
    /// messages go to `on_error`); a registry that cannot be reached fails
    /// the read.
    async fn resolve_schema_ids(&self, chunks: &BTreeMap<(String, i32), Chunk>) -> Result<()> {
        let (Decoding::Avro(avro), Some(registry)) =
            (self.decoding.as_ref(), &self.schema_registry)
        else {
            return Ok(());
        };
        let mut unknown = std::collections::BTreeSet::new();
        for c in chunks.values() {
            for s in c.spans.iter().flatten() {
                if let Some(id) = avro::schema_id(&c.values[s.clone()])
                    && !avro.schemas.contains(id)
                {
                    unknown.insert(id);
                }
            }
        }
        for id in unknown {
            let found =
                avro::fetch_schema(registry, id)
                    .await
                    .map_err(|m| SluiceError::Source {
                        source_name: self.name.clone(),
                        file: None,
                        line: None,
                        message: m,
                        retry: RetryHint::WithBackoff,
                        cause: None,
                    })?;
            if let Some(schema) = found {
                avro.schemas.insert(id, schema);
            }
        }
        Ok(())
    }

    /// Fails with [`RetryHint::Rewind`] when the group moved partitions
    /// since the source took its own.
    fn check_generation(&self) -> Result<()> {
        let Some(member) = &self.member else {
            return Ok(());
        };
        let now = member.assignment();
        if now.generation == self.generation {
            return Ok(());
        }
        Err(SluiceError::Source {
            source_name: self.name.clone(),
            file: Some(format!("kafka consumer group {}", self.group)),
            line: None,
            message: format!(
                "the group moved partitions (this worker read {:?}, it now holds {:?})",
                self.partitions, now.partitions
            ),
            retry: RetryHint::Rewind,
            cause: None,
        })
    }

    fn message_error(&self, e: rdkafka::error::KafkaError) -> SluiceError {
        self.error("cannot read a message", e)
    }
}

#[async_trait]
impl Source for KafkaSource {
    type Offset = KafkaOffset;

    fn kind(&self) -> &str {
        "kafka"
    }
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }
    fn is_bounded(&self) -> bool {
        false
    }
    fn shares_partitions(&self) -> bool {
        self.member.is_some()
    }
    fn provenance(&self) -> SourceProvenance {
        let mut parameters = serde_json::Map::new();
        parameters.insert("brokers".to_string(), serde_json::json!(self.brokers));
        parameters.insert("group".to_string(), serde_json::json!(self.group));
        SourceProvenance {
            source: self.name.clone(),
            kind: "kafka".into(),
            uris: self.topics.iter().map(|t| format!("kafka://{t}")).collect(),
            parameters,
            upstream: None,
        }
    }

    async fn resume(&mut self, at: &KafkaOffset) -> Result<()> {
        if let Some(member) = &self.member {
            // the partitions held now, where the shared log has them (the
            // kept messages may be of partitions gone to another worker)
            let a = member.assignment();
            self.generation = a.generation;
            self.partitions = a.partitions;
            self.kept.clear();
            self.again.clear();
            return self.position_at(at).await;
        }
        // rewound in the same process after a failed epoch: serve the kept
        // messages again, from the one that starts at `at`
        if let Some(i) = self.kept.iter().position(|k| &k.start == at) {
            self.again = self.kept[i..].iter().cloned().collect();
            return Ok(());
        }
        self.kept.clear();
        self.again.clear();
        self.position_at(at).await
    }

    async fn restart(&mut self) -> Result<()> {
        if self.member.is_some() {
            return self.resume(&KafkaOffset::default()).await;
        }
        let first = match &self.first {
            Some(f) => f.clone(),
            None => {
                let f = self.resolve_start().await?;
                self.first = Some(f.clone());
                f
            }
        };
        self.resume(&first).await
    }

    async fn next_slice(&mut self, limits: &SliceLimits) -> Result<Option<Slice<KafkaOffset>>> {
        if let Some(k) = self.again.pop_front() {
            return Ok(Some(self.slice_of(&k)));
        }
        self.ensure_positioned().await?;
        self.check_generation()?;
        let start = self.position.clone().unwrap_or_default();
        let mut position = start.clone();
        let max_rows = limits.max_rows.unwrap_or(100_000);
        let max_bytes = limits.max_bytes.unwrap_or(u64::MAX);
        let deadline = super::deadline_after(limits.max_latency.unwrap_or(Duration::from_secs(1)));
        let mut chunks: BTreeMap<(String, i32), Chunk> = BTreeMap::new();
        let (mut rows, mut bytes) = (0u64, 0u64);
        let consumer = Arc::clone(&self.consumer);
        let mut deadline = deadline;
        loop {
            while rows < max_rows && bytes < max_bytes {
                let wait = deadline.saturating_duration_since(Instant::now());
                match tokio::time::timeout(wait, consumer.recv()).await {
                    Ok(Ok(m)) => {
                        if self.take(&m, &mut chunks, &mut position, None) {
                            rows += 1;
                            bytes += m.payload_len() as u64;
                        }
                    }
                    Ok(Err(e)) => return Err(self.message_error(e)),
                    Err(_) => break,
                }
            }
            // just after the partitions were assigned, the first fetch takes
            // a while: a read of nothing then is only "nothing new" (which
            // ends a run with --exit-when-idle) once the topic's end is reached
            match self.warm_until {
                Some(until) if rows == 0 && Instant::now() < until => {
                    if self.caught_up(&position).await? {
                        break;
                    }
                    deadline = Instant::now() + Duration::from_millis(200);
                }
                _ => break,
            }
        }
        self.warm_until = None;
        // (a rebalance while reading: the partitions may be another's now)
        self.check_generation()?;
        self.resolve_schema_ids(&chunks).await?;
        let kept = Kept {
            start,
            end: position.clone(),
            chunks: chunks.into_values().map(Arc::new).collect(),
        };
        self.position = Some(position);
        let slice = self.slice_of(&kept);
        if !kept.chunks.is_empty() {
            self.kept.push(kept);
        }
        Ok(Some(slice))
    }

    async fn replay(
        &mut self,
        start: &KafkaOffset,
        end: &KafkaOffset,
    ) -> Result<Slice<KafkaOffset>> {
        if let Some(k) = self
            .kept
            .iter()
            .find(|k| &k.start == start && &k.end == end)
        {
            return Ok(self.slice_of(&k.clone()));
        }
        // read exactly start..end of every partition again
        let mut todo = KafkaOffset::default();
        for (t, parts) in &end.topics {
            for (p, e) in parts {
                let s = start.get(t, *p).unwrap_or(*e);
                if s < *e {
                    todo.set(t, *p, s);
                }
            }
        }
        let mut chunks: BTreeMap<(String, i32), Chunk> = BTreeMap::new();
        if !todo.topics.is_empty() {
            self.consumer
                .assign(&todo.list())
                .map_err(|e| self.error("cannot assign the partitions to replay", e))?;
            let mut position = todo.clone();
            let consumer = Arc::clone(&self.consumer);
            let done = |position: &KafkaOffset| {
                position
                    .topics
                    .iter()
                    .all(|(t, ps)| ps.iter().all(|(p, o)| *o >= end.get(t, *p).unwrap_or(0)))
            };
            while !done(&position) {
                match tokio::time::timeout(REPLAY_STALL, consumer.recv()).await {
                    Ok(Ok(m)) => {
                        let (t, p, o) = (m.topic().to_string(), m.partition(), m.offset());
                        if !self.take(&m, &mut chunks, &mut position, Some(end))
                            && o >= end.get(&t, p).unwrap_or(0)
                        {
                            // past the range (the range's end is a transaction marker)
                            position.set(&t, p, o.max(end.get(&t, p).unwrap_or(0)));
                        }
                    }
                    Ok(Err(e)) => return Err(self.message_error(e)),
                    Err(_) => {
                        // the rest of the range may be markers of transactions:
                        // the consumer's position tells
                        let pos = self
                            .consumer
                            .position()
                            .map_err(|e| self.error("cannot read the consumer's position", e))?;
                        for el in pos.elements() {
                            if let Offset::Offset(o) = el.offset()
                                && o >= end.get(el.topic(), el.partition()).unwrap_or(0)
                            {
                                position.set(el.topic(), el.partition(), o);
                            }
                        }
                        if !done(&position) {
                            return Err(SluiceError::Source {
                                source_name: self.name.clone(),
                                file: None,
                                line: None,
                                message: format!(
                                    "cannot read the messages of a committed epoch again: after {}s, still at {:?} of {:?}",
                                    REPLAY_STALL.as_secs(),
                                    position.topics,
                                    end.topics
                                ),
                                retry: RetryHint::Never,
                                cause: None,
                            });
                        }
                    }
                }
            }
        }
        self.resolve_schema_ids(&chunks).await?;
        let kept = Kept {
            start: start.clone(),
            end: end.clone(),
            chunks: chunks.into_values().map(Arc::new).collect(),
        };
        self.kept.clear();
        self.again.clear();
        self.position_at(end).await?;
        Ok(self.slice_of(&kept))
    }

    async fn ack(&mut self, at: &KafkaOffset) -> Result<()> {
        self.kept.retain(|k| !offsets_le(&k.end, at));
        // for monitoring only: the group's lag; sluice reads its own commits
        let tpl = at.list();
        if tpl.count() == 0 {
            return Ok(());
        }
        let reported = match &self.member {
            Some(m) => m.report(&tpl),
            None => self.consumer.commit(&tpl, CommitMode::Async),
        };
        if let Err(e) = reported {
            tracing::warn!(source = %self.name, "cannot report offsets to group `{}`: {e}", self.group);
        }
        Ok(())
    }
}

/// Every partition of `a` is at or before `b`.
fn offsets_le(a: &KafkaOffset, b: &KafkaOffset) -> bool {
    a.topics.iter().all(|(t, ps)| {
        ps.iter()
            .all(|(p, o)| b.get(t, *p).is_some_and(|bo| *o <= bo))
    })
}
