//go:build reliability

package reliability

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
	"golang.org/x/sys/unix"
)

// limitFileSize sets the soft RLIMIT_FSIZE of a running process (prlimit(2);
// the hard limit stays unlimited, so it can be raised again from outside).
// 0 means unlimited.
func limitFileSize(t testing.TB, pid int, bytes int64) {
	t.Helper()
	lim := unix.Rlimit{Cur: unix.RLIM_INFINITY, Max: unix.RLIM_INFINITY}
	if bytes > 0 {
		lim.Cur = uint64(bytes)
	}
	if err := unix.Prlimit(pid, unix.RLIMIT_FSIZE, &lim, nil); err != nil {
		t.Fatalf("prlimit RLIMIT_FSIZE on pid %d: %v", pid, err)
	}
}

// signalSurvivable says whether sig would not kill the process: it is
// ignored or caught (SigIgn or SigCgt in /proc).
func signalSurvivable(t testing.TB, pid int, sig syscall.Signal) bool {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		for _, field := range []string{"SigIgn:", "SigCgt:"} {
			if rest, ok := strings.CutPrefix(line, field); ok {
				mask, err := strconv.ParseUint(strings.TrimSpace(rest), 16, 64)
				if err != nil {
					t.Fatal(err)
				}
				if mask&(1<<(uint(sig)-1)) != 0 {
					return true
				}
			}
		}
	}
	return false
}

func fileSize(t testing.TB, path string) int64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}

// boltCheck runs bbolt's own consistency check on a stopped trackd's file.
func boltCheck(t testing.TB, path string) {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: 2 * time.Second})
	if err != nil {
		t.Fatalf("bbolt cannot open the spool: %v", err)
	}
	defer db.Close()
	err = db.View(func(tx *bolt.Tx) error {
		var errs []string
		for err := range tx.Check() {
			errs = append(errs, err.Error())
		}
		if len(errs) > 0 {
			return fmt.Errorf("bbolt check: %s", strings.Join(errs, "; "))
		}
		return nil
	})
	if err != nil {
		t.Fatalf("the spool file is corrupt: %v", err)
	}
}

// fillUntil503 posts big events one at a time until trackd answers 503,
// and returns the answers' Retry-After and message.
func fillUntil503(t testing.TB, l *ledger, tg target, limit int) (retryAfter, msg string, n int) {
	t.Helper()
	for n = 0; n < limit; n++ {
		id := l.newID()
		st, hdr, body, err := post(context.Background(), tg.client, tg.base+kindPath(0), eventBody(id, 0, 16<<10), nil)
		l.record(id, 0, 16<<10, st, err)
		if err != nil {
			t.Fatalf("post: %v", err)
		}
		if st == 503 {
			return hdr.Get("Retry-After"), string(body), n
		}
		if st != 200 {
			t.Fatalf("answer %d %s while filling the file system, want 200 or 503", st, body)
		}
	}
	t.Fatalf("no 503 after %d events of 16 KiB with RLIMIT_FSIZE at the file's size", limit)
	return "", "", n
}

// TestDiskErrorsAnswer503AndRecover: the spool's file may not grow
// (RLIMIT_FSIZE lowered on the running trackd with SIGXFSZ ignored, so
// writes fail with EFBIG). trackd answers 503 with Retry-After, keeps what
// it had, takes events again without a restart once the limit is raised,
// survives a SIGKILL while writes fail, and the file is never corrupt.
func TestDiskErrorsAnswer503AndRecover(t *testing.T) {
	// Writes past RLIMIT_FSIZE raise SIGXFSZ, whose default action kills.
	// Children inherit an ignored signal across exec; the Go runtime in
	// trackd then installs its own handler for SIGXFSZ anyway, which drops
	// it unless signal.Notify asked for it. Either way the write fails with
	// EFBIG and trackd lives; the check below makes sure of it.
	signal.Ignore(syscall.SIGXFSZ)
	defer signal.Reset(syscall.SIGXFSZ)

	w := newWork(t)
	up := newUpstream(t)
	up.Down() // nothing drains, so the file must grow
	cfg := w.baseConfig(up.URL())
	cfg.LogLevel = "debug"
	l := newLedger("disk")

	d := w.start(cfg)
	if !signalSurvivable(t, d.pid(), syscall.SIGXFSZ) {
		t.Fatal("SIGXFSZ would kill trackd; the test cannot run")
	}
	tg := d.targets()[1] // the Unix socket
	for i := 0; i < 50; i++ {
		if _, _, st := l.sendOne(context.Background(), tg.client, tg.base, i%2, 200, nil); st != acked {
			t.Fatalf("event %d before the fault: %v", i, st)
		}
	}

	// Phase 1: no more room; trackd must say 503 and keep serving.
	size := fileSize(t, cfg.SpoolPath)
	limitFileSize(t, d.pid(), size)
	ra, msg, n := fillUntil503(t, l, tg, 2000)
	t.Logf("RLIMIT_FSIZE %d bytes: first 503 after %d more events: Retry-After %q, %s", size, n, ra, strings.TrimSpace(msg))
	if secs, err := strconv.Atoi(ra); err != nil || secs < 1 {
		t.Errorf("503 Retry-After = %q, want a positive number of seconds", ra)
	}
	if !strings.Contains(msg, `"status":"failure"`) {
		t.Errorf("503 body %q is not in upstream's failure shape", msg)
	}
	failing := 0
	for i := 0; i < 20; i++ {
		if _, _, out := l.sendOne(context.Background(), tg.client, tg.base, 0, 16<<10, nil); out == refused {
			failing++
		}
	}
	if failing < 15 {
		t.Errorf("only %d of 20 big events refused while the file cannot grow", failing)
	}
	if st, _, err := d.get("/healthz"); err != nil || st != 200 {
		t.Errorf("healthz while writes fail: %d %v", st, err)
	}
	rz, _, _ := d.get("/readyz")
	waitFor(t, "an error-level log line saying events cannot be stored", 10*time.Second, func() bool {
		return len(d.log.lines("level=ERROR", "cannot store events")) > 0
	})
	t.Logf("logged: %s", d.log.lines("level=ERROR", "cannot store events")[0])
	oncePerEpisode(t, d)

	// Space returns: trackd must take events again without a restart.
	limitFileSize(t, d.pid(), 0)
	recovered := time.Now()
	waitFor(t, "a 200 after the limit was raised", 10*time.Second, func() bool {
		_, _, out := l.sendOne(context.Background(), tg.client, tg.base, 0, 16<<10, nil)
		return out == acked
	})
	t.Logf("readyz while failing: %d; 200 again %s after the limit was raised", rz, time.Since(recovered).Round(time.Millisecond))
	for i := 0; i < 20; i++ {
		if _, st, out := l.sendOne(context.Background(), tg.client, tg.base, i%2, 200, nil); out != acked {
			t.Fatalf("after recovery, event %d: %v %d", i, out, st)
		}
	}
	if st, _, _ := d.get("/readyz"); st != 200 {
		t.Errorf("readyz after recovery = %d, want 200", st)
	}
	if len(d.log.lines("storing events works again")) == 0 {
		t.Errorf("recovery was not logged")
	}

	// Phase 2: a limit below the file's size, so that page writes (not
	// only growing the file) fail; then SIGKILL while writes fail. The
	// next start must find the file intact and everything acknowledged in
	// it.
	limitFileSize(t, d.pid(), fileSize(t, cfg.SpoolPath)/2)
	fillUntil503(t, l, tg, 2000)
	// The log line travels through a pipe: wait for it rather than race it.
	waitFor(t, "an error-level line for the second episode", 10*time.Second, func() bool {
		return len(d.log.lines("level=ERROR", "cannot store events")) >= 2
	})
	t.Logf("logged: %s", d.log.lines("level=ERROR", "cannot store events")[1])
	oncePerEpisode(t, d)
	ld := startLoad(l, d.targets(), loadOpts{workers: 2, pad: 4 << 10})
	time.Sleep(300 * time.Millisecond)
	d.kill()
	ld.stop()

	d = w.start(cfg)
	if lines := d.log.lines("unreadable"); len(lines) > 0 {
		t.Errorf("the file was quarantined after a crash during write errors: %s", lines[0])
	}
	if err := up.Up(); err != nil {
		t.Fatal(err)
	}
	d.waitDrained(60 * time.Second)
	d.stopClean()
	boltCheck(t, cfg.SpoolPath)
	r := audit(t, l, up, cfg.SpoolPath, auditOpts{apiKey: cfg.APIKey})
	if r.refused == 0 {
		t.Error("no event was refused: the fault never took effect")
	}
	report(t, "RLIMIT_FSIZE at the file's size (growth fails), then at half of it (page writes fail): %d events refused "+
		"with 503 (statuses %v), 200s again without a restart once the limit was raised; SIGKILL while writes failed, "+
		"restart without quarantine, bbolt check clean; %d acknowledged, all delivered", r.refused, l.refusedStatuses(), r.acked)
}

// oncePerEpisode checks that a storage failure is logged at error level
// once per episode, not once per refused request. An episode ends when a
// commit succeeds again ("storing events works again"); with a file size
// limit some commits still fit (bbolt reuses freed pages below it), so one
// fault can make several short episodes.
func oncePerEpisode(t *testing.T, d *trackd) {
	t.Helper()
	errs := len(d.log.lines("level=ERROR", "cannot store events"))
	oks := len(d.log.lines("storing events works again"))
	if errs > oks+1 {
		t.Errorf("the storage failure was logged %d times over %d episodes; want it once per episode", errs, oks+1)
	}
}
