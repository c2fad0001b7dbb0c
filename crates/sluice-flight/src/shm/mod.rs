//! The shared-memory path for child stages (docs/protocol.md, section 8).
//!
//! Over Flight a batch is copied about six times each way (IPC encoding,
//! protobuf framing, HTTP/2 frames, the kernel on both sides, decoding).
//! When the stage is the engine's child and its manifest says
//! `shared_memory`, the engine creates one memory file per exchange
//! ([`memory`]) and offers it in the open request; each side then writes
//! the IPC messages of a batch straight into a slot of its half of that
//! file ([`writer`]) and sends, over the Flight stream that stays the
//! control channel, only the envelope with the slot's place (`shm`). The
//! receiver reads the batch where it lies ([`reader`]) and gives the slot
//! back with a `release` message. A batch that finds no free slot large
//! enough goes over Flight as before, so nothing waits for memory.
//!
//! Who copies what: the engine writes its input batch into its half (one
//! copy); the stage decodes it in place, without a copy, and the SDK gives
//! the slot back only when the last array referencing it is dropped; the
//! stage writes its output into its half (one copy); the engine copies the
//! output out before decoding it (one copy), because it never decodes memory
//! the stage could still write.
//!
//! Whom the stage trusts: only the process on the other end of its unix
//! socket, and only a memory file that process holds, sealed against
//! shrinking (a peer that could shrink it would turn the other side's next
//! read into SIGBUS).

mod memory;
mod reader;
mod slots;
mod writer;

pub use memory::Mapping;
pub use reader::{Incoming, Release, expand};
pub use slots::Slots;
pub use writer::ShmWriter;

use serde::{Deserialize, Serialize};

/// What the engine offers in the open request (`shared_memory`): a file the
/// stage opens and maps, the engine's half first, the stage's half from
/// `stage_offset`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Offer {
    /// The file to open read-write and map shared (`/proc/<pid>/fd/<n>`
    /// of the engine's memfd).
    pub path: String,
    /// Bytes to map from the file's start.
    pub size: u64,
    /// Where the stage's half starts; the engine's is `[0, stage_offset)`.
    pub stage_offset: u64,
}

/// A slot of the shared memory: where a batch's IPC messages lie, or which
/// slot a `release` gives back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlotRef {
    /// Bytes from the start of the file (a multiple of [`ALIGNMENT`]).
    pub offset: u64,
    /// Bytes the slot holds.
    pub length: u64,
}

/// Slots start on 64-byte boundaries, the alignment Arrow's buffers want:
/// the arrays decoded in place need no realignment.
pub const ALIGNMENT: u64 = 64;

/// Bytes of one exchange's memory file, both halves; pages are only
/// allocated when touched, and slots are reused lowest first.
pub const DEFAULT_SIZE: u64 = 512 << 20;

/// The two halves of an exchange's memory, from the offer.
pub(crate) fn halves(offer: &Offer) -> Result<(Slots, Slots), String> {
    if offer.size == 0
        || offer.stage_offset == 0
        || offer.stage_offset >= offer.size
        || !offer.stage_offset.is_multiple_of(ALIGNMENT)
    {
        return Err(format!(
            "shared memory of {} bytes with the stage's half at {}: the halves must be non-empty and aligned to {ALIGNMENT}",
            offer.size, offer.stage_offset
        ));
    }
    Ok((
        Slots::new(0, offer.stage_offset),
        Slots::new(offer.stage_offset, offer.size - offer.stage_offset),
    ))
}

/// An exchange's shared memory as one side uses it: what it writes its
/// batches with, and how it reads the peer's.
#[derive(Debug)]
pub struct Side {
    /// Writes this side's batches into its half.
    pub writer: ShmWriter,
    /// Reads the peer's batches and takes its releases.
    pub incoming: Incoming,
}

/// The engine's side: a new memory file and the offer for the open request.
/// The engine copies the stage's batches out before decoding them.
pub fn engine_side(
    schema: arrow_schema::SchemaRef,
    release: reader::Release,
) -> std::io::Result<(Offer, Side)> {
    let (mapping, path) = Mapping::create(DEFAULT_SIZE)?;
    let offer = Offer {
        path,
        size: DEFAULT_SIZE,
        stage_offset: DEFAULT_SIZE / 2,
    };
    let (engine, stage) = halves(&offer).map_err(std::io::Error::other)?;
    Ok((offer, side(mapping, engine, stage, schema, release, false)))
}

/// The stage's side of the engine's offer, from `peer`, the process on the
/// other end of the stage's unix socket. The stage decodes the engine's
/// batches in place.
pub fn stage_side(
    offer: &Offer,
    peer: i32,
    schema: arrow_schema::SchemaRef,
    release: reader::Release,
) -> Result<Side, String> {
    let (engine, stage) = halves(offer)?;
    let mapping = Mapping::open(&offer.path, peer, offer.size).map_err(|e| {
        format!(
            "cannot map the engine's shared memory `{}`: {e}",
            offer.path
        )
    })?;
    Ok(side(mapping, stage, engine, schema, release, true))
}

fn side(
    mapping: Mapping,
    own: Slots,
    peer: Slots,
    schema: arrow_schema::SchemaRef,
    release: reader::Release,
    in_place: bool,
) -> Side {
    let mapping = std::sync::Arc::new(mapping);
    let own = std::sync::Arc::new(std::sync::Mutex::new(own));
    Side {
        writer: ShmWriter::new(
            std::sync::Arc::clone(&mapping),
            std::sync::Arc::clone(&own),
            schema,
        ),
        incoming: Incoming::new(mapping, peer, own, release, in_place),
    }
}

/// The `release` message giving `slot` back. Releases do not count in
/// `seq`: the stage's `in_seq` names the engine's batches by it.
pub fn release_message(epoch: u64, slot: SlotRef) -> arrow_flight::FlightData {
    let mut e = crate::envelope::Envelope::new(crate::envelope::Kind::Release, epoch, 0);
    e.shm = Some(slot);
    crate::codec::control_message(&e)
}
