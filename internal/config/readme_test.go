package config

import (
	"bufio"
	"os"
	"reflect"
	"regexp"
	"strings"
	"testing"
)

// The README's configuration table and the Config struct name the same
// variables: every HUB_ setting parsed is documented, with the default it
// has, and every documented one is parsed.
func TestREADMEConfigurationTable(t *testing.T) {
	documented := readmeVariables(t, "../../README.md")
	parsed := map[string]bool{}
	typ := reflect.TypeFor[Config]()
	for i := range typ.NumField() {
		name, _, _ := strings.Cut(typ.Field(i).Tag.Get("env"), ",")
		if name == "" {
			continue
		}
		parsed[name] = true
		doc, ok := documented[name]
		if !ok {
			t.Errorf("%s is parsed but not in the README's configuration table", name)
			continue
		}
		def, hasDef := typ.Field(i).Tag.Lookup("envDefault")
		if !hasDef {
			def = "empty"
			if name == "HUB_NODE_ID" {
				def = "hostname"
			}
		}
		if !strings.HasPrefix(doc, def) {
			t.Errorf("README: %s: got default %q, want %q", name, doc, def)
		}
	}
	for name := range documented {
		if !parsed[name] {
			t.Errorf("%s is in the README's configuration table but not parsed", name)
		}
	}
	if len(parsed) < 10 {
		t.Fatalf("got %d variables from Config's env tags, want them all", len(parsed))
	}
}

var (
	tableRow = regexp.MustCompile("^\\| *`HUB_")
	varName  = regexp.MustCompile("`(HUB_[A-Z0-9_]+)`")
)

// readmeVariables returns the variables named in the first cell of the rows
// of the table under "## Configuration", each with the row's default cell
// (backquotes removed); a cell may name several ("`HUB_CLIENT_RATE` /
// `HUB_CLIENT_BURST`"), which then share the default cell.
func readmeVariables(t *testing.T, path string) map[string]string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string]string{}
	in := false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "## ") {
			in = strings.TrimSpace(line) == "## Configuration"
			continue
		}
		if !in || !tableRow.MatchString(line) {
			continue
		}
		cells := strings.Split(line, "|")
		if len(cells) < 4 {
			t.Errorf("README: a row with fewer than three cells: %s", line)
			continue
		}
		names := varName.FindAllStringSubmatch(cells[1], -1)
		defs := splitDefaults(strings.ReplaceAll(cells[2], "`", ""), len(names))
		for i, m := range names {
			if _, dup := out[m[1]]; dup {
				t.Errorf("README: %s has two rows", m[1])
			}
			out[m[1]] = defs[i]
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if len(out) == 0 {
		t.Fatalf("%s: no `HUB_...` rows under ## Configuration", path)
	}
	return out
}

// splitDefaults splits a default cell into n defaults when it lists n values
// ("100 / 200", "empty, false"); otherwise the n variables share it.
func splitDefaults(cell string, n int) []string {
	for _, sep := range []string{" / ", ", "} {
		if parts := strings.Split(cell, sep); n > 1 && len(parts) == n {
			for i := range parts {
				parts[i] = strings.TrimSpace(parts[i])
			}
			return parts
		}
	}
	out := make([]string, n)
	for i := range out {
		out[i] = strings.TrimSpace(cell)
	}
	return out
}
