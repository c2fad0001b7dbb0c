// Command enrich is the "enrich" example stage (examples/stages/README.md):
// a lookup join from l_shipmode to a ship class.
//
// Output: the input columns, then ship_class (Utf8, NULL for an unknown
// ship mode) and is_air (true exactly when ship_class is "air").
package main

import (
	"context"
	"fmt"
	"os"
	"slices"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"

	"github.com/sluice-etl/sluice/sdk/go/examples/internal/lines"
	"github.com/sluice-etl/sluice/sdk/go/stage"
)

// shipClass is the lookup table; a ship mode not in it has no class (NULL).
var shipClass = map[string]string{
	"AIR":     "air",
	"REG AIR": "air",
	"MAIL":    "mail",
	"SHIP":    "sea",
	"RAIL":    "ground",
	"TRUCK":   "ground",
	"FOB":     "ground",
}

// outputSchema is the input columns, then ship_class and is_air.
var outputSchema = arrow.NewSchema(append(slices.Clone(lines.Fields),
	arrow.Field{Name: "ship_class", Type: arrow.BinaryTypes.String, Nullable: true},
	arrow.Field{Name: "is_air", Type: arrow.FixedWidthTypes.Boolean},
), nil)

type enrich struct{ stage.Base }

func (enrich) Manifest() stage.Manifest {
	return stage.Manifest{
		Name:         "enrich",
		Version:      "1.0.0",
		InputSchema:  lines.Ref,
		OutputSchema: &stage.SchemaRef{Name: "enriched_lines", Version: "1", Schema: outputSchema},
		Stateful:     false,
		Ordering:     stage.OrderingPreserve,
		Errors:       stage.ErrorsFatalOnly,
	}
}

func (enrich) Open(_ context.Context, req stage.OpenRequest) (stage.Processor, error) {
	// No config: decoding into an empty struct rejects any key.
	if err := req.DecodeConfig(&struct{}{}); err != nil {
		return nil, err
	}
	mem := req.Allocator
	return stage.ProcessorFunc(func(_ context.Context, rec arrow.RecordBatch) (arrow.RecordBatch, []stage.RowError, error) {
		return enrichBatch(mem, rec), nil, nil
	}), nil
}

// enrichBatch appends ship_class and is_air to rec; the input columns are
// shared, not copied.
func enrichBatch(mem memory.Allocator, rec arrow.RecordBatch) arrow.RecordBatch {
	modes := rec.Column(lines.ShipMode).(*array.String)
	n := modes.Len()

	classes := array.NewStringBuilder(mem)
	defer classes.Release()
	isAir := array.NewBooleanBuilder(mem)
	defer isAir.Release()
	classes.Reserve(n)
	isAir.Reserve(n)
	for i := range n {
		class, ok := shipClass[modes.Value(i)]
		if ok {
			classes.Append(class)
		} else {
			classes.AppendNull()
		}
		isAir.Append(class == "air")
	}
	classCol, airCol := classes.NewArray(), isAir.NewArray()
	defer classCol.Release()
	defer airCol.Release()

	cols := append(slices.Clone(rec.Columns()), classCol, airCol)
	return array.NewRecordBatch(outputSchema, cols, rec.NumRows())
}

func main() {
	if err := stage.Serve(context.Background(), enrich{}); err != nil {
		fmt.Fprintln(os.Stderr, "enrich:", err)
		os.Exit(1)
	}
}
