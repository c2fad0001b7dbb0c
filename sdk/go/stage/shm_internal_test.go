package stage

import (
	"bytes"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
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

// testMemory maps a file standing in for the engine's memfd, of 2 × half bytes.
func testMemory(t testing.TB, half uint64) *sharedMemory {
	t.Helper()
	path := filepath.Join(t.TempDir(), "shm")
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, int64(2*half)); err != nil {
		t.Fatal(err)
	}
	s, err := openSharedMemory(&shmOffer{Path: path, Size: 2 * half, StageOffset: half})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.close)
	return s
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

// A record written into the stage's half reads back in place, equal, and
// its slot is released only when the last buffer reading it is.
func TestARecordGoesThroughASlotAndItsSlotComesBack(t *testing.T) {
	s := testMemory(t, 1<<20)
	rec := testRecord(t)
	defer rec.Release()
	w := &slotWriter{s: s, schema: rec.Schema(), mem: memory.NewGoAllocator()}
	defer w.reset()
	slot, ok, err := w.write(rec)
	if err != nil || !ok {
		t.Fatalf("write: %v %v", ok, err)
	}
	// read it back as the engine's batch would be: pretend the stage's half is the engine's
	s.engine = s.own
	in := &inputStream{shm: s}
	frames, err := s.frames(slot)
	if err != nil {
		t.Fatal(err)
	}
	if len(frames) != 2 {
		t.Fatalf("%d messages, want a dictionary and a record batch", len(frames))
	}
	mr := newMessageReader(in)
	mr.pending = frames
	schemaMsg := ipc.GetSchemaPayload(rec.Schema(), memory.NewGoAllocator())
	meta := schemaMsg.Meta()
	rdr, err := ipc.NewReaderFromMessageReader(&prefixed{first: ipc.NewMessage(meta, memory.NewBufferBytes(nil)), rest: mr})
	if err != nil {
		t.Fatal(err)
	}
	if !rdr.Next() {
		t.Fatalf("no record: %v", rdr.Err())
	}
	got := rdr.RecordBatch()
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
	rec := testRecord(f)
	defer rec.Release()
	w := &slotWriter{s: s, schema: rec.Schema(), mem: memory.NewGoAllocator()}
	slot, ok, err := w.write(rec)
	if err != nil || !ok {
		f.Fatalf("write: %v %v", ok, err)
	}
	good := bytes.Clone(s.data[slot.Offset : slot.Offset+slot.Length])
	s.engine = s.own
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
