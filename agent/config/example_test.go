package config

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

// examplePath is the repository's example config, relative to this package.
const examplePath = "../../config.example.yaml"

func TestExampleConfigLoadsAndValidates(t *testing.T) {
	c, err := Load(examplePath, noEnv)
	if err != nil {
		t.Fatalf("Load(%s): %v", examplePath, err)
	}
	if err := c.Validate(); err != nil {
		t.Fatalf("Validate: %v", err)
	}
	dir, err := filepath.Abs(filepath.Dir(examplePath))
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(dir, "data", "spool.db"); c.Spool.Path != want {
		t.Errorf("spool.path = %q, want %q (relative to the example file)", c.Spool.Path, want)
	}
	if want := filepath.Join(dir, "data", "trackd.sock"); c.Listen.Unix != want {
		t.Errorf("listen.unix = %q, want %q", c.Listen.Unix, want)
	}
	if c.Listen.HTTP != "127.0.0.1:8790" || c.Upstream.URL != Default().Upstream.URL || c.Upstream.APIKey != "" {
		t.Errorf("example differs from the demo values it promises: %+v", c)
	}
}

func TestExampleConfigLoadsWithTheAPIKeyFromTheEnvironment(t *testing.T) {
	c, err := Load(examplePath, envOf(map[string]string{EnvAPIKey: "demo-key"}))
	if err != nil {
		t.Fatal(err)
	}
	if c.Upstream.APIKey.Reveal() != "demo-key" {
		t.Errorf("api_key = %q", c.Upstream.APIKey.Reveal())
	}
}

// keyNodes maps the dotted path of every key in a YAML mapping tree to its
// key node.
func keyNodes(n *yaml.Node, prefix string, out map[string]*yaml.Node) {
	if n.Kind == yaml.DocumentNode {
		for _, c := range n.Content {
			keyNodes(c, prefix, out)
		}
		return
	}
	if n.Kind != yaml.MappingNode {
		return
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		key := joinKey(prefix, n.Content[i].Value)
		out[key] = n.Content[i]
		keyNodes(n.Content[i+1], key, out)
	}
}

func parseTree(t *testing.T, data []byte) map[string]*yaml.Node {
	t.Helper()
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		t.Fatal(err)
	}
	keys := map[string]*yaml.Node{}
	keyNodes(&doc, "", keys)
	return keys
}

func TestExampleConfigDocumentsEveryKey(t *testing.T) {
	data, err := os.ReadFile(examplePath)
	if err != nil {
		t.Fatal(err)
	}
	example := parseTree(t, data)
	defaults, err := Default().Marshal()
	if err != nil {
		t.Fatal(err)
	}
	all := parseTree(t, defaults)
	if len(all) == 0 {
		t.Fatal("no keys in Default().Marshal()")
	}
	leaves := map[string]bool{}
	for _, k := range leafKeys(reflect.TypeFor[Config](), "") {
		leaves[k] = true
	}
	for key := range all {
		n, ok := example[key]
		if !ok {
			t.Errorf("config.example.yaml lacks `%s`", key)
			continue
		}
		comment := n.HeadComment + n.LineComment
		if comment == "" {
			t.Errorf("config.example.yaml:%d: `%s` has no comment", n.Line, key)
		}
		if leaves[key] && !strings.Contains(comment, "Default") {
			t.Errorf("config.example.yaml:%d: the comment on `%s` does not give its default", n.Line, key)
		}
	}
}
