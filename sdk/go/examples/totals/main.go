// Command totals is the "totals" example stage: a stateful stage (protocol
// v1.1) that keeps a running total per key across epochs.
//
// Input keyed_values v1: id, key, value (Int64, nullable). Output
// running_totals v1: the input columns, then total (Int64, nullable). For
// each row, in order: a null key gets a null total; otherwise the row's
// value (0 when null) is added to the key's total, and total is the key's
// total after it. Each input batch is answered with one output batch of the
// same rows in the same order.
//
// The state, the total of every key seen, takes part in the engine's
// commits: an exchange starts from the open request's snapshot (none: no
// key seen yet) and leaves its state in "flushed" as JSON,
// {"totals":{"<key>":<total>,...}}, keys as decimal strings in sorted order
// ({"totals":{}} when empty). A failed epoch is replayed from the snapshot
// of the last commit, so the totals count every row once.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"slices"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"

	"github.com/sluice-etl/sluice/sdk/go/stage"
)

// The columns of the input, and of the output before total.
const (
	colID = iota
	colKey
	colValue
)

var (
	inputSchema = arrow.NewSchema([]arrow.Field{
		{Name: "id", Type: arrow.PrimitiveTypes.Int64, Nullable: true},
		{Name: "key", Type: arrow.PrimitiveTypes.Int64, Nullable: true},
		{Name: "value", Type: arrow.PrimitiveTypes.Int64, Nullable: true},
	}, nil)
	outputSchema = arrow.NewSchema(append(slices.Clone(inputSchema.Fields()),
		arrow.Field{Name: "total", Type: arrow.PrimitiveTypes.Int64, Nullable: true},
	), nil)
)

type totals struct{ stage.Base }

func (totals) Manifest() stage.Manifest {
	return stage.Manifest{
		Name:         "totals",
		Version:      "1.0.0",
		InputSchema:  &stage.SchemaRef{Name: "keyed_values", Version: "1", Schema: inputSchema},
		OutputSchema: &stage.SchemaRef{Name: "running_totals", Version: "1", Schema: outputSchema},
		Stateful:     true,
		Ordering:     stage.OrderingPreserve,
		Errors:       stage.ErrorsFatalOnly,
	}
}

func (totals) Open(_ context.Context, req stage.OpenRequest) (stage.Processor, error) {
	sums, err := restore(req.Snapshot)
	if err != nil {
		return nil, stage.Fatal(stage.InvalidArgument, "stage %q, partition %d: snapshot: %v", req.Stage, req.Partition, err)
	}
	return &running{sums: sums, mem: req.Allocator}, nil
}

// state is the snapshot's JSON.
type state struct {
	Totals map[int64]int64 `json:"totals"` // encoding/json writes the keys as decimal strings, sorted
}

// restore reads a snapshot: nil or empty is the empty state (the first
// epoch, or an empty state as the protocol spells it); anything else must
// be exactly what snapshot wrote.
func restore(snapshot []byte) (map[int64]int64, error) {
	if len(snapshot) == 0 {
		return map[int64]int64{}, nil
	}
	var s state
	dec := json.NewDecoder(bytes.NewReader(snapshot))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&s); err != nil {
		return nil, err
	}
	if dec.More() {
		return nil, fmt.Errorf("more than one JSON value")
	}
	if s.Totals == nil {
		return nil, fmt.Errorf(`no "totals" object`)
	}
	return s.Totals, nil
}

// running is the Processor of one exchange: the totals of one partition.
type running struct {
	stage.Base // Flush: nothing is held back, every batch is answered at once
	sums       map[int64]int64
	mem        memory.Allocator
}

func (r *running) Process(_ context.Context, rec arrow.RecordBatch) (arrow.RecordBatch, []stage.RowError, error) {
	keys := rec.Column(colKey).(*array.Int64)
	values := rec.Column(colValue).(*array.Int64)
	ids := rec.Column(colID).(*array.Int64)
	b := array.NewInt64Builder(r.mem)
	defer b.Release()
	b.Reserve(int(rec.NumRows()))
	for i := range int(rec.NumRows()) {
		if keys.IsNull(i) {
			b.AppendNull()
			continue
		}
		k := keys.Value(i)
		var v int64
		if values.IsValid(i) {
			v = values.Value(i)
		}
		sum := r.sums[k]
		if v > 0 && sum > math.MaxInt64-v || v < 0 && sum < math.MinInt64-v {
			// the exchange fails (errors = "fatal_only"), and with it the
			// epoch: the committed totals are untouched
			return nil, nil, stage.Fatal(stage.Rejected, "key %d: the total %d + %d (row %d, id %s) overflows Int64", k, sum, v, i, idText(ids, i))
		}
		r.sums[k] = sum + v
		b.Append(sum + v)
	}
	total := b.NewArray()
	defer total.Release()
	return array.NewRecordBatch(outputSchema, append(slices.Clone(rec.Columns()), total), rec.NumRows()), nil, nil
}

func idText(ids *array.Int64, i int) string {
	if ids.IsNull(i) {
		return "null"
	}
	return fmt.Sprint(ids.Value(i))
}

// Snapshot is the state after the exchange, for the engine to commit with
// the epoch.
func (r *running) Snapshot(context.Context) ([]byte, error) {
	return json.Marshal(state{Totals: r.sums})
}

func main() {
	if err := stage.Serve(context.Background(), totals{}); err != nil {
		fmt.Fprintln(os.Stderr, "totals:", err)
		os.Exit(1)
	}
}
