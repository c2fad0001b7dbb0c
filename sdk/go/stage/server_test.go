package stage_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"runtime"
	"strings"
	"sync"
	"testing"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/flight"
	"github.com/apache/arrow-go/v18/arrow/ipc"
	"github.com/apache/arrow-go/v18/arrow/memory"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sluice-etl/sluice/sdk/go/internal/envelope"
	"github.com/sluice-etl/sluice/sdk/go/stage"
	"github.com/sluice-etl/sluice/sdk/go/stage/stagetest"
)

// keepEven keeps the rows with an even id, reports ids that are multiples
// of 5 as REJECTED (dropping them) and filters odd ids silently.
func keepEven(mem memory.Allocator) stage.ProcessorFunc {
	return func(ctx context.Context, rec arrow.RecordBatch) (arrow.RecordBatch, []stage.RowError, error) {
		var keep []int64
		var errs []stage.RowError
		for i, id := range ids(rec) {
			switch {
			case id%5 == 0:
				errs = append(errs, stage.NewRowError(int64(i), stage.Rejected, "id %d is a multiple of 5", id))
			case id%2 == 0:
				keep = append(keep, int64(i))
			}
		}
		return take(mem, rec, keep), errs, nil
	}
}

// take builds a record of the given rows of rec.
func take(mem memory.Allocator, rec arrow.RecordBatch, rows []int64) arrow.RecordBatch {
	b := array.NewRecordBuilder(mem, rec.Schema())
	defer b.Release()
	idIn, nameIn := rec.Column(0).(*array.Int64), rec.Column(1).(*array.String)
	for _, r := range rows {
		b.Field(0).(*array.Int64Builder).Append(idIn.Value(int(r)))
		if nameIn.IsNull(int(r)) {
			b.Field(1).AppendNull()
		} else {
			b.Field(1).(*array.StringBuilder).Append(nameIn.Value(int(r)))
		}
	}
	return b.NewRecordBatch()
}

func TestDescribeAndHealth(t *testing.T) {
	st := processing("keep_even", nil)
	srv, _ := start(t, st)
	ctx := t.Context()

	m, body, err := srv.Describe(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var raw map[string]any
	if err := json.Unmarshal(body, &raw); err != nil {
		t.Fatal(err)
	}
	wantKeys := []string{"name", "version", "language", "protocol", "input_schema", "output_schema",
		"max_batch_rows", "max_batch_bytes", "stateful", "ordering", "errors", "shared_memory"}
	for _, k := range wantKeys {
		if _, ok := raw[k]; !ok {
			t.Errorf("describe: missing key %q in %s", k, body)
		}
	}
	if len(raw) != len(wantKeys) {
		t.Errorf("describe: %d keys, want %d: %s", len(raw), len(wantKeys), body)
	}
	if m.Name != "keep_even" || m.Language != "go" || m.Protocol != stage.Protocol || m.Ordering != stage.OrderingPreserve ||
		m.Errors != stage.ErrorsRow || m.MaxBatchRows != stage.DefaultMaxBatchRows || m.MaxBatchBytes != stage.DefaultMaxBatchBytes {
		t.Errorf("describe: %+v", m)
	}
	if m.InputSchema == nil || !m.InputSchema.Schema.Equal(people) || m.InputSchema.Name != "people" || m.InputSchema.Version != "1" {
		t.Errorf("input schema does not round-trip: %+v", m.InputSchema)
	}

	body, err = srv.Action(ctx, stage.ActionHealth)
	if err != nil || string(body) != `{"status":"ok"}` {
		t.Fatalf("health: %s, %v", body, err)
	}

	_, err = srv.Action(ctx, "reboot")
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), `[INVALID_ARGUMENT] unknown action "reboot"`) {
		t.Fatalf("unknown action: %v", err)
	}
}

func TestHealthFailsUnavailable(t *testing.T) {
	st := processing("sick", nil)
	st.health = func(context.Context) error { return errors.New("lookup database down") }
	srv, _ := start(t, st)
	_, err := srv.Action(t.Context(), stage.ActionHealth)
	if status.Code(err) != codes.Unavailable || status.Convert(err).Message() != "[UNAVAILABLE] lookup database down" {
		t.Fatalf("health: %v", err)
	}
}

func TestNullSchemasInDescribe(t *testing.T) {
	st := &testStage{manifest: stage.Manifest{Name: "any", Version: "1"}}
	srv, _ := start(t, st)
	_, body, err := srv.Describe(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(body), `"input_schema":null,"output_schema":null`) {
		t.Fatalf("describe: %s", body)
	}
}

func TestExchange(t *testing.T) {
	var mem memory.Allocator
	st := &testStage{manifest: manifest("keep_even")}
	st.open = func(_ context.Context, req stage.OpenRequest) (stage.Processor, error) {
		return keepEven(req.Allocator), nil
	}
	srv, checked := start(t, st)
	mem = checked

	in := []arrow.RecordBatch{peopleBatch(mem, 0, 10), peopleBatch(mem, 15, 16), peopleBatch(mem, 20, 24)}
	defer func() {
		for _, r := range in {
			r.Release()
		}
	}()
	events, err := srv.Run(t.Context(), stagetest.OpenCmd("evens", 12, 3, ""), people, in...)
	defer stagetest.Release(events)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := stagetest.Kinds(events), "batch(0) row_errors(0) ack(1) row_errors(1) batch(2) row_errors(2) flushed"; got != want {
		t.Fatalf("events: %s, want %s", got, want)
	}
	for i, e := range events {
		if e.Envelope.Epoch != 12 || e.Envelope.Seq != uint64(i) || e.Envelope.V != 1 {
			t.Errorf("event %d: envelope %+v", i, e.Envelope)
		}
		wantLineage := e.Envelope.Kind == envelope.Batch
		if (e.Envelope.Lineage != nil) != wantLineage {
			t.Errorf("event %d: lineage %+v", i, e.Envelope.Lineage)
		}
	}
	lineage := *events[0].Envelope.Lineage
	if lineage != (envelope.Lineage{Stage: "keep_even", Kind: "external", Version: "0.1.0", Language: "go"}) {
		t.Errorf("lineage %+v", lineage)
	}
	if got := fmt.Sprint(ids(events[0].Record)); got != "[2 4 6 8]" {
		t.Errorf("batch 0: ids %s", got)
	}
	if got := fmt.Sprint(ids(events[4].Record)); got != "[22]" {
		t.Errorf("batch 2: ids %s", got)
	}
	if !events[0].Record.Schema().Equal(people) {
		t.Errorf("output schema %s", events[0].Record.Schema())
	}
	if got := events[0].Record.Column(1).(*array.String); !got.IsNull(2) || got.Value(0) != "p2" {
		t.Errorf("names: %v", got)
	}
	wantErrs := []envelope.RowError{{Row: 0, Code: "REJECTED", Message: "id 0 is a multiple of 5"}, {Row: 5, Code: "REJECTED", Message: "id 5 is a multiple of 5"}}
	if got := events[1].Envelope.Errors; fmt.Sprint(got) != fmt.Sprint(wantErrs) {
		t.Errorf("row errors of batch 0: %+v", got)
	}
	if got := events[3].Envelope.Errors; len(got) != 1 || got[0].Row != 0 || got[0].Message != "id 15 is a multiple of 5" {
		t.Errorf("row errors of batch 1: %+v", got)
	}
	if got := events[5].Envelope.Errors; len(got) != 1 || got[0].Row != 0 || got[0].Message != "id 20 is a multiple of 5" {
		t.Errorf("row errors of batch 2: %+v", got)
	}
	if rows := events[6].Envelope.Rows; rows == nil || *rows != 5 {
		t.Errorf("flushed rows %v, want 5", rows)
	}
}

func TestEmptyExchange(t *testing.T) {
	srv, _ := start(t, processing("none", nil))
	events, err := srv.Run(t.Context(), stagetest.OpenCmd("none", 1, 0, ""), people)
	defer stagetest.Release(events)
	if err != nil {
		t.Fatal(err)
	}
	if got := stagetest.Kinds(events); got != "flushed" || *events[0].Envelope.Rows != 0 {
		t.Fatalf("events %s %+v", got, events)
	}
}

func TestZeroRowOutputIsAck(t *testing.T) {
	var st *testStage
	st = processing("drop_all", func(ctx context.Context, rec arrow.RecordBatch) (arrow.RecordBatch, []stage.RowError, error) {
		return rec.NewSlice(0, 0), nil, nil // zero rows, not nil: must become an ack too
	})
	srv, mem := start(t, st)
	in := peopleBatch(mem, 0, 4)
	defer in.Release()
	events, err := srv.Run(t.Context(), stagetest.OpenCmd("drop_all", 1, 0, ""), people, in, in)
	defer stagetest.Release(events)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := stagetest.Kinds(events), "ack(0) ack(1) flushed"; got != want {
		t.Fatalf("events %s, want %s", got, want)
	}
}

// identityStage passes batches through, with null schemas.
func identityStage() *testStage {
	return &testStage{
		manifest: stage.Manifest{Name: "identity", Version: "1.0.0", Errors: stage.ErrorsFatalOnly},
		open: func(context.Context, stage.OpenRequest) (stage.Processor, error) {
			return stage.ProcessorFunc(func(_ context.Context, rec arrow.RecordBatch) (arrow.RecordBatch, []stage.RowError, error) {
				rec.Retain()
				return rec, nil, nil
			}), nil
		},
	}
}

func TestLargeBatch(t *testing.T) {
	st := identityStage()
	st.manifest.MaxBatchRows = 1 << 21
	srv, mem := start(t, st)
	schema := arrow.NewSchema([]arrow.Field{{Name: "v", Type: arrow.PrimitiveTypes.Int64}}, nil)
	const n = 1 << 20 // 8 MiB of int64: twice the gRPC default limit
	b := array.NewInt64Builder(mem)
	for i := range int64(n) {
		b.Append(i)
	}
	col := b.NewArray()
	b.Release()
	rec := array.NewRecordBatch(schema, []arrow.Array{col}, n)
	col.Release()
	defer rec.Release()

	events, err := srv.Run(t.Context(), stagetest.OpenCmd("identity", 7, 0, ""), schema, rec)
	defer stagetest.Release(events)
	if err != nil {
		t.Fatal(err)
	}
	if got := stagetest.Kinds(events); got != "batch(0) flushed" {
		t.Fatalf("events %s", got)
	}
	if !array.RecordEqual(events[0].Record, rec) {
		t.Fatal("the large batch came back different")
	}
	if *events[1].Envelope.Rows != n {
		t.Fatalf("flushed rows %d", *events[1].Envelope.Rows)
	}
}

func TestConcurrentExchanges(t *testing.T) {
	st := &testStage{manifest: manifest("keep_even")}
	st.open = func(_ context.Context, req stage.OpenRequest) (stage.Processor, error) {
		return keepEven(req.Allocator), nil
	}
	srv, mem := start(t, st)
	var wg sync.WaitGroup
	for p := range 8 {
		wg.Go(func() {
			var in []arrow.RecordBatch
			for b := range 5 {
				base := int64(p*1000 + b*100)
				in = append(in, peopleBatch(mem, base, base+50))
			}
			defer func() {
				for _, r := range in {
					r.Release()
				}
			}()
			epoch := uint64(100 + p)
			events, err := srv.Run(t.Context(), stagetest.OpenCmd("evens", epoch, uint32(p), ""), people, in...)
			defer stagetest.Release(events)
			if err != nil {
				t.Error(err)
				return
			}
			var rows int64
			for _, e := range events {
				if e.Envelope.Epoch != epoch {
					t.Errorf("partition %d: epoch %d", p, e.Envelope.Epoch)
				}
				if e.Record != nil {
					for _, id := range ids(e.Record) {
						if id/1000 != int64(p) || id%2 != 0 || id%5 == 0 {
							t.Errorf("partition %d got id %d", p, id)
						}
					}
					rows += e.Record.NumRows()
				}
			}
			if last := events[len(events)-1]; last.Envelope.Kind != envelope.Flushed || int64(*last.Envelope.Rows) != rows || rows != 5*20 {
				t.Errorf("partition %d: flushed %+v, counted %d rows", p, last.Envelope, rows)
			}
		})
	}
	wg.Wait()
}

// buffering holds every batch back and emits them at Flush: a stateful stage.
type buffering struct {
	stage.Base
	held   []arrow.RecordBatch
	closed *bool
}

func (b *buffering) Process(_ context.Context, rec arrow.RecordBatch) (arrow.RecordBatch, []stage.RowError, error) {
	rec.Retain() // kept beyond Process
	b.held = append(b.held, rec)
	return nil, nil, nil
}

func (b *buffering) Flush(context.Context) ([]arrow.RecordBatch, error) {
	out := b.held
	b.held = nil
	return out, nil
}

// Snapshot: everything held was flushed, so the state is empty (protocol
// v1.1 commits it; "flushed" carries "").
func (b *buffering) Snapshot(context.Context) ([]byte, error) {
	if len(b.held) > 0 {
		return nil, errors.New("rows held after Flush")
	}
	return nil, nil
}

func (b *buffering) Close() error {
	for _, r := range b.held { // only left when the exchange failed
		r.Release()
	}
	*b.closed = true
	return nil
}

func TestFlushOfStatefulStage(t *testing.T) {
	closed := false
	st := &testStage{manifest: manifest("buffer")}
	st.manifest.Stateful = true
	st.open = func(context.Context, stage.OpenRequest) (stage.Processor, error) {
		return &buffering{closed: &closed}, nil
	}
	srv, mem := start(t, st)
	a, b := peopleBatch(mem, 0, 3), peopleBatch(mem, 3, 5)
	defer a.Release()
	defer b.Release()
	events, err := srv.Run(t.Context(), stagetest.OpenCmd("buffer", 1, 0, ""), people, a, b)
	defer stagetest.Release(events)
	if err != nil {
		t.Fatal(err)
	}
	// Flush output answers no input batch: no in_seq.
	if got, want := stagetest.Kinds(events), "ack(0) ack(1) batch batch flushed"; got != want {
		t.Fatalf("events %s, want %s", got, want)
	}
	if *events[4].Envelope.Rows != 5 || !closed {
		t.Fatalf("flushed %d rows, closed %v", *events[4].Envelope.Rows, closed)
	}
	if snap := events[4].Envelope.Snapshot; snap == nil || *snap != "" {
		t.Fatalf(`flushed snapshot %v, want "" (an empty state)`, snap)
	}
}

func TestInputSchemaMismatch(t *testing.T) {
	srv, _ := start(t, processing("keep_even", nil))
	wrong := arrow.NewSchema([]arrow.Field{
		{Name: "id", Type: arrow.BinaryTypes.String},
		{Name: "name", Type: arrow.BinaryTypes.String, Nullable: true},
	}, nil)
	events, err := srv.Run(t.Context(), stagetest.OpenCmd("evens", 1, 0, ""), wrong)
	defer stagetest.Release(events)
	wantStatus(t, err, codes.InvalidArgument, `[SCHEMA_MISMATCH] stage "keep_even": input field "id": expected int64, got utf8 (declared people v1)`)
	if len(events) != 0 {
		t.Fatalf("events before the failure: %s", stagetest.Kinds(events))
	}
}

func TestOutputSchemaMismatch(t *testing.T) {
	for _, tc := range []struct {
		name string
		out  func(mem memory.Allocator, rec arrow.RecordBatch) arrow.RecordBatch
		want string
	}{
		{"wrong type", func(mem memory.Allocator, rec arrow.RecordBatch) arrow.RecordBatch {
			s := arrow.NewSchema([]arrow.Field{people.Field(0), {Name: "name", Type: arrow.PrimitiveTypes.Int64, Nullable: true}}, nil)
			return array.NewRecordBatch(s, []arrow.Array{rec.Column(0), rec.Column(0)}, rec.NumRows())
		}, `[SCHEMA_MISMATCH] stage "broken": output field "name": expected utf8, got int64`},
		{"missing column", func(mem memory.Allocator, rec arrow.RecordBatch) arrow.RecordBatch {
			s := arrow.NewSchema([]arrow.Field{people.Field(0)}, nil)
			return array.NewRecordBatch(s, []arrow.Array{rec.Column(0)}, rec.NumRows())
		}, `[SCHEMA_MISMATCH] stage "broken": output field "name": missing (expected utf8 at position 1)`},
		{"null in a not-null column", func(mem memory.Allocator, rec arrow.RecordBatch) arrow.RecordBatch {
			b := array.NewInt64Builder(mem)
			defer b.Release()
			b.AppendNull()
			b.AppendValues(ids(rec)[1:], nil)
			col := b.NewArray()
			defer col.Release()
			return array.NewRecordBatch(people, []arrow.Array{col, rec.Column(1)}, rec.NumRows())
		}, `[SCHEMA_MISMATCH] stage "broken": output field "id": declared not null, has 1 null(s)`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var mem memory.Allocator
			st := processing("broken", func(ctx context.Context, rec arrow.RecordBatch) (arrow.RecordBatch, []stage.RowError, error) {
				return tc.out(mem, rec), nil, nil
			})
			srv, checked := start(t, st)
			mem = checked
			in := peopleBatch(mem, 0, 4)
			defer in.Release()
			events, err := srv.Run(t.Context(), stagetest.OpenCmd("broken", 1, 0, ""), people, in)
			defer stagetest.Release(events)
			wantStatus(t, err, codes.InvalidArgument, tc.want)
		})
	}
}

// A field declared nullable may come back not null, and metadata may
// differ: the output is stamped with the declared schema.
func TestOutputStampedWithDeclaredSchema(t *testing.T) {
	st := processing("restamp", func(ctx context.Context, rec arrow.RecordBatch) (arrow.RecordBatch, []stage.RowError, error) {
		s := arrow.NewSchema([]arrow.Field{people.Field(0), {Name: "name", Type: arrow.BinaryTypes.String}},
			&[]arrow.Metadata{arrow.NewMetadata([]string{"k"}, []string{"v"})}[0])
		return array.NewRecordBatch(s, []arrow.Array{rec.Column(0), rec.Column(1)}, rec.NumRows()), nil, nil
	})
	srv, mem := start(t, st)
	in := peopleBatch(mem, 1, 3) // ids 1, 2: no null name
	defer in.Release()
	events, err := srv.Run(t.Context(), stagetest.OpenCmd("restamp", 1, 0, ""), people, in)
	defer stagetest.Release(events)
	if err != nil {
		t.Fatal(err)
	}
	if !events[0].Record.Schema().Equal(people) {
		t.Fatalf("output schema %s", events[0].Record.Schema())
	}
}

func TestFatalErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  func() (arrow.RecordBatch, []stage.RowError, error)
		code codes.Code
		msg  string
	}{
		{"fatal code", func() (arrow.RecordBatch, []stage.RowError, error) {
			return nil, nil, stage.Fatal(stage.Unavailable, "lookup service down")
		}, codes.Unavailable, "[UNAVAILABLE] lookup service down"},
		{"timeout", func() (arrow.RecordBatch, []stage.RowError, error) {
			return nil, nil, stage.Fatal(stage.Timeout, "lookup took %ds", 30)
		}, codes.DeadlineExceeded, "[TIMEOUT] lookup took 30s"},
		{"plain error", func() (arrow.RecordBatch, []stage.RowError, error) {
			return nil, nil, errors.New("oops")
		}, codes.Internal, "[INTERNAL] oops"},
		{"panic", func() (arrow.RecordBatch, []stage.RowError, error) {
			panic("nil map")
		}, codes.Internal, "[INTERNAL] panic in Process: nil map"},
		{"row out of range", func() (arrow.RecordBatch, []stage.RowError, error) {
			return nil, []stage.RowError{{Row: 4, Code: stage.Rejected, Message: "no"}}, nil
		}, codes.Internal, `[INTERNAL] stage "failing": a row error names row 4, the input batch has 4 rows`},
		{"row twice", func() (arrow.RecordBatch, []stage.RowError, error) {
			return nil, []stage.RowError{{Row: 1, Code: stage.Rejected, Message: "no"}, {Row: 1, Code: stage.Malformed, Message: "no"}}, nil
		}, codes.Internal, `[INTERNAL] stage "failing": two row errors name row 1`},
		{"unknown code", func() (arrow.RecordBatch, []stage.RowError, error) {
			return nil, []stage.RowError{{Row: 0, Code: "BAD", Message: "no"}}, nil
		}, codes.Internal, `[INTERNAL] stage "failing": the row error of row 0 has the unknown code "BAD"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := processing("failing", func(context.Context, arrow.RecordBatch) (arrow.RecordBatch, []stage.RowError, error) {
				return tc.err()
			})
			srv, mem := start(t, st)
			in := peopleBatch(mem, 0, 4)
			defer in.Release()
			events, err := srv.Run(t.Context(), stagetest.OpenCmd("failing", 1, 0, ""), people, in, in, in)
			defer stagetest.Release(events)
			wantStatus(t, err, tc.code, tc.msg)
			for _, e := range events {
				if e.Envelope.Kind == envelope.Flushed {
					t.Fatal("flushed after a fatal error")
				}
			}
		})
	}
}

func TestFatalOnlyStageReportingRowErrors(t *testing.T) {
	st := processing("strict", func(context.Context, arrow.RecordBatch) (arrow.RecordBatch, []stage.RowError, error) {
		return nil, []stage.RowError{{Row: 0, Code: stage.Rejected, Message: "no"}}, nil
	})
	st.manifest.Errors = stage.ErrorsFatalOnly
	srv, mem := start(t, st)
	in := peopleBatch(mem, 0, 1)
	defer in.Release()
	_, err := srv.Run(t.Context(), stagetest.OpenCmd("strict", 1, 0, ""), people, in)
	wantStatus(t, err, codes.Internal, `[INTERNAL] stage "strict" reported 1 row error(s), but its manifest says errors = "fatal_only"`)
}

func TestOpenAndConfig(t *testing.T) {
	type cfg struct {
		Limit int64 `json:"limit"`
	}
	var got stage.OpenRequest
	var gotCfg cfg
	st := &testStage{manifest: manifest("configured")}
	st.open = func(_ context.Context, req stage.OpenRequest) (stage.Processor, error) {
		got, gotCfg = req, cfg{Limit: 45}
		if err := req.DecodeConfig(&gotCfg); err != nil {
			return nil, err
		}
		return stage.ProcessorFunc(func(context.Context, arrow.RecordBatch) (arrow.RecordBatch, []stage.RowError, error) {
			return nil, nil, nil
		}), nil
	}
	srv, _ := start(t, st)
	ctx := t.Context()

	if _, err := srv.Run(ctx, stagetest.OpenCmd("configured", 9007199254740993, 4, `{"limit":7}`), people); err != nil {
		t.Fatal(err)
	}
	if got.Stage != "configured" || got.Epoch != 9007199254740993 || got.Partition != 4 || gotCfg.Limit != 7 ||
		!got.InputSchema.Equal(people) || !got.OutputSchema.Equal(people) || got.Allocator == nil {
		t.Fatalf("open request %+v, config %+v", got, gotCfg)
	}
	if _, err := srv.Run(ctx, stagetest.OpenCmd("configured", 1, 0, ""), people); err != nil || gotCfg.Limit != 45 {
		t.Fatalf("default config: %v, %+v", err, gotCfg)
	}
	_, err := srv.Run(ctx, stagetest.OpenCmd("configured", 1, 0, `{"limt":7}`), people)
	wantStatus(t, err, codes.InvalidArgument, `[INVALID_ARGUMENT] stage "configured": config: json: unknown field "limt"`)
	_, err = srv.Run(ctx, stagetest.OpenCmd("configured", 1, 0, `{"limit":"7"}`), people)
	if e, ok := stage.FromError(err); !ok || e.Code != stage.InvalidArgument {
		t.Fatalf("config of the wrong type: %v", err)
	}
	_, err = srv.Run(ctx, []byte(`{"protocol":"sluice.stage.v0","stage":"x","epoch":1,"partition":0}`), people)
	wantStatus(t, err, codes.InvalidArgument, "[INVALID_ARGUMENT] the engine opened the exchange in sluice.stage.v0; this stage speaks sluice.stage.v1.1, sluice.stage.v1")
	_, err = srv.Run(ctx, []byte(`{not json`), people)
	if e, ok := stage.FromError(err); !ok || e.Code != stage.InvalidArgument || !strings.HasPrefix(e.Message, "open request: ") {
		t.Fatalf("bad open JSON: %v", err)
	}
}

func TestTraceparentReachesProcess(t *testing.T) {
	seen := make(chan string, 1)
	st := processing("traced", func(ctx context.Context, rec arrow.RecordBatch) (arrow.RecordBatch, []stage.RowError, error) {
		seen <- stage.Traceparent(ctx)
		return nil, nil, nil
	})
	srv, mem := start(t, st)
	in := peopleBatch(mem, 0, 1)
	defer in.Release()
	x, err := srv.Open(t.Context(), stagetest.OpenCmd("traced", 2, 0, ""), people)
	if err != nil {
		t.Fatal(err)
	}
	const tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	if err := x.SendRaw(in, []byte(`{"v":1,"kind":"batch","epoch":2,"seq":0,"traceparent":"`+tp+`"}`)); err != nil {
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
	if got := <-seen; got != tp {
		t.Fatalf("traceparent %q", got)
	}
}

func TestProtocolViolations(t *testing.T) {
	srv, mem := start(t, processing("strict", func(context.Context, arrow.RecordBatch) (arrow.RecordBatch, []stage.RowError, error) {
		return nil, nil, nil
	}))
	in := peopleBatch(mem, 0, 2)
	defer in.Release()

	for _, tc := range []struct {
		name string
		send func(x *stagetest.Exchange) error
		want string
	}{
		{"no envelope", func(x *stagetest.Exchange) error { return x.SendRaw(in, nil) },
			"[INVALID_ARGUMENT] an input batch has no envelope (app_metadata)"},
		{"bad envelope", func(x *stagetest.Exchange) error { return x.SendRaw(in, []byte(`{"v":1}`)) },
			`[INVALID_ARGUMENT] input batch: envelope: missing "kind"`},
		{"wrong kind", func(x *stagetest.Exchange) error {
			return x.SendRaw(in, []byte(`{"v":1,"kind":"end","epoch":5,"seq":0}`))
		}, `[INVALID_ARGUMENT] an input message with a body has kind "end", want "batch"`},
		{"wrong epoch", func(x *stagetest.Exchange) error {
			return x.SendRaw(in, []byte(`{"v":1,"kind":"batch","epoch":6,"seq":0}`))
		}, "[INVALID_ARGUMENT] input batch seq 0 is for epoch 6, the exchange is for epoch 5"},
		{"rows in the message and a slot", func(x *stagetest.Exchange) error {
			return x.SendRaw(in, []byte(`{"v":1,"kind":"batch","epoch":5,"seq":0,"shm":{"offset":0,"length":64}}`))
		}, "[INVALID_ARGUMENT] input message seq 0 carries its IPC data and names a slot of shared memory too"},
		{"no end", func(x *stagetest.Exchange) error {
			if err := x.Send(in); err != nil {
				return err
			}
			return errCloseSend
		}, `[INVALID_ARGUMENT] the input ended without an "end" message`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			x, err := srv.Open(t.Context(), stagetest.OpenCmd("strict", 5, 0, ""), people)
			if err != nil {
				t.Fatal(err)
			}
			if err := tc.send(x); err == errCloseSend {
				err = x.CloseSend()
			} else if err == nil {
				err = x.End()
			}
			if err != nil && err != io.EOF {
				t.Fatal(err)
			}
			events, err := x.RecvAll()
			defer stagetest.Release(events)
			wantStatus(t, err, codes.InvalidArgument, tc.want)
		})
	}
}

var errCloseSend = errors.New("close send")

func TestCancelMidStream(t *testing.T) {
	inSecond := make(chan struct{})
	secondDone := make(chan error, 1)
	var mem memory.Allocator
	st := processing("slow", func(ctx context.Context, rec arrow.RecordBatch) (arrow.RecordBatch, []stage.RowError, error) {
		if ids(rec)[0] == 100 { // the second batch: wait for the cancellation
			close(inSecond)
			<-ctx.Done()
			secondDone <- ctx.Err()
			return nil, nil, ctx.Err()
		}
		return take(mem, rec, []int64{0, 1}), nil, nil
	})
	srv, checked := start(t, st)
	mem = checked
	if _, _, err := srv.Describe(t.Context()); err != nil { // connect before counting goroutines
		t.Fatal(err)
	}
	before := runtime.NumGoroutine()

	ctx, cancel := context.WithCancel(t.Context())
	x, err := srv.Open(ctx, stagetest.OpenCmd("slow", 1, 0, ""), people)
	if err != nil {
		t.Fatal(err)
	}
	first, second, third := peopleBatch(mem, 0, 10), peopleBatch(mem, 100, 110), peopleBatch(mem, 200, 210)
	defer first.Release()
	defer second.Release()
	defer third.Release()
	for _, rec := range []arrow.RecordBatch{first, second, third} {
		if err := x.Send(rec); err != nil {
			t.Fatal(err)
		}
	}
	ev, err := x.Recv()
	if err != nil || ev.Envelope.Kind != envelope.Batch || ev.Record.NumRows() != 2 {
		t.Fatalf("first answer: %+v %v", ev, err)
	}
	ev.Record.Release()
	<-inSecond
	cancel() // while the second batch is in Process and the third is read or waiting
	if _, err := x.Recv(); status.Code(err) != codes.Canceled {
		t.Fatalf("after cancel: %v", err)
	}
	if err := <-secondDone; !errors.Is(err, context.Canceled) {
		t.Fatalf("Process saw %v", err)
	}
	goroutinesBackTo(t, before)
}

// The stage fails while the engine is still sending: the reader goroutine,
// blocked in Recv, must end with the stream.
func TestFatalErrorWhileEngineSends(t *testing.T) {
	st := processing("failing", func(context.Context, arrow.RecordBatch) (arrow.RecordBatch, []stage.RowError, error) {
		return nil, nil, stage.Fatal(stage.Rejected, "no thanks")
	})
	srv, mem := start(t, st)
	if _, _, err := srv.Describe(t.Context()); err != nil {
		t.Fatal(err)
	}
	before := runtime.NumGoroutine()
	in := peopleBatch(mem, 0, 3)
	defer in.Release()
	x, err := srv.Open(t.Context(), stagetest.OpenCmd("failing", 1, 0, ""), people)
	if err != nil {
		t.Fatal(err)
	}
	if err := x.Send(in); err != nil {
		t.Fatal(err)
	}
	_, err = x.Recv() // no End: the stream stays open on the engine's side
	wantStatus(t, err, codes.InvalidArgument, "[REJECTED] no thanks")
	goroutinesBackTo(t, before)
}

func wantStatus(t *testing.T, err error, code codes.Code, msg string) {
	t.Helper()
	st, ok := status.FromError(err)
	if err == nil || !ok || st.Code() != code || st.Message() != msg {
		t.Fatalf("got status %v\nwant code %v, message %q", err, code, msg)
	}
}

// Dictionary-encoded columns travel as dictionary messages before their
// batch, both ways; only the batch carries the envelope.
func TestDictionaryColumns(t *testing.T) {
	srv, mem := start(t, identityStage())
	dictType := &arrow.DictionaryType{IndexType: arrow.PrimitiveTypes.Int8, ValueType: arrow.BinaryTypes.String}
	schema := arrow.NewSchema([]arrow.Field{{Name: "mode", Type: dictType}}, nil)
	b := array.NewDictionaryBuilder(mem, dictType).(*array.BinaryDictionaryBuilder)
	for _, v := range []string{"AIR", "SHIP", "AIR", "RAIL"} {
		if err := b.AppendString(v); err != nil {
			t.Fatal(err)
		}
	}
	col := b.NewArray()
	b.Release()
	rec := array.NewRecordBatch(schema, []arrow.Array{col}, int64(col.Len()))
	col.Release()
	defer rec.Release()

	conn, err := stagetest.Dial(srv.Socket)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	stream, err := flight.NewClientFromConn(conn, nil).DoExchange(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	// The engine's side with arrow-go's own writer, which sends the
	// dictionary as a message of its own.
	w := flight.NewRecordWriter(stream, ipc.WithSchema(schema), ipc.WithAllocator(mem))
	w.SetFlightDescriptor(&flight.FlightDescriptor{Type: flight.DescriptorCMD, Cmd: stagetest.OpenCmd("identity", 3, 0, "")})
	if err := w.WriteWithAppMetadata(rec, []byte(`{"v":1,"kind":"batch","epoch":3,"seq":0}`)); err != nil {
		t.Fatal(err)
	}
	if err := w.WriteMetadata([]byte(`{"v":1,"kind":"end","epoch":3,"seq":1}`)); err != nil {
		t.Fatal(err)
	}
	w.Close()
	stream.CloseSend()

	var msgs []*flight.FlightData
	var kinds []string
	for {
		fd, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		msgs = append(msgs, fd)
		switch {
		case len(fd.DataHeader) == 0:
			kinds = append(kinds, "metadata")
		case len(fd.AppMetadata) > 0:
			kinds = append(kinds, "batch+envelope")
		default:
			kinds = append(kinds, "ipc") // schema, dictionary
		}
	}
	if got := strings.Join(kinds, " "); got != "ipc ipc batch+envelope metadata" {
		t.Fatalf("messages: %s", got)
	}
	rdr, err := flight.NewRecordReader(&replay{msgs[:3]}, ipc.WithAllocator(mem))
	if err != nil {
		t.Fatal(err)
	}
	defer rdr.Release()
	if !rdr.Next() || !array.RecordEqual(rdr.RecordBatch(), rec) {
		t.Fatalf("decoded %v, %v", rdr.RecordBatch(), rdr.Err())
	}
}

type replay struct{ msgs []*flight.FlightData }

func (r *replay) Recv() (*flight.FlightData, error) {
	if len(r.msgs) == 0 {
		return nil, io.EOF
	}
	fd := r.msgs[0]
	r.msgs = r.msgs[1:]
	return fd, nil
}
