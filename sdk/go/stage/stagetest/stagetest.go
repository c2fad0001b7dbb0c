// Package stagetest is the engine's side of the stage protocol, reduced to
// what tests need: it serves a stage in-process on a unix socket and drives
// it with a plain Flight client, message by message, checking the protocol
// on the way (the schema comes first, every message after it has an
// envelope).
//
// It is public so that a stage written outside this module can be tested
// the way the SDK's own examples are:
//
//	srv := stagetest.Start(t, myStage{}, memory.DefaultAllocator)
//	events, err := srv.Run(ctx, stagetest.OpenCmd("mine", 1, 0, ""), schema, rec)
//	// stagetest.Kinds(events) == "batch(0) flushed"
//
// or, for the stage's own binary (its main), RunMainIfAsked in TestMain and
// StartProcess in the test. A stateful stage (protocol v1.1) carries its
// state from one exchange to the next as with the engine, through the
// snapshot of "flushed" and the next open request:
//
//	state, _ := stagetest.FlushedSnapshot(events)
//	events, err = srv.Run(ctx, stagetest.OpenCmd("mine", 2, 0, "", stagetest.WithSnapshot(state)), schema, rec)
//
// An engine of v1.1 takes "unchanged" answers (WithUnchanged): a stage
// that returns its input record itself then answers with an "unchanged"
// event naming the batch instead of its rows,
//
//	events, err = srv.Run(ctx, stagetest.OpenCmd("mine", 3, 0, "", stagetest.WithUnchanged()), schema, rec)
//	// stagetest.Kinds(events) == "unchanged(0) flushed"
//
// Describe asks as an engine of this SDK's
// protocol version does, DescribeV1 as a v1 engine. What it does not do: dictionary-encoded output
// (Recv refuses a dictionary message), and the engine's full verdict on an
// exchange; run `sluice stage check` for that.
package stagetest

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/flight"
	flightgen "github.com/apache/arrow-go/v18/arrow/flight/gen/flight"
	"github.com/apache/arrow-go/v18/arrow/ipc"
	"github.com/apache/arrow-go/v18/arrow/memory"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"

	"github.com/sluice-etl/sluice/sdk/go/internal/envelope"
	"github.com/sluice-etl/sluice/sdk/go/stage"
)

// Server is a stage served on a unix socket in t.TempDir(), and a client.
type Server struct {
	Socket string
	Client flightgen.FlightServiceClient
	mem    memory.Allocator
}

// Start serves st until the test ends. mem is used by the client side to
// decode output; pass the same checked allocator as to the server
// (stage.WithAllocator in opts) to account for everything.
//
// The server is plaintext and requires no token whatever the environment
// says (SLUICE_STAGE_TLS_*, SLUICE_STAGE_TOKEN): Start passes
// stage.WithTLS("", "", "") and stage.WithToken("") before opts. To test a
// token, pass stage.WithToken in opts and connect with ConnectWith(t,
// "unix://"+srv.Socket, mem, BearerToken(token)); to test TLS, serve on a
// TCP listener of your own (stage.WithListener) and connect with
// ConnectWith and TLS credentials.
func Start(t testing.TB, st stage.Stage, mem memory.Allocator, opts ...stage.Option) *Server {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "stage.sock")
	lis, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	opts = append([]stage.Option{stage.WithTLS("", "", ""), stage.WithToken("")}, opts...)
	gs, err := stage.NewServer(st, opts...)
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = gs.Serve(lis) }()
	t.Cleanup(gs.Stop) // after the connection is closed (cleanups run last first)
	return Connect(t, sock, mem)
}

// Connect returns a client of a stage that listens on socket; the
// connection is closed when the test ends.
func Connect(t testing.TB, socket string, mem memory.Allocator) *Server {
	t.Helper()
	return ConnectWith(t, "unix://"+socket, mem)
}

// ConnectWith returns a client of a stage at a gRPC target ("unix:///path",
// "127.0.0.1:7001"), dialled like Dial with opts added last: TLS with
// grpc.WithTransportCredentials(credentials.NewTLS(...)), a token with
// BearerToken. The connection is closed when the test ends. Socket is set
// for a unix target.
func ConnectWith(t testing.TB, target string, mem memory.Allocator, opts ...grpc.DialOption) *Server {
	t.Helper()
	conn, err := DialWith(target, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	socket, _ := strings.CutPrefix(target, "unix://")
	if socket == target {
		socket = ""
	}
	return &Server{Socket: socket, Client: flightgen.NewFlightServiceClient(conn), mem: mem}
}

// EnvRunMain makes a test binary run its package's main instead of its
// tests (see RunMainIfAsked): how StartProcess runs an example stage as a
// child process without a separate build.
const EnvRunMain = "SLUICE_STAGETEST_RUN_MAIN"

// RunMainIfAsked is for TestMain of a stage's main package: when the
// process was started by StartProcess it runs main and exits.
func RunMainIfAsked(main func()) {
	if os.Getenv(EnvRunMain) == "1" {
		main()
		os.Exit(0)
	}
}

// StartProcess runs the test binary again as the stage, the way the engine
// runs a stage: a child process with SLUICE_STAGE_SOCKET set. It waits
// until the health action succeeds. When the test ends the child gets
// SIGTERM and must exit with status 0.
func StartProcess(t testing.TB, mem memory.Allocator) *Server {
	t.Helper()
	if runtime.GOOS == "windows" {
		t.Skip("no unix signals")
	}
	sock := filepath.Join(t.TempDir(), "stage.sock")
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), EnvRunMain+"=1", stage.EnvSocket+"="+sock)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-exited:
			if err != nil {
				t.Errorf("stage process: %v\n%s", err, stderr.String())
			}
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			t.Errorf("stage process did not stop on SIGTERM\n%s", stderr.String())
		}
	})

	// Like the engine: poll health until it answers or a start timeout.
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		select {
		case err := <-exited:
			t.Fatalf("stage process exited: %v\n%s", err, stderr.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("stage process did not listen\n%s", stderr.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
	srv := Connect(t, sock, mem)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := srv.Action(ctx, stage.ActionHealth)
		cancel()
		if err == nil {
			return srv
		}
		if time.Now().After(deadline) {
			t.Fatalf("health: %v\n%s", err, stderr.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Dial connects to a stage's unix socket the way the engine does: gRPC
// over unix://<path>, messages up to 64 MiB both ways. Reconnection backs
// off from 10ms rather than gRPC's 1s: a stage that is starting refuses the
// first attempts.
func Dial(socket string) (*grpc.ClientConn, error) { return DialWith("unix://" + socket) }

// DialWith connects to a stage at a gRPC target like Dial, plaintext unless
// opts (added last) set transport credentials.
func DialWith(target string, opts ...grpc.DialOption) (*grpc.ClientConn, error) {
	bo := backoff.DefaultConfig
	bo.BaseDelay, bo.MaxDelay = 10*time.Millisecond, 200*time.Millisecond
	return grpc.NewClient(target, append([]grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithConnectParams(grpc.ConnectParams{Backoff: bo, MinConnectTimeout: time.Second}),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(stage.MaxMessageSize), grpc.MaxCallSendMsgSize(stage.MaxMessageSize)),
	}, opts...)...)
}

// BearerToken makes every RPC of a connection carry the gRPC metadata
// "authorization: Bearer <token>", as the engine does for a stage that
// requires a token (stage.WithToken). It is sent over plaintext
// connections too, so that tests on a unix socket can use it.
func BearerToken(token string) grpc.DialOption {
	return grpc.WithPerRPCCredentials(bearer(token))
}

type bearer string

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(b)}, nil
}

func (bearer) RequireTransportSecurity() bool { return false }

// Action calls DoAction with an empty body and returns the body of its
// single result.
func (s *Server) Action(ctx context.Context, typ string) ([]byte, error) {
	return s.ActionWithBody(ctx, typ, nil)
}

// ActionWithBody calls DoAction with a request body and returns the body
// of its single result.
func (s *Server) ActionWithBody(ctx context.Context, typ string, body []byte) ([]byte, error) {
	stream, err := s.Client.DoAction(ctx, &flight.Action{Type: typ, Body: body})
	if err != nil {
		return nil, err
	}
	res, err := stream.Recv()
	if err != nil {
		return nil, err
	}
	if _, err := stream.Recv(); err != io.EOF {
		return nil, fmt.Errorf("action %q: more than one result (%v)", typ, err)
	}
	return res.GetBody(), nil
}

// Describe returns the manifest the stage describes itself with to an
// engine of this SDK's version: the request lists stage.Protocols(), and
// the answer is in the newest version the stage speaks.
func (s *Server) Describe(ctx context.Context) (stage.Manifest, []byte, error) {
	return s.describe(ctx, DescribeRequest(stage.Protocols()...))
}

// DescribeV1 describes the stage as a v1 engine asks: with an empty body,
// which means the engine speaks only stage.ProtocolV1.
func (s *Server) DescribeV1(ctx context.Context) (stage.Manifest, []byte, error) {
	return s.describe(ctx, nil)
}

// DescribeAs describes the stage as an engine that speaks the given
// protocol versions asks (DescribeRequest).
func (s *Server) DescribeAs(ctx context.Context, protocols ...string) (stage.Manifest, []byte, error) {
	return s.describe(ctx, DescribeRequest(protocols...))
}

func (s *Server) describe(ctx context.Context, req []byte) (stage.Manifest, []byte, error) {
	body, err := s.ActionWithBody(ctx, stage.ActionDescribe, req)
	if err != nil {
		return stage.Manifest{}, nil, err
	}
	var m stage.Manifest
	err = json.Unmarshal(body, &m)
	return m, body, err
}

// DescribeRequest is the body of the engine's describe action (v1.1):
// {"protocols":[...]}, the versions the engine speaks.
func DescribeRequest(protocols ...string) []byte {
	if protocols == nil {
		protocols = []string{}
	}
	b, _ := json.Marshal(struct {
		Protocols []string `json:"protocols"`
	}{protocols}) // strings always marshal
	return b
}

// OpenCmd is an open request (protocol.md section 3) of the newest protocol
// version, stage.Protocol; config is JSON, or "" for none (`null`, as the
// engine sends for a stage without `config`). opts add optional keys
// (WithSnapshot, WithUnchanged).
func OpenCmd(stageName string, epoch uint64, partition uint32, config string, opts ...OpenOption) []byte {
	return OpenCmdAs(stage.Protocol, stageName, epoch, partition, config, opts...)
}

// OpenCmdAs is OpenCmd with another protocol version, the one agreed in
// describe (stage.ProtocolV1 with a v1 engine).
func OpenCmdAs(protocol, stageName string, epoch uint64, partition uint32, config string, opts ...OpenOption) []byte {
	if config == "" {
		config = "null"
	}
	var o openOptions
	for _, opt := range opts {
		opt(&o)
	}
	proto, _ := json.Marshal(protocol) // a string always marshals
	name, _ := json.Marshal(stageName)
	cmd := fmt.Appendf(nil, `{"protocol":%s,"stage":%s,"epoch":%d,"partition":%d,"config":%s`,
		proto, name, epoch, partition, config)
	if o.snapshot != nil {
		b64, _ := json.Marshal(base64.StdEncoding.EncodeToString(o.snapshot))
		cmd = fmt.Appendf(cmd, `,"snapshot":%s`, b64)
	}
	if o.unchanged {
		cmd = append(cmd, `,"unchanged":true`...)
	}
	return append(cmd, '}')
}

// OpenOption adds an optional key to an open request (OpenCmd, OpenCmdAs).
type OpenOption func(*openOptions)

type openOptions struct {
	snapshot  []byte
	unchanged bool
}

// WithSnapshot makes the open request carry "snapshot" (v1.1): the state a
// stateful stage starts the exchange from, as the engine sends the one
// the partition's last committed epoch left (Event.Snapshot of the
// "flushed" of an earlier exchange). nil leaves the key out (the first
// epoch); an empty non-nil state is sent as "".
func WithSnapshot(state []byte) OpenOption {
	return func(o *openOptions) { o.snapshot = state }
}

// WithUnchanged makes the open request carry "unchanged": true (v1.1), as
// the engine does by default: the exchange takes "unchanged" answers, and
// a stage whose output for a batch is that batch itself (the same arrays)
// sends one such message instead of the rows (Event of kind Unchanged, no
// Record: the rows are those of the batch it names, which the test sent).
// With OpenCmdAs(stage.ProtocolV1, ...) the key is sent too, but a v1
// exchange has no such answers: the stage must ignore it, and Recv refuses
// an "unchanged" then.
func WithUnchanged() OpenOption {
	return func(o *openOptions) { o.unchanged = true }
}

// The envelope of every message (protocol.md section 4), as Event carries it.
type (
	// Envelope is one message's app_metadata.
	Envelope = envelope.Envelope
	// Kind says what a message is.
	Kind = envelope.Kind
	// RowError is one entry of a row_errors message.
	RowError = envelope.RowError
	// Lineage identifies the stage implementation that produced a batch.
	Lineage = envelope.Lineage
)

// The kinds of message.
const (
	Batch     = envelope.Batch
	End       = envelope.End
	Ack       = envelope.Ack
	RowErrors = envelope.RowErrors
	Flushed   = envelope.Flushed
	Unchanged = envelope.Unchanged
)

// Event is one message the stage sent after its schema.
type Event struct {
	Envelope envelope.Envelope
	Record   arrow.RecordBatch // the body of a "batch", decoded; release it
	// Size is the size of the message on the wire (the serialized
	// FlightData), which must stay under stage.MaxMessageSize.
	Size int
	// Snapshot is the envelope's "snapshot" decoded from base64: the state
	// a stateful stage left after a v1.1 exchange, on "flushed" (an empty
	// non-nil slice for an empty state); nil when the message carries none.
	// Open the partition's next exchange with it (WithSnapshot).
	Snapshot []byte
}

// FlushedSnapshot returns the snapshot of the "flushed" message of events
// (the last event) and whether it carried one.
func FlushedSnapshot(events []Event) ([]byte, bool) {
	if len(events) == 0 {
		return nil, false
	}
	last := events[len(events)-1]
	if last.Envelope.Kind != envelope.Flushed || last.Envelope.Snapshot == nil {
		return nil, false
	}
	return last.Snapshot, true
}

// Release releases the records of events.
func Release(events []Event) {
	for _, e := range events {
		if e.Record != nil {
			e.Record.Release()
		}
	}
}

// Exchange is one DoExchange stream, driven by hand.
type Exchange struct {
	stream   flightgen.FlightService_DoExchangeClient
	mem      memory.Allocator
	epoch    uint64
	seq      uint64
	protocol string // of the open request
	// unchanged: the open request offered "unchanged" answers in a v1.1
	// exchange, so the stage may send them
	unchanged bool

	outSchemaMsg *flight.FlightData // the stage's schema message
	OutputSchema *arrow.Schema
}

// Open starts an exchange: its first message carries the open request in
// a CMD descriptor and the input schema.
func (s *Server) Open(ctx context.Context, open []byte, schema *arrow.Schema) (*Exchange, error) {
	var req struct {
		Protocol  string `json:"protocol"`
		Epoch     uint64 `json:"epoch"`
		Unchanged bool   `json:"unchanged"`
	}
	_ = json.Unmarshal(open, &req)
	stream, err := s.Client.DoExchange(ctx)
	if err != nil {
		return nil, err
	}
	p := ipc.GetSchemaPayload(schema, s.mem)
	defer p.Release()
	meta := p.Meta()
	defer meta.Release()
	err = stream.Send(&flight.FlightData{
		FlightDescriptor: &flight.FlightDescriptor{Type: flight.DescriptorCMD, Cmd: open},
		DataHeader:       meta.Bytes(),
	})
	if err != nil {
		return nil, err
	}
	return &Exchange{stream: stream, mem: s.mem, epoch: req.Epoch, protocol: req.Protocol,
		unchanged: req.Unchanged && req.Protocol == stage.ProtocolV1_1}, nil
}

// Send sends rec with a "batch" envelope numbered from 0.
func (x *Exchange) Send(rec arrow.RecordBatch) error {
	env := envelope.Envelope{V: 1, Kind: envelope.Batch, Epoch: x.epoch, Seq: x.seq}
	x.seq++
	return x.SendRaw(rec, envelope.Encode(&env))
}

// SendRaw sends rec with the given app_metadata, for malformed input. A
// nil rec sends a metadata-only message: a batch the test wrote into the
// engine's half of the shared memory itself (its envelope names the slot),
// or a message without rows where rows belong.
func (x *Exchange) SendRaw(rec arrow.RecordBatch, appMetadata []byte) error {
	if rec == nil {
		return x.stream.Send(&flight.FlightData{AppMetadata: appMetadata})
	}
	p, err := ipc.GetRecordBatchPayload(rec, ipc.WithAllocator(x.mem))
	if err != nil {
		return err
	}
	defer p.Release()
	meta := p.Meta()
	defer meta.Release()
	var body bytes.Buffer
	if err := p.SerializeBody(&body); err != nil {
		return err
	}
	return x.stream.Send(&flight.FlightData{DataHeader: meta.Bytes(), DataBody: body.Bytes(), AppMetadata: appMetadata})
}

// End sends "end" and closes the sending side.
func (x *Exchange) End() error {
	env := envelope.Envelope{V: 1, Kind: envelope.End, Epoch: x.epoch, Seq: x.seq}
	x.seq++
	if err := x.stream.Send(&flight.FlightData{AppMetadata: envelope.Encode(&env)}); err != nil {
		return err
	}
	return x.stream.CloseSend()
}

// EndKeepOpen sends "end" and keeps the sending side open, as the engine
// does on the shared-memory path: it goes on giving the stage's slots
// back (SendRelease) until the answer ends. Close it with CloseSend.
func (x *Exchange) EndKeepOpen() error {
	env := envelope.Envelope{V: 1, Kind: envelope.End, Epoch: x.epoch, Seq: x.seq}
	x.seq++
	return x.stream.Send(&flight.FlightData{AppMetadata: envelope.Encode(&env)})
}

// SendRelease gives back a slot of the stage's half of the shared memory
// (an answer's Envelope.Shm), as the engine does once it has read it.
func (x *Exchange) SendRelease(slot envelope.Slot) error {
	env := envelope.Envelope{V: 1, Kind: envelope.Release, Epoch: x.epoch, Shm: &slot}
	return x.stream.Send(&flight.FlightData{AppMetadata: envelope.Encode(&env)})
}

// CloseSend closes the sending side without "end" (a protocol violation).
func (x *Exchange) CloseSend() error { return x.stream.CloseSend() }

// Recv returns the next message after the schema; io.EOF after a clean
// end, else the gRPC status the stage ended the exchange with.
func (x *Exchange) Recv() (Event, error) {
	for {
		fd, err := x.stream.Recv()
		if err != nil {
			return Event{}, err
		}
		if x.outSchemaMsg == nil {
			if len(fd.GetDataHeader()) == 0 || len(fd.GetDataBody()) > 0 {
				return Event{}, errors.New("stagetest: the stage's first message is not its schema")
			}
			x.outSchemaMsg = fd
			rdr, err := flight.NewRecordReader(&replay{msgs: []*flight.FlightData{fd}}, ipc.WithAllocator(x.mem))
			if err != nil {
				return Event{}, fmt.Errorf("stagetest: output schema: %w", err)
			}
			x.OutputSchema = rdr.Schema()
			rdr.Release()
			continue
		}
		env, err := envelope.Decode(fd.GetAppMetadata())
		if err != nil {
			return Event{}, fmt.Errorf("stagetest: message without a valid envelope: %w", err)
		}
		if !bytes.Equal(envelope.Encode(&env), fd.GetAppMetadata()) {
			return Event{}, fmt.Errorf("stagetest: envelope not canonical: %s", fd.GetAppMetadata())
		}
		ev := Event{Envelope: env, Size: proto.Size(fd)}
		if env.Kind == envelope.Unchanged {
			// what the engine refuses (protocol.md sections 3 and 4)
			switch {
			case !x.unchanged:
				return Event{}, fmt.Errorf("stagetest: an \"unchanged\" answer in a %s exchange that did not offer them", x.protocol)
			case env.InSeq == nil:
				return Event{}, errors.New("stagetest: an \"unchanged\" answer without in_seq")
			case len(fd.GetDataHeader()) > 0 || len(fd.GetDataBody()) > 0:
				return Event{}, errors.New("stagetest: an \"unchanged\" answer carries IPC data")
			case env.Lineage != nil:
				return Event{}, errors.New("stagetest: an \"unchanged\" answer carries lineage")
			}
		}
		if env.Snapshot != nil {
			// what the engine refuses (protocol.md section 4); whether a
			// "flushed" lacks one depends on the manifest: the test's business
			switch {
			case env.Kind != envelope.Flushed:
				return Event{}, fmt.Errorf("stagetest: a %q message carries a snapshot; only \"flushed\" may", env.Kind)
			case x.protocol != stage.ProtocolV1_1:
				return Event{}, fmt.Errorf("stagetest: \"flushed\" carries a snapshot in a %s exchange", x.protocol)
			}
			if ev.Snapshot, err = base64.StdEncoding.DecodeString(*env.Snapshot); err != nil {
				return Event{}, fmt.Errorf("stagetest: the snapshot of \"flushed\" is not base64: %w", err)
			}
		}
		if len(fd.GetDataHeader()) > 0 {
			if ev.Record, err = x.decode(fd); err != nil {
				return Event{}, err
			}
		}
		return ev, nil
	}
}

// decode reads one record batch message, replaying the schema before it
// (no dictionaries in these tests, so no reader state is lost).
func (x *Exchange) decode(fd *flight.FlightData) (arrow.RecordBatch, error) {
	rdr, err := flight.NewRecordReader(&replay{msgs: []*flight.FlightData{x.outSchemaMsg, fd}}, ipc.WithAllocator(x.mem))
	if err != nil {
		return nil, err
	}
	defer rdr.Release()
	if !rdr.Next() {
		return nil, fmt.Errorf("stagetest: undecodable batch: %v", rdr.Err())
	}
	rec := rdr.RecordBatch()
	rec.Retain()
	return rec, nil
}

// RecvAll receives until the end of the stream.
func (x *Exchange) RecvAll() ([]Event, error) {
	var events []Event
	for {
		ev, err := x.Recv()
		if err == io.EOF {
			return events, nil
		}
		if err != nil {
			return events, err
		}
		events = append(events, ev)
	}
}

// Run is a whole exchange: open, every record, end, all the answers. It
// sends and receives concurrently, as the engine does, so large exchanges
// do not stall on flow control. The events are returned even on error.
func (s *Server) Run(ctx context.Context, open []byte, schema *arrow.Schema, recs ...arrow.RecordBatch) ([]Event, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	x, err := s.Open(ctx, open, schema)
	if err != nil {
		return nil, err
	}
	sent := make(chan error, 1)
	go func() {
		for _, rec := range recs {
			if err := x.Send(rec); err != nil {
				sent <- err
				return
			}
		}
		sent <- x.End()
	}()
	events, err := x.RecvAll()
	if serr := <-sent; err == nil && serr != nil && serr != io.EOF {
		err = serr
	}
	return events, err
}

// replay is a flight.DataStreamReader over a fixed list of messages.
type replay struct{ msgs []*flight.FlightData }

func (r *replay) Recv() (*flight.FlightData, error) {
	if len(r.msgs) == 0 {
		return nil, io.EOF
	}
	fd := r.msgs[0]
	r.msgs = r.msgs[1:]
	return fd, nil
}

// Kinds lists the kinds of events, e.g. "batch(0) ack(1) row_errors(1) flushed",
// with the in_seq in brackets: a compact thing to compare in tests.
func Kinds(events []Event) string {
	var b bytes.Buffer
	for i, e := range events {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(string(e.Envelope.Kind))
		if e.Envelope.InSeq != nil {
			b.WriteString("(" + strconv.FormatUint(*e.Envelope.InSeq, 10) + ")")
		}
	}
	return b.String()
}
