package stage

import (
	"log/slog"
	"testing"
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
