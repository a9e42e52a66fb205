package spool

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestAppendReadDeleteKeepsOrder(t *testing.T) {
	s := mustOpenSpool(t, Options{})
	ctx := context.Background()
	mustAppend(t, s, "a", "b")
	mustAppend(t, s, "c")
	if err := s.Append(ctx, Entry{Kind: KindIdentify, Body: []byte("d")}); err != nil {
		t.Fatal(err)
	}

	recs := readAll(t, s)
	if got, want := bodies(recs), []string{"a", "b", "c", "d"}; !slices.Equal(got, want) {
		t.Fatalf("bodies = %q, want %q", got, want)
	}
	if !slices.IsSorted(ids(recs)) || recs[0].ID == 0 {
		t.Fatalf("IDs must be positive and ascending: %v", ids(recs))
	}
	if recs[3].Kind != KindIdentify || recs[0].Kind != KindTrack {
		t.Fatalf("kinds = %v, %v", recs[0].Kind, recs[3].Kind)
	}

	if err := s.Delete(ctx, recs[0].ID, recs[2].ID, 999999); err != nil {
		t.Fatalf("Delete with a missing ID: %v", err)
	}
	if got, want := bodies(readAll(t, s)), []string{"b", "d"}; !slices.Equal(got, want) {
		t.Fatalf("after delete: %q, want %q", got, want)
	}
	st := s.Stats()
	if st.Queued != 2 || st.Appended != 4 || st.Deleted != 2 {
		t.Fatalf("stats = %+v", st)
	}
	if want := int64(2 * (keySize + recordHeader + 1)); st.QueuedBytes != want {
		t.Fatalf("QueuedBytes = %d, want %d", st.QueuedBytes, want)
	}

	mustAppend(t, s, "e")
	recs = readAll(t, s)
	if last := recs[len(recs)-1]; string(last.Body) != "e" || last.ID <= recs[len(recs)-2].ID {
		t.Fatalf("a new record must get a higher ID than every earlier one: %v", ids(recs))
	}
}

func TestReadPagesAfterAnID(t *testing.T) {
	s := mustOpenSpool(t, Options{})
	for i := range 10 {
		mustAppend(t, s, fmt.Sprint(i))
	}
	all := readAll(t, s)
	for _, tc := range []struct {
		name  string
		after uint64
		n     int
		want  []string
	}{
		{"the first page starts at the head", 0, 3, []string{"0", "1", "2"}},
		{"the next page starts after the given ID", all[2].ID, 3, []string{"3", "4", "5"}},
		{"the last page is short", all[7].ID, 5, []string{"8", "9"}},
		{"after the last ID there is nothing", all[9].ID, 5, nil},
		{"n of zero returns nothing", 0, 0, nil},
		{"after the largest ID returns nothing", math.MaxUint64, 5, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			recs, err := s.Read(tc.after, tc.n)
			if err != nil {
				t.Fatal(err)
			}
			if got := bodies(recs); !slices.Equal(got, tc.want) && !(len(got) == 0 && len(tc.want) == 0) {
				t.Fatalf("Read(%d, %d) = %q, want %q", tc.after, tc.n, got, tc.want)
			}
		})
	}
}

func TestReadReturnsCopiesOfBodies(t *testing.T) {
	s := mustOpenSpool(t, Options{})
	body := []byte("original")
	if err := s.Append(context.Background(), Entry{Kind: KindTrack, Body: body}); err != nil {
		t.Fatal(err)
	}
	copy(body, "CHANGED!")
	recs := readAll(t, s)
	recs[0].Body[0] = 'X'
	if got := string(readAll(t, s)[0].Body); got != "original" {
		t.Fatalf("stored body = %q: Append must copy its input and Read must copy out", got)
	}
}

func TestRecordsSurviveReopen(t *testing.T) {
	clock := newFakeClock()
	s := mustOpenSpool(t, Options{Now: clock.Now})
	ctx := context.Background()
	received := time.Date(2025, 2, 28, 23, 59, 59, 123456789, time.UTC)
	if err := s.Append(ctx,
		Entry{Kind: KindTrack, Body: []byte("stamped"), Received: received},
		Entry{Kind: KindIdentify, Body: []byte("unstamped")},
	); err != nil {
		t.Fatal(err)
	}
	first := readAll(t, s)[0]
	if err := s.AddAttempt(ctx, first.ID); err != nil {
		t.Fatal(err)
	}

	s = reopen(t, s)
	recs := readAll(t, s)
	if len(recs) != 2 {
		t.Fatalf("got %d records after reopen, want 2", len(recs))
	}
	if r := recs[0]; r.ID != first.ID || r.Kind != KindTrack || string(r.Body) != "stamped" || !r.Received.Equal(received) || r.Attempts != 1 {
		t.Fatalf("first record after reopen = %+v", r)
	}
	if r := recs[1]; r.Kind != KindIdentify || !r.Received.Equal(clock.Now()) {
		t.Fatalf("an entry without Received must be stamped with Now: %+v", r)
	}
	mustAppend(t, s, "later")
	if recs := readAll(t, s); recs[2].ID <= recs[1].ID {
		t.Fatalf("IDs must keep growing across reopen: %v", ids(recs))
	}
}

func TestCountersSurviveReopen(t *testing.T) {
	s := mustOpenSpool(t, Options{})
	ctx := context.Background()
	for i := range 20 {
		mustAppend(t, s, string(trackBody(i)))
	}
	recs := readAll(t, s)
	if err := s.Delete(ctx, recs[0].ID, recs[1].ID); err != nil {
		t.Fatal(err)
	}
	if err := s.DeadLetter(ctx, recs[2].ID, 400, "bad request"); err != nil {
		t.Fatal(err)
	}
	before := s.Stats()

	s = reopen(t, s)
	after := s.Stats()
	if after.Queued != 17 || after.Dead != 1 ||
		after.Queued != before.Queued || after.QueuedBytes != before.QueuedBytes ||
		after.Dead != before.Dead || after.DeadBytes != before.DeadBytes {
		t.Fatalf("gauges before close %+v, after reopen %+v", before, after)
	}
	if !after.Oldest.Equal(recs[3].Received) {
		t.Fatalf("Oldest = %v, want the head's Received %v", after.Oldest, recs[3].Received)
	}
	if after.Appended != 0 || after.Commits != 0 {
		t.Fatalf("cumulative counters count since Open: %+v", after)
	}
}

func TestConcurrentAppendsShareCommits(t *testing.T) {
	s := mustOpenSpool(t, Options{})
	const goroutines, each = 64, 20
	var wg sync.WaitGroup
	errs := make(chan error, goroutines)
	for g := range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				if err := s.Append(context.Background(), Entry{Kind: KindTrack, Body: trackBody(g*each + i)}); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	st := s.Stats()
	if st.Appended != goroutines*each || st.Queued != goroutines*each {
		t.Fatalf("stats = %+v, want %d appended", st, goroutines*each)
	}
	if st.Commits > st.Appended/4 {
		t.Fatalf("%d appends took %d commits: concurrent appends must share commits", st.Appended, st.Commits)
	}
	t.Logf("%d appends in %d commits", st.Appended, st.Commits)
	if got := len(readAll(t, s)); got != goroutines*each {
		t.Fatalf("read %d records, want %d", got, goroutines*each)
	}
}

func TestOneRequestsErrorDoesNotFailItsBatch(t *testing.T) {
	s := mustOpenSpool(t, Options{MaxBytes: 1000})
	small := func(body string) *request {
		r, err := s.appendRequest([]Entry{{Kind: KindTrack, Body: []byte(body)}})
		if err != nil {
			t.Fatal(err)
		}
		r.done = make(chan error, 1)
		return r
	}
	big, err := s.appendRequest([]Entry{{Kind: KindTrack, Body: make([]byte, 960)}})
	if err != nil {
		t.Fatal(err)
	}
	big.done = make(chan error, 1)
	missing := &request{op: opDeadLetter, ids: []uint64{12345}, done: make(chan error, 1)}
	batch := []*request{small("first"), big, missing, small("last")}

	// The writer is idle (no requests, no timers), so the test may run a
	// commit itself to control exactly what is in the batch.
	s.commit(batch, nil)

	for i, want := range []error{nil, ErrFull, ErrNotFound, nil} {
		if got := <-batch[i].done; !errors.Is(got, want) || (want == nil && got != nil) {
			t.Errorf("request %d: got %v, want %v", i, got, want)
		}
	}
	if got := bodies(readAll(t, s)); !slices.Equal(got, []string{"first", "last"}) {
		t.Fatalf("stored %q", got)
	}
	if c := s.Stats().Commits; c != 1 {
		t.Fatalf("the batch took %d commits, want 1", c)
	}
}

func TestFailedCommitFailsEveryRequestUntilOneSucceeds(t *testing.T) {
	var (
		mu   sync.Mutex
		fail error
	)
	s := mustOpenSpool(t, Options{failCommit: func() error {
		mu.Lock()
		defer mu.Unlock()
		return fail
	}})
	mu.Lock()
	fail = errors.New("disk on fire")
	mu.Unlock()

	if err := s.Append(context.Background(), Entry{Kind: KindTrack, Body: []byte("x")}); err == nil || !strings.Contains(err.Error(), "disk on fire") {
		t.Fatalf("Append = %v, want the commit's error", err)
	}
	if err := s.Accepting(); err == nil || !strings.Contains(err.Error(), "disk on fire") {
		t.Fatalf("Accepting after a failed commit = %v, want the commit's error", err)
	}
	if st := s.Stats(); st.Queued != 0 || st.Commits != 0 {
		t.Fatalf("a failed commit must change nothing: %+v", st)
	}

	mu.Lock()
	fail = nil
	mu.Unlock()
	mustAppend(t, s, "y")
	if err := s.Accepting(); err != nil {
		t.Fatalf("Accepting after a successful commit = %v", err)
	}
	if got := bodies(readAll(t, s)); !slices.Equal(got, []string{"y"}) {
		t.Fatalf("stored %q", got)
	}
}

// recordSize is the stored size of a record with an n-byte body.
func recordSize(n int) int64 { return int64(keySize + recordHeader + n) }

func TestRejectWhenFullLeavesStoredDataAlone(t *testing.T) {
	s := mustOpenSpool(t, Options{MaxBytes: 3 * recordSize(10), WhenFull: Reject})
	mustAppend(t, s, "0123456789", "abcdefghij")
	before := readAll(t, s)

	err := s.Append(context.Background(),
		Entry{Kind: KindTrack, Body: []byte("klmnopqrst")},
		Entry{Kind: KindTrack, Body: []byte("uvwxyz0123")})
	if !errors.Is(err, ErrFull) {
		t.Fatalf("Append over MaxBytes = %v, want ErrFull", err)
	}
	if !strings.Contains(err.Error(), s.Path()) || !strings.Contains(err.Error(), "do not fit") {
		t.Fatalf("ErrFull should say where and why: %v", err)
	}
	if after := readAll(t, s); !slices.EqualFunc(before, after, func(a, b Record) bool {
		return a.ID == b.ID && string(a.Body) == string(b.Body)
	}) {
		t.Fatalf("stored data changed: %v -> %v", bodies(before), bodies(after))
	}
	if err := s.Accepting(); !errors.Is(err, ErrFull) {
		t.Fatalf("Accepting while full = %v, want ErrFull", err)
	}
	if st := s.Stats(); st.Queued != 2 || st.DroppedFull != 0 {
		t.Fatalf("stats = %+v", st)
	}

	mustAppend(t, s, "fits-in-it")
	if err := s.Delete(context.Background(), before[0].ID); err != nil {
		t.Fatal(err)
	}
	if err := s.Accepting(); err != nil {
		t.Fatalf("Accepting after space was freed = %v", err)
	}
}

func TestDropOldestDropsOnlyTheOldestAndCounts(t *testing.T) {
	logs := &logRecorder{}
	s := mustOpenSpool(t, Options{
		MaxBytes: 5 * recordSize(1),
		WhenFull: DropOldest,
		Logger:   slogNew(logs),
	})
	ctx := context.Background()
	mustAppend(t, s, "a", "b", "c", "d", "e")
	mustAppend(t, s, "f", "g")
	if got, want := bodies(readAll(t, s)), []string{"c", "d", "e", "f", "g"}; !slices.Equal(got, want) {
		t.Fatalf("queue = %q, want %q", got, want)
	}
	st := s.Stats()
	if st.DroppedFull != 2 || st.Queued != 5 || st.QueuedBytes != 5*recordSize(1) {
		t.Fatalf("stats = %+v", st)
	}
	if line := logs.find("dropped the oldest", "records=2"); line == "" {
		t.Fatalf("expected one summary log line, got %q", logs.all())
	}
	if err := s.Accepting(); err != nil {
		t.Fatalf("DropOldest always accepts: %v", err)
	}

	// With the queue empty, dead letters are dropped, oldest first.
	s2 := mustOpenSpool(t, Options{MaxBytes: 2 * (keySize + deadHeader + 1), WhenFull: DropOldest})
	mustAppend(t, s2, "x", "y")
	for _, r := range readAll(t, s2) {
		if err := s2.DeadLetter(ctx, r.ID, 500, ""); err != nil {
			t.Fatal(err)
		}
	}
	mustAppend(t, s2, "z")
	dead, err := s2.ReadDead(0, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(dead) != 1 || string(dead[0].Body) != "y" || s2.Stats().DroppedFull != 1 {
		t.Fatalf("dead letters = %+v, stats %+v", dead, s2.Stats())
	}
}

func TestEntriesThatCanNeverFitAreTooLarge(t *testing.T) {
	for _, tc := range []struct {
		name    string
		policy  Policy
		entries []Entry
	}{
		{"one entry larger than MaxBytes", Reject, []Entry{{Kind: KindTrack, Body: make([]byte, 200)}}},
		{"one entry larger than MaxBytes under DropOldest", DropOldest, []Entry{{Kind: KindTrack, Body: make([]byte, 200)}}},
		{"entries of one Append larger than MaxBytes together", DropOldest, []Entry{
			{Kind: KindTrack, Body: make([]byte, 60)}, {Kind: KindTrack, Body: make([]byte, 60)},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := mustOpenSpool(t, Options{MaxBytes: 150, WhenFull: tc.policy})
			mustAppend(t, s, "keep")
			if err := s.Append(context.Background(), tc.entries...); !errors.Is(err, ErrTooLarge) {
				t.Fatalf("Append = %v, want ErrTooLarge", err)
			}
			if got := bodies(readAll(t, s)); !slices.Equal(got, []string{"keep"}) {
				t.Fatalf("stored data changed: %q", got)
			}
		})
	}
}

func TestAppendRejectsUnknownKinds(t *testing.T) {
	s := mustOpenSpool(t, Options{})
	if err := s.Append(context.Background(), Entry{Kind: 7, Body: []byte("x")}); err == nil {
		t.Fatal("Append with kind 7 succeeded")
	}
	if s.Stats().Queued != 0 {
		t.Fatal("nothing may be stored")
	}
}

func TestExpiredRecordsAreNeverReadAndAreSwept(t *testing.T) {
	clock := newFakeClock()
	logs := &logRecorder{}
	s := mustOpenSpool(t, Options{MaxAge: time.Hour, Now: clock.Now, Logger: slogNew(logs)})
	ctx := context.Background()
	mustAppend(t, s, "old-1", "old-2")
	if err := s.DeadLetter(ctx, readAll(t, s)[0].ID, 422, "invalid"); err != nil {
		t.Fatal(err)
	}
	clock.Advance(40 * time.Minute)
	mustAppend(t, s, "new")
	clock.Advance(30 * time.Minute) // old-* are 70 minutes old, new is 30

	if got := bodies(readAll(t, s)); !slices.Equal(got, []string{"new"}) {
		t.Fatalf("Read returned %q; expired records must never be returned", got)
	}
	if dead, err := s.ReadDead(0, 10); err != nil || len(dead) != 0 {
		t.Fatalf("ReadDead = %v, %v; expired dead letters must never be returned", dead, err)
	}

	sweepNow(t, s)
	eventually(t, "expired records are dropped", func() bool {
		st := s.Stats()
		return st.Queued == 1 && st.Dead == 0 && st.DroppedExpired == 2
	})
	if st := s.Stats(); !st.Oldest.Equal(clock.Now().Add(-30 * time.Minute)) {
		t.Fatalf("Oldest = %v after the sweep", st.Oldest)
	}
	if logs.find("WARN", "expired") == "" {
		t.Fatalf("the sweep must log a warning summary; logs: %q", logs.all())
	}
}

func TestExpiredRecordsBehindTheHeadAreDroppedOnceRead(t *testing.T) {
	clock := newFakeClock()
	s := mustOpenSpool(t, Options{MaxAge: time.Hour, Now: clock.Now})
	ctx := context.Background()
	// A requeued record goes to the end of the queue but keeps its old
	// Received, so it expires behind younger records.
	mustAppend(t, s, "requeued")
	r := readAll(t, s)[0]
	if err := s.DeadLetter(ctx, r.ID, 500, "x"); err != nil {
		t.Fatal(err)
	}
	clock.Advance(30 * time.Minute)
	mustAppend(t, s, "young")
	if err := s.Requeue(ctx, r.ID); err != nil {
		t.Fatal(err)
	}
	clock.Advance(45 * time.Minute)

	sweepNow(t, s) // stops at "young", the head
	if st := s.Stats(); st.Queued != 2 {
		t.Fatalf("queued = %d", st.Queued)
	}
	if got := bodies(readAll(t, s)); !slices.Equal(got, []string{"young"}) {
		t.Fatalf("Read = %q", got)
	}
	eventually(t, "the expired record Read skipped is deleted", func() bool {
		readAll(t, s) // a report may have been dropped while the writer was busy
		st := s.Stats()
		return st.Queued == 1 && st.DroppedExpired == 1
	})
}

func TestSweepRunsOnItsOwn(t *testing.T) {
	clock := newFakeClock()
	s := mustOpenSpool(t, Options{MaxAge: time.Second, Now: clock.Now})
	mustAppend(t, s, "a", "b")
	clock.Advance(time.Hour)
	// The sweep interval is MaxAge/10, at least 100ms.
	eventually(t, "the writer's timer sweeps", func() bool { return s.Stats().DroppedExpired == 2 })
}

func TestDeadLetterKeepsWhyAndWhen(t *testing.T) {
	clock := newFakeClock()
	s := mustOpenSpool(t, Options{Now: clock.Now})
	ctx := context.Background()
	mustAppend(t, s, "a", "b", "c")
	recs := readAll(t, s)
	if err := s.AddAttempt(ctx, recs[1].ID); err != nil {
		t.Fatal(err)
	}
	clock.Advance(time.Minute)
	long := strings.Repeat("r", 2000)
	if err := s.DeadLetter(ctx, recs[1].ID, 422, long); err != nil {
		t.Fatal(err)
	}

	if got := bodies(readAll(t, s)); !slices.Equal(got, []string{"a", "c"}) {
		t.Fatalf("queue = %q: a dead letter must leave the queue", got)
	}
	dead, err := s.ReadDead(0, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(dead) != 1 {
		t.Fatalf("dead = %+v", dead)
	}
	d := dead[0]
	if d.ID != recs[1].ID || string(d.Body) != "b" || d.Status != 422 || d.Reason != long[:maxReasonBytes] ||
		!d.DeadAt.Equal(clock.Now()) || d.Attempts != 1 || !d.Received.Equal(recs[1].Received) || d.Kind != KindTrack {
		t.Fatalf("dead letter = %+v", d)
	}
	st := s.Stats()
	if st.Queued != 2 || st.Dead != 1 || st.DeadLettered != 1 || st.DeadBytes <= 0 {
		t.Fatalf("stats = %+v", st)
	}

	if err := s.DeadLetter(ctx, recs[1].ID, 422, "again"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("dead-lettering a record that is not queued = %v, want ErrNotFound", err)
	}
	if err := s.DeadLetter(ctx, 9999, 500, ""); !errors.Is(err, ErrNotFound) {
		t.Fatalf("dead-lettering an unknown ID = %v, want ErrNotFound", err)
	}

	s = reopen(t, s)
	if dead2, err := s.ReadDead(0, 10); err != nil || len(dead2) != 1 || dead2[0].Reason != d.Reason {
		t.Fatalf("after reopen: %+v, %v", dead2, err)
	}
}

func TestRequeuePutsDeadLettersAtTheEnd(t *testing.T) {
	s := mustOpenSpool(t, Options{})
	ctx := context.Background()
	mustAppend(t, s, "a", "b", "c")
	recs := readAll(t, s)
	if err := s.AddAttempt(ctx, recs[0].ID, recs[0].ID); err != nil {
		t.Fatal(err)
	}
	if err := s.DeadLetter(ctx, recs[0].ID, 500, "boom"); err != nil {
		t.Fatal(err)
	}
	// Drain Notify so the requeue's signal can be seen.
	select {
	case <-s.Notify():
	default:
	}
	if err := s.Requeue(ctx, recs[0].ID, 424242); err != nil {
		t.Fatal(err)
	}
	select {
	case <-s.Notify():
	default:
		t.Fatal("Requeue added queued records but Notify was not signalled")
	}

	after := readAll(t, s)
	if got := bodies(after); !slices.Equal(got, []string{"b", "c", "a"}) {
		t.Fatalf("queue = %q, want the requeued record at the end", got)
	}
	a := after[2]
	if a.ID <= recs[2].ID || a.Attempts != 0 || !a.Received.Equal(recs[0].Received) {
		t.Fatalf("requeued record = %+v: want a new, higher ID, attempts reset, Received kept", a)
	}
	if dead, err := s.ReadDead(0, 10); err != nil || len(dead) != 0 {
		t.Fatalf("dead = %+v, %v; a record is never in both buckets", dead, err)
	}
	st := s.Stats()
	if st.Queued != 3 || st.Dead != 0 || st.DeadBytes != 0 || st.Requeued != 1 {
		t.Fatalf("stats = %+v", st)
	}
}

func TestAddAttemptCounts(t *testing.T) {
	s := mustOpenSpool(t, Options{})
	ctx := context.Background()
	mustAppend(t, s, "a", "b")
	recs := readAll(t, s)
	for range 3 {
		if err := s.AddAttempt(ctx, recs[0].ID, 777); err != nil {
			t.Fatal(err)
		}
	}
	got := readAll(t, s)
	if got[0].Attempts != 3 || got[1].Attempts != 0 || string(got[0].Body) != "a" {
		t.Fatalf("records = %+v", got)
	}
}

func TestStateSurvivesReopen(t *testing.T) {
	s := mustOpenSpool(t, Options{})
	ctx := context.Background()
	if v, err := s.State("pause_until"); err != nil || v != nil {
		t.Fatalf("unset state = %q, %v", v, err)
	}
	if err := s.SetState(ctx, "pause_until", []byte("2025-03-01T12:00:00Z")); err != nil {
		t.Fatal(err)
	}
	if err := s.SetState(ctx, "gone", []byte("x")); err != nil {
		t.Fatal(err)
	}
	if err := s.SetState(ctx, "gone", nil); err != nil {
		t.Fatal(err)
	}
	s = reopen(t, s)
	if v, err := s.State("pause_until"); err != nil || string(v) != "2025-03-01T12:00:00Z" {
		t.Fatalf("state after reopen = %q, %v", v, err)
	}
	if v, _ := s.State("gone"); v != nil {
		t.Fatalf("a nil value must delete the key; got %q", v)
	}
	for _, bad := range []struct {
		key   string
		value []byte
	}{{"", []byte("x")}, {strings.Repeat("k", maxStateKey+1), []byte("x")}, {"big", make([]byte, maxStateValue+1)}} {
		if err := s.SetState(ctx, bad.key, bad.value); err == nil {
			t.Errorf("SetState(%d-byte key, %d-byte value) succeeded", len(bad.key), len(bad.value))
		}
	}
}

func TestNotifyIsSignalledAfterAppend(t *testing.T) {
	s := mustOpenSpool(t, Options{})
	select {
	case <-s.Notify():
		t.Fatal("Notify signalled before anything was appended")
	default:
	}
	mustAppend(t, s, "a")
	mustAppend(t, s, "b")
	select {
	case <-s.Notify():
	default:
		t.Fatal("Notify not signalled after Append")
	}
	select {
	case <-s.Notify():
		t.Fatal("Notify has capacity one; two appends must leave one signal")
	default:
	}
	if err := s.Delete(context.Background(), readAll(t, s)[0].ID); err != nil {
		t.Fatal(err)
	}
	select {
	case <-s.Notify():
		t.Fatal("Notify signalled by a Delete")
	default:
	}
}

func TestCloseIsIdempotentAndLaterCallsFail(t *testing.T) {
	s, err := Open(Options{Path: tempPath(t), Logger: discardLogger()})
	if err != nil {
		t.Fatal(err)
	}
	mustAppend(t, s, "a")
	if err := s.Accepting(); err != nil {
		t.Fatalf("Accepting on an open spool = %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close = %v", err)
	}
	ctx := context.Background()
	for name, call := range map[string]func() error{
		"Append":     func() error { return s.Append(ctx, Entry{Kind: KindTrack, Body: []byte("x")}) },
		"Delete":     func() error { return s.Delete(ctx, 1) },
		"DeadLetter": func() error { return s.DeadLetter(ctx, 1, 500, "") },
		"Requeue":    func() error { return s.Requeue(ctx, 1) },
		"AddAttempt": func() error { return s.AddAttempt(ctx, 1) },
		"SetState":   func() error { return s.SetState(ctx, "k", []byte("v")) },
		"Read":       func() error { _, err := s.Read(0, 10); return err },
		"ReadDead":   func() error { _, err := s.ReadDead(0, 10); return err },
		"State":      func() error { _, err := s.State("k"); return err },
		"Accepting":  s.Accepting,
	} {
		if err := call(); !errors.Is(err, ErrClosed) {
			t.Errorf("%s after Close = %v, want ErrClosed", name, err)
		}
	}
	_ = s.Stats() // still answers
}

func TestCloseFlushesRequestsTheWriterTook(t *testing.T) {
	s, err := Open(Options{Path: tempPath(t), Logger: discardLogger()})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	ok := 0
	for i := range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := s.Append(context.Background(), Entry{Kind: KindTrack, Body: trackBody(i)})
			switch {
			case err == nil:
				mu.Lock()
				ok++
				mu.Unlock()
			case !errors.Is(err, ErrClosed):
				t.Errorf("Append racing Close = %v, want nil or ErrClosed", err)
			}
		}()
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	s2 := mustOpenSpool(t, Options{Path: s.Path()})
	if got := len(readAll(t, s2)); got != ok {
		t.Fatalf("%d appends succeeded but %d records are stored", ok, got)
	}
}

func TestContextEndingBeforeTheWriterTakesTheRequest(t *testing.T) {
	// The first commit blocks until released, so the writer is busy.
	entered, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	s := mustOpenSpool(t, Options{failCommit: func() error {
		once.Do(func() {
			close(entered)
			<-release
		})
		return nil
	}})

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := s.Append(ctx, Entry{Kind: KindTrack, Body: []byte("x")}); !errors.Is(err, context.Canceled) {
		t.Fatalf("Append with a cancelled context = %v, want context.Canceled", err)
	}

	taken := make(chan error, 1)
	go func() { taken <- s.Append(context.Background(), Entry{Kind: KindTrack, Body: []byte("taken")}) }()
	<-entered // the writer has taken "taken" and is committing it

	ctx, cancel = context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	if err := s.Append(ctx, Entry{Kind: KindTrack, Body: []byte("not taken")}); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Append while the writer is busy = %v, want context.DeadlineExceeded", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("Append waited %v past its deadline", d)
	}
	close(release)
	if err := <-taken; err != nil {
		t.Fatalf("a taken request must complete: %v", err)
	}
	if got := bodies(readAll(t, s)); !slices.Equal(got, []string{"taken"}) {
		t.Fatalf("stored %q", got)
	}
}

func TestSecondOpenOnTheSamePathFailsWithErrLocked(t *testing.T) {
	s := mustOpenSpool(t, Options{})
	start := time.Now()
	_, err := Open(Options{Path: s.Path(), LockTimeout: 300 * time.Millisecond, Logger: discardLogger()})
	took := time.Since(start)
	if !errors.Is(err, ErrLocked) {
		t.Fatalf("second Open = %v, want ErrLocked", err)
	}
	for _, want := range []string{s.Path(), "another trackd"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q should mention %q", err, want)
		}
	}
	if took < 250*time.Millisecond || took > 3*time.Second {
		t.Fatalf("second Open gave up after %v, want about the 300ms LockTimeout", took)
	}
	if st := s.Stats(); st.Quarantined != "" {
		t.Fatal("a locked file must never be quarantined")
	}
	mustAppend(t, s, "still works")
}

func TestDirectoryAndFileModes(t *testing.T) {
	path := filepath.Join(t.TempDir(), "var", "lib", "trackd", "spool.db")
	s := mustOpenSpool(t, Options{Path: path})
	mustAppend(t, s, "x")
	for p, want := range map[string]os.FileMode{
		filepath.Dir(path): 0o700 | os.ModeDir,
		path:               0o600,
	} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode() != want {
			t.Errorf("%s has mode %v, want %v", p, fi.Mode(), want)
		}
	}
}

func TestUnreadablePathIsAnErrorNotAQuarantine(t *testing.T) {
	if os.Geteuid() == 0 {
		// root reads anything; use a path whose parent is a file instead.
		parent := filepath.Join(t.TempDir(), "file")
		if err := os.WriteFile(parent, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := Open(Options{Path: filepath.Join(parent, "spool.db"), Logger: discardLogger()}); err == nil {
			t.Fatal("Open under a regular file succeeded")
		}
		return
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "spool.db")
	if err := os.WriteFile(path, []byte("not checked"), 0o000); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(Options{Path: path, Logger: discardLogger()}); !errors.Is(err, os.ErrPermission) {
		t.Fatalf("Open of an unreadable file = %v, want a permission error", err)
	}
	if _, err := os.Stat(path); err != nil {
		t.Fatal("the file must be left where it was")
	}
}

func TestKindAndPolicyNames(t *testing.T) {
	for k, want := range map[Kind]string{KindTrack: "track", KindIdentify: "identify", 9: "kind(9)"} {
		if got := k.String(); got != want {
			t.Errorf("Kind(%d).String() = %q, want %q", k, got, want)
		}
	}
	if Reject.String() != "reject" || DropOldest.String() != "drop_oldest" {
		t.Error("policy names")
	}
}
