package stage_test

import (
	"context"
	"io"
	"strings"
	"testing"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"

	"github.com/sluice-etl/sluice/sdk/go/stage"
	"github.com/sluice-etl/sluice/sdk/go/stage/stagetest"
)

var wide = arrow.NewSchema([]arrow.Field{
	{Name: "n", Type: arrow.PrimitiveTypes.Int64},
	{Name: "pad", Type: arrow.BinaryTypes.String},
}, nil)

// bigRows rows of wide are about 80 MB: more than the 64 MiB limit of
// one gRPC message.
const bigRows = 1_200_000

// wideRecord builds rows n = from..from+rows-1 of wide, with a 56-byte pad
// (and every 1000th a 4 KiB one, so that rows are not all alike).
func wideRecord(mem memory.Allocator, from, rows int64) arrow.RecordBatch {
	b := array.NewRecordBuilder(mem, wide)
	defer b.Release()
	ns, pads := b.Field(0).(*array.Int64Builder), b.Field(1).(*array.StringBuilder)
	ns.Reserve(int(rows))
	pads.Reserve(int(rows))
	pads.ReserveData(int(rows) * 60)
	short, long := strings.Repeat("x", 56), strings.Repeat("y", 4096)
	for i := range rows {
		ns.Append(from + i)
		if (from+i)%1000 == 0 {
			pads.Append(long)
		} else {
			pads.Append(short)
		}
	}
	return b.NewRecordBatch()
}

// exploding answers every input batch with bigRows rows, and bigRows more
// at Flush.
type exploding struct {
	mem  memory.Allocator
	next int64
}

func (e *exploding) make() arrow.RecordBatch {
	rec := wideRecord(e.mem, e.next, bigRows)
	e.next += bigRows
	return rec
}

func (e *exploding) Process(context.Context, arrow.RecordBatch) (arrow.RecordBatch, []stage.RowError, error) {
	return e.make(), nil, nil
}

func (e *exploding) Flush(context.Context) ([]arrow.RecordBatch, error) {
	return []arrow.RecordBatch{e.make()}, nil
}

func (e *exploding) Snapshot(context.Context) ([]byte, error) { return nil, nil } // no state

// protocol.md section 1: a stage keeps each output message under 64 MiB
// by splitting a large answer into several "batch" messages with the same
// in_seq. The client accepts messages of up to 64 MiB, as the engine does,
// so a message over the limit fails the exchange.
func TestAnswerLargerThanTheMessageLimitIsSplit(t *testing.T) {
	if testing.Short() {
		t.Skip("moves 160 MB")
	}
	st := &testStage{manifest: manifest("exploding")}
	st.manifest.OutputSchema = &stage.SchemaRef{Name: "wide", Version: "1", Schema: wide}
	st.manifest.Stateful = true
	st.open = func(_ context.Context, req stage.OpenRequest) (stage.Processor, error) {
		return &exploding{mem: req.Allocator}, nil
	}
	srv, mem := start(t, st)
	in := peopleBatch(mem, 0, 1)
	defer in.Release()

	x, err := srv.Open(t.Context(), stagetest.OpenCmd("exploding", 4, 0, ""), people)
	if err != nil {
		t.Fatal(err)
	}
	if err := x.Send(in); err != nil {
		t.Fatal(err)
	}
	if err := x.End(); err != nil {
		t.Fatal(err)
	}
	var (
		next          int64 // the n expected next: rows come in order
		answers, tail int   // messages answering batch 0; sent at Flush
		flushed       *uint64
	)
	for {
		ev, err := x.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		env := ev.Envelope
		switch {
		case env.Kind == stagetest.Batch:
			if ev.Size >= stage.MaxMessageSize {
				t.Errorf("a message of %d bytes", ev.Size)
			}
			if next < bigRows && (env.InSeq == nil || *env.InSeq != 0) || next >= bigRows && env.InSeq != nil {
				t.Errorf("rows from %d: in_seq %v", next, env.InSeq)
			}
			if env.InSeq != nil {
				answers++
			} else {
				tail++
			}
			for _, n := range ev.Record.Column(0).(*array.Int64).Int64Values() {
				if n != next {
					t.Fatalf("row %d where %d was next", n, next)
				}
				next++
			}
			pads := ev.Record.Column(1).(*array.String)
			for i := range pads.Len() {
				if n := ev.Record.Column(0).(*array.Int64).Value(i); n%1000 == 0 && len(pads.Value(i)) != 4096 || n%1000 != 0 && len(pads.Value(i)) != 56 {
					t.Fatalf("row %d: pad of %d bytes", n, len(pads.Value(i)))
				}
			}
			ev.Record.Release()
		case env.Kind == stagetest.Flushed:
			flushed = env.Rows
		default:
			t.Fatalf("unexpected %s", env.Kind)
		}
	}
	if next != 2*bigRows || flushed == nil || *flushed != 2*bigRows {
		t.Fatalf("received %d rows, flushed %v, want %d", next, flushed, 2*bigRows)
	}
	if answers < 2 || tail < 2 {
		t.Fatalf("%d messages answer the batch, %d come at Flush: a large answer was not split", answers, tail)
	}
}
