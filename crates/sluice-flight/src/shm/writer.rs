//! Writing a batch's IPC messages straight into a slot of shared memory.

use std::io::{self, Write};
use std::sync::{Arc, Mutex};

use arrow_array::RecordBatch;
use arrow_ipc::writer::StreamWriter;
use arrow_schema::{ArrowError, SchemaRef};

use super::{Mapping, SlotRef, Slots};

/// Writes batches of one stream into this side's half: each batch's
/// dictionaries and record batch as IPC stream messages, one slot per batch.
/// Arrow's stream writer copies each buffer once, from the array into the
/// slot; the schema is not written (it went over Flight when the exchange
/// opened).
pub struct ShmWriter {
    mapping: Arc<Mapping>,
    slots: Arc<Mutex<Slots>>,
    schema: SchemaRef,
    /// Restarted after a batch that did not fit, so that the next one sends
    /// its dictionaries again: the batch in between went over Flight, and
    /// the receiver keeps one set of dictionaries for both paths.
    stream: Option<StreamWriter<SlotCursor>>,
}

impl std::fmt::Debug for ShmWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShmWriter")
            .field("slots", &self.slots)
            .finish_non_exhaustive()
    }
}

/// Where the stream writer writes: the current slot. Before the first slot
/// (while the writer writes the schema) it discards.
#[derive(Debug)]
struct SlotCursor {
    ptr: *mut u8,
    cap: usize,
    pos: usize,
    overflowed: bool,
}

// The pointer is into a mapping the `ShmWriter` keeps alive; the cursor is
// only used by the writer that owns it.
unsafe impl Send for SlotCursor {}

impl Write for SlotCursor {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.ptr.is_null() {
            return Ok(buf.len());
        }
        if self.cap - self.pos < buf.len() {
            self.overflowed = true;
            return Err(io::Error::new(io::ErrorKind::WriteZero, "the slot is full"));
        }
        // SAFETY: `[pos, pos + len)` lies inside the slot `ptr..ptr + cap`,
        // which this side was handed and nobody else writes
        unsafe { std::ptr::copy_nonoverlapping(buf.as_ptr(), self.ptr.add(self.pos), buf.len()) };
        self.pos += buf.len();
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A generous bound on a batch's IPC size: the bytes of its buffers as IPC
/// sends them ([`crate::codec::ipc_bytes`]), plus padding and metadata per
/// field. Not the memory size: that counts capacities, and an array decoded
/// in place from a slot has the whole slot as its buffer. A batch over the
/// bound overflows its slot and goes over Flight.
fn upper_bound(batch: &RecordBatch) -> u64 {
    let fields = batch.schema().flattened_fields().len() as u64 + 1;
    let bytes = crate::codec::ipc_bytes(batch) as u64;
    bytes + bytes / 16 + 4096 + fields * 512
}

impl ShmWriter {
    /// A writer into `slots` of `mapping` for batches of `schema`.
    pub fn new(mapping: Arc<Mapping>, slots: Arc<Mutex<Slots>>, schema: SchemaRef) -> Self {
        Self {
            mapping,
            slots,
            schema,
            stream: None,
        }
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, Slots> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes `batch` into a free slot and returns it, or `None` when no free
    /// slot is large enough: the caller sends the batch over Flight.
    pub fn write(&mut self, batch: &RecordBatch) -> Result<Option<SlotRef>, ArrowError> {
        let Some(slot) = self.slots().alloc(upper_bound(batch)) else {
            self.stream = None;
            return Ok(None);
        };
        let Some(ptr) = self.mapping.slot_ptr(slot.offset, slot.length) else {
            let _ = self.slots().free(slot);
            return Err(ArrowError::IpcError(format!(
                "slot {slot:?} lies outside the shared memory"
            )));
        };
        let stream = match &mut self.stream {
            Some(s) => s,
            none => none.insert(StreamWriter::try_new(
                SlotCursor {
                    ptr: std::ptr::null_mut(),
                    cap: 0,
                    pos: 0,
                    overflowed: false,
                },
                &self.schema,
            )?),
        };
        *stream.get_mut() = SlotCursor {
            ptr,
            cap: slot.length as usize,
            pos: 0,
            overflowed: false,
        };
        match stream.write(batch) {
            Ok(()) => {
                let written = stream.get_mut().pos as u64;
                self.slots().shrink(slot, written);
                Ok(Some(SlotRef {
                    offset: slot.offset,
                    length: written,
                }))
            }
            Err(e) => {
                let overflowed = stream.get_mut().overflowed;
                self.stream = None;
                let _ = self.slots().free(slot);
                if overflowed { Ok(None) } else { Err(e) }
            }
        }
    }
}
