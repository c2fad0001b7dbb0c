//go:build unix

package stage_test

import (
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/sluice-etl/sluice/sdk/go/stage"
)

// SIGTERM (what the engine sends to stop a child stage) makes Serve stop
// gracefully and return nil.
func TestServeStopsOnSIGTERM(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "s.sock")
	t.Setenv(stage.EnvSocket, sock)
	done := serve(t, t.Context(), processing("s", nil))
	healthy(t, sock) // Serve has installed its signal handler before serving
	if err := syscall.Kill(syscall.Getpid(), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Serve: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not stop on SIGTERM")
	}
}
