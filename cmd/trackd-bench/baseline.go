package main

import (
	"context"
	"flag"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/trackd/trackd/agent"
	"github.com/trackd/trackd/agent/config"
	"github.com/trackd/trackd/spool"
)

// discardStore accepts every event and keeps none: what trackd's front end
// costs without durability.
type discardStore struct{}

func (discardStore) Append(context.Context, ...spool.Entry) error { return nil }
func (discardStore) Accepting() error                             { return nil }

// serveBaseline runs trackd's own front end (listeners, server settings,
// connection cap, validation and stamping) on a config, with a store that
// discards, until SIGTERM.
func serveBaseline(args []string) error {
	fs := flag.NewFlagSet("trackd-bench serve-baseline", flag.ContinueOnError)
	path := fs.String("config", "", "trackd config whose listen section to serve")
	if err := fs.Parse(args); err != nil {
		return err
	}
	cfg, err := config.Load(*path, os.LookupEnv)
	if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	fe, err := agent.StartFrontend(cfg, agent.FrontendOptions{Store: discardStore{}}, log)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	<-ctx.Done()
	cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return fe.Close(cctx)
}
