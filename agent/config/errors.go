package config

import (
	"strconv"
	"strings"
)

// Error is what Load, Parse and Validate return when the configuration is
// wrong. It holds every problem found, not just the first, so an operator can
// fix a file in one pass. Use errors.As to get at the problems.
type Error struct {
	// File is the path given to Load; empty for Parse and Validate.
	File string
	// Problems is never empty, ordered by line; problems without a line
	// (keys the file did not set) come last.
	Problems []Problem
}

// Problem is one fault in a configuration.
type Problem struct {
	// Key is the dotted path of the key at fault, such as "spool.max_bytes";
	// empty for a problem with the file as a whole (a YAML syntax error).
	Key string
	// Line is the 1-based line of the key in the original file; 0 when the
	// file did not set the key or there is no file.
	Line int
	// Message is a complete sentence that names the key in backticks and says
	// what is allowed, such as "`spool.max_bytes` must be positive; got 0".
	Message string
}

// Error formats one problem per line as "file:line: message", leaving out the
// file or the line when it is not known.
func (e *Error) Error() string {
	var b strings.Builder
	for i, p := range e.Problems {
		if i > 0 {
			b.WriteByte('\n')
		}
		switch {
		case e.File != "" && p.Line > 0:
			b.WriteString(e.File + ":" + strconv.Itoa(p.Line) + ": ")
		case e.File != "":
			b.WriteString(e.File + ": ")
		case p.Line > 0:
			b.WriteString("line " + strconv.Itoa(p.Line) + ": ")
		}
		b.WriteString(p.Message)
	}
	return b.String()
}
