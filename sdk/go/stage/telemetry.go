package stage

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
)

// Tracing (docs/observability.md): the engine sends the W3C context of
// its exchange span with every batch (`traceparent`); the SDK starts a
// child span per exchange, "exchange <stage>", and hands it to Process in
// ctx, so a stage's own spans nest under it. The engine sets
// OTEL_EXPORTER_OTLP_ENDPOINT for the stages it starts when it exports its
// own spans; Serve then exports this process's spans there over OTLP/gRPC,
// as service OTEL_SERVICE_NAME, else "<stage>-go". WithTracerProvider
// replaces all of that with a provider of the program's own.

// Standard OpenTelemetry variables.
const (
	envOTLPEndpoint = "OTEL_EXPORTER_OTLP_ENDPOINT"
	envServiceName  = "OTEL_SERVICE_NAME"
)

// WithTracerProvider makes the exchange spans with tp instead of the OTLP
// exporter Serve sets up from the environment.
func WithTracerProvider(tp trace.TracerProvider) Option {
	return func(c *config) { c.tracerProvider = tp }
}

// exporting is the tracer provider Serve installed from the environment;
// shutdown sends its last spans.
type exporting struct {
	tp *sdktrace.TracerProvider
}

func (e exporting) shutdown(timeout time.Duration) error {
	if e.tp == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return e.tp.Shutdown(ctx)
}

// exportFromEnv makes the OTLP exporter the environment asks for, if any.
func exportFromEnv(stageName string) (exporting, error) {
	endpoint := strings.TrimSpace(os.Getenv(envOTLPEndpoint))
	if endpoint == "" {
		return exporting{}, nil
	}
	opts, err := otlpOptions(endpoint)
	if err != nil {
		return exporting{}, err
	}
	exp, err := otlptracegrpc.New(context.Background(), opts...)
	if err != nil {
		return exporting{}, fmt.Errorf("stage: exporting spans to %s: %w", endpoint, err)
	}
	service := os.Getenv(envServiceName)
	if service == "" {
		service = stageName + "-go"
	}
	res := resource.NewSchemaless(attribute.String("service.name", service))
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp), sdktrace.WithResource(res))
	return exporting{tp: tp}, nil
}

// otlpOptions turns an endpoint URL (http://host:4317 is plaintext,
// https:// is TLS) into exporter options.
func otlpOptions(endpoint string) ([]otlptracegrpc.Option, error) {
	u, err := url.Parse(endpoint)
	if err != nil || u.Host == "" {
		return nil, fmt.Errorf("stage: %s=%q is not a URL like http://127.0.0.1:4317", envOTLPEndpoint, endpoint)
	}
	opts := []otlptracegrpc.Option{otlptracegrpc.WithEndpoint(u.Host)}
	switch u.Scheme {
	case "http":
		opts = append(opts, otlptracegrpc.WithInsecure())
	case "https":
	default:
		return nil, fmt.Errorf("stage: %s=%q: the scheme must be http or https", envOTLPEndpoint, endpoint)
	}
	return opts, nil
}

// tracerOf is the tracer exchange spans are made with: the program's
// provider (WithTracerProvider), else the one Serve made from the
// environment, else OpenTelemetry's global one (a no-op unless the program
// installed one).
func tracerOf(cfg config, exp exporting) trace.Tracer {
	const scope = "github.com/sluice-etl/sluice/sdk/go/stage"
	switch {
	case cfg.tracerProvider != nil:
		return cfg.tracerProvider.Tracer(scope)
	case exp.tp != nil:
		return exp.tp.Tracer(scope)
	default:
		return otel.GetTracerProvider().Tracer(scope)
	}
}

// exchangeSpan is the span of one exchange. The processing goroutine
// starts it at the first batch that names its parent; the handler ends it
// when the exchange is over, so a mutex guards it.
type exchangeSpan struct {
	mu    sync.Mutex
	span  trace.Span // nil until started
	ended bool       // an exchange that ended first starts none (it would never end)
}

// start starts the span under traceparent, once, and returns ctx with it.
func (s *exchangeSpan) start(ctx context.Context, tracer trace.Tracer, traceparent string, req OpenRequest) context.Context {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.span != nil {
		return trace.ContextWithSpan(ctx, s.span)
	}
	if s.ended {
		return ctx
	}
	parent := propagation.TraceContext{}.Extract(ctx, propagation.MapCarrier{"traceparent": traceparent})
	if !trace.SpanContextFromContext(parent).IsValid() {
		return ctx
	}
	ctx, s.span = tracer.Start(parent, "exchange "+req.Stage,
		trace.WithSpanKind(trace.SpanKindServer),
		trace.WithAttributes(
			attribute.String("sluice.stage", req.Stage),
			attribute.Int64("sluice.epoch", int64(req.Epoch)),
			attribute.Int64("sluice.partition", int64(req.Partition)),
		))
	return ctx
}

// end ends the span, recording err on it.
func (s *exchangeSpan) end(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ended = true
	if s.span == nil {
		return
	}
	if err != nil {
		s.span.RecordError(err)
		s.span.SetStatus(codes.Error, err.Error())
	}
	s.span.End()
}

// context is ctx holding the span (also once ended), for the exchange's
// log lines: a handler like JSONHandler takes the trace ids from it.
func (s *exchangeSpan) context(ctx context.Context) context.Context {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.span == nil {
		return ctx
	}
	return trace.ContextWithSpan(ctx, s.span)
}
