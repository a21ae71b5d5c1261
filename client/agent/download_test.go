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
	"strconv"
	"sync"
	"sync/atomic"
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

// TestDownloadStallEndsAndResumes: a server that sends half the file and
// then nothing, holding the connection open, would keep a download
// without a time limit waiting forever. With an IdleTimeout it ends with
// ErrStalled, keeps the half, and the next call asks for the rest only.
func TestDownloadStallEndsAndResumes(t *testing.T) {
	content := bytes.Repeat([]byte("patch bytes "), 8000)
	half := len(content) / 2
	var stall atomic.Bool
	stall.Store(true)
	fs := &fileServer{content: content, etag: `"v1"`}
	quit := make(chan struct{}) // ends a stall the client never gives up on, so the test fails instead of hanging
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !stall.Load() {
			fs.ServeHTTP(w, r)
			return
		}
		w.Header().Set("ETag", fs.etag)
		w.Header().Set("Content-Length", strconv.Itoa(len(content)))
		w.Write(content[:half])
		w.(http.Flusher).Flush()
		select { // silence, until the client gives up
		case <-r.Context().Done():
		case <-quit:
		}
	}))
	defer srv.Close()
	defer close(quit)
	dst := filepath.Join(t.TempDir(), "update")
	d := &Download{URL: srv.URL, Dst: dst, Length: int64(len(content)), SHA256: sum(content), IdleTimeout: 200 * time.Millisecond}

	type result struct {
		res DownloadResult
		err error
	}
	done := make(chan result, 1)
	go func() { res, err := d.Run(context.Background()); done <- result{res, err} }()
	var r result
	select {
	case r = <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the stalled download never ended")
	}
	if !errors.Is(r.err, ErrStalled) || r.res.Received != int64(half) {
		t.Fatalf("stalled download: %+v, %v; want ErrStalled after %d bytes", r.res, r.err, half)
	}
	if part, _ := os.ReadFile(dst + ".part"); !bytes.Equal(part, content[:half]) {
		t.Fatalf("kept %d bytes, want the %d received", len(part), half)
	}

	stall.Store(false)
	res, err := d.Run(context.Background())
	if err != nil || res.ResumedAt != int64(half) || res.Received != int64(len(content)-half) {
		t.Fatalf("resume: %+v, %v; want the rest from %d", res, err, half)
	}
	if got, _ := os.ReadFile(dst); !bytes.Equal(got, content) {
		t.Errorf("downloaded %d bytes, not the file", len(got))
	}
}
