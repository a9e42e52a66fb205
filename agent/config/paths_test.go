package config

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestLoadResolvesRelativePathsAgainstTheConfigFile(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name                string
		spool, unix         string
		wantSpool, wantUnix string
	}{
		{"relative paths join the file's directory", "./data/spool.db", "s.sock",
			filepath.Join(dir, "data", "spool.db"), filepath.Join(dir, "s.sock")},
		{"parent references are cleaned", "../spool.db", "",
			filepath.Join(filepath.Dir(dir), "spool.db"), ""},
		{"absolute paths are kept", "/var/lib/x/spool.db", "/tmp/x.sock",
			"/var/lib/x/spool.db", "/tmp/x.sock"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := writeFile(t, dir, "config.yaml",
				"listen:\n  unix: \""+tc.unix+"\"\nspool:\n  path: \""+tc.spool+"\"\n")
			c, err := Load(path, noEnv)
			if err != nil {
				t.Fatal(err)
			}
			if c.Spool.Path != tc.wantSpool || c.Listen.Unix != tc.wantUnix {
				t.Errorf("spool.path = %q, listen.unix = %q; want %q, %q", c.Spool.Path, c.Listen.Unix, tc.wantSpool, tc.wantUnix)
			}
		})
	}
}

func TestLoadDoesNotDependOnTheWorkingDirectory(t *testing.T) {
	dir := t.TempDir()
	path := writeFile(t, dir, "config.yaml", "spool:\n  path: spool.db\n")
	t.Chdir("/")
	c, err := Load(path, noEnv)
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(dir, "spool.db"); c.Spool.Path != want {
		t.Errorf("spool.path = %q, want %q", c.Spool.Path, want)
	}
}

func TestResolvePathsMakesARelativeBaseAbsolute(t *testing.T) {
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	c := Default()
	c.Spool.Path = "spool.db"
	c.ResolvePaths("etc")
	if want := filepath.Join(wd, "etc", "spool.db"); c.Spool.Path != want {
		t.Errorf("spool.path = %q, want %q", c.Spool.Path, want)
	}
	if c.Listen.Unix != "" {
		t.Errorf("empty listen.unix became %q", c.Listen.Unix)
	}
}

func TestParseLeavesRelativePathsAlone(t *testing.T) {
	c := mustParse(t, "spool:\n  path: ./data/spool.db\n", nil)
	if c.Spool.Path != "./data/spool.db" {
		t.Errorf("spool.path = %q", c.Spool.Path)
	}
}

func TestLoadChecksTheSocketPathLengthAfterResolving(t *testing.T) {
	dir := filepath.Join(t.TempDir(), strings.Repeat("d", 100))
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	path := writeFile(t, dir, "config.yaml", "\nlisten:\n  unix: t.sock\n")
	_, err := Load(path, noEnv)
	var ce *Error
	if !errors.As(err, &ce) {
		t.Fatalf("Load = %v, want *Error", err)
	}
	p := problemFor(t, ce.Problems, "listen.unix")
	if p.Line != 3 || !strings.Contains(p.Message, "shorter than 104 bytes") {
		t.Errorf("got %+v", p)
	}
}

func TestLoadErrorsNameTheFileAndLine(t *testing.T) {
	path := writeFile(t, t.TempDir(), "trackd.yaml", "log:\n  level: verbose\n")
	_, err := Load(path, noEnv)
	want := path + ":2: `log.level` must be one of debug, info, warn, error; got \"verbose\""
	if err == nil || err.Error() != want {
		t.Errorf("Load error = %v, want %s", err, want)
	}
	var ce *Error
	if !errors.As(err, &ce) || ce.File != path {
		t.Errorf("error is %#v, want *Error with File %q", err, path)
	}
}

func TestLoadOfAMissingFileIsNotAConfigError(t *testing.T) {
	_, err := Load(filepath.Join(t.TempDir(), "nope.yaml"), noEnv)
	var ce *Error
	if !errors.Is(err, fs.ErrNotExist) || errors.As(err, &ce) {
		t.Errorf("Load = %v, want a wrapped fs.ErrNotExist", err)
	}
}
