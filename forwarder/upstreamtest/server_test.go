package upstreamtest

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func newUpstream(t *testing.T) *Server {
	t.Helper()
	s, err := NewServer("")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func newClient(t *testing.T) *http.Client {
	t.Helper()
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 5 * time.Second}
}

type answer struct {
	status     int
	body       string
	retryAfter string
}

func post(t *testing.T, c *http.Client, url, body string) (answer, error) {
	t.Helper()
	resp, err := c.Post(url, "application/json", strings.NewReader(body))
	if err != nil {
		return answer{}, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return answer{resp.StatusCode, string(b), resp.Header.Get("Retry-After")}, nil
}

const goodTrack = `{"apiKey":"k","event":"CLICKED","userId":"u1","properties":{"price":100}}`

func TestValidation(t *testing.T) {
	s := newUpstream(t)
	c := newClient(t)
	cases := []struct {
		name, path, body string
		status           int
		message          string
	}{
		{"a valid track event is accepted", "/api/v1/track", goodTrack, 200, ""},
		{"a valid identify call is accepted", "/api/v1/identify", `{"apiKey":"k","anonymousId":"a","traits":{"name":"Ada","$tags":["x"]}}`, 200, ""},
		{"an ISO-8601 timestamp is accepted", "/api/v1/track", `{"apiKey":"k","event":"E","userId":"u","timestamp":"2021-12-02T00:30:08.276Z"}`, 200, ""},
		{"the body must be JSON", "/api/v1/track", `{"apiKey":`, 400, "JSON object"},
		{"the body must be an object", "/api/v1/track", `[1,2]`, 400, "JSON object"},
		{"apiKey is required", "/api/v1/track", `{"event":"E","userId":"u"}`, 400, "apiKey"},
		{"event is required", "/api/v1/track", `{"apiKey":"k","userId":"u"}`, 400, "event is required"},
		{"event must not be empty", "/api/v1/track", `{"apiKey":"k","event":"","userId":"u"}`, 400, "event is required"},
		{"properties must be an object", "/api/v1/track", `{"apiKey":"k","event":"E","userId":"u","properties":[1]}`, 400, "properties must be an object"},
		{"properties must not be null", "/api/v1/track", `{"apiKey":"k","event":"E","userId":"u","properties":null}`, 400, "properties must be an object"},
		{"traits must be an object", "/api/v1/identify", `{"apiKey":"k","userId":"u","traits":"x"}`, 400, "traits must be an object"},
		{"a user or anonymous id is required", "/api/v1/track", `{"apiKey":"k","event":"E"}`, 400, "userId or anonymousId"},
		{"userId must be a string", "/api/v1/track", `{"apiKey":"k","event":"E","userId":7}`, 400, "userId must be a string"},
		{"timestamp must be ISO-8601", "/api/v1/track", `{"apiKey":"k","event":"E","userId":"u","timestamp":"yesterday"}`, 400, "timestamp"},
		{"an unknown path is 404", "/api/v1/page", goodTrack, 404, "no such endpoint"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			a, err := post(t, c, s.URL()+tc.path, tc.body)
			if err != nil {
				t.Fatal(err)
			}
			if a.status != tc.status {
				t.Fatalf("status %d, want %d (body %s)", a.status, tc.status, a.body)
			}
			if tc.status == 200 && a.body != `{"status":"success"}` {
				t.Fatalf("body %s", a.body)
			}
			if tc.status != 200 && (!strings.Contains(a.body, `"status":"failure"`) || !strings.Contains(a.body, tc.message)) {
				t.Fatalf("body %s, want failure mentioning %q", a.body, tc.message)
			}
		})
	}
	got := s.Received()
	if len(got) != len(cases) {
		t.Fatalf("received %d, want %d", len(got), len(cases))
	}
	if got[0].Path != "/api/v1/track" || string(got[0].Body) != goodTrack || got[0].Status != 200 ||
		got[0].Header.Get("Content-Type") != "application/json" || got[0].At.IsZero() {
		t.Fatalf("first request recorded as %+v", got[0])
	}
}

func TestModes(t *testing.T) {
	s := newUpstream(t)
	c := newClient(t)
	url := s.URL() + "/api/v1/track"

	date := RetryAfterDate(time.Now().Add(1500 * time.Millisecond))
	for _, m := range []Mode{
		{Answer: Answer{Status: 429, RetryAfter: "3"}},
		{Answer: Answer{Status: 429, RetryAfter: date}},
		{Answer: Answer{Status: 503}},
		{Answer: Answer{Status: 401}},
		{Answer: Answer{Status: 200, Body: `{"status":"failure","message":"nope"}`}},
	} {
		s.SetMode(m)
		a, err := post(t, c, url, goodTrack)
		if err != nil {
			t.Fatal(err)
		}
		if a.status != m.Status || a.retryAfter != m.RetryAfter {
			t.Fatalf("mode %s: got %+v", FormatMode(m), a)
		}
		if m.Body != "" && a.body != m.Body {
			t.Fatalf("mode %s: body %s", FormatMode(m), a.body)
		}
	}
	if when, err := http.ParseTime(date); err != nil || when.Before(time.Now()) {
		t.Fatalf("RetryAfterDate gave %q (%v)", date, err)
	}

	t.Run("slow answers wait", func(t *testing.T) {
		s.SetMode(Mode{Answer: Answer{Delay: 150 * time.Millisecond}})
		start := time.Now()
		a, err := post(t, c, url, goodTrack)
		if err != nil || a.status != 200 {
			t.Fatal(a, err)
		}
		if d := time.Since(start); d < 150*time.Millisecond {
			t.Fatalf("answered after %v", d)
		}
	})
	t.Run("hang lasts until the client gives up", func(t *testing.T) {
		s.SetMode(Mode{Answer: Answer{Hang: true}})
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, url, strings.NewReader(goodTrack))
		_, err := c.Do(req)
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("err %v", err)
		}
	})
	t.Run("drop and reset fail the request", func(t *testing.T) {
		for _, m := range []Mode{{Answer: Answer{Drop: true}}, {Answer: Answer{Reset: true}}} {
			s.SetMode(m)
			if _, err := post(t, c, url, goodTrack); err == nil {
				t.Fatalf("mode %s: no error", FormatMode(m))
			}
		}
	})
	t.Run("a script decides per request", func(t *testing.T) {
		s.SetMode(Mode{Script: func(r Request) (Answer, bool) {
			return Answer{Status: 422}, strings.Contains(string(r.Body), "BAD")
		}})
		a, _ := post(t, c, url, strings.Replace(goodTrack, "CLICKED", "BAD", 1))
		b, _ := post(t, c, url, goodTrack)
		if a.status != 422 || b.status != 200 {
			t.Fatalf("got %d and %d", a.status, b.status)
		}
	})
}

func TestRateLimitAcrossClients(t *testing.T) {
	s := newUpstream(t)
	s.SetMode(Mode{RateLimit: 10, RateBurst: 5, RateRetryAfter: "1"})
	url := s.URL() + "/api/v1/track"
	statuses := map[int]int{}
	for i := 0; i < 3; i++ {
		c := newClient(t)
		for j := 0; j < 4; j++ {
			a, err := post(t, c, url, goodTrack)
			if err != nil {
				t.Fatal(err)
			}
			statuses[a.status]++
			if a.status == 429 && a.retryAfter != "1" {
				t.Fatalf("429 without Retry-After: %+v", a)
			}
		}
	}
	// 12 requests in a few milliseconds: the burst of 5 (and a token or
	// two refilled on a slow machine) pass, the rest are refused.
	if statuses[200] < 5 || statuses[200] > 8 || statuses[429] != 12-statuses[200] {
		t.Fatalf("statuses %v", statuses)
	}
}

func TestDownRefusesUntilUp(t *testing.T) {
	s := newUpstream(t)
	c := newClient(t)
	url := s.URL() + "/api/v1/track"
	if a, err := post(t, c, url, goodTrack); err != nil || a.status != 200 {
		t.Fatal(a, err)
	}
	s.Down()
	c.CloseIdleConnections() // a kept-alive connection would fail with EOF instead
	_, err := post(t, c, url, goodTrack)
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("while down: %v", err)
	}
	if err := s.Up(); err != nil {
		t.Fatal(err)
	}
	if a, err := post(t, c, url, goodTrack); err != nil || a.status != 200 {
		t.Fatal(a, err)
	}
}

func TestAdminEndpoint(t *testing.T) {
	s := newUpstream(t)
	c := newClient(t)
	req, _ := http.NewRequest(http.MethodPut, s.URL()+AdminPrefix+"mode", strings.NewReader("status=503,retry-after=2"))
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	a, _ := post(t, c, s.URL()+"/api/v1/track", goodTrack)
	if a.status != 503 || a.retryAfter != "2" {
		t.Fatalf("got %+v", a)
	}
	if n := s.Count(); n != 1 {
		t.Fatalf("admin requests were recorded: %d", n)
	}
}

func TestParseModeRoundTrip(t *testing.T) {
	for _, spec := range []string{"normal", "retry-after=5,status=429", "delay=10ms", "hang", "rate=50", "burst=3,rate-retry-after=1,rate=2.5", "drop", "reset"} {
		m, err := ParseMode(spec)
		if err != nil {
			t.Fatalf("%s: %v", spec, err)
		}
		if got := FormatMode(m); got != spec {
			t.Fatalf("%s came back as %s", spec, got)
		}
	}
	for _, bad := range []string{"status=abc", "status=42", "delay=5", "colour=red"} {
		if _, err := ParseMode(bad); err == nil {
			t.Fatalf("%s: no error", bad)
		}
	}
}

func TestRetryAfterForms(t *testing.T) {
	if got := RetryAfterSeconds(1500 * time.Millisecond); got != "2" {
		t.Fatal(got)
	}
	now := time.Date(2026, 1, 2, 3, 4, 5, 100, time.UTC)
	got := RetryAfterDate(now)
	when, err := http.ParseTime(got)
	if err != nil || !when.Equal(now.Truncate(time.Second).Add(time.Second)) {
		t.Fatalf("%s %v", got, err)
	}
}
