package apitest_test

import (
	"context"
	"encoding/hex"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/patchfleet/ota/client"
	"github.com/patchfleet/ota/internal/apitest"
	"github.com/patchfleet/ota/manifests"
	"github.com/patchfleet/ota/server/api"
	"github.com/patchfleet/ota/server/api/wire"
	"github.com/patchfleet/ota/server/identity"
)

func apiCode(tb testing.TB, err error) (int, string) {
	tb.Helper()
	var ae *client.Error
	if !errors.As(err, &ae) {
		tb.Fatalf("got %v, want an API error", err)
	}
	return ae.Status, ae.Code
}

// TestSignatureUploadErrors checks that each way a signature can be wrong
// gets its own status and code, and that nothing is stored when one
// signature of an upload is wrong.
func TestSignatureUploadErrors(t *testing.T) {
	env := apitest.Start(t, apitest.Options{})
	rootKeys := apitest.NewEngineers(t, 2)
	targetsKeys := apitest.NewEngineers(t, 3)
	outsider := apitest.NewEngineers(t, 1)[0]
	var d manifests.DraftView
	if err := env.Do("POST", "/repo/root-drafts", wire.RootDraftRequest{
		RootKeys: apitest.PublicKeys(rootKeys), RootThreshold: 2,
		TargetsKeys: apitest.PublicKeys(targetsKeys), TargetsThreshold: 2}, &d); err != nil {
		t.Fatal(err)
	}
	// The ceremony needs root keys for root and targets keys for targets.
	env.MustSign(t, d.ID, rootKeys[0], rootKeys[1], targetsKeys[0], targetsKeys[1])

	rel := env.DraftRelease(t, patchPath, randomBytes(t, 2048), apitest.PatchCustom())
	good := targetsKeys[0].SignatureFor(t, rel)
	forged := func(e *apitest.Engineer) []wire.UploadSignature {
		// e signs, but the signature claims the targets part.
		return e.SignatureFor(t, &manifests.DraftView{Targets: rel.Targets,
			Thresholds: []manifests.PartStatus{{Part: "targets", KeyIDs: []string{e.Key.KeyID()}}}})
	}
	flipped := targetsKeys[1].SignatureFor(t, rel)
	b, _ := hex.DecodeString(flipped[0].Sig)
	b[0] ^= 1
	flipped[0].Sig = hex.EncodeToString(b)
	wrongKey := targetsKeys[2].SignatureFor(t, rel)
	wrongKey[0].KeyID = targetsKeys[1].Key.KeyID() // signed by key 3, claimed as key 2

	tests := []struct {
		name       string
		digest     string
		sigs       []wire.UploadSignature
		wantStatus int
		wantCode   string
	}{
		{"key not in root at all", rel.Digest, forged(outsider), 422, "unknown_key"},
		{"root key signing targets", rel.Digest, forged(rootKeys[0]), 403, "key_not_authorized"},
		{"flipped bit", rel.Digest, flipped, 422, "bad_signature"},
		{"signed by another key than claimed", rel.Digest, wrongKey, 422, "bad_signature"},
		{"signature over an older draft", strings.Repeat("ab", 32), good, 409, "stale_draft"},
		{"one good and one bad: all refused", rel.Digest, append(append([]wire.UploadSignature{}, good...), flipped...), 422, "bad_signature"},
		{"no signatures", rel.Digest, nil, 400, "invalid"},
		{"unknown part", rel.Digest, []wire.UploadSignature{{Part: "snapshot", KeyID: good[0].KeyID, Sig: good[0].Sig}}, 400, "invalid"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			do := env.Do
			if tc.wantStatus == 400 {
				do = env.DoOffContract // refused by the schema too
			}
			err := do("POST", "/drafts/"+rel.ID+"/signatures", wire.SignatureUpload{Digest: tc.digest, Signatures: tc.sigs}, nil)
			if status, code := apiCode(t, err); status != tc.wantStatus || code != tc.wantCode {
				t.Fatalf("got %d %s (%v), want %d %s", status, code, err, tc.wantStatus, tc.wantCode)
			}
			var v manifests.DraftView
			if err := env.Do("GET", "/drafts/"+rel.ID, nil, &v); err != nil {
				t.Fatal(err)
			}
			if n := len(v.Thresholds[0].Signed); n != 0 {
				t.Fatalf("a refused upload stored %d signatures", n)
			}
		})
	}

	// k-1 valid signatures never publish, however often they are sent.
	for range 3 {
		if _, err := env.Sign(t, targetsKeys[0], rel.ID); err != nil {
			t.Fatal(err)
		}
	}
	st, err := env.Repo.Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Targets) != 0 || st.Pending == nil || len(st.Pending.Thresholds[0].Signed) != 1 {
		t.Fatalf("after one key signed three times: targets %v, pending %+v; want nothing published, 1 of 2", st.Targets, st.Pending)
	}

	t.Run("a second draft while one is pending", func(t *testing.T) {
		other := randomBytes(t, 100)
		env.Upload(t, "cloudmsg/other.zip", other)
		err := env.Do("POST", "/releases", wire.ReleaseRequest{Path: "cloudmsg/other.zip", Length: 100,
			SHA256: apitest.SHA256Hex(other), Custom: apitest.PatchCustom()}, nil)
		if status, code := apiCode(t, err); status != 409 || code != "draft_pending" {
			t.Fatalf("got %d %s, want 409 draft_pending", status, code)
		}
	})

	// The second valid signature publishes; the draft is then closed.
	v, err := env.Sign(t, targetsKeys[1], rel.ID)
	if err != nil || v.State != manifests.DraftPublished {
		t.Fatalf("second signature: state %v err %v, want published", v.State, err)
	}
	err = env.Do("POST", "/drafts/"+rel.ID+"/signatures", wire.SignatureUpload{Digest: rel.Digest, Signatures: good}, nil)
	if status, code := apiCode(t, err); status != 409 || code != "stale_draft" {
		t.Fatalf("signing a published draft: got %d %s, want 409 stale_draft", status, code)
	}
}

// TestRootDraftRules checks the server never lets its own key into the
// offline roles, and validates keys and thresholds.
func TestRootDraftRules(t *testing.T) {
	env := apitest.Start(t, apitest.Options{})
	es := apitest.NewEngineers(t, 3)
	keys := apitest.PublicKeys(es)
	online := env.Online.Key()
	bad := *keys[0]
	bad.Value.PublicKey = "abcd" // 2 bytes, not an ed25519 key
	tests := []struct {
		name string
		req  wire.RootDraftRequest
		want string
	}{
		{"online key as a root key", wire.RootDraftRequest{RootKeys: append(keys[:2:2], online), RootThreshold: 2, TargetsKeys: keys, TargetsThreshold: 2}, "online key"},
		{"online key as a targets key", wire.RootDraftRequest{RootKeys: keys, RootThreshold: 2, TargetsKeys: append(keys[:1:1], online), TargetsThreshold: 1}, "online key"},
		{"threshold above the key count", wire.RootDraftRequest{RootKeys: keys, RootThreshold: 4, TargetsKeys: keys, TargetsThreshold: 2}, "threshold 4"},
		{"zero threshold", wire.RootDraftRequest{RootKeys: keys, RootThreshold: 0, TargetsKeys: keys, TargetsThreshold: 2}, "threshold 0"},
		{"no targets keys", wire.RootDraftRequest{RootKeys: keys, RootThreshold: 2, TargetsThreshold: 1}, "at least one key"},
		{"malformed key", wire.RootDraftRequest{RootKeys: []*metadata.Key{&bad}, RootThreshold: 1, TargetsKeys: keys, TargetsThreshold: 1}, "ed25519 public key"},
		{"duplicate key", wire.RootDraftRequest{RootKeys: []*metadata.Key{keys[0], keys[0]}, RootThreshold: 1, TargetsKeys: keys, TargetsThreshold: 1}, "twice"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := env.DoOffContract("POST", "/repo/root-drafts", tc.req, nil)
			status, code := apiCode(t, err)
			if status != 400 || code != "invalid" || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want 400 invalid mentioning %q", err, tc.want)
			}
		})
	}
}

// TestAdminAuth checks tokens: none, unknown and revoked are 401 alike; a
// viewer may read but not change anything.
func TestAdminAuth(t *testing.T) {
	env := apitest.Start(t, apitest.Options{})
	tokens := env.App.Tokens
	viewer, viewerSecret, err := tokens.Create(context.Background(), "dashboard", identity.RoleViewer)
	if err != nil {
		t.Fatal(err)
	}
	revoked, revokedSecret, err := tokens.Create(context.Background(), "gone", identity.RoleReleaseEngineer)
	if err != nil {
		t.Fatal(err)
	}
	if err := env.DB.Tokens().RevokeToken(context.Background(), revoked.ID); err != nil {
		t.Fatal(err)
	}
	_ = viewer
	tests := []struct {
		name, token, method, path string
		want                      int
	}{
		{"no token", "", "GET", "/repo/status", 401},
		{"unknown token", "otad_nosuchtoken", "GET", "/repo/status", 401},
		{"revoked token", revokedSecret, "GET", "/repo/status", 401},
		{"viewer reads", viewerSecret, "GET", "/repo/status", 200},
		{"viewer may not draft", viewerSecret, "POST", "/yanks", 403},
		{"engineer reads", env.Token, "GET", "/whoami", 200},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest(tc.method, env.URL+api.AdminPrefix+tc.path, strings.NewReader(`{"path":"x"}`))
			req.Header.Set("Content-Type", "application/json")
			if tc.token != "" {
				req.Header.Set("Authorization", "Bearer "+tc.token)
			} else {
				apitest.OffContract(req)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != tc.want {
				t.Fatalf("got %d, want %d", resp.StatusCode, tc.want)
			}
		})
	}
}

// TestTokenLifetimesAndLineage: a token minted through the API expires
// when asked (default 90 days); one minted with a token expires no later
// than it and is revoked with it, down the chain, and answers 401 as
// an unknown token does.
func TestTokenLifetimesAndLineage(t *testing.T) {
	env := apitest.Start(t, apitest.Options{})
	ctx := context.Background()
	_, rootSecret, err := env.App.Tokens.CreateService(ctx, "lineage", identity.RoleAdmin, identity.TokenOptions{Lifetime: 10 * 24 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	root := &apitest.Env{URL: env.URL, Token: rootSecret}
	mint := func(as *apitest.Env, name, expires string) wire.NewToken {
		t.Helper()
		var nt wire.NewToken
		if err := as.Do("POST", "/tokens", wire.TokenRequest{Name: name, ExpiresIn: expires}, &nt); err != nil {
			t.Fatalf("mint %s: %v", name, err)
		}
		return nt
	}
	start := time.Now()
	child := mint(root, "child", "30d") // longer than root's 10 days
	if child.Parent == "" || child.ExpiresAt == nil || child.ExpiresAt.After(start.Add(10*24*time.Hour+time.Minute)) {
		t.Errorf("child: parent %q expires %v, want the root token as parent and its 10 days at most", child.Parent, child.ExpiresAt)
	}
	grandchild := mint(&apitest.Env{URL: env.URL, Token: child.Secret}, "grandchild", "1h")
	if grandchild.Parent != child.ID || grandchild.ExpiresAt.After(time.Now().Add(time.Hour)) {
		t.Errorf("grandchild: parent %q expires %v, want %s within the hour", grandchild.Parent, grandchild.ExpiresAt, child.ID)
	}
	var apiErr *client.Error
	if err := root.Do("POST", "/tokens", wire.TokenRequest{Name: "bad", ExpiresIn: "forever"}, nil); !errors.As(err, &apiErr) || apiErr.Status != 400 {
		t.Errorf("expires_in forever: got %v, want 400", err)
	}
	if err := root.Do("POST", "/tokens", wire.TokenRequest{Name: "bad", ExpiresIn: "800d"}, nil); !errors.As(err, &apiErr) || apiErr.Status != 400 {
		t.Errorf("expires_in 800d: got %v, want 400", err)
	}

	// Revoking the child revokes the grandchild; the root stays.
	if err := root.Do("DELETE", "/tokens/"+child.ID, nil, nil); err != nil {
		t.Fatal(err)
	}
	for name, secret := range map[string]string{"child": child.Secret, "grandchild": grandchild.Secret} {
		err := (&apitest.Env{URL: env.URL, Token: secret}).Do("GET", "/whoami", nil, nil)
		if !errors.As(err, &apiErr) || apiErr.Status != 401 {
			t.Errorf("the %s after revoking the child: got %v, want 401", name, err)
		}
	}
	if err := root.Do("GET", "/whoami", nil, nil); err != nil {
		t.Errorf("the root token: %v", err)
	}
	var toks []wire.Token
	if err := root.Do("GET", "/tokens", nil, &toks); err != nil {
		t.Fatal(err)
	}
	for _, tk := range toks {
		if tk.ID == grandchild.ID && tk.RevokedAt == nil {
			t.Errorf("the grandchild is listed live: %+v", tk)
		}
	}
}
