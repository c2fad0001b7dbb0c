package stage

import (
	"context"
	"log/slog"
	"testing"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
)

func TestOTLPEndpointsAreURLsWithAPlainOrTLSScheme(t *testing.T) {
	for _, ok := range []string{"http://127.0.0.1:4317", "https://collector.example:4317", "http://[::1]:4317/"} {
		if _, err := otlpOptions(ok); err != nil {
			t.Errorf("%s: %v", ok, err)
		}
	}
	for _, bad := range []string{"127.0.0.1:4317", "grpc://127.0.0.1:4317", "http://", "::::", "http//x"} {
		if _, err := otlpOptions(bad); err == nil {
			t.Errorf("%s accepted", bad)
		}
	}
}

func TestWithoutTheEndpointVariableNothingIsExported(t *testing.T) {
	t.Setenv(envOTLPEndpoint, "")
	exp, err := exportFromEnv("x")
	if err != nil || exp.tp != nil {
		t.Fatalf("%v %v", exp, err)
	}
	t.Setenv(envOTLPEndpoint, "not a url")
	if _, err := exportFromEnv("x"); err == nil {
		t.Fatal("a bad endpoint was accepted")
	}
}

func TestTheStageLogsAtTheMostVerboseLevelTheEnginesFilterNames(t *testing.T) {
	for filter, want := range map[string]slog.Level{
		"":                       slog.LevelInfo,
		"warn":                   slog.LevelWarn,
		"warn,sluice=debug":      slog.LevelDebug,
		"sluice::stage=trace":    slog.LevelDebug,
		"ERROR":                  slog.LevelError,
		"off":                    slog.LevelInfo,
		"warn,sluice=nonsense,x": slog.LevelWarn,
	} {
		t.Setenv(envLogLevel, filter)
		if got := levelFromEnv(); got != want {
			t.Errorf("SLUICE_LOG=%q: %v, want %v", filter, got, want)
		}
	}
}

func TestAnExchangeThatEndedFirstStartsNoSpan(t *testing.T) {
	var s exchangeSpan
	s.end(nil) // the handler gave up before the first batch was processed
	tp := sdktrace.NewTracerProvider()
	ctx := s.start(context.Background(), tp.Tracer("t"), "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", OpenRequest{Stage: "x"})
	if s.span != nil || trace.SpanContextFromContext(ctx).IsValid() {
		t.Fatal("a span was started after the exchange ended: it would never end")
	}
}
