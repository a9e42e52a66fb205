package forwarder

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/trackd/trackd/spool"
)

var benchConcurrency = []int{8, 32}

// BenchmarkForward drains b.N pre-spooled events into upstreamtest with no
// rate ceiling, deletes included, and reports events/s.
func BenchmarkForward(b *testing.B) {
	for _, c := range benchConcurrency {
		b.Run(fmt.Sprintf("concurrency=%d", c), func(b *testing.B) {
			up := newUpstream(b)
			sp := mustOpenSpool(b)
			for i := 0; i < b.N; i += 1000 {
				var es []spool.Entry
				for j := i; j < min(i+1000, b.N); j++ {
					es = append(es, spool.Entry{Kind: spool.KindTrack, Body: body(j)})
				}
				if err := sp.Append(context.Background(), es...); err != nil {
					b.Fatal(err)
				}
			}
			opts := testOptions(up)
			opts.Concurrency = c
			f, err := New(sp, opts)
			if err != nil {
				b.Fatal(err)
			}
			b.ResetTimer()
			start := time.Now()
			f.Start(context.Background())
			if err := f.Shutdown(context.Background()); err != nil {
				b.Fatal(err)
			}
			elapsed := time.Since(start)
			b.StopTimer()
			if st := f.Stats(); st.Delivered != uint64(b.N) {
				b.Fatalf("delivered %d of %d", st.Delivered, b.N)
			}
			b.ReportMetric(float64(b.N)/elapsed.Seconds(), "events/s")
			b.ReportMetric(float64(b.N)/float64(sp.Stats().Commits), "events/commit")
		})
	}
}

// BenchmarkBaseline posts the same bodies to the same server at the same
// concurrency with a plain http.Client: the ceiling BenchmarkForward is
// measured against.
func BenchmarkBaseline(b *testing.B) {
	for _, c := range benchConcurrency {
		b.Run(fmt.Sprintf("concurrency=%d", c), func(b *testing.B) {
			up := newUpstream(b)
			bodies := make([][]byte, b.N)
			for i := range bodies {
				bodies[i] = body(i)
			}
			tr := &http.Transport{MaxIdleConns: c, MaxIdleConnsPerHost: c}
			defer tr.CloseIdleConnections()
			client := &http.Client{Transport: tr}
			url := up.URL() + TrackPath
			var next atomic.Int64
			b.ResetTimer()
			start := time.Now()
			var wg sync.WaitGroup
			for range c {
				wg.Go(func() {
					for {
						i := int(next.Add(1) - 1)
						if i >= len(bodies) {
							return
						}
						req, _ := http.NewRequest(http.MethodPost, url, bytes.NewReader(bodies[i]))
						req.Header.Set("Content-Type", "application/json")
						resp, err := client.Do(req)
						if err != nil {
							b.Error(err)
							return
						}
						_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxAnswerBytes))
						resp.Body.Close()
						if resp.StatusCode != 200 {
							b.Errorf("status %d", resp.StatusCode)
							return
						}
					}
				})
			}
			wg.Wait()
			elapsed := time.Since(start)
			b.StopTimer()
			b.ReportMetric(float64(b.N)/elapsed.Seconds(), "events/s")
		})
	}
}
