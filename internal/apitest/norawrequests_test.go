package apitest

import (
	"go/ast"
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

// rawRequestAllowed are the files outside package client that may build
// HTTP requests by hand (http.NewRequest, http.NewRequestWithContext),
// each with why. Every other caller of the API goes through package
// client: hand-built requests drift from the API (four hand-written
// clients and two simulators did). An entry whose file no longer builds
// requests by hand fails the test too, so that the list only shrinks.
var rawRequestAllowed = map[string]string{
	// Not calls of otad's API.
	"cmd/ota-agent/e2e_test.go":      "a test proxy that relays the agent's requests upstream as they came, to cut them",
	"manifests/blobtest/blobtest.go": "fetches a blob store's presigned URL (MinIO, S3), not otad",
	"cmd/otad/demo_test.go":          "logs in to the web pages with a session cookie; package client speaks the JSON API only",
	"cmd/otad/addr_test.go":          "sends another Host header (req.Host), which a client never would",
}

// rawRequestAllowedDir are folders whose tests may build requests by
// hand, with why.
var rawRequestAllowedDir = map[string]string{
	"internal/apitest/": "the API's own tests (moved from server/apitest): they send what no client would, malformed and hostile requests",
}

// TestNoRawRequests walks the module's Go files and fails on hand-built
// HTTP requests outside package client, the server's own tests and the
// allowlists above.
func TestNoRawRequests(t *testing.T) {
	root := moduleRoot(t)
	var offenders []string
	seen := map[string]bool{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel := filepath.ToSlash(strings.TrimPrefix(p, root+string(filepath.Separator)))
		if d.IsDir() {
			if name := d.Name(); p != root && (strings.HasPrefix(name, ".") || name == "testdata" || name == "vendor" || name == "node_modules") {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(rel, ".go") || rawRequestExempt(rel) {
			return nil
		}
		lines, err := rawRequests(p)
		if err != nil {
			return err
		}
		if len(lines) == 0 {
			return nil
		}
		if _, ok := rawRequestAllowed[rel]; ok {
			seen[rel] = true
			return nil
		}
		for dir := range rawRequestAllowedDir {
			if strings.HasPrefix(rel, dir) && strings.HasSuffix(rel, "_test.go") {
				return nil
			}
		}
		for _, l := range lines {
			offenders = append(offenders, rel+":"+strconv.Itoa(l))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(offenders) > 0 {
		slices.Sort(offenders)
		t.Errorf("HTTP requests built by hand (http.NewRequest...) outside package client; call the API through package client "+
			"(client.New, WithToken, NewRequest/Send for what it does not wrap), or add the file to rawRequestAllowed saying why:\n\t%s",
			strings.Join(offenders, "\n\t"))
	}
	for rel := range rawRequestAllowed {
		if !seen[rel] {
			t.Errorf("rawRequestAllowed lists %s, which builds no request by hand (any more?): drop the entry", rel)
		}
	}
}

// rawRequestExempt: package client builds the requests, and the server's
// own tests send what a client would not.
func rawRequestExempt(rel string) bool {
	return strings.HasPrefix(rel, "client/") || (strings.HasPrefix(rel, "server/") && strings.HasSuffix(rel, "_test.go"))
}

// rawRequests returns the lines of file name that call net/http's
// NewRequest or NewRequestWithContext, under whatever name the file
// imports net/http.
func rawRequests(name string) ([]int, error) {
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, name, nil, parser.SkipObjectResolution)
	if err != nil {
		return nil, err
	}
	pkg := ""
	for _, imp := range f.Imports {
		if imp.Path.Value == `"net/http"` {
			pkg = "http"
			if imp.Name != nil {
				pkg = imp.Name.Name
			}
		}
	}
	if pkg == "" || pkg == "_" {
		return nil, nil
	}
	var lines []int
	ast.Inspect(f, func(n ast.Node) bool {
		sel, ok := n.(*ast.SelectorExpr)
		if !ok {
			return true
		}
		if id, ok := sel.X.(*ast.Ident); ok && id.Name == pkg &&
			(sel.Sel.Name == "NewRequest" || sel.Sel.Name == "NewRequestWithContext") {
			lines = append(lines, fset.Position(sel.Pos()).Line)
		}
		return true
	})
	return lines, nil
}

// moduleRoot is the folder of go.mod above the test's folder.
func moduleRoot(t *testing.T) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("no go.mod above the test's folder")
		}
		dir = parent
	}
}
