// Package layout holds the test of the rules the package graph keeps
// (README, "Architecture"): it reads every package's imports from the
// source, so a change that breaks a rule fails here with the import named.
package layout

import (
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

const module = "github.com/patchfleet/ota"

// imports maps each package of the module (path relative to the module
// root, "." for none) to the imports of its non-test files.
func imports(t *testing.T) map[string][]string {
	t.Helper()
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		t.Fatalf("module root not found at %s: %v", root, err)
	}
	pkgs := map[string][]string{}
	fset := token.NewFileSet()
	err = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if n := d.Name(); path != root && (strings.HasPrefix(n, ".") || n == "testdata" || n == "node_modules") {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		f, err := parser.ParseFile(fset, path, nil, parser.ImportsOnly)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, filepath.Dir(path))
		rel = filepath.ToSlash(rel)
		if _, ok := pkgs[rel]; !ok {
			pkgs[rel] = nil
		}
		for _, im := range f.Imports {
			p, _ := strconv.Unquote(im.Path.Value)
			if !slices.Contains(pkgs[rel], p) {
				pkgs[rel] = append(pkgs[rel], p)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return pkgs
}

// local returns p relative to the module, or "" for other modules.
func local(p string) string {
	if p == module {
		return "."
	}
	if rest, ok := strings.CutPrefix(p, module+"/"); ok {
		return rest
	}
	return ""
}

func under(pkg, dir string) bool { return pkg == dir || strings.HasPrefix(pkg, dir+"/") }

// TestPackageGraph: the domain does not import the wiring or the pages,
// the domain's parts under server/ do not import server itself, the domain
// imports neither Echo nor gorm, and the handset client builds without
// an HTTP framework, an ORM, S3 or a SQL driver.
func TestPackageGraph(t *testing.T) {
	pkgs := imports(t)
	if len(pkgs) < 20 {
		t.Fatalf("found %d packages; is the walk reading the module?", len(pkgs))
	}
	// below are the domain's parts under server: the API and the SQL
	// adapter (server/api, server/sqlstore) sit above server, these below.
	below := []string{"server/rollout", "server/handsets", "server/identity", "server/audit", "server/errs",
		"server/textrule", "server/httperr", "server/api/wire"}
	heavy := []string{"github.com/labstack/echo", "gorm.io/", "github.com/minio/", "github.com/jackc/pgx", "github.com/glebarez/sqlite", "github.com/prometheus/"}
	for pkg, ims := range pkgs {
		for _, im := range ims {
			l := local(im)
			switch {
			case under(pkg, "server") && l != "" && (under(l, "internal") || under(l, "web") || under(l, "cmd") || under(l, "client")):
				t.Errorf("%s imports %s: the domain and the API must not import the wiring, the pages, a command or the client", pkg, im)
			case slices.ContainsFunc(below, func(d string) bool { return under(pkg, d) }) && l == "server":
				t.Errorf("%s imports server: the domain's parts sit below it", pkg)
			case (pkg == "server" || slices.ContainsFunc(below, func(d string) bool { return under(pkg, d) })) &&
				slices.ContainsFunc(heavy, func(h string) bool { return strings.HasPrefix(im, h) }):
				t.Errorf("%s imports %s: the domain is plain Go", pkg, im)
			}
		}
	}
	// What the handset half pulls in, in the module and directly outside.
	seen := map[string]bool{}
	var walk func(string, []string)
	walk = func(pkg string, via []string) {
		if seen[pkg] {
			return
		}
		seen[pkg] = true
		ims, ok := pkgs[pkg]
		if !ok {
			t.Fatalf("package %s not found", pkg)
		}
		for _, im := range ims {
			if l := local(im); l != "" {
				walk(l, append(via, pkg))
			} else if slices.ContainsFunc(heavy, func(h string) bool { return strings.HasPrefix(im, h) }) {
				t.Errorf("client/agent pulls in %s through %s", im, strings.Join(append(via, pkg), " -> "))
			}
		}
	}
	walk("client/agent", nil)
	if !seen["client"] || !seen["server/api/wire"] {
		t.Errorf("client/agent's imports %v miss client or wire: is the walk right?", seen)
	}
}
