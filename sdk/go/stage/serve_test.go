package stage_test

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/apache/arrow-go/v18/arrow/memory"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sluice-etl/sluice/sdk/go/stage"
	"github.com/sluice-etl/sluice/sdk/go/stage/stagetest"
)

// serve runs stage.Serve in the background and returns a channel with its
// result.
func serve(t *testing.T, ctx context.Context, st stage.Stage, opts ...stage.Option) <-chan error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- stage.Serve(ctx, st, append([]stage.Option{quiet}, opts...)...) }()
	return done
}

// healthy polls the health action on a unix socket until it answers.
func healthy(t *testing.T, sock string) {
	t.Helper()
	// Connect once the socket exists: a failed first dial would cost a
	// second of gRPC reconnection backoff.
	eventually(t, "the socket", func() bool { _, err := os.Stat(sock); return err == nil })
	srv := stagetest.Connect(t, sock, memory.DefaultAllocator)
	eventually(t, "health", func() bool {
		ctx, cancel := context.WithTimeout(t.Context(), time.Second)
		defer cancel()
		_, err := srv.Action(ctx, stage.ActionHealth)
		return err == nil
	})
}

func TestServeOnSocketFromEnv(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "s.sock")
	// A socket file left by a previous run of the stage.
	stale, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	stale.(*net.UnixListener).SetUnlinkOnClose(false)
	stale.Close()
	if _, err := os.Stat(sock); err != nil {
		t.Fatal("the stale socket file is not there")
	}

	t.Setenv(stage.EnvSocket, sock)
	t.Setenv(stage.EnvAddr, "")
	ctx, cancel := context.WithCancel(t.Context())
	done := serve(t, ctx, processing("s", nil))
	healthy(t, sock)
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Serve: %v", err)
	}
}

func TestServeOnTCPFromEnv(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	lis.Close()
	t.Setenv(stage.EnvSocket, "")
	t.Setenv(stage.EnvAddr, addr)
	ctx, cancel := context.WithCancel(t.Context())
	done := serve(t, ctx, processing("s", nil))
	eventually(t, "listening", func() bool {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Serve: %v", err)
	}
}

func TestServeWithoutAddress(t *testing.T) {
	t.Setenv(stage.EnvSocket, "")
	t.Setenv(stage.EnvAddr, "")
	err := stage.Serve(t.Context(), processing("s", nil), quiet)
	if err == nil || !strings.Contains(err.Error(), "SLUICE_STAGE_SOCKET") {
		t.Fatalf("err = %v", err)
	}
}

// A running exchange delays the stop up to the shutdown timeout, then is
// cut off.
func TestServeShutdownTimeout(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "s.sock")
	lis, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	mem := memory.NewCheckedAllocator(memory.DefaultAllocator)
	defer mem.AssertSize(t, 0)
	opened := make(chan struct{})
	st := processing("s", nil)
	st.open = func(context.Context, stage.OpenRequest) (stage.Processor, error) {
		close(opened)
		return stage.ProcessorFunc(nil), nil
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := serve(t, ctx, st, stage.WithListener(lis), stage.WithAllocator(mem), stage.WithShutdownTimeout(50*time.Millisecond))

	srv := stagetest.Connect(t, sock, mem)
	x, err := srv.Open(t.Context(), stagetest.OpenCmd("s", 1, 0, ""), people)
	if err != nil {
		t.Fatal(err)
	}
	<-opened // the exchange is open and idle: the engine sends nothing more
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Serve: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not cut the exchange off")
	}
	if _, err := x.RecvAll(); status.Code(err) == codes.OK {
		t.Fatalf("the cut-off exchange ended with %v", err)
	}
}
