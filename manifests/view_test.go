package manifests_test

import (
	"context"
	"slices"
	"strings"
	"testing"

	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/patchfleet/ota/manifests"
	"github.com/patchfleet/ota/signing"
)

// TestDraftHistoryDescribesEachDraftAgainstWhatItReplaced walks a
// repository through a ceremony, two releases, a yank and a root
// rotation, then reads every draft back as the releases page does (after
// all of them were published): each must still say what it changed
// relative to what it replaced, not relative to what is published now,
// and name the keys it was published with.
func TestDraftHistoryDescribesEachDraftAgainstWhatItReplaced(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	k := f.keys
	k4 := seededKey(t, 4)
	f.ceremony(t)
	pathA, pathB := "cloudmsg/CM-2026-001/update.zip", "cloudmsg/CM-2026-002/update.zip"
	f.release(t, pathA, []byte("the privacy patch"))
	f.release(t, pathB, []byte("the privacy patch, again"))
	yank, err := f.repo.CreateYankDraft(ctx, pathA, "golden")
	if err != nil {
		t.Fatal(err)
	}
	if v := f.sign(t, yank.ID, k[0], k[1]); v.State != manifests.DraftPublished {
		t.Fatalf("yank not published: %+v", v.Thresholds)
	}
	// The rotation replaces root key 3 by key 4; the targets keys stay.
	rot, err := f.repo.CreateRootDraft(ctx, manifests.RootParams{
		RootKeys: []*metadata.Key{k[0].Public(), k[1].Public(), k4.Public()}, RootThreshold: 2,
		TargetsKeys: []*metadata.Key{k[0].Public(), k[1].Public(), k[2].Public()}, TargetsThreshold: 2}, "golden")
	if err != nil {
		t.Fatal(err)
	}
	if v := f.sign(t, rot.ID, k[0], k[1]); v.State != manifests.DraftPublished {
		t.Fatalf("rotation not published: %+v", v.Thresholds)
	}
	// A release under root v2, left pending: described against now.
	f.blobs.Put(ctx, manifests.TargetKey("cloudmsg/CM-2026-003/update.zip", hexSHA([]byte("three"))), strings.NewReader("three"))
	pending, err := f.repo.CreateReleaseDraft(ctx, manifests.Release{Path: "cloudmsg/CM-2026-003/update.zip", Length: 5,
		SHA256: hexSHA([]byte("three")), Custom: manifests.TargetCustom{PatchID: "CM-2026-003"}}, "golden")
	if err != nil {
		t.Fatal(err)
	}

	views, err := f.repo.ListDrafts(ctx, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(views) != 6 {
		t.Fatalf("%d drafts, want 6", len(views))
	}
	short := func(s *signing.PrivateKey) string { return s.KeyID()[:12] }
	ids := func(ks ...*signing.PrivateKey) []string {
		out := make([]string, len(ks))
		for i, s := range ks {
			out[i] = s.KeyID()
		}
		slices.Sort(out)
		return out
	}
	type threshold struct {
		what   string
		signed []string
	}
	tests := []struct {
		name, state, summary string
		want, notWant        []string // substrings of the change lines
		added, removed       []string
		thresholds           []threshold
	}{
		{name: "pending release", state: manifests.DraftPending, summary: "adds target cloudmsg/CM-2026-003/update.zip",
			want: []string{"publishes targets v5", "adds target cloudmsg/CM-2026-003/update.zip"}, notWant: []string{"removes", "cloudmsg/CM-2026-002"},
			added:      []string{"cloudmsg/CM-2026-003/update.zip"},
			thresholds: []threshold{{"root v2's targets keys", nil}}},
		{name: "rotation", state: manifests.DraftPublished,
			summary:    "rotates root to v2: root keys 2 of 3, adds " + short(k4) + ", removes " + short(k[2]) + "; targets keys 2 of 3, unchanged",
			want:       []string{"publishes root v2", "root role: 2 of 3 keys", "adds " + short(k4), "removes " + short(k[2]), "targets role: 2 of 3 keys"},
			notWant:    []string{"target cloudmsg"},
			thresholds: []threshold{{"root v1's root keys", ids(k[0], k[1])}, {"new root v2's root keys", ids(k[0], k[1])}}},
		{name: "yank", state: manifests.DraftPublished, summary: "yanks " + pathA,
			want: []string{"publishes targets v4", "removes target " + pathA + ": handsets are no longer offered it"}, notWant: []string{pathB, "adds"},
			removed:    []string{pathA},
			thresholds: []threshold{{"root v1's targets keys", ids(k[0], k[1])}}},
		{name: "second release", state: manifests.DraftPublished, summary: "adds target " + pathB,
			want: []string{"publishes targets v3", "adds target " + pathB + " (24 bytes"}, notWant: []string{"removes", "target " + pathA},
			added:      []string{pathB},
			thresholds: []threshold{{"root v1's targets keys", ids(k[1], k[2])}}},
		{name: "first release", state: manifests.DraftPublished, summary: "adds target " + pathA,
			want: []string{"publishes targets v2", "adds target " + pathA + " (17 bytes"}, notWant: []string{"removes", pathB},
			added:      []string{pathA},
			thresholds: []threshold{{"root v1's targets keys", ids(k[1], k[2])}}},
		{name: "ceremony", state: manifests.DraftPublished,
			summary: "ceremony: root v1 with root keys 2 of 3 (" + strings.Join(shortSorted(k[0], k[1], k[2]), ", ") +
				") and targets keys 2 of 3 (" + strings.Join(shortSorted(k[0], k[1], k[2]), ", ") + "); targets v1, empty",
			want:       []string{"publishes root v1", "root role: 2 of 3 keys", "publishes targets v1"},
			notWant:    []string{"unchanged", "removes", "adds", "re-signs"},
			thresholds: []threshold{{"new root v1's root keys", ids(k[0], k[1])}, {"root v1's targets keys", ids(k[0], k[1])}}},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			v := views[i]
			if v.State != tc.state {
				t.Fatalf("draft %d is %s, want %s", i, v.State, tc.state)
			}
			if v.ID == pending.ID && tc.state != manifests.DraftPending {
				t.Fatal("the pending draft is listed out of order")
			}
			if v.Summary != tc.summary {
				t.Errorf("summary:\n got %q\nwant %q", v.Summary, tc.summary)
			}
			all := strings.Join(v.Changes, "\n")
			for _, w := range tc.want {
				if !strings.Contains(all, w) {
					t.Errorf("changes lack %q:\n%s", w, all)
				}
			}
			for _, w := range tc.notWant {
				if strings.Contains(all, w) {
					t.Errorf("changes say %q:\n%s", w, all)
				}
			}
			if !slices.Equal(v.Added, tc.added) || !slices.Equal(v.Removed, tc.removed) || len(v.Replaced) != 0 {
				t.Errorf("added %q removed %q replaced %q, want added %q removed %q", v.Added, v.Removed, v.Replaced, tc.added, tc.removed)
			}
			var got []threshold
			for _, th := range v.Thresholds {
				got = append(got, threshold{th.What, th.Signed})
				if th.Threshold != 2 {
					t.Errorf("%s: threshold %d, want 2", th.What, th.Threshold)
				}
			}
			if len(got) != len(tc.thresholds) {
				t.Fatalf("thresholds %+v, want %+v", got, tc.thresholds)
			}
			for j := range got {
				if got[j].what != tc.thresholds[j].what || !slices.Equal(got[j].signed, tc.thresholds[j].signed) {
					t.Errorf("threshold %d: got %+v, want %+v", j, got[j], tc.thresholds[j])
				}
			}
			if (v.ClosedAt == nil) != (tc.state == manifests.DraftPending) {
				t.Errorf("closed at %v for a %s draft", v.ClosedAt, v.State)
			}
		})
	}
}

func shortSorted(ks ...*signing.PrivateKey) []string {
	out := make([]string, len(ks))
	for i, k := range ks {
		out[i] = k.KeyID()[:12]
	}
	slices.Sort(out)
	return out
}
