package spool

import (
	"bytes"
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
// the queue or dead bucket along branch keys that match the pages they
// point to, in key order, and passing its own checksum (which covers the
// key and the whole value). Nothing else is trusted: every byte of the file
// is read at most once whatever its pages claim, a damaged page costs its
// own subtree, not the walk, and a damaged pointer that lands on an old,
// freed page (whose records may have been delivered long ago) is not
// followed. Records come out in key order, each once, so the queue keeps
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
	// last is the last key emitted: keys only go up within a bucket, so a
	// record is never handed out twice and the queue keeps its order.
	last []byte
}

// walkSalvage calls emit for every provably good record of the file at
// path: the queue's first, in order, then the dead letters. It returns how
// many records or pages it had to skip.
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
// meta page and calls emit for every queue record, then every dead letter,
// that passes its checksum and sits where the tree's keys say it should. A
// file without a valid meta page yields nothing.
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
	// The root of a spool is one leaf page holding its three buckets.
	root, ok, err := w.read(m.root, 0)
	if err != nil || !ok {
		return w.bad, err
	}
	if ne.Uint16(root[8:]) != leafPageFlag {
		return w.bad + 1, nil
	}
	root = bytes.Clone(root)
	// Queue first: if the fresh spool fills up, sendable records matter
	// more than dead letters.
	for _, want := range []bucketKind{bkQueue, bkDead} {
		w.last = nil
		count := w.elements(root)
		for i := 0; i < count; i++ {
			flags, name, val, ok := leafElement(root, i)
			if !ok {
				w.bad++
				continue
			}
			if flags&bucketLeafFlag == 0 || bucketKindOf(name) != want {
				continue
			}
			if err := w.bucket(val, want); err != nil {
				return w.bad, err
			}
		}
	}
	return w.bad, nil
}

func bucketKindOf(name []byte) bucketKind {
	switch string(name) {
	case string(bucketQueue):
		return bkQueue
	case string(bucketDead):
		return bkDead
	}
	return bkOther
}

// bucket walks a queue or dead bucket given its header value.
func (w *salvageWalker) bucket(val []byte, bk bucketKind) error {
	if len(val) < bucketHeaderSize {
		w.bad++
		return nil
	}
	if root := ne.Uint64(val); root != 0 {
		return w.page(root, bk, 1, nil, nil)
	}
	p := val[bucketHeaderSize:] // an inline bucket: its leaf follows the header
	if len(p) < pageHeaderSize || ne.Uint16(p[8:]) != leafPageFlag {
		w.bad++
		return nil
	}
	return w.leaf(p, bk, nil, nil)
}

// elements is the element count of page buf, cut to what fits.
func (w *salvageWalker) elements(buf []byte) int {
	count := int(ne.Uint16(buf[10:]))
	if pageHeaderSize+count*elemSize > len(buf) {
		w.bad++
		count = (len(buf) - pageHeaderSize) / elemSize
	}
	return count
}

// page walks the subtree at id, whose keys must be >= minClosed and
// < maxOpen (nil: unbounded). A branch element is followed only if the
// page it points to starts with its key, as bbolt always writes them: a
// damaged pointer then lands on a page whose keys do not fit (often an
// old, freed copy of some page, whose records were delivered long ago) and
// that subtree is skipped instead of handed out. If the key itself is
// damaged (out of order), the child is still followed when its own first
// key fits between its neighbours. Only emit's errors and I/O errors end
// the walk.
func (w *salvageWalker) page(id uint64, bk bucketKind, depth int, minClosed, maxOpen []byte) error {
	buf, ok, err := w.read(id, depth)
	if err != nil || !ok {
		return err
	}
	count := w.elements(buf)
	if ne.Uint16(buf[8:]) == leafPageFlag {
		return w.leaf(buf, bk, minClosed, maxOpen)
	}
	var prev []byte
	for i := 0; i < count; i++ {
		key, child, ok := branchElement(buf, i)
		if !ok {
			w.bad++
			continue
		}
		keyOK := (prev == nil || bytes.Compare(key, prev) > 0) && inRange(key, minClosed, maxOpen)
		next := maxOpen
		if i+1 < count {
			if k, _, ok := branchElement(buf, i+1); ok && (!keyOK || bytes.Compare(k, key) > 0) && inRange(k, minClosed, maxOpen) {
				next = k
			}
		}
		first, ok, err := w.firstKey(child)
		if err != nil {
			return err
		}
		switch {
		case !ok:
			w.bad++
			continue
		case keyOK && !bytes.Equal(first, key):
			// The pointer is damaged, or points at a stale page.
			w.bad++
			continue
		case !keyOK && ((prev != nil && bytes.Compare(first, prev) <= 0) || !inRange(first, minClosed, next)):
			// The key is damaged and the child does not fit in its place
			// either.
			w.bad++
			continue
		}
		if !keyOK {
			w.bad++ // the key itself, though its child is good
		}
		prev = first
		if err := w.page(child, bk, depth+1, first, next); err != nil {
			return err
		}
	}
	return nil
}

// firstKey returns the first key of page id without marking it visited.
func (w *salvageWalker) firstKey(id uint64) ([]byte, bool, error) {
	if id < 2 || id >= w.hwm {
		return nil, false, nil
	}
	var hdr [pageHeaderSize + elemSize]byte
	if _, err := w.r.ReadAt(hdr[:], int64(id)*w.ps); err != nil {
		return nil, false, fmt.Errorf("read page %d: %w", id, err)
	}
	flags := ne.Uint16(hdr[8:])
	if ne.Uint16(hdr[10:]) == 0 || (flags != leafPageFlag && flags != branchPageFlag) {
		return nil, false, nil
	}
	// The key's offset is relative to its element; element 0's header is
	// at pageHeaderSize.
	var pos, ksize uint64
	if flags == leafPageFlag {
		pos, ksize = uint64(ne.Uint32(hdr[pageHeaderSize+4:])), uint64(ne.Uint32(hdr[pageHeaderSize+8:]))
	} else {
		pos, ksize = uint64(ne.Uint32(hdr[pageHeaderSize:])), uint64(ne.Uint32(hdr[pageHeaderSize+4:]))
	}
	if ksize > uint64(w.ps) || pos > uint64(w.ps) {
		return nil, false, nil
	}
	key := make([]byte, ksize)
	if _, err := w.r.ReadAt(key, int64(id)*w.ps+int64(pageHeaderSize)+int64(pos)); err != nil {
		return nil, false, nil // past the end of a truncated file
	}
	return key, true, nil
}

// branchElement returns element i of the branch page in buf.
func branchElement(buf []byte, i int) (key []byte, child uint64, ok bool) {
	e := pageHeaderSize + i*elemSize
	pos, ksize := uint64(ne.Uint32(buf[e:])), uint64(ne.Uint32(buf[e+4:]))
	start := uint64(e) + pos
	if start+ksize > uint64(len(buf)) {
		return nil, 0, false
	}
	return buf[start : start+ksize], ne.Uint64(buf[e+8:]), true
}

func inRange(key, minClosed, maxOpen []byte) bool {
	return (minClosed == nil || bytes.Compare(key, minClosed) >= 0) && (maxOpen == nil || bytes.Compare(key, maxOpen) < 0)
}

// read returns page id with its overflow pages, or ok false if it is out
// of range, already visited (or inside a page already read), too deep or
// not a branch or leaf page. So every byte of the file is read at most
// once, whatever its pages claim.
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
		for p := id + 1; p <= id+ov; p++ {
			if w.visited.get(p) {
				w.bad++
				return nil, false, nil
			}
		}
		for p := id + 1; p <= id+ov; p++ {
			w.visited.set(p)
		}
		buf = w.buffer(depth, int64(1+ov)*w.ps)
		if _, err := w.r.ReadAt(buf, int64(id)*w.ps); err != nil {
			return nil, false, fmt.Errorf("read page %d: %w", id, err)
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

// leaf hands out the records of a leaf page of bucket bk whose keys are in
// [minClosed, maxOpen), above every key handed out before, and whose
// checksums verify.
func (w *salvageWalker) leaf(buf []byte, bk bucketKind, minClosed, maxOpen []byte) error {
	count := w.elements(buf)
	for i := 0; i < count; i++ {
		flags, key, val, ok := leafElement(buf, i)
		if !ok || flags&bucketLeafFlag != 0 || !inRange(key, minClosed, maxOpen) ||
			(w.last != nil && bytes.Compare(key, w.last) <= 0) {
			w.bad++
			continue
		}
		var x salvaged
		if bk == bkQueue {
			r, err := decodeRecord(key, val)
			if err != nil || len(r.Body) > maxBodyBytes {
				w.bad++
				continue
			}
			x = salvaged{rec: r}
		} else {
			d, err := decodeDead(key, val)
			if err != nil || len(d.Body) > maxBodyBytes {
				w.bad++
				continue
			}
			x = salvaged{dead: true, rec: d.Record, status: d.Status, reason: d.Reason, deadAt: d.DeadAt}
		}
		w.last = append(w.last[:0], key...)
		if err := w.emit(x); err != nil {
			return err
		}
	}
	return nil
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
