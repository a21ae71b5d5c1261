package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/patchfleet/ota/internal/apitest"
	"github.com/patchfleet/ota/manifests"
	"github.com/patchfleet/ota/server/identity"
)

// engineer is one release engineer: a key, a passphrase and a token.
type engineer struct {
	name  string
	key   string // private key file
	pub   string // FILE.pub
	pass  string
	token string
	id    string // key id
}

// result is one otactl run.
type result struct {
	code           int
	stdout, stderr string
}

// otactl runs the CLI in-process with env as its whole environment.
func otactl(tb testing.TB, env map[string]string, args ...string) result {
	tb.Helper()
	var stdout, stderr bytes.Buffer
	code := run(context.Background(), args, func(k string) string { return env[k] }, strings.NewReader(""), &stdout, &stderr)
	return result{code, stdout.String(), stderr.String()}
}

// mustRun runs otactl and fails the test unless it exits 0.
func mustRun(tb testing.TB, env map[string]string, args ...string) result {
	tb.Helper()
	r := otactl(tb, env, args...)
	if r.code != 0 {
		tb.Fatalf("otactl %s: exit %d\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), r.code, r.stdout, r.stderr)
	}
	return r
}

// env returns the environment engineer e runs otactl with against srv.
func (e *engineer) env(srv *apitest.Env) map[string]string {
	return map[string]string{envServer: srv.URL, envToken: e.token, envPassphrase: e.pass}
}

// newEngineer creates a token and a key for name.
func newEngineer(tb testing.TB, srv *apitest.Env, name string, flags ...string) *engineer {
	tb.Helper()
	_, token, err := srv.App.Tokens.Create(context.Background(), name, identity.RoleReleaseEngineer)
	if err != nil {
		tb.Fatal(err)
	}
	e := &engineer{name: name, key: filepath.Join(tb.TempDir(), name+".key"), pass: "correct horse " + name, token: token}
	e.pub = e.key + ".pub"
	r := mustRun(tb, e.env(srv), append([]string{"key", "generate", "--out", e.key}, flags...)...)
	e.id = strings.TrimSpace(r.stdout)
	if len(e.id) != 64 {
		tb.Fatalf("key generate printed %q, want a 64-digit key id", r.stdout)
	}
	return e
}

var draftIDPattern = regexp.MustCompile(`drafted (d-[0-9a-f]+)`)

// draftID returns the id in "drafted d-..." output.
func draftID(tb testing.TB, r result) string {
	tb.Helper()
	m := draftIDPattern.FindStringSubmatch(r.stdout)
	if m == nil {
		tb.Fatalf("no draft id in output:\n%s", r.stdout)
	}
	return m[1]
}

func repoStatus(tb testing.TB, srv *apitest.Env) *manifests.Status {
	tb.Helper()
	st, err := srv.Repo.Status(context.Background())
	if err != nil {
		tb.Fatal(err)
	}
	return st
}

// signatureCount is how many signatures draft id holds on the server.
func signatureCount(tb testing.TB, srv *apitest.Env, id string) int {
	tb.Helper()
	v, err := srv.Repo.DraftView(context.Background(), id)
	if err != nil {
		tb.Fatal(err)
	}
	n := 0
	for _, t := range v.Thresholds {
		n += len(t.Signed)
	}
	return n
}

// randomFile writes size random bytes to a new file.
func randomFile(tb testing.TB, size int) string {
	tb.Helper()
	b := make([]byte, size)
	rand.Read(b)
	p := filepath.Join(tb.TempDir(), "build.zip")
	if err := os.WriteFile(p, b, 0o644); err != nil {
		tb.Fatal(err)
	}
	return p
}

func wantContains(tb testing.TB, what, got string, wants ...string) {
	tb.Helper()
	for _, w := range wants {
		if !strings.Contains(got, w) {
			tb.Errorf("%s does not contain %q:\n%s", what, w, got)
		}
	}
}

// initRepo runs the ceremony with one 1-of-1 engineer for root and targets.
func initRepo(tb testing.TB, srv *apitest.Env, e *engineer) {
	tb.Helper()
	env := e.env(srv)
	r := mustRun(tb, env, "repo", "init", "--root-key", e.pub, "--root-threshold", "1",
		"--targets-key", e.pub, "--targets-threshold", "1")
	mustRun(tb, env, "repo", "sign", "--key", e.key, "--draft", draftID(tb, r), "--yes")
	if !repoStatus(tb, srv).Initialized {
		tb.Fatal("repository not initialized after the ceremony")
	}
}
