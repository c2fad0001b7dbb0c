package stage

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"runtime/debug"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/apache/arrow-go/v18/arrow/flight"
	flightgen "github.com/apache/arrow-go/v18/arrow/flight/gen/flight"
	"github.com/apache/arrow-go/v18/arrow/memory"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sluice-etl/sluice/sdk/go/internal/envelope"
)

// The environment variables Serve listens on (protocol.md section 1).
const (
	// EnvSocket is the path of the unix socket the engine starts a child
	// stage with.
	EnvSocket = "SLUICE_STAGE_SOCKET"
	// EnvAddr is host:port to listen on with TCP, for a remote stage; used
	// when EnvSocket is not set.
	EnvAddr = "SLUICE_STAGE_ADDR"
)

// The actions of protocol.md section 2.
const (
	ActionDescribe = "describe"
	ActionHealth   = "health"
)

// Option configures Serve, NewServer and Register.
type Option func(*config)

type config struct {
	mem             memory.Allocator
	lis             net.Listener
	log             *slog.Logger
	shutdownTimeout time.Duration
	grpcOpts        []grpc.ServerOption
	tracerProvider  trace.TracerProvider // nil: see tracerOf
	tls             *tlsFiles            // nil: from the environment
	token           *string              // nil: from the environment
	inPlaceInput    bool
}

func newConfig(opts []Option) config {
	c := config{mem: memory.DefaultAllocator, log: defaultLogger(), shutdownTimeout: 4 * time.Second}
	for _, o := range opts {
		o(&c)
	}
	return c
}

// WithAllocator sets the allocator for decoding and encoding batches, handed
// to stages as OpenRequest.Allocator. Default: memory.DefaultAllocator.
// Tests pass a memory.CheckedAllocator to catch leaks.
func WithAllocator(mem memory.Allocator) Option { return func(c *config) { c.mem = mem } }

// WithListener makes Serve serve on lis instead of the address in the
// environment (tests, embedding). Serve closes it.
func WithListener(lis net.Listener) Option { return func(c *config) { c.lis = lis } }

// WithInPlaceInput makes the stage read its input batches where the engine
// wrote them in shared memory (protocol.md section 8), instead of copying
// each batch to the Go heap first: one copy of every batch less.
//
// The price is a rule: a string or []byte taken from an input array
// (String.Value, Binary.Value, ValueBytes, ...) points into that memory,
// which the engine reuses once the record is released and which is unmapped
// when the exchange ends. Copy what you keep past Process (strings.Clone,
// bytes.Clone; map keys included). Records and arrays themselves are safe
// to retain: the memory stays theirs until they are released. Off by
// default; it changes nothing over Flight.
func WithInPlaceInput() Option { return func(c *config) { c.inPlaceInput = true } }

// WithLogger sets the logger of the server: failed exchanges at Warn,
// lifecycle at Info, exchanges at Debug. Default: slog.Default(), or JSON
// lines in the engine's format with SLUICE_LOG_FORMAT=json (stderr,
// which the engine collects from a child stage).
func WithLogger(l *slog.Logger) Option { return func(c *config) { c.log = l } }

// WithShutdownTimeout bounds how long Serve waits for running exchanges
// after a signal or the cancellation of its context before it cuts them
// off. Default: 4s, inside the 5 s the engine waits after SIGTERM before
// it sends SIGKILL (protocol.md section 1), so that the stage still exits
// on its own, with its last spans exported.
func WithShutdownTimeout(d time.Duration) Option { return func(c *config) { c.shutdownTimeout = d } }

// WithServerOptions adds gRPC server options (interceptors, keepalive)
// after the SDK's own: its message size limits, and the credentials and
// token check of WithTLS and WithToken. A grpc.Creds here replaces the
// credentials of WithTLS; a grpc.UnaryInterceptor or grpc.StreamInterceptor
// runs before the token check.
func WithServerOptions(opts ...grpc.ServerOption) Option {
	return func(c *config) { c.grpcOpts = append(c.grpcOpts, opts...) }
}

// Serve runs s until ctx is cancelled or the process gets SIGINT or SIGTERM,
// then stops gracefully: it stops accepting exchanges and lets running ones
// finish, for at most the shutdown timeout. It returns nil after such a
// stop, and an error if it cannot listen or serve.
//
// It listens on the unix socket named by SLUICE_STAGE_SOCKET (the engine
// sets it when it starts the stage as a child process; a stale socket file
// left by a previous run is replaced), else on the TCP address
// SLUICE_STAGE_ADDR (host:port), else it fails. WithListener overrides both.
//
// It serves TLS when SLUICE_STAGE_TLS_CERT and SLUICE_STAGE_TLS_KEY are set,
// requires client certificates when SLUICE_STAGE_TLS_CLIENT_CA is, and a
// token when SLUICE_STAGE_TOKEN is; WithTLS and WithToken override them.
func Serve(ctx context.Context, s Stage, opts ...Option) error {
	cfg := newConfig(opts)
	svc, err := newService(s, cfg)
	var sec security
	if err == nil {
		sec, err = securityOf(cfg)
	}
	if err != nil {
		if cfg.lis != nil {
			cfg.lis.Close()
		}
		return err
	}
	lis := cfg.lis
	if lis == nil {
		if lis, err = listenFromEnv(); err != nil {
			return err
		}
	}
	var exp exporting
	if cfg.tracerProvider == nil {
		// a stage keeps serving when its spans cannot be exported
		if exp, err = exportFromEnv(svc.manifest.Name); err != nil {
			cfg.log.Warn("sluice stage: spans are not exported", "stage", svc.manifest.Name, "error", err)
		}
		if exp.tp != nil {
			// the stage program's own spans (otel.Tracer(...).Start(ctx, ...))
			// go where the exchange spans go
			otel.SetTracerProvider(exp.tp)
		}
	}
	svc.tracer = tracerOf(cfg, exp)
	defer func() {
		if err := exp.shutdown(5 * time.Second); err != nil {
			cfg.log.Warn("sluice stage: the last spans were not exported", "stage", svc.manifest.Name, "error", err)
		}
	}()
	gs := newGRPCServer(svc, cfg, sec)

	ctx, stopSignals := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stopSignals()

	served := make(chan error, 1)
	go func() { served <- gs.Serve(lis) }()
	cfg.log.Info("sluice stage serving", "stage", svc.manifest.Name, "version", svc.manifest.Version,
		"network", lis.Addr().Network(), "addr", lis.Addr().String(),
		"tls", sec.creds != nil, "client_certificates", sec.clientAuth, "token", sec.tokenHash != nil)
	if sec.tokenHash != nil && sec.creds == nil && lis.Addr().Network() == "tcp" {
		cfg.log.Warn("sluice stage: the token travels in clear text: serve TLS on TCP (SLUICE_STAGE_TLS_CERT and SLUICE_STAGE_TLS_KEY)",
			"stage", svc.manifest.Name)
	}

	select {
	case err := <-served:
		return fmt.Errorf("stage: serve: %w", err)
	case <-ctx.Done():
	}
	stopSignals() // from here a second signal kills the process the default way
	cfg.log.Info("sluice stage stopping", "stage", svc.manifest.Name, "cause", context.Cause(ctx))

	stopped := make(chan struct{})
	go func() { gs.GracefulStop(); close(stopped) }()
	timer := time.NewTimer(cfg.shutdownTimeout)
	defer timer.Stop()
	select {
	case <-stopped:
	case <-timer.C:
		cfg.log.Warn("sluice stage: exchanges still running after the shutdown timeout; cutting them off",
			"stage", svc.manifest.Name, "timeout", cfg.shutdownTimeout)
		gs.Stop()
		<-stopped
	}
	<-served // nil after a stop
	return nil
}

func listenFromEnv() (net.Listener, error) {
	if path := strings.TrimPrefix(os.Getenv(EnvSocket), "unix://"); path != "" {
		// The engine restarts a stage that exits; the socket file of the
		// previous process may still be there, and would make Listen fail.
		if fi, err := os.Lstat(path); err == nil && fi.Mode()&os.ModeSocket != 0 {
			_ = os.Remove(path)
		}
		lis, err := net.Listen("unix", path)
		if err != nil {
			return nil, fmt.Errorf("stage: listen on %s=%s: %w", EnvSocket, path, err)
		}
		return lis, nil
	}
	if addr := os.Getenv(EnvAddr); addr != "" {
		lis, err := net.Listen("tcp", addr)
		if err != nil {
			return nil, fmt.Errorf("stage: listen on %s=%s: %w", EnvAddr, addr, err)
		}
		return lis, nil
	}
	return nil, fmt.Errorf("stage: nowhere to listen: set %s (a unix socket path; the engine does) or %s (host:port)", EnvSocket, EnvAddr)
}

// NewServer returns a gRPC server serving s as a Flight service, with the
// message size limits of the protocol and the TLS and token of WithTLS and
// WithToken, or of the environment (as Serve); call its Serve with a
// listener. Serve is this plus listening on the environment's address and
// signals.
func NewServer(s Stage, opts ...Option) (*grpc.Server, error) {
	cfg := newConfig(opts)
	svc, err := newService(s, cfg)
	if err != nil {
		return nil, err
	}
	sec, err := securityOf(cfg)
	if err != nil {
		return nil, err
	}
	return newGRPCServer(svc, cfg, sec), nil
}

// Register registers s as the Flight service of reg, for a program that
// runs its own gRPC server. That server must accept messages of
// MaxMessageSize (grpc.MaxRecvMsgSize, grpc.MaxSendMsgSize), and has its
// own credentials: Register reads no TLS or token setting, and refuses
// WithTLS and WithToken.
func Register(reg grpc.ServiceRegistrar, s Stage, opts ...Option) error {
	cfg := newConfig(opts)
	if cfg.tls != nil || cfg.token != nil {
		return errSecurityInRegister
	}
	svc, err := newService(s, cfg)
	if err != nil {
		return err
	}
	flightgen.RegisterFlightServiceServer(reg, svc)
	return nil
}

// HTTP/2 flow-control windows, the same as the Rust SDK's.
const (
	streamWindow = 16 << 20
	connWindow   = 64 << 20
)

func newGRPCServer(svc *service, cfg config, sec security) *grpc.Server {
	opts := append([]grpc.ServerOption{
		grpc.MaxRecvMsgSize(MaxMessageSize),
		grpc.MaxSendMsgSize(MaxMessageSize),
		// gRPC's 64 KiB HTTP/2 windows allow one window per round trip,
		// far below what a local socket carries for megabyte batches.
		grpc.InitialWindowSize(streamWindow),
		grpc.InitialConnWindowSize(connWindow),
		grpc.ReadBufferSize(1 << 20),
		grpc.WriteBufferSize(1 << 20),
	}, sec.serverOptions(svc.log)...)
	if sec.creds == nil {
		// on a unix socket, each exchange learns the engine's process,
		// whose memory file it may map (shared memory is for child stages,
		// which are served without TLS)
		opts = append(opts, plaintextOptions()...)
	}
	opts = append(opts, cfg.grpcOpts...)
	gs := grpc.NewServer(opts...)
	flightgen.RegisterFlightServiceServer(gs, svc)
	return gs
}

// service is the Flight service of one stage: the actions here, DoExchange
// in exchange.go. Every other Flight method answers Unimplemented.
type service struct {
	flight.BaseFlightServer

	stage    Stage
	manifest Manifest          // normalized
	speaks   []string          // the protocol versions of the stage, newest first
	describe map[string][]byte // the manifest's JSON for each version, computed once
	lineage  envelope.Lineage
	mem      memory.Allocator
	inPlace  bool // input batches in shared memory are read in place
	log      *slog.Logger
	tracer   trace.Tracer // exchange spans
}

func newService(s Stage, cfg config) (*service, error) {
	if s == nil {
		return nil, errors.New("stage: nil Stage")
	}
	m, err := s.Manifest().normalized()
	if err != nil {
		return nil, err
	}
	speaks := m.speaks()
	describe := make(map[string][]byte, len(speaks))
	for _, v := range speaks {
		if describe[v], err = marshalNoHTMLEscape(m.forProtocol(v)); err != nil {
			return nil, fmt.Errorf("stage: manifest of %q: %w", m.Name, err)
		}
	}
	return &service{
		stage:    s,
		manifest: m,
		speaks:   speaks,
		describe: describe,
		lineage:  envelope.Lineage{Stage: m.Name, Kind: "external", Version: m.Version, Language: m.Language},
		mem:      cfg.mem,
		inPlace:  cfg.inPlaceInput,
		log:      cfg.log.With("stage", m.Name),
		tracer:   tracerOf(cfg, exporting{}),
	}, nil
}

func (s *service) DoAction(a *flight.Action, stream flight.FlightService_DoActionServer) error {
	switch a.GetType() {
	case ActionDescribe:
		v, err := s.negotiate(a.GetBody())
		if err != nil {
			return err
		}
		return stream.Send(&flight.Result{Body: s.describe[v]})
	case ActionHealth:
		err := guard("Health", s.log, func() error { return s.stage.Health(stream.Context()) })
		if err != nil {
			// protocol.md: a stage that cannot serve fails the action with UNAVAILABLE, whatever the cause.
			msg := err.Error()
			if e, ok := FromError(err); ok {
				msg = e.Message
			}
			return status.Error(codes.Unavailable, "["+string(Unavailable)+"] "+msg)
		}
		return stream.Send(&flight.Result{Body: []byte(`{"status":"ok"}`)})
	default:
		return Fatal(InvalidArgument, "unknown action %q: a stage serves %q and %q", a.GetType(), ActionDescribe, ActionHealth)
	}
}

// negotiate picks the protocol version of a describe answer: the newest
// that both the engine and the stage speak. The body of the request is
// {"protocols":[...]}, the versions the engine speaks; an empty body is a
// v1 engine, which speaks only ProtocolV1.
func (s *service) negotiate(body []byte) (string, error) {
	engine := []string{ProtocolV1}
	if len(bytes.TrimSpace(body)) > 0 {
		var req struct {
			Protocols []string `json:"protocols"`
		}
		// unknown keys are ignored: a newer engine may add some
		dec := json.NewDecoder(bytes.NewReader(body))
		if err := dec.Decode(&req); err == nil && dec.More() {
			return "", Fatal(InvalidArgument, `describe request: more than one JSON value; want {"protocols":[...]} (the versions the engine speaks) or an empty body`)
		} else if err != nil {
			return "", Fatal(InvalidArgument, `describe request: %v; want {"protocols":[...]} (the versions the engine speaks) or an empty body`, err)
		}
		if len(req.Protocols) == 0 {
			return "", Fatal(InvalidArgument, `describe request: no "protocols"; want {"protocols":[...]} (the versions the engine speaks) or an empty body`)
		}
		engine = req.Protocols
	}
	for _, v := range s.speaks {
		if slices.Contains(engine, v) {
			return v, nil
		}
	}
	return "", Fatal(InvalidArgument, "the engine speaks %s; this stage speaks %s", strings.Join(engine, ", "), strings.Join(s.speaks, ", "))
}

func (s *service) ListActions(_ *flight.Empty, stream flight.FlightService_ListActionsServer) error {
	for _, a := range []*flight.ActionType{
		{Type: ActionDescribe, Description: "the stage manifest, JSON (" + strings.Join(s.speaks, ", ") + ")"},
		{Type: ActionHealth, Description: `{"status":"ok"} when the stage can serve`},
	} {
		if err := stream.Send(a); err != nil {
			return err
		}
	}
	return nil
}

// guard runs a callback of the stage and turns a panic into an INTERNAL
// error, so that a bug fails one exchange rather than the process (and with
// it every other exchange).
func guard(what string, log *slog.Logger, f func() error) (err error) {
	defer func() {
		if r := recover(); r != nil {
			log.Error("panic in stage "+what, "panic", r, "stack", string(debug.Stack()))
			err = Fatal(Internal, "panic in %s: %v", what, r)
		}
	}()
	return f()
}

// toStatus turns the error an exchange ended with into the gRPC status the
// engine receives: *Error keeps its code, a status of the stream (the
// client cancelled, the connection broke) stays as it is, anything else is
// INTERNAL.
func toStatus(err error) error {
	if err == nil {
		return nil
	}
	var e *Error
	if errors.As(err, &e) {
		return e.GRPCStatus().Err()
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	switch {
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, err.Error())
	case errors.Is(err, context.DeadlineExceeded):
		return (&Error{Code: Timeout, Message: err.Error()}).GRPCStatus().Err()
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return (&Error{Code: InvalidArgument, Message: "input ended unexpectedly: " + err.Error()}).GRPCStatus().Err()
	}
	return (&Error{Code: Internal, Message: err.Error()}).GRPCStatus().Err()
}
