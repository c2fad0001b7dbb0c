package stage_test

import (
	"encoding/base64"
	"encoding/json"
	"strings"
	"testing"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/flight"
	"github.com/apache/arrow-go/v18/arrow/memory"

	"github.com/sluice-etl/sluice/sdk/go/stage"
)

func TestManifestJSON(t *testing.T) {
	m := manifest("enrich")
	m.Language, m.Protocol, m.MaxBatchRows, m.MaxBatchBytes = "go", stage.Protocol, 1000, 1<<20
	m.Ordering, m.Errors, m.Stateful = stage.OrderingNone, stage.ErrorsFatalOnly, true
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	ipc := base64.StdEncoding.EncodeToString(flight.SerializeSchema(people, memory.DefaultAllocator))
	want := `{"name":"enrich","version":"0.1.0","language":"go","protocol":"sluice.stage.v1.1",` +
		`"input_schema":{"name":"people","version":"1","ipc":"` + ipc + `"},` +
		`"output_schema":{"name":"people","version":"1","ipc":"` + ipc + `"},` +
		`"max_batch_rows":1000,"max_batch_bytes":1048576,"stateful":true,"ordering":"none","errors":"fatal_only"}`
	if string(b) != want {
		t.Fatalf("got  %s\nwant %s", b, want)
	}
	var back stage.Manifest
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if !back.InputSchema.Schema.Equal(people) || back.Name != "enrich" || back.MaxBatchBytes != 1<<20 || !back.Stateful {
		t.Fatalf("round trip: %+v", back)
	}
}

// Every Arrow type survives the manifest, exactly.
func TestSchemaRefExact(t *testing.T) {
	s := arrow.NewSchema([]arrow.Field{
		{Name: "ts", Type: &arrow.TimestampType{Unit: arrow.Nanosecond, TimeZone: "Europe/Paris"}},
		{Name: "dec", Type: &arrow.Decimal128Type{Precision: 38, Scale: 9}, Nullable: true},
		{Name: "tags", Type: arrow.MapOf(arrow.BinaryTypes.String, arrow.ListOf(arrow.PrimitiveTypes.Int32))},
		{Name: "dict", Type: &arrow.DictionaryType{IndexType: arrow.PrimitiveTypes.Int16, ValueType: arrow.BinaryTypes.String}},
	}, nil)
	b, err := json.Marshal(stage.SchemaRef{Name: "x", Version: "2", Schema: s})
	if err != nil {
		t.Fatal(err)
	}
	var back stage.SchemaRef
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if !back.Schema.Equal(s) || back.Name != "x" || back.Version != "2" {
		t.Fatalf("got %v", back.Schema)
	}
	if err := json.Unmarshal([]byte(`{"name":"x","version":"1","ipc":"!!"}`), &back); err == nil {
		t.Fatal("bad base64 accepted")
	}
}

func TestInvalidManifests(t *testing.T) {
	ref := &stage.SchemaRef{Name: "people", Version: "1", Schema: people}
	for _, tc := range []struct {
		name string
		m    stage.Manifest
		want string
	}{
		{"no name", stage.Manifest{Version: "1"}, "name is empty"},
		{"no version", stage.Manifest{Name: "x"}, "version is empty"},
		{"protocol", stage.Manifest{Name: "x", Version: "1", Protocol: "sluice.stage.v2"}, `protocol "sluice.stage.v2"`},
		{"null output", stage.Manifest{Name: "x", Version: "1", InputSchema: ref}, "output_schema is null but input_schema is not"},
		{"ref without schema", stage.Manifest{Name: "x", Version: "1", InputSchema: &stage.SchemaRef{Name: "p"}, OutputSchema: ref}, `input_schema "p" has no Arrow schema`},
		{"ordering", stage.Manifest{Name: "x", Version: "1", Ordering: "sorted"}, `ordering "sorted"`},
		{"errors", stage.Manifest{Name: "x", Version: "1", Errors: "some"}, `errors "some"`},
		{"too big", stage.Manifest{Name: "x", Version: "1", MaxBatchBytes: 128 << 20}, "max_batch_bytes 134217728"},
		{"negative rows", stage.Manifest{Name: "x", Version: "1", MaxBatchRows: -1}, "max_batch_rows -1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := stage.NewServer(&testStage{manifest: tc.m})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to contain %q", err, tc.want)
			}
		})
	}
	// Any input, fixed output: allowed.
	if _, err := stage.NewServer(&testStage{manifest: stage.Manifest{Name: "x", Version: "1", OutputSchema: ref}}); err != nil {
		t.Fatal(err)
	}
}
