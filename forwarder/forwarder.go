package forwarder

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/trackd/trackd/spool"
)

// Store is the part of the spool the forwarder uses. *spool.Spool satisfies
// it; tests wrap it to inject faults. If the Store also has a
// Stats() spool.Stats method, its Queued count is logged as spool_depth.
type Store interface {
	// Read returns up to n queued records with ID > after, oldest first.
	Read(after uint64, n int) ([]spool.Record, error)
	// Delete removes delivered records.
	Delete(ctx context.Context, ids ...uint64) error
	// DeadLetter moves a record upstream refused for good to the dead
	// letters.
	DeadLetter(ctx context.Context, id uint64, status int, reason string) error
	// AddAttempt counts a failed attempt on records that stay queued.
	AddAttempt(ctx context.Context, ids ...uint64) error
	// SetState and State keep the pause across restarts.
	SetState(ctx context.Context, key string, value []byte) error
	State(key string) ([]byte, error)
	// Notify is signalled after commits that added queued records.
	Notify() <-chan struct{}
}

// Paths appended to Options.URL for each kind of record.
const (
	TrackPath    = "/api/v1/track"
	IdentifyPath = "/api/v1/identify"
)

// StateKeyPausedUntil is the Store state key under which the pause an
// upstream Retry-After asked for is kept, as an RFC 3339 time.
const StateKeyPausedUntil = "forwarder.paused_until"

// Defaults for zero Options fields.
const (
	DefaultTimeout      = 10 * time.Second
	DefaultConcurrency  = 4
	DefaultRetryInitial = time.Second
	DefaultRetryMax     = 5 * time.Minute
	DefaultUserAgent    = "trackd"
)

// Options configure a Forwarder. Zero values take the defaults above.
type Options struct {
	// URL is upstream's base URL, e.g. "https://api.browsee.io"; records go
	// to URL+TrackPath or URL+IdentifyPath. http is accepted for loopback
	// and tests; https always verifies certificates.
	URL string
	// Timeout bounds one request, from sending to reading the answer.
	Timeout time.Duration
	// Rate is the most requests per second ever sent; 0 means no ceiling.
	// The forwarder adapts below it when upstream answers 429.
	Rate float64
	// Burst is how many requests may leave at once above Rate (at least 1;
	// default Rate rounded up).
	Burst int
	// Concurrency is the most requests in flight at once.
	Concurrency int
	// RetryInitial and RetryMax bound the exponential backoff between
	// attempts; RetryMax also caps a Retry-After.
	RetryInitial, RetryMax time.Duration
	// MaxAge, when positive, is how old (since Received) a record may be
	// and still be sent; older ones are left to the spool to drop.
	MaxAge time.Duration
	// UserAgent is sent with every request, e.g. "trackd/1.2.3".
	UserAgent string
	// Logger receives state changes; nil discards them.
	Logger *slog.Logger
	// Client, when set, is used instead of the forwarder's own (tests).
	// Its redirect policy is overridden: redirects are never followed.
	Client *http.Client
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Stats is a snapshot of what the forwarder has done since Start.
type Stats struct {
	// Sent counts requests that left for upstream.
	Sent uint64
	// Delivered counts records upstream accepted (and that were deleted).
	Delivered uint64
	// DeadLettered counts records upstream refused for good.
	DeadLettered uint64
	// Retried counts sends that failed in a retryable way (429, 408, 5xx,
	// network errors); the record is tried again.
	Retried uint64
	// Throttled counts 429 answers.
	Throttled uint64
	// Unauthorized counts 401, 403, 407, 3xx and certificate failures,
	// each of which paused all sending.
	Unauthorized uint64
	// Expired counts records found older than MaxAge at send time; the
	// spool drops them.
	Expired uint64
	// RateLimit is the requests per second the forwarder allows itself now,
	// after adaptation; 0 means no limit.
	RateLimit float64
	// PausedUntil is when sending resumes after a Retry-After or a 401/403
	// backoff; zero or past when not paused.
	PausedUntil time.Time
	// Down is true while upstream is unreachable and the forwarder sends
	// one probe at a time.
	Down bool
	// InFlight is how many requests are on the wire.
	InFlight int
	// Pending is how many records the forwarder holds in memory (waiting,
	// in flight or being committed); it is bounded, whatever the spool
	// holds.
	Pending int
	// LastErrorClass names the last failure: "timeout", "refused",
	// "reset", "dns", "tls", "network", "status_5xx", "status_408",
	// "throttled", "unauthorized", "redirect", ...; "" before any.
	LastErrorClass string
	// LastErrorAt is when LastErrorClass was set.
	LastErrorAt time.Time
}

// Errors returned by New.
var (
	// ErrBadOptions wraps every problem New found in its Options.
	ErrBadOptions = errors.New("forwarder: bad options")
)

// Forwarder drains a Store upstream. Create it with New, run it with Start,
// stop it with Shutdown.
type Forwarder struct {
	store  Store
	opts   Options
	log    *slog.Logger
	now    func() time.Time
	client *http.Client
	urls   [3]string // by spool.Kind

	window int // most records held in memory

	// Shared with workers.
	pausedUntil atomic.Int64 // unix nanoseconds; sending waits until then
	inFlight    atomic.Int64
	counters    struct {
		sent, delivered, dead, retried, throttled, unauthorized, expired atomic.Uint64
	}

	// Snapshot of dispatcher state for Stats.
	mu   sync.Mutex
	snap struct {
		rateLimit      float64
		down           bool
		pending        int
		lastErrorClass string
		lastErrorAt    time.Time
	}

	startOnce sync.Once
	started   atomic.Bool
	cancel    context.CancelFunc
	drain     chan struct{} // closed by Shutdown
	drainOnce sync.Once
	done      chan struct{} // closed when every goroutine has returned
}

// New checks opts and returns a Forwarder that reads from store. It starts
// nothing; see Start.
func New(store Store, opts Options) (*Forwarder, error) {
	var problems []error
	bad := func(format string, args ...any) { problems = append(problems, fmt.Errorf(format, args...)) }
	if store == nil {
		bad("no store given")
	}
	base := strings.TrimRight(opts.URL, "/")
	if u, err := url.Parse(base); err != nil || base == "" {
		bad("URL %q is not a URL", opts.URL)
	} else if u.Scheme != "https" && u.Scheme != "http" {
		bad("URL %q must be http or https", opts.URL)
	} else if u.Host == "" {
		bad("URL %q has no host", opts.URL)
	} else if u.RawQuery != "" || u.Fragment != "" {
		bad("URL %q must not have a query or fragment", opts.URL)
	}
	if opts.Timeout < 0 {
		bad("Timeout must not be negative")
	}
	if opts.Timeout == 0 {
		opts.Timeout = DefaultTimeout
	}
	if opts.Rate < 0 || math.IsNaN(opts.Rate) || math.IsInf(opts.Rate, 0) {
		bad("Rate must be a non-negative number (0 means no ceiling)")
	}
	if opts.Burst < 0 {
		bad("Burst must not be negative")
	}
	if opts.Burst == 0 {
		opts.Burst = max(1, int(math.Ceil(opts.Rate)))
	}
	if opts.Concurrency < 0 {
		bad("Concurrency must not be negative")
	}
	if opts.Concurrency == 0 {
		opts.Concurrency = DefaultConcurrency
	}
	if opts.RetryInitial < 0 || opts.RetryMax < 0 {
		bad("RetryInitial and RetryMax must not be negative")
	}
	if opts.RetryInitial == 0 {
		opts.RetryInitial = DefaultRetryInitial
	}
	if opts.RetryMax == 0 {
		opts.RetryMax = max(DefaultRetryMax, opts.RetryInitial)
	}
	if opts.RetryMax < opts.RetryInitial {
		bad("RetryMax (%v) must not be less than RetryInitial (%v)", opts.RetryMax, opts.RetryInitial)
	}
	if opts.MaxAge < 0 {
		bad("MaxAge must not be negative")
	}
	if len(problems) > 0 {
		return nil, fmt.Errorf("%w: %w", ErrBadOptions, errors.Join(problems...))
	}
	if opts.UserAgent == "" {
		opts.UserAgent = DefaultUserAgent
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	f := &Forwarder{
		store:  store,
		opts:   opts,
		log:    opts.Logger,
		now:    opts.Now,
		window: windowSize(opts.Concurrency),
		drain:  make(chan struct{}),
		done:   make(chan struct{}),
	}
	f.urls[spool.KindTrack] = base + TrackPath
	f.urls[spool.KindIdentify] = base + IdentifyPath
	if opts.Client != nil {
		c := *opts.Client
		c.CheckRedirect = noRedirects
		f.client = &c
	} else {
		f.client = newClient(opts.Concurrency)
	}
	f.snap.rateLimit = opts.Rate
	return f, nil
}

// windowSize is how many records the dispatcher holds at most: enough to
// keep every worker busy while deletes are being committed, never the whole
// spool.
func windowSize(concurrency int) int {
	return min(max(256, 16*concurrency), 4096)
}

func noRedirects(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }

// newClient returns a client with a keep-alive pool sized for concurrency
// requests, the environment's proxy, and certificate verification on.
func newClient(concurrency int) *http.Client {
	tr := &http.Transport{
		Proxy: http.ProxyFromEnvironment,
		DialContext: (&net.Dialer{
			Timeout:   30 * time.Second,
			KeepAlive: 30 * time.Second,
		}).DialContext,
		TLSClientConfig:       &tls.Config{MinVersion: tls.VersionTLS12},
		ForceAttemptHTTP2:     true,
		MaxIdleConns:          concurrency,
		MaxIdleConnsPerHost:   concurrency,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   10 * time.Second,
		ExpectContinueTimeout: time.Second,
	}
	return &http.Client{Transport: tr, CheckRedirect: noRedirects}
}

// Start starts the forwarder's goroutines. They run until Shutdown, or until
// ctx ends (a hard stop: requests in flight are abandoned and their records
// stay queued). Start may be called once; later calls do nothing.
func (f *Forwarder) Start(ctx context.Context) {
	f.startOnce.Do(func() {
		ctx, f.cancel = context.WithCancel(ctx)
		f.started.Store(true)
		d := newDispatcher(f)
		go func() {
			defer close(f.done)
			defer f.cancel()
			d.run(ctx)
			f.client.CloseIdleConnections()
		}()
	})
}

// Shutdown stops the forwarder gracefully: it keeps sending while upstream
// accepts, until every queued record is delivered (or dead-lettered) or ctx
// ends, then stops every goroutine and returns. Records not delivered stay
// in the store. It returns ctx's error if ctx ended first. Shutdown on a
// forwarder that was never started returns nil.
func (f *Forwarder) Shutdown(ctx context.Context) error {
	if !f.started.Load() {
		// Make a later Start a no-op, so that nothing runs after Shutdown.
		f.startOnce.Do(func() { close(f.done) })
		if !f.started.Load() {
			return nil
		}
	}
	f.drainOnce.Do(func() { close(f.drain) })
	select {
	case <-f.done:
		return nil
	case <-ctx.Done():
		f.cancel()
		<-f.done
		return ctx.Err()
	}
}

// Stats returns a snapshot of the forwarder's counters and state. It is safe
// to call at any time, from any goroutine.
func (f *Forwarder) Stats() Stats {
	s := Stats{
		Sent:         f.counters.sent.Load(),
		Delivered:    f.counters.delivered.Load(),
		DeadLettered: f.counters.dead.Load(),
		Retried:      f.counters.retried.Load(),
		Throttled:    f.counters.throttled.Load(),
		Unauthorized: f.counters.unauthorized.Load(),
		Expired:      f.counters.expired.Load(),
		InFlight:     int(f.inFlight.Load()),
	}
	if p := f.pausedUntil.Load(); p != 0 {
		s.PausedUntil = time.Unix(0, p)
	}
	f.mu.Lock()
	s.RateLimit = f.snap.rateLimit
	s.Down = f.snap.down
	s.Pending = f.snap.pending
	s.LastErrorClass = f.snap.lastErrorClass
	s.LastErrorAt = f.snap.lastErrorAt
	f.mu.Unlock()
	return s
}

// paused reports whether sending must wait at t, and until when.
func (f *Forwarder) paused(t time.Time) (time.Time, bool) {
	p := f.pausedUntil.Load()
	if p == 0 || t.UnixNano() >= p {
		return time.Time{}, false
	}
	return time.Unix(0, p), true
}

// raisePause moves the pause to until if that is later than the current one,
// and reports whether it did.
func (f *Forwarder) raisePause(until time.Time) bool {
	n := until.UnixNano()
	for {
		p := f.pausedUntil.Load()
		if p >= n {
			return false
		}
		if f.pausedUntil.CompareAndSwap(p, n) {
			return true
		}
	}
}

// spoolDepth is the store's queued count, or -1 if it cannot tell.
func (f *Forwarder) spoolDepth() int64 {
	if s, ok := f.store.(interface{ Stats() spool.Stats }); ok {
		return s.Stats().Queued
	}
	return -1
}
