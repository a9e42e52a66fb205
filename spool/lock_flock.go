//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

package spool

import (
	"errors"
	"os"
	"syscall"
	"time"
)

const lockRetry = 50 * time.Millisecond

// lockFile takes an exclusive flock on f, retrying until timeout, and
// returns ErrLocked if another open file description holds it. bbolt later
// takes the same lock on the same descriptor, which succeeds at once.
func lockFile(f *os.File, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			return err
		}
		if time.Now().After(deadline) {
			return ErrLocked
		}
		time.Sleep(min(lockRetry, max(time.Until(deadline), time.Millisecond)))
	}
}

// unlockForBolt is a no-op: flock is held per open file description, and
// bbolt locks the same one again.
func unlockForBolt(*os.File) error { return nil }
