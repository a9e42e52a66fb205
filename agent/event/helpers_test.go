package event

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"reflect"
	"testing"
	"time"
	"unicode/utf8"
)

// testNow is a receipt time in a non-UTC zone; it stamps as testStamp.
var testNow = time.Date(2024, 2, 29, 13, 4, 5, 678_999_999, time.FixedZone("CET", 3600))

const testStamp = "2024-02-29T12:04:05.678Z"

var testDefaults = Defaults{Now: testNow, APIKey: "cfg-key"}

// decodeObject decodes a JSON object the way encoding/json does (last
// duplicate wins), keeping numbers as text.
func decodeObject(b []byte) (map[string]any, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var m map[string]any
	if err := dec.Decode(&m); err != nil {
		return nil, err
	}
	if m == nil {
		return nil, errors.New("not an object")
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("data after the object")
	}
	return m, nil
}

// checkAccepted verifies the promises Prepare makes about an accepted body:
// the output is a valid UTF-8 JSON object that decodes to the input plus
// exactly the stamped members, and preparing it again changes nothing.
func checkAccepted(t *testing.T, kind Kind, in, out []byte, d Defaults) {
	t.Helper()
	if !json.Valid(out) || !utf8.Valid(out) {
		t.Fatalf("output is not valid JSON in UTF-8: %q", out)
	}
	want, err := decodeObject(in)
	if err != nil {
		t.Fatalf("accepted input does not decode with encoding/json: %v\ninput: %q", err, in)
	}
	if v, ok := want["timestamp"]; !ok || v == nil {
		now := d.Now
		if now.IsZero() {
			// Stamped with time.Now(); compare what was stamped.
			got, _ := decodeObject(out)
			s, _ := got["timestamp"].(string)
			ts, err := time.Parse(time.RFC3339Nano, s)
			if err != nil || time.Since(ts) > time.Minute || len(s) != len(testStamp) {
				t.Fatalf("stamped timestamp %q is not a recent millisecond UTC time", s)
			}
			want["timestamp"] = s
		} else {
			want["timestamp"] = now.UTC().Truncate(time.Millisecond).Format("2006-01-02T15:04:05.000Z")
		}
	}
	if v, ok := want["apiKey"]; !ok || v == nil || v == "" {
		want["apiKey"] = d.APIKey
	}
	got, err := decodeObject(out)
	if err != nil {
		t.Fatalf("output does not decode: %v\noutput: %q", err, out)
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("output decodes to\n%v\nwant\n%v\ninput:  %q\noutput: %q", got, want, in, out)
	}
	again, err := Prepare(nil, kind, out, d)
	if err != nil {
		t.Fatalf("Prepare(output) = %v; want it accepted\noutput: %q", err, out)
	}
	if !bytes.Equal(again, out) {
		t.Fatalf("Prepare is not idempotent:\nonce:  %q\ntwice: %q", out, again)
	}
}
