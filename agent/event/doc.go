// Package event owns the check a request body must pass before trackd stores
// it, and the two members trackd fills in: [Prepare] takes the bytes a client
// posted to /api/v1/track or /api/v1/identify, applies the rules of the
// upstream Track and Identify API, and returns the bytes to store and later
// forward.
//
// # Promises
//
//   - What is stored is what the client sent. Members, key order, numbers
//     (kept as text, whatever their size), escapes and whitespace are
//     copied byte for byte. When nothing needs filling in, the output equals
//     the input.
//   - A missing or null timestamp is set to the time of receipt
//     ([Defaults.Now]) in UTC, as "2021-12-02T00:30:08.276Z" (RFC 3339,
//     exactly three fractional digits, truncated). A missing, null or empty
//     apiKey is set to [Defaults.APIKey], escaped as a JSON string. The
//     replaced member is removed wherever it occurs, every occurrence of it,
//     and the new one is added after the last remaining member.
//   - A body Prepare accepts is a single JSON object in valid UTF-8, nested no
//     deeper than 64, that satisfies the rules below; its output is such a
//     body too, and Prepare accepts it again unchanged (Prepare is
//     idempotent).
//   - A rejected body yields an [*Error] whose Message is a sentence for the
//     client: it names the member in backticks (or "body", with the byte
//     offset of a syntax error) and says what is allowed. No message contains
//     the apiKey's value, or any byte from inside a string.
//
// # Rules
//
// As in JavaScript's JSON.parse, a member given twice counts with its last
// occurrence, and keys are compared after decoding escapes ("\u0065vent" is
// event).
//
//   - track: event must be a non-empty string; properties, when present, must
//     be an object (null is not).
//   - identify: traits, when present, must be an object. event is not needed
//     and not checked.
//   - userId and anonymousId must each be a string or null when present, and
//     at least one must be a non-empty string.
//   - timestamp, unless missing or null, must be a string holding an ISO-8601
//     date-time: YYYY-MM-DDTHH:MM[:SS[.fraction]] followed by Z, ±HH:MM,
//     ±HHMM or nothing (local time), with the calendar and clock fields in
//     range (leap years, and second 60 for a leap second, allowed).
//   - apiKey, unless missing, null or "", must be a string. When it must be
//     filled in and Defaults.APIKey is empty, the body is rejected.
//
// Checks run in that order and the first failure is reported; syntax is
// checked before any rule.
//
// # Cost
//
// Prepare validates in a single pass over the bytes without decoding into
// maps, interfaces or strings. It allocates nothing but the growth of dst: a
// caller that reuses dst (Prepare(buf[:0], ...)) allocates nothing for an
// accepted body. Filling in members costs one more pass over the top-level
// members when an occurrence must be removed. A rejected body costs the small
// allocations of its *Error and message.
//
// # Caveats
//
//   - Members other than the ones named above are not looked at: a track
//     call may carry traits of any type, an identify call properties of any
//     type.
//   - Escaped UTF-16 surrogates need not be paired (JSON allows "\ud800");
//     raw bytes must be valid UTF-8, which [encoding/json.Valid] does not
//     check.
//   - dst must not share memory with body.
package event
