package agent

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/trackd/trackd/agent/config"
	"github.com/trackd/trackd/internal/trackdtest"
	"github.com/trackd/trackd/spool"
)

func TestMain(m *testing.M) {
	code := m.Run()
	trackdtest.Cleanup()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintf(os.Stderr, "goleak: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}

// shortTempDir returns a private directory under /tmp: Unix socket paths must
// stay under ~104 bytes, which t.TempDir() paths can exceed.
func shortTempDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("/tmp", "trackd-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// testConfig returns a valid config for an agent on a free loopback port and a
// Unix socket, with its spool in a temp dir and upstream pointing at a
// loopback port nobody listens on (so nothing leaves the machine).
func testConfig(t testing.TB) config.Config {
	t.Helper()
	dir := shortTempDir(t)
	cfg := config.Default()
	cfg.Listen.HTTP = "127.0.0.1:0"
	cfg.Listen.Unix = filepath.Join(dir, "trackd.sock")
	cfg.Spool.Path = filepath.Join(dir, "spool", "spool.db")
	cfg.Upstream.URL = "http://" + closedAddr(t)
	cfg.Upstream.APIKey = "test-key"
	cfg.Shutdown.Timeout = config.Duration(5 * time.Second)
	return cfg
}

// closedAddr returns a loopback address on which nothing listens.
func closedAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

func discardLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// testAgent is a started Agent with clients for both of its listeners.
type testAgent struct {
	*Agent
	cfg      config.Config
	tcpURL   string
	tcp      *http.Client
	unix     *http.Client
	unixPath string
}

func startAgent(t testing.TB, cfg config.Config) *testAgent {
	t.Helper()
	if err := cfg.Validate(); err != nil {
		t.Fatalf("test config is invalid: %v", err)
	}
	ag := New(cfg, discardLogger())
	if err := ag.Start(); err != nil {
		t.Fatalf("start agent: %v", err)
	}
	ta := &testAgent{Agent: ag, cfg: cfg}
	t.Cleanup(func() { ta.close(t) })
	for _, addr := range ag.Addrs() {
		switch addr.Network() {
		case "tcp":
			ta.tcpURL = "http://" + addr.String()
			ta.tcp = &http.Client{Transport: &http.Transport{}, Timeout: 10 * time.Second}
		case "unix":
			ta.unixPath = cfg.Listen.Unix
			ta.unix = unixClient(cfg.Listen.Unix)
		}
	}
	return ta
}

func (ta *testAgent) close(t testing.TB) {
	t.Helper()
	for _, c := range []*http.Client{ta.tcp, ta.unix} {
		if c != nil {
			c.CloseIdleConnections()
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := ta.Close(ctx); err != nil {
		t.Errorf("close agent: %v", err)
	}
}

func unixClient(path string) *http.Client {
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
	}}
}

// transport names one way to reach the agent.
type transport struct {
	name string
	base func(*testAgent) string
	cli  func(*testAgent) *http.Client
}

var transports = []transport{
	{"tcp", func(ta *testAgent) string { return ta.tcpURL }, func(ta *testAgent) *http.Client { return ta.tcp }},
	{"unix", func(*testAgent) string { return "http://trackd" }, func(ta *testAgent) *http.Client { return ta.unix }},
}

type response struct {
	status int
	header http.Header
	body   string
}

func do(t testing.TB, c *http.Client, method, url string, header http.Header, body []byte) response {
	t.Helper()
	req, err := http.NewRequest(method, url, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read answer: %v", err)
	}
	return response{resp.StatusCode, resp.Header, string(b)}
}

// spoolRecords opens the spool at path (the agent must be closed) and returns
// every queued record.
func spoolRecords(t testing.TB, path string) []spool.Record {
	t.Helper()
	sp, err := spool.Open(spool.Options{Path: path, Logger: discardLogger()})
	if err != nil {
		t.Fatalf("open spool: %v", err)
	}
	defer sp.Close()
	var all []spool.Record
	var after uint64
	for {
		recs, err := sp.Read(after, 1000)
		if err != nil {
			t.Fatalf("read spool: %v", err)
		}
		if len(recs) == 0 {
			return all
		}
		all = append(all, recs...)
		after = recs[len(recs)-1].ID
	}
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t testing.TB, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func contains(s, sub string) bool { return strings.Contains(s, sub) }
