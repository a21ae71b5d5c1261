package manifests_test

import (
	"bytes"
	"errors"
	"maps"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/patchfleet/ota/manifests"
	"github.com/patchfleet/ota/manifests/fsstore"
	"github.com/patchfleet/ota/signing"
)

// trustRoot builds root version v with rootKeys (threshold 1) and online
// as the timestamp key, signed by signers, and stores it as published.
func trustRoot(t *testing.T, blobs manifests.BlobStore, v int, rootKeys []*signing.PrivateKey, online *signing.PrivateKey, signers ...*signing.PrivateKey) {
	t.Helper()
	root := metadata.Root(time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC))
	root.Signed.Version = int64(v)
	for _, k := range rootKeys {
		if err := root.Signed.AddKey(k.Public(), metadata.ROOT); err != nil {
			t.Fatal(err)
		}
	}
	for _, role := range []string{metadata.TIMESTAMP, metadata.SNAPSHOT, metadata.TARGETS} {
		if err := root.Signed.AddKey(online.Public(), role); err != nil {
			t.Fatal(err)
		}
	}
	for _, s := range signers {
		if _, err := root.Sign(s.Signer()); err != nil {
			t.Fatal(err)
		}
	}
	b, err := root.ToBytes(false)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := blobs.Put(t.Context(), "tuf/"+strconv.Itoa(v)+".root.json", bytes.NewReader(b)); err != nil {
		t.Fatal(err)
	}
}

func newKeys(t *testing.T, n int) []*signing.PrivateKey {
	t.Helper()
	out := make([]*signing.PrivateKey, n)
	for i := range out {
		k, err := signing.Generate(signing.AlgEd25519)
		if err != nil {
			t.Fatal(err)
		}
		out[i] = k
	}
	return out
}

// TimestampKeys trusts the online keys of every root version, and only
// along a chain of roots each signed by the one before: a root
// replaced in the store by someone without the offline keys adds no
// key.
func TestTimestampKeys(t *testing.T) {
	ks := newKeys(t, 5)
	eng1, eng2, online1, online2, mallory := ks[0], ks[1], ks[2], ks[3], ks[4]
	newStore := func(t *testing.T) manifests.BlobStore {
		s, err := fsstore.New(filepath.Join(t.TempDir(), "blobs"))
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	ids := func(m map[string]*metadata.Key) []string { return slices.Sorted(maps.Keys(m)) }

	t.Run("NoRoot", func(t *testing.T) {
		keys, err := manifests.TimestampKeys(t.Context(), newStore(t))
		if err != nil || len(keys) != 0 {
			t.Errorf("got %v, %v; want no key", ids(keys), err)
		}
	})
	t.Run("Rotation", func(t *testing.T) {
		s := newStore(t)
		trustRoot(t, s, 1, []*signing.PrivateKey{eng1}, online1, eng1)
		// v2 hands the root role to eng2 and rotates the online key: v1's
		// root key and v2's sign it.
		trustRoot(t, s, 2, []*signing.PrivateKey{eng2}, online2, eng1, eng2)
		keys, err := manifests.TimestampKeys(t.Context(), s)
		want := []string{online1.KeyID(), online2.KeyID()}
		slices.Sort(want)
		if err != nil || !slices.Equal(ids(keys), want) {
			t.Errorf("got %v, %v; want both online keys %v", ids(keys), err, want)
		}
	})
	for _, tc := range []struct {
		name  string
		setup func(s manifests.BlobStore)
	}{
		{"V1Unsigned", func(s manifests.BlobStore) {
			trustRoot(t, s, 1, []*signing.PrivateKey{eng1}, online1)
		}},
		{"V1SignedByAnother", func(s manifests.BlobStore) {
			trustRoot(t, s, 1, []*signing.PrivateKey{eng1}, online1, mallory)
		}},
		{"V2NotSignedByV1", func(s manifests.BlobStore) {
			trustRoot(t, s, 1, []*signing.PrivateKey{eng1}, online1, eng1)
			trustRoot(t, s, 2, []*signing.PrivateKey{mallory}, mallory, mallory)
		}},
		{"V2NotSignedByItsOwn", func(s manifests.BlobStore) {
			trustRoot(t, s, 1, []*signing.PrivateKey{eng1}, online1, eng1)
			trustRoot(t, s, 2, []*signing.PrivateKey{eng2}, mallory, eng1)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newStore(t)
			tc.setup(s)
			keys, err := manifests.TimestampKeys(t.Context(), s)
			if !errors.Is(err, manifests.ErrCorrupt) || keys != nil {
				t.Errorf("got %v, %v; want ErrCorrupt and no key", ids(keys), err)
			}
		})
	}
}
