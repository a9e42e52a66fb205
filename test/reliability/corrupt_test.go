//go:build reliability

package reliability

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/trackd/trackd/spool"
)

// quarantined lists the <path>.corrupt-<unix> files next to path.
func quarantined(t testing.TB, path string) []string {
	t.Helper()
	m, err := filepath.Glob(path + ".corrupt-*")
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// usedBytes is how much of a bbolt file holds data (the rest is pre-grown).
func usedBytes(t testing.TB, path string) int64 {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: 2 * time.Second})
	if err != nil {
		t.Fatalf("open %s: %v", path, err)
	}
	defer db.Close()
	var n int64
	_ = db.View(func(tx *bolt.Tx) error { n = tx.Size(); return nil })
	return n
}

func copyFile(t testing.TB, src, dst string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// pristineSpool runs trackd with upstream down, stores n events and stops
// it cleanly. It returns the spool's path and the stored bodies by id.
func pristineSpool(t testing.TB, w *work, l *ledger, n int) (string, map[string][]byte) {
	t.Helper()
	cfg := w.baseConfig("http://" + freeAddr(t))
	cfg.SpoolPath = w.path("pristine/spool.db")
	d := w.start(cfg)
	tg := d.targets()[0]
	for i := 0; i < n; i++ {
		if _, st, out := l.sendOne(context.Background(), tg.client, tg.base, i%3/2, 300, nil); out != acked {
			t.Fatalf("storing event %d: %v %d", i, out, st)
		}
	}
	d.stopClean()
	recs, _ := readSpool(t, cfg.SpoolPath)
	bodies := map[string][]byte{}
	for _, r := range recs {
		bodies[idOf(r.Body)] = r.Body
	}
	if len(bodies) != n {
		t.Fatalf("pristine spool holds %d events, want %d", len(bodies), n)
	}
	return cfg.SpoolPath, bodies
}

// TestCorruptSpoolFilesNeverStopTrackd: garbage, truncated, zero-length and
// bit-flipped spool files. trackd starts every time, quarantines what it
// cannot read (a <path>.corrupt-<unix> file and an error-level log line),
// and never delivers a damaged event.
func TestCorruptSpoolFilesNeverStopTrackd(t *testing.T) {
	w := newWork(t)
	up := newUpstream(t)
	l := newLedger("corrupt")
	pristine, bodies := pristineSpool(t, w, l, 400)
	used := usedBytes(t, pristine)

	// startOn starts trackd on a spool file prepared by damage and returns
	// it once ready (or stopped by itself: see supervise), with the
	// quarantined files found.
	n := 0
	startOn := func(t *testing.T, damage func(path string)) (*trackd, *trackdConfig, []string) {
		t.Helper()
		n++
		cfg := w.baseConfig(up.URL())
		cfg.Unix = w.path(fmt.Sprintf("c%d.sock", n))
		cfg.SpoolPath = w.path(fmt.Sprintf("c%d/spool.db", n))
		// A trackd that stops itself on a damaged file takes most of
		// shutdown.timeout to do so (its forwarder drains until then).
		cfg.ShutdownTimeout = 2 * time.Second
		if err := os.MkdirAll(filepath.Dir(cfg.SpoolPath), 0o700); err != nil {
			t.Fatal(err)
		}
		damage(cfg.SpoolPath)
		d := w.spawn(cfg)
		d.waitReadyOrExit(30 * time.Second)
		return d, cfg, quarantined(t, cfg.SpoolPath)
	}
	// saysQuarantined checks that the quarantine was logged at error level
	// with both paths.
	saysQuarantined := func(t *testing.T, d *trackd, cfg *trackdConfig, moved []string) {
		t.Helper()
		if len(moved) != 1 {
			t.Fatalf("want one quarantined file next to %s, found %v", cfg.SpoolPath, moved)
		}
		lines := d.log.lines("level=ERROR", "unreadable", moved[0])
		if len(lines) == 0 {
			t.Errorf("no error-level log line names the quarantined file %s:\n%s", moved[0], d.log.String())
		}
	}
	// works checks that a started trackd stores and delivers a new event.
	works := func(t *testing.T, d *trackd) {
		t.Helper()
		tg := d.targets()[1]
		id, st, out := l.sendOne(context.Background(), tg.client, tg.base, 0, 50, nil)
		if out != acked {
			t.Fatalf("new event after start: %v %d", out, st)
		}
		waitFor(t, "the new event to reach upstream", 10*time.Second, func() bool { return up.deliveredIDs()[id] > 0 })
	}

	for _, tc := range []struct {
		name   string
		damage func(t *testing.T, p string)
	}{
		{"garbage", func(t *testing.T, p string) {
			b := make([]byte, 256<<10)
			_, _ = rand.Read(b)
			if err := os.WriteFile(p, b, 0o600); err != nil {
				t.Fatal(err)
			}
		}},
		{"garbage after a valid header", func(t *testing.T, p string) {
			copyFile(t, pristine, p)
			f, err := os.OpenFile(p, os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			junk := make([]byte, used-8192)
			_, _ = rand.Read(junk)
			_, _ = f.WriteAt(junk, 8192) // both meta pages kept, every other page garbage
			f.Close()
		}},
		{"truncated", func(t *testing.T, p string) {
			copyFile(t, pristine, p)
			if err := os.Truncate(p, used/2); err != nil {
				t.Fatal(err)
			}
		}},
		{"truncated to less than a page", func(t *testing.T, p string) {
			copyFile(t, pristine, p)
			if err := os.Truncate(p, 100); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, cfg, moved := startOn(t, func(p string) { tc.damage(t, p) })
			saysQuarantined(t, d, cfg, moved)
			works(t, d)
			d.stopClean()
		})
	}
	t.Run("zero-length is a new spool", func(t *testing.T) {
		d, cfg, moved := startOn(t, func(p string) {
			if err := os.WriteFile(p, nil, 0o600); err != nil {
				t.Fatal(err)
			}
		})
		if len(moved) != 0 {
			t.Errorf("an empty file was quarantined: %v", moved)
		}
		if lines := d.log.lines("level=ERROR"); len(lines) > 0 {
			t.Errorf("an empty file logged an error: %s", lines[0])
		}
		works(t, d)
		d.stopClean()
		_ = cfg
	})

	// supervise waits until trackd's queue is empty, restarting it once if
	// it stops by itself (as it does when it finds its file damaged at run
	// time; a service manager restarts it, and the next start repairs the
	// file). A second stop is a crash loop.
	supervise := func(t *testing.T, d *trackd, cfg *trackdConfig, what string) (*trackd, int) {
		t.Helper()
		restarts := 0
		deadline := time.Now().Add(20 * time.Second)
		for {
			if d.exited() {
				if restarts > 0 {
					t.Fatalf("%s: trackd stopped again after a restart: crash loop\n%s", what, d.log.String())
				}
				if len(d.log.lines("level=ERROR", "damaged")) == 0 {
					t.Errorf("%s: trackd exited %d without saying the file is damaged", what, d.exitCode())
				}
				restarts++
				d = w.start(cfg)
				continue
			}
			st, err := d.status()
			if err == nil && st.Spool.Queued == 0 {
				return d, restarts
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: the queue never emptied: %d events stay queued with nothing sent and nothing logged as wrong: %+v\n%s",
					what, st.Spool.Queued, st, tail(d.log.String(), 3000))
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	// delivered checks that every body upstream got is exactly one that was
	// stored, and returns how many distinct stored events arrived and the
	// most times one did.
	delivered := func(t *testing.T, what string) (int, int) {
		t.Helper()
		seen := map[string]int{}
		for _, b := range up.deliveredBodies() {
			id := idOf(b)
			want, ok := bodies[id]
			if !ok {
				if e, sent := l.get(id); sent && e.out == acked && id != "" {
					continue // an event works() sent
				}
				t.Fatalf("%s: upstream got a body that was never stored: %.200q", what, b)
			}
			if string(b) != string(want) {
				t.Fatalf("%s: a damaged body was delivered:\n got %.200q\nwant %.200q", what, b, want)
			}
			seen[id]++
		}
		most := 0
		for _, n := range seen {
			most = max(most, n)
		}
		return len(seen), most
	}
	// flipAt starts trackd on the pristine spool with one bit flipped.
	flipAt := func(t *testing.T, off int64, bit uint) (*trackd, *trackdConfig) {
		image, err := os.ReadFile(pristine)
		if err != nil {
			t.Fatal(err)
		}
		up.Reset()
		d, cfg, _ := startOn(t, func(p string) {
			image[off] ^= 1 << bit
			if err := os.WriteFile(p, image, 0o600); err != nil {
				t.Fatal(err)
			}
		})
		return d, cfg
	}

	t.Run("a flipped bit in a record's key", func(t *testing.T) {
		// Record 1's ID gains a high bit: it fails its checksum and its
		// page's keys are out of order. Every other event is delivered
		// and the queue empties, after at most one self-stop.
		off := queueKeyOffset(t, pristine, 1)
		d, cfg := flipAt(t, off, 0)
		d, restarts := supervise(t, d, cfg, "record key")
		n, most := delivered(t, "record key")
		t.Logf("%d of %d other events delivered, at most %d times each; %d restarts", n, len(bodies)-1, most, restarts)
		if n < len(bodies)-1 {
			t.Errorf("%d events were not delivered", len(bodies)-1-n)
		}
		d.stopClean()
	})
	t.Run("a flipped bit in a branch page's key", func(t *testing.T) {
		// A key in the queue's branch page changes: bbolt's searches
		// (Seek, and so Delete) now go to the wrong leaf for some IDs,
		// while reading in order still sees every record. No checksum
		// covers branch pages, and after a clean shutdown Open does not
		// read them.
		off := queueBranchKeyOffset(t, pristine, 2)
		d, cfg := flipAt(t, off+7, 3) // the lowest byte of the big-endian ID
		d, restarts := supervise(t, d, cfg, "branch key")
		n, most := delivered(t, "branch key")
		t.Logf("%d of %d events delivered, at most %d times each; %d restarts", n, len(bodies), most, restarts)
		// Reading in order still sees every record, and whatever was not
		// yet deleted when the damage made trackd stop is carried over
		// from the quarantined file at the next start.
		if n < len(bodies) {
			t.Errorf("%d events were not delivered", len(bodies)-n)
		}
		d.stopClean()
	})

	t.Run("bit flips", func(t *testing.T) {
		seed := uint64(time.Now().UnixNano())
		if prof.name == "short" {
			seed = 20261125 // the same trials on every CI run
		}
		rng := mrand.New(mrand.NewPCG(seed, 7))
		image, err := os.ReadFile(pristine)
		if err != nil {
			t.Fatal(err)
		}
		var outcomes []string
		for trial := 0; trial < prof.bitflipTrials; trial++ {
			flips := 1 + rng.IntN(8)
			var where []string
			up.Reset()
			d, cfg, moved := startOn(t, func(p string) {
				damaged := append([]byte(nil), image...)
				for i := 0; i < flips; i++ {
					off := rng.Int64N(used)
					damaged[off] ^= 1 << rng.IntN(8)
					where = append(where, fmt.Sprintf("%d/p%d", off, off/4096))
				}
				if err := os.WriteFile(p, damaged, 0o600); err != nil {
					t.Fatal(err)
				}
			})
			what := fmt.Sprintf("seed %d trial %d (flips at %v)", seed, trial, where)
			d, restarts := supervise(t, d, cfg, what)
			if restarts > 0 {
				moved = quarantined(t, cfg.SpoolPath)
			}
			works(t, d)
			d.stopClean()
			n, most := delivered(t, what)
			missing := len(bodies) - n
			outcome := "all delivered"
			switch {
			case len(moved) > 0:
				outcome = "quarantined"
				if !strings.Contains(w.allOutput(), "unreadable") {
					t.Errorf("%s: quarantined without an error-level log line", what)
				}
			case missing > 0:
				outcome = fmt.Sprintf("%d dropped", missing)
				if len(d.log.lines("level=ERROR", "checksum")) == 0 && restarts == 0 {
					t.Errorf("%s: %d stored events were neither delivered nor reported as dropped", what, missing)
				}
			}
			if most > 1 {
				outcome += fmt.Sprintf(", some delivered %d times", most)
			}
			if restarts > 0 {
				outcome += ", after one self-stop and restart"
			}
			outcomes = append(outcomes, outcome)
		}
		report(t, "%d bit-flip trials (seed %d; 1-8 random bits in the %d used bytes of a spool of %d events): %s",
			prof.bitflipTrials, seed, used, len(bodies), strings.Join(outcomes, "; "))
	})
}

// queueKeyOffset is the file offset of record id's key in a spool's queue
// leaf page.
func queueKeyOffset(t testing.TB, path string, id uint64) int64 {
	t.Helper()
	image, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	key := binary.BigEndian.AppendUint64(nil, id)
	off := bytes.Index(image, append(key, 1)) // the key, then the value's format byte
	if off < 0 {
		t.Fatalf("record %d not found in %s", id, path)
	}
	return int64(off)
}

// queueBranchKeyOffset is the file offset of the n-th key of the first
// branch page in a spool file whose keys are 8 bytes (the queue's IDs).
func queueBranchKeyOffset(t testing.TB, path string, n int) int64 {
	t.Helper()
	image, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	const pageSize = 4096
	for pg := 0; (pg+1)*pageSize <= len(image); pg++ {
		p := image[pg*pageSize:]
		// bbolt's page header: id u64, flags u16, count u16, overflow
		// u32; a branch element: pos u32, ksize u32, pgid u64.
		if flags, count := binary.LittleEndian.Uint16(p[8:]), int(binary.LittleEndian.Uint16(p[10:])); flags != 0x01 || count <= n {
			continue
		}
		el := 16 + 16*n
		pos, ksize := int(binary.LittleEndian.Uint32(p[el:])), binary.LittleEndian.Uint32(p[el+4:])
		if ksize == 8 {
			return int64(pg*pageSize + el + pos)
		}
	}
	t.Fatalf("no branch page of 8-byte keys in %s", path)
	return 0
}

// TestCrashMidCommitLeavesAReadableSpool: SIGKILL under heavy load, so the
// kill lands in the middle of commits, and a copy of the file taken while
// trackd writes (a torn copy, as a careless backup makes). trackd starts on
// both; the killed one keeps every acknowledged event.
func TestCrashMidCommitLeavesAReadableSpool(t *testing.T) {
	w := newWork(t)
	up := newUpstream(t)
	up.Down()
	l := newLedger("midcommit")
	cfg := w.baseConfig(up.URL())
	rng := mrand.New(mrand.NewPCG(uint64(time.Now().UnixNano()), 3))
	var copies []string
	for round := 0; round < 4; round++ {
		d := w.start(cfg)
		if len(d.log.lines("unreadable")) > 0 {
			t.Fatalf("round %d: the spool was quarantined after a SIGKILL", round)
		}
		ld := startLoad(l, d.targets(), loadOpts{workers: 8, pad: 2 << 10, identifyEvery: 4})
		time.Sleep(time.Duration(200+rng.IntN(300)) * time.Millisecond)
		// A copy while commits are being written.
		dst := w.path(fmt.Sprintf("copy%d/spool.db", round))
		if err := os.MkdirAll(filepath.Dir(dst), 0o700); err != nil {
			t.Fatal(err)
		}
		src, err := os.Open(cfg.SpoolPath)
		if err != nil {
			t.Fatal(err)
		}
		out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY, 0o600)
		if err != nil {
			t.Fatal(err)
		}
		// Small reads so the copy is spread over several commits.
		buf := make([]byte, 16<<10)
		if _, err := io.CopyBuffer(out, struct{ io.Reader }{src}, buf); err != nil {
			t.Fatal(err)
		}
		src.Close()
		out.Close()
		copies = append(copies, dst)
		time.Sleep(time.Duration(rng.IntN(200)) * time.Millisecond)
		d.kill()
		ld.stop()
	}
	d := w.start(cfg)
	if len(d.log.lines("unreadable")) > 0 {
		t.Fatal("the spool was quarantined after a SIGKILL")
	}
	if err := up.Up(); err != nil {
		t.Fatal(err)
	}
	d.waitDrained(60 * time.Second)
	d.stopClean()
	r := audit(t, l, up, cfg.SpoolPath, auditOpts{apiKey: cfg.APIKey})

	// Each torn copy: trackd starts on it; when it cannot read it, it says
	// so and moves it aside.
	var outcomes []string
	for i, c := range copies {
		ccfg := w.baseConfig("http://" + freeAddr(t))
		ccfg.Unix = w.path(fmt.Sprintf("k%d.sock", i))
		ccfg.SpoolPath = c
		cd := w.start(ccfg)
		st, err := cd.status()
		if err != nil {
			t.Fatal(err)
		}
		switch moved := quarantined(t, c); {
		case len(moved) > 0:
			if len(cd.log.lines("level=ERROR", "unreadable")) == 0 {
				t.Errorf("copy %d quarantined without an error-level log line", i)
			}
			outcomes = append(outcomes, "quarantined")
		default:
			outcomes = append(outcomes, fmt.Sprintf("opened with %d queued", st.Spool.Queued))
		}
		cd.stopClean()
		// Whatever a torn copy still holds is intact.
		recs, dead := readSpool(t, c)
		for _, r := range recs {
			if _, bad := l.checkBody(r.Body, cfg.APIKey); bad != "" {
				t.Errorf("copy %d holds a damaged record: %s", i, bad)
			}
		}
		if len(dead) != 0 {
			t.Errorf("copy %d has %d dead letters; none were made", i, len(dead))
		}
	}
	report(t, "4 SIGKILLs under 16 writers of 2 KiB events: %d acknowledged, all kept and delivered (%d duplicates); "+
		"torn copies taken during commits: %s", r.acked, r.duplicates, strings.Join(outcomes, "; "))
}

// TestSpoolNoticesABadBranchKey drives the spool package directly, the way
// the forwarder does (read a page after a cursor, delete what was read),
// over a file in which one key of the queue's branch page has a flipped
// bit. bbolt trusts the key: its Seek, which Delete uses, can go to the
// wrong leaf, while reading in order still returns every record. The
// spool must then either delete what it returned or say the file is
// damaged (ErrCorrupt, so trackd stops and the next start repairs it);
// leaving records queued without a word means they are sent again on every
// restart and the queue never empties.
func TestSpoolNoticesABadBranchKey(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src.db")
	sp, err := spool.Open(spool.Options{Path: src, Logger: discardLogger()})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 400; i++ {
		body := eventBody(fmt.Sprint(i), 0, 300)
		if err := sp.Append(context.Background(), spool.Entry{Kind: spool.KindTrack, Body: body, Received: time.Now()}); err != nil {
			t.Fatal(err)
		}
	}
	if err := sp.Close(); err != nil {
		t.Fatal(err)
	}
	image, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		key int
		bit uint // of the big-endian ID, 0 the lowest
	}{{2, 3}, {3, 56}, {3, 40}, {4, 3}} {
		off := queueBranchKeyOffset(t, src, tc.key)
		damaged := append([]byte(nil), image...)
		damaged[off+7-int64(tc.bit/8)] ^= 1 << (tc.bit % 8)
		path := filepath.Join(dir, fmt.Sprintf("k%d-b%d.db", tc.key, tc.bit))
		if err := os.WriteFile(path, damaged, 0o600); err != nil {
			t.Fatal(err)
		}
		s, err := spool.Open(spool.Options{Path: path, Logger: discardLogger()})
		if err != nil {
			t.Fatal(err)
		}
		var read int
		var failed error
		for after, pages := uint64(0), 0; pages < 100; pages++ {
			recs, err := s.Read(after, 50)
			if err != nil {
				failed = err
				break
			}
			if len(recs) == 0 {
				break
			}
			ids := make([]uint64, len(recs))
			for i, r := range recs {
				ids[i] = r.ID
			}
			read += len(recs)
			after = ids[len(ids)-1]
			if err := s.Delete(context.Background(), ids...); err != nil {
				failed = err
				break
			}
		}
		st := s.Stats()
		_ = s.Close()
		switch {
		case failed != nil:
			t.Logf("branch key %d bit %d: the spool reported the damage: %v", tc.key, tc.bit, failed)
		case st.Queued > 0:
			t.Errorf("branch key %d (%x→%x): every record was read (%d) and deleted without error, yet %d stay queued: "+
				"Delete silently missed them and nothing reports the damage",
				tc.key, image[off:off+8], damaged[off:off+8], read, st.Queued)
		default:
			t.Logf("branch key %d bit %d: read and deleted all %d", tc.key, tc.bit, read)
		}
	}
}
