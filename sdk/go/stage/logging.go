package stage

import (
	"context"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"go.opentelemetry.io/otel/trace"
)

// Logs (docs/observability.md): the engine reads a child stage's stderr
// line by line into its own log, tagged with the stage's name. With
// SLUICE_LOG_FORMAT=json (which a child inherits from the engine) the
// default logger writes JSON lines in the engine's format: timestamp,
// level, message, the attributes, and trace_id / span_id on the lines
// logged with a context that holds a span (the exchange's lines, and a
// Processor's own lines logged with the ctx it is given), so the engine's
// log keeps the trace of each line. SLUICE_LOG sets the level (see
// levelFromEnv). WithLogger replaces all of that.

const (
	envLogFormat = "SLUICE_LOG_FORMAT"
	envLogLevel  = "SLUICE_LOG"
)

// defaultLogger is the logger of a server given no WithLogger.
func defaultLogger() *slog.Logger {
	if os.Getenv(envLogFormat) != "json" {
		return slog.Default()
	}
	return slog.New(JSONHandler(os.Stderr, levelFromEnv()))
}

// JSONHandler writes JSON lines in the engine's format (see above), for a
// program that builds its own logger and wants the stages' format.
func JSONHandler(w io.Writer, level slog.Leveler) slog.Handler {
	return withTraceIDs{slog.NewJSONHandler(w, &slog.HandlerOptions{Level: level, ReplaceAttr: engineKeys})}
}

// withTraceIDs adds the trace_id and span_id of the context's span to each
// record logged with a context.
type withTraceIDs struct{ slog.Handler }

func (h withTraceIDs) Handle(ctx context.Context, r slog.Record) error {
	if sc := trace.SpanContextFromContext(ctx); sc.IsValid() {
		r.AddAttrs(slog.String("trace_id", sc.TraceID().String()), slog.String("span_id", sc.SpanID().String()))
	}
	return h.Handler.Handle(ctx, r)
}

func (h withTraceIDs) WithAttrs(as []slog.Attr) slog.Handler {
	return withTraceIDs{h.Handler.WithAttrs(as)}
}

func (h withTraceIDs) WithGroup(name string) slog.Handler {
	return withTraceIDs{h.Handler.WithGroup(name)}
}

// engineKeys renames slog's time and msg to the engine's timestamp and
// message, the timestamp in UTC with microseconds as the engine writes it.
func engineKeys(groups []string, a slog.Attr) slog.Attr {
	if len(groups) > 0 {
		return a
	}
	switch a.Key {
	case slog.TimeKey:
		return slog.String("timestamp", a.Value.Time().UTC().Format("2006-01-02T15:04:05.000000Z"))
	case slog.MessageKey:
		a.Key = "message"
	}
	return a
}

// levelFromEnv is the most verbose level SLUICE_LOG names (it holds the
// engine's filter: "warn,sluice=debug" gives debug); info when it names
// none. The engine filters the lines it reads from a stage again, under
// the target sluice::stage, so a verbose stage costs a pipe, not a noisy log.
func levelFromEnv() slog.Level {
	level, named := slog.LevelError, false
	for _, directive := range strings.Split(os.Getenv(envLogLevel), ",") {
		name := directive[strings.LastIndex(directive, "=")+1:]
		l, ok := levelNamed(strings.ToLower(strings.TrimSpace(name)))
		if ok && (!named || l < level) {
			level, named = l, true
		}
	}
	if !named {
		return slog.LevelInfo
	}
	return level
}

func levelNamed(name string) (slog.Level, bool) {
	switch name {
	case "trace", "debug":
		return slog.LevelDebug, true
	case "info":
		return slog.LevelInfo, true
	case "warn", "warning":
		return slog.LevelWarn, true
	case "error":
		return slog.LevelError, true
	}
	return 0, false
}

// since is a duration as the engine logs it: seconds, a number.
func since(start time.Time) float64 { return time.Since(start).Seconds() }
