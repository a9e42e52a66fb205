package spool

import (
	"context"
	"errors"
	"io/fs"
	"math/rand/v2"
	"os"
	"slices"
	"testing"
	"time"
)

// fill appends n records of size bytes each, 100 per Append.
func fill(t testing.TB, s *Spool, n, size int) {
	t.Helper()
	body := make([]byte, size)
	for i := 0; i < n; i += 100 {
		entries := make([]Entry, 0, 100)
		for range min(100, n-i) {
			entries = append(entries, Entry{Kind: KindTrack, Body: body})
		}
		if err := s.Append(context.Background(), entries...); err != nil {
			t.Fatal(err)
		}
	}
}

// drain deletes every queued record, 100 at a time, as the forwarder does.
func drain(t testing.TB, s *Spool, keep int) {
	t.Helper()
	after := uint64(0)
	for {
		recs, err := s.Read(after, 100)
		if err != nil {
			t.Fatal(err)
		}
		if len(recs) == 0 {
			return
		}
		after = recs[len(recs)-1].ID
		if keep > 0 {
			n := min(keep, len(recs))
			keep -= n
			recs = recs[n:]
		}
		if err := s.Delete(context.Background(), ids(recs)...); err != nil {
			t.Fatal(err)
		}
	}
}

func TestCompactionGivesDiskBackAndKeepsData(t *testing.T) {
	logs := &logRecorder{}
	s := mustOpenSpool(t, Options{CompactMinBytes: 1 << 20, compactInterval: time.Nanosecond, Logger: slogNew(logs)})
	mustAppend(t, s, "survivor")
	if err := s.SetState(context.Background(), "pause_until", []byte("later")); err != nil {
		t.Fatal(err)
	}
	fill(t, s, 6000, 4000) // ~24 MiB
	peak := s.Stats().FileBytes
	drain(t, s, 1)

	eventually(t, "the spool compacts", func() bool { return s.Stats().Compactions > 0 })
	st := s.Stats()
	if st.FileBytes >= peak/2 {
		t.Fatalf("file is %d bytes after compaction, was %d at its peak", st.FileBytes, peak)
	}
	t.Logf("file: %d bytes at peak, %d after compaction", peak, st.FileBytes)
	eventually(t, "the compaction is logged", func() bool { return logs.find("INFO", "compacted") != "" })
	if _, err := os.Stat(s.Path() + ".compact"); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("the temporary copy must be gone: %v", err)
	}

	mustAppend(t, s, "after compaction")
	want := []string{"survivor", "after compaction"}
	if got := bodies(readAll(t, s)); !slices.Equal(got, want) {
		t.Fatalf("after compaction: %q, want %q", got, want)
	}
	if st := s.Stats(); st.Queued != 2 {
		t.Fatalf("stats after compaction: %+v", st)
	}
	s = reopen(t, s)
	recs := readAll(t, s)
	if got := bodies(recs); !slices.Equal(got, want) || recs[1].ID <= recs[0].ID {
		t.Fatalf("after reopen: %q (IDs %v), want %q", got, ids(recs), want)
	}
	if v, err := s.State("pause_until"); err != nil || string(v) != "later" {
		t.Fatalf("state after compaction: %q, %v", v, err)
	}
	if st := s.Stats(); st.Queued != 2 || st.Quarantined != "" {
		t.Fatalf("stats after reopen: %+v", st)
	}
}

func TestCompactionWaitsForTheMinimumSizeAndInterval(t *testing.T) {
	s := mustOpenSpool(t, Options{}) // default CompactMinBytes: 64 MiB
	fill(t, s, 2000, 4000)
	drain(t, s, 0)
	mustAppend(t, s, "x")
	if c := s.Stats().Compactions; c != 0 {
		t.Fatalf("a %d-byte file was compacted", s.Stats().FileBytes)
	}

	s2 := mustOpenSpool(t, Options{CompactMinBytes: 1 << 20}) // default interval: a minute
	for range 2 {
		fill(t, s2, 2000, 4000)
		drain(t, s2, 0)
	}
	mustAppend(t, s2, "x")
	if c := s2.Stats().Compactions; c != 1 {
		t.Fatalf("compactions = %d within a minute, want 1", c)
	}
}

func TestFillDrainCyclesDoNotGrowTheFile(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts Options
	}{
		{"without compaction bbolt reuses freed pages", Options{}},
		{"with compaction", Options{CompactMinBytes: 1 << 20, compactInterval: time.Nanosecond}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := mustOpenSpool(t, tc.opts)
			var sizes []int64
			for range 5 {
				fill(t, s, 2000, 2000) // ~4 MiB
				sizes = append(sizes, s.Stats().FileBytes)
				drain(t, s, 0)
			}
			t.Logf("file sizes at each peak: %v", sizes)
			if last, first := sizes[len(sizes)-1], sizes[0]; last > first+first/2 {
				t.Fatalf("the file grew from %d to %d bytes over the cycles", first, last)
			}
		})
	}
}

// TestFullCheckAcceptsHealthyFiles runs a random mix of operations and
// checks a crash image after each round: a healthy file must never be
// mistaken for a damaged one.
func TestFullCheckAcceptsHealthyFiles(t *testing.T) {
	dir := t.TempDir()
	s := mustOpenSpool(t, Options{Path: dir + "/spool.db"})
	ctx := context.Background()
	r := rand.New(rand.NewPCG(7, 7))
	for round := range 30 {
		for range 20 {
			switch op := r.IntN(10); {
			case op < 4:
				n := 1 + r.IntN(50)
				entries := make([]Entry, n)
				for i := range entries {
					entries[i] = Entry{Kind: KindTrack, Body: make([]byte, r.IntN(3000))}
				}
				if err := s.Append(ctx, entries...); err != nil {
					t.Fatal(err)
				}
			case op < 7:
				recs, err := s.Read(0, 1+r.IntN(80))
				if err != nil {
					t.Fatal(err)
				}
				if err := s.Delete(ctx, ids(recs)...); err != nil {
					t.Fatal(err)
				}
			case op < 8:
				if recs, _ := s.Read(uint64(r.IntN(500)), 3); len(recs) > 0 {
					if err := s.DeadLetter(ctx, recs[0].ID, 400, "no"); err != nil {
						t.Fatal(err)
					}
				}
			case op < 9:
				if dead, _ := s.ReadDead(0, 2); len(dead) > 0 {
					if err := s.Requeue(ctx, dead[0].ID); err != nil {
						t.Fatal(err)
					}
				}
			default:
				if recs, _ := s.Read(0, 10); len(recs) > 0 {
					if err := s.AddAttempt(ctx, ids(recs)...); err != nil {
						t.Fatal(err)
					}
				}
			}
		}
		f, err := os.Open(s.Path())
		if err != nil {
			t.Fatal(err)
		}
		fi, _ := f.Stat()
		pre, err := checkFile(f, fi.Size())
		f.Close()
		if err != nil {
			t.Fatalf("round %d: a healthy file failed the check: %v", round, err)
		}
		st := s.Stats()
		if !pre.full || len(pre.badQueue)+len(pre.badDead) > 0 ||
			pre.counters != (counters{st.Queued, st.QueuedBytes, st.Dead, st.DeadBytes}) {
			t.Fatalf("round %d: check recounted %+v, stats say %+v", round, pre, st)
		}
	}
}
