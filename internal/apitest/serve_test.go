package apitest_test

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/patchfleet/ota/internal/apitest"
	"github.com/patchfleet/ota/manifests"
	"github.com/patchfleet/ota/manifests/fsstore"
	"github.com/patchfleet/ota/server/api/wire"
)

// countingStore counts reads, to prove metadata is served from memory.
type countingStore struct {
	manifests.BlobStore
	gets, stats atomic.Int64
}

func (s *countingStore) Get(ctx context.Context, key string, rng manifests.Range) (io.ReadCloser, manifests.ObjectInfo, error) {
	s.gets.Add(1)
	return s.BlobStore.Get(ctx, key, rng)
}

func (s *countingStore) Stat(ctx context.Context, key string) (manifests.ObjectInfo, error) {
	s.stats.Add(1)
	return s.BlobStore.Stat(ctx, key)
}

type answer struct {
	status int
	header http.Header
	body   []byte
}

func request(tb testing.TB, method, url string, hdr map[string]string) answer {
	tb.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		tb.Fatal(err)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	client := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := client.Do(req)
	if err != nil {
		tb.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		tb.Fatal(err)
	}
	return answer{resp.StatusCode, resp.Header, b}
}

func TestMetadataServing(t *testing.T) {
	fs, err := fsstore.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	store := &countingStore{BlobStore: fs}
	env := apitest.Start(t, apitest.Options{Blobs: store})

	if a := request(t, "GET", env.URL+"/tuf/timestamp.json", nil); a.status != 404 || !bytes.Contains(a.body, []byte(`"not_found"`)) {
		t.Fatalf("timestamp before the ceremony: %d %s, want a JSON 404", a.status, a.body)
	}
	es := apitest.NewEngineers(t, 2)
	env.Ceremony(t, es, 2)
	patch := randomBytes(t, 100_000)
	env.Publish(t, patchPath, patch, es...)

	ts := request(t, "GET", env.URL+"/tuf/timestamp.json", nil)
	if ts.status != 200 || ts.header.Get("Content-Type") != "application/json" {
		t.Fatalf("timestamp: %d %s", ts.status, ts.header.Get("Content-Type"))
	}
	cc := ts.header.Get("Cache-Control")
	maxAge, err := strconv.Atoi(strings.TrimPrefix(cc, "public, max-age="))
	if err != nil || maxAge > 60 || maxAge < 1 {
		t.Errorf("timestamp Cache-Control %q, want a max-age of at most a minute", cc)
	}
	if a := request(t, "GET", env.URL+"/tuf/timestamp.json", map[string]string{"If-None-Match": ts.header.Get("ETag")}); a.status != 304 {
		t.Errorf("timestamp with its ETag: got %d, want 304", a.status)
	}
	root := request(t, "GET", env.URL+"/tuf/1.root.json", nil)
	if root.status != 200 || !strings.Contains(root.header.Get("Cache-Control"), "immutable") || root.header.Get("ETag") == "" {
		t.Errorf("1.root.json: %d Cache-Control %q ETag %q, want 200, immutable, an ETag", root.status, root.header.Get("Cache-Control"), root.header.Get("ETag"))
	}

	// Missing metadata is 404, never 403: TUF clients probe N+1.root.json.
	for _, name := range []string{"2.root.json", "0.root.json", "01.root.json", "99.snapshot.json", "3.targets.json", "root.json", "x.json", "1.root.json.bak"} {
		if a := request(t, "GET", env.URL+"/tuf/"+name, nil); a.status != 404 {
			t.Errorf("%s: got %d, want 404", name, a.status)
		}
	}

	// A snapshot written by a publish that crashed before its timestamp is
	// not served: clients must see only what timestamp.json points at.
	if _, err := fs.Put(context.Background(), "tuf/3.snapshot.json", strings.NewReader("{}")); err != nil {
		t.Fatal(err)
	}
	if a := request(t, "GET", env.URL+"/tuf/3.snapshot.json", nil); a.status != 404 {
		t.Errorf("unpublished 3.snapshot.json: got %d, want 404", a.status)
	}

	// Metadata comes from memory: many reads, no blob store access.
	gets := store.gets.Load()
	for range 200 {
		for _, name := range []string{"timestamp.json", "1.root.json", "2.snapshot.json", "2.targets.json"} {
			if a := request(t, "GET", env.URL+"/tuf/"+name, nil); a.status != 200 {
				t.Fatalf("%s: %d", name, a.status)
			}
		}
	}
	if n := store.gets.Load() - gets; n != 0 {
		t.Errorf("serving 800 metadata requests read the blob store %d times, want 0", n)
	}

	metrics := request(t, "GET", env.URL+"/metrics", nil)
	for _, role := range []string{"root", "targets", "snapshot", "timestamp"} {
		if !bytes.Contains(metrics.body, []byte(`otad_tuf_expiry_seconds{role="`+role+`"}`)) {
			t.Errorf("/metrics lacks the expiry of %s", role)
		}
	}

	targetURL := env.URL + "/targets/" + strings.TrimPrefix(manifests.TargetKey(patchPath, apitest.SHA256Hex(patch)), "targets/")
	t.Run("artifact", func(t *testing.T) {
		a := request(t, "GET", targetURL, nil)
		if a.status != 200 || !bytes.Equal(a.body, patch) {
			t.Fatalf("got %d and %d bytes, want 200 and the patch", a.status, len(a.body))
		}
		if got := a.header.Get("ETag"); got != `"`+apitest.SHA256Hex(patch)+`"` {
			t.Errorf("ETag %s, want the sha256", got)
		}
		if a := request(t, "GET", targetURL, map[string]string{"Range": "bytes=10-19"}); a.status != 206 ||
			!bytes.Equal(a.body, patch[10:20]) || a.header.Get("Content-Range") != "bytes 10-19/100000" {
			t.Errorf("range: %d %q %d bytes", a.status, a.header.Get("Content-Range"), len(a.body))
		}
		if a := request(t, "GET", targetURL, map[string]string{"Range": "bytes=-5"}); a.status != 206 || !bytes.Equal(a.body, patch[len(patch)-5:]) {
			t.Errorf("suffix range: %d, %d bytes", a.status, len(a.body))
		}
		if a := request(t, "GET", targetURL, map[string]string{"Range": "bytes=200000-"}); a.status != 416 || !bytes.Contains(a.body, []byte("range_not_satisfiable")) {
			t.Errorf("range past the end: %d %s, want a JSON 416", a.status, a.body)
		}
		if a := request(t, "HEAD", targetURL, nil); a.status != 200 || len(a.body) != 0 || a.header.Get("Content-Length") != "100000" {
			t.Errorf("HEAD: %d, %d body bytes, Content-Length %s", a.status, len(a.body), a.header.Get("Content-Length"))
		}
		for _, p := range []string{"nope.zip", "../tuf/timestamp.json", "a//b"} {
			if a := request(t, "GET", env.URL+"/targets/"+p, nil); a.status != 404 {
				t.Errorf("/targets/%s: got %d, want 404", p, a.status)
			}
		}
	})
}

// TestOnlyPublishedTargetsDownload: /targets/ serves a blob only while
// the published targets metadata names it with its hash. An artifact
// uploaded for a release that was never published, and the artifact of a
// yanked release, are 404 by their hash (a handset resuming the yanked
// download gets 404 too), while a current target downloads.
func TestOnlyPublishedTargetsDownload(t *testing.T) {
	env := apitest.Start(t, apitest.Options{})
	es := apitest.NewEngineers(t, 1)
	env.Ceremony(t, es, 1)
	current, yanked, unreleased := randomBytes(t, 3000), randomBytes(t, 4000), randomBytes(t, 5000)
	const currentPath, yankedPath, unreleasedPath = "cloudmsg/current.zip", "cloudmsg/yanked.zip", "cloudmsg/unreleased.zip"
	env.Publish(t, currentPath, current, es...)
	env.Publish(t, yankedPath, yanked, es...)
	env.Upload(t, unreleasedPath, unreleased)
	const drafted = "cloudmsg/drafted.zip"
	draftedContent := randomBytes(t, 6000)
	draft := env.DraftRelease(t, drafted, draftedContent, apitest.PatchCustom())
	url := func(path string, content []byte) string {
		return env.URL + "/" + manifests.TargetKey(path, apitest.SHA256Hex(content))
	}
	get := func(what, u string, hdr map[string]string, wantStatus int, want []byte) {
		t.Helper()
		for _, method := range []string{"GET", "HEAD"} {
			a := request(t, method, u, hdr)
			if a.status != wantStatus || (method == "GET" && want != nil && !bytes.Equal(a.body, want)) {
				t.Errorf("%s %s: got %d, %d bytes; want %d", method, what, a.status, len(a.body), wantStatus)
			}
		}
	}
	get("the current target", url(currentPath, current), nil, 200, current)
	get("the target to yank", url(yankedPath, yanked), nil, 200, yanked)
	get("an upload never released", url(unreleasedPath, unreleased), nil, 404, nil)
	get("an upload in a draft not signed", url(drafted, draftedContent), nil, 404, nil)
	if err := env.Do("DELETE", "/drafts/"+draft.ID, nil, nil); err != nil {
		t.Fatal(err)
	}

	var d manifests.DraftView
	if err := env.Do("POST", "/yanks", wire.YankRequest{Path: yankedPath}, &d); err != nil {
		t.Fatal(err)
	}
	env.MustSign(t, d.ID, es...)
	get("the yanked target", url(yankedPath, yanked), nil, 404, nil)
	get("the yanked target, resumed", url(yankedPath, yanked), map[string]string{"Range": "bytes=1000-"}, 404, nil)
	get("the current target after the yank", url(currentPath, current), nil, 200, current)
	// The same path and a hash the metadata does not name: 404.
	get("the current path with another hash", url(currentPath, yanked), nil, 404, nil)
}

// TestArtifactRedirect checks that with S3 and redirects on, downloads go
// to a presigned URL that serves the artifact without credentials.
func TestArtifactRedirect(t *testing.T) {
	env := apitest.Start(t, apitest.Options{Blobs: apitest.MinIOStore(t), TargetsRedirect: true})
	es := apitest.NewEngineers(t, 1)
	env.Ceremony(t, es, 1)
	patch := randomBytes(t, 5000)
	env.Publish(t, patchPath, patch, es...)
	url := env.URL + "/targets/" + strings.TrimPrefix(manifests.TargetKey(patchPath, apitest.SHA256Hex(patch)), "targets/")
	a := request(t, "GET", url, nil)
	loc := a.header.Get("Location")
	if a.status != 307 || !strings.Contains(loc, "X-Amz-Signature=") {
		t.Fatalf("got %d Location %q, want 307 to a presigned URL", a.status, loc)
	}
	if b := request(t, "GET", loc, nil); b.status != 200 || !bytes.Equal(b.body, patch) {
		t.Fatalf("presigned URL: %d, %d bytes", b.status, len(b.body))
	}
	if a := request(t, "GET", env.URL+"/targets/cloudmsg/none.zip", nil); a.status != 404 {
		t.Errorf("missing artifact with redirects on: got %d, want 404", a.status)
	}
}
