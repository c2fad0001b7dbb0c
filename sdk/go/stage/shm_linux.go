//go:build linux

package stage

import (
	"fmt"
	"os"
	"strings"
	"syscall"
)

// isMemfd checks that path names an anonymous memory file (a memfd seen
// through /proc/<pid>/fd), not a file with a name.
func isMemfd(path string) error {
	target, err := os.Readlink(path)
	if err != nil {
		return err
	}
	if !strings.HasPrefix(target, "/memfd:") {
		return fmt.Errorf("it is %s, not a memfd", target)
	}
	return nil
}

// mapFile maps size bytes of the file at path, shared and writable.
func mapFile(path string, size uint64) ([]byte, error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close() // the mapping outlives the descriptor
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if uint64(st.Size()) < size {
		return nil, fmt.Errorf("the file holds %d bytes, the offer says %d", st.Size(), size)
	}
	return syscall.Mmap(int(f.Fd()), 0, int(size), syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_SHARED)
}

func unmap(b []byte) error { return syscall.Munmap(b) }
