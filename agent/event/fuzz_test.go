package event

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"
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
