//! Turning batches and envelopes into Flight messages.
//!
//! Each batch is one `FlightData` (dictionaries, if any, go first in their own
//! messages, without an envelope), its envelope in `app_metadata`. Control
//! messages are `FlightData` with only `app_metadata`. On the shared-memory
//! path ([`crate::shm`]) a batch is a control message naming its slot.

use arrow_array::RecordBatch;
use arrow_flight::FlightData;
use arrow_ipc::writer::{DictionaryTracker, IpcDataGenerator, IpcWriteContext, IpcWriteOptions};
use arrow_schema::{ArrowError, Schema, SchemaRef};
use std::sync::Arc;

use crate::envelope::Envelope;
use crate::shm::ShmWriter;

/// Encodes the batches of one stream.
#[derive(Debug)]
pub struct BatchEncoder {
    generator: IpcDataGenerator,
    tracker: DictionaryTracker,
    options: IpcWriteOptions,
    context: IpcWriteContext,
    /// The shared-memory path, when the exchange has one.
    shm: Option<ShmWriter>,
    /// The last batch went through shared memory: the next one over Flight
    /// sends its dictionaries again (the receiver keeps one set for both).
    /// Never set for a schema without dictionaries.
    flight_stale: bool,
    /// The stream's schema has dictionary fields (at any depth).
    has_dictionaries: bool,
    schema: Option<SchemaRef>,
}

impl Default for BatchEncoder {
    fn default() -> Self {
        Self::new()
    }
}

impl BatchEncoder {
    /// An encoder for one stream.
    pub fn new() -> Self {
        let mut context = IpcWriteContext::default();
        // batches of a stream are alike: keep the scratch capacity between them
        context.set_reserve_scratch(true);
        Self {
            generator: IpcDataGenerator::default(),
            tracker: DictionaryTracker::new(false),
            options: IpcWriteOptions::default(),
            context,
            shm: None,
            flight_stale: false,
            has_dictionaries: false,
            schema: None,
        }
    }

    /// Sends batches through `shm` when a slot is free, over Flight otherwise.
    pub fn with_shared_memory(mut self, shm: ShmWriter) -> Self {
        self.shm = Some(shm);
        self
    }

    /// The schema message that starts a stream; it also registers the
    /// dictionary ids the batches' dictionaries are sent under.
    pub fn schema_message(&mut self, schema: &Schema) -> FlightData {
        self.schema = Some(Arc::new(schema.clone()));
        self.has_dictionaries = schema
            .flattened_fields()
            .iter()
            .any(|f| matches!(f.data_type(), arrow_schema::DataType::Dictionary(..)));
        FlightData::from(self.generator.schema_to_bytes_with_dictionary_tracker(
            schema,
            &mut self.tracker,
            &self.options,
        ))
    }

    /// The messages of one batch: its dictionaries, then the batch with the envelope.
    pub fn batch_messages(
        &mut self,
        batch: &RecordBatch,
        envelope: &Envelope,
    ) -> Result<Vec<FlightData>, ArrowError> {
        if let Some(shm) = &mut self.shm
            && let Some(slot) = shm.write(batch)?
        {
            let mut e = envelope.clone();
            e.shm = Some(slot);
            self.flight_stale = self.has_dictionaries;
            return Ok(vec![control_message(&e)]);
        }
        if std::mem::take(&mut self.flight_stale)
            && let Some(schema) = self.schema.clone()
        {
            // forget what went over Flight before: the same ids, assigned again
            self.tracker = DictionaryTracker::new(false);
            let _ = self.schema_message(&schema);
        }
        let (dicts, data) =
            self.generator
                .encode(batch, &mut self.tracker, &self.options, &mut self.context)?;
        let mut out: Vec<FlightData> = dicts.into_iter().map(FlightData::from).collect();
        let mut msg = FlightData::from(data);
        msg.app_metadata = envelope.encode().into();
        out.push(msg);
        Ok(out)
    }
}

/// The most bytes (by memory size) of one output batch message: half the
/// message limit, so that an estimate off by a little never crosses it.
pub const MESSAGE_BUDGET: usize = crate::MAX_MESSAGE_SIZE / 2;

/// Cuts `batch` into slices (zero-copy) of at most `max_rows` rows and, by
/// the batch's average row size, at most `max_bytes` bytes. A single row
/// larger than `max_bytes` goes alone: rows are never cut. The engine cuts
/// its input to the manifest's limits with it, the SDK its output to
/// [`MESSAGE_BUDGET`].
pub fn slices(batch: RecordBatch, max_rows: usize, max_bytes: usize) -> Vec<RecordBatch> {
    let rows = batch.num_rows();
    let bytes = ipc_bytes(&batch).max(1);
    let by_bytes = (max_bytes as u128 * rows as u128 / bytes as u128).max(1);
    let per = (max_rows as u128).min(by_bytes).max(1) as usize;
    if rows <= per {
        return vec![batch];
    }
    (0..rows)
        .step_by(per)
        .map(|o| compact_views(batch.slice(o, per.min(rows - o))))
        .collect()
}

/// A slice whose view columns hold only the slice's strings. The IPC writer
/// sends a view column's data buffers whole, so each slice of a view column
/// would otherwise weigh as much as the batch it came from; this copies the
/// slice's strings (the one copy splitting costs, and only for views).
fn compact_views(slice: RecordBatch) -> RecordBatch {
    use arrow_array::cast::AsArray;
    let compacted: Vec<arrow_array::ArrayRef> = slice
        .columns()
        .iter()
        .map(|c| match c.data_type() {
            arrow_schema::DataType::Utf8View => std::sync::Arc::new(c.as_string_view().gc()) as _,
            arrow_schema::DataType::BinaryView => std::sync::Arc::new(c.as_binary_view().gc()) as _,
            _ => std::sync::Arc::clone(c),
        })
        .collect();
    RecordBatch::try_new(slice.schema(), compacted).unwrap_or(slice)
}

/// The bytes of a batch's buffers, as the IPC writer sends them: each
/// buffer's length (a view column's data buffers whole, as they are sent).
/// Not the memory size, which counts capacities: an array decoded from a
/// message (or in place from shared memory) has the whole message body as
/// its allocation, so each column would weigh as much as the batch. A
/// buffer shared by a slice counts whole: an overestimate, never an under.
pub fn ipc_bytes(batch: &RecordBatch) -> usize {
    fn data_bytes(d: &arrow_data::ArrayData) -> usize {
        d.buffers().iter().map(|b| b.len()).sum::<usize>()
            + d.nulls().map_or(0, |n| n.buffer().len())
            + d.child_data().iter().map(data_bytes).sum::<usize>()
    }
    batch
        .columns()
        .iter()
        .map(|c| data_bytes(&c.to_data()))
        .sum()
}

/// An IPC message header that says "no payload" (`MessageHeader::NONE`).
fn none_header() -> Vec<u8> {
    let mut fbb = flatbuffers::FlatBufferBuilder::new();
    let mut mb = arrow_ipc::MessageBuilder::new(&mut fbb);
    mb.add_version(arrow_ipc::MetadataVersion::V5);
    mb.add_header_type(arrow_ipc::MessageHeader::NONE);
    let m = mb.finish();
    fbb.finish(m, None);
    fbb.finished_data().to_vec()
}

/// Makes a metadata-only message (empty header, as arrow-go writes it)
/// readable by arrow-rs's decoder, which wants a header of type NONE.
pub fn normalize_metadata_only(mut data: FlightData) -> FlightData {
    if data.data_header.is_empty() && data.data_body.is_empty() {
        data.data_header = none_header().into();
    }
    data
}

/// A control message: only the envelope.
pub fn control_message(envelope: &Envelope) -> FlightData {
    FlightData {
        app_metadata: envelope.encode().into(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::Kind;
    use arrow_array::{Int64Array, StringArray};
    use arrow_schema::{DataType, Field};
    use proptest::prelude::*;
    use std::sync::Arc;

    fn batch(rows: usize, text: usize) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("s", DataType::Utf8, false),
        ]));
        let ids = Int64Array::from_iter_values(0..rows as i64);
        let s = StringArray::from_iter_values((0..rows).map(|_| "x".repeat(text)));
        RecordBatch::try_new(schema, vec![Arc::new(ids), Arc::new(s)]).unwrap()
    }

    proptest! {
        /// The slices hold every row once, in order, and each fits the
        /// manifest's limits (a row bigger than the byte limit alone).
        #[test]
        fn slices_keep_every_row_within_the_limits(rows in 0usize..300, text in 0usize..200, max_rows in 1usize..100, max_bytes in 1usize..20_000) {
            let b = batch(rows, text);
            let per_row = ipc_bytes(&b) / rows.max(1);
            let pieces = slices(b, max_rows, max_bytes);
            let mut next = 0i64;
            for p in &pieces {
                prop_assert!(p.num_rows() <= max_rows);
                prop_assert!(p.num_rows() == 1 || p.num_rows() * per_row <= max_bytes, "{} rows of ~{per_row} bytes", p.num_rows());
                let ids = p.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
                for id in ids.values() {
                    prop_assert_eq!(*id, next);
                    next += 1;
                }
            }
            prop_assert_eq!(next as usize, rows);
        }
    }

    /// A view column's slice carries only its own strings: the IPC writer
    /// sends a view column's data buffers whole.
    #[test]
    fn slices_of_view_columns_weigh_their_share() {
        let long = |i: usize| format!("a string well over twelve bytes long, number {i:06}");
        let views = arrow_array::StringViewArray::from_iter_values((0..1000).map(long));
        let schema = Arc::new(Schema::new(vec![Field::new(
            "s",
            DataType::Utf8View,
            false,
        )]));
        let batch = RecordBatch::try_new(schema, vec![Arc::new(views)]).unwrap();
        let whole = batch.get_array_memory_size();
        let pieces = slices(batch.clone(), 100, usize::MAX);
        assert_eq!(pieces.len(), 10);
        let mut enc = BatchEncoder::new();
        let _ = enc.schema_message(&batch.schema());
        for (i, p) in pieces.iter().enumerate() {
            assert!(p.get_array_memory_size() * 5 < whole, "piece {i}");
            let bytes: usize = enc
                .batch_messages(p, &Envelope::new(Kind::Batch, 0, i as u64))
                .unwrap()
                .iter()
                .map(|m| m.data_body.len())
                .sum();
            assert!(
                bytes * 5 < whole,
                "piece {i}: {bytes} bytes of IPC, the whole is {whole}"
            );
            let s = p
                .column(0)
                .as_any()
                .downcast_ref::<arrow_array::StringViewArray>()
                .unwrap();
            assert_eq!(s.value(0), long(i * 100));
        }
    }

    /// Batches alternate between shared memory and Flight (the middle one
    /// does not fit its half) and share dictionaries: the receiver, which
    /// keeps one set of dictionaries for both paths, decodes each with its own.
    #[test]
    fn dictionaries_stay_right_when_batches_switch_paths() {
        use crate::shm::{Incoming, Mapping, ShmWriter, Slots};
        use arrow_array::{DictionaryArray, types::Int32Type};
        let dict = |words: &[&str], rows: usize, pad: usize| {
            let keys = arrow_array::Int32Array::from_iter_values(
                (0..rows).map(|i| (i % words.len()) as i32),
            );
            let values: arrow_array::ArrayRef = Arc::new(StringArray::from_iter_values(
                words.iter().map(|w| format!("{w}{}", "-".repeat(pad))),
            ));
            let d = DictionaryArray::<Int32Type>::try_new(keys, values).unwrap();
            let schema = Arc::new(Schema::new(vec![Field::new(
                "d",
                DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)),
                false,
            )]));
            RecordBatch::try_new(schema, vec![Arc::new(d)]).unwrap()
        };
        let a = dict(&["x", "y"], 100, 0);
        let big = dict(&["p", "q"], 100, 300_000); // larger than the half
        let b = dict(&["u", "v", "w"], 100, 0);
        let batches = [a.clone(), big, a.clone(), b.clone(), a.clone(), b];

        let (mapping, _) = Mapping::create(1 << 20).unwrap();
        let mapping = Arc::new(mapping);
        let ours = Arc::new(std::sync::Mutex::new(Slots::new(0, 1 << 19)));
        let mut enc = BatchEncoder::new().with_shared_memory(ShmWriter::new(
            Arc::clone(&mapping),
            Arc::clone(&ours),
            a.schema(),
        ));
        let freed = Arc::clone(&ours);
        let incoming = Incoming::new(
            mapping,
            Slots::new(0, 1 << 19),
            Arc::new(std::sync::Mutex::new(Slots::new(1 << 19, 1 << 19))),
            Arc::new(move |slot| freed.lock().unwrap().free(slot).unwrap()),
            false,
        );
        let mut messages = vec![enc.schema_message(&a.schema())];
        let mut in_shm = 0;
        for (i, batch) in batches.iter().enumerate() {
            for m in enc
                .batch_messages(batch, &Envelope::new(Kind::Batch, 0, i as u64))
                .unwrap()
            {
                let expanded = incoming.expand(m.clone()).unwrap();
                in_shm += usize::from(expanded.len() != 1 || expanded[0] != m);
                messages.extend(expanded);
            }
        }
        assert!(in_shm >= 4, "{in_shm} batches went through shared memory");
        let decoded: Vec<RecordBatch> = futures::executor::block_on(async {
            use futures::TryStreamExt;
            arrow_flight::decode::FlightRecordBatchStream::new_from_flight_data(
                futures::stream::iter(messages.into_iter().map(Ok)),
            )
            .try_collect()
            .await
        })
        .unwrap();
        assert_eq!(decoded.len(), batches.len());
        for (i, (got, want)) in decoded.iter().zip(&batches).enumerate() {
            assert_eq!(got, want, "batch {i}");
        }
    }

    #[test]
    fn every_type_of_the_zoo_encodes() {
        let zoo = crate::conformance::type_zoo(50);
        let mut enc = BatchEncoder::new();
        let _schema = enc.schema_message(&zoo.schema());
        let msgs = enc
            .batch_messages(&zoo, &Envelope::new(Kind::Batch, 0, 0))
            .unwrap();
        assert!(msgs.len() >= 2, "a dictionary message and the batch");
    }
}
