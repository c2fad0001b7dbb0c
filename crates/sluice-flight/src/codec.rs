//! Turning batches and envelopes into Flight messages.
//!
//! Each batch is one `FlightData` (dictionaries, if any, go first in their own
//! messages, without an envelope), its envelope in `app_metadata`. Control
//! messages are `FlightData` with only `app_metadata`.

use arrow_array::RecordBatch;
use arrow_flight::FlightData;
use arrow_ipc::writer::{DictionaryTracker, IpcDataGenerator, IpcWriteContext, IpcWriteOptions};
use arrow_schema::{ArrowError, Schema};

use crate::envelope::Envelope;

/// Encodes the batches of one stream.
#[derive(Debug)]
pub struct BatchEncoder {
    generator: IpcDataGenerator,
    tracker: DictionaryTracker,
    options: IpcWriteOptions,
    context: IpcWriteContext,
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
        }
    }

    /// The schema message that starts a stream; it also registers the
    /// dictionary ids the batches' dictionaries are sent under.
    pub fn schema_message(&mut self, schema: &Schema) -> FlightData {
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
