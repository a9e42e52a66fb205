package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/trackd/trackd/forwarder"
	"github.com/trackd/trackd/forwarder/upstreamtest"
	"github.com/trackd/trackd/spool"
)

// benchBody is the i-th event of a benchmark: a realistic ~300-byte track call.
func benchBody(i int) []byte {
	return []byte(fmt.Sprintf(`{"apiKey":"bench-key","event":"CLICKED_CHECKOUT","userId":"user-%08d","anonymousId":"anon-3f6c1a9e","timestamp":"2026-11-25T10:00:00.000Z","properties":{"price":100,"currency":"EUR","category":"Apparel","sku":"SKU-12345","page":"/checkout/cart"}}`, i))
}

// runForward measures how fast the forwarder drains a spool into the
// upstream test server with no ceiling, against a plain Go HTTP client
// posting the same bodies to the same server at the same concurrency.
func runForward(args []string) error {
	fs := flag.NewFlagSet("trackd-bench forward", flag.ContinueOnError)
	events := fs.Int("events", 20000, "events to spool and drain per run")
	concs := fs.String("concurrency", "8,32", "comma-separated concurrency levels")
	repeat := fs.Int("repeat", 1, "runs per level; medians are reported")
	if err := fs.Parse(args); err != nil {
		return err
	}
	var levels []int
	for _, s := range strings.Split(*concs, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 {
			return fmt.Errorf("-concurrency: %q is not a positive number", s)
		}
		levels = append(levels, n)
	}
	fmt.Printf("forward: %d events per run, %d run(s) per level, %d cores\n", *events, *repeat, numCPU())
	fmt.Printf("\n%-12s %14s %14s %8s\n", "concurrency", "forwarder/s", "baseline/s", "ratio")
	for _, c := range levels {
		var fw, base []float64
		for i := 0; i < *repeat; i++ {
			b, err := measureBaseline(*events, c)
			if err != nil {
				return fmt.Errorf("baseline at concurrency %d: %w", c, err)
			}
			f, err := measureForwarder(*events, c)
			if err != nil {
				return fmt.Errorf("forwarder at concurrency %d: %w", c, err)
			}
			fw, base = append(fw, f), append(base, b)
		}
		f, b := median(fw), median(base)
		fmt.Printf("%-12d %14.0f %14.0f %7.0f%%\n", c, f, b, 100*f/b)
	}
	fmt.Println("\ntarget: forwarder >= 70% of baseline")
	return nil
}

func median(xs []float64) float64 {
	slices.Sort(xs)
	return xs[len(xs)/2]
}

func quietLogger() *slog.Logger {
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))
}

// fillSpool opens a spool in a temp dir and appends n benchmark events.
func fillSpool(n int) (*spool.Spool, func(), error) {
	dir, err := os.MkdirTemp("", "trackd-bench-")
	if err != nil {
		return nil, nil, err
	}
	sp, err := spool.Open(spool.Options{Path: filepath.Join(dir, "spool.db"), Logger: quietLogger()})
	if err != nil {
		os.RemoveAll(dir)
		return nil, nil, err
	}
	cleanup := func() { sp.Close(); os.RemoveAll(dir) }
	batch := make([]spool.Entry, 0, 1000)
	now := time.Now()
	for i := 0; i < n; i++ {
		batch = append(batch, spool.Entry{Kind: spool.KindTrack, Body: benchBody(i), Received: now})
		if len(batch) == cap(batch) || i == n-1 {
			if err := sp.Append(context.Background(), batch...); err != nil {
				cleanup()
				return nil, nil, err
			}
			batch = batch[:0]
		}
	}
	return sp, cleanup, nil
}

// measureForwarder returns events/s forwarded from a spool of n events.
func measureForwarder(n, concurrency int) (float64, error) {
	sp, cleanup, err := fillSpool(n)
	if err != nil {
		return 0, err
	}
	defer cleanup()
	up, err := upstreamtest.NewServer("127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer up.Close()
	fw, err := forwarder.New(sp, forwarder.Options{
		URL: up.URL(), Rate: 0, Concurrency: concurrency, Timeout: 10 * time.Second,
		RetryInitial: 50 * time.Millisecond, RetryMax: time.Second, Logger: quietLogger(),
	})
	if err != nil {
		return 0, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	start := time.Now()
	fw.Start(ctx)
	deadline := start.Add(5 * time.Minute)
	for sp.Stats().Queued > 0 {
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("spool not drained after 5 minutes (%d left)", sp.Stats().Queued)
		}
		time.Sleep(time.Millisecond)
	}
	elapsed := time.Since(start)
	sctx, scancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer scancel()
	if err := fw.Shutdown(sctx); err != nil {
		return 0, err
	}
	if got := up.Count(200); got < n {
		return 0, fmt.Errorf("upstream accepted %d of %d events", got, n)
	}
	return float64(n) / elapsed.Seconds(), nil
}

// measureBaseline returns events/s posted by a plain http.Client.
func measureBaseline(n, concurrency int) (float64, error) {
	bodies := make([][]byte, n)
	for i := range bodies {
		bodies[i] = benchBody(i)
	}
	up, err := upstreamtest.NewServer("127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer up.Close()
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: concurrency}, Timeout: 10 * time.Second}
	defer client.CloseIdleConnections()
	url := up.URL() + "/api/v1/track"
	var next, failed atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for w := 0; w < concurrency; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				resp, err := client.Post(url, "application/json", bytes.NewReader(bodies[i]))
				if err != nil {
					failed.Add(1)
					continue
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	if f := failed.Load(); f > 0 {
		return 0, fmt.Errorf("%d requests failed", f)
	}
	return float64(n) / elapsed.Seconds(), nil
}

// runRate checks the ceiling: with upstream.rate set, the rate measured at
// upstream over the duration should be within ±5% of it.
func runRate(args []string) error {
	fs := flag.NewFlagSet("trackd-bench rate", flag.ContinueOnError)
	rate := fs.Float64("rate", 100, "configured upstream.rate")
	burst := fs.Int("burst", 20, "configured upstream.burst")
	duration := fs.Duration("duration", 30*time.Second, "how long to measure")
	if err := fs.Parse(args); err != nil {
		return err
	}
	n := int(*rate*duration.Seconds()*1.5) + *burst + 100
	sp, cleanup, err := fillSpool(n)
	if err != nil {
		return err
	}
	defer cleanup()
	up, err := upstreamtest.NewServer("127.0.0.1:0")
	if err != nil {
		return err
	}
	defer up.Close()
	fw, err := forwarder.New(sp, forwarder.Options{URL: up.URL(), Rate: *rate, Burst: *burst, Concurrency: 4, Logger: quietLogger()})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	start := time.Now()
	fw.Start(ctx)
	time.Sleep(*duration)
	elapsed := time.Since(start)
	got := up.Count(200)
	sctx, scancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer scancel()
	_ = fw.Shutdown(sctx)
	measured := float64(got) / elapsed.Seconds()
	// The bucket starts full, so the first burst is allowed on top of the rate.
	steady := float64(got-*burst) / elapsed.Seconds()
	fmt.Printf("rate: configured %.0f/s, burst %d, %s: %d delivered = %.1f/s overall, %.1f/s without the initial burst (%+.1f%%); %d cores\n",
		*rate, *burst, duration.Round(time.Second), got, measured, steady, 100*(steady-*rate)/(*rate), numCPU())
	return nil
}

// runUpstream serves the upstream test server until SIGINT/SIGTERM (for the
// demo and manual experiments).
func runUpstream(args []string) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return upstreamtest.Run(ctx, args, os.Stdout, os.Stderr)
}
