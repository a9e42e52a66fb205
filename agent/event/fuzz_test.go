package event

import (
	"bytes"
	"encoding/json"
	"errors"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

// FuzzPrepare checks Prepare's promises on arbitrary bodies. The seed
// corpus is in testdata/fuzz/FuzzPrepare. kind's low bit picks Track or
// Identify; its next bit runs without a configured API key; its third bit
// uses a configured key that needs escaping.
func FuzzPrepare(f *testing.F) {
	f.Add(byte(0), []byte(benchComplete))
	f.Add(byte(1), []byte(`{"userId":"u","timestamp":null,"apiKey":""}`))
	f.Fuzz(func(t *testing.T, kind byte, body []byte) {
		k := Track
		if kind&1 != 0 {
			k = Identify
		}
		d := Defaults{Now: testNow, APIKey: "fuzz-key"}
		if kind&2 != 0 {
			d.APIKey = ""
		}
		if kind&4 != 0 {
			d.APIKey = "fuzz \"key\" \\ \n é"
		}

		dst := []byte("dst")
		out, err := Prepare(dst, k, body, d)
		if ref, decided := refField(k, body, d); decided {
			var e *Error
			switch {
			case ref == "" && err != nil:
				t.Fatalf("reference accepts %q, Prepare says %v", body, err)
			case ref != "" && !errors.As(err, &e):
				t.Fatalf("reference rejects %q (%s), Prepare says %v", body, ref, err)
			case ref != "" && e.Field != ref:
				t.Fatalf("reference rejects %q for %s, Prepare for %s: %s", body, ref, e.Field, e.Message)
			}
		}
		if err != nil {
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("error %v (%T) is not an *Error", err, err)
			}
			if e.Field == "" || e.Message == "" {
				t.Fatalf("error %#v lacks a Field or Message", e)
			}
			if string(out) != "dst" {
				t.Fatalf("on error Prepare returned %q, want dst unchanged", out)
			}
			if d.APIKey != "" && strings.Contains(e.Message, d.APIKey) {
				t.Fatalf("message %q shows the configured key", e.Message)
			}
			if strings.HasPrefix(e.Message, "body is not valid JSON") && json.Valid(body) {
				t.Fatalf("%q: encoding/json says the body is valid", e.Message)
			}
			if strings.Contains(e.Message, "UTF-8") && utf8.Valid(body) {
				t.Fatalf("%q: the body is valid UTF-8", e.Message)
			}
			return
		}
		if !bytes.HasPrefix(out, []byte("dst")) {
			t.Fatalf("output %q does not start with dst", out)
		}
		out = out[len("dst"):]
		if !json.Valid(body) || !utf8.Valid(body) {
			t.Fatalf("accepted a body that is not valid JSON in UTF-8: %q", body)
		}
		checkAccepted(t, k, body, out, d)
	})
}

// FuzzTimestamp compares the date-time check with the reference model.
func FuzzTimestamp(f *testing.F) {
	for _, s := range append(validTimestamps, invalidTimestamps...) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if got, want := validTimestamp([]byte(s)), refTimestamp(s); got != want {
			t.Fatalf("validTimestamp(%q) = %v, reference says %v", s, got, want)
		}
	})
}

// refField is an independent model of Prepare's rules built on
// encoding/json. It returns the Field Prepare must reject body for, or "" if
// it must accept it; decided is false for bodies whose syntax it leaves to
// the other checks (not valid JSON or UTF-8).
func refField(kind Kind, body []byte, d Defaults) (field string, decided bool) {
	if !json.Valid(body) || !utf8.Valid(body) {
		return "", false
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return "", false
	}
	m, ok := v.(map[string]any)
	if !ok || depth(v) > maxDepth {
		return "body", true
	}
	isString := func(name string) bool { _, ok := m[name].(string); return ok }
	nonEmpty := func(name string) bool { s, _ := m[name].(string); return s != "" }
	isObject := func(name string) bool { _, ok := m[name].(map[string]any); return ok }
	present := func(name string) bool { _, ok := m[name]; return ok }
	nullOrAbsent := func(name string) bool { return m[name] == nil }
	if kind == Track {
		if !nonEmpty("event") {
			return "event", true
		}
		if present("properties") && !isObject("properties") {
			return "properties", true
		}
	} else if present("traits") && !isObject("traits") {
		return "traits", true
	}
	for _, id := range []string{"userId", "anonymousId"} {
		if !nullOrAbsent(id) && !isString(id) {
			return id, true
		}
	}
	if !nonEmpty("userId") && !nonEmpty("anonymousId") {
		return "userId", true
	}
	if !nullOrAbsent("timestamp") && (!isString("timestamp") || !refTimestamp(m["timestamp"].(string))) {
		return "timestamp", true
	}
	if !nullOrAbsent("apiKey") && !isString("apiKey") {
		return "apiKey", true
	}
	if !nonEmpty("apiKey") && d.APIKey == "" {
		return "apiKey", true
	}
	return "", true
}

func depth(v any) int {
	n := 0
	switch v := v.(type) {
	case map[string]any:
		for _, e := range v {
			n = max(n, depth(e))
		}
	case []any:
		for _, e := range v {
			n = max(n, depth(e))
		}
	default:
		return 0
	}
	return n + 1
}

var refTimestampRE = regexp.MustCompile(`^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2})(?::(\d{2})(?:\.\d+)?)?(?:Z|[+-](\d{2}):?(\d{2}))?$`)

func refTimestamp(s string) bool {
	sub := refTimestampRE.FindStringSubmatch(s)
	if sub == nil {
		return false
	}
	n := make([]int, len(sub))
	for i, v := range sub[1:] {
		n[i+1], _ = strconv.Atoi(v) // "" (an optional part left out) is 0
	}
	year, month, day, hour, minute, sec, oh, om := n[1], n[2], n[3], n[4], n[5], n[6], n[7], n[8]
	if month < 1 || month > 12 || day < 1 || time.Date(year, time.Month(month), day, 0, 0, 0, 0, time.UTC).Day() != day {
		return false
	}
	return hour <= 23 && minute <= 59 && sec <= 60 && oh <= 23 && om <= 59
}
