//go:build linux

package stage_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"syscall"
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

// mapped reports whether this process maps the memory file at path (a
// /proc/<pid>/fd/<n> of MemfdForTest): a line of /proc/self/maps names a
// memfd of that file's inode.
func mapped(t *testing.T, path string) bool {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	ino := strconv.FormatUint(fi.Sys().(*syscall.Stat_t).Ino, 10)
	maps, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.Lines(string(maps)) {
		// address perms offset dev inode path
		if f := strings.Fields(line); len(f) >= 6 && f[4] == ino && strings.HasPrefix(f[5], "/memfd:") {
			return true
		}
	}
	return false
}

// The memory an exchange maps is unmapped however the exchange ends: when
// it ends, and when its open request is refused, here for an "unchanged"
// offer that is not a boolean beside a good shared-memory offer (read
// before the memory is mapped, so nothing is left mapped).
func TestAnExchangeLeavesNoMapping(t *testing.T) {
	path := stage.MemfdForTest(t, 1<<20, true)
	srv, _ := start(t, identityStage())

	// the check sees the mapping of an exchange under way
	x, err := srv.Open(t.Context(), offering(path, stagetest.WithUnchanged()), people)
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "the memory mapped", func() bool { return mapped(t, path) })
	if err := x.End(); err != nil {
		t.Fatal(err)
	}
	events, err := x.RecvAll()
	stagetest.Release(events)
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "the memory unmapped after the exchange", func() bool { return !mapped(t, path) })

	bad := bytes.Replace(offering(path), []byte(`"config":null`), []byte(`"config":null,"unchanged":"yes"`), 1)
	if !bytes.Contains(bad, []byte(`"unchanged":"yes"`)) || !bytes.Contains(bad, []byte(`"shared_memory":`)) {
		t.Fatalf("open request %s", bad)
	}
	_, err = srv.Run(t.Context(), bad, people)
	wantStatusContaining(t, err, codes.InvalidArgument, "open request: unchanged:")
	eventually(t, "the memory unmapped after a refused open request", func() bool { return !mapped(t, path) })
}
