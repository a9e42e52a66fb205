//go:build reliability

package reliability

import (
	"context"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/trackd/trackd/forwarder/upstreamtest"
)

// quietLog discards the test servers' complaints about the clients they
// were told to mistreat.
var quietLog = log.New(io.Discard, "", 0)

// front stands in front of the upstream test server and misbehaves in ways
// it cannot: slow-drip and huge answers, bodies that are not JSON,
// redirects, resets in the middle of a request. In mode "pass" it proxies
// to upstream.
type front struct {
	up    *upstream
	mode  atomic.Value // string
	hits  atomic.Int64 // requests answered badly
	proxy *httputil.ReverseProxy
}

func newFront(up *upstream) *front {
	u, _ := url.Parse(up.URL())
	f := &front{up: up, proxy: httputil.NewSingleHostReverseProxy(u)}
	f.proxy.ErrorLog = quietLog
	f.mode.Store("pass")
	return f
}

func (f *front) set(mode string) { f.mode.Store(mode) }

// repeatReader yields s over and over, n bytes in all.
func repeatReader(s string, n int64) io.Reader {
	return io.LimitReader(&cycle{s: s}, n)
}

type cycle struct {
	s string
	i int
}

func (c *cycle) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = c.s[c.i]
		c.i = (c.i + 1) % len(c.s)
	}
	return len(p), nil
}

func (f *front) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	mode := f.mode.Load().(string)
	if mode == "pass" {
		f.proxy.ServeHTTP(w, r)
		return
	}
	f.hits.Add(1)
	if mode == "reset-mid-request" {
		// Read a little of the body, then reset the connection.
		hj := w.(http.Hijacker)
		conn, buf, err := hj.Hijack()
		if err != nil {
			return
		}
		_, _ = buf.Read(make([]byte, 10))
		if tc, ok := conn.(*net.TCPConn); ok {
			_ = tc.SetLinger(0)
		}
		conn.Close()
		return
	}
	body, err := io.ReadAll(r.Body)
	if err != nil {
		return
	}
	switch mode {
	case "slow-drip":
		// Headers at once, then the body a byte at a time, slower than
		// upstream.timeout allows.
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Content-Length", "1000")
		w.WriteHeader(200)
		for i := 0; i < 1000; i++ {
			if _, err := w.Write([]byte(" ")); err != nil {
				return
			}
			w.(http.Flusher).Flush()
			select {
			case <-r.Context().Done():
				return
			case <-time.After(50 * time.Millisecond):
			}
		}
	case "huge-200":
		f.up.addDelivery(body)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(200)
		_, _ = io.Copy(w, repeatReader(`{"status":"success","padding":"xxxxxxxxxxxxxxxxxxxxxxx"} `, 200<<20))
	case "huge-400":
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(400)
		_, _ = io.Copy(w, repeatReader("this event is refused and here is a very long story why. ", 200<<20))
	case "invalid-json-200":
		f.up.addDelivery(body)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(200)
		_, _ = io.WriteString(w, `{"status": "succ`)
	case "invalid-json-500":
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(500)
		_, _ = io.WriteString(w, `<html><body>Internal Server Error</body>`)
	case "redirect":
		http.Redirect(w, r, f.up.URL()+r.URL.Path, http.StatusTemporaryRedirect)
	case "moved":
		http.Redirect(w, r, f.up.URL()+r.URL.Path, http.StatusMovedPermanently)
	default:
		panic("unknown front mode " + mode)
	}
}

// upstreamCase is one way upstream misbehaves.
type upstreamCase struct {
	name      string
	viaFront  bool
	configure func(c *trackdConfig)
	// bad makes upstream misbehave; good makes it behave again.
	bad, good func(up *upstream, f *front)
	// exercised says the misbehaviour has been met enough times.
	exercised func(up *upstream, f *front) bool
	// during runs while upstream misbehaves; after once it behaved and
	// the spool drained (took is how long the drain took).
	during func(t *testing.T, d *trackd, up *upstream)
	after  func(t *testing.T, d *trackd, r caseResult)
}

// caseResult is what happened once upstream behaved again.
type caseResult struct {
	first time.Duration // until the first delivery
	drain time.Duration // until the spool was empty
	audit auditResult
}

func setMode(m upstreamtest.Mode) func(up *upstream, f *front) {
	return func(up *upstream, f *front) { up.SetMode(m) }
}

func frontMode(mode string) func(up *upstream, f *front) {
	return func(up *upstream, f *front) { f.set(mode) }
}

func received(n int) func(up *upstream, f *front) bool {
	return func(up *upstream, f *front) bool { return up.Count() >= n }
}

func frontHits(n int64) func(up *upstream, f *front) bool {
	return func(up *upstream, f *front) bool { return f.hits.Load() >= n }
}

// noDeliveries asserts upstream accepted nothing while misbehaving.
func noDeliveries(t *testing.T, d *trackd, up *upstream) {
	if n := len(up.deliveredBodies()); n != 0 {
		t.Errorf("%d events delivered while upstream misbehaved", n)
	}
}

func logged(level, sub string) func(t *testing.T, d *trackd, up *upstream) {
	return func(t *testing.T, d *trackd, up *upstream) {
		t.Helper()
		waitFor(t, "a "+level+" log line with "+sub, 5*time.Second, func() bool {
			return len(d.log.lines("level="+level, sub)) > 0
		}, d.log.String)
		t.Logf("logged: %s", d.log.lines("level="+level, sub)[0])
	}
}

func all(fs ...func(t *testing.T, d *trackd, up *upstream)) func(t *testing.T, d *trackd, up *upstream) {
	return func(t *testing.T, d *trackd, up *upstream) {
		for _, f := range fs {
			f(t, d, up)
		}
	}
}

// deliveredOnce asserts that every event was taken as delivered by the
// first 2xx, however odd its body: none was sent again.
func deliveredOnce(t *testing.T, d *trackd, r caseResult) {
	if r.audit.duplicates != 0 || r.first >= 0 {
		t.Errorf("%d events were sent again after a 2xx answer (first resend %s after upstream behaved)", r.audit.duplicates, r.first)
	}
}

// resumedWithin asserts sending resumed soon after upstream behaved: an
// absurd pause must have been capped (or ignored). Draining may take longer:
// a 429 storm also brought the send rate down to its floor, from which it
// climbs back additively.
func resumedWithin(limit time.Duration) func(t *testing.T, d *trackd, r caseResult) {
	return func(t *testing.T, d *trackd, r caseResult) {
		if r.first > limit {
			t.Errorf("the first delivery came %s after upstream recovered, want under %s (the pause was not capped)", r.first, limit)
		}
	}
}

// TestUpstreamMisbehaviour: hung connections, slow-drip and huge answers,
// bodies that are not JSON, redirects, 5xx, 429 storms with absurd
// Retry-After values, connection resets and drops. Events are kept while
// upstream misbehaves and delivered once it behaves, or dead-lettered when
// upstream refused them for good.
func TestUpstreamMisbehaviour(t *testing.T) {
	years := 20 * 365 * 24 * time.Hour
	cases := []upstreamCase{
		{
			name:      "hung connections time out and are retried",
			configure: func(c *trackdConfig) { c.Timeout = 300 * time.Millisecond },
			bad:       setMode(upstreamtest.Mode{Answer: upstreamtest.Answer{Hang: true}}),
			exercised: received(6),
			during:    noDeliveries,
		},
		{
			name:      "slow-drip answers time out and are retried",
			viaFront:  true,
			configure: func(c *trackdConfig) { c.Timeout = 300 * time.Millisecond },
			bad:       frontMode("slow-drip"),
			exercised: frontHits(6),
			during:    noDeliveries,
		},
		{
			name:      "a huge 200 answer is read in part and counts as delivered",
			viaFront:  true,
			bad:       frontMode("huge-200"),
			exercised: frontHits(40),
			after:     deliveredOnce,
		},
		{
			name:      "a huge 400 answer dead-letters with a short reason",
			viaFront:  true,
			bad:       frontMode("huge-400"),
			exercised: frontHits(20),
			after: func(t *testing.T, d *trackd, r caseResult) {
				if r.audit.deadLettered == 0 {
					t.Error("no event was dead-lettered after 400s")
				}
				for reason := range r.audit.deadReasons {
					if !strings.HasPrefix(reason, "400 ") {
						t.Errorf("dead letter reason %q, want the 400 answer's body", reason)
					}
				}
			},
		},
		{
			name:      "an invalid JSON 200 counts as delivered",
			viaFront:  true,
			bad:       frontMode("invalid-json-200"),
			exercised: frontHits(40),
			after:     deliveredOnce,
		},
		{
			name:      "an invalid JSON 500 is retried",
			viaFront:  true,
			bad:       frontMode("invalid-json-500"),
			exercised: frontHits(6),
			during:    noDeliveries,
		},
		{
			name:      "a temporary redirect is not followed and pauses sending",
			viaFront:  true,
			bad:       frontMode("redirect"),
			exercised: frontHits(2),
			during:    all(noDeliveries, logged("ERROR", "redirect")),
		},
		{
			name:      "a permanent redirect is not followed and pauses sending",
			viaFront:  true,
			bad:       frontMode("moved"),
			exercised: frontHits(2),
			during:    all(noDeliveries, logged("ERROR", "redirect")),
		},
		{
			name:      "5xx answers are retried",
			bad:       setMode(upstreamtest.Mode{Answer: upstreamtest.Answer{Status: 502}}),
			exercised: received(6),
			during:    noDeliveries,
		},
		{
			name: "a 429 storm with a negative Retry-After is throttled, not paused",
			// A ceiling makes the rate climb back from its floor in
			// steps of rate/20 per second, so the drain is quick.
			configure: func(c *trackdConfig) { c.Rate = 400 },
			bad:       setMode(upstreamtest.Mode{Answer: upstreamtest.Answer{Status: 429, RetryAfter: "-30"}}),
			exercised: received(10),
			during:    all(noDeliveries, logged("WARN", "Retry-After in the past or negative")),
			after:     resumedWithin(1500 * time.Millisecond),
		},
		{
			name:      "a 429 storm with Retry-After years ahead (seconds) is capped at retry.max",
			configure: func(c *trackdConfig) { c.RetryMax, c.Rate = time.Second, 400 },
			bad:       setMode(upstreamtest.Mode{Answer: upstreamtest.Answer{Status: 429, RetryAfter: upstreamtest.RetryAfterSeconds(years)}}),
			exercised: received(2),
			during:    all(noDeliveries, logged("INFO", "capped_to=1s")),
			after:     resumedWithin(2500 * time.Millisecond),
		},
		{
			name:      "a 429 storm with Retry-After years ahead (HTTP-date) is capped at retry.max",
			configure: func(c *trackdConfig) { c.RetryMax, c.Rate = time.Second, 400 },
			bad: func(up *upstream, f *front) {
				up.SetMode(upstreamtest.Mode{Answer: upstreamtest.Answer{Status: 429, RetryAfter: upstreamtest.RetryAfterDate(time.Now().Add(years))}})
			},
			exercised: received(2),
			during:    all(noDeliveries, logged("INFO", "capped_to=1s")),
			after:     resumedWithin(2500 * time.Millisecond),
		},
		{
			name:      "a 503 with an absurd Retry-After is capped at retry.max",
			configure: func(c *trackdConfig) { c.RetryMax, c.Rate = time.Second, 400 },
			bad:       setMode(upstreamtest.Mode{Answer: upstreamtest.Answer{Status: 503, RetryAfter: "99999999999"}}),
			exercised: received(2),
			during:    all(noDeliveries, logged("INFO", "capped_to=1s")),
			after:     resumedWithin(2500 * time.Millisecond),
		},
		{
			name:      "connections reset after the request are retried",
			bad:       setMode(upstreamtest.Mode{Answer: upstreamtest.Answer{Reset: true}}),
			exercised: received(6),
			during:    noDeliveries,
		},
		{
			name:      "connections reset in the middle of the request are retried",
			viaFront:  true,
			bad:       frontMode("reset-mid-request"),
			exercised: frontHits(6),
			during:    noDeliveries,
		},
		{
			name:      "connections closed without an answer are retried",
			bad:       setMode(upstreamtest.Mode{Answer: upstreamtest.Answer{Drop: true}}),
			exercised: received(6),
			during:    noDeliveries,
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			runUpstreamCase(t, tc)
		})
	}
}

func runUpstreamCase(t *testing.T, tc upstreamCase) {
	w := newWork(t)
	up := newUpstream(t)
	f := newFront(up)
	base := up.URL()
	if tc.viaFront {
		srv := httptest.NewUnstartedServer(f)
		srv.Config.ErrorLog = quietLog
		srv.Start()
		t.Cleanup(srv.Close)
		base = srv.URL
	}
	cfg := w.baseConfig(base)
	cfg.Concurrency = 4
	if tc.configure != nil {
		tc.configure(cfg)
	}
	l := newLedger("up")
	tc.bad(up, f)
	d := w.start(cfg)
	rss := sampleRSS(d.pid(), 50*time.Millisecond)
	for i, tg := range d.targets() {
		for k := 0; k < 20; k++ {
			if _, st, out := l.sendOne(context.Background(), tg.client, tg.base, (i+k)%2, 200, nil); out != acked {
				t.Fatalf("event refused: %v %d", out, st)
			}
		}
	}
	waitFor(t, "upstream's misbehaviour to be met", 15*time.Second, func() bool { return tc.exercised(up, f) },
		func() string {
			return fmt.Sprintf("upstream saw %d, front %d\n%s", up.Count(), f.hits.Load(), d.log.String())
		})
	if tc.during != nil {
		tc.during(t, d, up)
	}
	if st, _, err := d.get("/healthz"); err != nil || st != 200 {
		t.Errorf("healthz while upstream misbehaves: %d %v", st, err)
	}

	t0 := time.Now()
	up.SetMode(upstreamtest.Mode{})
	f.set("pass")
	if tc.good != nil {
		tc.good(up, f)
	}
	d.waitDrained(30 * time.Second)
	res := caseResult{drain: time.Since(t0), first: -1}
	for _, rq := range up.Received() {
		if rq.Status == 200 && !rq.At.Before(t0) {
			res.first = rq.At.Sub(t0)
			break
		}
	}
	peak := rss.finish()
	d.stopClean()
	res.audit = audit(t, l, up, cfg.SpoolPath, auditOpts{apiKey: cfg.APIKey})
	if tc.after != nil {
		tc.after(t, d, res)
	}
	if peak > 64<<10 {
		t.Errorf("peak RssAnon %d KiB, want under 64 MiB", peak)
	}
	first := "none needed"
	if res.first >= 0 {
		first = res.first.Round(time.Millisecond).String()
	}
	t.Logf("upstream behaved: first delivery after %s, drained after %s; peak RssAnon %d KiB",
		first, res.drain.Round(time.Millisecond), peak)
}

// TestUpstreamTLSErrors: upstream presents a certificate trackd does not
// trust (a self-signed test server). Nothing is sent in clear or to the
// wrong party, sending pauses with an error-level log, events are kept, and
// are delivered once trackd is pointed at a good upstream.
func TestUpstreamTLSErrors(t *testing.T) {
	w := newWork(t)
	up := newUpstream(t)
	f := newFront(up)
	var hits atomic.Int64
	tlsSrv := httptest.NewUnstartedServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		f.ServeHTTP(rw, r)
	}))
	tlsSrv.Config.ErrorLog = quietLog
	tlsSrv.StartTLS()
	defer tlsSrv.Close()

	cfg := w.baseConfig(tlsSrv.URL)
	l := newLedger("tls")
	d := w.start(cfg)
	ld := startLoad(l, d.targets(), loadOpts{workers: 2, rate: 200, identifyEvery: 3, pad: 100})
	waitFor(t, "the certificate error to be logged", 10*time.Second, func() bool {
		return len(d.log.lines("level=ERROR", "certificate")) > 0
	}, d.log.String)
	time.Sleep(500 * time.Millisecond)
	ld.stop()
	if n := hits.Load(); n != 0 {
		t.Errorf("%d requests reached the untrusted server's handler", n)
	}
	if n := up.Count(); n != 0 {
		t.Errorf("%d requests reached upstream through the untrusted server", n)
	}
	t.Logf("logged: %s", d.log.lines("level=ERROR", "certificate")[0])
	d.stopClean()
	// Everything acknowledged is kept while upstream cannot be trusted.
	audit(t, l, up, cfg.SpoolPath, auditOpts{apiKey: cfg.APIKey, allowQueued: true})

	// Pointed at a good upstream, trackd delivers it all.
	cfg.UpstreamURL = up.URL()
	d = w.start(cfg)
	d.waitDrained(30 * time.Second)
	d.stopClean()
	r := audit(t, l, up, cfg.SpoolPath, auditOpts{apiKey: cfg.APIKey})
	report(t, "self-signed upstream: 0 requests completed, %d events kept, then all delivered to a trusted upstream", r.acked)
}

// TestRateAdaptsWithoutACeiling: with upstream.rate 0 (no ceiling) and an
// upstream that enforces a rate limit, trackd's AIMD must settle near that
// limit, as it does under a ceiling: its sawtooth averages about 3/4 of the
// limit, and never sits below half of it for long.
func TestRateAdaptsWithoutACeiling(t *testing.T) {
	w := newWork(t)
	up := newUpstream(t)
	const limit = 200.0
	up.SetMode(upstreamtest.Mode{RateLimit: limit, RateBurst: 20})
	cfg := w.baseConfig(up.URL())
	cfg.Rate, cfg.RateSet = 0, true
	l := newLedger("norate")
	d := w.start(cfg)
	ld := startLoad(l, d.targets(), loadOpts{workers: 4, rate: 2 * limit, pad: 100})
	start := time.Now()
	time.Sleep(8 * time.Second)
	ld.stop()
	var ok int
	from, to := start.Add(4*time.Second), start.Add(8*time.Second)
	for _, r := range up.Received() {
		if r.Status == 200 && r.At.After(from) && r.At.Before(to) {
			ok++
		}
	}
	got := float64(ok) / to.Sub(from).Seconds()
	lines := d.log.lines("lowering the send rate")
	first := ""
	if len(lines) > 0 {
		first = lines[0][strings.Index(lines[0], "msg="):]
	}
	report(t, "no ceiling, upstream limit %.0f/s, offered %.0f/s: delivered %.0f/s from 4s to 8s; %d decreases, the first: %s",
		limit, 2*limit, got, len(lines), first)
	if got < limit/2 {
		// Draining at that rate would take long; the audit is not the
		// point here.
		d.kill()
		t.Fatalf("trackd forwarded %.0f/s to an upstream that accepts %.0f/s: adaptation without a ceiling settles far below the limit", got, limit)
	}
	up.SetMode(upstreamtest.Mode{})
	d.waitDrained(2 * time.Minute)
	d.stopClean()
	audit(t, l, up, cfg.SpoolPath, auditOpts{apiKey: cfg.APIKey})
}
