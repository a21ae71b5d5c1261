package api

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/patchfleet/ota/manifests"
	"github.com/patchfleet/ota/manifests/fsstore"
	"github.com/patchfleet/ota/server/sqlstore"
	"github.com/patchfleet/ota/signing"
)

// lockedBuffer collects the log of a server whose handlers run on other
// goroutines than the test.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// downloadServer serves a filesystem store holding big.bin (size
// pseudo-random bytes), published as a target, from a real http.Server
// with the given write timeout, as otad does. It returns the artifact's
// URL, its sha256 and the server's log.
func downloadServer(tb testing.TB, size int64, writeTimeout, stall time.Duration) (string, string, *lockedBuffer) {
	tb.Helper()
	blobs, err := fsstore.New(tb.TempDir())
	if err != nil {
		tb.Fatal(err)
	}
	content := func() io.Reader { return io.LimitReader(rand.NewChaCha8([32]byte{7}), size) }
	h := sha256.New()
	if _, err := io.Copy(h, content()); err != nil {
		tb.Fatal(err)
	}
	sum := hex.EncodeToString(h.Sum(nil))
	if _, err := blobs.Put(tb.Context(), manifests.TargetKey("big.bin", sum), content()); err != nil {
		tb.Fatal(err)
	}
	db, err := sqlstore.Open(tb.Context(), "sqlite:"+filepath.Join(tb.TempDir(), "otad.db"), sqlstore.Options{})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { db.Close() })
	if _, err := db.Migrate(tb.Context()); err != nil {
		tb.Fatal(err)
	}
	online, err := signing.Generate(signing.AlgEd25519)
	if err != nil {
		tb.Fatal(err)
	}
	repo, err := manifests.New(manifests.Config{Blobs: blobs, Drafts: db.Drafts(), Lock: db.RepoLock(), Online: online.Signer()})
	if err != nil {
		tb.Fatal(err)
	}
	if err := repo.Load(tb.Context()); err != nil {
		tb.Fatal(err)
	}
	publish(tb, repo, manifests.Release{Path: "big.bin", Length: size, SHA256: sum, Custom: manifests.TargetCustom{PatchID: "CM-2026-001"}})
	logs := &lockedBuffer{}
	s := New(Config{Logger: slog.New(slog.NewJSONHandler(logs, nil)), Repo: repo, Blobs: blobs,
		DownloadStallTimeout: stall})
	srv := httptest.NewUnstartedServer(s)
	srv.Config.WriteTimeout = writeTimeout
	srv.Start()
	tb.Cleanup(srv.Close)
	return srv.URL + "/" + manifests.TargetKey("big.bin", sum), sum, logs
}

// publish runs the root ceremony of repo with one key for root and
// targets and publishes rel, whose artifact is stored: /targets/ serves
// published targets only.
func publish(tb testing.TB, repo *manifests.Repository, rel manifests.Release) {
	tb.Helper()
	k, err := signing.Generate(signing.AlgEd25519)
	if err != nil {
		tb.Fatal(err)
	}
	keys := []*metadata.Key{k.Public()}
	root, err := repo.CreateRootDraft(tb.Context(), manifests.RootParams{RootKeys: keys, RootThreshold: 1, TargetsKeys: keys, TargetsThreshold: 1}, "test")
	if err != nil {
		tb.Fatal(err)
	}
	signDraft(tb, repo, root.ID, k)
	release, err := repo.CreateReleaseDraft(tb.Context(), rel, "test")
	if err != nil {
		tb.Fatal(err)
	}
	signDraft(tb, repo, release.ID, k)
}

// signDraft has k sign every part of draft id and checks it published.
func signDraft(tb testing.TB, repo *manifests.Repository, id string, k *signing.PrivateKey) {
	tb.Helper()
	v, err := repo.DraftView(tb.Context(), id)
	if err != nil {
		tb.Fatal(err)
	}
	var sigs []manifests.DraftSignature
	for _, th := range v.Thresholds {
		var sig *metadata.Signature
		if th.Part == manifests.PartRoot {
			var md *metadata.Metadata[metadata.RootType]
			if md, err = (&metadata.Metadata[metadata.RootType]{}).FromBytes(v.Root); err == nil {
				sig, err = md.Sign(k.Signer())
			}
		} else {
			var md *metadata.Metadata[metadata.TargetsType]
			if md, err = (&metadata.Metadata[metadata.TargetsType]{}).FromBytes(v.Targets); err == nil {
				sig, err = md.Sign(k.Signer())
			}
		}
		if err != nil {
			tb.Fatal(err)
		}
		sigs = append(sigs, manifests.DraftSignature{Part: th.Part, KeyID: sig.KeyID, Sig: sig.Signature})
	}
	if v, err = repo.AddSignatures(tb.Context(), id, v.Digest, sigs); err != nil || v.State != manifests.DraftPublished {
		tb.Fatalf("draft %s: %+v, %v; want it published", id, v, err)
	}
}

// smallBufferClient keeps at most 64 KiB in its socket's receive buffer, so
// that what the kernel takes in for a slow reader does not hide how slowly
// it reads.
func smallBufferClient() *http.Client {
	d := &net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 64<<10)
		})
		return errors.Join(err, serr)
	}}
	return &http.Client{Transport: &http.Transport{DialContext: d.DialContext, DisableCompression: true}}
}

// TestSlowDownloadOutlastsWriteTimeout reads a 30 MB artifact at about
// 5 MB/s from a server whose write timeout is 2 s: the download takes three
// times the write timeout and must still arrive whole. Before, the server's
// write deadline cut it at 2 s while the log said 200.
func TestSlowDownloadOutlastsWriteTimeout(t *testing.T) {
	const (
		size         = 30 << 20
		writeTimeout = 2 * time.Second
		rate         = 5 << 20 // bytes per second
	)
	url, want, logs := downloadServer(t, size, writeTimeout, 10*time.Second)
	resp, err := smallBufferClient().Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("got status %d, want 200", resp.StatusCode)
	}
	start := time.Now()
	h := sha256.New()
	var n int64
	buf := make([]byte, 64<<10)
	for {
		m, err := resp.Body.Read(buf)
		h.Write(buf[:m])
		n += int64(m)
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("after %d of %d bytes in %v: %v", n, size, time.Since(start).Round(time.Millisecond), err)
		}
		// Pace the reads: n bytes may be read by start + n/rate.
		time.Sleep(time.Until(start.Add(time.Duration(n) * time.Second / rate)))
	}
	elapsed := time.Since(start)
	if elapsed < 2*writeTimeout {
		t.Fatalf("the download took %v, not clearly longer than the %v write timeout: the test proves nothing", elapsed, writeTimeout)
	}
	if got := hex.EncodeToString(h.Sum(nil)); n != size || got != want {
		t.Errorf("got %d bytes sha256 %s, want %d bytes sha256 %s", n, got, size, want)
	}
	if strings.Contains(logs.String(), "download ended early") {
		t.Errorf("a complete download was logged as cut short:\n%s", logs)
	}
	t.Logf("read %d bytes in %v with a %v write timeout", n, elapsed.Round(time.Millisecond), writeTimeout)
}

// TestStalledDownloadIsClosed stops reading a download: the server must
// close the connection once the stall timeout passes without progress
// (long before its 30 s write timeout would), and log that the download
// ended early, with the bytes sent and the length.
func TestStalledDownloadIsClosed(t *testing.T) {
	const (
		size  = 30 << 20
		stall = time.Second
	)
	url, sum, logs := downloadServer(t, size, 30*time.Second, stall)
	resp, err := smallBufferClient().Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if _, err := io.CopyN(io.Discard, resp.Body, 1<<20); err != nil {
		t.Fatal(err)
	}
	stopped := time.Now()
	var entry map[string]any
	for entry == nil {
		if time.Since(stopped) > 2*time.Minute { // only bounds a hang
			t.Fatalf("no \"download ended early\" in the log 2 minutes after the client stopped reading:\n%s", logs)
		}
		time.Sleep(50 * time.Millisecond)
		for line := range strings.Lines(logs.String()) {
			if strings.Contains(line, `"download ended early"`) {
				if err := json.Unmarshal([]byte(line), &entry); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	// The stall timeout runs from the start of the server's last write,
	// which may come before the client's last read by as long as the
	// client was held up reading (on a loaded machine, a good part of a
	// second): half the timeout still tells a server that waits for it.
	waited := time.Since(stopped)
	if waited < stall/2 {
		t.Errorf("the server gave up %v after the client stopped, long before the %v stall timeout", waited, stall)
	}
	sent, _ := entry["bytes_sent"].(float64)
	if entry["level"] != "WARN" || entry["length"] != float64(size) || sent <= 0 || sent >= size ||
		entry["key"] != manifests.TargetKey("big.bin", sum) || entry["status"] != float64(http.StatusOK) {
		t.Errorf("got log entry %v, want a warning with 0 < bytes_sent < length %d for %s", entry, size, manifests.TargetKey("big.bin", sum))
	}
	// The connection is closed: the rest does not arrive.
	n, err := io.Copy(io.Discard, resp.Body)
	if err == nil || int64(1<<20)+n >= size {
		t.Errorf("after the stall: read %d more bytes, error %v; want the connection closed before the end", n, err)
	}
	t.Logf("closed %v after the client stopped reading, %v bytes sent", waited.Round(time.Millisecond), sent)
}
