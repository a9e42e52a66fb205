//go:build reliability

package reliability

import (
	"flag"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/trackd/trackd/internal/trackdtest"
)

var (
	profileFlag = flag.String("profile", "short", "short (CI) or long (soak and more crash rounds)")
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

func TestMain(m *testing.M) {
	flag.Parse()
	if *profileFlag != "short" && *profileFlag != "long" {
		fmt.Fprintf(os.Stderr, "reliability: -profile must be short or long, not %q\n", *profileFlag)
		os.Exit(2)
	}
	prof = currentProfile()
	code := m.Run()
	trackdtest.Cleanup()
	os.Exit(code)
}

// trackdBinary builds cmd/trackd once per test run, without -race unless
// asked: memory figures are measured on it and must be those of the
// shipped binary.
func trackdBinary(t testing.TB) string {
	t.Helper()
	path, err := trackdtest.Binary(*raceTrackd)
	if err != nil {
		t.Fatal(err)
	}
	return path
}
