//go:build linux

package stage_test

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"testing"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"

	"google.golang.org/grpc/codes"

	"github.com/sluice-etl/sluice/sdk/go/stage"
	"github.com/sluice-etl/sluice/sdk/go/stage/stagetest"
)

// offering is an open request that offers the memory file at path, with
// the keys of opts.
func offering(path string, opts ...stagetest.OpenOption) []byte {
	open := stagetest.OpenCmd("s", 1, 0, "", opts...)
	return fmt.Appendf(open[:len(open)-1], `,"shared_memory":{"path":%q,"size":1048576,"stage_offset":524288}}`, path)
}

// The stage maps the memory of the process on the other end of its unix
// socket, and refuses an offer from a TCP client or one that names another
// process's memory.
func TestSharedMemoryIsTakenOnlyFromThePeer(t *testing.T) {
	path := stage.MemfdForTest(t, 1<<20, true) // as the engine makes it: sealed at its size
	srv, mem := start(t, processing("s", nil))
	if _, err := srv.Run(t.Context(), offering(path), people); err != nil {
		t.Fatalf("an offer from the peer: %v", err)
	}
	other := strings.Replace(path, fmt.Sprintf("/proc/%d/", os.Getpid()), "/proc/1/", 1)
	_, err := srv.Run(t.Context(), offering(other), people)
	wantStatusContaining(t, err, codes.InvalidArgument, "not a descriptor of the peer (process")

	lis := tcpListener(t)
	gs, err := stage.NewServer(processing("s", nil), stage.WithTLS("", "", ""), stage.WithToken(""))
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = gs.Serve(lis) }()
	t.Cleanup(gs.Stop)
	tcp := stagetest.ConnectWith(t, lis.Addr().String(), mem)
	_, err = tcp.Run(t.Context(), offering(path), people)
	wantStatusContaining(t, err, codes.InvalidArgument, "shared memory is taken only from an engine on the stage's unix socket")
}

// Flush output larger than the stage's half still goes through shared
// memory: the engine gives slots back after "end" too, and the stage reads
// those releases while it flushes. Without them the half would hold at
// most its capacity of answers and the rest would go over Flight.
func TestFlushOutputReusesTheSlotsGivenBackAfterEnd(t *testing.T) {
	path := stage.MemfdForTest(t, 1<<20, true) // the stage's half: 512 KiB
	st := processing("gather", nil)
	st.open = func(context.Context, stage.OpenRequest) (stage.Processor, error) { return &gather{}, nil }
	srv, mem := start(t, st)
	x, err := srv.Open(t.Context(), offering(path), people)
	if err != nil {
		t.Fatal(err)
	}
	const records = 40
	rec := bigPeople(mem, 1000) // about 100 KiB
	defer rec.Release()
	for range records {
		if err := x.Send(rec); err != nil {
			_, why := x.RecvAll()
			t.Fatalf("%v: %v", err, why)
		}
	}
	if err := x.EndKeepOpen(); err != nil {
		t.Fatal(err)
	}
	inMemory, answers := 0, 0
	for {
		ev, err := x.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if ev.Record != nil {
			ev.Record.Release()
		}
		if ev.Envelope.Kind != "batch" {
			continue
		}
		answers++
		if ev.Envelope.Shm != nil {
			inMemory++
			// io.EOF: the stage has answered everything and ended the call
			if err := x.SendRelease(*ev.Envelope.Shm); err != nil && err != io.EOF {
				t.Fatal(err)
			}
		}
	}
	_ = x.CloseSend()
	capacity := (1 << 19) / recordBytes(rec)
	if answers != records || inMemory <= capacity {
		t.Fatalf("%d of %d answers through shared memory; the stage's half holds %d", inMemory, answers, capacity)
	}
}

// bigPeople is a people record of n rows with 100-byte names.
func bigPeople(mem memory.Allocator, n int) arrow.RecordBatch {
	b := array.NewRecordBuilder(mem, people)
	defer b.Release()
	for i := range n {
		b.Field(0).(*array.Int64Builder).Append(int64(i))
		b.Field(1).(*array.StringBuilder).Append(strings.Repeat("x", 100))
	}
	return b.NewRecordBatch()
}

// recordBytes is the bytes of rec's buffers.
func recordBytes(rec arrow.RecordBatch) int {
	n := 0
	for _, c := range rec.Columns() {
		for _, b := range c.Data().Buffers() {
			if b != nil {
				n += b.Len()
			}
		}
	}
	return n
}

// The identity stage reading its input in place, offered shared memory and
// "unchanged" answers: every answer is an "unchanged", none takes a slot of
// the stage's half (the rows do not travel back at all). Offered shared
// memory alone, the same answers go through slots.
func TestUnchangedAnswersTakeNoSlot(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts []stagetest.OpenOption
		want string
		shm  bool // the answers name slots
	}{
		{"offered", []stagetest.OpenOption{stagetest.WithUnchanged()}, "unchanged(0) unchanged(1) flushed", false},
		{"not offered", nil, "batch(0) batch(1) flushed", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := stage.MemfdForTest(t, 1<<20, true)
			srv, mem := start(t, identityStage(), stage.WithInPlaceInput())
			in := []arrow.RecordBatch{peopleBatch(mem, 0, 6), peopleBatch(mem, 6, 9)}
			defer func() {
				for _, r := range in {
					r.Release()
				}
			}()
			events, err := srv.Run(t.Context(), offering(path, tc.opts...), people, in...)
			defer stagetest.Release(events)
			if err != nil {
				t.Fatal(err)
			}
			if got := stagetest.Kinds(events); got != tc.want {
				t.Fatalf("events %s, want %s", got, tc.want)
			}
			for i, e := range events[:2] {
				if (e.Envelope.Shm != nil) != tc.shm {
					t.Errorf("answer %d: slot %+v", i, e.Envelope.Shm)
				}
			}
			wantFlushedRows(t, events, 9)
		})
	}
}

// An input batch in a slot of the engine's half, read in place and
// answered "unchanged": the stage holds no reference to it once it has
// answered (the output is released at once, not kept until sent), so the
// slot goes back to the engine, once, before "flushed".
func TestAnUnchangedInputInPlaceGivesItsSlotBack(t *testing.T) {
	const size, stageOffset = 1 << 20, 1 << 19
	path := stage.MemfdForTest(t, size, true)
	srv, mem := start(t, identityStage(), stage.WithInPlaceInput())
	rec := peopleBatch(mem, 0, 7)
	defer rec.Release()
	slot := stage.EngineSlotForTest(t, path, size, stageOffset, rec)

	x, err := srv.Open(t.Context(), offering(path, stagetest.WithUnchanged()), people)
	if err != nil {
		t.Fatal(err)
	}
	meta := fmt.Appendf(nil, `{"v":1,"kind":"batch","epoch":1,"seq":0,"shm":{"offset":%d,"length":%d}}`, slot.Offset, slot.Length)
	if err := x.SendRaw(nil, meta); err != nil {
		t.Fatal(err)
	}
	if err := x.End(); err != nil {
		t.Fatal(err)
	}
	events, err := x.RecvAll()
	defer stagetest.Release(events)
	if err != nil {
		t.Fatal(err)
	}
	var answers []stagetest.Event
	released := 0
	for _, e := range events {
		if e.Envelope.Kind == "release" {
			if *e.Envelope.Shm != slot {
				t.Fatalf("released %+v, the slot was %+v", *e.Envelope.Shm, slot)
			}
			released++
			continue
		}
		answers = append(answers, e)
	}
	if got := stagetest.Kinds(answers); got != "unchanged(0) flushed" || released != 1 {
		t.Fatalf("answers %s, %d release(s) of the slot; all: %s", got, released, stagetest.Kinds(events))
	}
	wantFlushedRows(t, answers, 7)
}
