package config

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

// distinctive values that must never show up in output.
const (
	tokenValue  = "tok-Xyzzy-7f3a9c"
	apiKeyValue = "key-Plugh-41b2e8"
)

func configWithSecrets() Config {
	c := Default()
	c.Listen.AuthToken = tokenValue
	c.Upstream.APIKey = apiKeyValue
	return c
}

func assertNoSecret(t *testing.T, what, out string) {
	t.Helper()
	for _, s := range []string{tokenValue, apiKeyValue, "Xyzzy", "Plugh"} {
		if strings.Contains(out, s) {
			t.Errorf("%s leaks a secret: %s", what, out)
			return
		}
	}
}

func TestSecretRendersAsStars(t *testing.T) {
	for _, tc := range []struct {
		s    Secret
		want string
	}{
		{"", ""},
		{tokenValue, "***"},
	} {
		json, _ := tc.s.MarshalJSON()
		text, _ := tc.s.MarshalText()
		yml, _ := tc.s.MarshalYAML()
		for what, got := range map[string]any{
			"String":      tc.s.String(),
			"GoString":    tc.s.GoString(),
			"LogValue":    tc.s.LogValue().String(),
			"MarshalText": string(text),
			"MarshalYAML": yml,
			"MarshalJSON": string(json),
		} {
			want := tc.want
			if what == "MarshalJSON" {
				want = `"` + want + `"`
			}
			if got != want {
				t.Errorf("%s of %q = %q, want %q", what, tc.s.Reveal(), got, want)
			}
		}
	}
	if got := Secret(tokenValue).Reveal(); got != tokenValue {
		t.Errorf("Reveal = %q", got)
	}
}

func TestSecretDoesNotLeakThroughFmt(t *testing.T) {
	s := Secret(tokenValue)
	c := configWithSecrets()
	for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q", "%x", "%X", "%d", "%10s", "%-8v", "%T"} {
		for name, arg := range map[string]any{"Secret": s, "*Secret": &s, "Config": c, "*Config": &c, "Upstream": c.Upstream, "[]Secret": []Secret{s}, "map": map[string]Secret{"k": s}} {
			assertNoSecret(t, verb+" of "+name, fmt.Sprintf(verb, arg))
		}
	}
	if got := fmt.Sprintf("%v|%s|%#v", s, s, s); got != "***|***|***" {
		t.Errorf("got %q", got)
	}
	if got := fmt.Sprint(Secret("")); got != "" {
		t.Errorf("empty secret prints %q", got)
	}
	if got := fmt.Sprintf("%q", s); got != `"***"` {
		t.Errorf("%%q prints %s", got)
	}
}

func TestSecretDoesNotLeakThroughSlog(t *testing.T) {
	c := configWithSecrets()
	for _, tc := range []struct {
		name string
		new  func(*bytes.Buffer) slog.Handler
	}{
		{"text", func(b *bytes.Buffer) slog.Handler { return slog.NewTextHandler(b, nil) }},
		{"json", func(b *bytes.Buffer) slog.Handler { return slog.NewJSONHandler(b, nil) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			log := slog.New(tc.new(&buf))
			log.Info("config", "token", c.Listen.AuthToken, "key", c.Upstream.APIKey)
			log.Info("config", "cfg", c, "ptr", &c, "listen", c.Listen)
			log.Info("config", slog.Any("upstream", c.Upstream), slog.Group("g", "token", c.Listen.AuthToken))
			log.With("token", c.Listen.AuthToken).Info("with")
			assertNoSecret(t, "slog "+tc.name, buf.String())
			if !strings.Contains(buf.String(), "***") {
				t.Errorf("slog output shows no redacted value: %s", buf.String())
			}
		})
	}
}

func TestSecretDoesNotLeakThroughMarshalling(t *testing.T) {
	c := configWithSecrets()
	js, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	assertNoSecret(t, "json.Marshal", string(js))
	ym, err := yaml.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	assertNoSecret(t, "yaml.Marshal", string(ym))
	out, err := c.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	assertNoSecret(t, "Config.Marshal", string(out))
	if !strings.Contains(string(out), `auth_token: '***'`) && !strings.Contains(string(out), `auth_token: "***"`) {
		t.Errorf("Marshal does not show a set auth_token as ***:\n%s", out)
	}
}

func TestSecretDoesNotLeakThroughErrors(t *testing.T) {
	doc := "listen:\n  auth_token: \"" + tokenValue + " x\"\nupstream:\n  url: https://" + apiKeyValue + ":" + apiKeyValue + "@h.example\n"
	ps := mustFail(t, doc, nil)
	if len(ps) != 2 {
		t.Fatalf("got:\n%s", fmtProblems(ps))
	}
	assertNoSecret(t, "problems", fmtProblems(ps))
	_, err := Parse([]byte("upstream:\n  url: \"https://"+apiKeyValue+"@h.example/%zz\"\n"), noEnv)
	var ce *Error
	if !errors.As(err, &ce) {
		t.Fatalf("err = %v", err)
	}
	assertNoSecret(t, "unparseable URL", err.Error())
}

func TestMarshalRoundTripsThroughParse(t *testing.T) {
	for name, c := range map[string]Config{
		"defaults":      Default(),
		"every key set": mustParse(t, everyKeySet, nil),
		"with secrets":  configWithSecrets(),
	} {
		t.Run(name, func(t *testing.T) {
			out, err := c.Marshal()
			if err != nil {
				t.Fatal(err)
			}
			back, err := Parse(out, noEnv)
			if err != nil {
				t.Fatalf("Parse(Marshal()) failed: %v\n%s", err, out)
			}
			want := c
			if want.Listen.AuthToken != "" {
				want.Listen.AuthToken = "***"
			}
			if want.Upstream.APIKey != "" {
				want.Upstream.APIKey = "***"
			}
			if !reflect.DeepEqual(back, want) {
				t.Errorf("round trip gave\n%#v\nwant\n%#v\nYAML:\n%s", back, want, out)
			}
		})
	}
}

func TestMarshalWritesReadableValues(t *testing.T) {
	out, err := Default().Marshal()
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"listen:\n  http: 127.0.0.1:8790\n",
		`unix_mode: "0660"`,
		"max_body_bytes: 65536\n",
		"timeout: 10s\n",
		"max: 5m\n",
		"max_bytes: 1073741824\n",
		"max_age: 168h\n",
		"auth_token: \"\"\n",
	} {
		if !strings.Contains(string(out), want) {
			t.Errorf("Marshal output lacks %q:\n%s", want, out)
		}
	}
}

func TestTypesDecodeWithPlainYAMLAndJSON(t *testing.T) {
	var v struct {
		D Duration `yaml:"d" json:"d"`
		S Size     `yaml:"s" json:"s"`
		M FileMode `yaml:"m" json:"m"`
	}
	if err := yaml.Unmarshal([]byte("d: 90s\ns: 2KiB\nm: 640\n"), &v); err != nil {
		t.Fatal(err)
	}
	if v.D.String() != "1m30s" || v.S != 2048 || v.M != 0o640 {
		t.Errorf("yaml gave %+v", v)
	}
	if err := yaml.Unmarshal([]byte("d: 5\n"), &v); err == nil || !strings.Contains(err.Error(), "use a unit") {
		t.Errorf("bare duration: %v", err)
	}
	js, err := json.Marshal(v)
	if err != nil || string(js) != `{"d":"1m30s","s":2048,"m":"0640"}` {
		t.Errorf("json = %s, %v", js, err)
	}
	if err := json.Unmarshal([]byte(`{"d":"2h","m":"0600"}`), &v); err != nil || v.D.D().Hours() != 2 || v.M != 0o600 {
		t.Errorf("json decode gave %+v, %v", v, err)
	}
}
