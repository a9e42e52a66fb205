package forwarder

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"
	"unicode/utf8"
)

func TestClassifyAnswers(t *testing.T) {
	now := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	ra := func(v string) http.Header { return http.Header{"Retry-After": {v}} }
	cases := []struct {
		name   string
		status int
		header http.Header
		body   string
		class  class
		wait   time.Duration // expected Retry-After, when hasWait
		has    bool
	}{
		{"2xx success is delivered", 200, nil, `{"status":"success"}`, delivered, 0, false},
		{"an empty 2xx is delivered", 204, nil, ``, delivered, 0, false},
		{"a non-JSON 2xx is delivered", 200, nil, `OK`, delivered, 0, false},
		{"202 is delivered", 202, nil, `{}`, delivered, 0, false},
		{"2xx failure is permanent", 200, nil, `{"status":"failure","message":"bad"}`, permanent, 0, false},
		{"400 is permanent", 400, nil, `{"status":"failure","message":"event is required"}`, permanent, 0, false},
		{"404 is permanent", 404, nil, ``, permanent, 0, false},
		{"413 is permanent", 413, nil, ``, permanent, 0, false},
		{"422 is permanent", 422, nil, ``, permanent, 0, false},
		{"other 4xx are permanent", 410, nil, ``, permanent, 0, false},
		{"401 halts", 401, nil, ``, halt, 0, false},
		{"403 halts", 403, nil, ``, halt, 0, false},
		{"407 halts", 407, nil, ``, halt, 0, false},
		{"a redirect halts", 302, http.Header{"Location": {"https://elsewhere/"}}, ``, halt, 0, false},
		{"308 halts", 308, nil, ``, halt, 0, false},
		{"408 is retried", 408, nil, ``, retryable, 0, false},
		{"429 is retried", 429, nil, ``, retryable, 0, false},
		{"429 with delta-seconds", 429, ra("7"), ``, retryable, 7 * time.Second, true},
		{"429 with an HTTP-date", 429, ra(now.Add(90 * time.Second).Format(http.TimeFormat)), ``, retryable, 90 * time.Second, true},
		{"429 with a negative wait", 429, ra("-3"), ``, retryable, -3 * time.Second, true},
		{"429 with garbage", 429, ra("soon"), ``, retryable, 0, false},
		{"500 is retried", 500, nil, ``, retryable, 0, false},
		{"502 is retried", 502, nil, ``, retryable, 0, false},
		{"503 with Retry-After", 503, ra("2"), ``, retryable, 2 * time.Second, true},
		{"500 ignores Retry-After", 500, ra("2"), ``, retryable, 0, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			o := classify(tc.status, tc.header, []byte(tc.body), nil, now)
			if o.class != tc.class {
				t.Fatalf("class %v, want %v", o.class, tc.class)
			}
			if o.status != tc.status {
				t.Fatalf("status %d", o.status)
			}
			if o.hasRetryAfter != tc.has || (tc.has && o.retryAfter != tc.wait) {
				t.Fatalf("retry after %v %v, want %v %v", o.retryAfter, o.hasRetryAfter, tc.wait, tc.has)
			}
			if o.class == permanent && o.reason == "" {
				t.Fatal("permanent without a reason")
			}
		})
	}
}

func TestClassifyErrors(t *testing.T) {
	wrap := func(err error) error { return &url.Error{Op: "Post", URL: "https://x", Err: err} }
	opErr := func(errno syscall.Errno) error {
		return wrap(&net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", errno)})
	}
	cases := []struct {
		name  string
		err   error
		class class
		kind  string
	}{
		{"a refused connection is retried", opErr(syscall.ECONNREFUSED), retryable, "refused"},
		{"a reset connection is retried", opErr(syscall.ECONNRESET), retryable, "reset"},
		{"EOF is retried", wrap(io.EOF), retryable, "reset"},
		{"a DNS failure is retried", wrap(&net.DNSError{Err: "no such host", Name: "x"}), retryable, "dns"},
		{"a timeout is retried", wrap(context.DeadlineExceeded), retryable, "timeout"},
		{"an untrusted certificate halts", wrap(x509.UnknownAuthorityError{}), halt, "tls"},
		{"a wrong host name halts", wrap(x509.HostnameError{Host: "x"}), halt, "tls"},
		{"anything else is retried", wrap(errors.New("boom")), retryable, "network"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			o := classify(0, nil, nil, tc.err, time.Now())
			if o.class != tc.class || o.kind != tc.kind {
				t.Fatalf("got %v/%s, want %v/%s", o.class, o.kind, tc.class, tc.kind)
			}
		})
	}
}

func TestReasonIsFirstKiBAsValidUTF8(t *testing.T) {
	long := strings.Repeat("a", reasonBytes-1) + "é" + strings.Repeat("b", 100) // é straddles the limit
	r := reasonOf(400, []byte(long))
	if len(r) != reasonBytes-1 || !utf8.ValidString(r) {
		t.Fatalf("reason is %d bytes, valid %v", len(r), utf8.ValidString(r))
	}
	if r := reasonOf(413, nil); r != "413 Request Entity Too Large" {
		t.Fatalf("empty body reason %q", r)
	}
}

func TestCapRetryAfter(t *testing.T) {
	for _, tc := range []struct {
		in, want time.Duration
		capped   bool
	}{
		{2 * time.Second, 2 * time.Second, false},
		{-time.Second, 0, true},
		{time.Hour, time.Minute, true},
	} {
		got, capped := capRetryAfter(tc.in, time.Minute)
		if got != tc.want || capped != tc.capped {
			t.Errorf("cap(%v) = %v %v", tc.in, got, capped)
		}
	}
}

func TestBackoffDoublesUpToMax(t *testing.T) {
	var got []string
	for n := 1; n <= 6; n++ {
		got = append(got, backoff(100*time.Millisecond, time.Second, n).String())
	}
	if s := fmt.Sprint(got); s != "[100ms 200ms 400ms 800ms 1s 1s]" {
		t.Fatal(s)
	}
	if backoff(time.Second, time.Hour, 1000) != time.Hour {
		t.Fatal("no cap on a long run of failures")
	}
	for range 100 {
		if j := jitter(time.Second); j < 0 || j > time.Second {
			t.Fatal(j)
		}
	}
}

func TestRateControlAIMD(t *testing.T) {
	t0 := time.Unix(1000, 0)
	c := newRateControl(100, 10)
	if c.limit() != 100 {
		t.Fatal(c.limit())
	}
	// A 429 halves the rate once per round trip, and at most once per
	// decreaseEvery.
	if changed, _ := c.throttled(t0.Add(time.Millisecond), t0.Add(2*time.Millisecond)); !changed || c.limit() != 50 {
		t.Fatalf("after a 429: %v", c.limit())
	}
	if changed, _ := c.throttled(t0.Add(time.Millisecond), t0.Add(time.Second)); changed || c.limit() != 50 {
		t.Fatalf("a 429 for a request sent before the decrease counted: %v", c.limit())
	}
	if changed, _ := c.throttled(t0.Add(3*time.Millisecond), t0.Add(4*time.Millisecond)); changed || c.limit() != 50 {
		t.Fatalf("a 429 right after a decrease counted: %v", c.limit())
	}
	// Never below the floor.
	at := t0.Add(time.Second)
	for range 20 {
		at = at.Add(decreaseEvery)
		c.throttled(at, at)
	}
	if c.limit() != minRate {
		t.Fatalf("floor: %v", c.limit())
	}
	// Successes raise it only while the limiter holds requests back.
	c.succeeded(at)
	if c.limit() != minRate {
		t.Fatalf("raised while not rate-bound: %v", c.limit())
	}
	for range 200 {
		at = at.Add(10 * time.Millisecond)
		for c.reserve(at) == 0 {
		}
		c.succeeded(at)
	}
	if c.limit() <= minRate || c.limit() > 100 {
		t.Fatalf("after a run of successes: %v", c.limit())
	}
	// And back to the ceiling, not above.
	for range 100000 {
		at = at.Add(time.Millisecond)
		c.boundAt = at
		c.succeeded(at)
	}
	if c.limit() != 100 {
		t.Fatalf("ceiling: %v", c.limit())
	}
}

func TestRateControlWithoutCeilingStartsFromObservedRate(t *testing.T) {
	c := newRateControl(0, 10)
	t0 := time.Unix(1000, 0)
	if c.reserve(t0) != 0 || c.limit() != 0 {
		t.Fatal("limited with no ceiling")
	}
	// 400 sends in the last second.
	for i := range 400 {
		c.sent(t0.Add(time.Duration(i) * 2500 * time.Microsecond))
	}
	now := t0.Add(time.Second)
	if changed, _ := c.throttled(now, now); !changed {
		t.Fatal("no change")
	}
	if l := c.limit(); l < 150 || l > 250 {
		t.Fatalf("adapted to %v, want about half of 400", l)
	}
	if d := c.reserve(now); d == 0 {
		t.Fatal("the bucket should start empty after a 429")
	}
}

func TestRateLimiterBurstShrinksWithRate(t *testing.T) {
	c := newRateControl(100, 100)
	now := time.Unix(1000, 0)
	c.throttled(now, now)
	c.throttled(now.Add(time.Second), now.Add(time.Second))

	c.throttled(now.Add(2*time.Second), now.Add(2*time.Second)) // 12.5/s
	later := now.Add(time.Hour)
	n := 0
	for c.reserve(later) == 0 {
		n++
	}
	if n != 12 {
		t.Fatalf("burst after a long idle at 12.5/s: %d", n)
	}
}

func TestDeadLetterReasonNeverHoldsTheEventsAPIKey(t *testing.T) {
	body := []byte(`{"apiKey":"sk-live-123456","event":"e","userId":"u"}`)
	got := maskAPIKey(`{"status":"failure","message":"apiKey sk-live-123456 is not valid"}`, body)
	if strings.Contains(got, "sk-live-123456") || !strings.Contains(got, "apiKey *** is not valid") {
		t.Fatalf("reason = %s", got)
	}
	if got := maskAPIKey("plain", []byte("not json")); got != "plain" {
		t.Fatalf("a body that is not JSON changed the reason: %s", got)
	}
}
