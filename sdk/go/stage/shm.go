package stage

// The shared-memory path (protocol.md section 8). When the engine starts the
// stage as its child and offers shared memory in the open request, the
// engine writes each input batch's IPC messages into a slot of its half of
// one memory file, and sends only the envelope naming the slot. The SDK
// decodes the batch where it lies, without a copy, and gives the slot back
// ("release") once the last buffer of it is released: a Processor that
// Retains an input record keeps its slot, and its bytes, for as long as it
// holds it. Output goes the same way through the stage's half; the engine
// copies it out and releases it. A batch that finds no free slot goes over
// Flight, so nothing waits for memory.

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"sort"
	"sync"
	"sync/atomic"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/flight"
	"github.com/apache/arrow-go/v18/arrow/ipc"
	"github.com/apache/arrow-go/v18/arrow/memory"
	"google.golang.org/grpc/credentials"

	"github.com/sluice-etl/sluice/sdk/go/internal/envelope"
)

// shmOffer is the open request's "shared_memory".
type shmOffer struct {
	Path        string `json:"path"`
	Size        uint64 `json:"size"`
	StageOffset uint64 `json:"stage_offset"`
}

// shmAlignment is where slots start: the alignment Arrow's buffers want.
const shmAlignment = 64

func alignUp(n uint64) uint64 { return (n + shmAlignment - 1) &^ (shmAlignment - 1) }

// slots hands out ranges of one half, lowest free first.
type slots struct {
	start, end uint64
	used       map[uint64]uint64 // offset → aligned length
}

func (s *slots) contains(sl envelope.Slot) bool {
	return sl.Offset >= s.start && sl.Offset <= s.end && sl.Length <= s.end-sl.Offset
}

func (s *slots) alloc(want uint64) (envelope.Slot, bool) {
	want = alignUp(max(want, 1))
	offsets := make([]uint64, 0, len(s.used))
	for o := range s.used {
		offsets = append(offsets, o)
	}
	sort.Slice(offsets, func(i, j int) bool { return offsets[i] < offsets[j] })
	at := s.start
	for _, o := range offsets {
		if o-at >= want {
			break
		}
		at = alignUp(o + s.used[o])
	}
	if at > s.end || want > s.end-at {
		return envelope.Slot{}, false
	}
	s.used[at] = want
	return envelope.Slot{Offset: at, Length: want}, true
}

func (s *slots) shrink(sl envelope.Slot, keep uint64) {
	if l, ok := s.used[sl.Offset]; ok && alignUp(max(keep, 1)) < l {
		s.used[sl.Offset] = alignUp(max(keep, 1))
	}
}

func (s *slots) free(sl envelope.Slot) error {
	if l, ok := s.used[sl.Offset]; ok && alignUp(sl.Length) == l {
		delete(s.used, sl.Offset)
		return nil
	}
	return fmt.Errorf("a release of %d bytes at %d, which is not a slot in use", sl.Length, sl.Offset)
}

// peerInfo is the AuthInfo of a plaintext connection (peerCredentials, on
// Linux); pid is the process on the other end of a unix socket, 0 when
// unknown (TCP).
type peerInfo struct {
	credentials.CommonAuthInfo
	pid int32
}

func (peerInfo) AuthType() string { return "insecure" }

func plainInfo() peerInfo {
	return peerInfo{CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.NoSecurity}}
}

// sharedMemory is one exchange's shared memory, on the stage's side.
type sharedMemory struct {
	data   []byte
	engine slots // the engine's half: where its batches must lie

	mu       sync.Mutex
	own      slots           // this stage's half
	released []envelope.Slot // engine slots whose buffers are all released, to give back

	// refs counts the exchange and every slot still read in place; the
	// memory is unmapped when it drops to zero.
	refs atomic.Int64

	// inPlace: the engine's batches are read where they lie (WithInPlaceInput);
	// otherwise each is copied to the Go heap and its slot given back at once
	inPlace bool
}

// openSharedMemory maps the memory the engine (process peer) offers.
func openSharedMemory(o *shmOffer, peer int32, inPlace bool) (*sharedMemory, error) {
	if o.Size > 1<<40 || o.Size > uint64(math.MaxInt) {
		// more than this process could map (or than any engine offers)
		return nil, Fatal(InvalidArgument, "open request: shared memory of %d bytes: more than this stage can map", o.Size)
	}
	if o.Size == 0 || o.StageOffset == 0 || o.StageOffset >= o.Size || o.StageOffset%shmAlignment != 0 {
		return nil, Fatal(InvalidArgument, "open request: shared memory of %d bytes with the stage's half at %d: the halves must be non-empty and aligned to %d", o.Size, o.StageOffset, shmAlignment)
	}
	data, err := mapFile(o.Path, peer, o.Size)
	if err != nil {
		return nil, Fatal(InvalidArgument, "cannot map the engine's shared memory %q: %v (a stage in another container or on another machine cannot: set shared_memory = false on the stage in the pipeline)", o.Path, err)
	}
	s := &sharedMemory{
		data:   data,
		engine: slots{start: 0, end: o.StageOffset},
		own:    slots{start: o.StageOffset, end: o.Size, used: map[uint64]uint64{}},

		inPlace: inPlace,
	}
	s.refs.Store(1)
	return s, nil
}

// acquire takes a reference unless the memory is already unmapped: the
// input goroutine may still read a message after the exchange has ended.
func (s *sharedMemory) acquire() bool {
	for {
		n := s.refs.Load()
		if n <= 0 {
			return false
		}
		if s.refs.CompareAndSwap(n, n+1) {
			return true
		}
	}
}

func (s *sharedMemory) unref() {
	if s.refs.Add(-1) == 0 {
		_ = unmap(s.data)
	}
}

// close drops the exchange's reference.
func (s *sharedMemory) close() { s.unref() }

// takeReleased returns the engine slots to give back now.
func (s *sharedMemory) takeReleased() []envelope.Slot {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.released
	s.released = nil
	return r
}

// free takes the engine's release of one of the stage's slots.
func (s *sharedMemory) free(sl envelope.Slot) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.own.free(sl); err != nil {
		return Fatal(InvalidArgument, "%v", err)
	}
	return nil
}

// lease is the allocator of the buffers read in place from one slot: when
// the last of them is released, the slot goes back to the engine.
type lease struct {
	s       *sharedMemory
	slot    envelope.Slot
	buffers atomic.Int32
}

func (l *lease) Allocate(n int) []byte { return make([]byte, n) }
func (l *lease) Reallocate(n int, b []byte) []byte {
	out := make([]byte, n)
	copy(out, b)
	return out
}
func (l *lease) Free([]byte) {
	if l.buffers.Add(-1) == 0 {
		l.s.giveBack(l.slot)
		l.s.unref()
	}
}

// giveBack queues the release of an engine slot nothing reads any more.
func (s *sharedMemory) giveBack(sl envelope.Slot) {
	s.mu.Lock()
	s.released = append(s.released, sl)
	s.mu.Unlock()
}

// frame is one IPC message read from a slot.
type frame struct {
	meta []byte
	body *memory.Buffer // read in place: releasing it frees the slot
}

// frames splits a slot into its IPC stream messages: dictionaries, then one
// record batch, read in place or from a copy (the slot then goes back at
// once).
func (s *sharedMemory) frames(sl envelope.Slot) ([]frame, error) {
	if !s.acquire() {
		return nil, Fatal(Internal, "a batch in shared memory after the exchange ended")
	}
	defer s.unref() // each frame's buffer holds its own reference from here on
	if !s.engine.contains(sl) || sl.Offset+sl.Length > uint64(len(s.data)) {
		return nil, Fatal(InvalidArgument, "a batch in shared memory at %d (%d bytes), outside the engine's half", sl.Offset, sl.Length)
	}
	b := s.data[sl.Offset : sl.Offset+sl.Length]
	if !s.inPlace {
		// Go strings and slices taken from arrays point into their buffers
		// and keep them alive; memory the engine reuses cannot be kept alive
		b = bytes.Clone(b)
		s.giveBack(sl)
	}
	type raw struct{ meta, body []byte }
	var msgs []raw
	record := false
	for at := 0; at < len(b); {
		if len(b)-at < 8 {
			return nil, Fatal(InvalidArgument, "a batch in shared memory: %d stray bytes at %d", len(b)-at, at)
		}
		if binary.LittleEndian.Uint32(b[at:]) != 0xFFFFFFFF {
			return nil, Fatal(InvalidArgument, "a batch in shared memory: no continuation marker at byte %d", at)
		}
		n := int64(int32(binary.LittleEndian.Uint32(b[at+4:])))
		start := at + 8
		if n <= 0 || n > int64(len(b)-start) {
			return nil, Fatal(InvalidArgument, "a batch in shared memory: metadata of %d bytes at byte %d", n, at)
		}
		meta := b[start : start+int(n)]
		bodyLen, typ, err := readMeta(meta)
		if err != nil {
			return nil, Fatal(InvalidArgument, "a batch in shared memory: the metadata at byte %d: %v", at, err)
		}
		end := start + int(n)
		if bodyLen < 0 || bodyLen > int64(len(b)-end) {
			return nil, Fatal(InvalidArgument, "a batch in shared memory: a body of %d bytes at byte %d, past the slot's end", bodyLen, end)
		}
		last := typ == ipc.MessageRecordBatch
		record = last
		if !last && typ != ipc.MessageDictionaryBatch {
			return nil, Fatal(InvalidArgument, "a batch in shared memory holds a %v message; want dictionaries, then one record batch", typ)
		}
		msgs = append(msgs, raw{meta: meta, body: b[end : end+int(bodyLen)]})
		at = end + int(bodyLen)
		if last && at != len(b) {
			return nil, Fatal(InvalidArgument, "a batch in shared memory: %d bytes after the record batch", len(b)-at)
		}
	}
	if !record { // dictionaries alone would leave the batch's envelope unanswered
		return nil, Fatal(InvalidArgument, "a batch in shared memory without its record batch")
	}
	out := make([]frame, len(msgs))
	if !s.inPlace {
		for i, m := range msgs {
			out[i] = frame{meta: m.meta, body: memory.NewBufferBytes(m.body)}
		}
		return out, nil
	}
	l := &lease{s: s, slot: sl}
	l.buffers.Store(int32(len(msgs)))
	s.refs.Add(1)
	for i, m := range msgs {
		out[i] = frame{meta: m.meta, body: memory.NewBufferWithAllocator(m.body, l)}
	}
	return out, nil
}

// readMeta reads a message's body length and type. The flatbuffers runtime
// does not verify its input and panics on bytes that are not a message:
// that panic is an error here.
func readMeta(meta []byte) (bodyLen int64, typ ipc.MessageType, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("not an IPC message (%v)", r)
		}
	}()
	m := ipc.NewMessage(memory.NewBufferBytes(meta), memory.NewBufferBytes(nil))
	defer m.Release()
	return m.BodyLen(), m.Type(), nil
}

// messageReader is what the IPC reader reads the input from: the Flight
// messages, with each batch in shared memory expanded into its IPC
// messages, read in place. It remembers the descriptor (the open request)
// and the latest batch's app_metadata (its envelope).
type messageReader struct {
	in      *inputStream
	pending []frame
	pendMD  []byte // the envelope, for the last pending frame
	msg     *ipc.Message
	refs    atomic.Int64

	descriptor  *flight.FlightDescriptor
	appMetadata []byte
}

func newMessageReader(in *inputStream) *messageReader {
	r := &messageReader{in: in}
	r.refs.Store(1)
	return r
}

func (r *messageReader) Message() (*ipc.Message, error) {
	if r.msg != nil {
		r.msg.Release() // the reader is done with it; its arrays hold their own references
		r.msg = nil
	}
	if len(r.pending) == 0 {
		fd, err := r.in.Recv()
		if err != nil {
			r.appMetadata = nil
			return nil, err
		}
		if d := fd.GetFlightDescriptor(); d != nil {
			r.descriptor = d
		}
		slot := r.in.slot
		if slot == nil {
			r.appMetadata = fd.GetAppMetadata()
			r.msg = ipc.NewMessage(memory.NewBufferBytes(fd.GetDataHeader()), memory.NewBufferBytes(fd.GetDataBody()))
			return r.msg, nil
		}
		if r.pending, err = r.in.shm.frames(*slot); err != nil {
			return nil, err
		}
		r.pendMD = fd.GetAppMetadata()
	}
	f := r.pending[0]
	r.pending = r.pending[1:]
	r.appMetadata = nil
	if len(r.pending) == 0 {
		r.appMetadata = r.pendMD
	}
	r.msg = ipc.NewMessage(memory.NewBufferBytes(f.meta), f.body)
	f.body.Release() // the message holds it now
	return r.msg, nil
}

func (r *messageReader) Retain() { r.refs.Add(1) }

func (r *messageReader) Release() {
	if r.refs.Add(-1) == 0 {
		if r.msg != nil {
			r.msg.Release()
			r.msg = nil
		}
		for _, f := range r.pending {
			f.body.Release()
		}
		r.pending = nil
	}
}

// errSlotFull stops the IPC writer when a batch is larger than its slot.
var errSlotFull = errors.New("the slot is full")

// slotWriter writes the stage's output batches into its half: the IPC
// writer's messages (the schema left out: it went over Flight) go straight
// into the slot, one copy of each buffer.
type slotWriter struct {
	s      *sharedMemory
	schema *arrow.Schema
	mem    memory.Allocator
	w      *ipc.Writer // nil: start again, with the dictionaries (after a batch over Flight)

	buf     []byte // the current slot
	written int
}

func (p *slotWriter) Start() error { return nil }
func (p *slotWriter) Close() error { return nil }

func (p *slotWriter) WritePayload(pl ipc.Payload) error {
	meta := pl.Meta()
	typ := messageType(meta.Bytes())
	meta.Release()
	if typ == ipc.MessageSchema {
		return nil
	}
	_, err := pl.WritePayload(p)
	return err
}

func (p *slotWriter) Write(b []byte) (int, error) {
	if len(b) > len(p.buf)-p.written {
		return 0, errSlotFull
	}
	p.written += copy(p.buf[p.written:], b)
	return len(b), nil
}

// write puts rec into a free slot of the stage's half and returns it;
// ok is false when no free slot is large enough (send it over Flight).
func (p *slotWriter) write(rec arrow.RecordBatch) (slot envelope.Slot, ok bool, err error) {
	// the estimate of split.go (a slice counts its rows only), plus the
	// dictionaries, which go in the slot too
	size := uint64(recordSize(rec).total())
	for _, c := range rec.Columns() {
		size += uint64(dictionaryBytes(c.Data()))
	}
	bound := size + size/16 + 4096 + 512*uint64(len(rec.Schema().Fields())+1)
	p.s.mu.Lock()
	slot, ok = p.s.own.alloc(bound)
	p.s.mu.Unlock()
	if !ok {
		p.reset()
		return slot, false, nil
	}
	if p.w == nil {
		p.w = ipc.NewWriterWithPayloadWriter(p, ipc.WithSchema(p.schema), ipc.WithAllocator(p.mem))
	}
	p.buf, p.written = p.s.data[slot.Offset:slot.Offset+slot.Length], 0
	err = p.w.Write(rec)
	p.buf = nil
	p.s.mu.Lock()
	defer p.s.mu.Unlock()
	if err != nil {
		_ = p.s.own.free(slot)
		p.reset()
		if errors.Is(err, errSlotFull) {
			return slot, false, nil
		}
		return slot, false, err
	}
	p.s.own.shrink(slot, uint64(p.written))
	return envelope.Slot{Offset: slot.Offset, Length: uint64(p.written)}, true, nil
}

// reset forgets the dictionaries sent: the next batch sends them again.
func (p *slotWriter) reset() {
	if p.w != nil {
		_ = p.w.Close()
		p.w = nil
	}
}

var _ io.Writer = (*slotWriter)(nil)

// dictionaryBytes is the bytes of the dictionaries an array carries, at
// any depth.
func dictionaryBytes(d arrow.ArrayData) int64 {
	var n int64
	if dict := d.Dictionary(); d.DataType().ID() == arrow.DICTIONARY && dict != nil {
		n += dataSize(dict) + dictionaryBytes(dict)
	}
	for _, c := range d.Children() {
		n += dictionaryBytes(c)
	}
	return n
}
