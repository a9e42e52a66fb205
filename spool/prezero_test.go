//go:build unix

package spool

import (
	"context"
	"fmt"
	"os"
	"syscall"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// TestSpaceAheadIsZeroFilledNotAHole checks that the writer keeps real,
// allocated blocks above bbolt's high-water mark (so commits overwrite
// instead of allocating), and that doing so never touches stored records.
func TestSpaceAheadIsZeroFilledNotAHole(t *testing.T) {
	if !prezeroSupported {
		t.Skip("bbolt sizes the file itself on this platform")
	}
	path := tempPath(t)
	s := mustOpenSpool(t, Options{Path: path})
	want := map[string]bool{}
	for i := 0; i < 40; i++ { // 40 commits of 50 records each
		var batch []Entry
		for j := 0; j < 50; j++ {
			body := fmt.Sprintf(`{"event":"e","userId":"u-%04d-%02d","pad":"%0200d"}`, i, j, 0)
			want[body] = true
			batch = append(batch, Entry{Kind: KindTrack, Body: []byte(body), Received: time.Now()})
		}
		if err := s.Append(context.Background(), batch...); err != nil {
			t.Fatal(err)
		}
	}
	var used int64
	if err := s.view(func(tx *bolt.Tx) error { used = tx.Size(); return nil }); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	allocated := fi.Sys().(*syscall.Stat_t).Blocks * 512
	if allocated < used+prezeroAhead {
		t.Fatalf("%d bytes allocated for a file whose pages end at %d: want at least %d MiB of real blocks ahead", allocated, used, prezeroAhead>>20)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s = mustOpenSpool(t, Options{Path: path})
	recs, err := s.Read(0, 10000)
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != len(want) {
		t.Fatalf("read %d records after reopen, want %d", len(recs), len(want))
	}
	for _, r := range recs {
		if !want[string(r.Body)] {
			t.Fatalf("record %d damaged: %.60q", r.ID, r.Body)
		}
	}
}
