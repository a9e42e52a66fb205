//go:build !(linux || darwin || freebsd || netbsd || openbsd || dragonfly || windows)

package spool

import (
	"os"
	"time"
)

// lockFile does nothing on these systems; bbolt's own lock (taken when the
// file is opened) is the only protection, so a second process may read the
// file while Open checks it.
func lockFile(*os.File, time.Duration) error { return nil }

func unlockForBolt(*os.File) error { return nil }
