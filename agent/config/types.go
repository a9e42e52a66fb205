package config

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"math/big"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// redacted is what a non-empty Secret prints as, everywhere.
const redacted = "***"

// Secret is a string that must not be printed: an API key or a bearer token.
//
// Every way of rendering it (fmt with any verb, including %v, %+v and %#v on
// a struct that holds it; log/slog; encoding/json; encoding.TextMarshaler;
// YAML) gives "***" when it is set and "" when it is empty, so a log line or
// `trackd check` shows whether a secret is configured but never what it is.
// Call Reveal at the single place that needs the value.
type Secret string

// Reveal returns the secret's value. Use it only where the value is sent,
// never where it could be logged.
func (s Secret) Reveal() string { return string(s) }

// String returns "***" for a non-empty secret and "" for an empty one.
func (s Secret) String() string {
	if s == "" {
		return ""
	}
	return redacted
}

// GoString makes %#v redact too.
func (s Secret) GoString() string { return s.String() }

// Format implements fmt.Formatter so that no verb can print the value: without
// it, a mistaken verb such as %d would print the raw string inside
// "%!d(config.Secret=...)".
func (s Secret) Format(f fmt.State, verb rune) {
	if verb == 'v' && f.Flag('#') {
		_, _ = f.Write([]byte(s.GoString()))
		return
	}
	_, _ = fmt.Fprintf(f, fmt.FormatString(f, verb), s.String())
}

// LogValue implements slog.LogValuer.
func (s Secret) LogValue() slog.Value { return slog.StringValue(s.String()) }

// MarshalText implements encoding.TextMarshaler.
func (s Secret) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// MarshalJSON implements json.Marshaler.
func (s Secret) MarshalJSON() ([]byte, error) { return json.Marshal(s.String()) }

// MarshalYAML implements yaml.Marshaler.
func (s Secret) MarshalYAML() (any, error) { return s.String(), nil }

// Duration is a time.Duration written in YAML as a string with a unit, such
// as "10s", "5m" or "168h". Negative durations and bare numbers are rejected.
type Duration time.Duration

// D returns d as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// String formats d compactly: "168h" rather than "168h0m0s".
func (d Duration) String() string {
	s := time.Duration(d).String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// MarshalText implements encoding.TextMarshaler.
func (d Duration) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := parseDuration(string(b))
	if err != nil {
		return fmt.Errorf("duration %w", err)
	}
	*d = v
	return nil
}

// MarshalYAML implements yaml.Marshaler.
func (d Duration) MarshalYAML() (any, error) { return d.String(), nil }

// UnmarshalYAML implements yaml.Unmarshaler.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	return unmarshalScalar(n, "duration", func(s string) error { return d.UnmarshalText([]byte(s)) })
}

// parseDuration accepts what time.ParseDuration accepts, except negative
// values and numbers without a unit. Its errors complete a sentence that
// starts with the key's name.
func parseDuration(s string) (Duration, error) {
	t := strings.TrimSpace(s)
	if _, err := strconv.ParseFloat(t, 64); err == nil {
		return 0, fmt.Errorf("is a bare number %q; use a unit, e.g. 10s", s)
	}
	d, err := time.ParseDuration(t)
	if err != nil {
		return 0, fmt.Errorf("must be a duration with a unit (ns, us, ms, s, m, h), such as 10s, 5m or 1h30m; got %q", s)
	}
	if d < 0 {
		return 0, fmt.Errorf("must not be negative; got %q", s)
	}
	return Duration(d), nil
}

// Size is a number of bytes. In YAML it is an integer or a string with a
// unit: B; KiB, MiB, GiB, TiB (powers of 1024); or KB, MB, GB, TB (powers of
// 1000, as disk makers count). Units are case-insensitive, a space may sit
// between number and unit, and a fraction is allowed when the result is a
// whole number of bytes ("1.5KiB" is 1536). It marshals back as an integer.
type Size int64

// UnmarshalText implements encoding.TextUnmarshaler.
func (z *Size) UnmarshalText(b []byte) error {
	v, err := parseSize(string(b))
	if err != nil {
		return fmt.Errorf("size %w", err)
	}
	*z = v
	return nil
}

// UnmarshalYAML implements yaml.Unmarshaler.
func (z *Size) UnmarshalYAML(n *yaml.Node) error {
	return unmarshalScalar(n, "size", func(s string) error { return z.UnmarshalText([]byte(s)) })
}

var sizeUnits = []struct {
	name string
	mult int64
}{
	{"B", 1},
	{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1 << 40},
	{"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"TB", 1e12},
}

const sizeHelp = "an integer number of bytes or a number with a unit (B, KiB, MiB, GiB, TiB; KB, MB, GB, TB are 1000-based), such as 65536 or 512MiB"

func parseSize(s string) (Size, error) {
	t := strings.TrimSpace(s)
	if strings.HasPrefix(t, "-") {
		return 0, fmt.Errorf("must not be negative; got %q", s)
	}
	i := strings.IndexFunc(t, func(r rune) bool { return (r < '0' || r > '9') && r != '.' })
	if i < 0 {
		i = len(t)
	}
	num, unit := t[:i], strings.TrimSpace(t[i:])
	mult := int64(-1)
	for _, u := range sizeUnits {
		if unit == "" || strings.EqualFold(unit, u.name) {
			mult = u.mult
			break
		}
	}
	r, ok := new(big.Rat).SetString(num)
	if num == "" || mult < 0 || !ok {
		return 0, fmt.Errorf("must be %s; got %q", sizeHelp, s)
	}
	r.Mul(r, new(big.Rat).SetInt64(mult))
	if !r.IsInt() {
		return 0, fmt.Errorf("must be a whole number of bytes; got %q", s)
	}
	if !r.Num().IsInt64() {
		return 0, fmt.Errorf("is too large; got %q", s)
	}
	return Size(r.Num().Int64()), nil
}

// FileMode holds Unix permission bits. In YAML it is written in octal, as a
// string ("0660") or a bare number (0660 or 660); the digits are always read
// as octal from the text in the file, never as YAML's decimal or 0o forms. A
// leading "0o" is accepted. It marshals as a string such as "0660".
type FileMode uint32

// String formats m in octal with a leading zero, such as "0660".
func (m FileMode) String() string { return fmt.Sprintf("0%03o", uint32(m)) }

// MarshalText implements encoding.TextMarshaler.
func (m FileMode) MarshalText() ([]byte, error) { return []byte(m.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (m *FileMode) UnmarshalText(b []byte) error {
	v, err := parseFileMode(string(b))
	if err != nil {
		return fmt.Errorf("file mode %w", err)
	}
	*m = v
	return nil
}

// MarshalYAML implements yaml.Marshaler.
func (m FileMode) MarshalYAML() (any, error) { return m.String(), nil }

// UnmarshalYAML implements yaml.Unmarshaler.
func (m *FileMode) UnmarshalYAML(n *yaml.Node) error {
	return unmarshalScalar(n, "file mode", func(s string) error { return m.UnmarshalText([]byte(s)) })
}

func parseFileMode(s string) (FileMode, error) {
	t := strings.TrimSpace(s)
	if len(t) > 2 && (t[:2] == "0o" || t[:2] == "0O") {
		t = t[2:]
	}
	v, err := strconv.ParseUint(t, 8, 32)
	if err != nil {
		return 0, fmt.Errorf("must be an octal file mode such as 0660; got %q", s)
	}
	return FileMode(v), nil
}

// parseInt reads a whole number in decimal.
func parseInt(s string) (int, error) {
	v, err := strconv.Atoi(strings.TrimSpace(s))
	if err != nil {
		return 0, fmt.Errorf("must be a whole number; got %q", s)
	}
	return v, nil
}

// parseFloat reads a number, including YAML's spellings of infinity and NaN
// (which validation then rejects with a clearer message).
func parseFloat(s string) (float64, error) {
	t := strings.TrimSpace(s)
	switch t {
	case ".inf", ".Inf", ".INF", "+.inf", "+.Inf", "+.INF":
		return math.Inf(1), nil
	case "-.inf", "-.Inf", "-.INF":
		return math.Inf(-1), nil
	case ".nan", ".NaN", ".NAN":
		return math.NaN(), nil
	}
	v, err := strconv.ParseFloat(t, 64)
	if err != nil && !errors.Is(err, strconv.ErrRange) {
		return 0, fmt.Errorf("must be a number; got %q", s)
	}
	return v, nil
}

// unmarshalScalar serves the UnmarshalYAML methods, used when these types are
// decoded by yaml.v3 directly rather than through Parse.
func unmarshalScalar(n *yaml.Node, what string, set func(string) error) error {
	if n.Kind != yaml.ScalarNode {
		return fmt.Errorf("line %d: a %s must be a scalar; got %s", n.Line, what, kindName(n))
	}
	if err := set(n.Value); err != nil {
		return fmt.Errorf("line %d: %w", n.Line, err)
	}
	return nil
}
