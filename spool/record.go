package spool

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"time"
)

// On-disk layout of the values stored in the queue and dead buckets. Keys in
// both are the record ID as 8 bytes big-endian, so bbolt's byte order is ID
// order. All integers are big-endian. The CRC-32C covers the 8-byte key and
// every byte of the value except the CRC field itself, so a flipped bit in a
// key, a header or a body is detected instead of being forwarded upstream.
//
// Queue value (formatV1):
//
//	0  version   1 byte  (formatV1)
//	1  kind      1 byte
//	2  attempts  4 bytes
//	6  received  8 bytes  unix nanoseconds
//	14 crc32c    4 bytes
//	18 body
//
// Dead value (formatV1):
//
//	0  version   1 byte
//	1  kind      1 byte
//	2  attempts  4 bytes
//	6  received  8 bytes  unix nanoseconds
//	14 dead at   8 bytes  unix nanoseconds
//	22 status    4 bytes  two's complement int32
//	26 reason    2 bytes  length of the reason
//	28 crc32c    4 bytes
//	32 reason, then body
const (
	formatV1 = 1

	keySize        = 8
	recordHeader   = 18
	recordCRCAt    = 14
	deadHeader     = 32
	deadCRCAt      = 28
	maxReasonBytes = 1024

	// maxBodyBytes bounds one entry's body well below bbolt's value limit.
	maxBodyBytes = 1 << 30
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// errBadRecord is returned by the decoders; callers treat such a record as
// corrupt and drop it.
var errBadRecord = errors.New("bad record")

func encodeKey(id uint64) []byte {
	k := make([]byte, keySize)
	binary.BigEndian.PutUint64(k, id)
	return k
}

func decodeKey(k []byte) (uint64, bool) {
	if len(k) != keySize {
		return 0, false
	}
	return binary.BigEndian.Uint64(k), true
}

func unixNanos(t time.Time) int64 { return t.UnixNano() }

func fromNanos(n int64) time.Time { return time.Unix(0, n) }

// checksum returns the CRC-32C of key and v, skipping v[at:at+4].
func checksum(key, v []byte, at int) uint32 {
	c := crc32.Update(0, castagnoli, key)
	c = crc32.Update(c, castagnoli, v[:at])
	return crc32.Update(c, castagnoli, v[at+4:])
}

// encodeRecord builds a queue value. The key is part of the checksum, so it
// must be known; Append assigns IDs in the writer and calls sealRecord then.
func encodeRecord(kind Kind, attempts uint32, received int64, body []byte) []byte {
	v := make([]byte, recordHeader+len(body))
	v[0] = formatV1
	v[1] = byte(kind)
	binary.BigEndian.PutUint32(v[2:], attempts)
	binary.BigEndian.PutUint64(v[6:], uint64(received))
	copy(v[recordHeader:], body)
	return v
}

// sealRecord stores the checksum of a queue value under key.
func sealRecord(key, v []byte) {
	binary.BigEndian.PutUint32(v[recordCRCAt:], checksum(key, v, recordCRCAt))
}

// recordHead is the fixed part of a queue value, decoded without touching
// the body.
type recordHead struct {
	kind     Kind
	attempts uint32
	received int64
}

func decodeRecordHead(v []byte) (recordHead, error) {
	if len(v) < recordHeader {
		return recordHead{}, fmt.Errorf("%w: %d bytes is shorter than the %d-byte header", errBadRecord, len(v), recordHeader)
	}
	if v[0] != formatV1 {
		return recordHead{}, fmt.Errorf("%w: unknown format version %d", errBadRecord, v[0])
	}
	k := Kind(v[1])
	if !k.valid() {
		return recordHead{}, fmt.Errorf("%w: unknown kind %d", errBadRecord, v[1])
	}
	return recordHead{
		kind:     k,
		attempts: binary.BigEndian.Uint32(v[2:]),
		received: int64(binary.BigEndian.Uint64(v[6:])),
	}, nil
}

// verifyRecord checks a queue value stored under key, checksum included,
// and returns its header.
func verifyRecord(key, v []byte) (recordHead, error) {
	if len(key) != keySize {
		return recordHead{}, fmt.Errorf("%w: key is %d bytes, want %d", errBadRecord, len(key), keySize)
	}
	h, err := decodeRecordHead(v)
	if err != nil {
		return recordHead{}, err
	}
	if got, want := checksum(key, v, recordCRCAt), binary.BigEndian.Uint32(v[recordCRCAt:]); got != want {
		return recordHead{}, fmt.Errorf("%w: checksum mismatch", errBadRecord)
	}
	return h, nil
}

// decodeRecord checks and decodes a queue value stored under key. The body
// is copied, so the result stays valid after the transaction ends.
func decodeRecord(key, v []byte) (Record, error) {
	h, err := verifyRecord(key, v)
	if err != nil {
		return Record{}, err
	}
	return Record{
		ID:       binary.BigEndian.Uint64(key),
		Kind:     h.kind,
		Body:     append([]byte(nil), v[recordHeader:]...),
		Received: fromNanos(h.received),
		Attempts: h.attempts,
	}, nil
}

// encodeDead builds a dead value for the record r (whose ID is the key).
func encodeDead(r Record, status int, reason string, deadAt time.Time) []byte {
	if len(reason) > maxReasonBytes {
		reason = reason[:maxReasonBytes]
	}
	v := make([]byte, deadHeader+len(reason)+len(r.Body))
	v[0] = formatV1
	v[1] = byte(r.Kind)
	binary.BigEndian.PutUint32(v[2:], r.Attempts)
	binary.BigEndian.PutUint64(v[6:], uint64(unixNanos(r.Received)))
	binary.BigEndian.PutUint64(v[14:], uint64(unixNanos(deadAt)))
	binary.BigEndian.PutUint32(v[22:], uint32(int32(status)))
	binary.BigEndian.PutUint16(v[26:], uint16(len(reason)))
	copy(v[deadHeader:], reason)
	copy(v[deadHeader+len(reason):], r.Body)
	binary.BigEndian.PutUint32(v[deadCRCAt:], checksum(encodeKey(r.ID), v, deadCRCAt))
	return v
}

// decodeDeadReceived returns the Received time of a dead value without
// checking it further; the sweep uses it to find expired dead letters.
func decodeDeadReceived(v []byte) (int64, error) {
	if len(v) < deadHeader || v[0] != formatV1 {
		return 0, fmt.Errorf("%w: bad dead letter header", errBadRecord)
	}
	return int64(binary.BigEndian.Uint64(v[6:])), nil
}

// decodeDead checks and decodes a dead value stored under key, copying
// everything out of v.
func decodeDead(key, v []byte) (DeadLetter, error) {
	id, ok := decodeKey(key)
	if !ok {
		return DeadLetter{}, fmt.Errorf("%w: key is %d bytes, want %d", errBadRecord, len(key), keySize)
	}
	if len(v) < deadHeader {
		return DeadLetter{}, fmt.Errorf("%w: %d bytes is shorter than the %d-byte header", errBadRecord, len(v), deadHeader)
	}
	if v[0] != formatV1 {
		return DeadLetter{}, fmt.Errorf("%w: unknown format version %d", errBadRecord, v[0])
	}
	k := Kind(v[1])
	if !k.valid() {
		return DeadLetter{}, fmt.Errorf("%w: unknown kind %d", errBadRecord, v[1])
	}
	rl := int(binary.BigEndian.Uint16(v[26:]))
	if rl > maxReasonBytes || deadHeader+rl > len(v) {
		return DeadLetter{}, fmt.Errorf("%w: reason length %d out of range", errBadRecord, rl)
	}
	if got, want := checksum(key, v, deadCRCAt), binary.BigEndian.Uint32(v[deadCRCAt:]); got != want {
		return DeadLetter{}, fmt.Errorf("%w: checksum mismatch", errBadRecord)
	}
	return DeadLetter{
		Record: Record{
			ID:       id,
			Kind:     k,
			Body:     append([]byte(nil), v[deadHeader+rl:]...),
			Received: fromNanos(int64(binary.BigEndian.Uint64(v[6:]))),
			Attempts: binary.BigEndian.Uint32(v[2:]),
		},
		DeadAt: fromNanos(int64(binary.BigEndian.Uint64(v[14:]))),
		Status: int(int32(binary.BigEndian.Uint32(v[22:]))),
		Reason: string(v[deadHeader : deadHeader+rl]),
	}, nil
}

// counters are the persisted gauges, stored in the meta bucket under
// keyCounters in the same transaction as the change they describe.
type counters struct {
	queued, queuedBytes, dead, deadBytes int64
}

const countersSize = 4*8 + 4

func (c counters) encode() []byte {
	v := make([]byte, countersSize)
	binary.BigEndian.PutUint64(v[0:], uint64(c.queued))
	binary.BigEndian.PutUint64(v[8:], uint64(c.queuedBytes))
	binary.BigEndian.PutUint64(v[16:], uint64(c.dead))
	binary.BigEndian.PutUint64(v[24:], uint64(c.deadBytes))
	binary.BigEndian.PutUint32(v[32:], crc32.Checksum(v[:32], castagnoli))
	return v
}

func decodeCounters(v []byte) (counters, error) {
	if len(v) != countersSize {
		return counters{}, fmt.Errorf("counters are %d bytes, want %d", len(v), countersSize)
	}
	if crc32.Checksum(v[:32], castagnoli) != binary.BigEndian.Uint32(v[32:]) {
		return counters{}, errors.New("counters checksum mismatch")
	}
	c := counters{
		queued:      int64(binary.BigEndian.Uint64(v[0:])),
		queuedBytes: int64(binary.BigEndian.Uint64(v[8:])),
		dead:        int64(binary.BigEndian.Uint64(v[16:])),
		deadBytes:   int64(binary.BigEndian.Uint64(v[24:])),
	}
	if c.queued < 0 || c.queuedBytes < 0 || c.dead < 0 || c.deadBytes < 0 ||
		(c.queued == 0) != (c.queuedBytes == 0) || (c.dead == 0) != (c.deadBytes == 0) {
		return counters{}, fmt.Errorf("counters out of range: %+v", c)
	}
	return c, nil
}

func (c counters) used() int64 { return c.queuedBytes + c.deadBytes }
