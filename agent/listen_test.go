package agent

import (
	"bufio"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestUnixSocketHasConfiguredMode(t *testing.T) {
	for _, mode := range []fs.FileMode{0o600, 0o660, 0o666} {
		t.Run(mode.String(), func(t *testing.T) {
			path := filepath.Join(shortTempDir(t), "s.sock")
			ln, err := listenUnix(path, mode)
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			fi, err := os.Lstat(path)
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode().Type() != fs.ModeSocket || fi.Mode().Perm() != mode {
				t.Fatalf("socket mode = %v, want socket with %v", fi.Mode(), mode)
			}
			entries, _ := os.ReadDir(filepath.Dir(path))
			if len(entries) != 1 {
				t.Errorf("staging directory left behind: %v", entries)
			}
		})
	}
}

func TestUnixSocketRemovedOnClose(t *testing.T) {
	path := filepath.Join(shortTempDir(t), "s.sock")
	ln, err := listenUnix(path, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	ln.Close()
	if _, err := os.Lstat(path); !os.IsNotExist(err) {
		t.Fatalf("socket still there after Close: %v", err)
	}
}

func TestStaleSocketIsReplaced(t *testing.T) {
	path := filepath.Join(shortTempDir(t), "s.sock")
	// A socket whose process is gone: bound, then closed without unlinking.
	old, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	old.SetUnlinkOnClose(false)
	old.Close()
	ln, err := listenUnix(path, 0o600)
	if err != nil {
		t.Fatalf("stale socket not replaced: %v", err)
	}
	ln.Close()
}

func TestSocketPathInUseFailsStart(t *testing.T) {
	path := filepath.Join(shortTempDir(t), "s.sock")
	live, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close()
	_, err = listenUnix(path, 0o600)
	if err == nil || !strings.Contains(err.Error(), "another process is serving") {
		t.Fatalf("err = %v, want an error saying the socket is in use", err)
	}
	if _, statErr := os.Lstat(path); statErr != nil {
		t.Fatalf("the live socket was removed: %v", statErr)
	}
}

func TestNonSocketFileAtSocketPathIsRefused(t *testing.T) {
	path := filepath.Join(shortTempDir(t), "important.txt")
	if err := os.WriteFile(path, []byte("keep me"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := listenUnix(path, 0o600)
	if err == nil || !strings.Contains(err.Error(), "regular file") {
		t.Fatalf("err = %v, want a refusal naming the regular file", err)
	}
	if b, _ := os.ReadFile(path); string(b) != "keep me" {
		t.Fatal("the file at the socket path was touched")
	}
}

func TestWorldWritableSocketDirIsRefused(t *testing.T) {
	dir := filepath.Join(shortTempDir(t), "open")
	if err := os.Mkdir(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o777); err != nil { // past the umask
		t.Fatal(err)
	}
	_, err := listenUnix(filepath.Join(dir, "s.sock"), 0o600)
	if err == nil || !strings.Contains(err.Error(), "world-writable") {
		t.Fatalf("err = %v, want a refusal of the world-writable directory", err)
	}
}

func TestTCPPortInUseFailsStart(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	cfg := testConfig(t)
	cfg.Listen.HTTP = busy.Addr().String()
	ag := New(cfg, discardLogger())
	err = ag.Start()
	if err == nil || !strings.Contains(err.Error(), "in use") || !strings.Contains(err.Error(), "listen.http") {
		t.Fatalf("err = %v, want an error naming listen.http and the busy address", err)
	}
	// A failed start must release what it opened: the spool can be opened again.
	if recs := spoolRecords(t, cfg.Spool.Path); len(recs) != 0 {
		t.Fatalf("unexpected records: %d", len(recs))
	}
}

func TestConnectionsOverTheCapGet503(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var refused int
	var mu sync.Mutex
	limited := newLimitListener(ln, 2, func() { mu.Lock(); refused++; mu.Unlock() })
	defer limited.Close()

	var held []net.Conn
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // the "server": accept and hold connections open
		defer wg.Done()
		for {
			c, err := limited.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			held = append(held, c)
			mu.Unlock()
		}
	}()
	defer func() {
		limited.Close()
		wg.Wait()
		for _, c := range held {
			c.Close()
		}
	}()
	var clients []net.Conn
	for i := 0; i < 2; i++ {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		clients = append(clients, c)
	}
	waitFor(t, "two connections to be held", 5*time.Second, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(held) == 2
	})
	over, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer over.Close()
	_, _ = over.Write([]byte("POST /api/v1/track HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"))
	resp, err := http.ReadResponse(bufio.NewReader(over), nil)
	if err != nil {
		t.Fatalf("no answer past the cap: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != 503 || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("past the cap: %d %v, want 503 with Retry-After", resp.StatusCode, resp.Header)
	}
	mu.Lock()
	defer mu.Unlock()
	if refused != 1 {
		t.Errorf("refused count = %d, want 1", refused)
	}
}
