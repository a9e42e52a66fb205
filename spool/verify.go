package spool

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
)

// checkFile reads a bbolt file's structure with ordinary reads before bbolt
// maps it. bbolt trusts its pages: on a damaged file it can fault on the
// map, or panic in a goroutine of its own while rebuilding the freelist,
// and neither can be recovered. checkFile cannot panic on any input (all
// access is bounds-checked), so damage is found here and the file is
// quarantined instead.
//
// The quick pass checks the meta pages, the size against the high water
// mark, the freelist page, the root bucket and the spool's meta bucket. If
// the file was not closed cleanly (or its freelist was not written, or its
// counters do not verify) a full pass follows: every reachable page and
// every record, with the checks of bbolt's Tx.Check. Records whose
// checksum fails are listed for deletion rather than condemning the file,
// up to a limit.
//
// This follows bbolt's on-disk format, version 2, in the byte order of the
// machine (bbolt writes its structures in native order).

// errUnreadable marks a file that cannot be used as a spool and is moved
// aside.
var errUnreadable = errors.New("unreadable spool file")

func unreadable(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{errUnreadable}, args...)...)
}

// bbolt's on-disk format.
const (
	boltMagic        = 0xED0CDAED
	boltVersion      = 2
	pageHeaderSize   = 16
	elemSize         = 16 // branch and leaf elements alike
	bucketHeaderSize = 16
	metaSize         = 64 // from the magic to the checksum, inclusive
	branchPageFlag   = 0x01
	leafPageFlag     = 0x02
	metaPageFlag     = 0x04
	freelistPageFlag = 0x10
	bucketLeafFlag   = 0x01
	noFreelist       = ^uint64(0)

	maxTreeDepth = 64
	maxBadKeys   = 4096
)

var ne = binary.NativeEndian

// preflight is what checkFile learned.
type preflight struct {
	fresh bool // the file was empty
	full  bool // every page and record was checked; counters were recounted
	clean bool // the previous process closed the spool

	counters   counters
	countersOK bool

	// metaHeadersOK: both meta pages have intact page headers. bbolt's
	// Tx.Check asserts on them in a goroutine of its own, so it is only run
	// when they are (a damaged header of a valid meta page is harmless:
	// bbolt rewrites it on a later commit).
	metaHeadersOK bool

	badQueue, badDead [][]byte // keys of records that failed their checksum
}

type boltMeta struct {
	pageSize                       uint32
	root, freelist, hwm, txid      uint64
	magicOK, versionOK, checksumOK bool
	headersOK                      bool // of both meta pages; set by readMeta
}

func (m boltMeta) err() error {
	switch {
	case !m.magicOK:
		return errors.New("not a bbolt meta page")
	case !m.versionOK:
		return errors.New("bbolt version mismatch")
	case !m.checksumOK:
		return errors.New("meta page checksum mismatch")
	}
	return nil
}

// parseMeta decodes the meta page at the start of b.
func parseMeta(b []byte) boltMeta {
	if len(b) < pageHeaderSize+metaSize {
		return boltMeta{}
	}
	h := fnv.New64a()
	_, _ = h.Write(b[pageHeaderSize : pageHeaderSize+56])
	return boltMeta{
		magicOK:    ne.Uint32(b[16:]) == boltMagic,
		versionOK:  ne.Uint32(b[20:]) == boltVersion,
		pageSize:   ne.Uint32(b[24:]),
		root:       ne.Uint64(b[32:]),
		freelist:   ne.Uint64(b[48:]),
		hwm:        ne.Uint64(b[56:]),
		txid:       ne.Uint64(b[64:]),
		checksumOK: ne.Uint64(b[72:]) == h.Sum64(),
	}
}

type bucketKind int

const (
	bkRoot bucketKind = iota
	bkMeta
	bkQueue
	bkDead
	bkOther
)

type fileChecker struct {
	r     io.ReaderAt
	size  int64
	ps    int64
	hwm   uint64
	full  bool
	reach bitmap
	free  bitmap
	bufs  [][]byte // one page buffer per tree depth
	pre   *preflight
}

// checkFile checks the file r of size bytes. Errors wrapping errUnreadable
// mean the file is damaged; other errors are I/O errors.
func checkFile(r io.ReaderAt, size int64) (*preflight, error) {
	m, ps, err := readMeta(r, size)
	if err != nil {
		return nil, err
	}
	pre, err := checkTree(r, size, m, ps, false)
	if err != nil {
		return nil, err
	}
	if pre.clean && pre.countersOK && m.freelist != noFreelist {
		return pre, nil
	}
	return checkTree(r, size, m, ps, true)
}

// pickMeta finds the page size and picks the meta page bbolt would use:
// the valid one with the higher transaction ID.
func pickMeta(r io.ReaderAt, size int64) (boltMeta, int64, error) {
	buf := make([]byte, 4096)
	read := func(off int64) ([]byte, error) {
		n, err := r.ReadAt(buf, off)
		if err != nil && !errors.Is(err, io.EOF) {
			return nil, err
		}
		return buf[:n], nil
	}
	var ps int64
	b, err := read(0)
	if err != nil {
		return boltMeta{}, 0, err
	}
	if m := parseMeta(b); m.err() == nil {
		ps = int64(m.pageSize)
	} else {
		// Like bbolt: the first meta page is bad, look for the second at
		// each possible page size.
		for i := 0; i <= 14; i++ {
			pos := int64(1024) << i
			if pos >= size-1024 {
				break
			}
			if b, err = read(pos); err != nil {
				return boltMeta{}, 0, err
			}
			if m := parseMeta(b); m.err() == nil {
				ps = int64(m.pageSize)
				break
			}
		}
	}
	if ps == 0 {
		return boltMeta{}, 0, unreadable("no valid bbolt meta page (%v)", parseMeta(b).err())
	}
	if ps < 1024 || ps > 1<<24 || ps&(ps-1) != 0 {
		return boltMeta{}, 0, unreadable("implausible page size %d", ps)
	}
	if size < 2*ps {
		return boltMeta{}, 0, unreadable("file is %d bytes, shorter than two %d-byte pages", size, ps)
	}
	var metas [2]boltMeta
	headersOK := true
	for i := range metas {
		if b, err = read(int64(i) * ps); err != nil {
			return boltMeta{}, 0, err
		}
		metas[i] = parseMeta(b)
		if len(b) < pageHeaderSize || ne.Uint64(b) != uint64(i) || !knownPageType(ne.Uint16(b[8:])) {
			headersOK = false
		}
	}
	a, o := metas[0], metas[1]
	if o.txid > a.txid {
		a, o = o, a
	}
	m := a
	if m.err() != nil {
		m = o
	}
	if err := m.err(); err != nil {
		return boltMeta{}, 0, unreadable("both meta pages are invalid: %v", err)
	}
	m.headersOK = headersOK
	return m, ps, nil
}

// readMeta finds the page size and picks the meta page bbolt would use:
// the valid one with the higher transaction ID, and checks that the pages
// it names are within the file.
func readMeta(r io.ReaderAt, size int64) (boltMeta, int64, error) {
	m, ps, err := pickMeta(r, size)
	if err != nil {
		return boltMeta{}, 0, err
	}
	switch {
	case int64(m.pageSize) != ps:
		return boltMeta{}, 0, unreadable("meta page says page size %d, but %d was found", m.pageSize, ps)
	case m.hwm < 3 || m.hwm > uint64(size/ps):
		return boltMeta{}, 0, unreadable("file is %d bytes but bbolt uses %d pages of %d bytes (truncated?)", size, m.hwm, ps)
	case m.root < 2 || m.root >= m.hwm:
		return boltMeta{}, 0, unreadable("root page %d out of range", m.root)
	case m.freelist != noFreelist && (m.freelist < 2 || m.freelist >= m.hwm):
		return boltMeta{}, 0, unreadable("freelist page %d out of range", m.freelist)
	}
	return m, ps, nil
}

func checkTree(r io.ReaderAt, size int64, m boltMeta, ps int64, full bool) (*preflight, error) {
	c := &fileChecker{
		r: r, size: size, ps: ps, hwm: m.hwm, full: full,
		reach: newBitmap(m.hwm),
		free:  newBitmap(m.hwm),
		pre:   &preflight{full: full, metaHeadersOK: m.headersOK},
	}
	c.reach.set(0)
	c.reach.set(1)
	if m.freelist != noFreelist {
		if err := c.freelist(m.freelist); err != nil {
			return nil, err
		}
	}
	if _, _, err := c.page(m.root, nil, nil, bkRoot, 0); err != nil {
		return nil, err
	}
	if full && m.freelist != noFreelist {
		for id := uint64(2); id < m.hwm; id++ {
			if !c.reach.get(id) && !c.free.get(id) {
				return nil, unreadable("page %d is neither used nor free", id)
			}
		}
	}
	if full {
		c.pre.countersOK = true
	}
	return c.pre, nil
}

// freelist checks the freelist page and marks its pages used and the pages
// it lists free.
func (c *fileChecker) freelist(id uint64) error {
	buf, err := c.read(id, freelistPageFlag, 0)
	if err != nil {
		return err
	}
	count, idx := uint64(ne.Uint16(buf[10:])), uint64(0)
	if count == 0xFFFF {
		if len(buf) < pageHeaderSize+8 {
			return unreadable("freelist page %d is too short", id)
		}
		count, idx = ne.Uint64(buf[pageHeaderSize:]), 1
	}
	if count > uint64(len(buf)) || pageHeaderSize+(idx+count)*8 > uint64(len(buf)) {
		return unreadable("freelist page %d lists %d pages, more than it holds", id, count)
	}
	for i := idx; i < idx+count; i++ {
		p := ne.Uint64(buf[pageHeaderSize+i*8:])
		switch {
		case p < 2 || p >= c.hwm:
			return unreadable("freelist lists page %d, out of range", p)
		case c.free.get(p):
			return unreadable("freelist lists page %d twice", p)
		case c.reach.get(p):
			return unreadable("freelist lists page %d, which is in use", p)
		}
		c.free.set(p)
	}
	return nil
}

// read reads page id (with its overflow pages) into the buffer for depth,
// checks its header and marks it used.
func (c *fileChecker) read(id uint64, wantFlags uint16, depth int) ([]byte, error) {
	if id < 2 || id >= c.hwm {
		return nil, unreadable("page %d out of range", id)
	}
	buf := c.buffer(depth, c.ps)
	if _, err := c.r.ReadAt(buf, int64(id)*c.ps); err != nil {
		return nil, fmt.Errorf("read page %d: %w", id, err)
	}
	hid, flags, ov := ne.Uint64(buf[0:]), ne.Uint16(buf[8:]), uint64(ne.Uint32(buf[12:]))
	switch {
	case hid != id:
		return nil, unreadable("page %d says it is page %d", id, hid)
	case wantFlags != 0 && flags != wantFlags,
		wantFlags == 0 && flags != branchPageFlag && flags != leafPageFlag:
		return nil, unreadable("page %d has unexpected type %#x", id, flags)
	case id+ov >= c.hwm:
		return nil, unreadable("page %d overflows past the high water mark", id)
	}
	if ov > 0 {
		buf = c.buffer(depth, int64(1+ov)*c.ps)
		if _, err := c.r.ReadAt(buf, int64(id)*c.ps); err != nil {
			return nil, fmt.Errorf("read page %d: %w", id, err)
		}
	}
	for p := id; p <= id+ov; p++ {
		switch {
		case c.reach.get(p):
			return nil, unreadable("page %d is referenced twice", p)
		case c.free.get(p):
			return nil, unreadable("page %d is both free and in use", p)
		}
		c.reach.set(p)
	}
	return buf, nil
}

func (c *fileChecker) buffer(depth int, n int64) []byte {
	if n > 1<<20 {
		return make([]byte, n) // a large value: don't keep it around
	}
	for len(c.bufs) <= depth {
		c.bufs = append(c.bufs, nil)
	}
	if int64(cap(c.bufs[depth])) < n {
		c.bufs[depth] = make([]byte, n)
	}
	return c.bufs[depth][:n]
}

// page checks the subtree at page id, whose keys must be >= minClosed and
// < maxOpen (nil: unbounded), and returns its first and greatest keys.
//
// Beyond bbolt's Tx.Check it requires each branch key to equal the first
// key of the page it points to. bbolt always writes trees that way and
// relies on it when it changes a page (it finds the parent's entry by the
// child's first key), so a tree that breaks it would be damaged further by
// the next write.
func (c *fileChecker) page(id uint64, minClosed, maxOpen []byte, bk bucketKind, depth int) (first, last []byte, err error) {
	if depth > maxTreeDepth {
		return nil, nil, unreadable("tree deeper than %d at page %d", maxTreeDepth, id)
	}
	buf, err := c.read(id, 0, depth)
	if err != nil {
		return nil, nil, err
	}
	count := int(ne.Uint16(buf[10:]))
	if ne.Uint16(buf[8:]) == leafPageFlag {
		return c.leaf(buf, id, count, minClosed, maxOpen, bk, depth)
	}
	if count == 0 {
		return nil, nil, unreadable("branch page %d is empty", id)
	}
	if pageHeaderSize+count*elemSize > len(buf) {
		return nil, nil, unreadable("page %d has %d elements, more than fit", id, count)
	}
	branch := func(i int) ([]byte, uint64, error) {
		e := pageHeaderSize + i*elemSize
		pos, ksize := uint64(ne.Uint32(buf[e:])), uint64(ne.Uint32(buf[e+4:]))
		start := uint64(e) + pos
		if start+ksize > uint64(len(buf)) {
			return nil, 0, unreadable("page %d element %d points outside the page", id, i)
		}
		return buf[start : start+ksize], ne.Uint64(buf[e+8:]), nil
	}
	running := minClosed
	for i := 0; i < count; i++ {
		key, child, err := branch(i)
		if err != nil {
			return nil, nil, err
		}
		if err := keyOrder(id, i, key, running, maxOpen); err != nil {
			return nil, nil, err
		}
		if i == 0 {
			first = bytes.Clone(key)
		}
		next := maxOpen
		if i+1 < count {
			if next, _, err = branch(i + 1); err != nil {
				return nil, nil, err
			}
		}
		childFirst, childLast, err := c.page(child, key, next, bk, depth+1)
		if err != nil {
			return nil, nil, err
		}
		if !bytes.Equal(childFirst, key) {
			return nil, nil, unreadable("page %d element %d does not match the first key of page %d", id, i, child)
		}
		last, running = childLast, childLast
	}
	return first, last, nil
}

// leaf checks the elements of a leaf page (or an inline bucket's page) and
// what they hold, and returns copies of its first and last keys.
func (c *fileChecker) leaf(buf []byte, id uint64, count int, minClosed, maxOpen []byte, bk bucketKind, depth int) (first, last []byte, err error) {
	if pageHeaderSize+count*elemSize > len(buf) {
		return nil, nil, unreadable("page %d has %d elements, more than fit", id, count)
	}
	running := minClosed
	for i := 0; i < count; i++ {
		flags, key, val, ok := leafElement(buf, i)
		if !ok {
			return nil, nil, unreadable("page %d element %d points outside the page", id, i)
		}
		if err := keyOrder(id, i, key, running, maxOpen); err != nil {
			return nil, nil, err
		}
		if i == 0 {
			first = bytes.Clone(key)
		}
		running = key
		if flags&bucketLeafFlag != 0 {
			err = c.bucket(key, val, bk, depth)
		} else {
			err = c.value(key, val, bk)
		}
		if err != nil {
			return nil, nil, err
		}
	}
	if count == 0 {
		return nil, nil, nil
	}
	return first, bytes.Clone(running), nil
}

// leafElement returns element i of the leaf page in buf, or ok false if it
// points outside the page. The caller checks that the element header fits.
func leafElement(buf []byte, i int) (flags uint32, key, val []byte, ok bool) {
	e := pageHeaderSize + i*elemSize
	flags = ne.Uint32(buf[e:])
	pos, ksize, vsize := uint64(ne.Uint32(buf[e+4:])), uint64(ne.Uint32(buf[e+8:])), uint64(ne.Uint32(buf[e+12:]))
	start := uint64(e) + pos
	if start+ksize+vsize > uint64(len(buf)) {
		return 0, nil, nil, false
	}
	return flags, buf[start : start+ksize], buf[start+ksize : start+ksize+vsize], true
}

// keyOrder applies bbolt's key order rules to element i of page id.
func keyOrder(id uint64, i int, key, prev, maxOpen []byte) error {
	if i == 0 && prev != nil && bytes.Compare(prev, key) > 0 {
		return unreadable("page %d: first key is below its parent's", id)
	}
	if i > 0 && bytes.Compare(prev, key) >= 0 {
		return unreadable("page %d: key %d is out of order", id, i)
	}
	if maxOpen != nil && bytes.Compare(key, maxOpen) >= 0 {
		return unreadable("page %d: key %d is not below its parent's next key", id, i)
	}
	return nil
}

// bucket checks a bucket stored under name in a bucket of kind parent.
func (c *fileChecker) bucket(name, val []byte, parent bucketKind, depth int) error {
	if parent != bkRoot && parent != bkOther {
		return unreadable("unexpected bucket %q nested in a spool bucket", name)
	}
	if len(val) < bucketHeaderSize {
		return unreadable("bucket %q header is %d bytes", name, len(val))
	}
	kind := bkOther
	if parent == bkRoot {
		switch string(name) {
		case "meta":
			kind = bkMeta
		case "queue":
			kind = bkQueue
		case "dead":
			kind = bkDead
		}
	}
	if !c.full && kind != bkMeta {
		// The quick pass only checks where the bucket's pages are.
		if root := ne.Uint64(val); root != 0 && (root < 2 || root >= c.hwm) {
			return unreadable("bucket %q root page %d out of range", name, root)
		}
		return nil
	}
	if root := ne.Uint64(val); root != 0 {
		_, _, err := c.page(root, nil, nil, kind, depth+1)
		return err
	}
	// An inline bucket: its leaf page follows the header.
	p := val[bucketHeaderSize:]
	if len(p) < pageHeaderSize || ne.Uint16(p[8:]) != leafPageFlag {
		return unreadable("inline bucket %q has no leaf page", name)
	}
	_, _, err := c.leaf(p, 0, int(ne.Uint16(p[10:])), nil, nil, kind, depth+1)
	return err
}

// value checks one key/value pair of a bucket of kind bk.
func (c *fileChecker) value(key, val []byte, bk bucketKind) error {
	switch bk {
	case bkRoot:
		return unreadable("the root holds a plain key %q", key)
	case bkMeta:
		switch string(key) {
		case string(keyClean):
			c.pre.clean = len(val) == 1 && val[0] == 1
		case string(keyCounters):
			if !c.full {
				cn, err := decodeCounters(val)
				c.pre.counters, c.pre.countersOK = cn, err == nil
			}
		}
	case bkQueue:
		if _, err := verifyRecord(key, val); err != nil {
			return c.bad(&c.pre.badQueue, key)
		}
		c.pre.counters.queued++
		c.pre.counters.queuedBytes += int64(len(key) + len(val))
	case bkDead:
		if _, err := decodeDead(key, val); err != nil {
			return c.bad(&c.pre.badDead, key)
		}
		c.pre.counters.dead++
		c.pre.counters.deadBytes += int64(len(key) + len(val))
	}
	return nil
}

func (c *fileChecker) bad(list *[][]byte, key []byte) error {
	if len(c.pre.badQueue)+len(c.pre.badDead) >= maxBadKeys {
		return unreadable("more than %d records fail their checksum", maxBadKeys)
	}
	*list = append(*list, bytes.Clone(key))
	return nil
}

// knownPageType: bbolt's FastCheck accepts exactly these page flags.
func knownPageType(flags uint16) bool {
	switch flags {
	case branchPageFlag, leafPageFlag, metaPageFlag, freelistPageFlag:
		return true
	}
	return false
}

// bitmap is a set of page IDs.
type bitmap []uint64

func newBitmap(n uint64) bitmap    { return make(bitmap, n/64+1) }
func (b bitmap) get(i uint64) bool { return b[i/64]&(1<<(i%64)) != 0 }
func (b bitmap) set(i uint64)      { b[i/64] |= 1 << (i % 64) }
