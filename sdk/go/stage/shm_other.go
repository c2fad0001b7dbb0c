//go:build !linux

package stage

import "errors"

// The engine offers shared memory only on Linux (a memfd).
func mapFile(string, uint64) ([]byte, error) {
	return nil, errors.New("shared memory needs Linux")
}

func unmap([]byte) error { return nil }

func isMemfd(string) error { return errors.New("shared memory needs Linux") }
