package spool

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Kind says what an event is. It is stored in every record's header.
type Kind uint8

// The kinds of event trackd accepts.
const (
	KindTrack    Kind = 1
	KindIdentify Kind = 2
)

// String returns "track" or "identify", or "kind(N)" for anything else.
func (k Kind) String() string {
	switch k {
	case KindTrack:
		return "track"
	case KindIdentify:
		return "identify"
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

func (k Kind) valid() bool { return k == KindTrack || k == KindIdentify }

// Policy says what Append does when the spool has reached Options.MaxBytes.
type Policy int

const (
	// Reject fails the Append with ErrFull and leaves stored data alone.
	Reject Policy = iota
	// DropOldest deletes the oldest queued records (then the oldest dead
	// letters, once the queue is empty) until the new entries fit.
	DropOldest
)

// String returns "reject" or "drop_oldest".
func (p Policy) String() string {
	switch p {
	case Reject:
		return "reject"
	case DropOldest:
		return "drop_oldest"
	}
	return fmt.Sprintf("policy(%d)", int(p))
}

// Options configure Open. Only Path is required.
type Options struct {
	// Path of the bbolt file. Its parent directory is created with mode 0700
	// if missing; the file is created with mode 0600.
	Path string

	// MaxBytes caps the stored record bytes (queued records and dead
	// letters, key plus value). 0 means unlimited.
	MaxBytes int64

	// MaxAge drops records (queued or dead) whose Received is older than
	// this; Read never returns them. 0 means unlimited.
	MaxAge time.Duration

	// WhenFull is what Append does when MaxBytes is reached.
	WhenFull Policy

	// LockTimeout bounds the wait for another process's lock on Path.
	// Default 2s.
	LockTimeout time.Duration

	// Logger receives state changes and summaries. Default slog.Default().
	Logger *slog.Logger

	// Now is the clock for Received defaults, expiry and DeadAt. Default
	// time.Now.
	Now func() time.Time

	// CompactMinBytes: files whose used size is below this are never
	// compacted. Default 64 MiB.
	CompactMinBytes int64

	// compactInterval is the least time between two compaction attempts.
	// Default one minute; tests lower it.
	compactInterval time.Duration

	// tune overrides bbolt tuning; benchmarks use it to compare settings.
	tune *tuning

	// failCommit, if set, is called at the end of every write transaction;
	// an error it returns fails the commit. Tests use it to inject faults.
	failCommit func() error
}

// tuning holds the bbolt settings the spool chooses. See defaultTuning.
type tuning struct {
	noFreelistSync  bool
	freelistType    bolt.FreelistType
	allocSize       int
	initialMmapSize int
}

const (
	defaultLockTimeout     = 2 * time.Second
	defaultCompactMinBytes = 64 << 20
	defaultCompactInterval = time.Minute
)

func (o Options) withDefaults() Options {
	if o.LockTimeout <= 0 {
		o.LockTimeout = defaultLockTimeout
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.CompactMinBytes <= 0 {
		o.CompactMinBytes = defaultCompactMinBytes
	}
	if o.compactInterval == 0 {
		o.compactInterval = defaultCompactInterval
	}
	if o.tune == nil {
		t := defaultTuning()
		o.tune = &t
	}
	return o
}

// Entry is one event to append.
type Entry struct {
	Kind Kind
	Body []byte
	// Received is when trackd accepted the event; MaxAge counts from it.
	// The zero time means Options.Now() at Append.
	Received time.Time
}

// Record is a queued entry as Read returns it.
type Record struct {
	ID       uint64
	Kind     Kind
	Body     []byte
	Received time.Time
	Attempts uint32
}

// DeadLetter is a record the forwarder gave up on, with why and when.
type DeadLetter struct {
	Record
	Status int
	Reason string
	DeadAt time.Time
}

// Stats is a snapshot of the spool's gauges and counters.
type Stats struct {
	Queued, QueuedBytes, Dead, DeadBytes int64
	// Oldest is the Received of the record at the head of the queue (the
	// lowest ID); zero when the queue is empty.
	Oldest time.Time
	// FileBytes is the size of the file on disk.
	FileBytes int64

	// Counted since Open.
	Appended, Deleted, DeadLettered, Requeued, DroppedExpired, DroppedFull, Compactions, Commits uint64
	// DroppedCorrupt counts records deleted because their checksum or
	// header did not verify (bit rot, or a torn write found after a crash).
	DroppedCorrupt uint64

	// Quarantined is the path the file was moved to at Open because it was
	// unreadable; "" otherwise.
	Quarantined string
	// Salvaged counts the records (queued and dead letters) that Open
	// carried over from the quarantined file into the fresh spool.
	Salvaged uint64
}

// Errors returned by the spool. Callers compare with errors.Is; the
// returned errors wrap these with the operation and the path.
var (
	// ErrFull: the entries do not fit under MaxBytes and WhenFull is Reject.
	ErrFull = errors.New("spool: full")
	// ErrClosed: the spool was closed.
	ErrClosed = errors.New("spool: closed")
	// ErrLocked: another process holds the file's lock.
	ErrLocked = errors.New("spool: locked")
	// ErrTooLarge: an entry (or one Append's entries together) can never
	// fit under MaxBytes, or a body exceeds 1 GiB.
	ErrTooLarge = errors.New("spool: entry too large")
	// ErrNotFound: DeadLetter was given an ID that is not queued.
	ErrNotFound = errors.New("spool: record not found")
	// ErrCorrupt: bbolt failed on a damaged page while the spool was
	// running. Writes stop; the next Open checks the file and quarantines
	// it if needed.
	ErrCorrupt = errors.New("spool: file is corrupt")
)

// Spool is a durable FIFO of events on a single bbolt file. It is safe for
// concurrent use. See the package documentation.
type Spool struct {
	opts Options
	path string
	log  *slog.Logger

	reqs    chan *request  // to the writer; unbuffered, so "taken" means received
	gc      chan gcReport  // Read reports expired and corrupt records here
	notify  chan struct{}  // cap 1
	closing chan struct{}  // closed by Close
	damaged chan struct{}  // closed when corrupt is first set
	wg      sync.WaitGroup // the writer

	closeOnce sync.Once
	closeErr  error

	// dbMu guards db against the writer's swaps (compaction) and Close.
	// Read-only transactions hold it shared.
	dbMu sync.RWMutex
	db   *bolt.DB

	corrupt atomic.Bool // a bbolt panic was recovered; writes stop

	mu      sync.Mutex // guards the fields below
	st      Stats      // gauges and counters; FileBytes is filled in by Stats
	lastErr error      // the last commit's error, nil after a success
	full    bool       // an Append was rejected for space and nothing was freed since

	// Owned by the writer goroutine.
	c           counters
	lastCompact time.Time
	writerErr   error // the result of the final commit and close, for Close
	stuck       bool  // see panicError
	zeroedEnd   int64 // end of the zero-filled space above bbolt's pages (prezero.go)
	prezeroOff  bool  // zero-filling failed once and is not tried again
}

// Open opens or creates the spool at opts.Path. A file that cannot be read
// is moved aside and a fresh spool started (see Stats.Quarantined); a file
// locked by another process fails with an error wrapping ErrLocked.
func Open(opts Options) (*Spool, error) {
	if opts.Path == "" {
		return nil, errors.New("open spool: no path given")
	}
	opts = opts.withDefaults()
	s := &Spool{
		opts:    opts,
		path:    opts.Path,
		log:     opts.Logger,
		reqs:    make(chan *request),
		gc:      make(chan gcReport, 1),
		notify:  make(chan struct{}, 1),
		closing: make(chan struct{}),
		damaged: make(chan struct{}),
	}
	if err := s.open(); err != nil {
		return nil, err
	}
	if s.st.Quarantined != "" {
		s.salvage(s.st.Quarantined)
	}
	s.wg.Add(1)
	go s.run()
	return s, nil
}

// Path returns the spool file's path.
func (s *Spool) Path() string { return s.path }

// Append stores entries as new queued records, in order, and returns once
// the transaction holding them is committed and fsynced. Either all entries
// are stored or none.
func (s *Spool) Append(ctx context.Context, entries ...Entry) error {
	if len(entries) == 0 {
		return nil
	}
	r, err := s.appendRequest(entries)
	if err == nil {
		err = s.do(ctx, r)
	}
	if err != nil {
		return fmt.Errorf("append to spool %s: %w", s.path, err)
	}
	return nil
}

// appendRequest checks and encodes entries in the caller's goroutine, so
// the writer only assigns IDs, checksums and stores them.
func (s *Spool) appendRequest(entries []Entry) (*request, error) {
	r := &request{op: opAppend, vals: make([][]byte, len(entries))}
	now := int64(0)
	for i, e := range entries {
		if !e.Kind.valid() {
			return nil, fmt.Errorf("entry %d has unknown kind %d", i, uint8(e.Kind))
		}
		size := int64(keySize + recordHeader + len(e.Body))
		if len(e.Body) > maxBodyBytes || (s.opts.MaxBytes > 0 && size > s.opts.MaxBytes) {
			return nil, fmt.Errorf("entry %d needs %d bytes, more than the spool holds (max_bytes %d): %w",
				i, size, s.opts.MaxBytes, ErrTooLarge)
		}
		received := unixNanos(e.Received)
		if e.Received.IsZero() {
			if now == 0 {
				now = unixNanos(s.opts.Now())
			}
			received = now
		}
		r.vals[i] = encodeRecord(e.Kind, 0, received, e.Body)
		r.bytes += size
	}
	if s.opts.MaxBytes > 0 && r.bytes > s.opts.MaxBytes {
		return nil, fmt.Errorf("%d entries need %d bytes together, more than the spool holds (max_bytes %d): %w",
			len(entries), r.bytes, s.opts.MaxBytes, ErrTooLarge)
	}
	return r, nil
}

// Delete removes queued records, typically after delivery. IDs that are
// not queued are ignored.
func (s *Spool) Delete(ctx context.Context, ids ...uint64) error {
	if len(ids) == 0 {
		return nil
	}
	if err := s.do(ctx, &request{op: opDelete, ids: ids}); err != nil {
		return fmt.Errorf("delete from spool %s: %w", s.path, err)
	}
	return nil
}

// DeadLetter moves a queued record to the dead letters with the upstream
// status and reason (truncated to 1 KiB). It fails with ErrNotFound if
// id is not queued.
func (s *Spool) DeadLetter(ctx context.Context, id uint64, status int, reason string) error {
	if err := s.do(ctx, &request{op: opDeadLetter, ids: []uint64{id}, status: status, reason: reason}); err != nil {
		return fmt.Errorf("dead-letter record %d in spool %s: %w", id, s.path, err)
	}
	return nil
}

// Requeue moves dead letters back to the end of the queue under new IDs,
// with Attempts reset to 0 and Received kept. IDs that are not dead letters
// are ignored.
func (s *Spool) Requeue(ctx context.Context, ids ...uint64) error {
	if len(ids) == 0 {
		return nil
	}
	if err := s.do(ctx, &request{op: opRequeue, ids: ids}); err != nil {
		return fmt.Errorf("requeue in spool %s: %w", s.path, err)
	}
	return nil
}

// AddAttempt increments the Attempts of queued records. IDs that are not
// queued are ignored.
func (s *Spool) AddAttempt(ctx context.Context, ids ...uint64) error {
	if len(ids) == 0 {
		return nil
	}
	if err := s.do(ctx, &request{op: opAddAttempt, ids: ids}); err != nil {
		return fmt.Errorf("count attempt in spool %s: %w", s.path, err)
	}
	return nil
}

// Limits of SetState.
const (
	maxStateKey   = 128
	maxStateValue = 64 << 10
	statePrefix   = "state:"
)

// SetState durably stores a small value (at most 64 KiB) under key (1 to
// 128 bytes); a nil value deletes the key.
func (s *Spool) SetState(ctx context.Context, key string, value []byte) error {
	if key == "" || len(key) > maxStateKey {
		return fmt.Errorf("set state %q in spool %s: key must be 1 to %d bytes", key, s.path, maxStateKey)
	}
	if len(value) > maxStateValue {
		return fmt.Errorf("set state %q in spool %s: value is %d bytes, at most %d allowed", key, s.path, len(value), maxStateValue)
	}
	r := &request{op: opSetState, key: []byte(statePrefix + key)}
	if value != nil {
		r.vals = [][]byte{append([]byte{}, value...)}
	}
	if err := s.do(ctx, r); err != nil {
		return fmt.Errorf("set state %q in spool %s: %w", key, s.path, err)
	}
	return nil
}

// State returns the value SetState stored under key, or nil if none.
func (s *Spool) State(key string) ([]byte, error) {
	var v []byte
	err := s.view(func(tx *bolt.Tx) error {
		if b := tx.Bucket(bucketMeta).Get([]byte(statePrefix + key)); b != nil {
			v = append([]byte{}, b...)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read state %q from spool %s: %w", key, s.path, err)
	}
	return v, nil
}

// maxReport bounds how many expired or corrupt IDs one Read reports to the
// writer for deletion; the rest are found by a later Read or sweep.
const maxReport = 4096

// Read returns up to n queued records with ID > after, in ascending ID
// order, skipping expired records and records that fail their checksum
// (the writer then deletes those). Bodies are copies the caller owns. It
// runs in a read-only transaction, concurrently with the writer.
func (s *Spool) Read(after uint64, n int) ([]Record, error) {
	if n <= 0 || after == math.MaxUint64 {
		return nil, nil
	}
	cutoff, expires := s.cutoff()
	var (
		out []Record
		rep gcReport
	)
	err := s.view(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketQueue).Cursor()
		for k, v := c.Seek(encodeKey(after + 1)); k != nil && len(out) < n; k, v = c.Next() {
			if expires {
				if h, err := decodeRecordHead(v); err == nil && h.received < cutoff {
					rep.add(k, false)
					continue
				}
			}
			r, err := decodeRecord(k, v)
			if err != nil {
				rep.add(k, false)
				continue
			}
			out = append(out, r)
		}
		return nil
	})
	s.report(rep)
	if err != nil {
		return nil, fmt.Errorf("read from spool %s: %w", s.path, err)
	}
	return out, nil
}

// ReadDead returns up to n dead letters with ID > after, in ascending ID
// order, skipping expired ones.
func (s *Spool) ReadDead(after uint64, n int) ([]DeadLetter, error) {
	if n <= 0 || after == math.MaxUint64 {
		return nil, nil
	}
	cutoff, expires := s.cutoff()
	var (
		out []DeadLetter
		rep gcReport
	)
	err := s.view(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketDead).Cursor()
		for k, v := c.Seek(encodeKey(after + 1)); k != nil && len(out) < n; k, v = c.Next() {
			if expires {
				if rcv, err := decodeDeadReceived(v); err == nil && rcv < cutoff {
					rep.add(k, true)
					continue
				}
			}
			d, err := decodeDead(k, v)
			if err != nil {
				rep.add(k, true)
				continue
			}
			out = append(out, d)
		}
		return nil
	})
	s.report(rep)
	if err != nil {
		return nil, fmt.Errorf("read dead letters from spool %s: %w", s.path, err)
	}
	return out, nil
}

// cutoff returns the Received (unix nanos) below which records are expired,
// and whether MaxAge is set at all.
func (s *Spool) cutoff() (int64, bool) {
	if s.opts.MaxAge <= 0 {
		return 0, false
	}
	return unixNanos(s.opts.Now().Add(-s.opts.MaxAge)), true
}

// report hands expired and corrupt IDs to the writer without waiting; if
// the writer is busy the report is dropped and a later Read finds them again.
func (s *Spool) report(r gcReport) {
	if len(r.queue) == 0 && len(r.dead) == 0 {
		return
	}
	select {
	case s.gc <- r:
	default:
	}
}

// Notify returns a channel that receives a value after every commit that
// added queued records. It has capacity one, so a waiter that was busy
// still sees that something happened.
func (s *Spool) Notify() <-chan struct{} { return s.notify }

// Accepting reports whether an Append would be attempted now: ErrClosed
// after Close, ErrFull when full under Reject, ErrCorrupt after a recovered
// bbolt failure, or the last commit's error until a commit succeeds.
func (s *Spool) Accepting() error {
	select {
	case <-s.closing:
		return fmt.Errorf("spool %s: %w", s.path, ErrClosed)
	default:
	}
	if s.corrupt.Load() {
		return fmt.Errorf("spool %s: %w", s.path, ErrCorrupt)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.lastErr != nil {
		return fmt.Errorf("spool %s: last commit failed: %w", s.path, s.lastErr)
	}
	if s.opts.MaxBytes > 0 && s.opts.WhenFull == Reject &&
		(s.full || s.st.QueuedBytes+s.st.DeadBytes >= s.opts.MaxBytes) {
		return fmt.Errorf("spool %s holds %d of %d bytes: %w", s.path, s.st.QueuedBytes+s.st.DeadBytes, s.opts.MaxBytes, ErrFull)
	}
	return nil
}

// Stats returns a snapshot of the gauges and counters.
func (s *Spool) Stats() Stats {
	s.mu.Lock()
	st := s.st
	s.mu.Unlock()
	if fi, err := os.Stat(s.path); err == nil {
		st.FileBytes = fi.Size()
	}
	return st
}

// Close stops accepting requests, lets the writer finish those it already
// took, marks the file as cleanly shut down and closes it. It is idempotent;
// every call returns the first call's result.
func (s *Spool) Close() error {
	s.closeOnce.Do(func() {
		close(s.closing)
		s.wg.Wait()
		s.closeErr = s.writerErr
	})
	return s.closeErr
}

// do hands r to the writer and waits for its result. If ctx ends before the
// writer takes r, it returns ctx.Err(); once taken, it waits for the result.
func (s *Spool) do(ctx context.Context, r *request) error {
	select {
	case <-s.closing:
		return ErrClosed
	default:
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	r.done = make(chan error, 1)
	select {
	case s.reqs <- r:
	case <-ctx.Done():
		return ctx.Err()
	case <-s.closing:
		return ErrClosed
	}
	return <-r.done
}

// view runs fn in a read-only transaction. A panic or memory fault inside
// bbolt (a damaged page) is turned into ErrCorrupt instead of crashing.
func (s *Spool) view(fn func(*bolt.Tx) error) (err error) {
	s.dbMu.RLock()
	defer s.dbMu.RUnlock()
	if s.db == nil {
		return ErrClosed
	}
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if p := recover(); p != nil {
			err = s.markCorrupt(p)
		}
	}()
	return s.db.View(fn)
}

// markCorrupt records a recovered bbolt panic. From then on writes fail and
// Close does not mark the file clean, so the next Open checks it.
func (s *Spool) markCorrupt(p any) error {
	err := fmt.Errorf("%w: %v", ErrCorrupt, p)
	if !s.corrupt.Swap(true) {
		s.log.Error("spool file is damaged; writes stop and the next start will check it", "path", s.path, "error", err)
		close(s.damaged)
	}
	return err
}

// Damaged returns a channel that is closed when the spool finds its file
// damaged while running (see ErrCorrupt). The owner should then close the
// spool and open it again: Open checks the whole file and quarantines or
// repairs it, which a running spool cannot do safely.
func (s *Spool) Damaged() <-chan struct{} { return s.damaged }
