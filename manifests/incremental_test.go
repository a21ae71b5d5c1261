package manifests_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/patchfleet/ota/manifests"
)

// put stores content as an uploaded artifact at path and returns its
// sha256.
func (f *fixture) put(tb testing.TB, path string, content []byte) string {
	tb.Helper()
	sum := hexSHA(content)
	if _, err := f.blobs.Put(context.Background(), manifests.TargetKey(path, sum), bytes.NewReader(content)); err != nil {
		tb.Fatal(err)
	}
	return sum
}

func patchCustom() manifests.TargetCustom {
	return manifests.TargetCustom{PatchID: "CM-2026-001", Models: []string{"PX-7"}, InstallsBuild: "7.5.0",
		CloudMessagingDefault: "opt-in", NumberEncryption: "on"}
}

// withIncrementals drafts a release of full at path with an incremental
// for each build in from (content "inc-"+build), and publishes it.
func (f *fixture) withIncrementals(tb testing.TB, path string, full []byte, from ...string) {
	tb.Helper()
	rel := manifests.Release{Path: path, Length: int64(len(full)), SHA256: f.put(tb, path, full), Custom: patchCustom()}
	for _, b := range from {
		p := strings.TrimSuffix(path, ".zip") + ".from-" + b + ".zip"
		content := []byte("inc-" + b)
		rel.Incrementals = append(rel.Incrementals, manifests.IncrementalPayload{FromBuild: b, Path: p,
			Length: int64(len(content)), SHA256: f.put(tb, p, content), Format: manifests.FormatPackage})
	}
	d, err := f.repo.CreateReleaseDraft(context.Background(), rel, "t")
	if err != nil {
		tb.Fatal(err)
	}
	if v := f.sign(tb, d.ID, f.keys[1], f.keys[2]); v.State != manifests.DraftPublished {
		tb.Fatalf("release not published: %+v", v.Thresholds)
	}
}

func publishedCustoms(tb testing.TB, f *fixture) map[string]manifests.TargetCustom {
	tb.Helper()
	_, targets := f.repo.PublishedTargets()
	out := map[string]manifests.TargetCustom{}
	for _, t := range targets {
		var c manifests.TargetCustom
		if err := json.Unmarshal(t.Custom, &c); err != nil {
			tb.Fatal(err)
		}
		out[t.Path] = c
	}
	return out
}

// TestReleaseWithIncrementals: each incremental is a target of its own,
// signed in the same targets version as the release; the release's
// custom metadata lists them by starting build, and each names the
// release, its build and its format. Replacing the release drops the
// incrementals it no longer has; yanking it yanks them too.
func TestReleaseWithIncrementals(t *testing.T) {
	f := newFixture(t)
	f.ceremony(t)
	const path = "fw/update.zip"
	f.withIncrementals(t, path, []byte("full image v1"), "7.4.1", "7.4.2")
	got := publishedCustoms(t, f)
	if len(got) != 3 {
		t.Fatalf("published %d targets, want the release and 2 incrementals: %v", len(got), got)
	}
	want := map[string]string{"7.4.1": "fw/update.from-7.4.1.zip", "7.4.2": "fw/update.from-7.4.2.zip"}
	if rel := got[path]; len(rel.Incrementals) != 2 || rel.Incrementals["7.4.1"] != want["7.4.1"] || rel.Incrementals["7.4.2"] != want["7.4.2"] || rel.Incremental != nil {
		t.Fatalf("release custom %+v; want incrementals %v", rel, want)
	}
	for b, p := range want {
		c := got[p]
		if c.Incremental == nil || c.Incremental.Of != path || c.Incremental.FromBuild != b || c.Incremental.Format != manifests.FormatPackage {
			t.Errorf("%s: incremental %+v; want of %s from %s", p, c.Incremental, path, b)
		}
		if c.PatchID != "CM-2026-001" || c.InstallsBuild != "7.5.0" || len(c.Incrementals) != 0 {
			t.Errorf("%s: custom %+v; want the release's patch fields and no incrementals of its own", p, c)
		}
	}

	f.withIncrementals(t, path, []byte("full image v2"), "7.4.2")
	got = publishedCustoms(t, f)
	if _, ok := got["fw/update.from-7.4.1.zip"]; ok || len(got) != 2 {
		t.Fatalf("after replacing the release with one incremental: %v; want the 7.4.1 one gone", got)
	}

	d, err := f.repo.CreateYankDraft(context.Background(), path, "t")
	if err != nil {
		t.Fatal(err)
	}
	f.sign(t, d.ID, f.keys[1], f.keys[2])
	if got = publishedCustoms(t, f); len(got) != 0 {
		t.Fatalf("after the yank: %v; want nothing published", got)
	}
}

func TestReleaseIncrementalsRefused(t *testing.T) {
	f := newFixture(t)
	f.ceremony(t)
	full := []byte("full image")
	fullSum := f.put(t, "fw/u.zip", full)
	inc := []byte("inc")
	incSum := f.put(t, "fw/u.from-7.4.1.zip", inc)
	ok := manifests.IncrementalPayload{FromBuild: "7.4.1", Path: "fw/u.from-7.4.1.zip", Length: int64(len(inc)), SHA256: incSum,
		Format: manifests.FormatPackage}
	for _, c := range []struct {
		name string
		edit func(*manifests.Release)
		want string
	}{
		{"two for one build", func(r *manifests.Release) {
			o := ok
			o.Path = "fw/u.other.zip"
			f.put(t, o.Path, inc)
			r.Incrementals = append(r.Incrementals, o)
		}, "one incremental per starting build"},
		{"same path as the release", func(r *manifests.Release) { r.Incrementals[0].Path = "fw/u.zip" }, "a path of its own"},
		{"from the build it installs", func(r *manifests.Release) { r.Incrementals[0].FromBuild = "7.5.0" }, "the build the release installs"},
		{"not uploaded", func(r *manifests.Release) { r.Incrementals[0].SHA256 = hexSHA([]byte("other")) }, "is not uploaded"},
		{"wrong length", func(r *manifests.Release) { r.Incrementals[0].Length = 99 }, "is 3 bytes, not 99"},
		{"unknown format", func(r *manifests.Release) { r.Incrementals[0].Format = "bsdiff" }, "format"},
		{"bad build", func(r *manifests.Release) { r.Incrementals[0].FromBuild = "7 4" }, "from_build"},
		{"mapping set by hand", func(r *manifests.Release) { r.Custom.Incrementals = map[string]string{"7.4.1": "x"} }, "set by the server"},
	} {
		t.Run(c.name, func(t *testing.T) {
			rel := manifests.Release{Path: "fw/u.zip", Length: int64(len(full)), SHA256: fullSum, Custom: patchCustom(),
				Incrementals: []manifests.IncrementalPayload{ok}}
			c.edit(&rel)
			_, err := f.repo.CreateReleaseDraft(context.Background(), rel, "t")
			if !errors.Is(err, manifests.ErrInvalid) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err = %v; want ErrInvalid saying %q", err, c.want)
			}
		})
	}
}
