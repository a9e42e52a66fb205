package agent

// Process-level tests of forwarding: the real trackd binary runs as a
// subprocess and forwards to an upstreamtest.Server (or a TLS server) in the
// test process, on loopback. They check what the forwarder package's own
// tests cannot: crashes of the whole process while forwarding, several
// processes sharing one upstream rate limit, an outage seen end to end, a
// certificate trackd must not trust, a Retry-After that outlives the process,
// and dead letters as they land in the spool file.

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/trackd/trackd/forwarder"
	"github.com/trackd/trackd/forwarder/upstreamtest"
	"github.com/trackd/trackd/spool"
)

// fwdTrackd is one trackd subprocess with its files and clients.
type fwdTrackd struct {
	t         *testing.T
	dir       string
	cfgPath   string
	sock      string
	httpAddr  string
	spoolPath string
	p         *trackdProcess
	unix      *http.Client
	tcp       *http.Client
}

// fwdOptions are the config values the tests vary; zero values leave
// trackd's defaults.
type fwdOptions struct {
	upstream     string // base URL
	rate         string // upstream.rate, as YAML
	burst        int
	concurrency  int
	retryInitial string
	retryMax     string
	logLevel     string // default warn
}

// newFwdTrackd writes a config for a trackd forwarding to o.upstream, with a
// Unix socket and a TCP listener on a fixed free port (so that restarts keep
// both addresses), and starts it.
func newFwdTrackd(t *testing.T, o fwdOptions) *fwdTrackd {
	t.Helper()
	dir := shortTempDir(t)
	ft := &fwdTrackd{
		t:         t,
		dir:       dir,
		sock:      filepath.Join(dir, "t.sock"),
		httpAddr:  closedAddr(t),
		spoolPath: filepath.Join(dir, "spool.db"),
	}
	var up strings.Builder
	fmt.Fprintf(&up, "  url: %q\n  api_key: \"k\"\n", o.upstream)
	if o.rate != "" {
		fmt.Fprintf(&up, "  rate: %s\n", o.rate)
	}
	if o.burst != 0 {
		fmt.Fprintf(&up, "  burst: %d\n", o.burst)
	}
	if o.concurrency != 0 {
		fmt.Fprintf(&up, "  concurrency: %d\n", o.concurrency)
	}
	if o.retryInitial != "" || o.retryMax != "" {
		up.WriteString("  retry:\n")
		if o.retryInitial != "" {
			fmt.Fprintf(&up, "    initial: %s\n", o.retryInitial)
		}
		if o.retryMax != "" {
			fmt.Fprintf(&up, "    max: %s\n", o.retryMax)
		}
	}
	level := o.logLevel
	if level == "" {
		level = "warn"
	}
	ft.cfgPath = writeConfigFile(t, dir, fmt.Sprintf(`
listen:
  http: %q
  unix: %q
upstream:
%sspool:
  path: %q
log:
  level: %s
shutdown:
  timeout: 10s
`, ft.httpAddr, ft.sock, up.String(), ft.spoolPath, level))
	ft.unix = unixClient(ft.sock)
	ft.tcp = &http.Client{Transport: &http.Transport{}, Timeout: 10 * time.Second}
	t.Cleanup(func() {
		ft.unix.CloseIdleConnections()
		ft.tcp.CloseIdleConnections()
	})
	ft.start()
	return ft
}

// start starts the process on the same config and spool and waits until it
// is ready.
func (ft *fwdTrackd) start() {
	ft.t.Helper()
	ft.p = startProcess(ft.t, ft.cfgPath)
	waitReady(ft.t, ft.p, ft.sock)
}

// kill SIGKILLs the process and waits for it to be gone.
func (ft *fwdTrackd) kill() {
	ft.t.Helper()
	if err := ft.p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		ft.t.Fatal(err)
	}
	<-ft.p.done
	ft.p.done <- nil // for startProcess's cleanup
}

// stop sends SIGTERM and requires a clean exit. It returns what trackd
// logged over its life.
func (ft *fwdTrackd) stop() string {
	ft.t.Helper()
	if err := ft.p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		ft.t.Fatal(err)
	}
	select {
	case err := <-ft.p.done:
		ft.p.done <- nil
		if err != nil {
			ft.t.Fatalf("trackd did not exit cleanly on SIGTERM: %v\n%s", err, ft.p.stderr)
		}
	case <-time.After(20 * time.Second):
		ft.t.Fatalf("trackd did not exit within 20s of SIGTERM\n%s", ft.p.stderr)
	}
	return ft.p.stderr.String()
}

// post sends one event over the Unix socket (unix) or TCP and returns the
// status; an error means no answer (the process is gone, or going).
func (ft *fwdTrackd) post(unix bool, path, body string) (int, error) {
	c, base := ft.tcp, "http://"+ft.httpAddr
	if unix {
		c, base = ft.unix, "http://trackd"
	}
	resp, err := c.Post(base+path, "application/json", strings.NewReader(body))
	if err != nil {
		return 0, err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode, nil
}

// mustPost posts an event and requires a 200.
func (ft *fwdTrackd) mustPost(unix bool, path, body string) {
	ft.t.Helper()
	code, err := ft.post(unix, path, body)
	if err != nil || code != http.StatusOK {
		ft.t.Fatalf("post %s: status %d, error %v", body, code, err)
	}
}

// fwdStatus is the part of GET /status these tests read.
type fwdStatus struct {
	Ready string `json:"ready"`
	Spool struct {
		Queued      int64 `json:"queued"`
		DeadLetters int64 `json:"dead_letters"`
	} `json:"spool"`
	Forwarder struct {
		Delivered    uint64  `json:"delivered"`
		DeadLettered uint64  `json:"dead_lettered"`
		Retries      uint64  `json:"retries"`
		Throttled    uint64  `json:"throttled"`
		RateLimit    float64 `json:"rate_limit"`
		PausedUntil  string  `json:"paused_until"`
	} `json:"forwarder"`
}

// status is GET /status over the Unix socket.
func (ft *fwdTrackd) status() fwdStatus {
	ft.t.Helper()
	resp, err := ft.unix.Get("http://trackd/status")
	if err != nil {
		ft.t.Fatalf("GET /status: %v", err)
	}
	defer resp.Body.Close()
	var st fwdStatus
	if resp.StatusCode != http.StatusOK {
		ft.t.Fatalf("GET /status: %s", resp.Status)
	}
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		ft.t.Fatalf("GET /status: %v", err)
	}
	return st
}

// metric is the value of an unlabelled metric from GET /metrics.
func (ft *fwdTrackd) metric(name string) float64 {
	ft.t.Helper()
	resp, err := ft.unix.Get("http://trackd/metrics")
	if err != nil {
		ft.t.Fatalf("GET /metrics: %v", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		ft.t.Fatalf("GET /metrics: %v", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err != nil {
				ft.t.Fatalf("metric %s: %v", name, err)
			}
			return f
		}
	}
	ft.t.Fatalf("metric %s not found in\n%s", name, b)
	return 0
}

// newUpstreamServer starts an upstreamtest.Server that is closed after the
// test (and after the trackd processes started later, whose cleanups run
// first).
func newUpstreamServer(t *testing.T) *upstreamtest.Server {
	t.Helper()
	up, err := upstreamtest.NewServer("")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { up.Close() })
	return up
}

// fwdEvent is the part of a forwarded body the tests match on.
type fwdEvent struct {
	APIKey     string `json:"apiKey"`
	Event      string `json:"event"`
	UserID     string `json:"userId"`
	Timestamp  string `json:"timestamp"`
	Properties struct {
		Seq    int  `json:"seq"`
		Poison bool `json:"poison"`
	} `json:"properties"`
}

func parseFwdEvent(t *testing.T, body []byte) fwdEvent {
	t.Helper()
	var ev fwdEvent
	if err := json.Unmarshal(body, &ev); err != nil {
		t.Fatalf("upstream got a body that is not JSON: %v: %q", err, body)
	}
	return ev
}

// deliveredIDs counts, by userId, the requests upstream answered 200.
func deliveredIDs(t *testing.T, reqs []upstreamtest.Request) map[string]int {
	t.Helper()
	n := map[string]int{}
	for _, r := range reqs {
		if r.Status == http.StatusOK {
			n[parseFwdEvent(t, r.Body).UserID]++
		}
	}
	return n
}

// TestForwardCrashWhileForwarding posts events from concurrent clients over
// both listeners while trackd forwards them to a slightly slow upstream, and
// SIGKILLs trackd at random moments, restarting it on the same spool each
// time. After the last restart drains, every event trackd answered 200 for
// must have reached upstream at least once, none it refused may have, and
// duplicates (the at-least-once cost of each crash) must stay few.
func TestForwardCrashWhileForwarding(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the trackd binary")
	}
	up := newUpstreamServer(t)
	up.SetMode(upstreamtest.Mode{Answer: upstreamtest.Answer{Delay: 2 * time.Millisecond}})
	ft := newFwdTrackd(t, fwdOptions{upstream: up.URL(), rate: "0", retryInitial: "50ms", retryMax: "500ms"})

	const (
		target  = 3000 // events acknowledged in all
		clients = 16
		kills   = 6
	)
	// Kill points: acknowledged counts spread over the run, each with some
	// distance from the last so that every life of trackd forwards a while.
	var points []int64
	for i := range kills {
		lo := int64(200 + i*(target-400)/kills)
		points = append(points, lo+rand.Int64N(int64((target-400)/kills)-100))
	}

	var (
		mu      sync.Mutex
		acked   = map[string]bool{} // answered 200
		refused = map[string]int{}  // answered something else: id -> status
		unknown int                 // no answer: may or may not be stored
		nAcked  atomic.Int64
	)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() }) // clients stop before trackd does, even on failure
	for c := range clients {
		wg.Go(func() {
			unix := c%2 == 1
			for n := 0; ctx.Err() == nil && nAcked.Load() < target; n++ {
				id := fmt.Sprintf("c%d-%d", c, n)
				path := "/api/v1/track"
				body := fmt.Sprintf(`{"event":"crash_fwd","userId":%q,"properties":{"seq":%d}}`, id, n)
				switch {
				case n%10 == 9:
					path = "/api/v1/identify"
					body = fmt.Sprintf(`{"userId":%q,"traits":{"seq":%d}}`, id, n)
				case n%25 == 7:
					// Refused (400): must never be stored, so never sent.
					body = fmt.Sprintf(`{"event":"crash_fwd","userId":%q,"properties":[%d]}`, id, n)
				}
				code, err := ft.post(unix, path, body)
				mu.Lock()
				switch {
				case err != nil:
					unknown++
				case code == http.StatusOK:
					acked[id] = true
					nAcked.Add(1)
				default:
					refused[id] = code
				}
				mu.Unlock()
				if err != nil {
					time.Sleep(2 * time.Millisecond) // trackd is restarting
				}
			}
		})
	}

	// lives[k] is when the k-th kill was sent and when the next process
	// was ready: a duplicate must straddle one of them.
	type life struct{ killed, ready time.Time }
	var (
		atKill []int
		lives  []life
	)
	for _, pt := range points {
		waitFor(t, fmt.Sprintf("%d events acknowledged", pt), 60*time.Second, func() bool { return nAcked.Load() >= pt })
		time.Sleep(time.Duration(rand.IntN(20)) * time.Millisecond) // a random-ish moment
		killed := time.Now()
		ft.kill()
		atKill = append(atKill, up.Count())
		ft.start()
		lives = append(lives, life{killed, time.Now()})
	}
	wg.Wait()
	if atKill[len(atKill)-1] == 0 {
		t.Fatal("upstream had received nothing by the last kill: the kills did not happen while forwarding")
	}

	// Drain: everything acknowledged reaches upstream. The clients are done,
	// so once the spool is empty nothing more will come: a record leaves
	// it only after upstream has it.
	mu.Lock()
	ackedIDs := make([]string, 0, len(acked))
	for id := range acked {
		ackedIDs = append(ackedIDs, id)
	}
	mu.Unlock()
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		st := ft.status()
		got := deliveredIDs(t, up.Received())
		var missing []string
		for _, id := range ackedIDs {
			if got[id] == 0 {
				missing = append(missing, id)
			}
		}
		if len(missing) == 0 {
			break
		}
		if st.Spool.Queued == 0 || time.Now().After(deadline) {
			t.Fatalf("%d acknowledged events never reached upstream, e.g. %v; trackd status %+v",
				len(missing), missing[:min(len(missing), 10)], st)
		}
	}
	waitFor(t, "the spool to empty", 30*time.Second, func() bool {
		st := ft.status()
		return st.Spool.Queued == 0 && st.Forwarder.Delivered > 0
	})
	ft.stop()

	reqs := up.Received()
	got := map[string]int{}
	firstAt := map[string]time.Time{}
	statuses := map[int]int{}
	unexplained := 0
	perKill := make([]int, len(points))
	for _, r := range reqs {
		statuses[r.Status]++
		ev := parseFwdEvent(t, r.Body)
		if ev.APIKey != "k" || ev.Timestamp == "" {
			t.Errorf("upstream got an event without the configured apiKey or a timestamp: %s", r.Body)
		}
		if r.Status != http.StatusOK {
			t.Errorf("upstream answered %d to %s", r.Status, r.Body)
			continue
		}
		if got[ev.UserID]++; got[ev.UserID] == 1 {
			firstAt[ev.UserID] = r.At
			continue
		}
		// Sent again: only a crash between the two sends excuses that,
		// i.e. a kill before this one arrived, and the first one arriving
		// before the process after that kill was even ready.
		k := slices.IndexFunc(lives, func(l life) bool { return !r.At.Before(l.killed) && !firstAt[ev.UserID].After(l.ready) })
		if k >= 0 {
			perKill[k]++
		} else {
			if unexplained++; unexplained <= 5 {
				t.Errorf("%s delivered again at %s with no crash since its first delivery at %s",
					ev.UserID, r.At.Format("15:04:05.000000"), firstAt[ev.UserID].Format("15:04:05.000000"))
			}
		}
	}
	if unexplained > 0 {
		t.Errorf("%d deliveries were repeated without a crash in between", unexplained)
	}
	dups, dupEvents := 0, 0
	for _, id := range ackedIDs {
		if got[id] > 1 {
			dups += got[id] - 1
			dupEvents++
		}
	}
	unackedDelivered := 0
	for id := range got {
		if !acked[id] {
			unackedDelivered++
		}
	}
	for id, code := range refused {
		if got[id] > 0 {
			t.Errorf("event %s was answered %d by trackd but was delivered %d times", id, code, got[id])
		}
	}
	t.Logf("%d kills (upstream request count at each: %v); %d acknowledged, %d refused, %d without answer "+
		"(%d of those were stored and delivered); %d requests upstream (%v); duplicates: %d extra deliveries of %d events (%.2f%%), by kill %v",
		kills, atKill, len(ackedIDs), len(refused), unknown, unackedDelivered, len(reqs), statuses,
		dups, dupEvents, 100*float64(dups)/float64(len(ackedIDs)), perKill)
	if dups*20 >= len(ackedIDs) {
		t.Errorf("%d duplicate deliveries for %d events: at least 5%%", dups, len(ackedIDs))
	}
}

// TestForwardThreeProcessesShareOneUpstreamLimit runs three trackd
// processes, each allowed 500 requests per second, against one upstream that
// takes 50 per second from all of them together and answers 429 beyond
// that. Each must find its share without talking to the others: all three
// keep delivering, together they use about what upstream allows, and once
// settled most requests are accepted.
func TestForwardThreeProcessesShareOneUpstreamLimit(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the trackd binary")
	}
	const (
		limit     = 50.0
		instances = 3
		perProc   = 800 // more than any one of them can deliver during the test
		settle    = 3 * time.Second
		window    = 6 * time.Second
	)
	up := newUpstreamServer(t)
	up.SetMode(upstreamtest.Mode{RateLimit: limit})

	var procs []*fwdTrackd
	for range instances {
		procs = append(procs, newFwdTrackd(t, fwdOptions{upstream: up.URL(), rate: "500"}))
	}
	var wg sync.WaitGroup
	var failed atomic.Int64
	for i, ft := range procs {
		for c := range 4 {
			wg.Go(func() {
				for n := c; n < perProc; n += 4 {
					body := fmt.Sprintf(`{"event":"shared","userId":"p%d-%d","properties":{"seq":%d}}`, i, n, n)
					if code, err := ft.post(c%2 == 0, "/api/v1/track", body); err != nil || code != http.StatusOK {
						failed.Add(1)
					}
				}
			})
		}
	}
	wg.Wait()
	if n := failed.Load(); n > 0 {
		t.Fatalf("%d posts were not answered 200", n)
	}
	fed := time.Now()
	from, to := fed.Add(settle), fed.Add(settle+window)
	waitFor(t, "the measuring window to pass", settle+window+10*time.Second, func() bool {
		reqs := up.Received()
		return len(reqs) > 0 && reqs[len(reqs)-1].At.After(to)
	})

	var ok, throttled [instances]int
	var okTotal, throttledTotal, before int
	for _, r := range up.Received() {
		if r.At.Before(from) {
			if r.Status == http.StatusOK {
				before++
			}
			continue
		}
		if r.At.After(to) {
			continue
		}
		var i int
		if _, err := fmt.Sscanf(parseFwdEvent(t, r.Body).UserID, "p%d-", &i); err != nil || i < 0 || i >= instances {
			t.Fatalf("unexpected event upstream: %s", r.Body)
		}
		switch r.Status {
		case http.StatusOK:
			ok[i]++
			okTotal++
		case http.StatusTooManyRequests:
			throttled[i]++
			throttledTotal++
		default:
			t.Errorf("upstream answered %d to %s", r.Status, r.Body)
		}
	}
	secs := window.Seconds()
	rate := float64(okTotal) / secs
	share := float64(throttledTotal) / float64(max(1, okTotal+throttledTotal))
	var per []string
	for i := range instances {
		st := procs[i].status()
		per = append(per, fmt.Sprintf("#%d: %.1f/s accepted, %.1f/s throttled, rate_limit now %.1f, %d queued",
			i, float64(ok[i])/secs, float64(throttled[i])/secs, st.Forwarder.RateLimit, st.Spool.Queued))
		if st.Spool.Queued == 0 {
			t.Fatalf("trackd #%d ran out of events during the window; the measurement is void", i)
		}
	}
	t.Logf("upstream limit %.0f/s; %d accepted before the window; over %s after %s settling: %.1f/s accepted, %.1f/s throttled (%.0f%% of requests)\n  %s",
		limit, before, window, settle, rate, float64(throttledTotal)/secs, 100*share, strings.Join(per, "\n  "))

	// Upstream's bucket admits at most limit per second plus its burst, so
	// the ceiling is exact; the floor is what the fleet should not give up.
	if rate < 0.7*limit || rate > limit+limit/secs+1 {
		t.Errorf("aggregate accepted rate %.1f/s; want about %.0f/s", rate, limit)
	}
	for i := range instances {
		if r := float64(ok[i]) / secs; r < limit/instances/4 {
			t.Errorf("trackd #%d delivered %.1f/s; every instance should get a share (fair: %.1f/s)", i, r, limit/instances)
		}
	}
	if share >= 0.5 {
		t.Errorf("%.0f%% of requests were throttled after settling; want a minority", 100*share)
	}
	// No clean stop: with a backlog and upstream accepting, each would
	// drain for its whole shutdown.timeout.
	for _, ft := range procs {
		ft.kill()
	}
}

// TestForwardOutageEndToEnd posts events over both listeners while upstream
// is down, then brings it back: every event arrives, once, oldest first.
func TestForwardOutageEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the trackd binary")
	}
	const n = 200
	const concurrency = 4
	up := newUpstreamServer(t)
	up.Down()
	ft := newFwdTrackd(t, fwdOptions{upstream: up.URL(), rate: "0", concurrency: concurrency, retryInitial: "100ms", retryMax: "1s"})

	// One at a time, alternating listeners, so the spool's order is the
	// order of posting.
	for i := range n {
		ft.mustPost(i%2 == 0, "/api/v1/track", fmt.Sprintf(`{"event":"outage","userId":"o-%d","properties":{"seq":%d}}`, i, i))
	}
	// Let the forwarder find upstream down (three refused sends in a row)
	// before it comes back.
	waitFor(t, "the forwarder to find upstream down", 10*time.Second, func() bool {
		return ft.metric("trackd_forwarder_retries_total") >= 3
	})
	if st := ft.status(); st.Forwarder.Delivered != 0 || st.Spool.Queued != n {
		t.Fatalf("while upstream is down: delivered %d, queued %d; want 0 and %d", st.Forwarder.Delivered, st.Spool.Queued, n)
	}
	if err := up.Up(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "every event to be delivered", 20*time.Second, func() bool { return up.Count(http.StatusOK) >= n })
	waitFor(t, "the spool to empty", 10*time.Second, func() bool { return ft.status().Spool.Queued == 0 })
	ft.stop()

	var order []int // seq of each delivery, in arrival order
	seen := map[int]int{}
	for _, r := range up.Received() {
		if r.Status != http.StatusOK {
			t.Errorf("upstream answered %d to %s", r.Status, r.Body)
			continue
		}
		seq := parseFwdEvent(t, r.Body).Properties.Seq
		order = append(order, seq)
		seen[seq]++
	}
	for i := range n {
		if seen[i] != 1 {
			t.Errorf("event %d delivered %d times; want once", i, seen[i])
		}
	}
	if len(order) == 0 || order[0] != 0 {
		t.Fatalf("first delivery after the outage was event %v; want the oldest, 0 (order %v)", order[:min(len(order), 10)], order)
	}
	// Records held back by an outage keep their order. Requests in flight
	// together may swap on the wire, and a request whose goroutine (in
	// trackd or in upstream) is descheduled for a few milliseconds is
	// overtaken by a few dozen on loopback; but a queue that lost its order
	// (newest first, or the records tried before the outage sent last)
	// displaces events by up to n.
	worst, worstSeq := 0, 0
	for pos, seq := range order {
		if d := abs(pos - seq); d > worst {
			worst, worstSeq = d, seq
		}
	}
	t.Logf("%d events delivered after the outage, each once; the first was the oldest; largest displacement from spool order: %d (event %d; concurrency %d)",
		len(order), worst, worstSeq, concurrency)
	if worst > n/4 {
		t.Errorf("event %d arrived %d places from its spool position; the outage did not keep the queue's order: %v", worstSeq, worst, order)
	}
	if recs := spoolRecords(t, ft.spoolPath); len(recs) != 0 {
		t.Errorf("%d records still queued after every event was delivered", len(recs))
	}
}

func abs(x int) int {
	if x < 0 {
		return -x
	}
	return x
}

// TestForwardUntrustedCertificateKeepsEvents points trackd at an HTTPS
// upstream whose self-signed certificate it must not trust. Nothing may be
// sent in clear, dead-lettered or deleted: the events stay queued and the
// forwarder pauses, retrying with backoff.
func TestForwardUntrustedCertificateKeepsEvents(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the trackd binary")
	}
	const n = 20
	var handled atomic.Int64
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		handled.Add(1)
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"status":"success"}`)
	}))
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // handshake failures are expected
	srv.StartTLS()
	t.Cleanup(srv.Close)

	ft := newFwdTrackd(t, fwdOptions{upstream: srv.URL, retryInitial: "500ms", retryMax: "5s", logLevel: "error"})
	for i := range n {
		path, body := "/api/v1/track", fmt.Sprintf(`{"event":"tls","userId":"t-%d"}`, i)
		if i%4 == 3 {
			path, body = "/api/v1/identify", fmt.Sprintf(`{"userId":"t-%d","traits":{"name":"Ada"}}`, i)
		}
		ft.mustPost(i%2 == 0, path, body)
	}
	// At least two attempts: the first pause ended and trackd tried again.
	waitFor(t, "trackd to retry after the first certificate failure", 15*time.Second, func() bool {
		return ft.metric("trackd_forwarder_requests_total") >= 2
	})
	// Until the forwarder shows the pause, or anything left the queue.
	var st fwdStatus
	waitFor(t, "/status to show the forwarder paused", 10*time.Second, func() bool {
		st = ft.status()
		return st.Forwarder.PausedUntil != "" || st.Spool.Queued != n || st.Spool.DeadLetters != 0
	})
	if st.Forwarder.Delivered != 0 || st.Forwarder.DeadLettered != 0 || st.Spool.DeadLetters != 0 || st.Spool.Queued != n {
		t.Fatalf("/status with an untrusted certificate: delivered %d, dead-lettered %d, dead letters %d, queued %d; want 0, 0, 0, %d",
			st.Forwarder.Delivered, st.Forwarder.DeadLettered, st.Spool.DeadLetters, st.Spool.Queued, n)
	}
	logs := ft.stop()
	if !strings.Contains(logs, "certificate is not trusted") {
		t.Errorf("trackd did not log the certificate failure; it logged:\n%s", logs)
	}
	if h := handled.Load(); h != 0 {
		t.Errorf("the untrusted server handled %d requests", h)
	}

	recs := spoolRecords(t, ft.spoolPath)
	if len(recs) != n {
		t.Fatalf("%d records queued after stopping; want all %d", len(recs), n)
	}
	if recs[0].Attempts == 0 {
		t.Errorf("the oldest record has no attempt counted; the forwarder did not try it")
	}
	sp, err := spool.Open(spool.Options{Path: ft.spoolPath, Logger: discardLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer sp.Close()
	if dead, err := sp.ReadDead(0, 100); err != nil || len(dead) != 0 {
		t.Errorf("dead letters after an untrusted certificate: %d (error %v); want none", len(dead), err)
	}
}

// TestForwardRetryAfterSurvivesRestart has upstream answer one 429 with
// Retry-After: 3, SIGKILLs trackd right after it took the answer in, and
// restarts it: no request may reach upstream before the moment upstream
// named, from the killed process or the new one.
func TestForwardRetryAfterSurvivesRestart(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the trackd binary")
	}
	const retryAfter = 3 * time.Second
	up := newUpstreamServer(t)
	var (
		first      atomic.Bool
		entered    = make(chan struct{})
		release    = make(chan struct{})
		testDone   = make(chan struct{})
		answeredMu sync.Mutex
		answeredAt time.Time
	)
	t.Cleanup(func() { close(testDone) }) // before up.Close: unblocks a held request
	up.SetMode(upstreamtest.Mode{Script: func(upstreamtest.Request) (upstreamtest.Answer, bool) {
		if !first.CompareAndSwap(false, true) {
			return upstreamtest.Answer{}, false
		}
		close(entered)
		select {
		case <-release:
		case <-testDone:
		}
		answeredMu.Lock()
		answeredAt = time.Now()
		answeredMu.Unlock()
		return upstreamtest.Answer{Status: http.StatusTooManyRequests, RetryAfter: upstreamtest.RetryAfterSeconds(retryAfter)}, true
	}})

	// One request at a time, so nothing but the 429'd one is on the wire.
	ft := newFwdTrackd(t, fwdOptions{upstream: up.URL(), rate: "0", concurrency: 1, logLevel: "info"})
	post := func(i int) {
		ft.mustPost(i%2 == 0, "/api/v1/track", fmt.Sprintf(`{"event":"retry_after","userId":"r-%d","properties":{"seq":%d}}`, i, i))
	}
	post(0)
	select {
	case <-entered:
	case <-time.After(10 * time.Second):
		t.Fatal("trackd did not forward the first event")
	}
	const n = 20
	for i := 1; i < n; i++ {
		post(i)
	}
	commits := ft.metric("trackd_spool_commits_total")
	close(release)
	// trackd has the answer once it shows the pause; the pause is
	// persisted in the commit that follows, and an append queued after that
	// commit began is a barrier behind it.
	waitFor(t, "/status to show the pause", 10*time.Second, func() bool { return ft.status().Forwarder.PausedUntil != "" })
	waitFor(t, "a spool commit after the 429", 10*time.Second, func() bool {
		return ft.metric("trackd_spool_commits_total") > commits
	})
	post(n)
	ft.kill()
	answeredMu.Lock()
	moment := answeredAt.Add(retryAfter)
	answeredMu.Unlock()

	// The pause must be on disk: read it from a copy of the crashed spool,
	// leaving the original as the crash left it.
	if until := persistedPause(t, ft.spoolPath); until.Before(moment) {
		t.Fatalf("persisted pause ends at %s, before the moment upstream named (%s)", until.Format(time.RFC3339Nano), moment.Format(time.RFC3339Nano))
	}

	ft.start()
	if restarted := time.Now(); !restarted.Before(moment) {
		t.Fatalf("trackd took until %s to restart, past the Retry-After moment %s: the test shows nothing", restarted, moment)
	}
	waitFor(t, "every event to be delivered after the pause", 20*time.Second, func() bool { return up.Count(http.StatusOK) >= n+1 })
	logs := ft.stop()

	reqs := up.Received()
	if reqs[0].Status != http.StatusTooManyRequests {
		t.Fatalf("first request upstream was answered %d; want the scripted 429", reqs[0].Status)
	}
	early := 0
	for _, r := range reqs[1:] {
		if r.At.Before(moment) {
			if early++; early == 1 {
				t.Errorf("request for %s arrived %s before the Retry-After moment", parseFwdEvent(t, r.Body).UserID, moment.Sub(r.At))
			}
		}
	}
	if early > 1 {
		t.Errorf("%d requests in all arrived before the Retry-After moment", early)
	}
	t.Logf("429 answered at %s with Retry-After %s; first request after it arrived %s after the moment",
		answeredAt.Format("15:04:05.000"), retryAfter, reqs[1].At.Sub(moment).Round(time.Millisecond))
	if !strings.Contains(logs, "resuming the pause upstream asked for before the restart") {
		t.Errorf("the restarted trackd did not log that it resumed the pause:\n%s", logs)
	}
}

// persistedPause opens a copy of the spool at path and returns the pause
// the forwarder persisted in it.
func persistedPause(t *testing.T, path string) time.Time {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	cp := filepath.Join(t.TempDir(), "copy.db")
	if err := os.WriteFile(cp, b, 0o600); err != nil {
		t.Fatal(err)
	}
	sp, err := spool.Open(spool.Options{Path: cp, Logger: discardLogger()})
	if err != nil {
		t.Fatalf("open a copy of the crashed spool: %v", err)
	}
	defer sp.Close()
	v, err := sp.State(forwarder.StateKeyPausedUntil)
	if err != nil {
		t.Fatal(err)
	}
	if len(v) == 0 {
		t.Fatal("no pause persisted in the spool when trackd was killed")
	}
	until, err := time.Parse(time.RFC3339Nano, string(v))
	if err != nil {
		t.Fatalf("persisted pause %q: %v", v, err)
	}
	return until
}

// TestForwardDeadLetters has upstream refuse (400) every event carrying a
// marker and accept the rest: the refused ones land in the dead-letter store
// with the status and upstream's message, are sent exactly once, and the
// others are delivered.
func TestForwardDeadLetters(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the trackd binary")
	}
	const n = 100
	up := newUpstreamServer(t)
	up.SetMode(upstreamtest.Mode{Script: func(r upstreamtest.Request) (upstreamtest.Answer, bool) {
		var ev fwdEvent
		if json.Unmarshal(r.Body, &ev) != nil || !ev.Properties.Poison {
			return upstreamtest.Answer{}, false
		}
		return upstreamtest.Answer{
			Status: http.StatusBadRequest,
			Body:   fmt.Sprintf(`{"status":"failure","message":"poisoned event %s"}`, ev.UserID),
		}, true
	}})
	ft := newFwdTrackd(t, fwdOptions{upstream: up.URL(), rate: "0", logLevel: "error"})

	poisoned := map[string]bool{}
	for i := range n {
		id := fmt.Sprintf("d-%d", i)
		poison := i%7 == 3
		if poison {
			poisoned[id] = true
		}
		ft.mustPost(i%2 == 0, "/api/v1/track", fmt.Sprintf(`{"event":"dead","userId":%q,"properties":{"seq":%d,"poison":%t}}`, id, i, poison))
	}
	want := len(poisoned)
	waitFor(t, "every event to be delivered or dead-lettered", 20*time.Second, func() bool {
		st := ft.status()
		return st.Spool.Queued == 0 && st.Spool.DeadLetters == int64(want)
	})
	ft.stop()

	sent := map[string]int{}
	for _, r := range up.Received() {
		ev := parseFwdEvent(t, r.Body)
		sent[ev.UserID]++
		wantStatus := http.StatusOK
		if poisoned[ev.UserID] {
			wantStatus = http.StatusBadRequest
		}
		if r.Status != wantStatus {
			t.Errorf("%s was answered %d; want %d", ev.UserID, r.Status, wantStatus)
		}
	}
	for i := range n {
		if id := fmt.Sprintf("d-%d", i); sent[id] != 1 {
			t.Errorf("%s (poisoned: %t) was sent %d times; want once", id, poisoned[id], sent[id])
		}
	}

	sp, err := spool.Open(spool.Options{Path: ft.spoolPath, Logger: discardLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer sp.Close()
	if recs, err := sp.Read(0, 10); err != nil || len(recs) != 0 {
		t.Errorf("%d records still queued (error %v); want none", len(recs), err)
	}
	dead, err := sp.ReadDead(0, 1000)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, d := range dead {
		ev := parseFwdEvent(t, d.Body)
		ids = append(ids, ev.UserID)
		if !poisoned[ev.UserID] {
			t.Errorf("dead letter for %s, which upstream accepted", ev.UserID)
		}
		if d.Status != http.StatusBadRequest {
			t.Errorf("dead letter %s has status %d; want 400", ev.UserID, d.Status)
		}
		if !strings.Contains(d.Reason, "poisoned event "+ev.UserID) {
			t.Errorf("dead letter %s has reason %q; want upstream's message", ev.UserID, d.Reason)
		}
		if d.DeadAt.IsZero() {
			t.Errorf("dead letter %s has no time", ev.UserID)
		}
	}
	slices.Sort(ids)
	if distinct := len(slices.Compact(ids)); distinct != want || len(dead) != want {
		t.Errorf("%d dead letters (%d distinct); want %d, one per poisoned event", len(dead), distinct, want)
	}
	t.Logf("%d events: %d delivered, %d dead-lettered with status 400 and upstream's message", n, n-want, len(dead))
}
