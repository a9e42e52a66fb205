//go:build reliability

package reliability

import (
	"fmt"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/time/rate"

	"github.com/trackd/trackd/forwarder/upstreamtest"
)

// soakUpstream counts deliveries itself, in a Script, so that the upstream
// test server's record of requests can be dropped as the soak runs: memory
// in the test must not grow with the number of requests.
type soakUpstream struct {
	*upstream
	l      *ledger
	apiKey string

	mu        sync.Mutex
	lim       *rate.Limiter // nil: accept everything
	delivered map[string]int
	bad       []string
	total     atomic.Int64
	throttled atomic.Int64
}

func newSoakUpstream(t testing.TB, l *ledger, apiKey string) *soakUpstream {
	s := &soakUpstream{upstream: newUpstream(t), l: l, apiKey: apiKey, delivered: map[string]int{}}
	s.SetMode(upstreamtest.Mode{Script: s.answer})
	return s
}

func (s *soakUpstream) answer(r upstreamtest.Request) (upstreamtest.Answer, bool) {
	s.mu.Lock()
	lim := s.lim
	s.mu.Unlock()
	if lim != nil && !lim.Allow() {
		s.throttled.Add(1)
		return upstreamtest.Answer{Status: 429}, true
	}
	id, bad := s.l.checkBody(r.Body, s.apiKey)
	s.mu.Lock()
	if bad != "" && len(s.bad) < 10 {
		s.bad = append(s.bad, bad)
	}
	if id != "" {
		s.delivered[id]++
	}
	s.mu.Unlock()
	s.total.Add(1)
	return upstreamtest.Answer{Status: 200}, true
}

// limit sets the rate upstream accepts; 0 opens it up.
func (s *soakUpstream) limit(perSecond float64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if perSecond <= 0 {
		s.lim = nil
		return
	}
	s.lim = rate.NewLimiter(rate.Limit(perSecond), max(1, int(perSecond/10)))
}

// phase is one fill or drain measured in the soak.
type soakPhase struct {
	name                                  string
	fill, drain                           time.Duration
	accepted, delivered                   int64
	peakFile, peakQueued, peakQueuedBytes int64
	rssStart, rssEnd, rssPeak             int64
}

// TestSoak: sustained ingest at -soak.rate with upstream accepting only 60%
// of it (so the spool grows), then upstream opens up and the spool drains;
// then more, shorter fill/drain cycles. Reports what was accepted,
// delivered and duplicated, peak spool size, peak RssAnon, p99 ack latency
// and time to drain; RssAnon must not grow with the spool, and the file
// must not grow across cycles.
func TestSoak(t *testing.T) {
	w := newWork(t)
	l := newLedger("soak")
	cfg := w.baseConfig("")
	up := newSoakUpstream(t, l, cfg.APIKey)
	cfg.UpstreamURL = up.URL()
	cfg.Concurrency = 8
	cfg.RetryMax = time.Second
	offered := float64(*soakRate)
	if offered <= 0 {
		offered = prof.soakRate
	}
	// A ceiling well above what upstream takes, as a deployment would set
	// one: the additive increase is a twentieth of it per second. (Without
	// a ceiling, see TestRateAdaptsWithoutACeiling.)
	cfg.Rate = 5 * offered

	d := w.start(cfg)
	pid := d.pid()
	var rssPeak atomic.Int64
	var filePeak atomic.Int64
	stopSampling := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for {
			if v, err := rssAnonKiB(pid); err == nil && v > rssPeak.Load() {
				rssPeak.Store(v)
			}
			if fi, err := os.Stat(cfg.SpoolPath); err == nil && fi.Size() > filePeak.Load() {
				filePeak.Store(fi.Size())
			}
			up.Reset() // the soak counts deliveries itself
			select {
			case <-stopSampling:
				return
			case <-time.After(100 * time.Millisecond):
			}
		}
	}()

	var lat []int32 // ack latencies of every phase, microseconds
	// run ingests at the offered rate for length while upstream accepts
	// 60% of it, then stops ingesting, opens upstream up and waits for the
	// spool to drain.
	run := func(name string, length time.Duration) soakPhase {
		p := soakPhase{name: name, fill: length}
		up.limit(0.6 * offered)
		filePeak.Store(0)
		rssPeak.Store(0)
		del0 := up.total.Load()
		ld := startLoad(l, d.targets(), loadOpts{workers: 8, rate: offered, identifyEvery: 5, pad: 200, latencies: true})
		start := time.Now()
		for time.Since(start) < length {
			time.Sleep(250 * time.Millisecond)
			if p.rssStart == 0 && time.Since(start) >= length/10 {
				p.rssStart, _ = rssAnonKiB(pid) // warmed up, spool still small
			}
			if st, err := d.status(); err == nil {
				p.peakQueued = max(p.peakQueued, st.Spool.Queued)
				p.peakQueuedBytes = max(p.peakQueuedBytes, st.Spool.QueuedBytes)
			}
		}
		p.rssEnd, _ = rssAnonKiB(pid) // with the spool at its largest
		ld.stop()
		p.accepted = ld.ok.Load()
		lat = append(lat, ld.lat...)
		up.limit(0)
		t0 := time.Now()
		waitFor(t, name+" to drain", 10*time.Minute, func() bool {
			st, err := d.status()
			return err == nil && st.Spool.Queued == 0
		})
		p.drain = time.Since(t0)
		p.delivered = up.total.Load() - del0
		p.peakFile, p.rssPeak = filePeak.Load(), rssPeak.Load()
		report(t, "%s: %s at %.0f/s offered (upstream taking 60%%): %d accepted, queue peak %d events (%.1f MiB), file peak %.1f MiB; "+
			"drained in %s once upstream opened; RssAnon %d KiB with a small spool, %d KiB with the largest, peak %d KiB",
			name, length, offered, p.accepted, p.peakQueued, float64(p.peakQueuedBytes)/(1<<20), float64(p.peakFile)/(1<<20),
			p.drain.Round(10*time.Millisecond), p.rssStart, p.rssEnd, p.rssPeak)
		return p
	}

	fill := run("fill", prof.soakFill)
	var cycles []soakPhase
	for i := 0; i < prof.soakCycles; i++ {
		cycles = append(cycles, run(fmt.Sprintf("cycle %d", i+1), prof.soakCycle))
	}
	close(stopSampling)
	<-sampled
	slices.Sort(lat)
	pct := func(p float64) time.Duration {
		if len(lat) == 0 {
			return 0
		}
		return time.Duration(lat[min(len(lat)-1, int(p*float64(len(lat))))]) * time.Microsecond
	}
	p99, p50 := pct(0.99), pct(0.50)
	finalFile := fileSize(t, cfg.SpoolPath)
	d.stopClean()
	if lines := d.log.lines("lowering the send rate"); len(lines) > 0 {
		t.Logf("trackd lowered its send rate %d times; first: %s", len(lines), lines[0])
	}

	up.mu.Lock()
	deliveries := make(map[string]int, len(up.delivered))
	for k, v := range up.delivered {
		deliveries[k] = v
	}
	bad := up.bad
	up.mu.Unlock()
	if len(bad) > 0 {
		t.Errorf("upstream received bad bodies: %v", bad)
	}
	r := audit(t, l, up.upstream, cfg.SpoolPath, auditOpts{deliveries: deliveries})

	peakRSS := fill.rssPeak
	peakFile := fill.peakFile
	for _, c := range cycles {
		peakRSS = max(peakRSS, c.rssPeak)
		peakFile = max(peakFile, c.peakFile)
	}
	report(t, "soak at %.0f/s offered: %d accepted, %d delivered, %d duplicates, %d 429s from upstream; peak spool file %.1f MiB "+
		"(%.1f MiB after the last drain); peak RssAnon %d KiB; ack latency p50 %s p99 %s over the whole run; "+
		"time to drain after the main fill %s",
		offered, r.acked, r.delivered, r.duplicates, up.throttled.Load(), float64(peakFile)/(1<<20), float64(finalFile)/(1<<20),
		peakRSS, p50, p99, fill.drain.Round(10*time.Millisecond))

	const allocStep = 4 << 20 // bbolt grows the file in 4 MiB steps
	if peakRSS > 64<<10 {
		t.Errorf("peak RssAnon %d KiB, want under 64 MiB", peakRSS)
	}
	if grew := fill.rssEnd - fill.rssStart; grew > 16<<10 {
		t.Errorf("RssAnon grew by %d KiB while the spool grew to %d events: memory follows the spool", grew, fill.peakQueued)
	}
	for _, c := range cycles {
		if c.peakFile > fill.peakFile+allocStep {
			t.Errorf("%s: the file grew to %d bytes, beyond the %d of the longer first fill: freed pages are not reused",
				c.name, c.peakFile, fill.peakFile)
		}
	}
	if len(cycles) > 1 {
		if last, first := cycles[len(cycles)-1], cycles[0]; last.peakFile > first.peakFile+allocStep {
			t.Errorf("the file grows from cycle to cycle: %d bytes in the first, %d in the last", first.peakFile, last.peakFile)
		}
	}
	if r.acked == 0 || fill.peakQueued == 0 {
		t.Errorf("the soak did not build a backlog (acked %d, queue peak %d)", r.acked, fill.peakQueued)
	}
}
