package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"sync"
	"time"

	"github.com/trackd/trackd/agent/config"
	"github.com/trackd/trackd/forwarder"
	"github.com/trackd/trackd/spool"
)

// Version is trackd's version, set at build time with
// -ldflags "-X github.com/trackd/trackd/agent.Version=...".
var Version = "dev"

// Agent is one running trackd: spool, listeners and forwarder.
type Agent struct {
	cfg config.Config
	log *slog.Logger

	spool     *spool.Spool
	forwarder *forwarder.Forwarder
	frontend  *Frontend

	cancel   context.CancelFunc // ends the forwarder's and the watcher's context
	watcher  sync.WaitGroup
	errc     chan error
	closed   sync.Once
	closeErr error
}

// New returns an Agent for cfg, which must have passed cfg.Validate.
func New(cfg config.Config, log *slog.Logger) *Agent {
	if log == nil {
		log = slog.Default()
	}
	return &Agent{cfg: cfg, log: log, errc: make(chan error, 1)}
}

// Start opens the spool, binds the listeners and starts forwarding. On error
// everything it had opened is closed again.
func (a *Agent) Start() (err error) {
	cfg := a.cfg
	policy := spool.Reject
	if cfg.Spool.WhenFull == config.WhenFullDropOldest {
		policy = spool.DropOldest
	}
	a.spool, err = spool.Open(spool.Options{
		Path:     cfg.Spool.Path,
		MaxBytes: int64(cfg.Spool.MaxBytes),
		MaxAge:   cfg.Spool.MaxAge.D(),
		WhenFull: policy,
		Logger:   a.log.With("component", "spool"),
	})
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			_ = a.spool.Close()
		}
	}()
	if st := a.spool.Stats(); st.Quarantined != "" {
		a.log.Error("the spool file was unreadable; it was moved aside and a fresh spool started with the records that still read",
			"path", cfg.Spool.Path, "moved_to", st.Quarantined, "salvaged", st.Salvaged)
	}

	a.forwarder, err = forwarder.New(a.spool, forwarder.Options{
		URL:          cfg.Upstream.URL,
		Timeout:      cfg.Upstream.Timeout.D(),
		Rate:         cfg.Upstream.Rate,
		Burst:        cfg.Upstream.Burst,
		Concurrency:  cfg.Upstream.Concurrency,
		RetryInitial: cfg.Upstream.Retry.Initial.D(),
		RetryMax:     cfg.Upstream.Retry.Max.D(),
		MaxAge:       cfg.Spool.MaxAge.D(),
		UserAgent:    "trackd/" + Version,
		Logger:       a.log.With("component", "forwarder"),
	})
	if err != nil {
		return fmt.Errorf("start forwarder: %w", err)
	}

	a.frontend, err = StartFrontend(cfg, FrontendOptions{
		Store:          a.spool,
		DeadLetters:    a.spool,
		SpoolStats:     a.spool.Stats,
		ForwarderStats: a.forwarder.Stats,
		Status:         a.Status,
	}, a.log)
	if err != nil {
		return err
	}

	var ctx context.Context
	ctx, a.cancel = context.WithCancel(context.Background())
	a.forwarder.Start(ctx)
	a.watcher.Add(1)
	go a.watch(ctx)
	st := a.spool.Stats()
	a.log.Info("trackd started", "version", Version, "spool", cfg.Spool.Path, "spool_depth", st.Queued, "upstream", redactURL(cfg.Upstream.URL))
	return nil
}

// Addrs returns the bound listener addresses.
func (a *Agent) Addrs() []net.Addr { return a.frontend.Addrs() }

// Err yields an error when trackd cannot go on and should stop: a listener
// failed, or the spool found its file damaged while running. In the second
// case the next start checks the whole file and quarantines or repairs it,
// so a supervisor's restart heals it rather than looping.
func (a *Agent) Err() <-chan error { return a.errc }

// watch forwards the first fatal condition to errc.
func (a *Agent) watch(ctx context.Context) {
	defer a.watcher.Done()
	var err error
	select {
	case <-ctx.Done():
		return
	case err = <-a.frontend.Err():
	case <-a.spool.Damaged():
		err = fmt.Errorf("the spool file %s is damaged; stopping so that the next start checks and repairs it: %w", a.cfg.Spool.Path, spool.ErrCorrupt)
	}
	a.errc <- err
}

// Close shuts down in reverse order of Start: the listeners stop accepting
// and in-flight requests finish, the forwarder drains while upstream accepts,
// and the spool is closed. It returns when all goroutines are gone; ctx bounds
// how long the first two steps may take.
func (a *Agent) Close(ctx context.Context) error {
	a.closed.Do(func() {
		var errs []error
		if err := a.frontend.Close(ctx); err != nil {
			errs = append(errs, err)
		}
		// The drain may use what is left of ctx but a tenth, which is kept
		// for closing the spool.
		fctx := ctx
		if dl, ok := ctx.Deadline(); ok {
			var cancel context.CancelFunc
			fctx, cancel = context.WithDeadline(ctx, dl.Add(-time.Until(dl)/10))
			defer cancel()
		}
		if err := a.forwarder.Shutdown(fctx); err != nil && !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, context.Canceled) {
			errs = append(errs, fmt.Errorf("stop forwarder: %w", err))
		}
		a.cancel()
		a.watcher.Wait()
		st := a.spool.Stats()
		if err := a.spool.Close(); err != nil {
			errs = append(errs, err)
		}
		a.log.Info("trackd stopped", "spool_depth", st.Queued, "dead_letters", st.Dead)
		a.closeErr = errors.Join(errs...)
	})
	return a.closeErr
}

// Status is the body of GET /status: what an operator checks first.
func (a *Agent) Status() any {
	st := a.spool.Stats()
	fw := a.forwarder.Stats()
	oldest := ""
	if !st.Oldest.IsZero() {
		oldest = time.Since(st.Oldest).Round(time.Millisecond).String()
	}
	paused := ""
	if fw.PausedUntil.After(time.Now()) {
		paused = fw.PausedUntil.UTC().Format(time.RFC3339)
	}
	ready := "ready"
	if err := a.frontend.Ready(); err != nil {
		ready = err.Error()
	}
	return map[string]any{
		"status":  "success",
		"version": Version,
		"ready":   ready,
		"spool": map[string]any{
			"path":            a.spool.Path(),
			"queued":          st.Queued,
			"queued_bytes":    st.QueuedBytes,
			"dead_letters":    st.Dead,
			"file_bytes":      st.FileBytes,
			"oldest_age":      oldest,
			"dropped_max_age": st.DroppedExpired,
			"dropped_full":    st.DroppedFull,
			// A record that failed its checksum, and what the last start
			// moved aside as unreadable and carried over from it.
			"dropped_checksum": st.DroppedCorrupt,
			"quarantined":      st.Quarantined,
			"salvaged":         st.Salvaged,
		},
		"forwarder": map[string]any{
			"upstream":      redactURL(a.cfg.Upstream.URL),
			"delivered":     fw.Delivered,
			"dead_lettered": fw.DeadLettered,
			"retries":       fw.Retried,
			"throttled":     fw.Throttled,
			"rate_limit":    fw.RateLimit,
			"paused_until":  paused,
			"upstream_down": fw.Down,
			"last_error":    lastError(fw),
		},
	}
}

// lastError describes the forwarder's last failure for /status, or "".
func lastError(fw forwarder.Stats) string {
	if fw.LastErrorClass == "" {
		return ""
	}
	return fw.LastErrorClass + " at " + fw.LastErrorAt.UTC().Format(time.RFC3339)
}

// redactURL hides credentials a URL may carry, for logs and status.
func redactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparsable URL)"
	}
	return u.Redacted()
}
