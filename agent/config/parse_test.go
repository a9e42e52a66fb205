package config

import (
	"math"
	"reflect"
	"strings"
	"testing"
	"time"
)

// everyKeySet sets every key to a value other than its default.
const everyKeySet = `listen:
  http: "[::1]:9000"
  unix: /run/trackd/trackd.sock
  unix_mode: "0600"
  max_body_bytes: 128KiB
  auth_token: tok-123
upstream:
  url: http://localhost:8080/prefix/
  api_key: key-456
  timeout: 1m30s
  rate: 0.5
  burst: 3
  concurrency: 16
  retry:
    initial: 250ms
    max: 1h
spool:
  path: /tmp/spool.db
  max_bytes: 10MB
  max_age: 24h
  when_full: drop_oldest
log:
  level: debug
  format: json
shutdown:
  timeout: 45s
`

func TestParseSetsEveryKey(t *testing.T) {
	got := mustParse(t, everyKeySet, nil)
	want := Config{
		Listen: Listen{HTTP: "[::1]:9000", Unix: "/run/trackd/trackd.sock", UnixMode: 0o600, MaxBodyBytes: 128 << 10, AuthToken: "tok-123"},
		Upstream: Upstream{
			URL: "http://localhost:8080/prefix", APIKey: "key-456", Timeout: Duration(90 * time.Second),
			Rate: 0.5, Burst: 3, Concurrency: 16,
			Retry: Retry{Initial: Duration(250 * time.Millisecond), Max: Duration(time.Hour)},
		},
		Spool:    Spool{Path: "/tmp/spool.db", MaxBytes: 10_000_000, MaxAge: Duration(24 * time.Hour), WhenFull: WhenFullDropOldest},
		Log:      Log{Level: "debug", Format: "json"},
		Shutdown: Shutdown{Timeout: Duration(45 * time.Second)},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("Parse gave\n%#v\nwant\n%#v", got, want)
	}
	for _, k := range leafKeys(reflect.TypeFor[Config](), "") {
		if !strings.Contains(everyKeySet, lastPart(k)+":") {
			t.Errorf("everyKeySet does not set `%s`", k)
		}
	}
}

func lastPart(key string) string { return key[strings.LastIndex(key, ".")+1:] }

func TestParseKeepsDefaultsForKeysLeftOut(t *testing.T) {
	c := mustParse(t, "upstream:\n  retry:\n    max: 10m\n", nil)
	want := Default()
	want.Upstream.Retry.Max = Duration(10 * time.Minute)
	if !reflect.DeepEqual(c, want) {
		t.Fatalf("got %#v, want %#v", c, want)
	}
}

// badValues holds, for every key, values that must be rejected. Each value is
// written at its key by nested(), so the problem must be reported on the line
// nestedLine(key), name the key in backticks and contain want.
var badValues = []struct {
	name  string
	key   string
	value string
	want  string
}{
	{"listen must be a mapping, not a value", "listen", "yes", "must be a mapping with the keys http, unix, unix_mode, max_body_bytes, auth_token; got a single value"},
	{"listen must be a mapping, not a list", "listen", "[a, b]", "got a list"},

	{"listen.http needs a port", "listen.http", "localhost", "missing port"},
	{"listen.http needs a host", "listen.http", `":8790"`, "the host is missing"},
	{"listen.http port is a number", "listen.http", "127.0.0.1:http", "port must be a number from 0 to 65535"},
	{"listen.http port is at most 65535", "listen.http", "127.0.0.1:65536", "port must be a number from 0 to 65535"},
	{"listen.http port is not negative", "listen.http", "127.0.0.1:-1", "port must be a number"},
	{"listen.http IPv6 needs brackets", "listen.http", "::1:8790", "must be in brackets"},
	{"listen.http brackets hold only IPv6", "listen.http", `"[127.0.0.1]:80"`, "must be an IPv6 address"},
	{"listen.http host is a name or an IP", "listen.http", "bad_host!:80", "IP address or a host name"},
	{"listen.http is a string, not a list", "listen.http", "[127.0.0.1, 8790]", "must be a string; got a list"},
	{"listen.http is a string, not a mapping", "listen.http", "{host: x}", "must be a string; got a mapping"},

	{"listen.unix is under the sun_path limit", "listen.unix", "/tmp/" + strings.Repeat("s", 100) + ".sock", "shorter than 104 bytes, the size of sun_path"},
	{"listen.unix is a string", "listen.unix", "[a]", "must be a string; got a list"},

	{"listen.unix_mode digits are octal", "listen.unix_mode", "0999", "must be an octal file mode such as 0660"},
	{"listen.unix_mode is not symbolic", "listen.unix_mode", "rw-rw----", "octal file mode"},
	{"listen.unix_mode is at most 0777", "listen.unix_mode", "01777", "no greater than 0777"},
	{"listen.unix_mode is not negative", "listen.unix_mode", "-0660", "octal file mode"},
	{"listen.unix_mode is a value", "listen.unix_mode", "{}", "must be an octal file mode such as \"0660\"; got a mapping"},
	{"listen.unix_mode has a value", "listen.unix_mode", "", "has no value"},

	{"listen.max_body_bytes is at least 1", "listen.max_body_bytes", "0", "between 1 and 67108864 (64MiB); got 0"},
	{"listen.max_body_bytes is at most 64MiB", "listen.max_body_bytes", "65MiB", "between 1 and 67108864"},
	{"listen.max_body_bytes is not negative", "listen.max_body_bytes", "-1", "must not be negative"},
	{"listen.max_body_bytes is a size", "listen.max_body_bytes", "lots", "KiB, MiB, GiB, TiB"},
	{"listen.max_body_bytes unit is known", "listen.max_body_bytes", "64XB", "KiB, MiB, GiB, TiB"},
	{"listen.max_body_bytes is whole bytes", "listen.max_body_bytes", "1.5B", "whole number of bytes"},
	{"listen.max_body_bytes does not overflow", "listen.max_body_bytes", "99999999TiB", "too large"},
	{"listen.max_body_bytes is not a list", "listen.max_body_bytes", "[1]", "got a list"},

	{"listen.auth_token has no spaces", "listen.auth_token", `"two words"`, "must not contain spaces or control characters"},
	{"listen.auth_token is a string", "listen.auth_token", "{a: b}", "must be a string; got a mapping"},

	{"upstream must be a mapping", "upstream", "https://api.browsee.io", "`upstream` must be a mapping with the keys url, api_key, timeout, rate, burst, concurrency, retry"},

	{"upstream.url is http or https", "upstream.url", "ftp://example.com", "scheme must be http or https"},
	{"upstream.url is absolute", "upstream.url", "api.browsee.io", "scheme must be http or https"},
	{"upstream.url has a host", "upstream.url", "https://", "host is missing"},
	{"upstream.url has a host, not a path", "upstream.url", "https:///api", "host is missing"},
	{"upstream.url has no query", "upstream.url", `"https://h.example/?x=1"`, "must not have a query"},
	{"upstream.url has no fragment", "upstream.url", `"https://h.example/#top"`, "must not have a fragment"},
	{"upstream.url has no credentials", "upstream.url", "https://user:pw@h.example", "must not hold credentials"},
	{"upstream.url is not empty", "upstream.url", `""`, "it is empty"},
	{"upstream.url is not null", "upstream.url", "~", "it is empty"},
	{"upstream.url port is in range", "upstream.url", "https://h.example:99999", "port must be a number from 1 to 65535"},

	{"upstream.api_key is a string", "upstream.api_key", "[k]", "must be a string; got a list"},

	{"upstream.timeout needs a unit", "upstream.timeout", "10", "is a bare number \"10\"; use a unit, e.g. 10s"},
	{"upstream.timeout zero needs a unit too", "upstream.timeout", "0", "use a unit"},
	{"upstream.timeout is not negative", "upstream.timeout", "-5s", "must not be negative"},
	{"upstream.timeout is positive", "upstream.timeout", "0s", "must be positive, such as 10s; got 0s"},
	{"upstream.timeout is a duration", "upstream.timeout", "ten", "must be a duration with a unit (ns, us, ms, s, m, h)"},
	{"upstream.timeout has no day unit", "upstream.timeout", "7d", "must be a duration with a unit"},
	{"upstream.timeout has a value", "upstream.timeout", "", "has no value; it must be a duration with a unit"},

	{"upstream.rate is not negative", "upstream.rate", "-1", "at least 0 (0 means no ceiling); got -1"},
	{"upstream.rate is finite", "upstream.rate", ".inf", "must be a finite number"},
	{"upstream.rate is a number, not NaN", "upstream.rate", ".nan", "must be a finite number"},
	{"upstream.rate overflowing is not finite", "upstream.rate", "1e999", "must be a finite number"},
	{"upstream.rate is a number", "upstream.rate", "fast", "must be a number; got \"fast\""},
	{"upstream.rate is not a boolean", "upstream.rate", "true", "must be a number"},

	{"upstream.burst is at least 1", "upstream.burst", "0", "must be at least 1; got 0"},
	{"upstream.burst is whole", "upstream.burst", "1.5", "must be a whole number; got \"1.5\""},
	{"upstream.burst is a number", "upstream.burst", "lots", "must be a whole number"},

	{"upstream.concurrency is at least 1", "upstream.concurrency", "0", "between 1 and 1024; got 0"},
	{"upstream.concurrency is at most 1024", "upstream.concurrency", "1025", "between 1 and 1024; got 1025"},
	{"upstream.concurrency is a number", "upstream.concurrency", "four", "must be a whole number"},
	{"upstream.concurrency fits an int", "upstream.concurrency", "99999999999999999999", "must be a whole number"},

	{"upstream.retry is a mapping", "upstream.retry", "1s", "`upstream.retry` must be a mapping with the keys initial, max"},
	{"upstream.retry.initial is positive", "upstream.retry.initial", "0s", "must be positive, such as 1s"},
	{"upstream.retry.initial needs a unit", "upstream.retry.initial", "5", "use a unit"},
	{"upstream.retry.max is positive", "upstream.retry.max", "0s", "must be positive, such as 5m"},
	{"upstream.retry.max is at least initial", "upstream.retry.max", "500ms", "must be at least `upstream.retry.initial` (1s); got 500ms"},

	{"spool.path is not empty", "spool.path", `""`, "must be the path of the spool file"},
	{"spool.path is not null", "spool.path", "null", "must be the path of the spool file"},
	{"spool.path is a string", "spool.path", "[a]", "must be a string"},

	{"spool.max_bytes is positive", "spool.max_bytes", "0", "must be positive, such as 1GiB; got 0"},
	{"spool.max_bytes holds two bodies", "spool.max_bytes", "100000", "at least twice `listen.max_body_bytes` (131072 bytes) so that one event always fits; got 100000"},
	{"spool.max_bytes is a size", "spool.max_bytes", "1 gigabyte", "must be an integer number of bytes or a number with a unit"},
	{"spool.max_bytes is not negative", "spool.max_bytes", "-5", "must not be negative"},

	{"spool.max_age is positive", "spool.max_age", "0h", "must be positive, such as 168h"},
	{"spool.max_age is not negative", "spool.max_age", "-1h", "must not be negative"},
	{"spool.max_age needs a unit", "spool.max_age", "168", "use a unit"},

	{"spool.when_full is an enum", "spool.when_full", "block", "must be one of reject, drop_oldest; got \"block\""},
	{"spool.when_full is not empty", "spool.when_full", `""`, "must be one of reject, drop_oldest; got \"\""},

	{"log.level is an enum", "log.level", "verbose", "`log.level` must be one of debug, info, warn, error; got \"verbose\""},
	{"log.level is not warning", "log.level", "warning", "must be one of debug, info, warn, error"},
	{"log.level error quotes the value as written", "log.level", "LOUD", "got \"LOUD\""},
	{"log.format is an enum", "log.format", "xml", "`log.format` must be one of text, json; got \"xml\""},

	{"shutdown.timeout is positive", "shutdown.timeout", "0s", "must be positive, such as 20s"},
	{"shutdown.timeout is a duration", "shutdown.timeout", "soon", "must be a duration"},
	{"shutdown is a mapping", "shutdown", "20s", "`shutdown` must be a mapping with the keys timeout"},
}

func TestBadValuesAreRejectedNamingKeyAndLine(t *testing.T) {
	for _, tc := range badValues {
		t.Run(tc.name, func(t *testing.T) {
			doc := nested(tc.key, tc.value)
			ps := mustFail(t, doc, nil)
			p := problemFor(t, ps, tc.key)
			if want := nestedLine(tc.key); p.Line != want {
				t.Errorf("line = %d, want %d; problem: %s", p.Line, want, p.Message)
			}
			if !strings.Contains(p.Message, "`"+tc.key+"`") {
				t.Errorf("message does not name `%s`: %s", tc.key, p.Message)
			}
			if !strings.Contains(p.Message, tc.want) {
				t.Errorf("message %q does not contain %q", p.Message, tc.want)
			}
			if len(ps) != 1 {
				t.Errorf("got %d problems, want 1:\n%s", len(ps), fmtProblems(ps))
			}
		})
	}
}

func TestBadValuesCoverEveryKey(t *testing.T) {
	covered := map[string]bool{}
	for _, tc := range badValues {
		covered[tc.key] = true
	}
	for _, k := range leafKeys(reflect.TypeFor[Config](), "") {
		if !covered[k] {
			t.Errorf("no bad-value test for `%s`", k)
		}
	}
}

func TestGoodValuesAreAccepted(t *testing.T) {
	for _, tc := range []struct {
		name  string
		key   string
		value string
		check func(Config) bool
	}{
		{"listen.http may be empty when unix is set", "listen.http", `""`, func(c Config) bool { return c.Listen.HTTP == "" }},
		{"listen.http accepts a host name", "listen.http", "localhost:80", func(c Config) bool { return c.Listen.HTTP == "localhost:80" }},
		{"listen.http accepts port 0", "listen.http", "127.0.0.1:0", func(c Config) bool { return c.Listen.HTTP == "127.0.0.1:0" }},
		{"listen.http accepts all interfaces", "listen.http", "0.0.0.0:8790", func(c Config) bool { return c.Listen.HTTP == "0.0.0.0:8790" }},
		{"listen.http accepts bracketed IPv6", "listen.http", `"[::]:8790"`, func(c Config) bool { return c.Listen.HTTP == "[::]:8790" }},
		{"listen.http accepts an IPv6 zone", "listen.http", `"[fe80::1%eth0]:8790"`, func(c Config) bool { return c.Listen.HTTP == "[fe80::1%eth0]:8790" }},
		{"listen.http null means empty", "listen.http", "", nil},
		{"listen.unix accepts 103 bytes", "listen.unix", "/tmp/" + strings.Repeat("s", 98), func(c Config) bool { return len(c.Listen.Unix) == 103 }},
		{"listen.unix_mode bare number is octal", "listen.unix_mode", "660", func(c Config) bool { return c.Listen.UnixMode == 0o660 }},
		{"listen.unix_mode leading zero is octal", "listen.unix_mode", "0600", func(c Config) bool { return c.Listen.UnixMode == 0o600 }},
		{"listen.unix_mode 0o prefix is octal", "listen.unix_mode", "0o640", func(c Config) bool { return c.Listen.UnixMode == 0o640 }},
		{"listen.unix_mode quoted is octal", "listen.unix_mode", `"0777"`, func(c Config) bool { return c.Listen.UnixMode == 0o777 }},
		{"listen.unix_mode 0 is allowed", "listen.unix_mode", "0", func(c Config) bool { return c.Listen.UnixMode == 0 }},
		{"listen.max_body_bytes accepts 64MiB", "listen.max_body_bytes", "64MiB", func(c Config) bool { return c.Listen.MaxBodyBytes == 64<<20 }},
		{"listen.max_body_bytes accepts 1", "listen.max_body_bytes", "1", func(c Config) bool { return c.Listen.MaxBodyBytes == 1 }},
		{"listen.max_body_bytes accepts a quoted integer", "listen.max_body_bytes", `"4096"`, func(c Config) bool { return c.Listen.MaxBodyBytes == 4096 }},
		{"upstream.url keeps a path prefix", "upstream.url", "https://proxy.example/browsee", func(c Config) bool { return c.Upstream.URL == "https://proxy.example/browsee" }},
		{"upstream.url loses a trailing slash", "upstream.url", "https://api.browsee.io/", func(c Config) bool { return c.Upstream.URL == "https://api.browsee.io" }},
		{"upstream.rate 0 means no ceiling", "upstream.rate", "0", func(c Config) bool { return c.Upstream.Rate == 0 }},
		{"upstream.rate accepts a quoted number", "upstream.rate", `"2.5"`, func(c Config) bool { return c.Upstream.Rate == 2.5 }},
		{"upstream.concurrency accepts 1024", "upstream.concurrency", "1024", func(c Config) bool { return c.Upstream.Concurrency == 1024 }},
		{"upstream.retry.max may equal initial", "upstream.retry.max", "1s", func(c Config) bool { return c.Upstream.Retry.Max.D() == time.Second }},
		{"spool.max_bytes accepts twice the body", "spool.max_bytes", "128KiB", func(c Config) bool { return c.Spool.MaxBytes == 128<<10 }},
		{"spool.when_full is case-insensitive", "spool.when_full", "DROP_OLDEST", func(c Config) bool { return c.Spool.WhenFull == WhenFullDropOldest }},
		{"log.level is case-insensitive", "log.level", "WARN", func(c Config) bool { return c.Log.Level == "warn" }},
		{"log.format is case-insensitive", "log.format", "JSON", func(c Config) bool { return c.Log.Format == "json" }},
		{"shutdown.timeout accepts compound durations", "shutdown.timeout", "1m30s", func(c Config) bool { return c.Shutdown.Timeout.D() == 90*time.Second }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			doc := nested(tc.key, tc.value)
			if strings.HasPrefix(tc.key, "listen.http") {
				doc += "  unix: /tmp/t.sock\n"
			}
			c := mustParse(t, doc, nil)
			if tc.check != nil && !tc.check(c) {
				t.Errorf("%s: %s gave %#v", tc.key, tc.value, c)
			}
		})
	}
}

func TestNoListenerIsAnError(t *testing.T) {
	ps := mustFail(t, "listen:\n  http: \"\"\n  unix: \"\"\n", nil)
	p := problemFor(t, ps, "listen")
	if p.Line != 1 || !strings.Contains(p.Message, "at least one of `listen.http` and `listen.unix` must be set") {
		t.Errorf("got %+v", p)
	}
}

func TestUnknownKeysAreErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		doc  string
		key  string
		line int
		want string
	}{
		{"unknown top-level key", "log:\n  level: info\nlisten_http: x\n", "listen_http", 3,
			"unknown key `listen_http`; the top level takes listen, upstream, spool, log, shutdown"},
		{"misspelt top-level key gets a suggestion", "\nlistn:\n  http: x\n", "listn", 2,
			"unknown key `listn` (did you mean `listen`?)"},
		{"keys are case-sensitive", "Listen:\n  http: x\n", "Listen", 1, "(did you mean `listen`?)"},
		{"unknown key in a section", "listen:\n  http: 127.0.0.1:1\n  htp: x\n", "listen.htp", 3,
			"unknown key `listen.htp` (did you mean `listen.http`?); `listen` takes http, unix, unix_mode, max_body_bytes, auth_token"},
		{"unknown key two levels down", "upstream:\n  retry:\n    initial: 1s\n    maximum: 1m\n", "upstream.retry.maximum", 4,
			"unknown key `upstream.retry.maximum`; `upstream.retry` takes initial, max"},
		{"a key of one section in another", "spool:\n  level: debug\n", "spool.level", 2, "`spool` takes path, max_bytes, max_age, when_full"},
		{"a key of a section at the top", "timeout: 5s\n", "timeout", 1, "unknown key `timeout`"},
		{"a key with a map value is still unknown", "extra:\n  a: 1\n  b: 2\n", "extra", 1, "unknown key `extra`"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ps := mustFail(t, tc.doc, nil)
			if len(ps) != 1 {
				t.Errorf("got %d problems, want 1:\n%s", len(ps), fmtProblems(ps))
			}
			p := problemFor(t, ps, tc.key)
			if p.Line != tc.line {
				t.Errorf("line = %d, want %d", p.Line, tc.line)
			}
			if !strings.Contains(p.Message, tc.want) {
				t.Errorf("message %q does not contain %q", p.Message, tc.want)
			}
		})
	}
}

func TestStructuralProblems(t *testing.T) {
	for _, tc := range []struct {
		name string
		doc  string
		key  string
		line int
		want string
	}{
		{"a key set twice", "log:\n  level: info\n  format: text\n  level: debug\n", "log.level", 4,
			"`log.level` is set twice; it was first set on line 2"},
		{"a section set twice", "log:\n  level: info\nlog:\n  format: json\n", "log", 3, "`log` is set twice; it was first set on line 1"},
		{"the file is a list", "- listen\n- spool\n", "", 1, "the configuration must be a mapping with the keys listen, upstream, spool, log, shutdown; got a list"},
		{"the file is a single value", "trackd\n", "", 1, "the configuration must be a mapping"},
		{"a key that is not a name", "listen:\n  [a, b]: c\n", "listen", 2, "keys must be plain names; got a list"},
		{"merge keys are refused", "base: &b\n  level: info\nlog:\n  <<: *b\n", "log", 4, "merge keys (<<) are not supported"},
		{"YAML syntax error has its line", "log:\n  level: info\n  format: \"text\n", "", 0, "invalid YAML:"},
		{"bad indentation is a syntax error", "log:\n  level: info\n format: text\n", "", 0, "invalid YAML:"},
		{"tabs are a syntax error", "log:\n\tlevel: info\n", "", 2, "invalid YAML:"},
		{"an unquoted IPv6 address gets a hint", "listen:\n  http: [::1]:8790\n", "", 0, "(line 2: a value that starts with [ is read as a YAML list; quote an IPv6 address"},
		{"a second document is refused", "log:\n  level: info\n---\nlog:\n  level: debug\n", "", 3, "the file must hold a single YAML document"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ps := mustFail(t, tc.doc, nil)
			var p Problem
			found := false
			for _, q := range ps {
				if q.Key == tc.key && strings.Contains(q.Message, tc.want) {
					p, found = q, true
				}
			}
			if !found {
				t.Fatalf("no problem for key %q containing %q; got:\n%s", tc.key, tc.want, fmtProblems(ps))
			}
			if tc.line != 0 && p.Line != tc.line {
				t.Errorf("line = %d, want %d (%s)", p.Line, tc.line, p.Message)
			}
		})
	}
}

func TestAnchorsAndAliasesWork(t *testing.T) {
	c := mustParse(t, "upstream:\n  timeout: &t 30s\nshutdown:\n  timeout: *t\n", nil)
	if c.Upstream.Timeout.D() != 30*time.Second || c.Shutdown.Timeout.D() != 30*time.Second {
		t.Errorf("aliased durations = %s, %s", c.Upstream.Timeout, c.Shutdown.Timeout)
	}
	// An alias to a section, and an anchor that contains itself, must not
	// loop or crash.
	c = mustParse(t, "log: &l\n  level: debug\n", nil)
	if c.Log.Level != "debug" {
		t.Errorf("level = %q", c.Log.Level)
	}
	mustFail(t, "log: &l\n  level: *l\n", nil)
}

func TestNullSectionsKeepDefaultsAndNullNumbersAreErrors(t *testing.T) {
	c := mustParse(t, "log:\n  # level: debug\nlisten:\n  unix:\n", nil)
	if c.Log != Default().Log || c.Listen.Unix != "" {
		t.Errorf("got %#v", c)
	}
	ps := mustFail(t, "upstream:\n  burst: ~\n", nil)
	p := problemFor(t, ps, "upstream.burst")
	if p.Line != 2 || !strings.Contains(p.Message, "`upstream.burst` has no value; it must be a whole number") {
		t.Errorf("got %+v", p)
	}
}

func TestStringKeysTakeNonStringScalarsVerbatim(t *testing.T) {
	c := mustParse(t, "listen:\n  auth_token: 0x1F\nupstream:\n  api_key: 00123\n", nil)
	if c.Listen.AuthToken.Reveal() != "0x1F" || c.Upstream.APIKey.Reveal() != "00123" {
		t.Errorf("got %q %q, want the text as written", c.Listen.AuthToken.Reveal(), c.Upstream.APIKey.Reveal())
	}
}

func TestParseReportsEveryProblemAtOnceInLineOrder(t *testing.T) {
	doc := `listen:
  http: nowhere
  colour: blue
upstream:
  timeout: 10
  burst: many
  concurrency: 0
spool:
  max_bytes: 1KiB
  when_full: block
log:
  level: loud
shutdown: 5s
`
	ps := mustFail(t, doc, nil)
	want := []struct {
		key  string
		line int
	}{
		{"listen.http", 2},
		{"listen.colour", 3},
		{"upstream.timeout", 5},
		{"upstream.burst", 6},
		{"upstream.concurrency", 7},
		{"spool.max_bytes", 9},
		{"spool.when_full", 10},
		{"log.level", 12},
		{"shutdown", 13},
	}
	if len(ps) != len(want) {
		t.Fatalf("got %d problems, want %d:\n%s", len(ps), len(want), fmtProblems(ps))
	}
	for i, w := range want {
		if ps[i].Key != w.key || ps[i].Line != w.line {
			t.Errorf("problem %d = %s:%d, want %s:%d", i, ps[i].Key, ps[i].Line, w.key, w.line)
		}
	}
}

func TestProblemsWithoutALineComeLast(t *testing.T) {
	// A cross-key rule is reported against the later key; when the file did
	// not set that key, the problem has no line and comes after the problems
	// that have one.
	doc := "listen:\n  max_body_bytes: 64MiB\nlog:\n  level: loud\nspool:\n  max_bytes: 100MiB\n"
	ps := mustFail(t, doc, nil)
	if len(ps) != 2 || ps[0].Key != "log.level" || ps[1].Key != "spool.max_bytes" || ps[1].Line != 6 {
		t.Fatalf("got:\n%s", fmtProblems(ps))
	}
	ps = mustFail(t, "log:\n  level: loud\nupstream:\n  retry:\n    initial: 10m\n  burst: 0\n", nil)
	if len(ps) != 3 || ps[0].Key != "log.level" || ps[1].Key != "upstream.burst" || ps[2].Key != "upstream.retry.max" || ps[2].Line != 0 {
		t.Fatalf("got:\n%s", fmtProblems(ps))
	}
}

func TestAnUndecodableValueIsReportedOnce(t *testing.T) {
	// A value that cannot be decoded keeps its default; validation must not
	// add a second, confusing problem about the same key.
	ps := mustFail(t, "upstream:\n  retry:\n    initial: soon\n", nil)
	if len(ps) != 1 {
		t.Fatalf("got:\n%s", fmtProblems(ps))
	}
}

func TestErrorFormatsOneProblemPerLine(t *testing.T) {
	e := &Error{File: "/etc/trackd/config.yaml", Problems: []Problem{
		{Key: "spool.max_bytes", Line: 12, Message: "`spool.max_bytes` must be positive, such as 1GiB; got 0"},
		{Key: "log.level", Message: "`log.level` must be one of debug, info, warn, error; got \"verbose\""},
	}}
	want := "/etc/trackd/config.yaml:12: `spool.max_bytes` must be positive, such as 1GiB; got 0\n" +
		"/etc/trackd/config.yaml: `log.level` must be one of debug, info, warn, error; got \"verbose\""
	if got := e.Error(); got != want {
		t.Errorf("Error() =\n%s\nwant\n%s", got, want)
	}
	e.File = ""
	want = "line 12: `spool.max_bytes` must be positive, such as 1GiB; got 0\n" +
		"`log.level` must be one of debug, info, warn, error; got \"verbose\""
	if got := e.Error(); got != want {
		t.Errorf("Error() without a file =\n%s\nwant\n%s", got, want)
	}
}

func TestSizeUnits(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Size
	}{
		{"0", 0},
		{"65536", 65536},
		{"10B", 10},
		{"1KiB", 1024},
		{"512MiB", 512 << 20},
		{"1GiB", 1 << 30},
		{"2TiB", 2 << 40},
		{"1KB", 1000},
		{"5MB", 5_000_000},
		{"1GB", 1_000_000_000},
		{"1TB", 1_000_000_000_000},
		{"1.5KiB", 1536},
		{"512 MiB", 512 << 20},
		{"1gib", 1 << 30},
		{" 7 ", 7},
	} {
		got, err := parseSize(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", tc.in, got, err, tc.want)
		}
	}
}

func TestDurationsFormatCompactly(t *testing.T) {
	for _, tc := range []struct {
		d    time.Duration
		want string
	}{
		{0, "0s"},
		{10 * time.Second, "10s"},
		{5 * time.Minute, "5m"},
		{168 * time.Hour, "168h"},
		{90 * time.Minute, "1h30m"},
		{time.Hour + time.Second, "1h0m1s"},
		{1500 * time.Millisecond, "1.5s"},
		{250 * time.Millisecond, "250ms"},
	} {
		if got := Duration(tc.d).String(); got != tc.want {
			t.Errorf("Duration(%v).String() = %q, want %q", tc.d, got, tc.want)
		}
		back, err := parseDuration(Duration(tc.d).String())
		if err != nil || back.D() != tc.d {
			t.Errorf("parseDuration(%q) = %v, %v", Duration(tc.d).String(), back, err)
		}
	}
}

func TestFileModeFormatsInOctal(t *testing.T) {
	for m, want := range map[FileMode]string{0o660: "0660", 0o7: "0007", 0o1777: "01777", 0: "0000"} {
		if got := m.String(); got != want {
			t.Errorf("FileMode(%o).String() = %q, want %q", uint32(m), got, want)
		}
	}
}

func TestFloatParsing(t *testing.T) {
	if v, err := parseFloat("-.inf"); err != nil || !math.IsInf(v, -1) {
		t.Errorf("-.inf = %v, %v", v, err)
	}
	if v, err := parseFloat("1e3"); err != nil || v != 1000 {
		t.Errorf("1e3 = %v, %v", v, err)
	}
}
