package agent

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// maxConns caps concurrent client connections per listener. A connection
// costs a goroutine and, while a request is read, up to max_body_bytes; the
// cap keeps a flood from turning into unbounded memory.
const maxConns = 512

// listenTCP binds the TCP listener.
func listenTCP(addr string) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		if errors.Is(err, syscall.EADDRINUSE) {
			return nil, fmt.Errorf("listen on %s (listen.http): the address is in use; stop the other process or choose another port: %w", addr, err)
		}
		return nil, fmt.Errorf("listen on %s (listen.http): %w", addr, err)
	}
	return ln, nil
}

// listenUnix binds a Unix socket at path with the given mode.
//
// The socket is created inside a fresh 0700 directory next to path, chmod-ed
// there, and renamed into place, so no client can ever connect while it has
// the wrong permissions (a chmod after bind leaves such a window, and umask is
// process-wide). A socket file left by a crashed trackd is removed; a live
// one, or a file that is not a socket, stops start-up.
func listenUnix(path string, mode fs.FileMode) (net.Listener, error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("create directory %s for listen.unix: %w", dir, err)
	}
	if fi, err := os.Stat(dir); err == nil && fi.Mode().Perm()&0o002 != 0 && fi.Mode()&fs.ModeSticky == 0 {
		return nil, fmt.Errorf("listen on unix socket %s: its directory %s is world-writable without the sticky bit, so anyone could replace the socket; use a private directory such as /run/trackd", path, dir)
	}
	if err := removeStaleSocket(path); err != nil {
		return nil, err
	}

	tmpDir, err := os.MkdirTemp(dir, ".trackd-")
	if err != nil {
		return nil, fmt.Errorf("listen on unix socket %s: create a private staging directory: %w", path, err)
	}
	defer os.RemoveAll(tmpDir)
	tmp := filepath.Join(tmpDir, "s")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: tmp, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("listen on unix socket %s: %w", path, err)
	}
	ln.SetUnlinkOnClose(false)
	if err := os.Chmod(tmp, mode); err != nil {
		ln.Close()
		return nil, fmt.Errorf("listen on unix socket %s: set mode %04o: %w", path, mode, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		ln.Close()
		return nil, fmt.Errorf("listen on unix socket %s: move it into place: %w", path, err)
	}
	fi, err := os.Lstat(path)
	if err != nil {
		ln.Close()
		return nil, fmt.Errorf("listen on unix socket %s: %w", path, err)
	}
	return &unixListener{UnixListener: ln, path: path, fi: fi}, nil
}

// removeStaleSocket clears path for a new socket: it removes a socket no
// process answers on, and refuses a live socket or any other kind of file.
func removeStaleSocket(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("listen on unix socket %s: %w", path, err)
	}
	if fi.Mode().Type() != fs.ModeSocket {
		return fmt.Errorf("listen on unix socket %s: a %s is already at that path and trackd only ever replaces a stale socket; remove it or choose another listen.unix", path, describeMode(fi.Mode()))
	}
	c, err := net.DialTimeout("unix", path, time.Second)
	if err == nil {
		c.Close()
		return fmt.Errorf("listen on unix socket %s: another process is serving on it (is another trackd running?); stop it or choose another listen.unix", path)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("listen on unix socket %s: remove the stale socket: %w", path, err)
	}
	return nil
}

func describeMode(m fs.FileMode) string {
	switch {
	case m.IsDir():
		return "directory"
	case m.IsRegular():
		return "regular file"
	case m&fs.ModeSymlink != 0:
		return "symbolic link"
	default:
		return "non-socket file"
	}
}

// unixListener removes its socket file on Close, but only while the file is
// still the one it created: a newer trackd's socket is left alone.
type unixListener struct {
	*net.UnixListener
	path string
	fi   fs.FileInfo
	once sync.Once
}

// Addr is the socket's path, where clients connect; the listener itself was
// bound at a staging path that no longer exists.
func (l *unixListener) Addr() net.Addr { return &net.UnixAddr{Name: l.path, Net: "unix"} }

func (l *unixListener) Close() error {
	err := l.UnixListener.Close()
	l.once.Do(func() {
		if fi, statErr := os.Lstat(l.path); statErr == nil && os.SameFile(fi, l.fi) {
			_ = os.Remove(l.path)
		}
	})
	return err
}

// limitListener caps concurrent connections. Past the cap a connection gets
// a short 503 and is closed, rather than waiting unseen in the kernel's
// backlog: a client learns at once that it should back off.
type limitListener struct {
	net.Listener
	slots    chan struct{}
	rejects  chan struct{} // bounds the goroutines writing 503s
	rejected func()
}

func newLimitListener(ln net.Listener, n int, rejected func()) net.Listener {
	return &limitListener{Listener: ln, slots: make(chan struct{}, n), rejects: make(chan struct{}, 16), rejected: rejected}
}

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		select {
		case l.slots <- struct{}{}:
			return &limitConn{Conn: c, release: func() { <-l.slots }}, nil
		default:
		}
		if l.rejected != nil {
			l.rejected()
		}
		select {
		case l.rejects <- struct{}{}:
			go func() {
				defer func() { <-l.rejects }()
				rejectConn(c)
			}()
		default:
			c.Close()
		}
	}
}

var tooManyConns = func() []byte {
	body := `{"status":"failure","message":"trackd has too many open connections; retry in a moment"}` + "\n"
	return []byte("HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n" +
		"Connection: close\r\nContent-Length: " + strconv.Itoa(len(body)) + "\r\n\r\n" + body)
}()

// rejectConn answers a connection over the cap and closes it. Reading a little
// of the request first, then half-closing, lets the client see the answer
// instead of a reset.
func rejectConn(c net.Conn) {
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Second))
	_, _ = c.Write(tooManyConns)
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(c, 64<<10))
}

type limitConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *limitConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}
