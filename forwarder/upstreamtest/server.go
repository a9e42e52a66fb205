package upstreamtest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"math"
	"net"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// MaxBodyBytes is the largest request body the server accepts; a larger one
// is answered 413.
const MaxBodyBytes = 1 << 20

// AdminPrefix is the path prefix of the server's own control endpoints, which
// are not recorded.
const AdminPrefix = "/_upstreamtest/"

// Request is one request the server received.
type Request struct {
	Method string
	Path   string
	Body   []byte
	Header http.Header
	// At is when the request's headers had arrived.
	At time.Time
	// Status is what the server answered: 0 when it hung, dropped or reset
	// the connection instead.
	Status int
}

// Answer says how to answer one request. The zero Answer answers as the
// contract says: 200 for a valid event, 400 for an invalid one.
type Answer struct {
	// Status is the HTTP status to answer with; 0 validates the request and
	// answers 200 or 400.
	Status int
	// Body is the response body; "" picks the contract's body for Status
	// ({"status":"success"} for 2xx, the failure shape otherwise).
	Body string
	// RetryAfter is sent verbatim as the Retry-After header when not empty;
	// see RetryAfterSeconds and RetryAfterDate.
	RetryAfter string
	// Delay is how long to wait before answering.
	Delay time.Duration
	// Hang never answers: the handler waits until the client gives up or the
	// server is closed or taken down.
	Hang bool
	// Drop closes the connection without answering.
	Drop bool
	// Reset resets the connection (TCP RST) without answering.
	Reset bool
}

// Mode is how the server answers. The zero Mode answers as the contract says.
type Mode struct {
	// Answer is how every request is answered unless Script or the rate
	// limit decide otherwise.
	Answer
	// RateLimit, when positive, is how many requests per second the server
	// accepts across all clients, as a token bucket of RateBurst (default
	// RateLimit rounded up); requests beyond it are answered 429.
	RateLimit float64
	RateBurst int
	// RateRetryAfter is the Retry-After header sent with the rate limit's
	// 429s; "" sends none.
	RateRetryAfter string
	// Script, when set, is asked first; when it returns ok the Answer it
	// returns is used (rate limit included: scripted requests are not
	// counted against it).
	Script func(Request) (a Answer, ok bool)
}

// RetryAfterSeconds is a Retry-After value in delta-seconds form.
func RetryAfterSeconds(d time.Duration) string {
	return strconv.FormatInt(int64(math.Ceil(d.Seconds())), 10)
}

// RetryAfterDate is a Retry-After value in HTTP-date form. HTTP-dates have
// whole seconds, so t is rounded up to the next second: a client that waits
// until the date given never comes back before t.
func RetryAfterDate(t time.Time) string {
	if t.Truncate(time.Second) != t {
		t = t.Truncate(time.Second).Add(time.Second)
	}
	return t.UTC().Format(http.TimeFormat)
}

// Server is a loopback stand-in for upstream. All methods are safe for
// concurrent use.
type Server struct {
	addr string // host:port, fixed after the first listen

	mu       sync.Mutex
	mode     Mode
	limiter  *rate.Limiter
	received []Request
	srv      *http.Server
	down     chan struct{} // closed when the current generation goes down
	closed   bool
	running  int        // handlers running, under mu
	idle     *sync.Cond // signalled when running drops to 0

	serving sync.WaitGroup // Serve loops
}

// NewServer listens on addr ("" means 127.0.0.1:0) and serves the contract
// until Close.
func NewServer(addr string) (*Server, error) {
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	s := &Server{addr: addr}
	s.idle = sync.NewCond(&s.mu)
	if err := s.Up(); err != nil {
		return nil, err
	}
	return s, nil
}

// URL is the server's base URL, e.g. "http://127.0.0.1:43211"; forwarders
// append /api/v1/track themselves.
func (s *Server) URL() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return "http://" + s.addr
}

// Addr is the address the server listens on.
func (s *Server) Addr() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.addr
}

// Up starts listening again on the server's address after Down. It is a
// no-op when the server is up.
func (s *Server) Up() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return errors.New("upstreamtest: server closed")
	}
	if s.srv != nil {
		return nil
	}
	ln, err := net.Listen("tcp", s.addr)
	if err != nil {
		return fmt.Errorf("upstreamtest: listen %s: %w", s.addr, err)
	}
	s.addr = ln.Addr().String()
	down := make(chan struct{})
	srv := &http.Server{
		Handler:           http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { s.serve(w, r, down) }),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          log.New(io.Discard, "", 0),
	}
	s.srv, s.down = srv, down
	s.serving.Add(1)
	go func() {
		defer s.serving.Done()
		_ = srv.Serve(ln)
	}()
	return nil
}

// Down closes the listener and every open connection, so that clients see
// "connection refused" until Up. Hanging handlers return.
func (s *Server) Down() {
	s.mu.Lock()
	srv, down := s.srv, s.down
	s.srv, s.down = nil, nil
	s.mu.Unlock()
	if srv == nil {
		return
	}
	close(down)
	_ = srv.Close()
}

// Close takes the server down for good and waits for its handlers to return.
func (s *Server) Close() error {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	s.Down()
	s.serving.Wait()
	s.mu.Lock()
	for s.running > 0 {
		s.idle.Wait()
	}
	s.mu.Unlock()
	return nil
}

// SetMode changes how requests that arrive from now on are answered.
func (s *Server) SetMode(m Mode) {
	var lim *rate.Limiter
	if m.RateLimit > 0 {
		b := m.RateBurst
		if b <= 0 {
			b = int(math.Ceil(m.RateLimit))
		}
		lim = rate.NewLimiter(rate.Limit(m.RateLimit), b)
	}
	s.mu.Lock()
	s.mode, s.limiter = m, lim
	s.mu.Unlock()
}

// Mode is the mode in force.
func (s *Server) Mode() Mode {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.mode
}

// Received returns a copy of every request received so far, in arrival order.
func (s *Server) Received() []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Request(nil), s.received...)
}

// Count is how many requests were received; with statuses given, how many of
// them were answered with one of those statuses.
func (s *Server) Count(statuses ...int) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(statuses) == 0 {
		return len(s.received)
	}
	n := 0
	for _, r := range s.received {
		for _, st := range statuses {
			if r.Status == st {
				n++
				break
			}
		}
	}
	return n
}

// Reset forgets the requests received so far.
func (s *Server) Reset() {
	s.mu.Lock()
	s.received = nil
	s.mu.Unlock()
}

func (s *Server) serve(w http.ResponseWriter, r *http.Request, down <-chan struct{}) {
	at := time.Now()
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.running++
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		if s.running--; s.running == 0 {
			s.idle.Broadcast()
		}
		s.mu.Unlock()
	}()
	if strings.HasPrefix(r.URL.Path, AdminPrefix) {
		s.admin(w, r)
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, MaxBodyBytes+1))
	if err != nil {
		// The client went away mid-body; nothing to answer.
		return
	}
	req := Request{Method: r.Method, Path: r.URL.Path, Body: body, Header: r.Header.Clone(), At: at}

	s.mu.Lock()
	mode, lim := s.mode, s.limiter
	s.mu.Unlock()

	a, ok := Answer{}, false
	if mode.Script != nil {
		a, ok = mode.Script(req)
	}
	if !ok && lim != nil && !lim.AllowN(at, 1) {
		a, ok = Answer{Status: http.StatusTooManyRequests, RetryAfter: mode.RateRetryAfter, Body: failure("rate limit exceeded")}, true
	}
	if !ok {
		a = mode.Answer
	}
	status, respBody := a.Status, a.Body
	if status == 0 {
		status, respBody = validate(r.Method, r.URL.Path, body)
	} else if respBody == "" {
		respBody = defaultBody(status)
	}
	if a.Hang || a.Drop || a.Reset {
		req.Status = 0
	} else {
		req.Status = status
	}

	s.mu.Lock()
	s.received = append(s.received, req)
	s.mu.Unlock()

	if a.Delay > 0 {
		t := time.NewTimer(a.Delay)
		select {
		case <-t.C:
		case <-r.Context().Done():
			t.Stop()
			return
		case <-down:
			t.Stop()
			return
		}
	}
	switch {
	case a.Hang:
		select {
		case <-r.Context().Done():
		case <-down:
		}
		return
	case a.Drop, a.Reset:
		hj, ok := w.(http.Hijacker)
		if !ok {
			return
		}
		conn, _, err := hj.Hijack()
		if err != nil {
			return
		}
		if tc, ok := conn.(*net.TCPConn); ok && a.Reset {
			_ = tc.SetLinger(0)
		}
		_ = conn.Close()
		return
	}
	w.Header().Set("Content-Type", "application/json")
	if a.RetryAfter != "" {
		w.Header().Set("Retry-After", a.RetryAfter)
	}
	w.WriteHeader(status)
	_, _ = io.WriteString(w, respBody)
}

func (s *Server) admin(w http.ResponseWriter, r *http.Request) {
	switch r.URL.Path {
	case AdminPrefix + "mode":
		if r.Method != http.MethodPut && r.Method != http.MethodPost {
			if r.Method == http.MethodGet {
				writeJSON(w, http.StatusOK, map[string]any{"status": "success", "mode": FormatMode(s.Mode())})
				return
			}
			writeJSON(w, http.StatusMethodNotAllowed, map[string]any{"status": "failure", "message": "use PUT with a mode spec as the body"})
			return
		}
		spec, _ := io.ReadAll(io.LimitReader(r.Body, 4096))
		m, err := ParseMode(strings.TrimSpace(string(spec)))
		if err != nil {
			writeJSON(w, http.StatusBadRequest, map[string]any{"status": "failure", "message": err.Error()})
			return
		}
		s.SetMode(m)
		writeJSON(w, http.StatusOK, map[string]any{"status": "success", "mode": FormatMode(m)})
	case AdminPrefix + "stats":
		writeJSON(w, http.StatusOK, s.stats())
	case AdminPrefix + "received":
		// One line per request, in arrival order: path, status and body as
		// sent, for the demo to show what arrived.
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		for _, rq := range s.Received() {
			fmt.Fprintf(w, "%s %d %s\n", rq.Path, rq.Status, rq.Body)
		}
	default:
		writeJSON(w, http.StatusNotFound, map[string]any{"status": "failure", "message": "no such admin endpoint"})
	}
}

// Stats is a summary of what the server received.
type Stats struct {
	Received int            `json:"received"`
	ByStatus map[string]int `json:"by_status"`
	ByPath   map[string]int `json:"by_path"`
	Mode     string         `json:"mode"`
}

func (s *Server) stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := Stats{Received: len(s.received), ByStatus: map[string]int{}, ByPath: map[string]int{}, Mode: FormatMode(s.mode)}
	for _, r := range s.received {
		st.ByStatus[strconv.Itoa(r.Status)]++
		st.ByPath[r.Path]++
	}
	return st
}

// Stats summarises what the server received.
func (s *Server) Stats() Stats { return s.stats() }

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func failure(msg string) string {
	b, _ := json.Marshal(map[string]string{"status": "failure", "message": msg})
	return string(b)
}

const success = `{"status":"success"}`

func defaultBody(status int) string {
	if status >= 200 && status < 300 {
		return success
	}
	return failure(strings.ToLower(http.StatusText(status)))
}

// validate checks a request the way upstream does and returns the status and
// body to answer with.
func validate(method, path string, body []byte) (int, string) {
	var identify bool
	switch path {
	case "/api/v1/track":
	case "/api/v1/identify":
		identify = true
	default:
		return http.StatusNotFound, failure("no such endpoint: " + path)
	}
	if method != http.MethodPost {
		return http.StatusMethodNotAllowed, failure("use POST")
	}
	if len(body) > MaxBodyBytes {
		return http.StatusRequestEntityTooLarge, failure("body too large")
	}
	var obj map[string]json.RawMessage
	dec := json.NewDecoder(bytes.NewReader(body))
	if err := dec.Decode(&obj); err != nil || obj == nil {
		return http.StatusBadRequest, failure("body must be a JSON object")
	}
	if _, err := dec.Token(); err != io.EOF {
		return http.StatusBadRequest, failure("body must be a single JSON object")
	}
	str := func(key string) (string, bool, string) {
		raw, ok := obj[key]
		if !ok {
			return "", false, ""
		}
		var v string
		if err := json.Unmarshal(raw, &v); err != nil {
			return "", true, key + " must be a string"
		}
		return v, true, ""
	}
	isObject := func(key string) string {
		raw, ok := obj[key]
		if !ok {
			return ""
		}
		raw = bytes.TrimSpace(raw)
		if len(raw) == 0 || raw[0] != '{' {
			return key + " must be an object"
		}
		return ""
	}
	if v, _, bad := str("apiKey"); bad != "" {
		return http.StatusBadRequest, failure(bad)
	} else if v == "" {
		return http.StatusBadRequest, failure("apiKey is required")
	}
	if !identify {
		if v, _, bad := str("event"); bad != "" {
			return http.StatusBadRequest, failure(bad)
		} else if v == "" {
			return http.StatusBadRequest, failure("event is required")
		}
		if bad := isObject("properties"); bad != "" {
			return http.StatusBadRequest, failure(bad)
		}
	} else if bad := isObject("traits"); bad != "" {
		return http.StatusBadRequest, failure(bad)
	}
	uid, _, bad := str("userId")
	if bad != "" {
		return http.StatusBadRequest, failure(bad)
	}
	aid, _, bad := str("anonymousId")
	if bad != "" {
		return http.StatusBadRequest, failure(bad)
	}
	if uid == "" && aid == "" {
		return http.StatusBadRequest, failure("userId or anonymousId is required")
	}
	if ts, present, bad := str("timestamp"); bad != "" {
		return http.StatusBadRequest, failure(bad)
	} else if present {
		if _, err := time.Parse(time.RFC3339Nano, ts); err != nil {
			return http.StatusBadRequest, failure("timestamp must be an ISO-8601 date-time")
		}
	}
	return http.StatusOK, success
}

// ParseMode reads a mode from a comma-separated spec, for flags and the admin
// endpoint. Keys: status=N, body=TEXT, retry-after=VALUE, delay=DURATION,
// hang, drop, reset, rate=N (requests per second), burst=N,
// rate-retry-after=VALUE. "" and "normal" are the zero Mode.
func ParseMode(spec string) (Mode, error) {
	var m Mode
	if spec == "" || spec == "normal" {
		return m, nil
	}
	for _, part := range strings.Split(spec, ",") {
		key, val, _ := strings.Cut(strings.TrimSpace(part), "=")
		var err error
		switch key {
		case "status":
			m.Status, err = strconv.Atoi(val)
			if err == nil && (m.Status < 100 || m.Status > 999) {
				err = errors.New("out of range")
			}
		case "body":
			m.Body = val
		case "retry-after":
			m.RetryAfter = val
		case "delay":
			m.Delay, err = time.ParseDuration(val)
		case "hang":
			m.Hang = true
		case "drop":
			m.Drop = true
		case "reset":
			m.Reset = true
		case "rate":
			m.RateLimit, err = strconv.ParseFloat(val, 64)
		case "burst":
			m.RateBurst, err = strconv.Atoi(val)
		case "rate-retry-after":
			m.RateRetryAfter = val
		default:
			return Mode{}, fmt.Errorf("upstreamtest: unknown mode key %q", key)
		}
		if err != nil {
			return Mode{}, fmt.Errorf("upstreamtest: mode key %q: bad value %q: %v", key, val, err)
		}
	}
	return m, nil
}

// FormatMode is the spec ParseMode would read back as m (Script aside).
func FormatMode(m Mode) string {
	var parts []string
	add := func(k, v string) { parts = append(parts, k+"="+v) }
	if m.Status != 0 {
		add("status", strconv.Itoa(m.Status))
	}
	if m.Body != "" {
		add("body", m.Body)
	}
	if m.RetryAfter != "" {
		add("retry-after", m.RetryAfter)
	}
	if m.Delay != 0 {
		add("delay", m.Delay.String())
	}
	if m.Hang {
		parts = append(parts, "hang")
	}
	if m.Drop {
		parts = append(parts, "drop")
	}
	if m.Reset {
		parts = append(parts, "reset")
	}
	if m.RateLimit > 0 {
		add("rate", strconv.FormatFloat(m.RateLimit, 'g', -1, 64))
	}
	if m.RateBurst > 0 {
		add("burst", strconv.Itoa(m.RateBurst))
	}
	if m.RateRetryAfter != "" {
		add("rate-retry-after", m.RateRetryAfter)
	}
	if m.Script != nil {
		parts = append(parts, "script")
	}
	if len(parts) == 0 {
		return "normal"
	}
	sort.Strings(parts)
	return strings.Join(parts, ",")
}
