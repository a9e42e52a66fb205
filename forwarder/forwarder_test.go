package forwarder

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/trackd/trackd/forwarder/upstreamtest"
	"github.com/trackd/trackd/spool"
)

func TestNewChecksOptions(t *testing.T) {
	sp := mustOpenSpool(t)
	for _, tc := range []struct {
		name string
		opts Options
		want string
	}{
		{"a URL is required", Options{}, "URL"},
		{"the URL must be http or https", Options{URL: "ftp://x"}, "http or https"},
		{"the URL needs a host", Options{URL: "https://"}, "no host"},
		{"the rate must not be negative", Options{URL: "https://x", Rate: -1}, "Rate"},
		{"RetryMax must not be below RetryInitial", Options{URL: "https://x", RetryInitial: time.Minute, RetryMax: time.Second}, "RetryMax"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(sp, tc.opts)
			if !errors.Is(err, ErrBadOptions) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err %v, want one mentioning %q", err, tc.want)
			}
		})
	}
	if _, err := New(nil, Options{URL: "https://x"}); err == nil {
		t.Fatal("no store accepted")
	}
	f, err := New(sp, Options{URL: "https://api.example.com/"})
	if err != nil {
		t.Fatal(err)
	}
	if f.urls[spool.KindTrack] != "https://api.example.com/api/v1/track" || f.urls[spool.KindIdentify] != "https://api.example.com/api/v1/identify" {
		t.Fatalf("urls %q", f.urls)
	}
	if f.Shutdown(context.Background()) != nil {
		t.Fatal("Shutdown before Start")
	}
	f.Start(context.Background()) // after Shutdown: does nothing
	if f.Stats().Sent != 0 {
		t.Fatal("started after Shutdown")
	}
}

func TestDeliversOldestFirstExactBytesToTheRightPath(t *testing.T) {
	sp := mustOpenSpool(t)
	up := newUpstream(t)
	spoolEvents(t, sp, 0, 10)
	var ids []spool.Entry
	for i := 10; i < 15; i++ {
		ids = append(ids, spool.Entry{Kind: spool.KindIdentify, Body: identifyBody(i)})
	}
	if err := sp.Append(context.Background(), ids...); err != nil {
		t.Fatal(err)
	}
	spoolEvents(t, sp, 15, 20)

	opts := testOptions(up)
	opts.Concurrency = 1
	f := startForwarder(t, sp, opts)
	waitFor(t, 5*time.Second, "all delivered", func() bool { return f.Stats().Delivered == 20 })
	waitFor(t, 5*time.Second, "the spool to empty", func() bool { return queued(t, sp) == 0 })

	got := up.Received()
	if len(got) != 20 {
		t.Fatalf("upstream received %d requests", len(got))
	}
	for i, r := range got {
		want, path := body(i), "/api/v1/track"
		if i >= 10 && i < 15 {
			want, path = identifyBody(i), "/api/v1/identify"
		}
		if !bytes.Equal(r.Body, want) || r.Path != path || r.Status != 200 {
			t.Fatalf("request %d: %s %s -> %d, want %s %s", i, r.Path, r.Body, r.Status, path, want)
		}
		if r.Header.Get("Content-Type") != "application/json" || r.Header.Get("User-Agent") != "trackd/test" {
			t.Fatalf("request %d headers %v", i, r.Header)
		}
	}
	st := f.Stats()
	if st.Sent != 20 || st.DeadLettered != 0 || st.Retried != 0 || st.InFlight != 0 {
		t.Fatalf("stats %+v", st)
	}
}

func TestDeliversNewRecordsAsTheyArrive(t *testing.T) {
	sp := mustOpenSpool(t)
	up := newUpstream(t)
	f := startForwarder(t, sp, testOptions(up))
	for i := range 5 {
		spoolEvents(t, sp, i, i+1)
		waitFor(t, 2*time.Second, "the new record delivered", func() bool { return f.Stats().Delivered == uint64(i+1) })
	}
}

func TestPermanentRefusalsAreDeadLettered(t *testing.T) {
	sp := mustOpenSpool(t)
	up := newUpstream(t)
	logs := &logSink{}

	// seq -> how upstream refuses it; the rest are accepted.
	refusals := map[int]upstreamtest.Answer{
		1: {Status: 200, Body: `{"status":"failure","message":"apiKey is not valid"}`},
		3: {Status: 404},
		5: {Status: 413, Body: `{"status":"failure","message":"too big"}`},
		7: {Status: 422, Body: "unprocessable: " + strings.Repeat("x", 2000)},
		9: {Status: 410},
	}
	up.SetMode(upstreamtest.Mode{Script: func(r upstreamtest.Request) (upstreamtest.Answer, bool) {
		if bytes.Contains(r.Body, []byte(`"seq":`)) {
			a, ok := refusals[seqOf(t, r.Body)]
			return a, ok
		}
		return upstreamtest.Answer{}, false
	}})
	spoolEvents(t, sp, 0, 12)
	// And one upstream's own validation refuses with 400.
	bad := []byte(`{"apiKey":"k","userId":"u","properties":{"seq":12}}`)
	if err := sp.Append(context.Background(), spool.Entry{Kind: spool.KindTrack, Body: bad}); err != nil {
		t.Fatal(err)
	}
	before, _ := sp.Read(0, 100)
	idOf := map[int]uint64{}
	for _, r := range before {
		idOf[seqOf(t, r.Body)] = r.ID
	}

	opts := testOptions(up)
	opts.Logger = slog.New(logs)
	f := startForwarder(t, sp, opts)
	waitFor(t, 5*time.Second, "every record settled", func() bool {
		return queued(t, sp) == 0 && len(deadLetters(t, sp)) == 6
	})

	dead := map[uint64]spool.DeadLetter{}
	for _, d := range deadLetters(t, sp) {
		dead[d.ID] = d
	}
	want := map[int]struct {
		status int
		reason string
	}{
		1:  {200, `{"status":"failure","message":"apiKey is not valid"}`},
		3:  {404, `"message":"not found"`},
		5:  {413, `{"status":"failure","message":"too big"}`},
		7:  {422, "unprocessable: xxxx"},
		9:  {410, `"gone"`},
		12: {400, "event is required"},
	}
	for seq, w := range want {
		d, ok := dead[idOf[seq]]
		if !ok {
			t.Fatalf("seq %d was not dead-lettered", seq)
		}
		if d.Status != w.status || !strings.Contains(d.Reason, w.reason) || d.DeadAt.IsZero() {
			t.Fatalf("seq %d: dead letter status %d reason %q, want %d and %q", seq, d.Status, d.Reason, w.status, w.reason)
		}
		if seq == 7 && len(d.Reason) > reasonBytes {
			t.Fatalf("reason kept %d bytes", len(d.Reason))
		}
	}
	// Never retried, and never both delivered and dead-lettered.
	sends := map[int]int{}
	for _, r := range up.Received() {
		sends[seqOf(t, r.Body)]++
	}
	for seq := range 13 {
		if sends[seq] != 1 {
			t.Fatalf("seq %d was sent %d times", seq, sends[seq])
		}
	}
	st := f.Stats()
	if st.DeadLettered != 6 || st.Delivered != 7 || st.Retried != 0 {
		t.Fatalf("stats %+v", st)
	}
	if n := logs.count(slog.LevelWarn, "dead letters"); n != 6 {
		t.Fatalf("%d warnings about dead letters, want 6", n)
	}
}

func TestUnauthorizedPausesEverythingWithBackoff(t *testing.T) {
	for _, tc := range []struct {
		name   string
		answer upstreamtest.Answer
	}{
		{"401", upstreamtest.Answer{Status: 401}},
		{"403", upstreamtest.Answer{Status: 403}},
		{"a redirect is never followed", upstreamtest.Answer{Status: 302, Body: " "}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			sp := mustOpenSpool(t)
			up := newUpstream(t)
			logs := &logSink{}
			a := tc.answer
			a.Body = strings.TrimSpace(a.Body)
			up.SetMode(upstreamtest.Mode{Answer: a})
			if a.Status == 302 {
				// Location points at a path that would accept the event.
				up.SetMode(upstreamtest.Mode{Script: func(r upstreamtest.Request) (upstreamtest.Answer, bool) {
					return upstreamtest.Answer{Status: 302}, r.Path != "/elsewhere"
				}})
			}
			spoolEvents(t, sp, 0, 10)
			opts := testOptions(up)
			opts.Concurrency = 1
			opts.RetryInitial, opts.RetryMax = 40*time.Millisecond, 320*time.Millisecond
			opts.Logger = slog.New(logs)
			f := startForwarder(t, sp, opts)

			waitFor(t, 5*time.Second, "five refused attempts", func() bool {
				return logs.count(slog.LevelError, "pausing all sending") >= 5
			})
			got := up.Received()
			// Each refusal is one backoff step: 40ms, 80ms, 160ms, 320ms.
			for i := 1; i < 5; i++ {
				gap := got[i].At.Sub(got[i-1].At)
				if step := backoff(opts.RetryInitial, opts.RetryMax, i); gap < step {
					t.Fatalf("attempt %d came %v after the previous one; the pause is %v", i+1, gap, step)
				}
			}
			for _, r := range got {
				if r.Path == "/elsewhere" {
					t.Fatal("a redirect was followed")
				}
			}
			if n, errs := up.Count(), logs.count(slog.LevelError, "pausing all sending"); errs < 5 || errs > n {
				t.Fatalf("%d error logs for %d refusals: want one per backoff step", errs, n)
			}
			if d := deadLetters(t, sp); len(d) != 0 {
				t.Fatalf("dead-lettered %d records", len(d))
			}
			if q := queued(t, sp); q != 10 {
				t.Fatalf("%d queued, want 10", q)
			}
			st := f.Stats()
			if st.Unauthorized < 5 || !st.PausedUntil.After(got[0].At) {
				t.Fatalf("stats %+v", st)
			}

			// Fixed upstream: everything goes.
			up.SetMode(upstreamtest.Mode{})
			waitFor(t, 5*time.Second, "delivery after the fix", func() bool { return queued(t, sp) == 0 })
			if logs.count(slog.LevelInfo, "accepts events again") != 1 {
				t.Fatal("recovery was not logged")
			}
		})
	}
}

func TestRetryableFailuresRetryTheSameRecord(t *testing.T) {
	for _, tc := range []struct {
		name   string
		answer upstreamtest.Answer
		kind   string
	}{
		{"500", upstreamtest.Answer{Status: 500}, "status_5xx"},
		{"502", upstreamtest.Answer{Status: 502}, "status_5xx"},
		{"503 without Retry-After", upstreamtest.Answer{Status: 503}, "status_5xx"},
		{"408", upstreamtest.Answer{Status: 408}, "status_408"},
		{"a timeout", upstreamtest.Answer{Hang: true}, "timeout"},
		{"a dropped connection", upstreamtest.Answer{Drop: true}, "reset"},
		{"a reset connection", upstreamtest.Answer{Reset: true}, "reset"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			sp := mustOpenSpool(t)
			up := newUpstream(t)
			var failed atomic.Int32
			up.SetMode(upstreamtest.Mode{Script: func(r upstreamtest.Request) (upstreamtest.Answer, bool) {
				if seqOf(t, r.Body) == 0 && failed.Add(1) <= 2 {
					return tc.answer, true
				}
				return upstreamtest.Answer{}, false
			}})
			spoolEvents(t, sp, 0, 5)
			opts := testOptions(up)
			opts.Timeout = 200 * time.Millisecond
			f := startForwarder(t, sp, opts)
			waitFor(t, 5*time.Second, "all delivered", func() bool { return queued(t, sp) == 0 })

			var tries [][]byte
			for _, r := range up.Received() {
				if seqOf(t, r.Body) == 0 {
					tries = append(tries, r.Body)
				}
			}
			if len(tries) != 3 || !bytes.Equal(tries[0], tries[2]) {
				t.Fatalf("record 0 was sent %d times", len(tries))
			}
			st := f.Stats()
			if st.Retried != 2 || st.Delivered != 5 || st.DeadLettered != 0 || st.LastErrorClass != tc.kind {
				t.Fatalf("stats %+v", st)
			}
		})
	}
}

func TestAttemptsAreCountedInTheSpool(t *testing.T) {
	sp := mustOpenSpool(t)
	up := newUpstream(t)
	up.SetMode(upstreamtest.Mode{Answer: upstreamtest.Answer{Status: 500}})
	spoolEvents(t, sp, 0, 1)
	startForwarder(t, sp, testOptions(up))
	waitFor(t, 5*time.Second, "attempts counted", func() bool {
		recs, _ := sp.Read(0, 1)
		return len(recs) == 1 && recs[0].Attempts >= 2
	})
}

func TestRetryAfterPausesEverySend(t *testing.T) {
	for _, tc := range []struct {
		name   string
		status int
		date   bool
	}{
		{"429 in delta-seconds", 429, false},
		{"429 as an HTTP-date", 429, true},
		{"503 in delta-seconds", 503, false},
		{"503 as an HTTP-date", 503, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			sp := mustOpenSpool(t)
			up := newUpstream(t)
			var (
				sent     atomic.Bool
				resumeAt atomic.Int64 // unix nanos
			)
			up.SetMode(upstreamtest.Mode{Script: func(r upstreamtest.Request) (upstreamtest.Answer, bool) {
				if seqOf(t, r.Body) != 3 || !sent.CompareAndSwap(false, true) {
					return upstreamtest.Answer{}, false
				}
				a := upstreamtest.Answer{Status: tc.status, RetryAfter: "1"}
				at := r.At.Add(time.Second)
				if tc.date {
					a.RetryAfter = upstreamtest.RetryAfterDate(r.At.Add(time.Second))
					at, _ = http.ParseTime(a.RetryAfter)
				}
				resumeAt.Store(at.UnixNano())
				return a, true
			}})
			spoolEvents(t, sp, 0, 30)
			opts := testOptions(up)
			opts.Concurrency, opts.Rate, opts.Burst = 8, 100, 1
			opts.RetryMax = 10 * time.Second
			f := startForwarder(t, sp, opts)
			waitFor(t, 6*time.Second, "all delivered", func() bool { return queued(t, sp) == 0 })

			got := up.Received()
			i := slices.IndexFunc(got, func(r upstreamtest.Request) bool { return r.Status == tc.status })
			if i < 0 {
				t.Fatal("no Retry-After answer recorded")
			}
			answered, resume := got[i].At, time.Unix(0, resumeAt.Load())
			// Requests already on their way when upstream answered may
			// arrive just after; nothing that left later may.
			const inFlight = 25 * time.Millisecond
			for _, r := range got[i+1:] {
				if r.At.After(answered.Add(inFlight)) && r.At.Before(resume) {
					t.Fatalf("a request arrived %v after the Retry-After answer; the pause lasted until %v after",
						r.At.Sub(answered), resume.Sub(answered))
				}
			}
			if last := got[len(got)-1].At; last.Before(resume) {
				t.Fatalf("everything was delivered before the pause ended")
			}
			if st := f.Stats(); st.PausedUntil.Before(resume) {
				t.Fatalf("stats say paused until %v, want at least %v", st.PausedUntil, resume)
			}
			v, err := sp.State(StateKeyPausedUntil)
			if err != nil || len(v) == 0 {
				t.Fatalf("pause not persisted: %q %v", v, err)
			}
			if tc.status == 429 && f.Stats().Throttled != 1 {
				t.Fatalf("throttled %d", f.Stats().Throttled)
			}
		})
	}
}

func TestAbsurdRetryAfterIsCappedAndLogged(t *testing.T) {
	sp := mustOpenSpool(t)
	up := newUpstream(t)
	logs := &logSink{}
	var n atomic.Int32
	up.SetMode(upstreamtest.Mode{Script: func(r upstreamtest.Request) (upstreamtest.Answer, bool) {
		return upstreamtest.Answer{Status: 429, RetryAfter: "86400"}, n.Add(1) == 1
	}})
	spoolEvents(t, sp, 0, 3)
	opts := testOptions(up)
	opts.RetryMax = 300 * time.Millisecond
	opts.Logger = slog.New(logs)
	startForwarder(t, sp, opts)
	waitFor(t, 5*time.Second, "delivery after the capped pause", func() bool { return queued(t, sp) == 0 })
	got := up.Received()
	if gap := got[len(got)-1].At.Sub(got[0].At); gap < 300*time.Millisecond {
		t.Fatalf("resumed after %v, before the capped pause ended", gap)
	}
	logs.mu.Lock()
	defer logs.mu.Unlock()
	capped := false
	for _, r := range logs.recs {
		r.Attrs(func(a slog.Attr) bool {
			capped = capped || a.Key == "capped_to"
			return true
		})
	}
	if !capped {
		t.Fatal("the cap was not logged")
	}
}

func TestPauseHoldsAcrossRestart(t *testing.T) {
	path := t.TempDir() + "/spool.db"
	sp := openSpoolAt(t, path)
	up := newUpstream(t)
	up.SetMode(upstreamtest.Mode{Answer: upstreamtest.Answer{Status: 429, RetryAfter: "2"}})
	spoolEvents(t, sp, 0, 5)
	opts := testOptions(up)
	opts.RetryMax = time.Minute
	f := startForwarder(t, sp, opts)
	waitFor(t, 5*time.Second, "a 429", func() bool { return f.Stats().Throttled > 0 })
	waitFor(t, 5*time.Second, "the pause persisted", func() bool {
		v, _ := sp.State(StateKeyPausedUntil)
		return len(v) > 0
	})
	stop(t, f)
	if err := sp.Close(); err != nil {
		t.Fatal(err)
	}
	first := up.Received()[0].At
	up.SetMode(upstreamtest.Mode{})
	up.Reset()

	sp = openSpoolAt(t, path)
	f = startForwarder(t, sp, opts)
	if p := f.Stats().PausedUntil; p.Before(first.Add(2 * time.Second)) {
		// Start restores the pause before it sends anything.
		waitFor(t, time.Second, "the restored pause", func() bool { return !f.Stats().PausedUntil.Before(first.Add(2 * time.Second)) })
	}
	waitFor(t, 5*time.Second, "delivery after the pause", func() bool { return queued(t, sp) == 0 })
	for _, r := range up.Received() {
		if r.At.Before(first.Add(2 * time.Second)) {
			t.Fatalf("a request arrived %v after the 429, inside the 2s pause", r.At.Sub(first))
		}
	}
}

// maxInWindow is the most arrivals in any window of length w.
func maxInWindow(rs []upstreamtest.Request, w time.Duration) int {
	most, j := 0, 0
	for i := range rs {
		for rs[i].At.Sub(rs[j].At) >= w {
			j++
		}
		most = max(most, i-j+1)
	}
	return most
}

func TestRateCeilingHolds(t *testing.T) {
	sp := mustOpenSpool(t)
	up := newUpstream(t)
	spoolEvents(t, sp, 0, 70)
	opts := testOptions(up)
	opts.Rate, opts.Burst, opts.Concurrency = 40, 5, 8
	f := startForwarder(t, sp, opts)
	waitFor(t, 10*time.Second, "all delivered", func() bool { return queued(t, sp) == 0 })
	got := up.Received()
	// rate*1s + burst, and one for the jitter between leaving and arriving.
	if most := maxInWindow(got, time.Second); most > 40+5+1 || most < 35 {
		t.Fatalf("%d requests arrived within one second; the ceiling is 40/s with a burst of 5", most)
	}
	if f.Stats().RateLimit != 40 {
		t.Fatalf("rate limit %v", f.Stats().RateLimit)
	}
}

func TestOutageThenRecoveryDeliversEverythingInOrder(t *testing.T) {
	sp := mustOpenSpool(t)
	up := newUpstream(t)
	logs := &logSink{}
	up.Down()
	spoolEvents(t, sp, 0, 30)
	opts := testOptions(up)
	opts.Concurrency = 1
	opts.Logger = slog.New(logs)
	f := startForwarder(t, sp, opts)
	waitFor(t, 5*time.Second, "upstream seen down", func() bool { return f.Stats().Down })
	waitFor(t, 5*time.Second, "a few probes", func() bool { return f.Stats().Retried >= 6 })
	if st := f.Stats(); st.LastErrorClass != "refused" || st.Delivered != 0 {
		t.Fatalf("stats while down %+v", st)
	}
	if err := up.Up(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "all delivered", func() bool { return queued(t, sp) == 0 })
	if got := accepted(t, up); !slices.Equal(got, seqs(0, 30)) {
		t.Fatalf("delivered %v", got)
	}
	if f.Stats().Down {
		t.Fatal("still down")
	}
	if logs.count(slog.LevelWarn, "unreachable") != 1 || logs.count(slog.LevelInfo, "reachable again") != 1 {
		t.Fatal("down and up were not logged once each")
	}
}

func seqs(from, to int) []int {
	var s []int
	for i := from; i < to; i++ {
		s = append(s, i)
	}
	return s
}

func TestWhileDownOneProbeAtATime(t *testing.T) {
	sp := mustOpenSpool(t)
	up := newUpstream(t)
	const delay = 20 * time.Millisecond
	up.SetMode(upstreamtest.Mode{Answer: upstreamtest.Answer{Status: 500, Delay: delay}})
	spoolEvents(t, sp, 0, 40)
	opts := testOptions(up)
	opts.Concurrency = 8
	opts.RetryInitial, opts.RetryMax = 5*time.Millisecond, 40*time.Millisecond
	f := startForwarder(t, sp, opts)
	waitFor(t, 5*time.Second, "upstream seen down", func() bool { return f.Stats().Down })
	// Requests sent before the switch to probing must finish first.
	waitFor(t, 5*time.Second, "at most one request in flight", func() bool { return f.Stats().InFlight <= 1 })
	up.Reset()
	waitFor(t, 5*time.Second, "probes", func() bool { return up.Count() >= 6 })
	got := up.Received()
	for i := 1; i < len(got); i++ {
		if gap := got[i].At.Sub(got[i-1].At); gap < delay-time.Millisecond {
			t.Fatalf("probes %d and %d overlapped: %v apart, each takes %v", i, i+1, gap, delay)
		}
	}
	up.SetMode(upstreamtest.Mode{})
	waitFor(t, 5*time.Second, "all delivered", func() bool { return queued(t, sp) == 0 })
	seen := slices.Clone(accepted(t, up))
	slices.Sort(seen)
	if !slices.Equal(seen, seqs(0, 40)) {
		t.Fatalf("delivered %v", seen)
	}
}

func TestRecordsOlderThanMaxAgeAreNotSent(t *testing.T) {
	sp := mustOpenSpool(t)
	up := newUpstream(t)
	old := time.Now().Add(-2 * time.Hour)
	if err := sp.Append(context.Background(),
		spool.Entry{Kind: spool.KindTrack, Body: body(0), Received: old},
		spool.Entry{Kind: spool.KindTrack, Body: body(1), Received: old},
		spool.Entry{Kind: spool.KindTrack, Body: body(2)},
	); err != nil {
		t.Fatal(err)
	}
	opts := testOptions(up)
	opts.MaxAge = time.Hour
	f := startForwarder(t, sp, opts)
	waitFor(t, 5*time.Second, "the fresh record delivered", func() bool {
		st := f.Stats()
		return st.Delivered == 1 && st.Expired == 2
	})
	if got := accepted(t, up); !slices.Equal(got, []int{2}) || up.Count() != 1 {
		t.Fatalf("upstream received %v", got)
	}
}

func TestShutdownDrainsWhileUpstreamAccepts(t *testing.T) {
	sp := mustOpenSpool(t)
	up := newUpstream(t)
	up.SetMode(upstreamtest.Mode{Answer: upstreamtest.Answer{Delay: time.Millisecond}})
	spoolEvents(t, sp, 0, 300)
	f, err := New(sp, testOptions(up))
	if err != nil {
		t.Fatal(err)
	}
	f.Start(context.Background())
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := f.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if q := queued(t, sp); q != 0 {
		t.Fatalf("%d left after a drain", q)
	}
	if st := f.Stats(); st.Delivered != 300 || st.Sent != 300 {
		t.Fatalf("stats %+v", st)
	}
}

// Shutdown drains only while upstream takes events. Against an upstream
// that refuses connections, or answers 429 without Retry-After (which only
// lowers the rate) or 503 (a backoff), waiting would hold SIGTERM up for the
// whole shutdown timeout while the events are safe in the spool anyway.
func TestShutdownStopsAtOnceWhileUpstreamRefuses(t *testing.T) {
	for _, tc := range []struct {
		name   string
		refuse func(*upstreamtest.Server)
	}{
		{"connection refused", func(up *upstreamtest.Server) { up.Down() }},
		{"429", func(up *upstreamtest.Server) {
			up.SetMode(upstreamtest.Mode{Answer: upstreamtest.Answer{Status: http.StatusTooManyRequests}})
		}},
		{"503", func(up *upstreamtest.Server) {
			up.SetMode(upstreamtest.Mode{Answer: upstreamtest.Answer{Status: http.StatusServiceUnavailable}})
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sp := mustOpenSpool(t)
			up := newUpstream(t)
			tc.refuse(up)
			spoolEvents(t, sp, 0, 200)
			f, err := New(sp, testOptions(up))
			if err != nil {
				t.Fatal(err)
			}
			f.Start(context.Background())
			waitFor(t, 5*time.Second, "a refused send", func() bool { return f.Stats().Retried > 0 })
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			start := time.Now()
			if err := f.Shutdown(ctx); err != nil {
				t.Fatalf("Shutdown: %v", err)
			}
			if d := time.Since(start); d > 5*time.Second {
				t.Fatalf("Shutdown waited %v while upstream refused", d)
			}
			if q := queued(t, sp); q != 200 {
				t.Fatalf("%d queued, want all 200 kept for the next start", q)
			}
		})
	}
}

func TestShutdownStopsAtTheDeadline(t *testing.T) {
	sp := mustOpenSpool(t)
	up := newUpstream(t)
	up.SetMode(upstreamtest.Mode{Answer: upstreamtest.Answer{Hang: true}})
	spoolEvents(t, sp, 0, 10)
	opts := testOptions(up)
	opts.Timeout = time.Minute
	f, err := New(sp, opts)
	if err != nil {
		t.Fatal(err)
	}
	f.Start(context.Background())
	waitFor(t, 5*time.Second, "requests in flight", func() bool { return f.Stats().InFlight == 4 })
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	if err := f.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Shutdown: %v", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("Shutdown took %v", d)
	}
	if q := queued(t, sp); q != 10 {
		t.Fatalf("%d queued after a hard stop, want all 10", q)
	}
	if st := f.Stats(); st.InFlight != 0 || st.Retried != 0 {
		t.Fatalf("stats %+v", st)
	}
}

func TestStartContextCancelIsAHardStop(t *testing.T) {
	sp := mustOpenSpool(t)
	up := newUpstream(t)
	up.SetMode(upstreamtest.Mode{Answer: upstreamtest.Answer{Hang: true}})
	spoolEvents(t, sp, 0, 3)
	f, err := New(sp, testOptions(up))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	f.Start(ctx)
	waitFor(t, 5*time.Second, "requests in flight", func() bool { return f.Stats().InFlight > 0 })
	cancel()
	if err := f.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if q := queued(t, sp); q != 3 {
		t.Fatalf("%d queued", q)
	}
}

// faultyStore fails some calls, then behaves.
type faultyStore struct {
	*spool.Spool
	failDeletes, failReads atomic.Int32
}

var errInjected = errors.New("injected fault")

func (s *faultyStore) Delete(ctx context.Context, ids ...uint64) error {
	if s.failDeletes.Add(-1) >= 0 {
		return errInjected
	}
	return s.Spool.Delete(ctx, ids...)
}

func (s *faultyStore) Read(after uint64, n int) ([]spool.Record, error) {
	if s.failReads.Add(-1) >= 0 {
		return nil, errInjected
	}
	return s.Spool.Read(after, n)
}

func TestStoreFaultsAreRetried(t *testing.T) {
	sp := mustOpenSpool(t)
	up := newUpstream(t)
	fs := &faultyStore{Spool: sp}
	fs.failDeletes.Store(2)
	fs.failReads.Store(1)
	spoolEvents(t, sp, 0, 20)
	f := startForwarder(t, fs, testOptions(up))
	waitFor(t, 5*time.Second, "all delivered and deleted", func() bool { return queued(t, sp) == 0 })
	if got := accepted(t, up); len(got) != 20 {
		t.Fatalf("delivered %d times for 20 records", len(got))
	}
	if f.Stats().Delivered != 20 {
		t.Fatalf("stats %+v", f.Stats())
	}
}
