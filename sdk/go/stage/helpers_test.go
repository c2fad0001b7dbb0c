package stage_test

import (
	"context"
	"log/slog"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sluice-etl/sluice/sdk/go/stage"
	"github.com/sluice-etl/sluice/sdk/go/stage/stagetest"
)

// people is the input schema of the test stages.
var people = arrow.NewSchema([]arrow.Field{
	{Name: "id", Type: arrow.PrimitiveTypes.Int64},
	{Name: "name", Type: arrow.BinaryTypes.String, Nullable: true},
}, nil)

// testStage is a Stage assembled from functions.
type testStage struct {
	stage.Base
	manifest stage.Manifest
	open     func(ctx context.Context, req stage.OpenRequest) (stage.Processor, error)
	health   func(ctx context.Context) error
}

func (s *testStage) Manifest() stage.Manifest { return s.manifest }
func (s *testStage) Open(ctx context.Context, req stage.OpenRequest) (stage.Processor, error) {
	return s.open(ctx, req)
}
func (s *testStage) Health(ctx context.Context) error {
	if s.health != nil {
		return s.health(ctx)
	}
	return nil
}

func manifest(name string) stage.Manifest {
	return stage.Manifest{
		Name:         name,
		Version:      "0.1.0",
		InputSchema:  &stage.SchemaRef{Name: "people", Version: "1", Schema: people},
		OutputSchema: &stage.SchemaRef{Name: "people", Version: "1", Schema: people},
	}
}

// processing returns a stage of the people schema running f on every batch.
func processing(name string, f stage.ProcessorFunc) *testStage {
	return &testStage{
		manifest: manifest(name),
		open: func(context.Context, stage.OpenRequest) (stage.Processor, error) {
			return f, nil
		},
	}
}

// peopleBatch builds a record of the people schema with ids from..to-1;
// names are "p<id>", NULL for multiples of 3.
func peopleBatch(mem memory.Allocator, from, to int64) arrow.RecordBatch {
	b := array.NewRecordBuilder(mem, people)
	defer b.Release()
	ids := b.Field(0).(*array.Int64Builder)
	names := b.Field(1).(*array.StringBuilder)
	for i := from; i < to; i++ {
		ids.Append(i)
		if i%3 == 0 {
			names.AppendNull()
		} else {
			names.Append("p" + itoa(i))
		}
	}
	return b.NewRecordBatch()
}

func itoa(i int64) string {
	if i == 0 {
		return "0"
	}
	var b []byte
	for ; i > 0; i /= 10 {
		b = append([]byte{byte('0' + i%10)}, b...)
	}
	return string(b)
}

func ids(rec arrow.RecordBatch) []int64 {
	return rec.Column(0).(*array.Int64).Int64Values()
}

// quiet is the logger of servers whose exchanges fail on purpose.
var quiet = stage.WithLogger(slog.New(slog.DiscardHandler))

// start serves st with a checked allocator that must be back to 0 bytes
// when the test ends (polling: a cancelled exchange finishes on the server
// a little after the client sees it end), and opts.
func start(t *testing.T, st stage.Stage, opts ...stage.Option) (*stagetest.Server, *memory.CheckedAllocator) {
	t.Helper()
	mem := memory.NewCheckedAllocator(memory.DefaultAllocator)
	t.Cleanup(func() {
		eventually(t, "allocator back to 0 bytes", func() bool { return mem.CurrentAlloc() == 0 })
		mem.AssertSize(t, 0)
	})
	return stagetest.Start(t, st, mem, append([]stage.Option{stage.WithAllocator(mem), quiet}, opts...)...), mem
}

func wantStatusContaining(t *testing.T, err error, code codes.Code, part string) {
	t.Helper()
	if st, ok := status.FromError(err); err == nil || !ok || st.Code() != code || !strings.Contains(st.Message(), part) {
		t.Fatalf("got %v, want %v with %q", err, code, part)
	}
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// goroutinesBackTo waits until the number of goroutines is at most n.
func goroutinesBackTo(t *testing.T, n int) {
	t.Helper()
	eventually(t, "goroutines to end", func() bool { return runtime.NumGoroutine() <= n })
}

// gather answers nothing until "end", then every record it was sent.
type gather struct{ held []arrow.RecordBatch }

func (g *gather) Process(_ context.Context, rec arrow.RecordBatch) (arrow.RecordBatch, []stage.RowError, error) {
	rec.Retain()
	g.held = append(g.held, rec)
	return nil, nil, nil
}

func (g *gather) Flush(context.Context) ([]arrow.RecordBatch, error) {
	out := g.held
	g.held = nil
	return out, nil
}
