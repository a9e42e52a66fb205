//go:build reliability

package reliability

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// outcome is what a client learnt from trackd about one event.
type outcome uint8

const (
	// acked: trackd answered 200; it promised to keep the event.
	acked outcome = iota + 1
	// refused: trackd answered another status; it promised nothing and
	// must not have stored the event.
	refused
	// notSent: the connection could not be made, so trackd never saw the
	// event.
	notSent
	// unknown: the connection broke after the request went out (trackd
	// was killed, or the client gave up); the event may or may not be
	// stored, and either is correct.
	unknown
)

func (o outcome) String() string {
	return [...]string{"in flight", "acked", "refused", "not sent", "unknown"}[o]
}

type ledgerEntry struct {
	out    outcome
	status int16
	kind   uint8 // 0 track, 1 identify
	pad    int32
}

// ledger remembers every event a test sent and what trackd answered.
type ledger struct {
	prefix string
	seq    atomic.Int64

	mu sync.Mutex
	m  map[string]ledgerEntry
	// order lists acknowledged ids in the order their 200s arrived, when
	// keepOrder is set (sequential senders only).
	keepOrder bool
	order     []string
}

func newLedger(prefix string) *ledger {
	return &ledger{prefix: prefix, m: make(map[string]ledgerEntry)}
}

func (l *ledger) newID() string { return fmt.Sprintf("%s-%d", l.prefix, l.seq.Add(1)) }

// padFor is the filler of an event: a function of its id, so that any
// damage to a delivered body is seen without keeping the bodies.
func padFor(id string, n int) string {
	sum := sha256.Sum256([]byte(id))
	h := hex.EncodeToString(sum[:8])
	return strings.Repeat(h, n/len(h)+1)[:n]
}

// eventBody is a track (kind 0) or identify (kind 1) call tagged with id.
func eventBody(id string, kind, pad int) []byte {
	if kind == 1 {
		return fmt.Appendf(nil, `{"userId":"u-%s","id":%q,"traits":{"name":"Ada","pad":%q}}`, id, id, padFor(id, pad))
	}
	return fmt.Appendf(nil, `{"event":"RELIABILITY","userId":"u-%s","id":%q,"properties":{"price":100,"pad":%q}}`, id, id, padFor(id, pad))
}

func kindPath(kind int) string {
	if kind == 1 {
		return "/api/v1/identify"
	}
	return "/api/v1/track"
}

// classifyErr turns a client error into an outcome: a failed dial sent
// nothing; anything else may have reached trackd.
func classifyErr(err error) outcome {
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "dial" {
		return notSent
	}
	return unknown
}

// begin registers an event before it is sent, so that upstream can check
// its body even if it arrives before the client has read trackd's answer.
func (l *ledger) begin(id string, kind, pad int) {
	l.mu.Lock()
	l.m[id] = ledgerEntry{kind: uint8(kind), pad: int32(pad)}
	l.mu.Unlock()
}

func (l *ledger) record(id string, kind, pad, status int, err error) outcome {
	e := ledgerEntry{kind: uint8(kind), pad: int32(pad), status: int16(status)}
	switch {
	case err != nil:
		e.out = classifyErr(err)
	case status == http.StatusOK:
		e.out = acked
	default:
		e.out = refused
	}
	l.mu.Lock()
	l.m[id] = e
	if l.keepOrder && e.out == acked {
		l.order = append(l.order, id)
	}
	l.mu.Unlock()
	return e.out
}

func (l *ledger) get(id string) (ledgerEntry, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	e, ok := l.m[id]
	return e, ok
}

// counts returns how many events had each outcome.
func (l *ledger) counts() map[outcome]int {
	l.mu.Lock()
	defer l.mu.Unlock()
	c := map[outcome]int{}
	for _, e := range l.m {
		c[e.out]++
	}
	return c
}

func (l *ledger) ids(o outcome) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var ids []string
	for id, e := range l.m {
		if e.out == o {
			ids = append(ids, id)
		}
	}
	return ids
}

// refusedStatuses counts refused events by status.
func (l *ledger) refusedStatuses() map[int]int {
	l.mu.Lock()
	defer l.mu.Unlock()
	c := map[int]int{}
	for _, e := range l.m {
		if e.out == refused {
			c[int(e.status)]++
		}
	}
	return c
}

// post sends one request and reads the whole answer.
func post(ctx context.Context, c *http.Client, url string, body []byte, hdr http.Header) (int, http.Header, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return 0, nil, nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	for k, v := range hdr {
		req.Header[k] = v
	}
	resp, err := c.Do(req)
	if err != nil {
		return 0, nil, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		// The status line arrived but the answer broke off: trackd
		// decided, but the client cannot be sure of a 200's body.
		return 0, nil, nil, err
	}
	return resp.StatusCode, resp.Header, b, nil
}

// sendOne sends one tagged event and records the outcome.
func (l *ledger) sendOne(ctx context.Context, c *http.Client, base string, kind, pad int, hdr http.Header) (string, int, outcome) {
	id := l.newID()
	l.begin(id, kind, pad)
	status, _, _, err := post(ctx, c, base+kindPath(kind), eventBody(id, kind, pad), hdr)
	return id, status, l.record(id, kind, pad, status, err)
}

// target is one way to reach trackd.
type target struct {
	name   string
	base   string
	client *http.Client
}

func tcpTarget(addr string) target {
	return target{name: "tcp", base: "http://" + addr, client: &http.Client{Timeout: 30 * time.Second,
		Transport: &http.Transport{MaxIdleConnsPerHost: 64}}}
}

func unixTarget(path string) target {
	return target{name: "unix", base: "http://trackd", client: unixHTTPClient(path)}
}

func (d *trackd) targets() []target {
	var ts []target
	if d.cfg.HTTP != "" {
		ts = append(ts, tcpTarget(d.cfg.HTTP))
	}
	if d.cfg.Unix != "" {
		ts = append(ts, unixTarget(d.cfg.Unix))
	}
	return ts
}

type loadOpts struct {
	workers       int           // per target
	rate          float64       // events/s over all workers; 0 is as fast as answers come
	identifyEvery int           // every n-th event of a worker is identify; 0 never
	pad           int           // filler bytes per event
	pause         time.Duration // after an error (trackd down)
	header        http.Header
	latencies     bool // keep ack latencies
}

// load is steady traffic from several clients until stopped.
type load struct {
	l       *ledger
	targets []target
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	sent    atomic.Int64
	ok      atomic.Int64

	mu  sync.Mutex
	lat []int32 // microseconds, of acked requests
}

func startLoad(l *ledger, targets []target, o loadOpts) *load {
	if o.workers == 0 {
		o.workers = 4
	}
	if o.pause == 0 {
		o.pause = 20 * time.Millisecond
	}
	ctx, cancel := context.WithCancel(context.Background())
	ld := &load{l: l, targets: targets, cancel: cancel}
	n := o.workers * len(targets)
	var interval time.Duration
	if o.rate > 0 {
		interval = time.Duration(float64(time.Second) * float64(n) / o.rate)
	}
	w := 0
	for _, tg := range targets {
		for i := 0; i < o.workers; i++ {
			w++
			seed := uint64(w)
			ld.wg.Go(func() {
				rng := rand.New(rand.NewPCG(seed, uint64(time.Now().UnixNano())))
				var lat []int32
				next := time.Now().Add(time.Duration(rng.Int64N(int64(max(interval, time.Millisecond)))))
				for k := 1; ctx.Err() == nil; k++ {
					if interval > 0 {
						if d := time.Until(next); d > 0 {
							select {
							case <-time.After(d):
							case <-ctx.Done():
							}
							if ctx.Err() != nil {
								break
							}
						} else if d < -time.Second {
							next = time.Now() // far behind: do not burst to catch up
						}
						next = next.Add(interval)
					}
					kind := 0
					if o.identifyEvery > 0 && k%o.identifyEvery == 0 {
						kind = 1
					}
					id := l.newID()
					l.begin(id, kind, o.pad)
					t0 := time.Now()
					// A request in flight is not cancelled when the load
					// stops: its answer must be known.
					status, _, _, err := post(context.Background(), tg.client, tg.base+kindPath(kind), eventBody(id, kind, o.pad), o.header)
					took := time.Since(t0)
					out := l.record(id, kind, o.pad, status, err)
					ld.sent.Add(1)
					if out == acked {
						ld.ok.Add(1)
						if o.latencies {
							lat = append(lat, int32(min(took.Microseconds(), 1<<31-1)))
						}
					} else {
						select {
						case <-time.After(o.pause):
						case <-ctx.Done():
						}
					}
				}
				if len(lat) > 0 {
					ld.mu.Lock()
					ld.lat = append(ld.lat, lat...)
					ld.mu.Unlock()
				}
			})
		}
	}
	return ld
}

// stop ends the load and waits for requests in flight to be answered.
func (ld *load) stop() {
	ld.cancel()
	ld.wg.Wait()
	for _, tg := range ld.targets {
		tg.client.CloseIdleConnections()
	}
}

// percentile of the ack latencies, after stop.
func (ld *load) percentile(p float64) time.Duration {
	ld.mu.Lock()
	defer ld.mu.Unlock()
	if len(ld.lat) == 0 {
		return 0
	}
	slices.Sort(ld.lat)
	i := min(len(ld.lat)-1, int(p*float64(len(ld.lat))))
	return time.Duration(ld.lat[i]) * time.Microsecond
}

// deliveredEvent is the part of a body upstream received that the audit
// reads.
type deliveredEvent struct {
	ID         string `json:"id"`
	Event      string `json:"event"`
	UserID     string `json:"userId"`
	APIKey     string `json:"apiKey"`
	Timestamp  string `json:"timestamp"`
	Properties *struct {
		Pad string `json:"pad"`
	} `json:"properties"`
	Traits *struct {
		Pad string `json:"pad"`
	} `json:"traits"`
}

// checkBody says what is wrong with a body trackd stored or sent for an
// event of l, or "" when it is the client's event intact.
func (l *ledger) checkBody(body []byte, apiKey string) (string, string) {
	var ev deliveredEvent
	if err := json.Unmarshal(body, &ev); err != nil {
		return "", fmt.Sprintf("not JSON (%v): %.200q", err, body)
	}
	e, ok := l.get(ev.ID)
	if !ok {
		return ev.ID, fmt.Sprintf("id %q was never sent by this test: %.200q", ev.ID, body)
	}
	pad := ""
	switch {
	case e.kind == 0 && ev.Properties != nil:
		pad = ev.Properties.Pad
	case e.kind == 1 && ev.Traits != nil:
		pad = ev.Traits.Pad
	}
	if pad != padFor(ev.ID, int(e.pad)) || ev.UserID != "u-"+ev.ID || (e.kind == 0 && ev.Event != "RELIABILITY") {
		return ev.ID, fmt.Sprintf("body of %s is damaged: %.300q", ev.ID, body)
	}
	if ev.Timestamp == "" {
		return ev.ID, fmt.Sprintf("body of %s has no timestamp", ev.ID)
	}
	if apiKey != "" && ev.APIKey != apiKey {
		return ev.ID, fmt.Sprintf("body of %s has apiKey %q, want the configured one", ev.ID, ev.APIKey)
	}
	return ev.ID, ""
}
