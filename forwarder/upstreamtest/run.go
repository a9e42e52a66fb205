package upstreamtest

import (
	"context"
	"flag"
	"fmt"
	"io"
	"sort"
	"strings"
)

// Run serves a Server until ctx ends, for the demo and the benchmark tool, in
// the shape of a thin main's run(ctx, args, stdout, stderr). Flags:
//
//	-addr  address to listen on (default 127.0.0.1:0)
//	-mode  initial mode, as ParseMode reads it (default "normal")
//
// It prints "upstreamtest listening on URL" to stdout once it listens, and a
// summary of what it received when ctx ends. The mode can be changed while it
// runs with PUT /_upstreamtest/mode.
func Run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("upstreamtest", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("addr", "127.0.0.1:0", "address to listen on")
	spec := fs.String("mode", "normal", "initial mode, e.g. \"status=429,retry-after=5\" or \"rate=50\"")
	if err := fs.Parse(args); err != nil {
		return err
	}
	m, err := ParseMode(*spec)
	if err != nil {
		return err
	}
	s, err := NewServer(*addr)
	if err != nil {
		return err
	}
	s.SetMode(m)
	fmt.Fprintf(stdout, "upstreamtest listening on %s (mode %s)\n", s.URL(), FormatMode(m))
	<-ctx.Done()
	_ = s.Close()
	st := s.Stats()
	keys := make([]string, 0, len(st.ByStatus))
	for k := range st.ByStatus {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, " %s=%d", k, st.ByStatus[k])
	}
	fmt.Fprintf(stdout, "upstreamtest received %d requests; by status:%s\n", st.Received, b.String())
	return nil
}
