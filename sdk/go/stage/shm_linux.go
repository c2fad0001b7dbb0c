//go:build linux

package stage

import (
	"context"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
)

// memfdSeals are the seals the engine's memory file must carry: its size is
// fixed while mapped, so the engine cannot shrink it under the stage's
// mapping (a read past a file's end is SIGBUS, not an error).
const memfdSeals = unix.F_SEAL_SHRINK | unix.F_SEAL_GROW

// mapFile maps size bytes of the memory file that peer (the process on the
// other end of the stage's unix socket) offered. path must be one of peer's
// descriptors (/proc/<peer>/fd/<n>) and the file opened a memfd sealed at
// its size: an open request cannot make the stage map a file with a name,
// another process's memory, or memory that could shrink under it.
func mapFile(path string, peer int32, size uint64) ([]byte, error) {
	pid, n, ok := strings.Cut(strings.TrimPrefix(path, "/proc/"), "/fd/")
	if _, err := strconv.ParseUint(n, 10, 32); !ok || !strings.HasPrefix(path, "/proc/") || pid != strconv.Itoa(int(peer)) || err != nil {
		return nil, fmt.Errorf("not a descriptor of the peer (process %d): want /proc/%d/fd/<n>", peer, peer)
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close() // the mapping outlives the descriptor
	// checked on the file opened, not on the path: the peer cannot swap the
	// descriptor between a check and the open
	seals, err := unix.FcntlInt(f.Fd(), unix.F_GET_SEALS, 0)
	if err != nil {
		return nil, fmt.Errorf("not a memfd sealed against shrinking and growing (it has no seals: %v)", err)
	}
	if seals&memfdSeals != memfdSeals {
		return nil, fmt.Errorf("not a memfd sealed against shrinking and growing (its seals are %#x)", seals)
	}
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

// peerCredentials is the transport of a server without TLS: plaintext, as
// gRPC's insecure credentials, and on a unix socket it records the process
// on the other end (SO_PEERCRED), whose memory file an exchange may map.
type peerCredentials struct{}

func (peerCredentials) ServerHandshake(c net.Conn) (net.Conn, credentials.AuthInfo, error) {
	info := plainInfo()
	if u, ok := c.(*net.UnixConn); ok {
		if raw, err := u.SyscallConn(); err == nil {
			_ = raw.Control(func(fd uintptr) {
				if cred, err := unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED); err == nil {
					info.pid = cred.Pid
				}
			})
		}
	}
	return c, info, nil
}

func (peerCredentials) ClientHandshake(_ context.Context, _ string, c net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return c, plainInfo(), nil
}

func (peerCredentials) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "insecure"}
}

func (p peerCredentials) Clone() credentials.TransportCredentials { return p }

func (peerCredentials) OverrideServerName(string) error { return nil }

// plaintextOptions are the server options of a server without TLS.
func plaintextOptions() []grpc.ServerOption {
	return []grpc.ServerOption{grpc.Creds(peerCredentials{})}
}
