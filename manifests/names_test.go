package manifests_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/patchfleet/ota/manifests"
)

// TestMetadataFileNames checks that each published file has exactly one
// name: [1-9][0-9]*.{root,snapshot,targets}.json or timestamp.json. Any
// other spelling of a published version is ErrBadName (404), not the file.
func TestMetadataFileNames(t *testing.T) {
	f := newFixture(t)
	f.ceremony(t)
	ctx := context.Background()
	tests := []struct {
		name string
		want error // nil: served
	}{
		{"timestamp.json", nil},
		{"1.root.json", nil},
		{"1.targets.json", nil},
		{"1.snapshot.json", nil},
		{"2.root.json", manifests.ErrNotExist},
		{"+1.root.json", manifests.ErrBadName},
		{"+1.targets.json", manifests.ErrBadName},
		{"01.root.json", manifests.ErrBadName},
		{"0.root.json", manifests.ErrBadName},
		{"-1.root.json", manifests.ErrBadName},
		{"1e0.root.json", manifests.ErrBadName},
		{" 1.root.json", manifests.ErrBadName},
		{"1 .root.json", manifests.ErrBadName},
		{"0x1.root.json", manifests.ErrBadName},
		{"1_0.root.json", manifests.ErrBadName},
		{"١.root.json", manifests.ErrBadName}, // an Arabic-Indic one
		{"1.timestamp.json", manifests.ErrBadName},
		{"1.root.json.bak", manifests.ErrBadName},
		{"root.json", manifests.ErrBadName},
		{"1.Root.json", manifests.ErrBadName},
		{"Timestamp.json", manifests.ErrBadName},
		{strings.Repeat("1", 19) + ".root.json", manifests.ErrBadName},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			file, err := f.repo.MetadataFile(ctx, tc.name)
			if tc.want == nil {
				if err != nil || len(file.Data) == 0 {
					t.Errorf("got %d bytes, error %v; want the file", len(file.Data), err)
				}
				return
			}
			if !errors.Is(err, tc.want) {
				t.Errorf("got %d bytes, error %v; want %v", len(file.Data), err, tc.want)
			}
		})
	}
}

// TestTargetPathLength checks that a target path is refused when its blob
// key would have a segment the filesystem store cannot hold, so that no
// store publishes what another cannot serve.
func TestTargetPathLength(t *testing.T) {
	sum := strings.Repeat("ab", 32)
	tests := []struct {
		path string
		ok   bool
	}{
		{"d/" + strings.Repeat("n", manifests.MaxTargetNameLen), true},
		{"d/" + strings.Repeat("n", manifests.MaxTargetNameLen+1), false},
		{strings.Repeat("n", 300) + ".bin", false},
		{"d/" + strings.Repeat("n", 296) + ".bin", false},
		{strings.Repeat("d", manifests.MaxSegmentLen) + "/a.bin", true},
		{strings.Repeat("d", manifests.MaxSegmentLen+1) + "/a.bin", false},
	}
	for _, tc := range tests {
		t.Run(strings.ReplaceAll(tc.path, strings.Repeat("n", 50), "n*50"), func(t *testing.T) {
			err := manifests.ValidateTargetPath(tc.path)
			if tc.ok {
				if err != nil {
					t.Fatalf("got %v, want the path accepted", err)
				}
				if err := manifests.ValidateKey(manifests.TargetKey(tc.path, sum)); err != nil {
					t.Errorf("an accepted path has an invalid blob key: %v", err)
				}
				return
			}
			if !errors.Is(err, manifests.ErrInvalidKey) {
				t.Errorf("got %v, want ErrInvalidKey", err)
			}
		})
	}
}

// TestMissingPublishedFileIsCorruption checks that a snapshot or targets
// file that the published metadata names, deleted from the store behind
// the repository's back, is reported as corruption: never as
// ErrNotExist, which the API would answer 404.
func TestMissingPublishedFileIsCorruption(t *testing.T) {
	for _, key := range []string{"tuf/1.snapshot.json", "tuf/1.targets.json"} {
		t.Run(key, func(t *testing.T) {
			f := newFixture(t)
			f.ceremony(t)
			ctx := context.Background()
			if err := f.blobs.Delete(ctx, key); err != nil {
				t.Fatal(err)
			}
			fresh, err := manifests.New(manifests.Config{Blobs: f.blobs, Drafts: newMemDrafts(), Lock: &mutexLock{},
				Online: seededKey(t, 9).Signer()})
			if err != nil {
				t.Fatal(err)
			}
			err = fresh.Load(ctx)
			if !errors.Is(err, manifests.ErrCorrupt) || errors.Is(err, manifests.ErrNotExist) {
				t.Errorf("Load: got %v, want ErrCorrupt and not ErrNotExist", err)
			}
			if err == nil || !strings.Contains(err.Error(), key) {
				t.Errorf("Load: got %v, want an error naming %s", err, key)
			}
		})
	}
}
