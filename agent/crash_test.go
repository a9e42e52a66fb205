package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/trackd/trackd/internal/trackdtest"
)

// trackdProcess is the real trackd binary running as a subprocess.
type trackdProcess struct {
	cmd    *exec.Cmd
	stderr *bytes.Buffer
	done   chan error
}

// trackdBinary is cmd/trackd built with the race detector, once per test run.
func trackdBinary(t testing.TB) string {
	t.Helper()
	path, err := trackdtest.Binary(true)
	if err != nil {
		t.Fatal(err)
	}
	return path
}

// writeConfigFile writes a config for a subprocess trackd into dir.
func writeConfigFile(t testing.TB, dir, yaml string) string {
	t.Helper()
	path := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(path, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func startProcess(t testing.TB, configPath string, args ...string) *trackdProcess {
	t.Helper()
	cmd := exec.Command(trackdBinary(t), append([]string{"run", "-config", configPath}, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &syncWriter{w: &stderr}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &trackdProcess{cmd: cmd, stderr: &stderr, done: make(chan error, 1)}
	go func() { p.done <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-p.done
	})
	return p
}

type syncWriter struct {
	mu sync.Mutex
	w  *bytes.Buffer
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}

// waitReady polls /readyz over the Unix socket until trackd answers 200.
func waitReady(t testing.TB, p *trackdProcess, sock string) {
	t.Helper()
	c := unixClient(sock)
	defer c.CloseIdleConnections()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case err := <-p.done:
			t.Fatalf("trackd exited before it was ready: %v\n%s", err, p.stderr)
		default:
		}
		if resp, err := c.Get("http://trackd/readyz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("trackd not ready after 30s\n%s", p.stderr)
}

// TestCrashLosesNothingAcknowledged posts from many concurrent clients,
// SIGKILLs trackd mid-stream, restarts it on the same spool, and checks that
// every event that got a 200 is in the spool exactly once with its body
// intact.
func TestCrashLosesNothingAcknowledged(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the trackd binary")
	}
	dir := shortTempDir(t)
	sock := filepath.Join(dir, "t.sock")
	spoolPath := filepath.Join(dir, "spool.db")
	cfgPath := writeConfigFile(t, dir, fmt.Sprintf(`
listen: {http: "%s", unix: "%s"}
upstream: {url: "http://%s", api_key: "k"}
spool: {path: "%s"}
log: {level: warn}
`, closedAddr(t), sock, closedAddr(t), spoolPath))

	const rounds = 3
	acked := map[string]string{} // userId -> pad
	var mu sync.Mutex
	for round := 0; round < rounds; round++ {
		p := startProcess(t, cfgPath)
		waitReady(t, p, sock)

		var total atomic.Int64
		ctx, cancel := context.WithCancel(context.Background())
		var wg sync.WaitGroup
		for c := 0; c < 32; c++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				cli := unixClient(sock)
				defer cli.CloseIdleConnections()
				for n := 0; ctx.Err() == nil; n++ {
					id := fmt.Sprintf("r%d-c%d-%d", round, c, n)
					pad := fmt.Sprintf("%x", []byte(id+"payload"))
					body := fmt.Sprintf(`{"event":"crash","userId":%q,"pad":%q}`, id, pad)
					req, _ := http.NewRequestWithContext(ctx, "POST", "http://trackd/api/v1/track", bytes.NewBufferString(body))
					resp, err := cli.Do(req)
					if err != nil {
						return // trackd is gone
					}
					resp.Body.Close()
					if resp.StatusCode == 200 {
						mu.Lock()
						acked[id] = pad
						mu.Unlock()
						total.Add(1)
					}
				}
			}()
		}
		// Kill once a good number of events were acknowledged this round,
		// while all 32 clients are still sending.
		waitFor(t, "events to be acknowledged", 60*time.Second, func() bool { return total.Load() >= 1500 })
		if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		<-p.done
		p.done <- nil // let the cleanup's receive return
		wg.Wait()
		cancel()
	}

	// One more start proves the spool opens after the last crash.
	p := startProcess(t, cfgPath)
	waitReady(t, p, sock)
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := <-p.done; err != nil {
		t.Fatalf("trackd did not exit cleanly on SIGTERM: %v\n%s", err, p.stderr)
	}
	p.done <- nil

	recs := spoolRecords(t, spoolPath)
	seen := map[string]int{}
	for _, r := range recs {
		var ev struct{ Event, UserID, Pad, APIKey, Timestamp string }
		if err := json.Unmarshal(r.Body, &ev); err != nil {
			t.Fatalf("record %d is not intact JSON: %v: %q", r.ID, err, r.Body)
		}
		if ev.Event != "crash" || ev.APIKey != "k" || ev.Timestamp == "" {
			t.Fatalf("record %d was altered: %s", r.ID, r.Body)
		}
		if want, ok := acked[ev.UserID]; ok && want != ev.Pad {
			t.Fatalf("record %d body damaged: pad %q, want %q", r.ID, ev.Pad, want)
		}
		seen[ev.UserID]++
	}
	lost, dup := 0, 0
	for id := range acked {
		switch seen[id] {
		case 0:
			lost++
		case 1:
		default:
			dup++
		}
	}
	t.Logf("%d rounds: %d events acknowledged, %d records in spool (the rest were in flight at the kill)", rounds, len(acked), len(recs))
	if lost > 0 || dup > 0 {
		t.Fatalf("%d acknowledged events lost, %d stored more than once", lost, dup)
	}
}
