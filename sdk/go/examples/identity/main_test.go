package main

import (
	"os"
	"strings"
	"testing"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"

	"github.com/sluice-etl/sluice/sdk/go/stage"
	"github.com/sluice-etl/sluice/sdk/go/stage/stagetest"
)

// Any schema goes through unchanged, nested types included.
func TestServedAnySchema(t *testing.T) {
	mem := memory.NewCheckedAllocator(memory.DefaultAllocator)
	defer mem.AssertSize(t, 0)
	srv := stagetest.Start(t, identity{}, mem, stage.WithAllocator(mem))

	schema := arrow.NewSchema([]arrow.Field{
		{Name: "tags", Type: arrow.ListOf(arrow.BinaryTypes.String), Nullable: true},
		{Name: "at", Type: &arrow.TimestampType{Unit: arrow.Microsecond, TimeZone: "UTC"}},
	}, nil)
	rec, _, err := array.RecordFromJSON(mem, schema, strings.NewReader(
		`[{"tags":["a","b"],"at":"2024-01-02T03:04:05Z"},{"tags":null,"at":"2024-01-02T03:04:06Z"}]`))
	if err != nil {
		t.Fatal(err)
	}
	defer rec.Release()

	events, err := srv.Run(t.Context(), stagetest.OpenCmd("identity", 4, 1, ""), schema, rec, rec)
	defer stagetest.Release(events)
	if err != nil {
		t.Fatal(err)
	}
	if got := stagetest.Kinds(events); got != "batch(0) batch(1) flushed" {
		t.Fatalf("events %s", got)
	}
	for _, e := range events[:2] {
		if !array.RecordEqual(e.Record, rec) {
			t.Errorf("batch came back different: %v", e.Record)
		}
	}
	m, body, err := srv.Describe(t.Context())
	if err != nil || m.InputSchema != nil || m.OutputSchema != nil || !strings.Contains(string(body), `"errors":"fatal_only"`) {
		t.Fatalf("manifest %s, %v", body, err)
	}
}

// Offered "unchanged" answers (v1.1, the engine's default), the identity
// sends no rows back: each answer names its input batch, whose rows count
// in "flushed".
func TestServedUnchanged(t *testing.T) {
	mem := memory.NewCheckedAllocator(memory.DefaultAllocator)
	defer mem.AssertSize(t, 0)
	srv := stagetest.Start(t, identity{}, mem, stage.WithAllocator(mem), stage.WithInPlaceInput())

	schema := arrow.NewSchema([]arrow.Field{{Name: "id", Type: arrow.PrimitiveTypes.Int64}}, nil)
	rec, _, err := array.RecordFromJSON(mem, schema, strings.NewReader(`[{"id":1},{"id":2},{"id":3}]`))
	if err != nil {
		t.Fatal(err)
	}
	defer rec.Release()

	events, err := srv.Run(t.Context(), stagetest.OpenCmd("identity", 4, 1, "", stagetest.WithUnchanged()), schema, rec, rec)
	defer stagetest.Release(events)
	if err != nil {
		t.Fatal(err)
	}
	if got := stagetest.Kinds(events); got != "unchanged(0) unchanged(1) flushed" {
		t.Fatalf("events %s", got)
	}
	if rows := events[2].Envelope.Rows; rows == nil || *rows != 6 {
		t.Fatalf("flushed rows %v, want 6", rows)
	}
}

func TestMain(m *testing.M) {
	stagetest.RunMainIfAsked(main)
	os.Exit(m.Run())
}

// The binary, as the engine runs it: a child process on a unix socket.
func TestChildProcess(t *testing.T) {
	srv := stagetest.StartProcess(t, memory.DefaultAllocator)
	m, _, err := srv.Describe(t.Context())
	if err != nil || m.Name != "identity" || m.Version != "1.0.0" || m.Language != "go" {
		t.Fatalf("describe: %+v %v", m, err)
	}
}
