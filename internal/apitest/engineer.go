package apitest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"testing"

	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/patchfleet/ota/manifests"
	"github.com/patchfleet/ota/server/api"
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

// Do sends an admin API request with the env's token and decodes a 2xx
// JSON answer into out; any other status is returned as an *APIError.
func (env *Env) Do(method, path string, body any, out any) error {
	return env.do(method, path, body, out)
}

// DoWithReason is Do with the X-Reason header, the reason the audit log
// records for an admin action whose body has no reason field.
func (env *Env) DoWithReason(method, path, reason string, body any, out any) error {
	return env.do(method, path, body, out, func(req *http.Request) { req.Header.Set(api.HeaderReason, reason) })
}

// do is Do; opts adjust the request before it is sent (OffContract).
func (env *Env) do(method, path string, body any, out any, opts ...func(*http.Request)) error {
	var r io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		r = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, env.URL+api.AdminPrefix+path, r)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+env.Token)
	req.Header.Set("Content-Type", "application/json")
	for _, o := range opts {
		o(req)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode/100 != 2 {
		e := &APIError{Status: resp.StatusCode}
		var eb wire.ErrorBody
		if json.Unmarshal(data, &eb) == nil {
			e.Code, e.Message = eb.Error.Code, eb.Error.Message
		}
		return e
	}
	if out != nil && len(data) > 0 {
		return json.Unmarshal(data, out)
	}
	return nil
}

// APIError is a non-2xx admin API answer.
type APIError struct {
	Status        int
	Code, Message string
}

func (e *APIError) Error() string { return fmt.Sprintf("%d %s: %s", e.Status, e.Code, e.Message) }

// SignatureFor signs every part of draft v that e's key may sign, the way
// otactl does: go-tuf's Sign over the exact draft bytes.
func (e *Engineer) SignatureFor(tb testing.TB, v *manifests.DraftView) []wire.UploadSignature {
	tb.Helper()
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
				tb.Fatal(perr)
			}
			sig, err = md.Sign(e.Key.Signer())
		default:
			md, perr := (&metadata.Metadata[metadata.TargetsType]{}).FromBytes(v.Targets)
			if perr != nil {
				tb.Fatal(perr)
			}
			sig, err = md.Sign(e.Key.Signer())
		}
		if err != nil {
			tb.Fatal(err)
		}
		out = append(out, wire.UploadSignature{Part: part, KeyID: sig.KeyID, Sig: hex.EncodeToString(sig.Signature)})
	}
	return out
}

// Sign signs draft id with e's key and uploads the signatures.
func (env *Env) Sign(tb testing.TB, e *Engineer, id string) (*manifests.DraftView, error) {
	tb.Helper()
	var v manifests.DraftView
	if err := env.Do("GET", "/drafts/"+id, nil, &v); err != nil {
		tb.Fatal(err)
	}
	sigs := e.SignatureFor(tb, &v)
	if len(sigs) == 0 {
		tb.Fatalf("%s may sign nothing in draft %s", e.Name, id)
	}
	var out manifests.DraftView
	err := env.Do("POST", "/drafts/"+id+"/signatures", wire.SignatureUpload{Digest: v.Digest, Signatures: sigs}, &out)
	return &out, err
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
	var v manifests.DraftView
	req := wire.RootDraftRequest{RootKeys: PublicKeys(es), RootThreshold: k, TargetsKeys: PublicKeys(es), TargetsThreshold: k}
	if err := env.Do("POST", "/repo/root-drafts", req, &v); err != nil {
		tb.Fatal(err)
	}
	v = *env.MustSign(tb, v.ID, es[:k]...)
	if v.State != manifests.DraftPublished {
		tb.Fatalf("root v1 not published after %d signatures: %+v", k, v.Thresholds)
	}
	return &v
}

// Upload stores an artifact through the admin API.
func (env *Env) Upload(tb testing.TB, path string, content []byte) wire.Artifact {
	tb.Helper()
	req, err := http.NewRequest("PUT", env.URL+api.AdminPrefix+"/artifacts/"+path, bytes.NewReader(content))
	if err != nil {
		tb.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+env.Token)
	req.Header.Set("Content-Type", "application/octet-stream")
	req.Header.Set(wire.HeaderContentSHA256, SHA256Hex(content))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		tb.Fatal(err)
	}
	defer resp.Body.Close()
	var a wire.Artifact
	if resp.StatusCode/100 != 2 {
		b, _ := io.ReadAll(resp.Body)
		tb.Fatalf("upload %s: %d %s", path, resp.StatusCode, b)
	}
	if err := json.NewDecoder(resp.Body).Decode(&a); err != nil {
		tb.Fatal(err)
	}
	return a
}

// DraftRelease uploads content at path and drafts a release of it.
func (env *Env) DraftRelease(tb testing.TB, path string, content []byte, custom manifests.TargetCustom) *manifests.DraftView {
	tb.Helper()
	env.Upload(tb, path, content)
	var v manifests.DraftView
	req := wire.ReleaseRequest{Path: path, Length: int64(len(content)), SHA256: SHA256Hex(content), Custom: custom}
	if err := env.Do("POST", "/releases", req, &v); err != nil {
		tb.Fatal(err)
	}
	return &v
}

// Publish uploads, drafts and signs a release with signers.
func (env *Env) Publish(tb testing.TB, path string, content []byte, signers ...*Engineer) *manifests.DraftView {
	tb.Helper()
	v := env.DraftRelease(tb, path, content, PatchCustom())
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
