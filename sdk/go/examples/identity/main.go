// Command identity is the "identity" example stage (examples/stages/README.md):
// it answers every input batch with the same batch, for any schema. The
// engine's benchmarks and the conformance kit use it to measure and check
// the transport alone.
package main

import (
	"context"
	"fmt"
	"os"

	"github.com/apache/arrow-go/v18/arrow"

	"github.com/sluice-etl/sluice/sdk/go/stage"
)

type identity struct{ stage.Base }

func (identity) Manifest() stage.Manifest {
	return stage.Manifest{
		Name:    "identity",
		Version: "1.0.0",
		// InputSchema and OutputSchema nil: any schema, output = input.
		Stateful: false,
		Ordering: stage.OrderingPreserve,
		Errors:   stage.ErrorsFatalOnly,
	}
}

func (identity) Open(context.Context, stage.OpenRequest) (stage.Processor, error) {
	return stage.ProcessorFunc(pass), nil
}

// pass returns its input: Retain, because the SDK releases the input after
// Process and the output once sent, one reference each. Being the input
// itself, the output goes back as an "unchanged" answer, no rows, when the
// engine offers those (v1.1).
func pass(_ context.Context, rec arrow.RecordBatch) (arrow.RecordBatch, []stage.RowError, error) {
	rec.Retain()
	return rec, nil, nil
}

func main() {
	// it keeps no value of its input past Process, so it may read its input
	// where the engine wrote it in shared memory, without a copy
	if err := stage.Serve(context.Background(), identity{}, stage.WithInPlaceInput()); err != nil {
		fmt.Fprintln(os.Stderr, "identity:", err)
		os.Exit(1)
	}
}
