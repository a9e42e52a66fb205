package forwarder

import (
	"container/heap"
	"context"
	"net/http"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/trackd/trackd/spool"
)

// downAfter is how many retryable failures in a row, with no answer from
// upstream in between, make the forwarder consider upstream down and switch
// to one probe at a time.
const downAfter = 3

// commitDelay is the longest a delivered record waits for its delete to be
// handed to the store while more answers are coming in: a few milliseconds
// of a larger batch save a commit (and an fsync) per handful of records. It
// widens the window in which a crash causes a duplicate by as much.
const commitDelay = 5 * time.Millisecond

// idlePoll is how often the dispatcher reads the store when it has seen no
// Notify signal: a safety net, not the usual way new records are found.
const idlePoll = time.Second

// item is a record the dispatcher holds: waiting, in flight or being
// committed.
type item struct {
	rec    spool.Record
	tries  int       // failed attempts in this process, for the backoff
	nextAt time.Time // not before, while in the delayed heap
}

// result is what a worker reports for an item it was handed.
type result struct {
	it     *item
	sent   bool // false: not sent (paused at the last moment, or stopping)
	sentAt time.Time
	out    outcome
}

// batch is a set of store writes committed together.
type batch struct {
	deletes  []uint64
	attempts []uint64
	dead     []deadOp
	state    []byte // the pause to persist, when not nil
}

type deadOp struct {
	id     uint64
	kind   spool.Kind
	status int
	reason string
}

func (b *batch) empty() bool {
	return len(b.deletes) == 0 && len(b.attempts) == 0 && len(b.dead) == 0 && b.state == nil
}

func (b *batch) reset() {
	b.deletes, b.attempts, b.dead, b.state = b.deletes[:0], b.attempts[:0], b.dead[:0], nil
}

// dispatcher is the single owner of the forwarder's mutable state: the
// window of records read from the store, the cursor, the rate controller,
// upstream's health and the pause. Workers only send; the committer only
// writes.
type dispatcher struct {
	f  *Forwarder
	rc *rateControl

	work      chan *item
	results   chan result
	commits   chan *batch
	committed chan *batch

	ready      idHeap   // may be sent now, oldest first
	delayed    timeHeap // waiting for their backoff, soonest first
	inflight   int
	committing int // delivered or dead-lettered, write not yet committed

	cursor      uint64 // highest ID read from the store
	caughtUp    bool   // the last Read found nothing more
	lastRead    time.Time
	readRetryAt time.Time // after a failed Read
	readFailing bool
	draining    bool
	// drainThrottled: upstream answered 429 during the drain. Without a
	// Retry-After a 429 only lowers the rate, so a drain against an
	// upstream that throttles everything would run until the deadline.
	drainThrottled bool

	pending      *batch // writes not yet handed to the committer
	pendingSince time.Time
	spare        *batch
	commitBusy   bool

	// Upstream's health.
	failures      int // retryable failures in a row, no answer in between
	down          bool
	downSince     time.Time
	probeFailures int
	nextProbe     time.Time

	// The pause after 401/403/3xx/certificate failures.
	halts     int
	haltSince time.Time

	// The pause upstream asked for with Retry-After, as persisted.
	persistedPause time.Time

	deadLog, expiredLog, negativeLog rate.Sometimes
	deadQuiet, expiredQuiet          int // log lines suppressed since the last one
}

func newDispatcher(f *Forwarder) *dispatcher {
	return &dispatcher{
		f:           f,
		rc:          newRateControl(f.opts.Rate, f.opts.Burst),
		work:        make(chan *item),
		results:     make(chan result, f.opts.Concurrency),
		commits:     make(chan *batch),
		committed:   make(chan *batch, 1),
		pending:     &batch{},
		spare:       &batch{},
		deadLog:     rate.Sometimes{First: 10, Interval: 10 * time.Second},
		expiredLog:  rate.Sometimes{First: 3, Interval: 10 * time.Second},
		negativeLog: rate.Sometimes{First: 1, Interval: time.Minute},
	}
}

func (d *dispatcher) windowLen() int {
	return d.ready.Len() + d.delayed.Len() + d.inflight + d.committing
}

// run is the forwarder's lifetime: it starts the workers and the committer,
// dispatches until drained or stopped, then collects what is in flight and
// commits what was decided.
func (d *dispatcher) run(ctx context.Context) {
	d.restorePause()

	var workers sync.WaitGroup
	for range d.f.opts.Concurrency {
		workers.Go(func() {
			for it := range d.work {
				d.results <- d.send(ctx, it)
			}
		})
	}
	committerDone := make(chan struct{})
	go func() {
		defer close(committerDone)
		for b := range d.commits {
			d.commit(ctx, b)
			d.committed <- b
		}
	}()

	d.loop(ctx)

	// Stop: no more sends. Collect the answers to requests in flight (on a
	// hard stop they are being abandoned), so that what was delivered is
	// deleted, then commit the rest and stop the committer.
	close(d.work)
	go func() {
		workers.Wait()
		close(d.results)
	}()
	for r := range d.results {
		d.handle(r, d.f.now())
	}
	if d.commitBusy {
		d.doneCommit(<-d.committed)
	}
	if !d.pending.empty() {
		d.commits <- d.pending
		d.doneCommit(<-d.committed)
	}
	close(d.commits)
	<-committerDone
	d.publish()
}

func (d *dispatcher) loop(ctx context.Context) {
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	drain := d.f.drain
	for {
		if d.drainThrottled {
			// Stop before sending more to an upstream that throttles the
			// drain; what is in flight is still collected by run.
			return
		}
		now := d.f.now()
		d.refill(now)
		wake := d.dispatch(ctx, now)
		if ctx.Err() != nil {
			return
		}
		d.publish()
		if d.draining && d.caughtUp && d.windowLen() == 0 && d.pending.empty() && !d.commitBusy {
			return
		}
		if d.draining && !d.accepting(now) {
			// Shutdown drains only while upstream takes events: waiting out
			// a backoff or a pause would just hold the process up. What is
			// in flight is still collected by run.
			return
		}
		if d.caughtUp && d.windowLen() == 0 {
			wake = earliest(wake, d.lastRead.Add(idlePoll))
		}
		if d.readFailing {
			wake = earliest(wake, d.readRetryAt)
		}

		var commits chan<- *batch
		if !d.commitBusy && !d.pending.empty() {
			if due := d.commitDue(now); due.IsZero() {
				commits = d.commits
			} else {
				wake = earliest(wake, due)
			}
		}
		var notify <-chan struct{}
		if d.caughtUp {
			notify = d.f.store.Notify()
		}
		var tick <-chan time.Time
		if !wake.IsZero() {
			timer.Reset(wake.Sub(now))
			tick = timer.C
		}
		select {
		case r := <-d.results:
			d.handle(r, d.f.now())
		case commits <- d.pending:
			d.commitBusy = true
			d.pending, d.spare = d.spare, nil
			d.pendingSince = time.Time{}
		case b := <-d.committed:
			d.doneCommit(b)
		case <-notify:
			d.caughtUp = false
		case <-tick:
			if d.caughtUp && !d.f.now().Before(d.lastRead.Add(idlePoll)) {
				d.caughtUp = false
			}
		case <-drain:
			d.draining, d.caughtUp, drain = true, false, nil
		case <-ctx.Done():
			return
		}
		if tick != nil {
			timer.Stop()
		}
	}
}

// accepting reports whether upstream is taking events now: not down, not
// paused, not throttling the drain, and no record waiting out a retry
// backoff.
func (d *dispatcher) accepting(now time.Time) bool {
	if _, paused := d.f.paused(now); paused || d.drainThrottled {
		return false
	}
	return !d.down && d.halts == 0 && d.delayed.Len() == 0
}

// commitDue returns zero when the pending writes should go to the committer
// now, or else when they should: a persisted pause goes at once, and so does
// everything when nothing is in flight; otherwise writes wait until a batch
// is a quarter of the window, for at most commitDelay.
func (d *dispatcher) commitDue(now time.Time) time.Time {
	if d.pendingSince.IsZero() {
		d.pendingSince = now
	}
	if d.pending.state != nil || d.inflight == 0 || len(d.pending.deletes)+len(d.pending.dead) >= d.f.window/4 {
		return time.Time{}
	}
	if due := d.pendingSince.Add(commitDelay); now.Before(due) {
		return due
	}
	return time.Time{}
}

// earliest is the earlier of two wake times, zero meaning none.
func earliest(a, b time.Time) time.Time {
	if a.IsZero() || b.Before(a) {
		return b
	}
	return a
}

// refill reads more records after the cursor when the window has room.
// Retried records stay in the window, so the cursor only moves forward; a
// restart reads everything still queued from the start.
func (d *dispatcher) refill(now time.Time) {
	if d.caughtUp || now.Before(d.readRetryAt) {
		return
	}
	n := d.windowLen()
	room := d.f.window - n
	if room <= 0 || (n > 0 && room < d.f.window/4) {
		return // read in batches, not one record at a time
	}
	recs, err := d.f.store.Read(d.cursor, room)
	if err != nil {
		if !d.readFailing {
			d.f.log.Error("cannot read the spool; retrying every second", "error", err)
		}
		d.readFailing, d.readRetryAt = true, now.Add(time.Second)
		return
	}
	if d.readFailing {
		d.f.log.Info("reading the spool works again")
		d.readFailing = false
	}
	for i := range recs {
		heap.Push(&d.ready, &item{rec: recs[i]})
		d.cursor = recs[i].ID
	}
	if len(recs) < room {
		d.caughtUp, d.lastRead = true, now
	}
}

// dispatch hands ready records to workers while every gate is open, and
// returns when it should next be woken (zero: when something happens).
func (d *dispatcher) dispatch(ctx context.Context, now time.Time) (wake time.Time) {
	for {
		limit := d.f.opts.Concurrency
		if d.down {
			limit = 1 // one probe at a time
		}
		if d.inflight >= limit {
			return time.Time{}
		}
		if until, ok := d.f.paused(now); ok {
			return until
		}
		for d.delayed.Len() > 0 && !d.delayed[0].nextAt.After(now) {
			heap.Push(&d.ready, heap.Pop(&d.delayed))
		}
		if d.down && now.Before(d.nextProbe) {
			return d.nextProbe
		}
		if d.ready.Len() == 0 {
			if d.delayed.Len() > 0 {
				return d.delayed[0].nextAt
			}
			return time.Time{}
		}
		it := d.ready[0]
		if maxAge := d.f.opts.MaxAge; maxAge > 0 && now.Sub(it.rec.Received) > maxAge {
			heap.Pop(&d.ready)
			d.expire(it, now)
			continue
		}
		if wait := d.rc.reserve(now); wait > 0 {
			return now.Add(wait)
		}
		heap.Pop(&d.ready)
		d.rc.sent(now)
		select {
		case d.work <- it:
			d.inflight++
		case <-ctx.Done():
			heap.Push(&d.ready, it)
			return time.Time{}
		}
	}
}

// expire drops a record that grew older than MaxAge while it waited. It is
// not deleted here: the spool drops expired records itself, and counts them.
func (d *dispatcher) expire(it *item, now time.Time) {
	d.f.counters.expired.Add(1)
	d.expiredQuiet++
	d.expiredLog.Do(func() {
		d.f.log.Warn("record older than max_age; not sending it",
			"id", it.rec.ID, "event_kind", it.rec.Kind.String(), "age", now.Sub(it.rec.Received).Round(time.Second).String(),
			"attempt", int(it.rec.Attempts)+it.tries, "expired_since_last_log", d.expiredQuiet)
		d.expiredQuiet = 0
	})
}

// handle applies a worker's result: this is where the classes of classify
// turn into actions.
func (d *dispatcher) handle(r result, now time.Time) {
	d.inflight--
	it := r.it
	if !r.sent {
		heap.Push(&d.ready, it)
		return
	}
	o := r.out
	switch o.class {
	case delivered:
		d.f.counters.delivered.Add(1)
		d.answered(now)
		if d.halts > 0 {
			d.f.log.Info("upstream accepts events again", "spool_depth", d.f.spoolDepth())
			d.halts = 0
		}
		if d.rc.succeeded(now) {
			d.f.log.Info("send rate back at the configured ceiling", "rate", d.rc.limit())
		}
		d.pending.deletes = append(d.pending.deletes, it.rec.ID)
		d.committing++

	case permanent:
		o.reason = maskAPIKey(o.reason, it.rec.Body)
		d.f.counters.dead.Add(1)
		d.answered(now)
		d.pending.dead = append(d.pending.dead, deadOp{id: it.rec.ID, kind: it.rec.Kind, status: o.status, reason: o.reason})
		d.committing++
		d.deadQuiet++
		d.deadLog.Do(func() {
			d.f.log.Warn("upstream refused an event; moved it to the dead letters",
				"id", it.rec.ID, "event_kind", it.rec.Kind.String(), "status", o.status, "reason", o.reason,
				"attempt", int(it.rec.Attempts)+it.tries+1, "dead_lettered_since_last_log", d.deadQuiet)
			d.deadQuiet = 0
		})

	case halt:
		d.f.counters.unauthorized.Add(1)
		d.setError(o.kind, now)
		d.pending.attempts = append(d.pending.attempts, it.rec.ID)
		heap.Push(&d.ready, it)
		if o.status != 0 {
			d.answered(now)
		}
		if r.sentAt.Before(d.haltSince) {
			return // sent before the current pause began: same step
		}
		d.halts++
		wait := backoff(d.f.opts.RetryInitial, d.f.opts.RetryMax, d.halts)
		d.haltSince = now
		d.f.raisePause(now.Add(wait))
		msg := "upstream refused trackd's credentials or configuration; pausing all sending"
		if o.kind == "redirect" {
			msg = "upstream answered with a redirect; fix upstream.url (redirects are never followed); pausing all sending"
		} else if o.kind == "tls" {
			msg = "upstream's certificate is not trusted; pausing all sending"
		}
		d.f.log.Error(msg, "status", o.status, "error_class", o.kind, "reason", o.reason,
			"retry_in", wait.String(), "step", d.halts, "spool_depth", d.f.spoolDepth())

	case retryable:
		d.f.counters.retried.Add(1)
		d.pending.attempts = append(d.pending.attempts, it.rec.ID)
		wait, capped := d.retryAfter(o)
		if capped && wait == 0 {
			d.negativeLog.Do(func() {
				d.f.log.Warn("ignoring a Retry-After in the past or negative", "status", o.status, "retry_after", o.retryAfter.String())
			})
		}
		switch {
		case o.status == http.StatusTooManyRequests:
			d.f.counters.throttled.Add(1)
			d.setError(o.kind, now)
			d.answered(now)
			d.drainThrottled = d.draining
			if changed, from := d.rc.throttled(r.sentAt, now); changed {
				d.f.log.Info("upstream throttled trackd; lowering the send rate",
					"status", o.status, "from", from, "rate", d.rc.limit())
			}
			if wait > 0 {
				d.pause(now, o, wait, capped)
			}
			heap.Push(&d.ready, it)
		case wait > 0:
			// 503 with Retry-After: upstream is there and said when.
			d.setError(o.kind, now)
			d.answered(now)
			d.pause(now, o, wait, capped)
			heap.Push(&d.ready, it)
		default:
			d.setError(o.kind, now)
			d.failed(it, o, now)
		}
	}
}

// retryAfter returns the pause a Retry-After asks for, capped to
// [0, RetryMax], and whether it was capped.
func (d *dispatcher) retryAfter(o outcome) (time.Duration, bool) {
	if !o.hasRetryAfter {
		return 0, false
	}
	return capRetryAfter(o.retryAfter, d.f.opts.RetryMax)
}

func capRetryAfter(wait, most time.Duration) (time.Duration, bool) {
	switch {
	case wait < 0:
		return 0, true
	case wait > most:
		return most, true
	}
	return wait, false
}

// pause applies a Retry-After: no request leaves before now+wait, and the
// moment is persisted so that it holds across a restart. The worker that got
// the answer raised the pause already, before reporting, so that no other
// worker sends in between; this persists and logs it.
func (d *dispatcher) pause(now time.Time, o outcome, wait time.Duration, capped bool) {
	until := now.Add(wait)
	d.f.raisePause(until)
	if until.Sub(d.persistedPause) < 100*time.Millisecond {
		return // within the pause already persisted
	}
	fresh := !d.persistedPause.After(now)
	d.persistedPause = until
	d.pending.state = []byte(until.UTC().Format(time.RFC3339Nano))
	if fresh || capped {
		args := []any{"status", o.status, "until", until.UTC().Format(time.RFC3339Nano), "wait", wait.String(), "spool_depth", d.f.spoolDepth()}
		if capped {
			args = append(args, "retry_after", o.retryAfter.String(), "capped_to", wait.String())
		}
		d.f.log.Info("upstream asked trackd to wait; pausing all sending", args...)
	}
}

// failed handles a retryable failure that is not upstream asking to slow
// down: the record waits its own backoff, unless failures in a row say
// upstream is down, in which case a single probe at a time goes out, on the
// forwarder's backoff, oldest record first.
func (d *dispatcher) failed(it *item, o outcome, now time.Time) {
	d.failures++
	attempt := int(it.rec.Attempts) + it.tries + 1
	if d.down {
		d.probeFailures++
		d.nextProbe = now.Add(jitter(backoff(d.f.opts.RetryInitial, d.f.opts.RetryMax, d.probeFailures)))
		heap.Push(&d.ready, it)
		return
	}
	if d.failures >= downAfter {
		d.down, d.downSince, d.probeFailures = true, now, 1
		d.nextProbe = now.Add(jitter(d.f.opts.RetryInitial))
		for d.delayed.Len() > 0 {
			heap.Push(&d.ready, heap.Pop(&d.delayed))
		}
		heap.Push(&d.ready, it)
		d.f.log.Warn("upstream is unreachable; sending one probe at a time until it answers",
			"error_class", o.kind, "status", o.status, "error", o.reason, "attempt", attempt, "spool_depth", d.f.spoolDepth())
		return
	}
	it.tries++
	it.nextAt = now.Add(jitter(backoff(d.f.opts.RetryInitial, d.f.opts.RetryMax, it.tries)))
	heap.Push(&d.delayed, it)
	d.f.log.Debug("send failed; will retry", "id", it.rec.ID, "event_kind", it.rec.Kind.String(),
		"error_class", o.kind, "status", o.status, "error", o.reason, "attempt", attempt, "retry_in", it.nextAt.Sub(now).String())
}

// answered notes that upstream answered with an HTTP status, so it is up.
func (d *dispatcher) answered(now time.Time) {
	d.failures = 0
	if d.down {
		d.down, d.probeFailures = false, 0
		d.f.log.Info("upstream is reachable again", "down_for", now.Sub(d.downSince).Round(time.Millisecond).String(),
			"spool_depth", d.f.spoolDepth())
	}
}

func (d *dispatcher) setError(kind string, now time.Time) {
	d.f.mu.Lock()
	d.f.snap.lastErrorClass, d.f.snap.lastErrorAt = kind, now
	d.f.mu.Unlock()
}

// publish copies the dispatcher's state for Stats.
func (d *dispatcher) publish() {
	d.f.mu.Lock()
	d.f.snap.rateLimit = d.rc.limit()
	d.f.snap.down = d.down
	d.f.snap.pending = d.windowLen()
	d.f.mu.Unlock()
}

func (d *dispatcher) doneCommit(b *batch) {
	d.commitBusy = false
	d.committing -= len(b.deletes) + len(b.dead)
	b.reset()
	d.spare = b // the committer is idle again: its batch is the next pending
}

// restorePause reads a pause persisted before a restart.
func (d *dispatcher) restorePause() {
	v, err := d.f.store.State(StateKeyPausedUntil)
	if err != nil {
		d.f.log.Warn("cannot read the persisted pause; starting unpaused", "error", err)
		return
	}
	if len(v) == 0 {
		return
	}
	until, err := time.Parse(time.RFC3339Nano, string(v))
	if err != nil {
		d.f.log.Warn("ignoring an unreadable persisted pause", "value", string(v), "error", err)
		return
	}
	now := d.f.now()
	if !until.After(now) {
		return
	}
	args := []any{"until", until.UTC().Format(time.RFC3339Nano)}
	if most := now.Add(d.f.opts.RetryMax); until.After(most) {
		args = append(args, "capped_to", most.UTC().Format(time.RFC3339Nano))
		until = most
	}
	d.f.raisePause(until)
	d.persistedPause = until
	d.f.log.Info("resuming the pause upstream asked for before the restart", args...)
}
