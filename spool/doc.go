// Package spool is trackd's durable queue of events: the listener appends
// each accepted event before answering, and the forwarder reads, delivers
// and deletes them. It is a single bbolt file with three buckets: queue
// (records waiting for delivery), dead (records the forwarder gave up on)
// and meta (counters, flags and the forwarder's small state).
//
// # Basics
//
// Open the spool once per process; the file is locked against other
// processes (a second trackd gets ErrLocked). All methods are safe for
// concurrent use.
//
//	sp, err := spool.Open(spool.Options{Path: "/var/lib/trackd/spool.db", MaxBytes: 1 << 30})
//	...
//	err = sp.Append(ctx, spool.Entry{Kind: spool.KindTrack, Body: body, Received: now})
//	recs, err := sp.Read(0, 100) // the forwarder, later
//	err = sp.Delete(ctx, ids...)
//	err = sp.Close()
//
// # What durable means
//
// Append returns nil only after the bbolt transaction holding the entries
// has committed and been fsynced, so an event trackd answered 200 for
// survives a crash of the process or of the machine. Append is
// all-or-nothing: the entries of one call are stored together or not at
// all. Delete, DeadLetter, Requeue, AddAttempt and SetState are equally
// durable when they return.
//
// One goroutine, the writer, owns every write transaction. Callers hand it
// requests and wait; it takes one, then whatever else is already waiting,
// and commits them together, so concurrent appends share one fsync (group
// commit). Each request still gets its own answer: one Append being
// rejected for space does not fail the others in its commit. If the commit
// itself fails, every request in it gets the error, and Accepting reports
// it until a commit succeeds.
//
// Delivery is at least once: a record read and delivered but not yet
// deleted when trackd stops is delivered again after restart.
//
// # Ordering
//
// Records get IDs from a sequence that only grows, even across restarts
// and compactions. Read returns queued records in ascending ID order, which
// is the order the Appends committed in (entries of one call keep their
// order). Requeue moves a dead letter to the end of the queue under a new
// ID. Read pages with an ID cursor, Read(after, n), and runs in a read-only
// transaction concurrently with the writer; it never sees part of a commit.
//
// # Limits
//
// MaxBytes caps the bytes of stored records, queued and dead, key and value
// (each record carries an 18-byte header, a dead letter 32 bytes plus its
// reason). When an Append does not fit, WhenFull decides: Reject fails it
// with ErrFull and leaves stored data alone; DropOldest deletes queued
// records from the head, then dead letters once the queue is empty, until
// it fits, counting them in Stats.DroppedFull and logging one summary per
// commit. Entries that could never fit fail with ErrTooLarge under either
// policy. Moving a record to the dead letters adds at most its reason and
// 14 bytes, and is never refused for space.
//
// MaxAge drops records, queued or dead, whose Received is older than it.
// Read and ReadDead never return them; the writer deletes them from the
// heads of the buckets every MaxAge/10 (at most 30s) and deletes those
// Read skipped further back (requeued records keep their Received), counting
// them in Stats.DroppedExpired and logging a summary at warn level.
//
// The counters behind Stats are kept in the meta bucket and updated in the
// same transaction as the records, so Open does not scan the queue and no
// memory grows with the size of the spool.
//
// When the file has grown well beyond its live data (after a backlog was
// drained) it is compacted: the live data is copied to <path>.compact,
// fsynced, renamed over the file and the directory fsynced, all by the
// writer between two commits. Compaction runs only when the file uses at
// least CompactMinBytes, more than four times the live data, the live data
// is at most 32 MiB (the writer pauses while it copies), and the last
// attempt was at least a minute ago. A failed compaction leaves the file as
// it was.
//
// # Corruption handling
//
// Every record carries a CRC-32C of its key, header and body. bbolt has no
// checksums of its own on data pages and trusts what it reads: on a damaged
// file it can fault on its memory map or panic, sometimes in goroutines of
// its own where the panic cannot be recovered. So Open checks the file with
// ordinary reads before bbolt maps it.
//
// After a clean shutdown (Close sets a flag that Open clears), the check is
// quick: both meta pages, the file size against what bbolt uses (a
// truncated file), the freelist, the root and the meta bucket. After a
// crash it covers the whole file: every page bbolt can reach, every key's
// order, every record's checksum, then bbolt's own Tx.Check; the counters
// are recounted from what is there. Records whose checksum fails are
// deleted and counted in Stats.DroppedCorrupt. A file that fails the
// check, that bbolt refuses (garbage, truncated, checksum or version
// mismatch) or that makes bbolt panic is renamed to
// <path>.corrupt-<unix seconds>, the rename is fsynced, both paths are
// logged at error level, Stats.Quarantined names the new path, and a fresh
// spool starts with every record of the old file that still proves good:
// reached from its newest valid meta page, checksum intact, in queue order,
// dead letters with their status and reason (Stats.Salvaged counts them;
// see salvage.go). Open never fails and never crash-loops because of the
// file's contents. A zero-length file is simply a new spool. Lock timeouts,
// permission errors and other I/O errors are returned, never quarantined,
// and so is a bbolt file that is not a spool.
//
// While the spool runs, a panic or memory fault inside bbolt (damage that
// appeared after Open, such as bit rot after a clean start) is recovered:
// the call fails with ErrCorrupt, writes stop, Accepting reports it, and
// Close leaves the clean flag unset so the next Open checks the whole file.
// A record that fails its checksum when read is skipped and deleted.
//
// # Caveats
//
// The quick check after a clean shutdown does not read the queue's pages;
// damage there is found when they are read, as above. A damaged record
// body is always detected, never delivered.
//
// bbolt's freelist is not written on every commit (it saves a page write
// per commit and measured about 40% faster read-and-delete), only at
// Close. After a crash bbolt rebuilds it by scanning the file, so the first
// Open after a crash reads the whole file, as the check does anyway.
//
// The file only shrinks by compaction, which does not run on Windows
// (a mapped file cannot be replaced there); bbolt reuses freed pages, so
// the file stays about as large as the largest backlog it has held.
//
// Stats.Oldest is the Received of the record at the head of the queue. A
// requeued record keeps its old Received but goes to the end of the queue,
// so an older one may wait further back.
//
// Performance, measured on a 2-core VM whose fsync takes about 0.27ms
// (go test -bench . -benchtime 2s -count 3, medians): one appending
// goroutine 3,600 events/s (one fsync each); 64 appending goroutines
// 86,000 events/s at about 45 events per commit; reading and deleting in
// batches of 100, 210,000 events/s. Events were 300-byte track JSON.
package spool
