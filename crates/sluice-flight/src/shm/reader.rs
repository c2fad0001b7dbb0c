//! Reading the batches a peer put in shared memory.

use std::sync::{Arc, Mutex, OnceLock};

use arrow_flight::FlightData;
use bytes::Bytes;
use futures::{Stream, StreamExt};

use super::{Mapping, SlotRef, Slots};
use crate::envelope::{Envelope, Kind};

/// Called with each slot of the peer this side is done with; the owner of
/// the outgoing stream sends it back as a `release`.
pub type Release = Arc<dyn Fn(SlotRef) + Send + Sync>;

/// One side's view of the peer's messages on the shared-memory path.
pub struct Incoming {
    mapping: Arc<Mapping>,
    /// The peer's half: its slots must lie in it.
    peer: Slots,
    /// This side's half, shared with its [`super::ShmWriter`]: the peer's
    /// `release` messages free slots in it.
    own: Arc<Mutex<Slots>>,
    release: Release,
    /// Decode in place (the stage, which trusts its engine) or copy first
    /// (the engine, which never reads memory the stage could still write).
    in_place: bool,
}

impl std::fmt::Debug for Incoming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Incoming")
            .field("in_place", &self.in_place)
            .finish_non_exhaustive()
    }
}

/// A slot read in place: the bytes stay in shared memory until the last
/// array referencing them is dropped, which gives the slot back.
struct Lease {
    mapping: Arc<Mapping>,
    slot: SlotRef,
    release: Release,
}

impl AsRef<[u8]> for Lease {
    fn as_ref(&self) -> &[u8] {
        // checked to lie inside the mapping when the lease was made
        self.mapping
            .bytes(self.slot.offset, self.slot.length)
            .unwrap_or_default()
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        (self.release)(self.slot);
    }
}

impl Incoming {
    /// The peer's half is `peer`; `own` is this side's.
    pub fn new(
        mapping: Arc<Mapping>,
        peer: Slots,
        own: Arc<Mutex<Slots>>,
        release: Release,
        in_place: bool,
    ) -> Self {
        Self {
            mapping,
            peer,
            own,
            release,
            in_place,
        }
    }

    /// One message of the peer as the messages to decode: a batch in shared
    /// memory becomes its IPC messages (the envelope on the last one); a
    /// `release` gives back a slot of this side and becomes nothing; any
    /// other message stays itself. An error is the peer breaking the protocol.
    pub fn expand(&self, data: FlightData) -> Result<Vec<FlightData>, String> {
        let Some((kind, slot)) = shared_memory_envelope(&data) else {
            return Ok(vec![data]);
        };
        match kind {
            Kind::Release => {
                let mut own = self.own.lock().unwrap_or_else(|p| p.into_inner());
                own.free(slot)?;
                Ok(Vec::new())
            }
            Kind::Batch => {
                if !self.peer.contains(slot) || !self.mapping.holds(slot.offset, slot.length) {
                    return Err(format!(
                        "a batch in shared memory at {} ({} bytes), outside the sender's half",
                        slot.offset, slot.length
                    ));
                }
                let bytes = if self.in_place {
                    Bytes::from_owner(Lease {
                        mapping: Arc::clone(&self.mapping),
                        slot,
                        release: Arc::clone(&self.release),
                    })
                } else {
                    let copy = Bytes::from(
                        self.mapping
                            .copy_out(slot.offset, slot.length)
                            .unwrap_or_default(),
                    );
                    (self.release)(slot);
                    copy
                };
                ipc_messages(bytes, data.app_metadata)
            }
            other => Err(format!(
                "a `{}` message names a slot of shared memory; only `batch` and `release` do",
                other.as_str()
            )),
        }
    }
}

/// The kind and slot of a message without IPC payload that names a slot
/// (`Envelope::decode` admits a slot only on a `batch` or a `release`).
fn shared_memory_envelope(data: &FlightData) -> Option<(Kind, SlotRef)> {
    if !data.data_header.is_empty() || !data.data_body.is_empty() || data.app_metadata.is_empty() {
        return None;
    }
    let envelope = Envelope::decode(&data.app_metadata).ok()?;
    Some((envelope.kind, envelope.shm?))
}

/// Whether a message that carries its own IPC data also names a slot: it
/// would say its batch is in two places.
fn names_a_slot_beside_its_data(data: &FlightData) -> bool {
    (!data.data_header.is_empty() || !data.data_body.is_empty())
        && !data.app_metadata.is_empty()
        && Envelope::decode(&data.app_metadata).is_ok_and(|e| e.shm.is_some())
}

/// Splits a slot into the IPC stream messages it holds (continuation
/// marker, metadata length, metadata, body); the last must be the record
/// batch, and gets `app_metadata`.
fn ipc_messages(slot: Bytes, app_metadata: Bytes) -> Result<Vec<FlightData>, String> {
    let bad = |m: String| format!("a batch in shared memory: {m}");
    let mut out = Vec::new();
    let mut at = 0usize;
    while at < slot.len() {
        let word = |i: usize| -> Option<[u8; 4]> { slot.get(i..i + 4)?.try_into().ok() };
        let (Some(marker), Some(len)) = (word(at), word(at + 4)) else {
            return Err(bad(format!("{} stray bytes at {at}", slot.len() - at)));
        };
        if u32::from_le_bytes(marker) != 0xFFFF_FFFF {
            return Err(bad(format!("no continuation marker at byte {at}")));
        }
        let meta_len = i32::from_le_bytes(len);
        let meta_start = at + 8;
        let meta_end = usize::try_from(meta_len)
            .ok()
            .filter(|&l| l > 0)
            .and_then(|l| meta_start.checked_add(l))
            .filter(|&e| e <= slot.len())
            .ok_or_else(|| bad(format!("metadata of {meta_len} bytes at byte {at}")))?;
        let header = slot.slice(meta_start..meta_end);
        let message = arrow_ipc::root_as_message(&header)
            .map_err(|e| bad(format!("metadata at byte {at}: {e}")))?;
        let body_end = usize::try_from(message.bodyLength())
            .ok()
            .and_then(|l| meta_end.checked_add(l))
            .filter(|&e| e <= slot.len())
            .ok_or_else(|| {
                bad(format!(
                    "a body of {} bytes at byte {meta_end}, past the slot's end",
                    message.bodyLength()
                ))
            })?;
        let kind = message.header_type();
        out.push((
            kind,
            FlightData {
                data_header: header.clone(),
                data_body: slot.slice(meta_end..body_end),
                ..Default::default()
            },
        ));
        at = body_end;
    }
    let batches = out
        .iter()
        .filter(|(k, _)| *k == arrow_ipc::MessageHeader::RecordBatch)
        .count();
    let dictionaries = out
        .iter()
        .filter(|(k, _)| *k == arrow_ipc::MessageHeader::DictionaryBatch)
        .count();
    match out.last() {
        Some((arrow_ipc::MessageHeader::RecordBatch, _))
            if batches == 1 && dictionaries + 1 == out.len() => {}
        _ => {
            return Err(bad(format!(
                "{} messages; want dictionaries, then one record batch",
                out.len()
            )));
        }
    }
    let mut messages: Vec<FlightData> = out.into_iter().map(|(_, d)| d).collect();
    if let Some(last) = messages.last_mut() {
        last.app_metadata = app_metadata;
    }
    Ok(messages)
}

/// The peer's messages with each batch in shared memory expanded
/// ([`Incoming::expand`]) once `incoming` is set (the stage sets it after
/// the open request; before, messages pass through). A message naming a
/// slot when no memory was shared, one carrying its IPC data and naming a
/// slot too, or one breaking the protocol otherwise, becomes
/// `violation(message)`.
pub fn expand<S, E>(
    messages: S,
    incoming: Arc<OnceLock<Incoming>>,
    violation: impl Fn(String) -> E + Send + 'static,
) -> impl Stream<Item = Result<FlightData, E>> + Send + 'static
where
    S: Stream<Item = Result<FlightData, E>> + Send + 'static,
    E: Send + 'static,
{
    messages.flat_map(move |m| {
        let out: Vec<Result<FlightData, E>> = match m {
            Err(e) => vec![Err(e)],
            Ok(data) if names_a_slot_beside_its_data(&data) => vec![Err(violation(
                "a message carries its IPC data and names a slot of shared memory too".into(),
            ))],
            Ok(data) => match incoming.get() {
                Some(i) => match i.expand(data) {
                    Ok(v) => v.into_iter().map(Ok).collect(),
                    Err(m) => vec![Err(violation(m))],
                },
                None if shared_memory_envelope(&data).is_some() => vec![Err(violation(
                    "a message names a slot of shared memory, but none was shared".into(),
                ))],
                None => vec![Ok(data)],
            },
        };
        futures::stream::iter(out)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shm::ShmWriter;
    use arrow_array::RecordBatch;

    fn pair() -> (Arc<Mapping>, Arc<Mutex<Slots>>, Slots) {
        let (m, _path) = Mapping::create(4 << 20).unwrap();
        (
            Arc::new(m),
            Arc::new(Mutex::new(Slots::new(0, 2 << 20))),
            Slots::new(2 << 20, 2 << 20),
        )
    }

    /// Decodes like the Flight decoder: dictionaries are kept between batches.
    fn decode(
        schema: &arrow_schema::SchemaRef,
        dicts: &mut std::collections::HashMap<i64, arrow_array::ArrayRef>,
        messages: Vec<FlightData>,
    ) -> Vec<RecordBatch> {
        let mut out = Vec::new();
        for m in messages {
            let msg = arrow_ipc::root_as_message(&m.data_header).unwrap();
            match msg.header_type() {
                arrow_ipc::MessageHeader::DictionaryBatch => {
                    let d = msg.header_as_dictionary_batch().unwrap();
                    arrow_ipc::reader::read_dictionary(
                        &arrow_buffer::Buffer::from(m.data_body.clone()),
                        d,
                        schema,
                        dicts,
                        &msg.version(),
                    )
                    .unwrap();
                }
                // as arrow-flight's decoder does: the body itself, not a copy
                _ => out.push(
                    arrow_ipc::reader::read_record_batch(
                        &arrow_buffer::Buffer::from(m.data_body.clone()),
                        msg.header_as_record_batch().unwrap(),
                        Arc::clone(schema),
                        dicts,
                        None,
                        &msg.version(),
                    )
                    .unwrap(),
                ),
            }
        }
        out
    }

    /// Every type of the kit's zoo goes through a slot and back unchanged,
    /// in place and copied, and each slot is released exactly once.
    #[test]
    fn the_type_zoo_round_trips_through_a_slot() {
        let zoo = crate::conformance::type_zoo(300);
        for in_place in [true, false] {
            let (mapping, ours, _) = pair();
            let mut w = ShmWriter::new(Arc::clone(&mapping), Arc::clone(&ours), zoo.schema());
            let released = Arc::new(Mutex::new(Vec::new()));
            let counter = Arc::clone(&released);
            let writer_slots = Arc::clone(&ours);
            let incoming = Incoming::new(
                Arc::clone(&mapping),
                Slots::new(0, 2 << 20),
                Arc::new(Mutex::new(Slots::new(2 << 20, 2 << 20))),
                // the release reaches the writer
                Arc::new(move |slot| {
                    writer_slots.lock().unwrap().free(slot).unwrap();
                    counter.lock().unwrap().push(slot);
                }),
                in_place,
            );
            let mut dicts = std::collections::HashMap::new();
            for seq in 0..3 {
                let slot = w.write(&zoo).unwrap().expect("a free slot");
                let mut e = Envelope::new(Kind::Batch, 1, seq);
                e.shm = Some(slot);
                let data = crate::codec::control_message(&e);
                let before = released.lock().unwrap().len();
                let messages = incoming.expand(data).unwrap();
                assert!(!messages.last().unwrap().app_metadata.is_empty());
                let batches = decode(&zoo.schema(), &mut dicts, messages);
                assert_eq!(batches, vec![zoo.clone()]);
                // copied: given back at once; in place: the arrays still read it
                let given_back = released.lock().unwrap()[before..].to_vec();
                assert_eq!(
                    given_back.contains(&slot),
                    !in_place,
                    "{slot:?} {given_back:?} in place {in_place} seq {seq}"
                );
                drop(batches);
            }
            // a slot may also hold dictionaries, which the decoder keeps
            drop(dicts);
            assert_eq!(released.lock().unwrap().len(), 3);
            assert_eq!(ours.lock().unwrap().in_use(), 0);
        }
    }

    /// A batch is in its message or in a slot, never both; a plain
    /// message passes, shared memory or not.
    #[tokio::test]
    async fn a_message_with_its_data_and_a_slot_is_a_violation() {
        use futures::StreamExt;
        let zoo = crate::conformance::type_zoo(3);
        let mut encoder = crate::codec::BatchEncoder::new();
        let _ = encoder.schema_message(&zoo.schema());
        let mut e = Envelope::new(Kind::Batch, 1, 0);
        let plain = encoder.batch_messages(&zoo, &e).unwrap();
        e.shm = Some(SlotRef {
            offset: 2 << 20,
            length: 64,
        });
        let both = encoder.batch_messages(&zoo, &e).unwrap();
        for shared in [false, true] {
            let incoming = Arc::new(OnceLock::new());
            if shared {
                let (mapping, ours, peer) = pair();
                let _ = incoming.set(Incoming::new(mapping, peer, ours, Arc::new(|_| {}), true));
            }
            let run = |messages: Vec<FlightData>| {
                let stream = futures::stream::iter(messages.into_iter().map(Ok::<_, String>));
                expand(stream, Arc::clone(&incoming), |m| m).collect::<Vec<_>>()
            };
            let out = run(plain.clone()).await;
            assert!(out.iter().all(Result::is_ok), "{out:?}");
            let out = run(both.clone()).await;
            let last = out.last().unwrap().as_ref().unwrap_err();
            assert!(last.contains("names a slot of shared memory too"), "{last}");
        }
    }

    #[test]
    fn a_batch_larger_than_the_half_is_left_to_flight() {
        let (mapping, ours, _) = pair();
        let big = crate::conformance::type_zoo(60_000);
        let mut w = ShmWriter::new(mapping, Arc::clone(&ours), big.schema());
        assert!(big.get_array_memory_size() > 2 << 20);
        assert_eq!(w.write(&big).unwrap(), None);
        assert_eq!(ours.lock().unwrap().in_use(), 0);
    }

    /// One message of a peer, as the sequence property below draws them.
    #[derive(Debug, Clone)]
    enum Peer {
        /// A batch written into a slot of the peer's half, named rightly.
        Batch,
        /// A batch message naming any range.
        Named(u64, u64),
        /// The release of one of our slots in use (by index), or of a slot
        /// it already gave back.
        Release(proptest::sample::Index),
        /// A release of any range.
        ReleaseAny(u64, u64),
        /// A message carrying its own IPC data, or only an envelope.
        Flight(Kind),
    }

    fn peer_message() -> impl proptest::strategy::Strategy<Value = Peer> {
        use proptest::prelude::*;
        let kind = proptest::sample::select(vec![Kind::Ack, Kind::End, Kind::Flushed]);
        prop_oneof![
            3 => Just(Peer::Batch),
            1 => (0u64..(4 << 20), 0u64..8192).prop_map(|(o, l)| Peer::Named(o, l)),
            3 => any::<proptest::sample::Index>().prop_map(Peer::Release),
            1 => (0u64..(4 << 20), 0u64..8192).prop_map(|(o, l)| Peer::ReleaseAny(o, l)),
            1 => kind.prop_map(Peer::Flight),
        ]
    }

    /// Takes the slots given back since the last call: each must be one
    /// read and not given back before; it goes back to the peer's writer.
    fn settle(
        given_back: &Mutex<Vec<SlotRef>>,
        outstanding: &mut Vec<SlotRef>,
        peer_slots: &Mutex<Slots>,
    ) -> Result<(), proptest::test_runner::TestCaseError> {
        for slot in std::mem::take(&mut *given_back.lock().unwrap()) {
            let Some(i) = outstanding.iter().position(|s| *s == slot) else {
                return Err(proptest::test_runner::TestCaseError::fail(format!(
                    "{slot:?} given back twice, or never read"
                )));
            };
            outstanding.swap_remove(i);
            peer_slots.lock().unwrap().free(slot).unwrap();
        }
        Ok(())
    }

    proptest::proptest! {
        /// Any sequence of a peer's messages, in place or copied: a batch in
        /// its slot comes out as the batch, and its slot is given back
        /// exactly once; a release frees exactly the slot of ours it names,
        /// once; a misnamed slot is an error; other messages pass as they
        /// are; nothing panics.
        #[test]
        fn any_sequence_of_messages_keeps_the_slots_right(
            messages in proptest::collection::vec(peer_message(), 1..60),
            in_place in proptest::prelude::any::<bool>(),
        ) {
            let (mapping, ours, peer) = pair();
            let zoo = crate::conformance::type_zoo(7);
            let peer_slots = Arc::new(Mutex::new(Slots::new(2 << 20, 2 << 20)));
            let mut writer = ShmWriter::new(Arc::clone(&mapping), Arc::clone(&peer_slots), zoo.schema());
            let given_back = Arc::new(Mutex::new(Vec::<SlotRef>::new()));
            let log = Arc::clone(&given_back);
            let incoming = Incoming::new(
                Arc::clone(&mapping),
                peer,
                Arc::clone(&ours),
                Arc::new(move |slot| log.lock().unwrap().push(slot)),
                in_place,
            );
            // our slots the peer holds, and those it gave back
            let mut lent: Vec<SlotRef> = (0..4).filter_map(|_| ours.lock().unwrap().alloc(1000)).collect();
            let mut returned: Vec<SlotRef> = Vec::new();
            let mut written = 0usize;
            // the peer's slots read and not given back yet; the decoder's
            // dictionaries, kept between batches as arrow-flight keeps them
            let mut outstanding: Vec<SlotRef> = Vec::new();
            let mut dicts = std::collections::HashMap::new();
            for (seq, m) in messages.into_iter().enumerate() {
                let envelope = |kind: Kind, slot: Option<SlotRef>| {
                    let mut e = Envelope::new(kind, 1, seq as u64);
                    e.shm = slot;
                    crate::codec::control_message(&e)
                };
                match m {
                    Peer::Batch => {
                        let Some(slot) = writer.write(&zoo).unwrap() else { continue };
                        written += 1;
                        let out = incoming.expand(envelope(Kind::Batch, Some(slot)));
                        let out = out.map_err(proptest::test_runner::TestCaseError::fail)?;
                        proptest::prop_assert!(out.last().is_some_and(|d| !d.app_metadata.is_empty()));
                        proptest::prop_assert_eq!(decode(&zoo.schema(), &mut dicts, out), vec![zoo.clone()]);
                        outstanding.push(slot);
                        if !in_place {
                            proptest::prop_assert_eq!(given_back.lock().unwrap().clone(), vec![slot]);
                        }
                    }
                    Peer::Named(offset, length) => {
                        let slot = SlotRef { offset, length };
                        // a range outside the peer's half is refused; inside
                        // it, bytes that are not a batch are refused as well
                        let read = incoming.peer.contains(slot);
                        if incoming.expand(envelope(Kind::Batch, Some(slot))).is_ok() {
                            proptest::prop_assert!(read);
                        }
                        // a slot in the peer's half was read, whatever it
                        // held, and is given back at once; outside, nothing is
                        let back = std::mem::take(&mut *given_back.lock().unwrap());
                        proptest::prop_assert_eq!(back, if read { vec![slot] } else { vec![] });
                    }
                    Peer::Release(pick) => {
                        let all: Vec<SlotRef> = lent.iter().chain(&returned).copied().collect();
                        if all.is_empty() { continue }
                        let slot = all[pick.index(all.len())];
                        let out = incoming.expand(envelope(Kind::Release, Some(slot)));
                        if let Some(i) = lent.iter().position(|s| *s == slot) {
                            proptest::prop_assert_eq!(out.map(|v| v.len()), Ok(0));
                            returned.push(lent.swap_remove(i));
                        } else {
                            proptest::prop_assert!(out.is_err(), "a slot given back twice");
                        }
                    }
                    Peer::ReleaseAny(offset, length) => {
                        let slot = SlotRef { offset, length };
                        if incoming.expand(envelope(Kind::Release, Some(slot))).is_ok() {
                            let i = lent.iter().position(|s| *s == slot);
                            proptest::prop_assert!(i.is_some(), "freed {:?}, never lent", slot);
                            if let Some(i) = i { returned.push(lent.swap_remove(i)); }
                        }
                    }
                    Peer::Flight(kind) => {
                        let data = envelope(kind, None);
                        let out = incoming.expand(data.clone()).unwrap();
                        proptest::prop_assert_eq!(out, vec![data]);
                    }
                }
                proptest::prop_assert_eq!(ours.lock().unwrap().in_use(), lent.len());
                settle(&given_back, &mut outstanding, &peer_slots)?;
            }
            // the decoder's dictionaries read the slot they came in
            drop(dicts);
            settle(&given_back, &mut outstanding, &peer_slots)?;
            proptest::prop_assert!(outstanding.is_empty(), "never given back: {:?}", outstanding);
            proptest::prop_assert_eq!(peer_slots.lock().unwrap().in_use(), 0, "{} written", written);
        }
    }

    proptest::proptest! {
        /// Whatever a peer writes into its slot and however it names it,
        /// expanding it returns messages or an error, never panics.
        #[test]
        fn any_slot_contents_expand_or_are_refused(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512), offset in 0u64..(4 << 20), length in 0u64..4096, mutate in proptest::prelude::any::<bool>()) {
            let (mapping, _ours, peer) = pair();
            let zoo = crate::conformance::type_zoo(5);
            let peer_slots = Arc::new(Mutex::new(Slots::new(2 << 20, 2 << 20)));
            let mut w = ShmWriter::new(Arc::clone(&mapping), Arc::clone(&peer_slots), zoo.schema());
            let mut slot = w.write(&zoo).unwrap().unwrap();
            if mutate {
                // a real slot with some of its bytes overwritten
                let p = mapping.slot_ptr(slot.offset, slot.length).unwrap();
                let n = bytes.len().min(slot.length as usize);
                unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), p, n) };
            } else {
                slot = SlotRef { offset, length };
            }
            let incoming = Incoming::new(Arc::clone(&mapping), peer, Arc::new(Mutex::new(Slots::new(0, 2 << 20))), Arc::new(|_| {}), true);
            let mut e = Envelope::new(Kind::Batch, 1, 0);
            e.shm = Some(slot);
            if let Ok(messages) = incoming.expand(crate::codec::control_message(&e)) {
                let mut dicts = std::collections::HashMap::new();
                for m in messages {
                    // decoding may fail; it must not panic
                    if let Ok(msg) = arrow_ipc::root_as_message(&m.data_header)
                        && let Some(d) = msg.header_as_dictionary_batch() {
                        let _ = arrow_ipc::reader::read_dictionary(&arrow_buffer::Buffer::from(m.data_body.clone()), d, &zoo.schema(), &mut dicts, &msg.version());
                    } else {
                        let _ = arrow_flight::utils::flight_data_to_arrow_batch(&m, zoo.schema(), &dicts);
                    }
                }
            }
        }
    }
}
