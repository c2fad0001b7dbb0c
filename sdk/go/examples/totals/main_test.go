package main

import (
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sluice-etl/sluice/sdk/go/stage"
	"github.com/sluice-etl/sluice/sdk/go/stage/stagetest"
)

// values builds an input record from JSON rows ({"id":..,"key":..,"value":..},
// nulls allowed).
func values(t *testing.T, mem memory.Allocator, rows string) arrow.RecordBatch {
	t.Helper()
	rec, _, err := array.RecordFromJSON(mem, inputSchema, strings.NewReader(rows))
	if err != nil {
		t.Fatal(err)
	}
	return rec
}

// column returns an Int64 column as values, nil standing for null.
func column(rec arrow.RecordBatch, i int) []*int64 {
	col := rec.Column(i).(*array.Int64)
	out := make([]*int64, col.Len())
	for j := range out {
		if col.IsValid(j) {
			v := col.Value(j)
			out[j] = &v
		}
	}
	return out
}

func text(vs []*int64) string {
	var b strings.Builder
	for i, v := range vs {
		if i > 0 {
			b.WriteByte(' ')
		}
		if v == nil {
			b.WriteString("null")
		} else {
			b.WriteString(strconv.FormatInt(*v, 10))
		}
	}
	return b.String()
}

func start(t *testing.T) (*stagetest.Server, memory.Allocator) {
	t.Helper()
	mem := memory.NewCheckedAllocator(memory.DefaultAllocator)
	t.Cleanup(func() { mem.AssertSize(t, 0) })
	return stagetest.Start(t, totals{}, mem, stage.WithAllocator(mem)), mem
}

// The totals of one epoch go out with "flushed" and the next epoch starts
// from them, as the engine carries them from commit to open.
func TestTotalsAcrossExchanges(t *testing.T) {
	srv, mem := start(t)
	a := values(t, mem, `[{"id":1,"key":3,"value":100},{"id":2,"key":10,"value":5},{"id":3,"key":null,"value":7},{"id":4,"key":3,"value":null}]`)
	defer a.Release()
	b := values(t, mem, `[{"id":5,"key":3,"value":20},{"id":6,"key":-1,"value":-4}]`)
	defer b.Release()

	events, err := srv.Run(t.Context(), stagetest.OpenCmd("totals", 1, 0, ""), inputSchema, a, b)
	defer stagetest.Release(events)
	if err != nil {
		t.Fatal(err)
	}
	// one answer per input batch, the same rows in the same order
	if got := stagetest.Kinds(events); got != "batch(0) batch(1) flushed" {
		t.Fatalf("events %s", got)
	}
	for i, want := range []struct{ ids, keys, values, totals string }{
		{"1 2 3 4", "3 10 null 3", "100 5 7 null", "100 5 null 100"},
		{"5 6", "3 -1", "20 -4", "120 -4"},
	} {
		rec := events[i].Record
		got := [4]string{text(column(rec, 0)), text(column(rec, 1)), text(column(rec, 2)), text(column(rec, 3))}
		if got != [4]string{want.ids, want.keys, want.values, want.totals} {
			t.Errorf("batch %d: id, key, value, total = %q", i, got)
		}
	}
	state, ok := stagetest.FlushedSnapshot(events)
	if want := `{"totals":{"-1":-4,"10":5,"3":120}}`; !ok || string(state) != want {
		t.Fatalf("snapshot %s (%v), want %s", state, ok, want)
	}

	// epoch 2 continues from there
	c := values(t, mem, `[{"id":7,"key":3,"value":1},{"id":8,"key":4,"value":2},{"id":9,"key":-1,"value":4}]`)
	defer c.Release()
	open2 := stagetest.OpenCmd("totals", 2, 0, "", stagetest.WithSnapshot(state))
	events2, err := srv.Run(t.Context(), open2, inputSchema, c)
	defer stagetest.Release(events2)
	if err != nil {
		t.Fatal(err)
	}
	if got := text(column(events2[0].Record, 3)); got != "121 2 0" {
		t.Fatalf("epoch 2 totals %s, want 121 2 0", got)
	}
	state2, _ := stagetest.FlushedSnapshot(events2)
	if want := `{"totals":{"-1":0,"10":5,"3":121,"4":2}}`; string(state2) != want {
		t.Fatalf("epoch 2 snapshot %s, want %s", state2, want)
	}

	// a replay of epoch 2 (it failed after all) starts from the same
	// snapshot, not from what the stage computed since: the same answer
	events3, err := srv.Run(t.Context(), open2, inputSchema, c)
	defer stagetest.Release(events3)
	if err != nil {
		t.Fatal(err)
	}
	if got := text(column(events3[0].Record, 3)); got != "121 2 0" {
		t.Fatalf("replayed epoch 2: totals %s, want 121 2 0", got)
	}
	if state3, _ := stagetest.FlushedSnapshot(events3); string(state3) != string(state2) {
		t.Fatalf("replayed epoch 2: snapshot %s, want %s", state3, state2)
	}
}

// The snapshot of the golden vector (testdata/protocol/envelopes.jsonl) is
// this stage's state after 120 was added to key 3.
func TestGoldenSnapshot(t *testing.T) {
	srv, mem := start(t)
	a := values(t, mem, `[{"id":1,"key":3,"value":100},{"id":2,"key":3,"value":20},{"id":3,"key":null,"value":null}]`)
	defer a.Release()
	events, err := srv.Run(t.Context(), stagetest.OpenCmd("totals", 12, 0, ""), inputSchema, a)
	defer stagetest.Release(events)
	if err != nil {
		t.Fatal(err)
	}
	last := events[len(events)-1].Envelope
	if last.Snapshot == nil || *last.Snapshot != "eyJ0b3RhbHMiOnsiMyI6MTIwfX0=" || *last.Rows != 3 {
		t.Fatalf("flushed %+v", last)
	}
}

// Restore: Open reads the snapshot; nil and "" are the empty state, which
// is written {"totals":{}}.
func TestRestore(t *testing.T) {
	mem := memory.NewCheckedAllocator(memory.DefaultAllocator)
	defer mem.AssertSize(t, 0)
	for _, tc := range []struct {
		snapshot   []byte
		totals     string
		before     string // the snapshot before any row
		afterwards string
	}{
		{nil, "1 null 3", `{"totals":{}}`, `{"totals":{"7":3}}`},
		{[]byte{}, "1 null 3", `{"totals":{}}`, `{"totals":{"7":3}}`},
		{[]byte(`{"totals":{"7":40,"8":1}}`), "41 null 43", `{"totals":{"7":40,"8":1}}`, `{"totals":{"7":43,"8":1}}`},
		{[]byte(` {"totals": {"7": -1}} `), "0 null 2", `{"totals":{"7":-1}}`, `{"totals":{"7":2}}`},
	} {
		req := stage.OpenRequest{Stage: "totals", Protocol: stage.ProtocolV1_1, Snapshot: tc.snapshot, Allocator: mem, OutputSchema: outputSchema}
		p, err := totals{}.Open(t.Context(), req)
		if err != nil {
			t.Fatalf("%q: %v", tc.snapshot, err)
		}
		snap := p.(stage.Snapshotter)
		if got, err := snap.Snapshot(t.Context()); err != nil || string(got) != tc.before {
			t.Fatalf("%q: snapshot before any row %s, %v; want %s", tc.snapshot, got, err, tc.before)
		}
		in := values(t, mem, `[{"id":1,"key":7,"value":1},{"id":2,"key":null,"value":1},{"id":3,"key":7,"value":2}]`)
		out, errs, err := p.Process(t.Context(), in)
		in.Release()
		if err != nil || errs != nil {
			t.Fatalf("%q: %v %v", tc.snapshot, errs, err)
		}
		if got := text(column(out, 3)); got != tc.totals || !out.Schema().Equal(outputSchema) {
			t.Errorf("%q: totals %s, want %s (schema %s)", tc.snapshot, got, tc.totals, out.Schema())
		}
		out.Release()
		if got, err := snap.Snapshot(t.Context()); err != nil || string(got) != tc.afterwards {
			t.Errorf("%q: snapshot %s, %v; want %s", tc.snapshot, got, err, tc.afterwards)
		}
	}
}

// A snapshot this stage did not write fails the exchange INVALID_ARGUMENT
// before any row is processed.
func TestBadSnapshot(t *testing.T) {
	srv, mem := start(t)
	a := values(t, mem, `[{"id":1,"key":3,"value":100}]`)
	defer a.Release()
	// the part of the reason that is ours, not encoding/json's wording
	for _, tc := range []struct{ snapshot, why string }{
		{`nope`, `invalid character`},
		{`{"totals":{"x":1}}`, `x`},
		{`{"totals":{"1":1.5}}`, `1.5`},
		{`{"totals":{"1":9223372036854775808}}`, `9223372036854775808`},
		{`{}`, `no "totals" object`},
		{`{"totals":null}`, `no "totals" object`},
		{`{"totals":{},"more":1}`, `unknown field "more"`},
		{`{"totals":{}} {}`, `more than one JSON value`},
	} {
		events, err := srv.Run(t.Context(), stagetest.OpenCmd("sums", 5, 2, "", stagetest.WithSnapshot([]byte(tc.snapshot))), inputSchema, a)
		stagetest.Release(events)
		const prefix = `[INVALID_ARGUMENT] stage "sums", partition 2: snapshot: `
		st, ok := status.FromError(err)
		if !ok || st.Code() != codes.InvalidArgument || !strings.HasPrefix(st.Message(), prefix) ||
			!strings.Contains(strings.TrimPrefix(st.Message(), prefix), tc.why) {
			t.Errorf("snapshot %s: got %v\nwant %s...%s...", tc.snapshot, err, prefix, tc.why)
		}
		if len(events) != 0 {
			t.Errorf("snapshot %s: events %s", tc.snapshot, stagetest.Kinds(events))
		}
	}
}

// A total that would overflow Int64 fails the exchange: no total wraps.
func TestOverflowFails(t *testing.T) {
	srv, mem := start(t)
	a := values(t, mem, `[{"id":1,"key":3,"value":1},{"id":2,"key":3,"value":1}]`)
	defer a.Release()
	events, err := srv.Run(t.Context(), stagetest.OpenCmd("totals", 1, 0, "", stagetest.WithSnapshot([]byte(`{"totals":{"3":9223372036854775806}}`))), inputSchema, a)
	defer stagetest.Release(events)
	want := "[REJECTED] key 3: the total 9223372036854775807 + 1 (row 1, id 2) overflows Int64"
	if st, ok := status.FromError(err); !ok || st.Code() != codes.InvalidArgument || st.Message() != want {
		t.Fatalf("got %v\nwant %s", err, want)
	}
}

// In a v1 exchange the stage still keeps totals within the exchange, but
// has no snapshot to start from or to leave.
func TestV1Exchange(t *testing.T) {
	srv, mem := start(t)
	a := values(t, mem, `[{"id":1,"key":3,"value":100},{"id":2,"key":3,"value":20}]`)
	defer a.Release()
	events, err := srv.Run(t.Context(), stagetest.OpenCmdAs(stage.ProtocolV1, "totals", 1, 0, ""), inputSchema, a)
	defer stagetest.Release(events)
	if err != nil {
		t.Fatal(err)
	}
	if got := text(column(events[0].Record, 3)); got != "100 120" {
		t.Fatalf("totals %s", got)
	}
	if _, ok := stagetest.FlushedSnapshot(events); ok || events[len(events)-1].Envelope.Snapshot != nil {
		t.Fatal("a v1 exchange carries a snapshot")
	}
}

func TestMain(m *testing.M) {
	stagetest.RunMainIfAsked(main)
	os.Exit(m.Run())
}

// The binary, as the engine runs it: a child process on a unix socket.
func TestChildProcess(t *testing.T) {
	srv := stagetest.StartProcess(t, memory.DefaultAllocator)
	m, body, err := srv.Describe(t.Context())
	if err != nil || m.Name != "totals" || m.Version != "1.0.0" || !m.Stateful || m.Errors != stage.ErrorsFatalOnly ||
		m.Ordering != stage.OrderingPreserve || m.Protocol != stage.ProtocolV1_1 {
		t.Fatalf("describe: %s %v", body, err)
	}
	if m.InputSchema.Name != "keyed_values" || m.InputSchema.Version != "1" || !m.InputSchema.Schema.Equal(inputSchema) ||
		m.OutputSchema.Name != "running_totals" || m.OutputSchema.Version != "1" || !m.OutputSchema.Schema.Equal(outputSchema) {
		t.Fatalf("schemas: %s", body)
	}
	a := values(t, memory.DefaultAllocator, `[{"id":1,"key":3,"value":100}]`)
	defer a.Release()
	events, err := srv.Run(t.Context(), stagetest.OpenCmd("totals", 1, 0, "", stagetest.WithSnapshot([]byte(`{"totals":{"3":20}}`))), inputSchema, a)
	defer stagetest.Release(events)
	if state, ok := stagetest.FlushedSnapshot(events); err != nil || !ok || string(state) != `{"totals":{"3":120}}` {
		t.Fatalf("snapshot %s %v %v", state, ok, err)
	}
}
