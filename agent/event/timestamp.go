package event

import "time"

// stampLen is the length of a stamped timestamp value with its quotes,
// "2021-12-02T00:30:08.276Z".
const stampLen = len(`"2021-12-02T00:30:08.276Z"`)

// validTimestampValue reports whether the scanned string raw (with its
// quotes) holds an ISO-8601 date-time; esc says whether it has escapes.
func validTimestampValue(raw []byte, esc bool) bool {
	raw = raw[1 : len(raw)-1]
	if !esc {
		return validTimestamp(raw)
	}
	// Every character of a valid date-time is ASCII, so escapes that decode
	// to anything else make it invalid. The buffer stays on the stack unless
	// a client sends an escaped date-time with an absurdly long fraction.
	var buf [64]byte
	dec, ok := decodeASCII(buf[:0], raw, len(raw))
	return ok && validTimestamp(dec)
}

// validTimestamp accepts YYYY-MM-DDTHH:MM[:SS[.fraction]] followed by "Z",
// ±HH:MM, ±HHMM or nothing (local time), with every field in range: months
// 01-12, days that exist in that month and year, hours 00-23, minutes 00-59
// and seconds 00-60 (60 for a leap second).
func validTimestamp(s []byte) bool {
	if len(s) < len("2006-01-02T15:04") ||
		s[4] != '-' || s[7] != '-' || s[10] != 'T' || s[13] != ':' {
		return false
	}
	year, ok1 := digits(s[0:4])
	month, ok2 := digits(s[5:7])
	day, ok3 := digits(s[8:10])
	hour, ok4 := digits(s[11:13])
	minute, ok5 := digits(s[14:16])
	if !(ok1 && ok2 && ok3 && ok4 && ok5) ||
		month < 1 || month > 12 || day < 1 || day > daysIn(month, year) ||
		hour > 23 || minute > 59 {
		return false
	}
	s = s[16:]
	if len(s) > 0 && s[0] == ':' {
		if len(s) < 3 {
			return false
		}
		if sec, ok := digits(s[1:3]); !ok || sec > 60 {
			return false
		}
		s = s[3:]
		if len(s) > 0 && s[0] == '.' {
			n := 1
			for n < len(s) && s[n]-'0' <= 9 {
				n++
			}
			if n == 1 {
				return false
			}
			s = s[n:]
		}
	}
	if len(s) == 0 {
		return true // local time
	}
	switch s[0] {
	case 'Z':
		return len(s) == 1
	case '+', '-':
		s = s[1:]
		var hh, mm []byte
		switch {
		case len(s) == 5 && s[2] == ':': // ±HH:MM
			hh, mm = s[0:2], s[3:5]
		case len(s) == 4: // ±HHMM
			hh, mm = s[0:2], s[2:4]
		default:
			return false
		}
		oh, ok1 := digits(hh)
		om, ok2 := digits(mm)
		return ok1 && ok2 && oh <= 23 && om <= 59
	}
	return false
}

// digits parses a short run of ASCII digits.
func digits(s []byte) (int, bool) {
	n := 0
	for _, c := range s {
		if c-'0' > 9 {
			return 0, false
		}
		n = n*10 + int(c-'0')
	}
	return n, true
}

func daysIn(month, year int) int {
	switch month {
	case 2:
		if year%4 == 0 && (year%100 != 0 || year%400 == 0) {
			return 29
		}
		return 28
	case 4, 6, 9, 11:
		return 30
	}
	return 31
}

// appendStamp appends t in UTC as a quoted RFC 3339 string with exactly
// three fractional digits, truncated as JavaScript's toISOString does. The
// year must be within 0000-9999.
func appendStamp(b []byte, t time.Time) []byte {
	t = t.UTC()
	year, month, day := t.Date()
	hour, minute, sec := t.Clock()
	ms := t.Nanosecond() / 1e6
	b = append(b, '"',
		byte('0'+year/1000), byte('0'+year/100%10), byte('0'+year/10%10), byte('0'+year%10), '-',
		byte('0'+month/10), byte('0'+month%10), '-',
		byte('0'+day/10), byte('0'+day%10), 'T',
		byte('0'+hour/10), byte('0'+hour%10), ':',
		byte('0'+minute/10), byte('0'+minute%10), ':',
		byte('0'+sec/10), byte('0'+sec%10), '.',
		byte('0'+ms/100), byte('0'+ms/10%10), byte('0'+ms%10), 'Z', '"')
	return b
}
