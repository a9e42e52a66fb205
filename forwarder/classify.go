package forwarder

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unicode/utf8"
)

// class is what an upstream answer means for the record that was sent.
type class uint8

const (
	// delivered: upstream has the event; delete the record.
	delivered class = iota + 1
	// permanent: upstream refused this event for good; dead-letter it.
	permanent
	// halt: the key, URL or certificate is wrong, not the event; pause all
	// sending with backoff and keep the record.
	halt
	// retryable: not delivered yet; send the record again later.
	retryable
)

func (c class) String() string {
	switch c {
	case delivered:
		return "delivered"
	case permanent:
		return "permanent"
	case halt:
		return "halt"
	case retryable:
		return "retryable"
	}
	return "unknown"
}

// reasonBytes is how much of a refusing answer's body is kept as the dead
// letter's reason.
const reasonBytes = 1 << 10

// outcome is a classified answer.
type outcome struct {
	class  class
	status int    // HTTP status; 0 when there was no answer
	kind   string // what went wrong, for Stats and logs ("" when delivered)
	// retryAfter is the Retry-After of a 429 or 503, when hasRetryAfter;
	// it may be negative or absurdly long, which the caller caps.
	retryAfter    time.Duration
	hasRetryAfter bool
	// reason is, for permanent, the first KiB of the body (or the status
	// text when the body is empty); for the rest, a short description.
	reason string
}

// classify turns the result of one request into an outcome. It is the only
// place that decides what an answer means:
//
//	2xx {"status":"success"}, empty or non-JSON body  delivered
//	2xx {"status":"failure"}                          permanent
//	3xx (a redirect: upstream.url is wrong)           halt
//	401, 403, 407                                     halt
//	408, 429                                          retryable
//	other 4xx (400, 404, 413, 422, ...)               permanent
//	5xx and anything else                             retryable
//	certificate not trusted                           halt
//	timeout, refused, reset, DNS, other network       retryable
//
// A Retry-After header is read on 429 and 503 only. now is when the answer
// arrived, to turn an HTTP-date into a wait.
func classify(status int, header http.Header, body []byte, err error, now time.Time) outcome {
	if err != nil {
		return classifyError(err)
	}
	o := outcome{status: status}
	switch {
	case status >= 200 && status < 300:
		var v struct {
			Status string `json:"status"`
		}
		if json.Unmarshal(body, &v) == nil && strings.EqualFold(v.Status, "failure") {
			o.class, o.kind, o.reason = permanent, "refused", reasonOf(status, body)
			return o
		}
		o.class = delivered
	case status >= 300 && status < 400:
		o.class, o.kind = halt, "redirect"
		o.reason = "upstream answered " + strconv.Itoa(status) + " (redirect to " + strconvQuote(header.Get("Location")) + "); fix upstream.url"
	case status == http.StatusUnauthorized, status == http.StatusForbidden, status == http.StatusProxyAuthRequired:
		o.class, o.kind = halt, "unauthorized"
		o.reason = "upstream answered " + strconv.Itoa(status) + "; check upstream.api_key and the proxy settings"
	case status == http.StatusRequestTimeout:
		o.class, o.kind, o.reason = retryable, "status_408", "upstream answered 408"
	case status == http.StatusTooManyRequests:
		o.class, o.kind, o.reason = retryable, "throttled", "upstream answered 429"
		o.retryAfter, o.hasRetryAfter = parseRetryAfter(header.Get("Retry-After"), now)
	case status >= 400 && status < 500:
		o.class, o.kind, o.reason = permanent, "refused", reasonOf(status, body)
	case status >= 500 && status < 600:
		o.class, o.kind, o.reason = retryable, "status_5xx", "upstream answered "+strconv.Itoa(status)
		if status == http.StatusServiceUnavailable {
			o.retryAfter, o.hasRetryAfter = parseRetryAfter(header.Get("Retry-After"), now)
		}
	default:
		o.class, o.kind, o.reason = retryable, "status_other", "upstream answered "+strconv.Itoa(status)
	}
	return o
}

func strconvQuote(s string) string {
	if s == "" {
		return "nowhere"
	}
	return strconv.Quote(s)
}

// classifyError names a transport error. Everything is retryable except a
// certificate upstream's name or chain does not match, which no retry fixes.
func classifyError(err error) outcome {
	o := outcome{class: retryable, reason: err.Error()}
	var (
		dnsErr  *net.DNSError
		certErr *tls.CertificateVerificationError
		unknown x509.UnknownAuthorityError
		host    x509.HostnameError
		invalid x509.CertificateInvalidError
		netErr  net.Error
	)
	switch {
	case errors.As(err, &certErr), errors.As(err, &unknown), errors.As(err, &host), errors.As(err, &invalid):
		o.class, o.kind = halt, "tls"
	case errors.As(err, &dnsErr):
		o.kind = "dns"
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &netErr) && netErr.Timeout():
		o.kind = "timeout"
	case errors.Is(err, syscall.ECONNREFUSED):
		o.kind = "refused"
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE), errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		o.kind = "reset"
	default:
		o.kind = "network"
	}
	return o
}

// reasonOf is a dead letter's reason: the first KiB of the body, as valid
// UTF-8, or the status text when the body is empty.
func reasonOf(status int, body []byte) string {
	if len(body) > reasonBytes {
		body = body[:reasonBytes]
		// Drop a rune the cut split in two rather than keep half of it.
		for i := len(body) - 1; i >= 0 && i >= len(body)-utf8.UTFMax; i-- {
			if utf8.RuneStart(body[i]) {
				if !utf8.FullRune(body[i:]) {
					body = body[:i]
				}
				break
			}
		}
	}
	s := strings.ToValidUTF8(strings.TrimSpace(string(body)), "\uFFFD")
	if s == "" {
		s = strconv.Itoa(status) + " " + http.StatusText(status)
	}
	return s
}

// parseRetryAfter reads a Retry-After value: delta-seconds or an HTTP-date.
// The wait may be negative (a date in the past, or a negative number); it is
// the caller's to cap.
func parseRetryAfter(v string, now time.Time) (time.Duration, bool) {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0, false
	}
	if n, err := strconv.ParseInt(v, 10, 64); err == nil {
		const maxSeconds = int64(1<<63-1) / int64(time.Second)
		if n > maxSeconds {
			n = maxSeconds
		} else if n < -maxSeconds {
			n = -maxSeconds
		}
		return time.Duration(n) * time.Second, true
	}
	if t, err := http.ParseTime(v); err == nil {
		return t.Sub(now), true
	}
	return 0, false
}

// maskAPIKey replaces the event's own apiKey in reason with "***". Upstream
// may quote the key back ("apiKey sk-... is not valid"); the reason is
// logged and kept with the dead letter, where a secret must not appear.
func maskAPIKey(reason string, body []byte) string {
	var ev struct {
		APIKey string `json:"apiKey"`
	}
	if json.Unmarshal(body, &ev) != nil || len(ev.APIKey) < 4 {
		return reason
	}
	return strings.ReplaceAll(reason, ev.APIKey, "***")
}
