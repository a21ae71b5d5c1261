package manifests

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/patchfleet/ota/signing"
)

// TimestampKeys returns the keys that some published root version gives
// the timestamp role, by key id: the server's online key as k release
// engineers authorised it offline, and every online key before a
// rotation. Whoever checks what the online key signed outside TUF (the
// audit log's checkpoints) trusts it through these, never through the
// database.
//
// It reads tuf/1.root.json, 2.root.json, ... from blobs and checks the
// chain as a TUF client does: root v1 is signed by its own root
// threshold, and every later version by the threshold of the version
// before and by its own. Expiry is not checked: an old root still says
// which key was the online key while it was in force. A root that does
// not verify is ErrCorrupt. No root yet is an empty map, not an error.
func TimestampKeys(ctx context.Context, blobs BlobStore) (map[string]*metadata.Key, error) {
	keys := map[string]*metadata.Key{}
	var prev *metadata.Metadata[metadata.RootType]
	for v := 1; ; v++ {
		name := strconv.Itoa(v) + ".root.json"
		b, err := ReadSmall(ctx, blobs, metadataPrefix+name, MaxMetadataSize)
		if errors.Is(err, ErrNotExist) {
			return keys, nil
		}
		if err != nil {
			return nil, err
		}
		root, err := (&metadata.Metadata[metadata.RootType]{}).FromBytes(b)
		if err != nil {
			return nil, fmt.Errorf("%w: %s: %w", ErrCorrupt, name, err)
		}
		if root.Signed.Version != int64(v) {
			return nil, fmt.Errorf("%w: %s holds root version %d", ErrCorrupt, name, root.Signed.Version)
		}
		payload, err := signing.CanonicalSigned(root.Signed)
		if err != nil {
			return nil, fmt.Errorf("%w: %s: %w", ErrCorrupt, name, err)
		}
		signers := []*metadata.Metadata[metadata.RootType]{root}
		if prev != nil {
			signers = append(signers, prev)
		}
		for _, by := range signers {
			role := by.Signed.Roles[metadata.ROOT]
			if role == nil {
				return nil, fmt.Errorf("%w: root v%d has no root role", ErrCorrupt, by.Signed.Version)
			}
			valid := signing.CountValid(by.Signed.Keys, signing.Threshold{KeyIDs: role.KeyIDs, Threshold: role.Threshold},
				payload, root.Signatures)
			if role.Threshold < 1 || len(valid) < role.Threshold {
				return nil, fmt.Errorf("%w: %s has %d valid signatures of root v%d's root keys, want %d",
					ErrCorrupt, name, len(valid), by.Signed.Version, role.Threshold)
			}
		}
		if ts := root.Signed.Roles[metadata.TIMESTAMP]; ts != nil {
			for _, id := range ts.KeyIDs {
				if k := root.Signed.Keys[id]; k != nil && signing.ValidateKey(k) == nil {
					keys[id] = k
				}
			}
		}
		prev = root
	}
}
