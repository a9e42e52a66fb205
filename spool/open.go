package spool

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// defaultTuning is what the spool asks of bbolt; see bench_test.go for
// the measurements behind it. Durability settings (NoSync, NoGrowSync) are
// never changed.
func defaultTuning() tuning {
	t := tuning{
		// Not writing the freelist saves a page write per commit. The
		// freelist is written once at Close, so a clean restart does not
		// rebuild it; after a crash bbolt rebuilds it by scanning the
		// file, which the spool checks first anyway.
		noFreelistSync: true,
		freelistType:   bolt.FreelistMapType,
		// Grow the file in steps of this much: each step is a
		// truncate+fsync. 16 MiB (bbolt's default) and 1 MiB measured the
		// same; 4 MiB keeps a small spool's file small.
		allocSize: 4 << 20,
		// Map enough address space up front that the map is rarely
		// replaced (a remap waits for every open read transaction).
		initialMmapSize: 256 << 20,
	}
	if runtime.GOOS == "windows" {
		// On Windows bbolt sizes the file to the whole map.
		t.initialMmapSize = 0
	}
	return t
}

func (s *Spool) boltOptions(f *os.File) *bolt.Options {
	t := s.opts.tune
	o := &bolt.Options{
		Timeout:         s.opts.LockTimeout,
		NoFreelistSync:  t.noFreelistSync,
		FreelistType:    t.freelistType,
		InitialMmapSize: t.initialMmapSize,
	}
	if f != nil {
		// Hand bbolt the file the spool already locked and checked.
		o.OpenFile = func(string, int, os.FileMode) (*os.File, error) { return f, nil }
	}
	return o
}

// openBolt opens path with the spool's settings. A panic or memory fault
// inside bbolt becomes an errUnreadable error.
func (s *Spool) openBolt(path string, f *os.File) (db *bolt.DB, err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if p := recover(); p != nil {
			db, err = nil, fmt.Errorf("%w: bbolt panicked opening it: %v", errUnreadable, p)
		}
	}()
	db, err = bolt.Open(path, 0o600, s.boltOptions(f))
	switch {
	case err == nil:
		db.AllocSize = s.opts.tune.allocSize
		return db, nil
	case errors.Is(err, berrors.ErrTimeout):
		return nil, lockedError()
	case errors.Is(err, berrors.ErrInvalid), errors.Is(err, berrors.ErrChecksum), errors.Is(err, berrors.ErrVersionMismatch):
		return nil, fmt.Errorf("%w: %v", errUnreadable, err)
	}
	return nil, err
}

func lockedError() error {
	return fmt.Errorf("another process holds its lock (is another trackd running with this spool.path?): %w", ErrLocked)
}

// open opens s.path, moving an unreadable file aside and starting afresh.
func (s *Spool) open() error {
	if err := os.MkdirAll(filepath.Dir(s.path), 0o700); err != nil {
		return fmt.Errorf("open spool %s: create its directory: %w", s.path, err)
	}
	for attempt := 0; ; attempt++ {
		retry, err := s.tryOpen()
		if err != nil {
			return fmt.Errorf("open spool %s: %w", s.path, err)
		}
		if !retry {
			return nil
		}
		if attempt == 2 {
			return fmt.Errorf("open spool %s: still unreadable after moving it aside", s.path)
		}
	}
}

// tryOpen locks, checks and opens the file. If it is unreadable, tryOpen
// moves it aside and returns retry.
func (s *Spool) tryOpen() (retry bool, err error) {
	f, err := lockPath(s.path, s.opts.LockTimeout)
	if err != nil {
		return false, err
	}
	fi, err := f.Stat()
	if err != nil {
		_ = f.Close()
		return false, err
	}
	pre := &preflight{fresh: true}
	if fi.Size() > 0 {
		if pre, err = checkFile(f, fi.Size()); err != nil {
			if errors.Is(err, errUnreadable) {
				return true, s.quarantine(f, err)
			}
			_ = f.Close()
			return false, fmt.Errorf("check file: %w", err)
		}
	}
	if err := unlockForBolt(f); err != nil {
		_ = f.Close()
		return false, err
	}
	// From here bbolt owns f and closes it on failure.
	db, err := s.openBolt(s.path, f)
	if err != nil {
		if errors.Is(err, errUnreadable) {
			return true, s.quarantineAgain(fi, err)
		}
		return false, err
	}
	if err := s.initDB(db, pre); err != nil {
		_ = db.Close()
		if errors.Is(err, errUnreadable) {
			return true, s.quarantineAgain(fi, err)
		}
		return false, err
	}
	s.db = db
	return false, nil
}

// initDB runs bbolt's own check after an unclean shutdown, creates the
// buckets, deletes records that failed their checksum, loads the counters
// and clears the clean flag.
func (s *Spool) initDB(db *bolt.DB, pre *preflight) (err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("%w: bbolt panicked reading it: %v", errUnreadable, p)
		}
	}()
	if pre.full && pre.metaHeadersOK {
		if err := checkDB(db); err != nil {
			return fmt.Errorf("%w: %v", errUnreadable, err)
		}
	}
	var (
		c       counters
		oldest  int64
		dropped int
	)
	err = safeUpdate(db, func(tx *bolt.Tx) error {
		meta := tx.Bucket(bucketMeta)
		if meta == nil || meta.Get(keyFormat) == nil {
			var other []byte
			_ = tx.ForEach(func(name []byte, _ *bolt.Bucket) error {
				if n := string(name); n != "queue" && n != "dead" && n != "meta" {
					other = name
				}
				return nil
			})
			if other != nil {
				return fmt.Errorf("the file is a bbolt database but not a trackd spool (it has a bucket %q)", other)
			}
		}
		var err error
		if meta, err = tx.CreateBucketIfNotExists(bucketMeta); err != nil {
			return err
		}
		if v := meta.Get(keyFormat); v != nil && (len(v) != 1 || v[0] != formatV1) {
			return fmt.Errorf("the file has spool format %x, which this trackd does not support (it writes %d)", v, formatV1)
		}
		q, err := tx.CreateBucketIfNotExists(bucketQueue)
		if err != nil {
			return err
		}
		dead, err := tx.CreateBucketIfNotExists(bucketDead)
		if err != nil {
			return err
		}
		for _, k := range pre.badQueue {
			if err := q.Delete(k); err != nil {
				return err
			}
		}
		for _, k := range pre.badDead {
			if err := dead.Delete(k); err != nil {
				return err
			}
		}
		dropped = len(pre.badQueue) + len(pre.badDead)
		c = pre.counters // zero for a fresh file, recounted after a crash
		if _, v := q.Cursor().First(); v != nil {
			if h, err := decodeRecordHead(v); err == nil {
				oldest = h.received
			}
		}
		for _, kv := range [][2][]byte{
			{keyFormat, {formatV1}},
			{keyCounters, c.encode()},
			{keyClean, {0}},
		} {
			if err := meta.Put(kv[0], kv[1]); err != nil {
				return err
			}
		}
		return nil
	})
	if pe := (*panicError)(nil); errors.As(err, &pe) {
		return fmt.Errorf("%w: %v", errUnreadable, pe)
	}
	if err != nil {
		return err
	}
	s.c = c
	s.st.Queued, s.st.QueuedBytes, s.st.Dead, s.st.DeadBytes = c.queued, c.queuedBytes, c.dead, c.deadBytes
	if oldest != 0 {
		s.st.Oldest = fromNanos(oldest)
	}
	s.st.DroppedCorrupt = uint64(dropped)
	if dropped > 0 {
		s.log.Error("dropped spool records that failed their checksum", "path", s.path, "records", dropped)
	}
	if pre.full && !pre.fresh {
		s.log.Info("spool was not shut down cleanly; checked the whole file", "path", s.path,
			"spool_depth", c.queued, "dead", c.dead)
	}
	return nil
}

// checkDB runs bbolt's consistency check. checkFile has already verified
// the structure it walks, so the check's own goroutine cannot fault.
func checkDB(db *bolt.DB) error {
	return db.View(func(tx *bolt.Tx) error {
		var errs []error
		for err := range tx.Check() {
			if len(errs) < 10 {
				errs = append(errs, err)
			}
		}
		return errors.Join(errs...)
	})
}

// quarantine renames the unreadable, locked file f to
// <path>.corrupt-<unix seconds>, fsyncs the directory and closes f.
func (s *Spool) quarantine(f *os.File, cause error) error {
	dst := s.path + fmt.Sprintf(".corrupt-%d", s.opts.Now().Unix())
	for i := 2; ; i++ {
		if _, err := os.Lstat(dst); errors.Is(err, fs.ErrNotExist) {
			break
		}
		dst = s.path + fmt.Sprintf(".corrupt-%d-%d", s.opts.Now().Unix(), i)
	}
	if runtime.GOOS == "windows" {
		// Windows cannot rename an open file.
		_ = f.Close()
	}
	err := os.Rename(s.path, dst)
	if err == nil {
		err = syncDir(filepath.Dir(s.path))
	}
	_ = f.Close()
	if err != nil {
		return fmt.Errorf("the file is unreadable (%v) and moving it aside failed: %w", cause, err)
	}
	if s.st.Quarantined == "" {
		s.st.Quarantined = dst
	}
	s.log.Error("spool file is unreadable; moved it aside and started a fresh spool",
		"path", s.path, "moved_to", dst, "error", cause)
	return nil
}

// quarantineAgain locks the path again (bbolt released it) and quarantines
// the file if it is still the one found unreadable.
func (s *Spool) quarantineAgain(bad os.FileInfo, cause error) error {
	f, err := lockPath(s.path, s.opts.LockTimeout)
	if err != nil {
		return err
	}
	if fi, err := f.Stat(); err != nil || !os.SameFile(fi, bad) {
		// Another process dealt with it meanwhile; start over.
		_ = f.Close()
		return err
	}
	return s.quarantine(f, cause)
}

// lockPath opens path (creating it with mode 0600) and takes its exclusive
// lock, waiting up to timeout. If the file was replaced while it waited (a
// compaction or quarantine by the previous owner), it locks the new one.
func lockPath(path string, timeout time.Duration) (*os.File, error) {
	deadline := time.Now().Add(timeout)
	for {
		f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
		if err != nil {
			return nil, err
		}
		if err := lockFile(f, time.Until(deadline)); err != nil {
			_ = f.Close()
			if errors.Is(err, ErrLocked) {
				return nil, lockedError()
			}
			return nil, fmt.Errorf("lock: %w", err)
		}
		held, err1 := f.Stat()
		cur, err2 := os.Stat(path)
		if err1 == nil && err2 == nil && os.SameFile(held, cur) {
			return f, nil
		}
		_ = f.Close()
		if time.Now().After(deadline) {
			return nil, lockedError()
		}
	}
}

// syncDir fsyncs a directory so a rename in it is durable.
func syncDir(dir string) error {
	if runtime.GOOS == "windows" {
		return nil // directories cannot be fsynced there; NTFS journals renames
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}
