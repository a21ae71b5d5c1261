package apitest_test

import (
	"strings"
	"testing"

	"github.com/chromedp/chromedp"

	"github.com/patchfleet/ota/internal/apitest"
	"github.com/patchfleet/ota/manifests"
	"github.com/patchfleet/ota/server/api/wire"
	"github.com/patchfleet/ota/server/identity"
)

// TestReleasesPageInBrowser drives a real server through a ceremony, a
// release, a yank and a root rotation, each signed offline by two
// engineers who upload with their own tokens, and reads the releases
// page in headless Chromium as a newcomer would: every draft says what
// it changed compared with what it replaced (not with what is published
// now), who signed it, and the release says it was yanked. The releases
// and audit pages fit a 1,400 px and a 390 px window without scrolling
// sideways.
func TestReleasesPageInBrowser(t *testing.T) {
	bin := chromium(t)
	env := apitest.Start(t, apitest.Options{})
	ctx := t.Context()

	// Each engineer uploads with a token of their own, so the audit log
	// (and the page) can name who uploaded each key's signature.
	es := apitest.NewEngineers(t, 3)
	as := map[string]*apitest.Env{}
	for i, name := range []string{"alice", "bob", "dave"} {
		es[i].Name = name
		_, secret, err := env.App.Tokens.Create(ctx, name, identity.RoleReleaseEngineer)
		if err != nil {
			t.Fatal(err)
		}
		as[name] = &apitest.Env{URL: env.URL, Token: secret}
	}
	alice, bob, dave := es[0], es[1], es[2]
	short := func(e *apitest.Engineer) string { return e.Key.KeyID()[:12] }
	signBy := func(id string, signers ...*apitest.Engineer) *manifests.DraftView {
		t.Helper()
		var v *manifests.DraftView
		for _, e := range signers {
			var err error
			if v, err = as[e.Name].Sign(t, e, id); err != nil {
				t.Fatalf("%s signing %s: %v", e.Name, id, err)
			}
		}
		if v.State != manifests.DraftPublished {
			t.Fatalf("draft %s not published after %d signatures: %+v", id, len(signers), v.Thresholds)
		}
		return v
	}

	var ceremony, release, yank, rotation manifests.DraftView
	two := apitest.PublicKeys([]*apitest.Engineer{alice, bob})
	if err := as["alice"].Do("POST", "/repo/root-drafts", wire.RootDraftRequest{RootKeys: two, RootThreshold: 2,
		TargetsKeys: two, TargetsThreshold: 2}, &ceremony); err != nil {
		t.Fatal(err)
	}
	signBy(ceremony.ID, alice, bob)
	rel := env.DraftRelease(t, patchPath, randomBytes(t, 4096), apitest.PatchCustom())
	release = *rel
	signBy(release.ID, alice, bob)
	if err := as["bob"].Do("POST", "/yanks", wire.YankRequest{Path: patchPath}, &yank); err != nil {
		t.Fatal(err)
	}
	signBy(yank.ID, bob, alice)
	// The rotation replaces bob's root key by dave's; the targets keys
	// stay alice's and bob's.
	if err := as["alice"].Do("POST", "/repo/root-drafts", wire.RootDraftRequest{
		RootKeys: apitest.PublicKeys([]*apitest.Engineer{alice, dave}), RootThreshold: 2,
		TargetsKeys: two, TargetsThreshold: 2}, &rotation); err != nil {
		t.Fatal(err)
	}
	signBy(rotation.ID, alice, bob, dave)

	pw := "pw-of-viewer-long-enough"
	if _, err := env.App.Users.Create(ctx, "viewer-v", identity.RoleViewer, pw, false); err != nil {
		t.Fatal(err)
	}
	viewer := &browserUser{name: "viewer-v", password: pw}
	browser := startBrowser(t, bin)
	newSession(t, browser, viewer)
	login(t, env.URL, viewer)
	if err := chromedp.Do(viewer.ctx, chromedp.EmulateViewport(1400, 900), chromedp.Navigate(env.URL+"/releases")); err != nil {
		t.Fatal(err)
	}
	type entry struct{ Shown, All string }
	drafts := evalJS[map[string]entry](t, viewer, `Object.fromEntries(Array.from(document.querySelectorAll('article[data-draft]'),
		a => [a.dataset.draft, {shown: a.innerText.replace(/\s+/g, ' '), all: a.textContent.replace(/\s+/g, ' ')}]))`)
	order := evalJS[[]string](t, viewer, `Array.from(document.querySelectorAll('article[data-draft]'), a => a.dataset.draft)`)
	if want := []string{rotation.ID, yank.ID, release.ID, ceremony.ID}; strings.Join(order, " ") != strings.Join(want, " ") {
		t.Errorf("history order %v, want newest first %v", order, want)
	}
	by := func(es ...*apitest.Engineer) []string {
		var out []string
		for _, e := range es {
			out = append(out, short(e)+" ("+e.Name+")")
		}
		return out
	}
	tests := []struct {
		name, id string
		want     []string // in the text a person sees
		notWant  []string // anywhere in the entry, the collapsed details too
	}{
		{"ceremony", ceremony.ID,
			append([]string{"ceremony · published", "draft " + ceremony.ID + " by alice",
				"ceremony: root v1 with root keys 2 of 2", "and targets keys 2 of 2", "targets v1, empty",
				"new root v1's root keys: signatures 2 of 2 by", "root v1's targets keys: signatures 2 of 2 by", "threshold met"}, by(alice, bob)...),
			[]string{"removes target", "unchanged", "handsets are no longer offered it", "adds target"}},
		{"release", release.ID,
			append([]string{"release · published", "adds target " + patchPath, "Yanked by draft " + yank.ID + " of bob, published",
				"root v1's targets keys: signatures 2 of 2 by"}, by(alice, bob)...),
			[]string{"removes target"}},
		{"yank", yank.ID,
			append([]string{"yank · published", "yanks " + patchPath, "root v1's targets keys: signatures 2 of 2 by"}, by(alice, bob)...),
			[]string{"adds target", "Yanked by"}},
		{"rotation", rotation.ID,
			append([]string{"root rotation · published", "rotates root to v2: root keys 2 of 2, adds " + short(dave) + ", removes " + short(bob) +
				"; targets keys 2 of 2, unchanged", "root v1's root keys: signatures 2 of 2 by", "new root v2's root keys: signatures 2 of 2 by"},
				by(alice, bob, dave)...),
			[]string{"target " + patchPath}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := drafts[tc.id]
			if !ok {
				t.Fatalf("the releases page has no entry for draft %s; entries %v", tc.id, order)
			}
			for _, w := range tc.want {
				if !strings.Contains(got.Shown, w) {
					t.Errorf("the %s reads %q\nwant it to say %q", tc.name, got.Shown, w)
				}
			}
			for _, w := range tc.notWant {
				if strings.Contains(got.All, w) {
					t.Errorf("the %s says %q: %q", tc.name, w, got.All)
				}
			}
		})
	}
	if txt := bodyText(t, viewer); !strings.Contains(txt, patchPath+" yanked by draft "+yank.ID+" of bob") {
		t.Errorf("the Yanked section does not list %s:\n%s", patchPath, txt)
	}

	for _, page := range []string{"releases", "audit"} {
		for _, width := range []int64{1400, 390} {
			if err := chromedp.Do(viewer.ctx, chromedp.EmulateViewport(width, 900), chromedp.Navigate(env.URL+"/"+page)); err != nil {
				t.Fatal(err)
			}
			type fit struct{ Scroll, Inner int }
			got := evalJS[fit](t, viewer, `({scroll: document.documentElement.scrollWidth, inner: window.innerWidth})`)
			if got.Scroll > got.Inner {
				t.Errorf("/%s at %d px: the page is %d px wide, wider than the %d px window", page, width, got.Scroll, got.Inner)
			}
			screenshot(t, viewer, page+"-"+map[int64]string{1400: "1400", 390: "390"}[width]+".png")
		}
	}
	// The audit page shows the signature uploads' details as key: value
	// lists that wrap, not as raw JSON.
	if txt := bodyText(t, viewer); !strings.Contains(txt, "draft.sign") || strings.Contains(txt, `"signatures":`) {
		t.Errorf("the audit page lacks the signature uploads or shows raw JSON details:\n%s", txt)
	}
}
