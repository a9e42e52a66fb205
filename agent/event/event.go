package event

import (
	"fmt"
	"slices"
	"time"
	"unicode/utf8"
)

// Kind is the upstream call a body is meant for.
type Kind uint8

const (
	Track    Kind = 1 // POST /api/v1/track
	Identify Kind = 2 // POST /api/v1/identify
)

func (k Kind) String() string {
	switch k {
	case Track:
		return "track"
	case Identify:
		return "identify"
	}
	return fmt.Sprintf("Kind(%d)", uint8(k))
}

// Defaults are the values Prepare fills in when the client left them out.
type Defaults struct {
	// Now is the time of local receipt, stamped into a missing or null
	// timestamp. The zero Time means time.Now().
	Now time.Time
	// APIKey replaces a missing, null or empty apiKey. When it is empty such
	// a body is rejected.
	APIKey string
}

// Error is a client's mistake: the body breaks a rule of the upstream API.
// Message is a complete sentence for the client that names the member at
// fault (in backticks) or "body"; it never contains the value of apiKey.
type Error struct {
	// Field is the member at fault, or "body" for a body that is not a
	// usable JSON object. For the rule that one of userId and anonymousId is
	// needed it is "userId".
	Field   string
	Message string
}

func (e *Error) Error() string { return e.Message }

// Prepare validates body as a kind call and appends it, ready to store and
// forward, to dst, returning the extended slice. On error it returns dst
// unchanged. dst must not overlap body; pass buf[:0] to reuse a buffer.
//
// The appended bytes are body's own, unless a timestamp or apiKey must be
// filled in: then every occurrence of that member is removed and a new one is
// added after the object's last member. See the package documentation for
// the rules.
//
// An error that is not an *Error (an unknown kind, a clock outside years
// 0000-9999) is trackd's fault, not the client's.
func Prepare(dst []byte, kind Kind, body []byte, d Defaults) ([]byte, error) {
	if kind != Track && kind != Identify {
		return dst, fmt.Errorf("event: unknown kind %d", uint8(kind))
	}
	s := scanner{b: body}
	if err := s.scan(); err != nil {
		return dst, err
	}
	stampTS, stampKey, err := s.check(kind)
	if err != nil {
		return dst, err
	}
	if !stampKey {
		// Fast path: nothing to fill in.
		if !stampTS {
			return append(dst, body...), nil
		}
	} else if d.APIKey == "" {
		return dst, &Error{Field: "apiKey",
			Message: "`apiKey` is required: send it in the event or set upstream.api_key in trackd's config"}
	}

	now := d.Now
	if stampTS {
		if now.IsZero() {
			now = time.Now()
		}
		if y := now.UTC().Year(); y < 0 || y > 9999 {
			return dst, fmt.Errorf("event: cannot stamp timestamp: clock reads %v, outside years 0000-9999", now)
		}
	}

	extra := 0
	if stampTS {
		extra += len(`,"timestamp":`) + stampLen
	}
	if stampKey {
		extra += len(`,"apiKey":""`) + 6*len(d.APIKey)
	}
	out := slices.Grow(dst, len(body)+extra)

	// Copy what stays, up to where the new members go: the end of the last
	// kept member, or just after '{' when none is kept.
	var kept bool
	var tail int
	dropTS := stampTS && s.fields[fTimestamp].kind != valAbsent
	dropKey := stampKey && s.fields[fAPIKey].kind != valAbsent
	if dropTS || dropKey {
		out, kept, tail = s.keep(out, dropTS, dropKey)
	} else {
		kept = s.members > 0
		tail = s.open + 1
		if kept {
			tail = s.lastEnd
		}
		out = append(out, body[:tail]...)
	}
	if stampTS {
		if kept {
			out = append(out, ',')
		}
		out = append(out, `"timestamp":`...)
		out = appendStamp(out, now)
		kept = true
	}
	if stampKey {
		if kept {
			out = append(out, ',')
		}
		out = append(out, `"apiKey":`...)
		out = appendString(out, d.APIKey)
	}
	return append(out, body[tail:]...), nil
}

// check applies the rules of kind to the members recorded by scan, in a
// fixed order, and reports which members must be filled in.
func (s *scanner) check(kind Kind) (stampTS, stampKey bool, err *Error) {
	f := &s.fields
	if kind == Track {
		if !f[fEvent].nonEmptyString() {
			return false, false, &Error{Field: "event", Message: "`event` is required and must be a non-empty string"}
		}
		if k := f[fProperties].kind; k != valAbsent && k != valObject {
			return false, false, &Error{Field: "properties", Message: "`properties` must be a JSON object when present"}
		}
	} else {
		if k := f[fTraits].kind; k != valAbsent && k != valObject {
			return false, false, &Error{Field: "traits", Message: "`traits` must be a JSON object when present"}
		}
	}
	if k := f[fUserID].kind; k != valAbsent && k != valNull && k != valString {
		return false, false, &Error{Field: "userId", Message: "`userId` must be a string"}
	}
	if k := f[fAnonymousID].kind; k != valAbsent && k != valNull && k != valString {
		return false, false, &Error{Field: "anonymousId", Message: "`anonymousId` must be a string"}
	}
	if !f[fUserID].nonEmptyString() && !f[fAnonymousID].nonEmptyString() {
		return false, false, &Error{Field: "userId", Message: "one of `userId` or `anonymousId` must be a non-empty string"}
	}

	switch ts := f[fTimestamp]; ts.kind {
	case valAbsent, valNull:
		stampTS = true
	case valString:
		raw := s.b[ts.start:ts.end]
		if !validTimestampValue(raw, slices.Contains(raw, '\\')) {
			return false, false, errTimestamp()
		}
	default:
		return false, false, errTimestamp()
	}

	switch k := f[fAPIKey]; k.kind {
	case valAbsent, valNull:
		stampKey = true
	case valString:
		stampKey = k.end-k.start == 2
	default:
		return false, false, &Error{Field: "apiKey", Message: "`apiKey` must be a string"}
	}
	return stampTS, stampKey, nil
}

func errTimestamp() *Error {
	return &Error{Field: "timestamp", Message: "`timestamp` must be an ISO-8601 date-time such as 2021-12-02T00:30:08.276Z"}
}

// keep appends body up to the end of its last kept top-level member,
// leaving out every timestamp member when dropTS and every apiKey member
// when dropKey. It reports whether any member was kept and the offset where
// the rest of the body (whitespace, '}') begins. The body has been scanned
// and has at least one member.
//
// Each member is copied as a segment running from just after the preceding
// '{' or ',' to just before the following ',' (or, for the last member, to
// the end of its value), and kept segments are joined with ','; so removing
// a member at any position leaves well-formed JSON.
func (s *scanner) keep(out []byte, dropTS, dropKey bool) (_ []byte, kept bool, tail int) {
	b := s.b
	i := s.open + 1
	out = append(out, b[:i]...)
	segStart := i
	i = s.ws(i)
	for {
		keyStart := i
		var esc bool
		i, esc = s.str(i)
		f := classifyKey(b[keyStart+1:i-1], esc)
		i = s.ws(s.ws(i) + 1) // past ':'
		i, _ = s.value(i, 1)
		valEnd := i
		i = s.ws(i)
		last := b[i] == '}'
		segEnd := i
		if last {
			segEnd = valEnd
		}
		if !(dropTS && f == fTimestamp || dropKey && f == fAPIKey) {
			if kept {
				out = append(out, ',')
			}
			out = append(out, b[segStart:segEnd]...)
			kept = true
		}
		if last {
			return out, kept, valEnd
		}
		i++ // ','
		segStart = i
		i = s.ws(i)
	}
}

// appendString appends s as a JSON string, escaping '"', '\\' and control
// characters and replacing invalid UTF-8 with U+FFFD.
func appendString(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i++
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}
