//go:build windows

package spool

import (
	"errors"
	"os"
	"time"

	"golang.org/x/sys/windows"
)

const lockRetry = 50 * time.Millisecond

// bbolt locks the byte range -1..0; the spool locks the same range so the
// two agree on who holds the file.
func lockRange() *windows.Overlapped {
	const m1 = (1 << 32) - 1
	return &windows.Overlapped{Offset: m1, OffsetHigh: m1}
}

// lockFile takes an exclusive lock on f, retrying until timeout, and
// returns ErrLocked if another handle holds it.
func lockFile(f *os.File, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		err := windows.LockFileEx(windows.Handle(f.Fd()),
			windows.LOCKFILE_EXCLUSIVE_LOCK|windows.LOCKFILE_FAIL_IMMEDIATELY, 0, 1, 0, lockRange())
		if err == nil {
			return nil
		}
		if !errors.Is(err, windows.ERROR_LOCK_VIOLATION) {
			return err
		}
		if time.Now().After(deadline) {
			return ErrLocked
		}
		time.Sleep(min(lockRetry, max(time.Until(deadline), time.Millisecond)))
	}
}

// unlockForBolt releases the lock just before bbolt takes it again on the
// same handle: Windows locks are not re-entrant. If another process takes
// it in between, bbolt times out and Open reports ErrLocked.
func unlockForBolt(f *os.File) error {
	return windows.UnlockFileEx(windows.Handle(f.Fd()), 0, 1, 0, lockRange())
}
