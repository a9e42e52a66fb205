package config

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// noEnv is a lookupEnv in which no variable is set, so tests do not depend on
// the environment they run in.
func noEnv(string) (string, bool) { return "", false }

// envOf returns a lookupEnv that sees only vars.
func envOf(vars map[string]string) func(string) (string, bool) {
	return func(name string) (string, bool) {
		v, ok := vars[name]
		return v, ok
	}
}

// header is put before generated documents so that line numbers are not
// trivially small.
const header = "# trackd test config\n# line two\n\n"

const headerLines = 3

// nested writes value at the dotted key path, one section per line, after
// header. The key ends up on line headerLines + number of path parts.
func nested(key, value string) string {
	var b strings.Builder
	b.WriteString(header)
	parts := strings.Split(key, ".")
	for i, p := range parts {
		b.WriteString(strings.Repeat("  ", i) + p + ":")
		if i == len(parts)-1 && value != "" {
			b.WriteString(" " + value)
		}
		b.WriteString("\n")
	}
	return b.String()
}

func nestedLine(key string) int { return headerLines + strings.Count(key, ".") + 1 }

func mustParse(t *testing.T, doc string, env func(string) (string, bool)) Config {
	t.Helper()
	if env == nil {
		env = noEnv
	}
	c, err := Parse([]byte(doc), env)
	if err != nil {
		t.Fatalf("Parse failed:\n%v\ndocument:\n%s", err, doc)
	}
	return c
}

// mustFail parses doc, which must be rejected with an *Error, and returns its
// problems.
func mustFail(t *testing.T, doc string, env func(string) (string, bool)) []Problem {
	t.Helper()
	if env == nil {
		env = noEnv
	}
	_, err := Parse([]byte(doc), env)
	if err == nil {
		t.Fatalf("Parse succeeded, want an error; document:\n%s", doc)
	}
	var ce *Error
	if !errors.As(err, &ce) {
		t.Fatalf("Parse error is %T (%v), want *Error", err, err)
	}
	if len(ce.Problems) == 0 {
		t.Fatal("*Error with no problems")
	}
	return ce.Problems
}

// problemFor returns the problem about key, failing the test when there is
// none.
func problemFor(t *testing.T, ps []Problem, key string) Problem {
	t.Helper()
	for _, p := range ps {
		if p.Key == key {
			return p
		}
	}
	t.Fatalf("no problem for key %q; got %s", key, fmtProblems(ps))
	return Problem{}
}

func fmtProblems(ps []Problem) string {
	return (&Error{Problems: ps}).Error()
}

// writeFile writes content to name in dir and returns its path.
func writeFile(t *testing.T, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}
