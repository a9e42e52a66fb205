package spool

import (
	"bytes"
	"context"
	"os"
	"testing"
	"time"
)

// FuzzDecodeRecord feeds arbitrary bytes to the value decoders: they must
// return an error or a value that encodes back to the same bytes, and
// never panic. Seeds are in testdata/fuzz/FuzzDecodeRecord.
func FuzzDecodeRecord(f *testing.F) {
	key := encodeKey(42)
	rec := encodeRecord(KindTrack, 3, time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC).UnixNano(), []byte(`{"event":"x"}`))
	sealRecord(key, rec)
	f.Add(rec)
	f.Add(encodeDead(Record{ID: 42, Kind: KindIdentify, Body: []byte("{}"), Received: time.Unix(1, 0)}, 422, "bad", time.Unix(2, 0)))
	f.Add(counters{1, 2, 3, 4}.encode())
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, v []byte) {
		if r, err := decodeRecord(key, v); err == nil {
			again := encodeRecord(r.Kind, r.Attempts, r.Received.UnixNano(), r.Body)
			sealRecord(key, again)
			if !bytes.Equal(again, v) {
				t.Fatalf("decoded %+v from %x, which encodes to %x", r, v, again)
			}
		}
		if _, err := decodeRecordHead(v); err == nil && len(v) < recordHeader {
			t.Fatalf("a %d-byte value has no header", len(v))
		}
		if d, err := decodeDead(key, v); err == nil {
			d.ID = 42
			if again := encodeDead(d.Record, d.Status, d.Reason, d.DeadAt); !bytes.Equal(again, v) {
				t.Fatalf("decoded %+v from %x, which encodes to %x", d, v, again)
			}
		}
		_, _ = decodeDeadReceived(v)
		if c, err := decodeCounters(v); err == nil && !bytes.Equal(c.encode(), v) {
			t.Fatalf("counters %+v from %x", c, v)
		}
	})
}

// FuzzSpoolFile feeds arbitrary files to the two readers of untrusted spool
// files: the check Open runs before bbolt maps a file, and the salvage walk
// over a quarantined one. Neither may panic or hang, and salvage may only
// hand out records that verify. The seed is a real spool file.
func FuzzSpoolFile(f *testing.F) {
	path := f.TempDir() + "/spool.db"
	s, err := Open(Options{Path: path, Logger: discardLogger()})
	if err != nil {
		f.Fatal(err)
	}
	ctx := context.Background()
	for i := range 40 {
		if err := s.Append(ctx, Entry{Kind: KindTrack, Body: trackBody(i)}); err != nil {
			f.Fatal(err)
		}
	}
	if err := s.DeadLetter(ctx, 1, 400, "bad"); err != nil {
		f.Fatal(err)
	}
	if err := s.Close(); err != nil {
		f.Fatal(err)
	}
	used, _ := usedBytes(f, path)
	b, err := os.ReadFile(path)
	if err != nil {
		f.Fatal(err)
	}
	f.Logf("seed: %d bytes", used)
	f.Add(b[:used])
	f.Fuzz(func(t *testing.T, b []byte) {
		r := bytes.NewReader(b)
		_, _ = checkFile(r, int64(len(b)))
		_, err := salvageRecords(r, int64(len(b)), func(x salvaged) error {
			if !bytes.Contains(b, x.rec.Body) {
				t.Fatalf("salvaged a body that is not in the file: %q", x.rec.Body)
			}
			return nil
		})
		if err != nil {
			t.Fatalf("salvage of an in-memory file failed: %v", err)
		}
	})
}
