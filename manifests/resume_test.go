package manifests_test

import (
	"bytes"
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/patchfleet/ota/manifests"
	"github.com/patchfleet/ota/manifests/fsstore"
	"github.com/patchfleet/ota/signing"
)

var errCrash = errors.New("simulated crash")

// crashingDrafts fails the next "mark published" once armed: the process
// died after writing timestamp.json and before the database update.
type crashingDrafts struct {
	*memDrafts
	armed atomic.Bool
}

func (c *crashingDrafts) SetDraftState(ctx context.Context, id, state string) error {
	if state == manifests.DraftPublished && c.armed.CompareAndSwap(true, false) {
		return errCrash
	}
	return c.memDrafts.SetDraftState(ctx, id, state)
}

// sigFor signs one part of draft v with k.
func sigFor(tb testing.TB, v *manifests.DraftView, part string, k *signing.PrivateKey) manifests.DraftSignature {
	tb.Helper()
	var sig *metadata.Signature
	var err error
	if part == manifests.PartRoot {
		md, perr := (&metadata.Metadata[metadata.RootType]{}).FromBytes(v.Root)
		if perr != nil {
			tb.Fatal(perr)
		}
		sig, err = md.Sign(k.Signer())
	} else {
		md, perr := (&metadata.Metadata[metadata.TargetsType]{}).FromBytes(v.Targets)
		if perr != nil {
			tb.Fatal(perr)
		}
		sig, err = md.Sign(k.Signer())
	}
	if err != nil {
		tb.Fatal(err)
	}
	return manifests.DraftSignature{Part: part, KeyID: sig.KeyID, Sig: sig.Signature}
}

// TestResumeAfterTimestampWritten crashes a publish after timestamp.json
// is written but before the draft is marked published, and checks that
// the restarted repository marks the draft published (it is served),
// rather than discarding it as stale, and writes nothing more.
func TestResumeAfterTimestampWritten(t *testing.T) {
	for _, kind := range []string{manifests.DraftKindInit, manifests.DraftKindRotate, manifests.DraftKindRelease} {
		t.Run(kind, func(t *testing.T) {
			ctx := context.Background()
			blobs, err := fsstore.New(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			drafts := &crashingDrafts{memDrafts: newMemDrafts()}
			open := func() *manifests.Repository {
				repo, err := manifests.New(manifests.Config{Blobs: blobs, Drafts: drafts, Lock: &mutexLock{},
					Online: seededKey(t, 9).Signer(), Now: func() time.Time { return fixedNow }})
				if err != nil {
					t.Fatal(err)
				}
				if err := repo.Load(ctx); err != nil {
					t.Fatal(err)
				}
				return repo
			}
			f := &fixture{repo: open(), blobs: blobs, keys: []*signing.PrivateKey{seededKey(t, 1), seededKey(t, 2), seededKey(t, 3)}}
			keys := []*metadata.Key{f.keys[0].Public(), f.keys[1].Public(), f.keys[2].Public()}

			var d *manifests.Draft
			switch kind {
			case manifests.DraftKindInit:
				d, err = f.repo.CreateRootDraft(ctx, manifests.RootParams{RootKeys: keys, RootThreshold: 2,
					TargetsKeys: keys, TargetsThreshold: 2}, "test")
			case manifests.DraftKindRotate:
				// New targets keys: the draft carries root and targets.
				f.ceremony(t)
				d, err = f.repo.CreateRootDraft(ctx, manifests.RootParams{RootKeys: keys, RootThreshold: 2,
					TargetsKeys: keys[:2], TargetsThreshold: 2}, "test")
			default:
				f.ceremony(t)
				content := []byte("the privacy patch")
				sum := hexSHA(content)
				if _, err := blobs.Put(ctx, manifests.TargetKey("p/update.zip", sum), bytes.NewReader(content)); err != nil {
					t.Fatal(err)
				}
				d, err = f.repo.CreateReleaseDraft(ctx, manifests.Release{Path: "p/update.zip", Length: int64(len(content)), SHA256: sum,
					Custom: manifests.TargetCustom{PatchID: "CM-2026-001", Models: []string{"PX-7"}, BuildMin: "7.0.0",
						BuildMax: "7.4.9", CloudMessagingDefault: "opt-in", NumberEncryption: "on"}}, "test")
			}
			if err != nil {
				t.Fatal(err)
			}
			v := f.sign(t, d.ID, f.keys[0])
			var sigs []manifests.DraftSignature
			for _, part := range []string{manifests.PartRoot, manifests.PartTargets} {
				if (part == manifests.PartRoot && v.Root != nil) || (part == manifests.PartTargets && v.Targets != nil) {
					sigs = append(sigs, sigFor(t, v, part, f.keys[1]))
				}
			}
			drafts.armed.Store(true)
			if _, err := f.repo.AddSignatures(ctx, d.ID, v.Digest, sigs); !errors.Is(err, errCrash) {
				t.Fatalf("AddSignatures: got %v, want the simulated crash", err)
			}
			rc, _, err := blobs.Get(ctx, "tuf/timestamp.json", manifests.Range{})
			if err != nil {
				t.Fatalf("timestamp.json not written before the crash: %v", err)
			}
			var served bytes.Buffer
			served.ReadFrom(rc)
			rc.Close()

			// Restart: a new repository on the same storage.
			repo := open()
			if err := repo.ResumePending(ctx); err != nil {
				t.Fatalf("ResumePending: %v", err)
			}
			got, err := drafts.Draft(ctx, d.ID)
			if err != nil {
				t.Fatal(err)
			}
			if got.State != manifests.DraftPublished {
				t.Errorf("draft is %s after the restart, want published: its targets are served", got.State)
			}
			ts, err := repo.MetadataFile(ctx, "timestamp.json")
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(ts.Data, served.Bytes()) {
				t.Error("the restart published again; want only the draft marked")
			}
		})
	}
}
