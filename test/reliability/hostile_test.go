//go:build reliability

package reliability

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// rawAnswer is one HTTP answer read off a raw connection.
type rawAnswer struct {
	status int
	header http.Header
	body   string
	close  bool // the answer said Connection: close
}

func readAnswer(br *bufio.Reader) (rawAnswer, error) {
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return rawAnswer{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return rawAnswer{resp.StatusCode, resp.Header, string(b), resp.Close}, err
}

// rawDo writes raw bytes to trackd's TCP listener and reads n answers.
func rawDo(t testing.TB, addr, raw string, n int) []rawAnswer {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(15 * time.Second))
	if _, err := io.WriteString(c, raw); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	var out []rawAnswer
	for i := 0; i < n; i++ {
		a, err := readAnswer(br)
		if err != nil {
			t.Fatalf("answer %d of %d to %.80q: %v", i+1, n, raw, err)
		}
		out = append(out, a)
	}
	return out
}

// closedByPeer says whether the server gave up on c within wait: it closed
// the connection, or sent something (an error answer) unasked.
func closedByPeer(c net.Conn, br *bufio.Reader, wait time.Duration) bool {
	_ = c.SetReadDeadline(time.Now().Add(wait))
	_, err := br.ReadByte()
	return err == nil || !isTimeout(err)
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func gz(t testing.TB, b []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&buf, gzip.BestCompression)
	if _, err := zw.Write(b); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// tagged is a valid event of l with an id, changed by edit (which gets the
// body without its opening brace), for inputs that should be accepted.
func tagged(l *ledger, edit func(rest string) string) (string, string) {
	id := l.newID()
	body := string(eventBody(id, 0, 40))
	return id, "{" + edit(body[1:])
}

func httpReq(method, path, contentType string, body string, extra ...string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s HTTP/1.1\r\nHost: trackd\r\n", method, path)
	if contentType != "" {
		fmt.Fprintf(&b, "Content-Type: %s\r\n", contentType)
	}
	for _, h := range extra {
		b.WriteString(h + "\r\n")
	}
	fmt.Fprintf(&b, "Content-Length: %d\r\n\r\n%s", len(body), body)
	return b.String()
}

// streamBody sends a request whose body is n bytes from a generator to
// trackd and returns the answer and how many body bytes were written before
// trackd answered or closed. Body bytes are never held in memory whole.
func streamBody(t testing.TB, addr string, header string, n int64, chunked bool) (rawAnswer, int64) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(60 * time.Second))
	if _, err := io.WriteString(c, header); err != nil {
		t.Fatal(err)
	}
	var written atomic.Int64
	var wg sync.WaitGroup
	wg.Go(func() {
		chunk := bytes.Repeat([]byte(`{"a":"bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"},`), 1<<16/56)
		for written.Load() < n {
			var frame []byte
			if chunked {
				frame = append(fmt.Appendf(nil, "%x\r\n", len(chunk)), chunk...)
				frame = append(frame, "\r\n"...)
			} else {
				frame = chunk
			}
			if _, err := c.Write(frame); err != nil {
				return
			}
			written.Add(int64(len(chunk)))
		}
		if chunked {
			_, _ = io.WriteString(c, "0\r\n\r\n")
		}
	})
	a, err := readAnswer(bufio.NewReader(c))
	if err != nil {
		t.Fatalf("no answer to a %d MiB body: %v", n>>20, err)
	}
	at := written.Load()
	c.Close()
	wg.Wait()
	return a, at
}

// TestHostileInput sends what broken and malicious clients send to a
// running trackd. Each gets its documented status, memory stays bounded,
// and trackd stays healthy and keeps serving well-behaved clients.
func TestHostileInput(t *testing.T) {
	w := newWork(t)
	up := newUpstream(t)
	cfg := w.baseConfig(up.URL())
	l := newLedger("hostile")
	d := w.start(cfg)
	addr := cfg.HTTP
	base, _ := rssAnonKiB(d.pid())
	rss := sampleRSS(d.pid(), 20*time.Millisecond)
	pid := d.pid()

	t.Run("100 MiB body with a Content-Length is refused before it is read", func(t *testing.T) {
		hdr := "POST /api/v1/track HTTP/1.1\r\nHost: trackd\r\nContent-Type: application/json\r\nContent-Length: 104857600\r\n\r\n"
		a, sent := streamBody(t, addr, hdr, 100<<20, false)
		if a.status != 413 || !strings.Contains(a.body, "max_body_bytes") {
			t.Fatalf("answer %d %q, want 413 naming listen.max_body_bytes", a.status, a.body)
		}
		t.Logf("413 after %d KiB of the body were written", sent>>10)
	})
	t.Run("100 MiB chunked body is refused after max_body_bytes", func(t *testing.T) {
		hdr := "POST /api/v1/track HTTP/1.1\r\nHost: trackd\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
		a, sent := streamBody(t, addr, hdr, 100<<20, true)
		if a.status != 413 {
			t.Fatalf("answer %d %q, want 413", a.status, a.body)
		}
		if !a.close {
			t.Errorf("413 without Connection: close; trackd would have to read the rest")
		}
		t.Logf("413 after %d KiB of the body were written", sent>>10)
	})
	t.Run("many oversized bodies at once keep memory bounded", func(t *testing.T) {
		var wg sync.WaitGroup
		for i := 0; i < 16; i++ {
			wg.Go(func() {
				hdr := "POST /api/v1/identify HTTP/1.1\r\nHost: trackd\r\nTransfer-Encoding: chunked\r\n\r\n"
				if a, _ := streamBody(t, addr, hdr, 20<<20, true); a.status != 413 {
					t.Errorf("answer %d, want 413", a.status)
				}
			})
		}
		wg.Wait()
	})

	send := func(t *testing.T, path, ct, body string, extra ...string) rawAnswer {
		t.Helper()
		return rawDo(t, addr, httpReq("POST", path, ct, body, extra...), 1)[0]
	}
	expect := func(t *testing.T, a rawAnswer, status int, msg string) {
		t.Helper()
		if a.status != status || !strings.Contains(a.body, msg) {
			t.Errorf("answer %d %q, want %d containing %q", a.status, a.body, status, msg)
		}
		if status != 200 && !strings.Contains(a.body, `"status":"failure"`) {
			t.Errorf("failure answer %q is not in upstream's shape", a.body)
		}
	}
	accepted := func(t *testing.T, id string, a rawAnswer) {
		t.Helper()
		l.record(id, 0, 40, a.status, nil)
		expect(t, a, 200, "success")
	}

	t.Run("deeply nested JSON", func(t *testing.T) {
		deep := func(n int) string {
			return `{"event":"e","userId":"u","properties":{"a":` + strings.Repeat("[", n) + strings.Repeat("]", n) + `}}`
		}
		expect(t, send(t, "/api/v1/track", "application/json", deep(20000)), 400, "nested too deeply")
		expect(t, send(t, "/api/v1/track", "application/json", deep(63)), 400, "nested too deeply")
		id, body := tagged(l, func(r string) string {
			return `"nest":{"a":` + strings.Repeat("[", 62) + strings.Repeat("]", 62) + `},` + r
		})
		accepted(t, id, send(t, "/api/v1/track", "application/json", body)) // depth 64 exactly
	})
	t.Run("invalid UTF-8", func(t *testing.T) {
		expect(t, send(t, "/api/v1/track", "application/json", "{\"event\":\"e\xff\",\"userId\":\"u\"}"), 400, "UTF-8")
		expect(t, send(t, "/api/v1/track", "application/json", "{\"event\":\"e\",\"userId\":\"u\",\"x\xc3\x28\":1}"), 400, "UTF-8")
		expect(t, send(t, "/api/v1/identify", "application/json", "{\"userId\":\"u\",\"traits\":{\"n\":\"\xed\xa0\x80\"}}"), 400, "UTF-8")
	})
	t.Run("duplicate keys: the last one counts", func(t *testing.T) {
		id, body := tagged(l, func(r string) string { return `"event":"",` + r })
		accepted(t, id, send(t, "/api/v1/track", "application/json", body))
		expect(t, send(t, "/api/v1/track", "application/json", `{"event":"ok","userId":"u","event":""}`), 400, "`event`")
	})
	t.Run("numbers beyond float64 are kept as sent", func(t *testing.T) {
		id, body := tagged(l, func(r string) string {
			return `"big":1e400,"long":123456789012345678901234567890123456789,"tiny":-1e-400,` + r
		})
		accepted(t, id, send(t, "/api/v1/track", "application/json", body))
		waitFor(t, "the event upstream", 10*time.Second, func() bool { return up.deliveredIDs()[id] > 0 })
		for _, b := range up.deliveredBodies() {
			if idOf(b) == id && !bytes.Contains(b, []byte(`"big":1e400,"long":123456789012345678901234567890123456789,"tiny":-1e-400`)) {
				t.Errorf("numbers changed on the way: %s", b)
			}
		}
	})
	t.Run("content types", func(t *testing.T) {
		for _, tc := range []struct {
			ct     string
			status int
		}{
			{"", 200}, {"application/json", 200}, {"application/json; charset=utf-8", 200}, {"text/plain;charset=UTF-8", 200},
			{"application/vnd.api+json", 200},
			{"application/xml", 415}, {"text/html", 415}, {"multipart/form-data; boundary=x", 415},
			{"application/x-www-form-urlencoded", 415}, {"application/", 415}, {"image/png", 415},
		} {
			id, body := tagged(l, func(r string) string { return r })
			a := send(t, "/api/v1/track", tc.ct, body)
			l.record(id, 0, 40, a.status, nil)
			if a.status != tc.status {
				t.Errorf("Content-Type %q: %d %s, want %d", tc.ct, a.status, a.body, tc.status)
			}
		}
	})
	t.Run("chunked and gzip bodies", func(t *testing.T) {
		id, body := tagged(l, func(r string) string { return r })
		chunked := fmt.Sprintf("POST /api/v1/track HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"+
			"%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n", 10, body[:10], len(body)-10, body[10:])
		accepted(t, id, rawDo(t, addr, chunked, 1)[0])

		id, body = tagged(l, func(r string) string { return r })
		accepted(t, id, send(t, "/api/v1/track", "application/json", string(gz(t, []byte(body))), "Content-Encoding: gzip"))

		id, body = tagged(l, func(r string) string { return r })
		z := gz(t, []byte(body))
		gzChunked := fmt.Sprintf("POST /api/v1/track HTTP/1.1\r\nHost: t\r\nContent-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n", len(z), z)
		accepted(t, id, rawDo(t, addr, gzChunked, 1)[0])

		// 50 gzip members of 1 MiB of spaces each: 50 MiB in ~50 KiB
		// (gzip readers read every member of a multi-member stream).
		bomb := bytes.Repeat(gz(t, bytes.Repeat([]byte(" "), 1<<20)), 50)
		t.Logf("decompression bomb: %d bytes inflating to 50 MiB", len(bomb))
		expect(t, send(t, "/api/v1/track", "application/json", string(bomb), "Content-Encoding: gzip"), 413, "max_body_bytes")
		expect(t, send(t, "/api/v1/track", "application/json", "not gzip at all", "Content-Encoding: gzip"), 400, "gzip")
		expect(t, send(t, "/api/v1/track", "application/json", `{}`, "Content-Encoding: br"), 415, "Content-Encoding")
		expect(t, send(t, "/api/v1/track", "application/json", `{}`, "Content-Encoding: deflate"), 415, "Content-Encoding")
	})
	t.Run("HTTP/1.0", func(t *testing.T) {
		id, body := tagged(l, func(r string) string { return r })
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		fmt.Fprintf(c, "POST /api/v1/track HTTP/1.0\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
		br := bufio.NewReader(c)
		a, err := readAnswer(br)
		if err != nil {
			t.Fatal(err)
		}
		accepted(t, id, a)
		if !closedByPeer(c, br, 2*time.Second) {
			t.Error("an HTTP/1.0 connection without keep-alive stayed open")
		}
	})
	t.Run("pipelining: answers in order", func(t *testing.T) {
		id1, b1 := tagged(l, func(r string) string { return r })
		id3 := l.newID()
		b3 := string(eventBody(id3, 1, 40))
		raw := httpReq("POST", "/api/v1/track", "application/json", b1) +
			httpReq("POST", "/api/v1/track", "application/json", `{"event":""}`) +
			httpReq("GET", "/healthz", "", "") +
			httpReq("POST", "/api/v1/identify", "application/json", b3)
		as := rawDo(t, addr, raw, 4)
		accepted(t, id1, as[0])
		expect(t, as[1], 400, "`event`")
		expect(t, as[2], 200, "success")
		l.record(id3, 1, 40, as[3].status, nil)
		expect(t, as[3], 200, "success")
	})
	t.Run("paths with .. and percent-encoding", func(t *testing.T) {
		for _, tc := range []struct {
			path   string
			status int
		}{
			{"/api/v1/x/../track", 404},
			{"/api/v1/%2e%2e/v1/track", 404},
			{"/api/v1/track/", 404},
			{"//api/v1/track", 404},
			{"/API/V1/TRACK", 404},
			{"/api/v1/track%00", 404},
			{"/%2e%2e/%2e%2e/etc/passwd", 404},
			{"/api/v1/%74rack", 200},       // %74 is "t": the same path (RFC 3986)
			{"/api/v1/track?debug=1", 200}, // the query is not part of the path
			{"/api/v1/%zz", 400},           // not a valid request line: net/http's own 400
		} {
			id, body := tagged(l, func(r string) string { return r })
			a := rawDo(t, addr, httpReq("POST", tc.path, "application/json", body), 1)[0]
			l.record(id, 0, 40, a.status, nil)
			if a.status != tc.status {
				t.Errorf("POST %s: %d %s, want %d", tc.path, a.status, a.body, tc.status)
			}
		}
	})

	t.Run("a flood of 400s", func(t *testing.T) {
		floodRSS := sampleRSS(pid, 20*time.Millisecond)
		var n400, other atomic.Int64
		ctx, cancel := context.WithTimeout(context.Background(), prof.floodFor)
		defer cancel()
		var wg sync.WaitGroup
		bad := [][]byte{
			[]byte(`{"event":`),
			[]byte(`[1,2,3]`),
			[]byte(`{"userId":"u"}`),
			append(append([]byte(`{"event":"e","userId":"u","properties":{"p":"`), bytes.Repeat([]byte("x"), 60<<10)...), `"}`...),
			append(append([]byte(`{"event":"e","userId":"u","properties":[`), bytes.Repeat([]byte("1,"), 30<<10)...), `1]}`...),
		}
		targets := d.targets()
		defer func() {
			for _, tg := range targets {
				tg.client.CloseIdleConnections()
			}
		}()
		for _, tg := range targets {
			for i := 0; i < 16; i++ {
				wg.Go(func() {
					for k := i; ctx.Err() == nil; k++ {
						st, _, _, err := post(ctx, tg.client, tg.base+"/api/v1/track", bad[k%len(bad)], nil)
						switch {
						case err != nil:
						case st == 400:
							n400.Add(1)
						default:
							other.Add(1)
						}
					}
				})
			}
		}
		wg.Wait()
		if other.Load() != 0 {
			t.Errorf("%d answers other than 400 in the flood", other.Load())
		}
		peak := floodRSS.finish()
		report(t, "flood of 400s from 32 clients for %s: %d answered (%.0f/s); RssAnon during the flood peaked at %d KiB",
			prof.floodFor, n400.Load(), float64(n400.Load())/prof.floodFor.Seconds(), peak)
		if peak > 64<<10 {
			t.Errorf("RssAnon %d KiB during the flood, want under 64 MiB", peak)
		}
	})
	t.Run("more connections than the cap", func(t *testing.T) {
		const capConns = 512
		var held []net.Conn
		defer func() {
			for _, c := range held {
				c.Close()
			}
		}()
		// healthz opens a connection and sends one request; the
		// connection then stays open, idle, holding its slot.
		healthz := func() (net.Conn, int) {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := io.WriteString(c, "GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n"); err != nil {
				t.Fatal(err)
			}
			a, err := readAnswer(bufio.NewReader(c))
			if err != nil {
				t.Fatal(err)
			}
			return c, a.status
		}
		for tries := 0; len(held) < capConns; {
			c, st := healthz()
			if st == 200 {
				held = append(held, c)
				continue
			}
			// Connections of earlier subtests may not be released yet.
			c.Close()
			if tries++; tries > 50 {
				t.Fatalf("only %d connections admitted, want %d", len(held), capConns)
			}
			time.Sleep(50 * time.Millisecond)
		}
		for i := 0; i < 3; i++ {
			as := rawDo(t, addr, httpReq("POST", "/api/v1/track", "application/json", `{}`), 1)
			if as[0].status != 503 || as[0].header.Get("Retry-After") == "" {
				t.Errorf("connection past the cap: %d %v, want 503 with Retry-After", as[0].status, as[0].header)
			}
		}
		// The Unix socket has its own cap: local clients still get in.
		if st, _, err := d.get("/healthz"); err != nil || st != 200 {
			t.Errorf("Unix socket while TCP is at its cap: %d %v", st, err)
		}
		refused, err := d.metric("trackd_http_connections_refused_total")
		if err != nil || refused < 3 {
			t.Errorf("trackd_http_connections_refused_total = %v (%v), want at least 3", refused, err)
		}
		for _, c := range held[:8] {
			c.Close()
		}
		held = held[8:]
		waitFor(t, "a new connection to be served once slots free up", 5*time.Second, func() bool {
			c, st := healthz()
			c.Close()
			return st == 200
		})
	})

	peak := rss.finish()
	if st, _, err := d.get("/healthz"); err != nil || st != 200 {
		t.Fatalf("trackd unhealthy after the hostile input: %d %v", st, err)
	}
	if d.exited() || d.pid() != pid {
		t.Fatal("trackd exited")
	}
	if strings.Contains(d.log.String(), "panic") {
		t.Errorf("trackd logged a panic:\n%s", d.log.String())
	}
	// Well-behaved clients are served as before.
	tg := d.targets()[0]
	for i := 0; i < 20; i++ {
		if _, st, out := l.sendOne(context.Background(), tg.client, tg.base, i%2, 100, nil); out != acked {
			t.Fatalf("a valid event after the hostile input: %v %d", out, st)
		}
	}
	d.waitDrained(30 * time.Second)
	d.stopClean()
	audit(t, l, up, cfg.SpoolPath, auditOpts{apiKey: cfg.APIKey})
	report(t, "RssAnon %d KiB at start, peak %d KiB under 100 MiB bodies, 16 parallel 20 MiB bodies, a 50 MiB gzip bomb, "+
		"512+ connections and a flood of 400s", base, peak)
	if peak > 64<<10 {
		t.Errorf("peak RssAnon %d KiB, want under 64 MiB", peak)
	}
}

// TestSlowClientsAreCutOff: a client that dribbles its headers is cut off by
// ReadHeaderTimeout (5s), one that dribbles its body by ReadTimeout (30s,
// checked in the long profile only).
func TestSlowClientsAreCutOff(t *testing.T) {
	t.Parallel()
	w := newWork(t)
	cfg := w.baseConfig("http://" + freeAddr(t))
	d := w.start(cfg)

	dribble := func(t *testing.T, head, drip string, limit time.Duration) time.Duration {
		c, err := net.Dial("tcp", cfg.HTTP)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		start := time.Now()
		if _, err := io.WriteString(c, head); err != nil {
			t.Fatal(err)
		}
		br := bufio.NewReader(c)
		for time.Since(start) < limit {
			if _, err := io.WriteString(c, drip); err != nil {
				return time.Since(start) // closed
			}
			if closedByPeer(c, br, 500*time.Millisecond) {
				return time.Since(start)
			}
		}
		t.Fatalf("connection still open after %s of dribbling", limit)
		return 0
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		t.Run("headers", func(t *testing.T) {
			took := dribble(t, "POST /api/v1/track HTTP/1.1\r\nHost: t\r\n", "X-Slow: 1\r\n", 10*time.Second)
			t.Logf("header-dribbling connection closed after %s", took.Round(time.Millisecond))
		})
	})
	if prof.name == "long" {
		wg.Go(func() {
			t.Run("body", func(t *testing.T) {
				took := dribble(t, "POST /api/v1/track HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\n{", " ", 40*time.Second)
				t.Logf("body-dribbling connection closed after %s", took.Round(time.Millisecond))
			})
		})
	}
	wg.Wait()
	if st, _, err := d.get("/healthz"); err != nil || st != 200 {
		t.Errorf("healthz after slow clients: %d %v", st, err)
	}
	d.stopClean()
}
