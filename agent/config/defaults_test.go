package config

import (
	"log/slog"
	"reflect"
	"testing"
	"time"
)

// leafKeys lists the dotted path of every leaf key of Config, from its yaml
// tags, so tests can check that they cover the whole schema.
func leafKeys(t reflect.Type, prefix string) []string {
	var keys []string
	for i := range t.NumField() {
		f := t.Field(i)
		key := joinKey(prefix, yamlName(f))
		if f.Type.Kind() == reflect.Struct {
			keys = append(keys, leafKeys(f.Type, key)...)
		} else {
			keys = append(keys, key)
		}
	}
	return keys
}

var defaultCases = []struct {
	key  string
	get  func(Config) any
	want any
}{
	{"listen.http", func(c Config) any { return c.Listen.HTTP }, "127.0.0.1:8790"},
	{"listen.unix", func(c Config) any { return c.Listen.Unix }, ""},
	{"listen.unix_mode", func(c Config) any { return c.Listen.UnixMode }, FileMode(0o660)},
	{"listen.max_body_bytes", func(c Config) any { return c.Listen.MaxBodyBytes }, Size(65536)},
	{"listen.auth_token", func(c Config) any { return c.Listen.AuthToken }, Secret("")},
	{"upstream.url", func(c Config) any { return c.Upstream.URL }, "https://api.browsee.io"},
	{"upstream.api_key", func(c Config) any { return c.Upstream.APIKey }, Secret("")},
	{"upstream.timeout", func(c Config) any { return c.Upstream.Timeout }, Duration(10 * time.Second)},
	{"upstream.rate", func(c Config) any { return c.Upstream.Rate }, 20.0},
	{"upstream.burst", func(c Config) any { return c.Upstream.Burst }, 20},
	{"upstream.concurrency", func(c Config) any { return c.Upstream.Concurrency }, 4},
	{"upstream.retry.initial", func(c Config) any { return c.Upstream.Retry.Initial }, Duration(time.Second)},
	{"upstream.retry.max", func(c Config) any { return c.Upstream.Retry.Max }, Duration(5 * time.Minute)},
	{"spool.path", func(c Config) any { return c.Spool.Path }, "/var/lib/trackd/spool.db"},
	{"spool.max_bytes", func(c Config) any { return c.Spool.MaxBytes }, Size(1073741824)},
	{"spool.max_age", func(c Config) any { return c.Spool.MaxAge }, Duration(168 * time.Hour)},
	{"spool.when_full", func(c Config) any { return c.Spool.WhenFull }, WhenFullReject},
	{"log.level", func(c Config) any { return c.Log.Level }, "info"},
	{"log.format", func(c Config) any { return c.Log.Format }, "text"},
	{"shutdown.timeout", func(c Config) any { return c.Shutdown.Timeout }, Duration(20 * time.Second)},
}

func TestEveryKeyHasItsDefault(t *testing.T) {
	sources := map[string]Config{
		"Default()":              Default(),
		"Parse of empty file":    mustParse(t, "", nil),
		"Parse of comments":      mustParse(t, "# nothing but a comment\n", nil),
		"Parse of empty map":     mustParse(t, "{}\n", nil),
		"Parse of bare ---":      mustParse(t, "---\n", nil),
		"Parse of empty section": mustParse(t, "listen:\nupstream:\n  retry:\nlog:\n", nil),
	}
	for name, c := range sources {
		for _, tc := range defaultCases {
			t.Run(name+"/"+tc.key, func(t *testing.T) {
				if got := tc.get(c); !reflect.DeepEqual(got, tc.want) {
					t.Errorf("%s = %#v, want %#v", tc.key, got, tc.want)
				}
			})
		}
	}
}

func TestDefaultCasesCoverEveryKey(t *testing.T) {
	covered := map[string]bool{}
	for _, tc := range defaultCases {
		covered[tc.key] = true
	}
	for _, k := range leafKeys(reflect.TypeFor[Config](), "") {
		if !covered[k] {
			t.Errorf("no default test for `%s`", k)
		}
	}
}

func TestDefaultIsValid(t *testing.T) {
	if err := Default().Validate(); err != nil {
		t.Fatalf("Default().Validate() = %v", err)
	}
}

func TestSlogLevelFollowsLogLevel(t *testing.T) {
	for _, tc := range []struct {
		level string
		want  slog.Level
	}{
		{"debug", slog.LevelDebug},
		{"info", slog.LevelInfo},
		{"warn", slog.LevelWarn},
		{"error", slog.LevelError},
		{"bogus", slog.LevelInfo},
	} {
		c := Default()
		c.Log.Level = tc.level
		if got := c.SlogLevel(); got != tc.want {
			t.Errorf("Config.SlogLevel() for %q = %v, want %v", tc.level, got, tc.want)
		}
		if got := c.Log.SlogLevel(); got != tc.want {
			t.Errorf("Log.SlogLevel() for %q = %v, want %v", tc.level, got, tc.want)
		}
	}
}
