package apitest_test

import (
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
	"mime"
	"mime/multipart"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/patchfleet/ota/internal/apitest"
	"github.com/patchfleet/ota/manifests"
	"github.com/patchfleet/ota/server/api"
	"github.com/patchfleet/ota/server/api/wire"
	"github.com/patchfleet/ota/signing"
)

// logBuffer collects a server's JSON log for the test to read.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// entries returns the log lines at level whose message is msg ("" for any).
func (l *logBuffer) entries(tb testing.TB, level, msg string) []map[string]any {
	tb.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []map[string]any
	for line := range strings.Lines(l.b.String()) {
		var e map[string]any
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			tb.Fatalf("log line %q: %v", line, err)
		}
		if e["level"] == level && (msg == "" || e["msg"] == msg) {
			out = append(out, e)
		}
	}
	return out
}

// Bytes returns a copy of everything logged so far.
func (l *logBuffer) Bytes() []byte {
	l.mu.Lock()
	defer l.mu.Unlock()
	return bytes.Clone(l.b.Bytes())
}

func (l *logBuffer) logger() *slog.Logger { return slog.New(slog.NewJSONHandler(l, nil)) }

// TestConditionalAndRangeRequests checks /tuf/ and /targets/ against what
// RFC 9110 (through http.ServeContent) asks of HEAD, ranges, If-Range and
// the other conditional requests. Before, HEAD /tuf/* answered 405 and a
// Range with a non-matching If-Range still got 206.
func TestConditionalAndRangeRequests(t *testing.T) {
	env := apitest.Start(t, apitest.Options{})
	es := apitest.NewEngineers(t, 1)
	env.Ceremony(t, es, 1)
	patch := randomBytes(t, 100_000)
	env.Publish(t, patchPath, patch, es...)
	targetURL := env.URL + "/targets/" + strings.TrimPrefix(manifests.TargetKey(patchPath, apitest.SHA256Hex(patch)), "targets/")
	root := request(t, "GET", env.URL+"/tuf/1.root.json", nil)
	if root.status != 200 {
		t.Fatalf("1.root.json: %d", root.status)
	}

	for _, file := range []struct {
		name, url, contentType, cache string
		body                          []byte
	}{
		{"metadata", env.URL + "/tuf/1.root.json", "application/json", "immutable", root.body},
		{"target", targetURL, "application/octet-stream", "immutable", patch},
	} {
		t.Run(file.name, func(t *testing.T) {
			whole := request(t, "GET", file.url, nil)
			etag := whole.header.Get("ETag")
			if whole.status != 200 || etag == "" || !bytes.Equal(whole.body, file.body) ||
				whole.header.Get("Accept-Ranges") != "bytes" || whole.header.Get("Content-Type") != file.contentType {
				t.Fatalf("GET: %d ETag %q Accept-Ranges %q Content-Type %q, %d bytes", whole.status, etag,
					whole.header.Get("Accept-Ranges"), whole.header.Get("Content-Type"), len(whole.body))
			}
			size := strconv.Itoa(len(file.body))
			tests := []struct {
				name       string
				method     string
				hdr        map[string]string
				wantStatus int
				want       []byte // nil: not checked
			}{
				{"HEAD", "HEAD", nil, 200, []byte{}},
				{"HEAD with a range", "HEAD", map[string]string{"Range": "bytes=0-9"}, 206, []byte{}},
				{"If-None-Match its ETag", "GET", map[string]string{"If-None-Match": etag}, 304, []byte{}},
				{"If-None-Match its weak ETag", "GET", map[string]string{"If-None-Match": "W/" + etag}, 304, []byte{}},
				{"If-None-Match in a list", "GET", map[string]string{"If-None-Match": `"x", ` + etag}, 304, []byte{}},
				{"If-None-Match *", "GET", map[string]string{"If-None-Match": "*"}, 304, []byte{}},
				{"HEAD If-None-Match its ETag", "HEAD", map[string]string{"If-None-Match": etag}, 304, []byte{}},
				{"If-None-Match another ETag", "GET", map[string]string{"If-None-Match": `"other"`}, 200, file.body},
				{"range", "GET", map[string]string{"Range": "bytes=10-19"}, 206, file.body[10:20]},
				{"suffix range", "GET", map[string]string{"Range": "bytes=-5"}, 206, file.body[len(file.body)-5:]},
				{"open range", "GET", map[string]string{"Range": "bytes=100-"}, 206, file.body[100:]},
				{"If-Range its ETag", "GET", map[string]string{"Range": "bytes=10-19", "If-Range": etag}, 206, file.body[10:20]},
				{"If-Range another ETag", "GET", map[string]string{"Range": "bytes=10-19", "If-Range": `"other"`}, 200, file.body},
				{"If-Range a weak ETag", "GET", map[string]string{"Range": "bytes=10-19", "If-Range": "W/" + etag}, 200, file.body},
				{"If-Range a date", "GET", map[string]string{"Range": "bytes=10-19", "If-Range": "Tue, 01 Jan 2030 00:00:00 GMT"}, 200, file.body},
				{"If-Match its ETag", "GET", map[string]string{"If-Match": etag}, 200, file.body},
				{"If-Match another ETag", "GET", map[string]string{"If-Match": `"other"`}, 412, nil},
				{"range past the end", "GET", map[string]string{"Range": "bytes=" + size + "-"}, 416, nil},
			}
			for _, tc := range tests {
				t.Run(tc.name, func(t *testing.T) {
					a := request(t, tc.method, file.url, tc.hdr)
					if a.status != tc.wantStatus {
						t.Fatalf("got %d, want %d; body %.200q", a.status, tc.wantStatus, a.body)
					}
					if tc.want != nil && !bytes.Equal(a.body, tc.want) {
						t.Errorf("got %d body bytes, want %d", len(a.body), len(tc.want))
					}
					switch {
					case tc.wantStatus >= 400:
						// Errors are JSON, as everywhere in the API.
						if ct := a.header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") || !bytes.Contains(a.body, []byte(`"error"`)) {
							t.Errorf("error answer: Content-Type %q body %q, want the JSON error shape", ct, a.body)
						}
					case tc.method == "HEAD" && tc.wantStatus == 200:
						if a.header.Get("Content-Length") != size || a.header.Get("ETag") != etag {
							t.Errorf("HEAD: Content-Length %q ETag %q, want %s and %s", a.header.Get("Content-Length"), a.header.Get("ETag"), size, etag)
						}
					}
					if tc.wantStatus < 400 && a.header.Get("ETag") != etag {
						t.Errorf("ETag %q, want %s", a.header.Get("ETag"), etag)
					}
					if tc.wantStatus < 400 && !strings.Contains(a.header.Get("Cache-Control"), file.cache) {
						t.Errorf("Cache-Control %q, want %s", a.header.Get("Cache-Control"), file.cache)
					}
					if tc.wantStatus == 206 && a.header.Get("Content-Range") == "" {
						t.Errorf("206 without Content-Range")
					}
					if tc.wantStatus == 416 && a.header.Get("Content-Range") != "bytes */"+size {
						t.Errorf("416: Content-Range %q, want bytes */%s", a.header.Get("Content-Range"), size)
					}
				})
			}

			t.Run("multiple ranges", func(t *testing.T) {
				a := request(t, "GET", file.url, map[string]string{"Range": "bytes=0-4,20-29"})
				mt, params, err := mime.ParseMediaType(a.header.Get("Content-Type"))
				if a.status != 206 || err != nil || mt != "multipart/byteranges" {
					t.Fatalf("got %d Content-Type %q, want 206 multipart/byteranges", a.status, a.header.Get("Content-Type"))
				}
				mr := multipart.NewReader(bytes.NewReader(a.body), params["boundary"])
				for _, want := range [][]byte{file.body[0:5], file.body[20:30]} {
					part, err := mr.NextPart()
					if err != nil {
						t.Fatal(err)
					}
					if got, _ := io.ReadAll(part); !bytes.Equal(got, want) {
						t.Errorf("part %s: got %q, want %q", part.Header.Get("Content-Range"), got, want)
					}
				}
			})
		})
	}

	t.Run("HEAD of missing files", func(t *testing.T) {
		for _, u := range []string{"/tuf/9.root.json", "/tuf/+1.root.json", "/targets/nope.zip"} {
			if a := request(t, "HEAD", env.URL+u, nil); a.status != 404 || len(a.body) != 0 {
				t.Errorf("HEAD %s: got %d and %d body bytes, want 404 and none", u, a.status, len(a.body))
			}
		}
	})
	t.Run("timestamp", func(t *testing.T) {
		a := request(t, "HEAD", env.URL+"/tuf/timestamp.json", nil)
		get := request(t, "GET", env.URL+"/tuf/timestamp.json", nil)
		if a.status != 200 || a.header.Get("Content-Length") != strconv.Itoa(len(get.body)) || a.header.Get("ETag") != get.header.Get("ETag") ||
			!strings.HasPrefix(a.header.Get("Cache-Control"), "public, max-age=") {
			t.Errorf("HEAD timestamp.json: %d Content-Length %q ETag %q Cache-Control %q; GET has %d bytes ETag %q",
				a.status, a.header.Get("Content-Length"), a.header.Get("ETag"), a.header.Get("Cache-Control"), len(get.body), get.header.Get("ETag"))
		}
	})
}

// TestStrictMetadataNames checks over HTTP that other spellings of a
// published version are 404: "+1" used to be served as 1.
func TestStrictMetadataNames(t *testing.T) {
	env := apitest.Start(t, apitest.Options{})
	env.Ceremony(t, apitest.NewEngineers(t, 1), 1)
	for _, name := range []string{"+1.root.json", "01.root.json", "1e0.root.json", "%201.root.json", "-1.root.json", "+1.snapshot.json", "+1.targets.json"} {
		a := request(t, "GET", env.URL+"/tuf/"+name, nil)
		if a.status != 404 || !bytes.Contains(a.body, []byte(`"not_found"`)) {
			t.Errorf("%s: got %d %.100s, want a JSON 404", name, a.status, a.body)
		}
	}
	if a := request(t, "GET", env.URL+"/tuf/1.root.json", nil); a.status != 200 {
		t.Errorf("1.root.json: got %d, want 200", a.status)
	}
}

// TestLongPathSegments checks that a path segment longer than the
// filesystem can hold is the client's error: 400 for an upload (naming the
// limit), 404 for a download, and never an error in the log. Before, the
// filesystem's ENAMETOOLONG came out as a 500.
func TestLongPathSegments(t *testing.T) {
	logs := &logBuffer{}
	env := apitest.Start(t, apitest.Options{Logger: logs.logger()})
	long := strings.Repeat("n", 300)
	content := []byte("a build")
	put := func(path string) answer {
		req, err := http.NewRequest("PUT", env.URL+api.AdminPrefix+"/artifacts/"+path, bytes.NewReader(content))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Authorization", "Bearer "+env.Token)
		req.Header.Set(wire.HeaderContentSHA256, apitest.SHA256Hex(content))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return answer{resp.StatusCode, resp.Header, b}
	}
	for _, path := range []string{"d/" + long + ".bin", long + "/a.bin", "d/" + strings.Repeat("n", manifests.MaxTargetNameLen+1)} {
		t.Run("PUT "+path[:20], func(t *testing.T) {
			a := put(path)
			var body wire.ErrorBody
			if err := json.Unmarshal(a.body, &body); err != nil || a.status != 400 || body.Error.Code != "invalid" {
				t.Fatalf("got %d %s, want a JSON 400 invalid", a.status, a.body)
			}
			if !strings.Contains(body.Error.Message, "longer than") {
				t.Errorf("message %q does not name the limit", body.Error.Message)
			}
		})
	}
	// The longest name that fits is stored, released and served.
	fits := "d/" + strings.Repeat("n", manifests.MaxTargetNameLen)
	if a := put(fits); a.status != 201 {
		t.Fatalf("PUT with a %d-byte name: got %d %s, want 201", manifests.MaxTargetNameLen, a.status, a.body)
	}
	es := apitest.NewEngineers(t, 1)
	env.Ceremony(t, es, 1)
	env.Publish(t, fits, content, es...)
	key := manifests.TargetKey(fits, apitest.SHA256Hex(content))
	if a := request(t, "GET", env.URL+"/"+key, nil); a.status != 200 || !bytes.Equal(a.body, content) {
		t.Errorf("GET the longest name: got %d %q", a.status, a.body)
	}

	for _, path := range []string{"/targets/" + long, "/targets/d/" + strings.Repeat("ab", 32) + "." + long, "/targets/" + long + "/x", "/tuf/" + long, "/tuf/" + long + ".root.json"} {
		t.Run("GET "+path[:20], func(t *testing.T) {
			for _, method := range []string{"GET", "HEAD"} {
				a := request(t, method, env.URL+path, nil)
				if a.status != 404 {
					t.Errorf("%s: got %d %.100s, want 404", method, a.status, a.body)
				}
			}
		})
	}
	if errs := logs.entries(t, "ERROR", ""); len(errs) != 0 {
		t.Errorf("long names were logged as errors: %v", errs)
	}
}

// TestMissingPublishedFileIsInternalError deletes, behind the servers'
// backs, a snapshot or targets file that the published metadata names.
// The replica that reads the store afterwards must answer admin calls with
// 500 and log the missing key at error level: it is corruption, not a
// "not found" the caller could fix (before, it answered 404).
func TestMissingPublishedFileIsInternalError(t *testing.T) {
	for _, key := range []string{"tuf/1.snapshot.json", "tuf/1.targets.json"} {
		t.Run(key, func(t *testing.T) {
			online, err := signing.Generate(signing.AlgEd25519)
			if err != nil {
				t.Fatal(err)
			}
			a := apitest.Start(t, apitest.Options{Online: online})
			logs := &logBuffer{}
			b := apitest.Start(t, apitest.Options{DB: a.DB, Blobs: a.Blobs, Online: online, Logger: logs.logger()})
			es := apitest.NewEngineers(t, 1)
			a.Ceremony(t, es, 1) // b has not read it yet
			patch := randomBytes(t, 1000)
			b.Upload(t, patchPath, patch)
			if err := a.Blobs.Delete(t.Context(), key); err != nil {
				t.Fatal(err)
			}

			calls := []struct {
				name, path string
				body       any
			}{
				{"release", "/releases", wire.ReleaseRequest{Path: patchPath, Length: int64(len(patch)), SHA256: apitest.SHA256Hex(patch), Custom: apitest.PatchCustom()}},
				{"yank", "/yanks", wire.YankRequest{Path: patchPath}},
				{"root draft", "/repo/root-drafts", wire.RootDraftRequest{RootKeys: apitest.PublicKeys(es), RootThreshold: 1, TargetsKeys: apitest.PublicKeys(es), TargetsThreshold: 1}},
			}
			for _, c := range calls {
				t.Run(c.name, func(t *testing.T) {
					err := b.Do("POST", c.path, c.body, nil)
					if status, code := apiCode(t, err); status != 500 || code != "internal" {
						t.Errorf("got %d %s (%v), want 500 internal", status, code, err)
					}
				})
			}
			errs := logs.entries(t, "ERROR", "request failed")
			if len(errs) != len(calls) {
				t.Fatalf("got %d error log entries, want one per call (%d): %v", len(errs), len(calls), errs)
			}
			for _, e := range errs {
				if msg, _ := e["error"].(string); !strings.Contains(msg, key) {
					t.Errorf("error log %q does not name %s", msg, key)
				}
			}
		})
	}
}
