package fsstore_test

import (
	"bytes"
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/patchfleet/ota/manifests"
)

// TestNameTooLongForFilesystem checks that a key manifests.ValidateKey
// accepts but the filesystem cannot hold (here: the path passes PATH_MAX
// under a deep root) is manifests.ErrInvalidKey, which the API answers 400
// or 404, and not a bare ENAMETOOLONG, which it would answer 500.
func TestNameTooLongForFilesystem(t *testing.T) {
	root := t.TempDir()
	for len(root) < 3500 {
		root = filepath.Join(root, strings.Repeat("r", 250))
	}
	s := mustOpen(t, root)
	seg := strings.Repeat("k", 200)
	key := strings.Join([]string{seg, seg, seg, seg, "x"}, "/")
	if err := manifests.ValidateKey(key); err != nil {
		t.Fatalf("the test key must be valid for every store: %v", err)
	}
	ctx := t.Context()
	if _, err := s.Put(ctx, key, bytes.NewReader([]byte("x"))); !errors.Is(err, manifests.ErrInvalidKey) {
		t.Errorf("Put: got error %v, want ErrInvalidKey", err)
	}
	if _, err := s.Stat(ctx, key); !errors.Is(err, manifests.ErrInvalidKey) {
		t.Errorf("Stat: got error %v, want ErrInvalidKey", err)
	}
	rc, _, err := s.Get(ctx, key, manifests.Range{})
	if err == nil {
		rc.Close()
	}
	if !errors.Is(err, manifests.ErrInvalidKey) {
		t.Errorf("Get: got error %v, want ErrInvalidKey", err)
	}
	if err := s.Delete(ctx, key); !errors.Is(err, manifests.ErrInvalidKey) {
		t.Errorf("Delete: got error %v, want ErrInvalidKey", err)
	}
}
