package forwarder

import (
	"math"
	"math/rand/v2"
	"time"

	"golang.org/x/time/rate"
)

// minRate is the floor of adaptation: a 429 never takes the rate below one
// request per second (or below the configured ceiling, if that is lower).
const minRate = 1.0

// decreaseEvery is the least time between two decreases of the rate.
const decreaseEvery = 100 * time.Millisecond

// stepDivisor sets the additive increase: a twentieth of the configured
// ceiling per second each second (or, with no ceiling, of the send rate
// observed at the first 429). It is fixed for the forwarder's life and the
// same for every instance with the same configuration, which is what makes
// AIMD converge to a fair share across a fleet: an increase that grew with
// each instance's own rate would keep their rates in whatever ratio they
// happened to start in.
const stepDivisor = 20.0

// rateControl is the forwarder's send rate: a token bucket under the
// configured ceiling, adapted AIMD-style to what upstream allows. It is owned
// by the dispatcher goroutine.
//
// A 429 halves the current rate, at most once per decreaseEvery and once
// per round trip: a 429 for a request that left before the last decrease
// says nothing about the new rate, and upstream's own bucket needs a moment
// to show the effect of a decrease (without the spacing, a fleet that starts
// together halves itself many times over on one empty bucket). While the
// limiter is what holds requests back, each success raises the rate by
// step/current, which is step requests per second each second (see
// stepDivisor); successes while the forwarder has less to send than it may
// raise nothing. With no ceiling the forwarder sends without limit until the
// first 429, then halves the send rate it observed over the last second and
// adapts from there, with no ceiling above.
type rateControl struct {
	ceiling float64 // configured Rate; 0 = none
	burst   int     // configured Burst
	cur     float64 // current limit; 0 = none (no ceiling and no 429 yet)
	floor   float64
	step    float64
	lim     *rate.Limiter // nil while cur == 0

	lastDecrease time.Time // when cur was last halved
	boundAt      time.Time // when the limiter last held a request back

	// sends is a ring of recent send times, to measure the observed rate
	// when adaptation starts without a ceiling.
	sends [256]time.Time
	next  int
}

func newRateControl(ceiling float64, burst int) *rateControl {
	c := &rateControl{ceiling: ceiling, burst: burst, cur: ceiling, floor: minRate}
	if ceiling > 0 {
		c.floor = min(minRate, ceiling)
		c.step = max(minRate, ceiling/stepDivisor)
		c.lim = rate.NewLimiter(rate.Limit(ceiling), c.burstFor(ceiling))
	}
	return c
}

// burstFor is the limiter's burst at rate r: the configured burst, but never
// more than one second's worth of the adapted rate, so that the end of a
// pause does not release a volley upstream has just said it cannot take.
func (c *rateControl) burstFor(r float64) int {
	return max(1, min(c.burst, int(r)))
}

// limit is the current rate limit in requests per second; 0 means none.
func (c *rateControl) limit() float64 { return c.cur }

// reserve takes a token if one is available at now and returns 0; otherwise
// it takes nothing and returns how long until one will be.
func (c *rateControl) reserve(now time.Time) time.Duration {
	if c.lim == nil {
		return 0
	}
	tokens := c.lim.TokensAt(now)
	if tokens >= 1 && c.lim.AllowN(now, 1) {
		return 0
	}
	c.boundAt = now
	wait := time.Duration(math.Ceil((1 - tokens) / c.cur * float64(time.Second)))
	return max(wait, 50*time.Microsecond)
}

// sent records a send at now.
func (c *rateControl) sent(now time.Time) {
	c.sends[c.next] = now
	c.next = (c.next + 1) % len(c.sends)
}

// observed is the send rate over the last second (or over the last
// len(sends) sends, if they were more frequent).
func (c *rateControl) observed(now time.Time) float64 {
	var n int
	oldest := now
	for _, t := range c.sends {
		if t.IsZero() || now.Sub(t) > time.Second {
			continue
		}
		n++
		if t.Before(oldest) {
			oldest = t
		}
	}
	// The sends counted may cover less than a second: the whole ring was
	// filled faster, or sending began a moment ago (the first 429 often
	// comes ~100 ms in). Divide by the time they actually cover, at least
	// 100 ms, or the rate would be underestimated by that much.
	span := max(now.Sub(oldest), 100*time.Millisecond)
	if n == 0 || span >= time.Second {
		return float64(n)
	}
	return float64(n) / span.Seconds()
}

// throttled applies a 429 for a request sent at sentAt and answered at now.
// It reports whether the rate changed, and from what.
func (c *rateControl) throttled(sentAt, now time.Time) (changed bool, from float64) {
	if !sentAt.After(c.lastDecrease) || now.Sub(c.lastDecrease) < decreaseEvery {
		return false, c.cur
	}
	from = c.cur
	base := c.cur
	if base == 0 {
		base = max(c.observed(now), c.floor)
	}
	if base <= c.floor && c.cur != 0 {
		c.lastDecrease = now
		return false, from
	}
	c.cur = max(c.floor, base/2)
	if c.step == 0 {
		c.step = max(minRate, base/stepDivisor)
	}
	c.lastDecrease = now
	c.apply(now)
	return true, from
}

// succeeded applies a success at now. It reports whether the rate reached the
// ceiling again.
func (c *rateControl) succeeded(now time.Time) (restored bool) {
	if c.cur == 0 || (c.ceiling > 0 && c.cur >= c.ceiling) {
		return false
	}
	if now.Sub(c.boundAt) > time.Second {
		// Not rate-bound: sending faster would not have been used, so
		// success at this rate says nothing about a higher one.
		return false
	}
	c.cur += c.step / c.cur
	if c.ceiling > 0 && c.cur >= c.ceiling {
		c.cur = c.ceiling
		restored = true
	}
	c.apply(now)
	return restored
}

func (c *rateControl) apply(now time.Time) {
	if c.lim == nil {
		c.lim = rate.NewLimiter(rate.Limit(c.cur), c.burstFor(c.cur))
		// Start empty: a 429 just said upstream has no room.
		c.lim.AllowN(now, c.burstFor(c.cur))
		return
	}
	c.lim.SetLimitAt(now, rate.Limit(c.cur))
	c.lim.SetBurstAt(now, c.burstFor(c.cur))
}

// backoff is the n-th (from 1) exponential backoff step: initial doubled
// n-1 times, capped at most.
func backoff(initial, most time.Duration, n int) time.Duration {
	d := initial
	for i := 1; i < n && d < most; i++ {
		d *= 2
	}
	return min(d, most)
}

// jitter is "full jitter": a uniformly random wait in [0, d].
func jitter(d time.Duration) time.Duration {
	if d <= 0 {
		return 0
	}
	return rand.N(d + 1)
}
