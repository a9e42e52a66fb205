package reliability

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

var (
	profileFlag = flag.String("profile", "", "short (CI) or long (soak and more crash rounds); empty skips the suite")
	soakFlag    = flag.Duration("soak", 10*time.Minute, "duration of the long profile's soak fill phase")
	soakRate    = flag.Int("soak.rate", 0, "events per second offered to trackd during the soak (default: the profile's)")
	reportFlag  = flag.String("report", "", "append measured figures to this file as Markdown")
	keepFlag    = flag.Bool("keep", false, "keep the work directories of failed tests")
	raceTrackd  = flag.Bool("trackd.race", false, "build the trackd binary with -race (memory figures are then meaningless)")
)

// profile is what a test run is sized for.
type profile struct {
	name string
	// crashKills is how many times the crash loop SIGKILLs trackd.
	crashKills int
	// crashRun bounds how long trackd runs between kills.
	crashRunMin, crashRunMax time.Duration
	// shutdownRounds is how many SIGTERMs under load.
	shutdownRounds int
	// soakFill is how long the soak ingests while upstream is slower than
	// ingest; soakCycles how many more, shorter fill/drain cycles follow.
	soakFill   time.Duration
	soakCycles int
	soakCycle  time.Duration
	soakRate   float64
	// floodFor is how long the flood of 400s lasts.
	floodFor time.Duration
	// bitflipTrials is how many damaged copies of a spool are started.
	bitflipTrials int
}

func currentProfile() profile {
	switch *profileFlag {
	case "long":
		return profile{name: "long", crashKills: 100, crashRunMin: 100 * time.Millisecond, crashRunMax: 2 * time.Second,
			shutdownRounds: 10, soakFill: *soakFlag, soakCycles: 3, soakCycle: max(*soakFlag/10, 10*time.Second), soakRate: 1000,
			floodFor: 30 * time.Second, bitflipTrials: 40}
	default:
		return profile{name: "short", crashKills: 20, crashRunMin: 100 * time.Millisecond, crashRunMax: 500 * time.Millisecond,
			shutdownRounds: 3, soakFill: 8 * time.Second, soakCycles: 2, soakCycle: 3 * time.Second, soakRate: 1000,
			floodFor: 4 * time.Second, bitflipTrials: 8}
	}
}

var prof profile

// binDir holds the trackd binary built for this run.
var binDir string

func TestMain(m *testing.M) {
	flag.Parse()
	if *profileFlag != "" && *profileFlag != "short" && *profileFlag != "long" {
		fmt.Fprintf(os.Stderr, "reliability: -profile must be short or long, not %q\n", *profileFlag)
		os.Exit(2)
	}
	prof = currentProfile()
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// needProfile skips the test unless a profile was chosen: the suite is run
// by make test-reliability, not by go test ./... .
func needProfile(t *testing.T) {
	t.Helper()
	if *profileFlag == "" {
		t.Skip("the reliability suite runs with -args -profile=short|long (make test-reliability)")
	}
}

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// trackdBinary builds cmd/trackd once per test run, without -race unless
// asked: memory figures are measured on it and must be those of the
// shipped binary.
func trackdBinary(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "trackd-rel-bin-")
		if err != nil {
			buildErr = err
			return
		}
		binDir = dir
		binPath = filepath.Join(dir, "trackd")
		args := []string{"build", "-o", binPath}
		if *raceTrackd {
			args = append(args, "-race")
		}
		args = append(args, "github.com/trackd/trackd/cmd/trackd")
		cmd := exec.Command("go", args...)
		cmd.Env = os.Environ()
		if !*raceTrackd {
			cmd.Env = append(cmd.Env, "CGO_ENABLED=0")
		}
		start := time.Now()
		out, err := cmd.CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go %s: %v\n%s", strings.Join(args, " "), err, out)
			return
		}
		fmt.Fprintf(os.Stderr, "reliability: built trackd in %s (profile %s)\n", time.Since(start).Round(time.Millisecond), prof.name)
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}
