package stage_test

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/apache/arrow-go/v18/arrow"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sluice-etl/sluice/sdk/go/internal/envelope"
	"github.com/sluice-etl/sluice/sdk/go/stage"
	"github.com/sluice-etl/sluice/sdk/go/stage/stagetest"
)

// counting is a stateful stage whose state is the number of rows it has
// seen, as decimal text; it passes its input through.
type counting struct {
	mu       sync.Mutex
	opened   [][]byte // OpenRequest.Snapshot of every exchange
	snapshot int      // calls of Snapshot
	closed   int
	fail     error // returned by Snapshot
	panics   bool  // Snapshot panics
}

func (c *counting) stage(stateful bool) *testStage {
	st := &testStage{manifest: manifest("counting")}
	st.manifest.Stateful = stateful
	st.open = func(_ context.Context, req stage.OpenRequest) (stage.Processor, error) {
		c.mu.Lock()
		c.opened = append(c.opened, req.Snapshot)
		c.mu.Unlock()
		p := &counter{c: c}
		if len(req.Snapshot) > 0 {
			n, err := strconv.ParseInt(string(req.Snapshot), 10, 64)
			if err != nil {
				return nil, stage.Fatal(stage.InvalidArgument, "snapshot %q: %v", req.Snapshot, err)
			}
			p.rows = n
		}
		return p, nil
	}
	return st
}

type counter struct {
	stage.Base
	c    *counting
	rows int64
}

func (p *counter) Process(_ context.Context, rec arrow.RecordBatch) (arrow.RecordBatch, []stage.RowError, error) {
	p.rows += rec.NumRows()
	rec.Retain()
	return rec, nil, nil
}

func (p *counter) Snapshot(context.Context) ([]byte, error) {
	p.c.mu.Lock()
	defer p.c.mu.Unlock()
	p.c.snapshot++
	if p.c.panics {
		panic("no state today")
	}
	if p.c.fail != nil {
		return nil, p.c.fail
	}
	if p.rows == 0 {
		return nil, nil // an empty state: "" on the wire
	}
	return strconv.AppendInt(nil, p.rows, 10), nil
}

func (p *counter) Close() error {
	p.c.mu.Lock()
	p.c.closed++
	p.c.mu.Unlock()
	return nil
}

// protocol v1.1: the state of a stateful stage goes out with "flushed" and
// comes back in the open request of the next exchange, which starts from it.
func TestSnapshotCarriesStateAcrossExchanges(t *testing.T) {
	c := &counting{}
	srv, mem := start(t, c.stage(true))
	a, b := peopleBatch(mem, 0, 3), peopleBatch(mem, 3, 5)
	defer a.Release()
	defer b.Release()

	// the first epoch: no snapshot
	events, err := srv.Run(t.Context(), stagetest.OpenCmd("counting", 1, 0, ""), people, a, b)
	defer stagetest.Release(events)
	if err != nil {
		t.Fatal(err)
	}
	if got := stagetest.Kinds(events); got != "batch(0) batch(1) flushed" {
		t.Fatalf("events %s", got)
	}
	if snap := events[2].Envelope.Snapshot; snap == nil || *snap != "NQ==" { // base64("5")
		t.Fatalf("flushed snapshot %v, want NQ==", snap)
	}
	state, ok := stagetest.FlushedSnapshot(events)
	if !ok || string(state) != "5" {
		t.Fatalf("FlushedSnapshot = %q, %v", state, ok)
	}

	// the next epoch starts from it
	events2, err := srv.Run(t.Context(), stagetest.OpenCmd("counting", 2, 0, "", stagetest.WithSnapshot(state)), people, a)
	defer stagetest.Release(events2)
	if err != nil {
		t.Fatal(err)
	}
	if state, ok := stagetest.FlushedSnapshot(events2); !ok || string(state) != "8" {
		t.Fatalf("second exchange: snapshot %q, %v; want 8", state, ok)
	}

	// a replay of the first epoch starts from its snapshot, "" is an empty
	// state, and null is none
	for _, tc := range []struct {
		open []byte
		want string
	}{
		{stagetest.OpenCmd("counting", 1, 0, "", stagetest.WithSnapshot(nil)), "3"},
		{stagetest.OpenCmd("counting", 1, 0, "", stagetest.WithSnapshot([]byte{})), "3"},
		{[]byte(`{"protocol":"sluice.stage.v1.1","stage":"counting","epoch":1,"partition":0,"config":null,"snapshot":null}`), "3"},
		{stagetest.OpenCmd("counting", 2, 0, "", stagetest.WithSnapshot([]byte("40"))), "43"},
	} {
		events, err := srv.Run(t.Context(), tc.open, people, a)
		stagetest.Release(events)
		if state, ok := stagetest.FlushedSnapshot(events); err != nil || !ok || string(state) != tc.want {
			t.Fatalf("%s: snapshot %q, %v, %v; want %s", tc.open, state, ok, err, tc.want)
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.opened) != 6 || c.opened[0] != nil || string(c.opened[1]) != "5" || c.opened[2] != nil ||
		c.opened[3] == nil || len(c.opened[3]) != 0 || c.opened[4] != nil || string(c.opened[5]) != "40" {
		t.Fatalf("Open saw snapshots %q", c.opened)
	}
	if c.snapshot != 6 || c.closed != 6 {
		t.Fatalf("Snapshot called %d times, Close %d; want 6 each", c.snapshot, c.closed)
	}
}

// An empty state is "" on "flushed": the key is there, empty.
func TestEmptySnapshotIsPresent(t *testing.T) {
	c := &counting{}
	srv, _ := start(t, c.stage(true))
	events, err := srv.Run(t.Context(), stagetest.OpenCmd("counting", 1, 0, ""), people)
	defer stagetest.Release(events)
	if err != nil {
		t.Fatal(err)
	}
	if len(events) != 1 || events[0].Envelope.Kind != envelope.Flushed {
		t.Fatalf("events %s", stagetest.Kinds(events))
	}
	if snap := events[0].Envelope.Snapshot; snap == nil || *snap != "" {
		t.Fatalf("snapshot %v, want present and empty", snap)
	}
	if state, ok := stagetest.FlushedSnapshot(events); !ok || state == nil || len(state) != 0 {
		t.Fatalf("FlushedSnapshot = %q (nil %v), %v", state, state == nil, ok)
	}
}

// Only a stateful stage in a v1.1 exchange commits its state: a v1 exchange
// and a stage that is not stateful never carry a snapshot, and Snapshot is
// not called (nor needed: see TestStatefulV1WithoutSnapshotter).
func TestNoSnapshotOutsideStatefulV1_1(t *testing.T) {
	for _, tc := range []struct {
		name     string
		stateful bool
		open     []byte
	}{
		{"stateful, v1", true, stagetest.OpenCmdAs(stage.ProtocolV1, "counting", 1, 0, "")},
		{"not stateful, v1.1", false, stagetest.OpenCmd("counting", 1, 0, "")},
		{"not stateful, v1", false, stagetest.OpenCmdAs(stage.ProtocolV1, "counting", 1, 0, "")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := &counting{}
			srv, mem := start(t, c.stage(tc.stateful))
			a := peopleBatch(mem, 0, 3)
			defer a.Release()
			events, err := srv.Run(t.Context(), tc.open, people, a)
			defer stagetest.Release(events)
			if err != nil {
				t.Fatal(err)
			}
			if got := stagetest.Kinds(events); got != "batch(0) flushed" {
				t.Fatalf("events %s", got)
			}
			for _, e := range events {
				if e.Envelope.Snapshot != nil {
					t.Fatalf("a %s message carries a snapshot: %s", e.Envelope.Kind, envelope.Encode(&e.Envelope))
				}
			}
			if _, ok := stagetest.FlushedSnapshot(events); ok {
				t.Fatal("FlushedSnapshot found one")
			}
			if c.snapshot != 0 {
				t.Fatalf("Snapshot called %d times", c.snapshot)
			}
		})
	}
}

// In v1, stateful only means that output depends on earlier batches: a
// Processor without Snapshotter serves it as before.
func TestStatefulV1WithoutSnapshotter(t *testing.T) {
	closed := false
	st := &testStage{manifest: manifest("buffer")}
	st.manifest.Stateful = true
	st.open = func(context.Context, stage.OpenRequest) (stage.Processor, error) {
		return &plainBuffering{buffering{closed: &closed}}, nil
	}
	srv, mem := start(t, st)
	a := peopleBatch(mem, 0, 3)
	defer a.Release()
	events, err := srv.Run(t.Context(), stagetest.OpenCmdAs(stage.ProtocolV1, "buffer", 1, 0, ""), people, a)
	defer stagetest.Release(events)
	if err != nil {
		t.Fatal(err)
	}
	if got := stagetest.Kinds(events); got != "ack(0) batch flushed" || events[2].Envelope.Snapshot != nil {
		t.Fatalf("events %s, snapshot %v", got, events[2].Envelope.Snapshot)
	}
}

// plainBuffering is buffering without Snapshot.
type plainBuffering struct{ b buffering }

func (p *plainBuffering) Process(ctx context.Context, rec arrow.RecordBatch) (arrow.RecordBatch, []stage.RowError, error) {
	return p.b.Process(ctx, rec)
}
func (p *plainBuffering) Flush(ctx context.Context) ([]arrow.RecordBatch, error) {
	return p.b.Flush(ctx)
}
func (p *plainBuffering) Close() error { return p.b.Close() }

var _ stage.Snapshotter = (*buffering)(nil)

// A stateful stage whose Processor cannot give its state fails a v1.1
// exchange INTERNAL, before any work (the schema is not even sent), and
// the Processor is still closed.
func TestStatefulV1_1WithoutSnapshotterIsInternal(t *testing.T) {
	closed := false
	st := &testStage{manifest: manifest("buffer")}
	st.manifest.Stateful = true
	st.open = func(context.Context, stage.OpenRequest) (stage.Processor, error) {
		return &plainBuffering{buffering{closed: &closed}}, nil
	}
	srv, mem := start(t, st)
	a := peopleBatch(mem, 0, 3)
	defer a.Release()
	events, err := srv.Run(t.Context(), stagetest.OpenCmd("buffer", 1, 0, ""), people, a)
	defer stagetest.Release(events)
	wantStatus(t, err, codes.Internal, `[INTERNAL] stage "buffer" is stateful and the exchange is sluice.stage.v1.1, so its state is committed with each epoch: its Processor (*stage_test.plainBuffering) must implement stage.Snapshotter (Snapshot(ctx) ([]byte, error))`)
	if len(events) != 0 {
		t.Fatalf("events %s", stagetest.Kinds(events))
	}
	eventually(t, "Close", func() bool { return closed })
}

// An error from Snapshot fails the exchange with its code, and no
// "flushed" is sent: the epoch is not committed.
func TestSnapshotErrorFailsTheExchange(t *testing.T) {
	for _, tc := range []struct {
		name   string
		fail   error
		panics bool
		code   codes.Code
		msg    string
	}{
		{"fatal", stage.Fatal(stage.Unavailable, "the state store is down"), false, codes.Unavailable, "[UNAVAILABLE] the state store is down"},
		{"plain error", errors.New("cannot encode"), false, codes.Internal, "[INTERNAL] cannot encode"},
		{"panic", nil, true, codes.Internal, "[INTERNAL] panic in Snapshot: no state today"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := &counting{fail: tc.fail, panics: tc.panics}
			srv, mem := start(t, c.stage(true))
			a := peopleBatch(mem, 0, 3)
			defer a.Release()
			events, err := srv.Run(t.Context(), stagetest.OpenCmd("counting", 1, 0, ""), people, a)
			defer stagetest.Release(events)
			wantStatus(t, err, tc.code, tc.msg)
			for _, e := range events {
				if e.Envelope.Kind == envelope.Flushed {
					t.Fatalf("flushed after a failed Snapshot: %s", stagetest.Kinds(events))
				}
			}
		})
	}
}

// An aborted exchange (no "end") takes no snapshot.
func TestNoSnapshotOfAnAbortedExchange(t *testing.T) {
	c := &counting{}
	srv, mem := start(t, c.stage(true))
	a := peopleBatch(mem, 0, 3)
	defer a.Release()
	x, err := srv.Open(t.Context(), stagetest.OpenCmd("counting", 1, 0, ""), people)
	if err != nil {
		t.Fatal(err)
	}
	if err := x.Send(a); err != nil {
		t.Fatal(err)
	}
	if err := x.CloseSend(); err != nil {
		t.Fatal(err)
	}
	events, err := x.RecvAll()
	defer stagetest.Release(events)
	wantStatus(t, err, codes.InvalidArgument, `[INVALID_ARGUMENT] the input ended without an "end" message`)
	eventually(t, "Close", func() bool { c.mu.Lock(); defer c.mu.Unlock(); return c.closed == 1 })
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.snapshot != 0 {
		t.Fatalf("Snapshot called %d times", c.snapshot)
	}
}

// A snapshot that is not base64, or not a string, is a bad open request:
// INVALID_ARGUMENT before Open.
func TestBadSnapshotInTheOpenRequest(t *testing.T) {
	c := &counting{}
	srv, _ := start(t, c.stage(true))
	for _, tc := range []struct {
		snapshot, msg string
		jsonWords     bool // encoding/json's words follow msg, then "; want a base64 string or null"
	}{
		{`"not base64!"`, `[INVALID_ARGUMENT] open request: snapshot: not base64 (standard alphabet, padded): illegal base64 data at input byte 3`, false},
		{`"NQ"`, `[INVALID_ARGUMENT] open request: snapshot: not base64 (standard alphabet, padded): illegal base64 data at input byte 0`, false},
		{`5`, `[INVALID_ARGUMENT] open request: snapshot: json: cannot unmarshal number `, true},
		{`{}`, `[INVALID_ARGUMENT] open request: snapshot: json: cannot unmarshal object `, true},
	} {
		open := `{"protocol":"sluice.stage.v1.1","stage":"counting","epoch":1,"partition":0,"config":null,"snapshot":` + tc.snapshot + `}`
		events, err := srv.Run(t.Context(), []byte(open), people)
		stagetest.Release(events)
		if !tc.jsonWords {
			wantStatus(t, err, codes.InvalidArgument, tc.msg)
			continue
		}
		st, ok := status.FromError(err)
		if !ok || st.Code() != codes.InvalidArgument || !strings.HasPrefix(st.Message(), tc.msg) ||
			!strings.HasSuffix(st.Message(), "; want a base64 string or null") {
			t.Fatalf("snapshot %s: got %v\nwant %s... ; want a base64 string or null", tc.snapshot, err, tc.msg)
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.opened) != 0 {
		t.Fatalf("Open called %d times", len(c.opened))
	}
}
