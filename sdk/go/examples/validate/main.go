// Command validate is the "validate" example stage (examples/stages/README.md):
// a filter that drops bad rows and reports each as a row error.
//
//	l_quantity > max_quantity  →  REJECTED  "quantity <q> exceeds <max>"
//	l_shipmode == ""           →  MALFORMED "empty ship mode"
//	otherwise                  →  passed through unchanged
//
// The engine starts it with SLUICE_STAGE_SOCKET set; SLUICE_STAGE_ADDR=host:port
// serves it over TCP instead.
package main

import (
	"context"
	"fmt"
	"os"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"

	"github.com/sluice-etl/sluice/sdk/go/examples/internal/lines"
	"github.com/sluice-etl/sluice/sdk/go/stage"
)

// DefaultMaxQuantity is max_quantity when the config does not set it.
const DefaultMaxQuantity = 45

type validate struct{ stage.Base }

func (validate) Manifest() stage.Manifest {
	return stage.Manifest{
		Name:         "validate",
		Version:      "1.0.0",
		InputSchema:  lines.Ref,
		OutputSchema: &stage.SchemaRef{Name: "valid_lines", Version: "1", Schema: lines.Schema},
		Stateful:     false,
		Ordering:     stage.OrderingPreserve,
		Errors:       stage.ErrorsRow,
	}
}

// config is the stage's config table in the pipeline file.
type config struct {
	MaxQuantity int64 `json:"max_quantity"`
}

func (validate) Open(_ context.Context, req stage.OpenRequest) (stage.Processor, error) {
	cfg := config{MaxQuantity: DefaultMaxQuantity}
	if err := req.DecodeConfig(&cfg); err != nil {
		return nil, err
	}
	return &validator{maxQuantity: cfg.MaxQuantity, mem: req.Allocator}, nil
}

// validator checks the rows of one exchange. It holds no state between
// batches, so the Flush of Base (nothing) is right.
type validator struct {
	stage.Base
	maxQuantity int64
	mem         memory.Allocator
}

func (v *validator) Process(_ context.Context, rec arrow.RecordBatch) (arrow.RecordBatch, []stage.RowError, error) {
	quantity := rec.Column(lines.Quantity).(*array.Int64)
	shipMode := rec.Column(lines.ShipMode).(*array.String)

	var errs []stage.RowError
	keep := make([]bool, rec.NumRows())
	for i := range keep {
		row := int64(i)
		switch q := quantity.Value(i); {
		case q > v.maxQuantity: // checked first: a row gets one error
			errs = append(errs, stage.NewRowError(row, stage.Rejected, "quantity %d exceeds %d", q, v.maxQuantity))
		case shipMode.Value(i) == "":
			errs = append(errs, stage.NewRowError(row, stage.Malformed, "empty ship mode"))
		default:
			keep[i] = true
		}
	}
	out, err := filter(v.mem, rec, keep)
	return out, errs, err
}

// filter returns the rows of rec where keep is true, in order. Kept rows
// come in runs; each run is a zero-copy slice, and the slices of a column
// are concatenated. When every row is kept, rec itself is returned.
func filter(mem memory.Allocator, rec arrow.RecordBatch, keep []bool) (arrow.RecordBatch, error) {
	var runs [][2]int64 // [start, end) of kept rows
	for i := 0; i < len(keep); {
		if !keep[i] {
			i++
			continue
		}
		j := i
		for j < len(keep) && keep[j] {
			j++
		}
		runs = append(runs, [2]int64{int64(i), int64(j)})
		i = j
	}
	switch {
	case len(runs) == 0:
		return nil, nil // no row kept: the SDK answers with an ack
	case len(runs) == 1:
		if runs[0][0] == 0 && runs[0][1] == rec.NumRows() {
			rec.Retain() // handed over to the SDK, like any output
			return rec, nil
		}
		return rec.NewSlice(runs[0][0], runs[0][1]), nil
	}

	cols := make([]arrow.Array, rec.NumCols())
	defer func() {
		for _, c := range cols {
			if c != nil {
				c.Release()
			}
		}
	}()
	var rows int64
	for _, r := range runs {
		rows += r[1] - r[0]
	}
	parts := make([]arrow.Array, len(runs))
	for c := range cols {
		for k, r := range runs {
			parts[k] = array.NewSlice(rec.Column(c), r[0], r[1])
		}
		col, err := array.Concatenate(parts, mem)
		for _, p := range parts {
			p.Release()
		}
		if err != nil {
			return nil, err
		}
		cols[c] = col
	}
	return array.NewRecordBatch(rec.Schema(), cols, rows), nil
}

func main() {
	if err := stage.Serve(context.Background(), validate{}); err != nil {
		fmt.Fprintln(os.Stderr, "validate:", err)
		os.Exit(1)
	}
}
