package stage_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/memory"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/sluice-etl/sluice/sdk/go/stage"
	"github.com/sluice-etl/sluice/sdk/go/stage/stagetest"
)

// The engine's exchange span, as the engine sends it in `traceparent`.
const (
	engineTrace = "4bf92f3577b34da6a3ce929d0e0e4736"
	engineSpan  = "00f067aa0ba902b7"
	engineTP    = "00-" + engineTrace + "-" + engineSpan + "-01"
)

// tracedExchange runs one exchange of two batches against st, traced into
// an in-memory recorder, and returns the spans it made.
func tracedExchange(t *testing.T, st stage.Stage, traceparent string, opts ...stage.Option) []sdktrace.ReadOnlySpan {
	t.Helper()
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	mem := memory.NewCheckedAllocator(memory.DefaultAllocator)
	opts = append([]stage.Option{stage.WithAllocator(mem), stage.WithTracerProvider(tp), quiet}, opts...)
	srv := stagetest.Start(t, st, mem, opts...)
	x, err := srv.Open(t.Context(), stagetest.OpenCmd("traced", 7, 1, ""), people)
	if err != nil {
		t.Fatal(err)
	}
	// A stage that fails the exchange ends the stream: a Send after that
	// returns io.EOF, and the status comes with RecvAll.
	send := func() error {
		for seq := range 2 {
			in := peopleBatch(mem, 0, 3)
			env := `{"v":1,"kind":"batch","epoch":7,"seq":` + itoa(int64(seq))
			if traceparent != "" {
				env += `,"traceparent":"` + traceparent + `"`
			}
			err := x.SendRaw(in, []byte(env+`}`))
			in.Release()
			if err != nil {
				return err
			}
		}
		return x.End()
	}
	if err := send(); err != nil && err != io.EOF {
		t.Fatal(err)
	}
	events, _ := x.RecvAll()
	stagetest.Release(events)
	if len(rec.Started()) == 0 {
		return nil // a span starts while the batches are processed: before their answers came
	}
	eventually(t, "the exchange span ended", func() bool { return len(rec.Ended()) > 0 })
	return rec.Ended()
}

func TestEachExchangeIsOneSpanUnderTheEnginesExchangeSpan(t *testing.T) {
	var inProcess trace.SpanContext
	st := processing("traced", func(ctx context.Context, rec arrow.RecordBatch) (arrow.RecordBatch, []stage.RowError, error) {
		inProcess = trace.SpanContextFromContext(ctx)
		return nil, nil, nil
	})
	spans := tracedExchange(t, st, engineTP)
	if len(spans) != 1 {
		t.Fatalf("%d spans, want one per exchange", len(spans))
	}
	s := spans[0]
	if s.Name() != "exchange traced" || s.SpanKind() != trace.SpanKindServer {
		t.Fatalf("span %q kind %v", s.Name(), s.SpanKind())
	}
	if got := s.SpanContext().TraceID().String(); got != engineTrace {
		t.Fatalf("trace %s, want the engine's %s", got, engineTrace)
	}
	if got := s.Parent().SpanID().String(); got != engineSpan || !s.Parent().IsRemote() {
		t.Fatalf("parent %s (remote %v), want the engine's exchange span %s", got, s.Parent().IsRemote(), engineSpan)
	}
	if inProcess.SpanID() != s.SpanContext().SpanID() {
		t.Fatal("Process did not get the exchange span in its context")
	}
	if s.Status().Code == codes.Error {
		t.Fatalf("status %v", s.Status())
	}
}

func TestAFailedExchangeRecordsItsErrorOnItsSpan(t *testing.T) {
	st := processing("traced", func(context.Context, arrow.RecordBatch) (arrow.RecordBatch, []stage.RowError, error) {
		return nil, nil, stage.Fatal(stage.InvalidArgument, "no good")
	})
	spans := tracedExchange(t, st, engineTP)
	if len(spans) != 1 || spans[0].Status().Code != codes.Error || len(spans[0].Events()) == 0 {
		t.Fatalf("spans %v", spans)
	}
}

func TestWithoutATraceparentOrWithABadOneNoSpanIsMade(t *testing.T) {
	st := processing("traced", func(context.Context, arrow.RecordBatch) (arrow.RecordBatch, []stage.RowError, error) {
		return nil, nil, nil
	})
	for _, tp := range []string{"", "00-xyz-00f067aa0ba902b7-01", "00-00000000000000000000000000000000-00f067aa0ba902b7-01"} {
		if spans := tracedExchange(t, st, tp); len(spans) != 0 {
			t.Fatalf("traceparent %q: %d spans", tp, len(spans))
		}
	}
}

// lockedBuffer is a log destination the server's goroutines share.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) lines() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return strings.Split(strings.TrimSpace(b.buf.String()), "\n")
}

func TestJSONLogLinesHaveTheEnginesKeysAndTheTraceOfTheirExchange(t *testing.T) {
	var logged lockedBuffer
	logger := slog.New(stage.JSONHandler(&logged, slog.LevelDebug))
	st := processing("traced", func(ctx context.Context, rec arrow.RecordBatch) (arrow.RecordBatch, []stage.RowError, error) {
		logger.InfoContext(ctx, "in process") // a stage's own line, with the ctx it got
		return nil, nil, nil
	})
	spans := tracedExchange(t, st, engineTP, stage.WithLogger(logger))
	if len(spans) != 1 {
		t.Fatalf("%d spans", len(spans))
	}
	stageSpan := spans[0].SpanContext().SpanID().String()
	found := map[string]bool{}
	eventually(t, "the exchange's last line", func() bool { return strings.Contains(strings.Join(logged.lines(), ""), "exchange flushed") })
	for _, l := range logged.lines() {
		var line map[string]any
		if err := json.Unmarshal([]byte(l), &line); err != nil {
			t.Fatalf("not a JSON line: %q", l)
		}
		for _, k := range []string{"timestamp", "level", "message"} {
			if _, ok := line[k]; !ok {
				t.Fatalf("no %q in %q", k, l)
			}
		}
		if _, ok := line["msg"]; ok {
			t.Fatalf("slog's own key in %q", l)
		}
		msg := line["message"].(string)
		if msg == "in process" || msg == "exchange flushed" {
			found[msg] = true
			if line["trace_id"] != engineTrace || line["span_id"] != stageSpan {
				t.Fatalf("%q: trace %v span %v, want %s %s", msg, line["trace_id"], line["span_id"], engineTrace, stageSpan)
			}
		}
	}
	if !found["in process"] || !found["exchange flushed"] {
		t.Fatalf("lines %v", logged.lines())
	}
}
