// Package trackdtest builds the real trackd binary for tests that run it as
// a subprocess (crash tests, the reliability suite). It promises one build
// per flavour per test binary, and removes what it built on Cleanup.
package trackdtest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
)

var (
	mu     sync.Mutex
	builds = map[bool]*build{} // by race
	dirs   []string
)

type build struct {
	once sync.Once
	path string
	err  error
}

// Binary returns the path of cmd/trackd built for this test run, building
// it on first use. With race it is built with the race detector; without,
// as shipped (CGO_ENABLED=0), so memory figures measured on it are the
// real ones.
func Binary(race bool) (string, error) {
	mu.Lock()
	b := builds[race]
	if b == nil {
		b = &build{}
		builds[race] = b
	}
	mu.Unlock()
	b.once.Do(func() { b.path, b.err = buildTrackd(race) })
	return b.path, b.err
}

func buildTrackd(race bool) (string, error) {
	dir, err := os.MkdirTemp("", "trackd-bin-")
	if err != nil {
		return "", fmt.Errorf("build trackd: %w", err)
	}
	mu.Lock()
	dirs = append(dirs, dir)
	mu.Unlock()
	path := filepath.Join(dir, "trackd")
	args := []string{"build", "-o", path}
	env := os.Environ()
	if race {
		args = append(args, "-race")
	} else {
		env = append(env, "CGO_ENABLED=0")
	}
	args = append(args, "github.com/trackd/trackd/cmd/trackd")
	cmd := exec.Command("go", args...)
	cmd.Env = env
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	return path, nil
}

// Cleanup removes every binary Binary built. Call it from TestMain after
// the tests ran.
func Cleanup() {
	mu.Lock()
	defer mu.Unlock()
	for _, d := range dirs {
		os.RemoveAll(d)
	}
	dirs = nil
	builds = map[bool]*build{}
}
