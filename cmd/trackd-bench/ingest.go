package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// ingestResult is one measured run of the load against one server.
type ingestResult struct {
	server, network string
	acked, failed   int64
	elapsed         time.Duration
	p50, p99, p999  time.Duration
	peakRSSAnonKiB  int64
	perCommit       float64 // events per spool commit (trackd only)
	// CPU time (user+system) spent during the run by the server process
	// and by this process, the load generator.
	serverCPU, clientCPU time.Duration
}

func (r ingestResult) rate() float64 { return float64(r.acked) / r.elapsed.Seconds() }

// cpuPerEvent is d per acknowledged event, in microseconds.
func (r ingestResult) cpuPerEvent(d time.Duration) float64 {
	if r.acked == 0 {
		return 0
	}
	return float64(d.Microseconds()) / float64(r.acked)
}

// runIngest measures acknowledged events/s, ack latency and peak RssAnon of
// trackd over TCP and the Unix socket, and of the baseline: the same HTTP
// stack (listeners, server settings, validation) answering without storing.
func runIngest(args []string) error {
	fs := flag.NewFlagSet("trackd-bench ingest", flag.ContinueOnError)
	duration := fs.Duration("duration", 10*time.Second, "how long each measured run lasts")
	clients := fs.Int("clients", 64, "concurrent keep-alive clients")
	trackdBin := fs.String("trackd", defaultTrackdBinary(), "path of the trackd binary to measure")
	repeat := fs.Int("repeat", 1, "runs per server and network; medians are reported")
	serverList := fs.String("servers", "baseline,trackd", "servers to measure, comma-separated (to profile one alone)")
	networkList := fs.String("networks", "tcp,unix", "networks to measure, comma-separated")
	if err := fs.Parse(args); err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find own executable: %w", err)
	}
	fmt.Printf("ingest: %d clients, %s per run, %d run(s) each, GOMAXPROCS of this machine: %d cores\n",
		*clients, *duration, *repeat, numCPU())

	servers, networks := strings.Split(*serverList, ","), strings.Split(*networkList, ",")
	for _, s := range servers {
		if s != "baseline" && s != "trackd" {
			return fmt.Errorf("-servers: unknown server %q (want baseline, trackd)", s)
		}
	}
	for _, n := range networks {
		if n != "tcp" && n != "unix" {
			return fmt.Errorf("-networks: unknown network %q (want tcp, unix)", n)
		}
	}

	type key struct{ server, network string }
	results := map[key][]ingestResult{}
	for i := 0; i < *repeat; i++ {
		for _, server := range servers {
			for _, network := range networks {
				var cmd []string
				if server == "trackd" {
					cmd = []string{*trackdBin, "run", "-config"}
				} else {
					cmd = []string{self, "serve-baseline", "-config"}
				}
				res, err := measureServer(server, network, cmd, *clients, *duration)
				if err != nil {
					return fmt.Errorf("%s over %s: %w", server, network, err)
				}
				results[key{server, network}] = append(results[key{server, network}], res)
			}
		}
	}

	fmt.Printf("\n%-9s %-5s %12s %9s %9s %9s %9s %12s %11s %11s %11s\n", "server", "net", "events/s", "p50", "p99", "p99.9", "failed", "RssAnon", "ev/commit", "server CPU", "client CPU")
	medians := map[key]ingestResult{}
	for _, server := range servers {
		for _, network := range networks {
			k := key{server, network}
			m := medianResult(results[k])
			medians[k] = m
			fmt.Printf("%-9s %-5s %12.0f %9s %9s %9s %9d %8d KiB %11.1f %8.1f µs %8.1f µs\n", server, network, m.rate(),
				m.p50.Round(time.Microsecond), m.p99.Round(time.Microsecond), m.p999.Round(time.Microsecond), m.failed, m.peakRSSAnonKiB, m.perCommit,
				m.cpuPerEvent(m.serverCPU), m.cpuPerEvent(m.clientCPU))
		}
	}
	fmt.Println("(CPU: user+system time per acknowledged event, of the server process and of this load generator)")
	fmt.Println()
	for _, network := range networks {
		d, okd := medians[key{"trackd", network}]
		b, okb := medians[key{"baseline", network}]
		if !okd || !okb {
			continue
		}
		fmt.Printf("durable/baseline over %s: %.0f%% (target >= 60%%); p99 %s (target < 10ms); peak RssAnon %d KiB (target < 65536)\n",
			network, 100*d.rate()/b.rate(), d.p99.Round(time.Microsecond), d.peakRSSAnonKiB)
	}
	return nil
}

func medianResult(rs []ingestResult) ingestResult {
	slices.SortFunc(rs, func(a, b ingestResult) int {
		switch {
		case a.rate() < b.rate():
			return -1
		case a.rate() > b.rate():
			return 1
		}
		return 0
	})
	return rs[len(rs)/2]
}

// measureServer starts one server subprocess on a fresh temp dir, waits for
// it, drives it for the duration and stops it.
func measureServer(server, network string, cmdline []string, clients int, d time.Duration) (ingestResult, error) {
	dir, err := os.MkdirTemp("/tmp", "trackd-bench-")
	if err != nil {
		return ingestResult{}, err
	}
	defer os.RemoveAll(dir)
	sock := filepath.Join(dir, "t.sock")
	addr, err := freeAddr()
	if err != nil {
		return ingestResult{}, err
	}
	deadUpstream, err := freeAddr() // nothing listens: the spool keeps growing
	if err != nil {
		return ingestResult{}, err
	}
	cfgPath := filepath.Join(dir, "config.yaml")
	cfg := fmt.Sprintf(`listen: {http: %q, unix: %q}
upstream: {url: "http://%s", api_key: "bench-key", retry: {initial: 1m, max: 1h}}
spool: {path: %q}
log: {level: warn}
`, addr, sock, deadUpstream, filepath.Join(dir, "spool.db"))
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		return ingestResult{}, err
	}
	cmd := exec.Command(cmdline[0], append(cmdline[1:], cfgPath)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		return ingestResult{}, err
	}
	defer func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
	}()

	var client *http.Client
	var url string
	if network == "unix" {
		client = &http.Client{Transport: &http.Transport{
			MaxIdleConnsPerHost: clients,
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				var dl net.Dialer
				return dl.DialContext(ctx, "unix", sock)
			}}}
		url = "http://trackd/api/v1/track"
	} else {
		client = &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: clients}}
		url = "http://" + addr + "/api/v1/track"
	}
	defer client.CloseIdleConnections()
	if err := waitHealthy(client, strings.TrimSuffix(url, "/api/v1/track")+"/readyz", &stderr); err != nil {
		return ingestResult{}, err
	}

	var peak atomic.Int64
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	var samplerDone sync.WaitGroup
	samplerDone.Add(1)
	go func() {
		defer samplerDone.Done()
		t := time.NewTicker(50 * time.Millisecond)
		defer t.Stop()
		for {
			if kib, err := rssAnonKiB(cmd.Process.Pid); err == nil && kib > peak.Load() {
				peak.Store(kib)
			}
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()

	lat := make([][]time.Duration, clients)
	var acked, failed atomic.Int64
	var wg sync.WaitGroup
	serverCPU0, err := processCPU(cmd.Process.Pid)
	if err != nil {
		return ingestResult{}, err
	}
	clientCPU0 := selfCPU()
	start := time.Now()
	for c := 0; c < clients; c++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			body := []byte(fmt.Sprintf(`{"event":"CLICKED_CHECKOUT","userId":"user-%04d","anonymousId":"anon-3f6c1a9e","properties":{"price":100,"currency":"EUR","category":"Apparel","sku":"SKU-12345","page":"/checkout/cart","referrer":"https://shop.example.com/products/42"}}`, c))
			mine := make([]time.Duration, 0, 1<<16)
			for ctx.Err() == nil {
				t0 := time.Now()
				resp, err := client.Post(url, "application/json", bytes.NewReader(body))
				if err != nil {
					failed.Add(1)
					continue
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					failed.Add(1)
					continue
				}
				mine = append(mine, time.Since(t0))
				acked.Add(1)
			}
			lat[c] = mine
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	clientCPU := selfCPU() - clientCPU0
	serverCPU, err := processCPU(cmd.Process.Pid)
	if err != nil {
		return ingestResult{}, err
	}
	serverCPU -= serverCPU0
	samplerDone.Wait()

	perCommit := 0.0
	if server == "trackd" {
		perCommit = eventsPerCommit(client, strings.TrimSuffix(url, "/api/v1/track")+"/metrics")
	}

	var all []time.Duration
	for _, l := range lat {
		all = append(all, l...)
	}
	slices.Sort(all)
	pct := func(p float64) time.Duration {
		if len(all) == 0 {
			return 0
		}
		return all[min(len(all)-1, int(p*float64(len(all))))]
	}
	return ingestResult{server: server, network: network, acked: acked.Load(), failed: failed.Load(), elapsed: elapsed,
		p50: pct(0.50), p99: pct(0.99), p999: pct(0.999), peakRSSAnonKiB: peak.Load(), perCommit: perCommit,
		serverCPU: serverCPU, clientCPU: clientCPU}, nil
}

func waitHealthy(c *http.Client, url string, stderr *bytes.Buffer) error {
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if resp, err := c.Get(url); err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return nil
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("server not ready after 20s: %s", stderr.String())
}

// eventsPerCommit reads trackd's metrics: how many events shared each
// fsync'd commit, the figure group commit is about.
func eventsPerCommit(c *http.Client, url string) float64 {
	resp, err := c.Get(url)
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	vals := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		name, val, ok := strings.Cut(sc.Text(), " ")
		if ok && (name == "trackd_spool_appended_total" || name == "trackd_spool_commits_total") {
			vals[name], _ = strconv.ParseFloat(val, 64)
		}
	}
	if vals["trackd_spool_commits_total"] == 0 {
		return 0
	}
	return vals["trackd_spool_appended_total"] / vals["trackd_spool_commits_total"]
}

// rssAnonKiB reads a process's resident anonymous memory from /proc.
func rssAnonKiB(pid int) (int64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "RssAnon:"); ok {
			return strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
		}
	}
	return 0, errors.New("no RssAnon line in /proc status")
}

// processCPU reads a process's user+system CPU time from /proc/<pid>/stat.
func processCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name (field 2) may hold spaces; count from after its ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("parse /proc/%d/stat: no ')'", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("parse /proc/%d/stat: %d fields", pid, len(f))
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64) // field 14
	stime, err2 := strconv.ParseInt(f[12], 10, 64) // field 15
	if err := errors.Join(err1, err2); err != nil {
		return 0, fmt.Errorf("parse /proc/%d/stat: %w", pid, err)
	}
	const ticksPerSecond = 100 // USER_HZ on Linux
	return time.Duration(utime+stime) * time.Second / ticksPerSecond, nil
}

// selfCPU is this process's user+system CPU time so far.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

func defaultTrackdBinary() string {
	self, err := os.Executable()
	if err != nil {
		return "bin/trackd"
	}
	return filepath.Join(filepath.Dir(self), "trackd")
}
