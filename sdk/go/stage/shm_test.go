//go:build linux

package stage_test

import (
	"fmt"
	"os"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sluice-etl/sluice/sdk/go/stage"
	"github.com/sluice-etl/sluice/sdk/go/stage/stagetest"
)

// offering is an open request that offers the memory file at path.
func offering(path string) []byte {
	open := stagetest.OpenCmd("s", 1, 0, "")
	return fmt.Appendf(open[:len(open)-1], `,"shared_memory":{"path":%q,"size":1048576,"stage_offset":524288}}`, path)
}

// The stage maps the memory of the process on the other end of its unix
// socket, and refuses an offer from a TCP client or one that names another
// process's memory.
func TestSharedMemoryIsTakenOnlyFromThePeer(t *testing.T) {
	path := stage.MemfdForTest(t, 1<<20, true) // as the engine makes it: sealed at its size
	srv, mem := start(t, processing("s", nil))
	if _, err := srv.Run(t.Context(), offering(path), people); err != nil {
		t.Fatalf("an offer from the peer: %v", err)
	}
	other := strings.Replace(path, fmt.Sprintf("/proc/%d/", os.Getpid()), "/proc/1/", 1)
	_, err := srv.Run(t.Context(), offering(other), people)
	wantStatusContaining(t, err, codes.InvalidArgument, "not a descriptor of the peer (process")

	lis := tcpListener(t)
	gs, err := stage.NewServer(processing("s", nil), stage.WithTLS("", "", ""), stage.WithToken(""))
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = gs.Serve(lis) }()
	t.Cleanup(gs.Stop)
	tcp := stagetest.ConnectWith(t, lis.Addr().String(), mem)
	_, err = tcp.Run(t.Context(), offering(path), people)
	wantStatusContaining(t, err, codes.InvalidArgument, "shared memory is taken only from an engine on the stage's unix socket")
}

func wantStatusContaining(t *testing.T, err error, code codes.Code, part string) {
	t.Helper()
	if st, ok := status.FromError(err); err == nil || !ok || st.Code() != code || !strings.Contains(st.Message(), part) {
		t.Fatalf("got %v, want %v with %q", err, code, part)
	}
}
