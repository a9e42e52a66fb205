package spool

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
)

// Benchmarks run on real files in b.TempDir(), with every commit fsynced:
// the numbers are the disk's fsync rate times the batching the writer
// achieves. Run with -benchtime 2s -count 3. To compare bbolt settings,
// set Options.tune in benchSpool (see defaultTuning for what was measured).

func benchSpool(b *testing.B) *Spool {
	b.Helper()
	return mustOpenSpool(b, Options{Path: b.TempDir() + "/spool.db"})
}

func BenchmarkAppend(b *testing.B) {
	for _, goroutines := range []int{1, 64} {
		b.Run(fmt.Sprintf("goroutines=%d", goroutines), func(b *testing.B) {
			s := benchSpool(b)
			body := trackBody(1)
			b.SetBytes(int64(len(body)))
			var (
				next atomic.Int64
				wg   sync.WaitGroup
			)
			b.ResetTimer()
			for range goroutines {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for next.Add(1) <= int64(b.N) {
						if err := s.Append(context.Background(), Entry{Kind: KindTrack, Body: body}); err != nil {
							b.Error(err)
							return
						}
					}
				}()
			}
			wg.Wait()
			b.StopTimer()
			st := s.Stats()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
			b.ReportMetric(float64(st.Appended)/float64(max(st.Commits, 1)), "events/commit")
		})
	}
}

func BenchmarkReadDelete(b *testing.B) {
	s := benchSpool(b)
	body := trackBody(1)
	ctx := context.Background()
	entries := make([]Entry, 1000)
	for i := range entries {
		entries[i] = Entry{Kind: KindTrack, Body: body}
	}
	for appended := 0; appended < b.N; appended += len(entries) {
		if err := s.Append(ctx, entries...); err != nil {
			b.Fatal(err)
		}
	}
	b.SetBytes(int64(len(body)))
	b.ResetTimer()
	after, done := uint64(0), 0
	for done < b.N {
		recs, err := s.Read(after, 100)
		if err != nil {
			b.Fatal(err)
		}
		if len(recs) == 0 {
			b.Fatalf("queue ran dry after %d of %d", done, b.N)
		}
		after = recs[len(recs)-1].ID
		if err := s.Delete(ctx, ids(recs)...); err != nil {
			b.Fatal(err)
		}
		done += len(recs)
	}
	b.StopTimer()
	b.ReportMetric(float64(done)/b.Elapsed().Seconds(), "events/s")
}
