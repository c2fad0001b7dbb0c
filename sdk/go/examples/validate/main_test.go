package main

import (
	"context"
	"fmt"
	"os"
	"testing"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sluice-etl/sluice/sdk/go/examples/internal/lines"
	"github.com/sluice-etl/sluice/sdk/go/stage"
	"github.com/sluice-etl/sluice/sdk/go/stage/stagetest"
)

func open(t *testing.T, mem memory.Allocator, config string) stage.Processor {
	t.Helper()
	p, err := validate{}.Open(t.Context(), stage.OpenRequest{Stage: "validate", Config: []byte(config), Allocator: mem})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func orderKeys(rec arrow.RecordBatch) []int64 {
	if rec == nil {
		return nil
	}
	return rec.Column(lines.OrderKey).(*array.Int64).Int64Values()
}

func TestRules(t *testing.T) {
	mem := memory.NewCheckedAllocator(memory.DefaultAllocator)
	defer mem.AssertSize(t, 0)

	in := lines.Build(mem,
		lines.Row{OrderKey: 1, LineNumber: 1, ShipMode: "AIR", Quantity: 10, ExtendedPrice: 1.5},
		lines.Row{OrderKey: 2, LineNumber: 1, ShipMode: "MAIL", Quantity: 47},
		lines.Row{OrderKey: 3, LineNumber: 2, ShipMode: "", Quantity: 5},
		lines.Row{OrderKey: 4, LineNumber: 1, ShipMode: "", Quantity: 50},                           // both: the quantity rule comes first
		lines.Row{OrderKey: 5, LineNumber: 3, ShipMode: "SHIP", Quantity: 45, ExtendedPrice: 99.25}, // at the limit: kept
		lines.Row{OrderKey: 6, LineNumber: 1, ShipMode: "TRUCK", Quantity: 46},
		lines.Row{OrderKey: 7, LineNumber: 4, ShipMode: "RAIL", Quantity: 1},
	)
	defer in.Release()

	out, errs, err := open(t, mem, "").Process(t.Context(), in)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Release()
	want := []stage.RowError{
		{Row: 1, Code: stage.Rejected, Message: "quantity 47 exceeds 45"},
		{Row: 2, Code: stage.Malformed, Message: "empty ship mode"},
		{Row: 3, Code: stage.Rejected, Message: "quantity 50 exceeds 45"},
		{Row: 5, Code: stage.Rejected, Message: "quantity 46 exceeds 45"},
	}
	if fmt.Sprint(errs) != fmt.Sprint(want) {
		t.Errorf("row errors\n got %v\nwant %v", errs, want)
	}
	if got := fmt.Sprint(orderKeys(out)); got != "[1 5 7]" {
		t.Errorf("kept order keys %s", got)
	}
	// Kept rows are unchanged, every column.
	wantOut := lines.Build(mem,
		lines.Row{OrderKey: 1, LineNumber: 1, ShipMode: "AIR", Quantity: 10, ExtendedPrice: 1.5},
		lines.Row{OrderKey: 5, LineNumber: 3, ShipMode: "SHIP", Quantity: 45, ExtendedPrice: 99.25},
		lines.Row{OrderKey: 7, LineNumber: 4, ShipMode: "RAIL", Quantity: 1},
	)
	defer wantOut.Release()
	if !array.RecordEqual(out, wantOut) {
		t.Errorf("output\n got %v\nwant %v", out, wantOut)
	}
}

func TestMaxQuantityConfig(t *testing.T) {
	mem := memory.NewCheckedAllocator(memory.DefaultAllocator)
	defer mem.AssertSize(t, 0)
	in := lines.Build(mem, lines.Row{OrderKey: 1, ShipMode: "AIR", Quantity: 47}, lines.Row{OrderKey: 2, ShipMode: "AIR", Quantity: 101})
	defer in.Release()

	out, errs, err := open(t, mem, `{"max_quantity":100}`).Process(t.Context(), in)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Release()
	if len(errs) != 1 || errs[0].Message != "quantity 101 exceeds 100" || fmt.Sprint(orderKeys(out)) != "[1]" {
		t.Fatalf("errs %v, kept %v", errs, orderKeys(out))
	}

	for _, bad := range []string{`{"max_quantity":"45"}`, `{"max_quantity":4.5}`, `{"max_qty":45}`} {
		_, err := validate{}.Open(t.Context(), stage.OpenRequest{Stage: "validate", Config: []byte(bad)})
		if e, ok := stage.FromError(err); !ok || e.Code != stage.InvalidArgument {
			t.Errorf("config %s: %v, want INVALID_ARGUMENT", bad, err)
		}
	}
}

func TestAllOrNothingKept(t *testing.T) {
	mem := memory.NewCheckedAllocator(memory.DefaultAllocator)
	defer mem.AssertSize(t, 0)
	p := open(t, mem, "")

	good := lines.Build(mem, lines.Row{OrderKey: 1, ShipMode: "AIR", Quantity: 1}, lines.Row{OrderKey: 2, ShipMode: "FOB", Quantity: 2})
	defer good.Release()
	out, errs, err := p.Process(t.Context(), good)
	if err != nil || errs != nil || out != good {
		t.Fatalf("all kept: out %p (input %p), errs %v, err %v", out, good, errs, err)
	}
	out.Release() // the reference handed over

	bad := lines.Build(mem, lines.Row{OrderKey: 1, Quantity: 1}, lines.Row{OrderKey: 2, ShipMode: "AIR", Quantity: 99})
	defer bad.Release()
	out, errs, err = p.Process(t.Context(), bad)
	if err != nil || out != nil || len(errs) != 2 {
		t.Fatalf("none kept: out %v, errs %v, err %v", out, errs, err)
	}
}

// Through the SDK over a unix socket, as the engine runs it.
func TestServed(t *testing.T) {
	mem := memory.NewCheckedAllocator(memory.DefaultAllocator)
	defer mem.AssertSize(t, 0)
	srv := stagetest.Start(t, validate{}, mem, stage.WithAllocator(mem))

	b0 := lines.Build(mem, lines.Row{OrderKey: 1, ShipMode: "AIR", Quantity: 10}, lines.Row{OrderKey: 2, ShipMode: "AIR", Quantity: 47})
	b1 := lines.Build(mem, lines.Row{OrderKey: 3, ShipMode: "", Quantity: 1})
	defer b0.Release()
	defer b1.Release()
	events, err := srv.Run(t.Context(), stagetest.OpenCmd("validate", 3, 0, ""), lines.Schema, b0, b1)
	defer stagetest.Release(events)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := stagetest.Kinds(events), "batch(0) row_errors(0) ack(1) row_errors(1) flushed"; got != want {
		t.Fatalf("events %s, want %s", got, want)
	}
	if e := events[1].Envelope.Errors; len(e) != 1 || e[0].Row != 1 || e[0].Code != "REJECTED" || e[0].Message != "quantity 47 exceeds 45" {
		t.Errorf("row errors of batch 0: %+v", e)
	}
	if e := events[3].Envelope.Errors; len(e) != 1 || e[0].Row != 0 || e[0].Code != "MALFORMED" || e[0].Message != "empty ship mode" {
		t.Errorf("row errors of batch 1: %+v", e)
	}
	if *events[4].Envelope.Rows != 1 {
		t.Errorf("flushed %d rows", *events[4].Envelope.Rows)
	}

	_, err = srv.Run(context.Background(), stagetest.OpenCmd("validate", 3, 0, `{"max_quantity":"x"}`), lines.Schema)
	if status.Code(err) != codes.InvalidArgument {
		t.Errorf("bad config: %v", err)
	}
	m, _, err := srv.Describe(t.Context())
	if err != nil || m.Name != "validate" || m.OutputSchema.Name != "valid_lines" || m.InputSchema.Name != "lines" || m.Errors != stage.ErrorsRow {
		t.Errorf("manifest %+v, %v", m, err)
	}
}

func TestMain(m *testing.M) {
	stagetest.RunMainIfAsked(main)
	os.Exit(m.Run())
}

// The binary, as the engine runs it: a child process on a unix socket.
func TestChildProcess(t *testing.T) {
	srv := stagetest.StartProcess(t, memory.DefaultAllocator)
	in := lines.Build(memory.DefaultAllocator, lines.Row{OrderKey: 1, ShipMode: "AIR", Quantity: 46})
	defer in.Release()
	events, err := srv.Run(t.Context(), stagetest.OpenCmd("validate", 1, 0, `{"max_quantity":45}`), lines.Schema, in)
	defer stagetest.Release(events)
	if err != nil {
		t.Fatal(err)
	}
	if got := stagetest.Kinds(events); got != "ack(0) row_errors(0) flushed" || events[1].Envelope.Errors[0].Message != "quantity 46 exceeds 45" {
		t.Fatalf("events %s %+v", got, events)
	}
}
