package forwarder

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/trackd/trackd/spool"
)

// maxAnswerBytes is how much of an answer's body is read; the rest is
// discarded with the connection.
const maxAnswerBytes = 64 << 10

var answerBufs = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// send posts one record and classifies the answer. It runs on a worker.
func (d *dispatcher) send(ctx context.Context, it *item) result {
	f := d.f
	if _, paused := f.paused(f.now()); paused || ctx.Err() != nil {
		// A Retry-After arrived after the dispatcher let this record
		// go: no request leaves before that moment.
		return result{it: it}
	}
	kind := it.rec.Kind
	if int(kind) >= len(f.urls) || f.urls[kind] == "" {
		return result{it: it, sent: true, sentAt: f.now(), out: outcome{
			class: permanent, kind: "refused", reason: "trackd cannot forward records of kind " + strconv.Itoa(int(kind)),
		}}
	}

	rctx, cancel := context.WithTimeout(ctx, f.opts.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(rctx, http.MethodPost, f.urls[kind], bytes.NewReader(it.rec.Body))
	if err != nil {
		return result{it: it, sent: true, sentAt: f.now(), out: classifyError(err)}
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", f.opts.UserAgent)

	f.counters.sent.Add(1)
	f.inFlight.Add(1)
	sentAt := f.now()
	resp, err := f.client.Do(req)
	var (
		status int
		header http.Header
		buf    *bytes.Buffer
	)
	if err == nil {
		status, header = resp.StatusCode, resp.Header
		buf = answerBufs.Get().(*bytes.Buffer)
		buf.Reset()
		_, err = buf.ReadFrom(io.LimitReader(resp.Body, maxAnswerBytes))
		_ = resp.Body.Close()
	}
	f.inFlight.Add(-1)
	if err != nil && ctx.Err() != nil && errors.Is(err, context.Canceled) {
		// Stopping: the answer is unknown and the record stays queued.
		putBuf(buf)
		return result{it: it}
	}
	var body []byte
	if buf != nil {
		body = buf.Bytes()
	}
	out := classify(status, header, body, err, f.now())
	putBuf(buf) // classify copies what it keeps
	if out.class == retryable && (status == http.StatusTooManyRequests || status == http.StatusServiceUnavailable) {
		if wait, _ := capRetryAfter(out.retryAfter, f.opts.RetryMax); out.hasRetryAfter && wait > 0 {
			// Pause before reporting, so that no other worker
			// sends in between.
			f.raisePause(f.now().Add(wait))
		}
	}
	return result{it: it, sent: true, sentAt: sentAt, out: out}
}

func putBuf(b *bytes.Buffer) {
	if b != nil && b.Cap() <= maxAnswerBytes {
		answerBufs.Put(b)
	}
}

// commit performs a batch of store writes. They go to the store at once, so
// that its group commit puts them in as few transactions as it can.
func (d *dispatcher) commit(ctx context.Context, b *batch) {
	if len(b.attempts) > 0 && (len(b.deletes) > 0 || len(b.dead) > 0) {
		// A record that failed and then got a final answer in the
		// same batch needs no attempt counted.
		done := make(map[uint64]struct{}, len(b.deletes)+len(b.dead))
		for _, id := range b.deletes {
			done[id] = struct{}{}
		}
		for _, op := range b.dead {
			done[op.id] = struct{}{}
		}
		kept := b.attempts[:0]
		for _, id := range b.attempts {
			if _, ok := done[id]; !ok {
				kept = append(kept, id)
			}
		}
		b.attempts = kept
	}
	var wg sync.WaitGroup
	if len(b.deletes) > 0 {
		wg.Go(func() {
			d.write(ctx, "delete delivered records", len(b.deletes), func(c context.Context) error {
				return d.f.store.Delete(c, b.deletes...)
			})
		})
	}
	if len(b.attempts) > 0 {
		wg.Go(func() {
			d.write(ctx, "count attempts", len(b.attempts), func(c context.Context) error {
				return d.f.store.AddAttempt(c, b.attempts...)
			})
		})
	}
	if b.state != nil {
		wg.Go(func() {
			d.write(ctx, "persist the pause", 1, func(c context.Context) error {
				return d.f.store.SetState(c, StateKeyPausedUntil, b.state)
			})
		})
	}
	sem := make(chan struct{}, 32)
	for _, op := range b.dead {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			d.write(ctx, "dead-letter a record", 1, func(c context.Context) error {
				return d.f.store.DeadLetter(c, op.id, op.status, op.reason)
			})
		})
	}
	wg.Wait()
}

// write runs one store write, retrying a failure a few times. Writes are not
// abandoned on a hard stop: a delivered record left undeleted would be sent
// again. If they still fail, the records stay queued and are sent again after
// a restart (at least once).
func (d *dispatcher) write(ctx context.Context, what string, n int, fn func(context.Context) error) {
	const tries = 5
	wait := 50 * time.Millisecond
	for i := 1; ; i++ {
		wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		err := fn(wctx)
		cancel()
		if err == nil {
			return
		}
		if errors.Is(err, spool.ErrNotFound) {
			// Dropped by the spool meanwhile (expired): nothing to do.
			d.f.log.Warn("record no longer queued", "op", what, "error", err)
			return
		}
		if i == tries || ctx.Err() != nil || errors.Is(err, spool.ErrClosed) {
			d.f.log.Error("spool write failed; the records stay queued and will be sent again after a restart",
				"op", what, "records", n, "error", err)
			return
		}
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
		}
		wait *= 2
	}
}
