package spool

import (
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Salvage: carrying what still reads out of a quarantined file.
//
// A file is quarantined as a whole when any part of it fails the check (one
// flipped bit in a branch key is enough), yet most of its records are
// usually intact, and a record nobody replays is as good as lost. So after
// a quarantine the fresh spool takes over every record of the old file that
// can still be proven good: reached from the newest valid meta page through
// the queue or dead bucket, and passing its own checksum (which covers the
// key and the whole value). Nothing else is trusted: pages are bounds
// checked and visited at most once, and a damaged page costs its own
// subtree, not the walk. Records come out in key order, so the queue keeps
// its FIFO order; they get new IDs in the fresh spool. The quarantined file
// stays where it is, untouched.

// salvageBatch bounds one commit of salvaged records.
const (
	salvageBatchRecords = 1000
	salvageBatchBytes   = 4 << 20
)

// salvaged is one record read back from a quarantined file.
type salvaged struct {
	dead bool
	rec  Record // ID is the old one
	// Dead letters only.
	status int
	reason string
	deadAt time.Time
}

// salvageReport says what a salvage carried over and what it could not.
type salvageReport struct {
	queued, dead int
	unreadable   int // records or pages that failed their checks
	left         int // good records that did not fit under MaxBytes
}

// salvageWalker walks a damaged file leniently.
type salvageWalker struct {
	r       io.ReaderAt
	ps      int64
	hwm     uint64
	visited bitmap
	bufs    [][]byte
	bad     int
	emit    func(salvaged) error
}

// walkSalvage calls emit for every provably good record of the file at
// path, in key order. It returns how many records or pages it had to skip.
func walkSalvage(path string, emit func(salvaged) error) (unreadable int, err error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, fmt.Errorf("open %s: %w", path, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return 0, fmt.Errorf("stat %s: %w", path, err)
	}
	return salvageRecords(f, fi.Size(), emit)
}

// salvageRecords walks the bbolt file r of size bytes from its newest valid
// meta page and calls emit for every queue and dead record that passes its
// checksum. A file without a valid meta page yields nothing.
func salvageRecords(r io.ReaderAt, size int64, emit func(salvaged) error) (unreadable int, err error) {
	// A truncated file still has a valid meta page whose tree reaches past
	// the end; the walk skips what is missing.
	m, ps, err := pickMeta(r, size)
	if err != nil {
		if errors.Is(err, errUnreadable) {
			return 0, nil // nothing to go by
		}
		return 0, err
	}
	hwm := min(m.hwm, uint64(size/ps))
	w := &salvageWalker{r: r, ps: ps, hwm: hwm, visited: newBitmap(hwm), emit: emit}
	err = w.page(m.root, bkRoot, 0)
	return w.bad, err
}

// page walks the subtree at id. Only emit's errors and I/O errors end the
// walk; damage is counted and skipped.
func (w *salvageWalker) page(id uint64, bk bucketKind, depth int) error {
	buf, ok, err := w.read(id, depth)
	if err != nil || !ok {
		return err
	}
	count := int(ne.Uint16(buf[10:]))
	if pageHeaderSize+count*elemSize > len(buf) {
		w.bad++
		count = (len(buf) - pageHeaderSize) / elemSize
	}
	if ne.Uint16(buf[8:]) == leafPageFlag {
		return w.leaf(buf, count, bk, depth)
	}
	for i := 0; i < count; i++ {
		e := pageHeaderSize + i*elemSize
		if err := w.page(ne.Uint64(buf[e+8:]), bk, depth+1); err != nil {
			return err
		}
	}
	return nil
}

// read returns page id with its overflow pages, or ok false if it is out
// of range, already visited, too deep or not a branch or leaf page.
func (w *salvageWalker) read(id uint64, depth int) (buf []byte, ok bool, err error) {
	if depth > maxTreeDepth || id < 2 || id >= w.hwm || w.visited.get(id) {
		w.bad++
		return nil, false, nil
	}
	w.visited.set(id)
	buf = w.buffer(depth, w.ps)
	if _, err := w.r.ReadAt(buf, int64(id)*w.ps); err != nil {
		return nil, false, fmt.Errorf("read page %d: %w", id, err)
	}
	flags, ov := ne.Uint16(buf[8:]), uint64(ne.Uint32(buf[12:]))
	if ne.Uint64(buf) != id || (flags != branchPageFlag && flags != leafPageFlag) || id+ov >= w.hwm {
		w.bad++
		return nil, false, nil
	}
	if ov > 0 {
		buf = w.buffer(depth, int64(1+ov)*w.ps)
		if _, err := w.r.ReadAt(buf, int64(id)*w.ps); err != nil {
			return nil, false, fmt.Errorf("read page %d: %w", id, err)
		}
		for p := id + 1; p <= id+ov; p++ {
			w.visited.set(p) // a page inside another is not a page of its own
		}
	}
	return buf, true, nil
}

func (w *salvageWalker) buffer(depth int, n int64) []byte {
	if n > 1<<20 {
		return make([]byte, n)
	}
	for len(w.bufs) <= depth {
		w.bufs = append(w.bufs, nil)
	}
	if int64(cap(w.bufs[depth])) < n {
		w.bufs[depth] = make([]byte, n)
	}
	return w.bufs[depth][:n]
}

func (w *salvageWalker) leaf(buf []byte, count int, bk bucketKind, depth int) error {
	for i := 0; i < count; i++ {
		flags, key, val, ok := leafElement(buf, i)
		if !ok {
			w.bad++
			continue
		}
		switch {
		case flags&bucketLeafFlag != 0:
			if err := w.bucket(key, val, bk, depth); err != nil {
				return err
			}
		case bk == bkQueue:
			r, err := decodeRecord(key, val)
			if err != nil {
				w.bad++
				continue
			}
			if err := w.emit(salvaged{rec: r}); err != nil {
				return err
			}
		case bk == bkDead:
			d, err := decodeDead(key, val)
			if err != nil {
				w.bad++
				continue
			}
			if err := w.emit(salvaged{dead: true, rec: d.Record, status: d.Status, reason: d.Reason, deadAt: d.DeadAt}); err != nil {
				return err
			}
		}
	}
	return nil
}

// bucket follows the queue and dead buckets of the root; nothing else
// holds records.
func (w *salvageWalker) bucket(name, val []byte, parent bucketKind, depth int) error {
	if parent != bkRoot || len(val) < bucketHeaderSize {
		return nil
	}
	var kind bucketKind
	switch string(name) {
	case string(bucketQueue):
		kind = bkQueue
	case string(bucketDead):
		kind = bkDead
	default:
		return nil
	}
	if root := ne.Uint64(val); root != 0 {
		return w.page(root, kind, depth+1)
	}
	p := val[bucketHeaderSize:] // an inline bucket: its leaf follows the header
	if len(p) < pageHeaderSize || ne.Uint16(p[8:]) != leafPageFlag {
		w.bad++
		return nil
	}
	count := int(ne.Uint16(p[10:]))
	if pageHeaderSize+count*elemSize > len(p) {
		w.bad++
		count = (len(p) - pageHeaderSize) / elemSize
	}
	return w.leaf(p, count, kind, depth+1)
}

// salvage carries the good records of the quarantined file at path into
// the fresh spool. It runs in Open, before the writer starts, and commits
// in bounded batches, so memory does not grow with the old file.
func (s *Spool) salvage(path string) salvageReport {
	var rep salvageReport
	var batch []salvaged
	var size int64
	full := false
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		r := &request{op: opSalvage, salvaged: batch, done: make(chan error, 1)}
		s.commit([]*request{r}, nil)
		err := <-r.done
		if err != nil && !errors.Is(err, ErrFull) {
			return err
		}
		for _, x := range batch[:r.stored] {
			if x.dead {
				rep.dead++
			} else {
				rep.queued++
			}
		}
		if err != nil {
			full = true
			rep.left += len(batch) - r.stored
		}
		batch, size = nil, 0
		return nil
	}
	bad, err := walkSalvage(path, func(x salvaged) error {
		if full {
			rep.left++
			return nil
		}
		batch = append(batch, x)
		if x.dead {
			size += int64(keySize + deadHeader + min(len(x.reason), maxReasonBytes) + len(x.rec.Body))
		} else {
			size += int64(keySize + recordHeader + len(x.rec.Body))
		}
		if len(batch) >= salvageBatchRecords || size >= salvageBatchBytes {
			return flush()
		}
		return nil
	})
	if err == nil {
		err = flush()
	}
	rep.unreadable = bad
	args := []any{"path", s.path, "from", path, "queued", rep.queued, "dead_letters", rep.dead, "unreadable", rep.unreadable}
	switch {
	case err != nil:
		s.log.Error("could not finish carrying records over from the quarantined spool file; the rest stay in it",
			append(args, "error", err)...)
	case rep.left > 0:
		s.log.Error("the fresh spool filled up before every readable record of the quarantined file was carried over; the rest stay in it",
			append(args, "left", rep.left, "max_bytes", s.opts.MaxBytes)...)
	default:
		s.log.Warn("carried the readable records of the quarantined spool file over to the fresh spool", args...)
	}
	return rep
}

// restore stores salvaged records under new IDs, in order, as many as fit
// under MaxBytes; it never drops anything to make room. r.stored says how
// many it stored; ErrFull, that the rest did not fit.
func (t *txn) restore(r *request) (res, err error) {
	limit := t.s.opts.MaxBytes
	for _, x := range r.salvaged {
		seq, err := t.q.NextSequence()
		if err != nil {
			return nil, err
		}
		k := encodeKey(seq)
		var b *bolt.Bucket
		var v []byte
		if x.dead {
			rec := x.rec
			rec.ID = seq
			b, v = t.dead, encodeDead(rec, x.status, x.reason, x.deadAt)
		} else {
			b, v = t.q, encodeRecord(x.rec.Kind, x.rec.Attempts, unixNanos(x.rec.Received), x.rec.Body)
			sealRecord(k, v)
		}
		if n := int64(keySize + len(v)); limit > 0 && t.c.used()+n > limit {
			return fmt.Errorf("salvaged records do not fit: %d of %d bytes in use: %w", t.c.used(), limit, ErrFull), nil
		}
		if err := b.Put(k, v); err != nil {
			return nil, err
		}
		if x.dead {
			t.c.dead++
			t.c.deadBytes += int64(keySize + len(v))
		} else {
			t.c.queued++
			t.c.queuedBytes += int64(keySize + len(v))
			t.added = true
		}
		r.stored++
		t.salvaged++
		t.dirty = true
	}
	return nil, nil
}
