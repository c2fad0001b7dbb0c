package stage_test

import (
	"context"
	"strings"
	"testing"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"
	"google.golang.org/grpc/codes"

	"github.com/sluice-etl/sluice/sdk/go/stage"
	"github.com/sluice-etl/sluice/sdk/go/stage/stagetest"
)

// runPeople runs one exchange of three people batches (10, 1 and 4 rows)
// through st with the open request open, and returns the events and the
// input rows.
func runPeople(t *testing.T, st stage.Stage, open []byte) ([]stagetest.Event, int64) {
	t.Helper()
	srv, mem := start(t, st)
	in := []arrow.RecordBatch{peopleBatch(mem, 0, 10), peopleBatch(mem, 10, 11), peopleBatch(mem, 20, 24)}
	defer func() {
		for _, r := range in {
			r.Release()
		}
	}()
	events, err := srv.Run(t.Context(), open, people, in...)
	t.Cleanup(func() { stagetest.Release(events) })
	if err != nil {
		t.Fatal(err)
	}
	return events, 15
}

// wantFlushedRows checks the rows of "flushed", the last event.
func wantFlushedRows(t *testing.T, events []stagetest.Event, rows int64) {
	t.Helper()
	last := events[len(events)-1].Envelope
	if last.Kind != stagetest.Flushed || last.Rows == nil || *last.Rows != uint64(rows) {
		t.Fatalf("last event %+v, want flushed with %d rows", last, rows)
	}
}

// A stage that returns its input record (Retain, return rec), offered
// "unchanged" answers, sends one "unchanged" naming each input batch and no
// rows; they count in "flushed" as the batch's rows.
func TestUnchangedAnswersTheInputRecordItself(t *testing.T) {
	events, rows := runPeople(t, identityStage(), stagetest.OpenCmd("identity", 4, 0, "", stagetest.WithUnchanged()))
	if got, want := stagetest.Kinds(events), "unchanged(0) unchanged(1) unchanged(2) flushed"; got != want {
		t.Fatalf("events %s, want %s", got, want)
	}
	for i, e := range events[:3] {
		if e.Record != nil || e.Envelope.Lineage != nil || e.Envelope.Shm != nil || e.Envelope.Seq != uint64(i) || e.Envelope.Epoch != 4 {
			t.Errorf("event %d: %+v", i, e.Envelope)
		}
	}
	wantFlushedRows(t, events, rows)
}

// The output schema may differ from the input's in what leaves the columns
// as they are (a looser nullability, metadata): the input's columns stamped
// with it, by the SDK or by the stage, are still the input itself. An output schema the engine would refuse for the input
// batch it reuses (a nullable input field declared not null on the way out,
// whatever the data holds) makes the same columns go as rows, stamped.
func TestUnchangedUnderAnOutputSchemaStampedOnTheSameColumns(t *testing.T) {
	open := stagetest.OpenCmd("s", 1, 0, "", stagetest.WithUnchanged())
	// the input's columns under the output schema, as a stage stamps them
	stamping := func(out *arrow.Schema) *testStage {
		st := processing("s", nil)
		st.manifest.OutputSchema = &stage.SchemaRef{Name: "people", Version: "2", Schema: out}
		st.open = func(_ context.Context, req stage.OpenRequest) (stage.Processor, error) {
			return stage.ProcessorFunc(func(_ context.Context, rec arrow.RecordBatch) (arrow.RecordBatch, []stage.RowError, error) {
				return array.NewRecordBatch(req.OutputSchema, rec.Columns(), rec.NumRows()), nil, nil
			}), nil
		}
		return st
	}

	// returned as is, stamped by the SDK: a looser declaration of id
	idNullable := arrow.NewSchema([]arrow.Field{{Name: "id", Type: arrow.PrimitiveTypes.Int64, Nullable: true}, people.Field(1)}, nil)
	st := identityStage()
	st.manifest.InputSchema = &stage.SchemaRef{Name: "people", Version: "1", Schema: people}
	st.manifest.OutputSchema = &stage.SchemaRef{Name: "people", Version: "2", Schema: idNullable}
	events, rows := runPeople(t, st, open)
	if got, want := stagetest.Kinds(events), "unchanged(0) unchanged(1) unchanged(2) flushed"; got != want {
		t.Fatalf("stamped by the SDK: events %s, want %s", got, want)
	}
	wantFlushedRows(t, events, rows)

	withMeta := arrow.NewSchema(people.Fields(), func() *arrow.Metadata {
		m := arrow.NewMetadata([]string{"owner"}, []string{"crm"})
		return &m
	}())
	events, rows = runPeople(t, stamping(withMeta), open)
	if got, want := stagetest.Kinds(events), "unchanged(0) unchanged(1) unchanged(2) flushed"; got != want {
		t.Fatalf("other metadata: events %s, want %s", got, want)
	}
	wantFlushedRows(t, events, rows)

	notNull := arrow.NewSchema([]arrow.Field{people.Field(0), {Name: "name", Type: arrow.BinaryTypes.String}}, nil)
	st = stamping(notNull)
	srv, mem := start(t, st)
	in := peopleBatch(mem, 1, 3) // names p1, p2: no null
	defer in.Release()
	events, err := srv.Run(t.Context(), open, people, in)
	defer stagetest.Release(events)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := stagetest.Kinds(events), "batch(0) flushed"; got != want {
		t.Fatalf("declared not null: events %s, want %s", got, want)
	}
	if !events[0].Record.Schema().Equal(notNull) || !array.RecordEqual(events[0].Record, in) {
		t.Fatalf("declared not null: got %v", events[0].Record)
	}
}

// Without the offer, and with "unchanged": false, the same stage sends its
// rows as before.
func TestWithoutTheOfferTheInputGoesBackAsRows(t *testing.T) {
	for name, open := range map[string][]byte{
		"absent": stagetest.OpenCmd("identity", 4, 0, ""),
		"false":  []byte(`{"protocol":"sluice.stage.v1.1","stage":"identity","epoch":4,"partition":0,"config":null,"unchanged":false}`),
		"null":   []byte(`{"protocol":"sluice.stage.v1.1","stage":"identity","epoch":4,"partition":0,"config":null,"unchanged":null}`),
	} {
		t.Run(name, func(t *testing.T) {
			events, rows := runPeople(t, identityStage(), open)
			if got, want := stagetest.Kinds(events), "batch(0) batch(1) batch(2) flushed"; got != want {
				t.Fatalf("events %s, want %s", got, want)
			}
			if got := ids(events[1].Record); len(got) != 1 || got[0] != 10 {
				t.Fatalf("batch 1: ids %v", got)
			}
			wantFlushedRows(t, events, rows)
		})
	}
}

// A v1 exchange has no "unchanged" answers, whatever its open request says
// (a v1 engine never sends the key); stagetest refuses one there too.
func TestAV1ExchangeIgnoresTheOffer(t *testing.T) {
	for name, open := range map[string][]byte{
		"true":      stagetest.OpenCmdAs(stage.ProtocolV1, "identity", 4, 0, "", stagetest.WithUnchanged()),
		"malformed": []byte(`{"protocol":"sluice.stage.v1","stage":"identity","epoch":4,"partition":0,"config":null,"unchanged":"yes"}`),
	} {
		t.Run(name, func(t *testing.T) {
			events, rows := runPeople(t, identityStage(), open)
			if got, want := stagetest.Kinds(events), "batch(0) batch(1) batch(2) flushed"; got != want {
				t.Fatalf("events %s, want %s", got, want)
			}
			wantFlushedRows(t, events, rows)
		})
	}
}

// A v1.1 offer that is not a boolean is a bad open request.
func TestAnOfferThatIsNotABooleanIsRefused(t *testing.T) {
	srv, _ := start(t, identityStage())
	_, err := srv.Run(t.Context(), []byte(`{"protocol":"sluice.stage.v1.1","stage":"identity","epoch":4,"partition":0,"config":null,"unchanged":"yes"}`), people)
	wantStatusContaining(t, err, codes.InvalidArgument, "open request: unchanged:")
}

// Output that equals the input in value but is not its arrays goes as rows:
// a copy, a slice (of all rows, too), the input's columns swapped, the
// input's columns in a record of fewer rows. Only what is the input by
// construction is sent as such.
func TestOtherArraysGoAsRowsWhateverTheirValues(t *testing.T) {
	pairs := arrow.NewSchema([]arrow.Field{
		{Name: "a", Type: arrow.PrimitiveTypes.Int64},
		{Name: "b", Type: arrow.PrimitiveTypes.Int64},
	}, nil)
	for _, tc := range []struct {
		name    string
		process func(mem memory.Allocator) stage.ProcessorFunc
		schema  *arrow.Schema
		want    string
	}{
		{"a copy", func(mem memory.Allocator) stage.ProcessorFunc {
			return func(_ context.Context, rec arrow.RecordBatch) (arrow.RecordBatch, []stage.RowError, error) {
				all := make([]int64, rec.NumRows())
				for i := range all {
					all[i] = int64(i)
				}
				return take(mem, rec, all), nil, nil
			}
		}, people, "batch(0) batch(1) flushed"},
		{"a slice of every row", func(memory.Allocator) stage.ProcessorFunc {
			return func(_ context.Context, rec arrow.RecordBatch) (arrow.RecordBatch, []stage.RowError, error) {
				return rec.NewSlice(0, rec.NumRows()), nil, nil
			}
		}, people, "batch(0) batch(1) flushed"},
		{"a slice", func(memory.Allocator) stage.ProcessorFunc {
			return func(_ context.Context, rec arrow.RecordBatch) (arrow.RecordBatch, []stage.RowError, error) {
				return rec.NewSlice(1, rec.NumRows()), nil, nil
			}
		}, people, "batch(0) batch(1) flushed"},
		{"the columns of fewer rows", func(memory.Allocator) stage.ProcessorFunc {
			return func(_ context.Context, rec arrow.RecordBatch) (arrow.RecordBatch, []stage.RowError, error) {
				return array.NewRecordBatch(rec.Schema(), rec.Columns(), rec.NumRows()-1), nil, nil
			}
		}, people, "batch(0) batch(1) flushed"},
		{"columns swapped", func(memory.Allocator) stage.ProcessorFunc {
			return func(_ context.Context, rec arrow.RecordBatch) (arrow.RecordBatch, []stage.RowError, error) {
				return array.NewRecordBatch(rec.Schema(), []arrow.Array{rec.Column(1), rec.Column(0)}, rec.NumRows()), nil, nil
			}
		}, pairs, "batch(0) batch(1) flushed"},
		{"the same arrays in a new record", func(memory.Allocator) stage.ProcessorFunc { // control: the input itself
			return func(_ context.Context, rec arrow.RecordBatch) (arrow.RecordBatch, []stage.RowError, error) {
				return array.NewRecordBatch(rec.Schema(), rec.Columns(), rec.NumRows()), nil, nil
			}
		}, people, "unchanged(0) unchanged(1) flushed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := &testStage{manifest: stage.Manifest{Name: "s", Version: "1"}} // any schema, output = input
			st.open = func(_ context.Context, req stage.OpenRequest) (stage.Processor, error) {
				return tc.process(req.Allocator), nil
			}
			srv, mem := start(t, st)
			var in []arrow.RecordBatch
			if tc.schema == people {
				in = []arrow.RecordBatch{peopleBatch(mem, 0, 5), peopleBatch(mem, 5, 8)}
			} else {
				for _, rows := range []string{`[{"a":1,"b":1},{"a":2,"b":2}]`, `[{"a":3,"b":3}]`} {
					rec, _, err := array.RecordFromJSON(mem, pairs, strings.NewReader(rows))
					if err != nil {
						t.Fatal(err)
					}
					in = append(in, rec)
				}
			}
			defer func() {
				for _, r := range in {
					r.Release()
				}
			}()
			events, err := srv.Run(t.Context(), stagetest.OpenCmd("s", 1, 0, "", stagetest.WithUnchanged()), tc.schema, in...)
			defer stagetest.Release(events)
			if err != nil {
				t.Fatal(err)
			}
			if got := stagetest.Kinds(events); got != tc.want {
				t.Fatalf("events %s, want %s", got, tc.want)
			}
		})
	}
}

// Unchanged output and row errors for the same batch: the reported rows
// would be delivered and reported both. The stage's bug: INTERNAL, naming
// the rule, before anything of that answer is sent; whether or not the
// engine offers "unchanged" answers (the pipeline's unchanged_answers), so
// that the key never decides whether a stage passes.
func TestUnchangedOutputWithRowErrorsIsInternal(t *testing.T) {
	for _, tc := range []struct {
		name   string
		open   []byte
		before string // the answer to the good batch, sent before the failure
	}{
		{"offered", stagetest.OpenCmd("s", 1, 0, "", stagetest.WithUnchanged()), "unchanged(0)"},
		{"not offered", stagetest.OpenCmd("s", 1, 0, ""), "batch(0)"},
		{"v1", stagetest.OpenCmdAs(stage.ProtocolV1, "s", 1, 0, ""), "batch(0)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := processing("s", func(_ context.Context, rec arrow.RecordBatch) (arrow.RecordBatch, []stage.RowError, error) {
				rec.Retain()
				var errs []stage.RowError
				if ids(rec)[0] >= 10 {
					errs = append(errs, stage.NewRowError(0, stage.Rejected, "no"))
				}
				return rec, errs, nil
			})
			srv, mem := start(t, st)
			in := []arrow.RecordBatch{peopleBatch(mem, 0, 3), peopleBatch(mem, 10, 12)}
			defer func() {
				for _, r := range in {
					r.Release()
				}
			}()
			events, err := srv.Run(t.Context(), tc.open, people, in...)
			defer stagetest.Release(events)
			wantStatusContaining(t, err, codes.Internal,
				`[INTERNAL] stage "s" answered input batch seq 1 with its input unchanged and reported 1 row error(s) for it: a stage must leave the rows it reports out of its output`)
			if got := stagetest.Kinds(events); got != tc.before {
				t.Fatalf("events before the failure: %s, want %s", got, tc.before)
			}
		})
	}
}

// The refusal above is of the input itself only: row errors with output
// in other arrays (here a copy of the rows not reported) go as before, the
// rows then the row errors, offered "unchanged" answers or not.
func TestRowErrorsWithACopyOfTheInputGoAsRows(t *testing.T) {
	for name, opts := range map[string][]stagetest.OpenOption{
		"offered":     {stagetest.WithUnchanged()},
		"not offered": nil,
	} {
		t.Run(name, func(t *testing.T) {
			st := &testStage{manifest: stage.Manifest{Name: "s", Version: "1"}}
			st.open = func(_ context.Context, req stage.OpenRequest) (stage.Processor, error) {
				return stage.ProcessorFunc(func(_ context.Context, rec arrow.RecordBatch) (arrow.RecordBatch, []stage.RowError, error) {
					// every row but the first, reported
					rest := make([]int64, rec.NumRows()-1)
					for i := range rest {
						rest[i] = int64(i + 1)
					}
					return take(req.Allocator, rec, rest), []stage.RowError{stage.NewRowError(0, stage.Rejected, "no")}, nil
				}), nil
			}
			srv, mem := start(t, st)
			in := peopleBatch(mem, 0, 3)
			defer in.Release()
			events, err := srv.Run(t.Context(), stagetest.OpenCmd("s", 1, 0, "", opts...), people, in)
			defer stagetest.Release(events)
			if err != nil {
				t.Fatal(err)
			}
			if got, want := stagetest.Kinds(events), "batch(0) row_errors(0) flushed"; got != want {
				t.Fatalf("events %s, want %s", got, want)
			}
			if got := ids(events[0].Record); len(got) != 2 || got[0] != 1 || got[1] != 2 {
				t.Fatalf("ids %v", got)
			}
		})
	}
}

// Flush output answers no input batch: input records returned at Flush go
// as rows, without in_seq, even offered "unchanged" answers.
func TestFlushOutputIsNeverUnchanged(t *testing.T) {
	st := processing("s", nil)
	st.open = func(context.Context, stage.OpenRequest) (stage.Processor, error) { return &gather{}, nil }
	events, rows := runPeople(t, st, stagetest.OpenCmd("s", 1, 0, "", stagetest.WithUnchanged()))
	if got, want := stagetest.Kinds(events), "ack(0) ack(1) ack(2) batch batch batch flushed"; got != want {
		t.Fatalf("events %s, want %s", got, want)
	}
	wantFlushedRows(t, events, rows)
}

// The engine takes an "unchanged" answer as the batch it sent, which it
// checks against the output schema with its own strict type comparison:
// the name, nullability and metadata of every nested field count. So the
// SDK answers "unchanged" only for an input schema that passes for the
// output schema that way; one that differs only where arrow.TypeEqual does
// not look (a list's element name, a nested field's metadata) goes as rows.
func TestUnchangedNeedsNestedFieldsAsDeclared(t *testing.T) {
	list := func(elem string, meta ...string) arrow.DataType {
		f := arrow.Field{Name: elem, Type: arrow.BinaryTypes.String, Nullable: true}
		if len(meta) == 2 {
			f.Metadata = arrow.NewMetadata(meta[:1], meta[1:])
		}
		return arrow.ListOfField(f)
	}
	tagged := func(tags arrow.DataType) *arrow.Schema {
		return arrow.NewSchema([]arrow.Field{
			{Name: "id", Type: arrow.PrimitiveTypes.Int64},
			{Name: "s", Type: arrow.StructOf(arrow.Field{Name: "tags", Type: tags, Nullable: true}), Nullable: true},
		}, nil)
	}
	in := tagged(list("item"))
	for _, tc := range []struct {
		name string
		out  *arrow.Schema
		want string
	}{
		{"the same", tagged(list("item")), "unchanged(0) flushed"},
		{"another element name", tagged(list("element")), "batch(0) flushed"},
		{"element metadata", tagged(list("item", "k", "v")), "batch(0) flushed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := identityStage()
			st.manifest.OutputSchema = &stage.SchemaRef{Name: "tagged", Version: "2", Schema: tc.out}
			srv, mem := start(t, st)
			rec, _, err := array.RecordFromJSON(mem, in, strings.NewReader(`[{"id":1,"s":{"tags":["a","b"]}},{"id":2,"s":{"tags":null}},{"id":3,"s":null}]`))
			if err != nil {
				t.Fatal(err)
			}
			defer rec.Release()
			events, err := srv.Run(t.Context(), stagetest.OpenCmd("identity", 1, 0, "", stagetest.WithUnchanged()), in, rec)
			defer stagetest.Release(events)
			if err != nil {
				t.Fatal(err)
			}
			if got := stagetest.Kinds(events); got != tc.want {
				t.Fatalf("events %s, want %s", got, tc.want)
			}
			if r := events[0].Record; r != nil && (!r.Schema().Equal(tc.out) || !array.RecordEqual(r, rec)) {
				t.Fatalf("rows %v, sent %v", r, rec)
			}
		})
	}
}
