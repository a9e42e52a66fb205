package config

import (
	"strconv"
	"strings"
	"testing"
)

func TestEnvironmentExpansion(t *testing.T) {
	env := envOf(map[string]string{
		"TOKEN":   `p#ss: w'o"rd {x} $HOME ${NOT_EXPANDED_AGAIN} - [1]`,
		"TOKEN2":  `p#ss:w'o"rd#x&*!`,
		"HOST":    "127.0.0.1",
		"PORT":    "9000",
		"EMPTY":   "",
		"RATE":    "2.5",
		"WAIT":    "3s",
		"NEWLINE": "a\nb",
	})
	for _, tc := range []struct {
		name  string
		key   string
		value string
		get   func(Config) string
		want  string
	}{
		{"a secret keeps YAML-special characters", "upstream.api_key", "${TOKEN}",
			func(c Config) string { return c.Upstream.APIKey.Reveal() }, `p#ss: w'o"rd {x} $HOME ${NOT_EXPANDED_AGAIN} - [1]`},
		{"a quoted reference expands too", "listen.auth_token", `"${TOKEN2}"`,
			func(c Config) string { return c.Listen.AuthToken.Reveal() }, `p#ss:w'o"rd#x&*!`},
		{"a value with a line break stays one value", "upstream.api_key", "${NEWLINE}",
			func(c Config) string { return c.Upstream.APIKey.Reveal() }, "a\nb"},
		{"references combine with text", "listen.http", "${HOST}:${PORT}",
			func(c Config) string { return c.Listen.HTTP }, "127.0.0.1:9000"},
		{"an empty variable gives an empty value", "listen.unix", "${EMPTY}",
			func(c Config) string { return c.Listen.Unix }, ""},
		{"$$ is a literal $", "upstream.api_key", "a$$b",
			func(c Config) string { return c.Upstream.APIKey.Reveal() }, "a$b"},
		{"$${ is a literal ${", "upstream.api_key", "$${TOKEN}",
			func(c Config) string { return c.Upstream.APIKey.Reveal() }, "${TOKEN}"},
		{"a lone $ is kept", "upstream.api_key", "pa$word$",
			func(c Config) string { return c.Upstream.APIKey.Reveal() }, "pa$word$"},
		{"$NAME without braces is not expanded", "upstream.api_key", "$TOKEN",
			func(c Config) string { return c.Upstream.APIKey.Reveal() }, "$TOKEN"},
		{"a number can come from the environment", "upstream.rate", "${RATE}",
			func(c Config) string { return strconv.FormatFloat(c.Upstream.Rate, 'g', -1, 64) }, "2.5"},
		{"a duration can come from the environment", "shutdown.timeout", "${WAIT}",
			func(c Config) string { return c.Shutdown.Timeout.String() }, "3s"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			doc := nested(tc.key, tc.value)
			if tc.key == "listen.unix" {
				doc += "  http: 127.0.0.1:1\n"
			}
			c := mustParse(t, doc, env)
			if got := tc.get(c); got != tc.want {
				t.Errorf("%s = %q, want %q", tc.key, got, tc.want)
			}
		})
	}
}

func TestEnvironmentExpansionErrors(t *testing.T) {
	const secret = "sekrit-VALUE-42"
	for _, tc := range []struct {
		name  string
		key   string
		value string
		want  string
	}{
		{"an unset variable names the key and the variable", "upstream.api_key", "${TRACKD_NOT_SET}",
			"`upstream.api_key` refers to the environment variable TRACKD_NOT_SET, which is not set"},
		{"an unset variable among text", "listen.http", "${HOST}:${TRACKD_PORT}",
			"refers to the environment variable TRACKD_PORT, which is not set"},
		{"an unclosed reference", "listen.auth_token", secret + "${OOPS",
			"`listen.auth_token` has a ${ with no closing }; write $$ for a literal $"},
		{"an empty name", "upstream.api_key", secret + "${}", "malformed ${...} reference"},
		{"a name that starts with a digit", "upstream.api_key", "${1X}", "malformed ${...} reference"},
		{"a name with a dash", "upstream.api_key", "${" + secret + "}", "malformed ${...} reference"},
		{"a default value syntax is not supported", "upstream.api_key", "${X:-" + secret + "}", "malformed ${...} reference"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ps := mustFail(t, nested(tc.key, tc.value), envOf(map[string]string{"HOST": "h"}))
			p := problemFor(t, ps, tc.key)
			if p.Line != nestedLine(tc.key) || !strings.Contains(p.Message, tc.want) {
				t.Errorf("got line %d %q, want line %d and %q", p.Line, p.Message, nestedLine(tc.key), tc.want)
			}
			if strings.Contains(p.Message, secret) {
				t.Errorf("message shows the value: %s", p.Message)
			}
		})
	}
}

func TestKeysAreNotExpanded(t *testing.T) {
	ps := mustFail(t, "${SECTION}:\n  level: info\n", envOf(map[string]string{"SECTION": "log"}))
	p := problemFor(t, ps, "${SECTION}")
	if !strings.Contains(p.Message, "unknown key") {
		t.Errorf("got %q", p.Message)
	}
}

func TestUnsetVariableInAnUnknownKeyIsOnlyAnUnknownKey(t *testing.T) {
	ps := mustFail(t, "log:\n  colour: ${NOPE}\n", nil)
	if len(ps) != 1 || ps[0].Key != "log.colour" {
		t.Errorf("got:\n%s", fmtProblems(ps))
	}
}

func TestAPIKeyFromEnvironment(t *testing.T) {
	for _, tc := range []struct {
		name string
		doc  string
		env  map[string]string
		want string
	}{
		{"TRACKD_API_KEY overrides the file", "upstream:\n  api_key: from-file\n", map[string]string{"TRACKD_API_KEY": "from-env"}, "from-env"},
		{"TRACKD_API_KEY sets a key the file leaves out", "", map[string]string{"TRACKD_API_KEY": "from-env"}, "from-env"},
		{"TRACKD_API_KEY overrides an expanded value", "upstream:\n  api_key: ${OTHER}\n", map[string]string{"TRACKD_API_KEY": "from-env", "OTHER": "other"}, "from-env"},
		{"an empty TRACKD_API_KEY keeps the file's key", "upstream:\n  api_key: from-file\n", map[string]string{"TRACKD_API_KEY": ""}, "from-file"},
		{"an unset TRACKD_API_KEY keeps the file's key", "upstream:\n  api_key: from-file\n", nil, "from-file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := mustParse(t, tc.doc, envOf(tc.env))
			if got := c.Upstream.APIKey.Reveal(); got != tc.want {
				t.Errorf("api_key = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestNilLookupEnvUsesTheProcessEnvironment(t *testing.T) {
	t.Setenv("TRACKD_CONFIG_TEST_TOKEN", "tok")
	t.Setenv(EnvAPIKey, "process-key")
	c, err := Parse([]byte("listen:\n  auth_token: ${TRACKD_CONFIG_TEST_TOKEN}\n"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.Listen.AuthToken.Reveal() != "tok" || c.Upstream.APIKey.Reveal() != "process-key" {
		t.Errorf("got %q, %q", c.Listen.AuthToken.Reveal(), c.Upstream.APIKey.Reveal())
	}
}
