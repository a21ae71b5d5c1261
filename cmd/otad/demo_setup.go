package main

import (
	"archive/zip"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"

	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/patchfleet/ota/client"
	"github.com/patchfleet/ota/manifests"
	"github.com/patchfleet/ota/server/api/wire"
	"github.com/patchfleet/ota/signing"
)

// The demo's release.
const (
	demoTarget  = "cloudmsg/optin-encrypt-7.5.0.zip"
	demoPatchID = "CM-2026-001"
)

// demoCustom is the patch's signed custom metadata: which handsets it is
// for, the build it installs and what it fixes.
func demoCustom() manifests.TargetCustom {
	return manifests.TargetCustom{PatchID: demoPatchID, Models: slices.Clone(demoModels), BuildMin: "7.3.0", BuildMax: "7.4.9",
		InstallsBuild: "7.5.0", CloudMessagingDefault: "opt-in", NumberEncryption: "on",
		Extra: map[string]string{"fixes": "cloud messaging no longer switches itself on at first boot; phone numbers sent to the messaging servers are encrypted"}}
}

// demoEngineer is a release engineer with a development-only key.
type demoEngineer struct {
	name string
	key  *signing.PrivateKey
}

// releaseTeam runs the ceremony and the release through the admin API
// over loopback, with a release-engineer token, exactly as otactl does
// (package client): the server sees the same calls, and its audit log
// records them.
type releaseTeam struct {
	client    *client.Client
	engineers []demoEngineer
}

// newReleaseTeam gives three engineers keys; cl carries the team's
// token.
func newReleaseTeam(cl *client.Client) (*releaseTeam, error) {
	t := &releaseTeam{client: cl}
	for _, name := range []string{"alice", "bob", "carol"} {
		k, err := signing.Generate(signing.AlgEd25519)
		if err != nil {
			return nil, err
		}
		t.engineers = append(t.engineers, demoEngineer{name: name, key: k})
	}
	return t, nil
}

func (t *releaseTeam) publicKeys() []*metadata.Key {
	keys := make([]*metadata.Key, len(t.engineers))
	for i, e := range t.engineers {
		keys[i] = e.key.Public()
	}
	return keys
}

// ceremony drafts root v1 and an empty targets v1 with the three keys at
// threshold 2 for both roles, and has alice and bob sign it.
func (t *releaseTeam) ceremony(ctx context.Context) error {
	req := wire.RootDraftRequest{RootKeys: t.publicKeys(), RootThreshold: 2, TargetsKeys: t.publicKeys(), TargetsThreshold: 2}
	v, err := t.client.CreateRootDraft(ctx, req)
	if err != nil {
		return fmt.Errorf("draft root v1: %w", err)
	}
	return t.signUntilPublished(ctx, v.ID, "root v1")
}

// release uploads the artifact and the deltas (binary deltas from the
// starting builds they are keyed by), drafts the release and has carol
// and alice sign it (one signature alone publishes nothing).
func (t *releaseTeam) release(ctx context.Context, artifact []byte, deltas map[string][]byte) error {
	upload := func(path string, b []byte) (string, error) {
		sum := sha256.Sum256(b)
		hexSum := hex.EncodeToString(sum[:])
		_, err := t.client.UploadArtifact(ctx, client.Upload{Path: path, Body: bytes.NewReader(b), Length: int64(len(b)), SHA256: hexSum})
		if err != nil {
			return "", fmt.Errorf("upload %s: %w", path, err)
		}
		return hexSum, nil
	}
	hexSum, err := upload(demoTarget, artifact)
	if err != nil {
		return err
	}
	req := wire.ReleaseRequest{Path: demoTarget, Length: int64(len(artifact)), SHA256: hexSum, Custom: demoCustom()}
	for _, build := range slices.Sorted(maps.Keys(deltas)) {
		path := strings.TrimSuffix(demoTarget, ".zip") + ".from-" + build + ".zip"
		sum, err := upload(path, deltas[build])
		if err != nil {
			return err
		}
		req.Incrementals = append(req.Incrementals, wire.ReleaseIncremental{FromBuild: build, Path: path,
			Length: int64(len(deltas[build])), SHA256: sum, Format: manifests.FormatZstdPatch})
	}
	v, err := t.client.CreateRelease(ctx, req)
	if err != nil {
		return fmt.Errorf("draft release %s: %w", demoTarget, err)
	}
	return t.signUntilPublished(ctx, v.ID, "release "+demoTarget, t.engineers[2], t.engineers[0])
}

// signUntilPublished has the signers (default the first two engineers)
// sign draft id one after the other, each over the exact draft bytes,
// and checks that it is then published.
func (t *releaseTeam) signUntilPublished(ctx context.Context, id, what string, signers ...demoEngineer) error {
	if len(signers) == 0 {
		signers = t.engineers[:2]
	}
	var v *manifests.DraftView
	for _, e := range signers {
		d, err := t.client.Draft(ctx, id)
		if err != nil {
			return fmt.Errorf("read draft %s: %w", id, err)
		}
		sigs, err := e.sign(d)
		if err != nil {
			return fmt.Errorf("%s signs %s: %w", e.name, what, err)
		}
		if v, err = t.client.AddSignatures(ctx, id, wire.SignatureUpload{Digest: d.Digest, Signatures: sigs}); err != nil {
			return fmt.Errorf("%s's signature on %s: %w", e.name, what, err)
		}
	}
	if v.State != manifests.DraftPublished {
		return fmt.Errorf("%s not published after %d signatures (state %s)", what, len(signers), v.State)
	}
	return nil
}

// sign signs every part of the draft e's key may sign, with go-tuf's Sign
// over the draft's bytes, as otactl does.
func (e demoEngineer) sign(v *manifests.DraftView) ([]wire.UploadSignature, error) {
	var out []wire.UploadSignature
	for _, part := range []string{manifests.PartRoot, manifests.PartTargets} {
		may := false
		for _, th := range v.Thresholds {
			if th.Part == part && slices.Contains(th.KeyIDs, e.key.KeyID()) {
				may = true
			}
		}
		if !may {
			continue
		}
		var sig *metadata.Signature
		var err error
		if part == manifests.PartRoot {
			md, perr := (&metadata.Metadata[metadata.RootType]{}).FromBytes(v.Root)
			if perr != nil {
				return nil, perr
			}
			sig, err = md.Sign(e.key.Signer())
		} else {
			md, perr := (&metadata.Metadata[metadata.TargetsType]{}).FromBytes(v.Targets)
			if perr != nil {
				return nil, perr
			}
			sig, err = md.Sign(e.key.Signer())
		}
		if err != nil {
			return nil, err
		}
		out = append(out, wire.UploadSignature{Part: part, KeyID: sig.KeyID, Sig: hex.EncodeToString(sig.Signature)})
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("key %s may sign nothing in draft %s", e.key.KeyID(), v.ID)
	}
	return out, nil
}

// demoIncrementalBuilds are the starting builds the release carries a
// binary delta for; handsets on the others download the full image.
var demoIncrementalBuilds = []string{"7.4.0", "7.4.1"}

// demoArtifact is the release's full image (demoImage of 7.5.0).
func demoArtifact(seed uint64) ([]byte, error) { return demoImage(seed, "7.5.0") }

// demoImage is a build's full image: a small, real zip with a manifest
// saying what the build is and a stored payload standing in for the
// system image. Each build's payload is the one before it with a few
// hundred bytes changed, as a phone's builds are, so that a delta
// between two builds is small (and a delta from an older build larger).
func demoImage(seed uint64, build string) ([]byte, error) {
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	w, err := zw.Create("META-INF/build.txt")
	if err != nil {
		return nil, err
	}
	if build == "7.5.0" {
		fmt.Fprintf(w, "patch %s installs build 7.5.0\n%s\n", demoPatchID, demoCustom().Extra["fixes"])
	} else {
		fmt.Fprintf(w, "build %s\n", build)
	}
	// Stored, not deflated: a changed byte changes one byte of the zip.
	w, err = zw.CreateHeader(&zip.FileHeader{Name: "payload.bin", Method: zip.Store})
	if err != nil {
		return nil, err
	}
	payload := make([]byte, 48<<10)
	rng := rand.New(rand.NewPCG(seed, 0x5eed))
	for i := range payload {
		payload[i] = byte(rng.Uint32())
	}
	for i, b := range append(slices.Clone(demoBuilds), "7.5.0") {
		// Each build changes 64 bytes of its own stretch.
		for j := range 64 {
			payload[(i*4096+j*61)%len(payload)] ^= byte(i + 1)
		}
		if b == build {
			break
		}
	}
	if _, err := w.Write(payload); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
