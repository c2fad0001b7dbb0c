package main

import (
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"

	"github.com/sluice-etl/sluice/sdk/go/stage"
	"github.com/sluice-etl/sluice/sdk/go/stage/stagetest"
)

func logLines(mem memory.Allocator, lines ...string) arrow.RecordBatch {
	b := array.NewRecordBuilder(mem, inputSchema)
	defer b.Release()
	for i, l := range lines {
		b.Field(inID).(*array.Int64Builder).Append(int64(i))
		b.Field(inLine).(*array.StringBuilder).Append(l)
	}
	return b.NewRecordBatch()
}

func process(t *testing.T, mem memory.Allocator, lines ...string) (arrow.RecordBatch, []stage.RowError) {
	t.Helper()
	p, err := parse{}.Open(t.Context(), stage.OpenRequest{Stage: "parse", Allocator: mem})
	if err != nil {
		t.Fatal(err)
	}
	in := logLines(mem, lines...)
	defer in.Release()
	out, errs, err := p.Process(t.Context(), in)
	if err != nil {
		t.Fatal(err)
	}
	return out, errs
}

func TestParse(t *testing.T) {
	mem := memory.NewCheckedAllocator(memory.DefaultAllocator)
	defer mem.AssertSize(t, 0)
	out, errs := process(t, mem,
		`10.1.2.3 - - [1996-03-13 00:00:00] "GET /orders/1/lines/1?mode=AIR HTTP/1.1" 200 17954`,
		`junk`,
		`10.1.2.3 - - [t] "POST /x HTTP/1.0" 404 -`,
		`10.1.2.3 - - [t] "GET /x HTTP/1.1" 200 99999999999999999999`,
		`10.1.2.3 - - [t] "get /x HTTP/1.1" 200 1`,  // the method is upper case
		`10.1.2.3 - - [t] "GET /x HTTP/1.1" 200 1 `, // nothing may follow
		``,
	)
	defer out.Release()
	if !out.Schema().Equal(outputSchema) {
		t.Fatalf("schema %s", out.Schema())
	}
	if out.NumRows() != 2 {
		t.Fatalf("%d rows kept", out.NumRows())
	}
	col := func(c int) *array.String { return out.Column(c).(*array.String) }
	if id := out.Column(0).(*array.Int64); id.Value(0) != 0 || id.Value(1) != 2 {
		t.Errorf("ids %v", id)
	}
	if col(1).Value(0) != "10.1.2.3" || col(2).Value(0) != "1996-03-13 00:00:00" || col(3).Value(0) != "GET" || col(4).Value(0) != "/orders/1/lines/1?mode=AIR" {
		t.Errorf("row 0: %v %v %v %v", col(1), col(2), col(3), col(4))
	}
	status := out.Column(5).(*array.Int32)
	bytes := out.Column(6).(*array.Int64)
	if status.Value(0) != 200 || bytes.Value(0) != 17954 || status.Value(1) != 404 || !bytes.IsNull(1) {
		t.Errorf("status %v bytes %v", status, bytes)
	}
	want := map[int64]string{1: "not an access log line", 3: "bytes 99999999999999999999 do not fit an int64",
		4: "not an access log line", 5: "not an access log line", 6: "not an access log line"}
	if len(errs) != len(want) {
		t.Fatalf("errors %v", errs)
	}
	for _, e := range errs {
		if e.Code != stage.Malformed || e.Message != want[e.Row] {
			t.Errorf("row %d: %v", e.Row, e)
		}
	}
}

func TestNoLineParsedIsAnAck(t *testing.T) {
	out, errs := process(t, memory.DefaultAllocator, "a", "b")
	if out != nil || len(errs) != 2 {
		t.Fatalf("out %v errs %v", out, errs)
	}
}

// Whatever a line holds, it is parsed or refused with a row error: never a
// panic, never a row lost or made up.
func FuzzParse(f *testing.F) {
	f.Add(`10.1.2.3 - - [t] "GET /x HTTP/1.1" 200 1`)
	f.Add(`a b c [] "GET / HTTP/1" 000 -`)
	f.Add("\x00\xff[\"")
	f.Fuzz(func(t *testing.T, line string) {
		mem := memory.NewCheckedAllocator(memory.DefaultAllocator)
		defer mem.AssertSize(t, 0)
		out, errs := process(t, mem, line, line)
		kept := 0
		if out != nil {
			kept = int(out.NumRows())
			defer out.Release()
		}
		if kept+len(errs) != 2 {
			t.Fatalf("%q: %d kept, %d errors", line, kept, len(errs))
		}
		if kept > 0 && !strings.Contains(line, out.Column(4).(*array.String).Value(0)) {
			t.Fatalf("%q: path %q is not in the line", line, out.Column(4).(*array.String).Value(0))
		}
	})
}

func TestMain(m *testing.M) {
	stagetest.RunMainIfAsked(main)
	os.Exit(m.Run())
}

// The binary, as the engine runs it: a child process on a unix socket.
func TestChildProcess(t *testing.T) {
	srv := stagetest.StartProcess(t, memory.DefaultAllocator)
	in := logLines(memory.DefaultAllocator, `1.2.3.4 - - [t] "GET / HTTP/1.1" 200 5`, "no")
	defer in.Release()
	events, err := srv.Run(t.Context(), stagetest.OpenCmd("parse", 1, 0, ""), inputSchema, in)
	defer stagetest.Release(events)
	if err != nil {
		t.Fatal(err)
	}
	if got := stagetest.Kinds(events); got != "batch(0) row_errors(0) flushed" {
		t.Fatalf("events %s", got)
	}
}

// go test -bench Parse -cpuprofile cpu.out ./examples/parse/ && go tool pprof -top cpu.out
// says where the Go stage's time goes (docs/stages.md, "Go or Rust?").
func BenchmarkParse(b *testing.B) {
	lines := make([]string, 8192)
	for i := range lines {
		lines[i] = fmt.Sprintf(`10.%d.%d.1 - - [1996-03-13 00:00:00] "GET /orders/%d/lines/1?mode=AIR HTTP/1.1" 200 %d`, i%256, i%7, i, i*13)
	}
	in := logLines(memory.DefaultAllocator, lines...)
	defer in.Release()
	p, err := parse{}.Open(b.Context(), stage.OpenRequest{Stage: "parse", Allocator: memory.DefaultAllocator})
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for b.Loop() {
		out, _, err := p.Process(b.Context(), in)
		if err != nil {
			b.Fatal(err)
		}
		out.Release()
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(lines)), "ns/line")
}
