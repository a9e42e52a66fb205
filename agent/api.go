package agent

import (
	"compress/gzip"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/trackd/trackd/agent/event"
	"github.com/trackd/trackd/spool"
)

// Paths of the ingest API; they are upstream's, so that switching an app to
// trackd is a change of base URL only.
const (
	pathTrack    = "/api/v1/track"
	pathIdentify = "/api/v1/identify"
	pathHealthz  = "/healthz"
	pathReadyz   = "/readyz"
	pathMetrics  = "/metrics"
	pathStatus   = "/status"
)

// appender is the part of the spool the API writes to; a small interface so
// tests can make storing fail.
type appender interface {
	Append(ctx context.Context, entries ...spool.Entry) error
	Accepting() error
}

// api serves the ingest endpoints and the health probes.
type api struct {
	store        appender
	dead         DeadLetterStore // nil: no dead-letter endpoints
	maxBodyBytes int64
	tokenHash    *[sha256.Size]byte // nil: no auth
	apiKey       string
	now          func() time.Time
	log          *slog.Logger
	metrics      *metrics
	status       func() any // body of GET /status
	closing      atomic.Bool

	bufs sync.Pool // *[]byte scratch for bodies and prepared events

	// storeFailing remembers that the last append failed with a storage
	// error, so a disk that fails for every request logs once, not per event.
	storeFailing atomic.Bool
}

var (
	successBody = []byte(`{"status":"success"}`)
	jsonType    = []string{"application/json"}
)

func (a *api) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var kind event.Kind
	switch r.URL.Path {
	case pathTrack:
		kind = event.Track
	case pathIdentify:
		kind = event.Identify
	case pathHealthz:
		a.serveProbe(w, r, nil)
		return
	case pathReadyz:
		a.serveProbe(w, r, a.readiness())
		return
	case pathStatus:
		a.serveStatus(w, r)
		return
	case pathDeadLetters, pathRequeue:
		if a.dead == nil {
			break
		}
		if r.URL.Path == pathRequeue {
			a.serveRequeue(w, r)
		} else {
			a.serveDeadLetters(w, r)
		}
		return
	case pathMetrics:
		if !allowGet(w, r) {
			return
		}
		a.metrics.handler.ServeHTTP(w, r)
		return
	}
	if kind == 0 {
		a.fail(w, r, http.StatusNotFound, "no such endpoint "+strconv.Quote(r.URL.Path)+"; trackd serves POST "+pathTrack+" and POST "+pathIdentify)
		return
	}
	a.serveIngest(w, r, kind)
}

func (a *api) serveIngest(w http.ResponseWriter, r *http.Request, kind event.Kind) {
	if !a.allowPost(w, r) || !a.requireToken(w, r) {
		return
	}
	if msg := unsupportedContentType(r.Header.Get("Content-Type")); msg != "" {
		a.fail(w, r, http.StatusUnsupportedMediaType, msg)
		return
	}
	if r.ContentLength > a.maxBodyBytes {
		a.tooLarge(w, r)
		return
	}

	bufp := a.getBuf()
	defer a.bufs.Put(bufp)
	body, status, msg := a.readBody(r, (*bufp)[:0])
	*bufp = body[:0]
	if status != 0 {
		if status == http.StatusRequestEntityTooLarge {
			a.tooLarge(w, r)
			return
		}
		a.fail(w, r, status, msg)
		return
	}

	now := a.now()
	outp := a.getBuf()
	defer a.bufs.Put(outp)
	out, err := event.Prepare((*outp)[:0], kind, body, event.Defaults{Now: now, APIKey: a.apiKey})
	*outp = out[:0]
	if err != nil {
		var ev *event.Error
		if errors.As(err, &ev) {
			a.fail(w, r, http.StatusBadRequest, ev.Message)
		} else {
			a.fail(w, r, http.StatusBadRequest, err.Error())
		}
		return
	}

	if a.closing.Load() {
		a.unavailable(w, r, 1, "trackd is shutting down; retry shortly")
		return
	}
	err = a.store.Append(r.Context(), spool.Entry{Kind: spoolKind(kind), Body: out, Received: now})
	if err != nil {
		a.storeFailed(w, r, err)
		return
	}
	if a.storeFailing.CompareAndSwap(true, false) {
		a.log.Info("storing events works again")
	}
	w.Header()["Content-Type"] = jsonType
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(successBody)
	a.metrics.requests(r.URL.Path, http.StatusOK)
}

func spoolKind(k event.Kind) spool.Kind {
	if k == event.Identify {
		return spool.KindIdentify
	}
	return spool.KindTrack
}

func (a *api) getBuf() *[]byte {
	if p, ok := a.bufs.Get().(*[]byte); ok {
		return p
	}
	b := make([]byte, 0, 4096)
	return &b
}

// readBody reads the request body into buf, never holding more than
// maxBodyBytes+1 bytes of it, and decompresses a gzip body under the same
// limit so a decompression bomb is refused, not inflated. It returns a
// non-zero status with a message when the body cannot be used.
func (a *api) readBody(r *http.Request, buf []byte) ([]byte, int, string) {
	var src io.Reader = r.Body
	switch enc := strings.ToLower(strings.TrimSpace(r.Header.Get("Content-Encoding"))); enc {
	case "", "identity":
	case "gzip", "x-gzip":
		// The compressed stream is bounded too: a gzip body that is larger
		// than its limit is refused before it is inflated.
		zr, err := gzip.NewReader(io.LimitReader(r.Body, a.maxBodyBytes+1))
		if err != nil {
			return buf, http.StatusBadRequest, "body is declared gzip but is not valid gzip: " + err.Error()
		}
		defer zr.Close()
		src = zr
	default:
		return buf, http.StatusUnsupportedMediaType, "Content-Encoding " + strconv.Quote(enc) + " is not supported; send identity or gzip"
	}
	limited := io.LimitReader(src, a.maxBodyBytes+1)
	for {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		n, err := limited.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if int64(len(buf)) > a.maxBodyBytes {
			return buf, http.StatusRequestEntityTooLarge, ""
		}
		if err == io.EOF {
			return buf, 0, ""
		}
		if err != nil {
			var mbe *http.MaxBytesError
			if errors.As(err, &mbe) {
				return buf, http.StatusRequestEntityTooLarge, ""
			}
			return buf, http.StatusBadRequest, "could not read the request body: " + err.Error()
		}
	}
}

// unsupportedContentType accepts what a JSON client plausibly sends: no type,
// application/json and its +json relatives, and text/plain (sendBeacon and
// some minimal clients use it). It returns a message for anything else.
func unsupportedContentType(ct string) string {
	if ct == "" {
		return ""
	}
	mt, _, err := mime.ParseMediaType(ct)
	if err != nil {
		return "Content-Type " + strconv.Quote(ct) + " is malformed; send application/json"
	}
	switch {
	case mt == "application/json", mt == "text/plain", strings.HasPrefix(mt, "application/") && strings.HasSuffix(mt, "+json"):
		return ""
	}
	return "Content-Type " + strconv.Quote(mt) + " is not supported; send the event as application/json"
}

func (a *api) authorized(r *http.Request) bool {
	if a.tokenHash == nil {
		return true
	}
	h := r.Header.Get("Authorization")
	const prefix = "Bearer "
	if len(h) < len(prefix) || !strings.EqualFold(h[:len(prefix)], prefix) {
		return false
	}
	// Comparing fixed-size digests keeps the comparison constant-time in
	// the token's length as well as its content.
	got := sha256.Sum256([]byte(strings.TrimSpace(h[len(prefix):])))
	return subtle.ConstantTimeCompare(got[:], a.tokenHash[:]) == 1
}

func (a *api) storeFailed(w http.ResponseWriter, r *http.Request, err error) {
	switch {
	case errors.Is(err, spool.ErrFull):
		a.unavailable(w, r, 30, "trackd's spool is full (spool.max_bytes reached while upstream is behind); retry later")
	case errors.Is(err, spool.ErrClosed):
		a.unavailable(w, r, 1, "trackd is shutting down; retry shortly")
	case errors.Is(err, spool.ErrTooLarge):
		a.fail(w, r, http.StatusRequestEntityTooLarge, "event is larger than the whole spool (spool.max_bytes)")
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		a.unavailable(w, r, 1, "the request ended before the event was stored; retry")
	default:
		if a.storeFailing.CompareAndSwap(false, true) {
			a.log.Error("cannot store events; answering 503 until storing works again", "err", err)
		}
		a.unavailable(w, r, 5, "trackd could not store the event (storage error); retry later")
	}
}

func (a *api) tooLarge(w http.ResponseWriter, r *http.Request) {
	// The rest of an oversized body is not worth reading: close the
	// connection instead of draining it.
	w.Header().Set("Connection", "close")
	a.fail(w, r, http.StatusRequestEntityTooLarge, "body exceeds "+strconv.FormatInt(a.maxBodyBytes, 10)+" bytes (listen.max_body_bytes)")
}

func (a *api) unavailable(w http.ResponseWriter, r *http.Request, retryAfter int, msg string) {
	w.Header().Set("Retry-After", strconv.Itoa(retryAfter))
	a.fail(w, r, http.StatusServiceUnavailable, msg)
}

// fail answers in upstream's failure shape.
func (a *api) fail(w http.ResponseWriter, r *http.Request, status int, msg string) {
	writeJSON(w, status, failure{Status: "failure", Message: msg})
	a.metrics.requests(r.URL.Path, status)
}

type failure struct {
	Status  string `json:"status"`
	Message string `json:"message"`
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		b = []byte(`{"status":"failure","message":"internal error encoding the answer"}`)
		status = http.StatusInternalServerError
	}
	w.Header()["Content-Type"] = jsonType
	w.Header().Set("Content-Length", strconv.Itoa(len(b)+1))
	w.WriteHeader(status)
	_, _ = w.Write(append(b, '\n'))
}

// allowPost answers 405 with an Allow header to anything but POST.
func (a *api) allowPost(w http.ResponseWriter, r *http.Request) bool {
	if r.Method == http.MethodPost {
		return true
	}
	w.Header().Set("Allow", http.MethodPost)
	a.fail(w, r, http.StatusMethodNotAllowed, "method "+r.Method+" is not allowed; use POST")
	return false
}

func allowGet(w http.ResponseWriter, r *http.Request) bool {
	if r.Method == http.MethodGet || r.Method == http.MethodHead {
		return true
	}
	w.Header().Set("Allow", "GET, HEAD")
	writeJSON(w, http.StatusMethodNotAllowed, failure{Status: "failure", Message: "method " + r.Method + " is not allowed; use GET"})
	return false
}

// readiness says why trackd should not be sent events now, or nil.
func (a *api) readiness() error {
	if a.closing.Load() {
		return errors.New("trackd is shutting down")
	}
	return a.store.Accepting()
}

func (a *api) serveProbe(w http.ResponseWriter, r *http.Request, notReady error) {
	if !allowGet(w, r) {
		return
	}
	if notReady != nil {
		w.Header().Set("Retry-After", "1")
		writeJSON(w, http.StatusServiceUnavailable, failure{Status: "failure", Message: "not ready: " + notReady.Error()})
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "success"})
}

func (a *api) serveStatus(w http.ResponseWriter, r *http.Request) {
	if !allowGet(w, r) {
		return
	}
	if !a.requireToken(w, r) {
		return
	}
	writeJSON(w, http.StatusOK, a.status())
}
