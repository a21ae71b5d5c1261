package agent

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

func sum(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// fileServer serves one file with an ETag, as otad's /targets/ does,
// and records the Range and If-Range of each request.
type fileServer struct {
	mu      sync.Mutex
	content []byte
	etag    string
	ranges  []string
}

func (f *fileServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	content, etag := f.content, f.etag
	f.ranges = append(f.ranges, r.Header.Get("Range")+"|"+r.Header.Get("If-Range"))
	f.mu.Unlock()
	w.Header().Set("ETag", etag)
	http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(content))
}

// TestDownloadResumes: a partial file with the server's ETag is
// completed with a Range request guarded by If-Range, and only the rest
// is transferred.
func TestDownloadResumes(t *testing.T) {
	content := bytes.Repeat([]byte("patch bytes "), 10000)
	fs := &fileServer{content: content, etag: `"v1"`}
	srv := httptest.NewServer(fs)
	defer srv.Close()
	dst := filepath.Join(t.TempDir(), "update")
	os.WriteFile(dst+".part", content[:5000], 0o600)
	os.WriteFile(dst+".validator", []byte(`"v1"`), 0o600)

	d := &Download{URL: srv.URL, Dst: dst, Length: int64(len(content)), SHA256: sum(content)}
	res, err := d.Run(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if res.ResumedAt != 5000 || res.Received != int64(len(content)-5000) || res.Restarted {
		t.Errorf("result %+v, want resumed at 5000 with %d bytes received", res, len(content)-5000)
	}
	if len(fs.ranges) != 1 || fs.ranges[0] != `bytes=5000-|"v1"` {
		t.Errorf("requests %q, want one with Range bytes=5000- and If-Range \"v1\"", fs.ranges)
	}
	if got, _ := os.ReadFile(dst); !bytes.Equal(got, content) {
		t.Errorf("downloaded %d bytes, not the file", len(got))
	}
	for _, leftover := range []string{dst + ".part", dst + ".validator"} {
		if _, err := os.Stat(leftover); err == nil {
			t.Errorf("%s left behind", leftover)
		}
	}
	// Done is done: nothing is fetched again.
	if _, err := d.Run(context.Background()); err != nil || len(fs.ranges) != 1 {
		t.Errorf("second run: %v, %d requests; want none", err, len(fs.ranges))
	}
}

// TestDownloadRestartsWhenTheFileChanged: the server's file changed
// since the partial download (another ETag), so If-Range makes it send
// the whole new file, which replaces the old bytes instead of being
// appended to them.
func TestDownloadRestartsWhenTheFileChanged(t *testing.T) {
	old := bytes.Repeat([]byte("old "), 4000)
	content := bytes.Repeat([]byte("new "), 4000)
	fs := &fileServer{content: content, etag: `"v2"`}
	srv := httptest.NewServer(fs)
	defer srv.Close()
	dst := filepath.Join(t.TempDir(), "update")
	os.WriteFile(dst+".part", old[:3000], 0o600)
	os.WriteFile(dst+".validator", []byte(`"v1"`), 0o600)

	res, err := (&Download{URL: srv.URL, Dst: dst, Length: int64(len(content)), SHA256: sum(content)}).Run(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if !res.Restarted || res.ResumedAt != 0 || res.Received != int64(len(content)) {
		t.Errorf("result %+v, want a restart receiving all %d bytes", res, len(content))
	}
	if got, _ := os.ReadFile(dst); !bytes.Equal(got, content) {
		t.Errorf("the file is not the new one")
	}
}

// TestDownloadRefusesBadBytes: bytes that do not match the signed sha256
// never become the file, and the partial file is dropped.
func TestDownloadRefusesBadBytes(t *testing.T) {
	srv := httptest.NewServer(&fileServer{content: []byte("evil bytes of the right length!"), etag: `"x"`})
	defer srv.Close()
	good := []byte("good bytes of the right length!")
	dst := filepath.Join(t.TempDir(), "update")
	_, err := (&Download{URL: srv.URL, Dst: dst, Length: int64(len(good)), SHA256: sum(good)}).Run(context.Background())
	if !errors.Is(err, ErrContent) {
		t.Fatalf("error %v, want ErrContent", err)
	}
	for _, f := range []string{dst, dst + ".part"} {
		if _, err := os.Stat(f); err == nil {
			t.Errorf("%s exists after a failed verification", f)
		}
	}
}
