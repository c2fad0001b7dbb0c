package main

import (
	"os"
	"testing"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"

	"github.com/sluice-etl/sluice/sdk/go/examples/internal/lines"
	"github.com/sluice-etl/sluice/sdk/go/stage"
	"github.com/sluice-etl/sluice/sdk/go/stage/stagetest"
)

func TestLookup(t *testing.T) {
	mem := memory.NewCheckedAllocator(memory.DefaultAllocator)
	defer mem.AssertSize(t, 0)

	cases := []struct {
		mode  string
		class string // "" for NULL
		air   bool
	}{
		{"AIR", "air", true},
		{"REG AIR", "air", true},
		{"MAIL", "mail", false},
		{"SHIP", "sea", false},
		{"RAIL", "ground", false},
		{"TRUCK", "ground", false},
		{"FOB", "ground", false},
		{"CAR", "", false},
		{"air", "", false}, // case matters
		{"", "", false},
	}
	var rows []lines.Row
	for i, c := range cases {
		rows = append(rows, lines.Row{OrderKey: int64(i), LineNumber: 1, ShipMode: c.mode, Quantity: 3, ExtendedPrice: 7.5})
	}
	in := lines.Build(mem, rows...)
	defer in.Release()

	p, err := enrich{}.Open(t.Context(), stage.OpenRequest{Stage: "enrich", Allocator: mem})
	if err != nil {
		t.Fatal(err)
	}
	out, errs, err := p.Process(t.Context(), in)
	if err != nil || errs != nil {
		t.Fatal(errs, err)
	}
	defer out.Release()

	if !out.Schema().Equal(outputSchema) {
		t.Fatalf("schema %s", out.Schema())
	}
	for c := range lines.Fields { // the input columns, unchanged
		if !array.Equal(out.Column(c), in.Column(c)) {
			t.Errorf("column %s changed", lines.Fields[c].Name)
		}
	}
	class := out.Column(5).(*array.String)
	isAir := out.Column(6).(*array.Boolean)
	if isAir.NullN() != 0 {
		t.Errorf("is_air has nulls")
	}
	for i, c := range cases {
		switch {
		case c.class == "" && !class.IsNull(i):
			t.Errorf("%q: ship_class %q, want NULL", c.mode, class.Value(i))
		case c.class != "" && (class.IsNull(i) || class.Value(i) != c.class):
			t.Errorf("%q: ship_class %v, want %q", c.mode, class.ValueStr(i), c.class)
		}
		if isAir.Value(i) != c.air {
			t.Errorf("%q: is_air %v, want %v", c.mode, isAir.Value(i), c.air)
		}
	}
}

func TestOutputSchema(t *testing.T) {
	want := []struct {
		name     string
		typ      arrow.DataType
		nullable bool
	}{
		{"l_orderkey", arrow.PrimitiveTypes.Int64, false},
		{"l_linenumber", arrow.PrimitiveTypes.Int32, false},
		{"l_shipmode", arrow.BinaryTypes.String, false},
		{"l_quantity", arrow.PrimitiveTypes.Int64, false},
		{"l_extendedprice", arrow.PrimitiveTypes.Float64, false},
		{"ship_class", arrow.BinaryTypes.String, true},
		{"is_air", arrow.FixedWidthTypes.Boolean, false},
	}
	if outputSchema.NumFields() != len(want) {
		t.Fatalf("%d fields", outputSchema.NumFields())
	}
	for i, w := range want {
		f := outputSchema.Field(i)
		if f.Name != w.name || !arrow.TypeEqual(f.Type, w.typ) || f.Nullable != w.nullable {
			t.Errorf("field %d: %v, want %+v", i, f, w)
		}
	}
}

func TestConfigRejected(t *testing.T) {
	_, err := enrich{}.Open(t.Context(), stage.OpenRequest{Stage: "enrich", Config: []byte(`{"table":"x"}`)})
	if e, ok := stage.FromError(err); !ok || e.Code != stage.InvalidArgument {
		t.Fatalf("config: %v", err)
	}
	if _, err := (enrich{}).Open(t.Context(), stage.OpenRequest{Stage: "enrich", Config: []byte(`{}`)}); err != nil {
		t.Fatalf("empty config: %v", err)
	}
}

func TestServed(t *testing.T) {
	mem := memory.NewCheckedAllocator(memory.DefaultAllocator)
	defer mem.AssertSize(t, 0)
	srv := stagetest.Start(t, enrich{}, mem, stage.WithAllocator(mem))

	in := lines.Build(mem, lines.Row{OrderKey: 1, ShipMode: "REG AIR"}, lines.Row{OrderKey: 2, ShipMode: "BOAT"})
	defer in.Release()
	events, err := srv.Run(t.Context(), stagetest.OpenCmd("enrich", 1, 0, ""), lines.Schema, in)
	defer stagetest.Release(events)
	if err != nil {
		t.Fatal(err)
	}
	if got := stagetest.Kinds(events); got != "batch(0) flushed" {
		t.Fatalf("events %s", got)
	}
	out := events[0].Record
	if got := out.Column(5).(*array.String); got.Value(0) != "air" || !got.IsNull(1) {
		t.Errorf("ship_class %v", got)
	}
	if got := out.Column(6).(*array.Boolean); !got.Value(0) || got.Value(1) {
		t.Errorf("is_air %v", got)
	}
	if l := events[0].Envelope.Lineage; l == nil || l.Stage != "enrich" || l.Version != "1.0.0" || l.Language != "go" || l.Kind != "external" {
		t.Errorf("lineage %+v", l)
	}
}

func TestMain(m *testing.M) {
	stagetest.RunMainIfAsked(main)
	os.Exit(m.Run())
}

// The binary, as the engine runs it: a child process on a unix socket.
func TestChildProcess(t *testing.T) {
	srv := stagetest.StartProcess(t, memory.DefaultAllocator)
	in := lines.Build(memory.DefaultAllocator, lines.Row{OrderKey: 1, ShipMode: "AIR"})
	defer in.Release()
	events, err := srv.Run(t.Context(), stagetest.OpenCmd("enrich", 1, 0, ""), lines.Schema, in)
	defer stagetest.Release(events)
	if err != nil {
		t.Fatal(err)
	}
	if got := stagetest.Kinds(events); got != "batch(0) flushed" || !events[0].Record.Column(6).(*array.Boolean).Value(0) {
		t.Fatalf("events %s", got)
	}
}
