// Command trackd is the local forwarding agent for the Track HTTP API. All of
// its behaviour lives in package agent; this file only maps the process onto
// agent.Main.
package main

import (
	"context"
	"os"

	"github.com/trackd/trackd/agent"
)

func main() {
	os.Exit(agent.Main(context.Background(), os.Args[1:], os.Stdout, os.Stderr))
}
