package agent

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/trackd/trackd/agent/config"
	"github.com/trackd/trackd/forwarder"
	"github.com/trackd/trackd/spool"
)

// Timeouts against slow or stuck clients. Events are small and the loopback
// is fast, so anything slower than these is a broken or hostile client.
const (
	readHeaderTimeout = 5 * time.Second
	readTimeout       = 30 * time.Second
	writeTimeout      = 30 * time.Second
	idleTimeout       = 120 * time.Second
	maxHeaderBytes    = 16 << 10
)

// Store is what the ingest API needs of the spool.
type Store interface {
	Append(ctx context.Context, entries ...spool.Entry) error
	// Accepting says why an Append would fail now, or nil (for /readyz).
	Accepting() error
}

// FrontendOptions are the parts of a Frontend that are not in the config.
type FrontendOptions struct {
	Store Store
	// DeadLetters enables GET /dead-letters and POST /dead-letters/requeue.
	DeadLetters DeadLetterStore
	// Figures for /metrics and /status; nil leaves them out.
	SpoolStats     func() spool.Stats
	ForwarderStats func() forwarder.Stats
	Status         func() any
}

// Frontend is trackd's HTTP side: the ingest API and the probes, served on
// every configured listener with the same handler, timeouts and connection
// cap.
type Frontend struct {
	api       *api
	servers   []*http.Server
	listeners []net.Listener
	wg        sync.WaitGroup
	errc      chan error
	closeOnce sync.Once
	closeErr  error
}

// StartFrontend binds the listeners of cfg.Listen and serves until Close.
// When binding fails, nothing is left open.
func StartFrontend(cfg config.Config, opts FrontendOptions, log *slog.Logger) (*Frontend, error) {
	status := opts.Status
	if status == nil {
		status = func() any { return map[string]string{"status": "success"} }
	}
	a := &api{
		store:        opts.Store,
		dead:         opts.DeadLetters,
		maxBodyBytes: int64(cfg.Listen.MaxBodyBytes),
		apiKey:       cfg.Upstream.APIKey.Reveal(),
		now:          time.Now,
		log:          log.With("component", "api"),
		metrics:      newMetrics(opts.SpoolStats, opts.ForwarderStats),
		status:       status,
	}
	if tok := cfg.Listen.AuthToken.Reveal(); tok != "" {
		h := sha256.Sum256([]byte(tok))
		a.tokenHash = &h
	}
	f := &Frontend{api: a, errc: make(chan error, 2)}

	if cfg.Listen.HTTP != "" {
		ln, err := listenTCP(cfg.Listen.HTTP)
		if err != nil {
			return nil, err
		}
		f.listeners = append(f.listeners, ln)
		if cfg.Listen.AuthToken == "" && !isLoopback(ln.Addr()) {
			log.Warn("listen.http is reachable from other hosts and listen.auth_token is empty: anyone who can reach it can send events with your API key; bind 127.0.0.1 or set listen.auth_token", "addr", ln.Addr().String())
		}
	}
	if cfg.Listen.Unix != "" {
		ln, err := listenUnix(cfg.Listen.Unix, fs.FileMode(cfg.Listen.UnixMode))
		if err != nil {
			f.closeListeners()
			return nil, err
		}
		f.listeners = append(f.listeners, ln)
	}

	for _, ln := range f.listeners {
		srv := &http.Server{
			Handler:           a,
			ReadHeaderTimeout: readHeaderTimeout,
			ReadTimeout:       readTimeout,
			WriteTimeout:      writeTimeout,
			IdleTimeout:       idleTimeout,
			MaxHeaderBytes:    maxHeaderBytes,
			ErrorLog:          slog.NewLogLogger(log.With("component", "http").Handler(), slog.LevelDebug),
		}
		f.servers = append(f.servers, srv)
		limited := newLimitListener(ln, maxConns, a.metrics.connsRefuse.Inc)
		f.wg.Add(1)
		go func() {
			defer f.wg.Done()
			if err := srv.Serve(limited); err != nil && !errors.Is(err, http.ErrServerClosed) {
				f.errc <- fmt.Errorf("serve on %s: %w", ln.Addr(), err)
			}
		}()
		log.Info("listening", "addr", ln.Addr().String(), "network", ln.Addr().Network())
	}
	return f, nil
}

// Addrs returns the bound listener addresses (useful when a port of 0 was
// configured).
func (f *Frontend) Addrs() []net.Addr {
	addrs := make([]net.Addr, 0, len(f.listeners))
	for _, ln := range f.listeners {
		addrs = append(addrs, ln.Addr())
	}
	return addrs
}

// Err yields an error if a listener fails while serving.
func (f *Frontend) Err() <-chan error { return f.errc }

// Ready says why trackd should not be sent events now, or nil.
func (f *Frontend) Ready() error { return f.api.readiness() }

// Close stops accepting, answers 503 to requests that arrive meanwhile, and
// waits for in-flight requests until ctx ends; those still running then are
// cut off (their clients got no 200, so nothing was promised).
func (f *Frontend) Close(ctx context.Context) error {
	f.closeOnce.Do(func() {
		f.api.closing.Store(true)
		var errs []error
		for _, srv := range f.servers {
			if err := srv.Shutdown(ctx); err != nil {
				_ = srv.Close()
				errs = append(errs, fmt.Errorf("stop listener: %w", err))
			}
		}
		f.closeListeners()
		f.wg.Wait()
		f.closeErr = errors.Join(errs...)
	})
	return f.closeErr
}

// closeListeners closes the listeners directly: Server.Shutdown closes those
// it serves, and this covers the ones bound before a failed start.
func (f *Frontend) closeListeners() {
	for _, ln := range f.listeners {
		_ = ln.Close()
	}
}

func isLoopback(addr net.Addr) bool {
	tcp, ok := addr.(*net.TCPAddr)
	return ok && tcp.IP.IsLoopback()
}
