//go:build reliability

package reliability

import (
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/trackd/trackd/forwarder/upstreamtest"
	"github.com/trackd/trackd/spool"
)

// upstream is the loopback upstream of a test: an upstreamtest.Server, plus
// the deliveries of any stand-in a test put in front of it (a TLS server,
// a server that answers badly on purpose).
type upstream struct {
	*upstreamtest.Server

	mu    sync.Mutex
	extra [][]byte // bodies a stand-in answered 2xx for
}

func newUpstream(t testing.TB) *upstream {
	t.Helper()
	s, err := upstreamtest.NewServer("")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return &upstream{Server: s}
}

// addDelivery records a body a stand-in answered with a 2xx.
func (u *upstream) addDelivery(body []byte) {
	u.mu.Lock()
	u.extra = append(u.extra, append([]byte(nil), body...))
	u.mu.Unlock()
}

// deliveredBodies is every body upstream accepted (answered 2xx), counting
// repeats.
func (u *upstream) deliveredBodies() [][]byte {
	var out [][]byte
	for _, r := range u.Received() {
		if r.Status >= 200 && r.Status < 300 {
			out = append(out, r.Body)
		}
	}
	u.mu.Lock()
	out = append(out, u.extra...)
	u.mu.Unlock()
	return out
}

// deliveredIDs counts deliveries by event id.
func (u *upstream) deliveredIDs() map[string]int {
	m := map[string]int{}
	for _, b := range u.deliveredBodies() {
		if id := idOf(b); id != "" {
			m[id]++
		}
	}
	return m
}

// idOf is the "id" member of a body, found without a full decode.
func idOf(b []byte) string {
	const key = `"id":"`
	i := strings.Index(string(b), key)
	if i < 0 {
		return ""
	}
	rest := string(b[i+len(key):])
	j := strings.IndexByte(rest, '"')
	if j < 0 {
		return ""
	}
	return rest[:j]
}

// auditOpts relax the audit for tests that end with events kept on
// purpose.
type auditOpts struct {
	// allowQueued: an acknowledged event may still be queued in the spool
	// (kept, not yet delivered).
	allowQueued bool
	// dropped are events a configured policy dropped (and counted).
	dropped map[string]bool
	// apiKey, when set, is the apiKey every delivered body must carry.
	apiKey string
	// deliveries overrides upstream's (the soak counts its own).
	deliveries map[string]int
}

// auditResult is what the audit found.
type auditResult struct {
	acked, refused, notSent, unknown int
	delivered, deadLettered, queued  int
	dropped, duplicates, extraSends  int
	unknownDelivered, unknownKept    int
	deadReasons                      map[string]int
}

func discardLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// readSpool opens the spool at path (trackd must have stopped) and returns
// its queued records and dead letters.
func readSpool(t testing.TB, path string) ([]spool.Record, []spool.DeadLetter) {
	t.Helper()
	sp, err := spool.Open(spool.Options{Path: path, Logger: discardLogger()})
	if err != nil {
		t.Fatalf("open spool for the audit: %v", err)
	}
	defer sp.Close()
	if q := sp.Stats().Quarantined; q != "" {
		t.Errorf("the audit found the spool unreadable: it was moved to %s", q)
	}
	var recs []spool.Record
	for after := uint64(0); ; {
		rs, err := sp.Read(after, 1000)
		if err != nil {
			t.Fatalf("read spool: %v", err)
		}
		if len(rs) == 0 {
			break
		}
		recs = append(recs, rs...)
		after = rs[len(rs)-1].ID
	}
	var dead []spool.DeadLetter
	for after := uint64(0); ; {
		ds, err := sp.ReadDead(after, 1000)
		if err != nil {
			t.Fatalf("read dead letters: %v", err)
		}
		if len(ds) == 0 {
			break
		}
		dead = append(dead, ds...)
		after = ds[len(ds)-1].ID
	}
	return recs, dead
}

// audit checks what became of every event in l, once trackd has stopped:
// each acknowledged event reached upstream at least once or is a dead
// letter with a reason; nothing refused or unsent was delivered or stored;
// every body is intact. Duplicates are counted and reported.
func audit(t testing.TB, l *ledger, up *upstream, spoolPath string, o auditOpts) auditResult {
	t.Helper()
	var r auditResult
	r.deadReasons = map[string]int{}
	var problems []string
	problem := func(format string, args ...any) {
		if len(problems) < 20 {
			problems = append(problems, fmt.Sprintf(format, args...))
		} else if len(problems) == 20 {
			problems = append(problems, "…")
		}
	}

	delivered := o.deliveries
	if delivered == nil {
		delivered = map[string]int{}
		for _, b := range up.deliveredBodies() {
			id, bad := l.checkBody(b, o.apiKey)
			if bad != "" {
				problem("upstream received a bad body: %s", bad)
			}
			if id != "" {
				delivered[id]++
			}
		}
	}
	recs, dead := readSpool(t, spoolPath)
	queued := map[string]bool{}
	for _, rec := range recs {
		id, bad := l.checkBody(rec.Body, o.apiKey)
		if bad != "" {
			problem("a queued record is bad: %s", bad)
		}
		queued[id] = true
	}
	deadIDs := map[string]string{}
	for _, d := range dead {
		id, bad := l.checkBody(d.Body, o.apiKey)
		if bad != "" {
			problem("a dead letter is bad: %s", bad)
		}
		if d.Reason == "" {
			problem("dead letter %s has no reason", id)
		}
		deadIDs[id] = d.Reason
		r.deadReasons[fmt.Sprintf("%d %.60s", d.Status, d.Reason)]++
	}

	l.mu.Lock()
	for id, e := range l.m {
		n := delivered[id]
		_, isDead := deadIDs[id]
		kept := queued[id]
		if n > 1 {
			r.duplicates++
			r.extraSends += n - 1
		}
		switch e.out {
		case acked:
			r.acked++
			switch {
			case n > 0:
				r.delivered++
			case isDead:
				r.deadLettered++
			case kept && o.allowQueued:
				r.queued++
			case o.dropped[id]:
				r.dropped++
			case kept:
				problem("acknowledged event %s is still queued: never delivered", id)
			default:
				problem("acknowledged event %s was LOST: not delivered, not queued, not a dead letter", id)
			}
		case refused, notSent:
			if e.out == refused {
				r.refused++
			} else {
				r.notSent++
			}
			if n > 0 || isDead || kept {
				problem("event %s got %s (status %d) but was delivered %d times, dead=%v, queued=%v", id, e.out, e.status, n, isDead, kept)
			}
		case 0:
			problem("event %s was sent but its answer never recorded (the load was not stopped?)", id)
		case unknown:
			r.unknown++
			if n > 0 {
				r.unknownDelivered++
			} else if isDead || kept {
				r.unknownKept++
			}
		}
	}
	l.mu.Unlock()
	for id := range o.dropped {
		if delivered[id] > 0 {
			problem("event %s was counted as dropped by policy but was delivered", id)
		}
	}

	dupPct := 0.0
	if r.acked > 0 {
		dupPct = 100 * float64(r.duplicates) / float64(r.acked)
	}
	t.Logf("audit: %d acknowledged (%d delivered, %d dead-lettered, %d still queued, %d dropped by policy); "+
		"%d refused; %d not sent; %d unknown outcome (%d of them delivered, %d kept); "+
		"%d duplicates (%.2f%% of acknowledged, %d extra sends)",
		r.acked, r.delivered, r.deadLettered, r.queued, r.dropped, r.refused, r.notSent, r.unknown,
		r.unknownDelivered, r.unknownKept, r.duplicates, dupPct, r.extraSends)
	if len(r.deadReasons) > 0 {
		keys := make([]string, 0, len(r.deadReasons))
		for k := range r.deadReasons {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range keys {
			t.Logf("audit: dead letters: %d × %s", r.deadReasons[k], k)
		}
	}
	if len(problems) > 0 {
		t.Errorf("audit failed:\n  %s", strings.Join(problems, "\n  "))
	}
	return r
}
