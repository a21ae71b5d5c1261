package fsstore_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/patchfleet/ota/manifests"
	"github.com/patchfleet/ota/manifests/blobtest"
	"github.com/patchfleet/ota/manifests/fsstore"
)

func TestConformance(t *testing.T) {
	blobtest.Run(t, func(t testing.TB) manifests.BlobStore {
		return mustOpen(t, t.TempDir())
	})
}

func mustOpen(tb testing.TB, root string) *fsstore.Store {
	tb.Helper()
	s, err := fsstore.New(root)
	if err != nil {
		tb.Fatalf("New(%q): %v", root, err)
	}
	return s
}

// TestNoTempLeftovers checks that failed and cancelled Puts remove their
// temporary files.
func TestNoTempLeftovers(t *testing.T) {
	root := t.TempDir()
	s := mustOpen(t, root)

	failing := io.MultiReader(strings.NewReader("partial"), failingReader{})
	if _, err := s.Put(t.Context(), "a/failed", failing); err == nil {
		t.Fatalf("Put with a failing reader: got nil error, want one")
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := s.Put(ctx, "a/cancelled", strings.NewReader("data")); !errors.Is(err, context.Canceled) {
		t.Fatalf("Put with a cancelled context: got error %v, want context.Canceled", err)
	}
	blobtest.MustPut(t, s, "a/ok", []byte("ok"))

	entries, err := os.ReadDir(filepath.Join(root, ".tmp"))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		t.Errorf("leftover in .tmp: %s", e.Name())
	}
	for _, name := range []string{"a/failed", "a/cancelled"} {
		if _, err := os.Stat(filepath.Join(root, name)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("stat %s: got error %v, want not exist", name, err)
		}
	}
}

type failingReader struct{}

func (failingReader) Read([]byte) (int, error) { return 0, errors.New("boom") }

func TestNewUnwritable(t *testing.T) {
	// Tests run as root, so permissions cannot make a directory unwritable;
	// a path below a regular file cannot be created by anyone.
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, root := range []string{file, filepath.Join(file, "store")} {
		_, err := fsstore.New(root)
		if err == nil {
			t.Errorf("New(%q): got nil error, want one", root)
			continue
		}
		if !strings.Contains(err.Error(), root) {
			t.Errorf("New(%q): got error %q, want it to name the root", root, err)
		}
	}
	if _, err := fsstore.New(""); err == nil {
		t.Errorf(`New(""): got nil error, want one`)
	}
}

func TestNewCreatesRoot(t *testing.T) {
	root := filepath.Join(t.TempDir(), "x", "y")
	s := mustOpen(t, root)
	fi, err := os.Stat(root)
	if err != nil {
		t.Fatal(err)
	}
	if !fi.IsDir() || fi.Mode().Perm() != 0o755 {
		t.Errorf("root: got mode %v, want a 0755 directory", fi.Mode())
	}
	blobtest.MustPut(t, s, "k", []byte("v"))
	got, err := os.ReadFile(filepath.Join(root, "k"))
	if err != nil || string(got) != "v" {
		t.Errorf("root/k: got %q, %v, want %q", got, err, "v")
	}
}

func TestReservedKey(t *testing.T) {
	s := mustOpen(t, t.TempDir())
	for _, key := range []string{".tmp", ".tmp/x"} {
		if _, err := s.Put(t.Context(), key, strings.NewReader("x")); !errors.Is(err, manifests.ErrInvalidKey) {
			t.Errorf("Put(%s): got error %v, want ErrInvalidKey", key, err)
		}
	}
	// .tmp is hidden from List, other dot names are not.
	blobtest.MustPut(t, s, ".tmpx", []byte("x"))
	var keys []string
	for info, err := range s.List(t.Context(), ".") {
		if err != nil {
			t.Fatal(err)
		}
		keys = append(keys, info.Key)
	}
	if len(keys) != 1 || keys[0] != ".tmpx" {
		t.Errorf("List(.): got %q, want [.tmpx]", keys)
	}
}

func TestDeletePrunesDirectories(t *testing.T) {
	root := t.TempDir()
	s := mustOpen(t, root)
	blobtest.MustPut(t, s, "a/b/c/d", []byte("d"))
	blobtest.MustPut(t, s, "a/x", []byte("x"))
	if err := s.Delete(t.Context(), "a/b/c/d"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "a", "b")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a/b: got error %v, want it removed", err)
	}
	if _, err := os.Stat(filepath.Join(root, "a", "x")); err != nil {
		t.Errorf("a/x: %v", err)
	}
	if err := s.Delete(t.Context(), "a/x"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(root); err != nil {
		t.Errorf("root: got error %v, want it kept", err)
	}
}

func TestPingRemovedRoot(t *testing.T) {
	root := filepath.Join(t.TempDir(), "store")
	s := mustOpen(t, root)
	if err := os.RemoveAll(root); err != nil {
		t.Fatal(err)
	}
	if err := s.Ping(t.Context()); err == nil {
		t.Errorf("Ping after removing root: got nil error, want one")
	}
}

func TestGetReadsSnapshot(t *testing.T) {
	s := mustOpen(t, t.TempDir())
	blobtest.MustPut(t, s, "k", []byte("first"))
	rc, _, err := s.Get(t.Context(), "k", manifests.Range{})
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	blobtest.MustPut(t, s, "k", []byte("second"))
	got, err := io.ReadAll(rc)
	if err != nil || !bytes.Equal(got, []byte("first")) {
		t.Errorf("reader opened before overwrite: got %q, %v, want %q", got, err, "first")
	}
}

// A process killed mid-Put leaves its temp file; the next start removes it
// once it is old enough to be abandoned, and leaves fresh ones (a live
// upload in another process) alone.
func TestNewRemovesStaleTempFiles(t *testing.T) {
	root := t.TempDir()
	if _, err := fsstore.New(root); err != nil {
		t.Fatal(err)
	}
	stale := filepath.Join(root, ".tmp", "put-stale")
	fresh := filepath.Join(root, ".tmp", "put-fresh")
	for _, p := range []string{stale, fresh} {
		if err := os.WriteFile(p, []byte("partial"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	old := time.Now().Add(-25 * time.Hour)
	if err := os.Chtimes(stale, old, old); err != nil {
		t.Fatal(err)
	}
	if _, err := fsstore.New(root); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(stale); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("stale temp file still there (err %v), want it removed", err)
	}
	if _, err := os.Stat(fresh); err != nil {
		t.Errorf("fresh temp file removed: %v", err)
	}
}
