package config

import (
	"errors"
	"os"
	"reflect"
	"testing"
)

// FuzzParse checks that Parse never panics, that every rejection is an *Error
// with at least one problem naming a key or the file, and that whatever it
// accepts is valid and survives Marshal and Parse again.
func FuzzParse(f *testing.F) {
	f.Add([]byte(everyKeySet))
	if data, err := os.ReadFile(examplePath); err == nil {
		f.Add(data)
	}
	for _, tc := range badValues {
		f.Add([]byte(nested(tc.key, tc.value)))
	}
	f.Add([]byte("log: &l\n  level: *l\n"))
	f.Add([]byte("listen:\n  auth_token: ${X}$${Y}$$\n"))
	env := envOf(map[string]string{"X": "x"})
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse(data, env)
		if err != nil {
			var ce *Error
			if !errors.As(err, &ce) || len(ce.Problems) == 0 {
				t.Fatalf("Parse error %T %v is not an *Error with problems", err, err)
			}
			for _, p := range ce.Problems {
				if p.Message == "" {
					t.Fatalf("empty message in %+v", p)
				}
			}
			return
		}
		if err := c.Validate(); err != nil {
			t.Fatalf("Parse accepted a config that Validate rejects: %v", err)
		}
		out, err := c.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		back, err := Parse(out, env)
		if err != nil {
			t.Fatalf("Parse(Marshal()) = %v\n%s", err, out)
		}
		if c.Listen.AuthToken != "" {
			c.Listen.AuthToken = redacted
		}
		if c.Upstream.APIKey != "" {
			c.Upstream.APIKey = redacted
		}
		if !reflect.DeepEqual(back, c) {
			t.Fatalf("round trip changed the config:\n%#v\n%#v\n%s", c, back, out)
		}
	})
}
