//! One slice's messages, kept as read, and decoded into rows when the
//! epoch's plan scans them.
//!
//! A [`Chunk`] holds one partition's messages of a slice: their values back
//! to back, each followed by `\n` (the layout the line decoders take, so a
//! chunk is decoded without another copy), their offsets and timestamps,
//! and, for `format = "raw"`, their keys and headers. Decoding happens in the
//! scan rather than when the messages are read, because a message that
//! does not decode is handed to the epoch's dead letters, which only exist
//! while the epoch runs.

use std::ops::Range;
use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, BinaryBuilder, Int32Array, Int64Array, ListBuilder, RecordBatch, StringArray,
    StringBuilder, StructBuilder, TimestampMillisecondArray, UInt32Array,
};
use datafusion::arrow::compute::take;
use datafusion::arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::error::ArrowError;
use datafusion::execution::TaskContext;
use sluice_contract::ErrorCode;

use crate::dead_letter::{DeadLetter, OnError};
use crate::epoch::EpochBinding;
use crate::error::{RetryHint, SluiceError};
use crate::metrics::ComponentId;
use crate::ops::generate::{BatchGenerator, Batches};
use crate::ops::line_scan::decoding::{Bad, BatchDecoder, CutBuffers};
use crate::ops::line_scan::framing::{Dialect, Framer};

/// The columns every decoded row ends with: where its message was.
pub(crate) const PARTITION: &str = "_partition";
/// The message's offset.
pub(crate) const OFFSET: &str = "_offset";
/// The message's timestamp: the default event time of a Kafka source.
pub(crate) const TIMESTAMP: &str = "_timestamp";

fn timestamp_type() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()))
}

/// The metadata columns appended to decoded rows.
pub(crate) fn metadata_fields() -> Vec<Field> {
    vec![
        Field::new(PARTITION, DataType::Int32, false),
        Field::new(OFFSET, DataType::Int64, false),
        Field::new(TIMESTAMP, timestamp_type(), true),
    ]
}

fn header_fields() -> Fields {
    Fields::from(vec![
        Field::new("key", DataType::Utf8, false),
        Field::new("value", DataType::Binary, true),
    ])
}

/// The schema of `format = "raw"`: each message as it is.
pub(crate) fn raw_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("key", DataType::Binary, true),
        Field::new("value", DataType::Binary, true),
        Field::new_list(
            "headers",
            Field::new_list_field(DataType::Struct(header_fields()), false),
            false,
        ),
        Field::new("topic", DataType::Utf8, false),
        Field::new("partition", DataType::Int32, false),
        Field::new("offset", DataType::Int64, false),
        Field::new("timestamp", timestamp_type(), true),
    ]))
}

/// A message's header: its name and value.
pub(crate) type Header = (String, Option<Vec<u8>>);

/// One partition's messages of a slice; see the module docs.
#[derive(Debug, Default)]
pub(crate) struct Chunk {
    pub topic: Arc<str>,
    pub partition: i32,
    pub offsets: Vec<i64>,
    /// Milliseconds since the Unix epoch, when the message has a timestamp.
    pub timestamps: Vec<Option<i64>>,
    /// The values, each followed by `\n`.
    pub values: Vec<u8>,
    /// Each value's bytes in `values` (`\n` excluded); `None`: no value (a
    /// tombstone).
    pub spans: Vec<Option<Range<usize>>>,
    /// Keys and headers, kept for `format = "raw"` only.
    pub keys: Vec<Option<Vec<u8>>>,
    pub headers: Vec<Vec<Header>>,
}

impl Chunk {
    pub(crate) fn new(topic: Arc<str>, partition: i32) -> Self {
        Self {
            topic,
            partition,
            ..Self::default()
        }
    }

    /// Keeps a message (`raw`: with its key and headers).
    pub(crate) fn push(
        &mut self,
        offset: i64,
        timestamp: Option<i64>,
        value: Option<&[u8]>,
        raw: Option<(Option<&[u8]>, Vec<Header>)>,
    ) {
        self.offsets.push(offset);
        self.timestamps.push(timestamp);
        self.spans.push(value.map(|v| {
            let start = self.values.len();
            self.values.extend_from_slice(v);
            let span = start..self.values.len();
            self.values.push(b'\n');
            span
        }));
        if let Some((key, headers)) = raw {
            self.keys.push(key.map(<[u8]>::to_vec));
            self.headers.push(headers);
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.offsets.len()
    }

    /// The URI of the messages, for provenance and dead letters.
    pub(crate) fn uri(&self) -> String {
        format!("kafka://{}/{}", self.topic, self.partition)
    }
}

/// How a slice's values become rows.
#[derive(Debug)]
pub(crate) enum Decoding {
    /// JSON or CSV values, by the line decoders, plus [`metadata_fields`].
    Lines {
        decoder: BatchDecoder,
        /// CSV: the dialect each message is framed by (one record each).
        csv: Option<Dialect>,
    },
    /// Avro in the Confluent wire format, plus [`metadata_fields`].
    Avro(super::avro::AvroDecoding),
    /// Every message as it is ([`raw_schema`]).
    Raw,
}

/// A slice's chunks, decoded one chunk per unit of a [`GenerateExec`].
///
/// [`GenerateExec`]: crate::ops::generate::GenerateExec
#[derive(Debug)]
pub(crate) struct SliceDecoder {
    pub source_name: String,
    pub schema: SchemaRef,
    pub decoding: Arc<Decoding>,
    pub chunks: Vec<Arc<Chunk>>,
    pub batch_size: usize,
    pub on_error: OnError,
}

impl BatchGenerator for SliceDecoder {
    fn describe(&self) -> String {
        let messages: usize = self.chunks.iter().map(|c| c.len()).sum();
        format!(
            "kafka source={} partitions={} messages={messages}",
            self.source_name,
            self.chunks.len()
        )
    }
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }
    fn generate(&self, unit: u64, task: &TaskContext) -> Batches {
        let Some(chunk) = usize::try_from(unit)
            .ok()
            .and_then(|u| self.chunks.get(u))
            .cloned()
        else {
            return Box::new(std::iter::empty());
        };
        let binding = match EpochBinding::of_task(task) {
            Ok(b) => b,
            Err(e) => {
                return Box::new(std::iter::once(Err(ArrowError::ExternalError(Box::new(e)))));
            }
        };
        let job = ChunkJob {
            source_name: self.source_name.clone(),
            schema: Arc::clone(&self.schema),
            decoding: Arc::clone(&self.decoding),
            chunk,
            on_error: self.on_error,
            binding,
            buffers: CutBuffers::default(),
        };
        let step = self.batch_size.max(1);
        let n = job.chunk.len();
        let mut job = job;
        Box::new(
            (0..n)
                .step_by(step)
                .map(move |from| job.batch(from..(from + step).min(n)))
                .filter(|r| !matches!(r, Ok(b) if b.num_rows() == 0)),
        )
    }
}

/// Decodes one chunk, batch by batch.
struct ChunkJob {
    source_name: String,
    schema: SchemaRef,
    decoding: Arc<Decoding>,
    chunk: Arc<Chunk>,
    on_error: OnError,
    binding: Arc<EpochBinding>,
    buffers: CutBuffers,
}

/// A message given up on: its index in the chunk, the code and why.
pub(crate) type Refused = (usize, ErrorCode, String);

impl ChunkJob {
    fn batch(&mut self, rows: Range<usize>) -> Result<RecordBatch, ArrowError> {
        match self.decoding.as_ref() {
            Decoding::Raw => raw_rows(&self.chunk, &self.schema, rows),
            Decoding::Lines { decoder, csv } => {
                let (batch, refused) = decode_rows(
                    decoder,
                    *csv,
                    &self.chunk,
                    &self.schema,
                    rows,
                    &mut self.buffers,
                )?;
                self.give_up(&refused)?;
                Ok(batch)
            }
            Decoding::Avro(avro) => {
                let (decoded, refused) = avro.decode(&self.chunk, rows.clone())?;
                self.give_up(&refused)?;
                with_metadata(decoded, &self.chunk, &self.schema, rows, &refused)
            }
        }
    }

    /// Hands refused messages to `on_error`: the first fails the epoch, or
    /// each is skipped or dead-lettered with its topic, partition and offset.
    fn give_up(&self, refused: &[Refused]) -> Result<(), ArrowError> {
        let c = &self.chunk;
        for (i, code, message) in refused {
            let offset = c.offsets[*i];
            let at = format!(
                "topic `{}` partition {} offset {offset}",
                c.topic, c.partition
            );
            if self.on_error == OnError::Fail {
                let e = SluiceError::Source {
                    source_name: self.source_name.clone(),
                    file: Some(c.uri()),
                    line: None,
                    message: format!("{message} ({code}) at {at}"),
                    retry: RetryHint::Never,
                    cause: None,
                };
                return Err(ArrowError::ExternalError(Box::new(e)));
            }
            let raw = c.spans[*i]
                .clone()
                .map(|s| String::from_utf8_lossy(&c.values[s]).into_owned())
                .unwrap_or_default();
            self.binding.dead_letters().push(
                format!("{}/{offset:020}", c.uri()),
                DeadLetter {
                    component: ComponentId::Source(self.source_name.clone()),
                    code: *code,
                    message: format!("{message} ({at})"),
                    file: Some(c.uri()),
                    line: None,
                    offset: u64::try_from(offset).ok(),
                    raw,
                    skipped: self.on_error == OnError::Skip,
                },
            );
        }
        Ok(())
    }
}

/// Rows `rows` of a raw chunk: each message as it is ([`raw_schema`]).
fn raw_rows(c: &Chunk, schema: &SchemaRef, rows: Range<usize>) -> Result<RecordBatch, ArrowError> {
    let mut keys = BinaryBuilder::new();
    let mut values = BinaryBuilder::new();
    let mut headers =
        ListBuilder::new(StructBuilder::from_fields(header_fields(), 0)).with_field(Arc::new(
            Field::new_list_field(DataType::Struct(header_fields()), false),
        ));
    for i in rows.clone() {
        keys.append_option(c.keys.get(i).and_then(Option::as_deref));
        values.append_option(c.spans[i].clone().map(|s| &c.values[s]));
        let list = headers.values();
        for (name, value) in c.headers.get(i).map(Vec::as_slice).unwrap_or_default() {
            list.field_builder::<StringBuilder>(0)
                .ok_or_else(|| ArrowError::SchemaError("header name builder".into()))?
                .append_value(name);
            list.field_builder::<BinaryBuilder>(1)
                .ok_or_else(|| ArrowError::SchemaError("header value builder".into()))?
                .append_option(value.as_deref());
            list.append(true);
        }
        headers.append(true);
    }
    let n = rows.len();
    let columns: Vec<ArrayRef> = vec![
        Arc::new(keys.finish()),
        Arc::new(values.finish()),
        Arc::new(headers.finish()),
        Arc::new(StringArray::from(vec![c.topic.as_ref(); n])),
        Arc::new(Int32Array::from(vec![c.partition; n])),
        Arc::new(Int64Array::from(c.offsets[rows.clone()].to_vec())),
        Arc::new(TimestampMillisecondArray::from(c.timestamps[rows].to_vec()).with_timezone("UTC")),
    ];
    RecordBatch::try_new(Arc::clone(schema), columns)
}

/// Decodes messages `rows` of a JSON or CSV chunk: the rows that decode
/// (with the metadata columns), and the messages refused, in offset order.
pub(crate) fn decode_rows(
    decoder: &BatchDecoder,
    csv: Option<Dialect>,
    c: &Chunk,
    schema: &SchemaRef,
    rows: Range<usize>,
    buffers: &mut CutBuffers,
) -> Result<(RecordBatch, Vec<Refused>), ArrowError> {
    // refused before decoding: no value, or a value the precheck refuses
    let mut refused: Vec<Refused> = Vec::new();
    let mut kept: Vec<usize> = Vec::with_capacity(rows.len());
    let mut scratch = Vec::new();
    let mut frames = Vec::new();
    for i in rows.clone() {
        let Some(span) = &c.spans[i] else {
            refused.push((
                i,
                ErrorCode::Malformed,
                "the message has no value (a tombstone)".into(),
            ));
            continue;
        };
        let record = trim_line_end(&c.values[span.clone()]);
        let fields = match csv {
            // a message is one CSV record: framed alone, so a stray quote
            // or line break costs this message only
            Some(dialect) => {
                frames.clear();
                Framer::new(dialect, 1).frame(record, true, &mut frames);
                match frames.as_slice() {
                    [f] if f.fault.is_none() && f.start == 0 && f.end == record.len() => f.fields,
                    [f] if f.fault.is_some() => {
                        let fault = f.fault.map(|f| f.to_string()).unwrap_or_default();
                        refused.push((i, ErrorCode::Malformed, fault));
                        continue;
                    }
                    other => {
                        let m = format!("the message holds {} CSV records, not one", other.len());
                        refused.push((i, ErrorCode::Malformed, m));
                        continue;
                    }
                }
            }
            None => 0,
        };
        match decoder.precheck(record, fields, &mut scratch) {
            Ok(()) => kept.push(i),
            Err(p) => refused.push((i, p.code, p.message)),
        }
    }
    // the kept values are decoded where they lie when they are back to
    // back, each followed by one `\n`; else they are gathered first
    let spans: Vec<Range<usize>> = kept
        .iter()
        .map(|&i| {
            let s = c.spans[i].clone().unwrap_or_default();
            s.start..s.start + trim_line_end(&c.values[s]).len()
        })
        .collect();
    let in_place = spans.windows(2).all(|w| w[1].start == w[0].end + 1);
    let gathered;
    let (raw, spans): (&[u8], Vec<Range<usize>>) = if in_place {
        (&c.values, spans)
    } else {
        let mut buf = Vec::new();
        let mut out = Vec::with_capacity(spans.len());
        for s in &spans {
            let start = buf.len();
            buf.extend_from_slice(&c.values[s.clone()]);
            out.push(start..buf.len());
            buf.push(b'\n');
        }
        gathered = buf;
        (gathered.as_slice(), out)
    };
    let mut bad: Vec<Bad> = Vec::new();
    let decoded = decoder
        .decode(raw, &spans, &mut bad, buffers)
        .map_err(|e| ArrowError::ExternalError(Box::new(e)))?;
    for b in bad {
        refused.push((kept[b.index], b.code, b.message));
    }
    refused.sort_by_key(|r| r.0);
    let batch = with_metadata(decoded, c, schema, rows, &refused)?;
    Ok((batch, refused))
}

/// The decoded rows of messages `rows` (those not `refused`), followed by
/// the metadata columns of their messages.
fn with_metadata(
    decoded: Option<RecordBatch>,
    c: &Chunk,
    schema: &SchemaRef,
    rows: Range<usize>,
    refused: &[Refused],
) -> Result<RecordBatch, ArrowError> {
    let Some(decoded) = decoded else {
        return Ok(RecordBatch::new_empty(Arc::clone(schema)));
    };
    let mut good = vec![true; rows.len()];
    for (i, _, _) in refused {
        good[i - rows.start] = false;
    }
    let indices: UInt32Array = good
        .iter()
        .enumerate()
        .filter(|(_, g)| **g)
        .map(|(i, _)| i as u32)
        .collect();
    let n = indices.len();
    if n != decoded.num_rows() {
        return Err(ArrowError::ComputeError(format!(
            "{}: {} rows decoded from {n} messages",
            c.uri(),
            decoded.num_rows()
        )));
    }
    let offsets = take(
        &Int64Array::from(c.offsets[rows.clone()].to_vec()),
        &indices,
        None,
    )?;
    let times = take(
        &TimestampMillisecondArray::from(c.timestamps[rows].to_vec()).with_timezone("UTC"),
        &indices,
        None,
    )?;
    let mut columns = decoded.columns().to_vec();
    columns.push(Arc::new(Int32Array::from(vec![c.partition; n])));
    columns.push(offsets);
    columns.push(times);
    RecordBatch::try_new(Arc::clone(schema), columns)
}

/// A value without the one line end a producer may have left on it.
fn trim_line_end(v: &[u8]) -> &[u8] {
    let v = v.strip_suffix(b"\n").unwrap_or(v);
    v.strip_suffix(b"\r").unwrap_or(v)
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::{Array, AsArray, RecordBatch};
    use datafusion::arrow::datatypes::Int64Type;
    use proptest::prelude::*;

    use super::*;
    use crate::ops::line_scan::{CsvOptions, LineFormat};

    fn declared() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("word", DataType::Utf8, true),
        ]))
    }

    fn out_schema() -> SchemaRef {
        let mut fields: Vec<Field> = declared()
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        fields.extend(metadata_fields());
        Arc::new(Schema::new(fields))
    }

    /// A message: a good one of `id` (JSON or CSV), or any bytes, or none.
    #[derive(Debug, Clone)]
    enum Msg {
        Good(i64, String),
        Bytes(Vec<u8>),
        Tombstone,
    }

    fn msg() -> impl Strategy<Value = Msg> {
        prop_oneof![
            4 => (any::<i64>(), "[a-z\"\\\\ ,\n\u{2028}é]{0,12}").prop_map(|(i, w)| Msg::Good(i, w)),
            2 => proptest::collection::vec(any::<u8>(), 0..40).prop_map(Msg::Bytes),
            1 => Just(Msg::Tombstone),
        ]
    }

    fn encode(m: &Msg, csv: bool) -> Option<Vec<u8>> {
        match m {
            Msg::Good(i, w) if csv => {
                Some(format!("{i},\"{}\"", w.replace('"', "\"\"")).into_bytes())
            }
            Msg::Good(i, w) => Some(
                serde_json::json!({"id": i, "word": w})
                    .to_string()
                    .into_bytes(),
            ),
            Msg::Bytes(b) => Some(b.clone()),
            Msg::Tombstone => None,
        }
    }

    fn decode_all(msgs: &[Msg], csv: bool, batch: usize) -> (Vec<RecordBatch>, Vec<Refused>) {
        let format = if csv {
            LineFormat::Csv(CsvOptions {
                has_header: false,
                newlines_in_values: true,
                ..CsvOptions::default()
            })
        } else {
            LineFormat::Jsonl
        };
        let dialect = format.dialect();
        let decoder = BatchDecoder::new(format, &declared(), None, 1024).unwrap();
        let mut c = Chunk::new(Arc::from("t"), 3);
        for (i, m) in msgs.iter().enumerate() {
            let v = encode(m, csv);
            c.push(
                100 + i as i64,
                Some(1_700_000_000_000 + i as i64),
                v.as_deref(),
                None,
            );
        }
        let mut buffers = CutBuffers::default();
        let (mut batches, mut refused) = (Vec::new(), Vec::new());
        for from in (0..msgs.len()).step_by(batch) {
            let rows = from..(from + batch).min(msgs.len());
            let (b, r) = decode_rows(
                &decoder,
                csv.then_some(dialect),
                &c,
                &out_schema(),
                rows,
                &mut buffers,
            )
            .expect("decoding never fails on what it reads");
            batches.push(b);
            refused.extend(r);
        }
        (batches, refused)
    }

    proptest! {
        /// Every message is a row or refused, never both, never neither;
        /// a good message is a row with its values and its offset; a
        /// refused one is named by its index.
        #[test]
        fn every_message_is_a_row_or_refused(
            msgs in proptest::collection::vec(msg(), 0..40),
            csv in any::<bool>(),
            batch in 1usize..16,
        ) {
            let (batches, refused) = decode_all(&msgs, csv, batch);
            let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
            prop_assert_eq!(rows + refused.len(), msgs.len());
            let refused_at: Vec<usize> = refused.iter().map(|r| r.0).collect();
            let mut sorted = refused_at.clone();
            sorted.dedup();
            prop_assert_eq!(&sorted, &refused_at, "refused twice or out of order");
            let mut decoded = Vec::new();
            for b in &batches {
                let ids = b.column(0).as_primitive::<Int64Type>();
                let words = b.column(1).as_string::<i32>();
                let offsets = b.column(3).as_primitive::<Int64Type>();
                for r in 0..b.num_rows() {
                    decoded.push((offsets.value(r), ids.value(r), words.is_valid(r).then(|| words.value(r).to_string())));
                }
            }
            let mut at = 0;
            for (i, m) in msgs.iter().enumerate() {
                let is_refused = refused_at.contains(&i);
                match m {
                    Msg::Good(id, w) => {
                        prop_assert!(!is_refused, "a good message {m:?} was refused: {refused:?}");
                        let (o, got_id, got_w) = &decoded[at];
                        prop_assert_eq!(*o, 100 + i as i64);
                        prop_assert_eq!(got_id, id);
                        // CSV reads an empty field as null
                        if !(csv && w.is_empty()) {
                            prop_assert_eq!(got_w.as_deref(), Some(w.as_str()));
                        }
                        at += 1;
                    }
                    Msg::Tombstone => prop_assert!(is_refused),
                    Msg::Bytes(_) => {
                        if !is_refused {
                            prop_assert_eq!(decoded[at].0, 100 + i as i64);
                            at += 1;
                        }
                    }
                }
            }
        }
    }
}
