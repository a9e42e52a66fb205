package spool

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"strings"
	"testing"

	bolt "go.etcd.io/bbolt"
)

// usedBytes is the part of a closed spool file bbolt uses: its high water
// mark. Beyond it the file is only pre-grown space.
func usedBytes(t testing.TB, path string) (used, pageSize int64) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	m, ps, err := readMeta(f, fi.Size())
	if err != nil {
		t.Fatal(err)
	}
	return int64(m.hwm) * ps, ps
}

// filledSpool writes a spool with queued records, dead letters and state,
// and returns the bodies by ID.
func filledSpool(t testing.TB, path string, n int) (*Spool, map[uint64]string) {
	t.Helper()
	s, err := Open(Options{Path: path, Logger: discardLogger()})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for i := 0; i < n; i += 50 {
		entries := make([]Entry, 0, 50)
		for j := i; j < min(i+50, n); j++ {
			entries = append(entries, Entry{Kind: KindTrack, Body: trackBody(j)})
		}
		if err := s.Append(ctx, entries...); err != nil {
			t.Fatal(err)
		}
	}
	want := map[uint64]string{}
	for _, r := range readAll(t, s) {
		want[r.ID] = string(r.Body)
	}
	for id := uint64(1); id <= 5; id++ {
		if err := s.DeadLetter(ctx, id, 400, "bad"); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.SetState(ctx, "pause_until", []byte("never")); err != nil {
		t.Fatal(err)
	}
	return s, want
}

func TestUnreadableFilesAreQuarantined(t *testing.T) {
	for _, tc := range []struct {
		name   string
		damage func(t *testing.T, path string)
	}{
		{"garbage bytes", func(t *testing.T, path string) {
			b := make([]byte, 64<<10)
			r := rand.New(rand.NewPCG(1, 2))
			for i := range b {
				b[i] = byte(r.Uint32())
			}
			if err := os.WriteFile(path, b, 0o600); err != nil {
				t.Fatal(err)
			}
		}},
		{"a few bytes of text", func(t *testing.T, path string) {
			if err := os.WriteFile(path, []byte("hello, spool\n"), 0o600); err != nil {
				t.Fatal(err)
			}
		}},
		{"a real spool truncated to half", func(t *testing.T, path string) {
			s, _ := filledSpool(t, path, 2000)
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			used, _ := usedBytes(t, path)
			if err := os.Truncate(path, used/2); err != nil {
				t.Fatal(err)
			}
		}},
		{"a real spool whose meta pages are zeroed", func(t *testing.T, path string) {
			s, _ := filledSpool(t, path, 100)
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			_, ps := usedBytes(t, path)
			f, err := os.OpenFile(path, os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if _, err := f.WriteAt(make([]byte, 2*ps), 0); err != nil {
				t.Fatal(err)
			}
		}},
		{"a bbolt file of some other program", func(t *testing.T, path string) {
			// A valid bbolt file whose root holds a plain key cannot be
			// made through bbolt's API; a spool with a foreign bucket is
			// refused instead (see TestForeignBboltFileIsRefused).
			b := make([]byte, 16<<10)
			copy(b, "SQLite format 3\x00")
			if err := os.WriteFile(path, b, 0o600); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := tempPath(t)
			tc.damage(t, path)
			orig, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			logs := &logRecorder{}
			s := mustOpenSpool(t, Options{Path: path, Logger: slogNew(logs)})
			q := s.Stats().Quarantined
			if !strings.HasPrefix(q, path+".corrupt-") {
				t.Fatalf("Quarantined = %q, want %s.corrupt-<unix seconds>", q, path)
			}
			if moved, err := os.ReadFile(q); err != nil || !bytes.Equal(moved, orig) {
				t.Fatalf("the quarantined file must hold the original bytes (err %v)", err)
			}
			if logs.find("ERROR", "path="+path, "moved_to="+q) == "" {
				t.Fatalf("want an error log naming both paths; logs: %q", logs.all())
			}
			if st := s.Stats(); st.Queued != 0 || st.Dead != 0 {
				t.Fatalf("a fresh spool must be empty: %+v", st)
			}
			mustAppend(t, s, "fresh")
			s = reopen(t, s)
			if got := bodies(readAll(t, s)); len(got) != 1 || got[0] != "fresh" {
				t.Fatalf("after reopen: %q", got)
			}
			if q := s.Stats().Quarantined; q != "" {
				t.Fatalf("a healthy reopen quarantined %q", q)
			}
		})
	}
}

func TestEmptyFileIsANewSpool(t *testing.T) {
	path := tempPath(t)
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	s := mustOpenSpool(t, Options{Path: path})
	if q := s.Stats().Quarantined; q != "" {
		t.Fatalf("a zero-length file was quarantined to %s", q)
	}
	mustAppend(t, s, "x")
}

func TestForeignBboltFileIsRefused(t *testing.T) {
	path := tempPath(t)
	s := mustOpenSpool(t, Options{Path: path})
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	db, err := (&Spool{opts: Options{LockTimeout: defaultLockTimeout}.withDefaults()}).openBolt(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(func(tx *bolt.Tx) error {
		if err := tx.DeleteBucket(bucketMeta); err != nil {
			return err
		}
		_, err := tx.CreateBucket([]byte("etcd-keys"))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	_, err = Open(Options{Path: path, Logger: discardLogger()})
	if err == nil || !strings.Contains(err.Error(), "not a trackd spool") {
		t.Fatalf("Open of another program's bbolt file = %v, want a refusal", err)
	}
	if _, err := os.Stat(path); err != nil {
		t.Fatal("someone else's file must be left in place")
	}
}

// TestFlippedBytesNeverPanicOrFailOpen damages every page of a real spool
// file, one byte at a time, and opens it. Open must never fail or panic.
// After a crash (the file copied while open) the whole file is checked, so
// it either opens with every record it returns intact, missing ones
// counted as dropped, or is quarantined. After a clean shutdown only the
// file's skeleton is checked at Open; damage found later makes reads fail
// with ErrCorrupt, never return a wrong record.
func TestFlippedBytesNeverPanicOrFailOpen(t *testing.T) {
	dir := t.TempDir()
	src := dir + "/src.db"
	s, want := filledSpool(t, src, 300)
	images := map[string][]byte{}
	copyFile(t, src, dir+"/crash.db")
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	for mode, path := range map[string]string{"after a crash": dir + "/crash.db", "after a clean shutdown": src} {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		used, _ := usedBytes(t, path)
		images[mode] = b[:used] // the rest is pre-grown zeros
	}
	_, ps := usedBytes(t, src)

	for mode, image := range images {
		pages := int64(len(image)) / ps
		for pg := range pages {
			for _, off := range []int64{0, 8, 10, 12, 16, 20, 24, 28, 36, 48, 56, 72, ps / 2, ps - 3} {
				name := fmt.Sprintf("%s/page %d byte %d", mode, pg, off)
				t.Run(name, func(t *testing.T) {
					damaged := bytes.Clone(image)
					damaged[pg*ps+off] ^= 0xFF
					path := tempPath(t)
					if err := os.WriteFile(path, damaged, 0o600); err != nil {
						t.Fatal(err)
					}
					s, err := Open(Options{Path: path, Logger: discardLogger()})
					if err != nil {
						t.Fatalf("Open failed: %v", err)
					}
					defer func() {
						_ = s.Close()
						// Whatever happened, the file opens again.
						s2, err := Open(Options{Path: path, Logger: discardLogger()})
						if err != nil {
							t.Fatalf("reopen failed: %v", err)
						}
						if err := s2.Close(); err != nil {
							t.Errorf("Close after reopen: %v", err)
						}
					}()
					if s.Stats().Quarantined != "" {
						t.Log("outcome: quarantined")
						return
					}
					got, err := readAllOrCorrupt(s)
					t.Logf("outcome: opened, read %d records, err %v, dropped %d", len(got), err, s.Stats().DroppedCorrupt)
					if err != nil {
						if mode == "after a crash" || !errors.Is(err, ErrCorrupt) {
							t.Fatalf("Read: %v", err)
						}
						select {
						case <-s.Damaged():
						default:
							t.Fatal("Read failed with ErrCorrupt but Damaged() was not closed")
						}
					}
					for _, r := range got {
						if w, ok := want[r.ID]; !ok || w != string(r.Body) {
							t.Fatalf("Read returned record %d = %.40q, which was never written", r.ID, r.Body)
						}
					}
					if mode == "after a crash" {
						live := len(want) - 5 // five were dead-lettered
						if missing := live - len(got); missing > 0 && uint64(missing) > s.Stats().DroppedCorrupt {
							t.Fatalf("%d records are missing but only %d were counted as dropped", missing, s.Stats().DroppedCorrupt)
						}
					}
				})
			}
		}
	}
}

// readAllOrCorrupt pages through the queue, stopping at the first error.
func readAllOrCorrupt(s *Spool) ([]Record, error) {
	var all []Record
	after := uint64(0)
	for {
		recs, err := s.Read(after, 100)
		if err != nil || len(recs) == 0 {
			return all, err
		}
		all = append(all, recs...)
		after = recs[len(recs)-1].ID
	}
}

func TestCrashedSpoolIsRecountedAndDamagedRecordsDropped(t *testing.T) {
	dir := t.TempDir()
	s, want := filledSpool(t, dir+"/src.db", 300)
	copyFile(t, dir+"/src.db", dir+"/crash.db")
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	// Damage the body of one record: find its bytes in the file.
	b, err := os.ReadFile(dir + "/crash.db")
	if err != nil {
		t.Fatal(err)
	}
	victim := trackBody(150)
	i := bytes.Index(b, victim)
	if i < 0 {
		t.Fatal("record body not found in the file")
	}
	b[i+len(victim)/2] ^= 0x01
	if err := os.WriteFile(dir+"/crash.db", b, 0o600); err != nil {
		t.Fatal(err)
	}

	logs := &logRecorder{}
	s = mustOpenSpool(t, Options{Path: dir + "/crash.db", Logger: slogNew(logs)})
	st := s.Stats()
	if st.Quarantined != "" || st.DroppedCorrupt != 1 {
		t.Fatalf("stats = %+v, want one record dropped and no quarantine", st)
	}
	got := readAll(t, s)
	if len(got) != len(want)-5-1 || st.Queued != int64(len(got)) {
		t.Fatalf("read %d records, Queued %d; want %d", len(got), st.Queued, len(want)-6)
	}
	for _, r := range got {
		if want[r.ID] != string(r.Body) {
			t.Fatalf("record %d changed", r.ID)
		}
	}
	if logs.find("ERROR", "checksum", "records=1") == "" {
		t.Fatalf("the drop must be logged at error level; logs %q", logs.all())
	}
}
