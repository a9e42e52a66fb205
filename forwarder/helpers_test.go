package forwarder

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/trackd/trackd/forwarder/upstreamtest"
	"github.com/trackd/trackd/spool"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// mustOpenSpool opens a spool in a fresh directory, closed at cleanup.
func mustOpenSpool(t testing.TB) *spool.Spool {
	t.Helper()
	return openSpoolAt(t, filepath.Join(t.TempDir(), "spool.db"))
}

func openSpoolAt(t testing.TB, path string) *spool.Spool {
	t.Helper()
	sp, err := spool.Open(spool.Options{Path: path, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sp.Close() })
	return sp
}

func newUpstream(t testing.TB) *upstreamtest.Server {
	t.Helper()
	up, err := upstreamtest.NewServer("")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = up.Close() })
	return up
}

// body is a valid track event carrying seq, so tests can tell events apart.
func body(seq int) []byte {
	return fmt.Appendf(nil, `{"apiKey":"k","event":"E%d","userId":"u","properties":{"seq":%d}}`, seq, seq)
}

// seqOf reads back the seq of a body built by body or identifyBody.
func seqOf(t testing.TB, b []byte) int {
	t.Helper()
	var v struct {
		Properties struct{ Seq *int } `json:"properties"`
		Traits     struct{ Seq *int } `json:"traits"`
	}
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatalf("body %q: %v", b, err)
	}
	switch {
	case v.Properties.Seq != nil:
		return *v.Properties.Seq
	case v.Traits.Seq != nil:
		return *v.Traits.Seq
	}
	t.Fatalf("body %q has no seq", b)
	return 0
}

func identifyBody(seq int) []byte {
	return fmt.Appendf(nil, `{"apiKey":"k","userId":"u%d","traits":{"seq":%d}}`, seq, seq)
}

// spoolEvents appends track events with seq from..to-1, one transaction.
func spoolEvents(t testing.TB, sp *spool.Spool, from, to int) {
	t.Helper()
	var es []spool.Entry
	for i := from; i < to; i++ {
		es = append(es, spool.Entry{Kind: spool.KindTrack, Body: body(i)})
	}
	if err := sp.Append(context.Background(), es...); err != nil {
		t.Fatal(err)
	}
}

// queued is how many records the spool still holds, not dead.
func queued(t testing.TB, sp *spool.Spool) int {
	t.Helper()
	recs, err := sp.Read(0, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	return len(recs)
}

func deadLetters(t testing.TB, sp *spool.Spool) []spool.DeadLetter {
	t.Helper()
	dl, err := sp.ReadDead(0, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	return dl
}

// testOptions are fast options against up.
func testOptions(up *upstreamtest.Server) Options {
	return Options{
		URL:          up.URL(),
		Timeout:      2 * time.Second,
		Concurrency:  4,
		RetryInitial: 20 * time.Millisecond,
		RetryMax:     200 * time.Millisecond,
		UserAgent:    "trackd/test",
	}
}

// startForwarder starts a forwarder, shut down at cleanup.
func startForwarder(t testing.TB, store Store, opts Options) *Forwarder {
	t.Helper()
	f, err := New(store, opts)
	if err != nil {
		t.Fatal(err)
	}
	f.Start(context.Background())
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		_ = f.Shutdown(ctx)
	})
	return f
}

// stop shuts f down now, without draining.
func stop(t testing.TB, f *Forwarder) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_ = f.Shutdown(ctx)
}

// waitFor polls cond until it holds, failing the test after timeout.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// accepted returns the seqs upstream answered 200 to, in arrival order.
func accepted(t testing.TB, up *upstreamtest.Server) []int {
	t.Helper()
	var out []int
	for _, r := range up.Received() {
		if r.Status == 200 && !bytes.Contains(r.Body, []byte(`"failure"`)) {
			out = append(out, seqOf(t, r.Body))
		}
	}
	return out
}

// logSink collects log records for assertions.
type logSink struct {
	mu   sync.Mutex
	recs []slog.Record
}

func (s *logSink) Enabled(context.Context, slog.Level) bool { return true }
func (s *logSink) Handle(_ context.Context, r slog.Record) error {
	s.mu.Lock()
	s.recs = append(s.recs, r.Clone())
	s.mu.Unlock()
	return nil
}
func (s *logSink) WithAttrs([]slog.Attr) slog.Handler { return s }
func (s *logSink) WithGroup(string) slog.Handler      { return s }

// count is how many records at level have a message containing msg.
func (s *logSink) count(level slog.Level, msg string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, r := range s.recs {
		if r.Level == level && bytes.Contains([]byte(r.Message), []byte(msg)) {
			n++
		}
	}
	return n
}
