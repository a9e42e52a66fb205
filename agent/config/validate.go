package config

import (
	"fmt"
	"math"
	"net"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"unicode"
)

// Limits enforced by Validate.
const (
	// maxUnixPath is the size of sun_path on macOS and the BSDs (Linux has
	// 108); one byte is kept for the terminating NUL.
	maxUnixPath = 104
	// maxBodyLimit caps listen.max_body_bytes: an analytics event is a few
	// kilobytes, and the agent buffers one body per request in memory.
	maxBodyLimit    = 64 << 20
	maxConcurrency  = 1024
	maxFileModeBits = 0o777
)

// Validate checks every key and returns an *Error listing every problem, or
// nil. Parse and Load call it; call it again after changing a Config in code.
// Problems it returns carry no line numbers: a Config does not remember where
// it came from. It does not normalise, so enum values must be lower-case.
func (c Config) Validate() error {
	if p := c.problems(); len(p) > 0 {
		return &Error{Problems: p}
	}
	return nil
}

// problems returns every rule c breaks, in the order of the keys.
func (c Config) problems() []Problem {
	var ps []Problem
	add := func(key, format string, args ...any) {
		ps = append(ps, Problem{Key: key, Message: fmt.Sprintf(format, args...)})
	}

	// listen
	l := c.Listen
	if l.HTTP == "" && l.Unix == "" {
		add("listen", "at least one of `listen.http` and `listen.unix` must be set; both are empty, so trackd would accept no events")
	}
	if l.HTTP != "" {
		if why := checkHostPort(l.HTTP); why != "" {
			add("listen.http", "`listen.http` must be host:port with an explicit host, such as 127.0.0.1:8790 or [::1]:8790 (empty disables TCP); got %q: %s", l.HTTP, why)
		}
	}
	if len(l.Unix) >= maxUnixPath {
		add("listen.unix", "`listen.unix` must be shorter than %d bytes, the size of sun_path, the kernel's limit on a Unix socket path; got %d bytes (%q)", maxUnixPath, len(l.Unix), l.Unix)
	}
	if l.UnixMode > maxFileModeBits {
		add("listen.unix_mode", "`listen.unix_mode` must be permission bits no greater than 0777, such as 0660; got %s", l.UnixMode)
	}
	if l.MaxBodyBytes < 1 || l.MaxBodyBytes > maxBodyLimit {
		add("listen.max_body_bytes", "`listen.max_body_bytes` must be between 1 and %d (64MiB); got %d", maxBodyLimit, l.MaxBodyBytes)
	}
	if strings.ContainsFunc(l.AuthToken.Reveal(), func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }) {
		// The value is never quoted: it is a secret.
		add("listen.auth_token", "`listen.auth_token` must not contain spaces or control characters, which cannot survive an HTTP Authorization header")
	}

	// upstream
	u := c.Upstream
	if why := checkUpstreamURL(u.URL); why != "" {
		add("upstream.url", "`upstream.url` must be an absolute http or https URL with a host and no query or fragment, such as https://api.browsee.io; got %q: %s", redactURL(u.URL), why)
	}
	if u.Timeout <= 0 {
		add("upstream.timeout", "`upstream.timeout` must be positive, such as 10s; got %s", u.Timeout)
	}
	if math.IsNaN(u.Rate) || math.IsInf(u.Rate, 0) || u.Rate < 0 {
		add("upstream.rate", "`upstream.rate` must be a finite number of requests per second, at least 0 (0 means no ceiling); got %v", u.Rate)
	}
	if u.Burst < 1 {
		add("upstream.burst", "`upstream.burst` must be at least 1; got %d", u.Burst)
	}
	if u.Concurrency < 1 || u.Concurrency > maxConcurrency {
		add("upstream.concurrency", "`upstream.concurrency` must be between 1 and %d; got %d", maxConcurrency, u.Concurrency)
	}
	if u.Retry.Initial <= 0 {
		add("upstream.retry.initial", "`upstream.retry.initial` must be positive, such as 1s; got %s", u.Retry.Initial)
	}
	if u.Retry.Max <= 0 {
		add("upstream.retry.max", "`upstream.retry.max` must be positive, such as 5m; got %s", u.Retry.Max)
	} else if u.Retry.Initial > 0 && u.Retry.Max < u.Retry.Initial {
		add("upstream.retry.max", "`upstream.retry.max` must be at least `upstream.retry.initial` (%s); got %s", u.Retry.Initial, u.Retry.Max)
	}

	// spool
	s := c.Spool
	if s.Path == "" {
		add("spool.path", "`spool.path` must be the path of the spool file, such as /var/lib/trackd/spool.db; got an empty string")
	}
	if s.MaxBytes <= 0 {
		add("spool.max_bytes", "`spool.max_bytes` must be positive, such as 1GiB; got %d", s.MaxBytes)
	} else if l.MaxBodyBytes > 0 && s.MaxBytes/2 < l.MaxBodyBytes {
		add("spool.max_bytes", "`spool.max_bytes` must be at least twice `listen.max_body_bytes` (%d bytes) so that one event always fits; got %d", 2*l.MaxBodyBytes, s.MaxBytes)
	}
	if s.MaxAge <= 0 {
		add("spool.max_age", "`spool.max_age` must be positive, such as 168h; got %s", s.MaxAge)
	}
	checkEnum(add, "spool.when_full", s.WhenFull, whenFullValues)

	// log
	checkEnum(add, "log.level", c.Log.Level, logLevelValues)
	checkEnum(add, "log.format", c.Log.Format, logFormatValues)

	// shutdown
	if c.Shutdown.Timeout <= 0 {
		add("shutdown.timeout", "`shutdown.timeout` must be positive, such as 20s; got %s", c.Shutdown.Timeout)
	}
	return ps
}

func checkEnum(add func(string, string, ...any), key, v string, allowed []string) {
	if !slices.Contains(allowed, v) {
		add(key, "`%s` must be one of %s; got %q", key, strings.Join(allowed, ", "), v)
	}
}

// checkHostPort says what is wrong with a listen address, or "".
func checkHostPort(addr string) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		if ae, ok := err.(*net.AddrError); ok {
			if strings.Contains(ae.Err, "too many colons") {
				return "too many colons; an IPv6 address must be in brackets, as in [::1]:8790"
			}
			return ae.Err
		}
		return err.Error()
	}
	if host == "" {
		return "the host is missing (write 127.0.0.1 for this machine only, 0.0.0.0 for every interface)"
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 || strings.HasPrefix(port, "+") {
		return "the port must be a number from 0 to 65535"
	}
	if strings.Contains(host, ":") || strings.HasPrefix(addr, "[") {
		if !strings.HasPrefix(addr, "[") {
			return "an IPv6 address must be in brackets"
		}
		if _, err := netip.ParseAddr(host); err != nil || !strings.Contains(host, ":") {
			return "the part in brackets must be an IPv6 address"
		}
		return ""
	}
	if _, err := netip.ParseAddr(host); err == nil {
		return ""
	}
	if !isHostname(host) {
		return "the host must be an IP address or a host name"
	}
	return ""
}

// isHostname reports whether s is a plausible DNS name: dot-separated labels
// of letters, digits and hyphens.
func isHostname(s string) bool {
	if len(s) > 253 {
		return false
	}
	for label := range strings.SplitSeq(strings.TrimSuffix(s, "."), ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for _, r := range label {
			if !(r == '-' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9') {
				return false
			}
		}
	}
	return true
}

// checkUpstreamURL says what is wrong with upstream.url, or "".
func checkUpstreamURL(raw string) string {
	if raw == "" {
		return "it is empty"
	}
	u, err := url.Parse(raw)
	if err != nil {
		return "it does not parse"
	}
	switch {
	case u.Scheme != "http" && u.Scheme != "https":
		return "the scheme must be http or https"
	case u.Opaque != "":
		return "the scheme must be followed by //"
	case u.Host == "" || u.Hostname() == "":
		return "the host is missing"
	case u.User != nil:
		return "it must not hold credentials; use `upstream.api_key`"
	case u.RawQuery != "" || u.ForceQuery:
		return "it must not have a query"
	case u.Fragment != "" || strings.Contains(raw, "#"):
		return "it must not have a fragment"
	}
	if p := u.Port(); p != "" {
		if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 {
			return "the port must be a number from 1 to 65535"
		}
	}
	return ""
}

// redactURL hides the user information of a URL, which may be a credential,
// before the URL goes into a message.
func redactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		if strings.Contains(raw, "@") {
			return "(not shown: it may hold credentials)"
		}
		return raw
	}
	if u.User == nil {
		return raw
	}
	u.User = nil
	return strings.Replace(u.String(), "//", "//"+redacted+"@", 1)
}
