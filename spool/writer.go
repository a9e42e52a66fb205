package spool

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Bucket and meta key names.
var (
	bucketQueue = []byte("queue")
	bucketDead  = []byte("dead")
	bucketMeta  = []byte("meta")

	keyFormat   = []byte("format")   // one byte: formatV1
	keyCounters = []byte("counters") // counters.encode
	keyClean    = []byte("clean")    // one byte: 1 after Close, 0 while open
)

type opKind uint8

const (
	opAppend opKind = iota + 1
	opDelete
	opDeadLetter
	opRequeue
	opAddAttempt
	opSetState
	opSweep   // drop expired records; the writer's timer and tests send it
	opSalvage // store records read back from a quarantined file (salvage.go)
)

// request is one call waiting for the writer. done has capacity one, so
// the writer never blocks replying.
type request struct {
	op     opKind
	vals   [][]byte // opAppend: encoded, unsealed records; opSetState: the value (nil deletes)
	ids    []uint64
	key    []byte // opSetState
	status int
	reason string
	bytes  int64 // opAppend: stored size of vals, key included
	// opSalvage: the records, in order, and how many the writer stored.
	salvaged []salvaged
	stored   int
	done     chan error
}

// gcReport carries keys that a Read skipped because they were expired or
// did not verify; the writer deletes those that still qualify.
type gcReport struct {
	queue, dead [][]byte
}

func (r *gcReport) add(k []byte, dead bool) {
	if len(r.queue)+len(r.dead) >= maxReport {
		return
	}
	k = append([]byte(nil), k...)
	if dead {
		r.dead = append(r.dead, k)
	} else {
		r.queue = append(r.queue, k)
	}
}

// Writer limits.
const (
	// A batch holds at most this many requests or this many bytes of new
	// records, so one commit's latency and memory stay bounded.
	maxBatchRequests = 4096
	maxBatchBytes    = 8 << 20

	// sweepLimit bounds the deletions of one sweep transaction; a sweep
	// that hits it is followed at once by another.
	sweepLimit       = 10000
	maxSweepInterval = 30 * time.Second

	// Compaction copies the live data while the writer waits, so it only
	// runs when the live data is small.
	compactMaxLive = 32 << 20
	compactRatio   = 4
	// compactTxMaxSize bounds what one copying transaction holds in memory
	// before it commits. Measured compacting ~26 MiB of live records: 16 MiB
	// transactions took the process from 6 to 41 MiB RssAnon (this was the
	// transient peak seen at the end of the soak's drain) in 154 ms; 1 MiB
	// ones peaked at 9-11 MiB in 120 ms.
	compactTxMaxSize = 1 << 20
)

// compactSupported: Windows cannot rename a file over one that is open
// and mapped, so the spool never compacts there.
var compactSupported = runtime.GOOS != "windows"

// errNoChange rolls back a transaction that changed nothing, saving an
// fsync; the writer treats it as success.
var errNoChange = errors.New("no change")

// run is the writer goroutine: the only code that opens write
// transactions. It takes one request, then whatever else is already
// waiting, and commits them together.
func (s *Spool) run() {
	defer s.wg.Done()
	var (
		sweep  *time.Timer
		sweepC <-chan time.Time
	)
	if s.opts.MaxAge > 0 {
		// Sweep once soon after Open: records may have expired while
		// trackd was stopped.
		sweep = time.NewTimer(0)
		defer sweep.Stop()
		sweepC = sweep.C
	}
	batch := make([]*request, 0, 64)
	for {
		select {
		case r := <-s.reqs:
			// Yield once before gathering: the callers woken by the last
			// commit's replies get to queue their next requests, so they
			// share this commit's fsync. (Measured: 64 appending goroutines
			// went from ~32 to ~46 events per commit.)
			runtime.Gosched()
			batch = s.gather(append(batch[:0], r), r.bytes)
			s.commit(batch, nil)
			clear(batch)
		case rep := <-s.gc:
			s.commit(nil, &rep)
		case <-sweepC:
			r := &request{op: opSweep, done: make(chan error, 1)}
			next := s.sweepInterval()
			if s.commit([]*request{r}, nil) {
				next = 0 // the sweep hit its limit: go on at once
			}
			sweep.Reset(next)
		case <-s.closing:
			for {
				batch = s.gather(batch[:0], 0)
				if len(batch) == 0 {
					break
				}
				s.commit(batch, nil)
				clear(batch)
			}
			s.writerErr = s.closeDB()
			return
		}
	}
}

// sweepInterval is min(MaxAge/10, 30s), and at least 100ms.
func (s *Spool) sweepInterval() time.Duration {
	return min(max(s.opts.MaxAge/10, 100*time.Millisecond), maxSweepInterval)
}

// gather appends the requests that are already waiting, without blocking,
// up to the batch limits.
func (s *Spool) gather(batch []*request, size int64) []*request {
	for len(batch) < maxBatchRequests && size < maxBatchBytes {
		select {
		case r := <-s.reqs:
			batch = append(batch, r)
			size += r.bytes
		default:
			return batch
		}
	}
	return batch
}

// txn is the state of one write transaction: the buckets, a working copy
// of the counters and what happened, published only if the commit succeeds.
type txn struct {
	s             *Spool
	tx            *bolt.Tx
	q, dead, meta *bolt.Bucket
	c             counters
	dirty         bool

	appended, deleted, deadLettered, requeued   uint64
	salvaged                                    uint64
	droppedExpired, droppedFull, droppedCorrupt uint64
	droppedFullBytes                            int64

	added     bool  // new queued records: signal Notify
	fullState int8  // +1: an Append was rejected for space; -1: space was freed or taken
	more      bool  // the sweep hit its limit
	oldest    int64 // Received of the queue head, 0 if empty
	size      int64 // bytes of the file bbolt uses (high water mark)
}

func (s *Spool) newTxn(tx *bolt.Tx) *txn {
	t := &txn{
		s:    s,
		tx:   tx,
		q:    tx.Bucket(bucketQueue),
		dead: tx.Bucket(bucketDead),
		meta: tx.Bucket(bucketMeta),
		c:    s.c,
	}
	// IDs only grow, so the queue is append-only: fill pages completely.
	t.q.FillPercent = 1.0
	return t
}

// commit applies batch (and a Read's report) in one transaction and
// replies to each request with its own result. If the commit fails, every
// request gets that error. It reports whether a sweep stopped at its limit.
func (s *Spool) commit(batch []*request, rep *gcReport) (sweepMore bool) {
	if s.corrupt.Load() {
		for _, r := range batch {
			r.done <- ErrCorrupt
		}
		return false
	}
	results := make([]error, len(batch))
	var t *txn
	err := s.update(func(tx *bolt.Tx) error {
		t = s.newTxn(tx)
		if rep != nil {
			if err := t.collect(rep); err != nil {
				return err
			}
		}
		for i, r := range batch {
			res, err := t.apply(r)
			if err != nil {
				return err
			}
			results[i] = res
		}
		return t.finish()
	})
	committed := err == nil
	if errors.Is(err, errNoChange) {
		err = nil
	}
	if err != nil {
		err = fmt.Errorf("commit: %w", err)
		s.mu.Lock()
		first := s.lastErr == nil
		s.lastErr = err
		s.mu.Unlock()
		if first {
			s.log.Error("spool commit failed; requests fail until a commit succeeds", "path", s.path, "error", err)
		}
		for _, r := range batch {
			r.done <- err
		}
		return false
	}
	if !committed {
		// Nothing changed, but a rejection still means the spool is full.
		if t != nil && t.fullState > 0 {
			s.mu.Lock()
			s.full = true
			s.mu.Unlock()
		}
		for i, r := range batch {
			r.done <- results[i]
		}
		return false
	}
	// Logged before the effects show in Stats and before the replies, so
	// that whoever sees a drop also finds it in the log.
	if t.droppedFull > 0 {
		s.log.Warn("spool full: dropped the oldest records to make room", "path", s.path,
			"records", t.droppedFull, "bytes", t.droppedFullBytes, "max_bytes", s.opts.MaxBytes, "spool_depth", t.c.queued)
	}
	if t.droppedExpired > 0 {
		s.log.Warn("dropped expired records from the spool", "path", s.path,
			"records", t.droppedExpired, "max_age", s.opts.MaxAge, "spool_depth", t.c.queued)
	}
	if t.droppedCorrupt > 0 {
		s.log.Error("dropped spool records that failed their checksum", "path", s.path, "records", t.droppedCorrupt)
	}
	s.publish(t)
	if t.added {
		// Before the replies, so a caller sees the signal once Append returns.
		select {
		case s.notify <- struct{}{}:
		default:
		}
	}
	for i, r := range batch {
		r.done <- results[i]
	}
	s.maybeCompact(t.size)
	s.prezero(t.size)
	return t.more
}

// publish makes a committed transaction's effects visible to Stats and
// Accepting.
func (s *Spool) publish(t *txn) {
	s.c = t.c
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.lastErr != nil {
		s.log.Info("spool commits succeed again", "path", s.path)
		s.lastErr = nil
	}
	s.st.Queued, s.st.QueuedBytes = t.c.queued, t.c.queuedBytes
	s.st.Dead, s.st.DeadBytes = t.c.dead, t.c.deadBytes
	s.st.Oldest = time.Time{}
	if t.oldest != 0 {
		s.st.Oldest = fromNanos(t.oldest)
	}
	s.st.Appended += t.appended
	s.st.Deleted += t.deleted
	s.st.DeadLettered += t.deadLettered
	s.st.Requeued += t.requeued
	s.st.DroppedExpired += t.droppedExpired
	s.st.DroppedFull += t.droppedFull
	s.st.DroppedCorrupt += t.droppedCorrupt
	s.st.Salvaged += t.salvaged
	s.st.Commits++
	switch {
	case t.fullState > 0:
		s.full = true
	case t.fullState < 0:
		s.full = false
	}
}

// update runs fn in a write transaction. A panic or memory fault inside
// bbolt (a damaged page) is turned into ErrCorrupt instead of crashing the
// process, and writes stop.
func (s *Spool) update(fn func(*bolt.Tx) error) error {
	err := safeUpdate(s.db, fn)
	var pe *panicError
	if errors.As(err, &pe) {
		if pe.stuck {
			s.stuck = true
		}
		return s.markCorrupt(pe.v)
	}
	return err
}

// panicError is a panic recovered from bbolt during a transaction.
type panicError struct {
	v any
	// stuck: rolling back panicked too, so bbolt may still hold its write
	// lock and the database must not be closed (Close would wait forever).
	stuck bool
}

func (p *panicError) Error() string { return fmt.Sprintf("bbolt panicked: %v", p.v) }

// safeUpdate is db.Update with panics recovered. db.Update answers a panic
// with a rollback that, without a stored freelist, rebuilds the freelist by
// walking the whole file in a goroutine that panics on damage; the
// plain Rollback used here does not walk.
func safeUpdate(db *bolt.DB, fn func(*bolt.Tx) error) (err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	tx, err := db.Begin(true)
	if err != nil {
		return err
	}
	defer func() {
		if p := recover(); p != nil {
			pe := &panicError{v: p}
			func() {
				defer func() {
					if recover() != nil {
						pe.stuck = true
					}
				}()
				_ = tx.Rollback()
			}()
			err = pe
		}
	}()
	if err := fn(tx); err != nil {
		_ = tx.Rollback()
		return err
	}
	return tx.Commit()
}

// apply performs one request. res is the request's own result (ErrFull,
// ErrNotFound); err aborts the whole transaction.
func (t *txn) apply(r *request) (res, err error) {
	switch r.op {
	case opAppend:
		return t.append(r)
	case opDelete:
		for _, id := range r.ids {
			k := encodeKey(id)
			v := t.q.Get(k)
			if v == nil {
				if t.reachableByIteration(k) {
					// Lookup and iteration disagree: a branch page's key is
					// damaged. Ignoring the miss would leave the record queued
					// and sent again forever; stopping lets Open's full check
					// deal with the file.
					return nil, t.s.markCorrupt(fmt.Sprintf("queue record %d is found by iterating but not by lookup (a damaged branch page)", id))
				}
				continue
			}
			if err := t.deleteQueued(k, len(v)); err != nil {
				return nil, err
			}
			t.deleted++
		}
		return nil, nil
	case opDeadLetter:
		return t.deadLetter(r.ids[0], r.status, r.reason)
	case opRequeue:
		return nil, t.requeue(r.ids)
	case opAddAttempt:
		return nil, t.addAttempt(r.ids)
	case opSetState:
		t.dirty = true
		if r.vals == nil {
			return nil, t.meta.Delete(r.key)
		}
		return nil, t.meta.Put(r.key, r.vals[0])
	case opSweep:
		return nil, t.sweep(sweepLimit)
	case opSalvage:
		return t.restore(r)
	}
	return nil, fmt.Errorf("unknown request %d", r.op)
}

func (t *txn) append(r *request) (res, err error) {
	limit := t.s.opts.MaxBytes
	if limit > 0 && t.c.used()+r.bytes > limit {
		if t.s.opts.WhenFull == Reject {
			t.fullState = 1
			return fmt.Errorf("%d bytes do not fit: %d of %d bytes in use and the policy is %s: %w",
				r.bytes, t.c.used(), limit, Reject, ErrFull), nil
		}
		if err := t.dropOldest(limit - r.bytes); err != nil {
			return nil, err
		}
	}
	for _, v := range r.vals {
		seq, err := t.q.NextSequence()
		if err != nil {
			return nil, err
		}
		k := encodeKey(seq)
		sealRecord(k, v)
		if err := t.q.Put(k, v); err != nil {
			return nil, err
		}
		t.c.queued++
		t.c.queuedBytes += int64(keySize + len(v))
	}
	t.appended += uint64(len(r.vals))
	t.added = true
	t.dirty = true
	t.fullState = -1
	return nil, nil
}

// dropOldest deletes queued records from the head, then dead letters once
// the queue is empty, until at most target bytes are in use.
func (t *txn) dropOldest(target int64) error {
	for _, b := range []*bolt.Bucket{t.q, t.dead} {
		c := b.Cursor()
		for t.c.used() > target {
			k, v := c.First()
			if k == nil {
				break
			}
			n := keySize + len(v)
			var err error
			if b == t.q {
				err = t.deleteQueued(k, len(v))
			} else {
				err = t.deleteDead(k, len(v))
			}
			if err != nil {
				return err
			}
			t.droppedFull++
			t.droppedFullBytes += int64(n)
		}
	}
	return nil
}

func (t *txn) deleteQueued(k []byte, vlen int) error {
	return t.deleteFrom(t.q, &t.c.queued, &t.c.queuedBytes, k, vlen)
}

func (t *txn) deleteDead(k []byte, vlen int) error {
	return t.deleteFrom(t.dead, &t.c.dead, &t.c.deadBytes, k, vlen)
}

// maxMissScan bounds the iteration reachableByIteration does on a missed
// delete. Misses are normally records a policy dropped, near the queue's head.
const maxMissScan = 100000

// reachableByIteration reports whether key k is in the queue when walked in
// order from its head, which does not use branch keys the way a lookup does.
func (t *txn) reachableByIteration(k []byte) bool {
	c := t.q.Cursor()
	n := 0
	for key, _ := c.First(); key != nil && n < maxMissScan; key, _ = c.Next() {
		switch bytes.Compare(key, k) {
		case 0:
			return true
		case 1:
			return false
		}
		n++
	}
	return false
}

// deleteFrom deletes k from b and takes it off b's counters.
func (t *txn) deleteFrom(b *bolt.Bucket, count, bytes *int64, k []byte, vlen int) error {
	if err := b.Delete(k); err != nil {
		return err
	}
	*count--
	*bytes -= int64(keySize + vlen)
	t.dirty = true
	t.fullState = -1
	return nil
}

func (t *txn) deadLetter(id uint64, status int, reason string) (res, err error) {
	k := encodeKey(id)
	v := t.q.Get(k)
	if v == nil {
		return fmt.Errorf("record %d is not queued: %w", id, ErrNotFound), nil
	}
	rec, derr := decodeRecord(k, v)
	if derr != nil {
		if err := t.deleteQueued(k, len(v)); err != nil {
			return nil, err
		}
		t.droppedCorrupt++
		return fmt.Errorf("record %d failed its checksum and was dropped (%v): %w", id, derr, ErrNotFound), nil
	}
	dv := encodeDead(rec, status, reason, t.s.opts.Now())
	if err := t.dead.Put(k, dv); err != nil {
		return nil, err
	}
	if err := t.deleteQueued(k, len(v)); err != nil {
		return nil, err
	}
	t.c.dead++
	t.c.deadBytes += int64(keySize + len(dv))
	t.deadLettered++
	return nil, nil
}

func (t *txn) requeue(ids []uint64) error {
	for _, id := range ids {
		k := encodeKey(id)
		dv := t.dead.Get(k)
		if dv == nil {
			continue
		}
		d, derr := decodeDead(k, dv)
		if err := t.deleteDead(k, len(dv)); err != nil {
			return err
		}
		if derr != nil {
			t.droppedCorrupt++
			continue
		}
		seq, err := t.q.NextSequence()
		if err != nil {
			return err
		}
		nk := encodeKey(seq)
		v := encodeRecord(d.Kind, 0, unixNanos(d.Received), d.Body)
		sealRecord(nk, v)
		if err := t.q.Put(nk, v); err != nil {
			return err
		}
		t.c.queued++
		t.c.queuedBytes += int64(keySize + len(v))
		t.requeued++
		t.added = true
	}
	return nil
}

func (t *txn) addAttempt(ids []uint64) error {
	for _, id := range ids {
		k := encodeKey(id)
		v := t.q.Get(k)
		if v == nil {
			continue
		}
		h, err := verifyRecord(k, v)
		if err != nil {
			if err := t.deleteQueued(k, len(v)); err != nil {
				return err
			}
			t.droppedCorrupt++
			continue
		}
		if h.attempts == ^uint32(0) {
			continue
		}
		nv := append([]byte(nil), v...)
		binary.BigEndian.PutUint32(nv[2:], h.attempts+1)
		sealRecord(k, nv)
		if err := t.q.Put(k, nv); err != nil {
			return err
		}
		t.dirty = true
	}
	return nil
}

// collect deletes the records a Read reported, if they are still there and
// still expired or damaged.
func (t *txn) collect(rep *gcReport) error {
	cutoff, expires := t.s.cutoff()
	for _, k := range rep.queue {
		v := t.q.Get(k)
		if v == nil {
			continue
		}
		h, err := verifyRecord(k, v)
		switch {
		case err != nil:
			t.droppedCorrupt++
		case expires && h.received < cutoff:
			t.droppedExpired++
		default:
			continue
		}
		if err := t.deleteQueued(k, len(v)); err != nil {
			return err
		}
	}
	for _, k := range rep.dead {
		v := t.dead.Get(k)
		if v == nil {
			continue
		}
		d, err := decodeDead(k, v)
		switch {
		case err != nil:
			t.droppedCorrupt++
		case expires && unixNanos(d.Received) < cutoff:
			t.droppedExpired++
		default:
			continue
		}
		if err := t.deleteDead(k, len(v)); err != nil {
			return err
		}
	}
	return nil
}

// sweep deletes expired records from the head of the queue and of the
// dead letters, at most limit of them. Records are appended in Received
// order, so it stops at the first one that is not expired; the few that
// are out of order (requeued ones) are found by Read and reported.
func (t *txn) sweep(limit int) error {
	cutoff, expires := t.s.cutoff()
	if !expires {
		return nil
	}
	n := 0
	for _, b := range []*bolt.Bucket{t.q, t.dead} {
		c := b.Cursor()
		for {
			k, v := c.First()
			if k == nil {
				break
			}
			var (
				received int64
				err      error
			)
			if b == t.q {
				var h recordHead
				h, err = decodeRecordHead(v)
				received = h.received
			} else {
				received, err = decodeDeadReceived(v)
			}
			if err == nil && received >= cutoff {
				break
			}
			if n == limit {
				t.more = true
				return nil
			}
			if err != nil {
				t.droppedCorrupt++
			} else {
				t.droppedExpired++
			}
			if b == t.q {
				err = t.deleteQueued(k, len(v))
			} else {
				err = t.deleteDead(k, len(v))
			}
			if err != nil {
				return err
			}
			n++
		}
	}
	return nil
}

// finish stores the counters and notes the queue head, or rolls back a
// transaction that changed nothing.
func (t *txn) finish() error {
	if !t.dirty {
		return errNoChange
	}
	if f := t.s.opts.failCommit; f != nil {
		if err := f(); err != nil {
			return err
		}
	}
	if err := t.meta.Put(keyCounters, t.c.encode()); err != nil {
		return err
	}
	if _, v := t.q.Cursor().First(); v != nil {
		if h, err := decodeRecordHead(v); err == nil {
			t.oldest = h.received
		}
	}
	t.size = t.tx.Size()
	return nil
}

// closeDB marks a clean shutdown and closes the file. The last commit also
// writes bbolt's freelist, so the next Open need not rebuild it by scanning
// the whole file.
func (s *Spool) closeDB() error {
	var errs []error
	if !s.corrupt.Load() {
		s.db.NoFreelistSync = false
		if err := s.update(func(tx *bolt.Tx) error {
			return tx.Bucket(bucketMeta).Put(keyClean, []byte{1})
		}); err != nil {
			errs = append(errs, fmt.Errorf("mark clean shutdown: %w", err))
		}
	}
	s.dbMu.Lock()
	if s.stuck {
		errs = append(errs, errors.New("left open: a transaction could not be rolled back after bbolt panicked"))
	} else if err := s.db.Close(); err != nil {
		errs = append(errs, err)
	}
	s.db = nil
	s.dbMu.Unlock()
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("close spool %s: %w", s.path, err)
	}
	return nil
}

// maybeCompact compacts the file when bbolt uses much more of it than the
// live records need, the live records are few, and the last attempt was
// long enough ago.
func (s *Spool) maybeCompact(used int64) {
	live := s.c.used()
	if !compactSupported || used < s.opts.CompactMinBytes || used <= compactRatio*live || live > compactMaxLive {
		return
	}
	if !s.lastCompact.IsZero() && time.Since(s.lastCompact) < s.opts.compactInterval {
		return
	}
	s.lastCompact = time.Now()
	before := fileSize(s.path)
	if err := s.compact(); err != nil {
		s.log.Warn("spool compaction failed; the file is left as it was", "path", s.path, "error", err)
		return
	}
	s.zeroedEnd = 0 // a new file: zero-fill ahead of its own high-water mark
	s.mu.Lock()
	s.st.Compactions++
	s.mu.Unlock()
	s.log.Info("spool compacted", "path", s.path, "bytes_before", before, "bytes_after", fileSize(s.path),
		"took", time.Since(s.lastCompact).Round(time.Millisecond))
}

// compact copies the live data into <path>.compact, fsyncs it, renames it
// over path, fsyncs the directory and swaps it in as the open database.
// The copy is opened (and so locked) before the rename, so the path is
// never unlocked. On failure the original is left in place.
func (s *Spool) compact() (err error) {
	tmp := s.path + ".compact"
	if err := os.Remove(tmp); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove stale %s: %w", tmp, err)
	}
	dst, err := s.openBolt(tmp, nil)
	if err != nil {
		return fmt.Errorf("create %s: %w", tmp, err)
	}
	swapped := false
	defer func() {
		if !swapped {
			_ = dst.Close()
			_ = os.Remove(tmp)
		}
	}()
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if p := recover(); p != nil {
			err = s.markCorrupt(p)
		}
	}()
	// The copy is fsynced once at the end rather than per transaction.
	dst.NoSync = true
	if err := bolt.Compact(dst, s.db, compactTxMaxSize); err != nil {
		return fmt.Errorf("copy live data to %s: %w", tmp, err)
	}
	dst.NoSync = false
	if err := dst.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", tmp, err)
	}
	s.dbMu.Lock()
	defer s.dbMu.Unlock()
	if err := os.Rename(tmp, s.path); err != nil {
		return fmt.Errorf("rename %s: %w", tmp, err)
	}
	swapped = true
	old := s.db
	s.db = dst
	if err := old.Close(); err != nil {
		s.log.Warn("closing the spool file replaced by compaction failed", "path", s.path, "error", err)
	}
	// New writes go only to the new file, so the rename must be durable
	// before the writer takes another request.
	if err := syncDir(filepath.Dir(s.path)); err != nil {
		return fmt.Errorf("compacted, but syncing the directory failed: %w", err)
	}
	return nil
}

func fileSize(path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return fi.Size()
}
