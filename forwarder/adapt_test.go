package forwarder

import (
	"testing"
	"time"

	"github.com/trackd/trackd/forwarder/upstreamtest"
)

// countBetween counts requests that arrived in [from, to), by status.
func countBetween(rs []upstreamtest.Request, from, to time.Time) (ok, throttled int) {
	for _, r := range rs {
		if r.At.Before(from) || !r.At.Before(to) {
			continue
		}
		switch r.Status {
		case 200:
			ok++
		case 429:
			throttled++
		}
	}
	return ok, throttled
}

func TestAdaptsToUpstreamRateLimit(t *testing.T) {
	for _, tc := range []struct {
		name string
		rate float64
	}{
		{"under a ceiling of 500/s", 500},
		{"with no ceiling", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			sp := mustOpenSpool(t)
			up := newUpstream(t)
			const limit = 50
			up.SetMode(upstreamtest.Mode{RateLimit: limit})
			spoolEvents(t, sp, 0, 2000)
			opts := testOptions(up)
			opts.Rate, opts.Burst, opts.Concurrency = tc.rate, 50, 8
			start := time.Now()
			f := startForwarder(t, sp, opts)

			const settle, measure = 1500 * time.Millisecond, 3 * time.Second
			time.Sleep(settle + measure) // a measurement over time, not a wait for a condition
			got := up.Received()
			ok, throttled := countBetween(got, start.Add(settle), start.Add(settle+measure))
			rate := float64(ok) / measure.Seconds()
			allOK, allThrottled := countBetween(got, start, time.Now())
			t.Logf("settled at %.1f/s (upstream allows %d/s): %d accepted and %d throttled in the window; %d and %d since start; limit now %.1f",
				rate, limit, ok, throttled, allOK, allThrottled, f.Stats().RateLimit)
			if rate < 0.6*limit || rate > 1.1*limit {
				t.Fatalf("delivered %.1f/s; upstream allows %d/s", rate, limit)
			}
			// Finding the limit costs a few dozen 429s at the start;
			// once settled, few.
			if frac := float64(throttled) / float64(ok+throttled); frac > 0.1 {
				t.Fatalf("%.0f%% of requests were throttled once settled", 100*frac)
			}
			if frac := float64(allThrottled) / float64(allOK+allThrottled); frac > 0.3 {
				t.Fatalf("%.0f%% of requests were throttled", 100*frac)
			}
			if l := f.Stats().RateLimit; l >= 500 || l < 1 {
				t.Fatalf("rate limit %v did not adapt", l)
			}
		})
	}
}

func TestForwardersSharingALimitAllProgress(t *testing.T) {
	up := newUpstream(t)
	const limit = 60
	up.SetMode(upstreamtest.Mode{RateLimit: limit})
	start := time.Now()
	var fs []*Forwarder
	for i := range 3 {
		sp := mustOpenSpool(t)
		spoolEvents(t, sp, i*10000, i*10000+1000)
		opts := testOptions(up)
		opts.Rate, opts.Burst, opts.Concurrency = 500, 50, 4
		fs = append(fs, startForwarder(t, sp, opts))
	}
	const settle, measure = time.Second, 3 * time.Second
	time.Sleep(settle + measure) // a measurement over time, not a wait for a condition

	from, to := start.Add(settle), start.Add(settle+measure)
	perForwarder := make([]int, 3)
	var total, throttled int
	for _, r := range up.Received() {
		if r.At.Before(from) || !r.At.Before(to) {
			continue
		}
		switch r.Status {
		case 200:
			perForwarder[seqOf(t, r.Body)/10000]++
			total++
		case 429:
			throttled++
		}
	}
	t.Logf("per forwarder %v in %v (upstream allows %d/s); %d throttled; limits %.1f %.1f %.1f",
		perForwarder, measure, limit, throttled, fs[0].Stats().RateLimit, fs[1].Stats().RateLimit, fs[2].Stats().RateLimit)
	for i, n := range perForwarder {
		if rate := float64(n) / measure.Seconds(); rate < limit/3/4 {
			t.Fatalf("forwarder %d starved: %.1f/s", i, rate)
		}
	}
	if rate := float64(total) / measure.Seconds(); rate < 0.5*limit {
		t.Fatalf("together only %.1f/s of the %d/s upstream allows", rate, limit)
	}
	if frac := float64(throttled) / float64(total+throttled); frac > 0.25 {
		t.Fatalf("%.0f%% of requests were throttled", 100*frac)
	}
}
