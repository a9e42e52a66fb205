package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strings"

	"gopkg.in/yaml.v3"
)

// EnvAPIKey names the environment variable that overrides upstream.api_key
// when it is set to a non-empty value.
const EnvAPIKey = "TRACKD_API_KEY"

// Load reads the YAML file at path and builds a Config as Parse does, except
// that relative paths are resolved against the file's directory (see
// ResolvePaths) before validation, and problems are reported against path.
// lookupEnv resolves ${NAME} references and TRACKD_API_KEY; nil means
// os.LookupEnv.
//
// A configuration fault is returned as an *Error listing every problem; a
// file that cannot be read gives an ordinary wrapped error.
func Load(path string, lookupEnv func(string) (string, bool)) (Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return Config{}, fmt.Errorf("read config: %w", err)
	}
	dir := filepath.Dir(path)
	c, cerr := build(data, lookupEnv, &dir)
	if cerr != nil {
		cerr.File = path
		return Config{}, cerr
	}
	return c, nil
}

// Parse builds a Config from YAML: Default, overlaid strictly with data,
// ${NAME} references expanded, TRACKD_API_KEY applied, normalised and
// validated. Relative paths are left as they are; Load resolves them. An empty
// document gives Default. lookupEnv nil means os.LookupEnv.
//
// Every problem found is returned at once in an *Error.
func Parse(data []byte, lookupEnv func(string) (string, bool)) (Config, error) {
	c, cerr := build(data, lookupEnv, nil)
	if cerr != nil {
		return Config{}, cerr
	}
	return c, nil
}

// build runs the whole pipeline. baseDir, when not nil, is where relative
// paths are resolved from.
func build(data []byte, lookupEnv func(string) (string, bool), baseDir *string) (Config, *Error) {
	if lookupEnv == nil {
		lookupEnv = os.LookupEnv
	}
	d := &decoder{env: lookupEnv, lines: map[string]int{}, failed: map[string]bool{}}
	c := Default()
	if !d.document(data, &c) {
		return Config{}, &Error{Problems: d.problems}
	}
	if v, ok := lookupEnv(EnvAPIKey); ok && v != "" {
		c.Upstream.APIKey = Secret(v)
	}
	c.normalise()
	if baseDir != nil {
		c.ResolvePaths(*baseDir)
	}
	problems := d.problems
	for _, p := range c.problems() {
		if d.failed[p.Key] {
			continue // already reported as undecodable; its value is the default
		}
		p.Line = d.lines[p.Key]
		problems = append(problems, p)
	}
	if len(problems) == 0 {
		return c, nil
	}
	sort.SliceStable(problems, func(i, j int) bool {
		li, lj := problems[i].Line, problems[j].Line
		if li == 0 || lj == 0 {
			return li != 0 && lj == 0
		}
		return li < lj
	})
	return Config{}, &Error{Problems: problems}
}

// normalise puts values that have more than one acceptable spelling into
// their canonical form.
func (c *Config) normalise() {
	// Enum values are matched case-insensitively; an unknown one is left as
	// written, so the error quotes what the file says.
	for _, e := range []struct {
		v       *string
		allowed []string
	}{{&c.Log.Level, logLevelValues}, {&c.Log.Format, logFormatValues}, {&c.Spool.WhenFull, whenFullValues}} {
		if lower := strings.ToLower(*e.v); slices.Contains(e.allowed, lower) {
			*e.v = lower
		}
	}
	if u, err := url.Parse(c.Upstream.URL); err == nil && u.Host != "" {
		c.Upstream.URL = strings.TrimRight(c.Upstream.URL, "/")
	}
}

// decoder lays a YAML node tree over a Config, walking the tree and the
// struct together. It is strict where yaml.v3's Node.Decode cannot be (it has
// no KnownFields), it expands ${NAME} in scalar values without re-encoding the
// tree, so every line it reports is a line of the original file, and it keeps
// going after a fault so that all of them are reported.
type decoder struct {
	env      func(string) (string, bool)
	lines    map[string]int  // key path -> line of the key in the file
	failed   map[string]bool // key paths whose value could not be decoded
	problems []Problem
}

func (d *decoder) addf(key string, line int, format string, args ...any) {
	d.problems = append(d.problems, Problem{Key: key, Line: line, Message: fmt.Sprintf(format, args...)})
}

var yamlLineErr = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

// document parses data into c. It reports false when the file could not be
// parsed as YAML at all, in which case nothing else is worth reporting.
func (d *decoder) document(data []byte, c *Config) bool {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return true // an empty file: all defaults
		}
		d.syntaxError(err, data)
		return false
	}
	var next yaml.Node
	if err := dec.Decode(&next); !errors.Is(err, io.EOF) {
		if err != nil {
			d.syntaxError(err, data)
		} else {
			d.addf("", next.Line, "the file must hold a single YAML document; another starts here")
		}
		return false
	}
	if len(doc.Content) == 0 {
		return true
	}
	d.section("", doc.Content[0].Line, doc.Content[0], reflect.ValueOf(c).Elem())
	return true
}

func (d *decoder) syntaxError(err error, data []byte) {
	msg := err.Error()
	line := 0
	if m := yamlLineErr.FindStringSubmatch(msg); m != nil {
		_, _ = fmt.Sscan(m[1], &line)
		msg = m[2]
	} else {
		msg = strings.TrimPrefix(msg, "yaml: ")
	}
	for i, l := range strings.Split(string(data), "\n") {
		if bracketValue.MatchString(l) {
			msg += fmt.Sprintf(" (line %d: a value that starts with [ is read as a YAML list; quote an IPv6 address, as in \"[::1]:8790\")", i+1)
			break
		}
	}
	d.addf("", line, "invalid YAML: %s", msg)
}

// bracketValue matches a line whose value is an unquoted bracketed IPv6
// address, the likeliest cause of a syntax error in a trackd config.
var bracketValue = regexp.MustCompile(`^\s*[\w-]+:\s*\[[^\]]*\]:`)

// section decodes mapping node n into struct v. path is the key path of the
// section ("" for the whole file) and line the line of its key.
func (d *decoder) section(path string, line int, n *yaml.Node, v reflect.Value) {
	n = deref(n)
	if isNull(n) {
		return // "log:" with every key commented out keeps the defaults
	}
	t := v.Type()
	if n.Kind != yaml.MappingNode {
		d.failed[path] = true
		what := "the configuration"
		if path != "" {
			what = "`" + path + "`"
		}
		d.addf(path, line, "%s must be a mapping with the keys %s; got %s", what, strings.Join(fieldNames(t), ", "), kindName(n))
		return
	}
	seen := map[string]int{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, val := n.Content[i], n.Content[i+1]
		if k.Kind != yaml.ScalarNode {
			d.addf(path, k.Line, "%s: keys must be plain names; got %s", where(path), kindName(k))
			continue
		}
		key := joinKey(path, k.Value)
		if k.ShortTag() == "!!merge" {
			d.addf(path, k.Line, "%s: merge keys (<<) are not supported; write the keys out", where(path))
			continue
		}
		if first, dup := seen[k.Value]; dup {
			d.addf(key, k.Line, "`%s` is set twice; it was first set on line %d", key, first)
			continue
		}
		seen[k.Value] = k.Line
		fi, ok := fieldIndex(t, k.Value)
		if !ok {
			d.unknownKey(path, key, k, t)
			continue
		}
		d.lines[key] = k.Line
		fv := v.Field(fi)
		if fv.Kind() == reflect.Struct {
			d.section(key, k.Line, val, fv)
		} else {
			d.leaf(key, k.Line, val, fv)
		}
	}
}

func (d *decoder) unknownKey(path, key string, k *yaml.Node, t reflect.Type) {
	names := fieldNames(t)
	hint := ""
	if s := suggest(k.Value, names); s != "" {
		hint = fmt.Sprintf(" (did you mean `%s`?)", joinKey(path, s))
	}
	d.addf(key, k.Line, "unknown key `%s`%s; %s takes %s", key, hint, where(path), strings.Join(names, ", "))
}

// leaf decodes scalar node n into v, one of the leaf types of Config.
func (d *decoder) leaf(key string, line int, n *yaml.Node, v reflect.Value) {
	n = deref(n)
	ptr := v.Addr().Interface()
	want := describe(ptr)
	fail := func(format string, args ...any) {
		d.failed[key] = true
		d.addf(key, line, format, args...)
	}
	if n.Kind != yaml.ScalarNode {
		fail("`%s` must be %s; got %s", key, want, kindName(n))
		return
	}
	if isNull(n) {
		switch p := ptr.(type) {
		case *string:
			*p = ""
		case *Secret:
			*p = ""
		default:
			fail("`%s` has no value; it must be %s", key, want)
		}
		return
	}
	text, err := expand(n.Value, d.env)
	if err != nil {
		fail("`%s` %v", key, err)
		return
	}
	switch p := ptr.(type) {
	case *string:
		*p = text
	case *Secret:
		*p = Secret(text)
	case *int:
		*p, err = parseInt(text)
	case *float64:
		*p, err = parseFloat(text)
	case *Duration:
		*p, err = parseDuration(text)
	case *Size:
		*p, err = parseSize(text)
	case *FileMode:
		*p, err = parseFileMode(text)
	default:
		panic(fmt.Sprintf("config: no decoder for %T at %s", ptr, key))
	}
	if err != nil {
		fail("`%s` %v", key, err)
	}
}

// describe says, for error messages, what a leaf of this type must be.
func describe(ptr any) string {
	switch ptr.(type) {
	case *string, *Secret:
		return "a string"
	case *int:
		return "a whole number"
	case *float64:
		return "a number"
	case *Duration:
		return "a duration with a unit, such as 10s"
	case *Size:
		return "a size such as 65536 or 512MiB"
	case *FileMode:
		return "an octal file mode such as \"0660\""
	}
	return fmt.Sprintf("a %T", ptr)
}

// expand replaces ${NAME} with the value of the environment variable NAME and
// $$ with $. Any other $ is kept. Its errors complete a sentence that starts
// with the key's name and never quote the value, which may be a secret.
func expand(s string, lookup func(string) (string, bool)) (string, error) {
	if !strings.Contains(s, "$") {
		return s, nil
	}
	var b strings.Builder
	for i := 0; i < len(s); {
		if s[i] != '$' || i+1 == len(s) {
			b.WriteByte(s[i])
			i++
			continue
		}
		switch s[i+1] {
		case '$':
			b.WriteByte('$')
			i += 2
		case '{':
			end := strings.IndexByte(s[i+2:], '}')
			if end < 0 {
				return "", errors.New("has a ${ with no closing }; write $$ for a literal $")
			}
			name := s[i+2 : i+2+end]
			if !isEnvName(name) {
				return "", errors.New("has a malformed ${...} reference (a variable name is letters, digits and _, and does not start with a digit); write $$ for a literal $")
			}
			val, ok := lookup(name)
			if !ok {
				return "", fmt.Errorf("refers to the environment variable %s, which is not set", name)
			}
			b.WriteString(val)
			i += 2 + end + 1
		default:
			b.WriteByte('$')
			i++
		}
	}
	return b.String(), nil
}

func isEnvName(s string) bool {
	if s == "" || (s[0] >= '0' && s[0] <= '9') {
		return false
	}
	for _, r := range s {
		if !(r == '_' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9') {
			return false
		}
	}
	return true
}

// deref follows an alias to its anchored node. The schema is only a few
// levels deep, so even a self-referencing anchor cannot make the walk loop.
func deref(n *yaml.Node) *yaml.Node {
	if n.Kind == yaml.AliasNode && n.Alias != nil {
		return n.Alias
	}
	return n
}

func isNull(n *yaml.Node) bool {
	return n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null"
}

func kindName(n *yaml.Node) string {
	switch deref(n).Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		if isNull(n) {
			return "no value"
		}
		return "a single value"
	case yaml.DocumentNode:
		return "a document"
	}
	return "nothing"
}

func joinKey(path, name string) string {
	if path == "" {
		return name
	}
	return path + "." + name
}

// where names a section for messages about its keys.
func where(path string) string {
	if path == "" {
		return "the top level"
	}
	return "`" + path + "`"
}

func yamlName(f reflect.StructField) string {
	name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
	return name
}

func fieldIndex(t reflect.Type, name string) (int, bool) {
	for i := range t.NumField() {
		if yamlName(t.Field(i)) == name {
			return i, true
		}
	}
	return 0, false
}

func fieldNames(t reflect.Type) []string {
	names := make([]string, 0, t.NumField())
	for i := range t.NumField() {
		names = append(names, yamlName(t.Field(i)))
	}
	return names
}

// suggest returns the known name closest to an unknown one, if it is close
// enough to be a likely typo.
func suggest(name string, known []string) string {
	best, bestDist := "", 3
	for _, k := range known {
		if dist := editDistance(strings.ToLower(name), k); dist < bestDist {
			best, bestDist = k, dist
		}
	}
	return best
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
