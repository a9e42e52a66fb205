//go:build reliability

package reliability

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// work is one test's directory under /tmp (short, for socket paths) and the
// logs of every trackd it started.
type work struct {
	t   testing.TB
	dir string

	mu   sync.Mutex
	logs []*logBuf // every process's output, in start order
}

func newWork(t testing.TB) *work {
	t.Helper()
	dir, err := os.MkdirTemp("/tmp", "trel-")
	if err != nil {
		t.Fatal(err)
	}
	w := &work{t: t, dir: dir}
	t.Cleanup(func() {
		if t.Failed() {
			w.dumpLogs()
			if *keepFlag {
				t.Logf("work directory kept: %s", dir)
				return
			}
		}
		os.RemoveAll(dir)
	})
	return w
}

func (w *work) path(name string) string { return filepath.Join(w.dir, name) }

// allOutput is everything every trackd of this test printed.
func (w *work) allOutput() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	var b strings.Builder
	for _, l := range w.logs {
		b.WriteString(l.String())
	}
	return b.String()
}

func (w *work) dumpLogs() {
	w.mu.Lock()
	defer w.mu.Unlock()
	for i, l := range w.logs {
		s := l.String()
		if len(s) > 6000 {
			s = "…" + s[len(s)-6000:]
		}
		w.t.Logf("output of trackd #%d (%s):\n%s", i+1, l.name, s)
	}
}

// freeAddr returns a loopback TCP address nobody listens on now. It is
// kept for every restart of a test's trackd, so clients need not learn a
// new one.
func freeAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// trackdConfig is the config file of one trackd; zero fields are left out
// so trackd's defaults apply, except HTTP and Unix, which are always
// written ("" disables a listener).
type trackdConfig struct {
	HTTP, Unix, UnixMode string
	MaxBodyBytes         int
	AuthToken            string

	UpstreamURL, APIKey    string
	Timeout                time.Duration
	Rate                   float64
	RateSet                bool // write Rate even when 0 (no ceiling)
	Burst, Concurrency     int
	RetryInitial, RetryMax time.Duration

	SpoolPath string
	MaxBytes  int64
	MaxAge    time.Duration
	WhenFull  string

	LogLevel, LogFormat string
	ShutdownTimeout     time.Duration
}

// baseConfig is a config for a test: TCP on a fixed free port, a Unix
// socket and the spool in w's directory, upstream at url, and fast retries.
func (w *work) baseConfig(url string) *trackdConfig {
	return &trackdConfig{
		HTTP:            freeAddr(w.t),
		Unix:            w.path("t.sock"),
		UpstreamURL:     url,
		APIKey:          "rel-key",
		Timeout:         2 * time.Second,
		Rate:            0,
		RateSet:         true,
		Concurrency:     8,
		RetryInitial:    20 * time.Millisecond,
		RetryMax:        500 * time.Millisecond,
		SpoolPath:       w.path("spool/spool.db"),
		LogLevel:        "info",
		ShutdownTimeout: 5 * time.Second,
	}
}

func (c *trackdConfig) yaml() string {
	var b strings.Builder
	q := strconv.Quote
	dur := func(d time.Duration) string { return q(d.String()) }
	b.WriteString("listen:\n")
	fmt.Fprintf(&b, "  http: %s\n  unix: %s\n", q(c.HTTP), q(c.Unix))
	if c.UnixMode != "" {
		fmt.Fprintf(&b, "  unix_mode: %s\n", q(c.UnixMode))
	}
	if c.MaxBodyBytes != 0 {
		fmt.Fprintf(&b, "  max_body_bytes: %d\n", c.MaxBodyBytes)
	}
	if c.AuthToken != "" {
		fmt.Fprintf(&b, "  auth_token: %s\n", q(c.AuthToken))
	}
	b.WriteString("upstream:\n")
	if c.UpstreamURL != "" {
		fmt.Fprintf(&b, "  url: %s\n", q(c.UpstreamURL))
	}
	if c.APIKey != "" {
		fmt.Fprintf(&b, "  api_key: %s\n", q(c.APIKey))
	}
	if c.Timeout != 0 {
		fmt.Fprintf(&b, "  timeout: %s\n", dur(c.Timeout))
	}
	if c.Rate != 0 || c.RateSet {
		fmt.Fprintf(&b, "  rate: %g\n", c.Rate)
	}
	if c.Burst != 0 {
		fmt.Fprintf(&b, "  burst: %d\n", c.Burst)
	}
	if c.Concurrency != 0 {
		fmt.Fprintf(&b, "  concurrency: %d\n", c.Concurrency)
	}
	if c.RetryInitial != 0 || c.RetryMax != 0 {
		b.WriteString("  retry:\n")
		if c.RetryInitial != 0 {
			fmt.Fprintf(&b, "    initial: %s\n", dur(c.RetryInitial))
		}
		if c.RetryMax != 0 {
			fmt.Fprintf(&b, "    max: %s\n", dur(c.RetryMax))
		}
	}
	b.WriteString("spool:\n")
	fmt.Fprintf(&b, "  path: %s\n", q(c.SpoolPath))
	if c.MaxBytes != 0 {
		fmt.Fprintf(&b, "  max_bytes: %d\n", c.MaxBytes)
	}
	if c.MaxAge != 0 {
		fmt.Fprintf(&b, "  max_age: %s\n", dur(c.MaxAge))
	}
	if c.WhenFull != "" {
		fmt.Fprintf(&b, "  when_full: %s\n", c.WhenFull)
	}
	b.WriteString("log:\n")
	fmt.Fprintf(&b, "  level: %s\n", or(c.LogLevel, "info"))
	fmt.Fprintf(&b, "  format: %s\n", or(c.LogFormat, "text"))
	if c.ShutdownTimeout != 0 {
		fmt.Fprintf(&b, "shutdown:\n  timeout: %s\n", dur(c.ShutdownTimeout))
	}
	return b.String()
}

func or(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// writeConfig writes c as name in w's directory and returns its path.
func (w *work) writeConfig(name string, c *trackdConfig) string {
	w.t.Helper()
	return w.writeFile(name, c.yaml())
}

func (w *work) writeFile(name, content string) string {
	w.t.Helper()
	p := w.path(name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		w.t.Fatal(err)
	}
	return p
}

// logBuf collects a process's output; safe for concurrent use.
type logBuf struct {
	name string
	mu   sync.Mutex
	b    bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// lines returns the log lines that contain every one of subs.
func (l *logBuf) lines(subs ...string) []string {
	var out []string
	for _, line := range strings.Split(l.String(), "\n") {
		ok := line != ""
		for _, s := range subs {
			ok = ok && strings.Contains(line, s)
		}
		if ok {
			out = append(out, line)
		}
	}
	return out
}

// trackd is one run of the real binary.
type trackd struct {
	t       testing.TB
	w       *work
	cfg     *trackdConfig
	cfgPath string
	cmd     *exec.Cmd
	log     *logBuf
	done    chan struct{} // closed when the process has exited
	exitErr error         // valid after done
	tcp     *http.Client
	unix    *http.Client
	// token is the bearer token for /status when cfg.AuthToken is an
	// ${ENV} reference.
	token string
}

// procEnv is the environment of trackd processes: the test's, without any
// TRACKD_ variable that would change the config, plus extra.
func procEnv(extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "TRACKD_") {
			env = append(env, kv)
		}
	}
	return append(env, extra...)
}

// start runs `trackd run` on cfg and waits until /readyz answers 200.
func (w *work) start(cfg *trackdConfig, env ...string) *trackd {
	w.t.Helper()
	d := w.spawn(cfg, env...)
	d.waitReady(30 * time.Second)
	return d
}

// spawn runs `trackd run` on cfg without waiting for it.
func (w *work) spawn(cfg *trackdConfig, env ...string) *trackd {
	w.t.Helper()
	cfgPath := w.writeConfig("config.yaml", cfg)
	return w.spawnArgs(cfg, env, "run", "-config", cfgPath)
}

func (w *work) spawnArgs(cfg *trackdConfig, env []string, args ...string) *trackd {
	w.t.Helper()
	cmd := exec.Command(trackdBinary(w.t), args...)
	cmd.Env = procEnv(env...)
	cmd.Dir = w.dir
	lb := &logBuf{name: strings.Join(args, " ")}
	cmd.Stdout, cmd.Stderr = lb, lb
	w.mu.Lock()
	w.logs = append(w.logs, lb)
	w.mu.Unlock()
	if err := cmd.Start(); err != nil {
		w.t.Fatal(err)
	}
	d := &trackd{t: w.t, w: w, cfg: cfg, cmd: cmd, log: lb, done: make(chan struct{})}
	go func() {
		d.exitErr = cmd.Wait()
		close(d.done)
	}()
	if cfg != nil {
		if cfg.HTTP != "" {
			d.tcp = &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
		}
		if cfg.Unix != "" {
			d.unix = unixHTTPClient(cfg.Unix)
		}
	}
	w.t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-d.done
		d.closeClients()
	})
	return d
}

func unixHTTPClient(path string) *http.Client {
	return &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		MaxIdleConnsPerHost: 64,
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
	}}
}

func (d *trackd) closeClients() {
	for _, c := range []*http.Client{d.tcp, d.unix} {
		if c != nil {
			c.CloseIdleConnections()
		}
	}
}

func (d *trackd) pid() int { return d.cmd.Process.Pid }

func (d *trackd) exited() bool {
	select {
	case <-d.done:
		return true
	default:
		return false
	}
}

// admin returns a client and base URL for probes: the Unix socket when
// there is one, else TCP.
func (d *trackd) admin() (*http.Client, string) {
	if d.unix != nil {
		return d.unix, "http://trackd"
	}
	return d.tcp, "http://" + d.cfg.HTTP
}

// get fetches path from trackd's admin listener.
func (d *trackd) get(path string, hdr ...string) (int, string, error) {
	c, base := d.admin()
	req, err := http.NewRequest("GET", base+path, nil)
	if err != nil {
		return 0, "", err
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := c.Do(req.WithContext(ctx))
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// waitReady polls /readyz until it answers 200; it fails the test if
// trackd exits first.
func (d *trackd) waitReady(timeout time.Duration) {
	d.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if d.exited() {
			d.t.Fatalf("trackd exited before it was ready: %v\n%s", d.exitErr, tail(d.log.String(), 3000))
		}
		if st, _, err := d.get("/readyz"); err == nil && st == 200 {
			return
		}
		if time.Now().After(deadline) {
			d.t.Fatalf("trackd not ready after %s\n%s", timeout, tail(d.log.String(), 3000))
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// waitReadyOrExit waits until /readyz answers 200 or trackd exits by
// itself, and says which.
func (d *trackd) waitReadyOrExit(timeout time.Duration) bool {
	d.t.Helper()
	deadline := time.Now().Add(timeout)
	for !d.exited() {
		if st, _, err := d.get("/readyz"); err == nil && st == 200 {
			return true
		}
		if time.Now().After(deadline) {
			d.t.Fatalf("trackd neither ready nor stopped after %s\n%s", timeout, tail(d.log.String(), 3000))
		}
		time.Sleep(5 * time.Millisecond)
	}
	return false
}

// kill SIGKILLs trackd and waits for it to be gone.
func (d *trackd) kill() {
	d.t.Helper()
	_ = d.cmd.Process.Signal(syscall.SIGKILL)
	<-d.done
	d.closeClients()
}

// stop SIGTERMs trackd and returns how long it took to exit and its exit
// code. It fails the test if trackd does not exit within limit.
func (d *trackd) stop(limit time.Duration) (time.Duration, int) {
	d.t.Helper()
	start := time.Now()
	if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil && !d.exited() {
		d.t.Fatal(err)
	}
	select {
	case <-d.done:
	case <-time.After(limit):
		d.kill()
		d.t.Fatalf("trackd did not exit within %s of SIGTERM\n%s", limit, tail(d.log.String(), 3000))
	}
	d.closeClients()
	return time.Since(start), d.exitCode()
}

// stopClean SIGTERMs trackd and fails the test unless it exits 0 within
// its shutdown.timeout plus a second.
func (d *trackd) stopClean() time.Duration {
	d.t.Helper()
	limit := d.cfg.ShutdownTimeout
	if limit == 0 {
		limit = 20 * time.Second
	}
	took, code := d.stop(limit + time.Second)
	if code != 0 {
		d.t.Fatalf("trackd exited %d after SIGTERM, want 0\n%s", code, tail(d.log.String(), 3000))
	}
	return took
}

func (d *trackd) exitCode() int {
	<-d.done
	var ee *exec.ExitError
	if errors.As(d.exitErr, &ee) {
		return ee.ExitCode()
	}
	if d.exitErr != nil {
		return -1
	}
	return 0
}

// waitExit waits for trackd to exit by itself and returns its exit code.
func (d *trackd) waitExit(timeout time.Duration) int {
	d.t.Helper()
	select {
	case <-d.done:
	case <-time.After(timeout):
		d.t.Fatalf("trackd still running after %s\n%s", timeout, tail(d.log.String(), 3000))
	}
	return d.exitCode()
}

// status is the part of GET /status the tests read.
type status struct {
	Ready string `json:"ready"`
	Spool struct {
		Queued      int64 `json:"queued"`
		QueuedBytes int64 `json:"queued_bytes"`
		Dead        int64 `json:"dead_letters"`
		FileBytes   int64 `json:"file_bytes"`
		DroppedFull int64 `json:"dropped_full"`
	} `json:"spool"`
	Forwarder struct {
		Delivered int64   `json:"delivered"`
		RateLimit float64 `json:"rate_limit"`
	} `json:"forwarder"`
}

func (d *trackd) status() (status, error) {
	var hdr []string
	if tok := or(d.token, d.cfg.AuthToken); tok != "" {
		hdr = []string{"Authorization", "Bearer " + tok}
	}
	code, body, err := d.get("/status", hdr...)
	var st status
	if err != nil {
		return st, err
	}
	if code != 200 {
		return st, fmt.Errorf("GET /status: %d %s", code, body)
	}
	return st, json.Unmarshal([]byte(body), &st)
}

// metric reads one sample from GET /metrics, by its full name with labels
// as exposed (e.g. `trackd_spool_dropped_total{reason="max_bytes"}`).
func (d *trackd) metric(name string) (float64, error) {
	code, body, err := d.get("/metrics")
	if err != nil {
		return 0, err
	}
	if code != 200 {
		return 0, fmt.Errorf("GET /metrics: %d", code)
	}
	return metricValue(body, name)
}

func metricValue(text, name string) (float64, error) {
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		line := sc.Text()
		if rest, ok := strings.CutPrefix(line, name+" "); ok {
			return strconv.ParseFloat(strings.TrimSpace(rest), 64)
		}
	}
	return 0, fmt.Errorf("no sample %s in /metrics", name)
}

// waitDrained waits until trackd's spool queue is empty.
func (d *trackd) waitDrained(timeout time.Duration) {
	d.t.Helper()
	var last status
	waitFor(d.t, "the spool to drain", timeout, func() bool {
		st, err := d.status()
		if err != nil {
			return false
		}
		last = st
		return st.Spool.Queued == 0
	}, func() string { return fmt.Sprintf("last status: %+v", last) })
}

// rssAnonKiB is the process's resident anonymous memory, from /proc.
func rssAnonKiB(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "RssAnon:"); ok {
			return strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
		}
	}
	return 0, errors.New("no RssAnon in /proc status")
}

// rssSampler records a process's RssAnon every interval until stopped.
type rssSampler struct {
	mu      sync.Mutex
	peak    int64
	samples []int64
	stop    chan struct{}
	done    chan struct{}
}

func sampleRSS(pid int, every time.Duration) *rssSampler {
	s := &rssSampler{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		tk := time.NewTicker(every)
		defer tk.Stop()
		for {
			if v, err := rssAnonKiB(pid); err == nil {
				s.mu.Lock()
				s.samples = append(s.samples, v)
				s.peak = max(s.peak, v)
				s.mu.Unlock()
			}
			select {
			case <-s.stop:
				return
			case <-tk.C:
			}
		}
	}()
	return s
}

// finish stops sampling and returns the peak in KiB.
func (s *rssSampler) finish() int64 {
	close(s.stop)
	<-s.done
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.peak
}

// waitFor polls cond until it holds or timeout passes; then it fails the
// test, with more() appended when given.
func waitFor(t testing.TB, what string, timeout time.Duration, cond func() bool, more ...func() string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			msg := fmt.Sprintf("timed out after %s waiting for %s", timeout, what)
			for _, m := range more {
				msg += "\n" + m()
			}
			t.Fatal(msg)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "…" + s[len(s)-n:]
}

// report logs a figure and appends it to the -report file.
func report(t testing.TB, format string, args ...any) {
	t.Helper()
	line := fmt.Sprintf(format, args...)
	t.Log(line)
	if *reportFlag == "" {
		return
	}
	reportMu.Lock()
	defer reportMu.Unlock()
	f, err := os.OpenFile(*reportFlag, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		t.Errorf("report: %v", err)
		return
	}
	defer f.Close()
	fmt.Fprintf(f, "- %s: %s\n", t.Name(), line)
}

var reportMu sync.Mutex
