// Command trackd-bench is trackd's load tool. It measures the real trackd
// binary against baselines taken in the same run, so its figures are ratios
// that mean something on a shared, noisy machine.
//
//	trackd-bench ingest  [-duration 10s] [-clients 64] [-repeat 3]
//	trackd-bench forward [-events 20000] [-concurrency 8,32] [-repeat 3]
//	trackd-bench rate    [-rate 100] [-duration 30s]
//	trackd-bench upstream [-addr 127.0.0.1:8791]
//
// serve-baseline is the baseline server ingest starts as a subprocess.
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"runtime"
)

const usage = `Usage:
  trackd-bench ingest   [-duration 10s] [-clients 64] [-repeat 1] [-trackd bin/trackd]
  trackd-bench forward  [-events 20000] [-concurrency 8,32] [-repeat 1]
  trackd-bench rate     [-rate 100] [-duration 30s]
  trackd-bench upstream [-addr 127.0.0.1:8791]
`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	var err error
	switch cmd, args := os.Args[1], os.Args[2:]; cmd {
	case "ingest":
		err = runIngest(args)
	case "serve-baseline":
		err = serveBaseline(args)
	case "forward":
		err = runForward(args)
	case "rate":
		err = runRate(args)
	case "upstream":
		err = runUpstream(args)
	case "help", "-h", "--help":
		fmt.Print(usage)
		return
	default:
		fmt.Fprintf(os.Stderr, "trackd-bench: unknown command %q\n%s", cmd, usage)
		os.Exit(2)
	}
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "trackd-bench: %v\n", err)
		os.Exit(1)
	}
}

func numCPU() int { return runtime.NumCPU() }
