package spool

import (
	"bytes"
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
