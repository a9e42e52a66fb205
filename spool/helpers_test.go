package spool

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func discardLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// logRecorder is a slog.Handler that keeps what was logged.
type logRecorder struct {
	mu    sync.Mutex
	lines []string
}

func (l *logRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (l *logRecorder) WithAttrs([]slog.Attr) slog.Handler       { return l }
func (l *logRecorder) WithGroup(string) slog.Handler            { return l }
func (l *logRecorder) Handle(_ context.Context, r slog.Record) error {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s", r.Level, r.Message)
	r.Attrs(func(a slog.Attr) bool {
		fmt.Fprintf(&b, " %s=%v", a.Key, a.Value)
		return true
	})
	l.mu.Lock()
	l.lines = append(l.lines, b.String())
	l.mu.Unlock()
	return nil
}

// all returns a copy of the lines logged so far.
func (l *logRecorder) all() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.lines)
}

// find returns the first line containing every part, or "".
func (l *logRecorder) find(parts ...string) string {
	l.mu.Lock()
	defer l.mu.Unlock()
next:
	for _, line := range l.lines {
		for _, p := range parts {
			if !strings.Contains(line, p) {
				continue next
			}
		}
		return line
	}
	return ""
}

// fakeClock is a settable Options.Now.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{now: time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// tempPath returns a spool path in a fresh temporary directory.
func tempPath(t testing.TB) string {
	return filepath.Join(t.TempDir(), "spool.db")
}

// mustOpenSpool opens a spool with opts (a temporary path and a discarding
// logger unless set) and closes it when the test ends.
func mustOpenSpool(t testing.TB, opts Options) *Spool {
	t.Helper()
	if opts.Path == "" {
		opts.Path = tempPath(t)
	}
	if opts.Logger == nil {
		opts.Logger = discardLogger()
	}
	s, err := Open(opts)
	if err != nil {
		t.Fatalf("Open(%s): %v", opts.Path, err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s
}

// reopen closes s and opens its file again with the same options.
func reopen(t testing.TB, s *Spool) *Spool {
	t.Helper()
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	return mustOpenSpool(t, s.opts)
}

// trackBody is a realistic ~300-byte track event.
func trackBody(i int) []byte {
	return fmt.Appendf(nil, `{"type":"track","event":"Order Completed","userId":"user-%06d",`+
		`"messageId":"msg-%012d","timestamp":"2025-03-01T12:00:00.000Z","properties":`+
		`{"orderId":"ord-%08d","total":129.95,"currency":"EUR","coupon":"SPRING25",`+
		`"products":[{"sku":"SKU-1042","qty":2},{"sku":"SKU-2210","qty":1}]},`+
		`"context":{"library":{"name":"trackd-js","version":"2.4.1"},"locale":"nl-NL"}}`, i%1000000, i, i)
}

func mustAppend(t testing.TB, s *Spool, bodies ...string) {
	t.Helper()
	entries := make([]Entry, len(bodies))
	for i, b := range bodies {
		entries[i] = Entry{Kind: KindTrack, Body: []byte(b)}
	}
	if err := s.Append(context.Background(), entries...); err != nil {
		t.Fatalf("Append: %v", err)
	}
}

// readAll pages through the whole queue.
func readAll(t testing.TB, s *Spool) []Record {
	t.Helper()
	var all []Record
	after := uint64(0)
	for {
		recs, err := s.Read(after, 100)
		if err != nil {
			t.Fatalf("Read(%d): %v", after, err)
		}
		if len(recs) == 0 {
			return all
		}
		all = append(all, recs...)
		after = recs[len(recs)-1].ID
	}
}

func bodies(recs []Record) []string {
	out := make([]string, len(recs))
	for i, r := range recs {
		out[i] = string(r.Body)
	}
	return out
}

func ids(recs []Record) []uint64 {
	out := make([]uint64, len(recs))
	for i, r := range recs {
		out[i] = r.ID
	}
	return out
}

// eventually polls cond until it holds or a deadline passes.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// sweepNow asks the writer to drop expired records, as its timer does.
func sweepNow(t testing.TB, s *Spool) {
	t.Helper()
	if err := s.do(context.Background(), &request{op: opSweep}); err != nil {
		t.Fatalf("sweep: %v", err)
	}
}

// copyFile copies a spool file while its spool is open: what a crash at
// that moment would leave on disk.
func copyFile(t testing.TB, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

func slogNew(h slog.Handler) *slog.Logger { return slog.New(h) }
