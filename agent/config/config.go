package config

import (
	"bytes"
	"fmt"
	"log/slog"
	"path/filepath"
	"time"

	"gopkg.in/yaml.v3"
)

// Config is trackd's whole configuration. Its YAML form is documented key by
// key in config.example.yaml at the root of the repository.
type Config struct {
	Listen   Listen   `yaml:"listen"`
	Upstream Upstream `yaml:"upstream"`
	Spool    Spool    `yaml:"spool"`
	Log      Log      `yaml:"log"`
	Shutdown Shutdown `yaml:"shutdown"`
}

// Listen says where trackd accepts events from applications.
type Listen struct {
	// HTTP is the host:port of the TCP listener; empty disables it.
	HTTP string `yaml:"http"`
	// Unix is the path of a Unix socket; empty disables it.
	Unix string `yaml:"unix"`
	// UnixMode is the permission bits given to the socket file.
	UnixMode FileMode `yaml:"unix_mode"`
	// MaxBodyBytes caps the size of one request body.
	MaxBodyBytes Size `yaml:"max_body_bytes"`
	// AuthToken, when set, must be sent by clients as
	// "Authorization: Bearer <token>".
	AuthToken Secret `yaml:"auth_token"`
}

// Upstream says where and how fast events are forwarded.
type Upstream struct {
	// URL is the base URL; /api/v1/track and /api/v1/identify are appended.
	// It has no trailing slash after Parse or Load.
	URL string `yaml:"url"`
	// APIKey is put into events that carry no apiKey of their own.
	APIKey Secret `yaml:"api_key"`
	// Timeout bounds one upstream request.
	Timeout Duration `yaml:"timeout"`
	// Rate is the most requests per second sent upstream; 0 means no ceiling.
	Rate float64 `yaml:"rate"`
	// Burst is how many requests may go at once above Rate.
	Burst int `yaml:"burst"`
	// Concurrency is how many requests may be in flight at once.
	Concurrency int `yaml:"concurrency"`
	// Retry is the backoff between attempts at an undelivered event.
	Retry Retry `yaml:"retry"`
}

// Retry bounds the wait between attempts at an undelivered event: the first
// wait is Initial, and later waits grow to at most Max.
type Retry struct {
	Initial Duration `yaml:"initial"`
	Max     Duration `yaml:"max"`
}

// Spool says where and how much trackd keeps on disk while upstream is away.
type Spool struct {
	// Path is the bbolt database file.
	Path string `yaml:"path"`
	// MaxBytes caps the spool's size on disk.
	MaxBytes Size `yaml:"max_bytes"`
	// MaxAge is how long an event may wait before it is discarded.
	MaxAge Duration `yaml:"max_age"`
	// WhenFull is WhenFullReject or WhenFullDropOldest.
	WhenFull string `yaml:"when_full"`
}

// Log configures log/slog output.
type Log struct {
	// Level is debug, info, warn or error.
	Level string `yaml:"level"`
	// Format is text or json.
	Format string `yaml:"format"`
}

// Shutdown bounds a graceful stop.
type Shutdown struct {
	// Timeout is how long listeners, the forwarder's drain and the spool
	// together may take to stop after a signal.
	Timeout Duration `yaml:"timeout"`
}

// Values of Spool.WhenFull.
const (
	// WhenFullReject refuses new events (clients get an error) while the
	// spool is full.
	WhenFullReject = "reject"
	// WhenFullDropOldest deletes the oldest spooled events to make room.
	WhenFullDropOldest = "drop_oldest"
)

// Allowed values of the enum keys, in the order error messages list them.
var (
	whenFullValues  = []string{WhenFullReject, WhenFullDropOldest}
	logLevelValues  = []string{"debug", "info", "warn", "error"}
	logFormatValues = []string{"text", "json"}
)

// Default returns the configuration used for every key the file leaves out.
// It passes Validate.
func Default() Config {
	return Config{
		Listen: Listen{
			HTTP:         "127.0.0.1:8790",
			Unix:         "",
			UnixMode:     0o660,
			MaxBodyBytes: 64 << 10,
		},
		Upstream: Upstream{
			URL:         "https://api.browsee.io",
			Timeout:     Duration(10 * time.Second),
			Rate:        20,
			Burst:       20,
			Concurrency: 4,
			Retry: Retry{
				Initial: Duration(time.Second),
				Max:     Duration(5 * time.Minute),
			},
		},
		Spool: Spool{
			Path:     "/var/lib/trackd/spool.db",
			MaxBytes: 1 << 30,
			MaxAge:   Duration(168 * time.Hour),
			WhenFull: WhenFullReject,
		},
		Log: Log{
			Level:  "info",
			Format: "text",
		},
		Shutdown: Shutdown{
			Timeout: Duration(20 * time.Second),
		},
	}
}

// ResolvePaths makes a relative spool.path and listen.unix absolute by
// joining them to baseDir, which Load sets to the directory of the config
// file. Empty and absolute paths are left alone.
//
// Paths are resolved against the config file rather than the working
// directory because a service manager starts trackd with a working directory
// of its own choosing (systemd and launchd use /, Windows services
// C:\Windows\System32): "./data/spool.db" must mean the same file however the
// daemon was started, and `trackd check` must see the paths the daemon will
// use. A relative baseDir is itself made absolute from the working directory.
func (c *Config) ResolvePaths(baseDir string) {
	resolve := func(p *string) {
		if *p == "" || filepath.IsAbs(*p) {
			return
		}
		joined := filepath.Join(baseDir, *p)
		if abs, err := filepath.Abs(joined); err == nil {
			joined = abs
		}
		*p = joined
	}
	resolve(&c.Spool.Path)
	resolve(&c.Listen.Unix)
}

// Marshal returns the configuration as YAML, with every key present and
// secrets shown as "***" (or "" when unset). `trackd check` prints it. The
// output parses back with Parse, to the same Config except that secrets read
// "***".
func (c Config) Marshal() ([]byte, error) {
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(c); err != nil {
		return nil, fmt.Errorf("marshal config: %w", err)
	}
	if err := enc.Close(); err != nil {
		return nil, fmt.Errorf("marshal config: %w", err)
	}
	return buf.Bytes(), nil
}

// SlogLevel returns log.level as a slog.Level; a value that Validate would
// reject gives slog.LevelInfo.
func (c Config) SlogLevel() slog.Level { return c.Log.SlogLevel() }

// SlogLevel returns Level as a slog.Level; a value that Validate would reject
// gives slog.LevelInfo.
func (l Log) SlogLevel() slog.Level {
	switch l.Level {
	case "debug":
		return slog.LevelDebug
	case "warn":
		return slog.LevelWarn
	case "error":
		return slog.LevelError
	default:
		return slog.LevelInfo
	}
}
