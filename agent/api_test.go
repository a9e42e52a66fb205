package agent

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/trackd/trackd/spool"
)

const validTrack = `{"event":"CLICKED_CHECKOUT","userId":"u1","properties":{"price":100}}`

func gzipped(t testing.TB, b []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	if _, err := zw.Write(b); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// TestIngestAnswers runs every validation rule and status code through a
// real loopback listener and a real Unix socket.
func TestIngestAnswers(t *testing.T) {
	cfg := testConfig(t)
	cfg.Listen.MaxBodyBytes = 4096
	ta := startAgent(t, cfg)

	jsonHdr := http.Header{"Content-Type": {"application/json"}}
	bomb := gzipped(t, bytes.Repeat([]byte(" "), 1<<20)) // 1 MiB of spaces, a few KiB compressed
	cases := []struct {
		name    string
		method  string
		path    string
		header  http.Header
		body    []byte
		status  int
		message string // substring of the failure message
	}{
		{"track is stored", "POST", "/api/v1/track", jsonHdr, []byte(validTrack), 200, ""},
		{"identify is stored", "POST", "/api/v1/identify", jsonHdr, []byte(`{"userId":"u1","traits":{"name":"Ada"}}`), 200, ""},
		{"no content type is accepted", "POST", "/api/v1/track", nil, []byte(validTrack), 200, ""},
		{"text/plain is accepted", "POST", "/api/v1/track", http.Header{"Content-Type": {"text/plain;charset=UTF-8"}}, []byte(validTrack), 200, ""},
		{"gzip body is accepted", "POST", "/api/v1/track", http.Header{"Content-Encoding": {"gzip"}}, gzipped(t, []byte(validTrack)), 200, ""},
		{"bad JSON", "POST", "/api/v1/track", jsonHdr, []byte(`{"event":`), 400, "JSON"},
		{"body must be an object", "POST", "/api/v1/track", jsonHdr, []byte(`["event"]`), 400, "object"},
		{"empty body", "POST", "/api/v1/track", jsonHdr, nil, 400, "empty"},
		{"event is required", "POST", "/api/v1/track", jsonHdr, []byte(`{"userId":"u1"}`), 400, "`event`"},
		{"event must not be empty", "POST", "/api/v1/track", jsonHdr, []byte(`{"event":"","userId":"u1"}`), 400, "`event`"},
		{"properties must be an object", "POST", "/api/v1/track", jsonHdr, []byte(`{"event":"e","userId":"u1","properties":[1]}`), 400, "`properties`"},
		{"properties must not be null", "POST", "/api/v1/track", jsonHdr, []byte(`{"event":"e","userId":"u1","properties":null}`), 400, "`properties`"},
		{"traits must be an object", "POST", "/api/v1/identify", jsonHdr, []byte(`{"userId":"u1","traits":"x"}`), 400, "`traits`"},
		{"a user id is required", "POST", "/api/v1/track", jsonHdr, []byte(`{"event":"e"}`), 400, "`userId`"},
		{"an empty user id is not enough", "POST", "/api/v1/identify", jsonHdr, []byte(`{"userId":"","anonymousId":""}`), 400, "`anonymousId`"},
		{"timestamp must be ISO-8601", "POST", "/api/v1/track", jsonHdr, []byte(`{"event":"e","userId":"u1","timestamp":"yesterday"}`), 400, "`timestamp`"},
		{"body over the limit by Content-Length", "POST", "/api/v1/track", jsonHdr, bytes.Repeat([]byte("x"), 5000), 413, "max_body_bytes"},
		{"gzip bomb is refused", "POST", "/api/v1/track", http.Header{"Content-Encoding": {"gzip"}}, bomb, 413, "max_body_bytes"},
		{"unknown content encoding", "POST", "/api/v1/track", http.Header{"Content-Encoding": {"br"}}, []byte(validTrack), 415, "Content-Encoding"},
		{"form content type", "POST", "/api/v1/track", http.Header{"Content-Type": {"application/x-www-form-urlencoded"}}, []byte("a=b"), 415, "application/json"},
		{"GET on track", "GET", "/api/v1/track", nil, nil, 405, "POST"},
		{"PUT on identify", "PUT", "/api/v1/identify", nil, []byte(validTrack), 405, "POST"},
		{"unknown path", "POST", "/api/v1/page", jsonHdr, []byte(validTrack), 404, "/api/v1/page"},
		{"dot-dot path is not cleaned into an endpoint", "POST", "/api/v1/x/../track", jsonHdr, []byte(validTrack), 404, ""},
		{"healthz", "GET", "/healthz", nil, nil, 200, ""},
		{"readyz", "GET", "/readyz", nil, nil, 200, ""},
		{"POST on readyz", "POST", "/readyz", nil, nil, 405, "GET"},
	}
	for _, tr := range transports {
		for _, tc := range cases {
			t.Run(tr.name+"/"+tc.name, func(t *testing.T) {
				req, err := http.NewRequest(tc.method, tr.base(ta)+tc.path, bytes.NewReader(tc.body))
				if err != nil {
					t.Fatal(err)
				}
				req.URL.Path = tc.path // keep ".." as sent
				req.URL.RawPath = ""
				for k, v := range tc.header {
					req.Header[k] = v
				}
				resp, err := tr.cli(ta).Do(req)
				if err != nil {
					t.Fatal(err)
				}
				defer resp.Body.Close()
				var got map[string]string
				if err := json.NewDecoder(resp.Body).Decode(&got); err != nil {
					t.Fatalf("answer is not a JSON object: %v", err)
				}
				if resp.StatusCode != tc.status {
					t.Fatalf("status = %d, want %d (answer %v)", resp.StatusCode, tc.status, got)
				}
				if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
					t.Errorf("Content-Type = %q, want application/json", ct)
				}
				if tc.status == 200 {
					if got["status"] != "success" {
						t.Errorf("answer = %v, want status success", got)
					}
					return
				}
				if got["status"] != "failure" || !strings.Contains(got["message"], tc.message) {
					t.Errorf("answer = %v, want failure whose message contains %q", got, tc.message)
				}
				if tc.status == 405 && resp.Header.Get("Allow") == "" {
					t.Error("405 without an Allow header")
				}
			})
		}
	}
}

// TestStoredEventIsStampedAndOtherwiseUnchanged checks what reaches the
// spool: the client's JSON with timestamp and apiKey filled in.
func TestStoredEventIsStampedAndOtherwiseUnchanged(t *testing.T) {
	cfg := testConfig(t)
	ta := startAgent(t, cfg)
	before := time.Now().UTC().Truncate(time.Millisecond)
	body := `{"event":"e","anonymousId":"a1","custom":{"nested":[1,2.50,"x"]}}`
	if r := do(t, ta.tcp, "POST", ta.tcpURL+"/api/v1/track", nil, []byte(body)); r.status != 200 {
		t.Fatalf("status %d: %s", r.status, r.body)
	}
	withKey := `{"event":"e","userId":"u","apiKey":"client-key","timestamp":"2021-12-02T00:30:08.276Z"}`
	if r := do(t, ta.unix, "POST", "http://trackd/api/v1/track", nil, []byte(withKey)); r.status != 200 {
		t.Fatalf("status %d: %s", r.status, r.body)
	}
	ta.close(t)

	recs := spoolRecords(t, cfg.Spool.Path)
	if len(recs) != 2 {
		t.Fatalf("spool holds %d records, want 2", len(recs))
	}
	var got map[string]any
	if err := json.Unmarshal(recs[0].Body, &got); err != nil {
		t.Fatalf("stored body is not JSON: %v: %s", err, recs[0].Body)
	}
	if got["apiKey"] != "test-key" {
		t.Errorf("apiKey = %v, want the configured key", got["apiKey"])
	}
	ts, err := time.Parse("2006-01-02T15:04:05.000Z", fmt.Sprint(got["timestamp"]))
	if err != nil {
		t.Fatalf("timestamp %v is not RFC 3339 UTC with milliseconds: %v", got["timestamp"], err)
	}
	if ts.Before(before) || ts.After(time.Now()) {
		t.Errorf("timestamp %v is not the time of receipt (after %v)", ts, before)
	}
	if !bytes.Contains(recs[0].Body, []byte(`"custom":{"nested":[1,2.50,"x"]}`)) {
		t.Errorf("client fields were not kept byte for byte: %s", recs[0].Body)
	}
	if recs[0].Kind != spool.KindTrack {
		t.Errorf("kind = %v, want track", recs[0].Kind)
	}
	if string(recs[1].Body) != withKey {
		t.Errorf("a complete event was changed:\n got %s\nwant %s", recs[1].Body, withKey)
	}
}

func TestMissingAPIKeyWithNoneConfigured(t *testing.T) {
	cfg := testConfig(t)
	cfg.Upstream.APIKey = ""
	ta := startAgent(t, cfg)
	r := do(t, ta.tcp, "POST", ta.tcpURL+"/api/v1/track", nil, []byte(validTrack))
	if r.status != 400 || !contains(r.body, "`apiKey`") || !contains(r.body, "upstream.api_key") {
		t.Fatalf("got %d %s, want 400 naming apiKey and upstream.api_key", r.status, r.body)
	}
}

func TestAuthToken(t *testing.T) {
	cfg := testConfig(t)
	cfg.Listen.AuthToken = "s3cret-token"
	ta := startAgent(t, cfg)
	cases := []struct {
		name   string
		auth   string
		status int
	}{
		{"missing token", "", 401},
		{"wrong token", "Bearer nope", 401},
		{"token of another length", "Bearer s3cret-token-and-more", 401},
		{"not a bearer token", "Basic czNjcmV0LXRva2Vu", 401},
		{"right token", "Bearer s3cret-token", 200},
		{"scheme is case-insensitive", "bearer s3cret-token", 200},
	}
	for _, tr := range transports {
		for _, tc := range cases {
			t.Run(tr.name+"/"+tc.name, func(t *testing.T) {
				h := http.Header{}
				if tc.auth != "" {
					h.Set("Authorization", tc.auth)
				}
				r := do(t, tr.cli(ta), "POST", tr.base(ta)+"/api/v1/track", h, []byte(validTrack))
				if r.status != tc.status {
					t.Fatalf("status = %d, want %d: %s", r.status, tc.status, r.body)
				}
				if r.status == 401 && r.header.Get("WWW-Authenticate") == "" {
					t.Error("401 without WWW-Authenticate")
				}
				if contains(r.body, "s3cret") {
					t.Error("the answer contains the token")
				}
			})
		}
	}
}

func TestSpoolFullRejectAnswers503AndKeepsWhatItHas(t *testing.T) {
	cfg := testConfig(t)
	cfg.Listen.MaxBodyBytes = 1024
	cfg.Spool.MaxBytes = 4096
	ta := startAgent(t, cfg)
	accepted := 0
	var last response
	for i := 0; i < 100; i++ {
		last = do(t, ta.tcp, "POST", ta.tcpURL+"/api/v1/track", nil, []byte(fmt.Sprintf(`{"event":"e%03d","userId":"u"}`, i)))
		if last.status != 200 {
			break
		}
		accepted++
	}
	if last.status != 503 || last.header.Get("Retry-After") == "" || !contains(last.body, "spool.max_bytes") {
		t.Fatalf("after %d events got %d %v %s, want 503 with Retry-After naming spool.max_bytes", accepted, last.status, last.header, last.body)
	}
	if r := do(t, ta.tcp, "GET", ta.tcpURL+"/readyz", nil, nil); r.status != 503 {
		t.Errorf("readyz = %d while the spool is full, want 503", r.status)
	}
	ta.close(t)
	recs := spoolRecords(t, cfg.Spool.Path)
	if len(recs) != accepted {
		t.Fatalf("spool holds %d records, want the %d that got 200", len(recs), accepted)
	}
	for i, r := range recs {
		if want := fmt.Sprintf(`"event":"e%03d"`, i); !bytes.Contains(r.Body, []byte(want)) {
			t.Errorf("record %d = %s, want %s", i, r.Body, want)
		}
	}
}

// failingStore is a spool whose writes fail, as on a broken disk.
type failingStore struct{ err error }

func (f failingStore) Append(context.Context, ...spool.Entry) error { return f.err }
func (f failingStore) Accepting() error                             { return f.err }

func TestStorageErrorAnswers503(t *testing.T) {
	diskErr := fmt.Errorf("append to spool /x/spool.db: %w", errors.New("write /x/spool.db: input/output error"))
	a := &api{store: failingStore{diskErr}, maxBodyBytes: 1024, apiKey: "k", now: time.Now, log: discardLogger(), metrics: newMetrics(nil, nil)}
	base, client := serveAPI(t, a)
	r := do(t, client, "POST", base+"/api/v1/track", nil, []byte(validTrack))
	if r.status != 503 || r.header.Get("Retry-After") == "" || !contains(r.body, "could not store") {
		t.Fatalf("got %d %v %s, want 503 with Retry-After", r.status, r.header, r.body)
	}
	if r := do(t, client, "GET", base+"/readyz", nil, nil); r.status != 503 {
		t.Errorf("readyz = %d while storing fails, want 503", r.status)
	}
	a.closing.Store(true)
	r = do(t, client, "POST", base+"/api/v1/track", nil, []byte(validTrack))
	if r.status != 503 || !contains(r.body, "shutting down") {
		t.Fatalf("while closing got %d %s, want 503 shutting down", r.status, r.body)
	}
}

// serveAPI serves a on a real loopback listener for the test's duration.
func serveAPI(t *testing.T, a *api) (string, *http.Client) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: a, ReadHeaderTimeout: time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(ln)
	}()
	client := &http.Client{Transport: &http.Transport{}, Timeout: 5 * time.Second}
	t.Cleanup(func() {
		client.CloseIdleConnections()
		_ = srv.Close()
		<-done
	})
	return "http://" + ln.Addr().String(), client
}

func TestChunkedBodyOverLimitIs413(t *testing.T) {
	cfg := testConfig(t)
	cfg.Listen.MaxBodyBytes = 1024
	ta := startAgent(t, cfg)
	// An io.Reader of unknown length makes the client send chunked.
	body := strings.NewReader(`{"event":"e","userId":"u","pad":"` + strings.Repeat("x", 4096) + `"}`)
	req, _ := http.NewRequest("POST", ta.tcpURL+"/api/v1/track", struct{ *strings.Reader }{body})
	resp, err := ta.tcp.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 413 {
		t.Fatalf("status = %d, want 413", resp.StatusCode)
	}
}

// TestCorruptSpoolIsQuarantinedAndTrackdStarts: whatever is at spool.path,
// trackd starts, moves the unreadable file aside and serves.
func TestCorruptSpoolIsQuarantinedAndTrackdStarts(t *testing.T) {
	cases := []struct {
		name   string
		damage func(t *testing.T, path string)
	}{
		{"garbage bytes", func(t *testing.T, path string) {
			if err := os.WriteFile(path, bytes.Repeat([]byte("not a bbolt file "), 4096), 0o600); err != nil {
				t.Fatal(err)
			}
		}},
		{"truncated file", func(t *testing.T, path string) {
			cfg := testConfig(t)
			cfg.Spool.Path = path
			ta := startAgent(t, cfg)
			for i := 0; i < 50; i++ {
				do(t, ta.tcp, "POST", ta.tcpURL+"/api/v1/track", nil, []byte(validTrack))
			}
			ta.close(t)
			// Keep the meta pages but cut the tree they point to: the file
			// is pre-grown, so a fraction of its size could still hold all
			// of the few pages in use.
			if err := os.Truncate(path, 3*4096); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig(t)
			if err := os.MkdirAll(filepath.Dir(cfg.Spool.Path), 0o700); err != nil {
				t.Fatal(err)
			}
			tc.damage(t, cfg.Spool.Path)
			ta := startAgent(t, cfg)
			if r := do(t, ta.tcp, "GET", ta.tcpURL+"/readyz", nil, nil); r.status != 200 {
				t.Fatalf("readyz = %d %s after quarantine", r.status, r.body)
			}
			if r := do(t, ta.unix, "POST", "http://trackd/api/v1/track", nil, []byte(validTrack)); r.status != 200 {
				t.Fatalf("track = %d %s on the fresh spool", r.status, r.body)
			}
			moved, _ := filepath.Glob(cfg.Spool.Path + ".corrupt-*")
			if len(moved) != 1 {
				t.Fatalf("quarantined files: %v, want one %s.corrupt-<unix>", moved, cfg.Spool.Path)
			}
			r := do(t, ta.tcp, "GET", ta.tcpURL+"/status", nil, nil)
			var st struct {
				Spool struct {
					Quarantined string `json:"quarantined"`
				} `json:"spool"`
			}
			if err := json.Unmarshal([]byte(r.body), &st); err != nil || st.Spool.Quarantined != moved[0] {
				t.Fatalf("/status must name the quarantined file %s: %d %s (%v)", moved[0], r.status, r.body, err)
			}
		})
	}
}
