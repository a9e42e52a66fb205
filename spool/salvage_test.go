package spool

import (
	"bytes"
	"context"
	"os"
	"slices"
	"strings"
	"testing"

	bolt "go.etcd.io/bbolt"
)

// queueRootPage returns the page ID of the queue bucket's root in a closed
// spool file, and the file's page size.
func queueRootPage(t *testing.T, path string) (uint64, int64) {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var root uint64
	err = db.View(func(tx *bolt.Tx) error {
		root = uint64(tx.Bucket(bucketQueue).Root())
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return root, int64(db.Info().PageSize)
}

// markUnclean makes a closed spool file look like one trackd did not close,
// so that the next Open checks all of it (a clean file gets the quick check
// only).
func markUnclean(t *testing.T, path string) {
	t.Helper()
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketMeta).Put(keyClean, []byte{0})
	}); err != nil {
		t.Fatal(err)
	}
}

// patchPage rewrites page id of the file at path with fn.
func patchPage(t *testing.T, path string, id uint64, ps int64, fn func(page []byte)) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	page := make([]byte, ps)
	if _, err := f.ReadAt(page, int64(id)*ps); err != nil {
		t.Fatal(err)
	}
	fn(page)
	if _, err := f.WriteAt(page, int64(id)*ps); err != nil {
		t.Fatal(err)
	}
}

// queuedInOrder is the bodies of want (by ID) in ID order, without the
// IDs that were dead-lettered.
func queuedInOrder(want map[uint64]string, dead ...uint64) []string {
	var ids []uint64
	for id := range want {
		if !slices.Contains(dead, id) {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	var out []string
	for _, id := range ids {
		out = append(out, want[id])
	}
	return out
}

func TestQuarantinedFileIsSalvaged(t *testing.T) {
	for _, tc := range []struct {
		name string
		// damage breaks the closed spool at path whose queue root (a
		// branch page) is root; it returns how many queued records the
		// damage makes unrecoverable.
		damage func(t *testing.T, path string, root uint64, ps int64) (lost int)
	}{
		{"a branch key out of order", func(t *testing.T, path string, root uint64, ps int64) int {
			patchPage(t, path, root, ps, func(p []byte) {
				// Element 1's key becomes all zeros: below element 0's.
				e := pageHeaderSize + elemSize
				pos, ksize := int(ne.Uint32(p[e:])), int(ne.Uint32(p[e+4:]))
				clear(p[e+pos : e+pos+ksize])
			})
			return 0
		}},
		{"a leaf page zeroed", func(t *testing.T, path string, root uint64, ps int64) int {
			// Down the third child of each branch to a leaf.
			id, isLeaf := root, false
			for !isLeaf {
				patchPage(t, path, id, ps, func(p []byte) {
					if isLeaf = ne.Uint16(p[8:]) == leafPageFlag; !isLeaf {
						id = ne.Uint64(p[pageHeaderSize+2*elemSize+8:])
					}
				})
			}
			var n int
			patchPage(t, path, id, ps, func(p []byte) {
				n = int(ne.Uint16(p[10:]))
				clear(p)
			})
			return n
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := tempPath(t)
			s, want := filledSpool(t, path, 2000)
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			markUnclean(t, path)
			root, ps := queueRootPage(t, path)
			lost := tc.damage(t, path, root, ps)

			logs := &logRecorder{}
			s = mustOpenSpool(t, Options{Path: path, Logger: slogNew(logs)})
			st := s.Stats()
			if !strings.HasPrefix(st.Quarantined, path+".corrupt-") {
				t.Fatalf("the damaged file was not quarantined: %+v", st)
			}
			wantQueued := queuedInOrder(want, 1, 2, 3, 4, 5)
			got := bodies(readAll(t, s))
			if len(got) != len(wantQueued)-lost {
				t.Fatalf("salvaged %d queued records, want %d of %d (%d lost with the damage)", len(got), len(wantQueued)-lost, len(wantQueued), lost)
			}
			// In order, each once, each one of the originals.
			i := 0
			for _, b := range got {
				for i < len(wantQueued) && wantQueued[i] != b {
					i++
				}
				if i == len(wantQueued) {
					t.Fatalf("salvaged record %q is out of order, duplicated or not an original", b)
				}
				i++
			}
			dead, err := s.ReadDead(0, 100)
			if err != nil {
				t.Fatal(err)
			}
			if len(dead) != 5 {
				t.Fatalf("%d dead letters salvaged, want 5", len(dead))
			}
			for j, d := range dead {
				if d.Status != 400 || d.Reason != "bad" || string(d.Body) != want[uint64(j+1)] {
					t.Fatalf("dead letter %d: %+v", j, d)
				}
			}
			if st.Salvaged != uint64(len(got)+5) || st.Queued != int64(len(got)) || st.Dead != 5 {
				t.Fatalf("stats after salvage: %+v", st)
			}
			line := logs.find("carried the readable records", "from="+st.Quarantined)
			if line == "" {
				t.Fatalf("want a log naming the quarantined file; logs: %q", logs.all())
			}
			if lost > 0 && strings.Contains(line, "unreadable=0") {
				t.Fatalf("the log must count what could not be read: %s", line)
			}

			// The salvaged spool is a normal one: it survives a reopen and
			// takes new records after the salvaged ones.
			mustAppend(t, s, "after")
			s = reopen(t, s)
			if got := bodies(readAll(t, s)); got[len(got)-1] != "after" || len(got) != len(wantQueued)-lost+1 {
				t.Fatalf("after reopen: %d records, last %q", len(got), got[len(got)-1])
			}
		})
	}
}

func TestSalvageStopsAtMaxBytes(t *testing.T) {
	path := tempPath(t)
	s, _ := filledSpool(t, path, 2000)
	used := s.Stats().QueuedBytes
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	markUnclean(t, path)
	root, ps := queueRootPage(t, path)
	patchPage(t, path, root, ps, func(p []byte) {
		e := pageHeaderSize + elemSize
		pos, ksize := int(ne.Uint32(p[e:])), int(ne.Uint32(p[e+4:]))
		clear(p[e+pos : e+pos+ksize])
	})
	logs := &logRecorder{}
	s = mustOpenSpool(t, Options{Path: path, Logger: slogNew(logs), MaxBytes: used / 2})
	st := s.Stats()
	if st.Quarantined == "" || st.Salvaged == 0 || st.QueuedBytes > used/2 {
		t.Fatalf("stats: %+v", st)
	}
	if logs.find("ERROR", "filled up", "left=") == "" {
		t.Fatalf("want an error log saying records were left in the quarantined file; logs: %q", logs.all())
	}
	if st.DroppedFull != 0 {
		t.Fatalf("salvage must not drop records to make room: %+v", st)
	}
}

// A damaged pointer in a branch page may land on a freed page that still
// holds records delivered long ago, checksums intact. Salvage must not
// hand those out again.
func TestSalvageSkipsStalePagesBehindDamagedPointers(t *testing.T) {
	path := tempPath(t)
	s, want := filledSpool(t, path, 2000)
	ctx := context.Background()
	var delivered []uint64
	for id := uint64(6); id <= 1000; id++ {
		delivered = append(delivered, id)
	}
	if err := s.Delete(ctx, delivered...); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	markUnclean(t, path)
	image, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	root, ps := queueRootPage(t, path)
	page := func(id uint64) []byte { return image[int64(id)*ps : int64(id+1)*ps] }
	// A live branch page right above the leaves: down the first children.
	var parent uint64
	for id := root; parent == 0; {
		p := page(id)
		if ne.Uint16(p[8:]) != branchPageFlag {
			t.Fatalf("page %d on the queue's leftmost path is not a branch", id)
		}
		_, child, _ := branchElement(p, 0)
		if ne.Uint16(page(child)[8:]) == leafPageFlag {
			parent = id
		}
		id = child
	}
	// A freed leaf of the queue whose first record was delivered.
	var stale uint64
	for id := uint64(2); (int64(id)+1)*ps <= int64(len(image)) && stale == 0; id++ {
		p := page(id)
		if ne.Uint64(p) != id || ne.Uint16(p[8:]) != leafPageFlag || ne.Uint16(p[10:]) == 0 {
			continue
		}
		if _, key, _, ok := leafElement(p, 0); ok {
			if n, isKey := decodeKey(key); isKey && n > 5 && n <= 900 {
				stale = id
			}
		}
	}
	if stale == 0 || parent == 0 {
		t.Fatalf("no stale leaf (%d) or leaf parent (%d) found", stale, parent)
	}
	patchPage(t, path, parent, ps, func(p []byte) {
		ne.PutUint64(p[pageHeaderSize+elemSize+8:], stale) // element 1 now points at the stale leaf
	})

	s = mustOpenSpool(t, Options{Path: path})
	if s.Stats().Quarantined == "" {
		t.Fatal("the full check did not catch a branch pointing at a page that does not start with its key")
	}
	got := readAll(t, s)
	if len(got) == 0 {
		t.Fatal("nothing salvaged")
	}
	live := map[string]bool{}
	for _, b := range queuedInOrder(want, append(delivered, 1, 2, 3, 4, 5)...) {
		live[b] = true
	}
	for _, r := range got {
		if !live[string(r.Body)] {
			t.Fatalf("salvage handed out %q, which was delivered and deleted", r.Body)
		}
	}
}

// countingReader counts the bytes read through it.
type countingReader struct {
	r *bytes.Reader
	n int64
}

func (c *countingReader) ReadAt(p []byte, off int64) (int, error) {
	n, err := c.r.ReadAt(p, off)
	c.n += int64(n)
	return n, err
}

// Pages of a hostile file may all claim to overflow to the end of the
// file; reading them in turn must not read (or hold) the file over and
// over again.
func TestSalvageReadsEachByteOnce(t *testing.T) {
	const ps, pages = 4096, 512
	img := make([]byte, ps*pages)
	for id := uint64(2); id < pages; id++ {
		p := img[id*ps:]
		ne.PutUint64(p, id)
		ne.PutUint16(p[8:], leafPageFlag)
		ne.PutUint32(p[12:], uint32(pages-1-id)) // overflow to the last page
	}
	cr := &countingReader{r: bytes.NewReader(img)}
	w := &salvageWalker{r: cr, ps: ps, hwm: pages, visited: newBitmap(pages)}
	for id := uint64(pages - 1); id >= 2; id-- { // worst order: each one spans the last
		_, _, err := w.read(id, 0)
		if err != nil {
			t.Fatal(err)
		}
	}
	if cr.n > 2*int64(len(img)) {
		t.Fatalf("read %d bytes of a %d-byte file", cr.n, len(img))
	}
}
