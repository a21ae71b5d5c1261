package apitest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"slices"
	"testing"

	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/patchfleet/ota/client"
	"github.com/patchfleet/ota/manifests"
	"github.com/patchfleet/ota/server/api/wire"
	"github.com/patchfleet/ota/server/rollout"
	"github.com/patchfleet/ota/signing"
)

// Engineer is a release engineer with an offline key, talking to the
// admin API over HTTP the way otactl does.
type Engineer struct {
	Name string
	Key  *signing.PrivateKey
}

// NewEngineers generates n engineers with ed25519 keys.
func NewEngineers(tb testing.TB, n int) []*Engineer {
	tb.Helper()
	out := make([]*Engineer, n)
	for i := range out {
		k, err := signing.Generate(signing.AlgEd25519)
		if err != nil {
			tb.Fatal(err)
		}
		out[i] = &Engineer{Name: fmt.Sprintf("engineer-%d", i+1), Key: k}
	}
	return out
}

// PublicKeys returns the engineers' public keys.
func PublicKeys(es []*Engineer) []*metadata.Key {
	keys := make([]*metadata.Key, len(es))
	for i, e := range es {
		keys[i] = e.Key.Public()
	}
	return keys
}

// Client is a client of the server that sends Env's token.
func (env *Env) Client() *client.Client {
	c, err := client.New(env.URL, client.WithBearer(env.Token), client.WithUserAgent("apitest"))
	if err != nil {
		panic(fmt.Sprintf("apitest: Env.URL %q: %v", env.URL, err))
	}
	return c
}

// Do sends an admin API request (path under wire.AdminPrefix) with the
// env's token and decodes a 2xx JSON answer into out; any other status
// is returned as a *client.Error.
func (env *Env) Do(method, path string, body any, out any) error {
	return env.do(env.Client(), method, path, body, out)
}

// DoWithReason is Do with the X-Reason header, the reason the audit log
// records for an admin action whose body has no reason field.
func (env *Env) DoWithReason(method, path, reason string, body any, out any) error {
	return env.do(env.Client().WithReason(reason), method, path, body, out)
}

func (env *Env) do(c *client.Client, method, path string, body any, out any) error {
	_, err := c.Do(context.Background(), method, wire.AdminPrefix+path, body, out)
	return err
}

// SignatureFor signs every part of draft v that e's key may sign, the way
// otactl does: go-tuf's Sign over the exact draft bytes.
func (e *Engineer) SignatureFor(tb testing.TB, v *manifests.DraftView) []wire.UploadSignature {
	tb.Helper()
	sigs, err := e.Signatures(v)
	if err != nil {
		tb.Fatal(err)
	}
	return sigs
}

// Signatures is SignatureFor for code without a testing.TB (examples).
func (e *Engineer) Signatures(v *manifests.DraftView) ([]wire.UploadSignature, error) {
	var out []wire.UploadSignature
	for _, part := range []string{manifests.PartRoot, manifests.PartTargets} {
		may := false
		for _, th := range v.Thresholds {
			if th.Part == part && slices.Contains(th.KeyIDs, e.Key.KeyID()) {
				may = true
			}
		}
		if !may {
			continue
		}
		var sig *metadata.Signature
		var err error
		switch part {
		case manifests.PartRoot:
			md, perr := (&metadata.Metadata[metadata.RootType]{}).FromBytes(v.Root)
			if perr != nil {
				return nil, perr
			}
			sig, err = md.Sign(e.Key.Signer())
		default:
			md, perr := (&metadata.Metadata[metadata.TargetsType]{}).FromBytes(v.Targets)
			if perr != nil {
				return nil, perr
			}
			sig, err = md.Sign(e.Key.Signer())
		}
		if err != nil {
			return nil, err
		}
		out = append(out, wire.UploadSignature{Part: part, KeyID: sig.KeyID, Sig: hex.EncodeToString(sig.Signature)})
	}
	return out, nil
}

// Sign signs draft id with e's key and uploads the signatures.
func (env *Env) Sign(tb testing.TB, e *Engineer, id string) (*manifests.DraftView, error) {
	tb.Helper()
	c := env.Client()
	v, err := c.Draft(context.Background(), id)
	if err != nil {
		tb.Fatal(err)
	}
	sigs := e.SignatureFor(tb, v)
	if len(sigs) == 0 {
		tb.Fatalf("%s may sign nothing in draft %s", e.Name, id)
	}
	return c.AddSignatures(context.Background(), id, wire.SignatureUpload{Digest: v.Digest, Signatures: sigs})
}

// MustSign signs and fails the test on error.
func (env *Env) MustSign(tb testing.TB, id string, es ...*Engineer) *manifests.DraftView {
	tb.Helper()
	var v *manifests.DraftView
	for _, e := range es {
		var err error
		if v, err = env.Sign(tb, e, id); err != nil {
			tb.Fatalf("%s signing %s: %v", e.Name, id, err)
		}
	}
	return v
}

// Ceremony drafts root v1 with the engineers' keys at threshold k for root
// and targets, and has the first k engineers sign it.
func (env *Env) Ceremony(tb testing.TB, es []*Engineer, k int) *manifests.DraftView {
	tb.Helper()
	req := wire.RootDraftRequest{RootKeys: PublicKeys(es), RootThreshold: k, TargetsKeys: PublicKeys(es), TargetsThreshold: k}
	d, err := env.Client().CreateRootDraft(context.Background(), req)
	if err != nil {
		tb.Fatal(err)
	}
	v := env.MustSign(tb, d.ID, es[:k]...)
	if v.State != manifests.DraftPublished {
		tb.Fatalf("root v1 not published after %d signatures: %+v", k, v.Thresholds)
	}
	return v
}

// Upload stores an artifact through the admin API.
func (env *Env) Upload(tb testing.TB, path string, content []byte) wire.Artifact {
	tb.Helper()
	a, err := env.Client().UploadArtifact(context.Background(), client.Upload{Path: path, Body: bytes.NewReader(content),
		Length: int64(len(content)), SHA256: SHA256Hex(content)})
	if err != nil {
		tb.Fatalf("upload %s: %v", path, err)
	}
	return *a
}

// DraftRelease uploads content at path and drafts a release of it.
func (env *Env) DraftRelease(tb testing.TB, path string, content []byte, custom manifests.TargetCustom) *manifests.DraftView {
	tb.Helper()
	env.Upload(tb, path, content)
	req := wire.ReleaseRequest{Path: path, Length: int64(len(content)), SHA256: SHA256Hex(content), Custom: custom}
	v, err := env.Client().CreateRelease(context.Background(), req)
	if err != nil {
		tb.Fatal(err)
	}
	return v
}

// Publish uploads, drafts and signs a release with signers.
func (env *Env) Publish(tb testing.TB, path string, content []byte, signers ...*Engineer) *manifests.DraftView {
	tb.Helper()
	v := env.DraftRelease(tb, path, content, PatchCustom())
	return env.MustSign(tb, v.ID, signers...)
}

// PublishWithIncrementals uploads, drafts and signs a release of content
// at path with signers, carrying for each build of from an incremental
// payload (a maker's package, FormatPackage: a tenth of content's size,
// its bytes of no meaning) at path with .from-BUILD appended.
func (env *Env) PublishWithIncrementals(tb testing.TB, path string, content []byte, signers []*Engineer, from ...string) *manifests.DraftView {
	tb.Helper()
	env.Upload(tb, path, content)
	req := wire.ReleaseRequest{Path: path, Length: int64(len(content)), SHA256: SHA256Hex(content), Custom: PatchCustom()}
	for _, build := range from {
		inc := bytes.Repeat([]byte(build), max(len(content)/10/len(build), 1))
		p := path + ".from-" + build
		env.Upload(tb, p, inc)
		req.Incrementals = append(req.Incrementals, wire.ReleaseIncremental{FromBuild: build, Path: p,
			Length: int64(len(inc)), SHA256: SHA256Hex(inc), Format: manifests.FormatPackage})
	}
	v, err := env.Client().CreateRelease(context.Background(), req)
	if err != nil {
		tb.Fatal(err)
	}
	return env.MustSign(tb, v.ID, signers...)
}

// PatchCustom is the custom metadata of the privacy patch.
func PatchCustom() manifests.TargetCustom {
	return manifests.TargetCustom{PatchID: "CM-2026-001", Models: []string{"PX-7"}, BuildMin: "7.0.0", BuildMax: "7.4.9",
		InstallsBuild: "7.5.0", CloudMessagingDefault: "opt-in", NumberEncryption: "on"}
}

// StartRollout starts a rollout of the published target path through the
// stages (default 100%) with the default policy, as an operator would:
// publishing alone offers nothing.
func (env *Env) StartRollout(tb testing.TB, path string, stages ...float64) *rollout.Rollout {
	tb.Helper()
	if len(stages) == 0 {
		stages = []float64{100}
	}
	// A start at 100% waits for a second person.
	r, err := env.ApprovePending(env.App.Rollouts.Create(context.Background(), rollout.RolloutSpec{Release: path, Stages: stages,
		Policy: rollout.DefaultPolicy(), Reason: "test rollout"}, "test-operator"))
	if err != nil {
		tb.Fatalf("start rollout of %s: %v", path, err)
	}
	return r
}

// RootBytes fetches published root version v over HTTP, to bootstrap TUF
// clients.
func (env *Env) RootBytes(tb testing.TB, v int) []byte {
	tb.Helper()
	resp, err := http.Get(fmt.Sprintf("%s/tuf/%d.root.json", env.URL, v))
	if err != nil {
		tb.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		tb.Fatalf("GET %d.root.json: %d %v", v, resp.StatusCode, err)
	}
	return b
}

// SHA256Hex is the lowercase hex sha256 of b.
func SHA256Hex(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}
