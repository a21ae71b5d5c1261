package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/patchfleet/ota/internal/apitest"
	"github.com/patchfleet/ota/manifests"
	"github.com/patchfleet/ota/server/api/wire"
)

// proxy serves srv through a reverse proxy whose modify function may
// change answers; it counts signature uploads that reach the server.
type proxy struct {
	URL     string
	uploads atomic.Int32
}

func startProxy(tb testing.TB, srv *apitest.Env, modifyRequest func(*http.Request), modifyResponse func(*http.Response) error) *proxy {
	tb.Helper()
	target, err := url.Parse(srv.URL)
	if err != nil {
		tb.Fatal(err)
	}
	p := &proxy{}
	rp := httputil.NewSingleHostReverseProxy(target)
	rp.ModifyResponse = modifyResponse
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Path, "/signatures") {
			p.uploads.Add(1)
		}
		if modifyRequest != nil {
			modifyRequest(r)
		}
		rp.ServeHTTP(w, r)
	}))
	tb.Cleanup(ts.Close)
	p.URL = ts.URL
	return p
}

// editDraft rewrites the DraftView answers of GET /drafts/... with edit.
func editDraft(edit func(*manifests.DraftView)) func(*http.Response) error {
	return func(resp *http.Response) error {
		if resp.Request.Method != "GET" || !strings.Contains(resp.Request.URL.Path, "/admin/drafts/") || resp.StatusCode != 200 {
			return nil
		}
		data, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			return err
		}
		var v manifests.DraftView
		if err := json.Unmarshal(data, &v); err != nil {
			return err
		}
		edit(&v)
		if data, err = json.Marshal(v); err != nil {
			return err
		}
		resp.Body = io.NopCloser(bytes.NewReader(data))
		resp.ContentLength = int64(len(data))
		resp.Header.Set("Content-Length", strconv.Itoa(len(data)))
		return nil
	}
}

// TestSignRefusesTamperedDrafts serves a pending release draft through a
// proxy that alters it; otactl must refuse to sign and upload nothing.
func TestSignRefusesTamperedDrafts(t *testing.T) {
	srv := apitest.Start(t, apitest.Options{})
	alice := newEngineer(t, srv, "alice")
	initRepo(t, srv, alice)
	build := randomFile(t, 4096)
	r := mustRun(t, alice.env(srv), "release", "create", build, "--name", "fw/update.bin", "--patch-id", "CM-1")
	id := draftID(t, r)

	tests := []struct {
		name string
		edit func(*manifests.DraftView)
		want string
	}{
		{
			name: "bytes changed, digest kept",
			edit: func(v *manifests.DraftView) {
				v.Targets = bytes.Replace(v.Targets, []byte(`"CM-1"`), []byte(`"CM-9"`), 1)
			},
			want: "does not match its digest",
		},
		{
			name: "digest changed",
			edit: func(v *manifests.DraftView) { v.Digest = strings.Repeat("0", 64) },
			want: "does not match its digest",
		},
		{
			name: "bytes and digest changed together",
			edit: func(v *manifests.DraftView) {
				v.Targets = bytes.Replace(v.Targets, []byte(`"_type":"targets"`), []byte(`"_type":"root"`), 1)
				v.Digest = draftDigest(v.Root, v.Targets)
			},
			want: "not valid TUF targets metadata",
		},
		{
			name: "description lies",
			edit: func(v *manifests.DraftView) {
				v.Changes = []string{v.Changes[0], "adds target fw/other.bin (1 bytes, sha256 00)"}
			},
			want: "the server's description says it adds targets [fw/other.bin], but the draft's bytes adds [fw/update.bin]",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := startProxy(t, srv, nil, editDraft(tc.edit))
			env := alice.env(srv)
			env[envServer] = p.URL
			r := otactl(t, env, "release", "sign", id, "--key", alice.key, "--yes")
			if r.code == 0 {
				t.Fatalf("signed a tampered draft:\n%s", r.stdout)
			}
			wantContains(t, "stderr", r.stderr, tc.want)
			if n := p.uploads.Load(); n != 0 {
				t.Errorf("%d signature uploads, want none", n)
			}
			if n := signatureCount(t, srv, id); n != 0 {
				t.Errorf("%d signatures stored, want 0", n)
			}
		})
	}
}

func TestSignErrors(t *testing.T) {
	srv := apitest.Start(t, apitest.Options{})
	alice := newEngineer(t, srv, "alice")
	mallory := newEngineer(t, srv, "mallory")
	initRepo(t, srv, alice)
	r := mustRun(t, alice.env(srv), "release", "create", randomFile(t, 1000), "--name", "a.bin", "--patch-id", "P1")
	id := draftID(t, r)

	tests := []struct {
		name     string
		who      *engineer
		env      map[string]string // overrides
		args     []string
		wantCode int
		want     string
	}{
		{"key not in root", mallory, nil, []string{"release", "sign", id, "--key", mallory.key, "--yes"},
			1, "key " + mallory.id + " (" + mallory.key + ") may not sign draft " + id + ": no threshold lists it (root v1's targets keys needs 1 of " + alice.id[:12] + "); nothing was uploaded"},
		{"wrong passphrase", alice, map[string]string{envPassphrase: "wrong"}, []string{"release", "sign", id, "--key", alice.key, "--yes"},
			1, "wrong passphrase"},
		{"no passphrase and no terminal", alice, map[string]string{envPassphrase: ""}, []string{"release", "sign", id, "--key", alice.key, "--yes"},
			2, "set OTACTL_KEY_PASSPHRASE"},
		{"no terminal and no --yes", alice, nil, []string{"release", "sign", id, "--key", alice.key},
			2, "run again with --yes"},
		{"unknown draft", alice, nil, []string{"release", "sign", "d-00", "--key", alice.key, "--yes"},
			1, "no draft d-00"},
		{"missing key flag", alice, nil, []string{"release", "sign", id},
			2, "--key FILE is required"},
		{"not a key file", alice, nil, []string{"release", "sign", id, "--key", randomFile(t, 10), "--yes"},
			1, "not a key file"},
	}
	p := startProxy(t, srv, nil, nil) // counts signature uploads
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			env := tc.who.env(srv)
			env[envServer] = p.URL
			for k, v := range tc.env {
				env[k] = v
			}
			r := otactl(t, env, tc.args...)
			if r.code != tc.wantCode {
				t.Errorf("exit %d, want %d; stderr %s", r.code, tc.wantCode, r.stderr)
			}
			if !strings.HasPrefix(r.stderr, "otactl: ") || strings.Count(r.stderr, "\n") != 1 {
				t.Errorf("stderr is not one \"otactl: \" line: %q", r.stderr)
			}
			wantContains(t, "stderr", r.stderr, tc.want)
			if n := p.uploads.Load(); n != 0 {
				t.Errorf("%d signature uploads, want none", n)
			}
			if n := signatureCount(t, srv, id); n != 0 {
				t.Errorf("%d signatures stored, want 0", n)
			}
		})
	}
}

// TestConfirm answers the "sign this?" prompt as on a terminal.
func TestConfirm(t *testing.T) {
	srv := apitest.Start(t, apitest.Options{})
	alice := newEngineer(t, srv, "alice")
	env := alice.env(srv)
	r := mustRun(t, env, "repo", "init", "--root-key", alice.pub, "--root-threshold", "1",
		"--targets-key", alice.pub, "--targets-threshold", "1")
	id := draftID(t, r)
	for _, tc := range []struct {
		answer string
		code   int
	}{{"n\n", 1}, {"\n", 1}, {"y\n", 0}} {
		var stdout, stderr bytes.Buffer
		c := newCLI(context.Background(), func(k string) string { return env[k] }, strings.NewReader(tc.answer), &stdout, &stderr)
		c.isTerminal = func(any) bool { return true }
		code := c.run([]string{"repo", "sign", "--key", alice.key})
		if code != tc.code {
			t.Errorf("answer %q: exit %d, want %d; stderr %s", tc.answer, code, tc.code, stderr.String())
		}
		wantContains(t, "stderr", stderr.String(), "sign this? [y/N]")
		if published := repoStatus(t, srv).Initialized; published != (tc.code == 0) {
			t.Errorf("answer %q: published %v", tc.answer, published)
		}
	}
	if v, err := srv.Repo.DraftView(context.Background(), id); err != nil || v.State != manifests.DraftPublished {
		t.Errorf("draft %s: %v %v, want published", id, v, err)
	}
}

func TestTokenErrors(t *testing.T) {
	srv := apitest.Start(t, apitest.Options{})
	tests := []struct {
		name  string
		token string
		want  string
	}{
		{"missing", "", "no admin token: set OTACTL_TOKEN (or --token)"},
		{"wrong", "otad_nope", "the server refused the token (unauthorized: invalid token): set OTACTL_TOKEN"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			server := srv.URL
			if tc.token == "" {
				// A request without a token breaks the API contract on purpose.
				server = startProxy(t, srv, func(r *http.Request) { apitest.OffContract(r) }, nil).URL
			}
			r := otactl(t, map[string]string{envServer: server, envToken: tc.token}, "status")
			if r.code != 1 {
				t.Errorf("exit %d, want 1", r.code)
			}
			wantContains(t, "stderr", r.stderr, tc.want)
		})
	}
	r := otactl(t, map[string]string{envToken: srv.Token}, "status")
	if r.code != 2 {
		t.Errorf("no server: exit %d, want 2", r.code)
	}
	wantContains(t, "no server", r.stderr, "otactl: no server: set OTACTL_SERVER or --server")
	// The flags win over the environment.
	mustRun(t, map[string]string{envServer: "http://127.0.0.1:1", envToken: "otad_nope"}, "status", "--server", srv.URL, "--token", srv.Token)
}

// TestUploadMismatch covers an upload whose bytes change on the way (the
// server refuses them) and a server whose answer does not match the file.
func TestUploadMismatch(t *testing.T) {
	srv := apitest.Start(t, apitest.Options{})
	alice := newEngineer(t, srv, "alice")
	initRepo(t, srv, alice)
	build := randomFile(t, 100<<10)

	t.Run("body corrupted on the way", func(t *testing.T) {
		p := startProxy(t, srv, func(r *http.Request) {
			if r.Method == "PUT" {
				r.Body = io.NopCloser(&flipFirst{r: r.Body})
			}
		}, nil)
		env := alice.env(srv)
		env[envServer] = p.URL
		r := otactl(t, env, "release", "create", build, "--name", "fw/a.bin", "--patch-id", "P1")
		if r.code != 1 {
			t.Errorf("exit %d, want 1", r.code)
		}
		wantContains(t, "stderr", r.stderr, "otactl: upload "+build+": invalid request: uploaded bytes have sha256", "the upload was discarded")
	})

	t.Run("server reports other bytes", func(t *testing.T) {
		stub := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			if r.Method == "GET" && r.URL.Path == "/api/v1/admin/repo/status" {
				json.NewEncoder(w).Encode(manifests.Status{Initialized: true, Roles: []manifests.RoleStatus{{Role: "targets", Version: 1}}})
				return
			}
			if r.Method != "PUT" {
				http.Error(w, `{"error":{"code":"invalid","message":"unexpected"}}`, 400)
				return
			}
			n, _ := io.Copy(io.Discard, r.Body)
			w.WriteHeader(201)
			json.NewEncoder(w).Encode(wire.Artifact{Path: "fw/a.bin", Length: n, SHA256: strings.Repeat("ab", 32)})
		}))
		defer stub.Close()
		env := alice.env(srv)
		env[envServer] = stub.URL
		r := otactl(t, env, "release", "create", build, "--name", "fw/a.bin", "--patch-id", "P1")
		if r.code != 1 {
			t.Errorf("exit %d, want 1", r.code)
		}
		wantContains(t, "stderr", r.stderr, "upload check failed: the server reports fw/a.bin as 102400 bytes with sha256 abab", "nothing was released")
	})

	if st := repoStatus(t, srv); st.Pending != nil {
		t.Errorf("a draft was created: %s", st.Pending.ID)
	}
}

// flipFirst inverts the first byte read.
type flipFirst struct {
	r    io.Reader
	done bool
}

func (f *flipFirst) Read(b []byte) (int, error) {
	n, err := f.r.Read(b)
	if n > 0 && !f.done {
		b[0] ^= 0xff
		f.done = true
	}
	return n, err
}

func TestHelp(t *testing.T) {
	cmds := [][]string{
		{"help"}, {"--help"},
		{"key", "--help"}, {"key", "generate", "--help"}, {"key", "show", "--help"},
		{"repo", "--help"}, {"repo", "init", "--help"}, {"repo", "sign", "--help"},
		{"root", "--help"}, {"root", "rotate", "--help"},
		{"release", "--help"}, {"release", "create", "--help"}, {"release", "sign", "--help"},
		{"release", "show", "--help"}, {"release", "yank", "--help"},
		{"draft", "--help"}, {"draft", "list", "--help"}, {"draft", "discard", "--help"}, {"draft", "show", "--help"},
		{"status", "--help"},
	}
	for _, args := range cmds {
		r := otactl(t, nil, args...)
		if r.code != 0 {
			t.Errorf("%v: exit %d, want 0; stderr %s", args, r.code, r.stderr)
		}
		if out := r.stdout + r.stderr; !strings.Contains(out, "Usage") {
			t.Errorf("%v: no usage in %q", args, out)
		}
	}
	for _, args := range [][]string{{}, {"nope"}, {"key"}, {"key", "nope"}, {"release", "create", "--bogus"}} {
		if r := otactl(t, nil, args...); r.code != 2 {
			t.Errorf("%v: exit %d, want 2", args, r.code)
		}
	}
}

// TestUploadSkipsStoredArtifact checks that an upload announces its length
// and waits for "100 Continue", so that a server that already has the
// artifact answers before any of it is sent.
func TestUploadSkipsStoredArtifact(t *testing.T) {
	build := randomFile(t, 1<<20)
	var expect, length, sum string
	stub := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		switch {
		case r.Method == "GET" && r.URL.Path == "/api/v1/admin/repo/status":
			json.NewEncoder(w).Encode(manifests.Status{Initialized: true, Roles: []manifests.RoleStatus{{Role: "targets", Version: 1}}})
		case r.Method == "PUT" && r.URL.Path == "/api/v1/admin/artifacts/fw/a.bin":
			// Answer without reading the body, as otad does for a
			// stored artifact.
			expect, length, sum = r.Header.Get("Expect"), r.Header.Get("Content-Length"), r.Header.Get(wire.HeaderContentSHA256)
			json.NewEncoder(w).Encode(wire.Artifact{Path: "fw/a.bin", Length: r.ContentLength, SHA256: sum, Existed: true})
		case r.Method == "POST" && r.URL.Path == "/api/v1/admin/releases":
			w.WriteHeader(201)
			json.NewEncoder(w).Encode(manifests.DraftView{ID: "d-01", Kind: "release", State: "pending",
				Changes: []string{"adds target fw/a.bin"}})
		default:
			w.WriteHeader(404)
			io.WriteString(w, `{"error":{"code":"not_found","message":"unexpected request"}}`)
		}
	}))
	defer stub.Close()
	r := mustRun(t, map[string]string{envServer: stub.URL, envToken: "otad_x"}, "release", "create", build, "--name", "fw/a.bin", "--patch-id", "P1")
	if expect != "100-continue" || length != "1048576" || len(sum) != 64 {
		t.Errorf("upload headers: Expect %q, Content-Length %q, %s %q; want 100-continue, 1048576 and a sha256",
			expect, length, wire.HeaderContentSHA256, sum)
	}
	if strings.Contains(r.stderr, "uploading") {
		t.Errorf("bytes were sent for a stored artifact:\n%s", r.stderr)
	}
	wantContains(t, "stdout", r.stdout, "fw/a.bin is already stored on the server (1048576 bytes, sha256 "+sum+"); it was not sent again", "drafted d-01")
}
