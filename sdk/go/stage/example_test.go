package stage_test

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/flight"
	"github.com/apache/arrow-go/v18/arrow/ipc"
	"github.com/apache/arrow-go/v18/arrow/memory"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/sluice-etl/sluice/sdk/go/stage"
)

// positive keeps the rows with a positive "n" and rejects negative ones;
// zeros are filtered out silently.
type positive struct{ stage.Base }

var numbers = arrow.NewSchema([]arrow.Field{{Name: "n", Type: arrow.PrimitiveTypes.Int64}}, nil)

func (positive) Manifest() stage.Manifest {
	ref := &stage.SchemaRef{Name: "numbers", Version: "1", Schema: numbers}
	return stage.Manifest{Name: "positive", Version: "1.0.0", InputSchema: ref, OutputSchema: ref}
}

func (positive) Open(_ context.Context, req stage.OpenRequest) (stage.Processor, error) {
	return stage.ProcessorFunc(func(_ context.Context, rec arrow.RecordBatch) (arrow.RecordBatch, []stage.RowError, error) {
		b := array.NewInt64Builder(req.Allocator)
		defer b.Release()
		var errs []stage.RowError
		for i, n := range rec.Column(0).(*array.Int64).Int64Values() {
			switch {
			case n > 0:
				b.Append(n)
			case n < 0:
				errs = append(errs, stage.NewRowError(int64(i), stage.Rejected, "%d is negative", n))
			}
		}
		col := b.NewArray()
		defer col.Release()
		return array.NewRecordBatch(req.OutputSchema, []arrow.Array{col}, int64(col.Len())), errs, nil
	}), nil
}

// Serve a stage on a unix socket, as the engine starts it, and play the
// engine's part of one exchange with a plain Flight client: open request and
// input schema, two batches, "end"; then print what the stage answers.
func ExampleServe() {
	dir, _ := os.MkdirTemp("", "stage")
	defer os.RemoveAll(dir)
	sock := filepath.Join(dir, "stage.sock")
	os.Setenv(stage.EnvSocket, sock) // what the engine does
	defer os.Unsetenv(stage.EnvSocket)

	ctx, stop := context.WithCancel(context.Background())
	served := make(chan error)
	go func() { served <- stage.Serve(ctx, positive{}, stage.WithLogger(slog.New(slog.DiscardHandler))) }()

	// The engine's side.
	for _, err := os.Stat(sock); err != nil; _, err = os.Stat(sock) {
		time.Sleep(time.Millisecond) // not listening yet
	}
	conn, _ := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	defer conn.Close()
	client := flight.NewClientFromConn(conn, nil)
	for { // the engine polls "health" until the stage is up
		health, err := client.DoAction(ctx, &flight.Action{Type: "health"}, grpc.WaitForReady(true))
		if err == nil {
			if _, err = health.Recv(); err == nil {
				break
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	stream, _ := client.DoExchange(ctx)
	w := flight.NewRecordWriter(stream, ipc.WithSchema(numbers))
	w.SetFlightDescriptor(&flight.FlightDescriptor{
		Type: flight.DescriptorCMD,
		Cmd:  []byte(`{"protocol":"sluice.stage.v1","stage":"keep","epoch":12,"partition":0,"config":{}}`),
	})
	for seq, values := range []string{`[{"n":3},{"n":-1},{"n":0},{"n":5}]`, `[{"n":0},{"n":-7}]`} {
		rec, _, _ := array.RecordFromJSON(memory.DefaultAllocator, numbers, strings.NewReader(values))
		w.WriteWithAppMetadata(rec, fmt.Appendf(nil, `{"v":1,"kind":"batch","epoch":12,"seq":%d}`, seq))
		rec.Release()
	}
	w.WriteMetadata([]byte(`{"v":1,"kind":"end","epoch":12,"seq":2}`))
	stream.CloseSend()

	for {
		fd, err := stream.Recv()
		if err != nil {
			fmt.Println("end:", err) // io.EOF: the exchange succeeded; else a gRPC status
			break
		}
		switch {
		case len(fd.DataBody) > 0:
			fmt.Printf("batch    %s\n", fd.AppMetadata)
		case len(fd.DataHeader) > 0:
			fmt.Println("schema")
		default:
			fmt.Printf("metadata %s\n", fd.AppMetadata)
		}
	}
	stop() // as SIGTERM would
	fmt.Println("Serve returned", <-served)

	// Output:
	// schema
	// batch    {"v":1,"kind":"batch","epoch":12,"seq":0,"in_seq":0,"lineage":{"stage":"positive","kind":"external","version":"1.0.0","language":"go"}}
	// metadata {"v":1,"kind":"row_errors","epoch":12,"seq":1,"in_seq":0,"errors":[{"row":1,"code":"REJECTED","message":"-1 is negative"}]}
	// metadata {"v":1,"kind":"ack","epoch":12,"seq":2,"in_seq":1}
	// metadata {"v":1,"kind":"row_errors","epoch":12,"seq":3,"in_seq":1,"errors":[{"row":1,"code":"REJECTED","message":"-7 is negative"}]}
	// metadata {"v":1,"kind":"flushed","epoch":12,"seq":4,"rows":2}
	// end: EOF
	// Serve returned <nil>
}

func ExampleRowError() {
	err := stage.NewRowError(3, stage.Rejected, "quantity %d exceeds %d", 47, 45)
	fmt.Println(err)
	fmt.Println(err.Row, err.Code, err.Message)
	// Output:
	// row 3: [REJECTED] quantity 47 exceeds 45
	// 3 REJECTED quantity 47 exceeds 45
}

func ExampleFatal() {
	err := stage.Fatal(stage.SchemaMismatch, "field %q: expected %s, got %s", "id", arrow.PrimitiveTypes.Int64, arrow.BinaryTypes.String)
	fmt.Println(err)

	// What the engine receives: a gRPC status, mapped from the code.
	st := status.Convert(err)
	fmt.Println(st.Code(), "|", st.Message())

	// And back.
	e, _ := stage.FromError(st.Err())
	fmt.Println(e.Code, e.Code.Retryable())
	fmt.Println(stage.Timeout.GRPCCode(), stage.Timeout.Retryable())
	// Output:
	// [SCHEMA_MISMATCH] field "id": expected int64, got utf8
	// InvalidArgument | [SCHEMA_MISMATCH] field "id": expected int64, got utf8
	// SCHEMA_MISMATCH false
	// DeadlineExceeded true
}

func ExampleOpenRequest_DecodeConfig() {
	req := stage.OpenRequest{Stage: "validate", Config: []byte(`{"max_quantity": 30}`)}
	cfg := struct {
		MaxQuantity int64  `json:"max_quantity"`
		Mode        string `json:"mode"`
	}{MaxQuantity: 45, Mode: "strict"} // defaults: absent keys keep them
	if err := req.DecodeConfig(&cfg); err != nil {
		fmt.Println(err)
	}
	fmt.Println(cfg.MaxQuantity, cfg.Mode)

	req.Config = []byte(`{"max_qty": 30}`)
	fmt.Println(req.DecodeConfig(&cfg))
	// Output:
	// 30 strict
	// [INVALID_ARGUMENT] stage "validate": config: json: unknown field "max_qty"
}

// Embed a stage in a program that runs its own gRPC server.
func ExampleRegister() {
	gs := grpc.NewServer(grpc.MaxRecvMsgSize(stage.MaxMessageSize), grpc.MaxSendMsgSize(stage.MaxMessageSize))
	if err := stage.Register(gs, positive{}); err != nil {
		fmt.Println(err)
		return
	}
	lis, _ := net.Listen("tcp", "127.0.0.1:0")
	go gs.Serve(lis)
	defer gs.Stop()
	fmt.Println(len(gs.GetServiceInfo()["arrow.flight.protocol.FlightService"].Methods) > 0)
	// Output: true
}
