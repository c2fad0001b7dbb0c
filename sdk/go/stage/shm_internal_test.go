//go:build linux

package stage

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/flight"
	"github.com/apache/arrow-go/v18/arrow/ipc"
	"github.com/apache/arrow-go/v18/arrow/memory"

	"github.com/sluice-etl/sluice/sdk/go/internal/envelope"
)

// Any sequence of allocations, shrinks and frees hands out aligned slots
// inside the half that never overlap; a slot freed twice is refused.
func TestSlotsNeverOverlap(t *testing.T) {
	for seed := range uint64(200) {
		r := rand.New(rand.NewPCG(seed, 1))
		s := slots{start: 640, end: 640 + 64*300, used: map[uint64]uint64{}}
		var live []envelope.Slot
		for range 200 {
			switch op := r.IntN(3); {
			case op == 0:
				sl, ok := s.alloc(uint64(1 + r.IntN(5000)))
				if !ok {
					continue
				}
				if sl.Offset%shmAlignment != 0 || !s.contains(sl) {
					t.Fatalf("seed %d: slot %+v", seed, sl)
				}
				for _, o := range live {
					if sl.Offset < o.Offset+o.Length && o.Offset < sl.Offset+sl.Length {
						t.Fatalf("seed %d: %+v overlaps %+v", seed, sl, o)
					}
				}
				live = append(live, sl)
			case op == 1 && len(live) > 0:
				i := r.IntN(len(live))
				keep := min(uint64(1+r.IntN(5000)), live[i].Length)
				s.shrink(live[i], keep)
				live[i].Length = min(alignUp(keep), live[i].Length)
			case len(live) > 0:
				i := r.IntN(len(live))
				sl := live[i]
				live = append(live[:i], live[i+1:]...)
				if err := s.free(sl); err != nil {
					t.Fatalf("seed %d: %v", seed, err)
				}
				if s.free(sl) == nil {
					t.Fatalf("seed %d: a slot freed twice", seed)
				}
			}
			if len(s.used) != len(live) {
				t.Fatalf("seed %d: %d slots in use, %d live", seed, len(s.used), len(live))
			}
		}
	}
}

// memfd makes a memory file of size bytes as the engine does (sealed at
// its size unless told not to) and returns its /proc path.
func memfd(t testing.TB, size int64, seal bool) string {
	t.Helper()
	fd, err := unix.MemfdCreate("test", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if err := unix.Ftruncate(fd, size); err != nil {
		t.Fatal(err)
	}
	if seal {
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, unix.F_SEAL_SHRINK|unix.F_SEAL_GROW|unix.F_SEAL_SEAL); err != nil {
			t.Fatal(err)
		}
	}
	return fmt.Sprintf("/proc/%d/fd/%d", os.Getpid(), fd)
}

// MemfdForTest is memfd for the tests of package stage_test.
var MemfdForTest = memfd

// EngineSlotForTest writes rec into the engine's half, [0, stageOffset), of
// the memory file at path (from memfd, size bytes), as the engine writes an
// input batch, and returns its slot: for the tests of package stage_test
// that send input through shared memory.
func EngineSlotForTest(t testing.TB, path string, size, stageOffset uint64, rec arrow.RecordBatch) envelope.Slot {
	t.Helper()
	s, err := openSharedMemory(&shmOffer{Path: path, Size: size, StageOffset: stageOffset}, int32(os.Getpid()), true)
	if err != nil {
		t.Fatal(err)
	}
	defer s.close() // the bytes stay in the file
	eng := &sharedMemory{data: s.data, own: slots{start: 0, end: stageOffset, used: map[uint64]uint64{}}}
	w := &slotWriter{s: eng, schema: rec.Schema(), mem: memory.NewGoAllocator()}
	defer w.reset()
	slot, ok, err := w.write(rec)
	if err != nil || !ok {
		t.Fatalf("writing the engine's slot: ok %v, %v", ok, err)
	}
	return slot
}

// testMemory maps a memory file standing in for the engine's, of 2 × half
// bytes, its batches read in place.
func testMemory(t testing.TB, half uint64) *sharedMemory {
	return testMemoryOf(t, half, true)
}

func testMemoryOf(t testing.TB, half uint64, inPlace bool) *sharedMemory {
	t.Helper()
	path := memfd(t, int64(2*half), true)
	s, err := openSharedMemory(&shmOffer{Path: path, Size: 2 * half, StageOffset: half}, int32(os.Getpid()), inPlace)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.close)
	return s
}

// Only a memory file of the peer, sealed at its size, is mapped: not one of
// another process, not a file with a name, not a memfd its owner could
// shrink under the mapping.
func TestOnlyASealedMemfdOfThePeerIsMapped(t *testing.T) {
	me := int32(os.Getpid())
	sealed := memfd(t, 1<<16, true)
	if _, err := mapFile(sealed, me+1, 1<<16); err == nil || !strings.Contains(err.Error(), "not a descriptor of the peer") {
		t.Fatalf("another process's file: %v", err)
	}
	fd := sealed[strings.LastIndex(sealed, "/")+1:]
	for _, p := range []string{"/proc/self/fd/" + fd, "/dev/fd/" + fd, sealed + "/../" + fd, "x/proc/" + fmt.Sprint(me) + "/fd/" + fd} {
		if _, err := mapFile(p, me, 1<<16); err == nil {
			t.Fatalf("%s mapped", p)
		}
	}
	named := filepath.Join(t.TempDir(), "shm")
	if err := os.WriteFile(named, make([]byte, 1<<16), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(named)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range []string{fmt.Sprintf("/proc/%d/fd/%d", me, f.Fd()), memfd(t, 1<<16, false)} {
		if _, err := mapFile(p, me, 1<<16); err == nil || !strings.Contains(err.Error(), "not a memfd sealed") {
			t.Fatalf("%s: %v", p, err)
		}
	}
	if _, err := mapFile(sealed, me, 1<<17); err == nil {
		t.Fatal("mapped past the file's end")
	}
	b, err := mapFile(sealed, me, 1<<16)
	if err != nil {
		t.Fatal(err)
	}
	unmap(b)
}

func testRecord(t testing.TB) arrow.RecordBatch {
	t.Helper()
	mem := memory.NewGoAllocator()
	schema := arrow.NewSchema([]arrow.Field{
		{Name: "id", Type: arrow.PrimitiveTypes.Int64},
		{Name: "name", Type: &arrow.DictionaryType{IndexType: arrow.PrimitiveTypes.Int32, ValueType: arrow.BinaryTypes.String}},
	}, nil)
	b := array.NewRecordBuilder(mem, schema)
	defer b.Release()
	for i := range 300 {
		b.Field(0).(*array.Int64Builder).Append(int64(i))
		if err := b.Field(1).(*array.BinaryDictionaryBuilder).AppendString([]string{"a", "bb", "ccc"}[i%3]); err != nil {
			t.Fatal(err)
		}
	}
	return b.NewRecordBatch()
}

// slotOfRecord writes the test record into the stage's half, then makes
// that half the engine's: the slot reads back as an engine's batch would.
func slotOfRecord(t testing.TB, s *sharedMemory) (arrow.RecordBatch, envelope.Slot) {
	t.Helper()
	rec := testRecord(t)
	t.Cleanup(rec.Release)
	w := &slotWriter{s: s, schema: rec.Schema(), mem: memory.NewGoAllocator()}
	t.Cleanup(w.reset)
	slot, ok, err := w.write(rec)
	if err != nil || !ok {
		t.Fatalf("write: %v %v", ok, err)
	}
	s.engine = s.own
	return rec, slot
}

// A record written into the stage's half reads back in place, equal, and
// its slot is released only when the last buffer reading it is.
func TestARecordGoesThroughASlotAndItsSlotComesBack(t *testing.T) {
	s := testMemory(t, 1<<20)
	rec, slot := slotOfRecord(t, s)
	got, rdr := readSlot(t, s, slot, rec.Schema())
	got.Retain()
	if !array.RecordEqual(got, rec) {
		t.Fatalf("got %v\nwant %v", got, rec)
	}
	rdr.Release()
	if r := s.takeReleased(); len(r) != 0 {
		t.Fatalf("released %v while a record reads the slot", r)
	}
	got.Release()
	if r := s.takeReleased(); len(r) != 1 || r[0] != slot {
		t.Fatalf("released %v, want [%v]", r, slot)
	}
}

// readSlot reads the record in slot as the input of an exchange would; the
// record is the reader's until it is released.
func readSlot(t *testing.T, s *sharedMemory, slot envelope.Slot, schema *arrow.Schema) (arrow.RecordBatch, *ipc.Reader) {
	t.Helper()
	frames, err := s.frames(slot)
	if err != nil {
		t.Fatal(err)
	}
	if len(frames) != 2 {
		t.Fatalf("%d messages, want a dictionary and a record batch", len(frames))
	}
	mr := newMessageReader(&inputStream{shm: s})
	mr.pending = frames
	payload := ipc.GetSchemaPayload(schema, memory.NewGoAllocator())
	meta := payload.Meta()
	rdr, err := ipc.NewReaderFromMessageReader(&prefixed{first: ipc.NewMessage(meta, memory.NewBufferBytes(nil)), rest: mr})
	if err != nil {
		t.Fatal(err)
	}
	if !rdr.Next() {
		t.Fatalf("no record: %v", rdr.Err())
	}
	return rdr.RecordBatch(), rdr
}

// Without WithInPlaceInput a batch is copied out of its slot, which goes
// back at once: the engine overwriting it changes nothing the stage holds,
// strings taken from the arrays included.
func TestACopiedBatchGivesItsSlotBackAtOnce(t *testing.T) {
	s := testMemoryOf(t, 1<<20, false)
	rec, slot := slotOfRecord(t, s)
	got, rdr := readSlot(t, s, slot, rec.Schema())
	defer rdr.Release()
	if r := s.takeReleased(); len(r) != 1 || r[0] != slot {
		t.Fatalf("released %v, want [%v] at once", r, slot)
	}
	name := got.Column(1).(*array.Dictionary).Dictionary().(*array.String).Value(1)
	for i := slot.Offset; i < slot.Offset+slot.Length; i++ {
		s.data[i] = 0xff // the engine reuses the slot
	}
	if !array.RecordEqual(got, rec) || name != "bb" {
		t.Fatalf("changed under the stage: %v (%q)", got, name)
	}
}

// A slot of dictionaries without the record batch they belong to is
// refused: its envelope would otherwise go unanswered.
func TestASlotOfDictionariesAloneIsRefused(t *testing.T) {
	s := testMemory(t, 1<<16)
	_, slot := slotOfRecord(t, s)
	b := s.data[slot.Offset:]
	n := int(binary.LittleEndian.Uint32(b[4:]))
	bodyLen, typ, err := readMeta(b[8 : 8+n])
	if err != nil || typ != ipc.MessageDictionaryBatch {
		t.Fatalf("first message: %v %v", typ, err)
	}
	dict := envelope.Slot{Offset: slot.Offset, Length: uint64(8+n) + uint64(bodyLen)}
	if _, err := s.frames(dict); err == nil || !strings.Contains(err.Error(), "without its record batch") {
		t.Fatalf("dictionaries alone: %v", err)
	}
}

// prefixed returns one message, then those of rest.
type prefixed struct {
	first *ipc.Message
	rest  *messageReader
}

func (p *prefixed) Message() (*ipc.Message, error) {
	if m := p.first; m != nil {
		p.first = nil
		return m, nil
	}
	return p.rest.Message()
}
func (p *prefixed) Retain()  {}
func (p *prefixed) Release() { p.rest.Release() }

// A record larger than the half is left to Flight, and nothing stays allocated.
func TestARecordLargerThanTheHalfGoesOverFlight(t *testing.T) {
	s := testMemory(t, 4096)
	rec := testRecord(t)
	defer rec.Release()
	w := &slotWriter{s: s, schema: rec.Schema(), mem: memory.NewGoAllocator()}
	if _, ok, err := w.write(rec); ok || err != nil {
		t.Fatalf("ok %v err %v", ok, err)
	}
	if len(s.own.used) != 0 {
		t.Fatalf("slots left in use: %v", s.own.used)
	}
}

// Whatever bytes a slot holds and however it is named, reading it returns
// frames or an error, never panics; a good slot with bytes overwritten too.
func FuzzSharedMemoryFrames(f *testing.F) {
	s := testMemory(f, 1<<16)
	_, slot := slotOfRecord(f, s)
	good := bytes.Clone(s.data[slot.Offset : slot.Offset+slot.Length])
	f.Add(good, uint64(0), uint64(len(good)), uint32(0))
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0x10, 0, 0, 0}, uint64(64), uint64(8), uint32(3))
	f.Fuzz(func(t *testing.T, b []byte, offset, length uint64, flip uint32) {
		base := slot.Offset
		copy(s.data[base:base+uint64(len(good))], good)
		n := copy(s.data[base:base+uint64(len(good))], b)
		if flip > 0 && n > 0 {
			s.data[base+uint64(flip)%uint64(n)] ^= 0xff
		}
		for _, sl := range []envelope.Slot{{Offset: base, Length: slot.Length}, {Offset: offset, Length: length}} {
			frames, err := s.frames(sl)
			if err != nil {
				continue
			}
			for _, fr := range frames {
				msg := ipc.NewMessage(memory.NewBufferBytes(fr.meta), fr.body)
				fr.body.Release()
				msg.Release()
			}
		}
		copy(s.data[base:base+uint64(len(good))], good)
	})
}

// A message read after the exchange ended (the input goroutine is not
// waited for) finds the memory unmapped and says so, without touching it.
func TestABatchAfterTheExchangeEndedIsRefused(t *testing.T) {
	s := testMemory(t, 1<<16)
	s.close()
	if _, err := s.frames(envelope.Slot{Offset: 0, Length: 64}); err == nil {
		t.Fatal("frames of an unmapped memory")
	}
	if s.acquire() {
		t.Fatal("a reference to an unmapped memory")
	}
}

// An offer whose halves are empty, unaligned or out of order, or larger
// than the stage could map, is refused before anything is mapped.
func TestABadOfferIsRefused(t *testing.T) {
	path := memfd(t, 1<<16, true)
	me := int32(os.Getpid())
	for _, o := range []shmOffer{
		{Size: 0, StageOffset: 0},
		{Size: 1 << 16, StageOffset: 0},
		{Size: 1 << 16, StageOffset: 1 << 16},
		{Size: 1 << 16, StageOffset: 1<<15 + 1},
		{Size: 1 << 15, StageOffset: 1 << 16},
		{Size: 1 << 41, StageOffset: 1 << 15},
		{Size: ^uint64(0), StageOffset: 1 << 15},
		{Size: 1 << 17, StageOffset: 1 << 15}, // larger than the file
	} {
		o.Path = path
		if s, err := openSharedMemory(&o, me, true); err == nil {
			s.close()
			t.Errorf("offer %+v mapped", o)
		}
	}
}

// scriptedStream is the engine's side of an exchange as a list of
// messages; only Recv is used.
type scriptedStream struct {
	flight.FlightService_DoExchangeServer
	messages []*flight.FlightData
	received int
}

func (s *scriptedStream) Recv() (*flight.FlightData, error) {
	if s.received == len(s.messages) {
		return nil, io.EOF
	}
	s.received++
	return s.messages[s.received-1], nil
}

// Any sequence of engine messages read as an exchange reads its input —
// batches in their slots, batches naming any range, releases of the stage's
// slots (twice, too) and of any range, other metadata-only kinds, "end" —
// in place or copied: nothing panics, every record read is the one
// written, every slot read is given back exactly once when nothing reads
// it, and a release frees exactly the slot it names, once.
func FuzzInputMessageSequences(f *testing.F) {
	f.Add([]byte{0, 0, 2, 0, 5}, false)
	f.Add([]byte{0, 0, 2, 0, 5}, true)
	f.Add([]byte{2, 2, 0, 3, 7, 1, 9, 4}, true)
	f.Add([]byte{0, 1, 200, 0, 5}, false)
	f.Add([]byte{2, 0, 2, 3, 0, 5}, true) // the same slot released twice
	f.Fuzz(fuzzBody)
}

func fuzzBody(t *testing.T, script []byte, inPlace bool) {
	{
		const half = 1 << 18
		s := testMemoryOf(t, half, inPlace)
		// the engine: the same memory, its writer in the first half
		eng := &sharedMemory{data: s.data, own: slots{start: 0, end: half, used: map[uint64]uint64{}}}
		rec := testRecord(t)
		defer rec.Release()
		w := &slotWriter{s: eng, schema: rec.Schema(), mem: memory.NewGoAllocator()}
		defer w.reset()

		// the stage's slots the engine holds, and those it gave back
		var lent, returned []envelope.Slot
		for range 4 {
			sl, _ := s.own.alloc(1000)
			lent = append(lent, sl)
		}
		schema := ipc.GetSchemaPayload(rec.Schema(), memory.NewGoAllocator())
		defer schema.Release()
		meta := schema.Meta()
		defer meta.Release()
		msgs := []*flight.FlightData{{DataHeader: meta.Bytes()}}
		message := func(kind envelope.Kind, seq int, sl *envelope.Slot) *flight.FlightData {
			e := envelope.Envelope{V: envelope.Version, Kind: kind, Epoch: 1, Seq: uint64(seq), Shm: sl}
			return &flight.FlightData{AppMetadata: envelope.Encode(&e)}
		}
		written := map[envelope.Slot]bool{} // slots holding a batch, by message
		named := map[int]envelope.Slot{}    // message index → slot it names
		lentAt := map[int]bool{}            // message index → a release of a slot then lent
		var badAt []int                     // message indexes of releases of slots not lent
		// release gives sl back: a slot lent is taken back once, any
		// other release must stop the reading
		release := func(sl envelope.Slot) {
			if j := slices.Index(lent, sl); j >= 0 {
				lentAt[len(msgs)] = true
				lent = slices.Delete(lent, j, j+1)
				returned = append(returned, sl)
			} else {
				badAt = append(badAt, len(msgs))
			}
			msgs = append(msgs, message(envelope.Release, 0, &sl))
		}
		for i := 0; i < len(script); i++ {
			arg := func() uint64 {
				if i+1 < len(script) {
					i++
					return uint64(script[i])
				}
				return 0
			}
			switch script[i] % 6 {
			case 0:
				sl, ok, err := w.write(rec)
				if err != nil {
					t.Fatal(err)
				}
				if ok {
					written[sl] = true
					named[len(msgs)] = sl
					msgs = append(msgs, message(envelope.Batch, len(msgs), &sl))
				}
			case 1:
				sl := envelope.Slot{Offset: arg() * 4096, Length: arg() * 97}
				named[len(msgs)] = sl
				msgs = append(msgs, message(envelope.Batch, len(msgs), &sl))
			case 2:
				all := append(append([]envelope.Slot{}, lent...), returned...)
				release(all[int(arg())%len(all)])
			case 3: // any range, a lent slot by chance
				release(envelope.Slot{Offset: half + arg()*64, Length: arg() * 64})
			case 4:
				msgs = append(msgs, message(envelope.Ack, len(msgs), nil))
			case 5:
				msgs = append(msgs, message(envelope.End, len(msgs), nil))
			}
		}

		stream := &scriptedStream{messages: msgs}
		in := &inputStream{stream: stream}
		mr := newMessageReader(in)
		rdr, err := ipc.NewReaderFromMessageReader(mr)
		if err != nil {
			t.Fatal(err)
		}
		in.shm = s
		for rdr.Next() {
			if !array.RecordEqual(rdr.RecordBatch(), rec) {
				t.Fatalf("read %v, wrote %v", rdr.RecordBatch(), rec)
			}
		}
		rdr.Release()

		// what the reader took in: every release of a lent slot up to the
		// last message read freed it; an unknown release stopped the reading
		freedAt := 0
		for j := range stream.received {
			if lentAt[j] {
				freedAt++
			}
		}
		if inUse, want := len(s.own.used), 4-freedAt; inUse != want && rdr.Err() == nil {
			t.Fatalf("%d stage slots in use, want %d", inUse, want)
		}
		if len(badAt) > 0 && badAt[0] < stream.received && rdr.Err() == nil {
			t.Fatalf("the release in message %d of a slot not lent was taken", badAt[0])
		}
		back := map[envelope.Slot]int{}
		for _, sl := range s.takeReleased() {
			back[sl]++
		}
		for j, sl := range named {
			read := j < stream.received && written[sl]
			if read && back[sl] != 1 {
				t.Fatalf("slot %v of message %d read, given back %d times", sl, j, back[sl])
			}
		}
		for sl, n := range back {
			if n > 1 && !written[sl] {
				t.Fatalf("slot %v given back %d times", sl, n)
			}
		}
	}
}
