package manifests_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"flag"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/patchfleet/ota/manifests"
	"github.com/patchfleet/ota/manifests/fsstore"
	"github.com/patchfleet/ota/signing"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// memDrafts is an in-memory manifests.DraftStore.
type memDrafts struct {
	mu     sync.Mutex
	drafts map[string]*manifests.Draft
	order  []string
}

var _ manifests.DraftStore = (*memDrafts)(nil)

func newMemDrafts() *memDrafts { return &memDrafts{drafts: map[string]*manifests.Draft{}} }

func clone(d *manifests.Draft) *manifests.Draft {
	c := *d
	c.Signatures = slices.Clone(d.Signatures)
	return &c
}

func (m *memDrafts) CreateDraft(_ context.Context, d *manifests.Draft) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, o := range m.drafts {
		if o.State == manifests.DraftPending {
			return manifests.ErrDraftPending
		}
	}
	m.drafts[d.ID] = clone(d)
	m.order = append(m.order, d.ID)
	return nil
}

func (m *memDrafts) Draft(_ context.Context, id string) (*manifests.Draft, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	d, ok := m.drafts[id]
	if !ok {
		return nil, manifests.ErrNotExist
	}
	return clone(d), nil
}

func (m *memDrafts) PendingDraft(_ context.Context) (*manifests.Draft, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, d := range m.drafts {
		if d.State == manifests.DraftPending {
			return clone(d), nil
		}
	}
	return nil, manifests.ErrNotExist
}

func (m *memDrafts) ListDrafts(_ context.Context, limit int) ([]*manifests.Draft, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []*manifests.Draft
	for i := len(m.order) - 1; i >= 0 && len(out) < limit; i-- {
		out = append(out, clone(m.drafts[m.order[i]]))
	}
	return out, nil
}

func (m *memDrafts) AddSignatures(_ context.Context, id string, sigs []manifests.DraftSignature) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	d := m.drafts[id]
	if d.State != manifests.DraftPending {
		return manifests.ErrDraftNotPending
	}
	for _, s := range sigs {
		d.Signatures = slices.DeleteFunc(d.Signatures, func(o manifests.DraftSignature) bool {
			return o.Part == s.Part && o.KeyID == s.KeyID
		})
		d.Signatures = append(d.Signatures, s)
	}
	return nil
}

func (m *memDrafts) SetDraftState(_ context.Context, id, state string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	d := m.drafts[id]
	if d.State != manifests.DraftPending {
		return manifests.ErrDraftNotPending
	}
	d.State = state
	return nil
}

type mutexLock struct{ mu sync.Mutex }

func (l *mutexLock) Lock(context.Context) (func(), error) {
	l.mu.Lock()
	return l.mu.Unlock, nil
}

// seededKey is a deterministic ed25519 key: ed25519 signatures are
// deterministic too, so golden files can hold signed metadata.
func seededKey(tb testing.TB, seed byte) *signing.PrivateKey {
	tb.Helper()
	k, err := signing.NewPrivateKey(ed25519.NewKeyFromSeed(bytes.Repeat([]byte{seed}, ed25519.SeedSize)))
	if err != nil {
		tb.Fatal(err)
	}
	return k
}

type fixture struct {
	repo  *manifests.Repository
	blobs manifests.BlobStore
	keys  []*signing.PrivateKey
}

var fixedNow = time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)

func newFixture(tb testing.TB) *fixture {
	tb.Helper()
	blobs, err := fsstore.New(tb.TempDir())
	if err != nil {
		tb.Fatal(err)
	}
	f := &fixture{blobs: blobs, keys: []*signing.PrivateKey{seededKey(tb, 1), seededKey(tb, 2), seededKey(tb, 3)}}
	f.repo, err = manifests.New(manifests.Config{Blobs: blobs, Drafts: newMemDrafts(), Lock: &mutexLock{},
		Online: seededKey(tb, 9).Signer(), Now: func() time.Time { return fixedNow }})
	if err != nil {
		tb.Fatal(err)
	}
	return f
}

// sign has keys sign every part of draft id they may sign.
func (f *fixture) sign(tb testing.TB, id string, keys ...*signing.PrivateKey) *manifests.DraftView {
	tb.Helper()
	ctx := context.Background()
	v, err := f.repo.DraftView(ctx, id)
	if err != nil {
		tb.Fatal(err)
	}
	for _, k := range keys {
		var sigs []manifests.DraftSignature
		for _, th := range v.Thresholds {
			if !slices.Contains(th.KeyIDs, k.KeyID()) || slices.ContainsFunc(sigs, func(s manifests.DraftSignature) bool { return s.Part == th.Part }) {
				continue
			}
			var sig *metadata.Signature
			if th.Part == manifests.PartRoot {
				md, err := (&metadata.Metadata[metadata.RootType]{}).FromBytes(v.Root)
				if err != nil {
					tb.Fatal(err)
				}
				sig, err = md.Sign(k.Signer())
			} else {
				md, err := (&metadata.Metadata[metadata.TargetsType]{}).FromBytes(v.Targets)
				if err != nil {
					tb.Fatal(err)
				}
				sig, err = md.Sign(k.Signer())
			}
			sigs = append(sigs, manifests.DraftSignature{Part: th.Part, KeyID: sig.KeyID, Sig: sig.Signature})
		}
		if v, err = f.repo.AddSignatures(ctx, id, v.Digest, sigs); err != nil {
			tb.Fatal(err)
		}
	}
	return v
}

func (f *fixture) ceremony(tb testing.TB) {
	tb.Helper()
	keys := []*metadata.Key{f.keys[0].Public(), f.keys[1].Public(), f.keys[2].Public()}
	d, err := f.repo.CreateRootDraft(context.Background(), manifests.RootParams{RootKeys: keys, RootThreshold: 2,
		TargetsKeys: keys, TargetsThreshold: 2}, "golden")
	if err != nil {
		tb.Fatal(err)
	}
	if v := f.sign(tb, d.ID, f.keys[0], f.keys[1]); v.State != manifests.DraftPublished {
		tb.Fatalf("ceremony not published: %+v", v.Thresholds)
	}
}

func (f *fixture) release(tb testing.TB, path string, content []byte) {
	tb.Helper()
	ctx := context.Background()
	sum := hexSHA(content)
	if _, err := f.blobs.Put(ctx, manifests.TargetKey(path, sum), bytes.NewReader(content)); err != nil {
		tb.Fatal(err)
	}
	d, err := f.repo.CreateReleaseDraft(ctx, manifests.Release{Path: path, Length: int64(len(content)), SHA256: sum,
		Custom: manifests.TargetCustom{PatchID: "CM-2026-001", Models: []string{"PX-7", "PX-8"}, BuildMin: "7.0.0",
			BuildMax: "7.4.9", CloudMessagingDefault: "opt-in", NumberEncryption: "on"}}, "golden")
	if err != nil {
		tb.Fatal(err)
	}
	if v := f.sign(tb, d.ID, f.keys[1], f.keys[2]); v.State != manifests.DraftPublished {
		tb.Fatalf("release not published: %+v", v.Thresholds)
	}
}

// TestGoldenMetadata pins the shape of everything the repository
// publishes (fields, key ids, hashes, versions, expiries, signatures),
// with a fixed clock and deterministic keys. Run with -update to accept a
// deliberate change, and review the diff.
func TestGoldenMetadata(t *testing.T) {
	f := newFixture(t)
	f.ceremony(t)
	f.release(t, "cloudmsg/CM-2026-001/update.zip", []byte("the privacy patch"))
	for _, name := range []string{"1.root.json", "1.targets.json", "2.targets.json", "1.snapshot.json", "2.snapshot.json", "timestamp.json"} {
		t.Run(name, func(t *testing.T) {
			rc, _, err := f.blobs.Get(context.Background(), "tuf/"+name, manifests.Range{})
			if err != nil {
				t.Fatal(err)
			}
			var got bytes.Buffer
			got.ReadFrom(rc)
			rc.Close()
			golden := filepath.Join("testdata", "golden", name)
			if *update {
				if err := os.MkdirAll(filepath.Dir(golden), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(golden, got.Bytes(), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test ./manifests -run Golden -update to create it)", err)
			}
			if !bytes.Equal(got.Bytes(), want) {
				t.Errorf("%s differs from %s:\ngot  %s\nwant %s", name, golden, got.Bytes(), want)
			}
		})
	}
}

// TestServerCannotSignOfflineRoles checks the trust model's promise: the
// online key the server holds produces no signature that root or targets
// accept.
func TestServerCannotSignOfflineRoles(t *testing.T) {
	f := newFixture(t)
	f.ceremony(t)
	root, err := (&metadata.Metadata[metadata.RootType]{}).FromBytes(mustFile(t, f, "1.root.json"))
	if err != nil {
		t.Fatal(err)
	}
	online := seededKey(t, 9).Signer()
	targets, err := (&metadata.Metadata[metadata.TargetsType]{}).FromBytes(mustFile(t, f, "1.targets.json"))
	if err != nil {
		t.Fatal(err)
	}
	targets.Signed.Version = 2
	targets.ClearSignatures()
	if _, err := targets.Sign(online); err != nil {
		t.Fatal(err)
	}
	if err := root.VerifyDelegate(metadata.TARGETS, targets); err == nil {
		t.Error("targets signed by the online key verify under root")
	}
	next := *root
	next.Signed.Version = 2
	next.ClearSignatures()
	if _, err := next.Sign(online); err != nil {
		t.Fatal(err)
	}
	if err := root.VerifyDelegate(metadata.ROOT, &next); err == nil {
		t.Error("a root signed by the online key verifies under root")
	}
	for _, role := range []string{metadata.ROOT, metadata.TARGETS} {
		if slices.Contains(root.Signed.Roles[role].KeyIDs, online.KeyID()) {
			t.Errorf("the online key is a %s key", role)
		}
	}
}

func mustFile(tb testing.TB, f *fixture, name string) []byte {
	tb.Helper()
	file, err := f.repo.MetadataFile(context.Background(), name)
	if err != nil {
		tb.Fatal(err)
	}
	return file.Data
}

func hexSHA(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

// TestExpiryWarnings checks that offline roles close to expiry are flagged
// (status, log lines, metrics) and online ones are not: those re-sign
// themselves.
func TestExpiryWarnings(t *testing.T) {
	now := fixedNow
	f := newFixture(t)
	f.repo, _ = manifests.New(manifests.Config{Blobs: f.blobs, Drafts: newMemDrafts(), Lock: &mutexLock{},
		Online: seededKey(t, 9).Signer(), Now: func() time.Time { return now }})
	f.ceremony(t)
	if w := f.repo.ExpiryWarnings(); len(w) != 0 {
		t.Fatalf("fresh repository warns: %v", w)
	}
	// Targets last 91 days by default: 80 days on, 11 are left.
	now = fixedNow.Add(80 * 24 * time.Hour)
	w := f.repo.ExpiryWarnings()
	if len(w) != 1 || !strings.Contains(w[0], "targets v1 expires") {
		t.Fatalf("warnings %q, want one about targets", w)
	}
	st, err := f.repo.Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range st.Roles {
		if (r.Warning != "") != (r.Role == "targets") {
			t.Errorf("role %s warning %q", r.Role, r.Warning)
		}
	}
	exp := f.repo.RoleExpiries()
	if got := exp["targets"]; got < 10*86400 || got > 12*86400 {
		t.Errorf("targets expires in %.0fs, want about 11 days", got)
	}
}

// TestPublishedTargetFile: only the consistent-snapshot name of a
// published target, with its own hash, is a published target file.
func TestPublishedTargetFile(t *testing.T) {
	f := newFixture(t)
	content := []byte("the privacy patch")
	sum := hexSHA(content)
	if f.repo.PublishedTargetFile("cloudmsg/" + sum + ".update.zip") {
		t.Fatal("a target file before anything is published")
	}
	f.ceremony(t)
	f.release(t, "cloudmsg/update.zip", content)
	other := hexSHA([]byte("another build"))
	for _, tc := range []struct {
		rel  string
		want bool
	}{
		{"cloudmsg/" + sum + ".update.zip", true},
		{"cloudmsg/" + other + ".update.zip", false},    // another hash
		{sum + ".update.zip", false},                    // another folder
		{"other/" + sum + ".update.zip", false},         // another folder
		{"cloudmsg/" + sum + ".other.zip", false},       // another name
		{"cloudmsg/update.zip", false},                  // no hash
		{"cloudmsg/" + sum[:63] + ".update.zip", false}, // a short hash
		{"cloudmsg/" + strings.ToUpper(sum) + ".update.zip", false},
	} {
		if got := f.repo.PublishedTargetFile(tc.rel); got != tc.want {
			t.Errorf("PublishedTargetFile(%q) = %v, want %v", tc.rel, got, tc.want)
		}
	}
}
