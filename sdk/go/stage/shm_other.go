//go:build !linux

package stage

import (
	"errors"

	"google.golang.org/grpc"
)

// The engine offers shared memory only on Linux (a memfd).
func mapFile(string, int32, uint64) ([]byte, error) {
	return nil, errors.New("shared memory needs Linux")
}

func unmap([]byte) error { return nil }

// plaintextOptions are the server options of a server without TLS: gRPC's
// defaults.
func plaintextOptions() []grpc.ServerOption { return nil }
