package apitest_test

import (
	"bytes"
	"crypto/rand"
	"errors"
	"testing"

	"github.com/patchfleet/ota/client"
	"github.com/patchfleet/ota/internal/apitest"
	"github.com/patchfleet/ota/manifests"
	"github.com/patchfleet/ota/server/api/wire"
)

const patchPath = "cloudmsg/CM-2026-001/update.zip"

func randomBytes(tb testing.TB, n int) []byte {
	tb.Helper()
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// download refreshes a client and fetches path, verifying it.
func download(tb testing.TB, env *apitest.Env, root []byte, path string) ([]byte, error) {
	tb.Helper()
	up := apitest.NewClient(tb, env.URL, root)
	if err := up.Refresh(); err != nil {
		return nil, err
	}
	info, err := up.GetTargetInfo(path)
	if err != nil {
		return nil, err
	}
	_, data, err := up.DownloadTarget(info, "", "")
	return data, err
}

// TestGoTUFClientLifecycle runs the repository through its life with the
// reference go-tuf client checking every step: ceremony, release, a
// release with too few signatures, root rotation and a yank; on the
// filesystem store, and on MinIO both streaming and redirecting artifact
// downloads to presigned URLs.
func TestGoTUFClientLifecycle(t *testing.T) {
	t.Run("filesystem", func(t *testing.T) { lifecycle(t, apitest.Options{}) })
	t.Run("s3/stream", func(t *testing.T) { lifecycle(t, apitest.Options{Blobs: apitest.MinIOStore(t)}) })
	t.Run("s3/redirect", func(t *testing.T) {
		lifecycle(t, apitest.Options{Blobs: apitest.MinIOStore(t), TargetsRedirect: true})
	})
}

func lifecycle(t *testing.T, opts apitest.Options) {
	env := apitest.Start(t, opts)
	es := apitest.NewEngineers(t, 4)
	env.Ceremony(t, es[:3], 2)
	root1 := env.RootBytes(t, 1)

	patch := randomBytes(t, 1<<20)
	v := env.Publish(t, patchPath, patch, es[0], es[1])
	if v.State != manifests.DraftPublished {
		t.Fatalf("release not published after 2 of 2 signatures: %+v", v.Thresholds)
	}
	got, err := download(t, env, root1, patchPath)
	if err != nil {
		t.Fatalf("fresh go-tuf client: %v", err)
	}
	if !bytes.Equal(got, patch) {
		t.Fatal("downloaded patch differs from the uploaded one")
	}

	t.Run("one signature of two publishes nothing", func(t *testing.T) {
		d := env.DraftRelease(t, "cloudmsg/unsigned.zip", randomBytes(t, 1000), apitest.PatchCustom())
		v := env.MustSign(t, d.ID, es[0])
		if v.State != manifests.DraftPending {
			t.Fatalf("draft state %s after 1 of 2 signatures, want pending", v.State)
		}
		if _, err := download(t, env, root1, "cloudmsg/unsigned.zip"); err == nil {
			t.Fatal("a client was offered a target signed by one engineer of two")
		}
		if err := env.Do("DELETE", "/drafts/"+d.ID, nil, nil); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("root rotation is followed", func(t *testing.T) {
		// Replace engineer 3 by engineer 4 in both roles.
		keys := apitest.PublicKeys([]*apitest.Engineer{es[0], es[1], es[3]})
		var d manifests.DraftView
		if err := env.Do("POST", "/repo/root-drafts", wire.RootDraftRequest{RootKeys: keys, RootThreshold: 2,
			TargetsKeys: keys, TargetsThreshold: 2}, &d); err != nil {
			t.Fatal(err)
		}
		// Engineers 1 and 2 satisfy the old root's threshold; the new
		// root's needs two of 1, 2, 4, and the re-signed targets too.
		v := env.MustSign(t, d.ID, es[0], es[1])
		if v.State != manifests.DraftPublished {
			t.Fatalf("rotation not published: %+v", v.Thresholds)
		}
		up := apitest.NewClient(t, env.URL, root1)
		if err := up.Refresh(); err != nil {
			t.Fatalf("client trusting root v1 could not follow the rotation: %v", err)
		}
		if got := up.GetTrustedMetadataSet().Root.Signed.Version; got != 2 {
			t.Fatalf("client trusts root v%d, want v2", got)
		}
		if _, err := download(t, env, root1, patchPath); err != nil {
			t.Fatalf("patch no longer downloads after rotation: %v", err)
		}
	})

	t.Run("the removed engineer can no longer sign", func(t *testing.T) {
		d := env.DraftRelease(t, "cloudmsg/other.zip", randomBytes(t, 1000), apitest.PatchCustom())
		defer env.Do("DELETE", "/drafts/"+d.ID, nil, nil)
		sigs := es[2].SignatureFor(t, &manifests.DraftView{Thresholds: []manifests.PartStatus{{Part: "targets", KeyIDs: []string{es[2].Key.KeyID()}}}, Targets: d.Targets})
		err := env.Do("POST", "/drafts/"+d.ID+"/signatures", wire.SignatureUpload{Digest: d.Digest, Signatures: sigs}, nil)
		var ae *client.Error
		if !errors.As(err, &ae) || ae.Code != "unknown_key" {
			t.Fatalf("got %v, want unknown_key", err)
		}
	})

	t.Run("a yanked target is no longer offered", func(t *testing.T) {
		var d manifests.DraftView
		if err := env.Do("POST", "/yanks", wire.YankRequest{Path: patchPath}, &d); err != nil {
			t.Fatal(err)
		}
		env.MustSign(t, d.ID, es[0], es[3])
		if _, err := download(t, env, root1, patchPath); err == nil {
			t.Fatal("yanked target still offered")
		}
	})
}
