package agent

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

func runMain(args ...string) (code int, stdout, stderr string) {
	var out, errb bytes.Buffer
	code = Main(context.Background(), args, &out, &errb)
	return code, out.String(), errb.String()
}

func TestCommandLine(t *testing.T) {
	dir := t.TempDir()
	good := writeConfigFile(t, dir, `
listen: {http: "127.0.0.1:0", auth_token: "tok-SECRET-123"}
upstream: {api_key: "key-SECRET-456"}
spool: {path: ./spool.db}
`)
	badDir := t.TempDir()
	bad := writeConfigFile(t, badDir, `
listen: {http: "", unix: ""}
upstream: {timeout: 10, rate: -1}
spool: {when_full: sometimes}
colour: blue
`)
	cases := []struct {
		name       string
		args       []string
		code       int
		wantOut    []string
		wantErr    []string
		notWantAny []string
	}{
		{"version", []string{"version"}, 0, []string{"trackd " + Version}, nil, nil},
		{"help", []string{"help"}, 0, []string{"trackd run", "trackd check"}, nil, nil},
		{"help on a command shows its flags", []string{"help", "check"}, 0, []string{"-config"}, nil, nil},
		{"-h on a command", []string{"run", "-h"}, 0, nil, []string{"-config"}, nil},
		{"no command", nil, 2, nil, []string{"no command given", "Usage:"}, nil},
		{"unknown command", []string{"frobnicate"}, 2, nil, []string{`unknown command "frobnicate"`, "Usage:"}, nil},
		{"bad flag", []string{"check", "-nope"}, 2, nil, []string{"-nope", "Usage:"}, nil},
		{"stray argument", []string{"check", "-config", good, "extra"}, 2, nil, []string{`"extra"`}, nil},
		{"check prints the effective config without secrets", []string{"check", "-config", good}, 0,
			[]string{"is valid", "max_body_bytes: 65536", "when_full: reject", "auth_token: '***'", filepath.Join(dir, "spool.db")}, nil,
			[]string{"SECRET"}},
		{"check lists every problem", []string{"check", "-config", bad}, 2, nil,
			[]string{"`colour`", "`upstream.timeout`", "`upstream.rate`", "`spool.when_full`", "listen"}, nil},
		{"check on a missing file", []string{"check", "-config", filepath.Join(dir, "absent.yaml")}, 2, nil, []string{"absent.yaml"}, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errOut := runMain(tc.args...)
			if code != tc.code {
				t.Fatalf("exit code = %d, want %d\nstdout: %s\nstderr: %s", code, tc.code, out, errOut)
			}
			for _, w := range tc.wantOut {
				if !strings.Contains(out, w) {
					t.Errorf("stdout lacks %q:\n%s", w, out)
				}
			}
			for _, w := range tc.wantErr {
				if !strings.Contains(errOut, w) {
					t.Errorf("stderr lacks %q:\n%s", w, errOut)
				}
			}
			for _, w := range tc.notWantAny {
				if strings.Contains(out+errOut, w) {
					t.Errorf("output contains %q:\n%s%s", w, out, errOut)
				}
			}
		})
	}
}

func TestRunFailsWithExit1WhenThePortIsInUse(t *testing.T) {
	dir := shortTempDir(t)
	busy := startAgent(t, testConfig(t))
	cfg := writeConfigFile(t, dir, fmt.Sprintf("listen: {http: %q}\nspool: {path: ./spool.db}\n", strings.TrimPrefix(busy.tcpURL, "http://")))
	code, _, errOut := runMain("run", "-config", cfg)
	if code != 1 || !strings.Contains(errOut, "in use") {
		t.Fatalf("exit %d, stderr %s; want 1 and an address-in-use error", code, errOut)
	}
}

func TestSecondTrackdOnTheSameSpoolFailsFast(t *testing.T) {
	cfg := testConfig(t)
	startAgent(t, cfg)
	dir := shortTempDir(t)
	path := writeConfigFile(t, dir, fmt.Sprintf("listen: {http: \"127.0.0.1:0\"}\nspool: {path: %q}\n", cfg.Spool.Path))
	start := time.Now()
	code, _, errOut := runMain("run", "-config", path)
	if code != 1 || !strings.Contains(errOut, cfg.Spool.Path) || !strings.Contains(errOut, "another trackd") {
		t.Fatalf("exit %d, stderr %s; want 1 and an error naming the spool path", code, errOut)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("took %s to fail; want a few seconds", d)
	}
}

// TestSIGTERMShutsDownCleanly runs the real binary, sends SIGTERM while it
// serves, and expects exit 0 with the socket file removed.
func TestSIGTERMShutsDownCleanly(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the trackd binary")
	}
	dir := shortTempDir(t)
	sock := filepath.Join(dir, "t.sock")
	cfgPath := writeConfigFile(t, dir, fmt.Sprintf("listen: {http: \"\", unix: %q}\nupstream: {url: \"http://%s\", api_key: k}\nspool: {path: ./spool.db}\nshutdown: {timeout: 5s}\n", sock, closedAddr(t)))
	p := startProcess(t, cfgPath)
	waitReady(t, p, sock)
	c := unixClient(sock)
	defer c.CloseIdleConnections()
	if r := do(t, c, "POST", "http://trackd/api/v1/track", nil, []byte(validTrack)); r.status != 200 {
		t.Fatalf("status %d", r.status)
	}
	start := time.Now()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	err := <-p.done
	p.done <- nil
	if err != nil {
		t.Fatalf("exit: %v\n%s", err, p.stderr)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("shutdown took %s, more than shutdown.timeout", d)
	}
	if _, err := os.Lstat(sock); !os.IsNotExist(err) {
		t.Errorf("socket file left behind: %v", err)
	}
	if recs := spoolRecords(t, filepath.Join(dir, "spool.db")); len(recs) != 1 {
		t.Errorf("spool holds %d records after shutdown, want 1", len(recs))
	}
}
