package agent

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/trackd/trackd/agent/config"
)

// Exit codes of the trackd command.
const (
	exitOK      = 0
	exitFailure = 1 // trackd could not start or stopped with an error
	exitUsage   = 2 // bad command line or invalid config
)

// DefaultConfigPath is where trackd looks for its config when -config is not
// given; the system packages install it there.
const DefaultConfigPath = "/etc/trackd/config.yaml"

const usage = `trackd — the local forwarding agent for the Track HTTP API.

Usage:
  trackd run     [-config FILE]   accept and forward events until SIGINT/SIGTERM
  trackd check   [-config FILE]   validate the config and print the effective config
  trackd status  [-config FILE]   ask a running trackd how it is doing (exit 1 if not ready)
  trackd dead-letters [-config FILE] [-after ID] [-limit N] [-requeue all|ID,ID...]
                                  list the events upstream refused, or send them again
  trackd service ACTION [-config FILE]
                                  install|uninstall|start|stop|restart|status as a system service
  trackd version                  print the version
  trackd help [COMMAND]           print this help, or a command's flags

FILE defaults to ` + DefaultConfigPath + `.
`

// usageError is a command-line mistake: it is printed with the usage and
// exits 2.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

// Main runs the trackd command line and returns the process exit code.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	err := dispatch(ctx, args, stdout, stderr)
	var ue *usageError
	var ce *config.Error
	var cfe *configError
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
		return exitOK
	case errors.As(err, &ue):
		fmt.Fprintf(stderr, "trackd: %s\n\n%s", ue.msg, usage)
		return exitUsage
	case errors.As(err, &ce):
		fmt.Fprintf(stderr, "trackd: invalid config:\n%s\n", ce.Error())
		return exitUsage
	case errors.As(err, &cfe):
		fmt.Fprintf(stderr, "trackd: %s\n", cfe.err)
		return exitUsage
	default:
		fmt.Fprintf(stderr, "trackd: %s\n", err)
		return exitFailure
	}
}

func dispatch(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return &usageError{"no command given"}
	}
	cmd, rest := args[0], args[1:]
	switch cmd {
	case "run":
		return runCommand(ctx, rest, stderr)
	case "check":
		return checkCommand(rest, stdout, stderr)
	case "status":
		return statusCommand(ctx, rest, stdout, stderr)
	case "dead-letters":
		return deadLettersCommand(ctx, rest, stdout, stderr)
	case "service":
		return serviceCommand(rest, stdout, stderr)
	case "version", "-version", "--version":
		fmt.Fprintf(stdout, "trackd %s\n", Version)
		return nil
	case "help", "-h", "-help", "--help":
		if len(rest) > 0 && rest[0] != "help" {
			return dispatch(ctx, []string{rest[0], "-h"}, stdout, stdout)
		}
		fmt.Fprint(stdout, usage)
		return nil
	default:
		return &usageError{fmt.Sprintf("unknown command %q", cmd)}
	}
}

// newFlags returns a flag set for a subcommand that reports its errors as
// usage errors and prints its help to out.
func newFlags(name string, out io.Writer) (*flag.FlagSet, *string) {
	fs := flag.NewFlagSet("trackd "+name, flag.ContinueOnError)
	fs.SetOutput(out)
	cfg := fs.String("config", DefaultConfigPath, "path of the YAML config file")
	return fs, cfg
}

func parseFlags(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return &usageError{err.Error()}
	}
	if fs.NArg() > 0 {
		return &usageError{fmt.Sprintf("%s: unexpected argument %q", fs.Name(), fs.Arg(0))}
	}
	return nil
}

// configError is a config that could not be read or is invalid; it exits 2.
type configError struct{ err error }

func (e *configError) Error() string { return e.err.Error() }
func (e *configError) Unwrap() error { return e.err }

// loadConfig loads and validates the config file at path.
func loadConfig(path string) (config.Config, error) {
	cfg, err := config.Load(path, os.LookupEnv)
	if err != nil {
		return cfg, &configError{err}
	}
	return cfg, nil
}

func checkCommand(args []string, stdout, stderr io.Writer) error {
	fs, path := newFlags("check", stderr)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	cfg, err := loadConfig(*path)
	if err != nil {
		return err
	}
	out, err := cfg.Marshal()
	if err != nil {
		return fmt.Errorf("print config: %w", err)
	}
	fmt.Fprintf(stdout, "# %s is valid; effective config (secrets shown as ***):\n%s", *path, out)
	return nil
}

func runCommand(ctx context.Context, args []string, stderr io.Writer) error {
	fs, path := newFlags("run", stderr)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	cfg, err := loadConfig(*path)
	if err != nil {
		return err
	}
	log := newLogger(cfg.Log, stderr)
	if needsServiceHandshake() {
		return runAsService(cfg, *path, log)
	}
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	return runUntilDone(ctx, stop, cfg, log)
}

// runUntilDone starts an Agent and closes it when ctx ends or a listener
// fails. stop releases the signal handlers once shutdown begins, so a second
// Ctrl-C kills the process the ordinary way.
func runUntilDone(ctx context.Context, stop func(), cfg config.Config, log *slog.Logger) error {
	ag := New(cfg, log)
	if err := ag.Start(); err != nil {
		return err
	}
	var runErr error
	select {
	case <-ctx.Done():
		log.Info("shutting down", "timeout", cfg.Shutdown.Timeout.D().String())
	case runErr = <-ag.Err():
		log.Error("trackd cannot go on; shutting down", "err", runErr)
	}
	stop()
	sctx, cancel := context.WithTimeout(context.Background(), cfg.Shutdown.Timeout.D())
	defer cancel()
	return errors.Join(runErr, ag.Close(sctx))
}

func newLogger(c config.Log, w io.Writer) *slog.Logger {
	opts := &slog.HandlerOptions{Level: c.SlogLevel()}
	if c.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

func statusCommand(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs, path := newFlags("status", stderr)
	timeout := fs.Duration("timeout", 5*time.Second, "how long to wait for trackd's answer")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	cfg, err := loadConfig(*path)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	return queryStatus(ctx, cfg, stdout)
}

func deadLettersCommand(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs, path := newFlags("dead-letters", stderr)
	after := fs.Uint64("after", 0, "list dead letters with ids after this one (paging)")
	limit := fs.Int("limit", 100, "how many dead letters to list")
	requeue := fs.String("requeue", "", `"all", or comma-separated ids, to put back in the queue for sending`)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	cfg, err := loadConfig(*path)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if *requeue == "" {
		_, err := callTrackd(ctx, cfg, http.MethodGet, fmt.Sprintf("%s?after=%d&limit=%d", pathDeadLetters, *after, *limit), nil, stdout)
		return err
	}
	var req requeueRequest
	if *requeue == "all" {
		req.All = true
	} else {
		for _, f := range strings.Split(*requeue, ",") {
			id, err := strconv.ParseUint(strings.TrimSpace(f), 10, 64)
			if err != nil {
				return &usageError{fmt.Sprintf("dead-letters: -requeue takes \"all\" or ids like 12,13; %q is not an id", f)}
			}
			req.IDs = append(req.IDs, id)
		}
	}
	body, _ := json.Marshal(req)
	_, err = callTrackd(ctx, cfg, http.MethodPost, pathRequeue, body, stdout)
	return err
}
