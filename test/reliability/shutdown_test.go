//go:build reliability

package reliability

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/trackd/trackd/forwarder/upstreamtest"
)

// TestShutdownUnderLoad: SIGTERM while clients post over TCP and the Unix
// socket and the forwarder is sending (to a slow upstream, or one that
// never answers). trackd exits 0 within shutdown.timeout; every request
// either got a 200 and its event is kept or delivered, or got an error and
// its event is not stored.
func TestShutdownUnderLoad(t *testing.T) {
	w := newWork(t)
	up := newUpstream(t)
	cfg := w.baseConfig(up.URL())
	cfg.ShutdownTimeout = 3 * time.Second
	cfg.Concurrency = 4
	cfg.Timeout = 10 * time.Second // longer than the shutdown: in-flight sends must be cut off
	l := newLedger("shutdown")
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 5))

	var tookAll []string
	unknownBefore := 0
	for round := 0; round < prof.shutdownRounds; round++ {
		mode := "slow"
		if round%2 == 1 {
			mode = "hung"
			up.SetMode(upstreamtest.Mode{Answer: upstreamtest.Answer{Hang: true}})
		} else {
			up.SetMode(upstreamtest.Mode{Answer: upstreamtest.Answer{Delay: 100 * time.Millisecond}})
		}
		d := w.start(cfg)
		ld := startLoad(l, d.targets(), loadOpts{workers: 4, identifyEvery: 3, pad: 200})
		time.Sleep(time.Duration(500+rng.IntN(1000)) * time.Millisecond)
		inflight, _ := d.metric("trackd_forwarder_in_flight")
		took, code := d.stop(cfg.ShutdownTimeout + 2*time.Second)
		ld.stop()
		if code != 0 {
			t.Errorf("round %d (%s upstream): exit code %d after SIGTERM, want 0\n%s", round, mode, code, tail(d.log.String(), 2000))
		}
		if took > cfg.ShutdownTimeout+500*time.Millisecond {
			t.Errorf("round %d (%s upstream): exit took %s, more than shutdown.timeout %s", round, mode, took, cfg.ShutdownTimeout)
		}
		if !strings.Contains(d.log.String(), "shutting down") {
			t.Errorf("round %d: no log line about shutting down", round)
		}
		unknown := l.counts()[unknown] - unknownBefore
		unknownBefore += unknown
		tookAll = append(tookAll, fmt.Sprintf("%s (%s upstream, %.0f sends in flight, %d requests cut off)",
			took.Round(time.Millisecond), mode, inflight, unknown))
	}

	up.SetMode(upstreamtest.Mode{})
	d := w.start(cfg)
	d.waitDrained(60 * time.Second)
	d.stopClean()
	r := audit(t, l, up, cfg.SpoolPath, auditOpts{apiKey: cfg.APIKey})
	report(t, "%d SIGTERMs under load (shutdown.timeout %s): exits after %s; %d acknowledged, all delivered; "+
		"refused: %v; %d requests cut off without an answer",
		prof.shutdownRounds, cfg.ShutdownTimeout, strings.Join(tookAll, ", "), r.acked, l.refusedStatuses(), r.unknown)
}
