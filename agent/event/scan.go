package event

import (
	"fmt"
	"unicode/utf8"
)

// maxDepth is the deepest nesting of objects and arrays a body may have; the
// body's own object is depth 1.
const maxDepth = 64

// field identifies the top-level members Prepare cares about.
type field uint8

const (
	fOther field = iota
	fEvent
	fProperties
	fTraits
	fUserID
	fAnonymousID
	fTimestamp
	fAPIKey
	numFields
)

// valKind is the JSON type of a value, or valAbsent for a member not sent.
type valKind uint8

const (
	valAbsent valKind = iota
	valNull
	valBool
	valNumber
	valString
	valArray
	valObject
)

// span is the last occurrence of a known member: its value's type and bytes
// (for a string, including the quotes).
type span struct {
	kind       valKind
	start, end int
}

// nonEmptyString reports whether v is a string with at least one character.
// Any escape decodes to at least one character, so only `""` is empty.
func (v span) nonEmptyString() bool { return v.kind == valString && v.end-v.start > 2 }

type errCode uint8

const (
	errSyntax errCode = iota + 1
	errSyntaxNoChar
	errUTF8
	errDepth
)

// scanner validates a body in one pass without decoding it, remembering the
// last occurrence of each known top-level member. It keeps its state in
// fields so that it lives on the caller's stack.
type scanner struct {
	b []byte

	fields   [numFields]span
	open     int // offset of the top-level '{'
	members  int // number of top-level members
	lastEnd  int // end of the last top-level member's value
	errCode  errCode
	errAt    int
	errWhere string
}

// plain marks the bytes that may appear in a string as they are: printable
// ASCII other than '"' and '\\'.
var plain = func() (t [256]bool) {
	for c := 0x20; c < 0x80; c++ {
		t[c] = c != '"' && c != '\\'
	}
	return t
}()

var hexVal = func() (t [256]int8) {
	for i := range t {
		t[i] = -1
	}
	for c := '0'; c <= '9'; c++ {
		t[c] = int8(c - '0')
	}
	for c := 'a'; c <= 'f'; c++ {
		t[c] = int8(c - 'a' + 10)
		t[c-'a'+'A'] = int8(c - 'a' + 10)
	}
	return t
}()

// fail records a syntax error at offset i (describing the byte found there)
// and returns -1, the error position sentinel.
func (s *scanner) fail(i int, where string) int {
	s.errCode, s.errAt, s.errWhere = errSyntax, i, where
	return -1
}

// failInString records an error inside a string. The offending byte is not
// quoted back, so no part of a string value (an API key, say) reaches the
// message.
func (s *scanner) failInString(i int, code errCode, what string) int {
	s.errCode, s.errAt, s.errWhere = code, i, what
	return -1
}

func (s *scanner) ws(i int) int {
	b := s.b
	for i < len(b) {
		switch b[i] {
		case ' ', '\t', '\n', '\r':
			i++
		default:
			return i
		}
	}
	return i
}

// value scans the value starting at b[i] inside a container at depth and
// returns the offset just past it, or -1.
func (s *scanner) value(i, depth int) (int, valKind) {
	b := s.b
	if i >= len(b) {
		return s.fail(i, "looking for beginning of value"), 0
	}
	switch c := b[i]; c {
	case '"':
		j, _ := s.str(i)
		return j, valString
	case '{':
		return s.object(i, depth+1), valObject
	case '[':
		return s.array(i, depth+1), valArray
	case 't':
		return s.literal(i, "true", "in literal true"), valBool
	case 'f':
		return s.literal(i, "false", "in literal false"), valBool
	case 'n':
		return s.literal(i, "null", "in literal null"), valNull
	default:
		if c == '-' || c-'0' <= 9 {
			return s.number(i), valNumber
		}
		return s.fail(i, "looking for beginning of value"), 0
	}
}

func (s *scanner) literal(i int, lit, where string) int {
	b := s.b
	for k := 1; k < len(lit); k++ {
		if i+k >= len(b) || b[i+k] != lit[k] {
			return s.fail(i+k, where)
		}
	}
	return i + len(lit)
}

// number accepts the JSON number grammar
// -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)? and leaves the check of
// what follows to the caller.
func (s *scanner) number(i int) int {
	b := s.b
	if b[i] == '-' {
		i++
	}
	switch {
	case i >= len(b):
		return s.fail(i, "in numeric literal")
	case b[i] == '0':
		i++
	case b[i]-'1' <= 8:
		i++
		for i < len(b) && b[i]-'0' <= 9 {
			i++
		}
	default:
		return s.fail(i, "in numeric literal")
	}
	if i < len(b) && b[i] == '.' {
		i++
		if i >= len(b) || b[i]-'0' > 9 {
			return s.fail(i, "after decimal point in numeric literal")
		}
		for i < len(b) && b[i]-'0' <= 9 {
			i++
		}
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		if i >= len(b) || b[i]-'0' > 9 {
			return s.fail(i, "in exponent of numeric literal")
		}
		for i < len(b) && b[i]-'0' <= 9 {
			i++
		}
	}
	return i
}

// str scans the string whose opening quote is b[i] and returns the offset
// past its closing quote and whether it contains escapes. It rejects control
// characters, bad escapes and invalid UTF-8; escaped surrogates need not be
// paired, as JSON allows.
func (s *scanner) str(i int) (int, bool) {
	b := s.b
	i++
	esc := false
	for {
		for i < len(b) && plain[b[i]] {
			i++
		}
		if i >= len(b) {
			return s.fail(i, "in string"), false
		}
		switch c := b[i]; {
		case c == '"':
			return i + 1, esc
		case c == '\\':
			esc = true
			if i+1 >= len(b) {
				return s.fail(i+1, "in string escape"), false
			}
			switch b[i+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				i += 2
			case 'u':
				for k := 2; k < 6; k++ {
					if i+k >= len(b) {
						return s.fail(i+k, "in \\u escape"), false
					}
					if hexVal[b[i+k]] < 0 {
						return s.failInString(i, errSyntaxNoChar, "invalid \\u escape in string"), false
					}
				}
				i += 6
			default:
				return s.failInString(i, errSyntaxNoChar, "invalid escape in string"), false
			}
		case c < 0x20:
			return s.failInString(i, errSyntaxNoChar, "unescaped control character in string"), false
		default:
			r, size := utf8.DecodeRune(b[i:])
			if r == utf8.RuneError && size == 1 {
				return s.failInString(i, errUTF8, ""), false
			}
			i += size
		}
	}
}

func (s *scanner) array(i, depth int) int {
	if depth > maxDepth {
		s.errCode, s.errAt = errDepth, i
		return -1
	}
	b := s.b
	i = s.ws(i + 1)
	if i < len(b) && b[i] == ']' {
		return i + 1
	}
	for {
		i, _ = s.value(i, depth)
		if i < 0 {
			return i
		}
		i = s.ws(i)
		if i >= len(b) {
			return s.fail(i, "after array element")
		}
		switch b[i] {
		case ',':
			i = s.ws(i + 1)
		case ']':
			return i + 1
		default:
			return s.fail(i, "after array element")
		}
	}
}

// object scans the object whose '{' is b[i]. At depth 1 (the body itself)
// it also records the known members.
func (s *scanner) object(i, depth int) int {
	if depth > maxDepth {
		s.errCode, s.errAt = errDepth, i
		return -1
	}
	b := s.b
	i = s.ws(i + 1)
	if i < len(b) && b[i] == '}' {
		return i + 1
	}
	for {
		if i >= len(b) || b[i] != '"' {
			return s.fail(i, "looking for beginning of object key string")
		}
		keyStart := i
		var esc bool
		i, esc = s.str(i)
		if i < 0 {
			return i
		}
		keyEnd := i
		i = s.ws(i)
		if i >= len(b) || b[i] != ':' {
			return s.fail(i, "after object key")
		}
		i = s.ws(i + 1)
		valStart := i
		var kind valKind
		i, kind = s.value(i, depth)
		if i < 0 {
			return i
		}
		if depth == 1 {
			s.members++
			s.lastEnd = i
			if f := classifyKey(b[keyStart+1:keyEnd-1], esc); f != fOther {
				s.fields[f] = span{kind: kind, start: valStart, end: i}
			}
		}
		i = s.ws(i)
		if i >= len(b) {
			return s.fail(i, "after object key:value pair")
		}
		switch b[i] {
		case ',':
			i = s.ws(i + 1)
		case '}':
			return i + 1
		default:
			return s.fail(i, "after object key:value pair")
		}
	}
}

// scan validates the whole body as a JSON object.
func (s *scanner) scan() *Error {
	b := s.b
	i := s.ws(0)
	if i == len(b) {
		return &Error{Field: "body", Message: "body is empty; send a JSON object"}
	}
	isObject := b[i] == '{'
	if isObject {
		s.open = i
		i = s.object(i, 1)
	} else {
		i, _ = s.value(i, 0)
	}
	if i >= 0 {
		if i = s.ws(i); i < len(b) {
			i = s.fail(i, "after top-level value")
		}
	}
	if i < 0 {
		return s.err()
	}
	if !isObject {
		return &Error{Field: "body", Message: "body must be a JSON object"}
	}
	return nil
}

func (s *scanner) err() *Error {
	var msg string
	switch {
	case s.errCode == errUTF8:
		msg = fmt.Sprintf("body is not valid UTF-8: invalid byte in string at offset %d", s.errAt)
	case s.errCode == errDepth:
		msg = fmt.Sprintf("body is nested too deeply (limit %d) at offset %d", maxDepth, s.errAt)
	case s.errAt >= len(s.b):
		msg = fmt.Sprintf("body is not valid JSON: unexpected end of input at offset %d", s.errAt)
	case s.errCode == errSyntaxNoChar:
		msg = fmt.Sprintf("body is not valid JSON: %s at offset %d", s.errWhere, s.errAt)
	default:
		msg = fmt.Sprintf("body is not valid JSON: invalid character %s %s at offset %d",
			quoteByte(s.b[s.errAt]), s.errWhere, s.errAt)
	}
	return &Error{Field: "body", Message: msg}
}

// quoteByte shows a byte found outside any string.
func quoteByte(c byte) string {
	if c > ' ' && c < 0x7f {
		return fmt.Sprintf("%q", rune(c))
	}
	return fmt.Sprintf("(byte 0x%02x)", c)
}

// classifyKey maps a raw key (without its quotes) to the member it names,
// matching on the decoded string.
func classifyKey(raw []byte, esc bool) field {
	if esc {
		var buf [16]byte
		dec, ok := decodeASCII(buf[:0], raw, len(buf))
		if !ok {
			return fOther // longer than any known key, or not ASCII
		}
		raw = dec
	}
	switch string(raw) {
	case "event":
		return fEvent
	case "properties":
		return fProperties
	case "traits":
		return fTraits
	case "userId":
		return fUserID
	case "anonymousId":
		return fAnonymousID
	case "timestamp":
		return fTimestamp
	case "apiKey":
		return fAPIKey
	}
	return fOther
}

// decodeASCII appends the decoded contents of a scanned string (without its
// quotes) to dst. It reports false when the decoded text is not ASCII or
// would exceed limit bytes; the names and date-times it is used for are
// both ASCII, so such text cannot match.
func decodeASCII(dst, raw []byte, limit int) ([]byte, bool) {
	for i := 0; i < len(raw); {
		if len(dst) >= limit {
			return dst, false
		}
		c := raw[i]
		if c >= utf8.RuneSelf {
			return dst, false
		}
		if c != '\\' {
			dst = append(dst, c)
			i++
			continue
		}
		switch e := raw[i+1]; e {
		case 'u':
			r := int(hexVal[raw[i+2]])<<12 | int(hexVal[raw[i+3]])<<8 | int(hexVal[raw[i+4]])<<4 | int(hexVal[raw[i+5]])
			if r >= utf8.RuneSelf {
				return dst, false
			}
			dst = append(dst, byte(r))
			i += 6
			continue
		case 'b':
			c = '\b'
		case 'f':
			c = '\f'
		case 'n':
			c = '\n'
		case 'r':
			c = '\r'
		case 't':
			c = '\t'
		default: // '"', '\\', '/'
			c = e
		}
		dst = append(dst, c)
		i += 2
	}
	return dst, true
}
