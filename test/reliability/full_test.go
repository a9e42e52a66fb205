//go:build reliability

package reliability

import (
	"context"
	"strings"
	"testing"
	"time"
)

// TestFullSpoolReject: spool.max_bytes reached under when_full: reject.
// trackd answers 503 with Retry-After, /readyz says not ready, and nothing
// already stored is lost; once upstream drains the spool, 200s return.
func TestFullSpoolReject(t *testing.T) {
	w := newWork(t)
	up := newUpstream(t)
	up.Down()
	cfg := w.baseConfig(up.URL())
	cfg.MaxBodyBytes = 8192
	cfg.MaxBytes = 256 << 10
	cfg.WhenFull = "reject"
	l := newLedger("reject")
	d := w.start(cfg)
	tg := d.targets()[0]

	var first503 string
	var full int
	for i := 0; i < 2000; i++ {
		id := l.newID()
		st, hdr, body, err := post(context.Background(), tg.client, tg.base+kindPath(i%2), eventBody(id, i%2, 1000), nil)
		l.record(id, i%2, 1000, st, err)
		if err != nil {
			t.Fatal(err)
		}
		if st == 503 {
			if hdr.Get("Retry-After") == "" {
				t.Errorf("503 without Retry-After")
			}
			if !strings.Contains(string(body), "spool.max_bytes") {
				t.Errorf("503 message does not name spool.max_bytes: %s", body)
			}
			first503 = strings.TrimSpace(string(body))
			full = i
			break
		}
		if st != 200 {
			t.Fatalf("answer %d %s before the spool was full", st, body)
		}
	}
	if first503 == "" {
		t.Fatal("no 503 after 2000 events of 1 KiB with max_bytes 256 KiB")
	}
	// While full, every event is refused, from any client.
	ld := startLoad(l, d.targets(), loadOpts{workers: 2, pad: 1000, pause: time.Millisecond})
	waitFor(t, "the load to try 50 events against the full spool", 10*time.Second, func() bool {
		return ld.sent.Load() >= 50
	}, d.log.String)
	ld.stop()
	if n := ld.ok.Load(); n != 0 {
		t.Errorf("%d events accepted while the spool was full", n)
	}
	if st, _, _ := d.get("/readyz"); st != 503 {
		t.Errorf("readyz while full = %d, want 503", st)
	}
	qb, err := d.metric("trackd_spool_queued_bytes")
	if err != nil {
		t.Fatal(err)
	}
	if int64(qb) > cfg.MaxBytes {
		t.Errorf("queued bytes %v exceed max_bytes %d", qb, cfg.MaxBytes)
	}

	if err := up.Up(); err != nil {
		t.Fatal(err)
	}
	d.waitDrained(30 * time.Second)
	waitFor(t, "a 200 once the spool drained", 10*time.Second, func() bool {
		_, _, out := l.sendOne(context.Background(), tg.client, tg.base, 0, 1000, nil)
		return out == acked
	})
	d.waitDrained(30 * time.Second)
	d.stopClean()
	r := audit(t, l, up, cfg.SpoolPath, auditOpts{apiKey: cfg.APIKey})
	report(t, "max_bytes 256 KiB, reject: full after %d events of ~1.2 KiB; %d refused with 503 (%s); %d acknowledged, all delivered",
		full, r.refused, first503, r.acked)
}

// TestFullSpoolDropOldest: spool.max_bytes reached under when_full:
// drop_oldest. Every event is accepted; only the oldest are dropped, they
// are counted in trackd_spool_dropped_total{reason="max_bytes"} and
// logged, and the rest are delivered.
func TestFullSpoolDropOldest(t *testing.T) {
	w := newWork(t)
	up := newUpstream(t)
	up.Down()
	cfg := w.baseConfig(up.URL())
	cfg.MaxBodyBytes = 8192
	cfg.MaxBytes = 256 << 10
	cfg.WhenFull = "drop_oldest"
	l := newLedger("dropoldest")
	l.keepOrder = true // one sequential sender: 200s come in append order
	d := w.start(cfg)
	tg := d.targets()[1]

	const n = 600 // about 2.5 times what fits
	for i := 0; i < n; i++ {
		if _, st, out := l.sendOne(context.Background(), tg.client, tg.base, i%2, 1000, nil); out != acked {
			t.Fatalf("event %d refused under drop_oldest: %d", i, st)
		}
	}
	metric, err := d.metric(`trackd_spool_dropped_total{reason="max_bytes"}`)
	if err != nil {
		t.Fatal(err)
	}
	if lines := d.log.lines("level=WARN", "dropped the oldest"); len(lines) == 0 {
		t.Error("dropping the oldest records was not logged at warn level")
	}
	d.stopClean()

	recs, _ := readSpool(t, cfg.SpoolPath)
	l.mu.Lock()
	order := append([]string(nil), l.order...)
	l.mu.Unlock()
	kept := len(recs)
	if kept == 0 || kept >= n {
		t.Fatalf("%d of %d events kept", kept, n)
	}
	// What is left is exactly the newest events, in order.
	for i, r := range recs {
		if want := order[n-kept+i]; idOf(r.Body) != want {
			t.Fatalf("record %d of the spool is %s, want %s: not only the oldest were dropped", i, idOf(r.Body), want)
		}
	}
	dropped := map[string]bool{}
	for _, id := range order[:n-kept] {
		dropped[id] = true
	}
	if int(metric) != len(dropped) {
		t.Errorf(`trackd_spool_dropped_total{reason="max_bytes"} = %v, but %d events are gone`, metric, len(dropped))
	}

	if err := up.Up(); err != nil {
		t.Fatal(err)
	}
	d = w.start(cfg)
	d.waitDrained(30 * time.Second)
	d.stopClean()
	r := audit(t, l, up, cfg.SpoolPath, auditOpts{apiKey: cfg.APIKey, dropped: dropped})
	report(t, "max_bytes 256 KiB, drop_oldest: %d events accepted, the oldest %d dropped and counted (metric %v), the newest %d delivered",
		n, len(dropped), metric, r.delivered)
}
