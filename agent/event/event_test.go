package event

import (
	"errors"
	"strings"
	"testing"
	"time"
)

// Bodies are built from these so each case shows only what it is about.
const (
	ids  = `"userId":"u-1","anonymousId":"a-1"`
	ts   = `"timestamp":"2021-12-02T00:30:08.276Z"`
	key  = `"apiKey":"client-key"`
	rest = ids + `,` + ts + `,` + key // everything a complete body needs but event
)

func TestPrepareRejects(t *testing.T) {
	deep := func(n int) string { // an object holding n nested arrays: depth n+1
		return `{"event":"x",` + ids + `,"properties":{"a":` + strings.Repeat("[", n-1) + strings.Repeat("]", n-1) + `}}`
	}
	tests := []struct {
		name    string
		kind    Kind
		body    string
		apiKey  string // Defaults.APIKey; "cfg-key" when empty and noKey is false
		noKey   bool
		field   string
		msg     string // the whole message, or a part of it when partial
		partial bool
	}{
		// The body as a whole.
		{name: "empty body", kind: Track, body: ``, field: "body", msg: "body is empty; send a JSON object"},
		{name: "whitespace-only body is empty", kind: Identify, body: " \r\n\t ", field: "body", msg: "body is empty; send a JSON object"},
		{name: "body must be an object, not an array", kind: Track, body: `[{"event":"x",` + rest + `}]`, field: "body", msg: "body must be a JSON object"},
		{name: "body must be an object, not a string", kind: Identify, body: ` "x" `, field: "body", msg: "body must be a JSON object"},
		{name: "body must be an object, not a number", kind: Track, body: `12`, field: "body", msg: "body must be a JSON object"},
		{name: "body must be an object, not null", kind: Track, body: `null`, field: "body", msg: "body must be a JSON object"},
		{name: "body must be an object, not true", kind: Identify, body: `true`, field: "body", msg: "body must be a JSON object"},
		{name: "invalid JSON is reported with its offset", kind: Track, body: `{"event":"x",}`, field: "body",
			msg: "body is not valid JSON: invalid character '}' looking for beginning of object key string at offset 13"},
		{name: "truncated body", kind: Track, body: `{"event":"x"`, field: "body", msg: "body is not valid JSON: unexpected end of input at offset 12"},
		{name: "truncated inside a string", kind: Track, body: `{"event":"x`, field: "body", msg: "unexpected end of input at offset 11", partial: true},
		{name: "truncated inside an escape", kind: Track, body: `{"event":"x\u00`, field: "body", msg: "unexpected end of input", partial: true},
		{name: "a second value after the object", kind: Track, body: `{"event":"x",` + rest + `} {}`, field: "body", msg: "after top-level value", partial: true},
		{name: "an invalid non-object is invalid JSON", kind: Track, body: `[1,`, field: "body", msg: "body is not valid JSON", partial: true},
		{name: "byte order mark is not JSON", kind: Track, body: "\ufeff{}", field: "body", msg: "invalid character (byte 0xef) looking for beginning of value at offset 0", partial: true},
		{name: "single-quoted strings are not JSON", kind: Track, body: `{'event':'x'}`, field: "body", msg: "invalid character '\\'' looking for beginning of object key string at offset 1", partial: true},
		{name: "unquoted keys are not JSON", kind: Track, body: `{event:"x"}`, field: "body", msg: "not valid JSON", partial: true},
		{name: "missing colon", kind: Track, body: `{"event" "x"}`, field: "body", msg: "after object key at offset 9", partial: true},
		{name: "missing comma", kind: Track, body: `{"event":"x" "userId":"u"}`, field: "body", msg: "after object key:value pair at offset 13", partial: true},
		{name: "trailing comma in an array", kind: Track, body: `{"a":[1,]}`, field: "body", msg: "looking for beginning of value at offset 8", partial: true},
		{name: "comments are not JSON", kind: Track, body: `{"event":"x"/* c */}`, field: "body", msg: "not valid JSON", partial: true},
		{name: "number with a leading zero", kind: Track, body: `{"a":01}`, field: "body", msg: "invalid character '1' after object key:value pair", partial: true},
		{name: "number with a plus sign", kind: Track, body: `{"a":+1}`, field: "body", msg: "not valid JSON", partial: true},
		{name: "number without an integer part", kind: Track, body: `{"a":.5}`, field: "body", msg: "not valid JSON", partial: true},
		{name: "number without fraction digits", kind: Track, body: `{"a":1.}`, field: "body", msg: "after decimal point", partial: true},
		{name: "number without exponent digits", kind: Track, body: `{"a":1e+}`, field: "body", msg: "in exponent", partial: true},
		{name: "a lone minus is not a number", kind: Track, body: `{"a":-}`, field: "body", msg: "in numeric literal", partial: true},
		{name: "hex numbers are not JSON", kind: Track, body: `{"a":0x1}`, field: "body", msg: "not valid JSON", partial: true},
		{name: "NaN is not JSON", kind: Track, body: `{"a":NaN}`, field: "body", msg: "not valid JSON", partial: true},
		{name: "misspelt literal", kind: Track, body: `{"a":tru}`, field: "body", msg: "invalid character '}' in literal true at offset 8", partial: true},
		{name: "truncated literal", kind: Track, body: `{"a":nul`, field: "body", msg: "unexpected end of input at offset 8", partial: true},
		{name: "raw control character in a string", kind: Track, body: "{\"event\":\"a\nb\"}", field: "body",
			msg: "body is not valid JSON: unescaped control character in string at offset 11"},
		{name: "unknown escape", kind: Track, body: `{"event":"\x"}`, field: "body", msg: "body is not valid JSON: invalid escape in string at offset 10"},
		{name: "short \\u escape", kind: Track, body: `{"event":"\u12"}`, field: "body", msg: "invalid \\u escape in string at offset 10", partial: true},
		{name: "non-hex \\u escape", kind: Track, body: `{"event":"\u12g4"}`, field: "body", msg: "invalid \\u escape", partial: true},
		{name: "invalid UTF-8 in a value", kind: Track, body: "{\"event\":\"\xff\"," + rest + "}", field: "body",
			msg: "body is not valid UTF-8: invalid byte in string at offset 10"},
		{name: "invalid UTF-8 in a key", kind: Identify, body: "{\"a\xc3\":1," + rest + "}", field: "body", msg: "not valid UTF-8", partial: true},
		{name: "invalid UTF-8 deep inside properties", kind: Track, body: "{\"event\":\"x\",\"properties\":{\"a\":[\"\xe2\x82\"]}," + rest + "}", field: "body", msg: "not valid UTF-8", partial: true},
		{name: "overlong UTF-8 encoding", kind: Track, body: "{\"event\":\"\xc0\xaf\"," + rest + "}", field: "body", msg: "not valid UTF-8", partial: true},
		{name: "UTF-8-encoded surrogate", kind: Track, body: "{\"event\":\"\xed\xa0\x80\"," + rest + "}", field: "body", msg: "not valid UTF-8", partial: true},
		{name: "non-ASCII byte outside a string", kind: Track, body: "{\"a\":\xc3\xa9}", field: "body", msg: "invalid character (byte 0xc3) looking for beginning of value", partial: true},
		{name: "nested deeper than 64", kind: Track, body: deep(64), field: "body", msg: "body is nested too deeply (limit 64)", partial: true},
		{name: "nested far deeper than 64", kind: Identify, body: strings.Repeat("[", 100000), field: "body", msg: "nested too deeply (limit 64)", partial: true},

		// track: event and properties.
		{name: "event is required", kind: Track, body: `{` + rest + `}`, field: "event", msg: "`event` is required and must be a non-empty string"},
		{name: "event must not be null", kind: Track, body: `{"event":null,` + rest + `}`, field: "event", msg: "`event` is required and must be a non-empty string"},
		{name: "event must not be empty", kind: Track, body: `{"event":"",` + rest + `}`, field: "event", msg: "`event` is required and must be a non-empty string"},
		{name: "event must be a string, not a number", kind: Track, body: `{"event":1,` + rest + `}`, field: "event", msg: "`event` is required and must be a non-empty string"},
		{name: "event must be a string, not an object", kind: Track, body: `{"event":{"name":"x"},` + rest + `}`, field: "event", msg: "`event` is required and must be a non-empty string"},
		{name: "event must be a string, not an array", kind: Track, body: `{"event":["x"],` + rest + `}`, field: "event", msg: "`event` is required and must be a non-empty string"},
		{name: "duplicate event key: last wins", kind: Track, body: `{"event":"x",` + rest + `,"event":""}`, field: "event", msg: "`event` is required and must be a non-empty string"},
		{name: "keys are case-sensitive", kind: Track, body: `{"Event":"x",` + rest + `}`, field: "event", msg: "`event` is required and must be a non-empty string"},
		{name: "escaped key names an empty event", kind: Track, body: `{"event":"x","\u0065vent":"",` + rest + `}`, field: "event", msg: "`event` is required and must be a non-empty string"},
		{name: "properties must be an object, not an array", kind: Track, body: `{"event":"x","properties":[],` + rest + `}`, field: "properties", msg: "`properties` must be a JSON object when present"},
		{name: "properties must be an object, not a string", kind: Track, body: `{"event":"x","properties":"{}",` + rest + `}`, field: "properties", msg: "`properties` must be a JSON object when present"},
		{name: "properties must be an object, not a number", kind: Track, body: `{"event":"x","properties":1,` + rest + `}`, field: "properties", msg: "`properties` must be a JSON object when present"},
		{name: "properties must be an object, not a bool", kind: Track, body: `{"event":"x","properties":false,` + rest + `}`, field: "properties", msg: "`properties` must be a JSON object when present"},
		{name: "properties must be an object, not null", kind: Track, body: `{"event":"x","properties":null,` + rest + `}`, field: "properties", msg: "`properties` must be a JSON object when present"},
		{name: "duplicate properties key: last wins", kind: Track, body: `{"event":"x","properties":{},"properties":[],` + rest + `}`, field: "properties", msg: "`properties` must be a JSON object when present"},

		// identify: traits.
		{name: "traits must be an object, not an array", kind: Identify, body: `{"traits":["a"],` + rest + `}`, field: "traits", msg: "`traits` must be a JSON object when present"},
		{name: "traits must be an object, not a string", kind: Identify, body: `{"traits":"a",` + rest + `}`, field: "traits", msg: "`traits` must be a JSON object when present"},
		{name: "traits must be an object, not a number", kind: Identify, body: `{"traits":0,` + rest + `}`, field: "traits", msg: "`traits` must be a JSON object when present"},
		{name: "traits must be an object, not a bool", kind: Identify, body: `{"traits":true,` + rest + `}`, field: "traits", msg: "`traits` must be a JSON object when present"},
		{name: "traits must be an object, not null", kind: Identify, body: `{"traits":null,` + rest + `}`, field: "traits", msg: "`traits` must be a JSON object when present"},
		{name: "duplicate traits key: last wins", kind: Identify, body: `{"traits":{},` + rest + `,"traits":[]}`, field: "traits", msg: "`traits` must be a JSON object when present"},

		// userId and anonymousId, for both kinds.
		{name: "track: userId must be a string", kind: Track, body: `{"event":"x","userId":42,"anonymousId":"a",` + ts + `}`, field: "userId", msg: "`userId` must be a string"},
		{name: "identify: userId must be a string", kind: Identify, body: `{"userId":{"id":"u"},"anonymousId":"a"}`, field: "userId", msg: "`userId` must be a string"},
		{name: "track: anonymousId must be a string", kind: Track, body: `{"event":"x","userId":"u","anonymousId":true}`, field: "anonymousId", msg: "`anonymousId` must be a string"},
		{name: "identify: anonymousId must be a string", kind: Identify, body: `{"userId":"u","anonymousId":["a"]}`, field: "anonymousId", msg: "`anonymousId` must be a string"},
		{name: "track: one of userId or anonymousId is required", kind: Track, body: `{"event":"x"}`, field: "userId", msg: "one of `userId` or `anonymousId` must be a non-empty string"},
		{name: "identify: one of userId or anonymousId is required", kind: Identify, body: `{"traits":{"name":"Ada"}}`, field: "userId", msg: "one of `userId` or `anonymousId` must be a non-empty string"},
		{name: "null ids do not count", kind: Identify, body: `{"userId":null,"anonymousId":null}`, field: "userId", msg: "one of `userId` or `anonymousId` must be a non-empty string"},
		{name: "empty ids do not count", kind: Track, body: `{"event":"x","userId":"","anonymousId":""}`, field: "userId", msg: "one of `userId` or `anonymousId` must be a non-empty string"},
		{name: "duplicate userId key: last wins", kind: Track, body: `{"event":"x","userId":"u","userId":""}`, field: "userId", msg: "one of `userId` or `anonymousId` must be a non-empty string"},

		// timestamp, for both kinds.
		{name: "track: timestamp must be a string", kind: Track, body: `{"event":"x",` + ids + `,"timestamp":1638405008276}`, field: "timestamp", msg: "`timestamp` must be an ISO-8601 date-time such as 2021-12-02T00:30:08.276Z"},
		{name: "identify: timestamp must be a string", kind: Identify, body: `{` + ids + `,"timestamp":{}}`, field: "timestamp", msg: "`timestamp` must be an ISO-8601 date-time such as 2021-12-02T00:30:08.276Z"},
		{name: "identify: timestamp must be a date-time", kind: Identify, body: `{` + ids + `,"timestamp":"yesterday"}`, field: "timestamp", msg: "`timestamp` must be an ISO-8601 date-time such as 2021-12-02T00:30:08.276Z"},
		{name: "duplicate timestamp key: last wins", kind: Track, body: `{"event":"x",` + ids + `,` + ts + `,"timestamp":"soon"}`, field: "timestamp", msg: "`timestamp` must be an ISO-8601 date-time such as 2021-12-02T00:30:08.276Z"},

		// apiKey, for both kinds.
		{name: "track: apiKey must be a string", kind: Track, body: `{"event":"x",` + ids + `,"apiKey":12345}`, field: "apiKey", msg: "`apiKey` must be a string"},
		{name: "identify: apiKey must be a string", kind: Identify, body: `{` + ids + `,"apiKey":["k"]}`, field: "apiKey", msg: "`apiKey` must be a string"},
		{name: "track: apiKey is required when trackd has none", kind: Track, body: `{"event":"x",` + ids + `}`, noKey: true, field: "apiKey",
			msg: "`apiKey` is required: send it in the event or set upstream.api_key in trackd's config"},
		{name: "identify: apiKey is required when trackd has none", kind: Identify, body: `{` + ids + `}`, noKey: true, field: "apiKey",
			msg: "`apiKey` is required: send it in the event or set upstream.api_key in trackd's config"},
		{name: "empty apiKey is missing", kind: Track, body: `{"event":"x",` + ids + `,"apiKey":""}`, noKey: true, field: "apiKey", msg: "`apiKey` is required", partial: true},
		{name: "null apiKey is missing", kind: Identify, body: `{` + ids + `,"apiKey":null}`, noKey: true, field: "apiKey", msg: "`apiKey` is required", partial: true},
		{name: "duplicate apiKey key: last wins", kind: Identify, body: `{` + ids + `,"apiKey":"k","apiKey":""}`, noKey: true, field: "apiKey", msg: "`apiKey` is required", partial: true},

		// Order: the first broken rule is reported.
		{name: "syntax is checked before rules", kind: Track, body: `{"userId":1,"a":tru}`, field: "body", msg: "not valid JSON", partial: true},
		{name: "event is checked before ids", kind: Track, body: `{"userId":1}`, field: "event", msg: "`event` is required", partial: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := testDefaults
			if tc.noKey {
				d.APIKey = ""
			}
			dst := []byte("prefix")
			out, err := Prepare(dst, tc.kind, []byte(tc.body), d)
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("Prepare(%q) = %q, %v; want an *Error", tc.body, out, err)
			}
			if e.Field != tc.field {
				t.Errorf("Field = %q, want %q", e.Field, tc.field)
			}
			if tc.partial && !strings.Contains(e.Message, tc.msg) || !tc.partial && e.Message != tc.msg {
				t.Errorf("Message = %q\nwant %s%q", e.Message, map[bool]string{true: "it to contain ", false: ""}[tc.partial], tc.msg)
			}
			if e.Error() != e.Message {
				t.Errorf("Error() = %q, want the Message", e.Error())
			}
			if string(out) != "prefix" {
				t.Errorf("on error Prepare returned %q, want dst unchanged", out)
			}
		})
	}
}

func TestPrepareAcceptsUnchanged(t *testing.T) {
	tests := []struct {
		name string
		kind Kind
		body string
	}{
		{name: "complete track body", kind: Track, body: `{"event":"CLICKED_CHECKOUT",` + rest + `,"properties":{"price":100,"category":"Apparel"}}`},
		{name: "complete identify body", kind: Identify, body: `{` + rest + `,"traits":{"name":"Ada","email":"ada@example.com","$tags":["Cohort 7"]}}`},
		{name: "whitespace, unknown fields and key order are kept", kind: Track,
			body: "\r\n { \"zeta\" : [ 1 , { } ] ,\t\"event\" :\"x\" , " + rest + ",\"extra\":{\"deep\":{\"er\":null}} }\n\n"},
		{name: "numbers are kept as text, even beyond float64", kind: Track,
			body: `{"event":"x",` + rest + `,"properties":{"big":1e999,"long":123456789012345678901234567890,"neg":-0.0e-0,"e":1E+2,"zero":0}}`},
		{name: "escapes and non-ASCII text are kept", kind: Track,
			body: `{"event":"caf\u00e9 \"quoted\" \\ \/ \b\f\n\r\t ☕ 𝄞",` + rest + `,"properties":{"k\u00e9y":"\uD834\uDD1E"}}`},
		{name: "unpaired surrogate escapes are allowed", kind: Track, body: `{"event":"\ud800 and \udc00",` + rest + `}`},
		{name: "escaped key names match", kind: Track, body: `{"\u0065vent":"x","\u0075serId":"u","time\u0073tamp":"2021-12-02T00:30Z","api\u004bey":"k"}`},
		{name: "duplicate event key: last wins", kind: Track, body: `{"event":"","event":"x",` + rest + `}`},
		{name: "duplicate properties key: last wins", kind: Track, body: `{"event":"x","properties":[],"properties":{},` + rest + `}`},
		{name: "duplicate traits key: last wins", kind: Identify, body: `{"traits":null,"traits":{},` + rest + `}`},
		{name: "duplicate timestamp key: last valid one is kept with the others", kind: Track, body: `{"event":"x","timestamp":"soon",` + rest + `}`},
		{name: "duplicate apiKey key: last non-empty one is kept with the others", kind: Identify, body: `{"apiKey":"",` + rest + `}`},
		{name: "identify does not need event", kind: Identify, body: `{` + rest + `}`},
		{name: "identify leaves any event alone", kind: Identify, body: `{"event":5,` + rest + `}`},
		{name: "identify does not check properties", kind: Identify, body: `{"properties":[1],` + rest + `}`},
		{name: "track does not check traits", kind: Track, body: `{"event":"x","traits":"t",` + rest + `}`},
		{name: "userId alone is enough", kind: Track, body: `{"event":"x","userId":"u",` + ts + `,` + key + `}`},
		{name: "anonymousId alone is enough", kind: Identify, body: `{"anonymousId":"a",` + ts + `,` + key + `}`},
		{name: "null userId with an anonymousId", kind: Track, body: `{"event":"x","userId":null,"anonymousId":"a",` + ts + `,` + key + `}`},
		{name: "empty anonymousId with a userId", kind: Identify, body: `{"userId":"u","anonymousId":"",` + ts + `,` + key + `}`},
		{name: "an id that is an escape is not empty", kind: Identify, body: `{"userId":"\u0000",` + ts + `,` + key + `}`},
		{name: "nesting of exactly 64 is allowed", kind: Track,
			body: `{"event":"x",` + rest + `,"properties":{"a":` + strings.Repeat("[", 62) + strings.Repeat("]", 62) + `}}`},
		{name: "escaped timestamp is decoded before checking", kind: Track, body: `{"event":"x",` + ids + `,` + key + `,"timestamp":"\u0032021-12-02T00:30:08.276\u005a"}`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out, err := Prepare(nil, tc.kind, []byte(tc.body), testDefaults)
			if err != nil {
				t.Fatalf("Prepare(%q): %v", tc.body, err)
			}
			if string(out) != tc.body {
				t.Fatalf("Prepare changed a complete body:\n got %q\nwant %q", out, tc.body)
			}
			checkAccepted(t, tc.kind, []byte(tc.body), out, testDefaults)
		})
	}
}

func TestPrepareStamps(t *testing.T) {
	const (
		stamp  = `"timestamp":"` + testStamp + `"`
		cfgKey = `"apiKey":"cfg-key"`
	)
	tests := []struct {
		name string
		kind Kind
		body string
		want string
	}{
		{name: "missing timestamp and apiKey are appended", kind: Track,
			body: `{"event":"x","userId":"u"}`,
			want: `{"event":"x","userId":"u",` + stamp + `,` + cfgKey + `}`},
		{name: "missing timestamp is appended", kind: Identify,
			body: `{"userId":"u",` + key + `}`,
			want: `{"userId":"u",` + key + `,` + stamp + `}`},
		{name: "missing apiKey is appended", kind: Identify,
			body: `{"userId":"u",` + ts + `}`,
			want: `{"userId":"u",` + ts + `,` + cfgKey + `}`},
		{name: "new members go after the last member, before whitespace", kind: Track,
			body: " { \"event\" : \"x\" ,\n \"userId\":\"u\" \n}\n",
			want: " { \"event\" : \"x\" ,\n \"userId\":\"u\"," + stamp + "," + cfgKey + " \n}\n"},
		{name: "null timestamp as first member is removed", kind: Track,
			body: `{"timestamp":null,"event":"x","userId":"u",` + key + `}`,
			want: `{"event":"x","userId":"u",` + key + `,` + stamp + `}`},
		{name: "null timestamp as middle member is removed", kind: Track,
			body: `{"event":"x","timestamp":null,"userId":"u",` + key + `}`,
			want: `{"event":"x","userId":"u",` + key + `,` + stamp + `}`},
		{name: "null timestamp as last member is removed", kind: Track,
			body: `{"event":"x","userId":"u",` + key + `,"timestamp":null}`,
			want: `{"event":"x","userId":"u",` + key + `,` + stamp + `}`},
		{name: "empty apiKey as first member is removed", kind: Identify,
			body: `{"apiKey":"","userId":"u",` + ts + `}`,
			want: `{"userId":"u",` + ts + `,` + cfgKey + `}`},
		{name: "null apiKey as middle member is removed", kind: Identify,
			body: `{"userId":"u","apiKey":null,` + ts + `}`,
			want: `{"userId":"u",` + ts + `,` + cfgKey + `}`},
		{name: "empty apiKey as last member is removed", kind: Track,
			body: `{"event":"x","userId":"u",` + ts + `,"apiKey":""}`,
			want: `{"event":"x","userId":"u",` + ts + `,` + cfgKey + `}`},
		{name: "both removed, leaving one member", kind: Identify,
			body: `{"apiKey":"","userId":"u","timestamp":null}`,
			want: `{"userId":"u",` + stamp + `,` + cfgKey + `}`},
		{name: "every occurrence of a replaced apiKey is removed", kind: Track,
			body: `{"apiKey":"old","event":"x","apiKey":"","userId":"u",` + ts + `,"apiKey":null}`,
			want: `{"event":"x","userId":"u",` + ts + `,` + cfgKey + `}`},
		{name: "every occurrence of a replaced timestamp is removed, valid or not", kind: Track,
			body: `{` + ts + `,"event":"x","timestamp":"garbage","userId":"u",` + key + `,"timestamp":null}`,
			want: `{"event":"x","userId":"u",` + key + `,` + stamp + `}`},
		{name: "escaped keys of replaced members are removed", kind: Identify,
			body: `{"\u0074imestamp":"2021-12-02T00:30Z","userId":"u","api\u004bey":"k","timestamp":null,"apiKey":""}`,
			want: `{"userId":"u",` + stamp + `,` + cfgKey + `}`},
		{name: "whitespace around removed members", kind: Track,
			body: "\t{ \"timestamp\" : null , \"event\":\"x\" ,\"userId\":\"u\",\"apiKey\" : \"\" }\t",
			want: "\t{ \"event\":\"x\" ,\"userId\":\"u\"," + stamp + "," + cfgKey + " }\t"},
		{name: "members that only look like the replaced ones are kept", kind: Track,
			body: `{"event":"x","userId":"u","properties":{"timestamp":null,"apiKey":""},"Timestamp":null,"apikey":"","timestamp ":null}`,
			want: `{"event":"x","userId":"u","properties":{"timestamp":null,"apiKey":""},"Timestamp":null,"apikey":"","timestamp ":null,` + stamp + `,` + cfgKey + `}`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out, err := Prepare(nil, tc.kind, []byte(tc.body), testDefaults)
			if err != nil {
				t.Fatalf("Prepare(%q): %v", tc.body, err)
			}
			if string(out) != tc.want {
				t.Fatalf("Prepare(%q)\n got %q\nwant %q", tc.body, out, tc.want)
			}
			checkAccepted(t, tc.kind, []byte(tc.body), out, testDefaults)
		})
	}
}

var (
	validTimestamps = []string{
		"2021-12-02T00:30:08.276Z",
		"2021-12-02T00:30:08Z",
		"2021-12-02T00:30Z",
		"2021-12-02T00:30:08.276",        // local time
		"2021-12-02T00:30",               // local time, no seconds
		"2021-12-02T00:30:08.276+05:30",  // ±HH:MM
		"2021-12-02T00:30:08-0800",       // ±HHMM
		"2021-12-02T23:59:59.123456789Z", // any number of fraction digits
		"2021-12-02T00:30:08.1Z",
		"2024-02-29T00:00:00Z", // leap year
		"2000-02-29T00:00:00Z", // divisible by 400
		"2016-12-31T23:59:60Z", // leap second
		"0000-01-01T00:00Z",
		"9999-12-31T23:59:59.999+23:59",
		"2021-04-30T12:00Z",
		"2021-01-31T12:00Z",
	}
	invalidTimestamps = []string{
		"",
		"2021-12-02",
		"2021-12-02T00",
		"2021-12-02T00:30:08.276z",
		"2021-12-02t00:30:08Z",
		"2021-12-02 00:30:08Z",
		"2021-12-02T00:30:08,276Z",
		"2021-13-02T00:30Z",
		"2021-00-02T00:30Z",
		"2021-12-00T00:30Z",
		"2021-12-32T00:30Z",
		"2021-02-29T00:30Z", // not a leap year
		"1900-02-29T00:30Z", // divisible by 100, not 400
		"2021-04-31T00:30Z",
		"2021-06-31T00:30Z",
		"2021-09-31T00:30Z",
		"2021-11-31T00:30Z",
		"2021-12-02T24:00Z",
		"2021-12-02T00:60Z",
		"2021-12-02T00:30:61Z",
		"2021-12-02T00:30:08.Z",
		"2021-12-02T00:30:8Z",
		"2021-12-02T0:30Z",
		"21-12-02T00:30Z",
		"+2021-12-02T00:30Z",
		"2021-12-02T00:30:08+5:00",
		"2021-12-02T00:30:08+05",
		"2021-12-02T00:30:08+05:3",
		"2021-12-02T00:30:08+053",
		"2021-12-02T00:30:08+24:00",
		"2021-12-02T00:30:08+05:60",
		"2021-12-02T00:30:08+05:30:00",
		"2021-12-02T00:30:08ZZ",
		"2021-12-02T00:30:08Z ",
		" 2021-12-02T00:30:08Z",
		"2021-12-02T00:30:",
		"2021-12-02T00:30.5Z",
		"2021/12/02T00:30Z",
		"2021-12-02T00:30:08.276Z\u0000",
		"２０２１-12-02T00:30Z",
		"1638405008276",
	}
)

func TestTimestampFormats(t *testing.T) {
	for _, s := range validTimestamps {
		if !validTimestamp([]byte(s)) || !refTimestamp(s) {
			t.Errorf("validTimestamp(%q) = %v, reference %v; want true", s, validTimestamp([]byte(s)), refTimestamp(s))
		}
	}
	for _, s := range invalidTimestamps {
		if validTimestamp([]byte(s)) || refTimestamp(s) {
			t.Errorf("validTimestamp(%q) = %v, reference %v; want false", s, validTimestamp([]byte(s)), refTimestamp(s))
		}
	}
	// Through Prepare, including escapes that must be decoded first.
	for _, tc := range []struct {
		raw string
		ok  bool
	}{
		{`"2021-12-02T00:30:08.276Z"`, true},
		{`"2021\u002d12-02T00:30:08.276Z"`, true},
		{`"2021-12-02T00:30:08.276\u002B01:00"`, true},
		{`"2021-12-02T00:30:08.276\u0000"`, false},
		{`"2021-12-02T00:30:08.276\u00e9"`, false},
		{`"2021-12-02T00:30:08.` + strings.Repeat("\\u0031", 100) + `Z"`, true},
		{`"2021-12-02\nT00:30Z"`, false},
	} {
		body := `{"event":"x","userId":"u","apiKey":"k","timestamp":` + tc.raw + `}`
		out, err := Prepare(nil, Track, []byte(body), testDefaults)
		if tc.ok && (err != nil || string(out) != body) {
			t.Errorf("timestamp %s: Prepare = %q, %v; want it accepted unchanged", tc.raw, out, err)
		}
		if !tc.ok && err == nil {
			t.Errorf("timestamp %s accepted, want an error", tc.raw)
		}
	}
}

func TestPrepareInsertsAPIKeyAsJSONString(t *testing.T) {
	for _, k := range []string{
		`plain`,
		`quote " and backslash \ and slash /`,
		"controls \x00\x01\b\f\n\r\t\x1f\x7f",
		"non-ASCII é ☕ 𝄞 \u2028\u2029",
	} {
		d := Defaults{Now: testNow, APIKey: k}
		body := []byte(`{"event":"x","userId":"u"}`)
		out, err := Prepare(nil, Track, body, d)
		if err != nil {
			t.Fatalf("APIKey %q: %v", k, err)
		}
		checkAccepted(t, Track, body, out, d)
	}
	// Invalid UTF-8 in the configured key cannot be sent as JSON: it is
	// replaced, as encoding/json does.
	out, err := Prepare(nil, Track, []byte(`{"event":"x","userId":"u"}`), Defaults{Now: testNow, APIKey: "a\xffb"})
	if err != nil || !strings.Contains(string(out), `"apiKey":"a\ufffdb"`) {
		t.Fatalf("Prepare with an invalid UTF-8 key = %q, %v", out, err)
	}
}

func TestErrorsNeverShowTheAPIKey(t *testing.T) {
	const secret = "s3cr3t-VALUE"
	bodies := []string{
		`{"apiKey":"` + secret + "\x01" + `"}`,
		`{"apiKey":"` + secret + `\q"}`,
		`{"apiKey":"` + secret + "\xff" + `"}`,
		`{"apiKey":"` + secret + `"`,
		`{"apiKey":"` + secret + `",}`,
		`{"apiKey":"` + secret + `"}`,
		`{"apiKey":"` + secret + `","userId":"u","timestamp":"x"}`,
		`{"apiKey":["` + secret + `"],"userId":"u"}`,
		`{"apiKey":{"` + secret + `":1},"userId":"u"}`,
		`["` + secret + `"]`,
		`"` + secret + `"`,
		`{"event":"x","userId":"u"}`,
		`{"event":"x","userId":"u","apiKey":""}`,
	}
	for _, kind := range []Kind{Track, Identify} {
		for _, b := range bodies {
			for _, d := range []Defaults{{Now: testNow}, {Now: testNow, APIKey: secret}} {
				_, err := Prepare(nil, kind, []byte(b), d)
				if err == nil {
					continue
				}
				if strings.Contains(err.Error(), "s3cr3t") {
					t.Errorf("Prepare(%s, %q): error %q shows the key", kind, b, err)
				}
			}
		}
	}
}

func TestPrepareAppendsToDst(t *testing.T) {
	body := []byte(`{"event":"x","userId":"u"}`)
	dst := make([]byte, 0, 256)
	dst = append(dst, "keep:"...)
	out, err := Prepare(dst, Track, body, testDefaults)
	if err != nil {
		t.Fatal(err)
	}
	want := `keep:{"event":"x","userId":"u","timestamp":"` + testStamp + `","apiKey":"cfg-key"}`
	if string(out) != want {
		t.Fatalf("got %q, want %q", out, want)
	}
	if &out[0] != &dst[:1][0] {
		t.Error("Prepare did not reuse dst's room")
	}
}

func TestPrepareReusingDstAllocatesNothing(t *testing.T) {
	for name, body := range map[string]string{
		"complete":           benchComplete,
		"missing members":    benchStamp,
		"members to replace": `{"timestamp":null,"event":"x","userId":"u","apiKey":""}`,
		"escaped timestamp":  `{"event":"x","userId":"u","apiKey":"k","timestamp":"\u0032021-12-02T00:30:08.276Z"}`,
	} {
		buf := make([]byte, 0, 1024)
		b := []byte(body)
		allocs := testing.AllocsPerRun(100, func() {
			var err error
			buf, err = Prepare(buf[:0], Track, b, testDefaults)
			if err != nil {
				t.Fatal(err)
			}
		})
		if allocs != 0 {
			t.Errorf("%s: %v allocations per Prepare, want 0", name, allocs)
		}
	}
}

func TestPrepareZeroNowMeansTimeNow(t *testing.T) {
	body := []byte(`{"event":"x","userId":"u"}`)
	d := Defaults{APIKey: "k"}
	out, err := Prepare(nil, Track, body, d)
	if err != nil {
		t.Fatal(err)
	}
	checkAccepted(t, Track, body, out, d)
}

func TestPrepareTrackdFaults(t *testing.T) {
	body := []byte(`{"event":"x","userId":"u"}`)
	for _, kind := range []Kind{0, 3, 255} {
		out, err := Prepare([]byte("dst"), kind, body, testDefaults)
		var e *Error
		if err == nil || errors.As(err, &e) || string(out) != "dst" {
			t.Errorf("kind %v: Prepare = %q, %v; want a non-*Error error and dst unchanged", kind, out, err)
		}
	}
	for _, now := range []time.Time{
		time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC),
		time.Date(-1, 1, 1, 0, 0, 0, 0, time.UTC),
	} {
		_, err := Prepare(nil, Track, body, Defaults{Now: now, APIKey: "k"})
		var e *Error
		if err == nil || errors.As(err, &e) {
			t.Errorf("clock at %v: err = %v; want a non-*Error error", now, err)
		}
	}
	// A clock out of range does not matter when nothing is stamped.
	complete := []byte(`{"event":"x","userId":"u",` + ts + `}`)
	if _, err := Prepare(nil, Track, complete, Defaults{Now: time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC), APIKey: "k"}); err != nil {
		t.Errorf("complete body with a clock out of range: %v", err)
	}
}

func TestKindString(t *testing.T) {
	for k, want := range map[Kind]string{Track: "track", Identify: "identify", 7: "Kind(7)"} {
		if got := k.String(); got != want {
			t.Errorf("Kind(%d).String() = %q, want %q", uint8(k), got, want)
		}
	}
}
