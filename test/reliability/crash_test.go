//go:build reliability

package reliability

import (
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/trackd/trackd/forwarder/upstreamtest"
)

// flapper moves upstream between up, down, slow and 429 at random moments
// until stopped.
type flapper struct {
	stop chan struct{}
	done chan struct{}
	mu   sync.Mutex
	seen map[string]int
}

func startFlapper(t testing.TB, up *upstream, seed uint64) *flapper {
	f := &flapper{stop: make(chan struct{}), done: make(chan struct{}), seen: map[string]int{}}
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	go func() {
		defer close(f.done)
		for {
			var state string
			switch rng.IntN(4) {
			case 0:
				state = "up"
				if err := up.Up(); err != nil {
					t.Errorf("upstream up: %v", err)
				}
				up.SetMode(upstreamtest.Mode{})
			case 1:
				state = "down"
				up.Down()
			case 2:
				state = "slow"
				if err := up.Up(); err != nil {
					t.Errorf("upstream up: %v", err)
				}
				up.SetMode(upstreamtest.Mode{Answer: upstreamtest.Answer{Delay: time.Duration(100+rng.IntN(900)) * time.Millisecond}})
			case 3:
				state = "429"
				if err := up.Up(); err != nil {
					t.Errorf("upstream up: %v", err)
				}
				ra := ""
				if rng.IntN(2) == 0 {
					ra = "1"
				}
				up.SetMode(upstreamtest.Mode{Answer: upstreamtest.Answer{Status: 429, RetryAfter: ra}})
			}
			f.mu.Lock()
			f.seen[state]++
			f.mu.Unlock()
			select {
			case <-f.stop:
				return
			case <-time.After(time.Duration(150+rng.IntN(450)) * time.Millisecond):
			}
		}
	}()
	return f
}

// finish stops flapping and leaves upstream up and well-behaved.
func (f *flapper) finish(t testing.TB, up *upstream) map[string]int {
	close(f.stop)
	<-f.done
	if err := up.Up(); err != nil {
		t.Fatalf("upstream up: %v", err)
	}
	up.SetMode(upstreamtest.Mode{})
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.seen
}

// TestCrashLoopLosesNothing: steady load over TCP and the Unix socket while
// trackd is SIGKILLed at random moments and upstream flaps between up,
// down, slow and 429. After the last restart every acknowledged event
// reaches upstream.
func TestCrashLoopLosesNothing(t *testing.T) {
	w := newWork(t)
	up := newUpstream(t)
	cfg := w.baseConfig(up.URL())
	cfg.Timeout = time.Second
	l := newLedger("crash")

	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 1))
	trackdBinary(t) // build before timing starts
	fl := startFlapper(t, up, rng.Uint64())
	var ld *load
	var starts []time.Duration
	perRun := make([]int64, 0, prof.crashKills)
	for i := 0; i < prof.crashKills; i++ {
		t0 := time.Now()
		d := w.start(cfg)
		starts = append(starts, time.Since(t0))
		if lines := d.log.lines("unreadable"); len(lines) > 0 {
			t.Fatalf("run %d: the spool was quarantined after a SIGKILL: %s", i, lines[0])
		}
		if ld == nil {
			ld = startLoad(l, d.targets(), loadOpts{workers: 4, identifyEvery: 5, pad: 100})
		}
		before := ld.ok.Load()
		run := prof.crashRunMin + time.Duration(rng.Int64N(int64(prof.crashRunMax-prof.crashRunMin)))
		time.Sleep(run)
		d.kill()
		perRun = append(perRun, ld.ok.Load()-before)
	}
	seen := fl.finish(t, up)

	// A last start on the same spool, with upstream behaving: everything
	// acknowledged must come out.
	t0 := time.Now()
	d := w.start(cfg)
	starts = append(starts, time.Since(t0))
	time.Sleep(200 * time.Millisecond)
	ld.stop()
	d.waitDrained(60 * time.Second)
	d.stopClean()

	r := audit(t, l, up, cfg.SpoolPath, auditOpts{apiKey: cfg.APIKey})
	slices.Sort(starts)
	zero := 0
	for _, n := range perRun {
		if n == 0 {
			zero++
		}
	}
	report(t, "%d SIGKILLs (upstream states: %v); %d events acknowledged, %d delivered, %d duplicates; "+
		"start to ready after a crash: median %s, max %s; runs with no acknowledged event: %d",
		prof.crashKills, seen, r.acked, r.delivered, r.duplicates,
		starts[len(starts)/2].Round(time.Millisecond), starts[len(starts)-1].Round(time.Millisecond), zero)
	if r.acked < prof.crashKills*10 {
		t.Errorf("only %d events acknowledged over %d runs: the load did not get through", r.acked, prof.crashKills)
	}
	if r.unknown == 0 {
		t.Logf("no request was cut off by a kill; the kills may not have hit mid-request")
	}
}
